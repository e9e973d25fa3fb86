//! `sys_enter`/`sys_exit`: one pair of programs for every traced syscall.
//!
//! Measured on this kind of machine (shared/perf-floor.md), BTF/raw `sys_enter`/`sys_exit`
//! cost ~140 ns per call pair against ~300 ns for a pair of classic per-syscall tracepoints,
//! and even untraced syscalls pay ~90 ns of the slow path once any syscall tracepoint is on.
//! So the generic hooks win; each does one `match` on the syscall number and leaves at once
//! for syscalls it does not follow.
//!
//! Per-thread state (`WAITING`) is touched only by calls that can block. Wakes, zero-timeout
//! polls and `brk(0)` are counted per CPU and never streamed.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    EventKind, ExitCallEvent, MAP_ANONYMOUS, MemEvent, SMALL_MAP_BYTES, WaitEvent,
    maps::{Stat, WaitSlot},
    syscalls::{self as nr, FUTEX_FLAGS, futex_op_waits},
};

use crate::batch;
use crate::emit::{
    EXEC_PENDING, bump, emit, header, min_wait_ns, now_ns, pid_tgid, put_wait, switch_hooked,
    take_wait, traced,
};

// x86_64 `struct pt_regs` word indexes. The layout is user ABI (ptrace), so fixed offsets are
// safe without CO-RE.
const R10: usize = 7;
const R8: usize = 9;
const DX: usize = 12;
const SI: usize = 13;
const DI: usize = 14;
const ORIG_AX: usize = 15;

/// Reads `pt_regs` words. BTF tracepoints get a typed pointer the verifier lets us load from
/// directly; raw tracepoints get an untyped one that needs `bpf_probe_read_kernel`.
trait Regs: Copy {
    fn word(self, i: usize) -> u64;
}

#[derive(Clone, Copy)]
struct BtfRegs(*const u64);
impl Regs for BtfRegs {
    #[inline(always)]
    fn word(self, i: usize) -> u64 {
        unsafe { core::ptr::read_volatile(self.0.add(i)) }
    }
}

#[derive(Clone, Copy)]
struct RawRegs(*const u64);
impl Regs for RawRegs {
    #[inline(always)]
    fn word(self, i: usize) -> u64 {
        unsafe { bpf_probe_read_kernel(self.0.add(i)) }.unwrap_or(0)
    }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    on_enter(BtfRegs(ctx.arg(0)), id as u32);
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    on_exit(BtfRegs(ctx.arg(0)), ret);
    0
}

// The same programs as raw tracepoints, for kernels where BTF tracepoints do not load.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    on_enter(RawRegs(ctx.arg(0)), id as u32);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    on_exit(RawRegs(ctx.arg(0)), ret);
    0
}

/// poll and epoll_wait/epoll_pwait with a zero timeout: it is in a register (at entry and
/// still at exit), and such a call cannot block.
#[inline(always)]
fn zero_int_timeout<R: Regs>(id: u32, r: R) -> bool {
    match id {
        nr::POLL => r.word(DX) as i32 == 0,
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT => r.word(R10) as i32 == 0,
        _ => false,
    }
}

#[inline(always)]
fn on_enter<R: Regs>(r: R, id: u32) {
    match id {
        nr::FUTEX => {
            let op = r.word(SI) as u32 & !FUTEX_FLAGS;
            if futex_op_waits(op) {
                begin_wait(id, r.word(DI), op);
            } else {
                bump(Stat::FutexWakes);
            }
        }
        nr::FUTEX_WAIT | nr::FUTEX_WAITV => begin_wait(id, r.word(DI), 0),
        nr::FUTEX_WAKE => bump(Stat::FutexWakes),
        // Pointer timeouts (ppoll, select, pselect6, epoll_pwait2) are not read (a user-memory
        // read costs more than tracking the call): the exit classifies them by duration.
        _ if zero_int_timeout(id, r) => bump(Stat::PollNonBlocking),
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => begin_wait(id, r.word(DI), r.word(SI).min(u16::MAX as u64) as u32),
        nr::EXIT | nr::EXIT_GROUP => {
            let (tgid, tid) = pid_tgid();
            if !traced(tgid) {
                return;
            }
            emit(&ExitCallEvent {
                hdr: header(EventKind::ExitCall, now_ns(), tgid, tid),
                code: r.word(DI) as i32,
                group: (id == nr::EXIT_GROUP) as u32,
            });
        }
        _ => {}
    }
}

#[inline(always)]
fn begin_wait(id: u32, uaddr: u64, op: u32) {
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return;
    }
    let state = WaitSlot {
        // With the sched_switch hook, the start is stamped when the thread first sleeps.
        start_ns: if switch_hooked() { 0 } else { now_ns() },
        uaddr,
        tid,
        tgid,
        syscall: id as u16,
        op: op as u16,
        _pad: 0,
    };
    if !put_wait(&state) {
        bump(Stat::WaitMapFull);
    }
}

