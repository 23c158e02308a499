//! The CRI client against the in-memory fake runtime over a real unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mk_cri::{CriClient, CriError, CriMetrics, api};
use mk_fake_runtime::{FakeRuntime, Op};

const TIMEOUT: Duration = Duration::from_secs(5);
const IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.52";

struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    fake: FakeRuntime,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("fake.sock");
        Self {
            _dir: dir,
            socket,
            fake: FakeRuntime::new(),
        }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn client(&self, timeout: Duration) -> CriClient {
        CriClient::new(&self.endpoint(), timeout, CriMetrics::default()).expect("client")
    }

    fn serve(&self) -> mk_fake_runtime::ServerHandle {
        self.fake.serve_unix(&self.socket).expect("serve")
    }
}

fn sandbox_config(name: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        log_directory: format!("/var/log/pods/default_{name}_uid-{name}"),
        labels: [("app".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

async fn run_pod(client: &CriClient, name: &str) -> Result<String, CriError> {
    let response = client
        .run_pod_sandbox(api::RunPodSandboxRequest {
            config: Some(sandbox_config(name)),
            runtime_handler: String::new(),
        })
        .await?;
    Ok(response.pod_sandbox_id)
}

fn image_spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

fn assert_socket_gone(socket: &Path) {
    assert!(!socket.exists(), "{} should be removed", socket.display());
}

#[tokio::test]
async fn a_pod_lifecycle_works_and_is_counted() {
    let h = Harness::new();
    let server = h.serve();
    let client = h.client(TIMEOUT);

    let version = client
        .version(api::VersionRequest {
            version: "0.1.0".to_string(),
        })
        .await
        .expect("version");
    assert_eq!(
        (
            version.runtime_name.as_str(),
            version.runtime_api_version.as_str()
        ),
        ("fake", "v1")
    );
    let status = client
        .status(api::StatusRequest { verbose: false })
        .await
        .expect("status");
    let conditions = status.status.expect("runtime status").conditions;
    assert!(conditions.iter().all(|c| c.status), "{conditions:?}");

    assert!(
        client
            .image_status(api::ImageStatusRequest {
                image: image_spec(IMAGE),
                verbose: false,
            })
            .await
            .expect("image status")
            .image
            .is_none()
    );
    let image_ref = client
        .pull_image(api::PullImageRequest {
            image: image_spec(IMAGE),
            ..Default::default()
        })
        .await
        .expect("pull")
        .image_ref;
    assert!(image_ref.starts_with("sha256:"));

    let pod = run_pod(&client, "web").await.expect("run sandbox");
    let sandbox = client
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("sandbox status")
        .status
        .expect("status");
    assert_eq!(sandbox.state, api::PodSandboxState::SandboxReady as i32);
    assert_eq!(sandbox.network.expect("network").ip, "10.88.0.2");

    let container = client
        .create_container(api::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: "app".to_string(),
                    attempt: 0,
                }),
                image: image_spec(&image_ref),
                log_path: "app/0.log".to_string(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox_config("web")),
        })
        .await
        .expect("create")
        .container_id;
    client
        .start_container(api::StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .expect("start");
    let listed = client
        .list_containers(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list");
    assert_eq!(listed.containers.len(), 1);

    let resized = api::LinuxContainerResources {
        cpu_shares: 307,
        cpu_quota: 30_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    };
    client
        .update_container_resources(api::UpdateContainerResourcesRequest {
            container_id: container.clone(),
            linux: Some(resized.clone()),
            ..Default::default()
        })
        .await
        .expect("update resources");

    let exec = client
        .exec_sync(api::ExecSyncRequest {
            container_id: container.clone(),
            cmd: vec!["cat".to_string(), "/etc/hostname".to_string()],
            timeout: 1,
        })
        .await
        .expect("exec");
    assert_eq!(
        (exec.exit_code, exec.stdout.as_slice()),
        (0, &b"cat /etc/hostname"[..])
    );

    client
        .stop_container(api::StopContainerRequest {
            container_id: container.clone(),
            timeout: 30,
        })
        .await
        .expect("stop");
    let status = client
        .container_status(api::ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        })
        .await
        .expect("container status")
        .status
        .expect("status");
    assert_eq!(status.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(status.exit_code, 137);
    assert_eq!(
        status.resources.and_then(|r| r.linux),
        Some(resized),
        "the runtime reports the updated resources"
    );
    assert_eq!(
        status.log_path,
        "/var/log/pods/default_web_uid-web/app/0.log"
    );

    client
        .remove_container(api::RemoveContainerRequest {
            container_id: container,
        })
        .await
        .expect("remove container");
    client
        .stop_pod_sandbox(api::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("stop sandbox");
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: pod,
        })
        .await
        .expect("remove sandbox");
    let left = client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .expect("list sandboxes");
    assert!(left.items.is_empty());

    let metrics = client.metrics();
    for op in [
        "version",
        "status",
        "image_status",
        "pull_image",
        "run_podsandbox",
        "podsandbox_status",
        "create_container",
        "start_container",
        "list_containers",
        "update_container",
        "exec_sync",
        "stop_container",
        "container_status",
        "remove_container",
        "stop_podsandbox",
        "remove_podsandbox",
        "list_podsandbox",
    ] {
        assert_eq!(metrics.operation_count(op), 1, "{op}");
        assert_eq!(metrics.error_count(op), 0, "{op}");
        // The fake saw the same call (its op names parse from kubelet's metric labels).
        let fake_op: Op = op.parse().expect("op name");
        assert_eq!(h.fake.call_count(fake_op), 1, "{op}");
    }
    server.shutdown().await.expect("shutdown");
    assert_socket_gone(&h.socket);
}

#[tokio::test]
async fn errors_are_typed_and_counted() {
    let h = Harness::new();
    let _server = h.serve();
    let client = h.client(TIMEOUT);

    let err = client
        .pod_sandbox_status(api::PodSandboxStatusRequest {
            pod_sandbox_id: "does-not-exist".to_string(),
            verbose: false,
        })
        .await
        .expect_err("unknown sandbox");
    assert!(
        matches!(
            err,
            CriError::NotFound {
                op: "podsandbox_status",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_not_found());
    assert!(!err.is_unavailable());
    assert!(err.message().contains("does-not-exist"));

    let err = client
        .container_status(api::ContainerStatusRequest {
            container_id: "nope".to_string(),
            verbose: false,
        })
        .await
        .expect_err("unknown container");
    assert!(err.is_not_found());

    h.fake.set_unpullable("ghcr.io/acme/private:v1");
    let err = client
        .pull_image(api::PullImageRequest {
            image: image_spec("ghcr.io/acme/private:v1"),
            ..Default::default()
        })
        .await
        .expect_err("unpullable");
    assert!(err.is_not_found());
    assert!(
        err.message().contains("failed to resolve reference"),
        "{err}"
    );

    h.fake.fail_next(Op::RunPodSandbox, tonic::Code::Internal);
    let err = run_pod(&client, "web").await.expect_err("injected");
    assert!(
        matches!(
            err,
            CriError::Status {
                op: "run_podsandbox",
                code: tonic::Code::Internal,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_not_found() && !err.is_unavailable());
    run_pod(&client, "web")
        .await
        .expect("only one failure injected");

    // Idempotent removals are not errors.
    client
        .remove_pod_sandbox(api::RemovePodSandboxRequest {
            pod_sandbox_id: "gone".to_string(),
        })
        .await
        .expect("remove unknown sandbox");
    client
        .remove_container(api::RemoveContainerRequest {
            container_id: "gone".to_string(),
        })
        .await
        .expect("remove unknown container");

    let metrics = client.metrics();
    assert_eq!(metrics.operation_count("podsandbox_status"), 1);
    assert_eq!(metrics.error_count("podsandbox_status"), 1);
    assert_eq!(metrics.error_count("container_status"), 1);
    assert_eq!(metrics.error_count("pull_image"), 1);
    assert_eq!(metrics.operation_count("run_podsandbox"), 2);
    assert_eq!(metrics.error_count("run_podsandbox"), 1);
    assert_eq!(metrics.error_count("remove_podsandbox"), 0);
}

#[tokio::test]
async fn the_same_client_reconnects_after_the_runtime_restarts() {
    let h = Harness::new();
    // The client is created before the runtime is up: it connects lazily.
    let client = h.client(TIMEOUT);
    let err = client
        .version(api::VersionRequest::default())
        .await
        .expect_err("nothing listening yet");
    assert!(err.is_unavailable(), "{err:?}");

    let server = h.serve();
    let pod = run_pod(&client, "web").await.expect("runtime is up");

    server.shutdown().await.expect("shutdown");
    assert_socket_gone(&h.socket);
    let err = client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .expect_err("runtime is down");
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        matches!(
            err,
            CriError::Unavailable {
                op: "list_podsandbox",
                ..
            }
        ),
        "{err:?}"
    );

    // Restarted on the same socket with its state kept: the same client works again.
    let _server = h.serve();
    let listed = client
        .list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
        .await
        .expect("reconnected");
    assert_eq!(
        listed
            .items
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec![pod.as_str()]
    );

    let metrics = client.metrics();
    assert_eq!(metrics.operation_count("list_podsandbox"), 2);
    assert_eq!(metrics.error_count("list_podsandbox"), 1);
    assert_eq!(metrics.error_count("version"), 1);
}

#[tokio::test]
async fn a_dropped_server_handle_also_takes_the_runtime_down() {
    let h = Harness::new();
    let server = h.serve();
    let client = h.client(TIMEOUT);
    client
        .version(api::VersionRequest::default())
        .await
        .expect("up");
    drop(server);
    assert_socket_gone(&h.socket);
    // Dropping cannot wait: the server closes its connections in the background, very soon.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = client
        .version(api::VersionRequest::default())
        .await
        .expect_err("down");
    assert!(err.is_unavailable(), "{err:?}");
    let _server = h.serve();
    client
        .version(api::VersionRequest::default())
        .await
        .expect("up again");
}

#[tokio::test]
async fn a_slow_runtime_times_out() {
    let h = Harness::new();
    let _server = h.serve();
    let timeout = Duration::from_millis(200);
    let client = h.client(timeout);
    client
        .version(api::VersionRequest::default())
        .await
        .expect("fast enough");

    h.fake.set_latency(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let err = run_pod(&client, "slow").await.expect_err("too slow");
    assert!(
        matches!(err, CriError::Timeout { op: "run_podsandbox", timeout: t } if t == timeout),
        "{err:?}"
    );
    assert!(err.is_unavailable());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "gave up at the timeout"
    );
    assert_eq!(client.metrics().error_count("run_podsandbox"), 1);

    h.fake.set_latency(Duration::ZERO);
    client
        .version(api::VersionRequest::default())
        .await
        .expect("the client still works once the runtime is fast again");
}
