//! `tracer report`: reads a trace file back through the same engine the live collector feeds,
//! and prints a summary for people (text) or programs (JSON).

use std::{collections::BTreeMap, io::Read};

use serde::Serialize;

use crate::{
    detect::Finding,
    engine::Engine,
    escape,
    model::{HostCounters, JobSummary, Model, ProcessSummary},
    tracefile::{ProbeStatus, ReadError, Record, TraceReader},
};

/// Version of the JSON report schema (not of the trace file).
pub const REPORT_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub file_version: u32,
    pub tracer_version: String,
    pub hostname: String,
    pub kernel: String,
    pub start_unix_ns: u64,
    pub duration_ns: u64,
    pub command: Vec<String>,
    /// Why the recording stopped, or null when the file has no end record.
    pub end_reason: Option<String>,
    pub exit_code: Option<i32>,
    /// Set when the file was cut short, has no end record (the recording was killed) or is
    /// corrupt: what was read is still reported.
    pub truncated: Option<String>,
    /// Records of good blocks that could not be read (a length past the block's end, an
    /// unknown tag, bad JSON): each is left out of every count.
    pub skipped_records: u64,
    /// Events the kernel could not deliver or track (ring buffer full, full maps).
    pub lost_events: u64,
    /// What the detectors found, computed from the file's records (see `detect`).
    pub findings: Vec<Finding>,
    /// Whether they are the findings the live collector wrote in the file (null: it wrote
    /// none, e.g. the recording was killed).
    pub findings_match_live: Option<bool>,
    /// The live collector's findings, when they differ from `findings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_findings: Option<Vec<Finding>>,
    pub kernel_counters: BTreeMap<String, u64>,
    pub probes: Vec<ProbeStatus>,
    pub host: HostCounters,
    pub processes_dropped: u64,
    /// Parks at least this long count as long (`long_parked*` of each process).
    pub long_park_threshold_ns: u64,
    pub processes: Vec<ProcessSummary>,
    /// The processes above, added up per job.
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("the trace file has no start record: it is not a complete tracer recording")]
    NoStart,
}

/// Reads a whole trace file into a [`Report`], through the same engine the live collector
/// feeds.
pub fn build<R: Read>(input: R) -> Result<Report, ReportError> {
    build_with(input, crate::model::census::LONG_PARK_NS)
}

/// [`build`], with parks of at least `long_park_ns` listed as long.
pub fn build_with<R: Read>(input: R, long_park_ns: u64) -> Result<Report, ReportError> {
    let mut reader = TraceReader::new(input)?;
    let mut engine = Engine::new();
    engine.model.long_park_ns = long_park_ns;
    while let Some(rec) = reader.next_record()? {
        match rec {
            // Counted by the engine (`host.undecodable`).
            Record::Event(bytes) => _ = engine.event(&bytes),
            Record::Meta(meta) => engine.meta(&meta),
        }
    }
    let truncated = reader.truncated().map(str::to_owned);
    from_engine(&engine, truncated, reader.skipped())
}

