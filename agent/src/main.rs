//! The `mini-kubelet` binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mini_kubelet::agent::{self, AgentOptions};
use mini_kubelet::config::KubeletConfiguration;
use tokio_util::sync::CancellationToken;

/// A Kubernetes node agent with pluggable CRI runtimes. Flags keep the upstream kubelet's names and
/// override the config file.
#[derive(Debug, Parser)]
#[command(name = "mini-kubelet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which runtime to use: `remote` (any CRI endpoint, containerRuntimeEndpoint) or `docker` (the
    /// built-in Docker adapter, started in-process over --docker-endpoint).
    #[arg(long, value_enum, default_value_t = RuntimeKind::Remote)]
    container_runtime: RuntimeKind,
    /// dockerd's API endpoint, with --container-runtime docker.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    docker_endpoint: String,
    /// The pause image of Docker sandboxes, with --container-runtime docker.
    #[arg(long, default_value = mk_dockershim::DEFAULT_POD_INFRA_IMAGE)]
    pod_infra_container_image: String,
    #[command(flatten)]
    docker_adapter: DockerAdapterFlags,
    /// KubeletConfiguration file (kubelet.config.k8s.io/v1beta1).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folder of static pod manifests (staticPodPath).
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// CRI endpoint, e.g. unix:///run/containerd/containerd.sock (containerRuntimeEndpoint).
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// Directory for the agent's own state.
    #[arg(long, default_value = "/var/lib/kubelet")]
    root_dir: PathBuf,
    /// Read-only HTTP port (0 = off) (readOnlyPort).
    #[arg(long)]
    read_only_port: Option<u16>,
    /// healthz port (0 = off) (healthzPort).
    #[arg(long)]
    healthz_port: Option<u16>,
    /// healthz bind address (healthzBindAddress).
    #[arg(long)]
    healthz_bind_address: Option<String>,
    /// Address the read-only port binds (address).
    #[arg(long)]
    address: Option<String>,
    /// The kubelet port: TLS, for logs, exec, attach, port-forward (0 = off) (port).
    #[arg(long)]
    port: Option<u16>,
    /// The kubelet port's serving certificate (tlsCertFile); without it a self-signed one is made
    /// in --cert-dir.
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (tlsPrivateKeyFile).
    #[arg(long)]
    tls_private_key_file: Option<PathBuf>,
    /// Where the serving certificate (self-signed or from serverTLSBootstrap) and the
    /// bootstrapped client certificate are kept (default: <root-dir>/pki).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// A kubeconfig with bootstrap credentials: when --kubeconfig has no valid client
    /// certificate, one is requested with a CertificateSigningRequest, kept in --cert-dir, and
    /// --kubeconfig is written to use it.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Renew the client certificate before it expires (rotateCertificates).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    rotate_certificates: Option<bool>,
    /// Client certificates signed by this CA authenticate (authentication.x509.clientCAFile).
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
    /// Requests without credentials are system:anonymous (authentication.anonymous.enabled).
    #[arg(long)]
    anonymous_auth: Option<bool>,
    /// Bearer tokens are checked with TokenReviews (authentication.webhook.enabled).
    #[arg(long)]
    authentication_token_webhook: Option<bool>,
    /// Webhook (SubjectAccessReviews) or AlwaysAllow (authorization.mode).
    #[arg(long, value_parser = ["Webhook", "AlwaysAllow"])]
    authorization_mode: Option<String>,
    /// Maximum number of pods (maxPods).
    #[arg(long)]
    max_pods: Option<u32>,
    /// Cgroup root for pods (cgroupRoot).
    #[arg(long)]
    cgroup_root: Option<String>,
    /// Join the cluster this kubeconfig names (kube's standard loading); without it only static pods run.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's InternalIP (default: the address of the default route's interface).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Labels to add when registering the node: key=value,key2=value2.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Log verbosity, as klog's -v: 0-2 info, 3-4 debug, 5+ trace. RUST_LOG overrides it.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    verbosity: u8,
}

