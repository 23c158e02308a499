//! The shim's settings.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::DockerShimError;

/// The pause image of sandboxes unless configured otherwise: the one kubeadm v1.37 and containerd
/// 2.4 default to (`PauseVersion` 3.10.2). The tests pass their locally built image.
pub const DEFAULT_POD_INFRA_IMAGE: &str = "registry.k8s.io/pause:3.10.2";
/// The pause image the project's tests build (`e2e/scripts/build-images.sh`).
pub const LOCAL_TEST_POD_INFRA_IMAGE: &str = "mini-kubelet.local/pause:3.10";
/// Debian's (and everyone's) dockerd socket.
pub const DEFAULT_DOCKER_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// Where kubelet and cri-dockerd look for CNI network configs.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Where CNI plugins are looked for, in order: the upstream location, then Debian's
/// (containernetworking-plugins).
pub const DEFAULT_CNI_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];
/// cri-dockerd's CNI cache directory (results are kept under `results/` in it, as libcni does).
pub const DEFAULT_CNI_CACHE_DIR: &str = "/var/lib/cni/cache";

/// How pods get their network (cri-dockerd's `--network-plugin`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkPlugin {
    /// Docker's own bridge network (`docker0` or dockerd's `--bridge`); host ports are Docker
    /// port bindings. cri-dockerd's default (an empty `--network-plugin`).
    #[default]
    Bridge,
    /// The pause container gets Docker's `none` network and the default CNI network of
    /// [`DockerShimConfig::cni_conf_dir`] is attached to its namespace; host ports go to the
    /// `portmap` capability.
    Cni,
}

impl NetworkPlugin {
    /// The flag value: `bridge` or `cni`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Cni => "cni",
        }
    }
}

impl std::fmt::Display for NetworkPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--network-plugin` value that is neither `cni` nor `bridge`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown network plugin {0:?} (expected \"cni\" or \"bridge\")")]
pub struct UnknownNetworkPlugin(pub String);

impl FromStr for NetworkPlugin {
    type Err = UnknownNetworkPlugin;

    /// `cni`, or `bridge` (also the empty string, as cri-dockerd's default).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cni" => Ok(Self::Cni),
            "bridge" | "" => Ok(Self::Bridge),
            other => Err(UnknownNetworkPlugin(other.to_string())),
        }
    }
}

/// How the shim reaches dockerd and shapes what it creates there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerShimConfig {
    /// dockerd's API socket: `unix:///var/run/docker.sock` or an absolute path.
    pub docker_endpoint: String,
    /// The image of every sandbox's pause container. Pulled (without credentials) by
    /// RunPodSandbox when absent.
    pub pod_infra_image: String,
    /// The deadline of each Docker API request that is not a stream (StopContainer adds the
    /// grace period to it).
    pub docker_timeout: Duration,
    /// How long one container's stats sample is reused by ContainerStats / ListContainerStats /
    /// the pod sandbox stats (each sample costs one Docker API call).
    pub stats_cache_ttl: Duration,
    /// When false (the default), a negative `oom_score_adj` from the CRI is raised to 0: lowering
    /// it needs CAP_SYS_RESOURCE, which root lacks on some hosts (then every such container would
    /// fail to start). Set it where root may lower OOM scores, to honour Guaranteed pods' -997.
    pub allow_negative_oom_score_adj: bool,
    /// `max-size` of the json-file log Docker keeps for each container (the shim copies that log
    /// into the CRI log file; Docker's copy is bounded to `max-size` x 2 files).
    pub docker_log_max_size: String,
    /// When not empty, everything this shim creates is labelled `io.mini-kubelet.cri.instance=`
    /// this value and it only lists, adopts and reports those: several agents (or tests) can then
    /// share one dockerd without seeing each other's pods. Empty (the default): the shim manages
    /// every CRI container of the dockerd.
    pub instance: String,
    /// How new pods get their network: Docker's bridge (the default) or CNI. Sandboxes
    /// remember theirs, so a shim restarted with another choice still reports and tears down
    /// the older ones correctly. [`DockerShimConfig::detect_network_plugin`] picks one the way
    /// the agent's default `--network-plugin` does.
    pub network_plugin: NetworkPlugin,
    /// Where the CNI network config is looked for (the first valid `*.conflist`, `*.conf` or
    /// `*.json` by name).
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugin binaries are looked for, in order.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Where CNI ADD results are cached (under `results/`): DEL gets them as `prevResult`, and
    /// PodSandboxStatus reads the pod IPs from them.
    pub cni_cache_dir: PathBuf,
    /// The streaming server behind Exec / Attach / PortForward (cri-dockerd's
    /// `--streaming-bind-addr`; default: loopback, a free port, the kubelet's timeouts).
    pub streaming: mk_streaming::StreamingConfig,
}

impl Default for DockerShimConfig {
    fn default() -> Self {
        Self {
            docker_endpoint: DEFAULT_DOCKER_ENDPOINT.to_string(),
            pod_infra_image: DEFAULT_POD_INFRA_IMAGE.to_string(),
            docker_timeout: Duration::from_secs(120),
            stats_cache_ttl: Duration::from_secs(2),
            allow_negative_oom_score_adj: false,
            docker_log_max_size: "10m".to_string(),
            instance: String::new(),
            network_plugin: NetworkPlugin::default(),
            cni_conf_dir: PathBuf::from(DEFAULT_CNI_CONF_DIR),
            cni_bin_dirs: DEFAULT_CNI_BIN_DIRS.iter().map(PathBuf::from).collect(),
            cni_cache_dir: PathBuf::from(DEFAULT_CNI_CACHE_DIR),
            streaming: mk_streaming::StreamingConfig::default(),
        }
    }
}

impl DockerShimConfig {
    /// The defaults with another docker endpoint.
    pub fn with_endpoint(endpoint: impl Into<String>) -> Self {
        Self {
            docker_endpoint: endpoint.into(),
            ..Self::default()
        }
    }
}

/// The socket path of a unix endpoint: `unix:///run/x.sock` or `/run/x.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, DockerShimError> {
    let invalid = |reason| DockerShimError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    };
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if path.is_empty() {
        return Err(invalid("empty socket path"));
    }
    if path.contains("://") {
        return Err(invalid("only unix:// endpoints are supported"));
    }
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute (unix:///path)"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///var/run/docker.sock").ok(),
            Some(PathBuf::from("/var/run/docker.sock"))
        );
        assert_eq!(
            socket_path("/tmp/d.sock").ok(),
            Some(PathBuf::from("/tmp/d.sock"))
        );
        for bad in [
            "",
            "unix://",
            "tcp://1.2.3.4:2375",
            "unix://rel.sock",
            "rel.sock",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn network_plugin_names() {
        for (name, want) in [
            ("cni", Some(NetworkPlugin::Cni)),
            ("bridge", Some(NetworkPlugin::Bridge)),
            ("", Some(NetworkPlugin::Bridge)),
            ("kubenet", None),
        ] {
            assert_eq!(name.parse::<NetworkPlugin>().ok(), want, "{name}");
        }
        assert_eq!(NetworkPlugin::Cni.to_string(), "cni");
        assert_eq!(
            DockerShimConfig::default().network_plugin,
            NetworkPlugin::Bridge
        );
    }
}
