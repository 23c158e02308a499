//! Kind-specific behaviour: decoding through the typed `k8s-openapi` structs (which drops
//! unknown fields, as the real server does), defaulting, admission and validation.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::resources::{Behaviour, ResourceDef};
use crate::selector::is_label_value;

fn fmt_ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", fmt_ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = fmt_ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => fmt_ignored_path(parent),
    }
}

enum DecodeError {
    Missing { path: String, field: String },
    Other { path: String, message: String },
}

fn roundtrip<T: DeserializeOwned + Serialize>(
    v: Value,
) -> Result<(Value, Vec<String>), DecodeError> {
    let mut unknown = Vec::new();
    let mut cb = |p: serde_ignored::Path<'_>| unknown.push(fmt_ignored_path(&p));
    let typed: Result<T, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(v, &mut cb));
    let typed = typed.map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        match message
            .strip_prefix("missing field `")
            .and_then(|r| r.split_once('`'))
        {
            Some((field, _)) => DecodeError::Missing {
                path,
                field: field.to_string(),
            },
            None => DecodeError::Other { path, message },
        }
    })?;
    let out = serde_json::to_value(&typed).map_err(|e| DecodeError::Other {
        path: String::new(),
        message: e.to_string(),
    })?;
    Ok((out, unknown))
}

/// Decode an object through its typed form and re-encode it. Returns the normalized object
/// and the paths of unknown fields (which are dropped).
pub fn normalize(res: &ResourceDef, obj: Value) -> Result<(Value, Vec<String>), ApiError> {
    use k8s_openapi::api::{certificates, coordination, core::v1 as core, events};
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let r = match res.behaviour {
        Behaviour::Pod => roundtrip::<core::Pod>(obj),
        Behaviour::Node => roundtrip::<core::Node>(obj),
        Behaviour::Namespace => roundtrip::<core::Namespace>(obj),
        Behaviour::ConfigMap => roundtrip::<core::ConfigMap>(obj),
        Behaviour::Secret => roundtrip::<core::Secret>(obj),
        Behaviour::ServiceAccount => roundtrip::<core::ServiceAccount>(obj),
        Behaviour::CoreEvent => roundtrip::<core::Event>(obj),
        Behaviour::Event => roundtrip::<events::v1::Event>(obj),
        Behaviour::Service => roundtrip::<core::Service>(obj),
        Behaviour::Endpoints => roundtrip::<core::Endpoints>(obj),
        Behaviour::Lease => roundtrip::<coordination::v1::Lease>(obj),
        Behaviour::CertificateSigningRequest => {
            roundtrip::<certificates::v1::CertificateSigningRequest>(obj)
        }
    };
    r.map_err(|e| match e {
        DecodeError::Missing { path, field } => {
            let full = if path == "." || path.is_empty() {
                field
            } else {
                format!("{path}.{field}")
            };
            ApiError::invalid(res.group, res.kind, &name, vec![Cause::required(full, "")])
        }
        DecodeError::Other { path, message } => ApiError::bad_request(format!(
            "{kind} in version {v:?} cannot be handled as a {kind}: {path}: {message}",
            kind = res.kind,
            v = res.version
        )),
    })
}

/// Decode a `TokenRequest` body (for the serviceaccounts/token subresource).
pub fn normalize_token_request(obj: Value) -> Result<Value, ApiError> {
    roundtrip::<k8s_openapi::api::authentication::v1::TokenRequest>(obj)
        .map(|(v, _)| v)
        .map_err(|e| match e {
            DecodeError::Missing { path, field } => {
                ApiError::bad_request(format!("TokenRequest: {path}.{field}: missing"))
            }
            DecodeError::Other { path, message } => ApiError::bad_request(format!(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {path}: {message}"
            )),
        })
}

