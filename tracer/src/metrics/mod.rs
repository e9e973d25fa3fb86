//! Prometheus metrics of the live model (`tracer daemon`): per job, for the top processes, and
//! the tracer's own health. Rebuilt from the engine at every sample into exposition text that
//! the HTTP server (`http`) hands out; scrapes never touch the engine.
//!
//! Cardinality is bounded whatever the node runs: at most `max_jobs` jobs (gone jobs are
//! dropped first) and `top_processes` processes are exported, and a job's series stay
//! `gone_after` past its last process (so the last values of a crash are scraped), then go.

pub mod http;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::atomic::AtomicU64,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{cgroups::JobInfo, engine::Engine, escape, model::ProcessSummary};

#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Processes exported with their own series (the most troubled first).
    pub top_processes: usize,
    /// Jobs exported at most.
    pub max_jobs: usize,
    /// How long a job's series stay after its last process ended (ns).
    pub gone_after_ns: u64,
    /// `/healthz` fails when more than this share of events was lost over the last minute.
    pub max_loss_ratio: f64,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            top_processes: 20,
            max_jobs: 500,
            gone_after_ns: 300_000_000_000,
            max_loss_ratio: 0.01,
        }
    }
}

/// The window `/healthz` judges losses over.
const LOSS_WINDOW_NS: u64 = 60_000_000_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    /// Not `job`: Prometheus sets that label on every series to its scrape job's name.
    job_name: String,
    job_kind: String,
    namespace: String,
    pod: String,
    container: String,
}

