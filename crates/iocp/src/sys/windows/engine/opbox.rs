//! What a packet's `lpOverlapped` points to: an operation's box (its
//! `OVERLAPPED` first), or a posted application packet. The kernel key says
//! which (`KEY_IO`/`KEY_LOCAL`: an [`OpBox`], `KEY_POST`: a [`PostPacket`]);
//! only this module puts pointers into packets, so that holds by
//! construction.
//!
//! # Who touches an operation's box
//!
//! A box is listed in its handle's state by one [`Slot`], which says whether
//! the kernel holds it:
//!
//! * **held** (not issued yet, parked, or its packet was dequeued): the
//!   thread holding the handle's lock owns it, and reaches its operation
//!   through `&mut Slot`;
//! * **with the kernel** (issued, or a library packet is queued for it): the
//!   kernel may write its `OVERLAPPED` and its operation's memory (both in
//!   `UnsafeCell`s) at any time, so nothing but the kernel touches them. Any
//!   thread may still read the box's fixed fields (handle, id, token) and
//!   hand its `OVERLAPPED`'s address to `CancelIoEx`.
//!
//! The thread that dequeues the packet reads the fixed fields to find the
//! handle, takes its lock, and [`Dequeued::claim`]s the slot back. A box is
//! freed only through its held slot.

use std::cell::UnsafeCell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::Networking::WinSock::WSAEMSGSIZE;
use windows_sys::Win32::System::IO::{CancelIoEx, OVERLAPPED};

use super::ops::WOp;
use super::{HandleShared, KEY_ABANDON, KEY_IO, KEY_LOCAL, KEY_POST};
use crate::op::{Completion, OpId, OpKind};
use crate::sys::windows::cport::{CompletionPort, Packet};

/// One operation, pinned on the heap; the `OVERLAPPED` comes first, so the
/// pointer the kernel hands back is the box's.
#[repr(C)]
pub(super) struct OpBox {
    ov: UnsafeCell<OVERLAPPED>,
    /// Its handle: alive, with the socket open, while the box is.
    pub h: Arc<HandleShared>,
    pub id: u64,
    pub token: u64,
    /// The operation and the memory it lends the kernel.
    op: UnsafeCell<WOp>,
}

