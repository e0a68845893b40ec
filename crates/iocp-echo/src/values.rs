//! Every value `iocp-echo` reads from its command line or its environment,
//! one parser per kind, shared by `server`, `client` and `bench`.
//!
//! Each parser is a clap value parser (`Fn(&str) -> Result<T, String>`).
//! Its error is the reason followed by valid examples; clap puts the value
//! and the flag in front, and `main` replaces clap's `error:` with the
//! command's name, so every bad value reads
//!
//! ```text
//! iocp-echo server: invalid value '12XB' for '--max-pending <BYTES>': unknown unit 'XB' (examples: 262144, 256KiB, 1MiB)
//! ```
//!
//! and exits 2. Values from the environment use the same shape with the
//! variable's name in place of the flag ([`invalid_env`]).
//!
//! The kinds:
//! - **duration**: humantime (`500ms`, `10s`, `5m`, `1h 30m`; `0` is zero),
//!   at most [`MAX_DURATION`]; [`duration_or_off`] also takes `off`/`none`.
//! - **size**: bytes, with an optional unit (case-insensitive, a space
//!   before it allowed): `B`; `K`/`Ki`/`KiB`, `M`/`Mi`/`MiB`, `G`/`Gi`/`GiB`
//!   (1024-based); `KB`, `MB`, `GB` (1000-based). At least 1 byte.
//!   [`size_range`] also takes `MIN..MAX` (inclusive; `MIN..=MAX` too).
//! - **rate**: `N`, `N/s` or `N/sec`: events per second, a decimal number.
//! - **count**: a whole number within the flag's bounds.
//! - **backend**: the names `completion_port::Backend` parses, limited to the
//!   backends this build has.
//! - **address**: `IP:PORT` for what the server binds ([`socket_addr`]),
//!   `HOST:PORT` for what a client connects to ([`host_port`]).
//! - **environment**: `IOCP_BACKEND` ([`check_backend_env`]), `RUST_LOG`
//!   (checked where the log is installed, in `main`) and the
//!   socket-activation pair `LISTEN_PID`/`LISTEN_FDS` ([`listen_fds`]).

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use completion_port::Backend;

/// The longest duration any flag takes (100 years): far beyond any real
/// timeout, and short enough that `Instant::now() + d` cannot overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The paragraph every subcommand's `--help` ends with, naming the forms of
/// each kind of value (a macro, so that `concat!` can extend it).
macro_rules! forms_help {
    () => {
        "Value forms: durations are humantime (500ms, 10s, 5m, 1h 30m; 0 is zero), at most 100 years.\n\
Sizes are bytes with an optional unit: 262144, 256KiB (or 256K), 1MiB (1M), 1GiB (1G); KB, MB, GB\n\
are 1000-based; units are case-insensitive. Rates are N or N/s (1000, 1000/s, 2.5/s).\n\
A bad value is a usage error (exit code 2) whose message names the flag and the value.\n"
    };
}
pub(crate) use forms_help;

const DURATION_EXAMPLES: &str = "examples: 500ms, 10s, 5m";
const SIZE_EXAMPLES: &str = "examples: 262144, 256KiB, 1MiB";
const RANGE_EXAMPLES: &str = "examples: 64, 1KiB, 64..4096";
const RATE_EXAMPLES: &str = "examples: 1000, 1000/s";

/// The message for a bad value of an environment variable, in the shape
/// clap gives a bad flag value: `invalid value 'V' for NAME: REASON`.
pub(crate) fn invalid_env(name: &str, value: &str, reason: &str) -> String {
    format!(
        "invalid value '{}' for {name}: {reason}",
        value.escape_debug()
    )
}

// ------------------------------------------------------------- durations

