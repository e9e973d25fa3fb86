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
    assert_eq!(e["new_threads_parked"], e["new_threads_alive"]);
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
