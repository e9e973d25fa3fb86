//! The `tracer` command line: a thin clap layer over the library.

use std::{
    fs::File,
    io::{BufReader, ErrorKind, IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracer::{
    collector::{self, Next},
    escape, report,
};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "Host-wide eBPF tracer of threads, futex/poll waits and memory, per process",
    long_about = "Host-wide eBPF tracer of thread creation, futex parks, poll/select waits and \
                  memory (mmap, brk, RSS, OOM kills), per process. Without a subcommand it runs \
                  `live`. Needs root. Logs go to stderr; set RUST_LOG=debug for more."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args, Clone)]
struct TraceArgs {
    /// Trace only this process and the children it creates from now on. Repeatable.
    #[arg(short, long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Trace only the processes of jobs whose name (as shown, e.g. `systemd:redis.service`,
    /// `k8s:shop/web-0/app`) or cgroup path contains JOB, including processes that enter them
    /// later (found every sample). Repeatable.
    #[arg(long = "job", value_name = "JOB")]
    jobs: Vec<String>,
    /// Stop after this many seconds.
    #[arg(short, long, value_name = "SECS")]
    duration: Option<f64>,
    /// Waits (futex, poll/select) shorter than this are counted in the kernel, not streamed.
    #[arg(long, default_value_t = 1.0, value_name = "MS")]
    min_wait_ms: f64,
    /// How often blocked threads and kernel counters are sampled.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=60_000))]
    sample_ms: u64,
    /// RSS changes smaller than this are not streamed.
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    rss_granule_kib: u64,
    /// Size of the kernel→collector ring buffer (a power of two, 4 KiB or more). Bigger
    /// absorbs longer bursts; it counts twice towards the collector's RSS.
    #[arg(long, default_value_t = 8192, value_name = "KIB")]
    ring_kib: u32,
    /// How to hook syscalls, context switches and thread creation/exit: BTF tracepoints with a
    /// raw/classic-tracepoint fallback (auto), or raw and classic tracepoints only (for
    /// kernels whose BTF tracepoints misbehave).
    #[arg(long, value_enum, default_value_t = Hooks::Auto)]
    syscall_hooks: Hooks,
    /// Creator stacks (who created each thread, from which code) copied per process per
    /// second on each CPU, after a burst of --stack-burst; 0 turns them off. Creation counts
    /// are exact either way; site counts beyond the budget come from samples.
    #[arg(long, default_value_t = 20, value_name = "N")]
    stacks_per_sec: u32,
    #[arg(long, default_value_t = 200, value_name = "N")]
    stack_burst: u32,
    /// The detectors' thresholds and windows, from a TOML file (see README: Findings); the
    /// flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Runaway threads: the window over which a process's live threads must keep rising
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    runaway_window_secs: Option<f64>,
    /// Memory leak: the window over which memory must grow steadily [default: 40].
    #[arg(long, value_name = "SECS")]
    leak_window_secs: Option<f64>,
    /// Memory bloat: how long stairs must have levelled off [default: 20].
    #[arg(long, value_name = "SECS")]
    bloat_plateau_secs: Option<f64>,
    /// Limit forecast: a limit nearer than this is a finding [default: 3600].
    #[arg(long, value_name = "SECS")]
    forecast_horizon_secs: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Hooks {
    Auto,
    Raw,
}

#[derive(Subcommand)]
enum Cmd {
    /// Live view of what is going wrong, per job and process (the default command). Without a
    /// terminal, or with --no-tui, a plain table every few seconds.
    #[command(alias = "live")]
    Top {
        /// Print a plain table every --every seconds instead of the interactive view.
        #[arg(long)]
        no_tui: bool,
        /// Also record everything to this trace file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Seconds between screens (tables).
        #[arg(long, default_value_t = 2.0, value_name = "SECS")]
        every: f64,
        /// Rows per table (--no-tui).
        #[arg(long, default_value_t = 20)]
        rows: usize,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Record a trace file: host-wide, of some pids or jobs, or of a command and its
    /// descendants.
    Record {
        /// The trace file to write. With rotation, numbered files next to it:
        /// `t.trc` → `t.000000.trc`, `t.000001.trc`, ...; each can be read alone.
        #[arg(short, long)]
        output: PathBuf,
        /// Start a new file when this one reaches this many MiB.
        #[arg(long, value_name = "MIB")]
        rotate_mb: Option<f64>,
        /// Start a new file when this one is this old.
        #[arg(long, value_name = "SECS")]
        rotate_secs: Option<f64>,
        /// With rotation: keep only the newest N files.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
        #[command(flatten)]
        trace: TraceArgs,
        /// Run this command, trace it and its descendants until it exits, and exit with its
        /// status.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Run a command, trace it and its descendants, and print their summary and findings when
    /// it exits (like `perf stat`: on stderr, so the command's stdout stays its own). Exits
    /// with the command's status.
    Run {
        /// The summary as JSON (the `report --format json` schema).
        #[arg(long)]
        json: bool,
        /// Write the summary to this file instead of stderr.
        #[arg(long, value_name = "FILE")]
        summary_file: Option<PathBuf>,
        /// Also record everything to this trace file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        trace: TraceArgs,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Stream findings as they open and resolve, one line each. Exit status with
    /// --exit-on-finding: 0 when a finding opened, 1 when none did before the end.
    Watch {
        /// One JSON object per line: `event` (`open` or `resolved`) and the finding's fields.
        #[arg(long)]
        json: bool,
        /// Stop at the first finding that opens.
        #[arg(long)]
        exit_on_finding: bool,
        /// Also record everything to this trace file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Trace the whole host without a terminal and serve Prometheus metrics over HTTP (the
    /// Kubernetes DaemonSet; see deploy/). Findings are also written to stdout as JSON lines
    /// (the `watch --json` format); logs go to stderr.
    Daemon {
        /// Where to serve /metrics and /healthz (port 0: one the kernel picks, logged).
        #[arg(long, default_value = "0.0.0.0:9465", value_name = "ADDR:PORT")]
        listen: String,
        /// Processes exported with their own series (the most troubled first).
        #[arg(long, default_value_t = 20, value_name = "N")]
        top_processes: usize,
        /// Jobs exported at most (gone jobs make room first).
        #[arg(long, default_value_t = 500, value_name = "N")]
        max_jobs: usize,
        /// How long a job's series stay after its last process ended.
        #[arg(long, default_value_t = 300.0, value_name = "SECS")]
        gone_after_secs: f64,
        /// /healthz fails when more than this percentage of events was lost in a minute.
        #[arg(long, default_value_t = 1.0, value_name = "PERCENT")]
        max_loss_percent: f64,
        /// Also record everything to this trace file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        trace: TraceArgs,
    },
    /// Summarise a trace file.
    Report {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Show every process with activity, not only the top 40.
        #[arg(long)]
        all: bool,
        /// Futex parks at least this long are listed as long.
        #[arg(long, default_value_t = 10.0, value_name = "SECS")]
        long_park_secs: f64,
    },
    /// Convert a trace file for other tools: JSON lines (one record per line, for jq, pandas
    /// or DuckDB; schema in README) or a Perfetto trace (opens in ui.perfetto.dev).
    Export {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Where to write it (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `tracer completions bash >
    /// /etc/bash_completion.d/tracer`).
    Completions { shell: clap_complete::Shell },
    /// Write man pages: tracer.1 and one per command (tracer-top.1, ...) into DIR, or
    /// tracer.1 to stdout.
    Man {
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
    Perfetto,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// The longest duration accepted: a year (timers past that overflow nowhere, but no trace
/// needs it).
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

fn secs(v: Option<f64>, what: &str) -> anyhow::Result<Option<Duration>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECS => {
            Ok(Some(Duration::from_secs_f64(s)))
        }
        Some(s) => bail!(
            "{what} must be a number of seconds above 0 and at most {MAX_SECS} (a year), got {s}"
        ),
    }
}

/// Writes to stdout; `Ok(false)` when stdout was closed (`| head`), a normal way to stop.
fn out(text: &str) -> anyhow::Result<bool> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

fn options(t: &TraceArgs) -> anyhow::Result<collector::SessionOptions> {
    if !(t.min_wait_ms.is_finite() && t.min_wait_ms >= 0.0) {
        bail!("--min-wait-ms must be 0 or more, got {}", t.min_wait_ms);
    }
    if t.ring_kib < 4 || !t.ring_kib.is_power_of_two() || t.ring_kib > (1 << 20) {
        bail!(
            "--ring-kib must be a power of two from 4 to 1048576 (KiB), got {}",
            t.ring_kib
        );
    }
    if t.jobs.iter().any(|j| j.trim().is_empty()) {
        bail!("--job needs part of a job's name or cgroup path, e.g. --job redis.service");
    }
    Ok(collector::SessionOptions {
        pids: t.pids.clone(),
        jobs: t.jobs.clone(),
        duration: secs(t.duration, "--duration")?,
        min_wait: Duration::from_secs_f64(t.min_wait_ms / 1000.0),
        ring_bytes: t.ring_kib * 1024,
        raw_syscall_hooks: matches!(t.syscall_hooks, Hooks::Raw),
        sample_interval: Duration::from_millis(t.sample_ms),
        rss_granule: t.rss_granule_kib * 1024,
        stacks_per_sec: t.stacks_per_sec,
        stack_burst: t.stack_burst,
        detect: detect_config(t)?,
        ..Default::default()
    })
}

/// The defaults, then the config file, then the flags.
fn detect_config(t: &TraceArgs) -> anyhow::Result<tracer::detect::DetectConfig> {
    let mut c = tracer::detect::DetectConfig::default();
    if let Some(path) = &t.config {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the config file {} (--config)",
                escape::term(&path.display().to_string())
            )
        })?;
        c.apply_toml(&path.display().to_string(), &text)
            .context("in the config file (--config): fix or remove the key it names")?;
    }
    let ns = |v: Option<f64>, flag: &str| -> anyhow::Result<Option<u64>> {
        Ok(secs(v, flag)?.map(|d| d.as_nanos() as u64))
    };
    if let Some(v) = ns(t.runaway_window_secs, "--runaway-window-secs")? {
        c.runaway_window_ns = v;
    }
    if let Some(v) = ns(t.leak_window_secs, "--leak-window-secs")? {
        c.leak_window_ns = v;
    }
    if let Some(v) = ns(t.bloat_plateau_secs, "--bloat-plateau-secs")? {
        c.bloat_plateau_ns = v;
    }
    if let Some(v) = ns(t.forecast_horizon_secs, "--forecast-horizon-secs")? {
        c.forecast_horizon_ns = v;
    }
    Ok(c)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let cmd = match cli.cmd {
        Some(c) => c,
        // `tracer` alone is `tracer top`.
        None => Cli::parse_from(["tracer", "top"]).cmd.expect("top parses"),
    };
    match cmd {
        Cmd::Top {
            no_tui,
            output,
            every,
            rows,
            trace,
        } => {
            let mut opts = options(&trace)?;
            opts.output = output;
            opts.print_every = secs(Some(every), "--every")?;
            if !no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
                let every = opts.print_every.unwrap_or(Duration::from_secs(2));
                let outcome = runtime()?.block_on(tracer::top::app::run(opts, every))?;
                summarize(&outcome, None);
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("tracing {}; Ctrl-C to stop", scope(&opts));
            let outcome = runtime()?.block_on(collector::run(opts, |engine, elapsed| {
                let text = report::render_live(engine, elapsed, rows);
                match out(&text) {
                    Ok(true) => Next::Continue(()),
                    Ok(false) => Next::Break("output closed"),
                    Err(e) => {
                        tracing::error!("{e:#}: stopping");
                        Next::Break("output failed")
                    }
                }
            }))?;
            summarize(&outcome, None);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Record {
            output,
            rotate_mb,
            rotate_secs,
            keep,
            trace,
            command,
        } => {
            let mut opts = options(&trace)?;
            opts.output = Some(output.clone());
            let max_bytes = match rotate_mb {
                Some(m) if m.is_finite() && m > 0.0 => Some((m * (1 << 20) as f64) as u64),
                Some(m) => bail!("--rotate-mb must be above 0, got {m}"),
                None => None,
            };
            let max_age = secs(rotate_secs, "--rotate-secs")?;
            if keep.is_some() && max_bytes.is_none() && max_age.is_none() {
                bail!(
                    "--keep needs --rotate-mb or --rotate-secs (without rotation there is one file)"
                );
            }
            if max_bytes.is_some() || max_age.is_some() {
                opts.rotate = Some(collector::Rotate {
                    max_bytes,
                    max_age,
                    keep: keep.map(|k| k as usize),
                });
            }
            opts.command = command;
            let outcome = runtime()?.block_on(collector::run(opts, |_, _| Next::Continue(())))?;
            summarize(&outcome, Some(&output));
            Ok(exit_status(outcome.exit_code))
        }
        Cmd::Run {
            json,
            summary_file,
            output,
            trace,
            command,
        } => {
            let mut opts = options(&trace)?;
            opts.output = output.clone();
            opts.command = command;
            // Called once, when the command has exited and everything is drained.
            let mut last = None;
            let outcome = runtime()?.block_on(collector::run(opts, |engine, _| {
                last = Some(report::from_engine(engine, None, 0));
                Next::Continue(())
            }))?;
            let r = last
                .context("the session ended before its first sample")?
                .context("building the summary")?;
            let text = if json {
                serde_json::to_string_pretty(&r)? + "\n"
            } else {
                report::render_text(&r, 40)
            };
            summarize(&outcome, output.as_ref());
            match &summary_file {
                Some(p) => std::fs::write(p, text).with_context(|| {
                    format!(
                        "writing the summary to {} (--summary-file)",
                        escape::term(&p.display().to_string())
                    )
                })?,
                None => eprint!("{text}"),
            }
            Ok(exit_status(outcome.exit_code))
        }
        Cmd::Watch {
            json,
            exit_on_finding,
            output,
            trace,
        } => {
            let mut opts = options(&trace)?;
            opts.output = output.clone();
            opts.print_every = Some(opts.sample_interval);
            eprintln!("watching {} for findings; Ctrl-C to stop", scope(&opts));
            let colour = tracer::terminal::colour_stdout();
            let mut stream = tracer::watch::FindingStream::default();
            let mut opened = false;
            let outcome = runtime()?.block_on(collector::run(opts, |engine, _| {
                let mut text = String::new();
                for (change, f) in stream.changes(&engine.detectors.findings) {
                    opened |= change == tracer::watch::Change::Open;
                    text += &if json {
                        tracer::watch::json_line(change, f)
                    } else {
                        tracer::watch::text_line(change, f, colour)
                    };
                }
                match out(&text) {
                    Ok(false) => Next::Break("output closed"),
                    Ok(true) if exit_on_finding && opened => {
                        Next::Break("a finding opened (--exit-on-finding)")
                    }
                    Ok(true) => Next::Continue(()),
                    Err(e) => {
                        tracing::error!("{e:#}: stopping");
                        Next::Break("output failed")
                    }
                }
            }))?;
            summarize(&outcome, output.as_ref());
            Ok(if exit_on_finding && !opened {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Daemon {
            listen,
            top_processes,
            max_jobs,
            gone_after_secs,
            max_loss_percent,
            output,
            trace,
        } => {
            if !(0.0..=100.0).contains(&max_loss_percent) {
                bail!("--max-loss-percent must be from 0 to 100, got {max_loss_percent}");
            }
            if max_jobs == 0 {
                bail!("--max-jobs must be at least 1");
            }
            let cfg = tracer::metrics::ExporterConfig {
                top_processes,
                max_jobs,
                gone_after_ns: secs(Some(gone_after_secs), "--gone-after-secs")?
                    .unwrap_or_default()
                    .as_nanos() as u64,
                max_loss_ratio: max_loss_percent / 100.0,
            };
            let mut opts = options(&trace)?;
            opts.output = output.clone();
            opts.print_every = Some(opts.sample_interval);
            daemon(&listen, cfg, opts, output.as_ref())
        }
        Cmd::Report {
            file,
            format,
            all,
            long_park_secs,
        } => {
            let long = secs(Some(long_park_secs), "--long-park-secs")?.unwrap_or_default();
            let f = File::open(&file)
                .with_context(|| format!("cannot open trace file {}", file.display()))?;
            let r =
                report::build_with(BufReader::with_capacity(1 << 20, f), long.as_nanos() as u64)
                    .with_context(|| format!("reading trace file {}", file.display()))?;
            if let Some(t) = &r.truncated {
                eprintln!("tracer: warning: {}: {t}", file.display());
            }
            if r.skipped_records > 0 {
                eprintln!(
                    "tracer: warning: {}: {} corrupt records skipped",
                    file.display(),
                    r.skipped_records
                );
            }
            let text = match format {
                Format::Json => serde_json::to_string_pretty(&r)? + "\n",
                Format::Text => report::render_text(&r, if all { usize::MAX } else { 40 }),
            };
            out(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export {
            file,
            format,
            output,
        } => {
            let f = File::open(&file).with_context(|| {
                format!(
                    "cannot open trace file {}",
                    escape::term(&file.display().to_string())
                )
            })?;
            let input = BufReader::with_capacity(1 << 20, f);
            let sink: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(File::create(p).with_context(
                    || format!("cannot create {}", escape::term(&p.display().to_string())),
                )?)),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            if matches!(format, ExportFormat::Perfetto)
                && output.is_none()
                && std::io::stdout().is_terminal()
            {
                bail!("a Perfetto trace is binary: give -o FILE.pftrace, or redirect stdout");
            }
            let written = match format {
                ExportFormat::Jsonl => tracer::export::jsonl::write(input, sink)
                    .map(|w| (w.events, w.records, w.undecodable, w.truncated)),
                ExportFormat::Perfetto => tracer::export::perfetto::write(input, sink)
                    .map(|w| (w.packets, 0, 0, w.truncated)),
            };
            let (events, records, undecodable, truncated) = match written {
                Ok(w) => w,
                // `| head`: a normal way to stop reading.
                Err(tracer::export::ExportError::Write(e)) if e.kind() == ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("exporting {}", escape::term(&file.display().to_string()))
                    });
                }
            };
            if let Some(t) = &truncated {
                eprintln!("tracer: warning: {}: {t}", file.display());
            }
            if undecodable > 0 {
                eprintln!(
                    "tracer: warning: {}: {undecodable} undecodable events left out",
                    file.display()
                );
            }
            tracing::info!(written = events, records, "exported");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tracer", &mut buf);
            out(&String::from_utf8_lossy(&buf))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => {
            man_pages(dir)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn daemon(
    listen: &str,
    cfg: tracer::metrics::ExporterConfig,
    opts: collector::SessionOptions,
    output: Option<&PathBuf>,
) -> anyhow::Result<ExitCode> {
    use tracer::metrics::{
        Exporter,
        http::{Shared, Snapshot},
    };
    let shared: Shared = Default::default();
    // Samples come every --sample-ms: missing a few in a row is a stuck collector.
    let stale_after = (opts.sample_interval * 5).max(Duration::from_secs(10));
    let mut exporter = Exporter::new(cfg);
    let mut stream = tracer::watch::FindingStream::default();
    let listener = std::net::TcpListener::bind(listen).with_context(|| {
        format!(
            "cannot listen on {listen} (--listen): is the port in use, or the address not this \
             host's?"
        )
    })?;
    // The bound address: with port 0 the kernel chose it.
    let addr = listener
        .local_addr()
        .map_or_else(|_| listen.to_owned(), |a| a.to_string());
    tracer::metrics::http::spawn(listener, shared.clone())
        .context("starting the metrics endpoint's thread")?;
    tracing::info!("serving /metrics and /healthz on {addr}");
    let outcome = runtime()?.block_on(async {
        collector::run(opts, |engine, _| {
            exporter.update(engine, collector::monotonic_ns());
            let health = exporter.health(engine);
            *shared.lock().unwrap_or_else(|p| p.into_inner()) = Snapshot {
                metrics: exporter.render(engine),
                healthy: health.ok,
                health: health.text,
                made: Some(std::time::Instant::now()),
                stale_after,
            };
            let lines: String = stream
                .changes(&engine.detectors.findings)
                .into_iter()
                .map(|(c, f)| tracer::watch::json_line(c, f))
                .collect();
            // Metrics go on without a reader of the findings log.
            if let Err(e) = out(&lines) {
                tracing::warn!("{e:#}");
            }
            Next::Continue(())
        })
        .await
    })?;
    summarize(&outcome, output);
    Ok(ExitCode::SUCCESS)
}

/// What a session traces, for its first line.
fn scope(o: &collector::SessionOptions) -> String {
    let mut parts = Vec::new();
    if !o.pids.is_empty() {
        parts.push(format!("pids {:?}", o.pids));
    }
    if !o.jobs.is_empty() {
        parts.push(format!("jobs matching {:?}", o.jobs));
    }
    if parts.is_empty() {
        "the whole host".into()
    } else {
        parts.join(" and ")
    }
}

fn exit_status(code: Option<i32>) -> ExitCode {
    match code {
        Some(c) => ExitCode::from(c.clamp(0, 255) as u8),
        None => ExitCode::SUCCESS,
    }
}

fn man_pages(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut buf)?;
        out(&String::from_utf8_lossy(&buf))?;
        return Ok(());
    };
    let write = |name: &str, c: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("tracer-{}", sub.get_name());
        write(
            &name,
            sub.clone()
                .display_name(name.clone())
                .bin_name(format!("tracer {}", sub.get_name())),
        )?;
    }
    write("tracer", cmd)
}

fn summarize(o: &collector::Outcome, path: Option<&PathBuf>) {
    if let Some(p) = path {
        let last = o.last_file.as_ref().filter(|l| *l != p);
        eprintln!(
            "tracer: wrote {} events ({} bytes) to {}{}",
            o.events,
            o.bytes,
            escape::term(&p.display().to_string()),
            last.map_or_else(String::new, |l| format!(
                " (rotated; the newest file is {})",
                escape::term(&l.display().to_string())
            ))
        );
    }
    if o.lost > 0 {
        eprintln!("tracer: WARNING: {} events were lost in the kernel", o.lost);
    }
    for p in &o.failed_probes {
        eprintln!("tracer: WARNING: probe {p} was not attached: its events are missing");
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // stderr, held while `top` owns the screen.
        .with_writer(|| tracer::terminal::LogGate)
        // Colours only on a terminal, and not with NO_COLOR.
        .with_ansi(tracer::terminal::colour_stderr())
        .init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
