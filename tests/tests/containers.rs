//! A workload in a real container: podman with runc (crun refuses hybrid cgroups), from an
//! image built here `FROM scratch` (there is no registry), traced from the host. Its job must
//! be the container, by name. Host only: the kernel matrix's guests have no container runtime.

mod common;

use std::process::Command;

use common::*;

const RUNTIME: &str = "/usr/sbin/runc";

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("running podman (apt-get install podman runc; `cargo xtask setup` does)")
}

/// An image with the C spawner and the glibc files it loads.
fn build_image(tag: &str) {
    let dir = temp_path("image");
    std::fs::create_dir_all(&dir).unwrap();
    let mut containerfile = String::from("FROM scratch\n");
    let spawner = env!("SPAWNER_BIN");
    std::fs::copy(spawner, dir.join("spawner")).unwrap();
    containerfile += "COPY spawner /spawner\n";
    let ldd = Command::new("ldd").arg(spawner).output().expect("ldd");
    for (i, lib) in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .enumerate()
    {
        std::fs::copy(lib, dir.join(format!("lib{i}"))).unwrap();
        containerfile += &format!("COPY lib{i} {lib}\n");
    }
    containerfile += "ENTRYPOINT [\"/spawner\"]\n";
    std::fs::write(dir.join("Containerfile"), containerfile).unwrap();
    let out = podman(&["build", "-q", "-t", tag, dir.to_str().unwrap()]);
    assert!(out.status.success(), "podman build: {}", stderr_of(&out));
}

#[test]
fn a_workload_in_a_podman_container_is_in_its_job() {
    require_root();
    assert!(
        std::path::Path::new(RUNTIME).is_file(),
        "{RUNTIME} is missing (apt-get install runc)"
    );
    let tag = format!("localhost/tracer-test-spawner-{}", std::process::id());
    let name = format!("tracer-test-{}", std::process::id());
    build_image(&tag);
    let t = record(
        &[],
        &[
            "podman",
            "--runtime",
            RUNTIME,
            "run",
            "--rm",
            "--cgroup-manager",
            "cgroupfs",
            "--ulimit",
            "nproc=4096:4096",
            "--ulimit",
            "nofile=4096:4096",
            "--name",
            &name,
            &tag,
            "7",
            "300",
        ],
    );
    let _ = podman(&["rmi", "-f", &tag]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = t
        .report
        .processes
        .iter()
        .find(|p| p.exe.as_deref() == Some("/spawner"))
        .unwrap_or_else(|| panic!("the container's process: {:#?}", t.report.processes));
    assert_eq!(p.job, format!("podman:{name}"), "{p:#?}");
    assert_eq!(p.job_info.kind, "podman");
    let id = p.job_info.container_id.as_deref().expect("a container id");
    assert_eq!(id.len(), 64);
    assert!(p.job_info.cgroup.contains(id), "{:?}", p.job_info);
    let site = p
        .creator_sites
        .iter()
        .find(|s| s.site.starts_with("tracer_test_spawn_site_q7"))
        .unwrap_or_else(|| panic!("the spawner's site: {:#?}", p.creator_sites));
    assert_eq!(
        site.threads, 7,
        "unwound inside the container's mount namespace"
    );
    let j = t
        .report
        .jobs
        .iter()
        .find(|j| j.job == p.job)
        .expect("the container's job");
    assert!(j.pids.contains(&p.pid));
}

/// The capabilities deploy/daemonset.yaml adds (its `add: [...]` line), so that the test runs
/// what the manifest grants, no more.
fn manifest_caps() -> Vec<String> {
    let yaml = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml"),
    )
    .expect("deploy/daemonset.yaml");
    let line = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("an `add: [...]` capabilities line");
    line.trim_end_matches(']')
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_owned())
        .collect()
}

/// GET over plain TCP: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_owned()))
}

#[test]
fn the_daemon_runs_in_a_scratch_image_with_only_the_manifests_capabilities() {
    require_root();
    let bin = dist_bin();
    let dist = bin.parent().expect("target/dist");
    let tag = format!("localhost/tracer-test-daemon-{}", std::process::id());
    let out = podman(&[
        "build",
        "-q",
        "-t",
        &tag,
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/Dockerfile"),
        dist.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "podman build: {}", stderr_of(&out));
    let caps = manifest_caps();
    assert_eq!(caps, ["BPF", "PERFMON", "DAC_READ_SEARCH", "SYS_PTRACE"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let name = format!("tracer-test-daemon-{}", std::process::id());
    let listen = format!("127.0.0.1:{port}");
    let cap_add = format!("--cap-add={}", caps.join(","));
    // What the DaemonSet sets: host pids, all capabilities dropped but the manifest's,
    // seccomp unconfined, a read-only root, read-only host mounts. Host network stands in
    // for the pod network (this machine has no CNI).
    let out = podman(&[
        "--runtime",
        RUNTIME,
        "run",
        "-d",
        "--name",
        &name,
        "--cgroup-manager",
        "cgroupfs",
        "--ulimit",
        "nproc=4096:4096",
        "--ulimit",
        "nofile=4096:4096",
        "--pid=host",
        "--network=host",
        "--cap-drop=all",
        &cap_add,
        "--security-opt",
        "seccomp=unconfined",
        "--read-only",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        &tag,
        "daemon",
        "--listen",
        &listen,
        "--sample-ms",
        "200",
        "--runaway-window-secs",
        "5",
    ]);
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = podman(&["rm", "-f", &self.0]);
            let _ = podman(&["rmi", "-f", &self.1]);
        }
    }
    let _cleanup = Cleanup(name.clone(), tag.clone());
    assert!(out.status.success(), "podman run: {}", stderr_of(&out));
    let logs = || String::from_utf8_lossy(&podman(&["logs", &name]).stderr).into_owned();
    let t = std::time::Instant::now();
    while get(port, "/healthz").is_none_or(|r| r.0 != 200) {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "not healthy in 60 s: {:?}\n{}",
            get(port, "/healthz"),
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // A leaker on the host, seen from inside the container.
    let mut leaker = Command::new(env!("LEAKER_BIN"))
        .args(["leak", "10", "20"])
        .spawn()
        .expect("the leaker");
    let pid = leaker.id().to_string();
    let t = std::time::Instant::now();
    let scrape = loop {
        let (status, body) = get(port, "/metrics").expect("a scrape");
        assert_eq!(status, 200);
        if body.lines().any(|l| {
            l.starts_with("tracer_job_findings{")
                && l.contains("finding=\"runaway_threads\"")
                && l.ends_with(" 1")
        }) {
            break body;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(40),
            "no runaway finding in 40 s:\n{body}\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let _ = leaker.kill();
    let _ = leaker.wait();
    let threads = scrape
        .lines()
        .find(|l| l.starts_with("tracer_process_threads{") && l.contains(&format!("pid=\"{pid}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("the leaker among the top processes:\n{scrape}"));
    assert!(threads >= 11, "{threads}");
    // Every probe attached with the manifest's capabilities.
    let probes: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("tracer_probe_attached{"))
        .collect();
    assert!(probes.len() >= 8, "{probes:?}");
    assert!(probes.iter().all(|l| l.ends_with(" 1")), "{probes:?}");
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
}
