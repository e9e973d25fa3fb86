//! `memory_leak` and `memory_bloat`: a process's memory growing steadily (a line that keeps its
//! slope) or in steps that level off. Warm-up that plateaus early is neither.
//!
//! Both look at two scales: the detectors' own samples (every sample, the last couple of
//! minutes: fast leaks and stairs within a minute of their onset) and the model's series (a
//! point every 10 s for an hour: slow ones).

use serde_json::json;

use super::{Detectors, Sample, fit, lost_note, mib, secs, signed_mib};
use crate::model::{Model, ProcessSummary, series::FINE_STEP_NS};

/// A point of one process's memory on one scale.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct MemPoint {
    pub ts: u64,
    pub rss: u64,
    pub mapped: u64,
    pub heap: u64,
    /// Anonymous and file RSS (0 on the series scale, which does not keep them).
    pub anon: u64,
    pub file: u64,
    pub threads: u64,
}

impl From<&Sample> for MemPoint {
    fn from(s: &Sample) -> Self {
        Self {
            ts: s.ts,
            rss: s.rss,
            mapped: s.mapped,
            heap: s.heap,
            anon: s.anon,
            file: s.file,
            threads: s.live,
        }
    }
}

/// What grew: RSS (pages in use), or mapped bytes (reserved, maybe not touched yet).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Rss,
    Mapped,
}

impl Measure {
    fn of(self, p: &MemPoint) -> f64 {
        match self {
            Self::Rss => p.rss as f64,
            Self::Mapped => p.mapped as f64,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rss => "RSS",
            Self::Mapped => "mapped memory",
        }
    }
}

/// A steady rise over a window.
struct Leak {
    slope: f64,
    r2: f64,
    tail_slope: f64,
    /// The window's first and last points.
    first: MemPoint,
    last: MemPoint,
    rising_segments: usize,
}

/// Segments a leak window is cut into; most must rise.
const SEGMENTS: usize = 8;
const RISING_SEGMENTS: usize = 6;

fn values(pts: &[MemPoint], m: Measure) -> Vec<(u64, f64)> {
    pts.iter().map(|p| (p.ts, m.of(p))).collect()
}

/// A leak in the points of the last `window`: a line that fits (R²), that rises in most
/// segments of the window (not a few steps), by at least the minimum growth, and whose last
/// quarter has not flattened (Coroot's test: at least `tail_ratio` of the slope).
fn leak(d: &Detectors, pts: &[MemPoint], window: u64, m: Measure) -> Option<Leak> {
    let now = pts.last()?.ts;
    let w: Vec<MemPoint> = pts
        .iter()
        .copied()
        .filter(|p| p.ts + window >= now)
        .collect();
    let (first, last) = (*w.first()?, *w.last()?);
    let span = last.ts - first.ts;
    if w.len() < 6 || span < window * 3 / 4 {
        return None;
    }
    let line = fit::line(&values(&w, m))?;
    let growth = line.slope * span as f64 / 1e9;
    let min = d.cfg.leak_min_growth_bytes as f64;
    if line.slope <= 0.0 || growth < min || m.of(&last) - m.of(&first) < min / 2.0 {
        return None;
    }
    if line.r2 < d.cfg.leak_min_r2 {
        return None;
    }
    let tail: Vec<(u64, f64)> = w
        .iter()
        .filter(|p| p.ts >= last.ts - span / 4)
        .map(|p| (p.ts, m.of(p)))
        .collect();
    let tail_slope = fit::line(&tail).map_or(0.0, |l| l.slope);
    if tail_slope < d.cfg.leak_tail_ratio * line.slope {
        return None;
    }
    // Rising in most segments: a steady climb, not a few stairs.
    let value_at = |t: u64| {
        w.iter()
            .rev()
            .find(|p| p.ts <= t)
            .map_or(m.of(&first), |p| m.of(p))
    };
    let seg = span / SEGMENTS as u64;
    let rising = (0..SEGMENTS as u64)
        .filter(|&k| {
            let a = first.ts + k * seg;
            value_at(a + seg) > value_at(a)
        })
        .count();
    if rising < RISING_SEGMENTS {
        return None;
    }
    Some(Leak {
        slope: line.slope,
        r2: line.r2,
        tail_slope,
        first,
        last,
        rising_segments: rising,
    })
}

/// One step of a staircase.
#[derive(Clone, Copy, Debug)]
pub(super) struct Step {
    start: u64,
    end: u64,
    from: u64,
    to: u64,
}

pub(super) struct Bloat {
    steps: Vec<Step>,
    plateau: u64,
    held_ns: u64,
}

