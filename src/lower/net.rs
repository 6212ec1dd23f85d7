//! The tailnet as the policy engine sees it (a [`Topology`]) and who may talk to whom.
//!
//! Reachability is computed once per build from each node's compiled filter: for every node,
//! the set of nodes whose addresses its filter admits as sources. Peers of a node are the
//! nodes it admits plus the nodes that admit it (Tailscale gives a node exactly those peers).
//! The cost is the size of the answer, not nodes × rules: sources are looked up in a sorted
//! address index.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::IpNet;
use tsk8s_policy::compile::Compiled;
use tsk8s_policy::filter::{FilterRule, SrcIps};
use tsk8s_policy::matcher::{Matcher, SourceSets};
use tsk8s_policy::policy::Policy;
use tsk8s_policy::runtime_config::Peer;
use tsk8s_policy::topology::{Node as TopoNode, Topology, User};

use crate::lockfile::{Lock, ipv6_for};
use crate::model::{ExposureKind, RuntimeKind, Tailnet};

/// What a topology node stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    Device {
        name: String,
    },
    /// A runtime (tsk8s) node: cluster and exposure id.
    Node {
        cluster: String,
        id: String,
    },
    /// A node on the official Tailscale image: a stand-in address, for `tsk8s test` only.
    StandIn {
        cluster: String,
        id: String,
    },
}

/// The topology plus, per node, what it is and its mesh peer entry.
pub struct Net {
    pub topology: Topology,
    /// Topology node name → member, in a stable order.
    pub members: BTreeMap<String, Member>,
    /// Per topology node (in `topology.nodes` order, the index [`Reach`] uses), the entry
    /// meshes and devices list it by: built once, since on dense policies every node is a peer
    /// of thousands.
    peers: Vec<Option<Peer>>,
    /// Per topology node (same order): what meshes and devices look up for every peer they
    /// list, found once here instead of by name per (peer, mesh or device).
    at: Vec<Option<At>>,
    /// Per topology node (same order): its peer entry's mesh line
    /// ([`tsk8s_policy::runtime_config::peer_line`]), and the nodes by peer name.
    peer_lines: Vec<Option<String>>,
    /// Per topology node (same order): its peer entry's AllowedIPs as a wg-quick config
    /// writes them (`a, b`), for the devices that route exactly those to it.
    allowed_texts: Vec<Option<String>>,
    by_peer_name: HashMap<String, usize>,
}

/// What a topology node is, by index: its member, tailnet hostname ([`hostname_of`]),
/// addresses, and where its exposure is declared (cluster and exposure positions in the spec).
struct At {
    member: Member,
    host: String,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    exposure: Option<(usize, usize)>,
}

impl Net {
    /// The mesh peer entry of topology node `idx` (None for Tailscale-image stand-ins and
    /// nodes the lock does not know).
    pub fn peer(&self, idx: usize) -> Option<&Peer> {
        self.peers.get(idx)?.as_ref()
    }

    /// The mesh line of peer entry `p`, if `p` is a node's entry as built here (a mesh may
    /// list a peer with more AllowedIPs: then `None`, and the caller writes it).
    pub fn peer_line(&self, p: &Peer) -> Option<&str> {
        let &idx = self.by_peer_name.get(&p.name)?;
        if self.peer(idx) != Some(p) {
            return None;
        }
        self.peer_lines.get(idx)?.as_deref()
    }

    /// Topology node `idx`'s own AllowedIPs (its peer entry's) as a wg-quick config writes
    /// them: `100.64.0.1/32, fd7a:115c:a1e0::6440:1/128`.
    pub fn allowed_text(&self, idx: usize) -> Option<&str> {
        self.allowed_texts.get(idx)?.as_deref()
    }

    /// What topology node `idx` stands for.
    pub fn member(&self, idx: usize) -> Option<&Member> {
        Some(&self.at.get(idx)?.as_ref()?.member)
    }

    /// Tailnet hostname of topology node `idx` ([`hostname_of`] its member).
    pub fn host(&self, idx: usize) -> Option<&str> {
        Some(&self.at.get(idx)?.as_ref()?.host)
    }

