//! Per-node packet filters (Tailscale `FilterRule`s) from a policy and a topology.
//!
//! Semantics follow Tailscale as recorded in headscale's captures:
//! - ACLs become one grant per destination; grants compile to rules `{SrcIPs, DstPorts, IPProto}`
//!   and, for `app`, `{SrcIPs, CapGrant}`.
//! - `*` as a source is 100.64.0.0/10 less 100.115.92.0/23, plus fd7a:115c:a1e0::/48, plus every
//!   approved subnet route; `autogroup:danger-all` is `*` literally. `*` as a destination is `*`.
//! - A node's filter keeps the destinations that contain one of its addresses, overlap one of
//!   its approved subnet routes, or (exit nodes) lie within `autogroup:internet`.
//! - `autogroup:self` is resolved per node (same-user, untagged devices); `via` grants reach only
//!   routers carrying one of the `via` tags, for their routes.
//! - No `acls` and no `grants`: allow-all. Empty lists: deny-all.
//!
//! Work is linear in rules + nodes: the policy is compiled once ([`Compiled`]) and each node
//! picks its rules through an index of destination addresses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::filter::{CapGrant, FilterRule, NetPortRange, PortRange, SrcIps};
use crate::ipset::{IpSet, net_string, tailnet_space, the_internet};
use crate::policy::{
    AUTOGROUP_DANGER_ALL, AUTOGROUP_INTERNET, AUTOGROUP_MEMBER, AUTOGROUP_SELF, AUTOGROUP_TAGGED,
    Alias, Grant, Policy, ProtoPorts,
};
use crate::topology::{Node, Topology};

/// A `HashMap` with foldhash's randomly seeded hasher: the compiler's hot maps (addresses,
/// rule keys) hash millions of keys on dense policies.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The grant a policy without `acls` and `grants` stands for: `*` → `*:*`.
fn default_grant() -> Grant {
    Grant {
        src: vec![Alias::Wildcard],
        dst: vec![Alias::Wildcard],
        ip: vec![ProtoPorts {
            protos: Vec::new(),
            ports: vec![PortRange::ANY],
        }],
        app: None,
        via: Vec::new(),
        src_posture: Vec::new(),
    }
}

/// Resolves aliases to address sets against a topology, with caches.
pub struct Resolver<'a> {
    pub policy: &'a Policy,
    pub topo: &'a Topology,
    by_user: HashMap<String, IpSet>,
    by_tag: HashMap<String, IpSet>,
    member: IpSet,
    tagged: IpSet,
    routes: IpSet,
    cache: HashMap<Alias, IpSet>,
}

/// The key a node's owner is filed under: the canonical email if the user is known.
fn user_key(topo: &Topology, raw: &str) -> String {
    topo.resolve_user(raw)
        .map(|u| {
            if u.email.is_empty() {
                u.name.clone()
            } else {
                u.email.clone()
            }
        })
        .unwrap_or_else(|| raw.to_string())
}

