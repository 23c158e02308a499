//! Pure mappings between Docker's view and the CRI's: timestamps, states and reasons, filters,
//! container names, users, bind mounts.

use std::collections::HashMap;

use bollard::models::{ContainerState, ContainerStateStatusEnum};
use k8s_cri::v1 as api;

use crate::error::OpError;

/// Nanoseconds since the epoch of one of Docker's RFC 3339 timestamps; 0 for Docker's zero time
/// (`0001-01-01T00:00:00Z`), for times before the epoch and for anything unparsable.
pub(crate) fn docker_time_ns(value: &str) -> i64 {
    value
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_nanosecond())
        .filter(|ns| *ns > 0)
        .and_then(|ns| i64::try_from(ns).ok())
        .unwrap_or(0)
}

/// The current time in ns since the epoch.
pub(crate) fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// A container's CRI state as far as Docker's state tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateInfo {
    pub state: api::ContainerState,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

/// Maps Docker's container state the way dockershim did: running (or paused / restarting) is
/// RUNNING; a container that finished, or never started but has an exit code (start failed), is
/// EXITED with reason `OOMKilled`, `Completed` (exit 0), `ContainerCannotRun` (start failed) or
/// `Error`; anything else is CREATED (or UNKNOWN while Docker is removing it).
pub(crate) fn state_info(state: Option<&ContainerState>) -> StateInfo {
    let Some(state) = state else {
        return StateInfo {
            state: api::ContainerState::ContainerUnknown,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        };
    };
    let started_at = state.started_at.as_deref().map_or(0, docker_time_ns);
    let finished_at = state.finished_at.as_deref().map_or(0, docker_time_ns);
    let exit_code = state
        .exit_code
        .and_then(|c| i32::try_from(c).ok())
        .unwrap_or(0);
    let error = state.error.clone().unwrap_or_default();
    let running = state.running.unwrap_or(false)
        || matches!(
            state.status,
            Some(
                ContainerStateStatusEnum::RUNNING
                    | ContainerStateStatusEnum::PAUSED
                    | ContainerStateStatusEnum::RESTARTING
            )
        );
    // dockerd stamps StartedAt when its start call returns and FinishedAt from the exit event:
    // a process that exits at once can seem to finish before it started.
    let finished_at = if finished_at != 0 && started_at != 0 {
        finished_at.max(started_at)
    } else {
        finished_at
    };
    let mut info = StateInfo {
        state: api::ContainerState::ContainerCreated,
        started_at,
        finished_at,
        exit_code,
        reason: String::new(),
        message: String::new(),
    };
    if running {
        info.state = api::ContainerState::ContainerRunning;
        info.finished_at = 0;
        info.exit_code = 0;
    } else if finished_at != 0
        || exit_code != 0
        || matches!(
            state.status,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
        )
    {
        info.state = api::ContainerState::ContainerExited;
        info.reason = if state.oom_killed.unwrap_or(false) {
            "OOMKilled"
        } else if exit_code == 0 {
            "Completed"
        } else if started_at == 0 && !error.is_empty() {
            "ContainerCannotRun"
        } else {
            "Error"
        }
        .to_string();
        info.message = error;
    } else if matches!(state.status, Some(ContainerStateStatusEnum::REMOVING)) {
        info.state = api::ContainerState::ContainerUnknown;
    }
    info
}

/// The CRI state of a container from `docker ps` (`created`, `running`, `exited`, ...). A
/// `created` container may really have failed to start: callers inspect those.
pub(crate) fn summary_state(state: &str) -> api::ContainerState {
    match state {
        "running" | "paused" | "restarting" => api::ContainerState::ContainerRunning,
        "exited" | "dead" => api::ContainerState::ContainerExited,
        "created" => api::ContainerState::ContainerCreated,
        _ => api::ContainerState::ContainerUnknown,
    }
}

