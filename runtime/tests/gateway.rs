//! End-to-end test of `tsk8s-runtime gateway` (`publish="gateway"`): one UDP port for every
//! node of a cluster and its relayed sidecar. The configs are written by hand from the
//! contract types (`GatewayConfig`, `NodeConfig`, `MeshConfig`), so this does not depend on
//! the compiler's output.
//!
//! Namespaces: `g` (the gateway pod and the cluster's public address 10.98.0.1 on a bridge),
//! `a` and `b` (devices alice and bob, stock wireguard-go, every peer at 10.98.0.1:41000),
//! `s` (the sidecar pod: a plain runtime, its app on 127.0.0.1:8081), `t` (the proxies'
//! target and the subnet router's LAN, 10.98.3.2).
//!
//! Skipped with a printed reason when not root / no wireguard-go / no netns, unless
//! `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` (CI), then it fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::compiled::DeviceConf;
use common::*;
use tsk8s_policy::filter::{FilterRule, NetPortRange, PortRange};
use tsk8s_policy::runtime_config::{
    GatewayConfig, MESH_SHARD_BYTES, MeshConfig, Mode, NodeConfig, Peer, PortMap, Protocol, Relay,
    shard_mesh,
};
use tsk8s_runtime::config::{encode_key, public_from_private};

const PORT: u16 = 41000;
const SIDE_PORT: u16 = 41001;
const PUBLIC: &str = "10.98.0.1";
const ADMIN: &str = "127.0.0.1:9901";

fn private(n: u8) -> String {
    encode_key(&[n; 32])
}

fn public(n: u8) -> String {
    public_from_private(&private(n)).expect("key")
}

struct NodeDef {
    name: &'static str,
    key: u8,
    ipv4: &'static str,
    ipv6: &'static str,
    mode: Mode,
}

fn nodes() -> Vec<NodeDef> {
    let tcp = |listen, target| PortMap {
        protocol: Protocol::Tcp,
        listen,
        target,
    };
    vec![
        NodeDef {
            name: "web",
            key: 11,
            ipv4: "100.100.1.1",
            ipv6: "fd7a:115c:a1e0::101",
            mode: Mode::Proxy {
                target_host: "web.shop.svc".into(),
                ports: vec![tcp(80, 8080)],
            },
        },
        NodeDef {
            name: "api",
            key: 12,
            ipv4: "100.100.1.2",
            ipv6: "fd7a:115c:a1e0::102",
            mode: Mode::Proxy {
                target_host: "10.98.3.2".into(),
                ports: vec![tcp(80, 8090)],
            },
        },
        NodeDef {
            name: "lan",
            key: 13,
            ipv4: "100.100.1.3",
            ipv6: "fd7a:115c:a1e0::103",
            mode: Mode::SubnetRouter {
                routes: vec!["10.98.3.0/24".parse().expect("net")],
            },
        },
        NodeDef {
            name: "side",
            key: 14,
            ipv4: "100.100.1.4",
            ipv6: "fd7a:115c:a1e0::104",
            mode: Mode::Sidecar {
                ports: vec![tcp(80, 8081)],
            },
        },
    ]
}

fn node_config(n: &NodeDef, listen_port: u16) -> NodeConfig {
    NodeConfig {
        name: n.name.into(),
        public_key: public(n.key),
        ipv4: n.ipv4.parse().expect("ip"),
        ipv6: n.ipv6.parse().expect("ip"),
        listen_port,
        mtu: 1280,
        admin_listen: ADMIN.into(),
        mode: n.mode.clone(),
    }
}

