//! The collection loop: drains the ring buffer, writes the trace file, feeds the model, and
//! samples the kernel's blocked-thread map and counters at a fixed interval.
//!
//! Submits in the kernel do not wake us below a fill threshold (a wakeup costs ~2 µs on this
//! kind of VM), so the loop drains on a short timer and on forced wakeups.

use std::{
    fs::File,
    io::BufWriter,
    os::fd::AsRawFd,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracer_common::{GROUP_DEAD_YES, maps::Stat};

use crate::{
    cgroups::{self, CgroupKey, Hierarchy, Mounts, Resolver},
    command::{self, Gate, spawn_gated},
    engine::Engine,
    events::{self, Event},
    model::Model,
    probes::{LoadConfig, Probes, wait_snapshot},
    seed,
    stacks::{StackJob, Stacks},
    tracefile::{Meta, StartInfo, TraceWriter},
    waits::WaitTracker,
};

/// How often the ring buffer is drained when no wakeup comes.
const DRAIN_EVERY: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub pids: Vec<u32>,
    /// Trace only the processes of jobs whose name or cgroup path contains one of these
    /// (`--job`), found at start and every sample, and their children.
    pub jobs: Vec<String>,
    pub command: Vec<String>,
    pub min_wait: Duration,
    pub rss_granule: u64,
    pub sample_interval: Duration,
    /// Ring buffer size in bytes (power of two, at least 4096).
    pub ring_bytes: u32,
    /// Use raw-tracepoint syscall hooks even where BTF ones load.
    pub raw_syscall_hooks: bool,
    /// Called with the model after every sample (the live view).
    pub print_every: Option<Duration>,
    /// Creator stacks copied per process per second per CPU (0: off), and the burst.
    pub stacks_per_sec: u32,
    pub stack_burst: u32,
    /// The detectors' thresholds and windows.
    pub detect: crate::detect::DetectConfig,
    /// Start a new trace file past this size or age; keep this many (None: all).
    pub rotate: Option<Rotate>,
}

/// Trace file rotation (`record --rotate-mb/--rotate-secs/--keep`). Checked at each sample, so
/// a file grows past `max_bytes` by at most one sample's events.
#[derive(Clone, Debug, Default)]
pub struct Rotate {
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    pub keep: Option<usize>,
}

/// The name of file `index` of a rotated recording: `trace.trc` → `trace.000003.trc`.
pub fn rotated_path(base: &std::path::Path, index: u32) -> PathBuf {
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trace".into());
    let name = match base.extension() {
        Some(ext) => format!("{stem}.{index:06}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{index:06}"),
    };
    base.with_file_name(name)
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            output: None,
            duration: None,
            pids: Vec::new(),
            jobs: Vec::new(),
            command: Vec::new(),
            min_wait: Duration::from_millis(1),
            rss_granule: 1 << 20,
            sample_interval: Duration::from_secs(1),
            ring_bytes: tracer_common::maps::EVENTS_BYTES,
            raw_syscall_hooks: false,
            print_every: None,
            stacks_per_sec: 20,
            stack_burst: 200,
            detect: Default::default(),
            rotate: None,
        }
    }
}

