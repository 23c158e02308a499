//! Payloads of configMap and secret volumes (kubelet's `configmap.MakePayload` and
//! `secret.MakePayload`), shared by the projected volume's configMap and secret sources.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Secret};

use super::atomic_writer::{FileProjection, Payload};
use super::error::SetUpError;

/// The files of a configMap: every key (`data` and `binaryData`) when `items` is empty, else the
/// listed keys at their paths. A listed key the configMap lacks is an error unless `optional`.
pub fn configmap_payload(
    items: Option<&[KeyToPath]>,
    config_map: &ConfigMap,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let data = config_map.data.as_ref();
    let binary = config_map.binary_data.as_ref();
    let lookup = |key: &str| -> Option<Vec<u8>> {
        data.and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
            .or_else(|| binary.and_then(|b| b.get(key)).map(|b| b.0.clone()))
    };
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data.into_iter().flatten() {
                payload.insert(k.clone(), FileProjection::new(v.as_bytes(), default_mode));
            }
            for (k, v) in binary.into_iter().flatten() {
                payload.insert(k.clone(), FileProjection::new(v.0.clone(), default_mode));
            }
        }
        Some(items) => {
            for item in items {
                match lookup(&item.key) {
                    Some(content) => {
                        payload.insert(
                            item.path.clone(),
                            FileProjection::new(content, item.mode.unwrap_or(default_mode)),
                        );
                    }
                    None if optional => {}
                    None => return Err(SetUpError::ConfigMapKeyMissing(item.key.clone())),
                }
            }
        }
    }
    Ok(payload)
}

/// The files of a secret, as [`configmap_payload`] (secrets have only `data`).
pub fn secret_payload(
    items: Option<&[KeyToPath]>,
    secret: &Secret,
    default_mode: i32,
    optional: bool,
) -> Result<Payload, SetUpError> {
    let empty = BTreeMap::<String, ByteString>::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let mut payload = Payload::new();
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                payload.insert(k.clone(), FileProjection::new(v.0.clone(), default_mode));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => {
                        payload.insert(
                            item.path.clone(),
                            FileProjection::new(v.0.clone(), item.mode.unwrap_or(default_mode)),
                        );
                    }
                    None if optional => {}
                    None => return Err(SetUpError::SecretKeyMissing(item.key.clone())),
                }
            }
        }
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configmap_all_keys_or_items() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "c"},
            "data": {"a": "1", "b": "2"},
            "binaryData": {"bin": "AAEC"}
        }))
        .expect("cm");
        let all = configmap_payload(None, &cm, 0o644, false).expect("all");
        assert_eq!(all.len(), 3);
        assert_eq!(all["bin"].data, vec![0, 1, 2]);
        assert_eq!(all["a"].mode, 0o644);

        let items: Vec<KeyToPath> = serde_json::from_value(json!([
            {"key": "a", "path": "dir/a.txt", "mode": 0o400},
            {"key": "bin", "path": "b"}
        ]))
        .expect("items");
        let some = configmap_payload(Some(&items), &cm, 0o600, false).expect("items");
        assert_eq!(some.len(), 2);
        assert_eq!(some["dir/a.txt"].mode, 0o400);
        assert_eq!(some["b"].mode, 0o600);

        let missing: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "zzz", "path": "z"}])).expect("items");
        assert_eq!(
            configmap_payload(Some(&missing), &cm, 0o644, false)
                .expect_err("missing key")
                .to_string(),
            "configmap references non-existent config key: zzz"
        );
        assert!(
            configmap_payload(Some(&missing), &cm, 0o644, true)
                .expect("optional")
                .is_empty()
        );
    }

    #[test]
    fn secret_keys() {
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "s"},
            "data": {"password": "aHVudGVyMg=="}
        }))
        .expect("secret");
        let all = secret_payload(None, &s, 0o644, false).expect("all");
        assert_eq!(all["password"].data, b"hunter2");
        let missing: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "user", "path": "u"}])).expect("items");
        assert_eq!(
            secret_payload(Some(&missing), &s, 0o644, false)
                .expect_err("missing")
                .to_string(),
            "references non-existent secret key: user"
        );
    }
}
