//! Packet-time decisions over compiled [`FilterRule`]s: "is (src, dst, proto, dst port) allowed?".
//!
//! This first version is a straightforward scan; the policy-engine issue replaces the internals
//! with an index (the API stays).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::filter::FilterRule;

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
            let a: IpAddr = a.parse().ok()?;
            let b: IpAddr = b.parse().ok()?;
            return (a.is_ipv4() == b.is_ipv4()).then_some(AddrSet::Range(a, b));
        }
        if let Ok(net) = s.parse::<IpNet>() {
            return Some(AddrSet::Net(net.trunc()));
        }
        s.parse::<IpAddr>()
            .ok()
            .map(|ip| AddrSet::Net(IpNet::from(ip)))
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match self {
            AddrSet::Any => true,
            AddrSet::Net(n) => n.contains(&ip),
            AddrSet::Range(a, b) => ip.is_ipv4() == a.is_ipv4() && *a <= ip && ip <= *b,
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    srcs: Vec<AddrSet>,
    dsts: Vec<(AddrSet, u16, u16)>,
    protos: Vec<u8>,
}

/// A compiled filter. Entries that fail to parse are dropped (deny), never a panic.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    rules: Vec<Rule>,
}

impl Matcher {
    pub fn new(rules: &[FilterRule]) -> Matcher {
        let rules = rules
            .iter()
            .map(|r| Rule {
                srcs: r.src_ips.iter().filter_map(|s| AddrSet::parse(s)).collect(),
                dsts: r
                    .dst_ports
                    .iter()
                    .filter_map(|d| AddrSet::parse(&d.ip).map(|a| (a, d.ports.first, d.ports.last)))
                    .collect(),
                protos: if r.ip_proto.is_empty() {
                    DEFAULT_PROTOS.to_vec()
                } else {
                    r.ip_proto.clone()
                },
            })
            .collect();
        Matcher { rules }
    }

    /// Keep only the destinations that cover one of `own` (a node's own addresses and routes);
    /// used by a runtime that loaded a whole cluster's filter.
    pub fn for_destinations(rules: &[FilterRule], own: &[IpNet]) -> Matcher {
        let mut m = Matcher::new(rules);
        for r in &mut m.rules {
            r.dsts.retain(|(a, _, _)| match a {
                AddrSet::Any => true,
                AddrSet::Net(n) => own.iter().any(|o| n.contains(o) || o.contains(n)),
                AddrSet::Range(lo, hi) => own.iter().any(|o| {
                    o.contains(lo) || o.contains(hi) || (*lo <= o.addr() && o.addr() <= *hi)
                }),
            });
        }
        m.rules.retain(|r| !r.dsts.is_empty());
        m
    }

    /// Is a packet from `src` to `dst:dst_port` with IP protocol `proto` allowed?
    /// For ICMP (1, 58) ports are not considered.
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> bool {
        let portless = proto == PROTO_ICMP || proto == PROTO_ICMPV6;
        self.rules.iter().any(|r| {
            r.protos.contains(&proto)
                && r.srcs.iter().any(|s| s.contains(src))
                && r.dsts.iter().any(|(a, first, last)| {
                    a.contains(dst) && (portless || (*first <= dst_port && dst_port <= *last))
                })
        })
    }

    /// Does any rule admit traffic from `src` (to any destination, port or protocol)?
    pub fn admits_source(&self, src: IpAddr) -> bool {
        self.rules
            .iter()
            .any(|r| r.srcs.iter().any(|s| s.contains(src)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{NetPortRange, PortRange};

    #[test]
    fn basic_match() {
        let rules = vec![FilterRule {
            src_ips: vec!["100.64.0.1".into(), "100.64.1.0-100.64.1.9".into()],
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
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_TCP, 80));
        assert!(m.allows(ip("100.64.1.5"), ip("100.64.0.2"), PROTO_UDP, 80));
        assert!(!m.allows(ip("100.64.1.10"), ip("100.64.0.2"), PROTO_TCP, 80));
        assert!(!m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_TCP, 81));
        assert!(m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_ICMP, 0));
        assert!(!m.allows(ip("100.64.0.1"), ip("100.64.0.2"), PROTO_SCTP, 80));
    }
}
