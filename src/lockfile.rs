//! `tailnet.lock`: addresses, UDP ports and public keys of every node and device.
//!
//! Human-readable KDL, sorted, committed beside the spec. Only `tsk8s lock` writes it
//! ([`update`] computes the new lock; the CLI writes it); `build`, `check`, `diff` and `test`
//! read it and refuse a stale or conflicting one ([`check`]). Entries never change once given
//! (except to undo a conflict from two merged pull requests, or on `--rotate`); removed nodes
//! become tombstones so their addresses are never handed out again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kdl::KdlValue;
use miette::SourceSpan;

use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{ExposureKind, Publish, RuntimeKind, Tailnet};

pub const LOCK_VERSION: i128 = 1;
/// First UDP port for load-balancer clusters (Tailscale's default WireGuard port).
pub const FIRST_LB_PORT: u16 = 41641;
/// NodePort range.
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

#[derive(Clone, Debug, Default)]
pub struct Lock {
    pub nodes: BTreeMap<String, NodeEntry>,
    pub devices: BTreeMap<String, DeviceEntry>,
    pub tombstones: Vec<Tombstone>,
    /// Where [`parse`] read each entry, so [`check`] can point into the lock. Not part of the
    /// lock's value (equality ignores it); empty for a lock not read from text.
    pub spans: LockSpans,
}

impl PartialEq for Lock {
    fn eq(&self, other: &Lock) -> bool {
        self.nodes == other.nodes
            && self.devices == other.devices
            && self.tombstones == other.tombstones
    }
}

impl Eq for Lock {}

/// Spans of the entries of a parsed lock.
#[derive(Clone, Debug, Default)]
pub struct LockSpans {
    pub nodes: BTreeMap<String, EntrySpans>,
    pub devices: BTreeMap<String, EntrySpans>,
    /// Parallel to [`Lock::tombstones`] (sorted).
    pub tombstones: Vec<EntrySpans>,
}

/// Spans of one lock entry: its name and the properties [`check`] may point at (the entry
/// where one is missing).
#[derive(Clone, Copy, Debug)]
pub struct EntrySpans {
    pub name: SourceSpan,
    pub ipv4: SourceSpan,
    pub ipv6: SourceSpan,
    pub port: SourceSpan,
    pub public_key: SourceSpan,
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

/// What the addresses of live entries must avoid in one tailnet: the one owner of "may this
/// address be given out", used by the allocator of [`update`] and by [`check`]. An address
/// must lie inside the `ipv4-pool` and not be its network or broadcast address (the allocator
/// never gives those out), nor reserved, nor inside any cluster's pod or Service CIDR or any
/// subnet route (IPv6 too: the paired address must avoid IPv6 CIDRs and routes).
pub struct Assignable {
    pool: ipnet::Ipv4Net,
    avoid: Vec<(IpNet, String)>,
    /// The union of `avoid`, so an address outside all of them is answered by one binary
    /// search, not a scan of every cluster's CIDRs and routes (the scan was ~7 % of a
    /// 1,000-cluster build, in its sequential part).
    avoid_any: tsk8s_policy::ipset::IpSet,
}

impl Assignable {
    pub fn new(t: &Tailnet) -> Assignable {
        let mut avoid = Vec::new();
        for c in &t.clusters {
            for (net, what) in [(c.pod_cidr, "pod-cidr"), (c.service_cidr, "service-cidr")] {
                if let Some(net) = net {
                    avoid.push((net, format!("the {what} {net} of cluster {:?}", c.name)));
                }
            }
            for e in &c.exposures {
                if let ExposureKind::SubnetRouter { routes } = &e.kind {
                    for r in routes {
                        avoid.push((*r, format!("the route {r} of subnet router {:?}", e.id)));
                    }
                }
            }
        }
        let avoid_any = tsk8s_policy::ipset::IpSet::from_nets(avoid.iter().map(|(n, _)| n));
        Assignable {
            pool: t.ipv4_pool,
            avoid,
            avoid_any,
        }
    }

