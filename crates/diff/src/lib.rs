//! Object-level diff of two `tsk8s build` output trees, for `tsk8s diff` and `tsk8s build --check`.
//!
//! Both trees are maps from a relative path to file bytes. [`diff_trees`] parses them into
//! entries and matches entries by identity, never by file or line:
//!
//! - **Kubernetes objects** (`clusters/<cluster>/**.yaml`, `gitops/**.yaml`, multi-document files
//!   allowed) by `(apiVersion, kind, namespace, name)`, grouped per cluster and in a `gitops`
//!   group. Documents without `kind` + `metadata.name` (e.g. `kustomization.yaml`) are matched by
//!   file path and document index. Moving an object between files is not a change.
//! - **The policy** (`policy.hujson`) by section and entry: map sections (`groups`, `tagOwners`,
//!   `hosts`, `autoApprovers`, …) by key, scalar sections as one entry, and list sections (`acls`,
//!   `grants`, `tests`, `ssh`, `nodeAttrs`, …) by *position + similarity*: an LCS over the entries'
//!   canonical JSON anchors the unchanged entries; between two anchors, removed and added entries
//!   are paired in order (each removed entry with the most similar added entry among the next
//!   few) when their similarity is at least [`LIST_SIMILARITY`], giving a
//!   "changed" entry with a small diff; the rest are plain removes/adds. A reordered entry shows as
//!   remove + add (order matters for ACLs in Tailscale's first-match `ssh` rules).
//! - **Devices** (`devices/<device>.conf` + `devices/<device>.hosts`) as one entry per device.
//! - **Any other file** as a whole-file text entry (group `files`, or its cluster/devices/gitops
//!   group when it lives there).
//!
//! Secrets are masked before anything is rendered (see `mask.rs` for what counts as secret);
//! `Report` never holds a raw secret value.
//!
//! Rendering ([`render_text`], [`render_markdown`], [`render_json`], [`check_summary`]) uses the
//! minijinja templates in the crate's `templates/` directory (`diff.txt.j2`, `diff.md.j2`,
//! `diff_object.md.j2`, `check.txt.j2`), compiled in. Markdown comes as one or more comment
//! bodies, each below [`MAX_COMMENT_BYTES`]; every body starts with the line [`MARKER`], and split
//! bodies carry `<!-- tsk8s-diff-part N/M -->` on their second line. A CI job updates the
//! existing marked comments in place, creates missing ones and deletes surplus ones (a diff that
//! needed three parts yesterday may need one today).
//!
//! [`diff_trees_with`] with [`Options::access`] adds the "Access changes" section (see
//! `access.rs`): gained and lost access from the access model of each tree
//! (`tsk8s_policy::access`, the one evaluator), lock entries added, removed or re-keyed, and
//! the new spec's test results; it comes first in every format and its counts join the
//! summary line. A hunk repeated in several changed objects (the filter in each cluster's
//! mesh) is shown once and named in the others; `.tsk8s-manifest` is no entry.
//!
//! Besides the object changes, [`Report::files`] lists every path whose bytes differ, which is
//! what `build --check` needs (a reformatted file is stale even when no object changed).
//!
//! The trees can also be given a path at a time ([`Pairs`]: `tsk8s diff` compares each file
//! as the build finishes it), holding only the files that differ: the same report, in memory
//! that follows the change, not the trees.

pub mod access;
mod mask;
mod render;
mod tree;

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

pub use access::{AccessChanges, AccessRow, LockLine, TestResults};
pub use render::{
    MARKER, MAX_COMMENT_BYTES, check_summary, render, render_json, render_markdown,
    render_markdown_with_limit, render_text,
};

/// Minimum similarity (0..=1: the Dice coefficient of the two entries' JSON leaves, e.g.
/// `src[]="group:sre"`) for a removed and an added list entry of the policy to be shown as one
/// changed entry.
pub const LIST_SIMILARITY: f32 = 0.5;

/// Exit code for "no differences".
pub const EXIT_SAME: u8 = 0;
/// Exit code for "differences found".
pub const EXIT_DIFFERENT: u8 = 1;
/// Exit code for bad input (any [`DiffError`]).
pub const EXIT_BAD_INPUT: u8 = 2;

