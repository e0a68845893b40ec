//! `iocp-echo server` (not written yet).

use std::process::ExitCode;

/// Arguments of `iocp-echo server`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> ExitCode {
    eprintln!("iocp-echo server: not implemented yet");
    ExitCode::from(1)
}
