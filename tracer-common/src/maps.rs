//! Map names, sizes, value types and the per-CPU statistics ids, declared once for both sides.
//!
//! Every map here is bounded; the comment on each says why that size and how entries leave.

/// Ring buffer that carries every event to userspace. 8 MiB holds about 100 ms of events at
/// 1 M events/s (~60-90 bytes each) while the collector drains it every 10 ms. It is mapped
/// twice into the collector (wrap-around), so it counts 16 MiB towards the collector's RSS.
/// When full, `bpf_ringbuf_reserve` fails and the event is counted in [`Stat::Lost`].
pub const EVENTS: &str = "EVENTS";
pub const EVENTS_BYTES: u32 = 8 << 20;
/// Past this many unread bytes a submit wakes the collector; below it, submits use
/// `BPF_RB_NO_WAKEUP` and the collector polls on a short timer (a wakeup costs ~2 µs here).
pub const WAKEUP_THRESHOLD_BYTES: u64 = 256 << 10;

/// Threads blocked in a futex wait or a poll-family call right now: an array of [`WaitSlot`]s
/// indexed by tid, sized at load time to the host's `kernel.pid_max` (rounded up to a whole
/// number of pages; at most 4 194 304, the kernel's limit), so every thread has its own slot:
/// no collisions, no overflow map, and no cross-CPU race (a slot is written only by its own
/// thread, on the CPU it runs on, or by the collector for a thread blocked before tracing
/// started). 16 bytes per possible tid: 512 KiB at the kernel's default pid_max of 32 768,
/// 64 MiB at systemd's 4 194 304. An array slot costs a few ns where a hash insert + lookup +
/// delete costs hundreds (shared/perf-floor.md). A slot is taken when the thread goes to sleep
/// inside such a call (BTF `sched_switch`; without it, at syscall entry, stamped at the sleep)
/// and freed at the call's exit or at task exit; the call is classified at exit by how long
/// it was parked: no user-memory read of the timeout is needed (that read alone costs ~190 ns
/// here). The array is mmapable: the collector reads it in place, without a syscall per
/// entry. A tid past its end (pid_max raised after the tracer started) is not tracked, and
/// [`Stat::WaitMapFull`] counts it.
pub const WAIT_SLOTS: &str = "WAIT_SLOTS";
/// The size compiled into the object; the collector sets the real one from pid_max.
pub const WAIT_SLOTS_DEFAULT_LEN: u32 = 1 << 15;
/// `PID_MAX_LIMIT` on 64-bit kernels.
pub const WAIT_SLOTS_MAX_LEN: u32 = 1 << 22;

/// One `u64`, set to 1 by the collector once a `sched_switch` program is attached (the BTF
/// one opens wait slots itself; the raw one stamps slots `sys_enter` opened). From then on a
/// wait's `start_ns` is written when its thread first goes to sleep in the call; a call that
/// never sleeps costs no clock read, the largest part of a traced call's cost here. Before (or
/// without the hook) `sys_enter` writes the syscall entry time.
pub const SWITCH_HOOKED: &str = "SWITCH_HOOKED";

/// Per-CPU direct-mapped cache of the last RSS values emitted per mm, indexed by
/// `mm_id & (RSS_LAST_LEN - 1)`: only moves of at least the granule are streamed. `rss_stat`
/// fires at page-fault rate, so this is an array (lookups are inlined), not a hash. A slot
/// held by another mm is taken over (that mm just gets a fresh event on its next change).
/// Each CPU keeps its own copy, so an mm faulting on n CPUs streams up to n times as often.
pub const RSS_LAST: &str = "RSS_LAST";
pub const RSS_LAST_LEN: u32 = 1024;

/// Per-CPU accumulator of small mappings (one slot per CPU): calls of one process add up until
/// another process maps on that CPU, the batch is `MEM_ACC_MAX_CALLS` long, the process exits
/// on that CPU, or the collector flushes every CPU (`flush_mem`, run with BPF_PROG_TEST_RUN at
/// each sample and at the end). Then it goes out as one `MemBatchEvent`.
pub const MEM_ACC: &str = "MEM_ACC";
pub const MEM_ACC_MAX_CALLS: u32 = 4096;
/// The program that flushes the current CPU's `MEM_ACC`.
pub const FLUSH_PROGRAM: &str = "flush_mem";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemAcc {
    pub first_ns: u64,
    pub cgroup_id: u64,
    pub mmap_bytes: u64,
    pub munmap_bytes: u64,
    /// 0 when empty.
    pub tgid: u32,
    pub tid: u32,
    pub mmap_calls: u32,
    pub munmap_calls: u32,
    /// 1 while `sys_exit` is adding to the batch: the collector's flush runs in an IPI on
    /// that CPU and may interrupt it; it leaves a busy batch to the next sample.
    pub busy: u32,
    pub _pad: u32,
}

