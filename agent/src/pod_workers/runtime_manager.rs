//! The runtime manager (kubelet's `kuberuntime_manager`): carries out what the sync core decided
//! through CRI — sandboxes, image pulls, container configs, starts, hooks, in-place resizes, stops
//! and removals — and records the events that go with them. It decides nothing itself.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use mk_cri::{CriClient, api};
use tokio::sync::watch;

use super::applied::AppliedResources;
use crate::envvars;
use crate::events::{EventRecorder, EventType};
use crate::images::ImageManager;
use crate::kuberuntime::observe::{
    ContainerState, ObservedContainer, ObservedPod, SandboxState, sandbox_ips,
};
use crate::kuberuntime::resources::ContainerResources;
use crate::kuberuntime::{container_config, lifecycle, pod_files, sandbox_config, security};
use crate::metrics::{ContainerErrorLabels, ContainerTypeLabels, Metrics};
use crate::sources::pod_key;
use crate::sync::{self, PodActions, ResourceUpdate};
use crate::volumes::{PodVolumes, VolumeManager};

/// kubelet's `minimumGracePeriodInSeconds`.
pub const MIN_GRACE_SECONDS: i64 = 2;
/// Retry delay after a sync that failed on the runtime.
pub const ERROR_RETRY: Duration = Duration::from_secs(2);
/// How long a failed pull is reported as `ErrImagePull` before the turns that find the image in its
/// pull back-off report `ImagePullBackOff`: half the first image back-off, so both are seen in the
/// first cycle, and long enough for anyone polling the status to see the pull error itself.
pub const ERR_IMAGE_PULL_VISIBLE: Duration = Duration::from_secs(5);

/// What carrying out a pod's actions needs: the runtime and the node-level facts container configs are
/// built from. Shared by every pod worker.
pub struct RuntimeManager {
    pub cri: CriClient,
    pub images: ImageManager,
    pub metrics: Metrics,
    pub events: EventRecorder,
    pub node_name: String,
    pub pod_logs_dir: PathBuf,
    /// The pod and QoS cgroups (made before a pod's sandbox, removed with the pod).
    pub cgroups: crate::cm::PodCgroups,
    pub host_ip: Option<String>,
    /// The API server, when the agent is joined to a cluster (for env and volume sources).
    pub client: Option<kube::Client>,
    /// The pods' volumes.
    pub volumes: VolumeManager,
    /// kubelet's `--root-dir`: per-pod files live under `<root_dir>/pods/<uid>`.
    pub root_dir: PathBuf,
    /// clusterDNS, clusterDomain and the host's resolv.conf.
    pub dns: security::DnsSettings,
    /// The Node as last read (allocatable, for the downward API).
    pub node: watch::Receiver<Option<Node>>,
    /// What the agent applied to each container's cpu and memory.
    pub applied: AppliedResources,
}

/// What became of the containers a turn tried to start.
#[derive(Debug, Default)]
pub struct Executed {
    /// Containers that could not start: name, waiting reason, message.
    pub waiting: Vec<(String, &'static str, String)>,
    /// Containers that started.
    pub started: Vec<String>,
    /// Back-off keys of containers created to replace a finished instance, with when it finished.
    pub restarts: Vec<(String, i64)>,
    /// IDs of the containers resized in place.
    pub resized: Vec<String>,
    /// Why an in-place resize failed, per failure.
    pub resize_errors: Vec<String>,
}

pub fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<(&'a Container, bool)> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .map(|c| (c, false))
        .chain(spec.init_containers.iter().flatten().map(|c| (c, true)))
        .find(|(c, _)| c.name == name)
}

fn sandbox_options(ctx: &RuntimeManager) -> sandbox_config::SandboxOptions<'_> {
    sandbox_config::SandboxOptions {
        node_name: &ctx.node_name,
        pod_logs_dir: &ctx.pod_logs_dir,
        cgroups: &ctx.cgroups,
        dns: &ctx.dns,
    }
}

pub fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(crate::sources::defaults::DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS)
        .max(MIN_GRACE_SECONDS)
}

