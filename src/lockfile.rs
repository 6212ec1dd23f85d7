//! `tailnet.lock`: addresses, UDP ports and public keys of every node and device.
//!
//! Human-readable KDL, sorted, committed beside the spec. Only `tsk8s lock` writes it
//! ([`update`] computes the new lock; the CLI writes it); `build`, `check`, `diff` and `test`
//! read it and refuse a stale or conflicting one ([`check`]). Entries never change once given
//! (except to undo a conflict from two merged pull requests, or on `--rotate`); removed nodes
//! become tombstones so their addresses are never handed out again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use kdl::KdlValue;
use miette::SourceSpan;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{Publish, RuntimeKind, Tailnet};

pub const LOCK_VERSION: i128 = 1;
/// First UDP port for load-balancer clusters (Tailscale's default WireGuard port).
pub const FIRST_LB_PORT: u16 = 41641;
/// NodePort range.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lock {
    pub nodes: BTreeMap<String, NodeEntry>,
    pub devices: BTreeMap<String, DeviceEntry>,
    pub tombstones: Vec<Tombstone>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEntry {
    pub cluster: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub port: u16,
    pub public_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceEntry {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tombstone {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub name: String,
    pub cluster: Option<String>,
    pub port: Option<u16>,
}

/// The IPv6 address paired with an IPv4 one: `fd7a:115c:a1e0::` + the 32 IPv4 bits.
pub fn ipv6_for(v4: Ipv4Addr) -> Ipv6Addr {
    let b = u32::from(v4);
    Ipv6Addr::new(
        0xfd7a,
        0x115c,
        0xa1e0,
        0,
        0,
        0,
        (b >> 16) as u16,
        (b & 0xffff) as u16,
    )
}

fn reserved_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip == Ipv4Addr::new(100, 100, 100, 100) || (o[0] == 100 && o[1] == 115 && (o[2] & 0xfe) == 92)
}

/// Parse lock text. Errors are located in the lock file.
pub fn parse(file: &str, text: &str) -> Result<Lock, Diagnostics> {
    let mut d = Diagnostics::new(file, text);
    if let Some(at) = crate::syntax::too_deep(text) {
        d.push(crate::syntax::too_deep_diagnostic(at));
        return Err(d);
    }
    let doc = match crate::syntax::parse_kdl(text) {
        Ok(doc) => doc,
        Err(errs) => {
            // The lock is machine-written: the message is enough, without kdl's hints.
            d.items
                .extend(errs.into_iter().map(|e| Diagnostic::new(e.span, e.message)));
            return Err(d);
        }
    };
    let mut lock = Lock::default();
    let mut version_seen = false;
    for node in doc.nodes() {
        let kind = node.name().value();
        let arg = node.entries().iter().find(|e| e.name().is_none());
        let prop = |key: &str| {
            node.entries()
                .iter()
                .find(|e| e.name().is_some_and(|n| n.value() == key))
        };
        let mut bad = |span: SourceSpan, msg: String| d.push(Diagnostic::new(span, msg));
        for e in node.entries() {
            if let Some(n) = e.name() {
                let allowed: &[&str] = match kind {
                    "node" => &["cluster", "ipv4", "ipv6", "port", "public-key"],
                    "device" => &["ipv4", "ipv6"],
                    "tombstone" => &["cluster", "ipv4", "ipv6", "port"],
                    _ => &[],
                };
                if !allowed.contains(&n.value()) {
                    bad(
                        e.span(),
                        format!("unknown property `{}` on `{kind}`", n.value()),
                    );
                }
                if node
                    .entries()
                    .iter()
                    .filter(|x| x.name().is_some_and(|m| m.value() == n.value()))
                    .count()
                    > 1
                {
                    bad(e.span(), format!("property `{}` given twice", n.value()));
                }
            }
        }
        if node.children().is_some() {
            bad(node.span(), format!("`{kind}` takes no children"));
        }
        let str_prop = |key: &str, bad: &mut dyn FnMut(SourceSpan, String)| -> Option<String> {
            match prop(key) {
                Some(e) => match e.value() {
                    KdlValue::String(s) => Some(s.clone()),
                    _ => {
                        bad(e.span(), format!("`{key}` must be a string"));
                        None
                    }
                },
                None => {
                    bad(node.name().span(), format!("`{kind}` needs `{key}`"));
                    None
                }
            }
        };
        let port_prop = |bad: &mut dyn FnMut(SourceSpan, String)| -> Option<u16> {
            let e = prop("port")?;
            match e.value() {
                KdlValue::Integer(i) => match u16::try_from(*i) {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        bad(e.span(), format!("port {i} is out of range (1-65535)"));
                        None
                    }
                },
                _ => {
                    bad(e.span(), "`port` must be an integer".into());
                    None
                }
            }
        };
        match kind {
            "version" => {
                version_seen = true;
                match arg.map(|a| a.value()) {
                    Some(KdlValue::Integer(v)) if *v == LOCK_VERSION => {}
                    _ => bad(
                        node.span(),
                        format!(
                            "unsupported lock version (this tsk8s reads version {LOCK_VERSION})"
                        ),
                    ),
                }
                continue;
            }
            "node" | "device" | "tombstone" => {}
            other => {
                bad(
                    node.name().span(),
                    format!("unknown entry `{other}` in the lock"),
                );
                continue;
            }
        }
        let name = match arg.map(|a| a.value()) {
            Some(KdlValue::String(s)) => s.clone(),
            _ => {
                bad(node.name().span(), format!("`{kind}` needs a name"));
                continue;
            }
        };
        let ipv4 = str_prop("ipv4", &mut bad).and_then(|s| match s.parse::<Ipv4Addr>() {
            Ok(ip) if reserved_v4(ip) => {
                bad(
                    prop("ipv4").map(|e| e.span()).unwrap_or(node.span()),
                    format!(
                        "{ip} is reserved (100.100.100.100 and 100.115.92.0/23 are never assigned); delete this entry and run `tsk8s lock`"
                    ),
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                bad(
                    prop("ipv4").map(|e| e.span()).unwrap_or(node.span()),
                    format!("invalid IPv4 address {s:?}"),
                );
                None
            }
        });
        let ipv6 = str_prop("ipv6", &mut bad).and_then(|s| match s.parse::<Ipv6Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                bad(
                    prop("ipv6").map(|e| e.span()).unwrap_or(node.span()),
                    format!("invalid IPv6 address {s:?}"),
                );
                None
            }
        });
        match kind {
            "node" => {
                let cluster = str_prop("cluster", &mut bad);
                let key = str_prop("public-key", &mut bad).filter(|k| {
                    use base64::Engine as _;
                    let ok = base64::engine::general_purpose::STANDARD
                        .decode(k)
                        .is_ok_and(|b| b.len() == 32);
                    if !ok {
                        bad(
                            prop("public-key").map(|e| e.span()).unwrap_or(node.span()),
                            format!(
                                "invalid WireGuard public key {k:?} (expected 32 bytes in base64); restore the entry from version control, or delete it and run `tsk8s lock` to give {name:?} a new key"
                            ),
                        );
                    }
                    ok
                });
                let port = port_prop(&mut bad);
                if port.is_none() && prop("port").is_none() {
                    bad(node.name().span(), "`node` needs `port`".into());
                }
                if let (Some(cluster), Some(ipv4), Some(ipv6), Some(port), Some(public_key)) =
                    (cluster, ipv4, ipv6, port, key)
                {
                    if lock
                        .nodes
                        .insert(
                            name.clone(),
                            NodeEntry {
                                cluster,
                                ipv4,
                                ipv6,
                                port,
                                public_key,
                            },
                        )
                        .is_some()
                    {
                        bad(
                            node.span(),
                            format!(
                                "node {name:?} appears twice; run `tsk8s lock` to repair the lock"
                            ),
                        );
                    }
                }
            }
            "device" => {
                if let (Some(ipv4), Some(ipv6)) = (ipv4, ipv6) {
                    if lock
                        .devices
                        .insert(name.clone(), DeviceEntry { ipv4, ipv6 })
                        .is_some()
                    {
                        bad(
                            node.span(),
                            format!(
                                "device {name:?} appears twice; run `tsk8s lock` to repair the lock"
                            ),
                        );
                    }
                }
            }
            _ => {
                let cluster =
                    prop("cluster").and_then(|e| e.value().as_string().map(str::to_string));
                let port = port_prop(&mut bad);
                if let (Some(ipv4), Some(ipv6)) = (ipv4, ipv6) {
                    lock.tombstones.push(Tombstone {
                        ipv4,
                        ipv6,
                        name,
                        cluster,
                        port,
                    });
                }
            }
        }
    }
    if !version_seen && !doc.nodes().is_empty() {
        d.push(Diagnostic::new(
            SourceSpan::from(0..0),
            "the lock has no `version` line; run `tsk8s lock`",
        ));
    }
    if d.is_empty() {
        lock.tombstones.sort();
        Ok(lock)
    } else {
        Err(d)
    }
}

