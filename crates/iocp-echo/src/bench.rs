//! `iocp-echo bench`: a load generator for echo servers that verifies every
//! byte, and `iocp-echo bench merge` for the `--hist` files of several runs.
//!
//! Shape: `--threads` threads, each with its own inline (per-core) port
//! driving its share of `--connections` with batched `get_many`; a pooled
//! standing receive per connection; closed loop (`--depth`) or open loop
//! (`--rate`, latency from each message's scheduled send time). See
//! the README ("iocp-echo bench") for the flags, the report and the JSON keys.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Subcommand;

mod payload;
mod report;
mod worker;

use report::Report;
use worker::{Outcome, Plan, Shared};

/// Arguments of `iocp-echo bench`.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Merge the --hist files of several runs (e.g. from several load machines):\n  \
                  iocp-echo bench merge [--json] FILE..."
)]
pub struct Args {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Merge the --hist files of several runs and print one report (the
    /// runs are taken as concurrent: counts and rates add up).
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// Files written by `bench --hist`.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The echo server, HOST:PORT.
    #[arg(required = true, value_name = "ADDR", value_parser = parse_target)]
    addr: Option<String>,
    /// Connections to open.
    #[arg(short, long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Threads, each with its own inline completion port [default: CPUs].
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Message size in bytes: `N`, or a range `MIN..MAX` (inclusive) drawn
    /// per message from a seeded PRNG.
    #[arg(short, long, default_value = "64", value_parser = parse_size)]
    size: (usize, usize),
    /// Closed loop: messages in flight per connection.
    #[arg(short, long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    depth: u32,
    /// Open loop: messages per second over all connections, sent on a fixed
    /// schedule whatever the server does; latency counts from each
    /// message's scheduled time.
    #[arg(short, long, conflicts_with = "depth", value_parser = parse_rate)]
    rate: Option<f64>,
    /// How long to measure (after the warm-up).
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measure exactly this many messages (after the warm-up) instead.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Load before measuring, excluded from the report.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Connections opened per second (`N` or `N/s`; 0 = as fast as
    /// possible), with at most 32 connects in flight per thread.
    #[arg(long, default_value = "2000/s", value_parser = parse_ramp)]
    ramp: f64,
    /// Give up on a connect after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// A connection with messages in flight and no echo for this long fails
    /// (`timed_out`); also the bound on the final drain.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Seed of the payload streams and message sizes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The completion-port backend (`auto`, `uring`, `epoll`, `iocp`)
    /// [default: $IOCP_BACKEND, else auto].
    #[arg(long, value_parser = parse_backend)]
    backend: Option<iocp::Backend>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the latency histogram to FILE (HdrHistogram interval log,
    /// V2+DEFLATE, base64; microseconds) for `bench merge`.
    #[arg(long, value_name = "FILE")]
    hist: Option<PathBuf>,
}

fn parse_target(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("expected HOST:PORT, got {s:?}")),
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 10s, 500ms, 1m)"))
}

fn parse_size(s: &str) -> Result<(usize, usize), String> {
    const MAX: usize = 16 << 20;
    let num = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("bad size {s:?} (expected N or MIN..MAX)"))
    };
    let (lo, hi) = if let Some((a, b)) = s.split_once("..") {
        let b = b.strip_prefix('=').unwrap_or(b);
        (num(a)?, num(b)?)
    } else {
        let n = num(s)?;
        (n, n)
    };
    if lo == 0 || lo > hi || hi > MAX {
        return Err(format!("bad size {s:?}: need 1 <= MIN <= MAX <= {MAX}"));
    }
    Ok((lo, hi))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("bad rate {s:?} (messages per second, e.g. 10000)"))?;
    if !(r.is_finite() && r > 0.0) {
        return Err(format!("bad rate {s:?}: must be > 0"));
    }
    Ok(r)
}

fn parse_ramp(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim_end_matches("/s")
        .parse()
        .map_err(|_| format!("bad ramp {s:?} (connections per second, e.g. 2000/s)"))?;
    if !(r.is_finite() && r >= 0.0) {
        return Err(format!("bad ramp {s:?}: must be >= 0"));
    }
    Ok(r)
}

