//! The contract between the compiler (`tsk8s build`) and the data plane (`tsk8s-runtime`).
//!
//! `build` writes, per cluster, one shared mesh ([`MeshConfig`]) and, per node, one small
//! `node.json` (ConfigMap `tsk8s-<node>`). The private key is a separate file mounted from a
//! Secret; it never appears here. Sizes grow with nodes + rules, never nodes × rules: the mesh
//! carries the cluster's packet filter once (rules whose destinations are in this cluster), and
//! each runtime keeps the rules whose `DstPorts` cover its own addresses.
//!
//! ## The mesh on disk: JSON Lines shards
//!
//! A mesh is written as one or more shard files `mesh-<n>.jsonl` ([`shard_mesh`]), each in its
//! own ConfigMap (`tsk8s-mesh-<n>`; a sidecar's `tsk8s-<node>-mesh-<n>`), all mounted through
//! one projected volume into one directory, so the kubelet swaps them together. The runtime
//! reads every shard of that directory and merges them ([`parse_shard`], [`merge_shards`]).
//! Every line is one JSON object:
//!
//! ```text
//! {"mesh":"acme.example","shard":0,"shards":2}            first line of every shard
//! {"peer":"grafana","key":"<base64>","ips":["100.64.0.1","fd7a:115c:a1e0::4000:1"],"endpoint":"wg.acme.example:41641","keepalive":25}
//! {"rule":{"SrcIPs":["100.64.0.2"],"DstPorts":[{"IP":"100.64.0.1","Ports":{"First":80,"Last":80}}]}}
//! {"dns":"loki.acme.example","ipv4":"100.64.0.7","ipv6":"fd7a:115c:a1e0::4000:7"}
//! ```
//!
//! Every peer's name is answered by the node's DNS server: `<peer>.<domain>` with the first IPv4
//! and the first IPv6 host address of its `ips` ([`peer_record`]; a node's own addresses come
//! before its routes). So a `dns` line is written only for a name that is not a peer's (the
//! cluster's own nodes) or whose record differs from the one its peer implies; on dense
//! policies this halves a mesh's lines. A runtime older than this rule answers only the names
//! of `dns` lines.
//!
//! One peer per line (a host address is written without `/32` or `/128`), so a pull request's
//! diff shows one changed line per changed peer. A line goes to the shard that a stable hash of
//! its key picks: a peer's name, a DNS record's host label (so a peer and its record share a
//! shard), a rule's own text. The hash is FNV-1a (64 bit) finished by splitmix64 and mapped onto
//! the shard count by jump consistent hashing (Lamping & Veach), so going from `n` to `n + 1`
//! shards moves only the lines that land in the new last shard, and adding a peer changes the
//! one shard it lands in. The shard count is derived from the size: the fewest shards (at least
//! the total size over the budget) in which every shard fits the budget. It is not recorded; a
//! mesh that shrinks below a multiple of the budget loses its last shard (its lines move back,
//! nothing else moves).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::filter::FilterRule;

/// File name of the per-node config inside its mounted ConfigMap.
pub const NODE_FILE: &str = "node.json";
/// Key of the private key inside the node's Secret (base64 WireGuard key, one line).
pub const PRIVATE_KEY_FILE: &str = "private-key";
/// Default tunnel MTU.
pub const DEFAULT_MTU: u16 = 1280;

/// `node.json`: who this node is and what it forwards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct NodeConfig {
    /// Tailnet name of the node (one DNS label), e.g. `grafana`.
    pub name: String,
    /// WireGuard public key of this node (base64); the runtime checks that its private key matches.
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// UDP port the runtime binds (inside the pod; the Service maps the published port onto it).
    pub listen_port: u16,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Address of the local HTTP server for `/healthz` and `/metrics`.
    pub admin_listen: String,
    pub mode: Mode,
}

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