/// Does what the sync core decided. An error returns how soon to retry.
pub async fn execute(
    ctx: &RuntimeManager,
    pod: &Pod,
    observed: &ObservedPod,
    actions: &PodActions,
    volumes: &PodVolumes,
    grace_overrides: &std::collections::HashMap<String, i64>,
    executed: &mut Executed,
) -> Result<(), Duration> {
    for id in &actions.remove_containers {
        remove_container(ctx, id).await;
    }
    for id in &actions.remove_sandboxes {
        remove_sandbox(ctx, id).await;
    }
    let grace = grace_seconds(pod);
    for kill in &actions.kill {
        ctx.events.record(
            pod,
            Some(&kill.name),
            EventType::Normal,
            "Killing",
            &kill.reason,
        );
        let ip = observed
            .latest_sandbox()
            .and_then(|s| s.ips.first())
            .map(String::as_str);
        // A probe's own terminationGracePeriodSeconds replaces the pod's for its kill (the pod's
        // deletion grace period still wins, as in kubelet).
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| grace_overrides.get(&kill.id).copied())
            .unwrap_or(grace);
        stop_container(ctx, pod, &kill.name, &kill.id, grace, ip).await;
    }
    if actions.kill_pod {
        kill_pod(ctx, pod, observed, grace).await;
    }
    let pod_name = pod_key(pod);
    for w in &actions.backoff {
        ctx.events.record(
            pod,
            Some(&w.name),
            EventType::Warning,
            "BackOff",
            "Back-off restarting failed container",
        );
    }
    let mut result = Ok(());
    if !actions.update_resources.is_empty() {
        // kubelet's order: the pod cgroup grows before its containers and shrinks after them.
        if let Err(e) = ctx.cgroups.raise_pod(pod) {
            tracing::warn!(pod = %pod_name, error = %e, "cannot raise the pod cgroup's limits for a resize");
        }
        for update in &actions.update_resources {
            if let Err(retry) = resize_container(ctx, pod, update, executed).await {
                result = Err(retry);
            }
        }
        if let Err(e) = ctx.cgroups.update_pod(pod) {
            tracing::warn!(pod = %pod_name, error = %e, "cannot set the pod cgroup's limits after a resize");
            executed
                .resize_errors
                .push(format!("updating the pod cgroup: {e}"));
            result = Err(ERROR_RETRY);
        }
    }
    if actions.start.is_empty() {
        return result;
    }
    // The pod's cgroup, with its limits, before anything of the pod runs (kubelet's
    // `EnsureExists` in SyncPod).
    if let Err(e) = ctx.cgroups.ensure_pod(pod) {
        let message = format!("unable to ensure pod container exists: {e}");
        tracing::warn!(pod = %pod_name, error = %e, "cannot make the pod's cgroup");
        ctx.events.record(
            pod,
            None,
            EventType::Warning,
            "FailedCreatePodContainer",
            &message,
        );
        for start in &actions.start {
            executed
                .waiting
                .push((start.name.clone(), "ContainerCreating", message.clone()));
        }
        return Err(ERROR_RETRY * 2);
    }
    let sandbox_request = sandbox_config::build(
        pod,
        actions.create_sandbox.unwrap_or(0),
        &sandbox_options(ctx),
    );
    let Some(sandbox_cfg) = sandbox_request.config.clone() else {
        return Ok(());
    };
    let sandbox_id = match (&actions.sandbox_id, actions.create_sandbox) {
        (_, Some(attempt)) => match ctx.cri.run_pod_sandbox(sandbox_request).await {
            Ok(resp) => {
                tracing::debug!(pod = %pod_name, sandbox = %resp.pod_sandbox_id, attempt, "created pod sandbox");
                resp.pod_sandbox_id
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                ctx.events.record(
                    pod,
                    None,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    &message,
                );
                for start in &actions.start {
                    executed.waiting.push((
                        start.name.clone(),
                        "ContainerCreating",
                        message.clone(),
                    ));
                }
                return Err(ERROR_RETRY * 2);
            }
        },
        (Some(id), None) => id.clone(),
        (None, None) => return result,
    };
    let pod_ips = match ctx
        .cri
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await
    {
        Ok(resp) => sandbox_ips(resp.status),
        Err(_) => Vec::new(),
    };
    for start in &actions.start {
        let Some((container, init)) = container_spec(pod, &start.name) else {
            continue;
        };
        let sandbox = SandboxRef {
            id: &sandbox_id,
            config: &sandbox_cfg,
            ips: &pod_ips,
            volumes,
        };
        if let Err(retry) =
            start_container(ctx, pod, container, init, start, &sandbox, executed).await
        {
            result = Err(retry);
        }
    }
    result
}

