//! The smoltcp glue: the interface (any-IP over the wire device) and its clock, TCP socket
//! settings and buffer auto-tuning.
//!
//! Assumes: the filter admitted every segment pushed into `net.rx` (smoltcp runs any-IP and
//! terminates whatever reaches it); the smoltcp `Device` is the wire (`crate::wire::Net`).
//! Guarantees: every TCP socket gets the same settings (Nagle off, the configured congestion
//! control and pacing, RTO floor, window scale for the largest buffer, timeouts); a buffer
//! grows only when it limits the transfer and the budget allows.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use smoltcp::iface::{Config as IfaceConfig, Interface};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::wire::Net;

use super::Engine;
use super::budget::DEFAULT_MEMORY_BUDGET;
use super::forward::Kind;
use super::forward::Phase;

/// Largest receive or send buffer a TCP connection grows to (auto-tuning, see
/// `Engine::grow_buffers`), unless `TSK8S_TCP_BUF_MAX` says otherwise: a window of 4 MiB
/// fills about 640 Mbit/s at 50 ms.
pub const TCP_BUF_MAX: usize = 4 * 1024 * 1024;
/// SRTT from which a connection is paced instead of capped at `Tuning::tcp_tx_window`.
pub(super) const PACED_SRTT: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(2);
/// Floor of smoltcp's retransmission timeout (Linux's `TCP_RTO_MIN`; RFC 6298 says 1 s).
pub(super) const TCP_MIN_RTO: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(200);

/// Tunables (environment, for benchmarks; defaults are what production uses).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub tcp_rx_buf: usize,
    pub tcp_tx_buf: usize,
    /// Largest size either buffer of a connection grows to (auto-tuning).
    pub tcp_buf_max: usize,
    /// Most bytes a connection keeps queued for the tunnel (sent but unacknowledged plus not
    /// yet sent) while its SRTT is under `PACED_SRTT` (smoltcp measures RTT in ms and does
    /// not pace below 1 ms; a whole window back to back overflows a peer's UDP buffer). On
    /// slower paths pacing bounds the bursts and only the buffer limits; see README.
    pub tcp_tx_window: usize,
    /// Pace segments at a multiple of cwnd / SRTT (`TSK8S_TCP_PACING=0` turns it off).
    pub tcp_pacing: bool,
    /// smoltcp skips connections with nothing to send until they are due
    /// (`TSK8S_SKIP_QUIET_SOCKETS=0` turns it off, to measure what it saves).
    pub skip_quiet: bool,
    /// Queue received data messages per peer and serve them in DRR order (`fair`);
    /// `TSK8S_FAIR_SHARE=0` turns it off (every datagram handled as it is read).
    pub fair_share: bool,
    pub udp_sock_buf: usize,
    /// Send runs of equal-size datagrams as one UDP GSO message (`crate::sendq`;
    /// `TSK8S_UDP_GSO=0` turns it off: batched plain datagrams only).
    pub udp_gso: bool,
    pub congestion: tcp::CongestionControl,
    /// Bytes all per-connection buffers together may take (see `budget::Budget`).
    pub memory_budget: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        let env = |k: &str, d: usize| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Tuning {
            tcp_rx_buf: env("TSK8S_TCP_RX_BUF", 512 * 1024),
            tcp_tx_buf: env("TSK8S_TCP_TX_BUF", 256 * 1024),
            tcp_buf_max: env("TSK8S_TCP_BUF_MAX", TCP_BUF_MAX).min(1 << 30),
            tcp_tx_window: env("TSK8S_TCP_TX_WINDOW", 64 * 1024).max(4096),
            tcp_pacing: std::env::var("TSK8S_TCP_PACING").as_deref() != Ok("0"),
            skip_quiet: std::env::var("TSK8S_SKIP_QUIET_SOCKETS").as_deref() != Ok("0"),
            fair_share: std::env::var("TSK8S_FAIR_SHARE").as_deref() != Ok("0"),
            udp_sock_buf: env("TSK8S_UDP_SOCK_BUF", 7 * 1024 * 1024),
            udp_gso: std::env::var("TSK8S_UDP_GSO").as_deref() != Ok("0"),
            // The container's memory limit comes from the Downward API (limits.memory, bytes);
            // half of it is for connection buffers, the rest for everything else.
            memory_budget: std::env::var("TSK8S_MEMORY_BUDGET")
                .ok()
                .and_then(|v| v.parse().ok())
                .or_else(|| {
                    std::env::var("TSK8S_MEMORY_LIMIT")
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok())
                        .map(|l| l / 2)
                })
                .unwrap_or(DEFAULT_MEMORY_BUDGET)
                .max(1024 * 1024),
            congestion: match std::env::var("TSK8S_TCP_CC").as_deref() {
                Ok("none") => tcp::CongestionControl::None,
                Ok("reno") => tcp::CongestionControl::Reno,
                Ok("cubic") => tcp::CongestionControl::Cubic,
                _ => tcp::CongestionControl::Bbr,
            },
        }
    }
}

