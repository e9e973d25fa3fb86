//! `sys_exit` (and, where needed, `sys_enter`): one program for every traced syscall.
//!
//! Measured on this kind of machine (shared/perf-floor.md), BTF/raw `sys_enter`/`sys_exit`
//! cost ~140 ns per call pair against ~300 ns for a pair of classic per-syscall tracepoints,
//! and even untraced syscalls pay ~90 ns of the slow path once any syscall tracepoint is on.
//! So the generic hooks win; each does one `match` on the syscall number and leaves at once
//! for syscalls it does not follow. With BTF, `sys_enter` is not attached at all: wait slots
//! are opened by `sched_switch` when a thread actually sleeps (see `park`), and exit codes
//! come from `task_struct`. Every syscall on the host then pays one hook, not two.
//!
//! Wakes, waits that never slept, zero-timeout polls and `brk(0)` are counted per CPU and
//! never streamed.

use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use tracer_common::{
    EventKind, ExitCallEvent, MAP_ANONYMOUS, MemEvent, SMALL_MAP_BYTES, WaitEvent,
    maps::{Stat, WaitSlot},
    syscalls::{self as nr, Call},
};

use crate::batch;
use crate::emit::{
    MM_START_BRK_OFF, TASK_MM_OFF, bump, current_task_read, emit, header, hot_header, is_self,
    kernel_read, min_wait_ns, now_ns, pid_tgid, put_wait, switch_hooked, take_wait, traced,
};

// x86_64 `struct pt_regs` word indexes. The layout is user ABI (ptrace), so fixed offsets are
// safe without CO-RE.
const R10: usize = 7;
const R9: usize = 8;
const R8: usize = 9;
pub(crate) const AX: usize = 10;
const DX: usize = 12;
const SI: usize = 13;
const DI: usize = 14;
pub(crate) const ORIG_AX: usize = 15;

/// Reads `pt_regs` words. BTF tracepoints get a typed pointer the verifier lets us load from
/// directly; raw tracepoints get an untyped one that needs `bpf_probe_read_kernel`.
pub(crate) trait Regs: Copy {
    fn word(self, i: usize) -> u64;
}

#[derive(Clone, Copy)]
pub(crate) struct BtfRegs(pub(crate) *const u64);
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

/// The x86_64 registers holding syscall arguments 0..=5.
const ARG_REGS: [usize; 6] = [DI, SI, DX, R10, R8, R9];

/// `syscalls::classify` on the saved registers (an argument is read only when needed).
#[inline(always)]
pub(crate) fn classify<R: Regs>(id: u32, r: R) -> Call {
    nr::classify(id, |i| r.word(ARG_REGS[i]))
}

/// A wait slot for the current thread's call `id`; `start_ns` 0 until it sleeps.
#[inline(always)]
pub(crate) fn wait_slot_for(id: u32, tgid: u32, start_ns: u64) -> WaitSlot {
    WaitSlot {
        start_ns,
        tgid,
        syscall: id as u16,
        _pad: 0,
    }
}

/// `sys_enter` is attached only when `sched_switch` cannot open wait slots itself (raw
/// tracepoints, no BTF) or the exit code cannot be read from `task_struct`: it then opens the
/// wait slots and reports `exit`/`exit_group` calls.
#[inline(always)]
fn on_enter<R: Regs>(r: R, id: u32) {
    let call = classify(id, r);
    if call != Call::Exit && call != Call::Wait {
        return;
    }
    let (tgid, tid) = pid_tgid();
    if !traced(tgid) {
        return;
    }
    if call == Call::Exit {
        emit(&ExitCallEvent {
            hdr: header(EventKind::ExitCall, now_ns(), tgid, tid),
            code: r.word(DI) as i32,
            group: (id == nr::EXIT_GROUP) as u32,
        });
        return;
    }
    // With the sched_switch hook, the start is stamped when the thread first sleeps.
    let start = if switch_hooked() { 0 } else { now_ns() };
    if !put_wait(tid, &wait_slot_for(id, tgid, start)) {
        bump(Stat::WaitMapFull);
    }
}

/// The end of a call that can park: a park of at least `MIN_WAIT_NS` is streamed, anything
/// shorter counted. A call that never slept has no slot (or an unstamped one): it costs no
/// clock read unless every wait is streamed (`--min-wait-ms 0`).
#[inline(always)]
fn end_wait<R: Regs>(id: u32, r: R, ret: i64) {
    let futex = id == nr::FUTEX || id == nr::FUTEX_WAIT || id == nr::FUTEX_WAITV;
    let (kind, short) = if futex {
        (EventKind::FutexWait, Stat::FutexShortWaits)
    } else {
        (EventKind::PollWait, Stat::PollShortWaits)
    };
    let (tgid, tid) = pid_tgid();
    // The collector's own waits (its 10 ms drain timer) are not counted.
    if is_self(tgid) {
        return;
    }
    let slot = take_wait(tid);
    let start = match &slot {
        Some(s) => s.start_ns,
        None => 0,
    };
    let min_wait = min_wait_ns();
    if start == 0 && min_wait > 0 {
        bump(short);
        return;
    }
    let now = now_ns();
    if start != 0 && now.saturating_sub(start) < min_wait {
        bump(short);
        return;
    }
    if slot.is_none() && !traced(tgid) {
        return;
    }
    // The arguments are still in the saved registers at exit.
    emit(&WaitEvent {
        hdr: header(kind, now, tgid, tid),
        start_ns: if start == 0 { now } else { start },
        uaddr: r.word(DI),
        ret,
        syscall: id,
        op: nr::wait_op(id, |i| r.word(ARG_REGS[i])) as u32,
    });
}

#[inline(always)]
fn on_exit<R: Regs>(r: R, ret: i64) {
    let id = r.word(ORIG_AX) as u32;
    match classify(id, r) {
        Call::FutexWake => bump(Stat::FutexWakes),
        Call::NonBlockingPoll => bump(Stat::PollNonBlocking),
        Call::Wait => end_wait(id, r, ret),
        Call::Mem => on_mem_exit(id, r, ret),
        Call::Exit | Call::Other => {}
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
    // The heap start comes with every brk event (see `start_brk`): queries are only counted.
    if id == nr::BRK && di == 0 {
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
                old_addr: start_brk(),
                ..mem_event()
            },
        ),
    };
    emit(&MemEvent {
        hdr: hot_header(kind, now_ns(), tgid, tid),
        ret,
        ..ev
    });
}

/// The current process's `mm->start_brk`, the start of its heap (0 if unknown): with it each
/// brk event tells the heap's size by itself, whatever events were lost before it (an exec
/// that was lost no longer makes the parent's break the new program's baseline). Read by
/// probe reads (offsets from BTF): brk moves are rare, and this works on every kernel.
#[inline(always)]
fn start_brk() -> u64 {
    current_task_read::<u64>(&TASK_MM_OFF)
        .and_then(|mm| kernel_read(mm, &MM_START_BRK_OFF))
        .unwrap_or(0)
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