/// Which of the two trees an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeSide {
    /// The base tree (committed output, `--base`).
    Old,
    /// The freshly built tree.
    New,
}

impl fmt::Display for TreeSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TreeSide::Old => "old (base)",
            TreeSide::New => "new",
        })
    }
}

/// Bad input. Always names the tree and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("{side} tree: {path}: not valid UTF-8 (first bad byte at offset {offset})")]
    Utf8 {
        side: TreeSide,
        path: String,
        offset: usize,
    },
    #[error("{side} tree: {path}: invalid YAML in document {document}: {message}")]
    Yaml {
        side: TreeSide,
        path: String,
        document: usize,
        message: String,
    },
    #[error("{side} tree: {path}:{line}:{column}: invalid HuJSON: {message}")]
    Policy {
        side: TreeSide,
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// `policy.hujson` or `topology.json` that the access model cannot read.
    #[error("{side} tree: {path}: {message}")]
    Model {
        side: TreeSide,
        path: String,
        message: String,
    },
}

impl DiffError {
    /// The path of the offending file, relative to the tree root.
    pub fn path(&self) -> &str {
        match self {
            DiffError::Utf8 { path, .. }
            | DiffError::Yaml { path, .. }
            | DiffError::Policy { path, .. }
            | DiffError::Model { path, .. } => path,
        }
    }

    /// Always [`EXIT_BAD_INPUT`].
    pub fn exit_code(&self) -> u8 {
        EXIT_BAD_INPUT
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Changed,
    Removed,
}

impl Action {
    /// `+`, `~` or `-`.
    pub fn sign(self) -> char {
        match self {
            Action::Added => '+',
            Action::Changed => '~',
            Action::Removed => '-',
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Changed => "changed",
            Action::Removed => "removed",
        }
    }
}

/// A group of entries in the report. Ordered: policy, clusters by name, devices, gitops, files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "lowercase")]
pub enum GroupKind {
    Policy,
    Cluster(String),
    Devices,
    Gitops,
    Files,
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupKind::Policy => f.write_str("policy"),
            GroupKind::Cluster(c) => write!(f, "cluster {c}"),
            GroupKind::Devices => f.write_str("devices"),
            GroupKind::Gitops => f.write_str("gitops"),
            GroupKind::Files => f.write_str("files"),
        }
    }
}

/// Whether the group as a whole exists on one side only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupStatus {
    /// In both trees.
    Present,
    /// Only in the new tree (e.g. a new cluster).
    Added,
    /// Only in the old tree (e.g. a removed cluster).
    Removed,
}

/// Added / changed / removed counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.add + self.change + self.remove
    }

    fn count(&mut self, a: Action) {
        match a {
            Action::Added => self.add += 1,
            Action::Changed => self.change += 1,
            Action::Removed => self.remove += 1,
        }
    }

    fn plus(self, o: Counts) -> Counts {
        Counts {
            add: self.add + o.add,
            change: self.change + o.change,
            remove: self.remove + o.remove,
        }
    }
}

/// `2 to add, 1 to change, 0 to remove`.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} to add, {} to change, {} to remove",
            self.add, self.change, self.remove
        )
    }
}

/// The identity an entry was matched by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ObjectId {
    /// A Kubernetes object. `namespace` is empty for cluster-scoped (or unset) namespaces.
    /// `occurrence` > 0 only when the same identity appears more than once in one tree.
    Kubernetes {
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
        occurrence: usize,
    },
    /// A YAML document without `kind` + `metadata.name` (e.g. `kustomization.yaml`).
    Document {
        path: String,
        index: usize,
        kind: String,
    },
    /// One policy entry: `key` for map sections, `index` (in its own tree) for list sections,
    /// neither for scalar sections.
    PolicyEntry {
        section: String,
        key: Option<String>,
        index: Option<usize>,
    },
    /// A device's `.conf` + `.hosts`.
    Device { name: String },
    /// A whole file.
    File { path: String },
}

