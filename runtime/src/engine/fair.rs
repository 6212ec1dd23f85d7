//! Per-peer fair queueing of received data messages, before decryption.
//!
//! Every peer's datagrams arrive on one UDP socket and are handled by one packet thread.
//! Reading a datagram (one `recvfrom`, a look at its header) is cheap next to what follows
//! (ChaCha20-Poly1305, the filter, smoltcp, the forwarders), so the loop reads ahead of its
//! processing: data messages of known peers are queued per peer (by the receiver index in
//! their header; nothing is decrypted yet) and processed in deficit round robin (DRR,
//! Shreedhar & Varghese): each backlogged peer in turn gets a quantum of work per round, a
//! datagram costing its length plus [`PACKET_COST`] (per-packet work dominates small
//! packets). A peer that sends less than its share of the loop is served in full, and what it
//! leaves is used by the others (work conserving; this is where the old equal split of a batch
//! failed: it cut a bulk sender beside a quiet peer).
//!
//! When the queues hold [`MAX_QUEUED`] datagrams the loop stops reading ahead and the
//! kernel's socket buffer holds the rest, as without these queues — unless that buffer is
//! more than half full ("pressure": the loop is persistently behind and the kernel is about to
//! drop everyone's arrivals alike) and at least two peers are backlogged. Only then does the
//! loop read on and drop, before decryption, the oldest datagram of the peer with the most
//! queued work (the "fattest", as in fq_codel) for each one it reads
//! (`tsk8s_drops_total{reason="fair_share"}`, `tsk8s_peer_fair_share_drops_total{peer}`). A
//! peer whose arrivals stay within its share has a short queue and is never the fattest; a
//! flood's own queue is. A transient stall (the thread descheduled for a while) drops nothing:
//! the backlog is then served, in DRR order, from the kernel buffer. With one backlogged peer
//! nothing is dropped here either, so a single bulk transfer behaves as before. Handshake
//! messages and anything not a data message of a known peer are handled at once, as before
//! (they have their own limits).
//!
//! Not covered: a flood that fills the kernel buffer faster than even reading keeps up makes
//! the kernel drop everyone's arrivals alike (it is FIFO).

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Datagrams queued in all before the fattest peer loses its oldest.
pub(super) const MAX_QUEUED: usize = 512;
/// Work per datagram beyond its bytes, in byte units (the per-packet part of decrypting and
/// delivering it: parsing, a smoltcp or DNS pass, syscalls).
pub(super) const PACKET_COST: usize = 256;
/// Work a backlogged peer may do per DRR round: two full-size datagrams.
const QUANTUM: usize = 2 * (1500 + PACKET_COST);
/// Buffers kept for reuse (the rest are freed once the queues drain).
const POOL: usize = 256;
/// Buffers are allocated with at least this capacity (a full-size WireGuard datagram).
const BUF_MIN: usize = 2048;

#[derive(Default)]
struct PeerQueue {
    q: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Work queued (sum of `cost` of `q`).
    work: usize,
    deficit: usize,
    /// In `FairQueue::active`.
    active: bool,
}

fn cost(len: usize) -> usize {
    len + PACKET_COST
}

/// The per-peer queues, indexed by peer slot. No allocation once warm (buffers are pooled).
#[derive(Default)]
pub(super) struct FairQueue {
    peers: Vec<PeerQueue>,
    /// Backlogged slots in round-robin order.
    active: VecDeque<usize>,
    queued: usize,
    pool: Vec<Vec<u8>>,
}

impl FairQueue {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queued
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Should the loop stop reading ahead? When only one peer is backlogged and it already
    /// has a batch queued, or when the queues are full and `pressure()` (the source's own
    /// buffer is more than half full) says no; then the source holds the rest and nobody is
    /// dropped here. `pressure` is asked only when the queues are full.
    pub(super) fn should_stop_reading(
        &self,
        batch: usize,
        pressure: impl FnOnce() -> bool,
    ) -> bool {
        if self.active.len() <= 1 {
            return self.queued >= batch;
        }
        self.queued >= MAX_QUEUED && !pressure()
    }

