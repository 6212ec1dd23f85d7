//! `tsk8s-runtime gateway`: one UDP port for every node of a cluster (`publish="gateway"`).
//!
//! The gateway owns the cluster's single public WireGuard socket. Each node in `gateway.json`
//! is an *identity*: an ordinary [`Engine`] (own key, addresses, filter, forwarders) on its own
//! thread, fed by a bounded channel instead of its own socket and sending through a clone of
//! the shared one. Sidecars in `relays` keep their own pods; their datagrams are relayed
//! unchanged. The packet thread here only dispatches:
//!
//! - a handshake initiation (type 1) goes to the identity or relayed sidecar whose public key
//!   its MAC1 was computed with (BLAKE2s-128 keyed by BLAKE2s-256("mac1----" ‖ public key),
//!   keys precomputed; no Diffie-Hellman here);
//! - every other message (types 2, 3, 4) by its receiver index: a relayed sidecar's index
//!   learned from the sidecar's own initiations and responses (per device address), else
//!   `receiver_index >> 8 >> PEER_BITS` names the identity (each identity's peers get indices
//!   in their own range, [`Net::set_index_range`](crate::wire::Net::set_index_range)).
//!
//! Relayed datagrams leave through one UDP socket per (device address, sidecar) — the sidecar
//! sees a distinct source per device and answers it; what it sends on that socket goes back
//! out of the public socket to that device address (NAT). See README "Gateway".

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use tracing::{error, info, warn};
use tsk8s_policy::runtime_config::{GATEWAY_KEY_DIR, GatewayConfig, PRIVATE_KEY_FILE};

use crate::admin::{self, Shared};
use crate::config::{self, ConfigError, Loaded};
use crate::engine::{self, Engine, Feed, Snapshot, Tuning, canonical};
use crate::metrics::{self, esc};
use crate::resolve::{self, Resolver};

/// Bits of a 24-bit peer index that name the identity (1..=[`MAX_IDENTITIES`]).
pub const ID_BITS: u32 = 10;
/// Bits left for an identity's own peers.
pub const PEER_BITS: u32 = 24 - ID_BITS;
/// Nodes one gateway terminates at most.
pub const MAX_IDENTITIES: usize = (1 << ID_BITS) - 1;
/// Mesh peers per identity at most (the identity's index range).
pub const MAX_PEERS: usize = (1 << PEER_BITS) - 1;
/// Relay sockets (one per device address and sidecar) at most.
pub const MAX_RELAY_SOCKETS: usize = 4096;
/// A relay socket with no datagram either way for this long is closed.
pub const RELAY_IDLE: Duration = Duration::from_secs(180);
/// A relay socket the sidecar has not answered on yet is closed after this long idle (so
/// spoofed sources cannot hold the table).
pub const RELAY_UNCONFIRMED_IDLE: Duration = Duration::from_secs(10);
/// Data packets with an unknown index forwarded to the relayed sidecars (see
/// [`Gateway::probe_relays`]), per second from one source address and in all.
pub const RELAY_PROBES_PER_SOURCE: u32 = 4;
pub const RELAY_PROBES_PER_SECOND: u32 = 32;
/// Learned sidecar indices at most, and how long one lives without use. A session lasts
/// 180 s at most (WireGuard's reject-after-time); its sidecar re-handshakes before that.
pub const MAX_RELAY_INDICES: usize = 16_384;
pub const RELAY_INDEX_IDLE: Duration = Duration::from_secs(300);
/// Datagrams, and bytes, queued for one identity before new ones are dropped (`queue_full`).
pub const FEED_QUEUE: usize = 1024;
pub const FEED_QUEUE_BYTES: usize = 1024 * 1024;
/// Datagram buffers kept for reuse (each at most 2 KiB; larger ones are freed).
const POOL: usize = 1024;
/// The largest data message queued for a node (`too_big` beyond): the largest MTU a node may
/// have (9000) plus WireGuard's header and tag (32) and padding (16). IP-fragmented UDP could
/// carry 64 KiB.
pub const MAX_DATAGRAM: usize = 9000 + 32 + 16;
const RX_BATCH: usize = 128;
const TOKEN_SHARED: Token = Token(0);
const TOKEN_WAKE: Token = Token(1);
const RELAY_BASE: usize = 16;
const TICK: Duration = Duration::from_millis(100);

type Mac1 = Blake2sMac<U16>;

/// Where the gateway's inputs live.
#[derive(Clone, Debug)]
pub struct GatewayPaths {
    pub config: PathBuf,
    pub mesh: PathBuf,
    /// `<key_dir>/<node>/private-key` per terminated node.
    pub key_dir: PathBuf,
}

impl Default for GatewayPaths {
    fn default() -> Self {
        GatewayPaths {
            config: PathBuf::from("/etc/tsk8s/gateway/gateway.json"),
            mesh: PathBuf::from("/etc/tsk8s/mesh"),
            key_dir: PathBuf::from(GATEWAY_KEY_DIR),
        }
    }
}

/// A relayed sidecar, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelaySpec {
    pub name: String,
    pub public_key: [u8; 32],
    pub target: String,
}

/// Everything the gateway needs, parsed and checked.
#[derive(Clone, Debug)]
pub struct LoadedGateway {
    pub cfg: GatewayConfig,
    /// One per terminated node, in `gateway.json` order (identity `i + 1`).
    pub nodes: Vec<Loaded>,
    pub relays: Vec<RelaySpec>,
}

impl LoadedGateway {
    /// What makes the identities: a change here restarts the gateway.
    fn identities(&self) -> Vec<(String, [u8; 32], Ipv4Addr, Ipv6Addr, u16)> {
        self.nodes
            .iter()
            .map(|l| {
                (
                    l.node.name.clone(),
                    *l.public.as_bytes(),
                    l.node.ipv4,
                    l.node.ipv6,
                    l.node.mtu,
                )
            })
            .collect()
    }
}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Parse `gateway.json` text.
pub fn parse_gateway(text: &str, origin: &str) -> Result<GatewayConfig, ConfigError> {
    serde_json::from_str(text)
        .map_err(|e| err(format!("{origin}:{}:{}: {e}", e.line(), e.column())))
}

/// A node name is one path component under the key dir.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// The private key file of node `name`.
pub fn key_path(key_dir: &Path, name: &str) -> PathBuf {
    key_dir.join(name).join(PRIVATE_KEY_FILE)
}

