//! The health probe of kernel-mode (egress) Tailscale-image pods survives containerboot's DNAT.
//!
//! With `TS_USERSPACE=false` and `TS_TAILNET_TARGET_*`, containerboot runs
//! `installEgressForwardingRule` (cmd/containerboot/forwarding.go at v1.90.6), whose
//! `DNATNonTailscaleTraffic` (util/linuxfw/iptables_runner.go) inserts
//! `iptables -t nat -I PREROUTING 1 ! -i tailscale0 -j DNAT --to-destination <target>`: every
//! connection that enters the pod from outside goes to the tailnet target, the kubelet's
//! probes to `podIP:<health port>` too. This test applies that rule in a network namespace
//! (the pod, linked by a veth to a second namespace standing in for the kubelet) with each
//! iptables backend there is (the image links `iptables` to `iptables-legacy`; with
//! `TS_DEBUG_FIREWALL_MODE=auto` it may pick nftables), and shows:
//!
//! - a GET to the pod IP (what an `httpGet` probe does) answers before the rule and not after;
//! - the probe tsk8s emits (an `exec` of busybox `wget`, as in the Alpine-based image) still
//!   answers after it, and fails while `/healthz` says 503, so it is a real check.
//!
//! Needs root, `ip`, an iptables binary and busybox (scripts/test.sh installs them): skipped
//! otherwise, unless `TSK8S_REQUIRE_PRIVILEGED_TESTS=1`, when that is a failure.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use tsk8s_test_support::repo_root as root;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "busybox", "timeout"] {
        if !have(tool) {
            return Some(format!("{tool} not installed"));
        }
    }
    if backends().is_empty() {
        return Some("no iptables binary (iptables-legacy, iptables-nft) works".into());
    }
    None
}

/// Returns false (and says why) when the test should be skipped; panics when it must run.
fn should_run(test: &str) -> bool {
    tsk8s_test_support::should_run(test, cannot_run())
}

use tsk8s_test_support::sh;

/// The iptables binaries that can add a nat rule in a fresh namespace.
fn backends() -> Vec<&'static str> {
    let mut out = Vec::new();
    for (i, bin) in ["iptables-legacy", "iptables-nft"].into_iter().enumerate() {
        if !have(bin) {
            continue;
        }
        let ns = format!("tsk8sipt{}x{i}", std::process::id());
        if !Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .is_ok_and(|s| s.success())
        {
            continue;
        }
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns, bin, "-t", "nat", "-L", "PREROUTING"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        if ok {
            out.push(bin);
        }
    }
    out
}

/// What the probe needs to know about one kernel-mode container.
struct Egress {
    origin: String,
    env: BTreeMap<String, String>,
    probes: Vec<Value>,
}

