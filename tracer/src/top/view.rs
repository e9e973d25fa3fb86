//! What `top` shows, taken from the engine at each refresh: rows of jobs and processes with
//! their recent history, the findings, and one process's detail. Plain data: the renderer
//! (`render`) draws it, and tests build it by hand.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::{
    detect::Finding,
    engine::Engine,
    model::{CreatorSite, ProcessSummary, census::WaitingThread},
};

/// Refreshes kept per process and job (the sparklines' width, and births per minute).
pub const HISTORY: usize = 60;

/// One row: a process (pid set) or a job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub pid: Option<u32>,
    /// The process's name, or the job's (untrusted: escaped when drawn).
    pub name: String,
    pub job: String,
    pub processes: u64,
    pub threads: u64,
    pub parked: u64,
    pub polls: u64,
    pub births_per_min: f64,
    pub deaths_per_min: f64,
    pub rss: u64,
    /// Over the history kept: live threads and RSS now minus at its start.
    pub thread_growth: i64,
    pub rss_growth: i64,
    /// Kinds of its open findings.
    pub findings: Vec<String>,
    pub rss_history: Vec<u64>,
    pub thread_history: Vec<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    ts: u64,
    threads: u64,
    created: u64,
    exited: u64,
    rss: u64,
}

/// The recent samples of every live process and job, forgotten when they go.
#[derive(Default)]
pub struct History {
    procs: HashMap<(u32, u64), VecDeque<Sample>>,
    jobs: HashMap<String, VecDeque<Sample>>,
}

fn push(ring: &mut VecDeque<Sample>, s: Sample) {
    if ring.len() >= HISTORY {
        ring.pop_front();
    }
    ring.push_back(s);
}

/// Rates and growth over a ring, into `row`.
fn fill(row: &mut Row, ring: &VecDeque<Sample>) {
    let (Some(first), Some(last)) = (ring.front(), ring.back()) else {
        return;
    };
    // Births per minute over the last minute of samples (all of them when shorter).
    let since = ring
        .iter()
        .find(|s| last.ts.saturating_sub(s.ts) <= 60_000_000_000)
        .unwrap_or(first);
    let span_min = last.ts.saturating_sub(since.ts) as f64 / 60e9;
    if span_min > 0.0 {
        row.births_per_min = last.created.saturating_sub(since.created) as f64 / span_min;
        row.deaths_per_min = last.exited.saturating_sub(since.exited) as f64 / span_min;
    }
    row.thread_growth = last.threads as i64 - first.threads as i64;
    row.rss_growth = last.rss as i64 - first.rss as i64;
    row.rss_history = ring.iter().map(|s| s.rss).collect();
    row.thread_history = ring.iter().map(|s| s.threads).collect();
}

#[derive(Clone, Debug, Default)]
pub struct TopView {
    pub elapsed_s: f64,
    pub processes: usize,
    pub threads: usize,
    pub events: u64,
    pub lost: u64,
    pub jobs: Vec<Row>,
    pub procs: Vec<Row>,
    /// Open findings, then the most recently resolved ones.
    pub findings: Vec<Finding>,
}

/// One process, drilled into.
#[derive(Clone, Debug, Default)]
pub struct Detail {
    pub row: Row,
    pub summary: ProcessSummary,
    pub sites: Vec<CreatorSite>,
    pub long_parked: Vec<WaitingThread>,
    /// RSS (KiB) and live threads, from the model's series (10 s samples, the last hour).
    pub rss_kib: Vec<u64>,
    pub threads: Vec<u64>,
}

/// Resolved findings shown under the open ones.
const RESOLVED_SHOWN: usize = 5;