/// Render a lock: sorted, one entry per line, stable.
pub fn render(lock: &Lock) -> String {
    let mut s = String::new();
    s.push_str("// tailnet.lock: written by `tsk8s lock`. Commit it with tailnet.kdl; do not edit by hand.\n");
    s.push_str(
        "// Entries never change once assigned; removed nodes stay as tombstones so their\n",
    );
    s.push_str("// addresses are never reused.\n");
    let _ = writeln!(s, "version {LOCK_VERSION}");
    for (name, d) in &lock.devices {
        let _ = writeln!(
            s,
            "device {} ipv4=\"{}\" ipv6=\"{}\"",
            quote(name),
            d.ipv4,
            d.ipv6
        );
    }
    for (name, n) in &lock.nodes {
        let _ = writeln!(
            s,
            "node {} cluster={} ipv4=\"{}\" ipv6=\"{}\" port={} public-key={}",
            quote(name),
            quote(&n.cluster),
            n.ipv4,
            n.ipv6,
            n.port,
            quote(&n.public_key)
        );
    }
    let mut tombs = lock.tombstones.clone();
    tombs.sort();
    for t in &tombs {
        let _ = write!(s, "tombstone {}", quote(&t.name));
        if let Some(c) = &t.cluster {
            let _ = write!(s, " cluster={}", quote(c));
        }
        let _ = write!(s, " ipv4=\"{}\" ipv6=\"{}\"", t.ipv4, t.ipv6);
        if let Some(p) = t.port {
            let _ = write!(s, " port={p}");
        }
        s.push('\n');
    }
    s
}

