//! Loading and validating the mounted config files (`node.json`, the mesh's shards
//! `mesh-<n>.jsonl`, private key). The one loader of the mesh for every runtime mode.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tsk8s_policy::runtime_config::{
    MeshConfig, Mode, NodeConfig, merge_shards, mesh_shard_index, parse_shard,
};

/// Where the three inputs live.
#[derive(Clone, Debug)]
pub struct Paths {
    pub node: PathBuf,
    /// The mesh: a directory of shards `mesh-<n>.jsonl` (the projected volume), or one shard.
    pub mesh: PathBuf,
    pub private_key: PathBuf,
}

/// A config error with the file it came from.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Everything the data plane needs, parsed and checked.
#[derive(Clone)]
pub struct Loaded {
    pub node: NodeConfig,
    pub mesh: MeshConfig,
    pub secret: StaticSecret,
    pub public: PublicKey,
    /// Peers (without ourselves) with decoded keys.
    pub peers: Vec<PeerSpec>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Loaded")
            .field("node", &self.node.name)
            .field("peers", &self.peers.len())
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<IpNet>,
    pub endpoint: Option<String>,
    pub keepalive: Option<u16>,
}

/// Decode a base64 WireGuard key (32 bytes).
pub fn decode_key(s: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

/// Encode a 32-byte key as base64.
pub fn encode_key(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Public key for a base64 private key (the `pubkey` subcommand).
pub fn public_from_private(private_b64: &str) -> Option<String> {
    let k = decode_key(private_b64)?;
    let secret = StaticSecret::from(k);
    Some(encode_key(PublicKey::from(&secret).as_bytes()))
}

fn read(path: &Path, what: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| err(format!("{what} {}: {e}", path.display())))
}

/// Parse `node.json` text.
pub fn parse_node(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
    let node: NodeConfig = serde_json::from_str(text)
        .map_err(|e| err(format!("{origin}:{}:{}: {e}", e.line(), e.column())))?;
    check_node(&node, origin)?;
    Ok(node)
}

/// The checks of a node config beyond its JSON shape.
pub fn check_node(node: &NodeConfig, origin: &str) -> Result<(), ConfigError> {
    if node.mtu < 576 || node.mtu > 9000 {
        return Err(err(format!(
            "{origin}: mtu {} out of range 576..=9000",
            node.mtu
        )));
    }
    match &node.mode {
        Mode::Proxy { ports, .. } | Mode::Sidecar { ports } | Mode::Egress { ports, .. } => {
            if ports.is_empty() {
                return Err(err(format!("{origin}: mode has no ports")));
            }
        }
        Mode::SubnetRouter { .. } => {}
    }
    Ok(())
}

/// Parse the text of a mesh held in one shard file (`shards` 1).
pub fn parse_mesh(text: &str, origin: &str) -> Result<MeshConfig, ConfigError> {
    let shard = parse_shard(text, origin).map_err(err)?;
    merge_shards(vec![(origin.to_string(), shard)]).map_err(|e| err(format!("{origin}: {e}")))
}

/// At most this many shard files are read from a mesh directory.
const MAX_SHARDS: usize = 4096;

/// The shard files of a mesh directory (`mesh-<n>.jsonl`, by number), or the one file `path`.
fn shard_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path)
        .map_err(|e| err(format!("reading mesh dir {}: {e}", path.display())))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| err(format!("reading mesh dir {}: {e}", path.display())))?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(mesh_shard_index) {
            files.push((n, entry.path()));
            if files.len() > MAX_SHARDS {
                return Err(err(format!(
                    "{}: more than {MAX_SHARDS} mesh shards",
                    path.display()
                )));
            }
        }
    }
    if files.is_empty() {
        return Err(err(format!(
            "{}: no mesh shard (mesh-<n>.jsonl)",
            path.display()
        )));
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Read and merge a mesh: every shard of the directory `path` (or the one file `path`).
pub fn load_mesh(path: &Path) -> Result<MeshConfig, ConfigError> {
    let mut shards = Vec::new();
    for f in shard_files(path)? {
        let origin = f.display().to_string();
        let text = read(&f, "reading mesh shard")?;
        shards.push((origin.clone(), parse_shard(&text, &origin).map_err(err)?));
    }
    merge_shards(shards).map_err(|e| err(format!("{}: {e}", path.display())))
}

/// Load and cross-check all inputs.
pub fn load(paths: &Paths) -> Result<Loaded, ConfigError> {
    let node_origin = paths.node.display().to_string();
    let mesh_origin = paths.mesh.display().to_string();
    let node = parse_node(&read(&paths.node, "reading node config")?, &node_origin)?;
    let mesh = load_mesh(&paths.mesh)?;
    let key_text = read(&paths.private_key, "reading private key")?;
    let key = decode_key(&key_text).ok_or_else(|| {
        err(format!(
            "{}: not a base64 WireGuard private key (32 bytes)",
            paths.private_key.display()
        ))
    })?;
    assemble(node, mesh, key, &node_origin, &mesh_origin)
}

/// Check the parts against each other.
pub fn assemble(
    node: NodeConfig,
    mesh: MeshConfig,
    key: [u8; 32],
    node_origin: &str,
    mesh_origin: &str,
) -> Result<Loaded, ConfigError> {
    let secret = StaticSecret::from(key);
    let public = PublicKey::from(&secret);
    match decode_key(&node.public_key) {
        Some(k) if k == *public.as_bytes() => {}
        Some(_) => {
            return Err(err(format!(
                "{node_origin}: public_key does not match the private key"
            )));
        }
        None => {
            return Err(err(format!(
                "{node_origin}: public_key is not a base64 WireGuard key"
            )));
        }
    }
    let mut peers = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in &mesh.peers {
        let k = decode_key(&p.public_key).ok_or_else(|| {
            err(format!(
                "{mesh_origin}: peer {:?}: public_key is not a base64 WireGuard key",
                p.name
            ))
        })?;
        if k == *public.as_bytes() {
            continue;
        }
        if !seen.insert(k) {
            return Err(err(format!(
                "{mesh_origin}: peer {:?}: duplicate public_key",
                p.name
            )));
        }
        peers.push(PeerSpec {
            name: p.name.clone(),
            public_key: k,
            allowed_ips: p.allowed_ips.iter().map(|n| n.trunc()).collect(),
            endpoint: p.endpoint.clone(),
            keepalive: p.persistent_keepalive.filter(|k| *k > 0),
        });
    }
    Ok(Loaded {
        node,
        mesh,
        secret,
        public,
        peers,
    })
}

/// Resolve `host:port` (IP literal or name). Name resolution blocks; callers use it off the
/// packet path.
pub fn resolve_endpoint(s: &str) -> Option<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    s.to_socket_addrs().ok()?.next()
}

