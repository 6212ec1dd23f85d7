//! End-to-end tests, driven by the real compiler output: each test copies
//! `testdata/runtime/e2e/tailnet.kdl` to a temp dir, runs `tsk8s lock --keys-dir` and
//! `tsk8s build`, then in network namespaces it creates
//! - starts `tsk8s-runtime` exactly as the emitted Deployment / sidecar Component says (its
//!   `args`, its ConfigMap and Secret volumes laid out like the kubelet and mounted at their
//!   `mountPath`s, its `runAsUser`), in the namespace holding the cluster's `endpoint`;
//! - brings up wireguard-go devices from `devices/<device>.conf` with the TEST-ONLY fixture keys.
//!
//! Skipped with a printed reason when not root / no wireguard-go / no netns, unless
//! `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` (CI), then they fail.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::compiled::{Compiled, DeviceConf, fixture_dir, parse_hosts};
use common::*;

const CLUSTER: &str = "lab";
/// The cluster's `endpoint` in the spec: the address of the bridge in the node namespace.
const ENDPOINT_CIDR: &str = "10.99.0.1/24";

fn key_fixture(device: &str) -> PathBuf {
    fixture_dir().join(format!("TEST-ONLY-private-keys/{device}.TEST-ONLY.key"))
}

/// The common topology: namespace `k` (the cluster node; the runtime runs here) with a bridge
/// carrying the endpoint address, and one namespace per device attached to it.
struct World {
    lab: Lab,
    c: Compiled,
    k: String,
}

impl World {
    fn new() -> World {
        World::with_env(&[])
    }

    /// A world whose `tsk8s` runs under `env`.
    fn with_env(env: &[(&str, &str)]) -> World {
        let mut lab = Lab::new();
        let c = Compiled::new_with_env(&lab.dir, env);
        let k = lab.ns("k");
        lab.bridge(&k, ENDPOINT_CIDR);
        World { lab, c, k }
    }

    /// A namespace for `device` on the node's segment, its wireguard-go up from its config.
    fn device(&mut self, device: &str, role: &str, addr: &str) -> (String, String, DeviceConf) {
        let ns = self.lab.ns(role);
        self.lab.attach(&ns, addr, &self.k, role);
        let conf = self.c.device_conf(device);
        let ifname = self.lab.wg_device(&ns, role, &conf, &key_fixture(device));
        (ns, ifname, conf)
    }

    fn runtime(&mut self, node: &str) -> Running {
        let w = self.c.workload(CLUSTER, node);
        let r = self.lab.start_workload(&self.k, &w);
        let admin = r.admin();
        let ns = r.ns.clone();
        if wait_for(Duration::from_secs(15), || healthz(&ns, &admin)).is_none() {
            panic!(
                "runtime {node} never became healthy:\n{}",
                self.lab.runtime_log()
            );
        }
        // It runs with exactly the workload's args, UID/GID and no capabilities.
        let pid = self.lab.pid(&r.label).expect("runtime pid");
        let argv = self.lab.argv(&r.label);
        assert_eq!(argv.get(1..), Some(w.args.as_slice()), "runtime argv");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(field("Uid:"), vec![w.uid.to_string(); 4], "{status}");
        assert_eq!(field("Gid:"), vec![w.gid.to_string(); 4], "{status}");
        assert_eq!(field("CapEff:"), vec!["0000000000000000".to_string()]);
        assert_eq!(field("CapPrm:"), vec!["0000000000000000".to_string()]);
        assert_eq!(field("NoNewPrivs:"), vec!["1".to_string()]);
        r
    }

    /// Wait (up to 5 s) until the runtime behind `admin` has reloaded its config once.
    fn wait_reload(&self, admin: &str) {
        let reloaded = wait_for(Duration::from_secs(5), || {
            metric(&metrics(&self.k, admin), "tsk8s_config_reloads_total").unwrap_or(0) >= 1
        });
        assert!(
            reloaded.is_some(),
            "reload noticed:\n{}",
            self.lab.runtime_log()
        );
    }

    /// The namespace of `web.shop.svc` (10.99.3.2, linked to the node namespace, which
    /// resolves the name through its hosts file); the caller starts its servers.
    fn web_service(&mut self) -> String {
        let k = self.k.clone();
        let s = self.lab.ns("s");
        self.lab.link(&k, "10.99.3.1/24", &s, "10.99.3.2/24", "ks");
        self.lab.ns_hosts(&k, &[("10.99.3.2", "web.shop.svc")]);
        s
    }

    fn ip_of(&self, node: &str) -> String {
        self.c.workload(CLUSTER, node).node_json()["ipv4"]
            .as_str()
            .expect("ipv4")
            .to_string()
    }

    fn ip6_of(&self, node: &str) -> String {
        self.c.workload(CLUSTER, node).node_json()["ipv6"]
            .as_str()
            .expect("ipv6")
            .to_string()
    }
}

fn dns_over_tcp(ns: &str, server: &str, name: &str) -> Vec<u8> {
    let addr: std::net::SocketAddr = format!("{server}:53").parse().expect("addr");
    let q = dns_query(name);
    in_ns(ns, move || {
        use std::io::{Read, Write};
        let mut s =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("tcp 53");
        s.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).expect("write");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).expect("read len");
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut msg).expect("read msg");
        msg
    })
}

