//! The front's checks, and what a backend does with what got past them.

use std::net::UdpSocket;
use std::time::Duration;

use super::*;
use crate::buf::Buf;
use crate::op::OpKind;

/// A start that passed the front's "closed?" check just before another
/// thread closed the handle reaches the backend after the close. It still
/// completes once, failed, under the handle's key (0 is a real key too). The
/// race, built deterministically: the backend's `start_op` is called after
/// the close, past the front's check. (The conformance clause
/// `closed_handle_completion_keeps_key` runs the real race.)
#[test]
fn start_after_close_keeps_key() {
    for &backend in Backend::available() {
        for (inline, key) in [(false, 41), (true, 42), (false, 0), (true, 0)] {
            let built = Port::builder()
                .backend(backend)
                .inline(inline)
                .concurrency(1)
                .build();
            let port = match built {
                Ok(p) => p,
                Err(e) => {
                    let test = format!("start_after_close_keeps_key {backend} inline={inline}");
                    let why = format!("building a port failed: {e}");
                    iocp_test_support::backend_missing(&test, backend.name(), &why);
                    continue;
                }
            };
            let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = sink.local_addr().unwrap();
            let h = port
                .associate(UdpSocket::bind("127.0.0.1:0").unwrap(), key)
                .unwrap();
            h.close();
            let data = OpData::SendTo(Buf::from(b"k".to_vec()), Box::new(to.into()));
            let id = port
                .inner
                .imp
                .start_op(h.imp(), data, OpOptions::from(7))
                .unwrap_or_else(|e| {
                    panic!("{backend} inline={inline}: refused instead of completing: {e:?}")
                });
            let c = port
                .get(Some(Duration::from_secs(10)))
                .unwrap_or_else(|e| panic!("{backend} inline={inline}: no completion: {e:?}"));
            assert_eq!(
                (c.kind, c.key, c.token, c.op),
                (OpKind::SendTo, key, 7, id),
                "{backend} inline={inline}: {c:?}"
            );
            assert!(c.result.is_err(), "{backend} inline={inline}: {c:?}");
            let more = port.get(Some(Duration::from_millis(20)));
            assert!(
                matches!(more, Err(GetError::TimedOut)),
                "{backend} inline={inline}: a second packet: {more:?}"
            );
            port.close();
        }
    }
}
