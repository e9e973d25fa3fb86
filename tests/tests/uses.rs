//! The ways people run it: `run` around a command (like `perf stat`), `watch` streaming
//! findings for scripts, `--job` limiting any tracing command to a job (also processes that
//! enter it after tracing started), completions and man pages.

mod common;

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// A systemd-shaped job on cgroup2: `<v2>/tracer-test.slice/tracer-uses-<pid>-<n>.service`.
/// Removed on drop (after its processes are killed).
struct Unit {
    dir: PathBuf,
    name: String,
    procs: Vec<Child>,
}

impl Unit {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let root = v2_root();
        let name = format!("tracer-uses-{}-{n}.service", std::process::id());
        let dir = root.join("tracer-test.slice").join(&name);
        std::fs::create_dir_all(&dir).expect("creating the job's cgroup");
        Self {
            dir,
            name,
            procs: Vec::new(),
        }
    }

    /// Starts `cmd` in the job (the shell moves itself, then becomes it, as runc does); its
    /// pid.
    fn start(&mut self, cmd: &str) -> u32 {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {cmd}",
                self.dir.display()
            ))
            .spawn()
            .expect("starting a job process");
        let pid = child.id();
        self.procs.push(child);
        pid
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A process outside any test job, killed on drop.
struct Outside(Child);

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn leaker(rate: &str, secs: &str) -> String {
    format!("{} leak {rate} {secs}", env!("LEAKER_BIN"))
}

