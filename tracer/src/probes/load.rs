//! Loads the embedded kernel object, sets its globals and attaches every program. A program
//! that fails to attach is reported by name; the others keep running.

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint, TracePoint},
};
use std::os::fd::{AsFd, AsRawFd, RawFd};

use thiserror::Error;
use tracer_common::{
    maps::{self as m, WaitSlot, globals},
    tracepoints,
};

use super::{KernelStats, WaitTable, formats, tracefs};
use crate::tracefile::ProbeStatus;

/// The kernel object, built from `tracer-ebpf` by build.rs and embedded so that the binary is
/// all a user copies to a machine.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-probes"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "tracer must run as root (it loads eBPF programs): run it with sudo, or grant \
         CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN"
    )]
    NotRoot,
    #[error(
        "the kernel refused to load the eBPF maps/programs: {0}. Check that the kernel has BPF \
         (CONFIG_BPF_SYSCALL), that you are root (or have CAP_BPF+CAP_PERFMON), and, in a \
         container, that it runs privileged or with those capabilities"
    )]
    Bpf(#[source] aya::EbpfError),
    #[error("map {0} is missing from the eBPF object: the build is broken, rebuild the tracer")]
    MissingMap(&'static str),
    #[error("mapping the WAIT_SLOTS array into memory failed: {0}")]
    Mmap(#[source] std::io::Error),
    #[error("opening map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "no probe could be attached ({0}); nothing would be traced. See the errors above for each probe"
    )]
    NothingAttached(String),
}

/// What the collector sets in the kernel programs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Waits shorter than this are counted, not streamed.
    pub min_wait_ns: u64,
    /// RSS moves smaller than this are not streamed.
    pub rss_granule: u64,
    /// Trace only the tgids put in the `TRACED` map (and their children).
    pub filter: bool,
    /// Ring buffer size in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// Use the raw-tracepoint syscall hooks even where BTF ones load.
    pub raw_syscall_hooks: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            min_wait_ns: 1_000_000,
            rss_granule: 1 << 20,
            filter: false,
            ring_bytes: m::EVENTS_BYTES,
            raw_syscall_hooks: false,
        }
    }
}

pub struct Probes {
    // Keeps the programs and their links alive: dropping it detaches everything.
    _ebpf: Ebpf,
    /// The `flush_mem` program (owned by `_ebpf`) and the CPUs to run it on; None if it did not
    /// load (batches then leave only when full, old, or when their process exits).
    flush: Option<(RawFd, Vec<u32>)>,
    pub status: Vec<ProbeStatus>,
    pub events: RingBuf<MapData>,
    pub slots: WaitTable,
    pub waiting: HashMap<MapData, u32, WaitSlot>,
    pub traced: HashMap<MapData, u32, u32>,
    pub stats: PerCpuArray<MapData, u64>,
}

/// Loading eBPF programs needs root (or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN): say so first,
/// before anything else can fail less clearly.
pub fn require_root() -> Result<(), LoadError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot);
    }
    Ok(())
}

impl Probes {
    pub fn load(cfg: &LoadConfig) -> Result<Self, LoadError> {
        require_root()?;
        let self_tgid = std::process::id();
        let filter = cfg.filter as u32;
        let offsets = KernelOffsets::from_btf();
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::MIN_WAIT_NS, &cfg.min_wait_ns, true)
            .override_global(globals::RSS_GRANULE, &cfg.rss_granule, true)
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .override_global(globals::FILTER, &filter, true)
            .override_global(globals::TASK_EXIT_CODE_OFF, &offsets.exit_code, true)
            .override_global(globals::TASK_PID_OFF, &offsets.pid, true)
            .override_global(globals::TASK_TGID_OFF, &offsets.tgid, true)
            .override_global(globals::TASK_MM_OFF, &offsets.task_mm, true)
            .override_global(globals::MM_RSS_STAT_OFF, &offsets.mm_rss_stat, true)
            .override_global(globals::PCPU_COUNTER_SIZE, &offsets.pcpu_counter_size, true)
            .override_global(globals::PCPU_COUNT_OFF, &offsets.pcpu_count, true)
            .map_max_entries(m::EVENTS, cfg.ring_bytes)
            .load(OBJECT)
            .map_err(LoadError::Bpf)?;

