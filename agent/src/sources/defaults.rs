//! The API server's defaulting of the pod fields the agent relies on. Pods from the API arrive
//! defaulted; static manifests do not, so kubelet applies the same defaults when it decodes them.

use k8s_openapi::api::core::v1::{Container, Pod};

pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;

/// kubelet's default pull policy: `Always` for `:latest` or an untagged image, else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last_segment.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Container) {
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        c.image_pull_policy = Some(default_pull_policy(image).to_string());
    }
    if c.termination_message_path.is_none() {
        c.termination_message_path = Some("/dev/termination-log".into());
    }
    if c.termination_message_policy.is_none() {
        c.termination_message_policy = Some("File".into());
    }
    for port in c.ports.iter_mut().flatten() {
        if port.protocol.is_none() {
            port.protocol = Some("TCP".into());
        }
    }
}

/// Applies the API server's defaults to a pod decoded from a manifest.
pub fn apply(pod: &mut Pod) {
    if pod
        .metadata
        .namespace
        .as_deref()
        .unwrap_or_default()
        .is_empty()
    {
        pod.metadata.namespace = Some("default".into());
    }
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds
        .get_or_insert(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.enable_service_links.get_or_insert(true);
    for c in spec.containers.iter_mut() {
        default_container(c);
    }
    for c in spec.init_containers.iter_mut().flatten() {
        default_container(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, policy) in [
            ("busybox", "Always"),
            ("busybox:latest", "Always"),
            ("busybox:1.36", "IfNotPresent"),
            ("localhost:5000/busybox", "Always"),
            ("localhost:5000/busybox:1.36", "IfNotPresent"),
            ("busybox@sha256:abcd", "IfNotPresent"),
            ("mini-kubelet.local/pause:3.10", "IfNotPresent"),
        ] {
            assert_eq!(default_pull_policy(image), policy, "{image}");
        }
    }

    #[test]
    fn defaults_are_applied_but_explicit_values_kept() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "a", "image": "busybox:1.36", "ports": [{"containerPort": 80}]},
                {"name": "b", "image": "busybox", "imagePullPolicy": "Never"}
            ]}
        }))
        .expect("pod");
        apply(&mut pod);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(
            spec.containers[0].image_pull_policy.as_deref(),
            Some("IfNotPresent")
        );
        assert_eq!(
            spec.containers[1].image_pull_policy.as_deref(),
            Some("Never")
        );
        let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
    }
}