fn parse_backend(s: &str) -> Result<iocp::Backend, String> {
    s.parse()
}

pub fn run(a: Args) -> ExitCode {
    match a.sub {
        Some(Sub::Merge(m)) => merge(m),
        None => bench(a.run),
    }
}

fn merge(m: MergeArgs) -> ExitCode {
    let mut runs = Vec::new();
    for f in &m.files {
        match report::read_hist(f) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("iocp-echo bench merge: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let (r, _) = report::merge(runs);
    if m.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.to_text());
    }
    ExitCode::SUCCESS
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    match target.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("cannot resolve {target}: no address")),
        Err(e) => Err(format!("cannot resolve {target}: {e}")),
    }
}

fn bench(a: RunArgs) -> ExitCode {
    let target = a.addr.clone().expect("clap requires ADDR");
    let addr = match resolve(&target) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("iocp-echo bench: {e}");
            return ExitCode::from(1);
        }
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (a.threads.map_or(cpus, |t| t as usize))
        .min(a.connections as usize)
        .max(1);
    let duration = match (a.duration, a.requests) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let plan = Plan {
        addr,
        connections: a.connections as usize,
        threads,
        size: a.size,
        depth: a.depth as usize,
        rate: a.rate,
        warmup: a.warmup,
        duration,
        requests: a.requests,
        ramp: a.ramp,
        connect_timeout: a.connect_timeout,
        timeout: a.timeout,
        seed: a.seed,
        backend: a.backend,
    };
    let shared = Arc::new(Shared::default());
    // SIGINT stops the load, drains (bounded by --timeout) and reports.
    #[cfg(unix)]
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, shared.stop.clone());
    let wall_start = SystemTime::now();
    let plan = Arc::new(plan);
    let mut handles = Vec::new();
    for t in 0..threads {
        let (p, s) = (plan.clone(), shared.clone());
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || worker::run(t, &p, &s));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("iocp-echo bench: cannot start a thread: {e}");
                shared.abort.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    let progress = Progress::new(std::io::stdout().is_terminal(), &plan);
    let mut interrupted_at = None;
    let mut no_connections = false;
    loop {
        let now = Instant::now();
        if interrupted_at.is_none() && shared.stop.load(Ordering::Relaxed) {
            interrupted_at = Some(now);
        }
        if handles.iter().all(|h| h.is_finished()) {
            break;
        }
        if shared.t0.get().is_none() && shared.ready.load(Ordering::SeqCst) == handles.len() {
            if shared.connected.load(Ordering::SeqCst) == 0 {
                no_connections = true;
                shared.abort.store(true, Ordering::SeqCst);
            } else {
                let _ = shared.t0.set(Instant::now());
            }
        }
        progress.update(&shared, &plan, now);
        std::thread::sleep(Duration::from_millis(20));
    }
    progress.finish();
    let outs: Vec<Outcome> = handles
        .into_iter()
        .map(|h| h.join().expect("a bench thread panicked"))
        .collect();
    if let Some(f) = outs.iter().find_map(|o| o.fatal.clone()) {
        eprintln!("iocp-echo bench: {f}");
        return ExitCode::from(1);
    }
    let first_errors = std::mem::take(
        &mut *shared
            .first_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    if no_connections {
        let why = first_errors
            .get("connect")
            .cloned()
            .unwrap_or_else(|| format!("cannot connect to {addr}"));
        eprintln!(
            "iocp-echo bench: {why} (all {} connections failed)",
            plan.connections
        );
        return ExitCode::from(1);
    }
    let r = build_report(&target, &plan, &outs, &shared, interrupted_at);
    for (kind, msg) in &first_errors {
        let n = if kind == "connect" {
            r.connect_failures
        } else {
            r.errors.get(kind).copied().unwrap_or(0)
        };
        let more = if n > 1 {
            format!(" (and {} more like it)", n - 1)
        } else {
            String::new()
        };
        eprintln!("iocp-echo bench: {msg}{more}");
    }
    if a.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.to_text());
    }
    if let Some(path) = &a.hist {
        let mut h = report::new_hist();
        for o in &outs {
            let _ = h.add(&o.hist);
        }
        if let Err(e) = report::write_hist(path, &h, &r, wall_start) {
            eprintln!("iocp-echo bench: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if r.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn build_report(
    target: &str,
    plan: &Plan,
    outs: &[Outcome],
    shared: &Shared,
    interrupted_at: Option<Instant>,
) -> Report {
    let mut h = report::new_hist();
    let mut r = Report {
        target: target.to_string(),
        mode: if plan.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        threads: plan.threads as u64,
        depth: plan.rate.is_none().then_some(plan.depth as u64),
        rate: plan.rate,
        size_min: plan.size.0 as u64,
        size_max: plan.size.1 as u64,
        warmup_s: plan.warmup.as_secs_f64(),
        interrupted: interrupted_at.is_some(),
        runs: 1,
        ..Report::default()
    };
    let mut last_done: Option<Instant> = None;
    for o in outs {
        let _ = h.add(&o.hist);
        r.messages += o.messages;
        r.bytes += o.bytes;
        r.connections += o.connections;
        r.connect_failures += o.connect_failures;
        for (k, n) in &o.errors {
            *r.errors.entry(k.clone()).or_default() += n;
        }
        last_done = last_done.max(o.last_done);
    }
    if let Some(&t0) = shared.t0.get() {
        let warm_end = t0 + plan.warmup;
        let end = match plan.duration {
            Some(d) => {
                let ended = outs.iter().map(|o| o.ended).max().unwrap_or(warm_end);
                let e = (warm_end + d).min(ended);
                interrupted_at.map_or(e, |i| i.min(e))
            }
            None => last_done.unwrap_or(warm_end),
        };
        r.duration_s = end.saturating_duration_since(warm_end).as_secs_f64();
    }
    r.duration_s = report::round3(r.duration_s);
    r.set_rates();
    r.latency_us = report::Latency::of(&h);
    r
}

/// The live progress bar (stderr), shown only when stdout is a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last: std::cell::Cell<(Instant, u64, u64)>,
    running: std::cell::Cell<bool>,
}

impl Progress {
    fn new(show: bool, plan: &Plan) -> Progress {
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                Some(plan.connections as u64),
                indicatif::ProgressDrawTarget::stderr_with_hz(5),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            b.set_prefix("connecting");
            b
        });
        Progress {
            bar,
            last: std::cell::Cell::new((Instant::now(), 0, 0)),
            running: std::cell::Cell::new(false),
        }
    }

    fn update(&self, sh: &Shared, plan: &Plan, now: Instant) {
        let Some(b) = &self.bar else { return };
        match sh.t0.get() {
            None => {
                let c = sh.connected.load(Ordering::Relaxed)
                    + sh.connect_failed.load(Ordering::Relaxed);
                b.set_position(c as u64);
            }
            Some(&t0) => {
                if !self.running.replace(true) {
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix:>10} [{bar:30}] {elapsed_precise} {msg}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                }
                let (lt, lm, lb) = self.last.get();
                if now.duration_since(lt) < Duration::from_millis(500) {
                    return;
                }
                let (m, by) = (
                    sh.done_msgs.load(Ordering::Relaxed),
                    sh.done_bytes.load(Ordering::Relaxed),
                );
                let dt = now.duration_since(lt).as_secs_f64();
                self.last.set((now, m, by));
                let warm = now < t0 + plan.warmup;
                match (plan.duration, plan.requests) {
                    (Some(d), _) => {
                        b.set_prefix(if warm { "warm-up" } else { "running" });
                        b.set_length((plan.warmup + d).as_millis() as u64);
                        b.set_position(now.duration_since(t0).as_millis() as u64);
                    }
                    (None, Some(n)) => {
                        b.set_prefix(if warm { "warm-up" } else { "running" });
                        b.set_length(n);
                        b.set_position(m.min(n));
                    }
                    _ => {}
                }
                b.set_message(format!(
                    "{:.0} msgs/s, {:.2} MB/s",
                    (m - lm) as f64 / dt,
                    (by - lb) as f64 / dt / 1e6
                ));
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
