//! Memory beyond the syscalls: RSS (`kmem/rss_stat`) and OOM kills (`oom/mark_victim`).
//!
//! `rss_stat` has three programs: the BTF one for 6.2+ (counters read from the mm), the BTF
//! one for older kernels (the count is an argument), and the classic tracepoint.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task_btf},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    EventKind, OOM_PID_ONLY, OomEvent, RSS_MEMBERS, RssEvent,
    maps::{RSS_LAST_LEN, RssLast, Stat},
    tracepoints::*,
};

use crate::{
    emit::{
        MM_RSS_STAT_OFF, PCPU_COUNT_OFF, PCPU_COUNTER_SIZE, RSS_LAST, TASK_MM_OFF, btf_field, bump,
        current_task_read, emit, filtering, global, header, now_ns, pid_tgid, rss_granule, traced,
    },
    task::field,
};

/// x86_64 pages are 4 KiB.
const PAGE_SHIFT: i64 = 12;

/// `rss_stat` fires on every counter update (page-fault rate). Only moves of at least
/// `RSS_GRANULE` since the last event for that mm and counter are streamed.
#[tracepoint(category = "kmem", name = "rss_stat")]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let curr: u32 = field(&ctx, RSS_CURR);
    let member: i32 = field(&ctx, RSS_MEMBER);
    rss_update(
        curr != 0,
        member,
        field(&ctx, RSS_MM_ID),
        field(&ctx, RSS_SIZE),
    );
    0
}

/// `rss_stat(struct mm_struct *mm, int member)` without the classic record (which hashes the
/// mm pointer with siphash and copies fields): the counter is read from the mm, whether it is
/// the current task's from the task (offsets from BTF).
#[btf_tracepoint(function = "rss_stat")]
pub fn rss_stat_btf(ctx: BtfTracePointContext) -> i32 {
    let mm: *const u8 = ctx.arg(0);
    let member: u64 = ctx.arg(1);
    // Bounded here too: the verifier refuses pointer arithmetic with an unbounded scalar.
    let member = member as i32;
    if member < 0 || member as usize >= RSS_MEMBERS {
        return 0;
    }
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let task_mm: u64 = btf_field(task, &TASK_MM_OFF);
    let mm_addr = mm as u64;
    // &mm->rss_stat[member].count, read like get_mm_counter() (the approximate sum).
    let at = mm_addr
        + global(&MM_RSS_STAT_OFF)
        + member as u64 * global(&PCPU_COUNTER_SIZE)
        + global(&PCPU_COUNT_OFF);
    let count: i64 = unsafe { bpf_probe_read_kernel(at as *const i64) }.unwrap_or(0);
    rss_update(
        task_mm == mm_addr,
        member,
        mm_id(&ctx),
        count.max(0) << PAGE_SHIFT,
    );
    0
}

/// `rss_stat(struct mm_struct *mm, int member, long count)` (before 6.2, when the counters were
/// atomics): the count in pages is an argument. Whether `mm` is the current task's is read
/// through the task (offset from BTF; `bpf_get_current_task_btf` is 5.11+).
#[btf_tracepoint(function = "rss_stat")]
pub fn rss_stat_btf_count(ctx: BtfTracePointContext) -> i32 {
    let mm: *const u8 = ctx.arg(0);
    let member: u64 = ctx.arg(1);
    let count: i64 = ctx.arg(2);
    let task_mm: u64 = current_task_read(&TASK_MM_OFF).unwrap_or(0);
    rss_update(
        task_mm == mm as u64,
        member as i32,
        mm_id(&ctx),
        count.max(0) << PAGE_SHIFT,
    );
    0
}

/// A stable 32-bit id of the mm of a BTF `rss_stat` (the classic record's is a keyed hash of
/// the pointer). The verifier allows no arithmetic on the typed pointer: its value is read as
/// a number from the context.
#[inline(always)]
fn mm_id(ctx: &BtfTracePointContext) -> u32 {
    let raw: u64 = unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const u64) }.unwrap_or(0);
    (raw.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

#[inline(always)]
fn rss_update(curr: bool, member: i32, mm_id: u32, size: i64) {
    let (tgid, tid) = pid_tgid();
    // Not the current task's mm (reclaim, exit teardown): with a filter there is no way to
    // tell whose it is in the kernel, so leave it out.
    if !curr && filtering() {
        return;
    }
    if curr && !traced(tgid) {
        return;
    }
    // As u32: a negative member becomes huge and is refused with the rest.
    let member = member as u32 as usize;
    if member >= RSS_MEMBERS {
        return;
    }
    // The verifier must see the index bounded where it is used: a volatile read keeps the
    // compiler from indexing with an earlier, unbounded copy of `member`.
    let member = unsafe { core::ptr::read_volatile(&member) } & (RSS_MEMBERS - 1);
    let Some(last) = RSS_LAST.get_ptr_mut(mm_id & (RSS_LAST_LEN - 1)) else {
        return;
    };
    unsafe {
        if (*last).mm_id != mm_id {
            *last = RssLast::default();
            (*last).mm_id = mm_id;
        } else if let Some(&prev) = (*last).size.get(member)
            && (size - prev).abs() < rss_granule()
            && size != 0
        {
            bump(Stat::RssFiltered);
            return;
        }
        if let Some(slot) = (*last).size.get_mut(member) {
            *slot = size;
        }
    }
    emit(&RssEvent {
        hdr: header(EventKind::Rss, now_ns(), tgid, tid),
        size,
        mm_id,
        member: member as u32,
        curr: curr as u32,
        _pad: 0,
    });
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let adj: i16 = field(&ctx, OOM_SCORE_ADJ);
    oom_victim(
        &ctx,
        OomEvent {
            total_vm_kb: field(&ctx, OOM_TOTAL_VM),
            anon_rss_kb: field(&ctx, OOM_ANON_RSS),
            file_rss_kb: field(&ctx, OOM_FILE_RSS),
            shmem_rss_kb: field(&ctx, OOM_SHMEM_RSS),
            uid: field(&ctx, OOM_UID),
            oom_score_adj: adj as i32,
            ..oom_event(0)
        },
    )
}

/// `oom/mark_victim` before 5.19: the record is the victim's pid alone.
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_pid(ctx: TracePointContext) -> u32 {
    oom_victim(&ctx, oom_event(OOM_PID_ONLY))
}

/// An OOM event with only `flags` set (the rest is filled in by the caller).
#[inline(always)]
fn oom_event(flags: u32) -> OomEvent {
    OomEvent {
        hdr: Default::default(),
        total_vm_kb: 0,
        anon_rss_kb: 0,
        file_rss_kb: 0,
        shmem_rss_kb: 0,
        victim_pid: 0,
        uid: 0,
        oom_score_adj: 0,
        flags,
    }
}

/// Emits `ev` (its header and pid filled in here) if the victim is traced.
#[inline(always)]
fn oom_victim(ctx: &TracePointContext, ev: OomEvent) -> u32 {
    let (tgid, tid) = pid_tgid();
    let victim: i32 = field(ctx, OOM_PID);
    if !traced(victim as u32) {
        return 0;
    }
    emit(&OomEvent {
        hdr: header(EventKind::OomVictim, now_ns(), tgid, tid),
        victim_pid: victim as u32,
        ..ev
    });
    0
}
