//! The batched UDP send path: encrypted datagrams are queued back to back and leave in as
//! few system calls as the kernel allows.
//!
//! Half of a sending runtime's time went to one `sendto` per datagram (the kernel's UDP/IP
//! output path per datagram, runtime/README.md). Now every datagram the packet loop produces
//! is appended to a [`SendQueue`] and [`SendQueue::flush`]ed once per stack poll (and before
//! the loop blocks, and before any datagram that is sent at once, so the order on the wire is
//! the order of production): one `sendmmsg` carries up to [`MAX_MSGS`] messages, and each
//! message is either one datagram or, with UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18), a run of
//! consecutive datagrams to the same address whose sizes are equal (the last one may be
//! shorter) — a full-MSS TCP transfer's ciphertexts are — which the kernel segments after
//! one pass through its output path.
//!
//! Fallback: a GSO message the kernel refuses with `EIO` (no checksum offload on the route's
//! device) or `EINVAL` (a segment larger than the path MTU, an old kernel, a socket option
//! that excludes it) is sent again as plain datagrams, and GSO is off for this queue (its
//! socket) from then on. A full socket buffer (`EAGAIN`) waits up to 5 ms twice
//! (back-pressure, like the single sends before) and then drops the rest, counted as
//! `send_error` like any datagram the kernel refuses.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use crate::metrics::{Counters, DropReason};

/// Datagrams queued before a flush is forced.
pub const MAX_QUEUED: usize = 256;
/// Bytes queued before a flush is forced.
const MAX_QUEUED_BYTES: usize = 512 * 1024;
/// Messages per `sendmmsg` (Linux's `UIO_MAXIOV` is 1024; more gains nothing).
pub const MAX_MSGS: usize = 64;
/// Segments per GSO message (Linux's `UDP_MAX_SEGMENTS` is 64 before 6.x, 128 after).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message (an IPv4 datagram's payload is at most 65,507 bytes).
const MAX_GSO_BYTES: usize = 65_000;

/// One queued datagram: destination, offset and length in `SendQueue::buf`.
#[derive(Clone, Copy)]
struct Item {
    to: SocketAddr,
    off: usize,
    len: usize,
}

/// One message of a `sendmmsg`: queued datagrams `first..first + count`, contiguous in
/// `buf`, sent as GSO segments of `seg` bytes when `count > 1`.
#[derive(Clone, Copy)]
struct Msg {
    first: usize,
    count: usize,
    bytes: usize,
    seg: usize,
}

#[derive(Default)]
pub struct SendQueue {
    buf: Vec<u8>,
    items: Vec<Item>,
    /// UDP GSO may be tried on this queue's socket (cleared for good on `EIO`/`EINVAL`).
    gso_off: bool,
    /// Scratch reused by `flush` (no allocation per flush once warm).
    msgs: Vec<Msg>,
    // The C structures of one `sendmmsg`, rebuilt from `msgs` on every call.
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; 4]>,
}

impl SendQueue {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether GSO is still tried (false after the kernel refused it once).
    pub fn gso_enabled(&self) -> bool {
        !self.gso_off
    }

    /// Turn GSO off (tests; `TSK8S_UDP_GSO=0`).
    pub fn disable_gso(&mut self) {
        self.gso_off = true;
    }

    /// Would a datagram of up to `max` bytes still fit without a flush?
    pub fn has_room(&self, max: usize) -> bool {
        self.items.len() < MAX_QUEUED && self.buf.len() + max <= MAX_QUEUED_BYTES.max(max)
    }

    /// Let `fill` write one datagram of at most `max` bytes into the queue, for `to`;
    /// `fill` returns the length written (0: nothing queued). The caller checks
    /// [`SendQueue::has_room`] (and flushes) first.
    pub fn push_with(
        &mut self,
        to: SocketAddr,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) -> usize {
        let off = self.buf.len();
        self.buf.resize(off + max, 0);
        let n = self.buf.get_mut(off..).map_or(0, fill).min(max);
        self.buf.truncate(off + n);
        if n > 0 {
            self.items.push(Item { to, off, len: n });
        }
        n
    }

