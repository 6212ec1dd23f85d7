//! Address sets as sorted, disjoint ranges (IPv4 and IPv6 kept apart), with the conversions a
//! packet filter needs: prefixes, `a-b` ranges, containment and overlap.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A set of IP addresses. Ranges are inclusive, sorted and non-adjacent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn normalize<T: Copy + Ord + num_like::Succ>(mut r: Vec<(T, T)>) -> Vec<(T, T)> {
    r.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        if let Some(last) = out.last_mut() {
            // merge overlapping or adjacent
            if lo <= last.1 || last.1.succ() == Some(lo) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    out
}

mod num_like {
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

fn subtract<T: Copy + Ord + num_like::Succ + Pred>(a: &[(T, T)], b: &[(T, T)]) -> Vec<(T, T)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(lo, hi) in a {
        let mut cur = lo;
        let mut alive = true;
        while j < b.len() && b[j].1 < cur {
            j += 1;
        }
        let mut k = j;
        while alive && k < b.len() && b[k].0 <= hi {
            let (blo, bhi) = b[k];
            if blo > cur {
                // blo > cur >= MIN so pred exists
                if let Some(p) = blo.pred() {
                    out.push((cur, p));
                }
            }
            match bhi.succ() {
                Some(n) if bhi < hi => cur = n,
                _ => alive = false,
            }
            k += 1;
        }
        if alive {
            out.push((cur, hi));
        }
    }
    out
}

trait Pred: Sized {
    fn pred(self) -> Option<Self>;
}
impl Pred for u32 {
    fn pred(self) -> Option<u32> {
        self.checked_sub(1)
    }
}
impl Pred for u128 {
    fn pred(self) -> Option<u128> {
        self.checked_sub(1)
    }
}

fn contains_in<T: Copy + Ord>(r: &[(T, T)], x: T) -> bool {
    // last range with lo <= x
    let idx = r.partition_point(|&(lo, _)| lo <= x);
    idx > 0 && r.get(idx - 1).is_some_and(|&(_, hi)| x <= hi)
}

fn overlaps_in<T: Copy + Ord>(r: &[(T, T)], lo: T, hi: T) -> bool {
    let idx = r.partition_point(|&(_, h)| h < lo);
    r.get(idx).is_some_and(|&(l, _)| l <= hi)
}

/// First and last address of a network.
pub fn net_bounds(net: &IpNet) -> (IpAddr, IpAddr) {
    match net {
        IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
        IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
    }
}

/// The fewest prefixes covering `[lo, hi]` in a `bits`-bit address space, each given to
/// `push` as (first address, prefix length): at every step the largest aligned block that
/// starts at `lo` and stays within `hi`.
fn range_prefixes(mut lo: u128, hi: u128, bits: u32, mut push: impl FnMut(u128, u8)) {
    let ones = |n: u32| {
        if n >= 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        }
    };
    loop {
        let mut len = bits as u8;
        while len > 0 {
            let mask = ones(bits - (len - 1) as u32);
            if lo & mask != 0 || (lo | mask) > hi {
                break;
            }
            len -= 1;
        }
        push(lo, len);
        let end = lo | ones(bits - len as u32);
        if end >= hi {
            return;
        }
        lo = end + 1;
    }
}

impl IpSet {
    pub fn new() -> IpSet {
        IpSet::default()
    }

    /// Every IPv4 and IPv6 address.
    pub fn all() -> IpSet {
        IpSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    pub fn from_nets<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> IpSet {
        let mut s = IpSet::new();
        for n in nets {
            s.add_net(n);
        }
        s.normalize();
        s
    }

    /// A set of single addresses, built in one pass.
    pub fn from_ips(ips: impl IntoIterator<Item = IpAddr>) -> IpSet {
        let mut s = IpSet::new();
        for ip in ips {
            s.push_range(ip, ip);
        }
        s.normalize();
        s
    }

    /// A set built from many networks in one pass.
    pub fn from_net_iter(nets: impl IntoIterator<Item = IpNet>) -> IpSet {
        let mut s = IpSet::new();
        for n in nets {
            let (lo, hi) = net_bounds(&n);
            s.push_range(lo, hi);
        }
        s.normalize();
        s
    }

    /// A set of inclusive ranges, built in one pass (a range whose ends differ in family or
    /// are reversed is ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (IpAddr, IpAddr)>) -> IpSet {
        let mut s = IpSet::new();
        for (lo, hi) in ranges {
            s.push_range(lo, hi);
        }
        s.normalize();
        s
    }

    /// Only the IPv4 (`v6 == false`) or IPv6 part.
    pub fn family(&self, v6: bool) -> IpSet {
        if v6 {
            IpSet {
                v4: Vec::new(),
                v6: self.v6.clone(),
            }
        } else {
            IpSet {
                v4: self.v4.clone(),
                v6: Vec::new(),
            }
        }
    }