        let mut status = Vec::new();
        let flush = load_flush(&mut ebpf);
        // Parsed once (a few MiB) for every BTF program.
        let btf = if cfg.raw_syscall_hooks {
            Err("raw tracepoints requested".to_owned())
        } else {
            Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))
        };
        attach_generic(&mut ebpf, &mut status, &btf, offsets.exit_code != 0);
        attach_tracepoints(&mut ebpf, &mut status, &btf, &offsets);
        drop(btf);
        for s in &status {
            match &s.error {
                None => tracing::debug!(probe = %s.name, "attached"),
                Some(e) => tracing::error!(probe = %s.name, "probe not attached: {e}"),
            }
        }
        if !status.iter().any(|s| s.attached) {
            let errors: Vec<String> = status
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.name)))
                .collect();
            return Err(LoadError::NothingAttached(errors.join("; ")));
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
        };
        let map_err = |name| move |source| LoadError::Map { name, source };
        let events = RingBuf::try_from(take(&mut ebpf, m::EVENTS)?).map_err(map_err(m::EVENTS))?;
        let waiting =
            HashMap::try_from(take(&mut ebpf, m::WAITING)?).map_err(map_err(m::WAITING))?;
        let slots = match take(&mut ebpf, m::WAIT_SLOTS)? {
            aya::maps::Map::Array(data) => WaitTable::map(data).map_err(LoadError::Mmap)?,
            _ => return Err(LoadError::MissingMap(m::WAIT_SLOTS)),
        };
        let traced = HashMap::try_from(take(&mut ebpf, m::TRACED)?).map_err(map_err(m::TRACED))?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, m::STATS)?).map_err(map_err(m::STATS))?;
        Ok(Self {
            _ebpf: ebpf,
            flush,
            status,
            events,
            slots,
            waiting,
            traced,
            stats,
        })
    }

    /// Adds a process to the kernel-side filter (its future children follow automatically).
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), aya::maps::MapError> {
        self.traced.insert(pid, 1, 0)
    }

    pub fn stats(&self) -> Result<KernelStats, aya::maps::MapError> {
        KernelStats::read(&self.stats)
    }

    /// The blocked threads right now: the slot table, plus the overflow map when it is used.
    pub fn waiting(&self) -> Vec<WaitSlot> {
        let mut v = self.slots.occupied();
        // Entries can vanish between key and value lookups (the thread woke): skip those.
        v.extend(self.waiting.iter().filter_map(Result::ok).map(|(_, s)| s));
        v
    }

    /// Emits every CPU's batch of small mappings (see `tracer_common::maps::MEM_ACC`).
    pub fn flush_batches(&mut self) {
        let Some((fd, cpus)) = &self.flush else {
            return;
        };
        for &cpu in cpus {
            if let Err(e) = test_run_on_cpu(*fd, cpu) {
                tracing::warn!(
                    "running {} on CPU {cpu} failed ({e}): from now on batches of small \
                     mappings reach the collector only when full, or when another process maps \
                     or their process exits",
                    m::FLUSH_PROGRAM
                );
                self.flush = None;
                return;
            }
        }
    }

    pub fn failed(&self) -> impl Iterator<Item = &ProbeStatus> {
        self.status.iter().filter(|s| !s.attached)
    }
}

fn load_flush(ebpf: &mut Ebpf) -> Option<(RawFd, Vec<u32>)> {
    let mut load = || -> Result<(RawFd, Vec<u32>), String> {
        let p: &mut RawTracePoint = ebpf
            .program_mut(m::FLUSH_PROGRAM)
            .ok_or("program missing")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        p.load().map_err(|e| load_error(m::FLUSH_PROGRAM, &e))?;
        let fd = p.fd().map_err(|e| format!("{e}"))?.as_fd().as_raw_fd();
        let cpus = aya::util::online_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        Ok((fd, cpus))
    };
    match load() {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(
                "the {} program did not load ({e}): batches of small mappings reach the \
                 collector only when full, or when another process maps or their process exits",
                m::FLUSH_PROGRAM
            );
            None
        }
    }
}