impl<'a> Resolver<'a> {
    pub fn new(policy: &'a Policy, topo: &'a Topology) -> Resolver<'a> {
        let mut by_user: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut by_tag: HashMap<String, Vec<IpAddr>> = HashMap::new();
        let mut member = Vec::new();
        let mut tagged = Vec::new();
        let mut routes = Vec::new();
        for node in topo.nodes.values() {
            let ips = node.ips();
            if node.is_tagged() {
                for t in &node.tags {
                    by_tag.entry(t.clone()).or_default().extend(&ips);
                }
                tagged.extend(&ips);
            } else {
                if let Some(u) = &node.user {
                    by_user.entry(user_key(topo, u)).or_default().extend(&ips);
                }
                member.extend(&ips);
            }
            routes.extend(node.subnet_routes());
        }
        Resolver {
            policy,
            topo,
            by_user: by_user
                .into_iter()
                .map(|(k, v)| (k, IpSet::from_ips(v)))
                .collect(),
            by_tag: by_tag
                .into_iter()
                .map(|(k, v)| (k, IpSet::from_ips(v)))
                .collect(),
            member: IpSet::from_ips(member),
            tagged: IpSet::from_ips(tagged),
            routes: IpSet::from_net_iter(routes),
            cache: HashMap::new(),
        }
    }

    /// Every approved subnet route in the tailnet.
    pub fn approved_routes(&self) -> &IpSet {
        &self.routes
    }

    fn user_set(&self, token: &str) -> IpSet {
        if let Some(domain) = token.strip_prefix("user:*@") {
            let suffix = format!("@{domain}");
            let mut s = IpSet::new();
            for (k, v) in &self.by_user {
                if k.ends_with(&suffix) {
                    s.add_set(v);
                }
            }
            return s;
        }
        let key = user_key(self.topo, token);
        self.by_user.get(&key).cloned().unwrap_or_default()
    }

    /// Addresses of an alias. `*` is the tailnet's address space (without routes);
    /// `autogroup:self` resolves to nothing here (it is per node).
    pub fn resolve(&mut self, alias: &Alias) -> IpSet {
        if let Some(s) = self.cache.get(alias) {
            return s.clone();
        }
        let set = self.resolve_uncached(alias, 0);
        self.cache.insert(alias.clone(), set.clone());
        set
    }

    fn resolve_uncached(&self, alias: &Alias, depth: usize) -> IpSet {
        match alias {
            Alias::Wildcard => tailnet_space(),
            Alias::User(u) => self.user_set(u),
            Alias::Group(g) => {
                let mut s = IpSet::new();
                for m in self.policy.groups.get(g).into_iter().flatten() {
                    s.add_set(&self.user_set(m));
                }
                s
            }
            Alias::Tag(t) => self.by_tag.get(t).cloned().unwrap_or_default(),
            Alias::Host(h) => self
                .policy
                .hosts
                .get(h)
                .map(|n| IpSet::from_nets([n]))
                .unwrap_or_default(),
            Alias::Prefix(p) => IpSet::from_nets([p]),
            Alias::AutoGroup(ag) => match ag.as_str() {
                AUTOGROUP_MEMBER => self.member.clone(),
                AUTOGROUP_TAGGED => self.tagged.clone(),
                AUTOGROUP_INTERNET => the_internet(),
                AUTOGROUP_DANGER_ALL => IpSet::all(),
                _ => IpSet::new(),
            },
            Alias::IpSet(name) => {
                let mut add = IpSet::new();
                let mut remove = IpSet::new();
                if depth > 64 {
                    return add;
                }
                for (rm, a) in self.policy.ipsets.get(name).into_iter().flatten() {
                    let s = self.resolve_uncached(a, depth + 1);
                    if *rm {
                        remove.add_set(&s);
                    } else {
                        add.add_set(&s);
                    }
                }
                add.remove_set(&remove);
                add
            }
        }
    }

    /// Source set of a grant: the union of its aliases, plus approved routes when it has `*`.
    /// `None` for `autogroup:danger-all` (written `*`).
    fn sources(&mut self, src: &[Alias]) -> (IpSet, bool) {
        let mut s = IpSet::new();
        let mut danger = false;
        for a in src {
            if *a == Alias::AutoGroup(AUTOGROUP_DANGER_ALL.into()) {
                danger = true;
            }
            if *a == Alias::AutoGroup(AUTOGROUP_SELF.into()) {
                continue;
            }
            let r = self.resolve(a);
            s.add_set(&r);
            if *a == Alias::Wildcard {
                s.add_set(&self.routes.clone());
            }
        }
        (s, danger)
    }
}

fn src_strings(set: &IpSet, danger_all: bool) -> Vec<String> {
    if danger_all {
        vec!["*".into()]
    } else {
        set.to_strings()
    }
}

/// Capabilities whose grant also gives the destination a capability back to the source (on
/// the destination's own addresses, also for `autogroup:self` grants).
const COMPANION_CAPS: [(&str, &str); 2] = [
    ("tailscale.com/cap/drive", "tailscale.com/cap/drive-sharer"),
    ("tailscale.com/cap/relay", "tailscale.com/cap/relay-target"),
];

/// A destination entry of a compiled rule: one prefix (or `*`) and one port range. Kept small
/// (no heap): on dense policies a rule reaching a tag in every cluster has thousands.
#[derive(Clone, Copy, Debug)]
struct Dst {
    /// `None` for `*`.
    net: Option<IpNet>,
    ports: PortRange,
}

impl Dst {
    /// The entry as a filter writes it.
    fn npr(&self) -> NetPortRange {
        NetPortRange {
            ip: match &self.net {
                None => "*".into(),
                Some(n) => net_string(n),
            },
            ports: self.ports,
        }
    }

    /// Its one address, if the prefix is a host.
    fn single_address(&self) -> Option<IpAddr> {
        self.net
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
    }
}

