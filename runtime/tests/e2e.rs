//! End-to-end tests in network namespaces: wireguard-go devices ↔ tsk8s-runtime (unprivileged).
//!
//! Skipped with a printed reason when not root / no wireguard-go / no netns, unless
//! `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` (CI), then they fail.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const NODE4: &str = "100.64.0.1";
const NODE6: &str = "fd7a:115c:a1e0::1";
const DEV4: &str = "100.64.0.2";
const BAD4: &str = "100.64.0.3";
const ADMIN: &str = "127.0.0.1:9090";

fn node_json(keys: &Keys, mode: serde_json::Value) -> String {
    json!({
        "name": "node",
        "public_key": keys.public,
        "ipv4": NODE4,
        "ipv6": NODE6,
        "listen_port": 51820,
        "admin_listen": ADMIN,
        "mode": mode,
    })
    .to_string()
}

fn rule(src: &[&str], dst: &str, first: u16, last: u16) -> serde_json::Value {
    json!({"SrcIPs": src, "DstPorts": [{"IP": dst, "Ports": {"First": first, "Last": last}}]})
}

fn mesh_json(peers: serde_json::Value, filter: serde_json::Value) -> String {
    json!({
        "domain": "tail.example",
        "peers": peers,
        "filter": filter,
        "dns": [{"name": "node.tail.example", "ipv4": NODE4, "ipv6": NODE6}],
    })
    .to_string()
}

fn client(
    keys: &Keys,
    node: &Keys,
    addr: &str,
    allowed: &[&str],
    endpoint: Option<&str>,
    port: Option<u16>,
) -> WgClient {
    WgClient {
        private_key: keys.private.clone(),
        peer_public: node.public.clone(),
        address: format!("{addr}/32"),
        allowed_ips: allowed.iter().map(|s| s.to_string()).collect(),
        endpoint: endpoint.map(|s| s.to_string()),
        listen_port: port,
        mtu: 1420,
    }
}

fn wait_healthy(lab: &Lab, ns: &str) {
    if wait_for(Duration::from_secs(15), || healthz(ns, ADMIN)).is_none() {
        panic!("runtime never became healthy:\n{}", lab.runtime_log());
    }
}