    /// Why `ip` can never be a live entry's address here (`None`: it can).
    pub fn why_not(&self, ip: IpAddr) -> Option<String> {
        if let IpAddr::V4(v4) = ip {
            if !self.pool.contains(&v4) {
                return Some(format!("outside the ipv4-pool {}", self.pool));
            }
            if v4 == self.pool.network() {
                return Some(format!(
                    "the network address of the ipv4-pool {}",
                    self.pool
                ));
            }
            if v4 == self.pool.broadcast() {
                return Some(format!(
                    "the broadcast address of the ipv4-pool {}",
                    self.pool
                ));
            }
            if reserved_v4(v4) {
                return Some(
                    "reserved (100.100.100.100 and 100.115.92.0/23 are never assigned)".into(),
                );
            }
        }
        if !self.avoid_any.contains(ip) {
            return None;
        }
        self.avoid
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, what)| format!("inside {what}"))
    }

    /// The last address of an avoided IPv4 network holding `ip`, so the allocator steps over
    /// a whole pod CIDR at once.
    fn avoided_until(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        if !self.avoid_any.contains(IpAddr::V4(ip)) {
            return None;
        }
        self.avoid.iter().find_map(|(net, _)| match net {
            IpNet::V4(n) if n.contains(&ip) => Some(n.broadcast()),
            _ => None,
        })
    }

    /// Both addresses of an entry are assignable.
    fn fits(&self, v4: Ipv4Addr, v6: Ipv6Addr) -> bool {
        self.why_not(IpAddr::V4(v4)).is_none() && self.why_not(IpAddr::V6(v6)).is_none()
    }
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
    let mut tombstones: Vec<(Tombstone, EntrySpans)> = Vec::new();
    let mut version_seen = false;
    for node in doc.nodes() {
        let entry = LockLine::new(node);
        entry.check_shape(&mut d);
        match entry.kind {
            "version" => {
                version_seen = true;
                entry.check_version(&mut d);
                continue;
            }
            "node" | "device" | "tombstone" => {}
            other => {
                bad(
                    &mut d,
                    node.name().span(),
                    format!("unknown entry `{other}` in the lock"),
                );
                continue;
            }
        }
        let Some(name) = entry.name(&mut d) else {
            continue;
        };
        let spans = entry.spans();
        let (ipv4, ipv6) = entry.addresses(&spans, &mut d);
        match entry.kind {
            "node" => {
                if let Some(e) = entry.node_entry(&name, ipv4, ipv6, &mut d) {
                    lock.spans.nodes.entry(name.clone()).or_insert(spans);
                    if lock.nodes.insert(name.clone(), e).is_some() {
                        bad(
                            &mut d,
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
                    lock.spans.devices.entry(name.clone()).or_insert(spans);
                    if lock
                        .devices
                        .insert(name.clone(), DeviceEntry { ipv4, ipv6 })
                        .is_some()
                    {
                        bad(
                            &mut d,
                            node.span(),
                            format!(
                                "device {name:?} appears twice; run `tsk8s lock` to repair the lock"
                            ),
                        );
                    }
                }
            }
            _ => {
                if let Some(t) = entry.tombstone(name, ipv4, ipv6, &mut d) {
                    tombstones.push((t, spans));
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
        // Sorted as `render` writes them; the spans stay beside their tombstones.
        tombstones.sort_by(|a, b| a.0.cmp(&b.0));
        (lock.tombstones, lock.spans.tombstones) = tombstones.into_iter().unzip();
        Ok(lock)
    } else {
        Err(d)
    }
}

/// Report a problem at `span` of the lock.
fn bad(d: &mut Diagnostics, span: SourceSpan, msg: String) {
    d.push(Diagnostic::new(span, msg));
}

/// One line of the lock being parsed (`version`, `node`, `device` or `tombstone`).
struct LockLine<'a> {
    node: &'a kdl::KdlNode,
    kind: &'a str,
    arg: Option<&'a kdl::KdlEntry>,
}

impl<'a> LockLine<'a> {
    fn new(node: &'a kdl::KdlNode) -> Self {
        LockLine {
            node,
            kind: node.name().value(),
            arg: node.entries().iter().find(|e| e.name().is_none()),
        }
    }

    fn prop(&self, key: &str) -> Option<&'a kdl::KdlEntry> {
        self.node
            .entries()
            .iter()
            .find(|e| e.name().is_some_and(|n| n.value() == key))
    }

    /// Where property `key` is, or the whole line without it.
    fn span_of(&self, key: &str) -> SourceSpan {
        self.prop(key).map(|e| e.span()).unwrap_or(self.node.span())
    }

    /// Only the kind's properties, each once, and no children.
    fn check_shape(&self, d: &mut Diagnostics) {
        let (node, kind) = (self.node, self.kind);
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
                        d,
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
                    bad(d, e.span(), format!("property `{}` given twice", n.value()));
                }
            }
        }
        if node.children().is_some() {
            bad(d, node.span(), format!("`{kind}` takes no children"));
        }
    }

    fn check_version(&self, d: &mut Diagnostics) {
        match self.arg.map(|a| a.value()) {
            Some(KdlValue::Integer(v)) if *v == LOCK_VERSION => {}
            _ => bad(
                d,
                self.node.span(),
                format!("unsupported lock version (this tsk8s reads version {LOCK_VERSION})"),
            ),
        }
    }

    /// A required string property.
    fn str_prop(&self, key: &str, d: &mut Diagnostics) -> Option<String> {
        match self.prop(key) {
            Some(e) => match e.value() {
                KdlValue::String(s) => Some(s.clone()),
                _ => {
                    bad(d, e.span(), format!("`{key}` must be a string"));
                    None
                }
            },
            None => {
                bad(
                    d,
                    self.node.name().span(),
                    format!("`{}` needs `{key}`", self.kind),
                );
                None
            }
        }
    }

    /// The `port` property, if any: 1-65535.
    fn port_prop(&self, d: &mut Diagnostics) -> Option<u16> {
        let e = self.prop("port")?;
        match e.value() {
            KdlValue::Integer(i) => match u16::try_from(*i) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    bad(d, e.span(), format!("port {i} is out of range (1-65535)"));
                    None
                }
            },
            _ => {
                bad(d, e.span(), "`port` must be an integer".into());
                None
            }
        }
    }

    /// The entry's name (reported as bad but still returned if it breaks the spec's rules),
    /// its `cluster` property checked by the same rules.
    fn name(&self, d: &mut Diagnostics) -> Option<String> {
        let kind = self.kind;
        let name = match self.arg.map(|a| a.value()) {
            Some(KdlValue::String(s)) => s.clone(),
            _ => {
                bad(d, self.node.name().span(), format!("`{kind}` needs a name"));
                return None;
            }
        };
        // Lock names become file names (`<dir>/<node>.sops.yaml`), object names and DNS
        // names, so they follow the spec's rules (one owner: `resolve`). A tombstone is of a
        // node or a device: the wider device rule.
        let name_rule = match kind {
            "node" => crate::resolve::check_exposure_name(&name),
            _ => crate::resolve::check_device_name(&name),
        };
        if let Err(e) = name_rule {
            bad(
                d,
                self.name_span(),
                format!(
                    "{kind} name {name:?} {e}; names in tailnet.lock follow the spec's rules (`tsk8s lock` never writes this): restore tailnet.lock from version control"
                ),
            );
        }
        if let Some(e) = self.prop("cluster")
            && let KdlValue::String(c) = e.value()
            && let Err(msg) = crate::resolve::check_cluster_name(c)
        {
            bad(
                d,
                e.span(),
                format!(
                    "cluster name {c:?} {msg}; names in tailnet.lock follow the spec's rules (`tsk8s lock` never writes this): restore tailnet.lock from version control"
                ),
            );
        }
        Some(name)
    }

    fn name_span(&self) -> SourceSpan {
        self.arg.map(|a| a.span()).unwrap_or(self.node.span())
    }

    fn spans(&self) -> EntrySpans {
        EntrySpans {
            name: self.name_span(),
            ipv4: self.span_of("ipv4"),
            ipv6: self.span_of("ipv6"),
            port: self.span_of("port"),
            public_key: self.span_of("public-key"),
        }
    }

    /// The entry's IPv4 and IPv6 addresses, each valid, and paired as `tsk8s lock` gives them.
    fn addresses(
        &self,
        spans: &EntrySpans,
        d: &mut Diagnostics,
    ) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let ipv4 = self
            .str_prop("ipv4", d)
            .and_then(|s| match s.parse::<Ipv4Addr>() {
                Ok(ip) if reserved_v4(ip) => {
                    bad(
                        d,
                        self.span_of("ipv4"),
                        format!(
                            "{ip} is reserved (100.100.100.100 and 100.115.92.0/23 are never assigned); delete this entry and run `tsk8s lock`"
                        ),
                    );
                    None
                }
                Ok(ip) => Some(ip),
                Err(_) => {
                    bad(
                        d,
                        self.span_of("ipv4"),
                        format!("invalid IPv4 address {s:?}"),
                    );
                    None
                }
            });
        let ipv6 = self
            .str_prop("ipv6", d)
            .and_then(|s| match s.parse::<Ipv6Addr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    bad(
                        d,
                        self.span_of("ipv6"),
                        format!("invalid IPv6 address {s:?}"),
                    );
                    None
                }
            });
        // Every address pairs as `tsk8s lock` gives them out: fd7a:115c:a1e0:: + the IPv4 bits
        // (so IPv6 stays inside the tailnet's range and is unique exactly when IPv4 is).
        if let (Some(v4), Some(v6)) = (ipv4, ipv6) {
            let want = ipv6_for(v4);
            if v6 != want {
                let fix = if self.kind == "tombstone" {
                    "restore the entry from version control"
                } else {
                    "restore the entry from version control, or delete it and run `tsk8s lock` to give it new addresses"
                };
                let range = crate::model::TAILNET_V6;
                let what = if range.contains(&v6) {
                    format!("{v6} does not pair with ipv4 {v4}")
                } else {
                    format!("{v6} is outside the tailnet's IPv6 range {range}")
                };
                bad(
                    d,
                    spans.ipv6,
                    format!(
                        "{what}: the ipv6 of an entry is fd7a:115c:a1e0:: + the 32 bits of its ipv4 ({want}); {fix}"
                    ),
                );
            }
        }
        (ipv4, ipv6)
    }

    /// A `node` line: its cluster, key and port besides the addresses.
    fn node_entry(
        &self,
        name: &str,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        d: &mut Diagnostics,
    ) -> Option<NodeEntry> {
        let cluster = self.str_prop("cluster", d);
        let key = self.str_prop("public-key", d).filter(|k| {
            use base64::Engine as _;
            let ok = base64::engine::general_purpose::STANDARD
                .decode(k)
                .is_ok_and(|b| b.len() == 32);
            if !ok {
                bad(
                    d,
                    self.span_of("public-key"),
                    format!(
                        "invalid WireGuard public key {k:?} (expected 32 bytes in base64); restore the entry from version control, or delete it and run `tsk8s lock` to give {name:?} a new key"
                    ),
                );
            }
            ok
        });
        let port = self.port_prop(d);
        if port.is_none() && self.prop("port").is_none() {
            bad(d, self.node.name().span(), "`node` needs `port`".into());
        }
        Some(NodeEntry {
            cluster: cluster?,
            ipv4: ipv4?,
            ipv6: ipv6?,
            port: port?,
            public_key: key?,
        })
    }

    /// A `tombstone` line: the addresses, and the cluster and port it had, if a node's.
    fn tombstone(
        &self,
        name: String,
        ipv4: Option<Ipv4Addr>,
        ipv6: Option<Ipv6Addr>,
        d: &mut Diagnostics,
    ) -> Option<Tombstone> {
        let cluster = match self.prop("cluster") {
            None => None,
            Some(e) => match e.value() {
                KdlValue::String(c) => Some(c.clone()),
                _ => {
                    bad(d, e.span(), "`cluster` must be a string".into());
                    None
                }
            },
        };
        let port = self.port_prop(d);
        Some(Tombstone {
            ipv4: ipv4?,
            ipv6: ipv6?,
            name,
            cluster,
            port,
        })
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

/// A problem with the lock relative to the spec; the message names the command that repairs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockProblem {
    pub message: String,
    /// Exposure or device name in the spec this concerns, if any (for a span in the spec).
    pub subject: Option<String>,
    /// Where in the lock, for a problem with an entry (when the lock was read from text).
    pub at: Option<SourceSpan>,
}

