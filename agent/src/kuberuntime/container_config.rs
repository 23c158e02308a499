//! The CRI container config of one of a pod's containers.

use k8s_openapi::api::core::v1::{Container, Pod};
use mk_cri::api;

use super::{labels, security};

/// Expands `$(VAR)` references as the API does: `resolve` gives a variable's value (None leaves the
/// reference as written), `$$` escapes a `$`, anything else is kept.
pub fn expand_with(input: &str, mut resolve: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match resolve(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `$(VAR)` expansion over earlier variables (command, args, env values); unknown references stay.
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    expand_with(input, |name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// Everything a container's CRI config is built from.
pub struct ContainerInputs<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    /// The CRI attempt (restart count) of the new instance.
    pub attempt: u32,
    /// An init container (sidecars included).
    pub init: bool,
    pub sandbox_id: &'a str,
    pub sandbox_config: api::PodSandboxConfig,
    pub image_ref: &'a str,
    /// The image's user, for a container without runAsUser.
    pub image_user: security::ImageUser<'a>,
    pub node_name: &'a str,
    /// The resolved environment (see `envvars`).
    pub env: Vec<(String, String)>,
    /// Volume, /etc/hosts and termination-log mounts.
    pub mounts: Vec<api::Mount>,
    /// The node's memory capacity in bytes (for the OOM score of burstable containers).
    pub memory_capacity: i64,
}

/// Builds the CreateContainer request.
pub fn build(inputs: ContainerInputs<'_>) -> api::CreateContainerRequest {
    let ContainerInputs {
        pod,
        container,
        attempt,
        init,
        sandbox_id,
        sandbox_config,
        image_ref,
        image_user,
        node_name,
        env,
        mounts,
        memory_capacity,
    } = inputs;
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, &env)).collect()
    };
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    let annotations = [
        (labels::CONTAINER_HASH, labels::container_hash(container)),
        (labels::CONTAINER_RESTART_COUNT, attempt.to_string()),
        (
            labels::CONTAINER_TERMINATION_MESSAGE_PATH,
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        (
            labels::CONTAINER_TERMINATION_MESSAGE_POLICY,
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| "File".into()),
        ),
        (labels::POD_TERMINATION_GRACE_PERIOD, grace.to_string()),
        (labels::CONTAINER_IS_INIT, init.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let namespaces = sandbox_config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(api::ImageSpec {
            image: image_ref.to_string(),
            user_specified_image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: expand_all(&container.command),
        args: expand_all(&container.args),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .iter()
            .map(|(key, value)| api::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels: labels::container_labels(pod, &container.name, node_name),
        annotations,
        log_path: format!("{}/{}.log", container.name, attempt),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(security::container_resources(
                pod,
                container,
                memory_capacity,
            )),
            security_context: Some(security::container_security(
                pod, container, namespaces, image_user,
            )),
        }),
        ..Default::default()
    };
    api::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.to_string(),
        config: Some(config),
        sandbox_config: Some(sandbox_config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_the_api_rules() {
        let v = vars(&[("A", "1"), ("B", "two")]);
        for (input, expected) in [
            ("$(A)", "1"),
            ("x$(A)y$(B)", "x1ytwo"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("cost $5", "cost $5"),
            ("$(A", "$(A"),
            ("", ""),
        ] {
            assert_eq!(expand(input, &v), expected, "{input}");
        }
    }

    #[test]
    fn container_config_carries_command_env_logs_and_labels() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{
                "name": "c", "image": "busybox:1.36", "command": ["sh", "-c"], "args": ["echo $(GREETING)"],
                "workingDir": "/tmp", "env": [{"name": "WHO", "value": "world"}, {"name": "GREETING", "value": "hello $(WHO)"}]
            }]}
        }))
        .expect("pod");
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env = crate::envvars::resolve(&pod, c, &Default::default(), &Default::default())
            .expect("env");
        let req = build(ContainerInputs {
            pod: &pod,
            container: c,
            attempt: 3,
            init: false,
            sandbox_id: "sb",
            sandbox_config: api::PodSandboxConfig::default(),
            image_ref: "sha256:img",
            image_user: security::ImageUser::default(),
            node_name: "n1",
            env,
            mounts: vec![],
            memory_capacity: 1 << 30,
        });
        let config = req.config.expect("config");
        assert_eq!(config.command, vec!["sh", "-c"]);
        assert_eq!(config.args, vec!["echo hello world"]);
        assert_eq!(config.working_dir, "/tmp");
        assert_eq!(config.log_path, "c/3.log");
        assert_eq!(config.metadata.expect("meta").attempt, 3);
        assert_eq!(
            config
                .labels
                .get(labels::CONTAINER_NAME)
                .map(String::as_str),
            Some("c")
        );
        assert_eq!(
            config
                .annotations
                .get(labels::CONTAINER_RESTART_COUNT)
                .map(String::as_str),
            Some("3")
        );
        let env: Vec<_> = config
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(env, vec![("WHO", "world"), ("GREETING", "hello world")]);
    }
}
