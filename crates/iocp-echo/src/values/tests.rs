//! The value parsers: exact messages for bad input, and properties: valid
//! values round-trip, and any string either parses or gives an error that
//! ends with valid examples (never a panic).

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// Every parser error ends with valid examples (or the list of names).
fn assert_helpful(input: &str, e: &str) {
    assert!(
        e.contains("example") || e.contains("this build has"),
        "{input:?}: error without an example: {e}"
    );
    assert!(e.ends_with(')'), "{input:?}: {e}");
}

/// `f` refuses each `INPUT | WHY` line of `table` with `WHY EXAMPLES`
/// (an empty INPUT is the empty string).
fn refuses<T: std::fmt::Debug>(f: impl Fn(&str) -> Result<T, String>, examples: &str, table: &str) {
    for line in table.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (input, why) = line
            .split_once('|')
            .unwrap_or_else(|| panic!("not INPUT | WHY: {line:?}"));
        let input = input.trim();
        let want = format!("{} {examples}", why.trim());
        assert_eq!(f(input).unwrap_err(), want, "{input:?}");
    }
}

/// Any string: no panic; an error is helpful.
fn total<T>(f: impl Fn(&str) -> Result<T, String>, s: &str) {
    if let Err(e) = f(s) {
        assert_helpful(s, &e);
    }
}

#[test]
fn duration_messages() {
    assert_eq!(duration("300ms"), Ok(Duration::from_millis(300)));
    assert_eq!(duration(" 1h 30m "), Ok(Duration::from_secs(5400)));
    assert_eq!(duration("0"), Ok(Duration::ZERO));
    refuses(
        duration,
        "(examples: 500ms, 10s, 5m)",
        "
        5 parsecs | unknown unit 'parsecs'
        soon | expected a number at 'soon'
         | empty
        101y | too large: at most 100y
        ",
    );
    assert_eq!(
        positive_duration("0s").unwrap_err(),
        "must be more than 0 (examples: 500ms, 10s, 5m)"
    );
    assert_eq!(duration_or_off("off"), Ok(OptDuration(None)));
    assert_eq!(duration_or_off("none"), Ok(OptDuration(None)));
    assert_eq!(duration_or_off("0"), Ok(OptDuration(None)));
    assert_eq!(duration_or_off("0s"), Ok(OptDuration(None)));
    assert_eq!(
        duration_or_off("300ms"),
        Ok(OptDuration(Some(Duration::from_millis(300))))
    );
    assert_eq!(
        duration_or_off("later").unwrap_err(),
        "expected a number at 'later' (examples: 5m, 30s, off)"
    );
}

#[test]
fn size_messages() {
    for (s, v) in [
        ("262144", 262_144),
        ("256KiB", 262_144),
        ("256k", 262_144),
        ("256 Ki", 262_144),
        ("1MiB", 1 << 20),
        ("1 MiB", 1 << 20),
        ("1m", 1 << 20),
        ("1GiB", 1 << 30),
        ("2MB", 2_000_000),
        ("3kb", 3000),
        ("7B", 7),
    ] {
        assert_eq!(size(s), Ok(v), "{s}");
    }
    refuses(
        size,
        "(examples: 262144, 256KiB, 1MiB)",
        "
        12XB | unknown unit 'XB'
        0 | must be at least 1 byte
        KiB | expected a number of bytes at 'KiB'
        -5 | expected a number of bytes at '-5'
        99999999999GiB | too large
        1..2 | a range is not accepted here
        ",
    );
    let r = size_range(16 << 20);
    assert_eq!(r("64"), Ok((64, 64)));
    assert_eq!(r("64..4096"), Ok((64, 4096)));
    assert_eq!(r("64..=4096"), Ok((64, 4096)));
    assert_eq!(r(" 1KiB .. 64KiB "), Ok((1024, 65536)));
    assert_eq!(r("16MiB"), Ok((16 << 20, 16 << 20)));
    refuses(
        r,
        "(examples: 64, 1KiB, 64..4096)",
        "
        100..10 | MIN (100) is larger than MAX (10)
        17MiB | too large: at most 16777216 bytes
        0..5 | must be at least 1 byte
        5.. | empty
        ",
    );
}

