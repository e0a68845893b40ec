//! A handle's operations: starting them in their lanes, issuing, cancels
//! and deadlines, resuming parked ones, and the handle's close — which
//! closes the socket only after its last packet came back and its last
//! borrower is done, so the `SOCKET` value is never reused under a pending
//! operation.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use windows_sys::Win32::Networking::WinSock::SOCKET;

use super::opbox::{OpBox, Slot};
use super::ops::{Local, WOp};
use super::{HState, HandleShared, OpCtl, Owned, Shared, SockUse, TimerItem};
use crate::error::{self, SubmitError};
use crate::kit::lanes::{Lanes, Next};
use crate::kit::lock;
use crate::kit::phase::{Park, Phase, Stop};
use crate::op::{OpData, OpId};
use crate::sys::contract::OsHandle;
use crate::sys::windows::net;

impl HandleShared {
    /// A handle for `sock` (associated with `port` already).
    pub(crate) fn new(hid: u64, key: u64, sock: socket2::Socket, port: Arc<Shared>) -> Arc<Self> {
        let stream = sock.r#type().map_or(true, |t| t == socket2::Type::STREAM);
        let raw = std::os::windows::io::AsRawSocket::as_raw_socket(&sock) as SOCKET;
        Self::with(hid, key, raw, Owned::Socket(sock), stream, port)
    }

    /// A handle for a file or a pipe `h` (associated with `port` already).
    /// A pipe is a stream (its reads and writes take lanes); a file's
    /// operations take none.
    pub(crate) fn new_os(hid: u64, key: u64, h: OsHandle, port: Arc<Shared>) -> Arc<Self> {
        let raw = std::os::windows::io::AsRawHandle::as_raw_handle(&h) as SOCKET;
        Self::with(hid, key, raw, Owned::Os(h), true, port)
    }

    fn with(
        hid: u64,
        key: u64,
        raw: SOCKET,
        owned: Owned,
        stream: bool,
        port: Arc<Shared>,
    ) -> Arc<Self> {
        Arc::new(HandleShared {
            hid,
            key,
            sock: raw,
            port,
            stream,
            user_closed: AtomicBool::new(false),
            state: Mutex::new(HState {
                ops: Vec::new(),
                lanes: Lanes::new(stream),
                closing: false,
            }),
            sock_use: Mutex::new(SockUse {
                owned: Some(owned),
                readers: 0,
                close_pending: false,
            }),
            family: OnceLock::new(),
        })
    }

