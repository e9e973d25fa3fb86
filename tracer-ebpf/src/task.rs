//! Task lifecycle: creation (`task/task_newtask`), exit (`sched/sched_process_exit`) and exec
//! (`sched/sched_process_exec`). Classic tracepoints: these fire at process/thread rate, not
//! syscall rate, and their fields are a stable, documented record.
//!
//! Field offsets are those of `/sys/kernel/tracing/events/<cat>/<name>/format`; the collector
//! checks them against the running kernel before loading (see `tracer::probes::formats`).

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel_str_bytes},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    CLONE_THREAD, EventKind, ExecEvent, NewTaskEvent, TaskExitEvent, maps::Stat, tracepoints::*,
};

use crate::emit::{
    EXEC_PENDING, TRACED, bump, current_exit_code, emit, filtering, header, now_ns, pid_tgid,
    reserve, submit, take_wait, traced,
};

/// Reads a field of a classic tracepoint record. The verifier allows direct loads from the
/// record; `off` must be within the record described by the format file.
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    unsafe { core::ptr::read_unaligned((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return 0;
    }
    let child_tid: i32 = field(&ctx, NEWTASK_PID);
    let clone_flags: u64 = field(&ctx, NEWTASK_CLONE_FLAGS);
    let child_tid = child_tid as u32;
    let child_tgid = if clone_flags & CLONE_THREAD != 0 {
        tgid
    } else {
        child_tid
    };
    if filtering() && child_tgid != tgid && TRACED.insert(child_tgid, 1, 0).is_err() {
        bump(Stat::FilterMapFull);
    }
    emit(&NewTaskEvent {
        hdr: header(EventKind::NewTask, now_ns(), tgid, tid),
        clone_flags,
        child_tid,
        child_tgid,
        // task_newtask fires before the child runs: its comm is still the creator's.
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = pid_tgid();
    // A thread killed while blocked may never run its syscall exit: drop its state here so
    // WAITING cannot fill with the dead.
    let _ = take_wait(tid);
    if !traced(tgid) {
        return 0;
    }
    let group_dead: u8 = field(&ctx, EXIT_GROUP_DEAD);
    if group_dead != 0 {
        crate::batch::flush_tgid(tgid);
    }
    emit(&TaskExitEvent {
        hdr: header(EventKind::TaskExit, now_ns(), tgid, tid),
        group_dead: group_dead as u32,
        exit_code: current_exit_code(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    if group_dead != 0 && filtering() {
        let _ = TRACED.remove(tgid);
    }
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return 0;
    }
    let loc: u32 = field(&ctx, EXEC_FILENAME);
    let old_pid: i32 = field(&ctx, EXEC_OLD_PID);
    if let Some(slot) = EXEC_PENDING.get_ptr_mut(0) {
        unsafe { *slot = tgid };
    }
    let Some(mut entry) = reserve::<ExecEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = header(EventKind::Exec, now_ns(), tgid, tid);
        (*ev).old_tid = old_pid as u32;
        (*ev)._pad = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*ev).filename = [0; tracer_common::FILENAME_LEN];
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
    }
    submit(entry);
    0
}