/// What `build`, `check` and `test` require of the lock: every runtime node and device has an
/// entry in the right cluster, no entry is left for something the spec no longer has, every
/// address is one `tsk8s lock` could have given out ([`Assignable`]), and no two entries
/// collide (tombstones included).
pub fn check(t: &Tailnet, lock: &Lock) -> Vec<LockProblem> {
    let mut out = Vec::new();
    let node_at = |name: &str, f: fn(&EntrySpans) -> SourceSpan| lock.spans.nodes.get(name).map(f);
    let device_at =
        |name: &str, f: fn(&EntrySpans) -> SourceSpan| lock.spans.devices.get(name).map(f);
    let mut wanted_nodes: BTreeMap<&str, &str> = BTreeMap::new();
    for (c, e) in t.runtime_nodes() {
        wanted_nodes.insert(&e.id, &c.name);
        match lock.nodes.get(&e.id) {
            None => out.push(LockProblem {
                message: format!("{} {:?} has no entry in tailnet.lock; run `tsk8s lock`", e.kind.keyword(), e.id),
                subject: Some(e.id.clone()),
                at: None,
            }),
            Some(n) if n.cluster != c.name => out.push(LockProblem {
                message: format!("{:?} moved from cluster {:?} to {:?}; run `tsk8s lock` to give it a new key and port", e.id, n.cluster, c.name),
                subject: Some(e.id.clone()),
                at: None,
            }),
            Some(_) => {}
        }
    }
    for name in lock.nodes.keys() {
        if !wanted_nodes.contains_key(name.as_str()) {
            out.push(LockProblem {
                message: format!("tailnet.lock has node {name:?}, which the spec no longer declares; run `tsk8s lock` to tombstone it"),
                subject: None,
                at: node_at(name, |s| s.name),
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
                at: None,
            });
        }
    }
    for name in lock.devices.keys() {
        if !t.devices.iter().any(|d| &d.name == name) {
            out.push(LockProblem {
                message: format!("tailnet.lock has device {name:?}, which the spec no longer declares; run `tsk8s lock` to tombstone it"),
                subject: None,
                at: device_at(name, |s| s.name),
            });
        }
    }
    for (message, at) in conflicts(lock) {
        out.push(LockProblem {
            message: format!(
                "{message}; run `tsk8s lock` to reassign it (two merged changes took the same value)"
            ),
            subject: None,
            at,
        });
    }
    let ok = Assignable::new(t);
    let mut addresses =
        |kind: &str, name: &str, v4: Ipv4Addr, v6: Ipv6Addr, at: Option<&EntrySpans>| {
            // One problem per entry: the IPv6 is paired with the IPv4 (checked by `parse`).
            let bad = [
                (IpAddr::V4(v4), at.map(|s| s.ipv4)),
                (IpAddr::V6(v6), at.map(|s| s.ipv6)),
            ]
            .into_iter()
            .find_map(|(ip, span)| Some((ip, span, ok.why_not(ip)?)));
            if let Some((ip, span, why)) = bad {
                out.push(LockProblem {
                    message: format!(
                        "{kind} {name:?} has {ip}, {why}; run `tsk8s lock` to give it new addresses"
                    ),
                    subject: None,
                    at: span,
                });
            }
        };
    for (name, d) in &lock.devices {
        addresses("device", name, d.ipv4, d.ipv6, lock.spans.devices.get(name));
    }
    for (name, n) in &lock.nodes {
        addresses("node", name, n.ipv4, n.ipv6, lock.spans.nodes.get(name));
    }
    out
}

