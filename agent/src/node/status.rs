//! The Node object and its status, built as kubelet's `initialNode`, node status setters
//! (`pkg/kubelet/nodestatus`) and `nodeStatusHasChanged` build and compare them. Everything here is
//! pure: the loop in `mod.rs` gathers an [`Observation`] and calls these functions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSwapStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use mk_cri::api;
use serde_json::{Map, Value};

use super::host::{FsStats, HostInfo};
use super::resources::{self, EvictionThresholds, Pressure, ResourceConfigError, ResourceList};
use crate::config::KubeletConfiguration;
use crate::quantity::{Format, Quantity};

pub use crate::version::KUBELET_VERSION;
/// kubelet's `--port` default.
pub const DEFAULT_KUBELET_PORT: i32 = 10250;
/// kubelet's `nodeStatusMaxImages` default.
pub const MAX_IMAGES: usize = 50;
/// kubelet's `MaxNamesPerImageInNodeStatus`.
pub const MAX_NAMES_PER_IMAGE: usize = 5;

pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_OS: &str = "kubernetes.io/os";
pub const LABEL_ARCH: &str = "kubernetes.io/arch";
pub const LABEL_BETA_OS: &str = "beta.kubernetes.io/os";
pub const LABEL_BETA_ARCH: &str = "beta.kubernetes.io/arch";
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
pub const LABEL_BETA_INSTANCE_TYPE: &str = "beta.kubernetes.io/instance-type";
/// Labels kubelet keeps in line with what it would register (`updateDefaultLabels`).
pub const DEFAULT_LABELS: [&str; 12] = [
    LABEL_HOSTNAME,
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    LABEL_OS,
    LABEL_ARCH,
    "node.kubernetes.io/windows-build",
    LABEL_INSTANCE_TYPE,
    LABEL_BETA_INSTANCE_TYPE,
    LABEL_BETA_OS,
    LABEL_BETA_ARCH,
];
/// Set at registration so the attach/detach controller manages this node's volumes.
pub const ANNOTATION_ATTACH_DETACH: &str = "volumes.kubernetes.io/controller-managed-attach-detach";
pub const OPERATING_SYSTEM: &str = "linux";

pub const MEMORY_PRESSURE: &str = "MemoryPressure";
pub const DISK_PRESSURE: &str = "DiskPressure";
pub const PID_PRESSURE: &str = "PIDPressure";
pub const READY: &str = "Ready";

/// What describes this node for its whole life: names, labels, taints and the reservations.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    pub node_name: String,
    /// `--node-labels`: applied at registration only, as kubelet does.
    pub labels: BTreeMap<String, String>,
    /// `node.kubernetes.io/instance-type` (and its beta twin) when known.
    pub instance_type: Option<String>,
    /// `registerWithTaints`.
    pub taints: Vec<Taint>,
    /// `daemonEndpoints.kubeletEndpoint.Port`.
    pub kubelet_port: i32,
    pub max_pods: u32,
    pub kube_reserved: ResourceList,
    pub system_reserved: ResourceList,
    pub eviction_hard: EvictionThresholds,
    /// Go's `GOARCH` name of this machine.
    pub architecture: String,
}

impl NodeSettings {
    /// Reads `maxPods`, `registerWithTaints`, `kubeReserved`, `systemReserved` and `evictionHard`.
    pub fn from_config(
        config: &KubeletConfiguration,
        node_name: &str,
        labels: BTreeMap<String, String>,
        instance_type: Option<String>,
        kubelet_port: i32,
    ) -> Result<Self, ResourceConfigError> {
        Ok(Self {
            node_name: node_name.to_string(),
            labels,
            instance_type,
            taints: config.register_with_taints.clone(),
            kubelet_port,
            max_pods: config.max_pods,
            kube_reserved: resources::parse_reserved("kubeReserved", &config.kube_reserved)?,
            system_reserved: resources::parse_reserved("systemReserved", &config.system_reserved)?,
            eviction_hard: EvictionThresholds::parse(&config.eviction_hard)?,
            architecture: super::host::architecture(),
        })
    }
}

/// One sample of everything the status is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub host: HostInfo,
    /// The root directory's filesystem (ephemeral-storage capacity).
    pub fs: Option<FsStats>,
    pub node_ip: Option<IpAddr>,
    /// `containerd://1.7.24`; `None` keeps the previously reported value.
    pub runtime_version: Option<String>,
    /// `None` keeps the previously reported list.
    pub images: Option<Vec<ContainerImage>>,
    /// Pressure conditions to report (thresholds met, with the transition period applied).
    pub pressure: Pressure,
    /// Why the node is not ready (runtime, network, PLEG), in kubelet's order.
    pub not_ready: Vec<String>,
}

