//! Line fits over (time, value) points: the slope and R² of a least-squares line, and the
//! onset of a rise (a flat level, then a line).

/// A least-squares line through points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Line {
    /// Units per second.
    pub slope: f64,
    /// How much of the variance the line explains (0 to 1; 1 for a flat series: nothing to
    /// explain).
    pub r2: f64,
}

/// The least-squares line through `pts` (ns, value); None for fewer than two distinct times.
pub(crate) fn line(pts: &[(u64, f64)]) -> Option<Line> {
    if pts.len() < 2 {
        return None;
    }
    let t0 = pts[0].0;
    let n = pts.len() as f64;
    let xs = pts.iter().map(|p| (p.0 - t0) as f64 / 1e9);
    let mx = xs.clone().sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (x, p) in xs.zip(pts) {
        let (dx, dy) = (x - mx, p.1 - my);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy <= 0.0 {
        1.0
    } else {
        (sxy * sxy / (sxx * syy)).clamp(0.0, 1.0)
    };
    Some(Line { slope, r2 })
}

/// Where a rise began: the best fit of "flat until τ, then a line" (the least squared error
/// over every point's time as τ), moved on to the last point still at τ's level (within a
/// quarter second of the slope): the last sample before the rise. A
/// lagging first rise (counters that move in granules) can pull the fit's τ a sample early.
/// O(n²): run it when a finding opens.
pub(crate) fn onset(pts: &[(u64, f64)]) -> Option<u64> {
    let tau = hinge(pts)?;
    let i = pts.iter().position(|p| p.0 == tau)?;
    // The level at τ, not the mean of all before it (a process's start-up rise sits there).
    let level = pts[i].1;
    let slope = line(&pts[i..]).map_or(0.0, |l| l.slope.max(0.0));
    let tolerance = slope * 0.25;
    let mut j = i;
    while j + 1 < pts.len() && pts[j + 1].1 <= level + tolerance {
        j += 1;
    }
    // Not past the rise: a point well above the level must follow.
    Some(if j + 1 < pts.len() { pts[j].0 } else { tau })
}

/// The τ of the best "flat until τ, then a line" fit, among the points' times.
fn hinge(pts: &[(u64, f64)]) -> Option<u64> {
    if pts.len() < 3 {
        return None;
    }
    let mut best: Option<(f64, u64)> = None;
    // τ at the last two points leaves nothing to fit a line to.
    for &(tau, _) in &pts[..pts.len() - 2] {
        // y = a + b·max(0, t − τ): a regression on x = max(0, t − τ).
        let n = pts.len() as f64;
        let x = |t: u64| t.saturating_sub(tau) as f64 / 1e9;
        let mx = pts.iter().map(|p| x(p.0)).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for p in pts {
            let dx = x(p.0) - mx;
            sxx += dx * dx;
            sxy += dx * (p.1 - my);
        }
        if sxx <= 0.0 {
            continue;
        }
        let b = sxy / sxx;
        let a = my - b * mx;
        let sse: f64 = pts
            .iter()
            .map(|p| {
                let e = p.1 - (a + b * x(p.0));
                e * e
            })
            .sum();
        // Ties go to the earliest τ (a longer line explains as much).
        if best.is_none_or(|(e, _)| sse < e * (1.0 - 1e-9)) {
            best = Some((sse, tau));
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_line_has_its_slope_and_a_perfect_fit() {
        let pts: Vec<_> = (0..10).map(|i| (i * SEC, 5.0 + 2.0 * i as f64)).collect();
        let l = line(&pts).unwrap();
        assert!((l.slope - 2.0).abs() < 1e-9 && (l.r2 - 1.0).abs() < 1e-9);
        let flat: Vec<_> = (0..10).map(|i| (i * SEC, 7.0)).collect();
        assert_eq!(line(&flat).unwrap().slope, 0.0);
        assert!(line(&[(SEC, 1.0)]).is_none());
        assert!(line(&[(SEC, 1.0), (SEC, 2.0)]).is_none(), "one time only");
    }

    #[test]
    fn the_onset_of_a_rise_is_where_the_flat_level_ends() {
        // Flat at 100 for 20 s, then +3/s.
        let pts: Vec<_> = (0..40u64)
            .map(|i| (i * SEC, 100.0 + 3.0 * i.saturating_sub(20) as f64))
            .collect();
        assert_eq!(onset(&pts), Some(20 * SEC));
        // A rise from the start.
        let pts: Vec<_> = (0..10u64).map(|i| (i * SEC, i as f64)).collect();
        assert_eq!(onset(&pts), Some(0));
        // A rise seen late (the first rising sample lags, as RSS moving in granules does): the
        // last flat sample, not one before it.
        let mut pts: Vec<_> = (0..40u64)
            .map(|i| (i * SEC, 100.0 + 3.0 * i.saturating_sub(20) as f64))
            .collect();
        pts[21].1 = 101.5;
        assert_eq!(onset(&pts), Some(20 * SEC));
    }
}
