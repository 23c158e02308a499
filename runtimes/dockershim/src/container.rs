//! Workload containers: create, start, stop, remove, status, list, resources, log reopening.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, ContainerUpdateBody,
    DeviceMapping, HostConfig, HostConfigLogConfig,
};
use k8s_cri::v1 as api;

use crate::capabilities::{self, HostCapabilities};
use crate::error::{OpError, is_not_found};
use crate::labels::{ContainerLabels, TYPE_CONTAINER};
use crate::sandbox::{is_node, is_running};
use crate::{DockerShim, convert, image};

/// The `oom_score_adj` sent to Docker: negative values become 0 (not sent) unless allowed.
pub(crate) fn oom_score_adj(value: i64, allow_negative: bool) -> Option<i64> {
    let value = if allow_negative { value } else { value.max(0) };
    (value != 0).then_some(value)
}

/// Docker's resource fields for CRI resources (zero = unset). Without a swap limit, the memory
/// limit is also the memory+swap limit: no swap, as kubelet expects on a node without swap.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Resources {
    pub cpu_shares: Option<i64>,
    pub cpu_period: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
}

pub(crate) fn resources(r: &api::LinuxContainerResources) -> Resources {
    let positive = |v: i64| (v > 0).then_some(v);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let memory = positive(r.memory_limit_in_bytes);
    Resources {
        cpu_shares: positive(r.cpu_shares),
        cpu_period: positive(r.cpu_period),
        cpu_quota: positive(r.cpu_quota),
        memory,
        memory_swap: memory.map(|m| {
            if r.memory_swap_limit_in_bytes > 0 {
                r.memory_swap_limit_in_bytes.max(m)
            } else {
                m
            }
        }),
        cpuset_cpus: text(&r.cpuset_cpus),
        cpuset_mems: text(&r.cpuset_mems),
    }
}

/// The CRI resources recorded in a container's host config.
fn resources_of(host: Option<&HostConfig>) -> Option<api::ContainerResources> {
    let host = host?;
    Some(api::ContainerResources {
        linux: Some(api::LinuxContainerResources {
            cpu_period: host.cpu_period.unwrap_or(0),
            cpu_quota: host.cpu_quota.unwrap_or(0),
            cpu_shares: host.cpu_shares.unwrap_or(0),
            memory_limit_in_bytes: host.memory.unwrap_or(0),
            oom_score_adj: host.oom_score_adj.unwrap_or(0),
            cpuset_cpus: host.cpuset_cpus.clone().unwrap_or_default(),
            cpuset_mems: host.cpuset_mems.clone().unwrap_or_default(),
            memory_swap_limit_in_bytes: host.memory_swap.filter(|s| *s > 0).unwrap_or(0),
            ..Default::default()
        }),
        windows: None,
    })
}

/// The Docker namespace modes (network, IPC, PID) of a container in a sandbox.
pub(crate) fn namespace_modes(
    sandbox_id: &str,
    sandbox: &api::NamespaceOption,
    container: &api::NamespaceOption,
) -> (String, String, Option<String>) {
    let join = format!("container:{sandbox_id}");
    let network = if is_node(sandbox.network) {
        "host".to_string()
    } else {
        join.clone()
    };
    let ipc = if is_node(container.ipc) || is_node(sandbox.ipc) {
        "host".to_string()
    } else {
        join.clone()
    };
    let pid = match api::NamespaceMode::try_from(container.pid) {
        Ok(api::NamespaceMode::Node) => Some("host".to_string()),
        Ok(api::NamespaceMode::Pod) => Some(join),
        Ok(api::NamespaceMode::Target) if !container.target_id.is_empty() => {
            Some(format!("container:{}", container.target_id))
        }
        _ => None,
    };
    (network, ipc, pid)
}

