//! Access review from the command line: `tsk8s who-can-reach`, `tsk8s can`, and `tsk8s test`
//! checking the emitted network (testdata/access: a device and a cluster on the Tailscale
//! image, a host alias no subnet router routes).

use std::path::PathBuf;
use std::process::{Command, Output};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/access")
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsk8s"))
        .args(args)
        .current_dir(dir())
        .output()
        .unwrap()
}

/// `tsk8s test` on `spec` (an edit of testdata/access's) with testdata/access's lock, in a
/// temporary dir.
fn test_edited(spec: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tailnet.kdl"), spec).unwrap();
    std::fs::copy(dir().join("tailnet.lock"), tmp.path().join("tailnet.lock")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tsk8s"))
        .args(["test"])
        .current_dir(tmp.path())
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn test_fails_what_the_network_cannot_carry() {
    let o = run(&["test"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        out,
        "carol@acme.example -> tag:staging-web:80: allowed by policy, but carol-laptop has no peer in cluster staging: it runs the Tailscale image\n\
         tag:ci -> db:5432: allowed by policy, but no subnet router routes 10.50.0.5 (and no node has that address)\n"
    );
    assert!(err.ends_with("tailnet.kdl: test(s) failed\n"), "{err}");
    // The policy alone passes them all (Tailscale's view).
    let policy = std::fs::read_to_string(dir().join("tailnet.kdl")).unwrap();
    let policy_only = policy
        .lines()
        .map(|l| {
            if l.starts_with("test ") && !l.contains("check=") {
                format!("{l} check=\"policy\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let o = test_edited(&policy_only);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(err.contains("5 test(s) passed"), "{err}");
}

#[test]
fn check_must_be_policy() {
    let spec = std::fs::read_to_string(dir().join("tailnet.kdl"))
        .unwrap()
        .replace("check=\"policy\"", "check=\"network\"");
    let o = test_edited(&spec);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("tailnet.kdl:"), "{err}");
    assert!(
        err.contains("test check \"network\" must be \"policy\""),
        "{err}"
    );
}

#[test]
fn check_policy_is_not_written_to_the_policy_file() {
    let tmp = tempfile::tempdir().unwrap();
    // The spec's data-plane tests fail on purpose (see `test_fails_what_the_network_cannot_carry`), and a
    // failing test stops `build`, each failure located at its own `test` node ...
    let o = run(&["build", "-o", tmp.path().join("out").to_str().unwrap()]);
    let err = text(&o).1;
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tailnet.kdl:41:1: error: test failed: carol@acme.example"),
        "{err}"
    );
    assert!(
        err.contains("tailnet.kdl:43:1: error: test failed: tag:ci -> db:5432"),
        "{err}"
    );
    assert!(!tmp.path().join("out").exists());
    // ... so build past them.
    let o = run(&[
        "build",
        "--no-tests",
        "-o",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let policy = std::fs::read_to_string(tmp.path().join("out/policy.hujson")).unwrap();
    assert!(!policy.contains("check"), "{policy}");
    // The topology the policy is compiled against is in the tree, as `policy filter` reads it.
    let o = run(&[
        "policy",
        "filter",
        tmp.path().join("out/policy.hujson").to_str().unwrap(),
        "--nodes",
        tmp.path().join("out/topology.json").to_str().unwrap(),
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(out.contains("\"shop\""), "{out}");
}

#[test]
fn can_answers_with_rule_and_path() {
    let o = run(&["can", "carol@acme.example", "shop:8080"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("rule: acls[0] (src group:dev -> dst tag:web:8080)"),
        "{out}"
    );
    assert!(
        out.contains("path: WireGuard peer shop (AllowedIPs 100.64.0.4/32)"),
        "{out}"
    );

    // Allowed by the policy, but no peer carries it.
    let o = run(&["can", "carol-laptop", "staging-shop:80"]);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("carol-laptop has no peer in cluster staging"),
        "{out}"
    );

    // Denied by the policy.
    let o = run(&["can", "carol-laptop", "shop:22"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).0.starts_with("deny:"));

    // A user without a device: the policy alone answers.
    let o = run(&["can", "bob@acme.example", "shop:8080", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(v["policy_only"], true);
    assert_eq!(v["allowed"], false);

    // Through a subnet router, as JSON.
    let o = run(&["can", "ci-runner", "10.96.0.10:443", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{v}");
    assert_eq!(v["answers"][0]["carried"], true);
    assert_eq!(
        v["answers"][0]["path"],
        "WireGuard peer prod-services (AllowedIPs 10.96.0.0/12)"
    );
}

#[test]
fn who_can_reach_lists_sources() {
    let o = run(&["who-can-reach", "shop:8080"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        out.contains("device carol-laptop (carol@acme.example): allow"),
        "{out}"
    );
    assert!(!out.contains("alice-laptop"), "{out}");

    let o = run(&["who-can-reach", "db:5432", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(1), "{v}");
    assert_eq!(v["sources"][0]["source"], "ci-runner");
    assert_eq!(v["sources"][0]["carried"], false);

    // Nobody may reach the router's own address on 22.
    let o = run(&["who-can-reach", "prod-services:22"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    for args in [
        &["can", "nobody", "shop:8080"][..],
        &["can", "carol-laptop", "nowhere:80"],
        &["can", "carol-laptop", "shop"],
        &["can", "carol-laptop", "shop:http"],
        &["who-can-reach", "nowhere"],
        &["who-can-reach", "shop:8080", "--spec", "missing.kdl"],
        &["who-can-reach", "shop:8080", "--proto", "sctp"],
    ] {
        let o = run(args);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            !err.is_empty() && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
    let err = text(&run(&["can", "nobody", "shop:8080"])).1;
    assert_eq!(
        err,
        "error: unknown source \"nobody\": not a user, device or node of the spec\n"
    );
}
