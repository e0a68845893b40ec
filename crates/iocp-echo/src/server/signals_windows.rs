//! Ctrl-C, Ctrl-Break and console close on Windows: the first starts a
//! graceful drain on every port, the second cuts what is still open — the
//! same as SIGINT/SIGTERM on Unix (see `signals.rs`).
//!
//! The console control handler runs on a thread the system creates; it only
//! hands the event to a channel, and a thread of ours turns it into packets.
//! Verified to build and start under Wine; delivering a real Ctrl-C to a
//! console process is verified only on Windows.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use completion_port::Port;
use windows_sys::core::BOOL;
use windows_sys::Win32::System::Console::{
    SetConsoleCtrlHandler, CTRL_BREAK_EVENT, CTRL_CLOSE_EVENT, CTRL_C_EVENT,
};

use super::stats::Global;

/// Where the handler sends events; `None` once the server is done.
static EVENTS: Mutex<Option<Sender<u32>>> = Mutex::new(None);

/// A value no console event has: tells our thread to stop.
const STOP: u32 = u32::MAX;

unsafe extern "system" fn on_ctrl(event: u32) -> BOOL {
    match event {
        CTRL_C_EVENT | CTRL_BREAK_EVENT | CTRL_CLOSE_EVENT => {
            let tx = EVENTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
            match tx {
                Some(tx) if tx.send(event).is_ok() => 1,
                _ => 0,
            }
        }
        _ => 0,
    }
}

pub(crate) struct Signals {
    rx: Option<Receiver<u32>>,
}

impl Signals {
    /// Registers the handler (from now on Ctrl-C no longer kills).
    pub(crate) fn install() -> std::io::Result<Signals> {
        let (tx, rx) = channel();
        *EVENTS.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        // SAFETY: `on_ctrl` is a valid `extern "system"` handler for the life
        // of the process and touches only a static mutex and a channel.
        if unsafe { SetConsoleCtrlHandler(Some(on_ctrl), 1) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Signals { rx: Some(rx) })
    }

    /// Starts the thread that turns console events into packets.
    pub(crate) fn spawn(&mut self, ports: Vec<Port>, g: Arc<Global>) -> Option<JoinHandle<()>> {
        let rx = self.rx.take()?;
        std::thread::Builder::new()
            .name("iocp-echo-signals".into())
            .spawn(move || {
                let mut seen = 0;
                for ev in rx {
                    if ev == STOP {
                        return;
                    }
                    seen += 1;
                    let name = match ev {
                        CTRL_C_EVENT => "Ctrl-C",
                        CTRL_BREAK_EVENT => "Ctrl-Break",
                        _ => "console close",
                    };
                    super::stop_requested(seen, name, &ports, &g);
                }
            })
            .map_err(|e| tracing::error!("cannot start the console-event thread: {e}"))
            .ok()
    }

    /// Stops the event thread (after the workers are done).
    pub(crate) fn stop(&self, t: Option<JoinHandle<()>>) {
        let tx = EVENTS.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(STOP);
        }
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}
