//! Bad input on the wire and inside the tunnel: dropped and counted, never a panic; a
//! legitimate peer keeps working. Loopback only, no privileges.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use tsk8s_runtime::engine::{Engine, Tuning};
use tsk8s_runtime::fuzz::{self, NODE_KEY, PEER_KEY};
use tsk8s_runtime::metrics::DropReason;

fn engine_with_endpoint(endpoint: SocketAddr) -> Engine {
    let mut l = fuzz::fixture();
    for p in &mut l.peers {
        p.endpoint = Some(endpoint.to_string());
    }
    Engine::new(l, Tuning::default()).expect("engine")
}

fn recv(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    sock.recv_from(&mut buf)
        .ok()
        .map(|(n, _)| buf[..n].to_vec())
}

fn client() -> Tunn {
    let node_pub = PublicKey::from(&StaticSecret::from(NODE_KEY));
    Tunn::new(StaticSecret::from(PEER_KEY), node_pub, None, None, 77, None)
}

/// Handshake as the fixture's peer; returns the established client tunnel.
fn handshake(e: &mut Engine, sock: &UdpSocket, me: SocketAddr) -> Tunn {
    let mut t = client();
    let mut buf = vec![0u8; 65536];
    let init = match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    e.inject_datagram(me, &init);
    let resp = recv(sock).expect("handshake response");
    match t.decapsulate(None, &resp, &mut buf) {
        TunnResult::WriteToNetwork(keepalive) => e.inject_datagram(me, keepalive),
        other => panic!("handshake failed: {other:?}"),
    }
    t
}

fn dns_packet() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in ["a", "fuzz", "example"] {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut out = Vec::new();
    assert!(tsk8s_runtime::packet::build_udp(
        &mut out,
        "100.64.0.2:5353".parse().unwrap(),
        "100.64.0.1:53".parse().unwrap(),
        &q
    ));
    out
}

#[test]
fn handshake_data_replay_and_garbage() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let mut e = engine_with_endpoint(me);
    let mut t = handshake(&mut e, &sock, me);
    let mut buf = vec![0u8; 65536];

    // A DNS query through the tunnel gets an encrypted answer.
    let data = match t.encapsulate(&dns_packet(), &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    e.inject_datagram(me, &data);
    let answer = recv(&sock).expect("dns answer");
    match t.decapsulate(None, &answer, &mut buf) {
        TunnResult::WriteToTunnelV4(p, _) => assert!(p.len() > 28),
        other => panic!("{other:?}"),
    }

    // Replay: dropped and counted, no answer.
    let before = e.net.counters.dropped(DropReason::Decrypt);
    e.inject_datagram(me, &data);
    assert_eq!(e.net.counters.dropped(DropReason::Decrypt), before + 1);

    // Truncated data packet and garbage.
    e.inject_datagram(me, &data[..20]);
    let mut rng = tsk8s_test_support::Rng::new(99);
    for len in [0usize, 1, 3, 4, 31, 32, 92, 148, 200, 1500] {
        for kind in 0u8..6 {
            let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 4 {
                v[0] = kind;
                v[1] = 0;
                v[2] = 0;
                v[3] = 0;
            }
            e.inject_datagram(me, &v);
        }
    }
    assert!(e.net.counters.dropped(DropReason::Garbage) > 0);

    // Malformed inner packets from the authenticated peer: dropped, never a panic.
    let drops_before: u64 = e.net.counters.drops.iter().sum();
    for len in 0..120usize {
        let mut p = vec![0u8; len];
        for (i, b) in p.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(len as u8);
        }
        if let Some(b) = p.first_mut() {
            *b = if len % 2 == 0 { 0x45 } else { 0x60 };
        }
        if let TunnResult::WriteToNetwork(d) = t.encapsulate(&p, &mut buf) {
            let d = d.to_vec();
            e.inject_datagram(me, &d);
        }
    }
    let drops_after: u64 = e.net.counters.drops.iter().sum();
    assert!(
        drops_after >= drops_before + 100,
        "malformed inner packets counted"
    );

    // The legitimate peer still works.
    let data = match t.encapsulate(&dns_packet(), &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    while recv_nonblocking(&sock).is_some() {}
    e.inject_datagram(me, &data);
    assert!(recv(&sock).is_some(), "peer unaffected");
}

fn recv_nonblocking(sock: &UdpSocket) -> Option<Vec<u8>> {
    sock.set_nonblocking(true).ok()?;
    let r = recv(sock);
    sock.set_nonblocking(false).ok()?;
    r
}

#[test]
fn handshake_flood_gets_cookies() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let mut e = engine_with_endpoint(me);
    let node_pub = PublicKey::from(&StaticSecret::from(NODE_KEY));
    let mut buf = vec![0u8; 65536];
    // Initiations from keys that are not in the mesh (valid MAC1: anyone knowing the public key).
    for i in 0..300u32 {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[31] = 0x40;
        let mut t = Tunn::new(StaticSecret::from(k), node_pub, None, None, i, None);
        if let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, false) {
            let p = p.to_vec();
            e.inject_datagram(me, &p);
        }
    }
    assert!(
        e.net.counters.cookie_replies > 0,
        "cookie replies under load"
    );
    assert!(e.net.counters.dropped(DropReason::UnknownPeer) > 0);
    // Drain; then the legitimate peer completes a handshake by answering the cookie.
    while recv_nonblocking(&sock).is_some() {}
    let mut t = client();
    let init = match t.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    e.inject_datagram(me, &init);
    let cookie = recv(&sock).expect("cookie reply");
    assert_eq!(cookie.len(), 64);
    assert!(matches!(
        t.decapsulate(None, &cookie, &mut buf),
        TunnResult::Done
    ));
    let init = match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("{other:?}"),
    };
    e.inject_datagram(me, &init);
    let resp = recv(&sock).expect("handshake response with valid cookie");
    assert_eq!(resp.len(), 92);
}

#[test]
fn fuzz_entry_points_never_panic() {
    let mut rng = tsk8s_test_support::Rng::new(7);
    for len in 0..400usize {
        let v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        tsk8s_runtime::fuzz_datagram(&v);
        tsk8s_runtime::fuzz_inner_packet(&v);
        let mut w = v.clone();
        if w.len() > 20 {
            // Plausible IPv4 header from the peer to the node, random transport.
            w[0] = 0x45;
            let l = (w.len() as u16).to_be_bytes();
            w[2] = l[0];
            w[3] = l[1];
            w[6] = 0;
            w[9] = [6u8, 17, 1][len % 3];
            w[12..16].copy_from_slice(&[100, 64, 0, 2]);
            w[16..20].copy_from_slice(&[100, 64, 0, 1]);
            tsk8s_runtime::fuzz_inner_packet(&w);
        }
    }
}
