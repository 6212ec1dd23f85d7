//! Device configs: a wg-quick file per device (no private key: `PostUp` loads it from the
//! device's own key file) and a hosts-file snippet with the tailnet names it may use.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::net::{AnyTraffic, Member, Net, Reach, reachable_prefixes};
use super::net::{KEEPALIVE_SECONDS, hostname_of};
use crate::lockfile::Lock;
use crate::model::{Device, ExposureKind, Tailnet};

pub struct DeviceFiles {
    pub conf: String,
    pub hosts: String,
    /// Routes of two peers where one prefix holds the other: WireGuard sends each packet to
    /// the longest match, so this works, but the wider peer never sees the nested range.
    pub nested: Vec<Overlap>,
}

/// Two peers of one device with overlapping AllowedIPs. The same prefix on two peers cannot
/// be routed (WireGuard gives it to one of them); a nested prefix goes by longest match.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub device: String,
    pub first: (String, IpNet),
    pub second: (String, IpNet),
}

/// The AllowedIPs given to a device's peers so far, indexed so that the prefixes overlapping a
/// new one (holding it or held by it) are found without a scan: a device with thousands of
/// peers would otherwise cost peers² comparisons.
#[derive(Default)]
struct Taken {
    /// (peer id, prefix), in the order given.
    list: Vec<(String, IpNet)>,
    /// (IPv6?, network, prefix length) → positions in `list`.
    by_net: std::collections::BTreeMap<(bool, u128, u8), Vec<usize>>,
    /// Prefix lengths present, per family.
    lens: [std::collections::BTreeSet<u8>; 2],
}

fn net_key(n: &IpNet) -> (bool, u128, u8) {
    match n.trunc() {
        IpNet::V4(v) => (false, u128::from(u32::from(v.network())), v.prefix_len()),
        IpNet::V6(v) => (true, u128::from(v.network()), v.prefix_len()),
    }
}

impl Taken {
    fn push(&mut self, id: &str, net: IpNet) {
        let k = net_key(&net);
        self.by_net.entry(k).or_default().push(self.list.len());
        self.lens[usize::from(k.0)].insert(k.2);
        self.list.push((id.to_string(), net));
    }

    /// Entries holding `a` or held by it, in the order they were given.
    fn overlapping(&self, a: &IpNet) -> Vec<&(String, IpNet)> {
        let (v6, net, len) = net_key(a);
        let bits: u8 = if v6 { 128 } else { 32 };
        let mut at: Vec<usize> = Vec::new();
        // Holding `a` (or equal): the prefix of `a` at each length present.
        for &l in self.lens[usize::from(v6)].range(..=len) {
            let shift = u32::from(bits - l);
            let masked = if shift >= 128 {
                0
            } else {
                (net >> shift) << shift
            };
            if let Some(v) = self.by_net.get(&(v6, masked, l)) {
                at.extend(v);
            }
        }
        // Held by `a`: longer prefixes whose network lies inside it.
        if len < bits {
            let size = u32::from(bits - len);
            let last = if size >= 128 {
                u128::MAX
            } else {
                net | ((1u128 << size) - 1)
            };
            for (_, v) in self.by_net.range((v6, net, len + 1)..=(v6, last, u8::MAX)) {
                at.extend(v);
            }
        }
        at.sort_unstable();
        at.iter().filter_map(|&i| self.list.get(i)).collect()
    }
}

/// Whether two runtime nodes' prefixes (own addresses, a subnet router's routes) share an
/// address. Only then can a device's config hold the same prefix on two peers (an error,
/// [`Overlap`]) or a nested one (a warning): a peer's AllowedIPs are its own prefixes, or
/// aggregates of them, so two peers' entries can only meet where their prefixes do. `lock`
/// asks this to skip lowering the devices when no overlap can arise.
pub fn prefixes_may_overlap(t: &Tailnet, lock: &Lock) -> bool {
    // Every prefix a device could route to a node, indexed as a device's config indexes its
    // peers' (prefixes meet only by one holding the other).
    let mut taken = Taken::default();
    for (node, (_, e)) in t.runtime_nodes().enumerate() {
        let Some(entry) = lock.nodes.get(&e.id) else {
            continue;
        };
        let mut mine = vec![
            IpNet::from(IpAddr::V4(entry.ipv4)),
            IpNet::from(IpAddr::V6(entry.ipv6)),
        ];
        if let ExposureKind::SubnetRouter { routes } = &e.kind {
            mine.extend(routes.iter().copied());
        }
        // Checked before this node's own go in: only other nodes' prefixes are there.
        if mine.iter().any(|p| !taken.overlapping(p).is_empty()) {
            return true;
        }
        let id = node.to_string();
        for p in mine {
            taken.push(&id, p);
        }
    }
    false
}