    /// Addresses (IPv4, IPv6) of topology node `idx`, as in its topology node.
    pub fn addrs(&self, idx: usize) -> Option<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        let a = self.at.get(idx)?.as_ref()?;
        Some((a.ipv4, a.ipv6))
    }

    /// The exposure topology node `idx` stands for (`t` is the tailnet this net was built
    /// from), as `t.cluster(cluster)` and the exposure of that id in it would find it.
    pub fn exposure<'t>(&self, t: &'t Tailnet, idx: usize) -> Option<&'t crate::model::Exposure> {
        let (c, e) = self.at.get(idx)?.as_ref()?.exposure?;
        t.clusters.get(c)?.exposures.get(e)
    }
}

/// `PersistentKeepalive` towards nodes behind SNAT, and from devices that nodes may call.
pub const KEEPALIVE_SECONDS: u16 = 25;

/// Tailnet name (DNS label) of a topology member.
pub fn hostname_of(t: &Tailnet, member: &Member) -> String {
    match member {
        Member::Device { name } => name.clone(),
        Member::Node { cluster, id } | Member::StandIn { cluster, id } => t
            .cluster(cluster)
            .and_then(|c| c.exposures.iter().find(|e| &e.id == id))
            .map(|e| e.hostname.clone())
            .unwrap_or_else(|| id.clone()),
    }
}

/// The mesh peer entry of a member with topology node `node`.
fn peer_entry(t: &Tailnet, lock: &Lock, member: &Member, node: &TopoNode) -> Option<Peer> {
    let mut allowed: Vec<IpNet> = Vec::new();
    if let Some(a) = node.ipv4 {
        allowed.push(IpNet::from(IpAddr::V4(a)));
    }
    if let Some(a) = node.ipv6 {
        allowed.push(IpNet::from(IpAddr::V6(a)));
    }
    match member {
        Member::Device { name } => {
            let d = t.device(name)?;
            Some(Peer {
                name: name.clone(),
                public_key: d.public_key.clone(),
                allowed_ips: allowed,
                endpoint: None,
                persistent_keepalive: None,
            })
        }
        Member::Node { cluster, id } => {
            let entry = lock.nodes.get(id)?;
            let c = t.cluster(cluster)?;
            let name = hostname_of(t, member);
            Some(Peer {
                // Under `publish="gateway"` every node of the cluster, sidecars included, is
                // reached on the gateway's one port.
                endpoint: Some(endpoint(
                    &c.endpoint_host(&name),
                    c.published_port(entry.port),
                )),
                name,
                public_key: entry.public_key.clone(),
                allowed_ips: allowed,
                // Reached through SNAT (NodePort, shared MetalLB address): keep the mapping,
                // and so the node's way back, alive from this side.
                persistent_keepalive: c.needs_keepalive().then_some(KEEPALIVE_SECONDS),
            })
        }
        Member::StandIn { .. } => None,
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Topology node name of an exposure / a device. Exposure ids and device names share one
/// namespace (checked by resolve), so they are used as they are.
pub fn build_net(t: &Tailnet, lock: &Lock) -> Net {
    let mut topo = Topology {
        users: t
            .users
            .iter()
            .map(|u| User {
                name: u.split('@').next().unwrap_or(u).to_string(),
                email: u.clone(),
            })
            .collect(),
        nodes: BTreeMap::new(),
        user_index: Default::default(),
    };
    let mut members = BTreeMap::new();
    for d in &t.devices {
        let entry = lock.devices.get(&d.name);
        topo.nodes.insert(
            d.name.clone(),
            TopoNode {
                ipv4: entry.map(|e| e.ipv4),
                ipv6: entry.map(|e| e.ipv6),
                user: if d.tags.is_empty() {
                    d.user.clone()
                } else {
                    None
                },
                tags: d.tags.clone(),
                routable_ips: vec![],
                approved_routes: vec![],
            },
        );
        members.insert(
            d.name.clone(),
            Member::Device {
                name: d.name.clone(),
            },
        );
    }
    // Stand-in addresses for Tailscale-assigned nodes: from the top of the CGNAT range
    // downwards, never handed out by `tsk8s lock` in practice (it allocates upwards).
    let mut stand_in: u32 = u32::from(Ipv4Addr::new(100, 127, 255, 254));
    for (c, e) in t.exposures() {
        let routes: Vec<IpNet> = match &e.kind {
            ExposureKind::SubnetRouter { routes } => routes.clone(),
            _ => vec![],
        };
        let (ipv4, ipv6, member) = if c.runtime == RuntimeKind::Tsk8s {
            let entry = lock.nodes.get(&e.id);
            (
                entry.map(|n| n.ipv4),
                entry.map(|n| n.ipv6),
                Member::Node {
                    cluster: c.name.clone(),
                    id: e.id.clone(),
                },
            )
        } else {
            let ip = Ipv4Addr::from(stand_in);
            stand_in -= 1;
            (
                Some(ip),
                Some(ipv6_for(ip)),
                Member::StandIn {
                    cluster: c.name.clone(),
                    id: e.id.clone(),
                },
            )
        };
        topo.nodes.insert(
            e.id.clone(),
            TopoNode {
                ipv4,
                ipv6,
                user: None,
                tags: e.tags.clone(),
                routable_ips: routes.clone(),
                approved_routes: routes,
            },
        );
        members.insert(e.id.clone(), member);
    }
    let peers: Vec<Option<Peer>> = topo
        .nodes
        .iter()
        .map(|(name, node)| peer_entry(t, lock, members.get(name)?, node))
        .collect();
    let peer_lines = peers
        .iter()
        .map(|p| p.as_ref().map(tsk8s_policy::runtime_config::peer_line))
        .collect();
    let allowed_texts = peers
        .iter()
        .map(|p| p.as_ref().map(|p| allowed_ips_text(&p.allowed_ips)))
        .collect();
    let by_peer_name = peers
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((p.as_ref()?.name.clone(), i)))
        .collect();
    let at = topo
        .nodes
        .iter()
        .map(|(name, node)| Some(at(t, members.get(name)?, node)))
        .collect();
    Net {
        topology: topo,
        members,
        peers,
        at,
        peer_lines,
        allowed_texts,
        by_peer_name,
    }
}

/// Prefixes as a wg-quick `AllowedIPs =` line lists them.
pub fn allowed_ips_text(nets: &[IpNet]) -> String {
    let mut s = String::new();
    for (i, a) in nets.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{a}");
    }
    s
}

