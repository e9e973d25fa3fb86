//! Creating sites: the distinct creator stacks seen, interned, so that threads and counts refer
//! to a site by a small id.

use std::collections::HashMap;

use serde::Serialize;

use crate::tracefile::StackFrame;

/// Sites kept; past this, new stacks count under [`OTHER`].
pub const MAX_SITES: usize = 4096;
/// The id of "a site the table had no room for".
pub const OTHER: u32 = u32::MAX;
/// Frames (innermost first) that make a site's identity.
const KEY_FRAMES: usize = 16;

/// Frames of the thread-creation machinery, skipped to find the code that asked for a thread.
fn is_machinery(f: &StackFrame) -> bool {
    let module = f.module.rsplit('/').next().unwrap_or("");
    let libc = module.starts_with("libc.so")
        || module.starts_with("libc-")
        || module.starts_with("libpthread")
        || module.starts_with("ld-linux");
    let sym = f.symbol.as_deref().unwrap_or("");
    // Rust's std::thread wraps pthread_create.
    let rust_std = sym.starts_with("std::") || sym.starts_with("<std::");
    libc || rust_std
        || sym.starts_with("clone")
        || sym.starts_with("__clone")
        || sym.contains("pthread_create")
}

#[derive(Clone, Debug)]
pub struct Site {
    pub frames: Vec<StackFrame>,
    /// The innermost frame outside libc's creation machinery, displayed.
    pub label: String,
}

impl Site {
    fn new(frames: Vec<StackFrame>) -> Self {
        let label = frames
            .iter()
            .find(|f| !is_machinery(f))
            .or(frames.first())
            .map_or_else(|| "(no frames)".to_owned(), StackFrame::display);
        Self { frames, label }
    }
}

#[derive(Default)]
pub struct Sites {
    by_key: HashMap<Vec<(String, u64)>, u32>,
    list: Vec<Site>,
}

impl Sites {
    pub fn intern(&mut self, frames: &[StackFrame]) -> u32 {
        let key: Vec<(String, u64)> = frames
            .iter()
            .take(KEY_FRAMES)
            .map(|f| (f.module.clone(), f.file_offset))
            .collect();
        if let Some(&id) = self.by_key.get(&key) {
            return id;
        }
        if self.list.len() >= MAX_SITES {
            return OTHER;
        }
        let id = self.list.len() as u32;
        self.list.push(Site::new(frames.to_vec()));
        self.by_key.insert(key, id);
        id
    }

    pub fn label(&self, id: u32) -> String {
        self.list.get(id as usize).map_or_else(
            || "(other sites: the site table is full)".to_owned(),
            |s| s.label.clone(),
        )
    }

    pub fn frames(&self, id: u32) -> Vec<String> {
        self.list
            .get(id as usize)
            .map(|s| s.frames.iter().map(StackFrame::display).collect())
            .unwrap_or_default()
    }
}

/// One creating site of a process or job, for the report.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CreatorSite {
    /// The code that asked for the threads (see [`Site::label`]).
    pub site: String,
    /// The whole stack, innermost first.
    pub frames: Vec<String>,
    /// Threads created there whose creation stack was recorded.
    pub threads: u64,
    /// Of those, alive at the end, and parked in futex at the last sample.
    pub alive: u64,
    pub parked: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(module: &str, off: u64, sym: Option<&str>) -> StackFrame {
        StackFrame {
            module: module.into(),
            file_offset: off,
            symbol: sym.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_label_skips_libc_and_sites_are_interned() {
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let stack = vec![
            frame(libc, 0x10, Some("clone3")),
            frame(libc, 0x20, Some("pthread_create@@GLIBC_2.34")),
            frame("/opt/app/worker", 0x30, Some("spawn_pool")),
            frame("/opt/app/worker", 0x40, Some("main")),
        ];
        let mut s = Sites::default();
        let a = s.intern(&stack);
        assert_eq!(s.intern(&stack), a);
        assert_eq!(s.label(a), "spawn_pool (worker+0x30)");
        assert_eq!(s.frames(a).len(), 4);
        let b = s.intern(&stack[..1]);
        assert_ne!(a, b);
        assert_eq!(
            s.label(b),
            "clone3 (libc.so.6+0x10)",
            "all machinery: the first frame"
        );
        let none = s.intern(&[]);
        assert_eq!(s.label(none), "(no frames)");
        assert!(s.label(OTHER).contains("full"));
    }
}
