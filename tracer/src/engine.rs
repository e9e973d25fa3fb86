//! The engine: one replay of trace records, fed record by record by both the live collector
//! (as it writes each record) and the file reader. Everything derived from a trace (the model,
//! jobs, counters, series) is computed here once, so a file reads back to what the live
//! collector showed.

use std::collections::BTreeMap;

use crate::{
    cgroups::CgroupKey,
    detect::Detectors,
    events::{DecodeError, Event, decode},
    model::Model,
    tracefile::{Meta, StartInfo},
};

/// Exited processes whose summaries are kept, live and offline alike; older ones are dropped
/// and counted (`Model::finished_dropped`).
pub const MAX_FINISHED: usize = 20_000;

/// How a recording ended, from its end record.
#[derive(Clone, Debug)]
pub struct EndInfo {
    pub ts_ns: u64,
    pub reason: String,
    pub exit_code: Option<i32>,
}

pub struct Engine {
    pub model: Model,
    pub detectors: Detectors,
    /// The findings the live collector wrote in the file, if it did.
    pub live_findings: Option<Vec<crate::detect::Finding>>,
    pub start: Option<StartInfo>,
    /// The last cumulative kernel counters.
    pub counters: BTreeMap<String, u64>,
    pub end: Option<EndInfo>,
    /// The latest timestamp of any record.
    pub last_ts: u64,
    /// The live collector's own tables and drops (empty when reading a file).
    pub health: crate::health::SessionHealth,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    pub fn new() -> Self {
        Self {
            model: Model::new(MAX_FINISHED),
            detectors: Detectors::default(),
            live_findings: None,
            start: None,
            counters: BTreeMap::new(),
            end: None,
            last_ts: 0,
            health: Default::default(),
        }
    }

    /// Applies one kernel event (its raw bytes). An undecodable one is counted and returned.
    pub fn event(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        match decode(bytes) {
            Ok(ev) => {
                self.apply(&ev);
                Ok(())
            }
            Err(e) => {
                self.model.host.undecodable += 1;
                Err(e)
            }
        }
    }

    /// Applies one decoded kernel event.
    pub fn apply(&mut self, ev: &Event) {
        let ts = ev.header().ts_ns;
        self.last_ts = self.last_ts.max(ts);
        self.model.apply(ev);
        if let Event::Oom(e) = ev {
            self.detectors.oom(&self.model, e, ts);
        }
    }

    /// Applies one collector record.
    pub fn meta(&mut self, meta: &Meta) {
        match meta {
            Meta::Start(s) => {
                self.model.min_wait_ns = s.min_wait_ns;
                self.model.start_ns = s.start_ns;
                self.detectors.unix_offset = i128::from(s.start_unix_ns) - i128::from(s.start_ns);
                if let Some(cfg) = &s.detect {
                    self.detectors.cfg = (**cfg).clone();
                } else if s.runaway_window_ns != 0 {
                    self.detectors.cfg.runaway_window_ns = s.runaway_window_ns;
                }
                // Host limits bound the host's threads: only a host-wide trace sees them all.
                if s.pids.is_empty() && s.command.is_empty() {
                    self.detectors.host_limits = crate::detect::HostLimits {
                        pid_max: s.pid_max,
                        threads_max: s.threads_max,
                    };
                }
                self.last_ts = self.last_ts.max(s.start_ns);
                self.start = Some((**s).clone());
            }
            Meta::Process(seed) => {
                let ts = self.start.as_ref().map_or(0, |s| s.start_ns);
                self.model.seed(seed, ts);
            }
            Meta::Limits {
                ts_ns,
                id,
                hierarchy,
                limits,
            } => {
                self.last_ts = self.last_ts.max(*ts_ns);
                let key = CgroupKey {
                    hierarchy: *hierarchy,
                    id: *id,
                };
                self.model.set_limits(key, *limits);
            }
            Meta::Cgroup {
                id,
                path,
                hierarchy,
                job,
                limits,
            } => {
                let key = CgroupKey {
                    hierarchy: *hierarchy,
                    id: *id,
                };
                self.model
                    .set_cgroup(key, path.clone(), job.as_deref().cloned());
                self.model.set_limits(key, *limits);
            }
            Meta::Threads { ts_ns, pid, tids } => self.model.reconcile(*pid, tids, *ts_ns),
            Meta::Rss { pid, statm, .. } => self.model.rss_read(*pid, *statm),
            Meta::Waits {
                ts_ns,
                processes,
                changes,
            } => {
                self.last_ts = self.last_ts.max(*ts_ns);
                self.model.apply_waits(*ts_ns, processes);
                self.model.apply_wait_changes(changes);
                let lost = self.lost_events();
                self.detectors.sample(&self.model, *ts_ns, lost);
                // Once per sample: forget what only gone processes referred to.
                self.model.compact();
            }
            Meta::Stack(r) => self.model.apply_stack(r),
            Meta::Findings { findings, .. } => self.live_findings = Some(findings.clone()),
            Meta::Stats { ts_ns, counters } => {
                self.last_ts = self.last_ts.max(*ts_ns);
                self.counters = counters.clone();
            }
            Meta::End {
                ts_ns,
                reason,
                exit_code,
            } => {
                self.last_ts = self.last_ts.max(*ts_ns);
                self.end = Some(EndInfo {
                    ts_ns: *ts_ns,
                    reason: reason.clone(),
                    exit_code: *exit_code,
                });
            }
        }
    }

    /// Events the kernel could not deliver or track (ring buffer full, full maps), from the
    /// last counters.
    pub fn lost_events(&self) -> u64 {
        ["lost_events", "wait_map_full", "filter_map_full"]
            .iter()
            .map(|k| self.counters.get(*k).copied().unwrap_or(0))
            .sum()
    }
}
