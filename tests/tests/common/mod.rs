//! Helpers shared by the integration tests: run the real `tracer` binary as root on real
//! workloads, and read back what it recorded.

#![allow(dead_code)]

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use tracer::{
    events::{Event, decode},
    model::ProcessSummary,
    report::{self, Report},
    tracefile::{Record, TraceReader},
};

pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests load real eBPF programs and must run as root \
         (use `cargo xtask test`, or run cargo test as root)"
    );
}

/// Whether the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut it = rel
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
}

/// The tracer binary of this build: next to the test's own `deps/` directory.
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("tracer");
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p tracer`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The cgroup2 hierarchy: `/sys/fs/cgroup/unified` on hybrid hosts, else `/sys/fs/cgroup`.
pub fn v2_root() -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.join("cgroup.controllers").exists())
        .expect("a cgroup2 hierarchy (cgroup.controllers is v2-only)")
}

/// Debian's CPython, which the interpreter tests run.
pub const PYTHON: &str = "/usr/bin/python3.11";

/// An interpreter's path, checked: missing, the test fails saying what installs it.
pub fn interpreter(path: &str) -> &str {
    assert!(
        std::path::Path::new(path).is_file(),
        "{path} is missing: this test runs Debian's interpreter (`cargo xtask setup` installs it)"
    );
    path
}

/// The traced process running `exe` (a path ending).
pub fn process_of<'a>(t: &'a Traced, exe: &str) -> &'a ProcessSummary {
    t.report
        .processes
        .iter()
        .find(|p| p.exe.as_deref().is_some_and(|e| e.ends_with(exe)))
        .unwrap_or_else(|| panic!("no traced process runs {exe}"))
}

pub fn workload() -> &'static str {
    env!("CARGO_BIN_EXE_workload")
}

pub fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!("tracer-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(format!("{}-{name}", N.fetch_add(1, Ordering::SeqCst)))
}

pub struct Traced {
    pub status: i32,
    pub out: Output,
    pub path: PathBuf,
    pub report: Report,
    pub events: Vec<Event>,
}

impl Traced {
    /// Fails unless each of `hooks` is an attached probe; returns the attached probes' names.
    pub fn assert_attached(&self, hooks: &[&str]) -> Vec<&str> {
        let names: Vec<&str> = self
            .report
            .probes
            .iter()
            .filter(|p| p.attached)
            .map(|p| p.name.as_str())
            .collect();
        for hook in hooks {
            assert!(names.contains(hook), "{hook} missing: {names:?}");
        }
        names
    }

    /// The process that ran the workload binary (the command, after its exec).
    pub fn workload_proc(&self) -> &ProcessSummary {
        let all: Vec<_> = self
            .report
            .processes
            .iter()
            .filter(|p| p.exe.as_deref().is_some_and(|e| e.ends_with("/workload")))
            .collect();
        assert_eq!(all.len(), 1, "one workload process expected: {all:#?}");
        all[0]
    }

    pub fn stderr(&self) -> String {
        stderr_of(&self.out)
    }

    pub fn events_of(&self, pid: u32) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.header().tgid == pid)
    }
}

pub fn read_events(path: &PathBuf) -> Vec<Event> {
    let f = File::open(path).expect("trace file");
    let reader = TraceReader::new(BufReader::new(f)).expect("trace header");
    reader
        .filter_map(|r| match r.expect("record") {
            Record::Event(b) => Some(decode(&b).expect("decodable event")),
            Record::Meta(_) => None,
        })
        .collect()
}

pub fn read_report(path: &PathBuf) -> Report {
    report::build(BufReader::new(File::open(path).expect("trace file"))).expect("report")
}

/// `tracer <args>`, run to completion.
pub fn run_tracer(args: &[&str]) -> Output {
    Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("running tracer")
}

/// `tracer record -o <path> <extra> -- <cmd>`, run to completion.
pub fn run_record(path: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    Command::new(tracer_bin())
        .arg("record")
        .arg("-o")
        .arg(path)
        .args(extra)
        .arg("--")
        .args(cmd)
        .output()
        .expect("running tracer record")
}

/// `tracer report <args> <path>`, run to completion.
pub fn run_report(path: &Path, args: &[&str]) -> Output {
    Command::new(tracer_bin())
        .arg("report")
        .args(args)
        .arg(path)
        .output()
        .expect("running tracer report")
}

pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `tracer record -o <tmp> --sample-ms 100 <extra> -- <cmd>`, checked for losses and probes.
pub fn record(extra: &[&str], cmd: &[&str]) -> Traced {
    record_sampled("100", extra, cmd)
}

/// `record` with another sample interval (ms).
pub fn record_sampled(sample_ms: &str, extra: &[&str], cmd: &[&str]) -> Traced {
    require_root();
    let path = temp_path("trace.trc");
    let extra: Vec<&str> = ["--sample-ms", sample_ms]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let out = run_record(&path, &extra, cmd);
    let status = out.status.code().unwrap_or(-1);
    assert!(
        path.is_file(),
        "tracer wrote no file; stderr:\n{}",
        stderr_of(&out)
    );
    let report = read_report(&path);
    let events = read_events(&path);
    let t = Traced {
        status,
        out,
        path,
        report,
        events,
    };
    assert_eq!(
        t.report.lost_events,
        0,
        "lost events; stderr:\n{}",
        t.stderr()
    );
    assert!(
        t.report.probes.iter().all(|p| p.attached),
        "a probe failed to attach: {:#?}",
        t.report.probes
    );
    t
}

/// A memory cgroup limited to `bytes`, on cgroup v2 if its memory controller is there, else
/// on the v1 memory hierarchy. Removed on drop.
pub struct MemCgroup {
    pub dir: std::path::PathBuf,
}

impl MemCgroup {
    pub fn new(bytes: u64) -> Self {
        // Unique per instance: tests run in parallel, and each removes its own on drop.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("tracer-test-oom-{}-{n}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup/unified");
        let v2_root = if v2.join("cgroup.controllers").exists() {
            v2.to_path_buf()
        } else {
            "/sys/fs/cgroup".into()
        };
        let controllers =
            std::fs::read_to_string(v2_root.join("cgroup.controllers")).unwrap_or_default();
        let dir = if controllers.split_whitespace().any(|c| c == "memory") {
            let _ = std::fs::write(v2_root.join("cgroup.subtree_control"), "+memory");
            let dir = v2_root.join(&name);
            std::fs::create_dir_all(&dir).expect("creating a v2 cgroup");
            std::fs::write(dir.join("memory.max"), bytes.to_string()).expect("memory.max");
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            dir
        } else {
            let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(&name);
            std::fs::create_dir_all(&dir).expect("creating a v1 memory cgroup");
            std::fs::write(dir.join("memory.limit_in_bytes"), bytes.to_string())
                .expect("memory.limit_in_bytes");
            dir
        };
        Self { dir }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Three threads park 800 ms each, then a leaker's 40 threads park for good (still blocked
/// at the end) over 4 s, a runaway to a 2 s window even under emulation: recorded, then
/// exported with `export --format perfetto`. The recording, the Perfetto file, the export's
/// output.
pub fn perfetto_of_parkers_and_a_leaker() -> (Traced, PathBuf, Output) {
    let script = format!(
        "{} park 3 800; {} leak 10 4",
        workload(),
        env!("LEAKER_BIN")
    );
    let t = record(&["--runaway-window-secs", "2"], &["sh", "-c", &script]);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let out_path = temp_path("trace.pftrace");
    let out = run_tracer(&[
        "export",
        t.path.to_str().unwrap(),
        "--format",
        "perfetto",
        "-o",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    (t, out_path, out)
}

/// The static release binary (`cargo xtask dist`, which `cargo xtask test` and `vmtest` run
/// first): `<target>/dist/tracer`, found from this test's own `<target>/debug/deps/` (the
/// guests hold both at the host's paths).
pub fn dist_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let p = exe
        .ancestors()
        .nth(3)
        .expect("the target directory")
        .join("dist/tracer");
    assert!(
        p.is_file(),
        "{} is missing: `cargo xtask dist` builds it (`cargo xtask test` and `cargo xtask \
         vmtest` do)",
        p.display()
    );
    p
}
