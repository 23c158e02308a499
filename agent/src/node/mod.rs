//! The Node object, its status and its Lease, as kubelet keeps them (`kubelet_node_status.go`,
//! `pkg/kubelet/nodestatus`, `pkg/kubelet/nodelease`).
//!
//! [`NodeAgent::run`] registers the node (when `registerNode`), then every
//! `nodeStatusUpdateFrequency` samples the host, the runtime and PLEG, computes the status with the
//! pure functions of [`status`], and patches `nodes/<name>/status` only when something other than a
//! heartbeat changed or `nodeStatusReportFrequency` passed. The [`lease`] is renewed by a task of its
//! own. A [`NodeHandle`] shows the rest of the agent the Node as the API server last returned it.
//!
//! Modules: [`host`] reads the machine, [`crate::quantity`] is Kubernetes quantity arithmetic,
//! [`resources`] computes capacity and allocatable (the pressure conditions come from the eviction
//! manager, [`crate::eviction::PressureView`]), [`runtime`] tracks CRI
//! readiness, [`status`] builds the Node and its status, [`lease`] keeps the Lease.

pub mod handle;
pub mod host;
pub mod lease;
pub mod resources;
pub mod runtime;
pub mod status;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{GetParams, Patch, PatchParams, PostParams};
use mk_cri::{CriClient, api};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::KubeletConfiguration;
use crate::pleg::PlegHealth;

pub use handle::NodeHandle;
pub use host::HostPaths;
pub use lease::LeaseController;
pub use resources::ResourceConfigError;
pub use status::{DEFAULT_KUBELET_PORT, KUBELET_VERSION, NodeSettings, Observation};

use host::HostInfo;
use runtime::RuntimeState;

/// kubelet's `nodeStatusUpdateRetry`: attempts per status update.
const STATUS_UPDATE_RETRIES: usize = 5;
/// Registration back-off: kubelet starts at 100 ms and doubles up to 7 s.
const REGISTER_BACKOFF_START: Duration = Duration::from_millis(100);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(7);

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid node configuration: {0}")]
    Config(#[from] ResourceConfigError),
    #[error("{op}: {source}")]
    Api {
        op: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{op}: no answer within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("encoding the node status patch: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("cancelled")]
    Cancelled,
}

impl NodeError {
    fn api_reason(&self) -> Option<(u16, &str)> {
        match self {
            NodeError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some((status.code, status.reason.as_str())),
            _ => None,
        }
    }

    /// HTTP 409 Conflict (a stale resourceVersion).
    pub fn is_conflict(&self) -> bool {
        matches!(self.api_reason(), Some((409, reason)) if reason != "AlreadyExists")
    }

    /// HTTP 409 AlreadyExists (a create of an existing object).
    pub fn is_already_exists(&self) -> bool {
        matches!(self.api_reason(), Some((409, "AlreadyExists")))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.api_reason(), Some((404, _)))
    }
}

/// Runs one API request with a deadline.
pub(crate) async fn call<T>(
    op: &'static str,
    timeout: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, NodeError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(result) => result.map_err(|source| NodeError::Api { op, source }),
        Err(_) => Err(NodeError::Timeout { op, timeout }),
    }
}

/// Per-node settings that come from flags rather than the KubeletConfiguration.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeOptions {
    pub node_name: String,
    /// `--node-ip`; detected from the default route when absent.
    pub node_ip: Option<IpAddr>,
    /// `--node-labels`.
    pub node_labels: BTreeMap<String, String>,
    pub instance_type: Option<String>,
    /// kubelet's `--port` (reported in `daemonEndpoints`).
    pub kubelet_port: i32,
    /// `--root-dir`: its filesystem is the node's ephemeral storage.
    pub root_dir: PathBuf,
    /// Where host facts are read from.
    pub host_paths: HostPaths,
}

impl NodeOptions {
    /// Options with kubelet's defaults (no node IP, no extra labels, port 10250, the real `/proc`).
    pub fn new(node_name: impl Into<String>, root_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: node_name.into(),
            node_ip: None,
            node_labels: BTreeMap::new(),
            instance_type: None,
            kubelet_port: DEFAULT_KUBELET_PORT,
            root_dir: root_dir.into(),
            host_paths: HostPaths::default(),
        }
    }
}

