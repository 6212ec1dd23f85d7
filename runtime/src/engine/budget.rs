//! The memory budget: one byte budget for every per-connection buffer.
//!
//! Assumes: every TCP connection is charged (`charge_conn`) before its smoltcp socket exists
//! and released (`uncharge`) exactly once when it goes; buffer growth (`stack`) is charged
//! through [`Budget::try_grow_within`]. Guarantees: the total stays within the limit, each owner
//! (a peer, or the cluster side of egress) within a quarter of it and within
//! [`MAX_CONNS_PER_OWNER`] connections; a connection that fits no buffer tier is refused and
//! counted (`over_limit`), nothing is ever evicted.

use std::collections::HashMap;

use crate::metrics::DropReason;

use super::Engine;
use super::dns::{DNS_MSG_MAX, DNS_RX_BUF, DNS_TX_BUF};
use super::udp::MAX_UDP_SESSIONS;

/// Charged per connection besides its buffers (socket state, bookkeeping, kernel-side fd).
pub(super) const CONN_OVERHEAD: usize = 4096;
/// Buffers of a connection once its owner holds half its share (full-size ones before), and
/// once it holds three quarters.
pub(super) const MEDIUM_BUF: usize = 64 * 1024;
pub(super) const SMALL_BUF: usize = 16 * 1024;
/// Connections one peer (or the cluster side of egress) may hold open.
pub const MAX_CONNS_PER_OWNER: usize = 1024;
/// UDP sessions (kernel sockets) one peer (or the cluster side of egress) may hold open.
pub const MAX_UDP_PER_OWNER: usize = MAX_UDP_SESSIONS / 4;
/// Default memory budget when neither `TSK8S_MEMORY_BUDGET` nor `TSK8S_MEMORY_LIMIT` is set.
pub const DEFAULT_MEMORY_BUDGET: usize = 64 * 1024 * 1024;

/// Who a connection's memory is charged to: the peer it came from (or goes to, for none:
/// egress connections are opened from inside the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Owner {
    Peer([u8; 32]),
    Local,
}

/// One byte budget for every per-connection buffer. A connection is admitted only if its
/// buffers fit both the whole budget and its owner's share (a quarter), and its owner holds
/// fewer than [`MAX_CONNS_PER_OWNER`] connections; otherwise it is refused, never another's
/// connection evicted.
#[derive(Debug, Default)]
pub(super) struct Budget {
    pub(super) limit: usize,
    pub(super) used: usize,
    pub(super) accounts: HashMap<Owner, (usize, usize)>,
}

impl Budget {
    pub(super) fn share(&self) -> usize {
        self.limit / 4
    }

    #[cfg(test)]
    pub(super) fn try_charge(&mut self, owner: Owner, bytes: usize) -> bool {
        self.try_charge_within(owner, bytes, self.share())
    }

    /// Charge `bytes` to `owner` if its usage stays within `cap` (at most its share).
    pub(super) fn try_charge_within(&mut self, owner: Owner, bytes: usize, cap: usize) -> bool {
        let cap = cap.min(self.share());
        let (conns, used) = self.accounts.get(&owner).copied().unwrap_or((0, 0));
        if conns >= MAX_CONNS_PER_OWNER || used + bytes > cap || self.used + bytes > self.limit {
            return false;
        }
        self.accounts.insert(owner, (conns + 1, used + bytes));
        self.used += bytes;
        true
    }

    /// Charge `bytes` more to `owner` (a connection's buffers growing) if its usage stays
    /// within `cap` (at most its share) and the budget within its limit.
    pub(super) fn try_grow_within(&mut self, owner: Owner, bytes: usize, cap: usize) -> bool {
        let cap = cap.min(self.share());
        let Some((_, used)) = self.accounts.get_mut(&owner) else {
            return false;
        };
        if *used + bytes > cap || self.used + bytes > self.limit {
            return false;
        }
        *used += bytes;
        self.used += bytes;
        true
    }

    /// Give back `bytes` of a growth that did not happen (the connection stays).
    pub(super) fn release_bytes(&mut self, owner: Owner, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
        if let Some((_, used)) = self.accounts.get_mut(&owner) {
            *used = used.saturating_sub(bytes);
        }
    }

    pub(super) fn release(&mut self, owner: Owner, bytes: usize) {
        self.used = self.used.saturating_sub(bytes);
        if let Some((conns, used)) = self.accounts.get_mut(&owner) {
            *conns = conns.saturating_sub(1);
            *used = used.saturating_sub(bytes);
            if *conns == 0 {
                self.accounts.remove(&owner);
            }
        }
    }
}

