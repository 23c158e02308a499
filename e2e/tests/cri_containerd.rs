//! The CRI client (`mk_cri`) against a real containerd.
//!
//! `e2e/run-tests.sh` starts a private containerd (e2e/scripts/containerd-up.sh) with the local images
//! `mini-kubelet.local/pause:3.10` and `mini-kubelet.local/busybox:1.36` imported, and passes its endpoint
//! in `MK_E2E_CRI_ENDPOINT`. Without that variable every test here fails (never skips) and says so.
//!
//! Each test uses its own pod names, UIDs, cgroup parent and log directory, and removes everything it
//! created even when an assertion fails: the body runs in a spawned task, the clean-up after it, and a
//! panic of the body is re-raised afterwards. `MK_E2E_KEEP=1` leaves them running instead, for
//! inspection (containerd-down.sh removes them).

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use mk_cri::{CriClient, CriMetrics, api};
use mk_e2e::cri_checks::{
    check_streaming, kubelet_namespaces, parse_cri_log_line, remove_pod_cgroups, unique,
    wait_for_log_line, web_server_command,
};

const BUSYBOX: &str = "mini-kubelet.local/busybox:1.36";
const PAUSE: &str = "mini-kubelet.local/pause:3.10";
const ENDPOINT_VAR: &str = "MK_E2E_CRI_ENDPOINT";

fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: these tests need a real containerd. Run them through \
             e2e/run-tests.sh, which starts a private containerd and sets the variable (or start one \
             with e2e/scripts/containerd-up.sh DIR and export {ENDPOINT_VAR}=<the endpoint it prints>)."
        ),
    }
}

fn client() -> CriClient {
    CriClient::new(&endpoint(), Duration::from_secs(60), CriMetrics::default())
        .expect("MK_E2E_CRI_ENDPOINT is not a valid CRI endpoint")
}

/// What a test created, so it can all be removed whatever happened.
struct Harness {
    client: CriClient,
    logs: tempfile::TempDir,
    sandboxes: Mutex<Vec<String>>,
    containers: Mutex<Vec<String>>,
    pod_uids: Mutex<Vec<String>>,
}

struct Pod {
    id: String,
    uid: String,
    config: api::PodSandboxConfig,
    log_directory: PathBuf,
}

impl Harness {
    fn new() -> Self {
        Self {
            client: client(),
            logs: tempfile::Builder::new()
                .prefix("mk-e2e-logs-")
                .tempdir()
                .expect("creating a log directory"),
            sandboxes: Mutex::default(),
            containers: Mutex::default(),
            pod_uids: Mutex::default(),
        }
    }

