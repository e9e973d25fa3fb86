//! cgroup ids → paths → jobs, off the event drain.
//!
//! Events carry the cgroup v2 id (the inode of the cgroup's directory) and, where the memory
//! controller is on v1 (hybrid hosts like this one, v1 hosts), the memory cgroup's id: on such
//! hosts the v2 id says nothing about containers. An id is turned into a path by
//! `open_by_handle_at` on the hierarchy's mount (O(1), needs CAP_DAC_READ_SEARCH), or else by
//! walking the hierarchy (at most once a second). The path is classified into a job (`job`)
//! and named from the node's own files (`node`). All of it runs in a [`Resolver`] thread: the
//! collector sends ids and picks up answers between drains.

pub mod job;
pub mod node;

use std::{
    collections::HashMap,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

pub use job::JobInfo;
use serde::{Deserialize, Serialize};

/// Walking stops after this many cgroups, so a pathological host cannot stall the resolver.
const MAX_CGROUPS: usize = 100_000;
/// A walk for an id not found runs at most this often.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Which hierarchy an id is of.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Hierarchy {
    /// cgroup v2 (`EventHeader::cgroup_id`).
    #[default]
    V2,
    /// The v1 memory controller's (`EventHeader::memcg`, the low 32 bits of the id).
    Memory,
}

/// A cgroup of one hierarchy, by id (memory ids: the low 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupKey {
    pub hierarchy: Hierarchy,
    pub id: u64,
}

/// Where cgroup2 is mounted, from /proc/self/mountinfo (`/sys/fs/cgroup` on v2 hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Option<PathBuf> {
    mount_where(|fstype, _| fstype == "cgroup2")
}

/// Where the v1 memory controller is mounted, if it is on v1.
pub fn memory_v1_mount() -> Option<PathBuf> {
    v1_mount("memory")
}

/// Where a v1 controller is mounted, if it is on v1.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    mount_where(|fstype, opts| fstype == "cgroup" && opts.split(',').any(|o| o == controller))
}

fn mount_where(want: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mut post = post.split_whitespace();
        let fstype = post.next()?;
        let opts = post.nth(1).unwrap_or("");
        want(fstype, opts)
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The mounts of both hierarchies, and id lookups in them.
pub struct Mounts {
    pub v2: Option<PathBuf>,
    pub memory: Option<PathBuf>,
    /// The v1 pids controller, when it is on v1. Events do not carry its id: the pids limit
    /// of a cgroup (v1 memory, or v2 where memory moved there) is read at the same path here
    /// (container runtimes and systemd name a container's cgroup alike in every hierarchy).
    pub pids: Option<PathBuf>,
}

impl Mounts {
    pub fn find() -> Self {
        let m = Self {
            v2: cgroup2_mount(),
            memory: memory_v1_mount(),
            pids: v1_mount("pids"),
        };
        if m.v2.is_none() && m.memory.is_none() {
            tracing::warn!("no cgroup hierarchy mounted: jobs will show as cgroup ids");
        }
        m
    }

    fn root(&self, h: Hierarchy) -> Option<&Path> {
        match h {
            Hierarchy::V2 => self.v2.as_deref(),
            Hierarchy::Memory => self.memory.as_deref(),
        }
    }

    /// The key of a path as found in /proc/<pid>/cgroup.
    pub fn key_of(&self, h: Hierarchy, path: &str) -> Option<CgroupKey> {
        let root = self.root(h)?;
        let ino = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .ok()?
            .ino();
        Some(CgroupKey {
            hierarchy: h,
            id: match h {
                Hierarchy::V2 => ino,
                Hierarchy::Memory => ino & 0xffff_ffff,
            },
        })
    }

    /// The (v2, memory) keys of a process, from /proc/<pid>/cgroup.
    pub fn keys_of_pid(&self, pid: u32) -> (u64, u64) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return (0, 0);
        };
        let mut v2 = 0;
        let mut memory = 0;
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            if ctrl.is_empty() {
                v2 = self.key_of(Hierarchy::V2, path).map_or(0, |k| k.id);
            } else if ctrl.split(',').any(|c| c == "memory") {
                memory = self.key_of(Hierarchy::Memory, path).map_or(0, |k| k.id);
            }
        }
        (v2, memory)
    }
}

