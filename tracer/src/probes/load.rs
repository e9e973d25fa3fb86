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
        "tracer needs {0} to load its eBPF programs: run it as root (sudo), or grant it \
         CAP_BPF and CAP_PERFMON (plus CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE for all it \
         can do), e.g. `setcap cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep tracer`"
    )]
    NotPrivileged(String),
    #[error(
        "the kernel refused to load the eBPF maps/programs: {0}. Check that the kernel has BPF \
         (CONFIG_BPF_SYSCALL), that you are root (or have CAP_BPF+CAP_PERFMON), on kernels \
         before 5.11 that RLIMIT_MEMLOCK is high enough (`ulimit -l unlimited`, or \
         CAP_SYS_RESOURCE), and, in a container, that it runs privileged or with those \
         capabilities"
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
    /// Creator stacks copied per process per second per CPU (0: none), and the burst allowed.
    pub stacks_per_sec: u32,
    pub stack_burst: u32,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            min_wait_ns: 1_000_000,
            rss_granule: 1 << 20,
            filter: false,
            ring_bytes: m::EVENTS_BYTES,
            raw_syscall_hooks: false,
            stacks_per_sec: 20,
            stack_burst: 200,
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
    pub traced: HashMap<MapData, u32, u32>,
    pub stats: PerCpuArray<MapData, u64>,
}

/// `kernel.pid_max`: tids are below it. The kernel's default when it cannot be read.
fn pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32_768)
}

/// Loading eBPF programs needs root or CAP_BPF + CAP_PERFMON (see `privileges`): say so first,
/// before anything else can fail less clearly; warn of what the optional ones would add.
pub fn require_privileges() -> Result<(), LoadError> {
    let caps = super::privileges::effective();
    if let Some(missing) = super::privileges::missing_required(caps) {
        return Err(LoadError::NotPrivileged(missing));
    }
    for what in super::privileges::missing_optional(caps) {
        tracing::warn!("{what}");
    }
    Ok(())
}

impl Probes {
    pub fn load(cfg: &LoadConfig) -> Result<Self, LoadError> {
        let self_tgid = std::process::id();
        let filter = cfg.filter as u32;
        let offsets = KernelOffsets::from_btf();
        let (stack_period, stack_burst) = if cfg.stacks_per_sec == 0 || offsets.task_stack == 0 {
            (0u64, 0u64)
        } else {
            let period = 1_000_000_000 / u64::from(cfg.stacks_per_sec);
            (period, period * u64::from(cfg.stack_burst.max(1)))
        };
        let slots_len = super::wait_slots_len(pid_max());
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::MIN_WAIT_NS, &cfg.min_wait_ns, true)
            .override_global(globals::RSS_GRANULE, &cfg.rss_granule, true)
            .override_global(globals::SELF_TGID, &self_tgid, true)
            .override_global(globals::FILTER, &filter, true)
            .override_global(globals::TASK_EXIT_CODE_OFF, &offsets.exit_code, true)
            .override_global(globals::TASK_PID_OFF, &offsets.pid, true)
            .override_global(globals::TASK_TGID_OFF, &offsets.tgid, true)
            .override_global(globals::TASK_SIGNAL_OFF, &offsets.signal, true)
            .override_global(globals::SIGNAL_LIVE_OFF, &offsets.signal_live, true)
            .override_global(globals::TASK_STATE_OFF, &offsets.task_state, true)
            .override_global(globals::TASK_MM_OFF, &offsets.task_mm, true)
            .override_global(globals::MM_START_BRK_OFF, &offsets.mm_start_brk, true)
            .override_global(globals::MM_RSS_STAT_OFF, &offsets.mm_rss_stat, true)
            .override_global(globals::PCPU_COUNTER_SIZE, &offsets.pcpu_counter_size, true)
            .override_global(globals::PCPU_COUNT_OFF, &offsets.pcpu_count, true)
            .override_global(globals::MEMCG_V1, &offsets.memcg_v1, true)
            .override_global(globals::TASK_CGROUPS_OFF, &offsets.task_cgroups, true)
            .override_global(globals::CSS_SET_MEMCG_OFF, &offsets.css_set_memcg, true)
            .override_global(globals::CSS_CGROUP_OFF, &offsets.css_cgroup, true)
            .override_global(globals::CGROUP_KN_OFF, &offsets.cgroup_kn, true)
            .override_global(globals::KN_ID_OFF, &offsets.kn_id, true)
            .override_global(globals::STACK_PERIOD_NS, &stack_period, true)
            .override_global(globals::STACK_BURST_NS, &stack_burst, true)
            .override_global(globals::TASK_STACK_OFF, &offsets.task_stack, true)
            .override_global(globals::PT_REGS_TOP_OFF, &offsets.pt_regs_top, true)
            .override_global(globals::PT_REGS_IP_OFF, &offsets.pt_regs_ip, true)
            .override_global(globals::PT_REGS_SP_OFF, &offsets.pt_regs_sp, true)
            .override_global(globals::PT_REGS_BP_OFF, &offsets.pt_regs_bp, true)
            .override_global(globals::PT_REGS_CS_OFF, &offsets.pt_regs_cs, true)
            .map_max_entries(m::EVENTS, cfg.ring_bytes)
            .map_max_entries(m::WAIT_SLOTS, slots_len)
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
        attach_generic(&mut ebpf, &mut status, &btf, &offsets);
        attach_tracepoints(&mut ebpf, &mut status, &btf, &offsets);
        drop(btf);
        for s in &status {
            match (&s.error, &s.note) {
                (Some(e), _) => tracing::error!(probe = %s.name, "probe not attached: {e}"),
                (None, Some(n)) => tracing::warn!(probe = %s.name, "attached, degraded: {n}"),
                (None, None) => tracing::debug!(probe = %s.name, "attached"),
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
        let slots = match take(&mut ebpf, m::WAIT_SLOTS)? {
            aya::maps::Map::Array(data) => {
                WaitTable::map(data, slots_len).map_err(LoadError::Mmap)?
            }
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
            traced,
            stats,
        })
    }