/// tgids traced when the collector filters (`--pid`, `-- CMD`); children of traced tgids are
/// added by the kernel at fork. An entry is removed by the collector at the first sample after
/// its process ended (the kernel cannot tell the last exit of a group for sure), and by the
/// kernel when an untraced creator reuses the pid first. Unused (and empty) when tracing
/// host-wide. Full: the child is not traced and [`Stat::FilterMapFull`] counts it.
pub const TRACED: &str = "TRACED";
pub const TRACED_MAX: u32 = 16_384;

/// Per-CPU `u64` counters indexed by [`Stat`].
pub const STATS: &str = "STATS";

/// Global variables the collector sets before loading (names of `static`s in the object).
pub mod globals {
    /// Waits shorter than this many ns are counted, not streamed.
    pub const MIN_WAIT_NS: &str = "MIN_WAIT_NS";
    /// RSS moves smaller than this many bytes are not streamed.
    pub const RSS_GRANULE: &str = "RSS_GRANULE";
    /// The collector's own tgid: its syscalls are not traced, to avoid feeding back on itself.
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Non-zero: only tgids in the `TRACED` map are traced.
    pub const FILTER: &str = "FILTER";
    /// Offset of `task_struct.exit_code`, from BTF; 0 if unknown.
    pub const TASK_EXIT_CODE_OFF: &str = "TASK_EXIT_CODE_OFF";
    /// Offset of `task_struct.pid`, from BTF; 0 if unknown (the BTF task hooks are then not
    /// used).
    pub const TASK_PID_OFF: &str = "TASK_PID_OFF";
    /// Offset of `task_struct.tgid`, from BTF; 0 if unknown (no `task_rename` hook then).
    pub const TASK_TGID_OFF: &str = "TASK_TGID_OFF";
    /// `task_struct.signal` and `signal_struct.live` (an `atomic_t`), from BTF: a task exit is
    /// its process's end when `live` has dropped to 0 (the `group_dead` argument of
    /// `sched_process_exit` exists only since 6.16). 0 if unknown: the collector then ends a
    /// process when its last known thread exits.
    pub const TASK_SIGNAL_OFF: &str = "TASK_SIGNAL_OFF";
    pub const SIGNAL_LIVE_OFF: &str = "SIGNAL_LIVE_OFF";
    /// `task_struct.__state` (`state` before 5.14), from BTF: read from the task switched out
    /// by `sched_switch` (the `prev_state` argument exists only since 5.18).
    pub const TASK_STATE_OFF: &str = "TASK_STATE_OFF";
    /// `task_struct.mm`, `mm_struct.rss_stat`, `sizeof(struct percpu_counter)` and
    /// `percpu_counter.count`, from BTF, for the BTF `rss_stat` program (not used unless all
    /// are known).
    pub const TASK_MM_OFF: &str = "TASK_MM_OFF";
    /// `mm_struct.start_brk`, from BTF: sent with every brk event (0 if unknown).
    pub const MM_START_BRK_OFF: &str = "MM_START_BRK_OFF";
    pub const MM_RSS_STAT_OFF: &str = "MM_RSS_STAT_OFF";
    pub const PCPU_COUNTER_SIZE: &str = "PCPU_COUNTER_SIZE";
    pub const PCPU_COUNT_OFF: &str = "PCPU_COUNT_OFF";
    /// 1 when the memory controller is on cgroup v1 and the five offsets after it (from
    /// BTF) are known: event headers then carry the memory cgroup (`EventHeader::memcg`).
    pub const MEMCG_V1: &str = "MEMCG_V1";
    pub const TASK_CGROUPS_OFF: &str = "TASK_CGROUPS_OFF";
    pub const CSS_SET_MEMCG_OFF: &str = "CSS_SET_MEMCG_OFF";
    pub const CSS_CGROUP_OFF: &str = "CSS_CGROUP_OFF";
    pub const CGROUP_KN_OFF: &str = "CGROUP_KN_OFF";
    pub const KN_ID_OFF: &str = "KN_ID_OFF";
    /// Creator stacks: the budget's refill period per stack in ns (0: stacks off) and its
    /// depth in ns (burst × period); `task_struct.stack`; where the user `pt_regs` sit in the
    /// kernel stack (`THREAD_SIZE - sizeof(struct pt_regs)`); and the offsets of `ip`, `sp`,
    /// `bp`, `cs` in `pt_regs`.
    pub const STACK_PERIOD_NS: &str = "STACK_PERIOD_NS";
    pub const STACK_BURST_NS: &str = "STACK_BURST_NS";
    pub const TASK_STACK_OFF: &str = "TASK_STACK_OFF";
    pub const PT_REGS_TOP_OFF: &str = "PT_REGS_TOP_OFF";
    pub const PT_REGS_IP_OFF: &str = "PT_REGS_IP_OFF";
    pub const PT_REGS_SP_OFF: &str = "PT_REGS_SP_OFF";
    pub const PT_REGS_BP_OFF: &str = "PT_REGS_BP_OFF";
    pub const PT_REGS_CS_OFF: &str = "PT_REGS_CS_OFF";
}

