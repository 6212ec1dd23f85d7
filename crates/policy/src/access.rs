//! The access model: who may reach what, read from the engine's per-node filters.
//!
//! A destination node's filter says which sources it admits; sources are mapped back to nodes
//! through a sorted address index, so the cost is the size of the answer (never addresses ×
//! nodes). [`Access::matrix`] lists every allowed (source node → destination node or route,
//! protocols, ports); [`Access::sources`] answers one destination; [`Access::rule_for`] names
//! the policy rule that grants a pair (a user without any node is judged by the policy alone).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use ipnet::IpNet;

use crate::compile::{Compiled, Resolver};
use crate::filter::{FilterRule, PortRange};
use crate::ipset::{IpSet, net_bounds};
use crate::matcher::{DEFAULT_PROTOS, Matcher, PROTO_ICMP, PROTO_ICMPV6};
use crate::policy::{AUTOGROUP_MEMBER, AUTOGROUP_SELF, Alias, Policy, ProtoPorts};
use crate::topology::Topology;

/// One allowed flow: `src` may open connections to `dst` (the destination node's own address or
/// a part of a route it serves) with one of `protos` (empty: TCP, UDP, ICMP) on `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub src: String,
    /// The node that receives the traffic (the subnet router, for a route).
    pub dst: String,
    pub prefix: IpNet,
    pub protos: Vec<u8>,
    pub ports: PortRange,
}

/// The policy rule that grants a flow: `grants[i]` or `acls[i]`, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub section: &'static str,
    pub index: usize,
    pub text: String,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[{}] ({})", self.section, self.index, self.text)
    }
}

/// Who asks: a node of the topology, or a user (by email) who may have no node at all.
#[derive(Clone, Copy, Debug)]
pub enum Who<'s> {
    Node(&'s str),
    User(&'s str),
}

pub struct Access<'a> {
    policy: &'a Policy,
    topo: &'a Topology,
    names: Cow<'a, [String]>,
    filters: Cow<'a, [Vec<FilterRule>]>,
    matchers: Vec<OnceLock<Matcher>>,
    /// The tailnet-wide rules, for addresses no node receives (built on first use).
    global: OnceLock<Matcher>,
    /// (address, node) sorted.
    addrs: Vec<(IpAddr, usize)>,
    /// (approved subnet route, router node).
    routes: Vec<(IpNet, usize)>,
    resolver: RefCell<Resolver<'a>>,
}

