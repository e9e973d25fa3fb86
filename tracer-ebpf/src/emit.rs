//! Maps, globals and the helpers every program uses: filtering, headers, counters, emitting.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_smp_processor_id,
            bpf_ktime_get_ns,
        },
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    EventHeader, EventKind,
    maps::{
        EVENTS_BYTES, MemAcc, RSS_LAST_LEN, RssLast, Stat, TRACED_MAX, WAIT_SLOTS_LEN, WAITING_MAX,
        WAKEUP_THRESHOLD_BYTES, WaitSlot,
    },
};

// Sizes and eviction rules are documented next to the names in `tracer_common::maps`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
pub static WAIT_SLOTS: Array<WaitSlot> = Array::with_max_entries(WAIT_SLOTS_LEN, BPF_F_MMAPABLE);
#[map]
pub static WAITING: HashMap<u32, WaitSlot> = HashMap::with_max_entries(WAITING_MAX, 0);
/// Set to 1 the first time `WAITING` is used, never cleared: until then (and for good on hosts
/// whose pid_max is below `WAIT_SLOTS_LEN`, where tids cannot collide) task exits skip the hash
/// delete (~700 ns measured). A flag rather than a count: the bpf target has no atomic add.
#[map]
pub static WAITING_USED: Array<u64> = Array::with_max_entries(1, 0);
#[map]
pub static SWITCH_HOOKED: Array<u64> = Array::with_max_entries(1, 0);
#[map]
pub static RSS_LAST: PerCpuArray<RssLast> = PerCpuArray::with_max_entries(RSS_LAST_LEN, 0);
#[map]
pub static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(TRACED_MAX, 0);
/// The tgid that last exec'd on this CPU, until its first `brk(0)`: that query gives the new
/// program's initial break, the baseline for heap growth. Every other `brk(0)` is only counted.
/// Per CPU (exec does not migrate between the tracepoint and ld.so's first brk, bar rare
/// preemption), one slot, overwritten by the next exec: no eviction needed.
#[map]
pub static EXEC_PENDING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static MEM_ACC: PerCpuArray<MemAcc> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

// Globals, set by the collector at load time (names in `tracer_common::maps::globals`).
// Read through `read_volatile` so the compiler keeps the load instead of folding the default.
#[unsafe(no_mangle)]
static MIN_WAIT_NS: u64 = 1_000_000;
#[unsafe(no_mangle)]
static RSS_GRANULE: u64 = 1 << 20;
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;
#[unsafe(no_mangle)]
static FILTER: u32 = 0;
#[unsafe(no_mangle)]
pub static TASK_EXIT_CODE_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_PID_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_TGID_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_MM_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static MM_RSS_STAT_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PCPU_COUNTER_SIZE: u64 = 0;
#[unsafe(no_mangle)]
pub static PCPU_COUNT_OFF: u64 = 0;

/// A global the collector set at load time. `.rodata` is frozen, so the verifier knows the
/// value as a constant (which lets `btf_field` load at that offset).
#[inline(always)]
pub fn global(v: &'static u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

/// Loads a field of a kernel object behind a BTF-typed pointer (a BTF tracepoint argument,
/// `bpf_get_current_task_btf()`), at an offset the collector found in BTF.
#[inline(always)]
pub fn btf_field<T: Copy>(obj: *const u8, off: &'static u64) -> T {
    unsafe { core::ptr::read_volatile(obj.add(global(off) as usize) as *const T) }
}

/// The current task's `exit_code`, or -1 when the offset is unknown.
#[inline(always)]
pub fn current_exit_code() -> i32 {
    let off = global(&TASK_EXIT_CODE_OFF);
    if off == 0 {
        return -1;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe { bpf_probe_read_kernel(task.add(off as usize) as *const i32) }.unwrap_or(-1)
}

#[inline(always)]
pub fn min_wait_ns() -> u64 {
    global(&MIN_WAIT_NS)
}

#[inline(always)]
pub fn rss_granule() -> i64 {
    global(&RSS_GRANULE) as i64
}

#[inline(always)]
pub fn filtering() -> bool {
    unsafe { core::ptr::read_volatile(&FILTER) != 0 }
}

/// The collector itself.
#[inline(always)]
pub fn is_self(tgid: u32) -> bool {
    tgid == unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

/// Whether events of this tgid are wanted: never the collector's own; with a filter, only
/// tgids in `TRACED`.
#[inline(always)]
pub fn traced(tgid: u32) -> bool {
    !is_self(tgid) && (!filtering() || unsafe { TRACED.get(tgid).is_some() })
}

#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn pid_tgid() -> (u32, u32) {
    let v = bpf_get_current_pid_tgid();
    ((v >> 32) as u32, v as u32)
}

#[inline(always)]
pub fn cgroup_id() -> u64 {
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
pub fn bump(stat: Stat) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other CPU writes it, and a program is not preempted by itself.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn header(kind: EventKind, ts_ns: u64, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        ts_ns,
        cgroup_id: cgroup_id(),
        tgid,
        tid,
        kind: kind as u16,
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        _pad: 0,
    }
}

/// Wake the collector only when enough is waiting; otherwise it drains on its own timer.
#[inline(always)]
fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_THRESHOLD_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Copies `ev` into the ring buffer, or counts it lost.
#[inline(always)]
pub fn emit<T: Copy + 'static>(ev: &T) {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(submit_flags());
        }
        None => bump(Stat::Lost),
    }
}

