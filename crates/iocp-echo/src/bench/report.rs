//! The bench report (text and `--json`), the `--hist` file, and `merge`.
//!
//! The `--hist` file is a standard HdrHistogram *interval log* (the format
//! of Java's `HistogramLogWriter`, readable by `HistogramLogAnalyzer` and the
//! `hdrhistogram` crate's `IntervalLogIterator`): text lines, comments start
//! with `#`, and one histogram line
//! `START,LENGTH,MAX,BASE64` whose last field is the histogram in the
//! V2-compressed encoding (V2 + DEFLATE, cookie `0x1c849304`), base64.
//! Values are latencies in **microseconds**. One comment line,
//! `#iocp-echo-bench {JSON}`, carries the run's report so that `merge` can
//! add up messages, bytes, rates and errors; another,
//! `#iocp-echo-bench-series {JSON}`, the messages echoed per 100 ms slice
//! (the throughput over time that `--plot` draws).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The comment prefix of the metadata line in a `--hist` file.
pub(super) const META: &str = "iocp-echo-bench ";
/// The comment prefix of the throughput line.
pub(super) const SERIES: &str = "iocp-echo-bench-series ";

/// Messages echoed per time slice since the start of the load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    /// When the load started, in seconds since the Unix epoch.
    pub start_unix_s: f64,
    /// The length of one slice, in seconds.
    pub slice_s: f64,
    /// Messages echoed (warm-up included) in each slice.
    pub messages: Vec<u64>,
    /// Connections cut and reopened in each slice (`--reconnect`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reconnects: Vec<u64>,
}

/// One run read back from a `--hist` file.
#[derive(Debug)]
pub struct Run {
    /// Where it came from (the file name), for legends.
    pub label: String,
    pub report: Option<Report>,
    pub hist: Histogram<u64>,
    pub series: Option<Series>,
}

/// A histogram of latencies in microseconds, 1 µs to 1 hour, 3 digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    /// Samples (one per measured message).
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Everything `bench` reports; `--json` prints it as one object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The address benchmarked (several, comma-separated, after a merge).
    pub target: String,
    /// `closed` (`--depth`), `open` (`--rate`), or `mixed` after a merge.
    pub mode: String,
    /// Connections established.
    pub connections: u64,
    /// Connections that could not be established.
    pub connect_failures: u64,
    pub threads: u64,
    /// Closed loop: messages in flight per connection.
    pub depth: Option<u64>,
    /// Open loop: messages per second offered, over all connections.
    pub rate: Option<f64>,
    pub size_min: u64,
    pub size_max: u64,
    pub warmup_s: f64,
    /// The measured window, in seconds.
    pub duration_s: f64,
    /// Messages measured (sent after the warm-up, echoed and verified).
    pub messages: u64,
    /// Payload bytes of those messages (each way).
    pub bytes: u64,
    pub msgs_per_s: f64,
    /// `bytes / duration_s / 10^6` (each way).
    pub mb_per_s: f64,
    pub latency_us: Latency,
    /// Failed connections by kind (`verify_mismatch`, `closed_by_peer`,
    /// `timed_out`, `connection_reset`, …).
    pub errors: BTreeMap<String, u64>,
    /// Whether SIGINT cut the run short.
    pub interrupted: bool,
    /// Whether cut connections were reopened (`--reconnect`).
    #[serde(default)]
    pub reconnect: bool,
    /// Connections cut by the peer and reopened.
    #[serde(default)]
    pub reconnects: u64,
    /// Messages, and their bytes, that were in flight on the connections
    /// when they were cut (sent or created, not echoed: never measured).
    #[serde(default)]
    pub lost_messages: u64,
    #[serde(default)]
    pub lost_bytes: u64,
    /// Runs behind this report (1, or how many `merge` added up).
    pub runs: u64,
}

impl Report {
    /// Whether the run went wrong (exit 1).
    pub fn failed(&self) -> bool {
        self.connect_failures > 0 || self.errors.values().any(|&n| n > 0)
    }

