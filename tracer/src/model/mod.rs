//! The live model: host → process → thread, fed by decoded events and collector records.
//!
//! The same code runs live (in `record`) and offline (in `report`), so a file reads back to the
//! numbers the live collector saw. Live processes and threads are kept in hash maps and removed
//! when they exit; an exited process leaves only its fixed-size [`ProcessSummary`], and at most
//! `max_finished` of those are kept (the count of dropped ones is reported).

use std::collections::{HashMap, VecDeque};

pub mod census;
pub mod jobs;
pub mod series;
pub mod sites;
pub mod thread;

pub use census::{HistBucket, WaitingThread};
pub use jobs::JobSummary;
pub use sites::CreatorSite;
pub use thread::{Creator, Thread};

use serde::Serialize;
use tracer_common::{
    CLONE_THREAD, EventHeader, GROUP_DEAD_UNKNOWN, GROUP_DEAD_YES, RSS_ANON, RSS_FILE, RSS_MEMBERS,
    RSS_SHMEM, RSS_SWAP,
};

use crate::{
    cgroups::{CgroupKey, Hierarchy, JobInfo, job},
    events::{Event, cstr},
    tracefile::{ProcessSeed, StackRecord, WaitAggregate},
};

/// Creating sites listed per process (the busiest).
pub const TOP_SITES: usize = 5;

/// What the report says about one process: all counters are over the traced interval.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ProcessSummary {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    /// The last program exec'd during the trace, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The job the process is in (see `cgroups::job`), from the more telling of its two
    /// cgroups (v2, and on hybrid/v1 hosts the v1 memory cgroup).
    pub job: String,
    pub job_info: JobInfo,
    /// The cgroup path (cgroup v2), or `cgroup:<id>` when the path is unknown.
    pub cgroup: String,
    pub cgroup_id: u64,
    /// The v1 memory cgroup (low 32 bits of its id; 0: none) and its path.
    #[serde(skip_serializing_if = "is_zero")]
    pub memcg_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cgroup: Option<String>,
    /// Existed before tracing started.
    pub seeded: bool,
    pub first_seen_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exited_ns: Option<u64>,
    /// The code passed to exit/exit_group, when the process exited that way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The process ended without calling exit/exit_group: killed by a signal.
    pub killed: bool,
    /// The signal that killed it, when the kernel told (`task->exit_code`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub threads_live: u32,
    pub threads_created: u64,
    pub threads_exited: u64,
    pub threads_peak: u32,
    pub children_created: u64,
    pub execs: u64,
    pub futex_parked_now: u32,
    pub futex_parked_peak: u32,
    pub futex_park_max_ns: u64,
    pub futex_waits: u64,
    pub poll_waiting_now: u32,
    pub poll_waits: u64,
    pub poll_wait_max_ns: u64,
    pub mmap_calls: u64,
    pub mmap_bytes: u64,
    pub munmap_bytes: u64,
    pub mremap_grow_bytes: u64,
    pub mremap_shrink_bytes: u64,
    pub brk_growth_bytes: u64,
    pub brk_shrink_bytes: u64,
    pub rss_bytes: u64,
    pub rss_peak_bytes: u64,
    /// RSS by kind: anonymous pages (heap, anonymous mmap, stacks) and file-backed and shared
    /// pages.
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    /// The brk heap's size now (break minus heap start), when both are known; else 0.
    pub heap_bytes: u64,
    /// Events were lost in the kernel while this process was traced: its counts are lower
    /// bounds, its live threads were re-read from /proc, and its thread peak is the one from
    /// before the loss (or the re-read count).
    pub events_lost: bool,
    /// Where its threads were created, busiest first (at most [`TOP_SITES`]).
    pub creator_sites: Vec<CreatorSite>,
    /// Creations of its threads whose creator stack was recorded.
    pub creation_stacks: u64,
    /// Not every creation had its stack recorded (the per-process stack budget): the site
    /// counts come from samples; `threads_created` is still exact.
    pub stacks_sampled: bool,
    /// For a process created during the trace: the site (in its parent) that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Threads parked in futex longer than the long-park threshold at the last sample: how
    /// many, the shortest of those parks, the site most of them came from, and the oldest
    /// (at most `census::MAX_LISTED`).
    pub long_parked_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_parked_min_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub long_parked_site: Option<String>,
    pub long_parked: Vec<WaitingThread>,
    /// Threads waiting in poll/select/epoll at the last sample, oldest first (at most
    /// `census::MAX_LISTED`; `poll_waiting_now` counts all).
    pub poll_waiters: Vec<WaitingThread>,
    /// Completed futex parks (those the kernel streamed: at least `--min-wait-ms`) by
    /// duration, log2 buckets.
    pub park_histogram: Vec<HistBucket>,
    /// Its live threads at the last sample, oldest first (at most
    /// `census::MAX_THREADS_LISTED`; empty once it exited).
    pub threads: Vec<census::ThreadSummary>,
    /// Its memory and live threads over time, while it had activity (see `series`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<series::Series>,
}

impl ProcessSummary {
    /// Whether the process did anything this tracer follows.
    pub fn active(&self) -> bool {
        self.threads_created + self.futex_waits + self.poll_waits + self.mmap_calls > 0
            || self.brk_growth_bytes > 0
            || self.futex_parked_peak + self.poll_waiting_now > 0
            || self.oom_killed
    }

    /// Sort key, busiest first: thread creation, then parked threads, then memory growth.
    pub fn busiest_first(&self) -> std::cmp::Reverse<(u64, u32, u64)> {
        std::cmp::Reverse((
            self.threads_created,
            self.futex_parked_peak,
            self.mmap_bytes + self.brk_growth_bytes,
        ))
    }
}

#[derive(Debug, Default)]
struct Process {
    sum: ProcessSummary,
    /// Live threads by tid.
    threads: HashMap<u32, Thread>,
    /// The last known break, and the heap start it belongs to (a new one: a new program).
    brk: Option<u64>,
    brk_start: Option<u64>,
    rss: [i64; RSS_MEMBERS],
    /// Members (bit per `RSS_*`) that a kernel event set since the program started (the RSS
    /// moved while traced): a read of /proc leaves them as they are.
    rss_streamed: u8,
    /// Whether every member has a value: seeded, or read from /proc (see
    /// [`Model::rss_unread`]). The kernel streams moves of a granule only, so without this a
    /// process that forked (the copied counters are charged to the parent's task) or stays
    /// below a granule shows no RSS.
    rss_baseline: bool,
    exit_called: bool,
    /// `threads_peak` at the last sample: what a loss rolls back to (the peak since may count
    /// threads whose exits were lost).
    peak_checkpoint: u32,
    /// Thread creations per site (sampled: only those whose stack was recorded).
    site_births: HashMap<u32, u64>,
    /// Completed futex parks by log2 duration.
    park_hist: [u64; census::HIST_BUCKETS],
    /// Set when a task exit said no other task of the group is live: the process ends when
    /// its last known thread has exited, or (exits lost) at the first sample after
    /// [`DYING_GRACE_NS`].
    dying_since: Option<u64>,
    /// Set when the process began to end: a thread called `exit_group`, died of a (fatal,
    /// so group-wide) signal, or was the last of its group. Its threads are being torn down:
    /// they wake and exit one by one, which is not what the process did while it ran.
    ending_since: Option<u64>,
}

