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
    helpers::{bpf_probe_read_kernel, bpf_probe_read_user},
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    EventKind, ExitCallEvent, MemEvent, WaitEvent,
    maps::{Stat, WaitState},
    syscalls::{self as nr, FUTEX_FLAGS, futex_op_waits},
};

use crate::emit::{
    EXEC_PENDING, WAITING, bump, emit, header, min_wait_ns, now_ns, pid_tgid, traced,
};

/// The syscall registers of x86_64 `struct pt_regs`, from `r10` (word 7) to `orig_ax`
/// (word 15); one probe read fetches them all. The layout is user ABI (ptrace), so fixed
/// offsets are safe without CO-RE.
#[repr(C)]
#[derive(Clone, Copy)]
struct SysRegs {
    r10: u64,
    r9: u64,
    r8: u64,
    _ax: u64,
    _cx: u64,
    dx: u64,
    si: u64,
    di: u64,
    orig_ax: u64,
}
const SYSREGS_OFFSET_WORDS: usize = 7;

impl SysRegs {
    #[inline(always)]
    fn read(regs: *const u64) -> Option<Self> {
        unsafe { bpf_probe_read_kernel(regs.add(SYSREGS_OFFSET_WORDS) as *const SysRegs) }.ok()
    }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    on_enter(regs, id as u32);
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    on_exit(regs, ret);
    0
}

// The same programs as raw tracepoints, for kernels where BTF tracepoints do not load.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_raw(ctx: RawTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    let id: i64 = ctx.arg(1);
    on_enter(regs, id as u32);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_raw(ctx: RawTracePointContext) -> i32 {
    let regs: *const u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    on_exit(regs, ret);
    0
}

#[inline(always)]
fn on_enter(regs: *const u64, id: u32) {
    match id {
        nr::FUTEX => {
            let Some(r) = SysRegs::read(regs) else { return };
            let op = r.si as u32 & !FUTEX_FLAGS;
            if futex_op_waits(op) {
                begin_wait(id, r.di, op);
            } else {
                bump(Stat::FutexWakes);
            }
        }
        nr::FUTEX_WAIT | nr::FUTEX_WAITV => {
            let Some(r) = SysRegs::read(regs) else { return };
            begin_wait(id, r.di, 0);
        }
        nr::FUTEX_WAKE => bump(Stat::FutexWakes),
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => {
            let Some(r) = SysRegs::read(regs) else { return };
            if poll_blocks(id, &r) {
                begin_wait(id, r.di, r.si as u32);
            } else {
                bump(Stat::PollNonBlocking);
            }
        }
        nr::EXIT | nr::EXIT_GROUP => {
            let Some(r) = SysRegs::read(regs) else { return };
            let (tgid, tid) = pid_tgid();
            if !traced(tgid) {
                return;
            }
            emit(&ExitCallEvent {
                hdr: header(EventKind::ExitCall, now_ns(), tgid, tid),
                code: r.di as i32,
                group: (id == nr::EXIT_GROUP) as u32,
            });
        }
        _ => {}
    }
}

/// False for a poll-family call that returns at once (zero timeout). A timeout pointer that
/// cannot be read counts as blocking: the call will fail with EFAULT and the exit cleans up.
#[inline(always)]
fn poll_blocks(id: u32, r: &SysRegs) -> bool {
    // Pointer to a {seconds, sub-second} pair (timespec or timeval); NULL means wait forever.
    let pair_ptr = match id {
        nr::POLL => return r.dx as i32 != 0,
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT => return r.r10 as i32 != 0,
        nr::PPOLL => r.dx,
        nr::SELECT | nr::PSELECT6 => r.r8,
        _ => r.r10, // epoll_pwait2
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
fn on_exit(regs: *const u64, ret: i64) {
    let Some(r) = SysRegs::read(regs) else { return };
    let id = r.orig_ax as u32;
    match id {
        nr::FUTEX => {
            // Wakes never entered WAITING: skip the lookup for them.
            if futex_op_waits(r.si as u32 & !FUTEX_FLAGS) {
                end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret);
            }
        }
        nr::FUTEX_WAIT | nr::FUTEX_WAITV => {
            end_wait(EventKind::FutexWait, Stat::FutexShortWaits, ret)
        }
        // Integer timeouts are still in the registers: a zero one never entered WAITING.
        nr::POLL if r.dx as i32 == 0 => {}
        nr::EPOLL_WAIT | nr::EPOLL_PWAIT if r.r10 as i32 == 0 => {}
        nr::POLL
        | nr::PPOLL
        | nr::SELECT
        | nr::PSELECT6
        | nr::EPOLL_WAIT
        | nr::EPOLL_PWAIT
        | nr::EPOLL_PWAIT2 => end_wait(EventKind::PollWait, Stat::PollShortWaits, ret),
        nr::MMAP | nr::MUNMAP | nr::MREMAP | nr::BRK => on_mem_exit(id, &r, ret),
        _ => {}
    }
}

#[inline(always)]
fn on_mem_exit(id: u32, r: &SysRegs, ret: i64) {
    // Errors come back as -4095..-1; brk never fails that way (it returns the old break).
    if (-4095..0).contains(&ret) {
        bump(Stat::MemFailures);
        return;
    }
    let (tgid, tid) = pid_tgid();
    if id == nr::BRK && r.di == 0 && !first_brk_after_exec(tgid) {
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
                len: r.si,
                prot: r.dx as u32,
                flags: r.r10 as u32,
                fd: r.r8 as i32,
                ..mem_event()
            },
        ),
        nr::MUNMAP => (
            EventKind::Munmap,
            MemEvent {
                addr: r.di,
                len: r.si,
                ..mem_event()
            },
        ),
        nr::MREMAP => (
            EventKind::Mremap,
            MemEvent {
                addr: ret as u64,
                len: r.dx,
                old_addr: r.di,
                old_len: r.si,
                flags: r.r10 as u32,
                ..mem_event()
            },
        ),
        _ => (
            EventKind::Brk,
            MemEvent {
                addr: ret as u64,
                len: r.di,
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