/// `open_by_handle_at` with a kernfs file handle: the path of a cgroup by id, in O(1).
fn path_by_handle(root: &Path, id: u64) -> Option<String> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    // FILEID_KERNFS in <linux/exportfs.h>.
    const FILEID_KERNFS: i32 = 0xfe;
    let dir = std::fs::File::open(root).ok()?;
    let mut h = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid directory fd and a handle of the size it declares; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            &mut h as *mut Handle,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    let rel = link.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()))
}

/// Paths by walking a hierarchy: the fallback without CAP_DAC_READ_SEARCH.
#[derive(Default)]
struct Walk {
    by_id: HashMap<u64, String>,
    last: Option<Instant>,
}

impl Walk {
    fn find(&mut self, root: &Path, key: CgroupKey) -> Option<String> {
        if let Some(p) = self.by_id.get(&key.id) {
            return Some(p.clone());
        }
        if self.last.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return None;
        }
        self.last = Some(Instant::now());
        // Forget cgroups that were removed: the map holds only what exists now.
        self.by_id.clear();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.by_id.len() >= MAX_CGROUPS {
                tracing::warn!("more than {MAX_CGROUPS} cgroups: stopped walking");
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
            let id = match key.hierarchy {
                Hierarchy::V2 => meta.ino(),
                Hierarchy::Memory => meta.ino() & 0xffff_ffff,
            };
            self.by_id.insert(id, format!("/{}", rel.to_string_lossy()));
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        self.by_id.get(&key.id).cloned()
    }
}

/// What the resolver found for a key; `path` None: not found (removed already, or not yet
/// visible to a walk): it may be asked again.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub key: CgroupKey,
    pub path: Option<String>,
    pub job: Option<JobInfo>,
    pub limits: Limits,
}

/// The limits a cgroup sets, when it sets one (read with its path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// v1 `memory.limit_in_bytes` or v2 `memory.max`, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `pids.max` (v2, or v1's at the memory cgroup's path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

impl Limits {
    /// Reads the limit files of the cgroup at `dir` ("max", absent, or v1's "no limit" value:
    /// none).
    pub fn read(dir: &Path) -> Self {
        // v1 says "unlimited" with the largest page-aligned value.
        const V1_UNLIMITED: u64 = 0x7fff_ffff_ffff_f000;
        let num = |f: &str| -> Option<u64> {
            let v = std::fs::read_to_string(dir.join(f)).ok()?;
            v.trim().parse::<u64>().ok().filter(|&v| v < V1_UNLIMITED)
        };
        Self {
            memory_max: num("memory.max").or_else(|| num("memory.limit_in_bytes")),
            pids_max: num("pids.max"),
        }
    }
}

/// Resolves one key, synchronously (the resolver thread's work; tests call it directly).
pub struct Lookup {
    mounts: Mounts,
    walks: HashMap<Hierarchy, Walk>,
    node: node::NodeFiles,
}

impl Lookup {
    pub fn new(mounts: Mounts, node: node::NodeFiles) -> Self {
        Self {
            mounts,
            walks: HashMap::new(),
            node,
        }
    }

    pub fn resolve(&mut self, key: CgroupKey) -> Resolved {
        let path = self.mounts.root(key.hierarchy).and_then(|root| {
            let root = root.to_path_buf();
            path_by_handle(&root, key.id).or_else(|| {
                self.walks
                    .entry(key.hierarchy)
                    .or_default()
                    .find(&root, key)
            })
        });
        let job = path.as_deref().map(|p| {
            let mut j = job::classify(p);
            self.node.enrich(&mut j);
            j
        });
        let limits = path
            .as_deref()
            .map(|p| self.limits(key.hierarchy, p))
            .unwrap_or_default();
        Resolved {
            key,
            path,
            job,
            limits,
        }
    }
}

