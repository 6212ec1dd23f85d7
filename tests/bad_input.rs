//! The bad-input corpus (`testdata/bad/`): malformed specs, locks and policy files. For each
//! one the real binary must exit 2 (bad input), never panic, never hang, and print the
//! diagnostic pinned in `testdata/bad/snapshots/`.
//!
//! Layout:
//! - `testdata/bad/spec/<case>/tailnet.kdl` (+ `tailnet.lock`): `tsk8s check tailnet.kdl`
//! - `testdata/bad/lock/<case>/tailnet.kdl` + `tailnet.lock`: `tsk8s check tailnet.kdl`
//! - `testdata/bad/policy/<case>.hujson`: `tsk8s policy check <case>.hujson`
//!
//! Each command runs in the case's directory, so diagnostics name relative paths only.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tsk8s");

/// Longer than any honest run takes; catches hangs (not a performance assertion).
const HANG: Duration = Duration::from_secs(120);

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_in(dir: &Path, args: &[&str]) -> Outcome {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block.
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut s);
        }
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut s);
        }
        s
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > HANG => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{}: `tsk8s {}` did not finish within {HANG:?}",
                    dir.display(),
                    args.join(" ")
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("wait: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Outcome {
        code: status.code(),
        stdout,
        stderr,
    }
}

/// Exit 2, no panic; returns what gets pinned.
fn judge(what: &Path, o: &Outcome) -> String {
    assert!(
        !o.stderr.contains("panicked at"),
        "{}: tsk8s panicked:\n{}",
        what.display(),
        o.stderr
    );
    assert_eq!(
        o.code,
        Some(2),
        "{}: expected exit 2 (bad input), got {:?}\nstderr:\n{}",
        what.display(),
        o.code,
        o.stderr
    );
    assert!(
        !o.stderr.trim().is_empty(),
        "{}: exit 2 without a diagnostic",
        what.display()
    );
    let mut pinned = o.stderr.clone();
    if !o.stdout.is_empty() {
        pinned.push_str("--- stdout ---\n");
        pinned.push_str(&o.stdout);
    }
    pinned
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("../testdata/bad/snapshots");
    s.set_prepend_module_to_snapshot(false);
    s
}

#[test]
fn bad_specs() {
    settings().bind(|| {
        insta::glob!("../testdata/bad", "spec/*/tailnet.kdl", |path| {
            let dir = path.parent().unwrap_or(Path::new("."));
            let o = run_in(dir, &["check", "tailnet.kdl"]);
            insta::assert_snapshot!(judge(path, &o));
        });
    });
}

#[test]
fn bad_locks() {
    settings().bind(|| {
        insta::glob!("../testdata/bad", "lock/*/tailnet.lock", |path| {
            let dir = path.parent().unwrap_or(Path::new("."));
            assert!(
                dir.join("tailnet.kdl").is_file(),
                "{}: a lock case needs its spec",
                dir.display()
            );
            let o = run_in(dir, &["check", "tailnet.kdl"]);
            insta::assert_snapshot!(judge(path, &o));
        });
    });
}

#[test]
fn bad_policies() {
    settings().bind(|| {
        insta::glob!("../testdata/bad", "policy/*.hujson", |path| {
            let dir = path.parent().unwrap_or(Path::new("."));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let o = run_in(dir, &["policy", "check", &name]);
            insta::assert_snapshot!(judge(path, &o));
        });
    });
}

/// The corpus keeps its promised size.
#[test]
fn corpus_has_at_least_100_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad");
    let count = |sub: &str| {
        std::fs::read_dir(root.join(sub))
            .map(|rd| rd.flatten().count())
            .unwrap_or(0)
    };
    let n = count("spec") + count("lock") + count("policy");
    assert!(n >= 100, "only {n} bad-input cases in testdata/bad");
}
