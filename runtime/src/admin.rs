//! `/healthz` and `/metrics` on the admin address (a small blocking HTTP/1.0 server thread).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// State shared between the packet loop and the admin thread.
#[derive(Default)]
pub struct Shared {
    /// Config loaded and UDP socket bound.
    pub ready: AtomicBool,
    /// Last rendered metrics text.
    pub metrics: Mutex<String>,
    pub stop: AtomicBool,
}

/// Bind the admin listener and serve it on a thread.
pub fn spawn(addr: &str, shared: Arc<Shared>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("admin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for conn in listener.incoming() {
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(c, &shared);
                }
            }
        })?;
    Ok(local)
}

fn serve(mut c: TcpStream, shared: &Shared) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match c.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
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
    let _ = write!(
        c,
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
