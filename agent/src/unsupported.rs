//! Pod-spec fields the agent cannot honour. A field whose absence would weaken what the pod asked
//! for (user namespaces, SELinux, AppArmor, an unmasked /proc) makes the pod fail admission with
//! reason `UnsupportedPodSpec`, so nothing runs less isolated than requested; a field that only
//! changes convenience runs the pod with a `Warning` event naming it. Nothing is skipped silently.

use k8s_openapi::api::core::v1::{Container, Pod};

/// What the agent will not do for a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsupported {
    /// Fields that make the pod fail admission.
    pub fatal: Vec<String>,
    /// Fields that are ignored, with a warning event.
    pub ignored: Vec<String>,
}

fn containers(pod: &Pod) -> impl Iterator<Item = (String, &Container)> {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c));
    let app = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.containers[{i}]"), c));
    init.chain(app)
}

/// Lists the unsupported fields `pod` uses.
pub fn check(pod: &Pod) -> Unsupported {
    let mut out = Unsupported::default();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    if spec.host_users == Some(false) {
        out.fatal
            .push("spec.hostUsers: false (user namespaces are not supported)".into());
    }
    let pod_sc = spec.security_context.as_ref();
    if pod_sc.and_then(|s| s.se_linux_options.as_ref()).is_some() {
        out.fatal
            .push("spec.securityContext.seLinuxOptions (SELinux labels are not applied)".into());
    }
    if pod_sc
        .and_then(|s| s.app_armor_profile.as_ref())
        .is_some_and(|p| p.type_ != "Unconfined")
    {
        out.fatal.push(
            "spec.securityContext.appArmorProfile (AppArmor profiles are not applied)".into(),
        );
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        out.ignored
            .push("spec.ephemeralContainers (ephemeral containers are not started)".into());
    }
    if spec.set_hostname_as_fqdn == Some(true) {
        out.ignored
            .push("spec.setHostnameAsFQDN (the hostname stays the short name)".into());
    }
    for (path, c) in containers(pod) {
        let sc = c.security_context.as_ref();
        if sc.and_then(|s| s.se_linux_options.as_ref()).is_some() {
            out.fatal.push(format!(
                "{path}.securityContext.seLinuxOptions (SELinux labels are not applied)"
            ));
        }
        if sc
            .and_then(|s| s.app_armor_profile.as_ref())
            .is_some_and(|p| p.type_ != "Unconfined")
        {
            out.fatal.push(format!(
                "{path}.securityContext.appArmorProfile (AppArmor profiles are not applied)"
            ));
        }
        if sc
            .and_then(|s| s.proc_mount.as_deref())
            .is_some_and(|m| m == "Unmasked")
        {
            out.fatal.push(format!(
                "{path}.securityContext.procMount: Unmasked (not supported)"
            ));
        }
        if c.lifecycle
            .as_ref()
            .and_then(|l| l.stop_signal.as_ref())
            .is_some()
        {
            out.ignored.push(format!(
                "{path}.lifecycle.stopSignal (the image's STOPSIGNAL or SIGTERM is used)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = serde_json::json!([{"name": "c", "image": "i"}]);
        }
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": spec}))
            .expect("pod")
    }

    #[test]
    fn ordinary_pods_use_nothing_unsupported() {
        let p = pod(
            serde_json::json!({"securityContext": {"runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}}}),
        );
        assert_eq!(check(&p), Unsupported::default());
    }

    #[test]
    fn weaker_isolation_is_fatal_conveniences_are_warnings() {
        let p = pod(serde_json::json!({
            "hostUsers": false,
            "setHostnameAsFQDN": true,
            "containers": [{"name": "c", "image": "i",
                "securityContext": {"seLinuxOptions": {"level": "s0:c1"}, "procMount": "Unmasked"},
                "lifecycle": {"stopSignal": "SIGUSR1"}}]
        }));
        let u = check(&p);
        assert_eq!(u.fatal.len(), 3, "{u:?}");
        assert!(u.fatal[0].starts_with("spec.hostUsers"));
        assert!(
            u.fatal
                .iter()
                .any(|f| f.starts_with("spec.containers[0].securityContext.seLinuxOptions"))
        );
        assert!(
            u.fatal
                .iter()
                .any(|f| f.starts_with("spec.containers[0].securityContext.procMount"))
        );
        assert_eq!(u.ignored.len(), 2, "{u:?}");
        let unconfined = pod(
            serde_json::json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
        );
        assert!(
            check(&unconfined).fatal.is_empty(),
            "Unconfined asks for nothing the agent would skip"
        );
    }
}
