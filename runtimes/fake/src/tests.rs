//! Semantics of the fake, driven through the generated service traits (no transport).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use api::image_service_server::ImageService;
use api::runtime_service_server::RuntimeService;
use api::{ContainerState, PodSandboxState};
use tonic::{Code, Request};

use super::*;

const IMAGE: &str = "busybox:1.36";

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sandbox_config(name: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: format!("/var/log/pods/default_{name}_uid-{name}"),
        labels: labels(&[("app", name), ("tier", "web")]),
        annotations: labels(&[("note", name)]),
        ..Default::default()
    }
}

fn host_network(mut config: api::PodSandboxConfig) -> api::PodSandboxConfig {
    config.linux = Some(api::LinuxPodSandboxConfig {
        security_context: Some(api::LinuxSandboxSecurityContext {
            namespace_options: Some(api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

fn container_config(name: &str, image: &str, command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 2,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels: labels(&[("container", name)]),
        annotations: labels(&[("hash", "abc")]),
        log_path: format!("{name}/2.log"),
        ..Default::default()
    }
}

async fn run(fake: &FakeRuntime, config: api::PodSandboxConfig) -> Result<String, tonic::Status> {
    let response = fake
        .run_pod_sandbox(Request::new(api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        }))
        .await?;
    Ok(response.into_inner().pod_sandbox_id)
}

async fn run_pod(fake: &FakeRuntime, name: &str) -> String {
    run(fake, sandbox_config(name)).await.expect("run sandbox")
}

async fn create(
    fake: &FakeRuntime,
    sandbox_id: &str,
    config: api::ContainerConfig,
) -> Result<String, tonic::Status> {
    let sandbox_config = fake.sandbox(sandbox_id).map(|s| s.config);
    let response = fake
        .create_container(Request::new(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config),
            sandbox_config,
        }))
        .await?;
    Ok(response.into_inner().container_id)
}

async fn start(fake: &FakeRuntime, id: &str) -> Result<(), tonic::Status> {
    fake.start_container(Request::new(api::StartContainerRequest {
        container_id: id.to_string(),
    }))
    .await
    .map(drop)
}

async fn stop(fake: &FakeRuntime, id: &str) -> Result<(), tonic::Status> {
    fake.stop_container(Request::new(api::StopContainerRequest {
        container_id: id.to_string(),
        timeout: 30,
    }))
    .await
    .map(drop)
}

async fn remove(fake: &FakeRuntime, id: &str) -> Result<(), tonic::Status> {
    fake.remove_container(Request::new(api::RemoveContainerRequest {
        container_id: id.to_string(),
    }))
    .await
    .map(drop)
}

async fn stop_pod(fake: &FakeRuntime, id: &str) -> Result<(), tonic::Status> {
    fake.stop_pod_sandbox(Request::new(api::StopPodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    }))
    .await
    .map(drop)
}

async fn remove_pod(fake: &FakeRuntime, id: &str) -> Result<(), tonic::Status> {
    fake.remove_pod_sandbox(Request::new(api::RemovePodSandboxRequest {
        pod_sandbox_id: id.to_string(),
    }))
    .await
    .map(drop)
}

async fn pod_status(fake: &FakeRuntime, id: &str) -> Result<api::PodSandboxStatus, tonic::Status> {
    let response = fake
        .pod_sandbox_status(Request::new(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        }))
        .await?;
    Ok(response.into_inner().status.expect("status"))
}

async fn status(fake: &FakeRuntime, id: &str) -> Result<api::ContainerStatus, tonic::Status> {
    let response = fake
        .container_status(Request::new(api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        }))
        .await?;
    Ok(response.into_inner().status.expect("status"))
}

async fn list_pods(fake: &FakeRuntime, filter: api::PodSandboxFilter) -> Vec<String> {
    fake.list_pod_sandbox(Request::new(api::ListPodSandboxRequest {
        filter: Some(filter),
    }))
    .await
    .expect("list sandboxes")
    .into_inner()
    .items
    .into_iter()
    .map(|s| s.id)
    .collect()
}

async fn list_containers(fake: &FakeRuntime, filter: api::ContainerFilter) -> Vec<String> {
    fake.list_containers(Request::new(api::ListContainersRequest {
        filter: Some(filter),
    }))
    .await
    .expect("list containers")
    .into_inner()
    .containers
    .into_iter()
    .map(|c| c.id)
    .collect()
}

async fn exec(
    fake: &FakeRuntime,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<api::ExecSyncResponse, tonic::Status> {
    fake.exec_sync(Request::new(api::ExecSyncRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    }))
    .await
    .map(tonic::Response::into_inner)
}

