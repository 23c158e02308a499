//! ADD, DEL and CHECK of a whole network (its plugin chain) for one container, per the CNI spec.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::cache::{self, CachedAttachment};
use crate::config::{NetworkConfigList, PluginConfig, version_at_least};
use crate::error::CniError;
use crate::exec::{Invocation, exec_plugin, find_plugin};
use crate::result::CniResult;

/// How long one plugin may run unless [`Cni::with_timeout`] says otherwise.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `portMappings` capability: one host port of the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The host address to listen on; empty: all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// The `bandwidth` capability, in bits per second (and burst bits); zero fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ingress_burst: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_rate: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub egress_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The capability arguments of an attachment; each goes into the `runtimeConfig` of the
/// plugins that declare the capability.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CapabilityArgs {
    /// `portMappings` (passed even when empty, as kubelet does).
    pub port_mappings: Vec<PortMapping>,
    /// `bandwidth`, when the pod asks for shaping.
    pub bandwidth: Option<Bandwidth>,
}

impl CapabilityArgs {
    /// The capabilities by name, as libcni holds (and caches) them.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert(
            "portMappings".into(),
            serde_json::to_value(&self.port_mappings).unwrap_or(Value::Array(Vec::new())),
        );
        if let Some(bandwidth) = &self.bandwidth
            && let Ok(value) = serde_json::to_value(bandwidth)
        {
            map.insert("bandwidth".into(), value);
        }
        map
    }
}

/// What is attached where: the container, its network namespace, the interface name inside it,
/// `CNI_ARGS` and the capability arguments.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// `/proc/<pid>/ns/net` or a bind-mounted netns; may be empty for DEL (the namespace is
    /// gone: plugins then release what they hold outside it).
    pub netns: String,
    pub if_name: String,
    /// `CNI_ARGS` pairs (see [`kubernetes_args`]).
    pub args: Vec<(String, String)>,
    pub capability_args: CapabilityArgs,
}

