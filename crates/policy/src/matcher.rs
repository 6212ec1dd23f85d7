//! Packet-time decisions over compiled [`FilterRule`]s: "is (src, dst, proto, dst port) allowed?".
//!
//! The rules are indexed once: per IP protocol, per address family, the destination space is cut
//! into disjoint segments; each segment holds, per distinct port range, the union of the source
//! addresses admitted there (sorted ranges). A lookup is two binary searches plus a short scan,
//! independent of the number of rules.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use crate::filter::{FilterRule, PortRange, SrcIps};
use crate::ipset::{IpSet, net_bounds};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;
/// Protocols a rule with an empty `IPProto` admits.
pub const DEFAULT_PROTOS: [u8; 4] = [PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6];

/// An address set as a FilterRule writes it: `*`, IP, CIDR or `a-b` range.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AddrSet {
    Any,
    Net(IpNet),
    Range(IpAddr, IpAddr),
}

impl AddrSet {
    fn parse(s: &str) -> Option<AddrSet> {
        let s = s.trim();
        if s == "*" {
            return Some(AddrSet::Any);
        }
        if let Some((a, b)) = s.split_once('-') {
            let a: IpAddr = a.trim().parse().ok()?;
            let b: IpAddr = b.trim().parse().ok()?;
            return (a.is_ipv4() == b.is_ipv4() && a <= b).then_some(AddrSet::Range(a, b));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Some(AddrSet::Net(net.trunc()));
        }
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| AddrSet::Net(IpNet::from(ip)))
    }

    /// Inclusive address ranges (`*` is both families).
    fn bounds(&self) -> Vec<(IpAddr, IpAddr)> {
        match self {
            AddrSet::Any => vec![
                (IpAddr::V4(0.into()), IpAddr::V4(u32::MAX.into())),
                (IpAddr::V6(0.into()), IpAddr::V6(u128::MAX.into())),
            ],
            AddrSet::Net(n) => vec![net_bounds(n)],
            AddrSet::Range(a, b) => vec![(*a, *b)],
        }
    }

    fn overlaps(&self, own: &[IpNet]) -> bool {
        match self {
            AddrSet::Any => true,
            AddrSet::Net(n) => own.iter().any(|o| n.contains(o) || o.contains(n)),
            AddrSet::Range(lo, hi) => own.iter().any(|o| {
                let (olo, ohi) = net_bounds(o);
                olo.is_ipv4() == lo.is_ipv4() && olo <= *hi && *lo <= ohi
            }),
        }
    }
}

fn key(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// The inverse of [`key`].
fn addr(v6: bool, k: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(k.into())
    } else {
        IpAddr::V4((k as u32).into())
    }
}

/// Entries of one destination segment: distinct port ranges with the sources they admit.
type Entries = Vec<(PortRange, IpSet)>;

/// Disjoint destination segments of one address family. Segments covered by the same rules
/// share one [`Entries`] (`pool`): in a dense policy (every web node → every database) a
/// thousand destination segments hold the same thousand sources, built once.
#[derive(Clone, Debug, Default)]
struct Segments {
    starts: Vec<u128>,
    ends: Vec<u128>,
    /// Index into `pool`, per segment.
    entries: Vec<u32>,
    pool: Vec<Entries>,
}

