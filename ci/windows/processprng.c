/*
 * bcryptprimitives.dll shim for Wine 8.0.
 *
 * Rust's std (>= 1.78) on Windows imports ProcessPrng from bcryptprimitives.dll.
 * Wine 8.0 has no such DLL, so every Rust program exits with code 53 before main.
 * This DLL exports ProcessPrng, implemented with RtlGenRandom (SystemFunction036
 * in advapi32). It is only ever placed inside the CI Wine prefix, never shipped.
 *
 * Build: x86_64-w64-mingw32-gcc -shared -O2 -s -o bcryptprimitives.dll processprng.c -ladvapi32
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    /* RtlGenRandom takes a ULONG length: feed large requests in chunks. */
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE; /* like the real ProcessPrng, which is documented to always succeed */
}