/// Names are quoted with escapes for everything KDL cannot hold literally (a hand-edited lock
/// may carry any string; the rendered lock must parse again).
fn quote(s: &str) -> String {
    crate::syntax::kdl_quoted(s)
}

/// A problem with the lock relative to the spec. `fix` names the command that repairs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockProblem {
    pub message: String,
    /// Exposure or device name in the spec this concerns, if any (for a span).
    pub subject: Option<String>,
}

/// What `build`, `check` and `test` require of the lock: every runtime node and device has an
/// entry in the right cluster, no entry is left for something the spec no longer has, and no
/// two entries collide.
pub fn check(t: &Tailnet, lock: &Lock) -> Vec<LockProblem> {
    let mut out = Vec::new();
    let mut wanted_nodes: BTreeMap<&str, &str> = BTreeMap::new();
    for (c, e) in t.runtime_nodes() {
        wanted_nodes.insert(&e.id, &c.name);
        match lock.nodes.get(&e.id) {
            None => out.push(LockProblem {
                message: format!("{} {:?} has no entry in tailnet.lock; run `tsk8s lock`", e.kind.keyword(), e.id),
                subject: Some(e.id.clone()),
            }),
            Some(n) if n.cluster != c.name => out.push(LockProblem {
                message: format!("{:?} moved from cluster {:?} to {:?}; run `tsk8s lock` to give it a new key and port", e.id, n.cluster, c.name),
                subject: Some(e.id.clone()),
            }),
            Some(_) => {}
        }
    }
    for name in lock.nodes.keys() {
        if !wanted_nodes.contains_key(name.as_str()) {
            out.push(LockProblem {
                message: format!("tailnet.lock has node {name:?}, which the spec no longer declares; run `tsk8s lock` to tombstone it"),
                subject: None,
            });
        }
    }
    for dv in &t.devices {
        if !lock.devices.contains_key(&dv.name) {
            out.push(LockProblem {
                message: format!(
                    "device {:?} has no entry in tailnet.lock; run `tsk8s lock`",
                    dv.name
                ),
                subject: Some(dv.name.clone()),
            });
        }
    }
    for name in lock.devices.keys() {
        if !t.devices.iter().any(|d| &d.name == name) {
            out.push(LockProblem {
                message: format!("tailnet.lock has device {name:?}, which the spec no longer declares; run `tsk8s lock` to tombstone it"),
                subject: None,
            });
        }
    }
    for c in &conflicts(lock) {
        out.push(LockProblem {
            message: format!(
                "{c}; run `tsk8s lock` to reassign it (two merged changes took the same value)"
            ),
            subject: None,
        });
    }
    for (name, n) in &lock.nodes {
        if !t.ipv4_pool.contains(&n.ipv4) {
            out.push(LockProblem {
                message: format!(
                    "node {name:?} has {} outside the ipv4-pool {}; run `tsk8s lock`",
                    n.ipv4, t.ipv4_pool
                ),
                subject: None,
            });
        }
    }
    out
}

