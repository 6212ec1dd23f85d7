//! The "Access changes" section of a diff: who gains or loses access to what, from the access
//! model of each tree (`tsk8s_policy::access`, the one evaluator), plus the lock entries that
//! appear, disappear or change, and the ACL test results of the new spec (given by the caller).
//!
//! Each tree carries `policy.hujson` and `topology.json` (the topology the engine compiled
//! against), so two trees are compared without their specs. A flow is (source node,
//! destination node, route or the node's own addresses, protocols, ports); a node's IPv4 and
//! IPv6 count as one destination. Rows group the flows of one (who, what) pair; each names the
//! rule that grants it (in the new tree for a gained row, in the old one for a lost row).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::Serialize;
use serde_yaml_ng::Value as Yaml;
use tsk8s_policy::access::{Access, Who, changed_receivers};
use tsk8s_policy::filter::PortRange;
use tsk8s_policy::matcher::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use tsk8s_policy::policy::Policy;
use tsk8s_policy::topology::Topology;

use crate::tree::{EntryValue, POLICY_PATH, Parsed};
use crate::{Action, DiffError, GroupKind, ObjectId, TreeSide};

/// The topology file in a build's output tree.
pub const TOPOLOGY_PATH: &str = "topology.json";

/// What the caller knows about the new spec's ACL tests (`tsk8s diff` runs them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TestResults {
    /// Number of `test` entries.
    pub total: usize,
    /// Entries with at least one failure.
    pub failed: usize,
    /// One line per failure.
    pub failures: Vec<String>,
}

/// One row of gained or lost access: `who` → `what` on `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AccessRow {
    /// The source node (a device or an exposure).
    pub who: String,
    /// The source's identity in the policy: its owner's email, or its tags.
    pub identity: String,
    /// The destination node (the subnet router, for a route).
    pub what: String,
    /// The route prefix when the destination is a route, not the node itself.
    pub route: Option<String>,
    /// `443`, `80,443`, `*`, `udp:53`, `icmp` …
    pub ports: String,
    /// The rule that grants it, e.g. `acls[0] (src group:eu -> dst tag:app:443)`.
    pub rule: Option<String>,
}

impl AccessRow {
    /// `what` with its route, e.g. `eu1-services 10.96.0.0/12`.
    pub fn target(&self) -> String {
        match &self.route {
            Some(r) => format!("{} {r}", self.what),
            None => self.what.clone(),
        }
    }
}

/// A lock entry (node or device) added, removed or changed, as the trees show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockLine {
    pub action: Action,
    /// `node` or `device`.
    pub kind: &'static str,
    pub name: String,
    /// The cluster of a node.
    pub cluster: Option<String>,
    /// e.g. `100.64.0.4, fd7a:115c:a1e0::6440:4, port 30001` or `re-keyed`.
    pub detail: String,
}

/// The access section of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AccessChanges {
    /// Why access could not be compared (a tree without `topology.json`), else `None`.
    pub note: Option<String>,
    pub gained: Vec<AccessRow>,
    pub lost: Vec<AccessRow>,
    pub lock: Vec<LockLine>,
    /// The new spec's ACL tests (`None`: not run).
    pub tests: Option<TestResults>,
}

impl AccessChanges {
    pub fn is_empty(&self) -> bool {
        self.gained.is_empty() && self.lost.is_empty() && self.lock.is_empty()
    }

    /// `access: 2 gained, 1 lost`.
    pub fn summary(&self) -> String {
        format!(
            "access: {} gained, {} lost",
            self.gained.len(),
            self.lost.len()
        )
    }
}

type Tree = BTreeMap<String, Vec<u8>>;

/// `(policy, topology)` of a tree, `None` when it lacks either file.
fn model(tree: &Tree, side: TreeSide) -> Result<Option<(Policy, Topology)>, DiffError> {
    let (Some(p), Some(t)) = (tree.get(POLICY_PATH), tree.get(TOPOLOGY_PATH)) else {
        return Ok(None);
    };
    let bad = |path: &str, message: String| DiffError::Model {
        side,
        path: path.to_string(),
        message,
    };
    let text = |path: &str, b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|e| DiffError::Utf8 {
                side,
                path: path.to_string(),
                offset: e.valid_up_to(),
            })
    };
    let policy =
        Policy::parse(&text(POLICY_PATH, p)?).map_err(|e| bad(POLICY_PATH, e.to_string()))?;
    let topo = Topology::parse(&text(TOPOLOGY_PATH, t)?).map_err(|e| bad(TOPOLOGY_PATH, e))?;
    Ok(Some((policy, topo)))
}

