//! Reading the kernel maps: per-CPU counters and the blocked-threads map.

use std::collections::{BTreeMap, HashMap};

use aya::maps::{MapData, PerCpuArray};
use tracer_common::{
    maps::{Stat, WaitState},
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

/// Aggregates blocked threads per process. Waits younger than `min_age_ns` are left out: they
/// are the short waits the kernel does not stream either.
pub fn wait_snapshot(
    entries: impl Iterator<Item = (u32, WaitState)>,
    now_ns: u64,
    min_age_ns: u64,
) -> Vec<WaitAggregate> {
    let mut by_pid: HashMap<u32, WaitAggregate> = HashMap::new();
    for (_tid, w) in entries {
        if now_ns.saturating_sub(w.start_ns) < min_age_ns {
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
        if syscalls::is_futex_family(w.syscall) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_separates_futex_from_polls_and_skips_young_waits() {
        let w = |tgid, syscall, start_ns| WaitState {
            start_ns,
            tgid,
            syscall,
            ..Default::default()
        };
        let entries = vec![
            (1, w(10, syscalls::FUTEX, 100)),
            (2, w(10, syscalls::FUTEX, 50)),
            (3, w(10, syscalls::PPOLL, 70)),
            (4, w(10, syscalls::FUTEX, 990)), // too young
            (5, w(20, syscalls::SELECT, 10)),
        ];
        let s = wait_snapshot(entries.into_iter(), 1000, 100);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].futex_parked, s[0].futex_oldest_ns), (2, 50));
        assert_eq!((s[0].poll_waiting, s[0].poll_oldest_ns), (1, 70));
        assert_eq!((s[1].futex_parked, s[1].poll_waiting), (0, 1));
    }
}
