//! cgroup id → path. Events carry the cgroup v2 id (the inode of the cgroup's directory); the
//! path is found by walking the cgroup2 hierarchy, wherever it is mounted (`/sys/fs/cgroup` on
//! v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones like systemd's default on Debian 12).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Walking stops after this many cgroups, so a pathological host cannot stall the collector.
const MAX_CGROUPS: usize = 100_000;
/// An unknown id triggers a new walk at most this often.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

pub struct Cgroups {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl Cgroups {
    pub fn new() -> Self {
        let root = cgroup2_mount();
        if root.is_none() {
            tracing::warn!("no cgroup2 hierarchy mounted: cgroups will show as ids");
        }
        Self {
            root,
            by_id: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of a cgroup id, relative to the cgroup2 root ("/" for the root).
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let stale = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY);
        if stale {
            self.rescan();
        }
        self.by_id.get(&id).cloned()
    }

    /// The id of a cgroup path as found in /proc/<pid>/cgroup.
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let root = self.root.as_ref()?;
        std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()
            .map(|m| m.ino())
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        // Forget cgroups that were removed: the map tracks only what exists now.
        self.by_id.clear();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if self.by_id.len() >= MAX_CGROUPS {
                tracing::warn!("more than {MAX_CGROUPS} cgroups: stopped walking");
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.by_id
                .insert(meta.ino(), format!("/{}", rel.to_string_lossy()));
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_our_own_cgroup() {
        let mut cg = Cgroups::new();
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup2 line in /proc/self/cgroup");
        let id = cg.id_of(path).expect("id of own cgroup");
        assert_eq!(cg.resolve(id).as_deref(), Some(path));
    }
}