/// One ICMP echo from inside `ns` (iputils ping); true when answered.
fn ping(ns: &str, ip: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-n", "-q", "-c", "2", "-W", "2", ip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `peer` handshook once: its session was kept.
fn assert_one_handshake(ns: &str, admin: &str, peer: &str) {
    let mt = metrics(ns, admin);
    assert_eq!(
        metric(
            &mt,
            &format!("tsk8s_peer_handshakes_total{{peer=\"{peer}\"}}")
        ),
        Some(1),
        "session of the unchanged peer kept:\n{mt}"
    );
}

fn octets(ip: &str) -> [u8; 4] {
    ip.parse::<std::net::Ipv4Addr>().expect("ipv4").octets()
}

/// Proxy node `web` (→ `web.shop.svc:8080/8443`, resolved through the node namespace's hosts
/// file): alice may use port 80, mallory only 443. DNS over UDP and TCP at the server the
/// device config suggests; IPv6; alice's client restarts and traffic resumes; SIGTERM.
#[test]
fn proxy_acl_dns_restart() {
    if !should_run("proxy_acl_dns_restart") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let s = w.web_service();
    http_server(&s, "10.99.3.2:8080", "hello from web:8080");
    http_server(&s, "10.99.3.2:8443", "hello from web:8443");

    let web = w.runtime("web");
    let admin = web.admin();
    let web4 = w.ip_of("web");
    let web6 = w.ip6_of("web");
    let (a, a_if, a_conf) = w.device("alice", "a", "10.99.0.2/24");
    let (m, _, m_conf) = w.device("mallory", "m", "10.99.0.3/24");

    // The generated configs: both devices have the web node as a peer at the endpoint, and
    // alice's hosts snippet names it.
    assert_eq!(
        a_conf.peer_value("web", "Endpoint").as_deref(),
        Some("10.99.0.1:30000"),
        "{}",
        a_conf.text
    );
    assert!(m_conf.peer("web").is_some(), "{}", m_conf.text);
    assert!(m_conf.peer("side").is_none(), "mallory may not reach side");
    let hosts = parse_hosts(&w.c.device_hosts("alice"));
    assert_eq!(hosts.get("web.e2e.test"), Some(&web4), "alice.hosts");

    // alice → web:80 (allowed).
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(15))
        .expect("alice reaches web:80");
    assert_eq!(body, "hello from web:8080");
    // Over IPv6 too.
    let body = http_get_retry(&a, &format!("[{web6}]:80"), Duration::from_secs(5))
        .expect("alice reaches web:80 over IPv6");
    assert_eq!(body, "hello from web:8080");
    // alice → web:443: not in the ACL.
    assert!(http_get(&a, &format!("{web4}:443"), Duration::from_secs(2)).is_err());

    // mallory: its tunnel works (443 is allowed) but port 80 gets nothing.
    let body = http_get_retry(&m, &format!("{web4}:443"), Duration::from_secs(15))
        .expect("mallory reaches web:443");
    assert_eq!(body, "hello from web:8443");
    let denied = http_get(&m, &format!("{web4}:80"), Duration::from_secs(3));
    assert!(denied.is_err(), "mallory got through to :80: {denied:?}");
    // An unmapped port gets nothing either.
    assert!(http_get(&a, &format!("{web4}:81"), Duration::from_secs(2)).is_err());

    // DNS at the server mallory's config suggests (the web node), UDP and TCP.
    let dns = m_conf
        .suggested_dns()
        .expect("config suggests a DNS server");
    assert_eq!(dns, web4, "{}", m_conf.text);
    let resp = udp_roundtrip(
        &m,
        &format!("{dns}:53"),
        dns_query("web.e2e.test"),
        Duration::from_secs(2),
    )
    .expect("dns answer");
    assert_eq!(dns_parse(&resp), (0, Some(octets(&web4))));
    let resp = udp_roundtrip(
        &a,
        &format!("{dns}:53"),
        dns_query("missing.e2e.test"),
        Duration::from_secs(2),
    )
    .expect("dns answer");
    assert_eq!(dns_parse(&resp).0, 3, "NXDOMAIN");
    let side4 = w.ip_of("side");
    let tcp_resp = dns_over_tcp(&a, &dns, "side.e2e.test");
    assert_eq!(dns_parse(&tcp_resp), (0, Some(octets(&side4))));

    let mt = metrics(&k, &admin);
    assert!(
        metric(&mt, "tsk8s_drops_total{reason=\"policy\"}").unwrap_or(0) > 0,
        "policy drops counted:\n{mt}"
    );
    assert!(
        metric(&mt, "tsk8s_peer_handshakes_total{peer=\"alice\"}").unwrap_or(0) >= 1,
        "{mt}"
    );

    // Client restart: a new wireguard-go process (new session) re-handshakes; traffic resumes.
    w.lab.kill(&format!("wg:{a_if}"));
    std::thread::sleep(Duration::from_millis(300));
    w.lab
        .wg_device_up(&a, &a_if, &a_conf, &key_fixture("alice"));
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(20))
        .expect("traffic resumes after restart");
    assert_eq!(body, "hello from web:8080");
    let ok = wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&k, &admin),
            "tsk8s_peer_handshakes_total{peer=\"alice\"}",
        )
        .unwrap_or(0)
            >= 2
    });
    assert!(
        ok.is_some(),
        "second handshake counted:\n{}",
        metrics(&k, &admin)
    );

    // Clean shutdown on SIGTERM.
    w.lab.signal(&web.label, libc::SIGTERM);
    let st = w
        .lab
        .wait_child(&web.label, Duration::from_secs(5))
        .expect("runtime exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

/// Sidecar `side`: the runtime container from the Component's patch (both JSON files in one
/// ConfigMap), tailnet port 8081 → 127.0.0.1:8081 in the pod. Then the spec loses alice's rule,
/// `tsk8s build` runs again and the kubelet-style `..data` swap delivers the new ConfigMap: the
/// session survives (no new handshake) but new connections are denied.
#[test]
fn sidecar_and_reload() {
    if !should_run("sidecar_and_reload") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    http_server(&k, "127.0.0.1:8081", "hello from the sidecar");
    let side = w.runtime("side");
    let admin = side.admin();
    // In the app's pod the admin server is on loopback only, probed by the binary's own check.
    assert!(admin.starts_with("127.0.0.1:"), "{admin}");
    let refused = in_ns(&k, || {
        std::net::TcpStream::connect_timeout(
            &"10.99.0.1:9901".parse().expect("addr"),
            Duration::from_secs(1),
        )
        .is_err()
    });
    assert!(refused, "sidecar admin port reachable on the pod IP");
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &side.workload.container[probe];
        assert!(p["timeoutSeconds"].as_u64().is_some(), "{probe}: {p}");
        let cmd: Vec<String> = p["exec"]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{probe} is not an exec probe: {p}"))
            .iter()
            .map(|a| a.as_str().expect("string").to_string())
            .collect();
        assert_eq!(
            cmd.first().map(String::as_str),
            Some("/tsk8s-runtime"),
            "{cmd:?}"
        );
        let st = std::process::Command::new("ip")
            .args(["netns", "exec", &k, &runtime_bin()])
            .args(&cmd[1..])
            .status()
            .expect("probe");
        assert!(st.success(), "{probe} {cmd:?} failed");
    }
    assert!(
        side.workload.container["ports"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["name"] != "admin")),
        "no admin container port in the app's pod"
    );
    let side4 = w.ip_of("side");
    let (a, _, a_conf) = w.device("alice", "a", "10.99.0.2/24");
    assert_eq!(a_conf.suggested_dns().as_deref(), Some(side4.as_str()));
    let body = http_get_retry(&a, &format!("{side4}:8081"), Duration::from_secs(15))
        .expect("sidecar reachable");
    assert_eq!(body, "hello from the sidecar");
    // DNS through the sidecar node (the server alice's config suggests).
    let resp = udp_roundtrip(
        &a,
        &format!("{side4}:53"),
        dns_query("web.e2e.test"),
        Duration::from_secs(2),
    )
    .expect("dns answer");
    assert_eq!(dns_parse(&resp), (0, Some(octets(&w.ip_of("web")))));

    // Reload: the spec loses the rule; rebuild; deliver the new ConfigMap.
    let before = w.c.workload(CLUSTER, "side");
    w.c.edit(|s| {
        s.replace(
            "    accept src=\"alice@e2e.test\" dst=\"tag:side:8081\"\n",
            "",
        )
    });
    let after = w.c.workload(CLUSTER, "side");
    let (m_before, m_after) = (&before.mounts, &after.mounts);
    let mut changed = 0;
    for (b, a2) in m_before.iter().zip(m_after.iter()) {
        if b.source.data() != a2.source.data() {
            side.update_volume(&a2.volume, a2.source.data());
            changed += 1;
        }
    }
    assert_eq!(changed, 1, "exactly the ConfigMap volume changed");
    w.wait_reload(&admin);
    assert!(
        http_get(&a, &format!("{side4}:8081"), Duration::from_secs(2)).is_err(),
        "rule removed → denied"
    );
    // Without a grant on this node alice gets no DNS from it either.
    assert!(
        udp_roundtrip(
            &a,
            &format!("{side4}:53"),
            dns_query("web.e2e.test"),
            Duration::from_millis(700),
        )
        .is_err(),
        "DNS answered to a peer with no grant on the node"
    );
    assert_one_handshake(&k, &admin, "alice");
}

