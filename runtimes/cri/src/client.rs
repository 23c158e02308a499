use std::future::Future;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Uri};

use crate::{CriError, CriMetrics, Endpoint, parse_endpoint};

/// kubelet's `--runtime-request-timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The operation name of [`CriClient::container_events`] (kubelet's metric label).
pub const CONTAINER_EVENTS: &str = "get_container_events";
/// kubelet's maximum gRPC message size towards the runtime (16 MiB).
const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// A cheap-to-clone handle on one CRI runtime. The underlying channel connects lazily and reconnects by
/// itself when the runtime restarts; a call made while the runtime is down fails with
/// [`CriError::Unavailable`] and the next one tries again.
#[derive(Clone)]
pub struct CriClient {
    endpoint: String,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
    metrics: CriMetrics,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("endpoint", &self.endpoint)
            .field("timeout", &self.timeout)
            .finish()
    }
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $service:ident, $op:literal, $req:ty => $resp:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $req) -> Result<$resp, CriError> {
            let mut client = self.$service.clone();
            self.call($op, Some(self.timeout), request, |r| async move { client.$name(r).await })
                .await
        }
    };
}

impl CriClient {
    /// Creates a client for `endpoint` (`unix:///run/containerd/containerd.sock`). Nothing is dialled until
    /// the first call, so the agent can start before its runtime does.
    pub fn new(endpoint: &str, timeout: Duration, metrics: CriMetrics) -> Result<Self, CriError> {
        let Endpoint::Unix(path) = parse_endpoint(endpoint)?;
        let channel =
            tonic::transport::Endpoint::from_static("http://cri.invalid")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }));
        Ok(Self {
            endpoint: endpoint.to_string(),
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            images: ImageServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE),
            timeout,
            metrics,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn metrics(&self) -> &CriMetrics {
        &self.metrics
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        timeout: Option<Duration>,
        request: Req,
        send: F,
    ) -> Result<Resp, CriError>
    where
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut request = tonic::Request::new(request);
        let result = match timeout {
            Some(limit) => {
                request.set_timeout(limit);
                match tokio::time::timeout(limit, send(request)).await {
                    // tonic's own deadline layer (driven by the grpc-timeout header set above)
                    // fires first with Cancelled("Timeout expired"); a server may answer
                    // DeadlineExceeded. Either way it is our deadline that passed.
                    Ok(Err(status))
                        if matches!(
                            status.code(),
                            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                        ) && started.elapsed() >= limit =>
                    {
                        Err(CriError::Timeout { op, timeout: limit })
                    }
                    Ok(answer) => answer.map_err(|s| CriError::from_status(op, s)),
                    Err(_) => Err(CriError::Timeout { op, timeout: limit }),
                }
            }
            None => send(request)
                .await
                .map_err(|s| CriError::from_status(op, s)),
        };
        self.metrics.observe(op, started.elapsed(), result.is_err());
        if let Err(err) = &result {
            tracing::debug!(operation = op, error = %err, "CRI call failed");
        }
        result.map(tonic::Response::into_inner)
    }

    unary!(
        /// The runtime's name and version (`containerd`, `1.6.20`).
        version, runtime, "version", api::VersionRequest => api::VersionResponse);
    unary!(
        /// The runtime's own settings kubelet must match (the cgroup driver); containerd 1.x
        /// answers Unimplemented.
        runtime_config, runtime, "runtime_config",
        api::RuntimeConfigRequest => api::RuntimeConfigResponse);
    unary!(
        /// RuntimeReady / NetworkReady conditions.
        status, runtime, "status", api::StatusRequest => api::StatusResponse);
    unary!(run_pod_sandbox, runtime, "run_podsandbox",
        api::RunPodSandboxRequest => api::RunPodSandboxResponse);
    unary!(stop_pod_sandbox, runtime, "stop_podsandbox",
        api::StopPodSandboxRequest => api::StopPodSandboxResponse);
    unary!(remove_pod_sandbox, runtime, "remove_podsandbox",
        api::RemovePodSandboxRequest => api::RemovePodSandboxResponse);
    unary!(pod_sandbox_status, runtime, "podsandbox_status",
        api::PodSandboxStatusRequest => api::PodSandboxStatusResponse);
    unary!(list_pod_sandbox, runtime, "list_podsandbox",
        api::ListPodSandboxRequest => api::ListPodSandboxResponse);
    unary!(create_container, runtime, "create_container",
        api::CreateContainerRequest => api::CreateContainerResponse);
    unary!(start_container, runtime, "start_container",
        api::StartContainerRequest => api::StartContainerResponse);
    unary!(remove_container, runtime, "remove_container",
        api::RemoveContainerRequest => api::RemoveContainerResponse);
    unary!(list_containers, runtime, "list_containers",
        api::ListContainersRequest => api::ListContainersResponse);
    unary!(container_status, runtime, "container_status",
        api::ContainerStatusRequest => api::ContainerStatusResponse);
    unary!(
        /// Changes a container's cpu and memory settings in place (kubelet's metric label
        /// `update_container`).
        update_container_resources, runtime, "update_container",
        api::UpdateContainerResourcesRequest => api::UpdateContainerResourcesResponse);
    unary!(
        /// Makes the runtime open a container's log file afresh at its log path (after it was
        /// renamed to rotate it); kubelet's metric label `reopen_container_log`.
        reopen_container_log, runtime, "reopen_container_log",
        api::ReopenContainerLogRequest => api::ReopenContainerLogResponse);
    unary!(
        /// The streaming URL of an exec session (served by the runtime's streaming server).
        exec, runtime, "exec", api::ExecRequest => api::ExecResponse);
    unary!(
        /// The streaming URL of an attach session.
        attach, runtime, "attach", api::AttachRequest => api::AttachResponse);
    unary!(
        /// The streaming URL of a port-forward session.
        port_forward, runtime, "port_forward",
        api::PortForwardRequest => api::PortForwardResponse);
    unary!(
        /// Usage of the containers matching the filter.
        list_container_stats, runtime, "list_container_stats",
        api::ListContainerStatsRequest => api::ListContainerStatsResponse);
    unary!(
        /// Usage of the pod sandboxes matching the filter, with their containers' (network too).
        list_pod_sandbox_stats, runtime, "list_podsandbox_stats",
        api::ListPodSandboxStatsRequest => api::ListPodSandboxStatsResponse);
    unary!(list_images, images, "list_images",
        api::ListImagesRequest => api::ListImagesResponse);
    unary!(image_status, images, "image_status",
        api::ImageStatusRequest => api::ImageStatusResponse);
    unary!(remove_image, images, "remove_image",
        api::RemoveImageRequest => api::RemoveImageResponse);
    unary!(
        /// The image filesystem: its mount point and the bytes the images take (image GC).
        image_fs_info, images, "image_fs_info",
        api::ImageFsInfoRequest => api::ImageFsInfoResponse);

    /// Stops a container. The deadline is the grace period plus the runtime request timeout, as kubelet
    /// does, so a long grace period is not cut short by the client.
    pub async fn stop_container(
        &self,
        request: api::StopContainerRequest,
    ) -> Result<api::StopContainerResponse, CriError> {
        let grace = Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let mut client = self.runtime.clone();
        self.call(
            "stop_container",
            Some(self.timeout + grace),
            request,
            |r| async move { client.stop_container(r).await },
        )
        .await
    }

    /// Runs a command in a container; the deadline is the command's own timeout plus the request timeout.
    pub async fn exec_sync(
        &self,
        request: api::ExecSyncRequest,
    ) -> Result<api::ExecSyncResponse, CriError> {
        let own = Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let mut client = self.runtime.clone();
        self.call(
            "exec_sync",
            Some(self.timeout + own),
            request,
            |r| async move { client.exec_sync(r).await },
        )
        .await
    }

    /// Subscribes to the runtime's container events (create, start, stop, delete of containers and
    /// sandboxes). No deadline applies: the stream lasts as long as both sides do. tonic answers only
    /// once the runtime sent the response headers, which a Go runtime does with its first event: the
    /// future may stay pending until something happens. An error of the stream itself becomes
    /// [`CriError`] with [`CriError::from_status`] and [`CONTAINER_EVENTS`].
    pub async fn container_events(
        &self,
    ) -> Result<tonic::Streaming<api::ContainerEventResponse>, CriError> {
        let mut client = self.runtime.clone();
        self.call(
            CONTAINER_EVENTS,
            None,
            api::GetEventsRequest {},
            |r| async move { client.get_container_events(r).await },
        )
        .await
    }

    /// Pulls an image. Like kubelet, no request timeout applies: a large image may take long.
    pub async fn pull_image(
        &self,
        request: api::PullImageRequest,
    ) -> Result<api::PullImageResponse, CriError> {
        let mut client = self.images.clone();
        self.call("pull_image", None, request, |r| async move {
            client.pull_image(r).await
        })
        .await
    }
}
