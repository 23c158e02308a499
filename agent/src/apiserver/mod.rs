//! Everything the agent writes to the API server besides the Node and its Lease: pod status, the
//! deletion of terminated pods, mirror pods for static pods, and events.

pub mod events;
pub mod mirror_pods;
pub mod status_sync;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Why the API client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("building the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from a kubeconfig file, with kube's standard loading rules for its contents.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, ClientError> {
    Ok(kube::Client::try_from(config_from_kubeconfig(path).await?)?)
}

/// The client configuration a kubeconfig file gives.
pub async fn config_from_kubeconfig(path: &std::path::Path) -> Result<kube::Config, ClientError> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
        path: path.display().to_string(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| ClientError::Kubeconfig {
            path: path.display().to_string(),
            source,
        })?;
    Ok(config)
}

/// The HTTP status code of an API error, if it is one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Delete options for removing an object for good: grace 0, and only the object with this UID.
pub fn delete_now(uid: &str) -> kube::api::DeleteParams {
    kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(kube::api::Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    }
}
