//! The WireGuard side: the UDP socket, one `boringtun::noise::Tunn` per peer, routing of inner
//! packets to peers, connection tracking of flows this node opened, and the smoltcp `Device`.
//!
//! `Net` is the smoltcp device: packets smoltcp transmits are encrypted and sent right away
//! from the `TxToken` (no intermediate queue); received packets are queued by the engine after
//! decryption and filtering.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};

use crate::config::PeerSpec;
use crate::metrics::{Counters, DropReason, PeerStats};
use crate::packet::{self, Info, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};
use crate::sendq::{self, SendQueue};

/// Handshakes per second before cookie replies are demanded.
pub const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Largest datagram / packet we handle.
pub const BUF: usize = 65_536;
/// Flow-table bound.
pub const MAX_FLOWS: usize = 65_536;
/// A peer without an endpoint is sent at most one handshake initiation per this interval in
/// answer to undecryptable packets (see [`Net::probe_unknown`]).
pub const PROBE_PER_PEER: Duration = Duration::from_secs(5);
/// Initiations per second sent to one source address in answer to undecryptable packets.
pub const PROBES_PER_SOURCE: u32 = 4;
/// Initiations per second sent in answer to undecryptable packets, all sources together.
pub const PROBES_PER_SECOND: u32 = 32;
/// Source addresses tracked by the probe limiter.
const PROBE_SOURCES: usize = 4096;

pub struct Peer {
    pub spec: PeerSpec,
    pub tunn: Tunn,
    pub index: u32,
    pub endpoint: Option<SocketAddr>,
    /// `endpoint` was learned from an authenticated packet (roaming): a resolution of the
    /// configured name does not override it.
    pub roamed: bool,
    /// Last handshake initiation sent in answer to an undecryptable packet.
    pub last_probe: Option<Instant>,
    pub stats: PeerStats,
}

/// The configured endpoint if it is an `ip:port` literal (names go to the resolver thread).
fn literal_endpoint(spec: &PeerSpec) -> Option<SocketAddr> {
    spec.endpoint.as_deref()?.parse().ok()
}

/// Key of a tracked flow as seen leaving this node: (proto, local, remote).
pub type FlowKey = (u8, SocketAddr, SocketAddr);

pub struct Net {
    pub socket: mio::net::UdpSocket,
    pub peers: Vec<Option<Peer>>,
    pub by_key: HashMap<[u8; 32], usize>,
    pub by_index: HashMap<u32, usize>,
    /// (net, peer slot), longest prefix first.
    routes: Vec<(IpNet, usize)>,
    route_cache: Option<(IpAddr, usize)>,
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub rate_limiter: Arc<RateLimiter>,
    next_index: u32,
    /// Peer indices are `index_base | n` with `n <= index_mask` (a gateway gives each
    /// identity its own range, see `crate::gateway`); a standalone node owns all 24 bits.
    index_base: u32,
    index_mask: u32,
    /// Flows opened by this node (egress): replies to them pass the filter.
    pub flows: HashMap<FlowKey, Instant>,
    pub counters: Counters,
    /// Packets for smoltcp, already decrypted and filtered.
    pub rx: VecDeque<Vec<u8>>,
    pub mtu: usize,
    pub now: Instant,
    enc_buf: Vec<u8>,
    tx_scratch: Vec<u8>,
    /// Encrypted datagrams waiting for the next flush (`crate::sendq`): the packet loop
    /// flushes after every stack poll and before it blocks; a datagram sent at once (a
    /// handshake message, keepalive, cookie reply) flushes it first, to keep the order.
    pub txq: SendQueue,
    /// Probe limiter: initiations sent per source address in the current second, and in all.
    probe_sources: HashMap<IpAddr, u32>,
    probes_this_second: u32,
    probe_cursor: usize,
}

