//! TCP forwarders: between smoltcp sockets (the tunnel side) and kernel sockets.
//!
//! Assumes: the filter admitted the SYN (`inbound_tcp` creates a listening smoltcp socket for
//! exactly that destination, the "SYN trick"), the budget charged the connection. Guarantees:
//! data is copied directly between smoltcp ring buffers and kernel streams, half-closes are
//! propagated, resets abort the other side; only connections that saw an event are serviced
//! per iteration (all are swept once a second); egress listeners open connections into the
//! tunnel from the node's own address.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Token};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};
use tsk8s_policy::runtime_config::{Mode, Protocol};

use crate::metrics::DropReason;
use crate::packet::{Info, TCP_ACK, TCP_SYN};

use super::budget::Owner;
use super::dns::dns_tcp;
use super::stack::{PACED_SRTT, smol_now};
use super::{CONN_BASE, Engine, LISTENER_BASE, RX_BATCH, canonical};

pub(super) const MAX_CONNS: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for the tunnel-side TCP handshake.
    Tunnel,
    /// Kernel connect in progress.
    Connecting,
    Open,
}

pub(super) enum Kind {
    /// Tunnel connection forwarded to `target` (proxy, sidecar, subnet router).
    Forward(SocketAddr),
    /// Kernel connection accepted by an egress listener, forwarded into the tunnel.
    Egress,
    /// DNS over TCP answered locally.
    Dns,
}

pub(super) struct Conn {
    pub(super) handle: SocketHandle,
    pub(super) kind: Kind,
    pub(super) stream: Option<TcpStream>,
    pub(super) phase: Phase,
    pub(super) k_readable: bool,
    pub(super) k_write_blocked: bool,
    pub(super) k_eof: bool,
    pub(super) shut_wr: bool,
    pub(super) key: (SocketAddr, SocketAddr),
    pub(super) local_port: Option<u16>,
    pub(super) born: Instant,
    pub(super) dirty: bool,
    pub(super) dns_buf: Vec<u8>,
    pub(super) owner: Owner,
    /// Bytes charged to the budget for this connection.
    pub(super) charge: usize,
    /// Current sizes of its smoltcp receive and send buffers (they grow, see `grow_buffers`).
    pub(super) rx_cap: usize,
    pub(super) tx_cap: usize,
}

pub(super) enum Listener {
    Tcp(TcpListener, SocketAddr),
    Udp(UdpSocket, SocketAddr),
}

