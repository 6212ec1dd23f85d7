//! UDP and ICMP echo forwarders: parsed and built directly, without smoltcp.
//!
//! Assumes: the filter admitted the packet. Guarantees: one kernel socket per session (UDP to
//! the forward target, an unprivileged ping socket per tunnel source and echo id, or the reply
//! path of an egress listener), at most [`MAX_UDP_SESSIONS`] in all and `MAX_UDP_PER_OWNER`
//! per owner (refusals counted), idle sessions expire after [`UDP_IDLE`]; UDP DNS to the
//! node's own address is answered from the zone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Token};
use tsk8s_policy::runtime_config::{Mode, Protocol};

use crate::metrics::DropReason;
use crate::packet::{self, Info, PROTO_UDP};

use super::budget::{MAX_UDP_PER_OWNER, Owner};
use super::forward::Listener;
use super::{Engine, RX_BATCH, UDP_BASE};

pub(super) const MAX_UDP_SESSIONS: usize = 16_384;
pub(super) const UDP_IDLE: Duration = Duration::from_secs(60);

pub(super) enum UdpKind {
    /// Kernel socket connected to the forward target.
    Forward(UdpSocket),
    /// Reply path of an egress listener: (listener index, client address).
    Egress(usize, SocketAddr),
    /// ICMP echo through the subnet router: an unprivileged ping socket (`SOCK_DGRAM`,
    /// `IPPROTO_ICMP[V6]`). Keyed by ((tunnel source, echo id), (destination, 0)).
    Ping(UdpSocket),
}

pub(super) struct UdpSession {
    pub(super) kind: UdpKind,
    pub(super) owner: Owner,
    /// (tunnel remote, tunnel local)
    pub(super) key: (SocketAddr, SocketAddr),
    pub(super) last: Instant,
}

impl Engine {
    /// May `owner` open one more UDP session? Refusals are counted (and per peer).
    pub(super) fn udp_admit(&mut self, owner: Owner, peer_slot: Option<usize>) -> bool {
        if self.udp_by_key.len() >= MAX_UDP_SESSIONS {
            self.net.counters.drop(DropReason::TableFull);
            return false;
        }
        if self.udp_owned.get(&owner).copied().unwrap_or(0) >= MAX_UDP_PER_OWNER {
            self.net.counters.drop(DropReason::OverLimit);
            if let Some(Some(p)) = peer_slot.and_then(|s| self.net.peers.get_mut(s)) {
                p.stats.conns_refused += 1;
            }
            return false;
        }
        true
    }

