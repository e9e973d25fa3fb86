//! `limit_forecast`: at the rate of the last window, a cgroup (a job) or the host reaches a
//! limit within the horizon. Limits: the cgroup's `pids.max` (its threads) and `memory.max` /
//! `memory.limit_in_bytes` (its processes' RSS), or, when no cgroup limits the threads, the
//! host's `kernel.threads-max` / `kernel.pid_max`. The finding updates as the rate changes and
//! resolves when growth stops (or the limit is raised out of reach).

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::json;

use super::{Detectors, fit, lost_note, mib, secs};
use crate::{
    cgroups::{CgroupKey, Hierarchy},
    model::Model,
};

/// What is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Resource {
    /// A cgroup's tasks (threads) against `pids.max`.
    Pids,
    /// A cgroup's memory (its processes' RSS) against its memory limit.
    Memory,
    /// The host's threads against `kernel.threads-max` or `kernel.pid_max`.
    HostThreads,
}

impl Resource {
    fn name(self) -> &'static str {
        match self {
            Self::Pids => "pids",
            Self::Memory => "memory",
            Self::HostThreads => "threads",
        }
    }
}

/// One limited quantity: a cgroup's (or the host's) resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Target {
    pub resource: Resource,
    /// None: the host.
    pub cgroup: Option<CgroupKey>,
}

/// A target's values at the samples of the window.
#[derive(Default)]
pub(super) struct Track {
    points: VecDeque<(u64, u64)>,
    /// Per process in it (pid, first seen): its value at the window's first sample it had,
    /// and now (to name the one that grows).
    procs: HashMap<(u32, u64), (u64, u64)>,
}

/// The host's limits on threads, read when tracing started; forecast only when the whole host
/// is traced (else the trace does not see the host's threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostLimits {
    pub pid_max: Option<u64>,
    pub threads_max: Option<u64>,
}

/// A target's limit, its value at this sample, and each process's share of it.
type Totals = (u64, u64, Vec<((u32, u64), u64)>);

