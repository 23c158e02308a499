//! Pod resource allocation (kubelet's allocation manager): the resources each admitted pod's
//! containers were given, checkpointed in `<root-dir>/allocated_pods_state` so that a restarted agent
//! keeps them. The pod workers run a pod with its allocated resources; a resize — the API pod's spec
//! asking for other resources — changes the allocation only once it is admitted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use serde::{Deserialize, Serialize};

/// The checkpoint's file name under the root directory (kubelet's).
pub const CHECKPOINT_FILE: &str = "allocated_pods_state";

#[derive(Debug, thiserror::Error)]
pub enum AllocationError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The resources allocated to a pod's resizable containers (app containers and native sidecars), by
/// container name.
pub type PodAllocation = BTreeMap<String, ResourceRequirements>;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Pod UID → allocation.
    pods: BTreeMap<String, PodAllocation>,
}

/// Every admitted pod's allocation, written through to the checkpoint file.
#[derive(Debug)]
pub struct Allocations {
    path: PathBuf,
    pods: BTreeMap<String, PodAllocation>,
}

impl Allocations {
    /// Reads the checkpoint at `path`; none yet is an empty one.
    pub fn load(path: &Path) -> Result<Self, AllocationError> {
        let pods = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<Checkpoint>(&bytes)
                    .map_err(|source| AllocationError::Parse {
                        path: path.to_path_buf(),
                        source,
                    })?
                    .pods
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(AllocationError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            pods,
        })
    }

    /// No allocation yet; the first change writes `path`.
    pub fn empty(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            pods: BTreeMap::new(),
        }
    }

    pub fn get(&self, uid: &str) -> Option<&PodAllocation> {
        self.pods.get(uid)
    }

    /// Records a pod's allocation and writes the checkpoint (when it changed).
    pub fn set(&mut self, uid: &str, allocation: PodAllocation) -> Result<(), AllocationError> {
        if self.pods.get(uid) == Some(&allocation) {
            return Ok(());
        }
        self.pods.insert(uid.to_string(), allocation);
        self.save()
    }

    /// Forgets the pods `keep` says no to, and writes the checkpoint when any was forgotten.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Result<(), AllocationError> {
        let before = self.pods.len();
        self.pods.retain(|uid, _| keep(uid));
        if self.pods.len() == before {
            return Ok(());
        }
        self.save()
    }

    /// Writes the checkpoint atomically (a temporary file renamed over it).
    fn save(&self) -> Result<(), AllocationError> {
        let write_error = |source| AllocationError::Write {
            path: self.path.clone(),
            source,
        };
        let checkpoint = Checkpoint {
            pods: self.pods.clone(),
        };
        let bytes = serde_json::to_vec(&checkpoint).map_err(|e| write_error(e.into()))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(write_error)?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).map_err(write_error)?;
        file.write_all(&bytes).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        std::fs::rename(&tmp, &self.path).map_err(write_error)
    }
}

/// The containers whose resources may be resized: app containers and native sidecars.
fn resizable(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| s.containers.iter()).chain(
        spec.into_iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| crate::sync::actions::is_sidecar(c)),
    )
}

/// The allocation `pod`'s spec asks for.
pub fn requested(pod: &Pod) -> PodAllocation {
    resizable(pod)
        .map(|c| (c.name.clone(), c.resources.clone().unwrap_or_default()))
        .collect()
}

/// True when `pod`'s spec asks for other resources than `allocation` gives it: a resize.
pub fn resize_requested(pod: &Pod, allocation: &PodAllocation) -> bool {
    requested(pod) != *allocation
}

/// `pod` with its containers' resources as `allocation` has them (kubelet's
/// `UpdatePodFromAllocation`); a container it does not name keeps its own.
pub fn apply(pod: &Pod, allocation: &PodAllocation) -> Pod {
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            if let Some(resources) = allocation.get(&c.name)
                && c.resources.clone().unwrap_or_default() != *resources
            {
                c.resources = Some(resources.clone());
            }
        }
    }
    pod
}