/// Stairs that levelled off in `pts` (RSS): at least `bloat_min_steps` quick rises of at least
/// `bloat_step_bytes` each, flat between them (growth outside the steps under a quarter of
/// theirs), no slow ramp, and a plateau since the last that has held at least
/// `bloat_plateau_ns` and twice the mean time between steps.
fn bloat(d: &Detectors, pts: &[MemPoint], step_max_ns: u64) -> Option<Bloat> {
    let step_min = d.cfg.bloat_step_bytes;
    let noise = (step_min / 16).max(256 << 10);
    let mut steps: Vec<Step> = Vec::new();
    let mut drift = 0u64;
    let mut i = 1;
    while i < pts.len() {
        if pts[i].rss <= pts[i - 1].rss + noise {
            i += 1;
            continue;
        }
        // A run of rises.
        let start = i - 1;
        while i < pts.len() && pts[i].rss > pts[i - 1].rss + noise {
            i += 1;
        }
        let end = i - 1;
        let rise = pts[end].rss - pts[start].rss;
        let dur = pts[end].ts - pts[start].ts;
        if rise < step_min {
            drift += rise;
        } else if dur > step_max_ns {
            // A ramp: steady growth (or warm-up), not stairs.
            return None;
        } else {
            steps.push(Step {
                start: pts[start].ts,
                end: pts[end].ts,
                from: pts[start].rss,
                to: pts[end].rss,
            });
        }
    }
    let step_total: u64 = steps.iter().map(|s| s.to - s.from).sum();
    if (steps.len() as u64) < d.cfg.bloat_min_steps || drift * 4 > step_total {
        return None;
    }
    let last_step = *steps.last()?;
    let now = pts.last()?.ts;
    let held = now - last_step.end;
    let interval = (last_step.end - steps[0].end) / (steps.len() as u64 - 1);
    if held < d.cfg.bloat_plateau_ns.max(2 * interval) {
        return None;
    }
    let after: Vec<u64> = pts
        .iter()
        .filter(|p| p.ts >= last_step.end)
        .map(|p| p.rss)
        .collect();
    let (lo, hi) = (*after.iter().min()?, *after.iter().max()?);
    let plateau = last_step.to;
    if hi - lo > tolerance(d, plateau) {
        return None;
    }
    Some(Bloat {
        steps,
        plateau,
        held_ns: held,
    })
}

/// How far a plateau may wander and still be one.
fn tolerance(d: &Detectors, plateau: u64) -> u64 {
    (d.cfg.bloat_step_bytes / 2).max(plateau / 20)
}

/// What grew between two points, named: file pages, the brk heap, anonymous mmap, or
/// anonymous pages of mappings made before.
fn what_grew(a: &MemPoint, b: &MemPoint, m: Measure) -> &'static str {
    let d = |x: u64, y: u64| y as i64 - x as i64;
    let (rss, heap, mapped) = (d(a.rss, b.rss), d(a.heap, b.heap), d(a.mapped, b.mapped));
    let (anon, file) = (d(a.anon, b.anon), d(a.file, b.file));
    if m == Measure::Mapped {
        return "anonymous mmap (mapped, not all touched)";
    }
    if file > anon.max(0) && file * 2 > rss {
        "file-backed pages"
    } else if heap * 2 >= rss {
        "heap (brk)"
    } else if mapped * 2 >= rss {
        "anonymous mmap"
    } else {
        "anonymous pages of existing mappings"
    }
}