impl Segments {
    fn build(ranges: &[(u128, u128, PortRange, usize)], srcs: &[IpSet]) -> Segments {
        if ranges.is_empty() {
            return Segments::default();
        }
        let mut bounds: Vec<u128> = Vec::with_capacity(ranges.len() * 2);
        for &(lo, hi, _, _) in ranges {
            bounds.push(lo);
            if let Some(n) = hi.checked_add(1) {
                bounds.push(n);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        // segment i = [bounds[i], bounds[i+1]-1] (last one to u128::MAX); per segment the
        // (ports, source) pairs that cover it.
        let nseg = bounds.len();
        let mut covers: Vec<Vec<(PortRange, u32)>> = vec![Vec::new(); nseg];
        for &(lo, hi, ports, si) in ranges {
            if si >= srcs.len() {
                continue;
            }
            let first = bounds.partition_point(|&b| b < lo);
            let last_excl = match hi.checked_add(1) {
                Some(n) => bounds.partition_point(|&b| b < n),
                None => nseg,
            };
            for c in covers.iter_mut().take(last_excl).skip(first) {
                c.push((ports, si as u32));
            }
        }
        let mut seg = Segments::default();
        let mut interned: std::collections::HashMap<Vec<(PortRange, u32)>, u32> =
            std::collections::HashMap::new();
        for (i, mut c) in covers.into_iter().enumerate() {
            if c.is_empty() {
                continue;
            }
            c.sort_unstable();
            c.dedup();
            let next = seg.pool.len() as u32;
            let at = *interned.entry(c).or_insert_with_key(|c| {
                seg.pool.push(entries_of(c, srcs));
                next
            });
            let start = bounds.get(i).copied().unwrap_or(0);
            let end = match bounds.get(i + 1) {
                Some(n) => n.saturating_sub(1),
                None => u128::MAX,
            };
            seg.starts.push(start);
            seg.ends.push(end);
            seg.entries.push(at);
        }
        seg
    }

    fn lookup(&self, x: u128) -> Option<&Entries> {
        let i = self.starts.partition_point(|&s| s <= x);
        if i == 0 {
            return None;
        }
        let i = i - 1;
        if self.ends.get(i).is_some_and(|&e| x <= e) {
            self.pool.get(*self.entries.get(i)? as usize)
        } else {
            None
        }
    }
}

/// The entries of a segment covered by `covers` (sorted by port range): per distinct port
/// range, the union of its sources, normalized once.
fn entries_of(covers: &[(PortRange, u32)], srcs: &[IpSet]) -> Entries {
    covers
        .chunk_by(|a, b| a.0 == b.0)
        .filter_map(|group| {
            let ports = group.first()?.0;
            let union = IpSet::union_all(group.iter().filter_map(|(_, si)| srcs.get(*si as usize)));
            Some((ports, union))
        })
        .collect()
}

#[derive(Clone, Debug, Default)]
struct ProtoIndex {
    v4: Segments,
    v6: Segments,
}

/// A compiled filter. Entries that fail to parse are dropped (deny), never a panic.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    protos: BTreeMap<u8, ProtoIndex>,
    /// Union of all sources.
    all_sources: IpSet,
}

#[derive(Clone, Debug)]
struct Rule {
    src: IpSet,
    dsts: Vec<(AddrSet, PortRange)>,
    protos: Vec<u8>,
}

fn parse_rules(rules: &[FilterRule], shared: Option<&SourceSets>) -> Vec<Rule> {
    rules
        .iter()
        .filter(|r| r.cap_grant.is_empty() || !r.dst_ports.is_empty())
        .map(|r| {
            let src = match shared {
                Some(sets) => sets.get(&r.src_ips),
                None => parse_sources(&r.src_ips),
            };
            Rule {
                src,
                dsts: r
                    .dst_ports
                    .iter()
                    .filter_map(|d| AddrSet::parse(&d.ip).map(|a| (a, d.ports)))
                    .filter(|(_, p)| p.first <= p.last)
                    .collect(),
                protos: if r.ip_proto.is_empty() {
                    DEFAULT_PROTOS.to_vec()
                } else {
                    r.ip_proto.clone()
                },
            }
        })
        .collect()
}

/// A rule's `SrcIPs` as an address set.
fn parse_sources(src: &[String]) -> IpSet {
    IpSet::from_ranges(src.iter().flat_map(|s| entry_ranges(s)))
}

/// The inclusive address ranges a filter's address entry (`*`, an IP, a CIDR, `a-b`) covers, as
/// the matcher reads it (none for an entry it does not take): for code that must agree with the
/// matcher on which addresses a source list holds.
pub fn entry_ranges(s: &str) -> Vec<(IpAddr, IpAddr)> {
    AddrSet::parse(s).map(|a| a.bounds()).unwrap_or_default()
}

/// Source lists parsed once for many matchers: rules share their lists (one `Arc` per compiled
/// source), so indexing every node's filter parses each list once, not once per node that
/// keeps a rule with it. Keeps a clone of each list, so no list's address is reused while it
/// is a key; drop it with the matchers it served.
#[derive(Default)]
pub struct SourceSets {
    sets: Mutex<HashMap<usize, (SrcIps, IpSet)>>,
}

impl SourceSets {
    fn get(&self, src: &SrcIps) -> IpSet {
        let key = Arc::as_ptr(src).cast::<String>() as usize;
        if let Ok(sets) = self.sets.lock()
            && let Some((_, set)) = sets.get(&key)
        {
            return set.clone();
        }
        let set = parse_sources(src);
        if let Ok(mut sets) = self.sets.lock() {
            sets.insert(key, (src.clone(), set.clone()));
        }
        set
    }
}

impl Matcher {
    pub fn new(rules: &[FilterRule]) -> Matcher {
        Matcher::build(parse_rules(rules, None))
    }