/// Load and cross-check `gateway.json`, the mesh (every shard, `config::load_mesh`) and every
/// node's key.
pub fn load(paths: &GatewayPaths) -> Result<LoadedGateway, ConfigError> {
    let origin = paths.config.display().to_string();
    let mesh_origin = paths.mesh.display().to_string();
    let read = |p: &Path, what: &str| {
        std::fs::read_to_string(p).map_err(|e| err(format!("{what} {}: {e}", p.display())))
    };
    let cfg = parse_gateway(&read(&paths.config, "reading gateway config")?, &origin)?;
    let mesh = config::load_mesh(&paths.mesh)?;
    if cfg.nodes.is_empty() && cfg.relays.is_empty() {
        return Err(err(format!("{origin}: no nodes and no relays")));
    }
    if cfg.nodes.len() > MAX_IDENTITIES {
        return Err(err(format!(
            "{origin}: {} nodes; one gateway terminates at most {MAX_IDENTITIES}",
            cfg.nodes.len()
        )));
    }
    if mesh.peers.len() > MAX_PEERS {
        return Err(err(format!(
            "{mesh_origin}: {} peers; a gateway's node holds at most {MAX_PEERS}",
            mesh.peers.len()
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut keys = std::collections::BTreeSet::new();
    let mut nodes = Vec::new();
    for (i, n) in cfg.nodes.iter().enumerate() {
        let at = format!("{origin}: nodes[{i}] ({})", esc(&n.name));
        if !safe_name(&n.name) {
            return Err(err(format!(
                "{at}: name must be letters, digits, '-', '.', '_'"
            )));
        }
        if !names.insert(n.name.clone()) {
            return Err(err(format!("{at}: duplicate name")));
        }
        config::check_node(n, &at)?;
        let kp = key_path(&paths.key_dir, &n.name);
        let key = config::decode_key(&read(&kp, "reading private key")?).ok_or_else(|| {
            err(format!(
                "{}: not a base64 WireGuard private key (32 bytes)",
                kp.display()
            ))
        })?;
        let loaded = config::assemble(n.clone(), mesh.clone(), key, &at, &mesh_origin)?;
        if !keys.insert(*loaded.public.as_bytes()) {
            return Err(err(format!("{at}: duplicate public_key")));
        }
        nodes.push(loaded);
    }
    let mut relays = Vec::new();
    for (i, r) in cfg.relays.iter().enumerate() {
        let at = format!("{origin}: relays[{i}] ({})", esc(&r.name));
        if !names.insert(r.name.clone()) {
            return Err(err(format!("{at}: duplicate name")));
        }
        let k = config::decode_key(&r.public_key)
            .ok_or_else(|| err(format!("{at}: public_key is not a base64 WireGuard key")))?;
        if !keys.insert(k) {
            return Err(err(format!("{at}: duplicate public_key")));
        }
        if r.target.trim().is_empty() || !r.target.contains(':') {
            return Err(err(format!("{at}: target must be host:port")));
        }
        relays.push(RelaySpec {
            name: r.name.clone(),
            public_key: k,
            target: r.target.clone(),
        });
    }
    Ok(LoadedGateway { cfg, nodes, relays })
}

/// The files whose change triggers a reload.
pub fn watched(paths: &GatewayPaths, names: &[String]) -> Vec<PathBuf> {
    let mut v = vec![paths.config.clone(), paths.mesh.clone()];
    v.extend(names.iter().map(|n| key_path(&paths.key_dir, n)));
    v
}

fn fingerprint(paths: &GatewayPaths, names: &[String]) -> Vec<String> {
    let files = watched(paths, names);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    config::fingerprint_files(&refs)
}

// ---- dispatch ----

/// A WireGuard message header, as far as dispatch needs it (sizes checked like boringtun's
/// parser: 148, 92, 64, at least 32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    Init { sender: u32 },
    Response { sender: u32, receiver: u32 },
    Cookie { receiver: u32 },
    Data { receiver: u32 },
}

fn le32(d: &[u8], at: usize) -> Option<u32> {
    let b = d.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Classify a datagram; None for anything that is not a WireGuard message.
pub fn parse_msg(d: &[u8]) -> Option<Msg> {
    match (le32(d, 0)?, d.len()) {
        (1, 148) => Some(Msg::Init {
            sender: le32(d, 4)?,
        }),
        (2, 92) => Some(Msg::Response {
            sender: le32(d, 4)?,
            receiver: le32(d, 8)?,
        }),
        (3, 64) => Some(Msg::Cookie {
            receiver: le32(d, 4)?,
        }),
        (4, n) if n >= 32 => Some(Msg::Data {
            receiver: le32(d, 4)?,
        }),
        _ => None,
    }
}

/// The MAC1 key of a responder: BLAKE2s-256("mac1----" ‖ public key), as a keyed MAC state.
pub fn mac1_key(public: &[u8; 32]) -> Mac1 {
    let k = Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(public)
        .finalize();
    <Mac1 as KeyInit>::new(&k)
}

/// Does initiation `msg` (148 bytes) carry a MAC1 computed with `key`?
pub fn mac1_matches(key: &Mac1, msg: &[u8]) -> bool {
    let (Some(body), Some(mac)) = (msg.get(..116), msg.get(116..132)) else {
        return false;
    };
    let mut m = key.clone();
    Update::update(&mut m, body);
    let out = m.finalize_fixed();
    // Constant time, like boringtun's own check.
    out.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Where a datagram from the network goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Identity (0-based position in `nodes`).
    Local(usize),
    /// Relayed sidecar (0-based position in `relays`).
    Relay(usize),
    Drop(GwDrop),
}

/// Why the gateway dropped a datagram (`tsk8s_gateway_drops_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GwDrop {
    /// Not a WireGuard message.
    Garbage,
    /// An initiation whose MAC1 matches no identity and no relayed sidecar.
    UnknownKey,
    /// A receiver index no identity and no relayed session owns.
    UnknownIndex,
    /// The identity's queue is full.
    QueueFull,
    /// No relay socket left (`MAX_RELAY_SOCKETS`).
    RelayFull,
    /// The sidecar's target has not resolved (yet).
    RelayUnresolved,
    /// The learned-index table is full.
    IndexFull,
    /// A send failed.
    SendError,
    /// What a relayed sidecar sent is not a WireGuard message.
    RelayGarbage,
    /// A data message larger than any terminated node's MTU allows (IP-fragmented UDP can
    /// carry 64 KiB; never queued for a node).
    TooBig,
}

pub const ALL_GW_DROPS: [GwDrop; 10] = [
    GwDrop::Garbage,
    GwDrop::UnknownKey,
    GwDrop::UnknownIndex,
    GwDrop::QueueFull,
    GwDrop::RelayFull,
    GwDrop::RelayUnresolved,
    GwDrop::IndexFull,
    GwDrop::SendError,
    GwDrop::RelayGarbage,
    GwDrop::TooBig,
];

impl GwDrop {
    pub fn name(self) -> &'static str {
        match self {
            GwDrop::Garbage => "garbage",
            GwDrop::UnknownKey => "unknown_key",
            GwDrop::UnknownIndex => "unknown_index",
            GwDrop::QueueFull => "queue_full",
            GwDrop::RelayFull => "relay_full",
            GwDrop::RelayUnresolved => "relay_unresolved",
            GwDrop::IndexFull => "index_full",
            GwDrop::SendError => "send_error",
            GwDrop::RelayGarbage => "relay_garbage",
            GwDrop::TooBig => "too_big",
        }
    }
}

/// Gateway-level counters.
#[derive(Clone, Debug, Default)]
pub struct GwCounters {
    pub drops: [u64; ALL_GW_DROPS.len()],
    /// Data packets with an unknown index forwarded to relayed sidecars.
    pub relay_probes: u64,
    pub to_nodes: u64,
    pub to_relays: u64,
    pub from_relays: u64,
    pub reloads: u64,
    pub reload_errors: u64,
    pub restarts: u64,
}

impl GwCounters {
    pub fn drop(&mut self, d: GwDrop) {
        if let Some(i) = ALL_GW_DROPS.iter().position(|x| *x == d)
            && let Some(c) = self.drops.get_mut(i)
        {
            *c += 1;
        }
    }

    pub fn dropped(&self, d: GwDrop) -> u64 {
        ALL_GW_DROPS
            .iter()
            .position(|x| *x == d)
            .and_then(|i| self.drops.get(i).copied())
            .unwrap_or(0)
    }
}

/// The dispatch tables: MAC1 keys, identity count, learned sidecar indices.
pub struct Dispatch {
    keys: Vec<(Mac1, Route)>,
    identities: usize,
    /// (device address, sidecar's 24-bit index) → (relay, last use).
    learned: HashMap<(SocketAddr, u32), (usize, Instant)>,
    /// The same by index alone: a device that roamed to a new address still reaches its
    /// sidecar when the index names no identity.
    learned_any: HashMap<u32, usize>,
    max_learned: usize,
}

/// The base of identity `i`'s index range (0-based `i`).
pub fn index_base(i: usize) -> u32 {
    ((i as u32) + 1) << PEER_BITS
}

/// The mask of an identity's index range.
pub const INDEX_MASK: u32 = (1 << PEER_BITS) - 1;

impl Dispatch {
    pub fn new(identities: &[[u8; 32]], relays: &[[u8; 32]], max_learned: usize) -> Dispatch {
        let mut keys: Vec<(Mac1, Route)> = identities
            .iter()
            .enumerate()
            .map(|(i, k)| (mac1_key(k), Route::Local(i)))
            .collect();
        keys.extend(
            relays
                .iter()
                .enumerate()
                .map(|(i, k)| (mac1_key(k), Route::Relay(i))),
        );
        Dispatch {
            keys,
            identities: identities.len(),
            learned: HashMap::new(),
            learned_any: HashMap::new(),
            max_learned,
        }
    }

    /// Where datagram `d` from `src` goes. Bounded work: at most one MAC per key for an
    /// initiation, two table lookups otherwise; nothing allocated.
    pub fn route(&mut self, src: SocketAddr, d: &[u8], now: Instant) -> Route {
        let receiver = match parse_msg(d) {
            None => return Route::Drop(GwDrop::Garbage),
            Some(Msg::Init { .. }) => {
                return self
                    .keys
                    .iter()
                    .find(|(k, _)| mac1_matches(k, d))
                    .map(|(_, r)| *r)
                    .unwrap_or(Route::Drop(GwDrop::UnknownKey));
            }
            Some(Msg::Response { receiver, .. })
            | Some(Msg::Cookie { receiver })
            | Some(Msg::Data { receiver }) => receiver,
        };
        let idx = receiver >> 8;
        if let Some((r, last)) = self.learned.get_mut(&(src, idx)) {
            *last = now;
            return Route::Relay(*r);
        }
        let id = (idx >> PEER_BITS) as usize;
        if id >= 1 && id <= self.identities {
            return Route::Local(id - 1);
        }
        match self.learned_any.get(&idx) {
            Some(r) => Route::Relay(*r),
            None => Route::Drop(GwDrop::UnknownIndex),
        }
    }

    /// Learn from what relayed sidecar `relay` sent to `device`: its sender index (in an
    /// initiation or a response) routes the device's answers back to it.
    pub fn learn(
        &mut self,
        device: SocketAddr,
        relay: usize,
        d: &[u8],
        now: Instant,
    ) -> Result<(), GwDrop> {
        let sender = match parse_msg(d) {
            None => return Err(GwDrop::RelayGarbage),
            Some(Msg::Init { sender }) | Some(Msg::Response { sender, .. }) => sender,
            Some(_) => return Ok(()),
        };
        self.learn_index(device, sender >> 8, relay, now)
    }

    /// Route the device's messages with 24-bit index `idx` to `relay`.
    pub fn learn_index(
        &mut self,
        device: SocketAddr,
        idx: u32,
        relay: usize,
        now: Instant,
    ) -> Result<(), GwDrop> {
        let key = (device, idx);
        if !self.learned.contains_key(&key) && self.learned.len() >= self.max_learned {
            self.expire(now);
            if self.learned.len() >= self.max_learned {
                return Err(GwDrop::IndexFull);
            }
        }
        self.learned.insert(key, (relay, now));
        self.learned_any.insert(idx, relay);
        Ok(())
    }

    /// Are there relayed sidecars?
    pub fn has_relays(&self) -> bool {
        self.keys.len() > self.identities
    }

    /// Forget indices unused for [`RELAY_INDEX_IDLE`].
    pub fn expire(&mut self, now: Instant) {
        self.learned
            .retain(|_, (_, last)| now.duration_since(*last) < RELAY_INDEX_IDLE);
        let live: std::collections::HashSet<u32> = self.learned.keys().map(|k| k.1).collect();
        self.learned_any.retain(|k, _| live.contains(k));
    }

    /// Forget everything learned about relay sidecars (their targets changed).
    pub fn forget_relays(&mut self) {
        self.learned.clear();
        self.learned_any.clear();
    }

    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }
}

// ---- relay sockets (NAT) ----

struct RelaySock {
    sock: UdpSocket,
    device: SocketAddr,
    relay: usize,
    last: Instant,
    /// The sidecar has sent something on it (until then it is closed after
    /// [`RELAY_UNCONFIRMED_IDLE`]).
    confirmed: bool,
    /// Index of a data packet forwarded here as a probe: learned for this sidecar when it
    /// answers with data.
    probe: Option<u32>,
}

/// One UDP socket per (device address, sidecar), bounded, closed when idle.
pub struct RelayNat {
    max: usize,
    idle: Duration,
    socks: Vec<Option<RelaySock>>,
    free: Vec<usize>,
    by_pair: HashMap<(SocketAddr, usize), usize>,
}

impl RelayNat {
    pub fn new(max: usize, idle: Duration) -> RelayNat {
        RelayNat {
            max,
            idle,
            socks: Vec::new(),
            free: Vec::new(),
            by_pair: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_pair.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }

    /// The socket for (device, relay), opened (connected to `target`) if there is none.
    pub fn get_or_open(
        &mut self,
        registry: &mio::Registry,
        device: SocketAddr,
        relay: usize,
        target: SocketAddr,
        now: Instant,
    ) -> Result<usize, GwDrop> {
        if let Some(&slot) = self.by_pair.get(&(device, relay)) {
            if let Some(Some(s)) = self.socks.get_mut(slot) {
                s.last = now;
            }
            return Ok(slot);
        }
        if self.by_pair.len() >= self.max {
            self.expire(registry, now);
            if self.by_pair.len() >= self.max {
                return Err(GwDrop::RelayFull);
            }
        }
        let bind = match target {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        };
        let mut sock = UdpSocket::bind(bind).map_err(|_| GwDrop::SendError)?;
        sock.connect(target).map_err(|_| GwDrop::SendError)?;
        let slot = self.free.pop().unwrap_or(self.socks.len());
        if registry
            .register(&mut sock, Token(RELAY_BASE + slot), Interest::READABLE)
            .is_err()
        {
            self.free.push(slot);
            return Err(GwDrop::SendError);
        }
        let s = RelaySock {
            sock,
            device,
            relay,
            last: now,
            confirmed: false,
            probe: None,
        };
        if slot == self.socks.len() {
            self.socks.push(Some(s));
        } else if let Some(e) = self.socks.get_mut(slot) {
            *e = Some(s);
        }
        self.by_pair.insert((device, relay), slot);
        Ok(slot)
    }

    fn close(&mut self, registry: &mio::Registry, slot: usize) {
        if let Some(e) = self.socks.get_mut(slot)
            && let Some(mut s) = e.take()
        {
            let _ = registry.deregister(&mut s.sock);
            self.by_pair.remove(&(s.device, s.relay));
            self.free.push(slot);
        }
    }

    /// Close sockets idle for longer than the idle time (a short one for sockets the sidecar
    /// never answered on); returns how many.
    pub fn expire(&mut self, registry: &mio::Registry, now: Instant) -> usize {
        let idle = self.idle;
        let short = RELAY_UNCONFIRMED_IDLE.min(idle);
        let stale: Vec<usize> = self
            .socks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| {
                        now.duration_since(s.last) >= if s.confirmed { idle } else { short }
                    })
                    .map(|_| i)
            })
            .collect();
        for &i in &stale {
            self.close(registry, i);
        }
        stale.len()
    }

    /// Close every socket of `relay` (or all, for None).
    pub fn close_relay(&mut self, registry: &mio::Registry, relay: Option<usize>) {
        let slots: Vec<usize> = self
            .socks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| relay.is_none_or(|r| s.relay == r))
                    .map(|_| i)
            })
            .collect();
        for i in slots {
            self.close(registry, i);
        }
    }

    fn send(&mut self, slot: usize, d: &[u8], now: Instant) -> bool {
        match self.socks.get_mut(slot) {
            Some(Some(s)) => {
                s.last = now;
                s.sock.send(d).is_ok()
            }
            _ => false,
        }
    }
}

