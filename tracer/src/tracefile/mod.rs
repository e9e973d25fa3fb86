//! The trace file: a versioned stream of CRC-checked blocks of records.
//!
//! ```text
//! file   := header block*
//! header := "TRCRFILE" version:u32le flags:u32le                       (16 bytes)
//! block  := "TBLK" payload_len:u32le crc32(payload):u32le count:u32le payload
//! payload:= record*
//! record := tag:u16le reserved:u16le len:u32le bytes[len]
//! tag 1  := a kernel event, the exact `#[repr(C)]` bytes from tracer-common
//! tag 2  := a collector record, JSON of [`Meta`]
//! ```
//!
//! Blocks are written whole and flushed at least once per sample interval, so a file cut by
//! SIGKILL or a full disk reads back to its last complete block; the reader says so.

mod meta;
mod read;
mod write;

pub use meta::{
    BlockedThread, FULL_WAITS_EVERY, Meta, ProbeStatus, ProcessSeed, StackFrame, StackRecord,
    StartInfo, WaitAggregate, WaitChanges,
};
pub use read::{ReadError, Record, TraceReader};
pub use write::TraceWriter;

pub const MAGIC: &[u8; 8] = b"TRCRFILE";
pub const VERSION: u32 = 1;
pub const BLOCK_MAGIC: &[u8; 4] = b"TBLK";
pub const FILE_HEADER_LEN: usize = 16;
pub const BLOCK_HEADER_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest block the reader accepts: a corrupt length must not make it allocate gigabytes.
pub const MAX_BLOCK: usize = 64 << 20;

pub const TAG_EVENT: u16 = 1;
pub const TAG_META: u16 = 2;
