//! The park and wait census of a process: which threads are parked in futex or waiting in
//! poll/select/epoll right now and since when, those parked longer than a threshold with their
//! creating site, and a log2 histogram of completed park durations.

use serde::Serialize;

use super::{Model, Process, ProcessSummary};
use crate::tracefile::WaitChanges;

/// Threads listed per process per list (the oldest first; the counts cover all).
pub const MAX_LISTED: usize = 20;
/// Parks at least this long are "long" by default.
pub const LONG_PARK_NS: u64 = 10_000_000_000;
/// Buckets of the park histogram: bucket `b` holds durations in `[2^(b-1), 2^b)` µs (bucket
/// 0: under 1 µs); the last one is open-ended (from about 18 minutes).
pub const HIST_BUCKETS: usize = 32;

/// A thread blocked right now.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct WaitingThread {
    pub tid: u32,
    /// Its name now (untrusted).
    pub name: String,
    pub since_ns: u64,
    /// How long, at the last sample.
    pub for_ns: u64,
    /// Where it was created, when its creator's stack was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// Live threads listed per process in the report (the oldest first).
pub const MAX_THREADS_LISTED: usize = 200;

/// A live thread, for the report: who created it, its names, where it waits.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ThreadSummary {
    pub tid: u32,
    pub born_ns: u64,
    /// Its names over its life (first and latest; untrusted).
    pub names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creator: Option<super::Creator>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub futex_since_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_since_ns: Option<u64>,
}

/// One non-empty bucket of a histogram.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HistBucket {
    /// Durations in `[ge_ns, lt_ns)`.
    pub ge_ns: u64,
    pub lt_ns: u64,
    pub count: u64,
}

/// The log2 bucket of a duration in ns.
pub fn bucket(ns: u64) -> usize {
    let us = ns / 1000;
    (64 - us.leading_zeros() as usize).min(HIST_BUCKETS - 1)
}

pub fn histogram(h: &[u64; HIST_BUCKETS]) -> Vec<HistBucket> {
    h.iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(b, &count)| HistBucket {
            ge_ns: if b == 0 { 0 } else { 1000 << (b - 1) },
            lt_ns: if b + 1 == HIST_BUCKETS {
                u64::MAX
            } else {
                1000 << b
            },
            count,
        })
        .collect()
}

impl Model {
    /// Applies which threads are blocked (see [`WaitChanges`]).
    pub fn apply_wait_changes(&mut self, c: &WaitChanges) {
        if c.full {
            for t in self.procs.values_mut().flat_map(|p| p.threads.values_mut()) {
                t.futex_since = None;
                t.poll_since = None;
            }
        }
        for &(tid, pid) in &c.woke {
            if let Some(t) = self
                .procs
                .get_mut(&pid)
                .and_then(|p| p.threads.get_mut(&tid))
            {
                t.futex_since = None;
                t.poll_since = None;
            }
        }
        for b in &c.blocked {
            if let Some(t) = self
                .procs
                .get_mut(&b.pid)
                .and_then(|p| p.threads.get_mut(&b.tid))
            {
                (t.futex_since, t.poll_since) = if b.poll {
                    (None, Some(b.since_ns))
                } else {
                    (Some(b.since_ns), None)
                };
            }
        }
    }

    /// The census fields of a live process's summary, as of the last sample.
    pub(super) fn census(&self, p: &Process, s: &mut ProcessSummary) {
        let now = self.last_sample_ns;
        let waiting = |since: fn(&super::Thread) -> Option<u64>, min: u64| {
            let mut v: Vec<WaitingThread> = p
                .threads
                .values()
                .filter_map(|t| {
                    let since = since(t)?;
                    let for_ns = now.saturating_sub(since);
                    (for_ns >= min).then(|| WaitingThread {
                        tid: t.tid,
                        name: t.name().unwrap_or_default().to_owned(),
                        since_ns: since,
                        for_ns,
                        site: t.site.map(|id| self.sites.label(id)),
                    })
                })
                .collect();
            v.sort_by_key(|w| (w.since_ns, w.tid));
            v
        };
        let long = waiting(|t| t.futex_since, self.long_park_ns);
        s.long_parked_count = long.len() as u64;
        // The site most of the long-parked threads came from.
        let mut by_site: std::collections::HashMap<&str, u64> = Default::default();
        for w in &long {
            *by_site.entry(w.site.as_deref().unwrap_or("")).or_default() += 1;
        }
        s.long_parked_site = by_site
            .into_iter()
            .max_by_key(|&(site, n)| (n, std::cmp::Reverse(site.to_owned())))
            .filter(|(site, _)| !site.is_empty())
            .map(|(site, _)| site.to_owned());
        s.long_parked_min_ns = long.iter().map(|w| w.for_ns).min();
        s.long_parked = long.into_iter().take(MAX_LISTED).collect();
        s.poll_waiters = waiting(|t| t.poll_since, 0)
            .into_iter()
            .take(MAX_LISTED)
            .collect();
        s.park_histogram = histogram(&p.park_hist);
        let mut threads: Vec<&super::Thread> = p.threads.values().collect();
        threads.sort_by_key(|t| (t.born_ns, t.tid));
        s.threads = threads
            .into_iter()
            .take(MAX_THREADS_LISTED)
            .map(|t| ThreadSummary {
                tid: t.tid,
                born_ns: t.born_ns,
                names: t.names.clone(),
                creator: t.creator.clone(),
                site: t.site.map(|id| self.sites.label(id)),
                futex_since_ns: t.futex_since,
                poll_since_ns: t.poll_since,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(bucket(999), 0);
        assert_eq!(bucket(1000), 1);
        assert_eq!(bucket(1_023_999), 10);
        assert_eq!(bucket(1_024_000), 11);
        assert_eq!(bucket(u64::MAX), HIST_BUCKETS - 1);
        let mut h = [0; HIST_BUCKETS];
        h[bucket(1_500_000)] += 2;
        let v = histogram(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].ge_ns <= 1_500_000 && 1_500_000 < v[0].lt_ns && v[0].count == 2);
    }
}
