//! A UDP relay that holds every datagram a fixed time in each direction: the long-RTT path
//! of `bench/runtime/run.sh` (the reference machine has no `netem`). Not part of the runtime.
//!
//! ```text
//! delay_relay LISTEN FORWARD DELAY_MS
//!   LISTEN    address the client side sends to (e.g. 10.98.8.1:40000)
//!   FORWARD   address datagrams from the client go to (the far WireGuard endpoint)
//!   DELAY_MS  one-way delay, both directions (RTT = 2 x DELAY_MS); 0 forwards at once
//! ```
//!
//! Datagrams from LISTEN's peers go out of a second socket (bound to the unspecified address
//! of FORWARD's family, ephemeral port) to FORWARD; whatever comes back to that socket goes to
//! the client that sent last. One thread receives and one sends per direction; the delay
//! is fixed, so each direction is a FIFO and a channel is enough. Socket buffers are raised
//! to 32 MiB (`SO_RCVBUFFORCE`, root) so the relay itself does not drop; run it in a
//! network namespace of its own. Prints the datagrams it relayed each way on SIGTERM/SIGINT
//! (or never, when killed harder).
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUF: usize = 65_536;
const SOCK_BUF: libc::c_int = 32 << 20;

fn raise_buffers(s: &UdpSocket) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt with a valid fd and a c_int option value of the right size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&SOCK_BUF as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

type Queue = mpsc::Sender<(Instant, Vec<u8>)>;

/// Receive on `from`; each datagram is due `delay` later on the queue (or sent at once).
fn receive(
    from: &UdpSocket,
    delay: Duration,
    queue: &Queue,
    send_now: &dyn Fn(&[u8]),
    on_source: &dyn Fn(SocketAddr),
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; BUF];
    loop {
        let Ok((n, src)) = from.recv_from(&mut buf) else {
            continue;
        };
        on_source(src);
        count.fetch_add(1, Ordering::Relaxed);
        let Some(d) = buf.get(..n) else { continue };
        if delay.is_zero() {
            send_now(d);
        } else if queue.send((Instant::now() + delay, d.to_vec())).is_err() {
            return;
        }
    }
}

/// Send each queued datagram when it is due.
fn deliver(queue: mpsc::Receiver<(Instant, Vec<u8>)>, send: &dyn Fn(&[u8])) {
    while let Ok((due, d)) = queue.recv() {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        send(&d);
    }
}

/// `blast` / `sink`: the relay's own ceiling.
fn blast_or_sink(mode: &str, addr: SocketAddr, secs: u64) -> std::io::Result<()> {
    let any: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let s = UdpSocket::bind(if mode == "sink" { addr } else { any })?;
    raise_buffers(&s);
    let window = Duration::from_secs(secs);
    if mode == "blast" {
        let d = vec![0x5au8; 1232];
        let end = Instant::now() + window;
        let mut n = 0u64;
        while Instant::now() < end {
            for _ in 0..64 {
                if s.send_to(&d, addr).is_ok() {
                    n += 1;
                }
            }
        }
        println!("sent {n} datagrams");
        return Ok(());
    }
    let mut buf = vec![0u8; BUF];
    let (first, _) = s.recv_from(&mut buf)?;
    let start = Instant::now();
    let mut bytes = first as u64;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    while start.elapsed() < window {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            bytes += n as u64;
        }
    }
    println!(
        "{:.0}",
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, addr, secs] = args.as_slice()
        && (mode == "blast" || mode == "sink")
    {
        return match (addr.parse(), secs.parse()) {
            (Ok(a), Ok(s)) => match blast_or_sink(mode, a, s) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("delay_relay {mode}: {e}");
                    ExitCode::from(1)
                }
            },
            _ => {
                eprintln!("usage: delay_relay {mode} ADDR:PORT SECONDS");
                ExitCode::from(2)
            }
        };
    }
    let parsed = match args.as_slice() {
        [l, f, d] => l
            .parse::<SocketAddr>()
            .ok()
            .zip(f.parse::<SocketAddr>().ok())
            .zip(d.parse::<u64>().ok()),
        _ => None,
    };
    let Some(((listen, forward), delay_ms)) = parsed else {
        eprintln!("usage: delay_relay LISTEN_ADDR:PORT FORWARD_ADDR:PORT DELAY_MS");
        return ExitCode::from(2);
    };
    let delay = Duration::from_millis(delay_ms);
    let bind_any: SocketAddr = if forward.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(forward)
    } else {
        "[::]:0".parse().unwrap_or(forward)
    };
    let (front, back) = match (UdpSocket::bind(listen), UdpSocket::bind(bind_any)) {
        (Ok(a), Ok(b)) => (Arc::new(a), Arc::new(b)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("delay_relay: bind: {e}");
            return ExitCode::from(2);
        }
    };
    raise_buffers(&front);
    raise_buffers(&back);
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);

    // Client -> forward.
    let (tx_f, rx_f) = mpsc::channel();
    let send_f = {
        let back = back.clone();
        move |d: &[u8]| {
            let _ = back.send_to(d, forward);
        }
    };
    let send_f = Arc::new(send_f);
    {
        let (front, client, counts, send_f) = (
            front.clone(),
            client.clone(),
            counts.clone(),
            send_f.clone(),
        );
        std::thread::spawn(move || {
            receive(
                &front,
                delay,
                &tx_f,
                &*send_f,
                &|src| {
                    if let Ok(mut c) = client.lock() {
                        *c = Some(src);
                    }
                },
                &counts[0],
            )
        });
    }
    std::thread::spawn(move || deliver(rx_f, &*send_f));

    // Forward -> client.
    let (tx_b, rx_b) = mpsc::channel();
    let send_b = {
        let (front, client) = (front.clone(), client.clone());
        move |d: &[u8]| {
            let to = client.lock().ok().and_then(|c| *c);
            if let Some(to) = to {
                let _ = front.send_to(d, to);
            }
        }
    };
    let send_b = Arc::new(send_b);
    {
        let (back, counts, send_b) = (back.clone(), counts.clone(), send_b.clone());
        std::thread::spawn(move || receive(&back, delay, &tx_b, &*send_b, &|_| {}, &counts[1]));
    }
    std::thread::spawn(move || deliver(rx_b, &*send_b));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "relayed {} datagrams forward, {} back",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed)
    );
    ExitCode::SUCCESS
}