/// How long ContainerStatus of an exited container waits for its last output to be copied.
const LOG_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl DockerShim {
    /// A workload container by ID: its inspection and labels; None when absent or not one of the
    /// shim's containers.
    pub(crate) async fn inspect_cri_container(
        &self,
        id: &str,
    ) -> Result<Option<(ContainerInspectResponse, ContainerLabels)>, OpError> {
        self.inspect_by_cri_id(id, "container", ContainerLabels::decode)
            .await
    }

    async fn require_container(
        &self,
        id: &str,
    ) -> Result<(ContainerInspectResponse, ContainerLabels), OpError> {
        self.inspect_cri_container(id)
            .await?
            .ok_or_else(|| OpError::NotFound(format!("container {id} not found")))
    }

    pub(crate) async fn create_container(
        &self,
        request: api::CreateContainerRequest,
    ) -> Result<String, OpError> {
        let config = request
            .config
            .ok_or_else(|| OpError::InvalidArgument("no container config given".into()))?;
        let metadata = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| OpError::InvalidArgument("no container metadata name given".into()))?;
        let image_spec = config.image.clone().unwrap_or_default();
        if image_spec.image.is_empty() {
            return Err(OpError::InvalidArgument("no container image given".into()));
        }
        let (sandbox_inspect, sandbox) = self
            .inspect_sandbox(&request.pod_sandbox_id)
            .await?
            .ok_or_else(|| {
                OpError::NotFound(format!("pod sandbox {} not found", request.pod_sandbox_id))
            })?;
        let sandbox_id = sandbox_inspect
            .id
            .clone()
            .unwrap_or_else(|| request.pod_sandbox_id.clone());
        if !is_running(&sandbox_inspect) {
            return Err(OpError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not ready"
            )));
        }
        let log_path = if config.log_path.is_empty() || sandbox.log_directory.is_empty() {
            String::new()
        } else {
            Path::new(&sandbox.log_directory)
                .join(&config.log_path)
                .to_string_lossy()
                .into_owned()
        };
        let linux = config.linux.clone().unwrap_or_default();
        let security = linux.security_context.clone().unwrap_or_default();
        let namespaces = security
            .namespace_options
            .clone()
            .unwrap_or_else(|| sandbox.namespaces.clone());
        let (network_mode, ipc_mode, pid_mode) =
            namespace_modes(&sandbox_id, &sandbox.namespaces, &namespaces);
        let cgroup_parent = request
            .sandbox_config
            .as_ref()
            .and_then(|c| c.linux.as_ref())
            .map(|l| l.cgroup_parent.clone())
            .filter(|p| !p.is_empty())
            .or_else(|| {
                sandbox_inspect
                    .host_config
                    .as_ref()
                    .and_then(|h| h.cgroup_parent.clone())
            })
            .filter(|p| !p.is_empty());
        if let Some(refused) = config.mounts.iter().find_map(convert::unsupported_mount) {
            return Err(refused);
        }
        let mut binds: Vec<String> = config.mounts.iter().map(convert::docker_bind).collect();
        // Containers joining the sandbox's network share its resolv.conf (the pod's DNS config);
        // with the host's network they do not join it, so it is mounted for them.
        if is_node(sandbox.namespaces.network)
            && !config
                .mounts
                .iter()
                .any(|m| m.container_path == "/etc/resolv.conf")
            && let Some(resolv) = sandbox_inspect
                .resolv_conf_path
                .as_deref()
                .filter(|p| !p.is_empty())
        {
            binds.push(format!("{resolv}:/etc/resolv.conf"));
        }
        let res = resources(&linux.resources.clone().unwrap_or_default());
        let oom = linux.resources.as_ref().and_then(|r| {
            oom_score_adj(r.oom_score_adj, self.config().allow_negative_oom_score_adj)
        });

        if security.run_as_group.is_some()
            && security.run_as_user.is_none()
            && security.run_as_username.is_empty()
        {
            return Err(OpError::InvalidArgument(
                "RunAsGroup is set without RunAsUser or RunAsUsername".into(),
            ));
        }
        // The deprecated path is what kubelets before 1.19 send.
        #[allow(deprecated)]
        let legacy_seccomp = &security.seccomp_profile_path;
        let mut security_opt: Vec<String> = convert::seccomp_option(
            security.seccomp.as_ref(),
            legacy_seccomp,
            security.privileged,
        )
        .map_err(OpError::InvalidArgument)?
        .into_iter()
        .collect();
        if security.no_new_privs {
            security_opt.push("no-new-privileges".into());
        }
        let caps = security.capabilities.clone().unwrap_or_default();
        let privileged = security.privileged;
        let privileges = capabilities::privileges(
            privileged,
            &caps.add_capabilities,
            &caps.drop_capabilities,
            HostCapabilities::current(),
            capabilities::newest_known_capability(&self.api_version()),
        );
        let mut devices: Vec<DeviceMapping> = config
            .devices
            .iter()
            .map(|d| DeviceMapping {
                path_on_host: Some(d.host_path.clone()),
                path_in_container: Some(d.container_path.clone()),
                cgroup_permissions: Some(if d.permissions.is_empty() {
                    "rwm".to_string()
                } else {
                    d.permissions.clone()
                }),
            })
            .collect();
        if privileges.emulated {
            devices.extend(capabilities::host_devices());
        }
        // Privileged: no masked or read-only paths (Docker's privileged mode drops them itself).
        let masked_paths = if privileged {
            privileges.emulated.then(Vec::new)
        } else {
            (!security.masked_paths.is_empty()).then(|| security.masked_paths.clone())
        };
        let readonly_paths = if privileged {
            privileges.emulated.then(Vec::new)
        } else {
            (!security.readonly_paths.is_empty()).then(|| security.readonly_paths.clone())
        };
        let host_config = HostConfig {
            network_mode: Some(network_mode),
            ipc_mode: Some(ipc_mode),
            pid_mode,
            cgroup_parent,
            binds: (!binds.is_empty()).then_some(binds),
            devices: (!devices.is_empty()).then_some(devices),
            device_cgroup_rules: privileges
                .emulated
                .then(|| vec![capabilities::ALL_DEVICES_RULE.to_string()]),
            privileged: Some(privileges.docker_privileged),
            cap_add: privileges.cap_add,
            cap_drop: privileges.cap_drop,
            readonly_rootfs: Some(security.readonly_rootfs),
            security_opt: (!security_opt.is_empty()).then_some(security_opt),
            masked_paths,
            readonly_paths,
            group_add: (!security.supplemental_groups.is_empty()).then(|| {
                security
                    .supplemental_groups
                    .iter()
                    .map(i64::to_string)
                    .collect()
            }),
            oom_score_adj: oom,
            cpu_shares: res.cpu_shares,
            cpu_period: res.cpu_period,
            cpu_quota: res.cpu_quota,
            memory: res.memory,
            memory_swap: res.memory_swap,
            cpuset_cpus: res.cpuset_cpus,
            cpuset_mems: res.cpuset_mems,
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(HashMap::from([
                    (
                        "max-size".to_string(),
                        self.config().docker_log_max_size.clone(),
                    ),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            runtime: (!sandbox.runtime_handler.is_empty()).then(|| sandbox.runtime_handler.clone()),
            ..Default::default()
        };
        let mut labels = ContainerLabels {
            metadata: metadata.clone(),
            sandbox_id: sandbox_id.clone(),
            created_at: convert::now_ns(),
            log_path,
            image: image_spec.image.clone(),
            user_specified_image: image_spec.user_specified_image.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
        }
        .encode()
        .map_err(|e| OpError::InvalidArgument(e.to_string()))?;
        self.label_instance(&mut labels);
        let body = ContainerCreateBody {
            image: Some(image_spec.image.clone()),
            entrypoint: (!config.command.is_empty()).then(|| config.command.clone()),
            cmd: (!config.args.is_empty()).then(|| config.args.clone()),
            env: (!config.envs.is_empty()).then(|| {
                config
                    .envs
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value))
                    .collect()
            }),
            working_dir: (!config.working_dir.is_empty()).then(|| config.working_dir.clone()),
            user: convert::docker_user(
                security.run_as_user.as_ref(),
                &security.run_as_username,
                security.run_as_group.as_ref(),
            ),
            tty: Some(config.tty),
            open_stdin: Some(config.stdin),
            stdin_once: Some(config.stdin_once),
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = convert::container_name(&metadata, &sandbox.metadata);
        self.create_named(&name, body).await.map_err(|e| match e {
            OpError::Docker { context, source } if is_not_found(&source) => {
                OpError::NotFound(format!(
                    "{context}: image {} not present: {source}",
                    image_spec.image
                ))
            }
            other => other,
        })
    }

    pub(crate) async fn start_container(&self, id: &str) -> Result<(), OpError> {
        let (_, labels) = self.require_container(id).await?;
        if !labels.log_path.is_empty() {
            // As containerd: no start without a log file to write to.
            crate::logs::create_log_file(Path::new(&labels.log_path))?;
        }
        self.docker()
            .start_container(id, None)
            .await
            .map_err(|e| OpError::docker(format!("starting container {id}"), e))?;
        if !labels.log_path.is_empty() {
            self.follow_logs(id, Path::new(&labels.log_path), None)?;
        }
        Ok(())
    }

    /// Stops a container with `timeout` seconds of grace; a stopped container or an unknown ID is
    /// fine (CRI requires StopContainer to be idempotent).
    pub(crate) async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), OpError> {
        let Some((inspect, _)) = self.inspect_cri_container(id).await? else {
            return Ok(());
        };
        if !is_running(&inspect) {
            return Ok(());
        }
        match self.stop_docker_container(id, timeout).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(OpError::docker(format!("stopping container {id}"), e)),
        }
    }

    /// Removes a container (killing it if it runs); unknown IDs are fine.
    pub(crate) async fn remove_container(&self, id: &str) -> Result<(), OpError> {
        let Some((inspect, _)) = self.inspect_cri_container(id).await? else {
            return Ok(());
        };
        let full = inspect.id.unwrap_or_else(|| id.to_string());
        self.forget_logs(&full);
        self.remove_docker_container(&full).await
    }

    pub(crate) async fn container_status(
        &self,
        id: &str,
    ) -> Result<api::ContainerStatusResponse, OpError> {
        let (inspect, labels) = self.require_container(id).await?;
        let image = match inspect.image.as_deref() {
            Some(image_id) if !image_id.is_empty() => self.inspect_image(image_id).await?,
            _ => None,
        };
        // As containerd does, an exited container is reported once its output is in the CRI
        // log: whoever reads the log after seeing the exit finds all of it.
        if !is_running(&inspect)
            && let Some(docker_id) = inspect.id.as_deref()
        {
            self.inner
                .logs
                .wait_drained(docker_id, LOG_DRAIN_WAIT)
                .await;
        }
        Ok(api::ContainerStatusResponse {
            status: Some(container_status(&inspect, labels, image.as_ref())),
            info: HashMap::new(),
        })
    }

    pub(crate) async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<api::Container>, OpError> {
        let filter = filter.unwrap_or_default();
        // A full sandbox ID can be matched by dockerd; a prefix only here.
        let sandbox = if filter.pod_sandbox_id.len() == 64 {
            filter.pod_sandbox_id.as_str()
        } else {
            ""
        };
        let only_running = filter
            .state
            .as_ref()
            .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32);
        let summaries = self
            .list_docker(
                TYPE_CONTAINER,
                &filter.label_selector,
                sandbox,
                only_running,
            )
            .await?;
        let mut out = Vec::with_capacity(summaries.len());
        for summary in &summaries {
            let Some(mut container) = container_of_summary(summary) else {
                continue;
            };
            if container.state == api::ContainerState::ContainerCreated as i32 {
                // `created` is also what Docker says of a container whose start failed.
                if let Some((inspect, _)) = self.inspect_cri_container(&container.id).await? {
                    container.state = convert::state_info(inspect.state.as_ref()).state as i32;
                }
            }
            if convert::container_matches(&filter, &container) {
                out.push(container);
            }
        }
        Ok(out)
    }

    pub(crate) async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<api::LinuxContainerResources>,
    ) -> Result<(), OpError> {
        self.require_container(id).await?;
        let Some(linux) = linux else {
            return Ok(());
        };
        let res = resources(&linux);
        let update = ContainerUpdateBody {
            cpu_shares: res.cpu_shares,
            cpu_period: res.cpu_period,
            cpu_quota: res.cpu_quota,
            memory: res.memory,
            memory_swap: res.memory_swap,
            cpuset_cpus: res.cpuset_cpus,
            cpuset_mems: res.cpuset_mems,
            ..Default::default()
        };
        self.docker()
            .update_container(id, update)
            .await
            .map_err(|e| OpError::docker(format!("updating container {id}"), e))
    }

    pub(crate) async fn reopen_container_log(&self, id: &str) -> Result<(), OpError> {
        let (inspect, labels) = self.require_container(id).await?;
        if !is_running(&inspect) {
            return Err(OpError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        if labels.log_path.is_empty() {
            return Ok(());
        }
        self.reopen_log(
            inspect.id.as_deref().unwrap_or(id),
            Path::new(&labels.log_path),
        )
    }
}

/// The CRI status of an inspected container (with its image's inspection when still present).
pub(crate) fn container_status(
    inspect: &ContainerInspectResponse,
    labels: ContainerLabels,
    image: Option<&bollard::models::ImageInspect>,
) -> api::ContainerStatus {
    let state = convert::state_info(inspect.state.as_ref());
    let image_id = inspect.image.clone().unwrap_or_default();
    // As containerd: an image given by ID is reported by its first tag when it has one.
    let shown_image = if image::is_image_id(&labels.image) || labels.image.is_empty() {
        image
            .and_then(|i| i.repo_tags.as_ref())
            .and_then(|t| t.first().cloned())
            .unwrap_or_else(|| labels.image.clone())
    } else {
        labels.image.clone()
    };
    let mounts = inspect
        .mounts
        .iter()
        .flatten()
        .filter(|m| m.typ.as_deref() == Some("bind"))
        .map(|m| api::Mount {
            container_path: m.destination.clone().unwrap_or_default(),
            host_path: m.source.clone().unwrap_or_default(),
            readonly: !m.rw.unwrap_or(true),
            propagation: convert::propagation(m.propagation.as_deref().unwrap_or_default()) as i32,
            ..Default::default()
        })
        .collect();
    api::ContainerStatus {
        id: inspect.id.clone().unwrap_or_default(),
        metadata: Some(labels.metadata),
        state: state.state as i32,
        created_at: labels.created_at,
        started_at: state.started_at,
        finished_at: state.finished_at,
        exit_code: state.exit_code,
        image: Some(api::ImageSpec {
            image: shown_image,
            user_specified_image: labels.user_specified_image,
            ..Default::default()
        }),
        image_ref: image.map_or_else(|| image_id.clone(), image::image_ref),
        reason: state.reason,
        message: state.message,
        labels: labels.labels,
        annotations: labels.annotations,
        mounts,
        log_path: labels.log_path,
        resources: resources_of(inspect.host_config.as_ref()),
        image_id,
        user: None,
    }
}

fn container_of_summary(summary: &ContainerSummary) -> Option<api::Container> {
    let labels = ContainerLabels::decode(summary.labels.as_ref()?)?;
    let state = summary
        .state
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let image_id = summary.image_id.clone().unwrap_or_default();
    Some(api::Container {
        id: summary.id.clone()?,
        pod_sandbox_id: labels.sandbox_id,
        metadata: Some(labels.metadata),
        image: Some(api::ImageSpec {
            image: labels.image,
            user_specified_image: labels.user_specified_image,
            ..Default::default()
        }),
        image_ref: image_id.clone(),
        state: convert::summary_state(&state) as i32,
        created_at: labels.created_at,
        labels: labels.labels,
        annotations: labels.annotations,
        image_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_scores() {
        assert_eq!(oom_score_adj(1000, false), Some(1000));
        assert_eq!(oom_score_adj(-997, false), None);
        assert_eq!(oom_score_adj(-997, true), Some(-997));
        assert_eq!(oom_score_adj(0, true), None);
    }

    #[test]
    fn resource_mapping() {
        let r = resources(&api::LinuxContainerResources {
            cpu_shares: 102,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            ..Default::default()
        });
        assert_eq!(
            r,
            Resources {
                cpu_shares: Some(102),
                cpu_period: Some(100_000),
                cpu_quota: Some(50_000),
                memory: Some(64 << 20),
                memory_swap: Some(64 << 20),
                cpuset_cpus: Some("0".into()),
                cpuset_mems: None,
            }
        );
        let with_swap = resources(&api::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            ..Default::default()
        });
        assert_eq!(with_swap.memory_swap, Some(128 << 20));
        assert_eq!(
            resources(&api::LinuxContainerResources::default()),
            Resources::default()
        );
    }

    #[test]
    fn namespaces_of_containers() {
        let pod = api::NamespaceOption {
            network: api::NamespaceMode::Pod as i32,
            pid: api::NamespaceMode::Container as i32,
            ipc: api::NamespaceMode::Pod as i32,
            ..Default::default()
        };
        assert_eq!(
            namespace_modes("s", &pod, &pod),
            ("container:s".into(), "container:s".into(), None)
        );
        let shared_pid = api::NamespaceOption {
            pid: api::NamespaceMode::Pod as i32,
            ..pod.clone()
        };
        assert_eq!(
            namespace_modes("s", &pod, &shared_pid).2.as_deref(),
            Some("container:s")
        );
        let target = api::NamespaceOption {
            pid: api::NamespaceMode::Target as i32,
            target_id: "t".into(),
            ..pod.clone()
        };
        assert_eq!(
            namespace_modes("s", &pod, &target).2.as_deref(),
            Some("container:t")
        );
        let host = api::NamespaceOption {
            network: api::NamespaceMode::Node as i32,
            pid: api::NamespaceMode::Node as i32,
            ipc: api::NamespaceMode::Node as i32,
            ..Default::default()
        };
        assert_eq!(
            namespace_modes("s", &host, &host),
            ("host".into(), "host".into(), Some("host".into()))
        );
    }
}
