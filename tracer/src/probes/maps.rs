//! Reading the kernel maps: per-CPU counters and the blocked-threads map.

use std::collections::{BTreeMap, HashMap};

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, PerCpuArray};
use tracer_common::{
    maps::{Stat, WaitSlot},
    syscalls,
};

use crate::tracefile::{BlockedThread, WaitAggregate};

/// Sums of the per-CPU `STATS` counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub values: [u64; Stat::COUNT as usize],
}

impl KernelStats {
    pub fn read(map: &PerCpuArray<MapData, u64>) -> Result<Self, aya::maps::MapError> {
        let mut s = KernelStats::default();
        for stat in Stat::ALL {
            let per_cpu = map.get(&(stat as u32), 0)?;
            s.values[stat as usize] = per_cpu.iter().sum();
        }
        Ok(s)
    }

    pub fn get(&self, stat: Stat) -> u64 {
        self.values[stat as usize]
    }

    pub fn to_map(&self) -> BTreeMap<String, u64> {
        Stat::ALL
            .iter()
            .map(|&s| (s.name().to_owned(), self.get(s)))
            .collect()
    }
}

/// Aggregates blocked threads per process. Threads in a wait call that have not slept in it
/// (`start_ns` 0) are not parked; waits younger than `min_age_ns` are left out: they are the
/// short waits the kernel does not stream either.
/// Also returns each blocked thread.
pub fn wait_snapshot(
    entries: impl Iterator<Item = (u32, WaitSlot)>,
    now_ns: u64,
    min_age_ns: u64,
) -> (Vec<WaitAggregate>, Vec<BlockedThread>) {
    let mut by_pid: HashMap<u32, WaitAggregate> = HashMap::new();
    let mut threads = Vec::new();
    for (tid, w) in entries {
        if w.tgid == 0 || w.start_ns == 0 || now_ns.saturating_sub(w.start_ns) < min_age_ns {
            continue;
        }
        threads.push(BlockedThread {
            tid,
            pid: w.tgid,
            poll: !syscalls::is_futex_family(w.syscall as u32),
            since_ns: w.start_ns,
        });
        let agg = by_pid.entry(w.tgid).or_insert_with(|| WaitAggregate {
            pid: w.tgid,
            ..Default::default()
        });
        let oldest = |cur: u64| {
            if cur == 0 {
                w.start_ns
            } else {
                cur.min(w.start_ns)
            }
        };
        if syscalls::is_futex_family(w.syscall as u32) {
            agg.futex_parked += 1;
            agg.futex_oldest_ns = oldest(agg.futex_oldest_ns);
        } else {
            agg.poll_waiting += 1;
            agg.poll_oldest_ns = oldest(agg.poll_oldest_ns);
        }
    }
    let mut v: Vec<WaitAggregate> = by_pid.into_values().collect();
    v.sort_by_key(|a| a.pid);
    threads.sort_by_key(|t| t.tid);
    (v, threads)
}

/// The kernel's `WAIT_SLOTS` array, mapped into the collector: reading it costs no syscall.
pub struct WaitTable {
    ptr: *mut WaitSlot,
    len: usize,
    // Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
}

