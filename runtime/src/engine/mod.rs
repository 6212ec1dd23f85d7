//! The packet loop: one thread, `mio` readiness, no locks on the data path.
//!
//! Per iteration: read a batch of UDP datagrams → decrypt (wire) → filter → TCP into smoltcp,
//! UDP/ICMP handled directly → `iface.poll` → pump data between smoltcp sockets and kernel
//! sockets → `iface.poll` again so new data leaves at once. Timers run every 100 ms.
//!
//! This module keeps the [`Engine`] struct, its construction and config reload, and the main
//! loop (event dispatch by token range, timers, metrics). The layers it drives live in the
//! submodules, each an `impl Engine` block over the same struct:
//! - [`crate::wire`] (`Net`): WireGuard, peers, routing to peers, connection tracking;
//! - `filter`: the inbound decision for every decrypted packet;
//! - `stack`: the smoltcp glue (interface clock, TCP socket settings, buffer auto-tuning);
//! - `forward`: TCP forwarders between smoltcp sockets and kernel sockets, egress listeners;
//! - `udp`: UDP and ICMP echo sessions (kernel sockets, no smoltcp);
//! - `dns`: DNS over TCP answered from the zone (UDP DNS is answered in `udp`);
//! - `budget`: the memory budget every connection is charged to;
//! - `fair`: per-peer fair queueing (DRR) of received data messages, before decryption.

mod budget;
mod dns;
mod fair;
mod filter;
mod forward;
mod stack;
mod udp;

pub use budget::{DEFAULT_MEMORY_BUDGET, MAX_CONNS_PER_OWNER, MAX_UDP_PER_OWNER};
pub use stack::{TCP_BUF_MAX, Tuning};

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use smoltcp::iface::{Interface, SocketSet};
use smoltcp::socket::tcp;
use tsk8s_policy::matcher::Matcher;
use tsk8s_policy::runtime_config::Mode;

use crate::admin::Shared;
use crate::config::{self, Loaded};
use crate::dns::Zone;
use crate::metrics::{self, Counters, PeerStats};
use crate::resolve::{self, Resolver};
use crate::wire::{self, BUF, Net};

use budget::{Budget, Owner};
use forward::{Conn, Listener};
use stack::smol_now;
use udp::{UDP_IDLE, UdpSession};

const TOKEN_WIRE: Token = Token(0);
const TOKEN_WAKE: Token = Token(1);
const LISTENER_BASE: usize = 16;
const CONN_BASE: usize = 1 << 24;
const UDP_BASE: usize = 2 << 24;
const TICK: Duration = Duration::from_millis(100);
const RX_BATCH: usize = 128;

/// Datagrams for one identity of a gateway (`crate::gateway`): the gateway owns the UDP
/// socket and hands each identity its datagrams over a channel; the engine sends through a
/// clone of that socket and returns the buffers for reuse.
pub struct Feed {
    pub rx: Receiver<(SocketAddr, Vec<u8>)>,
    pub ret: SyncSender<Vec<u8>>,
    /// Bytes queued on `rx` (the gateway adds, the engine subtracts).
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// Decrypted inner packets of one receive batch, by the sending peer's slot.
type Inbox = Vec<(usize, Vec<u8>)>;

/// A datagram source of `Engine::read_batches`: hands one datagram to `admit`, false when
/// empty.
type NextDatagram<'a> =
    dyn FnMut(&mut Net, &mut fair::FairQueue, &mut [u8], &mut Inbox) -> bool + 'a;

/// Buffers larger than this are not returned to the gateway's pool.
const FEED_POOL_BUF: usize = 2048;

/// What a gateway identity publishes once a second instead of rendering its own metrics.
pub type Snapshot = (Counters, Vec<(String, PeerStats)>);

pub struct Engine {
    poll: Poll,
    /// Present when the datagrams come from a gateway instead of our own socket.
    feed: Option<Feed>,
    /// Wakes the packet loop (resolver answers, gateway datagrams).
    waker: Arc<mio::Waker>,
    /// Where a gateway identity publishes its counters (else rendered into `Shared`).
    pub stats_sink: Option<Arc<Mutex<Snapshot>>>,
    pub net: Net,
    iface: Interface,
    sockets: SocketSet<'static>,
    loaded: Loaded,
    matcher: Matcher,
    zone: Zone,
    own4: Ipv4Addr,
    own6: Ipv6Addr,
    routes: Vec<ipnet::IpNet>,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    conn_by_key: HashMap<(SocketAddr, SocketAddr), usize>,
    dirty: Vec<usize>,
    udp: Vec<Option<UdpSession>>,
    free_udp: Vec<usize>,
    udp_by_key: HashMap<(SocketAddr, SocketAddr), usize>,
    egress_udp_by_client: HashMap<(usize, SocketAddr), usize>,
    listeners: Vec<Listener>,
    used_ports: HashSet<u16>,
    next_port: u16,
    start: Instant,
    last_tick: Instant,
    last_second: Instant,
    tuning: Tuning,
    rx_buf: Vec<u8>,
    dec_buf: Vec<u8>,
    inbox: Inbox,
    /// Received data messages waiting for decryption, per peer (`fair`).
    fq: fair::FairQueue,
    out_scratch: Vec<u8>,
    /// Resolved proxy target (resolver thread; a literal at once).
    proxy_target: Option<IpAddr>,
    /// The proxy target as handed to the resolver (`host:0`), when it is a name.
    proxy_target_name: Option<String>,
    resolver: Resolver,
    budget: Budget,
    /// UDP sessions per owner (limited to `MAX_UDP_PER_OWNER`).
    udp_owned: HashMap<Owner, usize>,
    pub local_udp: SocketAddr,
}

/// Bind the WireGuard UDP socket (dual-stack when possible) with large buffers.
pub fn bind_wire(port: u16, tuning: &Tuning) -> io::Result<std::net::UdpSocket> {
    let bind: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let std_sock = match std::net::UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(_) => {
            std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?
        }
    };
    std_sock.set_nonblocking(true)?;
    wire::set_buffer(std_sock.as_raw_fd(), libc::SO_RCVBUF, tuning.udp_sock_buf);
    wire::set_buffer(std_sock.as_raw_fd(), libc::SO_SNDBUF, tuning.udp_sock_buf);
    Ok(std_sock)
}

