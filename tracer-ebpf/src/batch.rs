//! Batching of small mappings: allocator churn (mmap/munmap of small blocks) is too hot to
//! stream call by call (~400 ns per event on this kind of machine), so each CPU adds up the
//! calls of one process and emits one `MemBatchEvent` per batch.

use aya_ebpf::{
    helpers::generated::bpf_get_smp_processor_id, macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use tracer_common::{
    EventHeader, EventKind, MemBatchEvent,
    maps::{MEM_ACC_MAX_CALLS, MemAcc},
};

use crate::emit::{MEM_ACC, cgroup_id, emit, now_ns};

/// Adds one small mapping (`mapped`: mmap, else munmap) of `bytes` (page-rounded) to this CPU's
/// batch, flushing the batch first if it belongs to another process or is full. No clock read
/// per call (a helper call costs ~50 ns here): the clock is read when a batch starts and when
/// it is flushed, and the collector's flush at every sample bounds a batch's age.
#[inline(always)]
pub fn add(tgid: u32, tid: u32, mapped: bool, bytes: u64) {
    let Some(acc) = MEM_ACC.get_ptr_mut(0) else {
        return;
    };
    let acc = unsafe { &mut *acc };
    unsafe { core::ptr::write_volatile(&mut acc.busy, 1) };
    if acc.tgid != 0 && (acc.tgid != tgid || acc.mmap_calls + acc.munmap_calls >= MEM_ACC_MAX_CALLS)
    {
        flush(acc);
    }
    if acc.tgid == 0 {
        *acc = MemAcc {
            first_ns: now_ns(),
            cgroup_id: cgroup_id(),
            tgid,
            busy: 1,
            ..MemAcc::default()
        };
    }
    acc.tid = tid;
    if mapped {
        acc.mmap_calls += 1;
        acc.mmap_bytes += bytes;
    } else {
        acc.munmap_calls += 1;
        acc.munmap_bytes += bytes;
    }
    unsafe { core::ptr::write_volatile(&mut acc.busy, 0) };
}

/// Emits and empties this CPU's batch if it belongs to `tgid` (the process is exiting: its
/// totals must reach the collector before its exit does).
#[inline(always)]
pub fn flush_tgid(tgid: u32) {
    if let Some(acc) = MEM_ACC.get_ptr_mut(0) {
        let acc = unsafe { &mut *acc };
        if acc.tgid == tgid {
            flush(acc);
        }
    }
}

#[inline(always)]
fn flush(acc: &mut MemAcc) {
    emit(&MemBatchEvent {
        hdr: EventHeader {
            ts_ns: now_ns(),
            cgroup_id: acc.cgroup_id,
            tgid: acc.tgid,
            tid: acc.tid,
            kind: EventKind::MemBatch as u16,
            cpu: unsafe { bpf_get_smp_processor_id() } as u16,
            memcg: 0,
        },
        first_ns: acc.first_ns,
        mmap_bytes: acc.mmap_bytes,
        munmap_bytes: acc.munmap_bytes,
        mmap_calls: acc.mmap_calls,
        munmap_calls: acc.munmap_calls,
    });
    acc.tgid = 0;
}

/// Never attached: the collector runs it on every CPU (BPF_PROG_TEST_RUN with
/// BPF_F_TEST_RUN_ON_CPU) at each sample and at the end, so that no batch waits longer than
/// a sample interval, and none is left behind. (The event's time is then the flush time.) On
/// another CPU it runs in an IPI, which can interrupt `add` on that CPU halfway: a busy batch
/// is left for the next flush.
#[raw_tracepoint(tracepoint = "flush_mem")]
pub fn flush_mem(_ctx: RawTracePointContext) -> i32 {
    if let Some(acc) = MEM_ACC.get_ptr_mut(0) {
        let acc = unsafe { &mut *acc };
        if acc.tgid != 0 && unsafe { core::ptr::read_volatile(&acc.busy) } == 0 {
            flush(acc);
        }
    }
    0
}
