//! Minimal, panic-free IP/TCP/UDP/ICMP parsing and building for the packet path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the filter and dispatcher need to know about an inner packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Source port (TCP/UDP), ICMP echo identifier, else 0.
    pub sport: u16,
    /// Destination port (TCP/UDP), ICMP echo identifier for echo, else 0.
    pub dport: u16,
    /// TCP flags, or ICMP type.
    pub flags: u8,
    /// Offset of the transport header.
    pub l4_off: usize,
    /// Offset of the transport payload (after TCP/UDP/ICMP header).
    pub payload_off: usize,
    /// Total length from the IP header (the packet may carry trailing padding).
    pub total_len: usize,
    /// Whether this is a non-first fragment (no transport header).
    pub fragment: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    Truncated,
    BadVersion,
    BadHeader,
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// Parse an IPv4 or IPv6 packet. Never panics.
pub fn parse(pkt: &[u8]) -> Result<Info, ParseError> {
    let first = *pkt.first().ok_or(ParseError::Truncated)?;
    match first >> 4 {
        4 => parse_v4(pkt),
        6 => parse_v6(pkt),
        _ => Err(ParseError::BadVersion),
    }
}

fn parse_v4(pkt: &[u8]) -> Result<Info, ParseError> {
    if pkt.len() < 20 {
        return Err(ParseError::Truncated);
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(be16(pkt, 2).ok_or(ParseError::Truncated)?);
    if ihl < 20 || total < ihl || total > pkt.len() {
        return Err(ParseError::BadHeader);
    }
    let frag = be16(pkt, 6).ok_or(ParseError::Truncated)?;
    let offset = frag & 0x1fff;
    let proto = pkt[9];
    let src = IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
    let body = pkt.get(ihl..total).ok_or(ParseError::BadHeader)?;
    finish(src, dst, proto, body, ihl, total, offset != 0)
}

fn parse_v6(pkt: &[u8]) -> Result<Info, ParseError> {
    if pkt.len() < 40 {
        return Err(ParseError::Truncated);
    }
    let plen = usize::from(be16(pkt, 4).ok_or(ParseError::Truncated)?);
    let total = 40 + plen;
    if total > pkt.len() {
        return Err(ParseError::BadHeader);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(pkt.get(8..24).ok_or(ParseError::Truncated)?);
    dst.copy_from_slice(pkt.get(24..40).ok_or(ParseError::Truncated)?);
    let mut next = pkt[6];
    let mut off = 40usize;
    let mut fragment = false;
    // Walk a bounded number of extension headers.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let nh = *pkt.get(off).ok_or(ParseError::Truncated)?;
                let len = (usize::from(*pkt.get(off + 1).ok_or(ParseError::Truncated)?) + 1) * 8;
                next = nh;
                off += len;
            }
            44 => {
                let nh = *pkt.get(off).ok_or(ParseError::Truncated)?;
                let fo = be16(pkt, off + 2).ok_or(ParseError::Truncated)?;
                if fo & 0xfff8 != 0 {
                    fragment = true;
                }
                next = nh;
                off += 8;
            }
            _ => break,
        }
        if off > total {
            return Err(ParseError::BadHeader);
        }
    }
    let body = pkt.get(off..total).ok_or(ParseError::BadHeader)?;
    finish(
        IpAddr::V6(Ipv6Addr::from(src)),
        IpAddr::V6(Ipv6Addr::from(dst)),
        next,
        body,
        off,
        total,
        fragment,
    )
}

