//! Pod sandboxes: pause containers (their networking: [`network`]).

pub(crate) mod network;

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, HostConfig,
    HostConfigLogConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, StopContainerOptions,
};
use k8s_cri::v1 as api;

use crate::error::{OpError, is_conflict, is_not_found};
use crate::labels::{SandboxLabels, TYPE_CONTAINER, TYPE_SANDBOX};
use crate::{DockerShim, convert, labels};

/// Grace period of the pause container in StopPodSandbox (catatonit exits on SIGTERM at once).
const PAUSE_STOP_TIMEOUT: i32 = 10;

fn mode(options: Option<&api::NamespaceOption>, pick: fn(&api::NamespaceOption) -> i32) -> i32 {
    options.map_or(api::NamespaceMode::Pod as i32, pick)
}

pub(crate) fn is_node(mode: i32) -> bool {
    mode == api::NamespaceMode::Node as i32
}

/// The IP of a pause container on its Docker network (none with the host's network or when
/// stopped), then its other addresses (IPv6).
pub(crate) fn sandbox_ips(inspect: &ContainerInspectResponse) -> (String, Vec<String>) {
    let mut ips = Vec::new();
    if let Some(networks) = inspect
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
    {
        let mut names: Vec<&String> = networks.keys().collect();
        names.sort();
        for name in names {
            let Some(endpoint) = networks.get(name) else {
                continue;
            };
            for ip in [&endpoint.ip_address, &endpoint.global_ipv6_address]
                .into_iter()
                .flatten()
            {
                if !ip.is_empty() && !ips.contains(ip) {
                    ips.push(ip.clone());
                }
            }
        }
    }
    let mut ips = ips.into_iter();
    let first = ips.next().unwrap_or_default();
    (first, ips.collect())
}

pub(crate) fn is_running(inspect: &ContainerInspectResponse) -> bool {
    is_running_state(inspect.state.as_ref())
}

pub(crate) fn is_running_state(state: Option<&bollard::models::ContainerState>) -> bool {
    state.and_then(|s| s.running).unwrap_or(false)
}

fn sandbox_state(running: bool) -> api::PodSandboxState {
    if running {
        api::PodSandboxState::SandboxReady
    } else {
        api::PodSandboxState::SandboxNotready
    }
}

impl DockerShim {
    /// Creates `name` from `body`; a stopped container left with that name by an earlier attempt
    /// (whose answer was lost, or whose start failed) is replaced once.
    pub(crate) async fn create_named(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, OpError> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let mut replaced = false;
        loop {
            match self
                .docker()
                .create_container(Some(options.clone()), body.clone())
                .await
            {
                Ok(created) => return Ok(created.id),
                Err(e) if is_conflict(&e) && !replaced => {
                    replaced = true;
                    match self.docker().inspect_container(name, None).await {
                        Ok(existing) if is_running(&existing) => {
                            return Err(OpError::AlreadyExists(format!(
                                "container name {name} is in use by running container {}",
                                existing.id.unwrap_or_default()
                            )));
                        }
                        Ok(existing) => {
                            let id = existing.id.unwrap_or_default();
                            tracing::info!(
                                name,
                                id,
                                "removing a stopped container holding the name"
                            );
                            self.remove_docker_container(&id).await?;
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            return Err(OpError::docker(format!("inspecting {name}"), e));
                        }
                    }
                }
                Err(e) => return Err(OpError::docker(format!("creating container {name}"), e)),
            }
        }
    }