/// What the node does with traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Mode {
    /// Tailnet `node:listen` → `target_host:target` (a Service DNS name or ClusterIP).
    Proxy {
        target_host: String,
        ports: Vec<PortMap>,
    },
    /// Tailnet `node:listen` → `127.0.0.1:target` inside the pod.
    Sidecar { ports: Vec<PortMap> },
    /// Any destination inside `routes` → a kernel socket to that destination.
    SubnetRouter { routes: Vec<IpNet> },
    /// Kernel listener on `0.0.0.0:listen` → tailnet `target_ip:target` through the tunnel.
    Egress {
        target_ip: IpAddr,
        ports: Vec<PortMap>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMap {
    pub protocol: Protocol,
    pub listen: u16,
    pub target: u16,
}

/// The mesh: everything a cluster's runtimes share (on disk as JSON Lines shards; see the
/// module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct MeshConfig {
    /// DNS suffix, e.g. `acme.example`; names are `<name>.<domain>`.
    pub domain: String,
    /// Every peer any node of this cluster may exchange packets with (devices and other nodes,
    /// including this cluster's own nodes). A runtime skips the entry with its own public key.
    pub peers: Vec<Peer>,
    /// Packet filter (Tailscale `FilterRule` shape) for all destinations in this cluster.
    pub filter: Vec<FilterRule>,
    /// Names answered by the node's DNS server.
    pub dns: Vec<DnsRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Peer {
    pub name: String,
    /// base64 WireGuard public key.
    pub public_key: String,
    /// Inner source addresses accepted from this peer and destinations routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// `host:port`; absent for roaming devices (learned from their handshakes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// Fully qualified, without the trailing dot: `grafana.acme.example`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// File name of the per-cluster gateway config inside its mounted ConfigMap (`publish="gateway"`).
pub const GATEWAY_FILE: &str = "gateway.json";
/// Directory (inside the gateway pod) under which each terminated node's Secret is mounted as
/// `<dir>/<node>/private-key` (one projected volume).
pub const GATEWAY_KEY_DIR: &str = "/var/run/secrets/tsk8s/nodes";

/// `gateway.json`: one runtime process that owns a cluster's single public WireGuard UDP port.
///
/// It terminates WireGuard for every node in `nodes` (each keeps its own key, addresses, filter
/// and lock entry; the cluster's mesh shards are shared) and relays the datagrams of every sidecar
/// in `relays`, unchanged, to that sidecar's pod. A handshake initiation is dispatched by its
/// MAC1 (keyed by the responder's public key, so no DH per identity); every later message by its
/// receiver index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct GatewayConfig {
    /// The one UDP port the gateway binds (the cluster's LoadBalancer Service targets it).
    pub listen_port: u16,
    /// Address of the local HTTP server for `/healthz` and `/metrics` (all identities).
    pub admin_listen: String,
    /// Nodes terminated in this process. Their `listen_port` is `listen_port` above and their
    /// private key is `<GATEWAY_KEY_DIR>/<name>/private-key`.
    pub nodes: Vec<NodeConfig>,
    /// Sidecars whose WireGuard datagrams the gateway relays to their pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<Relay>,
}

/// A sidecar node behind the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Relay {
    /// Tailnet name of the sidecar node.
    pub name: String,
    /// Its WireGuard public key (base64): initiations whose MAC1 is keyed by it go to `target`.
    pub public_key: String,
    /// `host:port` of the sidecar's WireGuard socket inside the cluster (its per-pod Service).
    pub target: String,
}

// ---------------------------------------------------------------------------------------------
// The mesh as JSON Lines shards.

/// Budget of one shard's Kubernetes object file (bytes): under `build`'s 200 KiB warning, with
/// room for the ConfigMap's metadata.
pub const MESH_SHARD_BYTES: usize = 192 * 1024;

/// What one line costs in the ConfigMap's YAML besides its own bytes: a literal block's
/// four-space indent and the newline.
const LINE_OVERHEAD: usize = 5;

/// Bytes of the ConfigMap object around the shard's lines (metadata, `data:` key), reserved
/// from the budget.
const OBJECT_OVERHEAD: usize = 1024;

/// File name of shard `n` inside the mesh directory.
pub fn mesh_shard_file(n: u32) -> String {
    format!("mesh-{n}.jsonl")
}

/// The shard number of a file name `mesh-<n>.jsonl` (canonical decimal), if it is one.
pub fn mesh_shard_index(file_name: &str) -> Option<u32> {
    let n = file_name.strip_prefix("mesh-")?.strip_suffix(".jsonl")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse().ok()
}

/// An address or network as written in `ips`: a host route is its bare address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Addr(IpNet);

