//! `tsk8s-runtime`: a rootless userspace WireGuard data plane.
//!
//! See `README.md` in this package for the design. Layers:
//! [`wire`] (UDP + boringtun `Tunn` per peer) → filter (allowed IPs, policy [`Matcher`],
//! connection tracking; `engine/filter.rs`) → smoltcp userspace TCP/IP (`engine/stack.rs`) →
//! forwarders (kernel sockets; `engine/forward.rs`, `engine/udp.rs`). The packet loop that
//! drives them is [`engine::Engine`].
//!
//! [`Matcher`]: tsk8s_policy::matcher::Matcher

pub mod admin;
pub mod config;
pub mod dns;
pub mod engine;
pub mod gateway;
pub mod metrics;
pub mod packet;
pub mod resolve;
pub mod sendq;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{info, warn};

pub use config::Paths;

/// Flags raised by signals: `stop` on SIGTERM or SIGINT, `hup` on SIGHUP (reload). Used by
/// the single-node runtime and the gateway alike.
pub(crate) fn signal_flags() -> Result<(Arc<AtomicBool>, Arc<AtomicBool>), String> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
        .map_err(|e| format!("signal handler: {e}"))?;
    Ok((stop, hup))
}

/// Run the data plane until SIGTERM/SIGINT. Errors are for the caller to print (exit 2).
pub fn run(paths: Paths) -> Result<(), String> {
    let (stop, hup) = signal_flags()?;

    let mut fp = config::fingerprint(&paths);
    let mut loaded = config::load(&paths).map_err(|e| e.to_string())?;
    let shared = Arc::new(admin::Shared::default());
    let admin_addr = admin::spawn(&loaded.node.admin_listen, shared.clone())
        .map_err(|e| format!("admin listener {}: {e}", loaded.node.admin_listen))?;
    info!(admin = %admin_addr, "admin server listening");
    let tuning = engine::Tuning::default();
    loop {
        let mut eng = engine::Engine::new(loaded.clone(), tuning).map_err(|e| {
            format!(
                "starting data plane on UDP port {}: {e}",
                loaded.node.listen_port
            )
        })?;
        shared.ready.store(true, Ordering::Relaxed);
        info!(
            node = %loaded.node.name,
            udp = %eng.local_udp,
            ipv4 = %loaded.node.ipv4,
            ipv6 = %loaded.node.ipv6,
            peers = loaded.peers.len(),
            "data plane up"
        );
        loop {
            let mut changed = || {
                let f = config::fingerprint(&paths);
                let c = f != fp;
                fp = f;
                c
            };
            let reload = eng
                .run(&stop, &hup, &shared, &mut changed)
                .map_err(|e| format!("packet loop: {e}"))?;
            if !reload {
                shared.ready.store(false, Ordering::Relaxed);
                shared.stop.store(true, Ordering::Relaxed);
                info!("shutting down");
                return Ok(());
            }
            match config::load(&paths) {
                Ok(new) if eng.needs_restart(&new) => {
                    info!("identity or listen port changed: restarting the data plane");
                    shared.ready.store(false, Ordering::Relaxed);
                    loaded = new;
                    break;
                }
                Ok(new) => {
                    let peers = new.peers.len();
                    match eng.apply(new) {
                        Ok(()) => {
                            eng.net.counters.reloads += 1;
                            info!(peers, "config reloaded");
                        }
                        Err(e) => {
                            eng.net.counters.reload_errors += 1;
                            warn!(error = %e, "applying reloaded config failed");
                        }
                    }
                }
                Err(e) => {
                    eng.net.counters.reload_errors += 1;
                    warn!(error = %e, "config reload failed; keeping the running config");
                }
            }
        }
        drop(eng);
    }
}

#[doc(hidden)]
pub mod fuzz {
    //! Fixtures for fuzzing the packet path.
    use std::cell::RefCell;

    use super::*;
    use tsk8s_policy::filter::{FilterRule, NetPortRange, PortRange};
    use tsk8s_policy::runtime_config::{
        DnsRecord, MeshConfig, Mode, NodeConfig, Peer, PortMap, Protocol,
    };