    /// Force-removes a Docker container and its anonymous volumes; absent is fine.
    pub(crate) async fn remove_docker_container(&self, id: &str) -> Result<(), OpError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker().remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // "removal of container ... is already in progress"
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(OpError::docker(format!("removing container {id}"), e)),
        }
    }

    /// Stops a Docker container with a grace period (dockerd sends the stop signal, then SIGKILL
    /// after `timeout` seconds); a stopped or absent container is fine.
    pub(crate) async fn stop_docker_container(
        &self,
        id: &str,
        timeout: i64,
    ) -> Result<(), bollard::errors::Error> {
        let grace = timeout.clamp(0, i64::from(i32::MAX));
        let options = StopContainerOptions {
            t: Some(i32::try_from(grace).unwrap_or(i32::MAX)),
            signal: None,
        };
        // The request lasts as long as the grace period: give it that on top of the usual limit.
        let docker = self.docker().clone().with_timeout(
            self.config().docker_timeout + std::time::Duration::from_secs(grace.unsigned_abs()),
        );
        docker.stop_container(id, Some(options)).await
    }

    /// A sandbox by ID: its inspection and labels; None when absent or not a sandbox.
    pub(crate) async fn inspect_sandbox(
        &self,
        id: &str,
    ) -> Result<Option<(ContainerInspectResponse, SandboxLabels)>, OpError> {
        self.inspect_by_cri_id(id, "pod sandbox", SandboxLabels::decode)
            .await
    }

    /// A Docker container by CRI ID, with the CRI labels `decode` reads from it; None when it is
    /// absent or not of that kind. Docker also resolves names; the CRI uses IDs (a unique prefix
    /// of an ID is accepted, as containerd does, but not a name).
    pub(crate) async fn inspect_by_cri_id<L>(
        &self,
        id: &str,
        kind: &str,
        decode: impl FnOnce(&HashMap<String, String>) -> Option<L>,
    ) -> Result<Option<(ContainerInspectResponse, L)>, OpError> {
        if id.is_empty() {
            return Err(OpError::InvalidArgument(format!("no {kind} ID given")));
        }
        let inspect = match self.docker().inspect_container(id, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(OpError::docker(format!("inspecting {kind} {id}"), e)),
        };
        if !inspect
            .id
            .as_deref()
            .is_some_and(|full| full.starts_with(id))
        {
            return Ok(None);
        }
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(decode);
        Ok(labels.map(|labels| (inspect, labels)))
    }

    /// The shim's containers (all states) of a sandbox, or of every sandbox.
    pub(crate) async fn list_docker(
        &self,
        kind: &str,
        selector: &HashMap<String, String>,
        sandbox_id: &str,
        only_running: bool,
    ) -> Result<Vec<ContainerSummary>, OpError> {
        let mut filters = convert::docker_label_filters(
            kind,
            selector,
            &[
                (labels::SANDBOX_ID, sandbox_id),
                (labels::INSTANCE, &self.config().instance),
            ],
        );
        if only_running {
            filters.insert("status".into(), vec!["running".into()]);
        }
        self.docker()
            .list_containers(Some(ListContainersOptions {
                all: !only_running,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| OpError::docker("listing containers", e))
    }

    /// Adds the instance label ([`crate::DockerShimConfig::instance`]) when one is configured.
    pub(crate) fn label_instance(&self, docker_labels: &mut HashMap<String, String>) {
        if !self.config().instance.is_empty() {
            docker_labels.insert(labels::INSTANCE.into(), self.config().instance.clone());
        }
    }

    async fn ensure_pause_image(&self) -> Result<(), OpError> {
        let image = &self.config().pod_infra_image;
        if self.inspect_image(image).await?.is_some() {
            return Ok(());
        }
        tracing::info!(image, "pulling the pod infra image");
        self.pull_image(api::PullImageRequest {
            image: Some(api::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .map(|_| ())
    }

    pub(crate) async fn run_pod_sandbox(
        &self,
        request: api::RunPodSandboxRequest,
    ) -> Result<String, OpError> {
        let config = request
            .config
            .ok_or_else(|| OpError::InvalidArgument("no sandbox config given".into()))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| OpError::InvalidArgument("no sandbox metadata given".into()))?;
        if metadata.name.is_empty() || metadata.uid.is_empty() || metadata.namespace.is_empty() {
            return Err(OpError::InvalidArgument(
                "sandbox metadata needs a name, a uid and a namespace".into(),
            ));
        }
        let linux = config.linux.clone().unwrap_or_default();
        let security = linux.security_context.clone().unwrap_or_default();
        let namespaces = security.namespace_options.clone().unwrap_or_default();
        let host_network = is_node(mode(Some(&namespaces), |n| n.network));
        let host_ipc = is_node(mode(Some(&namespaces), |n| n.ipc));
        let host_pid = is_node(mode(Some(&namespaces), |n| n.pid));

        // With CNI, fail before creating anything when there is no usable network config.
        let cni_network = if host_network {
            None
        } else {
            self.network_for_new_sandbox().await?
        };
        self.ensure_pause_image().await?;

        let sandbox_labels = SandboxLabels {
            metadata: metadata.clone(),
            created_at: convert::now_ns(),
            log_directory: config.log_directory.clone(),
            runtime_handler: request.runtime_handler.clone(),
            namespaces: namespaces.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        };
        let mut docker_labels = sandbox_labels
            .encode()
            .map_err(|e| OpError::InvalidArgument(e.to_string()))?;
        self.label_instance(&mut docker_labels);
        if let Some(cni) = &cni_network {
            docker_labels.insert(network::CNI_NETWORK_LABEL.into(), cni.name.clone());
        }
        // Host ports: Docker port bindings on Docker's bridge, the portmap capability with CNI.
        let bindings = if host_network || cni_network.is_some() {
            HashMap::new()
        } else {
            convert::port_bindings(&config.port_mappings)
        };
        // The deprecated path is what kubelets before 1.19 send.
        #[allow(deprecated)]
        let legacy_seccomp = &security.seccomp_profile_path;
        let security_opt: Vec<String> = convert::seccomp_option(
            security.seccomp.as_ref(),
            legacy_seccomp,
            security.privileged,
        )
        .map_err(OpError::InvalidArgument)?
        .into_iter()
        .collect();
        let host_config = HostConfig {
            network_mode: Some(
                match (host_network, &cni_network) {
                    (true, _) => "host",
                    (false, Some(_)) => "none", // CNI attaches the namespace once it exists
                    (false, None) => "bridge",
                }
                .into(),
            ),
            ipc_mode: Some(if host_ipc { "host" } else { "shareable" }.into()),
            pid_mode: host_pid.then(|| "host".into()),
            port_bindings: (!bindings.is_empty()).then(|| bindings.clone()),
            cgroup_parent: (!linux.cgroup_parent.is_empty()).then(|| linux.cgroup_parent.clone()),
            sysctls: (!linux.sysctls.is_empty()).then(|| linux.sysctls.clone()),
            // The pause container needs no privileges; where Docker's privileged mode cannot
            // start (see `capabilities`), it runs without it and the containers are emulated.
            privileged: Some(
                security.privileged && crate::capabilities::HostCapabilities::current().complete(),
            ),
            readonly_rootfs: Some(security.readonly_rootfs),
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            group_add: (!security.supplemental_groups.is_empty()).then(|| {
                security
                    .supplemental_groups
                    .iter()
                    .map(i64::to_string)
                    .collect()
            }),
            // The pause container says nothing worth keeping.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            runtime: (!request.runtime_handler.is_empty()).then(|| request.runtime_handler.clone()),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(self.config().pod_infra_image.clone()),
            // Docker refuses a hostname with the host's network (the host's name applies).
            hostname: (!host_network && !config.hostname.is_empty())
                .then(|| config.hostname.clone()),
            user: convert::docker_user(
                security.run_as_user.as_ref(),
                "",
                security.run_as_group.as_ref(),
            ),
            labels: Some(docker_labels),
            exposed_ports: (!bindings.is_empty()).then(|| bindings.keys().cloned().collect()),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = convert::sandbox_name(&metadata);
        let id = self.create_named(&name, body).await?;
        let mut started = self.start_sandbox(&id, config.dns_config.as_ref()).await;
        if started.is_ok()
            && let Some(cni) = &cni_network
        {
            started = self.setup_pod_network(&id, cni, &config).await.map(|_| ());
        }
        if let Err(e) = started {
            if let Err(cleanup) = self.remove_docker_container(&id).await {
                tracing::warn!(sandbox = %id, error = %cleanup, "removing a sandbox that failed to start");
            }
            return Err(e);
        }
        Ok(id)
    }

    async fn start_sandbox(&self, id: &str, dns: Option<&api::DnsConfig>) -> Result<(), OpError> {
        self.docker()
            .start_container(id, None)
            .await
            .map_err(|e| OpError::docker(format!("starting sandbox {id}"), e))?;
        let Some(dns) = dns
            .filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
        else {
            return Ok(()); // Docker's copy of the host's resolv.conf stays
        };
        // The file Docker keeps for the sandbox, which it also mounts into every container that
        // joins the sandbox's network: rewriting it is how dockershim applied the pod's DNS.
        let inspect = self
            .docker()
            .inspect_container(id, None)
            .await
            .map_err(|e| OpError::docker(format!("inspecting sandbox {id}"), e))?;
        let path = inspect.resolv_conf_path.unwrap_or_default();
        if path.is_empty() {
            return Err(OpError::FailedPrecondition(format!(
                "dockerd reports no resolv.conf for sandbox {id}"
            )));
        }
        tokio::fs::write(&path, convert::resolv_conf(dns))
            .await
            .map_err(|e| OpError::io(format!("writing {path}"), e))
    }

    /// Kills the sandbox's containers, DELs its CNI network (if it has one), then stops its
    /// pause container; a failed DEL is reported after the pause container is stopped anyway
    /// (as dockershim did: kubelet retries, and DEL tolerates the namespace being gone).
    /// Unknown IDs are fine.
    pub(crate) async fn stop_pod_sandbox(&self, id: &str) -> Result<(), OpError> {
        let Some((inspect, _)) = self.inspect_sandbox(id).await? else {
            return Ok(());
        };
        let id = inspect.id.as_deref().unwrap_or(id);
        let containers = self
            .list_docker(TYPE_CONTAINER, &HashMap::new(), id, true)
            .await?;
        let stops = containers
            .iter()
            .filter_map(|c| c.id.as_deref())
            .map(|cid| async move {
                match self.stop_docker_container(cid, 0).await {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(e) => Err(OpError::docker(format!("stopping container {cid}"), e)),
                }
            });
        futures::future::try_join_all(stops).await?;
        let network = self.teardown_pod_network(&inspect).await;
        if is_running(&inspect) {
            match self
                .stop_docker_container(id, i64::from(PAUSE_STOP_TIMEOUT))
                .await
            {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(OpError::docker(format!("stopping sandbox {id}"), e)),
            }
        }
        network
    }

    /// Removes the sandbox's containers and its pause container, releasing (and forgetting) a
    /// CNI network still attached. Unknown IDs are fine.
    pub(crate) async fn remove_pod_sandbox(&self, id: &str) -> Result<(), OpError> {
        let Some((inspect, _)) = self.inspect_sandbox(id).await? else {
            return Ok(());
        };
        let id = inspect.id.as_deref().unwrap_or(id);
        self.release_pod_network(&inspect).await;
        let containers = self
            .list_docker(TYPE_CONTAINER, &HashMap::new(), id, false)
            .await?;
        let removals = containers
            .iter()
            .filter_map(|c| c.id.as_deref())
            .map(|cid| async move {
                self.forget_logs(cid);
                self.remove_docker_container(cid).await
            });
        futures::future::try_join_all(removals).await?;
        self.remove_docker_container(id).await
    }

    pub(crate) async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, OpError> {
        let (inspect, labels) = self
            .inspect_sandbox(id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("pod sandbox {id} not found")))?;
        Ok(api::PodSandboxStatusResponse {
            status: Some(self.sandbox_status_of(&inspect, labels).await),
            info: HashMap::new(),
            containers_statuses: Vec::new(),
            timestamp: convert::now_ns(),
        })
    }

    pub(crate) async fn list_pod_sandbox(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<api::PodSandbox>, OpError> {
        let filter = filter.unwrap_or_default();
        let summaries = self
            .list_docker(TYPE_SANDBOX, &filter.label_selector, "", false)
            .await?;
        Ok(summaries
            .iter()
            .filter_map(sandbox_of_summary)
            .filter(|s| convert::sandbox_matches(&filter, s))
            .collect())
    }
}

impl DockerShim {
    /// The CRI status of an inspected pause container, with its CNI pod IPs when it has a CNI
    /// network.
    pub(crate) async fn sandbox_status_of(
        &self,
        inspect: &ContainerInspectResponse,
        labels: SandboxLabels,
    ) -> api::PodSandboxStatus {
        let cni_ips = if is_running(inspect) && !is_node(labels.namespaces.network) {
            self.cni_pod_ips(inspect).await
        } else {
            None
        };
        sandbox_status(inspect, labels, cni_ips)
    }
}

/// The CRI status of an inspected pause container. `cni_ips`: the pod IPs of a CNI sandbox
/// (None: its addresses on Docker's network).
pub(crate) fn sandbox_status(
    inspect: &ContainerInspectResponse,
    labels: SandboxLabels,
    cni_ips: Option<Vec<String>>,
) -> api::PodSandboxStatus {
    let running = is_running(inspect);
    let (ip, additional) = if running && !is_node(labels.namespaces.network) {
        match cni_ips {
            Some(ips) => {
                let mut ips = ips.into_iter();
                (ips.next().unwrap_or_default(), ips.collect())
            }
            None => sandbox_ips(inspect),
        }
    } else {
        (String::new(), Vec::new())
    };
    api::PodSandboxStatus {
        id: inspect.id.clone().unwrap_or_default(),
        metadata: Some(labels.metadata),
        state: sandbox_state(running) as i32,
        created_at: labels.created_at,
        network: Some(api::PodSandboxNetworkStatus {
            ip,
            additional_ips: additional.into_iter().map(|ip| api::PodIp { ip }).collect(),
        }),
        linux: Some(api::LinuxPodSandboxStatus {
            namespaces: Some(api::Namespace {
                options: Some(labels.namespaces),
            }),
        }),
        labels: labels.labels,
        annotations: labels.annotations,
        runtime_handler: labels.runtime_handler,
    }
}

fn sandbox_of_summary(summary: &ContainerSummary) -> Option<api::PodSandbox> {
    let labels = SandboxLabels::decode(summary.labels.as_ref()?)?;
    let running = convert::summary_state(
        summary
            .state
            .as_ref()
            .map(|s| s.to_string())
            .as_deref()
            .unwrap_or_default(),
    ) == api::ContainerState::ContainerRunning;
    Some(api::PodSandbox {
        id: summary.id.clone()?,
        metadata: Some(labels.metadata),
        state: sandbox_state(running) as i32,
        created_at: labels.created_at,
        labels: labels.labels,
        annotations: labels.annotations,
        runtime_handler: labels.runtime_handler,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerState, EndpointSettings, NetworkSettings};

    use super::*;

    #[test]
    fn sandbox_ip_comes_from_docker_networks() {
        let inspect = ContainerInspectResponse {
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(
                    "bridge".to_string(),
                    EndpointSettings {
                        ip_address: Some("10.154.174.2".into()),
                        global_ipv6_address: Some(String::new()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            id: Some("s1".into()),
            ..Default::default()
        };
        assert_eq!(sandbox_ips(&inspect), ("10.154.174.2".to_string(), vec![]));
        let status = sandbox_status(&inspect, SandboxLabels::default(), None);
        assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
        assert_eq!(
            status.network.map(|n| n.ip).unwrap_or_default(),
            "10.154.174.2"
        );
        // A CNI sandbox: the IPs of the CNI result.
        let cni = sandbox_status(
            &inspect,
            SandboxLabels::default(),
            Some(vec!["10.22.0.5".into(), "fd00::5".into()]),
        );
        let network = cni.network.unwrap_or_default();
        assert_eq!(network.ip, "10.22.0.5");
        assert_eq!(
            network.additional_ips,
            vec![api::PodIp {
                ip: "fd00::5".into()
            }]
        );
        // Host network: no IP of its own.
        let host = SandboxLabels {
            namespaces: api::NamespaceOption {
                network: api::NamespaceMode::Node as i32,
                ..Default::default()
            },
            ..Default::default()
        };
        let status = sandbox_status(&inspect, host, None);
        assert_eq!(status.network.map(|n| n.ip).unwrap_or_default(), "");
    }
}
