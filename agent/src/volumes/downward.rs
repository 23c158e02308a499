//! The downward API for volumes (kubelet's `pkg/volume/downwardapi.CollectData`, `pkg/fieldpath`
//! and `pkg/api/v1/resource`): pod fields and container resources rendered as file contents.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;

use super::atomic_writer::{FileProjection, Payload};
use super::error::SetUpError;
use crate::quantity::Quantity;

/// The node's allocatable resources, by resource name (`cpu`, `memory`, `ephemeral-storage`):
/// the value of an unset container limit.
pub type Allocatable = BTreeMap<String, Quantity>;

/// The files of a downwardAPI volume (or projected downwardAPI source). All items are tried; the
/// errors are aggregated as kubelet does.
pub fn collect(
    items: &[DownwardAPIVolumeFile],
    pod: &Pod,
    default_mode: i32,
    allocatable: &Allocatable,
) -> Result<Payload, SetUpError> {
    let mut errors = Vec::new();
    let mut payload = Payload::new();
    for item in items {
        let mode = item.mode.unwrap_or(default_mode);
        let mut data = String::new();
        if let Some(field) = &item.field_ref {
            match extract_field_path(pod, &field.field_path) {
                Ok(v) => data = v,
                Err(e) => errors.push(e),
            }
        } else if let Some(resource) = &item.resource_field_ref {
            match extract_resource_value(resource, pod, allocatable) {
                Ok(v) => data = v,
                Err(e) => errors.push(e),
            }
        }
        payload.insert(item.path.clone(), FileProjection::new(data, mode));
    }
    match SetUpError::from_list(errors) {
        Some(e) => Err(e),
        None => Ok(payload),
    }
}