/// The Docker adapter's pod network (cri-dockerd's flags, kubelet's `--cni-bin-dir`) and its
/// streaming server (cri-dockerd's `--streaming-bind-addr`, kubelet's idle timeout).
#[derive(Debug, Clone, clap::Args)]
struct DockerAdapterFlags {
    /// Docker pods' network: `cni` (the default network of --cni-conf-dir, attached to each pod
    /// by the CNI plugins), `bridge` (Docker's bridge network), or `auto`: CNI when
    /// --cni-conf-dir holds a valid network config at start, Docker's bridge otherwise.
    #[arg(long, default_value = "auto", value_parser = ["auto", "cni", "bridge"])]
    network_plugin: String,
    /// Where the CNI network config is read from (the first valid *.conflist, *.conf or *.json).
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    cni_bin_dir: Vec<PathBuf>,
    /// Where CNI results are cached (under results/).
    #[arg(long, default_value = "/var/lib/cni/cache")]
    cni_cache_dir: PathBuf,
    /// Where the adapter's streaming server (exec, attach, port-forward URLs) listens; port 0
    /// picks a free one. Keep it on loopback unless the URLs must be reachable from elsewhere.
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_bind_addr: std::net::SocketAddr,
    /// A streaming connection on which the client sends nothing this long is closed.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    streaming_connection_idle_timeout: std::time::Duration,
}