/// Insert `key: value` into a JSON object if the key is absent, null or (for a string
/// default) the empty string, as Go defaulting treats zero values.
pub fn default_key(obj: &mut Map<String, Value>, key: &str, value: Value) {
    let empty_string = value.is_string() && obj.get(key).and_then(Value::as_str) == Some("");
    match obj.get(key) {
        None | Some(Value::Null) => {
            obj.insert(key.to_string(), value);
        }
        Some(_) if empty_string => {
            obj.insert(key.to_string(), value);
        }
        Some(_) => {}
    }
}

/// The object map at `key` inside `obj`, created if missing.
pub fn child<'a>(obj: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = obj
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// `metadata` of an object (created if missing).
pub fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    match obj {
        Value::Object(m) => child(m, "metadata"),
        _ => unreachable!("just made an object"),
    }
}

/// A string in `metadata`.
pub fn meta_str<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or("")
}

// ---------------------------------------------------------------- quantities and QoS

/// Parse a Kubernetes quantity into a float (good enough for comparisons and sums).
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

fn all_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["containers", "initContainers"]
        .into_iter()
        .flat_map(move |k| spec.get(k).and_then(Value::as_array).into_iter().flatten())
}

/// The QoS class of a pod, as `qos.GetPodQOS` computes it.
pub fn pod_qos(pod: &Value) -> &'static str {
    let Some(spec) = pod.get("spec") else {
        return "BestEffort";
    };
    let mut requests: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut limits: std::collections::BTreeMap<&str, f64> = Default::default();
    let mut guaranteed = true;
    for c in all_containers(spec) {
        let mut found = Vec::new();
        for (kind, acc) in [("requests", &mut requests), ("limits", &mut limits)] {
            let Some(m) = c
                .pointer(&format!("/resources/{kind}"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            for name in ["cpu", "memory"] {
                let q = m.get(name).and_then(Value::as_str).and_then(parse_quantity);
                if let Some(q) = q.filter(|q| *q != 0.0) {
                    *acc.entry(name).or_default() += q;
                    if kind == "limits" {
                        found.push(name);
                    }
                }
            }
        }
        if !(found.contains(&"cpu") && found.contains(&"memory")) {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return "BestEffort";
    }
    if guaranteed {
        for (name, r) in &requests {
            let l = limits.get(name).copied().unwrap_or(0.0);
            if (l - r).abs() > 1e-9 * r.abs().max(1.0) {
                guaranteed = false;
            }
        }
    }
    if guaranteed && requests.len() == limits.len() {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

// ---------------------------------------------------------------- defaulting

fn image_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_probe(p: &mut Value) {
    if let Some(m) = p.as_object_mut() {
        default_key(m, "timeoutSeconds", json!(1));
        default_key(m, "periodSeconds", json!(10));
        default_key(m, "successThreshold", json!(1));
        default_key(m, "failureThreshold", json!(3));
        default_handler(m);
    }
}

fn default_handler(m: &mut Map<String, Value>) {
    if let Some(Value::Object(h)) = m.get_mut("httpGet") {
        default_key(h, "scheme", json!("HTTP"));
        default_key(h, "path", json!("/"));
    }
}

fn default_field_ref(v: &mut Value) {
    if let Some(Value::Object(f)) = v.get_mut("fieldRef") {
        default_key(f, "apiVersion", json!("v1"));
    }
}

fn default_container(c: &mut Value, host_network: bool) {
    let Some(m) = c.as_object_mut() else { return };
    default_key(m, "terminationMessagePath", json!("/dev/termination-log"));
    default_key(m, "terminationMessagePolicy", json!("File"));
    let image = m
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    default_key(m, "imagePullPolicy", json!(image_pull_policy(&image)));
    let res = child(m, "resources");
    let limits = res.get("limits").and_then(Value::as_object).cloned();
    if let Some(limits) = limits {
        let req = child(res, "requests");
        for (k, v) in limits {
            default_key(req, &k, v);
        }
    }
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default_key(p, "protocol", json!("TCP"));
            if host_network && let Some(cp) = p.get("containerPort").cloned() {
                default_key(p, "hostPort", cp);
            }
        }
    }
    if let Some(Value::Array(env)) = m.get_mut("env") {
        for e in env.iter_mut() {
            if let Some(vf) = e.get_mut("valueFrom") {
                default_field_ref(vf);
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = m.get_mut(probe) {
            default_probe(p);
        }
    }
    if let Some(Value::Object(lc)) = m.get_mut("lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(Value::Object(h)) = lc.get_mut(hook) {
                default_handler(h);
            }
        }
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "hostPath",
    "emptyDir",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "persistentVolumeClaim",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "downwardAPI",
    "fc",
    "azureFile",
    "configMap",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "projected",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "csi",
    "ephemeral",
    "image",
];

fn default_volume(v: &mut Value) {
    let Some(m) = v.as_object_mut() else { return };
    if !VOLUME_SOURCES.iter().any(|s| m.contains_key(*s)) {
        m.insert("emptyDir".into(), json!({}));
    }
    for src in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(Value::Object(s)) = m.get_mut(src) {
            default_key(s, "defaultMode", json!(420));
        }
    }
    if let Some(Value::Object(h)) = m.get_mut("hostPath") {
        default_key(h, "type", json!(""));
    }
    if let Some(Value::Object(d)) = m.get_mut("downwardAPI")
        && let Some(Value::Array(items)) = d.get_mut("items")
    {
        items.iter_mut().for_each(default_field_ref);
    }
    if let Some(Value::Object(p)) = m.get_mut("projected")
        && let Some(Value::Array(sources)) = p.get_mut("sources")
    {
        for s in sources.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(Value::Object(t)) = s.get_mut("serviceAccountToken") {
                default_key(t, "expirationSeconds", json!(3600));
            }
            if let Some(Value::Object(d)) = s.get_mut("downwardAPI")
                && let Some(Value::Array(items)) = d.get_mut("items")
            {
                items.iter_mut().for_each(default_field_ref);
            }
        }
    }
}

/// Apply the v1 defaults of a pod (`SetObjectDefaults_Pod`) plus the admission plugins that
/// every cluster runs on create (Priority, DefaultTolerationSeconds).
pub fn default_pod(pod: &mut Value) {
    let Some(obj) = pod.as_object_mut() else {
        return;
    };
    default_pod_spec_only(obj);
    let spec = child(obj, "spec");
    // Priority admission (no PriorityClass objects exist here).
    if spec
        .get("priorityClassName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        default_key(spec, "priority", json!(0));
    }
    default_key(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    // DefaultTolerationSeconds admission.
    let tolerations = spec
        .entry("tolerations")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(ts) = tolerations {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = ts.iter().any(|t| {
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                let k = t.get("key").and_then(Value::as_str).unwrap_or("");
                (effect == "NoExecute" || effect.is_empty()) && (k == key || k.is_empty())
            });
            if !present {
                ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// The v1 defaults of a pod (applied on every write, as decoding does on the real server).
pub fn default_pod_spec_only(obj: &mut Map<String, Value>) {
    let spec = child(obj, "spec");
    default_key(spec, "restartPolicy", json!("Always"));
    default_key(spec, "dnsPolicy", json!("ClusterFirst"));
    default_key(spec, "terminationGracePeriodSeconds", json!(30));
    default_key(spec, "securityContext", json!({}));
    default_key(spec, "schedulerName", json!("default-scheduler"));
    default_key(spec, "enableServiceLinks", json!(true));
    let host_network = spec
        .get("hostNetwork")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut() {
                default_container(c, host_network);
            }
        }
    }
    if let Some(Value::Array(vols)) = spec.get_mut("volumes") {
        vols.iter_mut().for_each(default_volume);
    }
}

/// The mount path of the service-account token volume.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// ServiceAccount admission's token volume for a pod: adds a projected `kube-api-access-*`
/// volume and mounts it into every container, unless automount is off or a mount exists.
pub fn add_token_volume(pod: &mut Value, volume_name: &str) {
    let Some(obj) = pod.as_object_mut() else {
        return;
    };
    let spec = child(obj, "spec");
    let already = ["containers", "initContainers"].iter().any(|l| {
        spec.get(*l).and_then(Value::as_array).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .is_some_and(|ms| {
                        ms.iter().any(|m| {
                            m.get("mountPath").and_then(Value::as_str) == Some(SA_MOUNT_PATH)
                        })
                    })
            })
        })
    });
    if already {
        return;
    }
    let vols = spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(vols) = vols {
        vols.push(json!({
            "name": volume_name,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                ]
            }
        }));
    }
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let mounts = c
                    .entry("volumeMounts")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(ms) = mounts {
                    ms.push(
                        json!({"name": volume_name, "readOnly": true, "mountPath": SA_MOUNT_PATH}),
                    );
                }
            }
        }
    }
}