    fn build(rules: Vec<Rule>) -> Matcher {
        let rules: Vec<Rule> = rules
            .into_iter()
            .filter(|r| !r.dsts.is_empty() && !r.src.is_empty())
            .collect();
        let srcs: Vec<IpSet> = rules.iter().map(|r| r.src.clone()).collect();
        let all_sources = IpSet::union_all(&srcs);
        // per proto, per family: (lo, hi, ports, src index)
        type Ranges = Vec<(u128, u128, PortRange, usize)>;
        let mut per: BTreeMap<u8, (Ranges, Ranges)> = BTreeMap::new();
        for (si, r) in rules.iter().enumerate() {
            for &proto in &r.protos {
                let portless = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
                let slot = per.entry(proto).or_default();
                for (a, ports) in &r.dsts {
                    let ports = if portless { PortRange::ANY } else { *ports };
                    match a {
                        AddrSet::Any => {
                            slot.0.push((0, u128::from(u32::MAX), ports, si));
                            slot.1.push((0, u128::MAX, ports, si));
                        }
                        AddrSet::Net(n) => {
                            let (lo, hi) = net_bounds(n);
                            let ((v6, lo), (_, hi)) = (key(lo), key(hi));
                            if v6 {
                                slot.1.push((lo, hi, ports, si));
                            } else {
                                slot.0.push((lo, hi, ports, si));
                            }
                        }
                        AddrSet::Range(lo, hi) => {
                            let ((v6, lo), (_, hi)) = (key(*lo), key(*hi));
                            if v6 {
                                slot.1.push((lo, hi, ports, si));
                            } else {
                                slot.0.push((lo, hi, ports, si));
                            }
                        }
                    }
                }
            }
        }
        let protos = per
            .into_iter()
            .map(|(p, (v4, v6))| {
                (
                    p,
                    ProtoIndex {
                        v4: Segments::build(&v4, &srcs),
                        v6: Segments::build(&v6, &srcs),
                    },
                )
            })
            .collect();
        Matcher {
            protos,
            all_sources,
        }
    }

    /// A matcher that ignores protocols and ports: one index of who may send anything to
    /// where (query it with [`Matcher::reachable_within`]; for `allows`, protocol 0, any port).
    /// A device's AllowedIPs towards a node need only this, and one index is a quarter of the
    /// lookups of four protocols.
    pub fn any_traffic(rules: &[FilterRule]) -> Matcher {
        Matcher::any_traffic_in(rules, None)
    }

    /// [`Matcher::any_traffic`], its source lists parsed through `shared` (one parse per list
    /// for all the matchers built with it).
    pub fn any_traffic_shared(rules: &[FilterRule], shared: &SourceSets) -> Matcher {
        Matcher::any_traffic_in(rules, Some(shared))
    }

    fn any_traffic_in(rules: &[FilterRule], shared: Option<&SourceSets>) -> Matcher {
        let mut parsed = parse_rules(rules, shared);
        for r in &mut parsed {
            r.protos = vec![0];
            for d in &mut r.dsts {
                d.1 = PortRange::ANY;
            }
        }
        Matcher::build(parsed)
    }

    /// Keep only the destinations that cover one of `own` (a node's own addresses and routes);
    /// used by a runtime that loaded a whole cluster's filter.
    pub fn for_destinations(rules: &[FilterRule], own: &[IpNet]) -> Matcher {
        let mut parsed = parse_rules(rules, None);
        for r in &mut parsed {
            r.dsts.retain(|(a, _)| a.overlaps(own));
        }
        Matcher::build(parsed)
    }

    fn entries(&self, dst: IpAddr, proto: u8) -> Option<&Entries> {
        let idx = self.protos.get(&proto)?;
        let (v6, k) = key(dst);
        if v6 {
            idx.v6.lookup(k)
        } else {
            idx.v4.lookup(k)
        }
    }

    /// Is a packet from `src` to `dst:dst_port` with IP protocol `proto` allowed?
    /// For ICMP (1, 58) ports are not considered.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> bool {
        let Some(entries) = self.entries(dst, proto) else {
            return false;
        };
        entries
            .iter()
            .any(|(p, s)| p.first <= dst_port && dst_port <= p.last && s.contains(src))
    }

    /// Every source admitted to `dst:dst_port` over `proto`.
    pub fn sources_for(&self, dst: IpAddr, proto: u8, dst_port: u16) -> IpSet {
        let mut out = IpSet::new();
        if let Some(entries) = self.entries(dst, proto) {
            for (p, s) in entries {
                if p.first <= dst_port && dst_port <= p.last {
                    out.add_set(s);
                }
            }
        }
        out
    }