/// The per-index facts [`Net`] keeps of topology node `node` (member `member`).
fn at(t: &Tailnet, member: &Member, node: &TopoNode) -> At {
    let exposure = match member {
        Member::Node { cluster, id } | Member::StandIn { cluster, id } => {
            t.cluster_index(cluster).and_then(|ci| {
                let c = t.clusters.get(ci)?;
                Some((ci, c.exposures.iter().position(|e| &e.id == id)?))
            })
        }
        Member::Device { .. } => None,
    };
    At {
        member: member.clone(),
        host: hostname_of(t, member),
        ipv4: node.ipv4,
        ipv6: node.ipv6,
        exposure,
    }
}

/// Sorted address → node index, for "which nodes does this SrcIPs entry cover".
struct AddrIndex {
    v: Vec<(IpAddr, usize)>,
}

impl AddrIndex {
    fn new(addrs: impl IntoIterator<Item = (IpAddr, usize)>) -> AddrIndex {
        let mut v: Vec<(IpAddr, usize)> = addrs.into_iter().collect();
        v.sort();
        AddrIndex { v }
    }

    fn range(&self, lo: IpAddr, hi: IpAddr, out: &mut BTreeSet<usize>) {
        let start = self.v.partition_point(|(ip, _)| *ip < lo);
        for (ip, idx) in &self.v[start..] {
            if *ip > hi {
                break;
            }
            out.insert(*idx);
        }
    }

    /// Nodes whose address is covered by a FilterRule address entry (as the matcher reads
    /// it: [`tsk8s_policy::matcher::entry_ranges`]).
    fn covered(&self, entry: &str, out: &mut BTreeSet<usize>) {
        for (lo, hi) in tsk8s_policy::matcher::entry_ranges(entry) {
            self.range(lo, hi, out);
        }
    }
}

/// A set of nodes (topology indexes), sorted: 4 bytes a member. On dense policies a node's
/// sets hold thousands of members, for every node of the tailnet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSet(Vec<u32>);

