//! Parsing output trees into entries, and matching entries of two trees.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;
use similar::{Algorithm, DiffOp, TextDiff, capture_diff_slices};

use crate::mask::{Side, mask_text_or_keep, mask_yaml_doc};
use crate::{
    Action, Change, DiffError, Group, GroupKind, GroupStatus, LIST_SIMILARITY, ObjectId, TreeSide,
};

pub(crate) const POLICY_PATH: &str = "policy.hujson";
/// The list of files a build wrote: it changes with every added or removed file, so it is
/// no entry of its own (`Report::files` still lists it for `build --check`).
pub(crate) const MANIFEST_PATH: &str = ".tsk8s-manifest";

/// How many positions ahead a removed list entry looks for a similar added one.
const SIMILARITY_WINDOW: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EntryValue {
    Yaml(Yaml),
    Text(String),
    Binary(Vec<u8>),
    /// `(path, text)` of the device's `.conf` and `.hosts`.
    Device {
        conf: Option<(String, String)>,
        hosts: Option<(String, String)>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub label: String,
    pub path: String,
    pub value: EntryValue,
}

#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub groups: BTreeMap<GroupKind, BTreeMap<ObjectId, Entry>>,
    pub present: BTreeSet<GroupKind>,
    /// Top-level sections of `policy.hujson` in file order.
    pub policy: Option<Vec<(String, serde_json::Value)>>,
}

fn utf8<'a>(bytes: &'a [u8], path: &str, side: TreeSide) -> Result<&'a str, DiffError> {
    std::str::from_utf8(bytes).map_err(|e| DiffError::Utf8 {
        side,
        path: path.to_string(),
        offset: e.valid_up_to(),
    })
}

