//! What both Linux engines share: the command queue that carries work from
//! application threads to the engine's thread, the wake-up eventfd, the
//! engine's own state around its operations ([`Core`]), the slab of
//! operation slots, the descriptor a handle and its engine share ([`fd`]),
//! and the raw calls they both make ([`calls`]).

mod calls;
mod engine;
mod fd;
pub(crate) mod ops;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

pub(crate) use calls::{
    direct_io, eventfd, eventfd_drain, eventfd_signal, flush, kernel_release, read_into,
    read_pooled, recv_from_into, recv_into, sockaddr_from_storage, wait_readable, write_from,
};
pub(crate) use engine::{apply_command, take_commands, LinuxEngine};
pub(crate) use fd::{EngineFd, SocketFd};
pub(crate) use ops::{hand_back, op_base, op_sum, unsent, OpBase, OpMeta};

use crate::kit::lock;
pub(crate) use crate::kit::run::EngineCounters;
use crate::kit::run::Timers;
use crate::op::Completion;
pub(crate) use crate::op::OpData;
use crate::pool::{PoolShared, ReturnWaker};
use crate::queue::Queue;
pub(crate) use crate::sys::contract::Kind;

/// Work for an engine, queued by any thread.
pub(crate) enum Cmd {
    /// A new handle of `kind`: the engine holds `fd` from now on and lets
    /// go of it after the handle's last completion (dropping the command
    /// lets go too).
    Register {
        hid: u64,
        fd: EngineFd,
        key: u64,
        kind: Kind,
    },
    /// Start an operation.
    Start(OpReq),
    /// Cancel one operation (`CancelIoEx(h, ov)`).
    Cancel { hid: u64, op: u64 },
    /// Close a handle: abort its operations, then close the descriptor.
    Close { hid: u64 },
    /// Queue `pkt` at `at` (`post_after`).
    Timer { at: Instant, pkt: Completion },
}

/// One operation as the application started it.
pub(crate) struct OpReq {
    pub hid: u64,
    /// The handle's completion key: the completion carries it even when the
    /// handle is gone by the time the engine sees the operation.
    pub key: u64,
    pub id: u64,
    pub token: u64,
    pub deadline: Option<Instant>,
    pub data: OpData,
}

impl OpReq {
    /// Who the operation belongs to, its deadline, and what it does.
    pub(crate) fn split(self) -> (OpMeta, Option<Instant>, OpData) {
        let meta = OpMeta {
            hid: self.hid,
            key: self.key,
            id: self.id,
            token: self.token,
        };
        (meta, self.deadline, self.data)
    }
}

/// Why an io_uring ring cannot be one that several threads drive on this
/// kernel (the port then gets an engine thread instead; `Auto` does not
/// fall back to epoll for it).
#[derive(Debug)]
pub(crate) struct CannotDrive(pub(crate) &'static str);

impl std::fmt::Display for CannotDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for CannotDrive {}

impl CannotDrive {
    /// The error, as an `io::Error`.
    pub(crate) fn error(why: &'static str) -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, CannotDrive(why))
    }

    /// Whether `e` is one.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|r| r.is::<CannotDrive>())
    }
}

/// Whether a socket is a stream (what it cannot say counts as one).
pub(crate) fn is_stream(fd: &EngineFd) -> bool {
    socket2::SockRef::from(fd)
        .r#type()
        .map_or(true, |t| t == socket2::Type::STREAM)
}

/// The most iovecs one `sendmsg(2)` takes (`UIO_MAXIOV`; more fail with
/// `EMSGSIZE`): a longer vectored send goes out in several calls, still as
/// one operation.
pub(crate) const IOV_MAX: usize = libc::UIO_MAXIOV as usize;

/// The part of an engine other threads may touch.
pub(crate) struct EngineShared {
    cmds: Mutex<Vec<Cmd>>,
    /// Whether `cmds` holds any (set and cleared under its lock): a turn
    /// with no command takes no lock.
    any_cmds: AtomicBool,
    /// Set by the engine just before it may block; cleared by whoever wakes it.
    sleeping: AtomicBool,
    /// Set by a helper thread of the engine (the epoll file pool) that left
    /// results for it; cleared by the engine as it takes them.
    nudged: AtomicBool,
    /// Set by a thread other than an inline port's owner after it queued a
    /// packet on the port, before it wakes the engine. Only the owner's
    /// engine reads and clears it, and only once it has announced its sleep:
    /// if set, the engine does not sleep, and the owner takes the packet
    /// from the queue before it turns the engine again. A flag set for a
    /// packet the owner already took stays set until then, and costs one
    /// turn that does not sleep.
    posted: AtomicBool,
    wake_fd: OwnedFd,
    shutdown: AtomicBool,
    pub(crate) pool: Arc<PoolShared>,
    /// What the engine did, for tests and operators.
    pub(crate) counters: EngineCounters,
    /// How a sleeping engine is woken, if not by the eventfd (a driven
    /// io_uring engine: a message posted into its ring).
    signal: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Who takes new work in, on an engine its port's waiting threads drive.
    /// Unset: the engine is woken.
    on_work: OnceLock<Box<dyn Fn(Work) + Send + Sync>>,
}