#[test]
fn rate_messages() {
    assert_eq!(whole_rate("1000/s"), Ok(1000));
    assert_eq!(whole_rate("1000/sec"), Ok(1000));
    assert_eq!(whole_rate(" 5 "), Ok(5));
    assert_eq!(rate("2.5/s"), Ok(2.5));
    assert_eq!(rate("1e4"), Ok(10_000.0));
    assert_eq!(rate_or_unlimited("0"), Ok(0.0));
    assert_eq!(rate_or_unlimited("2000/s"), Ok(2000.0));
    refuses(
        whole_rate,
        "(examples: 1000, 1000/s)",
        "
        0 | must be at least 1
        1.5 | must be a whole number
        fast | not a number
        4294967296 | too large: at most 1000000000
        ",
    );
    refuses(
        rate,
        "(examples: 1000, 1000/s)",
        "
        100/m | unknown unit '/m': rates are per second
        -5 | must not be negative
        0/s | must be more than 0
        inf | not a number
        NaN | not a number
        1e999 | too large: at most 1000000000
        1e-9 | too small: at least 0.001
        -0 | must not be negative
        ",
    );
    assert_eq!(
        rate_or_unlimited("x").unwrap_err(),
        "not a number (examples: 2000/s, 100, 0)"
    );
}

#[test]
fn count_messages() {
    let workers = count::<u16>(1, 1024);
    assert_eq!(workers("4"), Ok(4));
    assert_eq!(workers("+4"), Ok(4));
    refuses(
        workers,
        "(examples: 1, 1024)",
        "
        0 | must be from 1 to 1024
        -1 | must be from 1 to 1024
        abc | not a whole number
        ",
    );
    let conns = count::<u32>(1, u32::MAX);
    refuses(
        conns,
        "(examples: 1, 100)",
        "
        0 | must be at least 1
        4294967296 | must be at least 1
        ",
    );
    let seed = count::<u64>(0, u64::MAX);
    assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
    refuses(
        seed,
        "(examples: 0, 100)",
        "
        18446744073709551616 | must be at least 0
        1.5 | not a whole number
        ",
    );
}

#[test]
fn backend_messages() {
    assert_eq!(backend("auto"), Ok(Backend::Auto));
    #[cfg(target_os = "linux")]
    {
        assert_eq!(backend("uring"), Ok(Backend::Uring));
        assert_eq!(backend("io_uring"), Ok(Backend::Uring));
        assert_eq!(backend("epoll"), Ok(Backend::Epoll));
        assert_eq!(
            backend("bogus").unwrap_err(),
            "unknown backend (examples: auto, uring, epoll)"
        );
        assert_eq!(
            backend("iocp").unwrap_err(),
            "backend iocp is only available on Windows (this build has: auto, uring, epoll)"
        );
    }
    #[cfg(windows)]
    assert_eq!(
        backend("epoll").unwrap_err(),
        "backend epoll is only available on Linux (this build has: auto, iocp)"
    );
}

#[test]
fn address_messages() {
    assert_eq!(
        socket_addr("[::1]:7007"),
        Ok("[::1]:7007".parse::<SocketAddr>().unwrap())
    );
    let ex = "(examples: 127.0.0.1:7007, [::1]:7007, 0.0.0.0:7)";
    refuses(
        socket_addr,
        ex,
        "
        nowhere | expected IP:PORT
        127.0.0.1:http | the port must be a number 0-65535
        ::1:7007 | an IPv6 address goes in brackets
        localhost:7007 | not an IP address (host names are not resolved here)
        ",
    );
    assert_eq!(host_port("localhost:7"), Ok("localhost:7".to_string()));
    assert_eq!(host_port("[::1]:7"), Ok("[::1]:7".to_string()));
    let ex = "(examples: 127.0.0.1:7007, localhost:7007, [::1]:7007)";
    refuses(
        host_port,
        ex,
        "
        127.0.0.1 | expected HOST:PORT
        :7 | expected HOST:PORT
        localhost:99999 | the port must be a number 0-65535
        ",
    );
}

