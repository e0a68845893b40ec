//! `iocp-echo`: the seed's IOCP echo server and client, and a verifying load
//! generator, built on the `iocp` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod client;
mod server;
mod values;

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
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help and --version: stdout, exit 0.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A usage error: stderr, exit 2, in the shape of every other
            // error of the command: `iocp-echo server: invalid value …`.
            let text = e.render().to_string();
            let who = command_name(&args);
            let text = match text.strip_prefix("error: ") {
                Some(rest) => format!("{who}: {rest}"),
                None => text,
            };
            eprint!("{text}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_tracing() {
        // A log filter that cannot be parsed is bad input like any other:
        // say which and why, exit 2, before anything is bound or sent.
        eprintln!("{}: {e}", command_name(&args));
        return ExitCode::from(2);
    }
    match cli.cmd {
        Cmd::Server(a) => server::run(a),
        Cmd::Client(a) => client::run(a),
        Cmd::Bench(a) => bench::run(a),
    }
}

/// `iocp-echo`, `iocp-echo server`, … or `iocp-echo bench merge`: the
/// prefix of the command's error messages.
fn command_name(args: &[std::ffi::OsString]) -> String {
    let word = |i: usize| args.get(i).and_then(|a| a.to_str());
    match (word(1), word(2)) {
        (Some("bench"), Some("merge")) => "iocp-echo bench merge".into(),
        (Some(sub @ ("server" | "client" | "bench")), _) => format!("iocp-echo {sub}"),
        _ => "iocp-echo".into(),
    }
}

/// Installs the log: `RUST_LOG`'s filter (unset or empty: `info`) on
/// stderr. A `RUST_LOG` that cannot be parsed is an error naming the
/// variable, quoting the value and saying why (`main` exits 2), rather than
/// a silent fall-back to `info`.
fn init_tracing() -> Result<(), String> {
    use std::io::IsTerminal;
    let filter = log_filter(std::env::var("RUST_LOG"))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

/// The valid `RUST_LOG` forms a bad value's message offers.
const RUST_LOG_EXAMPLES: &str = "examples: info, debug, iocp_echo=debug";

/// The log filter for `RUST_LOG`'s value (`var`).
fn log_filter(
    var: Result<String, std::env::VarError>,
) -> Result<tracing_subscriber::EnvFilter, String> {
    use tracing_subscriber::EnvFilter;
    match var {
        Ok(v) if v.trim().is_empty() => Ok(EnvFilter::new("info")),
        Err(std::env::VarError::NotPresent) => Ok(EnvFilter::new("info")),
        Ok(v) => EnvFilter::builder().parse(&v).map_err(|e| {
            values::invalid_env("RUST_LOG", &v, &format!("{e} ({RUST_LOG_EXAMPLES})"))
        }),
        Err(std::env::VarError::NotUnicode(v)) => Err(values::invalid_env(
            "RUST_LOG",
            &v.to_string_lossy(),
            &format!("not UTF-8 ({RUST_LOG_EXAMPLES})"),
        )),
    }
}