impl NodeSet {
    pub fn contains(&self, n: usize) -> bool {
        self.0.binary_search(&to_u32(n)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().map(|&i| i as usize)
    }
}

fn to_u32(i: usize) -> u32 {
    u32::try_from(i).expect("topology indexes fit in u32: nodes are bounded by the spec's limits")
}

/// Per-node filters and who may reach whom.
pub struct Reach {
    pub names: Vec<String>,
    pub filters: Vec<Vec<FilterRule>>,
    /// admits[n] = nodes whose addresses n's filter accepts as sources.
    pub admits: Vec<NodeSet>,
    /// admitted_by[n] = nodes whose filters accept n.
    pub admitted_by: Vec<NodeSet>,
}

/// Per node, its filter indexed for "may this source send it anything"
/// ([`Matcher::any_traffic`]), built on first use. Held by the phase that computes device
/// AllowedIPs and dropped with it, so the indexes do not outlive their use.
pub struct AnyTraffic<'r> {
    reach: &'r Reach,
    cache: Vec<OnceLock<Matcher>>,
    /// The filters' source lists, each parsed once for all the nodes' indexes.
    sources: SourceSets,
    /// Devices' peers (topology index, AllowedIPs) the spec's tests computed first, kept
    /// until the device's config takes them, so no device's peers are computed twice.
    device_peers: Mutex<HashMap<usize, DevicePeerList>>,
}

/// A device's peers by topology index, with the AllowedIPs it routes to each.
pub type DevicePeerList = Vec<(usize, Vec<IpNet>)>;

impl<'r> AnyTraffic<'r> {
    pub fn new(reach: &'r Reach) -> AnyTraffic<'r> {
        AnyTraffic {
            reach,
            cache: (0..reach.filters.len()).map(|_| OnceLock::new()).collect(),
            sources: SourceSets::default(),
            device_peers: Mutex::new(HashMap::new()),
        }
    }

    /// Keep device `me`'s peers for its config ([`AnyTraffic::take_device_peers`]).
    pub fn keep_device_peers(&self, me: usize, peers: DevicePeerList) {
        if let Ok(mut kept) = self.device_peers.lock() {
            kept.insert(me, peers);
        }
    }

    /// Device `me`'s peers, if the tests computed them (each is handed out once).
    pub fn take_device_peers(&self, me: usize) -> Option<DevicePeerList> {
        self.device_peers.lock().ok()?.remove(&me)
    }

    /// Node `n`'s index.
    pub fn get(&self, n: usize) -> Option<&Matcher> {
        let f = self.reach.filters.get(n)?;
        Some(
            self.cache
                .get(n)?
                .get_or_init(|| Matcher::any_traffic_shared(f, &self.sources)),
        )
    }
}

impl Reach {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// Peers of node `n`, ascending, each with (`n` admits it, it admits `n`): one merge of
    /// the two sorted lists, for callers that ask both of every peer.
    pub fn peers_both_ways(&self, n: usize) -> Vec<(usize, bool, bool)> {
        let (Some(NodeSet(a)), Some(NodeSet(b))) = (self.admits.get(n), self.admitted_by.get(n))
        else {
            return Vec::new();
        };
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::with_capacity(a.len().max(b.len()));
        loop {
            let next = match (a.get(i), b.get(j)) {
                (None, None) => break,
                (Some(&x), Some(&y)) if x == y => (x, true, true),
                (Some(&x), Some(&y)) if y < x => (y, false, true),
                (None, Some(&y)) => (y, false, true),
                (Some(&x), _) => (x, true, false),
            };
            i += usize::from(next.1);
            j += usize::from(next.2);
            if next.0 as usize != n {
                out.push((next.0 as usize, next.1, next.2));
            }
        }
        out
    }

