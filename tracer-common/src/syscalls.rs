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

/// What a syscall is to the tracer. Decided from its number and, for futex ops and integer
/// timeouts, its arguments (`arg(i)` is syscall argument `i`, read lazily: in the kernel a read
/// can cost a probe read). The kernel programs classify at entry, at exit and while the thread
/// sleeps; the collector classifies threads found blocked in /proc. One function, so that a
/// wait slot is opened exactly for the calls whose exit takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A futex wait or a poll-family call that may block: it gets a wait slot.
    Wait,
    /// A futex wake/requeue: counted.
    FutexWake,
    /// poll or epoll_wait/epoll_pwait with a zero (integer) timeout: cannot block, counted.
    NonBlockingPoll,
    Mem,
    Exit,
    Other,
}

#[inline(always)]
pub fn classify(nr: u32, arg: impl Fn(usize) -> u64) -> Call {
    match nr {
        FUTEX if futex_op_waits(arg(1) as u32 & !FUTEX_FLAGS) => Call::Wait,
        FUTEX | FUTEX_WAKE => Call::FutexWake,
        FUTEX_WAIT | FUTEX_WAITV => Call::Wait,
        POLL if arg(2) as i32 == 0 => Call::NonBlockingPoll,
        EPOLL_WAIT | EPOLL_PWAIT if arg(3) as i32 == 0 => Call::NonBlockingPoll,
        POLL | PPOLL | SELECT | PSELECT6 | EPOLL_WAIT | EPOLL_PWAIT | EPOLL_PWAIT2 => Call::Wait,
        MMAP | MUNMAP | MREMAP | BRK => Call::Mem,
        EXIT | EXIT_GROUP => Call::Exit,
        _ => Call::Other,
    }
}

/// What a wait slot records of a `Call::Wait` besides the thread: the futex op (flags masked),
/// or a poll's nfds (saturated).
#[inline(always)]
pub fn wait_op(nr: u32, arg: impl Fn(usize) -> u64) -> u16 {
    match nr {
        FUTEX => (arg(1) as u32 & !FUTEX_FLAGS) as u16,
        FUTEX_WAIT | FUTEX_WAITV => 0,
        _ => {
            let n = arg(1);
            if n > u16::MAX as u64 {
                u16::MAX
            } else {
                n as u16
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_by_number_op_and_integer_timeout() {
        let args = |a: [u64; 6]| move |i: usize| a[i];
        assert_eq!(classify(FUTEX, args([0, 128, 0, 0, 0, 0])), Call::Wait); // WAIT_PRIVATE
        assert_eq!(classify(FUTEX, args([0, 129, 0, 0, 0, 0])), Call::FutexWake);
        assert_eq!(classify(FUTEX_WAITV, args([0; 6])), Call::Wait);
        assert_eq!(
            classify(POLL, args([0, 1, 0, 0, 0, 0])),
            Call::NonBlockingPoll
        );
        assert_eq!(classify(POLL, args([0, 1, u64::MAX, 0, 0, 0])), Call::Wait); // -1: forever
        assert_eq!(
            classify(EPOLL_WAIT, args([0, 0, 8, 0, 0, 0])),
            Call::NonBlockingPoll
        );
        assert_eq!(classify(PPOLL, args([0; 6])), Call::Wait); // pointer timeout: by duration
        assert_eq!(classify(BRK, args([0; 6])), Call::Mem);
        assert_eq!(classify(EXIT_GROUP, args([0; 6])), Call::Exit);
        assert_eq!(classify(0, args([0; 6])), Call::Other);
        assert_eq!(wait_op(FUTEX, args([0, 128 | 9, 0, 0, 0, 0])), 9);
        assert_eq!(wait_op(PPOLL, args([0, 1 << 20, 0, 0, 0, 0])), u16::MAX);
    }
}