/// What kind of work was queued for an engine its waiting threads drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// A command whose effect shows only through a completion (a start, a
    /// cancel, a registration, a timer): a handler's may wait for its
    /// thread's next `get`.
    Command,
    /// A handle's close: the peer sees it, so it goes in at once.
    Close,
    /// Pool buffers given back (from a `Drop`), or results a helper thread
    /// left (a file operation's): taken in by whoever turns the engine
    /// next; the thread that queued them never turns it.
    Buffers,
}

/// A hook of a driven engine (see [`EngineShared::drive_with`]).
pub(crate) type Hook<A> = Box<dyn Fn(A) + Send + Sync>;

impl EngineShared {
    pub(crate) fn new(pool: Arc<PoolShared>) -> io::Result<Arc<EngineShared>> {
        let shared = Arc::new(EngineShared {
            cmds: Mutex::new(Vec::with_capacity(256)),
            any_cmds: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            posted: AtomicBool::new(false),
            wake_fd: calls::eventfd()?,
            shutdown: AtomicBool::new(false),
            pool,
            counters: EngineCounters::default(),
            signal: OnceLock::new(),
            on_work: OnceLock::new(),
        });
        let waker: Arc<dyn ReturnWaker> = shared.clone();
        shared.pool.set_waker(Arc::downgrade(&waker));
        Ok(shared)
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake_fd.as_raw_fd()
    }

    /// Makes the engine one its port's waiting threads drive: `signal`
    /// wakes it when it sleeps in the kernel (`None`: the eventfd still
    /// does), `on_work` decides who takes in new work. Set once, before the
    /// engine is shared.
    pub(crate) fn drive_with(&self, signal: Option<Hook<()>>, on_work: Hook<Work>) {
        if let Some(signal) = signal {
            let _ = self.signal.set(Box::new(move || signal(())));
        }
        let _ = self.on_work.set(on_work);
    }

