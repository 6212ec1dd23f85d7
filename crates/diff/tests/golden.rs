//! Golden tests: `diff_trees` + all three renderers on fixture trees under `testdata/diff/`.

use std::collections::BTreeMap;
use std::path::Path;

use tsk8s_diff::{
    Action, DiffError, GroupKind, GroupStatus, MARKER, MAX_COMMENT_BYTES, Report, check_summary,
    diff_trees, render_json, render_markdown, render_markdown_with_limit, render_text,
};

type Tree = BTreeMap<String, Vec<u8>>;

fn load_dir(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .replace('\\', "/");
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

fn case(name: &str) -> (Tree, Tree) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/diff")
        .join(name);
    (load_dir(&dir.join("old")), load_dir(&dir.join("new")))
}

fn report(name: &str) -> Report {
    let (old, new) = case(name);
    diff_trees(&old, &new).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn snapshot_all(name: &str, r: &Report) {
    insta::assert_snapshot!(format!("{name}.txt"), render_text(r, false));
    let md = render_markdown(r);
    assert_eq!(md.len(), 1, "{name}: expected one comment");
    for body in &md {
        assert!(body.len() < MAX_COMMENT_BYTES);
        assert!(body.starts_with(MARKER));
    }
    insta::assert_snapshot!(format!("{name}.md"), md.join("\n<!-- next part -->\n"));
    insta::assert_snapshot!(format!("{name}.json"), render_json(r));
    insta::assert_snapshot!(format!("{name}.check"), check_summary(r));
}

fn counts(r: &Report, kind: &GroupKind) -> (usize, usize, usize) {
    let g = r.groups.iter().find(|g| &g.kind == kind);
    g.map(|g| (g.counts.add, g.counts.change, g.counts.remove))
        .unwrap_or((9, 9, 9))
}

#[test]
fn added_exposure() {
    let r = report("added-exposure");
    assert_eq!(r.summary.to_string(), "4 to add, 1 to change, 0 to remove");
    assert_eq!(counts(&r, &GroupKind::Cluster("prod".into())), (3, 1, 0));
    assert_eq!(counts(&r, &GroupKind::Policy), (1, 0, 0));
    assert_eq!(r.exit_code(), 1);
    snapshot_all("added-exposure", &r);
    insta::assert_snapshot!("added-exposure.color.txt", render_text(&r, true));
}

#[test]
fn changed_acl() {
    let r = report("changed-acl");
    assert_eq!(r.summary.to_string(), "0 to add, 1 to change, 0 to remove");
    let (_, c) = r.changes().next().unwrap_or_else(|| panic!("no change"));
    assert_eq!(c.action, Action::Changed);
    assert_eq!(c.label, "acls[1]");
    snapshot_all("changed-acl", &r);
}

#[test]
fn removed_cluster() {
    let r = report("removed-cluster");
    assert_eq!(r.summary.to_string(), "0 to add, 0 to change, 3 to remove");
    let staging = r
        .groups
        .iter()
        .find(|g| g.kind == GroupKind::Cluster("staging".into()));
    assert_eq!(staging.map(|g| g.status), Some(GroupStatus::Removed));
    assert_eq!(counts(&r, &GroupKind::Gitops), (0, 0, 1));
    snapshot_all("removed-cluster", &r);
}

#[test]
fn secret_change_is_masked() {
    let (old, new) = case("secret-change");
    let r = diff_trees(&old, &new).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.summary.to_string(), "0 to add, 4 to change, 0 to remove");
    snapshot_all("secret-change", &r);
    let outputs = [
        render_text(&r, false),
        render_text(&r, true),
        render_markdown(&r).join("\n"),
        render_json(&r),
        check_summary(&r),
        format!("{r:?}"),
    ];
    let raw = [
        "c2VjcmV0LW9uZQ==",
        "c2VjcmV0LXR3bw==",
        "dW5jaGFuZ2Vk",
        "tskey-auth",
        "q1w2e3r4",
        "z9x8c7v6",
        "macmacOLD",
        "macmacNEW",
        "wrapped-data-key",
        "AgBOLDsealedvalue",
        "AgBNEWsealedvalue",
        "YEbl0aHWw",
        "kNEWprivKEY",
    ];
    for out in &outputs {
        for secret in raw {
            assert!(!out.contains(secret), "{secret} leaked into output:\n{out}");
        }
    }
    let text = render_text(&r, false);
    assert!(text.contains("-  private-key: '*** (before)'"), "{text}");
    assert!(text.contains("+  private-key: '*** (after)'"), "{text}");
    assert!(text.contains("-PrivateKey = *** (before)"), "{text}");
    assert!(text.contains("+PrivateKey = *** (after)"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Large change: split into parts.

fn config_map(i: usize, lines: usize, tag: &str) -> String {
    let mut s = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:03}\n  namespace: tsk8s\ndata:\n  config.txt: |\n"
    );
    for l in 0..lines {
        s.push_str(&format!("    line {l:04} of object {i:03} {tag}\n"));
    }
    s
}

fn large_trees(objects: usize, lines: usize, huge_lines: usize) -> (Tree, Tree) {
    let mut old = Tree::new();
    let mut new = Tree::new();
    for i in 0..objects {
        old.insert(
            format!("clusters/big/cm-{i:03}.yaml"),
            config_map(i, lines, "v1").into_bytes(),
        );
        new.insert(
            format!("clusters/big/cm-{i:03}.yaml"),
            config_map(i, lines, "v2").into_bytes(),
        );
    }
    new.insert(
        "clusters/big/huge.yaml".into(),
        config_map(999, huge_lines, "huge").into_bytes(),
    );
    (old, new)
}

/// Checks the split invariants and returns, per part, the labels of the objects it holds.
fn check_parts(parts: &[String], limit: usize, r: &Report) -> Vec<Vec<String>> {
    let n = parts.len();
    let mut seen = Vec::new();
    for (i, body) in parts.iter().enumerate() {
        assert!(
            body.len() < limit,
            "part {} has {} bytes",
            i + 1,
            body.len()
        );
        assert!(body.starts_with(&format!(
            "{MARKER}\n<!-- tsk8s-diff-part {}/{n} -->\n",
            i + 1
        )));
        assert!(body.contains(&format!("(part {}/{n})", i + 1)));
        // Cuts only between whole objects: every block opened is closed, fences balanced.
        assert_eq!(
            body.matches("<details>").count(),
            body.matches("</details>").count()
        );
        assert_eq!(
            body.matches("```diff\n").count() * 2,
            body.matches("```").count()
        );
        let labels: Vec<String> = body
            .split("<code>")
            .skip(1)
            .filter_map(|s| s.split_once("</code>").map(|(l, _)| l.to_string()))
            .collect();
        seen.push(labels);
    }
    let all: Vec<&String> = seen.iter().flatten().collect();
    let expected: Vec<String> = r.changes().map(|(_, c)| c.label.clone()).collect();
    assert_eq!(
        all,
        expected.iter().collect::<Vec<_>>(),
        "every object exactly once, in order"
    );
    seen
}

#[test]
fn large_change_golden_small_limit() {
    let (old, new) = large_trees(12, 30, 400);
    let r = diff_trees(&old, &new).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.summary.to_string(), "1 to add, 12 to change, 0 to remove");
    let limit = 8 * 1024;
    let parts = render_markdown_with_limit(&r, limit);
    assert!(parts.len() > 1);
    check_parts(&parts, limit, &r);
    assert!(
        parts
            .iter()
            .any(|p| p.contains("_Truncated at a line boundary"))
    );
    insta::assert_snapshot!("large.md", parts.join("\n<!-- next part -->\n"));
    insta::assert_snapshot!("large.txt", render_text(&r, false));
    insta::assert_snapshot!("large.json", render_json(&r));
    insta::assert_snapshot!("large.check", check_summary(&r));
}