/// Proxy mode: an allowed device reaches an HTTP server in a third namespace; a device the ACL
/// does not allow gets nothing; DNS (UDP and TCP) answers; the client restarts and traffic resumes;
/// SIGTERM shuts down cleanly.
#[test]
fn proxy_acl_dns_restart() {
    if !should_run("proxy_acl_dns_restart") {
        return;
    }
    let mut lab = Lab::new();
    let c = lab.ns("c");
    let d = lab.ns("d");
    let n = lab.ns("n");
    let s = lab.ns("s");
    lab.link(&c, "10.99.1.2/24", &n, "10.99.1.1/24", "cn");
    lab.link(&d, "10.99.2.2/24", &n, "10.99.2.1/24", "dn");
    lab.link(&n, "10.99.3.1/24", &s, "10.99.3.2/24", "ns");
    http_server(&s, "10.99.3.2:8080", "hello from the service");

    let node = genkey();
    let dev = genkey();
    let bad = genkey();
    let node_cfg = node_json(
        &node,
        json!({"kind": "proxy", "target_host": "10.99.3.2",
               "ports": [{"protocol": "tcp", "listen": 80, "target": 8080}]}),
    );
    let mesh = mesh_json(
        json!([
            {"name": "node", "public_key": node.public, "allowed_ips": [format!("{NODE4}/32")]},
            {"name": "dev", "public_key": dev.public, "allowed_ips": [format!("{DEV4}/32")]},
            {"name": "bad", "public_key": bad.public, "allowed_ips": [format!("{BAD4}/32")]},
        ]),
        json!([rule(&[DEV4], NODE4, 80, 80)]),
    );
    lab.runtime(&n, &node_cfg, &mesh, &node.private);
    wait_healthy(&lab, &n);

    let wgc = client(
        &dev,
        &node,
        DEV4,
        &[&format!("{NODE4}/32")],
        Some("10.99.1.1:51820"),
        None,
    );
    let ifc = lab.wg_client(&c, "c", &wgc);
    let wgd = client(
        &bad,
        &node,
        BAD4,
        &[&format!("{NODE4}/32")],
        Some("10.99.2.1:51820"),
        None,
    );
    lab.wg_client(&d, "d", &wgd);

    let body = http_get_retry(&c, "100.64.0.1:80", Duration::from_secs(15))
        .expect("allowed device reaches the service");
    assert_eq!(body, "hello from the service");

    // The denied device: handshake works (it is a peer) but the filter drops its packets.
    let denied = http_get(&d, "100.64.0.1:80", Duration::from_secs(3));
    assert!(denied.is_err(), "denied device got through: {denied:?}");
    // An unmapped port gets nothing either (RST or timeout).
    assert!(http_get(&c, "100.64.0.1:81", Duration::from_secs(2)).is_err());

    // DNS over UDP and TCP on the node's tailnet address (always allowed, like MagicDNS).
    let resp = udp_roundtrip(
        &c,
        "100.64.0.1:53",
        dns_query("node.tail.example"),
        Duration::from_secs(2),
    )
    .expect("dns answer");
    assert_eq!(dns_parse(&resp), (0, Some([100, 64, 0, 1])));
    let resp = udp_roundtrip(
        &c,
        "100.64.0.1:53",
        dns_query("missing.tail.example"),
        Duration::from_secs(2),
    )
    .expect("dns answer");
    assert_eq!(dns_parse(&resp).0, 3, "NXDOMAIN");
    let tcp_resp = in_ns(&c, || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(
            &"100.64.0.1:53".parse().unwrap(),
            Duration::from_secs(3),
        )
        .expect("tcp 53");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let q = dns_query("node.tail.example");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).unwrap();
        msg
    });
    assert_eq!(dns_parse(&tcp_resp), (0, Some([100, 64, 0, 1])));

    let m = metrics(&n, ADMIN);
    assert!(
        metric(&m, "tsk8s_drops_total{reason=\"policy\"}").unwrap_or(0) > 0,
        "policy drops counted:\n{m}"
    );
    assert!(
        metric(&m, "tsk8s_peer_handshakes_total{peer=\"dev\"}").unwrap_or(0) >= 1,
        "{m}"
    );

    // Client restart: a new wireguard-go process (new session) re-handshakes; traffic resumes.
    lab.kill(&format!("wg:{ifc}"));
    std::thread::sleep(Duration::from_millis(300));
    lab.wg_up(&c, &ifc, &wgc);
    let body = http_get_retry(&c, "100.64.0.1:80", Duration::from_secs(20))
        .expect("traffic resumes after restart");
    assert_eq!(body, "hello from the service");
    let ok = wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&n, ADMIN),
            "tsk8s_peer_handshakes_total{peer=\"dev\"}",
        )
        .unwrap_or(0)
            >= 2
    });
    assert!(
        ok.is_some(),
        "second handshake counted:\n{}",
        metrics(&n, ADMIN)
    );

    // Clean shutdown on SIGTERM.
    lab.signal("runtime", libc::SIGTERM);
    let st = lab
        .wait_child("runtime", Duration::from_secs(5))
        .expect("runtime exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

/// Sidecar mode: tailnet port 80 → 127.0.0.1:8081 in the node's namespace. Then a config
/// reload (the mounted file changes) that removes the ACL rule: the session survives (no new
/// handshake) but new connections are denied.
#[test]
fn sidecar_and_reload() {
    if !should_run("sidecar_and_reload") {
        return;
    }
    let mut lab = Lab::new();
    let c = lab.ns("c");
    let n = lab.ns("n");
    lab.link(&c, "10.99.1.2/24", &n, "10.99.1.1/24", "cn");
    http_server(&n, "127.0.0.1:8081", "hello from the sidecar");
    let node = genkey();
    let dev = genkey();
    let node_cfg = node_json(
        &node,
        json!({"kind": "sidecar", "ports": [{"protocol": "tcp", "listen": 80, "target": 8081}]}),
    );
    let peers = json!([
        {"name": "dev", "public_key": dev.public, "allowed_ips": [format!("{DEV4}/32")]},
    ]);
    let mesh = mesh_json(peers.clone(), json!([rule(&[DEV4], NODE4, 80, 80)]));
    let files = lab.runtime(&n, &node_cfg, &mesh, &node.private);
    wait_healthy(&lab, &n);
    let wgc = client(
        &dev,
        &node,
        DEV4,
        &[&format!("{NODE4}/32")],
        Some("10.99.1.1:51820"),
        None,
    );
    lab.wg_client(&c, "c", &wgc);
    let body =
        http_get_retry(&c, "100.64.0.1:80", Duration::from_secs(15)).expect("sidecar reachable");
    assert_eq!(body, "hello from the sidecar");

    // Reload: same peers, rule removed.
    std::fs::write(&files.mesh, mesh_json(peers, json!([]))).expect("rewrite mesh");
    let reloaded = wait_for(Duration::from_secs(5), || {
        metric(&metrics(&n, ADMIN), "tsk8s_config_reloads_total").unwrap_or(0) >= 1
    });
    assert!(reloaded.is_some(), "reload noticed:\n{}", lab.runtime_log());
    assert!(
        http_get(&c, "100.64.0.1:80", Duration::from_secs(2)).is_err(),
        "rule removed → denied"
    );
    let m = metrics(&n, ADMIN);
    assert_eq!(
        metric(&m, "tsk8s_peer_handshakes_total{peer=\"dev\"}"),
        Some(1),
        "session of the unchanged peer kept:\n{m}"
    );
}

/// Subnet router: TCP and UDP to a server inside the advertised CIDR work; the same server's
/// address outside the CIDR is not reachable.
#[test]
fn subnet_router() {
    if !should_run("subnet_router") {
        return;
    }
    let mut lab = Lab::new();
    let c = lab.ns("c");
    let n = lab.ns("n");
    let s = lab.ns("s");
    lab.link(&c, "10.99.1.2/24", &n, "10.99.1.1/24", "cn");
    lab.link(&n, "10.77.1.1/24", &s, "10.77.1.2/24", "ns");
    lab.add_addr(&n, "10.77.2.1/24", "ns", "va");
    lab.add_addr(&s, "10.77.2.2/24", "ns", "vb");
    http_server(&s, "0.0.0.0:8080", "hello from the subnet");
    udp_echo(&s, "0.0.0.0:7007");
    let node = genkey();
    let dev = genkey();
    let node_cfg = node_json(
        &node,
        json!({"kind": "subnet-router", "routes": ["10.77.1.0/24"]}),
    );
    let mesh = mesh_json(
        json!([{"name": "dev", "public_key": dev.public, "allowed_ips": [format!("{DEV4}/32")]}]),
        json!([rule(&[DEV4], "10.77.0.0/16", 0, 65535)]),
    );
    lab.runtime(&n, &node_cfg, &mesh, &node.private);
    wait_healthy(&lab, &n);
    let wgc = client(
        &dev,
        &node,
        DEV4,
        &[&format!("{NODE4}/32"), "10.77.0.0/16"],
        Some("10.99.1.1:51820"),
        None,
    );
    lab.wg_client(&c, "c", &wgc);
    let body =
        http_get_retry(&c, "10.77.1.2:8080", Duration::from_secs(15)).expect("inside the route");
    assert_eq!(body, "hello from the subnet");
    let echo = udp_roundtrip(
        &c,
        "10.77.1.2:7007",
        b"ping-udp".to_vec(),
        Duration::from_secs(2),
    )
    .expect("udp inside");
    assert_eq!(echo, b"ping-udp");
    assert!(
        http_get(&c, "10.77.2.2:8080", Duration::from_secs(2)).is_err(),
        "outside the route"
    );
    assert!(
        udp_roundtrip(
            &c,
            "10.77.2.2:7007",
            b"x".to_vec(),
            Duration::from_millis(500)
        )
        .is_err()
    );
    let ok = wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&n, ADMIN),
            "tsk8s_drops_total{reason=\"no_route\"}",
        )
        .unwrap_or(0)
            > 0
    });
    assert!(ok.is_some(), "{}", metrics(&n, ADMIN));
}

