//! Collector records of the trace file: everything that is not a kernel event.

use serde::{Deserialize, Serialize};

use crate::cgroups::{Hierarchy, JobInfo, Limits};

/// A record the collector writes next to kernel events.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Meta {
    Start(Box<StartInfo>),
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
        /// Its memory and pids limits when it was resolved (absent: none, or older files).
        #[serde(default)]
        limits: Limits,
    },
    /// A cgroup's limits, re-read and found changed (raised, lowered or removed) since its
    /// `Cgroup` record or the last of these.
    Limits {
        ts_ns: u64,
        id: u64,
        hierarchy: Hierarchy,
        limits: Limits,
    },
    /// Threads blocked right now, per process, read from the kernel's `WAIT_SLOTS` array.
    Waits {
        ts_ns: u64,
        processes: Vec<WaitAggregate>,
        /// Which threads those are: the changes since the previous record, or the whole set
        /// every so often (absent in older files).
        #[serde(default, skip_serializing_if = "WaitChanges::is_empty")]
        changes: WaitChanges,
    },
    /// The resident memory of a process first seen (or exec'd) after tracing started, read
    /// once from /proc/PID/statm: the kernel streams only moves of a granule. `None`: it was
    /// gone when read.
    Rss {
        ts_ns: u64,
        pid: u32,
        /// Resident and shared (file + shmem) bytes.
        statm: Option<(u64, u64)>,
    },
    /// After lost events: the live threads of a process, re-read from /proc (empty: gone).
    Threads {
        ts_ns: u64,
        pid: u32,
        tids: Vec<u32>,
    },
    /// The creator's stack at a thread or process creation, unwound and symbolized while the
    /// process was alive (the raw stack the kernel copied is not kept).
    Stack(StackRecord),
    /// Cumulative kernel counters (per-CPU sums), by name.
    Stats {
        ts_ns: u64,
        counters: std::collections::BTreeMap<String, u64>,
    },
    /// What the live collector's detectors found, written before the end record (a report
    /// recomputes them from the records, and says whether they agree).
    Findings {
        ts_ns: u64,
        findings: Vec<crate::detect::Finding>,
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
    /// The runaway-threads window the recording's detectors used (0 in older files: the
    /// default); a report uses the same, so it finds what the live collector found.
    #[serde(default)]
    pub runaway_window_ns: u64,
    /// Every threshold and window the recording's detectors used (absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect: Option<Box<crate::detect::DetectConfig>>,
    /// The host's `kernel.pid_max` and `kernel.threads-max` when tracing started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_max: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads_max: Option<u64>,
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
    /// Of `rss_bytes`, file-backed and shared memory (`statm`'s shared; 0 in older files).
    #[serde(default)]
    pub rss_shared_bytes: u64,
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

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackRecord {
    /// When the creation happened (the kernel's time of the stack copy).
    pub ts_ns: u64,
    /// The creating process and thread.
    pub pid: u32,
    pub creator_tid: u32,
    /// The new thread (or process).
    pub tid: u32,
    /// Bytes of user stack the kernel copied (0 in records without it).
    #[serde(default)]
    pub stack_bytes: u32,
    /// Innermost first.
    pub frames: Vec<StackFrame>,
    /// Why the stack could not be unwound or read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One frame: where it is in which file (enough to symbolize offline on another machine with
/// the same build id), and what the symbolizer found while the process lived.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct StackFrame {
    /// The file's path in the process's mount namespace, or `[unknown]` (anonymous memory).
    pub module: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// Offset in the file (the address itself for `[unknown]`).
    pub file_offset: u64,
    /// The function, when the binary exports a symbol for the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

impl StackFrame {
    /// `function (module+0xoffset) file:line`, or `module+0xoffset` without a symbol.
    /// Untrusted text: escape it for a terminal.
    pub fn display(&self) -> String {
        let module = match self.module.rsplit('/').next() {
            Some(base) if !base.is_empty() => base,
            _ => &self.module,
        };
        let place = format!("{module}+{:#x}", self.file_offset);
        let mut s = match &self.symbol {
            Some(sym) => format!("{sym} ({place})"),
            None => place,
        };
        if let (Some(f), Some(l)) = (&self.file, self.line) {
            s += &format!(" {f}:{l}");
        }
        s
    }
}

/// Per-thread changes of the blocked set (futex parks, poll-family waits) between two samples:
/// a thread parked for an hour is written once, not at every sample. With `full`, `blocked`
/// is the whole set (written every [`FULL_WAITS_EVERY`] samples, so a reader that lost a
/// record recovers).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WaitChanges {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<BlockedThread>,
    /// (tid, pid) of threads no longer blocked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub woke: Vec<(u32, u32)>,
}

/// The whole blocked set is written every this many samples.
pub const FULL_WAITS_EVERY: u64 = 60;

impl WaitChanges {
    pub fn is_empty(&self) -> bool {
        !self.full && self.blocked.is_empty() && self.woke.is_empty()
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockedThread {
    pub tid: u32,
    pub pid: u32,
    /// In a poll-family call (else a futex wait).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub poll: bool,
    /// When it started waiting (CLOCK_MONOTONIC ns).
    pub since_ns: u64,
}