/// Colliding values: the later name (in sorted order) of each pair.
fn conflicts(lock: &Lock) -> Vec<String> {
    let mut out = Vec::new();
    let mut v4: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut v6: BTreeMap<Ipv6Addr, String> = BTreeMap::new();
    let mut ports: BTreeMap<(String, u16), String> = BTreeMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (name, d) in &lock.devices {
        if let Some(prev) = v4.insert(d.ipv4, name.clone()) {
            out.push(format!(
                "{} is assigned to both {prev:?} and {name:?}",
                d.ipv4
            ));
        }
        if let Some(prev) = v6.insert(d.ipv6, name.clone()) {
            out.push(format!(
                "{} is assigned to both {prev:?} and {name:?}",
                d.ipv6
            ));
        }
    }
    for (name, n) in &lock.nodes {
        if let Some(prev) = v4.insert(n.ipv4, name.clone()) {
            out.push(format!(
                "{} is assigned to both {prev:?} and {name:?}",
                n.ipv4
            ));
        }
        if let Some(prev) = v6.insert(n.ipv6, name.clone()) {
            out.push(format!(
                "{} is assigned to both {prev:?} and {name:?}",
                n.ipv6
            ));
        }
        if let Some(prev) = ports.insert((n.cluster.clone(), n.port), name.clone()) {
            out.push(format!(
                "UDP port {} of cluster {:?} is assigned to both {prev:?} and {name:?}",
                n.port, n.cluster
            ));
        }
        if let Some(prev) = keys.insert(n.public_key.clone(), name.clone()) {
            out.push(format!("nodes {prev:?} and {name:?} share one public key"));
        }
    }
    for t in &lock.tombstones {
        if let Some(user) = v4.get(&t.ipv4) {
            out.push(format!(
                "{} is assigned to {user:?} but was freed by {:?} (tombstone)",
                t.ipv4, t.name
            ));
        }
    }
    out
}

/// A freshly generated key for one node; the CLI delivers it through the cluster's backend.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    pub cluster: String,
    pub node: String,
    pub private_key: String,
    pub public_key: String,
    pub rotated: bool,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("cluster", &self.cluster)
            .field("node", &self.node)
            .field("public_key", &self.public_key)
            .field("private_key", &"***")
            .finish()
    }
}

#[derive(Clone, Debug, Default)]
pub struct LockUpdate {
    pub lock: Lock,
    pub new_keys: Vec<NewKey>,
    /// One line per change, for the user.
    pub changes: Vec<String>,
}

/// Options of `tsk8s lock`.
#[derive(Clone, Debug, Default)]
pub struct LockOptions {
    pub rotate: Vec<String>,
    pub remove: Vec<String>,
}

