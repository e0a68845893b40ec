//! `iocp-echo bench` (not written yet).

use std::process::ExitCode;

/// Arguments of `iocp-echo bench`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> ExitCode {
    eprintln!("iocp-echo bench: not implemented yet");
    ExitCode::from(1)
}