/// Changes a running container's cpu and memory settings through CRI UpdateContainerResources, with
/// the LinuxContainerResources its creation would get now, and records what was applied.
async fn resize_container(
    ctx: &RuntimeManager,
    pod: &Pod,
    update: &ResourceUpdate,
    executed: &mut Executed,
) -> Result<(), Duration> {
    let Some((container, _)) = container_spec(pod, &update.name) else {
        return Ok(());
    };
    let linux = security::container_resources(pod, container, node_memory_capacity(ctx));
    tracing::info!(
        pod = %pod_key(pod),
        container = %update.name,
        id = %update.id,
        from = %update.from,
        to = %update.to,
        "resizing container in place"
    );
    let request = api::UpdateContainerResourcesRequest {
        container_id: update.id.clone(),
        linux: Some(linux),
        ..Default::default()
    };
    match ctx.cri.update_container_resources(request).await {
        Ok(_) => {
            tracing::info!(pod = %pod_key(pod), container = %update.name, id = %update.id, resources = %update.to, "container resized in place");
            ctx.applied.record(&update.id, update.to);
            executed.resized.push(update.id.clone());
            Ok(())
        }
        Err(e) => {
            let message = format!(
                "updating the resources of container {}: {}",
                update.name,
                e.message()
            );
            tracing::warn!(pod = %pod_key(pod), container = %update.name, id = %update.id, error = %e, "in-place resize failed; will retry");
            executed.resize_errors.push(message);
            Err(ERROR_RETRY)
        }
    }
}

/// The sandbox a container is started in.
struct SandboxRef<'a> {
    id: &'a str,
    config: &'a api::PodSandboxConfig,
    ips: &'a [String],
    /// The pod's volumes, set up before anything was started.
    volumes: &'a PodVolumes,
}

/// Why a container could not be started: the waiting reason, the message, and when to retry.
struct StartError {
    reason: &'static str,
    message: String,
    retry: Duration,
}

impl StartError {
    fn new(reason: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        Self {
            reason,
            message: message.into(),
            retry,
        }
    }
}

/// `.dockerconfigjson` documents of the pod's imagePullSecrets.
async fn pull_secret_configs(ctx: &RuntimeManager, pod: &Pod) -> Vec<serde_json::Value> {
    let (Some(client), Some(spec)) = (ctx.client.as_ref(), pod.spec.as_ref()) else {
        return Vec::new();
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let mut configs = Vec::new();
    for reference in spec.image_pull_secrets.iter().flatten() {
        match api.get_opt(&reference.name).await {
            Ok(Some(secret)) => {
                let data = secret.data.unwrap_or_default();
                if let Some(json) = data
                    .get(".dockerconfigjson")
                    .and_then(|b| serde_json::from_slice(&b.0).ok())
                {
                    configs.push(json);
                }
            }
            // kubelet pulls without a missing secret and says so.
            Ok(None) => {
                tracing::warn!(pod = %pod_key(pod), secret = %reference.name, "image pull secret not found; pulling without it")
            }
            Err(e) => {
                tracing::warn!(pod = %pod_key(pod), secret = %reference.name, error = %e, "cannot read image pull secret")
            }
        }
    }
    configs
}

fn node_memory_capacity(ctx: &RuntimeManager) -> i64 {
    let from_node = ctx
        .node
        .borrow()
        .as_ref()
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("memory"))
        .and_then(|q| crate::quantity::Quantity::from_api(q).ok())
        .map(|q| q.value());
    from_node.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<i64>().ok())
            })
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    })
}

