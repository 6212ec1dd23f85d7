//! `/healthz` and `/metrics` on the admin address: a small HTTP/1.0 server on its own thread.
//!
//! Concurrent and bounded, so that probes always answer: one `mio` loop serves up to
//! [`MAX_CONNS`] connections at once, each must deliver its request line within
//! [`HEADER_TIMEOUT`] and take its response within [`WRITE_TIMEOUT`]; when all slots are taken,
//! the oldest connection is dropped for the new one. A client that trickles bytes holds one
//! slot for at most a second and never delays the others.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Connections served at once; the oldest is dropped for a new one.
pub const MAX_CONNS: usize = 8;
/// Time a client has to send its request line.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read.
const MAX_REQUEST: usize = 2048;
const LISTENER: Token = Token(usize::MAX);

/// State shared between the packet loop and the admin thread.
#[derive(Default)]
pub struct Shared {
    /// Config loaded and UDP socket bound.
    pub ready: AtomicBool,
    /// Last rendered metrics text.
    pub metrics: Mutex<String>,
    pub stop: AtomicBool,
}

struct Conn {
    id: usize,
    stream: TcpStream,
    born: Instant,
    req: Vec<u8>,
    /// Response being written, and how much of it is out.
    resp: Option<(Vec<u8>, usize)>,
}

/// Bind the admin listener and serve it on a thread.
pub fn spawn(addr: &str, shared: Arc<Shared>) -> io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    let mut listener = TcpListener::from_std(std_listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    std::thread::Builder::new()
        .name("admin".into())
        .stack_size(128 * 1024)
        .spawn(move || serve_loop(poll, listener, &shared))?;
    Ok(local)
}

fn serve_loop(mut poll: Poll, listener: TcpListener, shared: &Shared) {
    let mut events = Events::with_capacity(64);
    let mut conns: VecDeque<Conn> = VecDeque::new();
    let mut next_id = 0usize;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let _ = poll.poll(&mut events, Some(Duration::from_millis(200)));
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    if conns.len() >= MAX_CONNS
                        && let Some(mut old) = conns.pop_front()
                    {
                        let _ = poll.registry().deregister(&mut old.stream);
                    }
                    let id = next_id;
                    next_id = next_id.wrapping_add(1) % (usize::MAX - 1);
                    if poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(id),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        conns.push_back(Conn {
                            id,
                            stream,
                            born: Instant::now(),
                            req: Vec::new(),
                            resp: None,
                        });
                    }
                }
            } else if let Some(c) = conns.iter_mut().find(|c| c.id == ev.token().0) {
                drive(c, shared);
            }
        }
        // Finished or overdue connections go.
        let now = Instant::now();
        conns.retain_mut(|c| {
            let done = match &c.resp {
                Some((r, sent)) => *sent >= r.len(),
                None => false,
            };
            let overdue = match c.resp {
                None => now.duration_since(c.born) > HEADER_TIMEOUT,
                Some(_) => now.duration_since(c.born) > HEADER_TIMEOUT + WRITE_TIMEOUT,
            };
            if done || overdue {
                let _ = poll.registry().deregister(&mut c.stream);
                false
            } else {
                true
            }
        });
    }
}

/// Read what is there; once the request line is complete, write the response.
fn drive(c: &mut Conn, shared: &Shared) {
    if c.resp.is_none() {
        let mut buf = [0u8; 512];
        let mut eof = false;
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.req.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if c.req.contains(&b'\n') || c.req.len() >= MAX_REQUEST {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if eof || c.req.contains(&b'\n') || c.req.len() >= MAX_REQUEST {
            c.resp = Some((respond(&c.req, shared), 0));
        } else {
            return;
        }
    }
    if let Some((r, sent)) = c.resp.as_mut() {
        while *sent < r.len() {
            match c.stream.write(r.get(*sent..).unwrap_or_default()) {
                Ok(0) => break,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    *sent = r.len();
                    break;
                }
            }
        }
    }
}

fn respond(req: &[u8], shared: &Shared) -> Vec<u8> {
    let req = String::from_utf8_lossy(req);
    let path = req
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("");
    let (status, ctype, body) = match path {
        "/healthz" | "/readyz" => {
            if shared.ready.load(Ordering::Relaxed) {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                )
            }
        }
        "/metrics" => {
            let m = shared.metrics.lock().map(|m| m.clone()).unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4", m)
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `health` subcommand: GET `/healthz` at `addr`; true for a 200 answer within 2 s.
pub fn check(addr: &str) -> Result<bool, String> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|_| format!("--addr {addr:?}: not an IP:port address"))?;
    let deadline = Duration::from_secs(2);
    let Ok(mut c) = StdTcpStream::connect_timeout(&sa, deadline) else {
        return Ok(false);
    };
    let _ = c.set_read_timeout(Some(deadline));
    let _ = c.set_write_timeout(Some(deadline));
    if c.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return Ok(false);
    }
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match c.read(head.get_mut(n..).unwrap_or_default()) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let line = head.get(..n).unwrap_or_default();
    Ok(line.starts_with(b"HTTP/1.0 200") || line.starts_with(b"HTTP/1.1 200"))
}
