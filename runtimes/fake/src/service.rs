//! The tonic service implementations: every RPC is logged, delayed and possibly failed by the test
//! controls, then answered from [`State`](crate::state::State).

use std::time::Duration;

use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::{FakeRuntime, Op};

type Answer<T> = Result<Response<T>, Status>;

/// The label kubelet puts a pod's UID in: a listing filtered by it is logged with that UID.
const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";

impl FakeRuntime {
    /// Logs the call, applies the configured latency and any injected failure.
    async fn begin(&self, op: Op, target: impl Into<String>) -> Result<(), Status> {
        let target = target.into();
        tracing::trace!(operation = %op, target = %target, "fake CRI call");
        let (latency, failure) = self.with_state(|s| s.record(op, target));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match failure {
            Some(code) => Err(Status::new(code, format!("injected failure for {op}"))),
            None => Ok(()),
        }
    }

    async fn unimplemented<T>(&self, op: Op) -> Answer<T> {
        self.begin(op, "").await?;
        Err(Status::unimplemented(format!(
            "{op} is not implemented by the fake CRI runtime"
        )))
    }
}

fn image_of(spec: Option<api::ImageSpec>) -> String {
    spec.map(|s| s.image).unwrap_or_default()
}

#[tonic::async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(
        &self,
        _request: Request<api::VersionRequest>,
    ) -> Answer<api::VersionResponse> {
        self.begin(Op::Version, "").await?;
        Ok(Response::new(self.with_state(|s| s.version())))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<api::RunPodSandboxRequest>,
    ) -> Answer<api::RunPodSandboxResponse> {
        let request = request.into_inner();
        let target = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| format!("{}/{}", m.namespace, m.name))
            .unwrap_or_default();
        self.begin(Op::RunPodSandbox, target).await?;
        self.with_state(|s| s.run_pod_sandbox(request))
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<api::StopPodSandboxRequest>,
    ) -> Answer<api::StopPodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        self.begin(Op::StopPodSandbox, id.clone()).await?;
        self.with_state(|s| s.stop_pod_sandbox(&id));
        Ok(Response::new(api::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<api::RemovePodSandboxRequest>,
    ) -> Answer<api::RemovePodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        self.begin(Op::RemovePodSandbox, id.clone()).await?;
        self.with_state(|s| s.remove_pod_sandbox(&id));
        Ok(Response::new(api::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<api::PodSandboxStatusRequest>,
    ) -> Answer<api::PodSandboxStatusResponse> {
        let id = request.into_inner().pod_sandbox_id;
        self.begin(Op::PodSandboxStatus, id.clone()).await?;
        self.with_state(|s| s.pod_sandbox_status(&id))
            .map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<api::ListPodSandboxRequest>,
    ) -> Answer<api::ListPodSandboxResponse> {
        let filter = request.into_inner().filter;
        let target = filter
            .as_ref()
            .and_then(|f| f.label_selector.get(POD_UID_LABEL).cloned())
            .unwrap_or_default();
        self.begin(Op::ListPodSandbox, target).await?;
        Ok(Response::new(
            self.with_state(|s| s.list_pod_sandbox(filter)),
        ))
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> Answer<api::CreateContainerResponse> {
        let request = request.into_inner();
        let name = request
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        let target = format!("{}/{name}", request.pod_sandbox_id);
        self.begin(Op::CreateContainer, target).await?;
        self.with_state(|s| s.create_container(request))
            .map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> Answer<api::StartContainerResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::StartContainer, id.clone()).await?;
        self.with_state(|s| s.start_container(&id))?;
        Ok(Response::new(api::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<api::StopContainerRequest>,
    ) -> Answer<api::StopContainerResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::StopContainer, id.clone()).await?;
        self.with_state(|s| s.stop_container(&id))?;
        Ok(Response::new(api::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> Answer<api::RemoveContainerResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::RemoveContainer, id.clone()).await?;
        self.with_state(|s| s.remove_container(&id));
        Ok(Response::new(api::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<api::ListContainersRequest>,
    ) -> Answer<api::ListContainersResponse> {
        let filter = request.into_inner().filter;
        let target = filter
            .as_ref()
            .and_then(|f| f.label_selector.get(POD_UID_LABEL).cloned())
            .unwrap_or_default();
        self.begin(Op::ListContainers, target).await?;
        Ok(Response::new(
            self.with_state(|s| s.list_containers(filter)),
        ))
    }

    async fn container_status(
        &self,
        request: Request<api::ContainerStatusRequest>,
    ) -> Answer<api::ContainerStatusResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::ContainerStatus, id.clone()).await?;
        self.with_state(|s| s.container_status(&id))
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        request: Request<api::UpdateContainerResourcesRequest>,
    ) -> Answer<api::UpdateContainerResourcesResponse> {
        let request = request.into_inner();
        self.begin(Op::UpdateContainerResources, request.container_id.clone())
            .await?;
        self.with_state(|s| s.update_container_resources(request))?;
        Ok(Response::new(api::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<api::ReopenContainerLogRequest>,
    ) -> Answer<api::ReopenContainerLogResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::ReopenContainerLog, id.clone()).await?;
        self.with_state(|s| s.reopen_container_log(&id))?;
        Ok(Response::new(api::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<api::ExecSyncRequest>,
    ) -> Answer<api::ExecSyncResponse> {
        let request = request.into_inner();
        self.begin(Op::ExecSync, request.container_id.clone())
            .await?;
        let result = self.with_state(|s| s.exec_sync(&request.container_id, &request.cmd))?;
        let limit = u64::try_from(request.timeout)
            .ok()
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs);
        match limit {
            Some(limit) if result.delay > limit => {
                tokio::time::sleep(limit).await;
                return Err(Status::deadline_exceeded(format!(
                    "timeout {limit:?} exceeded: context deadline exceeded"
                )));
            }
            _ if !result.delay.is_zero() => tokio::time::sleep(result.delay).await,
            _ => {}
        }
        Ok(Response::new(api::ExecSyncResponse {
            stdout: result.stdout,
            stderr: result.stderr,
            exit_code: result.exit_code,
        }))
    }

    async fn exec(&self, _request: Request<api::ExecRequest>) -> Answer<api::ExecResponse> {
        self.unimplemented(Op::Exec).await
    }

    async fn attach(&self, _request: Request<api::AttachRequest>) -> Answer<api::AttachResponse> {
        self.unimplemented(Op::Attach).await
    }

    async fn port_forward(
        &self,
        _request: Request<api::PortForwardRequest>,
    ) -> Answer<api::PortForwardResponse> {
        self.unimplemented(Op::PortForward).await
    }

    async fn container_stats(
        &self,
        request: Request<api::ContainerStatsRequest>,
    ) -> Answer<api::ContainerStatsResponse> {
        let id = request.into_inner().container_id;
        self.begin(Op::ContainerStats, id.clone()).await?;
        self.with_state(|s| s.container_stats_of(&id))
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        request: Request<api::ListContainerStatsRequest>,
    ) -> Answer<api::ListContainerStatsResponse> {
        let filter = request.into_inner().filter;
        self.begin(Op::ListContainerStats, "").await?;
        Ok(Response::new(
            self.with_state(|s| s.list_container_stats(filter)),
        ))
    }

    async fn pod_sandbox_stats(
        &self,
        _request: Request<api::PodSandboxStatsRequest>,
    ) -> Answer<api::PodSandboxStatsResponse> {
        self.unimplemented(Op::PodSandboxStats).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        _request: Request<api::ListPodSandboxStatsRequest>,
    ) -> Answer<api::ListPodSandboxStatsResponse> {
        self.unimplemented(Op::ListPodSandboxStats).await
    }

    async fn update_runtime_config(
        &self,
        request: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Answer<api::UpdateRuntimeConfigResponse> {
        let request = request.into_inner();
        self.begin(Op::UpdateRuntimeConfig, "").await?;
        self.with_state(|s| s.update_runtime_config(request));
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _request: Request<api::StatusRequest>) -> Answer<api::StatusResponse> {
        self.begin(Op::Status, "").await?;
        Ok(Response::new(self.with_state(|s| s.status())))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<api::CheckpointContainerRequest>,
    ) -> Answer<api::CheckpointContainerResponse> {
        self.unimplemented(Op::CheckpointContainer).await
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<api::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<api::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        let Some(events) = self.subscribe_events() else {
            return self.unimplemented(Op::GetContainerEvents).await;
        };
        self.begin(Op::GetContainerEvents, "").await?;
        // A subscriber that lags behind gets an error (events were lost: it must list again); a
        // disabled feed ends the stream.
        let stream = tokio_stream::wrappers::BroadcastStream::new(events).map(|event| {
            event.map_err(|lag| Status::data_loss(format!("event stream lagged: {lag}")))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<api::ListMetricDescriptorsRequest>,
    ) -> Answer<api::ListMetricDescriptorsResponse> {
        self.unimplemented(Op::ListMetricDescriptors).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Answer<api::ListPodSandboxMetricsResponse> {
        self.unimplemented(Op::ListPodSandboxMetrics).await
    }

    async fn runtime_config(
        &self,
        _request: Request<api::RuntimeConfigRequest>,
    ) -> Answer<api::RuntimeConfigResponse> {
        self.begin(Op::RuntimeConfig, "").await?;
        Ok(Response::new(self.with_state(|s| s.runtime_config())))
    }
}

#[tonic::async_trait]
impl ImageService for FakeRuntime {
    async fn list_images(
        &self,
        request: Request<api::ListImagesRequest>,
    ) -> Answer<api::ListImagesResponse> {
        let filter = request.into_inner().filter;
        self.begin(Op::ListImages, "").await?;
        Ok(Response::new(self.with_state(|s| s.list_images(filter))))
    }

    async fn image_status(
        &self,
        request: Request<api::ImageStatusRequest>,
    ) -> Answer<api::ImageStatusResponse> {
        let reference = image_of(request.into_inner().image);
        self.begin(Op::ImageStatus, reference.clone()).await?;
        Ok(Response::new(
            self.with_state(|s| s.image_status(&reference)),
        ))
    }

    async fn pull_image(
        &self,
        request: Request<api::PullImageRequest>,
    ) -> Answer<api::PullImageResponse> {
        let reference = image_of(request.into_inner().image);
        self.begin(Op::PullImage, reference.clone()).await?;
        let image_ref = self.with_state(|s| s.pull_image(&reference))?;
        Ok(Response::new(api::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<api::RemoveImageRequest>,
    ) -> Answer<api::RemoveImageResponse> {
        let reference = image_of(request.into_inner().image);
        self.begin(Op::RemoveImage, reference.clone()).await?;
        self.with_state(|s| s.remove_image(&reference));
        Ok(Response::new(api::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<api::ImageFsInfoRequest>,
    ) -> Answer<api::ImageFsInfoResponse> {
        self.begin(Op::ImageFsInfo, "").await?;
        Ok(Response::new(self.with_state(|s| s.image_fs_info())))
    }
}