    /// Peers of node `n`, ascending: nodes it admits or that admit it, itself excluded.
    pub fn peers(&self, n: usize) -> Vec<usize> {
        self.peers_both_ways(n)
            .into_iter()
            .map(|(p, _, _)| p)
            .collect()
    }
}

pub fn reach(policy: &Policy, net: &Net) -> Reach {
    let names: Vec<String> = net.topology.nodes.keys().cloned().collect();
    let compiled = Compiled::new(policy, &net.topology);
    let index = AddrIndex::new(net.topology.nodes.values().enumerate().flat_map(|(i, n)| {
        let mut v: Vec<(IpAddr, usize)> = Vec::with_capacity(2);
        if let Some(a) = n.ipv4 {
            v.push((IpAddr::V4(a), i));
        }
        if let Some(a) = n.ipv6 {
            v.push((IpAddr::V6(a), i));
        }
        v
    }));
    let filters: Vec<Vec<FilterRule>> = crate::par::map(&names, |name| compiled.node_filter(name));
    // Rules share their source lists (one `Arc` per compiled source), so each distinct list
    // is resolved to nodes once, on all cores, and a node's admits are the union of its
    // rules' lists.
    let mut lists: Vec<&SrcIps> = Vec::new();
    let mut list_of: HashMap<usize, u32> = HashMap::new();
    for rule in filters.iter().flatten() {
        list_of.entry(list_key(&rule.src_ips)).or_insert_with(|| {
            lists.push(&rule.src_ips);
            to_u32(lists.len() - 1)
        });
    }
    let covered: Vec<Vec<u32>> = crate::par::map(&lists, |src| {
        let mut set = BTreeSet::new();
        for s in src.iter() {
            index.covered(s, &mut set);
        }
        set.into_iter().map(to_u32).collect()
    });
    let admits: Vec<NodeSet> = crate::par::map(&filters, |f| {
        let mut ids: Vec<u32> = f
            .iter()
            .filter_map(|rule| list_of.get(&list_key(&rule.src_ips)))
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut v: Vec<u32> = ids
            .iter()
            .filter_map(|&i| covered.get(i as usize))
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        NodeSet(v)
    });
    // Built in ascending `n`, so every list comes out sorted.
    let mut by: Vec<Vec<u32>> = vec![Vec::new(); names.len()];
    for (n, set) in admits.iter().enumerate() {
        for m in set.iter() {
            if let Some(s) = by.get_mut(m) {
                s.push(to_u32(n));
            }
        }
    }
    let admitted_by = by.into_iter().map(NodeSet).collect();
    Reach {
        names,
        filters,
        admits,
        admitted_by,
    }
}

/// A shared source list's identity (its allocation): equal keys, the same list.
fn list_key(src: &SrcIps) -> usize {
    Arc::as_ptr(src).cast::<String>() as usize
}

/// The prefixes of `within` that node `n`'s filter lets `src` reach (for device AllowedIPs).
pub fn reachable_prefixes(
    any: &AnyTraffic,
    n: usize,
    src: &[IpAddr],
    within: &[IpNet],
) -> Vec<IpNet> {
    match any.get(n) {
        Some(m) => m.reachable_within(src, within),
        None => Vec::new(),
    }
}

pub fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

pub fn v4v6(ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> [IpNet; 2] {
    [IpNet::from(IpAddr::V4(ipv4)), IpNet::from(IpAddr::V6(ipv6))]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `peers_both_ways` is every node `n` admits or that admits it, each with what `admits`
    /// says both ways, and `peers` the same nodes.
    #[test]
    fn peers_both_ways_is_peers_with_admits() {
        let set = |v: &[u32]| NodeSet(v.to_vec());
        let admits = vec![
            set(&[1, 2, 4]),
            set(&[0]),
            set(&[0, 1, 2, 3]),
            set(&[]),
            set(&[0, 4]),
        ];
        let mut by: Vec<Vec<u32>> = vec![Vec::new(); admits.len()];
        for (n, s) in admits.iter().enumerate() {
            for m in s.iter() {
                by[m].push(to_u32(n));
            }
        }
        let reach = Reach {
            names: (0..admits.len()).map(|i| format!("n{i}")).collect(),
            filters: vec![Vec::new(); admits.len()],
            admitted_by: by.into_iter().map(NodeSet).collect(),
            admits,
        };
        for n in 0..reach.names.len() {
            let peers: BTreeSet<usize> = reach.admits[n]
                .iter()
                .chain(reach.admitted_by[n].iter())
                .filter(|&p| p != n)
                .collect();
            let want: Vec<(usize, bool, bool)> = peers
                .into_iter()
                .map(|p| (p, reach.admits[n].contains(p), reach.admits[p].contains(n)))
                .collect();
            assert_eq!(reach.peers_both_ways(n), want, "node {n}");
            let ids: Vec<usize> = want.iter().map(|w| w.0).collect();
            assert_eq!(reach.peers(n), ids, "node {n}");
        }
    }
}
