//! The Docker CRI shim (`mk_dockershim`) against a real dockerd, through the project's CRI client.
//!
//! `MK_E2E_DOCKER_ENDPOINT` names the dockerd socket (`unix:///…/docker.sock`) as printed on the
//! last line by `e2e/scripts/dockerd-up.sh STATEDIR` (a private dockerd, which also loads the local
//! images `mini-kubelet.local/pause:3.10` and `mini-kubelet.local/busybox:1.36`; stop it with
//! `e2e/scripts/dockerd-down.sh STATEDIR`). Without that variable every test here fails (never
//! skips) and says so.
//!
//! Each test serves its own shim in-process (`mk_dockershim::serve`) on a socket in a temporary
//! directory, with its own shim instance label, pod names, UIDs, cgroup parent and log directory,
//! and removes everything it created even when an assertion fails: the body runs in a spawned
//! task, the clean-up after it, and a panic of the body is re-raised afterwards. `MK_E2E_KEEP=1`
//! leaves the pods in dockerd instead (dockerd-down.sh removes them). Calls that `mk_cri::CriClient`
//! does not offer (stats, ReopenContainerLog, UpdateContainerResources, ImageFsInfo,
//! GetContainerEvents) go straight to the shim's service implementation.
//!
//! `latencies` (ignored by default) measures the shim's CRI latencies:
//! `cargo test -p mk-e2e --test cri_docker -- --ignored --nocapture latencies`.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use mk_cri::{CriClient, CriError, CriMetrics, api};
use mk_dockershim::api::image_service_server::ImageService;
use mk_dockershim::api::runtime_service_server::RuntimeService;
use mk_dockershim::tonic::Request;
use mk_dockershim::{DockerShim, DockerShimConfig, ServerHandle};
use mk_e2e::DockerCni;
use mk_e2e::cri_checks::{
    kubelet_namespaces, parse_cri_log_line, pod_cgroup_dirs, remove_pod_cgroups, unique,
    wait_for_log_line,
};

const BUSYBOX: &str = "mini-kubelet.local/busybox:1.36";
const PAUSE: &str = "mini-kubelet.local/pause:3.10";
const ENDPOINT_VAR: &str = "MK_E2E_DOCKER_ENDPOINT";

fn docker_endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: these tests need a real dockerd. Start a private one with \
             `e2e/scripts/dockerd-up.sh DIR` and export {ENDPOINT_VAR}=<the endpoint it prints> \
             (stop it with `e2e/scripts/dockerd-down.sh DIR`), or run them through \
             e2e/run-tests.sh."
        ),
    }
}

/// A shim served in-process on a temporary socket, and a CRI client on it.
struct Shim {
    _dir: tempfile::TempDir,
    config: DockerShimConfig,
    server: Option<ServerHandle>,
    client: CriClient,
}

impl Shim {
    /// A shim on Docker's bridge, or in CNI mode on `cni`.
    async fn start(cni: Option<&DockerCni>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("mk-dockershim-")
            .tempdir()
            .context("creating a socket directory")?;
        let socket = dir.path().join("cri.sock");
        // Tests share one dockerd: each shim only sees (and adopts) the pods of its own test.
        let config = DockerShimConfig {
            instance: unique("e2e"),
            pod_infra_image: PAUSE.to_string(),
            ..DockerShimConfig::with_endpoint(docker_endpoint())
        };
        let config = match cni {
            Some(cni) => cni.apply(config),
            None => config,
        };
        let server = mk_dockershim::serve(&socket, config.clone())
            .await
            .context("starting the docker shim")?;
        let client = CriClient::new(
            &server.endpoint(),
            Duration::from_secs(60),
            CriMetrics::default(),
        )
        .context("CRI client")?;
        Ok(Self {
            _dir: dir,
            config,
            server: Some(server),
            client,
        })
    }

    /// Stops the shim and serves a new one on the same socket (as after an agent restart).
    async fn restart(&mut self) -> Result<()> {
        let server = self.server.take().context("no server")?;
        let socket = server.path().to_path_buf();
        server.shutdown().await.context("stopping the shim")?;
        self.server = Some(
            mk_dockershim::serve(&socket, self.config.clone())
                .await
                .context("restarting the docker shim")?,
        );
        Ok(())
    }
}

/// What a test created, so it can all be removed whatever happened.
struct Harness {
    shim: tokio::sync::Mutex<Shim>,
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

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

impl Harness {
    async fn new(cni: Option<&DockerCni>) -> Result<Self> {
        let shim = Shim::start(cni).await?;
        Ok(Self {
            client: shim.client.clone(),
            shim: tokio::sync::Mutex::new(shim),
            logs: tempfile::Builder::new()
                .prefix("mk-e2e-docker-logs-")
                .tempdir()
                .context("creating a log directory")?,
            sandboxes: Mutex::default(),
            containers: Mutex::default(),
            pod_uids: Mutex::default(),
        })
    }