/// One added, changed or removed entry. Texts are masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    pub id: ObjectId,
    /// Human-readable identity, e.g. `apps/v1 Deployment web/api` or `groups["group:sre"]`.
    pub label: String,
    /// Short description where one helps (e.g. an ACL's `accept src -> dst`), else empty.
    pub description: String,
    pub old_path: Option<String>,
    pub new_path: Option<String>,
    /// Masked canonical text in the old tree (YAML for Kubernetes objects, JSON for policy).
    pub before: Option<String>,
    /// Masked canonical text in the new tree.
    pub after: Option<String>,
    /// Unified diff (`similar`) of `before` → `after`, 3 lines of context, with
    /// `--- a/<old path>` / `+++ b/<new path>` headers (`/dev/null` for a missing side).
    pub diff: String,
}

/// All changes of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub kind: GroupKind,
    pub status: GroupStatus,
    pub counts: Counts,
    pub changes: Vec<Change>,
}

/// How a file's bytes differ (for `build --check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileStatus {
    /// Only in the new tree (missing from the committed output).
    Added,
    /// Bytes differ.
    Modified,
    /// Only in the old tree (the build no longer produces it).
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub path: String,
    pub status: FileStatus,
}

/// The result of [`diff_trees`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Totals over all groups.
    pub summary: Counts,
    /// Every group present in either tree (also unchanged ones, with zero counts), in
    /// [`GroupKind`] order.
    pub groups: Vec<Group>,
    /// Paths whose bytes differ, sorted by path.
    pub files: Vec<FileDiff>,
    /// Who gains or loses access (only when asked for: [`Options::access`]).
    pub access: Option<AccessChanges>,
}

impl Report {
    /// No added, changed or removed entry (what `tsk8s diff` exits 0 on). Formatting-only file
    /// differences (comments, key order, moved objects) do not count; see [`Report::is_up_to_date`].
    pub fn is_empty(&self) -> bool {
        self.summary.total() == 0
    }

    /// Every file byte-identical (what `tsk8s build --check` exits 0 on).
    pub fn is_up_to_date(&self) -> bool {
        self.files.is_empty()
    }

    /// Exit code for `tsk8s diff`: [`EXIT_SAME`] or [`EXIT_DIFFERENT`].
    pub fn exit_code(&self) -> u8 {
        if self.is_empty() {
            EXIT_SAME
        } else {
            EXIT_DIFFERENT
        }
    }

    /// Exit code for `tsk8s build --check`: [`EXIT_SAME`] or [`EXIT_DIFFERENT`].
    pub fn check_exit_code(&self) -> u8 {
        if self.is_up_to_date() {
            EXIT_SAME
        } else {
            EXIT_DIFFERENT
        }
    }

    /// The summary line: the counts, then the access counts when compared
    /// (`2 to add, 1 to change, 0 to remove; access: 3 gained, 0 lost`).
    pub fn summary_line(&self) -> String {
        match &self.access {
            Some(a) if a.note.is_none() => format!("{}; {}", self.summary, a.summary()),
            _ => self.summary.to_string(),
        }
    }

    /// All changes in report order, with their group.
    pub fn changes(&self) -> impl Iterator<Item = (&Group, &Change)> {
        self.groups
            .iter()
            .flat_map(|g| g.changes.iter().map(move |c| (g, c)))
    }
}

/// Output formats of `tsk8s diff --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "markdown" | "md" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown format {other:?} (expected text, markdown or json)"
            )),
        }
    }
}

/// What [`diff_trees_with`] adds to the object diff.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Compare the access model of the two trees (the "Access changes" section).
    pub access: bool,
    /// The new spec's ACL test results, shown in the access section.
    pub tests: Option<TestResults>,
}

/// Compares two output trees (`old` = base / committed, `new` = fresh build): objects only.
pub fn diff_trees(
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
) -> Result<Report, DiffError> {
    diff_trees_with(old, new, &Options::default())
}

/// [`diff_trees`], plus what `opts` asks for (`tsk8s diff` asks for access changes).
/// The trees go through [`Pairs`] path by path, as `tsk8s diff` streams them.
pub fn diff_trees_with(
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
    opts: &Options,
) -> Result<Report, DiffError> {
    let mut pairs = Pairs::new();
    let paths: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for path in paths {
        pairs.add(
            path,
            old.get(path).map(Vec::as_slice),
            new.get(path).map(Vec::as_slice),
        );
    }
    pairs.finish(opts)
}

