//! Reader of trace files. It yields every record of every complete block and stops at the
//! first incomplete or corrupt one, saying where and why.

use std::io::{self, Read};

use thiserror::Error;

use super::{
    BLOCK_HEADER_LEN, BLOCK_MAGIC, FILE_HEADER_LEN, MAGIC, MAX_BLOCK, Meta, RECORD_HEADER_LEN,
    TAG_EVENT, TAG_META, VERSION,
};

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("reading the trace file: {0}")]
    Io(#[from] io::Error),
    #[error("not a tracer trace file (bad magic); expected a file written by `tracer record`")]
    NotATrace,
    #[error(
        "trace file format version {0} is newer than this tracer understands ({VERSION}); use a newer tracer"
    )]
    Version(u32),
}

/// A record read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Event(Vec<u8>),
    Meta(Meta),
}

pub struct TraceReader<R: Read> {
    input: R,
    offset: u64,
    block: Vec<u8>,
    pos: usize,
    /// Why reading stopped early, if it did: a human sentence with the byte offset.
    truncated: Option<String>,
    /// Records skipped inside otherwise good blocks (unknown tags, bad JSON, and every record
    /// after a length that runs past the block's end).
    skipped: u64,
    /// The current block's record count (from its header), and how many were taken so far.
    block_records: u32,
    block_taken: u32,
    done: bool,
}

impl<R: Read> TraceReader<R> {
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut head = [0u8; FILE_HEADER_LEN];
        match input.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ReadError::NotATrace),
            Err(e) => return Err(e.into()),
        }
        if &head[..8] != MAGIC {
            return Err(ReadError::NotATrace);
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version > VERSION {
            return Err(ReadError::Version(version));
        }
        Ok(Self {
            input,
            offset: FILE_HEADER_LEN as u64,
            block: Vec::new(),
            pos: 0,
            truncated: None,
            skipped: 0,
            block_records: 0,
            block_taken: 0,
            done: false,
        })
    }

    /// Set once reading stopped before the end of a well-formed file.
    pub fn truncated(&self) -> Option<&str> {
        self.truncated.as_deref()
    }

    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn stop(&mut self, why: String) {
        self.truncated = Some(why);
        self.done = true;
    }

    /// Reads as many bytes as there are, up to `buf.len()`; returns how many.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn next_block(&mut self) -> Result<bool, ReadError> {
        let mut head = [0u8; BLOCK_HEADER_LEN];
        let n = self.read_full(&mut head)?;
        if n == 0 {
            self.done = true;
            return Ok(false);
        }
        let at = self.offset;
        if n < BLOCK_HEADER_LEN {
            self.stop(format!(
                "the file ends inside a block header at byte {at} ({n} of {BLOCK_HEADER_LEN} bytes); \
                 it was cut short (killed tracer or full disk?): everything before that was read"
            ));
            return Ok(false);
        }
        if &head[..4] != BLOCK_MAGIC {
            self.stop(format!(
                "no block marker at byte {at}: the file is corrupt from there on; everything before \
                 that was read"
            ));
            return Ok(false);
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        let records = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
        if len > MAX_BLOCK {
            self.stop(format!(
                "block at byte {at} claims {len} bytes (more than {MAX_BLOCK}): corrupt; \
                 everything before it was read"
            ));
            return Ok(false);
        }
        self.block.resize(len, 0);
        let mut block = std::mem::take(&mut self.block);
        let got = self.read_full(&mut block)?;
        self.block = block;
        if got < len {
            self.stop(format!(
                "the last block (byte {at}) is incomplete: {got} of {len} bytes; the file was cut \
                 short (killed tracer or full disk?): everything before that block was read"
            ));
            return Ok(false);
        }
        if crc32fast::hash(&self.block) != crc {
            self.stop(format!(
                "block at byte {at} fails its checksum: corrupt; everything before it was read"
            ));
            return Ok(false);
        }
        self.offset += (BLOCK_HEADER_LEN + len) as u64;
        self.pos = 0;
        self.block_records = records;
        self.block_taken = 0;
        Ok(true)
    }

    /// The next record, `Ok(None)` at the end (or at the first bad block: see [`truncated`]).
    ///
    /// [`truncated`]: Self::truncated
    pub fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.pos >= self.block.len() {
                if self.done || !self.next_block()? {
                    return Ok(None);
                }
                continue;
            }
            let rest = &self.block[self.pos..];
            let body = (rest.len() >= RECORD_HEADER_LEN)
                .then(|| u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize)
                .and_then(|len| rest.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN.checked_add(len)?));
            let Some(body) = body else {
                // A record header or length that runs past the block (written corrupt: the
                // CRC passed): the records after it cannot be found. Count them all.
                let lost = self.block_records.saturating_sub(self.block_taken).max(1);
                self.skipped += u64::from(lost);
                tracing::warn!(
                    "trace file: a record at byte {} of the block before byte {} has a bad \
                     length; {lost} records of that block are skipped",
                    self.pos,
                    self.offset
                );
                self.pos = self.block.len();
                continue;
            };
            let tag = u16::from_le_bytes([rest[0], rest[1]]);
            self.pos += RECORD_HEADER_LEN + body.len();
            self.block_taken += 1;
            match tag {
                TAG_EVENT => return Ok(Some(Record::Event(body.to_vec()))),
                TAG_META => match serde_json::from_slice(body) {
                    Ok(m) => return Ok(Some(Record::Meta(m))),
                    Err(_) => self.skipped += 1,
                },
                _ => self.skipped += 1,
            }
        }
    }
}