/// Waits for `child` at most `max`; kills it past that and fails.
fn wait_for(child: &mut Child, max: Duration) -> (i32, String, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut out = String::new();
            let mut err = String::new();
            child.stdout.take().map(|mut s| s.read_to_string(&mut out));
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            return (status.code().unwrap_or(-1), out, err);
        }
        if start.elapsed() > max {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("tracer did not stop within {max:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_prints_the_summary_and_findings_and_exits_with_the_commands_status() {
    require_root();
    let script = format!("{}; echo the command output; exit 7", leaker("10", "10"));
    let summary = temp_path("run.json");
    let out = run_tracer(&[
        "run",
        "--json",
        "--summary-file",
        summary.to_str().unwrap(),
        "--sample-ms",
        "100",
        "--runaway-window-secs",
        "5",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr_of(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "the command output\n",
        "stdout is the command's"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).expect("a JSON report");
    assert_eq!(r["lost_events"], 0);
    assert_eq!(r["exit_code"], 7);
    let procs = r["processes"].as_array().expect("processes");
    let p = procs
        .iter()
        .find(|p| p["exe"].as_str().is_some_and(|e| e.ends_with("/leaker")))
        .expect("the leaker in the summary");
    // 100 handler threads (10/s for 10 s); the leaker's own helper thread may add one.
    let created = p["threads_created"].as_u64().unwrap();
    assert!((100..=101).contains(&created), "{created}");
    // Only the command's processes: the shell and the leaker.
    assert!(procs.len() <= 2, "{procs:#?}");
    let f: Vec<_> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "runaway_threads")
        .collect();
    assert_eq!(f.len(), 1, "{:#?}", r["findings"]);
    assert_eq!(f[0]["pid"], p["pid"]);

    // Text: the same summary for people, findings first, on stderr (like perf stat).
    let out = run_tracer(&["run", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    let text = stderr_of(&out);
    assert!(text.contains("findings: none"), "{text}");
    assert!(out.stdout.is_empty());
}

#[test]
fn watch_streams_a_job_finding_as_it_opens_and_stops_there() {
    require_root();
    let mut unit = Unit::new();
    // A leaker outside the job must not be reported.
    let _outside = Outside(
        Command::new(env!("LEAKER_BIN"))
            .args(["leak", "10", "40"])
            .spawn()
            .expect("the outside leaker"),
    );
    let mut watch = Command::new(tracer_bin())
        .args([
            "watch",
            "--json",
            "--exit-on-finding",
            "--job",
            &unit.name,
            "--sample-ms",
            "100",
            "--runaway-window-secs",
            "5",
            "-d",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer watch");
    // The job's process starts after tracing did: the rescan finds it.
    std::thread::sleep(Duration::from_secs(2));
    let pid = unit.start(&leaker("10", "40"));
    let (status, out, err) = wait_for(&mut watch, Duration::from_secs(60));
    assert_eq!(status, 0, "a finding opened: exit 0; stderr:\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!lines.is_empty(), "stderr:\n{err}");
    for l in &lines {
        assert_eq!(l["event"], "open", "{l}");
        assert_eq!(l["kind"], "runaway_threads", "{l}");
        assert_eq!(l["pid"], pid, "only the job's leaker: {l}");
        assert!(l["job"].as_str().unwrap().contains(&unit.name), "{l}");
        assert_eq!(l["state"], "active");
    }
    assert!(err.contains("jobs matching"), "{err}");
    assert!(
        err.contains(r#"reason="a finding opened (--exit-on-finding)""#),
        "the end reason says why it stopped:\n{err}"
    );
}

#[test]
fn watch_exits_1_when_nothing_opened_before_the_end() {
    require_root();
    let quiet = Outside(
        Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("a quiet process"),
    );
    let pid = quiet.0.id().to_string();
    let mut watch = Command::new(tracer_bin())
        .args(["watch", "--exit-on-finding", "-p", &pid, "-d", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer watch");
    let (status, out, err) = wait_for(&mut watch, Duration::from_secs(30));
    assert_eq!(status, 1, "stderr:\n{err}");
    assert_eq!(out, "", "no finding lines");
}

#[test]
fn record_of_a_job_holds_its_processes_and_no_others() {
    require_root();
    let mut unit = Unit::new();
    let inside = unit.start(&format!("{} park 2 30000", workload()));
    let outside = Outside(
        Command::new(workload())
            .args(["park", "2", "30000"])
            .spawn()
            .expect("the outside workload"),
    );
    // Both are running (moved, exec'd) before tracing starts.
    std::thread::sleep(Duration::from_millis(500));
    let path = temp_path("job.trc");
    let out = run_tracer(&[
        "record",
        "-o",
        path.to_str().unwrap(),
        "--job",
        &unit.name,
        "-d",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let r = read_report(&path);
    let pids: Vec<u32> = r.processes.iter().map(|p| p.pid).collect();
    assert!(pids.contains(&inside), "{pids:?}");
    assert!(!pids.contains(&outside.0.id()), "{pids:?}");
    for p in &r.processes {
        assert!(p.job.contains(&unit.name), "{} in {}", p.pid, p.job);
    }
    let p = r.processes.iter().find(|p| p.pid == inside).unwrap();
    assert_eq!(p.threads_live, 3, "the main thread and 2 parked: {p:?}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let out = run_tracer(&["completions", "bash"]);
    assert!(out.status.success());
    let bash = String::from_utf8_lossy(&out.stdout);
    for word in ["watch", "--exit-on-finding", "--job", "record", "--pid"] {
        assert!(
            bash.contains(word),
            "{word} missing from the bash completions"
        );
    }
    let dir = temp_path("man");
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_tracer(&["man", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let page = std::fs::read_to_string(dir.join("tracer-watch.1")).expect("tracer-watch.1");
    assert!(page.contains(".TH tracer-watch 1"), "{page}");
    assert!(page.contains("exit\\-on\\-finding"), "{page}");
    assert!(dir.join("tracer.1").is_file());
    assert!(dir.join("tracer-run.1").is_file());
}

#[test]
fn top_without_a_terminal_prints_the_plain_table() {
    require_root();
    let quiet = Outside(
        Command::new(workload())
            .args(["park", "2", "30000"])
            .spawn()
            .expect("a parked workload"),
    );
    let pid = quiet.0.id().to_string();
    std::thread::sleep(Duration::from_millis(300));
    // stdout is a pipe here: no interactive view, whatever --no-tui says.
    let out = run_tracer(&["top", "-p", &pid, "-d", "2.5", "--every", "1"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let tables = text.matches("--- ").count();
    assert!((2..=4).contains(&tables), "a table a second: {text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{pid} ")))
        .unwrap_or_else(|| panic!("the workload's row: {text}"));
    assert!(row.contains("workload"), "{row}");
    assert!(!text.contains('\x1b'), "no escapes off a terminal");
}

#[test]
fn the_report_of_a_file_is_what_the_live_run_showed() {
    require_root();
    let path = temp_path("same.trc");
    // Threads that park and leak, a child process, memory: every part of the summary.
    let script = format!(
        "{} leak 10 6 & {} park 3 1500; {} leak 2 2 4 3; wait",
        env!("LEAKER_BIN"),
        workload(),
        workload()
    );
    let summary = temp_path("same.json");
    let out = run_tracer(&[
        "run",
        "--json",
        "--summary-file",
        summary.to_str().unwrap(),
        "-o",
        path.to_str().unwrap(),
        "--sample-ms",
        "200",
        "--runaway-window-secs",
        "3",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let live: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).expect("the live report");
    let out = run_report(&path, &["--format", "json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let file: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the file's report");
    for key in [
        "processes",
        "jobs",
        "findings",
        "host",
        "lost_events",
        "exit_code",
    ] {
        assert_eq!(
            live[key], file[key],
            "{key} differs between the live run and the file"
        );
    }
    assert!(live["processes"].as_array().unwrap().len() >= 4);
    assert!(
        !live["findings"].as_array().unwrap().is_empty(),
        "the leaker's finding"
    );
    assert_eq!(file["findings_match_live"], true);
}

/// The files of a rotated recording that exist, by index.
fn rotated(base: &std::path::Path) -> Vec<(u32, PathBuf)> {
    (0..100)
        .map(|i| (i, tracer::collector::rotated_path(base, i)))
        .filter(|(_, p)| p.is_file())
        .collect()
}

#[test]
fn record_rotates_by_age_keeps_the_newest_and_each_file_stands_alone() {
    require_root();
    let base = temp_path("rot.trc");
    let out = run_record(
        &base,
        &["--sample-ms", "200", "--rotate-secs", "2", "--keep", "3"],
        &[env!("LEAKER_BIN"), "leak", "10", "7"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let files = rotated(&base);
    let idx: Vec<u32> = files.iter().map(|f| f.0).collect();
    assert_eq!(idx.len(), 3, "--keep 3: {idx:?}");
    assert!(idx[0] >= 1, "the oldest were removed: {idx:?}");
    assert_eq!(idx, (idx[0]..idx[0] + 3).collect::<Vec<_>>());
    let mut prev_end: Option<u32> = None;
    for (i, (_, path)) in files.iter().enumerate() {
        let r = read_report(path);
        assert!(r.truncated.is_none(), "{path:?}: {:?}", r.truncated);
        let last = i == files.len() - 1;
        assert_eq!(
            r.end_reason.as_deref(),
            Some(if last { "command exited" } else { "rotated" })
        );
        let l = r
            .processes
            .iter()
            .find(|p| p.comm == "leaker")
            .unwrap_or_else(|| panic!("the leaker in {path:?}"));
        // Each file starts from the last one's state: its seeded threads are the threads the
        // previous file ended with (`threads_exited` leaves out the main thread's exit).
        let seeded = u64::from(l.threads_live) + l.threads_exited - l.threads_created
            + u64::from(l.exited_ns.is_some());
        if let Some(p) = prev_end {
            assert_eq!(seeded, u64::from(p), "{path:?}");
        }
        prev_end = Some(l.threads_live);
        if !last {
            assert!(
                l.threads_created >= 10,
                "2 s at 10/s: {}",
                l.threads_created
            );
            // Parked threads carried over (the newest may not have reached their wait yet).
            assert!(
                l.futex_parked_now * 10 >= l.threads_live * 8,
                "{} of {} parked",
                l.futex_parked_now,
                l.threads_live
            );
        }
    }
}

#[test]
fn record_rotates_by_size() {
    require_root();
    let base = temp_path("size.trc");
    let out = run_record(
        &base,
        &["--sample-ms", "100", "--rotate-mb", "0.03"],
        &[env!("LEAKER_BIN"), "leak", "20", "3"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let files = rotated(&base);
    assert!(files.len() >= 3, "{files:?}");
    assert_eq!(files[0].0, 0, "without --keep every file stays");
    for (_, p) in &files[..files.len() - 1] {
        let len = std::fs::metadata(p).unwrap().len();
        // Checked each sample: past the size by at most one sample's events.
        assert!(
            (30 << 10..(30 << 10) + (64 << 10)).contains(&len),
            "{p:?}: {len}"
        );
        read_report(p);
    }
    let out = run_tracer(&["record", "-o", "/tmp/x.trc", "--keep", "2", "-d", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("--keep needs --rotate-mb or --rotate-secs"));
}

/// Whether an x86_64 ELF file asks for a program interpreter (a PT_INTERP program header):
/// a dynamically linked binary does, a static (or static-pie) one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn the_static_release_binary_traces_on_this_kernel() {
    require_root();
    let bin = dist_bin();
    let elf = std::fs::read(&bin).expect("reading the static binary");
    assert!(
        !has_interpreter(&elf),
        "{} asks for a dynamic loader: not statically linked",
        bin.display()
    );
    assert!(
        has_interpreter(&std::fs::read(workload()).unwrap()),
        "the check tells a dynamic binary apart"
    );
    // The same exact counts as the debug build's tests: 3 spawned /bin/true and 2 forks,
    // each a process; the workload exits 7.
    let summary = temp_path("dist-run.json");
    let out = Command::new(&bin)
        .args(["run", "--json", "--summary-file"])
        .arg(&summary)
        .args(["--", workload(), "children", "3", "2"])
        .output()
        .expect("running the static binary");
    assert_eq!(out.status.code(), Some(7), "{}", stderr_of(&out));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).expect("a JSON report");
    assert_eq!(r["lost_events"], 0);
    assert!(
        r["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["attached"] == true),
        "{:#?}",
        r["probes"]
    );
    let procs = r["processes"].as_array().unwrap();
    let parent = procs
        .iter()
        .find(|p| p["exe"].as_str().is_some_and(|e| e.ends_with("/workload")))
        .expect("the workload");
    assert_eq!(parent["children_created"], 5, "{parent:#?}");
    assert_eq!(parent["exit_code"], 7);
    let kids = procs.iter().filter(|p| p["ppid"] == parent["pid"]).count();
    assert_eq!(kids, 5, "{procs:#?}");
}
