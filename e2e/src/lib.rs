//! Harness for mini-kubelet's end-to-end tests: runs the real agent binary against the real runtime
//! that `e2e/run-tests.sh` started, and looks at the results the way a user would: through CRI, the
//! agent's HTTP endpoints, its log files and its own log.
//!
//! Every agent gets its own node name, so the runtime objects of concurrent tests never mix (the agent
//! only manages objects labelled with its node), and everything a test created is removed when its
//! [`Agent`] is dropped, even after a failed assertion.

pub mod bench;
pub mod cluster;
pub mod cri_checks;
pub mod kubelet_port;
pub mod periods;
pub mod real_cluster;

pub use periods::{Periods, periods};

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use mk_cri::{CriClient, CriMetrics, api};

pub const BUSYBOX: &str = "mini-kubelet.local/busybox:1.36";
/// The pause image `e2e/scripts/build-images.sh` builds; the tests pass it to the Docker adapter
/// (whose default is upstream's `registry.k8s.io/pause`, which no registry here serves).
pub const PAUSE: &str = mk_dockershim::LOCAL_TEST_POD_INFRA_IMAGE;
pub const ENDPOINT_VAR: &str = "MK_E2E_CRI_ENDPOINT";
pub const NODE_LABEL: &str = "io.mini-kubelet.node-name";
pub const UID_LABEL: &str = "io.kubernetes.pod.uid";

/// The runtime endpoint the tests use. Panics with instructions when it is not set: the e2e tests
/// never skip silently.
pub fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: the end-to-end tests need a real container runtime. Run them \
             through e2e/run-tests.sh, which installs and starts a private containerd and sets it."
        ),
    }
}

/// The runtime the agent suites run on: `MK_E2E_RUNTIME=docker` runs them on the built-in Docker
/// adapter over the dockerd of `MK_E2E_DOCKER_ENDPOINT`; anything else on containerd.
pub fn on_docker() -> bool {
    std::env::var("MK_E2E_RUNTIME").is_ok_and(|r| r == "docker")
}

/// The prefix of container IDs in pod status (`containerd`, `docker`, `cri-o`): the runtime named by
/// `MK_E2E_RUNTIME` (`docker`, `crio`), containerd otherwise.
pub fn runtime_name() -> &'static str {
    match std::env::var("MK_E2E_RUNTIME").as_deref() {
        Ok("docker") => "docker",
        Ok("crio" | "cri-o") => "cri-o",
        _ => "containerd",
    }
}

/// dockerd's endpoint for the Docker runs. Panics with instructions when it is not set.
pub fn docker_endpoint() -> String {
    match std::env::var("MK_E2E_DOCKER_ENDPOINT") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "MK_E2E_DOCKER_ENDPOINT is not set: the Docker runs need a real dockerd. Run them through \
             e2e/run-tests.sh, which starts a private dockerd (e2e/scripts/dockerd-up.sh)."
        ),
    }
}

/// The CNI network `e2e/scripts/dockerd-up.sh` wrote for the Docker adapter's CNI mode, read from
/// the `dockerd-up.env` beside the dockerd socket of `MK_E2E_DOCKER_ENDPOINT`.
#[derive(Debug, Clone)]
pub struct DockerCni {
    pub conf_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// The network's name (`mk-dkr-<hash>`).
    pub network: String,
    /// Its bridge (`mkc<hash>`).
    pub bridge: String,
    /// Its `10.x.y.0/24`.
    pub subnet: String,
}