impl DockerAdapterFlags {
    /// `config` with these flags applied; `auto` is decided here, once, and logged.
    fn apply(
        &self,
        config: mk_dockershim::DockerShimConfig,
    ) -> anyhow::Result<mk_dockershim::DockerShimConfig> {
        let mut config = mk_dockershim::DockerShimConfig {
            cni_conf_dir: self.cni_conf_dir.clone(),
            cni_bin_dirs: self.cni_bin_dir.clone(),
            cni_cache_dir: self.cni_cache_dir.clone(),
            streaming: mk_dockershim::StreamingConfig {
                addr: self.streaming_bind_addr,
                stream_idle_timeout: self.streaming_connection_idle_timeout,
                ..mk_dockershim::StreamingConfig::default()
            },
            ..config
        };
        let reason = if self.network_plugin == "auto" {
            let (plugin, reason) = config.detect_network_plugin();
            config.network_plugin = plugin;
            reason
        } else {
            config.network_plugin = self.network_plugin.parse().context("--network-plugin")?;
            "--network-plugin".to_string()
        };
        tracing::info!(
            network_plugin = %config.network_plugin,
            reason,
            cni_conf_dir = %config.cni_conf_dir.display(),
            "Docker pod network"
        );
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    Remote,
    Docker,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CRI over the Docker Engine API on its own (for crictl, critest or another kubelet).
    Dockershim {
        /// Where to serve CRI.
        #[arg(long, default_value = "unix:///run/mini-kubelet/dockershim.sock")]
        listen: String,
        /// dockerd's API endpoint.
        #[arg(long, default_value = "unix:///var/run/docker.sock")]
        docker_endpoint: String,
        /// The pause image of sandboxes.
        #[arg(long, default_value = mk_dockershim::DEFAULT_POD_INFRA_IMAGE)]
        pod_infra_container_image: String,
        #[command(flatten)]
        adapter: DockerAdapterFlags,
    },
}

/// Serves the Docker adapter until SIGTERM / ctrl-c.
async fn run_dockershim(
    listen: &str,
    config: mk_dockershim::DockerShimConfig,
) -> anyhow::Result<()> {
    let mk_cri::Endpoint::Unix(path) = mk_cri::parse_endpoint(listen).context("--listen")?;
    let handle = mk_dockershim::serve(&path, config)
        .await
        .context("starting the Docker CRI adapter")?;
    tracing::info!(endpoint = %handle.endpoint(), "serving CRI over the Docker Engine API");
    wait_for_signal().await;
    handle
        .shutdown()
        .await
        .context("stopping the Docker CRI adapter")?;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{level},h2=info,hyper=info,tower=info"))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn hostname() -> anyhow::Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_lowercase())
}

fn resolve(cli: &Cli) -> anyhow::Result<AgentOptions> {
    let mut config = match &cli.config {
        Some(path) => {
            let loaded = KubeletConfiguration::load(path)?;
            for field in &loaded.unknown_fields {
                tracing::warn!(file = %path.display(), field, "unknown or unsupported KubeletConfiguration field ignored");
            }
            for gate in loaded.config.unknown_feature_gates() {
                tracing::warn!(file = %path.display(), gate, "feature gate unknown to this agent ignored");
            }
            loaded.config
        }
        None => KubeletConfiguration::default(),
    };
    if let Some(p) = cli.pod_manifest_path.clone() {
        config.static_pod_path = Some(p);
    }
    if let Some(e) = cli.container_runtime_endpoint.clone() {
        mk_cri::parse_endpoint(&e).context("--container-runtime-endpoint")?;
        config.container_runtime_endpoint = e;
    }
    if let Some(p) = cli.read_only_port {
        config.read_only_port = p;
    }
    if let Some(p) = cli.healthz_port {
        config.healthz_port = p;
    }
    if let Some(a) = cli.healthz_bind_address.clone() {
        config.healthz_bind_address = a;
    }
    if let Some(a) = cli.address.clone() {
        config.address = a;
    }
    if let Some(p) = cli.port {
        config.port = p;
    }
    if cli.tls_cert_file.is_some() || cli.tls_private_key_file.is_some() {
        anyhow::ensure!(
            cli.tls_cert_file.is_some() && cli.tls_private_key_file.is_some(),
            "--tls-cert-file and --tls-private-key-file go together"
        );
        config.tls_cert_file = cli.tls_cert_file.clone();
        config.tls_private_key_file = cli.tls_private_key_file.clone();
    }
    if let Some(on) = cli.rotate_certificates {
        config.rotate_certificates = on;
    }
    if cli.bootstrap_kubeconfig.is_some() {
        anyhow::ensure!(
            cli.kubeconfig.is_some(),
            "--bootstrap-kubeconfig needs --kubeconfig (the file it writes)"
        );
    }
    if let Some(ca) = cli.client_ca_file.clone() {
        config.authentication.x509.client_ca_file = Some(ca);
    }
    if let Some(on) = cli.anonymous_auth {
        config.authentication.anonymous.enabled = on;
    }
    if let Some(on) = cli.authentication_token_webhook {
        config.authentication.webhook.enabled = on;
    }
    if let Some(mode) = cli.authorization_mode.clone() {
        config.authorization.mode = mode;
    }
    if let Some(m) = cli.max_pods {
        anyhow::ensure!(m > 0, "--max-pods must be greater than 0");
        config.max_pods = m;
    }
    if let Some(r) = cli.cgroup_root.clone() {
        config.cgroup_root = r;
    }
    let node_name = match cli.hostname_override.clone() {
        Some(n) => n.trim().to_lowercase(),
        None => hostname()?,
    };
    anyhow::ensure!(
        !node_name.is_empty(),
        "the node name is empty: set --hostname-override"
    );
    let mut node_labels = std::collections::BTreeMap::new();
    for pair in cli.node_labels.iter().filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--node-labels: {pair:?} is not key=value"))?;
        node_labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(AgentOptions {
        config,
        kubeconfig: cli.kubeconfig.clone(),
        bootstrap_kubeconfig: cli.bootstrap_kubeconfig.clone(),
        node_ip: cli.node_ip,
        node_labels,
        node_name,
        cert_dir: cli
            .cert_dir
            .clone()
            .unwrap_or_else(|| cli.root_dir.join("pki")),
        root_dir: cli.root_dir.clone(),
        cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
        pleg_period: Duration::from_secs(1),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbosity);
    if let Some(Command::Dockershim {
        listen,
        docker_endpoint,
        pod_infra_container_image,
        adapter,
    }) = &cli.command
    {
        let config = adapter.apply(mk_dockershim::DockerShimConfig {
            pod_infra_image: pod_infra_container_image.clone(),
            ..mk_dockershim::DockerShimConfig::with_endpoint(docker_endpoint.clone())
        })?;
        return run_dockershim(listen, config).await;
    }
    let mut options = resolve(&cli)?;
    std::fs::create_dir_all(&options.root_dir)
        .with_context(|| format!("creating --root-dir {}", options.root_dir.display()))?;
    // The built-in Docker adapter: a CRI server in this process; the agent reaches it through the
    // same CRI client as any other runtime.
    let _dockershim = match cli.container_runtime {
        RuntimeKind::Remote => None,
        RuntimeKind::Docker => {
            let socket = options.root_dir.join("dockershim.sock");
            let config = cli.docker_adapter.apply(mk_dockershim::DockerShimConfig {
                pod_infra_image: cli.pod_infra_container_image.clone(),
                instance: options.node_name.clone(),
                ..mk_dockershim::DockerShimConfig::with_endpoint(cli.docker_endpoint.clone())
            })?;
            let handle = mk_dockershim::serve(&socket, config)
                .await
                .with_context(|| {
                    format!("starting the Docker CRI adapter on {}", cli.docker_endpoint)
                })?;
            options.config.container_runtime_endpoint = handle.endpoint();
            Some(handle)
        }
    };
    tracing::info!(
        node = %options.node_name,
        runtime = %options.config.container_runtime_endpoint,
        static_pod_path = ?options.config.static_pod_path,
        "starting mini-kubelet"
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down; pods keep running");
        stop.cancel();
    });
    agent::run(options, cancel).await?;
    Ok(())
}
