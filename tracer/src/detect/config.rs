//! The detectors' config file: TOML, one table per finding kind, in seconds and MiB. Every key
//! is optional (absent: the default); an unknown key is an error, so a typo does not silently
//! leave a default in place.
//!
//! ```toml
//! [runaway_threads]
//! window_secs = 30      # live threads keep rising over this window,
//! min_rise = 10         # by at least this many,
//! birth_ratio = 4       # with births at least this many times deaths
//!
//! [crash_loop]
//! min_deaths = 3
//! window_secs = 300
//!
//! [memory_leak]
//! window_secs = 40      # a fast leak, on every sample
//! long_window_secs = 600 # a slow one, on the 10 s series
//! min_growth_mib = 16
//! min_r2 = 0.8
//! tail_ratio = 0.3      # the last quarter's slope, at least this fraction of the whole's
//!
//! [memory_bloat]
//! step_mib = 8
//! step_max_secs = 5
//! min_steps = 3
//! plateau_secs = 20
//! warmup_secs = 30
//!
//! [limit_forecast]
//! window_secs = 30
//! horizon_secs = 3600
//! min_rise_tasks = 5
//! min_rise_mib = 8
//! min_r2 = 0.6
//! ```

use serde::Deserialize;

use super::DetectConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    runaway_threads: Runaway,
    #[serde(default)]
    crash_loop: Crash,
    #[serde(default)]
    memory_leak: Leak,
    #[serde(default)]
    memory_bloat: Bloat,
    #[serde(default)]
    limit_forecast: Forecast,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Runaway {
    window_secs: Option<f64>,
    min_rise: Option<u64>,
    birth_ratio: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Crash {
    min_deaths: Option<u64>,
    window_secs: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Leak {
    window_secs: Option<f64>,
    long_window_secs: Option<f64>,
    min_growth_mib: Option<f64>,
    min_r2: Option<f64>,
    tail_ratio: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Bloat {
    step_mib: Option<f64>,
    step_max_secs: Option<f64>,
    min_steps: Option<u64>,
    plateau_secs: Option<f64>,
    warmup_secs: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Forecast {
    window_secs: Option<f64>,
    horizon_secs: Option<f64>,
    min_rise_tasks: Option<u64>,
    min_rise_mib: Option<f64>,
    min_r2: Option<f64>,
}

/// Seconds to ns, checked: above 0 and at most a year.
fn ns(what: &str, v: f64) -> Result<u64, String> {
    if v.is_finite() && v > 0.0 && v <= 365.0 * 86400.0 {
        Ok((v * 1e9) as u64)
    } else {
        Err(format!(
            "{what} must be seconds above 0 and at most a year, got {v}"
        ))
    }
}

fn bytes(what: &str, v: f64) -> Result<u64, String> {
    if v.is_finite() && v > 0.0 && v <= (1u64 << 30) as f64 {
        Ok((v * (1u64 << 20) as f64) as u64)
    } else {
        Err(format!("{what} must be MiB above 0, got {v}"))
    }
}

fn fraction(what: &str, v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{what} must be from 0 to 1, got {v}"))
    }
}

fn count(what: &str, v: u64) -> Result<u64, String> {
    if v >= 1 {
        Ok(v)
    } else {
        Err(format!("{what} must be at least 1"))
    }
}

impl DetectConfig {
    /// Applies a config file's text over `self`. `path` names it in errors.
    pub fn apply_toml(&mut self, path: &str, text: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let f: File = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        self.apply(f).map_err(invalid)
    }

    fn apply(&mut self, f: File) -> Result<(), String> {
        macro_rules! set {
            ($field:ident, $v:expr, $conv:ident, $name:literal) => {
                if let Some(v) = $v {
                    self.$field = $conv($name, v)?;
                }
            };
        }
        let r = f.runaway_threads;
        set!(
            runaway_window_ns,
            r.window_secs,
            ns,
            "runaway_threads.window_secs"
        );
        set!(
            runaway_min_rise,
            r.min_rise,
            count,
            "runaway_threads.min_rise"
        );
        set!(
            runaway_birth_ratio,
            r.birth_ratio,
            count,
            "runaway_threads.birth_ratio"
        );
        let c = f.crash_loop;
        set!(
            crash_min_deaths,
            c.min_deaths,
            count,
            "crash_loop.min_deaths"
        );
        set!(crash_window_ns, c.window_secs, ns, "crash_loop.window_secs");
        let l = f.memory_leak;
        set!(leak_window_ns, l.window_secs, ns, "memory_leak.window_secs");
        set!(
            leak_long_window_ns,
            l.long_window_secs,
            ns,
            "memory_leak.long_window_secs"
        );
        set!(
            leak_min_growth_bytes,
            l.min_growth_mib,
            bytes,
            "memory_leak.min_growth_mib"
        );
        set!(leak_min_r2, l.min_r2, fraction, "memory_leak.min_r2");
        set!(
            leak_tail_ratio,
            l.tail_ratio,
            fraction,
            "memory_leak.tail_ratio"
        );
        let b = f.memory_bloat;
        set!(bloat_step_bytes, b.step_mib, bytes, "memory_bloat.step_mib");
        set!(
            bloat_step_max_ns,
            b.step_max_secs,
            ns,
            "memory_bloat.step_max_secs"
        );
        set!(
            bloat_min_steps,
            b.min_steps,
            count,
            "memory_bloat.min_steps"
        );
        set!(
            bloat_plateau_ns,
            b.plateau_secs,
            ns,
            "memory_bloat.plateau_secs"
        );
        set!(warmup_ns, b.warmup_secs, ns, "memory_bloat.warmup_secs");
        let p = f.limit_forecast;
        set!(
            forecast_window_ns,
            p.window_secs,
            ns,
            "limit_forecast.window_secs"
        );
        set!(
            forecast_horizon_ns,
            p.horizon_secs,
            ns,
            "limit_forecast.horizon_secs"
        );
        set!(
            forecast_min_rise_tasks,
            p.min_rise_tasks,
            count,
            "limit_forecast.min_rise_tasks"
        );
        set!(
            forecast_min_rise_bytes,
            p.min_rise_mib,
            bytes,
            "limit_forecast.min_rise_mib"
        );
        set!(forecast_min_r2, p.min_r2, fraction, "limit_forecast.min_r2");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_sets_what_it_names_and_leaves_the_rest() {
        let mut c = DetectConfig::default();
        c.apply_toml(
            "t.toml",
            "[memory_leak]\nwindow_secs = 8\nmin_growth_mib = 4\n[limit_forecast]\nmin_r2 = 0.5\n",
        )
        .unwrap();
        assert_eq!(c.leak_window_ns, 8_000_000_000);
        assert_eq!(c.leak_min_growth_bytes, 4 << 20);
        assert_eq!(c.forecast_min_r2, 0.5);
        assert_eq!(
            c.runaway_window_ns,
            DetectConfig::default().runaway_window_ns
        );
        // The module's example is the defaults.
        let doc: String = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start().to_owned() + "\n")
            .collect();
        let mut d = DetectConfig::default();
        d.apply_toml("doc", &doc).unwrap();
        assert_eq!(d, DetectConfig::default());
    }

    #[test]
    fn typos_and_bad_values_say_where() {
        let mut c = DetectConfig::default();
        let e = c
            .apply_toml("/etc/tracer.toml", "[memory_leak]\nwindow_sec = 8\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/tracer.toml") && e.contains("window_sec"),
            "{e}"
        );
        let e = c
            .apply_toml("x", "[memory_bloat]\nplateau_secs = -1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory_bloat.plateau_secs must be seconds above 0"),
            "{e}"
        );
        let e = c
            .apply_toml("x", "[limit_forecast]\nmin_r2 = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("from 0 to 1"), "{e}");
    }
}
