//! What the tracer needs from the kernel's permission checks, checked before anything else so
//! that a missing privilege gets one clear sentence instead of a less clear failure later.
//!
//! Root works. So does a non-root user (a DaemonSet's least privilege) with these effective
//! capabilities, proven by the `capabilities` integration test:
//! - `CAP_BPF` and `CAP_PERFMON`: create the maps, load and attach tracing programs, read
//!   kernel memory from them, open the classic tracepoints' perf events;
//! - `CAP_DAC_READ_SEARCH`: read tracefs (`/sys/kernel/tracing` is root-only), for the classic
//!   tracepoints' ids and layouts;
//! - `CAP_SYS_PTRACE`: read other users' `/proc/<pid>/syscall` and `maps` (threads blocked
//!   before tracing started, the heap of seeded processes).
//!
//! `CAP_SYS_ADMIN` stands in for `CAP_BPF` + `CAP_PERFMON` (kernels before 5.8 have neither).

/// Capability bit numbers (`<linux/capability.h>`).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities the tracer cannot work without, as a sentence, if any is missing.
pub fn missing_required(effective: u64) -> Option<String> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(c, _)| !has(c))
        .map(|(_, n)| n)
        .collect();
    Some(missing.join(" and "))
}

/// What works less well without the other capabilities, one line each.
pub fn missing_optional(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut v = Vec::new();
    if !has(CAP_DAC_READ_SEARCH) {
        v.push(
            "no CAP_DAC_READ_SEARCH: tracefs may be unreadable, and with it the classic \
             tracepoints (exec, OOM kills)",
        );
    }
    if !has(CAP_SYS_PTRACE) {
        v.push(
            "no CAP_SYS_PTRACE: other users' threads blocked before tracing started are not \
             seen as parked until they wake, and their heap start is unknown",
        );
    }
    v
}

/// This process's effective capabilities (`CapEff` in /proc/self/status); 0 if unreadable.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_and_perfmon_or_sys_admin() {
        let bit = |c: u32| 1u64 << c;
        assert_eq!(missing_required(bit(CAP_BPF) | bit(CAP_PERFMON)), None);
        assert_eq!(missing_required(bit(CAP_SYS_ADMIN)), None);
        assert_eq!(missing_required(!0), None);
        assert_eq!(
            missing_required(0).as_deref(),
            Some("CAP_BPF and CAP_PERFMON")
        );
        assert_eq!(
            missing_required(bit(CAP_BPF)).as_deref(),
            Some("CAP_PERFMON")
        );
        assert!(missing_optional(!0).is_empty());
        assert_eq!(missing_optional(bit(CAP_DAC_READ_SEARCH)).len(), 1);
    }
}
