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
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Subcommand;

use crate::values;

mod hist_file;
mod payload;
mod plot;
mod report;
mod worker;

use report::Report;
use worker::{Outcome, Plan, Shared};

/// Arguments of `iocp-echo bench`.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = concat!(
        values::forms_help!(),
        "\nMerge the --hist files of several runs (e.g. from several load machines):\n  \
         iocp-echo bench merge [--json] [--plot FILE.svg] FILE...\n\
         A FILE that cannot be read, or is not a --hist file, is a usage error (exit 2)."
    )
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
    /// Files written by `bench --hist` (one that cannot be read, or is
    /// truncated or not such a file, is a usage error: exit 2).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw every run's and the merged latency by percentile, and the
    /// throughput over time, as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
// The doc comments are the `--help` text: `[::1]:7007` is an address.
#[allow(rustdoc::broken_intra_doc_links)]
struct RunArgs {
    /// The echo server, HOST:PORT (a name is resolved; [::1]:7007 for IPv6).
    #[arg(required = true, value_name = "ADDR", value_parser = values::host_port)]
    addr: Option<String>,
    /// Connections to open.
    #[arg(short, long, value_name = "N", default_value_t = 50, allow_negative_numbers = true, value_parser = values::count::<u32>(1, u32::MAX))]
    connections: u32,
    /// Threads, each with its own inline completion port [default: CPUs, at
    /// most --connections].
    #[arg(short, long, value_name = "M", allow_negative_numbers = true, value_parser = values::count::<u32>(1, u32::MAX))]
    threads: Option<u32>,
    /// Message size: a size (64, 1KiB), or a range MIN..MAX (inclusive;
    /// MIN..=MAX too) drawn per message from a seeded PRNG; at most 16MiB.
    #[arg(short, long, value_name = "SIZE", default_value = "64", value_parser = values::size_range(MAX_MESSAGE))]
    size: (usize, usize),
    /// Closed loop: messages in flight per connection, 1-65536.
    #[arg(short, long, value_name = "D", default_value_t = 1, allow_negative_numbers = true, value_parser = values::count::<u32>(1, 65536))]
    depth: u32,
    /// Open loop: messages per second over all connections (N or N/s, above
    /// 0), sent on a fixed schedule whatever the server does; latency counts
    /// from each message's scheduled time.
    #[arg(short, long, value_name = "R", conflicts_with = "depth", allow_negative_numbers = true, value_parser = values::rate)]
    rate: Option<f64>,
    /// How long to measure, after the warm-up (a duration above 0)
    /// [default: 10s unless --requests].
    #[arg(long, value_name = "D", value_parser = values::positive_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measure exactly this many messages (after the warm-up) instead.
    #[arg(short = 'n', long, value_name = "N", allow_negative_numbers = true, value_parser = values::count::<u64>(1, u64::MAX))]
    requests: Option<u64>,
    /// Load before measuring, excluded from the report (a duration).
    #[arg(long, value_name = "D", default_value = "0s", value_parser = values::duration)]
    warmup: Duration,
    /// Connections opened per second over all threads (N or N/s; 0 = as
    /// fast as possible), with at most 32 connects in flight per thread.
    #[arg(long, value_name = "N/s", default_value = "2000/s", allow_negative_numbers = true, value_parser = values::rate_or_unlimited)]
    ramp: f64,
    /// Give up on a connect after this long (a duration above 0).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = values::positive_duration)]
    connect_timeout: Duration,
    /// A connection with messages in flight and no echo for this long fails
    /// (`timed_out`); also the bound on the final drain (a duration above 0).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = values::positive_duration)]
    timeout: Duration,
    /// Seed of the payload streams and message sizes (a whole number).
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true, value_parser = values::count::<u64>(0, u64::MAX))]
    seed: u64,
    /// The completion-port backend (`auto`, `uring`, `epoll`, `iocp`)
    /// [default: $IOCP_BACKEND, else auto].
    #[arg(long, value_name = "BACKEND", value_parser = values::backend)]
    backend: Option<completion_port::Backend>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Write the latency histogram to FILE (HdrHistogram interval log,
    /// V2+DEFLATE, base64; microseconds) for `bench merge`.
    #[arg(long, value_name = "FILE")]
    hist: Option<PathBuf>,
    /// Reopen a connection the server or a balancer cuts and go on (the
    /// messages in flight on it are counted as lost); without it a cut
    /// connection fails the run.
    #[arg(long)]
    reconnect: bool,
    /// Draw the latency by percentile (log-scaled tail) and the throughput
    /// over time as an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// The largest message `--size` takes.
const MAX_MESSAGE: usize = 16 << 20;

pub fn run(a: Args) -> ExitCode {
    match a.sub {
        Some(Sub::Merge(m)) => merge(m),
        None => bench(a.run),
    }
}

fn merge(m: MergeArgs) -> ExitCode {
    if let Err(e) = check_out_file("--plot <FILE.svg>", m.plot.as_deref(), "--plot merged.svg") {
        eprintln!("iocp-echo bench merge: {e}");
        return ExitCode::from(2);
    }
    let mut runs = Vec::new();
    for f in &m.files {
        match hist_file::read_hist(f) {
            Ok(r) => runs.push(r),
            Err(why) => {
                eprintln!(
                    "iocp-echo bench merge: invalid value '{}' for '<FILE>...': {why} \
                     (expected a file written by `iocp-echo bench ADDR --hist FILE`)",
                    f.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    let (r, h) = report::merge(&runs);
    if m.json {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.to_text());
    }
    if let Some(path) = &m.plot {
        let merged = report::Run {
            label: "merged".into(),
            report: Some(r.clone()),
            hist: h,
            series: None,
        };
        if let Err(e) = plot::write_svg(path, &runs, Some(&merged)) {
            eprintln!(
                "iocp-echo bench merge: cannot write {}: {e}",
                path.display()
            );
            return ExitCode::from(1);
        }
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

/// The checks clap cannot make: `IOCP_BACKEND` (when `--backend` is not
/// given) and whether `--hist` and `--plot` can be written where they point.
fn check_run_args(a: &RunArgs) -> Result<(), String> {
    values::check_backend_env(a.backend)?;
    check_out_file("--hist <FILE>", a.hist.as_deref(), "--hist run.hist")?;
    check_out_file("--plot <FILE.svg>", a.plot.as_deref(), "--plot run.svg")
}

/// Whether a file can be written at `path` (given for `flag`): not a
/// directory, in a directory that exists.
fn check_out_file(flag: &str, path: Option<&Path>, example: &str) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    let why = if path.is_dir() {
        Some("is a directory".to_string())
    } else {
        match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                Some(format!("directory '{}' does not exist", dir.display()))
            }
            _ => None,
        }
    };
    match why {
        Some(why) => Err(format!(
            "invalid value '{}' for '{flag}': {why} (example: {example})",
            path.display()
        )),
        None => Ok(()),
    }
}

fn bench(a: RunArgs) -> ExitCode {
    if let Err(e) = check_run_args(&a) {
        eprintln!("iocp-echo bench: {e}");
        return ExitCode::from(2);
    }
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
        reconnect: a.reconnect,
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
    if a.hist.is_some() || a.plot.is_some() {
        let mut h = report::new_hist();
        for o in &outs {
            let _ = h.add(&o.hist);
        }
        let run = report::Run {
            label: target.clone(),
            report: Some(r.clone()),
            hist: h,
            series: series(&outs, &shared, &r),
        };
        if let Some(path) = &a.hist {
            if let Err(e) = report::write_hist(path, &run.hist, &r, run.series.as_ref(), wall_start)
            {
                eprintln!("iocp-echo bench: cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
        if let Some(path) = &a.plot {
            if let Err(e) = plot::write_svg(path, std::slice::from_ref(&run), None) {
                eprintln!("iocp-echo bench: cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
        }
    }
    if r.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The threads' echoed-message counts per slice, added up, up to the end
/// of the measured window (the final drain would add a partial slice).
fn series(outs: &[Outcome], shared: &Shared, r: &Report) -> Option<report::Series> {
    let t0 = *shared.t0.get()?;
    let slice = worker::SERIES_SLICE.as_secs_f64();
    let full = ((r.warmup_s + r.duration_s) / slice).floor() as usize;
    let len = outs
        .iter()
        .map(|o| o.series.len())
        .max()
        .unwrap_or(0)
        .min(full.max(1));
    let mut messages = vec![0u64; len];
    let mut reconnects = vec![0u64; if r.reconnects > 0 { len } else { 0 }];
    for o in outs {
        for (m, v) in messages.iter_mut().zip(&o.series) {
            *m += v;
        }
        for (m, v) in reconnects.iter_mut().zip(&o.reconnect_series) {
            *m += v;
        }
    }
    let start = SystemTime::now()
        .checked_sub(t0.elapsed())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Some(report::Series {
        start_unix_s: start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        slice_s: slice,
        messages,
        reconnects,
    })
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
        reconnect: plan.reconnect,
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
        r.reconnects += o.reconnects;
        r.lost_messages += o.lost_messages;
        r.lost_bytes += o.lost_bytes;
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
