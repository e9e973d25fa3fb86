//! Detectors: the engine's state and history turned into findings an SRE acts on. They run at
//! every recorded sample (and at OOM events), from the same records live and offline, so a
//! report of a file gives the findings the live collector gave.
//!
//! Each detector keeps only what its window needs; the findings list is bounded.

mod config;
mod crash;
mod fit;
mod forecast;
mod memory;
mod oom;
mod runaway;

pub use config::ConfigError;
pub use forecast::HostLimits;

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::Model;

/// Findings kept; past this, the oldest resolved one goes (or the oldest, if none is).
pub const MAX_FINDINGS: usize = 1000;

/// Thresholds and windows. The defaults meet the 60 s bar with production margins; a config
/// file (`config`) or flags change them, and the trace file keeps the ones a recording used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectConfig {
    /// Runaway threads: the window over which live threads must keep rising,
    pub runaway_window_ns: u64,
    /// ... by at least this many threads,
    pub runaway_min_rise: u64,
    /// ... with births at least this many times deaths.
    pub runaway_birth_ratio: u64,
    /// Crash loop: this many deaths (OOM kill or signal) of one job within the window.
    pub crash_min_deaths: u64,
    pub crash_window_ns: u64,
    /// Memory leak: the window of a fast leak (every sample), and of a slow one (the 10 s
    /// series),
    pub leak_window_ns: u64,
    pub leak_long_window_ns: u64,
    /// ... over which memory grows by at least this much,
    pub leak_min_growth_bytes: u64,
    /// ... along a line this good (R²),
    pub leak_min_r2: f64,
    /// ... whose last quarter still rises at least this fraction of the slope.
    pub leak_tail_ratio: f64,
    /// Memory bloat: rises of at least this much, each within `bloat_step_max_ns`,
    pub bloat_step_bytes: u64,
    pub bloat_step_max_ns: u64,
    /// ... at least this many of them,
    pub bloat_min_steps: u64,
    /// ... then a plateau held this long (and at least twice the time between steps).
    pub bloat_plateau_ns: u64,
    /// Growth that ends within this time of a process's start is warm-up.
    pub warmup_ns: u64,
    /// Limit forecast: the rate is the slope over this window,
    pub forecast_window_ns: u64,
    /// ... a finding is raised when the limit is nearer than this,
    pub forecast_horizon_ns: u64,
    /// ... and the value rose at least this much over the window (tasks, bytes),
    pub forecast_min_rise_tasks: u64,
    pub forecast_min_rise_bytes: u64,
    /// ... along a line this good (R²).
    pub forecast_min_r2: f64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        const SEC: u64 = 1_000_000_000;
        Self {
            runaway_window_ns: 30 * SEC,
            runaway_min_rise: 10,
            runaway_birth_ratio: 4,
            crash_min_deaths: 3,
            crash_window_ns: 300 * SEC,
            leak_window_ns: 40 * SEC,
            leak_long_window_ns: 600 * SEC,
            leak_min_growth_bytes: 16 << 20,
            leak_min_r2: 0.8,
            leak_tail_ratio: 0.3,
            bloat_step_bytes: 8 << 20,
            bloat_step_max_ns: 5 * SEC,
            bloat_min_steps: 3,
            bloat_plateau_ns: 20 * SEC,
            warmup_ns: 30 * SEC,
            forecast_window_ns: 30 * SEC,
            forecast_horizon_ns: 3600 * SEC,
            forecast_min_rise_tasks: 5,
            forecast_min_rise_bytes: 8 << 20,
            forecast_min_r2: 0.6,
        }
    }
}

