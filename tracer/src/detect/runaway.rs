//! `runaway_threads`: a process whose live threads keep rising, with births far above deaths,
//! over the window. A fixed pool (busy, idle, recycling) keeps its count flat: no finding.

use serde_json::json;

use super::{Detectors, Sample, lost_note, mib, secs};
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

pub(super) fn run(d: &mut Detectors, model: &Model, ts: u64) {
    let window = d.cfg.runaway_window_ns;
    let keys: Vec<(u32, u64)> = d.history.keys().copied().collect();
    for (pid, born) in keys {
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
        // The onset: the start of the rise that is still going (walk back while it rose).
        let all: Vec<Sample> = h.iter().copied().collect();
        let mut i = all.len() - 1;
        while i > 0 && all[i - 1].live <= all[i].live {
            i -= 1;
        }
        // A plateau before the rise is not the rise: the onset is its last sample.
        while i + 1 < all.len() && all[i + 1].live == all[i].live {
            i += 1;
        }
        let onset = all[i].ts;
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
             at {}; RSS {}{}, mapped {}{}{}",
            first.live,
            last.live,
            secs(span),
            parks.len(),
            secs(median),
            secs(max),
            site.as_ref().map_or_else(
                || "an unrecorded site".to_owned(),
                |(s, n)| format!("{s} ({n})")
            ),
            if growth >= 0 { "+" } else { "-" },
            mib(growth.unsigned_abs()),
            if mapped >= 0 { "+" } else { "-" },
            mib(mapped.unsigned_abs()),
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
