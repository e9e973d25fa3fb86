//! Symbolizing unwound addresses with blazesym, by file and file offset: function names from
//! ELF symbols, file:line from DWARF where the binary has it, module+offset otherwise.

use std::collections::HashMap;

use blazesym::symbolize::{Input, Symbolized, Symbolizer, source};

use super::{
    maps::Mapping,
    unwind::{Files, proc_path},
};
use crate::tracefile::StackFrame;

pub struct Symbols {
    symbolizer: Symbolizer,
    /// The `Files` generation whose fds the symbolizer's cache refers to.
    generation: u64,
}

impl Default for Symbols {
    fn default() -> Self {
        Self {
            symbolizer: Symbolizer::new(),
            generation: 0,
        }
    }
}

impl Symbols {
    /// Drops the symbolizer's caches (a new one parses files again as needed).
    pub fn reset(&mut self) {
        self.symbolizer = Symbolizer::new();
    }

    /// The frames of `addrs` in process `pid`, whose executable mappings are `maps`.
    pub fn frames(
        &mut self,
        pid: u32,
        maps: &[Mapping],
        files: &mut Files,
        addrs: &[u64],
    ) -> Vec<StackFrame> {
        let mut frames: Vec<StackFrame> = addrs
            .iter()
            .map(|&a| match maps.iter().find(|m| m.contains(a)) {
                Some(m) => StackFrame {
                    module: m.path.clone(),
                    build_id: files.get(pid, m).and_then(|f| f.build_id.clone()),
                    file_offset: m.file_offset(a),
                    ..Default::default()
                },
                None => StackFrame {
                    module: "[unknown]".into(),
                    file_offset: a,
                    ..Default::default()
                },
            })
            .collect();
        // One symbolizer call per file, read through the fd the file cache holds open (the
        // process may be gone by now).
        let mut by_file: HashMap<std::path::PathBuf, Vec<usize>> = HashMap::new();
        let mut keep = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let Some(m) = maps.iter().find(|m| m.contains(*a)) else {
                continue;
            };
            let file = files.get(pid, m);
            let path = file
                .as_ref()
                .and_then(|f| f.fd_path())
                .unwrap_or_else(|| proc_path(pid, &m.path));
            // Held until the symbolizer is done: its fd stays open even if the cache drops it.
            keep.extend(file);
            by_file.entry(path).or_default().push(i);
        }
        if files.generation != self.generation {
            self.symbolizer = Symbolizer::new();
            self.generation = files.generation;
        }
        for (path, idx) in by_file {
            let offsets: Vec<u64> = idx.iter().map(|&i| frames[i].file_offset).collect();
            let src = source::Source::Elf(source::Elf::new(path));
            let Ok(syms) = self.symbolizer.symbolize(&src, Input::FileOffset(&offsets)) else {
                continue;
            };
            for (&i, s) in idx.iter().zip(syms) {
                if let Symbolized::Sym(sym) = s {
                    let f = &mut frames[i];
                    if let Some(c) = &sym.code_info {
                        f.file = Some(c.file.to_string_lossy().into_owned());
                        f.line = c.line;
                    }
                    f.symbol = Some(sym.name.into_owned());
                }
            }
        }
        // The unwinder's last steps past the outermost frame land outside any module.
        while frames.last().is_some_and(|f| f.module == "[unknown]") {
            frames.pop();
        }
        frames
    }
}