#[test]
fn large_change_github_limit() {
    // ~1.3 MB of diff: 120 objects x 200 changed lines, plus one object far beyond one comment.
    let (old, new) = large_trees(120, 200, 6000);
    let r = diff_trees(&old, &new).unwrap_or_else(|e| panic!("{e}"));
    let parts = render_markdown(&r);
    let per_part = check_parts(&parts, MAX_COMMENT_BYTES, &r);
    let shape: Vec<String> = parts
        .iter()
        .zip(&per_part)
        .enumerate()
        .map(|(i, (body, labels))| {
            format!(
                "part {}/{}: {} bytes, {} objects, first {:?}, last {:?}, truncated: {}",
                i + 1,
                parts.len(),
                body.len(),
                labels.len(),
                labels.first(),
                labels.last(),
                body.contains("_Truncated at a line boundary"),
            )
        })
        .collect();
    insta::assert_snapshot!("large-github-limit.shape", shape.join("\n"));
}

#[test]
fn no_changes() {
    let (old, _) = case("changed-acl");
    let r = diff_trees(&old, &old).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_empty() && r.is_up_to_date());
    assert_eq!(r.exit_code(), 0);
    insta::assert_snapshot!("no-changes.txt", render_text(&r, false));
    insta::assert_snapshot!("no-changes.md", render_markdown(&r).join("\n"));
    insta::assert_snapshot!("no-changes.check", check_summary(&r));
}