/// Registers the node, keeps its status and its lease.
pub struct NodeAgent {
    nodes: Api<Node>,
    client: kube::Client,
    cri: CriClient,
    settings: NodeSettings,
    options: NodeOptions,
    register_node: bool,
    update_frequency: Duration,
    report_frequency: Duration,
    lease_duration_seconds: i32,
    request_timeout: Duration,
    pleg: PlegHealth,
    node_tx: watch::Sender<Option<Node>>,
    /// `nodeInfo.containerRuntimeVersion` until the runtime answers Version itself.
    seed_runtime_version: Option<String>,
    /// The pressure conditions, as the eviction manager decides them (kubelet's node status asks
    /// the eviction manager's `IsUnderMemoryPressure` and friends).
    pressure: crate::eviction::PressureView,
    /// Whether the node is shutting down (graceful node shutdown): the Ready condition says so,
    /// and the status is pushed as soon as it turns.
    shutdown: crate::nodeshutdown::ShutdownStatus,
}

/// What the status loop remembers between updates.
struct LoopState {
    host: HostInfo,
    runtime: RuntimeState,
    runtime_version: Option<String>,
    last_report: Option<Instant>,
}

impl NodeAgent {
    /// Reads `registerNode`, `registerWithTaints`, `kubeReserved`, `systemReserved`, `evictionHard`,
    /// `maxPods`, `nodeStatusUpdateFrequency`, `nodeStatusReportFrequency` and
    /// `nodeLeaseDurationSeconds`; fails on reservations or thresholds kubelet would reject.
    pub fn new(
        client: kube::Client,
        cri: CriClient,
        config: &KubeletConfiguration,
        options: NodeOptions,
        pleg: PlegHealth,
    ) -> Result<Self, NodeError> {
        let settings = NodeSettings::from_config(
            config,
            &options.node_name,
            options.node_labels.clone(),
            options.instance_type.clone(),
            options.kubelet_port,
        )?;
        let update_frequency = config
            .node_status_update_frequency
            .max(Duration::from_millis(1));
        let lease_duration = Duration::from_secs(
            u64::try_from(config.node_lease_duration_seconds.max(1)).unwrap_or(1),
        );
        let (node_tx, _) = watch::channel(None);
        Ok(Self {
            seed_runtime_version: None,
            pressure: crate::eviction::PressureView::none(),
            shutdown: crate::nodeshutdown::ShutdownStatus::never(),
            nodes: Api::all(client.clone()),
            client,
            cri,
            settings,
            options,
            register_node: config.register_node,
            update_frequency,
            // kubelet: the report frequency is at least the update frequency.
            report_frequency: config.node_status_report_frequency.max(update_frequency),
            lease_duration_seconds: config.node_lease_duration_seconds,
            // kubelet's heartbeat client timeout: min(update frequency, lease duration).
            request_timeout: update_frequency
                .min(lease_duration)
                .max(Duration::from_secs(1)),
            pleg,
            node_tx,
        })
    }

    /// A view of the Node for the rest of the agent.
    pub fn handle(&self) -> NodeHandle {
        NodeHandle::new(self.node_tx.subscribe())
    }

    /// Publishes the Node on `tx` instead of the agent's own channel (handles taken before this
    /// call see nothing).
    pub fn publish_to(mut self, tx: watch::Sender<Option<Node>>) -> Self {
        self.node_tx = tx;
        self
    }

    /// Reports the pressure conditions of `pressure` (the eviction manager's); without it the node
    /// reports none.
    pub fn with_pressure(mut self, pressure: crate::eviction::PressureView) -> Self {
        self.pressure = pressure;
        self
    }

    /// Reports the node NotReady (kubelet's `node is shutting down`) while `shutdown` says the node
    /// shuts down, and updates the status at once when it turns, not at the next period.
    pub fn with_shutdown(mut self, shutdown: crate::nodeshutdown::ShutdownStatus) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The runtime's Version answer already obtained by the caller, so the first status carries it
    /// even if the runtime does not answer again.
    pub fn with_runtime_version(mut self, version: &api::VersionResponse) -> Self {
        self.seed_runtime_version = Some(runtime::container_runtime_version(version));
        self
    }

    /// Registers (if configured), then keeps the status and the lease until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let paths = self.options.host_paths.clone();
        let host = tokio::task::spawn_blocking(move || host::read_host_info(&paths))
            .await
            .unwrap_or_default();
        tracing::info!(
            node = %self.options.node_name,
            cpus = host.cpus,
            memory = ?host.memory_bytes,
            os = %host.os_image,
            kernel = %host.kernel_version,
            "read machine info"
        );
        let lease = LeaseController::new(
            self.client.clone(),
            &self.options.node_name,
            self.lease_duration_seconds,
            self.request_timeout,
            self.node_tx.subscribe(),
        );
        let lease_task = tokio::spawn(lease.run(cancel.child_token()));