/// Defaults of a Service, and its cluster IP (`alloc` yields a free one).
pub fn default_service(svc: &mut Value, alloc: impl FnOnce() -> String) {
    let Some(obj) = svc.as_object_mut() else {
        return;
    };
    let spec = child(obj, "spec");
    default_key(spec, "type", json!("ClusterIP"));
    default_key(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty != "ExternalName" {
        let ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let ip = if ip.is_empty() { alloc() } else { ip };
        spec.insert("clusterIP".into(), json!(ip));
        default_key(spec, "clusterIPs", json!([ip]));
        default_key(spec, "ipFamilies", json!(["IPv4"]));
        default_key(spec, "ipFamilyPolicy", json!("SingleStack"));
        default_key(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default_key(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default_key(p, "targetPort", port);
            }
        }
    }
    default_key(obj, "status", json!({"loadBalancer": {}}));
}

/// Secrets: merge `stringData` into `data` (base64) and default `type`.
pub fn fold_string_data(secret: &mut Value) {
    use base64::Engine as _;
    let Some(obj) = secret.as_object_mut() else {
        return;
    };
    default_key(obj, "type", json!("Opaque"));
    let Some(Value::Object(sd)) = obj.remove("stringData") else {
        return;
    };
    let data = child(obj, "data");
    for (k, v) in sd {
        if let Some(s) = v.as_str() {
            data.insert(
                k,
                json!(base64::engine::general_purpose::STANDARD.encode(s)),
            );
        }
    }
}

// ---------------------------------------------------------------- validation

/// DNS-1123 subdomain check.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// DNS-1123 label check.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && !s.contains('.') && is_dns_subdomain(s)
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

fn name_causes(res: &ResourceDef, name: &str) -> Vec<Cause> {
    let (ok, what) = match res.behaviour {
        Behaviour::Namespace => (
            is_dns_label(name),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
        ),
        // kube-apiserver checks CertificateSigningRequest names as path segments only (kubelet's
        // `node-csr-<base64url digest>` has upper case letters and underscores).
        Behaviour::CertificateSigningRequest => (
            !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains('/')
                && !name.contains('%'),
            "may not be '.' or '..' and may not contain '/' or '%'",
        ),
        Behaviour::Service => (
            is_dns1035_label(name),
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        ),
        _ => (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ),
    };
    if ok {
        Vec::new()
    } else {
        vec![Cause::invalid("metadata.name", &json!(name), what)]
    }
}

fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn meta_causes(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.labels", &json!(k), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            let s = v.as_str().unwrap_or("");
            if !is_label_value(s) {
                causes.push(Cause::invalid("metadata.labels", &json!(s), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    if let Some(ann) = obj
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for k in ann.keys() {
            if !is_qualified_name(k) {
                causes.push(Cause::invalid("metadata.annotations", &json!(k), "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    causes
}

fn pod_spec_causes(spec: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(spec) = spec else {
        return vec![Cause::required("spec.containers", "")];
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        causes.push(Cause::required("spec.containers", ""));
    }
    let mut names = std::collections::BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("");
            let path = format!("spec.{list}[{i}]");
            if name.is_empty() {
                causes.push(Cause::required(format!("{path}.name"), ""));
            } else if !is_dns_label(name) {
                causes.push(Cause::invalid(format!("{path}.name"), &json!(name), "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"));
            } else if !names.insert(name.to_string()) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    message: format!("Duplicate value: {name:?}"),
                    field: format!("{path}.name"),
                });
            }
            if c.get("image")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                causes.push(Cause::required(format!("{path}.image"), ""));
            }
        }
    }
    let rp = spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if !["Always", "OnFailure", "Never"].contains(&rp) {
        causes.push(Cause::not_supported(
            "spec.restartPolicy",
            rp,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let mut vol_names = std::collections::BTreeSet::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if !vol_names.insert(name.to_string()) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                message: format!("Duplicate value: {name:?}"),
                field: format!("spec.volumes[{i}].name"),
            });
        }
    }
    causes
}

fn data_key_causes(obj: &Value, field: &str) -> Vec<Cause> {
    let mut causes = Vec::new();
    for f in [field, "binaryData"] {
        if let Some(m) = obj.get(f).and_then(Value::as_object) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
                    && k != "."
                    && k != "..";
                if !ok {
                    causes.push(Cause::invalid(
                        f.to_string(),
                        &json!(k),
                        "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    ));
                }
            }
        }
    }
    causes
}

fn event_causes(res: &ResourceDef, obj: &Value) -> Vec<Cause> {
    let ns = meta_str(obj, "namespace");
    let mut causes = Vec::new();
    let (ref_field, ref_ns) = match res.behaviour {
        Behaviour::CoreEvent => (
            "involvedObject.namespace",
            obj.pointer("/involvedObject/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
        _ => (
            "regarding.namespace",
            obj.pointer("/regarding/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
        ),
    };
    if ns != ref_ns && !(ref_ns.is_empty() && (ns.is_empty() || ns == "default")) {
        causes.push(Cause::invalid(
            ref_field,
            &json!(ref_ns),
            "does not match event.namespace",
        ));
    }
    if res.behaviour == Behaviour::Event {
        for f in [
            "eventTime",
            "reportingController",
            "reportingInstance",
            "action",
            "reason",
        ] {
            if obj
                .get(f)
                .is_none_or(|v| v.is_null() || v.as_str() == Some(""))
            {
                causes.push(Cause::required(f, ""));
            }
        }
        if let Some(t) = obj.get("type").and_then(Value::as_str)
            && t != "Normal"
            && t != "Warning"
        {
            causes.push(Cause::not_supported("type", t, &["Normal", "Warning"]));
        }
    }
    causes
}

/// Validation of an object about to be created.
pub fn validate_create(res: &ResourceDef, obj: &Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name");
    let mut causes = name_causes(res, name);
    causes.extend(meta_causes(obj));
    match res.behaviour {
        Behaviour::Pod => {
            causes.extend(pod_spec_causes(obj.get("spec")));
            let mirror = obj
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(MIRROR));
            if let Some(m) = mirror
                && obj
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
            {
                causes.push(Cause::invalid(
                    format!("metadata.annotations[{MIRROR}]"),
                    m,
                    "must set spec.nodeName if mirror pod annotation is set",
                ));
            }
        }
        Behaviour::ConfigMap => causes.extend(data_key_causes(obj, "data")),
        Behaviour::Secret => causes.extend(data_key_causes(obj, "data")),
        Behaviour::CoreEvent | Behaviour::Event => causes.extend(event_causes(res, obj)),
        _ => {}
    }
    finish(res, name, causes)
}

fn finish(res: &ResourceDef, name: &str, causes: Vec<Cause>) -> Result<(), ApiError> {
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(res.group, res.kind, name, causes))
    }
}

fn without(v: Option<&Value>, keys: &[&str]) -> Value {
    let mut v = v.cloned().unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.remove(*k);
        }
    }
    v
}

