//! Pod networking: Docker's bridge, or CNI (cri-dockerd's `--network-plugin=cni`).
//!
//! * **Bridge** ([`NetworkPlugin::Bridge`], the library default): the pause container joins
//!   Docker's bridge network; host ports are Docker port bindings; the pod IP is the pause
//!   container's address on that network.
//! * **CNI** ([`NetworkPlugin::Cni`]): the pause container of a pod that does not use the host's
//!   network is created with Docker's `none` network. Once it runs, the default network of
//!   [`DockerShimConfig::cni_conf_dir`] (the first valid `*.conflist` / `*.conf` / `*.json` by
//!   name, read at each RunPodSandbox, so config changes apply to new pods) is ADDed on
//!   `/proc/<pause pid>/ns/net` as interface `eth0`, with kubelet's `CNI_ARGS` (`K8S_POD_*`),
//!   the pod's host ports as the `portMappings` capability (no Docker port bindings then) and
//!   the `kubernetes.io/{ingress,egress}-bandwidth` annotations as the `bandwidth` capability.
//!   The network's name is recorded on the pause container ([`CNI_NETWORK_LABEL`]) and the ADD
//!   result cached in [`DockerShimConfig::cni_cache_dir`]: PodSandboxStatus reports the pod
//!   IPs (IPv4 first) from that cache, so they survive a restart of the shim. StopPodSandbox
//!   DELs the network (with the config, arguments and port mappings of the ADD, from the cache)
//!   after killing the pod's containers and before stopping the pause container — with an empty
//!   netns when the pause container is already dead, as the spec allows — and reports a DEL
//!   failure after stopping the pause container anyway (kubelet retries; the plugins then
//!   release what they hold outside the namespace). RemovePodSandbox DELs what is still cached
//!   (best effort) and drops the cache entry. With no valid config, RunPodSandbox fails with
//!   `network plugin is not ready: cni config uninitialized` and Status reports NetworkReady
//!   false, reason `NetworkPluginNotReady`
//!   ([`DockerShim::network_ready_condition`]). Docker keeps bringing `lo` up in the `none`
//!   network's namespace, so the loopback plugin kubelet used to run is not needed.
//! * **Choosing** ([`DockerShimConfig::detect_network_plugin`], the agent's default
//!   `--network-plugin`): CNI when the config directory holds a valid network config at start,
//!   otherwise Docker's bridge as the fallback (logged once). A sandbox keeps the mode it was
//!   created with, whatever a restarted shim was told.

use std::collections::HashMap;
use std::net::IpAddr;

use bollard::models::ContainerInspectResponse;
use k8s_cri::v1 as api;
use mk_cni::{Bandwidth, CapabilityArgs, Cni, NetworkConfigList, PortMapping, RuntimeConf};

use crate::config::NetworkPlugin;
use crate::error::OpError;
use crate::{DockerShim, DockerShimConfig};

/// The Docker label of a CNI sandbox's pause container: the CNI network it is attached to.
pub const CNI_NETWORK_LABEL: &str = "io.mini-kubelet.cri.cni-network";
/// The pod's interface in its network namespace.
pub const POD_INTERFACE: &str = "eth0";
/// The reason of NetworkReady=false when CNI has no usable config (kubelet's).
pub const NOT_READY_REASON: &str = "NetworkPluginNotReady";
/// The pod annotations kubelet turned into the `bandwidth` capability.
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// kubelet's message for a CNI network that cannot be used (yet).
fn not_ready_message(detail: &str) -> String {
    format!("network plugin is not ready: cni config uninitialized: {detail}")
}

impl DockerShimConfig {
    /// The network plugin the agent's default `--network-plugin` stands for: CNI when
    /// [`Self::cni_conf_dir`] holds a valid network config, otherwise Docker's bridge; with why.
    /// Reads the directory (blocking; call it at start-up).
    pub fn detect_network_plugin(&self) -> (NetworkPlugin, String) {
        match mk_cni::load_default_network(&self.cni_conf_dir) {
            Ok(network) => (
                NetworkPlugin::Cni,
                format!("CNI network {} from {}", network.name, network.source()),
            ),
            Err(e) => (
                NetworkPlugin::Bridge,
                format!("Docker's bridge network: {e}"),
            ),
        }
    }
}

/// The CNI network a sandbox was attached to (None: Docker's bridge or the host's network).
pub(crate) fn cni_network_of(inspect: &ContainerInspectResponse) -> Option<&str> {
    inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|labels| labels.get(CNI_NETWORK_LABEL))
        .map(String::as_str)
        .filter(|name| !name.is_empty())
}