#[derive(Debug)]
pub struct Outcome {
    /// The traced command's exit status as a shell would report it (128+signal if killed).
    pub exit_code: Option<i32>,
    pub events: u64,
    pub lost: u64,
    pub bytes: u64,
    pub failed_probes: Vec<String>,
    /// The file written last (the newest of a rotated recording).
    pub last_file: Option<PathBuf>,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Sink {
    writer: Option<TraceWriter<BufWriter<File>>>,
    path: Option<PathBuf>,
    rotation: Option<Rotation>,
    /// Events and bytes of files already closed by rotation.
    closed_events: u64,
    closed_bytes: u64,
}

struct Rotation {
    opts: Rotate,
    base: PathBuf,
    index: u32,
    opened: Instant,
    /// Files written, oldest first (those `keep` let go are deleted).
    files: std::collections::VecDeque<PathBuf>,
}

impl Sink {
    fn meta(&mut self, m: &Meta) -> anyhow::Result<()> {
        if let Some(w) = &mut self.writer {
            w.meta(m).with_context(|| self.write_ctx())?;
        }
        Ok(())
    }
    fn event(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        if let Some(w) = &mut self.writer {
            w.event(bytes).with_context(|| self.write_ctx())?;
        }
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(w) = &mut self.writer {
            w.flush().with_context(|| self.write_ctx())?;
        }
        Ok(())
    }
    fn write_ctx(&self) -> String {
        format!(
            "writing the trace file {} failed (disk full?); what was written before is intact",
            self.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )
    }
}

/// State shared by the drain and sample steps. Every record goes to the file (if any) and to
/// the engine, in the same order, so a report of the file replays what the live view showed.
struct Session {
    probes: Probes,
    engine: Engine,
    mounts: Mounts,
    resolver: Resolver,
    stacks: Stacks,
    waits: WaitTracker,
    sink: Sink,
    min_wait_ns: u64,
    last_stats: Option<crate::probes::KernelStats>,
    /// When the cgroups' limits were last re-read.
    last_limits: Option<std::time::Instant>,
    /// With `--job`: finds processes entering the jobs.
    jobscan: Option<crate::jobscan::JobScan>,
    /// The start record, for each file of a rotated recording.
    start: Option<Meta>,
}

/// How often the limits of the live processes' cgroups are re-read.
const LIMITS_EVERY: Duration = Duration::from_secs(5);

/// Most `statm` reads of new processes per sample (each ~10 µs).
const RSS_READS: usize = 256;

/// Decodes one kernel event, writes it and feeds the engine; its cgroups, when new, go to the
/// resolver. Takes the fields it needs, not the session, so that the caller can hand it
/// ring-buffer items in place.
fn handle(
    engine: &mut Engine,
    resolver: &mut Resolver,
    stacks: &mut Stacks,
    sink: &mut Sink,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let ev = match events::decode(bytes) {
        Ok(ev) => ev,
        Err(e) => {
            engine.model.host.undecodable += 1;
            tracing::warn!("undecodable event from the kernel: {e}");
            return Ok(());
        }
    };
    match &ev {
        // Unwound off the drain; the frames are recorded, not the 8 KiB copy.
        Event::Stack(s) => {
            let maps = stacks
                .needs_maps(s.hdr.tgid)
                .then(|| crate::stacks::maps::read(s.hdr.tgid).unwrap_or_default());
            stacks.submit(StackJob {
                ts_ns: s.hdr.ts_ns,
                pid: s.hdr.tgid,
                creator_tid: s.hdr.tid,
                tid: s.child_tid,
                ip: s.ip,
                sp: s.sp,
                bp: s.bp,
                stack: events::stack_bytes(bytes).to_vec(),
                maps,
            });
            return Ok(());
        }
        // Its modules change (exec) or go (exit).
        Event::Exec(e) => stacks.forget(e.hdr.tgid),
        Event::TaskExit(e) if e.group_dead == GROUP_DEAD_YES => stacks.forget(e.hdr.tgid),
        _ => {}
    }
    let h = ev.header();
    note_cgroups(engine, resolver, h.cgroup_id, u64::from(h.memcg));
    sink.event(bytes)?;
    engine.apply(&ev);
    Ok(())
}

/// Writes a collector record and feeds it to the engine.
fn record(engine: &mut Engine, sink: &mut Sink, meta: Meta) -> anyhow::Result<()> {
    sink.meta(&meta)?;
    engine.meta(&meta);
    Ok(())
}

/// Asks the resolver for cgroups the engine has no name for (new, or forgotten by compaction
/// once no kept process was in them). Its answers are recorded between drains.
fn note_cgroups(engine: &Engine, resolver: &mut Resolver, v2: u64, memcg: u64) {
    for (hierarchy, id) in [(Hierarchy::V2, v2), (Hierarchy::Memory, memcg)] {
        let key = CgroupKey { hierarchy, id };
        if id != 0 && !engine.model.cgroup_known(key) {
            resolver.ask(key);
        }
    }
}

/// Records what the resolver found. Not found (a cgroup removed before it could be looked up):
/// its processes show `cgroup:id:<id>`, and the next event of that id asks again.
fn record_answers(
    engine: &mut Engine,
    sink: &mut Sink,
    answers: Vec<cgroups::Answer>,
) -> anyhow::Result<()> {
    for a in answers {
        let a = match a {
            cgroups::Answer::Resolved(r) => *r,
            cgroups::Answer::Limits(key, limits) => {
                // Recorded only when they changed (the file stays small).
                let known = engine.model.limits(key).copied().unwrap_or_default();
                if known != limits && engine.model.cgroup_known(key) {
                    record(
                        engine,
                        sink,
                        Meta::Limits {
                            ts_ns: monotonic_ns(),
                            id: key.id,
                            hierarchy: key.hierarchy,
                            limits,
                        },
                    )?;
                }
                continue;
            }
        };
        if let Some(path) = a.path {
            record(
                engine,
                sink,
                Meta::Cgroup {
                    id: a.key.id,
                    path,
                    hierarchy: a.key.hierarchy,
                    job: a.job.map(Box::new),
                    limits: a.limits,
                },
            )?;
        }
    }
    Ok(())
}

impl Session {
    fn record(&mut self, meta: Meta) -> anyhow::Result<()> {
        record(&mut self.engine, &mut self.sink, meta)
    }