    /// Queue a copy of `data` for peer `slot`. When the queues are full and another peer is
    /// backlogged, the fattest peer's oldest datagram is dropped: returns its slot.
    pub(super) fn push(&mut self, slot: usize, from: SocketAddr, data: &[u8]) -> Option<usize> {
        let mut dropped = None;
        if self.queued >= MAX_QUEUED && self.active.len() >= 2 {
            dropped = self.drop_from_fattest();
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.reserve(data.len().max(BUF_MIN));
        buf.extend_from_slice(data);
        if slot >= self.peers.len() {
            self.peers.resize_with(slot + 1, PeerQueue::default);
        }
        if let Some(p) = self.peers.get_mut(slot) {
            p.work += cost(buf.len());
            p.q.push_back((from, buf));
            self.queued += 1;
            if !p.active {
                p.active = true;
                p.deficit = 0;
                self.active.push_back(slot);
            }
        }
        dropped
    }

    fn drop_from_fattest(&mut self) -> Option<usize> {
        let slot = self
            .active
            .iter()
            .copied()
            .max_by_key(|s| self.peers.get(*s).map_or(0, |p| p.work))?;
        let (_, buf) = self.take(slot)?;
        self.recycle(buf);
        Some(slot)
    }

    /// Take peer `slot`'s oldest datagram; a peer left with nothing queued leaves the round.
    fn take(&mut self, slot: usize) -> Option<(SocketAddr, Vec<u8>)> {
        let p = self.peers.get_mut(slot)?;
        let (from, buf) = p.q.pop_front()?;
        p.work -= cost(buf.len());
        self.queued -= 1;
        if p.q.is_empty() {
            p.active = false;
            p.deficit = 0;
            if self.active.front() == Some(&slot) {
                self.active.pop_front();
            } else {
                self.active.retain(|s| *s != slot);
            }
        }
        Some((from, buf))
    }

    /// The next datagram in DRR order: (peer slot, source, bytes). Give the buffer back with
    /// [`FairQueue::recycle`].
    pub(super) fn pop(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
        // Each pass over a peer either serves it or adds a quantum to its deficit; a quantum
        // covers any datagram up to 3,000 bytes, so a few passes always find one.
        for _ in 0..(4 * self.active.len() + 64) {
            let slot = *self.active.front()?;
            let Some(p) = self.peers.get_mut(slot) else {
                self.active.pop_front();
                continue;
            };
            let Some(head) = p.q.front().map(|(_, b)| cost(b.len())) else {
                p.active = false;
                self.active.pop_front();
                continue;
            };
            if p.deficit < head {
                p.deficit += QUANTUM;
                self.active.rotate_left(1);
                continue;
            }
            p.deficit -= head;
            let (from, buf) = self.take(slot)?;
            return Some((slot, from, buf));
        }
        // Only with datagrams far larger than a quantum: serve the front peer anyway.
        let slot = *self.active.front()?;
        if let Some(p) = self.peers.get_mut(slot) {
            p.deficit = 0;
        }
        let (from, buf) = self.take(slot)?;
        Some((slot, from, buf))
    }

    pub(super) fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < POOL && buf.capacity() <= 2 * BUF_MIN {
            self.pool.push(buf);
        }
    }

