//! Streaming writer of trace files.

use std::io::{self, Write};

use super::{BLOCK_MAGIC, MAGIC, Meta, TAG_EVENT, TAG_META, VERSION};

/// Flush a block once it holds this much, whatever the timer says.
const BLOCK_TARGET: usize = 1 << 20;

pub struct TraceWriter<W: Write> {
    out: W,
    block: Vec<u8>,
    count: u32,
    bytes_written: u64,
    events: u64,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        Ok(Self {
            out,
            block: Vec::with_capacity(BLOCK_TARGET + 4096),
            count: 0,
            bytes_written: super::FILE_HEADER_LEN as u64,
            events: 0,
        })
    }

    fn push(&mut self, tag: u16, bytes: &[u8]) -> io::Result<()> {
        self.block.extend_from_slice(&tag.to_le_bytes());
        self.block.extend_from_slice(&0u16.to_le_bytes());
        self.block
            .extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        self.block.extend_from_slice(bytes);
        self.count += 1;
        if self.block.len() >= BLOCK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Appends a kernel event exactly as the kernel wrote it.
    pub fn event(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.events += 1;
        self.push(TAG_EVENT, bytes)
    }

    pub fn meta(&mut self, meta: &Meta) -> io::Result<()> {
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        self.push(TAG_META, &json)
    }

    /// Writes the pending block and flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.count > 0 {
            let mut head = [0u8; super::BLOCK_HEADER_LEN];
            head[..4].copy_from_slice(BLOCK_MAGIC);
            head[4..8].copy_from_slice(&(self.block.len() as u32).to_le_bytes());
            head[8..12].copy_from_slice(&crc32fast::hash(&self.block).to_le_bytes());
            head[12..16].copy_from_slice(&self.count.to_le_bytes());
            self.out.write_all(&head)?;
            self.out.write_all(&self.block)?;
            self.bytes_written += (head.len() + self.block.len()) as u64;
            self.block.clear();
            self.count = 0;
        }
        self.out.flush()
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn events_written(&self) -> u64 {
        self.events
    }

    pub fn into_inner(mut self) -> io::Result<W> {
        self.flush()?;
        Ok(self.out)
    }
}