/// How long a dying process may wait for the exits of threads the model still counts.
pub const DYING_GRACE_NS: u64 = 500_000_000;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Process {
    /// The cgroups of an event the process itself caused: a process moved to another cgroup
    /// after its fork (runc, systemd) follows. 0 is "not in this event".
    fn follow_cgroups(&mut self, h: &EventHeader) {
        if h.cgroup_id != 0 {
            self.sum.cgroup_id = h.cgroup_id;
        }
        if h.memcg != 0 {
            self.sum.memcg_id = u64::from(h.memcg);
        }
    }

    fn new(pid: u32, ts: u64) -> Self {
        let mut p = Process::default();
        p.sum.pid = pid;
        p.sum.first_seen_ns = ts;
        p.threads.insert(pid, Thread::new(pid, ts));
        p.sum.threads_live = 1;
        p.sum.threads_peak = 1;
        p
    }

    /// Adds a live thread; false if it was already known (then it is left as it was).
    fn add_thread(&mut self, t: Thread) -> bool {
        let new = match self.threads.entry(t.tid) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(t);
                true
            }
        };
        self.sum.threads_live = self.threads.len() as u32;
        self.sum.threads_peak = self.sum.threads_peak.max(self.sum.threads_live);
        new
    }

    fn set_rss(&mut self, member: usize, bytes: i64) {
        self.rss[member] = bytes;
        self.rss_streamed |= 1 << member;
        self.sum_rss();
    }

    /// A reading of `statm` (resident and shared bytes; shared = file + shmem) fills the
    /// members no kernel event has set since the program started.
    fn set_rss_baseline(&mut self, resident: u64, shared: u64) {
        let streamed = |m: u32| self.rss_streamed & (1 << m) != 0;
        let shared = shared.min(resident) as i64;
        if !streamed(RSS_ANON) {
            self.rss[RSS_ANON as usize] = resident as i64 - shared;
        }
        match (streamed(RSS_FILE), streamed(RSS_SHMEM)) {
            (false, false) => {
                self.rss[RSS_FILE as usize] = shared;
                self.rss[RSS_SHMEM as usize] = 0;
            }
            (true, false) => {
                self.rss[RSS_SHMEM as usize] = (shared - self.rss[RSS_FILE as usize]).max(0);
            }
            (false, true) => {
                self.rss[RSS_FILE as usize] = (shared - self.rss[RSS_SHMEM as usize]).max(0);
            }
            (true, true) => {}
        }
        // Not `rss_streamed`: that says the RSS moved while traced (see `sample_series`).
        self.rss_baseline = true;
        self.sum_rss();
    }

    fn sum_rss(&mut self) {
        // RSS is file + anon + shmem; swap entries are not resident.
        let total: i64 = (0..RSS_MEMBERS)
            .filter(|&m| m != RSS_SWAP as usize)
            .map(|m| self.rss[m].max(0))
            .sum();
        self.sum.rss_bytes = total as u64;
        self.sum.rss_peak_bytes = self.sum.rss_peak_bytes.max(self.sum.rss_bytes);
        self.sum.rss_anon_bytes = self.rss[RSS_ANON as usize].max(0) as u64;
        self.sum.rss_file_bytes =
            (self.rss[RSS_FILE as usize].max(0) + self.rss[RSS_SHMEM as usize].max(0)) as u64;
    }

    /// Keeps `heap_bytes` true after the break or its start changed.
    fn update_heap(&mut self) {
        self.sum.heap_bytes = match (self.brk, self.brk_start) {
            (Some(b), Some(start)) => b.saturating_sub(start),
            _ => 0,
        };
    }
}

/// Host-wide counters that belong to no process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HostCounters {
    pub events: u64,
    pub oom_kills: u64,
    /// Events that could not be decoded (corrupt file, newer writer).
    pub undecodable: u64,
}

pub struct Model {
    procs: HashMap<u32, Process>,
    finished: VecDeque<ProcessSummary>,
    /// pid → sequence number of its latest finished summary (`finished[seq - finished_base]`),
    /// for events that arrive after the exit (batches flushed from another CPU).
    finished_by_pid: HashMap<u32, u64>,
    finished_base: u64,
    max_finished: usize,
    pub finished_dropped: u64,
    /// Limits of cgroups (only those that set one).
    limits: HashMap<CgroupKey, crate::cgroups::Limits>,
    /// Creator stacks seen, interned.
    pub sites: sites::Sites,
    /// Paths and jobs of the cgroups kept processes are in.
    cgroups: HashMap<CgroupKey, (String, JobInfo)>,
    /// mm_id → pid, learned from rss_stat events in the owning process.
    mm_owner: HashMap<u32, u32>,
    pub host: HostCounters,
    /// Per job name: the highest totals seen at a sample (see `jobs`).
    job_peaks: HashMap<String, jobs::JobPeaks>,
    pub last_ts: u64,
    /// When tracing started (series times are relative to it).
    pub start_ns: u64,
    /// Memory and threads over time, per process and job.
    pub series: series::SeriesBook,
    /// The time of the last wait snapshot (the census's "now").
    pub last_sample_ns: u64,
    /// Parks at least this long are listed as long (see `census`).
    pub long_park_ns: u64,
    pub min_wait_ns: u64,
    /// Pids of processes that ended since the last [`Model::take_ended`], when
    /// `track_ended` is set (the live collector's filter: their kernel-side entry goes).
    ended: Vec<u32>,
    pub track_ended: bool,
}

impl Model {
    pub fn new(max_finished: usize) -> Self {
        Self {
            procs: HashMap::new(),
            finished: VecDeque::new(),
            finished_by_pid: HashMap::new(),
            finished_base: 0,
            max_finished,
            finished_dropped: 0,
            cgroups: HashMap::new(),
            sites: sites::Sites::default(),
            limits: HashMap::new(),
            mm_owner: HashMap::new(),
            host: HostCounters::default(),
            job_peaks: HashMap::new(),
            last_ts: 0,
            last_sample_ns: 0,
            start_ns: 0,
            series: series::SeriesBook::default(),
            long_park_ns: census::LONG_PARK_NS,
            min_wait_ns: 0,
            ended: Vec::new(),
            track_ended: false,
        }
    }

