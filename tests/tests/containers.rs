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
