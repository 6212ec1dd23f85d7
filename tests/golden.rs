//! Golden tests of the compiler: every spec under testdata/specs (full output, byte for byte),
//! every error class under testdata/errors (rendered diagnostics), determinism, the diff that
//! adding one exposure makes, and YAML quoting.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tsk8s::build::{self, Input};
use tsk8s::emit::Tree;
use tsk8s::lockfile::{self, LockOptions};

use tsk8s_test_support::repo_root as root;

fn dirs(under: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(under))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("tailnet.kdl").exists())
        .collect();
    v.sort();
    v
}

/// Deterministic keys for in-memory locks: private key n is [n; 32].
use tsk8s_test_support::test_keygen;

fn build_dir(dir: &Path) -> Result<Tree, build::Failure> {
    let spec = std::fs::read_to_string(dir.join("tailnet.kdl")).unwrap();
    let lock = std::fs::read_to_string(dir.join("tailnet.lock")).ok();
    // The committed SOPS / SealedSecret sources beside the spec, read as the CLI reads them.
    let sources = tsk8s::cli::secrets::read_sources(dir, "tailnet.kdl", &spec);
    common::build_with(&spec, lock.as_deref(), sources)
}

#[test]
fn specs_build_to_pinned_output() {
    for dir in dirs("testdata/specs") {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let tree = build_dir(&dir).unwrap_or_else(|f| panic!("{name}: build failed:\n{}", f.text));
        let again = build_dir(&dir).unwrap();
        assert_eq!(tree, again, "{name}: two builds differ");
        insta::assert_snapshot!(format!("spec__{name}"), common::render_tree(&tree, ""));
    }
}

#[test]
fn example_builds_and_is_deterministic() {
    let dir = root().join("examples");
    let a = build_dir(&dir).unwrap_or_else(|f| panic!("example: {}", f.text));
    let b = build_dir(&dir).unwrap();
    assert_eq!(a, b);
    for required in [
        "policy.hujson",
        "clusters/prod/kustomization.yaml",
        "devices/alice-laptop.conf",
    ] {
        assert!(a.contains_key(required), "missing {required}");
    }
}

/// Front end, then a lock for the spec made in memory (deterministic keys).
fn lock_for(file: &str, text: &str) -> Result<String, build::Failure> {
    let front = build::front(file, text)?;
    let upd = lockfile::update(
        &front.tailnet,
        &lockfile::Lock::default(),
        &LockOptions::default(),
        &mut test_keygen(),
    )
    .unwrap();
    Ok(lockfile::render(&upd.lock))
}

/// Front end, then an in-memory lock, then build: the first failure.
fn diagnose(file: &str, text: &str) -> String {
    let lock = match lock_for(file, text) {
        Ok(l) => l,
        Err(f) => return f.text,
    };
    match build::build(&Input {
        spec_file: file,
        spec: text,
        lock_file: "tailnet.lock",
        lock: Some(&lock),
        sources: BTreeMap::new(),
    }) {
        Ok(_) => "(no error)".to_string(),
        Err(f) => f.text,
    }
}

#[test]
fn error_classes_have_pinned_diagnostics() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("testdata/errors"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
        .collect();
    files.sort();
    assert!(files.len() >= 15);
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let out = diagnose(&format!("{name}.kdl"), &text);
        assert_ne!(out, "(no error)", "{name} should fail");
        insta::assert_snapshot!(format!("error__{name}"), out);
    }
}

#[test]
fn three_errors_exit_2_and_leave_output_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_tsk8s");
    // A good build first.
    let good = root().join("testdata/specs/proxy-basic");
    std::fs::copy(good.join("tailnet.kdl"), tmp.path().join("tailnet.kdl")).unwrap();
    std::fs::copy(good.join("tailnet.lock"), tmp.path().join("tailnet.lock")).unwrap();
    let out = tmp.path().join("out");
    let st = Command::new(bin)
        .arg("build")
        .arg(tmp.path().join("tailnet.kdl"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0));
    let before = tsk8s::cli::output::read_tree(&out).unwrap();
    // Now the bad spec.
    std::fs::copy(
        root().join("testdata/errors/three-errors.kdl"),
        tmp.path().join("tailnet.kdl"),
    )
    .unwrap();
    let o = Command::new(bin)
        .arg("build")
        .arg(tmp.path().join("tailnet.kdl"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("tailnet.kdl:4:14: error: invalid CIDR"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tailnet.kdl:5:47: error: unknown tag \"tag:wbe\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("tailnet.kdl:6:11: error: exposure \"api\" declared twice"),
        "{stderr}"
    );
    assert!(stderr.contains("3 errors in"), "{stderr}");
    assert_eq!(
        tsk8s::cli::output::read_tree(&out).unwrap(),
        before,
        "output dir changed"
    );
}