    /// Adds a process to the kernel-side filter (its future children follow automatically).
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), aya::maps::MapError> {
        self.traced.insert(pid, 1, 0)
    }

    /// Whether a process is in the kernel-side filter (added, or a child of one).
    pub fn is_traced(&self, pid: u32) -> bool {
        self.traced.get(&pid, 0).is_ok()
    }

    /// Takes an ended process out of the kernel-side filter (it may be gone already).
    pub fn untrace_pid(&mut self, pid: u32) {
        let _ = self.traced.remove(&pid);
    }

    pub fn stats(&self) -> Result<KernelStats, aya::maps::MapError> {
        KernelStats::read(&self.stats)
    }

    /// Which of `tids` are in a wait call right now (read in place: no syscall).
    pub fn waiting(&self, tids: impl Iterator<Item = u32>) -> Vec<(u32, WaitSlot)> {
        tids.filter_map(|tid| Some((tid, self.slots.get(tid)?)))
            .collect()
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
    signal: u64,
    signal_live: u64,
    task_state: u64,
    task_mm: u64,
    mm_start_brk: u64,
    mm_rss_stat: u64,
    pcpu_counter_size: u64,
    pcpu_count: u64,
    /// 1 when the memory controller is on v1 and the five offsets below are known.
    memcg_v1: u64,
    task_cgroups: u64,
    css_set_memcg: u64,
    css_cgroup: u64,
    cgroup_kn: u64,
    kn_id: u64,
    /// `task_struct.stack`; `THREAD_SIZE - sizeof(pt_regs)`; `pt_regs` members.
    task_stack: u64,
    pt_regs_top: u64,
    pt_regs_ip: u64,
    pt_regs_sp: u64,
    pt_regs_bp: u64,
    pt_regs_cs: u64,
}

/// x86_64's kernel stack size without KASAN (Debian's kernels): the user registers sit at its
/// top. The program checks the saved `cs` is a user one before trusting them.
const THREAD_SIZE: u64 = 16 << 10;

