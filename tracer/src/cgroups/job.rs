//! Which job a cgroup path is: a Kubernetes container, a Docker/podman/containerd/CRI-O
//! container, a systemd unit, or a plain cgroup. Pure: the path alone (node files add names,
//! see `node`). Shapes follow coroot-node-agent's `cgroup.go`, Pixie's
//! `cgroup_path_resolver.cc` and Tetragon's container id lookup.

use serde::{Deserialize, Serialize};

/// What a job is, with every field the path (and the node's files) told; absent ones are
/// omitted from JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct JobInfo {
    /// `k8s`, `docker`, `podman`, `containerd`, `crio`, `systemd` or `cgroup`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container runtime of a Kubernetes container (`containerd`, `crio`, `docker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The cgroup path the job was read from.
    pub cgroup: String,
}

impl JobInfo {
    /// The short stable name: `k8s:<namespace>/<pod>/<container>`, `docker:<name-or-id12>`,
    /// `podman:…`, `containerd:<id12>`, `crio:<id12>`, `systemd:<unit>`, `cgroup:<path>`.
    /// Parts the node's files did not give fall back to ids.
    pub fn name(&self) -> String {
        let id12 = || {
            self.container_id
                .as_deref()
                .map(|id| id.get(..12).unwrap_or(id).to_owned())
        };
        match self.kind.as_str() {
            "k8s" => {
                let pod = match (&self.namespace, &self.pod) {
                    (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                    _ => format!("pod{}", self.pod_uid.as_deref().unwrap_or("?")),
                };
                match self.container.clone().or_else(id12) {
                    Some(c) => format!("k8s:{pod}/{c}"),
                    None => format!("k8s:{pod}"),
                }
            }
            "docker" | "podman" | "containerd" | "crio" => format!(
                "{}:{}",
                self.kind,
                self.container
                    .clone()
                    .or_else(id12)
                    .unwrap_or_else(|| "?".into())
            ),
            "systemd" => format!("systemd:{}", self.unit.as_deref().unwrap_or("?")),
            _ => format!("cgroup:{}", self.cgroup),
        }
    }

    /// How much the job says: containers and pods over units over plain cgroups. Of a
    /// process's two cgroups (v2, and v1 memory on hybrid hosts) the higher one names it.
    pub fn rank(&self) -> u8 {
        match self.kind.as_str() {
            "k8s" => 4,
            "docker" | "podman" | "containerd" | "crio" => 3,
            "systemd" => 2,
            _ if self.cgroup != "/" => 1,
            _ => 0,
        }
    }
}

/// A 64-hex-digit container id.
fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `\x2d` and friends in systemd unit names.
pub fn unescape_unit(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b'x')
            && let Some(h) = s.get(i + 2..i + 4)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A container in one path segment: (runtime, id). Recognises `<id>`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope` / `crio-<id>`, `libpod-<id>.scope` /
/// `libpod-<id>`, `cri-o-<id>`, and containerd's `…:cri-containerd:<id>` (systemd-style
/// paths under cgroupfs). Monitors (`crio-conmon-`, `libpod-conmon-`) are not containers.
fn container_in(seg: &str) -> Option<(&'static str, String)> {
    if let Some((_, id)) = seg.rsplit_once(':')
        && is_id(id)
    {
        let rt = if seg.contains(":cri-containerd:") {
            "containerd"
        } else if seg.contains(":crio:") {
            "crio"
        } else if seg.contains(":docker:") {
            "docker"
        } else {
            ""
        };
        return Some((rt, id.to_owned()));
    }
    let base = seg.strip_suffix(".scope").unwrap_or(seg);
    if is_id(base) {
        return Some(("", base.to_owned()));
    }
    for (prefix, rt) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("cri-o-", "crio"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = base.strip_prefix(prefix)
            && is_id(id)
        {
            return Some((rt, id.to_owned()));
        }
    }
    None
}

/// A pod uid in a segment: `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_>.slice` /
/// `kubepods-pod<uid_>.slice` (systemd; dashes written as underscores).
fn pod_in(seg: &str) -> Option<String> {
    let seg = seg.split(':').next().unwrap_or(seg);
    let base = seg.strip_suffix(".slice").unwrap_or(seg);
    let uid = base.rsplit_once("-pod").map(|(_, u)| u).or_else(|| {
        base.strip_prefix("pod")
            .filter(|_| !base.starts_with("kubepods"))
    })?;
    let uid = uid.replace('_', "-");
    (uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// Classifies a cgroup path (as in `/proc/<pid>/cgroup`, relative to its hierarchy's root).
pub fn classify(path: &str) -> JobInfo {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut info = JobInfo {
        kind: "cgroup".into(),
        cgroup: if path.is_empty() {
            "/".into()
        } else {
            path.to_owned()
        },
        ..Default::default()
    };
    let in_kubepods = segs.first().is_some_and(|s| s.starts_with("kubepods"));
    let pod = segs.iter().find_map(|s| pod_in(s));
    // The innermost container segment (podman's `/container` sub-cgroup sits below it).
    let container = segs.iter().rev().find_map(|s| container_in(s));
    if in_kubepods && pod.is_some() {
        info.kind = "k8s".into();
        info.pod_uid = pod;
        if let Some((rt, id)) = container {
            info.container_id = Some(id);
            info.runtime = (!rt.is_empty()).then(|| rt.to_owned());
        }
        return info;
    }
    if let Some((rt, id)) = container {
        let under_docker = segs.contains(&"docker");
        info.kind = match rt {
            "" if under_docker => "docker",
            "" if segs.contains(&"libpod_parent") => "podman",
            "" => "containerd",
            rt => rt,
        }
        .into();
        info.container_id = Some(id);
        return info;
    }
    // The innermost unit: a service or scope, else the innermost slice.
    let unit = segs
        .iter()
        .rev()
        .find(|s| s.ends_with(".service") || s.ends_with(".scope"))
        .or_else(|| segs.iter().rev().find(|s| s.ends_with(".slice")));
    if let Some(u) = unit {
        info.kind = "systemd".into();
        info.unit = Some(unescape_unit(u));
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c3a0d2b9e8f7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "0c5a6f2e-1b3d-4e5f-8a9b-0c1d2e3f4a5b";

    fn uid_() -> String {
        UID.replace('-', "_")
    }

    #[test]
    fn kubernetes_systemd_driver_every_qos() {
        for qos in ["burstable", "besteffort"] {
            for rt in ["cri-containerd", "crio", "docker"] {
                let p = format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/{rt}-{ID}.scope",
                    uid_()
                );
                let j = classify(&p);
                assert_eq!(j.kind, "k8s", "{p}");
                assert_eq!(j.pod_uid.as_deref(), Some(UID), "{p}");
                assert_eq!(j.container_id.as_deref(), Some(ID), "{p}");
                assert_eq!(j.name(), format!("k8s:pod{UID}/{}", &ID[..12]));
            }
        }
        // Guaranteed: no QoS level in the path.
        let p = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            uid_()
        );
        let j = classify(&p);
        assert_eq!((j.kind.as_str(), j.pod_uid.as_deref()), ("k8s", Some(UID)));
        assert_eq!(j.runtime.as_deref(), Some("containerd"));
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        for p in [
            format!("/kubepods/besteffort/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/pod{UID}/{ID}"),
            format!(
                "/kubepods-besteffort-pod{}.slice:cri-containerd:{ID}",
                uid_()
            ),
        ] {
            let j = classify(&p);
            assert_eq!(j.kind, "k8s", "{p}");
            assert_eq!(j.pod_uid.as_deref(), Some(UID), "{p}");
            assert_eq!(j.container_id.as_deref(), Some(ID), "{p}");
        }
        // The pod's own cgroup (no container below it).
        let j = classify(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((j.kind.as_str(), j.container_id.as_deref()), ("k8s", None));
        assert_eq!(j.name(), format!("k8s:pod{UID}"));
    }

    #[test]
    fn containers_outside_kubernetes() {
        let cases = [
            (format!("/docker/{ID}"), "docker"),
            (format!("/system.slice/docker-{ID}.scope"), "docker"),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                "containerd",
            ),
            (format!("/system.slice/crio-{ID}.scope"), "crio"),
            (format!("/machine.slice/libpod-{ID}.scope"), "podman"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman",
            ),
            (format!("/libpod_parent/libpod-{ID}"), "podman"),
            (
                format!("/system.slice/containerd.service/default/{ID}"),
                "containerd",
            ),
        ];
        for (p, kind) in cases {
            let j = classify(&p);
            assert_eq!(j.kind, kind, "{p}");
            assert_eq!(j.container_id.as_deref(), Some(ID), "{p}");
            assert_eq!(j.name(), format!("{kind}:{}", &ID[..12]), "{p}");
        }
    }

    #[test]
    fn monitors_are_not_containers() {
        let j = classify(&format!("/system.slice/crio-conmon-{ID}.scope"));
        assert_eq!(j.kind, "systemd");
        assert_eq!(j.unit.as_deref(), Some(&*format!("crio-conmon-{ID}.scope")));
        let j = classify(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert_eq!(j.kind, "systemd");
    }

    #[test]
    fn systemd_units() {
        let j = classify("/system.slice/nginx.service");
        assert_eq!(j.name(), "systemd:nginx.service");
        let j = classify("/system.slice/system-getty.slice/getty@tty1.service");
        assert_eq!(j.name(), "systemd:getty@tty1.service");
        let j = classify(r"/system.slice/system-worker\x2dpool.slice/worker@a\x2db.service");
        assert_eq!(j.name(), "systemd:worker@a-b.service");
        let j = classify("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(j.name(), "systemd:session-3.scope");
        let j = classify("/user.slice/user-1000.slice");
        assert_eq!(j.name(), "systemd:user-1000.slice");
        assert_eq!(j.rank(), 2);
    }

    #[test]
    fn plain_cgroups_and_the_root() {
        let j = classify("/process_api/6503ca9328ee52751339c93df32899c8");
        assert_eq!(
            j.name(),
            "cgroup:/process_api/6503ca9328ee52751339c93df32899c8"
        );
        assert_eq!(j.rank(), 1);
        let j = classify("/");
        assert_eq!((j.name().as_str(), j.rank()), ("cgroup:/", 0));
        assert_eq!(classify("").cgroup, "/");
    }

    #[test]
    fn unescaping_is_total() {
        assert_eq!(unescape_unit(r"a\x2db"), "a-b");
        assert_eq!(unescape_unit(r"bad\x2"), r"bad\x2");
        assert_eq!(unescape_unit(r"\xzz"), r"\xzz");
        assert_eq!(unescape_unit(r"\x"), r"\x");
    }
}