    /// Free what a burst left behind (called once a second when the queues are empty).
    pub(super) fn shrink(&mut self) {
        if self.queued == 0 {
            self.pool = Vec::new();
            self.peers.iter_mut().for_each(|p| p.q = VecDeque::new());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> SocketAddr {
        "192.0.2.1:51820".parse().expect("addr")
    }

    fn datagram(len: usize, tag: u8) -> Vec<u8> {
        vec![tag; len]
    }

    /// Pop everything: the slots in service order.
    fn drain(fq: &mut FairQueue) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some((slot, _, buf)) = fq.pop() {
            out.push(slot);
            fq.recycle(buf);
        }
        out
    }

    #[test]
    fn one_peer_is_served_in_order_and_never_dropped() {
        let mut fq = FairQueue::default();
        for i in 0..MAX_QUEUED + 100 {
            assert_eq!(fq.push(3, from(), &datagram(1312, i as u8)), None);
        }
        assert!(
            fq.should_stop_reading(128, || true),
            "one peer: never read on"
        );
        let mut tags = Vec::new();
        while let Some((slot, _, buf)) = fq.pop() {
            assert_eq!(slot, 3);
            tags.push(buf[0]);
            fq.recycle(buf);
        }
        let want: Vec<u8> = (0..MAX_QUEUED + 100).map(|i| i as u8).collect();
        assert_eq!(tags, want);
        assert!(fq.is_empty());
    }

    /// A bulk sender (full-size datagrams) beside a flood of small ones: served by work, not
    /// by count, so the bulk sender is not cut to the flood's packet rate.
    #[test]
    fn drr_shares_work_not_packets() {
        let mut fq = FairQueue::default();
        for _ in 0..200 {
            fq.push(0, from(), &datagram(1312, 0));
        }
        for _ in 0..300 {
            fq.push(1, from(), &datagram(100, 1));
        }
        // The first 100 datagrams served: each peer's share of the work is about half.
        let order = drain(&mut fq);
        let first: Vec<usize> = order.iter().take(100).copied().collect();
        let work = |s: usize, len: usize| first.iter().filter(|x| **x == s).count() * cost(len);
        let (a, m) = (work(0, 1312), work(1, 100));
        assert!(a * 10 >= (a + m) * 4 && m * 10 >= (a + m) * 4, "{a} / {m}");
        assert_eq!(order.len(), 500);
    }

    /// Full queues stop the reading unless the source is under pressure.
    #[test]
    fn full_queues_read_on_only_under_pressure() {
        let mut fq = FairQueue::default();
        for _ in 0..MAX_QUEUED / 2 {
            fq.push(0, from(), &datagram(1312, 0));
            fq.push(1, from(), &datagram(100, 1));
        }
        assert!(fq.should_stop_reading(128, || false));
        assert!(!fq.should_stop_reading(128, || true));
        fq.pop();
        assert!(
            !fq.should_stop_reading(128, || panic!("asked only when full")),
            "room left"
        );
    }

    /// Under pressure, a quiet peer loses nothing and is served promptly; the flood's oldest
    /// datagrams are dropped once the queues are full.
    #[test]
    fn the_flood_is_dropped_and_the_quiet_peer_kept() {
        let mut fq = FairQueue::default();
        let mut dropped = [0usize; 2];
        // (A reader under pressure that reads on whatever the queues say.)
        for i in 0..3 * MAX_QUEUED {
            let d = if i % 20 == 0 {
                fq.push(0, from(), &datagram(1312, 0))
            } else {
                fq.push(1, from(), &datagram(100, 1))
            };
            if let Some(s) = d {
                dropped[s] += 1;
            }
            // The loop serves one datagram for every two it reads.
            if i % 2 == 1
                && let Some((_, _, b)) = fq.pop()
            {
                fq.recycle(b);
            }
        }
        assert_eq!(dropped[0], 0, "alice loses nothing");
        assert!(dropped[1] > 0, "the flood is cut");
        assert!(fq.len() <= MAX_QUEUED);
        let order = drain(&mut fq);
        assert!(
            order.iter().all(|s| *s == 1),
            "alice's queue was kept short"
        );
    }

    /// The fattest is measured in work: a backlog of large datagrams is fatter than the same
    /// count of small ones.
    #[test]
    fn fattest_by_work() {
        let mut fq = FairQueue::default();
        for _ in 0..MAX_QUEUED / 2 {
            fq.push(0, from(), &datagram(1312, 0));
            fq.push(1, from(), &datagram(100, 1));
        }
        assert_eq!(fq.push(1, from(), &datagram(100, 1)), Some(0));
    }

    #[test]
    fn shrink_frees_buffers_only_when_empty() {
        let mut fq = FairQueue::default();
        fq.push(0, from(), &datagram(100, 0));
        fq.shrink();
        assert_eq!(fq.len(), 1);
        drain(&mut fq);
        fq.shrink();
        assert!(fq.pool.is_empty());
        assert!(fq.pop().is_none());
    }
}
