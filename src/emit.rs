//! Stage 4 — emit: objects → bytes. YAML through our own emitter ([`crate::yaml`]: YAML
//! 1.1-ambiguous strings such as `on`, `yes` and `0755` come out quoted, which serde YAML
//! emitters following YAML 1.2 do not do), multi-document files joined by `---`,
//! kustomizations listing their files in sorted order.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

/// The output tree: path relative to the output dir → bytes. Sorted, so writing and diffing
/// are deterministic.
pub type Tree = BTreeMap<String, Vec<u8>>;

pub fn yaml<T: Serialize>(v: &T) -> String {
    // Every object written is a typed k8s-openapi value or a `serde_json::Value`: string keys,
    // no non-finite floats, nothing a serializer can refuse (an empty file was written before).
    crate::yaml::to_string(v).expect("output objects always serialize to YAML")
}

/// Several objects as one multi-document YAML file.
pub fn yaml_docs(docs: &[String]) -> String {
    let mut s = String::with_capacity(docs.iter().map(|d| d.len() + 4).sum());
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            s.push_str("---\n");
        }
        s.push_str(d);
    }
    s
}

pub fn kustomization(resources: &[String]) -> Value {
    let mut r: Vec<&String> = resources.iter().collect();
    r.sort();
    json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": r,
    })
}

pub fn put(tree: &mut Tree, path: String, text: String) {
    tree.insert(path, text.into_bytes());
}

/// Kubernetes refuses a ConfigMap or Secret over 1 MiB (etcd's request limit is about the same
/// for any object): a Kubernetes object file larger than this is an error.
pub const OBJECT_FILE_LIMIT: usize = 1 << 20;

/// Over this a Kubernetes object file gets a warning: Argo CD's client-side apply keeps the
/// whole object in an annotation capped at 256 KiB (its Applications from tsk8s use server-side
/// apply), and such a file is close to [`OBJECT_FILE_LIMIT`].
pub const OBJECT_FILE_WARN: usize = 200 << 10;

/// Kubernetes object files (every `.yaml` in the tree) over `limit` bytes: (path, bytes), in
/// path order.
pub fn large_object_files(tree: &Tree, limit: usize) -> Vec<(&str, usize)> {
    tree.iter()
        .filter(|(p, b)| p.ends_with(".yaml") && b.len() > limit)
        .map(|(p, b)| (p.as_str(), b.len()))
        .collect()
}

/// The file listing every path tsk8s wrote; it marks the dir as owned by tsk8s.
pub const MANIFEST: &str = ".tsk8s-manifest";

/// Add the manifest to a finished tree.
pub fn finish(tree: &mut Tree) {
    let mut s =
        String::from("# Files written by tsk8s build. The directory is owned wholly by tsk8s.\n");
    for p in tree.keys() {
        if p != MANIFEST {
            s.push_str(p);
            s.push('\n');
        }
    }
    tree.insert(MANIFEST.to_string(), s.into_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_object_files_are_yaml_over_the_limit() {
        let mut tree = Tree::new();
        put(&mut tree, "a/big.yaml".into(), "x".repeat(11));
        put(&mut tree, "a/small.yaml".into(), "x".repeat(10));
        put(&mut tree, "devices/d.conf".into(), "x".repeat(100));
        assert_eq!(large_object_files(&tree, 10), vec![("a/big.yaml", 11)]);
        assert!(OBJECT_FILE_WARN < OBJECT_FILE_LIMIT && OBJECT_FILE_LIMIT == 1_048_576);
    }
}