/// True when every key of `selector` is in `labels` with the same value.
pub(crate) fn selector_matches(
    selector: &HashMap<String, String>,
    labels: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// CRI ID filters accept a unique prefix of the ID, as Docker and containerd do.
fn id_matches(filter: &str, id: &str) -> bool {
    filter.is_empty() || id.starts_with(filter)
}

pub(crate) fn container_matches(filter: &api::ContainerFilter, c: &api::Container) -> bool {
    id_matches(&filter.id, &c.id)
        && (filter.pod_sandbox_id.is_empty()
            || id_matches(&filter.pod_sandbox_id, &c.pod_sandbox_id))
        && filter.state.as_ref().is_none_or(|s| s.state == c.state)
        && selector_matches(&filter.label_selector, &c.labels)
}

pub(crate) fn sandbox_matches(filter: &api::PodSandboxFilter, s: &api::PodSandbox) -> bool {
    id_matches(&filter.id, &s.id)
        && filter.state.as_ref().is_none_or(|f| f.state == s.state)
        && selector_matches(&filter.label_selector, &s.labels)
}

/// Docker label filters (`label=k=v`) for a CRI label selector plus the shim's kind label:
/// the coarse selection is done by dockerd, the exact one by the `*_matches` functions.
pub(crate) fn docker_label_filters(
    kind: &str,
    selector: &HashMap<String, String>,
    extra: &[(&str, &str)],
) -> HashMap<String, Vec<String>> {
    let mut labels = vec![format!("{}={kind}", crate::labels::TYPE)];
    labels.extend(selector.iter().map(|(k, v)| format!("{k}={v}")));
    labels.extend(
        extra
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}")),
    );
    HashMap::from([("label".to_string(), labels)])
}

