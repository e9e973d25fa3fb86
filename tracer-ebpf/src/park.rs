//! `sched_switch`: where a thread in a call that can park (futex wait, blocking poll) is seen
//! going to sleep. The BTF program opens the thread's wait slot there, stamped with the time:
//! a call that never sleeps costs nothing beyond `sys_exit`, and no `sys_enter` program is
//! needed at all. Where that cannot load (no `bpf_task_pt_regs` before 5.15) a BTF twin, and
//! without BTF a raw-tracepoint twin, only stamp slots that `sys_enter` opened.
//!
//! It fires on every context switch on the host. A preemption leaves at once; a sleep costs a
//! thread-id read and an inlined array lookup, and, for the BTF program, two loads from the
//! task's saved user registers. At this tracepoint `current` is still the task switched out.

use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{maps::Stat, syscalls::Call};

use crate::emit::{
    TASK_STATE_OFF, btf_field, bump, global, mark_parked, now_ns, pid_tgid, put_wait, traced,
};
use crate::syscall::{AX, BtfRegs, ORIG_AX, Regs, classify, wait_slot_for};

/// `task->__state` bits: a sleep in a call (interruptible or not) counts as a park; stops,
/// traces, freezing and death do not (a stopped thread may be past its syscall's exit).
const TASK_INTERRUPTIBLE: u32 = 0x1;
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
const NOT_A_PARK: u32 = 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80 | 0x8000;

/// `-ENOSYS`: what the syscall entry code puts in `regs->ax` until the call returns. A task
/// whose saved `ax` is anything else has finished its syscall (it sleeps on the way out).
const ENOSYS: i64 = -38;

// Arguments of `sched_switch`: (bool preempt, struct task_struct *prev,
// struct task_struct *next), and `unsigned int prev_state` since 5.18. The state is loaded
// from `prev` (offset from BTF) so that one program serves every kernel.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let state: u32 = btf_field(prev, &TASK_STATE_OFF);
    if let Some((tgid, tid)) = sleeping(preempt, state)
        && !mark_parked(tid)
    {
        open_slot(tgid, tid);
    }
    0
}

/// For kernels before 5.15, which lack `bpf_task_pt_regs`: only stamps the slots `sys_enter`
/// opened.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf_stamp(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let state: u32 = btf_field(prev, &TASK_STATE_OFF);
    if let Some((_, tid)) = sleeping(preempt, state) {
        mark_parked(tid);
    }
    0
}

/// Raw tracepoint: `prev_state` from the arguments (5.18 and later; older kernels refuse the
/// attach).
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    if let Some((_, tid)) = sleeping(preempt, prev_state as u32) {
        mark_parked(tid);
    }
    0
}

/// Raw tracepoint before 5.18: the state read from `prev` (offset from BTF) by a probe read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw_prev(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let at = prev + global(&TASK_STATE_OFF);
    let state: u32 = unsafe { bpf_probe_read_kernel(at as *const u32) }.unwrap_or(0);
    if let Some((_, tid)) = sleeping(preempt, state) {
        mark_parked(tid);
    }
    0
}

/// The (tgid, tid) of the task being switched out if it is going to sleep.
#[inline(always)]
fn sleeping(preempt: u64, state: u32) -> Option<(u32, u32)> {
    if preempt as u8 != 0
        || state & (TASK_INTERRUPTIBLE | TASK_UNINTERRUPTIBLE) == 0
        || state & NOT_A_PARK != 0
    {
        return None;
    }
    let (tgid, tid) = pid_tgid();
    (tid != 0).then_some((tgid, tid))
}

/// Opens a stamped wait slot if the current task sleeps inside a call that can park.
#[inline(always)]
fn open_slot(tgid: u32, tid: u32) {
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return;
    }
    let r = BtfRegs(regs);
    if r.word(AX) as i64 != ENOSYS {
        return;
    }
    let id = r.word(ORIG_AX) as u32;
    if classify(id, r) != Call::Wait || !traced(tgid) {
        return;
    }
    if !put_wait(tid, &wait_slot_for(id, tgid, now_ns())) {
        bump(Stat::WaitMapFull);
    }
}