impl TopView {
    /// Takes the engine's state at `now_ns` (CLOCK_MONOTONIC), updating `history`.
    pub fn build(engine: &Engine, history: &mut History, elapsed_s: f64, now_ns: u64) -> Self {
        let model = &engine.model;
        let findings = &engine.detectors.findings;
        let mut by_pid: HashMap<u32, Vec<String>> = HashMap::new();
        let mut by_job: HashMap<&str, Vec<String>> = HashMap::new();
        for f in findings.iter().filter(|f| f.state == "active") {
            match f.pid {
                Some(p) => by_pid.entry(p).or_default().push(f.kind.clone()),
                None => by_job.entry(&f.job).or_default().push(f.kind.clone()),
            }
        }
        let mut procs = Vec::new();
        let mut jobs: HashMap<String, (Row, Sample)> = HashMap::new();
        let mut live = HashSet::new();
        for s in model.live_raw() {
            let job = model.job_name(s);
            let key = (s.pid, s.first_seen_ns);
            live.insert(key);
            let sample = Sample {
                ts: now_ns,
                threads: u64::from(s.threads_live),
                created: s.threads_created,
                exited: s.threads_exited,
                rss: s.rss_bytes,
            };
            let ring = history.procs.entry(key).or_default();
            push(ring, sample);
            let mut row = Row {
                pid: Some(s.pid),
                name: s.comm.clone(),
                job: job.clone(),
                processes: 1,
                threads: sample.threads,
                parked: u64::from(s.futex_parked_now),
                polls: u64::from(s.poll_waiting_now),
                rss: s.rss_bytes,
                findings: by_pid.get(&s.pid).cloned().unwrap_or_default(),
                ..Default::default()
            };
            fill(&mut row, ring);
            let (j, js) = jobs.entry(job.clone()).or_insert_with(|| {
                (
                    Row {
                        name: job.clone(),
                        job: job.clone(),
                        findings: by_job.get(job.as_str()).cloned().unwrap_or_default(),
                        ..Default::default()
                    },
                    Sample {
                        ts: now_ns,
                        ..Default::default()
                    },
                )
            });
            j.processes += 1;
            j.threads += row.threads;
            j.parked += row.parked;
            j.polls += row.polls;
            j.rss += row.rss;
            j.findings.extend(row.findings.iter().cloned());
            js.threads += sample.threads;
            js.created += sample.created;
            js.exited += sample.exited;
            js.rss += sample.rss;
            procs.push(row);
        }
        history.procs.retain(|k, _| live.contains(k));
        let mut job_rows = Vec::new();
        for (name, (mut row, sample)) in jobs {
            let ring = history.jobs.entry(name).or_default();
            push(ring, sample);
            fill(&mut row, ring);
            // A job's births are its processes' births: a process that came and went between
            // refreshes is not in the sum (lower bound).
            row.findings.sort();
            row.findings.dedup();
            job_rows.push(row);
        }
        let live_jobs: HashSet<String> = job_rows.iter().map(|r| r.name.clone()).collect();
        history.jobs.retain(|k, _| live_jobs.contains(k));
        let mut shown: Vec<Finding> = findings
            .iter()
            .filter(|f| f.state == "active")
            .cloned()
            .collect();
        shown.extend(
            findings
                .iter()
                .rev()
                .filter(|f| f.state != "active")
                .take(RESOLVED_SHOWN)
                .cloned(),
        );
        Self {
            elapsed_s,
            processes: model.live_processes(),
            threads: model.live_threads(),
            events: model.host.events,
            lost: engine.lost_events(),
            jobs: job_rows,
            procs,
            findings: shown,
        }
    }
}

impl Detail {
    /// The live process `row` names, or None once it has gone.
    pub fn build(engine: &Engine, row: &Row) -> Option<Self> {
        let s = engine.model.live_summary(row.pid?)?;
        let points: Vec<_> = s
            .series
            .as_ref()
            .map(|se| se.fine.iter().copied().collect())
            .unwrap_or_default();
        Some(Self {
            row: row.clone(),
            sites: s.creator_sites.clone(),
            long_parked: s.long_parked.clone(),
            rss_kib: points.iter().map(|p| u64::from(p.rss_kib)).collect(),
            threads: points.iter().map(|p| u64::from(p.threads)).collect(),
            summary: s,
        })
    }
}