impl Drop for OpBox {
    fn drop(&mut self) {
        self.h.port.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl OpBox {
    /// A box for `op`, counted in the port's live objects (the caller
    /// counted it already: see `Shared::post_packet`).
    pub fn new(h: Arc<HandleShared>, id: u64, token: u64, op: WOp) -> Box<OpBox> {
        Box::new(OpBox {
            // SAFETY: all-zero is a valid, unused OVERLAPPED.
            ov: UnsafeCell::new(unsafe { std::mem::zeroed() }),
            h,
            id,
            token,
            op: UnsafeCell::new(op),
        })
    }

    /// The operation (the box is held: `&mut`).
    pub fn op(&mut self) -> &mut WOp {
        self.op.get_mut()
    }

    /// Frees the box and builds the operation's final completion, which
    /// takes the operation's memory back.
    pub fn into_completion(self: Box<Self>, result: io::Result<usize>) -> Completion {
        let b = std::mem::ManuallyDrop::new(*self);
        // SAFETY: `b` is never dropped, and each of the two fields is read
        // out of it once; the others own nothing.
        let (h, op) = unsafe { (std::ptr::read(&b.h), std::ptr::read(&b.op).into_inner()) };
        h.port.live.fetch_sub(1, Ordering::SeqCst);
        let mut c = Completion::new(op.kind(), h.key, b.token, OpId(b.id), result);
        if c.result.is_err() {
            // What a send sent before it failed (0 for anything else).
            c.partial = op.sent();
        }
        op.complete(&mut c, &h);
        c
    }
}

/// An operation's box as its handle's state lists it.
pub(super) struct Slot {
    ptr: NonNull<OpBox>,
    /// The kernel holds it (see the module doc).
    kernel: bool,
}

// SAFETY: a slot owns its box (through the kernel, at times) and moves
// between threads only inside its handle's mutex. The box's raw pointers
// (the WSABUFs, the OVERLAPPED's unused event handle) point into memory the
// operation owns, which is as valid on any thread; who may touch the box
// when is the module doc's rule, whatever the thread.
unsafe impl Send for Slot {}

impl Slot {
    /// A held slot for a new box.
    pub fn new(b: Box<OpBox>) -> Slot {
        Slot {
            ptr: NonNull::from(Box::leak(b)),
            kernel: false,
        }
    }

    /// The box, held (`None` while the kernel holds it).
    pub fn held(&mut self) -> Option<&mut OpBox> {
        if self.kernel {
            return None;
        }
        // SAFETY: a held box is owned through its slot, which we borrow
        // mutably (under the handle's lock); nothing else touches it.
        Some(unsafe { self.ptr.as_mut() })
    }

    /// Starts the operation in the kernel: `Ok` means a packet will come
    /// (pending, or done at once — the port gets a packet either way), and
    /// the kernel holds the box; `Err` means it queued nothing and the box
    /// is still held.
    ///
    /// `WSAEMSGSIZE` is two things in Winsock. It stands for the warning
    /// `STATUS_BUFFER_OVERFLOW` (a datagram larger than the receive buffer
    /// was waiting), after which the request is complete and its packet
    /// queued (with `ERROR_MORE_DATA`), and for the error
    /// `STATUS_INVALID_BUFFER_SIZE` (a datagram too large to send), after
    /// which nothing is queued. The `OVERLAPPED`'s `Internal` tells them
    /// apart: it is zeroed before the call, and the I/O manager writes the
    /// request's status there when it completes the request — for a warning,
    /// never for a synchronous error (then it queues no packet either).
    /// Wine 8 maps every `EMSGSIZE` to the warning, writes it there and
    /// queues the packet: a receive cut short, a `sendmsg(2)` of more than
    /// 1024 buffers, and an oversized datagram send alike.
    pub fn issue(&mut self) -> io::Result<()> {
        if self.kernel {
            return Err(io::Error::other(
                "iocp: an operation the kernel holds was issued again",
            ));
        }
        let p = self.ptr.as_ptr();
        // SAFETY: the box is held, so this thread owns it; it stays
        // allocated and in place until its packet is dequeued. The
        // OVERLAPPED is zeroed (a valid, unused one) before the call.
        let (ov, h, op) = unsafe {
            let ov = (*p).ov.get();
            ov.write(std::mem::zeroed());
            (ov, &(*p).h, &mut *(*p).op.get())
        };
        self.kernel = true;
        let r = match fake_failure(ov) {
            Some(e) => Err(e),
            // SAFETY: `ov` is this operation's zeroed OVERLAPPED; box and
            // operation stay in place, untouched by anyone but the kernel,
            // until the packet is dequeued (the slot says the kernel holds
            // them); the socket is open (the caller holds the handle's lock
            // and the handle is not closing).
            None => unsafe { op.issue(h, ov) },
        };
        match r {
            Ok(()) => Ok(()),
            // SAFETY: the kernel finished with `Internal` before the call
            // returned (a warning completes the request at once); the box
            // stays allocated (freeing it needs the handle's lock, which the
            // caller holds), and the read goes through the UnsafeCell.
            Err(e) if e.raw_os_error() == Some(WSAEMSGSIZE) && unsafe { is_warning(ov) } => Ok(()),
            Err(e) => {
                self.kernel = false;
                Err(e)
            }
        }
    }

    /// Queues the library's own packet for it (`key`): from here the
    /// kernel holds the box until that packet is dequeued.
    pub fn post(&mut self, port: &CompletionPort, key: usize) {
        if self.kernel {
            tracing::error!("iocp: a packet for an operation the kernel holds; not posted");
            return;
        }
        self.kernel = true;
        let ov = self.ptr.as_ptr() as *mut OVERLAPPED;
        for attempt in 0..100 {
            match port.post(key, 0, ov) {
                Ok(()) => return,
                Err(e) if attempt == 0 => {
                    tracing::warn!("iocp: PostQueuedCompletionStatus failed: {e}; retrying")
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Out of kernel memory for 1 s: the operation's completion is lost;
        // its box is leaked (it stays "with the kernel", never freed).
        tracing::error!("iocp: could not queue a completion for 1 s; an operation is lost");
    }

    /// `CancelIoEx` for it, if the kernel holds it. A request that already
    /// finished (or a library packet) is not found, which is fine.
    pub fn cancel(&self, sock: windows_sys::Win32::Networking::WinSock::SOCKET) {
        if self.kernel {
            // SAFETY: the box stays allocated while its slot is listed (we
            // are reading the slot under the handle's lock); CancelIoEx only
            // compares the address with the socket's pending requests.
            unsafe { CancelIoEx(sock as HANDLE, self.ptr.as_ptr() as *const OVERLAPPED) };
        }
    }

    /// The box, out of the handle's state (`None`, and left alone for
    /// good, while the kernel holds it).
    pub fn into_box(self) -> Option<Box<OpBox>> {
        let me = std::mem::ManuallyDrop::new(self);
        if me.kernel {
            return None;
        }
        // SAFETY: a held box is owned through its slot, consumed here.
        Some(unsafe { Box::from_raw(me.ptr.as_ptr()) })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.kernel {
            // SAFETY: a held box is owned through its slot.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
        }
    }
}

/// Not in tests: every call is made.
#[cfg(not(test))]
fn fake_failure(_ov: *mut OVERLAPPED) -> Option<io::Error> {
    None
}

#[cfg(test)]
thread_local! {
    /// Makes the next `Slot::issue` on this thread fail at once, without a
    /// call, with the Winsock error `.0`, the "kernel" having written the
    /// status `.1` into the `OVERLAPPED` (what a test cannot make Wine do).
    pub(super) static FAIL_NEXT_ISSUE: std::cell::Cell<Option<(i32, i32)>> =
        const { std::cell::Cell::new(None) };
}

/// In tests: the failure [`FAIL_NEXT_ISSUE`] asks for, if it does.
#[cfg(test)]
fn fake_failure(ov: *mut OVERLAPPED) -> Option<io::Error> {
    let (code, status) = FAIL_NEXT_ISSUE.with(|f| f.take())?;
    // SAFETY: called by `Slot::issue` on the zeroed OVERLAPPED of a box it
    // owns, before anything is handed to the kernel.
    unsafe { (*ov).Internal = status as u32 as usize };
    Some(io::Error::from_raw_os_error(code))
}

/// Whether the status the kernel wrote into `ov` is an NT warning
/// (`STATUS_BUFFER_OVERFLOW` and its kind: severity bits `10`).
///
/// # Safety
/// `ov` points to a live OVERLAPPED that nothing writes meanwhile.
unsafe fn is_warning(ov: *const OVERLAPPED) -> bool {
    // SAFETY: per the caller; a volatile read, as the kernel wrote it.
    let status = unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*ov).Internal)) } as u32;
    status >> 30 == 2
}

/// The box of a dequeued operation packet, before its handle's lock.
pub(super) struct Dequeued(NonNull<OpBox>);

impl Dequeued {
    /// The box's fixed fields (which handle, which operation).
    pub fn get(&self) -> &OpBox {
        // SAFETY: the box stays allocated until this thread frees it (it
        // holds the packet); the fields read through `&OpBox` never change,
        // and the kernel's memory is behind UnsafeCells.
        unsafe { self.0.as_ref() }
    }

