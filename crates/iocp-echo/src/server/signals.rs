//! SIGINT/SIGTERM: the first starts a graceful drain on every port (a
//! packet posted to each wakes a worker there), the second cuts what is
//! still open.

use std::sync::Arc;
use std::thread::JoinHandle;

use completion_port::Port;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals as Iter};

use super::stats::Global;

pub(crate) struct Signals {
    it: Option<Iter>,
    handle: Handle,
}

impl Signals {
    /// Registers the handlers (from now on the signals no longer kill).
    pub(crate) fn install() -> std::io::Result<Signals> {
        let it = Iter::new([SIGINT, SIGTERM])?;
        let handle = it.handle();
        Ok(Signals {
            it: Some(it),
            handle,
        })
    }

    /// Starts the thread that turns signals into packets.
    pub(crate) fn spawn(&mut self, ports: Vec<Port>, g: Arc<Global>) -> Option<JoinHandle<()>> {
        let mut it = self.it.take()?;
        std::thread::Builder::new()
            .name("iocp-echo-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for sig in it.forever() {
                    seen += 1;
                    let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                    super::stop_requested(seen, name, &ports, &g);
                }
            })
            .map_err(|e| tracing::error!("cannot start the signal thread: {e}"))
            .ok()
    }

    /// Stops the signal thread (after the workers are done).
    pub(crate) fn stop(&self, t: Option<JoinHandle<()>>) {
        self.handle.close();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}