/// The report of what `engine` has seen so far.
pub fn from_engine(
    engine: &Engine,
    truncated: Option<String>,
    skipped_records: u64,
) -> Result<Report, ReportError> {
    let start = engine.start.as_ref().ok_or(ReportError::NoStart)?;
    let end = engine.end.as_ref();
    let model = &engine.model;
    let processes = model.summaries();
    Ok(Report {
        jobs: model.jobs(&processes),
        version: REPORT_VERSION,
        file_version: crate::tracefile::VERSION,
        tracer_version: start.tracer_version.clone(),
        hostname: start.hostname.clone(),
        kernel: start.kernel.clone(),
        start_unix_ns: start.start_unix_ns,
        duration_ns: end
            .map_or(engine.last_ts, |e| e.ts_ns)
            .saturating_sub(start.start_ns),
        command: start.command.clone(),
        end_reason: end.map(|e| e.reason.clone()),
        exit_code: end.and_then(|e| e.exit_code),
        truncated: truncated.or_else(|| {
            end.is_none().then(|| {
                "the file has no end record: the recording was stopped before it could finish \
                 (tracer killed, machine down); everything in it was read"
                    .to_owned()
            })
        }),
        skipped_records,
        lost_events: engine.lost_events(),
        findings: engine.detectors.findings.clone(),
        findings_match_live: engine
            .live_findings
            .as_ref()
            .map(|live| *live == engine.detectors.findings),
        live_findings: engine
            .live_findings
            .clone()
            .filter(|live| *live != engine.detectors.findings),
        kernel_counters: engine.counters.clone(),
        probes: start.probes.clone(),
        host: model.host.clone(),
        processes_dropped: model.finished_dropped,
        long_park_threshold_ns: model.long_park_ns,
        processes,
    })
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

fn secs(ns: u64) -> String {
    format!("{:.2}s", ns as f64 / 1e9)
}

/// Processes with something to show (and every one born during the trace), busiest first.
fn interesting(r: &Report) -> Vec<&ProcessSummary> {
    let mut v: Vec<&ProcessSummary> = r
        .processes
        .iter()
        .filter(|p| p.active() || !p.seeded)
        .collect();
    v.sort_by_key(|p| p.busiest_first());
    v
}

/// The human summary. `limit` caps the process rows.
pub fn render_text(r: &Report, limit: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "trace of {} (kernel {}), {} long{}",
        escape::term(&r.hostname),
        escape::term(&r.kernel),
        secs(r.duration_ns),
        if r.command.is_empty() {
            String::new()
        } else {
            format!(", command: {}", escape::term(&r.command.join(" ")))
        }
    );
    if let Some(t) = &r.truncated {
        let _ = writeln!(o, "WARNING: {t}");
    }
    if r.skipped_records > 0 {
        let _ = writeln!(
            o,
            "WARNING: {} corrupt records in the file were skipped (counts below leave them out)",
            r.skipped_records
        );
    }
    if r.lost_events > 0 {
        let _ = writeln!(
            o,
            "WARNING: {} events lost in the kernel (counts below are lower bounds)",
            r.lost_events
        );
    } else {
        let _ = writeln!(o, "lost events: 0");
    }
    for p in r.probes.iter().filter(|p| !p.attached) {
        let _ = writeln!(
            o,
            "WARNING: probe {} was not attached: {}",
            p.name,
            p.error.as_deref().unwrap_or("?")
        );
    }
    for p in r.probes.iter().filter(|p| p.attached) {
        if let Some(n) = &p.note {
            let _ = writeln!(o, "note: probe {}: {n}", p.name);
        }
    }
    o.push_str(&render_findings(&r.findings));
    if r.host.oom_kills > 0 {
        let _ = writeln!(o, "OOM kills: {}", r.host.oom_kills);
    }
    let rows = interesting(r);
    let _ = writeln!(
        o,
        "{} process{} seen, {} with activity{}",
        r.processes.len(),
        if r.processes.len() == 1 { "" } else { "es" },
        rows.len(),
        if rows.len() > limit {
            format!(" (top {limit} shown; --all for every one)")
        } else {
            String::new()
        }
    );
    o.push_str(&render_table(&rows, limit));
    o.push_str(&render_waits(&rows, limit));
    o.push_str(&render_creators(&rows, limit));
    o.push_str(&render_jobs(r, limit));
    o
}

/// The park census in one line per process: how many threads have been parked long, where
/// they came from, and how many wait in poll-family calls.
pub fn render_waits(rows: &[&ProcessSummary], limit: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mut with: Vec<&&ProcessSummary> = rows.iter().filter(|p| p.long_parked_count > 0).collect();
    with.sort_by_key(|p| std::cmp::Reverse(p.long_parked_count));
    if with.is_empty() {
        return o;
    }
    let _ = writeln!(o, "\nlong parks (at the last sample)");
    for p in with.into_iter().take(limit) {
        let _ = writeln!(
            o,
            "{:>8} {}: {} of {} threads parked in futex > {} s, created by {}; {} waiting in \
             ppoll/select/epoll",
            p.pid,
            escape::term_cut(&p.comm, 16),
            p.long_parked_count,
            p.threads_live,
            whole_or_tenths(p.long_parked_min_ns.unwrap_or(0)),
            p.long_parked_site
                .as_deref()
                .map_or_else(|| "an unrecorded site".to_owned(), escape::term),
            p.poll_waiting_now
        );
    }
    o
}

/// Seconds, rounded down: whole ones from 10 s, tenths below.
fn whole_or_tenths(ns: u64) -> String {
    if ns >= 10_000_000_000 {
        format!("{}", ns / 1_000_000_000)
    } else {
        format!("{:.1}", (ns / 100_000_000) as f64 / 10.0)
    }
}

