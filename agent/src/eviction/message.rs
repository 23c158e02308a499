//! kubelet's eviction message (`evictionMessage` in `helpers.go`): the starved resource, the
//! threshold and what was available, and every container using more than it requests.

use k8s_openapi::api::core::v1::{Container, Pod};

use super::ranking::memory_usage;
use super::thresholds::{Observations, Resource, Threshold};
use crate::quantity::Quantity;
use crate::stats::types::PodStats;

/// `getThresholdMetInfo`: the first threshold of the starved resource with an observation, as
/// (threshold quantity, available).
fn threshold_met_info(
    resource: Resource,
    thresholds: &[Threshold],
    observations: &Observations,
) -> Option<(Quantity, Quantity)> {
    thresholds
        .iter()
        .filter(|t| t.signal.resource() == resource)
        .find_map(|t| {
            let observed = observations.get(&t.signal)?;
            Some((t.value.quantity(&observed.capacity), observed.available))
        })
}

fn request_of(container: &Container, resource: Resource) -> Quantity {
    container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get(resource.as_str()))
        .and_then(|q| Quantity::from_api(q).ok())
        .unwrap_or_default()
}

/// The message a pod is evicted with, e.g. `The node was low on resource: memory. Threshold
/// quantity: 100Mi, available: 80Mi. Container hog was using 150Mi, request is 0, has larger
/// consumption of memory. `.
pub fn eviction_message(
    resource: Resource,
    pod: &Pod,
    stats: Option<&PodStats>,
    thresholds: &[Threshold],
    observations: &Observations,
) -> String {
    let mut message = format!("The node was low on resource: {}. ", resource.as_str());
    if let Some((quantity, available)) = threshold_met_info(resource, thresholds, observations) {
        message.push_str(&format!(
            "Threshold quantity: {quantity}, available: {available}. "
        ));
    }
    let Some(stats) = stats else {
        return message;
    };
    let spec = pod.spec.clone().unwrap_or_default();
    // Pod-level resources: the pod's own request and use of memory.
    if resource == Resource::Memory
        && let Some(request) = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory"))
        && stats.memory.is_some()
    {
        let request = Quantity::from_api(request).unwrap_or_default();
        message.push_str(&format!(
            "Pod {} was using {}, request is {request}, has larger consumption of {}. ",
            pod.metadata.name.as_deref().unwrap_or_default(),
            memory_usage(stats.memory.as_ref()),
            resource.as_str()
        ));
    }
    let containers: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    for container_stats in &stats.containers {
        let Some(container) = containers.iter().find(|c| c.name == container_stats.name) else {
            continue;
        };
        let usage = match resource {
            Resource::EphemeralStorage => {
                let used = |fs: &Option<crate::stats::types::FsStats>| {
                    fs.as_ref().and_then(|f| f.used_bytes)
                };
                match (used(&container_stats.rootfs), used(&container_stats.logs)) {
                    (Some(root), Some(logs)) => Some(Quantity::bytes(root.saturating_add(logs))),
                    _ => None,
                }
            }
            Resource::Memory => container_stats
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes)
                .map(Quantity::bytes),
            Resource::Inodes | Resource::Pids => None,
        };
        let request = request_of(container, resource);
        if let Some(usage) = usage
            && usage > request
        {
            message.push_str(&format!(
                "Container {} was using {usage}, request is {request}, has larger consumption of {}. ",
                container.name,
                resource.as_str()
            ));
        }
    }
    message
}