/// Colliding values, each at the later entry (in the lock's order) of its pair.
fn conflicts(lock: &Lock) -> Vec<(String, Option<SourceSpan>)> {
    let mut out = Vec::new();
    let mut v4: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut v6: BTreeMap<Ipv6Addr, String> = BTreeMap::new();
    let mut ports: BTreeMap<(String, u16), String> = BTreeMap::new();
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for (name, d) in &lock.devices {
        let at = lock.spans.devices.get(name);
        addr_conflict(&mut out, &mut v4, &mut v6, name, d.ipv4, d.ipv6, at);
    }
    for (name, n) in &lock.nodes {
        let at = lock.spans.nodes.get(name);
        addr_conflict(&mut out, &mut v4, &mut v6, name, n.ipv4, n.ipv6, at);
        if let Some(prev) = ports.insert((n.cluster.clone(), n.port), name.clone()) {
            out.push((
                format!(
                    "UDP port {} of cluster {:?} is assigned to both {prev:?} and {name:?}",
                    n.port, n.cluster
                ),
                at.map(|s| s.port),
            ));
        }
        if let Some(prev) = keys.insert(n.public_key.clone(), name.clone()) {
            out.push((
                format!("nodes {prev:?} and {name:?} share one public key"),
                at.map(|s| s.public_key),
            ));
        }
    }
    // A tombstone keeps its addresses from ever being given out again. (Two tombstones may
    // share them: `lock` tombstones both holders of a conflict when both leave the spec.)
    for (i, t) in lock.tombstones.iter().enumerate() {
        let at = lock.spans.tombstones.get(i);
        if let Some(user) = v4.get(&t.ipv4) {
            out.push((
                format!(
                    "{} is assigned to {user:?} but was freed by {:?} (tombstone)",
                    t.ipv4, t.name
                ),
                at.map(|s| s.ipv4),
            ));
        } else if let Some(user) = v6.get(&t.ipv6) {
            out.push((
                format!(
                    "{} is assigned to {user:?} but was freed by {:?} (tombstone)",
                    t.ipv6, t.name
                ),
                at.map(|s| s.ipv6),
            ));
        }
    }
    out
}

