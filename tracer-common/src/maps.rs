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

/// tid → [`WaitState`] of every thread blocked in a futex wait or a poll-family call right now.
/// Entries are inserted on syscall entry and removed on its exit and at task exit, so they
/// live only while a thread is blocked. Sized for 64 Ki simultaneously blocked threads
/// host-wide; when full, the insert fails and is counted in [`Stat::WaitMapFull`] (a plain hash,
/// not LRU: the oldest parks are the interesting ones and must not be evicted).
pub const WAITING: &str = "WAITING";
pub const WAITING_MAX: u32 = 65_536;

/// mm_id → [`RssLast`]: the last RSS values emitted per mm, to emit only moves of at least the
/// granule. LRU: an evicted mm just gets a fresh event on its next change.
pub const RSS_LAST: &str = "RSS_LAST";
pub const RSS_LAST_MAX: u32 = 16_384;

/// tgids traced when the collector filters (`--pid`, `-- CMD`); children of traced tgids are
/// added by the kernel at fork, and entries are removed when the process exits. Unused (and
/// empty) when tracing host-wide. Full: the child is not traced and [`Stat::FilterMapFull`]
/// counts it.
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
    /// Offset of `task_struct.nvcsw` (followed by `nivcsw`), from BTF; 0 if unknown.
    pub const TASK_CSW_OFF: &str = "TASK_CSW_OFF";
    /// Offset of `task_struct.exit_code`, from BTF; 0 if unknown.
    pub const TASK_EXIT_CODE_OFF: &str = "TASK_EXIT_CODE_OFF";
}

/// Per-thread state of a blocked thread, the value of the `WAITING` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitState {
    pub start_ns: u64,
    pub uaddr: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    /// The syscall number.
    pub syscall: u32,
    /// futex op (masked) or nfds.
    pub op: u32,
    pub _pad: u32,
}

/// Per-CPU slot of the `NONBLOCK` map: the thread that entered a zero-timeout poll on this
/// CPU, with its context-switch count at entry. At exit, the same tid with the same count
/// proves the thread neither slept nor migrated since, so it is that call's exit and the
/// `WAITING` lookup can be skipped. Any other case falls back to the lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NonBlock {
    pub csw: u64,
    pub tid: u32,
    pub _pad: u32,
}

/// Value of the `RSS_LAST` map: the last emitted size of each RSS counter, in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssLast {
    pub size: [i64; crate::RSS_MEMBERS],
}

const _: () = {
    assert!(size_of::<WaitState>() == 40);
    assert!(size_of::<RssLast>() == 32);
    assert!(size_of::<NonBlock>() == 16);
};

/// Indexes of the per-CPU `STATS` counters. Stable: trace files store them by name, but keep
/// the order anyway.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that could not be reserved in the ring buffer: lost.
    Lost = 0,
    /// Blocked threads not tracked because `WAITING` was full.
    WaitMapFull,
    /// Children of traced processes not followed because `TRACED` was full.
    FilterMapFull,
    /// futex wake/requeue calls (counted, never streamed).
    FutexWakes,
    /// futex waits shorter than `MIN_WAIT_NS` (counted, not streamed).
    FutexShortWaits,
    /// Poll-family calls with a zero timeout (counted, not streamed).
    PollNonBlocking,
    /// Poll-family waits shorter than `MIN_WAIT_NS`.
    PollShortWaits,
    /// `brk(0)` queries (counted, not streamed).
    BrkQueries,
    /// mmap/munmap/mremap/brk calls that failed (counted, not streamed).
    MemFailures,
    /// `rss_stat` updates below the granule (counted, not streamed).
    RssFiltered,
    /// Events submitted to the ring buffer.
    Submitted,
}

impl Stat {
    pub const COUNT: u32 = 11;
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
        Stat::Submitted,
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
            Stat::Submitted => "events_submitted",
        }
    }
}
