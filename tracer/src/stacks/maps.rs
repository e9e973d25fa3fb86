//! A process's executable mappings, from `/proc/<pid>/maps` (read while it lives).

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// `major:minor` of the file's device and its inode: the file's identity.
    pub dev: String,
    pub inode: u64,
    /// The path as the process sees it (in its mount namespace); untrusted.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// The file offset of an address in this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// Parses the text of `/proc/<pid>/maps`: executable mappings of files only (anonymous
/// memory, `[vdso]` and deleted files carry no unwind data we can read).
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut f = line.splitn(6, ' ');
    let range = f.next()?;
    let perms = f.next()?;
    let offset = u64::from_str_radix(f.next()?, 16).ok()?;
    let dev = f.next()?.to_owned();
    let inode: u64 = f.next()?.parse().ok()?;
    let path = f.next().unwrap_or("").trim_start();
    if perms.as_bytes().get(2) != Some(&b'x') || inode == 0 || !path.starts_with('/') {
        return None;
    }
    if path.ends_with(" (deleted)") {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        dev,
        inode,
        path: path.to_owned(),
    })
}

pub fn read(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_file_mappings_only() {
        let text = "\
5581a000-5581c000 r--p 00000000 fe:01 1234 /usr/bin/prog
5581c000-55820000 r-xp 00002000 fe:01 1234 /usr/bin/prog
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000000000-7f1000100000 r-xp 00028000 fe:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f2000000000-7f2000001000 r-xp 00000000 fe:01 98 /tmp/gone (deleted)
7ffd000000-7ffd002000 r-xp 00000000 00:00 0 [vdso]
garbage line
";
        let m = parse(text);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].path, "/usr/bin/prog");
        assert_eq!(
            (m[0].start, m[0].offset, m[0].inode),
            (0x5581c000, 0x2000, 1234)
        );
        assert_eq!(m[1].file_offset(0x7f1000000010), 0x28010);
        assert!(m[1].contains(0x7f10000fffff) && !m[1].contains(0x7f1000100000));
    }

    #[test]
    fn reads_this_process() {
        let m = read(std::process::id()).unwrap();
        let here = reads_this_process as *const () as u64;
        assert!(m.iter().any(|m| m.contains(here)), "{m:?}");
    }
}
