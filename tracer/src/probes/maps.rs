//! Reading the kernel maps: per-CPU counters and the blocked-threads map.

use std::collections::{BTreeMap, HashMap};

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{MapData, PerCpuArray};
use tracer_common::{
    maps::{Stat, WAIT_SLOTS_LEN, WaitSlot},
    syscalls,
};

use crate::tracefile::WaitAggregate;

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
pub fn wait_snapshot(
    entries: impl Iterator<Item = WaitSlot>,
    now_ns: u64,
    min_age_ns: u64,
) -> Vec<WaitAggregate> {
    let mut by_pid: HashMap<u32, WaitAggregate> = HashMap::new();
    for w in entries {
        if w.tid == 0 || w.start_ns == 0 || now_ns.saturating_sub(w.start_ns) < min_age_ns {
            continue;
        }
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
    v
}

/// The kernel's `WAIT_SLOTS` array, mapped into the collector: reading it costs no syscall.
pub struct WaitTable {
    ptr: *mut WaitSlot,
    len: usize,
    // Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
}

impl WaitTable {
    pub fn map(map: MapData) -> std::io::Result<Self> {
        let len = WAIT_SLOTS_LEN as usize;
        let bytes = len * size_of::<WaitSlot>();
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array of exactly `bytes` (page-aligned: 2^17
        // entries of 32 bytes) shared and read/write; the result is checked.
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

    /// The occupied slots, copied out. The kernel writes concurrently: each slot is read with
    /// volatile loads, `tid` first, and a slot whose tid changed while it was read is skipped.
    pub fn occupied(&self) -> Vec<WaitSlot> {
        let mut out = Vec::new();
        for i in 0..self.len {
            // SAFETY: i < len, inside the mapping; volatile because the kernel writes it.
            let p = unsafe { self.ptr.add(i) };
            let tid = unsafe { std::ptr::read_volatile(&(*p).tid) };
            if tid == 0 {
                continue;
            }
            let slot = unsafe { std::ptr::read_volatile(p) };
            if slot.tid == tid {
                out.push(slot);
            }
        }
        out
    }

    /// Puts a thread found blocked at start-up into the table, as the kernel would have at its
    /// syscall entry. Returns false if its slot is taken.
    pub fn insert(&self, slot: WaitSlot) -> bool {
        let i = slot.tid as usize & (self.len - 1);
        // SAFETY: inside the mapping.
        let p = unsafe { self.ptr.add(i) };
        unsafe {
            if std::ptr::read_volatile(&(*p).tid) != 0 {
                return false;
            }
            std::ptr::write_volatile(p, WaitSlot { tid: 0, ..slot });
            std::ptr::write_volatile(&mut (*p).tid, slot.tid);
        }
        true
    }

    /// Frees the slot of `tid` if it still holds it.
    pub fn remove(&self, tid: u32) {
        let i = tid as usize & (self.len - 1);
        // SAFETY: inside the mapping.
        let p = unsafe { self.ptr.add(i) };
        unsafe {
            if std::ptr::read_volatile(&(*p).tid) == tid {
                std::ptr::write_volatile(&mut (*p).tid, 0);
            }
        }
    }
}

impl Drop for WaitTable {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped, once.
        unsafe { libc::munmap(self.ptr.cast(), self.len * size_of::<WaitSlot>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_separates_futex_from_polls_and_skips_young_and_unslept_waits() {
        let w = |tid, tgid, syscall: u32, start_ns| WaitSlot {
            start_ns,
            tid,
            tgid,
            syscall: syscall as u16,
            ..Default::default()
        };
        let entries = vec![
            w(1, 10, syscalls::FUTEX, 100),
            w(2, 10, syscalls::FUTEX, 50),
            w(3, 10, syscalls::PPOLL, 70),
            w(4, 10, syscalls::FUTEX, 990), // too young
            w(5, 20, syscalls::SELECT, 10),
            w(0, 30, syscalls::FUTEX, 10), // a free slot
            w(6, 40, syscalls::FUTEX, 0),  // in the call, has not slept: not parked
        ];
        let s = wait_snapshot(entries.into_iter(), 1000, 100);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].futex_parked, s[0].futex_oldest_ns), (2, 50));
        assert_eq!((s[0].poll_waiting, s[0].poll_oldest_ns), (1, 70));
        assert_eq!((s[1].futex_parked, s[1].poll_waiting), (0, 1));
    }
}