/// A humantime duration (`500ms`, `10s`, `5m`, `1h 30m`; `0`), at most
/// [`MAX_DURATION`].
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = humantime::parse_duration(t).map_err(|e| {
        let why = match e {
            humantime::DurationError::Empty => "empty".to_string(),
            humantime::DurationError::NumberExpected(i) => {
                format!("expected a number at '{}'", rest(t, i))
            }
            humantime::DurationError::InvalidCharacter(i) => {
                format!("unexpected character at '{}'", rest(t, i))
            }
            humantime::DurationError::UnknownUnit { unit, .. } => {
                format!("unknown unit '{unit}'")
            }
            humantime::DurationError::NumberOverflow => "too large".to_string(),
        };
        format!("{why} ({DURATION_EXAMPLES})")
    })?;
    if d > MAX_DURATION {
        return Err(format!("too large: at most 100y ({DURATION_EXAMPLES})"));
    }
    Ok(d)
}

/// The text from byte `i` on (`i` as humantime reports it; clamped to a
/// character boundary).
fn rest(t: &str, i: usize) -> &str {
    let mut i = i.min(t.len());
    while !t.is_char_boundary(i) {
        i -= 1;
    }
    &t[i..]
}

/// A duration that must not be zero (a timeout, a period).
pub(crate) fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("must be more than 0 ({DURATION_EXAMPLES})"));
    }
    Ok(d)
}

/// A duration that can be switched off: `0`, `off` or `none` (or any zero
/// duration) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptDuration(pub Option<Duration>);

/// A duration, or `0`/`off`/`none` for "disabled".
pub(crate) fn duration_or_off(s: &str) -> Result<OptDuration, String> {
    match s.trim() {
        "off" | "none" => Ok(OptDuration(None)),
        t => match duration(t) {
            Ok(d) => Ok(OptDuration((!d.is_zero()).then_some(d))),
            Err(e) => Err(e.replace(DURATION_EXAMPLES, "examples: 5m, 30s, off")),
        },
    }
}

/// How a duration that may be off is shown in logs.
pub(crate) fn fmt_opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(
        || "off".to_string(),
        |d| humantime::format_duration(d).to_string(),
    )
}

// ----------------------------------------------------------------- sizes

/// A byte count with an optional unit (see the module docs), at least 1.
pub(crate) fn size(s: &str) -> Result<usize, String> {
    if s.contains("..") {
        return Err(format!("a range is not accepted here ({SIZE_EXAMPLES})"));
    }
    one_size(s).map_err(|why| format!("{why} ({SIZE_EXAMPLES})"))
}

/// One size, without the examples (shared by [`size`] and [`size_range`]).
fn one_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty".into());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!("expected a number of bytes at '{t}'"));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => 1 << 10,
        "kb" => 1000,
        "m" | "mi" | "mib" => 1 << 20,
        "mb" => 1_000_000,
        "g" | "gi" | "gib" => 1 << 30,
        "gb" => 1_000_000_000,
        _ => return Err(format!("unknown unit '{unit}'")),
    };
    let v = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| "too large".to_string())?;
    if v == 0 {
        return Err("must be at least 1 byte".into());
    }
    Ok(v)
}

/// A size or an inclusive range of sizes, `MIN..MAX` (or `MIN..=MAX`),
/// each side a [`size`], with `1 <= MIN <= MAX <= max`.
pub(crate) fn size_range(
    max: usize,
) -> impl Fn(&str) -> Result<(usize, usize), String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let side = |t: &str| one_size(t).map_err(|why| format!("{why} ({RANGE_EXAMPLES})"));
        let (lo, hi) = match s.split_once("..") {
            Some((a, b)) => {
                let b = b.strip_prefix('=').unwrap_or(b);
                (side(a)?, side(b)?)
            }
            None => {
                let n = side(s)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(format!(
                "MIN ({lo}) is larger than MAX ({hi}) ({RANGE_EXAMPLES})"
            ));
        }
        if hi > max {
            return Err(format!("too large: at most {max} bytes ({RANGE_EXAMPLES})"));
        }
        Ok((lo, hi))
    }
}

// ----------------------------------------------------------------- rates

/// The largest rate any flag takes: beyond any real load, and small
/// enough that schedules computed from it stay exact.
const MAX_RATE: f64 = 1e9;
/// The smallest rate above 0 any flag takes: one event in 1000 s keeps
/// every due time of a schedule far from overflowing an `Instant`.
const MIN_RATE: f64 = 0.001;