impl Net {
    pub fn new(socket: mio::net::UdpSocket, secret: StaticSecret, mtu: usize) -> Net {
        let public = PublicKey::from(&secret);
        let rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        Net {
            socket,
            peers: Vec::new(),
            by_key: HashMap::new(),
            by_index: HashMap::new(),
            routes: Vec::new(),
            route_cache: None,
            secret,
            public,
            rate_limiter,
            next_index: random_index_start(&public),
            index_base: 0,
            index_mask: 0x00ff_ffff,
            flows: HashMap::new(),
            counters: Counters::default(),
            rx: VecDeque::new(),
            mtu,
            now: Instant::now(),
            enc_buf: vec![0; BUF + 64],
            tx_scratch: Vec::with_capacity(BUF),
            txq: SendQueue::default(),
            probe_sources: HashMap::new(),
            probes_this_second: 0,
            probe_cursor: 0,
        }
    }

    /// Give this node's peers the indices `base | n`, `1 <= n <= mask` (before `set_peers`).
    pub fn set_index_range(&mut self, base: u32, mask: u32) {
        self.index_base = base & 0x00ff_ffff & !mask;
        self.index_mask = mask & 0x00ff_ffff;
        self.next_index = 1;
    }

    /// A free peer index in this node's range (skipping `used`), if any is left.
    fn alloc_index(&mut self, used: &std::collections::HashSet<u32>) -> Option<u32> {
        for _ in 0..=self.index_mask {
            let n = self.next_index & self.index_mask;
            self.next_index = self.next_index.wrapping_add(1);
            let index = self.index_base | n;
            if n != 0 && !used.contains(&index) {
                return Some(index);
            }
        }
        None
    }

    /// Install the peer set. Peers whose key and keepalive are unchanged keep their `Tunn`
    /// (and so their sessions); others are created or removed.
    pub fn set_peers(&mut self, specs: &[PeerSpec]) {
        let mut old: HashMap<[u8; 32], Peer> = HashMap::new();
        for p in self.peers.drain(..).flatten() {
            old.insert(p.spec.public_key, p);
        }
        self.by_key.clear();
        self.by_index.clear();
        let mut used: std::collections::HashSet<u32> = old.values().map(|p| p.index).collect();
        for spec in specs {
            let peer = match old.remove(&spec.public_key) {
                Some(mut p) if p.spec.keepalive == spec.keepalive => {
                    if p.spec.endpoint != spec.endpoint {
                        // A new configured endpoint wins over a roamed one once it resolves.
                        p.roamed = false;
                        if let Some(e) = literal_endpoint(spec) {
                            p.endpoint = Some(e);
                        }
                    }
                    p.spec = spec.clone();
                    p
                }
                prev => {
                    let Some(index) = self.alloc_index(&used) else {
                        // Only with more peers than the index range holds (a gateway checks
                        // the peer count when it loads its config).
                        self.counters.drop(DropReason::TableFull);
                        continue;
                    };
                    used.insert(index);
                    let tunn = Tunn::new(
                        self.secret.clone(),
                        PublicKey::from(spec.public_key),
                        None,
                        spec.keepalive,
                        index,
                        Some(self.rate_limiter.clone()),
                    );
                    let endpoint = literal_endpoint(spec).or(prev.and_then(|p| p.endpoint));
                    Peer {
                        spec: spec.clone(),
                        tunn,
                        index,
                        endpoint,
                        roamed: false,
                        last_probe: None,
                        stats: PeerStats::default(),
                    }
                }
            };
            let slot = self.peers.len();
            self.by_key.insert(peer.spec.public_key, slot);
            self.by_index.insert(peer.index, slot);
            self.peers.push(Some(peer));
        }
        let mut routes: Vec<(IpNet, usize)> = Vec::new();
        for (slot, p) in self.peers.iter().enumerate() {
            if let Some(p) = p {
                for n in &p.spec.allowed_ips {
                    routes.push((*n, slot));
                }
            }
        }
        routes.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        self.routes = routes;
        self.route_cache = None;
    }