fn is_yaml(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// Parses `tree` into entries. A policy or Kubernetes YAML file byte-identical in `other`
/// yields identical entries on both sides, so both sides skip it (only its group is noted):
/// the cost of a diff follows the files that changed, not the size of the trees.
pub(crate) fn parse_tree(
    tree: &BTreeMap<String, Vec<u8>>,
    side: TreeSide,
    other: &BTreeMap<String, Vec<u8>>,
) -> Result<Parsed, DiffError> {
    let mut p = Parsed::default();
    // device name -> (conf, hosts)
    type DevFile = Option<(String, String)>;
    let mut devices: BTreeMap<String, (DevFile, DevFile)> = BTreeMap::new();

    for (path, bytes) in tree {
        if path == MANIFEST_PATH {
            continue;
        }
        let same = other.get(path) == Some(bytes);
        if path == POLICY_PATH {
            p.present.insert(GroupKind::Policy);
            if !same {
                p.policy = Some(parse_policy(utf8(bytes, path, side)?, path, side)?);
            }
            continue;
        }
        let (group, _) = classify(path);
        p.present.insert(group.clone());
        let entries = p.groups.entry(group.clone()).or_default();
        if same && matches!(group, GroupKind::Cluster(_) | GroupKind::Gitops) && is_yaml(path) {
            continue;
        }
        match group {
            GroupKind::Cluster(_) | GroupKind::Gitops if is_yaml(path) => {
                add_yaml_docs(entries, utf8(bytes, path, side)?, path, side)?;
            }
            GroupKind::Devices if device_file(path).is_some() => {
                let text = utf8(bytes, path, side)?.to_string();
                let Some((name, is_conf)) = device_file(path) else {
                    continue;
                };
                let slot = devices.entry(name.to_string()).or_default();
                if is_conf {
                    slot.0 = Some((path.clone(), text));
                } else {
                    slot.1 = Some((path.clone(), text));
                }
            }
            _ => {
                let value = match std::str::from_utf8(bytes) {
                    Ok(t) => EntryValue::Text(t.to_string()),
                    Err(_) => EntryValue::Binary(bytes.clone()),
                };
                entries.insert(
                    ObjectId::File { path: path.clone() },
                    Entry {
                        label: path.clone(),
                        path: path.clone(),
                        value,
                    },
                );
            }
        }
    }
    if !devices.is_empty() {
        let entries = p.groups.entry(GroupKind::Devices).or_default();
        for (name, (conf, hosts)) in devices {
            let path = conf
                .as_ref()
                .or(hosts.as_ref())
                .map(|(p, _)| p.clone())
                .unwrap_or_default();
            entries.insert(
                ObjectId::Device { name: name.clone() },
                Entry {
                    label: name,
                    path,
                    value: EntryValue::Device { conf, hosts },
                },
            );
        }
    }
    Ok(p)
}

/// `(device name, is the .conf)` of a device's `.conf` or `.hosts` (one entry per device).
pub(crate) fn device_file(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix("devices/").filter(|r| !r.contains('/'))?;
    match rest.strip_suffix(".conf") {
        Some(n) => Some((n, true)),
        None => rest.strip_suffix(".hosts").map(|n| (n, false)),
    }
}

/// The group of a path and the rest of the path inside the group's directory.
pub(crate) fn classify(path: &str) -> (GroupKind, &str) {
    if let Some(rest) = path.strip_prefix("clusters/")
        && let Some((cluster, inner)) = rest.split_once('/')
        && !cluster.is_empty()
        && !inner.is_empty()
    {
        return (GroupKind::Cluster(cluster.to_string()), inner);
    }
    if let Some(rest) = path.strip_prefix("gitops/")
        && !rest.is_empty()
    {
        return (GroupKind::Gitops, rest);
    }
    if let Some(rest) = path.strip_prefix("devices/")
        && !rest.is_empty()
    {
        return (GroupKind::Devices, rest);
    }
    (GroupKind::Files, path)
}

fn add_yaml_docs(
    entries: &mut BTreeMap<ObjectId, Entry>,
    text: &str,
    path: &str,
    side: TreeSide,
) -> Result<(), DiffError> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Yaml::deserialize(de).map_err(|e| DiffError::Yaml {
            side,
            path: path.to_string(),
            document: i + 1,
            message: e.to_string(),
        })?;
        if !v.is_null() {
            docs.push((i, v));
        }
    }
    let multi = docs.len() > 1;
    for (index, v) in docs {
        let str_at = |v: &Yaml, k: &str| v.get(k).and_then(Yaml::as_str).map(str::to_string);
        let kind = str_at(&v, "kind");
        let meta = v.get("metadata");
        let name = meta.and_then(|m| str_at(m, "name"));
        let (id, label) = match (&kind, name) {
            (Some(kind), Some(name)) => {
                let api_version = str_at(&v, "apiVersion").unwrap_or_default();
                let namespace = meta
                    .and_then(|m| str_at(m, "namespace"))
                    .unwrap_or_default();
                let mut occurrence = 0;
                loop {
                    let id = ObjectId::Kubernetes {
                        api_version: api_version.clone(),
                        kind: kind.clone(),
                        namespace: namespace.clone(),
                        name: name.clone(),
                        occurrence,
                    };
                    if !entries.contains_key(&id) {
                        break;
                    }
                    occurrence += 1;
                }
                let mut label = if namespace.is_empty() {
                    format!("{api_version} {kind} {name}")
                } else {
                    format!("{api_version} {kind} {namespace}/{name}")
                };
                if occurrence > 0 {
                    label.push_str(&format!(" #{}", occurrence + 1));
                }
                let id = ObjectId::Kubernetes {
                    api_version,
                    kind: kind.clone(),
                    namespace,
                    name,
                    occurrence,
                };
                (id, label.trim_start().to_string())
            }
            _ => {
                let kind = kind.unwrap_or_default();
                let mut label = if kind.is_empty() {
                    path.to_string()
                } else {
                    format!("{kind} {path}")
                };
                if multi {
                    label.push_str(&format!(" (document {})", index + 1));
                }
                (
                    ObjectId::Document {
                        path: path.to_string(),
                        index,
                        kind,
                    },
                    label,
                )
            }
        };
        entries.insert(
            id,
            Entry {
                label,
                path: path.to_string(),
                value: EntryValue::Yaml(v),
            },
        );
    }
    Ok(())
}

fn parse_policy(
    text: &str,
    path: &str,
    side: TreeSide,
) -> Result<Vec<(String, serde_json::Value)>, DiffError> {
    let err = |line, column, message: String| DiffError::Policy {
        side,
        path: path.to_string(),
        line,
        column,
        message,
    };
    let Some(value) =
        tsk8s_policy::hujson::parse_document(text).map_err(|e| err(e.line, e.column, e.message))?
    else {
        return Ok(Vec::new());
    };
    match value {
        serde_json::Value::Object(m) => Ok(m.into_iter().collect()),
        _ => Err(err(1, 1, "the policy must be a JSON object".to_string())),
    }
}