impl Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            s.collect_str(&self.0.addr())
        } else {
            s.collect_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        if let Ok(n) = s.parse::<IpNet>() {
            return Ok(Addr(n));
        }
        s.parse::<IpAddr>()
            .map(|a| Addr(IpNet::from(a)))
            .map_err(|_| serde::de::Error::custom(format!("not an IP address or network: {s:?}")))
    }
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    mesh: &'a str,
    shard: u32,
    shards: u32,
}

#[derive(Serialize)]
struct PeerOut<'a> {
    peer: &'a str,
    key: &'a str,
    ips: Vec<Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive: Option<u16>,
}

#[derive(Serialize)]
struct RuleOut<'a> {
    rule: &'a FilterRule,
}

#[derive(Serialize)]
struct DnsOut<'a> {
    dns: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<Ipv6Addr>,
}

/// Any line, as read: exactly one of `mesh`, `peer`, `rule`, `dns` says what it is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnyLine {
    mesh: Option<String>,
    shard: Option<u32>,
    shards: Option<u32>,
    peer: Option<String>,
    key: Option<String>,
    ips: Option<Vec<Addr>>,
    endpoint: Option<String>,
    keepalive: Option<u16>,
    rule: Option<FilterRule>,
    dns: Option<String>,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
}

fn to_line<T: Serialize>(v: &T) -> String {
    // Plain structs with string keys: serialization cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

/// The header line of shard `shard` of `shards`.
pub fn header_line(domain: &str, shard: u32, shards: u32) -> String {
    to_line(&HeaderOut {
        mesh: domain,
        shard,
        shards,
    })
}

/// One peer's line.
pub fn peer_line(p: &Peer) -> String {
    to_line(&PeerOut {
        peer: &p.name,
        key: &p.public_key,
        ips: p.allowed_ips.iter().copied().map(Addr).collect(),
        endpoint: p.endpoint.as_deref(),
        keepalive: p.persistent_keepalive,
    })
}

/// One DNS record's line.
pub fn dns_line(d: &DnsRecord) -> String {
    to_line(&DnsOut {
        dns: &d.name,
        ipv4: d.ipv4,
        ipv6: d.ipv6,
    })
}

/// A rule's lines: one, or (when its line would be longer than `cap` bytes) the rule split by
/// its sources and destinations into rules that together allow exactly the same packets (a
/// filter is a union of its rules), each line about `cap` bytes or less.
pub fn rule_lines(r: &FilterRule, cap: usize) -> Vec<String> {
    let whole = to_line(&RuleOut { rule: r });
    if whole.len() <= cap {
        return vec![whole];
    }
    let empty = FilterRule {
        src_ips: Default::default(),
        dst_ports: Vec::new(),
        ip_proto: r.ip_proto.clone(),
        cap_grant: r.cap_grant.clone(),
    };
    let base = to_line(&RuleOut { rule: &empty }).len();
    let room = cap.saturating_sub(base).max(64);
    // Capability grants name their destinations inside the grant: split sources only.
    let src_room = if r.cap_grant.is_empty() {
        room / 2
    } else {
        room
    };
    let chunks = |lens: Vec<usize>, room: usize| -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let (mut start, mut used) = (0, 0);
        for (i, len) in lens.iter().enumerate() {
            if i > start && used + len > room {
                out.push(start..i);
                start = i;
                used = 0;
            }
            used += len;
        }
        out.push(start..lens.len());
        out
    };
    let src = chunks(r.src_ips.iter().map(|s| s.len() + 3).collect(), src_room);
    let dst = if r.cap_grant.is_empty() {
        chunks(
            r.dst_ports.iter().map(|d| d.ip.len() + 36).collect(),
            room - src_room,
        )
    } else {
        // A capability rule's destinations stay whole: one chunk of all of them.
        std::iter::once(0..r.dst_ports.len()).collect()
    };
    let mut out = Vec::with_capacity(src.len() * dst.len());
    for s in &src {
        for d in &dst {
            let part = FilterRule {
                src_ips: r.src_ips.get(s.clone()).unwrap_or_default().into(),
                dst_ports: r.dst_ports.get(d.clone()).unwrap_or_default().to_vec(),
                ip_proto: r.ip_proto.clone(),
                cap_grant: r.cap_grant.clone(),
            };
            out.push(to_line(&RuleOut { rule: &part }));
        }
    }
    out
}

