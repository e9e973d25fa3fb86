//! Which threads are blocked, as changes between samples: the collector writes what changed
//! since the previous sample (and the whole set every [`FULL_WAITS_EVERY`] samples), so that a
//! thread parked for hours costs the trace file one entry, not one per sample.

use std::collections::HashMap;

use crate::tracefile::{BlockedThread, FULL_WAITS_EVERY, WaitChanges};

#[derive(Default)]
pub struct WaitTracker {
    prev: HashMap<u32, BlockedThread>,
    samples: u64,
}

impl WaitTracker {
    /// The changes from the previous sample's blocked set to `now`.
    pub fn changes(&mut self, now: Vec<BlockedThread>) -> WaitChanges {
        let full = self.samples.is_multiple_of(FULL_WAITS_EVERY);
        self.samples += 1;
        let cur: HashMap<u32, BlockedThread> = now.into_iter().map(|t| (t.tid, t)).collect();
        let mut c = WaitChanges {
            full,
            ..Default::default()
        };
        for (tid, t) in &cur {
            if full || self.prev.get(tid) != Some(t) {
                c.blocked.push(*t);
            }
        }
        if !full {
            for (tid, t) in &self.prev {
                if !cur.contains_key(tid) {
                    c.woke.push((*tid, t.pid));
                }
            }
        }
        c.blocked.sort_by_key(|t| t.tid);
        c.woke.sort_unstable();
        self.prev = cur;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tid: u32, since: u64) -> BlockedThread {
        BlockedThread {
            tid,
            pid: 1,
            poll: false,
            since_ns: since,
        }
    }

    #[test]
    fn only_changes_between_full_sets() {
        let mut w = WaitTracker::default();
        let first = w.changes(vec![t(1, 10), t(2, 20)]);
        assert!(first.full);
        assert_eq!(first.blocked.len(), 2);
        let same = w.changes(vec![t(1, 10), t(2, 20)]);
        assert!(same.is_empty(), "{same:?}");
        // 2 woke, 3 parked, 1 woke and parked again (a new start).
        let c = w.changes(vec![t(1, 30), t(3, 25)]);
        assert_eq!(c.blocked, [t(1, 30), t(3, 25)]);
        assert_eq!(c.woke, [(2, 1)]);
        for _ in 3..FULL_WAITS_EVERY {
            w.changes(vec![t(1, 30), t(3, 25)]);
        }
        let again = w.changes(vec![t(1, 30), t(3, 25)]);
        assert!(again.full && again.blocked.len() == 2 && again.woke.is_empty());
    }
}
