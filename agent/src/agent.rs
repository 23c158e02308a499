//! Wiring: the sources feed the desired pod set, the sync loop admits pods (and their resizes) and hands
//! them to the pod workers with their allocated resources, PLEG wakes them, housekeeping removes what
//! nobody wants, and the HTTP servers report.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use mk_cri::{CriClient, api};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::{self, NodeView};
use crate::allocation::{self, Allocations};
use crate::apiserver;
use crate::config::KubeletConfiguration;
use crate::events::{EventRecorder, EventType};
use crate::images::ImageManager;
use crate::metrics::Metrics;
use crate::node;
use crate::pleg::{Pleg, PlegHealth, Relist};
use crate::pod_cache::PodCache;
use crate::pod_workers::runtime_manager::RuntimeManager;
use crate::pod_workers::{KillRequest, PodKiller, PodWorkers, WorkerContext};
use crate::server::{self, ServerState};
use crate::sources::{self, PodSet};
use crate::status::{PendingResize, StatusManager};

/// kubelet's housekeeping period.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Cri(#[from] mk_cri::CriError),
    #[error(transparent)]
    Api(#[from] apiserver::ClientError),
    #[error("invalid address {0}")]
    Address(String),
    #[error("HTTP server on {addr}: {source}")]
    Server {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("kubelet port TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("node certificate: {0}")]
    Certificate(#[from] crate::certificate::CertificateError),
    #[error("pod cgroups: {0}")]
    Cgroups(#[from] crate::cm::CgroupError),
    #[error("invalid eviction configuration: {0}")]
    Eviction(#[from] crate::eviction::ThresholdError),
}

/// Everything the agent needs to run, resolved from the config file and flags.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: KubeletConfiguration,
    /// Where the kubelet port's self-signed certificate is kept (`--cert-dir`).
    pub cert_dir: PathBuf,
    pub node_name: String,
    pub root_dir: PathBuf,
    pub cgroup_mount: PathBuf,
    pub pleg_period: Duration,
    /// Join the cluster of this kubeconfig; without it the agent runs static pods only.
    pub kubeconfig: Option<PathBuf>,
    /// `--bootstrap-kubeconfig`: request a client certificate with these credentials when
    /// `kubeconfig` has no valid one, then write `kubeconfig`.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// `--node-ip`: the node's InternalIP (else the default route's address).
    pub node_ip: Option<IpAddr>,
    /// `--node-labels`.
    pub node_labels: BTreeMap<String, String>,
    /// kubelet's container GC policy (`--minimum-container-ttl-duration`,
    /// `--maximum-dead-containers-per-container`, `--maximum-dead-containers`).
    pub container_gc: crate::container_gc::GcPolicy,
    /// Cancelled when the node shuts down (SIGTERM). With graceful node shutdown configured
    /// (`shutdownGracePeriod`), the agent then stops its pods in kubelet's order and cancels the
    /// run's own token when done; without, nothing happens (the caller cancels the run instead).
    pub node_shutdown: CancellationToken,
}

fn runtime_name(v: &api::VersionResponse) -> String {
    if v.runtime_name.is_empty() {
        "cri".into()
    } else {
        v.runtime_name.clone()
    }
}

/// Waits for the runtime to answer Version, as kubelet does before it starts pods.
async fn wait_for_runtime(
    cri: &CriClient,
    endpoint: &str,
    cancel: &CancellationToken,
) -> Option<api::VersionResponse> {
    loop {
        match cri
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        {
            Ok(v) => return Some(v),
            Err(e) => {
                tracing::error!(endpoint, error = %e, "container runtime is not ready; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// Runs the agent until `cancel`. Running pods are left running on exit, as kubelet does, unless
/// the node shuts down with graceful node shutdown configured ([`AgentOptions::node_shutdown`],
/// [`crate::nodeshutdown`]): the pods are stopped first, then `cancel` is cancelled.
pub async fn run(options: AgentOptions, cancel: CancellationToken) -> Result<(), AgentError> {
    // Until the node shutdown manager runs (the runtime answered, the pods are known), the node's
    // shutdown stops the agent at once, as any stop does: it may still be waiting for the runtime.
    let shutdown_before_start = tokio::spawn({
        let (node_shutdown, cancel) = (options.node_shutdown.clone(), cancel.clone());
        async move {
            node_shutdown.cancelled().await;
            cancel.cancel();
        }
    });
    let metrics = Metrics::default();
    let config = &options.config;
    let cri = CriClient::new(
        &config.container_runtime_endpoint,
        config.runtime_request_timeout,
        metrics.cri.clone(),
    )?;
    let status = StatusManager::default();
    let pleg_health = PlegHealth::default();
    // The eviction manager decides the node's pressure conditions; the node status and pod
    // admission read them from this view.
    let eviction_config = crate::eviction::EvictionConfig::from_config(config)?;
    let (pressure_tx, pressure) = crate::eviction::PressureView::channel();
    // Whether the node is shutting down: the node status and pod admission read it.
    let (shutdown_switch, shutdown) = crate::nodeshutdown::channel();
    let cgroup_settings = crate::cm::setup::settings(config, &options.cgroup_mount)?;
    let stats = crate::stats::StatsProvider::new(
        cri.clone(),
        crate::stats::StatsConfig {
            node_name: options.node_name.clone(),
            root_dir: options.root_dir.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            cgroup_mount: options.cgroup_mount.clone(),
            cgroups: cgroup_settings.clone(),
            host: crate::node::host::HostPaths::default(),
        },
    );
    let server_state = ServerState {
        status: status.clone(),
        registry: Arc::new(metrics.registry()),
        probes: Arc::new(metrics.probes_registry()),
        pleg: pleg_health.clone(),
        stats: stats.clone(),
    };
    let client = match identity_options(&options) {
        Some(identity) => Some(crate::certificate::api_client(&identity, &cancel).await?),
        None => None,
    };
    start_servers(config, server_state.clone(), &cancel).await?;
    start_kubelet_port(&options, server_state, cri.clone(), client.clone(), &cancel).await?;
    let Some(version) = wait_for_runtime(&cri, &config.container_runtime_endpoint, &cancel).await
    else {
        return Ok(());
    };
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        node = %options.node_name,
        "connected to container runtime"
    );
    let cgroups = crate::cm::setup::start(&cri, config, &cgroup_settings).await?;

    // Sources: the static pod folder and, joined to a cluster, the API server.
    let (file_tx, file_rx) = watch::channel(PodSet::default());
    match &config.static_pod_path {
        Some(dir) => {
            tokio::spawn(sources::file::run(
                dir.clone(),
                options.node_name.clone(),
                config.file_check_frequency,
                file_tx,
                cancel.clone(),
            ));
        }
        None => {
            tracing::info!("no staticPodPath configured; no static pods");
            file_tx.send_replace(PodSet {
                synced: true,
                ..Default::default()
            });
        }
    }
    let mut source_rxs = vec![file_rx.clone()];
    let (node_tx, node_rx) = watch::channel::<Option<Node>>(None);
    let (recorder, host_ip) = match &client {
        Some(client) => {
            let (api_tx, api_rx) = watch::channel(PodSet::default());
            let (mirrors_tx, mirrors_rx) = watch::channel(BTreeMap::new());
            tokio::spawn(sources::apiserver::run(
                client.clone(),
                options.node_name.clone(),
                api_tx,
                mirrors_tx,
                cancel.clone(),
            ));
            source_rxs.push(api_rx);
            let (recorder, queue) = EventRecorder::with_queue(1024);
            tokio::spawn(apiserver::events::run(
                client.clone(),
                options.node_name.clone(),
                queue,
                cancel.clone(),
            ));
            tokio::spawn(apiserver::status_sync::run(
                client.clone(),
                status.clone(),
                mirrors_rx.clone(),
                cancel.clone(),
            ));
            tokio::spawn(apiserver::mirror_pods::run(
                client.clone(),
                options.node_name.clone(),
                file_rx,
                mirrors_rx,
                cancel.clone(),
            ));
            let host_ip = node::spawn(node::NodeAgentOptions {
                client: client.clone(),
                cri: cri.clone(),
                config: config.clone(),
                node_name: options.node_name.clone(),
                node_ip: options.node_ip,
                node_labels: options.node_labels.clone(),
                root_dir: options.root_dir.clone(),
                runtime_name: runtime_name(&version),
                runtime_version: version.runtime_version.clone(),
                pleg: pleg_health.clone(),
                pressure: pressure.clone(),
                shutdown: shutdown.clone(),
                node_tx,
                cancel: cancel.clone(),
            });
            (recorder, host_ip)
        }
        None => {
            drop(node_tx);
            (EventRecorder::log_only(), options.node_ip)
        }
    };
    let (desired_tx, desired_rx) = watch::channel(PodSet::default());
    tokio::spawn(sources::merge::run(source_rxs, desired_tx, cancel.clone()));

    let (probe_wake_tx, probe_wake_rx) = mpsc::unbounded_channel();
    let prober = crate::prober::ProbeManager::new(
        cri.clone(),
        recorder.clone(),
        metrics.prober.clone(),
        probe_wake_tx,
    );
    let cache = PodCache::default();
    let ctx = Arc::new(WorkerContext {
        runtime: RuntimeManager {
            volumes: crate::volumes::VolumeManager::new(options.root_dir.clone(), client.clone()),
            images: ImageManager::new(cri.clone(), config.parallel_pull_limit()),
            cri: cri.clone(),
            metrics: metrics.clone(),
            events: recorder.clone(),
            node_name: options.node_name.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            cgroups,
            host_ip: host_ip.map(|ip| ip.to_string()),
            client: client.clone(),
            node: node_rx.clone(),
            applied: Default::default(),
            root_dir: options.root_dir.clone(),
            dns: crate::kuberuntime::security::DnsSettings {
                cluster_dns: config.cluster_dns.clone(),
                cluster_domain: config.cluster_domain.clone(),
                host_resolv_conf: std::fs::read_to_string(&config.resolv_conf).unwrap_or_default(),
            },
        },
        cache: cache.clone(),
        prober,
        status: status.clone(),
        metrics: metrics.clone(),
        runtime_name: runtime_name(&version),
        resync: config.sync_frequency,
    });

    let (events_tx, events_rx) = mpsc::channel(1024);
    let (relist_tx, relist_rx) = watch::channel(None);
    crate::logs::spawn(
        cri.clone(),
        options.node_name.clone(),
        config,
        cancel.clone(),
    );
    let image_gc = crate::image_gc::spawn(cri.clone(), config, cancel.clone());
    // The eviction manager reclaims disk through this handle (`ContainerGc::collect`).
    let container_gc = crate::container_gc::spawn(
        crate::container_gc::GcSources {
            cri: cri.clone(),
            node_name: options.node_name.clone(),
            pod_logs_dir: config.pod_logs_dir.clone(),
            volumes: ctx.runtime.volumes.clone(),
            cgroups: ctx.runtime.cgroups.clone(),
            desired: desired_rx.clone(),
            relists: relist_rx.clone(),
            status: status.clone(),
        },
        options.container_gc,
        cancel.clone(),
    );
    let pleg = Pleg {
        cri: cri.clone(),
        node_name: options.node_name.clone(),
        period: options.pleg_period,
        evented: config.evented_pleg(),
        metrics: metrics.clone(),
        health: pleg_health,
        cache,
    };
    tokio::spawn(pleg.run(events_tx, relist_tx, cancel.clone()));

    let checkpoint = options.root_dir.join(allocation::CHECKPOINT_FILE);
    let allocations = Allocations::load(&checkpoint).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot read the pod resource allocations; starting from the pods' specs");
        Allocations::empty(&checkpoint)
    });
    let (workers, finished_rx) = PodWorkers::new(ctx);
    // Eviction and node shutdown have the workers stop pods through this.
    let (killer, kill_rx) = PodKiller::channel();
    // Graceful node shutdown: when the node shuts down, its pods stop in kubelet's order (lowest
    // priority first), then the agent exits.
    let shutdown_bands = crate::nodeshutdown::plan::bands(config);
    if !shutdown_bands.is_empty() {
        let manager =
            crate::nodeshutdown::ShutdownManager::new(crate::nodeshutdown::ManagerOptions {
                bands: shutdown_bands,
                switch: shutdown_switch,
                killer: killer.clone(),
                pods: desired_rx.clone(),
                status: status.clone(),
                metrics: metrics.shutdown.clone(),
                state_file: config
                    .graceful_node_shutdown_based_on_pod_priority()
                    .then(|| crate::nodeshutdown::state_file::StateFile::in_dir(&options.root_dir)),
                api: client
                    .clone()
                    .map(|client| crate::nodeshutdown::manager::ApiTarget {
                        client,
                        node_name: options.node_name.clone(),
                    }),
            });
        shutdown_before_start.abort();
        tokio::spawn(manager.run(options.node_shutdown.clone(), cancel.clone()));
    }
    // The pods the sync loop runs, for the eviction manager to rank.
    let (runnable_tx, runnable_rx) = watch::channel(PodSet::default());
    let reclaim = Arc::new(crate::eviction::sources::GcReclaim {
        containers: container_gc.clone(),
        images: image_gc,
        desired: desired_rx.clone(),
    });
    crate::eviction::manager::spawn(
        eviction_config,
        crate::eviction::EvictionSources {
            stats: Arc::new(crate::eviction::sources::ProviderStats {
                provider: stats.clone(),
                cri: cri.clone(),
                root_dir: options.root_dir.clone(),
            }),
            reclaim,
            killer: killer.clone(),
            pods: crate::eviction::ActivePods {
                pods: runnable_rx,
                status: status.clone(),
            },
            events: recorder.clone(),
            metrics: metrics.clone(),
        },
        pressure_tx,
        cancel.clone(),
    );
    let sync = SyncLoop {
        workers,
        status,
        events: recorder,
        node: node_rx,
        node_name: options.node_name.clone(),
        max_pods: config.max_pods,
        admitted: HashSet::new(),
        rejected: HashSet::new(),
        runnable: PodSet::default(),
        allocations,
        desired: PodSet::default(),
        pending_resizes: HashSet::new(),
        pressure,
        runnable_tx,
        shutdown,
    };
    let inputs = LoopInputs {
        desired: desired_rx,
        events: events_rx,
        probe_results: probe_wake_rx,
        finished: finished_rx,
        relists: relist_rx,
        kills: kill_rx,
    };
    sync.run(inputs, cancel).await;
    Ok(())
}

/// Where the node's API identity comes from, when it joins a cluster.
fn identity_options(options: &AgentOptions) -> Option<crate::certificate::IdentityOptions> {
    Some(crate::certificate::IdentityOptions {
        kubeconfig: options.kubeconfig.clone()?,
        bootstrap_kubeconfig: options.bootstrap_kubeconfig.clone(),
        cert_dir: options.cert_dir.clone(),
        node_name: options.node_name.clone(),
        rotate: options.config.rotate_certificates,
    })
}

/// The kubelet port (TLS, authenticated): logs, exec, attach, port-forward. Authorization mode
/// Webhook needs an API server; standalone, the port stays closed unless AlwaysAllow is chosen.
async fn start_kubelet_port(
    options: &AgentOptions,
    base: ServerState,
    cri: CriClient,
    client: Option<kube::Client>,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let config = &options.config;
    if config.port == 0 {
        return Ok(());
    }
    let mode = match config.authorization.mode.as_str() {
        "AlwaysAllow" => server::auth::AuthorizationMode::AlwaysAllow,
        _ => server::auth::AuthorizationMode::Webhook,
    };
    if mode == server::auth::AuthorizationMode::Webhook && client.is_none() {
        tracing::warn!(
            port = config.port,
            "kubelet port not served: authorization mode Webhook needs an API server \
             (--kubeconfig); set authorization.mode AlwaysAllow (with a client CA) to serve it \
             standalone"
        );
        return Ok(());
    }
    let ip: IpAddr = config
        .address
        .parse()
        .map_err(|_| AgentError::Address(config.address.clone()))?;
    let mut hostnames = vec![options.node_name.clone(), "localhost".into()];
    hostnames.extend(
        options
            .node_ip
            .iter()
            .map(ToString::to_string)
            .chain(["127.0.0.1".to_owned()]),
    );
    // serverTLSBootstrap: the serving certificate comes from a kubelet-serving request for the
    // same names; explicit files win, as kubelet's.
    let issued = match (&client, identity_options(options)) {
        (Some(client), Some(identity))
            if config.server_tls_bootstrap && config.tls_cert_file.is_none() =>
        {
            let shared = crate::certificate::serving_identity(
                &identity,
                client.clone(),
                &hostnames,
                cancel,
            )?;
            let resolver: Arc<dyn rustls::server::ResolvesServerCert> = Arc::new(shared);
            Some(resolver)
        }
        _ => None,
    };
    let tls = server::tls::server_config(&server::tls::TlsSettings {
        cert_file: config.tls_cert_file.clone(),
        key_file: config.tls_private_key_file.clone(),
        cert_dir: options.cert_dir.clone(),
        hostnames,
        client_ca_file: config.authentication.x509.client_ca_file.clone(),
        issued,
    })?;
    let auth = server::auth::Auth::new(
        config.authentication.anonymous.enabled,
        mode,
        config.authentication.webhook.enabled,
        client,
        options.node_name.clone(),
    );
    let router = server::api::api_router(
        server::api::ApiState {
            base,
            cri,
            config: Arc::new(config.clone()),
        },
        auth,
    );
    let addr = SocketAddr::new(ip, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Server { addr, source })?;
    tracing::info!(address = %addr, authorization = %config.authorization.mode, "serving the kubelet port (HTTPS)");
    tokio::spawn(server::https::serve(listener, tls, router, cancel.clone()));
    Ok(())
}

async fn start_servers(
    config: &KubeletConfiguration,
    state: ServerState,
    cancel: &CancellationToken,
) -> Result<(), AgentError> {
    let mut servers = Vec::new();
    if config.healthz_port != 0 {
        let ip: IpAddr = config
            .healthz_bind_address
            .parse()
            .map_err(|_| AgentError::Address(config.healthz_bind_address.clone()))?;
        servers.push((
            SocketAddr::new(ip, config.healthz_port),
            server::healthz_router(state.clone()),
        ));
    }
    if config.read_only_port != 0 {
        let ip: IpAddr = config
            .address
            .parse()
            .map_err(|_| AgentError::Address(config.address.clone()))?;
        servers.push((
            SocketAddr::new(ip, config.read_only_port),
            server::read_only_router(state),
        ));
    }
    for (addr, router) in servers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AgentError::Server { addr, source })?;
        let cancel = cancel.clone();
        tracing::info!(address = %addr, "serving HTTP");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
            {
                tracing::error!(address = %addr, error = %e, "HTTP server stopped");
            }
        });
    }
    Ok(())
}

/// What drives the sync loop: the desired pods, PLEG events, probe results, finished workers, the
/// PLEG's listings (for orphans) and the node's kill requests.
struct LoopInputs {
    desired: watch::Receiver<PodSet>,
    events: mpsc::Receiver<String>,
    probe_results: mpsc::UnboundedReceiver<String>,
    finished: mpsc::UnboundedReceiver<String>,
    relists: watch::Receiver<Option<Relist>>,
    kills: mpsc::UnboundedReceiver<KillRequest>,
}

/// The main loop: admits new pods and the resizes of running ones, hands the desired set to the pod
/// workers (each pod with its allocated resources), forwards PLEG events, and cleans up pods the
/// runtime holds that nobody wants.
struct SyncLoop {
    workers: PodWorkers,
    status: StatusManager,
    events: EventRecorder,
    node: watch::Receiver<Option<Node>>,
    node_name: String,
    max_pods: u32,
    admitted: HashSet<String>,
    rejected: HashSet<String>,
    runnable: PodSet,
    /// The resources each admitted pod was given (checkpointed).
    allocations: Allocations,
    /// The pod set last asked for.
    desired: PodSet,
    /// Pods whose resize was not admitted: looked at again at every housekeeping.
    pending_resizes: HashSet<String>,
    /// The eviction manager's pressure conditions (its admit handler refuses pods under them).
    pressure: crate::eviction::PressureView,
    /// Publishes `runnable` to the eviction manager.
    runnable_tx: watch::Sender<PodSet>,
    /// Whether the node is shutting down (its admit handler refuses every new pod then).
    shutdown: crate::nodeshutdown::ShutdownStatus,
}

impl SyncLoop {
    fn node_view(&self) -> NodeView {
        let node = self.node.borrow().clone();
        let mut view = NodeView {
            name: self.node_name.clone(),
            pressure: self.pressure.current(),
            ..Default::default()
        };
        if let Some(node) = node {
            view.labels = node.metadata.labels.clone().unwrap_or_default();
            view.taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            view.allocatable = node
                .status
                .as_ref()
                .and_then(|s| s.allocatable.clone())
                .unwrap_or_default();
        }
        view.allocatable
            .entry("pods".into())
            .or_insert_with(|| Quantity(self.max_pods.to_string()));
        view
    }

    fn is_terminal(&self, uid: &str) -> bool {
        self.status
            .get(uid)
            .and_then(|s| s.phase)
            .is_some_and(|p| p == "Succeeded" || p == "Failed")
    }

    /// `pod` with the resources allocated to it (those its spec asks for before it is admitted).
    fn allocated(&self, uid: &str, pod: &Arc<Pod>) -> Arc<Pod> {
        match self.allocations.get(uid) {
            Some(a) if allocation::resize_requested(pod, a) => Arc::new(allocation::apply(pod, a)),
            _ => pod.clone(),
        }
    }

    /// The admitted, still running pods of `desired` other than `uid`, with their allocations.
    fn others(&self, desired: &PodSet, uid: &str) -> Vec<Arc<Pod>> {
        self.admitted
            .iter()
            .filter(|u| *u != uid && !self.is_terminal(u))
            .filter_map(|u| desired.pods.get(u).map(|p| self.allocated(u, p)))
            .collect()
    }

    fn record_allocation(&mut self, pod: &Pod) {
        let uid = sources::pod_uid(pod).to_string();
        if let Err(e) = self.allocations.set(&uid, allocation::requested(pod)) {
            tracing::error!(pod = %sources::pod_key(pod), podUID = %uid, error = %e, "cannot checkpoint the pod's resource allocation");
        }
    }

    /// The pod a worker runs for an admitted pod: with its allocated resources, after admitting the
    /// resize its spec asks for if it fits (kubelet's `handlePodResourcesResize`). Static pods are not
    /// resized: a changed manifest is a new pod.
    fn resolve_resize(
        &mut self,
        uid: &str,
        pod: &Arc<Pod>,
        desired: &PodSet,
        node: &NodeView,
    ) -> Arc<Pod> {
        let Some(allocated) = self.allocations.get(uid).cloned() else {
            self.record_allocation(pod);
            return pod.clone();
        };
        if !allocation::resize_requested(pod, &allocated) {
            self.clear_pending_resize(uid, pod);
            return pod.clone();
        }
        let current = Arc::new(allocation::apply(pod, &allocated));
        if sources::is_static(pod) || self.is_terminal(uid) {
            return current;
        }
        let others = self.others(desired, uid);
        let others: Vec<&Pod> = others.iter().map(|p| p.as_ref()).collect();
        let key = sources::pod_key(pod);
        let generation = pod.metadata.generation;
        let summary = allocation::summary(pod);
        match admission::admit_resize(pod, node, &others) {
            Ok(()) => {
                tracing::info!(pod = %key, podUID = uid, generation, resources = %summary, "pod resize admitted; resources allocated");
                self.events.record(
                    pod,
                    None,
                    EventType::Normal,
                    "ResizeStarted",
                    format!("Pod resize started: {summary}"),
                );
                self.record_allocation(pod);
                self.clear_pending_resize(uid, pod);
                pod.clone()
            }
            Err(rejection) => {
                let pending = PendingResize {
                    reason: rejection.reason,
                    message: rejection.message,
                    generation,
                };
                if self.status.set_resize_pending(uid, Some(&pending)) {
                    let reason = pending.reason.as_str();
                    tracing::info!(pod = %key, podUID = uid, generation, reason, message = %pending.message, resources = %summary, "pod resize pending");
                    self.events.record(
                        pod,
                        None,
                        EventType::Warning,
                        &format!("Resize{reason}"),
                        format!("Pod resize {reason}: {}", pending.message),
                    );
                }
                self.pending_resizes.insert(uid.to_string());
                current
            }
        }
    }

    fn clear_pending_resize(&mut self, uid: &str, pod: &Pod) {
        self.pending_resizes.remove(uid);
        if self.status.set_resize_pending(uid, None) {
            tracing::info!(pod = %sources::pod_key(pod), podUID = uid, "pod resize no longer pending");
        }
    }

    /// Admits the new pods of `desired` (oldest first, as kubelet), decides on the resizes of the
    /// admitted ones, and passes them on with their allocated resources.
    fn update(&mut self, desired: &PodSet) {
        self.desired = desired.clone();
        self.admitted.retain(|uid| desired.pods.contains_key(uid));
        self.pending_resizes
            .retain(|uid| desired.pods.contains_key(uid));
        if desired.synced
            && let Err(e) = self
                .allocations
                .retain(|uid| desired.pods.contains_key(uid))
        {
            tracing::error!(error = %e, "cannot checkpoint the pod resource allocations");
        }
        let gone: Vec<String> = self
            .rejected
            .iter()
            .filter(|uid| !desired.pods.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.rejected.remove(&uid);
            self.status.remove(&uid);
        }
        let mut new: Vec<&Arc<Pod>> = desired
            .pods
            .iter()
            .filter(|(uid, _)| !self.admitted.contains(*uid) && !self.rejected.contains(*uid))
            .map(|(_, p)| p)
            .collect();
        new.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let node = self.node_view();
        for pod in new {
            let uid = sources::pod_uid(pod).to_string();
            // After a restart, a pod is admitted with the resources it had (kubelet's checkpoint).
            let allocated = self.allocated(&uid, pod);
            let others = self.others(desired, &uid);
            let others: Vec<&Pod> = others.iter().map(|p| p.as_ref()).collect();
            // The node shutdown manager's admit handler comes last, as in kubelet.
            match admission::admit(&allocated, &node, &others).and_then(|()| self.shutdown.admit())
            {
                Ok(()) => {
                    for field in crate::unsupported::check(pod).ignored {
                        self.events.record(
                            pod,
                            None,
                            EventType::Warning,
                            "UnsupportedField",
                            format!("ignoring {field}"),
                        );
                    }
                    if self.allocations.get(&uid).is_none() {
                        self.record_allocation(pod);
                    }
                    self.admitted.insert(uid);
                }
                Err(rejection) => {
                    tracing::warn!(pod = %sources::pod_key(pod), podUID = sources::pod_uid(pod), reason = %rejection.reason, message = %rejection.message, "pod rejected");
                    self.events.record(
                        pod,
                        None,
                        EventType::Warning,
                        &rejection.reason,
                        &rejection.message,
                    );
                    self.status.set(pod.clone(), rejection.status());
                    self.rejected.insert(uid);
                }
            }
        }
        let admitted: Vec<(String, Arc<Pod>)> = desired
            .pods
            .iter()
            .filter(|(uid, _)| self.admitted.contains(*uid))
            .map(|(uid, p)| (uid.clone(), p.clone()))
            .collect();
        let mut runnable = PodSet {
            synced: desired.synced,
            ..Default::default()
        };
        for (uid, pod) in admitted {
            let pod = self.resolve_resize(&uid, &pod, desired, &node);
            runnable.pods.insert(uid, pod);
        }
        self.runnable = runnable;
        self.runnable_tx.send_replace(self.runnable.clone());
        self.workers.update(&self.runnable);
    }

    async fn run(mut self, inputs: LoopInputs, cancel: CancellationToken) {
        let LoopInputs {
            mut desired,
            mut events,
            mut probe_results,
            mut finished,
            relists,
            mut kills,
        } = inputs;
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let set = desired.borrow_and_update().clone();
                    self.update(&set);
                }
                Some(uid) = events.recv() => self.workers.wake(&uid),
                Some(uid) = probe_results.recv() => self.workers.wake_for_probe(&uid),
                Some(uid) = finished.recv() => self.workers.on_finished(&uid),
                Some(request) = kills.recv() => {
                    let phase = self.workers.kill(&request.uid, request.kill);
                    // The caller may have given up waiting; nothing to tell then.
                    let _ = request.reply.send(phase);
                }
                _ = housekeeping.tick() => {
                    if !self.pending_resizes.is_empty() {
                        // Pods may have left or shrunk since: a deferred resize may fit now.
                        let desired = self.desired.clone();
                        self.update(&desired);
                    }
                    // Until every source has listed once, a pod missing from the set may just be unread.
                    if !self.runnable.synced {
                        continue;
                    }
                    // Borrowed, not cloned: the listing of every pod is read in place.
                    match relists.borrow().as_ref() {
                        Some(relist) => self.workers.clean_up_orphans(&relist.pods),
                        None => self.workers.reap(),
                    }
                }
            }
        }
    }
}