/// A sharded mesh: `TSK8S_MESH_SHARD_BYTES` (for tests) makes the small spec's cluster mesh
/// several ConfigMaps `tsk8s-mesh-<n>`, which the web node's Deployment mounts through one
/// projected volume; the runtime merges them and traffic works. Then mallory's device key
/// changes in the spec: exactly one shard changes, the kubelet-style `..data` swap delivers it,
/// and the runtime reloads live: mallory's old key gets nothing, alice's session is kept.
#[test]
fn sharded_mesh_reload() {
    if !should_run("sharded_mesh_reload") {
        return;
    }
    let mut w = World::with_env(&[("TSK8S_MESH_SHARD_BYTES", "1536")]);
    let k = w.k.clone();
    let cluster_dir = w.c.out.join("clusters").join(CLUSTER);
    let shard_files: Vec<String> = std::fs::read_dir(&cluster_dir)
        .expect("cluster dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("mesh-") && n.ends_with(".yaml"))
        .collect();
    assert!(shard_files.len() >= 3, "shards: {shard_files:?}");
    let s = w.web_service();
    http_server(&s, "10.99.3.2:8080", "hello from web:8080");
    http_server(&s, "10.99.3.2:8443", "hello from web:8443");

    let web = w.runtime("web");
    let admin = web.admin();
    let mesh = web
        .workload
        .mounts
        .iter()
        .find(|m| m.path == "/etc/tsk8s/mesh")
        .expect("mesh mount");
    assert_eq!(
        mesh.source.data().len(),
        shard_files.len(),
        "one projected volume holds every shard: {:?}",
        mesh.source.data().keys()
    );
    let web4 = w.ip_of("web");
    let (a, _, _) = w.device("alice", "a", "10.99.0.2/24");
    let (m, _, _) = w.device("mallory", "m", "10.99.0.3/24");
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(15))
        .expect("alice reaches web:80");
    assert_eq!(body, "hello from web:8080");
    let body = http_get_retry(&m, &format!("{web4}:443"), Duration::from_secs(15))
        .expect("mallory reaches web:443");
    assert_eq!(body, "hello from web:8443");

    let before = w.c.workload(CLUSTER, "web");
    // mallory's device gets a new key: her peer line changes in place (same name, same
    // length), so exactly one shard changes and the shard count stays.
    w.c.edit(|s| {
        s.replace(
            "9N9mPy8k48lfhY2TfeSD3pp4iAUqAOI/uq1CCin8ETk=",
            "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        )
    });
    let after = w.c.workload(CLUSTER, "web");
    let old = &before
        .mounts
        .iter()
        .find(|m| m.volume == mesh.volume)
        .expect("mesh")
        .source;
    let new = &after
        .mounts
        .iter()
        .find(|m| m.volume == mesh.volume)
        .expect("mesh")
        .source;
    assert_eq!(old.data().len(), new.data().len(), "same shard count");
    let changed = old
        .data()
        .iter()
        .filter(|(k, v)| new.data().get(*k) != Some(*v))
        .count();
    assert_eq!(
        changed,
        1,
        "{changed} of {} shards changed",
        old.data().len()
    );
    web.update_volume(&mesh.volume, new.data());
    w.wait_reload(&admin);
    assert!(
        http_get(&m, &format!("{web4}:443"), Duration::from_secs(3)).is_err(),
        "mallory's old key is no longer a peer"
    );
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(5))
        .expect("alice still reaches web:80");
    assert_eq!(body, "hello from web:8080");
    assert_one_handshake(&k, &admin, "alice");
}