// ---------------------------------------------------------------------------------------------
// Matching

pub(crate) fn match_trees(old: &Parsed, new: &Parsed) -> Vec<Group> {
    let kinds: BTreeSet<&GroupKind> = old.present.iter().chain(new.present.iter()).collect();
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for kind in kinds {
        let status = match (old.present.contains(kind), new.present.contains(kind)) {
            (true, false) => GroupStatus::Removed,
            (false, true) => GroupStatus::Added,
            _ => GroupStatus::Present,
        };
        let changes = if *kind == GroupKind::Policy {
            match_policy(old.policy.as_deref(), new.policy.as_deref())
        } else {
            let o = old.groups.get(kind).unwrap_or(&empty);
            let n = new.groups.get(kind).unwrap_or(&empty);
            let ids: BTreeSet<&ObjectId> = o.keys().chain(n.keys()).collect();
            ids.into_iter()
                .filter_map(|id| {
                    let (oe, ne) = (o.get(id), n.get(id));
                    let label = ne.or(oe).map(|e| e.label.clone()).unwrap_or_default();
                    make_change(
                        id.clone(),
                        label,
                        String::new(),
                        oe.map(|e| (e.path.as_str(), &e.value)),
                        ne.map(|e| (e.path.as_str(), &e.value)),
                    )
                })
                .collect()
        };
        out.push(Group {
            kind: kind.clone(),
            status,
            counts: Default::default(),
            changes,
        });
    }
    out
}

/// A hunk already shown in an earlier change (e.g. the same filter rules in each cluster's
/// mesh ConfigMap) is replaced by its `@@` line naming where it is shown.
pub(crate) fn dedup_hunks(groups: &mut [Group]) {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for g in groups.iter_mut() {
        let group = g.kind.to_string();
        for c in &mut g.changes {
            if c.action != Action::Changed || !c.diff.contains("\n@@") {
                continue;
            }
            let place = format!("{group}: {}", c.label);
            let mut out = String::with_capacity(c.diff.len());
            let mut replaced = false;
            // Header lines, then hunks starting at `@@`.
            let mut hunks: Vec<(&str, String)> = Vec::new();
            for line in c.diff.split_inclusive('\n') {
                if line.starts_with("@@") {
                    hunks.push((line, String::new()));
                } else if let Some((_, body)) = hunks.last_mut() {
                    body.push_str(line);
                } else {
                    out.push_str(line);
                }
            }
            for (head, body) in hunks {
                // Only hunks that change something and are worth naming.
                if body.lines().count() < 4 {
                    out.push_str(head);
                    out.push_str(&body);
                    continue;
                }
                match seen.get(&body) {
                    Some(first) => {
                        out.push_str(head.trim_end_matches('\n'));
                        out.push_str(&format!(" same lines as in {first}\n"));
                        replaced = true;
                    }
                    None => {
                        seen.insert(body.clone(), place.clone());
                        out.push_str(head);
                        out.push_str(&body);
                    }
                }
            }
            if replaced {
                c.diff = out;
            }
        }
    }
}

type Side2<'a> = Option<(&'a str, &'a EntryValue)>;

fn make_change(
    id: ObjectId,
    label: String,
    description: String,
    old: Side2<'_>,
    new: Side2<'_>,
) -> Option<Change> {
    let action = match (old, new) {
        (Some((_, o)), Some((_, n))) if o == n => return None,
        (Some(_), Some(_)) => Action::Changed,
        (None, Some(_)) => Action::Added,
        (Some(_), None) => Action::Removed,
        (None, None) => return None,
    };
    let before = old.map(|(_, v)| render_value(v, new.map(|(_, n)| n), Side::Before));
    let after = new.map(|(_, v)| render_value(v, old.map(|(_, o)| o), Side::After));
    let diff = file_diff(
        (old.map(|(p, _)| p), before.as_deref()),
        (new.map(|(p, _)| p), after.as_deref()),
    );
    Some(Change {
        action,
        id,
        label,
        description,
        old_path: old.map(|(p, _)| p.to_string()),
        new_path: new.map(|(p, _)| p.to_string()),
        before,
        after,
        diff,
    })
}

