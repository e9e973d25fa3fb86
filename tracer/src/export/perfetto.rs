//! `export --format perfetto`: a trace file as a Perfetto trace (opens in ui.perfetto.dev),
//! written as a stream of `TracePacket`s, each framed as field 1 of `Trace` (the framing
//! systing writes), in one pass with the same engine `report` runs.
//!
//! What it holds:
//! - a track per process and per thread (names from seeds, creations, execs and renames);
//! - on each thread's track, a `thread` slice for its lifetime (creation, or the start of
//!   tracing, to exit, or the end), with the futex and poll waits inside it as slices; waits
//!   still blocked at the end run to the end;
//! - a flow from the creating thread (an instant, `create thread N`) to the created thread;
//! - counter tracks per process: RSS, mapped bytes and live threads, at each sample;
//! - instants for OOM kills (the victim's process track) and findings (a `findings` track,
//!   each named with its kind and pid).
//!
//! Memory: the tables hold live threads and processes only (forgotten at exit).
//!
//! Timestamps are the recording's CLOCK_MONOTONIC, as trace time.

use std::{
    collections::HashMap,
    io::{Read, Write},
};

use perfetto_protos::{
    counter_descriptor::{CounterDescriptor, counter_descriptor::Unit},
    debug_annotation::DebugAnnotation,
    process_descriptor::ProcessDescriptor,
    thread_descriptor::ThreadDescriptor,
    trace_packet::TracePacket,
    track_descriptor::TrackDescriptor,
    track_event::{TrackEvent, track_event::Type},
};
use protobuf::Message as _;

use super::ExportError;
use crate::{
    engine::Engine,
    events::{Event, cstr, decode},
    tracefile::{Meta, Record, TraceReader},
};

/// The one packet sequence of the file.
const SEQUENCE: u32 = 1;
/// `TracePacket.sequence_flags`: SEQ_INCREMENTAL_STATE_CLEARED.
const STATE_CLEARED: u32 = 1;

/// Track uuids, by what they are (kept apart by their top bits).
fn process_uuid(pid: u32) -> u64 {
    1 << 60 | u64::from(pid)
}
fn thread_uuid(tid: u32) -> u64 {
    2 << 60 | u64::from(tid)
}
/// Counter `which`: 0 RSS, 1 mapped bytes, 2 live threads.
fn counter_uuid(pid: u32, which: u64) -> u64 {
    3 << 60 | which << 32 | u64::from(pid)
}
const FINDINGS_UUID: u64 = 4 << 60;
/// The flow from a creator to the thread it created.
fn flow_id(tid: u32, born: u64) -> u64 {
    born ^ u64::from(tid) << 40 | 1
}

const COUNTERS: [(&str, Unit); 3] = [
    ("RSS", Unit::UNIT_SIZE_BYTES),
    ("mapped bytes", Unit::UNIT_SIZE_BYTES),
    ("live threads", Unit::UNIT_COUNT),
];

/// What a Perfetto export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub packets: u64,
    pub thread_tracks: u64,
    pub process_tracks: u64,
    pub wait_slices: u64,
    pub counter_values: u64,
    pub flows: u64,
    pub instants: u64,
    pub truncated: Option<String>,
}

struct Out<W: Write> {
    w: W,
    first: bool,
    n: Written,
}

impl<W: Write> Out<W> {
    fn packet(&mut self, mut p: TracePacket) -> Result<(), ExportError> {
        p.set_trusted_packet_sequence_id(SEQUENCE);
        if self.first {
            p.set_sequence_flags(STATE_CLEARED);
            self.first = false;
        }
        let body = p
            .write_to_bytes()
            .map_err(|e| ExportError::Write(std::io::Error::other(e)))?;
        // Field 1 (packet), wire type 2 (length-delimited), then the length as a varint.
        let mut head = vec![0x0a];
        let mut len = body.len() as u64;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                head.push(b);
                break;
            }
            head.push(b | 0x80);
        }
        self.w.write_all(&head).map_err(ExportError::Write)?;
        self.w.write_all(&body).map_err(ExportError::Write)?;
        self.n.packets += 1;
        Ok(())
    }

    fn descriptor(&mut self, d: TrackDescriptor) -> Result<(), ExportError> {
        let mut p = TracePacket::new();
        p.set_track_descriptor(d);
        self.packet(p)
    }

    fn event(&mut self, ts: u64, e: TrackEvent) -> Result<(), ExportError> {
        let mut p = TracePacket::new();
        p.set_timestamp(ts);
        p.set_track_event(e);
        self.packet(p)
    }
}