impl<'a> Access<'a> {
    /// Compile every node's filter and build the model.
    pub fn new(policy: &'a Policy, topo: &'a Topology) -> Access<'a> {
        let c = Compiled::new(policy, topo);
        let names: Vec<String> = topo.nodes.keys().cloned().collect();
        let filters: Vec<Vec<FilterRule>> = names.iter().map(|n| c.node_filter(n)).collect();
        Access::with_filters(policy, topo, Cow::Owned(names), Cow::Owned(filters))
    }

    /// From filters already compiled: `names` sorted as `topo.nodes`, `filters[i]` the filter
    /// of `names[i]`.
    pub fn with_filters(
        policy: &'a Policy,
        topo: &'a Topology,
        names: Cow<'a, [String]>,
        filters: Cow<'a, [Vec<FilterRule>]>,
    ) -> Access<'a> {
        let mut addrs = Vec::new();
        let mut routes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(n) = topo.nodes.get(name) {
                addrs.extend(n.ips().into_iter().map(|ip| (ip, i)));
                routes.extend(n.subnet_routes().into_iter().map(|r| (r, i)));
            }
        }
        addrs.sort();
        let matchers = (0..names.len()).map(|_| OnceLock::new()).collect();
        Access {
            policy,
            topo,
            names,
            filters,
            matchers,
            global: OnceLock::new(),
            addrs,
            routes,
            resolver: RefCell::new(Resolver::new(policy, topo)),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    fn matcher(&self, n: usize) -> Option<&Matcher> {
        let f = self.filters.get(n)?;
        Some(self.matchers.get(n)?.get_or_init(|| Matcher::new(f)))
    }

    /// The node owning `ip`, else the subnet routers whose routes contain it.
    pub fn receivers(&self, ip: IpAddr) -> Vec<usize> {
        let start = self.addrs.partition_point(|(a, _)| *a < ip);
        let own: Vec<usize> = self.addrs[start..]
            .iter()
            .take_while(|(a, _)| *a == ip)
            .map(|(_, i)| *i)
            .collect();
        if !own.is_empty() {
            return own;
        }
        let mut v: Vec<usize> = self
            .routes
            .iter()
            .filter(|(r, _)| r.contains(&ip))
            .map(|(_, i)| *i)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Nodes with an address in `set` (found in the sorted address index: the cost is the
    /// size of the answer).
    pub fn nodes_in(&self, set: &IpSet, out: &mut BTreeSet<usize>) {
        for (lo, hi) in set.ranges() {
            let start = self.addrs.partition_point(|(a, _)| *a < lo);
            for (a, i) in &self.addrs[start..] {
                if *a > hi {
                    break;
                }
                out.insert(*i);
            }
        }
    }

    /// Nodes that may reach `dst` on `proto`/`port`, as `receiver`'s filter decides.
    pub fn sources(&self, receiver: usize, dst: IpAddr, proto: u8, port: u16) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        if let Some(m) = self.matcher(receiver) {
            self.nodes_in(&m.sources_for(dst, proto, port), &mut out);
        }
        out
    }

    /// Nodes the policy lets reach `dst` where no node receives it (an address outside every
    /// node and route): judged on the tailnet-wide rules.
    pub fn unreceived_sources(&self, dst: IpAddr, proto: u8, port: u16) -> BTreeSet<usize> {
        let m = self
            .global
            .get_or_init(|| Matcher::new(&Compiled::new(self.policy, self.topo).global_rules()));
        let mut out = BTreeSet::new();
        self.nodes_in(&m.sources_for(dst, proto, port), &mut out);
        out
    }

    /// Does `receiver`'s filter let `src` reach `dst`?
    pub fn allows(&self, receiver: usize, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
        self.matcher(receiver)
            .is_some_and(|m| m.allows(src, dst, proto, port))
    }

    /// Every allowed flow into node `n` (its own addresses and the routes it serves).
    pub fn into_node(&self, n: usize, out: &mut Vec<Entry>) {
        let (Some(name), Some(filter)) = (self.names.get(n), self.filters.get(n)) else {
            return;
        };
        let Some(node) = self.topo.nodes.get(name) else {
            return;
        };
        let mut mine: Vec<IpNet> = node.ip_nets();
        mine.extend(node.subnet_routes());
        for rule in filter.iter().filter(|r| r.cap_grant.is_empty()) {
            let mut srcs = BTreeSet::new();
            let mut set = IpSet::new();
            for s in rule.src_ips.iter() {
                add_entry(&mut set, s);
            }
            self.nodes_in(&set, &mut srcs);
            srcs.remove(&n);
            if srcs.is_empty() {
                continue;
            }
            for dp in &rule.dst_ports {
                let dst_set = {
                    let mut d = IpSet::new();
                    add_entry(&mut d, &dp.ip);
                    d
                };
                for m in &mine {
                    let hit = dst_set.intersect(&IpSet::from_nets([m]));
                    for p in hit.prefixes() {
                        for &s in &srcs {
                            if let Some(src) = self.names.get(s) {
                                out.push(Entry {
                                    src: src.clone(),
                                    dst: name.clone(),
                                    prefix: p,
                                    protos: rule.ip_proto.clone(),
                                    ports: dp.ports,
                                });
                            }
                        }
                    }
                }
            }
        }
    }

    /// The compiled filter of node `n`.
    pub fn filter(&self, n: usize) -> Option<&[FilterRule]> {
        self.filters.get(n).map(Vec::as_slice)
    }

    /// The whole access matrix, sorted, without duplicates.
    pub fn matrix(&self) -> Vec<Entry> {
        let mut out = Vec::new();
        for n in 0..self.names.len() {
            self.into_node(n, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// The first rule of the policy (grants, then acls) that lets `who` reach `dst` on
    /// `proto`/`port`, judged on the policy's aliases (so it also answers for a user without
    /// any node). `None`: no rule does.
    pub fn rule_for(&self, who: Who<'_>, dst: IpAddr, proto: u8, port: u16) -> Option<RuleRef> {
        if self.policy.allows_all() {
            return Some(RuleRef {
                section: "policy",
                index: 0,
                text: "no acls and no grants: allow all".into(),
            });
        }
        let dst_owner = self
            .receivers(dst)
            .into_iter()
            .find_map(|i| self.topo.nodes.get(self.names.get(i)?));
        let (src_ips, src_user): (Vec<IpAddr>, Option<String>) = match who {
            Who::Node(n) => match self.topo.nodes.get(n) {
                Some(node) => (
                    node.ips(),
                    (!node.is_tagged()).then(|| node.user.clone()).flatten(),
                ),
                None => return None,
            },
            Who::User(u) => (
                Vec::new(),
                Some(
                    self.topo
                        .resolve_user(u)
                        .map(|x| x.email.clone())
                        .unwrap_or_else(|| u.to_string()),
                ),
            ),
        };
        let same_user = |u: &Option<String>| match (u, dst_owner) {
            (Some(u), Some(d)) if !d.is_tagged() => d.user.as_deref().is_some_and(|du| {
                du == u || self.topo.resolve_user(du).is_some_and(|x| x.email == *u)
            }),
            _ => false,
        };
        let mut src_ok =
            |a: &Alias| -> bool {
                if !src_ips.is_empty() {
                    let s = self.resolver.borrow_mut().resolve(a);
                    let wild = *a == Alias::Wildcard;
                    return wild || src_ips.iter().any(|ip| s.contains(*ip));
                }
                let Some(u) = &src_user else { return false };
                match a {
                    Alias::Wildcard => true,
                    Alias::User(x) => self.topo.resolve_user(x).is_some_and(|r| r.email == *u),
                    Alias::Group(g) => self.policy.groups.get(g).into_iter().flatten().any(|m| {
                        m == u || self.topo.resolve_user(m).is_some_and(|r| r.email == *u)
                    }),
                    Alias::AutoGroup(ag) => ag == AUTOGROUP_MEMBER,
                    _ => false,
                }
            };
        let grants = self.policy.grants.iter().flatten().enumerate();
        for (i, g) in grants {
            if !g.src.iter().any(&mut src_ok) {
                continue;
            }
            let dst_ok = g.dst.iter().any(|a| match a {
                Alias::AutoGroup(ag) if ag == AUTOGROUP_SELF => same_user(&src_user),
                Alias::Wildcard => true,
                a => self.resolver_contains(a, dst),
            });
            if dst_ok && g.ip.iter().any(|pp| covers(pp, proto, port)) {
                return Some(RuleRef {
                    section: "grants",
                    index: i,
                    text: format!("src {} -> dst {}", list(&g.src), list(&g.dst)),
                });
            }
        }
        for (i, acl) in self.policy.acls.iter().flatten().enumerate() {
            if !acl.src.iter().any(&mut src_ok) {
                continue;
            }
            for d in &acl.dst {
                let dst_ok = match &d.alias {
                    Alias::AutoGroup(ag) if ag == AUTOGROUP_SELF => same_user(&src_user),
                    Alias::Wildcard => true,
                    a => self.resolver_contains(a, dst),
                };
                let pp = ProtoPorts {
                    protos: acl.protos.clone(),
                    ports: d.ports.clone(),
                };
                if dst_ok && covers(&pp, proto, port) {
                    let dsts: Vec<String> = acl
                        .dst
                        .iter()
                        .map(|d| format!("{}:{}", d.alias, ports_text(&d.ports)))
                        .collect();
                    return Some(RuleRef {
                        section: "acls",
                        index: i,
                        text: format!("src {} -> dst {}", list(&acl.src), dsts.join(", ")),
                    });
                }
            }
        }
        None
    }

    fn resolver_contains(&self, a: &Alias, ip: IpAddr) -> bool {
        self.resolver.borrow_mut().resolve(a).contains(ip)
    }
}

/// The nodes whose incoming flows ([`Access::into_node`]) may differ between two models, sorted
/// by name: every other node has the same flows in both, so a diff of the two matrices only
/// needs these (its cost follows the change, not the tailnet).
///
/// A node's flows are a function of its filter, its own addresses and routes, and the names of
/// the nodes owning the addresses its rules admit. So a node present in both models is left
/// out when its filter and addresses are equal and none of the (address, node) pairs that
/// differ between the two topologies falls inside the sources of one of its rules. The test is
/// conservative (a listed node may still have the same flows); it costs the size of the
/// filters, with each shared source list (`SrcIps`) compared and parsed once.
pub fn changed_receivers(old: &Access<'_>, new: &Access<'_>) -> Vec<String> {
    use std::collections::HashMap;
    // (address, node name) pairs in one model and not the other.
    fn pairs<'s>(a: &'s Access<'_>) -> Vec<(IpAddr, &'s str)> {
        let mut v: Vec<(IpAddr, &str)> = a
            .addrs
            .iter()
            .filter_map(|(ip, i)| Some((*ip, a.names.get(*i)?.as_str())))
            .collect();
        v.sort_unstable();
        v
    }
    let (op, np) = (pairs(old), pairs(new));
    let mut moved: Vec<IpAddr> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < op.len() || j < np.len() {
        match (op.get(i), np.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                moved.push(a.0);
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                moved.push(b.0);
                j += 1;
            }
            (Some(a), None) => {
                moved.push(a.0);
                i += 1;
            }
            (None, None) => break,
        }
    }
    moved.sort_unstable();
    moved.dedup();
    // Source lists are shared between the filters of one model: compare and test each once.
    let mut same_src: HashMap<(*const [String], *const [String]), bool> = HashMap::new();
    let mut admits_moved: HashMap<*const [String], bool> = HashMap::new();
    let mut same_rule = |o: &FilterRule, n: &FilterRule| -> bool {
        if o.dst_ports != n.dst_ports || o.ip_proto != n.ip_proto || o.cap_grant != n.cap_grant {
            return false;
        }
        *same_src
            .entry((Arc::as_ptr(&o.src_ips), Arc::as_ptr(&n.src_ips)))
            .or_insert_with(|| o.src_ips == n.src_ips)
    };
    let mut sees_moved = |r: &FilterRule| -> bool {
        if moved.is_empty() || !r.cap_grant.is_empty() {
            return false;
        }
        *admits_moved
            .entry(Arc::as_ptr(&r.src_ips))
            .or_insert_with(|| {
                let mut set = IpSet::new();
                for s in r.src_ips.iter() {
                    add_entry(&mut set, s);
                }
                moved.iter().any(|ip| set.contains(*ip))
            })
    };
    let unchanged = |name: &str,
                     oi: usize,
                     ni: usize,
                     same_rule: &mut dyn FnMut(&FilterRule, &FilterRule) -> bool,
                     sees_moved: &mut dyn FnMut(&FilterRule) -> bool|
     -> bool {
        let (Some(on), Some(nn)) = (old.topo.nodes.get(name), new.topo.nodes.get(name)) else {
            return !old.topo.nodes.contains_key(name) && !new.topo.nodes.contains_key(name);
        };
        if on.ip_nets() != nn.ip_nets() || on.subnet_routes() != nn.subnet_routes() {
            return false;
        }
        let (Some(of), Some(nf)) = (old.filter(oi), new.filter(ni)) else {
            return false;
        };
        of.len() == nf.len()
            && of.iter().zip(nf).all(|(o, n)| same_rule(o, n))
            && !of.iter().any(&mut *sees_moved)
    };
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    loop {
        let (o, n) = (old.names.get(i), new.names.get(j));
        let name = match (o, n) {
            (None, None) => break,
            (Some(a), Some(b)) if a == b => {
                let keep = !unchanged(a, i, j, &mut same_rule, &mut sees_moved);
                i += 1;
                j += 1;
                if !keep {
                    continue;
                }
                a
            }
            (Some(a), Some(b)) if a < b => {
                i += 1;
                a
            }
            (Some(a), None) => {
                i += 1;
                a
            }
            (_, Some(b)) => {
                j += 1;
                b
            }
        };
        out.push(name.clone());
    }
    out
}

fn list(v: &[Alias]) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ports_text(p: &[PortRange]) -> String {
    p.iter()
        .map(|r| {
            if *r == PortRange::ANY {
                "*".to_string()
            } else if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn covers(pp: &ProtoPorts, proto: u8, port: u16) -> bool {
    let proto_ok = if pp.protos.is_empty() {
        DEFAULT_PROTOS.contains(&proto)
    } else {
        pp.protos.contains(&proto)
    };
    let icmp = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
    proto_ok && (icmp || pp.ports.iter().any(|r| r.first <= port && port <= r.last))
}

/// Add a FilterRule address entry (`*`, IP, CIDR, range `a-b`) to a set.
fn add_entry(set: &mut IpSet, s: &str) {
    let s = s.trim();
    if s == "*" {
        set.add_set(&IpSet::all());
    } else if let Some((a, b)) = s.split_once('-') {
        if let (Ok(a), Ok(b)) = (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
            set.add_range(a, b);
        }
    } else if let Some(n) = crate::policy::parse_prefix(s) {
        let (lo, hi) = net_bounds(&n);
        set.add_range(lo, hi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPO: &str = r#"{"users": [{"name": "alice", "email": "alice@example.com"},
        {"name": "bob", "email": "bob@example.com"}],
      "nodes": {
        "laptop": {"ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1", "user": "alice@example.com"},
        "db": {"ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2", "tags": ["tag:db"]},
        "router": {"ipv4": "100.64.0.3", "tags": ["tag:router"],
                   "routable_ips": ["10.1.0.0/16"], "approved_routes": ["10.1.0.0/16"]}}}"#;

    #[test]
    fn matrix_from_filters_with_rules() {
        let policy = Policy::parse(
            r#"{"tagOwners": {"tag:db": [], "tag:router": []},
                "groups": {"group:dev": ["alice@example.com", "bob@example.com"]},
                "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432", "10.1.2.0/24:443"]}]}"#,
        )
        .unwrap();
        let topo = Topology::parse(TOPO).unwrap();
        let a = Access::new(&policy, &topo);
        let m = a.matrix();
        let flows: Vec<String> = m
            .iter()
            .map(|e| format!("{}->{} {} {}", e.src, e.dst, e.prefix, e.ports.first))
            .collect();
        assert_eq!(
            flows,
            [
                "laptop->db 100.64.0.2/32 5432",
                "laptop->db fd7a:115c:a1e0::2/128 5432",
                "laptop->router 10.1.2.0/24 443"
            ]
        );
        let db = a.index("db").unwrap();
        let src = a.sources(db, "100.64.0.2".parse().unwrap(), 6, 5432);
        assert_eq!(
            src.into_iter().collect::<Vec<_>>(),
            [a.index("laptop").unwrap()]
        );
        let r = a
            .rule_for(Who::Node("laptop"), "100.64.0.2".parse().unwrap(), 6, 5432)
            .unwrap();
        assert_eq!(
            r.to_string(),
            "acls[0] (src group:dev -> dst tag:db:5432, 10.1.2.0/24:443)"
        );
        // bob has no node: judged on the policy alone.
        assert!(
            a.rule_for(
                Who::User("bob@example.com"),
                "10.1.2.9".parse().unwrap(),
                6,
                443
            )
            .is_some()
        );
        assert!(
            a.rule_for(
                Who::User("bob@example.com"),
                "10.1.2.9".parse().unwrap(),
                6,
                80
            )
            .is_none()
        );
        assert_eq!(
            a.receivers("10.1.9.9".parse().unwrap()),
            [a.index("router").unwrap()]
        );
    }

    #[test]
    fn changed_receivers_follow_the_change() {
        let base = r#"{"tagOwners": {"tag:db": [], "tag:router": []},
            "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:db:5432"]},
                     {"action": "accept", "src": ["*"], "dst": ["tag:router:22"]}]}"#;
        let topo = Topology::parse(TOPO).unwrap();
        let p0 = Policy::parse(base).unwrap();
        let a0 = Access::new(&p0, &topo);
        assert!(changed_receivers(&a0, &Access::new(&p0, &topo)).is_empty());
        // One more port on the database: only the database's flows change.
        let p1 = Policy::parse(&base.replace("tag:db:5432", "tag:db:5432,5433")).unwrap();
        assert_eq!(changed_receivers(&a0, &Access::new(&p1, &topo)), ["db"]);
        // A new node admitted by `*`: the router's flows change (and the new node's own).
        let t2 = Topology::parse(&TOPO.replace(
            r#""db": {"#,
            r#""bob-phone": {"ipv4": "100.64.0.9", "user": "bob@example.com"},
        "db": {"#,
        ))
        .unwrap();
        assert_eq!(
            changed_receivers(&a0, &Access::new(&p0, &t2)),
            ["bob-phone", "router"]
        );
    }
}
