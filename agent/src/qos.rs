//! QoS classes and the pod cgroup layout kubelet uses with the cgroupfs driver:
//! `/kubepods/pod<uid>` (Guaranteed), `/kubepods/burstable/pod<uid>`, `/kubepods/besteffort/pod<uid>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

fn parse(q: &Quantity) -> Option<crate::quantity::Quantity> {
    crate::quantity::Quantity::from_api(q)
        .ok()
        .filter(|q| !q.is_zero())
}

fn resources(c: &Container) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let r = c.resources.clone().unwrap_or_default();
    (r.requests.unwrap_or_default(), r.limits.unwrap_or_default())
}

/// kubelet's `GetPodQOS` for cpu and memory.
pub fn qos_class(pod: &Pod) -> QosClass {
    if let Some(class) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        match class {
            "Guaranteed" => return QosClass::Guaranteed,
            "Burstable" => return QosClass::Burstable,
            "BestEffort" => return QosClass::BestEffort,
            _ => {}
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let mut any_set = false;
    let mut guaranteed = true;
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in all {
        let (mut requests, limits) = resources(c);
        // A limit without a request defaults the request to the limit.
        for (k, v) in &limits {
            requests.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for resource in ["cpu", "memory"] {
            let req = requests.get(resource).and_then(parse);
            let lim = limits.get(resource).and_then(parse);
            if req.is_some() || lim.is_some() {
                any_set = true;
            }
            match (req, lim) {
                (Some(r), Some(l)) if r == l => {}
                _ => guaranteed = false,
            }
        }
    }
    match (any_set, guaranteed) {
        (false, _) => QosClass::BestEffort,
        (true, true) => QosClass::Guaranteed,
        (true, false) => QosClass::Burstable,
    }
}

/// The pod's cgroup parent under `cgroup_root` (kubelet's cgroupRoot, "/" by default).
pub fn pod_cgroup_parent(pod: &Pod, cgroup_root: &str) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let root = cgroup_root.trim_end_matches('/');
    match qos_class(pod) {
        QosClass::Guaranteed => format!("{root}/kubepods/pod{uid}"),
        QosClass::Burstable => format!("{root}/kubepods/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{root}/kubepods/besteffort/pod{uid}"),
    }
}

/// The pod cgroup's directories in every mounted v1 hierarchy (or the unified one), for removal after
/// the pod is gone: runc leaves them behind on cgroup v1.
pub fn cgroup_dirs(cgroup_mount: &Path, parent: &str) -> Vec<PathBuf> {
    let relative = parent.trim_start_matches('/');
    let Ok(entries) = std::fs::read_dir(cgroup_mount) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(relative))
        .filter(|p| p.is_dir())
        .collect();
    let unified = cgroup_mount.join(relative);
    if unified.is_dir() {
        dirs.push(unified);
    }
    dirs
}

/// Removes the pod's (now empty) cgroup directories, children first.
pub fn remove_pod_cgroups(cgroup_mount: &Path, parent: &str) {
    for dir in cgroup_dirs(cgroup_mount, parent) {
        let mut children: Vec<PathBuf> = walk_dirs(&dir);
        children.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for child in children.into_iter().chain(std::iter::once(dir.clone())) {
            if let Err(e) = std::fs::remove_dir(&child)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::debug!(path = %child.display(), error = %e, "cannot remove pod cgroup");
            }
        }
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_dirs(&p));
                out.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "i", "resources": resources}]}
        }))
        .expect("pod")
    }

    #[test]
    fn qos_table() {
        let table = [
            (serde_json::json!({}), QosClass::BestEffort),
            (
                serde_json::json!({"requests": {"cpu": "100m"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Guaranteed,
            ),
            (
                serde_json::json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"limits": {"memory": "1Gi"}}),
                QosClass::Burstable,
            ),
            (
                serde_json::json!({"requests": {"cpu": "0"}}),
                QosClass::BestEffort,
            ),
        ];
        for (resources, expected) in table {
            assert_eq!(qos_class(&pod(resources.clone())), expected, "{resources}");
        }
    }

    #[test]
    fn cgroup_parent_by_qos() {
        assert_eq!(
            pod_cgroup_parent(&pod(serde_json::json!({})), "/"),
            "/kubepods/besteffort/podu1"
        );
        assert_eq!(
            pod_cgroup_parent(&pod(serde_json::json!({"requests": {"cpu": "1"}})), "/"),
            "/kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_cgroup_parent(
                &pod(serde_json::json!({"limits": {"cpu": "1", "memory": "1Gi"}})),
                "/mk"
            ),
            "/mk/kubepods/podu1"
        );
    }

    #[test]
    fn removes_leftover_cgroup_dirs() {
        let root = tempfile::tempdir().expect("tmp");
        for controller in ["cpu", "memory"] {
            std::fs::create_dir_all(
                root.path()
                    .join(controller)
                    .join("kubepods/besteffort/podu1/abc"),
            )
            .expect("mkdir");
        }
        remove_pod_cgroups(root.path(), "/kubepods/besteffort/podu1");
        assert!(!root.path().join("cpu/kubepods/besteffort/podu1").exists());
        assert!(
            !root
                .path()
                .join("memory/kubepods/besteffort/podu1")
                .exists()
        );
        assert!(root.path().join("memory/kubepods/besteffort").exists());
    }
}
