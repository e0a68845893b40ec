//! What the `iocp` tests need to know about the machine they run on (Wine or
//! Windows; whether a backend that does not work here may be skipped), kept
//! out of the library's public API. Not published; a dev-dependency of the
//! crates whose tests use it.

/// `Some` when this process runs under Wine rather than on Windows (always
/// `None` off Windows), saying which Wine: "at" the loader's path.
///
/// Wine puts its own variables into every process's environment
/// (`WINELOADER`, `WINECONFIGDIR`, `WINEDATADIR`, …); Windows sets none of
/// them. Tests use this to skip, saying why, the assertions where Wine
/// behaves differently from Windows (the divergences are listed in
/// `crates/iocp/WINDOWS.md`).
pub fn wine() -> Option<String> {
    if !cfg!(windows) {
        return None;
    }
    let loader = std::env::var("WINELOADER").ok();
    let config = std::env::var_os("WINECONFIGDIR");
    match (loader, config) {
        (Some(l), _) => Some(format!("at {l}")),
        (None, Some(c)) => Some(format!("with configuration {}", c.to_string_lossy())),
        (None, None) => None,
    }
}

/// The environment variable that lets tests skip a backend this machine
/// cannot run: backend names (`uring`, `epoll`, `iocp`) separated by commas
/// or spaces, or `all`. Unset (as in CI), a missing backend fails its tests.
pub const ALLOW_MISSING_BACKEND: &str = "IOCP_ALLOW_MISSING_BACKEND";

/// The backends [`ALLOW_MISSING_BACKEND`] may name (`completion_port::Backend`'s names
/// but `auto`).
const BACKENDS: [&str; 3] = ["uring", "epoll", "iocp"];

/// Whether [`ALLOW_MISSING_BACKEND`] names `backend` (or says `all`). A name
/// that is not a backend panics, naming it, so a typo cannot turn a failing
/// test into a skipped one.
pub fn missing_backend_allowed(backend: &str) -> bool {
    let Ok(v) = std::env::var(ALLOW_MISSING_BACKEND) else {
        return false;
    };
    let mut allowed = false;
    for name in v.split([',', ' ', '\t']).filter(|s| !s.is_empty()) {
        if name != "all" && !BACKENDS.contains(&name) {
            panic!(
                "invalid value '{v}' for {ALLOW_MISSING_BACKEND}: '{name}' is not a backend \
                 (expected uring, epoll, iocp or all, separated by commas)"
            );
        }
        allowed |= name == "all" || name == backend;
    }
    allowed
}

/// For a test that cannot run because `backend` does not work on this
/// machine (`why`): returns (after printing `<test> SKIPPED: <why>` to
/// stderr, past the test harness's output capture) when
/// [`ALLOW_MISSING_BACKEND`] names the backend, and panics otherwise.
pub fn backend_missing(test: &str, backend: &str, why: &str) {
    if missing_backend_allowed(backend) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr().lock(),
            "{test} SKIPPED: {why} ({ALLOW_MISSING_BACKEND} allows the skip)"
        );
    } else {
        panic!(
            "{test}: {why}. Set {ALLOW_MISSING_BACKEND}={backend} to skip its tests on this \
             machine (CI never does)"
        );
    }
}