    fn pod_config(
        &self,
        name: &str,
        labels: &[(&str, &str)],
    ) -> (api::PodSandboxConfig, String, PathBuf) {
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
            hostname: name.chars().take(63).collect(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            labels: all_labels,
            annotations: HashMap::from([("e2e.mini-kubelet/test".into(), "cri_docker".into())]),
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
        (config, uid, log_directory)
    }

    /// RunPodSandbox of `config` (from [`Self::pod_config`], possibly changed).
    async fn run_pod_with(
        &self,
        config: api::PodSandboxConfig,
        uid: String,
        log_directory: PathBuf,
    ) -> Result<Pod> {
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

    /// RunPodSandbox the way kubelet asks for a BestEffort pod.
    async fn run_pod(&self, name: &str, labels: &[(&str, &str)]) -> Result<Pod> {
        let (config, uid, log_directory) = self.pod_config(name, labels);
        self.run_pod_with(config, uid, log_directory).await
    }

    fn container_config(
        &self,
        name: &str,
        command: &[&str],
        labels: &[(&str, &str)],
    ) -> api::ContainerConfig {
        let mut all_labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        all_labels.insert("io.kubernetes.container.name".into(), name.into());
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: strings(command),
            log_path: format!("{name}/0.log"),
            labels: all_labels,
            annotations: HashMap::from([("e2e.mini-kubelet/container".into(), name.into())]),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(kubelet_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn create(&self, pod: &Pod, config: api::ContainerConfig) -> Result<String> {
        let created = self
            .client
            .create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .context("CreateContainer")?;
        self.containers
            .lock()
            .expect("lock")
            .push(created.container_id.clone());
        Ok(created.container_id)
    }

    async fn start(&self, id: &str) -> Result<()> {
        self.client
            .start_container(api::StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// CreateContainer + StartContainer of busybox running `command`, logging to `<name>/0.log`.
    async fn start_container(
        &self,
        pod: &Pod,
        name: &str,
        command: &[&str],
        labels: &[(&str, &str)],
    ) -> Result<String> {
        let id = self
            .create(pod, self.container_config(name, command, labels))
            .await?;
        self.start(&id).await?;
        Ok(id)
    }

    /// The shim itself, for the calls `CriClient` does not offer (stats, log reopening, image
    /// filesystem): they go straight to its service implementation.
    async fn shim(&self) -> Result<DockerShim> {
        let shim = self.shim.lock().await;
        let server = shim.server.as_ref().context("the shim is not running")?;
        Ok(server.shim().clone())
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

    async fn sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        self.client
            .pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id: id.into(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus of {id} has no status"))
    }

    /// Waits (up to `Periods::runtime_settles`) until the container has exited and returns its status.
    async fn wait_exited(&self, id: &str) -> Result<api::ContainerStatus> {
        let deadline = Instant::now() + mk_e2e::periods().runtime_settles();
        loop {
            let status = self.container_status(id).await?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("container {id} did not exit in time: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, CriError> {
        self.client
            .exec_sync(api::ExecSyncRequest {
                container_id: id.into(),
                cmd: strings(cmd),
                timeout,
            })
            .await
    }

    async fn list_containers(&self, filter: api::ContainerFilter) -> Result<Vec<api::Container>> {
        Ok(self
            .client
            .list_containers(api::ListContainersRequest {
                filter: Some(filter),
            })
            .await
            .context("ListContainers")?
            .containers)
    }

    /// Removes every container and sandbox the test made, and the pod cgroups runc leaves behind
    /// on cgroup v1. Errors are reported, not raised: clean-up must go on.
    async fn cleanup(&self) {
        let containers = std::mem::take(&mut *self.containers.lock().expect("lock"));
        for id in containers {
            let remove = self
                .client
                .remove_container(api::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            if let Err(err) = remove {
                eprintln!("cleanup: RemoveContainer {id}: {err}");
            }
        }
        let sandboxes = std::mem::take(&mut *self.sandboxes.lock().expect("lock"));
        for id in sandboxes {
            for (what, result) in [
                (
                    "StopPodSandbox",
                    self.client
                        .stop_pod_sandbox(api::StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await
                        .map(|_| ()),
                ),
                (
                    "RemovePodSandbox",
                    self.client
                        .remove_pod_sandbox(api::RemovePodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await
                        .map(|_| ()),
                ),
            ] {
                if let Err(err) = result {
                    eprintln!("cleanup: {what} {id}: {err}");
                }
            }
        }
        let uids = std::mem::take(&mut *self.pod_uids.lock().expect("lock"));
        for uid in uids {
            remove_pod_cgroups(&uid);
        }
        if let Some(server) = self.shim.lock().await.server.take()
            && let Err(err) = server.shutdown().await
        {
            eprintln!("cleanup: stopping the shim: {err}");
        }
    }
}

/// Runs `body` with a fresh harness, then cleans up whatever happened, then re-raises a failure.
async fn with_harness<F, Fut>(body: F)
where
    F: FnOnce(Arc<Harness>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run_harness(None, body).await;
}

/// [`with_harness`] with the shim in CNI mode on `cni` (the network dockerd-up.sh wrote).
async fn with_cni_harness<F, Fut>(cni: DockerCni, body: F)
where
    F: FnOnce(Arc<Harness>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    run_harness(Some(&cni), body).await;
}

async fn run_harness<F, Fut>(cni: Option<&DockerCni>, body: F)
where
    F: FnOnce(Arc<Harness>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let harness = Arc::new(Harness::new(cni).await.expect("starting the docker shim"));
    let outcome = tokio::spawn(body(harness.clone())).await;
    if std::env::var_os("MK_E2E_KEEP").is_some() {
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
async fn version_and_status_say_docker() {
    with_harness(|h| async move {
        let version = h
            .client
            .version(api::VersionRequest {
                version: "v1".into(),
            })
            .await?;
        ensure!(version.runtime_name == "docker", "{version:?}");
        ensure!(!version.runtime_version.is_empty(), "{version:?}");
        ensure!(version.runtime_api_version == "v1", "{version:?}");

        let status = h
            .client
            .status(api::StatusRequest { verbose: false })
            .await?;
        let conditions: HashMap<String, bool> = status
            .status
            .map(|s| {
                s.conditions
                    .into_iter()
                    .map(|c| (c.r#type, c.status))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            conditions.get("RuntimeReady") == Some(&true),
            "{conditions:?}"
        );
        ensure!(
            conditions.get("NetworkReady") == Some(&true),
            "{conditions:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn sandbox_runs_with_labels_cgroup_parent_dns_and_ip() {
    with_harness(|h| async move {
        let name = unique("sandbox");
        let (mut config, uid, logs) = h.pod_config(&name, &[("app", "e2e-sandbox")]);
        config.dns_config = Some(api::DnsConfig {
            servers: strings(&["10.96.0.10"]),
            searches: strings(&["default.svc.cluster.local", "svc.cluster.local"]),
            options: strings(&["ndots:5"]),
        });
        let pod = h.run_pod_with(config, uid, logs).await?;
        let status = h.sandbox_status(&pod.id).await?;
        ensure!(
            status.state == api::PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        ensure!(
            status.labels.get("app").map(String::as_str) == Some("e2e-sandbox"),
            "{status:?}"
        );
        ensure!(
            status
                .annotations
                .get("e2e.mini-kubelet/test")
                .map(String::as_str)
                == Some("cri_docker"),
            "{status:?}"
        );
        ensure!(
            status.metadata.as_ref().map(|m| m.uid.as_str()) == Some(pod.uid.as_str()),
            "{status:?}"
        );
        let ip = status.network.clone().map(|n| n.ip).unwrap_or_default();
        ensure!(
            ip.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_private()),
            "pod IP {ip:?} is not a private IPv4 address of the docker bridge"
        );
        let namespaces = status
            .linux
            .and_then(|l| l.namespaces)
            .and_then(|n| n.options)
            .unwrap_or_default();
        ensure!(namespaces == kubelet_namespaces(), "{namespaces:?}");

        // The pause container lives under the pod's cgroup parent.
        let dirs = pod_cgroup_dirs(&pod.uid);
        ensure!(
            dirs.iter().any(|d| d.join(&pod.id).is_dir()),
            "no cgroup {} under /kubepods/besteffort/pod{} (found {dirs:?})",
            pod.id,
            pod.uid
        );

        // The sandbox is found by its labels, and not by others.
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
            .await?
            .items;
        ensure!(
            listed.len() == 1 && listed[0].id == pod.id,
            "ListPodSandbox by uid: {listed:?}"
        );
        let none = h
            .client
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: HashMap::from([("app".into(), "no-such-app".into())]),
                    ..Default::default()
                }),
            })
            .await?
            .items;
        ensure!(none.is_empty(), "{none:?}");

        // A container of the pod sees the pod's hostname, DNS config and network.
        let id = h
            .start_container(&pod, "app", &["sleep", "3600"], &[])
            .await?;
        let hostname = h.exec(&id, &["hostname"], 10).await?;
        ensure!(
            String::from_utf8_lossy(&hostname.stdout).trim() == pod.config.hostname,
            "{hostname:?}"
        );
        let resolv = h.exec(&id, &["cat", "/etc/resolv.conf"], 10).await?;
        let resolv = String::from_utf8_lossy(&resolv.stdout).into_owned();
        ensure!(
            resolv.contains("nameserver 10.96.0.10")
                && resolv.contains("search default.svc.cluster.local svc.cluster.local")
                && resolv.contains("options ndots:5"),
            "{resolv}"
        );
        let addresses = h.exec(&id, &["ip", "-4", "addr"], 10).await?;
        ensure!(
            String::from_utf8_lossy(&addresses.stdout).contains(&format!("inet {ip}/")),
            "the container does not share the sandbox's network: {addresses:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn container_output_lands_in_the_cri_log() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("logs"), &[]).await?;
        let id = h
            .start_container(
                &pod,
                "echo",
                &[
                    "sh",
                    "-c",
                    "echo hello world; echo oops >&2; printf partial",
                ],
                &[],
            )
            .await?;
        let status = h.wait_exited(&id).await?;
        ensure!(status.exit_code == 0, "{status:?}");
        ensure!(status.reason == "Completed", "{status:?}");
        let path = pod.log_directory.join("echo/0.log");
        ensure!(
            status.log_path == path.to_string_lossy(),
            "log path {} instead of {}",
            status.log_path,
            path.display()
        );
        let lines = wait_for_log_line(&path, "partial").await?;
        let parsed: Vec<(&str, &str, &str)> = lines
            .iter()
            .map(|l| parse_cri_log_line(l))
            .collect::<Result<_>>()?;
        ensure!(
            parsed.contains(&("stdout", "F", "hello world")),
            "{lines:?}"
        );
        ensure!(parsed.contains(&("stderr", "F", "oops")), "{lines:?}");
        ensure!(parsed.contains(&("stdout", "P", "partial")), "{lines:?}");
        ensure!(lines.len() == 3, "duplicated or extra lines: {lines:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn exec_sync_output_exit_code_and_timeout() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("exec"), &[]).await?;
        let id = h
            .start_container(&pod, "sleeper", &["sleep", "3600"], &[])
            .await?;
        let result = h
            .exec(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
            .await?;
        ensure!(result.stdout == b"out\n", "{result:?}");
        ensure!(result.stderr == b"err\n", "{result:?}");
        ensure!(result.exit_code == 3, "{result:?}");
        let ok = h.exec(&id, &["true"], 0).await?;
        ensure!(ok.exit_code == 0, "{ok:?}");

        let started = Instant::now();
        let timed_out = h.exec(&id, &["sleep", "30"], 1).await;
        ensure!(
            matches!(&timed_out, Err(CriError::Status { code, .. }) if format!("{code:?}") == "DeadlineExceeded"),
            "{timed_out:?}"
        );
        // The exec's own 1 s timeout, then the call's work.
        ensure!(started.elapsed() < mk_e2e::periods().runtime_call(Duration::from_secs(1)));
        // The timed-out process was killed.
        let ps = h.exec(&id, &["ps"], 10).await?;
        ensure!(
            !String::from_utf8_lossy(&ps.stdout).contains("sleep 30"),
            "{}",
            String::from_utf8_lossy(&ps.stdout)
        );

        let missing = h.exec("0123456789abcdef", &["true"], 10).await;
        ensure!(
            missing.as_ref().err().is_some_and(CriError::is_not_found),
            "{missing:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn container_status_after_exit() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("exit"), &[]).await?;
        let before = now_ns();
        let id = h
            .start_container(&pod, "fails", &["sh", "-c", "exit 7"], &[("tier", "x")])
            .await?;
        let status = h.wait_exited(&id).await?;
        ensure!(status.exit_code == 7, "{status:?}");
        ensure!(status.reason == "Error", "{status:?}");
        ensure!(
            status.created_at >= before
                && status.started_at >= status.created_at
                && status.finished_at >= status.started_at,
            "timestamps out of order: {status:?}"
        );
        ensure!(
            status.image.as_ref().map(|i| i.image.as_str()) == Some(BUSYBOX),
            "{status:?}"
        );
        // The image ID, or a repo digest once the image was pulled from a registry.
        ensure!(status.image_ref.contains("sha256:"), "{status:?}");
        ensure!(
            status.labels.get("tier").map(String::as_str) == Some("x"),
            "{status:?}"
        );
        ensure!(
            status
                .annotations
                .get("e2e.mini-kubelet/container")
                .map(String::as_str)
                == Some("fails"),
            "{status:?}"
        );
        ensure!(
            status.metadata.as_ref().map(|m| m.name.as_str()) == Some("fails"),
            "{status:?}"
        );

        // A command that does not exist: created, but it never runs.
        let id = h
            .create(
                &pod,
                h.container_config("missing", &["/no/such/binary"], &[]),
            )
            .await?;
        let created = h.container_status(&id).await?;
        ensure!(
            created.state == api::ContainerState::ContainerCreated as i32,
            "{created:?}"
        );
        let start = h.start(&id).await;
        ensure!(start.is_err(), "starting a missing binary succeeded");
        let status = h.wait_exited(&id).await?;
        ensure!(status.reason == "ContainerCannotRun", "{status:?}");
        ensure!(!status.message.is_empty(), "{status:?}");
        Ok(())
    })
    .await;
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn list_containers_filters() {
    with_harness(|h| async move {
        let run = unique("run");
        let pod = h.run_pod(&unique("list"), &[]).await?;
        let other = h.run_pod(&unique("list-other"), &[]).await?;
        let web = h
            .start_container(
                &pod,
                "web",
                &["sleep", "3600"],
                &[("e2e-run", &run), ("role", "web")],
            )
            .await?;
        let job = h
            .start_container(
                &pod,
                "job",
                &["true"],
                &[("e2e-run", &run), ("role", "job")],
            )
            .await?;
        let elsewhere = h
            .start_container(
                &other,
                "web",
                &["sleep", "3600"],
                &[("e2e-run", &run), ("role", "web")],
            )
            .await?;
        h.wait_exited(&job).await?;

        let ids = |containers: Vec<api::Container>| {
            let mut ids: Vec<String> = containers.into_iter().map(|c| c.id).collect();
            ids.sort();
            ids
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let by_run = HashMap::from([("e2e-run".to_string(), run.clone())]);
        let all = h
            .list_containers(api::ContainerFilter {
                label_selector: by_run.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(
            all.iter().all(|c| c.labels.get("e2e-run") == Some(&run)),
            "{all:?}"
        );
        ensure!(
            ids(all) == sorted(vec![web.clone(), job.clone(), elsewhere.clone()]),
            "label selector"
        );
        let webs = h
            .list_containers(api::ContainerFilter {
                label_selector: HashMap::from([
                    ("e2e-run".to_string(), run.clone()),
                    ("role".to_string(), "web".to_string()),
                ]),
                ..Default::default()
            })
            .await?;
        ensure!(
            ids(webs) == sorted(vec![web.clone(), elsewhere.clone()]),
            "two-label selector"
        );
        let in_pod = h
            .list_containers(api::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                label_selector: by_run.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(
            in_pod.iter().all(|c| c.pod_sandbox_id == pod.id),
            "{in_pod:?}"
        );
        ensure!(
            ids(in_pod) == sorted(vec![web.clone(), job.clone()]),
            "sandbox filter"
        );
        let running = h
            .list_containers(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerRunning as i32,
                }),
                label_selector: by_run.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(
            ids(running) == sorted(vec![web.clone(), elsewhere.clone()]),
            "state filter"
        );
        let exited = h
            .list_containers(api::ContainerFilter {
                state: Some(api::ContainerStateValue {
                    state: api::ContainerState::ContainerExited as i32,
                }),
                label_selector: by_run.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(ids(exited) == vec![job.clone()], "exited filter");
        let by_id = h
            .list_containers(api::ContainerFilter {
                id: web[..12].to_string(),
                ..Default::default()
            })
            .await?;
        ensure!(ids(by_id) == vec![web.clone()], "id prefix filter");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn stop_and_remove_are_idempotent() {
    with_harness(|h| async move {
        let unknown = "f".repeat(64);
        h.client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: unknown.clone(),
            })
            .await
            .context("StopPodSandbox of an unknown ID must succeed")?;
        h.client
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: unknown.clone(),
            })
            .await
            .context("RemovePodSandbox of an unknown ID must succeed")?;
        h.client
            .remove_container(api::RemoveContainerRequest {
                container_id: unknown.clone(),
            })
            .await
            .context("RemoveContainer of an unknown ID must succeed")?;
        // CRI (and critest's Idempotence spec) require StopContainer of an unknown ID to succeed.
        h.client
            .stop_container(api::StopContainerRequest {
                container_id: unknown.clone(),
                timeout: 0,
            })
            .await
            .context("StopContainer of an unknown ID must succeed")?;
        let status_unknown = h.sandbox_status(&unknown).await;
        ensure!(status_unknown.is_err(), "{status_unknown:?}");

        let pod = h.run_pod(&unique("idem"), &[]).await?;
        let a = h
            .start_container(&pod, "a", &["sleep", "3600"], &[])
            .await?;
        let b = h
            .start_container(&pod, "b", &["sleep", "3600"], &[])
            .await?;
        // StopContainer twice: the grace period is honoured (sleep ignores SIGTERM as PID 1, so
        // the kill comes after 1 s), then it is a no-op.
        let started = Instant::now();
        for _ in 0..2 {
            h.client
                .stop_container(api::StopContainerRequest {
                    container_id: a.clone(),
                    timeout: 1,
                })
                .await
                .context("StopContainer")?;
        }
        let elapsed = started.elapsed();
        ensure!(
            elapsed >= Duration::from_millis(900)
                && elapsed < mk_e2e::periods().runtime_call(Duration::from_secs(1)),
            "StopContainer with 1 s of grace took {elapsed:?}"
        );
        let stopped = h.container_status(&a).await?;
        ensure!(
            stopped.state == api::ContainerState::ContainerExited as i32
                && stopped.exit_code == 137,
            "{stopped:?}"
        );
        // StopPodSandbox kills the rest and stops the pause container; twice is fine.
        for _ in 0..2 {
            h.client
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .context("StopPodSandbox")?;
        }
        let status = h.sandbox_status(&pod.id).await?;
        ensure!(
            status.state == api::PodSandboxState::SandboxNotready as i32,
            "{status:?}"
        );
        let b_status = h.container_status(&b).await?;
        ensure!(
            b_status.state == api::ContainerState::ContainerExited as i32,
            "{b_status:?}"
        );
        // RemoveContainer twice, RemovePodSandbox twice (it removes the remaining container).
        for _ in 0..2 {
            h.client
                .remove_container(api::RemoveContainerRequest {
                    container_id: a.clone(),
                })
                .await
                .context("RemoveContainer")?;
        }
        for _ in 0..2 {
            h.client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .context("RemovePodSandbox")?;
        }
        let gone = h.container_status(&b).await;
        ensure!(
            gone.as_ref()
                .err()
                .and_then(|e| e.downcast_ref::<CriError>())
                .is_some_and(CriError::is_not_found),
            "{gone:?}"
        );
        let left = h
            .list_containers(api::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            })
            .await?;
        ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn image_status_local_and_unknown() {
    with_harness(|h| async move {
        for reference in [BUSYBOX, PAUSE] {
            let image = h
                .client
                .image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: reference.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?
                .image
                .ok_or_else(|| anyhow!("{reference} not found: was it loaded by dockerd-up.sh?"))?;
            ensure!(image.repo_tags.iter().any(|t| t == reference), "{image:?}");
            ensure!(image.id.starts_with("sha256:"), "{image:?}");
            ensure!(image.size > 0, "{image:?}");
            // By ID too.
            let by_id = h
                .client
                .image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image: image.id.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?
                .image;
            ensure!(by_id.is_some_and(|i| i.id == image.id), "by ID");
        }
        let unknown = h
            .client
            .image_status(api::ImageStatusRequest {
                image: Some(api::ImageSpec {
                    image: "mini-kubelet.local/no-such-image:0.0".into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .context("ImageStatus of an unknown image is not an error")?;
        ensure!(unknown.image.is_none(), "{unknown:?}");

        let listed = h
            .client
            .list_images(api::ListImagesRequest::default())
            .await?;
        ensure!(
            listed
                .images
                .iter()
                .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX)),
            "{listed:?}"
        );
        // No registry is reachable here: a pull fails, and says so.
        let pull = h
            .client
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: "127.0.0.1:1/nothing:latest".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await;
        ensure!(pull.is_err(), "{pull:?}");
        // A present image "pulls" at once by ID.
        let busybox_id = listed
            .images
            .iter()
            .find(|i| i.repo_tags.iter().any(|t| t == BUSYBOX))
            .map(|i| i.id.clone())
            .unwrap_or_default();
        let by_id = h
            .client
            .pull_image(api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: busybox_id.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        ensure!(by_id.image_ref == busybox_id, "{by_id:?}");
        // RemoveImage of an absent image is fine.
        h.client
            .remove_image(api::RemoveImageRequest {
                image: Some(api::ImageSpec {
                    image: "mini-kubelet.local/no-such-image:0.0".into(),
                    ..Default::default()
                }),
            })
            .await?;
        let shim = h.shim().await?;
        let fs = ImageService::image_fs_info(&shim, Request::new(api::ImageFsInfoRequest {}))
            .await?
            .into_inner();
        let usage = fs
            .image_filesystems
            .first()
            .context("no image filesystem")?;
        ensure!(
            usage
                .fs_id
                .as_ref()
                .is_some_and(|f| !f.mountpoint.is_empty())
                && usage.used_bytes.as_ref().is_some_and(|u| u.value > 0),
            "{fs:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn container_config_resources_and_security_apply() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("config"), &[]).await?;
        let data = tempfile::tempdir()?;
        std::fs::write(data.path().join("file"), "from the host\n")?;
        let mut config = h.container_config("configured", &["sh", "-c"], &[]);
        // CRI command = entrypoint, args = cmd.
        config.args = strings(&["echo \"$GREETING from $(pwd)\"; exec sleep 3600"]);
        config.envs = vec![api::KeyValue {
            key: "GREETING".into(),
            value: "hi".into(),
        }];
        config.working_dir = "/tmp".into();
        config.mounts = vec![api::Mount {
            container_path: "/data".into(),
            host_path: data.path().to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        }];
        let linux = config.linux.get_or_insert_with(Default::default);
        linux.resources = Some(api::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 1000,
            ..Default::default()
        });
        let security = linux.security_context.get_or_insert_with(Default::default);
        security.run_as_user = Some(api::Int64Value { value: 1000 });
        security.run_as_group = Some(api::Int64Value { value: 1000 });
        security.supplemental_groups = vec![2000];
        security.readonly_rootfs = true;
        security.capabilities = Some(api::Capability {
            add_capabilities: strings(&["NET_BIND_SERVICE"]),
            drop_capabilities: strings(&["ALL"]),
            ..Default::default()
        });
        let id = h.create(&pod, config).await?;
        h.start(&id).await?;
        wait_for_log_line(&pod.log_directory.join("configured/0.log"), "hi from /tmp").await?;

        let out = |r: api::ExecSyncResponse| String::from_utf8_lossy(&r.stdout).trim().to_string();
        ensure!(out(h.exec(&id, &["id", "-u"], 10).await?) == "1000");
        ensure!(out(h.exec(&id, &["id", "-g"], 10).await?) == "1000");
        let groups = out(h.exec(&id, &["id", "-G"], 10).await?);
        ensure!(groups.split(' ').any(|g| g == "2000"), "groups {groups}");
        ensure!(out(h.exec(&id, &["cat", "/data/file"], 10).await?) == "from the host");
        let touch_data = h.exec(&id, &["touch", "/data/new"], 10).await?;
        ensure!(touch_data.exit_code != 0, "the read-only mount is writable");
        let touch_root = h.exec(&id, &["touch", "/new"], 10).await?;
        ensure!(
            touch_root.exit_code != 0,
            "the read-only rootfs is writable"
        );
        ensure!(out(h.exec(&id, &["cat", "/proc/1/oom_score_adj"], 10).await?) == "1000");
        let bounding = out(h
            .exec(&id, &["grep", "CapBnd", "/proc/1/status"], 10)
            .await?);
        ensure!(bounding.ends_with("0000000000000400"), "{bounding}");
        // cgroup v1 (the host here) or v2.
        let read_first = |paths: &'static [&'static str]| {
            let h = h.clone();
            let id = id.clone();
            async move {
                for path in paths {
                    let r = h.exec(&id, &["cat", path], 10).await?;
                    if r.exit_code == 0 {
                        return Ok::<_, anyhow::Error>(out(r));
                    }
                }
                bail!("none of {paths:?} readable")
            }
        };
        let memory_files: &'static [&'static str] = &[
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory.max",
        ];
        ensure!(read_first(memory_files).await? == (64u64 << 20).to_string());
        let quota = read_first(&[
            "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
            "/sys/fs/cgroup/cpu.max",
        ])
        .await?;
        ensure!(quota.starts_with("50000"), "cpu quota {quota}");

        let status = h.container_status(&id).await?;
        let resources = status.resources.and_then(|r| r.linux).unwrap_or_default();
        ensure!(
            resources.memory_limit_in_bytes == 64 << 20 && resources.cpu_shares == 512,
            "{resources:?}"
        );
        ensure!(
            status
                .mounts
                .iter()
                .any(|m| m.container_path == "/data" && m.readonly),
            "{:?}",
            status.mounts
        );

        // UpdateContainerResources takes effect at once.
        RuntimeService::update_container_resources(
            &h.shim().await?,
            Request::new(api::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(api::LinuxContainerResources {
                    memory_limit_in_bytes: 128 << 20,
                    cpu_shares: 256,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )
        .await?;
        ensure!(read_first(memory_files).await? == (128u64 << 20).to_string());

        // A Guaranteed pod's negative score cannot be set by root here: it is raised to 0.
        let mut guaranteed = h.container_config("guaranteed", &["sleep", "3600"], &[]);
        guaranteed
            .linux
            .get_or_insert_with(Default::default)
            .resources = Some(api::LinuxContainerResources {
            oom_score_adj: -997,
            ..Default::default()
        });
        let g = h.create(&pod, guaranteed).await?;
        h.start(&g).await?;
        let score: i64 = out(h.exec(&g, &["cat", "/proc/1/oom_score_adj"], 10).await?).parse()?;
        ensure!(score >= 0, "oom_score_adj {score}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn host_namespaces() {
    with_harness(|h| async move {
        let (mut config, uid, logs) = h.pod_config(&unique("hostns"), &[]);
        let host = api::NamespaceOption {
            network: api::NamespaceMode::Node as i32,
            pid: api::NamespaceMode::Node as i32,
            ipc: api::NamespaceMode::Node as i32,
            ..Default::default()
        };
        if let Some(security) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            security.namespace_options = Some(host.clone());
        }
        // ClusterFirstWithHostNet: the pod's DNS config applies on the host's network too.
        config.dns_config = Some(api::DnsConfig {
            servers: strings(&["10.96.0.10"]),
            searches: strings(&["default.svc.cluster.local"]),
            options: Vec::new(),
        });
        let pod = h.run_pod_with(config, uid, logs).await?;
        let status = h.sandbox_status(&pod.id).await?;
        ensure!(
            status.network.as_ref().is_some_and(|n| n.ip.is_empty()),
            "a host-network sandbox has no IP of its own: {status:?}"
        );
        let mut container = h.container_config("host", &["sleep", "3600"], &[]);
        if let Some(security) = container
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
        {
            // (Not privileged: Docker gives privileged containers every capability it knows, and
            // root on these machines lacks CAP_SYS_RESOURCE, so runc cannot apply them.)
            security.namespace_options = Some(host);
        }
        let id = h.create(&pod, container).await?;
        h.start(&id).await?;
        let own_netns = std::fs::read_link("/proc/self/ns/net")?;
        let netns = h.exec(&id, &["readlink", "/proc/self/ns/net"], 10).await?;
        ensure!(
            String::from_utf8_lossy(&netns.stdout).trim() == own_netns.to_string_lossy(),
            "{netns:?} vs {own_netns:?}"
        );
        let resolv = h.exec(&id, &["cat", "/etc/resolv.conf"], 10).await?;
        let resolv = String::from_utf8_lossy(&resolv.stdout).into_owned();
        ensure!(
            resolv.contains("nameserver 10.96.0.10") && resolv.contains("search default.svc"),
            "{resolv}"
        );
        let pid1 = h.exec(&id, &["cat", "/proc/1/comm"], 10).await?;
        ensure!(
            String::from_utf8_lossy(&pid1.stdout).trim() != "sleep",
            "the container has its own PID namespace"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn container_events_follow_the_lifecycle() {
    with_harness(|h| async move {
        use futures::StreamExt;
        let shim = h.shim().await?;
        let mut events =
            RuntimeService::get_container_events(&shim, Request::new(api::GetEventsRequest {}))
                .await?
                .into_inner();
        let pod = h.run_pod(&unique("events"), &[]).await?;
        let id = h.start_container(&pod, "short", &["true"], &[]).await?;
        let wanted = [
            api::ContainerEventType::ContainerCreatedEvent,
            api::ContainerEventType::ContainerStartedEvent,
            api::ContainerEventType::ContainerStoppedEvent,
        ];
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + mk_e2e::periods().runtime_settles();
        while seen.len() < wanted.len() {
            let event = tokio::time::timeout_at(deadline, events.next())
                .await
                .with_context(|| format!("only {seen:?} seen for {id}"))?
                .context("event stream ended")??;
            if event.container_id == pod.id {
                ensure!(
                    event
                        .pod_sandbox_status
                        .as_ref()
                        .is_some_and(|s| s.id == pod.id),
                    "{event:?}"
                );
                continue;
            }
            if event.container_id != id {
                continue;
            }
            ensure!(event.created_at > 0, "{event:?}");
            ensure!(
                event
                    .pod_sandbox_status
                    .as_ref()
                    .is_some_and(|s| s.id == pod.id),
                "{event:?}"
            );
            ensure!(
                event.containers_statuses.iter().any(|c| c.id == id),
                "{event:?}"
            );
            seen.push(event.container_event_type);
        }
        ensure!(
            seen == wanted.map(|w| w as i32),
            "events out of order: {seen:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn host_port_reaches_the_pod() {
    with_harness(|h| async move {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let (mut config, uid, logs) = h.pod_config(&unique("ports"), &[]);
        config.port_mappings = vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: i32::from(port),
            host_ip: "127.0.0.1".into(),
        }];
        let pod = h.run_pod_with(config, uid, logs).await?;
        h.start_container(
            &pod,
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8080 -h /www",
            ],
            &[],
        )
        .await?;
        let deadline = Instant::now() + mk_e2e::periods().runtime_settles();
        loop {
            let answer = http_get("127.0.0.1", port, "/ping").await;
            match answer {
                Ok(body) if body.ends_with("pong\n") => break,
                other if Instant::now() > deadline => {
                    bail!("no answer through host port {port}: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    })
    .await;
}

async fn http_get(host: &str, port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response)).await??;
    Ok(response)
}

/// The CNI cache file of a sandbox, and the host end of the pod's veth from the cached ADD
/// result.
fn cni_state(cni: &DockerCni, sandbox: &str) -> Result<(PathBuf, Option<String>)> {
    // libcni's layout, as mk_cni keeps it.
    let cache = cni
        .cache_dir
        .join("results")
        .join(format!("{}-{sandbox}-eth0", cni.network));
    let text = std::fs::read_to_string(&cache)
        .with_context(|| format!("reading the CNI cache {}", cache.display()))?;
    let entry: serde_json::Value = serde_json::from_str(&text)?;
    let veth = entry["result"]["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| {
            i["sandbox"].as_str().unwrap_or_default().is_empty()
                && i["name"].as_str() != Some(cni.bridge.as_str())
        })
        .and_then(|i| i["name"].as_str())
        .map(str::to_string);
    Ok((cache, veth))
}

fn in_subnet(ip: &str, subnet: &str) -> bool {
    let prefix = subnet.trim_end_matches("0/24");
    ip.starts_with(prefix) && ip.parse::<std::net::Ipv4Addr>().is_ok()
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The CNI mode (cri-dockerd's `--network-plugin=cni`): the pod's address comes from the CNI
/// network's subnet, the host reaches a server in the pod at that address and through a host
/// port (portmap), DNS and `lo` work in Docker's `none` network, the IP survives a restart of the
/// shim (cache), and StopPodSandbox removes the veth and the IP allocation.
#[tokio::test]
async fn cni_pod_network_ip_host_port_and_teardown() {
    let cni = DockerCni::from_env();
    with_cni_harness(cni.clone(), |h| async move {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let (mut config, uid, logs) = h.pod_config(&unique("cni"), &[]);
        config.port_mappings = vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: i32::from(port),
            host_ip: String::new(),
        }];
        config.dns_config = Some(api::DnsConfig {
            servers: strings(&["10.96.0.10"]),
            searches: strings(&["default.svc.cluster.local"]),
            options: strings(&["ndots:5"]),
        });
        let started = Instant::now();
        let pod = h.run_pod_with(config, uid, logs).await?;
        let run_time = started.elapsed();
        let status = h.sandbox_status(&pod.id).await?;
        let ip = status.network.clone().map(|n| n.ip).unwrap_or_default();
        ensure!(
            in_subnet(&ip, &cni.subnet),
            "pod IP {ip:?} is not from the CNI subnet {}",
            cni.subnet
        );
        let (cache, veth) = cni_state(&cni, &pod.id)?;
        let veth = veth.context("no host-side veth in the CNI result")?;
        ensure!(link_exists(&veth), "veth {veth} missing");
        let allocation = cni
            .cache_dir
            .parent()
            .context("cache dir")?
            .join("ipam")
            .join(&cni.network)
            .join(&ip);
        ensure!(
            allocation.exists(),
            "no IPAM allocation {}",
            allocation.display()
        );

        let web = h
            .start_container(
                &pod,
                "web",
                &[
                    "sh",
                    "-c",
                    "mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8080 -h /www",
                ],
                &[],
            )
            .await?;
        // The pod's own address, from the host.
        let deadline = Instant::now() + mk_e2e::periods().runtime_settles();
        loop {
            match http_get(&ip, 8080, "/ping").await {
                Ok(body) if body.ends_with("pong\n") => break,
                other if Instant::now() > deadline => bail!("no answer from {ip}:8080: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        // The host port (portmap), at the host's address on the CNI bridge.
        let gateway = format!("{}1", cni.subnet.trim_end_matches("0/24"));
        let answer = http_get(&gateway, port, "/ping").await;
        ensure!(
            answer.as_ref().is_ok_and(|b| b.ends_with("pong\n")),
            "no answer through host port {gateway}:{port}: {answer:?}"
        );
        // Docker's none network still gives the pod lo and the pod's DNS config.
        let lo = h
            .exec(&web, &["ip", "-o", "addr", "show", "lo"], 10)
            .await?;
        ensure!(
            String::from_utf8_lossy(&lo.stdout).contains("inet 127.0.0.1/8"),
            "{lo:?}"
        );
        let resolv = h.exec(&web, &["cat", "/etc/resolv.conf"], 10).await?;
        ensure!(
            String::from_utf8_lossy(&resolv.stdout).contains("nameserver 10.96.0.10"),
            "{resolv:?}"
        );
        let eth0 = h
            .exec(&web, &["ip", "-o", "-4", "addr", "show", "eth0"], 10)
            .await?;
        ensure!(
            String::from_utf8_lossy(&eth0.stdout).contains(&format!("inet {ip}/24")),
            "{eth0:?}"
        );

        // A restarted shim reports the same IP (from the cache).
        h.shim.lock().await.restart().await?;
        let again = h.sandbox_status(&pod.id).await?;
        ensure!(
            again.network.as_ref().map(|n| n.ip.as_str()) == Some(ip.as_str()),
            "{again:?}"
        );

        // StopPodSandbox: CNI DEL.
        let started = Instant::now();
        h.client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        let stop_time = started.elapsed();
        ensure!(
            !link_exists(&veth),
            "veth {veth} remains after StopPodSandbox"
        );
        ensure!(
            !allocation.exists(),
            "{ip} is still allocated after StopPodSandbox"
        );
        ensure!(
            !cache.exists(),
            "the CNI cache entry remains after StopPodSandbox"
        );
        let stopped = h.sandbox_status(&pod.id).await?;
        ensure!(
            stopped.network.as_ref().is_none_or(|n| n.ip.is_empty()),
            "{stopped:?}"
        );
        println!(
            "CNI mode: RunPodSandbox {run_time:?} (ADD included), StopPodSandbox {stop_time:?}"
        );
        // Stopping again is fine.
        h.client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        Ok(())
    })
    .await;
}

/// StopPodSandbox of a CNI pod whose pause container died: DEL with no namespace still releases
/// the IP; RemovePodSandbox drops the cache.
#[tokio::test]
async fn cni_teardown_after_the_pause_container_died() {
    let cni = DockerCni::from_env();
    with_cni_harness(cni.clone(), |h| async move {
        let pod = h.run_pod(&unique("cnidead"), &[]).await?;
        let ip = h
            .sandbox_status(&pod.id)
            .await?
            .network
            .map(|n| n.ip)
            .unwrap_or_default();
        ensure!(in_subnet(&ip, &cni.subnet), "{ip:?}");
        let (cache, _) = cni_state(&cni, &pod.id)?;
        let endpoint = docker_endpoint();
        let killed = std::process::Command::new("/usr/bin/docker")
            .args(["-H", &endpoint, "kill", &pod.id])
            .output()?;
        ensure!(killed.status.success(), "docker kill: {killed:?}");
        let allocation = cni
            .cache_dir
            .parent()
            .context("cache dir")?
            .join("ipam")
            .join(&cni.network)
            .join(&ip);
        ensure!(
            allocation.exists(),
            "no IPAM allocation {}",
            allocation.display()
        );
        h.client
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        ensure!(!allocation.exists(), "{ip} is still allocated");
        ensure!(!cache.exists(), "the CNI cache entry remains");
        h.client
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await?;
        Ok(())
    })
    .await;
}

/// CNI mode without a network config: RunPodSandbox fails as kubelet's did, creating nothing.
#[tokio::test]
async fn cni_without_a_config_refuses_sandboxes() {
    let empty = tempfile::tempdir().expect("tempdir");
    let cni = DockerCni {
        conf_dir: empty.path().join("net.d"),
        cache_dir: empty.path().join("cache"),
        ..DockerCni::from_env()
    };
    with_cni_harness(cni, |h| async move {
        let (config, uid, logs) = h.pod_config(&unique("nocni"), &[]);
        let err = h
            .run_pod_with(config, uid.clone(), logs)
            .await
            .err()
            .context("RunPodSandbox succeeded without a CNI config")?;
        ensure!(
            format!("{err:#}").contains("network plugin is not ready: cni config uninitialized"),
            "{err:#}"
        );
        let listed = h
            .client
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: HashMap::from([("io.kubernetes.pod.uid".into(), uid)]),
                    ..Default::default()
                }),
            })
            .await?
            .items;
        ensure!(listed.is_empty(), "{listed:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn stats_of_containers_and_sandboxes() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("stats"), &[]).await?;
        let id = h
            .start_container(&pod, "busy", &["sleep", "3600"], &[])
            .await?;
        let shim = h.shim().await?;
        let stats = RuntimeService::container_stats(
            &shim,
            Request::new(api::ContainerStatsRequest {
                container_id: id.clone(),
            }),
        )
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
        ensure!(
            stats
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .is_some_and(|w| w.value > 0),
            "{stats:?}"
        );
        ensure!(
            stats
                .cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .is_some(),
            "{stats:?}"
        );
        let listed = RuntimeService::list_container_stats(
            &shim,
            Request::new(api::ListContainerStatsRequest {
                filter: Some(api::ContainerStatsFilter {
                    pod_sandbox_id: pod.id.clone(),
                    ..Default::default()
                }),
            }),
        )
        .await?
        .into_inner();
        ensure!(
            listed.stats.len() == 1
                && listed.stats[0].attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str()),
            "{listed:?}"
        );
        let pods = RuntimeService::list_pod_sandbox_stats(
            &shim,
            Request::new(api::ListPodSandboxStatsRequest {
                filter: Some(api::PodSandboxStatsFilter {
                    id: pod.id.clone(),
                    ..Default::default()
                }),
            }),
        )
        .await?
        .into_inner();
        let ours = pods.stats.first().context("no pod stats")?;
        let linux = ours.linux.as_ref().context("no linux pod stats")?;
        ensure!(linux.containers.len() == 1, "{ours:?}");
        ensure!(
            linux
                .network
                .as_ref()
                .and_then(|n| n.default_interface.as_ref())
                .is_some_and(|i| i.name == "eth0"),
            "{ours:?}"
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn restarted_shim_adopts_pods_and_resumes_logs() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("adopt"), &[("adopt", "yes")]).await?;
        let id = h
            .start_container(
                &pod,
                "ticker",
                &[
                    "sh",
                    "-c",
                    "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done",
                ],
                &[],
            )
            .await?;
        let path = pod.log_directory.join("ticker/0.log");
        wait_for_log_line(&path, "tick3").await?;
        h.shim.lock().await.restart().await?;
        // Everything is still known from Docker alone.
        let status = h.sandbox_status(&pod.id).await?;
        ensure!(
            status.state == api::PodSandboxState::SandboxReady as i32
                && status.labels.get("adopt").map(String::as_str) == Some("yes"),
            "{status:?}"
        );
        let container = h.container_status(&id).await?;
        ensure!(
            container.state == api::ContainerState::ContainerRunning as i32,
            "{container:?}"
        );
        // Output produced while no shim ran is copied once, and copying goes on.
        let before = std::fs::read_to_string(&path)?.lines().count();
        let lines = wait_for_log_line(&path, &format!("tick{}", before + 15)).await?;
        let mut seen = std::collections::HashSet::new();
        for line in &lines {
            let (_, _, msg) = parse_cri_log_line(line)?;
            ensure!(
                seen.insert(msg.to_string()),
                "{msg} copied twice: {lines:?}"
            );
        }
        for i in 0..before + 15 {
            ensure!(
                seen.contains(&format!("tick{i}")),
                "tick{i} missing: {lines:?}"
            );
        }
        // Log rotation: kubelet renames the file, then asks for a reopen.
        let rotated = path.with_extension("log.rotated");
        std::fs::rename(&path, &rotated)?;
        let shim = h.shim().await?;
        RuntimeService::reopen_container_log(
            &shim,
            Request::new(api::ReopenContainerLogRequest {
                container_id: id.clone(),
            }),
        )
        .await?;
        let after = wait_for_log_line(&path, &format!("tick{}", before + 25)).await?;
        ensure!(
            after.iter().all(|l| parse_cri_log_line(l).is_ok()),
            "{after:?}"
        );
        Ok(())
    })
    .await;
}

/// CRI latencies of the shim on this machine (median of 10): run with
/// `cargo test -p mk-e2e --test cri_docker -- --ignored --nocapture latencies`.
#[tokio::test]
#[ignore = "a measurement, not a check: run it explicitly"]
async fn latencies() {
    with_harness(|h| async move {
        let mut samples: HashMap<&str, Vec<Duration>> = HashMap::new();
        let mut record = |op, started: Instant| {
            samples.entry(op).or_default().push(started.elapsed());
        };
        for i in 0..10 {
            let (config, uid, logs) = h.pod_config(&unique(&format!("bench{i}")), &[]);
            let t = Instant::now();
            let pod = h.run_pod_with(config, uid, logs).await?;
            record("RunPodSandbox", t);
            let t = Instant::now();
            // A workload that ends on SIGTERM, so StopContainer measures a graceful stop.
            let id = h
                .create(
                    &pod,
                    h.container_config(
                        "app",
                        &["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                        &[],
                    ),
                )
                .await?;
            record("CreateContainer", t);
            let t = Instant::now();
            h.start(&id).await?;
            record("StartContainer", t);
            let t = Instant::now();
            h.exec(&id, &["true"], 10).await?;
            record("ExecSync", t);
            let t = Instant::now();
            h.container_status(&id).await?;
            record("ContainerStatus", t);
            let t = Instant::now();
            h.client
                .stop_container(api::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 10,
                })
                .await?;
            record("StopContainer (graceful)", t);
            let t = Instant::now();
            h.client
                .remove_container(api::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await?;
            record("RemoveContainer", t);
            let t = Instant::now();
            h.client
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await?;
            record("StopPodSandbox", t);
            let t = Instant::now();
            h.client
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await?;
            record("RemovePodSandbox", t);
        }
        let mut ops: Vec<_> = samples.into_iter().collect();
        ops.sort_by_key(|(op, _)| *op);
        for (op, mut times) in ops {
            times.sort();
            let median = times[times.len() / 2];
            let max = times[times.len() - 1];
            println!(
                "{op:28} median {median:>10.1?}  min {:>10.1?}  max {max:>10.1?}",
                times[0]
            );
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn streaming_exec_attach_and_port_forward() {
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("stream"), &[]).await?;
        let web_command = mk_e2e::cri_checks::web_server_command(8080);
        let web_command: Vec<&str> = web_command.iter().map(String::as_str).collect();
        let web = h.start_container(&pod, "web", &web_command, &[]).await?;
        let mut shell = h.container_config("shell", &["sh"], &[]);
        shell.stdin = true;
        shell.stdin_once = true;
        let shell = h.create(&pod, shell).await?;
        h.start(&shell).await?;
        mk_e2e::cri_checks::check_streaming(&h.client, &pod.id, &web, 8080, &shell).await
    })
    .await;
}

/// Privileged containers and `ALL` capabilities start even where root lacks a capability (this
/// project's machines lack CAP_SYS_RESOURCE; Docker's own privileged mode cannot start there).
#[tokio::test]
async fn privileged_and_all_capabilities_start() {
    with_harness(|h| async move {
        let (mut config, uid, logs) = h.pod_config(&unique("privileged"), &[]);
        config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
        let pod = h.run_pod_with(config, uid, logs).await?;

        let mut privileged = h.container_config("privileged", &["sleep", "3600"], &[]);
        let security = privileged
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        security.privileged = true;
        let privileged = h.create(&pod, privileged).await?;
        h.start(&privileged).await?;
        // Network management (NET_ADMIN), no masked /proc paths, and the host's devices.
        let brctl = h
            .exec(&privileged, &["brctl", "addbr", "mkpriv0"], 10)
            .await?;
        ensure!(
            brctl.exit_code == 0,
            "brctl in a privileged container: {brctl:?}"
        );
        let kcore = h
            .exec(
                &privileged,
                &["sh", "-c", "test -c /dev/kmsg && echo kmsg"],
                10,
            )
            .await?;
        ensure!(
            kcore.stdout == b"kmsg\n",
            "host devices in a privileged container: {kcore:?}"
        );

        let mut plain = h.container_config("plain", &["sleep", "3600"], &[]);
        plain
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
            .capabilities = Some(api::Capability {
            add_capabilities: vec!["ALL".into()],
            ..Default::default()
        });
        let all = h.create(&pod, plain).await?;
        h.start(&all).await?;
        let status = h
            .exec(&all, &["grep", "CapBnd", "/proc/self/status"], 10)
            .await?;
        let status = String::from_utf8_lossy(&status.stdout).into_owned();
        ensure!(
            !status.contains("0000000000000000"),
            "ALL capabilities: {status}"
        );

        let unprivileged = h
            .start_container(&pod, "unprivileged", &["sleep", "3600"], &[])
            .await?;
        let denied = h
            .exec(&unprivileged, &["brctl", "addbr", "mkpriv1"], 10)
            .await?;
        ensure!(
            denied.exit_code != 0,
            "brctl without privileges: {denied:?}"
        );
        Ok(())
    })
    .await;
}

/// What a full node (kubelet's default maxPods, 110) costs in stats calls: ListContainerStats and
/// ListPodSandboxStats, cold (Docker asked for every container) and from the cache.
/// Run: `cargo test -p mk-e2e --test cri_docker stats_of_a_full_node -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, not a check: run it explicitly"]
async fn stats_of_a_full_node() {
    with_harness(|h| async move {
        const PODS: usize = 110;
        let started = Instant::now();
        let mut handles = Vec::new();
        let gate = Arc::new(tokio::sync::Semaphore::new(8));
        for i in 0..PODS {
            let h = h.clone();
            let gate = gate.clone();
            handles.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let pod = h.run_pod(&unique(&format!("full{i}")), &[]).await?;
                h.start_container(&pod, "app", &["sleep", "3600"], &[])
                    .await?;
                anyhow::Ok(())
            }));
        }
        for handle in handles {
            handle.await??;
        }
        println!(
            "{PODS} pods with one container each started in {:.1?}",
            started.elapsed()
        );
        let shim = h.shim().await?;
        let ttl = shim.config().stats_cache_ttl;
        let report = |what: &str, elapsed: Duration, n: usize| {
            println!("{what:40} {elapsed:>10.1?}  ({n} entries)");
        };
        for round in 0..3 {
            // Past the cache's lifetime: every container is asked again.
            tokio::time::sleep(ttl + Duration::from_millis(100)).await;
            let t = Instant::now();
            let cold = RuntimeService::list_container_stats(
                &shim,
                Request::new(api::ListContainerStatsRequest { filter: None }),
            )
            .await?
            .into_inner();
            report(
                &format!("ListContainerStats cold #{round}"),
                t.elapsed(),
                cold.stats.len(),
            );
            ensure!(cold.stats.len() >= PODS, "{} stats", cold.stats.len());
            let t = Instant::now();
            let warm = RuntimeService::list_container_stats(
                &shim,
                Request::new(api::ListContainerStatsRequest { filter: None }),
            )
            .await?
            .into_inner();
            report(
                &format!("ListContainerStats cached #{round}"),
                t.elapsed(),
                warm.stats.len(),
            );
            let t = Instant::now();
            let pods = RuntimeService::list_pod_sandbox_stats(
                &shim,
                Request::new(api::ListPodSandboxStatsRequest { filter: None }),
            )
            .await?
            .into_inner();
            report(
                &format!("ListPodSandboxStats #{round}"),
                t.elapsed(),
                pods.stats.len(),
            );
            let t = Instant::now();
            let listed = h.list_containers(api::ContainerFilter::default()).await?;
            report(
                &format!("ListContainers #{round}"),
                t.elapsed(),
                listed.len(),
            );
        }
        Ok(())
    })
    .await;
}

/// The `(utime + stime)` of a process in nanoseconds, from its `/proc/<pid>/stat` line (in clock
/// ticks of 1/100 s, Linux's USER_HZ on every architecture Docker runs on).
fn proc_stat_cpu_ns(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let (_, rest) = stat
        .rsplit_once(')')
        .with_context(|| format!("not a stat line: {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .with_context(|| format!("no field {i} in {stat:?}"))?
            .parse::<u64>()
            .with_context(|| format!("field {i} of {stat:?}"))
    };
    Ok((tick(14)? + tick(15)?) * 10_000_000)
}

/// A `/proc/<pid>/status` field in bytes (`RssAnon:   20480 kB`).
fn proc_status_bytes(status: &str, field: &str) -> Result<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in {status:?}"))?;
    let kb: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{field}: {line:?}"))?;
    Ok(kb * 1024)
}

#[tokio::test]
async fn stats_follow_memory_and_cpu_use() {
    const MIB: u64 = 1024 * 1024;
    with_harness(|h| async move {
        let pod = h.run_pod(&unique("usage"), &[]).await?;
        // The shell keeps a 20 MiB string in a variable, then waits.
        let hog = h
            .start_container(
                &pod,
                "hog",
                &[
                    "sh",
                    "-c",
                    "x=$(dd if=/dev/zero bs=1M count=20 2>/dev/null | tr '\\0' a); \
                     touch /tmp/ready; exec sleep 3600 & wait",
                ],
                &[],
            )
            .await?;
        let busy = h
            .start_container(&pod, "busy", &["sh", "-c", "while :; do :; done"], &[])
            .await?;
        let idle = h
            .start_container(&pod, "idle", &["sleep", "3600"], &[])
            .await?;
        let deadline = Instant::now() + 2 * mk_e2e::periods().runtime_settles();
        while h
            .exec(&hog, &["test", "-f", "/tmp/ready"], 10)
            .await?
            .exit_code
            != 0
        {
            ensure!(Instant::now() < deadline, "the memory hog never got ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let shim = h.shim().await?;
        let ttl = shim.config().stats_cache_ttl;
        let stats_of = |id: String| {
            let shim = shim.clone();
            async move {
                RuntimeService::container_stats(
                    &shim,
                    Request::new(api::ContainerStatsRequest { container_id: id }),
                )
                .await?
                .into_inner()
                .stats
                .context("no stats")
            }
        };
        let read_proc = |id: String, file: &'static str| {
            let h = h.clone();
            async move {
                let out = h.exec(&id, &["cat", file], 10).await?;
                ensure!(out.exit_code == 0, "cat {file}: {out:?}");
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        };
        let working_set = |s: &api::ContainerStats| {
            s.memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map(|v| v.value)
        };
        let cpu_ns = |s: &api::ContainerStats| {
            s.cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .map(|v| v.value)
        };

        // Memory: the hog's working set covers the anonymous memory its shell holds (as its
        // /proc/<pid>/status says, read inside the container), plus little else.
        let hog_stats = stats_of(hog.clone()).await?;
        let status = read_proc(hog.clone(), "/proc/1/status").await?;
        let rss_anon = proc_status_bytes(&status, "RssAnon")?;
        ensure!(
            rss_anon >= 20 * MIB,
            "the shell holds {rss_anon} bytes only"
        );
        let hog_ws = working_set(&hog_stats).context("no working set for the hog")?;
        ensure!(
            hog_ws + MIB >= rss_anon && hog_ws <= rss_anon + 16 * MIB,
            "hog working set {hog_ws} bytes, its shell's RssAnon {rss_anon}: {hog_stats:?}"
        );
        let idle_stats = stats_of(idle.clone()).await?;
        let idle_ws = working_set(&idle_stats).context("no working set for sleep")?;
        ensure!(
            idle_ws > 0 && idle_ws < 8 * MIB,
            "idle working set {idle_ws}: {idle_stats:?}"
        );

        // CPU: the busy loop's usage grows by what the kernel's per-process accounting says.
        let first = stats_of(busy.clone()).await?;
        let proc_first = proc_stat_cpu_ns(&read_proc(busy.clone(), "/proc/1/stat").await?)?;
        tokio::time::sleep(ttl + Duration::from_millis(500)).await;
        let second = stats_of(busy.clone()).await?;
        let proc_second = proc_stat_cpu_ns(&read_proc(busy.clone(), "/proc/1/stat").await?)?;
        let cri = cpu_ns(&second)
            .zip(cpu_ns(&first))
            .map(|(b, a)| b.saturating_sub(a))
            .context("no CPU usage")?;
        let kernel = proc_second.saturating_sub(proc_first);
        ensure!(
            cri >= 200_000_000,
            "the busy loop used {cri} ns of CPU in {:?}: {first:?} then {second:?}",
            ttl + Duration::from_millis(500)
        );
        ensure!(
            cri.abs_diff(kernel) <= kernel / 4 + 300_000_000,
            "CRI says {cri} ns of CPU, /proc/1/stat {kernel} ns"
        );
        ensure!(
            second
                .cpu
                .as_ref()
                .and_then(|c| c.usage_nano_cores.as_ref())
                .is_some_and(|n| n.value >= 100_000_000),
            "no CPU rate for the busy loop: {second:?}"
        );

        // The pod adds its containers up (pause included): at least the hog's memory, and a
        // process count of pause + hog (sh, sleep) + busy + idle.
        let pod_stats = RuntimeService::pod_sandbox_stats(
            &shim,
            Request::new(api::PodSandboxStatsRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await?
        .into_inner()
        .stats
        .context("no pod stats")?;
        let linux = pod_stats.linux.as_ref().context("no linux pod stats")?;
        ensure!(linux.containers.len() == 3, "{pod_stats:?}");
        let pod_ws = linux
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        ensure!(
            pod_ws >= rss_anon,
            "pod working set {pod_ws}: {pod_stats:?}"
        );
        let processes = linux
            .process
            .as_ref()
            .and_then(|p| p.process_count.as_ref())
            .map_or(0, |v| v.value);
        ensure!(processes >= 5, "{processes} processes: {pod_stats:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn cni_pod_stats_have_the_pod_network() {
    let cni = DockerCni::from_env();
    with_cni_harness(cni, |h| async move {
        let pod = h.run_pod(&unique("cnistats"), &[]).await?;
        h.start_container(&pod, "app", &["sleep", "3600"], &[])
            .await?;
        let shim = h.shim().await?;
        let stats = RuntimeService::pod_sandbox_stats(
            &shim,
            Request::new(api::PodSandboxStatsRequest {
                pod_sandbox_id: pod.id.clone(),
            }),
        )
        .await?
        .into_inner()
        .stats
        .context("no pod stats")?;
        // Docker's stats API knows no network of a pause container on Docker's `none` network;
        // the pod's namespace has the CNI plugin's eth0.
        let network = stats
            .linux
            .as_ref()
            .and_then(|l| l.network.as_ref())
            .with_context(|| format!("no network stats: {stats:?}"))?;
        ensure!(
            network
                .default_interface
                .as_ref()
                .is_some_and(|i| i.name == "eth0"),
            "{network:?}"
        );
        ensure!(
            network.interfaces.iter().all(|i| i.name != "lo"),
            "{network:?}"
        );
        Ok(())
    })
    .await;
}
