//! Counters kept by the packet loop and rendered as Prometheus text for `/metrics`.

use std::fmt::Write as _;

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// UDP datagram that is not a WireGuard message.
    Garbage,
    /// Handshake with a bad MAC, unknown key or failed decryption.
    HandshakeInvalid,
    /// Handshake from a key that is not in the mesh.
    UnknownPeer,
    /// Data packet for an unknown receiver index.
    UnknownIndex,
    /// Decryption failed, replayed or out-of-window counter, expired session.
    Decrypt,
    /// Handshake refused under load (cookie reply sent instead).
    UnderLoad,
    /// Inner source address outside the peer's allowed_ips.
    AllowedIps,
    /// Denied by the packet filter.
    Policy,
    /// Inner packet is not valid IP/TCP/UDP/ICMP.
    Malformed,
    /// Destination is neither this node nor one of its routes / no peer for the destination.
    NoRoute,
    /// The peer has no known endpoint yet.
    NoEndpoint,
    /// Nothing listens on that port.
    NoListener,
    /// Too many tracked flows or sessions.
    TableFull,
    /// Packet too large to build or send.
    TooBig,
    /// Sending on the UDP socket failed.
    SendError,
    /// ICMP echo to a routed destination, but no unprivileged ping socket: the process's
    /// group is outside `net.ipv4.ping_group_range`.
    PingUnavailable,
    /// New connection refused: its peer is over its connection or memory limit, or the
    /// memory budget is spent.
    OverLimit,
    /// Dropped before decryption from the peer with the most queued work when the per-peer
    /// receive queues are full and another peer is backlogged too (see `engine::fair`).
    FairShare,
}

pub const ALL_DROPS: [DropReason; 18] = [
    DropReason::Garbage,
    DropReason::HandshakeInvalid,
    DropReason::UnknownPeer,
    DropReason::UnknownIndex,
    DropReason::Decrypt,
    DropReason::UnderLoad,
    DropReason::AllowedIps,
    DropReason::Policy,
    DropReason::Malformed,
    DropReason::NoRoute,
    DropReason::NoEndpoint,
    DropReason::NoListener,
    DropReason::TableFull,
    DropReason::TooBig,
    DropReason::SendError,
    DropReason::PingUnavailable,
    DropReason::OverLimit,
    DropReason::FairShare,
];

impl DropReason {
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Garbage => "garbage",
            DropReason::HandshakeInvalid => "handshake_invalid",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::Decrypt => "decrypt",
            DropReason::UnderLoad => "under_load",
            DropReason::AllowedIps => "allowed_ips",
            DropReason::Policy => "policy",
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::NoListener => "no_listener",
            DropReason::TableFull => "table_full",
            DropReason::TooBig => "too_big",
            DropReason::SendError => "send_error",
            DropReason::PingUnavailable => "ping_unavailable",
            DropReason::OverLimit => "over_limit",
            DropReason::FairShare => "fair_share",
        }
    }

    fn idx(self) -> usize {
        ALL_DROPS.iter().position(|d| *d == self).unwrap_or(0)
    }
}

/// Per-peer counters.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub handshakes: u64,
    /// New connections refused because the peer was over its limits.
    pub conns_refused: u64,
    /// Data messages dropped before decryption: the peer had the most queued work when the
    /// receive queues were full (`engine::fair`).
    pub fair_share_drops: u64,
}

/// Node-wide counters.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub drops: [u64; ALL_DROPS.len()],
    pub udp_rx_datagrams: u64,
    pub udp_tx_datagrams: u64,
    /// `sendmmsg` calls of the batched send path (`crate::sendq`), GSO messages among their
    /// messages (several datagrams each), and GSO refusals (then plain datagrams).
    pub udp_tx_calls: u64,
    pub udp_tx_gso_messages: u64,
    pub udp_gso_refused: u64,
    pub cookie_replies: u64,
    /// Handshake initiations sent in answer to undecryptable packets (peers without endpoint).
    pub handshake_probes: u64,
    /// Memory budget for connection buffers, and how much of it is charged.
    pub memory_budget: u64,
    pub memory_charged: u64,
    pub tcp_accepted: u64,
    /// TCP buffers grown by auto-tuning (each doubling counts once).
    pub tcp_buffer_grown: u64,
    /// Retransmissions of closed TCP connections, by cause (timeout, fast, SACK hole).
    pub tcp_rto: u64,
    pub tcp_fast_retransmits: u64,
    pub tcp_sack_retransmits: u64,
    /// Lost tails found (RACK's rule) and duplicate SACKs received (the remote got octets
    /// twice: a retransmission was spurious), by closed TCP connections.
    pub tcp_lost_tails: u64,
    pub tcp_dsacks: u64,
    pub tcp_active: u64,
    pub udp_sessions: u64,
    pub dns_queries: u64,
    pub reloads: u64,
    pub reload_errors: u64,
}