fn image_spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(fake: &FakeRuntime, image: &str) -> Result<String, tonic::Status> {
    let response = fake
        .pull_image(Request::new(api::PullImageRequest {
            image: image_spec(image),
            ..Default::default()
        }))
        .await?;
    Ok(response.into_inner().image_ref)
}

async fn image_status(fake: &FakeRuntime, image: &str) -> Option<api::Image> {
    fake.image_status(Request::new(api::ImageStatusRequest {
        image: image_spec(image),
        verbose: false,
    }))
    .await
    .expect("image status")
    .into_inner()
    .image
}

/// A fake with the test image and one ready sandbox `web`.
async fn with_pod() -> (FakeRuntime, String) {
    let fake = FakeRuntime::new();
    fake.add_image(IMAGE);
    let pod = run_pod(&fake, "web").await;
    (fake, pod)
}

#[tokio::test]
async fn version_and_status() {
    let fake = FakeRuntime::new();
    let version = fake
        .version(Request::new(api::VersionRequest::default()))
        .await
        .expect("version")
        .into_inner();
    assert_eq!(version.runtime_name, "fake");
    assert_eq!(version.runtime_api_version, "v1");

    let conditions = |fake: &FakeRuntime| {
        let fake = fake.clone();
        async move {
            fake.status(Request::new(api::StatusRequest { verbose: false }))
                .await
                .expect("status")
                .into_inner()
                .status
                .expect("runtime status")
                .conditions
                .into_iter()
                .map(|c| (c.r#type, c.status))
                .collect::<HashMap<_, _>>()
        }
    };
    let ready = conditions(&fake).await;
    assert_eq!(ready.get("RuntimeReady"), Some(&true));
    assert_eq!(ready.get("NetworkReady"), Some(&true));

    fake.set_network_ready(false);
    assert_eq!(conditions(&fake).await.get("NetworkReady"), Some(&false));
    let err = run(&fake, sandbox_config("a")).await.expect_err("no CNI");
    assert!(err.message().contains("cni plugin not initialized"));
    run(&fake, host_network(sandbox_config("b")))
        .await
        .expect("host network needs no CNI");
}

#[tokio::test]
async fn run_pod_sandbox_assigns_ids_and_sequential_ips_and_keeps_config() {
    let fake = FakeRuntime::new();
    let a = run_pod(&fake, "a").await;
    let b = run_pod(&fake, "b").await;
    assert_eq!(a.len(), 64);
    assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(a, b);

    let status = pod_status(&fake, &a).await.expect("status");
    assert_eq!(status.id, a);
    assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
    assert!(status.created_at > 0);
    let metadata = status.metadata.expect("metadata");
    assert_eq!(
        (metadata.name.as_str(), metadata.namespace.as_str()),
        ("a", "default")
    );
    assert_eq!(status.labels, labels(&[("app", "a"), ("tier", "web")]));
    assert_eq!(status.annotations, labels(&[("note", "a")]));
    assert_eq!(status.network.expect("network").ip, "10.88.0.2");
    assert_eq!(
        pod_status(&fake, &b)
            .await
            .expect("b")
            .network
            .expect("net")
            .ip,
        "10.88.0.3"
    );
    assert_eq!(fake.sandboxes().len(), 2);
    assert_eq!(fake.sandboxes()[0].id, a, "snapshots are in creation order");
}

#[tokio::test]
async fn host_network_sandbox_has_no_ip_and_reports_its_namespace_mode() {
    let fake = FakeRuntime::new();
    let id = run(&fake, host_network(sandbox_config("h")))
        .await
        .expect("run");
    let status = pod_status(&fake, &id).await.expect("status");
    assert_eq!(status.network.expect("network").ip, "");
    let network_mode = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options)
        .map(|o| o.network);
    assert_eq!(network_mode, Some(api::NamespaceMode::Node as i32));
    assert!(fake.sandbox(&id).expect("snapshot").host_network);
}

#[tokio::test]
async fn sandbox_names_are_reserved_until_removed() {
    let fake = FakeRuntime::new();
    let first = run_pod(&fake, "dup").await;
    let err = run(&fake, sandbox_config("dup"))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut next_attempt = sandbox_config("dup");
    if let Some(m) = next_attempt.metadata.as_mut() {
        m.attempt = 1;
    }
    run(&fake, next_attempt)
        .await
        .expect("another attempt is another name");
    remove_pod(&fake, &first).await.expect("remove");
    run(&fake, sandbox_config("dup"))
        .await
        .expect("name free again");
}

#[tokio::test]
async fn unknown_runtime_handler_is_rejected_unless_added() {
    let fake = FakeRuntime::new();
    let request = || api::RunPodSandboxRequest {
        config: Some(sandbox_config("k")),
        runtime_handler: "kata".to_string(),
    };
    let err = fake
        .run_pod_sandbox(Request::new(request()))
        .await
        .expect_err("unknown handler");
    assert!(err.message().contains("no runtime for"));
    fake.add_runtime_handler("kata");
    fake.run_pod_sandbox(Request::new(request()))
        .await
        .expect("known handler");
}

#[tokio::test]
async fn stop_pod_sandbox_kills_containers_and_is_idempotent() {
    let (fake, pod) = with_pod().await;
    let running = create(&fake, &pod, container_config("app", IMAGE, &[]))
        .await
        .expect("create");
    start(&fake, &running).await.expect("start");
    let created = create(&fake, &pod, container_config("side", IMAGE, &[]))
        .await
        .expect("create");

    stop_pod(&fake, &pod).await.expect("stop");
    let status = pod_status(&fake, &pod).await.expect("status");
    assert_eq!(status.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(status.network.expect("network").ip, "", "IP released");

    let killed = self::status(&fake, &running).await.expect("status");
    assert_eq!(killed.state, ContainerState::ContainerExited as i32);
    assert_eq!((killed.exit_code, killed.reason.as_str()), (137, "Error"));
    assert!(killed.finished_at >= killed.started_at && killed.finished_at > 0);
    let untouched = self::status(&fake, &created).await.expect("status");
    assert_eq!(untouched.state, ContainerState::ContainerCreated as i32);

    stop_pod(&fake, &pod).await.expect("again");
    stop_pod(&fake, "0123").await.expect("unknown sandbox");
    let err = create(&fake, &pod, container_config("late", IMAGE, &[]))
        .await
        .expect_err("sandbox not ready");
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The released IP is handed out again once the range wraps; the next one is fresh.
    let next = run_pod(&fake, "next").await;
    assert_eq!(fake.sandbox(&next).expect("next").ip, "10.88.0.3");
}

#[tokio::test]
async fn remove_pod_sandbox_removes_its_containers_and_is_idempotent() {
    let (fake, pod) = with_pod().await;
    let other = run_pod(&fake, "other").await;
    let app = create(&fake, &pod, container_config("app", IMAGE, &[]))
        .await
        .expect("create");
    start(&fake, &app).await.expect("start");
    let keep = create(&fake, &other, container_config("app", IMAGE, &[]))
        .await
        .expect("create");

    remove_pod(&fake, &pod)
        .await
        .expect("remove running sandbox");
    let err = pod_status(&fake, &pod).await.expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        status(&fake, &app).await.expect_err("gone").code(),
        Code::NotFound
    );
    assert_eq!(
        fake.containers()
            .iter()
            .map(|c| c.id.clone())
            .collect::<Vec<_>>(),
        vec![keep]
    );
    remove_pod(&fake, &pod).await.expect("again");
    remove_pod(&fake, "unknown").await.expect("unknown");
}

#[tokio::test]
async fn pod_sandbox_status_of_unknown_is_not_found() {
    let fake = FakeRuntime::new();
    let err = pod_status(&fake, "nope").await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_pod_sandbox_filters() {
    let fake = FakeRuntime::new();
    let a = run_pod(&fake, "a").await;
    let b = run_pod(&fake, "b").await;
    let mut other = sandbox_config("c");
    other.labels = labels(&[("app", "c"), ("tier", "db")]);
    let c = run(&fake, other).await.expect("run");
    stop_pod(&fake, &b).await.expect("stop");

    let all = list_pods(&fake, api::PodSandboxFilter::default()).await;
    assert_eq!(all, vec![a.clone(), b.clone(), c.clone()]);
    let by_id = api::PodSandboxFilter {
        id: b.clone(),
        ..Default::default()
    };
    assert_eq!(list_pods(&fake, by_id).await, vec![b.clone()]);
    let ready = api::PodSandboxFilter {
        state: Some(api::PodSandboxStateValue {
            state: PodSandboxState::SandboxReady as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        list_pods(&fake, ready.clone()).await,
        vec![a.clone(), c.clone()]
    );
    let web = api::PodSandboxFilter {
        label_selector: labels(&[("tier", "web")]),
        ..Default::default()
    };
    assert_eq!(
        list_pods(&fake, web.clone()).await,
        vec![a.clone(), b.clone()]
    );
    let ready_web = api::PodSandboxFilter {
        label_selector: web.label_selector,
        ..ready
    };
    assert_eq!(list_pods(&fake, ready_web).await, vec![a]);
    let missing = api::PodSandboxFilter {
        label_selector: labels(&[("tier", "web"), ("app", "c")]),
        ..Default::default()
    };
    assert!(list_pods(&fake, missing).await.is_empty());
    let none = fake
        .list_pod_sandbox(Request::new(api::ListPodSandboxRequest { filter: None }))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(none.items.len(), 3);
}

#[tokio::test]
async fn create_container_requires_sandbox_and_image() {
    let (fake, pod) = with_pod().await;
    let err = create(&fake, "nope", container_config("app", IMAGE, &[]))
        .await
        .expect_err("no sandbox");
    assert_eq!(err.code(), Code::NotFound);
    let err = create(&fake, &pod, container_config("app", "nginx", &[]))
        .await
        .expect_err("no image");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("nginx"));

    // Any spelling of a present image works, and so does its ID.
    let id = create(
        &fake,
        &pod,
        container_config("a", "docker.io/library/busybox:1.36", &[]),
    )
    .await
    .expect("normalized reference");
    let image_id = fake.container(&id).expect("snapshot").image_id;
    create(&fake, &pod, container_config("b", &image_id, &[]))
        .await
        .expect("by image ID");

    // Container names (name + pod + attempt) are reserved until removal.
    let err = create(&fake, &pod, container_config("a", IMAGE, &[]))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists);
    remove(&fake, &id).await.expect("remove");
    create(&fake, &pod, container_config("a", IMAGE, &[]))
        .await
        .expect("name free again");
}

#[tokio::test]
async fn container_lifecycle_and_status() {
    let (fake, pod) = with_pod().await;
    let id = create(&fake, &pod, container_config("app", IMAGE, &["nginx"]))
        .await
        .expect("create");
    let created = status(&fake, &id).await.expect("status");
    assert_eq!(created.state, ContainerState::ContainerCreated as i32);
    assert!(created.created_at > 0);
    assert_eq!((created.started_at, created.finished_at), (0, 0));
    let metadata = created.metadata.expect("metadata");
    assert_eq!((metadata.name.as_str(), metadata.attempt), ("app", 2));
    assert_eq!(created.labels, labels(&[("container", "app")]));
    assert_eq!(created.annotations, labels(&[("hash", "abc")]));
    assert_eq!(
        created.log_path,
        "/var/log/pods/default_web_uid-web/app/2.log"
    );
    assert_eq!(
        created.image.expect("image").image,
        "docker.io/library/busybox:1.36"
    );
    assert!(
        created
            .image_ref
            .starts_with("docker.io/library/busybox@sha256:")
    );
    assert!(created.image_id.starts_with("sha256:"));

    start(&fake, &id).await.expect("start");
    let running = status(&fake, &id).await.expect("status");
    assert_eq!(running.state, ContainerState::ContainerRunning as i32);
    assert!(running.started_at >= running.created_at);
    let err = start(&fake, &id).await.expect_err("start twice");
    assert_eq!(err.code(), Code::FailedPrecondition);

    stop(&fake, &id).await.expect("stop");
    let exited = status(&fake, &id).await.expect("status");
    assert_eq!(exited.state, ContainerState::ContainerExited as i32);
    assert_eq!((exited.exit_code, exited.reason.as_str()), (137, "Error"));
    assert!(exited.finished_at >= exited.started_at);
    stop(&fake, &id).await.expect("stop is idempotent");
    assert_eq!(status(&fake, &id).await.expect("status"), exited);

    remove(&fake, &id).await.expect("remove");
    remove(&fake, &id).await.expect("remove is idempotent");
    assert_eq!(
        status(&fake, &id).await.expect_err("gone").code(),
        Code::NotFound
    );
    stop(&fake, &id)
        .await
        .expect("stopping a removed container succeeds");
    assert_eq!(
        start(&fake, &id).await.expect_err("gone").code(),
        Code::NotFound
    );
}

/// critest's "Idempotence StopContainer should not return an error if not found".
#[tokio::test]
async fn stop_container_of_an_unknown_id_succeeds() {
    let fake = FakeRuntime::new();
    stop(&fake, "no-such-container")
        .await
        .expect("StopContainer of an unknown ID");
    assert!(fake.containers().is_empty());
}

/// critest's "runtime should return error if RunAsGroup is set without RunAsUser".
#[tokio::test]
async fn run_as_group_needs_a_user() {
    let (fake, pod) = with_pod().await;
    let with_security = |name: &str, security: api::LinuxContainerSecurityContext| {
        let mut config = container_config(name, IMAGE, &[]);
        config.linux = Some(api::LinuxContainerConfig {
            security_context: Some(security),
            ..Default::default()
        });
        config
    };
    let group = Some(api::Int64Value { value: 1000 });
    let err = create(
        &fake,
        &pod,
        with_security(
            "group-only",
            api::LinuxContainerSecurityContext {
                run_as_group: group,
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("RunAsGroup without a user");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(fake.containers().is_empty());
    // The name was not reserved by the refused create.
    create(&fake, &pod, container_config("group-only", IMAGE, &[]))
        .await
        .expect("create without a security context");
    create(
        &fake,
        &pod,
        with_security(
            "uid-and-group",
            api::LinuxContainerSecurityContext {
                run_as_user: Some(api::Int64Value { value: 1000 }),
                run_as_group: group,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("RunAsGroup with RunAsUser");
    create(
        &fake,
        &pod,
        with_security(
            "name-and-group",
            api::LinuxContainerSecurityContext {
                run_as_username: "nobody".to_string(),
                run_as_group: group,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("RunAsGroup with RunAsUsername");
}

#[tokio::test]
async fn scripted_stop_exit_code_and_simulated_exits() {
    let (fake, pod) = with_pod().await;
    fake.set_stop_exit_code("graceful", Some(0));
    let graceful = create(&fake, &pod, container_config("graceful", IMAGE, &[]))
        .await
        .expect("create");
    let oom = create(&fake, &pod, container_config("oom", IMAGE, &[]))
        .await
        .expect("create");
    for id in [&graceful, &oom] {
        start(&fake, id).await.expect("start");
    }
    stop(&fake, &graceful).await.expect("stop");
    let done = status(&fake, &graceful).await.expect("status");
    assert_eq!((done.exit_code, done.reason.as_str()), (0, "Completed"));

    fake.exit_container(&oom, 137, Some("OOMKilled"))
        .expect("running");
    let killed = status(&fake, &oom).await.expect("status");
    assert_eq!(killed.state, ContainerState::ContainerExited as i32);
    assert_eq!(
        (killed.exit_code, killed.reason.as_str()),
        (137, "OOMKilled")
    );
    assert!(matches!(
        fake.exit_container(&oom, 1, None),
        Err(FakeError::NotRunning { .. })
    ));
    assert!(matches!(
        fake.exit_container("nope", 1, None),
        Err(FakeError::NotFound { .. })
    ));
}

#[tokio::test]
async fn list_containers_filters() {
    let (fake, pod) = with_pod().await;
    let other = run_pod(&fake, "other").await;
    let a = create(&fake, &pod, container_config("a", IMAGE, &[]))
        .await
        .expect("create");
    let b = create(&fake, &pod, container_config("b", IMAGE, &[]))
        .await
        .expect("create");
    let c = create(&fake, &other, container_config("a", IMAGE, &[]))
        .await
        .expect("create");
    start(&fake, &a).await.expect("start");
    start(&fake, &c).await.expect("start");

    assert_eq!(
        list_containers(&fake, api::ContainerFilter::default()).await,
        vec![a.clone(), b.clone(), c.clone()]
    );
    let by_id = api::ContainerFilter {
        id: b.clone(),
        ..Default::default()
    };
    assert_eq!(list_containers(&fake, by_id).await, vec![b.clone()]);
    let in_pod = api::ContainerFilter {
        pod_sandbox_id: pod.clone(),
        ..Default::default()
    };
    assert_eq!(
        list_containers(&fake, in_pod.clone()).await,
        vec![a.clone(), b.clone()]
    );
    let running = api::ContainerFilter {
        state: Some(api::ContainerStateValue {
            state: ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        list_containers(&fake, running.clone()).await,
        vec![a.clone(), c.clone()]
    );
    let named_a = api::ContainerFilter {
        label_selector: labels(&[("container", "a")]),
        ..Default::default()
    };
    assert_eq!(
        list_containers(&fake, named_a.clone()).await,
        vec![a.clone(), c]
    );
    let all_three = api::ContainerFilter {
        label_selector: named_a.label_selector,
        pod_sandbox_id: pod,
        ..running
    };
    assert_eq!(list_containers(&fake, all_three).await, vec![a.clone()]);

    let listed = fake
        .list_containers(Request::new(api::ListContainersRequest {
            filter: Some(api::ContainerFilter {
                id: a,
                ..Default::default()
            }),
        }))
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        listed[0].image.as_ref().map(|i| i.image.as_str()),
        Some(IMAGE)
    );
    assert!(listed[0].image_ref.starts_with("sha256:"));
    assert_eq!(listed[0].labels, labels(&[("container", "a")]));
}

#[tokio::test]
async fn auto_exit_commands() {
    let (fake, pod) = with_pod().await;
    let exit3 = create(
        &fake,
        &pod,
        container_config("exit3", IMAGE, &["sh", "-c", "exit 3"]),
    )
    .await
    .expect("create");
    let done = create(&fake, &pod, container_config("true", IMAGE, &["/bin/true"]))
        .await
        .expect("create");
    let short = create(
        &fake,
        &pod,
        container_config("short", IMAGE, &["sleep", "0.05"]),
    )
    .await
    .expect("create");
    let forever = create(
        &fake,
        &pod,
        container_config("forever", IMAGE, &["sleep", "infinity"]),
    )
    .await
    .expect("create");
    for id in [&exit3, &done, &short, &forever] {
        start(&fake, id).await.expect("start");
    }

    let s = status(&fake, &exit3).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    assert_eq!(s.finished_at, s.started_at);
    let s = status(&fake, &done).await.expect("status");
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));

    let s = status(&fake, &short).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let s = status(&fake, &short).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 0);
    assert_eq!(s.finished_at - s.started_at, 50_000_000);

    let s = status(&fake, &forever).await.expect("status");
    assert_eq!(s.state, ContainerState::ContainerRunning as i32);
}

#[test]
fn auto_exit_parsing() {
    let parse = |argv: &[&str]| {
        state::auto_exit(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map(|a| (a.after, a.code))
    };
    let ms = Duration::from_millis;
    assert_eq!(parse(&["sh", "-c", "exit 7"]), Some((ms(0), 7)));
    assert_eq!(parse(&["/bin/bash", "-c", " exit "]), Some((ms(0), 0)));
    assert_eq!(parse(&["sh", "-c", "sleep 2; exit 1"]), Some((ms(2000), 1)));
    assert_eq!(
        parse(&["sh", "-c", "sleep 0.5 && exit 4"]),
        Some((ms(500), 4))
    );
    assert_eq!(parse(&["sh", "-c", "sleep 1"]), Some((ms(1000), 0)));
    assert_eq!(parse(&["sleep", "3"]), Some((ms(3000), 0)));
    assert_eq!(parse(&["false"]), Some((ms(0), 1)));
    assert_eq!(parse(&["sleep", "infinity"]), None);
    assert_eq!(parse(&["sh", "-c", "exitcode"]), None);
    assert_eq!(parse(&["sh", "-c", "while true; do sleep 1; done"]), None);
    assert_eq!(parse(&["nginx", "-g", "daemon off;"]), None);
    assert_eq!(parse(&[]), None);
}

#[tokio::test]
async fn exec_sync_results() {
    let (fake, pod) = with_pod().await;
    let app = create(&fake, &pod, container_config("app", IMAGE, &[]))
        .await
        .expect("create");
    let db = create(&fake, &pod, container_config("db", IMAGE, &[]))
        .await
        .expect("create");
    let err = exec(&fake, &app, &["ls"], 0)
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        exec(&fake, "nope", &["ls"], 0)
            .await
            .expect_err("unknown")
            .code(),
        Code::NotFound
    );
    start(&fake, &app).await.expect("start");
    start(&fake, &db).await.expect("start");

    let out = exec(&fake, &app, &["cat", "/tmp/healthy"], 0)
        .await
        .expect("exec");
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, &b"cat /tmp/healthy"[..])
    );
    let out = exec(&fake, &app, &["sh", "-c", "exit 2"], 0)
        .await
        .expect("exec");
    assert_eq!(out.exit_code, 2);

    fake.set_exec_result(ExecResult::exit(1).with_stderr("unhealthy"));
    fake.set_exec_result_for("db", ExecResult::exit(0).with_stdout("ok"));
    let out = exec(&fake, &app, &["probe"], 0).await.expect("exec");
    assert_eq!(
        (out.exit_code, out.stderr.as_slice()),
        (1, &b"unhealthy"[..])
    );
    let out = exec(&fake, &db, &["probe"], 0).await.expect("exec");
    assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"ok"[..]));

    fake.set_exec_result_for("db", ExecResult::exit(0).with_delay(Duration::from_secs(5)));
    let started = Instant::now();
    let err = exec(&fake, &db, &["probe"], 1)
        .await
        .expect_err("times out");
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() >= Duration::from_secs(1));

    fake.clear_exec_results();
    let out = exec(&fake, &db, &["echo"], 0).await.expect("exec");
    assert_eq!(out.stdout, b"echo");
}

#[tokio::test]
async fn images_pull_status_remove_and_fs_info() {
    let fake = FakeRuntime::new();
    assert!(
        image_status(&fake, "nginx").await.is_none(),
        "absent is not an error"
    );

    let id = pull(&fake, "nginx").await.expect("pull");
    assert!(id.starts_with("sha256:"));
    assert_eq!(
        pull(&fake, "docker.io/library/nginx:latest")
            .await
            .expect("again"),
        id
    );
    let image = image_status(&fake, "nginx:latest").await.expect("present");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec!["docker.io/library/nginx:latest"]);
    assert_eq!(image.size, DEFAULT_IMAGE_SIZE);
    assert_eq!(
        image_status(&fake, &id).await.map(|i| i.id),
        Some(id.clone())
    );
    assert!(image_status(&fake, "nginx:1.25").await.is_none());

    fake.set_unpullable("ghcr.io/acme/private:v1");
    let err = pull(&fake, "ghcr.io/acme/private:v1")
        .await
        .expect_err("unpullable");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("failed to resolve reference"));
    let err = pull(&fake, &format!("sha256:{}", "0".repeat(64)))
        .await
        .expect_err("an absent ID cannot be pulled");
    assert_eq!(err.code(), Code::NotFound);

    fake.add_image_with_size("registry.k8s.io/pause:3.10", 1000);
    assert!(fake.set_image_pinned("registry.k8s.io/pause:3.10", true));
    let listed = fake
        .list_images(Request::new(api::ListImagesRequest { filter: None }))
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 2);
    assert!(listed[1].pinned);

    let fs = fake
        .image_fs_info(Request::new(api::ImageFsInfoRequest {}))
        .await
        .expect("fs info")
        .into_inner();
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.used_bytes.map(|u| u.value),
        Some(DEFAULT_IMAGE_SIZE + 1000)
    );
    assert_eq!(usage.inodes_used.map(|u| u.value), Some(2));
    assert!(usage.timestamp > 0);

    for _ in 0..2 {
        fake.remove_image(Request::new(api::RemoveImageRequest {
            image: image_spec("nginx"),
        }))
        .await
        .expect("remove is idempotent");
    }
    assert!(!fake.has_image("nginx"));
    assert!(fake.has_image("registry.k8s.io/pause:3.10"));
}