// ---- identities ----

struct Identity {
    name: String,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    tx: SyncSender<(SocketAddr, Vec<u8>)>,
    waker: Arc<mio::Waker>,
    reload: Arc<AtomicBool>,
    pending: Arc<Mutex<Option<Loaded>>>,
    stats: Arc<Mutex<Snapshot>>,
    thread: Option<JoinHandle<()>>,
    failed: Arc<Mutex<Option<String>>>,
    wake: bool,
}

fn spawn_identity(
    i: usize,
    loaded: Loaded,
    tuning: Tuning,
    sock: std::net::UdpSocket,
    ret: SyncSender<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> Result<Identity, String> {
    let name = loaded.node.name.clone();
    let (tx, rx) = mpsc::sync_channel(FEED_QUEUE);
    let queued: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let q2 = queued.clone();
    let reload = Arc::new(AtomicBool::new(false));
    let pending: Arc<Mutex<Option<Loaded>>> = Arc::new(Mutex::new(None));
    let stats: Arc<Mutex<Snapshot>> = Arc::default();
    let failed: Arc<Mutex<Option<String>>> = Arc::default();
    let (up_tx, up_rx) = mpsc::channel::<Result<Arc<mio::Waker>, String>>();
    let (r2, p2, s2, f2) = (
        reload.clone(),
        pending.clone(),
        stats.clone(),
        failed.clone(),
    );
    let thread = std::thread::Builder::new()
        .name(format!("node-{i}"))
        .spawn(move || {
            let feed = Feed {
                rx,
                ret,
                queued: q2,
            };
            let mut eng =
                match Engine::new_fed(loaded, tuning, sock, feed, index_base(i), INDEX_MASK) {
                    Ok((e, w)) => {
                        let _ = up_tx.send(Ok(w));
                        e
                    }
                    Err(e) => {
                        let _ = up_tx.send(Err(e.to_string()));
                        return;
                    }
                };
            eng.stats_sink = Some(s2);
            let unused = Arc::new(Shared::default());
            loop {
                match eng.run(&stop, &r2, &unused, &mut || false) {
                    Ok(false) => return,
                    Ok(true) => {
                        let new = p2.lock().ok().and_then(|mut p| p.take());
                        if let Some(new) = new {
                            match eng.apply(new) {
                                Ok(()) => eng.net.counters.reloads += 1,
                                Err(e) => {
                                    eng.net.counters.reload_errors += 1;
                                    warn!(error = %e, "applying reloaded config failed");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = f2.lock() {
                            *f = Some(format!("packet loop: {e}"));
                        }
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("node {name}: thread: {e}"))?;
    let waker = match up_rx.recv() {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Err(format!("node {name}: {e}")),
        Err(_) => return Err(format!("node {name}: engine thread ended")),
    };
    Ok(Identity {
        name,
        queued,
        tx,
        waker,
        reload,
        pending,
        stats,
        thread: Some(thread),
        failed,
        wake: false,
    })
}

// ---- the gateway ----

struct Gateway {
    poll: Poll,
    /// The public socket (registered for reading); `base` is what engines get clones of.
    base: std::net::UdpSocket,
    sock: UdpSocket,
    port: u16,
    resolver: Resolver,
    identities: Vec<Identity>,
    gen_stop: Arc<AtomicBool>,
    dispatch: Dispatch,
    nat: RelayNat,
    relays: Vec<RelaySpec>,
    relay_addr: Vec<Option<SocketAddr>>,
    pool_rx: Receiver<Vec<u8>>,
    pool_tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    counters: GwCounters,
    tuning: Tuning,
    /// Relay probes sent this second, per source address and in all.
    probe_sources: HashMap<IpAddr, u32>,
    probes_this_second: u32,
}

enum Outcome {
    Stop,
    Restart(Box<LoadedGateway>),
}

fn bind_shared(port: u16, tuning: &Tuning) -> io::Result<(std::net::UdpSocket, UdpSocket)> {
    let base = engine::bind_wire(port, tuning)?;
    let sock = UdpSocket::from_std(base.try_clone()?);
    Ok((base, sock))
}

impl Gateway {
    fn new(port: u16, tuning: Tuning) -> io::Result<Gateway> {
        let (base, mut sock) = bind_shared(port, &tuning)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut sock, TOKEN_SHARED, Interest::READABLE)?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), TOKEN_WAKE)?);
        let resolver = Resolver::spawn(Arc::new(move || {
            let _ = waker.wake();
        }))?;
        let (pool_tx, pool_rx) = mpsc::sync_channel(POOL);
        Ok(Gateway {
            poll,
            base,
            sock,
            port,
            resolver,
            identities: Vec::new(),
            gen_stop: Arc::new(AtomicBool::new(false)),
            dispatch: Dispatch::new(&[], &[], MAX_RELAY_INDICES),
            nat: RelayNat::new(MAX_RELAY_SOCKETS, RELAY_IDLE),
            relays: Vec::new(),
            relay_addr: Vec::new(),
            pool_rx,
            pool_tx,
            buf: vec![0; crate::wire::BUF],
            counters: GwCounters::default(),
            tuning,
            probe_sources: HashMap::new(),
            probes_this_second: 0,
        })
    }

    /// Start the identities of `g` (after [`Gateway::stop_identities`]).
    fn start(&mut self, g: &LoadedGateway) -> Result<(), String> {
        if g.cfg.listen_port != self.port {
            let _ = self.poll.registry().deregister(&mut self.sock);
            let (base, mut sock) = bind_shared(g.cfg.listen_port, &self.tuning)
                .map_err(|e| format!("binding UDP port {}: {e}", g.cfg.listen_port))?;
            self.poll
                .registry()
                .register(&mut sock, TOKEN_SHARED, Interest::READABLE)
                .map_err(|e| e.to_string())?;
            self.base = base;
            self.sock = sock;
            self.port = g.cfg.listen_port;
        }
        self.gen_stop = Arc::new(AtomicBool::new(false));
        let n = g.nodes.len().max(1);
        let mut tuning = self.tuning;
        // The memory budget is shared fairly: each identity gets an equal part.
        tuning.memory_budget = (self.tuning.memory_budget / n).max(1024 * 1024);
        for (i, l) in g.nodes.iter().enumerate() {
            let sock = self
                .base
                .try_clone()
                .map_err(|e| format!("cloning the UDP socket: {e}"))?;
            let id = spawn_identity(
                i,
                l.clone(),
                tuning,
                sock,
                self.pool_tx.clone(),
                self.gen_stop.clone(),
            )?;
            self.identities.push(id);
        }
        let keys: Vec<[u8; 32]> = g.nodes.iter().map(|l| *l.public.as_bytes()).collect();
        self.set_relays(&keys, &g.relays);
        Ok(())
    }

    fn set_relays(&mut self, identity_keys: &[[u8; 32]], relays: &[RelaySpec]) {
        let rkeys: Vec<[u8; 32]> = relays.iter().map(|r| r.public_key).collect();
        self.dispatch = Dispatch::new(identity_keys, &rkeys, MAX_RELAY_INDICES);
        self.nat.close_relay(self.poll.registry(), None);
        self.relays = relays.to_vec();
        self.relay_addr = relays.iter().map(|r| r.target.parse().ok()).collect();
        let names: Vec<String> = relays
            .iter()
            .map(|r| r.target.clone())
            .filter(|t| resolve::is_name(t))
            .collect();
        self.resolver.want(names);
    }

    fn stop_identities(&mut self) {
        self.gen_stop.store(true, Ordering::Relaxed);
        for id in &mut self.identities {
            let _ = id.waker.wake();
            if let Some(t) = id.thread.take() {
                let _ = t.join();
            }
        }
        self.identities.clear();
    }

    fn take_resolutions(&mut self) {
        while let Some((name, addr)) = self.resolver.try_answer() {
            let Some(addr) = addr else { continue };
            for i in 0..self.relays.len() {
                let is = self.relays.get(i).is_some_and(|r| r.target == name);
                if is && self.relay_addr.get(i).copied().flatten() != Some(addr) {
                    if let Some(a) = self.relay_addr.get_mut(i) {
                        *a = Some(addr);
                    }
                    // The sidecar moved: its relay sockets point at the old address.
                    self.nat.close_relay(self.poll.registry(), Some(i));
                }
            }
        }
    }

    fn read_shared(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            let mut n_read = 0;
            while n_read < RX_BATCH {
                let Ok((n, from)) = self.sock.recv_from(&mut buf) else {
                    break;
                };
                n_read += 1;
                let from = canonical(from);
                if let Some(d) = buf.get(..n) {
                    self.dispatch_one(from, d);
                }
            }
            self.wake_identities();
            if n_read < RX_BATCH {
                break;
            }
        }
        self.buf = buf;
    }

    fn dispatch_one(&mut self, from: SocketAddr, d: &[u8]) {
        let now = Instant::now();
        match self.dispatch.route(from, d, now) {
            Route::Drop(GwDrop::UnknownIndex) if self.dispatch.has_relays() => {
                self.probe_relays(from, d, now);
            }
            Route::Drop(r) => self.counters.drop(r),
            Route::Local(_) if d.len() > MAX_DATAGRAM => {
                self.counters.drop(GwDrop::TooBig);
            }
            Route::Local(i) => {
                let Some(id) = self.identities.get_mut(i) else {
                    self.counters.drop(GwDrop::UnknownIndex);
                    return;
                };
                if id.queued.load(Ordering::Relaxed) + d.len() > FEED_QUEUE_BYTES {
                    self.counters.drop(GwDrop::QueueFull);
                    return;
                }
                let mut v = self.pool_rx.try_recv().unwrap_or_default();
                v.clear();
                v.extend_from_slice(d);
                // Counted before the send: the identity subtracts as soon as it takes it.
                id.queued.fetch_add(d.len(), Ordering::Relaxed);
                match id.tx.try_send((from, v)) {
                    Ok(()) => {
                        self.counters.to_nodes += 1;
                        id.wake = true;
                    }
                    Err(TrySendError::Full((_, v))) | Err(TrySendError::Disconnected((_, v))) => {
                        id.queued.fetch_sub(d.len(), Ordering::Relaxed);
                        self.counters.drop(GwDrop::QueueFull);
                        let _ = self.pool_tx.try_send(v);
                    }
                }
            }
            Route::Relay(r) => {
                let Some(target) = self.relay_addr.get(r).copied().flatten() else {
                    self.counters.drop(GwDrop::RelayUnresolved);
                    return;
                };
                match self
                    .nat
                    .get_or_open(self.poll.registry(), from, r, target, now)
                {
                    Ok(slot) => {
                        if self.nat.send(slot, d, now) {
                            self.counters.to_relays += 1;
                        } else {
                            self.counters.drop(GwDrop::SendError);
                        }
                    }
                    Err(e) => self.counters.drop(e),
                }
            }
        }
    }

    /// A data packet whose receiver index nobody knows: after a gateway restart (or when a
    /// device roamed to a new address) that is most likely a session with a relayed sidecar
    /// (identities' indices are in their own ranges). Forward it to every relayed sidecar
    /// through the (device, sidecar) relay socket; the one that owns the session decrypts it,
    /// takes the relay socket as the device's new address and answers with data there — then
    /// the index is learned for that sidecar. The others drop it. Limited to
    /// [`RELAY_PROBES_PER_SOURCE`] per source address and [`RELAY_PROBES_PER_SECOND`] in all
    /// (each relayed copy counts), and sockets opened this way close after
    /// [`RELAY_UNCONFIRMED_IDLE`] unless the sidecar answers.
    fn probe_relays(&mut self, from: SocketAddr, d: &[u8], now: Instant) {
        let Some(Msg::Data { receiver }) = parse_msg(d) else {
            self.counters.drop(GwDrop::UnknownIndex);
            return;
        };
        let sent = self.probe_sources.get(&from.ip()).copied().unwrap_or(0);
        let tracked = self.probe_sources.contains_key(&from.ip());
        if sent >= RELAY_PROBES_PER_SOURCE
            || self.probes_this_second >= RELAY_PROBES_PER_SECOND
            || (!tracked && self.probe_sources.len() >= 4096)
        {
            self.counters.drop(GwDrop::UnknownIndex);
            return;
        }
        self.probe_sources.insert(from.ip(), sent + 1);
        for r in 0..self.relays.len() {
            if self.probes_this_second >= RELAY_PROBES_PER_SECOND {
                break;
            }
            let Some(target) = self.relay_addr.get(r).copied().flatten() else {
                continue;
            };
            let Ok(slot) = self
                .nat
                .get_or_open(self.poll.registry(), from, r, target, now)
            else {
                self.counters.drop(GwDrop::RelayFull);
                break;
            };
            if let Some(Some(s)) = self.nat.socks.get_mut(slot) {
                s.probe = Some(receiver >> 8);
            }
            self.probes_this_second += 1;
            self.counters.relay_probes += 1;
            if !self.nat.send(slot, d, now) {
                self.counters.drop(GwDrop::SendError);
            }
        }
    }

    fn wake_identities(&mut self) {
        for id in &mut self.identities {
            if id.wake {
                id.wake = false;
                let _ = id.waker.wake();
            }
        }
    }

    /// What a relayed sidecar sent on relay socket `slot`: back out of the public socket to
    /// the device that socket stands for.
    fn read_relay(&mut self, slot: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..RX_BATCH {
            let Some(Some(s)) = self.nat.socks.get_mut(slot) else {
                break;
            };
            let Ok(n) = s.sock.recv(&mut buf) else {
                break;
            };
            let now = Instant::now();
            s.last = now;
            s.confirmed = true;
            let (device, relay) = (s.device, s.relay);
            let Some(d) = buf.get(..n) else { break };
            if let Some(idx) = s.probe
                && matches!(parse_msg(d), Some(Msg::Data { .. }))
            {
                // The sidecar took the probed packet: its index is this sidecar's.
                s.probe = None;
                if let Err(e) = self.dispatch.learn_index(device, idx, relay, now) {
                    self.counters.drop(e);
                }
            }
            if let Err(e) = self.dispatch.learn(device, relay, d, now) {
                self.counters.drop(e);
                if e == GwDrop::RelayGarbage {
                    continue;
                }
            }
            match self.sock.send_to(d, device) {
                Ok(_) => self.counters.from_relays += 1,
                Err(_) => self.counters.drop(GwDrop::SendError),
            }
        }
        self.buf = buf;
    }

    fn every_second(&mut self) {
        let now = Instant::now();
        self.nat.expire(self.poll.registry(), now);
        self.dispatch.expire(now);
        self.probe_sources.clear();
        self.probes_this_second = 0;
    }

    /// The first identity that failed, if any.
    fn failure(&self) -> Option<String> {
        self.identities.iter().find_map(|id| {
            let f = id.failed.lock().ok().and_then(|f| f.clone());
            match f {
                Some(e) => Some(format!("node {}: {e}", id.name)),
                None if id.thread.as_ref().is_some_and(|t| t.is_finished()) => {
                    Some(format!("node {}: engine thread ended", id.name))
                }
                None => None,
            }
        })
    }

    fn render_metrics(&self) -> String {
        let snaps: Vec<(String, Snapshot)> = self
            .identities
            .iter()
            .map(|id| {
                let s = id.stats.lock().map(|s| s.clone()).unwrap_or_default();
                (id.name.clone(), s)
            })
            .collect();
        let nodes: Vec<metrics::NodeMetrics<'_>> = snaps
            .iter()
            .map(|(n, (c, p))| (n.as_str(), c, p.as_slice()))
            .collect();
        let mut o = metrics::render_nodes(&nodes);
        let n = self.identities.len();
        render_gateway(&mut o, &self.counters, self.nat.len(), &self.dispatch, n);
        o
    }

    fn run(
        &mut self,
        g: &mut LoadedGateway,
        stop: &AtomicBool,
        hup: &AtomicBool,
        shared: &Shared,
        paths: &GatewayPaths,
    ) -> Result<Outcome, String> {
        let mut events = Events::with_capacity(1024);
        let names = |g: &LoadedGateway| -> Vec<String> {
            g.nodes.iter().map(|l| l.node.name.clone()).collect()
        };
        let mut fp = fingerprint(paths, &names(g));
        let mut last_second = Instant::now();
        if let Ok(mut m) = shared.metrics.lock() {
            *m = self.render_metrics();
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Outcome::Stop);
            }
            let mut reload = hup.swap(false, Ordering::Relaxed);
            match self.poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("gateway loop: {e}")),
            }
            self.take_resolutions();
            for ev in events.iter() {
                let t = ev.token().0;
                if ev.token() == TOKEN_SHARED {
                    self.read_shared();
                } else if t >= RELAY_BASE {
                    self.read_relay(t - RELAY_BASE);
                }
            }
            if last_second.elapsed() < Duration::from_secs(1) && !reload {
                continue;
            }
            last_second = Instant::now();
            self.every_second();
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let f = fingerprint(paths, &names(g));
            if f != fp {
                fp = f;
                reload = true;
            }
            if reload {
                match load(paths) {
                    Err(e) => {
                        self.counters.reload_errors += 1;
                        warn!(error = %e, "gateway config reload failed; keeping the running config");
                    }
                    Ok(new)
                        if new.identities() != g.identities()
                            || new.cfg.listen_port != g.cfg.listen_port =>
                    {
                        info!("gateway nodes or port changed: restarting the identities");
                        return Ok(Outcome::Restart(Box::new(new)));
                    }
                    Ok(new) => {
                        for (id, l) in self.identities.iter().zip(&new.nodes) {
                            if let Ok(mut p) = id.pending.lock() {
                                *p = Some(l.clone());
                            }
                            id.reload.store(true, Ordering::Relaxed);
                            let _ = id.waker.wake();
                        }
                        if new.relays != self.relays {
                            let keys: Vec<[u8; 32]> =
                                new.nodes.iter().map(|l| *l.public.as_bytes()).collect();
                            self.set_relays(&keys, &new.relays);
                        }
                        self.counters.reloads += 1;
                        info!(
                            nodes = new.nodes.len(),
                            relays = new.relays.len(),
                            "gateway config reloaded"
                        );
                        *g = new;
                        fp = fingerprint(paths, &names(g));
                    }
                }
            }
            if let Ok(mut m) = shared.metrics.lock() {
                *m = self.render_metrics();
            }
        }
    }
}

