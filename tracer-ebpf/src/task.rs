//! Task lifecycle: creation (`task/task_newtask`), exit (`sched/sched_process_exit`), exec
//! (`sched/sched_process_exec`) and renames (`task/task_rename`).
//!
//! Creation and exit fire twice per thread, so they run as BTF tracepoints where the kernel
//! has BTF: no classic record is built, and the task's fields are loaded directly (offsets
//! from BTF). The classic programs are the fallback, and exec (process rate) stays classic.
//! Classic field offsets are those of `/sys/kernel/tracing/events/<cat>/<name>/format`; the
//! collector checks them against the running kernel before loading (see
//! `tracer::probes::formats`).

use aya_ebpf::{
    EbpfContext,
    cty::c_void,
    helpers::{bpf_probe_read_kernel_str_bytes, generated::bpf_get_current_comm},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{
    CLONE_THREAD, COMM_LEN, EventKind, ExecEvent, GROUP_DEAD_NO, GROUP_DEAD_UNKNOWN,
    GROUP_DEAD_YES, NewTaskEvent, RenameEvent, TaskExitEvent, maps::Stat, tracepoints::*,
};

use crate::emit::{
    SIGNAL_LIVE_OFF, TASK_EXIT_CODE_OFF, TASK_PID_OFF, TASK_SIGNAL_OFF, TASK_TGID_OFF, TRACED,
    btf_field, bump, current_exit_code, current_task_read, filtering, header, kernel_read, now_ns,
    pid_tgid, reserve, submit, take_wait, traced,
};

/// Reads a field of a classic tracepoint record. The verifier allows direct loads from the
/// record; `off` must be within the record described by the format file. Fields are naturally
/// aligned: one load, whose bounds the verifier keeps (byte-wise unaligned loads lose them on
/// older verifiers).
#[inline(always)]
pub fn field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off) as *const T) }
}

#[tracepoint(category = "task", name = "task_newtask")]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let child_tid: i32 = field(&ctx, NEWTASK_PID);
    new_task(child_tid as u32, field(&ctx, NEWTASK_CLONE_FLAGS));
    0
}

/// `task_newtask(struct task_struct *task, u64 clone_flags)` without the classic
/// tracepoint's record: the child's pid is loaded from the task (offset from BTF).
#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let clone_flags: u64 = ctx.arg(1);
    let child_tid: i32 = btf_field(task, &TASK_PID_OFF);
    new_task(child_tid as u32, clone_flags);
    0
}

#[inline(always)]
fn new_task(child_tid: u32, clone_flags: u64) {
    let (tgid, tid) = pid_tgid();
    let thread = clone_flags & CLONE_THREAD != 0;
    if !traced(tgid) {
        // A traced process that ended may still be in TRACED (the collector takes it out at
        // its next sample): its pid, reused by an untraced creator, is not traced.
        if filtering() && !thread {
            let _ = TRACED.remove(child_tid);
        }
        return;
    }
    let child_tgid = if thread { tgid } else { child_tid };
    if filtering() && child_tgid != tgid && TRACED.insert(child_tgid, 1, 0).is_err() {
        bump(Stat::FilterMapFull);
    }
    let Some(mut entry) = reserve::<NewTaskEvent>() else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = header(EventKind::NewTask, now_ns(), tgid, tid);
        (*ev).clone_flags = clone_flags;
        (*ev).child_tid = child_tid;
        (*ev).child_tgid = child_tgid;
        // task_newtask fires before the child runs: its comm is still the creator's.
        current_comm(&mut (*ev).comm);
    }
    submit(entry);
    crate::stack::capture(tgid, tid, child_tid);
}

/// The current task's comm, written in place (NUL-padded by the helper, zeroed on error):
/// no stack copy, no byte-wise zeroing.
#[inline(always)]
fn current_comm(dst: &mut [u8; COMM_LEN]) {
    unsafe { bpf_get_current_comm(dst.as_mut_ptr() as *mut c_void, COMM_LEN as u32) };
}