impl Counters {
    pub fn drop(&mut self, d: DropReason) {
        if let Some(c) = self.drops.get_mut(d.idx()) {
            *c += 1;
        }
    }

    pub fn drop_n(&mut self, d: DropReason, n: u64) {
        if let Some(c) = self.drops.get_mut(d.idx()) {
            *c += n;
        }
    }

    pub fn dropped(&self, d: DropReason) -> u64 {
        self.drops.get(d.idx()).copied().unwrap_or(0)
    }
}

pub fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render Prometheus text exposition.
pub fn render(c: &Counters, peers: &[(String, PeerStats)]) -> String {
    render_nodes(&[("", c, peers)])
}

/// One node's counters and per-peer stats, labelled `node="<name>"` unless the name is empty.
pub type NodeMetrics<'a> = (&'a str, &'a Counters, &'a [(String, PeerStats)]);

type Scalar = fn(&Counters) -> u64;

/// The per-node families: name, Prometheus type, help, value.
const SCALARS: &[(&str, &str, &str, Scalar)] = &[
    (
        "tsk8s_udp_rx_datagrams_total",
        "counter",
        "UDP datagrams received.",
        |c| c.udp_rx_datagrams,
    ),
    (
        "tsk8s_udp_tx_datagrams_total",
        "counter",
        "UDP datagrams sent.",
        |c| c.udp_tx_datagrams,
    ),
    (
        "tsk8s_udp_tx_calls_total",
        "counter",
        "sendmmsg calls of the batched send path (each carries many datagrams).",
        |c| c.udp_tx_calls,
    ),
    (
        "tsk8s_udp_tx_gso_messages_total",
        "counter",
        "UDP GSO messages sent (several equal-size datagrams each, segmented by the kernel).",
        |c| c.udp_tx_gso_messages,
    ),
    (
        "tsk8s_udp_gso_refused_total",
        "counter",
        "Times the kernel refused UDP GSO (the socket sends plain datagrams from then on).",
        |c| c.udp_gso_refused,
    ),
    (
        "tsk8s_cookie_replies_total",
        "counter",
        "Cookie replies sent under load.",
        |c| c.cookie_replies,
    ),
    (
        "tsk8s_handshake_probes_total",
        "counter",
        "Handshake initiations sent to the source of an undecryptable packet.",
        |c| c.handshake_probes,
    ),
    (
        "tsk8s_memory_budget_bytes",
        "gauge",
        "Memory budget for connection buffers.",
        |c| c.memory_budget,
    ),
    (
        "tsk8s_memory_charged_bytes",
        "gauge",
        "Connection buffers charged to the memory budget.",
        |c| c.memory_charged,
    ),
    (
        "tsk8s_tcp_accepted_total",
        "counter",
        "TCP connections forwarded.",
        |c| c.tcp_accepted,
    ),
    (
        "tsk8s_tcp_buffer_grown_total",
        "counter",
        "TCP receive/send buffers doubled by auto-tuning.",
        |c| c.tcp_buffer_grown,
    ),
    (
        "tsk8s_tcp_timeouts_total",
        "counter",
        "Retransmission timeouts of closed TCP connections.",
        |c| c.tcp_rto,
    ),
    (
        "tsk8s_tcp_fast_retransmits_total",
        "counter",
        "Fast retransmits (duplicate or partial ACKs) of closed TCP connections.",
        |c| c.tcp_fast_retransmits,
    ),
    (
        "tsk8s_tcp_sack_retransmits_total",
        "counter",
        "Segments retransmitted from the SACK scoreboard by closed TCP connections.",
        |c| c.tcp_sack_retransmits,
    ),
    (
        "tsk8s_tcp_lost_tails_total",
        "counter",
        "Lost tails (all sent after a repaired hole) resent at once by closed TCP connections.",
        |c| c.tcp_lost_tails,
    ),
    (
        "tsk8s_tcp_dsacks_total",
        "counter",
        "Duplicate SACKs (spurious retransmissions) received by closed TCP connections.",
        |c| c.tcp_dsacks,
    ),
    (
        "tsk8s_tcp_connections",
        "gauge",
        "Open forwarded TCP connections.",
        |c| c.tcp_active,
    ),
    (
        "tsk8s_udp_sessions",
        "gauge",
        "Open forwarded UDP sessions.",
        |c| c.udp_sessions,
    ),
    (
        "tsk8s_dns_queries_total",
        "counter",
        "DNS queries answered.",
        |c| c.dns_queries,
    ),
    (
        "tsk8s_config_reloads_total",
        "counter",
        "Successful config reloads.",
        |c| c.reloads,
    ),
    (
        "tsk8s_config_reload_errors_total",
        "counter",
        "Failed config reloads.",
        |c| c.reload_errors,
    ),
];