#[derive(Clone, Debug)]
struct Rule {
    src: SrcIps,
    protos: Vec<u8>,
    dsts: Vec<Dst>,
}

#[derive(Clone, Debug)]
struct CapRule {
    src: SrcIps,
    /// Per cap grant: destination set and cap map.
    grants: Vec<(IpSet, BTreeMap<String, Vec<Value>>)>,
    /// A companion capability: granted on the node's own addresses only, never on its routes
    /// (as Tailscale sends `drive-sharer` and `relay-target`).
    own_only: bool,
}

#[derive(Clone, Debug)]
struct SelfGrant {
    src: IpSet,
    ip: Vec<ProtoPorts>,
    app: Option<BTreeMap<String, Vec<Value>>>,
}

#[derive(Clone, Debug)]
struct ViaGrant {
    tags: Vec<String>,
    dsts: Vec<IpNet>,
    internet: bool,
    ip: Vec<ProtoPorts>,
    src: SrcIps,
}

#[derive(Clone, Debug)]
enum Item {
    Rule(Rule),
    Cap(CapRule),
    SelfGrant(SelfGrant),
    Via(ViaGrant),
}

/// A policy compiled against a topology, ready to emit per-node filters.
pub struct Compiled<'a> {
    topo: &'a Topology,
    items: Vec<Item>,
    /// Single-address destination → (item, dst index).
    exact: FastMap<IpAddr, Vec<(usize, usize)>>,
    /// Destinations that are `*` or wider than one address.
    wide: Vec<(usize, usize)>,
    /// The wide destinations made only of small ranges, by each address they cover: a node
    /// without routes finds its entries by lookup instead of scanning every wide destination
    /// (which made per-node compilation nodes × rules).
    wide_points: FastMap<IpAddr, Vec<(usize, usize)>>,
    /// The other wide destinations (`*`, large prefixes): still scanned.
    wide_big: Vec<(usize, usize)>,
    /// Every address key of `exact` and `wide_points`, sorted: a subnet router finds the
    /// entries inside its routes by range instead of scanning them all.
    points: Vec<IpAddr>,
    /// Items that are not plain rules (caps, self grants, via): few, visited for every node.
    special: Vec<usize>,
    internet: IpSet,
    /// Owner key → untagged nodes of that user.
    same_user: HashMap<String, Vec<String>>,
}

/// Wide destinations covering at most this many addresses are indexed by address.
const WIDE_POINT_LIMIT: u128 = 256;

/// Every address of `set`, if it has at most `limit` of them.
fn small_addresses(set: &IpSet, limit: u128) -> Option<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut total: u128 = 0;
    for (lo, hi) in set.ranges() {
        let (a, b) = match (lo, hi) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return None,
        };
        total = total.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
        if total > limit {
            return None;
        }
        for n in a..=b {
            out.push(match lo {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(u32::try_from(n).ok()?)),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
            });
        }
    }
    Some(out)
}