fn slice(kind: Type, track: u64, name: Option<&str>) -> TrackEvent {
    let mut e = TrackEvent::new();
    e.set_type(kind);
    e.set_track_uuid(track);
    if let Some(n) = name {
        e.set_name(n.to_owned());
    }
    e
}

fn note(name: &str, value: String) -> DebugAnnotation {
    let mut a = DebugAnnotation::new();
    a.set_name(name.to_owned());
    a.set_string_value(value);
    a
}

#[derive(Default)]
struct Threads {
    /// Live threads with a track: (pid, when their lifetime slice began).
    live: HashMap<u32, (u32, u64)>,
    names: HashMap<u32, String>,
    processes: HashMap<u32, String>,
    /// The last counter values sent per process.
    counters: HashMap<u32, [u64; 3]>,
}

struct Exporter<W: Write> {
    out: Out<W>,
    t: Threads,
}

impl<W: Write> Exporter<W> {
    fn process(&mut self, pid: u32, name: &str) -> Result<(), ExportError> {
        if self.t.processes.get(&pid).is_some_and(|n| n == name) {
            return Ok(());
        }
        let new = self.t.processes.insert(pid, name.to_owned()).is_none();
        let mut pd = ProcessDescriptor::new();
        pd.set_pid(pid as i32);
        pd.set_process_name(name.to_owned());
        let mut d = TrackDescriptor::new();
        d.set_uuid(process_uuid(pid));
        d.process = Some(pd).into();
        self.out.descriptor(d)?;
        if new {
            self.out.n.process_tracks += 1;
            for (i, (cname, unit)) in COUNTERS.iter().enumerate() {
                let mut c = CounterDescriptor::new();
                c.set_unit(*unit);
                let mut d = TrackDescriptor::new();
                d.set_uuid(counter_uuid(pid, i as u64));
                d.set_parent_uuid(process_uuid(pid));
                d.set_name((*cname).to_owned());
                d.counter = Some(c).into();
                self.out.descriptor(d)?;
            }
        }
        Ok(())
    }

    fn thread_track(&mut self, pid: u32, tid: u32, name: &str) -> Result<(), ExportError> {
        let new = !self.t.names.contains_key(&tid);
        if !new && self.t.names.get(&tid).is_some_and(|n| n == name) {
            return Ok(());
        }
        self.t.names.insert(tid, name.to_owned());
        let mut td = ThreadDescriptor::new();
        td.set_pid(pid as i32);
        td.set_tid(tid as i32);
        td.set_thread_name(name.to_owned());
        let mut d = TrackDescriptor::new();
        d.set_uuid(thread_uuid(tid));
        d.set_parent_uuid(process_uuid(pid));
        d.thread = Some(td).into();
        if new {
            self.out.n.thread_tracks += 1;
        }
        self.out.descriptor(d)
    }

    /// A thread starts being shown: its track and its lifetime slice.
    fn born(
        &mut self,
        pid: u32,
        tid: u32,
        name: &str,
        ts: u64,
        flow: Option<u64>,
    ) -> Result<(), ExportError> {
        if self.t.live.contains_key(&tid) {
            return Ok(());
        }
        if !self.t.processes.contains_key(&pid) {
            self.process(pid, name)?;
        }
        self.thread_track(pid, tid, name)?;
        let mut e = slice(Type::TYPE_SLICE_BEGIN, thread_uuid(tid), Some("thread"));
        if let Some(f) = flow {
            e.terminating_flow_ids.push(f);
        }
        self.out.event(ts, e)?;
        self.t.live.insert(tid, (pid, ts));
        Ok(())
    }

    fn born_at(&self, tid: u32) -> u64 {
        self.t.live.get(&tid).map_or(0, |l| l.1)
    }

