//! Classic tracepoints the kernel programs read, with the record offsets they rely on.
//!
//! The kernel programs read fields at these offsets; the collector checks each against the
//! running kernel's `events/<category>/<name>/format` before attaching, and refuses (by name)
//! a tracepoint whose layout differs rather than read garbage. A tracepoint whose record
//! changed across kernel versions has one entry per layout, newest first: the first whose
//! fields match is used.

/// A field: name, offset in the record, size in bytes.
pub type Field = (&'static str, usize, usize);

pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// The program (function name) in the object.
    pub program: &'static str,
    pub fields: &'static [Field],
}

pub const NEWTASK_PID: usize = 8;
pub const NEWTASK_CLONE_FLAGS: usize = 32;
pub const EXEC_FILENAME: usize = 8;
pub const EXEC_OLD_PID: usize = 16;
pub const RSS_MM_ID: usize = 8;
pub const RSS_CURR: usize = 12;
pub const RSS_MEMBER: usize = 16;
pub const RSS_SIZE: usize = 24;
pub const OOM_PID: usize = 8;
pub const OOM_TOTAL_VM: usize = 16;
pub const OOM_ANON_RSS: usize = 24;
pub const OOM_FILE_RSS: usize = 32;
pub const OOM_SHMEM_RSS: usize = 40;
pub const OOM_UID: usize = 48;
pub const OOM_SCORE_ADJ: usize = 64;

pub const ALL: &[Tracepoint] = &[
    Tracepoint {
        category: "task",
        name: "task_newtask",
        program: "task_newtask",
        fields: &[
            ("pid", NEWTASK_PID, 4),
            ("clone_flags", NEWTASK_CLONE_FLAGS, 8),
        ],
    },
    // `group_dead` is in the record only since 6.16: the program derives it from the task.
    Tracepoint {
        category: "sched",
        name: "sched_process_exit",
        program: "sched_process_exit",
        fields: &[],
    },
    Tracepoint {
        category: "sched",
        name: "sched_process_exec",
        program: "sched_process_exec",
        fields: &[("filename", EXEC_FILENAME, 4), ("old_pid", EXEC_OLD_PID, 4)],
    },
    Tracepoint {
        category: "kmem",
        name: "rss_stat",
        program: "rss_stat",
        fields: &[
            ("mm_id", RSS_MM_ID, 4),
            ("curr", RSS_CURR, 4),
            ("member", RSS_MEMBER, 4),
            ("size", RSS_SIZE, 8),
        ],
    },
    Tracepoint {
        category: "oom",
        name: "mark_victim",
        program: "mark_victim",
        fields: &[
            ("pid", OOM_PID, 4),
            ("total_vm", OOM_TOTAL_VM, 8),
            ("anon_rss", OOM_ANON_RSS, 8),
            ("file_rss", OOM_FILE_RSS, 8),
            ("shmem_rss", OOM_SHMEM_RSS, 8),
            ("uid", OOM_UID, 4),
            ("oom_score_adj", OOM_SCORE_ADJ, 2),
        ],
    },
    // Before 5.19 the record is the victim's pid alone.
    Tracepoint {
        category: "oom",
        name: "mark_victim",
        program: "mark_victim_pid",
        fields: &[("pid", OOM_PID, 4)],
    },
];
