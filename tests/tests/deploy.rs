//! deploy/: the Kubernetes manifests pass a real schema validator (kubernetes-validate from
//! PyPI, offline, --strict), and the validator is shown to reject a broken copy. Host only:
//! the guests have no Python.

mod common;

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    let bin = root().join("target/tools/venv/bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo xtask setup` installs it (pip, in a virtualenv)",
        bin.display()
    );
    Command::new(bin)
        .arg("--strict")
        .args(files)
        .output()
        .expect("running kubernetes-validate")
}

#[test]
fn the_manifests_pass_strict_schema_validation() {
    let ds = root().join("deploy/daemonset.yaml");
    let out = validate(&[ds.clone(), root().join("deploy/servicemonitor.yaml")]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for kind in ["namespace/tracer", "daemonset/tracer", "service/tracer"] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }
    let yaml = std::fs::read_to_string(&ds).unwrap();
    // What the DaemonSet must say, whatever else changes.
    for needed in [
        "hostPID: true",
        "privileged: false",
        "add: [\"BPF\", \"PERFMON\", \"DAC_READ_SEARCH\", \"SYS_PTRACE\"]",
        "path: /sys/kernel/btf",
        "path: /sys/kernel/tracing",
        "path: /sys/fs/cgroup",
        "path: /var/log/pods",
        "path: /var/log/containers",
        "prometheus.io/scrape: \"true\"",
        "path: /healthz",
    ] {
        assert!(
            yaml.contains(needed),
            "{needed} missing from daemonset.yaml"
        );
    }
    // The validator rejects what it should: an unknown field under --strict.
    let broken = common::temp_path("broken.yaml");
    std::fs::write(
        &broken,
        yaml.replace("hostPID: true", "hostPID: true\n      hostPid: true"),
    )
    .unwrap();
    assert!(!validate(&[broken]).status.success(), "a typo must fail");
}

#[test]
fn the_dashboard_queries_only_metrics_the_daemon_exports() {
    let text = std::fs::read_to_string(root().join("deploy/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let source = std::fs::read_to_string(root().join("tracer/src/metrics/mod.rs")).unwrap();
    let mut names = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("an expr");
            let mut rest = expr;
            while let Some(i) = rest.find(|c: char| c.is_ascii_lowercase()) {
                rest = &rest[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                let word = &rest[..end];
                if word.starts_with("tracer_") || word.starts_with("process_") {
                    names.push(word.to_owned());
                }
                rest = &rest[end..];
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for n in names {
        // Counters are registered without `_total` (the encoder adds it).
        let registered = n.strip_suffix("_total").unwrap_or(&n);
        assert!(
            source.contains(&format!("\"{registered}\"")),
            "the dashboard queries {n}, which the daemon does not export"
        );
    }
}