/// (src, dst, route) of a flow.
type FlowKey = (String, String, Option<IpNet>);
/// (src, dst, route) → the (protocols, ports) allowed.
type Flows = BTreeMap<FlowKey, BTreeSet<(Vec<u8>, PortRange)>>;

/// The flows into node `dst` (none when the model has no such node).
fn flows_into(a: &Access<'_>, topo: &Topology, dst: &str) -> Flows {
    let mut out = Flows::new();
    let Some(n) = a.index(dst) else {
        return out;
    };
    let mut entries = Vec::new();
    a.into_node(n, &mut entries);
    let own = topo.nodes.get(dst).map(|n| n.ip_nets()).unwrap_or_default();
    for e in entries {
        let route = (!own.contains(&e.prefix)).then_some(e.prefix);
        let mut protos = e.protos;
        protos.sort_unstable();
        protos.dedup();
        out.entry((e.src, e.dst, route))
            .or_default()
            .insert((protos, e.ports));
    }
    out
}

fn proto_name(p: u8) -> String {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "ipv6-icmp".into(),
        n => format!("proto {n}"),
    }
}

fn ports_text(set: &BTreeSet<(Vec<u8>, PortRange)>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (protos, r) in set {
        let icmp_only = !protos.is_empty()
            && protos
                .iter()
                .all(|p| *p == PROTO_ICMP || *p == PROTO_ICMPV6);
        let ports = if *r == PortRange::ANY {
            "*".to_string()
        } else if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{}-{}", r.first, r.last)
        };
        let s = if protos.is_empty() {
            ports
        } else if icmp_only {
            protos
                .iter()
                .map(|p| proto_name(*p))
                .collect::<Vec<_>>()
                .join("+")
        } else {
            let names: Vec<String> = protos.iter().map(|p| proto_name(*p)).collect();
            format!("{}:{ports}", names.join("+"))
        };
        if !parts.contains(&s) {
            parts.push(s);
        }
    }
    parts.join(", ")
}

fn identity(topo: &Topology, node: &str) -> String {
    match topo.nodes.get(node) {
        Some(n) if n.is_tagged() => n.tags.join(","),
        Some(n) => n.user.clone().unwrap_or_default(),
        None => String::new(),
    }
}

/// Rows for the flows in `these` but not in `other`, with the rule `a` names for each.
fn rows(
    these: &Flows,
    other: &Flows,
    a: &Access<'_>,
    topo: &Topology,
    out: &mut Vec<(FlowKey, AccessRow)>,
) {
    for (key, set) in these {
        let missing: BTreeSet<(Vec<u8>, PortRange)> = match other.get(key) {
            Some(o) => set.difference(o).cloned().collect(),
            None => set.clone(),
        };
        let Some((protos, ports)) = missing.iter().next() else {
            continue;
        };
        let (src, dst, route) = key;
        let dst_ip = match route {
            Some(r) => Some(r.network()),
            None => topo.nodes.get(dst).and_then(|n| n.ips().into_iter().next()),
        };
        let proto = protos.first().copied().unwrap_or(PROTO_TCP);
        let rule = dst_ip
            .and_then(|ip| a.rule_for(Who::Node(src), ip, proto, ports.first))
            .map(|r| r.to_string());
        let row = AccessRow {
            who: src.clone(),
            identity: identity(topo, src),
            what: dst.clone(),
            route: route.map(|r| r.to_string()),
            ports: ports_text(&missing),
            rule,
        };
        out.push((key.clone(), row));
    }
}

/// (kind, cluster, facts) of every lock-backed node and device a tree shows.
type Facts = BTreeMap<String, (&'static str, Option<String>, Vec<(&'static str, String)>)>;