/// Pulls the image and builds the container's CRI config: environment, user checks and mounts.
async fn prepare_container(
    ctx: &RuntimeManager,
    pod: &Pod,
    container: &Container,
    start: &sync::ContainerStart,
    sandbox: &SandboxRef<'_>,
) -> Result<api::CreateContainerRequest, StartError> {
    let image = container.image.as_deref().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let configs = pull_secret_configs(ctx, pod).await;
    let credentials = crate::images::pull_credentials(image, &configs);
    let pulling = || {
        ctx.events.record(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{image}\""),
        );
    };
    let ensured = match ctx
        .images
        .ensure(container, uid, &credentials, pulling)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let retry = match &e {
                // Look again when ErrImagePull has been visible long enough to turn into
                // ImagePullBackOff until the next real pull.
                crate::images::ImageError::Pull { .. } => ERR_IMAGE_PULL_VISIBLE,
                crate::images::ImageError::BackOff { remaining, .. } => {
                    ctx.events.record(
                        pod,
                        Some(&container.name),
                        EventType::Normal,
                        "BackOff",
                        e.to_string(),
                    );
                    *remaining + Duration::from_millis(50)
                }
                _ => crate::backoff::INITIAL,
            };
            if matches!(e, crate::images::ImageError::Pull { .. }) {
                ctx.events.record(
                    pod,
                    Some(&container.name),
                    EventType::Warning,
                    "Failed",
                    e.to_string(),
                );
            }
            return Err(StartError::new(e.reason(), e.to_string(), retry));
        }
    };
    let pulled = match ensured.pulled_seconds {
        Some(seconds) => format!("Successfully pulled image \"{image}\" in {seconds:.3}s"),
        None => format!("Container image \"{image}\" already present on machine"),
    };
    ctx.events.record(
        pod,
        Some(&container.name),
        EventType::Normal,
        "Pulled",
        pulled,
    );

    let config_error =
        |message: String| StartError::new("CreateContainerConfigError", message, ERROR_RETRY);
    security::verify_run_as_non_root(pod, container, ensured.uid, &ensured.username)
        .map_err(config_error)?;
    let objects = envvars::fetch(ctx.client.as_ref(), pod, container)
        .await
        .map_err(|e| config_error(e.to_string()))?;
    let facts = envvars::PodFacts {
        pod_ips: sandbox.ips.to_vec(),
        host_ips: ctx.host_ip.iter().cloned().collect(),
        allocatable: ctx
            .node
            .borrow()
            .as_ref()
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default(),
    };
    let env = envvars::resolve(pod, container, &objects, &facts)
        .map_err(|e| config_error(e.to_string()))?;

    let mut mounts = ctx
        .volumes
        .mounts_for_with_env(container, sandbox.volumes, &env)
        .map_err(|e| config_error(e.to_string()))?;
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let file_error = |e: std::io::Error| config_error(format!("preparing pod files: {e}"));
    if !host_network {
        let hosts = security::hosts_file(pod, sandbox.ips, &ctx.dns.cluster_domain);
        mounts.push(pod_files::write_hosts(&ctx.root_dir, uid, &hosts).map_err(file_error)?);
    }
    if let Some(path) = container
        .termination_message_path
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        mounts.push(
            pod_files::termination_mount(&ctx.root_dir, uid, &container.name, start.attempt, path)
                .map_err(file_error)?,
        );
    }
    Ok(container_config::build(container_config::ContainerInputs {
        pod,
        container,
        attempt: start.attempt,
        init: start.init,
        sandbox_id: sandbox.id,
        sandbox_config: sandbox.config.clone(),
        image_ref: &ensured.image_ref,
        image_user: security::ImageUser {
            uid: ensured.uid,
            username: &ensured.username,
        },
        node_name: &ctx.node_name,
        env,
        mounts,
        memory_capacity: node_memory_capacity(ctx),
    }))
}