/// `N`, `N/s` or `N/sec`: a number per second, 0 or from [`MIN_RATE`] to
/// [`MAX_RATE`].
fn per_second(s: &str, examples: &str) -> Result<f64, String> {
    let t = s.trim();
    let num = match t.split_once('/') {
        None => t,
        Some((n, "s" | "sec")) => n,
        Some((_, unit)) => {
            return Err(format!(
                "unknown unit '/{unit}': rates are per second ({examples})"
            ))
        }
    }
    .trim();
    // Only decimal numbers: f64's parser also takes `inf` and `NaN`.
    let plain = !num.is_empty()
        && num
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    let r: f64 = match num.parse() {
        Ok(r) if plain => r,
        _ => return Err(format!("not a number ({examples})")),
    };
    if r.is_sign_negative() {
        return Err(format!("must not be negative ({examples})"));
    }
    if r > MAX_RATE {
        return Err(format!("too large: at most {MAX_RATE} ({examples})"));
    }
    if r != 0.0 && r < MIN_RATE {
        return Err(format!("too small: at least {MIN_RATE} ({examples})"));
    }
    Ok(r)
}

/// A rate above zero: `N` or `N/s`, `N` a decimal number.
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    let r = per_second(s, RATE_EXAMPLES)?;
    if r == 0.0 {
        return Err(format!("must be more than 0 ({RATE_EXAMPLES})"));
    }
    Ok(r)
}

/// A rate where `0` means "unlimited": `N` or `N/s`.
pub(crate) fn rate_or_unlimited(s: &str) -> Result<f64, String> {
    per_second(s, "examples: 2000/s, 100, 0")
}

/// A whole rate of at least 1: `N` or `N/s`.
pub(crate) fn whole_rate(s: &str) -> Result<u32, String> {
    let r = per_second(s, RATE_EXAMPLES)?;
    if r.fract() != 0.0 {
        return Err(format!("must be a whole number ({RATE_EXAMPLES})"));
    }
    if r < 1.0 {
        return Err(format!("must be at least 1 ({RATE_EXAMPLES})"));
    }
    Ok(r as u32)
}

// ---------------------------------------------------------------- counts

/// A whole number in `min..=max`, as `T`.
pub(crate) fn count<T>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: Into<u64> + TryFrom<u64> + Copy + Display + Send + Sync + 'static,
{
    move |s: &str| {
        let (lo, hi): (u64, u64) = (min.into(), max.into());
        let other = if hi <= 65_536 { hi } else { lo.max(1) * 100 };
        let examples = format!("examples: {lo}, {other}");
        let type_max = hi == u64::MAX || T::try_from(hi + 1).is_err();
        let bounds = if type_max {
            format!("at least {lo}")
        } else {
            format!("from {lo} to {hi}")
        };
        let t = s.trim();
        let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("not a whole number ({examples})"));
        }
        match t.parse::<u64>() {
            Ok(n) if (lo..=hi).contains(&n) => {
                T::try_from(n).map_err(|_| format!("must be {bounds} ({examples})"))
            }
            _ => Err(format!("must be {bounds} ({examples})")),
        }
    }
}

// --------------------------------------------------------------- backend

fn backend_examples() -> String {
    let names: Vec<&str> = Backend::available().iter().map(|b| b.name()).collect();
    format!("auto, {}", names.join(", "))
}

/// `auto` or a backend this build has, by the names `completion_port::Backend`
/// parses (`io_uring` and `io-uring` are `uring`).
pub(crate) fn backend(s: &str) -> Result<Backend, String> {
    let b: Backend = s
        .parse()
        .map_err(|_| format!("unknown backend (examples: {})", backend_examples()))?;
    if b != Backend::Auto && !Backend::available().contains(&b) {
        let only = if b == Backend::Iocp {
            "only available on Windows"
        } else {
            "only available on Linux"
        };
        return Err(format!(
            "backend {b} is {only} (this build has: {})",
            backend_examples()
        ));
    }
    Ok(b)
}