    fn model(&self) -> &Model {
        &self.engine.model
    }

    /// Handles every event waiting in the ring buffer, each read in place.
    fn drain(&mut self) -> anyhow::Result<()> {
        let Session {
            probes,
            engine,
            resolver,
            stacks,
            sink,
            ..
        } = self;
        while let Some(item) = probes.events.next() {
            handle(engine, resolver, stacks, sink, &item)?;
        }
        let answers = resolver.answers();
        record_answers(engine, sink, answers)?;
        for r in stacks.answers() {
            record(engine, sink, Meta::Stack(r))?;
        }
        Ok(())
    }

    fn sample(&mut self) -> anyhow::Result<()> {
        // Batched small mappings reach the ring buffer at least once per sample.
        self.probes.flush_batches();
        self.drain()?;
        let now = monotonic_ns();
        let stats = match self.probes.stats() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("reading kernel counters: {e}");
                None
            }
        };
        let lost_before = self.last_stats.as_ref().map_or(0, |s| s.get(Stat::Lost));
        let lost = stats.as_ref().map_or(0, |s| s.get(Stat::Lost));
        if lost > lost_before {
            tracing::warn!(
                "{} events lost in the kernel (ring buffer full) since the last sample: \
                 re-reading the live processes' threads from /proc",
                lost - lost_before
            );
            self.reconcile(now)?;
        }
        // Limits change while cgroups run (raised during an incident): the live processes'
        // cgroups are re-read every LIMITS_EVERY, off the drain.
        if self.last_limits.is_none_or(|t| t.elapsed() >= LIMITS_EVERY) {
            self.last_limits = Some(std::time::Instant::now());
            for (key, path) in self.engine.model.live_cgroups() {
                self.resolver.refresh(key, path);
            }
        }
        self.join_jobs()?;
        self.read_rss(now)?;
        self.maybe_rotate()?;
        let waiting = self.probes.waiting(self.model().live_tids());
        // What the kernel emitted before this scan saw it: a thread the scan found awake may
        // have been woken by an exit_group whose event came after the first drain, and the
        // detectors must know the process is ending (see `Detectors::hold`).
        self.drain()?;
        self.note_health(waiting.len());
        let (waits, blocked) = wait_snapshot(waiting.into_iter(), now, self.min_wait_ns);
        let changes = self.waits.changes(blocked);
        self.record(Meta::Waits {
            ts_ns: now,
            processes: waits,
            changes,
        })?;
        // Ended processes leave the kernel's filter (drained every sample: bounded).
        for pid in self.engine.model.take_ended() {
            self.probes.untrace_pid(pid);
        }
        if let Some(stats) = stats {
            self.record(Meta::Stats {
                ts_ns: now,
                counters: stats.to_map(),
            })?;
            self.last_stats = Some(stats);
        }
        self.sink.flush()
    }

    /// The resident memory of processes that started since the last sample (or since
    /// tracing began), read once from /proc and recorded. At most [`RSS_READS`] a sample: a
    /// fork storm is read over a few samples.
    fn read_rss(&mut self, now: u64) -> anyhow::Result<()> {
        for pid in self.model().rss_unread(RSS_READS) {
            self.record(Meta::Rss {
                ts_ns: now,
                pid,
                statm: seed::statm(pid),
            })?;
        }
        Ok(())
    }

    /// After lost events the model's live threads may count threads whose exits were lost:
    /// each live process's threads are re-read from /proc and recorded, so that a report of
    /// the file reconciles at the same point.
    fn reconcile(&mut self, now: u64) -> anyhow::Result<()> {
        for pid in self.model().live_pids() {
            let tids = seed::tids(pid);
            self.record(Meta::Threads {
                ts_ns: now,
                pid,
                tids,
            })?;
        }
        Ok(())
    }
}

