//! The semantics contract, written once and run on every target: a backend
//! this build has, driven by the threads that wait on the port, fed by
//! engine threads, or inline (per-core). Each clause
//! is one test per target, `conformance::<target>::<clause>` (for example
//! `conformance::uring::lifo_wake`), so a test runner lists, filters, times
//! and retries each one:
//!
//! ```text
//! cargo nextest run -p completion-port --test conformance -E 'test(/::lifo_wake$/)'
//! cargo test -p completion-port --test conformance -- conformance::epoll_inline::
//! ```
//!
//! Targets: `uring`, `uring_threads`, `uring_inline`, `epoll`,
//! `epoll_threads`, `epoll_inline` (Linux), `iocp` (Windows). `uring` and
//! `epoll` are ports with the default one engine, which the waiting threads
//! drive; the `_threads` targets have two engines, each on its own thread. Every clause is generated for every target; one that cannot
//! hold on a target is an ignored test whose reason says why (`cargo test`
//! prints `... ignored, <reason>`; run anyway, it prints that reason and
//! passes without running the clause). Which clause runs where is its mode
//! in the table below:
//! - `any`: every target;
//! - `threaded`: several threads waiting on one port, so not on an inline
//!   port, whose only getter is its owner thread;
//! - `scheduling`: threaded, and about the order and count the library's own
//!   port keeps (LIFO wake-up, the concurrency limit): not on IOCP, where
//!   the kernel schedules (`tests/windows.rs` checks it there);
//! - `inline`: about an inline port's owner thread, so inline targets only;
//! - `linux`: about the Linux engines (io_uring, epoll), threaded or inline;
//! - `unix`: Unix domain sockets, every target where the backend has them
//!   (not yet the `iocp` backend: there an ignored test says so);
//!
//! A target whose backend cannot build a port on this machine (io_uring
//! blocked by seccomp or a sysctl, too old a kernel) fails each of its
//! tests, unless `IOCP_ALLOW_MISSING_BACKEND` names the backend (see
//! `util::ALLOW_MISSING_BACKEND`): then each test prints
//! `conformance::uring::lifo_wake SKIPPED: <reason>` and passes.

#[path = "../util/mod.rs"]
mod util;

mod datagram;
mod files;
mod lifecycle;
mod pooled;
mod queue;
mod stream;
mod timers;
mod unix;

use std::time::Duration;

use completion_port::Backend;
use util::Target;

/// A `get` timeout that polls.
const ZERO: Option<Duration> = Some(Duration::ZERO);

/// Not a clause: the child process of `files::pipe_child_stdio` on
/// Windows, which has no `cat`. Run with `IOCP_TEST_CAT=1` (and this
/// test's exact name), it copies its stdin to its stdout after the marker
/// line [`files::CAT_MARKER`] and exits at once, before the test harness
/// prints anything more; run without, it does nothing.
#[test]
fn cat_child() {
    if std::env::var_os("IOCP_TEST_CAT").is_some() {
        files::cat_child();
    }
}

