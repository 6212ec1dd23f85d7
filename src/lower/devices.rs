//! Device configs: a wg-quick file per device (no private key: `PostUp` loads it from the
//! device's own key file) and a hosts-file snippet with the tailnet names it may use.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::net::KEEPALIVE_SECONDS;
use super::net::{AnyTraffic, Member, Net, Reach, allowed_ips_text, reachable_prefixes};
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
struct Taken<'a> {
    /// (peer id, prefix), in the order given.
    list: Vec<(&'a str, IpNet)>,
    /// (IPv6?, network, prefix length) → the last position in `list` with that prefix.
    by_net: std::collections::BTreeMap<(bool, u128, u8), usize>,
    /// Per position in `list`: the previous position with the same prefix (`usize::MAX`:
    /// none). A prefix is almost always given once, so no list per prefix is allocated.
    same: Vec<usize>,
    /// Prefix lengths present, per family.
    lens: [std::collections::BTreeSet<u8>; 2],
}

fn net_key(n: &IpNet) -> (bool, u128, u8) {
    match n.trunc() {
        IpNet::V4(v) => (false, u128::from(u32::from(v.network())), v.prefix_len()),
        IpNet::V6(v) => (true, u128::from(v.network()), v.prefix_len()),
    }
}

impl<'a> Taken<'a> {
    fn push(&mut self, id: &'a str, net: IpNet) {
        let k = net_key(&net);
        let at = self.list.len();
        let before = self.by_net.insert(k, at).unwrap_or(usize::MAX);
        self.same.push(before);
        self.lens[usize::from(k.0)].insert(k.2);
        self.list.push((id, net));
    }

    /// Positions in `list` of the entries with the prefix whose last position is `last`.
    fn chain(&self, mut last: usize, at: &mut Vec<usize>) {
        while let Some(&before) = self.same.get(last) {
            at.push(last);
            last = before;
        }
    }