    /// Queues a command; gives it back if the engine has shut down.
    // The command comes back whole so its buffer is never lost.
    #[allow(clippy::result_large_err)]
    pub(crate) fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        let work = if matches!(cmd, Cmd::Close { .. }) {
            Work::Close
        } else {
            Work::Command
        };
        {
            let mut q = lock(&self.cmds);
            if self.shutdown.load(Ordering::Acquire) {
                return Err(cmd);
            }
            q.push(cmd);
            // SeqCst, before `work_queued` looks whether the engine sleeps
            // (see `prepare_sleep`).
            self.any_cmds.store(true, Ordering::SeqCst);
        }
        self.work_queued(work);
        Ok(())
    }

    /// Work was queued for the engine: wake it, or let the driven port's
    /// hook decide.
    fn work_queued(&self, work: Work) {
        match self.on_work.get() {
            Some(f) => f(work),
            None => self.wake(),
        }
    }

    /// Takes every queued command (the engine calls this each turn).
    /// `out` must be empty; it gets the queue's storage in exchange.
    pub(crate) fn take_cmds(&self, out: &mut Vec<Cmd>) {
        if !self.any_cmds.load(Ordering::SeqCst) {
            return;
        }
        let mut q = lock(&self.cmds);
        std::mem::swap(&mut *q, out);
        self.any_cmds.store(false, Ordering::SeqCst);
    }

    pub(crate) fn has_cmds(&self) -> bool {
        self.any_cmds.load(Ordering::SeqCst)
    }

    /// Wakes the engine if it is (about to be) blocked.
    pub(crate) fn wake(&self) {
        // A load first: an engine that is awake (the common case: work
        // comes from its own thread, or while it turns) costs no write.
        // Sound as a SeqCst load: the waker stored its work (SeqCst)
        // before, and the engine stores `sleeping` before it looks for
        // work, so one of the two sees the other.
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.signal_now();
        }
    }

    /// Wakes the engine whether or not it announced a sleep (the signal
    /// persists until a turn consumes it).
    pub(crate) fn signal_now(&self) {
        match self.signal.get() {
            Some(s) => s(),
            None => calls::eventfd_signal(self.wake_fd.as_fd()),
        }
    }

    /// Whether the engine announced that it sleeps (or is about to) in the
    /// kernel.
    pub(crate) fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Whether work waits that no turn has taken in yet.
    pub(crate) fn has_work(&self) -> bool {
        self.has_cmds() || self.pool.has_returned() || self.nudged.load(Ordering::SeqCst)
    }

    /// The engine announces it may block. Returns `false` if work arrived in
    /// the meantime, in which case it must not block.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        // A pool buffer dropped before `sleeping` was set did not wake us
        // (its dropper saw us awake); look for it now.
        if self.has_cmds()
            || self.is_shutdown()
            || self.pool.has_returned()
            || self.nudged.load(Ordering::SeqCst)
        {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// A helper thread left results for the engine (after storing them):
    /// wakes it, and keeps it from going to sleep without taking them.
    pub(crate) fn nudge(&self) {
        self.nudged.store(true, Ordering::SeqCst);
        self.work_queued(Work::Buffers);
    }

    /// Another thread posted a packet to an inline port (after queuing
    /// it): wakes the owner's engine, and keeps it from going to sleep
    /// without the owner taking the packet.
    pub(crate) fn posted(&self) {
        self.posted.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Whether a packet was posted since the last call (see
    /// [`EngineShared::posted`]).
    pub(crate) fn take_posted(&self) -> bool {
        // A load first: the common case (nothing posted) writes nothing.
        self.posted.load(Ordering::SeqCst) && self.posted.swap(false, Ordering::SeqCst)
    }

    /// Whether a helper thread left results since the last call (the
    /// engine calls this before taking them).
    pub(crate) fn take_nudge(&self) -> bool {
        self.nudged.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Asks the engine to stop; later `send`s fail.
    pub(crate) fn begin_shutdown(&self) {
        {
            let _q = lock(&self.cmds);
            self.shutdown.store(true, Ordering::Release);
        }
        calls::eventfd_signal(self.wake_fd.as_fd());
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Empties the eventfd counter (epoll engine; the io_uring engine reads
    /// it through its ring instead).
    pub(crate) fn drain_wake(&self) {
        eventfd_drain(self.wake_fd.as_fd());
    }
}

impl ReturnWaker for EngineShared {
    fn buffers_returned(&self) {
        self.work_queued(Work::Buffers);
    }
}

/// What every Linux engine keeps besides its operations and handles.
pub(crate) struct Core {
    pub shared: Arc<EngineShared>,
    /// The port the completions go to (`None`: the threads that drive the
    /// engine take them from `out` themselves).
    pub queue: Option<Queue<Completion>>,
    /// Completions made and not yet handed to the port (one batch a turn).
    pub out: Vec<Completion>,
    pub timers: Timers,
    /// Pool buffers the application gave back (taken each turn).
    pub returned: Vec<u16>,
    cmds: Vec<Cmd>,
    /// The engine of an inline port: the thread that turns it is also the
    /// one that takes the port's packets.
    inline: bool,
}

impl Core {
    pub(crate) fn new(
        shared: Arc<EngineShared>,
        queue: Option<Queue<Completion>>,
        inline: bool,
    ) -> Core {
        Core {
            shared,
            queue,
            out: Vec::with_capacity(256),
            timers: Timers::new(),
            returned: Vec::new(),
            cmds: Vec::with_capacity(256),
            inline,
        }
    }

    /// The engine announces it may block ([`EngineShared::prepare_sleep`]);
    /// `false` if it must not. An inline engine also must not block when
    /// another thread posted to the port since it last looked: its own
    /// thread is the one to take the packet (the owner's own posts, and
    /// what a full batch left queued, it takes before it turns the engine).
    /// A post either sets its flag before this look or finds the
    /// announcement and wakes the engine.
    pub(crate) fn prepare_sleep(&self) -> bool {
        if !self.shared.prepare_sleep() {
            return false;
        }
        if self.inline && self.shared.take_posted() {
            self.shared.woke();
            return false;
        }
        true
    }

    /// Hands the completions made so far to the port's queue (dropped if
    /// the port is closed).
    pub(crate) fn flush_to_queue(&mut self) {
        let Some(q) = &self.queue else {
            return;
        };
        if !self.out.is_empty() && !q.post_batch(&mut self.out) {
            self.out.clear();
        }
    }

    /// Drops every queued command (at shutdown: their descriptors close and
    /// their buffers are freed).
    pub(crate) fn discard_commands(&mut self) {
        self.shared.take_cmds(&mut self.cmds);
        self.cmds.clear();
    }

    /// Takes the pool buffers the application gave back into `returned`.
    pub(crate) fn take_returned(&mut self) {
        self.shared.pool.take_returned(&mut self.returned);
    }
}

/// A small inline engine's configuration, for tests that drive an engine
/// directly.
#[cfg(test)]
pub(crate) fn test_config() -> crate::config::Config {
    crate::config::Config {
        concurrency: 1,
        engines: 1,
        backend: None,
        pool_bufs: 4,
        pool_buf_size: 1024,
        sq_entries: 64,
        cq_entries: 128,
        inline: true,
        file_threads: 2,
    }
}

/// A slab: stable indices for in-flight operation slots. Each index also
/// has a generation, bumped whenever its slot is freed, so a name made of
/// (index, generation) never refers to a later occupant of the slot.
pub(crate) struct Slab<T> {
    items: Vec<Option<T>>,
    gens: Vec<u32>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    pub(crate) fn new() -> Self {
        Slab {
            items: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
    pub(crate) fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let slot = &mut self.items[i];
            debug_assert!(slot.is_none(), "slab index {i} is free but holds a value");
            // A free index holds `None`, which owns nothing: forgetting it
            // skips its drop (an out-of-line call per insert, for a large
            // `T`) and leaks nothing.
            std::mem::forget(slot.replace(v));
            i
        } else {
            self.items.push(Some(v));
            self.gens.push(0);
            self.items.len() - 1
        }
    }
    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take();
        if v.is_some() {
            self.gens[i] = self.gens[i].wrapping_add(1);
            self.free.push(i);
            self.len -= 1;
        }
        v
    }
    /// The generation of slot `i`: how many times it has been freed.
    pub(crate) fn generation(&self, i: usize) -> u32 {
        self.gens.get(i).copied().unwrap_or(0)
    }
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// How many indices there are (occupied or free).
    pub(crate) fn slots(&self) -> usize {
        self.items.len()
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Handle ids are small unique counters handed out by the port, never
/// chosen by a peer, so the engines' handle maps need no DoS-resistant
/// hash: a multiplicative mix is enough (the default SipHash showed up in
/// profiles, being run on every completion).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map from handle id to an engine's per-handle state.
pub(crate) type HandleMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod pool_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Weak};

    use crate::pool::{PoolShared, PooledBuf, ReturnWaker};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl ReturnWaker for Count {
        fn buffers_returned(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn lend(pool: &Arc<PoolShared>, bid: u16) -> PooledBuf {
        // SAFETY: no kernel and no other `PooledBuf` ever holds these
        // buffers (the test hands each id out once per round, after taking
        // it back), and a length of 0 needs nothing written.
        unsafe { pool.lend(bid, 0) }
    }

    /// Buffers dropped on several threads at once all come back, each
    /// once; only a drop onto an empty list wakes the engine.
    #[test]
    fn returned_list_loses_nothing_and_wakes_on_the_first() {
        const N: u16 = 256;
        let pool = PoolShared::new(N as usize, 16);
        let waker = Arc::new(Count::default());
        let weak: Weak<dyn ReturnWaker> = Arc::downgrade(&(waker.clone() as Arc<dyn ReturnWaker>));
        pool.set_waker(weak);
        let mut back = Vec::new();
        for round in 0..20 {
            let bufs: Vec<PooledBuf> = (0..N).map(|b| lend(&pool, b)).collect();
            let mut per_thread: Vec<Vec<PooledBuf>> = (0..4).map(|_| Vec::new()).collect();
            for (i, b) in bufs.into_iter().enumerate() {
                per_thread[i % 4].push(b);
            }
            let wakes = waker.0.load(Ordering::SeqCst);
            std::thread::scope(|s| {
                for v in per_thread {
                    s.spawn(move || drop(v));
                }
                // Takes while they drop.
                for _ in 0..50 {
                    pool.take_returned(&mut back);
                    std::thread::yield_now();
                }
            });
            pool.take_returned(&mut back);
            assert!(!pool.has_returned());
            back.sort_unstable();
            assert_eq!(back, (0..N).collect::<Vec<_>>(), "round {round}");
            back.clear();
            let woke = waker.0.load(Ordering::SeqCst) - wakes;
            assert!(
                (1..=N as usize).contains(&woke),
                "round {round}: {woke} wakes"
            );
        }
        // One at a time: each drop finds the list empty and wakes.
        let wakes = waker.0.load(Ordering::SeqCst);
        for b in 0..3 {
            drop(lend(&pool, b));
            assert!(pool.has_returned());
            pool.take_returned(&mut back);
        }
        assert_eq!(waker.0.load(Ordering::SeqCst) - wakes, 3);
        // Several before a take: one wake.
        drop((0..3).map(|b| lend(&pool, b)).collect::<Vec<_>>());
        assert_eq!(waker.0.load(Ordering::SeqCst) - wakes, 4);
        pool.take_returned(&mut back);
        assert_eq!(back.len(), 6);
        assert_eq!(pool.stats().in_use, 0);
    }
}
