//! A minimal worker-pool echo server that walks the seed's six steps, each
//! one marked with the Win32 call it stands for.
//!
//! ```text
//! cargo run -p completion-port --example echo_pool -- 127.0.0.1:7007
//! ```
//!
//! Then `nc 127.0.0.1 7007` and type. Stop it with Ctrl-C.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use completion_port::{Buf, Completion, Handle, OpKind, Port};

/// Completion key of the listening socket; connections get keys from 1 up.
const LISTENER: u64 = 0;
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// Per-connection state, found by completion key (never by descriptor).
type Sessions = Arc<Mutex<HashMap<u64, Handle>>>;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7007".into());

    // ① CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0):
    //    a port whose concurrency is the number of CPUs.
    let port = Port::new(0)?;

    // ③ (for the listener) socket() + bind() + listen(), then
    //    CreateIoCompletionPort(listener, port, LISTENER, 0).
    let listener = TcpListener::bind(&addr)?;
    println!("listening on tcp://{}", listener.local_addr()?);
    let lh = port.associate(listener, LISTENER)?;

    // ④ AcceptEx(listener, …, &overlapped): an accept that completes later.
    //    A few are kept outstanding so bursts of connections do not queue.
    for _ in 0..4 {
        port.accept(&lh, 0)?;
    }

    // ② Worker threads in proportion to the CPUs, all blocked in
    //    GetQueuedCompletionStatus on the same port.
    let sessions: Sessions = Arc::default();
    let workers = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::new();
    for _ in 0..workers {
        let port = port.clone();
        let lh = lh.clone();
        let sessions = sessions.clone();
        threads.push(std::thread::spawn(move || worker(port, lh, sessions)));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn worker(port: Port, listener: Handle, sessions: Sessions) {
    loop {
        // ⑤ GetQueuedCompletionStatus(port, &bytes, &key, &ov, INFINITE):
        //    one packet wakes one waiting worker (the most recent waiter).
        let c = match port.get(None) {
            Ok(c) => c,
            // FALSE with a NULL overlapped: no packet. The port is gone.
            Err(_) => return,
        };
        // ⑥ Handle it and issue the next I/O: new sockets repeat ③–⑤,
        //    existing ones repeat ④–⑤.
        if let Err(e) = handle(&port, &listener, &sessions, c) {
            eprintln!("echo_pool: {e}");
        }
    }
}

fn handle(
    port: &Port,
    listener: &Handle,
    sessions: &Sessions,
    mut c: Completion,
) -> std::io::Result<()> {
    match c.kind {
        OpKind::Accept => {
            // Re-issue the AcceptEx first so the listener never runs dry.
            port.accept(listener, 0)?;
            let Some((sock, _peer)) = c.take_accepted() else {
                return Ok(()); // a failed accept: its error is in c.result
            };
            // ③ CreateIoCompletionPort(sock, port, key, 0), with a key no
            //    other connection has (never the descriptor: it gets reused).
            let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
            let h = port.associate(sock, key)?;
            // ④ WSARecv(sock, …, &overlapped) → WSA_IO_PENDING.
            port.recv(&h, Vec::with_capacity(4096), 0)?;
            sessions.lock().unwrap().insert(key, h);
        }
        OpKind::Recv => {
            let h = sessions.lock().unwrap().get(&c.key).cloned();
            let Some(h) = h else { return Ok(()) };
            match c.result {
                // 0 bytes: the peer closed its side. Close ours (closesocket).
                Ok(0) | Err(_) => {
                    sessions.lock().unwrap().remove(&c.key);
                    h.close();
                }
                // Echo what came: WSASend owns the buffer until it completes.
                Ok(_) => {
                    let buf = c.take_buf().unwrap_or(Buf::Vec(Vec::new()));
                    port.send(&h, buf, 0)?;
                }
            }
        }
        OpKind::Send => {
            let h = sessions.lock().unwrap().get(&c.key).cloned();
            let Some(h) = h else { return Ok(()) };
            if c.result.is_err() {
                sessions.lock().unwrap().remove(&c.key);
                h.close();
                return Ok(());
            }
            // The send handed the buffer back: reuse it for the next WSARecv.
            let mut v = c.take_buf().map(Buf::into_vec).unwrap_or_default();
            v.clear();
            port.recv(&h, v, 0)?;
        }
        _ => {}
    }
    Ok(())
}
