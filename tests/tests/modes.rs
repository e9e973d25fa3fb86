//! Tracing modes other than `record -- CMD`: host-wide, `--pid` on a process that was already
//! running (with threads already parked), and OOM kills in a memory-limited cgroup.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use tracer::events::Event;

const MS: u64 = 1_000_000;

/// Starts `tracer record` in the background and returns once its probes are attached.
fn start_tracer(args: &[&str]) -> (Child, std::path::PathBuf) {
    require_root();
    let path = temp_path("bg.trc");
    let mut child = Command::new(tracer_bin())
        .arg("record")
        .arg("-o")
        .arg(&path)
        .args(["--sample-ms", "100"])
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting tracer");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("tracer: {line}");
            if !sent && line.contains("tracing ") {
                sent = true;
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("tracer did not report it was tracing within 30 s");
    (child, path)
}

fn stop(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().expect("wait tracer");
    assert!(st.success(), "tracer exited with {st}");
}

#[test]
fn host_wide_sees_a_process_it_did_not_start() {
    // A name of its own, so that other tests' workloads running meanwhile are told apart.
    let exe = temp_path("workload-host-wide");
    std::os::unix::fs::symlink(workload(), &exe).expect("symlink");
    let (tracer, path) = start_tracer(&["--min-wait-ms", "20"]);
    // Parks long enough to overlap at a 100 ms sample even under emulation.
    let w = Command::new(&exe)
        .args(["park", "2", "1000"])
        .status()
        .expect("workload");
    assert!(w.success());
    // Let one sample and drain pass after the workload's exit.
    std::thread::sleep(Duration::from_millis(300));
    stop(tracer);
    let report = read_report(&path);
    assert_eq!(report.lost_events, 0);
    assert!(report.end_reason.as_deref() == Some("interrupted (SIGINT)"));
    let mine: Vec<_> = report
        .processes
        .iter()
        .filter(|p| p.exe.as_deref() == exe.to_str())
        .collect();
    assert_eq!(mine.len(), 1, "{mine:#?}");
    let p = mine[0];
    assert_eq!(p.ppid, std::process::id(), "created by this test");
    assert_eq!(
        (p.threads_created, p.threads_exited, p.threads_peak),
        (2, 2, 3)
    );
    assert_eq!(p.futex_parked_peak, 2);
    assert!((2..=4).contains(&p.futex_waits), "2 parks (+ slow joins)");
    assert_eq!(p.exit_code, Some(0));
    // Host-wide: other processes are there too (at least the test harness itself).
    assert!(report.processes.len() > 3);
}

/// A child's stderr, read line by line in the background.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Lines {
    fn of(r: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(r)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            rx,
            seen: Default::default(),
        }
    }

    /// Waits (at most a minute) for a line containing `what`.
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.seen.borrow().iter().any(|l| l.contains(what)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(l) => self.seen.borrow_mut().push(l),
                Err(_) => panic!("no `{what}` on stderr: {:?}", self.seen.borrow()),
            }
        }
    }

    /// Every line, once the child has closed its end.
    fn all(&self) -> String {
        while let Ok(l) = self.rx.recv_timeout(Duration::from_secs(10)) {
            self.seen.borrow_mut().push(l);
        }
        self.seen.borrow().join("\n")
    }
}