/// The resources of a pod's resizable containers and its generation, as kubelet's resize events
/// show them: `{"containers":[{"name":"c","resources":{...}}],"generation":2}`.
pub fn summary(pod: &Pod) -> String {
    let containers: Vec<serde_json::Value> = resizable(pod)
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "resources": c.resources.clone().unwrap_or_default(),
            })
        })
        .collect();
    serde_json::json!({
        "containers": containers,
        "generation": pod.metadata.generation.unwrap_or_default(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(cpu: &str, sidecar_cpu: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u", "generation": 3},
            "spec": {
                "initContainers": [
                    {"name": "setup", "image": "i", "resources": {"requests": {"cpu": "1"}}},
                    {"name": "proxy", "image": "i", "restartPolicy": "Always",
                     "resources": {"limits": {"cpu": sidecar_cpu}}},
                ],
                "containers": [
                    {"name": "app", "image": "i", "resources": {"limits": {"cpu": cpu, "memory": "128Mi"}}},
                    {"name": "plain", "image": "i"},
                ],
            },
        }))
        .expect("pod")
    }

    #[test]
    fn allocation_covers_app_containers_and_sidecars() {
        let a = requested(&pod("300m", "100m"));
        assert_eq!(
            a.keys().map(String::as_str).collect::<Vec<_>>(),
            vec!["app", "plain", "proxy"]
        );
        assert_eq!(a["plain"], ResourceRequirements::default());
        assert!(!resize_requested(&pod("300m", "100m"), &a));
        assert!(resize_requested(&pod("500m", "100m"), &a));
        assert!(resize_requested(&pod("300m", "200m"), &a));
    }

    #[test]
    fn applying_an_allocation_gives_the_pod_its_allocated_resources() {
        let allocated = requested(&pod("300m", "100m"));
        let resized = pod("500m", "200m");
        let applied = apply(&resized, &allocated);
        assert_eq!(requested(&applied), allocated);
        let spec = applied.spec.as_ref().expect("spec");
        assert_eq!(
            spec.containers[1].resources, None,
            "nothing allocated stays nothing"
        );
        assert_eq!(
            spec.init_containers.as_ref().expect("inits")[0].resources,
            resized
                .spec
                .as_ref()
                .expect("spec")
                .init_containers
                .as_ref()
                .expect("inits")[0]
                .resources,
            "an init container is not resized"
        );
        assert_eq!(applied.metadata, resized.metadata, "only resources change");
    }

    #[test]
    fn the_checkpoint_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut a = Allocations::load(&path).expect("no checkpoint yet");
        assert!(a.get("u").is_none());
        a.set("u", requested(&pod("300m", "100m"))).expect("write");
        a.set("v", requested(&pod("1", "100m"))).expect("write");
        a.set("u", requested(&pod("500m", "100m"))).expect("write");
        let b = Allocations::load(&path).expect("read back");
        assert_eq!(b.get("u"), Some(&requested(&pod("500m", "100m"))));
        assert!(b.get("v").is_some());
        let mut b = b;
        b.retain(|uid| uid == "u").expect("write");
        let c = Allocations::load(&path).expect("read back");
        assert!(c.get("v").is_none() && c.get("u").is_some());
    }

    #[test]
    fn a_corrupt_checkpoint_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CHECKPOINT_FILE);
        std::fs::write(&path, "{not json").expect("write");
        assert!(matches!(
            Allocations::load(&path),
            Err(AllocationError::Parse { .. })
        ));
    }

    #[test]
    fn summary_names_each_resizable_container_and_the_generation() {
        let s: serde_json::Value =
            serde_json::from_str(&summary(&pod("300m", "100m"))).expect("json");
        assert_eq!(s["generation"], 3);
        assert_eq!(s["containers"][0]["name"], "app");
        assert_eq!(s["containers"][0]["resources"]["limits"]["cpu"], "300m");
        assert_eq!(s["containers"][2]["name"], "proxy");
    }
}