        let mut state = LoopState {
            host,
            runtime: RuntimeState::default(),
            runtime_version: self.seed_runtime_version.clone(),
            last_report: None,
        };
        self.check_runtime(&mut state).await;
        if self.register_node && !self.register(&mut state, &cancel).await {
            lease_task.abort();
            return;
        }

        let mut runtime_ticker = tokio::time::interval(runtime::RUNTIME_CHECK_PERIOD);
        runtime_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status_ticker = tokio::time::interval(self.update_frequency);
        status_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = runtime_ticker.tick() => self.check_runtime(&mut state).await,
                _ = status_ticker.tick() => self.update_status(&mut state).await,
                // kubelet's shutdown manager syncs the node status as the shutdown begins.
                () = shutdown.changed() => self.update_status(&mut state).await,
            }
        }
        let _ = lease_task.await;
    }

    fn publish(&self, node: Node) {
        self.node_tx.send_if_modified(|current| {
            let same = current.as_ref().is_some_and(|c| {
                c.metadata.resource_version.is_some()
                    && c.metadata.resource_version == node.metadata.resource_version
            });
            if !same {
                *current = Some(node);
            }
            !same
        });
    }

    /// `updateRuntimeUp`: one CRI `Status` call, plus the runtime's version for `nodeInfo`.
    async fn check_runtime(&self, state: &mut LoopState) {
        let result = self.cri.status(api::StatusRequest { verbose: false }).await;
        state.runtime.record(&result, Instant::now());
        if state.runtime_version.is_none()
            && let Ok(version) = self
                .cri
                .version(api::VersionRequest {
                    version: "v1".into(),
                })
                .await
        {
            state.runtime_version = Some(runtime::container_runtime_version(&version));
        }
    }

    /// Samples the host and the runtime into an [`Observation`].
    async fn observe(&self, state: &mut LoopState) -> Observation {
        let paths = self.options.host_paths.clone();
        let root = self.options.root_dir.clone();
        let configured_ip = self.options.node_ip;
        let (usage, node_ip) = tokio::task::spawn_blocking(move || {
            let usage = host::observe_usage(&paths, &root);
            let ip = configured_ip.or_else(|| host::detect_node_ip(&paths));
            (usage, ip)
        })
        .await
        .unwrap_or_default();
        if let Ok(version) = self
            .cri
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        {
            state.runtime_version = Some(runtime::container_runtime_version(&version));
        }
        let images = match self
            .cri
            .list_images(api::ListImagesRequest { filter: None })
            .await
        {
            Ok(list) => Some(status::node_images(&list.images)),
            Err(e) => {
                tracing::debug!(error = %e, "listing images for the node status failed");
                None
            }
        };
        let now = Instant::now();
        Observation {
            host: state.host.clone(),
            fs: usage.fs,
            node_ip,
            runtime_version: state.runtime_version.clone(),
            images,
            pressure: self.pressure.current(),
            // kubelet's order: runtime, network, then the shutdown manager's error.
            not_ready: state
                .runtime
                .ready_errors(now, self.pleg.check())
                .into_iter()
                .chain(self.shutdown.not_ready_reason().map(String::from))
                .collect(),
        }
    }

    /// `registerWithAPIServer`: create the Node, or adopt an existing one (reconciling the default
    /// labels), retrying with back-off. False when cancelled.
    async fn register(&self, state: &mut LoopState, cancel: &CancellationToken) -> bool {
        let mut step = REGISTER_BACKOFF_START;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = tokio::time::sleep(step) => {}
            }
            step = (step * 2).min(REGISTER_BACKOFF_MAX);
            let observed = self.observe(state).await;
            let node =
                status::node_for_registration(&self.settings, &observed, jiff::Timestamp::now());
            match self.try_register(&node).await {
                Ok(registered) => {
                    self.publish(registered);
                    return true;
                }
                Err(e) => {
                    tracing::error!(node = %self.options.node_name, error = %e, retry_in = ?step, "unable to register node with API server");
                }
            }
        }
    }

    async fn try_register(&self, node: &Node) -> Result<Node, NodeError> {
        tracing::info!(node = %self.options.node_name, "attempting to register node");
        match call(
            "create node",
            self.request_timeout,
            self.nodes.create(&PostParams::default(), node),
        )
        .await
        {
            Ok(created) => {
                tracing::info!(node = %self.options.node_name, "successfully registered node");
                return Ok(created);
            }
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        let existing = call(
            "get node",
            self.request_timeout,
            self.nodes.get(&self.options.node_name),
        )
        .await?;
        tracing::info!(node = %self.options.node_name, "node was previously registered");
        let labels = status::default_label_updates(node, &existing);
        if labels.is_empty() {
            return Ok(existing);
        }
        let patch = status::labels_patch(&labels)?;
        call(
            "patch node status",
            self.request_timeout,
            self.nodes.patch_status(
                &self.options.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            ),
        )
        .await
    }

    /// `updateNodeStatus`: up to five attempts of read, compute, patch-if-needed. The runtime is
    /// asked for its status first, so the Ready condition is at most one update old.
    async fn update_status(&self, state: &mut LoopState) {
        self.check_runtime(state).await;
        let observed = self.observe(state).await;
        for attempt in 0..STATUS_UPDATE_RETRIES {
            match self.try_update_status(state, &observed, attempt).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(node = %self.options.node_name, error = %e, attempt, "error updating node status, will retry");
                }
            }
        }
        tracing::error!(node = %self.options.node_name, "unable to update node status: update node status exceeds retry count");
    }

    async fn try_update_status(
        &self,
        state: &mut LoopState,
        observed: &Observation,
        attempt: usize,
    ) -> Result<(), NodeError> {
        // The first attempt may be served from the API server's cache, as kubelet's is.
        let params = if attempt == 0 {
            GetParams::any()
        } else {
            GetParams::default()
        };
        let original = call(
            "get node",
            self.request_timeout,
            self.nodes.get_with(&self.options.node_name, &params),
        )
        .await?;
        let old_status = original.status.clone().unwrap_or_default();
        let new_status = status::node_status(
            &old_status,
            &self.settings,
            observed,
            jiff::Timestamp::now(),
        );
        let labels = status::required_label_fixes(&original, &self.settings.architecture);
        let since = state.last_report.map(|at| at.elapsed());
        if labels.is_empty()
            && !status::status_changed_enough(
                &old_status,
                &new_status,
                since,
                self.report_frequency,
            )
        {
            self.publish(original);
            return Ok(());
        }
        let patch = status::status_patch(&old_status, &new_status, &labels)?;
        let updated = call(
            "patch node status",
            self.request_timeout,
            self.nodes.patch_status(
                &self.options.node_name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            ),
        )
        .await?;
        state.last_report = Some(Instant::now());
        self.publish(updated);
        Ok(())
    }
}