/// alice (key 1, 100.100.0.2) may use every node; bob (key 2, 100.100.0.3) web and side
/// only: his tunnel to api works but api:80 is denied in the data plane.
fn mesh() -> MeshConfig {
    let rule = |src: &str, dsts: &[&str]| FilterRule {
        src_ips: vec![src.into()].into(),
        dst_ports: dsts
            .iter()
            .map(|d| {
                let (ip, port) = d.rsplit_once(':').expect("ip:port");
                let p: u16 = port.parse().expect("port");
                NetPortRange {
                    ip: ip.into(),
                    ports: PortRange { first: p, last: p },
                }
            })
            .collect(),
        ..Default::default()
    };
    let device = |name: &str, key: u8, ip: &str, ip6: &str| Peer {
        name: name.into(),
        public_key: public(key),
        allowed_ips: vec![ip.parse().expect("net"), ip6.parse().expect("net")],
        endpoint: None,
        persistent_keepalive: None,
    };
    MeshConfig {
        domain: "gw.test".into(),
        peers: vec![
            device("alice", 1, "100.100.0.2/32", "fd7a:115c:a1e0::2/128"),
            device("bob", 2, "100.100.0.3/32", "fd7a:115c:a1e0::3/128"),
        ],
        filter: vec![
            rule(
                "100.100.0.2",
                &[
                    "100.100.1.1:80",
                    "100.100.1.2:80",
                    "10.98.3.0/24:8080",
                    "100.100.1.4:80",
                ],
            ),
            rule("100.100.0.3", &["100.100.1.1:80", "100.100.1.4:80"]),
        ],
        dns: vec![],
    }
}

