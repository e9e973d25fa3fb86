//! Collector records of the trace file: everything that is not a kernel event.

use serde::{Deserialize, Serialize};

use crate::cgroups::{Hierarchy, JobInfo};

/// A record the collector writes next to kernel events.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Meta {
    Start(StartInfo),
    /// A process that existed when tracing started.
    Process(ProcessSeed),
    /// The path of a cgroup id and the job it is, written when the resolver found it (after
    /// the first events of that id: resolution runs off the event drain).
    Cgroup {
        id: u64,
        path: String,
        /// v2 (absent in older files) or the v1 memory controller (`id` its low 32 bits).
        #[serde(default)]
        hierarchy: Hierarchy,
        /// What the path and the node's files said (absent in older files: classified from
        /// the path on reading).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<Box<JobInfo>>,
    },
    /// Threads blocked right now, per process, read from the kernel's `WAIT_SLOTS` array.
    Waits {
        ts_ns: u64,
        processes: Vec<WaitAggregate>,
    },
    /// After lost events: the live threads of a process, re-read from /proc (empty: gone).
    Threads {
        ts_ns: u64,
        pid: u32,
        tids: Vec<u32>,
    },
    /// Cumulative kernel counters (per-CPU sums), by name.
    Stats {
        ts_ns: u64,
        counters: std::collections::BTreeMap<String, u64>,
    },
    /// The last record of a complete file.
    End {
        ts_ns: u64,
        reason: String,
        exit_code: Option<i32>,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StartInfo {
    pub tracer_version: String,
    pub hostname: String,
    pub kernel: String,
    /// CLOCK_MONOTONIC ns when tracing started (event timestamps use the same clock).
    pub start_ns: u64,
    /// Unix time in ns at the same instant, to turn event timestamps into wall time.
    pub start_unix_ns: u64,
    pub command: Vec<String>,
    pub pids: Vec<u32>,
    pub min_wait_ns: u64,
    pub rss_granule: u64,
    pub sample_interval_ms: u64,
    pub probes: Vec<ProbeStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeStatus {
    pub name: String,
    pub attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attached, but doing less than on the newest kernels: what is missing (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessSeed {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// The v1 memory cgroup's id (low 32 bits), 0 if none (see `EventHeader::memcg`).
    #[serde(default)]
    pub memcg_id: u64,
    pub tids: Vec<u32>,
    /// The name of each thread in `tids` (same order; empty in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thread_names: Vec<String>,
    pub rss_bytes: u64,
    /// The current program break, when known (end of `[heap]`, or `start_brk`).
    pub brk: Option<u64>,
    /// The heap's start (`start_brk` in /proc/<pid>/stat), when known.
    #[serde(default)]
    pub start_brk: Option<u64>,
    /// CLOCK_MONOTONIC ns when /proc was read (0 in older files: the start of tracing). The
    /// programs run before the scan: an event for this pid stamped earlier than this is of
    /// this same process (its creation, raced with the scan), not of a reused pid.
    #[serde(default)]
    pub seen_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WaitAggregate {
    pub pid: u32,
    pub futex_parked: u32,
    /// Start (monotonic ns) of the oldest futex park still going; 0 if none.
    pub futex_oldest_ns: u64,
    pub poll_waiting: u32,
    pub poll_oldest_ns: u64,
}