impl Engine {
    /// Charge a new connection of `owner` to the budget: full-size buffers if they fit, else
    /// small ones, else None (refused, counted). Returns (rx, tx, charged bytes).
    pub(super) fn charge_conn(&mut self, owner: Owner, dns: bool) -> Option<(usize, usize, usize)> {
        let share = self.budget.share();
        let (rx, tx) = (self.tuning.tcp_rx_buf, self.tuning.tcp_tx_buf);
        // (rx, tx, the owner's usage this tier may take it to): full-size buffers for the
        // first half of its share, smaller ones after, so a peer with many connections gets
        // many (about 150 with the default budget) rather than 20 large ones.
        let tiers: &[(usize, usize, usize)] = if dns {
            &[(DNS_RX_BUF, DNS_TX_BUF, share)]
        } else {
            &[
                (rx, tx, share / 2),
                (MEDIUM_BUF.min(rx), MEDIUM_BUF.min(tx), share / 4 * 3),
                (SMALL_BUF.min(rx), SMALL_BUF.min(tx), share),
            ]
        };
        let extra = if dns { DNS_MSG_MAX } else { 0 };
        for &(rx, tx, cap) in tiers {
            let cost = rx + tx + extra + CONN_OVERHEAD;
            if self.budget.try_charge_within(owner, cost, cap) {
                self.net.counters.memory_charged = self.budget.used as u64;
                return Some((rx, tx, cost));
            }
        }
        self.net.counters.drop(DropReason::OverLimit);
        None
    }

    pub(super) fn uncharge(&mut self, owner: Owner, charge: usize) {
        self.budget.release(owner, charge);
        self.net.counters.memory_charged = self.budget.used as u64;
    }

    pub(super) fn owner_of(&self, peer_slot: usize) -> Owner {
        match self.net.peers.get(peer_slot) {
            Some(Some(p)) => Owner::Peer(p.spec.public_key),
            _ => Owner::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn budget_growth_stays_within_the_tier() {
        let mut b = Budget {
            limit: 64 << 20,
            ..Budget::default()
        };
        let o = Owner::Local;
        assert!(b.try_charge(o, 1 << 20));
        // Buffers grow while the owner stays within half its share (8 MiB here).
        assert!(b.try_grow_within(o, 6 << 20, b.share() / 2));
        assert!(!b.try_grow_within(o, 2 << 20, b.share() / 2));
        b.release_bytes(o, 6 << 20);
        assert_eq!(b.used, 1 << 20);
        // Nothing grows for an owner without a connection.
        assert!(!b.try_grow_within(Owner::Peer([1; 32]), 1, b.share()));
        b.release(o, 1 << 20);
        assert_eq!(b.used, 0);
        assert!(b.accounts.is_empty());
    }

    #[test]
    pub(super) fn budget_shares_and_refusals() {
        let mut b = Budget {
            limit: 4_000,
            ..Budget::default()
        };
        let (p, q) = (Owner::Peer([1; 32]), Owner::Peer([2; 32]));
        // A peer gets at most a quarter.
        assert!(b.try_charge(p, 600));
        assert!(b.try_charge(p, 400));
        assert!(!b.try_charge(p, 1));
        // Others are unaffected by it.
        assert!(b.try_charge(q, 1_000));
        assert!(b.try_charge(Owner::Local, 1_000));
        assert!(b.try_charge(Owner::Peer([3; 32]), 1_000));
        // The whole budget is spent now.
        assert!(!b.try_charge(Owner::Peer([4; 32]), 1));
        b.release(p, 600);
        assert_eq!(b.used, 3_400);
        assert!(b.try_charge(Owner::Peer([4; 32]), 600));
        b.release(p, 400);
        assert!(!b.accounts.contains_key(&p));
        // A tier's cap below the share.
        let mut b = Budget {
            limit: 4_000,
            ..Budget::default()
        };
        assert!(b.try_charge_within(p, 500, 500));
        assert!(!b.try_charge_within(p, 1, 500));
        assert!(!b.try_charge_within(p, 600, 5_000), "never above the share");
        assert!(b.try_charge_within(p, 500, 5_000));
        // Connection count per owner.
        let mut b = Budget {
            limit: usize::MAX / 2,
            ..Budget::default()
        };
        for _ in 0..MAX_CONNS_PER_OWNER {
            assert!(b.try_charge(p, 1));
        }
        assert!(!b.try_charge(p, 1));
        assert!(b.try_charge(q, 1));
    }
}