/// Compute the new lock. `keygen` returns (private, public) base64 keys; the core never
/// touches randomness itself.
pub fn update(
    t: &Tailnet,
    old: &Lock,
    opts: &LockOptions,
    keygen: &mut dyn FnMut() -> (String, String),
) -> Result<LockUpdate, String> {
    let mut lock = old.clone();
    let mut changes = Vec::new();
    let mut new_keys = Vec::new();

    let wanted: BTreeMap<String, (String, Publish)> = t
        .runtime_nodes()
        .map(|(c, e)| (e.id.clone(), (c.name.clone(), c.publish)))
        .collect();
    for r in &opts.rotate {
        if !wanted.contains_key(r) {
            return Err(format!(
                "--rotate {r:?}: no runtime node of that name in the spec"
            ));
        }
    }
    for r in &opts.remove {
        if wanted.contains_key(r) || t.devices.iter().any(|d| &d.name == r) {
            return Err(format!(
                "--remove {r:?}: it is still declared in the spec; delete it there first"
            ));
        }
        if !lock.nodes.contains_key(r) && !lock.devices.contains_key(r) {
            return Err(format!("--remove {r:?}: not in tailnet.lock"));
        }
    }

    // 1. Tombstone what the spec no longer has (and nodes that moved cluster).
    let names: Vec<String> = lock.nodes.keys().cloned().collect();
    for name in names {
        let moved = match (wanted.get(&name), lock.nodes.get(&name)) {
            (Some((c, _)), Some(n)) => *c != n.cluster,
            (None, _) => true,
            _ => false,
        };
        if moved {
            if let Some(n) = lock.nodes.remove(&name) {
                changes.push(format!(
                    "tombstoned node {name:?} ({}, {}, cluster {:?} port {})",
                    n.ipv4, n.ipv6, n.cluster, n.port
                ));
                lock.tombstones.push(Tombstone {
                    ipv4: n.ipv4,
                    ipv6: n.ipv6,
                    name,
                    cluster: Some(n.cluster),
                    port: Some(n.port),
                });
            }
        }
    }
    let dnames: Vec<String> = lock.devices.keys().cloned().collect();
    for name in dnames {
        if !t.devices.iter().any(|d| d.name == name) {
            if let Some(dv) = lock.devices.remove(&name) {
                changes.push(format!(
                    "tombstoned device {name:?} ({}, {})",
                    dv.ipv4, dv.ipv6
                ));
                lock.tombstones.push(Tombstone {
                    ipv4: dv.ipv4,
                    ipv6: dv.ipv6,
                    name,
                    cluster: None,
                    port: None,
                });
            }
        }
    }

    // 2. Undo conflicts: keep the first holder (sorted by name), reassign the others.
    let mut used_v4: BTreeSet<Ipv4Addr> = lock.tombstones.iter().map(|t| t.ipv4).collect();
    let mut used_ports: BTreeSet<(String, u16)> = lock
        .tombstones
        .iter()
        .filter_map(|t| Some((t.cluster.clone()?, t.port?)))
        .collect();
    let mut used_keys: BTreeSet<String> = BTreeSet::new();
    let mut reassign_addr: Vec<String> = Vec::new();
    let mut reassign_dev: Vec<String> = Vec::new();
    let mut reassign_port: Vec<String> = Vec::new();
    let mut rekey: Vec<String> = Vec::new();
    for (name, d) in &lock.devices {
        if !used_v4.insert(d.ipv4) || !t.ipv4_pool.contains(&d.ipv4) {
            reassign_dev.push(name.clone());
        }
    }
    for (name, n) in &lock.nodes {
        if !used_v4.insert(n.ipv4) || !t.ipv4_pool.contains(&n.ipv4) {
            reassign_addr.push(name.clone());
        }
        if !used_ports.insert((n.cluster.clone(), n.port)) {
            reassign_port.push(name.clone());
        }
        if !used_keys.insert(n.public_key.clone()) {
            rekey.push(name.clone());
        }
    }

    let mut alloc = Allocator {
        pool: t.ipv4_pool,
        next: 1,
        used: used_v4,
    };
    for name in reassign_dev {
        let ip = alloc.next_v4()?;
        if let Some(d) = lock.devices.get_mut(&name) {
            changes.push(format!(
                "reassigned device {name:?}: {} → {ip} (conflict)",
                d.ipv4
            ));
            d.ipv4 = ip;
            d.ipv6 = ipv6_for(ip);
        }
    }
    for name in reassign_addr {
        let ip = alloc.next_v4()?;
        if let Some(n) = lock.nodes.get_mut(&name) {
            changes.push(format!(
                "reassigned node {name:?}: {} → {ip} (conflict)",
                n.ipv4
            ));
            n.ipv4 = ip;
            n.ipv6 = ipv6_for(ip);
        }
    }
    for name in reassign_port {
        if let Some(n) = lock.nodes.get(&name) {
            let publish = wanted
                .get(&name)
                .map(|(_, p)| *p)
                .unwrap_or(Publish::LoadBalancer);
            let port = next_port(&n.cluster, publish, &mut used_ports)?;
            let old = n.port;
            if let Some(n) = lock.nodes.get_mut(&name) {
                n.port = port;
            }
            changes.push(format!(
                "reassigned node {name:?}: port {old} → {port} (conflict)"
            ));
        }
    }

    // 3. New devices and nodes, in spec order.
    for dv in &t.devices {
        if !lock.devices.contains_key(&dv.name) {
            let ip = alloc.next_v4()?;
            changes.push(format!(
                "added device {:?}: {ip}, {}",
                dv.name,
                ipv6_for(ip)
            ));
            lock.devices.insert(
                dv.name.clone(),
                DeviceEntry {
                    ipv4: ip,
                    ipv6: ipv6_for(ip),
                },
            );
        }
    }
    for (c, e) in t.runtime_nodes() {
        if lock.nodes.contains_key(&e.id) {
            continue;
        }
        let ip = alloc.next_v4()?;
        let port = next_port(&c.name, c.publish, &mut used_ports)?;
        let (private_key, public_key) = keygen();
        changes.push(format!(
            "added {} {:?} in cluster {:?}: {ip}, {}, port {port}",
            e.kind.keyword(),
            e.id,
            c.name,
            ipv6_for(ip)
        ));
        new_keys.push(NewKey {
            cluster: c.name.clone(),
            node: e.id.clone(),
            private_key,
            public_key: public_key.clone(),
            rotated: false,
        });
        lock.nodes.insert(
            e.id.clone(),
            NodeEntry {
                cluster: c.name.clone(),
                ipv4: ip,
                ipv6: ipv6_for(ip),
                port,
                public_key,
            },
        );
    }

    // 4. Rotations (explicit, and keys shared by two nodes).
    let mut to_rotate: Vec<String> = opts.rotate.clone();
    to_rotate.extend(rekey);
    to_rotate.sort();
    to_rotate.dedup();
    for name in to_rotate {
        if let Some(n) = lock.nodes.get_mut(&name) {
            let (private_key, public_key) = keygen();
            changes.push(format!(
                "rotated the key of {name:?} (cluster {:?})",
                n.cluster
            ));
            n.public_key = public_key.clone();
            new_keys.push(NewKey {
                cluster: n.cluster.clone(),
                node: name.clone(),
                private_key,
                public_key,
                rotated: true,
            });
        }
    }
    for r in &opts.remove {
        // Already tombstoned in step 1 (it is not in the spec).
        changes.push(format!(
            "removed {r:?}: its peers lose it on the next build"
        ));
    }
    lock.tombstones.sort();
    lock.tombstones.dedup();
    let _ = RuntimeKind::Tsk8s;
    Ok(LockUpdate {
        lock,
        new_keys,
        changes,
    })
}