    /// The pids that ended since the last call (see `track_ended`).
    pub fn take_ended(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.ended)
    }

    /// Summaries of ended processes kept (at most the model's `max_finished`).
    pub fn finished_len(&self) -> usize {
        self.finished.len()
    }

    /// The job of a process (without building its whole summary).
    pub fn job_info(&self, s: &ProcessSummary) -> JobInfo {
        self.job_of(s.cgroup_id, s.memcg_id)
    }

    pub fn live_processes(&self) -> usize {
        self.procs.len()
    }

    /// Every thread the model knows alive (seeded or created, not yet exited).
    pub fn live_tids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.values().flat_map(|p| p.threads.keys().copied())
    }

    /// The live processes as seeds, for a new trace file that must stand alone (rotation):
    /// what a /proc scan would have said now.
    pub fn checkpoint(&self, ts: u64) -> Vec<crate::tracefile::ProcessSeed> {
        let mut v: Vec<_> = self
            .procs
            .values()
            .map(|p| {
                let mut tids: Vec<u32> = p.threads.keys().copied().collect();
                tids.sort_unstable();
                crate::tracefile::ProcessSeed {
                    pid: p.sum.pid,
                    ppid: p.sum.ppid,
                    comm: p.sum.comm.clone(),
                    cgroup_id: p.sum.cgroup_id,
                    memcg_id: p.sum.memcg_id,
                    thread_names: tids
                        .iter()
                        .map(|t| p.threads[t].names.last().cloned().unwrap_or_default())
                        .collect(),
                    tids,
                    rss_bytes: p.sum.rss_bytes,
                    rss_shared_bytes: p.sum.rss_file_bytes,
                    brk: p.brk,
                    start_brk: p.brk_start,
                    seen_ns: ts,
                }
            })
            .collect();
        v.sort_by_key(|s| s.pid);
        v
    }

    /// Every cgroup resolved, with its limits, as records for a new trace file.
    pub fn cgroup_records(&self) -> Vec<crate::tracefile::Meta> {
        let mut v: Vec<_> = self
            .cgroups
            .iter()
            .map(|(k, (path, job))| crate::tracefile::Meta::Cgroup {
                id: k.id,
                path: path.clone(),
                hierarchy: k.hierarchy,
                job: Some(Box::new(job.clone())),
                limits: self.limits.get(k).copied().unwrap_or_default(),
            })
            .collect();
        v.sort_by_key(|m| match m {
            crate::tracefile::Meta::Cgroup { id, .. } => *id,
            _ => 0,
        });
        v
    }

    /// Live threads blocked in a wait at the last sample: (pid, tid, futex (else poll), since).
    pub fn blocked_threads(&self) -> Vec<(u32, u32, bool, u64)> {
        let mut v = Vec::new();
        for (&pid, p) in &self.procs {
            for (&tid, t) in &p.threads {
                if let Some(s) = t.futex_since {
                    v.push((pid, tid, true, s));
                } else if let Some(s) = t.poll_since {
                    v.push((pid, tid, false, s));
                }
            }
        }
        v.sort_unstable();
        v
    }

    pub fn live_threads(&self) -> usize {
        self.procs.values().map(|p| p.threads.len()).sum()
    }

    /// A cgroup's path and job (classified from the path when the record has none: older
    /// files).
    pub fn set_cgroup(&mut self, key: CgroupKey, path: String, job: Option<JobInfo>) {
        let job = job.unwrap_or_else(|| job::classify(&path));
        self.cgroups.insert(key, (path, job));
    }

    /// A cgroup's limits, as read when it was resolved or re-read since (none: forgotten).
    pub fn set_limits(&mut self, key: CgroupKey, limits: crate::cgroups::Limits) {
        if limits != Default::default() {
            self.limits.insert(key, limits);
        } else {
            self.limits.remove(&key);
        }
    }

    /// The limits of a cgroup, if it sets any.
    pub fn limits(&self, key: CgroupKey) -> Option<&crate::cgroups::Limits> {
        self.limits.get(&key)
    }

    /// The path of a cgroup, if resolved.
    pub fn cgroup_path(&self, key: CgroupKey) -> Option<&str> {
        self.cgroups.get(&key).map(|c| c.0.as_str())
    }

    /// The cgroup whose `limit` applies to a process, and the limit: its v1 memory cgroup's
    /// (on v1 and hybrid hosts), else its v2 cgroup's.
    pub fn limit_over(
        &self,
        s: &ProcessSummary,
        limit: impl Fn(&crate::cgroups::Limits) -> Option<u64>,
    ) -> Option<(CgroupKey, u64)> {
        [
            (Hierarchy::Memory, s.memcg_id),
            (Hierarchy::V2, s.cgroup_id),
        ]
        .into_iter()
        .filter(|(_, id)| *id != 0)
        .find_map(|(hierarchy, id)| {
            let key = CgroupKey { hierarchy, id };
            self.limits.get(&key).and_then(&limit).map(|l| (key, l))
        })
    }

    /// The keys of the resolved cgroups that live processes are in (whose limits the
    /// collector re-reads).
    pub fn live_cgroups(&self) -> Vec<(CgroupKey, String)> {
        let mut keys: Vec<CgroupKey> = self
            .procs
            .values()
            .flat_map(|p| {
                [
                    CgroupKey {
                        hierarchy: Hierarchy::V2,
                        id: p.sum.cgroup_id,
                    },
                    CgroupKey {
                        hierarchy: Hierarchy::Memory,
                        id: p.sum.memcg_id,
                    },
                ]
            })
            .filter(|k| k.id != 0)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| self.cgroups.get(&k).map(|c| (k, c.0.clone())))
            .collect()
    }

    /// The memory limit over a process: of its v1 memory cgroup, else its v2 cgroup.
    pub fn memory_limit(&self, s: &ProcessSummary) -> Option<u64> {
        self.limit_over(s, |l| l.memory_max).map(|l| l.1)
    }

    /// The job name of a process (without building its whole summary).
    pub fn job_name(&self, s: &ProcessSummary) -> String {
        self.job_of(s.cgroup_id, s.memcg_id).name()
    }

    /// The raw counters of the live processes (no names filled in: see [`Model::job_name`]).
    pub fn live_raw(&self) -> impl Iterator<Item = &ProcessSummary> {
        self.procs.values().map(|p| &p.sum)
    }

    /// The live process `pid`, if it is the one first seen at `born` (not a reuse of its pid).
    /// When a live process began to end (see `Process::ending_since`); None while it runs.
    pub fn ending_since(&self, pid: u32, born: u64) -> Option<u64> {
        self.procs
            .get(&pid)
            .filter(|p| p.sum.first_seen_ns == born)
            .and_then(|p| p.ending_since)
    }

    pub fn live_process(&self, pid: u32, born: u64) -> Option<&ProcessSummary> {
        self.procs
            .get(&pid)
            .map(|p| &p.sum)
            .filter(|s| s.first_seen_ns == born)
    }

    /// The summaries of processes that ended since sequence number `seq` (0: all kept), and the
    /// sequence number to ask from next time.
    pub fn finished_since(&self, seq: u64) -> (u64, Vec<&ProcessSummary>) {
        let next = self.finished_base + self.finished.len() as u64;
        let skip = seq.saturating_sub(self.finished_base) as usize;
        (next, self.finished.iter().skip(skip).collect())
    }

    /// The last summary of a process that ended (the newest one of that pid).
    pub fn finished_raw(&self, pid: u32) -> Option<&ProcessSummary> {
        let seq = *self.finished_by_pid.get(&pid)?;
        self.finished.get((seq - self.finished_base) as usize)
    }

    /// Of the live threads of `pid` born at or after `since`: how many, how long each of the
    /// parked ones has been parked at the last sample, and how many wait in poll.
    pub fn threads_born_since(&self, pid: u32, since: u64) -> (u64, Vec<u64>, u64) {
        let Some(p) = self.procs.get(&pid) else {
            return (0, Vec::new(), 0);
        };
        let mut n = 0;
        let mut parks = Vec::new();
        let mut polls = 0;
        for t in p.threads.values().filter(|t| t.born_ns >= since) {
            n += 1;
            if let Some(s) = t.futex_since {
                parks.push(self.last_sample_ns.saturating_sub(s));
            }
            polls += u64::from(t.poll_since.is_some());
        }
        (n, parks, polls)
    }

    pub fn cgroup_known(&self, key: CgroupKey) -> bool {
        self.cgroups.contains_key(&key)
    }

    fn cgroup(&self, hierarchy: Hierarchy, id: u64) -> Option<&(String, JobInfo)> {
        self.cgroups.get(&CgroupKey { hierarchy, id })
    }

    /// The job of a process in these cgroups: the more telling of the two (ties: v2's).
    fn job_of(&self, cgroup_id: u64, memcg_id: u64) -> JobInfo {
        let v2 = self.cgroup(Hierarchy::V2, cgroup_id).map(|c| &c.1);
        let mem = (memcg_id != 0)
            .then(|| self.cgroup(Hierarchy::Memory, memcg_id).map(|c| &c.1))
            .flatten();
        match (v2, mem) {
            (Some(a), Some(b)) => if b.rank() > a.rank() { b } else { a }.clone(),
            (Some(j), None) | (None, Some(j)) => j.clone(),
            (None, None) => JobInfo {
                kind: "cgroup".into(),
                cgroup: format!("id:{cgroup_id}"),
                ..Default::default()
            },
        }
    }

    pub fn seed(&mut self, s: &ProcessSeed, ts: u64) {
        let ts = if s.seen_ns != 0 { s.seen_ns } else { ts };
        let mut p = Process::new(s.pid, ts);
        p.sum.ppid = s.ppid;
        p.sum.comm = s.comm.clone();
        p.sum.cgroup_id = s.cgroup_id;
        p.sum.memcg_id = s.memcg_id;
        p.sum.seeded = true;
        for &tid in &s.tids {
            p.add_thread(Thread::new(tid, ts));
        }
        for (tid, name) in s.tids.iter().zip(&s.thread_names) {
            if let Some(t) = p.threads.get_mut(tid) {
                t.rename(name.clone());
            }
        }
        if let Some(main) = p.threads.get_mut(&s.pid) {
            main.rename(s.comm.clone());
        }
        p.brk = s.brk;
        p.brk_start = s.start_brk;
        p.update_heap();
        p.set_rss_baseline(s.rss_bytes, s.rss_shared_bytes);
        self.replace(s.pid, p, ts);
    }

    /// Puts `p` in the model, finishing any older process that held the pid (pid reuse whose
    /// exit was lost).
    fn replace(&mut self, pid: u32, p: Process, ts: u64) {
        if let Some(old) = self.procs.insert(pid, p) {
            self.finish(old, ts);
        }
    }

    fn finish(&mut self, mut p: Process, ts: u64) {
        self.series.ended((p.sum.pid, p.sum.first_seen_ns));
        p.sum.creator_sites = self.creator_sites(&p);
        let mut sum = std::mem::take(&mut p.sum);
        self.census(&p, &mut sum);
        p.sum = sum;
        // Nothing is parked in an ended process.
        p.sum.long_parked_count = 0;
        p.sum.long_parked.clear();
        p.sum.poll_waiters.clear();
        p.sum.threads.clear();
        if self.track_ended {
            self.ended.push(p.sum.pid);
        }
        p.sum.exited_ns.get_or_insert(ts);
        p.sum.threads_live = 0;
        p.sum.futex_parked_now = 0;
        p.sum.poll_waiting_now = 0;
        p.sum.killed = !p.exit_called;
        if self.finished.len() >= self.max_finished
            && let Some(old) = self.finished.pop_front()
        {
            if self.finished_by_pid.get(&old.pid) == Some(&self.finished_base) {
                self.finished_by_pid.remove(&old.pid);
            }
            self.finished_base += 1;
            self.finished_dropped += 1;
        }
        let seq = self.finished_base + self.finished.len() as u64;
        self.finished_by_pid.insert(p.sum.pid, seq);
        self.finished.push_back(p.sum);
    }

    /// The summary a late event of `pid` that started at `since_ns` belongs to: the live
    /// process if it was born before, else the last finished process of that pid.
    fn summary_for_late(&mut self, pid: u32, since_ns: u64) -> Option<&mut ProcessSummary> {
        if self
            .procs
            .get(&pid)
            .is_some_and(|p| p.sum.first_seen_ns <= since_ns)
        {
            return self.procs.get_mut(&pid).map(|p| &mut p.sum);
        }
        let seq = *self.finished_by_pid.get(&pid)?;
        self.finished.get_mut((seq - self.finished_base) as usize)
    }

    /// The process of `pid`, created on first sight (a process that started before tracing
    /// and was not seeded, or whose birth fell outside the filter). `cgroup_id` is that of an
    /// event the process itself caused: a process moved to another cgroup after its fork
    /// (runc, systemd) follows.
    fn proc_mut(&mut self, pid: u32, h: &EventHeader, ts: u64) -> &mut Process {
        let p = self
            .procs
            .entry(pid)
            .or_insert_with(|| Process::new(pid, ts));
        p.follow_cgroups(h);
        p
    }

    pub fn apply(&mut self, ev: &Event) {
        let h = *ev.header();
        self.host.events += 1;
        self.last_ts = self.last_ts.max(h.ts_ns);
        let ts = h.ts_ns;
        match ev {
            Event::NewTask(e) => {
                // The event's comm is the creator's: a rename (prctl) of a main thread shows here.
                if h.tid == h.tgid {
                    let comm = cstr(&e.comm);
                    if let Some(p) = self.procs.get_mut(&h.tgid) {
                        p.sum.comm = comm;
                    }
                }
                if e.clone_flags & CLONE_THREAD != 0 {
                    let p = self.proc_mut(e.child_tgid, &h, ts);
                    let comm = cstr(&e.comm);
                    let mut t = Thread::new(e.child_tid, ts);
                    // A new thread starts with its creator's name.
                    t.rename(comm.clone());
                    t.creator = Some(Creator { tid: h.tid, comm });
                    // Already known: found in /proc (at the start, or re-read after a loss)
                    // before its creation event was drained, and counted then.
                    if p.add_thread(t) {
                        p.sum.threads_created += 1;
                    }
                } else {
                    let (ppid, comm, brk) = {
                        let parent = self.proc_mut(h.tgid, &h, ts);
                        parent.sum.children_created += 1;
                        (h.tgid, cstr(&e.comm), (parent.brk, parent.brk_start))
                    };
                    // The programs run before the /proc scan: the birth of a process the scan
                    // then found is that process's, not a reuse of its pid.
                    if let Some(seeded) = self.procs.get_mut(&e.child_tgid)
                        && seeded.sum.seeded
                        && ts <= seeded.sum.first_seen_ns
                    {
                        seeded.sum.ppid = ppid;
                        return;
                    }
                    let mut child = Process::new(e.child_tgid, ts);
                    child.sum.ppid = ppid;
                    child.sum.comm = comm;
                    child.follow_cgroups(&h);
                    // fork copies the address space, break included.
                    (child.brk, child.brk_start) = brk;
                    self.replace(e.child_tgid, child, ts);
                }
            }
            Event::TaskExit(e) => {
                let Some(p) = self.procs.get_mut(&h.tgid) else {
                    return;
                };
                if h.tid == h.tgid {
                    p.sum.comm = cstr(&e.comm);
                }
                p.follow_cgroups(&h);
                // Only a thread the model knew (created or seeded): after lost events, exits
                // never outnumber what was seen alive.
                if p.threads.remove(&h.tid).is_some() && h.tid != h.tgid {
                    p.sum.threads_exited += 1;
                }
                p.sum.threads_live = p.threads.len() as u32;
                // A death by signal is the whole group's (fatal signals kill the group; the
                // threads an exit_group or exec kills exit with the group's code or 0).
                let by_signal = e.exit_code > 0 && e.exit_code & 0x7f != 0;
                if e.group_dead == GROUP_DEAD_YES || by_signal {
                    p.ending_since.get_or_insert(ts);
                }
                if e.group_dead == GROUP_DEAD_YES && p.dying_since.is_none() {
                    p.dying_since = Some(ts);
                    // Wait-status form: low 7 bits the signal, else the code in bits 8-15.
                    if e.exit_code >= 0 {
                        let sig = e.exit_code & 0x7f;
                        if sig != 0 {
                            p.sum.signal = Some(sig);
                            p.exit_called = false;
                        } else {
                            p.sum.exit_code = Some((e.exit_code >> 8) & 0xff);
                            p.exit_called = true;
                        }
                    }
                }
                let last = p.threads.is_empty();
                if last && (p.dying_since.is_some() || e.group_dead == GROUP_DEAD_UNKNOWN) {
                    let p = self.procs.remove(&h.tgid).expect("present");
                    self.finish(p, ts);
                }
            }
            Event::Exec(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                p.sum.exe = Some(cstr(&e.filename));
                p.sum.execs += 1;
                // An exec from before the /proc scan: the seed already shows what came after
                // it (names, threads, memory).
                if p.sum.seeded && ts <= p.sum.first_seen_ns {
                    return;
                }
                p.sum.comm = cstr(&e.comm);
                // exec leaves one thread, under the tgid; others were killed (their exits came
                // as events), and a non-leader that exec'd took over the leader's id.
                p.threads.retain(|&tid, _| tid == h.tgid);
                let main = p
                    .threads
                    .entry(h.tgid)
                    .or_insert_with(|| Thread::new(h.tgid, ts));
                main.rename(cstr(&e.comm));
                p.sum.threads_live = p.threads.len() as u32;
                // The killing of the other threads is over: the new program runs.
                p.ending_since = None;
                // A new program gets a new address space and break.
                p.brk = None;
                p.brk_start = None;
                p.update_heap();
                p.rss = [0; RSS_MEMBERS];
                p.rss_streamed = 0;
                p.rss_baseline = false;
                p.sum.rss_bytes = 0;
                p.sum.rss_peak_bytes = 0;
                p.sum.rss_anon_bytes = 0;
                p.sum.rss_file_bytes = 0;
            }
            Event::Rename(e) => {
                // A process's name is its main thread's. The header's cgroup is the renamer's,
                // which may be another process: only known processes are renamed.
                let Some(p) = self.procs.get_mut(&h.tgid) else {
                    return;
                };
                if p.sum.seeded && ts <= p.sum.first_seen_ns {
                    return;
                }
                let comm = cstr(&e.comm);
                if h.tid == h.tgid {
                    p.sum.comm = comm.clone();
                }
                if let Some(t) = p.threads.get_mut(&h.tid) {
                    t.rename(comm);
                }
            }
            Event::ExitCall(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                if e.group != 0 || h.tid == h.tgid {
                    p.exit_called = true;
                    p.sum.exit_code = Some(e.code);
                }
                if e.group != 0 {
                    p.ending_since.get_or_insert(ts);
                }
            }
            Event::FutexWait(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                let d = ts.saturating_sub(e.start_ns);
                p.sum.futex_waits += 1;
                p.sum.futex_park_max_ns = p.sum.futex_park_max_ns.max(d);
                p.park_hist[census::bucket(d)] += 1;
                // A completed long park proves at least one thread was parked.
                p.sum.futex_parked_peak = p.sum.futex_parked_peak.max(1);
            }
            Event::PollWait(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                let d = ts.saturating_sub(e.start_ns);
                p.sum.poll_waits += 1;
                p.sum.poll_wait_max_ns = p.sum.poll_wait_max_ns.max(d);
            }
            Event::Mmap(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                p.sum.mmap_calls += 1;
                p.sum.mmap_bytes += page_round(e.len);
            }
            Event::Munmap(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                p.sum.munmap_bytes += page_round(e.len);
            }
            Event::Mremap(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                let (new, old) = (page_round(e.len), page_round(e.old_len));
                if new >= old {
                    p.sum.mremap_grow_bytes += new - old;
                } else {
                    p.sum.mremap_shrink_bytes += old - new;
                }
            }
            Event::Brk(e) => {
                let p = self.proc_mut(h.tgid, &h, ts);
                // Each event names its heap's start: another start is another program (its
                // exec may have been lost), whose heap grew from that start.
                let start = e.old_addr;
                if start != 0 && p.brk_start != Some(start) {
                    p.brk_start = Some(start);
                    p.brk = Some(start);
                }
                if let Some(prev) = p.brk {
                    if e.addr >= prev {
                        p.sum.brk_growth_bytes += e.addr - prev;
                    } else {
                        p.sum.brk_shrink_bytes += prev - e.addr;
                    }
                }
                p.brk = Some(e.addr);
                p.update_heap();
            }
            Event::Rss(e) => {
                let member = e.member as usize;
                if member >= RSS_MEMBERS {
                    return;
                }
                let pid = if e.curr != 0 {
                    self.mm_owner.insert(e.mm_id, h.tgid);
                    Some(h.tgid)
                } else {
                    self.mm_owner.get(&e.mm_id).copied()
                };
                if let Some(p) = pid.and_then(|pid| self.procs.get_mut(&pid)) {
                    p.set_rss(member, e.size);
                    // Its own fault: the header's cgroups are the process's.
                    if e.curr != 0 {
                        p.follow_cgroups(&h);
                    }
                } else if e.curr != 0 {
                    self.proc_mut(h.tgid, &h, ts).set_rss(member, e.size);
                }
            }
            Event::MemBatch(e) => {
                if !self.procs.contains_key(&h.tgid) && !self.finished_by_pid.contains_key(&h.tgid)
                {
                    self.proc_mut(h.tgid, &h, e.first_ns);
                }
                if let Some(s) = self.summary_for_late(h.tgid, e.first_ns) {
                    s.mmap_calls += e.mmap_calls as u64;
                    s.mmap_bytes += e.mmap_bytes;
                    s.munmap_bytes += e.munmap_bytes;
                }
            }
            // Creator stacks reach the model unwound, as collector records.
            Event::Stack(_) => {}
            Event::Oom(e) => {
                self.host.oom_kills += 1;
                if let Some(p) = self.procs.get_mut(&e.victim_pid) {
                    p.sum.oom_killed = true;
                    // The victim ran out of memory itself (the usual case): its cgroups are
                    // the header's.
                    if h.tgid == e.victim_pid {
                        p.follow_cgroups(&h);
                    }
                }
            }
        }
    }

    /// After lost events: the live threads of `pid`, re-read from `/proc/<pid>/task` (empty:
    /// the process is gone, its exit lost). Its live set becomes that; its peak is rolled back
    /// to the last sample's (or this count, if higher), since the peak since then may count
    /// threads whose exits were lost.
    pub fn reconcile(&mut self, pid: u32, tids: &[u32], ts: u64) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        p.sum.events_lost = true;
        if tids.is_empty() {
            let mut p = self.procs.remove(&pid).expect("present");
            // How it ended is unknown: neither an exit code nor a kill is claimed.
            p.exit_called = true;
            p.sum.exit_code = None;
            self.finish(p, ts);
            return;
        }
        // Threads alive now that the model did not know were created during the trace (the
        // scan at start listed every thread then): their creation was lost, not made up.
        let unseen = tids
            .iter()
            .filter(|&&t| t != pid && !p.threads.contains_key(&t))
            .count();
        p.sum.threads_created += unseen as u64;
        let mut kept = std::mem::take(&mut p.threads);
        p.threads = tids
            .iter()
            .map(|&t| (t, kept.remove(&t).unwrap_or_else(|| Thread::new(t, ts))))
            .collect();
        p.sum.threads_live = p.threads.len() as u32;
        p.sum.threads_peak = p.peak_checkpoint.max(p.sum.threads_live);
    }

    /// Pids of the live processes.
    pub fn live_pids(&self) -> Vec<u32> {
        self.procs.keys().copied().collect()
    }

    /// Up to `max` live processes whose resident memory has no baseline yet (started or
    /// exec'd since tracing began): the collector reads their `statm` and records it as
    /// [`Meta::Rss`](crate::tracefile::Meta::Rss), applied with [`Model::rss_read`].
    pub fn rss_unread(&self, max: usize) -> Vec<u32> {
        self.procs
            .iter()
            .filter(|(_, p)| !p.rss_baseline)
            .map(|(&pid, _)| pid)
            .take(max)
            .collect()
    }

    /// A live process's `statm` reading (see [`Model::rss_unread`]). None (it was gone when
    /// read) sets nothing, and it is not asked for again.
    pub fn rss_read(&mut self, pid: u32, statm: Option<(u64, u64)>) {
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        match statm {
            Some((resident, shared)) => p.set_rss_baseline(resident, shared),
            None => p.rss_baseline = true,
        }
    }

    /// Applies a snapshot of the threads blocked right now (taken at every sample), and ends
    /// the processes that have been dying for longer than [`DYING_GRACE_NS`]: the exits of
    /// threads they still count were lost.
    pub fn apply_waits(&mut self, ts: u64, waits: &[WaitAggregate]) {
        let overdue: Vec<u32> = self
            .procs
            .iter()
            .filter(|(_, p)| p.dying_since.is_some_and(|d| d + DYING_GRACE_NS < ts))
            .map(|(&pid, _)| pid)
            .collect();
        for pid in overdue {
            let p = self.procs.remove(&pid).expect("present");
            let at = p.dying_since.unwrap_or(ts);
            self.finish(p, at);
        }
        for p in self.procs.values_mut() {
            p.sum.futex_parked_now = 0;
            p.sum.poll_waiting_now = 0;
            p.peak_checkpoint = p.sum.threads_peak;
        }
        for w in waits {
            let Some(p) = self.procs.get_mut(&w.pid) else {
                continue;
            };
            p.sum.futex_parked_now = w.futex_parked;
            p.sum.futex_parked_peak = p.sum.futex_parked_peak.max(w.futex_parked);
            p.sum.poll_waiting_now = w.poll_waiting;
            if w.futex_oldest_ns != 0 {
                let d = ts.saturating_sub(w.futex_oldest_ns);
                p.sum.futex_park_max_ns = p.sum.futex_park_max_ns.max(d);
            }
            if w.poll_oldest_ns != 0 {
                let d = ts.saturating_sub(w.poll_oldest_ns);
                p.sum.poll_wait_max_ns = p.sum.poll_wait_max_ns.max(d);
            }
        }
        self.last_sample_ns = self.last_sample_ns.max(ts);
        self.sample_jobs(ts);
    }

    /// Forgets what only gone processes referred to: their mm ids, and the names of cgroups no
    /// kept process is in (a node that churns pods would otherwise collect them forever).
    /// Called at every sample.
    pub fn compact(&mut self) {
        let procs = &self.procs;
        self.mm_owner.retain(|_, pid| procs.contains_key(pid));
        let in_use: std::collections::HashSet<CgroupKey> = procs
            .values()
            .map(|p| &p.sum)
            .chain(self.finished.iter())
            .flat_map(|s| {
                [
                    CgroupKey {
                        hierarchy: Hierarchy::V2,
                        id: s.cgroup_id,
                    },
                    CgroupKey {
                        hierarchy: Hierarchy::Memory,
                        id: s.memcg_id,
                    },
                ]
            })
            .collect();
        self.cgroups.retain(|k, _| in_use.contains(k));
        self.limits.retain(|k, _| in_use.contains(k));
        self.compact_jobs();
    }

    /// Summaries of every process seen: exited ones first, in exit order, then live ones by pid.
    pub fn summaries(&self) -> Vec<ProcessSummary> {
        let mut live = self.live_summaries();
        live.sort_by_key(|s| s.pid);
        self.finished
            .iter()
            .map(|s| self.named(s))
            .chain(live)
            .map(|s| ProcessSummary {
                series: self.series.procs.get(&(s.pid, s.first_seen_ns)).cloned(),
                ..s
            })
            .collect()
    }

    /// Summaries of the live processes only (the live view; no exited ones copied).
    pub fn live_summaries(&self) -> Vec<ProcessSummary> {
        self.procs
            .values()
            .map(|p| {
                let mut s = ProcessSummary {
                    creator_sites: self.creator_sites(p),
                    ..self.named(&p.sum)
                };
                self.census(p, &mut s);
                s
            })
            .collect()
    }

    /// The whole summary of one live process (its sites, waiting threads and series): the
    /// live view's drill-down.
    pub fn live_summary(&self, pid: u32) -> Option<ProcessSummary> {
        let p = self.procs.get(&pid)?;
        let mut s = ProcessSummary {
            creator_sites: self.creator_sites(p),
            series: self.series.procs.get(&(pid, p.sum.first_seen_ns)).cloned(),
            ..self.named(&p.sum)
        };
        self.census(p, &mut s);
        Some(s)
    }

    fn named(&self, s: &ProcessSummary) -> ProcessSummary {
        let job_info = self.job_of(s.cgroup_id, s.memcg_id);
        ProcessSummary {
            job: job_info.name(),
            job_info,
            cgroup: self
                .cgroup(Hierarchy::V2, s.cgroup_id)
                .map_or_else(|| format!("cgroup:{}", s.cgroup_id), |c| c.0.clone()),
            memory_cgroup: (s.memcg_id != 0)
                .then(|| {
                    self.cgroup(Hierarchy::Memory, s.memcg_id)
                        .map(|c| c.0.clone())
                })
                .flatten(),
            stacks_sampled: s.creation_stacks < s.threads_created,
            // Filled by `summaries` only: the live view's rows do not need the copy.
            series: None,
            ..s.clone()
        }
    }

    /// The busiest creating sites of the live process `pid` (empty if it is not live).
    pub fn creator_sites_of(&self, pid: u32) -> Vec<CreatorSite> {
        self.procs
            .get(&pid)
            .map(|p| self.creator_sites(p))
            .unwrap_or_default()
    }

    /// The busiest creating sites of a live process, with how many of their threads live and
    /// are parked.
    fn creator_sites(&self, p: &Process) -> Vec<CreatorSite> {
        let mut alive: HashMap<u32, (u64, u64)> = HashMap::new();
        for t in p.threads.values() {
            if let Some(site) = t.site {
                let e = alive.entry(site).or_default();
                e.0 += 1;
                e.1 += u64::from(t.futex_since.is_some());
            }
        }
        let mut v: Vec<CreatorSite> = p
            .site_births
            .iter()
            .map(|(&site, &n)| {
                let (alive, parked) = alive.get(&site).copied().unwrap_or_default();
                CreatorSite {
                    site: self.sites.label(site),
                    frames: self.sites.frames(site),
                    threads: n,
                    alive,
                    parked,
                }
            })
            .collect();
        v.sort_by(|a, b| b.threads.cmp(&a.threads).then_with(|| a.site.cmp(&b.site)));
        v.truncate(TOP_SITES);
        v
    }

    /// A creator's stack, unwound (after the creation itself: the unwinder runs off the
    /// drain). Thread creations count at their site; a new process learns where it was made.
    pub fn apply_stack(&mut self, r: &StackRecord) {
        if r.frames.is_empty() {
            return;
        }
        let site = self.sites.intern(&r.frames);
        if r.tid != r.pid
            && let Some(child) = self.procs.get_mut(&r.tid)
            && child.sum.first_seen_ns >= r.ts_ns
        {
            child.sum.created_at = Some(self.sites.label(site));
            return;
        }
        if let Some(p) = self.procs.get_mut(&r.pid)
            && p.sum.first_seen_ns <= r.ts_ns
        {
            p.sum.creation_stacks += 1;
            *p.site_births.entry(site).or_default() += 1;
            if let Some(t) = p.threads.get_mut(&r.tid) {
                t.site = Some(site);
            }
            return;
        }
        // The process ended before its stack was unwound.
        let label = self.sites.label(site);
        let frames = self.sites.frames(site);
        if let Some(s) = self.summary_for_late(r.pid, r.ts_ns) {
            s.creation_stacks += 1;
            let full = s.creator_sites.len() >= TOP_SITES;
            match s.creator_sites.iter_mut().find(|c| c.site == label) {
                Some(c) => c.threads += 1,
                None if !full => s.creator_sites.push(CreatorSite {
                    site: label,
                    frames,
                    threads: 1,
                    ..Default::default()
                }),
                None => {}
            }
        }
    }

    pub fn is_live(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }
}