/// Where the threads of the busiest processes were created.
fn render_creators(rows: &[&ProcessSummary], limit: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let with: Vec<&&ProcessSummary> = rows
        .iter()
        .filter(|p| !p.creator_sites.is_empty())
        .take(limit)
        .collect();
    if with.is_empty() {
        return o;
    }
    let _ = writeln!(
        o,
        "\nthread creators (site: threads created there, alive, parked)"
    );
    for p in with {
        let sampled = if p.stacks_sampled {
            format!(
                " [sampled: {} of {} creations had their stack recorded]",
                p.creation_stacks, p.threads_created
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            o,
            "{:>8} {}{}",
            p.pid,
            escape::term_cut(&p.comm, 16),
            sampled
        );
        for s in &p.creator_sites {
            let _ = writeln!(
                o,
                "{:>8}   {} ×{} (alive {}, parked {})",
                "",
                escape::term(&s.site),
                s.threads,
                s.alive,
                s.parked
            );
        }
    }
    o
}

/// The job table: jobs with activity, busiest first.
fn render_jobs(r: &Report, limit: usize) -> String {
    use std::fmt::Write;
    let active: std::collections::HashSet<&str> =
        interesting(r).iter().map(|p| p.job.as_str()).collect();
    let mut jobs: Vec<&JobSummary> = r
        .jobs
        .iter()
        .filter(|j| active.contains(j.job.as_str()))
        .collect();
    jobs.sort_by_key(|j| {
        std::cmp::Reverse((j.threads_created, j.futex_parked_peak, j.rss_peak_bytes))
    });
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n{} job{} with activity",
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(
        o,
        "{:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8} {:>4}  JOB",
        "PROCS", "THR+", "THR-", "PEAK", "PARKED", "POLLS", "RSS-PEAK", "OOM"
    );
    for j in jobs.iter().take(limit) {
        let _ = writeln!(
            o,
            "{:>6} {:>7} {:>7} {:>6} {:>6} {:>6} {:>8} {:>4}  {}",
            j.processes,
            j.threads_created,
            j.threads_exited,
            j.threads_peak,
            j.futex_parked_peak,
            j.poll_waiting_now,
            mib(j.rss_peak_bytes),
            j.oom_kills,
            escape::term(&j.job)
        );
    }
    o
}

/// Findings first: what to act on.
pub fn render_findings(findings: &[Finding]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if findings.is_empty() {
        let _ = writeln!(o, "findings: none");
        return o;
    }
    let _ = writeln!(o, "findings:");
    for f in findings {
        let _ = writeln!(
            o,
            "  [{}] {}{} {}: {}",
            f.state,
            f.kind,
            f.pid.map_or_else(String::new, |p| format!(" pid {p}")),
            escape::term(&f.job),
            // Summaries quote names and symbols of traced programs: untrusted.
            escape::term(&f.summary)
        );
    }
    o
}

/// The process table, one row per process, at most `limit` rows.
pub fn render_table(rows: &[&ProcessSummary], limit: usize) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>8} {:<16} {:>7} {:>7} {:>5} {:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}  JOB",
        "PID",
        "COMM",
        "THR+",
        "THR-",
        "PEAK",
        "PARKED",
        "PARK-MAX",
        "POLLS",
        "MMAP",
        "MUNMAP",
        "BRK+",
        "RSS-PEAK"
    );
    for p in rows.iter().take(limit) {
        let comm = escape::term_cut(&p.comm, 16);
        let _ = writeln!(
            o,
            "{:>8} {:<16} {:>7} {:>7} {:>5} {:>6} {:>9} {:>6} {:>8} {:>8} {:>8} {:>8}  {}{}",
            p.pid,
            comm,
            p.threads_created,
            p.threads_exited,
            p.threads_peak,
            p.futex_parked_peak,
            secs(p.futex_park_max_ns),
            p.poll_waits,
            mib(p.mmap_bytes),
            mib(p.munmap_bytes),
            mib(p.brk_growth_bytes),
            mib(p.rss_peak_bytes),
            escape::term(&p.job),
            match (p.exited_ns.is_some(), p.oom_killed, p.killed, p.exit_code) {
                (_, true, _, _) => " [OOM-killed]".to_owned(),
                (true, _, true, _) => " [killed]".to_owned(),
                (true, _, _, Some(c)) => format!(" [exit {c}]"),
                _ => String::new(),
            } + if p.events_lost { " [events lost]" } else { "" }
        );
    }
    o
}

/// One screen of the plain live view (`top --no-tui`): the open findings, the busiest live
/// processes and their waits.
pub fn render_live(
    engine: &crate::engine::Engine,
    elapsed: std::time::Duration,
    rows: usize,
) -> String {
    let model = &engine.model;
    let live = live_rows(model);
    let refs: Vec<_> = live.iter().collect();
    // What to act on first: the findings open now.
    let active: Vec<_> = engine
        .detectors
        .findings
        .iter()
        .filter(|f| f.state == "active")
        .cloned()
        .collect();
    format!(
        "--- {:.0}s: {} processes, {} threads live\n{}{}",
        elapsed.as_secs_f64(),
        model.live_processes(),
        model.live_threads(),
        render_findings(&active),
        render_table(&refs, rows)
    ) + &render_waits(&refs, rows)
}

/// Rows for the live view: live processes with activity, busiest first.
pub fn live_rows(model: &Model) -> Vec<ProcessSummary> {
    let mut v: Vec<ProcessSummary> = model
        .live_summaries()
        .into_iter()
        .filter(ProcessSummary::active)
        .collect();
    v.sort_by_key(ProcessSummary::busiest_first);
    v
}