/// Checks `IOCP_BACKEND` the way `--backend` is checked, for when the flag
/// is not given and the library will read the variable (unset or empty
/// means `auto`). The library reads it again, so its own reason for the
/// choice ("requested by IOCP_BACKEND") is kept.
pub(crate) fn check_backend_env(flag: Option<Backend>) -> Result<(), String> {
    if flag.is_some() {
        return Ok(());
    }
    match std::env::var("IOCP_BACKEND") {
        Ok(v) if !v.is_empty() => backend(&v)
            .map(|_| ())
            .map_err(|why| invalid_env("IOCP_BACKEND", &v, &why)),
        Ok(_) | Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(v)) => Err(invalid_env(
            "IOCP_BACKEND",
            &v.to_string_lossy(),
            &format!("not UTF-8 (examples: {})", backend_examples()),
        )),
    }
}

// ------------------------------------------------------------- addresses

const SOCKET_ADDR_EXAMPLES: &str = "examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:7";

/// `IP:PORT` (`[IPv6]:PORT`): an address to bind.
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let why = match s.rsplit_once(':') {
        None => "expected IP:PORT",
        Some((_, port)) if port.parse::<u16>().is_err() => "the port must be a number 0-65535",
        Some((ip, _)) if ip.contains(':') && !ip.starts_with('[') => {
            "an IPv6 address goes in brackets"
        }
        Some(_) => "not an IP address (host names are not resolved here)",
    };
    Err(format!("{why} ({SOCKET_ADDR_EXAMPLES})"))
}

const HOST_PORT_EXAMPLES: &str = "examples: 127.0.0.1:7007, localhost:7007, [::1]:7007";

/// `HOST:PORT`: an address to connect to (a name is resolved when the
/// command runs).
pub(crate) fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.trim().is_empty() && port.parse::<u16>().is_ok() => {
            Ok(s.to_string())
        }
        Some((host, _)) if !host.trim().is_empty() => Err(format!(
            "the port must be a number 0-65535 ({HOST_PORT_EXAMPLES})"
        )),
        _ => Err(format!("expected HOST:PORT ({HOST_PORT_EXAMPLES})")),
    }
}

// --------------------------------------------------- socket activation

/// What `LISTEN_PID` and `LISTEN_FDS` say, read as `sd_listen_fds(3)` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) enum Activation {
    /// No socket activation (`LISTEN_PID` unset, or `LISTEN_FDS` unset).
    None,
    /// The sockets are meant for another process (`LISTEN_PID` is not this
    /// one, e.g. inherited through a parent): ignored.
    NotOurs(u32),
    /// `n` sockets from fd 3 on.
    Fds(u32),
}

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) const FIRST_FD: u32 = 3;

/// Reads the socket-activation variables as systemd defines them: without
/// `LISTEN_PID` there is nothing; a `LISTEN_PID` that is not a process id
/// is an error; one that is not `me` means the variables are not for us
/// (ignored, not an error); then `LISTEN_FDS` must count at least one
/// socket.
#[cfg_attr(not(unix), allow(dead_code))]
pub(crate) fn listen_fds(
    pid: Option<&str>,
    fds: Option<&str>,
    me: u32,
) -> Result<Activation, String> {
    let Some(pid_s) = pid else {
        return Ok(Activation::None);
    };
    let pid = match pid_s.trim().parse::<u32>() {
        Ok(p) if p > 0 => p,
        _ => {
            return Err(invalid_env(
                "LISTEN_PID",
                pid_s,
                "not a process id (example: LISTEN_PID=1234, set by the service manager to the pid it starts)",
            ))
        }
    };
    if pid != me {
        return Ok(Activation::NotOurs(pid));
    }
    let Some(fds_s) = fds else {
        return Ok(Activation::None);
    };
    let max = i32::MAX as u32 - FIRST_FD;
    match fds_s.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Activation::Fds(n)),
        _ => Err(invalid_env(
            "LISTEN_FDS",
            fds_s,
            "not a count of sockets of at least 1 (examples: LISTEN_FDS=1, LISTEN_FDS=2; the sockets are fds 3, 4, ...)",
        )),
    }
}

#[cfg(test)]
mod tests;