/// The `CNI_ARGS` kubelet (and cri-dockerd) pass for a pod.
pub fn kubernetes_args(
    namespace: &str,
    name: &str,
    infra_container_id: &str,
    uid: &str,
) -> Vec<(String, String)> {
    [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", namespace),
        ("K8S_POD_NAME", name),
        ("K8S_POD_INFRA_CONTAINER_ID", infra_container_id),
        ("K8S_POD_UID", uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn args_string(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The JSON a plugin reads on stdin: its own config with the network's `name` and `cniVersion`,
/// `prevResult` when there is one, and `runtimeConfig` with the capabilities it declares.
pub(crate) fn plugin_stdin(
    network: &NetworkConfigList,
    plugin: &PluginConfig,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Vec<u8> {
    let mut conf = plugin.raw().clone();
    conf.insert("name".into(), Value::String(network.name.clone()));
    conf.insert(
        "cniVersion".into(),
        Value::String(network.cni_version.clone()),
    );
    match prev_result {
        Some(prev) => conf.insert("prevResult".into(), prev.clone()),
        None => conf.remove("prevResult"),
    };
    let runtime_config: Map<String, Value> = plugin
        .capabilities()
        .into_iter()
        .filter_map(|cap| {
            capability_args
                .get(cap)
                .map(|value| (cap.to_string(), value.clone()))
        })
        .collect();
    if runtime_config.is_empty() {
        conf.remove("runtimeConfig");
    } else {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(conf).to_string().into_bytes()
}

/// A CNI runtime: where plugin binaries are, where results are cached, how long a plugin may
/// take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cni {
    bin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    timeout: Duration,
}

impl Cni {
    /// Plugins are looked up in `bin_dirs` in order; results are cached under
    /// `<cache_dir>/results` (libcni's `CacheDir`; cri-dockerd's default is `/var/lib/cni/cache`).
    pub fn new(bin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Self {
            bin_dirs,
            cache_dir,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }

    /// The deadline of each plugin execution.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn bin_dirs(&self) -> &[PathBuf] {
        &self.bin_dirs
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_dir
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    async fn binary(&self, plugin: &PluginConfig) -> Result<PathBuf, CniError> {
        find_plugin(&self.bin_dirs, &plugin.plugin_type)
            .await
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.plugin_type.clone(),
                dirs: self.bin_dirs.clone(),
            })
    }

    /// Checks that every plugin of `network` is installed.
    pub async fn validate(&self, network: &NetworkConfigList) -> Result<(), CniError> {
        for plugin in &network.plugins {
            self.binary(plugin).await?;
        }
        Ok(())
    }

    async fn run(
        &self,
        command: &'static str,
        network: &NetworkConfigList,
        plugin: &PluginConfig,
        rt: &RuntimeConf,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let binary = self.binary(plugin).await?;
        let args = args_string(&rt.args);
        let path = self.cni_path();
        let invocation = Invocation {
            command,
            container_id: &rt.container_id,
            netns: &rt.netns,
            if_name: &rt.if_name,
            args: &args,
            path: &path,
        };
        let stdin = plugin_stdin(network, plugin, prev_result, capability_args);
        exec_plugin(
            &binary,
            &plugin.plugin_type,
            &invocation,
            &stdin,
            self.timeout,
        )
        .await
    }

    /// ADD: runs the plugins in order, each getting the previous one's result, and caches the
    /// final result. On failure nothing is cached and nothing is undone: call [`Self::del`]
    /// with the same arguments to release what the plugins before the failing one set up.
    pub async fn add(
        &self,
        network: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<CniResult, CniError> {
        let capability_args = rt.capability_args.to_map();
        let mut result: Option<CniResult> = None;
        for plugin in &network.plugins {
            let stdout = self
                .run(
                    "ADD",
                    network,
                    plugin,
                    rt,
                    result.as_ref().map(CniResult::raw),
                    &capability_args,
                )
                .await?;
            if stdout.iter().all(u8::is_ascii_whitespace) && result.is_some() {
                continue; // nothing new: the previous result stands
            }
            result =
                Some(
                    CniResult::from_slice(&stdout).map_err(|reason| CniError::InvalidResult {
                        plugin: plugin.plugin_type.clone(),
                        command: "ADD",
                        reason,
                    })?,
                );
        }
        let result = result.ok_or_else(|| {
            CniError::Unsupported(format!("network {} has no plugins", network.name))
        })?;
        cache::write(
            &self.cache_dir,
            &CachedAttachment {
                network: network.clone(),
                container_id: rt.container_id.clone(),
                if_name: rt.if_name.clone(),
                cni_args: rt.args.clone(),
                capability_args,
                result: Some(result.clone()),
            },
        )
        .await?;
        Ok(result)
    }

    /// DEL: runs the plugins in reverse order with the cached ADD result as `prevResult` (0.4.0
    /// and later), then drops the cache entry. Every plugin runs even when one fails (the
    /// first error is returned and the cache kept, for a retry); plugins treat resources that
    /// are already gone as success.
    pub async fn del(&self, network: &NetworkConfigList, rt: &RuntimeConf) -> Result<(), CniError> {
        let cached = cache::read(
            &self.cache_dir,
            &network.name,
            &rt.container_id,
            &rt.if_name,
        )
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring an unreadable CNI cache entry");
            None
        });
        let prev = cached
            .as_ref()
            .and_then(|c| c.result.as_ref())
            .filter(|_| version_at_least(&network.cni_version, "0.4.0"))
            .map(CniResult::raw);
        let capability_args = rt.capability_args.to_map();
        let mut first_error = None;
        for plugin in network.plugins.iter().rev() {
            if let Err(e) = self
                .run("DEL", network, plugin, rt, prev, &capability_args)
                .await
            {
                tracing::debug!(plugin = %plugin.plugin_type, error = %e, "CNI DEL failed");
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        cache::remove(
            &self.cache_dir,
            &network.name,
            &rt.container_id,
            &rt.if_name,
        )
        .await
    }

    /// CHECK (0.4.0 and later; a no-op with `disableCheck`): runs the plugins in order with the
    /// cached ADD result as `prevResult`.
    pub async fn check(
        &self,
        network: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<(), CniError> {
        if !version_at_least(&network.cni_version, "0.4.0") {
            return Err(CniError::Unsupported(format!(
                "CHECK needs cniVersion 0.4.0 or later; network {} is {}",
                network.name, network.cni_version
            )));
        }
        if network.disable_check {
            return Ok(());
        }
        let cached = self
            .cached(&network.name, &rt.container_id, &rt.if_name)
            .await?
            .and_then(|c| c.result)
            .ok_or_else(|| {
                CniError::Unsupported(format!(
                    "no cached ADD result of network {} for container {}",
                    network.name, rt.container_id
                ))
            })?;
        let capability_args = rt.capability_args.to_map();
        for plugin in &network.plugins {
            self.run(
                "CHECK",
                network,
                plugin,
                rt,
                Some(cached.raw()),
                &capability_args,
            )
            .await?;
        }
        Ok(())
    }

    /// The cached attachment of a container to `network`, if ADD cached one.
    pub async fn cached(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
    ) -> Result<Option<CachedAttachment>, CniError> {
        cache::read(&self.cache_dir, network, container_id, if_name).await
    }

    /// DEL of a cached attachment with the network config, `CNI_ARGS` and capabilities of its
    /// ADD (so it works after the config directory changed or the process restarted); `netns`
    /// may be empty when the namespace is gone. Ok(false) when nothing is cached.
    pub async fn del_cached(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
        netns: &str,
    ) -> Result<bool, CniError> {
        let Some(cached) = self.cached(network, container_id, if_name).await? else {
            return Ok(false);
        };
        let capability_args = CapabilityArgs {
            port_mappings: cached
                .capability_args
                .get("portMappings")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            bandwidth: cached
                .capability_args
                .get("bandwidth")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
        };
        let rt = RuntimeConf {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            if_name: if_name.to_string(),
            args: cached.cni_args.clone(),
            capability_args,
        };
        self.del(&cached.network, &rt).await?;
        Ok(true)
    }

    /// Forgets a cached attachment without running DEL.
    pub async fn forget(
        &self,
        network: &str,
        container_id: &str,
        if_name: &str,
    ) -> Result<(), CniError> {
        cache::remove(&self.cache_dir, network, container_id, if_name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> NetworkConfigList {
        NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"pods","plugins":[
                {"type":"bridge","runtimeConfig":{"stale":1},"prevResult":{"stale":1}},
                {"type":"portmap","capabilities":{"portMappings":true}},
                {"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
            "x",
        )
        .expect("valid")
    }

    #[test]
    fn plugins_get_name_version_prev_result_and_their_capabilities() {
        let network = network();
        let caps = CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            bandwidth: None,
        }
        .to_map();
        let stdin = |i: usize, prev: Option<&Value>| -> Value {
            serde_json::from_slice(&plugin_stdin(&network, &network.plugins[i], prev, &caps))
                .expect("json")
        };
        let bridge = stdin(0, None);
        assert_eq!(bridge["name"], "pods");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert_eq!(bridge.get("prevResult"), None);
        assert_eq!(bridge.get("runtimeConfig"), None);
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let portmap = stdin(1, Some(&prev));
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            serde_json::json!({"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]})
        );
        // Declared but not given: no runtimeConfig.
        assert_eq!(stdin(2, Some(&prev)).get("runtimeConfig"), None);
    }

    #[test]
    fn capability_args_and_cni_args_as_kubelet_passes_them() {
        let caps = CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 80,
                container_port: 8080,
                protocol: "udp".into(),
                host_ip: "127.0.0.1".into(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 1_000_000,
                ingress_burst: 2_147_483_647,
                ..Default::default()
            }),
        };
        assert_eq!(
            Value::Object(caps.to_map()),
            serde_json::json!({
                "portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"udp","hostIP":"127.0.0.1"}],
                "bandwidth":{"ingressRate":1000000,"ingressBurst":2147483647}
            })
        );
        assert_eq!(
            Value::Object(CapabilityArgs::default().to_map()),
            serde_json::json!({"portMappings":[]})
        );
        assert_eq!(
            args_string(&kubernetes_args("default", "web", "abc", "u1")),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1"
        );
    }
}