    /// Is this exactly one address?
    pub fn single_address(&self) -> Option<IpAddr> {
        match (self.v4.as_slice(), self.v6.as_slice()) {
            ([(a, b)], []) if a == b => Some(IpAddr::V4((*a).into())),
            ([], [(a, b)]) if a == b => Some(IpAddr::V6((*a).into())),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Add without re-normalizing; call [`IpSet::normalize`] afterwards (done by `union`).
    fn push_range(&mut self, lo: IpAddr, hi: IpAddr) {
        match (lo, hi) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let (a, b) = (u32::from(a), u32::from(b));
                if a <= b {
                    self.v4.push((a, b));
                }
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let (a, b) = (u128::from(a), u128::from(b));
                if a <= b {
                    self.v6.push((a, b));
                }
            }
            _ => {}
        }
    }

    pub fn add_net(&mut self, net: &IpNet) {
        let (lo, hi) = net_bounds(net);
        self.push_range(lo, hi);
        self.normalize();
    }

    pub fn add_ip(&mut self, ip: IpAddr) {
        self.push_range(ip, ip);
        self.normalize();
    }

    pub fn add_range(&mut self, lo: IpAddr, hi: IpAddr) {
        self.push_range(lo, hi);
        self.normalize();
    }

    pub fn add_set(&mut self, other: &IpSet) {
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
        self.normalize();
    }

    /// The union of many sets, normalized once (adding them one by one re-sorts each time).
    pub fn union_all<'a>(sets: impl IntoIterator<Item = &'a IpSet>) -> IpSet {
        let mut s = IpSet::new();
        for o in sets {
            s.v4.extend_from_slice(&o.v4);
            s.v6.extend_from_slice(&o.v6);
        }
        s.normalize();
        s
    }

    fn normalize(&mut self) {
        self.v4 = normalize(std::mem::take(&mut self.v4));
        self.v6 = normalize(std::mem::take(&mut self.v6));
    }

    pub fn remove_set(&mut self, other: &IpSet) {
        self.v4 = subtract(&self.v4, &other.v4);
        self.v6 = subtract(&self.v6, &other.v6);
    }

    pub fn remove_net(&mut self, net: &IpNet) {
        let other = IpSet::from_nets([net]);
        self.remove_set(&other);
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => contains_in(&self.v4, u32::from(a)),
            IpAddr::V6(a) => contains_in(&self.v6, u128::from(a)),
        }
    }

    pub fn overlaps_net(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => overlaps_in(&self.v4, u32::from(n.network()), u32::from(n.broadcast())),
            IpNet::V6(n) => {
                overlaps_in(&self.v6, u128::from(n.network()), u128::from(n.broadcast()))
            }
        }
    }

    pub fn overlaps(&self, other: &IpSet) -> bool {
        other
            .v4
            .iter()
            .any(|&(lo, hi)| overlaps_in(&self.v4, lo, hi))
            || other
                .v6
                .iter()
                .any(|&(lo, hi)| overlaps_in(&self.v6, lo, hi))
    }

    /// Is every address of `other` in `self`?
    pub fn is_superset_of(&self, other: &IpSet) -> bool {
        let mut o = other.clone();
        o.remove_set(self);
        o.is_empty()
    }

    pub fn intersect(&self, other: &IpSet) -> IpSet {
        let mut not_other = self.clone();
        not_other.remove_set(other);
        let mut r = self.clone();
        r.remove_set(&not_other);
        r
    }

    /// The set as the fewest CIDR prefixes (IPv4 first).
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.v4 {
            range_prefixes(lo.into(), hi.into(), 32, |a, len| {
                let a = Ipv4Addr::from(u32::try_from(a).expect("an IPv4 range stays in 32 bits"));
                out.push(IpNet::V4(Ipv4Net::new(a, len).expect("len <= 32")));
            });
        }
        for &(lo, hi) in &self.v6 {
            range_prefixes(lo, hi, 128, |a, len| {
                out.push(IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(a), len).expect("len <= 128"),
                ));
            });
        }
        out
    }

    /// Inclusive ranges (IPv4 first).
    pub fn ranges(&self) -> Vec<(IpAddr, IpAddr)> {
        self.v4
            .iter()
            .map(|&(a, b)| (IpAddr::V4(a.into()), IpAddr::V4(b.into())))
            .chain(
                self.v6
                    .iter()
                    .map(|&(a, b)| (IpAddr::V6(a.into()), IpAddr::V6(b.into()))),
            )
            .collect()
    }

    /// Filter-rule spelling: one entry per prefix; single addresses without `/32` or `/128`.
    pub fn to_strings(&self) -> Vec<String> {
        self.prefixes().iter().map(net_string).collect()
    }

    /// Number of IPv4 + IPv6 ranges.
    pub fn range_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Every single address, if the set holds at most `limit` of them.
    pub fn addresses(&self, limit: usize) -> Option<Vec<IpAddr>> {
        let mut out = Vec::new();
        for &(lo, hi) in &self.v4 {
            let n = (hi - lo) as usize + 1;
            if out.len() + n > limit {
                return None;
            }
            out.extend((lo..=hi).map(|a| IpAddr::V4(a.into())));
        }
        for &(lo, hi) in &self.v6 {
            let n = hi - lo;
            if n >= limit as u128 || out.len() + n as usize + 1 > limit {
                return None;
            }
            out.extend((lo..=hi).map(|a| IpAddr::V6(a.into())));
        }
        Some(out)
    }
}

