//! Network-namespace fixtures for end-to-end tests: wireguard-go clients configured from the
//! device configs `tsk8s build` writes, veth links and bridges, servers running on threads that
//! entered a namespace, and the runtime started the way its emitted workload says (arguments,
//! mounted files at their paths, non-root UID).
#![allow(dead_code)]

pub mod compiled;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use compiled::{DeviceConf, Workload, atomic_write};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Why privileged tests cannot run here, if they cannot.
pub fn cannot_run() -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in [
        "wireguard-go",
        "wg",
        "ip",
        "setpriv",
        "mount",
        "sh",
        "ping",
        "sysctl",
    ] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Some(format!("{tool} not installed"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun missing".into());
    }
    // Tests run in parallel threads of one process: the probe name must be unique per call.
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = format!("tsk8sprobe{}-{n}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Some("cannot create network namespaces".into());
    }
    // The runtime's volumes are mounted at their real paths (/etc/tsk8s/…) in a private mount
    // namespace over an overlay of /etc; check that overlayfs and tmpfs mounts work.
    let dir = std::env::temp_dir().join(format!("tsk8s-probe-{}-{n}", std::process::id()));
    let _ = fs::create_dir_all(dir.join("up"));
    let _ = fs::create_dir_all(dir.join("work"));
    let script = format!(
        "mount -t overlay overlay -o lowerdir=/etc,upperdir={0}/up,workdir={0}/work /etc \
         && mount -t tmpfs tmpfs /run && mkdir -p /etc/tsk8s-probe /run/secrets",
        dir.display()
    );
    let ok = Command::new("ip")
        .args(["netns", "exec", &probe, "sh", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    let _ = fs::remove_dir_all(&dir);
    if !ok {
        return Some("cannot mount overlayfs/tmpfs in a private mount namespace".into());
    }
    None
}

/// Returns false (and prints why) when the test should be skipped; panics in CI.
pub fn should_run(test: &str) -> bool {
    tsk8s_test_support::should_run(test, cannot_run())
}

pub use tsk8s_test_support::sh;

pub fn sh_out(args: &[&str], stdin: &str) -> String {
    let mut c = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    let out = c.wait_with_output().expect("wait");
    assert!(out.status.success(), "{args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One test's namespaces, processes and files; torn down on drop.
pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
    logs: Vec<(String, PathBuf)>,
}

impl Lab {
    pub fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let dir = std::env::temp_dir().join(format!("tsk8s-rt-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        Lab {
            id,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Create namespace `ts<id><role>` with loopback up.
    pub fn ns(&mut self, role: &str) -> String {
        let name = format!("ts{}{}", self.id, role);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Interface name unique on the machine (≤ 15 chars).
    pub fn ifname(&self, prefix: &str, role: &str) -> String {
        let mut s = format!("{prefix}{}{role}", self.id);
        s.truncate(15);
        s
    }

    /// veth between two namespaces with the given CIDR addresses.
    pub fn link(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str, tag: &str) {
        let va = self.ifname("va", tag);
        let vb = self.ifname("vb", tag);
        sh(&[
            "ip", "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
        ]);
        sh(&["ip", "-n", a, "addr", "add", a_addr, "dev", &va]);
        sh(&["ip", "-n", b, "addr", "add", b_addr, "dev", &vb]);
        sh(&["ip", "-n", a, "link", "set", &va, "up"]);
        sh(&["ip", "-n", b, "link", "set", &vb, "up"]);
    }

    pub fn add_addr(&self, ns: &str, cidr: &str, dev_tag: &str, side: &str) {
        let dev = self.ifname(side, dev_tag);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", &dev]);
    }

    pub fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, content).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        p
    }

    /// Kill a child process started by this lab (by its label).
    pub fn kill(&mut self, label: &str) {
        if let Some(pos) = self.children.iter().position(|(l, _)| l == label) {
            let (label, mut child) = self.children.remove(pos);
            stop(&label, &mut child);
        }
    }

    /// Process id of a child started by this lab.
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, c)| c.id())
    }

    /// The command line of the child labelled `label` (from /proc), its program first.
    pub fn argv(&self, label: &str) -> Vec<String> {
        let pid = self.pid(label).expect("child pid");
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    pub fn signal(&self, label: &str, sig: i32) {
        if let Some((_, c)) = self.children.iter().find(|(l, _)| l == label) {
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    pub fn wait_child(
        &mut self,
        label: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((_, c)) = self.children.iter_mut().find(|(l, _)| l == label) {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
            } else {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn runtime_log(&self) -> String {
        self.logs
            .iter()
            .filter(|(l, _)| l.starts_with("runtime"))
            .map(|(_, p)| fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    /// A bridge `br0` in `ns` with address `cidr` (a cluster node's L2 segment).
    pub fn bridge(&mut self, ns: &str, cidr: &str) {
        sh(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", "br0"]);
        sh(&["ip", "-n", ns, "link", "set", "br0", "up"]);
    }

    /// veth from `ns` (address `cidr`) to the bridge `br0` in `bridge_ns`.
    pub fn attach(&mut self, ns: &str, cidr: &str, bridge_ns: &str, tag: &str) {
        let va = self.ifname("va", tag);
        let vb = self.ifname("vb", tag);
        sh(&[
            "ip", "link", "add", &va, "netns", ns, "type", "veth", "peer", "name", &vb, "netns",
            bridge_ns,
        ]);
        sh(&["ip", "-n", ns, "addr", "add", cidr, "dev", &va]);
        sh(&["ip", "-n", ns, "link", "set", &va, "up"]);
        sh(&["ip", "-n", bridge_ns, "link", "set", &vb, "master", "br0"]);
        sh(&["ip", "-n", bridge_ns, "link", "set", &vb, "up"]);
    }

    /// `/etc/netns/<ns>/hosts`: `ip netns exec` bind-mounts it over /etc/hosts (how the proxy's
    /// `<service>.<namespace>.svc` target resolves in the test, as cluster DNS would).
    pub fn ns_hosts(&self, ns: &str, entries: &[(&str, &str)]) {
        let dir = Path::new("/etc/netns").join(ns);
        fs::create_dir_all(&dir).expect("mkdir /etc/netns/<ns>");
        let mut s = String::from("127.0.0.1 localhost\n");
        for (ip, name) in entries {
            s.push_str(&format!("{ip} {name}\n"));
        }
        fs::write(dir.join("hosts"), s).expect("write hosts");
    }

    /// Start wireguard-go in `ns` for a device and configure it from its generated wg-quick
    /// config, the way `wg-quick up` would: `wg setconf` with the wg-quick-only keys stripped,
    /// the `PostUp` (`wg set %i private-key <path>`) with the TEST-ONLY fixture key in place of
    /// the device's path, then addresses, MTU and a route per AllowedIPs. Returns the interface.
    pub fn wg_device(&mut self, ns: &str, tag: &str, conf: &DeviceConf, key: &Path) -> String {
        let ifname = self.ifname("wg", tag);
        self.wg_device_up(ns, &ifname, conf, key);
        ifname
    }

    pub fn wg_device_up(&mut self, ns: &str, ifname: &str, conf: &DeviceConf, key: &Path) {
        let log_path = self.dir.join(format!("{ifname}.log"));
        let log = fs::File::create(&log_path).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "env",
                "WG_PROCESS_FOREGROUND=1",
                "wireguard-go",
                ifname,
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("wireguard-go");
        self.children.push((format!("wg:{ifname}"), child));
        self.logs.push((format!("wireguard-go {ifname}"), log_path));
        wait_for(Duration::from_secs(10), || {
            Command::new("ip")
                .args(["-n", ns, "link", "show", ifname])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .expect("wireguard-go interface appears");
        let stripped = self.write(&format!("{ifname}.setconf"), &conf.stripped(), 0o600);
        let stripped = stripped.display().to_string();
        sh(&[
            "ip", "netns", "exec", ns, "wg", "setconf", ifname, &stripped,
        ]);
        let key_copy = self.dir.join(format!("{ifname}.key"));
        fs::copy(key, &key_copy).expect("copy fixture key");
        fs::set_permissions(&key_copy, fs::Permissions::from_mode(0o600)).expect("chmod");
        let post_up = conf.post_up();
        assert!(
            !post_up.is_empty(),
            "device conf has a PostUp loading the key"
        );
        for cmd in post_up {
            let words: Vec<String> = cmd
                .replace("%i", ifname)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let [wg, set, iface, what, _path] = words.as_slice() else {
                panic!("unexpected PostUp {cmd:?}");
            };
            assert_eq!(
                (wg.as_str(), set.as_str(), iface.as_str(), what.as_str()),
                ("wg", "set", ifname, "private-key"),
                "PostUp {cmd:?}"
            );
            let key_arg = key_copy.display().to_string();
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "wg",
                "set",
                ifname,
                "private-key",
                &key_arg,
            ]);
        }
        for a in conf.addresses() {
            let mut args = vec!["ip", "-n", ns, "addr", "add", &a, "dev", ifname];
            if a.contains(':') {
                args.push("nodad");
            }
            sh(&args);
        }
        let mtu = conf.mtu().unwrap_or(1420).to_string();
        sh(&["ip", "-n", ns, "link", "set", ifname, "mtu", &mtu, "up"]);
        for r in conf.allowed_ips() {
            sh(&["ip", "-n", ns, "route", "replace", &r, "dev", ifname]);
        }
    }

    /// Run the runtime in `ns` as its emitted workload says: every volume laid out like the
    /// kubelet does and bind-mounted (read-only where the mount says so) at its mountPath in a
    /// private mount namespace (an overlay of /etc and a tmpfs on /run keep the host's untouched),
    /// then the container's `args` exactly, under `runAsUser`/`runAsGroup` (+ `fsGroup`), with
    /// no capabilities and no_new_privs (`allowPrivilegeEscalation: false`).
    pub fn start_workload(&mut self, ns: &str, w: &Workload) -> Running {
        let root = self.dir.join(format!("pod-{}", w.node));
        let mut volumes = BTreeMap::new();
        let mut script = String::from("set -e\n");
        let mut need_etc = false;
        let mut need_run = false;
        for m in &w.mounts {
            let vdir = root.join("volumes").join(&m.volume);
            atomic_write(&vdir, m.source.data(), m.source.mode(), w.fs_group);
            volumes.insert(m.volume.clone(), vdir);
            if m.path.starts_with("/etc/") {
                need_etc = true;
            } else if m.path.starts_with("/var/run/") || m.path.starts_with("/run/") {
                need_run = true;
            } else {
                panic!(
                    "mountPath {} outside /etc and /run: teach the test to mount it",
                    m.path
                );
            }
        }
        if need_etc {
            let up = root.join("etc-upper");
            let work = root.join("etc-work");
            fs::create_dir_all(&up).expect("mkdir");
            fs::create_dir_all(&work).expect("mkdir");
            script.push_str(&format!(
                "mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc\n",
                q(&up.display().to_string()),
                q(&work.display().to_string())
            ));
            // Re-apply what `ip netns exec` bound over /etc (the overlay hides it).
            script.push_str(&format!(
                "if [ -f /etc/netns/{0}/hosts ]; then mount --bind /etc/netns/{0}/hosts /etc/hosts; fi\n",
                q(ns)
            ));
        }
        if need_run {
            script.push_str("mount -t tmpfs -o mode=0755 tmpfs /run\n");
        }
        for m in &w.mounts {
            let src = q(&volumes[&m.volume].display().to_string());
            let dst = q(&m.path);
            script.push_str(&format!("mkdir -p {dst}\nmount --bind {src} {dst}\n"));
            if m.read_only {
                script.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
            }
        }
        let groups = match w.fs_group {
            Some(g) => format!("--groups={g}"),
            None => "--clear-groups".to_string(),
        };
        script.push_str(&format!(
            "exec setpriv --reuid={} --regid={} {groups} --no-new-privs --inh-caps=-all --bounding-set=-all -- {}",
            w.uid,
            w.gid,
            q(&runtime_bin())
        ));
        for a in &w.args {
            script.push(' ');
            script.push_str(&q(a));
        }
        script.push('\n');
        let script_path = root.join("start.sh");
        fs::write(&script_path, &script).expect("write start.sh");
        let log_path = root.join("runtime.log");
        let label = format!("runtime:{}", w.node);
        self.spawn_logged(
            &label,
            Command::new("ip")
                .args(["netns", "exec", ns, "sh"])
                .arg(&script_path),
            log_path,
        );
        Running {
            label,
            ns: ns.to_string(),
            workload: w.clone(),
            volumes,
        }
    }
}

/// The runtime binary the tests start: this tree's, or `TSK8S_E2E_RUNTIME` (a debugging aid:
/// the same test against another build, e.g. to compare two in one sitting).
pub fn runtime_bin() -> String {
    std::env::var("TSK8S_E2E_RUNTIME")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_tsk8s-runtime").to_string())
}

impl Lab {
    /// Start `tsk8s-runtime <args>` in `ns` as UID/GID 65532 with no capabilities and
    /// no_new_privs (configs written by hand, not from a workload). Labelled `runtime:<name>`.
    pub fn start_runtime(&mut self, name: &str, ns: &str, args: &[String]) -> String {
        let log_path = self.dir.join(format!("runtime-{name}.log"));
        let label = format!("runtime:{name}");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            ns,
            "setpriv",
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            &runtime_bin(),
        ])
        .args(args);
        self.spawn_logged(&label, &mut cmd, log_path);
        label
    }

    /// Start a runtime command (`TSK8S_LOG=info`, or `TSK8S_E2E_LOG`; stdout and stderr to
    /// `log_path`, also linked into `TSK8S_E2E_KEEP_LOGS` when set), kept as the child
    /// `label` with its log.
    fn spawn_logged(&mut self, label: &str, cmd: &mut Command, log_path: PathBuf) {
        let log = fs::File::create(&log_path).expect("log");
        // Debugging aids: the runtime's log filter, and a dir that keeps a hard link to each
        // log (the test's temp dir goes with the test).
        let filter = std::env::var("TSK8S_E2E_LOG").unwrap_or_else(|_| "info".into());
        if let Ok(d) = std::env::var("TSK8S_E2E_KEEP_LOGS") {
            let _ = fs::hard_link(&log_path, format!("{d}/{label}-{}.log", std::process::id()));
        }
        let child = cmd
            .env("TSK8S_LOG", filter)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("runtime");
        self.children.push((label.to_string(), child));
        self.logs.push((label.to_string(), log_path));
    }
}

/// Kill a child; for wireguard-go also remove the control socket it cannot clean up after
/// SIGKILL (`/var/run/wireguard` is shared by all namespaces).
fn stop(label: &str, child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(ifname) = label.strip_prefix("wg:") {
        let _ = fs::remove_file(format!("/var/run/wireguard/{ifname}.sock"));
    }
}

/// Single-quote for sh.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A runtime started from a workload.
pub struct Running {
    pub label: String,
    pub ns: String,
    pub workload: Workload,
    /// volume name → the dir bind-mounted at its mountPath.
    pub volumes: BTreeMap<String, PathBuf>,
}

impl Running {
    /// The kubelet's update of a mounted ConfigMap/Secret: new data swapped in via `..data`.
    pub fn update_volume(&self, volume: &str, data: &BTreeMap<String, Vec<u8>>) {
        let m = self
            .workload
            .mounts
            .iter()
            .find(|m| m.volume == volume)
            .unwrap_or_else(|| panic!("no volume {volume}"));
        atomic_write(
            &self.volumes[volume],
            data,
            m.source.mode(),
            self.workload.fs_group,
        );
    }

    /// The admin address from the workload's node.json, as seen from inside its namespace.
    pub fn admin(&self) -> String {
        let listen = self.workload.node_json()["admin_listen"]
            .as_str()
            .expect("admin_listen")
            .to_string();
        listen.replace("0.0.0.0:", "127.0.0.1:")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (label, c) in self.children.iter_mut() {
            stop(label, c);
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            for (label, path) in &self.logs {
                eprintln!(
                    "--- {label} log ({}):\n{}",
                    path.display(),
                    fs::read_to_string(path).unwrap_or_default()
                );
            }
            eprintln!("(lab dir kept: {})", self.dir.display());
        }
    }
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Run `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .expect("thread in netns")
}

/// Spawn a long-running thread inside `ns` (servers).
pub fn spawn_in_ns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    });
}

fn enter(path: &str) {
    let f = fs::File::open(path).expect("open netns");
    // SAFETY: valid fd; only this thread changes namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}");
}

/// A tiny HTTP server answering every request with `body`. Bound inside `ns`.
pub fn http_server(ns: &str, addr: &str, body: &'static str) {
    http_serve(ns, addr, move |_, c| {
        let _ = write!(
            c,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
}

/// An HTTP server inside `ns`, a thread per connection: `answer` gets each request's head (up
/// to its blank line) and writes the reply.
pub fn http_serve(
    ns: &str,
    addr: &str,
    answer: impl Fn(&[u8], &mut TcpStream) + Send + Sync + 'static,
) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let answer = std::sync::Arc::new(answer);
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind http");
        let _ = tx.send(());
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                answer(&req, &mut c);
            });
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("http server up");
}

/// A UDP echo server inside `ns`.
pub fn udp_echo(ns: &str, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let s = UdpSocket::bind(addr).expect("bind udp");
        let _ = tx.send(());
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("udp server up");
}

/// GET / from inside `ns`; the body on success.
pub fn http_get(ns: &str, addr: &str, timeout: Duration) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    in_ns(ns, move || {
        let mut c = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        c.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        write!(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| format!("read: {e}"))?;
        Ok(s.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    })
}

/// Retry `http_get` until it succeeds or `total` passes.
pub fn http_get_retry(ns: &str, addr: &str, total: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        match http_get(ns, addr, Duration::from_secs(3)) {
            Ok(b) => return Ok(b),
            Err(e) if start.elapsed() > total => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Send one UDP datagram from inside `ns` and wait for a reply.
pub fn udp_roundtrip(
    ns: &str,
    addr: &str,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    in_ns(ns, move || {
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        // Resend a few times: the first datagram may wait for a WireGuard handshake.
        while start.elapsed() < timeout * 3 {
            s.send_to(&payload, addr).map_err(|e| e.to_string())?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(buf[..n].to_vec());
            }
        }
        Err(format!("no UDP reply from {addr}"))
    })
}

/// Scrape the runtime's /metrics inside `ns`.
pub fn metrics(ns: &str, admin: &str) -> String {
    let addr: SocketAddr = admin.parse().expect("admin");
    in_ns(ns, move || {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return String::new();
        };
        let _ = write!(c, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s
    })
}

pub fn healthz(ns: &str, admin: &str) -> bool {
    let addr: SocketAddr = admin.parse().expect("admin");
    in_ns(ns, move || {
        let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let _ = write!(c, "GET /healthz HTTP/1.0\r\n\r\n");
        let mut s = String::new();
        let _ = c.read_to_string(&mut s);
        s.starts_with("HTTP/1.0 200")
    })
}

/// Value of a metric line (exact series name with labels).
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// A DNS query for `name` (type A).
pub fn dns_query(name: &str) -> Vec<u8> {
    let mut v = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        v.push(l.len() as u8);
        v.extend_from_slice(l.as_bytes());
    }
    v.extend_from_slice(&[0, 0, 1, 0, 1]);
    v
}

/// Last four bytes of a DNS response with one A answer; rcode.
pub fn dns_parse(resp: &[u8]) -> (u8, Option<[u8; 4]>) {
    let rcode = resp.get(3).map(|b| b & 0x0f).unwrap_or(255);
    let an = resp
        .get(6..8)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0);
    let ip = if an > 0 && resp.len() >= 4 {
        let n = resp.len();
        Some([resp[n - 4], resp[n - 3], resp[n - 2], resp[n - 1]])
    } else {
        None
    };
    (rcode, ip)
}