/// Subnet router `lan` (10.77.1.0/24): TCP and UDP to a server inside the route work; the same
/// server's address outside it is not in alice's config, and when alice routes it into the
/// tunnel anyway (a tampered client), the runtime drops it (`no_route`).
#[test]
fn subnet_router() {
    if !should_run("subnet_router") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let s = w.lab.ns("s");
    w.lab.link(&k, "10.77.1.1/24", &s, "10.77.1.2/24", "ks");
    w.lab.add_addr(&k, "10.77.2.1/24", "ks", "va");
    w.lab.add_addr(&s, "10.77.2.2/24", "ks", "vb");
    http_server(&s, "0.0.0.0:8080", "hello from the subnet");
    udp_echo(&s, "0.0.0.0:7007");
    let lan = w.runtime("lan");
    let admin = lan.admin();
    let (a, a_if, a_conf) = w.device("alice", "a", "10.99.0.2/24");
    assert_eq!(
        a_conf.peer_value("lan", "AllowedIPs").as_deref(),
        Some("10.77.1.0/24"),
        "{}",
        a_conf.text
    );
    let body =
        http_get_retry(&a, "10.77.1.2:8080", Duration::from_secs(15)).expect("inside the route");
    assert_eq!(body, "hello from the subnet");
    let echo = udp_roundtrip(
        &a,
        "10.77.1.2:7007",
        b"ping-udp".to_vec(),
        Duration::from_secs(2),
    )
    .expect("udp inside");
    assert_eq!(echo, b"ping-udp");
    // ICMP echo through the router uses an unprivileged ping socket. The kernel default
    // `net.ipv4.ping_group_range = 1 0` admits no group: counted, nothing sent.
    assert!(
        !ping(&a, "10.77.1.2"),
        "no ping socket under the kernel default"
    );
    let mt = metrics(&k, &admin);
    assert!(
        metric(&mt, "tsk8s_drops_total{reason=\"ping_unavailable\"}").unwrap_or(0) > 0,
        "{mt}"
    );
    // What containerd ≥ 2.0 and CRI-O set for every pod (and what a pod may request as a
    // safe sysctl): the runtime's group may open ping sockets.
    sh(&[
        "ip",
        "netns",
        "exec",
        &k,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ping_group_range=0 2147483647",
    ]);
    assert!(ping(&a, "10.77.1.2"), "ping through the subnet router");
    // Outside the route: the generated config does not route it.
    assert!(http_get(&a, "10.77.2.2:8080", Duration::from_secs(2)).is_err());
    // A client that routes it into the tunnel anyway: the runtime drops it.
    let lan_key = a_conf.peer_value("lan", "PublicKey").expect("lan key");
    sh(&[
        "ip",
        "netns",
        "exec",
        &a,
        "wg",
        "set",
        &a_if,
        "peer",
        &lan_key,
        "allowed-ips",
        "10.77.1.0/24,10.77.2.0/24",
    ]);
    sh(&[
        "ip",
        "-n",
        &a,
        "route",
        "replace",
        "10.77.2.0/24",
        "dev",
        &a_if,
    ]);
    assert!(
        http_get(&a, "10.77.2.2:8080", Duration::from_secs(2)).is_err(),
        "outside the route"
    );
    assert!(
        udp_roundtrip(
            &a,
            "10.77.2.2:7007",
            b"x".to_vec(),
            Duration::from_millis(500)
        )
        .is_err()
    );
    let ok = wait_for(Duration::from_secs(3), || {
        metric(
            &metrics(&k, &admin),
            "tsk8s_drops_total{reason=\"no_route\"}",
        )
        .unwrap_or(0)
            > 0
    });
    assert!(ok.is_some(), "{}", metrics(&k, &admin));
}

