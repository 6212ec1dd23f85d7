//! The packet loop: one thread, `mio` readiness, no locks on the data path.
//!
//! Per iteration: read a batch of UDP datagrams → decrypt (wire) → filter → TCP into smoltcp,
//! UDP/ICMP handled directly → `iface.poll` → pump data between smoltcp sockets and kernel
//! sockets → `iface.poll` again so new data leaves at once. Timers run every 100 ms.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};
use tsk8s_policy::matcher::Matcher;
use tsk8s_policy::runtime_config::{Mode, Protocol};

use crate::admin::Shared;
use crate::config::{self, Loaded};
use crate::dns::Zone;
use crate::metrics::{self, Counters, DropReason, PeerStats};
use crate::packet::{self, Info, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};
use crate::resolve::{self, Resolver};
use crate::wire::{self, BUF, Net};

const TOKEN_WIRE: Token = Token(0);
const TOKEN_WAKE: Token = Token(1);
const LISTENER_BASE: usize = 16;
const CONN_BASE: usize = 1 << 24;
const UDP_BASE: usize = 2 << 24;
const MAX_CONNS: usize = 65_536;
const MAX_UDP_SESSIONS: usize = 16_384;
const UDP_IDLE: Duration = Duration::from_secs(60);
const TICK: Duration = Duration::from_millis(100);
const RX_BATCH: usize = 128;
/// Charged per connection besides its buffers (socket state, bookkeeping, kernel-side fd).
const CONN_OVERHEAD: usize = 4096;
/// Buffers of a connection once its owner holds half its share (full-size ones before), and
/// once it holds three quarters.
const MEDIUM_BUF: usize = 64 * 1024;
const SMALL_BUF: usize = 16 * 1024;
/// DNS over TCP: smoltcp buffers, and the largest message kept (2-byte length + 65,535).
const DNS_RX_BUF: usize = 4096;
const DNS_TX_BUF: usize = 8192;
const DNS_MSG_MAX: usize = 2 + 65_535;
/// Largest receive or send buffer a TCP connection grows to (auto-tuning, see
/// `Engine::grow_buffers`), unless `TSK8S_TCP_BUF_MAX` says otherwise: a window of 4 MiB
/// fills about 640 Mbit/s at 50 ms.
pub const TCP_BUF_MAX: usize = 4 * 1024 * 1024;
/// SRTT from which a connection is paced instead of capped at `Tuning::tcp_tx_window`.
const PACED_SRTT: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(2);
/// Floor of smoltcp's retransmission timeout (Linux's `TCP_RTO_MIN`; RFC 6298 says 1 s).
const TCP_MIN_RTO: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(200);
/// Connections one peer (or the cluster side of egress) may hold open.
pub const MAX_CONNS_PER_OWNER: usize = 1024;
/// UDP sessions (kernel sockets) one peer (or the cluster side of egress) may hold open.
pub const MAX_UDP_PER_OWNER: usize = MAX_UDP_SESSIONS / 4;
/// Default memory budget when neither `TSK8S_MEMORY_BUDGET` nor `TSK8S_MEMORY_LIMIT` is set.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 * 1024 * 1024;

/// Who a connection's memory is charged to: the peer it came from (or goes to, for none:
/// egress connections are opened from inside the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Peer([u8; 32]),
    Local,
}

/// One byte budget for every per-connection buffer. A connection is admitted only if its
/// buffers fit both the whole budget and its owner's share (a quarter), and its owner holds
/// fewer than [`MAX_CONNS_PER_OWNER`] connections; otherwise it is refused, never another's
/// connection evicted.
#[derive(Debug, Default)]
struct Budget {
    limit: usize,
    used: usize,
    accounts: HashMap<Owner, (usize, usize)>,
}

impl Budget {
    fn share(&self) -> usize {
        self.limit / 4
    }

    #[cfg(test)]
    fn try_charge(&mut self, owner: Owner, bytes: usize) -> bool {
        self.try_charge_within(owner, bytes, self.share())
    }