/// The addresses and routes this node terminates.
pub fn own_nets(node: &NodeConfig) -> Vec<IpNet> {
    let mut v = vec![
        IpNet::from(IpAddr::V4(node.ipv4)),
        IpNet::from(IpAddr::V6(node.ipv6)),
    ];
    if let Mode::SubnetRouter { routes } = &node.mode {
        v.extend(routes.iter().map(|r| r.trunc()));
    }
    v
}

/// A fingerprint of the mounted files, to notice Kubernetes' `..data` swap (or edits): for each
/// input its volume's `..data` target and its files' inode, size and mtime (for the mesh
/// directory, every shard file's).
pub fn fingerprint(paths: &Paths) -> Vec<String> {
    fingerprint_files(&[&paths.node, &paths.mesh, &paths.private_key])
}

/// [`fingerprint`] of any list of mounted files or mesh directories (a gateway watches its
/// config, the mesh and every node's key).
pub fn fingerprint_files(files: &[&Path]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let stat = |s: &mut String, p: &Path| {
        if let Ok(md) = std::fs::metadata(p) {
            s.push_str(&format!(
                "|{}|{}|{}|{}",
                md.ino(),
                md.size(),
                md.mtime(),
                md.mtime_nsec()
            ));
        }
    };
    let mut out = Vec::new();
    for p in files {
        let mut s = String::new();
        let is_dir = p.is_dir();
        let volume = if is_dir { Some(*p) } else { p.parent() };
        if let Some(dir) = volume
            && let Ok(t) = std::fs::read_link(dir.join("..data"))
        {
            s.push_str(&t.display().to_string());
        }
        if is_dir {
            match shard_files(p) {
                Ok(files) => {
                    for f in files {
                        s.push_str(&format!("|{}", f.display()));
                        stat(&mut s, &f);
                    }
                }
                Err(e) => s.push_str(&e.0),
            }
        } else {
            stat(&mut s, p);
        }
        out.push(s);
    }
    out
}
