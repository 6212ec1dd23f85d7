//! End-to-end test of a StatefulSet sidecar with `replicas=2`, from the compiler's output:
//! `testdata/runtime/e2e/tailnet.kdl` with a StatefulSet sidecar `st` (`replicas=2`) added and
//! `publish="gateway"`, locked and built by the real `tsk8s`. Each pod runs the runtime exactly
//! as the one emitted Component says (the same args for both, `$(TSK8S_POD_INDEX)` expanded to
//! its ordinal as the kubelet does from its `pod-index` label; both nodes' configs and keys
//! mounted), in a network namespace of its own with its own app; the gateway relays to each
//! pod by its per-pod Service name. A device reaches both as separate nodes.
//!
//! Skipped with a printed reason when not root / no wireguard-go / no netns, unless
//! `TSK8S_REQUIRE_PRIVILEGED_TESTS=1` (CI), then it fails.

mod common;

use std::time::Duration;

use common::compiled::{Compiled, fixture_dir, parse_hosts};
use common::*;

const ADMIN: &str = "127.0.0.1:9901";

fn gateway_healthy(ns: &str) -> bool {
    healthz(ns, ADMIN)
}

#[test]
fn statefulset_sidecar_two_pods_are_two_nodes() {
    if !should_run("statefulset_sidecar_two_pods_are_two_nodes") {
        return;
    }
    let mut lab = Lab::new();
    let c = Compiled::new(&lab.dir);
    c.edit(|s| {
        s.replace("publish=\"node-port\"", "publish=\"gateway\"").replace(
            "    sidecar \"side\" workload=\"app/side\" port=8081 tag=\"side\"\n",
            "    sidecar \"side\" workload=\"app/side\" port=8081 tag=\"side\"\n    sidecar \"st\" workload=\"app/st\" kind=\"StatefulSet\" replicas=2 port=8081 tag=\"side\"\n",
        )
    });
    let k = lab.ns("k");
    lab.bridge(&k, "10.99.0.1/24");

    let gw = c.workload("lab", "gateway");
    let gateway_json = gw.gateway_config();

    // Two pods, one Component: each in its own namespace with its own app.
    let bodies: [&'static str; 2] = ["hello from st-0", "hello from st-1"];
    let mut hosts: Vec<(String, String)> = Vec::new();
    let mut pods = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let node = format!("st-{i}");
        let w = c.statefulset_pod("lab", "st", i as u32);
        assert_eq!(w.node_json()["name"], node, "pod {i} picks its own node");
        let relay = gateway_json
            .relays
            .iter()
            .find(|r| r.name == node)
            .unwrap_or_else(|| panic!("{node} is not relayed"));
        let (relay_host, relay_port) = relay.target.rsplit_once(':').expect("host:port");
        assert_eq!(
            w.node_json()["listen_port"].as_u64(),
            relay_port.parse::<u64>().ok(),
            "the relay target's port is pod {i}'s own WireGuard port"
        );
        let p = lab.ns(&format!("p{i}"));
        let pod_ip = format!("10.99.{}.2", 6 + i);
        lab.link(
            &k,
            &format!("10.99.{}.1/24", 6 + i),
            &p,
            &format!("{pod_ip}/24"),
            &format!("kp{i}"),
        );
        http_server(&p, "127.0.0.1:8081", body);
        hosts.push((pod_ip, relay_host.to_string()));
        let run = lab.start_workload(&p, &w);
        assert!(
            wait_for(Duration::from_secs(15), || healthz(&p, &run.admin())).is_some(),
            "pod {i} healthy:\n{}",
            lab.runtime_log()
        );
        // It runs with exactly the emitted args, the ordinal expanded.
        let argv = lab.argv(&run.label);
        assert_eq!(argv.get(1..), Some(w.args.as_slice()), "pod {i} argv");
        assert!(
            w.args.iter().any(|a| a.contains(&format!("/{i}/"))),
            "pod {i} args name its ordinal: {:?}",
            w.args
        );
        pods.push((p, w));
    }
    let entries: Vec<(&str, &str)> = hosts
        .iter()
        .map(|(ip, h)| (ip.as_str(), h.as_str()))
        .collect();
    lab.ns_hosts(&k, &entries);
    lab.start_workload(&k, &gw);
    if wait_for(Duration::from_secs(15), || gateway_healthy(&k)).is_none() {
        panic!("gateway never became healthy:\n{}", lab.runtime_log());
    }

    let key = fixture_dir().join("TEST-ONLY-private-keys/alice.TEST-ONLY.key");
    let a = lab.ns("a");
    lab.attach(&a, "10.99.0.2/24", &k, "a");
    let conf = c.device_conf("alice");
    lab.wg_device(&a, "a", &conf, &key);
    // Two peers, two keys, two addresses; one endpoint (the gateway's).
    let names = parse_hosts(&c.device_hosts("alice"));
    let mut keys = std::collections::BTreeSet::new();
    for (i, body) in bodies.iter().enumerate() {
        let node = format!("st-{i}");
        let pk = conf
            .peer_value(&node, "PublicKey")
            .unwrap_or_else(|| panic!("alice has no peer {node}:\n{}", conf.text));
        keys.insert(pk);
        assert_eq!(
            conf.peer_value(&node, "Endpoint"),
            Some(format!("10.99.0.1:{}", gateway_json.listen_port)),
            "{node}: the gateway's endpoint"
        );
        let ip = names
            .get(&node)
            .unwrap_or_else(|| panic!("no address for {node}"));
        assert_eq!(pods[i].1.node_json()["ipv4"].as_str(), Some(ip.as_str()));
        assert_eq!(
            http_get_retry(&a, &format!("{ip}:8081"), Duration::from_secs(20)).as_deref(),
            Ok(*body),
            "alice → {node} reaches pod {i}'s app"
        );
    }
    assert_eq!(keys.len(), 2, "each pod is a node with its own key");
}
