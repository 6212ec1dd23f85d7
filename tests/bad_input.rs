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

// --- Hostile sizes (generated here; nothing huge is committed) --------------------------------

/// The README's example spec (valid), the base of the generated cases.
fn example_spec() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad/spec/long-line/tailnet.kdl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // That case's one bad line, made valid.
    text.lines()
        .map(|l| {
            if l.starts_with("host \"office\"") {
                "host \"office\" \"192.168.10.0/24\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `example_spec` with `extra` appended to the `host` line and `before` inserted before it.
fn generated_case(before: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let spec = example_spec().replace(
        "host \"office\" \"192.168.10.0/24\"\n",
        &format!("{before}host \"office\" \"192.168.10.0/24\"{extra}\n"),
    );
    std::fs::write(dir.path().join("tailnet.kdl"), spec).unwrap_or_else(|e| panic!("write: {e}"));
    dir
}

/// Lines that start a diagnostic (`file:line:col: error: …`).
fn printed_errors(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| l.starts_with("tailnet.kdl:") && l.contains(": error: "))
        .count()
}

/// What is pinned of a long report: its first diagnostic and its last lines.
fn head_and_tail(stderr: &str) -> String {
    let first = stderr.split("\n\n").next().unwrap_or_default();
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join("\n");
    format!("{first}\n\n[…]\n{tail}\n")
}

/// 64 KB of unknown properties on one line: every one is an error, but the report is bounded:
/// 50 diagnostics, then a count; each snippet a window of the line. (It used to print 2 GB,
/// each diagnostic quoting the whole line.)
#[test]
fn many_errors_on_one_long_line_are_capped() {
    let dir = generated_case("", &" bad=1".repeat(64 * 1024 / 6));
    let o = run_in(dir.path(), &["check", "tailnet.kdl"]);
    let pinned = judge(dir.path(), &o);
    assert!(
        o.stderr.len() <= 10 << 20,
        "stderr: {} bytes",
        o.stderr.len()
    );
    assert_eq!(printed_errors(&o.stderr), 50);
    assert!(
        o.stderr.lines().all(|l| l.chars().count() <= 300),
        "a line over 300 characters"
    );
    assert!(
        o.stderr.ends_with("10922 errors in tailnet.kdl\n"),
        "{}",
        &o.stderr[o.stderr.len().saturating_sub(300)..]
    );
    settings().bind(|| insta::assert_snapshot!("many_errors_one_line", head_and_tail(&pinned)));
}

/// 200,000 lines of an unknown node (it took minutes at a million): 50 printed, all counted.
#[test]
fn many_error_lines_are_capped() {
    let dir = generated_case(&"bogus \"x\"\n".repeat(200_000), "");
    let o = run_in(dir.path(), &["check", "tailnet.kdl"]);
    let pinned = judge(dir.path(), &o);
    assert_eq!(printed_errors(&o.stderr), 50);
    assert!(
        o.stderr.len() <= 1 << 20,
        "stderr: {} bytes",
        o.stderr.len()
    );
    assert!(o.stderr.ends_with("200000 errors in tailnet.kdl\n"));
    settings().bind(|| insta::assert_snapshot!("many_error_lines", head_and_tail(&pinned)));
}

/// A name of a megabyte: the message keeps its head and tail, the snippet a window.
#[test]
fn huge_names_are_cut_in_messages() {
    let dir = generated_case("", &format!(" {}=1", "n".repeat(1 << 20)));
    let o = run_in(dir.path(), &["check", "tailnet.kdl"]);
    let pinned = judge(dir.path(), &o);
    assert!(o.stderr.len() <= 8192, "stderr: {} bytes", o.stderr.len());
    settings().bind(|| insta::assert_snapshot!("huge_name", pinned));
}

/// Inputs over 64 MiB are refused before they are read whole: by their size, and (for a file
/// that does not tell its size, such as a device) by reading at most 64 MiB + 1 byte.
#[test]
fn inputs_over_64_mib_are_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let big = |name: &str| {
        let f = std::fs::File::create(dir.path().join(name)).unwrap_or_else(|e| panic!("{e}"));
        // Sparse: nothing is written.
        f.set_len((64 << 20) + 1).unwrap_or_else(|e| panic!("{e}"));
    };
    big("tailnet.kdl");
    big("policy.hujson");
    let mut pinned = String::new();
    for args in [
        &["check", "tailnet.kdl"][..],
        &["build", "tailnet.kdl", "-o", "out"],
        &["policy", "check", "policy.hujson"],
        &["import", "policy.hujson"],
    ] {
        let o = run_in(dir.path(), args);
        pinned.push_str(&format!(
            "$ tsk8s {}\n{}",
            args.join(" "),
            judge(dir.path(), &o)
        ));
    }
    assert!(!dir.path().join("out").exists(), "build wrote output");
    // A valid spec beside a lock too large.
    std::fs::write(dir.path().join("tailnet.kdl"), example_spec())
        .unwrap_or_else(|e| panic!("{e}"));
    big("tailnet.lock");
    let o = run_in(dir.path(), &["check", "tailnet.kdl"]);
    pinned.push_str(&format!(
        "$ tsk8s check tailnet.kdl (lock too large)\n{}",
        judge(dir.path(), &o)
    ));
    if Path::new("/dev/zero").exists() {
        let o = run_in(dir.path(), &["check", "/dev/zero"]);
        pinned.push_str(&format!(
            "$ tsk8s check /dev/zero\n{}",
            judge(dir.path(), &o)
        ));
    }
    settings().bind(|| insta::assert_snapshot!("over_64_mib", pinned));
}

/// No line of any pinned bad-input output starts (after blanks) with a GitHub Actions workflow
/// command, and none holds `##[`, an escape or a control character.
#[test]
fn pinned_outputs_are_safe_for_ci_logs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad/snapshots");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        n += 1;
        for l in text.lines() {
            assert!(
                !l.trim_start().starts_with("::"),
                "{}: {l}",
                e.path().display()
            );
            assert!(!l.contains("##["), "{}: {l}", e.path().display());
            assert!(
                !l.chars()
                    .any(|c| c != '\t' && tsk8s_policy::text::is_unsafe(c)),
                "{}: {l:?}",
                e.path().display()
            );
        }
    }
    assert!(n > 100);
}

/// `check` and `build` are one truth: for every bad spec and lock, `build` exits as `check`
/// does, prints the same diagnostics and writes nothing (issue 14).
#[test]
fn check_and_build_refuse_alike() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad");
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out = tmp.path().join("out");
    let out_arg = out.to_string_lossy().into_owned();
    let mut n = 0;
    for sub in ["spec", "lock"] {
        let Ok(rd) = std::fs::read_dir(root.join(sub)) else {
            panic!("no testdata/bad/{sub}");
        };
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs {
            let check = run_in(&dir, &["check", "tailnet.kdl"]);
            let build = run_in(&dir, &["build", "tailnet.kdl", "-o", &out_arg]);
            assert_eq!(
                (check.code, &check.stderr),
                (build.code, &build.stderr),
                "{}: check and build disagree",
                dir.display()
            );
            assert!(
                !out.exists(),
                "{}: a refused build wrote {}",
                dir.display(),
                out.display()
            );
            n += 1;
        }
    }
    assert!(n >= 100, "only {n} cases");
}