/// Every kernel-mode Tailscale-image container of examples/tailscale.
fn kernel_mode_containers() -> Vec<Egress> {
    let dir = root().join("examples/tailscale");
    let spec = std::fs::read_to_string(dir.join("tailnet.kdl")).unwrap();
    let lock = std::fs::read_to_string(dir.join("tailnet.lock")).ok();
    let tree = common::build_with(&spec, lock.as_deref(), BTreeMap::new())
        .unwrap_or_else(|f| panic!("{}", f.text));
    let mut out = Vec::new();
    for (path, bytes) in tree.iter().filter(|(p, _)| p.starts_with("clusters/")) {
        let text = String::from_utf8_lossy(bytes);
        for doc in text.split("\n---\n").filter(|d| !d.trim().is_empty()) {
            let v: Value = serde_yaml_ng::from_str(doc).unwrap();
            let Some(cs) = v["spec"]["template"]["spec"]["containers"].as_array() else {
                continue;
            };
            for c in cs.iter().filter(|c| c["name"] == "tailscale") {
                let env: BTreeMap<String, String> = c["env"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
                    .collect();
                if env.get("TS_USERSPACE").map(String::as_str) == Some("false") {
                    out.push(Egress {
                        origin: path.clone(),
                        env,
                        probes: vec![c["readinessProbe"].clone(), c["livenessProbe"].clone()],
                    });
                }
            }
        }
    }
    assert!(
        out.len() >= 2,
        "examples/tailscale has egress by IP and by name"
    );
    out
}

/// A `/healthz` server on a thread inside a network namespace, answering `status`.
struct Health {
    stop: Arc<AtomicBool>,
    status: Arc<AtomicU16>,
    thread: Option<JoinHandle<()>>,
}

impl Health {
    fn start(netns: &str, addr: SocketAddr) -> Health {
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(AtomicU16::new(200));
        let (tx, rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let (s, st) = (stop.clone(), status.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns");
            let l = TcpListener::bind(addr).expect("bind health port");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        let mut req = Vec::new();
                        let mut buf = [0u8; 512];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                            match c.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let code = st.load(Ordering::SeqCst);
                        let ok = req.starts_with(b"GET /healthz ");
                        let (code, body) = match (ok, code) {
                            (false, _) => (404, "not found"),
                            (true, 200) => (200, "ok"),
                            (true, _) => (503, "node currently has no tailscale IPs"),
                        };
                        let reason = match code {
                            200 => "OK",
                            404 => "Not Found",
                            _ => "Service Unavailable",
                        };
                        let _ = write!(
                            c,
                            "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("health server up");
        Health {
            stop,
            status,
            thread: Some(thread),
        }
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two namespaces (pod, kubelet) and a veth between them; removed on drop.
struct Lab {
    pod: String,
    node: String,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let id = format!("{}{tag}", std::process::id() % 100_000);
        let pod = format!("tsk8sdp{id}");
        let node = format!("tsk8sdn{id}");
        let lab = Lab { pod, node };
        for ns in [&lab.pod, &lab.node] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        let mut vp = format!("vdp{id}");
        let mut vn = format!("vdn{id}");
        vp.truncate(15);
        vn.truncate(15);
        sh(&[
            "ip", "link", "add", &vp, "netns", &lab.pod, "type", "veth", "peer", "name", &vn,
            "netns", &lab.node,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.pod,
            "addr",
            "add",
            "10.77.0.2/24",
            "dev",
            &vp,
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.node,
            "addr",
            "add",
            "10.77.0.1/24",
            "dev",
            &vn,
        ]);
        sh(&["ip", "-n", &lab.pod, "link", "set", &vp, "up"]);
        sh(&["ip", "-n", &lab.node, "link", "set", &vn, "up"]);
        lab
    }

    /// Run a command in a namespace for at most `secs`; true when it exits 0 in time.
    fn run(&self, ns: &str, cmd: &[String], secs: u32) -> bool {
        Command::new("timeout")
            .args([&secs.to_string(), "ip", "netns", "exec", ns])
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The emitted exec probe's command as this machine runs it: `wget` is busybox's applet in
/// the image, so it is run through busybox here (Debian does not link the applets).
fn exec_command(probe: &Value, origin: &str) -> Vec<String> {
    let cmd: Vec<String> = probe["exec"]["command"]
        .as_array()
        .unwrap_or_else(|| panic!("{origin}: kernel-mode probe is not an exec: {probe}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cmd[0], "wget", "{origin}");
    let mut out = vec!["busybox".to_string()];
    out.extend(cmd);
    out
}

fn dnat(lab: &Lab, bin: &str, target: &str) {
    // util/linuxfw/iptables_runner.go DNATNonTailscaleTraffic, verbatim.
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.pod,
        bin,
        "-t",
        "nat",
        "-I",
        "PREROUTING",
        "1",
        "!",
        "-i",
        "tailscale0",
        "-j",
        "DNAT",
        "--to-destination",
        target,
    ]);
}

#[test]
fn egress_probe_answers_after_containerboots_dnat() {
    if !should_run("egress_probe_answers_after_containerboots_dnat") {
        return;
    }
    let egress = kernel_mode_containers();
    for (bi, bin) in backends().into_iter().enumerate() {
        for (ei, e) in egress.iter().enumerate() {
            let addr: SocketAddr = e.env["TS_LOCAL_ADDR_PORT"].parse().unwrap();
            let port = addr.port();
            // Where the DNAT sends things: the IP target, or any tailnet address for a name.
            let target = e
                .env
                .get("TS_TAILNET_TARGET_IP")
                .cloned()
                .unwrap_or_else(|| "100.100.7.7".to_string());
            let kubelet_get = vec![
                "busybox".to_string(),
                "wget".into(),
                "-q".into(),
                "-O".into(),
                "/dev/null".into(),
                format!("http://10.77.0.2:{port}/healthz"),
            ];

            // 1. containerboot's default listen address ([::]): the kubelet's httpGet to the pod
            //    IP answers until the DNAT rule is in, then not; loopback still answers.
            let lab = Lab::new(&format!("a{bi}{ei}"));
            let h = Health::start(&lab.pod, format!("[::]:{port}").parse().unwrap());
            assert!(
                lab.run(&lab.node, &kubelet_get, 5),
                "{bin} {}: pod IP must answer before the DNAT rule",
                e.origin
            );
            dnat(&lab, bin, &target);
            assert!(
                !lab.run(&lab.node, &kubelet_get, 2),
                "{bin} {}: the DNAT rule must take the kubelet's GET to the pod IP",
                e.origin
            );
            for p in &e.probes {
                assert!(
                    lab.run(&lab.pod, &exec_command(p, &e.origin), 5),
                    "{bin} {}: the exec probe must answer after the DNAT rule",
                    e.origin
                );
            }
            drop(h);
            drop(lab);

            // 2. As emitted (TS_LOCAL_ADDR_PORT on loopback): the probes pass on 200 and fail
            //    on 503, with the rule in place.
            let lab = Lab::new(&format!("b{bi}{ei}"));
            dnat(&lab, bin, &target);
            let h = Health::start(&lab.pod, addr);
            for p in &e.probes {
                let cmd = exec_command(p, &e.origin);
                assert!(
                    lab.run(&lab.pod, &cmd, 5),
                    "{bin} {}: 200 → ready",
                    e.origin
                );
                h.status.store(503, Ordering::SeqCst);
                assert!(
                    !lab.run(&lab.pod, &cmd, 5),
                    "{bin} {}: 503 → not ready",
                    e.origin
                );
                h.status.store(200, Ordering::SeqCst);
            }
            assert!(
                !lab.run(&lab.node, &kubelet_get, 2),
                "{bin} {}: nothing answers on the pod IP",
                e.origin
            );
        }
    }
}

/// What the Tailscale image cannot run is refused by every command, exit 2, nothing written:
/// an image older than the output needs, an egress by name without the MagicDNS suffix, a
/// sidecar forwarding to the health port.
#[test]
fn check_lock_build_refuse_what_the_image_cannot_run() {
    for case in [
        "tailscale-image-too-old",
        "tailscale-egress-name-no-magicdns",
        "tailscale-health-port-clash",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::copy(
            root()
                .join("testdata/bad/spec")
                .join(case)
                .join("tailnet.kdl"),
            d.join("tailnet.kdl"),
        )
        .unwrap();
        for args in [&["check"][..], &["lock"], &["build"]] {
            let o = Command::new(env!("CARGO_BIN_EXE_tsk8s"))
                .args(args)
                .current_dir(d)
                .env("NO_COLOR", "1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{case} {args:?}: {stderr}");
            assert!(
                stderr.contains("tailnet.kdl:"),
                "{case} {args:?}: located: {stderr}"
            );
        }
        let mut files: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["tailnet.kdl"], "{case}: nothing written");
    }
}

/// The same spec with what each case lacks is accepted, and egress by name gets its MagicDNS
/// name with the trailing dot.
#[test]
fn fixed_cases_build() {
    let spec = std::fs::read_to_string(
        root().join("testdata/bad/spec/tailscale-egress-name-no-magicdns/tailnet.kdl"),
    )
    .unwrap()
    .replace(
        "domain=\"t.example\"",
        "domain=\"t.example\" magicdns-suffix=\"tail1234.ts.net.\"",
    );
    let tree =
        common::build_with(&spec, None, BTreeMap::new()).unwrap_or_else(|f| panic!("{}", f.text));
    let text = String::from_utf8_lossy(&tree["clusters/a/to-web.yaml"]).into_owned();
    assert!(
        text.contains("value: web.tail1234.ts.net.\n"),
        "the suffix is kept without its dot, the name gets one: {text}"
    );
    let spec = std::fs::read_to_string(
        root().join("testdata/bad/spec/tailscale-health-port-clash/tailnet.kdl"),
    )
    .unwrap()
    .replace("cluster \"a\" ", "cluster \"a\" health-port=9102 ")
    .replace("health-port=8080", "health-port=9103");
    let tree =
        common::build_with(&spec, None, BTreeMap::new()).unwrap_or_else(|f| panic!("{}", f.text));
    let patch = String::from_utf8_lossy(&tree["clusters/a/components/web/patch.yaml"]).into_owned();
    assert!(patch.contains("'[::]:9102'"), "{patch}");
    assert!(patch.contains("containerPort: 9102"), "{patch}");
}

#[test]
fn image_versions_are_read_from_tags() {
    use tsk8s::resolve::tailscale_image_version as v;
    assert_eq!(v("ghcr.io/tailscale/tailscale:v1.90.6"), Some((1, 90, 6)));
    assert_eq!(v("tailscale/tailscale:1.78"), Some((1, 78, 0)));
    assert_eq!(
        v("registry:5000/ts/tailscale:v1.92.1-fips"),
        Some((1, 92, 1))
    );
    assert_eq!(
        v("ghcr.io/tailscale/tailscale:unstable-v1.91.12"),
        Some((1, 91, 12))
    );
    assert_eq!(
        v("ghcr.io/tailscale/tailscale:v1.76.6@sha256:00"),
        Some((1, 76, 6))
    );
    for unknown in [
        "ghcr.io/tailscale/tailscale@sha256:00",
        "ghcr.io/tailscale/tailscale:stable",
        "ghcr.io/tailscale/tailscale:v1",
        "ghcr.io/tailscale/tailscale:1.2.3.4",
        "ghcr.io/tailscale/tailscale:v1.x.0",
        "registry:5000/tailscale",
    ] {
        assert_eq!(v(unknown), None, "{unknown}");
    }
    assert!(
        tsk8s::resolve::MIN_TAILSCALE_IMAGE <= (1, 90, 6),
        "the examples' pin"
    );
}
