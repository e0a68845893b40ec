//! The file pool: regular files are never "ready" for epoll (a read of a
//! page not in memory blocks, whatever `O_NONBLOCK` says), so each
//! operation on a file runs to its end with blocking calls on one of at
//! most `max` threads of the engine's own, started when work comes and
//! kept until the engine stops. Its result goes back to the engine, which
//! completes it as any other.
//!
//! The contract stays the engine's: an operation still waiting for a thread
//! can be taken back (a cancel, a deadline, its handle's close) and
//! completes aborted; one a thread runs completes with its result. A thread
//! runs each call inside a borrow of the descriptor ([`SocketFd::borrow`]),
//! so a handle's close closes the descriptor only after the last call on it
//! returned, and a call that would start after the close never runs.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::ops::EOp;
use crate::error;
use crate::kit::lock;
use crate::sys::common::{EngineCounters, EngineShared, OpMeta, SocketFd};

/// An operation on a file, handed to the pool.
pub(super) struct Job {
    pub meta: OpMeta,
    pub fd: Arc<SocketFd>,
    pub op: EOp,
}

/// An operation the pool ran, back to the engine.
pub(super) struct Done {
    pub meta: OpMeta,
    pub op: EOp,
    pub result: io::Result<usize>,
}

/// What the engine and its pool threads share.
struct Shared {
    q: Mutex<Queue>,
    /// Signalled when a job comes or the pool stops.
    more: Condvar,
    /// The engine: woken when a result is left for it; its counters carry
    /// the pool's gauges.
    engine: Arc<EngineShared>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Job>,
    done: Vec<Done>,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads started.
    threads: usize,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.q)
    }

    /// Publishes the queue's length and the thread count (under the lock,
    /// so one writer at a time).
    fn publish(&self, q: &Queue) {
        let c = &self.engine.counters;
        EngineCounters::set(&c.file_queue, q.waiting.len() as u64);
        EngineCounters::set(&c.file_threads, q.threads as u64);
    }
}

/// The engine's side of its file pool.
pub(super) struct FilePool {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    max: usize,
    /// Operations in the pool (waiting or running, or done and not yet
    /// taken back): op id → handle id.
    live: HashMap<u64, u64>,
}

impl FilePool {
    /// A pool of at most `max` threads (at least 1) for the engine `engine`.
    pub(super) fn new(engine: Arc<EngineShared>, max: usize) -> FilePool {
        FilePool {
            shared: Arc::new(Shared {
                q: Mutex::new(Queue::default()),
                more: Condvar::new(),
                engine,
            }),
            threads: Vec::new(),
            max: max.max(1),
            live: HashMap::new(),
        }
    }

    /// Queues `job`, starting a thread for it if the idle ones are all
    /// spoken for and fewer than `max` run. Gives the job back, with the
    /// error, if no thread runs and none could be started.
    #[allow(clippy::result_large_err)]
    pub(super) fn submit(&mut self, job: Job) -> Result<(), (Job, io::Error)> {
        let mut q = self.shared.lock();
        if q.waiting.len() >= q.idle && q.threads < self.max {
            let shared = self.shared.clone();
            let n = q.threads;
            let spawned = std::thread::Builder::new()
                .name(format!("iocp-file-{n}"))
                .spawn(move || work(&shared));
            match spawned {
                Ok(t) => {
                    self.threads.push(t);
                    q.threads += 1;
                }
                Err(e) if q.threads == 0 => return Err((job, e)),
                Err(e) => tracing::warn!("epoll file pool: cannot start thread {n}: {e}"),
            }
        }
        self.live.insert(job.meta.id, job.meta.hid);
        q.waiting.push_back(job);
        self.shared.publish(&q);
        drop(q);
        self.shared.more.notify_one();
        Ok(())
    }

    /// Whether operation `op` of handle `hid` is in the pool.
    pub(super) fn holds(&self, hid: u64, op: u64) -> bool {
        self.live.get(&op) == Some(&hid)
    }

    /// Takes operation `op` back if no thread has started it yet.
    pub(super) fn take_waiting(&mut self, op: u64) -> Option<Job> {
        let mut q = self.shared.lock();
        let at = q.waiting.iter().position(|j| j.meta.id == op)?;
        let job = q.waiting.remove(at);
        self.shared.publish(&q);
        drop(q);
        self.live.remove(&op);
        job
    }

    /// Takes back every operation of handle `hid` that no thread has
    /// started yet, in the order they were queued.
    pub(super) fn take_waiting_of(&mut self, hid: u64) -> Vec<Job> {
        let mut q = self.shared.lock();
        let (of, rest): (VecDeque<Job>, VecDeque<Job>) =
            q.waiting.drain(..).partition(|j| j.meta.hid == hid);
        q.waiting = rest;
        self.shared.publish(&q);
        drop(q);
        for j in &of {
            self.live.remove(&j.meta.id);
        }
        of.into()
    }

