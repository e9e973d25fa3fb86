//! Jobs: the processes of one job (container, pod, unit, cgroup) added up.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    CreatorSite, Model, ProcessSummary, TOP_SITES,
    series::{Point, Series, kib},
};
use crate::cgroups::JobInfo;

/// At most this many pids are listed per job (the counts cover all of them).
pub const MAX_LISTED_PIDS: usize = 1000;

/// What the report says about one job: counters over the traced interval, over every process
/// the model kept (see `processes_dropped` in the report); `*_now` at the last sample.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct JobSummary {
    pub job: String,
    pub job_info: JobInfo,
    /// Pids of its processes (live and exited), at most [`MAX_LISTED_PIDS`].
    pub pids: Vec<u32>,
    pub processes: u64,
    pub processes_live: u64,
    pub threads_live: u64,
    pub threads_created: u64,
    pub threads_exited: u64,
    /// The most live threads at one sample (sampled: a burst between two samples is missed),
    /// and never less than its busiest process's peak.
    pub threads_peak: u64,
    pub futex_parked_now: u64,
    pub futex_parked_peak: u64,
    pub poll_waiting_now: u64,
    pub rss_bytes: u64,
    /// The highest RSS of the job at one sample (and never less than its biggest process's).
    pub rss_peak_bytes: u64,
    pub oom_kills: u64,
    /// Some of its processes' events were lost: counts are lower bounds.
    pub events_lost: bool,
    /// Its memory and live threads over time (see `model::series`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Series>,
    /// Threads parked in futex longer than the long-park threshold, over its live processes.
    pub long_parked_count: u64,
    /// Its processes' creating sites added up by site, busiest first (at most
    /// `model::TOP_SITES`); `stacks_sampled` as for a process.
    pub creator_sites: Vec<CreatorSite>,
    pub stacks_sampled: bool,
}

/// The highest totals of a job seen at a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct JobPeaks {
    threads: u64,
    futex_parked: u64,
    rss: u64,
}

impl Model {
    /// Totals per job of the live processes now: updates each job's peaks. Called at every
    /// sample, after the wait snapshot.
    pub(super) fn sample_jobs(&mut self, ts: u64) {
        let mut now: HashMap<String, JobPeaks> = HashMap::new();
        for p in self.procs.values() {
            let name = self.job_of(p.sum.cgroup_id, p.sum.memcg_id).name();
            let t = now.entry(name).or_default();
            t.threads += u64::from(p.sum.threads_live);
            t.futex_parked += u64::from(p.sum.futex_parked_now);
            t.rss += p.sum.rss_bytes;
        }
        for (name, t) in now {
            let peak = self.job_peaks.entry(name).or_default();
            peak.threads = peak.threads.max(t.threads);
            peak.futex_parked = peak.futex_parked.max(t.futex_parked);
            peak.rss = peak.rss.max(t.rss);
        }
        self.sample_series(ts);
    }

    /// A point of each active process's (or one whose RSS moved) and each job's series, when
    /// one is due.
    fn sample_series(&mut self, ts: u64) {
        let (fine, coarse) = self.series.due(ts);
        if !(fine || coarse) {
            return;
        }
        let t_s = (ts.saturating_sub(self.start_ns) / 1_000_000_000) as u32;
        let mut jobs: HashMap<String, Point> = HashMap::new();
        let mut points = Vec::new();
        for p in self.procs.values() {
            // RSS that moved counts: memory touched in mappings made before tracing started
            // grows without a traced call.
            if !(p.sum.active() || p.rss_streamed != 0) {
                continue;
            }
            let s = &p.sum;
            let mapped = (s.mmap_bytes + s.mremap_grow_bytes)
                .saturating_sub(s.munmap_bytes + s.mremap_shrink_bytes);
            let heap = s.heap_bytes;
            let pt = Point {
                t_s,
                rss_kib: kib(s.rss_bytes),
                mapped_kib: kib(mapped),
                heap_kib: kib(heap),
                threads: s.threads_live,
            };
            points.push(((s.pid, s.first_seen_ns), pt));
            let j = jobs
                .entry(self.job_of(s.cgroup_id, s.memcg_id).name())
                .or_insert(Point {
                    t_s,
                    ..Default::default()
                });
            j.rss_kib = j.rss_kib.saturating_add(pt.rss_kib);
            j.mapped_kib = j.mapped_kib.saturating_add(pt.mapped_kib);
            j.heap_kib = j.heap_kib.saturating_add(pt.heap_kib);
            j.threads = j.threads.saturating_add(pt.threads);
        }
        for (key, pt) in points {
            self.series.add_proc(key, pt, fine, coarse);
        }
        for (job, pt) in jobs {
            self.series.add_job(&job, pt, fine, coarse);
        }
    }

