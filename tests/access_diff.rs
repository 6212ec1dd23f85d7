//! Goldens of `tsk8s diff`'s "Access changes" section (text, markdown, json) on four edits of
//! testdata/diff-access: one new accept rule, a removed group member, a new exposure, and a
//! 500-rule change that goes past the markdown budget. Trees are built in memory, as `tsk8s
//! diff` builds them; the lock is updated as `tsk8s lock` would (deterministic keys).

use std::collections::BTreeMap;
use std::path::PathBuf;

use tsk8s::build::{self, Input};
use tsk8s::emit::Tree;
use tsk8s::lockfile::{self, LockOptions};
use tsk8s_diff::{Options, Report, TestResults};

fn base_spec() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/diff-access/tailnet.kdl");
    std::fs::read_to_string(p).unwrap()
}

/// Deterministic keys: private key n is [n; 32].
use tsk8s_test_support::test_keygen as keygen;

/// The new lock for `spec` from `old` (as `tsk8s lock` computes it).
fn lock_for(
    spec: &str,
    old: &lockfile::Lock,
    keys: &mut dyn FnMut() -> (String, String),
) -> String {
    let front = build::front("tailnet.kdl", spec).unwrap();
    let upd = lockfile::update(&front.tailnet, old, &LockOptions::default(), keys).unwrap();
    lockfile::render(&upd.lock)
}

/// The tree and the test results of `spec` with `lock`.
fn compile(spec: &str, lock: &str) -> (Tree, Option<TestResults>) {
    let input = Input {
        spec_file: "tailnet.kdl",
        spec,
        lock_file: "tailnet.lock",
        lock: Some(lock),
        sources: BTreeMap::new(),
    };
    let l = build::load(&input).unwrap_or_else(|f| panic!("{}", f.text));
    let mut tree = Tree::new();
    let c = build::compile(&input, l, build::Checks::ALL, &mut tree)
        .unwrap_or_else(|f| panic!("{}", f.text));
    (tree, c.tests.as_ref().map(tsk8s::cli::diff_tests))
}

/// Base and edited spec through `lock` and `compile`, diffed with the access section.
fn diff(edit: impl Fn(&str) -> String) -> Report {
    let base = base_spec();
    let new = edit(&base);
    assert_ne!(base, new, "the edit changed nothing");
    let mut keys = keygen();
    let base_lock = lock_for(&base, &lockfile::Lock::default(), &mut keys);
    let parsed = lockfile::parse("tailnet.lock", &base_lock).unwrap();
    let new_lock = lock_for(&new, &parsed, &mut keys);
    let (old_tree, _) = compile(&base, &base_lock);
    let (new_tree, tests) = compile(&new, &new_lock);
    let opts = Options {
        access: true,
        tests,
    };
    tsk8s_diff::diff_trees_with(&old_tree, &new_tree, &opts).unwrap()
}

fn snapshot_all(name: &str, r: &Report) {
    insta::assert_snapshot!(format!("{name}.txt"), tsk8s_diff::render_text(r, false));
    let md = tsk8s_diff::render_markdown(r);
    for body in &md {
        assert!(body.len() < tsk8s_diff::MAX_COMMENT_BYTES);
    }
    insta::assert_snapshot!(format!("{name}.md"), md.join("\n<!-- next part -->\n"));
    insta::assert_snapshot!(format!("{name}.json"), tsk8s_diff::render_json(r));
}

#[test]
fn one_new_accept_rule() {
    let r = diff(|s| {
        s.replace(
            "    accept src=\"group:sre\" dst=\"10.96.0.0/12:443\"\n",
            "    accept src=\"group:sre\" dst=\"10.96.0.0/12:443\"\n    accept src=\"group:dev\" dst=\"tag:db:5432\"\n",
        )
    });
    let a = r.access.as_ref().unwrap();
    assert_eq!((a.gained.len(), a.lost.len()), (1, 0));
    assert!(r.summary_line().ends_with("access: 1 gained, 0 lost"));
    // The new rule breaks carol's deny test: the section says so.
    assert_eq!(a.tests.as_ref().map(|t| t.failed), Some(1));
    snapshot_all("new_accept_rule", &r);
}

