//! The `mini-kubelet` binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mini_kubelet::agent::{self, AgentOptions};
use mini_kubelet::config;
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
    /// The flags that set KubeletConfiguration fields (applied over the file).
    #[command(flatten)]
    config_flags: mini_kubelet::config::FlagOverrides,
    /// Node name to use instead of the hostname.
    #[arg(long)]
    hostname_override: Option<String>,
    /// Directory for the agent's own state.
    #[arg(long, default_value = "/var/lib/kubelet")]
    root_dir: PathBuf,
    /// Where the serving certificate (self-signed or from serverTLSBootstrap) and the
    /// bootstrapped client certificate are kept (default: <root-dir>/pki).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// A kubeconfig with bootstrap credentials: when --kubeconfig has no valid client
    /// certificate, one is requested with a CertificateSigningRequest, kept in --cert-dir, and
    /// --kubeconfig is written to use it.
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// Join the cluster this kubeconfig names (kube's standard loading); without it only static pods run.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The node's InternalIP (default: the address of the default route's interface).
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// Labels to add when registering the node: key=value,key2=value2.
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Log verbosity, as klog's -v (default 0): tracing's info at 0-3 (kubelet's V(2) lines from
    /// 2), debug at 4, trace from 5. Wins over the file's logging.verbosity; RUST_LOG overrides both.
    #[arg(short = 'v', long = "v")]
    verbosity: Option<u8>,
    /// Log format, kubelet's --logging-format: text (klog's lines, the default) or json. Wins over
    /// the file's logging.format.
    #[arg(long, value_enum)]
    logging_format: Option<mini_kubelet::logging::Format>,
    #[command(flatten)]
    container_gc: ContainerGcFlags,
}

/// kubelet's (deprecated) container garbage collection flags.
#[derive(Debug, Clone, clap::Args)]
struct ContainerGcFlags {
    /// Maximum number of old instances to retain per container (negative: no limit).
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    maximum_dead_containers_per_container: i32,
    /// Maximum number of old instances of containers to retain globally (negative: no limit).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    maximum_dead_containers: i32,
    /// Minimum age for a finished container before it is garbage collected, e.g. '300ms', '10s'
    /// or '2h45m'.
    #[arg(long, default_value = "0", value_parser = mini_kubelet::config::parse_duration)]
    minimum_container_ttl_duration: Duration,
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
    /// Check a KubeletConfiguration (`config validate`) or print the reference (`config reference`).
    Config {
        #[command(subcommand)]
        command: config::command::ConfigCommand,
    },
    /// crictl-like commands for people on the node (pods, ps, images, logs, inspect, exec, stats,
    /// pull, version), against the runtime the global flags name.
    #[command(flatten)]
    Node(mini_kubelet::cli::NodeCommand),
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

/// How the agent stops. SIGINT (ctrl-c): at once, pods keep running (as kubelet). SIGTERM: the
/// same without graceful node shutdown; with it (`graceful`: `shutdownGracePeriod` set) SIGTERM
/// means the node is shutting down: `node_shutdown` is cancelled, the agent stops its pods in
/// kubelet's order and exits by itself. A second SIGTERM (or a SIGINT) meanwhile stops the agent
/// at once, leaving the pods not yet stopped running.
async fn handle_stop_signals(
    stop: CancellationToken,
    node_shutdown: CancellationToken,
    graceful: bool,
) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down; pods keep running");
            stop.cancel();
            return;
        }
    };
    let terminated = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = term.recv() => true,
    };
    if !(terminated && graceful) {
        tracing::info!("shutting down; pods keep running");
        stop.cancel();
        return;
    }
    tracing::info!(
        "SIGTERM: the node is shutting down; stopping its pods (graceful node shutdown), then \
         exiting (another SIGTERM exits at once)"
    );
    node_shutdown.cancel();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = stop.cancelled() => return,
    }
    tracing::warn!("stopping now, during the node shutdown; pods not yet stopped keep running");
    stop.cancel();
}

/// Starts logging from the flags alone, before the configuration file is read (errors reading it are
/// logged); [`apply_file_logging`] applies the file's `logging` section afterwards.
fn init_logging(cli: &Cli) -> anyhow::Result<mini_kubelet::logging::Handle> {
    let (format, verbosity) =
        mini_kubelet::logging::effective(cli.logging_format, cli.verbosity, None, None);
    Ok(mini_kubelet::logging::init(format, verbosity)?)
}

/// Applies the configuration file's `logging.format` and `logging.verbosity` where no flag set them
/// (flags win, as in kubelet).
fn apply_file_logging(
    logging: &mini_kubelet::logging::Handle,
    cli: &Cli,
    file_format: Option<mini_kubelet::logging::Format>,
    file_verbosity: Option<u8>,
) -> anyhow::Result<()> {
    let (format, verbosity) = mini_kubelet::logging::effective(
        cli.logging_format,
        cli.verbosity,
        file_format,
        file_verbosity,
    );
    logging.reconfigure(format, verbosity)?;
    Ok(())
}

fn hostname() -> anyhow::Result<String> {
    let name =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_lowercase())
}

fn resolve(cli: &Cli) -> anyhow::Result<AgentOptions> {
    // kubelet's pipeline: the file, the flags over it, everything validated once.
    let effective = config::resolve(cli.config.as_deref(), &cli.config_flags)?;
    for ignored in &effective.ignored {
        tracing::warn!(field = %ignored.field, "{}", ignored.message);
    }
    let config = effective.config;
    if cli.bootstrap_kubeconfig.is_some() {
        anyhow::ensure!(
            cli.kubeconfig.is_some(),
            "--bootstrap-kubeconfig needs --kubeconfig (the file it writes)"
        );
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
        container_gc: mini_kubelet::container_gc::GcPolicy {
            min_age: cli.container_gc.minimum_container_ttl_duration,
            max_per_pod_container: cli.container_gc.maximum_dead_containers_per_container,
            max_containers: cli.container_gc.maximum_dead_containers,
        },
        node_shutdown: CancellationToken::new(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Config { command }) = &cli.command {
        let code = command.run(&mut std::io::stdout().lock(), &mut std::io::stderr().lock());
        std::process::exit(code);
    }
    if let Some(Command::Node(command)) = &cli.command {
        let target = mini_kubelet::cli::Target {
            endpoint: cli.config_flags.container_runtime_endpoint.clone(),
            config: cli.config.clone(),
            docker: cli.container_runtime == RuntimeKind::Docker,
            root_dir: cli.root_dir.clone(),
        };
        let code = mini_kubelet::cli::run(command, &target)
            .await
            .unwrap_or_else(|e| {
                eprintln!("mini-kubelet: {e}");
                1
            });
        std::process::exit(code);
    }
    let logging = init_logging(&cli)?;
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
    let mut options = resolve(&cli).inspect_err(|e| {
        tracing::error!(
            error = format!("{e:#}"),
            "Failed to load the kubelet configuration"
        );
    })?;
    let file_logging = &options.config.logging;
    apply_file_logging(
        &logging,
        &cli,
        Some(file_logging.format.parse()?),
        Some(file_logging.verbosity),
    )?;
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
    tokio::spawn(handle_stop_signals(
        cancel.clone(),
        options.node_shutdown.clone(),
        mini_kubelet::nodeshutdown::enabled(&options.config),
    ));
    agent::run(options, cancel).await?;
    Ok(())
}
