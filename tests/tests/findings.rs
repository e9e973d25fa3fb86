//! Findings from real workloads: a thread-per-message worker (the shoryuken leak) is a runaway,
//! a recycling pool is not, an OOM kill names its victim, limit and growth; and the report of
//! the file finds what the live collector found.
//!
//! The runaway window is shortened to 5 s (default 30 s) so that the tests take seconds.

mod common;

use common::*;
use tracer::detect::Finding;

const WINDOW: &str = "5";

fn leaker(t: &Traced) -> &tracer::model::ProcessSummary {
    t.report
        .processes
        .iter()
        .find(|p| p.exe.as_deref().is_some_and(|e| e.ends_with("/leaker")))
        .expect("the leaker process")
}

fn findings_of<'a>(t: &'a Traced, kind: &str) -> Vec<&'a Finding> {
    t.report
        .findings
        .iter()
        .filter(|f| f.kind == kind)
        .collect()
}

#[test]
fn a_thread_per_message_worker_is_a_runaway_with_its_site_within_the_window() {
    let t = record(
        &["--runaway-window-secs", WINDOW],
        &[env!("LEAKER_BIN"), "leak", "20", "10"],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = leaker(&t);
    let f = findings_of(&t, "runaway_threads");
    assert_eq!(f.len(), 1, "{:#?}", t.report.findings);
    let f = f[0];
    assert_eq!(f.pid, Some(p.pid));
    assert_eq!(f.job, p.job);
    // Rising until the command ended; resolved if the last sample already saw the process
    // gone (its 200 thread exits may still be in flight then).
    assert!(f.state == "active" || f.state == "resolved", "{}", f.state);
    let e = &f.evidence;
    assert!(
        e["top_site"]
            .as_str()
            .is_some_and(|s| s.starts_with("tracer_test_message_handler_spawn")),
        "{e:#?}"
    );
    assert_eq!(e["exited"], 0);
    assert!(e["created"].as_u64().unwrap() >= 10);
    // Every new thread parks for good; the newest may not have reached its wait at the
    // sample (68 of 87 once on 6.1 under a slow emulator).
    let (parked, alive) = (
        e["new_threads_parked"].as_u64().unwrap(),
        e["new_threads_alive"].as_u64().unwrap(),
    );
    assert!(parked <= alive && parked * 10 >= alive * 7, "{e:#?}");
    assert!(
        e["mapped_growth_bytes"].as_i64().unwrap() > 0,
        "thread stacks: {e:#?}"
    );
    // The rise started with the first thread: the onset is within a few samples of the
    // process's start, and the finding came within the window (plus two samples).
    let onset_lag = f.since_ns.saturating_sub(p.first_seen_ns);
    assert!(
        onset_lag < 1_000_000_000,
        "onset {onset_lag} ns after the start"
    );
    let window = WINDOW.parse::<u64>().unwrap() * 1_000_000_000;
    assert!(
        f.detected_ns - f.since_ns <= window + 1_000_000_000,
        "onset to finding: {} ns",
        f.detected_ns - f.since_ns
    );
    assert!(f.summary.contains("live threads") && f.summary.contains("parked in futex"));
    assert_eq!(t.report.findings_match_live, Some(true));
    let text = String::from_utf8_lossy(&run_report(&t.path, &[]).stdout).into_owned();
    let first = text
        .lines()
        .find(|l| l.contains("runaway_threads"))
        .expect("in the text");
    assert!(first.contains(&format!("pid {}", p.pid)), "{first}");
}

#[test]
fn a_recycling_pool_raises_nothing() {
    let t = record(
        &["--runaway-window-secs", WINDOW],
        &[env!("LEAKER_BIN"), "pool", "8", "50", "8"],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = leaker(&t);
    assert!(
        p.threads_created >= 100,
        "the pool recycled: {}",
        p.threads_created
    );
    assert!(t.report.findings.is_empty(), "{:#?}", t.report.findings);
    assert_eq!(t.report.findings_match_live, Some(true));
}

#[test]
fn an_oom_kill_names_its_victim_job_limit_and_growth() {
    let cg = MemCgroup::new(64 << 20);
    let t = record(&[], &[workload(), "oom", cg.dir.to_str().expect("utf-8")]);
    assert_eq!(t.status, 128 + 9, "{}", t.stderr());
    let p = t.workload_proc();
    let f = findings_of(&t, "oom_kill");
    assert_eq!(f.len(), 1, "{:#?}", t.report.findings);
    let f = f[0];
    assert_eq!(f.pid, Some(p.pid));
    assert_eq!(f.job, p.job);
    let e = &f.evidence;
    assert_eq!(e["victim_pid"], p.pid);
    assert_eq!(e["memory_limit_bytes"], 64u64 << 20, "{e:#?}");
    let rss = e["rss_bytes"].as_u64().unwrap();
    assert!(rss > 32 << 20 && rss <= 80 << 20, "RSS at the kill: {rss}");
    assert!(f.summary.contains("OOM-killed") && f.summary.contains("64.0 MiB limit"));
    assert_eq!(t.report.findings_match_live, Some(true));
}

#[test]
fn a_job_oom_killed_again_and_again_is_a_crash_loop() {
    // A supervisor restarting a worker that dies of the same job every time (the Sidekiq
    // poison pill), four times.
    let cg = MemCgroup::new(64 << 20);
    let script = format!(
        "for i in 1 2 3 4; do {} oom {}; done; exit 0",
        workload(),
        cg.dir.display()
    );
    let t = record(&[], &["sh", "-c", &script]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let kills = findings_of(&t, "oom_kill");
    assert_eq!(kills.len(), 4, "{:#?}", t.report.findings);
    let c = findings_of(&t, "crash_loop");
    assert_eq!(c.len(), 1, "{:#?}", t.report.findings);
    let c = c[0];
    assert_eq!(c.pid, None, "a job-level finding");
    assert_eq!(c.job, kills[0].job);
    assert!(c.job.contains("tracer-test-oom-"), "{}", c.job);
    let e = &c.evidence;
    assert_eq!(
        (e["deaths"].as_u64(), e["oom_kills"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(e["memory_limit_bytes"], 64u64 << 20);
    let pids: Vec<u64> = e["pids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_u64())
        .collect();
    let mut killed: Vec<u64> = kills.iter().map(|k| u64::from(k.pid.unwrap())).collect();
    killed.sort_unstable();
    let mut sorted = pids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, killed, "the same four processes");
    assert!(c.summary.starts_with("4 deaths of "), "{}", c.summary);
    assert_eq!(t.report.findings_match_live, Some(true));
}

#[test]
fn a_cpython_thread_per_message_worker_is_a_runaway_created_in_the_interpreter() {
    let py = interpreter(PYTHON);
    // The shoryuken worker in Python: a thread per message, each waiting for good. It idles
    // 3 s at the end, so the finding's evidence is last refreshed while the threads are
    // parked: at exit they are woken to die, and a sample between a wake and the exit would
    // refresh it with none parked while the count still rises (seen once on 6.18 under TCG:
    // 0 of 41 new threads parked, 0 exited).
    let code = "import threading, time\n\
                never = threading.Event()\n\
                def extend_visibility():\n\
                \x20   never.wait()\n\
                for i in range(100):\n\
                \x20   threading.Thread(target=extend_visibility, daemon=True).start()\n\
                \x20   time.sleep(0.1)\n\
                time.sleep(3)\n";
    let t = record(
        &["--runaway-window-secs", WINDOW],
        &[py, "-I", "-S", "-c", code],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = process_of(&t, "/python3.11");
    let f = findings_of(&t, "runaway_threads");
    assert_eq!(f.len(), 1, "{:#?}", t.report.findings);
    let f = f[0];
    assert_eq!((f.pid, f.job.as_str()), (Some(p.pid), p.job.as_str()));
    let e = &f.evidence;
    assert!(
        e["top_site"]
            .as_str()
            .is_some_and(|s| s.starts_with("PyThread_start_new_thread")),
        "{e:#?}"
    );
    assert_eq!(e["exited"], 0);
    assert!(e["new_threads_parked"].as_u64().unwrap() >= 10, "{e:#?}");
    assert!(f.detected_ns - f.since_ns <= 6_000_000_000);
    assert_eq!(t.report.findings_match_live, Some(true));
}

/// A cgroup whose pids.max is `max`: on cgroup2 if its pids controller is there, else on the
/// v1 pids hierarchy, with cgroups of the same name in every other real hierarchy (v1 memory,
/// cgroup2), where the tracer looks for the process and reads a v1 pids limit at the same
/// path. Removed on drop.
struct PidsCgroup {
    dirs: Vec<std::path::PathBuf>,
    max_file: std::path::PathBuf,
}

impl PidsCgroup {
    fn new(max: u64) -> Self {
        use std::path::{Path, PathBuf};
        let name = format!("tracer-test-pids-{}", std::process::id());
        // Real hierarchies only (a guest's /sys/fs/cgroup/memory may be a plain directory
        // where v1 memory is not built in).
        let real = |root: &Path| root.join("cgroup.procs").exists();
        let v2: PathBuf = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|d| d.join("cgroup.controllers").exists())
            .expect("a cgroup2 hierarchy");
        let v2_pids = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "pids");
        let mut roots = Vec::new();
        if v2_pids {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+pids");
        } else {
            let v1 = Path::new("/sys/fs/cgroup/pids");
            assert!(real(v1), "no pids controller on cgroup2 or v1");
            roots.push(v1.to_path_buf());
        }
        roots.push(v2);
        let memory = Path::new("/sys/fs/cgroup/memory");
        if real(memory) {
            roots.push(memory.to_path_buf());
        }
        let dirs: Vec<PathBuf> = roots.iter().map(|r| r.join(&name)).collect();
        for d in &dirs {
            std::fs::create_dir_all(d).expect("creating the test cgroup");
        }
        let max_file = dirs[0].join("pids.max");
        std::fs::write(&max_file, max.to_string()).expect("pids.max");
        Self { dirs, max_file }
    }

    /// `sh -c` text that moves the shell into the cgroup(s), then runs `cmd`.
    fn enter_then(&self, cmd: &str) -> String {
        let mut s = String::new();
        for d in &self.dirs {
            s += &format!("echo $$ > {}/cgroup.procs && ", d.display());
        }
        s + "exec " + cmd
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn threads_heading_for_pids_max_are_forecast_and_resolve_when_the_limit_is_raised() {
    // Default windows: the forecast's rate is the slope over 30 s (found once 3/4 of it is
    // covered), the horizon an hour.
    let cg = PidsCgroup::new(1000);
    let script = cg.enter_then(&format!("{} leak 10 40", env!("LEAKER_BIN")));
    // 30 s in (about 300 threads, 70 s from the limit), the limit is raised out of reach.
    let raise = {
        let f = cg.max_file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(30));
            std::fs::write(f, "1000000").expect("raising pids.max");
        })
    };
    let t = record(&[], &["sh", "-c", &script]);
    raise.join().expect("raiser");
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = leaker(&t);
    let f = findings_of(&t, "limit_forecast");
    assert_eq!(f.len(), 1, "{:#?}", t.report.findings);
    let f = f[0];
    assert_eq!((f.pid, f.job.as_str()), (Some(p.pid), p.job.as_str()));
    assert!(f.job.contains("tracer-test-pids-"), "{}", f.job);
    let e = &f.evidence;
    assert_eq!(
        (e["resource"].as_str(), e["limit"].as_u64()),
        (Some("pids"), Some(1000))
    );
    let rate = e["rate_per_s"].as_f64().unwrap();
    assert!((7.0..=11.0).contains(&rate), "{e:#?}");
    let eta = e["eta_s"].as_u64().unwrap();
    assert!((40..=130).contains(&eta), "{e:#?}");
    assert!(f.detected_ns - f.since_ns <= 30_000_000_000, "{f:#?}");
    assert_eq!(
        f.state, "resolved",
        "the raised limit is out of reach: {f:#?}"
    );
    assert_eq!(t.report.findings_match_live, Some(true));
}

#[test]
fn a_worker_forking_a_process_per_message_is_a_job_level_runaway() {
    // A process per message (each one thread), 10 a second for 8 s, each living 12 s: no
    // process rises, the job does.
    let t = record(
        &["--runaway-window-secs", WINDOW],
        &[workload(), "forks", "80", "10", "12"],
    );
    assert_eq!(t.status, 0, "{}", t.stderr());
    let f = findings_of(&t, "runaway_threads");
    assert_eq!(f.len(), 1, "{:#?}", t.report.findings);
    let f = f[0];
    // The parent and its 80 children, all in the job.
    let procs: Vec<_> = t
        .report
        .processes
        .iter()
        .filter(|p| p.comm == "workload")
        .collect();
    assert_eq!(procs.len(), 81, "{procs:#?}");
    assert_eq!((f.pid, f.job.as_str()), (None, procs[0].job.as_str()));
    let e = &f.evidence;
    assert!(e["processes_end"].as_u64().unwrap() >= 20, "{e:#?}");
    assert!(e["created"].as_u64().unwrap() >= 20, "{e:#?}");
    assert_eq!(e["exited"], 0, "{e:#?}");
    assert!(f.detected_ns - f.since_ns <= 6_000_000_000, "{f:#?}");
    assert_eq!(t.report.findings_match_live, Some(true));
}