    /// Entries holding `a` or held by it, in the order they were given.
    fn overlapping(&self, a: &IpNet) -> Vec<&(&'a str, IpNet)> {
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
            if let Some(&last) = self.by_net.get(&(v6, masked, l)) {
                self.chain(last, &mut at);
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
            for (_, &i) in self.by_net.range((v6, net, len + 1)..=(v6, last, u8::MAX)) {
                self.chain(i, &mut at);
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
    for (_, e) in t.runtime_nodes() {
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
        for p in mine {
            taken.push(&e.id, p);
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

/// `may_overlap`: [`prefixes_may_overlap`] of the tailnet; when false no two peers' AllowedIPs
/// can meet, and they are not indexed to look for it.
pub fn device_files(
    t: &Tailnet,
    d: &Device,
    lock: &Lock,
    net: &Net,
    reach: &Reach,
    any: &AnyTraffic,
    may_overlap: bool,
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

    let mut taken = Taken::default();
    let mut dns_server: Option<String> = None;
    let mut nested = Vec::new();
    let peers = match any.take_device_peers(me) {
        Some(kept) => kept_peers(net, kept),
        None => device_peers(t, net, reach, any, me, &my_ips),
    };
    // The peer sections, written one after another into `text` as (hostname, range), then
    // put in order of hostname (and text) into the config: no string per section.
    let mut text = String::with_capacity(peers.len() * 256);
    let mut sections: Vec<(&str, std::ops::Range<usize>)> = Vec::with_capacity(peers.len());
    for p in &peers {
        let DevicePeer {
            idx,
            cluster,
            id,
            peer,
            ref allowed,
        } = *p;
        let (Some(host), Some((ipv4, _))) = (net.host(idx), net.addrs(idx)) else {
            continue;
        };
        if may_overlap {
            for a in allowed {
                for (other, net2) in taken.overlapping(a) {
                    let o = Overlap {
                        device: d.name.clone(),
                        first: (other.to_string(), *net2),
                        second: (id.to_string(), *a),
                    };
                    if net2 == a {
                        return Err(o);
                    }
                    nested.push(o);
                }
            }
            for a in allowed {
                taken.push(id, *a);
            }
        }
        let reaches_node =
            ipv4.is_some_and(|v4| allowed.iter().any(|a| a.contains(&IpAddr::V4(v4))));
        if reaches_node && let Some(v4) = ipv4 {
            let _ = writeln!(hosts, "{v4} {host}.{} {host}", t.domain);
            if dns_server.is_none() {
                dns_server = Some(v4.to_string());
            }
        }
        let kind = net
            .exposure(t, idx)
            .map(|e| e.kind.keyword())
            .unwrap_or("node");
        // A node that may call this device, or one reached through SNAT (a NodePort or a
        // shared MetalLB address), needs the device to keep the way open.
        let keepalive = reach.admits.get(me).is_some_and(|set| set.contains(idx))
            || peer.persistent_keepalive.is_some();
        let start = text.len();
        // A node's own addresses (the common case) have their text made once, in `net`.
        let allowed_text = match net.allowed_text(idx) {
            Some(own) if allowed.as_slice() == peer.allowed_ips.as_slice() => Cow::Borrowed(own),
            _ => Cow::Owned(allowed_ips_text(allowed)),
        };
        peer_section(
            &mut text,
            host,
            kind,
            cluster,
            peer,
            &allowed_text,
            keepalive,
        );
        sections.push((host, start..text.len()));
    }
    if let Some(ip) = dns_server {
        let _ = writeln!(
            conf,
            "# Nodes this device may reach answer DNS for {0}; to use it: DNS = {ip}, {0}",
            t.domain
        );
    }
    let section = |r: &std::ops::Range<usize>| text.get(r.clone()).unwrap_or_default();
    sections.sort_by(|a, b| a.0.cmp(b.0).then_with(|| section(&a.1).cmp(section(&b.1))));
    conf.reserve(text.len());
    for (_, r) in &sections {
        conf.push_str(section(r));
    }
    Ok(DeviceFiles {
        conf,
        hosts,
        nested,
    })
}

/// A device's peers as the spec's tests kept them ([`AnyTraffic::take_device_peers`]).
fn kept_peers(net: &Net, kept: super::net::DevicePeerList) -> Vec<DevicePeer<'_>> {
    kept.into_iter()
        .filter_map(|(idx, allowed)| {
            let (cluster, id, peer) = peer_node(net, idx)?;
            Some(DevicePeer {
                idx,
                cluster,
                id,
                peer,
                allowed,
            })
        })
        .collect()
}

/// One `[Peer]` section of a device's wg-quick config, with a comment naming the node, to `s`
/// (`allowed`: its AllowedIPs as [`allowed_ips_text`] writes them).
fn peer_section(
    s: &mut String,
    host: &str,
    kind: &str,
    cluster: &str,
    peer: &tsk8s_policy::runtime_config::Peer,
    allowed: &str,
    keepalive: bool,
) {
    for part in ["\n# ", host, ": ", kind, " in cluster ", cluster, "\n"] {
        s.push_str(part);
    }
    s.push_str("[Peer]\nPublicKey = ");
    s.push_str(&peer.public_key);
    s.push('\n');
    if let Some(ep) = &peer.endpoint {
        s.push_str("Endpoint = ");
        s.push_str(ep);
        s.push('\n');
    }
    s.push_str("AllowedIPs = ");
    s.push_str(allowed);
    s.push('\n');
    if keepalive {
        let _ = writeln!(s, "PersistentKeepalive = {KEEPALIVE_SECONDS}");
    }
}

/// Topology node `idx` as a device's peer: its cluster, exposure id and mesh entry (`None`
/// for anything but a tsk8s-runtime node).
fn peer_node(net: &Net, idx: usize) -> Option<(&str, &str, &tsk8s_policy::runtime_config::Peer)> {
    let Some(Member::Node { cluster, id }) = net.member(idx) else {
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
    // (peer, the device admits it, it admits the device)
    for (idx, calls_me, admits_me) in reach.peers_both_ways(me) {
        let Some((cluster, id, peer)) = peer_node(net, idx) else {
            continue;
        };
        let mut within: Vec<IpNet> = peer.allowed_ips.clone();
        if let Some(ExposureKind::SubnetRouter { routes }) = net.exposure(t, idx).map(|e| &e.kind) {
            within.extend(routes.iter().copied());
        }
        // Only a node whose filter admits this device can give it prefixes; most peers of a
        // device on a dense policy are nodes that may call it (egress to every member), and
        // `admits` (the filters' source lists, read as the matcher reads them) says so
        // without building the node's index. `my_ips` are the device's topology addresses.
        let mut allowed = if admits_me {
            reachable_prefixes(any, idx, my_ips, &within)
        } else {
            Vec::new()
        };
        // A node that may open connections to this device needs its address routed back.
        if calls_me {
            for a in &peer.allowed_ips {
                if !allowed.contains(a) {
                    allowed.push(*a);
                }
            }
        }
        // A node's own addresses (one host per family, in order) are their own aggregate.
        if allowed != peer.allowed_ips {
            allowed = IpNet::aggregate(&allowed);
        }
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
