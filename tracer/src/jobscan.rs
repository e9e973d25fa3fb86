//! `--job`: the processes of the jobs a trace is limited to. The kernel follows the children
//! of traced processes; processes that enter a job from outside (a container's init started by
//! its runtime, `kubectl exec`, a restarted unit) are found by rescanning /proc every sample.

use std::collections::HashMap;

use crate::cgroups::{job::classify, node::NodeFiles};

/// Verdicts cached per cgroup path; past this the cache starts over.
const MAX_PATHS: usize = 4096;
/// Scans a non-matching pid is read again (a runtime moves a new process into its cgroup just
/// after the fork that made it); after them it is left alone until its pid goes.
const RECHECKS: u8 = 3;

pub struct JobScan {
    patterns: Vec<String>,
    node: NodeFiles,
    verdicts: HashMap<String, bool>,
    rejected: HashMap<u32, u8>,
}

impl JobScan {
    /// `patterns` as given to `--job`; none of them empty.
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            node: NodeFiles::default(),
            verdicts: HashMap::new(),
            rejected: HashMap::new(),
        }
    }

    /// Whether a cgroup path (as in /proc/<pid>/cgroup) is in one of the jobs: its job's name
    /// (as the tracer names it, `k8s:shop/web-0/app`, `systemd:redis.service`) or the path
    /// contains a pattern.
    pub fn matches_path(&mut self, path: &str) -> bool {
        if let Some(&v) = self.verdicts.get(path) {
            return v;
        }
        let mut job = classify(path);
        self.node.enrich(&mut job);
        let name = job.name();
        let v = self
            .patterns
            .iter()
            .any(|p| name.contains(p.as_str()) || path.contains(p.as_str()));
        if self.verdicts.len() >= MAX_PATHS {
            self.verdicts.clear();
        }
        self.verdicts.insert(path.to_owned(), v);
        v
    }

    /// Whether the process `pid` is in one of the jobs now (false once it has gone).
    pub fn matches_pid(&mut self, pid: u32) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| self.matches_path(path))
    }

    /// The processes in /proc that are in one of the jobs and not `known` (traced already).
    pub fn scan(&mut self, known: impl Fn(u32) -> bool) -> Vec<u32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let pids: Vec<u32> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        self.scan_pids(&pids, known, |s, pid| s.matches_pid(pid))
    }

    fn scan_pids(
        &mut self,
        pids: &[u32],
        known: impl Fn(u32) -> bool,
        mut matches: impl FnMut(&mut Self, u32) -> bool,
    ) -> Vec<u32> {
        // Forget pids that went: the table holds only processes that exist.
        let present: std::collections::HashSet<u32> = pids.iter().copied().collect();
        self.rejected.retain(|pid, _| present.contains(pid));
        let mut found = Vec::new();
        for &pid in pids {
            if known(pid) || self.rejected.get(&pid).is_some_and(|&n| n >= RECHECKS) {
                continue;
            }
            if matches(self, pid) {
                self.rejected.remove(&pid);
                found.push(pid);
            } else {
                *self.rejected.entry(pid).or_default() += 1;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_match() {
        let mut s = JobScan::new(vec!["redis".into(), "k8s:shop/".into()]);
        assert!(s.matches_path("/system.slice/redis-server.service"));
        assert!(!s.matches_path("/system.slice/cron.service"));
        assert!(!s.matches_path("/"));
        // A pod's container, by the path's pod uid alone (no node files here): its name is
        // `k8s:pod<uid>/<id12>`, and the path is the match.
        let mut by_uid = JobScan::new(vec!["0123456789ab".into()]);
        assert!(by_uid.matches_path(
            "/kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice/\
             cri-containerd-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope"
        ));
    }

    #[test]
    fn non_matching_pids_are_rechecked_then_left() {
        let mut s = JobScan::new(vec!["x".into()]);
        let mut calls = 0;
        for _ in 0..5 {
            let found = s.scan_pids(
                &[7],
                |_| false,
                |_, _| {
                    calls += 1;
                    false
                },
            );
            assert!(found.is_empty());
        }
        assert_eq!(calls, RECHECKS as usize);
        // A pid that matches on a later scan (moved into the cgroup) is found.
        let mut t = JobScan::new(vec!["x".into()]);
        let mut n = 0;
        let mut found = Vec::new();
        for _ in 0..3 {
            found = t.scan_pids(
                &[9],
                |_| false,
                |_, _| {
                    n += 1;
                    n == 2
                },
            );
            if !found.is_empty() {
                break;
            }
        }
        assert_eq!(found, [9]);
        // Known pids are not read, and a pid that went is forgotten.
        assert!(
            t.scan_pids(&[9], |_| true, |_, _| unreachable!())
                .is_empty()
        );
        s.scan_pids(&[], |_| false, |_, _| false);
        assert!(s.rejected.is_empty());
    }
}