#[tokio::test]
async fn fail_next_latency_and_call_log() {
    let fake = FakeRuntime::new();
    fake.fail_next(Op::RunPodSandbox, Code::Unavailable);
    fake.fail_next(Op::RunPodSandbox, Code::Internal);
    let err = run(&fake, sandbox_config("a")).await.expect_err("injected");
    assert_eq!(err.code(), Code::Unavailable);
    let err = run(&fake, sandbox_config("a")).await.expect_err("injected");
    assert_eq!(err.code(), Code::Internal);
    let id = run(&fake, sandbox_config("a"))
        .await
        .expect("only two injected");
    assert!(fake.sandboxes().len() == 1, "failed calls changed nothing");

    assert_eq!(fake.call_count(Op::RunPodSandbox), 3);
    assert_eq!(fake.call_count(Op::StopPodSandbox), 0);
    stop_pod(&fake, &id).await.expect("stop");
    let calls = fake.calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(
        calls[0],
        Call {
            op: Op::RunPodSandbox,
            target: "default/a".to_string()
        }
    );
    assert_eq!(
        calls[3],
        Call {
            op: Op::StopPodSandbox,
            target: id
        }
    );

    fake.set_call_log_limit(2);
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(
        fake.call_count(Op::RunPodSandbox),
        3,
        "counts are not truncated"
    );
    fake.clear_calls();
    assert!(fake.calls().is_empty());
    assert_eq!(fake.call_count(Op::RunPodSandbox), 0);

    fake.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    fake.version(Request::new(api::VersionRequest::default()))
        .await
        .expect("version");
    assert!(started.elapsed() >= Duration::from_millis(50));
    fake.set_op_latency(Op::Version, Some(Duration::ZERO));
    let started = Instant::now();
    fake.version(Request::new(api::VersionRequest::default()))
        .await
        .expect("version");
    assert!(started.elapsed() < Duration::from_millis(50));
}