/// Two trees compared a path at a time, holding only what the report can need, so a diff
/// costs memory for what changed, not for the size of the trees (`tsk8s diff` gives each
/// file of the fresh build as the compiler finishes it, with the base's file of the same
/// path, then the base's files the build did not write).
///
/// Kept: the files whose bytes differ (or that are on one side only), `policy.hujson` and
/// `topology.json` (the access section reads both trees' models), and a device's `.conf` or
/// `.hosts` that is the same on both sides while the other one differs (a device is one
/// entry). Of every other file only its group is noted (present on which side). Reading
/// what is kept gives the report [`diff_trees_with`] gives for the whole trees: files
/// byte-identical on both sides yield identical entries on both sides, so no change.
#[derive(Debug, Default)]
pub struct Pairs {
    old: BTreeMap<String, Vec<u8>>,
    new: BTreeMap<String, Vec<u8>>,
    /// Groups with a file on the old / the new side.
    present: [std::collections::BTreeSet<GroupKind>; 2],
    /// Devices by name: whether one of their files differs, else their same files so far.
    devices: BTreeMap<String, PendingDevice>,
}

#[derive(Debug, Default)]
struct PendingDevice {
    differs: bool,
    same: Vec<(String, Vec<u8>)>,
}

impl Pairs {
    pub fn new() -> Pairs {
        Pairs::default()
    }

    /// The bytes of `path` in the old and the new tree (`None`: not in that tree). Each path
    /// is given once, in any order.
    pub fn add(&mut self, path: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        if path != tree::MANIFEST_PATH {
            let group = if path == tree::POLICY_PATH {
                GroupKind::Policy
            } else {
                tree::classify(path).0
            };
            for (side, bytes) in [(0, old), (1, new)] {
                if bytes.is_some() && !self.present[side].contains(&group) {
                    self.present[side].insert(group.clone());
                }
            }
        }
        let device = tree::device_file(path).map(|(name, _)| name);
        let keep = |pairs: &mut Pairs, path: &str| {
            if let Some(b) = old {
                pairs.old.insert(path.to_string(), b.to_vec());
            }
            if let Some(b) = new {
                pairs.new.insert(path.to_string(), b.to_vec());
            }
        };
        if old != new || path == tree::POLICY_PATH || path == access::TOPOLOGY_PATH {
            keep(self, path);
            if old != new
                && let Some(name) = device
            {
                let d = self.devices.entry(name.to_string()).or_default();
                d.differs = true;
                for (p, b) in std::mem::take(&mut d.same) {
                    self.old.insert(p.clone(), b.clone());
                    self.new.insert(p, b);
                }
            }
            return;
        }
        let Some(name) = device else {
            return;
        };
        let d = self.devices.entry(name.to_string()).or_default();
        if d.differs {
            keep(self, path);
            return;
        }
        d.same
            .push((path.to_string(), old.unwrap_or_default().to_vec()));
        if d.same.len() >= 2 {
            // Both files the same: the device is no change.
            self.devices.remove(name);
        }
    }

    /// The report of the two trees given.
    pub fn finish(self, opts: &Options) -> Result<Report, DiffError> {
        diff_kept(&self.old, &self.new, &self.present, opts)
    }
}

