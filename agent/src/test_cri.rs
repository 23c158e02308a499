//! What the unit tests that drive the fake CRI runtime through the agent's CRI client share: the
//! fake runtime served in a temporary directory with a client of it, kubelet-shaped sandbox and
//! container configs, and a container run and started in one call.

use std::time::Duration;

use mk_cri::{CriClient, CriMetrics, api};
use mk_fake_runtime::{FakeRuntime, ServerHandle};

/// A fake CRI runtime served on `<dir>/cri.sock`, and the agent's CRI client of it.
pub struct FakeCri {
    pub dir: tempfile::TempDir,
    pub fake: FakeRuntime,
    pub server: ServerHandle,
    pub cri: CriClient,
}

/// Serves a new fake runtime that holds `images`.
pub fn serve_fake(images: &[&str]) -> FakeCri {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = FakeRuntime::new();
    for image in images {
        fake.add_image(image);
    }
    let server = fake
        .serve_unix(dir.path().join("cri.sock"))
        .expect("fake CRI");
    let cri = CriClient::new(
        &server.endpoint(),
        Duration::from_secs(5),
        CriMetrics::default(),
    )
    .expect("CRI client");
    FakeCri {
        dir,
        fake,
        server,
        cri,
    }
}

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