    pub(super) fn inbound_udp(&mut self, peer_slot: usize, info: &Info, pkt: &[u8]) {
        let remote = SocketAddr::new(info.src, info.sport);
        let local = SocketAddr::new(info.dst, info.dport);
        let Some(payload) = pkt.get(info.payload_off..info.total_len) else {
            self.net.counters.drop(DropReason::Malformed);
            return;
        };
        let to_own = self.is_own(info.dst);
        if info.dport == 0 {
            // Reserved; also keeps the key space of ICMP echo sessions (local port 0) apart.
            self.net.counters.drop(DropReason::Malformed);
            return;
        }
        if to_own && info.dport == 53 {
            self.net.counters.dns_queries += 1;
            if let Some(resp) = self.zone.answer(payload) {
                let mut out = std::mem::take(&mut self.out_scratch);
                if packet::build_udp(&mut out, local, remote, &resp) {
                    self.net.send_inner(&out);
                }
                self.out_scratch = out;
            }
            return;
        }
        if let Some(&i) = self.udp_by_key.get(&(remote, local)) {
            if let Some(Some(s)) = self.udp.get_mut(i) {
                s.last = Instant::now();
                match &s.kind {
                    UdpKind::Forward(sock) => {
                        let _ = sock.send(payload);
                    }
                    UdpKind::Egress(li, client) => {
                        if let Some(Listener::Udp(l, _)) = self.listeners.get(*li) {
                            let _ = l.send_to(payload, *client);
                        }
                    }
                    UdpKind::Ping(_) => {}
                }
            }
            return;
        }
        let target = match &self.loaded.node.mode {
            Mode::Proxy { ports, .. } if to_own => ports
                .iter()
                .find(|p| p.protocol == Protocol::Udp && p.listen == info.dport)
                .and_then(|pm| Some(SocketAddr::new(self.proxy_target?, pm.target))),
            Mode::Sidecar { ports } if to_own => ports
                .iter()
                .find(|p| p.protocol == Protocol::Udp && p.listen == info.dport)
                .map(|pm| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), pm.target)),
            Mode::SubnetRouter { .. } if !to_own => Some(local),
            _ => None,
        };
        let Some(target) = target else {
            self.net.counters.drop(DropReason::NoListener);
            return;
        };
        let owner = self.owner_of(peer_slot);
        if !self.udp_admit(owner, Some(peer_slot)) {
            return;
        }
        let bind = match target {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let Ok(sock) = UdpSocket::bind(bind) else {
            return;
        };
        if sock.connect(target).is_err() {
            return;
        }
        let _ = sock.send(payload);
        let slot = self.free_udp.pop().unwrap_or(self.udp.len());
        let mut sock = sock;
        if self
            .poll
            .registry()
            .register(&mut sock, Token(UDP_BASE + slot), Interest::READABLE)
            .is_err()
        {
            return;
        }
        let s = UdpSession {
            kind: UdpKind::Forward(sock),
            owner,
            key: (remote, local),
            last: Instant::now(),
        };
        self.put_udp(slot, s);
    }

    pub(super) fn put_udp(&mut self, slot: usize, s: UdpSession) {
        let key = s.key;
        let owner = s.owner;
        if slot == self.udp.len() {
            self.udp.push(Some(s));
        } else if let Some(e) = self.udp.get_mut(slot) {
            *e = Some(s);
        }
        self.udp_by_key.insert(key, slot);
        *self.udp_owned.entry(owner).or_insert(0) += 1;
        self.net.counters.udp_sessions = self.udp_by_key.len() as u64;
    }

    pub(super) fn remove_udp(&mut self, slot: usize) {
        let Some(e) = self.udp.get_mut(slot) else {
            return;
        };
        let Some(s) = e.take() else {
            return;
        };
        self.udp_by_key.remove(&s.key);
        if let Some(n) = self.udp_owned.get_mut(&s.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.udp_owned.remove(&s.owner);
            }
        }
        match s.kind {
            UdpKind::Forward(mut sock) | UdpKind::Ping(mut sock) => {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            UdpKind::Egress(li, client) => {
                self.egress_udp_by_client.remove(&(li, client));
                self.used_ports.remove(&s.key.1.port());
            }
        }
        self.free_udp.push(slot);
        self.net.counters.udp_sessions = self.udp_by_key.len() as u64;
    }

    /// ICMP echo request to a destination inside the routes: sent from an unprivileged ping
    /// socket (one per tunnel source and echo id); replies come back in `on_udp_session`.
    pub(super) fn forward_ping(&mut self, peer_slot: usize, info: &Info, pkt: &[u8]) {
        let Some(body) = pkt.get(info.l4_off..info.total_len) else {
            self.net.counters.drop(DropReason::Malformed);
            return;
        };
        if body.len() < 8 {
            self.net.counters.drop(DropReason::Malformed);
            return;
        }
        let key = (
            SocketAddr::new(info.src, info.dport),
            SocketAddr::new(info.dst, 0),
        );
        let target = SocketAddr::new(info.dst, 0);
        if let Some(&i) = self.udp_by_key.get(&key) {
            if let Some(Some(s)) = self.udp.get_mut(i)
                && let UdpKind::Ping(sock) = &s.kind
            {
                s.last = Instant::now();
                let _ = sock.send_to(body, target);
            }
            return;
        }
        let owner = self.owner_of(peer_slot);
        if !self.udp_admit(owner, Some(peer_slot)) {
            return;
        }
        let Some(mut sock) = ping_socket(info.dst.is_ipv6()) else {
            self.net.counters.drop(DropReason::PingUnavailable);
            return;
        };
        let slot = self.free_udp.pop().unwrap_or(self.udp.len());
        if self
            .poll
            .registry()
            .register(&mut sock, Token(UDP_BASE + slot), Interest::READABLE)
            .is_err()
        {
            self.free_udp.push(slot);
            return;
        }
        let _ = sock.send_to(body, target);
        self.put_udp(
            slot,
            UdpSession {
                kind: UdpKind::Ping(sock),
                owner,
                key,
                last: Instant::now(),
            },
        );
    }

    /// Replies from a forward target: back into the tunnel.
    pub(super) fn on_udp_session(&mut self, slot: usize) {
        let mut buf = std::mem::take(&mut self.rx_buf);
        let mut out = std::mem::take(&mut self.out_scratch);
        if let Some(Some(s)) = self.udp.get_mut(slot)
            && let UdpKind::Ping(sock) = &s.kind
        {
            let (remote, local) = s.key;
            for _ in 0..RX_BATCH {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        s.last = Instant::now();
                        let Some(msg) = buf.get(..n) else { break };
                        if from.ip() != local.ip() || n + 48 > self.net.mtu {
                            continue;
                        }
                        if packet::build_echo_reply_from(
                            &mut out,
                            local.ip(),
                            remote.ip(),
                            msg,
                            remote.port(),
                        ) {
                            self.net.send_inner(&out);
                        }
                    }
                    Err(_) => break,
                }
            }
        } else if let Some(Some(s)) = self.udp.get_mut(slot)
            && let UdpKind::Forward(sock) = &s.kind
        {
            let (remote, local) = s.key;
            for _ in 0..RX_BATCH {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        s.last = Instant::now();
                        let Some(payload) = buf.get(..n) else { break };
                        if n + 48 > self.net.mtu {
                            self.net.counters.drop(DropReason::TooBig);
                            continue;
                        }
                        if packet::build_udp(&mut out, local, remote, payload) {
                            self.net.send_inner(&out);
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        self.rx_buf = buf;
        self.out_scratch = out;
    }

    pub(super) fn egress_udp(
        &mut self,
        li: usize,
        client: SocketAddr,
        target: SocketAddr,
        data: &[u8],
    ) {
        let slot = match self.egress_udp_by_client.get(&(li, client)) {
            Some(&s) => s,
            None => {
                if !self.udp_admit(Owner::Local, None) {
                    return;
                }
                let Some(port) = self.alloc_port() else {
                    self.net.counters.drop(DropReason::TableFull);
                    return;
                };
                let local = SocketAddr::new(self.own_for(target.ip()), port);
                let slot = self.free_udp.pop().unwrap_or(self.udp.len());
                self.put_udp(
                    slot,
                    UdpSession {
                        kind: UdpKind::Egress(li, client),
                        owner: Owner::Local,
                        key: (target, local),
                        last: Instant::now(),
                    },
                );
                self.egress_udp_by_client.insert((li, client), slot);
                self.net.open_flow((PROTO_UDP, local, target));
                slot
            }
        };
        let Some(Some(s)) = self.udp.get_mut(slot) else {
            return;
        };
        s.last = Instant::now();
        let (target, local) = s.key;
        if data.len() + 48 > self.net.mtu {
            self.net.counters.drop(DropReason::TooBig);
            return;
        }
        let mut out = std::mem::take(&mut self.out_scratch);
        if packet::build_udp(&mut out, local, target, data) {
            self.net.send_inner(&out);
        }
        self.out_scratch = out;
    }
}

/// An unprivileged ICMP ("ping") socket; None when the process's group is outside
/// `net.ipv4.ping_group_range` (the kernel default `1 0` admits nobody).
pub(super) fn ping_socket(v6: bool) -> Option<UdpSocket> {
    let (domain, proto) = if v6 {
        (libc::AF_INET6, libc::IPPROTO_ICMPV6)
    } else {
        (libc::AF_INET, libc::IPPROTO_ICMP)
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, non-blocking datagram socket that nothing else owns. A ping
    // socket supports the datagram calls UdpSocket makes (send_to/recv_from).
    let std_sock = unsafe { std::net::UdpSocket::from_raw_fd(fd) };
    Some(UdpSocket::from_std(std_sock))
}