    /// The address family the socket is bound to.
    pub(super) fn family(&self) -> io::Result<u16> {
        if let Some(f) = self.family.get() {
            return Ok(*f);
        }
        let f = net::bound_family(self.sock)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "accept on an unbound socket")
        })?;
        Ok(*self.family.get_or_init(|| f))
    }

    /// Runs `f` with the socket, which stays open meanwhile.
    pub(crate) fn with_socket<R>(
        &self,
        f: impl FnOnce(&socket2::SockRef<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        {
            let mut u = lock(&self.sock_use);
            if u.owned.is_none() || u.close_pending {
                return Err(error::handle_closed());
            }
            u.readers += 1;
        }
        struct Release<'a>(&'a HandleShared);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut u = lock(&self.0.sock_use);
                u.readers -= 1;
                if u.readers == 0 && u.close_pending {
                    // The last borrower, after the handle's last operation:
                    // the socket closes now.
                    u.close_pending = false;
                    let sock = u.owned.take();
                    drop(u);
                    drop(sock);
                    self.0.port.unregister(self.0.hid);
                }
            }
        }
        let _r = Release(self);
        net::with_sockref(self.sock, f)
    }

    /// Closes the socket now that no operation is left (or as soon as the
    /// last `with_socket` borrower is done).
    pub(super) fn final_close(&self) {
        let sock = {
            let mut u = lock(&self.sock_use);
            if u.owned.is_none() {
                return;
            }
            if u.readers > 0 {
                u.close_pending = true;
                return;
            }
            u.owned.take()
        };
        // The handle is closing and its last operation's packet was
        // dequeued, so neither the kernel nor another thread uses the socket.
        drop(sock);
        self.port.unregister(self.hid);
    }

    /// Starts an operation.
    pub(crate) fn start(
        self: &Arc<Self>,
        data: OpData,
        token: u64,
        deadline: Option<Instant>,
    ) -> Result<OpId, SubmitError> {
        let port = &self.port;
        let id = port.next_id.fetch_add(1, Ordering::Relaxed);
        // Count first, then check `closed` (see `Shared::post_packet`).
        port.live.fetch_add(1, Ordering::SeqCst);
        let refuse = |data: OpData| {
            port.live.fetch_sub(1, Ordering::SeqCst);
            Err(data.refuse(error::port_closed()))
        };
        if port.closed.load(Ordering::SeqCst) {
            return refuse(data);
        }
        let mut st = lock(&self.state);
        if st.closing && port.closed.load(Ordering::SeqCst) {
            drop(st);
            return refuse(data);
        }
        let op = WOp::new(data);
        let lane = op.lane();
        let slot = Slot::new(OpBox::new(self.clone(), id, token, op));
        if st.closing || lane.is_some_and(|l| st.lanes.refuses(l)) {
            // Closed between the caller's check and now (or a send broke
            // the stream): it still completes once, aborted, like any
            // operation caught by a close.
            let why = Stop::Cancel;
            st.ops.push(OpCtl {
                id,
                lane,
                phase: Phase::Stopping(why),
                slot,
                local: Some(Local::End(Err(Phase::Stopping(why).abort_error()))),
            });
            let i = st.ops.len() - 1;
            port.post_local(&mut st.ops[i].slot);
            return Ok(OpId(id));
        }
        let go = lane.is_none_or(|l| st.lanes.push(l, id));
        st.ops.push(OpCtl {
            id,
            lane,
            phase: Phase::Queued,
            slot,
            local: None,
        });
        if go {
            let i = st.ops.len() - 1;
            self.issue_at(&mut st, i);
        }
        if let Some(d) = deadline {
            // Under the handle's lock: the operation cannot complete (and
            // `finish` take its timers away) before the deadline is in.
            port.timers.add(
                d,
                TimerItem::Deadline {
                    h: Arc::downgrade(self),
                    op: id,
                },
            );
        }
        Ok(OpId(id))
    }

    /// Issues `st.ops[i]`; a call that fails at once becomes a
    /// `KEY_LOCAL` packet carrying the error. Callers hold the lock of a
    /// handle that is not closing (so the socket is open).
    pub(super) fn issue_at(&self, st: &mut HState, i: usize) {
        let c = &mut st.ops[i];
        if !c.phase.stopping() {
            c.phase = Phase::Issued;
        }
        if let Err(e) = c.slot.issue() {
            c.local = Some(Local::Failed(e));
            self.port.post_local(&mut c.slot);
        }
    }

    /// Cancels operation `op` (`CancelIoEx(socket, ov)`), or its deadline
    /// passed (`timed_out`). It still completes exactly once.
    pub(crate) fn cancel_op(&self, op: u64, timed_out: bool) {
        let mut st = lock(&self.state);
        let Some(i) = st.find(op) else { return };
        let why = if timed_out {
            Stop::Deadline
        } else {
            Stop::Cancel
        };
        self.stop_at(&mut st, i, why);
    }

    /// Stops `st.ops[i]`: one the kernel holds is cancelled and ends with
    /// its packet; one that waits (queued, parked) ends through a library
    /// packet. A second stop changes nothing.
    pub(super) fn stop_at(&self, st: &mut HState, i: usize, why: Stop) {
        let c = &mut st.ops[i];
        let was = c.phase;
        if was.stopping() {
            return;
        }
        c.phase = Phase::Stopping(why);
        match was {
            Phase::Queued => {
                c.local = Some(Local::End(Err(c.phase.abort_error())));
                self.port.post_local(&mut c.slot);
                let (lane, id) = (c.lane, c.id);
                if let Some(l) = lane {
                    let next = st.lanes.leave(l, id);
                    self.go_on(st, next);
                }
            }
            Phase::Parked(_) => {
                c.local = Some(Local::Resume);
                self.port.post_local(&mut c.slot);
            }
            // Its own library packet is queued: its handling sees the stop.
            Phase::Issued if c.local.is_some() => {}
            Phase::Issued | Phase::Stopping(_) => c.slot.cancel(self.sock),
        }
    }

    /// What follows in a lane after an operation left it: the next one is
    /// issued (or stopped, on a closing handle or port); after a broken
    /// write side, the writes that waited behind end aborted.
    pub(super) fn go_on(&self, st: &mut HState, next: Next<u64>) {
        match next {
            Next::Idle => {}
            Next::Start(n) => {
                let Some(j) = st.find(n) else { return };
                if st.ops[j].phase != Phase::Queued {
                    // Stopped while it waited: its own packet ends it.
                } else if st.closing || self.port.closed.load(Ordering::SeqCst) {
                    self.stop_at(st, j, Stop::Cancel);
                } else {
                    self.issue_at(st, j);
                }
            }
            Next::Abort(queued) => {
                for n in queued {
                    if let Some(j) = st.find(n) {
                        self.stop_at(st, j, Stop::Cancel);
                    }
                }
            }
        }
    }

    /// Resumes standing operation `op` if it is still parked for `why` (a
    /// buffer is kept for a starved receive, or its back-off is over);
    /// says whether it was.
    pub(crate) fn resume_parked(&self, op: u64, why: Park) -> bool {
        let mut st = lock(&self.state);
        let Some(i) = st.find(op) else { return false };
        let c = &mut st.ops[i];
        if c.phase != Phase::Parked(why) {
            return false;
        }
        c.phase = Phase::Issued;
        c.local = Some(match why {
            Park::Starved => Local::Fed,
            Park::BackOff => Local::Resume,
        });
        self.port.post_local(&mut c.slot);
        true
    }

    /// `closesocket` done safely: mark closing, end the operations that
    /// wait, `CancelIoEx(socket, NULL)` for the issued ones, and close the
    /// socket only after the last packet came back.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        if st.closing {
            return;
        }
        st.closing = true;
        let mut any_kernel = false;
        for i in 0..st.ops.len() {
            let c = &mut st.ops[i];
            match c.phase {
                // In a Winsock call: the one CancelIoEx below ends it, and
                // as a cancel (also one whose deadline passed).
                Phase::Issued | Phase::Stopping(_) if c.local.is_none() => {
                    any_kernel = true;
                    c.phase = Phase::Stopping(Stop::Cancel);
                }
                _ => self.stop_at(&mut st, i, Stop::Cancel),
            }
        }
        if any_kernel {
            net::cancel_all(self.sock);
        }
        let empty = st.ops.is_empty();
        drop(st);
        if empty {
            self.final_close();
        }
    }
}

impl Drop for HandleShared {
    fn drop(&mut self) {
        // No operation or borrower is left (they hold references to `self`):
        // the socket, if still open, closes with its owner.
        lock(&self.sock_use).owned.take();
    }
}