/// kubelet's `fieldpath.ExtractFieldPathAsString` for pods.
pub fn extract_field_path(pod: &Pod, field_path: &str) -> Result<String, SetUpError> {
    let meta = &pod.metadata;
    if let Some((path, subscript)) = split_subscripted(field_path) {
        return match path {
            "metadata.annotations" => Ok(meta
                .annotations
                .as_ref()
                .and_then(|m| m.get(subscript))
                .cloned()
                .unwrap_or_default()),
            "metadata.labels" => Ok(meta
                .labels
                .as_ref()
                .and_then(|m| m.get(subscript))
                .cloned()
                .unwrap_or_default()),
            _ => Err(SetUpError::FieldPathSubscript(field_path.to_string())),
        };
    }
    match field_path {
        "metadata.annotations" => Ok(format_map(meta.annotations.as_ref())),
        "metadata.labels" => Ok(format_map(meta.labels.as_ref())),
        "metadata.name" => Ok(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Ok(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Ok(meta.uid.clone().unwrap_or_default()),
        _ => Err(SetUpError::UnsupportedFieldPath(field_path.to_string())),
    }
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn split_subscripted(field_path: &str) -> Option<(&str, &str)> {
    let inner = field_path.strip_suffix("']")?;
    let (path, subscript) = inner.split_once("['")?;
    (!path.is_empty()).then_some((path, subscript))
}

/// kubelet's `fieldpath.FormatMap`: `key="value"` lines sorted by key, values quoted as Go's `%q`,
/// no trailing newline.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: double-quoted, with `\"`, `\\`, the C escapes, `\xNN` for other ASCII
/// controls and `\uNNNN` / `\UNNNNNNNN` for non-printable runes. Go's `unicode.IsPrint` is
/// approximated (controls, non-ASCII spaces, format characters, private use and non-characters
/// count as non-printable).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if is_go_printable(c) => out.push(c),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    let format_or_private = matches!(
        u,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0xE000..=0xF8FF
            | 0xF0000..
    );
    let noncharacter = (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE;
    !format_or_private && !noncharacter
}

/// kubelet's `ExtractResourceValueByContainerNameAndNodeAllocatable`: a container's limit or
/// request in units of the divisor, rounded up; an unset cpu / memory / ephemeral-storage limit is
/// the node's allocatable.
pub fn extract_resource_value(
    selector: &ResourceFieldSelector,
    pod: &Pod,
    allocatable: &Allocatable,
) -> Result<String, SetUpError> {
    let name = selector.container_name.as_deref().unwrap_or_default();
    let container =
        find_container(pod, name).ok_or_else(|| SetUpError::ContainerNotFound(name.to_string()))?;
    container_resource_value(selector, container, allocatable)
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

fn parse(q: &ApiQuantity) -> Result<Quantity, SetUpError> {
    Quantity::from_api(q).map_err(|e| SetUpError::InvalidQuantity(q.0.clone(), e.to_string()))
}

fn container_resource_value(
    selector: &ResourceFieldSelector,
    container: &Container,
    allocatable: &Allocatable,
) -> Result<String, SetUpError> {
    let divisor = match &selector.divisor {
        Some(d) => parse(d)?,
        None => Quantity::default(),
    };
    let divisor = if divisor.is_zero() {
        Quantity::new(1, crate::quantity::Format::DecimalSI)
    } else {
        divisor
    };
    let resources = container.resources.as_ref();
    let lookup = |list: Option<&BTreeMap<String, ApiQuantity>>, name: &str| {
        list.and_then(|l| l.get(name))
            .map(parse)
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let limit = |name: &str| -> Result<Quantity, SetUpError> {
        let q = lookup(resources.and_then(|r| r.limits.as_ref()), name)?;
        let merged = matches!(name, "cpu" | "memory" | "ephemeral-storage") && q.is_zero();
        Ok(if merged {
            allocatable.get(name).copied().unwrap_or(q)
        } else {
            q
        })
    };
    let request = |name: &str| lookup(resources.and_then(|r| r.requests.as_ref()), name);
    let resource = selector.resource.as_str();
    match resource {
        "limits.cpu" => Ok(cpu_string(&limit("cpu")?, &divisor)),
        "limits.memory" => Ok(bytes_string(&limit("memory")?, &divisor)),
        "limits.ephemeral-storage" => Ok(bytes_string(&limit("ephemeral-storage")?, &divisor)),
        "requests.cpu" => Ok(cpu_string(&request("cpu")?, &divisor)),
        "requests.memory" => Ok(bytes_string(&request("memory")?, &divisor)),
        "requests.ephemeral-storage" => Ok(bytes_string(&request("ephemeral-storage")?, &divisor)),
        _ => {
            if let Some(name) = resource.strip_prefix("requests.")
                && name.starts_with("hugepages-")
            {
                return Ok(bytes_string(&request(name)?, &divisor));
            }
            if let Some(name) = resource.strip_prefix("limits.")
                && name.starts_with("hugepages-")
            {
                return Ok(bytes_string(&limit(name)?, &divisor));
            }
            Err(SetUpError::UnsupportedResource(resource.to_string()))
        }
    }
}

/// `ceil(cpu.MilliValue() / divisor.MilliValue())`, computed in floating point as Go does.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn cpu_string(cpu: &Quantity, divisor: &Quantity) -> String {
    let v = (cpu.milli_value() as f64 / divisor.milli_value() as f64).ceil();
    (v as i64).to_string()
}

/// `ceil(q.Value() / divisor.Value())`, computed in floating point as Go does.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn bytes_string(q: &Quantity, divisor: &Quantity) -> String {
    let v = (q.value() as f64 / divisor.value() as f64).ceil();
    (v as i64).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web", "namespace": "prod", "uid": "1234",
                "labels": {"app": "web", "a.b": "x", "tier": "front \"end\""},
                "annotations": {"note": "line1\nline2\ttab", "uni": "héllo\u{200b}"}
            },
            "spec": {"containers": [
                {"name": "c", "resources": {
                    "limits": {"cpu": "1500m", "memory": "128Mi"},
                    "requests": {"cpu": "250m", "memory": "64Mi", "hugepages-2Mi": "4Mi"}
                }},
                {"name": "nolimits"}
            ], "initContainers": [{"name": "init", "resources": {"limits": {"memory": "1Gi"}}}]}
        }))
        .expect("pod")
    }

    #[test]
    fn labels_and_annotations_are_formatted_as_kubelet() {
        let p = pod();
        assert_eq!(
            extract_field_path(&p, "metadata.labels").expect("labels"),
            "a.b=\"x\"\napp=\"web\"\ntier=\"front \\\"end\\\"\""
        );
        assert_eq!(
            extract_field_path(&p, "metadata.annotations").expect("annotations"),
            "note=\"line1\\nline2\\ttab\"\nuni=\"héllo\\u200b\""
        );
        assert_eq!(
            extract_field_path(&p, "metadata.name").expect("name"),
            "web"
        );
        assert_eq!(
            extract_field_path(&p, "metadata.namespace").expect("ns"),
            "prod"
        );
        assert_eq!(extract_field_path(&p, "metadata.uid").expect("uid"), "1234");
        assert_eq!(
            extract_field_path(&p, "metadata.labels['app']").expect("sub"),
            "web"
        );
        assert_eq!(
            extract_field_path(&p, "metadata.labels['missing']").expect("sub"),
            ""
        );
        assert_eq!(
            extract_field_path(&p, "spec.nodeName")
                .expect_err("unsupported")
                .to_string(),
            "unsupported fieldPath: spec.nodeName"
        );
        assert_eq!(
            extract_field_path(&p, "metadata.name['x']")
                .expect_err("subscript")
                .to_string(),
            "fieldPath \"metadata.name['x']\" does not support subscript"
        );
        assert_eq!(format_map(None), "");
    }

    #[test]
    fn go_quoting() {
        for (input, quoted) in [
            ("plain", "\"plain\""),
            ("a\"b\\c", "\"a\\\"b\\\\c\""),
            ("\u{7}\u{8}\u{c}\n\r\t\u{b}", "\"\\a\\b\\f\\n\\r\\t\\v\""),
            ("\u{1b}[0m\u{7f}", "\"\\x1b[0m\\x7f\""),
            ("日本 ü", "\"日本 ü\""),
            ("\u{a0}\u{feff}", "\"\\u00a0\\ufeff\""),
            ("\u{10ffff}", "\"\\U0010ffff\""),
        ] {
            assert_eq!(go_quote(input), quoted, "{input:?}");
        }
    }

    fn selector(container: &str, resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            container_name: Some(container.into()),
            resource: resource.into(),
            divisor: divisor.map(|d| ApiQuantity(d.into())),
        }
    }

    #[test]
    fn resource_values_use_divisor_and_node_allocatable() {
        let p = pod();
        let mut alloc = Allocatable::new();
        alloc.insert("cpu".into(), "4".parse().expect("q"));
        alloc.insert("memory".into(), "8Gi".parse().expect("q"));
        let v = |c: &str, r: &str, d: Option<&str>| {
            extract_resource_value(&selector(c, r, d), &p, &alloc).expect(r)
        };
        assert_eq!(v("c", "limits.cpu", None), "2"); // 1.5 rounded up
        assert_eq!(v("c", "limits.cpu", Some("1m")), "1500");
        assert_eq!(v("c", "requests.cpu", Some("1m")), "250");
        assert_eq!(v("c", "limits.memory", None), "134217728");
        assert_eq!(v("c", "limits.memory", Some("1Mi")), "128");
        assert_eq!(v("c", "requests.memory", Some("1Mi")), "64");
        assert_eq!(v("c", "requests.hugepages-2Mi", Some("1Mi")), "4");
        assert_eq!(v("c", "requests.cpu", Some("0")), "1");
        // unset limits: node allocatable
        assert_eq!(v("nolimits", "limits.cpu", None), "4");
        assert_eq!(v("nolimits", "limits.memory", Some("1Gi")), "8");
        assert_eq!(v("nolimits", "requests.memory", None), "0");
        assert_eq!(v("init", "limits.memory", Some("1Mi")), "1024");
        let err = extract_resource_value(&selector("c", "limits.gpu", None), &p, &alloc)
            .expect_err("unsupported");
        assert_eq!(
            err.to_string(),
            "unsupported container resource : limits.gpu"
        );
        let err = extract_resource_value(&selector("x", "limits.cpu", None), &p, &alloc)
            .expect_err("no container");
        assert_eq!(err.to_string(), "container x not found");
    }

    #[test]
    fn collect_aggregates_errors_and_applies_modes() {
        let p = pod();
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}, "mode": 0o600},
            {"path": "cpu", "resourceFieldRef": {"containerName": "c", "resource": "limits.cpu", "divisor": "1m"}}
        ]))
        .expect("items");
        let payload = collect(&items, &p, 0o644, &Allocatable::new()).expect("collect");
        assert_eq!(payload["name"].data, b"web");
        assert_eq!(payload["name"].mode, 0o644);
        assert_eq!(payload["labels"].mode, 0o600);
        assert_eq!(payload["cpu"].data, b"1500");
        let bad: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "a", "fieldRef": {"fieldPath": "spec.x"}},
            {"path": "b", "fieldRef": {"fieldPath": "spec.y"}}
        ]))
        .expect("items");
        let err = collect(&bad, &p, 0o644, &Allocatable::new()).expect_err("errors");
        assert_eq!(
            err.to_string(),
            "[unsupported fieldPath: spec.x, unsupported fieldPath: spec.y]"
        );
    }
}
