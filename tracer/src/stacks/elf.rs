//! What unwinding and offline symbolization need from an ELF file: its unwind sections, its
//! loadable segments (to place a mapping), and its build id. Loaded once per file (device and
//! inode) and shared by every process that maps it.

use std::{ops::Range, path::Path, sync::Arc};

use object::{Object, ObjectSection, ObjectSegment};

/// Files larger than this are not read (a 1 GiB binary is not worth stalling the worker).
const MAX_FILE: u64 = 1 << 30;

#[derive(Clone, Debug, Default)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Arc<[u8]>,
}

#[derive(Debug, Default)]
pub struct ElfInfo {
    /// The file, kept open: symbolizing reads it through `/proc/self/fd`, which stays valid
    /// after the process that mapped it (and its `/proc/<pid>/root`) is gone.
    pub file: Option<std::fs::File>,
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub got: Option<Range<u64>>,
    /// PT_LOAD segments: (file offset, vaddr, file size).
    pub segments: Vec<(u64, u64, u64)>,
    /// The GNU build id, hex.
    pub build_id: Option<String>,
}

impl ElfInfo {
    /// A path to the open file (for the symbolizer), if it could be read.
    pub fn fd_path(&self) -> Option<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        self.file
            .as_ref()
            .map(|f| format!("/proc/self/fd/{}", f.as_raw_fd()).into())
    }

    /// The load bias of a mapping at `map_start` of file offset `map_offset`: what to add to
    /// a vaddr of the file to get the address in the process.
    pub fn bias(&self, map_start: u64, map_offset: u64) -> Option<u64> {
        let &(p_offset, p_vaddr, _) = self
            .segments
            .iter()
            .find(|&&(off, _, size)| (off..off + size.max(1)).contains(&map_offset))?;
        Some(
            map_start
                .wrapping_sub(map_offset)
                .wrapping_add(p_offset)
                .wrapping_sub(p_vaddr),
        )
    }
}

pub fn load(path: &Path) -> Result<ElfInfo, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > MAX_FILE {
        return Err(format!("{} bytes: too big to read", meta.len()));
    }
    let opened = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // Mapped, not read: only the headers and the sections copied below are paged in.
    let map = Mapped::new(&opened, meta.len()).map_err(|e| e.to_string())?;
    let file = object::File::parse(map.bytes()).map_err(|e| e.to_string())?;
    let section = |name: &str| -> Option<Section> {
        let s = file.section_by_name(name)?;
        let data = s.uncompressed_data().ok()?;
        Some(Section {
            svma: s.address()..s.address() + s.size(),
            data: Arc::from(&*data),
        })
    };
    let segments = file
        .segments()
        .map(|s| {
            let (off, size) = s.file_range();
            (off, s.address(), size)
        })
        .collect();
    Ok(ElfInfo {
        file: Some(opened),
        // The unwinder reads code only to tell prologues and epilogues, and a creation's
        // first frame is at the clone syscall's return: not copied (it can be megabytes).
        text: file.section_by_name(".text").map(|s| Section {
            svma: s.address()..s.address() + s.size(),
            data: Arc::from(&[][..]),
        }),
        eh_frame: section(".eh_frame"),
        eh_frame_hdr: section(".eh_frame_hdr"),
        got: file
            .section_by_name(".got")
            .map(|s| s.address()..s.address() + s.size()),
        segments,
        build_id: file
            .build_id()
            .ok()
            .flatten()
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
    })
}

/// A read-only private mapping of a whole file.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(f: &std::fs::File, len: u64) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        if len == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: a fresh read-only private mapping of an open file; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes, readable, and lives as long as `self`. A file
        // truncated under us would fault: the ones mapped are executables and libraries
        // processes are running.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_binary() {
        let exe = std::env::current_exe().unwrap();
        let info = load(&exe).unwrap();
        assert!(info.eh_frame.as_ref().is_some_and(|s| !s.data.is_empty()));
        assert!(info.text.is_some());
        assert!(!info.segments.is_empty());
        assert!(
            info.build_id.as_ref().is_some_and(|b| b.len() >= 16),
            "{:?}",
            info.build_id
        );
        assert!(load(Path::new("/proc/self/status")).is_err());
    }
}
