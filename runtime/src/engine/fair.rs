//! Per-peer fair share of a full receive batch.
//!
//! Every peer's datagrams arrive on one UDP socket and are handled by one packet thread, in
//! batches of `RX_BATCH`. When a batch comes back full the socket held more than a batch —
//! the loop is behind — and whatever else waits in the socket (another peer's packets among
//! it) is reached only after this batch is delivered. Then each peer present in the batch
//! gets at most an equal split of it (`ceil(len / peers)` inner packets); the excess of a peer
//! over its split is dropped before the filter, smoltcp and the forwarders spend anything on
//! it, and counted (`tsk8s_drops_total{reason="fair_share"}`, per peer
//! `tsk8s_peer_fair_share_drops_total`). A peer under its split loses nothing; a peer alone
//! in the batch loses nothing whatever its rate; a batch that is not full is untouched (the
//! unloaded path pays nothing). What a quieter peer leaves of its split is deliberately not
//! handed to the louder one: the full batch says more is waiting, and dropping the excess is
//! what lets the loop reach it sooner (and what makes a flooding TCP sender back off).

use super::Inbox;

/// Trim `inbox` (one full batch's decrypted packets, by peer slot) to each peer's equal split
/// of it, keeping the order of what stays. Returns how many packets were dropped; afterwards
/// `counts[slot]` is how many of peer `slot`'s packets were dropped (empty when none were).
/// `counts` is scratch reused across batches: no allocation once it has grown to the
/// highest slot seen.
pub(super) fn trim_to_fair_share(inbox: &mut Inbox, counts: &mut Vec<u32>) -> usize {
    counts.clear();
    for (slot, _) in inbox.iter() {
        if *slot >= counts.len() {
            counts.resize(slot + 1, 0);
        }
        if let Some(c) = counts.get_mut(*slot) {
            *c += 1;
        }
    }
    let peers = counts.iter().filter(|c| **c > 0).count();
    if peers < 2 {
        counts.clear();
        return 0;
    }
    let share = u32::try_from(inbox.len().div_ceil(peers)).unwrap_or(u32::MAX);
    if counts.iter().all(|c| *c <= share) {
        counts.clear();
        return 0;
    }
    // From here `counts` counts each peer's packets kept so far.
    counts.iter_mut().for_each(|c| *c = 0);
    let before = inbox.len();
    inbox.retain(|(slot, _)| match counts.get_mut(*slot) {
        Some(k) => {
            *k += 1;
            *k <= share
        }
        None => true,
    });
    counts.iter_mut().for_each(|c| *c = c.saturating_sub(share));
    before - inbox.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch from a sequence of peer slots; each packet's one byte is its index in the batch.
    fn batch(slots: &[usize]) -> Inbox {
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, vec![i as u8]))
            .collect()
    }

    fn kept(inbox: &Inbox) -> Vec<(usize, u8)> {
        inbox.iter().map(|(s, p)| (*s, p[0])).collect()
    }

    #[test]
    fn one_peer_keeps_a_whole_batch() {
        let mut inbox = batch(&[3; 128]);
        let mut counts = Vec::new();
        assert_eq!(trim_to_fair_share(&mut inbox, &mut counts), 0);
        assert_eq!(inbox.len(), 128);
        assert!(counts.is_empty());
    }

    #[test]
    fn peers_within_their_split_lose_nothing() {
        // 64 + 64, interleaved: both exactly at the split.
        let slots: Vec<usize> = (0..128).map(|i| i % 2).collect();
        let mut inbox = batch(&slots);
        let mut counts = Vec::new();
        assert_eq!(trim_to_fair_share(&mut inbox, &mut counts), 0);
        assert_eq!(inbox.len(), 128);
    }

    #[test]
    fn a_flood_is_cut_to_its_split_and_the_quiet_peer_keeps_all() {
        // Peer 1 (the flood) sends 118 of 128, peer 0 (alice) 10, spread through the batch.
        let slots: Vec<usize> = (0..128)
            .map(|i| usize::from(i % 12 != 0 || i >= 120))
            .collect();
        let alice = slots.iter().filter(|s| **s == 0).count();
        assert_eq!(alice, 10);
        let mut inbox = batch(&slots);
        let mut counts = Vec::new();
        let dropped = trim_to_fair_share(&mut inbox, &mut counts);
        assert_eq!(dropped, 118 - 64);
        assert_eq!(counts, vec![0, 54]);
        assert_eq!(inbox.iter().filter(|(s, _)| *s == 0).count(), 10);
        assert_eq!(inbox.iter().filter(|(s, _)| *s == 1).count(), 64);
        // Order kept; the flood's first 64 stay, its later ones go.
        let k = kept(&inbox);
        assert!(k.windows(2).all(|w| w[0].1 < w[1].1));
        let last_flood_kept = k.iter().filter(|(s, _)| *s == 1).map(|(_, i)| *i).max();
        let flood_before = slots[..=usize::from(last_flood_kept.unwrap_or(0))]
            .iter()
            .filter(|s| **s == 1)
            .count();
        assert_eq!(flood_before, 64);
    }

    #[test]
    fn three_peers_split_by_three_and_scratch_is_reused() {
        // 100 from slot 5, 20 from slot 2, 8 from slot 0: split ceil(128 / 3) = 43.
        let mut slots = vec![5; 100];
        slots.extend([2; 20]);
        slots.extend([0; 8]);
        let mut inbox = batch(&slots);
        let mut counts = Vec::with_capacity(16);
        let cap = counts.capacity();
        assert_eq!(trim_to_fair_share(&mut inbox, &mut counts), 57);
        assert_eq!(counts, vec![0, 0, 0, 0, 0, 57]);
        assert_eq!(inbox.len(), 43 + 20 + 8);
        assert_eq!(counts.capacity(), cap);
        // The next batch, one peer alone: untouched, scratch emptied.
        let mut inbox = batch(&[5; 128]);
        assert_eq!(trim_to_fair_share(&mut inbox, &mut counts), 0);
        assert!(counts.is_empty());
        assert_eq!(counts.capacity(), cap);
    }

    #[test]
    fn empty_batch() {
        let mut inbox = Inbox::new();
        let mut counts = Vec::new();
        assert_eq!(trim_to_fair_share(&mut inbox, &mut counts), 0);
    }
}
