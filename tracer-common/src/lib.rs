//! Types shared by the kernel programs (`tracer-ebpf`) and the collector (`tracer`).
//!
//! Every event that crosses the ring buffer is one of the `#[repr(C)]` structs below. Each
//! starts with an [`EventHeader`] whose `kind` is a stable [`EventKind`] id, so the decoder can
//! tell records apart and the trace file stays readable across versions. Layouts carry no
//! implicit padding and no `bool`; `const` assertions guard sizes.
#![no_std]

pub mod maps;
pub mod syscalls;
pub mod tracepoints;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Bytes of an exec'd filename carried in [`ExecEvent`]; longer paths are cut.
pub const FILENAME_LEN: usize = 128;

/// Stable ids of the event types. Never renumber: trace files store them.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    NewTask = 1,
    TaskExit = 2,
    Exec = 3,
    ExitCall = 4,
    FutexWait = 5,
    PollWait = 6,
    Mmap = 7,
    Munmap = 8,
    Mremap = 9,
    Brk = 10,
    Rss = 11,
    OomVictim = 12,
    MemBatch = 13,
    Rename = 14,
    Stack = 15,
}

impl EventKind {
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::NewTask,
            2 => Self::TaskExit,
            3 => Self::Exec,
            4 => Self::ExitCall,
            5 => Self::FutexWait,
            6 => Self::PollWait,
            7 => Self::Mmap,
            8 => Self::Munmap,
            9 => Self::Mremap,
            10 => Self::Brk,
            11 => Self::Rss,
            12 => Self::OomVictim,
            13 => Self::MemBatch,
            14 => Self::Rename,
            15 => Self::Stack,
            _ => return None,
        })
    }

    /// Size in bytes of the whole event (header included) of this kind.
    pub const fn size(self) -> usize {
        match self {
            Self::NewTask => size_of::<NewTaskEvent>(),
            Self::TaskExit => size_of::<TaskExitEvent>(),
            Self::Exec => size_of::<ExecEvent>(),
            Self::ExitCall => size_of::<ExitCallEvent>(),
            Self::FutexWait | Self::PollWait => size_of::<WaitEvent>(),
            Self::Mmap | Self::Munmap | Self::Mremap | Self::Brk => size_of::<MemEvent>(),
            Self::Rss => size_of::<RssEvent>(),
            Self::OomVictim => size_of::<OomEvent>(),
            Self::MemBatch => size_of::<MemBatchEvent>(),
            Self::Rename => size_of::<RenameEvent>(),
            Self::Stack => size_of::<StackEvent>(),
        }
    }
}

/// The first 32 bytes of every event. `tgid`/`tid` and `cgroup_id` are those of the task the
/// kernel program ran in (for [`NewTaskEvent`], the creator).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// cgroup v2 id (`bpf_get_current_cgroup_id`): the inode number of the cgroup directory.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// An [`EventKind`] id.
    pub kind: u16,
    /// The CPU the event was produced on.
    pub cpu: u16,
    /// On hosts whose memory controller is on cgroup v1 (hybrid, v1): the low 32 bits of the
    /// task's memory cgroup id (`task->cgroups->subsys[memory]->cgroup->kn->id`, the inode of
    /// its directory in the memory hierarchy), which is what names a container there. 0 when
    /// the memory controller is on v2 (then `cgroup_id` says it all), when the kernel's layout
    /// is unknown, and on the per-call memory events (mmap, munmap, mremap, brk, batches),
    /// which skip the read to keep hot paths cheap.
    pub memcg: u32,
}

/// `task/task_newtask`: a thread or process was created by the header's task.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewTaskEvent {
    pub hdr: EventHeader,
    pub clone_flags: u64,
    /// The new task's id; its tgid is the creator's for a thread, its own for a process.
    pub child_tid: u32,
    pub child_tgid: u32,
    pub comm: [u8; COMM_LEN],
}

/// `CLONE_THREAD` from `<linux/sched.h>`: the new task shares the creator's thread group.
pub const CLONE_THREAD: u64 = 0x0001_0000;
/// `CLONE_VFORK`.
pub const CLONE_VFORK: u64 = 0x0000_4000;