    /// RunPodSandbox the way kubelet asks for a BestEffort pod.
    async fn run_pod(&self, name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let uid = unique("uid");
        let log_directory = self.logs.path().join(format!("default_{name}_{uid}"));
        let mut all_labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        all_labels.insert("io.kubernetes.pod.name".into(), name.into());
        all_labels.insert("io.kubernetes.pod.namespace".into(), "default".into());
        all_labels.insert("io.kubernetes.pod.uid".into(), uid.clone());
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: all_labels,
            annotations: HashMap::from([("e2e.mini-kubelet/test".into(), "cri_containerd".into())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/besteffort/pod{uid}"),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.pod_uids.lock().expect("lock").push(uid.clone());
        let response = self
            .client
            .run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?;
        self.sandboxes
            .lock()
            .expect("lock")
            .push(response.pod_sandbox_id.clone());
        Ok(Pod {
            id: response.pod_sandbox_id,
            uid,
            config,
            log_directory,
        })
    }

    /// CreateContainer + StartContainer of busybox running `command`, logging to `<name>/0.log`.
    async fn start_container(
        &self,
        pod: &Pod,
        name: &str,
        command: &[&str],
        security: api::LinuxContainerSecurityContext,
        envs: &[(&str, &str)],
    ) -> Result<String> {
        let config = container_config(name, command, security, envs);
        self.create_and_start(pod, config).await
    }

    /// CreateContainer + StartContainer of `config`.
    async fn create_and_start(&self, pod: &Pod, config: api::ContainerConfig) -> Result<String> {
        let created = self
            .client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .context("CreateContainer")?;
        let id = created.container_id;
        self.containers.lock().expect("lock").push(id.clone());
        self.client
            .start_container(api::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("StartContainer")?;
        Ok(id)
    }

    async fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        self.client
            .container_status(api::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .status
            .ok_or_else(|| anyhow!("ContainerStatus of {id} has no status"))
    }

    async fn exec(&self, id: &str, cmd: &[&str]) -> Result<api::ExecSyncResponse> {
        self.client
            .exec_sync(api::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| (*s).to_string()).collect(),
                timeout: 10,
            })
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))
    }

    /// Removes every container and sandbox the test made, and the pod cgroups runc leaves behind on
    /// cgroup v1. Errors are reported, not raised: clean-up must go on.
    async fn cleanup(&self) {
        let containers = std::mem::take(&mut *self.containers.lock().expect("lock"));
        for id in containers {
            let stop = self
                .client
                .stop_container(api::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 0,
                })
                .await;
            if let Some(err) = stop.err().filter(|e| !e.is_not_found()) {
                eprintln!("cleanup: StopContainer {id}: {err}");
            }
            let remove = self
                .client
                .remove_container(api::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            if let Some(err) = remove.err().filter(|e| !e.is_not_found()) {
                eprintln!("cleanup: RemoveContainer {id}: {err}");
            }
        }
        let sandboxes = std::mem::take(&mut *self.sandboxes.lock().expect("lock"));
        for id in sandboxes {
            let stop = self
                .client
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            if let Some(err) = stop.err().filter(|e| !e.is_not_found()) {
                eprintln!("cleanup: StopPodSandbox {id}: {err}");
            }
            let remove = self
                .client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            if let Some(err) = remove.err().filter(|e| !e.is_not_found()) {
                eprintln!("cleanup: RemovePodSandbox {id}: {err}");
            }
        }
        let uids = std::mem::take(&mut *self.pod_uids.lock().expect("lock"));
        for uid in uids {
            remove_pod_cgroups(&uid);
        }
    }
}

/// Busybox running `command`, logging to `<name>/0.log`, in kubelet's namespaces.
fn container_config(
    name: &str,
    command: &[&str],
    security: api::LinuxContainerSecurityContext,
    envs: &[(&str, &str)],
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| (*s).to_string()).collect(),
        envs: envs
            .iter()
            .map(|(k, v)| api::KeyValue {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("io.kubernetes.container.name".into(), name.into())]),
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..security
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs `body` with a fresh harness, then cleans up whatever happened, then re-raises a failure.
async fn with_harness<F, Fut>(body: F)
where
    F: FnOnce(Arc<Harness>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let harness = Arc::new(Harness::new());
    let outcome = tokio::spawn(body(harness.clone())).await;
    if std::env::var_os("MK_E2E_KEEP").is_some() {
        // For debugging (and for testing containerd-down.sh): leave the pods running.
        eprintln!(
            "MK_E2E_KEEP: leaving sandboxes {:?} and containers {:?}",
            harness.sandboxes.lock().expect("lock"),
            harness.containers.lock().expect("lock")
        );
        std::mem::forget(harness);
    } else {
        harness.cleanup().await;
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => panic!("{err:?}"),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("test task failed: {join}"),
    }
}

