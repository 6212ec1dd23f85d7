//! The CLI as a user runs it: exit codes, `build --check`, `diff` against a dir and a git ref,
//! the output dir's ownership, and `lock`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tsk8s")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn copy_spec(from: &str, to: &Path) {
    for f in ["tailnet.kdl", "tailnet.lock"] {
        std::fs::copy(root().join(from).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn build_check_detects_any_output_change() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    let fresh = run(d, &["build", "--check"]);
    assert_eq!(
        fresh.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );
    let before = tsk8s::cli::output::read_tree(&d.join("out")).unwrap();
    // One character: port 8080 → 8081.
    let spec = std::fs::read_to_string(d.join("tailnet.kdl")).unwrap();
    std::fs::write(
        d.join("tailnet.kdl"),
        spec.replacen("port=8080", "port=8081", 1),
    )
    .unwrap();
    let stale = run(d, &["build", "--check"]);
    assert_eq!(stale.status.code(), Some(1));
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(err.contains("is stale"), "{err}");
    assert_eq!(
        tsk8s::cli::output::read_tree(&d.join("out")).unwrap(),
        before,
        "--check wrote something"
    );
    // A change that does not affect output (a comment) is not stale.
    std::fs::write(d.join("tailnet.kdl"), format!("// a comment\n{spec}")).unwrap();
    assert_eq!(run(d, &["build", "--check"]).status.code(), Some(0));
}

#[test]
fn output_dir_is_owned_wholly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    std::fs::write(d.join("out/clusters/mine.yaml"), "kind: ConfigMap\n").unwrap();
    let o = run(d, &["build"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("did not write"));
    assert!(d.join("out/clusters/mine.yaml").exists());
    // A non-empty dir without a manifest is refused too.
    std::fs::create_dir(d.join("other")).unwrap();
    std::fs::write(d.join("other/x"), "x").unwrap();
    assert_eq!(run(d, &["build", "-o", "other"]).status.code(), Some(2));
    // Missing parents of the output dir are created.
    assert_eq!(
        run(d, &["build", "-o", "deep/er/out"]).status.code(),
        Some(0)
    );
    assert!(d.join("deep/er/out/policy.hujson").exists());
    // Unchanged rebuild keeps everything as it is.
    std::fs::remove_file(d.join("out/clusters/mine.yaml")).unwrap();
    let o = run(d, &["build"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("up to date"));
}

#[test]
fn diff_exit_codes_and_git_base() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "ci@example.com"]);
    git(&["config", "user.name", "ci"]);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    git(&["add", "-A"]);
    git(&["commit", "-qm", "base"]);
    assert_eq!(run(d, &["diff"]).status.code(), Some(0));
    // A pull request: change an ACL, rebuild, commit the fresh output.
    let spec = std::fs::read_to_string(d.join("tailnet.kdl")).unwrap();
    std::fs::write(
        d.join("tailnet.kdl"),
        spec.replace("dst=\"tag:web:8080\"", "dst=\"tag:web:8080,8443\""),
    )
    .unwrap();
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    git(&["checkout", "-q", "-b", "pr"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "pr"]);
    // Against the working tree: nothing to show. Against main: the ACL change.
    assert_eq!(run(d, &["diff"]).status.code(), Some(0));
    let o = run(d, &["diff", "--base", "main", "--format", "json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(json.to_string().contains("8443"));
    let md = run(d, &["diff", "--base", "main", "--format", "markdown"]);
    assert_eq!(md.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&md.stdout).starts_with("<!-- tsk8s-diff -->"));
    // Bad input: unknown ref.
    let o = run(d, &["diff", "--base", "no-such-ref"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a commit"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn git(d: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(args)
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A repository with the proxy-basic spec and its output committed on `main`, and
/// `origin/main` pointing there (as in a CI checkout of a pull request).
fn repo_with_committed_output(d: &Path) {
    copy_spec("testdata/specs/proxy-basic", d);
    git(d, &["init", "-q", "-b", "main"]);
    git(d, &["config", "user.email", "ci@example.com"]);
    git(d, &["config", "user.name", "ci"]);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "base"]);
    git(d, &["update-ref", "refs/remotes/origin/main", "HEAD"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A pull request cannot fake its own diff comment: `--base origin/main` is the git ref even
/// when the pull request commits a directory `origin/main/` holding a copy of its own output.
#[test]
fn diff_base_is_a_git_ref_never_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    repo_with_committed_output(d);
    git(d, &["checkout", "-q", "-b", "pr"]);
    let spec = std::fs::read_to_string(d.join("tailnet.kdl")).unwrap();
    std::fs::write(
        d.join("tailnet.kdl"),
        spec.replace("dst=\"tag:web:8080\"", "dst=\"*:*\""),
    )
    .unwrap();
    // The wider rule fails the spec's deny test: built anyway, the diff is the point here.
    assert_eq!(run(d, &["build", "--no-tests"]).status.code(), Some(0));
    copy_dir(&d.join("out"), &d.join("origin/main"));
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "pr"]);
    let o = run(
        d,
        &["diff", "--base", "origin/main", "--format", "markdown"],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("*:*"));
    // A directory is compared with only when asked for by name.
    let o = run(d, &["diff", "--base-dir", "origin/main"]);
    assert_eq!(o.status.code(), Some(0));
    // A ref that does not resolve is an error, even when a directory of that name exists.
    let o = run(d, &["diff", "--base", "origin"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a commit"), "{err}");
    assert!(err.contains("--base-dir \"origin\""), "{err}");
    assert!(o.stdout.is_empty());
    for bad in [
        &["diff", "--base-dir", "no-such-dir"][..],
        &["diff", "--base", "-x"],
    ] {
        assert_eq!(run(d, bad).status.code(), Some(2), "{bad:?}");
    }
    assert_eq!(
        run(d, &["diff", "--base", "main", "--base-dir", "out"])
            .status
            .code(),
        Some(2)
    );
}

/// No tree is read through a symbolic link: not the output dir (`diff`, `build`,
/// `build --check`), not a `--base-dir`, not a tree at a git ref. Each names the link.
#[test]
fn no_tree_is_read_through_a_symlink() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    repo_with_committed_output(d);
    std::fs::write(d.join("secret.txt"), "TOP-SECRET-CONTENT\n").unwrap();
    std::fs::create_dir(d.join("secrets")).unwrap();
    std::fs::write(d.join("secrets/k.yaml"), "TOP-SECRET-CONTENT\n").unwrap();
    let check = |args: &[&str], link: &str| {
        let o = run(d, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(link) && err.contains("symbolic link"),
            "{args:?}: {err}"
        );
        let all = format!("{}{err}", String::from_utf8_lossy(&o.stdout));
        assert!(
            !all.contains("TOP-SECRET"),
            "{args:?} printed the target: {all}"
        );
    };
    // A link to a file and a link to a directory, inside the output dir.
    for (link, target) in [
        ("out/clusters/lab/leak.yaml", "../../../secret.txt"),
        ("out/clusters/leak", "../../secrets"),
    ] {
        symlink(target, d.join(link)).unwrap();
        check(&["diff"], link);
        check(&["build"], link);
        check(&["build", "--check"], link);
        std::fs::remove_file(d.join(link)).unwrap();
    }
    // Inside a --base-dir, and the --base-dir itself.
    copy_dir(&d.join("out"), &d.join("base"));
    symlink("../../../secret.txt", d.join("base/clusters/lab/leak.yaml")).unwrap();
    check(
        &["diff", "--base-dir", "base"],
        "base/clusters/lab/leak.yaml",
    );
    symlink("secrets", d.join("base-link")).unwrap();
    check(&["diff", "--base-dir", "base-link"], "base-link");
    // A symbolic link committed in the output dir at the base ref.
    symlink("../../../secret.txt", d.join("out/clusters/lab/leak.yaml")).unwrap();
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "link"]);
    std::fs::remove_file(d.join("out/clusters/lab/leak.yaml")).unwrap();
    check(&["diff", "--base", "HEAD"], "out/clusters/lab/leak.yaml");
    // A FIFO would block a reader: refused, named.
    let o = Command::new("mkfifo")
        .arg(d.join("out/fifo"))
        .output()
        .unwrap();
    assert!(o.status.success());
    for args in [&["diff"][..], &["build", "--check"], &["build"]] {
        let o = run(d, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("out/fifo"));
    }
}