    pub fn set_rates(&mut self) {
        if self.duration_s > 0.0 {
            self.msgs_per_s = round1(self.messages as f64 / self.duration_s);
            self.mb_per_s = round3(self.bytes as f64 / self.duration_s / 1e6);
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serialises")
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let load = match self.mode.as_str() {
            "closed" => format!("closed loop, depth {}", self.depth.unwrap_or(1)),
            "open" => format!("open loop, {} msgs/s offered", self.rate.unwrap_or(0.0)),
            m => m.to_string(),
        };
        let size = if self.size_min == self.size_max {
            format!("{} bytes", self.size_min)
        } else {
            format!("{}..{} bytes", self.size_min, self.size_max)
        };
        let _ = writeln!(s, "target            {}", self.target);
        if self.runs > 1 {
            let _ = writeln!(s, "runs merged       {}", self.runs);
        }
        let _ = writeln!(
            s,
            "connections       {} ({} threads), {} connect failures",
            self.connections, self.threads, self.connect_failures
        );
        let _ = writeln!(s, "load              {load}, {size}");
        let _ = writeln!(
            s,
            "duration          {} (after {} warm-up){}",
            secs(self.duration_s),
            secs(self.warmup_s),
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "messages          {} ({:.1} msgs/s)",
            self.messages, self.msgs_per_s
        );
        let _ = writeln!(
            s,
            "bytes             {} ({:.3} MB/s each way)",
            self.bytes, self.mb_per_s
        );
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "latency (us)      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (min {}, mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.min, l.mean
        );
        if self.reconnect || self.reconnects > 0 {
            let _ = writeln!(
                s,
                "reconnects        {} ({} messages, {} bytes lost in flight)",
                self.reconnects, self.lost_messages, self.lost_bytes
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "errors            none");
        } else {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(s, "errors            {}", e.join(", "));
        }
        s
    }
}

fn secs(s: f64) -> String {
    humantime::format_duration(Duration::from_millis((s * 1000.0).round() as u64)).to_string()
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Writes `h`, the report's metadata and the throughput series as an
/// interval log.
pub fn write_hist(
    path: &Path,
    h: &Histogram<u64>,
    r: &Report,
    series: Option<&Series>,
    start: SystemTime,
) -> io::Result<()> {
    let mut out = Vec::new();
    let mut ser = V2DeflateSerializer::new();
    {
        let mut b = IntervalLogWriterBuilder::new();
        b.add_comment(&format!("{META}{}", r.to_json()));
        if let Some(s) = series {
            let json = serde_json::to_string(s).expect("a series serialises");
            b.add_comment(&format!("{SERIES}{json}"));
        }
        b.add_comment("latencies in microseconds; merge with `iocp-echo bench merge FILE...`")
            .with_start_time(start)
            .with_base_time(start);
        let mut w = b.begin_log_with(&mut out, &mut ser)?;
        w.write_histogram(
            h,
            Duration::ZERO,
            Duration::from_secs_f64(r.warmup_s + r.duration_s),
            None,
        )
        .map_err(|e| io::Error::other(format!("{e:?}")))?;
    }
    std::fs::write(path, out)
}

/// Adds up several runs, assumed concurrent (several load machines against
/// one server): counts and rates add up, the duration is the longest.
pub fn merge(runs: &[Run]) -> (Report, Histogram<u64>) {
    let mut h = new_hist();
    let mut m = Report::default();
    let mut targets: Vec<String> = Vec::new();
    let mut modes: Vec<String> = Vec::new();
    let mut first = true;
    for run in runs {
        let _ = h.add(&run.hist);
        let r = run.report.clone().unwrap_or_else(|| Report {
            messages: run.hist.len(),
            runs: 1,
            ..Report::default()
        });
        if !r.target.is_empty() && !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
        if !r.mode.is_empty() && !modes.contains(&r.mode) {
            modes.push(r.mode.clone());
        }
        m.connections = m.connections.saturating_add(r.connections);
        m.connect_failures = m.connect_failures.saturating_add(r.connect_failures);
        m.threads = m.threads.saturating_add(r.threads);
        m.depth = r.depth.max(m.depth);
        m.rate = match (m.rate, r.rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        m.size_min = if first {
            r.size_min
        } else {
            m.size_min.min(r.size_min)
        };
        m.size_max = m.size_max.max(r.size_max);
        m.warmup_s = m.warmup_s.max(r.warmup_s);
        m.duration_s = m.duration_s.max(r.duration_s);
        m.messages = m.messages.saturating_add(r.messages);
        m.bytes = m.bytes.saturating_add(r.bytes);
        m.msgs_per_s += r.msgs_per_s;
        m.mb_per_s += r.mb_per_s;
        for (k, n) in r.errors {
            let e = m.errors.entry(k).or_default();
            *e = e.saturating_add(n);
        }
        m.interrupted |= r.interrupted;
        m.reconnect |= r.reconnect;
        m.reconnects = m.reconnects.saturating_add(r.reconnects);
        m.lost_messages = m.lost_messages.saturating_add(r.lost_messages);
        m.lost_bytes = m.lost_bytes.saturating_add(r.lost_bytes);
        m.runs = m.runs.saturating_add(r.runs.max(1));
        first = false;
    }
    m.target = targets.join(",");
    m.mode = match modes.len() {
        0 => String::new(),
        1 => modes.remove(0),
        _ => "mixed".into(),
    };
    m.msgs_per_s = round1(m.msgs_per_s);
    m.mb_per_s = round3(m.mb_per_s);
    m.latency_us = Latency::of(&h);
    (m, h)
}