/// A network in filter spelling: `100.64.0.1` for a single address, `10.0.0.0/8` otherwise.
pub fn net_string(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.trunc().to_string()
    }
}

/// 100.64.0.0/10, the CGNAT range Tailscale takes its IPv4 addresses from.
pub fn cgnat() -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10).expect("10 <= 32"))
}

/// fd7a:115c:a1e0::/48, Tailscale's IPv6 ULA range.
pub fn tailscale_ula() -> IpNet {
    IpNet::V6(
        Ipv6Net::new(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48).expect("48 <= 128"),
    )
}

/// 100.115.92.0/23, reserved for ChromeOS VMs.
pub fn chromeos_vm_range() -> IpNet {
    IpNet::V4(Ipv4Net::new(Ipv4Addr::new(100, 115, 92, 0), 23).expect("23 <= 32"))
}

/// A prefix written in this file (a constant, checked by the tests that use it).
fn parse_net(s: &str) -> IpNet {
    s.parse().expect("a prefix constant of this file")
}

/// The tailnet's address space: what `*` means as a source (before adding approved routes).
pub fn tailnet_space() -> IpSet {
    let mut s = IpSet::from_nets(&[cgnat(), tailscale_ula()]);
    s.remove_net(&chromeos_vm_range());
    s
}

/// `autogroup:internet`: every public address (no private, CGNAT, Tailscale or link-local ranges).
pub fn the_internet() -> IpSet {
    let mut s = IpSet::from_nets(&[parse_net("0.0.0.0/0"), parse_net("2000::/3")]);
    for n in [
        "fc00::/7",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fd7a:115c:a1e0::/48",
        "100.64.0.0/10",
        "fe80::/10",
        "169.254.0.0/16",
    ] {
        s.remove_net(&parse_net(n));
    }
    s
}

/// Is `net` a default route (`0.0.0.0/0` or `::/0`)?
pub fn is_exit_route(net: &IpNet) -> bool {
    net.prefix_len() == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn tailnet_space_prefixes() {
        let s = tailnet_space();
        let strs = s.to_strings();
        assert_eq!(
            strs,
            vec![
                "100.64.0.0/11",
                "100.96.0.0/12",
                "100.112.0.0/15",
                "100.114.0.0/16",
                "100.115.0.0/18",
                "100.115.64.0/20",
                "100.115.80.0/21",
                "100.115.88.0/22",
                "100.115.94.0/23",
                "100.115.96.0/19",
                "100.115.128.0/17",
                "100.116.0.0/14",
                "100.120.0.0/13",
                "fd7a:115c:a1e0::/48"
            ]
        );
        assert!(s.contains("100.64.0.1".parse().unwrap()));
        assert!(!s.contains("100.115.92.5".parse().unwrap()));
    }

    #[test]
    fn full_ranges() {
        let s = IpSet::all();
        assert_eq!(s.to_strings(), vec!["0.0.0.0/0", "::/0"]);
        let mut t = IpSet::all();
        t.remove_net(&n("0.0.0.0/1"));
        assert_eq!(t.to_strings(), vec!["128.0.0.0/1", "::/0"]);
        t.remove_net(&n("255.255.255.255/32"));
        assert!(!t.contains("255.255.255.255".parse().unwrap()));
        assert!(t.contains("255.255.255.254".parse().unwrap()));
    }

    #[test]
    fn set_ops() {
        let a = IpSet::from_nets(&[n("10.0.0.0/8")]);
        let b = IpSet::from_nets(&[n("10.1.0.0/16"), n("192.168.0.0/16")]);
        assert!(a.overlaps(&b));
        assert!(!a.is_superset_of(&b));
        assert_eq!(a.intersect(&b).to_strings(), vec!["10.1.0.0/16"]);
        assert!(a.overlaps_net(&n("10.2.3.4/32")));
        assert!(!a.overlaps_net(&n("11.0.0.0/8")));
    }
}
