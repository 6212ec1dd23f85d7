//! Access review: what the policy allows ([`tsk8s_policy::access`]) and whether the emitted
//! network carries it — the source has a WireGuard peer whose AllowedIPs cover the destination
//! (a device's wg-quick config; a tsk8s-runtime cluster's mesh peers). Sources on the
//! Tailscale image are judged by the policy alone (Tailscale carries what it allows).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use ipnet::IpNet;
use tsk8s_policy::access::Access;
use tsk8s_policy::policy::Policy;

use crate::lockfile::Lock;
use crate::lower::devices::device_peers;
use crate::lower::mesh::{cluster_mesh_peers, node_mesh_peers};
use crate::lower::net::{AnyTraffic, Member, Net, Reach};
use crate::model::{ExposureKind, Tailnet};

/// How a flow crosses the emitted network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// Through `peer`, whose AllowedIPs entry `via` covers the destination.
    Carried { peer: String, via: IpNet },
    /// The policy allows it but no peer of the source carries it.
    NotCarried(String),
    /// The source's data plane is not ours to check (Tailscale image).
    PolicyOnly(String),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Carried { peer, via } => write!(f, "WireGuard peer {peer} (AllowedIPs {via})"),
            Path::NotCarried(r) | Path::PolicyOnly(r) => f.write_str(r),
        }
    }
}

/// A value owned or borrowed.
enum Held<'a, T> {
    Own(T),
    Lent(&'a T),
}

impl<T> std::ops::Deref for Held<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Held::Own(t) => t,
            Held::Lent(t) => t,
        }
    }
}

/// (peer hostname, AllowedIPs) of one source.
type Peers = Rc<Vec<(String, Vec<IpNet>)>>;

/// What computes a source's peers, without a [`View`]'s caches: shared by threads.
struct Sources<'v> {
    t: &'v Tailnet,
    lock: &'v Lock,
    net: &'v Net,
    reach: &'v Reach,
    any: &'v AnyTraffic<'v>,
    /// Hand devices' peers on to their configs ([`AnyTraffic::keep_device_peers`]): a build's
    /// tests do.
    keep: bool,
}

impl<'v> Sources<'v> {
    fn member(&self, i: usize) -> Option<&'v Member> {
        self.net.member(i)
    }

    /// What source `i`'s peers are cached under: its cluster (runtime nodes share the
    /// cluster's mesh), `sidecar ID` (a sidecar carries its own) or `device NAME`.
    fn key(&self, i: usize) -> Option<String> {
        match self.member(i)? {
            Member::Device { name } => Some(format!("device {name}")),
            Member::Node { cluster, id } => Some(match self.sidecar(i) {
                Some(_) => format!("sidecar {id}"),
                None => cluster.clone(),
            }),
            Member::StandIn { .. } => None,
        }
    }

    /// Source `i`'s exposure, if it is a sidecar.
    fn sidecar(&self, i: usize) -> Option<&'v crate::model::Exposure> {
        self.net
            .exposure(self.t, i)
            .filter(|e| matches!(e.kind, ExposureKind::Sidecar { .. }))
    }

    /// Source `i`'s peers (hostname, AllowedIPs).
    fn peers(&self, i: usize) -> Option<Vec<(String, Vec<IpNet>)>> {
        match self.member(i)? {
            Member::Device { name } => {
                let entry = self.lock.devices.get(name)?;
                let ips = [IpAddr::V4(entry.ipv4), IpAddr::V6(entry.ipv6)];
                let peers = device_peers(self.t, self.net, self.reach, self.any, i, &ips);
                if self.keep {
                    self.any.keep_device_peers(
                        i,
                        peers.iter().map(|p| (p.idx, p.allowed.clone())).collect(),
                    );
                }
                Some(
                    peers
                        .into_iter()
                        .map(|p| (p.peer.name.clone(), p.allowed))
                        .collect(),
                )
            }
            Member::Node { cluster, .. } => {
                let peers = match self.sidecar(i) {
                    Some(e) => node_mesh_peers(self.t, e, self.net, self.reach),
                    None => {
                        cluster_mesh_peers(self.t, self.t.cluster(cluster)?, self.net, self.reach)
                    }
                };
                Some(peers.into_iter().map(|p| (p.name, p.allowed_ips)).collect())
            }
            Member::StandIn { .. } => None,
        }
    }
}