/// Runs a raw-tracepoint program once on `cpu` (BPF_PROG_TEST_RUN, BPF_F_TEST_RUN_ON_CPU).
fn test_run_on_cpu(prog_fd: RawFd, cpu: u32) -> std::io::Result<()> {
    // `union bpf_attr`, the `test` member (uapi/linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_F_TEST_RUN_ON_CPU: u32 = 1 << 0;
    let ctx = [0u64; 1];
    let attr = TestRun {
        prog_fd: prog_fd as u32,
        ctx_size_in: size_of_val(&ctx) as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_RUN_ON_CPU,
        cpu,
        ..Default::default()
    };
    // SAFETY: a valid bpf_attr of the size passed; ctx outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &attr as *const TestRun,
            size_of::<TestRun>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Kernel struct layouts the kernel programs use (from BTF); 0 disables what needs them.
#[derive(Default)]
struct KernelOffsets {
    exit_code: u64,
    pid: u64,
    tgid: u64,
    task_mm: u64,
    mm_rss_stat: u64,
    pcpu_counter_size: u64,
    pcpu_count: u64,
}

impl KernelOffsets {
    fn from_btf() -> Self {
        let Some(btf) = super::btf::KernelBtf::load() else {
            tracing::warn!(
                "no kernel BTF at /sys/kernel/btf/vmlinux: the signal that killed a process \
                 is unknown (deaths by signal are still told apart from exits)"
            );
            return Self::default();
        };
        let off = |f| btf.member_offset("task_struct", f).map(u64::from);
        Self {
            exit_code: off("exit_code").unwrap_or(0),
            pid: off("pid").unwrap_or(0),
            tgid: off("tgid").unwrap_or(0),
            task_mm: off("mm").unwrap_or(0),
            // An array of per-CPU counters since 6.2 (a struct of atomics before).
            mm_rss_stat: btf
                .array_member_offset("mm_struct", "rss_stat", "percpu_counter")
                .map_or(0, u64::from),
            pcpu_counter_size: btf.struct_size("percpu_counter").map_or(0, u64::from),
            pcpu_count: btf
                .member_offset("percpu_counter", "count")
                .map_or(0, u64::from),
        }
    }

    /// Whether the BTF `rss_stat` program has every offset it needs.
    fn rss_known(&self) -> bool {
        self.task_mm != 0
            && self.mm_rss_stat != 0
            && self.pcpu_counter_size != 0
            && self.pcpu_count != 0
    }
}

/// How a generic hook got attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Btf,
    Raw,
}

/// `sched_switch`, `sys_exit` and, when needed, `sys_enter`, as BTF tracepoints or as raw
/// tracepoints where BTF ones do not load.
///
/// The BTF `sched_switch` program opens a thread's wait slot when it goes to sleep in a call
/// that can park, and exit codes come from `task_struct`: then no `sys_enter` program runs at
/// all, and every syscall on the host pays one hook instead of two. Otherwise `sys_enter`
/// opens the slots (and reports `exit`/`exit_group`), and `sched_switch` (raw) stamps them.
fn attach_generic(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    exit_code_known: bool,
) {
    let switch = attach_hook(
        ebpf,
        status,
        btf,
        "sched_switch",
        "park start times: waits are timed from their syscall entry instead",
    );
    if switch.is_some() {
        set_switch_hooked(ebpf);
    }
    attach_hook(
        ebpf,
        status,
        btf,
        "sys_exit",
        "futex, poll, mmap, brk syscalls",
    );
    if switch != Some(Form::Btf) || !exit_code_known {
        attach_hook(
            ebpf,
            status,
            btf,
            "sys_enter",
            "futex and poll wait starts, exit calls",
        );
    }
}

/// Attaches `{hook}_btf`, or `{hook}_raw` when that fails; records the outcome.
fn attach_hook(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    hook: &str,
    lost: &str,
) -> Option<Form> {
    let btf_err = match btf {
        Ok(btf) => match attach_btf(ebpf, &format!("{hook}_btf"), hook, btf) {
            Ok(()) => {
                status.push(ok(format!("tp_btf/{hook}")));
                return Some(Form::Btf);
            }
            Err(e) => {
                tracing::warn!(
                    "tp_btf/{hook} not usable ({e}); using raw_tp/{hook}, which costs a \
                     little more per call"
                );
                e
            }
        },
        Err(e) => e.clone(),
    };
    match attach_raw(ebpf, &format!("{hook}_raw"), hook) {
        Ok(()) => {
            status.push(ok(format!("raw_tp/{hook}")));
            Some(Form::Raw)
        }
        Err(e) => {
            status.push(ProbeStatus {
                name: format!("{hook} ({lost})"),
                attached: false,
                error: Some(format!("tp_btf: {btf_err}; raw_tp: {e}")),
            });
            None
        }
    }
}

/// Tells the kernel programs that `sched_switch` now stamps park starts, so that `sys_enter`
/// (where it runs) leaves the start to it.
fn set_switch_hooked(ebpf: &mut Ebpf) {
    let res = ebpf
        .map_mut(m::SWITCH_HOOKED)
        .ok_or_else(|| "map missing".to_owned())
        .and_then(|map| Array::<_, u64>::try_from(map).map_err(|e| e.to_string()))
        .and_then(|mut a| a.set(0, 1, 0).map_err(|e| e.to_string()));
    if let Err(e) = res {
        tracing::warn!(
            "setting {} failed ({e}): where sys_enter runs, waits are timed from their \
             syscall entry",
            m::SWITCH_HOOKED
        );
    }
}

