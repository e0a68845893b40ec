//! UDP sockets: each keeps a few receives outstanding and echoes every
//! datagram to its source, within the per-source `--udp-rate`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use completion_port::{is_aborted, Completion, Handle, OpKind};

use super::super::stats::Global;
use super::super::table::lock;
use super::Shard;

/// Operation tokens.
const T_URECV: u64 = 5;
const T_USEND: u64 = 6;

/// Receives kept outstanding per socket.
const UDP_RECVS: usize = 4;
/// The largest datagram received whole.
const UDP_BUF: usize = 65_536;

pub(super) struct Udp {
    h: Handle,
    pub(super) addr: SocketAddr,
    closed: AtomicBool,
}

impl Udp {
    pub(super) fn new(h: Handle, addr: SocketAddr) -> Udp {
        Udp {
            h,
            addr,
            closed: AtomicBool::new(false),
        }
    }

    /// Echoes no more (the drain): closes the socket, which ends its
    /// receives.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.h.close();
    }
}

impl Shard {
    /// Starts the receives of `u`.
    pub(super) fn udp_start(&self, u: &Udp) {
        for _ in 0..UDP_RECVS {
            self.udp_recv(u);
        }
    }

    fn udp_recv(&self, u: &Udp) {
        if u.closed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self
            .port
            .recv_from(&u.h, Vec::with_capacity(UDP_BUF), T_URECV)
        {
            if !u.h.is_closed() && !self.port.is_closed() {
                tracing::warn!("udp://{}: cannot receive: {}", u.addr, e.error);
            }
        }
    }

    /// A completion of UDP socket `i`.
    pub(super) fn on_udp(&self, i: usize, mut c: Completion, now: Instant) {
        let Some(u) = self.udps.get(i) else { return };
        match c.kind {
            OpKind::RecvFrom => {
                let from = c.from_addr();
                let buf = c.take_buf();
                match (&c.result, from, buf) {
                    (Ok(_), Some(from), Some(buf)) => {
                        Global::add(&self.g.c.udp_in, 1);
                        let ok = lock(&self.g.udp_limiter).allow(from.ip(), now);
                        if ok && !u.closed.load(Ordering::Acquire) {
                            if let Err(e) = self.port.send_to(&u.h, buf, from, T_USEND) {
                                tracing::debug!("udp send to {from}: {}", e.error);
                            }
                        } else {
                            Global::add(&self.g.c.udp_dropped, 1);
                        }
                    }
                    (Err(e), _, _) if is_aborted(e) => return,
                    (Err(e), _, _) => tracing::debug!("udp://{}: receive: {e}", u.addr),
                    _ => {}
                }
                self.udp_recv(u);
            }
            OpKind::SendTo => match &c.result {
                Ok(_) => Global::add(&self.g.c.udp_out, 1),
                Err(e) if is_aborted(e) => {}
                Err(e) => tracing::debug!("udp://{}: send: {e}", u.addr),
            },
            _ => {}
        }
    }
}
