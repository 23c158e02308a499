//! The CRI sandbox config of a pod: metadata, hostname, log directory, labels, port mappings and the
//! cgroup parent kubelet would use under cgroupfs.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use mk_cri::api;

use super::{labels, security};

/// `<podLogsDir>/<namespace>_<name>_<uid>`, kubelet's pod log directory.
pub fn pod_log_dir(pod_logs_dir: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    pod_logs_dir.join(format!("{namespace}_{name}_{uid}"))
}

pub fn log_dir_of(pod: &Pod, pod_logs_dir: &Path) -> PathBuf {
    pod_log_dir(
        pod_logs_dir,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The pod's hostname: `spec.hostname` or the pod name, cut to 63 characters as kubelet does.
fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.']).to_string()
}

fn port_mappings(pod: &Pod) -> Vec<api::PortMapping> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|h| *h > 0)?;
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => api::Protocol::Udp,
                Some("SCTP") => api::Protocol::Sctp,
                _ => api::Protocol::Tcp,
            };
            Some(api::PortMapping {
                protocol: protocol as i32,
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect()
}

pub struct SandboxOptions<'a> {
    pub node_name: &'a str,
    pub pod_logs_dir: &'a Path,
    /// The pods' cgroups: the sandbox's cgroup parent is its pod's cgroup.
    pub cgroups: &'a crate::cm::PodCgroups,
    pub dns: &'a security::DnsSettings,
}

/// Builds the RunPodSandbox request for `pod`.
pub fn build(pod: &Pod, attempt: u32, opts: &SandboxOptions<'_>) -> api::RunPodSandboxRequest {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname: if host_network {
            String::new()
        } else {
            hostname(pod)
        },
        log_directory: log_dir_of(pod, opts.pod_logs_dir)
            .to_string_lossy()
            .into_owned(),
        dns_config: security::dns_config(pod, opts.dns),
        port_mappings: port_mappings(pod),
        labels: labels::sandbox_labels(pod, opts.node_name),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: opts.cgroups.cgroup_parent(pod),
            security_context: Some(security::sandbox_security(pod)),
            sysctls: security::sysctls(pod),
            ..Default::default()
        }),
        windows: None,
    };
    api::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_carries_identity_logs_ports_and_cgroup() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-n1", "namespace": "default", "uid": "abc", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i:1", "ports": [
                {"containerPort": 80, "hostPort": 8080, "protocol": "TCP"},
                {"containerPort": 53, "protocol": "UDP"}
            ]}]}
        }))
        .expect("pod");
        let dns = security::DnsSettings::default();
        let cgroups = crate::cm::PodCgroups::new(&crate::cm::CgroupSettings {
            driver: crate::cm::CgroupDriver::Cgroupfs,
            cgroup_root: "/".into(),
            cgroups_per_qos: true,
            mount: "/nonexistent".into(),
        });
        let opts = SandboxOptions {
            node_name: "n1",
            pod_logs_dir: Path::new("/var/log/pods"),
            cgroups: &cgroups,
            dns: &dns,
        };
        let req = build(&pod, 2, &opts);
        let config = req.config.expect("config");
        let meta = config.metadata.expect("metadata");
        assert_eq!(
            (meta.name.as_str(), meta.uid.as_str(), meta.attempt),
            ("web-n1", "abc", 2)
        );
        assert_eq!(config.hostname, "web-n1");
        assert_eq!(config.log_directory, "/var/log/pods/default_web-n1_abc");
        assert_eq!(
            config.labels.get(labels::POD_UID).map(String::as_str),
            Some("abc")
        );
        assert_eq!(config.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(config.port_mappings.len(), 1);
        assert_eq!(config.port_mappings[0].host_port, 8080);
        assert_eq!(
            config.linux.expect("linux").cgroup_parent,
            "/kubepods/besteffort/podabc"
        );
    }
}
