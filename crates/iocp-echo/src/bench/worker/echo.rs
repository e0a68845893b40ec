//! A bench thread's completions: a connect, a piece of the echo (verified
//! byte for byte against the stream that was sent, completing the messages
//! it finishes), a send.

use std::sync::atomic::Ordering;
use std::time::Instant;

use completion_port::{Buf, Completion, OpKind};

use super::super::payload;
use super::{count_in_slice, kind_name, ConnKey, St, Worker, T_RECV};

impl Worker<'_> {
    pub(super) fn on_completion(&mut self, mut c: Completion, now: Instant) {
        let k = ConnKey::from_key(c.key);
        let i = k.i as usize;
        if self
            .conns
            .get(i)
            .is_none_or(|conn| ConnKey::new(i, conn.gen) != k)
        {
            // A connection that is gone (out of range, or cut and reopened
            // since): its buffer goes back with `c`.
            return;
        }
        match c.kind {
            OpKind::Connect if self.conns[i].st == St::Reconnecting => {
                match std::mem::replace(&mut c.result, Ok(0)) {
                    Ok(_) => self.reconnected(i, now),
                    Err(e) => {
                        let msg = format!("cannot reconnect to {}: {e}", self.plan.addr);
                        self.fail(i, &kind_name(&e), msg);
                    }
                }
            }
            OpKind::Connect => {
                if self.conns[i].st != St::Connecting {
                    return;
                }
                self.pending_connects -= 1;
                if let Err(e) = std::mem::replace(&mut c.result, Ok(0)) {
                    self.connect_failed(i, &e);
                    return;
                }
                self.resolved += 1;
                let conn = &mut self.conns[i];
                let h = conn
                    .h
                    .as_ref()
                    .expect("a connecting connection has a handle");
                if let Err(e) = self.port.recv_pooled(h, T_RECV) {
                    self.connect_failed(i, &e.error);
                    return;
                }
                conn.st = St::Up;
                self.up += 1;
                self.out.connections += 1;
                self.sh.connected.fetch_add(1, Ordering::Relaxed);
            }
            OpKind::RecvPooled => {
                if self.conns[i].st != St::Up {
                    return;
                }
                match &c.result {
                    Ok(_) if c.more => {
                        if let Some(b) = c.buf() {
                            self.on_data(i, b.as_slice(), now);
                        }
                    }
                    Ok(_) => {
                        let conn = &self.conns[i];
                        let msg = format!(
                            "connection closed by the server ({} of {} bytes echoed)",
                            conn.recvd, conn.sent
                        );
                        self.cut(i, "closed_by_peer", msg);
                    }
                    Err(e) => {
                        let msg = format!("receive failed: {e}");
                        let kind = kind_name(e);
                        self.cut(i, &kind, msg);
                    }
                }
            }
            OpKind::Send => {
                let conn = &mut self.conns[i];
                conn.sending = false;
                if conn.st != St::Up {
                    return;
                }
                match &c.result {
                    Ok(_) => {
                        if let Some(Buf::Vec(mut v)) = c.take_buf() {
                            if conn.spare.is_none() && v.capacity() <= 1 << 20 {
                                v.clear();
                                conn.spare = Some(v);
                            }
                        }
                        if !conn.out.is_empty() && !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(i);
                        }
                    }
                    Err(e) => {
                        let msg = format!("send failed: {e}");
                        let kind = kind_name(e);
                        self.cut(i, &kind, msg);
                    }
                }
            }
            _ => {}
        }
    }

    /// Verifies echoed bytes and completes the messages they finish.
    fn on_data(&mut self, i: usize, data: &[u8], now: Instant) {
        let c = &mut self.conns[i];
        let outstanding = (c.sent - c.recvd) as usize;
        let n_ok = data.len().min(outstanding);
        if let Some((j, want)) = payload::verify(c.key, c.recvd, &data[..n_ok]) {
            let msg = format!(
                "verification failed: byte offset {} of the connection's stream: sent 0x{:02x}, received 0x{:02x}",
                c.recvd + j as u64,
                want,
                data[j]
            );
            self.fail(i, "verify_mismatch", msg);
            self.sh.abort.store(true, Ordering::SeqCst);
            return;
        }
        if data.len() > n_ok {
            let msg = format!(
                "verification failed: byte offset {} of the connection's stream: received bytes beyond the {} sent",
                c.sent, c.sent
            );
            self.fail(i, "unexpected_data", msg);
            self.sh.abort.store(true, Ordering::SeqCst);
            return;
        }
        c.recvd += data.len() as u64;
        c.last_progress = now;
        c.fruitless = 0;
        self.prog_bytes += data.len() as u64;
        let mut completed = 0;
        while let Some(m) = c.inflight.front() {
            if m.end > c.recvd {
                break;
            }
            let m = c.inflight.pop_front().expect("front exists");
            completed += 1;
            if m.measured {
                let us = now.saturating_duration_since(m.start).as_micros() as u64;
                self.out.hist.saturating_record(us.max(1));
                self.out.messages += 1;
                self.out.bytes += u64::from(m.len);
                self.out.last_done = Some(now);
            }
        }
        self.prog_msgs += completed;
        if completed > 0 && c.inflight.is_empty() {
            self.busy -= 1;
        }
        if let (Some(t0), true) = (self.t0, completed > 0) {
            count_in_slice(&mut self.out.series, t0, now, completed);
        }
        if self.closed_loop {
            for _ in 0..completed {
                if !self.try_create(i, now, now) {
                    break;
                }
            }
        }
    }
}
