//! The creator's user stack at a thread or process creation, for userspace to unwind with
//! `.eh_frame` (Debian's glibc, CPython and Ruby have no frame pointers: a frame-pointer walk
//! from `clone3` stops after one frame). `task_newtask` runs in the creator's context, so its
//! user registers are the `pt_regs` at the top of its kernel stack, and its stack memory is
//! the current `mm`'s: this is what `perf --call-graph dwarf` and samply copy.

use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_get_current_task, bpf_probe_read_user},
    macros::map,
    maps::PerCpuArray,
};
use tracer_common::{
    EventKind, STACK_BYTES, STACK_CHUNK, StackEvent,
    maps::{STACK_BUDGET_LEN, StackBudget, Stat},
};

use crate::emit::{
    PT_REGS_BP_OFF, PT_REGS_CS_OFF, PT_REGS_IP_OFF, PT_REGS_SP_OFF, PT_REGS_TOP_OFF,
    STACK_BURST_NS, STACK_PERIOD_NS, TASK_STACK_OFF, bump, global, hot_header, kernel_read, now_ns,
    read_at, reserve, submit,
};

#[map]
static STACK_BUDGET: PerCpuArray<StackBudget> = PerCpuArray::with_max_entries(STACK_BUDGET_LEN, 0);

/// `__USER_CS` on x86_64: the saved registers are a user context's (checks the `pt_regs`
/// location, which assumes the kernel's THREAD_SIZE and finds its padding).
const USER_CS: u64 = 0x33;
/// `TOP_OF_KERNEL_STACK_PADDING` with CONFIG_X86_FRED (0 without).
const FRED_PADDING: u64 = 16;

/// Takes one stack's worth of the process's credit; false when it has none left.
#[inline(always)]
fn take_budget(tgid: u32, now: u64) -> bool {
    let period = global(&STACK_PERIOD_NS);
    if period == 0 {
        return false;
    }
    let burst = global(&STACK_BURST_NS);
    let Some(b) = STACK_BUDGET.get_ptr_mut(tgid & (STACK_BUDGET_LEN - 1)) else {
        return false;
    };
    // Per-CPU slot: no other CPU writes it, and a program is not preempted by itself.
    let b = unsafe { &mut *b };
    if b.tgid != tgid {
        b.tgid = tgid;
        b.credit_ns = burst;
        b.last_ns = now;
    }
    let credit = (b.credit_ns + now.saturating_sub(b.last_ns)).min(burst);
    b.last_ns = now;
    if credit < period {
        b.credit_ns = credit;
        return false;
    }
    b.credit_ns = credit - period;
    true
}

/// Copies the creator's registers and stack, when its budget allows, as a [`StackEvent`].
#[inline(always)]
pub fn capture(tgid: u32, tid: u32, child_tid: u32) {
    let now = now_ns();
    if global(&STACK_PERIOD_NS) == 0 {
        return;
    }
    if !take_budget(tgid, now) {
        bump(Stat::StacksSkipped);
        return;
    }
    let task = unsafe { bpf_get_current_task() };
    let Some(kstack) = kernel_read::<u64>(task, &TASK_STACK_OFF) else {
        bump(Stat::StacksFailed);
        return;
    };
    // The user registers end the kernel stack, below 16 bytes of padding on kernels with
    // FRED (6.9+, CONFIG_X86_FRED): the saved cs tells which.
    let mut regs = kstack + global(&PT_REGS_TOP_OFF);
    if read_at::<u64>(regs, &PT_REGS_CS_OFF) != Some(USER_CS) {
        regs -= FRED_PADDING;
        if read_at::<u64>(regs, &PT_REGS_CS_OFF) != Some(USER_CS) {
            bump(Stat::StacksFailed);
            return;
        }
    }
    let (Some(ip), Some(sp), Some(bp)) = (
        read_at::<u64>(regs, &PT_REGS_IP_OFF),
        read_at::<u64>(regs, &PT_REGS_SP_OFF),
        read_at::<u64>(regs, &PT_REGS_BP_OFF),
    ) else {
        bump(Stat::StacksFailed);
        return;
    };
    let Some(mut entry) = reserve::<StackEvent>() else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        (*ev).head.hdr = hot_header(EventKind::Stack, now, tgid, tid);
        (*ev).head.child_tid = child_tid;
        (*ev).head.ip = ip;
        (*ev).head.sp = sp;
        (*ev).head.bp = bp;
        // Chunk by chunk: a chunk fails past the top of the stack's mapping, and also on a
        // page never touched inside a caller's big frame (the helper cannot fault it in).
        // Failed chunks are zeroed by the helper; the copy ends after the last good one.
        let base = (*ev).stack.as_mut_ptr();
        let mut len = 0u32;
        let mut i = 0;
        while i < STACK_BYTES / STACK_CHUNK {
            let off = i * STACK_CHUNK;
            let rc = bpf_probe_read_user(
                base.add(off) as *mut c_void,
                STACK_CHUNK as u32,
                (sp + off as u64) as *const c_void,
            );
            i += 1;
            if rc == 0 {
                len = (i * STACK_CHUNK) as u32;
            }
        }
        (*ev).head.len = len;
    }
    submit(entry);
}
