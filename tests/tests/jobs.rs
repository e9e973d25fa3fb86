//! Jobs: real cgroups in the shapes container runtimes, kubelet and systemd make, in the v2 and
//! the v1 (memory) hierarchies, with kubelet-style log entries where the shape calls for them.
//! A workload runs in each; the report must name its job.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Directories and files this test created, removed (deepest first) when it ends, pass or fail.
#[derive(Default)]
struct Created {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Created {
    fn dir_all(&mut self, d: &Path) {
        let mut missing = Vec::new();
        let mut cur = Some(d);
        while let Some(p) = cur {
            if p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        missing.reverse();
        self.dirs.extend(missing);
    }

    fn file(&mut self, f: &Path) {
        self.dir_all(f.parent().expect("a parent"));
        std::fs::write(f, "").unwrap_or_else(|e| panic!("creating {}: {e}", f.display()));
        self.files.push(f.to_path_buf());
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A 64-hex container id unique to this run and shape.
fn id(n: u32) -> String {
    format!(
        "{:08x}{:056x}",
        std::process::id(),
        0xc0de_0000u64 + u64::from(n)
    )
}

fn uid(n: u32) -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        std::process::id(),
        0xbeef_0000u64 + u64::from(n)
    )
}

struct Shape {
    /// Path relative to the hierarchy's root.
    path: String,
    job: String,
    kind: &'static str,
    /// Kubelet log entries to create (relative to /).
    files: Vec<String>,
}

fn shapes(tag: &str) -> Vec<Shape> {
    let pid = std::process::id();
    // Both tests run at once: ids differ per hierarchy.
    let b = if tag == "v2" { 100 } else { 0 };
    let [i1, i2, i3, i4, i5, i6, i7, i8] = [1, 2, 3, 4, 5, 6, 7, 8].map(|n| id(b + n));
    let [u1, u2, u3] = [1, 2, 3].map(|n| uid(b + n));
    let us = |u: &str| u.replace('-', "_");
    let ns = format!("ns-{tag}-{pid}");
    vec![
        Shape {
            path: format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{i1}.scope",
                us(&u1)
            ),
            job: format!("k8s:{ns}/worker-a/sidekiq"),
            kind: "k8s",
            files: vec![format!(
                "/var/log/containers/worker-a_{ns}_sidekiq-{i1}.log"
            )],
        },
        Shape {
            path: format!("/kubepods/besteffort/pod{u2}/{i2}"),
            job: format!("k8s:{ns}/worker-b/{}", &i2[..12]),
            kind: "k8s",
            files: vec![format!("/var/log/pods/{ns}_worker-b_{u2}/app/0.log")],
        },
        Shape {
            // Guaranteed: no QoS level.
            path: format!(
                "/kubepods.slice/kubepods-pod{}.slice/crio-{i3}.scope",
                us(&u3)
            ),
            job: format!("k8s:{ns}/worker-c/asynq"),
            kind: "k8s",
            files: vec![format!("/var/log/containers/worker-c_{ns}_asynq-{i3}.log")],
        },
        Shape {
            path: format!("/docker/{i4}"),
            job: format!("docker:{}", &i4[..12]),
            kind: "docker",
            files: vec![],
        },
        Shape {
            path: format!("/system.slice/cri-containerd-{i5}.scope"),
            job: format!("containerd:{}", &i5[..12]),
            kind: "containerd",
            files: vec![],
        },
        Shape {
            path: format!("/system.slice/crio-conmon-{i6}.scope"),
            job: format!("systemd:crio-conmon-{i6}.scope"),
            kind: "systemd",
            files: vec![],
        },
        Shape {
            path: format!("/machine.slice/libpod-{i7}.scope/container"),
            job: format!("podman:{}", &i7[..12]),
            kind: "podman",
            files: vec![],
        },
        Shape {
            path: format!(
                r"/system.slice/system-tracer\x2dtest.slice/tracer-test@{tag}\x2d{pid}.service"
            ),
            job: format!("systemd:tracer-test@{tag}-{pid}.service"),
            kind: "systemd",
            files: vec![],
        },
        Shape {
            path: format!("/tracer-test-plain-{pid}/{i8}x"),
            job: format!("cgroup:/tracer-test-plain-{pid}/{i8}x"),
            kind: "cgroup",
            files: vec![],
        },
    ]
}

/// Runs one workload in each shape under `root`, all in one recording, and checks each job.
fn jobs_in(root: &Path, tag: &str, memory: bool) {
    require_root();
    let mut created = Created::default();
    let shapes = shapes(tag);
    let mut script = String::new();
    for s in &shapes {
        let dir = root.join(s.path.trim_start_matches('/'));
        created.dir_all(&dir);
        for f in &s.files {
            created.file(Path::new(f));
        }
        // Each shell moves itself, then becomes the workload (what runc and systemd do).
        script += &format!(
            "sh -c 'echo $$ > \"{}/cgroup.procs\" && exec {} park 1 300' & ",
            dir.display().to_string().replace('\\', "\\\\"),
            workload()
        );
    }
    script += "wait";
    let t = record(&[], &["sh", "-c", &script]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    for s in &shapes {
        let p = t
            .report
            .processes
            .iter()
            .find(|p| {
                p.exe.as_deref().is_some_and(|e| e.ends_with("/workload"))
                    && if memory {
                        p.memory_cgroup.as_deref() == Some(&s.path)
                    } else {
                        p.cgroup == s.path
                    }
            })
            .unwrap_or_else(|| {
                panic!(
                    "no workload process in {}: {:#?}",
                    s.path,
                    t.report
                        .processes
                        .iter()
                        .map(|p| (&p.cgroup, &p.memory_cgroup, &p.job))
                        .collect::<Vec<_>>()
                )
            });
        assert_eq!(p.job, s.job, "{}", s.path);
        assert_eq!(p.job_info.kind, s.kind, "{}", s.path);
        assert_eq!(p.job_info.cgroup, s.path);
        assert_eq!(p.threads_created, 1, "{}", s.path);
        let j = t
            .report
            .jobs
            .iter()
            .find(|j| j.job == s.job)
            .unwrap_or_else(|| panic!("job {} in the report's jobs", s.job));
        assert!(j.pids.contains(&p.pid));
        assert_eq!(j.threads_created, 1);
        assert_eq!(j.processes, 1);
        assert!(j.rss_peak_bytes > 0, "{j:?}");
    }
    let k = t
        .report
        .processes
        .iter()
        .find(|p| p.job.starts_with(&format!("k8s:ns-{tag}")) && p.job.ends_with("/sidekiq"))
        .expect("the kubelet-named container");
    assert_eq!(k.job_info.pod.as_deref(), Some("worker-a"));
    assert_eq!(k.job_info.container.as_deref(), Some("sidekiq"));
    let b = if tag == "v2" { 100 } else { 0 };
    assert_eq!(k.job_info.container_id.as_deref(), Some(&*id(b + 1)));
    assert_eq!(k.job_info.pod_uid.as_deref(), Some(&*uid(b + 1)));
    let text = String::from_utf8_lossy(&run_report(&t.path, &["--all"]).stdout).into_owned();
    for s in &shapes {
        assert!(
            text.contains(&s.job),
            "{} in the text report:\n{text}",
            s.job
        );
    }
}

#[test]
fn jobs_of_every_shape_in_cgroup_v2() {
    jobs_in(&v2_root(), "v2", false);
}

#[test]
fn jobs_of_every_shape_in_the_v1_memory_hierarchy() {
    let root = Path::new("/sys/fs/cgroup/memory");
    if root.join("memory.limit_in_bytes").exists() {
        jobs_in(root, "v1", true);
        return;
    }
    // Since 6.11 the v1 memory controller is optional (CONFIG_MEMCG_V1), and Debian's 6.12
    // leaves it out: hybrid hosts then have memory on v2, where the test above names jobs.
    // Prove the kernel refuses it, rather than pass without a word.
    assert!(
        kernel_at_least(6, 11),
        "no v1 memory hierarchy at {}: this test needs a hybrid host, as in CI",
        root.display()
    );
    let dir = temp_path("memcg-v1");
    std::fs::create_dir_all(&dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "cgroup", "-o", "memory", "cgroup"])
        .arg(&dir)
        .status()
        .expect("running mount");
    let _ = std::process::Command::new("umount").arg(&dir).status();
    assert!(
        !st.success(),
        "the kernel mounts a v1 memory hierarchy, but none is at {}",
        root.display()
    );
    assert_eq!(tracer::cgroups::memory_v1_mount(), None);
    eprintln!("this kernel has no v1 memory controller (CONFIG_MEMCG_V1=n): jobs come from v2");
}