impl<'a> Compiled<'a> {
    pub fn new(policy: &'a Policy, topo: &'a Topology) -> Compiled<'a> {
        let mut r = Resolver::new(policy, topo);
        let mut items = Vec::new();
        let grants = if policy.allows_all() {
            vec![default_grant()]
        } else {
            policy.effective_grants()
        };
        for g in &grants {
            compile_grant(&mut r, g, &mut items);
        }
        let mut exact: FastMap<IpAddr, Vec<(usize, usize)>> = FastMap::default();
        let mut wide = Vec::new();
        for (i, it) in items.iter().enumerate() {
            if let Item::Rule(rule) = it {
                for (j, d) in rule.dsts.iter().enumerate() {
                    match d.single_address() {
                        Some(ip) => exact.entry(ip).or_default().push((i, j)),
                        None => wide.push((i, j)),
                    }
                }
            }
        }
        let mut wide_points: FastMap<IpAddr, Vec<(usize, usize)>> = FastMap::default();
        let mut wide_big = Vec::new();
        for &(i, j) in &wide {
            let set = match items.get(i) {
                Some(Item::Rule(rule)) => rule.dsts.get(j).and_then(|d| d.net),
                _ => None,
            };
            match set.and_then(|n| small_addresses(&IpSet::from_nets([&n]), WIDE_POINT_LIMIT)) {
                Some(addrs) => {
                    for a in addrs {
                        wide_points.entry(a).or_default().push((i, j));
                    }
                }
                None => wide_big.push((i, j)),
            }
        }
        let mut points: Vec<IpAddr> = exact.keys().chain(wide_points.keys()).copied().collect();
        points.sort();
        points.dedup();
        let special = items
            .iter()
            .enumerate()
            .filter(|(_, it)| !matches!(it, Item::Rule(_)))
            .map(|(i, _)| i)
            .collect();
        let mut same_user: HashMap<String, Vec<String>> = HashMap::new();
        for (name, node) in &topo.nodes {
            if let (false, Some(u)) = (node.is_tagged(), &node.user) {
                same_user
                    .entry(user_key(topo, u))
                    .or_default()
                    .push(name.clone());
            }
        }
        Compiled {
            topo,
            items,
            exact,
            wide,
            wide_points,
            wide_big,
            points,
            special,
            internet: the_internet(),
            same_user,
        }
    }

    /// The filter of one node (empty if the node is unknown).
    pub fn node_filter(&self, name: &str) -> Vec<FilterRule> {
        let Some(node) = self.topo.nodes.get(name) else {
            return Vec::new();
        };
        let own = node.ips();
        let own_set = node.ip_set();
        let routes = node.subnet_routes();
        let exit = node.is_exit_node();

        // Regular rules: which destination entries does this node keep?
        let mut kept: BTreeSet<(usize, usize)> = BTreeSet::new();
        for ip in &own {
            if let Some(v) = self.exact.get(ip) {
                kept.extend(v.iter().copied());
            }
        }
        // Wide destinations made of few addresses are found by address: the node's own, and
        // (for a subnet router) every indexed address inside its routes, which also finds the
        // exact entries there. Only the large wide destinations are scanned by overlap (all
        // of them for an exit node, which keeps whatever lies in the internet).
        for ip in &own {
            if let Some(v) = self.wide_points.get(ip) {
                kept.extend(v.iter().copied());
            }
        }
        for r in &routes {
            let (lo, hi) = (r.network(), r.broadcast());
            let start = self.points.partition_point(|p| *p < lo);
            for ip in self.points.iter().skip(start).take_while(|p| **p <= hi) {
                for map in [&self.exact, &self.wide_points] {
                    if let Some(v) = map.get(ip) {
                        kept.extend(v.iter().copied());
                    }
                }
            }
        }
        let scan: &[(usize, usize)] = if exit { &self.wide } else { &self.wide_big };
        for &(i, j) in scan {
            let Some(Item::Rule(rule)) = self.items.get(i) else {
                continue;
            };
            let Some(d) = rule.dsts.get(j) else { continue };
            let keep = match &d.net {
                None => true,
                Some(n) => {
                    own_set.overlaps_net(n)
                        || routes
                            .iter()
                            .any(|r| r.contains(&n.network()) || n.contains(&r.network()))
                        || (exit && self.internet.is_superset_of(&IpSet::from_nets([n])))
                }
            };
            if keep {
                kept.insert((i, j));
            }
        }

        let mut by_item: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, j) in kept {
            by_item.entry(i).or_default().push(j);
        }
        // Items in policy order: the kept rules and every special item.
        let mut order: Vec<usize> = by_item
            .keys()
            .copied()
            .chain(self.special.iter().copied())
            .collect();
        order.sort_unstable();
        order.dedup();

        // Most kept destinations are the node's own addresses: their text is made once.
        let own_text: Vec<(IpNet, String)> = own
            .iter()
            .map(|&ip| (IpNet::from(ip), net_string(&IpNet::from(ip))))
            .collect();
        let npr = |d: &Dst| match d.net.and_then(|n| own_text.iter().find(|(o, _)| *o == n)) {
            Some((_, text)) => NetPortRange {
                ip: text.clone(),
                ports: d.ports,
            },
            None => d.npr(),
        };
        let mut out = Vec::new();
        for i in order {
            let Some(item) = self.items.get(i) else {
                continue;
            };
            match item {
                Item::Rule(rule) => {
                    if let Some(js) = by_item.get(&i) {
                        out.push(FilterRule {
                            src_ips: rule.src.clone(),
                            dst_ports: js
                                .iter()
                                .filter_map(|&j| rule.dsts.get(j).map(npr))
                                .collect(),
                            ip_proto: rule.protos.clone(),
                            cap_grant: Vec::new(),
                        });
                    }
                }
                Item::Cap(c) => {
                    let routes: &[IpNet] = if c.own_only { &[] } else { &routes };
                    if let Some(r) = reduce_cap(c, &own, routes) {
                        out.push(r);
                    }
                }
                Item::SelfGrant(sg) => out.extend(self.self_rules(sg, node)),
                Item::Via(v) => out.extend(via_rules(v, node, &self.internet)),
            }
        }
        merge_rules(out)
    }

    fn self_rules(&self, sg: &SelfGrant, node: &Node) -> Vec<FilterRule> {
        let (false, Some(u)) = (node.is_tagged(), &node.user) else {
            return Vec::new();
        };
        let key = user_key(self.topo, u);
        let mut src = Vec::new();
        for name in self.same_user.get(&key).into_iter().flatten() {
            if let Some(n) = self.topo.nodes.get(name) {
                let ips = n.ips();
                if ips.iter().any(|ip| sg.src.contains(*ip)) {
                    src.extend(ips);
                }
            }
        }
        let src = IpSet::from_ips(src);
        if src.is_empty() {
            return Vec::new();
        }
        let src_s: SrcIps = src.to_strings().into();
        let own = node.ips();
        let mut out = Vec::new();
        for ipp in &sg.ip {
            let mut dst_ports = Vec::new();
            for p in &ipp.ports {
                for ip in &own {
                    dst_ports.push(NetPortRange {
                        ip: ip.to_string(),
                        ports: *p,
                    });
                }
            }
            if !dst_ports.is_empty() {
                out.push(FilterRule {
                    src_ips: src_s.clone(),
                    dst_ports,
                    ip_proto: ipp.protos.clone(),
                    cap_grant: Vec::new(),
                });
            }
        }
        if let Some(app) = &sg.app
            && !app.is_empty()
            && !own.is_empty()
        {
            let dsts: Vec<String> = own.iter().map(|ip| IpNet::from(*ip).to_string()).collect();
            // A capability granted from the user's devices to the node's own addresses.
            let cap_rule = |cap_map| FilterRule {
                src_ips: src_s.clone(),
                dst_ports: Vec::new(),
                ip_proto: Vec::new(),
                cap_grant: vec![CapGrant {
                    dsts: dsts.clone(),
                    cap_map,
                }],
            };
            out.push(cap_rule(app.clone()));
            // The companion goes back the same way: the user's devices are both ends.
            for (cap, companion) in COMPANION_CAPS {
                if app.contains_key(cap) {
                    out.push(cap_rule(BTreeMap::from([(
                        companion.to_string(),
                        Vec::new(),
                    )])));
                }
            }
        }
        out
    }

    /// Every rule of the policy, not reduced to any node (self and via rules expanded for every
    /// node): what the tailnet as a whole allows (the access matrix's matcher).
    pub fn global_rules(&self) -> Vec<FilterRule> {
        self.global_rules_within(None)
    }

    /// [`Compiled::global_rules`] with only the destinations that overlap `within` (all when
    /// `None`): a matcher built from them answers the same for every address in `within`.
    pub fn global_rules_within(&self, within: Option<&IpSet>) -> Vec<FilterRule> {
        let wanted = |d: &&Dst| match (within, &d.net) {
            (Some(w), Some(n)) => w.overlaps_net(n),
            _ => true,
        };
        let mut out = Vec::new();
        for item in &self.items {
            match item {
                Item::Rule(rule) => {
                    let dst_ports: Vec<NetPortRange> =
                        rule.dsts.iter().filter(wanted).map(Dst::npr).collect();
                    if within.is_none() || !dst_ports.is_empty() {
                        out.push(FilterRule {
                            src_ips: rule.src.clone(),
                            dst_ports,
                            ip_proto: rule.protos.clone(),
                            cap_grant: Vec::new(),
                        });
                    }
                }
                Item::Cap(_) => {}
                Item::SelfGrant(sg) => {
                    // A self rule's destinations are its node's own addresses.
                    let tested =
                        |n: &&Node| within.is_none_or(|w| n.ips().iter().any(|ip| w.contains(*ip)));
                    for node in self.topo.nodes.values().filter(tested) {
                        out.extend(
                            self.self_rules(sg, node)
                                .into_iter()
                                .filter(|r| r.cap_grant.is_empty()),
                        );
                    }
                }
                Item::Via(v) => {
                    for node in self.topo.nodes.values() {
                        out.extend(via_rules(v, node, &self.internet));
                    }
                }
            }
        }
        merge_rules(out)
    }
}

