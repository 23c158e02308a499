//! A CRI v1 runtime backed by dockerd: the semantics of Kubernetes' old dockershim /
//! Mirantis' cri-dockerd, as a library the agent serves in-process (`--container-runtime docker`)
//! or as its own process (`mini-kubelet dockershim --listen unix:///… --docker-endpoint …`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), mk_dockershim::DockerShimError> {
//! use mk_dockershim::{DockerShimConfig, serve};
//!
//! let config = DockerShimConfig::with_endpoint("unix:///var/run/docker.sock");
//! let server = serve("/run/mini-kubelet/dockershim.sock", config).await?;
//! // ... point a CRI client at server.endpoint() ...
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Model
//!
//! * **Sandbox** = a pause container ([`DockerShimConfig::pod_infra_image`]) named
//!   `k8s_POD_<pod>_<namespace>_<uid>_<attempt>`. It owns the pod's network namespace (Docker's
//!   bridge network, a CNI network, or the host's for hostNetwork), IPC namespace (`shareable`) and, with
//!   `shareProcessNamespace`, PID namespace; it carries the hostname, the host port bindings,
//!   the sysctls and the cgroup parent. With a CRI DNS config its `resolv.conf` (the file Docker
//!   keeps for it and mounts into every container joining its network; containers of host-network
//!   pods get it bind-mounted) is rewritten from the config; without one it is Docker's copy of
//!   the host's. Networking ([`DockerShimConfig::network_plugin`], cri-dockerd's
//!   `--network-plugin`): on Docker's bridge the sandbox's IP is the pause container's address
//!   there and host ports are Docker port bindings; with CNI the pause container gets Docker's
//!   `none` network, the conf dir's network is ADDed to its namespace (host ports through the
//!   `portmap` capability, bandwidth annotations through `bandwidth`), the pod IPs come from the
//!   cached ADD result, and StopPodSandbox DELs it — see `sandbox/network.rs`.
//! * **Containers** are named `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>` and join the
//!   sandbox's namespaces (`container:<sandbox id>` network / IPC / PID modes, or `host`), inherit
//!   its cgroup parent, and get command → entrypoint, args → cmd, env, working dir, mounts (Docker
//!   binds with `ro` and `rprivate`/`rslave`/`rshared`), devices, privileged, capabilities,
//!   run-as user/group/username, supplemental groups, read-only rootfs, no-new-privileges,
//!   seccomp (unconfined / localhost profiles), masked/readonly paths, CPU shares / quota /
//!   period / cpusets, memory limit (no swap unless the CRI gives a swap limit) and
//!   `oom_score_adj` (raised to 0 when negative unless
//!   [`DockerShimConfig::allow_negative_oom_score_adj`]).
//! * **State lives in Docker only**: CRI metadata, labels and annotations are Docker labels (see
//!   [`labels`]), so List*/Status and adoption after a restart need no local state.
//! * **Logs**: see [`logs`] — a follower per container copies Docker's log into the CRI log file
//!   in the CRI format.
//! * **Stop/Remove** of unknown IDs succeed (StopContainer of an unknown ID is NotFound, which
//!   kubelet treats as stopped). StopPodSandbox kills the pod's containers, then stops the pause
//!   container; RemovePodSandbox removes them all.
//! * **ExecSync** runs a Docker exec and collects its output (16 MiB per stream at most); a
//!   timeout answers DeadlineExceeded and kills the exec'd process.
//! * **Stats**: ContainerStats / ListContainerStats / PodSandboxStats / ListPodSandboxStats read
//!   the containers' cgroup files and the pause process's `/proc/<pid>/net/dev` directly, as
//!   containerd and cAdvisor do (110 pods: tens of milliseconds), cached per container for
//!   [`DockerShimConfig::stats_cache_ttl`]; Docker's one-shot stats API (about 1 s a container on
//!   Docker 20.10) only where the cgroup files cannot be read.
//! * **Events**: GetContainerEvents from Docker's event stream.
//! * **Images** through Docker: references are normalised as Docker does
//!   ([`normalize_reference`]), CRI auth becomes Docker registry credentials, ImageStatus of an
//!   absent image is `image: None`, ImageFsInfo reports Docker's data root.
//! * **Runtime**: Version (`docker`, the engine's version, API `v1`), Status (RuntimeReady and
//!   NetworkReady follow `docker ping`), RuntimeConfig (Docker's cgroup driver);
//!   UpdateRuntimeConfig is accepted and ignored (Docker's bridge has its own subnet).
//! * **IDs** are Docker's 64-hex IDs; a unique prefix is accepted, names are not.
//! * **Several shims on one dockerd** stay apart with [`DockerShimConfig::instance`].
//! * **Exec / Attach / PortForward** return URLs of the shim's streaming server
//!   ([`mk_streaming`]: SPDY/3.1 and WebSocket, `channel.k8s.io` and `portforward.k8s.io`, single-use
//!   tokens valid one minute, loopback and a free port unless [`DockerShimConfig::streaming`] says
//!   otherwise). Exec is a Docker exec with the client's pipes (TTY resizes included), attach a
//!   Docker attach, and port-forward connects to localhost inside the sandbox's network namespace
//!   from a short-lived thread that entered it (no `nsenter`/`socat` needed).
//! * **Not implemented** (`Unimplemented`): CheckpointContainer, ListMetricDescriptors,
//!   ListPodSandboxMetrics. Refused with InvalidArgument: image volumes (`Mount.image`) and
//!   recursive read-only mounts (Status reports the default handler without them, so kubelet
//!   refuses such pods first). Not done either: AppArmor / SELinux options, user namespaces,
//!   the writable layer's usage in stats, hugepage limits, ImageFsInfo's
//!   inode count.
//!
//! # Host limits seen on the project's machines
//!
//! Root there lacks CAP_SYS_RESOURCE, so nothing may lower `oom_score_adj` (negative values are
//! raised to 0 unless [`DockerShimConfig::allow_negative_oom_score_adj`]) and privileged
//! containers cannot start (Docker grants them every capability it knows, runc cannot apply
//! CAP_SYS_RESOURCE).