/// Nodes from their `node.json` ConfigMaps or their gateway's `gateway.json` (addresses,
/// UDP port, public key); devices from the
/// topology (untagged nodes with an owner; their keys stay with them).
fn facts(p: &Parsed, topo: Option<&Topology>) -> Facts {
    let mut out = Facts::new();
    for (kind, entries) in &p.groups {
        let GroupKind::Cluster(cluster) = kind else {
            continue;
        };
        for (id, e) in entries {
            let ObjectId::Kubernetes { kind, .. } = id else {
                continue;
            };
            let EntryValue::Yaml(v) = &e.value else {
                continue;
            };
            if kind != "ConfigMap" {
                continue;
            }
            let data = |key: &str| {
                v.get("data")
                    .and_then(|d| d.get(key))
                    .and_then(Yaml::as_str)
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            };
            // A node's own config, or the nodes a cluster's gateway terminates.
            let mut configs = Vec::new();
            if let Some(j) = data("node.json") {
                configs.push(j);
            }
            if let Some(serde_json::Value::Array(nodes)) =
                data("gateway.json").and_then(|mut g| g.get_mut("nodes").map(|n| n.take()))
            {
                configs.extend(nodes);
            }
            for j in configs {
                let Some(name) = j.get("name").and_then(|n| n.as_str()) else {
                    continue;
                };
                let s = |k: &str| {
                    j.get(k)
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                };
                let mut f = Vec::new();
                for (k, label) in [
                    ("ipv4", "ipv4"),
                    ("ipv6", "ipv6"),
                    ("listen_port", "port"),
                    ("public_key", "key"),
                ] {
                    if let Some(v) = s(k) {
                        f.push((label, v));
                    }
                }
                out.insert(name.to_string(), ("node", Some(cluster.clone()), f));
            }
        }
    }
    if let Some(t) = topo {
        for (name, n) in &t.nodes {
            if n.is_tagged() || n.user.is_none() || out.contains_key(name) {
                continue;
            }
            let mut f = Vec::new();
            if let Some(a) = n.ipv4 {
                f.push(("ipv4", a.to_string()));
            }
            if let Some(a) = n.ipv6 {
                f.push(("ipv6", a.to_string()));
            }
            out.insert(name.clone(), ("device", None, f));
        }
    }
    out
}