impl Engine {
    pub fn new(loaded: Loaded, tuning: Tuning) -> io::Result<Engine> {
        let std_sock = bind_wire(loaded.node.listen_port, &tuning)?;
        Engine::build(loaded, tuning, std_sock, None, None)
    }

    /// An engine for one identity of a gateway: `socket` is a clone of the gateway's socket
    /// (only sent on), datagrams arrive on `feed`, and its peers get indices in
    /// `index_base | 1..=index_mask`. The returned waker must be woken after feeding it.
    pub fn new_fed(
        loaded: Loaded,
        tuning: Tuning,
        socket: std::net::UdpSocket,
        feed: Feed,
        index_base: u32,
        index_mask: u32,
    ) -> io::Result<(Engine, Arc<mio::Waker>)> {
        let e = Engine::build(
            loaded,
            tuning,
            socket,
            Some(feed),
            Some((index_base, index_mask)),
        )?;
        let w = e.waker.clone();
        Ok((e, w))
    }

    fn build(
        loaded: Loaded,
        tuning: Tuning,
        std_sock: std::net::UdpSocket,
        feed: Option<Feed>,
        index_range: Option<(u32, u32)>,
    ) -> io::Result<Engine> {
        let node = &loaded.node;
        let mut socket = UdpSocket::from_std(std_sock);
        let local_udp = socket.local_addr()?;
        let poll = Poll::new()?;
        if feed.is_none() {
            poll.registry()
                .register(&mut socket, TOKEN_WIRE, Interest::READABLE)?;
        }
        let waker = Arc::new(mio::Waker::new(poll.registry(), TOKEN_WAKE)?);
        let w = waker.clone();
        let resolver = Resolver::spawn(Arc::new(move || {
            let _ = w.wake();
        }))?;
        let mut net = Net::new(socket, loaded.secret.clone(), usize::from(node.mtu));
        if !tuning.udp_gso {
            net.txq.disable_gso();
        }
        if let Some((base, mask)) = index_range {
            net.set_index_range(base, mask);
        }
        net.set_peers(&loaded.peers);
        let start = Instant::now();
        let own4 = node.ipv4;
        let own6 = node.ipv6;
        let iface = stack::interface(&mut net, start, own4, own6, tuning.skip_quiet);
        let mut e = Engine {
            poll,
            feed,
            waker,
            stats_sink: None,
            net,
            iface,
            sockets: SocketSet::new(Vec::new()),
            matcher: Matcher::default(),
            zone: Zone::default(),
            own4,
            own6,
            routes: Vec::new(),
            loaded: loaded.clone(),
            conns: Vec::new(),
            free_conns: Vec::new(),
            conn_by_key: HashMap::new(),
            dirty: Vec::new(),
            udp: Vec::new(),
            free_udp: Vec::new(),
            udp_by_key: HashMap::new(),
            egress_udp_by_client: HashMap::new(),
            listeners: Vec::new(),
            used_ports: HashSet::new(),
            next_port: 49_152,
            start,
            last_tick: start,
            last_second: start,
            tuning,
            rx_buf: vec![0; BUF],
            dec_buf: vec![0; BUF + 64],
            inbox: Vec::new(),
            fq: fair::FairQueue::default(),
            out_scratch: Vec::with_capacity(2048),
            proxy_target: None,
            proxy_target_name: None,
            resolver,
            budget: Budget {
                limit: tuning.memory_budget,
                ..Budget::default()
            },
            udp_owned: HashMap::new(),
            local_udp,
        };
        e.net.counters.memory_budget = tuning.memory_budget as u64;
        e.apply(loaded)?;
        Ok(e)
    }