/// Egress: a kernel listener on the node forwards into the tunnel to a device's address; the
/// replies pass the default-deny filter because the node opened the flow.
#[test]
fn egress_tcp_udp() {
    if !should_run("egress_tcp_udp") {
        return;
    }
    let mut lab = Lab::new();
    let c = lab.ns("c");
    let n = lab.ns("n");
    lab.link(&c, "10.99.1.2/24", &n, "10.99.1.1/24", "cn");
    http_server(&c, "0.0.0.0:8080", "hello from the device");
    udp_echo(&c, "0.0.0.0:7007");
    let node = genkey();
    let dev = genkey();
    let node_cfg = node_json(
        &node,
        json!({"kind": "egress", "target_ip": DEV4, "ports": [
            {"protocol": "tcp", "listen": 9000, "target": 8080},
            {"protocol": "udp", "listen": 9001, "target": 7007}]}),
    );
    let mesh = mesh_json(
        json!([{"name": "dev", "public_key": dev.public, "allowed_ips": [format!("{DEV4}/32")],
                "endpoint": "10.99.1.2:51821"}]),
        json!([]),
    );
    lab.runtime(&n, &node_cfg, &mesh, &node.private);
    wait_healthy(&lab, &n);
    let wgc = client(
        &dev,
        &node,
        DEV4,
        &[&format!("{NODE4}/32")],
        None,
        Some(51821),
    );
    lab.wg_client(&c, "c", &wgc);
    let body = http_get_retry(&n, "127.0.0.1:9000", Duration::from_secs(15)).expect("egress tcp");
    assert_eq!(body, "hello from the device");
    let echo = udp_roundtrip(
        &n,
        "127.0.0.1:9001",
        b"ping-egress".to_vec(),
        Duration::from_secs(2),
    )
    .expect("egress udp");
    assert_eq!(echo, b"ping-egress");
    // The device cannot open connections to the node on its own (default deny).
    http_server(&n, "0.0.0.0:8082", "should not be reachable");
    assert!(http_get(&c, "100.64.0.1:8082", Duration::from_secs(2)).is_err());
}
