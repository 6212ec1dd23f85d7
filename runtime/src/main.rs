use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Rootless userspace WireGuard data plane for tsk8s.
#[derive(Parser)]
#[command(name = "tsk8s-runtime", version, about)]
struct Cli {
    /// Node config (node.json from the node's ConfigMap).
    #[arg(long, default_value = "/etc/tsk8s/node/node.json")]
    node: PathBuf,
    /// Mesh: the directory of its shards `mesh-<n>.jsonl` (the projected volume of the mesh's
    /// ConfigMaps), or one shard file.
    #[arg(long, default_value = "/etc/tsk8s/mesh")]
    mesh: PathBuf,
    /// File holding the base64 WireGuard private key (from the node's Secret).
    #[arg(long, default_value = "/var/run/secrets/tsk8s/private-key")]
    private_key_file: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Read a base64 private key on stdin, print its public key.
    Pubkey,
    /// Ask a running runtime's admin server for `/healthz` (for `exec` probes): exit 0 when
    /// healthy, 1 when not (or not answering within 2 s), 2 for a bad address.
    Health {
        /// The runtime's admin address (`admin_listen` in node.json, as seen from here).
        #[arg(long, default_value = "127.0.0.1:9901")]
        addr: String,
    },
    /// Terminate WireGuard for every node of a cluster (and relay its sidecars) on one UDP
    /// port (`publish="gateway"`).
    Gateway {
        /// Gateway config (gateway.json from the cluster's gateway ConfigMap).
        #[arg(long, default_value = "/etc/tsk8s/gateway/gateway.json")]
        config: PathBuf,
        /// Mesh: the directory of its shards `mesh-<n>.jsonl`, or one shard file.
        #[arg(long, default_value = "/etc/tsk8s/mesh")]
        mesh: PathBuf,
        /// Directory holding `<node>/private-key` for every node in gateway.json.
        #[arg(long, default_value = tsk8s_policy::runtime_config::GATEWAY_KEY_DIR)]
        key_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Keep large buffers (TCP socket rings) as lazily-faulted mmaps: glibc would otherwise raise
    // its mmap threshold after the first free and serve them from the heap, zero-filled and
    // resident. musl (the container build) always maps large allocations.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse();
    if let Some(Cmd::Health { addr }) = &cli.cmd {
        return match tsk8s_runtime::admin::check(addr) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                eprintln!("unhealthy: no 200 from http://{addr}/healthz");
                ExitCode::from(1)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Cmd::Pubkey) = cli.cmd {
        let mut s = String::new();
        if std::io::stdin().read_to_string(&mut s).is_err() {
            eprintln!("error: reading stdin");
            return ExitCode::from(2);
        }
        return match tsk8s_runtime::config::public_from_private(&s) {
            Some(p) => {
                println!("{p}");
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("error: stdin is not a base64 WireGuard private key");
                ExitCode::from(2)
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("TSK8S_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    if let Some(Cmd::Gateway {
        config,
        mesh,
        key_dir,
    }) = cli.cmd
    {
        let paths = tsk8s_runtime::gateway::GatewayPaths {
            config,
            mesh,
            key_dir,
        };
        return match tsk8s_runtime::gateway::run(paths) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "fatal");
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let paths = tsk8s_runtime::Paths {
        node: cli.node,
        mesh: cli.mesh,
        private_key: cli.private_key_file,
    };
    match tsk8s_runtime::run(paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fatal");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
