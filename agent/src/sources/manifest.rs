//! Decoding one static pod manifest as kubelet does: YAML or JSON, a single `v1` Pod, validated, then
//! given the static pod conventions (name suffixed with the node name, UID hashed from the content, the
//! node name and the file, `kubernetes.io/config.*` annotations).

use std::collections::HashSet;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use md5::{Digest, Md5};

use super::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION, defaults};

/// Why a manifest was rejected. The file is skipped and the other pods are left alone.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("not valid YAML or JSON: {0}")]
    Syntax(String),
    #[error("not a v1 Pod: {0}")]
    NotAPod(String),
    #[error("invalid pod: {0}")]
    Invalid(String),
}

/// Decodes and validates one manifest, returning the pod as the agent will run it.
pub fn decode(text: &str, file: &Path, node_name: &str) -> Result<Pod, ManifestError> {
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?
    };
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default();
    if kind != "Pod" || api_version != "v1" {
        return Err(ManifestError::NotAPod(format!(
            "apiVersion {api_version:?}, kind {kind:?} (want apiVersion \"v1\", kind \"Pod\")"
        )));
    }
    let mut pod: Pod = serde_path_to_error::deserialize(&value)
        .map_err(|e| ManifestError::Invalid(format!("field {}: {}", e.path(), e.inner())))?;
    validate(&pod)?;
    defaults::apply(&mut pod);
    apply_static_conventions(&mut pod, file, node_name);
    Ok(pod)
}

/// kubelet's `applyDefaults` for file sources.
fn apply_static_conventions(pod: &mut Pod, file: &Path, node_name: &str) {
    if pod.metadata.uid.as_deref().unwrap_or_default().is_empty() {
        let mut hasher = Md5::new();
        // serde_json writes struct fields in declaration order and maps sorted: a stable content hash.
        hasher.update(serde_json::to_vec(&*pod).unwrap_or_default());
        hasher.update(format!("host:{node_name}"));
        hasher.update(format!("file:{}", file.display()));
        pod.metadata.uid = Some(hex::encode(hasher.finalize()));
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    pod.metadata.name = Some(format!("{name}-{}", node_name.to_lowercase()));
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let annotations = pod
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), uid);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.into(), "file".into());
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.to_string());
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The subset of the API server's pod validation that protects the agent from unrunnable pods.
pub fn validate(pod: &Pod) -> Result<(), ManifestError> {
    let invalid = |m: String| Err(ManifestError::Invalid(m));
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return invalid("metadata.name: Required value".into());
    }
    if !is_dns_subdomain(name) {
        return invalid(format!(
            "metadata.name: Invalid value {name:?}: must be a lowercase RFC 1123 subdomain"
        ));
    }
    if let Some(ns) = pod.metadata.namespace.as_deref()
        && !ns.is_empty()
        && !is_dns_label(ns)
    {
        return invalid(format!("metadata.namespace: Invalid value {ns:?}"));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return invalid("spec: Required value".into());
    };
    if spec.containers.is_empty() {
        return invalid("spec.containers: Required value".into());
    }
    let mut names = HashSet::new();
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c));
    let app = spec.containers.iter().map(|c| ("containers", c));
    for (i, (list, c)) in init.chain(app).enumerate() {
        let field = format!("spec.{list}[{i}]");
        if !is_dns_label(&c.name) {
            return invalid(format!(
                "{field}.name: Invalid value {:?}: must be a lowercase RFC 1123 label",
                c.name
            ));
        }
        if !names.insert(c.name.as_str()) {
            return invalid(format!("{field}.name: Duplicate value {:?}", c.name));
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            return invalid(format!("{field}.image: Required value"));
        }
        if let Some(policy) = c.image_pull_policy.as_deref()
            && !matches!(policy, "Always" | "IfNotPresent" | "Never")
        {
            return invalid(format!(
                "{field}.imagePullPolicy: Unsupported value {policy:?}: supported values: \"Always\", \"IfNotPresent\", \"Never\""
            ));
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref()
        && !matches!(policy, "Always" | "OnFailure" | "Never")
    {
        return invalid(format!(
            "spec.restartPolicy: Unsupported value {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        ));
    }
    if let Some(grace) = spec.termination_grace_period_seconds
        && grace < 0
    {
        return invalid("spec.terminationGracePeriodSeconds: must be >= 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: kube-system\n\
spec:\n  containers:\n  - name: c\n    image: busybox:1.36\n    command: [sleep, '3600']\n";

    fn decode_ok(text: &str) -> Pod {
        decode(
            text,
            Path::new("/etc/kubernetes/manifests/web.yaml"),
            "Node-1",
        )
        .expect("valid")
    }

    #[test]
    fn yaml_manifest_gets_static_pod_conventions() {
        let pod = decode_ok(NGINX);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
        let uid = pod.metadata.uid.clone().expect("uid");
        assert_eq!(uid.len(), 32);
        let annotations = pod.metadata.annotations.expect("annotations");
        assert_eq!(annotations.get(CONFIG_HASH_ANNOTATION), Some(&uid));
        assert_eq!(
            annotations
                .get(CONFIG_SOURCE_ANNOTATION)
                .map(String::as_str),
            Some("file")
        );
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("Node-1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn json_manifest_is_accepted() {
        let pod = decode_ok(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"j"},"spec":{"containers":[{"name":"c","image":"busybox:1.36"}]}}"#,
        );
        assert_eq!(pod.metadata.name.as_deref(), Some("j-node-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn uid_is_stable_and_changes_with_content_node_and_file() {
        let a = decode_ok(NGINX).metadata.uid;
        assert_eq!(a, decode_ok(NGINX).metadata.uid);
        let edited = decode_ok(&NGINX.replace("3600", "3601")).metadata.uid;
        assert_ne!(a, edited);
        let other_node = decode(
            NGINX,
            Path::new("/etc/kubernetes/manifests/web.yaml"),
            "node-2",
        )
        .expect("valid")
        .metadata
        .uid;
        assert_ne!(a, other_node);
        let other_file = decode(
            NGINX,
            Path::new("/etc/kubernetes/manifests/web2.yaml"),
            "Node-1",
        )
        .expect("valid")
        .metadata
        .uid;
        assert_ne!(a, other_file);
    }

    #[test]
    fn explicit_uid_is_kept() {
        let pod = decode_ok(&NGINX.replace("  name: web\n", "  name: web\n  uid: abc\n"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("abc"));
    }

    #[test]
    fn rejects_bad_manifests_with_a_reason() {
        let cases = [
            ("key: [unclosed\n", "not valid YAML"),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
                "not a v1 Pod",
            ),
            ("kind: Pod\nmetadata: {name: s}\n", "not a v1 Pod"),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {containers: []}\n",
                "spec.containers: Required",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec: {containers: [{name: c, image: i}]}\n",
                "metadata.name",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {containers: [{name: c}]}\n",
                "spec.containers[0].image: Required",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {containers: [{name: c, image: i}, {name: c, image: i}]}\n",
                "Duplicate",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {restartPolicy: Sometimes, containers: [{name: c, image: i}]}\n",
                "spec.restartPolicy",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: s}\nspec: {containers: [{name: c, image: i, command: 5}]}\n",
                "field spec.containers[0].command",
            ),
        ];
        for (text, expected) in cases {
            let err = decode(text, Path::new("x.yaml"), "n")
                .expect_err(text)
                .to_string();
            assert!(
                err.contains(expected),
                "{text:?}: {err:?} does not mention {expected:?}"
            );
        }
    }
}