/// FNV-1a (64 bit) of `key`, finished by splitmix64: the stable hash that places a line.
pub fn shard_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Jump consistent hash (Lamping & Veach, 2014): the bucket in `0..buckets` of `key`. From `n`
/// to `n + 1` buckets only the keys that land in bucket `n` move.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets.max(1)) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// The shard key of a DNS record: its host label (the peer's name), so a peer and its record
/// share a shard.
fn dns_key<'a>(name: &'a str, domain: &str) -> &'a str {
    name.strip_suffix(domain)
        .and_then(|n| n.strip_suffix('.'))
        .unwrap_or(name)
}

/// Write `mesh` as JSON Lines shards, each one's ConfigMap object file within about `budget`
/// bytes ([`MESH_SHARD_BYTES`] for `build`): shard `n`'s text is element `n`. Deterministic: the
/// same mesh gives the same bytes.
pub fn shard_mesh(mesh: &MeshConfig, budget: usize) -> Vec<String> {
    shard_mesh_with(mesh, budget, &|_| None)
}

/// [`shard_mesh`], taking a peer's line from `known` where it has it: a caller that lists the
/// same peers in many meshes writes each peer's line once. `known(p)`, when `Some`, must be
/// exactly [`peer_line`]`(p)`.
pub fn shard_mesh_with<'k>(
    mesh: &MeshConfig,
    budget: usize,
    known: &dyn Fn(&Peer) -> Option<&'k str>,
) -> Vec<String> {
    use std::borrow::Cow;
    let room = budget.saturating_sub(OBJECT_OVERHEAD).max(512);
    // Lines: (hash of the key, text).
    let mut lines: Vec<(u64, Cow<'k, str>)> =
        Vec::with_capacity(mesh.peers.len() + mesh.filter.len() + mesh.dns.len());
    for p in &mesh.peers {
        let line = match known(p) {
            Some(l) => Cow::Borrowed(l),
            None => Cow::Owned(peer_line(p)),
        };
        lines.push((shard_hash(&p.name), line));
    }
    for r in &mesh.filter {
        for l in rule_lines(r, (room / 4).max(1024)) {
            lines.push((shard_hash(&l), Cow::Owned(l)));
        }
    }
    for d in &mesh.dns {
        let label = dns_key(&d.name, &mesh.domain);
        let implied = mesh
            .peers
            .binary_search_by(|p| p.name.as_str().cmp(label))
            .ok()
            .and_then(|i| mesh.peers.get(i))
            .is_some_and(|p| implies(p, d, &mesh.domain));
        // A peer's own record is implied by its line (see the module doc): not written.
        if !implied {
            lines.push((shard_hash(label), Cow::Owned(dns_line(d))));
        }
    }
    let cost = |l: &str| l.len() + LINE_OVERHEAD;
    let total: usize = lines.iter().map(|(_, l)| cost(l)).sum();
    let max_shards = u32::try_from(lines.len().max(1)).unwrap_or(u32::MAX);
    let mut n = u32::try_from(total.div_ceil(room).max(1)).unwrap_or(u32::MAX);
    let mut place: Vec<u32>;
    let mut sizes: Vec<(usize, usize)>;
    loop {
        let header = cost(&header_line(&mesh.domain, n - 1, n));
        place = lines.iter().map(|(h, _)| jump_hash(*h, n)).collect();
        // (bytes, lines) per shard; a shard of one line fits whatever its size.
        sizes = vec![(header, 0usize); n as usize];
        for ((_, l), &s) in lines.iter().zip(&place) {
            if let Some(x) = sizes.get_mut(s as usize) {
                x.0 += cost(l);
                x.1 += 1;
            }
        }
        if sizes.iter().all(|&(b, l)| b <= room || l <= 1) || n >= max_shards {
            break;
        }
        n += 1;
    }
    let mut out: Vec<String> = (0..n)
        .map(|i| {
            let size = sizes.get(i as usize).map_or(0, |x| x.0);
            let mut s = String::with_capacity(size);
            s.push_str(&header_line(&mesh.domain, i, n));
            s.push('\n');
            s
        })
        .collect();
    for ((_, l), s) in lines.iter().zip(place) {
        if let Some(text) = out.get_mut(s as usize) {
            text.push_str(l);
            text.push('\n');
        }
    }
    out
}

/// One shard, read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard {
    pub domain: String,
    pub shard: u32,
    pub shards: u32,
    pub peers: Vec<Peer>,
    pub filter: Vec<FilterRule>,
    pub dns: Vec<DnsRecord>,
}