impl<R: Read> Iterator for TraceReader<R> {
    type Item = Result<Record, ReadError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracefile::TraceWriter;

    fn sample() -> Vec<u8> {
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        w.meta(&Meta::Cgroup {
            id: 1,
            path: "/a".into(),
            hierarchy: Default::default(),
            job: None,
            limits: Default::default(),
        })
        .unwrap();
        w.event(&[1, 2, 3, 4]).unwrap();
        w.flush().unwrap();
        w.event(&[5; 40]).unwrap();
        w.meta(&Meta::End {
            ts_ns: 9,
            reason: "done".into(),
            exit_code: Some(0),
        })
        .unwrap();
        w.into_inner().unwrap()
    }

    fn read_all(bytes: &[u8]) -> (Vec<Record>, Option<String>) {
        let mut r = TraceReader::new(bytes).unwrap();
        let recs: Vec<Record> = r.by_ref().map(|r| r.unwrap()).collect();
        (recs, r.truncated().map(str::to_owned))
    }

    #[test]
    fn round_trip() {
        let (recs, trunc) = read_all(&sample());
        assert_eq!(trunc, None);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[1], Record::Event(vec![1, 2, 3, 4]));
        assert_eq!(recs[2], Record::Event(vec![5; 40]));
        assert!(matches!(recs[3], Record::Meta(Meta::End { .. })));
    }

    #[test]
    fn every_truncation_reads_back_complete_blocks_with_a_warning() {
        let full = sample();
        let first_block_end = {
            // header + first block
            let len = u32::from_le_bytes(full[20..24].try_into().unwrap()) as usize;
            FILE_HEADER_LEN + BLOCK_HEADER_LEN + len
        };
        for cut in FILE_HEADER_LEN..full.len() {
            let (recs, trunc) = read_all(&full[..cut]);
            if cut == FILE_HEADER_LEN || cut == first_block_end {
                assert_eq!(trunc, None, "cut at a block boundary {cut}");
            } else {
                let why = trunc.unwrap_or_else(|| panic!("cut at {cut} not reported"));
                assert!(why.contains("byte"), "{why}");
            }
            let expect = if cut >= first_block_end { 2 } else { 0 };
            assert_eq!(recs.len(), expect, "cut at {cut}");
        }
    }

    #[test]
    fn a_bad_record_length_behind_a_good_checksum_is_counted() {
        let mut w = TraceWriter::new(Vec::new()).unwrap();
        for i in 0..4u8 {
            w.event(&[i; 8]).unwrap();
        }
        let mut bytes = w.into_inner().unwrap();
        // The second record's length: past the first record (8 + 8 bytes) in the payload.
        let payload = FILE_HEADER_LEN + BLOCK_HEADER_LEN;
        let len_at = payload + RECORD_HEADER_LEN + 8 + 4;
        bytes[len_at..len_at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        let crc = crc32fast::hash(&bytes[payload..]);
        bytes[payload - 8..payload - 4].copy_from_slice(&crc.to_le_bytes());
        let mut r = TraceReader::new(&bytes[..]).unwrap();
        let recs: Vec<Record> = r.by_ref().map(|r| r.unwrap()).collect();
        assert_eq!(recs, vec![Record::Event(vec![0; 8])]);
        assert_eq!(r.skipped(), 3, "the bad record and the two it hides");
    }

    #[test]
    fn corruption_is_detected_by_checksum() {
        let mut bytes = sample();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        let (recs, trunc) = read_all(&bytes);
        assert_eq!(recs.len(), 2);
        assert!(trunc.unwrap().contains("checksum"));
    }

    #[test]
    fn rejects_other_files_and_newer_versions() {
        assert!(matches!(
            TraceReader::new(&b"hello world, not a trace"[..]),
            Err(ReadError::NotATrace)
        ));
        assert!(matches!(
            TraceReader::new(&b""[..]),
            Err(ReadError::NotATrace)
        ));
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            TraceReader::new(&bytes[..]),
            Err(ReadError::Version(99))
        ));
    }
}