/// Calls `$then!` with `$args` followed by every clause, each with its mode
/// (see the crate docs): the one table of the contract's clauses.
macro_rules! for_each_clause {
    ($then:ident!($($args:tt)*)) => {
        $then! { ($($args)*)
            any queue::exactly_once,
            scheduling queue::lifo_wake,
            scheduling queue::limit_running_blocks_waiters,
            scheduling queue::limit_batch_counts_once,
            scheduling queue::limit_thread_exit_releases,
            scheduling queue::limit_blocking_guard,
            inline queue::inline_owner_woken_by_release,
            any queue::blocking_guard_get_inside,
            any queue::blocking_guard_nested,
            any queue::blocking_guard_forgotten,
            threaded queue::blocking_guard_thread_exit,
            any queue::timed_out_get_consumes_nothing,
            any queue::post_wakes_getter,
            any queue::get_many,
            any lifecycle::failed_op_vs_no_packet,
            any lifecycle::cancel_pending,
            any lifecycle::cancel_races_data,
            any lifecycle::close_handle_in_flight,
            threaded lifecycle::close_port_wakes_waiters,
            threaded lifecycle::close_port_wakes_get_many_waiters,
            any lifecycle::close_port_then_calls_fail,
            any lifecycle::port_close_closes_handles,
            any lifecycle::with_socket_holds_descriptor,
            any lifecycle::with_socket_holds_descriptor_port_close,
            any lifecycle::with_socket_races_close,
            inline lifecycle::inline_port_closed_off_thread,
            any lifecycle::closed_handle_completion_keeps_key,
            any lifecycle::cancel_close_and_deadline,
            any timers::post_after_timer,
            any timers::op_deadline,
            any timers::timers_bounded,
            any stream::send_ordering,
            any stream::large_send_slow_peer,
            any stream::send_vectored_refused,
            any stream::send_vectored_many_buffers,
            any stream::send_cancel_part_way,
            any stream::send_deadline_part_way,
            any stream::short_writes_finish_in_order,
            any stream::recv_after_broken_write,
            any stream::connect_and_refused,
            any stream::accept_stream_then_cancel,
            threaded stream::started_work_goes_in_by_next_get,
            inline stream::inline_echo,
            inline stream::inline_order,
            inline stream::inline_short_get_takes_what_starts_completed,
            inline stream::inline_start_after_other_threads_register,
            any datagram::udp_round_trip,
            any datagram::udp_truncated_datagram,
            any datagram::udp_oversized_send_to,
            any datagram::udp_send_vectored_whole,
            any datagram::udp_send_to_recv_from,
            any datagram::send_to_stream_refused,
            any datagram::recv_from_stream_refused,
            any pooled::pooled_stream,
            any pooled::pooled_receive_starves_and_resumes,
            linux pooled::returned_buffers_always_wake_a_starved_receive,
            any pooled::starved_receives_resume_one_per_buffer,
            unix unix::unix_stream_round_trip,
            any files::file_offsets_concurrent,
            any files::file_eof_is_zero_bytes,
            any files::file_write_past_end_extends,
            any files::file_cancel_and_close_in_flight,
            any files::file_pool_bounded,
            any files::pipe_round_trip_and_eof,
            any files::pipe_child_stdio,
            any files::associate_refuses_other_kinds,
            any files::file_direct_io,
            unix unix::unix_datagram_send_to_recv_from,
        }
    };
}

/// `targets! { name: Backend, kind, threads; ... }` makes
/// `conformance::name`, one test per clause. A kind is `threaded` (several
/// threads wait on the port; the library schedules them), `inline` (the
/// owner turns the engine inside `get`) or `kernel` (the kernel's port
/// schedules the waiters); `threads` says whether engine threads feed the
/// port (else its waiting threads drive its engine).
macro_rules! targets {
    ($($target:ident: $backend:ident, $kind:ident, $threads:literal;)*) => {
        /// Every target this build tests.
        const TARGETS: &[Target] = &[$(Target {
            backend: Backend::$backend,
            inline: clause_test!(@inline $kind),
            engine_threads: $threads,
        }),*];

        mod conformance {
            $(for_each_clause!(target_module!($target, $backend, $kind, $threads));)*

            /// Every backend the build has is tested by one of the targets.
            #[test]
            fn every_available_backend_is_covered() {
                for b in ::completion_port::Backend::available() {
                    assert!(
                        crate::TARGETS.iter().any(|t| t.backend == *b),
                        "backend {b} has no conformance target"
                    );
                }
            }
        }
    };
}

/// The module of one target: a test per clause.
macro_rules! target_module {
    (($target:ident, $backend:ident, $kind:ident, $threads:literal)
        $($mode:ident $family:ident::$clause:ident,)*) => {
        pub mod $target {
            const TARGET: crate::Target = crate::Target {
                backend: ::completion_port::Backend::$backend,
                inline: clause_test!(@inline $kind),
                engine_threads: $threads,
            };
            $(clause_test!($target $kind $mode $family $clause);)*
        }
    };
}

