//! The `mini-kubelet` binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mini_kubelet::agent::{self, AgentOptions};
use mini_kubelet::config::KubeletConfiguration;
use tokio_util::sync::CancellationToken;

/// A Kubernetes node agent with pluggable CRI runtimes. Flags keep the upstream kubelet's names and
/// override the config file.
#[derive(Debug, Parser)]
#[command(name = "mini-kubelet", version, about)]
struct Cli {
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

fn resolve(cli: Cli) -> anyhow::Result<AgentOptions> {
    let mut config = match &cli.config {
        Some(path) => {
            let loaded = KubeletConfiguration::load(path)?;
            for field in &loaded.unknown_fields {
                tracing::warn!(file = %path.display(), field, "unknown or unsupported KubeletConfiguration field ignored");
            }
            loaded.config
        }
        None => KubeletConfiguration::default(),
    };
    if let Some(p) = cli.pod_manifest_path {
        config.static_pod_path = Some(p);
    }
    if let Some(e) = cli.container_runtime_endpoint {
        mk_cri::parse_endpoint(&e).context("--container-runtime-endpoint")?;
        config.container_runtime_endpoint = e;
    }
    if let Some(p) = cli.read_only_port {
        config.read_only_port = p;
    }
    if let Some(p) = cli.healthz_port {
        config.healthz_port = p;
    }
    if let Some(a) = cli.healthz_bind_address {
        config.healthz_bind_address = a;
    }
    if let Some(a) = cli.address {
        config.address = a;
    }
    if let Some(m) = cli.max_pods {
        anyhow::ensure!(m > 0, "--max-pods must be greater than 0");
        config.max_pods = m;
    }
    if let Some(r) = cli.cgroup_root {
        config.cgroup_root = r;
    }
    let node_name = match cli.hostname_override {
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
        kubeconfig: cli.kubeconfig,
        node_ip: cli.node_ip,
        node_labels,
        node_name,
        root_dir: cli.root_dir,
        cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
        pleg_period: Duration::from_secs(1),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.verbosity);
    let options = resolve(cli)?;
    std::fs::create_dir_all(&options.root_dir)
        .with_context(|| format!("creating --root-dir {}", options.root_dir.display()))?;
    tracing::info!(
        node = %options.node_name,
        runtime = %options.config.container_runtime_endpoint,
        static_pod_path = ?options.config.static_pod_path,
        "starting mini-kubelet"
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down; pods keep running");
        stop.cancel();
    });
    agent::run(options, cancel).await?;
    Ok(())
}
