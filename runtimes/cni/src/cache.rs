//! The result cache: what ADD attached (the network config, the arguments, the result) in
//! libcni's format, `<cache dir>/results/<network>-<container id>-<ifname>`, so that DEL gets the
//! ADD result as `prevResult` and a restarted runtime can read the pod IP back.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::NetworkConfigList;
use crate::error::CniError;
use crate::result::CniResult;

/// libcni's cache format marker.
const KIND: &str = "cniCacheV1";

/// One cached attachment of a container to a network.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    /// The network as it was configured at ADD time.
    pub network: NetworkConfigList,
    pub container_id: String,
    pub if_name: String,
    /// The `CNI_ARGS` pairs of the ADD.
    pub cni_args: Vec<(String, String)>,
    /// The capability arguments of the ADD (`portMappings`, `bandwidth`, …).
    pub capability_args: Map<String, Value>,
    /// The result of the ADD.
    pub result: Option<CniResult>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    /// The network config list's JSON, base64 (Go's encoding of a `[]byte`).
    config: String,
    #[serde(rename = "ifName")]
    if_name: String,
    #[serde(rename = "networkName")]
    network_name: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// The cache file of an attachment.
pub fn cache_path(cache_dir: &Path, network: &str, container_id: &str, if_name: &str) -> PathBuf {
    cache_dir
        .join("results")
        .join(format!("{network}-{container_id}-{if_name}"))
}

/// Writes an attachment's cache file (atomically: a temporary file renamed over it).
pub(crate) async fn write(cache_dir: &Path, entry: &CachedAttachment) -> Result<(), CniError> {
    let path = cache_path(
        cache_dir,
        &entry.network.name,
        &entry.container_id,
        &entry.if_name,
    );
    let wire = Wire {
        kind: KIND.into(),
        container_id: entry.container_id.clone(),
        config: STANDARD.encode(entry.network.bytes()),
        if_name: entry.if_name.clone(),
        network_name: entry.network.name.clone(),
        cni_args: entry
            .cni_args
            .iter()
            .map(|(k, v)| [k.clone(), v.clone()])
            .collect(),
        capability_args: entry.capability_args.clone(),
        result: entry.result.as_ref().map(|r| r.raw().clone()),
    };
    let bytes = serde_json::to_vec(&wire)
        .map_err(|e| CniError::io("encoding a CNI cache entry", std::io::Error::other(e)))?;
    let dir = cache_dir.join("results");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| CniError::io(format!("creating {}", dir.display()), e))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    tokio::fs::write(&tmp, &bytes)
        .await
        .map_err(|e| CniError::io(format!("writing {}", tmp.display()), e))?;
    tokio::fs::rename(&tmp, &path).await.map_err(|e| {
        CniError::io(
            format!("renaming {} to {}", tmp.display(), path.display()),
            e,
        )
    })
}

/// Reads an attachment's cache file; None when there is none.
pub(crate) async fn read(
    cache_dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<Option<CachedAttachment>, CniError> {
    let path = cache_path(cache_dir, network, container_id, if_name);
    let bytes = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CniError::io(format!("reading {}", path.display()), e)),
    };
    let invalid = |reason: String| CniError::Cache {
        path: path.clone(),
        reason,
    };
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if wire.kind != KIND {
        return Err(invalid(format!("unknown kind {:?}", wire.kind)));
    }
    let config = STANDARD
        .decode(wire.config.as_bytes())
        .map_err(|e| invalid(format!("config is not base64: {e}")))?;
    let network = NetworkConfigList::from_conflist(&config, &path.display().to_string())
        .map_err(|e| invalid(e.to_string()))?;
    let result = wire
        .result
        .map(CniResult::from_value)
        .transpose()
        .map_err(|e| invalid(format!("result: {e}")))?;
    Ok(Some(CachedAttachment {
        network,
        container_id: wire.container_id,
        if_name: wire.if_name,
        cni_args: wire.cni_args.into_iter().map(|[k, v]| (k, v)).collect(),
        capability_args: wire.capability_args,
        result,
    }))
}

/// Removes an attachment's cache file; absent is fine.
pub(crate) async fn remove(
    cache_dir: &Path,
    network: &str,
    container_id: &str,
    if_name: &str,
) -> Result<(), CniError> {
    let path = cache_path(cache_dir, network, container_id, if_name);
    match tokio::fs::remove_file(&path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_round_trip_in_libcni_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let network = NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
            "x",
        )
        .expect("valid");
        let result =
            CniResult::from_slice(br#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#)
                .expect("result");
        let mut caps = Map::new();
        caps.insert("portMappings".into(), serde_json::json!([]));
        let entry = CachedAttachment {
            network,
            container_id: "abc".into(),
            if_name: "eth0".into(),
            cni_args: vec![("K8S_POD_NAME".into(), "web".into())],
            capability_args: caps,
            result: Some(result),
        };
        write(dir.path(), &entry).await.expect("write");
        let path = cache_path(dir.path(), "pods", "abc", "eth0");
        assert!(path.ends_with("results/pods-abc-eth0"), "{path:?}");
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(on_disk["kind"], "cniCacheV1");
        assert_eq!(on_disk["containerId"], "abc");
        assert_eq!(on_disk["networkName"], "pods");
        assert_eq!(on_disk["cniArgs"][0][1], "web");
        assert_eq!(
            read(dir.path(), "pods", "abc", "eth0").await.expect("read"),
            Some(entry)
        );
        assert_eq!(
            read(dir.path(), "pods", "other", "eth0")
                .await
                .expect("read"),
            None
        );
        remove(dir.path(), "pods", "abc", "eth0")
            .await
            .expect("remove");
        remove(dir.path(), "pods", "abc", "eth0")
            .await
            .expect("remove twice");
        assert_eq!(
            read(dir.path(), "pods", "abc", "eth0").await.expect("read"),
            None
        );

        std::fs::write(&path, "{").expect("write");
        let err = read(dir.path(), "pods", "abc", "eth0")
            .await
            .expect_err("corrupt");
        assert!(err.to_string().contains("pods-abc-eth0"), "{err}");
    }
}