struct Allocator {
    pool: ipnet::Ipv4Net,
    next: u32,
    used: BTreeSet<Ipv4Addr>,
}

impl Allocator {
    fn next_v4(&mut self) -> Result<Ipv4Addr, String> {
        let base = u32::from(self.pool.network());
        let size: u64 = 1u64 << (32 - u32::from(self.pool.prefix_len()));
        while u64::from(self.next) < size.saturating_sub(1) {
            let ip = Ipv4Addr::from(base.wrapping_add(self.next));
            self.next += 1;
            if !reserved_v4(ip) && !self.used.contains(&ip) {
                self.used.insert(ip);
                return Ok(ip);
            }
        }
        Err(format!("the ipv4-pool {} is exhausted", self.pool))
    }
}

fn next_port(
    cluster: &str,
    publish: Publish,
    used: &mut BTreeSet<(String, u16)>,
) -> Result<u16, String> {
    let (first, last) = match publish {
        Publish::LoadBalancer => (FIRST_LB_PORT, u16::MAX),
        Publish::NodePort => NODE_PORT_RANGE,
    };
    for p in first..=last {
        if used.insert((cluster.to_string(), p)) {
            return Ok(p);
        }
    }
    Err(format!("cluster {cluster:?} has no free UDP port left"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/lock/render-cr-in-name`): a name holding a carriage
    /// return (read from an escape) was rendered raw, and the written lock did not parse.
    #[test]
    fn render_escapes_what_kdl_cannot_hold() {
        let mut lock = Lock::default();
        for (i, name) in [
            "cr\rin",
            "tab\tin",
            "nl\nin",
            "nel\u{85}in",
            "ls\u{2028}in",
            "nul\u{0}in",
            "bom\u{feff}in",
            "rtl\u{202e}in",
            "q\"uote",
            "back\\slash",
            "plain",
        ]
        .into_iter()
        .enumerate()
        {
            lock.nodes.insert(
                name.to_string(),
                NodeEntry {
                    cluster: format!("c{name}"),
                    ipv4: Ipv4Addr::new(100, 64, 0, i as u8 + 1),
                    ipv6: ipv6_for(Ipv4Addr::new(100, 64, 0, i as u8 + 1)),
                    port: 41641 + i as u16,
                    public_key: "1tCZu679bpxcE6rtfWWvKoLBMHeLqKNqXKHXPigz2C0=".into(),
                },
            );
        }
        let text = render(&lock);
        match parse("tailnet.lock", &text) {
            Ok(back) => assert_eq!(back, lock, "{text}"),
            Err(d) => panic!("{}\n{text}", d.render()),
        }
        assert!(text.contains("node \"plain\" cluster=\"cplain\""), "{text}");
    }

    #[test]
    fn v6_pairs_v4() {
        assert_eq!(
            ipv6_for(Ipv4Addr::new(100, 64, 0, 1)).to_string(),
            "fd7a:115c:a1e0::6440:1"
        );
    }

    #[test]
    fn reserved() {
        assert!(reserved_v4(Ipv4Addr::new(100, 100, 100, 100)));
        assert!(reserved_v4(Ipv4Addr::new(100, 115, 93, 7)));
        assert!(!reserved_v4(Ipv4Addr::new(100, 115, 94, 0)));
    }

    #[test]
    fn round_trip() {
        let mut l = Lock::default();
        l.devices.insert(
            "a".into(),
            DeviceEntry {
                ipv4: Ipv4Addr::new(100, 64, 0, 1),
                ipv6: ipv6_for(Ipv4Addr::new(100, 64, 0, 1)),
            },
        );
        l.nodes.insert(
            "n".into(),
            NodeEntry {
                cluster: "c".into(),
                ipv4: Ipv4Addr::new(100, 64, 0, 2),
                ipv6: ipv6_for(Ipv4Addr::new(100, 64, 0, 2)),
                port: 41641,
                public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            },
        );
        l.tombstones.push(Tombstone {
            ipv4: Ipv4Addr::new(100, 64, 0, 3),
            ipv6: ipv6_for(Ipv4Addr::new(100, 64, 0, 3)),
            name: "old".into(),
            cluster: Some("c".into()),
            port: Some(41642),
        });
        let text = render(&l);
        assert_eq!(parse("tailnet.lock", &text), Ok(l));
    }
}
