//! Start-up of the node's cgroups (kubelet's `ContainerManager.Start`): the driver checked against
//! the runtime's, then the QoS cgroups with node allocatable on `kubepods`.

use mk_cri::{CriClient, api};

use super::{CgroupDriver, CgroupError, CgroupSettings, PodCgroups, node_allocatable};
use crate::config::KubeletConfiguration;
use crate::node::host::{HostPaths, read_host_info};
use crate::node::resources::parse_reserved;

/// The driver the runtime reports, if it reports one (containerd 1.x and the Docker adapter
/// answer Unimplemented; a runtime that cannot be asked is not a reason to refuse to start).
async fn runtime_driver(cri: &CriClient) -> Option<CgroupDriver> {
    match cri.runtime_config(api::RuntimeConfigRequest {}).await {
        Ok(response) => CgroupDriver::from_runtime_config(&response),
        Err(e) => {
            tracing::info!(error = %e, "the container runtime does not report its cgroup driver; using cgroupDriver as configured");
            None
        }
    }
}

/// The node's cgroup layout as configured (`cgroupDriver`, `cgroupRoot`, `cgroupsPerQOS`), the
/// cgroup filesystem at `mount`.
pub fn settings(
    config: &KubeletConfiguration,
    mount: &std::path::Path,
) -> Result<CgroupSettings, CgroupError> {
    Ok(CgroupSettings {
        driver: config.cgroup_driver.parse()?,
        cgroup_root: config.cgroup_root.clone(),
        cgroups_per_qos: config.cgroups_per_qos,
        mount: mount.to_path_buf(),
    })
}

/// Checks the configured driver against the runtime's and makes the QoS cgroups; the pods'
/// cgroups are made by the pod workers.
pub async fn start(
    cri: &CriClient,
    config: &KubeletConfiguration,
    settings: &CgroupSettings,
) -> Result<PodCgroups, CgroupError> {
    CgroupDriver::reconcile(settings.driver, runtime_driver(cri).await)?;
    let cgroups = PodCgroups::new(settings);
    let allocatable = if config.enforce_node_allocatable.iter().any(|e| e == "pods") {
        let host = read_host_info(&HostPaths::default());
        let kube = parse_reserved("kubeReserved", &config.kube_reserved)?;
        let system = parse_reserved("systemReserved", &config.system_reserved)?;
        Some(node_allocatable(
            host.cpus,
            host.memory_bytes,
            &kube,
            &system,
        ))
    } else {
        None
    };
    cgroups.setup_qos(allocatable)?;
    Ok(cgroups)
}
