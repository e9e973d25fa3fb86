//! Memory and threads over time, per process and per job: a fine ring (a point every 10 s for
//! an hour) and a coarse one (a point a minute for a day). Points are taken at the wait
//! snapshots the collector records every sample, so the live collector and a report of its
//! file compute the same series from the same records.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Fine ring: a point every 10 s, an hour of them.
pub const FINE_STEP_NS: u64 = 10_000_000_000;
pub const FINE_LEN: usize = 360;
/// Coarse ring: a point a minute, a day of them.
pub const COARSE_STEP_NS: u64 = 60_000_000_000;
pub const COARSE_LEN: usize = 1440;
/// Processes and jobs with a series; past this, new ones get none (counted).
pub const MAX_SERIES: usize = 512;

/// One point. Sizes in KiB (16 bytes a point: a full process costs about 29 KiB).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Point {
    /// Seconds since the trace started.
    pub t_s: u32,
    pub rss_kib: u32,
    /// Bytes mapped by mmap/mremap and not unmapped since tracing started (net; may be
    /// negative for mappings made before, shown as 0).
    pub mapped_kib: u32,
    /// The brk heap's size (break minus heap start), when known.
    pub heap_kib: u32,
    pub threads: u32,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Series {
    pub fine: VecDeque<Point>,
    pub coarse: VecDeque<Point>,
}

impl Series {
    fn push(&mut self, p: Point, fine: bool, coarse: bool) {
        if fine {
            if self.fine.len() >= FINE_LEN {
                self.fine.pop_front();
            }
            self.fine.push_back(p);
        }
        if coarse {
            if self.coarse.len() >= COARSE_LEN {
                self.coarse.pop_front();
            }
            self.coarse.push_back(p);
        }
    }
}

/// The series of every process (by pid, while it lives) and job (by name), and when the
/// next points are due.
#[derive(Default)]
pub struct SeriesBook {
    /// By (pid, first seen): a process is its tgid and start, not its pid alone.
    pub procs: HashMap<(u32, u64), Series>,
    /// Processes that ended, oldest first: the first to go when the table is full.
    ended: VecDeque<(u32, u64)>,
    pub jobs: HashMap<String, Series>,
    next_fine: u64,
    next_coarse: u64,
    /// Processes and jobs that got no series (the table was full).
    pub dropped: u64,
}

impl SeriesBook {
    /// Which rings take a point at `ts` (the first sample takes both).
    pub fn due(&mut self, ts: u64) -> (bool, bool) {
        let fine = ts >= self.next_fine;
        let coarse = ts >= self.next_coarse;
        if fine {
            self.next_fine = ts - ts % FINE_STEP_NS + FINE_STEP_NS;
        }
        if coarse {
            self.next_coarse = ts - ts % COARSE_STEP_NS + COARSE_STEP_NS;
        }
        (fine, coarse)
    }

    pub fn add_proc(&mut self, key: (u32, u64), p: Point, fine: bool, coarse: bool) {
        if !self.procs.contains_key(&key)
            && self.procs.len() >= MAX_SERIES
            && let Some(old) = self.ended.pop_front()
        {
            self.procs.remove(&old);
        }
        let full = self.procs.len() >= MAX_SERIES;
        match self.procs.get_mut(&key) {
            Some(s) => s.push(p, fine, coarse),
            None if !full => self.procs.entry(key).or_default().push(p, fine, coarse),
            None => self.dropped += 1,
        }
    }

    /// The process ended: its series is kept until room is needed.
    pub fn ended(&mut self, key: (u32, u64)) {
        if self.procs.contains_key(&key) {
            self.ended.push_back(key);
        }
    }

    /// Forgets the series of jobs not in `keep`.
    pub fn retain_jobs(&mut self, keep: &std::collections::HashSet<String>) {
        self.jobs.retain(|j, _| keep.contains(j));
    }

    pub fn add_job(&mut self, job: &str, p: Point, fine: bool, coarse: bool) {
        let full = self.jobs.len() >= MAX_SERIES;
        match self.jobs.get_mut(job) {
            Some(s) => s.push(p, fine, coarse),
            None if !full => self
                .jobs
                .entry(job.to_owned())
                .or_default()
                .push(p, fine, coarse),
            None => self.dropped += 1,
        }
    }
}

pub fn kib(bytes: u64) -> u32 {
    (bytes >> 10).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_take_points_at_their_steps_and_stay_bounded() {
        let mut b = SeriesBook::default();
        let mut fines = 0;
        let mut coarses = 0;
        // Two hours of one-second samples.
        for s in 0..7200u64 {
            let (f, c) = b.due(s * 1_000_000_000);
            fines += u32::from(f);
            coarses += u32::from(c);
            b.add_proc(
                (1, 0),
                Point {
                    t_s: s as u32,
                    ..Default::default()
                },
                f,
                c,
            );
        }
        assert_eq!((fines, coarses), (720, 120));
        let s = &b.procs[&(1, 0)];
        assert_eq!(s.fine.len(), FINE_LEN, "an hour of fine points");
        assert_eq!(s.fine.front().unwrap().t_s, 3600);
        assert_eq!(s.coarse.len(), 120);
        for pid in 2..(MAX_SERIES as u32 + 11) {
            b.add_proc((pid, 0), Point::default(), true, false);
        }
        assert_eq!(b.procs.len(), MAX_SERIES);
        assert_eq!(b.dropped, 10);
        // An ended process makes room.
        b.ended((1, 0));
        b.add_proc((9999, 0), Point::default(), true, false);
        assert!(b.procs.contains_key(&(9999, 0)) && !b.procs.contains_key(&(1, 0)));
    }
}