/// The comment header and `[Interface]` of a device's wg-quick config.
fn interface_section(d: &Device, entry: &crate::lockfile::DeviceEntry) -> String {
    let owner = match (&d.user, d.tags.is_empty()) {
        (Some(u), true) => u.clone(),
        _ => d.tags.join(", "),
    };
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "# Generated by tsk8s for device {:?} ({owner}). Do not edit by hand.",
        d.name
    );
    let _ = writeln!(
        conf,
        "# The private key stays on the device: PostUp loads it from {}.",
        d.key_path
    );
    conf.push_str("[Interface]\n");
    let _ = writeln!(conf, "Address = {}/32, {}/128", entry.ipv4, entry.ipv6);
    conf.push_str("MTU = 1280\n");
    let _ = writeln!(conf, "PostUp = wg set %i private-key {}", d.key_path);
    conf
}

pub fn device_files(
    t: &Tailnet,
    d: &Device,
    lock: &Lock,
    net: &Net,
    reach: &Reach,
    any: &AnyTraffic,
) -> Result<DeviceFiles, Overlap> {
    let (Some(entry), Some(me)) = (lock.devices.get(&d.name), reach.index(&d.name)) else {
        return Ok(DeviceFiles {
            conf: String::new(),
            hosts: String::new(),
            nested: Vec::new(),
        });
    };
    let my_ips = [IpAddr::V4(entry.ipv4), IpAddr::V6(entry.ipv6)];
    let mut conf = interface_section(d, entry);
    let mut hosts = String::new();
    let _ = writeln!(
        hosts,
        "# Generated by tsk8s: tailnet names for device {:?}; add to /etc/hosts.",
        d.name
    );

    let mut sections: Vec<(String, String)> = Vec::new();
    let mut taken = Taken::default();
    let mut dns_server: Option<String> = None;
    let mut nested = Vec::new();
    let peers = match any.take_device_peers(me) {
        Some(kept) => kept
            .into_iter()
            .filter_map(|(idx, allowed)| {
                let (cluster, id, peer) = peer_node(net, reach, idx)?;
                Some(DevicePeer {
                    idx,
                    cluster,
                    id,
                    peer,
                    allowed,
                })
            })
            .collect(),
        None => device_peers(t, net, reach, any, me, &my_ips),
    };
    for p in peers {
        let DevicePeer {
            idx,
            cluster,
            id,
            peer,
            allowed,
        } = p;
        let Some(name) = reach.names.get(idx) else {
            continue;
        };
        let Some(member) = net.members.get(name) else {
            continue;
        };
        let Some(node) = net.topology.nodes.get(name) else {
            continue;
        };
        let exposure = t
            .cluster(cluster)
            .and_then(|c| c.exposures.iter().find(|e| e.id == id));
        for a in &allowed {
            for (other, net2) in taken.overlapping(a) {
                let o = Overlap {
                    device: d.name.clone(),
                    first: (other.clone(), *net2),
                    second: (id.to_string(), *a),
                };
                if net2 == a {
                    return Err(o);
                }
                nested.push(o);
            }
        }
        for a in &allowed {
            taken.push(id, *a);
        }
        let host = hostname_of(t, member);
        let reaches_node = node
            .ipv4
            .is_some_and(|v4| allowed.iter().any(|a| a.contains(&IpAddr::V4(v4))));
        if reaches_node && let Some(v4) = node.ipv4 {
            let _ = writeln!(hosts, "{v4} {host}.{} {host}", t.domain);
            if dns_server.is_none() {
                dns_server = Some(v4.to_string());
            }
        }
        let kind = exposure.map(|e| e.kind.keyword()).unwrap_or("node");
        // A node that may call this device, or one reached through SNAT (a NodePort or a
        // shared MetalLB address), needs the device to keep the way open.
        let keepalive = reach.admits.get(me).is_some_and(|set| set.contains(idx))
            || peer.persistent_keepalive.is_some();
        let s = peer_section(&host, kind, cluster, peer, &allowed, keepalive);
        sections.push((host, s));
    }
    if let Some(ip) = dns_server {
        let _ = writeln!(
            conf,
            "# Nodes this device may reach answer DNS for {0}; to use it: DNS = {ip}, {0}",
            t.domain
        );
    }
    sections.sort();
    for (_, s) in sections {
        conf.push_str(&s);
    }
    Ok(DeviceFiles {
        conf,
        hosts,
        nested,
    })
}