fn page_round(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::*;

    fn hdr(kind: EventKind, ts: u64, tgid: u32, tid: u32) -> EventHeader {
        EventHeader {
            ts_ns: ts,
            cgroup_id: 5,
            tgid,
            tid,
            kind: kind as u16,
            cpu: 0,
            memcg: 0,
        }
    }

    fn newtask(ts: u64, parent: u32, child: u32, thread: bool) -> Event {
        Event::NewTask(NewTaskEvent {
            hdr: hdr(EventKind::NewTask, ts, parent, parent),
            clone_flags: if thread { CLONE_THREAD } else { 0 },
            child_tid: child,
            child_tgid: if thread { parent } else { child },
            comm: *b"w\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        })
    }

    fn exit(ts: u64, tgid: u32, tid: u32, dead: bool) -> Event {
        Event::TaskExit(TaskExitEvent {
            hdr: hdr(EventKind::TaskExit, ts, tgid, tid),
            group_dead: dead as u32,
            exit_code: -1,
            comm: [0; 16],
        })
    }

    /// A brk of `pid` to `addr` whose heap starts at `start` (0: unknown).
    fn brk_event(ts: u64, pid: u32, start: u64, addr: u64) -> Event {
        Event::Brk(MemEvent {
            hdr: hdr(EventKind::Brk, ts, pid, pid),
            addr,
            len: addr,
            old_len: 0,
            old_addr: start,
            ret: addr as i64,
            prot: 0,
            flags: 0,
            fd: -1,
            _pad: 0,
        })
    }

    fn find(m: &Model, pid: u32) -> ProcessSummary {
        m.summaries().into_iter().rfind(|s| s.pid == pid).unwrap()
    }

    #[test]
    fn threads_are_counted_and_exited_processes_summarised() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        for t in 0..5 {
            m.apply(&newtask(2, 100, 101 + t, true));
        }
        for t in 0..3 {
            m.apply(&exit(3, 100, 101 + t, false));
        }
        let s = find(&m, 100);
        assert_eq!((s.threads_created, s.threads_exited), (5, 3));
        assert_eq!((s.threads_peak, s.threads_live), (6, 3));
        m.apply(&exit(4, 100, 104, false));
        m.apply(&exit(4, 100, 105, false));
        m.apply(&exit(5, 100, 100, true));
        assert!(!m.is_live(100));
        let s = find(&m, 100);
        assert_eq!(s.exited_ns, Some(5));
        assert!(s.killed, "no exit call seen: counted as killed");
        assert_eq!(m.live_threads(), 1, "only the parent (pid 1) remains");
    }

    #[test]
    fn a_group_exit_ends_the_process_at_its_last_known_thread() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        for t in 0..3 {
            m.apply(&newtask(2, 100, 101 + t, true));
        }
        // exit_group on 2 CPUs: a thread that sees `live` at 0 is not always the last whose
        // exit reaches us, and two may both see it.
        m.apply(&exit(3, 100, 101, false));
        m.apply(&exit(3, 100, 102, true));
        assert!(m.is_live(100), "two threads have not exited yet");
        m.apply(&exit(4, 100, 100, true));
        m.apply(&exit(5, 100, 103, false));
        assert!(!m.is_live(100));
        let s = find(&m, 100);
        assert_eq!((s.threads_created, s.threads_exited), (3, 3));
        assert_eq!(s.exited_ns, Some(5));
    }

    #[test]
    fn a_dying_process_whose_exits_were_lost_ends_at_a_later_sample() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&newtask(2, 100, 101, true));
        m.apply(&exit(10, 100, 100, true)); // 101's exit is lost
        m.apply_waits(10 + DYING_GRACE_NS / 2, &[]);
        assert!(m.is_live(100), "within the grace period");
        m.apply_waits(11 + DYING_GRACE_NS, &[]);
        assert!(!m.is_live(100));
        let s = find(&m, 100);
        assert_eq!(s.exited_ns, Some(10), "ended when its group died");
        assert_eq!(s.threads_exited, 0, "a lost exit is not made up");
    }

    #[test]
    fn after_a_loss_the_peak_is_a_lower_bound() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        for t in 0..3 {
            m.apply(&newtask(2, 100, 101 + t, true));
        }
        m.apply_waits(3, &[]); // a sample: peak 4
        // Threads churn; the exits of 101-103 are lost, then 3 more are born.
        for t in 0..3 {
            m.apply(&newtask(4, 100, 201 + t, true));
        }
        assert_eq!(
            find(&m, 100).threads_peak,
            7,
            "inflated by exits that were lost"
        );
        // The next sample sees the loss and re-reads /proc: 1 + 3 threads alive.
        m.reconcile(100, &[100, 201, 202, 203, 204], 5);
        let s = find(&m, 100);
        assert_eq!((s.threads_live, s.threads_peak), (5, 5));
        assert!(s.events_lost);
        assert_eq!(
            s.threads_created, 7,
            "every creation seen, and 204 whose creation was lost"
        );
        // Gone from /proc: it ended, how is not known.
        m.reconcile(100, &[], 6);
        let s = find(&m, 100);
        assert_eq!(s.exited_ns, Some(6));
        assert!(!s.killed && s.exit_code.is_none() && s.signal.is_none());
    }

    #[test]
    fn exits_of_unknown_threads_are_not_counted() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&newtask(2, 100, 101, true));
        // 102's creation was lost: its exit must not push exits past creations.
        m.apply(&exit(3, 100, 102, false));
        m.apply(&exit(3, 100, 101, false));
        let s = find(&m, 100);
        assert_eq!((s.threads_created, s.threads_exited), (1, 1));
    }

    #[test]
    fn the_birth_of_a_seeded_process_does_not_end_it() {
        let mut m = Model::new(10);
        m.seed(
            &ProcessSeed {
                pid: 100,
                tids: vec![100],
                seen_ns: 50,
                ..Default::default()
            },
            10,
        );
        // Its creation happened after the probes attached, before the /proc scan.
        m.apply(&newtask(40, 1, 100, false));
        let all: Vec<_> = m.summaries().into_iter().filter(|s| s.pid == 100).collect();
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(all[0].seeded && all[0].exited_ns.is_none() && !all[0].killed);
        assert_eq!(all[0].ppid, 1);
        // A later birth under that pid is a reuse (the old one's exit was lost).
        m.apply(&newtask(60, 1, 100, false));
        let all: Vec<_> = m.summaries().into_iter().filter(|s| s.pid == 100).collect();
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn a_process_follows_its_cgroup() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false)); // born in its parent's cgroup, 5
        let mut ev = newtask(2, 100, 101, true);
        if let Event::NewTask(e) = &mut ev {
            e.hdr.cgroup_id = 9; // moved by its runtime after the fork
        }
        m.apply(&ev);
        assert_eq!(find(&m, 100).cgroup_id, 9);
        assert_eq!(
            find(&m, 100).cgroup,
            "cgroup:9",
            "an unresolved id is named by its id"
        );
        assert_eq!(find(&m, 1).cgroup_id, 5);
    }

    #[test]
    fn pid_reuse_finishes_the_old_process() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&newtask(2, 100, 101, true));
        // the exit of 100 was lost; the pid comes back as a new process
        m.apply(&newtask(3, 1, 100, false));
        let all: Vec<_> = m.summaries().into_iter().filter(|s| s.pid == 100).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].threads_created, 1);
        assert_eq!(all[0].exited_ns, Some(3));
        assert_eq!(all[1].threads_created, 0);
    }

    #[test]
    fn a_rename_of_the_main_thread_names_the_process() {
        let rename = |ts, tgid, tid, name: &[u8]| {
            let mut comm = [0; 16];
            comm[..name.len()].copy_from_slice(name);
            Event::Rename(RenameEvent {
                hdr: hdr(EventKind::Rename, ts, tgid, tid),
                comm,
            })
        };
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&newtask(2, 100, 101, true));
        m.apply(&rename(3, 100, 101, b"worker-1"));
        assert_eq!(
            find(&m, 100).comm,
            "w",
            "a thread's name is not the process's"
        );
        m.apply(&rename(4, 100, 100, b"server"));
        assert_eq!(find(&m, 100).comm, "server");
        m.apply(&rename(5, 200, 200, b"ghost"));
        assert!(!m.is_live(200), "a rename alone does not make a process");
    }

    #[test]
    fn exec_renames_and_resets_threads() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&newtask(2, 100, 101, true));
        let mut ex = ExecEvent {
            hdr: hdr(EventKind::Exec, 3, 100, 100),
            old_tid: 101,
            _pad: 0,
            comm: [0; 16],
            filename: [0; FILENAME_LEN],
        };
        ex.comm[..3].copy_from_slice(b"new");
        ex.filename[..8].copy_from_slice(b"/bin/new");
        m.apply(&Event::Exec(ex));
        let s = find(&m, 100);
        assert_eq!(s.comm, "new");
        assert_eq!(s.exe.as_deref(), Some("/bin/new"));
        assert_eq!(s.threads_live, 1);
    }

    fn rss_event(ts: u64, pid: u32, member: u32, size: i64) -> Event {
        Event::Rss(RssEvent {
            hdr: hdr(EventKind::Rss, ts, pid, pid),
            size,
            mm_id: pid,
            member,
            curr: 1,
            _pad: 0,
        })
    }

    #[test]
    fn a_new_process_gets_its_resident_memory_once_from_proc_and_events_win() {
        const MIB: u64 = 1 << 20;
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        // A fork's copied counters are charged while the parent runs: nothing streamed yet.
        assert!(m.rss_unread(10).contains(&100));
        assert_eq!(find(&m, 100).rss_bytes, 0);
        // An anon move streamed before the read: the read fills file and shmem only.
        m.apply(&rss_event(2, 100, RSS_ANON, (5 * MIB) as i64));
        m.rss_read(100, Some((9 * MIB, 3 * MIB)));
        let s = find(&m, 100);
        assert_eq!(s.rss_anon_bytes, 5 * MIB, "the event's value stands");
        assert_eq!(s.rss_file_bytes, 3 * MIB);
        assert_eq!(s.rss_bytes, 8 * MIB);
        assert!(!m.rss_unread(10).contains(&100), "read once");
        // Later events set their member; the baseline of the others stays.
        m.apply(&rss_event(3, 100, RSS_FILE, (4 * MIB) as i64));
        assert_eq!(find(&m, 100).rss_bytes, 9 * MIB);
        // A new program: a new address space, read again.
        let ex = ExecEvent {
            hdr: hdr(EventKind::Exec, 4, 100, 100),
            old_tid: 100,
            _pad: 0,
            comm: [0; 16],
            filename: [0; FILENAME_LEN],
        };
        m.apply(&Event::Exec(ex));
        assert_eq!(find(&m, 100).rss_bytes, 0);
        assert!(m.rss_unread(10).contains(&100));
        m.rss_read(100, Some((2 * MIB, MIB)));
        let s = find(&m, 100);
        assert_eq!((s.rss_bytes, s.rss_anon_bytes), (2 * MIB, MIB));
        // Gone when read: not asked for again, nothing set.
        m.apply(&newtask(5, 1, 200, false));
        m.rss_read(200, None);
        assert!(!m.rss_unread(10).contains(&200));
        assert_eq!(find(&m, 200).rss_bytes, 0);
        m.apply(&newtask(6, 1, 300, false));
        m.apply(&newtask(6, 1, 301, false));
        assert_eq!(m.rss_unread(1).len(), 1, "at most max");
    }

    #[test]
    fn a_seed_splits_resident_memory_so_one_event_does_not_drop_the_rest() {
        const MIB: u64 = 1 << 20;
        let mut m = Model::new(10);
        m.seed(
            &crate::tracefile::ProcessSeed {
                pid: 100,
                ppid: 1,
                comm: "w".into(),
                tids: vec![100],
                rss_bytes: 50 * MIB,
                rss_shared_bytes: 5 * MIB,
                ..Default::default()
            },
            1,
        );
        assert!(!m.rss_unread(10).contains(&100), "a seed is a baseline");
        m.apply(&rss_event(2, 100, RSS_ANON, (46 * MIB) as i64));
        let s = find(&m, 100);
        assert_eq!((s.rss_bytes, s.rss_file_bytes), (51 * MIB, 5 * MIB));
    }

    #[test]
    fn compaction_forgets_cgroups_of_forgotten_processes() {
        let mut m = Model::new(1);
        m.set_cgroup(v2(5), "/system.slice/kept.service".into(), None);
        m.set_cgroup(v2(6), "/gone".into(), None);
        m.apply(&newtask(1, 1, 100, false)); // cgroup 5 (see hdr)
        assert_eq!(find(&m, 100).job, "systemd:kept.service");
        m.compact();
        assert!(m.cgroup_known(v2(5)));
        assert!(!m.cgroup_known(v2(6)));
    }

    fn v2(id: u64) -> CgroupKey {
        CgroupKey {
            hierarchy: Hierarchy::V2,
            id,
        }
    }

    #[test]
    fn the_more_telling_cgroup_names_the_job_and_moves_are_followed() {
        let mut m = Model::new(10);
        let mem = |id| CgroupKey {
            hierarchy: Hierarchy::Memory,
            id,
        };
        let id = "ab".repeat(32);
        m.set_cgroup(v2(5), "/".into(), None);
        m.set_cgroup(mem(9), format!("/docker/{id}"), None);
        m.set_cgroup(mem(10), "/system.slice/cron.service".into(), None);
        m.apply(&newtask(1, 1, 100, false));
        assert_eq!(
            find(&m, 100).job,
            "cgroup:/",
            "no memory cgroup in the event yet"
        );
        let mut ev = newtask(2, 100, 101, true);
        if let Event::NewTask(e) = &mut ev {
            e.hdr.memcg = 9;
        }
        m.apply(&ev);
        let s = find(&m, 100);
        assert_eq!(s.job, format!("docker:{}", &id[..12]));
        assert_eq!(s.memory_cgroup.as_deref(), Some(&*format!("/docker/{id}")));
        let mut ev = exit(3, 100, 101, false);
        if let Event::TaskExit(e) = &mut ev {
            e.hdr.memcg = 10;
        }
        m.apply(&ev);
        assert_eq!(find(&m, 100).job, "systemd:cron.service");
        // An id nobody resolved.
        m.apply(&newtask(4, 1, 200, false));
        let mut ev = exit(5, 200, 200, true);
        if let Event::TaskExit(e) = &mut ev {
            e.hdr.cgroup_id = 77;
        }
        m.apply(&ev);
        assert_eq!(find(&m, 200).job, "cgroup:id:77");
    }

    #[test]
    fn finished_processes_are_bounded() {
        let mut m = Model::new(3);
        for pid in 100..110 {
            m.apply(&newtask(1, 1, pid, false));
            m.apply(&exit(2, pid, pid, true));
        }
        assert_eq!(m.summaries().len(), 3 + 1);
        assert_eq!(m.finished_dropped, 7);
        assert_eq!(m.live_processes(), 1);
    }

    #[test]
    fn brk_growth_counts_from_the_first_known_break() {
        let mut m = Model::new(10);
        // Without the heap start (a kernel whose BTF lacks it): growth from the last break.
        let brk = |ts, addr| brk_event(ts, 100, 0, addr);
        m.seed(
            &ProcessSeed {
                pid: 100,
                brk: Some(0x1000),
                ..Default::default()
            },
            0,
        );
        m.apply(&brk(1, 0x3000));
        m.apply(&brk(2, 0x2000));
        m.apply(&brk(3, 0x5000));
        let s = find(&m, 100);
        assert_eq!(s.brk_growth_bytes, 0x2000 + 0x3000);
        assert_eq!(s.brk_shrink_bytes, 0x1000);
    }

    #[test]
    fn a_lost_exec_does_not_make_the_parents_break_the_baseline() {
        let mut m = Model::new(10);
        let brk = brk_event;
        // The parent's heap is high; its child execs (event lost) a program whose heap
        // starts far below and grows by 0x3000.
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&brk(2, 100, 0x7000_0000_0000, 0x7000_0100_0000));
        m.apply(&newtask(3, 100, 200, false));
        m.apply(&brk(4, 200, 0x5555_0000_0000, 0x5555_0000_1000));
        m.apply(&brk(5, 200, 0x5555_0000_0000, 0x5555_0000_3000));
        let s = find(&m, 200);
        assert_eq!((s.brk_growth_bytes, s.brk_shrink_bytes), (0x3000, 0));
        assert_eq!(find(&m, 100).brk_growth_bytes, 0x100_0000);
    }

    fn batch(ts: u64, first: u64, pid: u32, maps: u32, bytes: u64) -> Event {
        Event::MemBatch(MemBatchEvent {
            hdr: hdr(EventKind::MemBatch, ts, pid, pid),
            first_ns: first,
            mmap_bytes: bytes,
            munmap_bytes: bytes / 2,
            mmap_calls: maps,
            munmap_calls: maps / 2,
        })
    }

    #[test]
    fn batches_add_up_even_after_the_process_exited() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply(&batch(2, 2, 100, 10, 40960));
        m.apply(&exit(3, 100, 100, true));
        // Flushed from another CPU after the exit: still that process's.
        m.apply(&batch(4, 2, 100, 2, 8192));
        // The pid is reused; a late batch of the old process, then one of the new.
        m.apply(&newtask(5, 1, 100, false));
        m.apply(&batch(6, 2, 100, 1, 4096));
        m.apply(&batch(7, 6, 100, 3, 12288));
        let all: Vec<_> = m.summaries().into_iter().filter(|s| s.pid == 100).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].mmap_calls, all[0].mmap_bytes),
            (13, 40960 + 8192 + 4096)
        );
        assert_eq!((all[1].mmap_calls, all[1].mmap_bytes), (3, 12288));
        assert_eq!(
            m.live_processes(),
            2,
            "no process is made up for late batches"
        );
    }

    #[test]
    fn waits_snapshot_sets_peaks_and_durations() {
        let mut m = Model::new(10);
        m.apply(&newtask(1, 1, 100, false));
        m.apply_waits(
            1_000,
            &[WaitAggregate {
                pid: 100,
                futex_parked: 4,
                futex_oldest_ns: 400,
                poll_waiting: 1,
                poll_oldest_ns: 900,
            }],
        );
        m.apply_waits(2_000, &[]);
        let s = find(&m, 100);
        assert_eq!((s.futex_parked_peak, s.futex_parked_now), (4, 0));
        assert_eq!(s.futex_park_max_ns, 600);
        assert_eq!(s.poll_wait_max_ns, 100);
    }
}

