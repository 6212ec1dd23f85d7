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
    assert_eq!(
        run(d, &["diff", "--base", "no-such-ref"]).status.code(),
        Some(2)
    );
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
