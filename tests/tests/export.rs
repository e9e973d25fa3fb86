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

#[test]
fn perfetto_decodes_back_to_the_traces_tracks_slices_counters_and_flows() {
    use std::collections::{HashMap, HashSet};

    use perfetto_protos::{
        trace::Trace, trace_packet::trace_packet::Data, track_event::track_event::Type,
    };
    use protobuf::Message as _;

    // The parkers and the leaker's runaway (see the helper).
    let (t, out_path, _) = perfetto_of_parkers_and_a_leaker();
    let bytes = std::fs::read(&out_path).unwrap();
    let trace = Trace::parse_from_bytes(&bytes).expect("a Trace: TracePackets framed as field 1");
    let mut threads: HashMap<u64, (i32, i32)> = HashMap::new();
    let mut processes: HashMap<u64, i32> = HashMap::new();
    let mut counters: HashMap<u64, (u64, String)> = HashMap::new();
    let mut events = Vec::new();
    for p in &trace.packet {
        assert_eq!(p.trusted_packet_sequence_id(), 1);
        match &p.data {
            Some(Data::TrackDescriptor(d)) => {
                if let Some(th) = d.thread.as_ref() {
                    threads.insert(d.uuid(), (th.pid(), th.tid()));
                } else if let Some(pr) = d.process.as_ref() {
                    processes.insert(d.uuid(), pr.pid());
                } else if d.counter.is_some() {
                    counters.insert(d.uuid(), (d.parent_uuid(), d.name().to_owned()));
                }
            }
            Some(Data::TrackEvent(e)) => events.push((p.timestamp(), e.clone())),
            _ => {}
        }
    }
    // A thread track per thread the trace saw, under its process's track.
    let tids: HashSet<i32> = threads.values().map(|t| t.1).collect();
    for e in &t.events {
        if let tracer::events::Event::NewTask(n) = e {
            assert!(
                tids.contains(&(n.child_tid as i32)),
                "no track for {}",
                n.child_tid
            );
        }
    }
    let pids: HashSet<i32> = processes.values().copied().collect();
    for p in &t.report.processes {
        assert!(
            pids.contains(&(p.pid as i32)),
            "no track for process {}",
            p.pid
        );
    }
    // Every track an event names was described.
    for (_, e) in &events {
        let u = e.track_uuid();
        assert!(
            threads.contains_key(&u)
                || processes.contains_key(&u)
                || counters.contains_key(&u)
                || u == 4 << 60,
            "undescribed track {u:#x}"
        );
    }
    // Slices: begins and ends pair up per track, properly nested (in time order).
    let mut by_track: HashMap<u64, Vec<(u64, Type, String)>> = HashMap::new();
    for (ts, e) in &events {
        by_track
            .entry(e.track_uuid())
            .or_default()
            .push((*ts, e.type_(), e.name().to_owned()));
    }
    let mut waits = HashMap::<String, u64>::new();
    for (track, mut evs) in by_track {
        evs.sort_by_key(|e| (e.0, e.1 == Type::TYPE_SLICE_BEGIN));
        let mut stack: Vec<(u64, String)> = Vec::new();
        for (ts, ty, name) in evs {
            match ty {
                Type::TYPE_SLICE_BEGIN => stack.push((ts, name)),
                Type::TYPE_SLICE_END => {
                    let (b, name) = stack
                        .pop()
                        .unwrap_or_else(|| panic!("unmatched end on {track:#x}"));
                    assert!(ts >= b);
                    if name.ends_with("wait") {
                        *waits.entry(name).or_default() += 1;
                        if ts - b >= 700_000_000 {
                            *waits.entry("long".into()).or_default() += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed slices on {track:#x}: {stack:?}");
    }
    let streamed = t
        .events
        .iter()
        .filter(|e| matches!(e, tracer::events::Event::FutexWait(_)))
        .count() as u64;
    let park = t
        .report
        .processes
        .iter()
        .find(|p| p.exe.as_deref().is_some_and(|e| e.ends_with("/workload")))
        .unwrap();
    let leaker = t
        .report
        .processes
        .iter()
        .find(|p| p.exe.as_deref().is_some_and(|e| e.ends_with("/leaker")))
        .unwrap();
    // Every streamed futex wait, plus the leaker's threads still parked at the end.
    let futex = waits.get("futex wait").copied().unwrap_or(0);
    assert!(
        futex >= streamed + leaker.futex_parked_now as u64 - 1,
        "{futex} vs {streamed}"
    );
    assert!(
        futex <= streamed + leaker.threads_live as u64,
        "{futex} vs {streamed}"
    );
    assert!(waits["long"] >= 3, "the 800 ms parks: {waits:?}");
    // Counters: RSS, mapped bytes and live threads per process; the leaker's live-threads
    // counter climbs with its leak (40 threads over 4 s, sampled every 100 ms). Its peak, not
    // its last value: a sample can land while the leaker exits, its threads dying one by one
    // (CI's 6.1 run once saw 1 as the last value).
    let names: HashSet<&str> = counters.values().map(|c| c.1.as_str()).collect();
    assert_eq!(
        names,
        HashSet::from(["RSS", "mapped bytes", "live threads"])
    );
    let leaker_track = processes
        .iter()
        .find(|&(_, &p)| p == leaker.pid as i32)
        .map(|(u, _)| *u)
        .unwrap();
    let leaker_threads: Vec<i64> = events
        .iter()
        .filter(|(_, e)| {
            e.type_() == Type::TYPE_COUNTER
                && counters
                    .get(&e.track_uuid())
                    .is_some_and(|c| c.0 == leaker_track && c.1 == "live threads")
        })
        .map(|(_, e)| e.counter_value())
        .collect();
    let peak = leaker_threads.iter().max().copied();
    assert!(
        peak >= Some(15),
        "the leaker's live threads: {leaker_threads:?}"
    );
    // Flows: each created thread's lifetime slice terminates the flow its creator began.
    let begun: HashSet<u64> = events
        .iter()
        .flat_map(|(_, e)| e.flow_ids.clone())
        .collect();
    let ended: HashSet<u64> = events
        .iter()
        .flat_map(|(_, e)| e.terminating_flow_ids.clone())
        .collect();
    assert_eq!(begun, ended);
    assert!(begun.len() as u64 >= park.threads_created + leaker.threads_created);
    // Findings as instants: the leaker's runaway.
    assert!(
        events.iter().any(|(_, e)| e.type_() == Type::TYPE_INSTANT
            && e.name() == format!("finding: runaway_threads pid {}", leaker.pid)),
        "{:#?}",
        t.report.findings
    );
}