    /// Charge `bytes` to `owner` if its usage stays within `cap` (at most its share).
    fn try_charge_within(&mut self, owner: Owner, bytes: usize, cap: usize) -> bool {
        let cap = cap.min(self.share());
        let (conns, used) = self.accounts.get(&owner).copied().unwrap_or((0, 0));
        if conns >= MAX_CONNS_PER_OWNER || used + bytes > cap || self.used + bytes > self.limit {
            return false;
        }
        self.accounts.insert(owner, (conns + 1, used + bytes));
        self.used += bytes;
        true
    }

    /// Charge `bytes` more to `owner` (a connection's buffers growing) if its usage stays
    /// within `cap` (at most its share) and the budget within its limit.
    fn try_grow_within(&mut self, owner: Owner, bytes: usize, cap: usize) -> bool {
        let cap = cap.min(self.share());
        let Some((_, used)) = self.accounts.get_mut(&owner) else {
            return false;
        };
        if *used + bytes > cap || self.used + bytes > self.limit {
            return false;
        }
        *used += bytes;
        self.used += bytes;
        true
    }

    /// Give back `bytes` of a growth that did not happen (the connection stays).
    fn release_bytes(&mut self, owner: Owner, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
        if let Some((_, used)) = self.accounts.get_mut(&owner) {
            *used = used.saturating_sub(bytes);
        }
    }

    fn release(&mut self, owner: Owner, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
        if let Some((conns, used)) = self.accounts.get_mut(&owner) {
            *conns = conns.saturating_sub(1);
            *used = used.saturating_sub(bytes);
            if *conns == 0 {
                self.accounts.remove(&owner);
            }
        }
    }
}

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
    pub udp_sock_buf: usize,
    pub congestion: tcp::CongestionControl,
    /// Bytes all per-connection buffers together may take (see [`Budget`]).
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
            udp_sock_buf: env("TSK8S_UDP_SOCK_BUF", 7 * 1024 * 1024),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the tunnel-side TCP handshake.
    Tunnel,
    /// Kernel connect in progress.
    Connecting,
    Open,
}

enum Kind {
    /// Tunnel connection forwarded to `target` (proxy, sidecar, subnet router).
    Forward(SocketAddr),
    /// Kernel connection accepted by an egress listener, forwarded into the tunnel.
    Egress,
    /// DNS over TCP answered locally.
    Dns,
}

struct Conn {
    handle: SocketHandle,
    kind: Kind,
    stream: Option<TcpStream>,
    phase: Phase,
    k_readable: bool,
    k_write_blocked: bool,
    k_eof: bool,
    shut_wr: bool,
    key: (SocketAddr, SocketAddr),
    local_port: Option<u16>,
    born: Instant,
    dirty: bool,
    dns_buf: Vec<u8>,
    owner: Owner,
    /// Bytes charged to the budget for this connection.
    charge: usize,
    /// Current sizes of its smoltcp receive and send buffers (they grow, see `grow_buffers`).
    rx_cap: usize,
    tx_cap: usize,
}

enum UdpKind {
    /// Kernel socket connected to the forward target.
    Forward(UdpSocket),
    /// Reply path of an egress listener: (listener index, client address).
    Egress(usize, SocketAddr),
    /// ICMP echo through the subnet router: an unprivileged ping socket (`SOCK_DGRAM`,
    /// `IPPROTO_ICMP[V6]`). Keyed by ((tunnel source, echo id), (destination, 0)).
    Ping(UdpSocket),
}

struct UdpSession {
    kind: UdpKind,
    owner: Owner,
    /// (tunnel remote, tunnel local)
    key: (SocketAddr, SocketAddr),
    last: Instant,
}

enum Listener {
    Tcp(TcpListener, SocketAddr),
    Udp(UdpSocket, SocketAddr),
}

/// Datagrams for one identity of a gateway (`crate::gateway`): the gateway owns the UDP
/// socket and hands each identity its datagrams over a channel; the engine sends through a
/// clone of that socket and returns the buffers for reuse.
pub struct Feed {
    pub rx: Receiver<(SocketAddr, Vec<u8>)>,
    pub ret: SyncSender<Vec<u8>>,
    /// Bytes queued on `rx` (the gateway adds, the engine subtracts).
    pub queued: Arc<std::sync::atomic::AtomicUsize>,
}

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
    inbox: Vec<(usize, Vec<u8>)>,
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

