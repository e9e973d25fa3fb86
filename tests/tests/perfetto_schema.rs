//! `export --format perfetto` read with Perfetto's own schema and importer rules
//! (tests/perfetto_check.py on the perfetto PyPI package's generated protos, newer than the
//! crate the exporter is built on): no field the schema does not know, one sequence that
//! clears incremental state, tracks described before use, slices that nest per track after
//! the importer's sort, counters on counter tracks, flows that end where they began. The
//! checker is shown to fail on a truncated file and on an unknown field. Host only: the
//! guests have no Python.

mod common;

use std::{path::PathBuf, process::Command};

use common::*;

fn checker(trace: &std::path::Path) -> (bool, serde_json::Value) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../target/tools/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: `cargo xtask setup` makes the virtualenv with perfetto and protobuf",
        python.display()
    );
    let out = Command::new(python)
        .arg(root.join("perfetto_check.py"))
        .arg(trace)
        .output()
        .expect("running perfetto_check.py");
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "perfetto_check.py printed no JSON ({e}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        )
    });
    (out.status.success(), summary)
}

/// The checker refuses `trace`, its first error saying `why`.
fn fails_with(trace: &std::path::Path, why: &str) {
    let (ok, s) = checker(trace);
    assert!(!ok, "{s:#}");
    let first = s["errors"][0].as_str().unwrap_or_default();
    assert!(first.contains(why), "{why:?}: {s:#}");
}

/// A TracePacket framed as field 1 of Trace.
fn frame(body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "one-byte length");
    let mut v = vec![0x0a, body.len() as u8];
    v.extend_from_slice(body);
    v
}

#[test]
fn perfetto_export_passes_perfettos_own_schema_and_importer_rules() {
    // The export test's recording: timed parks, then a leaker's 40 threads parked for good.
    let (_, out_path, out) = perfetto_of_parkers_and_a_leaker();
    let written: u64 = stderr_of(&out)
        .split("written=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("the export logs how many packets it wrote");
    let (ok, s) = checker(&out_path);
    assert!(ok, "{s:#}");
    assert_eq!(s["error_count"], 0);
    assert_eq!(s["packets"], written, "every packet parsed: {s:#}");
    assert_eq!(s["sequences"], 1);
    let futex = s["slices"]["futex wait"].as_u64().unwrap_or(0);
    assert!(futex >= 43, "3 timed parks and 40 still parked: {s:#}");
    let threads = s["tracks"]["thread"].as_u64().unwrap();
    let lifetimes = s["slices"]["thread"].as_u64().unwrap_or(0);
    assert!(
        lifetimes >= 43 && lifetimes <= threads,
        "a lifetime per traced thread: {s:#}"
    );
    let flows = s["flows_begun"].as_u64().unwrap();
    assert!(flows >= 43, "a flow per created thread: {s:#}");
    assert_eq!(s["flows_terminated"], flows);
    let names = &s["counter_tracks_by_name"];
    assert!(names["RSS"].as_u64().unwrap() >= 1, "{s:#}");
    assert_eq!(names["RSS"], names["mapped bytes"]);
    assert_eq!(names["RSS"], names["live threads"]);
    assert!(s["counter_values"].as_u64().unwrap() >= 3);
    assert!(
        s["instants"]["finding:"].as_u64().unwrap_or(0) >= 1,
        "{s:#}"
    );

    // The checker fails: a file cut inside its last packet ...
    let bytes = std::fs::read(&out_path).unwrap();
    let cut = temp_path("cut.pftrace");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    fails_with(&cut, "runs past the end of the file");
    // ... and a packet with a field Perfetto's schema does not have (number 9999, varint).
    let mut odd = bytes.clone();
    odd.extend(frame(&[0x50, 0x01, 0xf8, 0xf0, 0x04, 0x01]));
    let path = temp_path("unknown-field.pftrace");
    std::fs::write(&path, odd).unwrap();
    fails_with(&path, "fields unknown to Perfetto's schema");
}