impl JobLabels {
    fn of(name: &str, j: &JobInfo) -> Self {
        // Names come from traced processes' cgroups and the node's files: untrusted.
        let clean = |s: Option<&String>| s.map_or_else(String::new, |v| escape::term(v));
        Self {
            job_name: escape::term(name),
            job_kind: j.kind.clone(),
            namespace: clean(j.namespace.as_ref()),
            pod: clean(j.pod.as_ref()),
            container: clean(j.container.as_ref()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    job_name: String,
    namespace: String,
    pod: String,
    container: String,
    finding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    job_name: String,
    namespace: String,
    pod: String,
    container: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    pid: String,
    comm: String,
    job_name: String,
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    probe: String,
}

/// A job's values at the last sample.
#[derive(Clone, Copy, Debug, Default)]
struct JobGauges {
    processes: u64,
    threads: u64,
    parked: u64,
    polls: u64,
    rss: u64,
    mapped: u64,
}

struct JobState {
    labels: JobLabels,
    /// Totals since tracing started, over every process of the job seen: only ever rise.
    created: u64,
    exited: u64,
    oom_kills: u64,
    now: JobGauges,
    /// The last sample that saw one of its processes live.
    last_live_ns: u64,
}

/// What one process was counted for so far.
struct Counted {
    job: String,
    created: u64,
    exited: u64,
}

/// What `/healthz` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    /// One line per problem; "ok" when none.
    pub text: String,
}

pub struct Exporter {
    cfg: ExporterConfig,
    jobs: HashMap<String, JobState>,
    counted: HashMap<(u32, u64), Counted>,
    finished_seq: u64,
    /// Jobs left out at the last sample because `max_jobs` were exported.
    jobs_unexported: u64,
    /// (ts, events, lost) at recent samples, over `LOSS_WINDOW_NS`.
    recent: VecDeque<(u64, u64, u64)>,
    events_per_sec: f64,
}

/// The values of one live process for its job.
fn mapped(s: &ProcessSummary) -> u64 {
    (s.mmap_bytes + s.mremap_grow_bytes).saturating_sub(s.munmap_bytes + s.mremap_shrink_bytes)
}

impl Exporter {
    pub fn new(cfg: ExporterConfig) -> Self {
        Self {
            cfg,
            jobs: HashMap::new(),
            counted: HashMap::new(),
            finished_seq: 0,
            jobs_unexported: 0,
            recent: VecDeque::new(),
            events_per_sec: 0.0,
        }
    }

    /// Jobs with series now (live, or gone less than `gone_after` ago).
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Takes in the engine's state at a sample (`now_ns`: CLOCK_MONOTONIC).
    pub fn update(&mut self, engine: &Engine, now_ns: u64) {
        let model = &engine.model;
        let mut fresh: HashMap<String, (JobInfo, JobGauges)> = HashMap::new();
        let mut deltas: HashMap<String, (u64, u64, u64)> = HashMap::new();
        let mut live_keys = HashSet::new();
        for s in model.live_raw() {
            let info = model.job_info(s);
            let name = info.name();
            let key = (s.pid, s.first_seen_ns);
            live_keys.insert(key);
            let c = self.counted.entry(key).or_insert_with(|| Counted {
                job: name.clone(),
                created: 0,
                exited: 0,
            });
            let d = deltas.entry(name.clone()).or_default();
            d.0 += s.threads_created.saturating_sub(c.created);
            d.1 += s.threads_exited.saturating_sub(c.exited);
            c.created = c.created.max(s.threads_created);
            c.exited = c.exited.max(s.threads_exited);
            let g = &mut fresh
                .entry(name)
                .or_insert_with(|| (info, JobGauges::default()))
                .1;
            g.processes += 1;
            g.threads += u64::from(s.threads_live);
            g.parked += u64::from(s.futex_parked_now);
            g.polls += u64::from(s.poll_waiting_now);
            g.rss += s.rss_bytes;
            g.mapped += mapped(s);
        }
        // Processes that ended since the last sample: their last counts, and OOM kills.
        let (next, ended) = model.finished_since(self.finished_seq);
        self.finished_seq = next;
        for s in ended {
            let key = (s.pid, s.first_seen_ns);
            let (job, created, exited) = match self.counted.remove(&key) {
                Some(c) => (c.job, c.created, c.exited),
                None => (model.job_info(s).name(), 0, 0),
            };
            let d = deltas.entry(job).or_default();
            d.0 += s.threads_created.saturating_sub(created);
            d.1 += s.threads_exited.saturating_sub(exited);
            d.2 += u64::from(s.oom_killed);
        }
        // Gone without an end record (forgotten): nothing more to count.
        self.counted.retain(|k, _| live_keys.contains(k));
        for st in self.jobs.values_mut() {
            st.now = JobGauges::default();
        }
        for (name, (info, g)) in &fresh {
            self.admit(name, info, now_ns, &fresh);
            if let Some(st) = self.jobs.get_mut(name) {
                st.now = *g;
                st.last_live_ns = now_ns;
            }
        }
        for (name, (c, e, o)) in deltas {
            if let Some(st) = self.jobs.get_mut(&name) {
                st.created += c;
                st.exited += e;
                st.oom_kills += o;
            }
        }
        let gone_after = self.cfg.gone_after_ns;
        self.jobs
            .retain(|_, st| now_ns.saturating_sub(st.last_live_ns) <= gone_after);
        self.jobs_unexported = fresh.keys().filter(|n| !self.jobs.contains_key(*n)).count() as u64;
        // Events per second and the loss window.
        let events = model.host.events;
        let lost = lost_total(engine);
        if let Some(&(ts, ev, _)) = self.recent.back()
            && now_ns > ts
        {
            self.events_per_sec = events.saturating_sub(ev) as f64 * 1e9 / (now_ns - ts) as f64;
        }
        self.recent.push_back((now_ns, events, lost));
        while self
            .recent
            .front()
            .is_some_and(|&(ts, _, _)| now_ns.saturating_sub(ts) > LOSS_WINDOW_NS)
        {
            self.recent.pop_front();
        }
    }

    /// Makes room for a job: a gone one goes first (the longest gone); with only live ones,
    /// the new job is not exported (a live job is never evicted: its counters would restart).
    fn admit<T>(&mut self, name: &str, info: &JobInfo, now_ns: u64, live: &HashMap<String, T>) {
        if self.jobs.contains_key(name) {
            return;
        }
        if self.jobs.len() >= self.cfg.max_jobs {
            let oldest_gone = self
                .jobs
                .iter()
                .filter(|(n, _)| !live.contains_key(*n))
                .min_by_key(|(_, st)| st.last_live_ns)
                .map(|(n, _)| n.clone());
            match oldest_gone {
                Some(n) => {
                    self.jobs.remove(&n);
                }
                None => return,
            }
        }
        self.jobs.insert(
            name.to_owned(),
            JobState {
                labels: JobLabels::of(name, info),
                created: 0,
                exited: 0,
                oom_kills: 0,
                now: JobGauges::default(),
                last_live_ns: now_ns,
            },
        );
    }

    /// `/healthz`: probes that did not attach, and losses over the last minute.
    pub fn health(&self, engine: &Engine) -> Health {
        let mut problems = Vec::new();
        if let Some(start) = &engine.start {
            for p in start.probes.iter().filter(|p| !p.attached) {
                problems.push(format!(
                    "probe {} is not attached: {}",
                    p.name,
                    p.error.as_deref().unwrap_or("no reason recorded")
                ));
            }
        }
        if let (Some(first), Some(last)) = (self.recent.front(), self.recent.back()) {
            let events = last.1.saturating_sub(first.1);
            let lost = last.2.saturating_sub(first.2);
            let ratio = lost as f64 / (events + lost).max(1) as f64;
            if lost > 0 && ratio > self.cfg.max_loss_ratio {
                problems.push(format!(
                    "{lost} events lost in the last {:.0} s ({:.1}% of {}; the bound is {:.1}%): \
                     raise --ring-kib or --min-wait-ms",
                    last.0.saturating_sub(first.0) as f64 / 1e9,
                    ratio * 100.0,
                    events + lost,
                    self.cfg.max_loss_ratio * 100.0
                ));
            }
        }
        Health {
            ok: problems.is_empty(),
            text: if problems.is_empty() {
                "ok\n".into()
            } else {
                problems.join("\n") + "\n"
            },
        }
    }

    /// The exposition text (OpenMetrics) of everything, at the last update.
    pub fn render(&self, engine: &Engine) -> String {
        let mut reg = Registry::default();
        self.register_jobs(&mut reg);
        self.register_findings(&mut reg, engine);
        self.register_processes(&mut reg, engine);
        self.register_self(&mut reg, engine);
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }

    fn register_jobs(&self, reg: &mut Registry) {
        let gauge = |reg: &mut Registry, name: &str, help: &str, f: &dyn Fn(&JobState) -> u64| {
            let fam = Family::<JobLabels, Gauge>::default();
            for st in self.jobs.values() {
                fam.get_or_create(&st.labels).set(f(st) as i64);
            }
            reg.register(name, help, fam);
        };
        let counter = |reg: &mut Registry, name: &str, help: &str, f: &dyn Fn(&JobState) -> u64| {
            let fam = Family::<JobLabels, Counter>::default();
            for st in self.jobs.values() {
                fam.get_or_create(&st.labels).inc_by(f(st));
            }
            reg.register(name, help, fam);
        };
        gauge(
            reg,
            "tracer_job_processes",
            "Live processes of the job",
            &|s| s.now.processes,
        );
        gauge(reg, "tracer_job_threads", "Live threads of the job", &|s| {
            s.now.threads
        });
        counter(
            reg,
            "tracer_job_threads_created",
            "Threads created in the job since tracing started (lower bound after lost events)",
            &|s| s.created,
        );
        counter(
            reg,
            "tracer_job_threads_exited",
            "Threads of the job that exited since tracing started",
            &|s| s.exited,
        );
        gauge(
            reg,
            "tracer_job_futex_parked_threads",
            "Threads of the job parked in a futex wait at the last sample",
            &|s| s.now.parked,
        );
        gauge(
            reg,
            "tracer_job_poll_waiting_threads",
            "Threads of the job waiting in poll/select/epoll at the last sample",
            &|s| s.now.polls,
        );
        gauge(
            reg,
            "tracer_job_rss_bytes",
            "Resident memory of the job's processes",
            &|s| s.now.rss,
        );
        gauge(
            reg,
            "tracer_job_mapped_bytes",
            "Bytes the job's processes mapped (mmap, mremap) and did not unmap while traced",
            &|s| s.now.mapped,
        );
        counter(
            reg,
            "tracer_job_oom_kills",
            "Processes of the job killed by the OOM killer",
            &|s| s.oom_kills,
        );
    }

    fn register_findings(&self, reg: &mut Registry, engine: &Engine) {
        let active = Family::<FindingLabels, Gauge>::default();
        let eta = Family::<LimitLabels, Gauge<f64, AtomicU64>>::default();
        for f in engine
            .detectors
            .findings
            .iter()
            .filter(|f| f.state == "active")
        {
            let (ns, pod, container) = self.jobs.get(&f.job).map_or_else(Default::default, |st| {
                (
                    st.labels.namespace.clone(),
                    st.labels.pod.clone(),
                    st.labels.container.clone(),
                )
            });
            let job = escape::term(&f.job);
            active
                .get_or_create(&FindingLabels {
                    job_name: job.clone(),
                    namespace: ns.clone(),
                    pod: pod.clone(),
                    container: container.clone(),
                    finding: f.kind.clone(),
                })
                .inc();
            if f.kind == "limit_forecast"
                && let Some(secs) = f.evidence.get("eta_s").and_then(|v| v.as_f64())
            {
                let g = eta.get_or_create(&LimitLabels {
                    job_name: job,
                    namespace: ns,
                    pod,
                    container,
                    resource: f
                        .evidence
                        .get("resource")
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_owned(),
                });
                // The nearest limit, if a job has two findings of one resource.
                let cur = g.get();
                g.set(if cur > 0.0 { cur.min(secs) } else { secs });
            }
        }
        reg.register(
            "tracer_job_findings",
            "Findings open now, by job and kind (runaway_threads, memory_leak, memory_bloat, \
             oom_kill, crash_loop, limit_forecast)",
            active,
        );
        reg.register(
            "tracer_job_limit_eta_seconds",
            "Forecast seconds until the job reaches its limit (pids, memory, host threads)",
            eta,
        );
    }

    /// The top processes: those with open findings first, then the most threads, parked
    /// threads and RSS.
    fn register_processes(&self, reg: &mut Registry, engine: &Engine) {
        let model = &engine.model;
        let troubled: HashSet<u32> = engine
            .detectors
            .findings
            .iter()
            .filter(|f| f.state == "active")
            .filter_map(|f| f.pid)
            .collect();
        let mut procs: Vec<&ProcessSummary> = model.live_raw().collect();
        procs.sort_by_key(|s| {
            std::cmp::Reverse((
                troubled.contains(&s.pid),
                s.threads_live,
                s.futex_parked_now,
                s.rss_bytes,
            ))
        });
        procs.truncate(self.cfg.top_processes);
        let threads = Family::<ProcessLabels, Gauge>::default();
        let parked = Family::<ProcessLabels, Gauge>::default();
        let rss = Family::<ProcessLabels, Gauge>::default();
        let mapped_f = Family::<ProcessLabels, Gauge>::default();
        let created = Family::<ProcessLabels, Counter>::default();
        for s in procs {
            let info = model.job_info(s);
            let j = JobLabels::of(&info.name(), &info);
            let l = ProcessLabels {
                pid: s.pid.to_string(),
                comm: escape::term(&s.comm),
                job_name: j.job_name,
                namespace: j.namespace,
                pod: j.pod,
                container: j.container,
            };
            threads.get_or_create(&l).set(i64::from(s.threads_live));
            parked.get_or_create(&l).set(i64::from(s.futex_parked_now));
            rss.get_or_create(&l).set(s.rss_bytes as i64);
            mapped_f.get_or_create(&l).set(mapped(s) as i64);
            created.get_or_create(&l).inc_by(s.threads_created);
        }
        reg.register(
            "tracer_process_threads",
            "Live threads (top processes)",
            threads,
        );
        reg.register(
            "tracer_process_futex_parked_threads",
            "Threads parked in a futex wait (top processes)",
            parked,
        );
        reg.register(
            "tracer_process_rss_bytes",
            "Resident memory (top processes)",
            rss,
        );
        reg.register(
            "tracer_process_mapped_bytes",
            "Bytes mapped and not unmapped while traced (top processes)",
            mapped_f,
        );
        reg.register(
            "tracer_process_threads_created",
            "Threads created since tracing started (top processes)",
            created,
        );
    }

    fn register_self(&self, reg: &mut Registry, engine: &Engine) {
        let events = Counter::<u64>::default();
        events.inc_by(engine.model.host.events);
        reg.register("tracer_events", "Events received from the kernel", events);
        let eps = Gauge::<f64, AtomicU64>::default();
        eps.set(self.events_per_sec);
        reg.register(
            "tracer_events_per_second",
            "Events received per second over the last sample",
            eps,
        );
        let lost = Family::<CauseLabels, Counter>::default();
        for (cause, n) in lost_by_cause(engine) {
            lost.get_or_create(&CauseLabels {
                cause: cause.into(),
            })
            .inc_by(n);
        }
        reg.register(
            "tracer_lost_events",
            "Events lost, by cause: ringbuf_full (kernel ring buffer), wait_map_full and \
             filter_map_full (kernel maps), undecodable, stacks_dropped (unwinder behind)",
            lost,
        );
        let entries = Family::<TableLabels, Gauge>::default();
        let capacity = Family::<TableLabels, Gauge>::default();
        for t in &engine.health.tables {
            let l = TableLabels { map: t.name.into() };
            entries.get_or_create(&l).set(t.entries as i64);
            capacity.get_or_create(&l).set(t.capacity as i64);
        }
        reg.register(
            "tracer_map_entries",
            "Entries in a bounded map or table",
            entries,
        );
        reg.register(
            "tracer_map_capacity",
            "Entries a bounded map or table holds at most",
            capacity,
        );
        let attached = Family::<ProbeLabels, Gauge>::default();
        let mut n_attached = 0;
        for p in engine.start.iter().flat_map(|s| &s.probes) {
            attached
                .get_or_create(&ProbeLabels {
                    probe: p.name.clone(),
                })
                .set(i64::from(p.attached));
            n_attached += i64::from(p.attached);
        }
        reg.register(
            "tracer_probe_attached",
            "1 when the probe is attached, else 0",
            attached,
        );
        let total = Gauge::<i64>::default();
        total.set(n_attached);
        reg.register("tracer_probes_attached", "Probes attached", total);
        let jobs = Gauge::<i64>::default();
        jobs.set(self.jobs.len() as i64);
        reg.register(
            "tracer_metrics_jobs",
            "Jobs with series (live or recently gone)",
            jobs,
        );
        let unexported = Gauge::<i64>::default();
        unexported.set(self.jobs_unexported as i64);
        reg.register(
            "tracer_metrics_jobs_unexported",
            "Live jobs left out because the job limit (--max-jobs) was reached",
            unexported,
        );
        let (rss, cpu) = own_usage();
        let g = Gauge::<i64>::default();
        g.set(rss as i64);
        reg.register(
            "process_resident_memory_bytes",
            "The tracer's resident memory",
            g,
        );
        let c = Counter::<f64, AtomicU64>::default();
        c.inc_by(cpu);
        reg.register(
            "process_cpu_seconds",
            "The tracer's user and system CPU time",
            c,
        );
    }
}

fn lost_by_cause(engine: &Engine) -> Vec<(&'static str, u64)> {
    let k = |name: &str| engine.counters.get(name).copied().unwrap_or(0);
    vec![
        ("ringbuf_full", k("lost")),
        ("wait_map_full", k("wait_map_full")),
        ("filter_map_full", k("filter_map_full")),
        ("undecodable", engine.model.host.undecodable),
        ("stacks_dropped", engine.health.stacks_dropped),
    ]
}

fn lost_total(engine: &Engine) -> u64 {
    lost_by_cause(engine).iter().map(|(_, n)| n).sum()
}

/// The tracer's own RSS (bytes) and CPU time (seconds), from /proc/self.
fn own_usage() -> (u64, f64) {
    // SAFETY: no preconditions.
    let (page, hz) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page.max(1) as u64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the comm's closing parenthesis; utime and stime are fields 14, 15.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0) as f64
        / hz.max(1) as f64;
    (rss, cpu)
}