#[tokio::test]
async fn unimplemented_rpcs_say_so_and_are_logged() {
    let fake = FakeRuntime::new();
    let err = fake
        .exec(Request::new(api::ExecRequest::default()))
        .await
        .expect_err("unimplemented");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("Exec is not implemented"));
    assert!(
        fake.get_container_events(Request::new(api::GetEventsRequest {}))
            .await
            .is_err()
    );
    assert_eq!(fake.call_count(Op::Exec), 1);
    assert_eq!(fake.call_count(Op::GetContainerEvents), 1);
}

#[tokio::test]
async fn pod_cidr_from_update_runtime_config_and_pool_exhaustion() {
    let fake = FakeRuntime::new();
    fake.update_runtime_config(Request::new(api::UpdateRuntimeConfigRequest {
        runtime_config: Some(api::RuntimeConfig {
            network_config: Some(api::NetworkConfig {
                pod_cidr: "fd00::/64,10.244.3.0/24".to_string(),
            }),
        }),
    }))
    .await
    .expect("update");
    assert_eq!(fake.pod_cidr(), "10.244.3.0/24");
    let a = run_pod(&fake, "a").await;
    assert_eq!(fake.sandbox(&a).expect("a").ip, "10.244.3.2");

    assert!(matches!(
        fake.set_pod_cidr("10.1.0.0/31"),
        Err(FakeError::InvalidCidr(_))
    ));
    fake.set_pod_cidr("10.1.0.0/30").expect("valid");
    let b = run_pod(&fake, "b").await;
    assert_eq!(fake.sandbox(&b).expect("b").ip, "10.1.0.2");
    let err = run(&fake, sandbox_config("c"))
        .await
        .expect_err("exhausted");
    assert!(err.message().contains("no IP addresses available"));
    stop_pod(&fake, &b).await.expect("stop releases the IP");
    let c = run_pod(&fake, "c").await;
    assert_eq!(fake.sandbox(&c).expect("c").ip, "10.1.0.2");
}