/// Waits until `n` threads of `pid` are blocked in a futex wait.
fn wait_parked(pid: u32, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parked = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task dir")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&tid| tracer::seed::blocked(pid, tid, 0).is_some_and(|s| s.syscall == 202))
            .count();
        if parked >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{parked} of {n} threads parked");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pid_mode_sees_threads_parked_before_tracing_started() {
    require_root();
    // 3 threads parked until told (a line on stdin): their parks outlast however long the
    // tracer takes to start (seconds under qemu TCG, in the kernel matrix).
    let mut w = Command::new(workload())
        .args(["hold", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    let pid = w.id();
    wait_parked(pid, 3);
    let mut tracer = Command::new(tracer_bin())
        .arg("record")
        .arg("-o")
        .arg(temp_path("pid.trc"))
        .args([
            "--sample-ms",
            "100",
            "--min-wait-ms",
            "20",
            "-p",
            &pid.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer");
    let stderr = Lines::of(tracer.stderr.take().expect("piped"));
    stderr.wait_for("tracing selected processes");
    std::thread::sleep(Duration::from_millis(600));
    w.stdin
        .take()
        .expect("piped")
        .write_all(b"go\n")
        .expect("wake");
    assert!(w.wait().expect("workload").success());
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let status = tracer.wait().expect("tracer");
    let stderr = stderr.all();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("3 threads were already blocked"),
        "the tracer says what it found blocked: {stderr}"
    );
    // The file is the first argument after -o.
    let file = out_file(&stderr);
    let report = read_report(&file);
    let events = read_events(&file);
    let p = report
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("the pid in the report");
    assert!(p.seeded, "existed before tracing");
    assert_eq!(p.futex_parked_peak, 3, "{p:#?}");
    assert!(
        (3..=6).contains(&p.futex_waits),
        "the wake-ups of the seeded parks are traced: {p:#?}"
    );
    assert!(p.futex_park_max_ns >= 500 * MS, "{p:#?}");
    assert_eq!(p.threads_exited, 3, "{p:#?}");
    assert!(p.exited_ns.is_some());
    assert_eq!(p.exit_code, Some(0));
    // Only that process was traced.
    assert!(events.iter().all(|e| e.header().tgid == pid));
    // The parks of the 3 workers: their waits over 300 ms (they were parked for the 600 ms
    // before the wake). The main thread's joins, if slow, and a worker's short wait on a lock as
    // they exit together come on top.
    let long = |w: &tracer_common::WaitEvent| w.hdr.ts_ns - w.start_ns >= 300 * MS;
    let parks = events
        .iter()
        .filter(|e| matches!(e, Event::FutexWait(w) if w.hdr.tid != pid && long(w)))
        .count();
    assert_eq!(parks, 3);
}

/// A copy of the real tracefs' format and id files of the classic tracepoints the tracer uses,
/// with mark_victim's format passed through `edit`: what a kernel with another layout shows.
fn fake_tracefs(edit: impl Fn(&str) -> String) -> std::path::PathBuf {
    let real = std::path::Path::new("/sys/kernel/tracing");
    if !real.join("events").is_dir() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .expect("mount");
        assert!(st.success(), "mounting tracefs");
    }
    let fake = temp_path("tracefs");
    for tp in tracer_common::tracepoints::ALL {
        let rel = format!("events/{}/{}", tp.category, tp.name);
        std::fs::create_dir_all(fake.join(&rel)).expect("mkdir");
        for f in ["format", "id"] {
            let mut text = std::fs::read_to_string(real.join(&rel).join(f)).expect("read");
            if tp.name == "mark_victim" && f == "format" {
                text = edit(&text);
            }
            std::fs::write(fake.join(&rel).join(f), text).expect("write");
        }
    }
    fake
}

/// `tracer record -o FILE --sample-ms 100 -- CMD` in a private mount namespace where `fake`
/// is /sys/kernel/tracing (real tracepoint ids, edited layouts).
fn record_with_tracefs(
    fake: &std::path::Path,
    file: &std::path::Path,
    cmd: &[&str],
) -> std::process::Output {
    let script = format!(
        "mount --bind {} /sys/kernel/tracing && exec {} record -o {} --sample-ms 100 -- {}",
        fake.display(),
        tracer_bin().display(),
        file.display(),
        cmd.join(" ")
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare")
}

/// `tracer: wrote N events (B bytes) to FILE`
fn out_file(stderr: &str) -> std::path::PathBuf {
    let line = stderr
        .lines()
        .find(|l| l.contains("tracer: wrote"))
        .unwrap_or_else(|| panic!("no summary line in {stderr}"));
    line.rsplit(" to ").next().expect("path").trim().into()
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup() {
    require_root();
    let cg = MemCgroup::new(64 << 20);
    let t = record(
        &[],
        &[workload(), "oom", cg.dir.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        t.status,
        128 + 9,
        "the command was SIGKILLed: {}",
        t.stderr()
    );
    assert_eq!(t.report.host.oom_kills, 1);
    let p = t.workload_proc();
    assert!(p.oom_killed, "{p:#?}");
    assert!(p.killed);
    assert_eq!(p.signal, Some(9));
    assert_eq!(p.exit_code, None);
    let oom = t
        .events
        .iter()
        .find_map(|e| match e {
            Event::Oom(o) => Some(*o),
            _ => None,
        })
        .expect("an OOM event");
    assert_eq!(oom.victim_pid, p.pid);
    assert!(
        oom.anon_rss_kb > 32 << 10,
        "victim's RSS at the kill: {} KiB",
        oom.anon_rss_kb
    );
    assert!(
        p.rss_peak_bytes > 32 << 20,
        "RSS climbed before the kill: {}",
        p.rss_peak_bytes
    );
}

#[test]
fn a_tracepoint_with_another_layout_is_refused_by_name_and_the_rest_runs() {
    require_root();
    // A kernel whose oom/mark_victim record differs from what the programs read: in a private
    // mount namespace, /sys/kernel/tracing shows the real tracepoints (real ids), but
    // mark_victim's `pid` field moved (so neither the full layout nor the pid-only one of
    // older kernels matches). (A classic tracepoint: the per-thread and
    // per-fault hooks are BTF tracepoints here, which need no format file.)
    let fake = fake_tracefs(|text| text.replace(" pid;\toffset:8;", " pid;\toffset:12;"));
    let file = temp_path("refused.trc");
    // Parks of 1.5 s: both threads are parked at one 100 ms sample even under emulation
    // (5.10 under TCG once saw one of two 300 ms parks).
    let out = record_with_tracefs(&fake, &file, &[workload(), "park", "2", "1500"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("mark_victim") && stderr.contains("offset 12"),
        "the refused probe is named, with why: {stderr}"
    );
    let report = read_report(&file);
    let oom = report
        .probes
        .iter()
        .find(|p| p.name == "tracepoint/oom/mark_victim")
        .expect("mark_victim in the probe list");
    assert!(!oom.attached);
    assert!(oom.error.as_deref().unwrap_or("").contains("`pid`"));
    assert_eq!(report.probes.iter().filter(|p| !p.attached).count(), 1);
    // The rest ran: threads, parks and exits of the workload are all there.
    let p = report
        .processes
        .iter()
        .find(|p| p.exe.as_deref() == Some(workload()))
        .expect("workload traced");
    assert_eq!(
        (p.threads_created, p.threads_exited, p.futex_parked_peak),
        (2, 2, 2)
    );
    assert!(p.rss_peak_bytes > 0, "rss_stat still runs");
    assert!(
        String::from_utf8_lossy(&run_report(&file, &[]).stdout)
            .contains("probe tracepoint/oom/mark_victim was not attached")
    );
}

#[test]
fn a_process_moved_to_another_cgroup_after_its_fork_is_charged_there() {
    require_root();
    // What runc and systemd do: fork, move the child into the unit's cgroup, exec.
    let v2 = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|d| d.join("cgroup.controllers").exists())
        .expect("a cgroup2 hierarchy (cgroup.controllers is v2-only)");
    let name = format!("tracer-test-move-{}", std::process::id());
    let dir = v2.join(&name);
    std::fs::create_dir_all(&dir).expect("creating a cgroup");
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {} park 2 200",
        dir.display(),
        workload()
    );
    let t = record(&[], &["sh", "-c", &script]);
    let _ = std::fs::remove_dir(&dir);
    assert_eq!(t.status, 0, "{}", t.stderr());
    let p = t.workload_proc();
    assert_eq!(p.cgroup, format!("/{name}"), "{p:#?}");
    assert_eq!(p.threads_created, 2);
}

#[test]
fn an_oom_kill_on_a_kernel_whose_mark_victim_has_only_the_pid() {
    require_root();
    // Kernels before 5.19 (bar backports) record the victim's pid alone: the older layout's
    // program is attached, the degradation is said, and the kill is still seen.
    let fake = fake_tracefs(|text| {
        text.lines()
            .filter(|l| !l.contains("field:") || l.contains("common_") || l.contains(" pid;"))
            .map(|l| format!("{l}\n"))
            .collect()
    });
    let cg = MemCgroup::new(64 << 20);
    let file = temp_path("oom-pid-only.trc");
    let out = record_with_tracefs(
        &fake,
        &file,
        &[workload(), "oom", cg.dir.to_str().expect("utf-8 path")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{stderr}");
    assert!(
        stderr.contains("mark_victim") && stderr.contains("pid only"),
        "the degradation is named: {stderr}"
    );
    let report = read_report(&file);
    let probe = report
        .probes
        .iter()
        .find(|p| p.name == "tracepoint/oom/mark_victim")
        .expect("mark_victim listed");
    assert!(probe.attached && probe.note.as_deref().unwrap_or("").contains("pid only"));
    assert_eq!(report.host.oom_kills, 1);
    let p = report
        .processes
        .iter()
        .find(|p| p.oom_killed)
        .expect("the victim is marked");
    assert_eq!(p.signal, Some(9));
    let oom = read_events(&file)
        .into_iter()
        .find_map(|e| match e {
            Event::Oom(o) => Some(o),
            _ => None,
        })
        .expect("an OOM event");
    assert_eq!(oom.victim_pid, p.pid);
    assert_eq!(oom.flags, tracer_common::OOM_PID_ONLY);
    assert!(
        String::from_utf8_lossy(&run_report(&file, &[]).stdout)
            .contains("note: probe tracepoint/oom/mark_victim")
    );
}