    /// Does a new config need a fresh engine (identity or socket changed)?
    pub fn needs_restart(&self, new: &Loaded) -> bool {
        let a = &self.loaded.node;
        let b = &new.node;
        a.ipv4 != b.ipv4
            || a.ipv6 != b.ipv6
            || a.listen_port != b.listen_port
            || a.mtu != b.mtu
            || self.loaded.public != new.public
    }

    /// Apply a config with the same identity: peers (sessions of unchanged peers survive),
    /// filter, names, forwarding mode.
    pub fn apply(&mut self, loaded: Loaded) -> io::Result<()> {
        self.net.set_peers(&loaded.peers);
        let own = config::own_nets(&loaded.node);
        self.matcher = Matcher::for_destinations(&loaded.mesh.filter, &own);
        self.zone = Zone::new(&loaded.mesh.domain, &loaded.mesh.dns);
        self.routes = match &loaded.node.mode {
            Mode::SubnetRouter { routes } => routes.iter().map(|r| r.trunc()).collect(),
            _ => Vec::new(),
        };
        // Names are resolved on the resolver thread, never here (this is the packet thread).
        let mut names: Vec<String> = loaded
            .peers
            .iter()
            .filter_map(|p| p.endpoint.clone())
            .filter(|e| resolve::is_name(e))
            .collect();
        let (literal, target_name) = match &loaded.node.mode {
            Mode::Proxy { target_host, .. } => match target_host.parse::<IpAddr>() {
                Ok(ip) => (Some(ip), None),
                Err(_) => (None, Some(format!("{target_host}:0"))),
            },
            _ => (None, None),
        };
        if target_name.is_none() {
            self.proxy_target = literal;
        } else if target_name != self.proxy_target_name {
            // A different name: unknown until the resolver answers.
            self.proxy_target = None;
        }
        self.proxy_target_name = target_name;
        names.extend(self.proxy_target_name.clone());
        self.resolver.want(names);
        let mode_changed = self.loaded.node.mode != loaded.node.mode || self.listeners.is_empty();
        self.loaded = loaded;
        if mode_changed {
            self.rebuild_listeners()?;
        }
        Ok(())
    }