#[test]
fn reformatted_policy_is_stale_but_not_a_change() {
    let (old, _) = case("changed-acl");
    let mut new = old.clone();
    let policy = String::from_utf8(old.get("policy.hujson").cloned().unwrap_or_default())
        .unwrap_or_default()
        .replace("// developers", "");
    new.insert("policy.hujson".into(), policy.into_bytes());
    let r = diff_trees(&old, &new).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.is_empty());
    assert!(!r.is_up_to_date());
    assert_eq!(r.check_exit_code(), 1);
    insta::assert_snapshot!("reformatted.check", check_summary(&r));
}

#[test]
fn bad_input_is_an_error_with_path() {
    let (old, mut new) = case("changed-acl");
    new.insert("gitops/broken.yaml".into(), b"kind: [unclosed\n".to_vec());
    let e = diff_trees(&old, &new).err();
    assert!(matches!(&e, Some(DiffError::Yaml { path, .. }) if path == "gitops/broken.yaml"));
    assert_eq!(e.map(|e| e.exit_code()), Some(2));

    let mut new2 = old.clone();
    new2.insert("clusters/prod/bin.yaml".into(), vec![0xff, 0xfe, 0x00]);
    let e = diff_trees(&old, &new2).err().map(|e| e.to_string());
    assert_eq!(
        e.as_deref(),
        Some("new tree: clusters/prod/bin.yaml: not valid UTF-8 (first bad byte at offset 0)")
    );
}

/// Deterministic pseudo-fuzz: mutated fixture files must give Ok or Err, never a panic.
#[test]
fn mutated_inputs_never_panic() {
    let (old, new) = case("secret-change");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let paths: Vec<String> = new.keys().cloned().collect();
    for _ in 0..400 {
        let mut t = new.clone();
        let path = &paths[(next() % paths.len() as u64) as usize];
        let mut bytes = t.get(path).cloned().unwrap_or_default();
        for _ in 0..(1 + next() % 4) {
            if bytes.is_empty() {
                break;
            }
            let pos = (next() % bytes.len() as u64) as usize;
            match next() % 4 {
                0 => bytes[pos] = (next() % 256) as u8,
                1 => {
                    bytes.remove(pos);
                }
                2 => bytes.insert(pos, b"{}[]:-,\"'#/*\n\t&!|>"[(next() % 18) as usize]),
                _ => bytes.truncate(pos),
            }
        }
        t.insert(path.clone(), bytes);
        if let Ok(r) = diff_trees(&old, &t) {
            let _ = render_text(&r, true);
            let _ = render_json(&r);
            for p in render_markdown_with_limit(&r, 4096) {
                assert!(p.len() < 4096);
            }
        }
    }
}

#[test]
fn access_needs_topology_in_both_trees() {
    let (old, new) = case("changed-acl");
    let opts = tsk8s_diff::Options {
        access: true,
        tests: None,
    };
    let r = tsk8s_diff::diff_trees_with(&old, &new, &opts).unwrap();
    let a = r.access.as_ref().unwrap();
    let note = a.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("access not compared: neither tree has"),
        "{note}"
    );
    assert_eq!(r.summary_line(), r.summary.to_string());
    assert!(render_text(&r, false).contains(note));
}
