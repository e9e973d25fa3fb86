//! Bad input gets a clear error that says what, where and what to do, and loses nothing
//! already recorded.

mod common;

use std::process::{Command, Stdio};

use common::{run_tracer as tracer, stderr_of as stderr, *};

#[test]
fn a_pid_that_does_not_exist() {
    require_root();
    let f = temp_path("nopid.trc");
    let o = tracer(&[
        "record",
        "-o",
        f.to_str().unwrap(),
        "-p",
        "999999999",
        "-d",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("999999999") && e.contains("no such process"),
        "{e}"
    );
    assert!(
        !f.exists(),
        "no file is left behind for a run that never started"
    );
}

/// `setpriv` as the unprivileged user `nobody` with exactly these capabilities (`+bpf,...`).
/// RLIMIT_MEMLOCK is raised first (by root, inherited): kernels before 5.11 charge map memory
/// to it, and without CAP_SYS_RESOURCE the tracer cannot raise it itself.
fn as_nobody_with(caps: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("setpriv");
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited);
            Ok(())
        })
    };
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
    if !caps.is_empty() {
        for opt in ["--inh-caps", "--ambient-caps", "--bounding-set"] {
            c.arg(format!("{opt}=-all,{caps}"));
        }
    }
    c.arg(tracer_bin());
    c
}

#[test]
fn least_privilege_is_four_capabilities_and_less_is_refused_or_said() {
    require_root();
    let dir = temp_path("caps");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let record = |caps: &str, name: &str| {
        let file = dir.join(name);
        let o = as_nobody_with(caps)
            .args(["record", "--sample-ms", "100", "-o"])
            .arg(&file)
            .args(["--", workload(), "park", "2", "600"])
            .output()
            .expect("setpriv");
        (o, file)
    };
    // Not root, no capability: refused, saying what is missing and what to do.
    let (o, file) = record("", "none.trc");
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("needs CAP_BPF and CAP_PERFMON") && e.contains("sudo"),
        "{e}"
    );
    assert!(!file.exists());
    // One of the two that cannot be done without: refused, naming it.
    let (o, _) = record("+bpf,+dac_read_search,+sys_ptrace", "noperfmon.trc");
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("needs CAP_PERFMON"), "{}", stderr(&o));
    // The four: everything a root recording has. Except where the kernel has Debian's extra
    // perf_event_paranoid level 3 (Debian and Ubuntu kernels: only CAP_SYS_ADMIN opens perf
    // events): there the classic tracepoints (exec, OOM kills) are refused, saying why.
    let (o, file) = record("+bpf,+perfmon,+dac_read_search,+sys_ptrace", "four.trc");
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_report(&file);
    let paranoid: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map_or(2, |v| v.trim().parse().unwrap_or(2));
    for p in &r.probes {
        let classic = p.name.starts_with("tracepoint/");
        if paranoid > 2 && classic && !p.attached {
            let e = p.error.as_deref().unwrap_or("");
            assert!(e.contains("perf_event_paranoid is 3"), "{p:#?}");
        } else {
            assert!(p.attached, "{:#?}", r.probes);
        }
    }
    let p = r
        .processes
        .iter()
        .find(|p| p.comm.ends_with("workload"))
        .expect("the workload (named by its exec, or by the command when exec is not traced)");
    assert_eq!((p.threads_created, p.threads_exited), (2, 2), "{p:#?}");
    assert_eq!(p.futex_parked_peak, 2, "{p:#?}");
    assert_eq!(p.exit_code, Some(0));
    // Without CAP_DAC_READ_SEARCH tracefs is closed: the classic tracepoints are not
    // attached, said on stderr and in the file, and the rest runs.
    let (o, file) = record("+bpf,+perfmon,+sys_ptrace", "nodac.trc");
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("CAP_DAC_READ_SEARCH"), "{e}");
    let r = read_report(&file);
    let exec = r
        .probes
        .iter()
        .find(|p| p.name == "tracepoint/sched/sched_process_exec")
        .expect("exec probe listed");
    assert!(!exec.attached);
    // Where tracefs lets `nobody` in anyway, Debian's paranoid level refuses the next step.
    let why = exec.error.as_deref().unwrap_or("");
    assert!(
        why.contains("not readable") || (paranoid > 2 && why.contains("perf_event_paranoid")),
        "{why}"
    );
}