    /// A resolution of a configured endpoint name: peers configured with it that have not
    /// roamed since take the address.
    pub fn apply_resolved(&mut self, name: &str, addr: SocketAddr) {
        for p in self.peers.iter_mut().flatten() {
            if !p.roamed && p.spec.endpoint.as_deref() == Some(name) {
                p.endpoint = Some(addr);
            }
        }
    }

    /// Peer that owns destination `dst` (longest prefix among allowed_ips).
    pub fn route(&mut self, dst: IpAddr) -> Option<usize> {
        if let Some((a, s)) = self.route_cache
            && a == dst
        {
            return Some(s);
        }
        let s = self
            .routes
            .iter()
            .find(|(n, _)| n.contains(&dst))
            .map(|(_, s)| *s)?;
        self.route_cache = Some((dst, s));
        Some(s)
    }

    pub fn peer_allows_source(&self, slot: usize, src: IpAddr) -> bool {
        self.peers
            .get(slot)
            .and_then(|p| p.as_ref())
            .is_some_and(|p| p.spec.allowed_ips.iter().any(|n| n.contains(&src)))
    }

    fn send_udp(&mut self, data_in_enc: usize, to: SocketAddr) {
        let Some(data) = self.enc_buf.get(..data_in_enc) else {
            return;
        };
        send_now(&mut self.txq, &self.socket, data, to, &mut self.counters);
    }

    /// Send every queued datagram (see `crate::sendq`).
    pub fn flush(&mut self) {
        self.txq.flush(self.socket.as_raw_fd(), &mut self.counters);
    }

    /// Encrypt and send one inner packet produced by this node.
    pub fn send_inner(&mut self, pkt: &[u8]) {
        let Ok(info) = packet::parse(pkt) else {
            self.counters.drop(DropReason::Malformed);
            return;
        };
        self.track_outbound(&info);
        let Some(slot) = self.route(info.dst) else {
            self.counters.drop(DropReason::NoRoute);
            return;
        };
        let Some(Some(peer)) = self.peers.get_mut(slot) else {
            return;
        };
        if pkt.len() > BUF {
            self.counters.drop(DropReason::TooBig);
            return;
        }
        peer.stats.tx_bytes += pkt.len() as u64;
        peer.stats.tx_packets += 1;
        let Some(ep) = peer.endpoint else {
            // Still encapsulated: boringtun keeps it for the handshake it starts.
            if let TunnResult::WriteToNetwork(_) = peer.tunn.encapsulate(pkt, &mut self.enc_buf) {
                self.counters.drop(DropReason::NoEndpoint);
            }
            return;
        };
        // The ciphertext (or the handshake initiation boringtun sends instead while it has no
        // session, at most 148 bytes) is written straight into the send queue.
        let max = (pkt.len() + DATA_OVERHEAD).max(HANDSHAKE_INIT_LEN);
        if !self.txq.has_room(max) {
            self.txq.flush(self.socket.as_raw_fd(), &mut self.counters);
        }
        self.txq
            .push_with(ep, max, |buf| match peer.tunn.encapsulate(pkt, buf) {
                TunnResult::WriteToNetwork(out) => out.len(),
                _ => 0, // queued while a handshake runs
            });
    }

    /// Record flows this node opens so that replies pass the filter.
    fn track_outbound(&mut self, info: &Info) {
        let (proto, initiating) = match info.proto {
            PROTO_TCP => (PROTO_TCP, info.flags & (TCP_SYN | TCP_ACK) == TCP_SYN),
            PROTO_UDP => (PROTO_UDP, false),
            PROTO_ICMP | PROTO_ICMPV6 => (info.proto, packet::is_echo_request(info)),
            _ => return,
        };
        let key = (
            proto,
            SocketAddr::new(info.src, info.sport),
            SocketAddr::new(info.dst, info.dport),
        );
        if let Some(t) = self.flows.get_mut(&key) {
            *t = self.now;
        } else if initiating {
            self.open_flow(key);
        }
    }