    /// Takes the results the threads left, if they left any since the
    /// last call.
    pub(super) fn take_done(&mut self, out: &mut Vec<Done>) {
        if !self.shared.engine.take_nudge() {
            return;
        }
        std::mem::swap(&mut self.shared.lock().done, out);
        for d in out.iter() {
            self.live.remove(&d.meta.id);
        }
    }

    /// Stops: operations still waiting are dropped (the engine stops too,
    /// so no completion goes anywhere), running ones finish their call, and
    /// every thread is joined.
    pub(super) fn shutdown(&mut self) {
        let dropped = {
            let mut q = self.shared.lock();
            q.stop = true;
            let dropped = std::mem::take(&mut q.waiting);
            self.shared.publish(&q);
            dropped
        };
        drop(dropped);
        self.shared.more.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.live.clear();
        let mut q = self.shared.lock();
        q.done.clear();
        q.threads = 0;
        self.shared.publish(&q);
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A pool thread: runs jobs until the pool stops.
fn work(shared: &Shared) {
    let mut q = shared.lock();
    loop {
        if let Some(Job { meta, fd, mut op }) = q.waiting.pop_front() {
            shared.publish(&q);
            drop(q);
            let result = fd
                .borrow(|fd| op.run_to_end(fd))
                // The handle closed between the queue and the call.
                .unwrap_or_else(|| Err(error::aborted()));
            drop(fd);
            q = shared.lock();
            if q.stop {
                continue;
            }
            q.done.push(Done { meta, op, result });
            drop(q);
            shared.engine.nudge();
            q = shared.lock();
            continue;
        }
        if q.stop {
            return;
        }
        q.idle += 1;
        q = shared.more.wait(q).unwrap_or_else(|p| p.into_inner());
        q.idle -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::op::OpData;
    use crate::pool::PoolShared;

    /// Polls `cond` for up to 10 s.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// At most `max` threads run; the rest waits, visible in the gauges;
    /// what waits can be taken back (one operation, or a handle's), what
    /// runs comes back as a result and a nudge; the pool stops and joins.
    /// Reads of an empty blocking pipe stand in for slow file calls.
    #[test]
    fn bounded_queue_taken_back_and_results() {
        let engine = EngineShared::new(PoolShared::new(1, 64)).unwrap();
        let mut pool = FilePool::new(engine.clone(), 2);
        let (r, mut w) = std::io::pipe().unwrap();
        let (_sock, efd) = SocketFd::new(std::os::fd::OwnedFd::from(r));
        for id in 1..=5 {
            let meta = OpMeta {
                hid: 7,
                key: 7,
                id,
                token: id,
            };
            let op = EOp::new(OpData::Read(Vec::with_capacity(1).into(), None));
            pool.submit(Job {
                meta,
                fd: efd.share(),
                op,
            })
            .unwrap_or_else(|_| panic!("submit"));
        }
        let c = &engine.counters;
        let gauges = || {
            (
                c.file_threads.load(Ordering::Relaxed),
                c.file_queue.load(Ordering::Relaxed),
            )
        };
        eventually("two threads block, three jobs wait", || gauges() == (2, 3));
        assert_eq!(pool.threads.len(), 2, "never more than max threads");
        assert!(pool.holds(7, 5) && !pool.holds(8, 5));
        let job = pool.take_waiting(5).expect("job 5 still waits");
        assert_eq!(job.meta.id, 5);
        assert!(!pool.holds(7, 5));
        let of: Vec<u64> = pool.take_waiting_of(7).iter().map(|j| j.meta.id).collect();
        assert_eq!(of, [3, 4], "the handle's waiting jobs, in order");
        assert_eq!(gauges(), (2, 0));
        assert!(pool.take_waiting(1).is_none(), "job 1 runs: not taken back");
        w.write_all(b"ab").unwrap();
        let mut done = Vec::new();
        eventually("both reads come back", || {
            let mut more = Vec::new();
            pool.take_done(&mut more);
            done.append(&mut more);
            done.len() == 2
        });
        let mut ids: Vec<u64> = done.iter().map(|d| d.meta.id).collect();
        ids.sort();
        assert_eq!(ids, [1, 2]);
        assert!(done.iter().all(|d| d.result.as_ref().ok() == Some(&1)));
        assert!(pool.live.is_empty(), "every job accounted for");
        pool.shutdown();
        assert_eq!(gauges(), (0, 0));
        assert!(pool.threads.is_empty());
    }
}
