//! `sched_switch`: stamps the moment a thread in a wait call first goes to sleep there (see
//! `tracer_common::maps::SWITCH_HOOKED`), so that calls which never sleep need no clock read.
//!
//! It fires on every context switch on the host. A preemption leaves at once; a sleep costs a
//! thread-id read and an inlined array lookup, and a clock read only for a thread whose wait
//! has just begun. At this tracepoint `current` is still the task being switched out.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::emit::{mark_parked, pid_tgid};

// Arguments of `sched_switch`: (bool preempt, struct task_struct *prev,
// struct task_struct *next, unsigned int prev_state).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    on_switch(preempt as u8 != 0, prev_state as u32);
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev_state: u64 = ctx.arg(3);
    on_switch(preempt as u8 != 0, prev_state as u32);
    0
}

#[inline(always)]
fn on_switch(preempt: bool, prev_state: u32) {
    // Preempted (or still runnable): the thread is not parked.
    if preempt || prev_state == 0 {
        return;
    }
    let (_, tid) = pid_tgid();
    if tid != 0 {
        mark_parked(tid);
    }
}
