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
    helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    EventKind, ExitCallEvent, MemEvent, WaitEvent,
    maps::{Stat, WaitState},
    syscalls::{self as nr, FUTEX_FLAGS, futex_op_waits},
};

use crate::emit::{
    EXEC_PENDING, NONBLOCK, WAITING, bump, current_csw, emit, header, min_wait_ns, now_ns,
    pid_tgid, task_csw_off, traced,
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
    /// The current task's context-switch count (nvcsw + nivcsw), None if unknown.
    fn csw() -> Option<u64>;
}

#[derive(Clone, Copy)]
struct BtfRegs(*const u64);
impl Regs for BtfRegs {
    #[inline(always)]
    fn word(self, i: usize) -> u64 {
        unsafe { core::ptr::read_volatile(self.0.add(i)) }
    }
    #[inline(always)]
    fn csw() -> Option<u64> {
        let off = task_csw_off();
        if off == 0 {
            return None;
        }
        // A trusted BTF pointer: plain loads at constant member offsets, no helper call.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        let (a, b) = unsafe {
            (
                core::ptr::read_volatile(task.add(off) as *const u64),
                core::ptr::read_volatile(task.add(off + 8) as *const u64),
            )
        };
        Some(a.wrapping_add(b))
    }
}

#[derive(Clone, Copy)]
struct RawRegs(*const u64);
impl Regs for RawRegs {
    #[inline(always)]
    fn word(self, i: usize) -> u64 {
        unsafe { bpf_probe_read_kernel(self.0.add(i)) }.unwrap_or(0)
    }
    #[inline(always)]
    fn csw() -> Option<u64> {
        current_csw()
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
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => {
            if poll_blocks(id, r) {
                begin_wait(id, r.word(DI), r.word(SI) as u32);
            } else {
                bump(Stat::PollNonBlocking);
                mark_nonblocking::<R>();
            }
        }
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

/// Notes, per CPU, that this thread is in a zero-timeout poll (see `NonBlock`).
#[inline(always)]
fn mark_nonblocking<R: Regs>() {
    let Some(csw) = R::csw() else { return };
    if let Some(slot) = NONBLOCK.get_ptr_mut(0) {
        unsafe {
            (*slot).tid = pid_tgid().1;
            (*slot).csw = csw;
        }
    }
}

/// True when this exit belongs to the zero-timeout poll this thread entered on this CPU
/// without sleeping or migrating since: nothing was put in `WAITING` for it.
#[inline(always)]
fn was_nonblocking<R: Regs>() -> bool {
    let Some(slot) = NONBLOCK.get_ptr_mut(0) else {
        return false;
    };
    let tid = pid_tgid().1;
    if unsafe { (*slot).tid } != tid {
        return false;
    }
    unsafe { (*slot).tid = 0 };
    R::csw() == Some(unsafe { (*slot).csw })
}

/// False for a poll-family call that returns at once (zero timeout). A timeout pointer that
/// cannot be read counts as blocking: the call will fail with EFAULT and the exit cleans up.
#[inline(always)]
fn poll_blocks<R: Regs>(id: u32, r: R) -> bool {
    // Pointer to a {seconds, sub-second} pair (timespec or timeval); NULL means wait forever.
    let pair_ptr = match id {
        nr::POLL => return r.word(DX) as i32 != 0,
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT => return r.word(R10) as i32 != 0,
        nr::PPOLL => r.word(DX),
        nr::SELECT | nr::PSELECT6 => r.word(R8),
        _ => r.word(R10), // epoll_pwait2
    };
    if pair_ptr == 0 {
        return true;
    }
    match unsafe { bpf_probe_read_user(pair_ptr as *const [i64; 2]) } {
        Ok(pair) => pair[0] != 0 || pair[1] != 0,
        Err(_) => true,
    }
}

#[inline(always)]
fn begin_wait(id: u32, uaddr: u64, op: u32) {
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return;
    }
    let state = WaitState {
        start_ns: now_ns(),
        uaddr,
        cgroup_id: crate::emit::cgroup_id(),
        tgid,
        syscall: id,
        op,
        _pad: 0,
    };
    if WAITING.insert(&tid, &state, 0).is_err() {
        bump(Stat::WaitMapFull);
    }
}

#[inline(always)]
fn end_wait(kind: EventKind, short: Stat, ret: i64) {
    let (tgid, tid) = pid_tgid();
    // Copy out before the delete frees the element.
    let Some(state) = (unsafe { WAITING.get(&tid) }).copied() else {
        return;
    };
    let _ = WAITING.remove(&tid);
    let now = now_ns();
    if now.saturating_sub(state.start_ns) < min_wait_ns() {
        bump(short);
        return;
    }
    emit(&WaitEvent {
        hdr: header(kind, now, tgid, tid),
        start_ns: state.start_ns,
        uaddr: state.uaddr,
        ret,
        syscall: state.syscall,
        op: state.op,
    });
}

#[inline(always)]
fn on_exit<R: Regs>(r: R, ret: i64) {
    let id = r.word(ORIG_AX) as u32;
    match id {
        nr::FUTEX => {
            // Wakes never entered WAITING: skip the lookup for them.
            if futex_op_waits(r.word(SI) as u32 & !FUTEX_FLAGS) {
                end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret);
            }
        }
        nr::FUTEX_WAIT | nr::FUTEX_WAITV => {
            end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret)
        }
        // Integer timeouts are still in the registers: a zero one never entered WAITING.
        nr::POLL if r.word(DX) as i32 == 0 => {}
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT if r.word(R10) as i32 == 0 => {}
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => {
            if !was_nonblocking::<R>() {
                end_wait(EventKind::PollWait, Stat::PollShortWaits, ret)
            }
        }
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
    let (tgid, tid) = pid_tgid();
    let (di, si) = (r.word(DI), r.word(SI));
    if id == nr::BRK && di == 0 && !first_brk_after_exec(tgid) {
        bump(Stat::BrkQueries);
        return;
    }
    if !traced(tgid) {
        return;
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
/// `EXEC_PENDING`).
#[inline(always)]
fn first_brk_after_exec(tgid: u32) -> bool {
    match EXEC_PENDING.get_ptr_mut(0) {
        Some(slot) if unsafe { *slot } == tgid => {
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