/// Reserves room for a `T` to fill in place (for events too big for the 512-byte stack to hold
/// comfortably); counts it lost when the ring buffer is full.
#[inline(always)]
pub fn reserve<T: 'static>() -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        bump(Stat::Lost);
    }
    entry
}

#[inline(always)]
pub fn submit<T: 'static>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    entry.submit(submit_flags());
}

/// Whether `sched_switch` stamps park starts (else a wait's start is read at its entry): see
/// `tracer_common::maps::SWITCH_HOOKED`.
#[inline(always)]
pub fn switch_hooked() -> bool {
    flag(&SWITCH_HOOKED)
}

/// The `WAIT_SLOTS` entry of a tid.
#[inline(always)]
pub fn wait_slot(tid: u32) -> Option<*mut WaitSlot> {
    WAIT_SLOTS.get_ptr_mut(tid & (WAIT_SLOTS_LEN - 1))
}

/// Where `tid`'s wait state is: its slot, or (`true`) its overflow entry. Only one lookup
/// path, for taking a state out and for stamping it.
#[inline(always)]
fn held_by(tid: u32) -> Option<(*mut WaitSlot, bool)> {
    if let Some(p) = wait_slot(tid)
        && unsafe { (*p).tid } == tid
    {
        return Some((p, false));
    }
    // Not in its slot: in the overflow map (if that was ever used), or not waiting (filtered
    // out, blocked since before tracing started, or never slept in its call).
    if !overflow_used() {
        return None;
    }
    WAITING.get_ptr_mut(tid).map(|p| (p, true))
}

/// Takes the blocked state of `tid` out of its slot (or the overflow map): at the end of its
/// call, or at its exit.
#[inline(always)]
pub fn take_wait(tid: u32) -> Option<WaitSlot> {
    let (p, overflow) = held_by(tid)?;
    let state = unsafe { *p };
    if overflow {
        let _ = WAITING.remove(tid);
    } else {
        unsafe { core::ptr::write_volatile(&mut (*p).tid, 0) };
    }
    Some(state)
}

/// Puts the blocked state of `state.tid` in its slot, or in the overflow map when another
/// blocked thread holds the slot; false when that map is full too.
#[inline(always)]
pub fn put_wait(state: &WaitSlot) -> bool {
    let tid = state.tid;
    if let Some(p) = wait_slot(tid) {
        let holder = unsafe { (*p).tid };
        if holder == 0 || holder == tid {
            unsafe {
                (*p).start_ns = state.start_ns;
                (*p).uaddr = state.uaddr;
                (*p).tgid = state.tgid;
                (*p).syscall = state.syscall;
                (*p).op = state.op;
                // Last: readers take a non-zero tid as "the rest is valid".
                core::ptr::write_volatile(&mut (*p).tid, tid);
            }
            return true;
        }
    }
    put_overflow(tid, state)
}

/// Stamps the park start of `tid` if it holds a wait slot (or overflow entry) not yet
/// stamped; false when it holds none.
#[inline(always)]
pub fn mark_parked(tid: u32) -> bool {
    let Some((p, _)) = held_by(tid) else {
        return false;
    };
    unsafe {
        if (*p).start_ns == 0 {
            core::ptr::write_volatile(&mut (*p).start_ns, now_ns());
        }
    }
    true
}

/// Adds an overflow entry for `tid`; false when `WAITING` is full.
#[inline(always)]
fn put_overflow(tid: u32, state: &WaitSlot) -> bool {
    if WAITING.insert(tid, state, 0).is_err() {
        return false;
    }
    if let Some(used) = WAITING_USED.get_ptr_mut(0) {
        unsafe { core::ptr::write_volatile(used, 1) };
    }
    true
}

/// Whether `WAITING` was ever used (see `WAITING_USED`).
#[inline(always)]
fn overflow_used() -> bool {
    flag(&WAITING_USED)
}

/// A one-entry flag map, read as non-zero.
#[inline(always)]
fn flag(map: &Array<u64>) -> bool {
    match map.get_ptr(0) {
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => false,
    }
}
