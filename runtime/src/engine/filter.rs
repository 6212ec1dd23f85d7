//! The inbound filter: the decision for every decrypted inner packet, then dispatch.
//!
//! Assumes: `wire` decrypted and authenticated the packet and names the peer slot it came
//! from; connection tracking (`Net::is_reply`, flows opened by outgoing traffic) lives in
//! `crate::wire`. Guarantees: a packet reaches a forwarder, smoltcp or the DNS responder only
//! if its source is inside the sending peer's allowed IPs, its destination is this node or
//! inside its routes, and it is DNS to this node from a source the policy admits, a reply to
//! a flow this node opened, or allowed by the policy `Matcher`. Default deny; every drop is
//! counted by reason.

use std::net::IpAddr;

use tsk8s_policy::runtime_config::Mode;

use crate::metrics::DropReason;
use crate::packet::{self, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use super::Engine;

impl Engine {
    pub(super) fn is_own(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.own4) || ip == IpAddr::V6(self.own6)
    }

    pub(super) fn in_routes(&self, ip: IpAddr) -> bool {
        self.routes.iter().any(|r| r.contains(&ip))
    }

    /// Filter and dispatch one decrypted inner packet from peer `slot`.
    pub(super) fn inbound(&mut self, slot: usize, pkt: Vec<u8>) {
        let Ok(info) = packet::parse(&pkt) else {
            self.net.counters.drop(DropReason::Malformed);
            return;
        };
        if !self.net.peer_allows_source(slot, info.src) {
            self.net.counters.drop(DropReason::AllowedIps);
            return;
        }
        let to_own = self.is_own(info.dst);
        if !to_own && !self.in_routes(info.dst) {
            self.net.counters.drop(DropReason::NoRoute);
            return;
        }
        if info.fragment {
            self.net.counters.drop(DropReason::Malformed);
            return;
        }
        // DNS (like MagicDNS) only for peers the policy lets reach this node: on port 53, or
        // on any port (a peer with a grant here). Others get nothing, not even DNS.
        let dns = to_own
            && info.dport == 53
            && (info.proto == PROTO_UDP || info.proto == PROTO_TCP)
            && self.matcher.admits_source(info.src);
        let allowed = dns
            || self.net.is_reply(&info)
            || self
                .matcher
                .allows(info.src, info.dst, info.proto, info.dport);
        if !allowed {
            self.net.counters.drop(DropReason::Policy);
            return;
        }
        match info.proto {
            PROTO_TCP => self.inbound_tcp(slot, &info, pkt),
            PROTO_UDP => self.inbound_udp(slot, &info, &pkt),
            PROTO_ICMP | PROTO_ICMPV6 => {
                if to_own && packet::is_echo_request(&info) {
                    let mut out = std::mem::take(&mut self.out_scratch);
                    if packet::build_echo_reply(&mut out, &pkt, &info) {
                        self.net.send_inner(&out);
                    }
                    self.out_scratch = out;
                } else if packet::is_echo_request(&info)
                    && matches!(self.loaded.node.mode, Mode::SubnetRouter { .. })
                {
                    self.forward_ping(slot, &info, &pkt);
                } else if !packet::is_echo_request(&info) {
                    // ICMP errors / echo replies: let smoltcp see them (e.g. for TCP).
                    self.net.rx.push_back(pkt);
                } else {
                    self.net.counters.drop(DropReason::NoListener);
                }
            }
            _ => self.net.counters.drop(DropReason::NoListener),
        }
    }
}
