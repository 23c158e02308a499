//! The pod spec's resources, security contexts and DNS, turned into CRI as kubelet does
//! (`kuberuntime_container_linux.go`, `security_context.go`, `qos/policy.go`, `network/dns`).

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use mk_cri::api;

use crate::qos::{QosClass, qos_class};
use crate::quantity::Quantity;

/// kubelet's CPU constants.
const MIN_SHARES: i64 = 2;
const SHARES_PER_CPU: i64 = 1024;
const QUOTA_PERIOD: i64 = 100_000;
const MIN_QUOTA_PERIOD: i64 = 1000;
/// kubelet's OOM score policy.
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
pub const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;

fn resource(c: &Container, kind: &str, name: &str) -> Option<Quantity> {
    let r = c.resources.as_ref()?;
    let list = if kind == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    Quantity::from_api(list.get(name)?).ok()
}

/// kubelet's `MilliCPUToShares`.
pub fn milli_cpu_to_shares(milli: i64) -> i64 {
    if milli == 0 {
        return MIN_SHARES;
    }
    (milli * SHARES_PER_CPU / 1000).max(MIN_SHARES)
}

/// kubelet's `MilliCPUToQuota`.
pub fn milli_cpu_to_quota(milli: i64, period: i64) -> i64 {
    if milli == 0 {
        return 0;
    }
    (milli * period / 1000).max(MIN_QUOTA_PERIOD)
}

/// kubelet's `GetContainerOOMScoreAdjust`.
pub fn oom_score_adj(pod: &Pod, container: &Container, memory_capacity: i64) -> i64 {
    match qos_class(pod) {
        QosClass::Guaranteed => GUARANTEED_OOM_SCORE_ADJ,
        QosClass::BestEffort => BEST_EFFORT_OOM_SCORE_ADJ,
        QosClass::Burstable => {
            let request = resource(container, "requests", "memory")
                .or_else(|| resource(container, "limits", "memory"))
                .map(|q| q.value())
                .unwrap_or(0);
            if memory_capacity <= 0 {
                return 999;
            }
            let adj = 1000 - (1000 * i128::from(request) / i128::from(memory_capacity)) as i64;
            adj.clamp(2, 999)
        }
    }
}

/// The container's Linux resources.
pub fn container_resources(
    pod: &Pod,
    container: &Container,
    memory_capacity: i64,
) -> api::LinuxContainerResources {
    let cpu_request =
        resource(container, "requests", "cpu").or_else(|| resource(container, "limits", "cpu"));
    let cpu_limit = resource(container, "limits", "cpu");
    let memory_limit = resource(container, "limits", "memory");
    let (quota, period) = match cpu_limit {
        Some(l) => (
            milli_cpu_to_quota(l.milli_value(), QUOTA_PERIOD),
            QUOTA_PERIOD,
        ),
        None => (0, 0),
    };
    api::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(cpu_request.map(|q| q.milli_value()).unwrap_or(0)),
        cpu_quota: quota,
        cpu_period: period,
        memory_limit_in_bytes: memory_limit.map(|q| q.value()).unwrap_or(0),
        oom_score_adj: oom_score_adj(pod, container, memory_capacity),
        ..Default::default()
    }
}

fn profile(kind: &str, localhost: Option<&str>) -> Option<api::SecurityProfile> {
    use api::security_profile::ProfileType;
    let profile_type = match kind {
        "RuntimeDefault" => ProfileType::RuntimeDefault,
        "Unconfined" => ProfileType::Unconfined,
        "Localhost" => ProfileType::Localhost,
        _ => return None,
    };
    Some(api::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost.unwrap_or_default().to_string(),
    })
}

fn seccomp(
    pod_sc: Option<&PodSecurityContext>,
    sc: Option<&SecurityContext>,
) -> Option<api::SecurityProfile> {
    let p = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod_sc.and_then(|s| s.seccomp_profile.as_ref()))?;
    profile(&p.type_, p.localhost_profile.as_deref())
}

