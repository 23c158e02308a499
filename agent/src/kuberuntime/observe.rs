//! What the runtime holds for one pod, read through CRI and reduced to the facts pod sync needs.

use std::collections::HashMap;

use mk_cri::api;

use super::labels;
use super::resources::ContainerResources;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub id: String,
    pub attempt: u32,
    pub state: SandboxState,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    /// The `container_state` label value of `kubelet_running_containers`.
    pub fn metric_label(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Exited => "exited",
            ContainerState::Unknown => "unknown",
        }
    }
}

impl From<i32> for ContainerState {
    fn from(cri: i32) -> Self {
        match api::ContainerState::try_from(cri) {
            Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
            Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
            Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
            _ => ContainerState::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub attempt: u32,
    pub state: Option<ContainerState>,
    /// Nanoseconds since the epoch; 0 when not applicable.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
    pub hash: String,
    pub restart_count: i32,
    pub is_init: bool,
    /// The pod's terminationGracePeriodSeconds when the container was created (for pods the agent
    /// no longer has the spec of).
    pub grace_period: Option<i64>,
    /// The cpu and memory settings applied to it: as the runtime reports them, else as the agent
    /// last applied them; `None` when neither is known.
    pub resources: Option<ContainerResources>,
}

impl ObservedContainer {
    pub fn state(&self) -> ContainerState {
        self.state.unwrap_or(ContainerState::Unknown)
    }
}

/// One pod's sandboxes and containers, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPod {
    pub sandboxes: Vec<ObservedSandbox>,
    pub containers: Vec<ObservedContainer>,
}

impl ObservedPod {
    /// True when the runtime holds nothing of the pod.
    pub fn is_empty(&self) -> bool {
        self.sandboxes.is_empty() && self.containers.is_empty()
    }

    pub fn sort(&mut self) {
        self.sandboxes
            .sort_by_key(|s| std::cmp::Reverse((s.created_at, s.attempt)));
        self.containers
            .sort_by_key(|c| std::cmp::Reverse((c.created_at, c.attempt)));
    }

    /// The newest instance of a container, by name.
    pub fn latest(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The instance before the newest one (the source of `lastState`).
    pub fn previous(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().filter(|c| c.name == name).nth(1)
    }

    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }
}

/// A sandbox as ListPodSandbox shows it (its IPs come from PodSandboxStatus).
pub fn sandbox_from_list(s: &api::PodSandbox) -> ObservedSandbox {
    ObservedSandbox {
        id: s.id.clone(),
        attempt: s.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
        state: if s.state == api::PodSandboxState::SandboxReady as i32 {
            SandboxState::Ready
        } else {
            SandboxState::NotReady
        },
        created_at: s.created_at,
        ips: Vec::new(),
    }
}

/// True when a PodSandboxStatus answer is of a sandbox on the node's network (which has no pod IP).
pub fn is_host_network(status: Option<&api::PodSandboxStatus>) -> bool {
    status
        .and_then(|s| s.linux.as_ref())
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == api::NamespaceMode::Node as i32)
}

/// The pod IPs in a PodSandboxStatus answer.
pub fn sandbox_ips(status: Option<api::PodSandboxStatus>) -> Vec<String> {
    let Some(network) = status.and_then(|s| s.network) else {
        return Vec::new();
    };
    std::iter::once(network.ip)
        .chain(network.additional_ips.into_iter().map(|ip| ip.ip))
        .filter(|ip| !ip.is_empty())
        .collect()
}

/// A pod the runtime holds for this node, as its sandbox labels name it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimePod {
    pub namespace: String,
    pub name: String,
}

/// The pods the runtime holds for this node, by UID, with their namespace and name (from the
/// sandbox labels).
pub fn runtime_pods(sandboxes: &[api::PodSandbox], node_name: &str) -> HashMap<String, RuntimePod> {
    sandboxes
        .iter()
        .filter(|s| labels::owned_by(&s.labels, node_name))
        .filter_map(|s| {
            let uid = s.labels.get(labels::POD_UID)?.clone();
            let label = |key: &str| s.labels.get(key).cloned().unwrap_or_default();
            Some((
                uid,
                RuntimePod {
                    namespace: label(labels::POD_NAMESPACE),
                    name: label(labels::POD_NAME),
                },
            ))
        })
        .collect()
}

/// A container as ContainerStatus reports it, in the sandbox `sandbox_id`.
pub fn from_status(status: api::ContainerStatus, sandbox_id: &str) -> ObservedContainer {
    let annotation = |key: &str| status.annotations.get(key).cloned().unwrap_or_default();
    ObservedContainer {
        name: status
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .or_else(|| status.metadata.as_ref().map(|m| m.name.clone()))
            .unwrap_or_default(),
        attempt: status.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
        sandbox_id: sandbox_id.to_string(),
        state: Some(ContainerState::from(status.state)),
        created_at: status.created_at,
        started_at: status.started_at,
        finished_at: status.finished_at,
        exit_code: status.exit_code,
        reason: status.reason.clone(),
        message: status.message.clone(),
        image: status
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        image_ref: status.image_ref.clone(),
        hash: annotation(labels::CONTAINER_HASH),
        restart_count: annotation(labels::CONTAINER_RESTART_COUNT)
            .parse()
            .unwrap_or(0),
        is_init: annotation(labels::CONTAINER_IS_INIT) == "true",
        grace_period: annotation(labels::POD_TERMINATION_GRACE_PERIOD)
            .parse()
            .ok(),
        resources: ContainerResources::reported(status.resources.as_ref()),
        id: status.id,
    }
}