    /// Track a flow explicitly (UDP egress sessions).
    pub fn open_flow(&mut self, key: FlowKey) {
        if self.flows.len() >= MAX_FLOWS {
            self.counters.drop(DropReason::TableFull);
            return;
        }
        self.flows.insert(key, self.now);
    }

    /// Is `info` (inbound) a reply to a flow this node opened?
    pub fn is_reply(&self, info: &Info) -> bool {
        let key = (
            info.proto,
            SocketAddr::new(info.dst, info.dport),
            SocketAddr::new(info.src, info.sport),
        );
        self.flows.contains_key(&key)
    }

    pub fn expire_flows(&mut self) {
        let now = self.now;
        self.flows.retain(|k, t| {
            let ttl = if k.0 == PROTO_TCP {
                Duration::from_secs(600)
            } else {
                Duration::from_secs(60)
            };
            now.duration_since(*t) < ttl
        });
    }

    /// The slot of the peer a data message is for, from its receiver index alone (no
    /// decryption; used to queue it fairly, `engine::fair`). `None` for anything else.
    pub fn data_slot(&self, data: &[u8]) -> Option<usize> {
        match Tunn::parse_incoming_packet(data) {
            Ok(Packet::PacketData(p)) => self.slot_of(p.receiver_idx),
            _ => None,
        }
    }

    /// The slot of the peer whose session has receiver index `receiver_idx` (its upper 24
    /// bits are the peer's index, the low 8 the session's).
    fn slot_of(&self, receiver_idx: u32) -> Option<usize> {
        self.by_index.get(&(receiver_idx >> 8)).copied()
    }