impl Engine {
    pub(super) fn poll_stack(&mut self) {
        let smol = smol_now(self.start, Instant::now());
        self.iface.poll(smol, &mut self.net, &mut self.sockets);
        // What the poll produced leaves now, batched (`crate::sendq`).
        self.net.flush();
    }

    pub(super) fn tcp_socket(&self, rx: usize, tx: usize, dns: bool) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rx]),
            tcp::SocketBuffer::new(vec![0u8; tx]),
        );
        s.set_nagle_enabled(false);
        s.set_congestion_control(self.tuning.congestion);
        s.set_min_rto(TCP_MIN_RTO);
        s.set_pacing_enabled(self.tuning.tcp_pacing);
        if !dns {
            // The window scale is sent in the SYN: choose it for the largest buffer.
            s.set_recv_window_scale_capacity(self.tuning.tcp_buf_max);
        }
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        s
    }

    /// Receive/send buffer auto-tuning: a buffer that limits the transfer doubles, up to
    /// `tcp_buf_max`, while its owner's charge stays within the full-size tier (half its
    /// share) and the budget allows. The receive buffer grows when the peer filled a window
    /// of at least half of it (smoltcp flags that; our reader is not the limit: the window
    /// is below the bandwidth-delay product); the send buffer when it is full, the kernel side
    /// has more, and the congestion window already covers three quarters of it (cwnd, not
    /// the buffer, would otherwise be the limit). Returns true when the send buffer grew (the
    /// connection has room to fill now).
    pub(super) fn grow_buffers(&mut self, slot: usize) -> bool {
        let max = self.tuning.tcp_buf_max;
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return false;
        };
        if c.phase != Phase::Open || matches!(c.kind, Kind::Dns) {
            return false;
        }
        let sock = self.sockets.get_mut::<tcp::Socket>(c.handle);
        let grow_rx = sock.take_recv_window_limited() && c.rx_cap < max;
        let grow_tx = c.tx_cap < max
            && c.k_readable
            && !c.k_eof
            && !sock.can_send()
            && sock.may_send()
            && sock.congestion_window() >= c.tx_cap / 4 * 3;
        let cap = self.budget.share() / 2;
        let mut grew_tx = false;
        if grow_rx {
            let new = (c.rx_cap * 2).min(max);
            if self.budget.try_grow_within(c.owner, new - c.rx_cap, cap) {
                if sock.replace_recv_buffer(vec![0u8; new]).is_ok() {
                    c.charge += new - c.rx_cap;
                    c.rx_cap = new;
                    self.net.counters.tcp_buffer_grown += 1;
                } else {
                    self.budget.release_bytes(c.owner, new - c.rx_cap);
                }
            }
        }
        if grow_tx {
            let new = (c.tx_cap * 2).min(max);
            if self.budget.try_grow_within(c.owner, new - c.tx_cap, cap) {
                if sock.replace_send_buffer(vec![0u8; new]).is_ok() {
                    c.charge += new - c.tx_cap;
                    c.tx_cap = new;
                    grew_tx = true;
                    self.net.counters.tcp_buffer_grown += 1;
                } else {
                    self.budget.release_bytes(c.owner, new - c.tx_cap);
                }
            }
        }
        if grow_rx || grew_tx {
            self.net.counters.memory_charged = self.budget.used as u64;
        }
        grew_tx
    }
}

/// The smoltcp interface of a node: `Medium::Ip` over the wire device, any-IP, the node's two
/// addresses and default routes through them.
pub(super) fn interface(
    net: &mut Net,
    start: Instant,
    own4: Ipv4Addr,
    own6: Ipv6Addr,
    skip_quiet: bool,
) -> Interface {
    let mut iface = Interface::new(
        IfaceConfig::new(HardwareAddress::Ip),
        net,
        smol_now(start, start),
    );
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(own4), 32));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(own6), 128));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(own4);
    let _ = iface.routes_mut().add_default_ipv6_route(own6);
    iface.set_any_ip(true);
    // Idle connections (a peer may hold hundreds open) cost nothing per poll: see the patch's
    // `set_skip_quiet_sockets` (every access through `SocketSet::get_mut` re-arms a socket).
    iface.set_skip_quiet_sockets(skip_quiet);
    iface
}

pub(super) fn smol_now(start: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.duration_since(start).as_micros() as i64)
}
