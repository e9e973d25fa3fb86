//! `runaway_threads`: a process whose live threads keep rising, with births far above deaths,
//! over the window. A fixed pool (busy, idle, recycling) keeps its count flat: no finding.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::json;

use super::{Detectors, Sample, lost_note, secs, signed_mib};
use crate::model::Model;

/// Whether the live count rose over the window without falling back much: at least 3/4 of the
/// steps do not go down, and the last quarter still rises above the window's first half.
fn keeps_rising(w: &[Sample]) -> bool {
    if w.len() < 3 {
        return false;
    }
    let steps = w.len() - 1;
    let downs = w.windows(2).filter(|p| p[1].live < p[0].live).count();
    let mid = w[w.len() / 2].live;
    let last = w[w.len() - 1].live;
    downs * 4 <= steps && last > mid
}

/// The onset of a rise still going, from (time, live threads) oldest first: walk back while
/// it rose; a plateau before the rise is not the rise, so the onset is its last sample.
fn rise_onset(points: impl Iterator<Item = (u64, u64)>) -> u64 {
    let all: Vec<(u64, u64)> = points.collect();
    let Some(mut i) = all.len().checked_sub(1) else {
        return 0;
    };
    while i > 0 && all[i - 1].1 <= all[i].1 {
        i -= 1;
    }
    while i + 1 < all.len() && all[i + 1].1 == all[i].1 {
        i += 1;
    }
    all[i].0
}

/// A creating site and its count, for a summary.
fn site_label(site: Option<&(String, u64)>) -> String {
    site.map_or_else(
        || "an unrecorded site".to_owned(),
        |(s, n)| format!("{s} ({n})"),
    )
}

pub(super) fn run(d: &mut Detectors, model: &Model, ts: u64) {
    let window = d.cfg.runaway_window_ns;
    let keys: Vec<(u32, u64)> = d.history.keys().copied().collect();
    for (pid, born) in keys {
        if d.hold(model, pid, born, ts) {
            continue;
        }
        let h = &d.history[&(pid, born)];
        let key = ("runaway_threads", pid, born);
        let w: Vec<Sample> = h.iter().copied().filter(|s| s.ts + window >= ts).collect();
        // The window must be mostly covered by samples of this process.
        let covered = w.first().is_some_and(|f| ts - f.ts >= window * 3 / 4);
        let (first, last) = match (w.first(), w.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => continue,
        };
        let rise = last.live.saturating_sub(first.live);
        let births = last.created.saturating_sub(first.created);
        let deaths = last.exited.saturating_sub(first.exited);
        let runaway = covered
            && rise >= d.cfg.runaway_min_rise
            && births >= d.cfg.runaway_birth_ratio * deaths.max(1)
            && keeps_rising(&w);
        if !runaway {
            // Resolved once the count has stopped rising over a whole window.
            if d.open.contains_key(&key) && covered && last.live <= first.live {
                d.resolve(key, ts);
            } else if d.open.contains_key(&key) {
                // Still open: keep its last time.
                if let Some(&i) = d.open.get(&key) {
                    d.findings[i].last_ns = ts;
                }
            }
            continue;
        }
        let onset = rise_onset(h.iter().map(|s| (s.ts, s.live)));
        let Some(sum) = model.live_process(pid, born) else {
            continue;
        };
        let (new_alive, mut parks, polling) = model.threads_born_since(pid, first.ts);
        parks.sort_unstable();
        let median = parks.get(parks.len() / 2).copied().unwrap_or(0);
        let max = parks.last().copied().unwrap_or(0);
        let site = model
            .creator_sites_of(pid)
            .into_iter()
            .next()
            .map(|c| (c.site, c.threads));
        let growth = last.rss as i64 - first.rss as i64;
        let mapped = last.mapped as i64 - first.mapped as i64;
        let lost = d.lost_since(first.ts);
        let span = last.ts - first.ts;
        let summary = format!(
            "{} → {} live threads in {} ({births} created, {deaths} exited); {} of {new_alive} \
             new threads parked in futex (median {}, max {}), {polling} in poll/select; created \
             at {}; RSS {}, mapped {}{}",
            first.live,
            last.live,
            secs(span),
            parks.len(),
            secs(median),
            secs(max),
            site_label(site.as_ref()),
            signed_mib(growth),
            signed_mib(mapped),
            lost_note(lost)
        );
        let evidence = super::evidence([
            ("window_ns", json!(span)),
            ("live_start", json!(first.live)),
            ("live_end", json!(last.live)),
            ("created", json!(births)),
            ("exited", json!(deaths)),
            ("new_threads_alive", json!(new_alive)),
            ("new_threads_parked", json!(parks.len())),
            ("park_median_ns", json!(median)),
            ("park_max_ns", json!(max)),
            ("poll_waiting", json!(polling)),
            ("top_site", json!(site.as_ref().map(|s| &s.0))),
            ("top_site_threads", json!(site.as_ref().map(|s| s.1))),
            ("rss_growth_bytes", json!(growth)),
            ("mapped_growth_bytes", json!(mapped)),
        ]);
        let f = d.raised(
            "runaway_threads",
            Some(pid),
            model.job_name(sum),
            onset,
            ts,
            summary,
            evidence,
            lost,
        );
        d.upsert(key, f);
    }
}

