//! The DNS responder over TCP (UDP DNS is answered in `udp`; the zone is `crate::dns`).
//!
//! Assumes: the filter admitted the connection (port 53 to the node's own address, from a
//! source the policy admits) and the budget charged its small buffers. Guarantees: at most one
//! message (`DNS_MSG_MAX`) is buffered per connection; an answer waits until it fits the send
//! buffer.

use smoltcp::socket::tcp;

use crate::dns::Zone;
use crate::metrics;

use super::forward::Conn;

/// DNS over TCP: smoltcp buffers, and the largest message kept (2-byte length + 65,535).
pub(super) const DNS_RX_BUF: usize = 4096;
pub(super) const DNS_TX_BUF: usize = 8192;
pub(super) const DNS_MSG_MAX: usize = 2 + 65_535;

/// DNS over TCP: 2-byte length-prefixed messages, answered locally. At most one message
/// (`DNS_MSG_MAX`) is buffered; an answer waits until it fits the send buffer.
pub(super) fn dns_tcp(
    c: &mut Conn,
    sock: &mut tcp::Socket<'static>,
    zone: &Zone,
    counters: &mut metrics::Counters,
) -> bool {
    loop {
        while sock.can_recv() && c.dns_buf.len() < DNS_MSG_MAX {
            let room = DNS_MSG_MAX - c.dns_buf.len();
            let buf = &mut c.dns_buf;
            let r = sock.recv(|b| {
                let n = b.len().min(room);
                let chunk = b.get(..n).unwrap_or_default();
                buf.reserve_exact(chunk.len());
                buf.extend_from_slice(chunk);
                (n, n)
            });
            if !matches!(r, Ok(n) if n > 0) {
                break;
            }
        }
        let Some(len) = c
            .dns_buf
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(msg) = c.dns_buf.get(2..2 + len) else {
            break;
        };
        let resp = zone.answer(msg);
        if let Some(resp) = &resp
            && sock.send_capacity() - sock.send_queue() < 2 + resp.len()
        {
            // Answered again when the peer has read what is queued.
            break;
        }
        counters.dns_queries += 1;
        if let Some(resp) = resp {
            let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&resp);
            if sock.send_slice(&framed).is_err() {
                sock.abort();
                return true;
            }
        }
        c.dns_buf.drain(..2 + len);
        if c.dns_buf.is_empty() {
            // Give the memory back between messages.
            c.dns_buf = Vec::new();
        }
    }
    if !sock.may_recv() && !sock.can_recv() && sock.is_open() && sock.may_send() {
        sock.close();
    }
    matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait)
}
