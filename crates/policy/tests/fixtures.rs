//! Fixtures under testdata/policy: valid policies (schema, filters golden, tests pass), invalid
//! policies (each with its pinned message), failing tests (report golden).

use std::path::{Path, PathBuf};

use tsk8s_policy::acltest::run_tests;
use tsk8s_policy::cli::{policy_check, policy_filter};
use tsk8s_policy::compile::compile_all;
use tsk8s_policy::hujson;
use tsk8s_policy::policy::Policy;
use tsk8s_policy::topology::Topology;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/policy")
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "hujson"))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {dir}");
    v
}

fn topology_text() -> String {
    std::fs::read_to_string(root().join("topology.json")).unwrap()
}

fn name(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().to_string()
}

#[test]
fn valid_policies_compile_and_pass_their_tests() {
    let topo = Topology::parse(&topology_text()).unwrap();
    for f in files("valid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let policy = Policy::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let report = run_tests(&policy, &topo);
        assert!(report.passed(), "{}: {:#?}", f.display(), report.failures);
        let filters = compile_all(&policy, &topo);
        insta::with_settings!({snapshot_suffix => name(&f), prepend_module_to_snapshot => false}, {
            insta::assert_yaml_snapshot!("filters", filters);
        });
        let out = policy_check(&text, Some(&topology_text()));
        assert_eq!(out.code, 0, "{}: {}", f.display(), out.stderr);
    }
}

#[test]
fn valid_policies_match_the_schema() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("../../schema/policy.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for f in files("valid") {
        let v = hujson::parse(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", f.display());
    }
    // and the schema rejects what it should
    for bad in [
        r#"{"rules": []}"#,
        r#"{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}"#,
        r#"{"tagOwners": {"tag:1x": []}}"#,
        r#"{"grants": [{"src": ["*"], "dst": ["*"]}]}"#,
    ] {
        let v = hujson::parse(bad).unwrap();
        assert!(!validator.is_valid(&v), "schema accepted {bad}");
    }
}

#[test]
fn invalid_policies_fail_with_their_pinned_message() {
    for f in files("invalid") {
        let text = std::fs::read_to_string(&f).unwrap();
        let want = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `// expect: MESSAGE`", f.display()));
        let got = Policy::parse(&text)
            .err()
            .unwrap_or_else(|| panic!("{}: parsed but should fail with {want}", f.display()));
        assert_eq!(got.to_string(), want, "{}", f.display());
        let out = policy_check(&text, None);
        assert_eq!(out.code, 2, "{}", f.display());
        assert_eq!(out.stderr, format!("{want}\n"));
        assert_eq!(policy_filter(&text, &topology_text()).code, 2);
    }
}

#[test]
fn failing_tests_report() {
    let topo_text = topology_text();
    let topo = Topology::parse(&topo_text).unwrap();
    for f in files("tests-fail") {
        let text = std::fs::read_to_string(&f).unwrap();
        let policy = Policy::parse(&text).unwrap();
        let report = run_tests(&policy, &topo);
        assert_eq!(report.verdict(), Some("test(s) failed"));
        insta::with_settings!({snapshot_suffix => name(&f), prepend_module_to_snapshot => false}, {
            insta::assert_yaml_snapshot!("report", report.failures);
        });
        let out = policy_check(&text, Some(&topo_text));
        assert_eq!(out.code, 1);
        assert!(out.stderr.starts_with("test(s) failed\n"));
        // malformed entries fail even without a topology
        assert_eq!(policy_check(&text, None).code, 1);
    }
}