/// Parse one shard's text; errors are `origin:line:col: message`.
pub fn parse_shard(text: &str, origin: &str) -> Result<Shard, String> {
    let mut shard: Option<Shard> = None;
    for (i, line) in text.lines().enumerate() {
        let at = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let l: AnyLine =
            serde_json::from_str(line).map_err(|e| format!("{origin}:{at}:{}: {e}", e.column()))?;
        let kinds = [
            l.mesh.is_some(),
            l.peer.is_some(),
            l.rule.is_some(),
            l.dns.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!(
                "{origin}:{at}: a line has exactly one of \"mesh\", \"peer\", \"rule\", \"dns\""
            ));
        }
        let stray = |fields: &[(bool, &str)]| -> Result<(), String> {
            match fields.iter().find(|(set, _)| *set) {
                Some((_, name)) => Err(format!("{origin}:{at}: unexpected field {name:?} here")),
                None => Ok(()),
            }
        };
        if let Some(domain) = l.mesh {
            stray(&[
                (l.key.is_some(), "key"),
                (l.ips.is_some(), "ips"),
                (l.endpoint.is_some(), "endpoint"),
                (l.keepalive.is_some(), "keepalive"),
                (l.ipv4.is_some(), "ipv4"),
                (l.ipv6.is_some(), "ipv6"),
            ])?;
            if shard.is_some() {
                return Err(format!("{origin}:{at}: a second \"mesh\" header"));
            }
            let (Some(n), Some(of)) = (l.shard, l.shards) else {
                return Err(format!(
                    "{origin}:{at}: the header needs \"shard\" and \"shards\""
                ));
            };
            if n >= of {
                return Err(format!("{origin}:{at}: shard {n} is not below shards {of}"));
            }
            shard = Some(Shard {
                domain,
                shard: n,
                shards: of,
                ..Default::default()
            });
            continue;
        }
        let Some(s) = shard.as_mut() else {
            return Err(format!(
                "{origin}:{at}: the first line must be the \"mesh\" header"
            ));
        };
        stray(&[(l.shard.is_some(), "shard"), (l.shards.is_some(), "shards")])?;
        if let Some(name) = l.peer {
            stray(&[(l.ipv4.is_some(), "ipv4"), (l.ipv6.is_some(), "ipv6")])?;
            let Some(key) = l.key else {
                return Err(format!("{origin}:{at}: peer {name:?} has no \"key\""));
            };
            s.peers.push(Peer {
                name,
                public_key: key,
                allowed_ips: l.ips.unwrap_or_default().into_iter().map(|a| a.0).collect(),
                endpoint: l.endpoint,
                persistent_keepalive: l.keepalive,
            });
        } else if let Some(rule) = l.rule {
            stray(&[
                (l.key.is_some(), "key"),
                (l.ips.is_some(), "ips"),
                (l.endpoint.is_some(), "endpoint"),
                (l.keepalive.is_some(), "keepalive"),
                (l.ipv4.is_some(), "ipv4"),
                (l.ipv6.is_some(), "ipv6"),
            ])?;
            s.filter.push(rule);
        } else if let Some(name) = l.dns {
            stray(&[
                (l.key.is_some(), "key"),
                (l.ips.is_some(), "ips"),
                (l.endpoint.is_some(), "endpoint"),
                (l.keepalive.is_some(), "keepalive"),
            ])?;
            s.dns.push(DnsRecord {
                name,
                ipv4: l.ipv4,
                ipv6: l.ipv6,
            });
        }
    }
    shard.ok_or_else(|| format!("{origin}: empty: no \"mesh\" header"))
}