type Getter = fn(&PeerStats) -> u64;

/// The per-peer counter families: name, help, value.
const PEER_COUNTERS: [(&str, &str, Getter); 7] = [
    (
        "tsk8s_peer_rx_bytes_total",
        "Inner bytes received from the peer.",
        |p| p.rx_bytes,
    ),
    (
        "tsk8s_peer_tx_bytes_total",
        "Inner bytes sent to the peer.",
        |p| p.tx_bytes,
    ),
    (
        "tsk8s_peer_rx_packets_total",
        "Inner packets received from the peer.",
        |p| p.rx_packets,
    ),
    (
        "tsk8s_peer_tx_packets_total",
        "Inner packets sent to the peer.",
        |p| p.tx_packets,
    ),
    (
        "tsk8s_peer_handshakes_total",
        "Completed handshakes with the peer.",
        |p| p.handshakes,
    ),
    (
        "tsk8s_peer_conns_refused_total",
        "New connections from the peer refused over its limits.",
        |p| p.conns_refused,
    ),
    (
        "tsk8s_peer_fair_share_drops_total",
        "Inner packets from the peer dropped over its share of a full receive batch.",
        |p| p.fair_share_drops,
    ),
];

/// `node="x",` to go inside other labels (empty for an unnamed node).
fn node_label_inner(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!("node=\"{}\",", esc(node))
    }
}

/// `{node="x"}` alone (empty for an unnamed node).
fn node_label_alone(node: &str) -> String {
    if node.is_empty() {
        String::new()
    } else {
        format!("{{node=\"{}\"}}", esc(node))
    }
}

/// Render Prometheus text for several nodes of one process (a gateway): each family once,
/// one series per node.
pub fn render_nodes(nodes: &[NodeMetrics<'_>]) -> String {
    let peers_total: usize = nodes.iter().map(|n| n.2.len()).sum();
    let mut o = String::with_capacity(2048 * nodes.len().max(1) + peers_total * 600);
    render_drops(&mut o, nodes);
    render_scalars(&mut o, nodes);
    render_peer_counters(&mut o, nodes);
    o
}

/// `tsk8s_drops_total`, one series per node and reason.
fn render_drops(o: &mut String, nodes: &[NodeMetrics<'_>]) {
    let _ = writeln!(o, "# HELP tsk8s_drops_total Packets dropped, by reason.");
    let _ = writeln!(o, "# TYPE tsk8s_drops_total counter");
    for (node, c, _) in nodes {
        let l = node_label_inner(node);
        for d in ALL_DROPS {
            let _ = writeln!(
                o,
                "tsk8s_drops_total{{{l}reason=\"{}\"}} {}",
                d.name(),
                c.dropped(d)
            );
        }
    }
}

/// The [`SCALARS`] families, one series per node.
fn render_scalars(o: &mut String, nodes: &[NodeMetrics<'_>]) {
    for (name, kind, help, f) in SCALARS {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (node, c, _) in nodes {
            let _ = writeln!(o, "{name}{} {}", node_label_alone(node), f(c));
        }
    }
}

/// The [`PEER_COUNTERS`] families, one series per node and peer.
fn render_peer_counters(o: &mut String, nodes: &[NodeMetrics<'_>]) {
    for (name, help, f) in PEER_COUNTERS {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        for (node, _, peers) in nodes {
            let l = node_label_inner(node);
            for (peer, s) in peers.iter() {
                let _ = writeln!(o, "{name}{{{l}peer=\"{}\"}} {}", esc(peer), f(s));
            }
        }
    }
}