#[cfg(test)]
mod series_tests {
    use super::*;
    use tracer_common::*;

    #[test]
    fn a_growing_heap_and_thread_count_show_in_the_process_and_job_series() {
        let mut m = Model::new(10);
        let hdr = |kind: EventKind, ts| EventHeader {
            ts_ns: ts,
            cgroup_id: 5,
            tgid: 100,
            tid: 100,
            kind: kind as u16,
            cpu: 0,
            memcg: 0,
        };
        let sec = 1_000_000_000u64;
        m.start_ns = sec;
        for s in 1..=35u64 {
            let ts = s * sec;
            m.apply(&Event::Brk(MemEvent {
                hdr: hdr(EventKind::Brk, ts),
                addr: 0x10_0000 + s * 0x10_0000,
                len: 0,
                old_len: 0,
                old_addr: 0x10_0000,
                ret: 0,
                prot: 0,
                flags: 0,
                fd: -1,
                _pad: 0,
            }));
            m.apply(&Event::NewTask(NewTaskEvent {
                hdr: hdr(EventKind::NewTask, ts),
                clone_flags: CLONE_THREAD,
                child_tid: 1000 + s as u32,
                child_tgid: 100,
                comm: [0; 16],
            }));
            m.apply_waits(ts, &[]);
        }
        let s = m.summaries().into_iter().find(|s| s.pid == 100).unwrap();
        let series = s.series.expect("a series");
        let t: Vec<u32> = series.fine.iter().map(|p| p.t_s).collect();
        assert_eq!(
            t,
            [0, 9, 19, 29],
            "a point every 10 s from the first sample"
        );
        let heap: Vec<u32> = series.fine.iter().map(|p| p.heap_kib).collect();
        assert_eq!(heap, [1024, 10240, 20480, 30720]);
        let threads: Vec<u32> = series.fine.iter().map(|p| p.threads).collect();
        assert_eq!(threads, [2, 11, 21, 31]);
        assert_eq!(series.coarse.len(), 1);
        let jobs = m.jobs(&m.summaries());
        let js = jobs[0].series.as_ref().expect("the job's series");
        assert_eq!(
            js.fine.iter().map(|p| p.threads).collect::<Vec<_>>(),
            threads
        );
    }
}