/// The user the container runs as, after pod-level defaults: (uid, gid, runAsNonRoot).
pub fn effective_user(pod: &Pod, container: &Container) -> (Option<i64>, Option<i64>, bool) {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    (uid, gid, non_root)
}

/// kubelet's `verifyRunAsNonRoot`: the image's user (uid or name) decides when no runAsUser is set.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    image_uid: Option<i64>,
    image_user: &str,
) -> Result<(), String> {
    let (uid, _, non_root) = effective_user(pod, container);
    if !non_root {
        return Ok(());
    }
    let who = format!(
        "pod: \"{}_{}({})\", container: {}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.uid.as_deref().unwrap_or_default(),
        container.name
    );
    if let Some(uid) = uid {
        return if uid == 0 {
            Err(format!(
                "container's runAsUser breaks non-root policy ({who})"
            ))
        } else {
            Ok(())
        };
    }
    match image_uid {
        Some(0) => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        Some(_) => Ok(()),
        None if image_user.is_empty() => Err(format!(
            "container has runAsNonRoot and image will run as root ({who})"
        )),
        None => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root ({who})"
        )),
    }
}

/// The user an image runs as (its config's `User`): a numeric uid, else a name (CRI ImageStatus).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageUser<'a> {
    pub uid: Option<i64>,
    pub username: &'a str,
}

/// The container's CRI security context; `namespaces` come from the sandbox. Without a runAsUser,
/// the image's user is passed on (kubelet's `determineEffectiveSecurityContext`), so a runAsGroup
/// always comes with the user it applies to.
pub fn container_security(
    pod: &Pod,
    container: &Container,
    namespaces: Option<api::NamespaceOption>,
    image_user: ImageUser<'_>,
) -> api::LinuxContainerSecurityContext {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let sc = container.security_context.as_ref();
    let (uid, gid, _) = effective_user(pod, container);
    // An image with no user runs as root (kubelet's `getImageUser`).
    let (uid, username) = match (uid, image_user.uid, image_user.username) {
        (Some(uid), _, _) | (None, Some(uid), _) => (Some(uid), String::new()),
        (None, None, "") => (Some(0), String::new()),
        (None, None, name) => (None, name.to_string()),
    };
    let mut groups: Vec<i64> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(fs_group);
    }
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    api::LinuxContainerSecurityContext {
        capabilities: caps.map(|c| api::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        }),
        privileged,
        namespace_options: namespaces,
        run_as_user: uid.map(|value| api::Int64Value { value }),
        run_as_username: username,
        run_as_group: gid.map(|value| api::Int64Value { value }),
        readonly_rootfs: sc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: groups,
        // kubelet sets no_new_privs only when privilege escalation is explicitly refused.
        no_new_privs: sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        seccomp: seccomp(pod_sc, sc),
        ..Default::default()
    }
}

/// The sandbox's namespace options and security context.
pub fn sandbox_security(pod: &Pod) -> api::LinuxSandboxSecurityContext {
    let spec = pod.spec.as_ref();
    let flag = |f: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(f).unwrap_or(false)
    };
    let mode = |host: bool, otherwise: api::NamespaceMode| if host { api::NamespaceMode::Node } else { otherwise } as i32;
    let shared_pid = flag(|s| s.share_process_namespace);
    let pod_sc = spec.and_then(|s| s.security_context.as_ref());
    let privileged = spec.is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|sc| sc.privileged)
                    .unwrap_or(false)
            })
    });
    let mut groups: Vec<i64> = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = pod_sc.and_then(|s| s.fs_group) {
        groups.push(fs_group);
    }
    api::LinuxSandboxSecurityContext {
        namespace_options: Some(api::NamespaceOption {
            network: mode(flag(|s| s.host_network), api::NamespaceMode::Pod),
            pid: mode(
                flag(|s| s.host_pid),
                if shared_pid {
                    api::NamespaceMode::Pod
                } else {
                    api::NamespaceMode::Container
                },
            ),
            ipc: mode(flag(|s| s.host_ipc), api::NamespaceMode::Pod),
            ..Default::default()
        }),
        run_as_user: pod_sc
            .and_then(|s| s.run_as_user)
            .map(|value| api::Int64Value { value }),
        run_as_group: pod_sc
            .and_then(|s| s.run_as_group)
            .map(|value| api::Int64Value { value }),
        supplemental_groups: groups,
        privileged,
        seccomp: seccomp(pod_sc, None),
        ..Default::default()
    }
}