impl DockerCni {
    /// Panics with instructions when the dockerd was not started by a dockerd-up.sh that writes
    /// a CNI network.
    pub fn from_env() -> Self {
        let endpoint = docker_endpoint();
        let socket = Path::new(endpoint.strip_prefix("unix://").unwrap_or(&endpoint));
        let marker = socket.with_file_name("dockerd-up.env");
        let text = std::fs::read_to_string(&marker).unwrap_or_default();
        let var = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_string)
                .unwrap_or_else(|| {
                    panic!(
                        "{key} is not in {}: start dockerd with e2e/scripts/dockerd-up.sh, which \
                         writes the CNI network of the Docker adapter's CNI mode",
                        marker.display()
                    )
                })
        };
        Self {
            conf_dir: PathBuf::from(var("CNI_CONF_DIR")),
            cache_dir: PathBuf::from(var("CNI_CACHE_DIR")),
            network: var("CNI_NETWORK"),
            bridge: var("CNI_BRIDGE"),
            subnet: var("CNI_SUBNET"),
        }
    }

    /// `config` in CNI mode on this network (plugins from Debian's /usr/lib/cni).
    pub fn apply(
        &self,
        config: mk_dockershim::DockerShimConfig,
    ) -> mk_dockershim::DockerShimConfig {
        mk_dockershim::DockerShimConfig {
            network_plugin: "cni".parse().expect("cni is a network plugin"),
            cni_conf_dir: self.conf_dir.clone(),
            cni_bin_dirs: vec![PathBuf::from("/usr/lib/cni")],
            cni_cache_dir: self.cache_dir.clone(),
            ..config
        }
    }
}

/// Whether the agent suites on Docker run the adapter in CNI mode (what operators run, the
/// default) or on Docker's bridge (`MK_E2E_DOCKER_NETWORK=bridge`).
pub fn docker_cni() -> Option<DockerCni> {
    if std::env::var("MK_E2E_DOCKER_NETWORK").is_ok_and(|n| n == "bridge") {
        None
    } else {
        Some(DockerCni::from_env())
    }
}

/// The Docker adapter's settings for the agent suites' node `instance`.
pub fn docker_shim_config(instance: &str) -> mk_dockershim::DockerShimConfig {
    let config = mk_dockershim::DockerShimConfig {
        instance: instance.to_string(),
        pod_infra_image: PAUSE.to_string(),
        ..mk_dockershim::DockerShimConfig::with_endpoint(docker_endpoint())
    };
    match docker_cni() {
        Some(cni) => cni.apply(config),
        None => config,
    }
}

pub fn cri() -> CriClient {
    CriClient::new(&endpoint(), Duration::from_secs(60), CriMetrics::default())
        .expect("MK_E2E_CRI_ENDPOINT is not a valid CRI endpoint")
}

/// The agent binary: `MK_E2E_AGENT_BIN`, or the workspace's debug build.
pub fn agent_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("MK_E2E_AGENT_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug/mini-kubelet")
}

/// A port free on loopback for a server the test starts, taken below the kernel's ephemeral range
/// (`ip_local_port_range`): a port the kernel handed out with `bind(:0)` is handed out again to
/// the many outgoing connections and port-0 listeners of a test run (daemons, kubectl, agents), and
/// one of them took it before the agent bound it ("Address already in use").
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000_u16.min(ephemeral_start.saturating_sub(1000));
    let span = u64::from(ephemeral_start.saturating_sub(low).max(1));
    // A different starting point per process and call, so concurrent tests rarely try the same.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let start =
        (u64::from(seed) ^ u64::from(std::process::id()).wrapping_mul(2_654_435_761)) % span;
    (0..span)
        .map(|i| low + u16::try_from((start + i * 7919) % span).unwrap_or(0))
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("no free port on loopback below the ephemeral range")
}