    /// Takes the box back from the kernel into `slot`, which must be the
    /// slot listing it (the caller holds the handle's lock): `false` if it
    /// is not.
    pub fn claim(self, slot: &mut Slot) -> bool {
        let mine = slot.kernel && slot.ptr == self.0;
        if mine {
            slot.kernel = false;
        }
        mine
    }
}

/// What a dequeued packet carries.
pub(super) enum Opened {
    /// A close sentinel.
    Abandon,
    /// An application or timer packet.
    Post(Box<PostPacket>),
    /// An operation's packet: the kernel's (`local == false`) or the
    /// library's.
    Op { op: Dequeued, local: bool },
    /// A packet no one here queued.
    Unknown(usize),
}

/// Opens a packet this thread dequeued.
pub(super) fn open(pkt: &Packet) -> Opened {
    match pkt.key {
        KEY_ABANDON => Opened::Abandon,
        // SAFETY: KEY_POST packets carry a box made by `PostPacket::post`,
        // and this thread dequeued it, so it is the only owner.
        KEY_POST => Opened::Post(unsafe { Box::from_raw(pkt.ov as *mut PostPacket) }),
        KEY_IO | KEY_LOCAL => match NonNull::new(pkt.ov as *mut OpBox) {
            // KEY_IO/KEY_LOCAL packets carry an OVERLAPPED that is the
            // first field of an OpBox (only `Slot` hands them out).
            Some(p) => Opened::Op {
                op: Dequeued(p),
                local: pkt.key == KEY_LOCAL,
            },
            None => Opened::Unknown(pkt.key),
        },
        other => Opened::Unknown(other),
    }
}

/// An application (or timer) packet: what the completion will say, and
/// which thread posted it.
pub(super) struct PostPacket {
    pub kind: OpKind,
    pub key: u64,
    pub token: u64,
    pub id: u64,
    pub bytes: usize,
    pub from: u64,
}

impl PostPacket {
    /// Queues it under kernel key `key` (boxed; the box comes back with the
    /// packet, see [`open`]).
    pub fn post(self, port: &CompletionPort, key: usize) -> io::Result<()> {
        let p = Box::into_raw(Box::new(self));
        port.post(key, 0, p as *mut OVERLAPPED).inspect_err(|_| {
            // SAFETY: the post failed, so the kernel never saw `p`.
            drop(unsafe { Box::from_raw(p) });
        })
    }

    /// Its completion.
    pub fn completion(&self) -> Completion {
        Completion::new(
            self.kind,
            self.key,
            self.token,
            OpId(self.id),
            Ok(self.bytes),
        )
    }
}