fn time(now: Timestamp) -> Time {
    // metav1.Time has second precision.
    Time(Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// The labels kubelet registers: hostname, os and arch (stable and beta), then `--node-labels`,
/// then the instance type.
pub fn registration_labels(settings: &NodeSettings) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        (LABEL_HOSTNAME, settings.node_name.as_str()),
        (LABEL_OS, OPERATING_SYSTEM),
        (LABEL_ARCH, settings.architecture.as_str()),
        (LABEL_BETA_OS, OPERATING_SYSTEM),
        (LABEL_BETA_ARCH, settings.architecture.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    labels.extend(settings.labels.clone());
    if let Some(instance_type) = &settings.instance_type {
        labels.insert(LABEL_INSTANCE_TYPE.into(), instance_type.clone());
        labels.insert(LABEL_BETA_INSTANCE_TYPE.into(), instance_type.clone());
    }
    labels
}

/// The Node kubelet creates when it registers (`initialNode`): labels, the attach/detach
/// annotation, `registerWithTaints`, and a full status.
pub fn node_for_registration(
    settings: &NodeSettings,
    observed: &Observation,
    now: Timestamp,
) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(settings.node_name.clone()),
            labels: Some(registration_labels(settings)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_ATTACH_DETACH.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!settings.taints.is_empty()).then(|| settings.taints.clone()),
            ..Default::default()
        }),
        status: Some(node_status(&NodeStatus::default(), settings, observed, now)),
    }
}

/// `updateDefaultLabels`: the default labels of `initial` that `existing` lacks or has with another
/// value (`None` = remove an empty one). `--node-labels` and taints are not reconciled, as in kubelet.
pub fn default_label_updates(initial: &Node, existing: &Node) -> BTreeMap<String, Option<String>> {
    let empty = BTreeMap::new();
    let wanted = initial.metadata.labels.as_ref().unwrap_or(&empty);
    let have = existing.metadata.labels.as_ref().unwrap_or(&empty);
    DEFAULT_LABELS
        .iter()
        .filter_map(|label| {
            let value = wanted.get(*label)?;
            if have.get(*label) == Some(value) {
                return None;
            }
            Some((
                label.to_string(),
                (!value.is_empty()).then(|| value.clone()),
            ))
        })
        .collect()
}

/// `updateNode`: the os/arch labels to restore on every status update.
pub fn required_label_fixes(node: &Node, architecture: &str) -> BTreeMap<String, Option<String>> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    [(LABEL_OS, OPERATING_SYSTEM), (LABEL_ARCH, architecture)]
        .into_iter()
        .filter(|(k, v)| labels.get(*k).map(String::as_str) != Some(*v))
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect()
}

/// `nodestatus.Images`: the largest images first, at most 50, each with at most 5 names (digests
/// before tags).
pub fn node_images(images: &[api::Image]) -> Vec<ContainerImage> {
    let mut sorted: Vec<&api::Image> = images.iter().collect();
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| b.id.cmp(&a.id)));
    sorted
        .into_iter()
        .take(MAX_IMAGES)
        .map(|image| ContainerImage {
            names: Some(
                image
                    .repo_digests
                    .iter()
                    .chain(&image.repo_tags)
                    .take(MAX_NAMES_PER_IMAGE)
                    .cloned()
                    .collect(),
            ),
            size_bytes: Some(i64::try_from(image.size).unwrap_or(i64::MAX)),
        })
        .collect()
}

/// `errors.NewAggregate(...).Error()`: one message as is, several deduplicated in brackets.
pub fn aggregate(errors: &[String]) -> Option<String> {
    let mut seen = BTreeSet::new();
    let unique: Vec<&str> = errors
        .iter()
        .filter(|e| seen.insert(e.as_str()))
        .map(String::as_str)
        .collect();
    match unique.as_slice() {
        [] => None,
        [one] => Some((*one).to_string()),
        many => Some(format!("[{}]", many.join(", "))),
    }
}

fn parse_list(map: &BTreeMap<String, ApiQuantity>) -> ResourceList {
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), Quantity::from_api(v).ok()?)))
        .collect()
}

