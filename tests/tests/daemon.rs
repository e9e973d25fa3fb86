//! `tracer daemon`: the real endpoint scraped over HTTP while real workloads run in
//! job-shaped cgroups. A leaking worker in a Kubernetes-shaped container shows with its
//! namespace/pod/container labels, its counts and its finding; 500 short-lived jobs leave the
//! series count under its bound, and gone jobs' series go.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// `GET`/other method over a plain TCP connection: (status, body), or what went wrong.
fn try_http(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    match try_http(port, method, path) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("{method} {path}: {e}");
            None
        }
    }
}

/// The series of `name` whose labels include every `k="v"` of `labels`, with their values.
fn series<'a>(scrape: &'a str, name: &str, labels: &[(&str, &str)]) -> Vec<(&'a str, f64)> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| {
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((l, v))
        })
        .collect()
}

fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let s = series(scrape, name, labels);
    assert!(s.len() <= 1, "more than one {name} {labels:?}: {s:#?}");
    s.first().map(|x| x.1)
}

/// One daemon at a time: each traces the whole host, and under emulation two (one watching
/// 500 short-lived jobs) starve each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Daemon {
    child: Child,
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts it on a port the kernel picks (read from its log: two daemons of parallel tests
    /// must not race for one), once it is healthy.
    fn start(extra: &[&str]) -> Self {
        require_root();
        let mut child = Command::new(tracer_bin())
            .args(["daemon", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tracer daemon");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = log.clone();
        // Drains stderr for the whole run (a full pipe would block the daemon).
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.split("serving /metrics and /healthz on ").nth(1) {
                    let _ = tx.send(
                        addr.rsplit(':')
                            .next()
                            .and_then(|p| p.trim().parse::<u16>().ok()),
                    );
                }
                let mut l = keep.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no listening address logged:\n{}", log.lock().unwrap()));
        let d = Self { child, port, log };
        // Ready when /healthz answers (probes load and the host is seeded first).
        let t = Instant::now();
        while http(port, "GET", "/healthz").is_none_or(|(s, _)| s != 200) {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the daemon did not become healthy:\n{}",
                d.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn scrape(&self) -> String {
        let (status, body) = http(self.port, "GET", "/metrics").expect("a scrape");
        assert_eq!(status, 200);
        body
    }

    /// Stops it (SIGTERM) and returns its stdout (the findings log) and stderr.
    fn stop(mut self) -> (String, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut out = String::new();
        let mut err = String::new();
        self.child
            .stdout
            .take()
            .map(|mut s| s.read_to_string(&mut out));
        self.child
            .stderr
            .take()
            .map(|mut s| s.read_to_string(&mut err));
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "daemon exit {status}; stderr:\n{err}");
        (out, err)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Directories and files made for a test, removed deepest first at the end.
#[derive(Default)]
struct Made(Vec<PathBuf>);

impl Made {
    fn dir(&mut self, d: PathBuf) -> PathBuf {
        let mut missing = Vec::new();
        let mut cur = Some(d.as_path());
        while let Some(p) = cur.filter(|p| !p.exists()) {
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        std::fs::create_dir_all(&d).expect("mkdir");
        self.0.extend(missing.into_iter().rev());
        d
    }
    fn file(&mut self, f: PathBuf) {
        self.dir(f.parent().unwrap().to_path_buf());
        std::fs::write(&f, "").expect("a file");
        self.0.push(f);
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            for _ in 0..30 {
                if std::fs::remove_file(p).is_ok() || std::fs::remove_dir(p).is_ok() || !p.exists()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn spawn_in(dir: &std::path::Path, cmd: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec {cmd}",
            dir.display()
        ))
        .spawn()
        .expect("a job process")
}

#[test]
fn a_leaking_pod_container_is_scraped_with_its_labels_counts_and_finding() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pid = std::process::id();
    let ns = format!("ns-daemon-{pid}");
    let uid = format!("{pid:08x}-0000-4000-8000-00000000d00d");
    let id = format!("{pid:08x}{:056x}", 0xd00du64);
    let mut made = Made::default();
    let dir = made.dir(v2_root().join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    )));
    made.file(PathBuf::from(format!(
        "/var/log/containers/leaky-0_{ns}_worker-{id}.log"
    )));
    let d = Daemon::start(&["--sample-ms", "200", "--runaway-window-secs", "5"]);
    let mut leaker = spawn_in(&dir, &format!("{} leak 10 90", env!("LEAKER_BIN")));
    let labels = [
        ("namespace", ns.as_str()),
        ("pod", "leaky-0"),
        ("container", "worker"),
    ];
    let mut finding = labels.to_vec();
    finding.push(("finding", "runaway_threads"));
    let t = Instant::now();
    let scrape = loop {
        let s = d.scrape();
        if value(&s, "tracer_job_findings", &finding) == Some(1.0) {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no runaway finding for the pod in 60 s:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let job = format!("k8s:{ns}/leaky-0/worker");
    let mut with_job = labels.to_vec();
    with_job.push(("job_name", &job));
    with_job.push(("job_kind", "k8s"));
    let get = |name: &str| {
        value(&scrape, name, &with_job).unwrap_or_else(|| panic!("{name} missing:\n{scrape}"))
    };
    // One process: its main thread plus every thread it created (none exits), all parked.
    assert_eq!(get("tracer_job_processes"), 1.0);
    let threads = get("tracer_job_threads");
    let created = get("tracer_job_threads_created_total");
    assert_eq!(threads, created + 1.0, "{scrape}");
    assert!(created >= 10.0, "{created}");
    assert_eq!(get("tracer_job_threads_exited_total"), 0.0);
    let parked = get("tracer_job_futex_parked_threads");
    // The newest may not have reached their wait at the sample (several under emulation).
    assert!(
        parked <= created && parked >= created * 0.8,
        "{parked} of {created}"
    );
    assert!(get("tracer_job_rss_bytes") > 0.0);
    assert!(get("tracer_job_mapped_bytes") > 0.0, "thread stacks");
    assert_eq!(get("tracer_job_oom_kills_total"), 0.0);
    // The leaker is among the top processes, with the same count.
    let lp = leaker.id().to_string();
    let pt = value(
        &scrape,
        "tracer_process_threads",
        &[("pid", &lp), ("pod", "leaky-0")],
    )
    .expect("the leaker among the top processes");
    assert_eq!(pt, threads);
    // The tracer's own health.
    let probes = series(&scrape, "tracer_probe_attached", &[]);
    assert!(probes.len() >= 8, "{probes:#?}");
    assert!(probes.iter().all(|p| p.1 == 1.0), "{probes:#?}");
    assert_eq!(
        value(&scrape, "tracer_probes_attached", &[]),
        Some(probes.len() as f64)
    );
    assert_eq!(
        value(
            &scrape,
            "tracer_lost_events_total",
            &[("cause", "ringbuf_full")]
        ),
        Some(0.0)
    );
    assert!(value(&scrape, "tracer_map_capacity", &[("map", "wait_slots")]).unwrap() > 0.0);
    assert!(value(&scrape, "tracer_events_total", &[]).unwrap() > 0.0);
    assert!(value(&scrape, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&scrape, "process_cpu_seconds_total", &[]).is_some());
    assert!(scrape.ends_with("# EOF\n"));
    // Read-only: any other method is refused; HEAD has no body.
    for m in ["POST", "PUT", "DELETE"] {
        assert_eq!(http(d.port, m, "/metrics").map(|r| r.0), Some(405), "{m}");
    }
    assert_eq!(http(d.port, "HEAD", "/metrics"), Some((200, String::new())));
    assert_eq!(http(d.port, "GET", "/healthz"), Some((200, "ok\n".into())));
    assert_eq!(http(d.port, "GET", "/livez"), Some((200, "ok\n".into())));
    let _ = leaker.kill();
    let _ = leaker.wait();
    let (out, err) = d.stop();
    // The finding was logged on stdout as a JSON line.
    let logged: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines on stdout"))
        .collect();
    assert!(
        logged.iter().any(|l| l["event"] == "open"
            && l["kind"] == "runaway_threads"
            && l["job"] == job.as_str()
            && l["pid"] == leaker.id()),
        "{out}\nstderr:\n{err}"
    );
}

#[test]
fn series_stay_bounded_with_500_short_lived_jobs_and_gone_jobs_go() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const MAX_JOBS: usize = 40;
    const TOP: usize = 5;
    let d = Daemon::start(&[
        "--sample-ms",
        "200",
        "--max-jobs",
        &MAX_JOBS.to_string(),
        "--top-processes",
        &TOP.to_string(),
        "--gone-after-secs",
        "2",
    ]);
    let first = d.scrape();
    let probes = series(&first, "tracer_probe_attached", &[]).len();
    // Per job: 9 series (processes, threads, created, exited, parked, polls, rss, mapped, OOM
    // kills) plus its findings; per top process 5; the tracer's own: a fixed set plus a
    // series per probe.
    let bound = MAX_JOBS * 9 + TOP * 5 + 40 + probes + 20;
    let count = |s: &str| s.lines().filter(|l| !l.starts_with('#')).count();
    let mut made = Made::default();
    let slice = made.dir(v2_root().join(format!("tracer-burst-{}.slice", std::process::id())));
    let mut most_series = 0;
    let mut most_jobs = 0.0f64;
    let mut saw_burst = false;
    let mut check = |s: &str| {
        let n = count(s);
        most_series = most_series.max(n);
        assert!(n <= bound, "{n} series > {bound}:\n{s}");
        let jobs = value(s, "tracer_metrics_jobs", &[]).unwrap();
        most_jobs = most_jobs.max(jobs);
        assert!(jobs <= MAX_JOBS as f64, "{jobs}");
        saw_burst |= s.contains("tracer-burst-");
    };
    for batch in 0..10 {
        let mut procs = Vec::new();
        for i in 0..50 {
            let dir = made.dir(slice.join(format!(
                "tracer-burst-{}-{batch}-{i}.service",
                std::process::id()
            )));
            procs.push(spawn_in(&dir, "sleep 1"));
        }
        check(&d.scrape());
        for mut p in procs {
            let _ = p.wait();
        }
        check(&d.scrape());
    }
    assert!(saw_burst, "the short-lived jobs were exported");
    assert_eq!(
        most_jobs, MAX_JOBS as f64,
        "the job limit was reached and held"
    );
    // Gone jobs' series go after --gone-after-secs.
    std::thread::sleep(Duration::from_secs(4));
    let last = d.scrape();
    assert!(!last.contains("tracer-burst-"), "{last}");
    eprintln!("most series: {most_series} (bound {bound})");
    d.stop();
}