#[test]
fn adding_one_exposure_changes_only_what_it_touches() {
    let base_spec =
        std::fs::read_to_string(root().join("testdata/specs/proxy-basic/tailnet.kdl")).unwrap();
    let base_lock =
        std::fs::read_to_string(root().join("testdata/specs/proxy-basic/tailnet.lock")).unwrap();
    let new_spec = base_spec.replace(
        "    proxy \"hello\" service=\"default/hello\" port=8080 tag=\"web\"\n",
        "    proxy \"hello\" service=\"default/hello\" port=8080 tag=\"web\"\n    proxy \"metrics\" service=\"monitoring/prometheus\" port=9090 tag=\"web\"\n",
    );
    assert_ne!(base_spec, new_spec);
    let front = build::front("tailnet.kdl", &new_spec).unwrap();
    let old_lock = lockfile::parse("tailnet.lock", &base_lock).unwrap();
    let upd = lockfile::update(
        &front.tailnet,
        &old_lock,
        &LockOptions::default(),
        &mut test_keygen(),
    )
    .unwrap();
    let new_lock = lockfile::render(&upd.lock);
    let lock_diff = similar::TextDiff::from_lines(&base_lock, &new_lock)
        .unified_diff()
        .header("a/tailnet.lock", "b/tailnet.lock")
        .to_string();
    let input = |spec: &'static str, lock: &'static str| Input {
        spec_file: "tailnet.kdl",
        spec,
        lock_file: "tailnet.lock",
        lock: Some(lock),
        sources: BTreeMap::new(),
    };
    let old = build::build(&input(
        Box::leak(base_spec.into_boxed_str()),
        Box::leak(base_lock.into_boxed_str()),
    ))
    .unwrap();
    let new = build::build(&input(
        Box::leak(new_spec.into_boxed_str()),
        Box::leak(new_lock.into_boxed_str()),
    ))
    .unwrap();
    let changed: Vec<&String> = new
        .keys()
        .chain(old.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        changed,
        vec![
            ".tsk8s-manifest",
            "clusters/lab/kustomization.yaml",
            "clusters/lab/mesh-0.yaml",
            "clusters/lab/metrics.yaml",
            "devices/ana-laptop.conf",
            "devices/ana-laptop.hosts",
            "topology.json",
        ]
    );
    let report = tsk8s_diff::diff_trees(&old, &new).unwrap();
    let text = tsk8s_diff::render_text(&report, false);
    insta::assert_snapshot!("add_one_exposure", format!("{lock_diff}\n{text}"));
}

#[test]
fn yaml_1_1_ambiguous_strings_are_quoted() {
    let tree = build_dir(&root().join("testdata/specs/yaml-ambiguous")).unwrap();
    let ns = String::from_utf8(tree["clusters/yes/namespace.yaml"].clone()).unwrap();
    assert!(
        ns.contains("name: 'on'") || ns.contains("name: \"on\""),
        "{ns}"
    );
    let comp =
        String::from_utf8(tree["clusters/yes/components/y/kustomization.yaml"].clone()).unwrap();
    assert!(
        comp.contains("namespace: 'yes'") || comp.contains("namespace: \"yes\""),
        "{comp}"
    );
    let node = String::from_utf8(tree["clusters/yes/no.yaml"].clone()).unwrap();
    assert!(node.contains("name: tsk8s-no"), "{node}");
    assert!(
        node.contains("'0755'") || node.contains("\"0755\""),
        "{node}"
    );
}

/// Every policy tsk8s generates (examples and golden specs) validates against the published
/// JSON Schema of the policy file.
#[test]
fn generated_policies_match_the_json_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schema/policy.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut dirs = dirs("testdata/specs");
    dirs.push(root().join("examples"));
    dirs.extend(self::dirs("examples"));
    let mut checked = 0;
    for dir in dirs {
        if !dir.join("tailnet.lock").exists() {
            continue;
        }
        let Ok(tree) = build_dir(&dir) else { continue };
        let text = String::from_utf8(tree["policy.hujson"].clone()).unwrap();
        let value = tsk8s_policy::hujson::parse(&text).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", dir.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} policies checked");
}

/// `build::load` with an in-memory lock (deterministic keys).
fn load_with_lock(text: &str) -> Result<build::Loaded, build::Failure> {
    let lock = lock_for("tailnet.kdl", text)?;
    build::load(&Input {
        spec_file: "tailnet.kdl",
        spec: text,
        lock_file: "tailnet.lock",
        lock: Some(&lock),
        sources: BTreeMap::new(),
    })
}

const VERBATIM_SPEC: &str = r##"tailnet "corp" domain="corp.example"
user "alice@corp.example"
tag "r" owner="alice@corp.example"
cluster "prod" image="ghcr.io/tailscale/tailscale:v1.90.6" runtime="tailscale" {
    subnet-router "rt" route="10.0.0.0/8" tag="r"
}
acl {
    accept src="*" { dst "tag:r:80,443" "10.1.2.3:22"; }
    accept src="alice@corp.example" dst="tag:r:1000-2000" proto="udp"
}
grant src="alice@corp.example" dst="tag:r" { ip "tcp:443" "53" "icmp:*"; }
verbatim "autoApprovers" #"{"routes": {"10.0.0.0/8": ["tag:k8s"], "192.168.0.0/16": ["tag:r"]}, "exitNode": ["tag:r"]}"#
verbatim "postures" #"{"posture:latest": ["node:tsVersion >= '1.60'"]}"#
verbatim "nodeAttrs" #"[{"target": ["tag:r"], "attr": ["funnel"]}]"#
"##;