fn smol_now(start: Instant, now: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(now.duration_since(start).as_micros() as i64)
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
        if let Some((base, mask)) = index_range {
            net.set_index_range(base, mask);
        }
        net.set_peers(&loaded.peers);
        let start = Instant::now();
        let mut iface = Interface::new(
            IfaceConfig::new(HardwareAddress::Ip),
            &mut net,
            smol_now(start, start),
        );
        let own4 = node.ipv4;
        let own6 = node.ipv6;
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(own4), 32));
            let _ = a.push(IpCidr::new(IpAddress::Ipv6(own6), 128));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(own4);
        let _ = iface.routes_mut().add_default_ipv6_route(own6);
        iface.set_any_ip(true);
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

    fn rebuild_listeners(&mut self) -> io::Result<()> {
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

    fn is_own(&self, ip: IpAddr) -> bool {
        ip == IpAddr::V4(self.own4) || ip == IpAddr::V6(self.own6)
    }

    fn in_routes(&self, ip: IpAddr) -> bool {
        self.routes.iter().any(|r| r.contains(&ip))
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

    fn poll_stack(&mut self) {
        let smol = smol_now(self.start, Instant::now());
        self.iface.poll(smol, &mut self.net, &mut self.sockets);
    }

    fn read_wire(&mut self) {
        let mut rx = std::mem::take(&mut self.rx_buf);
        let mut dec = std::mem::take(&mut self.dec_buf);
        let mut inbox = std::mem::take(&mut self.inbox);
        // Read until the socket is empty, in batches, so smoltcp sees many segments per poll.
        loop {
            let mut n_read = 0;
            while n_read < RX_BATCH {
                match self.net.socket.recv_from(&mut rx) {
                    Ok((n, from)) => {
                        n_read += 1;
                        let from = canonical(from);
                        if let Some(d) = rx.get(..n) {
                            self.net.handle_datagram(from, d, &mut dec, &mut inbox);
                        }
                    }
                    Err(_) => break,
                }
            }
            for (slot, pkt) in inbox.drain(..) {
                self.inbound(slot, pkt);
            }
            if n_read < RX_BATCH {
                break;
            }
            self.poll_stack();
            self.service_dirty();
        }
        self.rx_buf = rx;
        self.dec_buf = dec;
        self.inbox = inbox;
    }

    /// A gateway identity: take the datagrams the gateway dispatched to us.
    fn read_feed(&mut self) {
        let Some(feed) = self.feed.take() else {
            return;
        };
        let mut dec = std::mem::take(&mut self.dec_buf);
        let mut inbox = std::mem::take(&mut self.inbox);
        loop {
            let mut n_read = 0;
            while n_read < RX_BATCH {
                let Ok((from, data)) = feed.rx.try_recv() else {
                    break;
                };
                n_read += 1;
                feed.queued.fetch_sub(data.len(), Ordering::Relaxed);
                self.net.handle_datagram(from, &data, &mut dec, &mut inbox);
                if data.capacity() <= FEED_POOL_BUF {
                    let _ = feed.ret.try_send(data);
                }
            }
            for (slot, pkt) in inbox.drain(..) {
                self.inbound(slot, pkt);
            }
            if n_read < RX_BATCH {
                break;
            }
            self.poll_stack();
            self.service_dirty();
        }
        self.dec_buf = dec;
        self.inbox = inbox;
        self.feed = Some(feed);
    }

    /// Filter and dispatch one decrypted inner packet from peer `slot`.
    fn inbound(&mut self, slot: usize, pkt: Vec<u8>) {
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

    fn tcp_target(&self, info: &Info) -> Option<Kind> {
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

    fn inbound_tcp(&mut self, peer_slot: usize, info: &Info, pkt: Vec<u8>) {
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

    /// Charge a new connection of `owner` to the budget: full-size buffers if they fit, else
    /// small ones, else None (refused, counted). Returns (rx, tx, charged bytes).
    fn charge_conn(&mut self, owner: Owner, dns: bool) -> Option<(usize, usize, usize)> {
        let share = self.budget.share();
        let (rx, tx) = (self.tuning.tcp_rx_buf, self.tuning.tcp_tx_buf);
        // (rx, tx, the owner's usage this tier may take it to): full-size buffers for the
        // first half of its share, smaller ones after, so a peer with many connections gets
        // many (about 150 with the default budget) rather than 20 large ones.
        let tiers: &[(usize, usize, usize)] = if dns {
            &[(DNS_RX_BUF, DNS_TX_BUF, share)]
        } else {
            &[
                (rx, tx, share / 2),
                (MEDIUM_BUF.min(rx), MEDIUM_BUF.min(tx), share / 4 * 3),
                (SMALL_BUF.min(rx), SMALL_BUF.min(tx), share),
            ]
        };
        let extra = if dns { DNS_MSG_MAX } else { 0 };
        for &(rx, tx, cap) in tiers {
            let cost = rx + tx + extra + CONN_OVERHEAD;
            if self.budget.try_charge_within(owner, cost, cap) {
                self.net.counters.memory_charged = self.budget.used as u64;
                return Some((rx, tx, cost));
            }
        }
        self.net.counters.drop(DropReason::OverLimit);
        None
    }

    fn tcp_socket(&self, rx: usize, tx: usize, dns: bool) -> tcp::Socket<'static> {
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

    fn alloc_conn(&mut self, c: Conn) -> Option<usize> {
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

    fn new_tunnel_listener(
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

    fn uncharge(&mut self, owner: Owner, charge: usize) {
        self.budget.release(owner, charge);
        self.net.counters.memory_charged = self.budget.used as u64;
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(slot);
        }
    }

    fn service_dirty(&mut self) {
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

    fn alloc_port(&mut self) -> Option<u16> {
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

    fn on_listener(&mut self, idx: usize) {
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

    fn own_for(&self, target: IpAddr) -> IpAddr {
        match target {
            IpAddr::V4(_) => IpAddr::V4(self.own4),
            IpAddr::V6(_) => IpAddr::V6(self.own6),
        }
    }

    fn egress_tcp(&mut self, mut stream: TcpStream, target: SocketAddr) {
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
    fn service(&mut self, slot: usize) {
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

    /// Receive/send buffer auto-tuning: a buffer that limits the transfer doubles, up to
    /// `tcp_buf_max`, while its owner's charge stays within the full-size tier (half its
    /// share) and the budget allows. The receive buffer grows when the peer filled a window
    /// of at least half of it (smoltcp flags that; our reader is not the limit: the window
    /// is below the bandwidth-delay product); the send buffer when it is full, the kernel side
    /// has more, and the congestion window already covers three quarters of it (cwnd, not
    /// the buffer, would otherwise be the limit). Returns true when the send buffer grew (the
    /// connection has room to fill now).
    fn grow_buffers(&mut self, slot: usize) -> bool {
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

    fn remove_conn(&mut self, slot: usize) {
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

    fn every_second(&mut self) {
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

    // ---- UDP ----

    fn owner_of(&self, peer_slot: usize) -> Owner {
        match self.net.peers.get(peer_slot) {
            Some(Some(p)) => Owner::Peer(p.spec.public_key),
            _ => Owner::Local,
        }
    }

    /// May `owner` open one more UDP session? Refusals are counted (and per peer).
    fn udp_admit(&mut self, owner: Owner, peer_slot: Option<usize>) -> bool {
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

    fn inbound_udp(&mut self, peer_slot: usize, info: &Info, pkt: &[u8]) {
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

    fn put_udp(&mut self, slot: usize, s: UdpSession) {
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

    fn remove_udp(&mut self, slot: usize) {
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
    fn forward_ping(&mut self, peer_slot: usize, info: &Info, pkt: &[u8]) {
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
    fn on_udp_session(&mut self, slot: usize) {
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

    fn egress_udp(&mut self, li: usize, client: SocketAddr, target: SocketAddr, data: &[u8]) {
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
fn ping_socket(v6: bool) -> Option<UdpSocket> {
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

enum Step<T> {
    Data(T),
    Block,
    Eof,
    Fail,
}

/// Copy data both ways between a smoltcp socket and a kernel stream. Returns true when the
/// connection is finished.
fn pump(c: &mut Conn, sock: &mut tcp::Socket<'static>, window: usize) -> bool {
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

/// DNS over TCP: 2-byte length-prefixed messages, answered locally. At most one message
/// (`DNS_MSG_MAX`) is buffered; an answer waits until it fits the send buffer.
fn dns_tcp(
    c: &mut Conn,
    sock: &mut tcp::Socket<'static>,
    zone: &Zone,
    counters: &mut metrics::Counters,
) -> bool {
    loop {
        while sock.can_recv() && c.dns_buf.len() < DNS_MSG_MAX {
            let room = DNS_MSG_MAX - c.dns_buf.len();
            let buf = &mut c.dns_buf;
            let r = sock.recv(|b| {
                let n = b.len().min(room);
                let chunk = b.get(..n).unwrap_or_default();
                buf.reserve_exact(chunk.len());
                buf.extend_from_slice(chunk);
                (n, n)
            });
            if !matches!(r, Ok(n) if n > 0) {
                break;
            }
        }
        let Some(len) = c
            .dns_buf
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(msg) = c.dns_buf.get(2..2 + len) else {
            break;
        };
        let resp = zone.answer(msg);
        if let Some(resp) = &resp
            && sock.send_capacity() - sock.send_queue() < 2 + resp.len()
        {
            // Answered again when the peer has read what is queued.
            break;
        }
        counters.dns_queries += 1;
        if let Some(resp) = resp {
            let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&resp);
            if sock.send_slice(&framed).is_err() {
                sock.abort();
                return true;
            }
        }
        c.dns_buf.drain(..2 + len);
        if c.dns_buf.is_empty() {
            // Give the memory back between messages.
            c.dns_buf = Vec::new();
        }
    }
    if !sock.may_recv() && !sock.can_recv() && sock.is_open() && sock.may_send() {
        sock.close();
    }
    matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_growth_stays_within_the_tier() {
        let mut b = Budget {
            limit: 64 << 20,
            ..Budget::default()
        };
        let o = Owner::Local;
        assert!(b.try_charge(o, 1 << 20));
        // Buffers grow while the owner stays within half its share (8 MiB here).
        assert!(b.try_grow_within(o, 6 << 20, b.share() / 2));
        assert!(!b.try_grow_within(o, 2 << 20, b.share() / 2));
        b.release_bytes(o, 6 << 20);
        assert_eq!(b.used, 1 << 20);
        // Nothing grows for an owner without a connection.
        assert!(!b.try_grow_within(Owner::Peer([1; 32]), 1, b.share()));
        b.release(o, 1 << 20);
        assert_eq!(b.used, 0);
        assert!(b.accounts.is_empty());
    }

    #[test]
    fn budget_shares_and_refusals() {
        let mut b = Budget {
            limit: 4_000,
            ..Budget::default()
        };
        let (p, q) = (Owner::Peer([1; 32]), Owner::Peer([2; 32]));
        // A peer gets at most a quarter.
        assert!(b.try_charge(p, 600));
        assert!(b.try_charge(p, 400));
        assert!(!b.try_charge(p, 1));
        // Others are unaffected by it.
        assert!(b.try_charge(q, 1_000));
        assert!(b.try_charge(Owner::Local, 1_000));
        assert!(b.try_charge(Owner::Peer([3; 32]), 1_000));
        // The whole budget is spent now.
        assert!(!b.try_charge(Owner::Peer([4; 32]), 1));
        b.release(p, 600);
        assert_eq!(b.used, 3_400);
        assert!(b.try_charge(Owner::Peer([4; 32]), 600));
        b.release(p, 400);
        assert!(!b.accounts.contains_key(&p));
        // A tier's cap below the share.
        let mut b = Budget {
            limit: 4_000,
            ..Budget::default()
        };
        assert!(b.try_charge_within(p, 500, 500));
        assert!(!b.try_charge_within(p, 1, 500));
        assert!(!b.try_charge_within(p, 600, 5_000), "never above the share");
        assert!(b.try_charge_within(p, 500, 5_000));
        // Connection count per owner.
        let mut b = Budget {
            limit: usize::MAX / 2,
            ..Budget::default()
        };
        for _ in 0..MAX_CONNS_PER_OWNER {
            assert!(b.try_charge(p, 1));
        }
        assert!(!b.try_charge(p, 1));
        assert!(b.try_charge(q, 1));
    }
}