    /// Run until `stop` is set or `reload` is requested; returns true for reload.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        reload: &AtomicBool,
        shared: &Arc<Shared>,
        changed: &mut dyn FnMut() -> bool,
    ) -> io::Result<bool> {
        let mut events = Events::with_capacity(1024);
        let mut last_fp = Instant::now();
        self.publish_metrics(shared);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            if reload.swap(false, Ordering::Relaxed) {
                return Ok(true);
            }
            let now = Instant::now();
            if now.duration_since(last_fp) >= Duration::from_secs(1) {
                last_fp = now;
                if changed() {
                    return Ok(true);
                }
            }
            let smol = smol_now(self.start, now);
            let mut timeout = TICK.saturating_sub(now.duration_since(self.last_tick));
            if let Some(d) = self.iface.poll_delay(smol, &self.sockets) {
                timeout = timeout.min(Duration::from_micros(d.total_micros()));
            }
            if !self.dirty.is_empty() || !self.net.rx.is_empty() {
                timeout = Duration::ZERO;
            }
            // Nothing stays queued while the loop sleeps (normally `poll_stack` sent it).
            self.net.flush();
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.net.now = Instant::now();
            self.take_resolutions();
            let mut wire_ready = false;
            for ev in events.iter() {
                let t = ev.token().0;
                if ev.token() == TOKEN_WIRE {
                    wire_ready = true;
                } else if (LISTENER_BASE..CONN_BASE).contains(&t) {
                    self.on_listener(t - LISTENER_BASE);
                } else if (CONN_BASE..UDP_BASE).contains(&t) {
                    let slot = t - CONN_BASE;
                    if let Some(Some(c)) = self.conns.get_mut(slot) {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.k_readable = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            c.k_write_blocked = false;
                        }
                        if !c.dirty {
                            c.dirty = true;
                            self.dirty.push(slot);
                        }
                    }
                } else if t >= UDP_BASE {
                    self.on_udp_session(t - UDP_BASE);
                }
            }
            if wire_ready {
                self.read_wire();
            }
            if self.feed.is_some() {
                self.read_feed();
            }
            self.poll_stack();
            self.service_dirty();
            self.poll_stack();
            let now = Instant::now();
            if now.duration_since(self.last_tick) >= TICK {
                self.last_tick = now;
                self.net.update_timers();
                if now.duration_since(self.last_second) >= Duration::from_secs(1) {
                    self.last_second = now;
                    self.every_second();
                    self.publish_metrics(shared);
                }
            }
        }
    }

    /// Apply what the resolver thread found (never blocks).
    fn take_resolutions(&mut self) {
        while let Some((name, addr)) = self.resolver.try_answer() {
            if self.proxy_target_name.as_deref() == Some(name.as_str()) {
                if let Some(a) = addr {
                    self.proxy_target = Some(a.ip());
                }
            } else if let Some(a) = addr {
                self.net.apply_resolved(&name, a);
            }
        }
    }

    /// Our own socket: read until it is empty.
    fn read_wire(&mut self) {
        let mut rx = std::mem::take(&mut self.rx_buf);
        let fair = self.tuning.fair_share;
        let fd = self.net.socket.as_raw_fd();
        let pressure = move || wire::receive_buffer_half_full(fd);
        self.read_batches(
            &pressure,
            &mut |net, fq, dec, inbox| match net.socket.recv_from(&mut rx) {
                Ok((n, from)) => {
                    if let Some(d) = rx.get(..n) {
                        admit(net, fair.then_some(fq), canonical(from), d, dec, inbox);
                    }
                    true
                }
                Err(_) => false,
            },
        );
        self.rx_buf = rx;
    }

    /// A gateway identity: take the datagrams the gateway dispatched to us.
    fn read_feed(&mut self) {
        let Some(feed) = self.feed.take() else {
            return;
        };
        let fair = self.tuning.fair_share;
        let queued = feed.queued.clone();
        let pressure =
            move || queued.load(Ordering::Relaxed) > crate::gateway::FEED_QUEUE_BYTES / 2;
        self.read_batches(&pressure, &mut |net, fq, dec, inbox| {
            let Ok((from, data)) = feed.rx.try_recv() else {
                return false;
            };
            feed.queued.fetch_sub(data.len(), Ordering::Relaxed);
            admit(net, fair.then_some(fq), from, &data, dec, inbox);
            if data.capacity() <= FEED_POOL_BUF {
                let _ = feed.ret.try_send(data);
            }
            true
        });
        self.feed = Some(feed);
    }

    /// The one receive loop of both datagram sources (`read_wire`, `read_feed`): take
    /// datagrams with `next` (which hands one to [`admit`] and returns false when the source
    /// is empty). Data messages of known peers wait in the per-peer fair queue (`fair`;
    /// `pressure` says whether the source's own buffer is more than half full); the
    /// loop reads up to two batches ahead, then decrypts and delivers one batch
    /// (`RX_BATCH`) in DRR order, hands the packets to the filter and lets smoltcp and the
    /// forwarders run before reading on, so smoltcp sees many segments per poll, a flood
    /// cannot starve the rest of the loop, and when the loop is behind, the queues (not the
    /// kernel's FIFO socket buffer) decide whose datagrams wait or go. Returns when the
    /// source and the queues are empty.
    fn read_batches(&mut self, pressure: &dyn Fn() -> bool, next: &mut NextDatagram<'_>) {
        let mut dec = std::mem::take(&mut self.dec_buf);
        let mut inbox = std::mem::take(&mut self.inbox);
        let mut fq = std::mem::take(&mut self.fq);
        let ahead = if self.tuning.fair_share {
            2 * RX_BATCH
        } else {
            RX_BATCH
        };
        loop {
            let mut n_read = 0;
            let mut empty = false;
            while n_read < ahead && !fq.should_stop_reading(RX_BATCH, pressure) {
                if !next(&mut self.net, &mut fq, &mut dec, &mut inbox) {
                    empty = true;
                    break;
                }
                n_read += 1;
            }
            let mut served = 0;
            while served < RX_BATCH
                && let Some((_, from, buf)) = fq.pop()
            {
                self.net.handle_datagram(from, &buf, &mut dec, &mut inbox);
                fq.recycle(buf);
                served += 1;
            }
            for (slot, pkt) in inbox.drain(..) {
                self.inbound(slot, pkt);
            }
            if empty && fq.is_empty() {
                break;
            }
            self.poll_stack();
            self.service_dirty();
        }
        self.fq = fq;
        self.dec_buf = dec;
        self.inbox = inbox;
    }

    fn every_second(&mut self) {
        self.fq.shrink();
        self.net.rate_limiter.reset_count();
        self.net.reset_probe_limits();
        self.net.expire_flows();
        // Sweep connections for state changes driven by smoltcp timers.
        for slot in 0..self.conns.len() {
            if tracing::enabled!(tracing::Level::DEBUG)
                && let Some(Some(c)) = self.conns.get(slot)
            {
                let s = self.sockets.get::<tcp::Socket>(c.handle);
                tracing::debug!(
                    slot,
                    cwnd = s.congestion_window(),
                    pacing_mbit = s.pacing_rate_now().map(|r| r * 8 / 1_000_000),
                    srtt_ms = s.smoothed_rtt().map(|d| d.total_millis()),
                    send_queue = s.send_queue(),
                    rx_cap = c.rx_cap,
                    tx_cap = c.tx_cap,
                    retransmissions = ?s.retransmissions(),
                    "tcp"
                );
            }
            self.service(slot);
        }
        let now = Instant::now();
        let stale: Vec<usize> = self
            .udp
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| now.duration_since(s.last) > UDP_IDLE)
                    .map(|_| i)
            })
            .collect();
        for i in stale {
            self.remove_udp(i);
        }
    }

    fn publish_metrics(&self, shared: &Shared) {
        if let Some(sink) = &self.stats_sink {
            if let Ok(mut s) = sink.lock() {
                *s = (self.net.counters.clone(), self.net.peer_stats());
            }
            return;
        }
        let text = metrics::render(&self.net.counters, &self.net.peer_stats());
        if let Ok(mut m) = shared.metrics.lock() {
            *m = text;
        }
    }
}