/// The report of the files [`Pairs`] kept, with the groups present in the whole trees.
fn diff_kept(
    old: &BTreeMap<String, Vec<u8>>,
    new: &BTreeMap<String, Vec<u8>>,
    present: &[std::collections::BTreeSet<GroupKind>; 2],
    opts: &Options,
) -> Result<Report, DiffError> {
    // The two trees parse independently, and the access model is independent of the object
    // matching: each pair runs on two threads.
    let (old_parsed, new_parsed) = std::thread::scope(|s| {
        let o = s.spawn(|| tree::parse_tree(old, TreeSide::Old, new));
        let n = tree::parse_tree(new, TreeSide::New, old);
        let o = o.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (o, n)
    });
    let (mut old_parsed, mut new_parsed) = (old_parsed?, new_parsed?);
    let [old_present, new_present] = present;
    old_parsed.present.extend(old_present.iter().cloned());
    new_parsed.present.extend(new_present.iter().cloned());
    let (access, mut groups) = std::thread::scope(|s| {
        let access = opts.access.then(|| {
            s.spawn(|| {
                let mut a = access::compare(old, new, &old_parsed, &new_parsed)?;
                a.tests = opts.tests.clone();
                Ok::<_, DiffError>(a)
            })
        });
        let groups = tree::match_trees(&old_parsed, &new_parsed);
        let access = access
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .transpose();
        (access, groups)
    });
    let access = access?;
    tree::dedup_hunks(&mut groups);
    let mut summary = Counts::default();
    for g in &mut groups {
        let mut c = Counts::default();
        for ch in &g.changes {
            c.count(ch.action);
        }
        g.counts = c;
        summary = summary.plus(c);
    }

    let mut files = Vec::new();
    for (path, bytes) in old {
        match new.get(path) {
            None => files.push(FileDiff {
                path: path.clone(),
                status: FileStatus::Removed,
            }),
            Some(b) if b != bytes => files.push(FileDiff {
                path: path.clone(),
                status: FileStatus::Modified,
            }),
            Some(_) => {}
        }
    }
    for path in new.keys() {
        if !old.contains_key(path) {
            files.push(FileDiff {
                path: path.clone(),
                status: FileStatus::Added,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));

    Ok(Report {
        summary,
        groups,
        files,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::tree::tests::tree;

    /// What [`Pairs`] keeps gives the report of the whole trees (the core run on both trees
    /// whole), whatever order the paths come in: devices with one file changed, both the
    /// same, a file on one side; groups with only unchanged files; policy and topology the
    /// same or not.
    #[test]
    fn pairs_report_what_the_whole_trees_report() {
        let cm = |name: &str, v: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: n\ndata:\n  k: {v}\n"
            )
        };
        let (a1, a2, b1, b2) = (cm("a", "1"), cm("a", "2"), cm("b", "1"), cm("b", "2"));
        let old = tree(&[
            ("policy.hujson", "{\"acls\": []}\n"),
            ("topology.json", "{}\n"),
            (".tsk8s-manifest", "old\n"),
            ("clusters/x/a.yaml", &a1),
            ("clusters/x/b.yaml", &b1),
            ("clusters/same/a.yaml", &a1),
            ("clusters/gone/a.yaml", &a1),
            ("devices/d1.conf", "[Interface]\n"),
            ("devices/d1.hosts", "h1\n"),
            ("devices/d2.conf", "[Interface]\n"),
            ("devices/d2.hosts", "h2\n"),
            ("devices/d3.conf", "[Interface]\n"),
            ("devices/d4.hosts", "h4\n"),
            ("gitops/app.yaml", &b1),
            ("README.md", "same\n"),
        ]);
        let new = tree(&[
            ("policy.hujson", "{\"acls\": [{\"action\": \"accept\"}]}\n"),
            ("topology.json", "{}\n"),
            (".tsk8s-manifest", "new\n"),
            ("clusters/x/a.yaml", &a2),
            ("clusters/x/b.yaml", &b1),
            ("clusters/same/a.yaml", &a1),
            ("clusters/new/b.yaml", &b2),
            ("devices/d1.conf", "[Interface]\n"),
            ("devices/d1.hosts", "h1 changed\n"),
            ("devices/d2.conf", "[Interface]\n"),
            ("devices/d2.hosts", "h2\n"),
            ("devices/d3.conf", "[Interface]\n"),
            ("devices/d3.hosts", "h3\n"),
            ("gitops/app.yaml", &b1),
            ("README.md", "same\n"),
        ]);
        let opts = Options {
            access: true,
            tests: None,
        };
        let whole = diff_kept(&old, &new, &Default::default(), &opts).unwrap();
        assert_ne!(whole.summary.total(), 0);
        let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
        paths.sort();
        paths.dedup();
        for order in 0..4 {
            let mut ps = paths.clone();
            match order {
                1 => ps.reverse(),
                2 => ps.rotate_left(5),
                3 => ps.sort_by_key(|p| (p.len(), p.to_string())),
                _ => {}
            }
            let mut pairs = Pairs::new();
            for p in ps {
                pairs.add(
                    p,
                    old.get(p).map(Vec::as_slice),
                    new.get(p).map(Vec::as_slice),
                );
            }
            assert!(!pairs.old.contains_key("clusters/same/a.yaml"));
            assert!(!pairs.old.contains_key("devices/d2.conf"));
            assert!(pairs.old.contains_key("devices/d1.conf"));
            assert_eq!(pairs.finish(&opts).unwrap(), whole, "order {order}");
        }
    }
}
