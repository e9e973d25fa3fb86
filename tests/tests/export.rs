//! `tracer export`: a real recording as JSON lines (every record, in order, checked against
//! the file's own events and report) and as a Perfetto trace decoded back with the same schema.

mod common;

use common::*;

fn export(path: &std::path::Path, format: &str) -> std::process::Output {
    run_tracer(&["export", path.to_str().unwrap(), "--format", format])
}

#[test]
fn jsonl_holds_every_record_in_order_and_escapes_names() {
    let name = "\x1b[31mX\x07";
    let script = format!(
        "{} park 3 800 & {} rename '{name}' 300; wait",
        workload(),
        workload()
    );
    let t = record(&[], &["sh", "-c", &script]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let out = export(&t.path, "jsonl");
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        !out.stdout.contains(&0x1b),
        "control bytes are JSON-escaped"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.first().unwrap()["type"], "start");
    assert_eq!(lines.last().unwrap()["type"], "end");
    let events: Vec<_> = lines.iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), t.events.len(), "every event");
    for (j, e) in events.iter().zip(&t.events) {
        let h = e.header();
        assert_eq!(e_header(j), (h.ts_ns, h.tgid, h.tid), "{j}");
    }
    // The counts a reader would compute agree with the report's.
    // The parking workload: its main thread ran `park` (the other renamed itself).
    let w = t
        .report
        .processes
        .iter()
        .find(|p| {
            p.exe.as_deref().is_some_and(|e| e.ends_with("/workload")) && p.comm == "workload"
        })
        .unwrap_or_else(|| panic!("{:#?}", t.report.processes));
    let created = events
        .iter()
        .filter(|e| e["event"] == "new_task" && e["thread"] == true && e["pid"] == w.pid)
        .count() as u64;
    assert_eq!(created, w.threads_created);
    assert_eq!(created, 3);
    let parks = events
        .iter()
        .filter(|e| e["event"] == "futex_wait" && e["pid"] == w.pid)
        .filter(|e| e["duration_ns"].as_u64().unwrap() >= 700_000_000)
        .count();
    assert_eq!(parks, 3, "each parked thread's 800 ms wait");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "rename" && l["comm"] == name),
        "the hostile name, intact inside JSON"
    );
    // A closed pipe is a normal end, not an error.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} export {} --format jsonl | head -1 >/dev/null",
            tracer_bin().display(),
            t.path.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

fn e_header(e: &serde_json::Value) -> (u64, u32, u32) {
    (
        e["ts_ns"].as_u64().unwrap(),
        e["pid"].as_u64().unwrap() as u32,
        e["tid"].as_u64().unwrap() as u32,
    )
}