fn render_gateway(
    o: &mut String,
    c: &GwCounters,
    relay_sockets: usize,
    d: &Dispatch,
    identities: usize,
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        o,
        "# HELP tsk8s_gateway_drops_total Datagrams the gateway dropped before any node saw them, by reason.\n# TYPE tsk8s_gateway_drops_total counter"
    );
    for r in ALL_GW_DROPS {
        let _ = writeln!(
            o,
            "tsk8s_gateway_drops_total{{reason=\"{}\"}} {}",
            r.name(),
            c.dropped(r)
        );
    }
    let _ = writeln!(
        o,
        "# HELP tsk8s_gateway_datagrams_total Datagrams dispatched by the gateway.\n# TYPE tsk8s_gateway_datagrams_total counter"
    );
    for (dir, v) in [
        ("to_node", c.to_nodes),
        ("to_relay", c.to_relays),
        ("from_relay", c.from_relays),
        ("relay_probe", c.relay_probes),
    ] {
        let _ = writeln!(
            o,
            "tsk8s_gateway_datagrams_total{{direction=\"{dir}\"}} {v}"
        );
    }
    let scalars: [(&str, &str, &str, u64); 5] = [
        (
            "tsk8s_gateway_relay_sockets",
            "gauge",
            "Open relay sockets (device address, sidecar).",
            relay_sockets as u64,
        ),
        (
            "tsk8s_gateway_relay_indices",
            "gauge",
            "Learned sidecar session indices.",
            d.learned_len() as u64,
        ),
        (
            "tsk8s_gateway_nodes",
            "gauge",
            "Nodes terminated by this gateway.",
            identities as u64,
        ),
        (
            "tsk8s_gateway_reloads_total",
            "counter",
            "Gateway config reloads applied in place.",
            c.reloads,
        ),
        (
            "tsk8s_gateway_reload_errors_total",
            "counter",
            "Gateway config reloads that failed.",
            c.reload_errors,
        ),
    ];
    for (name, kind, help, v) in scalars {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}

