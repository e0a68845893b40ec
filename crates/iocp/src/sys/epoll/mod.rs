//! The epoll engine (placeholder until it is written).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::op::Completion;
use crate::port::Config;
use crate::queue::Queue;
use crate::sys::common::EngineShared;

pub(crate) struct EpollEngine {}

impl EpollEngine {
    pub(crate) fn new(_shared: Arc<EngineShared>, _queue: Queue<Completion>, _cfg: &Config) -> io::Result<EpollEngine> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the epoll engine is not written yet"))
    }
    pub(crate) fn run(self) {}
    pub(crate) fn turn(&mut self, _timeout: Option<Duration>, _block: bool) {}
    pub(crate) fn flush_to_queue(&mut self) {}
    pub(crate) fn shutdown(&mut self) {}
}