fn reduce_cap(c: &CapRule, own: &[IpAddr], routes: &[IpNet]) -> Option<FilterRule> {
    let mut grants = Vec::new();
    for (set, map) in &c.grants {
        let mut dsts: BTreeSet<IpNet> = BTreeSet::new();
        for ip in own {
            if set.contains(*ip) {
                dsts.insert(IpNet::from(*ip));
            }
        }
        for p in set.prefixes() {
            if routes
                .iter()
                .any(|r| r.contains(&p.network()) || p.contains(&r.network()))
            {
                dsts.insert(p);
            }
        }
        if !dsts.is_empty() {
            grants.push(CapGrant {
                dsts: dsts.iter().map(|d| d.to_string()).collect(),
                cap_map: map.clone(),
            });
        }
    }
    (!grants.is_empty()).then(|| FilterRule {
        src_ips: c.src.clone(),
        dst_ports: Vec::new(),
        ip_proto: Vec::new(),
        cap_grant: grants,
    })
}

fn via_rules(v: &ViaGrant, node: &Node, internet: &IpSet) -> Vec<FilterRule> {
    if !node.tags.iter().any(|t| v.tags.contains(t)) {
        return Vec::new();
    }
    let routes = node.subnet_routes();
    let mut prefixes: Vec<IpNet> = v
        .dsts
        .iter()
        .filter(|d| {
            routes
                .iter()
                .any(|r| r.contains(&d.network()) || d.contains(&r.network()))
        })
        .copied()
        .collect();
    if v.internet && node.is_exit_node() {
        prefixes.extend(internet.prefixes());
    }
    if prefixes.is_empty() || v.src.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for ipp in &v.ip {
        let mut dst_ports = Vec::new();
        for p in &prefixes {
            for ports in &ipp.ports {
                dst_ports.push(NetPortRange {
                    ip: net_string(p),
                    ports: *ports,
                });
            }
        }
        out.push(FilterRule {
            src_ips: v.src.clone(),
            dst_ports,
            ip_proto: ipp.protos.clone(),
            cap_grant: Vec::new(),
        });
    }
    out
}