mod capabilities;
mod cgroups;
mod config;
mod container;
mod convert;
mod error;
mod events;
mod exec;
mod image;
pub mod labels;
pub mod logs;
mod sandbox;
mod server;
mod service;
mod stats;
mod streaming;

use std::sync::{Arc, OnceLock};

use bollard::{API_DEFAULT_VERSION, Docker};

pub use config::{
    DEFAULT_CNI_BIN_DIRS, DEFAULT_CNI_CACHE_DIR, DEFAULT_CNI_CONF_DIR, DEFAULT_DOCKER_ENDPOINT,
    DEFAULT_POD_INFRA_IMAGE, DockerShimConfig, LOCAL_TEST_POD_INFRA_IMAGE, NetworkPlugin,
    UnknownNetworkPlugin, socket_path,
};
pub use error::DockerShimError;
pub use image::normalize_reference;
pub use mk_streaming::StreamingConfig;
pub use server::{ServerHandle, serve};

/// The CRI v1 messages and service traits, re-exported.
pub use k8s_cri::v1 as api;
/// tonic, whose types appear in this crate's API (the services, `Request` to call them
/// in-process, the transport error), re-exported.
pub use tonic;

/// The runtime name reported by Version.
pub const RUNTIME_NAME: &str = "docker";

/// A CRI runtime on one dockerd. Cloning is cheap; clones share the connection, the log
/// followers and the stats cache.
#[derive(Clone)]
pub struct DockerShim {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    config: DockerShimConfig,
    logs: logs::LogFollowers,
    stats: stats::StatsCache,
    /// The server behind Exec / Attach / PortForward, started by [`DockerShim::connect`].
    streaming: OnceLock<mk_streaming::StreamingServer>,
}

impl std::fmt::Debug for DockerShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerShim")
            .field("docker_endpoint", &self.inner.config.docker_endpoint)
            .field(
                "api_version",
                &self.inner.docker.client_version().to_string(),
            )
            .field("log_followers", &self.inner.logs.count())
            .finish()
    }
}

impl DockerShim {
    /// Connects to dockerd and negotiates the API version (bollard would otherwise speak its own
    /// newest version, which an older engine such as Debian's 20.10 / API 1.41 does not know).
    pub async fn connect(config: DockerShimConfig) -> Result<Self, DockerShimError> {
        let path = socket_path(&config.docker_endpoint)?;
        let connect_error = |source| DockerShimError::Connect {
            endpoint: config.docker_endpoint.clone(),
            source,
        };
        let docker = Docker::connect_with_unix(
            &path.to_string_lossy(),
            config.docker_timeout.as_secs().max(1),
            API_DEFAULT_VERSION,
        )
        .map_err(connect_error)?
        .negotiate_version()
        .await
        .map_err(connect_error)?;
        tracing::debug!(
            endpoint = %config.docker_endpoint,
            api_version = %docker.client_version(),
            "connected to dockerd"
        );
        let inner = Arc::new(Inner {
            docker,
            stats: stats::StatsCache::default(),
            logs: logs::LogFollowers::default(),
            config,
            streaming: OnceLock::new(),
        });
        streaming::start(&inner).await?;
        Ok(Self { inner })
    }

    /// The settings this shim runs with.
    pub fn config(&self) -> &DockerShimConfig {
        &self.inner.config
    }

    /// The Docker API version in use after negotiation (`1.41` for Debian's 20.10 engine).
    pub fn api_version(&self) -> String {
        self.inner.docker.client_version().to_string()
    }

    /// Where the streaming server (Exec / Attach / PortForward URLs) listens.
    pub fn streaming_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.streaming.get().map(|s| s.local_addr())
    }

    /// How many containers' output is being copied into CRI log files right now.
    pub fn log_followers(&self) -> usize {
        self.inner.logs.count()
    }

    /// Stops copying container output (the followers resume from where they were when a shim
    /// next calls [`Self::resume_logs`]).
    pub fn stop_log_followers(&self) {
        self.inner.logs.abort_all();
    }

    pub(crate) fn docker(&self) -> &Docker {
        &self.inner.docker
    }
}