/// `sched/sched_process_exit`: the header's task is exiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskExitEvent {
    pub hdr: EventHeader,
    /// [`GROUP_DEAD_NO`], [`GROUP_DEAD_YES`] (no other task of its thread group is still
    /// live: the process is ending) or [`GROUP_DEAD_UNKNOWN`] (the kernel's layout is unknown).
    pub group_dead: u32,
    /// `task->exit_code` in wait-status form: `(code << 8)` for an exit, the signal number
    /// (| 0x80 with a core dump) for a death by signal; -1 when the kernel's layout is unknown.
    pub exit_code: i32,
    pub comm: [u8; COMM_LEN],
}

pub const GROUP_DEAD_NO: u32 = 0;
pub const GROUP_DEAD_YES: u32 = 1;
pub const GROUP_DEAD_UNKNOWN: u32 = 2;

/// `sched/sched_process_exec`: the header's process now runs a new program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub hdr: EventHeader,
    /// The tid that called execve; differs from the tgid when a non-leader thread exec'd.
    pub old_tid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}

/// `task/task_rename`: the header's task took a new comm (`prctl(PR_SET_NAME)`, a write to
/// `/proc/<pid>/task/<tid>/comm`, exec). The header names the renamed task, which is not
/// always the current one.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenameEvent {
    pub hdr: EventHeader,
    pub comm: [u8; COMM_LEN],
}

/// `exit` or `exit_group` entered: the header's task (or group) asked to exit with `code`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCallEvent {
    pub hdr: EventHeader,
    pub code: i32,
    /// 1 for `exit_group`, 0 for `exit`.
    pub group: u32,
}

/// A futex wait or poll-family wait that lasted at least the configured minimum.
/// Shorter ones are only counted, per CPU, in the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitEvent {
    pub hdr: EventHeader,
    /// When the wait started (`bpf_ktime_get_ns`); `hdr.ts_ns` is when it ended.
    pub start_ns: u64,
    /// The futex word (futex family) or the first argument (poll family).
    pub uaddr: u64,
    /// The syscall's return value.
    pub ret: i64,
    /// The syscall number (x86_64).
    pub syscall: u32,
    /// futex: the op with the private/clock flags masked off; poll family: nfds.
    pub op: u32,
}

/// mmap, munmap, mremap or brk returned. Which one is `hdr.kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemEvent {
    pub hdr: EventHeader,
    /// mmap: the mapped address; munmap: the address; mremap: the new address; brk: the new
    /// break.
    pub addr: u64,
    /// mmap/munmap: length; mremap: new length; brk: the requested break.
    pub len: u64,
    /// mremap: old length; otherwise 0.
    pub old_len: u64,
    /// mremap: old address; brk: the heap's start (`mm->start_brk`, 0 if unknown);
    /// otherwise 0.
    pub old_addr: u64,
    /// Return value (negative errno on failure).
    pub ret: i64,
    /// mmap: prot; otherwise 0.
    pub prot: u32,
    /// mmap/mremap: flags.
    pub flags: u32,
    /// mmap: the fd argument (-1 for anonymous).
    pub fd: i32,
    pub _pad: u32,
}

/// Small anonymous mmaps and small munmaps of one process on one CPU, added up in the kernel
/// instead of streamed one by one (see `maps::MEM_ACC`). The header carries the process and its
/// last calling thread; its time is when the batch was flushed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemBatchEvent {
    pub hdr: EventHeader,
    /// When the first call of the batch returned.
    pub first_ns: u64,
    /// Page-rounded bytes.
    pub mmap_bytes: u64,
    pub munmap_bytes: u64,
    pub mmap_calls: u32,
    pub munmap_calls: u32,
}

/// Mappings smaller than this (anonymous ones, for mmap) are batched, not streamed: allocator
/// churn of small blocks is the hot case; big mappings, file mappings and thread stacks still
/// come one by one.
pub const SMALL_MAP_BYTES: u64 = 256 << 10;
/// `MAP_ANONYMOUS` (x86_64).
pub const MAP_ANONYMOUS: u32 = 0x20;

