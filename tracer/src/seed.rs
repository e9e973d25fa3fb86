//! Seeding the model with processes that existed before tracing started, from /proc.

use std::{fs, path::Path};

use tracer_common::{
    maps::WaitSlot,
    syscalls::{self, Call},
};

use crate::{cgroups::Mounts, tracefile::ProcessSeed};

/// Every process on the host, or only `pids` when given. Processes that vanish while being
/// read are skipped.
pub fn scan(pids: Option<&[u32]>, mounts: &Mounts) -> Vec<ProcessSeed> {
    let all: Vec<u32> = match pids {
        Some(p) => p.to_vec(),
        None => fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
    };
    all.into_iter()
        .filter_map(|pid| read(pid, mounts))
        .collect()
}

pub fn read(pid: u32, mounts: &Mounts) -> Option<ProcessSeed> {
    let dir = Path::new("/proc").join(pid.to_string());
    let stat = fs::read_to_string(dir.join("stat")).ok()?;
    let (comm, rest) = parse_stat(&stat)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the comm start at field 3 (state): field n is fields[n - 3].
    let ppid = fields.get(1)?.parse().ok()?;
    let start_brk: Option<u64> = fields
        .get(44)
        .and_then(|v| v.parse().ok())
        .filter(|&v| v != 0);
    // Kernel threads have no user memory: leave them out.
    let flags: u64 = fields.get(6)?.parse().ok()?;
    const PF_KTHREAD: u64 = 0x0020_0000;
    if flags & PF_KTHREAD != 0 {
        return None;
    }
    let tids = tids(pid);
    if tids.is_empty() {
        return None;
    }
    let (rss_bytes, rss_shared_bytes) = statm(pid).unwrap_or_default();
    let heap_end = fs::read_to_string(dir.join("maps")).ok().and_then(|maps| {
        maps.lines()
            .find(|l| l.ends_with("[heap]"))
            .and_then(|l| u64::from_str_radix(l.split(['-', ' ']).nth(1)?, 16).ok())
    });
    let (cgroup_id, memcg_id) = mounts.keys_of_pid(pid);
    let thread_names = tids
        .iter()
        .map(|t| {
            fs::read_to_string(dir.join(format!("task/{t}/comm")))
                .map(|c| c.trim_end_matches('\n').to_owned())
                .unwrap_or_default()
        })
        .collect();
    Some(ProcessSeed {
        pid,
        ppid,
        comm: comm.to_owned(),
        cgroup_id,
        memcg_id,
        tids,
        thread_names,
        rss_bytes,
        rss_shared_bytes,
        brk: heap_end.or(start_brk),
        start_brk,
        seen_ns: crate::collector::monotonic_ns(),
    })
}

/// Resident and shared (file + shmem) bytes of `pid` now, from `/proc/<pid>/statm` (None
/// when it is gone or the file is not as expected).
pub fn statm(pid: u32) -> Option<(u64, u64)> {
    const PAGE: u64 = 4096;
    let text = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut fields = text
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse::<u64>().ok());
    let resident = fields.next()??;
    let shared = fields.next()??;
    Some((resident * PAGE, shared.min(resident) * PAGE))
}

/// The threads of `pid` now, from `/proc/<pid>/task` (empty when it is gone).
pub fn tids(pid: u32) -> Vec<u32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What a thread is blocked in right now, from `/proc/<pid>/task/<tid>/syscall`
/// (`<nr> <arg0> <arg1> ...` while in a syscall), if it is a call that can park: the slot the
/// kernel programs would have opened when it went to sleep. `start_ns` is `now_ns`: the
/// real start is before tracing began and is not known.
pub fn blocked(pid: u32, tid: u32, now_ns: u64) -> Option<WaitSlot> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_blocked(&text, pid, now_ns)
}

fn parse_blocked(text: &str, pid: u32, now_ns: u64) -> Option<WaitSlot> {
    let mut f = text.split_whitespace();
    let nr: u32 = f.next()?.parse().ok()?;
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    // The kernel programs' own classification: a slot seeded here is one their exit takes.
    let arg = |i: usize| args[i];
    if syscalls::classify(nr, arg) != Call::Wait {
        return None;
    }
    Some(WaitSlot {
        start_ns: now_ns,
        tgid: pid,
        syscall: nr as u16,
        _pad: 0,
    })
}

/// Splits `/proc/<pid>/stat` into the comm and the fields after it. The comm is between the
/// first `(` and the last `)`: it may itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(&str, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    Some((stat.get(open + 1..close)?, stat.get(close + 1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hostile_comms() {
        let (comm, rest) = parse_stat("42 (a) b) (c) S 1 42").unwrap();
        assert_eq!(comm, "a) b) (c");
        assert_eq!(rest.split_whitespace().nth(1), Some("1"));
    }

    #[test]
    fn parses_blocked_syscalls() {
        let futex = "202 0x7f00aa10 0x80 0x0 0x0 0x0 0x0 0x7ffc 0x7f01";
        let s = parse_blocked(futex, 10, 99).unwrap();
        assert_eq!((s.syscall, s.tgid), (202, 10));
        assert_eq!(s.start_ns, 99);
        // FUTEX_WAKE_PRIVATE is not a wait.
        assert!(parse_blocked("202 0x7f00aa10 0x81 0x1 0x0 0x0 0x0 0x0 0x0", 1, 0).is_none());
        let ppoll = parse_blocked("271 0x0 0x3 0x7ffc 0x0 0x8 0x0 0x0 0x0", 1, 0).unwrap();
        assert_eq!(ppoll.syscall, 271);
        assert!(parse_blocked("running", 1, 0).is_none());
        // poll with a zero timeout cannot block: the kernel's exit would never take its slot.
        assert!(parse_blocked("7 0x7ffc 0x1 0x0 0x0 0x0 0x0 0x0 0x0", 1, 0).is_none());
        assert!(parse_blocked("7 0x7ffc 0x1 0x3e8 0x0 0x0 0x0 0x0 0x0", 1, 0).is_some());
        assert!(parse_blocked("-1 0x7ffc 0x7f01", 1, 0).is_none());
        assert!(parse_blocked("0 0x3 0x7ffc 0x1000 0x0 0x0 0x0 0x0 0x0", 1, 0).is_none());
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let s = read(me, &Mounts::find()).expect("own /proc entry");
        assert_eq!(s.pid, me);
        assert!(s.tids.contains(&me));
        assert!(s.rss_bytes > 0);
        assert!(s.brk.is_some());
        assert_eq!(s.thread_names.len(), s.tids.len());
        assert!(s.thread_names.iter().all(|n| !n.is_empty()));
        // This host's memory controller is on v1: every process has a memory cgroup.
        assert_eq!(
            s.memcg_id != 0,
            crate::cgroups::memory_v1_mount().is_some(),
            "{s:?}"
        );
    }
}
