//! What the unit tests that drive the fake CRI runtime through the agent's CRI client share:
//! kubelet-shaped sandbox and container configs, and a container run and started in one call.

use mk_cri::{CriClient, api};

/// A sandbox config for pod `pod` (UID `uid-<pod>`, namespace `default`).
pub fn sandbox_config(pod: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: pod.into(),
            uid: format!("uid-{pod}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

/// A container `name` (instance `attempt`) of `image` that runs `sleep infinity`.
pub fn sleeping_container(name: &str, attempt: u32, image: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "infinity".into()],
        ..Default::default()
    }
}

/// Runs a sandbox; returns its ID.
pub async fn run_sandbox(cri: &CriClient, config: &api::PodSandboxConfig) -> String {
    cri.run_pod_sandbox(api::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .expect("sandbox")
    .pod_sandbox_id
}

/// Creates and starts a container in sandbox `sandbox_id`; returns its ID.
pub async fn start_container(
    cri: &CriClient,
    sandbox_id: &str,
    sandbox_config: &api::PodSandboxConfig,
    config: api::ContainerConfig,
) -> String {
    let id = cri
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        })
        .await
        .expect("create")
        .container_id;
    cri.start_container(api::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("start");
    id
}