    /// The addresses of `within` that some rule lets one of `src` reach (any protocol or
    /// port), as prefixes: a device's AllowedIPs towards a node. Cost: a binary search per
    /// protocol and prefix of `within`, plus the segments inside it.
    pub fn reachable_within(&self, src: &[IpAddr], within: &[IpNet]) -> Vec<IpNet> {
        let admits = |e: &Entries| e.iter().any(|(_, s)| src.iter().any(|ip| s.contains(*ip)));
        // A node's own addresses (one host per family, IPv4 first): each is reachable or not,
        // found by one lookup, with no set to build.
        if let [a @ IpNet::V4(_), b @ IpNet::V6(_)] = within
            && a.prefix_len() == a.max_prefix_len()
            && b.prefix_len() == b.max_prefix_len()
        {
            return [a, b]
                .into_iter()
                .filter(|w| {
                    self.protos
                        .keys()
                        .any(|&p| self.entries(w.addr(), p).is_some_and(&admits))
                })
                .copied()
                .collect();
        }
        let mut out = IpSet::new();
        for w in within {
            let (lo, hi) = net_bounds(w);
            let ((v6, lo), (_, hi)) = (key(lo), key(hi));
            for idx in self.protos.values() {
                let seg = if v6 { &idx.v6 } else { &idx.v4 };
                let first = seg.ends.partition_point(|&e| e < lo);
                for i in first..seg.starts.len() {
                    let (Some(&s), Some(&e)) = (seg.starts.get(i), seg.ends.get(i)) else {
                        break;
                    };
                    if s > hi {
                        break;
                    }
                    let entries = seg.entries.get(i).and_then(|&p| seg.pool.get(p as usize));
                    if entries.is_some_and(admits) {
                        out.add_range(addr(v6, s.max(lo)), addr(v6, e.min(hi)));
                    }
                }
            }
        }
        out.prefixes()
    }