/// The pod's sysctls.
pub fn sysctls(pod: &Pod) -> std::collections::HashMap<String, String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect()
}

/// The cluster DNS settings of the KubeletConfiguration and the host's resolv.conf.
#[derive(Debug, Clone, Default)]
pub struct DnsSettings {
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    /// The host's resolv.conf (kubelet's `--resolv-conf`), as text.
    pub host_resolv_conf: String,
}

fn parse_resolv_conf(text: &str) -> api::DnsConfig {
    let mut dns = api::DnsConfig::default();
    for line in text.lines() {
        let mut fields = line
            .split('#')
            .next()
            .unwrap_or_default()
            .split_whitespace();
        match fields.next() {
            Some("nameserver") => dns.servers.extend(fields.next().map(String::from)),
            Some("search") => dns.searches = fields.map(String::from).collect(),
            Some("options") => dns.options = fields.map(String::from).collect(),
            _ => {}
        }
    }
    dns
}

/// kubelet's `GetPodDNS`: the sandbox DNS config for the pod's dnsPolicy and dnsConfig.
pub fn dns_config(pod: &Pod, settings: &DnsSettings) -> Option<api::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = match policy {
        "None" => api::DnsConfig::default(),
        _ if cluster && !settings.cluster_dns.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let domain = &settings.cluster_domain;
            let host = parse_resolv_conf(&settings.host_resolv_conf);
            let mut searches = if domain.is_empty() {
                Vec::new()
            } else {
                vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ]
            };
            searches.extend(host.searches);
            api::DnsConfig {
                servers: settings.cluster_dns.clone(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // "Default", or ClusterFirst without clusterDNS (kubelet falls back to Default with a warning).
        _ => parse_resolv_conf(&settings.host_resolv_conf),
    };
    if let Some(extra) = &spec.dns_config {
        dns.servers
            .extend(extra.nameservers.clone().unwrap_or_default());
        dns.searches
            .extend(extra.searches.clone().unwrap_or_default());
        for opt in extra.options.iter().flatten() {
            let rendered = match &opt.value {
                Some(v) => format!("{}:{v}", opt.name.as_deref().unwrap_or_default()),
                None => opt.name.clone().unwrap_or_default(),
            };
            let name = opt.name.clone().unwrap_or_default();
            dns.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            dns.options.push(rendered);
        }
    }
    let mut seen = std::collections::HashSet::new();
    dns.searches.retain(|s| seen.insert(s.clone()));
    dns.searches.truncate(32);
    dns.servers.truncate(3);
    Some(dns)
}

/// The pod's managed /etc/hosts, as kubelet writes it.
pub fn hosts_file(pod: &Pod, pod_ips: &[String], cluster_domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let spec = pod.spec.as_ref();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    let fqdn = spec
        .and_then(|s| s.subdomain.as_ref())
        .filter(|_| !cluster_domain.is_empty())
        .map(|sub| {
            format!(
                "{hostname}.{sub}.{}.svc.{cluster_domain}",
                pod.metadata.namespace.as_deref().unwrap_or("default")
            )
        });
    for ip in pod_ips {
        match &fqdn {
            Some(f) => out.push_str(&format!("{ip}\t{f}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec
        .and_then(|s| s.host_aliases.as_ref())
        .filter(|a| !a.is_empty());
    if let Some(aliases) = aliases {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;