/// `-o` naming a symbolic link is refused; the link and its target stay as they were.
#[test]
fn output_dir_that_is_a_symlink_is_refused() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build", "-o", "real"]).status.code(), Some(0));
    // Make the target stale, so a build would have something to write.
    std::fs::remove_file(d.join("real/policy.hujson")).unwrap();
    let before = tsk8s::cli::output::read_tree(&d.join("real")).unwrap();
    symlink("real", d.join("link")).unwrap();
    symlink("nowhere", d.join("dangling")).unwrap();
    for link in ["link", "dangling"] {
        for args in [
            &["build", "-o", link][..],
            &["build", "--check", "-o", link],
            &["diff", "-o", link],
            &["diff", "--base", "HEAD", "-o", link],
        ] {
            let o = run(d, args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("symbolic link"), "{args:?}: {err}");
            assert!(
                std::fs::symlink_metadata(d.join(link))
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{args:?} replaced the link"
            );
        }
    }
    assert!(!d.join("nowhere").exists());
    assert_eq!(
        tsk8s::cli::output::read_tree(&d.join("real")).unwrap(),
        before
    );
}

fn hidden_siblings(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".out."))
        .collect();
    v.sort();
    v
}

/// Leftovers of a killed build are removed by the next build under the output lock, also
/// when that build finds the tree up to date; `--check` neither locks nor removes anything.
#[test]
fn leftovers_are_removed_by_an_up_to_date_build() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    assert_eq!(hidden_siblings(d), Vec::<String>::new());
    // What a SIGKILLed build leaves: its half-written temp tree, maybe the old tree (where
    // the swap is not one renameat2), and its lock file.
    for leftover in [".out.tsk8s-new-4242", ".out.tsk8s-old-4243"] {
        std::fs::create_dir_all(d.join(leftover).join("clusters")).unwrap();
        std::fs::write(d.join(leftover).join("clusters/x.yaml"), "x").unwrap();
    }
    std::fs::write(d.join(".out.tsk8s-lock"), "").unwrap();
    // Not leftovers: another dir's, and names that only start alike.
    std::fs::create_dir(d.join(".outer.tsk8s-new-1")).unwrap();
    std::fs::create_dir(d.join(".out.tsk8s-new-1x")).unwrap();
    let o = run(d, &["build", "--check"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(hidden_siblings(d).len(), 4, "--check removed something");
    let o = run(d, &["build"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("up to date"), "{err}");
    assert_eq!(hidden_siblings(d), vec![".out.tsk8s-new-1x".to_string()]);
    assert!(d.join(".outer.tsk8s-new-1").exists());
}

/// A build waits for the one holding the output lock, up to `--lock-timeout`, then exits 2
/// having changed nothing; readers do not wait.
#[test]
fn a_held_output_lock_makes_a_build_wait_then_fail() {
    use std::os::fd::AsRawFd as _;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build"]).status.code(), Some(0));
    std::fs::remove_file(d.join("out/policy.hujson")).unwrap();
    std::fs::create_dir(d.join(".out.tsk8s-new-4242")).unwrap();
    let lock = std::fs::File::create(d.join(".out.tsk8s-lock")).unwrap();
    // SAFETY: `lock` is an open file descriptor for the duration of the call.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let o = run(d, &["build", "--lock-timeout", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("another tsk8s build"), "{err}");
    assert!(!d.join("out/policy.hujson").exists());
    assert!(d.join(".out.tsk8s-new-4242").exists());
    // Readers take no lock.
    assert_eq!(run(d, &["build", "--check"]).status.code(), Some(1));
    assert_eq!(run(d, &["diff"]).status.code(), Some(1));
    drop(lock);
    let o = run(d, &["build", "--lock-timeout", "0"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(d.join("out/policy.hujson").exists());
    assert_eq!(hidden_siblings(d), Vec::<String>::new());
}

#[test]
fn lock_writes_keys_0600_and_is_idempotent() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::copy(
        root().join("testdata/specs/proxy-basic/tailnet.kdl"),
        d.join("tailnet.kdl"),
    )
    .unwrap();
    // New keys need somewhere to go.
    let o = run(d, &["lock"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!d.join("tailnet.lock").exists());
    let o = run(d, &["lock", "--keys-dir", "keys"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let key = d.join("keys/lab/hello.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("kubectl -n tailscale create secret generic tsk8s-hello-key"),
        "{err}"
    );
    let private = std::fs::read_to_string(&key).unwrap();
    assert!(!err.contains(private.trim()), "private key printed");
    let lock1 = std::fs::read_to_string(d.join("tailnet.lock")).unwrap();
    assert_eq!(run(d, &["lock"]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(d.join("tailnet.lock")).unwrap(),
        lock1
    );
    // Rotation changes exactly one key.
    assert_eq!(
        run(d, &["lock", "--keys-dir", "keys", "--rotate", "hello"])
            .status
            .code(),
        Some(0)
    );
    let lock2 = std::fs::read_to_string(d.join("tailnet.lock")).unwrap();
    let changed: Vec<(&str, &str)> = lock1
        .lines()
        .zip(lock2.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 1);
    assert!(changed[0].0.starts_with("node \"hello\""));
    assert_eq!(run(d, &["check"]).status.code(), Some(0));
}

#[test]
fn bad_invocations_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(run(tmp.path(), &["build"]).status.code(), Some(2)); // no tailnet.kdl
    assert_eq!(run(tmp.path(), &["no-such-command"]).status.code(), Some(2));
    std::fs::write(tmp.path().join("tailnet.kdl"), [0xff, 0xfe, 0x00]).unwrap();
    let o = run(tmp.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid UTF-8"));
}

#[test]
fn fsync_writes_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    assert_eq!(run(d, &["build", "-o", "plain"]).status.code(), Some(0));
    let synced = run(d, &["build", "--fsync", "-o", "synced"]);
    assert_eq!(
        synced.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    let read = |dir: &str| tsk8s::cli::output::read_tree(&d.join(dir)).unwrap();
    assert_eq!(read("plain"), read("synced"));
    // Again over the existing dir (nothing changed: left alone).
    assert_eq!(
        run(d, &["build", "--fsync", "-o", "synced"]).status.code(),
        Some(0)
    );
    // `--check` writes nothing, so it cannot be combined with `--fsync`.
    assert_eq!(
        run(d, &["build", "--check", "--fsync"]).status.code(),
        Some(2)
    );
}

/// Every file under `d` (relative path → bytes), for "nothing changed" assertions.
fn files_under(d: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(d).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// A failing spec test stops `build` (exit 1, nothing written, located at the `test` node)
/// unless `--no-tests`; `check` fails the same way; `diff` reports it and keeps its exit code.
#[test]
fn failing_tests_stop_build() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_spec("testdata/specs/proxy-basic", d);
    let spec = std::fs::read_to_string(d.join("tailnet.kdl")).unwrap();
    std::fs::write(
        d.join("tailnet.kdl"),
        format!("{spec}test src=\"mallory@thin.example\" accept=\"tag:web:8080\"\n"),
    )
    .unwrap();
    let o = run(d, &["build", "-o", "out"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tailnet.kdl:20:1: error: test failed: mallory@thin.example -> tag:web:8080"),
        "{err}"
    );
    assert!(!d.join("out").exists());
    assert_eq!(run(d, &["check"]).status.code(), Some(1));
    let o = run(d, &["build", "-o", "out", "--no-tests"]);
    assert_eq!(o.status.code(), Some(0));
    let o = run(d, &["diff", "-o", "out"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("1 of 3 test(s) failed"), "{err}");
}

/// `lock` refuses what `build` would refuse before it assigns anything, and a failed `lock`
/// changes no file.
#[test]
fn lock_refuses_what_build_refuses_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src = root().join("testdata/bad/lock/routes-identical/tailnet.kdl");
    std::fs::copy(&src, d.join("tailnet.kdl")).unwrap();
    let before = files_under(d);
    let o = run(d, &["lock", "--keys-dir", "keys"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("same route twice"), "{err}");
    assert_eq!(files_under(d), before, "a refused lock wrote files");
    // Without a lock, `check` says so in one line.
    let o = run(d, &["check"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no lock yet"), "{err}");
}

/// A spec path that does not exist says how to point at one.
#[test]
fn missing_spec_names_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(tmp.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(err.contains("run in the spec's directory"), "{err}");
}

/// A bad combination of publish, network and sidecar settings is bad input for every command
/// that reads the spec: exit 2, the same located message, nothing written.
#[test]
fn bad_deployment_combinations_exit_2_from_check_lock_and_build() {
    for case in [
        "lb-one-host-several-nodes",
        "router-service-cidr-no-pod-cidr",
        "sidecar-replicas-3",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::copy(
            root().join(format!("testdata/bad/spec/{case}/tailnet.kdl")),
            d.join("tailnet.kdl"),
        )
        .unwrap();
        let mut first: Option<String> = None;
        for args in [
            &["check"][..],
            &["lock", "--keys-dir", "keys"][..],
            &["build"][..],
        ] {
            let o = run(d, args);
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert_eq!(o.status.code(), Some(2), "{case}: tsk8s {args:?}: {err}");
            assert!(
                err.contains("tailnet.kdl:"),
                "{case}: {args:?}: not located: {err}"
            );
            match &first {
                None => first = Some(err),
                Some(f) => assert_eq!(&err, f, "{case}: {args:?} says something else"),
            }
        }
        for written in ["tailnet.lock", "keys", "out"] {
            assert!(!d.join(written).exists(), "{case}: {written} was written");
        }
    }
}