/// Merge the shards of one mesh (each with the origin its errors name): one domain and one
/// shard count in every header, every shard `0..shards` exactly once. Peers and DNS records
/// come out sorted by name, rules in shard order.
pub fn merge_shards(shards: Vec<(String, Shard)>) -> Result<MeshConfig, String> {
    let Some((first_origin, first)) = shards.first() else {
        return Err("no mesh shard (mesh-<n>.jsonl)".to_string());
    };
    let (domain, count) = (first.domain.clone(), first.shards);
    let mut seen = vec![false; usize::try_from(count).unwrap_or(0)];
    for (origin, s) in &shards {
        if s.domain != domain || s.shards != count {
            return Err(format!(
                "{origin}: shard of mesh {:?} ({} shards), but {first_origin} is of {domain:?} ({count} shards)",
                s.domain, s.shards
            ));
        }
        match seen.get_mut(s.shard as usize) {
            Some(x) if !*x => *x = true,
            _ => return Err(format!("{origin}: shard {} appears twice", s.shard)),
        }
    }
    if let Some(missing) = seen.iter().position(|x| !x) {
        return Err(format!(
            "shard {missing} of {count} is missing ({})",
            mesh_shard_file(u32::try_from(missing).unwrap_or(0))
        ));
    }
    let mut shards = shards;
    shards.sort_by_key(|(_, s)| s.shard);
    let mut mesh = MeshConfig {
        domain,
        ..Default::default()
    };
    for (_, s) in shards {
        mesh.peers.extend(s.peers);
        mesh.filter.extend(s.filter);
        mesh.dns.extend(s.dns);
    }
    mesh.peers.sort_by(|a, b| a.name.cmp(&b.name));
    mesh.dns.sort_by(|a, b| a.name.cmp(&b.name));
    // Every peer's name is answered (module doc); an explicit `dns` line for it wins.
    let implied: Vec<DnsRecord> = mesh
        .peers
        .iter()
        .filter_map(|p| peer_record(p, &mesh.domain))
        .filter(|r| {
            mesh.dns
                .binary_search_by(|d| d.name.as_str().cmp(&r.name))
                .is_err()
        })
        .collect();
    if !implied.is_empty() {
        mesh.dns.extend(implied);
        mesh.dns.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(mesh)
}

/// The DNS record a peer's line implies: `<peer>.<domain>` with the first IPv4 and the first
/// IPv6 host address of its `ips` (its own addresses come first; routes follow). None when it
/// has neither.
pub fn peer_record(p: &Peer, domain: &str) -> Option<DnsRecord> {
    let (ipv4, ipv6) = record_addrs(p);
    (ipv4.is_some() || ipv6.is_some()).then(|| DnsRecord {
        name: format!("{}.{domain}", p.name),
        ipv4,
        ipv6,
    })
}

/// The addresses of [`peer_record`]: the first IPv4 and the first IPv6 host address of `ips`.
fn record_addrs(p: &Peer) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let host = |v4: bool| {
        p.allowed_ips
            .iter()
            .filter(|n| n.prefix_len() == n.max_prefix_len())
            .map(|n| n.addr())
            .find(|a| a.is_ipv4() == v4)
    };
    let ipv4 = match host(true) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let ipv6 = match host(false) {
        Some(IpAddr::V6(a)) => Some(a),
        _ => None,
    };
    (ipv4, ipv6)
}

/// Is `d` exactly [`peer_record`]`(p, domain)`? Asked of every record of a mesh, without
/// building the record.
fn implies(p: &Peer, d: &DnsRecord, domain: &str) -> bool {
    let named = d
        .name
        .strip_prefix(p.name.as_str())
        .and_then(|rest| rest.strip_prefix('.'))
        == Some(domain);
    named && (d.ipv4.is_some() || d.ipv6.is_some()) && record_addrs(p) == (d.ipv4, d.ipv6)
}

#[cfg(test)]
mod shard_tests {
    use super::*;
    use crate::filter::{NetPortRange, PortRange};

    fn mesh(peers: usize) -> MeshConfig {
        let mut m = MeshConfig {
            domain: "acme.example".into(),
            ..Default::default()
        };
        for i in 0..peers {
            let v4 = Ipv4Addr::from(0x6440_0000u32 + i as u32);
            m.peers.push(Peer {
                name: format!("n{i}"),
                public_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
                allowed_ips: vec![IpNet::from(IpAddr::V4(v4)), "10.1.0.0/24".parse().unwrap()],
                endpoint: (i % 2 == 0).then(|| format!("n{i}.wg.acme.example:41641")),
                persistent_keepalive: (i % 3 == 0).then_some(25),
            });
            m.dns.push(DnsRecord {
                name: format!("n{i}.acme.example"),
                ipv4: Some(v4),
                ipv6: None,
            });
        }
        m.peers.sort_by(|a, b| a.name.cmp(&b.name));
        m.dns.sort_by(|a, b| a.name.cmp(&b.name));
        m.filter.push(FilterRule {
            src_ips: (0..peers)
                .map(|i| format!("100.64.{}.{}", i / 256, i % 256))
                .collect(),
            dst_ports: vec![NetPortRange {
                ip: "100.64.0.1".into(),
                ports: PortRange {
                    first: 80,
                    last: 80,
                },
            }],
            ..Default::default()
        });
        m
    }

