//! Names of containers and pods from the node's own files, with no API server:
//! - kubelet's logs: `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` (id → all
//!   three) and `/var/log/pods/<namespace>_<pod>_<uid>/<container>/` (pod uid → namespace,
//!   pod);
//! - OCI `config.json` annotations in the runtime's state directory: containerd's
//!   `io.kubernetes.cri.*`, CRI-O's `io.kubernetes.pod.*` / `io.kubernetes.container.name`;
//! - Docker's `config.v2.json` (`Name`), and containers/storage's `containers.json` (podman's
//!   names).
//!
//! Every file is optional, read at most [`MAX_FILE`] bytes, and parsed as untrusted. Directory
//! listings are cached and re-read at most once a second when a lookup misses.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::JobInfo;

const MAX_FILE: u64 = 4 << 20;
const RELIST_EVERY: Duration = Duration::from_secs(1);
/// Listings keep at most this many entries.
const MAX_ENTRIES: usize = 100_000;

/// Where the node's files are: `/` on the host; a DaemonSet mounts the host's directories at
/// the same paths (or sets another root).
pub struct NodeFiles {
    root: PathBuf,
    containers: Listing<(String, String, String)>,
    pods: Listing<(String, String)>,
}

impl Default for NodeFiles {
    fn default() -> Self {
        Self::new("/")
    }
}

/// A cached directory listing, keyed by what a lookup asks for.
struct Listing<V> {
    by_key: HashMap<String, V>,
    listed: Option<Instant>,
}

impl<V: Clone> Listing<V> {
    fn new() -> Self {
        Self {
            by_key: HashMap::new(),
            listed: None,
        }
    }

    fn get(
        &mut self,
        key: &str,
        dir: &Path,
        parse: impl Fn(&str) -> Option<(String, V)>,
    ) -> Option<V> {
        if let Some(v) = self.by_key.get(key) {
            return Some(v.clone());
        }
        if self.listed.is_some_and(|t| t.elapsed() < RELIST_EVERY) {
            return None;
        }
        self.listed = Some(Instant::now());
        self.by_key.clear();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if self.by_key.len() >= MAX_ENTRIES {
                break;
            }
            if let Some((k, v)) = e.file_name().to_str().and_then(&parse) {
                self.by_key.insert(k, v);
            }
        }
        self.by_key.get(key).cloned()
    }
}