impl Lookup {
    /// The limits of the cgroup at `path` of hierarchy `h`.
    pub fn limits(&self, h: Hierarchy, path: &str) -> Limits {
        let rel = path.trim_start_matches('/');
        let Some(root) = self.mounts.root(h) else {
            return Limits::default();
        };
        let mut l = Limits::read(&root.join(rel));
        // pids on v1 (with memory on v1 or on v2): at the same path there.
        if l.pids_max.is_none()
            && let Some(pids) = &self.mounts.pids
        {
            l.pids_max = Limits::read(&pids.join(rel)).pids_max;
        }
        l
    }
}

/// What the resolver thread is asked.
enum Request {
    /// Find a key's path, job and limits.
    Resolve(CgroupKey),
    /// Re-read the limits of a known cgroup (they may be raised or lowered while it runs).
    Limits(CgroupKey, String),
}

/// What it answers.
pub enum Answer {
    Resolved(Box<Resolved>),
    Limits(CgroupKey, Limits),
}

/// The resolver thread, and the channels to it.
pub struct Resolver {
    requests: mpsc::Sender<Request>,
    answers: mpsc::Receiver<Answer>,
    /// Keys asked and not answered yet (each is asked once at a time).
    pending: std::collections::HashSet<CgroupKey>,
}

impl Resolver {
    pub fn start(mut lookup: Lookup) -> std::io::Result<Self> {
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let (ans_tx, ans_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("cgroup-resolver".into())
            .spawn(move || {
                for req in req_rx {
                    let a = match req {
                        Request::Resolve(key) => Answer::Resolved(Box::new(lookup.resolve(key))),
                        Request::Limits(key, path) => {
                            Answer::Limits(key, lookup.limits(key.hierarchy, &path))
                        }
                    };
                    if ans_tx.send(a).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            requests: req_tx,
            answers: ans_rx,
            pending: Default::default(),
        })
    }

    /// Asks for a key unless it is being resolved already.
    pub fn ask(&mut self, key: CgroupKey) {
        if self.pending.insert(key) && self.requests.send(Request::Resolve(key)).is_err() {
            self.pending.remove(&key);
        }
    }

    /// Asks for the limits of a known cgroup to be read again.
    pub fn refresh(&mut self, key: CgroupKey, path: String) {
        let _ = self.requests.send(Request::Limits(key, path));
    }

    /// The answers that arrived, without waiting.
    pub fn answers(&mut self) -> Vec<Answer> {
        let v: Vec<Answer> = self.answers.try_iter().collect();
        for a in &v {
            if let Answer::Resolved(r) = a {
                self.pending.remove(&r.key);
            }
        }
        v
    }

    /// Waits up to `max` for every pending answer (the end of a session: short-lived
    /// processes get their job in the file too).
    pub fn settle(&mut self, max: Duration) -> Vec<Answer> {
        let deadline = Instant::now() + max;
        let mut v = self.answers();
        while !self.pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(a) => {
                    if let Answer::Resolved(r) = &a {
                        self.pending.remove(&r.key);
                    }
                    v.push(a);
                }
                Err(_) => break,
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_our_own_cgroups_by_handle_and_by_walk() {
        let mounts = Mounts::find();
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2_path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup2 line in /proc/self/cgroup");
        let key = mounts
            .key_of(Hierarchy::V2, v2_path)
            .expect("own v2 cgroup");
        let (v2, _) = mounts.keys_of_pid(std::process::id());
        assert_eq!(v2, key.id);
        let root = mounts.v2.clone().unwrap();
        assert_eq!(path_by_handle(&root, key.id).as_deref(), Some(v2_path));
        let mut walk = Walk::default();
        assert_eq!(walk.find(&root, key).as_deref(), Some(v2_path));
        let mut lookup = Lookup::new(mounts, node::NodeFiles::default());
        let r = lookup.resolve(key);
        assert_eq!(r.path.as_deref(), Some(v2_path));
        assert_eq!(r.job.unwrap().cgroup, v2_path);
    }
}
