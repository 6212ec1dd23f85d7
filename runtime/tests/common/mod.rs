//! Network-namespace fixtures for end-to-end tests: wireguard-go clients, veth links, servers
//! running on threads that entered a namespace, and the runtime as an unprivileged process.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);
pub const RUNTIME_UID: &str = "65532";

/// Why privileged tests cannot run here, if they cannot.
pub fn cannot_run() -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["wireguard-go", "wg", "ip", "setpriv"] {
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
    let probe = format!("tsk8sprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Some("cannot create network namespaces".into());
    }
    None
}

/// Returns false (and prints why) when the test should be skipped; panics in CI.
pub fn should_run(test: &str) -> bool {
    match cannot_run() {
        None => true,
        Some(reason) => {
            if std::env::var("TSK8S_REQUIRE_PRIVILEGED_TESTS").as_deref() == Ok("1") {
                panic!("{test}: privileged test cannot run: {reason}");
            }
            eprintln!(
                "skipping {test}: {reason} (set TSK8S_REQUIRE_PRIVILEGED_TESTS=1 to fail instead)"
            );
            false
        }
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

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

pub struct Keys {
    pub private: String,
    pub public: String,
}

pub fn genkey() -> Keys {
    let private = sh_out(&["wg", "genkey"], "");
    let public = sh_out(&[env!("CARGO_BIN_EXE_tsk8s-runtime"), "pubkey"], &private);
    let wg_public = sh_out(&["wg", "pubkey"], &private);
    assert_eq!(public, wg_public, "pubkey subcommand agrees with wg pubkey");
    Keys { private, public }
}

/// One test's namespaces, processes and files; torn down on drop.
pub struct Lab {
    pub id: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
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

    /// Start wireguard-go in `ns` and configure it. Returns the interface name.
    pub fn wg_client(&mut self, ns: &str, tag: &str, c: &WgClient) -> String {
        let ifname = self.ifname("wg", tag);
        self.wg_up(ns, &ifname, c);
        ifname
    }

    pub fn wg_up(&mut self, ns: &str, ifname: &str, c: &WgClient) {
        let log = fs::File::create(self.dir.join(format!("{ifname}.log"))).expect("log");
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
        let key = self.write(&format!("{ifname}.key"), &c.private_key, 0o600);
        let mut args: Vec<String> = vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            ns.into(),
            "wg".into(),
            "set".into(),
            ifname.into(),
            "private-key".into(),
            key.display().to_string(),
        ];
        if let Some(p) = c.listen_port {
            args.extend(["listen-port".into(), p.to_string()]);
        }
        args.extend([
            "peer".into(),
            c.peer_public.clone(),
            "allowed-ips".into(),
            c.allowed_ips.join(","),
        ]);
        if let Some(e) = &c.endpoint {
            args.extend(["endpoint".into(), e.clone()]);
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        sh(&refs);
        sh(&["ip", "-n", ns, "addr", "add", &c.address, "dev", ifname]);
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            ifname,
            "mtu",
            &c.mtu.to_string(),
            "up",
        ]);
        for r in &c.allowed_ips {
            sh(&["ip", "-n", ns, "route", "replace", r, "dev", ifname]);
        }
    }

    /// Kill a child process started by this lab (by its label).
    pub fn kill(&mut self, label: &str) {
        if let Some(pos) = self.children.iter().position(|(l, _)| l == label) {
            let (_, mut child) = self.children.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
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

    /// Start the runtime in `ns` as an unprivileged user.
    pub fn runtime(
        &mut self,
        ns: &str,
        node_json: &str,
        mesh_json: &str,
        private_key: &str,
    ) -> RuntimeFiles {
        let node_dir = self.dir.join("node");
        let mesh_dir = self.dir.join("mesh");
        let secret_dir = self.dir.join("secret");
        for d in [&node_dir, &mesh_dir, &secret_dir] {
            fs::create_dir_all(d).expect("mkdir");
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let files = RuntimeFiles {
            node: node_dir.join("node.json"),
            mesh: mesh_dir.join("mesh.json"),
            key: secret_dir.join("private-key"),
        };
        fs::write(&files.node, node_json).expect("write");
        fs::write(&files.mesh, mesh_json).expect("write");
        fs::write(&files.key, format!("{private_key}\n")).expect("write");
        fs::set_permissions(&files.node, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&files.mesh, fs::Permissions::from_mode(0o644)).expect("chmod");
        sh(&[
            "chown",
            &format!("{RUNTIME_UID}:{RUNTIME_UID}"),
            &files.key.display().to_string(),
        ]);
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o400)).expect("chmod");
        let log = fs::File::create(self.dir.join("runtime.log")).expect("log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid",
                RUNTIME_UID,
                "--regid",
                RUNTIME_UID,
                "--clear-groups",
                "--",
            ])
            .arg(env!("CARGO_BIN_EXE_tsk8s-runtime"))
            .arg("--node")
            .arg(&files.node)
            .arg("--mesh")
            .arg(&files.mesh)
            .arg("--private-key-file")
            .arg(&files.key)
            .env("TSK8S_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("runtime");
        self.children.push(("runtime".into(), child));
        files
    }

    pub fn runtime_log(&self) -> String {
        fs::read_to_string(self.dir.join("runtime.log")).unwrap_or_default()
    }
}

pub struct RuntimeFiles {
    pub node: PathBuf,
    pub mesh: PathBuf,
    pub key: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("runtime log:\n{}", self.runtime_log());
        }
    }
}

pub struct WgClient {
    pub private_key: String,
    pub peer_public: String,
    pub address: String,
    pub allowed_ips: Vec<String>,
    pub endpoint: Option<String>,
    pub listen_port: Option<u16>,
    pub mtu: u16,
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
    let addr: SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_ns(ns, move || {
        let l = TcpListener::bind(addr).expect("bind http");
        let _ = tx.send(());
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
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
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
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