#[test]
fn socket_activation_variables() {
    let me = 4242;
    assert_eq!(listen_fds(None, None, me), Ok(Activation::None));
    assert_eq!(listen_fds(None, Some("1"), me), Ok(Activation::None));
    assert_eq!(listen_fds(Some("4242"), None, me), Ok(Activation::None));
    assert_eq!(
        listen_fds(Some("4242"), Some("2"), me),
        Ok(Activation::Fds(2))
    );
    // For another process: ignored, whatever LISTEN_FDS says.
    assert_eq!(
        listen_fds(Some("77"), Some("junk"), me),
        Ok(Activation::NotOurs(77))
    );
    let e = listen_fds(Some("abc"), Some("1"), me).unwrap_err();
    assert!(
        e.starts_with(
            "invalid value 'abc' for LISTEN_PID: not a process id (example: LISTEN_PID=1234"
        ),
        "{e}"
    );
    assert!(listen_fds(Some("0"), Some("1"), me).is_err());
    assert!(listen_fds(Some(""), Some("1"), me).is_err());
    let e = listen_fds(Some("4242"), Some("two"), me).unwrap_err();
    assert!(
        e.starts_with("invalid value 'two' for LISTEN_FDS: not a count of sockets of at least 1 (examples: LISTEN_FDS=1"),
        "{e}"
    );
    assert!(listen_fds(Some("4242"), Some("0"), me).is_err());
    assert!(listen_fds(Some("4242"), Some("-1"), me).is_err());
    assert!(listen_fds(Some("4242"), Some("2147483645"), me).is_err());
    assert_eq!(
        invalid_env("X", "a\nb", "why"),
        "invalid value 'a\\nb' for X: why"
    );
}

fn unit() -> impl Strategy<Value = (&'static str, u64)> {
    prop::sample::select(vec![
        ("", 1),
        ("B", 1),
        ("K", 1 << 10),
        ("Ki", 1 << 10),
        ("KiB", 1 << 10),
        ("KB", 1000),
        ("M", 1 << 20),
        ("Mi", 1 << 20),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("G", 1 << 30),
        ("Gi", 1 << 30),
        ("GiB", 1 << 30),
        ("GB", 1_000_000_000),
    ])
}

/// Strings near the valid forms, to reach the parsers' error branches.
fn near_miss() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 .=+eE/a-zA-Z:-]{0,16}",
        "[0-9]{0,25}(\\.\\.=?)?[0-9]{0,25}[kKmMgGiIbB]{0,3}",
        "[0-9.]{0,8}(/s|/sec|/m|/)?",
        "[0-9]{0,4}(ns|ms|s|m|h|d|y|parsec| )*",
        "\\[?[0-9a-f:.]{0,20}\\]?:[0-9]{0,6}",
    ]
}

