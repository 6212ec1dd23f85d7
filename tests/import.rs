//! `tsk8s import`: every example's and golden spec's `policy.hujson` round-trips (build →
//! import → build gives the same policy, compared as JSON values), hand-written policies too,
//! and what the spec cannot express is named (exit 2).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use tsk8s::import::{ImportError, ImportOptions, import};

use tsk8s_test_support::repo_root as root;

fn policy_of(spec: &str, lock: Option<&str>) -> Result<String, String> {
    let tree = common::build_with(spec, lock, BTreeMap::new()).map_err(|f| f.text)?;
    let bytes = tree.get("policy.hujson").ok_or("no policy.hujson")?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn value(policy: &str) -> Value {
    tsk8s_policy::hujson::parse(policy).unwrap()
}

/// Import, then build the imported spec: its policy.
fn round_trip(policy: &str) -> (String, Value) {
    let imported = import(policy, &ImportOptions::default())
        .unwrap_or_else(|e| panic!("import failed: {e}\n{policy}"));
    assert!(
        imported.warnings.is_empty(),
        "{:?}\n{}",
        imported.warnings,
        imported.spec
    );
    let rebuilt = policy_of(&imported.spec, None)
        .unwrap_or_else(|e| panic!("imported spec does not build:\n{e}\n{}", imported.spec));
    (imported.spec, value(&rebuilt))
}

fn spec_dirs() -> Vec<PathBuf> {
    tsk8s_test_support::spec_dirs(&root())
}

/// Build a spec dir with the real binary (which also reads the secret sources beside the spec).
fn built_policy(dir: &std::path::Path, tmp: &std::path::Path) -> Result<String, String> {
    let out = tmp.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_tsk8s"))
        .arg("build")
        .arg(dir.join("tailnet.kdl"))
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    std::fs::read_to_string(out.join("policy.hujson")).map_err(|e| e.to_string())
}

#[test]
fn every_example_and_golden_policy_round_trips() {
    let mut done = 0;
    for dir in spec_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let built = built_policy(&dir, tmp.path());
        let Ok(policy) = built else {
            // Error cases and specs whose build needs sources are not policies to import.
            assert!(
                !dir.starts_with(root().join("examples")),
                "{}: the example does not build: {}",
                dir.display(),
                built.err().unwrap_or_default()
            );
            continue;
        };
        let (imported, rebuilt) = round_trip(&policy);
        assert_eq!(
            value(&policy),
            rebuilt,
            "{}: the policy changed after import:\n{imported}",
            dir.display()
        );
        // A second round is a fixed point of the spec text too.
        let again = import(&policy, &ImportOptions::default()).unwrap();
        assert_eq!(again.spec, imported);
        done += 1;
    }
    assert!(done >= 4, "only {done} specs round-tripped");
}

#[test]
fn examples_import_snapshot() {
    let spec = std::fs::read_to_string(root().join("examples/tailnet.kdl")).unwrap();
    let lock = std::fs::read_to_string(root().join("examples/tailnet.lock")).ok();
    let policy = policy_of(&spec, lock.as_deref()).unwrap();
    let imported = import(
        &policy,
        &ImportOptions {
            name: "acme".into(),
            domain: "acme.example".into(),
            source: "policy.hujson".into(),
        },
    )
    .unwrap();
    insta::assert_snapshot!("import_examples", imported.spec);
}

