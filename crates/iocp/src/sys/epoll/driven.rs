//! What the threads that drive an epoll engine use without holding it: the
//! driver's wait on the engine's set, and the standby's own set.
//!
//! The standby sleeps on a second epoll set that watches two things: the
//! engine's set itself (an epoll descriptor is readable while it has events
//! to report) and an eventfd of its own. The engine's set is watched only
//! while the standby is armed — while nobody waits on the engine's set —
//! so it is not woken for events the driver takes; the eventfd carries the
//! hand-overs to the standby.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::poller::Poller;
use super::EpollEngine;
use crate::kit::lock;
use crate::sys::common::{eventfd, eventfd_drain, eventfd_signal, EngineCounters};

/// `epoll_event.u64` of the engine's set in the standby's set.
const ENGINE: u64 = 1;
/// `epoll_event.u64` of the standby's eventfd.
const STANDBY: u64 = 2;

/// The kernel side of a driven epoll engine.
pub(crate) struct EpollWait {
    engine: Arc<Poller>,
    /// The driver's events, filled without the engine and handed to it.
    events: Mutex<Vec<libc::epoll_event>>,
    /// The standby's set: the engine's set (watched while armed) and
    /// `standby`.
    set: Poller,
    standby: OwnedFd,
    /// The standby's events (one standby at a time).
    standby_events: Mutex<Vec<libc::epoll_event>>,
}

impl EpollWait {
    pub(crate) fn new(engine: &EpollEngine) -> io::Result<EpollWait> {
        let set = Poller::new()?;
        let standby = eventfd()?;
        set.add(engine.poller.fd(), 0, ENGINE)?;
        set.add(
            std::os::fd::AsRawFd::as_raw_fd(&standby),
            libc::EPOLLIN as u32,
            STANDBY,
        )?;
        Ok(EpollWait {
            engine: engine.poller.clone(),
            events: Mutex::new(Vec::with_capacity(super::EVENTS)),
            set,
            standby,
            standby_events: Mutex::new(Vec::with_capacity(2)),
        })
    }

    /// The driver's wait on the engine's set, up to `wait` (`None`: no
    /// limit); what it got goes to the engine with [`Events::give`].
    pub(crate) fn wait(&self, wait: Option<Duration>, counters: &EngineCounters) -> Events<'_> {
        let ms = wait.map_or(-1, |d| {
            d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        });
        let mut events = lock(&self.events);
        if let Err(e) = self.engine.wait(&mut events, ms) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("epoll_wait: {e}");
            }
        }
        EngineCounters::bump(&counters.enters, 1);
        Events(events)
    }

    /// Arms (or disarms) the standby: its set reports the engine's set only
    /// while armed. Level-triggered, so events already waiting wake it at
    /// once.
    pub(crate) fn set_standby(&self, on: bool) {
        let events = if on { libc::EPOLLIN as u32 } else { 0 };
        if let Err(e) = self.set.modify(self.engine.fd(), events, ENGINE) {
            tracing::warn!("epoll: cannot arm the standby: {e}");
        }
    }

    /// The standby's wait: until its set reports something or `until`
    /// passes. Returns whether it reported something.
    pub(crate) fn standby_wait(&self, until: Option<Instant>) -> bool {
        let ms = until.map_or(-1, |u| {
            let d = u.saturating_duration_since(Instant::now());
            d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        });
        let mut buf = lock(&self.standby_events);
        // An interrupted wait reports nothing: the caller looks again.
        if self.set.wait(&mut buf, ms).is_err() {
            buf.clear();
        }
        if buf.iter().any(|ev| ev.u64 == STANDBY) {
            eventfd_drain(self.standby.as_fd());
        }
        !buf.is_empty()
    }

    /// Wakes the standby.
    pub(crate) fn wake_standby(&self) {
        eventfd_signal(self.standby.as_fd());
    }
}

/// The driver's events, held until the engine takes them.
pub(crate) struct Events<'a>(std::sync::MutexGuard<'a, Vec<libc::epoll_event>>);

impl Events<'_> {
    /// Hands the events to the engine (its turn's end handles them).
    pub(crate) fn give(mut self, e: &mut EpollEngine) {
        e.take_events(&mut self.0);
    }
}
