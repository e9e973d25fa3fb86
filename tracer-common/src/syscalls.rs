//! x86_64 syscall numbers and futex ops the kernel programs dispatch on.

pub const POLL: u32 = 7;
pub const MMAP: u32 = 9;
pub const MUNMAP: u32 = 11;
pub const BRK: u32 = 12;
pub const SELECT: u32 = 23;
pub const MREMAP: u32 = 25;
pub const EXIT: u32 = 60;
pub const FUTEX: u32 = 202;
pub const EXIT_GROUP: u32 = 231;
pub const EPOLL_WAIT: u32 = 232;
pub const PSELECT6: u32 = 270;
pub const PPOLL: u32 = 271;
pub const EPOLL_PWAIT: u32 = 281;
pub const EPOLL_PWAIT2: u32 = 441;
pub const FUTEX_WAITV: u32 = 449;
pub const FUTEX_WAKE: u32 = 454;
pub const FUTEX_WAIT: u32 = 455;

/// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME`, masked off the op.
pub const FUTEX_FLAGS: u32 = 128 | 256;
pub const FUTEX_OP_WAIT: u32 = 0;
pub const FUTEX_OP_LOCK_PI: u32 = 6;
pub const FUTEX_OP_WAIT_BITSET: u32 = 9;
pub const FUTEX_OP_WAIT_REQUEUE_PI: u32 = 11;
pub const FUTEX_OP_LOCK_PI2: u32 = 13;

/// True for the futex ops that can block (waits and PI locks); the rest wake or requeue.
pub const fn futex_op_waits(op: u32) -> bool {
    matches!(
        op,
        FUTEX_OP_WAIT
            | FUTEX_OP_LOCK_PI
            | FUTEX_OP_WAIT_BITSET
            | FUTEX_OP_WAIT_REQUEUE_PI
            | FUTEX_OP_LOCK_PI2
    )
}

pub const fn is_poll_family(nr: u32) -> bool {
    matches!(
        nr,
        POLL | SELECT | PSELECT6 | PPOLL | EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2
    )
}

pub const fn is_futex_family(nr: u32) -> bool {
    matches!(nr, FUTEX | FUTEX_WAITV | FUTEX_WAKE | FUTEX_WAIT)
}

/// A name for the syscalls this tracer follows, for reports.
pub const fn name(nr: u32) -> &'static str {
    match nr {
        POLL => "poll",
        MMAP => "mmap",
        MUNMAP => "munmap",
        BRK => "brk",
        SELECT => "select",
        MREMAP => "mremap",
        EXIT => "exit",
        FUTEX => "futex",
        EXIT_GROUP => "exit_group",
        EPOLL_WAIT => "epoll_wait",
        PSELECT6 => "pselect6",
        PPOLL => "ppoll",
        EPOLL_PWAIT => "epoll_pwait",
        EPOLL_PWAIT2 => "epoll_pwait2",
        FUTEX_WAITV => "futex_waitv",
        FUTEX_WAKE => "futex_wake",
        FUTEX_WAIT => "futex_wait",
        _ => "other",
    }
}