/// The policy a build validates and compiles is exactly what its file says: the typed policy
/// `lower::policy` builds (no text round trip) equals the parse of the file it writes, for every
/// golden spec, the example, and a spec with verbatim sections (merged `autoApprovers`).
#[test]
fn typed_policy_is_what_its_file_says() {
    let mut checked = 0;
    let mut dirs = dirs("testdata/specs");
    dirs.push(root().join("examples"));
    for dir in dirs {
        let spec = std::fs::read_to_string(dir.join("tailnet.kdl")).unwrap();
        let Ok(l) = load_with_lock(&spec) else {
            continue;
        };
        let parsed = tsk8s_policy::policy::Policy::parse(&l.policy_text).unwrap();
        assert_eq!(l.policy, parsed, "{}", dir.display());
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} policies checked");
    let l = load_with_lock(VERBATIM_SPEC).unwrap_or_else(|f| panic!("{}", f.text));
    let parsed = tsk8s_policy::policy::Policy::parse(&l.policy_text).unwrap();
    assert_eq!(l.policy, parsed, "{}", l.policy_text);
    assert!(
        l.policy_text.contains("\"tag:r:80,443\""),
        "{}",
        l.policy_text
    );
}

/// A generated policy Tailscale would refuse is reported at the spec node the problem comes
/// from: here a `verbatim` section naming a tag nobody declared.
#[test]
fn policy_problems_are_located_at_their_spec_node() {
    let spec = VERBATIM_SPEC.replace(r#"[{"target": ["tag:r"]"#, r#"[{"target": ["tag:nobody"]"#);
    let Err(f) = load_with_lock(&spec) else {
        panic!("a verbatim nodeAttrs on an unknown tag must fail");
    };
    assert!(
        f.text.contains("tailnet.kdl:14:")
            && f.text
                .contains("the generated policy is invalid: tag not found: \"tag:nobody\""),
        "{}",
        f.text
    );
}

/// `lock`'s check of its new lock (`build::check_lock`, which compiles only where two nodes'
/// prefixes meet) refuses and warns exactly as a compile without tests and secret sources
/// does: on every golden spec, and on routes that are the same (an error) or nested (a
/// warning) in two clusters.
#[test]
fn lock_check_agrees_with_a_compile() {
    let identical =
        std::fs::read_to_string(root().join("testdata/bad/lock/routes-identical/tailnet.kdl"))
            .unwrap();
    let nested = identical.replacen(
        "subnet-router \"stage-services\" route=\"10.96.0.0/12\"",
        "subnet-router \"stage-services\" route=\"10.96.0.0/16\"",
        1,
    );
    let apart = identical.replacen(
        "subnet-router \"stage-services\" route=\"10.96.0.0/12\"",
        "subnet-router \"stage-services\" route=\"10.112.0.0/16\"",
        1,
    );
    assert_ne!(nested, identical);
    let mut cases: Vec<(String, String)> = dirs("testdata/specs")
        .into_iter()
        .map(|d| {
            let name = d.display().to_string();
            (
                name,
                std::fs::read_to_string(d.join("tailnet.kdl")).unwrap(),
            )
        })
        .collect();
    cases.push(("identical".into(), identical));
    cases.push(("nested".into(), nested));
    cases.push(("apart".into(), apart));
    let mut outcomes = BTreeMap::new();
    for (name, text) in &cases {
        let lock = lock_for("tailnet.kdl", text).unwrap();
        let input = Input {
            spec_file: "tailnet.kdl",
            spec: text,
            lock_file: "tailnet.lock",
            lock: Some(&lock),
            sources: Default::default(),
        };
        let checks = build::Checks {
            tests: false,
            sources: false,
        };
        let full = build::load(&input).and_then(|l| {
            build::compile(&input, l, checks, &mut tsk8s::emit::Discard).map(|c| c.warnings)
        });
        let quick = build::load(&input).and_then(|l| build::check_lock(&input, l));
        assert_eq!(quick, full, "{name}");
        outcomes.insert(name.as_str(), full);
    }
    assert!(
        outcomes["identical"]
            .as_ref()
            .is_err_and(|f| f.text.contains("same route twice")),
        "{:?}",
        outcomes["identical"]
    );
    assert!(
        outcomes["nested"]
            .as_ref()
            .is_ok_and(|w| w.contains("nested route")),
        "{:?}",
        outcomes["nested"]
    );
    assert_eq!(outcomes["apart"], Ok(String::new()));
}