fn finish(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    body: &[u8],
    l4_off: usize,
    total_len: usize,
    fragment: bool,
) -> Result<Info, ParseError> {
    let mut info = Info {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        flags: 0,
        l4_off,
        payload_off: l4_off,
        total_len,
        fragment,
    };
    if fragment {
        return Ok(info);
    }
    match proto {
        PROTO_TCP => {
            if body.len() < 20 {
                return Err(ParseError::Truncated);
            }
            let doff = usize::from(body[12] >> 4) * 4;
            if doff < 20 || doff > body.len() {
                return Err(ParseError::BadHeader);
            }
            info.sport = be16(body, 0).ok_or(ParseError::Truncated)?;
            info.dport = be16(body, 2).ok_or(ParseError::Truncated)?;
            info.flags = body[13];
            info.payload_off = l4_off + doff;
        }
        PROTO_UDP => {
            if body.len() < 8 {
                return Err(ParseError::Truncated);
            }
            let ulen = usize::from(be16(body, 4).ok_or(ParseError::Truncated)?);
            if ulen < 8 || ulen > body.len() {
                return Err(ParseError::BadHeader);
            }
            info.sport = be16(body, 0).ok_or(ParseError::Truncated)?;
            info.dport = be16(body, 2).ok_or(ParseError::Truncated)?;
            info.payload_off = l4_off + 8;
            info.total_len = l4_off + ulen;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if body.len() < 8 {
                return Err(ParseError::Truncated);
            }
            info.flags = body[0];
            let id = be16(body, 4).ok_or(ParseError::Truncated)?;
            info.sport = id;
            info.dport = id;
            info.payload_off = l4_off + 8;
        }
        _ => {}
    }
    Ok(info)
}

/// Ones'-complement sum over `data`, added to `acc`.
fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum(acc, &s.octets());
            acc = sum(acc, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum(acc, &s.octets());
            acc = sum(acc, &d.octets());
        }
        _ => {}
    }
    acc + u32::from(proto) + (len as u32 & 0xffff) + ((len as u32) >> 16)
}

/// Write an IP header for `proto` with a payload of `l4_len` bytes at the start of `out`;
/// returns the header length. `out` must hold the header.
fn write_ip(out: &mut Vec<u8>, src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> bool {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = 20 + l4_len;
            let Ok(total16) = u16::try_from(total) else {
                return false;
            };
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total16.to_be_bytes());
            h[6] = 0x40; // DF
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = fold(sum(0, &h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
            true
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let Ok(plen) = u16::try_from(l4_len) else {
                return false;
            };
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&plen.to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            out.extend_from_slice(&h);
            true
        }
        _ => false,
    }
}