/// The unified diff of one file between two trees, `git diff`'s way: each side is its path and
/// text, or `None` where the file is absent (`/dev/null`, empty text).
fn file_diff(
    (old_path, before): (Option<&str>, Option<&str>),
    (new_path, after): (Option<&str>, Option<&str>),
) -> String {
    let hdr = |side: &str, path: Option<&str>| {
        path.map_or_else(|| "/dev/null".to_string(), |p| format!("{side}/{p}"))
    };
    unified(
        before.unwrap_or(""),
        after.unwrap_or(""),
        &hdr("a", old_path),
        &hdr("b", new_path),
    )
}

pub(crate) fn unified(before: &str, after: &str, old_hdr: &str, new_hdr: &str) -> String {
    let d = TextDiff::from_lines(before, after);
    d.unified_diff()
        .context_radius(3)
        .header(old_hdr, new_hdr)
        .to_string()
}

fn with_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn yaml_text(v: &Yaml) -> String {
    match serde_yaml_ng::to_string(v) {
        Ok(s) => with_newline(s),
        Err(e) => format!("(cannot render as YAML: {e})\n"),
    }
}

/// Masked canonical text of one entry.
fn render_value(v: &EntryValue, other: Option<&EntryValue>, side: Side) -> String {
    match v {
        EntryValue::Yaml(y) => {
            let o = match other {
                Some(EntryValue::Yaml(o)) => Some(o),
                _ => None,
            };
            yaml_text(&mask_yaml_doc(y, o, side))
        }
        EntryValue::Text(t) => {
            let o = match other {
                Some(EntryValue::Text(o)) => Some(o.as_str()),
                _ => None,
            };
            with_newline(mask_text_or_keep(t, o, side))
        }
        EntryValue::Binary(b) => {
            let changed = matches!(other, Some(EntryValue::Binary(o)) if o != b);
            let mark = match (changed, side) {
                (false, _) => "",
                (true, Side::Before) => " (before)",
                (true, Side::After) => " (after)",
            };
            format!("(binary file, {} bytes){mark}\n", b.len())
        }
        EntryValue::Device { conf, hosts } => {
            let (oc, oh) = match other {
                Some(EntryValue::Device { conf, hosts }) => (conf.as_ref(), hosts.as_ref()),
                _ => (None, None),
            };
            let mut s = String::new();
            for (file, ofile) in [(conf, oc), (hosts, oh)] {
                if let Some((path, text)) = file {
                    s.push_str(&format!("# {path}\n"));
                    let o = ofile.map(|(_, t)| t.as_str());
                    s.push_str(&with_newline(mask_text_or_keep(text, o, side)));
                }
            }
            s
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy

fn json_text(
    key: Option<&str>,
    v: &serde_json::Value,
    other: Option<&serde_json::Value>,
    side: Side,
) -> String {
    // Mask through the YAML masker (same rules everywhere), then print as JSON.
    let masked = serde_yaml_ng::to_value(v).and_then(|y| {
        let o = other.and_then(|o| serde_yaml_ng::to_value(o).ok());
        serde_json::to_value(mask_yaml_doc(&y, o.as_ref(), side)).map_err(serde::ser::Error::custom)
    });
    let body = match masked
        .and_then(|m| serde_json::to_string_pretty(&m).map_err(serde::ser::Error::custom))
    {
        Ok(s) => s,
        Err(e) => return format!("(cannot render as JSON: {e})\n"),
    };
    match key {
        Some(k) => {
            let k = serde_json::to_string(k).unwrap_or_else(|_| format!("{k:?}"));
            format!("{k}: {body}\n")
        }
        None => format!("{body}\n"),
    }
}

/// One policy entry on one side: (label, text source).
struct PolicyItem<'a> {
    key: Option<&'a str>,
    index: Option<usize>,
    value: &'a serde_json::Value,
}

fn policy_change(
    section: &str,
    old: Option<PolicyItem<'_>>,
    new: Option<PolicyItem<'_>>,
) -> Option<Change> {
    if let (Some(o), Some(n)) = (&old, &new)
        && o.value == n.value
    {
        return None;
    }
    let shown = new.as_ref().or(old.as_ref())?;
    let key = shown.key.map(str::to_string);
    let index = shown.index;
    let label = match (&key, index) {
        (Some(k), _) => format!(
            "{section}[{}]",
            serde_json::to_string(k).unwrap_or_else(|_| format!("{k:?}"))
        ),
        (None, Some(i)) => match (&old, &new) {
            (
                Some(PolicyItem {
                    index: Some(oi), ..
                }),
                Some(_),
            ) if *oi != i => {
                format!("{section}[{oi} -> {i}]")
            }
            _ => format!("{section}[{i}]"),
        },
        (None, None) => section.to_string(),
    };
    let description = if index.is_some() {
        describe(shown.value)
    } else {
        String::new()
    };
    let before = old
        .as_ref()
        .map(|o| json_text(o.key, o.value, new.as_ref().map(|n| n.value), Side::Before));
    let after = new
        .as_ref()
        .map(|n| json_text(n.key, n.value, old.as_ref().map(|o| o.value), Side::After));
    let action = match (&old, &new) {
        (Some(_), Some(_)) => Action::Changed,
        (None, _) => Action::Added,
        (Some(_), None) => Action::Removed,
    };
    let diff = file_diff(
        (old.as_ref().map(|_| POLICY_PATH), before.as_deref()),
        (new.as_ref().map(|_| POLICY_PATH), after.as_deref()),
    );
    Some(Change {
        action,
        id: ObjectId::PolicyEntry {
            section: section.to_string(),
            key,
            index,
        },
        label,
        description,
        old_path: old.map(|_| POLICY_PATH.to_string()),
        new_path: new.map(|_| POLICY_PATH.to_string()),
        before,
        after,
        diff,
    })
}

fn match_policy(
    old: Option<&[(String, serde_json::Value)]>,
    new: Option<&[(String, serde_json::Value)]>,
) -> Vec<Change> {
    use serde_json::Value as J;
    let old = old.unwrap_or(&[]);
    let new = new.unwrap_or(&[]);
    let find = |secs: &'_ [(String, J)], name: &str| -> Option<usize> {
        secs.iter().position(|(k, _)| k == name)
    };
    let mut names: Vec<&str> = new.iter().map(|(k, _)| k.as_str()).collect();
    for (k, _) in old {
        if find(new, k).is_none() {
            names.push(k);
        }
    }
    let mut out = Vec::new();
    for name in names {
        let o = find(old, name).and_then(|i| old.get(i)).map(|(_, v)| v);
        let n = find(new, name).and_then(|i| new.get(i)).map(|(_, v)| v);
        match (o, n) {
            (Some(J::Object(_)) | None, Some(J::Object(_)) | None) => {
                let om = o.and_then(J::as_object);
                let nm = n.and_then(J::as_object);
                let mut keys: Vec<&str> = nm
                    .map(|m| m.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if let Some(om) = om {
                    for k in om.keys() {
                        if !nm.is_some_and(|m| m.contains_key(k)) {
                            keys.push(k);
                        }
                    }
                }
                for k in keys {
                    let oi = om.and_then(|m| m.get(k)).map(|value| PolicyItem {
                        key: Some(k),
                        index: None,
                        value,
                    });
                    let ni = nm.and_then(|m| m.get(k)).map(|value| PolicyItem {
                        key: Some(k),
                        index: None,
                        value,
                    });
                    out.extend(policy_change(name, oi, ni));
                }
            }
            (Some(J::Array(_)) | None, Some(J::Array(_)) | None) => {
                let empty = Vec::new();
                let oa = o.and_then(J::as_array).unwrap_or(&empty);
                let na = n.and_then(J::as_array).unwrap_or(&empty);
                for (oi, ni) in match_lists(oa, na) {
                    let o_item = oi.and_then(|i| {
                        oa.get(i).map(|value| PolicyItem {
                            key: None,
                            index: Some(i),
                            value,
                        })
                    });
                    let n_item = ni.and_then(|i| {
                        na.get(i).map(|value| PolicyItem {
                            key: None,
                            index: Some(i),
                            value,
                        })
                    });
                    out.extend(policy_change(name, o_item, n_item));
                }
            }
            _ => {
                let o_item = o.map(|value| PolicyItem {
                    key: None,
                    index: None,
                    value,
                });
                let n_item = n.map(|value| PolicyItem {
                    key: None,
                    index: None,
                    value,
                });
                out.extend(policy_change(name, o_item, n_item));
            }
        }
    }
    out
}

/// Leaves of a JSON value as `path=value` strings (array indices dropped), sorted.
fn leaves(v: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, path: &mut String, out: &mut Vec<String>) {
        use serde_json::Value as J;
        match v {
            J::Object(m) => {
                for (k, child) in m {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    walk(child, path, out);
                    path.truncate(len);
                }
            }
            J::Array(a) => {
                let len = path.len();
                path.push_str("[]");
                for child in a {
                    walk(child, path, out);
                }
                path.truncate(len);
            }
            leaf => out.push(format!("{path}={leaf}")),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut String::new(), &mut out);
    out.sort();
    out
}

/// Similarity of two list entries (0..=1): the Dice coefficient of their leaf multisets, so
/// an ACL whose `dst` changed but whose `action` and `src` stayed is 2/3 similar.
fn similarity(a: &[String], b: &[String]) -> f32 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    (2 * common) as f32 / (a.len() + b.len()) as f32
}

/// Matches two lists by position + similarity (see the crate docs). Returns the non-equal
/// pairs: `(Some(o), Some(n))` changed, `(Some(o), None)` removed, `(None, Some(n))` added.
pub(crate) fn match_lists(
    old: &[serde_json::Value],
    new: &[serde_json::Value],
) -> Vec<(Option<usize>, Option<usize>)> {
    let canon = |v: &serde_json::Value| serde_json::to_string(v).unwrap_or_default();
    let ok: Vec<String> = old.iter().map(canon).collect();
    let nk: Vec<String> = new.iter().map(canon).collect();
    let ops = capture_diff_slices(Algorithm::Myers, &ok, &nk);
    let mut out = Vec::new();
    let mut pending_old: Vec<usize> = Vec::new();
    let mut pending_new: Vec<usize> = Vec::new();
    let ol: Vec<Vec<String>> = old.iter().map(leaves).collect();
    let nl: Vec<Vec<String>> = new.iter().map(leaves).collect();
    let flush = |po: &mut Vec<usize>,
                 pn: &mut Vec<usize>,
                 out: &mut Vec<(Option<usize>, Option<usize>)>| {
        let mut j0 = 0;
        for &oi in po.iter() {
            let a = ol.get(oi).map(Vec::as_slice).unwrap_or(&[]);
            let limit = (j0 + SIMILARITY_WINDOW).min(pn.len());
            // The most similar added entry within the window (the first one on ties).
            let mut best: Option<(usize, f32)> = None;
            for j in j0..limit {
                let b = pn
                    .get(j)
                    .and_then(|&ni| nl.get(ni))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let r = similarity(a, b);
                if r >= LIST_SIMILARITY && best.is_none_or(|(_, br)| r > br) {
                    best = Some((j, r));
                }
            }
            match best {
                Some((j, _)) => {
                    for &ni in pn.get(j0..j).unwrap_or(&[]) {
                        out.push((None, Some(ni)));
                    }
                    out.push((Some(oi), pn.get(j).copied()));
                    j0 = j + 1;
                }
                None => out.push((Some(oi), None)),
            }
        }
        for &ni in pn.get(j0..).unwrap_or(&[]) {
            out.push((None, Some(ni)));
        }
        po.clear();
        pn.clear();
    };
    for op in ops {
        match op {
            DiffOp::Equal { .. } => flush(&mut pending_old, &mut pending_new, &mut out),
            DiffOp::Delete {
                old_index, old_len, ..
            } => pending_old.extend(old_index..old_index + old_len),
            DiffOp::Insert {
                new_index, new_len, ..
            } => pending_new.extend(new_index..new_index + new_len),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                pending_old.extend(old_index..old_index + old_len);
                pending_new.extend(new_index..new_index + new_len);
            }
        }
    }
    flush(&mut pending_old, &mut pending_new, &mut out);
    out
}

