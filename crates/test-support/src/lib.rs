//! What the `iocp` tests need to know about the machine they run on, kept
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
