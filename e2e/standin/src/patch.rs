//! PATCH: RFC 6902 JSON patch, RFC 7386 merge patch and Kubernetes strategic merge patch.
//!
//! The strategic merge patch follows `k8s.io/apimachinery/pkg/util/strategicpatch` with the
//! `patchStrategy`/`patchMergeKey` tags of the served types (see [`list_strategy`]). Lists
//! without a patch strategy are replaced whole, as on the real server; notably
//! `status.containerStatuses` has no merge key in `k8s.io/api` and is therefore replaced.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::resources::Behaviour;

/// The supported patch content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchType {
    /// Map a `Content-Type` to a patch type; `apply-patch+yaml` and others are unsupported (415).
    pub fn from_content_type(ct: &str) -> Result<Self, ApiError> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            _ => Err(ApiError::unsupported_media_type(ct)),
        }
    }
}

/// Apply a patch document (raw body) to `current`, returning the patched object.
pub fn apply(
    kind: PatchType,
    behaviour: Behaviour,
    current: &Value,
    body: &[u8],
) -> Result<Value, ApiError> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::patch(&mut doc, &ops)
                .map_err(|e| ApiError::unprocessable(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
            let mut doc = current.clone();
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("invalid strategic merge patch: {e}"))
            })?;
            strategic_merge(current, &p, behaviour)
        }
    }
}

/// How a list field merges under a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// No patch strategy: the patch's list replaces the original.
    Replace,
    /// `patchStrategy=merge` on a list of scalars: set union.
    MergeScalars,
    /// `patchStrategy=merge` with `patchMergeKey`.
    MergeByKey(&'static str),
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// The strategy of the list at `path` (field names from the object root; list items add
/// nothing) for the given kind, from the `patchStrategy` tags in `k8s.io/api`.
pub fn list_strategy(b: Behaviour, path: &[String]) -> ListStrategy {
    use ListStrategy::*;
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match (b, p.as_slice()) {
        (_, ["metadata", "finalizers"]) => MergeScalars,
        (_, ["metadata", "ownerReferences"]) => MergeByKey("uid"),
        (Behaviour::Pod, ["spec", c]) if CONTAINER_LISTS.contains(c) => MergeByKey("name"),
        (Behaviour::Pod, ["spec", c, field]) if CONTAINER_LISTS.contains(c) => match *field {
            "ports" => MergeByKey("containerPort"),
            "env" => MergeByKey("name"),
            "volumeMounts" => MergeByKey("mountPath"),
            "volumeDevices" => MergeByKey("devicePath"),
            _ => Replace,
        },
        (Behaviour::Pod, ["spec", "volumes"]) => MergeByKey("name"),
        (Behaviour::Pod, ["spec", "imagePullSecrets"]) => MergeByKey("name"),
        (Behaviour::Pod, ["spec", "hostAliases"]) => MergeByKey("ip"),
        (Behaviour::Pod, ["spec", "topologySpreadConstraints"]) => MergeByKey("topologyKey"),
        (Behaviour::Pod, ["spec", "schedulingGates"]) => MergeByKey("name"),
        (Behaviour::Pod, ["spec", "resourceClaims"]) => MergeByKey("name"),
        (Behaviour::Pod, ["status", "conditions"]) => MergeByKey("type"),
        (Behaviour::Pod, ["status", "podIPs"]) => MergeByKey("ip"),
        (Behaviour::Pod, ["status", "hostIPs"]) => MergeByKey("ip"),
        (Behaviour::Pod, ["status", "resourceClaimStatuses"]) => MergeByKey("name"),
        (Behaviour::Node, ["spec", "podCIDRs"]) => MergeScalars,
        (Behaviour::Node, ["status", "conditions"]) => MergeByKey("type"),
        (Behaviour::Node, ["status", "addresses"]) => MergeByKey("type"),
        (Behaviour::Namespace, ["status", "conditions"]) => MergeByKey("type"),
        (Behaviour::Service, ["spec", "ports"]) => MergeByKey("port"),
        (Behaviour::Service, ["status", "conditions"]) => MergeByKey("type"),
        (Behaviour::ServiceAccount, ["secrets"]) => MergeByKey("name"),
        _ => Replace,
    }
}

fn smp_error(msg: impl Into<String>) -> ApiError {
    ApiError::unprocessable(msg)
}

/// Strategic-merge `patch` into `original`.
pub fn strategic_merge(original: &Value, patch: &Value, b: Behaviour) -> Result<Value, ApiError> {
    let Some(p) = patch.as_object() else {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    };
    let o = original.as_object().cloned().unwrap_or_default();
    let mut path = Vec::new();
    Ok(Value::Object(
        merge_map(o, p, b, &mut path)?.unwrap_or_default(),
    ))
}

/// Merge a patch map into an original map; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    mut orig: Map<String, Value>,
    patch: &Map<String, Value>,
    b: Behaviour,
    path: &mut Vec<String>,
) -> Result<Option<Map<String, Value>>, ApiError> {
    if let Some(d) = patch.get("$patch") {
        match d.as_str() {
            Some("replace") => {
                let mut rest = patch.clone();
                rest.remove("$patch");
                return merge_map(Map::new(), &rest, b, path);
            }
            Some("delete") => return Ok(None),
            Some("merge") => {}
            _ => return Err(smp_error(format!("Unknown patch type: {d}"))),
        }
    }
    if let Some(rk) = patch.get("$retainKeys") {
        let Some(keys) = rk.as_array() else {
            return Err(smp_error("$retainKeys must be a list"));
        };
        orig.retain(|k, _| keys.iter().any(|x| x.as_str() == Some(k.as_str())));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let Some(del) = v.as_array() else {
                return Err(smp_error(format!("{k} must be a list")));
            };
            if let Some(Value::Array(list)) = orig.get_mut(field) {
                list.retain(|x| !del.contains(x));
            }
        }
    }
    for (k, pv) in patch {
        if k.starts_with('$') {
            continue;
        }
        if pv.is_null() {
            orig.remove(k);
            continue;
        }
        path.push(k.clone());
        let ov = orig.remove(k);
        let merged = match (ov, pv) {
            (Some(Value::Object(om)), Value::Object(pm)) => {
                merge_map(om, pm, b, path)?.map(Value::Object)
            }
            (_, Value::Object(pm)) => merge_map(Map::new(), pm, b, path)?.map(Value::Object),
            (Some(Value::Array(ol)), Value::Array(pl)) => {
                Some(Value::Array(merge_list(ol, pl, b, path)?))
            }
            (_, Value::Array(pl)) => Some(Value::Array(merge_list(Vec::new(), pl, b, path)?)),
            (_, other) => Some(other.clone()),
        };
        path.pop();
        if let Some(m) = merged {
            orig.insert(k.clone(), m);
        }
    }
    for (k, order) in patch {
        let Some(field) = k.strip_prefix("$setElementOrder/") else {
            continue;
        };
        let Some(order) = order.as_array() else {
            return Err(smp_error(format!("{k} must be a list")));
        };
        path.push(field.to_string());
        let key = match list_strategy(b, path) {
            ListStrategy::MergeByKey(key) => Some(key),
            _ => None,
        };
        path.pop();
        if let Some(Value::Array(list)) = orig.get_mut(field) {
            reorder(list, order, key);
        }
    }
    Ok(Some(orig))
}