/// A program the kernel refused: one line for stderr and the file (what, and where to see
/// more); the verifier's log, often thousands of lines, goes to the debug log.
fn load_error(prog: &str, e: &aya::programs::ProgramError) -> String {
    let full = e.to_string();
    let (line, has_log) = summarize_load_error(&full);
    if has_log {
        tracing::debug!(program = prog, "verifier log: {full}");
    }
    line
}

fn summarize_load_error(full: &str) -> (String, bool) {
    match full.split_once("Verifier output:") {
        Some((head, _)) => (
            format!(
                "load: {} (the verifier refused the program; RUST_LOG=debug shows its log)",
                head.trim().trim_end_matches('.')
            ),
            true,
        ),
        None => (format!("load: {full}"), false),
    }
}

fn attach_btf(ebpf: &mut Ebpf, prog: &str, hook: &str, btf: &Btf) -> Result<(), String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load(hook, btf).map_err(|e| load_error(prog, &e))?;
    p.attach().map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, hook: &str) -> Result<(), String> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    p.load().map_err(|e| load_error(prog, &e))?;
    p.attach(hook).map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

/// The classic tracepoints; task creation and exit as BTF tracepoints first, where the kernel
/// has BTF and the `task_struct` offsets they load are known.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    offsets: &KernelOffsets,
) {
    let mut done: Vec<&str> = Vec::new();
    if let Ok(btf) = btf {
        for (hook, known) in [
            ("task_newtask", offsets.pid != 0),
            ("sched_process_exit", offsets.exit_code != 0),
            ("rss_stat", offsets.rss_known()),
        ] {
            if !known {
                continue;
            }
            match attach_btf(ebpf, &format!("{hook}_btf"), hook, btf) {
                Ok(()) => {
                    status.push(ok(format!("tp_btf/{hook}")));
                    done.push(hook);
                }
                Err(e) => tracing::warn!(
                    "tp_btf/{hook} not usable ({e}); using the classic tracepoint, which \
                     costs a little more per thread"
                ),
            }
        }
        // Renames by prctl or /proc/.../comm (BTF only: without it, a new name shows at the
        // process's next thread creation or exit).
        if offsets.pid != 0 && offsets.tgid != 0 {
            status.push(
                match attach_btf(ebpf, "task_rename_btf", "task_rename", btf) {
                    Ok(()) => ok("tp_btf/task_rename".to_owned()),
                    Err(e) => failed("tp_btf/task_rename (renames by prctl)".to_owned(), e),
                },
            );
        }
    }
    let dir = match tracefs::ensure_tracefs() {
        Ok(d) => d,
        Err(e) => {
            for tp in tracepoints::ALL
                .iter()
                .filter(|tp| !done.contains(&tp.name))
            {
                status.push(failed(tp_name(tp), e.clone()));
            }
            return;
        }
    };
    for tp in tracepoints::ALL
        .iter()
        .filter(|tp| !done.contains(&tp.name))
    {
        let res = formats::check(dir, tp).and_then(|()| {
            let p: &mut TracePoint = ebpf
                .program_mut(tp.program)
                .ok_or_else(|| format!("program {} missing", tp.program))?
                .try_into()
                .map_err(|e| format!("{e}"))?;
            p.load().map_err(|e| load_error(tp.program, &e))?;
            p.attach(tp.category, tp.name)
                .map_err(|e| format!("attach: {e}"))?;
            Ok(())
        });
        status.push(match res {
            Ok(()) => ok(tp_name(tp)),
            Err(e) => failed(tp_name(tp), e),
        });
    }
}

fn tp_name(tp: &tracepoints::Tracepoint) -> String {
    format!("tracepoint/{}/{}", tp.category, tp.name)
}

fn ok(name: String) -> ProbeStatus {
    ProbeStatus {
        name,
        attached: true,
        error: None,
    }
}

fn failed(name: String, error: String) -> ProbeStatus {
    ProbeStatus {
        name,
        attached: false,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_refusal_is_one_line_with_where_to_look() {
        let full = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                    Verifier output: 0: R1=ctx() R10=fp0\n1: (79) r8 = *(u64 *)(r6 +0)\n";
        let (line, has_log) = summarize_load_error(full);
        assert!(has_log);
        assert_eq!(
            line,
            "load: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22) (the \
             verifier refused the program; RUST_LOG=debug shows its log)"
        );
        assert!(!line.contains('\n'));
        let (line, has_log) = summarize_load_error("map EVENTS not found");
        assert!(!has_log);
        assert_eq!(line, "load: map EVENTS not found");
    }
}