impl WaitTable {
    /// Maps the array of `len` slots (a multiple of 256: whole pages).
    pub fn map(map: MapData, len: u32) -> std::io::Result<Self> {
        let len = len as usize;
        let bytes = len * size_of::<WaitSlot>();
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array of exactly `bytes` (page-aligned) shared and
        // read/write; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            _map: map,
        })
    }

    fn slot(&self, tid: u32) -> Option<*mut WaitSlot> {
        // SAFETY: checked to be inside the mapping.
        ((tid as usize) < self.len).then(|| unsafe { self.ptr.add(tid as usize) })
    }

    /// The slot of `tid` if it is in a wait call, copied out. The kernel writes concurrently:
    /// `tgid` is read first and again after the rest, and a slot that changed is skipped.
    /// Slots in the table (tids below this are tracked).
    pub fn slots(&self) -> usize {
        self.len
    }

    pub fn get(&self, tid: u32) -> Option<WaitSlot> {
        let p = self.slot(tid)?;
        // SAFETY: inside the mapping; volatile because the kernel writes it.
        let tgid = unsafe { std::ptr::read_volatile(&(*p).tgid) };
        if tgid == 0 {
            return None;
        }
        let slot = unsafe { std::ptr::read_volatile(p) };
        (slot.tgid == tgid).then_some(slot)
    }

    /// Puts a thread found blocked at start-up into the table, as the kernel would have at its
    /// syscall entry. Returns false if it already holds its slot, or its tid is out of range.
    pub fn insert(&self, tid: u32, slot: WaitSlot) -> bool {
        let Some(p) = self.slot(tid) else {
            return false;
        };
        // SAFETY: inside the mapping.
        unsafe {
            if std::ptr::read_volatile(&(*p).tgid) != 0 {
                return false;
            }
            std::ptr::write_volatile(p, WaitSlot { tgid: 0, ..slot });
            std::ptr::write_volatile(&mut (*p).tgid, slot.tgid);
        }
        true
    }

    /// Frees the slot of `tid` if it holds one.
    pub fn remove(&self, tid: u32) {
        if let Some(p) = self.slot(tid) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::write_volatile(&mut (*p).tgid, 0) };
        }
    }
}

impl Drop for WaitTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len * size_of::<WaitSlot>()) };
    }
}

/// `WAIT_SLOTS`' length for a host whose `kernel.pid_max` is `pid_max`: every tid below it
/// has a slot, rounded up to whole pages, at most the kernel's own limit.
pub fn wait_slots_len(pid_max: u32) -> u32 {
    use tracer_common::maps::WAIT_SLOTS_MAX_LEN;
    pid_max.clamp(256, WAIT_SLOTS_MAX_LEN).div_ceil(256) * 256
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_separates_futex_from_polls_and_skips_young_and_unslept_waits() {
        let w = |tgid, syscall: u32, start_ns| WaitSlot {
            start_ns,
            tgid,
            syscall: syscall as u16,
            ..Default::default()
        };
        let entries = vec![
            w(10, syscalls::FUTEX, 100),
            w(10, syscalls::FUTEX, 50),
            w(10, syscalls::PPOLL, 70),
            w(10, syscalls::FUTEX, 990), // too young
            w(20, syscalls::SELECT, 10),
            w(0, syscalls::FUTEX, 10), // a free slot
            w(40, syscalls::FUTEX, 0), // in the call, has not slept: not parked
        ];
        let tids = (100..).zip(entries);
        let (s, threads) = wait_snapshot(tids, 1000, 100);
        assert_eq!(s.len(), 2);
        assert_eq!(
            threads
                .iter()
                .map(|t| (t.tid, t.pid, t.poll))
                .collect::<Vec<_>>(),
            [
                (100, 10, false),
                (101, 10, false),
                (102, 10, true),
                (104, 20, true)
            ]
        );
        assert_eq!((s[0].futex_parked, s[0].futex_oldest_ns), (2, 50));
        assert_eq!((s[0].poll_waiting, s[0].poll_oldest_ns), (1, 70));
        assert_eq!((s[1].futex_parked, s[1].poll_waiting), (0, 1));
    }

    #[test]
    fn every_tid_below_pid_max_has_a_slot_in_whole_pages() {
        assert_eq!(wait_slots_len(32_768), 32_768);
        assert_eq!(wait_slots_len(4_194_304), 4_194_304);
        assert_eq!(wait_slots_len(100_000), 100_096);
        assert_eq!(wait_slots_len(10), 256);
        assert_eq!(wait_slots_len(u32::MAX), 1 << 22);
        for n in [10, 300, 32_768, 100_000] {
            assert_eq!(wait_slots_len(n) as usize * size_of::<WaitSlot>() % 4096, 0);
            assert!(wait_slots_len(n) >= n);
        }
    }
}