/// `<pod>_<namespace>_<container>-<id>.log` → (id, (pod, namespace, container)).
fn parse_container_log(name: &str) -> Option<(String, (String, String, String))> {
    let stem = name.strip_suffix(".log")?;
    let mut parts = stem.splitn(3, '_');
    let (pod, ns, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    (!pod.is_empty() && !ns.is_empty() && !container.is_empty() && id.len() == 64).then(|| {
        (
            id.to_owned(),
            (pod.to_owned(), ns.to_owned(), container.to_owned()),
        )
    })
}

/// `<namespace>_<pod>_<uid>` → (uid, (namespace, pod)).
fn parse_pod_dir(name: &str) -> Option<(String, (String, String))> {
    let mut parts = name.splitn(3, '_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (!ns.is_empty() && !pod.is_empty() && uid.len() >= 32)
        .then(|| (uid.to_owned(), (ns.to_owned(), pod.to_owned())))
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

fn annotation(config: &serde_json::Value, key: &str) -> Option<String> {
    config
        .get("annotations")?
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

impl NodeFiles {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            containers: Listing::new(),
            pods: Listing::new(),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// Fills the names the node's files give for `j`.
    pub fn enrich(&mut self, j: &mut JobInfo) {
        let id = j.container_id.clone();
        match j.kind.as_str() {
            "k8s" => {
                if let Some(id) = &id {
                    self.k8s_by_container(j, id);
                }
                if j.pod.is_none()
                    && let Some(uid) = j.pod_uid.clone()
                {
                    let dir = self.path("/var/log/pods");
                    if let Some((ns, pod)) = self.pods.get(&uid, &dir, parse_pod_dir) {
                        j.namespace = Some(ns);
                        j.pod = Some(pod);
                    }
                }
            }
            "docker" => {
                if let Some(id) = &id {
                    let cfg = self.path(&format!("/var/lib/docker/containers/{id}/config.v2.json"));
                    j.container = read_json(&cfg)
                        .and_then(|v| v.get("Name")?.as_str().map(str::to_owned))
                        .map(|n| n.trim_start_matches('/').to_owned())
                        .filter(|n| !n.is_empty());
                }
            }
            "podman" => {
                if let Some(id) = &id {
                    j.container = self.storage_name(id);
                }
            }
            _ => {}
        }
    }

    fn k8s_by_container(&mut self, j: &mut JobInfo, id: &str) {
        let dir = self.path("/var/log/containers");
        if let Some((pod, ns, container)) = self.containers.get(id, &dir, parse_container_log) {
            j.pod = Some(pod);
            j.namespace = Some(ns);
            j.container = Some(container);
            return;
        }
        // The runtime's OCI spec of the container.
        for (path, names) in [
            (
                format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json"),
                [
                    "io.kubernetes.cri.sandbox-namespace",
                    "io.kubernetes.cri.sandbox-name",
                    "io.kubernetes.cri.container-name",
                    "io.kubernetes.cri.sandbox-uid",
                ],
            ),
            (
                format!("/run/containers/storage/overlay-containers/{id}/userdata/config.json"),
                [
                    "io.kubernetes.pod.namespace",
                    "io.kubernetes.pod.name",
                    "io.kubernetes.container.name",
                    "io.kubernetes.pod.uid",
                ],
            ),
        ] {
            let Some(cfg) = read_json(&self.path(&path)) else {
                continue;
            };
            let [ns, pod, container, uid] = names.map(|k| annotation(&cfg, k));
            j.namespace = j.namespace.take().or(ns);
            j.pod = j.pod.take().or(pod);
            j.container = j.container.take().or(container);
            j.pod_uid = j.pod_uid.take().or(uid);
            return;
        }
    }

    /// A container's name in containers/storage (podman, CRI-O without kubelet logs).
    fn storage_name(&self, id: &str) -> Option<String> {
        for p in [
            "/var/lib/containers/storage/overlay-containers/containers.json",
            "/var/lib/containers/storage/vfs-containers/containers.json",
        ] {
            let Some(list) = read_json(&self.path(p)) else {
                continue;
            };
            let found = list.as_array()?.iter().find_map(|c| {
                (c.get("id")?.as_str()? == id)
                    .then(|| c.get("names")?.get(0)?.as_str().map(str::to_owned))
                    .flatten()
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3a0d2b9e8f7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "0c5a6f2e-1b3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tracer-node-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn kubelet_logs_name_containers_and_pods() {
        let root = tmp("kubelet");
        std::fs::create_dir_all(root.join("var/log/containers")).unwrap();
        std::fs::write(
            root.join(format!(
                "var/log/containers/worker-7d9f_jobs_sidekiq-{ID}.log"
            )),
            "",
        )
        .unwrap();
        std::fs::create_dir_all(root.join(format!("var/log/pods/jobs_other-1_{UID}/app"))).unwrap();
        let mut node = NodeFiles::new(&root);
        let mut j = super::super::job::classify(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        node.enrich(&mut j);
        assert_eq!(j.name(), "k8s:jobs/worker-7d9f/sidekiq");
        let mut pod_only = super::super::job::classify(&format!("/kubepods/burstable/pod{UID}"));
        node.enrich(&mut pod_only);
        assert_eq!(pod_only.name(), "k8s:jobs/other-1");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn runtime_files_name_containers() {
        let root = tmp("runtime");
        let d = root.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-namespace":"ns1",
                "io.kubernetes.cri.sandbox-name":"pod1","io.kubernetes.cri.container-name":"c1"}}"#,
        )
        .unwrap();
        let docker = root.join(format!("var/lib/docker/containers/{ID}"));
        std::fs::create_dir_all(&docker).unwrap();
        std::fs::write(docker.join("config.v2.json"), r#"{"Name":"/web"}"#).unwrap();
        let storage = root.join("var/lib/containers/storage/overlay-containers");
        std::fs::create_dir_all(&storage).unwrap();
        std::fs::write(
            storage.join("containers.json"),
            format!(r#"[{{"id":"{ID}","names":["api"]}}]"#),
        )
        .unwrap();
        let mut node = NodeFiles::new(&root);
        let classify = super::super::job::classify;
        let mut k = classify(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        ));
        node.enrich(&mut k);
        assert_eq!(k.name(), "k8s:ns1/pod1/c1");
        let mut d = classify(&format!("/docker/{ID}"));
        node.enrich(&mut d);
        assert_eq!(d.name(), "docker:web");
        let mut p = classify(&format!("/libpod_parent/libpod-{ID}"));
        node.enrich(&mut p);
        assert_eq!(p.name(), "podman:api");
        // Garbage is ignored, not trusted.
        std::fs::write(docker.join("config.v2.json"), "{not json").unwrap();
        let mut d = classify(&format!("/docker/{ID}"));
        node.enrich(&mut d);
        assert_eq!(d.name(), format!("docker:{}", &ID[..12]));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn log_names_are_parsed_strictly() {
        assert!(parse_container_log("a_b_c-short.log").is_none());
        assert!(parse_container_log(&format!("_b_c-{ID}.log")).is_none());
        assert!(parse_container_log(&format!("a_b_c-{ID}.txt")).is_none());
        assert!(parse_pod_dir("ns_pod_short").is_none());
    }
}