/// A number from /proc/sys (None: unreadable).
fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Threads that went to sleep before the programs were attached have no wait slot: put them in
/// the kernel's wait table as the programs would have, so they show as parked and their
/// wake-up is traced. Their start is "when tracing started" (the real one is unknown). A thread
/// that woke while we looked is taken out again.
fn seed_blocked(probes: &Probes, seeds: &[crate::tracefile::ProcessSeed]) -> usize {
    let now = monotonic_ns();
    let mut n = 0;
    for p in seeds {
        for &tid in &p.tids {
            let Some(slot) = seed::blocked(p.pid, tid, now) else {
                continue;
            };
            if !probes.slots.insert(tid, slot) {
                continue;
            }
            if seed::blocked(p.pid, tid, now).is_some_and(|again| again.syscall == slot.syscall) {
                n += 1;
            } else {
                probes.slots.remove(tid);
            }
        }
    }
    n
}

fn create_writer(path: &std::path::Path) -> anyhow::Result<TraceWriter<BufWriter<File>>> {
    let f = File::create(path).with_context(|| {
        format!(
            "cannot create the trace file {}: check the directory exists and is writable",
            path.display()
        )
    })?;
    TraceWriter::new(BufWriter::with_capacity(1 << 20, f))
        .with_context(|| format!("writing {}", path.display()))
}

fn open_sink(output: Option<&PathBuf>, rotate: Option<&Rotate>) -> anyhow::Result<Sink> {
    let Some(base) = output else {
        return Ok(Sink {
            writer: None,
            path: None,
            rotation: None,
            closed_events: 0,
            closed_bytes: 0,
        });
    };
    let rotation = rotate.map(|r| Rotation {
        opts: r.clone(),
        base: base.clone(),
        index: 0,
        opened: Instant::now(),
        files: std::collections::VecDeque::new(),
    });
    let path = match &rotation {
        Some(_) => rotated_path(base, 0),
        None => base.clone(),
    };
    let writer = create_writer(&path)?;
    let mut sink = Sink {
        writer: Some(writer),
        path: Some(path.clone()),
        rotation,
        closed_events: 0,
        closed_bytes: 0,
    };
    if let Some(r) = &mut sink.rotation {
        r.files.push_back(path);
    }
    Ok(sink)
}

impl Session {
    /// With rotation: when the file is big or old enough, ends it (the live findings and an
    /// end record) and goes on in the next, which starts like a recording of its own: the
    /// start record, the cgroups known, every live process as a seed. Files past `keep` go.
    fn maybe_rotate(&mut self) -> anyhow::Result<()> {
        let (Some(r), Some(w)) = (&self.sink.rotation, &self.sink.writer) else {
            return Ok(());
        };
        let big = r.opts.max_bytes.is_some_and(|m| w.bytes_written() >= m);
        let old = r.opts.max_age.is_some_and(|a| r.opened.elapsed() >= a);
        if !(big || old) {
            return Ok(());
        }
        let now = monotonic_ns();
        // Into the closing file only: the live engine already knows all of it.
        self.sink.meta(&Meta::Findings {
            ts_ns: now,
            findings: self.engine.detectors.findings.clone(),
        })?;
        self.sink.meta(&Meta::End {
            ts_ns: now,
            reason: "rotated".into(),
            exit_code: None,
        })?;
        self.sink.flush()?;
        if let Some(w) = &self.sink.writer {
            self.sink.closed_events += w.events_written();
            self.sink.closed_bytes += w.bytes_written();
        }
        let r = self.sink.rotation.as_mut().expect("checked");
        r.index += 1;
        r.opened = Instant::now();
        let path = rotated_path(&r.base, r.index);
        r.files.push_back(path.clone());
        let keep = r.opts.keep;
        let mut gone = Vec::new();
        if let Some(k) = keep {
            while r.files.len() > k.max(1) {
                gone.extend(r.files.pop_front());
            }
        }
        self.sink.writer = Some(create_writer(&path)?);
        self.sink.path = Some(path.clone());
        for g in gone {
            if let Err(e) = std::fs::remove_file(&g) {
                tracing::warn!("removing the old trace file {} (--keep): {e}", g.display());
            }
        }
        let mut start = self
            .start
            .clone()
            .context("rotating before the start record")?;
        if let Meta::Start(s) = &mut start {
            s.start_ns = now;
            s.start_unix_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
        }
        self.sink.meta(&start)?;
        for c in self.engine.model.cgroup_records() {
            self.sink.meta(&c)?;
        }
        for seed in self.engine.model.checkpoint(now) {
            self.sink.meta(&Meta::Process(seed))?;
        }
        // The next wait record lists every blocked thread, not changes since the last file.
        self.waits = WaitTracker::default();
        self.sink.flush()?;
        tracing::info!("rotated: now writing {}", path.display());
        Ok(())
    }
}