/// The network namespace of a running pause container (`/proc/<pid>/ns/net`), or "" when it
/// is not running (DEL with an empty netns is allowed).
pub(crate) fn netns_of(inspect: &ContainerInspectResponse) -> String {
    inspect
        .state
        .as_ref()
        .filter(|s| s.running == Some(true))
        .and_then(|s| s.pid)
        .filter(|pid| *pid > 0)
        .map(|pid| format!("/proc/{pid}/ns/net"))
        .unwrap_or_default()
}

/// The CRI port mappings with a host port, as the `portMappings` capability.
pub(crate) fn port_mappings(mappings: &[api::PortMapping]) -> Vec<PortMapping> {
    mappings
        .iter()
        .filter_map(|m| {
            let host_port = u16::try_from(m.host_port).ok().filter(|p| *p > 0)?;
            let container_port = u16::try_from(m.container_port).ok().filter(|p| *p > 0)?;
            let protocol = match api::Protocol::try_from(m.protocol) {
                Ok(api::Protocol::Udp) => "udp",
                Ok(api::Protocol::Sctp) => "sctp",
                _ => "tcp",
            };
            Some(PortMapping {
                host_port,
                container_port,
                protocol: protocol.into(),
                host_ip: m.host_ip.clone(),
            })
        })
        .collect()
}

/// A Kubernetes quantity (`10M`, `1Gi`, `500k`, `1.5M`, `100`) as a whole number.
fn parse_quantity(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let scale = 10u64.checked_pow(digits)?;
        let part: u64 = fraction.parse().ok()?;
        value = value.checked_add(part.checked_mul(multiplier)? / scale)?;
    }
    Some(value)
}

/// The `bandwidth` capability of a pod's annotations, as kubelet built it (rates in bits/s,
/// bursts unlimited); None without the annotations.
pub(crate) fn bandwidth(
    annotations: &HashMap<String, String>,
) -> Result<Option<Bandwidth>, OpError> {
    let rate = |key: &str| -> Result<u64, OpError> {
        match annotations.get(key) {
            None => Ok(0),
            Some(value) => parse_quantity(value).filter(|v| *v > 0).ok_or_else(|| {
                OpError::InvalidArgument(format!("annotation {key}: invalid bandwidth {value:?}"))
            }),
        }
    };
    let (ingress, egress) = (rate(INGRESS_BANDWIDTH)?, rate(EGRESS_BANDWIDTH)?);
    if ingress == 0 && egress == 0 {
        return Ok(None);
    }
    let burst = |rate: u64| {
        if rate > 0 {
            u64::from(i32::MAX.unsigned_abs())
        } else {
            0
        }
    };
    Ok(Some(Bandwidth {
        ingress_rate: ingress,
        ingress_burst: burst(ingress),
        egress_rate: egress,
        egress_burst: burst(egress),
    }))
}

fn cni_error(context: String, source: mk_cni::CniError) -> OpError {
    OpError::Cni { context, source }
}

/// NetworkReady from dockerd's health (`docker`) and, with CNI, whether a usable network config
/// exists (`cni`: Err with why not).
pub(crate) fn network_condition(
    plugin: NetworkPlugin,
    docker: api::RuntimeCondition,
    cni: Result<(), String>,
) -> api::RuntimeCondition {
    match cni {
        Err(detail) if docker.status && plugin == NetworkPlugin::Cni => api::RuntimeCondition {
            status: false,
            reason: NOT_READY_REASON.into(),
            message: not_ready_message(&detail),
            ..docker
        },
        _ => docker,
    }
}

impl DockerShim {
    fn cni(&self) -> Cni {
        Cni::new(
            self.config().cni_bin_dirs.clone(),
            self.config().cni_cache_dir.clone(),
        )
    }

    /// The default CNI network, with every plugin of it installed; kubelet's "cni config
    /// uninitialized" otherwise.
    pub(crate) async fn cni_network(&self) -> Result<NetworkConfigList, String> {
        let dir = self.config().cni_conf_dir.clone();
        let network = tokio::task::spawn_blocking(move || mk_cni::load_default_network(&dir))
            .await
            .map_err(|e| format!("loading the CNI config: {e}"))?
            .map_err(|e| e.to_string())?;
        self.cni()
            .validate(&network)
            .await
            .map_err(|e| format!("network {} from {}: {e}", network.name, network.source()))?;
        Ok(network)
    }

    /// NetworkReady for Status, given the condition dockerd's health alone gives: with CNI it
    /// is also false (reason `NetworkPluginNotReady`) while no usable network config exists.
    pub(crate) async fn network_ready_condition(
        &self,
        docker: api::RuntimeCondition,
    ) -> api::RuntimeCondition {
        let plugin = self.config().network_plugin;
        if !docker.status || plugin != NetworkPlugin::Cni {
            return docker;
        }
        let cni = self.cni_network().await.map(|_| ());
        network_condition(plugin, docker, cni)
    }