/// Creates the container's log folder (`<pod log dir>/<container>/`) before CreateContainer, as
/// kubelet does: containerd creates it itself, cri-o's conmon does not.
async fn create_log_dir(request: &api::CreateContainerRequest) -> Result<(), StartError> {
    let pod_dir = request
        .sandbox_config
        .as_ref()
        .map(|s| s.log_directory.as_str())
        .filter(|d| !d.is_empty());
    let log_path = request
        .config
        .as_ref()
        .map(|c| c.log_path.as_str())
        .filter(|p| !p.is_empty());
    let (Some(pod_dir), Some(log_path)) = (pod_dir, log_path) else {
        return Ok(());
    };
    let Some(dir) = std::path::Path::new(pod_dir)
        .join(log_path)
        .parent()
        .map(|d| d.to_path_buf())
    else {
        return Ok(());
    };
    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
        StartError::new(
            "CreateContainerConfigError",
            format!(
                "create container log directory {} failed: {e}",
                dir.display()
            ),
            ERROR_RETRY,
        )
    })
}

/// Pulls, creates and starts one container; on failure records the waiting reason and an event.
async fn start_container(
    ctx: &RuntimeManager,
    pod: &Pod,
    container: &Container,
    init: bool,
    start: &sync::ContainerStart,
    sandbox: &SandboxRef<'_>,
    executed: &mut Executed,
) -> Result<(), Duration> {
    let container_type = if init { "init_container" } else { "container" };
    let result = async {
        let request = prepare_container(ctx, pod, container, start, sandbox).await?;
        create_log_dir(&request).await?;
        let resources = request
            .config
            .as_ref()
            .and_then(|c| c.linux.as_ref())
            .and_then(|l| l.resources.as_ref())
            .map(ContainerResources::from);
        let id = ctx
            .cri
            .create_container(request)
            .await
            .map_err(|e| StartError::new("CreateContainerError", e.message(), ERROR_RETRY))?
            .container_id;
        if let Some(resources) = resources {
            ctx.applied.record(&id, resources);
        }
        ctx.events.record(
            pod,
            Some(&container.name),
            EventType::Normal,
            "Created",
            format!("Created container {}", container.name),
        );
        if let Some(finished_at) = start.replaces_finished_at {
            // A restart after a failure: the crash-loop back-off advances.
            executed
                .restarts
                .push((sync::actions::backoff_key(pod, container), finished_at));
        }
        ctx.cri
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|e| StartError::new("RunContainerError", e.message(), ERROR_RETRY))?;
        if let Some(hook) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
        {
            let grace = grace_seconds(pod);
            let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(30));
            let ip = sandbox.ips.first().map(String::as_str);
            if let Err(message) = lifecycle::run(&ctx.cri, hook, container, &id, ip, limit).await {
                let message = format!("PostStartHook failed: {message}");
                ctx.events.record(
                    pod,
                    Some(&container.name),
                    EventType::Warning,
                    "FailedPostStartHook",
                    &message,
                );
                stop_container(ctx, pod, &container.name, &id, grace, ip).await;
                return Err(StartError::new("PostStartHookError", message, ERROR_RETRY));
            }
        }
        Ok::<String, StartError>(id)
    }
    .await;
    match result {
        Ok(_id) => {
            ctx.metrics
                .started_containers
                .get_or_create(&ContainerTypeLabels { container_type })
                .inc();
            ctx.events.record(
                pod,
                Some(&container.name),
                EventType::Normal,
                "Started",
                format!("Started container {}", container.name),
            );
            executed.started.push(container.name.clone());
            Ok(())
        }
        Err(e) => {
            // kubelet: image failures say "Error: <reason>", the others "Error: <message>".
            let text = match e.reason {
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "ImageInspectError" => {
                    e.reason.to_string()
                }
                _ => e.message.clone(),
            };
            ctx.events.record(
                pod,
                Some(&container.name),
                EventType::Warning,
                "Failed",
                format!("Error: {text}"),
            );
            ctx.metrics
                .started_containers_errors
                .get_or_create(&ContainerErrorLabels {
                    container_type,
                    code: e.reason.to_string(),
                })
                .inc();
            executed
                .waiting
                .push((container.name.clone(), e.reason, e.message));
            Err(e.retry)
        }
    }
}

