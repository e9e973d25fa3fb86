//! Detectors: the engine's state and history turned into findings an SRE acts on. They run at
//! every recorded sample (and at OOM events), from the same records live and offline, so a
//! report of a file gives the findings the live collector gave.
//!
//! Each detector keeps only what its window needs; the findings list is bounded.

mod crash;
mod oom;
mod runaway;

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::Model;

/// Findings kept; past this, the oldest resolved one goes (or the oldest, if none is).
pub const MAX_FINDINGS: usize = 1000;

/// Thresholds and windows. The defaults meet the 60 s bar with production margins.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// Runaway threads: the window over which live threads must keep rising.
    pub runaway_window_ns: u64,
    /// ... by at least this many threads,
    pub runaway_min_rise: u64,
    /// ... with births at least this many times deaths.
    pub runaway_birth_ratio: u64,
    /// Crash loop: this many deaths (OOM kill or signal) of one job within the window.
    pub crash_min_deaths: u64,
    pub crash_window_ns: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            runaway_window_ns: 30_000_000_000,
            runaway_min_rise: 10,
            runaway_birth_ratio: 4,
            crash_min_deaths: 3,
            crash_window_ns: 300_000_000_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    pub kind: String,
    /// Null for a job-level finding.
    pub pid: Option<u32>,
    pub job: String,
    /// The onset (CLOCK_MONOTONIC ns, and Unix ns).
    pub since_ns: u64,
    pub since_unix: u64,
    pub last_ns: u64,
    /// When the detector first raised it (`detected_ns - since_ns`: onset to finding).
    pub detected_ns: u64,
    /// `active` or `resolved`.
    pub state: String,
    /// One sentence with the numbers. It quotes names of traced processes and symbols of
    /// their binaries unescaped: escape it for a terminal.
    pub summary: String,
    /// The numbers behind it, named.
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// Events the kernel lost while the finding's window ran: its counts are lower bounds.
    pub lost_events: u64,
}

/// One sample of a live process, as the detectors remember it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sample {
    pub ts: u64,
    pub live: u64,
    pub created: u64,
    pub exited: u64,
    pub rss: u64,
    /// mmap'd bytes net of munmap (thread stacks show here before they show in RSS).
    pub mapped: u64,
}

pub struct Detectors {
    pub cfg: DetectConfig,
    pub findings: Vec<Finding>,
    /// Per live process (pid, first seen): its samples over the longest window.
    history: HashMap<(u32, u64), VecDeque<Sample>>,
    /// Open findings by (kind, pid, first seen): their index in `findings`.
    open: HashMap<(&'static str, u32, u64), usize>,
    /// `start_unix_ns - start_ns`: turns monotonic times into Unix ones.
    pub unix_offset: i128,
    /// The kernel's loss counter at each sample, for findings' windows.
    losses: VecDeque<(u64, u64)>,
    /// The model's sequence number of the next ended process to look at.
    finished_seq: u64,
    /// Recent deaths by OOM kill or signal, per job.
    deaths: HashMap<String, VecDeque<crash::Death>>,
}

impl Default for Detectors {
    fn default() -> Self {
        Self::new(DetectConfig::default())
    }
}

impl Detectors {
    pub fn new(cfg: DetectConfig) -> Self {
        Self {
            cfg,
            findings: Vec::new(),
            history: HashMap::new(),
            open: HashMap::new(),
            unix_offset: 0,
            losses: VecDeque::new(),
            finished_seq: 0,
            deaths: HashMap::new(),
        }
    }

    fn unix(&self, ns: u64) -> u64 {
        (i128::from(ns) + self.unix_offset).max(0) as u64
    }

    /// Events lost since `since` (from the kernel counter at the samples).
    fn lost_since(&self, since: u64) -> u64 {
        let before = self
            .losses
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= since)
            .or(self.losses.front())
            .map_or(0, |l| l.1);
        self.losses.back().map_or(0, |l| l.1).saturating_sub(before)
    }

