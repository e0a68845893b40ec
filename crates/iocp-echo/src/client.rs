//! `iocp-echo client` (not written yet).

use std::process::ExitCode;

/// Arguments of `iocp-echo client`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_a: Args) -> ExitCode {
    eprintln!("iocp-echo client: not implemented yet");
    ExitCode::from(1)
}