    /// Handle one UDP datagram from the network. Decrypted inner packets are appended to
    /// `inbox` with the slot of the peer that sent them.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        data: &[u8],
        dec: &mut [u8],
        inbox: &mut Vec<(usize, Vec<u8>)>,
    ) {
        self.counters.udp_rx_datagrams += 1;
        let Ok(parsed) = Tunn::parse_incoming_packet(data) else {
            self.counters.drop(DropReason::Garbage);
            return;
        };
        let Some((slot, kind)) = self.datagram_peer(src, parsed, data, dec) else {
            return;
        };
        if self.decapsulate(slot, kind, src, data, dec, inbox) {
            self.probe_unknown(src);
        }
    }

    /// The slot of the peer a datagram is for, and its kind (1 handshake initiation, 2
    /// response, 3 cookie reply, 4 data); `None` when it is dropped (counted) or answered with
    /// a cookie under load.
    fn datagram_peer(
        &mut self,
        src: SocketAddr,
        parsed: Packet<'_>,
        data: &[u8],
        dec: &mut [u8],
    ) -> Option<(usize, u8)> {
        let found = match parsed {
            Packet::HandshakeInit(ref p) => {
                match self.rate_limiter.verify_packet(Some(src.ip()), data, dec) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        self.counters.cookie_replies += 1;
                        self.counters.drop(DropReason::UnderLoad);
                        send_now(&mut self.txq, &self.socket, cookie, src, &mut self.counters);
                        return None;
                    }
                    Err(_) => {
                        self.counters.drop(DropReason::HandshakeInvalid);
                        return None;
                    }
                }
                match parse_handshake_anon(&self.secret, &self.public, p) {
                    Ok(hh) => match self.by_key.get(&hh.peer_static_public) {
                        Some(s) => (*s, 1u8),
                        None => {
                            self.counters.drop(DropReason::UnknownPeer);
                            return None;
                        }
                    },
                    Err(_) => {
                        self.counters.drop(DropReason::HandshakeInvalid);
                        return None;
                    }
                }
            }
            Packet::HandshakeResponse(ref p) => match self.slot_of(p.receiver_idx) {
                Some(s) => (s, 2),
                None => {
                    self.counters.drop(DropReason::UnknownIndex);
                    return None;
                }
            },
            Packet::PacketCookieReply(ref p) => match self.slot_of(p.receiver_idx) {
                Some(s) => (s, 3),
                None => {
                    self.counters.drop(DropReason::UnknownIndex);
                    return None;
                }
            },
            Packet::PacketData(ref p) => match self.slot_of(p.receiver_idx) {
                Some(s) => (s, 4),
                None => {
                    self.counters.drop(DropReason::UnknownIndex);
                    self.probe_unknown(src);
                    return None;
                }
            },
        };
        Some(found)
    }

    /// Run a datagram for the peer in `slot` through its tunnel: replies go to the network,
    /// inner packets to `inbox`. Whether `src` should be probed (a data packet of a session
    /// this process does not have).
    fn decapsulate(
        &mut self,
        slot: usize,
        kind: u8,
        src: SocketAddr,
        data: &[u8],
        dec: &mut [u8],
        inbox: &mut Vec<(usize, Vec<u8>)>,
    ) -> bool {
        let Some(Some(peer)) = self.peers.get_mut(slot) else {
            return false;
        };
        let mut first = true;
        let mut probe = false;
        loop {
            let res = if first {
                peer.tunn.decapsulate(Some(src.ip()), data, dec)
            } else {
                peer.tunn.decapsulate(None, &[], dec)
            };
            let was_first = first;
            first = false;
            match res {
                TunnResult::Done => break,
                TunnResult::Err(e) => {
                    if was_first {
                        let reason = match e {
                            WireGuardError::UnderLoad => DropReason::UnderLoad,
                            _ if kind == 4 => DropReason::Decrypt,
                            _ => DropReason::HandshakeInvalid,
                        };
                        self.counters.drop(reason);
                        // A session this process does not have (indices repeat across
                        // restarts): maybe a peer we have no endpoint for.
                        probe = kind == 4;
                    }
                    break;
                }
                TunnResult::WriteToNetwork(out) => {
                    if was_first {
                        peer.endpoint = Some(src);
                        peer.roamed = true;
                        if kind == 1 || kind == 2 {
                            peer.stats.handshakes += 1;
                        }
                    }
                    let to = peer.endpoint.unwrap_or(src);
                    send_now(&mut self.txq, &self.socket, out, to, &mut self.counters);
                }
                TunnResult::WriteToTunnelV4(pkt, _) | TunnResult::WriteToTunnelV6(pkt, _) => {
                    peer.endpoint = Some(src);
                    peer.roamed = true;
                    if kind == 2 {
                        peer.stats.handshakes += 1;
                    }
                    peer.stats.rx_bytes += pkt.len() as u64;
                    peer.stats.rx_packets += 1;
                    if !pkt.is_empty() {
                        inbox.push((slot, pkt.to_vec()));
                    }
                    break;
                }
            }
        }
        probe
    }

    /// A data packet nobody can decrypt (unknown receiver index, or a session this process does
    /// not have) came from `src`: after a restart, that is a device
    /// still using its old session, and it re-handshakes only minutes later (measured: 110 s).
    /// Send a handshake initiation to `src` for the peers that have no endpoint yet; the one
    /// that sent it answers and its endpoint is learned from the authenticated response.
    /// Limited per peer (one per [`PROBE_PER_PEER`]), per source ([`PROBES_PER_SOURCE`] a
    /// second) and in all ([`PROBES_PER_SECOND`]), so spoofed packets cannot turn the node into
    /// a reflector. Counters reset by [`Net::reset_probe_limits`] every second.
    pub fn probe_unknown(&mut self, src: SocketAddr) {
        let n = self.peers.len();
        if n == 0 || self.probes_this_second >= PROBES_PER_SECOND {
            return;
        }
        if !self.probe_sources.contains_key(&src.ip()) && self.probe_sources.len() >= PROBE_SOURCES
        {
            return;
        }
        let now = self.now;
        for step in 0..n {
            let sent = self.probe_sources.get(&src.ip()).copied().unwrap_or(0);
            if sent >= PROBES_PER_SOURCE || self.probes_this_second >= PROBES_PER_SECOND {
                break;
            }
            let slot = (self.probe_cursor + step) % n;
            let Some(Some(peer)) = self.peers.get_mut(slot) else {
                continue;
            };
            if peer.endpoint.is_some()
                || peer
                    .last_probe
                    .is_some_and(|t| now.duration_since(t) < PROBE_PER_PEER)
            {
                continue;
            }
            peer.last_probe = Some(now);
            let len = match peer
                .tunn
                .format_handshake_initiation(&mut self.enc_buf, true)
            {
                TunnResult::WriteToNetwork(out) => out.len(),
                _ => continue,
            };
            self.probe_sources.insert(src.ip(), sent + 1);
            self.probes_this_second += 1;
            self.counters.handshake_probes += 1;
            self.probe_cursor = (slot + 1) % n;
            self.send_udp(len, src);
        }
    }

    /// Start a new second for the probe limiter.
    pub fn reset_probe_limits(&mut self) {
        self.probe_sources.clear();
        self.probes_this_second = 0;
    }

    /// Drive WireGuard timers (handshake retries, keepalives, rekeying).
    pub fn update_timers(&mut self) {
        for p in self.peers.iter_mut().flatten() {
            if let TunnResult::WriteToNetwork(out) = p.tunn.update_timers(&mut self.enc_buf) {
                match p.endpoint {
                    Some(ep) => send_now(&mut self.txq, &self.socket, out, ep, &mut self.counters),
                    None => self.counters.drop(DropReason::NoEndpoint),
                }
            }
        }
    }

    pub fn peer_stats(&self) -> Vec<(String, PeerStats)> {
        let mut v: Vec<(String, PeerStats)> = self
            .peers
            .iter()
            .flatten()
            .map(|p| (p.spec.name.clone(), p.stats.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Where a standalone node's peer indices start: unpredictable and different per node, like
/// WireGuard's random indices. A gateway relays several sidecars' datagrams to the same device
/// and tells them apart by the receiver index; sidecars that all counted from 1 would collide.
fn random_index_start(public: &PublicKey) -> u32 {
    use blake2::Digest;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake2::Blake2s256::new();
    h.update(public.as_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let d = h.finalize();
    let n = u32::from_le_bytes([d[0], d[1], d[2], 0]);
    n.max(1)
}

/// WireGuard's data message overhead (type, index, counter, tag; boringtun does not pad).
const DATA_OVERHEAD: usize = 32;
/// A handshake initiation's size.
const HANDSHAKE_INIT_LEN: usize = 148;

/// Send a datagram at once, after what `txq` holds (so the order on the wire is kept); on a
/// full socket buffer wait briefly (back-pressure) instead of dropping.
pub fn send_now(
    txq: &mut SendQueue,
    sock: &mio::net::UdpSocket,
    data: &[u8],
    to: SocketAddr,
    c: &mut Counters,
) {
    txq.flush(sock.as_raw_fd(), c);
    for attempt in 0..3 {
        match sock.send_to(data, to) {
            Ok(_) => {
                c.udp_tx_datagrams += 1;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt < 2 => {
                sendq::wait_writable(sock.as_raw_fd());
            }
            Err(_) => break,
        }
    }
    c.drop(DropReason::SendError);
}

/// Is the socket's receive queue more than half of its receive buffer (`SO_MEMINFO`)? The
/// fair queue (`engine::fair`) drops from the fattest peer only then. False when the kernel
/// cannot say.
pub fn receive_buffer_half_full(fd: i32) -> bool {
    /// `SO_MEMINFO` (Linux ≥ 3.11; not in the libc crate): `SK_MEMINFO_VARS` u32 counters.
    const SO_MEMINFO: libc::c_int = 55;
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: valid fd; the buffer and its length describe `info`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let rmem = info.get(libc::SK_MEMINFO_RMEM_ALLOC as usize).copied();
    let rcvbuf = info.get(libc::SK_MEMINFO_RCVBUF as usize).copied();
    match (r, rmem, rcvbuf) {
        (0, Some(rmem), Some(rcvbuf)) => rcvbuf > 0 && rmem > rcvbuf / 2,
        _ => false,
    }
}

/// Set a socket option to `size`, ignoring failure (unprivileged limits apply).
pub fn set_buffer(fd: i32, opt: libc::c_int, size: usize) {
    let v = size as libc::c_int;
    // SAFETY: valid fd, option pointer and length.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub struct RxTok(Vec<u8>);
pub struct TxTok<'a>(&'a mut Net);

impl phy::RxToken for RxTok {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let net = self.0;
        let mut buf = std::mem::take(&mut net.tx_scratch);
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        net.send_inner(&buf);
        net.tx_scratch = buf;
        r
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let p = self.rx.pop_front()?;
        Some((RxTok(p), TxTok(self)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxTok(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps.max_burst_size = None;
        // Inner packets are authenticated by WireGuard; compute checksums, don't verify them.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        ck.udp = Checksum::Tx;
        ck.icmpv4 = Checksum::Tx;
        ck.icmpv6 = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> [u8; 32] {
        *PublicKey::from(&StaticSecret::from([i; 32])).as_bytes()
    }

    /// `SO_MEMINFO` tells an empty receive queue from one filled past half its buffer.
    #[test]
    fn receive_buffer_pressure() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        set_buffer(rx.as_raw_fd(), libc::SO_RCVBUF, 64 * 1024);
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(!receive_buffer_half_full(rx.as_raw_fd()));
        let to = rx.local_addr().expect("addr");
        for _ in 0..200 {
            let _ = tx.send_to(&[0u8; 1200], to);
        }
        assert!(receive_buffer_half_full(rx.as_raw_fd()));
    }

    /// Undecryptable packets from one source get at most `PROBES_PER_SOURCE` initiations a
    /// second, each peer at most one per `PROBE_PER_PEER`, and only peers without endpoint.
    #[test]
    fn probes_are_rate_limited() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_nonblocking(true).expect("nonblocking");
        let mut net = Net::new(
            mio::net::UdpSocket::from_std(sock),
            StaticSecret::from([1; 32]),
            1280,
        );
        let mut specs: Vec<PeerSpec> = (2..12u8)
            .map(|i| PeerSpec {
                name: format!("p{i}"),
                public_key: key(i),
                allowed_ips: vec![format!("100.64.0.{i}/32").parse().expect("net")],
                endpoint: None,
                keepalive: None,
            })
            .collect();
        // One peer with an endpoint: never probed.
        if let Some(s) = specs.first_mut() {
            s.endpoint = Some("127.0.0.1:9".into());
        }
        net.set_peers(&specs);
        let victim = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        victim.set_nonblocking(true).expect("nonblocking");
        let src = victim.local_addr().expect("addr");
        let count = |v: &std::net::UdpSocket| {
            let mut n = 0;
            let mut buf = [0u8; 256];
            std::thread::sleep(Duration::from_millis(50));
            while let Ok(len) = v.recv(&mut buf) {
                assert_eq!(len, 148, "a handshake initiation");
                n += 1;
            }
            n
        };
        for _ in 0..100 {
            net.probe_unknown(src);
        }
        assert_eq!(count(&victim), PROBES_PER_SOURCE as usize);
        // Next second: the next peers (each peer once per 5 s), never the one with endpoint.
        net.reset_probe_limits();
        for _ in 0..100 {
            net.probe_unknown(src);
        }
        assert_eq!(count(&victim), PROBES_PER_SOURCE as usize);
        net.reset_probe_limits();
        for _ in 0..100 {
            net.probe_unknown(src);
        }
        assert_eq!(count(&victim), 9 - 2 * PROBES_PER_SOURCE as usize);
        net.reset_probe_limits();
        for _ in 0..100 {
            net.probe_unknown(src);
        }
        assert_eq!(
            count(&victim),
            0,
            "every peer without endpoint probed once per 5 s"
        );
        assert_eq!(net.counters.handshake_probes, 9);
    }
}