/// The traced command, held at its gate until tracing is set up.
struct Traced {
    child: command::Child,
    gate: Gate,
    pid: u32,
}

impl Session {
    /// Puts the given pids, and the command (spawned, held at its gate), in the kernel's
    /// filter. Returns every traced pid and the command.
    fn select(&mut self, opts: &SessionOptions) -> anyhow::Result<(Vec<u32>, Option<Traced>)> {
        let mut pids = opts.pids.clone();
        for &pid in &pids {
            self.probes
                .trace_pid(pid)
                .with_context(|| format!("adding pid {pid} to the kernel filter"))?;
        }
        if let Some(scan) = &mut self.jobscan {
            let found = scan.scan(|_| false);
            if found.is_empty() {
                tracing::warn!(
                    "no process is in a job matching --job {:?} yet: tracing those that enter one",
                    opts.jobs
                );
            }
            for pid in found {
                // Gone since the scan: nothing to trace.
                if self.probes.trace_pid(pid).is_ok() {
                    pids.push(pid);
                }
            }
        }
        let mut traced = None;
        if !opts.command.is_empty() {
            let (child, gate) = spawn_gated(&opts.command)?;
            let pid = child.pid;
            self.probes
                .trace_pid(pid)
                .with_context(|| format!("adding pid {pid} to the kernel filter"))?;
            pids.push(pid);
            traced = Some(Traced { child, gate, pid });
        }
        Ok((pids, traced))
    }

    /// Records the processes that exist now (all, or the selected ones), and marks those of
    /// their threads already blocked in the kernel's wait table.
    fn seed(
        &mut self,
        opts: &SessionOptions,
        pids: Option<&[u32]>,
        traced: Option<&Traced>,
    ) -> anyhow::Result<usize> {
        let mut seeds = seed::scan(pids, &self.mounts);
        let blocked = seed_blocked(&self.probes, &seeds);
        if blocked > 0 {
            tracing::info!(
                "{blocked} threads were already blocked in futex/poll calls when tracing started"
            );
        }
        // The command's process is still a fork of the tracer waiting at the gate: describe it
        // as the new process it is about to become, not with the tracer's memory.
        if let Some(t) = traced {
            let (cgroup_id, memcg_id) = self.mounts.keys_of_pid(t.pid);
            seeds.push(crate::tracefile::ProcessSeed {
                pid: t.pid,
                ppid: std::process::id(),
                comm: opts.command[0].clone(),
                cgroup_id,
                memcg_id,
                tids: vec![t.pid],
                thread_names: Vec::new(),
                rss_bytes: 0,
                rss_shared_bytes: 0,
                brk: None,
                start_brk: None,
                seen_ns: monotonic_ns(),
            });
        }
        let n = seeds.len();
        self.add_seeds(seeds)?;
        self.sink.flush()?;
        Ok(n)
    }