    /// Queue a copy of `data` for `to`.
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.push_with(to, data.len(), |b| {
            b.copy_from_slice(data);
            data.len()
        });
    }

    /// Group the queued datagrams into messages (GSO runs when allowed).
    fn plan(&mut self) {
        self.msgs.clear();
        let gso = !self.gso_off;
        let mut i = 0;
        while let Some(first) = self.items.get(i) {
            let seg = first.len;
            let mut count = 1;
            let mut bytes = seg;
            if gso {
                while let Some(next) = self.items.get(i + count) {
                    if next.to != first.to
                        || next.len > seg
                        || count >= MAX_SEGMENTS
                        || bytes + next.len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    count += 1;
                    bytes += next.len;
                    if next.len < seg {
                        break; // a shorter datagram ends a GSO run
                    }
                }
            }
            self.msgs.push(Msg {
                first: i,
                count,
                bytes,
                seg,
            });
            i += count;
        }
    }

    /// Send everything queued on `fd`. Never blocks longer than 2 × 5 ms (full buffer).
    pub fn flush(&mut self, fd: RawFd, c: &mut Counters) {
        if self.items.is_empty() {
            return;
        }
        self.plan();
        let mut next = 0; // first message not yet sent
        let mut waits = 0;
        while next < self.msgs.len() {
            let end = (next + MAX_MSGS).min(self.msgs.len());
            let r = self.sendmmsg(fd, next, end);
            match r {
                Ok(sent) if sent > 0 => {
                    for m in self.msgs.get(next..next + sent).unwrap_or(&[]) {
                        c.udp_tx_datagrams += m.count as u64;
                        if m.count > 1 {
                            c.udp_tx_gso_messages += 1;
                        }
                    }
                    c.udp_tx_calls += 1;
                    next += sent;
                    waits = 0;
                }
                Ok(_) => break, // nothing sent, nothing reported: give up on the rest
                Err(e) => {
                    let Some(m) = self.msgs.get(next).copied() else {
                        break;
                    };
                    let errno = e.raw_os_error().unwrap_or(0);
                    if e.kind() == io::ErrorKind::WouldBlock {
                        if waits < 2 {
                            waits += 1;
                            wait_writable(fd);
                            continue;
                        }
                        break; // still full: the rest is dropped below
                    }
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    if m.count > 1 && (errno == libc::EIO || errno == libc::EINVAL) {
                        // The kernel refuses GSO here: plain datagrams from now on, starting
                        // with this message's.
                        self.gso_off = true;
                        c.udp_gso_refused += 1;
                        self.split_rest(next);
                        continue;
                    }
                    // This message is refused (unreachable address, too big, …): drop it.
                    c.drop_n(DropReason::SendError, m.count as u64);
                    next += 1;
                }
            }
        }
        let dropped: usize = self
            .msgs
            .get(next..)
            .unwrap_or(&[])
            .iter()
            .map(|m| m.count)
            .sum();
        if dropped > 0 {
            c.drop_n(DropReason::SendError, dropped as u64);
        }
        self.items.clear();
        self.buf.clear();
        self.msgs.clear();
        // Do not keep a large buffer from a burst resident forever.
        if self.buf.capacity() > 2 * MAX_QUEUED_BYTES {
            self.buf = Vec::new();
        }
    }

    /// Re-plan the messages from `from` on as one datagram each.
    fn split_rest(&mut self, from: usize) {
        let Some(first) = self.msgs.get(from).map(|m| m.first) else {
            return;
        };
        self.msgs.truncate(from);
        for i in first..self.items.len() {
            if let Some(it) = self.items.get(i) {
                self.msgs.push(Msg {
                    first: i,
                    count: 1,
                    bytes: it.len,
                    seg: it.len,
                });
            }
        }
    }

    /// One `sendmmsg` of messages `from..to`: how many the kernel took.
    fn sendmmsg(&mut self, fd: RawFd, from: usize, to: usize) -> io::Result<usize> {
        let n = to - from;
        // SAFETY (zeroed): plain C structures for which all-zero is a valid value.
        self.hdrs.resize(n, unsafe { std::mem::zeroed() });
        self.iovs.resize(
            n,
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
        );
        self.addrs.resize(n, unsafe { std::mem::zeroed() });
        self.cmsgs.resize(n, [0u64; 4]);
        for k in 0..n {
            let (Some(m), Some(hdr), Some(iov), Some(addr), Some(cbuf)) = (
                self.msgs.get(from + k),
                self.hdrs.get_mut(k),
                self.iovs.get_mut(k),
                self.addrs.get_mut(k),
                self.cmsgs.get_mut(k),
            ) else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let Some(item) = self.items.get(m.first) else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            let Some(data) = self.buf.get(item.off..item.off + m.bytes) else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            iov.iov_base = data.as_ptr() as *mut libc::c_void;
            iov.iov_len = data.len();
            let alen = write_sockaddr(item.to, addr);
            // SAFETY: all-zero is a valid msghdr (musl has padding fields: no literal).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = alen;
            h.msg_iov = iov as *mut libc::iovec;
            h.msg_iovlen = 1;
            if m.count > 1 {
                let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) };
                h.msg_control = cbuf.as_mut_ptr().cast();
                h.msg_controllen = space as _;
                // SAFETY: `cbuf` is 32 bytes, 8-aligned, ≥ CMSG_SPACE(2) = 24; the header
                // points at it and its length says so.
                unsafe {
                    let cm = libc::CMSG_FIRSTHDR(&h);
                    if cm.is_null() {
                        return Err(io::Error::from_raw_os_error(libc::EINVAL));
                    }
                    (*cm).cmsg_level = libc::SOL_UDP;
                    (*cm).cmsg_type = libc::UDP_SEGMENT;
                    (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                    let seg = m.seg.min(usize::from(u16::MAX)) as u16;
                    std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg);
                }
            }
            hdr.msg_hdr = h;
            hdr.msg_len = 0;
        }
        // SAFETY: `hdrs[..n]` point into `iovs`, `addrs`, `cmsgs` and `buf`, none of which is
        // touched until the call returns.
        let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr(), n as _, 0) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

