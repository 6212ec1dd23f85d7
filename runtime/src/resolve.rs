//! Name resolution off the packet path.
//!
//! Peer endpoints (`host:port`) and the proxy target may be DNS names. `getaddrinfo` blocks (for
//! seconds when a resolver is slow), so it never runs on the packet thread: a helper thread
//! resolves the names the engine wants, again every [`REFRESH`] (a Service whose address
//! changes is followed without a reload) and at once when asked (a failed connect to the
//! target). Results go back over a channel the packet loop drains each iteration; a `mio`
//! waker wakes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};

use crate::config;

/// How often every name is resolved again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Shortest gap between two resolutions asked for by the engine (`refresh_now`).
pub const MIN_GAP: Duration = Duration::from_secs(2);

enum Cmd {
    /// Resolve exactly these names from now on (and now).
    Want(Vec<String>),
    /// Resolve again now.
    Refresh,
}

/// One resolution: the name as configured and its first address (None: did not resolve).
pub type Answer = (String, Option<SocketAddr>);

pub struct Resolver {
    cmd: Sender<Cmd>,
    answers: Receiver<Answer>,
    last_refresh: Option<Instant>,
}

/// Is `s` a name that needs resolving (not an `ip:port` literal)?
pub fn is_name(s: &str) -> bool {
    s.parse::<SocketAddr>().is_err()
}

impl Resolver {
    /// Start the helper thread; `wake` is called after answers were sent.
    pub fn spawn(wake: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<Resolver> {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Cmd>();
        let (ans_tx, ans_rx) = mpsc::channel::<Answer>();
        std::thread::Builder::new()
            .name("resolver".into())
            .stack_size(256 * 1024)
            .spawn(move || run(cmd_rx, ans_tx, wake))?;
        Ok(Resolver {
            cmd: cmd_tx,
            answers: ans_rx,
            last_refresh: None,
        })
    }

    /// Replace the set of names (`host:port`) to resolve; they are resolved at once.
    pub fn want(&self, mut names: Vec<String>) {
        names.sort();
        names.dedup();
        let _ = self.cmd.send(Cmd::Want(names));
    }

    /// Ask for a new resolution now (at most once per [`MIN_GAP`]).
    pub fn refresh_now(&mut self, now: Instant) {
        if self
            .last_refresh
            .is_some_and(|t| now.duration_since(t) < MIN_GAP)
        {
            return;
        }
        self.last_refresh = Some(now);
        let _ = self.cmd.send(Cmd::Refresh);
    }

    /// The next answer, if one is waiting (never blocks).
    pub fn try_answer(&self) -> Option<Answer> {
        self.answers.try_recv().ok()
    }
}

fn run(cmd: Receiver<Cmd>, answers: Sender<Answer>, wake: Arc<dyn Fn() + Send + Sync>) {
    let mut names: Vec<String> = Vec::new();
    let mut next = Instant::now() + REFRESH;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match cmd.recv_timeout(wait) {
            Ok(Cmd::Want(n)) => names = n,
            Ok(Cmd::Refresh) | Err(RecvTimeoutError::Timeout) => {}
            // The engine is gone.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Coalesce commands that queued up meanwhile.
        loop {
            match cmd.try_recv() {
                Ok(Cmd::Want(n)) => names = n,
                Ok(Cmd::Refresh) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        for n in &names {
            let a = config::resolve_endpoint(n);
            if answers.send((n.clone(), a)).is_err() {
                return;
            }
        }
        if !names.is_empty() {
            wake();
        }
        next = Instant::now() + REFRESH;
    }
}