    /// The tables' fill for the health metrics.
    fn note_health(&mut self, waiting: usize) {
        use crate::health::TableUsage;
        let model = &self.engine.model;
        let filtering = self.jobscan.is_some() || model.track_ended;
        let tables = vec![
            TableUsage {
                name: "wait_slots",
                entries: waiting as u64,
                capacity: self.probes.slots.slots() as u64,
            },
            TableUsage {
                name: "traced",
                // Each traced live process holds one entry until its exit is drained.
                entries: if filtering {
                    model.live_processes() as u64
                } else {
                    0
                },
                capacity: u64::from(tracer_common::maps::TRACED_MAX),
            },
            TableUsage {
                name: "finished_processes",
                entries: model.finished_len() as u64,
                capacity: crate::engine::MAX_FINISHED as u64,
            },
            TableUsage {
                name: "findings",
                entries: self.engine.detectors.findings.len() as u64,
                capacity: crate::detect::MAX_FINDINGS as u64,
            },
        ];
        self.engine.health = crate::health::SessionHealth {
            tables,
            stacks_dropped: self.stacks.dropped,
        };
    }

    fn add_seeds(&mut self, seeds: Vec<crate::tracefile::ProcessSeed>) -> anyhow::Result<()> {
        for seed in seeds {
            note_cgroups(
                &self.engine,
                &mut self.resolver,
                seed.cgroup_id,
                seed.memcg_id,
            );
            self.record(Meta::Process(seed))?;
        }
        Ok(())
    }

    /// With `--job`: processes that entered the jobs since the last sample (not children of
    /// traced ones: the kernel follows those) join the trace, seeded from /proc.
    fn join_jobs(&mut self) -> anyhow::Result<()> {
        let Some(scan) = &mut self.jobscan else {
            return Ok(());
        };
        let (model, probes) = (&self.engine.model, &self.probes);
        let found = scan.scan(|pid| model.is_live(pid) || probes.is_traced(pid));
        if found.is_empty() {
            return Ok(());
        }
        let mut seeds = Vec::new();
        for pid in found {
            if self.probes.trace_pid(pid).is_err() {
                continue;
            }
            match seed::read(pid, &self.mounts) {
                Some(s) => seeds.push(s),
                // Gone already: out of the filter again.
                None => self.probes.untrace_pid(pid),
            }
        }
        let blocked = seed_blocked(&self.probes, &seeds);
        tracing::debug!(
            n = seeds.len(),
            blocked,
            "processes entered the traced jobs"
        );
        self.add_seeds(seeds)
    }
}

fn start_info(opts: &SessionOptions, cfg: &LoadConfig, probes: &Probes, pids: Vec<u32>) -> Meta {
    Meta::Start(Box::new(StartInfo {
        tracer_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: hostname(),
        kernel: kernel_release(),
        start_ns: monotonic_ns(),
        start_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        command: opts.command.clone(),
        pids,
        min_wait_ns: cfg.min_wait_ns,
        rss_granule: cfg.rss_granule,
        sample_interval_ms: opts.sample_interval.as_millis() as u64,
        probes: probes.status.clone(),
        runaway_window_ns: opts.detect.runaway_window_ns,
        detect: Some(Box::new(opts.detect.clone())),
        pid_max: read_sysctl("kernel/pid_max"),
        threads_max: read_sysctl("kernel/threads-max"),
    }))
}

/// Why a session stopped.
enum Stop {
    Duration,
    Interrupted,
    Terminated,
    /// The sample callback ended the session, for this reason (quit key, output closed, a
    /// finding opened with `--exit-on-finding`).
    Ended(&'static str),
    /// The traced command exited with this status.
    CommandExited(i32),
    /// The sample callback panicked (a bug in the view): the file is finished, then the panic
    /// goes on.
    Panicked(Box<dyn std::any::Any + Send>),
    /// The event loop failed: the file is finished as far as it can be, then the error is
    /// returned.
    Failed(anyhow::Error),
}

impl Stop {
    fn reason(&self) -> &'static str {
        match self {
            Stop::Duration => "duration elapsed",
            Stop::Interrupted => "interrupted (SIGINT)",
            Stop::Terminated => "terminated (SIGTERM)",
            Stop::Ended(why) => why,
            Stop::CommandExited(_) => "command exited",
            Stop::Panicked(_) => "the live view panicked",
            Stop::Failed(_) => "stopped by an error",
        }
    }

    /// The traced command's exit status, when its exit stopped the session.
    fn exit_code(&self) -> Option<i32> {
        match self {
            Stop::CommandExited(c) => Some(*c),
            _ => None,
        }
    }
}