impl KernelOffsets {
    fn from_btf() -> Self {
        let Some(btf) = super::btf::KernelBtf::load() else {
            tracing::warn!(
                "no kernel BTF at /sys/kernel/btf/vmlinux: the signal that killed a process \
                 is unknown (deaths by signal are still told apart from exits), and a process \
                 ends when its last known thread exits"
            );
            return Self::default();
        };
        let off = |s, f| btf.member_offset(s, f).map_or(0, u64::from);
        Self {
            exit_code: off("task_struct", "exit_code"),
            pid: off("task_struct", "pid"),
            tgid: off("task_struct", "tgid"),
            signal: off("task_struct", "signal"),
            signal_live: btf
                .path_offset("signal_struct", &["live", "counter"])
                .map_or(0, u64::from),
            // Renamed from `state` in 5.14.
            task_state: btf
                .member_offset("task_struct", "__state")
                .or_else(|| btf.member_offset("task_struct", "state"))
                .map_or(0, u64::from),
            task_mm: off("task_struct", "mm"),
            mm_start_brk: off("mm_struct", "start_brk"),
            // An array of per-CPU counters since 6.2 (a struct of atomics before).
            mm_rss_stat: btf
                .array_member_offset("mm_struct", "rss_stat", "percpu_counter")
                .map_or(0, u64::from),
            pcpu_counter_size: btf.struct_size("percpu_counter").map_or(0, u64::from),
            pcpu_count: off("percpu_counter", "count"),
            ..Self::default()
        }
        .with_memcg(&btf)
        .with_user_regs(&btf)
    }

    /// Where the creator's user registers are, for creator stacks (all or nothing).
    fn with_user_regs(mut self, btf: &super::btf::KernelBtf) -> Self {
        let regs = || -> Option<[u64; 6]> {
            let size = u64::from(btf.struct_size("pt_regs")?);
            Some([
                btf.member_offset("task_struct", "stack")?.into(),
                THREAD_SIZE.checked_sub(size)?,
                btf.member_offset("pt_regs", "ip")?.into(),
                btf.member_offset("pt_regs", "sp")?.into(),
                btf.member_offset("pt_regs", "bp")?.into(),
                btf.member_offset("pt_regs", "cs")?.into(),
            ])
        };
        match regs() {
            Some([stack, top, ip, sp, bp, cs]) => {
                (self.task_stack, self.pt_regs_top) = (stack, top);
                (
                    self.pt_regs_ip,
                    self.pt_regs_sp,
                    self.pt_regs_bp,
                    self.pt_regs_cs,
                ) = (ip, sp, bp, cs);
            }
            None => tracing::warn!(
                "this kernel's BTF lacks task_struct.stack or pt_regs: no creator stacks"
            ),
        }
        self
    }

    /// The path from a task to its memory cgroup's id, when memory is on cgroup v1 (on v2 the
    /// cgroup v2 id of every event says it all).
    fn with_memcg(mut self, btf: &super::btf::KernelBtf) -> Self {
        if crate::cgroups::memory_v1_mount().is_none() {
            return self;
        }
        let path = || -> Option<[u64; 5]> {
            let id = u64::try_from(btf.enum_value("memory_cgrp_id")?).ok()?;
            let subsys = btf.member_offset("css_set", "subsys")?;
            Some([
                btf.member_offset("task_struct", "cgroups")?.into(),
                u64::from(subsys) + 8 * id,
                btf.member_offset("cgroup_subsys_state", "cgroup")?.into(),
                btf.member_offset("cgroup", "kn")?.into(),
                btf.member_offset("kernfs_node", "id")?.into(),
            ])
        };
        match path() {
            Some([task_cgroups, css_set_memcg, css_cgroup, cgroup_kn, kn_id]) => {
                self.memcg_v1 = 1;
                self.task_cgroups = task_cgroups;
                self.css_set_memcg = css_set_memcg;
                self.css_cgroup = css_cgroup;
                self.cgroup_kn = cgroup_kn;
                self.kn_id = kn_id;
            }
            None => tracing::warn!(
                "the memory controller is on cgroup v1 but this kernel's BTF lacks the path \
                 from a task to its memory cgroup: jobs are named from cgroup v2 (and /proc for \
                 processes that existed at start)"
            ),
        }
        self
    }

    /// Whether the BTF `rss_stat` program of 6.2+ has every offset it needs.
    fn rss_known(&self) -> bool {
        self.task_mm != 0
            && self.mm_rss_stat != 0
            && self.pcpu_counter_size != 0
            && self.pcpu_count != 0
    }