#[test]
fn removed_group_member() {
    let r = diff(|s| {
        s.replace(
            "member \"alice@acme.example\" \"bob@acme.example\"",
            "member \"alice@acme.example\"",
        )
    });
    let a = r.access.as_ref().unwrap();
    assert_eq!(a.gained.len(), 0);
    assert!(a.lost.iter().all(|row| row.who == "bob-laptop"), "{a:?}");
    assert!(!a.lost.is_empty());
    snapshot_all("removed_group_member", &r);
}

#[test]
fn new_exposure() {
    let r = diff(|s| {
        s.replace(
            "    proxy \"shop-eu\" service=\"shop/web\" port=8080 tag=\"web\"\n",
            "    proxy \"shop-eu\" service=\"shop/web\" port=8080 tag=\"web\"\n    proxy \"metrics-eu\" service=\"monitoring/prometheus\" port=9090 tag=\"web\"\n",
        )
    });
    let a = r.access.as_ref().unwrap();
    assert!(a.gained.iter().all(|row| row.what == "metrics-eu"), "{a:?}");
    assert_eq!(a.lock.len(), 1, "{a:?}");
    // The manifest changes, but is not an object of its own.
    assert!(r.files.iter().any(|f| f.path == ".tsk8s-manifest"));
    assert!(r.changes().all(|(_, c)| c.label != ".tsk8s-manifest"));
    snapshot_all("new_exposure", &r);
}

#[test]
fn five_hundred_rules_hit_the_budget() {
    let r = diff(|s| {
        let mut rules = String::new();
        for i in 0..500 {
            rules.push_str(&format!(
                "    accept src=\"alice@acme.example\" dst=\"10.96.{}.{}/32:{}\"\n",
                i / 250,
                i % 250,
                1000 + i
            ));
        }
        s.replace("acl {\n", &format!("acl {{\n{rules}"))
    });
    let a = r.access.as_ref().unwrap();
    assert_eq!((a.gained.len(), a.lost.len()), (500, 0));
    let md = tsk8s_diff::render_markdown(&r);
    assert!(md[0].contains("440 more rows not shown"), "{}", md[0]);
    assert!(md[0].contains("Graph cut at 40 edges: 460 more changed edges not drawn"));
    // The first part: summary, access section (bounded), table; the object diff follows.
    let first = md[0].split("<details>").next().unwrap_or_default();
    insta::assert_snapshot!("500_rules.md", first);
    // Text and json list every row: pinned by their access section and counts only.
    let text = tsk8s_diff::render_text(&r, false);
    let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
    insta::assert_snapshot!("500_rules.txt", head);
    let json: serde_json::Value = serde_json::from_str(&tsk8s_diff::render_json(&r)).unwrap();
    assert_eq!(json["access"]["gained"].as_array().map(Vec::len), Some(500));
    insta::assert_snapshot!(
        "500_rules.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "summary_line": json["summary_line"],
            "first_gained": json["access"]["gained"][0],
            "last_gained": json["access"]["gained"][499],
        }))
        .unwrap()
    );
}

/// Publishing a cluster through its gateway moves its nodes' configs into `gateway.json`:
/// no access changes, and the nodes are still found (their UDP port is now the gateway's).
#[test]
fn gateway_publish_changes_no_access() {
    let r = diff(|s| {
        s.replace(
            "cluster \"eu\" namespace=\"tailscale\" endpoint=\"{node}.wg.eu.acme.example\" publish=\"load-balancer\"",
            "cluster \"eu\" namespace=\"tailscale\" endpoint=\"wg.eu.acme.example\" publish=\"gateway\"",
        )
    });
    let a = r.access.as_ref().unwrap();
    assert_eq!((a.gained.len(), a.lost.len()), (0, 0), "{a:?}");
    assert!(
        a.lock
            .iter()
            .all(|l| l.action == tsk8s_diff::Action::Changed && !l.detail.contains("re-keyed")),
        "{:?}",
        a.lock
    );
}