/// What a sample callback wants next: go on, or end the session for the given reason (it
/// becomes the trace's end record and the log's `reason`).
pub type Next = std::ops::ControlFlow<&'static str>;

/// Runs one tracing session until the duration ends, the command exits, or SIGINT/SIGTERM.
/// `on_sample` is called with the model every `print_every` (the live view) and at the end; it
/// breaks with a reason to stop the session (quit, output closed): the file is finished as
/// usual. If it panics, the file is finished too (reason "the live view panicked") before the
/// panic goes on; an error in the loop likewise finishes the file before it is returned.
pub async fn run(
    opts: SessionOptions,
    mut on_sample: impl FnMut(&Engine, Duration) -> Next,
) -> anyhow::Result<Outcome> {
    crate::probes::require_privileges()?;
    for &pid in &opts.pids {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            bail!(
                "--pid {pid}: no such process (no /proc/{pid}); check the pid, it may have exited"
            );
        }
    }
    let sink = open_sink(opts.output.as_ref(), opts.rotate.as_ref())?;
    if let Some(j) = opts.jobs.iter().find(|j| j.is_empty()) {
        bail!("--job {j:?}: give part of a job's name or cgroup path, e.g. --job redis");
    }
    let filter = !opts.pids.is_empty() || !opts.command.is_empty() || !opts.jobs.is_empty();
    let cfg = LoadConfig {
        min_wait_ns: opts.min_wait.as_nanos() as u64,
        rss_granule: opts.rss_granule,
        filter,
        ring_bytes: opts.ring_bytes,
        raw_syscall_hooks: opts.raw_syscall_hooks,
        stacks_per_sec: opts.stacks_per_sec,
        stack_burst: opts.stack_burst,
    };
    let probes = Probes::load(&cfg)?;
    let failed_probes: Vec<String> = probes.failed().map(|p| p.name.clone()).collect();
    let mut s = Session {
        probes,
        engine: Engine::new(),
        mounts: Mounts::find(),
        resolver: Resolver::start(cgroups::Lookup::new(
            Mounts::find(),
            cgroups::node::NodeFiles::default(),
        ))
        .context("starting the cgroup resolver thread")?,
        stacks: Stacks::start().context("starting the stack unwinder thread")?,
        waits: WaitTracker::default(),
        sink,
        min_wait_ns: cfg.min_wait_ns,
        last_stats: None,
        last_limits: None,
        jobscan: (!opts.jobs.is_empty()).then(|| crate::jobscan::JobScan::new(opts.jobs.clone())),
        start: None,
    };
    s.engine.model.track_ended = filter;
    let (pids, traced) = s.select(&opts)?;
    // The command's process is seeded as what it is about to become, not read from /proc.
    let existing: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| traced.as_ref().is_none_or(|t| t.pid != p))
        .collect();
    let start = start_info(&opts, &cfg, &s.probes, pids);
    s.start = opts.rotate.is_some().then(|| start.clone());
    s.record(start)?;
    let processes = s.seed(&opts, filter.then_some(&existing[..]), traced.as_ref())?;
    tracing::info!(
        processes,
        "tracing {}",
        if filter {
            "selected processes"
        } else {
            "host-wide"
        }
    );
    let child_wait = traced.map(|t| {
        t.gate.open();
        t.child.wait()
    });
    let started = Instant::now();
    let stop = s
        .event_loop(&opts, child_wait, started, &mut on_sample)
        .await
        .unwrap_or_else(Stop::Failed);
    let finished = s.finish(&stop);
    let stop = match stop {
        Stop::Panicked(payload) => {
            if let Err(e) = finished {
                tracing::error!("finishing the trace after the panic: {e:#}");
            }
            std::panic::resume_unwind(payload)
        }
        Stop::Failed(error) => {
            if let Err(e) = finished {
                tracing::error!("finishing the trace after the error: {e:#}");
            }
            return Err(error);
        }
        stop => {
            finished?;
            stop
        }
    };
    let exit_code = stop.exit_code();
    if !matches!(stop, Stop::Ended(_)) {
        // The last call's wish to stop is moot: the session is over anyway.
        let _ = on_sample(&s.engine, started.elapsed());
    }
    let stats = s.probes.stats().unwrap_or_default();
    let lost =
        stats.get(Stat::Lost) + stats.get(Stat::WaitMapFull) + stats.get(Stat::FilterMapFull);
    let (events, bytes) = s
        .sink
        .writer
        .as_ref()
        .map_or((s.model().host.events, 0), |w| {
            (
                s.sink.closed_events + w.events_written(),
                s.sink.closed_bytes + w.bytes_written(),
            )
        });
    tracing::info!(reason = stop.reason(), events, lost, "tracing stopped");
    Ok(Outcome {
        exit_code,
        events,
        lost,
        bytes,
        failed_probes,
        last_file: s.sink.path.clone(),
    })
}