    /// The network a new non-hostNetwork sandbox is attached to: None with Docker's bridge; with
    /// CNI the default network, or the error RunPodSandbox fails with.
    pub(crate) async fn network_for_new_sandbox(
        &self,
    ) -> Result<Option<NetworkConfigList>, OpError> {
        if self.config().network_plugin != NetworkPlugin::Cni {
            return Ok(None);
        }
        self.cni_network()
            .await
            .map(Some)
            .map_err(|detail| OpError::FailedPrecondition(not_ready_message(&detail)))
    }

    /// ADD of `network` for a started pause container; on failure what the plugins set up is
    /// DELeted again (the caller removes the container).
    pub(crate) async fn setup_pod_network(
        &self,
        id: &str,
        network: &NetworkConfigList,
        config: &api::PodSandboxConfig,
    ) -> Result<Vec<IpAddr>, OpError> {
        let inspect = self
            .docker()
            .inspect_container(id, None)
            .await
            .map_err(|e| OpError::docker(format!("inspecting sandbox {id}"), e))?;
        let netns = netns_of(&inspect);
        if netns.is_empty() {
            return Err(OpError::FailedPrecondition(format!(
                "sandbox {id} is not running: no network namespace to attach"
            )));
        }
        let metadata = config.metadata.clone().unwrap_or_default();
        let rt = RuntimeConf {
            container_id: id.to_string(),
            netns,
            if_name: POD_INTERFACE.into(),
            args: mk_cni::kubernetes_args(&metadata.namespace, &metadata.name, id, &metadata.uid),
            capability_args: CapabilityArgs {
                port_mappings: port_mappings(&config.port_mappings),
                bandwidth: bandwidth(&config.annotations)?,
            },
        };
        let cni = self.cni();
        let started = std::time::Instant::now();
        match cni.add(network, &rt).await {
            Ok(result) => {
                let ips = result.pod_ips();
                tracing::debug!(sandbox = %id, network = %network.name, ?ips, elapsed = ?started.elapsed(), "CNI ADD");
                Ok(ips)
            }
            Err(e) => {
                if let Err(cleanup) = cni.del(network, &rt).await {
                    tracing::warn!(sandbox = %id, error = %cleanup, "CNI DEL after a failed ADD");
                }
                Err(cni_error(
                    format!(
                        "setting up the CNI network {} of sandbox {id}",
                        network.name
                    ),
                    e,
                ))
            }
        }
    }

    /// DEL of a sandbox's CNI network, if it has one still attached (per the cache). `netns` is
    /// the running pause container's namespace, or "".
    pub(crate) async fn teardown_pod_network(
        &self,
        inspect: &ContainerInspectResponse,
    ) -> Result<(), OpError> {
        let (Some(network), Some(id)) = (cni_network_of(inspect), inspect.id.as_deref()) else {
            return Ok(());
        };
        let netns = netns_of(inspect);
        match self
            .cni()
            .del_cached(network, id, POD_INTERFACE, &netns)
            .await
        {
            Ok(deleted) => {
                if deleted {
                    tracing::debug!(sandbox = %id, network, netns, "CNI DEL");
                }
                Ok(())
            }
            Err(e) => Err(cni_error(
                format!("tearing down the CNI network {network} of sandbox {id}"),
                e,
            )),
        }
    }

    /// RemovePodSandbox's share: DEL whatever is still attached (best effort: the sandbox goes
    /// anyway), then forget the cached result.
    pub(crate) async fn release_pod_network(&self, inspect: &ContainerInspectResponse) {
        let (Some(network), Some(id)) = (cni_network_of(inspect), inspect.id.as_deref()) else {
            return;
        };
        if let Err(e) = self.teardown_pod_network(inspect).await {
            tracing::warn!(sandbox = %id, error = %e, "removing a sandbox whose CNI DEL failed");
        }
        if let Err(e) = self.cni().forget(network, id, POD_INTERFACE).await {
            tracing::warn!(sandbox = %id, error = %e, "removing the CNI cache entry");
        }
    }

