//! `crash_loop`: the same job dies again and again, OOM-killed or on a signal, within the
//! window: the Sidekiq poison pill. The job is named even when its processes have exited.

use std::collections::VecDeque;

use serde_json::json;

use super::{Detectors, Finding, lost_note, mib, secs};
use crate::model::Model;

/// Deaths of one job remembered (the newest).
const MAX_DEATHS: usize = 64;

#[derive(Clone, Debug)]
pub(super) struct Death {
    pub ts: u64,
    pub pid: u32,
    pub oom: bool,
    pub signal: Option<i32>,
    pub rss_peak: u64,
    /// How long it lived.
    pub lived_ns: u64,
}

pub(super) fn run(d: &mut Detectors, model: &Model, ts: u64) {
    let (next, ended) = model.finished_since(d.finished_seq);
    d.finished_seq = next;
    let window = d.cfg.crash_window_ns;
    let mut touched = Vec::new();
    for s in ended {
        if !(s.oom_killed || s.signal.is_some()) {
            continue;
        }
        let job = model.job_name(s);
        let deaths = d.deaths.entry(job.clone()).or_default();
        let at = s.exited_ns.unwrap_or(ts);
        deaths.push_back(Death {
            ts: at,
            pid: s.pid,
            oom: s.oom_killed,
            signal: s.signal,
            rss_peak: s.rss_peak_bytes,
            lived_ns: at.saturating_sub(s.first_seen_ns),
        });
        while deaths.len() > MAX_DEATHS {
            deaths.pop_front();
        }
        touched.push(job);
    }
    // Forget deaths older than the window.
    d.deaths.retain(|_, v| {
        while v.front().is_some_and(|x| x.ts + window < ts) {
            v.pop_front();
        }
        !v.is_empty()
    });
    touched.sort();
    touched.dedup();
    for job in touched {
        let Some(v) = d.deaths.get(&job) else {
            continue;
        };
        if (v.len() as u64) < d.cfg.crash_min_deaths {
            continue;
        }
        let v: Vec<Death> = v.iter().cloned().collect::<VecDeque<_>>().into();
        let first = v[0].ts;
        let last = v[v.len() - 1].ts;
        let span = last - first;
        let interval = span / (v.len() as u64 - 1);
        let ooms = v.iter().filter(|x| x.oom).count();
        let peak = v.iter().map(|x| x.rss_peak).max().unwrap_or(0);
        let lived: u64 = v.iter().map(|x| x.lived_ns).sum::<u64>() / v.len() as u64;
        let rate = v
            .iter()
            .filter(|x| x.lived_ns > 0)
            .map(|x| x.rss_peak as f64 / (x.lived_ns as f64 / 1e9))
            .sum::<f64>()
            / v.len() as f64;
        let limit = v.iter().rev().find_map(|x| {
            model
                .finished_raw(x.pid)
                .and_then(|s| model.memory_limit(s))
        });
        let lost = d.lost_since(first);
        let summary = format!(
            "{} deaths of {} in {} ({ooms} OOM kills), one every {}; each lived ~{} and grew to \
             {} at ~{}/s{}{}",
            v.len(),
            job,
            secs(span),
            secs(interval),
            secs(lived),
            mib(peak),
            mib(rate.max(0.0) as u64),
            limit.map_or_else(String::new, |l| format!(" (limit {})", mib(l))),
            lost_note(lost),
        );
        let evidence = super::evidence([
            ("deaths", json!(v.len())),
            ("oom_kills", json!(ooms)),
            ("span_ns", json!(span)),
            ("interval_ns", json!(interval)),
            ("pids", json!(v.iter().map(|x| x.pid).collect::<Vec<_>>())),
            (
                "signals",
                json!(v.iter().map(|x| x.signal).collect::<Vec<_>>()),
            ),
            (
                "rss_peaks",
                json!(v.iter().map(|x| x.rss_peak).collect::<Vec<_>>()),
            ),
            ("lived_mean_ns", json!(lived)),
            ("growth_bytes_per_s", json!(rate as i64)),
            ("memory_limit_bytes", json!(limit)),
        ]);
        let f = Finding {
            last_ns: last,
            ..d.raised(
                "crash_loop",
                None,
                job.clone(),
                first,
                ts,
                summary,
                evidence,
                lost,
            )
        };
        let key = ("crash_loop", crate::detect::job_key(&job), 0);
        d.upsert(key, f);
    }
}
