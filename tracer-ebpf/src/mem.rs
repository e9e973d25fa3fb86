//! Memory beyond the syscalls: RSS (`kmem/rss_stat`) and OOM kills (`oom/mark_victim`).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    EventKind, OomEvent, RSS_MEMBERS, RssEvent,
    maps::{RSS_LAST_LEN, RssLast, Stat},
    tracepoints::*,
};

use crate::{
    emit::{RSS_LAST, bump, emit, filtering, header, now_ns, pid_tgid, rss_granule, traced},
    task::field,
};

/// `rss_stat` fires on every counter update (page-fault rate). Only moves of at least
/// `RSS_GRANULE` since the last event for that mm and counter are streamed.
#[tracepoint(category = "kmem", name = "rss_stat")]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = pid_tgid();
    let curr: u32 = field(&ctx, RSS_CURR);
    // Not the current task's mm (reclaim, exit teardown): with a filter there is no way to
    // tell whose it is in the kernel, so leave it out.
    if curr == 0 && filtering() {
        return 0;
    }
    if curr != 0 && !traced(tgid) {
        return 0;
    }
    let member: i32 = field(&ctx, RSS_MEMBER);
    if member < 0 || member as usize >= RSS_MEMBERS {
        return 0;
    }
    let member = member as usize;
    let mm_id: u32 = field(&ctx, RSS_MM_ID);
    let size: i64 = field(&ctx, RSS_SIZE);
    let Some(last) = RSS_LAST.get_ptr_mut(mm_id & (RSS_LAST_LEN - 1)) else {
        return 0;
    };
    unsafe {
        if (*last).mm_id == mm_id {
            let prev = (*last).size[member];
            if (size - prev).abs() < rss_granule() && size != 0 {
                bump(Stat::RssFiltered);
                return 0;
            }
        } else {
            *last = RssLast::default();
            (*last).mm_id = mm_id;
        }
        (*last).size[member] = size;
    }
    emit(&RssEvent {
        hdr: header(EventKind::Rss, now_ns(), tgid, tid),
        size,
        mm_id,
        member: member as u32,
        curr,
        _pad: 0,
    });
    0
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = pid_tgid();
    let victim: i32 = field(&ctx, OOM_PID);
    if !traced(victim as u32) {
        return 0;
    }
    let adj: i16 = field(&ctx, OOM_SCORE_ADJ);
    emit(&OomEvent {
        hdr: header(EventKind::OomVictim, now_ns(), tgid, tid),
        total_vm_kb: field(&ctx, OOM_TOTAL_VM),
        anon_rss_kb: field(&ctx, OOM_ANON_RSS),
        file_rss_kb: field(&ctx, OOM_FILE_RSS),
        shmem_rss_kb: field(&ctx, OOM_SHMEM_RSS),
        victim_pid: victim as u32,
        uid: field(&ctx, OOM_UID),
        oom_score_adj: adj as i32,
        _pad: 0,
    });
    0
}