    fn read(shards: &[String]) -> MeshConfig {
        let parsed = shards
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let o = mesh_shard_file(i as u32);
                (o.clone(), parse_shard(t, &o).unwrap())
            })
            .collect();
        merge_shards(parsed).unwrap()
    }

    #[test]
    fn one_shard_round_trips() {
        let m = mesh(3);
        let s = shard_mesh(&m, MESH_SHARD_BYTES);
        assert_eq!(s.len(), 1);
        assert!(s[0].starts_with("{\"mesh\":\"acme.example\",\"shard\":0,\"shards\":1}\n"));
        assert!(s[0].contains(
            "{\"peer\":\"n0\",\"key\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\",\"ips\":[\"100.64.0.0\",\"10.1.0.0/24\"],\"endpoint\":\"n0.wg.acme.example:41641\",\"keepalive\":25}\n"
        ), "{}", s[0]);
        assert_eq!(read(&s), m);
    }

    #[test]
    fn peer_records_are_implied_not_written() {
        let mut m = mesh(3);
        // The cluster's own node (not a peer) and a peer whose record is not the implied one.
        m.dns.push(DnsRecord {
            name: "own.acme.example".into(),
            ipv4: Some(Ipv4Addr::new(100, 64, 9, 9)),
            ipv6: None,
        });
        m.dns[1].ipv6 = Some("fd7a:115c:a1e0::1".parse().unwrap());
        m.dns.sort_by(|a, b| a.name.cmp(&b.name));
        let s = shard_mesh(&m, MESH_SHARD_BYTES);
        let dns: Vec<&str> = s[0].lines().filter(|l| l.starts_with("{\"dns\"")).collect();
        assert_eq!(
            dns,
            [
                "{\"dns\":\"n1.acme.example\",\"ipv4\":\"100.64.0.1\",\"ipv6\":\"fd7a:115c:a1e0::1\"}",
                "{\"dns\":\"own.acme.example\",\"ipv4\":\"100.64.9.9\"}",
            ]
        );
        assert_eq!(read(&s), m);
        // A peer with no address implies nothing.
        let p = Peer {
            name: "x".into(),
            public_key: String::new(),
            allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
            endpoint: None,
            persistent_keepalive: None,
        };
        assert_eq!(peer_record(&p, "acme.example"), None);
    }

    /// `implies` says what comparing with `peer_record` says, for names and addresses that
    /// almost match.
    #[test]
    fn implies_is_peer_record_equality() {
        let peer = |name: &str, ips: &[&str]| Peer {
            name: name.into(),
            public_key: String::new(),
            allowed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            endpoint: None,
            persistent_keepalive: None,
        };
        let rec = |name: &str, v4: Option<&str>, v6: Option<&str>| DnsRecord {
            name: name.into(),
            ipv4: v4.map(|a| a.parse().unwrap()),
            ipv6: v6.map(|a| a.parse().unwrap()),
        };
        let peers = [
            peer("n1", &["100.64.0.1/32", "fd7a:115c:a1e0::1/128"]),
            peer("n1", &["10.0.0.0/8", "100.64.0.1/32"]),
            peer("n1", &["10.0.0.0/8"]),
            peer("n10", &["100.64.0.1/32"]),
        ];
        let v6 = Some("fd7a:115c:a1e0::1");
        let recs = [
            rec("n1.acme.example", Some("100.64.0.1"), v6),
            rec("n1.acme.example", Some("100.64.0.1"), None),
            rec("n1.acme.example", None, None),
            rec("n1.acme.example", Some("100.64.0.2"), v6),
            rec("n1xacme.example", Some("100.64.0.1"), v6),
            rec("n1.acme.exampl", Some("100.64.0.1"), v6),
            rec("n10.acme.example", Some("100.64.0.1"), None),
            rec("n1", Some("100.64.0.1"), v6),
        ];
        for p in &peers {
            for d in &recs {
                assert_eq!(
                    implies(p, d, "acme.example"),
                    peer_record(p, "acme.example").as_ref() == Some(d),
                    "{p:?} {d:?}"
                );
            }
        }
    }

    #[test]
    fn many_shards_fit_and_round_trip() {
        let m = mesh(2000);
        let s = shard_mesh(&m, 16 * 1024);
        assert!(s.len() > 10, "{}", s.len());
        for t in &s {
            let cost: usize = t.lines().map(|l| l.len() + LINE_OVERHEAD).sum();
            assert!(cost <= 16 * 1024 - OBJECT_OVERHEAD, "{cost}");
        }
        let back = read(&s);
        assert_eq!(back.peers, m.peers);
        assert_eq!(back.dns, m.dns);
        // The long rule was split into rules with the same sources and destinations.
        let mut src: Vec<String> = back
            .filter
            .iter()
            .flat_map(|r| r.src_ips.iter().cloned())
            .collect();
        src.sort();
        let mut want = m.filter[0].src_ips.to_vec();
        want.sort();
        assert_eq!(src, want);
        assert!(
            back.filter
                .iter()
                .all(|r| r.dst_ports == m.filter[0].dst_ports)
        );
        // Same input, same bytes.
        assert_eq!(shard_mesh(&m, 16 * 1024), s);
    }

    #[test]
    fn adding_a_peer_changes_one_shard() {
        let mut m = mesh(500);
        m.filter.clear();
        let before = shard_mesh(&m, 32 * 1024);
        m.peers.push(Peer {
            name: "zz-new".into(),
            public_key: "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=".into(),
            allowed_ips: vec!["100.100.0.1/32".parse().unwrap()],
            endpoint: None,
            persistent_keepalive: None,
        });
        let after = shard_mesh(&m, 32 * 1024);
        assert_eq!(before.len(), after.len());
        let changed = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert_eq!(changed, 1);
    }

    #[test]
    fn growing_by_one_shard_moves_lines_only_into_it() {
        for key in ["a", "peer-17", "x.y"] {
            let h = shard_hash(key);
            for n in 1..40u32 {
                let (a, b) = (jump_hash(h, n), jump_hash(h, n + 1));
                assert!(a < n && (a == b || b == n), "{key} {n}: {a} → {b}");
            }
        }
    }

    #[test]
    fn bad_shards_are_refused_with_their_line() {
        let e = parse_shard("{\"peer\":\"a\",\"key\":\"k\"}\n", "m").unwrap_err();
        assert!(e.starts_with("m:1: the first line"), "{e}");
        let e = parse_shard(
            "{\"mesh\":\"d\",\"shard\":0,\"shards\":1}\n{\"peer\":\"a\",\"dns\":\"b\"}\n",
            "m",
        )
        .unwrap_err();
        assert!(e.starts_with("m:2: a line has exactly one"), "{e}");
        let e = parse_shard("{\"mesh\":\"d\",\"shard\":0,\"shards\":1}\n{\"peer\":\"a\",\"key\":\"k\",\"ips\":[\"nope\"]}\n", "m")
            .unwrap_err();
        assert!(e.starts_with("m:2:"), "{e}");
        let e = parse_shard(
            "{\"mesh\":\"d\",\"shard\":0,\"shards\":1}\n{\"dns\":\"a\",\"bogus\":1}\n",
            "m",
        )
        .unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let one = |n, of| Shard {
            domain: "d".into(),
            shard: n,
            shards: of,
            ..Default::default()
        };
        let e = merge_shards(vec![("a".into(), one(0, 2))]).unwrap_err();
        assert!(e.contains("shard 1 of 2 is missing"), "{e}");
        let e = merge_shards(vec![("a".into(), one(0, 2)), ("b".into(), one(0, 2))]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
        assert_eq!(mesh_shard_index("mesh-12.jsonl"), Some(12));
        assert_eq!(mesh_shard_index("mesh-012.jsonl"), None);
        assert_eq!(mesh_shard_index("mesh.json"), None);
    }
}