impl Engine {
    pub(super) fn rebuild_listeners(&mut self) -> io::Result<()> {
        for l in self.listeners.drain(..) {
            match l {
                Listener::Tcp(mut s, _) => {
                    let _ = self.poll.registry().deregister(&mut s);
                }
                Listener::Udp(mut s, _) => {
                    let _ = self.poll.registry().deregister(&mut s);
                }
            }
        }
        if let Mode::Egress { target_ip, ports } = &self.loaded.node.mode {
            for pm in ports {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), pm.listen);
                let target = SocketAddr::new(*target_ip, pm.target);
                let tok = Token(LISTENER_BASE + self.listeners.len());
                match pm.protocol {
                    Protocol::Tcp => {
                        let mut l = TcpListener::bind(addr)?;
                        self.poll
                            .registry()
                            .register(&mut l, tok, Interest::READABLE)?;
                        self.listeners.push(Listener::Tcp(l, target));
                    }
                    Protocol::Udp => {
                        let mut l = UdpSocket::bind(addr)?;
                        self.poll
                            .registry()
                            .register(&mut l, tok, Interest::READABLE)?;
                        self.listeners.push(Listener::Udp(l, target));
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn tcp_target(&self, info: &Info) -> Option<Kind> {
        let to_own = self.is_own(info.dst);
        if to_own && info.dport == 53 {
            return Some(Kind::Dns);
        }
        match &self.loaded.node.mode {
            Mode::Proxy { ports, .. } if to_own => {
                let pm = ports
                    .iter()
                    .find(|p| p.protocol == Protocol::Tcp && p.listen == info.dport)?;
                Some(Kind::Forward(SocketAddr::new(
                    self.proxy_target?,
                    pm.target,
                )))
            }
            Mode::Sidecar { ports } if to_own => {
                let pm = ports
                    .iter()
                    .find(|p| p.protocol == Protocol::Tcp && p.listen == info.dport)?;
                Some(Kind::Forward(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    pm.target,
                )))
            }
            Mode::SubnetRouter { .. } if !to_own && self.in_routes(info.dst) => {
                Some(Kind::Forward(SocketAddr::new(info.dst, info.dport)))
            }
            _ => None,
        }
    }

    pub(super) fn inbound_tcp(&mut self, peer_slot: usize, info: &Info, pkt: Vec<u8>) {
        let key = (
            SocketAddr::new(info.src, info.sport),
            SocketAddr::new(info.dst, info.dport),
        );
        if let Some(&slot) = self.conn_by_key.get(&key) {
            self.mark_dirty(slot);
        } else if info.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            match self.tcp_target(info) {
                Some(kind) => {
                    let owner = match self.net.peers.get(peer_slot) {
                        Some(Some(p)) => Owner::Peer(p.spec.public_key),
                        _ => Owner::Local,
                    };
                    match self.new_tunnel_listener(key, kind, owner) {
                        Some(slot) => self.mark_dirty(slot),
                        None => {
                            // Refused (over its limits): smoltcp answers the SYN with a RST.
                            if let Some(Some(p)) = self.net.peers.get_mut(peer_slot) {
                                p.stats.conns_refused += 1;
                            }
                        }
                    }
                }
                None => self.net.counters.drop(DropReason::NoListener),
            }
        }
        self.net.rx.push_back(pkt);
    }

    pub(super) fn alloc_conn(&mut self, c: Conn) -> Option<usize> {
        if self.conn_by_key.len() >= MAX_CONNS {
            self.net.counters.drop(DropReason::TableFull);
            return None;
        }
        let key = c.key;
        let slot = match self.free_conns.pop() {
            Some(s) => {
                if let Some(e) = self.conns.get_mut(s) {
                    *e = Some(c);
                }
                s
            }
            None => {
                self.conns.push(Some(c));
                self.conns.len() - 1
            }
        };
        self.conn_by_key.insert(key, slot);
        self.net.counters.tcp_active = self.conn_by_key.len() as u64;
        Some(slot)
    }

    pub(super) fn new_tunnel_listener(
        &mut self,
        key: (SocketAddr, SocketAddr),
        kind: Kind,
        owner: Owner,
    ) -> Option<usize> {
        if self.conn_by_key.len() >= MAX_CONNS {
            self.net.counters.drop(DropReason::TableFull);
            return None;
        }
        let dns = matches!(kind, Kind::Dns);
        let (rx, tx, charge) = self.charge_conn(owner, dns)?;
        let mut s = self.tcp_socket(rx, tx, dns);
        if s.listen(IpListenEndpoint::from(key.1)).is_err() {
            self.uncharge(owner, charge);
            return None;
        }
        let handle = self.sockets.add(s);
        let c = Conn {
            handle,
            kind,
            stream: None,
            phase: Phase::Tunnel,
            k_readable: false,
            k_write_blocked: false,
            k_eof: false,
            shut_wr: false,
            key,
            local_port: None,
            born: Instant::now(),
            dirty: false,
            dns_buf: Vec::new(),
            owner,
            charge,
            rx_cap: rx,
            tx_cap: tx,
        };
        let slot = self.alloc_conn(c);
        if slot.is_none() {
            self.sockets.remove(handle);
            self.uncharge(owner, charge);
        }
        slot
    }

    pub(super) fn mark_dirty(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    pub(super) fn service_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            if let Some(Some(c)) = self.conns.get_mut(slot) {
                c.dirty = false;
            }
            self.service(slot);
        }
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    pub(super) fn alloc_port(&mut self) -> Option<u16> {
        for _ in 0..16_384 {
            let p = self.next_port;
            self.next_port = if self.next_port >= 65_000 {
                49_152
            } else {
                self.next_port + 1
            };
            if !self.used_ports.contains(&p) {
                self.used_ports.insert(p);
                return Some(p);
            }
        }
        None
    }

    pub(super) fn on_listener(&mut self, idx: usize) {
        let mut accepted = Vec::new();
        let mut datagrams = Vec::new();
        match self.listeners.get_mut(idx) {
            Some(Listener::Tcp(l, target)) => {
                while let Ok((s, _)) = l.accept() {
                    accepted.push((s, *target));
                }
            }
            Some(Listener::Udp(l, target)) => {
                let mut buf = std::mem::take(&mut self.rx_buf);
                for _ in 0..RX_BATCH {
                    match l.recv_from(&mut buf) {
                        Ok((n, from)) => datagrams.push((
                            canonical(from),
                            *target,
                            buf.get(..n).map(|b| b.to_vec()).unwrap_or_default(),
                        )),
                        Err(_) => break,
                    }
                }
                self.rx_buf = buf;
            }
            None => {}
        }
        for (stream, target) in accepted {
            self.egress_tcp(stream, target);
        }
        for (from, target, data) in datagrams {
            self.egress_udp(idx, from, target, &data);
        }
    }

    pub(super) fn own_for(&self, target: IpAddr) -> IpAddr {
        match target {
            IpAddr::V4(_) => IpAddr::V4(self.own4),
            IpAddr::V6(_) => IpAddr::V6(self.own6),
        }
    }

    pub(super) fn egress_tcp(&mut self, mut stream: TcpStream, target: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let Some(port) = self.alloc_port() else {
            self.net.counters.drop(DropReason::TableFull);
            return;
        };
        let local = SocketAddr::new(self.own_for(target.ip()), port);
        let owner = Owner::Local;
        let Some((rx, tx, charge)) = self.charge_conn(owner, false) else {
            // Refused: the kernel stream is closed when dropped.
            self.used_ports.remove(&port);
            return;
        };
        let mut s = self.tcp_socket(rx, tx, false);
        if s.connect(
            self.iface.context(),
            IpEndpoint::from(target),
            IpListenEndpoint::from(local),
        )
        .is_err()
        {
            self.used_ports.remove(&port);
            self.uncharge(owner, charge);
            return;
        }
        let handle = self.sockets.add(s);
        let slot_guess = self.free_conns.last().copied().unwrap_or(self.conns.len());
        if self
            .poll
            .registry()
            .register(
                &mut stream,
                Token(CONN_BASE + slot_guess),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.sockets.remove(handle);
            self.used_ports.remove(&port);
            self.uncharge(owner, charge);
            return;
        }
        let c = Conn {
            handle,
            kind: Kind::Egress,
            stream: Some(stream),
            phase: Phase::Tunnel,
            k_readable: true,
            k_write_blocked: false,
            k_eof: false,
            shut_wr: false,
            key: (target, local),
            local_port: Some(port),
            born: Instant::now(),
            dirty: false,
            dns_buf: Vec::new(),
            owner,
            charge,
            rx_cap: rx,
            tx_cap: tx,
        };
        match self.alloc_conn(c) {
            Some(slot) => {
                self.net.counters.tcp_accepted += 1;
                self.mark_dirty(slot);
            }
            None => {
                self.sockets.remove(handle);
                self.used_ports.remove(&port);
                self.uncharge(owner, charge);
            }
        }
    }

    /// Move data and state for one connection.
    pub(super) fn service(&mut self, slot: usize) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        let sock = self.sockets.get_mut::<tcp::Socket>(c.handle);
        let state = sock.state();
        let mut remove = false;
        match c.phase {
            Phase::Tunnel => {
                if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                    remove = true;
                } else if sock.may_send() || sock.may_recv() {
                    match &c.kind {
                        Kind::Forward(target) => match TcpStream::connect(*target) {
                            Ok(mut s) => {
                                let _ = s.set_nodelay(true);
                                if self
                                    .poll
                                    .registry()
                                    .register(
                                        &mut s,
                                        Token(CONN_BASE + slot),
                                        Interest::READABLE | Interest::WRITABLE,
                                    )
                                    .is_ok()
                                {
                                    c.stream = Some(s);
                                    c.phase = Phase::Connecting;
                                    self.net.counters.tcp_accepted += 1;
                                } else {
                                    sock.abort();
                                }
                            }
                            Err(_) => {
                                sock.abort();
                                if self.proxy_target_name.is_some() {
                                    self.resolver.refresh_now(Instant::now());
                                }
                            }
                        },
                        Kind::Egress | Kind::Dns => c.phase = Phase::Open,
                    }
                } else if c.born.elapsed() > Duration::from_secs(30) && state == tcp::State::Listen
                {
                    remove = true;
                }
            }
            Phase::Connecting => {
                if let Some(s) = &c.stream {
                    match s.take_error() {
                        Ok(Some(_)) | Err(_) => {
                            sock.abort();
                            remove = true;
                            // The target may have moved (a Service's new address).
                            if self.proxy_target_name.is_some() {
                                self.resolver.refresh_now(Instant::now());
                            }
                        }
                        Ok(None) => {
                            if s.peer_addr().is_ok() {
                                c.phase = Phase::Open;
                                c.k_readable = true;
                            } else if c.born.elapsed() > Duration::from_secs(3)
                                && self.proxy_target_name.is_some()
                            {
                                // A slow connect: the target may have moved.
                                self.resolver.refresh_now(Instant::now());
                            }
                            if c.phase != Phase::Open && c.born.elapsed() > Duration::from_secs(30)
                            {
                                sock.abort();
                                remove = true;
                            }
                        }
                    }
                }
                if matches!(state, tcp::State::Closed) {
                    remove = true;
                }
            }
            Phase::Open => {}
        }
        if c.phase == Phase::Open && !remove {
            if matches!(c.kind, Kind::Dns) {
                remove = dns_tcp(c, sock, &self.zone, &mut self.net.counters);
            } else {
                // Sub-millisecond paths (or no RTT sample yet): a short queue, as smoltcp
                // cannot pace there; it moves 64 KiB per 0.3 ms round trip (> 1.5 Gbit/s).
                let paced =
                    self.tuning.tcp_pacing && sock.smoothed_rtt().is_some_and(|r| r >= PACED_SRTT);
                let window = if paced {
                    usize::MAX
                } else {
                    self.tuning.tcp_tx_window
                };
                remove = pump(c, sock, window);
            }
        }
        if remove {
            self.remove_conn(slot);
        } else if self.grow_buffers(slot) {
            self.service(slot);
        }
    }

    pub(super) fn remove_conn(&mut self, slot: usize) {
        let Some(entry) = self.conns.get_mut(slot) else {
            return;
        };
        let Some(mut c) = entry.take() else {
            return;
        };
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let sock = self.sockets.get_mut::<tcp::Socket>(c.handle);
        let r = sock.retransmissions();
        self.net.counters.tcp_rto += u64::from(r.timeouts);
        self.net.counters.tcp_fast_retransmits += u64::from(r.fast);
        self.net.counters.tcp_sack_retransmits += u64::from(r.sack);
        self.net.counters.tcp_lost_tails += u64::from(r.tails);
        self.net.counters.tcp_dsacks += u64::from(r.dsacks);
        if !matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) {
            sock.abort();
            // Let the RST go out before the socket disappears.
            let smol = smol_now(self.start, Instant::now());
            self.iface.poll(smol, &mut self.net, &mut self.sockets);
        }
        self.sockets.remove(c.handle);
        if let Some(p) = c.local_port {
            self.used_ports.remove(&p);
        }
        self.conn_by_key.remove(&c.key);
        self.uncharge(c.owner, c.charge);
        self.free_conns.push(slot);
        self.net.counters.tcp_active = self.conn_by_key.len() as u64;
    }
}