/// Take one received datagram: a data message of a known peer goes to its fair queue (`fq`,
/// when fair queueing is on; a datagram the full queues drop instead is counted against the
/// peer it belonged to), anything else is handled at once.
fn admit(
    net: &mut Net,
    fq: Option<&mut fair::FairQueue>,
    from: SocketAddr,
    data: &[u8],
    dec: &mut [u8],
    inbox: &mut Inbox,
) {
    if let Some(fq) = fq
        && let Some(slot) = net.data_slot(data)
    {
        if let Some(lost) = fq.push(slot, from, data) {
            net.counters.udp_rx_datagrams += 1;
            net.counters.drop(metrics::DropReason::FairShare);
            if let Some(Some(p)) = net.peers.get_mut(lost) {
                p.stats.fair_share_drops += 1;
            }
        }
        return;
    }
    net.handle_datagram(from, data, dec, inbox);
}

/// Map IPv4-mapped IPv6 source addresses (dual-stack socket) back to IPv4.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

impl Engine {
    #[doc(hidden)]
    pub fn fuzz_datagram(&mut self, bytes: &[u8]) {
        let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
        self.inject_datagram(from, bytes);
    }

    #[doc(hidden)]
    pub fn fuzz_inner(&mut self, bytes: &[u8]) {
        self.inbound(0, bytes.to_vec());
        self.poll_stack();
        self.service_dirty();
        self.poll_stack();
    }
}

impl Engine {
    /// Feed one datagram as if received from `from` (tests and fuzzing).
    #[doc(hidden)]
    pub fn inject_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        let mut dec = std::mem::take(&mut self.dec_buf);
        let mut inbox = std::mem::take(&mut self.inbox);
        self.net.now = Instant::now();
        self.net.handle_datagram(from, bytes, &mut dec, &mut inbox);
        for (slot, pkt) in inbox.drain(..) {
            self.inbound(slot, pkt);
        }
        self.dec_buf = dec;
        self.inbox = inbox;
        self.poll_stack();
        self.service_dirty();
        self.poll_stack();
    }
}