/// A wg-quick config for a device: every node a peer at the ONE public endpoint.
fn device_conf(key: u8, addr: &str) -> DeviceConf {
    let mut s = format!(
        "[Interface]\nAddress = {addr}\nMTU = 1280\nPostUp = wg set %i private-key /etc/wireguard/dev.key\n"
    );
    for n in nodes() {
        let mut allowed = format!("{}/32", n.ipv4);
        if let Mode::SubnetRouter { routes } = &n.mode {
            for r in routes {
                allowed.push_str(&format!(", {r}"));
            }
        }
        s.push_str(&format!(
            "\n# {}: node\n[Peer]\nPublicKey = {}\nAllowedIPs = {allowed}\nEndpoint = {PUBLIC}:{PORT}\nPersistentKeepalive = 25\n",
            n.name,
            public(n.key)
        ));
    }
    let _ = key;
    DeviceConf::parse(&s)
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

struct Files {
    gateway: PathBuf,
    mesh: PathBuf,
    keys: PathBuf,
}

/// gateway.json (web, api, lan terminated; side relayed to its pod by name), the mesh (a dir of
/// JSON Lines shards), keys.
fn write_gateway(dir: &Path) -> Files {
    let all = nodes();
    let gw = GatewayConfig {
        listen_port: PORT,
        admin_listen: ADMIN.into(),
        nodes: all
            .iter()
            .filter(|n| n.name != "side")
            .map(|n| node_config(n, PORT))
            .collect(),
        relays: vec![Relay {
            name: "side".into(),
            public_key: public(14),
            target: format!("side-0.app.svc:{SIDE_PORT}"),
        }],
    };
    let f = Files {
        gateway: dir.join("gw/gateway.json"),
        mesh: dir.join("mesh"),
        keys: dir.join("keys"),
    };
    write(
        &f.gateway,
        &serde_json::to_string_pretty(&gw).expect("json"),
        0o644,
    );
    write_mesh(&f.mesh, &mesh());
    for n in all.iter().filter(|n| n.name != "side") {
        // Readable by the runtime's UID (test only; the pod mounts a Secret with fsGroup).
        write(
            &f.keys.join(n.name).join("private-key"),
            &private(n.key),
            0o644,
        );
    }
    f
}

/// The mesh's shards (`mesh-<n>.jsonl`) into `dir`.
fn write_mesh(dir: &Path, m: &MeshConfig) {
    for (n, text) in shard_mesh(m, MESH_SHARD_BYTES).iter().enumerate() {
        write(&dir.join(format!("mesh-{n}.jsonl")), text, 0o644);
    }
}

fn health(ns: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            &runtime_bin(),
            "health",
            "--addr",
            ADMIN,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn start_gateway(lab: &mut Lab, g: &str, f: &Files) -> String {
    let label = lab.start_runtime(
        "gateway",
        g,
        &[
            "gateway".into(),
            "--config".into(),
            f.gateway.display().to_string(),
            "--mesh".into(),
            f.mesh.display().to_string(),
            "--key-dir".into(),
            f.keys.display().to_string(),
        ],
    );
    if wait_for(Duration::from_secs(15), || health(g)).is_none() {
        panic!("gateway never became healthy:\n{}", lab.runtime_log());
    }
    label
}

#[test]
fn gateway_one_port_nodes_and_relayed_sidecar() {
    if !should_run("gateway_one_port_nodes_and_relayed_sidecar") {
        return;
    }
    let mut lab = Lab::new();
    let g = lab.ns("g");
    lab.bridge(&g, &format!("{PUBLIC}/24"));
    // The proxies' target / the router's LAN.
    let t = lab.ns("t");
    lab.link(&g, "10.98.3.1/24", &t, "10.98.3.2/24", "gt");
    http_server(&t, "10.98.3.2:8080", "hello from web");
    http_server(&t, "10.98.3.2:8090", "hello from api");
    lab.ns_hosts(
        &g,
        &[
            ("10.98.3.2", "web.shop.svc"),
            ("10.98.5.2", "side-0.app.svc"),
        ],
    );
    // The sidecar pod: a plain runtime, its app on 127.0.0.1:8081.
    let s = lab.ns("s");
    lab.link(&g, "10.98.5.1/24", &s, "10.98.5.2/24", "gs");
    http_server(&s, "127.0.0.1:8081", "hello from side");
    let side = nodes()
        .into_iter()
        .find(|n| n.name == "side")
        .expect("side");
    let side_node = lab.dir.join("side/node.json");
    write(
        &side_node,
        &serde_json::to_string_pretty(&node_config(&side, SIDE_PORT)).expect("json"),
        0o644,
    );
    let files = write_gateway(&lab.dir);
    let side_key = lab.dir.join("side/private-key");
    write(&side_key, &private(14), 0o644);
    lab.start_runtime(
        "side",
        &s,
        &[
            "--node".into(),
            side_node.display().to_string(),
            "--mesh".into(),
            files.mesh.display().to_string(),
            "--private-key-file".into(),
            side_key.display().to_string(),
        ],
    );
    assert!(
        wait_for(Duration::from_secs(15), || health(&s)).is_some(),
        "sidecar healthy:\n{}",
        lab.runtime_log()
    );
    let gw = start_gateway(&mut lab, &g, &files);
    // The admin endpoint answers on 127.0.0.1:9901 inside the gateway's namespace (and the
    // `health` subcommand, the exec probe, says so too).
    assert!(healthz(&g, ADMIN));

    // Two devices, stock wireguard-go, every peer at the one endpoint.
    let mut dev = |role: &str, addr: &str, key: u8, tun: &str| {
        let ns = lab.ns(role);
        lab.attach(&ns, addr, &g, role);
        let conf = device_conf(key, tun);
        let keyfile = lab.dir.join(format!("{role}.key"));
        write(&keyfile, &private(key), 0o600);
        let ifname = lab.wg_device(&ns, role, &conf, &keyfile);
        (ns, ifname, conf, keyfile)
    };
    let (a, a_if, _, _) = dev("a", "10.98.0.2/24", 1, "100.100.0.2/32");
    let (b, _, _, _) = dev("b", "10.98.0.3/24", 2, "100.100.0.3/32");
    let endpoints = sh_capture(&["ip", "netns", "exec", &a, "wg", "show", &a_if, "endpoints"]);
    let distinct: std::collections::BTreeSet<&str> = endpoints
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        distinct.into_iter().collect::<Vec<_>>(),
        vec![format!("{PUBLIC}:{PORT}").as_str()],
        "one endpoint for the cluster:\n{endpoints}"
    );

    let get = |ns: &str, addr: &str| http_get_retry(ns, addr, Duration::from_secs(20));
    let t0 = std::cell::Cell::new(Instant::now());
    let lap = |what: &str| eprintln!("  {what}: {:.1} s", t0.get().elapsed().as_secs_f64());
    let traffic = |a: &str, b: &str| {
        assert_eq!(
            get(a, "100.100.1.1:80").as_deref(),
            Ok("hello from web"),
            "alice → web (proxy)"
        );
        lap("alice → web (proxy)");
        assert_eq!(
            get(a, "100.100.1.2:80").as_deref(),
            Ok("hello from api"),
            "alice → api (proxy)"
        );
        lap("alice → api (proxy)");
        assert_eq!(
            get(a, "10.98.3.2:8080").as_deref(),
            Ok("hello from web"),
            "alice → LAN through the subnet router"
        );
        lap("alice → LAN through the subnet router");
        assert_eq!(
            get(a, "100.100.1.4:80").as_deref(),
            Ok("hello from side"),
            "alice → side (relayed sidecar)"
        );
        lap("alice → side (relayed sidecar)");
        assert_eq!(
            get(b, "100.100.1.1:80").as_deref(),
            Ok("hello from web"),
            "bob → web"
        );
        lap("bob → web");
        assert_eq!(
            get(b, "100.100.1.4:80").as_deref(),
            Ok("hello from side"),
            "bob → side (relayed sidecar)"
        );
        lap("bob → side (relayed sidecar)");
    };
    traffic(&a, &b);

    // A deny in the data plane: bob's tunnel to api is up (the handshake is answered) but
    // the filter drops api:80 for him.
    let denied = http_get(&b, "100.100.1.2:80", Duration::from_secs(3));
    assert!(denied.is_err(), "bob reached api:80: {denied:?}");
    let mt = metrics(&g, ADMIN);
    assert!(
        metric(&mt, "tsk8s_drops_total{node=\"api\",reason=\"policy\"}").unwrap_or(0) > 0,
        "policy drop at api counted:\n{mt}"
    );
    assert!(
        metric(
            &mt,
            "tsk8s_peer_handshakes_total{node=\"api\",peer=\"bob\"}"
        )
        .unwrap_or(0)
            >= 1,
        "bob's handshake with api:\n{mt}"
    );
    for n in ["web", "api", "lan"] {
        assert!(
            metric(
                &mt,
                &format!("tsk8s_peer_handshakes_total{{node=\"{n}\",peer=\"alice\"}}")
            )
            .unwrap_or(0)
                >= 1,
            "alice's handshake with {n}:\n{mt}"
        );
    }
    assert!(metric(&mt, "tsk8s_gateway_datagrams_total{direction=\"to_relay\"}").unwrap_or(0) > 0);
    assert!(
        metric(
            &mt,
            "tsk8s_gateway_datagrams_total{direction=\"from_relay\"}"
        )
        .unwrap_or(0)
            > 0
    );
    assert_eq!(
        metric(&mt, "tsk8s_gateway_relay_sockets"),
        Some(2),
        "one relay socket per device for the sidecar:\n{mt}"
    );
    assert_eq!(metric(&mt, "tsk8s_gateway_nodes"), Some(3));

    // Junk on the public port: dropped and counted, nothing breaks.
    in_ns(&b, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let to = format!("{PUBLIC}:{PORT}");
        for i in 0..200u32 {
            let mut junk = vec![(i % 6) as u8; 32 + (i as usize % 200)];
            junk[1] = 0;
            junk[2] = 0;
            junk[3] = 0;
            let _ = s.send_to(&junk, &to);
        }
    });
    assert!(
        wait_for(Duration::from_secs(3), || {
            let mt = metrics(&g, ADMIN);
            metric(&mt, "tsk8s_gateway_drops_total{reason=\"garbage\"}").unwrap_or(0)
                + metric(&mt, "tsk8s_gateway_drops_total{reason=\"unknown_index\"}").unwrap_or(0)
                + metric(&mt, "tsk8s_gateway_drops_total{reason=\"unknown_key\"}").unwrap_or(0)
                > 0
        })
        .is_some(),
        "junk counted"
    );
    assert!(healthz(&g, ADMIN));

    // Gateway restart (the pod is replaced): the devices keep their sessions, the new process
    // has none; traffic to every node and to the sidecar recovers.
    lab.kill(&gw);
    t0.set(Instant::now());
    eprintln!("after the gateway restart:");
    start_gateway(&mut lab, &g, &files);
    lap("gateway healthy");
    traffic(&a, &b);
    assert!(healthz(&g, ADMIN));
    // The sidecar's sessions were found again by forwarding the unknown-index packets to it
    // (not only by the devices' own re-handshake, 15 s later).
    let mt = metrics(&g, ADMIN);
    assert!(
        metric(
            &mt,
            "tsk8s_gateway_datagrams_total{direction=\"relay_probe\"}"
        )
        .unwrap_or(0)
            > 0,
        "{mt}"
    );

    // Reload in place: the mesh loses bob's grant on web (written like the kubelet swaps a
    // file: a new inode). The identities keep their sessions; bob's new connections to web
    // are denied, alice's still work.
    let mut m = mesh();
    m.filter
        .retain(|r| *r.src_ips != ["100.100.0.3".to_string()]);
    let tmp = files.mesh.join("mesh-0.new");
    let shards = shard_mesh(&m, MESH_SHARD_BYTES);
    assert_eq!(shards.len(), 1);
    write(&tmp, &shards[0], 0o644);
    std::fs::rename(&tmp, files.mesh.join("mesh-0.jsonl")).expect("rename");
    assert!(
        wait_for(Duration::from_secs(5), || {
            metric(&metrics(&g, ADMIN), "tsk8s_gateway_reloads_total").unwrap_or(0) >= 1
        })
        .is_some(),
        "reloaded:\n{}",
        lab.runtime_log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || {
            http_get(&b, "100.100.1.1:80", Duration::from_secs(2)).is_err()
        })
        .is_some(),
        "bob denied at web after the reload"
    );
    assert_eq!(
        get(&a, "100.100.1.1:80").as_deref(),
        Ok("hello from web"),
        "alice still reaches web"
    );
    let mt = metrics(&g, ADMIN);
    assert_eq!(
        metric(&mt, "tsk8s_config_reloads_total{node=\"web\"}"),
        Some(1),
        "applied in place:\n{mt}"
    );

    // SIGTERM: clean exit.
    let gw = "runtime:gateway".to_string();
    lab.signal(&gw, libc::SIGTERM);
    let st = lab
        .wait_child(&gw, Duration::from_secs(5))
        .expect("gateway exits on SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

fn sh_capture(args: &[&str]) -> String {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(out.status.success(), "{args:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same from the compiler's output: `testdata/runtime/e2e/tailnet.kdl` with
/// `publish="gateway"`, locked and built by the real `tsk8s`; the gateway started exactly as
/// its emitted Deployment says (args, the gateway/mesh ConfigMaps and the projected node keys
/// mounted at their paths, UID, no capabilities), the sidecar from its Component in its own
/// pod namespace, the devices from their generated configs (one endpoint for everything).
#[test]
fn gateway_from_emitted_manifests() {
    use common::compiled::{Compiled, fixture_dir};
    if !should_run("gateway_from_emitted_manifests") {
        return;
    }
    let mut lab = Lab::new();
    let c = Compiled::new(&lab.dir);
    c.edit(|s| s.replace("publish=\"node-port\"", "publish=\"gateway\""));
    let k = lab.ns("k");
    lab.bridge(&k, "10.99.0.1/24");
    let s = lab.ns("s");
    lab.link(&k, "10.99.3.1/24", &s, "10.99.3.2/24", "ks");
    http_server(&s, "10.99.3.2:8080", "hello from web:8080");
    http_server(&s, "10.99.3.2:8443", "hello from web:8443");
    // The sidecar's pod.
    let p = lab.ns("p");
    lab.link(&k, "10.99.5.1/24", &p, "10.99.5.2/24", "kp");
    http_server(&p, "127.0.0.1:8081", "hello from the sidecar");

    let gw = c.workload("lab", "gateway");
    let gateway_json = gw.gateway_config();
    let relay = gateway_json
        .relays
        .iter()
        .find(|r| r.name == "side")
        .expect("side is relayed");
    let (relay_host, relay_port) = relay.target.rsplit_once(':').expect("host:port");
    let side = c.workload("lab", "side");
    assert_eq!(
        side.node_json()["listen_port"].as_u64(),
        relay_port.parse::<u64>().ok(),
        "the relay target's port is the sidecar's WireGuard port (no kube-proxy here)"
    );
    lab.ns_hosts(
        &k,
        &[("10.99.3.2", "web.shop.svc"), ("10.99.5.2", relay_host)],
    );
    let side_run = lab.start_workload(&p, &side);
    assert!(
        wait_for(Duration::from_secs(15), || healthz(&p, &side_run.admin())).is_some(),
        "sidecar healthy:\n{}",
        lab.runtime_log()
    );
    let gw_run = lab.start_workload(&k, &gw);
    if wait_for(Duration::from_secs(15), || health(&k)).is_none() {
        panic!("gateway never became healthy:\n{}", lab.runtime_log());
    }
    let argv = lab.argv(&gw_run.label);
    assert_eq!(argv.get(1..), Some(gw.args.as_slice()), "gateway argv");
    assert_eq!(argv.get(1).map(String::as_str), Some("gateway"));

    let key = |d: &str| fixture_dir().join(format!("TEST-ONLY-private-keys/{d}.TEST-ONLY.key"));
    let mut device = |d: &str, role: &str, addr: &str| {
        let ns = lab.ns(role);
        lab.attach(&ns, addr, &k, role);
        let conf = c.device_conf(d);
        lab.wg_device(&ns, role, &conf, &key(d));
        (ns, conf)
    };
    let (a, a_conf) = device("alice", "a", "10.99.0.2/24");
    let (m, _) = device("mallory", "m", "10.99.0.3/24");
    let endpoints: std::collections::BTreeSet<String> = a_conf
        .peers
        .iter()
        .filter_map(|(_, p)| {
            p.iter()
                .find(|(k, _)| k == "Endpoint")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(
        endpoints.into_iter().collect::<Vec<_>>(),
        vec![format!("10.99.0.1:{}", gateway_json.listen_port)],
        "one endpoint per cluster, sidecar included:\n{}",
        a_conf.text
    );
    let ip = |node: &str| -> String {
        if node == "side" {
            return side.node_json()["ipv4"].as_str().expect("ipv4").to_string();
        }
        gateway_json
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.ipv4.to_string())
            .unwrap_or_else(|| panic!("{node} not in gateway.json"))
    };
    let web = ip("web");
    let get = |ns: &str, addr: String| http_get_retry(ns, &addr, Duration::from_secs(20));
    assert_eq!(
        get(&a, format!("{web}:80")).as_deref(),
        Ok("hello from web:8080")
    );
    assert_eq!(
        get(&a, format!("{}:8081", ip("side"))).as_deref(),
        Ok("hello from the sidecar"),
        "alice → relayed sidecar"
    );
    assert_eq!(
        get(&m, format!("{web}:443")).as_deref(),
        Ok("hello from web:8443")
    );
    let denied = http_get(&m, &format!("{web}:80"), Duration::from_secs(3));
    assert!(denied.is_err(), "mallory reached web:80: {denied:?}");
    let mt = metrics(&k, ADMIN);
    assert!(
        metric(&mt, "tsk8s_drops_total{node=\"web\",reason=\"policy\"}").unwrap_or(0) > 0,
        "{mt}"
    );
    assert!(healthz(&k, ADMIN));
}
