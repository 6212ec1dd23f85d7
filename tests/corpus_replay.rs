//! Replays the fuzz corpora in `cargo test`, through the very entry points the fuzz targets
//! use (`fuzz/src/entry.rs`): the committed seeds and crash regressions
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`), any local corpus from fuzzing runs
//! (`fuzz/corpus/<target>/`, not committed), the bad-input corpus (`testdata/bad/`) and the
//! examples. Any panic is a failure naming the file.

#[path = "../fuzz/src/entry.rs"]
mod entry;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Stack of the replay thread: the size of a main thread's, where the binary runs.
const STACK: usize = 8 << 20;

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Files for one target: fuzz dirs for it, plus extra (relative dir, file-name filter).
fn inputs(target: &str, extra: &[(&str, &str)]) -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    for d in ["fuzz/seeds", "fuzz/regressions", "fuzz/corpus"] {
        files_under(&root.join(d).join(target), &mut files);
    }
    for (dir, name) in extra {
        let mut v = Vec::new();
        files_under(&root.join(dir), &mut v);
        files.extend(v.into_iter().filter(|p| {
            name.is_empty()
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(name))
        }));
    }
    files
}

fn replay(target: &str, f: fn(&[u8]), extra: &[(&str, &str)]) {
    let files = inputs(target, extra);
    assert!(!files.is_empty(), "{target}: nothing to replay");
    let n = files.len();
    let name = target.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("replay-{target}"))
        .stack_size(STACK)
        .spawn(move || {
            // Keep the default hook quiet; failures are reported below, by file.
            let mut failed = Vec::new();
            // TSK8S_REPLAY_VERBOSE=1 names each input before it runs (to find one that aborts).
            let verbose = std::env::var_os("TSK8S_REPLAY_VERBOSE").is_some();
            for p in &files {
                if verbose {
                    eprintln!("{name}: {}", p.display());
                }
                let data = match fs::read(p) {
                    Ok(d) => d,
                    // A fuzzer running on the local corpus replaces files as it minimizes.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => panic!("{}: {e}", p.display()),
                };
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&data))) {
                    let msg = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    failed.push(format!("{}: {msg}", p.display()));
                }
            }
            failed
        })
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let failed = handle
        .join()
        .unwrap_or_else(|_| vec![format!("{target}: the replay thread died")]);
    assert!(
        failed.is_empty(),
        "{target}: {} of {n} input(s) panicked:\n{}",
        failed.len(),
        failed.join("\n")
    );
    eprintln!("{target}: replayed {n} input(s)");
}

#[test]
fn replay_spec() {
    replay(
        "spec",
        entry::spec,
        &[
            ("testdata/bad/spec", "tailnet.kdl"),
            ("testdata/specs", "tailnet.kdl"),
            ("testdata/errors", ".kdl"),
            ("examples", ".kdl"),
        ],
    );
}

#[test]
fn replay_lock() {
    replay(
        "lock",
        entry::lock,
        &[
            ("testdata/bad/lock", "tailnet.lock"),
            ("testdata/specs", "tailnet.lock"),
            ("examples", ".lock"),
        ],
    );
}

#[test]
fn replay_policy() {
    replay(
        "policy",
        entry::policy,
        &[("testdata/bad/policy", ""), ("testdata/policy", ".hujson")],
    );
}

#[test]
fn replay_datagram() {
    replay("datagram", entry::datagram, &[]);
}

#[test]
fn replay_gateway() {
    replay("gateway", entry::gateway, &[("fuzz/seeds/datagram", "")]);
}

#[test]
fn replay_inner_packet() {
    replay("inner_packet", entry::inner_packet, &[]);
}