pub struct View<'a> {
    pub t: &'a Tailnet,
    pub lock: &'a Lock,
    pub net: &'a Net,
    pub reach: &'a Reach,
    pub access: Access<'a>,
    /// Per-node indexes for devices' AllowedIPs (see [`AnyTraffic`]): its own, or lent by a
    /// build that computes AllowedIPs too ([`View::with_index`]).
    any: Held<'a, AnyTraffic<'a>>,
    /// Peers by cluster name (runtime nodes) or `device NAME`, computed on first use.
    cluster_peers: RefCell<HashMap<String, Peers>>,
}

impl<'a> View<'a> {
    pub fn new(
        t: &'a Tailnet,
        lock: &'a Lock,
        policy: &'a Policy,
        net: &'a Net,
        reach: &'a Reach,
    ) -> View<'a> {
        View::build(
            t,
            lock,
            policy,
            net,
            reach,
            Held::Own(AnyTraffic::new(reach)),
        )
    }

    /// [`View::new`] sharing the caller's per-node indexes (built once for the tests and the
    /// devices' configs).
    pub fn with_index(
        t: &'a Tailnet,
        lock: &'a Lock,
        policy: &'a Policy,
        net: &'a Net,
        reach: &'a Reach,
        any: &'a AnyTraffic<'a>,
    ) -> View<'a> {
        View::build(t, lock, policy, net, reach, Held::Lent(any))
    }

    fn build(
        t: &'a Tailnet,
        lock: &'a Lock,
        policy: &'a Policy,
        net: &'a Net,
        reach: &'a Reach,
        any: Held<'a, AnyTraffic<'a>>,
    ) -> View<'a> {
        View {
            t,
            lock,
            net,
            reach,
            access: Access::with_filters(
                policy,
                &net.topology,
                Cow::Borrowed(&reach.names),
                Cow::Borrowed(&reach.filters),
            ),
            any,
            cluster_peers: RefCell::new(HashMap::new()),
        }
    }

    /// Tailnet name of topology node `i`.
    pub fn label(&self, i: usize) -> String {
        self.net.host(i).unwrap_or_default().to_string()
    }

    pub fn member(&self, i: usize) -> Option<&Member> {
        self.sources().member(i)
    }

    /// Is node `i` a source whose data plane tsk8s emits (a device or a tsk8s-runtime node)?
    pub fn checkable(&self, i: usize) -> bool {
        matches!(
            self.member(i),
            Some(Member::Device { .. } | Member::Node { .. })
        )
    }

    fn peers_of(&self, i: usize) -> Option<Peers> {
        let key = self.sources().key(i)?;
        if let Some(p) = self.cluster_peers.borrow().get(&key) {
            return Some(p.clone());
        }
        let v: Peers = Rc::new(self.sources().peers(i)?);
        self.cluster_peers.borrow_mut().insert(key, v.clone());
        Some(v)
    }

    fn sources(&self) -> Sources<'_> {
        Sources {
            t: self.t,
            lock: self.lock,
            net: self.net,
            reach: self.reach,
            any: &self.any,
            keep: matches!(self.any, Held::Lent(_)),
        }
    }

    /// Compute the peers of `sources` not cached yet on all cores, ahead of the
    /// [`View::path`] calls that would compute them one at a time.
    pub fn prefetch_peers(&self, sources: impl IntoIterator<Item = usize>) {
        let mut todo: Vec<(String, usize)> = Vec::new();
        let shared = self.sources();
        {
            let cached = self.cluster_peers.borrow();
            for i in sources {
                if let Some(key) = shared.key(i)
                    && !cached.contains_key(&key)
                {
                    todo.push((key, i));
                }
            }
        }
        todo.sort();
        todo.dedup_by(|a, b| a.0 == b.0);
        let computed = crate::par::map(&todo, |(_, i)| shared.peers(*i));
        let mut cache = self.cluster_peers.borrow_mut();
        for ((key, _), peers) in todo.into_iter().zip(computed) {
            if let Some(p) = peers {
                cache.insert(key, Rc::new(p));
            }
        }
    }

    /// The access matrix: every flow the policy allows, with how the emitted network carries it
    /// (`None` for sources on the Tailscale image, judged by the policy alone).
    pub fn matrix(&self) -> Vec<(tsk8s_policy::access::Entry, Option<Path>)> {
        self.access
            .matrix()
            .into_iter()
            .map(|e| {
                let path = self
                    .access
                    .index(&e.src)
                    .filter(|&i| self.checkable(i))
                    .map(|i| self.path(i, e.prefix.network()));
                (e, path)
            })
            .collect()
    }

    /// Does the emitted network carry traffic from node `src` to `dst`?
    pub fn path(&self, src: usize, dst: IpAddr) -> Path {
        let who = self.label(src);
        if let Some(Member::StandIn { cluster, .. }) = self.member(src) {
            return Path::PolicyOnly(format!(
                "{who} runs the Tailscale image (cluster {cluster}): judged by policy only"
            ));
        }
        // A node reaches its own addresses without a tunnel.
        if self
            .reach
            .names
            .get(src)
            .and_then(|n| self.net.topology.nodes.get(n))
            .is_some_and(|n| n.ips().contains(&dst))
        {
            return Path::Carried {
                peer: who,
                via: IpNet::from(dst),
            };
        }
        let peers = self.peers_of(src).unwrap_or_default();
        for (peer, allowed) in peers.iter() {
            if let Some(a) = allowed.iter().find(|a| a.contains(&dst)) {
                return Path::Carried {
                    peer: peer.clone(),
                    via: *a,
                };
            }
        }
        let receivers = self.access.receivers(dst);
        if receivers.is_empty() {
            return Path::NotCarried(format!(
                "no subnet router routes {dst} (and no node has that address)"
            ));
        }
        for &r in &receivers {
            if let Some(Member::StandIn { cluster, .. }) = self.member(r) {
                return Path::NotCarried(format!(
                    "{who} has no peer in cluster {cluster}: it runs the Tailscale image"
                ));
            }
        }
        let names: Vec<String> = receivers.iter().map(|&r| self.label(r)).collect();
        Path::NotCarried(format!(
            "{who} has no WireGuard peer whose AllowedIPs cover {dst} (served by {})",
            names.join(", ")
        ))
    }
}

