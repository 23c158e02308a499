//! A container's environment, as kubelet builds it (`makeEnvironmentVariables`): service links, then
//! `envFrom`, then `env` with `$(VAR)` expansion and `valueFrom` (configMapKeyRef, secretKeyRef,
//! fieldRef, resourceFieldRef). A missing non-optional reference keeps the container waiting with
//! `CreateContainerConfigError` and kubelet's message.
//!
//! [`fetch`] reads what the container refers to from the API server; [`resolve`] is pure.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::Api;

use crate::kuberuntime::container_config::expand;
use crate::quantity::Quantity;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported resource {0}")]
    Resource(String),
    #[error("{kind} {name} cannot be read without an API server (static pods may not refer to it)")]
    NoApiServer { kind: &'static str, name: String },
    #[error("reading {kind} \"{name}\": {message}")]
    Api {
        kind: &'static str,
        name: String,
        message: String,
    },
}

/// The objects a container's environment refers to, as read from the API server.
#[derive(Debug, Clone, Default)]
pub struct EnvObjects {
    /// ConfigMap name → data (None: it does not exist).
    pub config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Secret name → decoded data (None: it does not exist).
    pub secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    /// Services of the pod's namespace (for service links).
    pub services: Vec<Service>,
}

/// What the node and the sandbox tell about the pod.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub pod_ips: Vec<String>,
    pub host_ips: Vec<String>,
    /// Node allocatable, used for resourceFieldRef limits a container does not set.
    pub allocatable: BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
}

fn referenced(container: &Container) -> (Vec<String>, Vec<String>) {
    let mut cms = Vec::new();
    let mut secrets = Vec::new();
    for from in container.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            secrets.push(r.name.clone());
        }
    }
    for e in container.env.iter().flatten() {
        let Some(v) = &e.value_from else { continue };
        if let Some(r) = &v.config_map_key_ref {
            cms.push(r.name.clone());
        }
        if let Some(r) = &v.secret_key_ref {
            secrets.push(r.name.clone());
        }
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// Reads the ConfigMaps, Secrets and Services the container's environment needs.
pub async fn fetch(
    client: Option<&kube::Client>,
    pod: &Pod,
    container: &Container,
) -> Result<EnvObjects, EnvError> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (cms, secrets) = referenced(container);
    let mut objects = EnvObjects::default();
    let service_links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let Some(client) = client else {
        if let Some(name) = cms.first() {
            return Err(EnvError::NoApiServer {
                kind: "configmap",
                name: name.clone(),
            });
        }
        if let Some(name) = secrets.first() {
            return Err(EnvError::NoApiServer {
                kind: "secret",
                name: name.clone(),
            });
        }
        return Ok(objects);
    };
    let api_err = |kind: &'static str, name: &str, e: kube::Error| EnvError::Api {
        kind,
        name: name.into(),
        message: e.to_string(),
    };
    let cm_api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    for name in cms {
        let cm = cm_api
            .get_opt(&name)
            .await
            .map_err(|e| api_err("configmap", &name, e))?;
        objects
            .config_maps
            .insert(name, cm.map(|c| c.data.unwrap_or_default()));
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    for name in secrets {
        let secret = secret_api
            .get_opt(&name)
            .await
            .map_err(|e| api_err("secret", &name, e))?;
        let decoded = secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        });
        objects.secrets.insert(name, decoded);
    }
    if service_links {
        let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
        objects.services = services
            .list(&Default::default())
            .await
            .map_err(|e| api_err("services", &namespace, e))?
            .items;
    }
    Ok(objects)
}

/// Docker-link style variables for the namespace's services (`<NAME>_SERVICE_HOST`, `<NAME>_PORT`, ...).
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| s.metadata.name.clone());
    for svc in sorted {
        let Some(spec) = &svc.spec else { continue };
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc
            .metadata
            .name
            .clone()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for p in &ports {
            if let Some(pname) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        pname.to_uppercase().replace('-', "_")
                    ),
                    p.port.to_string(),
                ));
            }
        }
        let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        out.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
        ));
        for p in &ports {
            let pr = proto(p);
            let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_uppercase());
            out.push((
                prefix.clone(),
                format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
            ));
            out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
            out.push((format!("{prefix}_PORT"), p.port.to_string()));
            out.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    out
}

fn field_value(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", &meta.annotations) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => facts.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => facts.pod_ips.join(","),
        "status.hostIP" => facts.host_ips.first().cloned().unwrap_or_default(),
        "status.hostIPs" => facts.host_ips.join(","),
        other => return Err(EnvError::FieldPath(other.into())),
    })
}

fn resource_value(
    container: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, EnvError> {
    let (kind, resource) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(r.resource.clone()))?;
    let resources = container.resources.clone().unwrap_or_default();
    let set = match kind {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => return Err(EnvError::Resource(r.resource.clone())),
    };
    // An unset limit is the node's allocatable (kubelet's default for the downward API).
    let value = set.as_ref().and_then(|m| m.get(resource)).or_else(|| {
        (kind == "limits")
            .then(|| facts.allocatable.get(resource))
            .flatten()
    });
    let value = value
        .and_then(|q| Quantity::from_api(q).ok())
        .unwrap_or_default();
    let divisor = r
        .divisor
        .as_ref()
        .and_then(|q| Quantity::from_api(q).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or_else(|| Quantity::new(1, Default::default()));
    // ceil(value / divisor), computed in thousandths so `1m` divisors work.
    let (v, d) = (
        i128::from(value.milli_value()),
        i128::from(divisor.milli_value()).max(1),
    );
    Ok(((v + d - 1) / d).to_string())
}

/// Builds the environment. `objects` must hold what [`fetch`] read for this container.
pub fn resolve(
    pod: &Pod,
    container: &Container,
    objects: &EnvObjects,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(existing, _)| *existing != k);
        vars.push((k, v));
    };
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true)
    {
        for (k, v) in service_env(&objects.services) {
            set(&mut vars, k, v);
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match objects.config_maps.get(&r.name).cloned().flatten() {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| set(&mut vars, format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match objects.secrets.get(&r.name).cloned().flatten() {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| set(&mut vars, format!("{prefix}{k}"), v)),
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or_default(), &vars),
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.config_maps.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                        Some(data) => match data.get(&r.key) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError::ConfigMapKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.secrets.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(EnvError::SecretNotFound(r.name.clone())),
                        Some(data) => match data.get(&r.key) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => {
                                return Err(EnvError::SecretKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(pod, &f.field_path, facts)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_value(container, r, facts)?
                } else {
                    String::new()
                }
            }
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests;