/// The classic record has `group_dead` only since 6.16: it is read from the task instead.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    task_exit(current_group_dead(), current_exit_code());
    0
}

/// `sched_process_exit(struct task_struct *p)` (`bool group_dead` is a second argument only
/// since 6.16; only the first is read, so one program serves every kernel). `p` is the current
/// task: its exit code and `signal->live` are loaded directly (offsets from BTF).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let signal: *const u8 = btf_field(task, &TASK_SIGNAL_OFF);
    let group_dead = if signal.is_null() {
        GROUP_DEAD_UNKNOWN
    } else {
        let live: i32 = btf_field(signal, &SIGNAL_LIVE_OFF);
        dead_if(live)
    };
    task_exit(group_dead, btf_field(task, &TASK_EXIT_CODE_OFF));
    0
}

/// `do_exit` decrements `signal->live` before the tracepoint: 0 means no other task of the
/// group is still live. Two threads exiting at once may both see 0; the collector ends the
/// process when its last known thread has exited.
#[inline(always)]
fn dead_if(live: i32) -> u32 {
    if live <= 0 {
        GROUP_DEAD_YES
    } else {
        GROUP_DEAD_NO
    }
}

/// `group_dead` of the current task through probe reads (classic tracepoint), or unknown.
#[inline(always)]
fn current_group_dead() -> u32 {
    current_task_read::<u64>(&TASK_SIGNAL_OFF)
        .and_then(|signal| kernel_read::<i32>(signal, &SIGNAL_LIVE_OFF))
        .map_or(GROUP_DEAD_UNKNOWN, dead_if)
}

#[inline(always)]
fn task_exit(group_dead: u32, exit_code: i32) {
    let (tgid, tid) = pid_tgid();
    // A thread killed while blocked may never run its syscall exit: drop its state here so
    // WAIT_SLOTS keeps no dead thread.
    let _ = take_wait(tid);
    // With a filter, the tgid stays in TRACED: two exiting threads may both see `live` at 0,
    // so this is not surely the last. The collector takes it out once the process has ended
    // (and `new_task` does when the pid is reused outside the traced tree).
    if !traced(tgid) {
        return;
    }
    if group_dead != GROUP_DEAD_NO {
        crate::batch::flush_tgid(tgid);
    }
    if let Some(mut entry) = reserve::<TaskExitEvent>() {
        let ev = entry.as_mut_ptr();
        unsafe {
            (*ev).hdr = header(EventKind::TaskExit, now_ns(), tgid, tid);
            (*ev).group_dead = group_dead;
            (*ev).exit_code = exit_code;
            current_comm(&mut (*ev).comm);
        }
        submit(entry);
    }
}

/// `task_rename(struct task_struct *task, const char *comm)`: a new comm, before it is copied
/// in. `task` is not always the current task (a write to another's `/proc/.../comm`).
#[btf_tracepoint(function = "task_rename")]
pub fn task_rename_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    let comm: *const u8 = ctx.arg(1);
    let tid: i32 = btf_field(task, &TASK_PID_OFF);
    let tgid: i32 = btf_field(task, &TASK_TGID_OFF);
    let (tgid, tid) = (tgid as u32, tid as u32);
    if !traced(tgid) {
        return 0;
    }
    let Some(mut entry) = reserve::<RenameEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = header(EventKind::Rename, now_ns(), tgid, tid);
        // NUL-terminated by the helper (zeroed on error).
        let _ = bpf_probe_read_kernel_str_bytes(comm, &mut (*ev).comm);
    }
    submit(entry);
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
    let Some(mut entry) = reserve::<ExecEvent>() else {
        return 0;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).hdr = header(EventKind::Exec, now_ns(), tgid, tid);
        (*ev).old_tid = old_pid as u32;
        (*ev)._pad = 0;
        current_comm(&mut (*ev).comm);
        // NUL-terminated by the helper (zeroed on error); the decoder stops at the NUL.
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename);
    }
    submit(entry);
    0
}