    /// Whether the BTF `sched_process_exit` program can read what it needs.
    fn exit_known(&self) -> bool {
        self.exit_code != 0 && self.signal != 0 && self.signal_live != 0
    }
}

/// How a generic hook got attached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// BTF, and the program does all of its job (`sched_switch` opens wait slots).
    Btf,
    /// BTF, a variant for an older kernel that needs `sys_enter`'s help.
    BtfStamp,
    Raw,
}

/// One program that can serve a hook.
struct Candidate {
    program: String,
    form: Form,
}

/// `sched_switch`, `sys_exit` and, when needed, `sys_enter`, as BTF tracepoints or as raw
/// tracepoints where BTF ones do not load.
///
/// The BTF `sched_switch` program opens a thread's wait slot when it goes to sleep in a call
/// that can park, and exit codes come from `task_struct`: then no `sys_enter` program runs at
/// all, and every syscall on the host pays one hook instead of two. Otherwise (kernels before
/// 5.15 have no `bpf_task_pt_regs`) `sys_enter` opens the slots (and reports
/// `exit`/`exit_group`), and `sched_switch` only stamps them.
fn attach_generic(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    offsets: &KernelOffsets,
) {
    let state_known = offsets.task_state != 0;
    let mut switch = Vec::new();
    if state_known {
        switch.push(Candidate {
            program: "sched_switch_btf".into(),
            form: Form::Btf,
        });
        // No bpf_task_pt_regs before 5.15: sys_enter opens the wait slots.
        switch.push(Candidate {
            program: "sched_switch_btf_stamp".into(),
            form: Form::BtfStamp,
        });
    }
    switch.push(Candidate {
        program: "sched_switch_raw".into(),
        form: Form::Raw,
    });
    if state_known {
        // No `prev_state` argument before 5.18.
        switch.push(Candidate {
            program: "sched_switch_raw_prev".into(),
            form: Form::Raw,
        });
    }
    let switch = attach_hook(
        ebpf,
        status,
        btf,
        "sched_switch",
        &switch,
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
        &generic("sys_exit"),
        "futex, poll, mmap, brk syscalls",
    );
    if switch != Some(Form::Btf) || offsets.exit_code == 0 {
        attach_hook(
            ebpf,
            status,
            btf,
            "sys_enter",
            &generic("sys_enter"),
            "futex and poll wait starts, exit calls",
        );
    }
}

/// `{hook}_btf`, then `{hook}_raw`.
fn generic(hook: &str) -> [Candidate; 2] {
    [
        Candidate {
            program: format!("{hook}_btf"),
            form: Form::Btf,
        },
        Candidate {
            program: format!("{hook}_raw"),
            form: Form::Raw,
        },
    ]
}

