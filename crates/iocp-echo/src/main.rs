//! `iocp-echo`: the seed's IOCP echo server and client, and a verifying load
//! generator, built on the `iocp` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod client;
mod server;

/// An RFC 862 echo service, an interactive echo client and a verifying load
/// generator, built on the `iocp` completion-port library.
#[derive(Parser, Debug)]
#[command(name = "iocp-echo", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the echo server.
    Server(server::Args),
    /// Talk to an echo server (interactive, or --message/--count).
    Client(client::Args),
    /// Load-test an echo server, verifying every byte.
    Bench(bench::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap prints help/version to stdout with exit 0, usage errors
            // to stderr with exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_tracing();
    match cli.cmd {
        Cmd::Server(a) => server::run(a),
        Cmd::Client(a) => client::run(a),
        Cmd::Bench(a) => bench::run(a),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .try_init();
}