    fn died(&mut self, tid: u32, ts: u64) -> Result<(), ExportError> {
        if self.t.live.remove(&tid).is_some() {
            self.out
                .event(ts, slice(Type::TYPE_SLICE_END, thread_uuid(tid), None))?;
        }
        // Forgotten with the thread: the tables hold live threads only.
        self.t.names.remove(&tid);
        Ok(())
    }

    fn event(&mut self, e: &Event) -> Result<(), ExportError> {
        let h = e.header();
        let (pid, tid, ts) = (h.tgid, h.tid, h.ts_ns);
        match e {
            Event::NewTask(t) => {
                let comm = cstr(&t.comm);
                let thread = t.clone_flags & tracer_common::CLONE_THREAD != 0;
                let flow = flow_id(t.child_tid, ts);
                self.born(pid, tid, &comm, ts, None)?;
                let mut c = slice(
                    Type::TYPE_INSTANT,
                    thread_uuid(tid),
                    Some(&if thread {
                        format!("create thread {}", t.child_tid)
                    } else {
                        format!("create process {}", t.child_tgid)
                    }),
                );
                c.flow_ids.push(flow);
                self.out.event(ts, c)?;
                self.out.n.flows += 1;
                let child_pid = if thread { pid } else { t.child_tgid };
                if !thread {
                    self.process(child_pid, &comm)?;
                }
                self.born(child_pid, t.child_tid, &comm, ts, Some(flow))?;
            }
            Event::TaskExit(x) => {
                self.died(tid, ts)?;
                if x.group_dead == tracer_common::GROUP_DEAD_YES {
                    self.t.counters.remove(&pid);
                    self.t.processes.remove(&pid);
                }
            }
            Event::Exec(x) => {
                let comm = cstr(&x.comm);
                self.process(pid, &comm)?;
                if x.old_tid != tid {
                    // The thread that exec'd takes the leader's tid.
                    self.died(x.old_tid, ts)?;
                }
                self.born(pid, tid, &comm, ts, None)?;
                self.thread_track(pid, tid, &comm)?;
            }
            Event::Rename(r) => {
                let comm = cstr(&r.comm);
                self.born(pid, tid, &comm, ts, None)?;
                self.thread_track(pid, tid, &comm)?;
                if pid == tid {
                    self.process(pid, &comm)?;
                }
            }
            Event::FutexWait(w) | Event::PollWait(w) => {
                let what = if matches!(e, Event::FutexWait(_)) {
                    "futex wait"
                } else {
                    "poll wait"
                };
                self.born(pid, tid, "?", w.start_ns, None)?;
                let mut b = slice(Type::TYPE_SLICE_BEGIN, thread_uuid(tid), Some(what));
                b.debug_annotations
                    .push(note("syscall", w.syscall.to_string()));
                // Inside the thread's slice: a wait begun before tracing saw the thread
                // begins when its lifetime does.
                self.out.event(w.start_ns.max(self.born_at(tid)), b)?;
                self.out
                    .event(ts, slice(Type::TYPE_SLICE_END, thread_uuid(tid), None))?;
                self.out.n.wait_slices += 1;
            }
            Event::Oom(o) => {
                let victim = o.victim_pid;
                if !self.t.processes.contains_key(&victim) {
                    self.process(victim, "?")?;
                }
                let mut i = slice(Type::TYPE_INSTANT, process_uuid(victim), Some("OOM kill"));
                i.debug_annotations.push(note(
                    "rss",
                    format!("anon {} KiB, file {} KiB", o.anon_rss_kb, o.file_rss_kb),
                ));
                self.out.event(ts, i)?;
                self.out.n.instants += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// After each sample: the counters of every live process that changed.
    fn counters(&mut self, engine: &Engine, ts: u64) -> Result<(), ExportError> {
        let mut vals = Vec::new();
        for s in engine.model.live_raw() {
            let mapped = (s.mmap_bytes + s.mremap_grow_bytes)
                .saturating_sub(s.munmap_bytes + s.mremap_shrink_bytes);
            vals.push((
                s.pid,
                s.comm.clone(),
                [s.rss_bytes, mapped, u64::from(s.threads_live)],
            ));
        }
        vals.sort_by_key(|v| v.0);
        for (pid, comm, v) in vals {
            if self.t.counters.get(&pid) == Some(&v) {
                continue;
            }
            if !self.t.processes.contains_key(&pid) {
                self.process(pid, &comm)?;
            }
            for (i, &x) in v.iter().enumerate() {
                let mut e = slice(Type::TYPE_COUNTER, counter_uuid(pid, i as u64), None);
                e.set_counter_value(x as i64);
                self.out.event(ts, e)?;
                self.out.n.counter_values += 1;
            }
            self.t.counters.insert(pid, v);
        }
        Ok(())
    }
}

/// Writes `input` as a Perfetto trace to `out`.
pub fn write<R: Read, W: Write>(input: R, out: W) -> Result<Written, ExportError> {
    let mut reader = TraceReader::new(input)?;
    let mut engine = Engine::new();
    let mut x = Exporter {
        out: Out {
            w: out,
            first: true,
            n: Written::default(),
        },
        t: Threads::default(),
    };
    let mut last_ts = 0;
    while let Some(rec) = reader.next_record()? {
        match rec {
            Record::Event(bytes) => {
                let Ok(e) = decode(&bytes) else {
                    _ = engine.event(&bytes);
                    continue;
                };
                last_ts = last_ts.max(e.header().ts_ns);
                x.event(&e)?;
                _ = engine.event(&bytes);
            }
            Record::Meta(m) => {
                engine.meta(&m);
                match &m {
                    Meta::Start(s) => last_ts = last_ts.max(s.start_ns),
                    Meta::Process(p) => {
                        x.process(p.pid, &p.comm)?;
                        for (i, &tid) in p.tids.iter().enumerate() {
                            let name = p.thread_names.get(i).unwrap_or(&p.comm).clone();
                            x.born(p.pid, tid, &name, p.seen_ns.max(1), None)?;
                        }
                    }
                    Meta::Waits { ts_ns, .. } => {
                        last_ts = last_ts.max(*ts_ns);
                        x.counters(&engine, *ts_ns)?;
                    }
                    Meta::End { ts_ns, .. } => last_ts = last_ts.max(*ts_ns),
                    _ => {}
                }
            }
        }
    }
    let end = last_ts.max(engine.last_ts);
    // Waits still blocked at the end run to it, inside their thread's lifetime.
    for (_, tid, futex, since) in engine.model.blocked_threads() {
        if !x.t.live.contains_key(&tid) {
            continue;
        }
        let name = if futex { "futex wait" } else { "poll wait" };
        let mut b = slice(Type::TYPE_SLICE_BEGIN, thread_uuid(tid), Some(name));
        b.debug_annotations
            .push(note("state", "still blocked at the end".into()));
        x.out.event(since.max(x.born_at(tid)), b)?;
        x.out
            .event(end, slice(Type::TYPE_SLICE_END, thread_uuid(tid), None))?;
        x.out.n.wait_slices += 1;
    }
    let live: Vec<u32> = x.t.live.keys().copied().collect();
    for tid in live {
        x.died(tid, end)?;
    }
    // Findings on a track of their own (their processes may be long gone), named with the pid.
    if !engine.detectors.findings.is_empty() {
        let mut d = TrackDescriptor::new();
        d.set_uuid(FINDINGS_UUID);
        d.set_name("findings".into());
        x.out.descriptor(d)?;
    }
    for f in &engine.detectors.findings {
        let name = match f.pid {
            Some(pid) => format!("finding: {} pid {pid}", f.kind),
            None => format!("finding: {}", f.kind),
        };
        let mut i = slice(Type::TYPE_INSTANT, FINDINGS_UUID, Some(&name));
        i.debug_annotations.push(note("job", f.job.clone()));
        i.debug_annotations.push(note("summary", f.summary.clone()));
        i.debug_annotations.push(note("state", f.state.clone()));
        x.out.event(f.detected_ns, i)?;
        x.out.n.instants += 1;
    }
    x.out.w.flush().map_err(ExportError::Write)?;
    let mut n = x.out.n;
    n.truncated = reader.truncated().map(str::to_owned);
    Ok(n)
}