#[tokio::test]
async fn version_reports_containerd() {
    let client = client();
    let version = client
        .version(api::VersionRequest {
            version: "v1".into(),
        })
        .await
        .expect("Version");
    assert_eq!(version.runtime_name, "containerd", "{version:?}");
    assert!(!version.runtime_version.is_empty(), "{version:?}");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");
    assert_eq!(client.metrics().operation_count("version"), 1);

    let status = client
        .status(api::StatusRequest { verbose: false })
        .await
        .expect("Status");
    let conditions: HashMap<String, bool> = status
        .status
        .map(|s| {
            s.conditions
                .into_iter()
                .map(|c| (c.r#type, c.status))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        conditions.get("RuntimeReady"),
        Some(&true),
        "{conditions:?}"
    );
    assert_eq!(
        conditions.get("NetworkReady"),
        Some(&true),
        "{conditions:?}"
    );
}

#[tokio::test]
async fn image_status_finds_local_images_only() {
    let client = client();
    for reference in [BUSYBOX, PAUSE] {
        let image = client
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: reference.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .image
            .unwrap_or_else(|| {
                panic!("{reference} not found: was it imported by containerd-up.sh?")
            });
        assert!(image.repo_tags.iter().any(|t| t == reference), "{image:?}");
        assert!(image.id.starts_with("sha256:"), "{image:?}");
        assert!(image.size > 0, "{image:?}");
    }
    let unknown = client
        .image_status(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: "mini-kubelet.local/no-such-image:0.0".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus of an unknown image is not an error");
    assert_eq!(unknown.image, None);
    assert_eq!(client.metrics().operation_count("image_status"), 3);
    assert_eq!(client.metrics().error_count("image_status"), 0);

    let listed = client
        .list_images(api::ListImagesRequest::default())
        .await
        .expect("ListImages");
    assert!(
        listed
            .images
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX)),
        "{listed:?}"
    );
}

#[tokio::test]
async fn pod_and_container_lifecycle() {
    with_harness(|h| async move {
        let runs_before = h.client.metrics().operation_count("run_podsandbox");
        let name = unique("lifecycle");
        let pod = h.run_pod(&name, &[("app", "e2e-lifecycle")]).await?;
        ensure!(h.client.metrics().operation_count("run_podsandbox") == runs_before + 1);
        ensure!(h.client.metrics().error_count("run_podsandbox") == 0);

        // The sandbox is ready, carries our labels, and got an address from the bridge network.
        let status = h
            .client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await?
            .status
            .context("PodSandboxStatus without status")?;
        ensure!(
            status.state == api::PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        ensure!(
            status.labels.get("app").map(String::as_str) == Some("e2e-lifecycle"),
            "{status:?}"
        );
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ensure!(
            ip.starts_with("10."),
            "pod IP {ip:?} not from the e2e bridge"
        );
        let listed = h
            .client
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: HashMap::from([(
                        "io.kubernetes.pod.uid".into(),
                        pod.uid.clone(),
                    )]),
                    ..Default::default()
                }),
            })
            .await?;
        ensure!(
            listed.items.len() == 1 && listed.items[0].id == pod.id,
            "{listed:?}"
        );

        // A busybox container that logs to both streams and waits, and exits 0 on TERM.
        let id = h
            .start_container(
                &pod,
                "main",
                &[
                    "sh",
                    "-c",
                    "trap 'exit 0' TERM; echo hello; echo oops >&2; sleep 3600 & wait",
                ],
                api::LinuxContainerSecurityContext::default(),
                &[],
            )
            .await?;
        let running = h.container_status(&id).await?;
        ensure!(
            running.state == api::ContainerState::ContainerRunning as i32,
            "{running:?}"
        );
        let log_path = pod.log_directory.join("main/0.log");
        ensure!(
            Path::new(&running.log_path) == log_path,
            "log path {:?}, expected {}",
            running.log_path,
            log_path.display()
        );
        let lines = wait_for_log_line(&log_path, "hello").await?;
        let wait_err = wait_for_log_line(&log_path, "oops").await?;
        let mut seen = Vec::new();
        for line in lines.iter().chain(&wait_err) {
            seen.push(parse_cri_log_line(line)?);
        }
        ensure!(seen.contains(&("stdout", "F", "hello")), "{lines:?}");
        ensure!(seen.contains(&("stderr", "F", "oops")), "{wait_err:?}");

        // ExecSync: output of both streams and the exit code.
        let out = h
            .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"])
            .await?;
        ensure!(out.stdout == b"out\n", "{out:?}");
        ensure!(out.stderr == b"err\n", "{out:?}");
        ensure!(out.exit_code == 3, "{out:?}");
        let host = h.exec(&id, &["hostname"]).await?;
        ensure!(
            String::from_utf8_lossy(&host.stdout).trim() == name,
            "{host:?}"
        );
        let who = h.exec(&id, &["id", "-u"]).await?;
        ensure!(who.stdout == b"0\n" && who.exit_code == 0, "{who:?}");

        // The pod's cgroup is where we asked for it.
        let cgroup = h.exec(&id, &["cat", "/proc/self/cgroup"]).await?;
        let cgroup = String::from_utf8_lossy(&cgroup.stdout).into_owned();
        ensure!(
            cgroup.contains(&format!("/kubepods/besteffort/pod{}/", pod.uid)),
            "{cgroup}"
        );

        // StopContainer delivers TERM: the trap exits 0 within the grace period (exit 0, not the
        // SIGKILL's 137, below), and the call returns within that period plus its own work.
        let started = Instant::now();
        h.client
            .stop_container(api::StopContainerRequest {
                container_id: id.clone(),
                timeout: 10,
            })
            .await?;
        let took = started.elapsed();
        let bound = mk_e2e::periods().runtime_call(Duration::from_secs(10));
        ensure!(
            took < bound,
            "StopContainer took {took:?} (bound {bound:?})"
        );
        let exited = h.container_status(&id).await?;
        ensure!(
            exited.state == api::ContainerState::ContainerExited as i32 && exited.exit_code == 0,
            "{exited:?}"
        );
        h.client
            .remove_container(api::RemoveContainerRequest {
                container_id: id.clone(),
            })
            .await?;
        let gone = h.container_status(&id).await;
        ensure!(
            gone.as_ref().is_err_and(|e| {
                e.downcast_ref::<mk_cri::CriError>()
                    .is_some_and(mk_cri::CriError::is_not_found)
            }),
            "ContainerStatus after RemoveContainer: {gone:?}"
        );

        h.client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        let stopped = h
            .client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await?
            .status
            .context("PodSandboxStatus without status")?;
        ensure!(
            stopped.state == api::PodSandboxState::SandboxNotready as i32,
            "{stopped:?}"
        );
        h.client
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        let gone = h
            .client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await;
        ensure!(
            gone.as_ref().is_err_and(mk_cri::CriError::is_not_found),
            "PodSandboxStatus after RemovePodSandbox: {gone:?}"
        );
        // The log directory is the caller's: containerd leaves it, with the log, behind.
        ensure!(log_path.exists(), "{} vanished", log_path.display());
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn container_runs_as_image_user_with_env() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("user"), &[]).await?;
        let id = h
            .start_container(
                &pod,
                "whoami",
                &[
                    "sh",
                    "-c",
                    "echo \"user=$(id -un) uid=$(id -u) greeting=$GREETING\"",
                ],
                api::LinuxContainerSecurityContext {
                    run_as_user: Some(api::Int64Value { value: 1000 }),
                    ..Default::default()
                },
                &[("GREETING", "hi there")],
            )
            .await?;
        let lines = wait_for_log_line(
            &pod.log_directory.join("whoami/0.log"),
            "user=app uid=1000 greeting=hi there",
        )
        .await?;
        for line in &lines {
            parse_cri_log_line(line)?;
        }
        // The container exits by itself with status 0.
        let deadline = Instant::now() + mk_e2e::periods().runtime_settles();
        loop {
            let status = h.container_status(&id).await?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                ensure!(status.exit_code == 0, "{status:?}");
                break;
            }
            ensure!(Instant::now() < deadline, "still not exited: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let unknown = h
            .exec(&id, &["true"])
            .await
            .err()
            .context("ExecSync in an exited container succeeded")?;
        ensure!(
            unknown.downcast_ref::<mk_cri::CriError>().is_some(),
            "{unknown:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn streaming_exec_attach_and_port_forward() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("stream"), &[]).await?;
        let web_command = web_server_command(8080);
        let web_command: Vec<&str> = web_command.iter().map(String::as_str).collect();
        let web = h
            .start_container(&pod, "web", &web_command, Default::default(), &[])
            .await?;
        let mut shell = container_config("shell", &["sh"], Default::default(), &[]);
        shell.stdin = true;
        shell.stdin_once = true;
        let shell = h.create_and_start(&pod, shell).await?;
        check_streaming(&h.client, &pod.id, &web, 8080, &shell).await
    })
    .await;
}