fn compile_grant(r: &mut Resolver<'_>, g: &Grant, items: &mut Vec<Item>) {
    if g.src.is_empty() || g.dst.is_empty() {
        return;
    }
    let (src_set, danger) = r.sources(&g.src);
    if !g.via.is_empty() {
        compile_via_grant(r, g, (&src_set, danger), items);
        return;
    }
    let is_self = |a: &Alias| *a == Alias::AutoGroup(AUTOGROUP_SELF.into());
    let others: Vec<&Alias> = g.dst.iter().filter(|a| !is_self(a)).collect();
    let has_self = g.dst.iter().any(is_self);
    if src_set.is_empty() && !danger {
        return;
    }
    let src: SrcIps = src_strings(&src_set, danger).into();
    if !others.is_empty() {
        // network rules
        let resolved: Vec<(Option<IpSet>, &Alias)> = others
            .iter()
            .map(|a| {
                if **a == Alias::Wildcard {
                    (None, *a)
                } else {
                    (Some(r.resolve(a)), *a)
                }
            })
            .collect();
        for ipp in &g.ip {
            push_network_rule(ipp, &resolved, &src, items);
        }
        if let Some(app) = &g.app
            && !app.is_empty()
        {
            compile_app_grant(r, &sorted_caps(app), &resolved, (&src, &src_set), items);
        }
    }
    if has_self {
        items.push(Item::SelfGrant(SelfGrant {
            src: src_set,
            ip: g.ip.clone(),
            app: g.app.as_ref().map(sorted_caps),
        }));
    }
}

/// A grant with `via`: its destinations (`autogroup:internet` as a flag) for the tagged
/// routers. `src` is the resolved source set and whether it holds `autogroup:danger-all`.
fn compile_via_grant(
    r: &mut Resolver<'_>,
    g: &Grant,
    (src_set, danger): (&IpSet, bool),
    items: &mut Vec<Item>,
) {
    if g.ip.is_empty() || (src_set.is_empty() && !danger) {
        return;
    }
    let mut dsts = Vec::new();
    let mut internet = false;
    for d in &g.dst {
        if *d == Alias::AutoGroup(AUTOGROUP_INTERNET.into()) {
            internet = true;
            continue;
        }
        dsts.extend(r.resolve(d).prefixes());
    }
    items.push(Item::Via(ViaGrant {
        tags: g.via.clone(),
        dsts,
        internet,
        ip: g.ip.clone(),
        src: src_strings(src_set, danger).into(),
    }));
}