/// Attaches the first candidate that loads (BTF ones only where the kernel has BTF); records
/// the outcome under the hook's name.
fn attach_hook(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    hook: &str,
    candidates: &[Candidate],
    lost: &str,
) -> Option<Form> {
    let mut errors = Vec::new();
    for c in candidates {
        let res = match (c.form, btf) {
            (Form::Raw, _) => attach_raw(ebpf, &c.program, hook),
            (_, Ok(btf)) => attach_btf(ebpf, &c.program, hook, btf),
            (_, Err(e)) => Err(e.clone()),
        };
        match res {
            Ok(()) => {
                let kind = if c.form == Form::Raw {
                    "raw_tp"
                } else {
                    "tp_btf"
                };
                if !errors.is_empty() {
                    tracing::debug!(
                        "{hook}: using {}; refused before it: {}",
                        c.program,
                        errors.join("; ")
                    );
                }
                status.push(ok(format!("{kind}/{hook}")));
                return Some(c.form);
            }
            Err(e) => errors.push(format!("{}: {e}", c.program)),
        }
    }
    status.push(failed(format!("{hook} ({lost})"), errors.join("; ")));
    None
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

/// The classic tracepoints; task creation, exit, renames and `rss_stat` as BTF tracepoints
/// first, where the kernel has BTF and the offsets they load are known.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    status: &mut Vec<ProbeStatus>,
    btf: &Result<Btf, String>,
    offsets: &KernelOffsets,
) {
    let mut done: Vec<&str> = Vec::new();
    if let Ok(btf) = btf {
        let mut rss = Vec::new();
        if offsets.rss_known() {
            rss.push("rss_stat_btf");
        }
        if offsets.task_mm != 0 {
            // Before 6.2 the count is an argument (and 6.2+ refuses the third argument).
            rss.push("rss_stat_btf_count");
        }
        let mut want: Vec<(&str, Vec<&str>)> = Vec::new();
        if offsets.pid != 0 {
            want.push(("task_newtask", vec!["task_newtask_btf"]));
        }
        if offsets.exit_known() {
            want.push(("sched_process_exit", vec!["sched_process_exit_btf"]));
        }
        want.push(("rss_stat", rss));
        for (hook, programs) in want {
            let mut errors = Vec::new();
            for prog in programs {
                match attach_btf(ebpf, prog, hook, btf) {
                    Ok(()) => {
                        status.push(ok(format!("tp_btf/{hook}")));
                        done.push(hook);
                        break;
                    }
                    Err(e) => errors.push(format!("{prog}: {e}")),
                }
            }
            if !done.contains(&hook) && !errors.is_empty() {
                tracing::warn!(
                    "tp_btf/{hook} not usable ({}); using the classic tracepoint, which \
                     costs a little more per call",
                    errors.join("; ")
                );
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
    // Each classic tracepoint once, with its layouts in order (see `tracepoints::ALL`).
    let mut wanted: Vec<&tracepoints::Tracepoint> = Vec::new();
    for tp in tracepoints::ALL {
        if !done.contains(&tp.name) && !wanted.iter().any(|w| w.name == tp.name) {
            wanted.push(tp);
        }
    }
    let dir = match tracefs::ensure_tracefs() {
        Ok(d) => d,
        Err(e) => {
            for tp in wanted {
                status.push(failed(tp_name(tp), e.clone()));
            }
            return;
        }
    };
    for first in wanted {
        let mut errors = Vec::new();
        let mut attached = None;
        for tp in tracepoints::ALL.iter().filter(|tp| tp.name == first.name) {
            let res = formats::check(dir, tp).and_then(|()| {
                let p: &mut TracePoint = ebpf
                    .program_mut(tp.program)
                    .ok_or_else(|| format!("program {} missing", tp.program))?
                    .try_into()
                    .map_err(|e| format!("{e}"))?;
                p.load().map_err(|e| load_error(tp.program, &e))?;
                p.attach(tp.category, tp.name)
                    .map_err(|e| perf_attach_error(&e))?;
                Ok(())
            });
            match res {
                Ok(()) => {
                    attached = Some(tp);
                    break;
                }
                Err(e) => errors.push(e),
            }
        }
        status.push(match attached {
            Some(tp) if tp.program == first.program => ok(tp_name(tp)),
            Some(tp) => ProbeStatus {
                note: Some(degraded_note(tp.program)),
                ..ok(tp_name(tp))
            },
            None => failed(tp_name(first), errors.join("; ")),
        });
    }
}

/// A classic tracepoint's attach (`perf_event_open`) refused: the OS error, and, when it is a
/// permission error, the likely reason.
fn perf_attach_error(e: &aya::programs::ProgramError) -> String {
    let mut why = format!("attach: {e}");
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        why.push_str(&format!(": {s}"));
        src = s.source();
    }
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok());
    if (why.contains("ermission denied") || why.contains("not permitted"))
        && let Some(level) = paranoid.filter(|&l| l > 2)
    {
        why.push_str(&format!(
            " (kernel.perf_event_paranoid is {level}: Debian's and Ubuntu's extra level \
             lets only CAP_SYS_ADMIN open perf events; set it to 2, or grant CAP_SYS_ADMIN)"
        ));
    }
    why
}

/// What an older layout's program leaves out.
fn degraded_note(program: &str) -> String {
    match program {
        "mark_victim_pid" => "pid only: this kernel's oom/mark_victim gives the victim's pid \
                              alone (before 5.19); its memory at the kill is the last RSS that \
                              rss_stat reported"
            .to_owned(),
        other => format!("older layout ({other})"),
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
        note: None,
    }
}

fn failed(name: String, error: String) -> ProbeStatus {
    ProbeStatus {
        name,
        attached: false,
        error: Some(error),
        note: None,
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
