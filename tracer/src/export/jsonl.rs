//! `export --format jsonl`: every record of a trace file as one JSON object per line, for jq,
//! pandas or DuckDB. The schema (also in README, "Exporting"):
//!
//! - Kernel events: `{"type":"event","event":NAME,"ts_ns","pid","tid","cpu","cgroup_id",...}`
//!   with NAME one of `new_task`, `task_exit`, `exec`, `exit_call`, `futex_wait`,
//!   `poll_wait`, `mmap`, `munmap`, `mremap`, `brk`, `rss`, `oom_kill`, `mem_batch`,
//!   `rename`, `stack`, and the event's own fields (below). `ts_ns` is CLOCK_MONOTONIC.
//! - Collector records: the record itself, `type` naming it (`start`, `process`, `cgroup`,
//!   `limits`, `waits`, `threads`, `stats`, `stack`, `findings`, `end`, ...), exactly as
//!   `tracefile::Meta` serializes.
//!
//! Strings from traced processes are JSON-escaped (control characters included); invalid
//! UTF-8 is replaced.

use std::io::{Read, Write};

use serde_json::{Value, json};

use super::ExportError;
use crate::{
    events::{Event, cstr, decode},
    tracefile::{Record, TraceReader},
};

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Written {
    pub events: u64,
    pub records: u64,
    pub undecodable: u64,
    pub truncated: Option<String>,
}

/// One kernel event as a JSON object.
pub fn event_json(e: &Event) -> Value {
    let h = e.header();
    let (name, fields) = match e {
        Event::NewTask(t) => (
            "new_task",
            json!({
                "child_tid": t.child_tid,
                "child_pid": t.child_tgid,
                "thread": t.clone_flags & tracer_common::CLONE_THREAD != 0,
                "clone_flags": t.clone_flags,
                "comm": cstr(&t.comm),
            }),
        ),
        Event::TaskExit(t) => (
            "task_exit",
            json!({"group_dead": t.group_dead, "exit_code": t.exit_code, "comm": cstr(&t.comm)}),
        ),
        Event::Exec(x) => (
            "exec",
            json!({"old_tid": x.old_tid, "comm": cstr(&x.comm), "filename": cstr(&x.filename)}),
        ),
        Event::ExitCall(x) => ("exit_call", json!({"code": x.code, "group": x.group != 0})),
        Event::FutexWait(w) | Event::PollWait(w) => (
            if matches!(e, Event::FutexWait(_)) {
                "futex_wait"
            } else {
                "poll_wait"
            },
            json!({
                "start_ns": w.start_ns,
                "duration_ns": h.ts_ns.saturating_sub(w.start_ns),
                "uaddr": w.uaddr,
                "ret": w.ret,
                "syscall": w.syscall,
                "op": w.op,
            }),
        ),
        Event::Mmap(m) | Event::Munmap(m) | Event::Mremap(m) | Event::Brk(m) => (
            match e {
                Event::Mmap(_) => "mmap",
                Event::Munmap(_) => "munmap",
                Event::Mremap(_) => "mremap",
                _ => "brk",
            },
            json!({
                "addr": m.addr,
                "len": m.len,
                "old_len": m.old_len,
                "old_addr": m.old_addr,
                "ret": m.ret,
                "prot": m.prot,
            }),
        ),
        Event::Rss(r) => (
            "rss",
            json!({"size_bytes": r.size, "member": r.member, "mm_id": r.mm_id, "current": r.curr != 0}),
        ),
        Event::Oom(o) => (
            "oom_kill",
            json!({
                "victim_pid": o.victim_pid,
                "total_vm_kb": o.total_vm_kb,
                "anon_rss_kb": o.anon_rss_kb,
                "file_rss_kb": o.file_rss_kb,
                "shmem_rss_kb": o.shmem_rss_kb,
                "uid": o.uid,
                "oom_score_adj": o.oom_score_adj,
            }),
        ),
        Event::MemBatch(b) => (
            "mem_batch",
            json!({
                "first_ns": b.first_ns,
                "mmap_bytes": b.mmap_bytes,
                "munmap_bytes": b.munmap_bytes,
                "mmap_calls": b.mmap_calls,
                "munmap_calls": b.munmap_calls,
            }),
        ),
        Event::Rename(r) => ("rename", json!({"comm": cstr(&r.comm)})),
        Event::Stack(s) => (
            "stack",
            json!({"child_tid": s.child_tid, "stack_bytes": s.len}),
        ),
    };
    let mut o = json!({
        "type": "event",
        "event": name,
        "ts_ns": h.ts_ns,
        "pid": h.tgid,
        "tid": h.tid,
        "cpu": h.cpu,
        "cgroup_id": h.cgroup_id,
    });
    if let (Some(o), Value::Object(f)) = (o.as_object_mut(), fields) {
        o.extend(f);
    }
    o
}

/// Writes every record of `input` to `out`, one line each.
pub fn write<R: Read, W: Write>(input: R, mut out: W) -> Result<Written, ExportError> {
    let mut reader = TraceReader::new(input)?;
    let mut n = Written::default();
    while let Some(rec) = reader.next_record()? {
        let line = match rec {
            Record::Event(bytes) => match decode(&bytes) {
                Ok(e) => {
                    n.events += 1;
                    event_json(&e)
                }
                Err(_) => {
                    n.undecodable += 1;
                    continue;
                }
            },
            Record::Meta(m) => {
                n.records += 1;
                serde_json::to_value(&m).map_err(ExportError::Json)?
            }
        };
        let mut bytes = serde_json::to_vec(&line).map_err(ExportError::Json)?;
        bytes.push(b'\n');
        out.write_all(&bytes).map_err(ExportError::Write)?;
    }
    out.flush().map_err(ExportError::Write)?;
    n.truncated = reader.truncated().map(str::to_owned);
    Ok(n)
}