/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: anything else becomes `-`.
fn name_part(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// dockershim's name of a pause container: `k8s_POD_<pod>_<namespace>_<uid>_<attempt>`.
pub(crate) fn sandbox_name(m: &api::PodSandboxMetadata) -> String {
    format!(
        "k8s_POD_{}_{}_{}_{}",
        name_part(&m.name),
        name_part(&m.namespace),
        name_part(&m.uid),
        m.attempt
    )
}

/// dockershim's name of a workload container: `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
pub(crate) fn container_name(c: &api::ContainerMetadata, pod: &api::PodSandboxMetadata) -> String {
    format!(
        "k8s_{}_{}_{}_{}_{}",
        name_part(&c.name),
        name_part(&pod.name),
        name_part(&pod.namespace),
        name_part(&pod.uid),
        c.attempt
    )
}

/// Docker's `User`: `uid[:gid]` or `name[:gid]` (empty: the image's user).
pub(crate) fn docker_user(
    run_as_user: Option<&api::Int64Value>,
    run_as_username: &str,
    run_as_group: Option<&api::Int64Value>,
) -> Option<String> {
    let user = match (run_as_user, run_as_username) {
        (Some(uid), _) => uid.value.to_string(),
        (None, name) if !name.is_empty() => name.to_string(),
        // A group alone: Docker needs a user with it; the image's user is unknown here, so root
        // (what runc would run as) is the honest choice only when the image has no user. Leave
        // the group out rather than guess.
        _ => return None,
    };
    Some(match run_as_group {
        Some(gid) => format!("{user}:{}", gid.value),
        None => user,
    })
}

/// Why a CRI mount cannot be served through Docker binds, if it cannot: image volumes are not
/// implemented (Unimplemented, so that callers can tell a missing feature from a bad request)
/// and recursive read-only mounts are refused (the Status call reports the handler without that
/// feature, so kubelet refuses such pods before they get here).
pub(crate) fn unsupported_mount(mount: &api::Mount) -> Option<OpError> {
    if mount.image.as_ref().is_some_and(|i| !i.image.is_empty()) {
        return Some(OpError::Unimplemented(format!(
            "mount {}: image volumes are not supported by the docker runtime",
            mount.container_path
        )));
    }
    if mount.recursive_read_only {
        return Some(OpError::InvalidArgument(format!(
            "mount {}: recursive read-only mounts are not supported by the docker runtime",
            mount.container_path
        )));
    }
    None
}

/// A CRI mount as a Docker bind (`host:container[:ro][,propagation]`).
pub(crate) fn docker_bind(mount: &api::Mount) -> String {
    let mut options = Vec::new();
    if mount.readonly {
        options.push("ro");
    }
    if mount.selinux_relabel {
        options.push("Z");
    }
    match api::MountPropagation::try_from(mount.propagation) {
        Ok(api::MountPropagation::PropagationHostToContainer) => options.push("rslave"),
        Ok(api::MountPropagation::PropagationBidirectional) => options.push("rshared"),
        _ => options.push("rprivate"),
    }
    format!(
        "{}:{}:{}",
        mount.host_path,
        mount.container_path,
        options.join(",")
    )
}

/// Docker's propagation string of a mount point as the CRI's enum.
pub(crate) fn propagation(value: &str) -> api::MountPropagation {
    match value {
        "rslave" | "slave" => api::MountPropagation::PropagationHostToContainer,
        "rshared" | "shared" => api::MountPropagation::PropagationBidirectional,
        _ => api::MountPropagation::PropagationPrivate,
    }
}

/// The `resolv.conf` of a sandbox for a CRI DNS config.
pub(crate) fn resolv_conf(dns: &api::DnsConfig) -> String {
    let mut out = String::new();
    for server in &dns.servers {
        out.push_str("nameserver ");
        out.push_str(server);
        out.push('\n');
    }
    if !dns.searches.is_empty() {
        out.push_str("search ");
        out.push_str(&dns.searches.join(" "));
        out.push('\n');
    }
    if !dns.options.is_empty() {
        out.push_str("options ");
        out.push_str(&dns.options.join(" "));
        out.push('\n');
    }
    out
}

/// Docker's `[host_ip:]port/proto` key and bindings for the CRI port mappings (host ports only:
/// mappings without a host port need nothing with bridge networking).
pub(crate) fn port_bindings(
    mappings: &[api::PortMapping],
) -> HashMap<String, Option<Vec<bollard::models::PortBinding>>> {
    let mut out: HashMap<String, Option<Vec<bollard::models::PortBinding>>> = HashMap::new();
    for m in mappings {
        if m.host_port <= 0 || m.container_port <= 0 {
            continue;
        }
        let proto = match api::Protocol::try_from(m.protocol) {
            Ok(api::Protocol::Udp) => "udp",
            Ok(api::Protocol::Sctp) => "sctp",
            _ => "tcp",
        };
        let binding = bollard::models::PortBinding {
            host_ip: (!m.host_ip.is_empty()).then(|| m.host_ip.clone()),
            host_port: Some(m.host_port.to_string()),
        };
        out.entry(format!("{}/{proto}", m.container_port))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    out
}

/// The `seccomp=` security option of a CRI profile (None: Docker's default profile).
pub(crate) fn seccomp_option(
    profile: Option<&api::SecurityProfile>,
    legacy_path: &str,
    privileged: bool,
) -> Result<Option<String>, String> {
    use api::security_profile::ProfileType;
    if privileged {
        return Ok(Some("seccomp=unconfined".into()));
    }
    let localhost = |path: &str| {
        std::fs::read_to_string(path)
            .map(|json| Some(format!("seccomp={json}")))
            .map_err(|e| format!("reading seccomp profile {path}: {e}"))
    };
    if let Some(profile) = profile {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::Unconfined) => Ok(Some("seccomp=unconfined".into())),
            Ok(ProfileType::Localhost) => localhost(&profile.localhost_ref),
            _ => Ok(None),
        };
    }
    match legacy_path {
        // No profile at all is unconfined in CRI (as containerd and the old dockershim do).
        "" | "unconfined" => Ok(Some("seccomp=unconfined".into())),
        path if path.starts_with("localhost/") => localhost(&path["localhost/".len()..]),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: ContainerStateStatusEnum) -> ContainerState {
        ContainerState {
            status: Some(status),
            running: Some(status == ContainerStateStatusEnum::RUNNING),
            started_at: Some("0001-01-01T00:00:00Z".into()),
            finished_at: Some("0001-01-01T00:00:00Z".into()),
            exit_code: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(docker_time_ns("0001-01-01T00:00:00Z"), 0);
        assert_eq!(docker_time_ns("garbage"), 0);
        assert_eq!(docker_time_ns("1970-01-01T00:00:01.5Z"), 1_500_000_000);
        assert_eq!(
            docker_time_ns("2026-11-24T13:43:48.123456789Z"),
            1_795_527_828_123_456_789
        );
        assert_eq!(
            docker_time_ns("2026-11-24T14:43:48.123456789+01:00"),
            1_795_527_828_123_456_789
        );
    }

    #[test]
    fn created_running_exited() {
        let created = state_info(Some(&state(ContainerStateStatusEnum::CREATED)));
        assert_eq!(created.state, api::ContainerState::ContainerCreated);
        assert_eq!(created.reason, "");

        let mut running = state(ContainerStateStatusEnum::RUNNING);
        running.started_at = Some("2026-01-01T00:00:00Z".into());
        let info = state_info(Some(&running));
        assert_eq!(info.state, api::ContainerState::ContainerRunning);
        assert!(info.started_at > 0);

        let mut exited = running.clone();
        exited.status = Some(ContainerStateStatusEnum::EXITED);
        exited.running = Some(false);
        exited.finished_at = Some("2026-01-01T00:00:05Z".into());
        let info = state_info(Some(&exited));
        assert_eq!(info.state, api::ContainerState::ContainerExited);
        assert_eq!(info.reason, "Completed");
        assert_eq!(info.finished_at - info.started_at, 5_000_000_000);

        // A quick exit can be stamped before the start: never report finished < started.
        let mut quick = exited.clone();
        quick.finished_at = Some("2025-12-31T23:59:59.9Z".into());
        let info = state_info(Some(&quick));
        assert_eq!(info.finished_at, info.started_at);

        exited.exit_code = Some(3);
        let info = state_info(Some(&exited));
        assert_eq!((info.exit_code, info.reason.as_str()), (3, "Error"));

        exited.exit_code = Some(137);
        exited.oom_killed = Some(true);
        assert_eq!(state_info(Some(&exited)).reason, "OOMKilled");

        assert_eq!(
            state_info(None).state,
            api::ContainerState::ContainerUnknown
        );
    }

    #[test]
    fn start_failure_is_exited_cannot_run() {
        let mut failed = state(ContainerStateStatusEnum::CREATED);
        failed.exit_code = Some(128);
        failed.error = Some("exec: \"nope\": executable file not found".into());
        let info = state_info(Some(&failed));
        assert_eq!(info.state, api::ContainerState::ContainerExited);
        assert_eq!(info.reason, "ContainerCannotRun");
        assert!(info.message.contains("not found"));
    }

    #[test]
    fn summary_states() {
        assert_eq!(
            summary_state("running"),
            api::ContainerState::ContainerRunning
        );
        assert_eq!(
            summary_state("exited"),
            api::ContainerState::ContainerExited
        );
        assert_eq!(
            summary_state("created"),
            api::ContainerState::ContainerCreated
        );
        assert_eq!(
            summary_state("removing"),
            api::ContainerState::ContainerUnknown
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn container_filters() {
        let c = api::Container {
            id: "abcdef".into(),
            pod_sandbox_id: "123456".into(),
            state: api::ContainerState::ContainerRunning as i32,
            labels: labels(&[("app", "web"), ("tier", "front")]),
            ..Default::default()
        };
        let all = api::ContainerFilter::default();
        assert!(container_matches(&all, &c));
        let by = |f: api::ContainerFilter| container_matches(&f, &c);
        assert!(by(api::ContainerFilter {
            id: "abc".into(),
            ..Default::default()
        }));
        assert!(!by(api::ContainerFilter {
            id: "abd".into(),
            ..Default::default()
        }));
        assert!(by(api::ContainerFilter {
            pod_sandbox_id: "123456".into(),
            ..Default::default()
        }));
        assert!(!by(api::ContainerFilter {
            pod_sandbox_id: "999".into(),
            ..Default::default()
        }));
        assert!(!by(api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerExited as i32
            }),
            ..Default::default()
        }));
        assert!(by(api::ContainerFilter {
            label_selector: labels(&[("app", "web")]),
            ..Default::default()
        }));
        assert!(!by(api::ContainerFilter {
            label_selector: labels(&[("app", "web"), ("tier", "back")]),
            ..Default::default()
        }));
    }

    #[test]
    fn sandbox_filters() {
        let s = api::PodSandbox {
            id: "feed".into(),
            state: api::PodSandboxState::SandboxNotready as i32,
            labels: labels(&[("io.kubernetes.pod.uid", "u1")]),
            ..Default::default()
        };
        assert!(sandbox_matches(&api::PodSandboxFilter::default(), &s));
        assert!(!sandbox_matches(
            &api::PodSandboxFilter {
                state: Some(api::PodSandboxStateValue {
                    state: api::PodSandboxState::SandboxReady as i32
                }),
                ..Default::default()
            },
            &s
        ));
        assert!(sandbox_matches(
            &api::PodSandboxFilter {
                id: "fe".into(),
                label_selector: labels(&[("io.kubernetes.pod.uid", "u1")]),
                ..Default::default()
            },
            &s
        ));
    }

    #[test]
    fn docker_filters() {
        let f = docker_label_filters(
            "container",
            &labels(&[("app", "web")]),
            &[(crate::labels::SANDBOX_ID, "s1"), ("empty", "")],
        );
        let mut got = f.get("label").cloned().unwrap_or_default();
        got.sort();
        assert_eq!(
            got,
            vec![
                "app=web".to_string(),
                "io.mini-kubelet.cri.sandbox-id=s1".into(),
                "io.mini-kubelet.cri.type=container".into()
            ]
        );
    }

    #[test]
    fn names() {
        let pod = api::PodSandboxMetadata {
            name: "web".into(),
            uid: "8d2f-11".into(),
            namespace: "kube_system".into(),
            attempt: 2,
        };
        assert_eq!(sandbox_name(&pod), "k8s_POD_web_kube-system_8d2f-11_2");
        let c = api::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        };
        assert_eq!(
            container_name(&c, &pod),
            "k8s_app_web_kube-system_8d2f-11_0"
        );
    }

    #[test]
    fn users() {
        let v = |value| api::Int64Value { value };
        assert_eq!(docker_user(None, "", None), None);
        assert_eq!(
            docker_user(Some(&v(1000)), "", None).as_deref(),
            Some("1000")
        );
        assert_eq!(
            docker_user(Some(&v(1000)), "ignored", Some(&v(2000))).as_deref(),
            Some("1000:2000")
        );
        assert_eq!(
            docker_user(None, "app", Some(&v(3))).as_deref(),
            Some("app:3")
        );
        assert_eq!(docker_user(None, "", Some(&v(3))), None);
    }

    #[test]
    fn image_volumes_and_recursive_read_only_mounts_are_refused() {
        let plain = api::Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            readonly: true,
            ..Default::default()
        };
        assert!(unsupported_mount(&plain).is_none());
        let rro = api::Mount {
            recursive_read_only: true,
            ..plain.clone()
        };
        assert!(matches!(
            unsupported_mount(&rro),
            Some(OpError::InvalidArgument(m)) if m.contains("recursive read-only")
        ));
        let image = api::Mount {
            image: Some(api::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..plain
        };
        assert!(matches!(
            unsupported_mount(&image),
            Some(OpError::Unimplemented(m)) if m.contains("image volumes")
        ));
    }

    #[test]
    fn binds_and_propagation() {
        let mount = api::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: api::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        };
        assert_eq!(docker_bind(&mount), "/srv/data:/data:ro,rslave");
        let mount = api::Mount {
            propagation: api::MountPropagation::PropagationBidirectional as i32,
            readonly: false,
            ..mount
        };
        assert_eq!(docker_bind(&mount), "/srv/data:/data:rshared");
        assert_eq!(
            propagation("rslave"),
            api::MountPropagation::PropagationHostToContainer
        );
        assert_eq!(propagation(""), api::MountPropagation::PropagationPrivate);
    }

    #[test]
    fn dns() {
        let conf = resolv_conf(&api::DnsConfig {
            servers: vec!["10.0.0.10".into(), "1.1.1.1".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        });
        assert_eq!(
            conf,
            "nameserver 10.0.0.10\nnameserver 1.1.1.1\nsearch default.svc.cluster.local \
             svc.cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn ports() {
        let bindings = port_bindings(&[
            api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new(),
            },
            api::PortMapping {
                protocol: api::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            },
            api::PortMapping {
                protocol: api::Protocol::Tcp as i32,
                container_port: 9090,
                host_port: 0,
                host_ip: String::new(),
            },
        ]);
        assert_eq!(bindings.len(), 2);
        let udp = bindings
            .get("53/udp")
            .cloned()
            .flatten()
            .unwrap_or_default();
        assert_eq!(udp[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(udp[0].host_port.as_deref(), Some("5353"));
        assert!(bindings.contains_key("80/tcp"));
    }

    #[test]
    fn seccomp() {
        use api::security_profile::ProfileType;
        let profile = |t: ProfileType| api::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: String::new(),
        };
        assert_eq!(
            seccomp_option(None, "", false),
            Ok(Some("seccomp=unconfined".into())),
            "no profile is unconfined in CRI"
        );
        assert_eq!(
            seccomp_option(Some(&profile(ProfileType::RuntimeDefault)), "", false),
            Ok(None)
        );
        assert_eq!(
            seccomp_option(Some(&profile(ProfileType::Unconfined)), "", false),
            Ok(Some("seccomp=unconfined".into()))
        );
        assert_eq!(
            seccomp_option(None, "runtime/default", true),
            Ok(Some("seccomp=unconfined".into()))
        );
        assert!(seccomp_option(None, "localhost//nonexistent/profile.json", false).is_err());
    }
}