/// `tsk8s test`, second half: every `accept` of a test whose source has a data plane tsk8s
/// emits (a device or a tsk8s-runtime node) must also be carried by it. Returns failure lines
/// (one per test destination), the indexes of the tests that failed, and notes for sources
/// judged by the policy alone.
pub fn dataplane_tests(view: &View<'_>, policy: &Policy) -> (Vec<String>, Vec<usize>, Vec<String>) {
    use tsk8s_policy::compile::Resolver;
    use tsk8s_policy::matcher::PROTO_TCP;
    use tsk8s_policy::policy::{check_test_destination, parse_alias};

    let mut failures = Vec::new();
    let mut failed = Vec::new();
    let mut notes = Vec::new();
    let mut resolver = Resolver::new(policy, &view.net.topology);
    // Each node's addresses and whether tsk8s emits its data plane, looked up once (not per
    // test: a BTreeMap lookup by name per node per test dominated builds of 1,000 tests).
    let nodes: Vec<Option<(Vec<IpAddr>, bool)>> = view
        .reach
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let node = view.net.topology.nodes.get(name)?;
            Some((node.ips(), view.checkable(i)))
        })
        .collect();
    // The entries' sources first, so their peers can be computed on all cores at once.
    let mut plans = Vec::new();
    for (k, (mt, pt)) in view.t.tests.iter().zip(&policy.tests).enumerate() {
        if mt.policy_only || pt.problem.is_some() {
            continue;
        }
        let Ok(src_alias) = parse_alias(&pt.src) else {
            continue;
        };
        let src_set = resolver.resolve(&src_alias);
        if src_set.is_empty() {
            continue;
        }
        let mut srcs = Vec::new();
        let mut judged_by_policy = false;
        // The nodes with an address in the source, from the access model's address index
        // (not a scan of every node per test), in node order.
        let mut in_src = std::collections::BTreeSet::new();
        view.access.nodes_in(&src_set, &mut in_src);
        for i in in_src {
            let Some(Some((ips, checkable))) = nodes.get(i) else {
                continue;
            };
            if *checkable {
                srcs.push((i, ips.clone()));
            } else {
                judged_by_policy = true;
            }
        }
        if srcs.is_empty() {
            if judged_by_policy || !pt.accept.is_empty() {
                notes.push(format!(
                    "{}: judged by policy only (no device or tsk8s-runtime node is this source)",
                    pt.src
                ));
            }
            continue;
        }
        plans.push((k, mt, pt, srcs));
    }
    view.prefetch_peers(
        plans
            .iter()
            .filter(|(_, _, pt, _)| !pt.accept.is_empty())
            .flat_map(|(_, _, _, srcs)| srcs.iter().map(|(i, _)| *i)),
    );
    for (k, mt, pt, srcs) in plans {
        let proto = pt.protos.first().copied().unwrap_or(PROTO_TCP);
        let sfx = mt
            .proto
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        let mut entry_failed = false;
        for dst in &pt.accept {
            let Ok(awp) = check_test_destination(policy, dst) else {
                continue;
            };
            let port = awp.ports.first().map(|p| p.first).unwrap_or(0);
            let Some(addrs) = resolver.resolve(&awp.alias).addresses(4096) else {
                continue;
            };
            'dst: for &(i, ref ips) in &srcs {
                for &d in &addrs {
                    let Some(&s) = ips.iter().find(|ip| ip.is_ipv4() == d.is_ipv4()) else {
                        continue;
                    };
                    let allowed = view.policy_allows(i, s, d, proto, port);
                    if !allowed {
                        continue;
                    }
                    if let Path::NotCarried(reason) = view.path(i, d) {
                        failures.push(format!(
                            "{} -> {dst}{sfx}: allowed by policy, but {reason}",
                            pt.src
                        ));
                        entry_failed = true;
                        break 'dst;
                    }
                }
            }
        }
        if entry_failed {
            failed.push(k);
        }
    }
    (failures, failed, notes)
}

