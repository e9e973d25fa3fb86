//! Creator stacks: the registers and stack bytes the kernel copied at a creation (see
//! `tracer_common::StackEvent`) become symbolized frames, in a worker thread off the event
//! drain. The process's modules come from `/proc/<pid>/maps`, read at its first stack (while it
//! lives) and kept until it execs or exits; ELF files are parsed once for all processes.

mod elf;
pub mod maps;
mod symbolize;
mod unwind;

use std::{
    collections::HashMap,
    sync::mpsc,
    time::{Duration, Instant},
};

use framehop::x86_64::CacheX86_64;

use crate::tracefile::StackRecord;

/// Stacks waiting for the worker (8 KiB each); past this, new ones are dropped (and counted).
const QUEUE: usize = 256;
/// After this long without a stack the worker drops its symbolizer's caches (parsed symbol
/// tables and DWARF: tens of MiB for a binary with debug info) and gives the memory back.
const IDLE_RESET: Duration = Duration::from_secs(2);
/// Processes whose modules are kept; the cache is emptied when full.
const MAX_PROCS: usize = 256;

/// One copied stack to unwind.
pub struct StackJob {
    pub ts_ns: u64,
    pub pid: u32,
    pub creator_tid: u32,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack: Vec<u8>,
    /// The process's executable mappings, read by the collector at its first stack (while the
    /// process surely lives: a short-lived one may be gone by the time the worker runs).
    pub maps: Option<Vec<maps::Mapping>>,
}

enum Cmd {
    Unwind(StackJob),
    /// The process exec'd or exited: its modules changed or are gone.
    Forget(u32),
}

/// Unwinds and symbolizes one stack (the worker's work; tests call it directly).
#[derive(Default)]
pub struct StackWork {
    files: unwind::Files,
    procs: HashMap<u32, unwind::ProcUnwinder>,
    cache: CacheX86_64,
    symbols: symbolize::Symbols,
}

impl StackWork {
    pub fn run(&mut self, job: StackJob) -> StackRecord {
        let mut rec = StackRecord {
            ts_ns: job.ts_ns,
            pid: job.pid,
            creator_tid: job.creator_tid,
            tid: job.tid,
            stack_bytes: job.stack.len() as u32,
            ..Default::default()
        };
        // The process's modules: cached, re-read when the ip is in none of them (a library
        // loaded since).
        if let Some(m) = job.maps {
            if self.procs.len() >= MAX_PROCS {
                self.procs.clear();
            }
            let u = unwind::ProcUnwinder::new(job.pid, m, &mut self.files);
            self.procs.insert(job.pid, u);
        }
        let stale = self
            .procs
            .get(&job.pid)
            .is_none_or(|p| p.mapping(job.ip).is_none());
        if stale {
            match maps::read(job.pid) {
                Ok(m) => {
                    if self.procs.len() >= MAX_PROCS {
                        self.procs.clear();
                    }
                    let u = unwind::ProcUnwinder::new(job.pid, m, &mut self.files);
                    self.procs.insert(job.pid, u);
                }
                Err(e) => {
                    rec.error = Some(format!(
                        "/proc/{}/maps: {e} (the process ended before its stack was read)",
                        job.pid
                    ));
                    return rec;
                }
            }
        }
        let p = &self.procs[&job.pid];
        let addrs = p.unwind(&mut self.cache, job.ip, job.sp, job.bp, &job.stack);
        rec.frames = self
            .symbols
            .frames(job.pid, &p.maps, &mut self.files, &addrs);
        rec
    }
}

/// The worker thread and the channels to it.
pub struct Stacks {
    cmds: mpsc::SyncSender<Cmd>,
    answers: mpsc::Receiver<StackRecord>,
    pending: usize,
    /// Pids whose module list was sent with a stack.
    mapped: std::collections::HashSet<u32>,
    /// Stacks not unwound because the worker was behind.
    pub dropped: u64,
}

impl Stacks {
    pub fn start() -> std::io::Result<Self> {
        let (cmd_tx, cmd_rx) = mpsc::sync_channel::<Cmd>(QUEUE);
        let (ans_tx, ans_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("stack-unwinder".into())
            .spawn(move || {
                let mut work = StackWork::default();
                let mut dirty = false;
                loop {
                    let cmd = match cmd_rx.recv_timeout(IDLE_RESET) {
                        Ok(c) => c,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if dirty {
                                work.symbols.reset();
                                // SAFETY: malloc_trim only returns free heap memory.
                                unsafe { libc::malloc_trim(0) };
                                dirty = false;
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    dirty = true;
                    match cmd {
                        Cmd::Unwind(job) => {
                            if ans_tx.send(work.run(job)).is_err() {
                                break;
                            }
                        }
                        Cmd::Forget(pid) => {
                            work.procs.remove(&pid);
                        }
                    }
                }
            })?;
        Ok(Self {
            cmds: cmd_tx,
            answers: ans_rx,
            pending: 0,
            mapped: Default::default(),
            dropped: 0,
        })
    }

    pub fn submit(&mut self, job: StackJob) {
        match self.cmds.try_send(Cmd::Unwind(job)) {
            Ok(()) => self.pending += 1,
            Err(_) => self.dropped += 1,
        }
    }

    /// Whether the worker has no module list of `pid` yet: the caller reads it now (once per
    /// process, until it execs or exits), while the process surely lives.
    pub fn needs_maps(&mut self, pid: u32) -> bool {
        if self.mapped.len() >= MAX_PROCS {
            self.mapped.clear();
        }
        self.mapped.insert(pid)
    }

    pub fn forget(&mut self, pid: u32) {
        self.mapped.remove(&pid);
        // Best effort: a full queue only delays the refresh to the next ip outside the maps.
        let _ = self.cmds.try_send(Cmd::Forget(pid));
    }

    /// The stacks unwound so far, without waiting.
    pub fn answers(&mut self) -> Vec<StackRecord> {
        let v: Vec<StackRecord> = self.answers.try_iter().collect();
        self.pending -= v.len().min(self.pending);
        v
    }

    /// Waits up to `max` for the stacks still queued (the end of a session).
    pub fn settle(&mut self, max: Duration) -> Vec<StackRecord> {
        let deadline = Instant::now() + max;
        let mut v = self.answers();
        while self.pending > 0 {
            match self
                .answers
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(r) => {
                    self.pending -= 1;
                    v.push(r);
                }
                Err(_) => break,
            }
        }
        v
    }
}