/// Egress `to-alice` (cluster port 9000 → alice:8080 TCP, 9001 → alice:7007 UDP): the kernel
/// listener on the node forwards into the tunnel; alice's config keeps the session up
/// (PersistentKeepalive) so the node can reach a roaming device; replies pass the default-deny
/// filter because the node opened the flow, and alice cannot open connections to the node.
#[test]
fn egress_tcp_udp() {
    if !should_run("egress_tcp_udp") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let _eg = w.runtime("to-alice");
    let (a, _, a_conf) = w.device("alice", "a", "10.99.0.2/24");
    assert_eq!(
        a_conf
            .peer_value("to-alice", "PersistentKeepalive")
            .as_deref(),
        Some("25"),
        "{}",
        a_conf.text
    );
    http_server(&a, "0.0.0.0:8080", "hello from alice");
    udp_echo(&a, "0.0.0.0:7007");
    let body = http_get_retry(&k, "127.0.0.1:9000", Duration::from_secs(15)).expect("egress tcp");
    assert_eq!(body, "hello from alice");
    let echo = udp_roundtrip(
        &k,
        "127.0.0.1:9001",
        b"ping-egress".to_vec(),
        Duration::from_secs(2),
    )
    .expect("egress udp");
    assert_eq!(echo, b"ping-egress");
    // The device cannot open connections to the node on its own (default deny).
    http_server(&k, "0.0.0.0:8082", "should not be reachable");
    let eg4 = w.ip_of("to-alice");
    assert!(http_get(&a, &format!("{eg4}:8082"), Duration::from_secs(2)).is_err());
}

/// Probes of the runtime's own pods are httpGet on the admin port with an explicit timeout; a
/// client trickling one byte every 1.5 s on many connections at once never makes `/healthz`
/// fail (the admin server is concurrent, with a short header timeout).
#[test]
fn admin_answers_under_slow_clients() {
    if !should_run("admin_answers_under_slow_clients") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let web = w.runtime("web");
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &web.workload.container[probe];
        assert_eq!(p["httpGet"]["path"], "/healthz", "{probe}: {p}");
        assert_eq!(p["httpGet"]["port"], "admin", "{probe}: {p}");
        assert!(p["timeoutSeconds"].as_u64().is_some(), "{probe}: {p}");
    }
    let admin = web.admin();
    let addr: std::net::SocketAddr = admin.parse().expect("admin addr");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..24 {
        let stop = stop.clone();
        spawn_in_ns(&k, move || {
            use std::io::Write;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut c) = std::net::TcpStream::connect(addr) else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                for b in b"GET /healthz HTTP/1.0\r\n\r\n" {
                    if stop.load(std::sync::atomic::Ordering::Relaxed)
                        || c.write_all(&[*b]).is_err()
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1500));
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let start = std::time::Instant::now();
    let mut probes = 0;
    while start.elapsed() < Duration::from_secs(8) {
        assert!(
            healthz(&k, &admin),
            "/healthz failed under slow clients after {:?}",
            start.elapsed()
        );
        probes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(probes > 10);
    // The probe subcommand agrees.
    let ok = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &k,
            &runtime_bin(),
            "health",
            "--addr",
            &admin,
        ])
        .status()
        .expect("health");
    assert!(ok.success());
    let bad = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &k,
            &runtime_bin(),
            "health",
            "--addr",
            "127.0.0.1:1",
        ])
        .status()
        .expect("health");
    assert_eq!(bad.code(), Some(1), "nothing listening → unhealthy");
}

/// The proxy target is a name resolved off the packet thread, again every 30 s and at once
/// when a connect to it fails: when `web.shop.svc` moves to a new address (the hosts file the
/// runtime resolves through changes, the old address goes away), traffic follows it without a
/// config reload.
#[test]
fn proxy_target_follows_its_name() {
    if !should_run("proxy_target_follows_its_name") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let s = w.web_service();
    w.lab.add_addr(&k, "10.99.4.1/24", "ks", "va");
    w.lab.add_addr(&s, "10.99.4.2/24", "ks", "vb");
    http_server(&s, "10.99.3.2:8080", "old address");
    http_server(&s, "10.99.4.2:8080", "new address");
    let _web = w.runtime("web");
    let web4 = w.ip_of("web");
    let (a, _, _) = w.device("alice", "a", "10.99.0.2/24");
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(15))
        .expect("alice reaches web:80");
    assert_eq!(body, "old address");
    // The Service moves: the name now resolves to the new address; the old one is gone.
    w.lab.ns_hosts(&k, &[("10.99.4.2", "web.shop.svc")]);
    let dev = w.lab.ifname("vb", "ks");
    sh(&["ip", "-n", &s, "addr", "del", "10.99.3.2/24", "dev", &dev]);
    let start = std::time::Instant::now();
    let moved = wait_for(Duration::from_secs(40), || {
        http_get(&a, &format!("{web4}:80"), Duration::from_secs(5)).as_deref() == Ok("new address")
    });
    assert!(
        moved.is_some(),
        "proxy never followed the name:\n{}",
        w.lab.runtime_log()
    );
    eprintln!(
        "proxy followed the target's new address after {:?}",
        start.elapsed()
    );
}