const HAND_WRITTEN: &[(&str, &str)] = &[
    (
        "everything",
        r##"// A hand-written policy with comments and trailing commas.
{
  "groups": {
    "group:eng": ["ann@corp.example", "ben@corp.example",],
    "group:empty": [],
  },
  "tagOwners": {
    "tag:prod": ["group:eng"],
    "tag:ci": ["autogroup:admin", "ben@corp.example"],
    "tag:free": [],
  },
  "hosts": {
    "db": "10.1.2.3",
    "lan": "192.168.0.0/16",
    "v6": "2001:db8::/32",
  },
  "acls": [
    {"action": "accept", "src": ["group:eng", "ann@corp.example"], "dst": ["tag:prod:22,80,443", "db:5432"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["lan:*"], "proto": "tcp"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["*"], "dst": ["[2001:db8::1]:53"], "proto": "udp"},
  ],
  "grants": [
    {"src": ["group:eng"], "dst": ["tag:prod"], "ip": ["tcp:8080", "icmp:*"]},
    {"src": ["ann@corp.example"], "dst": ["tag:prod"], "app": {"corp.example/cap/admin": [{"level": "full", "paths": ["/a", "/b"]}, {"quote": "say \"hi\"#"}]}},
    {"src": ["group:eng"], "dst": ["10.0.0.0/8"], "ip": ["*"], "via": ["tag:prod"]},
  ],
  "ssh": [
    {"action": "check", "src": ["group:eng"], "dst": ["tag:prod"], "users": ["root", "autogroup:nonroot"], "checkPeriod": "12h"},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
  ],
  "nodeAttrs": [
    {"target": ["autogroup:member"], "attr": ["funnel"]},
  ],
  "postures": {
    "posture:latest": ["node:tsReleaseTrack == 'stable'"],
  },
  "autoApprovers": {
    "routes": {"10.0.0.0/8": ["tag:prod"]},
    "exitNode": ["tag:ci"],
  },
  "sshTests": [
    {"src": "ann@corp.example", "dst": ["tag:prod"], "accept": ["root"]},
  ],
  "randomizeClientPort": true,
  "tests": [
    {"src": "ann@corp.example", "accept": ["tag:prod:22", "db:5432"], "deny": ["lan:22"]},
    {"src": "tag:ci", "proto": "tcp", "accept": ["192.168.1.1:443"]},
  ],
}
"##,
    ),
    ("deny-all", r#"{"acls": []}"#),
    (
        "grants-only",
        r#"{"grants": [{"src": ["*"], "dst": ["*"], "ip": ["*"]}]}"#,
    ),
];

#[test]
fn hand_written_policies_round_trip() {
    for (name, policy) in HAND_WRITTEN {
        let (spec, rebuilt) = round_trip(policy);
        let mut want = value(policy);
        // The build always writes `acls` (an empty list denies all).
        if let Value::Object(m) = &mut want {
            m.entry("acls").or_insert_with(|| Value::Array(vec![]));
        }
        assert_eq!(want, rebuilt, "{name}:\n{spec}");
    }
}

#[test]
fn hand_written_import_snapshot() {
    let imported = import(HAND_WRITTEN[0].1, &ImportOptions::default()).unwrap();
    insta::assert_snapshot!("import_hand_written", imported.spec);
}

#[test]
fn no_acls_and_no_grants_is_allow_all() {
    // Tailscale's default policy allows everything; the spec writes that explicitly.
    let imported = import(
        r#"{"groups": {"group:a": ["a@x.example"]}}"#,
        &ImportOptions::default(),
    )
    .unwrap();
    assert!(
        imported.spec.contains("accept src=\"*\" dst=\"*:*\""),
        "{}",
        imported.spec
    );
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
}

#[test]
fn inexpressible_fields_are_named() {
    let policy = r#"{
      "tagOwners": {"tag:a": []},
      "acls": [
        {"action": "accept", "src": ["*"], "dst": ["tag:a:80"]},
        {"action": "accept", "src": ["*"], "dst": ["tag:a:443"], "srcPosture": ["posture:x"]},
      ],
      "postures": {"posture:x": ["node:os == 'linux'"]},
      "ssh": [{"action": "accept", "src": ["*"], "dst": ["tag:a"], "users": ["root"], "acceptEnv": ["GIT_*"]}],
    }"#;
    match import(policy, &ImportOptions::default()) {
        Err(ImportError::Unsupported(list)) => {
            assert_eq!(list, ["acls[1].srcPosture", "ssh[0].acceptEnv"]);
        }
        Err(ImportError::Invalid(m)) => {
            // The engine may itself refuse fields it does not know; then the message says so.
            assert!(m.contains("srcPosture") || m.contains("acceptEnv"), "{m}");
        }
        Ok(i) => panic!("must fail:\n{}", i.spec),
    }
}

#[test]
fn invalid_input_is_an_error() {
    for bad in [
        "",
        "{",
        "[]",
        r#"{"acls": [{"action": "deny"}]}"#,
        "{\"acls\": 1}",
    ] {
        assert!(
            import(bad, &ImportOptions::default()).is_err(),
            "{bad:?} must be refused"
        );
    }
}

#[test]
fn verbatim_cannot_replace_generated_sections() {
    let spec = "tailnet \"a\" domain=\"a.example\"\nverbatim \"acls\" #\"[]\"#\nverbatim \"nodeAttrs\" \"not json\"\n";
    let e = policy_of(spec, None).unwrap_err();
    assert!(e.contains("`acls` is generated from the spec"), "{e}");
    assert!(e.contains("invalid JSON in verbatim section"), "{e}");
}

#[test]
fn verbatim_auto_approvers_merge_with_subnet_routers() {
    let spec = r##"tailnet "a" domain="a.example"
tag "r"
tag "x"
cluster "c" image="ghcr.io/tailscale/tailscale:v1.90.6" runtime="tailscale" {
    subnet-router "rt" route="10.0.0.0/8" tag="r"
}
acl { accept src="*" dst="*:*"; }
verbatim "autoApprovers" #"{"routes": {"10.0.0.0/8": ["tag:x"], "192.168.0.0/16": ["tag:x"]}, "exitNode": ["tag:x"]}"#
"##;
    let p = value(&policy_of(spec, None).unwrap());
    assert_eq!(
        p["autoApprovers"],
        serde_json::json!({
            "routes": {"10.0.0.0/8": ["tag:r", "tag:x"], "192.168.0.0/16": ["tag:x"]},
            "exitNode": ["tag:x"],
        })
    );
}

#[test]
fn cli_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_tsk8s");
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("policy.hujson");
    std::fs::write(&good, HAND_WRITTEN[0].1).unwrap();
    let out = tmp.path().join("tailnet.kdl");
    let o = Command::new(bin)
        .args(["import"])
        .arg(&good)
        .arg("-o")
        .arg(&out)
        .args(["--name", "corp", "--domain", "corp.example"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("tailnet \"corp\" domain=\"corp.example\""));

    let bad = tmp.path().join("bad.hujson");
    std::fs::write(
        &bad,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"], "srcPosture": ["posture:x"]}], "postures": {"posture:x": ["node:os == 'linux'"]}}"#,
    )
    .unwrap();
    let o = Command::new(bin).arg("import").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("srcPosture"), "{err}");

    let o = Command::new(bin)
        .arg("import")
        .arg(tmp.path().join("missing.hujson"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn kdl_strings_round_trip() {
    use tsk8s::import::kdl_str;
    let cases = [
        "plain",
        "",
        "with \"quotes\"",
        "back\\slash",
        "\"#",
        "a\"##b\"#",
        "line\nbreak\ttab\r",
        "bom\u{feff}",
        "bidi\u{202e}mark\u{2066}",
        "sep\u{2028}\u{2029}\u{85}",
        "nul\u{0}",
        "ünïcödé ✓",
    ];
    for s in cases {
        let text = format!("node {}\n", kdl_str(s));
        let doc =
            kdl::KdlDocument::parse_v2(&text).unwrap_or_else(|e| panic!("{s:?} → {text:?}: {e:?}"));
        let got = doc.nodes()[0].entries()[0].value().as_string().unwrap();
        assert_eq!(got, s, "{text:?}");
    }
}