/// Computes the status from the previous one (as the server has it) and an observation: every
/// setter of kubelet's `defaultNodeStatusFuncs` that applies to this agent. Fields this agent does
/// not own (volumes, other conditions, extended resources) are kept.
pub fn node_status(
    previous: &NodeStatus,
    settings: &NodeSettings,
    observed: &Observation,
    now: Timestamp,
) -> NodeStatus {
    let now = time(now);
    let mut status = previous.clone();

    // NodeAddress: InternalIP, then Hostname.
    let mut addresses = Vec::new();
    if let Some(ip) = observed.node_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: settings.node_name.clone(),
    });
    status.addresses = Some(addresses);

    // MachineInfo: capacity, then allocatable for every capacity entry.
    let mut capacity = status.capacity.take().unwrap_or_default();
    for (name, q) in resources::capacity(&observed.host, observed.fs.as_ref(), settings.max_pods) {
        capacity.insert(name, q.to_api());
    }
    let mut allocatable = status.allocatable.take().unwrap_or_default();
    for (name, q) in resources::allocatable(
        &parse_list(&capacity),
        &settings.kube_reserved,
        &settings.system_reserved,
        &settings.eviction_hard,
    ) {
        allocatable.insert(name, q.to_api());
    }
    let missing: Vec<&str> = [
        resources::CPU,
        resources::MEMORY,
        resources::PODS,
        resources::EPHEMERAL_STORAGE,
    ]
    .into_iter()
    .filter(|r| !capacity.contains_key(*r))
    .collect();
    status.capacity = Some(capacity);
    status.allocatable = Some(allocatable);

    // MachineInfo + VersionInfo.
    let previous_info = previous.node_info.clone().unwrap_or_default();
    let host = &observed.host;
    status.node_info = Some(NodeSystemInfo {
        machine_id: host.machine_id.clone(),
        system_uuid: host.system_uuid.clone(),
        boot_id: host.boot_id.clone(),
        kernel_version: host.kernel_version.clone(),
        os_image: host.os_image.clone(),
        container_runtime_version: observed
            .runtime_version
            .clone()
            .unwrap_or(previous_info.container_runtime_version),
        kubelet_version: KUBELET_VERSION.into(),
        kube_proxy_version: String::new(),
        operating_system: OPERATING_SYSTEM.into(),
        architecture: settings.architecture.clone(),
        // Kubelet leaves `swap` out on a host without swap: the API server refuses a capacity of 0
        // ("must be greater than zero").
        swap: host
            .swap_bytes
            .filter(|bytes| *bytes > 0)
            .map(|bytes| NodeSwapStatus {
                capacity: Some(i64::try_from(bytes).unwrap_or(i64::MAX)),
            }),
        ..previous_info
    });

    // DaemonEndpoints.
    status.daemon_endpoints = Some(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint {
            port: settings.kubelet_port,
        }),
    });

    // Images.
    if let Some(images) = &observed.images {
        status.images = Some(images.clone());
    }

    // MemoryPressure, DiskPressure, PIDPressure, Ready.
    let mut conditions = status.conditions.take().unwrap_or_default();
    let pressure = [
        (
            MEMORY_PRESSURE,
            observed.pressure.memory,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        (
            DISK_PRESSURE,
            observed.pressure.disk,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        (
            PID_PRESSURE,
            observed.pressure.pid,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
    ];
    for (kind, under_pressure, (true_reason, true_message), (false_reason, false_message)) in
        pressure
    {
        let (wanted, reason, message) = if under_pressure {
            ("True", true_reason, true_message)
        } else {
            ("False", false_reason, false_message)
        };
        let index = match conditions.iter().position(|c| c.type_ == kind) {
            Some(i) => i,
            None => {
                conditions.push(NodeCondition {
                    type_: kind.into(),
                    status: "Unknown".into(),
                    ..Default::default()
                });
                conditions.len() - 1
            }
        };
        let condition = &mut conditions[index];
        condition.last_heartbeat_time = Some(now.clone());
        if condition.status != wanted {
            condition.status = wanted.into();
            condition.reason = Some(reason.into());
            condition.message = Some(message.into());
            condition.last_transition_time = Some(now.clone());
        }
    }

    let mut errors = observed.not_ready.clone();
    if !missing.is_empty() {
        errors.push(format!(
            "missing node capacity for resources: {}",
            missing.join(", ")
        ));
    }
    let mut ready = match aggregate(&errors) {
        None => NodeCondition {
            type_: READY.into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("kubelet is posting ready status".into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: None,
        },
        Some(message) => NodeCondition {
            type_: READY.into(),
            status: "False".into(),
            reason: Some("KubeletNotReady".into()),
            message: Some(message),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: None,
        },
    };
    match conditions.iter_mut().find(|c| c.type_ == READY) {
        Some(existing) => {
            ready.last_transition_time = if existing.status == ready.status {
                existing.last_transition_time.clone()
            } else {
                Some(now.clone())
            };
            *existing = ready;
        }
        None => {
            ready.last_transition_time = Some(now);
            conditions.push(ready);
        }
    }
    status.conditions = Some(conditions);
    status
}

fn non_empty<T: Default + PartialEq>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

fn canonical_list(
    map: Option<BTreeMap<String, ApiQuantity>>,
) -> Option<BTreeMap<String, ApiQuantity>> {
    non_empty(map).map(|m| {
        m.into_iter()
            .map(|(k, v)| {
                // One spelling per value, whatever format the server or we used.
                let canonical = Quantity::from_api(&v)
                    .map(|q| q.with_format(Format::DecimalSI).to_api())
                    .unwrap_or(v);
                (k, canonical)
            })
            .collect()
    })
}

/// The status without conditions, with quantities in one spelling per value and empty lists absent,
/// so that `==` is `apiequality.Semantic.DeepEqual`.
fn comparable(status: &NodeStatus) -> NodeStatus {
    let mut s = status.clone();
    s.conditions = None;
    s.capacity = canonical_list(s.capacity);
    s.allocatable = canonical_list(s.allocatable);
    s.addresses = non_empty(s.addresses);
    s.images = non_empty(s.images);
    s.volumes_attached = non_empty(s.volumes_attached);
    s.volumes_in_use = non_empty(s.volumes_in_use);
    s.runtime_handlers = non_empty(s.runtime_handlers);
    s.declared_features = non_empty(s.declared_features);
    s
}

fn comparable_conditions(status: &NodeStatus) -> Vec<NodeCondition> {
    let mut conditions = status.conditions.clone().unwrap_or_default();
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    for c in &mut conditions {
        c.last_heartbeat_time = None;
        c.reason = non_empty(c.reason.take());
        c.message = non_empty(c.message.take());
    }
    conditions
}

/// `nodeStatusHasChanged`: anything but the conditions' heartbeat times differs.
pub fn status_changed(old: &NodeStatus, new: &NodeStatus) -> bool {
    comparable_conditions(old) != comparable_conditions(new) || comparable(old) != comparable(new)
}

/// kubelet's patch decision: the status changed (heartbeats aside), or `nodeStatusReportFrequency`
/// passed since the last report (`None`: never reported).
pub fn status_changed_enough(
    old: &NodeStatus,
    new: &NodeStatus,
    since_last_report: Option<Duration>,
    report_frequency: Duration,
) -> bool {
    status_changed(old, new) || since_last_report.is_none_or(|d| d >= report_frequency)
}

/// A strategic merge patch for `nodes/<name>/status` carrying the fields this agent owns: the
/// addresses (replacing the list when it changed, as `PatchNodeStatus` does, since its merge key is
/// wrong), capacity and allocatable entries, its four conditions (merged by type), daemon endpoints,
/// node info and images; plus label changes (`None` removes).
pub fn status_patch(
    old: &NodeStatus,
    new: &NodeStatus,
    labels: &BTreeMap<String, Option<String>>,
) -> Result<Value, serde_json::Error> {
    let mut status = Map::new();
    if let Some(addresses) = &new.addresses {
        let mut list = serde_json::to_value(addresses)?;
        let old_addresses = old.addresses.as_deref().unwrap_or_default();
        if !old_addresses.is_empty()
            && old_addresses != addresses.as_slice()
            && let Value::Array(items) = &mut list
        {
            items.push(serde_json::json!({"$patch": "replace"}));
        }
        status.insert("addresses".into(), list);
    }
    if let Some(capacity) = &new.capacity {
        status.insert("capacity".into(), serde_json::to_value(capacity)?);
    }
    if let Some(allocatable) = &new.allocatable {
        status.insert("allocatable".into(), serde_json::to_value(allocatable)?);
    }
    let ours: Vec<&NodeCondition> = new
        .conditions
        .iter()
        .flatten()
        .filter(|c| {
            [MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE, READY].contains(&c.type_.as_str())
        })
        .collect();
    status.insert("conditions".into(), serde_json::to_value(ours)?);
    if let Some(endpoints) = &new.daemon_endpoints {
        status.insert("daemonEndpoints".into(), serde_json::to_value(endpoints)?);
    }
    if let Some(info) = &new.node_info {
        status.insert("nodeInfo".into(), serde_json::to_value(info)?);
    }
    if let Some(images) = &new.images {
        status.insert("images".into(), serde_json::to_value(images)?);
    }
    let mut patch = Map::new();
    if !labels.is_empty() {
        patch.insert(
            "metadata".into(),
            serde_json::json!({ "labels": serde_json::to_value(labels)? }),
        );
    }
    patch.insert("status".into(), Value::Object(status));
    Ok(Value::Object(patch))
}

/// A patch that only changes labels (re-registration of an existing node).
pub fn labels_patch(labels: &BTreeMap<String, Option<String>>) -> Result<Value, serde_json::Error> {
    Ok(serde_json::json!({ "metadata": { "labels": serde_json::to_value(labels)? } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::host::HostInfo;

    const GIB: u64 = 1 << 30;

    fn settings() -> NodeSettings {
        let config = KubeletConfiguration {
            kube_reserved: BTreeMap::from([("cpu".into(), "100m".into())]),
            register_with_taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("edge".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            ..Default::default()
        };
        let mut s = NodeSettings::from_config(
            &config,
            "node-a",
            BTreeMap::from([("role".to_string(), "edge".to_string())]),
            None,
            DEFAULT_KUBELET_PORT,
        )
        .expect("valid settings");
        s.architecture = "amd64".into();
        s
    }

    fn observation() -> Observation {
        Observation {
            host: HostInfo {
                cpus: 4,
                memory_bytes: Some(16 * GIB),
                swap_bytes: Some(0),
                kernel_version: "6.1.0-18-amd64".into(),
                os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                machine_id: "mid".into(),
                boot_id: "bid".into(),
                system_uuid: String::new(),
                architecture: "amd64".into(),
            },
            fs: Some(FsStats {
                capacity_bytes: 100 * GIB,
                available_bytes: 60 * GIB,
                inodes: 100,
                inodes_free: 90,
            }),
            node_ip: Some("192.168.1.20".parse().expect("ip")),
            runtime_version: Some("containerd://1.7.24".into()),
            images: Some(Vec::new()),
            pressure: Pressure::default(),
            not_ready: Vec::new(),
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).expect("timestamp")
    }

    fn condition<'a>(status: &'a NodeStatus, kind: &str) -> &'a NodeCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == kind)
            .unwrap_or_else(|| panic!("no {kind} condition"))
    }

    #[test]
    fn swap_is_left_out_without_swap_and_reported_with_it() {
        let mut observed = observation();
        let node = node_for_registration(&settings(), &observed, at(0));
        let info = node.status.and_then(|s| s.node_info).expect("nodeInfo");
        assert_eq!(info.swap, None, "a host without swap reports none");
        observed.host.swap_bytes = Some(2 * GIB);
        let node = node_for_registration(&settings(), &observed, at(0));
        let info = node.status.and_then(|s| s.node_info).expect("nodeInfo");
        assert_eq!(
            info.swap.and_then(|s| s.capacity),
            Some(i64::try_from(2 * GIB).expect("fits"))
        );
    }

    #[test]
    fn registration_node_has_kubelets_labels_taints_and_status() {
        let node = node_for_registration(&settings(), &observation(), at(0));
        let labels = node.metadata.labels.clone().expect("labels");
        assert_eq!(
            labels,
            BTreeMap::from([
                ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("kubernetes.io/hostname".to_string(), "node-a".to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
                ("role".to_string(), "edge".to_string()),
            ])
        );
        assert_eq!(
            node.metadata.annotations.expect("annotations")[ANNOTATION_ATTACH_DETACH],
            "true"
        );
        let taints = node.spec.and_then(|s| s.taints).expect("taints");
        assert_eq!(taints[0].key, "dedicated");
        let status = node.status.expect("status");
        let strings = |m: &Option<BTreeMap<String, ApiQuantity>>| -> BTreeMap<String, String> {
            m.iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect()
        };
        assert_eq!(
            strings(&status.capacity),
            BTreeMap::from([
                ("cpu".to_string(), "4".to_string()),
                ("ephemeral-storage".to_string(), "100Gi".to_string()),
                ("memory".to_string(), "16Gi".to_string()),
                ("pods".to_string(), "110".to_string()),
            ])
        );
        let alloc = strings(&status.allocatable);
        assert_eq!(alloc["cpu"], "3900m");
        assert_eq!(
            alloc["memory"], "16284Mi",
            "16Gi minus the default 100Mi threshold"
        );
        assert_eq!(alloc["pods"], "110");
        let types: Vec<&str> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        );
        let mem = condition(&status, MEMORY_PRESSURE);
        assert_eq!(
            (
                mem.status.as_str(),
                mem.reason.as_deref(),
                mem.message.as_deref()
            ),
            (
                "False",
                Some("KubeletHasSufficientMemory"),
                Some("kubelet has sufficient memory available")
            )
        );
        let disk = condition(&status, DISK_PRESSURE);
        assert_eq!(disk.reason.as_deref(), Some("KubeletHasNoDiskPressure"));
        assert_eq!(
            disk.message.as_deref(),
            Some("kubelet has no disk pressure")
        );
        let pid = condition(&status, PID_PRESSURE);
        assert_eq!(pid.reason.as_deref(), Some("KubeletHasSufficientPID"));
        assert_eq!(
            pid.message.as_deref(),
            Some("kubelet has sufficient PID available")
        );
        let ready = condition(&status, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_deref(),
                ready.message.as_deref()
            ),
            (
                "True",
                Some("KubeletReady"),
                Some("kubelet is posting ready status")
            )
        );
        assert_eq!(ready.last_transition_time, Some(Time(at(0))));
        let info = status.node_info.expect("nodeInfo");
        assert_eq!(info.container_runtime_version, "containerd://1.7.24");
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.operating_system, "linux");
        assert_eq!(info.architecture, "amd64");
        assert_eq!(info.kube_proxy_version, "");
        assert_eq!(info.os_image, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            status.addresses.expect("addresses"),
            vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "192.168.1.20".into()
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "node-a".into()
                },
            ]
        );
        assert_eq!(
            status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10250)
        );
    }

    #[test]
    fn instance_type_and_node_labels() {
        let mut s = settings();
        assert!(!registration_labels(&s).contains_key(LABEL_INSTANCE_TYPE));
        s.instance_type = Some("m5.large".into());
        s.labels.insert(LABEL_OS.into(), "custom".into());
        let labels = registration_labels(&s);
        assert_eq!(labels[LABEL_INSTANCE_TYPE], "m5.large");
        assert_eq!(labels[LABEL_BETA_INSTANCE_TYPE], "m5.large");
        assert_eq!(
            labels[LABEL_OS], "custom",
            "--node-labels override defaults, as in kubelet"
        );
    }

    #[test]
    fn kubelet_version_is_semver_with_build_metadata() {
        let rest = KUBELET_VERSION
            .strip_prefix("v1.34.0+mini.")
            .expect("prefix");
        assert_eq!(rest, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn transition_time_is_kept_while_status_is_unchanged() {
        let s = settings();
        let first = node_status(&NodeStatus::default(), &s, &observation(), at(0));
        let second = node_status(&first, &s, &observation(), at(10));
        for kind in [MEMORY_PRESSURE, DISK_PRESSURE, PID_PRESSURE, READY] {
            let c = condition(&second, kind);
            assert_eq!(c.last_transition_time, Some(Time(at(0))), "{kind}");
            assert_eq!(c.last_heartbeat_time, Some(Time(at(10))), "{kind}");
        }
        // Memory pressure starts: MemoryPressure transitions, the others keep their times.
        let mut pressured = observation();
        pressured.pressure.memory = true;
        let third = node_status(&second, &s, &pressured, at(20));
        let mem = condition(&third, MEMORY_PRESSURE);
        assert_eq!(mem.status, "True");
        assert_eq!(mem.reason.as_deref(), Some("KubeletHasInsufficientMemory"));
        assert_eq!(
            mem.message.as_deref(),
            Some("kubelet has insufficient memory available")
        );
        assert_eq!(mem.last_transition_time, Some(Time(at(20))));
        assert_eq!(
            condition(&third, DISK_PRESSURE).last_transition_time,
            Some(Time(at(0)))
        );
        let mut disk = observation();
        disk.pressure = Pressure {
            disk: true,
            pid: true,
            memory: false,
        };
        let fourth = node_status(&third, &s, &disk, at(30));
        assert_eq!(
            condition(&fourth, DISK_PRESSURE).reason.as_deref(),
            Some("KubeletHasDiskPressure")
        );
        assert_eq!(
            condition(&fourth, PID_PRESSURE).reason.as_deref(),
            Some("KubeletHasInsufficientPID")
        );
        assert_eq!(
            condition(&fourth, MEMORY_PRESSURE).last_transition_time,
            Some(Time(at(30)))
        );
    }

    #[test]
    fn ready_false_names_the_cause() {
        let s = settings();
        let ok = node_status(&NodeStatus::default(), &s, &observation(), at(0));
        let mut down = observation();
        down.not_ready = vec!["container runtime is down".into()];
        let not_ready = node_status(&ok, &s, &down, at(10));
        let ready = condition(&not_ready, READY);
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_deref(),
                ready.message.as_deref()
            ),
            (
                "False",
                Some("KubeletNotReady"),
                Some("container runtime is down")
            )
        );
        assert_eq!(ready.last_transition_time, Some(Time(at(10))));

        let mut several = observation();
        several.not_ready = vec![
            "PLEG is not healthy: pleg has yet to be successful".into(),
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized".into(),
        ];
        let still = node_status(&not_ready, &s, &several, at(20));
        let ready = condition(&still, READY);
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "[PLEG is not healthy: pleg has yet to be successful, container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni plugin not initialized]"
            )
        );
        assert_eq!(
            ready.last_transition_time,
            Some(Time(at(10))),
            "still False: no transition"
        );

        let mut no_memory = observation();
        no_memory.host.memory_bytes = None;
        no_memory.fs = None;
        let missing = node_status(&NodeStatus::default(), &s, &no_memory, at(0));
        assert_eq!(
            condition(&missing, READY).message.as_deref(),
            Some("missing node capacity for resources: memory, ephemeral-storage")
        );
        let back = node_status(&still, &s, &observation(), at(30));
        assert_eq!(condition(&back, READY).status, "True");
        assert_eq!(
            condition(&back, READY).last_transition_time,
            Some(Time(at(30)))
        );
    }

    #[test]
    fn aggregate_deduplicates() {
        assert_eq!(aggregate(&[]), None);
        assert_eq!(aggregate(&["a".into()]), Some("a".into()));
        assert_eq!(aggregate(&["a".into(), "a".into()]), Some("a".into()));
        assert_eq!(
            aggregate(&["a".into(), "b".into(), "a".into()]),
            Some("[a, b]".into())
        );
    }

    #[test]
    fn other_writers_fields_are_kept() {
        let s = settings();
        let mut previous = node_status(&NodeStatus::default(), &s, &observation(), at(0));
        previous
            .conditions
            .get_or_insert_default()
            .push(NodeCondition {
                type_: "NetworkUnavailable".into(),
                status: "False".into(),
                reason: Some("RouteCreated".into()),
                ..Default::default()
            });
        for list in [&mut previous.capacity, &mut previous.allocatable] {
            list.get_or_insert_default()
                .insert("example.com/gpu".into(), ApiQuantity("2".into()));
        }
        previous.volumes_in_use = Some(vec!["kubernetes.io/csi/x".into()]);
        let next = node_status(&previous, &s, &observation(), at(10));
        assert_eq!(
            condition(&next, "NetworkUnavailable").reason.as_deref(),
            Some("RouteCreated")
        );
        assert_eq!(
            next.allocatable.as_ref().expect("alloc")["example.com/gpu"].0,
            "2"
        );
        assert_eq!(next.volumes_in_use, previous.volumes_in_use);
        assert_eq!(comparable(&previous), comparable(&next));
        assert_eq!(
            comparable_conditions(&previous),
            comparable_conditions(&next)
        );
        assert!(!status_changed(&previous, &next), "only heartbeats moved");
    }

    #[test]
    fn changes_ignore_heartbeats_but_not_anything_else() {
        let s = settings();
        let first = node_status(&NodeStatus::default(), &s, &observation(), at(0));
        let same = node_status(&first, &s, &observation(), at(10));
        assert_ne!(first, same, "heartbeats differ");
        assert!(!status_changed(&first, &same));
        assert!(!status_changed_enough(
            &first,
            &same,
            Some(Duration::from_secs(10)),
            Duration::from_secs(300)
        ));
        assert!(status_changed_enough(
            &first,
            &same,
            Some(Duration::from_secs(300)),
            Duration::from_secs(300)
        ));
        assert!(status_changed_enough(
            &first,
            &same,
            None,
            Duration::from_secs(300)
        ));

        let mut other_ip = observation();
        other_ip.node_ip = Some("10.0.0.9".parse().expect("ip"));
        assert!(status_changed(
            &first,
            &node_status(&first, &s, &other_ip, at(10))
        ));
        let mut less_disk = observation();
        if let Some(fs) = less_disk.fs.as_mut() {
            fs.capacity_bytes -= GIB;
        }
        assert!(status_changed(
            &first,
            &node_status(&first, &s, &less_disk, at(10))
        ));
        let mut not_ready = observation();
        not_ready.not_ready = vec!["container runtime is down".into()];
        assert!(status_changed(
            &first,
            &node_status(&first, &s, &not_ready, at(10))
        ));

        // Semantic equality: the server may spell quantities differently; order of conditions too.
        let mut respelled = same.clone();
        if let Some(cap) = respelled.capacity.as_mut() {
            cap.insert("memory".into(), ApiQuantity("17179869184".into()));
        }
        if let Some(conditions) = respelled.conditions.as_mut() {
            conditions.reverse();
        }
        respelled.images = None;
        assert!(!status_changed(&first, &respelled));
    }

    #[test]
    fn label_reconciliation() {
        let s = settings();
        let initial = node_for_registration(&s, &observation(), at(0));
        let mut existing = initial.clone();
        assert!(default_label_updates(&initial, &existing).is_empty());
        let labels = existing.metadata.labels.get_or_insert_default();
        labels.insert(LABEL_ARCH.into(), "arm64".into());
        labels.remove(LABEL_HOSTNAME);
        labels.remove("role");
        assert_eq!(
            default_label_updates(&initial, &existing),
            BTreeMap::from([
                (LABEL_ARCH.to_string(), Some("amd64".to_string())),
                (LABEL_HOSTNAME.to_string(), Some("node-a".to_string())),
            ]),
            "--node-labels are not reconciled"
        );
        assert_eq!(
            required_label_fixes(&existing, "amd64"),
            BTreeMap::from([(LABEL_ARCH.to_string(), Some("amd64".to_string()))])
        );
    }

    #[test]
    fn patch_carries_owned_fields_and_replaces_changed_addresses() {
        let s = settings();
        let mut old = node_status(&NodeStatus::default(), &s, &observation(), at(0));
        old.conditions.get_or_insert_default().push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            ..Default::default()
        });
        old.volumes_in_use = Some(vec!["v".into()]);
        let mut moved = observation();
        moved.node_ip = Some("10.0.0.9".parse().expect("ip"));
        let new = node_status(&old, &s, &moved, at(10));
        let labels = BTreeMap::from([(LABEL_OS.to_string(), Some("linux".to_string()))]);
        let patch = status_patch(&old, &new, &labels).expect("patch");
        assert_eq!(patch["metadata"]["labels"]["kubernetes.io/os"], "linux");
        let status = &patch["status"];
        assert_eq!(status["addresses"][0]["address"], "10.0.0.9");
        assert_eq!(status["addresses"][2]["$patch"], "replace");
        let types: Vec<&str> = status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .filter_map(|c| c["type"].as_str())
            .collect();
        assert_eq!(
            types,
            ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
        );
        assert!(status.get("volumesInUse").is_none());
        assert_eq!(status["capacity"]["cpu"], "4");
        assert_eq!(status["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);

        let unchanged = node_status(&new, &s, &moved, at(20));
        let patch = status_patch(&new, &unchanged, &BTreeMap::new()).expect("patch");
        assert!(patch.get("metadata").is_none());
        assert_eq!(
            patch["status"]["addresses"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn images_largest_first_with_five_names() {
        let image = |id: &str, size: u64, tags: usize| api::Image {
            id: id.into(),
            size,
            repo_digests: vec![format!("{id}@sha256:d")],
            repo_tags: (0..tags).map(|i| format!("{id}:{i}")).collect(),
            ..Default::default()
        };
        let list = node_images(&[image("a", 10, 1), image("b", 30, 7), image("c", 10, 0)]);
        let names: Vec<Vec<String>> = list
            .iter()
            .map(|i| i.names.clone().unwrap_or_default())
            .collect();
        assert_eq!(names[0].len(), 5);
        assert_eq!(names[0][0], "b@sha256:d", "digests first");
        assert_eq!(names[1], vec!["c@sha256:d"], "equal sizes: larger ID first");
        assert_eq!(list[2].size_bytes, Some(10));
        let many: Vec<api::Image> = (0..60).map(|i| image(&format!("i{i}"), i, 0)).collect();
        assert_eq!(node_images(&many).len(), 50);
    }
}
