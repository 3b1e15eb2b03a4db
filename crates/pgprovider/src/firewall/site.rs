//! The application's call site of a statement, for learn mode: the first frame of a
//! backtrace outside this library, its drivers, the runtime and the standard library.
//! Taken once per new shape (a backtrace costs a few milliseconds); builds without debug
//! information give `unknown`.

/// Functions that are not the application's: this library and its drivers, the runtime,
/// the standard library.
const NOT_OURS: &[&str] = &[
    "pgprovider::",
    "pgprovider_core::",
    "pgprovider_tokio_postgres::",
    "pgprovider_sqlx::",
    "pgprovider_diesel::",
    "tokio::",
    "std::",
    "core::",
    "alloc::",
    "futures",
    "__rustc",
];

/// Where frames inlined into others (named by their function alone) come from.
const NOT_OURS_PATHS: &[&str] = &[
    "/pgprovider/src/",
    "/pgprovider-core/src/",
    "/pgprovider-tokio-postgres/src/",
    "/pgprovider-sqlx/src/",
    "/pgprovider-diesel/src/",
    "/rustc/",
    "/.cargo/registry/",
    "/.cargo/git/",
];

/// Whether `at` (`file:line:col`, relative to the working directory when under it) is a
/// source file of this crate or of a sibling crate of ours (the drivers), built from a
/// checkout of the workspace.
fn in_this_crate(at: &str) -> bool {
    let file = at.split(':').next().unwrap_or(at);
    let Ok(cwd) = std::env::current_dir() else {
        return false;
    };
    let path: std::path::PathBuf = cwd
        .join(file)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    let Some(crates) = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent() else {
        return false;
    };
    let Ok(rest) = path.strip_prefix(crates) else {
        return false;
    };
    let mut parts = rest.components().map(|c| c.as_os_str().to_string_lossy());
    matches!(
        (parts.next(), parts.next()),
        (Some(krate), Some(src)) if krate.starts_with("pgprovider") && src == "src"
    )
}

pub(super) fn call_site() -> String {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    first_foreign(&trace).unwrap_or_else(|| "unknown".to_owned())
}

/// The location of the first frame of a rendered backtrace (`N: function` then
/// `at file:line:col`) that is the application's: a function outside the library, or one
/// of its tests.
fn first_foreign(trace: &str) -> Option<String> {
    let mut function = "";
    for line in trace.lines().map(str::trim) {
        let Some(at) = line.strip_prefix("at ") else {
            function = line.split_once(": ").map_or("", |(_, f)| f);
            continue;
        };
        let f = function.trim_start_matches('<');
        let ours = NOT_OURS.iter().any(|p| f.starts_with(p))
            || NOT_OURS_PATHS.iter().any(|p| at.contains(p))
            || in_this_crate(at);
        let test = at.contains("/tests/") || at.contains("tests.rs");
        if function.is_empty() || (ours && !test) {
            continue;
        }
        // `file:line:col` → `file:line`.
        return Some(match at.rsplit_once(':') {
            Some((fl, col)) if col.chars().all(|c| c.is_ascii_digit()) => fl.to_owned(),
            _ => at.to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_first_frame_outside_the_library_is_the_call_site() {
        let trace = "   0: std::backtrace::Backtrace::create\n             at /rustc/abc/library/std/src/backtrace.rs:331:13\n   1: decide\n             at /x/crates/pgprovider/src/firewall/mod.rs:10:5\n   2: <pgprovider::y as core::future::Future>::poll\n             at ./src/y.rs:1:1\n   3: app::handler::{{closure}}\n             at /app/src/handler.rs:42:17\n";
        assert_eq!(
            super::first_foreign(trace).as_deref(),
            Some("/app/src/handler.rs:42")
        );
        assert_eq!(super::first_foreign("nothing here"), None);
    }
}