    /// Forgets the peaks of jobs no kept process is in (at compaction).
    pub(super) fn compact_jobs(&mut self) {
        let in_use: std::collections::HashSet<String> = self
            .procs
            .values()
            .map(|p| &p.sum)
            .chain(self.finished.iter())
            .map(|s| self.job_of(s.cgroup_id, s.memcg_id).name())
            .collect();
        self.job_peaks.retain(|name, _| in_use.contains(name));
        self.series.retain_jobs(&in_use);
    }

    /// One summary per job of the processes in `summaries`, by name.
    pub fn jobs(&self, summaries: &[ProcessSummary]) -> Vec<JobSummary> {
        let mut by: BTreeMap<&str, JobSummary> = BTreeMap::new();
        for s in summaries {
            let j = by.entry(&s.job).or_insert_with(|| JobSummary {
                job: s.job.clone(),
                job_info: s.job_info.clone(),
                ..Default::default()
            });
            if j.pids.len() < MAX_LISTED_PIDS {
                j.pids.push(s.pid);
            }
            j.processes += 1;
            let live = s.exited_ns.is_none();
            j.processes_live += u64::from(live);
            j.threads_live += u64::from(s.threads_live);
            j.threads_created += s.threads_created;
            j.threads_exited += s.threads_exited;
            j.threads_peak = j.threads_peak.max(u64::from(s.threads_peak));
            j.futex_parked_now += u64::from(s.futex_parked_now);
            j.futex_parked_peak = j.futex_parked_peak.max(u64::from(s.futex_parked_peak));
            j.poll_waiting_now += u64::from(s.poll_waiting_now);
            j.rss_bytes += if live { s.rss_bytes } else { 0 };
            j.rss_peak_bytes = j.rss_peak_bytes.max(s.rss_peak_bytes);
            j.oom_kills += u64::from(s.oom_killed);
            j.events_lost |= s.events_lost;
            j.long_parked_count += s.long_parked_count;
            j.stacks_sampled |= s.stacks_sampled;
            for c in &s.creator_sites {
                match j.creator_sites.iter_mut().find(|x| x.site == c.site) {
                    Some(x) => {
                        x.threads += c.threads;
                        x.alive += c.alive;
                        x.parked += c.parked;
                    }
                    None => j.creator_sites.push(c.clone()),
                }
            }
        }
        by.into_values()
            .map(|mut j| {
                j.creator_sites
                    .sort_by(|a, b| b.threads.cmp(&a.threads).then_with(|| a.site.cmp(&b.site)));
                j.creator_sites.truncate(TOP_SITES);
                j.series = self.series.jobs.get(&j.job).cloned();
                if let Some(p) = self.job_peaks.get(&j.job) {
                    j.threads_peak = j.threads_peak.max(p.threads);
                    j.futex_parked_peak = j.futex_parked_peak.max(p.futex_parked);
                    j.rss_peak_bytes = j.rss_peak_bytes.max(p.rss);
                }
                j
            })
            .collect()
    }
}