/// Write `to` as a C socket address; its length.
fn write_sockaddr(to: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match to {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            *sin = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            *sin6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Wait up to 5 ms for room in the socket's send buffer.
pub fn wait_writable(fd: RawFd) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, bounded timeout.
    unsafe {
        libc::poll(&mut pfd, 1, 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn sink() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let a = s.local_addr().expect("addr");
        (s, a)
    }

    /// What arrived, as (first byte, length, whole payload as expected) per datagram.
    fn drain(s: &UdpSocket) -> Vec<(u8, usize, u8)> {
        let mut out = Vec::new();
        let mut b = vec![0u8; 70_000];
        while let Ok(n) = s.recv(&mut b) {
            out.push(summary(b.get(..n).unwrap_or(&[])));
        }
        out
    }

    fn summary(d: &[u8]) -> (u8, usize, u8) {
        let tag = d.get(1).copied().unwrap_or(0);
        let uniform = d.iter().skip(1).all(|x| *x == tag);
        (
            d.first().copied().unwrap_or(0),
            d.len(),
            if uniform { tag } else { 0xff },
        )
    }

    fn summaries(v: &[Vec<u8>]) -> Vec<(u8, usize, u8)> {
        v.iter().map(|d| summary(d)).collect()
    }

    fn datagram(tag: u8, i: usize, len: usize) -> Vec<u8> {
        let mut d = vec![tag; len];
        if let Some(x) = d.first_mut() {
            *x = i as u8;
        }
        d
    }

    /// Runs of equal sizes to one address become GSO messages; the receiver sees exactly the
    /// datagrams queued, in order, whatever the grouping (GSO or, if refused, plain).
    #[test]
    fn flush_delivers_every_datagram_in_order() {
        let (a, aa) = sink();
        let (b, ba) = sink();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut q = SendQueue::default();
        let mut want_a = Vec::new();
        let mut want_b = Vec::new();
        // 60 full-size datagrams to a (two GSO runs, the second ended by a short one), 3 to
        // b, 5 more to a (kept under a default 208 KiB receive buffer).
        for i in 0..60 {
            let d = datagram(1, i, 1312);
            q.push(aa, &d);
            want_a.push(d);
        }
        let d = datagram(1, 60, 200);
        q.push(aa, &d);
        want_a.push(d);
        for i in 0..3 {
            let d = datagram(2, i, 92);
            q.push(ba, &d);
            want_b.push(d);
        }
        for i in 0..5 {
            let d = datagram(1, 61 + i, 1312);
            q.push(aa, &d);
            want_a.push(d);
        }
        q.plan();
        if q.gso_enabled() {
            let sizes: Vec<usize> = q.msgs.iter().map(|m| m.count).collect();
            assert_eq!(
                sizes,
                vec![49, 12, 3, 5],
                "runs split at 65,000 bytes, after a short datagram, by address"
            );
        }
        let mut c = Counters::default();
        q.flush(tx.as_raw_fd(), &mut c);
        assert!(q.is_empty());
        assert_eq!(c.udp_tx_datagrams, 69);
        assert_eq!(drain(&a), summaries(&want_a));
        assert_eq!(drain(&b), summaries(&want_b));
        if q.gso_enabled() {
            assert_eq!(c.udp_tx_gso_messages, 4, "{c:?}");
            assert_eq!(c.udp_tx_calls, 1);
        }
    }

    /// Without GSO every datagram is its own message, still one call per 64.
    #[test]
    fn flush_without_gso_batches_plain_datagrams() {
        let (a, aa) = sink();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut q = SendQueue::default();
        q.disable_gso();
        let want: Vec<Vec<u8>> = (0..70).map(|i| datagram(3, i, 500)).collect();
        for d in &want {
            q.push(aa, d);
        }
        let mut c = Counters::default();
        q.flush(tx.as_raw_fd(), &mut c);
        assert_eq!(drain(&a), summaries(&want));
        assert_eq!((c.udp_tx_calls, c.udp_tx_gso_messages), (2, 0));
    }

    /// A GSO message the kernel refuses (here `EINVAL`: the socket sends without UDP
    /// checksums, `SO_NO_CHECK`, which GSO does not allow) is sent again as plain datagrams,
    /// and GSO stays off for the queue.
    #[test]
    fn refused_gso_falls_back_to_plain_datagrams() {
        let (a, aa) = sink();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let one: libc::c_int = 1;
        // SAFETY: valid fd, option pointer and length.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_NO_CHECK");
        let mut q = SendQueue::default();
        let want: Vec<Vec<u8>> = (0..10).map(|i| datagram(4, i, 1312)).collect();
        for d in &want {
            q.push(aa, d);
        }
        let mut c = Counters::default();
        q.flush(tx.as_raw_fd(), &mut c);
        assert_eq!(drain(&a), summaries(&want), "delivered as plain datagrams");
        assert_eq!(c.udp_tx_datagrams, 10);
        assert_eq!((c.udp_gso_refused, c.udp_tx_gso_messages), (1, 0));
        assert!(!q.gso_enabled(), "remembered");
        assert_eq!(c.dropped(DropReason::SendError), 0);
        // Later flushes go straight to plain datagrams.
        for d in &want {
            q.push(aa, d);
        }
        q.flush(tx.as_raw_fd(), &mut c);
        assert_eq!(drain(&a), summaries(&want));
        assert_eq!(c.udp_gso_refused, 1);
    }

    /// An unreachable destination drops only its own message, counted.
    #[test]
    fn a_refused_message_drops_only_itself() {
        let (a, aa) = sink();
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut q = SendQueue::default();
        q.push(aa, b"one");
        // IPv6 destination on an IPv4 socket: EAFNOSUPPORT/EINVAL for that message only.
        q.push("[::1]:9".parse().expect("addr"), b"lost");
        q.push(aa, b"two");
        let mut c = Counters::default();
        q.flush(tx.as_raw_fd(), &mut c);
        assert_eq!(drain(&a), summaries(&[b"one".to_vec(), b"two".to_vec()]));
        assert_eq!(c.udp_tx_datagrams, 2);
        assert_eq!(c.dropped(DropReason::SendError), 1);
    }
}