/// Per-CPU stack budgets, direct-mapped by `tgid & (STACK_BUDGET_LEN - 1)`: a creator's stack
/// is copied only while its process has credit (a token bucket: one stack per
/// `STACK_PERIOD_NS`, bursts up to `STACK_BURST_NS`), so a process creating thousands of
/// threads a second costs a bounded number of 8 KiB copies. A slot held by another tgid is
/// taken over with a full budget. Creation counts stay exact: only stacks are sampled, and
/// `Stat::StacksSkipped` counts the rest.
pub const STACK_BUDGET: &str = "STACK_BUDGET";
pub const STACK_BUDGET_LEN: u32 = 1024;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackBudget {
    pub tgid: u32,
    pub _pad: u32,
    /// Credit in ns of refill; a stack costs `STACK_PERIOD_NS`.
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// A thread in a call that can block: the value of `WAIT_SLOTS` (its tid is the index).
/// `tgid` is 0 in a free slot and is written last, so a reader that sees it non-zero sees the
/// rest. `start_ns` is 0 while the thread has not slept in the call (see [`SWITCH_HOOKED`]):
/// it is not parked. The call's arguments (futex word, op) are read again from the registers
/// at its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitSlot {
    pub start_ns: u64,
    pub tgid: u32,
    /// The syscall number.
    pub syscall: u16,
    pub _pad: u16,
}

/// Value of the `RSS_LAST` map: the mm a slot belongs to and the last emitted size of each of
/// its RSS counters, in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssLast {
    pub mm_id: u32,
    pub _pad: u32,
    pub size: [i64; crate::RSS_MEMBERS],
}

const _: () = {
    assert!(size_of::<WaitSlot>() == 16);
    // A whole number of pages per 256 slots: the collector rounds the length up to that.
    assert!(size_of::<WaitSlot>() * 256 == 4096);
    assert!(size_of::<MemAcc>() == 56);
    assert!(size_of::<RssLast>() == 40);
    assert!(RSS_LAST_LEN.is_power_of_two());
    assert!(STACK_BUDGET_LEN.is_power_of_two());
    assert!(size_of::<StackBudget>() == 24);
};

/// Indexes of the per-CPU `STATS` counters. Stable: trace files store them by name, but keep
/// the order anyway.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that could not be reserved in the ring buffer: lost.
    Lost = 0,
    /// Blocked threads not tracked: their tid is past the end of `WAIT_SLOTS`.
    WaitMapFull,
    /// Children of traced processes not followed because `TRACED` was full.
    FilterMapFull,
    /// futex wake/requeue calls (counted, never streamed).
    FutexWakes,
    /// futex waits shorter than `MIN_WAIT_NS` (counted, not streamed).
    FutexShortWaits,
    /// poll/epoll_wait calls with a zero (register) timeout, never tracked (counted).
    PollNonBlocking,
    /// Poll-family calls shorter than `MIN_WAIT_NS`, zero-timeout ppoll/select included.
    PollShortWaits,
    /// `brk(0)` queries (counted, not streamed).
    BrkQueries,
    /// mmap/munmap/mremap/brk calls that failed (counted, not streamed).
    MemFailures,
    /// `rss_stat` updates below the granule (counted, not streamed).
    RssFiltered,
    /// Creations whose creator's stack was not copied: its process was over its budget.
    StacksSkipped,
    /// Creations whose creator's user registers could not be read.
    StacksFailed,
}

impl Stat {
    pub const COUNT: u32 = 12;
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Stat::Lost,
        Stat::WaitMapFull,
        Stat::FilterMapFull,
        Stat::FutexWakes,
        Stat::FutexShortWaits,
        Stat::PollNonBlocking,
        Stat::PollShortWaits,
        Stat::BrkQueries,
        Stat::MemFailures,
        Stat::RssFiltered,
        Stat::StacksSkipped,
        Stat::StacksFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::Lost => "lost_events",
            Stat::WaitMapFull => "wait_map_full",
            Stat::FilterMapFull => "filter_map_full",
            Stat::FutexWakes => "futex_wakes",
            Stat::FutexShortWaits => "futex_short_waits",
            Stat::PollNonBlocking => "poll_nonblocking",
            Stat::PollShortWaits => "poll_short_waits",
            Stat::BrkQueries => "brk_queries",
            Stat::MemFailures => "mem_failures",
            Stat::RssFiltered => "rss_filtered",
            Stat::StacksSkipped => "stacks_skipped",
            Stat::StacksFailed => "stacks_failed",
        }
    }
}