pub(super) enum Step<T> {
    Data(T),
    Block,
    Eof,
    Fail,
}

/// Copy data both ways between a smoltcp socket and a kernel stream. Returns true when the
/// connection is finished.
pub(super) fn pump(c: &mut Conn, sock: &mut tcp::Socket<'static>, window: usize) -> bool {
    let Some(stream) = c.stream.as_mut() else {
        return true;
    };
    // Tunnel → kernel.
    while !c.k_write_blocked && sock.can_recv() {
        let r = sock.recv(|buf| match stream.write(buf) {
            Ok(n) => (n, if n == 0 { Step::Block } else { Step::Data(n) }),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, Step::Block),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => (0, Step::Data(0)),
            Err(_) => (0, Step::Fail),
        });
        match r {
            Ok(Step::Data(_)) => {}
            Ok(Step::Block) => c.k_write_blocked = true,
            Ok(Step::Fail) => {
                sock.abort();
                return true;
            }
            _ => break,
        }
    }
    if !c.shut_wr && !sock.may_recv() && !sock.can_recv() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
        c.shut_wr = true;
    }
    // Kernel → tunnel.
    // At most `window` bytes queued (unlimited on paced connections: smoltcp paces what it
    // sends, so a full buffer no longer leaves as one burst that overflows a peer's UDP
    // receive buffer; 64 KiB on sub-millisecond ones).
    // Serviced again when an ACK for this connection arrives.
    while c.k_readable && !c.k_eof && sock.can_send() && sock.send_queue() < window {
        let room = window.saturating_sub(sock.send_queue());
        let r = sock.send(|buf| {
            let n = buf.len().min(room);
            match buf.get_mut(..n).map(|b| stream.read(b)) {
                Some(Ok(0)) => (0, Step::Eof),
                // Unreachable: n <= buf.len().
                None => (0, Step::Block),
                Some(Ok(n)) => (n, Step::Data(n)),
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => (0, Step::Block),
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => (0, Step::Data(0)),
                Some(Err(_)) => (0, Step::Fail),
            }
        });
        match r {
            Ok(Step::Data(_)) => {}
            Ok(Step::Block) => c.k_readable = false,
            Ok(Step::Eof) => {
                c.k_eof = true;
                sock.close();
            }
            Ok(Step::Fail) => {
                sock.abort();
                return true;
            }
            Err(_) => break,
        }
    }
    if c.k_eof
        && !matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait)
        && sock.may_send()
    {
        sock.close();
    }
    matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait)
        || (c.k_eof && c.shut_wr && !sock.is_open())
}