/// Egress `to-alice` restarted while alice keeps her session: the new process has no endpoint
/// for alice (a roaming device) and alice re-handshakes on her own only after minutes
/// (measured 110–112 s). Her next keepalive, undecryptable for the new process, is answered
/// with a handshake initiation, so traffic to her flows again within her keepalive interval.
#[test]
fn egress_recovers_after_restart() {
    if !should_run("egress_recovers_after_restart") {
        return;
    }
    let mut w = World::new();
    let k = w.k.clone();
    let eg = w.runtime("to-alice");
    let (a, _, _) = w.device("alice", "a", "10.99.0.2/24");
    http_server(&a, "0.0.0.0:8080", "hello from alice");
    // alice's keepalive config handshakes at once; no data after that, so alice sends only
    // keepalives and has no reason of her own to re-handshake soon.
    let up = wait_for(Duration::from_secs(10), || {
        metric(
            &metrics(&k, &eg.admin()),
            "tsk8s_peer_handshakes_total{peer=\"alice\"}",
        )
        .unwrap_or(0)
            >= 1
    });
    assert!(up.is_some(), "alice never handshook");
    w.lab.kill(&eg.label);
    let eg = w.runtime("to-alice");
    let start = std::time::Instant::now();
    let back = wait_for(Duration::from_secs(30), || {
        http_get(&k, "127.0.0.1:9000", Duration::from_secs(2)).as_deref() == Ok("hello from alice")
    });
    let took = start.elapsed();
    assert!(
        back.is_some(),
        "no traffic to alice 30 s after the restart:\n{}\n{}",
        metrics(&k, &eg.admin()),
        w.lab.runtime_log()
    );
    eprintln!("egress reached alice again {took:?} after the restart");
    // Metrics are rendered once a second.
    let probed = wait_for(Duration::from_secs(3), || {
        metric(&metrics(&k, &eg.admin()), "tsk8s_handshake_probes_total").unwrap_or(0) >= 1
    });
    assert!(probed.is_some(), "{}", metrics(&k, &eg.admin()));
}

/// An HTTP server answering `GET /bulk` with `bulk` bytes and anything else with `hello`.
fn hello_and_bulk_server(ns: &str, addr: &str, hello: &'static str, bulk: usize) {
    use std::io::Write;
    http_serve(ns, addr, move |req, c| {
        if req.starts_with(b"GET /bulk ") {
            let _ = write!(c, "HTTP/1.0 200 OK\r\nContent-Length: {bulk}\r\n\r\n");
            let chunk = [b'x'; 65_536];
            let mut left = bulk;
            while left > 0 {
                let n = left.min(chunk.len());
                if c.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        } else {
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{hello}",
                hello.len()
            );
        }
    });
}

/// `GET /bulk` from inside `ns`: Mbit/s of the whole answer (0 on failure).
fn bulk_mbps(ns: &str, addr: &str) -> f64 {
    bulk_transfer(ns, addr).1
}

/// `GET /bulk` from `ns`: the bytes received (headers included) and the rate in Mbit/s.
fn bulk_transfer(ns: &str, addr: &str) -> (usize, f64) {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    in_ns(ns, move || {
        let start = std::time::Instant::now();
        let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return (0, 0.0);
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
        if write!(c, "GET /bulk HTTP/1.0\r\nHost: x\r\n\r\n").is_err() {
            return (0, 0.0);
        }
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        (
            total,
            total as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6,
        )
    })
}

/// The flood tests' world: the web node's runtime in front of a server with `GET /bulk`
/// (alice's 32 MiB transfer: the legitimate peer's throughput, unloaded and under the flood,
/// printed for runtime/README.md's tables, not asserted: rule 4), alice's device (web:80 is
/// hers) and mallory's (443 only), both tunnels up. Returns the world (keep it alive), the
/// runtime, alice's and mallory's namespaces, and web's IPv4.
fn flood_world() -> (World, Running, String, String, String) {
    let mut w = World::new();
    let s = w.web_service();
    hello_and_bulk_server(&s, "10.99.3.2:8080", "hello from web:8080", 32 << 20);
    let web = w.runtime("web");
    let web4 = w.ip_of("web");
    let (a, _, _) = w.device("alice", "a", "10.99.0.2/24");
    let (m, _, _) = w.device("mallory", "m", "10.99.0.3/24");
    let body = http_get_retry(&a, &format!("{web4}:80"), Duration::from_secs(15))
        .expect("alice reaches web:80");
    assert_eq!(body, "hello from web:8080");
    // Mallory's tunnel is up (443 is hers; nothing listens behind it here, the handshake is
    // enough).
    let _ = http_get_retry(&m, &format!("{web4}:443"), Duration::from_secs(5));
    (w, web, a, m, web4)
}