    /// At every sample: remember each live process's counts, then run the detectors.
    pub fn sample(&mut self, model: &Model, ts: u64, lost_total: u64) {
        let keep = self.cfg.runaway_window_ns * 2;
        if self.losses.back().is_none_or(|l| l.0 < ts) {
            self.losses.push_back((ts, lost_total));
        }
        while self
            .losses
            .front()
            .is_some_and(|l| l.0 + keep < ts && self.losses.len() > 1)
        {
            self.losses.pop_front();
        }
        let mut seen = std::collections::HashSet::new();
        for s in model.live_raw() {
            let key = (s.pid, s.first_seen_ns);
            seen.insert(key);
            let h = self.history.entry(key).or_default();
            h.push_back(Sample {
                ts,
                live: u64::from(s.threads_live),
                created: s.threads_created,
                exited: s.threads_exited,
                rss: s.rss_bytes,
                mapped: (s.mmap_bytes + s.mremap_grow_bytes)
                    .saturating_sub(s.munmap_bytes + s.mremap_shrink_bytes),
            });
            while h.front().is_some_and(|f| f.ts + keep < ts) {
                h.pop_front();
            }
        }
        // The collector forgets what has exited; a finding about it is over.
        self.history.retain(|k, _| seen.contains(k));
        let gone: Vec<_> = self
            .open
            .keys()
            .filter(|k| k.0 == "runaway_threads" && !seen.contains(&(k.1, k.2)))
            .copied()
            .collect();
        for k in gone {
            self.resolve(k, ts);
        }
        runaway::run(self, model, ts);
        crash::run(self, model, ts);
        // A crash loop whose job has not died within the window is over.
        let quiet: Vec<_> = self
            .open
            .iter()
            .filter(|&(k, &i)| {
                k.0 == "crash_loop" && !self.deaths.contains_key(&self.findings[i].job)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in quiet {
            self.resolve(k, ts);
        }
    }

    /// Opens or updates a finding of `kind` for a process.
    fn upsert(&mut self, key: (&'static str, u32, u64), f: Finding) {
        match self.open.get(&key) {
            Some(&i) => {
                let old = &self.findings[i];
                self.findings[i] = Finding {
                    since_ns: old.since_ns,
                    since_unix: old.since_unix,
                    detected_ns: old.detected_ns,
                    ..f
                };
            }
            None => {
                if self.findings.len() >= MAX_FINDINGS {
                    let drop = self
                        .findings
                        .iter()
                        .position(|f| f.state == "resolved")
                        .unwrap_or(0);
                    self.findings.remove(drop);
                    // Indexes after it moved down.
                    self.open.retain(|_, i| *i != drop);
                    for i in self.open.values_mut() {
                        if *i > drop {
                            *i -= 1;
                        }
                    }
                }
                self.open.insert(key, self.findings.len());
                self.findings.push(f);
            }
        }
    }

    /// Marks an open finding resolved.
    fn resolve(&mut self, key: (&'static str, u32, u64), ts: u64) {
        if let Some(i) = self.open.remove(&key) {
            self.findings[i].state = "resolved".into();
            self.findings[i].last_ns = ts;
        }
    }

    /// An OOM kill (after the model applied it).
    pub fn oom(&mut self, model: &Model, e: &tracer_common::OomEvent, ts: u64) {
        oom::run(self, model, e, ts);
    }
}

/// A job's key among open findings (a hash of its name).
pub(crate) fn job_key(job: &str) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    job.hash(&mut h);
    h.finish() as u32
}

pub(crate) fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// A duration for a summary: milliseconds below a second, else seconds with a tenth.
pub(crate) fn secs(ns: u64) -> String {
    if ns < 1_000_000_000 {
        format!("{} ms", ns / 1_000_000)
    } else {
        format!("{:.1} s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::*;

    use super::*;
    use crate::{events::Event, tracefile::WaitChanges};

    const SEC: u64 = 1_000_000_000;

    fn hdr(kind: EventKind, ts: u64, tgid: u32, tid: u32) -> EventHeader {
        EventHeader {
            ts_ns: ts,
            cgroup_id: 0,
            tgid,
            tid,
            kind: kind as u16,
            cpu: 0,
            memcg: 0,
        }
    }

    fn thread(ts: u64, pid: u32, tid: u32) -> Event {
        Event::NewTask(NewTaskEvent {
            hdr: hdr(EventKind::NewTask, ts, pid, pid),
            clone_flags: CLONE_THREAD,
            child_tid: tid,
            child_tgid: pid,
            comm: [0; 16],
        })
    }

    fn exit(ts: u64, pid: u32, tid: u32, dead: bool) -> Event {
        Event::TaskExit(TaskExitEvent {
            hdr: hdr(EventKind::TaskExit, ts, pid, tid),
            group_dead: dead as u32,
            exit_code: 0,
            comm: [0; 16],
        })
    }

    /// Drives a model and detectors one sample a second: `step(second)` gives the events.
    fn drive(secs: u64, mut step: impl FnMut(u64) -> Vec<Event>) -> Detectors {
        let mut m = Model::new(100);
        let mut d = Detectors::new(DetectConfig {
            runaway_window_ns: 10 * SEC,
            ..Default::default()
        });
        for s in 1..=secs {
            for ev in step(s) {
                m.apply(&ev);
            }
            m.apply_waits(s * SEC, &[]);
            m.apply_wait_changes(&WaitChanges::default());
            d.sample(&m, s * SEC, 0);
        }
        d
    }

    #[test]
    fn durations_read_in_ms_below_a_second() {
        assert_eq!(secs(35_000_000), "35 ms");
        assert_eq!(secs(1_250_000_000), "1.2 s");
    }

    #[test]
    fn a_leak_is_found_within_the_window_with_its_onset() {
        // A process idles 20 s, then starts a thread a second that never ends.
        let d = drive(40, |s| {
            let mut v = vec![thread(s * SEC, 100, 100)];
            if s > 20 {
                v.push(thread(s * SEC, 100, 1000 + s as u32));
            }
            v
        });
        assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
        let f = &d.findings[0];
        assert_eq!(
            (f.kind.as_str(), f.pid, f.state.as_str()),
            ("runaway_threads", Some(100), "active")
        );
        assert!(
            f.since_ns >= 20 * SEC && f.since_ns <= 21 * SEC,
            "onset {}",
            f.since_ns
        );
        assert!(
            f.detected_ns - f.since_ns <= 10 * SEC,
            "found within the window"
        );
        assert_eq!(f.evidence["exited"], 0);
    }

    #[test]
    fn a_recycling_pool_and_a_flat_process_raise_nothing() {
        // Eight threads, one replaced every second.
        let d = drive(40, |s| {
            let s32 = s as u32;
            let mut v = vec![thread(s * SEC, 100, 100)];
            if s <= 8 {
                v.push(thread(s * SEC, 100, 1000 + s32));
            } else {
                v.push(exit(s * SEC, 100, 1000 + s32 - 8, false));
                v.push(thread(s * SEC, 100, 1000 + s32));
            }
            v
        });
        assert!(d.findings.is_empty(), "{:#?}", d.findings);
    }

    #[test]
    fn a_runaway_that_exits_is_resolved_and_a_reused_pid_starts_clean() {
        let d = drive(50, |s| {
            let mut v = Vec::new();
            match s {
                1..=25 => {
                    v.push(thread(s * SEC, 100, 100));
                    v.push(thread(s * SEC, 100, 1000 + s as u32));
                }
                26 => {
                    for t in 1001..=1025 {
                        v.push(exit(s * SEC, 100, t, false));
                    }
                    v.push(exit(s * SEC, 100, 100, true));
                }
                // The pid comes back as a quiet process.
                27 => v.push(Event::NewTask(NewTaskEvent {
                    hdr: hdr(EventKind::NewTask, s * SEC, 1, 1),
                    clone_flags: 0,
                    child_tid: 100,
                    child_tgid: 100,
                    comm: [0; 16],
                })),
                _ => {}
            }
            v
        });
        assert_eq!(d.findings.len(), 1, "{:#?}", d.findings);
        assert_eq!(d.findings[0].state, "resolved");
        // Resolved at the first sample that no longer sees it.
        assert_eq!(d.findings[0].last_ns, 26 * SEC);
    }

    #[test]
    fn a_job_dying_on_a_signal_three_times_is_a_crash_loop_then_quiet() {
        // Three processes of one cgroup killed (SIGKILL) 5 s apart, then nothing for long.
        let d = drive(400, |s| match s {
            1 | 6 | 11 => {
                let pid = 200 + s as u32;
                vec![
                    Event::NewTask(NewTaskEvent {
                        hdr: hdr(EventKind::NewTask, s * SEC, 1, 1),
                        clone_flags: 0,
                        child_tid: pid,
                        child_tgid: pid,
                        comm: [0; 16],
                    }),
                    Event::TaskExit(TaskExitEvent {
                        hdr: hdr(EventKind::TaskExit, s * SEC + 1, pid, pid),
                        group_dead: GROUP_DEAD_YES,
                        exit_code: 9,
                        comm: [0; 16],
                    }),
                ]
            }
            _ => vec![],
        });
        let c: Vec<&Finding> = d
            .findings
            .iter()
            .filter(|f| f.kind == "crash_loop")
            .collect();
        assert_eq!(c.len(), 1, "{:#?}", d.findings);
        assert_eq!(c[0].evidence["deaths"], 3);
        assert_eq!(c[0].evidence["interval_ns"], 5 * SEC);
        assert_eq!(c[0].since_ns, SEC + 1);
        assert_eq!(
            c[0].state, "resolved",
            "no death for longer than the window"
        );
    }
}