/// Build a UDP/IP packet into `out` (cleared first). False if it cannot be built.
pub fn build_udp(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> bool {
    out.clear();
    let ulen = 8 + payload.len();
    let Ok(ulen16) = u16::try_from(ulen) else {
        return false;
    };
    if !write_ip(out, src.ip(), dst.ip(), PROTO_UDP, ulen) {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&ulen16.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(payload);
    let acc = sum(pseudo(src.ip(), dst.ip(), PROTO_UDP, ulen), &out[start..]);
    let mut c = fold(acc);
    if c == 0 {
        c = 0xffff;
    }
    out[start + 6..start + 8].copy_from_slice(&c.to_be_bytes());
    true
}

/// Build an ICMP / ICMPv6 echo reply for the echo request `req` (parsed as `info`).
pub fn build_echo_reply(out: &mut Vec<u8>, req: &[u8], info: &Info) -> bool {
    out.clear();
    let Some(body) = req.get(info.l4_off..info.total_len) else {
        return false;
    };
    if body.len() < 8 {
        return false;
    }
    let v6 = info.proto == PROTO_ICMPV6;
    if !write_ip(out, info.dst, info.src, info.proto, body.len()) {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(body);
    out[start] = if v6 { 129 } else { 0 };
    out[start + 1] = 0;
    out[start + 2] = 0;
    out[start + 3] = 0;
    let acc = if v6 {
        sum(
            pseudo(info.dst, info.src, PROTO_ICMPV6, body.len()),
            &out[start..],
        )
    } else {
        sum(0, &out[start..])
    };
    let c = fold(acc);
    out[start + 2..start + 4].copy_from_slice(&c.to_be_bytes());
    true
}

/// An ICMP(v6) echo reply from `src` to `dst`: `icmp` is the message an unprivileged ping
/// socket received (ICMP header included, identifier rewritten by the kernel); the identifier is
/// set back to `id` and the checksum recomputed. False unless `icmp` is an echo reply.
pub fn build_echo_reply_from(
    out: &mut Vec<u8>,
    src: IpAddr,
    dst: IpAddr,
    icmp: &[u8],
    id: u16,
) -> bool {
    out.clear();
    let v6 = dst.is_ipv6();
    let (proto, reply) = if v6 {
        (PROTO_ICMPV6, 129)
    } else {
        (PROTO_ICMP, 0)
    };
    if icmp.len() < 8 || icmp.first() != Some(&reply) || src.is_ipv6() != v6 {
        return false;
    }
    if !write_ip(out, src, dst, proto, icmp.len()) {
        return false;
    }
    let start = out.len();
    out.extend_from_slice(icmp);
    let Some(msg) = out.get_mut(start..) else {
        return false;
    };
    msg[2] = 0;
    msg[3] = 0;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    let acc = if v6 {
        sum(pseudo(src, dst, PROTO_ICMPV6, msg.len()), msg)
    } else {
        sum(0, msg)
    };
    let c = fold(acc);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    true
}

/// Is this ICMP packet an echo request?
pub fn is_echo_request(info: &Info) -> bool {
    (info.proto == PROTO_ICMP && info.flags == 8)
        || (info.proto == PROTO_ICMPV6 && info.flags == 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_roundtrip() {
        let mut out = Vec::new();
        let s: SocketAddr = "100.64.0.1:1000".parse().unwrap();
        let d: SocketAddr = "100.64.0.2:53".parse().unwrap();
        assert!(build_udp(&mut out, s, d, b"hello"));
        let i = parse(&out).unwrap();
        assert_eq!(i.src, s.ip());
        assert_eq!(i.dport, 53);
        assert_eq!(&out[i.payload_off..i.total_len], b"hello");
        // smoltcp agrees with the checksums.
        let p = smoltcp::wire::Ipv4Packet::new_checked(&out[..]).unwrap();
        assert!(p.verify_checksum());
        let s6: SocketAddr = "[fd7a::1]:1000".parse().unwrap();
        let d6: SocketAddr = "[fd7a::2]:53".parse().unwrap();
        assert!(build_udp(&mut out, s6, d6, b"hi"));
        let i = parse(&out).unwrap();
        assert_eq!(i.src, s6.ip());
        assert_eq!(&out[i.payload_off..i.total_len], b"hi");
    }

    #[test]
    fn echo_reply_from_ping_socket() {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, Ipv4Packet, Ipv6Packet,
        };
        let mut out = Vec::new();
        // What a ping socket returns: echo reply, kernel's identifier 0x9999, seq 7, data.
        let msg = [0u8, 0, 0xde, 0xad, 0x99, 0x99, 0, 7, b'h', b'i'];
        let (src, dst) = ("10.77.1.2".parse().unwrap(), "100.64.0.1".parse().unwrap());
        assert!(build_echo_reply_from(&mut out, src, dst, &msg, 0x1234));
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert!(ip.verify_checksum());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x1234,
                seq_no: 7,
                data: b"hi"
            }
        );
        // IPv6.
        let mut msg6 = msg;
        msg6[0] = 129;
        let (s6, d6): (IpAddr, IpAddr) = (
            "fd00::2".parse().unwrap(),
            "fd7a:115c:a1e0::1".parse().unwrap(),
        );
        assert!(build_echo_reply_from(&mut out, s6, d6, &msg6, 0x1234));
        let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        let (IpAddr::V6(a), IpAddr::V6(b)) = (s6, d6) else {
            unreachable!()
        };
        assert!(icmp.verify_checksum(&a, &b));
        let repr = Icmpv6Repr::parse(&a, &b, &icmp, &ChecksumCapabilities::default());
        assert_eq!(
            repr.unwrap(),
            Icmpv6Repr::EchoReply {
                ident: 0x1234,
                seq_no: 7,
                data: b"hi"
            }
        );
        // Not an echo reply, too short, or mixed families: nothing.
        assert!(!build_echo_reply_from(&mut out, src, dst, &msg6, 1));
        assert!(!build_echo_reply_from(&mut out, src, dst, &msg[..7], 1));
        assert!(!build_echo_reply_from(&mut out, s6, dst, &msg, 1));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = tsk8s_test_support::Rng::new(0x1234_5678);
        for len in 0..200 {
            for _ in 0..50 {
                let v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                let mut v2 = v.clone();
                if let Some(b) = v2.first_mut() {
                    *b = 0x45;
                }
                let _ = parse(&v);
                let _ = parse(&v2);
            }
        }
    }
}