#[tokio::test]
async fn stats_resources_and_log_reopen() {
    let (fake, pod) = with_pod().await;
    let id = create(&fake, &pod, container_config("app", IMAGE, &[]))
        .await
        .expect("create");
    let err = fake
        .reopen_container_log(Request::new(api::ReopenContainerLogRequest {
            container_id: id.clone(),
        }))
        .await
        .expect_err("not running");
    assert_eq!(err.code(), Code::FailedPrecondition);
    start(&fake, &id).await.expect("start");
    fake.reopen_container_log(Request::new(api::ReopenContainerLogRequest {
        container_id: id.clone(),
    }))
    .await
    .expect("running");

    let stats = fake
        .list_container_stats(Request::new(api::ListContainerStatsRequest {
            filter: None,
        }))
        .await
        .expect("stats")
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    assert_eq!(
        stats[0].attributes.as_ref().map(|a| a.id.clone()),
        Some(id.clone())
    );

    let linux = api::LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 1 << 30,
        ..Default::default()
    };
    fake.update_container_resources(Request::new(api::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(linux.clone()),
        ..Default::default()
    }))
    .await
    .expect("update");
    let resources = status(&fake, &id).await.expect("status").resources;
    assert_eq!(resources.and_then(|r| r.linux), Some(linux));

    let config = fake
        .runtime_config(Request::new(api::RuntimeConfigRequest {}))
        .await
        .expect("runtime config")
        .into_inner();
    assert_eq!(
        config.linux.map(|l| l.cgroup_driver),
        Some(api::CgroupDriver::Cgroupfs as i32)
    );
}

