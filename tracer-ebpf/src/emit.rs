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
        EVENTS_BYTES, MemAcc, RSS_LAST_LEN, RssLast, Stat, TRACED_MAX, WAIT_SLOTS_DEFAULT_LEN,
        WAKEUP_THRESHOLD_BYTES, WaitSlot,
    },
};

// Sizes and eviction rules are documented next to the names in `tracer_common::maps`.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map]
pub static WAIT_SLOTS: Array<WaitSlot> =
    Array::with_max_entries(WAIT_SLOTS_DEFAULT_LEN, BPF_F_MMAPABLE);
#[map]
pub static SWITCH_HOOKED: Array<u64> = Array::with_max_entries(1, 0);
#[map]
pub static RSS_LAST: PerCpuArray<RssLast> = PerCpuArray::with_max_entries(RSS_LAST_LEN, 0);
#[map]
pub static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(TRACED_MAX, 0);
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
pub static TASK_SIGNAL_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static SIGNAL_LIVE_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_STATE_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_MM_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static MM_START_BRK_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static MM_RSS_STAT_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PCPU_COUNTER_SIZE: u64 = 0;
#[unsafe(no_mangle)]
pub static PCPU_COUNT_OFF: u64 = 0;
/// 1 when the memory controller is on cgroup v1 and the offsets below are known: headers then
/// carry the memory cgroup's id (see `EventHeader::memcg`).
#[unsafe(no_mangle)]
pub static MEMCG_V1: u64 = 0;
/// `task_struct.cgroups`.
#[unsafe(no_mangle)]
pub static TASK_CGROUPS_OFF: u64 = 0;
/// `css_set.subsys[memory_cgrp_id]` (the array comes first: this may be small).
#[unsafe(no_mangle)]
pub static CSS_SET_MEMCG_OFF: u64 = 0;
/// `cgroup_subsys_state.cgroup` (the first member: 0).
#[unsafe(no_mangle)]
pub static CSS_CGROUP_OFF: u64 = 0;
/// `cgroup.kn`.
#[unsafe(no_mangle)]
pub static CGROUP_KN_OFF: u64 = 0;
/// `kernfs_node.id`.
#[unsafe(no_mangle)]
pub static KN_ID_OFF: u64 = 0;
/// Creator stacks (see `tracer_common::maps::globals::STACK_PERIOD_NS`); period 0: off.
#[unsafe(no_mangle)]
pub static STACK_PERIOD_NS: u64 = 0;
#[unsafe(no_mangle)]
pub static STACK_BURST_NS: u64 = 0;
#[unsafe(no_mangle)]
pub static TASK_STACK_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PT_REGS_TOP_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PT_REGS_IP_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PT_REGS_SP_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PT_REGS_BP_OFF: u64 = 0;
#[unsafe(no_mangle)]
pub static PT_REGS_CS_OFF: u64 = 0;

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

/// `*(base + off)` of a kernel object by probe read (programs whose pointers are untyped:
/// classic and raw tracepoints, or kernels without the BTF helpers). None when the object or
/// the offset (0: not found in BTF) is unknown, or the read fails.
#[inline(always)]
pub fn kernel_read<T>(base: u64, off: &'static u64) -> Option<T> {
    let off = global(off);
    if base == 0 || off == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }.ok()
}

/// A field of the current task, by probe read (see [`kernel_read`]).
#[inline(always)]
pub fn current_task_read<T>(off: &'static u64) -> Option<T> {
    kernel_read(unsafe { bpf_get_current_task() }, off)
}

/// `*(base + off)` by probe read, for offsets that may legitimately be 0 (first members).
#[inline(always)]
pub fn read_at<T>(base: u64, off: &'static u64) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + global(off)) as *const T) }.ok()
}

/// The low 32 bits of the current task's v1 memory cgroup id (see `EventHeader::memcg`), 0
/// when unknown. Five dependent probe reads, about 100 ns: not for per-call hot paths.
#[inline(always)]
pub fn memcg() -> u32 {
    if global(&MEMCG_V1) == 0 {
        return 0;
    }
    let id = || -> Option<u64> {
        let set: u64 = current_task_read(&TASK_CGROUPS_OFF)?;
        let css: u64 = read_at(set, &CSS_SET_MEMCG_OFF)?;
        let cgrp: u64 = read_at(css, &CSS_CGROUP_OFF)?;
        let kn: u64 = read_at(cgrp, &CGROUP_KN_OFF)?;
        read_at(kn, &KN_ID_OFF)
    };
    id().unwrap_or(0) as u32
}

/// The current task's `exit_code`, or -1 when the offset is unknown.
#[inline(always)]
pub fn current_exit_code() -> i32 {
    current_task_read(&TASK_EXIT_CODE_OFF).unwrap_or(-1)
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

/// The header of an event of the current task, its memory cgroup included.
#[inline(always)]
pub fn header(kind: EventKind, ts_ns: u64, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        memcg: memcg(),
        ..hot_header(kind, ts_ns, tgid, tid)
    }
}

/// The header of a per-call memory event: without the memory cgroup (see
/// `EventHeader::memcg`).
#[inline(always)]
pub fn hot_header(kind: EventKind, ts_ns: u64, tgid: u32, tid: u32) -> EventHeader {
    EventHeader {
        ts_ns,
        cgroup_id: cgroup_id(),
        tgid,
        tid,
        kind: kind as u16,
        cpu: unsafe { bpf_get_smp_processor_id() } as u16,
        memcg: 0,
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

/// The `WAIT_SLOTS` entry of a tid: its own (None past the end of the array).
#[inline(always)]
fn wait_slot(tid: u32) -> Option<*mut WaitSlot> {
    WAIT_SLOTS.get_ptr_mut(tid)
}

/// Takes the blocked state of `tid` out of its slot: at the end of its call, or at its exit.
#[inline(always)]
pub fn take_wait(tid: u32) -> Option<WaitSlot> {
    let p = wait_slot(tid)?;
    let state = unsafe { *p };
    if state.tgid == 0 {
        return None;
    }
    unsafe { core::ptr::write_volatile(&mut (*p).tgid, 0) };
    Some(state)
}

/// Puts the blocked state of `tid` in its slot; false when its tid is past the array.
#[inline(always)]
pub fn put_wait(tid: u32, state: &WaitSlot) -> bool {
    let Some(p) = wait_slot(tid) else {
        return false;
    };
    unsafe {
        (*p).start_ns = state.start_ns;
        (*p).syscall = state.syscall;
        // Last: readers take a non-zero tgid as "the rest is valid".
        core::ptr::write_volatile(&mut (*p).tgid, state.tgid);
    }
    true
}

/// Stamps the park start of `tid` if it holds a slot not yet stamped; false when it holds
/// none.
#[inline(always)]
pub fn mark_parked(tid: u32) -> bool {
    let Some(p) = wait_slot(tid) else {
        return false;
    };
    unsafe {
        if (*p).tgid == 0 {
            return false;
        }
        if (*p).start_ns == 0 {
            core::ptr::write_volatile(&mut (*p).start_ns, now_ns());
        }
    }
    true
}

/// A one-entry flag map, read as non-zero.
#[inline(always)]
fn flag(map: &Array<u64>) -> bool {
    match map.get_ptr(0) {
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => false,
    }
}