/// Run the gateway until SIGTERM/SIGINT. Errors are for the caller to print (exit 2).
pub fn run(paths: GatewayPaths) -> Result<(), String> {
    let (stop, hup) = crate::signal_flags()?;
    let mut g = load(&paths).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared::default());
    let admin_addr = admin::spawn(&g.cfg.admin_listen, shared.clone())
        .map_err(|e| format!("admin listener {}: {e}", g.cfg.admin_listen))?;
    info!(admin = %admin_addr, "admin server listening");
    let mut gw = Gateway::new(g.cfg.listen_port, Tuning::default())
        .map_err(|e| format!("binding UDP port {}: {e}", g.cfg.listen_port))?;
    loop {
        if let Err(e) = gw.start(&g) {
            gw.stop_identities();
            return Err(e);
        }
        shared.ready.store(true, Ordering::Relaxed);
        info!(
            udp = gw.port,
            nodes = g.nodes.len(),
            relays = g.relays.len(),
            "gateway up"
        );
        let outcome = gw.run(&mut g, &stop, &hup, &shared, &paths);
        shared.ready.store(false, Ordering::Relaxed);
        gw.stop_identities();
        match outcome {
            Ok(Outcome::Stop) => {
                shared.stop.store(true, Ordering::Relaxed);
                info!("shutting down");
                return Ok(());
            }
            Ok(Outcome::Restart(new)) => {
                gw.counters.restarts += 1;
                g = *new;
            }
            Err(e) => {
                error!(error = %e, "gateway failed");
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    fn public(i: u8) -> [u8; 32] {
        *PublicKey::from(&StaticSecret::from([i; 32])).as_bytes()
    }

    /// A real initiation from `from` (private key byte) to responder `to`.
    fn initiation(from: u8, to: u8, index: u32) -> Vec<u8> {
        let mut t = Tunn::new(
            StaticSecret::from([from; 32]),
            PublicKey::from(public(to)),
            None,
            None,
            index,
            None,
        );
        let mut buf = vec![0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), p)
    }

    #[test]
    fn mac1_dispatch_picks_the_responder() {
        let ids = [public(1), public(2), public(3)];
        let relays = [public(4), public(5)];
        let mut d = Dispatch::new(&ids, &relays, 16);
        let now = Instant::now();
        for (to, want) in [
            (1, Route::Local(0)),
            (2, Route::Local(1)),
            (3, Route::Local(2)),
            (4, Route::Relay(0)),
            (5, Route::Relay(1)),
        ] {
            let m = initiation(9, to, 7);
            assert_eq!(m.len(), 148);
            assert_eq!(d.route(addr(1), &m, now), want, "to {to}");
        }
        // A responder nobody here is.
        let m = initiation(9, 6, 7);
        assert_eq!(d.route(addr(1), &m, now), Route::Drop(GwDrop::UnknownKey));
        // One flipped bit in the MAC1 (or in the covered bytes): nobody.
        let mut m = initiation(9, 2, 7);
        m[120] ^= 1;
        assert_eq!(d.route(addr(1), &m, now), Route::Drop(GwDrop::UnknownKey));
        let mut m = initiation(9, 2, 7);
        m[50] ^= 1;
        assert_eq!(d.route(addr(1), &m, now), Route::Drop(GwDrop::UnknownKey));
        // Same MAC as boringtun's own check (its rate limiter accepts exactly these).
        let rl = boringtun::noise::rate_limiter::RateLimiter::new(&PublicKey::from(public(2)), 100);
        let m = initiation(9, 2, 7);
        let mut dst = [0u8; 256];
        assert!(rl.verify_packet(None, &m, &mut dst).is_ok());
    }

    /// The fuzz seed's initiation was built with Python's hashlib (an independent BLAKE2s):
    /// it routes to the identity whose key its MAC1 names.
    #[test]
    fn mac1_matches_an_independent_implementation() {
        let seed = include_bytes!("../../fuzz/seeds/gateway/initiation-to-identity-1");
        let mut d = Dispatch::new(&[public(1), public(2)], &[public(3)], 16);
        assert_eq!(d.route(addr(1), seed, Instant::now()), Route::Local(0));
    }

    #[test]
    fn index_routing_by_identity_range() {
        let ids = [public(1), public(2), public(3)];
        let mut d = Dispatch::new(&ids, &[], 16);
        let now = Instant::now();
        let data = |receiver: u32| {
            let mut v = vec![0u8; 32];
            v[0] = 4;
            v[4..8].copy_from_slice(&receiver.to_le_bytes());
            v
        };
        for i in 0..3 {
            for n in [1u32, 2, INDEX_MASK] {
                let idx24 = index_base(i) | n;
                for session in [0u32, 5, 255] {
                    let r = (idx24 << 8) | session;
                    assert_eq!(d.route(addr(1), &data(r), now), Route::Local(i));
                }
            }
        }
        // Identity 0 (no identity) and identities past the last are unknown.
        assert_eq!(
            d.route(addr(1), &data(5 << 8), now),
            Route::Drop(GwDrop::UnknownIndex)
        );
        assert_eq!(
            d.route(addr(1), &data((index_base(3) | 1) << 8), now),
            Route::Drop(GwDrop::UnknownIndex)
        );
        // Response and cookie by receiver too.
        let mut resp = vec![0u8; 92];
        resp[0] = 2;
        resp[8..12].copy_from_slice(&((index_base(1) | 3) << 8).to_le_bytes());
        assert_eq!(d.route(addr(1), &resp, now), Route::Local(1));
        let mut cookie = vec![0u8; 64];
        cookie[0] = 3;
        cookie[4..8].copy_from_slice(&((index_base(2) | 3) << 8).to_le_bytes());
        assert_eq!(d.route(addr(1), &cookie, now), Route::Local(2));
    }

    /// The engine's own peers get indices inside its identity's range.
    #[test]
    fn net_allocates_inside_the_range() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut net = crate::wire::Net::new(
            mio::net::UdpSocket::from_std(sock),
            StaticSecret::from([1; 32]),
            1280,
        );
        net.set_index_range(index_base(4), INDEX_MASK);
        let specs: Vec<crate::config::PeerSpec> = (2..40u8)
            .map(|i| crate::config::PeerSpec {
                name: format!("p{i}"),
                public_key: public(i),
                allowed_ips: vec![],
                endpoint: None,
                keepalive: None,
            })
            .collect();
        net.set_peers(&specs);
        let mut seen = std::collections::HashSet::new();
        for p in net.peers.iter().flatten() {
            assert_eq!(p.index >> PEER_BITS, 5, "identity 4 is id 5");
            assert!(p.index & INDEX_MASK != 0);
            assert!(seen.insert(p.index));
        }
        assert_eq!(seen.len(), 38);
    }

    #[test]
    fn learned_sidecar_indices_route_and_expire() {
        let ids = [public(1)];
        let relays = [public(4), public(5)];
        let mut d = Dispatch::new(&ids, &relays, 3);
        let now = Instant::now();
        // Sidecar 0 initiates to device A with sender index (idx24 = 77 in identity 1's range).
        let a = addr(1000);
        let b = addr(2000);
        let idx24 = index_base(0) | 77;
        let mut init = initiation(4, 9, idx24);
        assert_eq!(d.learn(a, 0, &init, now), Ok(()));
        // Sidecar 1 responds to device A with the same index (indices of different sidecars
        // may collide only across devices): here another device.
        let mut resp = vec![0u8; 92];
        resp[0] = 2;
        resp[4..8].copy_from_slice(&((idx24 << 8) | 1).to_le_bytes());
        assert_eq!(d.learn(b, 1, &resp, now), Ok(()));
        let data = |receiver: u32| {
            let mut v = vec![0u8; 48];
            v[0] = 4;
            v[4..8].copy_from_slice(&receiver.to_le_bytes());
            v
        };
        // The learned entry wins over the identity whose range the index is in, per device.
        assert_eq!(d.route(a, &data(idx24 << 8), now), Route::Relay(0));
        assert_eq!(d.route(b, &data((idx24 << 8) | 1), now), Route::Relay(1));
        // Another device with that index: the identity.
        assert_eq!(d.route(addr(3000), &data(idx24 << 8), now), Route::Local(0));
        // An index outside every identity range falls back to the index alone (a roamed
        // device).
        let far: u32 = (900 << PEER_BITS) | 4;
        init[4..8].copy_from_slice(&(far << 8).to_le_bytes());
        assert_eq!(d.learn(a, 1, &init, now), Ok(()));
        assert_eq!(d.route(addr(4000), &data(far << 8), now), Route::Relay(1));
        // Bounded: a fourth entry is refused while the others are fresh.
        init[4..8].copy_from_slice(&(12345u32 << 8).to_le_bytes());
        assert_eq!(d.learn(a, 0, &init, now), Err(GwDrop::IndexFull));
        // Data and cookies teach nothing; garbage is refused.
        assert_eq!(d.learn(a, 0, &data(1), now), Ok(()));
        assert_eq!(d.learn(a, 0, b"junk", now), Err(GwDrop::RelayGarbage));
        // Expiry frees them.
        let later = now + RELAY_INDEX_IDLE + Duration::from_secs(1);
        assert_eq!(d.learn(a, 0, &init, later), Ok(()));
        assert_eq!(d.learned_len(), 1);
        assert_eq!(
            d.route(b, &data((idx24 << 8) | 1), later),
            Route::Local(0),
            "forgotten"
        );
    }

    /// Cost of dispatching one initiation by MAC1 (the last key matches: the worst case) and
    /// one data packet by index. A measurement, not a test: run with
    /// `cargo test --release -p tsk8s-runtime --lib -- --ignored --nocapture dispatch_cost`.
    #[test]
    #[ignore]
    fn dispatch_cost() {
        for n in [1usize, 4, 16, 64, 200] {
            let ids: Vec<[u8; 32]> = (0..n).map(|i| public((i % 250) as u8 + 1)).collect();
            let mut d = Dispatch::new(&ids, &[], 16);
            let m = initiation(255, ((n - 1) % 250) as u8 + 1, 7);
            let now = Instant::now();
            let rounds = 20_000 / n.max(1) + 200;
            let t = Instant::now();
            for _ in 0..rounds {
                assert_ne!(d.route(addr(1), &m, now), Route::Drop(GwDrop::UnknownKey));
            }
            let init_ns = t.elapsed().as_nanos() as f64 / rounds as f64;
            let mut data = vec![0u8; 1312];
            data[0] = 4;
            data[4..8].copy_from_slice(&((index_base(n - 1) | 5) << 8).to_le_bytes());
            let t = Instant::now();
            for _ in 0..1_000_000 {
                assert_eq!(d.route(addr(1), &data, now), Route::Local(n - 1));
            }
            let data_ns = t.elapsed().as_nanos() as f64 / 1e6;
            eprintln!(
                "{n:>4} keys: initiation (last key) {:>8.0} ns, data packet {data_ns:>5.1} ns",
                init_ns
            );
        }
    }

    #[test]
    fn junk_datagrams_are_dropped() {
        let ids = [public(1)];
        let mut d = Dispatch::new(&ids, &[public(4)], 16);
        let now = Instant::now();
        let good = initiation(9, 1, 3);
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![1],
            vec![1, 0, 0],
            b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            vec![0u8; 148],
            vec![5, 0, 0, 0, 0, 0, 0, 0],
            good[..147].to_vec(),
            [good.as_slice(), &[0]].concat(),
            vec![4, 0, 0, 0, 1, 2, 3, 4],
            vec![2; 92],
            vec![0xff; 1500],
        ];
        // Reserved bytes must be zero.
        let mut r = good.clone();
        r[1] = 1;
        cases.push(r);
        for c in &cases {
            assert_eq!(
                d.route(addr(1), c, now),
                Route::Drop(GwDrop::Garbage),
                "{c:?}"
            );
        }
        // Well-formed but nobody's.
        let mut u = vec![0u8; 148];
        u[0] = 1;
        assert_eq!(d.route(addr(1), &u, now), Route::Drop(GwDrop::UnknownKey));
        assert_eq!(d.route(addr(1), &good, now), Route::Local(0));
    }

    #[test]
    fn relay_sockets_are_bounded_and_expire() {
        let poll = Poll::new().expect("poll");
        let target: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut nat = RelayNat::new(3, Duration::from_secs(180));
        let now = Instant::now();
        let a = nat
            .get_or_open(poll.registry(), addr(1), 0, target, now)
            .expect("a");
        assert_eq!(
            nat.get_or_open(poll.registry(), addr(1), 0, target, now),
            Ok(a),
            "same pair, same socket"
        );
        let b = nat
            .get_or_open(poll.registry(), addr(1), 1, target, now)
            .expect("b");
        assert_ne!(a, b, "another sidecar: another socket");
        nat.get_or_open(poll.registry(), addr(2), 0, target, now)
            .expect("c");
        assert_eq!(nat.len(), 3);
        assert_eq!(
            nat.get_or_open(poll.registry(), addr(3), 0, target, now),
            Err(GwDrop::RelayFull)
        );
        // Sockets the sidecar answered on live RELAY_IDLE, the others RELAY_UNCONFIRMED_IDLE.
        for s in nat.socks.iter_mut().flatten() {
            s.confirmed = true;
        }
        assert_eq!(nat.expire(poll.registry(), now + RELAY_UNCONFIRMED_IDLE), 0);
        // Use keeps one alive; the idle ones go.
        let later = now + Duration::from_secs(120);
        assert!(nat.send(a, b"x", later));
        let much_later = now + Duration::from_secs(181);
        assert_eq!(nat.expire(poll.registry(), much_later), 2);
        assert_eq!(nat.len(), 1);
        let d = nat
            .get_or_open(poll.registry(), addr(3), 0, target, much_later)
            .expect("room again");
        assert_ne!(d, a);
        assert_eq!(
            nat.expire(poll.registry(), much_later + RELAY_UNCONFIRMED_IDLE),
            1,
            "unconfirmed: closed after the short idle"
        );
        assert_eq!(nat.len(), 1);
        nat.close_relay(poll.registry(), Some(0));
        assert!(nat.is_empty());
    }

    #[test]
    fn gateway_config_errors_are_located() {
        let dir = std::env::temp_dir().join(format!("tsk8s-gw-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let paths = GatewayPaths {
            config: dir.join("gateway.json"),
            mesh: dir.join("mesh-0.jsonl"),
            key_dir: dir.join("keys"),
        };
        std::fs::write(&paths.mesh, "{\"mesh\":\"x\",\"shard\":0,\"shards\":1}\n").expect("mesh");
        std::fs::write(&paths.config, "{\n  \"listen_port\": 1,\n  \"bogus\": 2\n}").expect("cfg");
        let e = load(&paths).expect_err("unknown field").0;
        assert!(e.contains("gateway.json:3:"), "{e}");
        std::fs::write(
            &paths.config,
            r#"{"listen_port":1,"admin_listen":"127.0.0.1:0","nodes":[{"name":"../x","public_key":"","ipv4":"100.64.0.1","ipv6":"fd7a::1","listen_port":1,"admin_listen":"","mode":{"kind":"sidecar","ports":[]}}]}"#,
        )
        .expect("cfg");
        let e = load(&paths).expect_err("bad name").0;
        assert!(e.contains("nodes[0]"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
