//! Pod and QoS cgroups, as kubelet's container manager (`pkg/kubelet/cm`) with `cgroupsPerQOS`:
//! the agent makes `kubepods` (holding node allocatable under `enforceNodeAllocatable: [pods]`),
//! `kubepods/burstable` and `kubepods/besteffort`, and for each pod `pod<uid>` under its QoS cgroup
//! holding the pod's cpu shares, CFS quota and memory limit (the containers' together, or the
//! pod-level `spec.resources`), before its sandbox starts; the runtime gets that cgroup as the
//! sandbox's cgroup parent, in the driver's form; the cgroup goes with the pod.
//!
//! - [`name`]: cgroup names and their `cgroupfs` / `systemd` spellings;
//! - [`driver`]: the driver, checked against the one the runtime reports;
//! - [`resource_config`]: what a pod's (and the QoS cgroups') limits are, pure;
//! - [`cgroupfs`]: writing them on cgroup v1 or v2;
//! - [`PodCgroups`] (here): the pods' and QoS cgroups of this node.
//!
//! With the `systemd` driver the cgroups are the slices systemd would name
//! (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`), written on the
//! cgroup filesystem directly: the agent does not ask systemd over D-Bus to make them as units.

pub mod cgroupfs;
pub mod driver;
pub mod name;
pub mod resource_config;
pub mod setup;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Pod;

pub use cgroupfs::{CgroupFs, CgroupVersion};
pub use driver::CgroupDriver;
pub use name::CgroupName;
pub use resource_config::ResourceConfig;

use crate::qos::{QosClass, qos_class};

/// Why a cgroup could not be made, changed or removed, or the settings are wrong.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cgroupDriver is {configured:?} but the container runtime uses {runtime:?}: set \
         cgroupDriver: {runtime} in the agent's configuration (or change the runtime's)"
    )]
    DriverMismatch {
        configured: &'static str,
        runtime: &'static str,
    },
    #[error("cgroupDriver: unknown driver {0:?} (expected \"cgroupfs\" or \"systemd\")")]
    UnknownDriver(String),
    #[error("{action} cgroup {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Reserved(#[from] crate::node::resources::ResourceConfigError),
    #[error("cgroup {dir} still has processes {pids:?} after they were killed")]
    Busy { dir: String, pids: Vec<i32> },
}

/// How the node's cgroups are laid out (`cgroupDriver`, `cgroupRoot`, `cgroupsPerQOS`).
#[derive(Debug, Clone)]
pub struct CgroupSettings {
    pub driver: CgroupDriver,
    /// `cgroupRoot` in the driver's spelling.
    pub cgroup_root: String,
    pub cgroups_per_qos: bool,
    /// The cgroup filesystem's mount point (`/sys/fs/cgroup`).
    pub mount: PathBuf,
}

impl CgroupSettings {
    fn root(&self) -> CgroupName {
        CgroupName::parse(&self.cgroup_root, self.driver)
    }

    /// `kubepods`' directory below each hierarchy's mount point.
    pub fn kubepods_dir(&self) -> String {
        self.root().child("kubepods").to_dir(self.driver)
    }

    /// The directories pod `uid`'s cgroup has under each QoS class (kubelet's
    /// `GetPodContainerName` for each), when only its UID is known; none without `cgroupsPerQOS`.
    pub fn pod_dir_candidates(&self, uid: &str) -> Vec<String> {
        if !self.cgroups_per_qos || uid.is_empty() {
            return Vec::new();
        }
        let kubepods = self.root().child("kubepods");
        [
            kubepods.clone(),
            kubepods.child("burstable"),
            kubepods.child("besteffort"),
        ]
        .into_iter()
        .map(|qos| qos.child(format!("pod{uid}")).to_dir(self.driver))
        .collect()
    }
}

/// This node's pod cgroups. Cheap to clone; shared by the pod workers.
#[derive(Debug, Clone)]
pub struct PodCgroups {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    fs: CgroupFs,
    settings: CgroupSettings,
    driver: CgroupDriver,
    root: CgroupName,
    per_qos: bool,
    /// The cpu requests (millicores) of the Burstable pods whose cgroups exist, by UID: the
    /// burstable QoS cgroup's shares are their sum.
    burstable: Mutex<HashMap<String, i64>>,
}