    /// Does any rule admit traffic from `src` (to any destination, port or protocol)?
    pub fn admits_source(&self, src: IpAddr) -> bool {
        self.all_sources.contains(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{NetPortRange, PortRange};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Matchers built through one `SourceSets` answer as those that parse their own lists,
    /// for a list shared by two filters and one written again in another `Arc`.
    #[test]
    fn shared_source_sets_answer_alike() {
        let shared: SrcIps = vec!["100.64.0.1".into(), "100.64.1.0-100.64.1.9".into()].into();
        let rule = |src: SrcIps, dst: &str| FilterRule {
            src_ips: src,
            dst_ports: vec![NetPortRange {
                ip: dst.into(),
                ports: PortRange {
                    first: 80,
                    last: 80,
                },
            }],
            ip_proto: vec![],
            cap_grant: vec![],
        };
        let filters = [
            vec![rule(shared.clone(), "100.64.0.2")],
            vec![
                rule(shared.clone(), "100.64.0.3"),
                rule(vec!["100.64.1.0-100.64.1.9".into()].into(), "100.64.0.3"),
            ],
            vec![rule(
                vec!["100.64.0.1".into(), "100.64.1.0-100.64.1.9".into()].into(),
                "*",
            )],
        ];
        let sets = SourceSets::default();
        let within: Vec<IpNet> = vec!["100.64.0.0/24".parse().unwrap()];
        for f in &filters {
            let (own, with_shared) = (
                Matcher::any_traffic(f),
                Matcher::any_traffic_shared(f, &sets),
            );
            for src in ["100.64.0.1", "100.64.1.5", "100.64.2.1"] {
                assert_eq!(
                    own.reachable_within(&[ip(src)], &within),
                    with_shared.reachable_within(&[ip(src)], &within)
                );
            }
        }
    }

    /// A node's own addresses (one host per family, IPv4 first) take the one-lookup path;
    /// listed the other way round they take the general one: the answers agree.
    #[test]
    fn own_addresses_answer_as_the_general_path() {
        let rule = |src: &str, dst: &str| FilterRule {
            src_ips: vec![src.into()].into(),
            dst_ports: vec![NetPortRange {
                ip: dst.into(),
                ports: PortRange {
                    first: 80,
                    last: 90,
                },
            }],
            ip_proto: vec![],
            cap_grant: vec![],
        };
        let filters = [
            vec![rule("100.64.0.1", "100.64.0.2")],
            vec![rule("100.64.0.1", "fd7a:115c:a1e0::2")],
            vec![rule("100.64.0.0/24", "*")],
            vec![
                rule("100.64.0.1", "100.64.0.2"),
                rule("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2"),
            ],
            vec![rule("100.64.0.9", "100.64.0.0/16")],
        ];
        let (v4, v6): (IpNet, IpNet) = (
            "100.64.0.2/32".parse().unwrap(),
            "fd7a:115c:a1e0::2/128".parse().unwrap(),
        );
        for f in &filters {
            let m = Matcher::any_traffic(f);
            for src in [
                vec![ip("100.64.0.1")],
                vec![ip("100.64.0.9"), ip("fd7a:115c:a1e0::1")],
                vec![ip("100.64.1.1")],
            ] {
                assert_eq!(
                    m.reachable_within(&src, &[v4, v6]),
                    m.reachable_within(&src, &[v6, v4]),
                    "{f:?} from {src:?}"
                );
            }
        }
    }

    #[test]
    fn basic_match() {
        let rules = vec![FilterRule {
            src_ips: vec!["100.64.0.1".into(), "100.64.1.0-100.64.1.9".into()].into(),
            dst_ports: vec![NetPortRange {
                ip: "100.64.0.2/32".into(),
                ports: PortRange {
                    first: 80,
                    last: 80,
                },
            }],
            ip_proto: vec![],
            cap_grant: vec![],
        }];
        let m = Matcher::new(&rules);
        assert!(m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_TCP, 80));
        assert!(m.allows(ip("100.64.1.5"), ip("100.64.0.2"), PROTO_UDP, 80));
        assert!(!m.allows(ip("100.64.1.10"), ip("100.64.0.2"), PROTO_TCP, 80));
        assert!(!m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_TCP, 81));
        assert!(m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_ICMP, 0));
        assert!(!m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_SCTP, 80));
        assert!(m.admits_source(ip("100.64.1.9")));
        assert!(!m.admits_source(ip("100.64.1.10")));
    }

    #[test]
    fn overlapping_destinations_and_wildcards() {
        let r = |src: &str, dst: &str, first: u16, last: u16, protos: Vec<u8>| FilterRule {
            src_ips: vec![src.into()].into(),
            dst_ports: vec![NetPortRange {
                ip: dst.into(),
                ports: PortRange { first, last },
            }],
            ip_proto: protos,
            cap_grant: vec![],
        };
        let rules = vec![
            r("10.0.0.0/8", "10.33.0.0/16", 22, 22, vec![6]),
            r("100.64.0.5", "10.33.1.0/24", 0, 65535, vec![]),
            r("*", "*", 443, 443, vec![6]),
            r("fd7a:115c:a1e0::1", "fd7a:115c:a1e0::/48", 53, 53, vec![17]),
            r("garbage", "10.0.0.1", 1, 1, vec![]),
        ];
        let m = Matcher::new(&rules);
        assert!(m.allows(ip("10.1.2.3"), ip("10.33.5.5"), 6, 22));
        assert!(!m.allows(ip("10.1.2.3"), ip("10.33.5.5"), 17, 22));
        assert!(m.allows(ip("100.64.0.5"), ip("10.33.1.200"), 17, 9999));
        assert!(!m.allows(ip("100.64.0.5"), ip("10.33.2.1"), 17, 9999));
        assert!(m.allows(ip("1.2.3.4"), ip("::1"), 6, 443));
        assert!(m.allows(ip("fd7a:115c:a1e0::1"), ip("fd7a:115c:a1e0::99"), 17, 53));
        assert!(!m.allows(ip("fd7a:115c:a1e0::2"), ip("fd7a:115c:a1e0::99"), 17, 53));
        assert!(!m.allows(ip("10.0.0.9"), ip("10.0.0.1"), 6, 1));

        let own = vec!["10.33.1.0/24".parse::<IpNet>().unwrap()];
        let m2 = Matcher::for_destinations(&rules, &own);
        assert!(m2.allows(ip("100.64.0.5"), ip("10.33.1.1"), 6, 1));
        assert!(m2.allows(ip("10.1.1.1"), ip("10.33.1.1"), 6, 22));
        assert!(!m2.allows(ip("fd7a:115c:a1e0::1"), ip("fd7a:115c:a1e0::99"), 17, 53));
        let srcs = m.sources_for(ip("10.33.1.1"), 6, 22);
        assert!(srcs.contains(ip("10.9.9.9")) && srcs.contains(ip("100.64.0.5")));
        assert!(!srcs.contains(ip("8.8.8.8")));
    }
}