#[inline(always)]
fn end_wait(kind: EventKind, short: Stat, ret: i64) {
    let (tgid, tid) = pid_tgid();
    let Some(state) = take_wait(tid) else {
        return;
    };
    let min_wait = min_wait_ns();
    // Never slept in the call (start 0): short, and no clock read unless every wait is
    // streamed (`--min-wait-ms 0`).
    if state.start_ns == 0 && min_wait > 0 {
        bump(short);
        return;
    }
    let now = now_ns();
    let start = if state.start_ns == 0 {
        now
    } else {
        state.start_ns
    };
    if now.saturating_sub(start) < min_wait {
        bump(short);
        return;
    }
    emit(&WaitEvent {
        hdr: header(kind, now, tgid, tid),
        start_ns: start,
        uaddr: state.uaddr,
        ret,
        syscall: state.syscall as u32,
        op: state.op as u32,
    });
}

#[inline(always)]
fn on_exit<R: Regs>(r: R, ret: i64) {
    let id = r.word(ORIG_AX) as u32;
    match id {
        // Wakes never took a slot: skip the lookup for them.
        nr::FUTEX if futex_op_waits(r.word(SI) as u32 & !FUTEX_FLAGS) => {
            end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret)
        }
        nr::FUTEX_WAIT | nr::FUTEX_WAITV => {
            end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret)
        }
        // A zero-timeout poll/epoll_wait never took a slot.
        _ if zero_int_timeout(id, r) => {}
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => end_wait(EventKind::PollWait, Stat::PollShortWaits, ret),
        nr::MMAP | nr::MUNMAP | nr::MREMAP | nr::BRK => on_mem_exit(id, r, ret),
        _ => {}
    }
}

#[inline(always)]
fn on_mem_exit<R: Regs>(id: u32, r: R, ret: i64) {
    // Errors come back as -4095..-1; brk never fails that way (it returns the old break).
    if (-4095..0).contains(&ret) {
        bump(Stat::MemFailures);
        return;
    }
    let (di, si) = (r.word(DI), r.word(SI));
    if id == nr::BRK && di == 0 && !first_brk_after_exec() {
        bump(Stat::BrkQueries);
        return;
    }
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return;
    }
    // Small anonymous mmaps and small munmaps are batched per CPU, not streamed.
    let small = |len: u64| len < SMALL_MAP_BYTES;
    let page_round = |len: u64| (len + 4095) & !4095;
    match id {
        nr::MMAP if small(si) && (r.word(R10) as u32 & MAP_ANONYMOUS) != 0 => {
            batch::add(tgid, tid, true, page_round(si));
            return;
        }
        nr::MUNMAP if small(si) => {
            batch::add(tgid, tid, false, page_round(si));
            return;
        }
        _ => {}
    }
    let (kind, ev) = match id {
        nr::MMAP => (
            EventKind::Mmap,
            MemEvent {
                addr: ret as u64,
                len: si,
                prot: r.word(DX) as u32,
                flags: r.word(R10) as u32,
                fd: r.word(R8) as i32,
                ..mem_event()
            },
        ),
        nr::MUNMAP => (
            EventKind::Munmap,
            MemEvent {
                addr: di,
                len: si,
                ..mem_event()
            },
        ),
        nr::MREMAP => (
            EventKind::Mremap,
            MemEvent {
                addr: ret as u64,
                len: r.word(DX),
                old_addr: di,
                old_len: si,
                flags: r.word(R10) as u32,
                ..mem_event()
            },
        ),
        _ => (
            EventKind::Brk,
            MemEvent {
                addr: ret as u64,
                len: di,
                ..mem_event()
            },
        ),
    };
    emit(&MemEvent {
        hdr: header(kind, now_ns(), tgid, tid),
        ret,
        ..ev
    });
}

/// True once for the first `brk(0)` of a freshly exec'd process on this CPU (see
/// `EXEC_PENDING`). The thread id is read only when an exec is pending here: the common
/// `brk(0)` costs one inlined per-CPU lookup.
#[inline(always)]
fn first_brk_after_exec() -> bool {
    match EXEC_PENDING.get_ptr_mut(0) {
        Some(slot) if unsafe { *slot } != 0 && unsafe { *slot } == pid_tgid().0 => {
            unsafe { *slot = 0 };
            true
        }
        _ => false,
    }
}

#[inline(always)]
fn mem_event() -> MemEvent {
    MemEvent {
        hdr: Default::default(),
        addr: 0,
        len: 0,
        old_len: 0,
        old_addr: 0,
        ret: 0,
        prot: 0,
        flags: 0,
        fd: -1,
        _pad: 0,
    }
}