/// The model's series of a process as points (10 s apart, up to an hour).
fn series_points(model: &Model, s: &ProcessSummary) -> Vec<MemPoint> {
    model
        .series
        .procs
        .get(&(s.pid, s.first_seen_ns))
        .map(|series| {
            series
                .fine
                .iter()
                .map(|p| MemPoint {
                    ts: model.start_ns + u64::from(p.t_s) * 1_000_000_000,
                    rss: u64::from(p.rss_kib) << 10,
                    mapped: u64::from(p.mapped_kib) << 10,
                    heap: u64::from(p.heap_kib) << 10,
                    anon: 0,
                    file: 0,
                    threads: u64::from(p.threads),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn run(d: &mut Detectors, model: &Model, ts: u64) {
    let keys: Vec<(u32, u64)> = d.history.keys().copied().collect();
    for (pid, born) in keys {
        let Some(s) = model.live_process(pid, born) else {
            continue;
        };
        if d.hold(model, pid, born, ts) {
            continue;
        }
        // Most processes' memory stays put: unless it moved by half the smallest amount a
        // finding needs, on either scale, and no finding is open, there is nothing to fit.
        let quiet = d.cfg.leak_min_growth_bytes.min(d.cfg.bloat_step_bytes) / 2;
        let moved = |it: &mut dyn Iterator<Item = (u64, u64)>| {
            let (mut lo, mut hi) = ((u64::MAX, u64::MAX), (0, 0));
            for (r, m) in it {
                (lo, hi) = ((lo.0.min(r), lo.1.min(m)), (hi.0.max(r), hi.1.max(m)));
            }
            hi.0.saturating_sub(lo.0) >= quiet || hi.1.saturating_sub(lo.1) >= quiet
        };
        let open = d.open.contains_key(&("memory_leak", pid, born))
            || d.open.contains_key(&("memory_bloat", pid, born));
        let series = model.series.procs.get(&(pid, born));
        if !open
            && !moved(&mut d.history[&(pid, born)].iter().map(|x| (x.rss, x.mapped)))
            && !series.is_some_and(|ser| {
                moved(
                    &mut ser
                        .fine
                        .iter()
                        .map(|p| (u64::from(p.rss_kib) << 10, u64::from(p.mapped_kib) << 10)),
                )
            })
        {
            continue;
        }
        let short: Vec<MemPoint> = d.history[&(pid, born)].iter().map(MemPoint::from).collect();
        let long = series_points(model, s);
        run_leak(d, model, s, &short, &long, ts);
        run_bloat(d, model, s, &short, &long, ts);
    }
}

fn run_leak(
    d: &mut Detectors,
    model: &Model,
    s: &ProcessSummary,
    short: &[MemPoint],
    long: &[MemPoint],
    ts: u64,
) {
    let key = ("memory_leak", s.pid, s.first_seen_ns);
    let runaway = d
        .open
        .contains_key(&("runaway_threads", s.pid, s.first_seen_ns));
    let mut found = None;
    'scales: for (pts, window) in [
        (short, d.cfg.leak_window_ns),
        (long, d.cfg.leak_long_window_ns),
    ] {
        for m in [Measure::Rss, Measure::Mapped] {
            // New threads' stacks are mapped memory: a runaway finding already says so.
            if m == Measure::Mapped && runaway {
                continue;
            }
            if let Some(l) = leak(d, pts, window, m) {
                found = Some((l, pts, window, m));
                break 'scales;
            }
        }
    }
    let Some((l, pts, window, m)) = found else {
        // Resolved once its window (on the scale that found it) grew less than a quarter of
        // the minimum.
        if let Some(&i) = d.open.get(&key) {
            let w = d.findings[i].evidence["window_ns"].as_u64().unwrap_or(0);
            let pts = if w > d.cfg.leak_window_ns {
                long
            } else {
                short
            };
            let recent: Vec<&MemPoint> = pts.iter().filter(|p| p.ts + w >= ts).collect();
            let covered = recent
                .first()
                .is_some_and(|f| ts.saturating_sub(f.ts) >= w * 3 / 4);
            let grew = match (recent.first(), recent.last()) {
                (Some(a), Some(b)) => b.rss.max(b.mapped) as i64 - a.rss.max(a.mapped) as i64,
                _ => 0,
            };
            if covered && grew < (d.cfg.leak_min_growth_bytes / 4) as i64 {
                d.resolve(key, ts);
            } else {
                d.findings[i].last_ns = ts;
            }
        }
        return;
    };
    // The onset: where the flat level ended, on this scale's whole track; if the rise began
    // before the short track, the long one may see further back.
    let onset = match d.open.get(&key) {
        Some(&i) => d.findings[i].since_ns,
        None => {
            let mut onset = fit::onset(&values(pts, m)).unwrap_or(l.first.ts);
            if onset == pts[0].ts && window == d.cfg.leak_window_ns && long.len() >= 3 {
                onset = fit::onset(&values(long, m)).map_or(onset, |o| o.min(onset));
            }
            onset
        }
    };
    let span = l.last.ts - l.first.ts;
    let grew = what_grew(&l.first, &l.last, m);
    let threads_lo = pts
        .iter()
        .filter(|p| p.ts >= l.first.ts)
        .map(|p| p.threads)
        .min()
        .unwrap_or(0);
    let threads_hi = pts
        .iter()
        .filter(|p| p.ts >= l.first.ts)
        .map(|p| p.threads)
        .max()
        .unwrap_or(0);
    let flat_threads = threads_hi - threads_lo <= 1;
    let lost = d.lost_since(onset.min(l.first.ts));
    let growth = m.of(&l.last) as i64 - m.of(&l.first) as i64;
    let summary = format!(
        "{} grows steadily at {}/s ({} over {}, R² {:.2}, last quarter {}/s), in {}: {} → {}{}{}",
        m.name(),
        mib(l.slope.max(0.0) as u64),
        signed_mib(growth),
        secs(span),
        l.r2,
        mib(l.tail_slope.max(0.0) as u64),
        grew,
        mib(m.of(&l.first) as u64),
        mib(m.of(&l.last) as u64),
        if flat_threads {
            format!(
                "; threads flat at {} while memory climbs (Go's signature: goroutines, \
                 clients or buffers leak, not threads)",
                l.last.threads
            )
        } else {
            format!("; threads {} → {}", l.first.threads, l.last.threads)
        },
        lost_note(lost),
    );
    let d_of = |f: fn(&MemPoint) -> u64| f(&l.last) as i64 - f(&l.first) as i64;
    let evidence = super::evidence([
        ("measure", json!(m.name())),
        ("slope_bytes_per_s", json!(l.slope as i64)),
        ("r2", json!((l.r2 * 1000.0).round() / 1000.0)),
        ("tail_slope_bytes_per_s", json!(l.tail_slope as i64)),
        ("window_ns", json!(window)),
        ("span_ns", json!(span)),
        ("rising_segments", json!(l.rising_segments)),
        ("segments", json!(SEGMENTS)),
        ("grows", json!(grew)),
        ("rss_start_bytes", json!(l.first.rss)),
        ("rss_end_bytes", json!(l.last.rss)),
        ("rss_growth_bytes", json!(d_of(|p| p.rss))),
        ("mapped_growth_bytes", json!(d_of(|p| p.mapped))),
        ("heap_growth_bytes", json!(d_of(|p| p.heap))),
        ("anon_rss_growth_bytes", json!(d_of(|p| p.anon))),
        ("file_rss_growth_bytes", json!(d_of(|p| p.file))),
        ("threads_start", json!(l.first.threads)),
        ("threads_end", json!(l.last.threads)),
        ("threads_flat", json!(flat_threads)),
    ]);
    let f = d.raised(
        "memory_leak",
        Some(s.pid),
        model.job_name(s),
        onset,
        ts,
        summary,
        evidence,
        lost,
    );
    d.upsert(key, f);
}

fn run_bloat(
    d: &mut Detectors,
    model: &Model,
    s: &ProcessSummary,
    short: &[MemPoint],
    long: &[MemPoint],
    ts: u64,
) {
    let key = ("memory_bloat", s.pid, s.first_seen_ns);
    let found = bloat(d, short, d.cfg.bloat_step_max_ns)
        .map(|b| (b, short))
        .or_else(|| bloat(d, long, 2 * FINE_STEP_NS).map(|b| (b, long)));
    // Warm-up: growth that ended within the warm-up of a process the trace saw start.
    let warm_up = |b: &Bloat| {
        !s.seeded
            && b.steps
                .last()
                .is_some_and(|l| l.end <= s.first_seen_ns + d.cfg.warmup_ns)
    };
    let found = found.map(|f| f.0).filter(|b| !warm_up(b));
    let pk = (s.pid, s.first_seen_ns);
    // The stairs as found first, or as found again with more steps (older steps leave the
    // history; the finding keeps them).
    let b = match (found, d.bloats.remove(&pk)) {
        (Some(new), Some(old)) if new.steps.len() < old.steps.len() => old,
        (Some(new), _) => new,
        (None, Some(old)) => {
            // Resolved once memory fell below the plateau (released); else it still holds.
            if s.rss_bytes + tolerance(d, old.plateau) < old.plateau {
                d.resolve(key, ts);
                return;
            }
            old
        }
        (None, None) => return,
    };
    let b = Bloat {
        held_ns: ts - b.steps.last().map_or(ts, |l| l.end),
        ..b
    };
    let first = b.steps[0];
    let lost = d.lost_since(first.start);
    let sizes: Vec<u64> = b.steps.iter().map(|s| s.to - s.from).collect();
    let times: Vec<u64> = b.steps.iter().map(|s| s.start).collect();
    let summary = format!(
        "RSS rose in {} steps ({}) from {} to a plateau of {} that has held for {}: bloat \
         (stairs that level off), not a leak{}",
        b.steps.len(),
        sizes
            .iter()
            .map(|&x| format!("+{}", mib(x)))
            .collect::<Vec<_>>()
            .join(", "),
        mib(first.from),
        mib(b.plateau),
        secs(b.held_ns),
        lost_note(lost),
    );
    let evidence = super::evidence([
        ("steps", json!(b.steps.len())),
        ("step_sizes_bytes", json!(sizes)),
        ("step_times_ns", json!(times)),
        ("start_bytes", json!(first.from)),
        ("plateau_bytes", json!(b.plateau)),
        ("plateau_held_ns", json!(b.held_ns)),
    ]);
    let f = d.raised(
        "memory_bloat",
        Some(s.pid),
        model.job_name(s),
        first.start,
        ts,
        summary,
        evidence,
        lost,
    );
    d.upsert(key, f);
    d.bloats.insert(pk, b);
}
