//! How a Linux engine plugs into the kit: it says what to do with each
//! command, how it enters the kernel and reaps what came back, and what its
//! timers do; everything else about a turn ([`crate::kit::run`]) is the
//! same for both engines and written here once.

use std::time::Duration;

use super::{Cmd, Core, EngineFd, Kind, OpReq};
use crate::kit::run::{self as kit_run, EngineCounters, TimerItem, TimerTarget, Timers};
use crate::op::Completion;

/// A Linux engine, as the kit turns it.
pub(crate) trait LinuxEngine {
    fn core(&mut self) -> &mut Core;
    fn core_ref(&self) -> &Core;

    /// A new handle of `kind`.
    fn register(&mut self, hid: u64, fd: EngineFd, key: u64, kind: Kind);
    /// A new operation.
    fn start(&mut self, req: OpReq);
    /// `CancelIoEx` of operation `op` of handle `hid`.
    fn cancel(&mut self, hid: u64, op: u64);
    /// `closesocket`.
    fn close(&mut self, hid: u64);

    /// Takes back the pool buffers the application gave back, and resumes
    /// what starved for them.
    fn recycle(&mut self);
    /// What else the engine does each turn once commands, buffers and
    /// timers are in.
    fn settle(&mut self) {}
    /// Whether work was left for this turn that must not wait for the
    /// kernel.
    fn leftovers(&self) -> bool {
        false
    }
    /// Whether the engine drains at shutdown: it may block though nothing
    /// would wake it (its caller bounds the wait).
    fn draining(&self) -> bool {
        false
    }
    /// Hands what was started to the kernel; waits (see
    /// [`kit_run::Engine::enter`]). Returns whether it entered the kernel.
    fn enter_kernel(&mut self, block: bool, wait: Option<Duration>) -> bool;
    /// Handles what the kernel reported.
    fn reap_kernel(&mut self);

    /// The deadline of operation `op` in `slot` passed (it may be gone).
    fn deadline(&mut self, slot: usize, op: u64);
    /// The back-off of standing operation `op` in `slot` is over (it may be
    /// gone).
    fn rearm(&mut self, slot: usize, op: u64);

    /// Stops on the engine's own thread.
    fn stop_engine(&mut self);
}

/// Carries out every command queued since the last call.
pub(crate) fn take_commands<E: LinuxEngine>(e: &mut E) {
    if !e.core_ref().shared.has_cmds() {
        return;
    }
    let mut cmds = std::mem::take(&mut e.core().cmds);
    e.core().shared.take_cmds(&mut cmds);
    for cmd in cmds.drain(..) {
        apply_command(e, cmd);
    }
    e.core().cmds = cmds;
}

/// Carries out one command.
pub(crate) fn apply_command<E: LinuxEngine>(e: &mut E, cmd: Cmd) {
    match cmd {
        Cmd::Register { hid, fd, key, kind } => e.register(hid, fd, key, kind),
        Cmd::Start(req) => e.start(req),
        Cmd::Cancel { hid, op } => e.cancel(hid, op),
        Cmd::Close { hid } => e.close(hid),
        Cmd::Timer { at, pkt } => e.core().timers.add(at, TimerItem::Post(pkt)),
    }
}

impl<E: LinuxEngine> TimerTarget for E {
    fn timers(&mut self) -> &mut Timers {
        &mut self.core().timers
    }

    fn post(&mut self, c: Completion) {
        self.core().out.push(c);
    }

    fn deadline(&mut self, slot: usize, op: u64) {
        LinuxEngine::deadline(self, slot, op);
    }

    fn rearm(&mut self, slot: usize, op: u64) {
        LinuxEngine::rearm(self, slot, op);
    }
}

impl<E: LinuxEngine> kit_run::Engine for E {
    fn intake(&mut self) {
        take_commands(self);
        self.recycle();
        kit_run::fire_timers(self);
        self.settle();
    }

    fn busy(&self) -> bool {
        !self.core_ref().out.is_empty() || self.leftovers()
    }

    fn prepare_sleep(&mut self) -> bool {
        self.draining() || self.core_ref().prepare_sleep()
    }

    fn woke(&mut self) {
        self.core().shared.woke();
    }

    fn enter(&mut self, block: bool, wait: Option<Duration>) -> bool {
        self.enter_kernel(block, wait)
    }

    fn reap(&mut self) {
        self.reap_kernel();
        self.recycle();
        kit_run::fire_timers(self);
    }

    fn made(&self) -> usize {
        self.core_ref().out.len()
    }

    fn counters(&self) -> &EngineCounters {
        &self.core_ref().shared.counters
    }

    fn flush_to_queue(&mut self) {
        self.core().flush_to_queue();
    }

    fn stop_requested(&self) -> bool {
        self.core_ref().shared.is_shutdown()
    }

    fn shutdown(&mut self) {
        self.stop_engine();
    }
}