pub(super) fn run(d: &mut Detectors, model: &Model, ts: u64) {
    let window = d.cfg.forecast_window_ns;
    // This sample's value of every target, and each process's share.
    let mut now: HashMap<Target, Totals> = HashMap::new();
    let host_limit = [
        (d.host_limits.threads_max, "kernel.threads-max"),
        (d.host_limits.pid_max, "kernel.pid_max"),
    ]
    .into_iter()
    .filter_map(|(l, n)| l.map(|l| (l, n)))
    .min();
    for s in model.live_raw() {
        let key = (s.pid, s.first_seen_ns);
        let threads = u64::from(s.threads_live);
        let mut add = |t: Target, limit: u64, v: u64| {
            let e = now.entry(t).or_insert((limit, 0, Vec::new()));
            e.1 += v;
            e.2.push((key, v));
        };
        let pids = model.limit_over(s, |l| l.pids_max);
        if let Some((k, l)) = pids {
            add(
                Target {
                    resource: Resource::Pids,
                    cgroup: Some(k),
                },
                l,
                threads,
            );
        }
        if let Some((k, l)) = model.limit_over(s, |l| l.memory_max) {
            add(
                Target {
                    resource: Resource::Memory,
                    cgroup: Some(k),
                },
                l,
                s.rss_bytes,
            );
        }
        if let Some((l, _)) = host_limit {
            add(
                Target {
                    resource: Resource::HostThreads,
                    cgroup: None,
                },
                l,
                threads,
            );
        }
    }
    // Targets no live process is in any more are over.
    d.tracks.retain(|t, _| now.contains_key(t));
    let gone: Vec<_> = d
        .forecasts
        .keys()
        .filter(|t| !now.contains_key(t))
        .copied()
        .collect();
    for t in gone {
        if let Some(k) = d.forecasts.remove(&t) {
            d.resolve(k, ts);
        }
    }
    let mut targets: Vec<Target> = now.keys().copied().collect();
    targets.sort_unstable();
    for t in targets {
        let (limit, value, shares) = now.remove(&t).unwrap_or_default();
        let track = d.tracks.entry(t).or_default();
        track.points.push_back((ts, value));
        while track.points.front().is_some_and(|p| p.0 + window < ts) {
            track.points.pop_front();
        }
        let seen: HashSet<(u32, u64)> = shares.iter().map(|s| s.0).collect();
        track.procs.retain(|k, _| seen.contains(k));
        for (k, v) in shares {
            track.procs.entry(k).or_insert((v, v)).1 = v;
        }
        let pts: Vec<(u64, f64)> = track.points.iter().map(|&(t, v)| (t, v as f64)).collect();
        let first = track.points.front().copied().unwrap_or((ts, value));
        // The onset: the window's first sample from which the value kept rising.
        let since = track
            .points
            .iter()
            .rev()
            .collect::<Vec<_>>()
            .windows(2)
            .take_while(|w| w[1].1 <= w[0].1)
            .last()
            .map_or(first.0, |w| w[1].0);
        // Who grows: the process with at least half the growth, if one has.
        let top = track
            .procs
            .iter()
            .map(|(k, (a, b))| (*k, *b as i64 - *a as i64))
            .max_by_key(|&(k, g)| (g, std::cmp::Reverse(k)));
        let covered = ts - first.0 >= window * 3 / 4 && pts.len() >= 4;
        let line = fit::line(&pts);
        let min_rise = match t.resource {
            Resource::Memory => d.cfg.forecast_min_rise_bytes as f64,
            _ => d.cfg.forecast_min_rise_tasks as f64,
        };
        let rate = line.map_or(0.0, |l| l.slope);
        let rise = value as f64 - first.1 as f64;
        let eta_s = if value >= limit {
            0.0
        } else if rate > 0.0 {
            (limit - value) as f64 / rate
        } else {
            f64::INFINITY
        };
        let horizon_s = d.cfg.forecast_horizon_ns as f64 / 1e9;
        let rising = covered
            && rate > 0.0
            && rise >= min_rise
            && line.is_some_and(|l| l.r2 >= d.cfg.forecast_min_r2);
        let open = d.forecasts.get(&t).copied();
        if !(rising && eta_s <= horizon_s) {
            if let Some(k) = open {
                // Over once growth stopped or the limit moved out of reach (with a margin,
                // so that a rate wobbling at the horizon does not flap).
                if covered && (rate <= 0.0 || rise <= 0.0 || eta_s > 1.5 * horizon_s) {
                    d.forecasts.remove(&t);
                    d.resolve(k, ts);
                } else if let Some(&i) = d.open.get(&k) {
                    d.findings[i].last_ns = ts;
                }
            }
            continue;
        }
        let pid = top
            .filter(|&(_, g)| g > 0 && g as f64 * 2.0 >= rise)
            .map(|(k, _)| k.0);
        let member = top.and_then(|(k, _)| model.live_process(k.0, k.1));
        let job = match (t.cgroup, member) {
            (None, _) => "host".to_owned(),
            (Some(_), Some(s)) => model.job_name(s),
            (Some(k), None) => format!("cgroup:id:{}", k.id),
        };
        let (source, path) = match t.cgroup {
            None => (host_limit.map_or("", |h| h.1).to_owned(), None),
            Some(k) => {
                let file = match (t.resource, k.hierarchy) {
                    (Resource::Memory, Hierarchy::Memory) => "memory.limit_in_bytes",
                    (Resource::Memory, _) => "memory.max",
                    _ => "pids.max",
                };
                (file.to_owned(), model.cgroup_path(k).map(str::to_owned))
            }
        };
        let lost = d.lost_since(first.0);
        let fmt = |v: f64| match t.resource {
            Resource::Memory => mib(v.max(0.0) as u64),
            _ => format!("{v:.0}"),
        };
        let summary = format!(
            "{} of {} at {} of its {} limit {}, rising {}/s: reaches it in {}{}{}",
            t.resource.name(),
            job,
            fmt(value as f64),
            source,
            fmt(limit as f64),
            match t.resource {
                Resource::Memory => mib(rate.max(0.0) as u64),
                _ => format!("{rate:.2}"),
            },
            secs((eta_s * 1e9) as u64),
            if t.resource == Resource::Memory {
                " (its processes' RSS; the cgroup also charges page cache: the limit may \
                 come sooner)"
            } else {
                ""
            },
            lost_note(lost),
        );
        let evidence = super::evidence([
            ("resource", json!(t.resource.name())),
            ("limit", json!(limit)),
            ("current", json!(value)),
            ("rate_per_s", json!((rate * 1000.0).round() / 1000.0)),
            ("eta_s", json!(eta_s.round() as u64)),
            ("limit_source", json!(source)),
            ("cgroup", json!(path)),
            ("window_ns", json!(ts - first.0)),
            (
                "r2",
                json!(line.map_or(0.0, |l| (l.r2 * 1000.0).round() / 1000.0)),
            ),
            ("top_pid", json!(top.map(|t| t.0.0))),
            ("top_growth", json!(top.map(|t| t.1))),
        ]);
        let key = ("limit_forecast", super::job_key(&format!("{t:?}")), 0);
        let f = d.raised(
            "limit_forecast",
            pid,
            job,
            since,
            ts,
            summary,
            evidence,
            lost,
        );
        d.forecasts.insert(t, key);
        d.upsert(key, f);
    }
}