/// `kmem/rss_stat` for one counter of one mm, emitted only when it moved by the configured
/// granule since the last event for that mm (see `maps::RSS_LAST`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RssEvent {
    pub hdr: EventHeader,
    /// The counter's value in bytes.
    pub size: i64,
    /// A hashed id of the mm (stable while the mm lives).
    pub mm_id: u32,
    /// 0 file pages, 1 anon pages, 2 swap entries, 3 shmem pages.
    pub member: u32,
    /// 1 when the mm belongs to the header's task; otherwise the header's task changed
    /// another process's counter (reclaim, OOM reaper) and `mm_id` is the only link.
    pub curr: u32,
    pub _pad: u32,
}

/// RSS counters of `kmem/rss_stat` (`enum` in `<linux/mm_types_task.h>`).
pub const RSS_MEMBERS: usize = 4;
pub const RSS_FILE: u32 = 0;
pub const RSS_ANON: u32 = 1;
pub const RSS_SWAP: u32 = 2;
pub const RSS_SHMEM: u32 = 3;

/// `oom/mark_victim`: the OOM killer chose `victim_pid`. The header is the task that ran the
/// OOM killer, not the victim. Before 5.19 the tracepoint carries only the pid: `flags` then
/// has [`OOM_PID_ONLY`] and the other fields are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    pub hdr: EventHeader,
    /// All in KiB, as the tracepoint gives them.
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub victim_pid: u32,
    pub uid: u32,
    pub oom_score_adj: i32,
    pub flags: u32,
}

/// [`OomEvent::flags`]: the kernel gave only the victim's pid.
pub const OOM_PID_ONLY: u32 = 1;

/// Bytes of the creator's user stack copied at a thread or process creation: enough for the
/// frames from `clone3` up through `pthread_create` and the caller's code, through CPython's
/// and Ruby's VMs (perf's default for `--call-graph dwarf` is the same).
pub const STACK_BYTES: usize = 8192;
/// The stack is copied in chunks of this size; chunks that cannot be read (past the top of
/// the stack's mapping, or pages never touched) are zeros.
pub const STACK_CHUNK: usize = 1024;

/// The creator's user registers and the top of its user stack, right after the
/// [`NewTaskEvent`] of the same creation (sampled: see `maps::STACK_BUDGET`). Userspace unwinds
/// it with `.eh_frame` (binaries without frame pointers). It is not written to trace files:
/// the collector records the unwound, symbolized frames instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackEvent {
    pub head: StackHead,
    /// User memory from `head.sp` up.
    pub stack: [u8; STACK_BYTES],
}

/// The fixed part of a [`StackEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackHead {
    pub hdr: EventHeader,
    /// The new task.
    pub child_tid: u32,
    /// Bytes of `stack` up to the end of the last chunk read (a multiple of [`STACK_CHUNK`];
    /// 0: none).
    pub len: u32,
    /// User `rip`, `rsp`, `rbp` at the clone syscall.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

const _: () = {
    assert!(size_of::<EventHeader>() == 32);
    assert!(size_of::<NewTaskEvent>() == 32 + 32);
    assert!(size_of::<TaskExitEvent>() == 32 + 24);
    assert!(size_of::<ExecEvent>() == 32 + 8 + COMM_LEN + FILENAME_LEN);
    assert!(size_of::<ExitCallEvent>() == 32 + 8);
    assert!(size_of::<WaitEvent>() == 32 + 32);
    assert!(size_of::<MemEvent>() == 32 + 56);
    assert!(size_of::<RssEvent>() == 32 + 24);
    assert!(size_of::<OomEvent>() == 32 + 48);
    assert!(size_of::<MemBatchEvent>() == 32 + 32);
    assert!(size_of::<StackHead>() == 32 + 32);
    assert!(size_of::<StackEvent>() == size_of::<StackHead>() + STACK_BYTES);
    assert!(STACK_BYTES.is_multiple_of(STACK_CHUNK));
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these are repr(C), Copy, made only of integers, without implicit padding
    // (checked by the size assertions above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::maps::WaitSlot {}
    unsafe impl aya::Pod for super::maps::RssLast {}
    unsafe impl aya::Pod for super::maps::MemAcc {}
}
