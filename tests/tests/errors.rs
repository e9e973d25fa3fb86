//! Bad input gets a clear error that says what, where and what to do, and loses nothing
//! already recorded.

mod common;

use std::process::Command;

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

#[test]
fn not_root() {
    require_root();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer_bin())
        .args(["record", "-o", "/tmp/never-written.trc", "-d", "1"])
        .output()
        .expect("setpriv");
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("must run as root") && e.contains("sudo"), "{e}");
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