fn describe_facts(f: &[(&'static str, String)]) -> String {
    f.iter()
        .filter(|(k, _)| *k != "key")
        .map(|(k, v)| {
            if *k == "port" {
                format!("port {v}")
            } else {
                v.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lock_lines(old: &Facts, new: &Facts) -> Vec<LockLine> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let line =
            |action, (kind, cluster, _): &(&'static str, Option<String>, _), detail| LockLine {
                action,
                kind,
                name: name.clone(),
                cluster: cluster.clone(),
                detail,
            };
        match (old.get(name), new.get(name)) {
            (None, Some(n)) => out.push(line(Action::Added, n, describe_facts(&n.2))),
            (Some(o), None) => out.push(line(Action::Removed, o, describe_facts(&o.2))),
            (Some(o), Some(n)) if o.2 != n.2 => {
                let mut what = Vec::new();
                for (k, nv) in &n.2 {
                    let ov = o.2.iter().find(|(ok, _)| ok == k).map(|(_, v)| v);
                    if ov == Some(nv) {
                        continue;
                    }
                    if *k == "key" {
                        what.push("re-keyed".to_string());
                    } else {
                        let label = if *k == "port" { "port " } else { "" };
                        match ov {
                            Some(ov) => what.push(format!("{label}{ov} → {label}{nv}")),
                            None => what.push(format!("{label}{nv}")),
                        }
                    }
                }
                if !what.is_empty() {
                    out.push(line(Action::Changed, n, what.join(", ")));
                }
            }
            _ => {}
        }
    }
    out
}

/// The access section for two trees (already parsed by `diff_trees`).
pub(crate) fn compare(
    old: &Tree,
    new: &Tree,
    old_p: &Parsed,
    new_p: &Parsed,
) -> Result<AccessChanges, DiffError> {
    let om = model(old, TreeSide::Old)?;
    // The same policy and topology: the same access (only lock lines can differ).
    let same = [POLICY_PATH, TOPOLOGY_PATH]
        .iter()
        .all(|f| old.get(*f).is_some() && old.get(*f) == new.get(*f));
    let nm = if same {
        None
    } else {
        model(new, TreeSide::New)?
    };
    if same {
        return Ok(AccessChanges {
            lock: lock_lines(
                &facts(old_p, om.as_ref().map(|m| &m.1)),
                &facts(new_p, om.as_ref().map(|m| &m.1)),
            ),
            ..AccessChanges::default()
        });
    }
    let mut out = AccessChanges {
        lock: lock_lines(
            &facts(old_p, om.as_ref().map(|m| &m.1)),
            &facts(new_p, nm.as_ref().map(|m| &m.1)),
        ),
        ..AccessChanges::default()
    };
    let (Some((op, ot)), Some((np, nt))) = (&om, &nm) else {
        let which = match (&om, &nm) {
            (None, None) => "neither tree has",
            (None, _) => "the base tree has no",
            _ => "the new tree has no",
        };
        out.note = Some(format!(
            "access not compared: {which} {TOPOLOGY_PATH} and {POLICY_PATH} (built by an older tsk8s?)"
        ));
        return Ok(out);
    };
    // The two models are independent: build them on two threads.
    let (oa, na) = std::thread::scope(|s| {
        let old = s.spawn(|| Access::new(op, ot));
        let new = Access::new(np, nt);
        let old = match old.join() {
            Ok(x) => x,
            Err(p) => std::panic::resume_unwind(p),
        };
        (old, new)
    });
    // Only the nodes whose incoming flows may differ are expanded to flows, one node at a
    // time: the cost follows the change, not the whole matrix. Flows are keyed by their
    // destination, so rows from different nodes never meet; sorted by key, they come out in
    // the order of one whole-matrix comparison.
    let mut gained = Vec::new();
    let mut lost = Vec::new();
    for dst in changed_receivers(&oa, &na) {
        let of = flows_into(&oa, ot, &dst);
        let nf = flows_into(&na, nt, &dst);
        rows(&nf, &of, &na, nt, &mut gained);
        rows(&of, &nf, &oa, ot, &mut lost);
    }
    gained.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    lost.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out.gained = gained.into_iter().map(|(_, r)| r).collect();
    out.lost = lost.into_iter().map(|(_, r)| r).collect();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// rendering (every user string through `tsk8s_policy::text`)

use std::fmt::Write as _;
use tsk8s_policy::text;

/// Rows of the markdown table at most (gained first, then lost), and its bytes at most.
pub const MD_MAX_ROWS: usize = 60;
const MD_MAX_TABLE_BYTES: usize = 12 * 1024;
/// Edges of the markdown mermaid graph at most; beyond, a note counts the others.
pub const MD_MAX_EDGES: usize = 40;
/// Test failures and lock lines listed in markdown at most.
const MD_MAX_LINES: usize = 30;
/// Characters of one field at most (a rule's text can be long).
const FIELD_MAX: usize = 200;

fn esc(s: &str) -> String {
    text::bounded(&text::escape(s), FIELD_MAX).into_owned()
}

fn who_text(r: &AccessRow) -> String {
    if r.identity.is_empty() || r.identity == r.who {
        esc(&r.who)
    } else {
        format!("{} ({})", esc(&r.who), esc(&r.identity))
    }
}

fn lock_text(l: &LockLine) -> String {
    let mut s = format!("{} {} {}", l.action.sign(), l.kind, esc(&l.name));
    if let Some(c) = &l.cluster {
        let _ = write!(s, " (cluster {})", esc(c));
    }
    if !l.detail.is_empty() {
        let _ = write!(s, ": {}", esc(&l.detail));
    }
    s
}

fn tests_line(t: &TestResults) -> String {
    if t.total == 0 {
        "no tests in the new spec".into()
    } else if t.failed == 0 {
        format!("tests of the new spec: {} of {} passed", t.total, t.total)
    } else {
        format!("tests of the new spec: {} of {} failed", t.failed, t.total)
    }
}

/// The section for the text format (every row; ends with a blank line).
pub fn render_text(a: &AccessChanges) -> String {
    let mut s = String::from("Access changes\n");
    if let Some(n) = &a.note {
        let _ = writeln!(s, "  {}", esc(n));
    }
    for (title, sign, rows) in [("gained", '+', &a.gained), ("lost", '-', &a.lost)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  {title} ({}):", rows.len());
        for r in rows.iter() {
            let _ = write!(
                s,
                "    {sign} {} → {}:{}",
                who_text(r),
                esc(&r.target()),
                esc(&r.ports)
            );
            if let Some(rule) = &r.rule {
                let _ = write!(s, "  via {}", esc(rule));
            }
            s.push('\n');
        }
    }
    if a.note.is_none() && a.gained.is_empty() && a.lost.is_empty() {
        s.push_str("  no access gained or lost\n");
    }
    if let Some(t) = &a.tests {
        let _ = writeln!(s, "  {}", tests_line(t));
        for f in &t.failures {
            let _ = writeln!(s, "    {}", esc(f));
        }
    }
    if !a.lock.is_empty() {
        let _ = writeln!(s, "  lock entries ({}):", a.lock.len());
        for l in &a.lock {
            let _ = writeln!(s, "    {}", lock_text(l));
        }
    }
    s
}

/// HTML text for a markdown table cell or summary (no `|`, no tags, no line breaks).
fn md(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in esc(s).chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '|' => o.push_str("&#124;"),
            '`' => o.push_str("&#96;"),
            '*' => o.push_str("&#42;"),
            '_' => o.push_str("&#95;"),
            '[' => o.push_str("&#91;"),
            ']' => o.push_str("&#93;"),
            '@' => o.push_str("&#64;"),
            '#' => o.push_str("&#35;"),
            '\\' => o.push_str("&#92;"),
            c => o.push(c),
        }
    }
    o
}

/// A mermaid label: quoted, with only characters mermaid takes inside quotes.
fn mermaid_label(s: &str) -> String {
    let mut o = String::from("\"");
    for c in esc(s).chars() {
        match c {
            '"' => o.push_str("#quot;"),
            '<' => o.push_str("#lt;"),
            '>' => o.push_str("#gt;"),
            '#' => o.push_str("#35;"),
            '&' => o.push_str("#amp;"),
            '|' => o.push_str("#124;"),
            '`' => o.push_str("#96;"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn mermaid(a: &AccessChanges) -> String {
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut nodes = String::new();
    let mut edges = String::new();
    let mut id = |n: &str, nodes: &mut String| -> usize {
        if let Some(&k) = ids.get(n) {
            return k;
        }
        let k = ids.len();
        let _ = writeln!(nodes, "  n{k}[{}]", mermaid_label(n));
        ids.insert(n.to_string(), k);
        k
    };
    let mut lost_links = Vec::new();
    let rows = [(false, &a.gained), (true, &a.lost)];
    let edges_in = rows
        .iter()
        .flat_map(|(lost, rows)| rows.iter().map(move |r| (*lost, r)))
        .take(MD_MAX_EDGES);
    for (link, (lost, r)) in edges_in.enumerate() {
        let from = id(&r.who, &mut nodes);
        let to = id(&r.what, &mut nodes);
        let label = match &r.route {
            Some(route) => format!("{route} {}", r.ports),
            None => r.ports.clone(),
        };
        if lost {
            let _ = writeln!(
                edges,
                "  n{from} -.->|{}| n{to}",
                mermaid_label(&format!("lost {label}"))
            );
            lost_links.push(link.to_string());
        } else {
            let _ = writeln!(edges, "  n{from} -->|{}| n{to}", mermaid_label(&label));
        }
    }
    let mut s = String::from("```mermaid\ngraph LR\n");
    s.push_str(&nodes);
    s.push_str(&edges);
    if !lost_links.is_empty() {
        let _ = writeln!(s, "  linkStyle {} stroke:#d73a49", lost_links.join(","));
    }
    s.push_str("```\n");
    s
}

/// The section for a markdown comment, bounded: at most [`MD_MAX_ROWS`] rows (and
/// `MD_MAX_TABLE_BYTES`), the graph cut at [`MD_MAX_EDGES`] edges; beyond, it says so
/// and gives the counts.
pub fn render_markdown(a: &AccessChanges) -> String {
    let mut s = String::from("#### Access changes\n\n");
    if let Some(n) = &a.note {
        let _ = writeln!(s, "_{}_\n", md(n));
    }
    let _ = write!(s, "**{} gained, {} lost**", a.gained.len(), a.lost.len());
    if let Some(t) = &a.tests {
        let _ = write!(s, " · {}", tests_line(t));
    }
    if !a.lock.is_empty() {
        let _ = write!(
            s,
            " · {} lock entr{}",
            a.lock.len(),
            if a.lock.len() == 1 { "y" } else { "ies" }
        );
    }
    s.push_str("\n\n");
    let total = a.gained.len() + a.lost.len();
    if total > 0 {
        s.push_str("| | Who | What | Ports | Rule |\n| --- | --- | --- | --- | --- |\n");
        let mut shown = 0;
        let start = s.len();
        'rows: for (sign, rows) in [("➕ gained", &a.gained), ("➖ lost", &a.lost)] {
            for r in rows.iter() {
                if shown >= MD_MAX_ROWS || s.len() - start > MD_MAX_TABLE_BYTES {
                    break 'rows;
                }
                let who = if r.identity.is_empty() || r.identity == r.who {
                    format!("<code>{}</code>", md(&r.who))
                } else {
                    format!("<code>{}</code> ({})", md(&r.who), md(&r.identity))
                };
                let _ = writeln!(
                    s,
                    "| {sign} | {who} | <code>{}</code> | {} | {} |",
                    md(&r.target()),
                    md(&r.ports),
                    r.rule.as_deref().map(md).unwrap_or_default()
                );
                shown += 1;
            }
        }
        if shown < total {
            let _ = writeln!(
                s,
                "\n_{} more rows not shown ({} gained, {} lost in all): run `tsk8s diff` locally or `--format json` for every row._",
                total - shown,
                a.gained.len(),
                a.lost.len()
            );
        }
        s.push('\n');
        s.push_str(&mermaid(a));
        if total > MD_MAX_EDGES {
            let _ = writeln!(
                s,
                "\n_Graph cut at {MD_MAX_EDGES} edges: {} more changed edges not drawn ({} gained, {} lost in all)._",
                total - MD_MAX_EDGES,
                a.gained.len(),
                a.lost.len()
            );
        }
        s.push('\n');
    }
    if let Some(t) = &a.tests
        && !t.failures.is_empty()
    {
        let _ = writeln!(s, "<details><summary>{}</summary>\n", md(&tests_line(t)));
        for f in t.failures.iter().take(MD_MAX_LINES) {
            let _ = writeln!(s, "- {}", md(f));
        }
        if t.failures.len() > MD_MAX_LINES {
            let _ = writeln!(s, "- … {} more", t.failures.len() - MD_MAX_LINES);
        }
        s.push_str("\n</details>\n\n");
    }
    if !a.lock.is_empty() {
        s.push_str("Lock entries:\n\n");
        for l in a.lock.iter().take(MD_MAX_LINES) {
            let _ = writeln!(s, "- {}", md(&lock_text(l)));
        }
        if a.lock.len() > MD_MAX_LINES {
            let _ = writeln!(s, "- … {} more", a.lock.len() - MD_MAX_LINES);
        }
        s.push('\n');
    }
    let end = s.trim_end().len();
    s.truncate(end);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> AccessChanges {
        let row = AccessRow {
            who: "evil\u{1b}[31m".into(),
            identity: "x@y|<script>`".into(),
            what: "db\n::error::pwned".into(),
            route: None,
            ports: "*".into(),
            rule: Some("acls[0] (##[group]x)".into()),
        };
        AccessChanges {
            gained: vec![row.clone()],
            lost: vec![row],
            lock: vec![LockLine {
                action: Action::Added,
                kind: "node",
                name: "n\u{202e}x".into(),
                cluster: Some("c\r".into()),
                detail: String::new(),
            }],
            ..AccessChanges::default()
        }
    }

    #[test]
    fn user_text_is_escaped_in_every_format() {
        let a = hostile();
        let t = render_text(&a);
        assert!(!t.contains('\u{1b}') && !t.contains('\u{202e}') && !t.contains('\r'));
        assert!(t.contains("db\\n::error::pwned"), "{t}");
        let m = render_markdown(&a);
        assert!(!m.contains('\u{1b}') && !m.contains("<script>") && !m.contains("##["));
        // No cell can break the table: each row line has its 6 separators.
        for line in m
            .lines()
            .filter(|l| l.starts_with("| ➕") || l.starts_with("| ➖"))
        {
            assert_eq!(line.matches('|').count(), 6, "{line}");
        }
        // Mermaid labels stay inside their quotes.
        let graph = m.split("```mermaid").nth(1).unwrap_or_default();
        for line in graph.lines().filter(|l| l.contains('[')) {
            assert_eq!(line.matches('"').count(), 2, "{line}");
        }
    }

    #[test]
    fn markdown_budget_says_how_many_more() {
        let row = |i: usize| AccessRow {
            who: format!("dev{i}"),
            identity: String::new(),
            what: "db".into(),
            route: None,
            ports: "5432".into(),
            rule: None,
        };
        let a = AccessChanges {
            gained: (0..100).map(row).collect(),
            ..AccessChanges::default()
        };
        let m = render_markdown(&a);
        assert!(m.contains("40 more rows not shown"), "{m}");
        assert!(m.contains("Graph cut at 40 edges: 60 more changed edges not drawn"));
        let graph = m.split("```mermaid").nth(1).unwrap_or_default();
        assert_eq!(graph.matches("-->").count(), 40);
        assert!(m.len() < 16 * 1024);
        let small = AccessChanges {
            gained: (0..3).map(row).collect(),
            ..AccessChanges::default()
        };
        assert!(render_markdown(&small).contains("```mermaid\ngraph LR\n"));
    }
}