fn pod_spec_update_causes(new: &Value, old: &Value) -> Vec<Cause> {
    // Mask the mutable fields of the new spec into the old one; anything else differing
    // is forbidden (ValidatePodUpdate).
    let (Some(ns), Some(os)) = (new.get("spec"), old.get("spec")) else {
        return Vec::new();
    };
    let mut masked = os.clone();
    let Some(m) = masked.as_object_mut() else {
        return Vec::new();
    };
    for list in ["containers", "initContainers"] {
        if let (Some(Value::Array(mc)), Some(nc)) =
            (m.get_mut(list), ns.get(list).and_then(Value::as_array))
            && mc.len() == nc.len()
        {
            for (o, n) in mc.iter_mut().zip(nc) {
                if let (Some(o), Some(img)) = (o.as_object_mut(), n.get("image")) {
                    o.insert("image".into(), img.clone());
                }
            }
        }
    }
    for f in ["activeDeadlineSeconds", "ephemeralContainers"] {
        match ns.get(f) {
            Some(v) => {
                m.insert(f.into(), v.clone());
            }
            None => {
                m.remove(f);
            }
        }
    }
    // Tolerations may only be added to.
    let old_tol = os
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_tol = ns
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if old_tol.iter().all(|t| new_tol.contains(t)) {
        match ns.get("tolerations") {
            Some(v) => {
                m.insert("tolerations".into(), v.clone());
            }
            None => {
                m.remove("tolerations");
            }
        }
    }
    // Scheduling gates may only be removed.
    let old_gates = os
        .get("schedulingGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_gates = ns
        .get("schedulingGates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if new_gates.iter().all(|g| old_gates.contains(g)) {
        match ns.get("schedulingGates") {
            Some(v) => {
                m.insert("schedulingGates".into(), v.clone());
            }
            None => {
                m.remove("schedulingGates");
            }
        }
    }
    if os
        .get("terminationGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g < 0)
        && ns
            .get("terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            == Some(1)
    {
        m.insert("terminationGracePeriodSeconds".into(), json!(1));
    }
    if masked == *ns {
        Vec::new()
    } else {
        vec![Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )]
    }
}

const MIRROR: &str = "kubernetes.io/config.mirror";

fn mirror_annotation_causes(new: &Value, old: &Value) -> Vec<Cause> {
    let get = |o: &Value| {
        o.pointer("/metadata/annotations")
            .and_then(|a| a.get(MIRROR))
            .cloned()
    };
    let (n, o) = (get(new), get(old));
    let field = format!("metadata.annotations[{MIRROR}]");
    match (o, n) {
        (None, Some(_)) => vec![Cause::forbidden(field, "may not add mirror pod annotation")],
        (Some(a), b) if Some(&a) != b.as_ref() => {
            vec![Cause::forbidden(
                field,
                "may not remove or update mirror pod annotation",
            )]
        }
        _ => Vec::new(),
    }
}

/// `ValidatePodStatusUpdate`: terminated containers of pods that do not restart them stay
/// terminated, and the QoS class is immutable.
fn pod_status_update_causes(new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let policy = old
        .pointer("/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if policy != "Always" {
        for list in ["containerStatuses", "initContainerStatuses"] {
            let olds = old
                .pointer(&format!("/status/{list}"))
                .and_then(Value::as_array);
            let news = new
                .pointer(&format!("/status/{list}"))
                .and_then(Value::as_array);
            let (Some(olds), Some(news)) = (olds, news) else {
                continue;
            };
            for (i, o) in olds.iter().enumerate() {
                let Some(term) = o.pointer("/state/terminated") else {
                    continue;
                };
                let exit = term.get("exitCode").and_then(Value::as_i64).unwrap_or(0);
                if exit != 0 && policy == "OnFailure" {
                    continue;
                }
                let name = o.get("name");
                if news
                    .iter()
                    .any(|n| n.get("name") == name && n.pointer("/state/terminated").is_none())
                {
                    causes.push(Cause::forbidden(
                        format!("status.{list}[{i}].state"),
                        "may not be transitioned to non-terminated state",
                    ));
                }
            }
        }
    }
    let old_qos = old
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .unwrap_or("");
    let new_qos = new
        .pointer("/status/qosClass")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !old_qos.is_empty() && old_qos != new_qos {
        causes.push(Cause::invalid(
            "status.qosClass",
            &json!(new_qos),
            "field is immutable",
        ));
    }
    causes
}

/// Validation of an update (`new` already went through the update preparation).
pub fn validate_update(
    res: &ResourceDef,
    new: &Value,
    old: &Value,
    status: bool,
) -> Result<(), ApiError> {
    let name = meta_str(old, "name");
    let mut causes = meta_causes(new);
    for (field, path) in [
        ("uid", "metadata.uid"),
        ("deletionTimestamp", "metadata.deletionTimestamp"),
        (
            "deletionGracePeriodSeconds",
            "metadata.deletionGracePeriodSeconds",
        ),
    ] {
        let (n, o) = (
            new.pointer(&format!("/metadata/{field}")),
            old.pointer(&format!("/metadata/{field}")),
        );
        if n != o {
            causes.push(Cause::invalid(
                path,
                n.unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        let old_f: Vec<&Value> = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let added: Vec<String> = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|f| !old_f.contains(f))
            .map(|f| f.as_str().unwrap_or("").to_string())
            .collect();
        if !added.is_empty() {
            causes.push(Cause::forbidden(
                "metadata.finalizers",
                &format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
            ));
        }
    }
    match res.behaviour {
        Behaviour::Pod if !status => {
            causes.extend(mirror_annotation_causes(new, old));
            causes.extend(pod_spec_causes(new.get("spec")));
            causes.extend(pod_spec_update_causes(new, old));
        }
        Behaviour::Pod => {
            causes.extend(mirror_annotation_causes(new, old));
            causes.extend(pod_status_update_causes(new, old));
        }
        Behaviour::ConfigMap | Behaviour::Secret => {
            causes.extend(data_key_causes(new, "data"));
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                let keys = ["metadata", "immutable"];
                if without(Some(new), &keys) != without(Some(old), &keys)
                    || new.get("immutable") != old.get("immutable")
                {
                    causes.push(Cause::forbidden(
                        "data",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
            if res.behaviour == Behaviour::Secret && new.get("type") != old.get("type") {
                causes.push(Cause::invalid(
                    "type",
                    new.get("type").unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
        }
        Behaviour::CoreEvent | Behaviour::Event => causes.extend(event_causes(res, new)),
        _ => {}
    }
    finish(res, name, causes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{RESOURCES, by_behaviour};

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn qos_classes() {
        let be = json!({"spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pod_qos(&be), "BestEffort");
        let g = json!({"spec": {"containers": [{"name": "a", "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]}});
        assert_eq!(pod_qos(&g), "Guaranteed");
        let b = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]}});
        assert_eq!(pod_qos(&b), "Burstable");
    }

    #[test]
    fn normalize_drops_unknown_fields_and_reports_them() {
        let pods = &RESOURCES[by_behaviour(Behaviour::Pod)];
        let (v, unknown) = normalize(
            pods,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "image": "i", "bogus": 1}]}}),
        )
        .unwrap();
        assert_eq!(unknown, vec!["spec.containers[0].bogus".to_string()]);
        assert!(v.pointer("/spec/containers/0/bogus").is_none());
        let e = normalize(
            pods,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "x"}}),
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        let (v, _) = normalize(
            pods,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"image": "i"}]}}),
        )
        .unwrap();
        let e = validate_create(pods, &v).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("spec.containers[0].name"),
            "{}",
            e.message
        );
    }

    #[test]
    fn pod_defaults() {
        let mut p = json!({"spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "1"}}}]}});
        default_pod(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "1"
        );
        assert_eq!(p["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
        assert_eq!(image_pull_policy("reg:5000/busybox:1.36"), "IfNotPresent");
        assert_eq!(image_pull_policy("reg:5000/busybox"), "Always");
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let pods = &RESOURCES[by_behaviour(Behaviour::Pod)];
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("b");
        assert!(validate_update(pods, &new, &old, false).is_ok());
        new["spec"]["nodeName"] = json!("n");
        let e = validate_update(pods, &new, &old, false).unwrap_err();
        assert_eq!(e.code, 422);
    }
}