#[test]
fn serve_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let result = FakeRuntime::new().serve_unix(dir.path().join("cri.sock"));
    assert!(matches!(result, Err(FakeError::NoRuntime)));
}

#[tokio::test]
async fn serve_shutdown_and_serve_again_on_the_same_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/cri.sock");
    std::fs::create_dir_all(dir.path().join("run")).expect("mkdir");
    std::fs::write(&path, b"stale").expect("stale file");

    let fake = FakeRuntime::new();
    let server = fake.serve_unix(&path).expect("serve over a stale file");
    assert_eq!(server.endpoint(), format!("unix://{}", path.display()));
    assert!(path.exists());
    tokio::net::UnixStream::connect(&path)
        .await
        .expect("accepts connections");
    server.shutdown().await.expect("shutdown");
    assert!(!path.exists(), "socket removed");

    let again = fake.serve_unix(&path).expect("serve again");
    assert!(path.exists());
    drop(again);
    assert!(!path.exists(), "socket removed on drop");
}

#[tokio::test]
async fn container_events_report_every_step_with_the_pod_uid() {
    use tokio_stream::StreamExt;
    let fake = FakeRuntime::new();
    fake.add_image("busybox");
    fake.enable_container_events();
    let mut events = fake
        .get_container_events(Request::new(api::GetEventsRequest {}))
        .await
        .expect("events on")
        .into_inner();
    let sandbox = run_pod(&fake, "web").await;
    let container = create(
        &fake,
        &sandbox,
        container_config("app", "busybox", &["sleep", "9"]),
    )
    .await
    .expect("create");
    start(&fake, &container).await.expect("start");
    fake.exit_container(&container, 137, None).expect("running");
    remove(&fake, &container).await.expect("remove");
    use api::ContainerEventType::*;
    let expected = [
        (&sandbox, ContainerCreatedEvent),
        (&sandbox, ContainerStartedEvent),
        (&container, ContainerCreatedEvent),
        (&container, ContainerStartedEvent),
        (&container, ContainerStoppedEvent),
        (&container, ContainerDeletedEvent),
    ];
    for (id, kind) in expected {
        let event = events.next().await.expect("an event").expect("no error");
        assert_eq!(
            (&event.container_id, event.container_event_type),
            (id, kind as i32)
        );
        let uid = event
            .pod_sandbox_status
            .and_then(|s| s.metadata)
            .map(|m| m.uid);
        assert_eq!(uid.as_deref(), Some("uid-web"));
    }
    // A restart of the event feed ends the stream; subscribing again works.
    fake.restart_container_events();
    assert!(events.next().await.is_none(), "the stream ends");
    assert!(
        fake.get_container_events(Request::new(api::GetEventsRequest {}))
            .await
            .is_ok()
    );
    fake.disable_container_events();
    assert!(
        fake.get_container_events(Request::new(api::GetEventsRequest {}))
            .await
            .is_err()
    );
}