/// The network rule of one `ip` entry over the resolved destinations (`None`: `*`).
fn push_network_rule(
    ipp: &ProtoPorts,
    resolved: &[(Option<IpSet>, &Alias)],
    src: &SrcIps,
    items: &mut Vec<Item>,
) {
    let mut dsts = Vec::new();
    for (set, _) in resolved {
        match set {
            None => {
                for p in &ipp.ports {
                    dsts.push(Dst {
                        net: None,
                        ports: *p,
                    });
                }
            }
            Some(s) => {
                for pref in s.prefixes() {
                    for p in &ipp.ports {
                        dsts.push(Dst {
                            net: Some(pref.trunc()),
                            ports: *p,
                        });
                    }
                }
            }
        }
    }
    if !dsts.is_empty() {
        items.push(Item::Rule(Rule {
            src: src.clone(),
            protos: ipp.protos.clone(),
            dsts,
        }));
    }
}

/// The capability rules of a grant's `app` over the resolved destinations (`None`: `*`, which
/// also covers approved routes for companion capabilities), then the companion capabilities.
/// `src` is the source strings and the source set.
/// A grant's capabilities by name (a filter's `CapMap` is sorted).
fn sorted_caps(app: &indexmap::IndexMap<String, Vec<Value>>) -> BTreeMap<String, Vec<Value>> {
    app.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn compile_app_grant(
    r: &mut Resolver<'_>,
    app: &BTreeMap<String, Vec<Value>>,
    resolved: &[(Option<IpSet>, &Alias)],
    (src, src_set): (&SrcIps, &IpSet),
    items: &mut Vec<Item>,
) {
    let mut grants = Vec::new();
    let mut dst_union = IpSet::new();
    let mut dst_wild = false;
    for (set, a) in resolved {
        let s = match set {
            Some(s) => s.clone(),
            None => {
                dst_wild = true;
                r.resolve(a)
            }
        };
        dst_union.add_set(&s);
        if !s.is_empty() {
            grants.push((s, app.clone()));
        }
    }
    if grants.is_empty() {
        return;
    }
    items.push(Item::Cap(CapRule {
        src: src.clone(),
        grants,
        own_only: false,
    }));
    if dst_wild {
        dst_union.add_set(&r.approved_routes().clone());
    }
    for (cap, companion) in COMPANION_CAPS {
        if app.contains_key(cap) {
            let mut m = BTreeMap::new();
            m.insert(companion.to_string(), Vec::new());
            items.push(Item::Cap(CapRule {
                src: dst_union.to_strings().into(),
                grants: vec![(src_set.clone(), m)],
                own_only: true,
            }));
        }
    }
}

/// Merge rules with the same sources and protocols (first occurrence keeps its place) and drop
/// duplicate destinations. Cap rules are kept as they are.
pub fn merge_rules(rules: Vec<FilterRule>) -> Vec<FilterRule> {
    let mut out: Vec<FilterRule> = Vec::with_capacity(rules.len());
    // Merged rules by a print of their key (sources and protocols): the lists' length, first
    // and last entries, not their whole text (a source list can hold thousands of addresses
    // and every rule's would be hashed); a hit is confirmed by comparing the lists (at once
    // when they are one `Arc`, as rules from one compiled source are). A print shared by many
    // different keys goes to a map by the whole key, so no input makes this quadratic.
    let mut index: FastMap<u64, Vec<usize>> = FastMap::default();
    let mut whole: FastMap<(SrcIps, Vec<u8>), usize> = FastMap::default();
    let mut seen: Vec<BTreeSet<(String, PortRange)>> = Vec::new();
    for r in rules {
        if !r.cap_grant.is_empty() {
            if !out.contains(&r) {
                out.push(r);
                seen.push(BTreeSet::new());
            }
            continue;
        }
        let print = key_print(&r.src_ips, &r.ip_proto);
        let at = index.entry(print).or_default();
        let found = if at.len() < MERGE_PRINT_KEYS {
            let found = at.iter().copied().find(|&i| {
                out.get(i).is_some_and(|o| {
                    o.ip_proto == r.ip_proto
                        && (std::sync::Arc::ptr_eq(&o.src_ips, &r.src_ips)
                            || o.src_ips == r.src_ips)
                })
            });
            if found.is_none() {
                at.push(out.len());
                if at.len() == MERGE_PRINT_KEYS {
                    for &i in at.iter() {
                        if let Some(o) = out.get(i) {
                            whole.insert((o.src_ips.clone(), o.ip_proto.clone()), i);
                        }
                    }
                    // `out.len()` is pushed below: its key is the rule's own.
                    whole.insert((r.src_ips.clone(), r.ip_proto.clone()), out.len());
                }
            }
            found
        } else {
            let key = (r.src_ips.clone(), r.ip_proto.clone());
            let found = whole.get(&key).copied();
            if found.is_none() {
                whole.insert(key, out.len());
            }
            found
        };
        match found {
            Some(i) => {
                if let (Some(target), Some(s)) = (out.get_mut(i), seen.get_mut(i)) {
                    for d in r.dst_ports {
                        if s.insert((d.ip.clone(), d.ports)) {
                            target.dst_ports.push(d);
                        }
                    }
                }
            }
            None => {
                let mut s = BTreeSet::new();
                let mut dst_ports = Vec::new();
                for d in r.dst_ports {
                    if s.insert((d.ip.clone(), d.ports)) {
                        dst_ports.push(d);
                    }
                }
                out.push(FilterRule {
                    src_ips: r.src_ips,
                    dst_ports,
                    ip_proto: r.ip_proto,
                    cap_grant: Vec::new(),
                });
                seen.push(s);
            }
        }
    }
    out
}

/// How many different keys [`merge_rules`] compares under one print before it maps that
/// print's keys whole.
const MERGE_PRINT_KEYS: usize = 8;

/// [`merge_rules`]'s print of a rule's key: equal keys, equal prints.
fn key_print(src: &[String], proto: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: the print is a key of a randomly seeded map, and a print shared by many
    // keys sends them to the map by whole key (`MERGE_PRINT_KEYS`).
    foldhash::fast::FixedState::with_seed(0).hash_one((src.len(), src.first(), src.last(), proto))
}

/// Tailscale's filter for `node` (empty when the node is not in the topology).
pub fn compile_filter(policy: &Policy, topo: &Topology, node: &str) -> Vec<FilterRule> {
    Compiled::new(policy, topo).node_filter(node)
}

/// Every node's filter, by node name.
pub fn compile_all(policy: &Policy, topo: &Topology) -> BTreeMap<String, Vec<FilterRule>> {
    let c = Compiled::new(policy, topo);
    topo.nodes
        .keys()
        .map(|n| (n.clone(), c.node_filter(n)))
        .collect()
}

/// One filter covering the destinations of all `nodes` (a cluster): the union of their
/// filters, merged. A runtime keeps its own part with `Matcher::for_destinations`.
pub fn compile_for_nodes(policy: &Policy, topo: &Topology, nodes: &[&str]) -> Vec<FilterRule> {
    let c = Compiled::new(policy, topo);
    let mut names: Vec<&str> = nodes.to_vec();
    names.sort_unstable();
    names.dedup();
    let mut all = Vec::new();
    for n in names {
        all.extend(c.node_filter(n));
    }
    merge_rules(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::NetPortRange;

    /// Keys whose lists share length, first and last entry (one print) are still told apart,
    /// past the point where their print is mapped whole, and the same list in another `Arc`
    /// merges: first occurrence keeps its place, destinations once each, in order.
    #[test]
    fn merge_rules_by_key_whatever_the_print() {
        let list = |mid: usize| -> SrcIps {
            vec![
                "100.64.0.1".to_string(),
                format!("10.0.0.{mid}"),
                "100.64.0.9".to_string(),
            ]
            .into()
        };
        let dst = |p: u16| NetPortRange {
            ip: "100.64.1.1".into(),
            ports: PortRange { first: p, last: p },
        };
        let rule = |src: SrcIps, port: u16| FilterRule {
            src_ips: src,
            dst_ports: vec![dst(port), dst(port)],
            ip_proto: Vec::new(),
            cap_grant: Vec::new(),
        };
        let keys = 3 * MERGE_PRINT_KEYS;
        let mut rules = Vec::new();
        for round in 0..3u16 {
            for k in 0..keys {
                // A fresh Arc each time: equal lists, different allocations.
                rules.push(rule(list(k), round));
            }
        }
        let merged = merge_rules(rules);
        assert_eq!(merged.len(), keys);
        for (k, r) in merged.iter().enumerate() {
            assert_eq!(r.src_ips, list(k));
            assert_eq!(r.dst_ports, vec![dst(0), dst(1), dst(2)]);
        }
    }
}