/// One `[Peer]` section of a device's wg-quick config, with a comment naming the node.
fn peer_section(
    host: &str,
    kind: &str,
    cluster: &str,
    peer: &tsk8s_policy::runtime_config::Peer,
    allowed: &[IpNet],
    keepalive: bool,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n# {host}: {kind} in cluster {cluster}");
    s.push_str("[Peer]\n");
    let _ = writeln!(s, "PublicKey = {}", peer.public_key);
    if let Some(ep) = &peer.endpoint {
        let _ = writeln!(s, "Endpoint = {ep}");
    }
    let list: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(s, "AllowedIPs = {}", list.join(", "));
    if keepalive {
        let _ = writeln!(s, "PersistentKeepalive = {KEEPALIVE_SECONDS}");
    }
    s
}

/// Topology node `idx` as a device's peer: its cluster, exposure id and mesh entry (`None`
/// for anything but a tsk8s-runtime node).
fn peer_node<'n>(
    net: &'n Net,
    reach: &Reach,
    idx: usize,
) -> Option<(&'n str, &'n str, &'n tsk8s_policy::runtime_config::Peer)> {
    let Some(Member::Node { cluster, id }) = net.members.get(reach.names.get(idx)?) else {
        return None;
    };
    Some((cluster, id, net.peer(idx)?))
}

/// One peer of a device's wg-quick config: the node, and the AllowedIPs the device routes to it.
pub struct DevicePeer<'n> {
    pub idx: usize,
    pub cluster: &'n str,
    pub id: &'n str,
    pub peer: &'n tsk8s_policy::runtime_config::Peer,
    pub allowed: Vec<IpNet>,
}

/// The peers of the device at topology index `me` (addresses `my_ips`) and their AllowedIPs:
/// what its filters let it reach, plus the addresses of nodes that may open connections to it.
/// Nodes on the Tailscale image are never peers. Used for the config and by the access model.
pub fn device_peers<'n>(
    t: &Tailnet,
    net: &'n Net,
    reach: &Reach,
    any: &AnyTraffic,
    me: usize,
    my_ips: &[IpAddr],
) -> Vec<DevicePeer<'n>> {
    let mut out = Vec::new();
    for idx in reach.peers(me) {
        let Some((cluster, id, peer)) = peer_node(net, reach, idx) else {
            continue;
        };
        let mut within: Vec<IpNet> = peer.allowed_ips.clone();
        let exposure = t
            .cluster(cluster)
            .and_then(|c| c.exposures.iter().find(|e| e.id == id));
        if let Some(ExposureKind::SubnetRouter { routes }) = exposure.map(|e| &e.kind) {
            within.extend(routes.iter().copied());
        }
        let mut allowed = reachable_prefixes(any, idx, my_ips, &within);
        // A node that may open connections to this device needs its address routed back.
        if reach.admits.get(me).is_some_and(|s| s.contains(idx)) {
            for a in &peer.allowed_ips {
                if !allowed.contains(a) {
                    allowed.push(*a);
                }
            }
        }
        allowed = IpNet::aggregate(&allowed);
        allowed.sort();
        if allowed.is_empty() {
            continue;
        }
        out.push(DevicePeer {
            idx,
            cluster,
            id,
            peer,
            allowed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes of subnet routers in one cluster: apart, nested either way, equal.
    #[test]
    fn meeting_prefixes_are_found() {
        let t = |routes: &[&str]| -> bool {
            let spec = format!(
                "tailnet \"t\" domain=\"t.example\"\ntag \"r\"\ncluster \"c\" namespace=\"ns\" pod-cidr=\"10.244.0.0/16\" service-cidr=\"10.96.0.0/12\" endpoint=\"wg.t.example\" image=\"ghcr.io/acme/tsk8s-runtime:0.1.0\" {{\n    secrets \"existing\"\n{}}}\n",
                routes
                    .iter()
                    .enumerate()
                    .map(|(i, r)| format!("    subnet-router \"r{i}\" route=\"{r}\" tag=\"r\"\n"))
                    .collect::<String>()
            );
            let front =
                crate::build::front("tailnet.kdl", &spec).unwrap_or_else(|f| panic!("{}", f.text));
            let mut n = 0u8;
            let upd = crate::lockfile::update(
                &front.tailnet,
                &Lock::default(),
                &crate::lockfile::LockOptions::default(),
                &mut || {
                    n += 1;
                    (format!("k{n}"), format!("p{n}"))
                },
            )
            .unwrap();
            prefixes_may_overlap(&front.tailnet, &upd.lock)
        };
        assert!(!t(&["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/24"]));
        assert!(t(&["10.1.0.0/16", "10.2.0.0/16", "10.1.3.0/24"]));
        assert!(t(&["10.0.0.0/8", "10.2.0.0/16"]));
        assert!(t(&["10.2.0.0/16", "10.0.0.0/8"]));
        assert!(t(&["10.2.0.0/16", "10.2.0.0/16"]));
        assert!(!t(&["10.2.0.0/16"]));
    }
}