/// A job's live threads and its cumulative births and deaths of threads, at a sample.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct JobSample {
    pub ts: u64,
    pub live: u64,
    pub births: u64,
    pub deaths: u64,
    pub processes: u64,
    pub rss: u64,
}

/// Per job: its samples over the history, and what each of its processes had at the last one.
#[derive(Default)]
pub(super) struct JobTracks {
    jobs: HashMap<String, VecDeque<JobSample>>,
    /// Per live process: (its job, threads created, exited, live) at the last sample.
    last: HashMap<(u32, u64), (String, u64, u64, u64)>,
    /// The newest cumulative births and deaths per job.
    totals: HashMap<String, (u64, u64)>,
}

/// The key of a job-level runaway among open findings (a process key's second half is never
/// `u64::MAX`: it is a time).
pub(super) const JOB_FINDING: u64 = u64::MAX;

/// `runaway_threads` for a job: its live threads keep rising, with births far above deaths,
/// spread over its processes (a process that holds most of the rise has its own finding): a
/// worker that forks a process per message, or many processes each leaking a little.
pub(super) fn run_jobs(d: &mut Detectors, model: &Model, ts: u64) {
    let keep = d.cfg.history_ns();
    let window = d.cfg.runaway_window_ns;
    let mut now: HashMap<String, JobSample> = HashMap::new();
    let mut seen = HashSet::new();
    let mut moved: HashMap<String, (u64, u64)> = HashMap::new();
    let mut top: HashMap<String, u64> = HashMap::new();
    for s in model.live_raw() {
        let key = (s.pid, s.first_seen_ns);
        seen.insert(key);
        let job = model.job_name(s);
        let live = u64::from(s.threads_live);
        let (b, x) = match d.jobs.last.get(&key) {
            Some((_, created, exited, _)) => (
                s.threads_created.saturating_sub(*created),
                s.threads_exited.saturating_sub(*exited),
            ),
            // A process the trace saw start brought its threads with it.
            None if !s.seeded => (live, 0),
            None => (0, 0),
        };
        let m = moved.entry(job.clone()).or_default();
        m.0 += b;
        m.1 += x;
        // Its rise over the window (the biggest riser of a job is checked below).
        let rose = d
            .history
            .get(&key)
            .and_then(|h| h.iter().find(|x| x.ts + window >= ts))
            .map_or(0, |f| live.saturating_sub(f.live));
        let t = top.entry(job.clone()).or_default();
        *t = (*t).max(rose);
        let j = now.entry(job.clone()).or_default();
        j.live += live;
        j.processes += 1;
        j.rss += s.rss_bytes;
        d.jobs
            .last
            .insert(key, (job, s.threads_created, s.threads_exited, live));
    }
    // Processes gone since the last sample: their threads died with them.
    let gone: Vec<(u32, u64)> = d
        .jobs
        .last
        .keys()
        .filter(|k| !seen.contains(k))
        .copied()
        .collect();
    for k in gone {
        if let Some((job, _, _, live)) = d.jobs.last.remove(&k) {
            moved.entry(job).or_default().1 += live;
        }
    }
    d.jobs.jobs.retain(|j, _| now.contains_key(j));
    d.jobs.totals.retain(|j, _| now.contains_key(j));
    let mut names: Vec<String> = now.keys().cloned().collect();
    names.sort();
    for job in names {
        let mut sample = now[&job];
        let (b, x) = moved.get(&job).copied().unwrap_or_default();
        let t = d.jobs.totals.entry(job.clone()).or_default();
        t.0 += b;
        t.1 += x;
        (sample.ts, sample.births, sample.deaths) = (ts, t.0, t.1);
        let h = d.jobs.jobs.entry(job.clone()).or_default();
        h.push_back(sample);
        while h.front().is_some_and(|f| f.ts + keep < ts) {
            h.pop_front();
        }
        let w: Vec<Sample> = h
            .iter()
            .filter(|s| s.ts + window >= ts)
            .map(|s| Sample {
                ts: s.ts,
                live: s.live,
                created: s.births,
                exited: s.deaths,
                rss: s.rss,
                ..Default::default()
            })
            .collect();
        let key = ("runaway_threads", super::job_key(&job), JOB_FINDING);
        let (Some(first), Some(last)) = (w.first().copied(), w.last().copied()) else {
            continue;
        };
        let covered = ts - first.ts >= window * 3 / 4;
        let rise = last.live.saturating_sub(first.live);
        let births = last.created - first.created;
        let deaths = last.exited - first.exited;
        // The rise of its biggest riser: a process with half of it has its own finding.
        let top_rise = top.get(&job).copied().unwrap_or(0);
        let first_procs = h
            .iter()
            .find(|s| s.ts + window >= ts)
            .map_or(0, |s| s.processes);
        let runaway = covered
            && sample.processes > 1
            && rise >= d.cfg.runaway_min_rise
            && top_rise * 2 < rise
            && births >= d.cfg.runaway_birth_ratio * deaths.max(1)
            && keeps_rising(&w);
        if !runaway {
            if let Some(&i) = d.open.get(&key) {
                if covered && last.live <= first.live {
                    d.resolve(key, ts);
                } else {
                    d.findings[i].last_ns = ts;
                }
            }
            continue;
        }
        let onset = rise_onset(h.iter().map(|s| (s.ts, s.live)));
        // Its busiest creating site, over its live processes.
        let mut sites: HashMap<String, u64> = HashMap::new();
        for s in model.live_raw().filter(|s| model.job_name(s) == job) {
            for c in model.creator_sites_of(s.pid) {
                *sites.entry(c.site).or_default() += c.threads;
            }
        }
        let site = sites
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
        let growth = last.rss as i64 - first.rss as i64;
        let lost = d.lost_since(first.ts);
        let span = last.ts - first.ts;
        let summary = format!(
            "{} → {} live threads in job {} over {} ({births} created, {deaths} exited), across \
             {first_procs} → {} processes, none holding half the rise; created at {}; RSS {}{}",
            first.live,
            last.live,
            job,
            secs(span),
            sample.processes,
            site_label(site.as_ref()),
            signed_mib(growth),
            lost_note(lost)
        );
        let evidence = super::evidence([
            ("window_ns", json!(span)),
            ("live_start", json!(first.live)),
            ("live_end", json!(last.live)),
            ("created", json!(births)),
            ("exited", json!(deaths)),
            ("processes_start", json!(first_procs)),
            ("processes_end", json!(sample.processes)),
            ("top_process_rise", json!(top_rise)),
            ("top_site", json!(site.as_ref().map(|s| &s.0))),
            ("top_site_threads", json!(site.as_ref().map(|s| s.1))),
            ("rss_growth_bytes", json!(growth)),
        ]);
        let f = d.raised(
            "runaway_threads",
            None,
            job.clone(),
            onset,
            ts,
            summary,
            evidence,
            lost,
        );
        d.upsert(key, f);
    }
}
