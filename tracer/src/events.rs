//! Decoding: raw ring-buffer / trace-file bytes → typed [`Event`]s.
//!
//! Bytes are untrusted (a trace file can be corrupt or from another version), so every read is
//! length-checked and copied out with `read_unaligned`; nothing borrows the input.

use thiserror::Error;
use tracer_common::{
    EventHeader, EventKind, ExecEvent, ExitCallEvent, MemBatchEvent, MemEvent, NewTaskEvent,
    OomEvent, RenameEvent, RssEvent, StackEvent, StackHead, TaskExitEvent, WaitEvent,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes is shorter than the {need}-byte header")]
    Short { len: usize, need: usize },
    #[error("unknown event kind {0} (written by a newer tracer?)")]
    UnknownKind(u16),
    #[error("{kind:?} event has {len} bytes, expected {need}")]
    BadSize {
        kind: EventKind,
        len: usize,
        need: usize,
    },
}

/// One kernel event, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    NewTask(NewTaskEvent),
    TaskExit(TaskExitEvent),
    Exec(ExecEvent),
    ExitCall(ExitCallEvent),
    FutexWait(WaitEvent),
    PollWait(WaitEvent),
    Mmap(MemEvent),
    Munmap(MemEvent),
    Mremap(MemEvent),
    Brk(MemEvent),
    Rss(RssEvent),
    Oom(OomEvent),
    MemBatch(MemBatchEvent),
    Rename(RenameEvent),
    /// The fixed part of a creator stack; the stack bytes are in [`stack_bytes`].
    Stack(StackHead),
}

impl Event {
    pub fn header(&self) -> &EventHeader {
        match self {
            Event::NewTask(e) => &e.hdr,
            Event::TaskExit(e) => &e.hdr,
            Event::Exec(e) => &e.hdr,
            Event::ExitCall(e) => &e.hdr,
            Event::FutexWait(e) | Event::PollWait(e) => &e.hdr,
            Event::Mmap(e) | Event::Munmap(e) | Event::Mremap(e) | Event::Brk(e) => &e.hdr,
            Event::Rss(e) => &e.hdr,
            Event::Oom(e) => &e.hdr,
            Event::MemBatch(e) => &e.hdr,
            Event::Rename(e) => &e.hdr,
            Event::Stack(e) => &e.hdr,
        }
    }
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    debug_assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked by the caller; T is a repr(C) integer-only type (any bit pattern
    // is valid) and read_unaligned copies it out whatever the alignment of `bytes`.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The kind of the event in `bytes`, from its header.
pub fn kind_of(bytes: &[u8]) -> Result<EventKind, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            len: bytes.len(),
            need,
        });
    }
    let hdr: EventHeader = read(bytes);
    EventKind::from_u16(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let kind = kind_of(bytes)?;
    let need = kind.size();
    if bytes.len() != need {
        return Err(DecodeError::BadSize {
            kind,
            len: bytes.len(),
            need,
        });
    }
    Ok(match kind {
        EventKind::NewTask => Event::NewTask(read(bytes)),
        EventKind::TaskExit => Event::TaskExit(read(bytes)),
        EventKind::Exec => Event::Exec(read(bytes)),
        EventKind::ExitCall => Event::ExitCall(read(bytes)),
        EventKind::FutexWait => Event::FutexWait(read(bytes)),
        EventKind::PollWait => Event::PollWait(read(bytes)),
        EventKind::Mmap => Event::Mmap(read(bytes)),
        EventKind::Munmap => Event::Munmap(read(bytes)),
        EventKind::Mremap => Event::Mremap(read(bytes)),
        EventKind::Brk => Event::Brk(read(bytes)),
        EventKind::Rss => Event::Rss(read(bytes)),
        EventKind::OomVictim => Event::Oom(read(bytes)),
        EventKind::MemBatch => Event::MemBatch(read(bytes)),
        EventKind::Rename => Event::Rename(read(bytes)),
        EventKind::Stack => Event::Stack(read(bytes)),
    })
}

/// The stack memory a [`StackEvent`] carries: the bytes that were read.
pub fn stack_bytes(bytes: &[u8]) -> &[u8] {
    let head = size_of::<StackHead>();
    if bytes.len() < head {
        return &[];
    }
    let h: StackHead = read(bytes);
    let len = (h.len as usize).min(size_of::<StackEvent>() - head);
    bytes.get(head..head + len).unwrap_or(&[])
}

/// The bytes of an event struct, as the kernel writes them (for tests and generators).
pub fn bytes_of<T: Copy>(ev: &T) -> Vec<u8> {
    // SAFETY: T is a repr(C) type without padding; viewing it as bytes is sound.
    unsafe { std::slice::from_raw_parts((ev as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// A NUL-terminated kernel string (comm, filename) as text, lossy for invalid UTF-8. The result
/// is untrusted: escape it before it reaches a terminal.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(kind: EventKind) -> EventHeader {
        EventHeader {
            ts_ns: 42,
            cgroup_id: 7,
            tgid: 100,
            tid: 101,
            kind: kind as u16,
            cpu: 1,
            memcg: 0,
        }
    }

    #[test]
    fn round_trips_every_kind() {
        let nt = NewTaskEvent {
            hdr: hdr(EventKind::NewTask),
            clone_flags: tracer_common::CLONE_THREAD,
            child_tid: 102,
            child_tgid: 100,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(decode(&bytes_of(&nt)), Ok(Event::NewTask(nt)));
        let w = WaitEvent {
            hdr: hdr(EventKind::PollWait),
            start_ns: 1,
            uaddr: 2,
            ret: -4,
            syscall: 271,
            op: 3,
        };
        assert_eq!(decode(&bytes_of(&w)), Ok(Event::PollWait(w)));
        let m = MemEvent {
            hdr: hdr(EventKind::Mremap),
            addr: 1,
            len: 2,
            old_len: 3,
            old_addr: 4,
            ret: 5,
            prot: 6,
            flags: 7,
            fd: -1,
            _pad: 0,
        };
        assert_eq!(decode(&bytes_of(&m)), Ok(Event::Mremap(m)));
        let r = RenameEvent {
            hdr: hdr(EventKind::Rename),
            comm: *b"renamed\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(decode(&bytes_of(&r)), Ok(Event::Rename(r)));
    }

    #[test]
    fn rejects_short_unknown_and_mis_sized() {
        assert!(matches!(decode(&[0u8; 8]), Err(DecodeError::Short { .. })));
        let mut h = hdr(EventKind::Brk);
        h.kind = 999;
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(999)));
        let h = hdr(EventKind::Brk);
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::BadSize {
                kind: EventKind::Brk,
                ..
            })
        ));
    }

    #[test]
    fn cstr_stops_at_nul_and_survives_garbage() {
        assert_eq!(cstr(b"abc\0def"), "abc");
        assert_eq!(cstr(b"\xffx"), "\u{fffd}x");
        assert_eq!(cstr(b"full"), "full");
    }
}