    /// The pod IPs of a CNI sandbox from the cached ADD result (none when nothing is cached);
    /// None for sandboxes on Docker's bridge or the host's network.
    pub(crate) async fn cni_pod_ips(
        &self,
        inspect: &ContainerInspectResponse,
    ) -> Option<Vec<String>> {
        let network = cni_network_of(inspect)?;
        let id = inspect.id.as_deref()?;
        let ips = match self.cni().cached(network, id, POD_INTERFACE).await {
            Ok(Some(cached)) => cached.result.map(|r| r.pod_ips()).unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "reading the cached CNI result");
                Vec::new()
            }
        };
        Some(ips.iter().map(ToString::to_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (text, want) in [
            ("100", Some(100)),
            ("10M", Some(10_000_000)),
            ("1.5M", Some(1_500_000)),
            ("500k", Some(500_000)),
            ("1Gi", Some(1 << 30)),
            (".5k", Some(500)),
            ("", None),
            ("M", None),
            ("10X", None),
            ("-1M", None),
            ("1.2.3", None),
        ] {
            assert_eq!(parse_quantity(text), want, "{text}");
        }
    }

    #[test]
    fn bandwidth_annotations() {
        let annotations = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        assert_eq!(bandwidth(&annotations(&[])).ok(), Some(None));
        let shaped = bandwidth(&annotations(&[(INGRESS_BANDWIDTH, "10M")]))
            .ok()
            .flatten();
        assert_eq!(
            shaped,
            Some(Bandwidth {
                ingress_rate: 10_000_000,
                ingress_burst: 2_147_483_647,
                egress_rate: 0,
                egress_burst: 0,
            })
        );
        assert!(bandwidth(&annotations(&[(EGRESS_BANDWIDTH, "fast")])).is_err());
    }

    #[test]
    fn host_ports_become_port_mappings() {
        let mappings = [
            api::PortMapping {
                protocol: api::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            // No host port: nothing to map.
            api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 0,
                host_ip: String::new(),
            },
            api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: 8080,
                host_port: 80,
                host_ip: String::new(),
            },
        ];
        assert_eq!(
            port_mappings(&mappings),
            vec![
                PortMapping {
                    host_port: 5353,
                    container_port: 53,
                    protocol: "udp".into(),
                    host_ip: "127.0.0.1".into(),
                },
                PortMapping {
                    host_port: 80,
                    container_port: 8080,
                    protocol: "tcp".into(),
                    host_ip: String::new(),
                },
            ]
        );
    }

    fn inspect(labels: &[(&str, &str)], pid: Option<i64>) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("s1".into()),
            config: Some(bollard::models::ContainerConfig {
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            state: Some(bollard::models::ContainerState {
                running: Some(pid.is_some()),
                pid: Some(pid.unwrap_or(0)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn sandboxes_remember_their_network() {
        let cni = inspect(&[(CNI_NETWORK_LABEL, "pods")], Some(42));
        assert_eq!(cni_network_of(&cni), Some("pods"));
        assert_eq!(netns_of(&cni), "/proc/42/ns/net");
        let stopped = inspect(&[(CNI_NETWORK_LABEL, "pods")], None);
        assert_eq!(netns_of(&stopped), "");
        assert_eq!(cni_network_of(&inspect(&[], Some(1))), None);
    }

    #[test]
    fn network_ready_follows_docker_and_the_cni_config() {
        let docker = |status: bool| api::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status,
            reason: if status { "" } else { "DockerDaemonNotReady" }.into(),
            message: String::new(),
        };
        let missing = || Err("no valid CNI network config in /etc/cni/net.d".to_string());
        // Docker's bridge: dockerd alone decides.
        assert_eq!(
            network_condition(NetworkPlugin::Bridge, docker(true), missing()),
            docker(true)
        );
        assert_eq!(
            network_condition(NetworkPlugin::Cni, docker(true), Ok(())),
            docker(true)
        );
        // dockerd down says so first.
        assert_eq!(
            network_condition(NetworkPlugin::Cni, docker(false), missing()),
            docker(false)
        );
        let not_ready = network_condition(NetworkPlugin::Cni, docker(true), missing());
        assert!(!not_ready.status);
        assert_eq!(not_ready.r#type, "NetworkReady");
        assert_eq!(not_ready.reason, "NetworkPluginNotReady");
        assert_eq!(
            not_ready.message,
            "network plugin is not ready: cni config uninitialized: no valid CNI network config in /etc/cni/net.d"
        );
    }

    fn shim_config(dir: &std::path::Path, plugin: NetworkPlugin) -> DockerShimConfig {
        DockerShimConfig {
            network_plugin: plugin,
            cni_conf_dir: dir.join("net.d"),
            cni_bin_dirs: vec![dir.join("bin")],
            cni_cache_dir: dir.join("cache"),
            ..DockerShimConfig::default()
        }
    }

    #[test]
    fn detection_falls_back_to_the_bridge() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = shim_config(dir.path(), NetworkPlugin::Bridge);
        let (plugin, why) = config.detect_network_plugin();
        assert_eq!(plugin, NetworkPlugin::Bridge, "{why}");
        assert!(why.contains("net.d"), "{why}");
        std::fs::create_dir_all(dir.path().join("net.d")).expect("mkdir");
        std::fs::write(
            dir.path().join("net.d/10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
        )
        .expect("write");
        let (plugin, why) = config.detect_network_plugin();
        assert_eq!(plugin, NetworkPlugin::Cni, "{why}");
        assert!(why.contains("pods"), "{why}");
    }
}