fn directive(v: &Value) -> Option<&str> {
    v.get("$patch").and_then(Value::as_str)
}

fn merge_list(
    orig: Vec<Value>,
    patch: &[Value],
    b: Behaviour,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, ApiError> {
    match list_strategy(b, path) {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::MergeScalars => {
            if patch.iter().any(|v| directive(v) == Some("replace")) {
                return Ok(patch
                    .iter()
                    .filter(|v| directive(v).is_none())
                    .cloned()
                    .collect());
            }
            let mut out = orig;
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeByKey(key) => {
            if patch.iter().any(|v| directive(v) == Some("replace")) {
                let mut out = Vec::new();
                for v in patch.iter().filter(|v| directive(v) != Some("replace")) {
                    match v.as_object() {
                        Some(m) => {
                            if let Some(m) = merge_map(Map::new(), m, b, path)? {
                                out.push(Value::Object(m));
                            }
                        }
                        None => out.push(v.clone()),
                    }
                }
                return Ok(out);
            }
            let mut out = orig;
            for pe in patch {
                let Some(pm) = pe.as_object() else {
                    return Err(smp_error(format!(
                        "{}: list element {pe} is not an object but the list merges by key {key:?}",
                        path.join(".")
                    )));
                };
                let Some(kv) = pm.get(key) else {
                    return Err(smp_error(format!(
                        "map: {pe} does not contain declared merge key: {key}"
                    )));
                };
                let pos = out.iter().position(|e| e.get(key) == Some(kv));
                if directive(pe) == Some("delete") {
                    out.retain(|e| e.get(key) != Some(kv));
                    continue;
                }
                match pos {
                    Some(i) => {
                        let om = out[i].as_object().cloned().unwrap_or_default();
                        match merge_map(om, pm, b, path)? {
                            Some(m) => out[i] = Value::Object(m),
                            None => {
                                out.remove(i);
                            }
                        }
                    }
                    None => {
                        if let Some(m) = merge_map(Map::new(), pm, b, path)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Apply `$setElementOrder`: items named in `order` take that relative order, the other
/// (server-only) items keep theirs, interleaved as `strategicpatch.mergeSortedSlice` does.
fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let ident = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order.iter().map(ident).collect();
    let server_order: Vec<Value> = list.iter().map(ident).collect();
    let (mut patch_items, server_only): (Vec<Value>, Vec<Value>) = std::mem::take(list)
        .into_iter()
        .partition(|e| order_ids.contains(&ident(e)));
    patch_items.sort_by_key(|e| {
        let id = ident(e);
        order_ids
            .iter()
            .position(|o| *o == id)
            .unwrap_or(usize::MAX)
    });
    let index = |v: &Value| server_order.iter().position(|o| *o == ident(v));
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    while i < server_only.len() || j < patch_items.len() {
        if i >= server_only.len() {
            out.push(patch_items[j].clone());
            j += 1;
        } else if j >= patch_items.len() {
            out.push(server_only[i].clone());
            i += 1;
        } else {
            let less = match (index(&server_only[i]), index(&patch_items[j])) {
                (Some(l), Some(r)) => l < r,
                _ => false,
            };
            if less {
                out.push(server_only[i].clone());
                i += 1;
            } else {
                out.push(patch_items[j].clone());
                j += 1;
            }
        }
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(orig: Value, patch: Value, b: Behaviour) -> Value {
        strategic_merge(&orig, &patch, b).unwrap()
    }

    #[test]
    fn conditions_merge_by_type() {
        let orig = json!({"status": {"conditions": [
            {"type": "Ready", "status": "False"},
            {"type": "PodScheduled", "status": "True"}
        ]}});
        let out = smp(
            orig,
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]}}),
            Behaviour::Pod,
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"}
            ])
        );
    }

    #[test]
    fn container_statuses_are_replaced_like_the_real_server() {
        let orig = json!({"status": {"containerStatuses": [{"name": "a", "ready": true}, {"name": "b", "ready": true}]}});
        let out = smp(
            orig,
            json!({"status": {"containerStatuses": [{"name": "b", "ready": false}]}}),
            Behaviour::Pod,
        );
        assert_eq!(
            out["status"]["containerStatuses"],
            json!([{"name": "b", "ready": false}])
        );
    }

    #[test]
    fn delete_directive_and_null() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "status": {"conditions": [
            {"type": "A"}, {"type": "B"}
        ]}});
        let out = smp(
            orig,
            json!({"metadata": {"labels": {"a": null}}, "status": {"conditions": [{"type": "A", "$patch": "delete"}]}}),
            Behaviour::Pod,
        );
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["status"]["conditions"], json!([{"type": "B"}]));
    }

    #[test]
    fn replace_directives() {
        let orig = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}, "metadata": {"labels": {"x": "1"}}});
        let out = smp(
            orig,
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}, "metadata": {"labels": {"$patch": "replace", "y": "2"}}}),
            Behaviour::Pod,
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "c"}]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
    }

    #[test]
    fn set_element_order() {
        let orig = json!({"status": {"conditions": [{"type": "A"}, {"type": "B"}, {"type": "C"}]}});
        let out = smp(
            orig,
            json!({"status": {
                "$setElementOrder/conditions": [{"type": "C"}, {"type": "A"}, {"type": "B"}],
                "conditions": [{"type": "C", "status": "True"}]
            }}),
            Behaviour::Pod,
        );
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type": "C", "status": "True"}, {"type": "A"}, {"type": "B"}])
        );
    }

    #[test]
    fn finalizers_union_and_delete_from_primitive_list() {
        let orig = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = smp(
            orig.clone(),
            json!({"metadata": {"finalizers": ["c", "a"]}}),
            Behaviour::ConfigMap,
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            orig,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            Behaviour::ConfigMap,
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
    }

    #[test]
    fn node_addresses_by_type_and_nested_env() {
        let orig = json!({"status": {"addresses": [{"type": "InternalIP", "address": "1.1.1.1"}]}});
        let out = smp(
            orig,
            json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}]}}),
            Behaviour::Node,
        );
        assert_eq!(out["status"]["addresses"].as_array().map(Vec::len), Some(2));
        let pod =
            json!({"spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]}});
        let out = smp(
            pod,
            json!({"spec": {"containers": [{"name": "c", "env": [{"name": "B", "value": "2"}]}]}}),
            Behaviour::Pod,
        );
        assert_eq!(
            out["spec"]["containers"][0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
    }

    #[test]
    fn retain_keys() {
        let orig = json!({"spec": {"volumes": [{"name": "v", "emptyDir": {}}]}});
        let out = smp(
            orig,
            json!({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}}),
            Behaviour::Pod,
        );
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "v", "hostPath": {"path": "/x"}}])
        );
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let e = strategic_merge(
            &json!({}),
            &json!({"status": {"conditions": [{"status": "True"}]}}),
            Behaviour::Pod,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
    }

    #[test]
    fn json_and_merge_patch() {
        let cur = json!({"metadata": {"labels": {"a": "1"}}, "data": {"k": "v"}});
        let out = apply(
            PatchType::Json,
            Behaviour::ConfigMap,
            &cur,
            br#"[{"op":"replace","path":"/data/k","value":"w"},{"op":"add","path":"/data/n","value":"x"}]"#,
        )
        .unwrap();
        assert_eq!(out["data"], json!({"k": "w", "n": "x"}));
        let e = apply(
            PatchType::Json,
            Behaviour::ConfigMap,
            &cur,
            br#"[{"op":"test","path":"/data/k","value":"zzz"}]"#,
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        let e = apply(PatchType::Json, Behaviour::ConfigMap, &cur, b"{").unwrap_err();
        assert_eq!(e.code, 400);
        let out = apply(
            PatchType::Merge,
            Behaviour::ConfigMap,
            &cur,
            br#"{"metadata":{"labels":{"a":null,"b":"2"}}}"#,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml")
                .unwrap_err()
                .code,
            415
        );
    }
}
