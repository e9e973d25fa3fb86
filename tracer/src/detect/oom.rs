//! `oom_kill`: the victim, its job, its RSS just before, its cgroup's memory limit, and how
//! fast it grew before the kill.

use serde_json::json;

use super::{Detectors, lost_note, mib};
use tracer_common::{OOM_PID_ONLY, OomEvent};

use crate::model::Model;

/// How far back the growth rate before a kill is measured.
const GROWTH_WINDOW_NS: u64 = 10_000_000_000;

pub(super) fn run(d: &mut Detectors, model: &Model, e: &OomEvent, ts: u64) {
    let victim = e.victim_pid;
    let s = model
        .live_raw()
        .find(|s| s.pid == victim)
        .or_else(|| model.finished_raw(victim));
    let Some(s) = s else {
        return;
    };
    // The kernel's count at the kill, where the tracepoint gives it (5.19+); else the last
    // RSS the trace saw.
    let at_kill = (e.flags & OOM_PID_ONLY == 0)
        .then(|| (e.anon_rss_kb + e.file_rss_kb + e.shmem_rss_kb) << 10);
    let rss = at_kill.unwrap_or(s.rss_bytes.max(s.rss_peak_bytes));
    let limit = model.memory_limit(s);
    // Growth from the samples of its last GROWTH_WINDOW_NS.
    let rate = d.history.get(&(s.pid, s.first_seen_ns)).and_then(|h| {
        let first = h.iter().find(|x| x.ts + GROWTH_WINDOW_NS >= ts)?;
        let dt = ts.saturating_sub(first.ts);
        // Whole bytes per second: findings survive a JSON round trip exactly.
        (dt > 0).then(|| ((rss as f64 - first.rss as f64) / (dt as f64 / 1e9)) as i64)
    });
    let job = model.job_name(s);
    let lost = d.lost_since(ts.saturating_sub(GROWTH_WINDOW_NS));
    let summary = format!(
        "{} (pid {}) in {} was OOM-killed at {}{}{}{}",
        s.comm,
        s.pid,
        job,
        mib(rss),
        limit.map_or_else(String::new, |l| format!(" of its {} limit", mib(l))),
        rate.map_or_else(String::new, |r| format!(
            ", growing {}/s before the kill",
            mib(r.max(0) as u64)
        )),
        lost_note(lost),
    );
    let evidence = super::evidence([
        ("victim_pid", json!(s.pid)),
        ("victim_comm", json!(s.comm)),
        ("rss_bytes", json!(rss)),
        ("memory_limit_bytes", json!(limit)),
        ("growth_bytes_per_s", json!(rate)),
    ]);
    let f = d.raised(
        "oom_kill",
        Some(s.pid),
        job,
        ts,
        ts,
        summary,
        evidence,
        lost,
    );
    // One finding per kill: keyed by the kill time.
    d.upsert(("oom_kill", s.pid, ts), f);
    d.open.remove(&("oom_kill", s.pid, ts));
}
