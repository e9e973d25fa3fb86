//! Unwinding a creator's copied stack with framehop: `.eh_frame` CFI where the binary has it
//! (every Debian binary does, frame pointers or not), frame pointers where it has none.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::{elf::ElfInfo, maps::Mapping};

/// At most this many frames per stack.
pub const MAX_FRAMES: usize = 64;
/// ELF files kept parsed and open (shared by all processes); the cache is emptied when full.
const MAX_FILES: usize = 256;

/// Parsed ELF files by (device, inode).
#[derive(Default)]
pub struct Files {
    by_id: HashMap<(String, u64), Arc<ElfInfo>>,
    /// Bumped when the cache is emptied: the fds (and the symbolizer's cache of their paths)
    /// are stale from then on.
    pub generation: u64,
}

impl Files {
    /// The file of a mapping of process `pid`, read through `/proc/<pid>/root` (its mount
    /// namespace: containers' files too).
    pub fn get(&mut self, pid: u32, m: &Mapping) -> Option<Arc<ElfInfo>> {
        let key = (m.dev.clone(), m.inode);
        if let Some(f) = self.by_id.get(&key) {
            return Some(f.clone());
        }
        if self.by_id.len() >= MAX_FILES {
            self.by_id.clear();
            self.generation += 1;
        }
        // Through the process's root; once it is gone, the same path on the host if that is
        // the same file (device and inode), as it is for processes outside containers.
        let loaded = super::elf::load(&proc_path(pid, &m.path)).or_else(|e| {
            if same_file(Path::new(&m.path), m) {
                super::elf::load(Path::new(&m.path))
            } else {
                Err(e)
            }
        });
        let info = match loaded {
            Ok(i) => Arc::new(i),
            Err(e) => {
                tracing::debug!("no unwind data for {}: {e}", m.path);
                Arc::new(ElfInfo::default())
            }
        };
        self.by_id.insert(key, info.clone());
        Some(info)
    }
}

/// Whether `path` is the file a mapping maps (its `major:minor` device, hex, and inode).
fn same_file(path: &Path, m: &Mapping) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    meta.ino() == m.inode && m.dev == format!("{major:02x}:{minor:02x}")
}

/// A file of a process, as the tracer can open it.
pub fn proc_path(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// The unwinder of one process: its modules, placed where they are mapped.
pub struct ProcUnwinder {
    pub maps: Vec<Mapping>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
}

impl ProcUnwinder {
    pub fn new(pid: u32, maps: Vec<Mapping>, files: &mut Files) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        for m in &maps {
            let Some(info) = files.get(pid, m) else {
                continue;
            };
            let Some(bias) = info.bias(m.start, m.offset) else {
                continue;
            };
            let sec = |s: &Option<super::elf::Section>| s.as_ref().map(|s| s.svma.clone());
            let data = |s: &Option<super::elf::Section>| s.as_ref().map(|s| s.data.clone());
            let section_info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: sec(&info.text),
                text: data(&info.text),
                got_svma: info.got.clone(),
                eh_frame_svma: sec(&info.eh_frame),
                eh_frame: data(&info.eh_frame),
                eh_frame_hdr_svma: sec(&info.eh_frame_hdr),
                eh_frame_hdr: data(&info.eh_frame_hdr),
                ..Default::default()
            };
            unwinder.add_module(Module::new(
                m.path.clone(),
                m.start..m.end,
                bias,
                section_info,
            ));
        }
        Self { maps, unwinder }
    }

    /// The lookup addresses (return addresses minus one, the first ip as is) of the stack
    /// whose top `stack` holds, from `sp` up.
    pub fn unwind(
        &self,
        cache: &mut CacheX86_64,
        ip: u64,
        sp: u64,
        bp: u64,
        stack: &[u8],
    ) -> Vec<u64> {
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let b = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
        };
        let mut it =
            self.unwinder
                .iter_frames(ip, UnwindRegsX86_64::new(ip, sp, bp), cache, &mut read);
        let mut out = Vec::new();
        while let Ok(Some(f)) = it.next() {
            out.push(f.address_for_lookup());
            if out.len() >= MAX_FRAMES {
                break;
            }
        }
        out
    }

    pub fn mapping(&self, addr: u64) -> Option<&Mapping> {
        self.maps.iter().find(|m| m.contains(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_is_matched_to_its_file_by_device_and_inode() {
        let maps = super::super::maps::read(std::process::id()).unwrap();
        let exe = std::env::current_exe().unwrap();
        let m = maps
            .iter()
            .find(|m| Path::new(&m.path) == exe)
            .expect("our executable is mapped");
        assert!(same_file(&exe, m));
        let other = Mapping {
            inode: m.inode + 1,
            ..m.clone()
        };
        assert!(!same_file(&exe, &other));
        assert!(!same_file(Path::new("/nonexistent"), m));
    }
}