/// Record an entry's addresses; one problem if either is taken (the IPv4 first: the IPv6 is
/// paired with it, so they collide together).
fn addr_conflict(
    out: &mut Vec<(String, Option<SourceSpan>)>,
    v4: &mut BTreeMap<Ipv4Addr, String>,
    v6: &mut BTreeMap<Ipv6Addr, String>,
    name: &str,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    at: Option<&EntrySpans>,
) {
    let prev4 = v4.insert(ipv4, name.to_string());
    let prev6 = v6.insert(ipv6, name.to_string());
    if let Some(prev) = prev4 {
        out.push((
            format!("{ipv4} is assigned to both {prev:?} and {name:?}"),
            at.map(|s| s.ipv4),
        ));
    } else if let Some(prev) = prev6 {
        out.push((
            format!("{ipv6} is assigned to both {prev:?} and {name:?}"),
            at.map(|s| s.ipv6),
        ));
    }
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
    let wanted: BTreeMap<String, (String, Publish)> = t
        .runtime_nodes()
        .map(|(c, e)| (e.id.clone(), (c.name.clone(), c.publish)))
        .collect();
    check_options(t, old, opts, &wanted)?;
    let mut u = LockUpdater {
        t,
        wanted,
        lock: old.clone(),
        changes: Vec::new(),
        new_keys: Vec::new(),
        alloc: Allocator {
            assignable: Assignable::new(t),
            next: 1,
            used: BTreeSet::new(),
        },
        used_ports: BTreeSet::new(),
    };

    // 1. Tombstone what the spec no longer has (and nodes that moved cluster).
    u.tombstone_nodes();
    u.tombstone_devices();
    // 2. Undo conflicts: keep the first holder (sorted by name), reassign the others.
    let rekey = u.undo_conflicts()?;
    // 3. New devices and nodes, in spec order.
    u.add_devices()?;
    u.add_nodes(keygen)?;
    // 4. Rotations (explicit, and keys shared by two nodes).
    let mut to_rotate: Vec<String> = opts.rotate.clone();
    to_rotate.extend(rekey);
    to_rotate.sort();
    to_rotate.dedup();
    u.rotate(to_rotate, keygen);

    let LockUpdater {
        mut lock,
        mut changes,
        new_keys,
        ..
    } = u;
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

/// `--rotate` names a runtime node of the spec; `--remove` one in the lock but not the spec.
fn check_options(
    t: &Tailnet,
    lock: &Lock,
    opts: &LockOptions,
    wanted: &BTreeMap<String, (String, Publish)>,
) -> Result<(), String> {
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
    Ok(())
}

/// The lock being updated, with what [`update`] reports and what it has handed out.
struct LockUpdater<'a> {
    t: &'a Tailnet,
    /// Each runtime node of the spec: its cluster and how the cluster publishes it.
    wanted: BTreeMap<String, (String, Publish)>,
    lock: Lock,
    changes: Vec<String>,
    new_keys: Vec<NewKey>,
    /// Addresses in use (filled by [`LockUpdater::undo_conflicts`]).
    alloc: Allocator,
    /// `(cluster, port)` in use (filled by [`LockUpdater::undo_conflicts`]).
    used_ports: BTreeSet<(String, u16)>,
}

