//! The epoll engine driven directly, for what the public API cannot force:
//! every error a standing accept can meet.

use std::net::TcpListener;

use super::*;
use crate::kit::accept::{self, Verdict};
use crate::pool::PoolShared;
use crate::sys::common::{test_config, OpData, SocketFd};

/// The standing accept applies the accept policy: each error `accept4` may
/// fail with is passed over or reported, and accepting goes on at once or
/// after the back-off — or the accept ends with it.
#[test]
fn standing_accept_follows_the_policy() {
    let cfg = test_config();
    let shared = EngineShared::new(PoolShared::new(cfg.pool_bufs, cfg.pool_buf_size)).unwrap();
    let mut engine = EpollEngine::new(shared, Some(Queue::new(1)), &cfg).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let (_sock, fd) = SocketFd::new(l.into());
    engine.register(1, fd, 1, Kind::Socket);
    let mut id = 0;
    accept::check_backend("epoll", |code| {
        id += 1;
        // The listener has no connection: after the failed attempt, the
        // next real one finds nothing (EAGAIN) and the accept waits.
        engine.handles.get_mut(&1).unwrap().readable = true;
        poller::FAIL_NEXT_ACCEPT.with(|f| f.set(Some(code)));
        engine.start(OpReq {
            hid: 1,
            key: 1,
            id,
            token: id,
            deadline: None,
            data: OpData::AcceptMulti,
        });
        assert_eq!(
            poller::FAIL_NEXT_ACCEPT.with(|f| f.get()),
            None,
            "attempted"
        );
        let c = engine.core.out.pop();
        assert!(engine.core.out.is_empty(), "{:?}", engine.core.out);
        if let Some(c) = &c {
            let err = c.result.as_ref().expect_err("an error completion");
            assert_eq!(err.raw_os_error(), Some(code), "{c:?}");
        }
        let head = engine.handles[&1].lanes.head(Lane::Accept);
        let phase = head.and_then(|i| engine.ops.get(i)).map(|o| o.phase);
        let verdict = match (phase, c.as_ref().map(|c| c.more)) {
            (None, Some(false)) => return Verdict::End,
            (Some(Phase::Issued), None) => Verdict::Retry,
            (Some(Phase::Issued), Some(true)) => Verdict::Again,
            (Some(Phase::Parked(Park::BackOff)), Some(true)) => {
                assert_eq!(engine.core.timers.len(), 1, "one re-arm timer");
                Verdict::BackOff
            }
            other => panic!("{code}: (phase, more) {other:?}"),
        };
        engine.stop(head.unwrap(), Stop::Cancel);
        let c = engine.core.out.pop().expect("the final completion");
        assert!(c.is_aborted() && !c.more, "{c:?}");
        assert_eq!(engine.core.timers.len(), 0, "its timer left with it");
        verdict
    });
}