/// One test: the clause on the module's `TARGET`, or an ignored test saying
/// why the clause cannot hold on that kind of target. The pairs of a kind
/// of target and a mode that skip are spelled out; every other pair runs,
/// and a kind or a mode this does not know fails the build.
macro_rules! clause_test {
    (@inline inline) => { true };
    (@inline $kind:ident) => { false };

    ($target:ident threaded inline $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "about an inline port's owner thread; \
            this port is no inline one");
    };
    ($target:ident inline threaded $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "needs several threads waiting on one port; \
            an inline port's only getter is its owner thread");
    };
    ($target:ident inline scheduling $family:ident $clause:ident) => {
        clause_test!($target inline threaded $family $clause);
    };
    ($target:ident kernel inline $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "about an inline port's owner thread; \
            this port has none");
    };
    ($target:ident kernel scheduling $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "the kernel schedules IOCP waiters: `waiting` \
            drops as the woken thread's GQCS returns, not inside `post`, and a thread blocked \
            on anything (these clauses' channels too) stops counting; tests/windows.rs checks \
            LIFO wake and the limit the kernel's way (Wine wakes FIFO and ignores the limit)");
    };
    ($target:ident kernel linux $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "about the Linux engines' wake-up when \
            pool buffers come back: the IOCP backend reads one pool buffer per readiness \
            packet, so a two-buffer pool whose buffers the application drops at once never \
            runs dry there (`starved` stays 0)");
    };
    ($target:ident kernel unix $family:ident $clause:ident) => {
        clause_test!(@skip $target $family $clause "iocp backend for Unix sockets: not \
            implemented yet");
    };
    // Every other pair of a known kind and a known mode runs the clause.
    ($target:ident $kind:ident $mode:ident $family:ident $clause:ident) => {
        clause_test!(@kind $kind);
        clause_test!(@mode $mode);
        clause_test!(@run $target $family $clause);
    };
    (@kind threaded) => {};
    (@kind inline) => {};
    (@kind kernel) => {};
    (@mode any) => {};
    (@mode threaded) => {};
    (@mode scheduling) => {};
    (@mode linux) => {};
    (@mode unix) => {};
    (@mode inline) => {};

    (@run $target:ident $family:ident $clause:ident) => {
        #[test]
        fn $clause() {
            crate::run_clause(
                TARGET,
                concat!("conformance::", stringify!($target), "::", stringify!($clause)),
                crate::$family::$clause,
            );
        }
    };
    (@skip $target:ident $family:ident $clause:ident $why:literal) => {
        #[test]
        #[ignore = $why]
        fn $clause() {
            // Not run here; named so that a clause no target runs still builds.
            let _: fn(&crate::Target) = crate::$family::$clause;
            crate::util::say(concat!(
                "conformance::", stringify!($target), "::", stringify!($clause),
                " SKIPPED: ", $why
            ));
        }
    };
    ($target:ident $kind:ident $mode:ident $family:ident $clause:ident) => {
        compile_error!(concat!(
            "conformance clause `", stringify!($clause), "`: no rule for mode `",
            stringify!($mode), "` on a `", stringify!($kind), "` target"
        ));
    };
}

#[cfg(target_os = "linux")]
targets! {
    uring: Uring, threaded, false;
    uring_threads: Uring, threaded, true;
    uring_inline: Uring, inline, false;
    epoll: Epoll, threaded, false;
    epoll_threads: Epoll, threaded, true;
    epoll_inline: Epoll, inline, false;
}

#[cfg(windows)]
targets! {
    iocp: Iocp, kernel, false;
}

/// Runs one clause on one target, once its backend is known to work here
/// (see [`Target::ready`]: an unavailable backend fails the test unless the
/// environment allows the skip).
fn run_clause(t: Target, test: &str, clause: fn(&Target)) {
    if t.ready(test) {
        clause(&t);
    }
}