fn unique_node(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running agent with its own manifest folder, log folder, ports and node name.
pub struct Agent {
    pub node: String,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub healthz_port: u16,
    /// The kubelet port (TLS): served when the config's authorization allows it.
    pub kubelet_port: u16,
    /// How it joins a cluster, if it does.
    pub join: Option<cluster::Join>,
    /// The CRI endpoint of a runtime of its own ([`Agent::start_on`]); None: the suite's.
    runtime_endpoint: Option<String>,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Agent {
    /// Starts an agent whose node name begins with `prefix`.
    pub fn start(prefix: &str) -> Result<Self> {
        Self::start_with(prefix, None, "")
    }

    /// Starts an agent joined to the cluster of `kubeconfig`, with extra KubeletConfiguration lines.
    pub fn start_with(prefix: &str, kubeconfig: Option<&Path>, extra_config: &str) -> Result<Self> {
        Self::start_joined(prefix, None, extra_config, |_| {
            kubeconfig.map(|k| cluster::Join::Kubeconfig(k.to_path_buf()))
        })
    }

    /// Starts an agent on the runtime of CRI endpoint `runtime_endpoint` (one the test started
    /// for itself, e.g. with `e2e/scripts/containerd-up.sh`) instead of the suite's, with extra
    /// KubeletConfiguration lines.
    pub fn start_on(prefix: &str, runtime_endpoint: &str, extra_config: &str) -> Result<Self> {
        Self::start_joined(prefix, Some(runtime_endpoint), extra_config, |_| None)
    }

    /// Starts an agent joined to `cluster` as its node (see [`cluster::Cluster::join`]).
    pub fn join(prefix: &str, cluster: &cluster::Cluster, extra_config: &str) -> Result<Self> {
        Self::start_joined(prefix, None, extra_config, |dir| Some(cluster.join(dir)))
    }

    fn start_joined(
        prefix: &str,
        runtime_endpoint: Option<&str>,
        extra_config: &str,
        join: impl FnOnce(&Path) -> Option<cluster::Join>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("mk-e2e-agent-").tempdir()?;
        std::fs::create_dir_all(dir.path().join("manifests"))?;
        let mut agent = Agent {
            node: unique_node(prefix),
            dir,
            port: free_port(),
            healthz_port: free_port(),
            kubelet_port: free_port(),
            join: None,
            runtime_endpoint: runtime_endpoint.map(str::to_string),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             staticPodPath: {}\ncontainerRuntimeEndpoint: {}\nreadOnlyPort: {}\nhealthzPort: {}\n\
             port: {}\naddress: 127.0.0.1\npodLogsDir: {}\nfileCheckFrequency: {}s\nsyncFrequency: {}s\n\
             {extra_config}",
            agent.manifests().display(),
            runtime_endpoint.map_or_else(endpoint, str::to_string),
            agent.port,
            agent.healthz_port,
            agent.kubelet_port,
            agent.pod_logs_dir().display(),
            // The periods every deadline of the tests is derived from (`periods::HARNESS`).
            periods::HARNESS.file_check.as_secs(),
            periods::HARNESS.sync.as_secs(),
        );
        // The agents share this machine's disk with its build caches: kubelet's default
        // `nodefs.available<10%` put them under DiskPressure on a large, well-used disk (24 GiB
        // free of 252), which the real scheduler honours (the node's disk-pressure taint) and
        // the tests did not ask for. A test about eviction sets its own thresholds.
        let eviction = if extra_config.contains("evictionHard:") {
            ""
        } else {
            "evictionHard:\n  memory.available: 100Mi\n  nodefs.available: 1Gi\n  \
             imagefs.available: 1Gi\n  nodefs.inodesFree: 1%\n"
        };
        // Likewise kubelet's image GC (85 % of the image filesystem, which is this machine's
        // disk): on a well-used disk it would remove images other tests of the shared runtime are
        // about to use. The image GC test sets its own thresholds.
        let image_gc = if extra_config.contains("imageGCHighThresholdPercent:") {
            ""
        } else {
            "imageGCHighThresholdPercent: 100\n"
        };
        let config = format!("{config}{eviction}{image_gc}");
        agent.join = join(agent.dir.path());
        let client_ca = match &agent.join {
            // The API server reaches the port with a client certificate of the cluster's CA.
            Some(cluster::Join::Node { client_ca, .. }) => format!(
                "authentication:\n  x509:\n    clientCAFile: {}\n",
                client_ca.display()
            ),
            _ => String::new(),
        };
        std::fs::write(
            agent.dir.path().join("kubelet.yaml"),
            format!("{config}{client_ca}"),
        )?;
        agent.spawn()?;
        Ok(agent)
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn pod_logs_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// (Re)starts the agent process, appending to its log.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())?;
        let mut command = Command::new(agent_binary());
        if on_docker() && self.runtime_endpoint.is_none() {
            command
                .arg("--container-runtime")
                .arg("docker")
                .arg("--docker-endpoint")
                .arg(docker_endpoint())
                .arg("--pod-infra-container-image")
                .arg(PAUSE);
            match docker_cni() {
                Some(cni) => command
                    .arg("--network-plugin")
                    .arg("cni")
                    .arg("--cni-conf-dir")
                    .arg(&cni.conf_dir)
                    .arg("--cni-bin-dir")
                    .arg("/usr/lib/cni")
                    .arg("--cni-cache-dir")
                    .arg(&cni.cache_dir),
                None => command.arg("--network-plugin").arg("bridge"),
            };
        }
        match &self.join {
            Some(cluster::Join::Kubeconfig(kubeconfig)) => {
                command.arg("--kubeconfig").arg(kubeconfig);
            }
            Some(cluster::Join::Node {
                kubeconfig,
                bootstrap_kubeconfig,
                ..
            }) => {
                // TLS bootstrap, with rotation, as a kubeadm node; the real API server reaches the
                // kubelet port at the node's InternalIP: the address the agent serves on (the
                // harness's `address`), not the default route's.
                command
                    .arg("--kubeconfig")
                    .arg(kubeconfig)
                    .arg("--bootstrap-kubeconfig")
                    .arg(bootstrap_kubeconfig)
                    .arg("--rotate-certificates")
                    .arg("--node-ip")
                    .arg("127.0.0.1");
            }
            None => {}
        }
        let child = command
            .arg("--config")
            .arg(self.dir.path().join("kubelet.yaml"))
            .arg("--hostname-override")
            .arg(&self.node)
            .arg("--root-dir")
            .arg(self.dir.path().join("root"))
            .env("RUST_LOG", "info,mini_kubelet=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (build it with cargo build --bins)",
                    agent_binary().display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the agent with SIGKILL, as a crash would, leaving its pods running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Panics when the agent process exited.
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("the agent exited ({status}); its log:\n{}", self.log());
        }
    }

    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        // Write then rename, as editors and config management do, so no half file is read.
        let tmp = self.manifests().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.manifests().join(file))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        Ok(std::fs::remove_file(self.manifests().join(file))?)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> Result<String> {
        let resp = self.http.get(self.url(path)).send().await?;
        Ok(resp.text().await?)
    }

    /// `/pods` from the read-only port.
    pub async fn pods(&self) -> Result<Vec<Pod>> {
        let body = self.get("/pods").await?;
        let list: serde_json::Value = serde_json::from_str(&body).context("parsing /pods")?;
        let items = list
            .get("items")
            .cloned()
            .unwrap_or(serde_json::Value::Array(vec![]));
        Ok(serde_json::from_value(items)?)
    }

    /// The pod named `<name>-<node>` from `/pods`.
    pub async fn pod(&self, name: &str) -> Result<Option<Pod>> {
        let full = format!("{name}-{}", self.node);
        Ok(self
            .pods()
            .await?
            .into_iter()
            .find(|p| p.metadata.name.as_deref() == Some(full.as_str())))
    }

    /// Polls `/pods` until `check` returns Some for the named pod, or fails after `timeout` with the last
    /// status seen and the agent's log.
    pub async fn wait_pod<T>(
        &mut self,
        name: &str,
        timeout: Duration,
        check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        self.wait_pod_every(name, timeout, periods::POLL, check)
            .await
    }

    /// [`Agent::wait_pod`] polling every [`periods::TRANSIENT_POLL`]: for checks that must see a
    /// state the agent shows only for a while (they record what they saw on each call).
    pub async fn wait_pod_closely<T>(
        &mut self,
        name: &str,
        timeout: Duration,
        check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        self.wait_pod_every(name, timeout, periods::TRANSIENT_POLL, check)
            .await
    }

    async fn wait_pod_every<T>(
        &mut self,
        name: &str,
        timeout: Duration,
        poll: Duration,
        mut check: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            self.assert_alive();
            if let Ok(Some(pod)) = self.pod(name).await {
                if let Some(v) = check(&pod) {
                    return Ok(v);
                }
                last = Some(pod);
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {name} did not reach the expected state within {timeout:?}; last status: {}\nagent log:\n{}",
                    last.map(|p| serde_json::to_string_pretty(&p.status).unwrap_or_default())
                        .unwrap_or_else(|| "(pod absent)".into()),
                    self.log()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Waits until the named pod is absent from `/pods`.
    pub async fn wait_pod_gone(&mut self, name: &str, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        loop {
            self.assert_alive();
            if matches!(self.pod(name).await, Ok(None)) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!(
                    "pod {name} still present after {timeout:?}\nagent log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CRI log file of a container instance, as the agent lays them out.
    pub fn container_log_path(&self, pod: &Pod, container: &str, attempt: u32) -> PathBuf {
        self.pod_logs_dir()
            .join(format!(
                "{}_{}_{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref().unwrap_or_default()
            ))
            .join(container)
            .join(format!("{attempt}.log"))
    }

    /// The output of a container instance (the message part of its CRI log lines), waiting up to
    /// `timeout` for it to contain `expected`.
    pub async fn wait_output(
        &self,
        pod: &Pod,
        container: &str,
        attempt: u32,
        expected: &str,
        timeout: Duration,
    ) -> Result<String> {
        let path = self.container_log_path(pod, container, attempt);
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let output = log_messages(&text);
            if output.contains(expected) {
                return Ok(output);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} never contained {expected:?}; it holds:\n{output}\nagent log:\n{}",
                    path.display(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Opens a container instance's log and keeps it open, so that its output stays readable after
    /// the agent removed the pod's log directory (it does once the pod is gone).
    pub fn watch_output(&self, pod: &Pod, container: &str, attempt: u32) -> Result<OutputWatch> {
        let path = self.container_log_path(pod, container, attempt);
        let file =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(OutputWatch {
            path,
            file,
            raw: String::new(),
        })
    }

    /// A CRI client for this agent's runtime: its own ([`Agent::start_on`]), the shared
    /// containerd, or on Docker the adapter the agent serves in its root directory.
    pub fn cri(&self) -> CriClient {
        if let Some(endpoint) = &self.runtime_endpoint {
            return CriClient::new(endpoint, Duration::from_secs(60), CriMetrics::default())
                .expect("the agent's own CRI endpoint");
        }
        if on_docker() {
            let socket = self.dir.path().join("root/dockershim.sock");
            return CriClient::new(
                &format!("unix://{}", socket.display()),
                Duration::from_secs(60),
                CriMetrics::default(),
            )
            .expect("dockershim socket path");
        }
        cri()
    }

    /// This agent's sandboxes in the runtime.
    pub async fn sandboxes(&self) -> Result<Vec<api::PodSandbox>> {
        let resp = self
            .cri()
            .list_pod_sandbox(api::ListPodSandboxRequest {
                filter: Some(api::PodSandboxFilter {
                    label_selector: HashMap::from([(NODE_LABEL.to_string(), self.node.clone())]),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(resp.items)
    }

    /// This agent's containers in the runtime.
    pub async fn containers(&self) -> Result<Vec<api::Container>> {
        let resp = self
            .cri()
            .list_containers(api::ListContainersRequest {
                filter: Some(api::ContainerFilter {
                    label_selector: HashMap::from([(NODE_LABEL.to_string(), self.node.clone())]),
                    ..Default::default()
                }),
            })
            .await?;
        Ok(resp.containers)
    }
}

/// Stops and removes every sandbox of `node` (and so its containers). On Docker the agent's adapter
/// is gone with the agent, so a temporary one serves the clean-up.
pub async fn remove_node_objects(node: &str) -> Result<()> {
    if on_docker() {
        let dir = tempfile::tempdir()?;
        let config = docker_shim_config(node);
        let shim = mk_dockershim::serve(dir.path().join("cleanup.sock"), config).await?;
        let client = CriClient::new(
            &shim.endpoint(),
            Duration::from_secs(60),
            CriMetrics::default(),
        )?;
        let result = remove_sandboxes(&client, node).await;
        let _ = shim.shutdown().await;
        return result;
    }
    remove_sandboxes(&cri(), node).await
}

/// Stops and removes every sandbox labelled with `node`'s name on the runtime `cri` reaches.
pub async fn remove_sandboxes(cri: &CriClient, node: &str) -> Result<()> {
    let sandboxes = cri
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                label_selector: HashMap::from([(NODE_LABEL.to_string(), node.to_string())]),
                ..Default::default()
            }),
        })
        .await?
        .items;
    for s in sandboxes {
        let _ = cri
            .stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: s.id.clone(),
            })
            .await;
        let _ = cri
            .remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: s.id,
            })
            .await;
    }
    Ok(())
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        if std::env::var("MK_E2E_KEEP").is_ok_and(|v| v == "1") {
            return;
        }
        let node = self.node.clone();
        if let Some(cluster::Join::Node { control_plane, .. }) = &self.join {
            // Best effort: a Node left behind only stays NotReady in a throwaway cluster.
            let _ = std::process::Command::new(&control_plane.kubectl)
                .arg("--kubeconfig")
                .arg(&control_plane.admin_kubeconfig)
                .args([
                    "delete",
                    "node",
                    "--wait=false",
                    "--ignore-not-found",
                    &node,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Drop cannot await: clean up on a thread with its own runtime.
        let own_runtime = self.runtime_endpoint.clone();
        let cleanup = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| {
                    rt.block_on(async {
                        match own_runtime {
                            Some(endpoint) => {
                                let cri = CriClient::new(
                                    &endpoint,
                                    Duration::from_secs(60),
                                    CriMetrics::default(),
                                )?;
                                remove_sandboxes(&cri, &node).await
                            }
                            None => remove_node_objects(&node).await,
                        }
                    })
                })
        });
        let _ = cleanup.join();
        // The killed agent's pods (a directory each) keep their cgroups: they go with the pods
        // only when the agent removes them.
        if let Ok(pods) = std::fs::read_dir(self.dir.path().join("root/pods")) {
            for uid in pods
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
            {
                cri_checks::remove_pod_cgroups(&uid);
            }
        }
        unmount_under(self.dir.path());
    }
}

/// Unmounts what a killed agent left mounted under `dir` (its pods' tmpfs volumes: secrets,
/// projected service-account tokens), deepest first, so that the directory can be removed.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        // Best effort: what stays mounted only keeps its directory from being removed.
        let _ = Command::new("umount")
            .arg(point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The messages of CRI log lines, one per line.
fn log_messages(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|m| format!("{m}\n"))
        .collect()
}

/// A container log held open by the test ([`Agent::watch_output`]).
pub struct OutputWatch {
    path: PathBuf,
    file: std::fs::File,
    raw: String,
}

impl OutputWatch {
    /// Reads on until the output contains `expected`; the whole output so far.
    pub async fn wait_for(&mut self, expected: &str, timeout: Duration) -> Result<String> {
        use std::io::Read;
        let deadline = Instant::now() + timeout;
        loop {
            let mut more = Vec::new();
            self.file.read_to_end(&mut more)?;
            self.raw.push_str(&String::from_utf8_lossy(&more));
            let output = log_messages(&self.raw);
            if output.contains(expected) {
                return Ok(output);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} never contained {expected:?}; it holds:\n{output}",
                    self.path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A static pod manifest with one busybox container running `script` under `sh -c`.
pub fn busybox_pod(name: &str, restart_policy: &str, grace: u32, script: &str) -> String {
    let script = script.replace('\'', "''");
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart_policy}\n  \
         terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: main\n    image: {BUSYBOX}\n    \
         command: [sh, -c, '{script}']\n"
    )
}

/// The container state name (`running`, `waiting`, `terminated`) and reason of a pod's first container.
pub fn container_state(pod: &Pod) -> Option<(String, String, i32)> {
    let cs = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let state = cs.state.as_ref()?;
    let (kind, reason) = if state.running.is_some() {
        ("running", String::new())
    } else if let Some(w) = &state.waiting {
        ("waiting", w.reason.clone().unwrap_or_default())
    } else if let Some(t) = &state.terminated {
        ("terminated", t.reason.clone().unwrap_or_default())
    } else {
        return None;
    };
    Some((kind.to_string(), reason, cs.restart_count))
}
