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