impl PodCgroups {
    pub fn new(settings: &CgroupSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                fs: CgroupFs::detect(&settings.mount),
                settings: settings.clone(),
                driver: settings.driver,
                root: CgroupName::parse(&settings.cgroup_root, settings.driver),
                per_qos: settings.cgroups_per_qos,
                burstable: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn driver(&self) -> CgroupDriver {
        self.inner.driver
    }

    pub fn version(&self) -> CgroupVersion {
        self.inner.fs.version()
    }

    pub fn fs(&self) -> &CgroupFs {
        &self.inner.fs
    }

    /// `kubepods` under the root.
    pub fn kubepods(&self) -> CgroupName {
        self.inner.root.child("kubepods")
    }

    fn qos_cgroup(&self, class: QosClass) -> CgroupName {
        match class {
            QosClass::Guaranteed => self.kubepods(),
            QosClass::Burstable => self.kubepods().child("burstable"),
            QosClass::BestEffort => self.kubepods().child("besteffort"),
        }
    }

    /// The pod's cgroup (kubelet's `GetPodContainerName`): `pod<uid>` under its QoS cgroup; the
    /// root itself without `cgroupsPerQOS`.
    pub fn pod_cgroup(&self, pod: &Pod) -> CgroupName {
        if !self.inner.per_qos {
            return self.inner.root.clone();
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        self.qos_cgroup(qos_class(pod)).child(format!("pod{uid}"))
    }

    /// The sandbox's cgroup parent as the runtime takes it (`/kubepods/burstable/pod<uid>`, or
    /// `kubepods-burstable-pod<uid>.slice` with the systemd driver).
    pub fn cgroup_parent(&self, pod: &Pod) -> String {
        self.pod_cgroup(pod).to_driver_name(self.inner.driver)
    }

    /// The pod cgroup's directory below each hierarchy's mount point.
    pub fn pod_dir(&self, pod: &Pod) -> String {
        self.pod_cgroup(pod).to_dir(self.inner.driver)
    }

    fn dir(&self, name: &CgroupName) -> String {
        name.to_dir(self.inner.driver)
    }

    /// Start-up (kubelet's `setupNode` and QoS container manager): makes `kubepods` with node
    /// allocatable (`allocatable`, when `enforceNodeAllocatable` holds `pods`), `burstable` and
    /// `besteffort` (the least cpu shares). Nothing without `cgroupsPerQOS`.
    pub fn setup_qos(&self, allocatable: Option<ResourceConfig>) -> Result<(), CgroupError> {
        if !self.inner.per_qos {
            return Ok(());
        }
        let fs = &self.inner.fs;
        let kubepods = allocatable.unwrap_or(ResourceConfig {
            cpu_shares: None,
            ..ResourceConfig::default()
        });
        fs.ensure(&self.dir(&self.kubepods()), &kubepods)?;
        let burstable = ResourceConfig {
            cpu_shares: Some(resource_config::burstable_shares(self.burstable_requests())),
            ..ResourceConfig::default()
        };
        fs.ensure(&self.dir(&self.qos_cgroup(QosClass::Burstable)), &burstable)?;
        let best_effort = ResourceConfig {
            cpu_shares: Some(resource_config::MIN_SHARES),
            ..ResourceConfig::default()
        };
        fs.ensure(
            &self.dir(&self.qos_cgroup(QosClass::BestEffort)),
            &best_effort,
        )?;
        tracing::info!(
            driver = %self.inner.driver,
            cgroup_version = self.version().as_str(),
            kubepods = %self.dir(&self.kubepods()),
            allocatable_cpu_shares = ?kubepods.cpu_shares,
            allocatable_memory = ?kubepods.memory,
            "QoS cgroups ready"
        );
        Ok(())
    }

    fn burstable_requests(&self) -> i64 {
        self.inner
            .burstable
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// Keeps the burstable QoS cgroup's shares at its pods' cpu requests (kubelet's
    /// `UpdateQOSCgroups`) after a Burstable pod came or went.
    fn track(&self, uid: &str, burstable_request: Option<i64>) -> Result<(), CgroupError> {
        let changed = match self.inner.burstable.lock() {
            Ok(mut map) => match burstable_request {
                Some(milli) => map.insert(uid.to_string(), milli) != Some(milli),
                None => map.remove(uid).is_some(),
            },
            Err(_) => false,
        };
        if !changed || !self.inner.per_qos {
            return Ok(());
        }
        let dir = self.dir(&self.qos_cgroup(QosClass::Burstable));
        let shares = resource_config::burstable_shares(self.burstable_requests());
        let config = ResourceConfig {
            cpu_shares: Some(shares),
            ..ResourceConfig::default()
        };
        self.inner.fs.ensure(&dir, &config)
    }

    /// Makes the pod's cgroup with its limits if it does not exist (kubelet's `EnsureExists`,
    /// before the sandbox is made): an existing one is left as it is (see [`Self::update_pod`]).
    pub fn ensure_pod(&self, pod: &Pod) -> Result<(), CgroupError> {
        if !self.inner.per_qos {
            return Ok(());
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let class = qos_class(pod);
        self.track(
            uid,
            (class == QosClass::Burstable).then(|| resource_config::cpu_request_milli(pod)),
        )?;
        let dir = self.pod_dir(pod);
        if self.inner.fs.exists(&dir) {
            return Ok(());
        }
        let config = resource_config::for_pod(pod);
        self.inner.fs.ensure(&dir, &config)?;
        tracing::debug!(pod = %crate::sources::pod_key(pod), cgroup = %dir, ?config, "pod cgroup created");
        Ok(())
    }

    /// Writes the pod's limits as `pod` asks now (after an in-place resize of its containers).
    pub fn update_pod(&self, pod: &Pod) -> Result<(), CgroupError> {
        if !self.inner.per_qos {
            return Ok(());
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if qos_class(pod) == QosClass::Burstable {
            self.track(uid, Some(resource_config::cpu_request_milli(pod)))?;
        }
        self.inner
            .fs
            .apply(&self.pod_dir(pod), &resource_config::for_pod(pod))
    }

    /// Before its containers grow (an in-place resize): each limit at least what `pod` asks, so
    /// a container's new limit is never above its pod's. [`Self::update_pod`] follows.
    pub fn raise_pod(&self, pod: &Pod) -> Result<(), CgroupError> {
        if !self.inner.per_qos {
            return Ok(());
        }
        let dir = self.pod_dir(pod);
        let current = self.inner.fs.read(&dir)?;
        let wanted = resource_config::for_pod(pod);
        self.inner.fs.apply(&dir, &current.max(&wanted))
    }

    /// Removes a pod's cgroup wherever its QoS class put it (kubelet's `Destroy`): processes
    /// left in it are killed first. Whether there was one to remove.
    pub fn destroy_pod(&self, uid: &str) -> Result<bool, CgroupError> {
        if !self.inner.per_qos || uid.is_empty() {
            return Ok(false);
        }
        self.track(uid, None)?;
        let mut result = Ok(false);
        for dir in self.inner.settings.pod_dir_candidates(uid) {
            if self.inner.fs.all_dirs(&dir).iter().all(|d| !d.is_dir()) {
                continue;
            }
            match self.remove_dir(&dir) {
                Ok(()) => {
                    if let Ok(found) = result.as_mut() {
                        *found = true;
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        result
    }

    fn remove_dir(&self, dir: &str) -> Result<(), CgroupError> {
        let fs = &self.inner.fs;
        let pids = fs.pids(dir);
        if !pids.is_empty() {
            tracing::warn!(cgroup = %dir, ?pids, "killing processes left in a removed pod's cgroup");
            for pid in &pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        match fs.remove(dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                let left = fs.pids(dir);
                if left.is_empty() {
                    Err(e)
                } else {
                    Err(CgroupError::Busy {
                        dir: dir.to_string(),
                        pids: left,
                    })
                }
            }
        }
    }
}

/// `kubepods`' settings under `enforceNodeAllocatable: [pods]`: the node's capacity minus
/// `kubeReserved` and `systemReserved` (kubelet's `getNodeAllocatableAbsolute`).
pub fn node_allocatable(
    cpus: u32,
    memory_bytes: Option<u64>,
    kube_reserved: &crate::node::resources::ResourceList,
    system_reserved: &crate::node::resources::ResourceList,
) -> ResourceConfig {
    let reserved = |name: &str, milli: bool| -> i64 {
        [kube_reserved, system_reserved]
            .iter()
            .filter_map(|list| list.get(name))
            .map(|q| if milli { q.milli_value() } else { q.value() })
            .sum()
    };
    let cpu = (i64::from(cpus) * 1000 - reserved("cpu", true)).max(0);
    let memory = memory_bytes
        .and_then(|m| i64::try_from(m).ok())
        .map_or(0, |m| (m - reserved("memory", false)).max(0));
    resource_config::for_node_allocatable(cpu, memory)
}