proptest! {
    #[test]
    fn durations_round_trip(secs in 0u64..=MAX_DURATION.as_secs(), nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos).min(MAX_DURATION);
        let text = humantime::format_duration(d).to_string();
        prop_assert_eq!(duration(&text), Ok(d));
        prop_assert_eq!(duration_or_off(&text), Ok(OptDuration((!d.is_zero()).then_some(d))));
    }

    #[test]
    fn sizes_round_trip(n in 1u64..(1 << 30), (u, mult) in unit(), space in any::<bool>(), lower in any::<bool>()) {
        let unit = if lower { u.to_ascii_lowercase() } else { u.to_string() };
        let text = format!("{n}{}{unit}", if space && !u.is_empty() { " " } else { "" });
        let want = n.checked_mul(mult).and_then(|v| usize::try_from(v).ok());
        match want {
            Some(v) => prop_assert_eq!(size(&text), Ok(v)),
            None => prop_assert!(size(&text).is_err()),
        }
    }

    #[test]
    fn size_ranges_round_trip(a in 1usize..=(16 << 20), b in 1usize..=(16 << 20), eq in any::<bool>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        let text = format!("{lo}..{}{hi}", if eq { "=" } else { "" });
        prop_assert_eq!(size_range(16 << 20)(&text), Ok((lo, hi)));
        prop_assert_eq!(size_range(16 << 20)(&hi.to_string()), Ok((hi, hi)));
    }

    #[test]
    fn rates_round_trip(n in 1u32..=1_000_000_000, r in 1e-3f64..1e9, suffix in prop::sample::select(vec!["", "/s", "/sec"])) {
        prop_assert_eq!(whole_rate(&format!("{n}{suffix}")), Ok(n));
        prop_assert_eq!(rate(&format!("{r}{suffix}")), Ok(r));
        prop_assert_eq!(rate_or_unlimited(&format!("{r}{suffix}")), Ok(r));
    }

    #[test]
    fn counts_round_trip(n in any::<u64>(), lo in 0u64..100, span in 0u64..100_000) {
        let hi = lo + span;
        let parsed = count::<u64>(lo, hi)(&n.to_string());
        prop_assert_eq!(parsed.is_ok(), (lo..=hi).contains(&n));
        if let Ok(v) = parsed {
            prop_assert_eq!(v, n);
        }
        let narrow = count::<u16>(1, 1024)(&n.to_string());
        prop_assert_eq!(narrow.is_ok(), (1..=1024).contains(&n));
    }

    #[test]
    fn addresses_round_trip(a in (any::<std::net::IpAddr>(), any::<u16>()).prop_map(SocketAddr::from), host in "[a-z][a-z0-9.-]{0,20}", port in any::<u16>()) {
        prop_assert_eq!(socket_addr(&a.to_string()), Ok(a));
        prop_assert_eq!(host_port(&a.to_string()), Ok(a.to_string()));
        let hp = format!("{host}:{port}");
        prop_assert_eq!(host_port(&hp), Ok(hp.clone()));
    }

    #[test]
    fn activation_round_trip(pid in 1u32.., other in 1u32.., n in 1u32..=1024, fds in any::<Option<String>>()) {
        prop_assert_eq!(
            listen_fds(Some(&pid.to_string()), Some(&n.to_string()), pid),
            Ok(Activation::Fds(n))
        );
        if other != pid {
            // Not ours: ignored, whatever LISTEN_FDS holds.
            prop_assert_eq!(
                listen_fds(Some(&other.to_string()), fds.as_deref(), pid),
                Ok(Activation::NotOurs(other))
            );
        }
    }

    #[test]
    fn any_string_parses_or_explains(s in near_miss()) {
        total(duration, &s);
        total(positive_duration, &s);
        total(duration_or_off, &s);
        total(size, &s);
        total(size_range(16 << 20), &s);
        total(rate, &s);
        total(rate_or_unlimited, &s);
        total(whole_rate, &s);
        total(count::<u16>(1, 1024), &s);
        total(count::<u64>(0, u64::MAX), &s);
        total(backend, &s);
        total(socket_addr, &s);
        total(host_port, &s);
        for (pid, fds) in [(Some(s.as_str()), Some("1")), (Some("4242"), Some(s.as_str()))] {
            if let Err(e) = listen_fds(pid, fds, 4242) {
                prop_assert!(e.starts_with("invalid value '"), "{}", e);
                prop_assert!(e.contains("example"), "{}", e);
            }
        }
    }
}