impl DetectConfig {
    /// How long the detectors keep each process's samples: the longest short window, twice
    /// (room to find the onset before it).
    fn history_ns(&self) -> u64 {
        [
            2 * self.runaway_window_ns,
            2 * self.leak_window_ns,
            2 * self.forecast_window_ns,
            // Stairs: three steps and a plateau.
            self.bloat_min_steps * (self.bloat_plateau_ns / 2) + 2 * self.bloat_plateau_ns,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// Samples kept per process at most: faster sampling keeps them further apart.
const MAX_HISTORY: u64 = 256;
/// Changes of the loss counter remembered.
const MAX_LOSS_STEPS: usize = 4096;

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
    /// The brk heap, and anonymous and file RSS.
    pub heap: u64,
    pub anon: u64,
    pub file: u64,
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
    /// The kernel's loss counter at the first sample and whenever it changed (the newest
    /// MAX_LOSS_STEPS), for findings' windows.
    losses: VecDeque<(u64, u64)>,
    /// The model's sequence number of the next ended process to look at.
    finished_seq: u64,
    /// Recent deaths by OOM kill or signal, per job.
    deaths: HashMap<String, VecDeque<crash::Death>>,
    /// Limited quantities (a cgroup's pids or memory, the host's threads) over the forecast
    /// window, and the open forecast of each.
    tracks: HashMap<forecast::Target, forecast::Track>,
    /// The stairs of each open bloat finding, as found (steps age out of the history; the
    /// finding keeps them).
    bloats: HashMap<(u32, u64), memory::Bloat>,
    /// Jobs' threads, for job-level runaways.
    jobs: runaway::JobTracks,
    forecasts: HashMap<forecast::Target, (&'static str, u32, u64)>,
    pub host_limits: HostLimits,
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
            tracks: HashMap::new(),
            bloats: HashMap::new(),
            jobs: Default::default(),
            forecasts: HashMap::new(),
            host_limits: HostLimits::default(),
        }
    }

    fn unix(&self, ns: u64) -> u64 {
        (i128::from(ns) + self.unix_offset).max(0) as u64
    }

    /// A finding raised now (`ts`), active, with its onset and what it says.
    #[allow(clippy::too_many_arguments)]
    fn raised(
        &self,
        kind: &str,
        pid: Option<u32>,
        job: String,
        since: u64,
        ts: u64,
        summary: String,
        evidence: serde_json::Map<String, serde_json::Value>,
        lost: u64,
    ) -> Finding {
        Finding {
            kind: kind.to_owned(),
            pid,
            job,
            since_ns: since,
            since_unix: self.unix(since),
            last_ns: ts,
            detected_ns: ts,
            state: "active".into(),
            summary,
            evidence,
            lost_events: lost,
        }
    }

    /// Events lost since `since` (from the kernel counter at the samples). Older than the
    /// changes kept, it counts from the oldest kept: a lower bound.
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

    /// Records the loss counter at a sample (only its changes are kept).
    fn note_losses(&mut self, ts: u64, total: u64) {
        if self.losses.back().is_none_or(|l| l.1 != total && l.0 < ts) {
            self.losses.push_back((ts, total));
        }
        while self.losses.len() > MAX_LOSS_STEPS {
            self.losses.pop_front();
        }
    }

    /// At every sample: remember each live process's counts, then run the detectors.
    pub fn sample(&mut self, model: &Model, ts: u64, lost_total: u64) {
        let keep = self.cfg.history_ns();
        // Samples closer than this replace the last one (the history stays bounded).
        let spacing = keep / MAX_HISTORY;
        self.note_losses(ts, lost_total);
        let mut seen = std::collections::HashSet::new();
        for s in model.live_raw() {
            let key = (s.pid, s.first_seen_ns);
            seen.insert(key);
            // A process being torn down keeps the history of how it ran (see `hold`).
            if model.ending_since(s.pid, s.first_seen_ns).is_some() {
                continue;
            }
            let h = self.history.entry(key).or_default();
            let sample = Sample {
                ts,
                live: u64::from(s.threads_live),
                created: s.threads_created,
                exited: s.threads_exited,
                rss: s.rss_bytes,
                mapped: (s.mmap_bytes + s.mremap_grow_bytes)
                    .saturating_sub(s.munmap_bytes + s.mremap_shrink_bytes),
                heap: s.heap_bytes,
                anon: s.rss_anon_bytes,
                file: s.rss_file_bytes,
            };
            let close = h.len() >= 2 && h[h.len() - 2].ts + spacing > ts;
            match h.back_mut() {
                Some(last) if close => *last = sample,
                _ => h.push_back(sample),
            }
            while h.front().is_some_and(|f| f.ts + keep < ts) {
                h.pop_front();
            }
        }
        // The collector forgets what has exited; a finding about it is over.
        self.history.retain(|k, _| seen.contains(k));
        self.bloats.retain(|k, _| seen.contains(k));
        let gone: Vec<_> = self
            .open
            .keys()
            .filter(|k| {
                matches!(k.0, "runaway_threads" | "memory_leak" | "memory_bloat")
                    && k.2 != runaway::JOB_FINDING
                    && !seen.contains(&(k.1, k.2))
            })
            .copied()
            .collect();
        for k in gone {
            self.resolve(k, ts);
        }
        runaway::run(self, model, ts);
        runaway::run_jobs(self, model, ts);
        memory::run(self, model, ts);
        forecast::run(self, model, ts);
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

    /// A process that began to end (exit_group, a fatal signal): its threads wake and exit
    /// one by one, its memory is unmapped. Its open findings keep what they said while it ran
    /// (a sample during the teardown would say "0 of 40 new threads parked") and only their
    /// last time moves; they resolve once it is gone. True if it is ending.
    fn hold(&mut self, model: &Model, pid: u32, born: u64, ts: u64) -> bool {
        if model.ending_since(pid, born).is_none() {
            return false;
        }
        for kind in ["runaway_threads", "memory_leak", "memory_bloat"] {
            if let Some(&i) = self.open.get(&(kind, pid, born)) {
                self.findings[i].last_ns = ts;
            }
        }
        true
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

/// A finding's evidence from named values.
pub(crate) fn evidence<const N: usize>(
    items: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The words every finding whose window lost events ends with.
pub(crate) fn lost_note(lost: u64) -> String {
    if lost > 0 {
        format!(" ({lost} events lost in this window: counts are lower bounds)")
    } else {
        String::new()
    }
}

/// Signed MiB for a summary: "+1.5 MiB", "-0.2 MiB".
pub(crate) fn signed_mib(v: i64) -> String {
    format!(
        "{}{}",
        if v >= 0 { "+" } else { "-" },
        mib(v.unsigned_abs())
    )
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

    fn rss(ts: u64, pid: u32, member: u32, bytes: u64) -> Event {
        Event::Rss(RssEvent {
            hdr: hdr(EventKind::Rss, ts, pid, pid),
            size: bytes as i64,
            mm_id: pid,
            member,
            curr: 1,
            _pad: 0,
        })
    }

    const MIB: u64 = 1 << 20;

    /// Like `drive`, with a config, the model at hand, and the kernel's loss counter.
    fn drive_full(
        secs: u64,
        cfg: DetectConfig,
        mut step: impl FnMut(u64, &mut Model, &mut Detectors) -> (Vec<Event>, u64),
    ) -> Detectors {
        let mut m = Model::new(100);
        let mut d = Detectors::new(cfg);
        for s in 1..=secs {
            let (evs, lost) = step(s, &mut m, &mut d);
            for ev in evs {
                m.apply(&ev);
            }
            m.apply_waits(s * SEC, &[]);
            m.apply_wait_changes(&WaitChanges::default());
            d.sample(&m, s * SEC, lost);
        }
        d
    }

    fn start(pid: u32) -> Event {
        Event::NewTask(NewTaskEvent {
            hdr: hdr(EventKind::NewTask, SEC / 2, 1, 1),
            clone_flags: 0,
            child_tid: pid,
            child_tgid: pid,
            comm: [0; 16],
        })
    }

    fn kinds(d: &Detectors) -> Vec<(&str, &str)> {
        d.findings
            .iter()
            .map(|f| (f.kind.as_str(), f.state.as_str()))
            .collect()
    }

    /// A process started at 0.5 s whose anonymous RSS at second `s` is `mem(s)`; `lost(s)`
    /// the loss counter.
    fn memory(secs: u64, mem: impl Fn(u64) -> u64) -> Detectors {
        drive_full(secs, DetectConfig::default(), |s, _, _| {
            let mut v = vec![rss(s * SEC, 100, RSS_ANON, mem(s))];
            if s == 1 {
                v.insert(0, start(100));
            }
            (v, 0)
        })
    }

    #[test]
    fn a_linear_leak_with_flat_threads_is_found_from_its_onset_with_go_s_signature() {
        // 50 MiB for 30 s, then +2 MiB/s.
        let d = memory(120, |s| 50 * MIB + 2 * MIB * s.saturating_sub(30));
        assert_eq!(kinds(&d), [("memory_leak", "active")], "{:#?}", d.findings);
        let f = &d.findings[0];
        assert!(
            f.since_ns.abs_diff(30 * SEC) <= SEC,
            "onset 30 s, found {}",
            f.since_ns
        );
        assert!(f.detected_ns - f.since_ns <= 40 * SEC, "{f:#?}");
        let slope = f.evidence["slope_bytes_per_s"].as_i64().unwrap();
        assert!(
            (slope - 2 * MIB as i64).abs() < (MIB / 50) as i64,
            "{slope}"
        );
        assert!(f.evidence["r2"].as_f64().unwrap() > 0.99);
        assert!(f.summary.contains("Go's signature"), "{}", f.summary);
        assert_eq!(f.evidence["threads_flat"], true);
    }

    #[test]
    fn a_slow_leak_is_found_on_the_series_scale() {
        // 48 KiB/s from 60 s: 1.9 MiB per 40 s window (under the minimum), 28 MiB per 10 min.
        let d = memory(800, |s| 80 * MIB + 48 * 1024 * s.saturating_sub(60));
        assert_eq!(kinds(&d), [("memory_leak", "active")], "{:#?}", d.findings);
        let f = &d.findings[0];
        assert_eq!(f.evidence["window_ns"], 600 * SEC, "the long scale");
        assert!(f.since_ns.abs_diff(60 * SEC) <= 10 * SEC, "{}", f.since_ns);
        let slope = f.evidence["slope_bytes_per_s"].as_i64().unwrap();
        assert!((slope - 48 * 1024).abs() < 2048, "{slope}");
        assert!(f.detected_ns <= 60 * SEC + 600 * SEC, "{f:#?}");
    }

    #[test]
    fn stairs_that_level_off_are_bloat_and_not_a_leak() {
        // Four 32 MiB steps 10 s apart from 40 s, then flat.
        let d = memory(130, |s| {
            let steps = if s >= 40 {
                ((s - 40) / 10 + 1).min(4)
            } else {
                0
            };
            100 * MIB + steps * 32 * MIB
        });
        assert_eq!(kinds(&d), [("memory_bloat", "active")], "{:#?}", d.findings);
        let f = &d.findings[0];
        assert_eq!(f.evidence["steps"], 4);
        assert_eq!(f.evidence["plateau_bytes"], 228 * MIB);
        assert!(f.since_ns.abs_diff(40 * SEC) <= SEC, "{}", f.since_ns);
        // The last step at 70 s; found once the plateau held 20 s.
        assert!(f.detected_ns <= 91 * SEC, "{f:#?}");
    }

    #[test]
    fn warm_up_and_flat_churn_raise_nothing() {
        // 200 MiB in steps during the first 10 s, then flat for ten minutes.
        let d = memory(600, |s| (s.min(10) * 20 + 10) * MIB);
        assert!(d.findings.is_empty(), "{:#?}", d.findings);
        // mmap/munmap churn: up and down by 64 MiB every second, flat on average.
        let d = memory(600, |s| (100 + 64 * (s % 2)) * MIB);
        assert!(d.findings.is_empty(), "{:#?}", d.findings);
    }

    #[test]
    fn a_leak_that_stops_is_resolved() {
        let d = memory(200, |s| (50 + 2 * s.clamp(20, 80).saturating_sub(20)) * MIB);
        assert_eq!(
            kinds(&d),
            [("memory_leak", "resolved")],
            "{:#?}",
            d.findings
        );
        let f = &d.findings[0];
        assert!(
            f.last_ns > 80 * SEC && f.last_ns <= 130 * SEC,
            "{}",
            f.last_ns
        );
    }

    #[test]
    fn a_clock_gap_and_lost_events_are_survived_and_said() {
        // Samples stop from 50 s to 65 s (a stalled collector); events were lost at 55 s.
        let mut d = Detectors::default();
        let mut m = Model::new(100);
        m.apply(&start(100));
        for s in (1..=110u64).filter(|s| !(50..65).contains(s)) {
            m.apply(&rss(
                s * SEC,
                100,
                RSS_ANON,
                50 * MIB + MIB * s.saturating_sub(30),
            ));
            m.apply_waits(s * SEC, &[]);
            d.sample(&m, s * SEC, if s >= 55 { 7 } else { 0 });
        }
        assert_eq!(kinds(&d), [("memory_leak", "active")], "{:#?}", d.findings);
        let f = &d.findings[0];
        let slope = f.evidence["slope_bytes_per_s"].as_i64().unwrap();
        assert!((slope - MIB as i64).abs() < (MIB / 20) as i64, "{slope}");
        assert_eq!(f.lost_events, 7);
        assert!(f.summary.contains("7 events lost"), "{}", f.summary);
    }

    #[test]
    fn an_exec_resetting_rss_and_a_reused_pid_raise_no_leak() {
        let d = drive_full(200, DetectConfig::default(), |s, _, _| {
            let mut v = Vec::new();
            match s {
                1 => v.push(start(100)),
                // The program execs at 60 s: its counters start again from nothing.
                60 => v.push(Event::Exec(ExecEvent {
                    hdr: hdr(EventKind::Exec, s * SEC, 100, 100),
                    old_tid: 100,
                    _pad: 0,
                    comm: [0; 16],
                    filename: [0; FILENAME_LEN],
                })),
                // It exits; its pid comes back as another, flat process.
                120 => v.push(exit(s * SEC, 100, 100, true)),
                121 => v.push(start(100)),
                _ => {}
            }
            let mem = if s < 60 {
                80
            } else {
                20 + (s - 60).min(3) * 20
            };
            if s != 120 {
                v.push(rss(s * SEC, 100, RSS_ANON, mem * MIB));
            }
            (v, 0)
        });
        assert!(d.findings.is_empty(), "{:#?}", d.findings);
    }

    #[test]
    fn a_leak_resolves_when_its_process_exits() {
        let d = memory(90, |s| (50 + 2 * s) * MIB);
        assert_eq!(kinds(&d), [("memory_leak", "active")]);
        let mut d = d;
        let m = Model::new(100);
        d.sample(&m, 91 * SEC, 0);
        assert_eq!(kinds(&d), [("memory_leak", "resolved")]);
    }

    /// A process in cgroup 77 (pids.max 200) whose threads grow by `rate(s)` a second.
    fn pids_forecast(secs: u64, rate: impl Fn(u64) -> u32, raise_at: u64) -> Detectors {
        use crate::cgroups::{CgroupKey, Hierarchy, Limits};
        let key = CgroupKey {
            hierarchy: Hierarchy::V2,
            id: 77,
        };
        let mut next = 1000u32;
        drive_full(secs, DetectConfig::default(), |s, m, _| {
            if s == 1 {
                m.set_cgroup(key, "/system.slice/worker.service".into(), None);
            }
            let max = if s >= raise_at { 1_000_000 } else { 200 };
            m.set_limits(
                key,
                Limits {
                    pids_max: Some(max),
                    ..Default::default()
                },
            );
            let mut v = Vec::new();
            for _ in 0..rate(s) {
                let mut e = thread(s * SEC, 100, next);
                if let Event::NewTask(t) = &mut e {
                    t.hdr.cgroup_id = 77;
                }
                v.push(e);
                next += 1;
            }
            (v, 0)
        })
    }

    #[test]
    fn threads_heading_for_pids_max_are_forecast_and_resolve_when_the_limit_is_raised() {
        // 2 threads a second from 1: 200 reached at ~100 s.
        let d = pids_forecast(60, |_| 2, u64::MAX);
        let f: Vec<&Finding> = d
            .findings
            .iter()
            .filter(|f| f.kind == "limit_forecast")
            .collect();
        assert_eq!(f.len(), 1, "{:#?}", d.findings);
        let f = f[0];
        assert_eq!(
            (f.pid, f.job.as_str()),
            (Some(100), "systemd:worker.service")
        );
        assert_eq!(f.evidence["resource"], "pids");
        assert_eq!(f.evidence["limit"], 200);
        assert_eq!(f.evidence["current"], 121);
        assert!((f.evidence["rate_per_s"].as_f64().unwrap() - 2.0).abs() < 0.01);
        let eta = f.evidence["eta_s"].as_u64().unwrap();
        assert!((38..=41).contains(&eta), "{eta}");
        assert_eq!(f.state, "active");
        // Found within the first window (30 s; 3/4 covered).
        assert!(f.detected_ns <= 25 * SEC, "{f:#?}");
        // Raised at 40 s: out of reach, resolved.
        let d = pids_forecast(60, |_| 2, 40);
        let f = d
            .findings
            .iter()
            .find(|f| f.kind == "limit_forecast")
            .unwrap();
        assert_eq!((f.state.as_str(), f.last_ns), ("resolved", 40 * SEC));
        // Growth stops at 30 s: resolved once the window is flat.
        let d = pids_forecast(90, |s| if s < 30 { 2 } else { 0 }, u64::MAX);
        let f = d
            .findings
            .iter()
            .find(|f| f.kind == "limit_forecast")
            .unwrap();
        assert_eq!(f.state, "resolved", "{f:#?}");
    }

    #[test]
    fn host_threads_are_forecast_against_threads_max_when_no_cgroup_limits_them() {
        let d = drive_full(40, DetectConfig::default(), |s, _, d| {
            d.host_limits = HostLimits {
                pid_max: Some(4_194_304),
                threads_max: Some(500),
            };
            (
                (0..5)
                    .map(|i| thread(s * SEC, 100, 1000 + s as u32 * 10 + i))
                    .collect(),
                0,
            )
        });
        let f = d
            .findings
            .iter()
            .find(|f| f.kind == "limit_forecast")
            .unwrap();
        assert_eq!((f.pid, f.job.as_str()), (Some(100), "host"));
        assert_eq!(f.evidence["limit_source"], "kernel.threads-max");
        assert_eq!(f.evidence["resource"], "threads");
    }

    #[test]
    fn a_job_forking_a_process_per_message_is_a_job_level_runaway() {
        // A parent forks a child a second from 10 s; the children never exit.
        let d = drive(40, |s| {
            let mut v = vec![thread(s * SEC, 100, 100)];
            if s > 10 {
                let pid = 500 + s as u32;
                v.push(Event::NewTask(NewTaskEvent {
                    hdr: hdr(EventKind::NewTask, s * SEC, 100, 100),
                    clone_flags: 0,
                    child_tid: pid,
                    child_tgid: pid,
                    comm: [0; 16],
                }));
            }
            v
        });
        assert_eq!(
            kinds(&d),
            [("runaway_threads", "active")],
            "{:#?}",
            d.findings
        );
        let f = &d.findings[0];
        assert_eq!(f.pid, None, "job-level");
        assert!(f.since_ns.abs_diff(10 * SEC) <= SEC, "{}", f.since_ns);
        assert_eq!(f.evidence["exited"], 0);
        assert!(f.evidence["processes_end"].as_u64().unwrap() > 10);
        assert!(f.summary.contains("across"), "{}", f.summary);
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

    /// A leaker (pid 100) creating a thread a second for 20 s, each parked from its birth;
    /// from 21 s `then(s)` gives its events. At 21 s its parked threads wake (as a group exit
    /// wakes them). Returns the detectors and the first finding's parked count at each sample.
    fn parked_leak_then(then: impl Fn(u64) -> Vec<Event>) -> (Detectors, Vec<serde_json::Value>) {
        let mut seen = Vec::new();
        // A rise of 5 in 10 s: the history up to 20 s still makes a runaway at 21 s.
        let cfg = DetectConfig {
            runaway_window_ns: 10 * SEC,
            runaway_min_rise: 5,
            ..Default::default()
        };
        let mut m = Model::new(100);
        let mut d = Detectors::new(cfg);
        for s in 1..=25u64 {
            let evs = if s <= 20 {
                vec![thread(s * SEC, 100, 1000 + s as u32)]
            } else {
                then(s)
            };
            for ev in evs {
                m.apply(&ev);
            }
            if s <= 20 {
                m.apply_wait_changes(&WaitChanges {
                    blocked: vec![crate::tracefile::BlockedThread {
                        tid: 1000 + s as u32,
                        pid: 100,
                        poll: false,
                        since_ns: s * SEC,
                    }],
                    ..Default::default()
                });
            } else if s == 21 {
                m.apply_wait_changes(&WaitChanges {
                    woke: (1001..=1020).map(|t| (t, 100)).collect(),
                    ..Default::default()
                });
            }
            m.apply_waits(s * SEC, &[]);
            d.sample(&m, s * SEC, 0);
            seen.extend(
                d.findings
                    .first()
                    .map(|f| f.evidence["new_threads_parked"].clone()),
            );
        }
        (d, seen)
    }

    fn exit_group(ts: u64, pid: u32, tid: u32) -> Event {
        Event::ExitCall(ExitCallEvent {
            hdr: hdr(EventKind::ExitCall, ts, pid, tid),
            code: 0,
            group: 1,
        })
    }

    #[test]
    fn a_runaway_keeps_its_evidence_while_its_process_is_torn_down() {
        // exit_group at 21 s wakes every thread; they exit at 22 s.
        let (d, parked) = parked_leak_then(|s| match s {
            21 => vec![exit_group(s * SEC, 100, 100)],
            22 => (1001..=1020)
                .map(|t| exit(s * SEC, 100, t, false))
                .chain([exit(s * SEC, 100, 100, true)])
                .collect(),
            _ => vec![],
        });
        assert_eq!(kinds(&d), [("runaway_threads", "resolved")]);
        let f = &d.findings[0];
        // What it said at 20 s, the last sample before the teardown: the 11 threads born in
        // its window (10 s to 20 s), all parked.
        assert_eq!(f.evidence["new_threads_alive"], 11, "{f:#?}");
        assert_eq!(f.evidence["new_threads_parked"], 11, "{f:#?}");
        assert_eq!(f.evidence["live_end"], 21, "{f:#?}");
        assert!(parked.iter().all(|p| p.as_u64() > Some(0)), "{parked:?}");
        // Held at 21 s, resolved at 22 s, when it was gone.
        assert_eq!(f.last_ns, 22 * SEC);
    }

    #[test]
    fn a_fatal_signal_is_a_teardown_too_and_a_live_wake_is_not() {
        // SIGKILL: the first thread's exit (status 9) comes with the wake-up.
        let (d, _) = parked_leak_then(|s| {
            let mut v: Vec<Event> = (s == 21)
                .then(|| exit(s * SEC, 100, 1001, false))
                .into_iter()
                .collect();
            if let Some(Event::TaskExit(e)) = v.first_mut() {
                e.exit_code = 9;
            }
            v
        });
        assert_eq!(d.findings[0].evidence["new_threads_parked"], 11);
        assert_eq!(d.findings[0].state, "active");
        // The same wake-up in a process that goes on (and leaks a 21st thread): the evidence
        // says so.
        let (_, parked) = parked_leak_then(|s| {
            (s == 21)
                .then(|| thread(s * SEC, 100, 1021))
                .into_iter()
                .collect()
        });
        assert_eq!(parked.last(), Some(&serde_json::json!(0)), "{parked:?}");
    }

    #[test]
    fn a_leak_keeps_its_growth_while_its_process_unmaps_at_exit() {
        let d = drive_full(100, DetectConfig::default(), |s, _, _| {
            let mut v = match s {
                ..=90 => vec![rss(s * SEC, 100, RSS_ANON, (50 + 2 * s) * MIB)],
                91 => vec![
                    exit_group(s * SEC, 100, 100),
                    rss(s * SEC, 100, RSS_ANON, 4 * MIB),
                ],
                _ => vec![],
            };
            if s == 1 {
                v.insert(0, start(100));
            }
            (v, 0)
        });
        assert_eq!(kinds(&d), [("memory_leak", "active")]);
        let f = &d.findings[0];
        // Its RSS as of 90 s, the last sample before the teardown; held since.
        assert_eq!(f.evidence["rss_end_bytes"], 230 * MIB, "{f:#?}");
        assert_eq!(f.last_ns, 100 * SEC);
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