/// Everything [`spawn`] needs: the inputs of [`NodeAgent::new`] in one struct.
pub struct NodeAgentOptions {
    pub client: kube::Client,
    pub cri: CriClient,
    pub config: KubeletConfiguration,
    pub node_name: String,
    /// `--node-ip`; detected from the default route when absent.
    pub node_ip: Option<IpAddr>,
    /// `--node-labels`.
    pub node_labels: BTreeMap<String, String>,
    pub root_dir: PathBuf,
    /// The runtime's Version answer (`containerd`, `1.7.24`), already obtained by the caller.
    pub runtime_name: String,
    pub runtime_version: String,
    pub pleg: PlegHealth,
    /// The eviction manager's pressure conditions, reported as the node's.
    pub pressure: crate::eviction::PressureView,
    /// Whether the node is shutting down (reported NotReady, pushed at once).
    pub shutdown: crate::nodeshutdown::ShutdownStatus,
    /// Receives the Node as the API server last returned it.
    pub node_tx: watch::Sender<Option<Node>>,
    pub cancel: CancellationToken,
}

/// Starts the node agent (registration, status, lease) as a task and returns the node's IP
/// (`--node-ip`, else the default route's address) for the pods' `status.hostIP`. Settings kubelet
/// would reject (`kubeReserved`, `systemReserved`, `evictionHard`) are logged and the agent does
/// not start; use [`NodeAgent::new`] to fail on them instead.
pub fn spawn(options: NodeAgentOptions) -> Option<IpAddr> {
    let mut node_options = NodeOptions::new(options.node_name, options.root_dir);
    node_options.node_labels = options.node_labels;
    let node_ip = options
        .node_ip
        .or_else(|| host::detect_node_ip(&node_options.host_paths));
    node_options.node_ip = options.node_ip;
    node_options.kubelet_port = i32::from(options.config.port);
    let version = api::VersionResponse {
        runtime_name: options.runtime_name,
        runtime_version: options.runtime_version,
        ..Default::default()
    };
    match NodeAgent::new(
        options.client,
        options.cri,
        &options.config,
        node_options,
        options.pleg,
    ) {
        Ok(agent) => {
            let agent = agent
                .publish_to(options.node_tx)
                .with_runtime_version(&version)
                .with_pressure(options.pressure)
                .with_shutdown(options.shutdown);
            tokio::spawn(agent.run(options.cancel));
        }
        Err(e) => {
            tracing::error!(error = %e, "not registering the node: invalid configuration");
        }
    }
    node_ip
}