#[test]
fn a_command_that_cannot_run() {
    let t = record(&[], &["/nonexistent/command"]);
    assert_eq!(t.status, 127);
    assert!(
        t.stderr().contains("cannot run `/nonexistent/command`"),
        "{}",
        t.stderr()
    );
}

#[test]
fn bad_arguments() {
    let o = tracer(&["record", "-d", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--output"), "{}", stderr(&o));
    let o = tracer(&["record", "-o", "/tmp/x.trc", "--sample-ms", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--sample-ms"), "{}", stderr(&o));
    let o = tracer(&["record", "-o", "/tmp/x.trc", "-d", "-3"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn report_of_files_that_are_not_traces() {
    let missing = tracer(&["report", "/nonexistent/trace.trc"]);
    assert_eq!(missing.status.code(), Some(2));
    let e = stderr(&missing);
    assert!(
        e.contains("cannot open trace file /nonexistent/trace.trc"),
        "{e}"
    );

    let garbage = temp_path("garbage.trc");
    std::fs::write(&garbage, b"this is not a trace file at all").unwrap();
    let o = run_report(&garbage, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("not a tracer trace file"), "{e}");
    assert!(
        e.contains(garbage.to_str().unwrap()),
        "says which file: {e}"
    );
}

#[test]
fn a_file_cut_short_reads_back_to_its_last_complete_block() {
    // A recording with several blocks (one per 100 ms sample), then cut mid-block, as a
    // SIGKILL or a full disk would leave it.
    let t = record(&[], &[workload(), "poll", "4", "60"]);
    let full = std::fs::read(&t.path).unwrap();
    let cut = temp_path("cut.trc");
    std::fs::write(&cut, &full[..full.len() * 2 / 3]).unwrap();
    let o = run_report(&cut, &["--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("warning") && e.contains("cut short"), "{e}");
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        doc["truncated"]
            .as_str()
            .is_some_and(|s| s.contains("byte"))
    );
    assert_eq!(doc["end_reason"], serde_json::Value::Null);
    let procs = doc["processes"].as_array().unwrap();
    assert!(
        !procs.is_empty(),
        "what was recorded before the cut is reported"
    );
    let text = run_report(&cut, &[]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("WARNING"));
}

#[test]
fn lost_events_are_counted_and_shown() {
    require_root();
    // A one-page ring buffer and every futex call streamed: the workload outruns the
    // collector's 10 ms drain, and the kernel counts what did not fit.
    let path = temp_path("lossy.trc");
    let o = run_record(
        &path,
        &["--ring-kib", "4", "--min-wait-ms", "0"],
        &[workload(), "bench", "futex-eagain", "300000"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("WARNING") && e.contains("lost"),
        "record warns: {e}"
    );
    let r = read_report(&path);
    assert!(r.lost_events > 0, "losses are counted");
    assert!(r.kernel_counters["lost_events"] > 0);
    let text = run_report(&path, &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("events lost in the kernel"),
        "report shows them: {text}"
    );
}

#[test]
fn ring_size_must_be_a_power_of_two() {
    let o = tracer(&["record", "-o", "/tmp/x.trc", "--ring-kib", "100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--ring-kib must be a power of two"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_full_disk_stops_recording_with_a_clear_error_and_keeps_what_was_written() {
    require_root();
    let dir = temp_path("small-fs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mounting a small tmpfs");
    let path = dir.join("full.trc");
    // Every futex call streamed: ~64 bytes each, far more than 4 MiB.
    let o = run_record(
        &path,
        &["--sample-ms", "50", "--min-wait-ms", "0"],
        &[workload(), "bench", "futex-eagain", "1000000"],
    );
    let e = stderr(&o);
    let report = run_report(&path, &["--format", "json"]);
    let _ = Command::new("umount").arg(&dir).status();
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("disk full") && e.contains("full.trc"), "{e}");
    assert!(report.status.success(), "{}", stderr(&report));
    let doc: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(
        doc["host"]["events"].as_u64().unwrap() > 1000,
        "what was written before the disk filled is readable"
    );
}

#[test]
fn a_duration_too_large_is_refused_not_a_panic() {
    let o = tracer(&["record", "-o", "/tmp/never-written.trc", "-d", "1e30"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--duration") && e.contains("at most"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn a_closed_stdout_stops_report_and_live_cleanly() {
    require_root();
    let t = record(&[], &[workload(), "park", "2", "100"]);
    // `tracer report FILE | head -1`, the reader gone before the first write.
    for args in [&["report"][..], &["report", "--format", "json"][..]] {
        let mut child = Command::new(tracer_bin())
            .args(args)
            .arg(&t.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tracer report");
        drop(child.stdout.take());
        let o = child.wait_with_output().expect("wait");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // `tracer live -o FILE | head -1`: it stops at its first table, and the file is complete.
    let file = temp_path("live-closed.trc");
    let mut child = Command::new(tracer_bin())
        .args(["live", "--every", "0.5", "-o"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer live");
    drop(child.stdout.take());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "tracer live did not stop when its stdout closed"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let o = child.wait_with_output().expect("output");
    assert_eq!(status.code(), Some(0), "{}", stderr(&o));
    let r = read_report(&file);
    assert_eq!(r.end_reason.as_deref(), Some("output closed"));
    assert_eq!(r.truncated, None);
}

#[test]
fn a_recording_without_its_end_record_says_so() {
    require_root();
    // A recorder killed with SIGKILL: its blocks are complete, its end record never came.
    let file = temp_path("killed.trc");
    let mut child = Command::new(tracer_bin())
        .args(["record", "--sample-ms", "100", "-d", "60", "-o"])
        .arg(&file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer record");
    let started = std::time::Instant::now();
    // Wait for a few flushed blocks (one per sample).
    while std::fs::metadata(&file).map_or(0, |m| m.len()) < 4096 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().expect("kill");
    let _ = child.wait();
    let o = run_report(&file, &["--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["end_reason"], serde_json::Value::Null);
    let why = doc["truncated"].as_str().unwrap_or_default();
    assert!(why.contains("no end record"), "{doc:#}");
    assert!(stderr(&o).contains("no end record"), "{}", stderr(&o));
}

#[test]
fn after_lost_events_counts_are_lower_bounds() {
    require_root();
    // A storm (every futex call streamed into a one-page ring buffer) while processes are
    // born, exec, grow their heap, and create threads: events are lost, and whatever was
    // lost, no count may exceed what really happened.
    let w = workload();
    let script = format!(
        "{w} bench futex-eagain 400000 & {w} children 10 10 & {w} brk 4 65536 & \
         {w} park 8 300 & {w} park 8 300 & wait"
    );
    let path = temp_path("storm.trc");
    let o = run_record(
        &path,
        &[
            "--ring-kib",
            "4",
            "--min-wait-ms",
            "0",
            "--sample-ms",
            "100",
        ],
        &["sh", "-c", &script],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_report(&path);
    assert!(
        r.lost_events > 0,
        "the storm must lose events to test anything"
    );
    for p in r.processes.iter().filter(|p| !p.seeded) {
        // One main thread and at most 8 workers in any of these processes.
        assert!(p.threads_peak <= 9, "{p:#?}");
        assert!(p.threads_created <= 8, "{p:#?}");
        assert!(p.threads_exited <= p.threads_created, "{p:#?}");
        // The brk workload grows by 4 x 64 KiB; the others barely move their break.
        assert!(p.brk_growth_bytes <= 16 << 20, "{p:#?}");
    }
}