    pub const NODE_KEY: [u8; 32] = [7; 32];
    pub const PEER_KEY: [u8; 32] = [9; 32];

    pub fn fixture() -> config::Loaded {
        let pubkey = |k: [u8; 32]| {
            config::encode_key(
                boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(k))
                    .as_bytes(),
            )
        };
        let node = NodeConfig {
            name: "fuzz".into(),
            public_key: pubkey(NODE_KEY),
            ipv4: "100.64.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST),
            ipv6: "fd7a:115c:a1e0::1"
                .parse()
                .unwrap_or(std::net::Ipv6Addr::LOCALHOST),
            listen_port: 0,
            mtu: 1280,
            admin_listen: "127.0.0.1:0".into(),
            mode: Mode::Sidecar {
                ports: vec![PortMap {
                    protocol: Protocol::Tcp,
                    listen: 80,
                    target: 9,
                }],
            },
        };
        let mesh = MeshConfig {
            domain: "fuzz.example".into(),
            peers: vec![Peer {
                name: "dev".into(),
                public_key: pubkey(PEER_KEY),
                allowed_ips: vec![
                    "100.64.0.2/32"
                        .parse()
                        .expect("a literal /32 network parses"),
                ],
                endpoint: Some("127.0.0.1:9".into()),
                persistent_keepalive: None,
            }],
            filter: vec![FilterRule {
                src_ips: vec!["*".into()].into(),
                dst_ports: vec![NetPortRange {
                    ip: "*".into(),
                    ports: PortRange::ANY,
                }],
                ..Default::default()
            }],
            dns: vec![DnsRecord {
                name: "a.fuzz.example".into(),
                ipv4: None,
                ipv6: None,
            }],
        };
        match config::assemble(node, mesh, NODE_KEY, "fuzz", "fuzz") {
            Ok(l) => l,
            Err(e) => panic!("fixture: {e}"),
        }
    }

    thread_local! {
        static ENGINE: RefCell<Option<engine::Engine>> = const { RefCell::new(None) };
    }

    fn with_engine(f: impl FnOnce(&mut engine::Engine)) {
        ENGINE.with(|e| {
            let mut e = e.borrow_mut();
            if e.is_none() {
                *e = engine::Engine::new(fixture(), engine::Tuning::default()).ok();
            }
            if let Some(eng) = e.as_mut() {
                f(eng);
            }
        });
    }

    /// Feed one UDP datagram (as if from 127.0.0.1:9) through the WireGuard layer.
    pub fn fuzz_datagram(bytes: &[u8]) {
        with_engine(|e| e.fuzz_datagram(bytes));
    }

    /// Feed one decrypted inner packet (as if from the fixture's peer) through filter + stack.
    pub fn fuzz_inner_packet(bytes: &[u8]) {
        with_engine(|e| e.fuzz_inner(bytes));
    }

    thread_local! {
        static DISPATCH: RefCell<Option<gateway::Dispatch>> = const { RefCell::new(None) };
    }

    /// Feed one datagram through the gateway's dispatch: as if from the network (route), then
    /// as if a relayed sidecar sent it to a device (learn), then once more from the network.
    pub fn fuzz_gateway_datagram(bytes: &[u8]) {
        DISPATCH.with(|d| {
            let mut d = d.borrow_mut();
            let keys = |r: std::ops::Range<u8>| -> Vec<[u8; 32]> {
                r.map(|i| {
                    *boringtun::x25519::PublicKey::from(&boringtun::x25519::StaticSecret::from(
                        [i; 32],
                    ))
                    .as_bytes()
                })
                .collect()
            };
            let disp =
                d.get_or_insert_with(|| gateway::Dispatch::new(&keys(1..4), &keys(7..9), 64));
            let src =
                std::net::SocketAddr::from(([192, 0, 2, bytes.first().copied().unwrap_or(0)], 9));
            let now = std::time::Instant::now();
            let _ = disp.route(src, bytes, now);
            let _ = disp.learn(src, bytes.len() % 2, bytes, now);
            let _ = disp.route(src, bytes, now);
        });
    }
}

pub use fuzz::{fuzz_datagram, fuzz_gateway_datagram, fuzz_inner_packet};