/// A one-line description of a list entry (ACL, grant, test, ssh rule, nodeAttr).
fn describe(v: &serde_json::Value) -> String {
    use serde_json::Value as J;
    let Some(obj) = v.as_object() else {
        return truncate(&serde_json::to_string(v).unwrap_or_default(), 100);
    };
    let list = |k: &str| -> Option<String> {
        match obj.get(k)? {
            J::Array(a) => Some(
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            J::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    };
    let mut parts = Vec::new();
    for (key, prefix) in [
        ("action", ""),
        ("src", ""),
        ("dst", "-> "),
        ("users", "as "),
        ("ip", "ip "),
        ("proto", "proto "),
        ("accept", "accept "),
        ("deny", "deny "),
        ("target", "target "),
        ("attr", "attr "),
    ] {
        if let Some(s) = list(key) {
            parts.push(format!("{prefix}{s}"));
        }
    }
    if parts.is_empty() {
        return truncate(&serde_json::to_string(v).unwrap_or_default(), 100);
    }
    truncate(&parts.join(" "), 100)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max_chars.saturating_sub(1)).collect();
    t.push('…');
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_matcher_anchors_equal_entries() {
        let old = vec![json!({"a": 1}), json!({"b": 2}), json!({"c": 3})];
        let new = vec![json!({"a": 1}), json!({"c": 3})];
        assert_eq!(match_lists(&old, &new), vec![(Some(1), None)]);
    }

    #[test]
    fn list_matcher_pairs_similar_entries_as_changes() {
        let old = vec![
            json!({"action": "accept", "src": ["group:sre"], "dst": ["tag:web:443"]}),
            json!({"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}),
        ];
        let new = vec![
            json!({"action": "accept", "src": ["group:sre"], "dst": ["tag:web:443,8443"]}),
            json!({"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}),
        ];
        assert_eq!(match_lists(&old, &new), vec![(Some(0), Some(0))]);
    }

    #[test]
    fn list_matcher_dissimilar_entries_are_remove_and_add() {
        let old = vec![json!({"action": "accept", "src": ["group:sre"], "dst": ["tag:web:443"]})];
        let new = vec![json!({"target": ["*"], "attr": ["funnel"]})];
        assert_eq!(
            match_lists(&old, &new),
            vec![(Some(0), None), (None, Some(0))]
        );
    }

    #[test]
    fn list_matcher_insert_before_changed_entry() {
        let old = vec![json!("x"), json!({"src": ["a"], "dst": ["b:1"]})];
        let new = vec![
            json!("x"),
            json!({"hosts": ["zzz"]}),
            json!({"src": ["a"], "dst": ["b:2"]}),
        ];
        assert_eq!(
            match_lists(&old, &new),
            vec![(None, Some(1)), (Some(1), Some(2))]
        );
    }

    /// A tree of text files (also the crate's other tests').
    pub(crate) fn tree(files: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        files
            .iter()
            .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn objects_match_by_identity_not_file() {
        let a = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  namespace: n\ndata:\n  k: v\n";
        let b = "apiVersion: v1\nkind: Service\nmetadata:\n  name: c\n  namespace: n\n";
        let old = tree(&[("clusters/x/one.yaml", &format!("{a}---\n{b}"))]);
        let new = tree(&[("clusters/x/two.yaml", b), ("clusters/x/three.yaml", a)]);
        let r = crate::diff_trees(&old, &new).map_err(|e| e.to_string());
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        assert!(r.is_empty(), "{r:#?}");
        assert!(!r.is_up_to_date());
        assert_eq!(r.files.len(), 3);
    }

    #[test]
    fn classify_paths() {
        assert_eq!(
            classify("clusters/a/b.yaml"),
            (GroupKind::Cluster("a".into()), "b.yaml")
        );
        assert_eq!(
            classify("clusters/a.yaml"),
            (GroupKind::Files, "clusters/a.yaml")
        );
        assert_eq!(classify("clusters//x"), (GroupKind::Files, "clusters//x"));
        assert_eq!(classify("gitops/x.yaml"), (GroupKind::Gitops, "x.yaml"));
        assert_eq!(classify("devices/l.conf"), (GroupKind::Devices, "l.conf"));
        assert_eq!(classify("README.md"), (GroupKind::Files, "README.md"));
    }

    #[test]
    fn bad_yaml_names_the_path() {
        let old = tree(&[]);
        let new = tree(&[("clusters/x/a.yaml", "a: [1\n")]);
        let e = crate::diff_trees(&old, &new).err();
        assert!(
            matches!(&e, Some(DiffError::Yaml { path, side: TreeSide::New, .. }) if path == "clusters/x/a.yaml"),
            "{e:?}"
        );
    }

    #[test]
    fn bad_policy_names_path_and_line() {
        let old = tree(&[("policy.hujson", "{\n  \"acls\": [\n    {x},\n  ]\n}\n")]);
        let e = crate::diff_trees(&old, &tree(&[])).err();
        assert!(
            matches!(
                &e,
                Some(DiffError::Policy {
                    line: 3,
                    side: TreeSide::Old,
                    ..
                })
            ),
            "{e:?}"
        );
    }
}