/// A flood that keeps sending during alice's transfer: mallory (allowed on port 443 only, so
/// the node answers her DNS) sends DNS queries over UDP to the web node from two threads as
/// fast as her device takes them, for as long as alice's transfer runs. Every one of them costs
/// the one packet thread its decryption and an answer; the runtime's per-peer fair queues
/// (`engine::fair`, on by default) serve both peers in DRR order and, when full, drop the
/// peer with the most queued work, only when the socket's buffer is half full. Alice's 32 MiB
/// transfer completes under the flood, every time, and the fair queue drops none of her
/// packets. Three interleaved rounds (unloaded, flooded). The rates are printed, not asserted
/// (rule 6: speed is measured by benchmarks, never by timed assertions): on this 2-core
/// machine the flood's own generator and mallory's wireguard-go run beside alice's and the
/// runtime, so the ratio follows the machine's load — 39–140 % on the idle VM, where alice's
/// unloaded transfers run at 400–990 Mbit/s; an earlier 40 % floor failed there in 1 of 5
/// runs of the unchanged code (and 1 of 5 of a trial build). The 90 % goal is measured and recorded in runtime/README.md,
/// with the runtime's CPU use, which this prints with the rates and drop counters.
#[test]
fn sustained_flood_leaves_alice_her_share() {
    if !should_run("sustained_flood_leaves_alice_her_share") {
        return;
    }
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (w, web, a, m, web4) = flood_world();
    let (k, admin) = (w.k.clone(), web.admin());

    let target: std::net::SocketAddr = format!("{web4}:53").parse().expect("addr");
    let flooding = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    for _ in 0..2 {
        let (flooding, done, sent) = (flooding.clone(), done.clone(), sent.clone());
        spawn_in_ns(&m, move || {
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            let _ = sock.set_read_timeout(Some(Duration::from_millis(1)));
            let q = dns_query("web.e2e.test");
            let mut buf = [0u8; 512];
            while !done.load(Ordering::Relaxed) {
                if !flooding.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                for _ in 0..64 {
                    if sock.send_to(&q, target).is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Drain whatever answers came back (not waited for).
                while sock.recv(&mut buf).is_ok() {}
            }
        });
    }
    let bulk = format!("{web4}:80");
    let full = 32usize << 20;
    let (mut unloaded, mut loaded) = (Vec::new(), Vec::new());
    let mut flood_rates = Vec::new();
    // The runtime's CPU time (user + system, clock ticks) over each transfer: is the packet
    // thread saturated (near 100 % of one core) or is alice limited elsewhere?
    let pid = w.lab.pid(&web.label).expect("runtime pid");
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
        f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (mut cpu_unloaded, mut cpu_loaded) = (Vec::new(), Vec::new());
    let timed = |r: &mut Vec<f64>| {
        let (c0, t0) = (cpu_ticks(), std::time::Instant::now());
        let out = bulk_transfer(&a, &bulk);
        let pct = (cpu_ticks() - c0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
        r.push(pct);
        out
    };
    for _ in 0..3 {
        let (n, r) = timed(&mut cpu_unloaded);
        assert!(n >= full, "alice's unloaded transfer: {n} bytes");
        unloaded.push(r);
        let before = sent.load(Ordering::Relaxed);
        flooding.store(true, Ordering::Relaxed);
        // The flood is running before alice starts.
        std::thread::sleep(Duration::from_millis(500));
        let t = std::time::Instant::now();
        let (n, r) = timed(&mut cpu_loaded);
        let during = sent.load(Ordering::Relaxed) - before;
        flooding.store(false, Ordering::Relaxed);
        assert!(n >= full, "alice's transfer under the flood: {n} bytes");
        loaded.push(r);
        flood_rates.push(during as f64 / (t.elapsed().as_secs_f64() + 0.5));
        std::thread::sleep(Duration::from_millis(500));
    }
    done.store(true, Ordering::Relaxed);
    assert!(healthz(&k, &admin), "/healthz answers after the flood");
    let mt = metrics(&k, &admin);
    let drop_of = |p: &str| {
        metric(
            &mt,
            &format!("tsk8s_peer_fair_share_drops_total{{node=\"web\",peer=\"{p}\"}}"),
        )
        .or_else(|| {
            metric(
                &mt,
                &format!("tsk8s_peer_fair_share_drops_total{{peer=\"{p}\"}}"),
            )
        })
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (u, l) = (median(&mut unloaded.clone()), median(&mut loaded.clone()));
    eprintln!(
        "sustained flood: mallory's DNS queries/s while flooding {flood_rates:.0?}; alice's 32 MiB \
         transfer, three interleaved rounds, Mbit/s: unloaded {unloaded:.0?} (median {u:.0}), \
         flooded {loaded:.0?} (median {l:.0}): {:.0} %; runtime CPU, % of one core: unloaded \
         {cpu_unloaded:.0?}, flooded {cpu_loaded:.0?}; fair_share drops: total {:?}, mallory {:?}, \
         alice {:?}",
        l / u * 100.0,
        metric(&mt, "tsk8s_drops_total{reason=\"fair_share\"}"),
        drop_of("mallory"),
        drop_of("alice"),
    );
    assert_eq!(
        drop_of("alice"),
        Some(0),
        "the fair queue dropped alice's packets"
    );
}

/// Memory under a hostile peer: mallory may reach the web node on port 443 only (so the node
/// answers her DNS) and opens 1,200 DNS-over-TCP connections, each sending 65 KB of a message
/// that never completes (measured before the memory budget: RSS 4.6 → 164 MB, over the
/// Deployment's 128 Mi limit). Her connections beyond her share are refused and counted; the
/// runtime's RSS stays bounded, and alice's requests still go through meanwhile. Five rounds
/// of open / hold / close, alice's bulk transfer before and during each hold (printed).
#[test]
fn dns_tcp_flood_is_bounded() {
    if !should_run("dns_tcp_flood_is_bounded") {
        return;
    }
    // One socket per connection in this process.
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: plain setrlimit on this (root) test process.
    unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let (w, web, a, m, web4) = flood_world();
    let (k, admin) = (w.k.clone(), web.admin());

    // Mallory's flood, on command: open the 1,200 connections and push the payloads
    // (whatever the windows take) for up to 8 s, report, hold them until told to close.
    let target: std::net::SocketAddr = format!("{web4}:53").parse().expect("addr");
    let (cmd_tx, cmd_rx) = std::sync::mpsc::channel::<bool>();
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(&m, move || {
        use std::io::Write;
        let mut payload = vec![0xffu8, 0xff];
        payload.extend(std::iter::repeat_n(b'x', 65_000));
        while let Ok(true) = cmd_rx.recv() {
            let mut open = Vec::new();
            let mut refused = 0;
            for _ in 0..1200 {
                match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(c) => {
                        let _ = c.set_nonblocking(true);
                        open.push((c, 0usize));
                    }
                    Err(_) => refused += 1,
                }
            }
            // Until nothing moved for 0.5 s (or 8 s), then 1 s for the last bytes to arrive.
            let until = std::time::Instant::now() + Duration::from_secs(8);
            let mut idle = 0;
            while idle < 5 && std::time::Instant::now() < until {
                idle += 1;
                for (c, sent) in open.iter_mut() {
                    if *sent < payload.len()
                        && let Ok(n) = c.write(&payload[*sent..])
                        && n > 0
                    {
                        *sent += n;
                        idle = 0;
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            std::thread::sleep(Duration::from_secs(1));
            let _ = tx.send((open.len(), refused));
            // Hold them open until the next command.
            let _ = cmd_rx.recv();
            drop(open);
            let _ = tx.send((0, 0));
        }
    });
    // Alice's transfer, unloaded and while the flood's connections are held open, interleaved
    // (the VM is noisy: one transfer alone varies 2x); medians printed for runtime/README.md,
    // not asserted (rule 4).
    let bulk = format!("{web4}:80");
    let (mut unloaded, mut loaded) = (Vec::new(), Vec::new());
    let mut first = None;
    for round in 0..5 {
        unloaded.push(bulk_mbps(&a, &bulk));
        cmd_tx.send(true).expect("flood thread");
        let (opened, refused) = rx
            .recv_timeout(Duration::from_secs(240))
            .expect("flood done");
        if round == 0 {
            // While her connections are held open: alice still gets through.
            let body = http_get(&a, &bulk, Duration::from_secs(5))
                .expect("alice's request during the flood");
            assert_eq!(body, "hello from web:8080");
        }
        loaded.push(bulk_mbps(&a, &bulk));
        if round == 0 {
            assert!(healthz(&k, &admin), "/healthz answers during the flood");
            let pid = w.lab.pid(&web.label).expect("pid");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
            let rss_kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .expect("VmRSS");
            first = Some((opened, refused, rss_kb, metrics(&k, &admin)));
        }
        cmd_tx.send(false).expect("flood thread");
        rx.recv_timeout(Duration::from_secs(30))
            .expect("flood closed");
        // Let the runtime see the FINs and release the connections.
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(cmd_tx);
    let (opened, refused, rss_kb, mt) = first.expect("first round");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (u, l) = (median(&mut unloaded.clone()), median(&mut loaded.clone()));
    eprintln!(
        "flood: {opened} connections open (some reset), {refused} failed to connect; runtime RSS {} MB; \
         alice's 32 MiB transfer, five interleaved rounds, Mbit/s: unloaded {unloaded:.0?} \
         (median {u:.0}), while the flood's connections are held {loaded:.0?} (median {l:.0}): \
         {:.0} %",
        rss_kb / 1024,
        l / u * 100.0
    );
    let budget = metric(&mt, "tsk8s_memory_budget_bytes").expect("budget metric");
    let charged = metric(&mt, "tsk8s_memory_charged_bytes").expect("charged metric");
    assert!(charged <= budget / 4 + budget / 4, "{mt}");
    assert!(
        metric(&mt, "tsk8s_peer_conns_refused_total{peer=\"mallory\"}").unwrap_or(0) > 0,
        "{mt}"
    );
    assert!(
        metric(&mt, "tsk8s_drops_total{reason=\"over_limit\"}").unwrap_or(0) > 0,
        "{mt}"
    );
    assert_eq!(
        metric(&mt, "tsk8s_peer_conns_refused_total{peer=\"alice\"}"),
        Some(0),
        "{mt}"
    );
    // The Deployment's limit is 128 Mi; the budget is half of it by default.
    assert!(
        rss_kb < 128 * 1024,
        "runtime RSS {rss_kb} kB under the flood"
    );
}
