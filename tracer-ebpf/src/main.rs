//! The tracer's kernel programs. Each program turns one kernel hook into compact events on the
//! `EVENTS` ring buffer, or into per-CPU counts when the call is hot and uninteresting.
//!
//! Hooks: `tp_btf/sys_enter` + `tp_btf/sys_exit` (with raw tracepoint twins as a fallback)
//! for futex, poll-family, mmap-family, brk and exit calls; `sched_switch` (BTF or raw) for the
//! moment a waiting thread sleeps; classic tracepoints for task creation, exit and exec,
//! `rss_stat` and `oom/mark_victim`.
#![no_std]
#![no_main]

mod batch;
mod emit;
mod mem;
mod park;
mod stack;
mod syscall;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