/// A destination named on the command line, resolved to addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub text: String,
    pub what: String,
    pub addrs: Vec<IpAddr>,
    pub port: Option<u16>,
}

/// One source's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub source: String,
    pub kind: String,
    pub address: IpAddr,
    pub allowed: bool,
    pub rule: Option<String>,
    pub path: Option<Path>,
}

impl Answer {
    /// Allowed by the policy and carried by the network (or not ours to carry).
    pub fn reaches(&self) -> bool {
        self.allowed && !matches!(self.path, Some(Path::NotCarried(_)))
    }
}

fn split_port(s: &str) -> Result<(&str, Option<u16>), String> {
    let bad = || format!("{s:?}: the port must be a number 1-65535");
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: missing ']'"))?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((
                host,
                Some(p.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?),
            )),
            None if tail.is_empty() => Ok((host, None)),
            None => Err(bad()),
        };
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s, None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') && !h.starts_with("tag") => {
            Ok((h, Some(p.parse().ok().filter(|&p| p > 0).ok_or_else(bad)?)))
        }
        _ => Ok((s, None)),
    }
}

impl View<'_> {
    /// Topology node by name (exposure id, device name) or tailnet hostname.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.access.index(name) {
            return Some(i);
        }
        (0..self.reach.names.len()).find(|&i| self.label(i) == name)
    }

    /// `TARGET[:PORT]`: a node (exposure or device, by name or hostname), a host alias or an IP.
    pub fn target(&self, policy: &Policy, s: &str) -> Result<Target, String> {
        let (name, port) = split_port(s)?;
        if let Some(i) = self.node_named(name) {
            let node = self
                .reach
                .names
                .get(i)
                .and_then(|n| self.net.topology.nodes.get(n));
            let addrs = node.map(|n| n.ips()).unwrap_or_default();
            if addrs.is_empty() {
                return Err(format!("{name:?} has no address yet: run `tsk8s lock`"));
            }
            let what = match self.member(i) {
                Some(Member::Device { .. }) => format!("device {name}"),
                Some(Member::Node { cluster, .. }) => format!("node {name} in cluster {cluster}"),
                Some(Member::StandIn { cluster, .. }) => {
                    format!("node {name} in cluster {cluster} (Tailscale image; stand-in address)")
                }
                None => name.to_string(),
            };
            return Ok(Target {
                text: s.to_string(),
                what,
                addrs,
                port,
            });
        }
        if let Some(net) = policy.hosts.get(name) {
            return Ok(Target {
                text: s.to_string(),
                what: format!("host {name} ({net})"),
                addrs: vec![net.network()],
                port,
            });
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Target {
                text: s.to_string(),
                what: ip.to_string(),
                addrs: vec![ip],
                port,
            });
        }
        Err(format!(
            "unknown target {name:?}: not a node, device, host alias or IP address"
        ))
    }

    /// Nodes a source names: a device or node (by name or hostname), or a user's devices.
    /// `Ok(vec![])` for a user with no device.
    pub fn source(&self, s: &str) -> Result<(String, Vec<usize>), String> {
        if let Some(i) = self.node_named(s) {
            return Ok((self.kind(i), vec![i]));
        }
        if let Some(u) = self
            .t
            .users
            .iter()
            .find(|u| u.as_str() == s || u.split('@').next() == s.strip_suffix('@'))
        {
            let nodes: Vec<usize> = (0..self.reach.names.len())
                .filter(|&i| {
                    self.reach
                        .names
                        .get(i)
                        .and_then(|n| self.net.topology.nodes.get(n))
                        .is_some_and(|n| !n.is_tagged() && n.user.as_deref() == Some(u))
                })
                .collect();
            return Ok((format!("user {u}"), nodes));
        }
        Err(format!(
            "unknown source {s:?}: not a user, device or node of the spec"
        ))
    }

    fn kind(&self, i: usize) -> String {
        let name = self.label(i);
        let node = self
            .reach
            .names
            .get(i)
            .and_then(|n| self.net.topology.nodes.get(n));
        let owner = node
            .map(|n| {
                if n.is_tagged() {
                    n.tags.join(", ")
                } else {
                    n.user.clone().unwrap_or_default()
                }
            })
            .unwrap_or_default();
        match self.member(i) {
            Some(Member::Device { .. }) => format!("device {name} ({owner})"),
            Some(Member::Node { cluster, .. }) => format!("node {name} in {cluster} ({owner})"),
            Some(Member::StandIn { cluster, .. }) => {
                format!("node {name} in {cluster}, Tailscale image ({owner})")
            }
            None => name,
        }
    }

    /// Does the policy let node `i` (address `s`) reach `dst`? The filter of the node that
    /// receives `dst` decides; an address no node receives is judged on the policy's rules.
    pub fn policy_allows(&self, i: usize, s: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        let receivers = self.access.receivers(dst);
        if receivers.is_empty() {
            return self.reach.names.get(i).is_some_and(|n| {
                self.access
                    .rule_for(tsk8s_policy::access::Who::Node(n), dst, proto, port)
                    .is_some()
            });
        }
        receivers
            .into_iter()
            .any(|r| self.access.allows(r, s, dst, proto, port))
    }

    /// The address of `src` in the family of `dst`.
    fn src_addr(&self, i: usize, dst: IpAddr) -> Option<IpAddr> {
        let (v4, v6) = self.net.addrs(i)?;
        if dst.is_ipv4() {
            v4.map(IpAddr::V4)
        } else {
            v6.map(IpAddr::V6)
        }
    }

    /// Can node `i` reach `dst`?
    pub fn answer(&self, i: usize, dst: IpAddr, proto: u8, port: u16) -> Option<Answer> {
        let s = self.src_addr(i, dst)?;
        let allowed = self.policy_allows(i, s, dst, proto, port);
        let name = self.reach.names.get(i)?;
        let rule = allowed
            .then(|| {
                self.access
                    .rule_for(tsk8s_policy::access::Who::Node(name), dst, proto, port)
            })
            .flatten()
            .map(|r| r.to_string());
        Some(Answer {
            source: self.label(i),
            kind: self.kind(i),
            address: dst,
            allowed,
            rule,
            path: allowed.then(|| self.path(i, dst)),
        })
    }

    /// Every node the policy lets reach `dst` (on `port`, or any port), from the receivers'
    /// filters, with the rule and the path.
    pub fn who_can_reach(&self, dst: IpAddr, proto: u8, port: Option<u16>) -> Vec<Answer> {
        let mut srcs = std::collections::BTreeSet::new();
        let receivers = self.access.receivers(dst);
        if receivers.is_empty() {
            srcs = self
                .access
                .unreceived_sources(dst, proto, port.unwrap_or(0));
        }
        for r in receivers {
            match port {
                Some(p) => srcs.extend(self.access.sources(r, dst, proto, p)),
                None => {
                    let mut entries = Vec::new();
                    self.access.into_node(r, &mut entries);
                    for e in entries.iter().filter(|e| e.prefix.contains(&dst)) {
                        if let Some(i) = self.access.index(&e.src) {
                            srcs.insert(i);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        for i in srcs {
            let p = port.unwrap_or_else(|| self.first_port(i, dst, proto));
            if let Some(a) = self.answer(i, dst, proto, p) {
                out.push(a);
            }
        }
        out.sort_by(|a, b| a.source.cmp(&b.source));
        out
    }

    /// Some port `i` may use to reach `dst` (for a who-can-reach without a port).
    fn first_port(&self, i: usize, dst: IpAddr, proto: u8) -> u16 {
        let Some(name) = self.reach.names.get(i) else {
            return 0;
        };
        for r in self.access.receivers(dst) {
            let mut entries = Vec::new();
            self.access.into_node(r, &mut entries);
            for e in entries {
                if &e.src == name
                    && e.prefix.contains(&dst)
                    && (e.protos.is_empty() || e.protos.contains(&proto))
                {
                    return e.ports.first;
                }
            }
        }
        0
    }
}
