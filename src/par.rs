//! Data parallelism for the pure core: independent items (clusters, devices, nodes) on
//! scoped threads, results in input order, so output never depends on scheduling.
//!
//! Items are handed out one at a time as threads free up (not cut into one chunk per thread
//! up front): the items of a build differ in cost by orders of magnitude (a cluster of 10
//! nodes beside one whose mesh holds 3,500 peers), and fixed chunks left one core idle while
//! the other finished the expensive half.

use std::ops::ControlFlow;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How many threads [`map`] uses: `available_parallelism`, at most 8. Asked once per process:
/// on Linux each ask reads the cgroup's CPU quota from `/sys` (several files), and a
/// 1,000-cluster build calls [`map`] hundreds of times (~1.5 % of its main thread).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8)
    })
}

/// `f` over `items` on up to [`threads`] scoped threads, results in input order
/// ([`ordered`] with no window: every result is kept).
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    ordered(items, usize::MAX, f, |r| {
        out.push(r);
        ControlFlow::Continue(())
    });
    out
}

/// What [`ordered`]'s threads share.
struct Shared<R> {
    /// The next item to start.
    next: usize,
    /// Finished items not yet consumed, by index (a worker's panic is kept as its result).
    done: std::collections::BTreeMap<usize, std::thread::Result<R>>,
    /// Results consumed so far: items at or past `consumed + window` wait to start.
    consumed: usize,
    /// No more items start (the consumer stopped, failed or panicked).
    stop: bool,
}

/// Stops [`ordered`]'s workers however the consumer leaves (returns, breaks or panics), so
/// the scope's join never waits on a worker blocked for room.
struct StopOnDrop<'a, R> {
    shared: &'a Mutex<Shared<R>>,
    room: &'a Condvar,
}

impl<R> Drop for StopOnDrop<'_, R> {
    fn drop(&mut self) {
        lock(self.shared).stop = true;
        self.room.notify_all();
    }
}

fn lock<R>(m: &Mutex<Shared<R>>) -> MutexGuard<'_, Shared<R>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `f` over `items` on up to [`threads`] worker threads, each result handed to `consume` on
/// the calling thread in input order as soon as it and every one before it are done, while
/// the workers go on with the next items (no batch waits for its slowest item). At most
/// `window` items are started and not yet consumed, so that many results are all that is
/// held at once. When `consume` breaks, no more items start. A panic in `f` or `consume`
/// comes out of `ordered` once the workers have stopped.
pub fn ordered<T: Sync, R: Send>(
    items: &[T],
    window: usize,
    f: impl Fn(&T) -> R + Sync,
    mut consume: impl FnMut(R) -> ControlFlow<()>,
) {
    let window = window.max(1);
    let threads = threads().min(items.len());
    if threads <= 1 {
        for item in items {
            if consume(f(item)).is_break() {
                return;
            }
        }
        return;
    }
    let shared = Mutex::new(Shared {
        next: 0,
        done: std::collections::BTreeMap::new(),
        consumed: 0,
        stop: false,
    });
    // `done`: a result arrived (the consumer waits on it); `room`: the window moved or the
    // run stopped (workers wait on it).
    let (done, room) = (Condvar::new(), Condvar::new());
    let worker = || {
        loop {
            let i = {
                let mut s = lock(&shared);
                loop {
                    if s.stop || s.next >= items.len() {
                        return;
                    }
                    if s.next < s.consumed.saturating_add(window) {
                        break;
                    }
                    s = room.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.next += 1;
                s.next - 1
            };
            let Some(item) = items.get(i) else { return };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)));
            lock(&shared).done.insert(i, r);
            done.notify_one();
        }
    };
    std::thread::scope(|scope| {
        let stop = StopOnDrop {
            shared: &shared,
            room: &room,
        };
        for _ in 0..threads {
            scope.spawn(worker);
        }
        for i in 0..items.len() {
            let r = {
                let mut s = lock(&shared);
                loop {
                    if let Some(r) = s.done.remove(&i) {
                        s.consumed = i + 1;
                        break r;
                    }
                    s = done.wait(s).unwrap_or_else(|p| p.into_inner());
                }
            };
            room.notify_all();
            match r {
                Ok(r) => {
                    if consume(r).is_break() {
                        break;
                    }
                }
                Err(panic) => {
                    drop(stop);
                    std::panic::resume_unwind(panic);
                }
            }
        }
        drop(stop);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Results come in input order whatever each item costs, and a break stops the run.
    #[test]
    fn ordered_keeps_input_order_and_stops_on_break() {
        let items: Vec<u64> = (0..200).collect();
        // Uneven work: every seventh item is much more expensive.
        let work = |&i: &u64| -> u64 {
            let rounds = if i % 7 == 0 { 20_000 } else { 10 };
            (0..rounds).fold(i, |a, k| a.wrapping_mul(31).wrapping_add(k)) % 1000 + i * 1000
        };
        let want: Vec<u64> = items.iter().map(work).collect();
        let mut got = Vec::new();
        ordered(&items, 3, work, |r| {
            got.push(r);
            ControlFlow::Continue(())
        });
        assert_eq!(got, want);
        assert_eq!(map(&items, work), want);

        let mut first = Vec::new();
        ordered(&items, 4, work, |r| {
            first.push(r);
            if first.len() == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(first, want[..10]);
    }

    /// A panic in a worker comes out of `ordered` (the scope does not hang).
    #[test]
    fn ordered_passes_a_worker_panic_on() {
        let items: Vec<u32> = (0..50).collect();
        let r = std::panic::catch_unwind(|| {
            ordered(
                &items,
                2,
                |&i| {
                    assert!(i != 17, "item 17");
                    i
                },
                |_| ControlFlow::Continue(()),
            )
        });
        assert!(r.is_err());
    }
}