/// Stops a container as kubelet's `killContainer`: the preStop hook first, inside the grace period,
/// then StopContainer (SIGTERM, SIGKILL when the rest of the grace period ends).
pub async fn stop_container(
    ctx: &RuntimeManager,
    pod: &Pod,
    name: &str,
    id: &str,
    grace: i64,
    pod_ip: Option<&str>,
) {
    let mut grace = grace;
    let spec = container_spec(pod, name).map(|(c, _)| c);
    if let Some((container, hook)) =
        spec.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)))
    {
        let started = Instant::now();
        let limit = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        if let Err(message) = lifecycle::run(&ctx.cri, hook, container, id, pod_ip, limit).await {
            ctx.events.record(
                pod,
                Some(name),
                EventType::Warning,
                "FailedPreStopHook",
                format!("PreStopHook failed: {message}"),
            );
        }
        let spent = i64::try_from(started.elapsed().as_secs()).unwrap_or(grace);
        grace = (grace - spent).max(MIN_GRACE_SECONDS);
    }
    let request = api::StopContainerRequest {
        container_id: id.to_string(),
        timeout: grace,
    };
    warn_unless_gone(ctx.cri.stop_container(request).await, "stop container", id);
}

/// Logs a failed clean-up call; an object already gone is not a failure.
fn warn_unless_gone<T>(result: Result<T, mk_cri::CriError>, what: &str, id: &str) {
    if let Err(e) = result
        && !e.is_not_found()
    {
        tracing::warn!(id, error = %e, "failed to {what}");
    }
}

/// Removes a container and its log files (kubelet's `removeContainer`: the log first, while the
/// runtime still knows where it is).
pub async fn remove_container(ctx: &RuntimeManager, id: &str) {
    remove_container_log(&ctx.cri, id).await;
    let request = api::RemoveContainerRequest {
        container_id: id.to_string(),
    };
    warn_unless_gone(
        ctx.cri.remove_container(request).await,
        "remove container",
        id,
    );
    ctx.applied.forget(id);
}

/// Removes the log files of a container about to be removed: the runtime does not (kubelet's
/// `removeContainerLog`).
pub async fn remove_container_log(cri: &mk_cri::CriClient, id: &str) {
    let status = match cri
        .container_status(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        })
        .await
    {
        Ok(response) => response.status,
        Err(e) => {
            warn_unless_gone(Err::<(), _>(e), "read the log path of container", id);
            return;
        }
    };
    let Some(path) = status
        .map(|s| s.log_path)
        .filter(|p| std::path::Path::new(p).is_absolute())
    else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let removed =
        tokio::task::spawn_blocking(move || crate::logs::remove_container_log(&path)).await;
    match removed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(id, error = %e, "cannot remove the container's log"),
        Err(e) => tracing::warn!(id, error = %e, "log removal task failed"),
    }
}

pub async fn remove_sandbox(ctx: &RuntimeManager, id: &str) {
    let request = api::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    };
    warn_unless_gone(
        ctx.cri.remove_pod_sandbox(request).await,
        "remove pod sandbox",
        id,
    );
}

/// Stops every live container (in parallel, each with the grace period) and every ready sandbox.
pub async fn kill_pod(ctx: &RuntimeManager, pod: &Pod, observed: &ObservedPod, grace: i64) {
    let live: Vec<&ObservedContainer> = observed
        .containers
        .iter()
        .filter(|c| c.state() != ContainerState::Exited)
        .collect();
    for c in &live {
        ctx.events.record(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Killing",
            format!("Stopping container {}", c.name),
        );
    }
    let ip = observed
        .latest_sandbox()
        .and_then(|s| s.ips.first())
        .map(String::as_str);
    futures::future::join_all(
        live.iter()
            .map(|c| stop_container(ctx, pod, &c.name, &c.id, grace, ip)),
    )
    .await;
    for s in observed
        .sandboxes
        .iter()
        .filter(|s| s.state == SandboxState::Ready)
    {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: s.id.clone(),
        };
        warn_unless_gone(
            ctx.cri.stop_pod_sandbox(request).await,
            "stop pod sandbox",
            &s.id,
        );
    }
}
