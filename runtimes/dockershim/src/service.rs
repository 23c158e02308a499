//! The tonic service implementations: thin wrappers that trace each call and turn
//! [`OpError`](crate::error::OpError)s into gRPC statuses.

use std::collections::HashMap;
use std::time::Instant;

use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::error::OpError;
use crate::events::EventStream;
use crate::{DockerShim, RUNTIME_NAME};

type Answer<T> = Result<Response<T>, Status>;

/// The CRI API version the shim implements, as Version reports it.
const CRI_VERSION: &str = "0.1.0";

fn answer<T>(
    op: &'static str,
    target: &str,
    started: Instant,
    result: Result<T, OpError>,
) -> Answer<T> {
    match result {
        Ok(value) => {
            tracing::trace!(operation = op, target, elapsed = ?started.elapsed(), "CRI call");
            Ok(Response::new(value))
        }
        Err(err) => {
            tracing::debug!(operation = op, target, elapsed = ?started.elapsed(), error = %err, "CRI call failed");
            Err(err.into())
        }
    }
}

fn unimplemented<T>(op: &str) -> Answer<T> {
    Err(Status::unimplemented(format!(
        "{op} is not implemented by the docker CRI shim"
    )))
}

impl DockerShim {
    async fn version_response(&self) -> Result<api::VersionResponse, OpError> {
        let version = self
            .docker()
            .version()
            .await
            .map_err(|e| OpError::docker("docker version", e))?;
        Ok(api::VersionResponse {
            version: CRI_VERSION.into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: version.version.unwrap_or_default(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn status_response(&self, verbose: bool) -> api::StatusResponse {
        let (ready, reason, message) = match self.docker().ping().await {
            Ok(_) => (true, String::new(), String::new()),
            Err(e) => (
                false,
                "DockerDaemonNotReady".to_string(),
                format!("docker ping failed: {e}"),
            ),
        };
        let condition = |kind: &str| api::RuntimeCondition {
            r#type: kind.to_string(),
            status: ready,
            reason: reason.clone(),
            message: message.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            info.insert(
                "dockerEndpoint".to_string(),
                self.config().docker_endpoint.clone(),
            );
            info.insert("dockerApiVersion".to_string(), self.api_version());
            info.insert(
                "podInfraImage".to_string(),
                self.config().pod_infra_image.clone(),
            );
        }
        api::StatusResponse {
            status: Some(api::RuntimeStatus {
                // Docker's bridge is ready whenever dockerd is; CNI when its config is there.
                conditions: vec![
                    condition("RuntimeReady"),
                    self.network_ready_condition(condition("NetworkReady"))
                        .await,
                ],
            }),
            info,
            // The default handler; Docker 20.10's binds have neither feature.
            runtime_handlers: vec![api::RuntimeHandler {
                name: String::new(),
                features: Some(api::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: None,
        }
    }

    async fn runtime_config_response(&self) -> Result<api::RuntimeConfigResponse, OpError> {
        let info = self
            .docker()
            .info()
            .await
            .map_err(|e| OpError::docker("docker info", e))?;
        let driver = match info.cgroup_driver.map(|d| d.to_string()).as_deref() {
            Some("systemd") => api::CgroupDriver::Systemd,
            _ => api::CgroupDriver::Cgroupfs,
        };
        Ok(api::RuntimeConfigResponse {
            linux: Some(api::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        })
    }
}

fn sandbox_target(config: Option<&api::PodSandboxConfig>) -> String {
    config
        .and_then(|c| c.metadata.as_ref())
        .map(|m| format!("{}/{}", m.namespace, m.name))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl RuntimeService for DockerShim {
    async fn version(
        &self,
        _request: Request<api::VersionRequest>,
    ) -> Answer<api::VersionResponse> {
        let started = Instant::now();
        answer("version", "", started, self.version_response().await)
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<api::RunPodSandboxRequest>,
    ) -> Answer<api::RunPodSandboxResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = sandbox_target(request.config.as_ref());
        let result = self
            .run_pod_sandbox(request)
            .await
            .map(|pod_sandbox_id| api::RunPodSandboxResponse { pod_sandbox_id });
        answer("run_podsandbox", &target, started, result)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<api::StopPodSandboxRequest>,
    ) -> Answer<api::StopPodSandboxResponse> {
        let started = Instant::now();
        let id = request.into_inner().pod_sandbox_id;
        let result = self
            .stop_pod_sandbox(&id)
            .await
            .map(|()| api::StopPodSandboxResponse {});
        answer("stop_podsandbox", &id, started, result)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<api::RemovePodSandboxRequest>,
    ) -> Answer<api::RemovePodSandboxResponse> {
        let started = Instant::now();
        let id = request.into_inner().pod_sandbox_id;
        let result = self
            .remove_pod_sandbox(&id)
            .await
            .map(|()| api::RemovePodSandboxResponse {});
        answer("remove_podsandbox", &id, started, result)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<api::PodSandboxStatusRequest>,
    ) -> Answer<api::PodSandboxStatusResponse> {
        let started = Instant::now();
        let id = request.into_inner().pod_sandbox_id;
        let result = self.pod_sandbox_status(&id).await;
        answer("podsandbox_status", &id, started, result)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<api::ListPodSandboxRequest>,
    ) -> Answer<api::ListPodSandboxResponse> {
        let started = Instant::now();
        let result = self
            .list_pod_sandbox(request.into_inner().filter)
            .await
            .map(|items| api::ListPodSandboxResponse { items });
        answer("list_podsandbox", "", started, result)
    }

    async fn create_container(
        &self,
        request: Request<api::CreateContainerRequest>,
    ) -> Answer<api::CreateContainerResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = format!(
            "{}/{}",
            request.pod_sandbox_id,
            request
                .config
                .as_ref()
                .and_then(|c| c.metadata.as_ref())
                .map(|m| m.name.as_str())
                .unwrap_or_default()
        );
        let result = self
            .create_container(request)
            .await
            .map(|container_id| api::CreateContainerResponse { container_id });
        answer("create_container", &target, started, result)
    }

    async fn start_container(
        &self,
        request: Request<api::StartContainerRequest>,
    ) -> Answer<api::StartContainerResponse> {
        let started = Instant::now();
        let id = request.into_inner().container_id;
        let result = self
            .start_container(&id)
            .await
            .map(|()| api::StartContainerResponse {});
        answer("start_container", &id, started, result)
    }

    async fn stop_container(
        &self,
        request: Request<api::StopContainerRequest>,
    ) -> Answer<api::StopContainerResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .stop_container(&request.container_id, request.timeout)
            .await
            .map(|()| api::StopContainerResponse {});
        answer("stop_container", &request.container_id, started, result)
    }

    async fn remove_container(
        &self,
        request: Request<api::RemoveContainerRequest>,
    ) -> Answer<api::RemoveContainerResponse> {
        let started = Instant::now();
        let id = request.into_inner().container_id;
        let result = self
            .remove_container(&id)
            .await
            .map(|()| api::RemoveContainerResponse {});
        answer("remove_container", &id, started, result)
    }

    async fn list_containers(
        &self,
        request: Request<api::ListContainersRequest>,
    ) -> Answer<api::ListContainersResponse> {
        let started = Instant::now();
        let result = self
            .list_containers(request.into_inner().filter)
            .await
            .map(|containers| api::ListContainersResponse { containers });
        answer("list_containers", "", started, result)
    }

    async fn container_status(
        &self,
        request: Request<api::ContainerStatusRequest>,
    ) -> Answer<api::ContainerStatusResponse> {
        let started = Instant::now();
        let id = request.into_inner().container_id;
        let result = self.container_status(&id).await;
        answer("container_status", &id, started, result)
    }

    async fn update_container_resources(
        &self,
        request: Request<api::UpdateContainerResourcesRequest>,
    ) -> Answer<api::UpdateContainerResourcesResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let result = self
            .update_container_resources(&request.container_id, request.linux)
            .await
            .map(|()| api::UpdateContainerResourcesResponse {});
        answer("update_container", &request.container_id, started, result)
    }

    async fn reopen_container_log(
        &self,
        request: Request<api::ReopenContainerLogRequest>,
    ) -> Answer<api::ReopenContainerLogResponse> {
        let started = Instant::now();
        let id = request.into_inner().container_id;
        let result = self
            .reopen_container_log(&id)
            .await
            .map(|()| api::ReopenContainerLogResponse {});
        answer("reopen_container_log", &id, started, result)
    }

    async fn exec_sync(
        &self,
        request: Request<api::ExecSyncRequest>,
    ) -> Answer<api::ExecSyncResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let id = request.container_id.clone();
        let result = self.exec_sync(request).await;
        answer("exec_sync", &id, started, result)
    }

    async fn exec(&self, request: Request<api::ExecRequest>) -> Answer<api::ExecResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = request.container_id.clone();
        answer(
            "exec",
            &target,
            started,
            DockerShim::exec(self, request).await,
        )
    }

    async fn attach(&self, request: Request<api::AttachRequest>) -> Answer<api::AttachResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = request.container_id.clone();
        answer(
            "attach",
            &target,
            started,
            DockerShim::attach(self, request).await,
        )
    }

    async fn port_forward(
        &self,
        request: Request<api::PortForwardRequest>,
    ) -> Answer<api::PortForwardResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = request.pod_sandbox_id.clone();
        answer(
            "port_forward",
            &target,
            started,
            DockerShim::port_forward(self, request).await,
        )
    }

    async fn container_stats(
        &self,
        request: Request<api::ContainerStatsRequest>,
    ) -> Answer<api::ContainerStatsResponse> {
        let started = Instant::now();
        let id = request.into_inner().container_id;
        let result = self
            .container_stats(&id)
            .await
            .map(|stats| api::ContainerStatsResponse { stats: Some(stats) });
        answer("container_stats", &id, started, result)
    }

    async fn list_container_stats(
        &self,
        request: Request<api::ListContainerStatsRequest>,
    ) -> Answer<api::ListContainerStatsResponse> {
        let started = Instant::now();
        let result = self
            .list_container_stats(request.into_inner().filter)
            .await
            .map(|stats| api::ListContainerStatsResponse { stats });
        answer("list_container_stats", "", started, result)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<api::PodSandboxStatsRequest>,
    ) -> Answer<api::PodSandboxStatsResponse> {
        let started = Instant::now();
        let id = request.into_inner().pod_sandbox_id;
        let result = self
            .pod_sandbox_stats(&id)
            .await
            .map(|stats| api::PodSandboxStatsResponse { stats: Some(stats) });
        answer("podsandbox_stats", &id, started, result)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<api::ListPodSandboxStatsRequest>,
    ) -> Answer<api::ListPodSandboxStatsResponse> {
        let started = Instant::now();
        let result = self
            .list_pod_sandbox_stats(request.into_inner().filter)
            .await
            .map(|stats| api::ListPodSandboxStatsResponse { stats });
        answer("list_podsandbox_stats", "", started, result)
    }

    async fn update_runtime_config(
        &self,
        request: Request<api::UpdateRuntimeConfigRequest>,
    ) -> Answer<api::UpdateRuntimeConfigResponse> {
        // Docker's bridge hands out addresses from its own subnet; a pod CIDR has no use here
        // until the CNI mode exists.
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        tracing::debug!(pod_cidr = %cidr, "UpdateRuntimeConfig ignored (docker bridge networking)");
        Ok(Response::new(api::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, request: Request<api::StatusRequest>) -> Answer<api::StatusResponse> {
        Ok(Response::new(
            self.status_response(request.into_inner().verbose).await,
        ))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<api::CheckpointContainerRequest>,
    ) -> Answer<api::CheckpointContainerResponse> {
        unimplemented("CheckpointContainer")
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<api::GetEventsRequest>,
    ) -> Answer<Self::GetContainerEventsStream> {
        Ok(Response::new(self.container_events()))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<api::ListMetricDescriptorsRequest>,
    ) -> Answer<api::ListMetricDescriptorsResponse> {
        unimplemented("ListMetricDescriptors")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<api::ListPodSandboxMetricsRequest>,
    ) -> Answer<api::ListPodSandboxMetricsResponse> {
        unimplemented("ListPodSandboxMetrics")
    }

    async fn runtime_config(
        &self,
        _request: Request<api::RuntimeConfigRequest>,
    ) -> Answer<api::RuntimeConfigResponse> {
        let started = Instant::now();
        answer(
            "runtime_config",
            "",
            started,
            self.runtime_config_response().await,
        )
    }
}

#[tonic::async_trait]
impl ImageService for DockerShim {
    async fn list_images(
        &self,
        request: Request<api::ListImagesRequest>,
    ) -> Answer<api::ListImagesResponse> {
        let started = Instant::now();
        let result = self.list_images(request.into_inner().filter).await;
        answer("list_images", "", started, result)
    }

    async fn image_status(
        &self,
        request: Request<api::ImageStatusRequest>,
    ) -> Answer<api::ImageStatusResponse> {
        let started = Instant::now();
        let spec = request.into_inner().image;
        let target = spec.as_ref().map(|s| s.image.clone()).unwrap_or_default();
        let result = self.image_status(spec).await;
        answer("image_status", &target, started, result)
    }

    async fn pull_image(
        &self,
        request: Request<api::PullImageRequest>,
    ) -> Answer<api::PullImageResponse> {
        let started = Instant::now();
        let request = request.into_inner();
        let target = request
            .image
            .as_ref()
            .map(|s| s.image.clone())
            .unwrap_or_default();
        let result = self.pull_image(request).await;
        answer("pull_image", &target, started, result)
    }

    async fn remove_image(
        &self,
        request: Request<api::RemoveImageRequest>,
    ) -> Answer<api::RemoveImageResponse> {
        let started = Instant::now();
        let spec = request.into_inner().image;
        let target = spec.as_ref().map(|s| s.image.clone()).unwrap_or_default();
        let result = self
            .remove_image(spec)
            .await
            .map(|()| api::RemoveImageResponse {});
        answer("remove_image", &target, started, result)
    }

    async fn image_fs_info(
        &self,
        _request: Request<api::ImageFsInfoRequest>,
    ) -> Answer<api::ImageFsInfoResponse> {
        let started = Instant::now();
        answer("image_fs_info", "", started, self.image_fs_info().await)
    }
}