impl Session {
    /// Ends the trace however the session stopped: the last events, cgroup names and stacks,
    /// the findings and the end record, flushed. After an error or a panic it goes as far as
    /// it can, so nothing already recorded is lost.
    fn finish(&mut self, stop: &Stop) -> anyhow::Result<()> {
        // The exit of the command happened after all its events were submitted: one last drain
        // gets them all.
        self.drain()?;
        self.sample()?;
        // Names of cgroups still being looked up (a short run, or a process that just started).
        let answers = self.resolver.settle(Duration::from_secs(2));
        record_answers(&mut self.engine, &mut self.sink, answers)?;
        for r in self.stacks.settle(Duration::from_secs(5)) {
            self.record(Meta::Stack(r))?;
        }
        if self.stacks.dropped > 0 {
            tracing::warn!(
                "{} creator stacks were not unwound: the unwinder fell behind",
                self.stacks.dropped
            );
        }
        let findings = self.engine.detectors.findings.clone();
        self.record(Meta::Findings {
            ts_ns: monotonic_ns(),
            findings,
        })?;
        self.record(Meta::End {
            ts_ns: monotonic_ns(),
            reason: stop.reason().to_owned(),
            exit_code: stop.exit_code(),
        })?;
        self.sink.flush()?;
        Ok(())
    }

    /// Drains and samples until a stop condition.
    async fn event_loop(
        &mut self,
        opts: &SessionOptions,
        mut child_wait: Option<tokio::task::JoinHandle<std::io::Result<i32>>>,
        started: Instant,
        on_sample: &mut impl FnMut(&Engine, Duration) -> Next,
    ) -> anyhow::Result<Stop> {
        // The ring buffer map's fd is readable when the kernel forces a wakeup.
        // SAFETY: the fd belongs to `self.probes`, which outlives `rb` (dropped at return).
        let mut rb = unsafe {
            AsyncFd::register_with_interest(
                self.probes.events.as_raw_fd(),
                tokio::io::Interest::READABLE,
            )
        }
        .context("registering the ring buffer with the event loop")?;
        let mut drain_tick = tokio::time::interval(DRAIN_EVERY);
        drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sample_tick = tokio::time::interval(opts.sample_interval);
        sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let printing = opts.print_every.is_some();
        let mut print_tick =
            tokio::time::interval(opts.print_every.unwrap_or(Duration::from_secs(3600)));
        print_tick.tick().await;
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
        let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
        loop {
            tokio::select! {
                guard = rb.readable_mut() => {
                    let mut guard = guard?;
                    self.drain()?;
                    guard.clear_ready();
                }
                _ = drain_tick.tick() => self.drain()?,
                _ = sample_tick.tick() => { self.drain()?; self.sample()?; }
                _ = print_tick.tick(), if printing => {
                    // A panic in the view must not lose the trace: it is caught here, the file
                    // finished, and the panic resumed by `run`.
                    let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        on_sample(&self.engine, started.elapsed())
                    }));
                    match next {
                        Ok(Next::Break(why)) => return Ok(Stop::Ended(why)),
                        Ok(Next::Continue(())) => {}
                        Err(payload) => return Ok(Stop::Panicked(payload)),
                    }
                }
                _ = sigint.recv() => return Ok(Stop::Interrupted),
                _ = sigterm.recv() => return Ok(Stop::Terminated),
                _ = async { tokio::time::sleep_until(deadline.expect("set")).await }, if deadline.is_some() => {
                    return Ok(Stop::Duration);
                }
                status = async { child_wait.as_mut().expect("set").await }, if child_wait.is_some() => {
                    let code = status
                        .context("the wait thread failed")?
                        .context("waiting for the traced command")?;
                    return Ok(Stop::CommandExited(code));
                }
            }
        }
    }
}