impl LockUpdater<'_> {
    /// Nodes the spec no longer has, or that moved cluster, become tombstones.
    fn tombstone_nodes(&mut self) {
        let lock = &mut self.lock;
        let names: Vec<String> = lock.nodes.keys().cloned().collect();
        for name in names {
            let moved = match (self.wanted.get(&name), lock.nodes.get(&name)) {
                (Some((c, _)), Some(n)) => *c != n.cluster,
                (None, _) => true,
                _ => false,
            };
            if moved && let Some(n) = lock.nodes.remove(&name) {
                self.changes.push(format!(
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

    /// Devices the spec no longer has become tombstones.
    fn tombstone_devices(&mut self) {
        let lock = &mut self.lock;
        let dnames: Vec<String> = lock.devices.keys().cloned().collect();
        for name in dnames {
            if !self.t.devices.iter().any(|d| d.name == name)
                && let Some(dv) = lock.devices.remove(&name)
            {
                self.changes.push(format!(
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

    /// Record every address and port in use; give entries that share one (or hold an address
    /// no longer assignable) new ones. Returns the nodes that share a key, to rotate.
    fn undo_conflicts(&mut self) -> Result<Vec<String>, String> {
        let lock = &self.lock;
        let used_v4 = &mut self.alloc.used;
        used_v4.extend(lock.tombstones.iter().map(|t| t.ipv4));
        self.used_ports.extend(
            lock.tombstones
                .iter()
                .filter_map(|t| Some((t.cluster.clone()?, t.port?))),
        );
        let mut used_keys: BTreeSet<String> = BTreeSet::new();
        let mut reassign_addr: Vec<String> = Vec::new();
        let mut reassign_dev: Vec<String> = Vec::new();
        let mut reassign_port: Vec<String> = Vec::new();
        let mut rekey: Vec<String> = Vec::new();
        let assignable = &self.alloc.assignable;
        for (name, d) in &lock.devices {
            if !used_v4.insert(d.ipv4) || !assignable.fits(d.ipv4, d.ipv6) {
                reassign_dev.push(name.clone());
            }
        }
        for (name, n) in &lock.nodes {
            if !used_v4.insert(n.ipv4) || !assignable.fits(n.ipv4, n.ipv6) {
                reassign_addr.push(name.clone());
            }
            if !self.used_ports.insert((n.cluster.clone(), n.port)) {
                reassign_port.push(name.clone());
            }
            if !used_keys.insert(n.public_key.clone()) {
                rekey.push(name.clone());
            }
        }
        self.reassign(reassign_dev, reassign_addr, reassign_port)?;
        Ok(rekey)
    }

    /// New addresses for the `devices` and `nodes`, new ports for the `ports` nodes.
    fn reassign(
        &mut self,
        devices: Vec<String>,
        nodes: Vec<String>,
        ports: Vec<String>,
    ) -> Result<(), String> {
        let lock = &mut self.lock;
        for name in devices {
            let ip = self.alloc.next_v4()?;
            if let Some(d) = lock.devices.get_mut(&name) {
                self.changes.push(format!(
                    "reassigned device {name:?}: {} → {ip} (conflict)",
                    d.ipv4
                ));
                d.ipv4 = ip;
                d.ipv6 = ipv6_for(ip);
            }
        }
        for name in nodes {
            let ip = self.alloc.next_v4()?;
            if let Some(n) = lock.nodes.get_mut(&name) {
                self.changes.push(format!(
                    "reassigned node {name:?}: {} → {ip} (conflict)",
                    n.ipv4
                ));
                n.ipv4 = ip;
                n.ipv6 = ipv6_for(ip);
            }
        }
        for name in ports {
            if let Some(n) = lock.nodes.get(&name) {
                let publish = self
                    .wanted
                    .get(&name)
                    .map(|(_, p)| *p)
                    .unwrap_or(Publish::LoadBalancer);
                let port = next_port(&n.cluster, publish, &mut self.used_ports)?;
                let old = n.port;
                if let Some(n) = lock.nodes.get_mut(&name) {
                    n.port = port;
                }
                self.changes.push(format!(
                    "reassigned node {name:?}: port {old} → {port} (conflict)"
                ));
            }
        }
        Ok(())
    }

    /// Devices of the spec not in the lock yet, in spec order.
    fn add_devices(&mut self) -> Result<(), String> {
        for dv in &self.t.devices {
            if !self.lock.devices.contains_key(&dv.name) {
                let ip = self.alloc.next_v4()?;
                self.changes.push(format!(
                    "added device {:?}: {ip}, {}",
                    dv.name,
                    ipv6_for(ip)
                ));
                self.lock.devices.insert(
                    dv.name.clone(),
                    DeviceEntry {
                        ipv4: ip,
                        ipv6: ipv6_for(ip),
                    },
                );
            }
        }
        Ok(())
    }

    /// Runtime nodes of the spec not in the lock yet, in spec order, each with a new key.
    fn add_nodes(&mut self, keygen: &mut dyn FnMut() -> (String, String)) -> Result<(), String> {
        for (c, e) in self.t.runtime_nodes() {
            if self.lock.nodes.contains_key(&e.id) {
                continue;
            }
            let ip = self.alloc.next_v4()?;
            let port = next_port(&c.name, c.publish, &mut self.used_ports)?;
            let (private_key, public_key) = keygen();
            self.changes.push(format!(
                "added {} {:?} in cluster {:?}: {ip}, {}, port {port}",
                e.kind.keyword(),
                e.id,
                c.name,
                ipv6_for(ip)
            ));
            self.new_keys.push(NewKey {
                cluster: c.name.clone(),
                node: e.id.clone(),
                private_key,
                public_key: public_key.clone(),
                rotated: false,
            });
            self.lock.nodes.insert(
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
        Ok(())
    }

    /// A new key for each node of `to_rotate` (sorted, once each).
    fn rotate(&mut self, to_rotate: Vec<String>, keygen: &mut dyn FnMut() -> (String, String)) {
        for name in to_rotate {
            if let Some(n) = self.lock.nodes.get_mut(&name) {
                let (private_key, public_key) = keygen();
                self.changes.push(format!(
                    "rotated the key of {name:?} (cluster {:?})",
                    n.cluster
                ));
                n.public_key = public_key.clone();
                self.new_keys.push(NewKey {
                    cluster: n.cluster.clone(),
                    node: name.clone(),
                    private_key,
                    public_key,
                    rotated: true,
                });
            }
        }
    }
}

struct Allocator {
    assignable: Assignable,
    next: u32,
    used: BTreeSet<Ipv4Addr>,
}

impl Allocator {
    fn next_v4(&mut self) -> Result<Ipv4Addr, String> {
        let pool = self.assignable.pool;
        let base = u32::from(pool.network());
        let size: u64 = 1u64 << (32 - u32::from(pool.prefix_len()));
        while u64::from(self.next) < size.saturating_sub(1) {
            let ip = Ipv4Addr::from(base.wrapping_add(self.next));
            self.next += 1;
            if let Some(last) = self.assignable.avoided_until(ip) {
                // Past the avoided network (bounded time however much of the pool it covers).
                self.next = self
                    .next
                    .max(u32::from(last).wrapping_sub(base).saturating_add(1));
                continue;
            }
            if !self.used.contains(&ip) && self.assignable.fits(ip, ipv6_for(ip)) {
                self.used.insert(ip);
                return Ok(ip);
            }
        }
        Err(format!(
            "the ipv4-pool {pool} is exhausted (outside the clusters' pod and Service CIDRs)"
        ))
    }
}

fn next_port(
    cluster: &str,
    publish: Publish,
    used: &mut BTreeSet<(String, u16)>,
) -> Result<u16, String> {
    let (first, last) = match publish {
        // Under a gateway only a sidecar binds its port (in its own pod); the others keep one
        // for the lock's sake (entries never change) and for a later switch of mode.
        Publish::LoadBalancer | Publish::Gateway => (FIRST_LB_PORT, u16::MAX),
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
        // The rendered text is KDL that parses; every name but "plain" then breaks the name
        // rules, each reported at its entry (the names are escaped in the message).
        let d = parse("tailnet.lock", &text).expect_err("names outside the rules");
        assert_eq!(d.items.len(), 2 * 10, "{}", d.render());
        assert!(
            d.items
                .iter()
                .all(|i| i.message.contains("follow the spec's rules")),
            "{}",
            d.render()
        );
        assert!(!d.render().contains('\r'), "{}", d.render());
        assert!(text.contains("node \"plain\" cluster=\"cplain\""), "{text}");
    }

    fn lock_of(text: &str) -> Result<Lock, String> {
        parse("tailnet.lock", &format!("version 1\n{text}")).map_err(|d| d.render())
    }

    /// Finding 3 of issue 16: a lock name is a file name for `lock` (`<dir>/<node>.sops.yaml`
    /// is removed when the node is tombstoned), so names outside the spec's rules are refused
    /// before anything runs: nodes, devices, tombstones and clusters.
    #[test]
    fn lock_names_follow_the_spec_rules() {
        let key = "1tCZu679bpxcE6rtfWWvKoLBMHeLqKNqXKHXPigz2C0=";
        for entry in [
            format!(
                r#"node "../../../victimdir/important" cluster="prod" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3" port=41641 public-key="{key}""#
            ),
            format!(
                r#"node "ok" cluster="../x" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3" port=41641 public-key="{key}""#
            ),
            r#"device "a/b" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3""#.into(),
            r#"tombstone "/etc/passwd" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3""#.into(),
            r#"tombstone "ok" cluster=".." ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3""#.into(),
            // Longer than an exposure name may be (it names `tsk8s-<name>` Services).
            format!(
                r#"node "{}" cluster="prod" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3" port=41641 public-key="{key}""#,
                "a".repeat(58)
            ),
        ] {
            let err = lock_of(&entry).expect_err(&entry);
            assert!(err.contains("follow the spec's rules"), "{entry}\n{err}");
            assert!(err.contains("tailnet.lock:2:"), "{entry}\n{err}");
        }
        assert!(
            lock_of(&format!(
                r#"node "a-57-{}" cluster="prod" ipv4="100.64.0.3" ipv6="fd7a:115c:a1e0::6440:3" port=41641 public-key="{key}""#,
                "a".repeat(52)
            ))
            .is_ok()
        );
    }

    /// Finding 4 of issue 16 (spec-independent half): every ipv6 is the one paired with its
    /// ipv4, so it lies in fd7a:115c:a1e0::/48 and a tombstone cannot hold a live IPv6.
    #[test]
    fn ipv6_must_pair_with_ipv4() {
        for (entry, want) in [
            (
                r#"device "d" ipv4="100.64.0.3" ipv6="::1""#,
                "outside the tailnet's IPv6 range",
            ),
            (
                r#"device "d" ipv4="100.64.0.3" ipv6="2001:db8::1""#,
                "outside the tailnet's IPv6 range",
            ),
            (
                r#"tombstone "t" ipv4="100.64.0.9" ipv6="fd7a:115c:a1e0::6440:3""#,
                "does not pair with ipv4 100.64.0.9",
            ),
        ] {
            let err = lock_of(entry).expect_err(entry);
            assert!(err.contains(want), "{entry}\n{err}");
            assert!(err.contains("tailnet.lock:2:"), "{entry}\n{err}");
        }
    }

    fn bad_case(name: &str) -> (Tailnet, Lock) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/bad/lock")
            .join(name);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        let front = crate::build::front("tailnet.kdl", &read("tailnet.kdl"))
            .unwrap_or_else(|f| panic!("{name}: {}", f.text));
        let lock = parse("tailnet.lock", &read("tailnet.lock"))
            .unwrap_or_else(|d| panic!("{name}: {}", d.render()));
        (front.tailnet, lock)
    }

    fn keys() -> impl FnMut() -> (String, String) {
        let mut n = 0u8;
        move || {
            n += 1;
            (
                format!("private-{n}"),
                format!("{}{}=", "A".repeat(42), (b'A' + n) as char),
            )
        }
    }

    /// Finding 4 of issue 16: the addresses `check` refuses and sends to `tsk8s lock` (outside
    /// the pool, its network or broadcast address, inside a pod or Service CIDR) are exactly
    /// the ones `lock` reassigns; afterwards the lock passes.
    #[test]
    fn lock_repairs_the_addresses_check_refuses() {
        for case in [
            "ipv4-zero",
            "ipv4-all-ones",
            "ipv4-pool-network",
            "ipv4-pool-broadcast",
            "ipv4-in-pod-cidr",
            "device-ipv4-in-service-cidr",
            "ipv4-outside-pool",
        ] {
            let (t, lock) = bad_case(case);
            let problems = check(&t, &lock);
            assert_eq!(problems.len(), 1, "{case}: {problems:?}");
            assert!(problems[0].at.is_some(), "{case}: located in the lock");
            assert!(problems[0].message.contains("run `tsk8s lock`"), "{case}");
            let upd = update(&t, &lock, &LockOptions::default(), &mut keys()).unwrap();
            let again = parse("tailnet.lock", &render(&upd.lock)).unwrap();
            assert_eq!(check(&t, &again), vec![], "{case}");
            assert_eq!(upd.changes.len(), 1, "{case}: {:?}", upd.changes);
        }
    }

    /// The allocator steps over a pod CIDR inside the pool (and never hands out its addresses).
    #[test]
    fn allocator_skips_cluster_cidrs() {
        let (mut t, _) = bad_case("ipv4-in-pod-cidr");
        t.clusters[0].pod_cidr = Some("100.64.0.0/16".parse().unwrap());
        let upd = update(&t, &Lock::default(), &LockOptions::default(), &mut keys()).unwrap();
        let first: Ipv4Addr = "100.65.0.0".parse().unwrap();
        let all: Vec<Ipv4Addr> = upd
            .lock
            .devices
            .values()
            .map(|d| d.ipv4)
            .chain(upd.lock.nodes.values().map(|n| n.ipv4))
            .collect();
        assert_eq!(all.len(), 6);
        assert!(all.iter().all(|ip| *ip >= first), "{all:?}");
        assert_eq!(check(&t, &upd.lock), vec![]);
        // A pod CIDR covering the whole pool leaves nothing to give out.
        t.clusters[0].pod_cidr = Some("100.0.0.0/8".parse().unwrap());
        let e = update(&t, &Lock::default(), &LockOptions::default(), &mut keys()).unwrap_err();
        assert!(e.contains("exhausted"), "{e}");
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
