//! The node's identity as the kubelet keeps it: the client certificate got through TLS bootstrap
//! (`--bootstrap-kubeconfig`), its rotation (`rotateCertificates`), and the kubelet port's serving
//! certificate from a `kubernetes.io/kubelet-serving` request (`serverTLSBootstrap`).
//!
//! - [`csr`]: keys and certificate requests (pure).
//! - [`store`]: the files in the cert dir and the kubeconfig written after bootstrap.
//! - [`request`]: creating a CertificateSigningRequest and waiting for its certificate.
//! - [`bootstrap`]: kubelet's `LoadClientCert`, run once before the agent starts.
//! - [`manager`]: renewal at a random point of a certificate's lifetime.
//! - [`identity`]: the current certificate and key, swappable while connections use them.
//! - [`client`]: a kube client that presents the current client certificate.

pub mod bootstrap;
pub mod client;
pub mod csr;
pub mod identity;
pub mod manager;
pub mod request;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use bootstrap::{BOOTSTRAP_WAIT, Bootstrap};
use csr::Template;
use identity::SharedIdentity;
use manager::{RENEWAL_WAIT, Rotation};
use store::{CLIENT_PREFIX, CertStore, Pair, SERVER_PREFIX};

/// Why a certificate could not be had, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("generating a key or certificate request: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {reason}")]
    KubeconfigContent { path: PathBuf, reason: String },
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("building the API client: {0}")]
    Client(#[from] crate::apiserver::ClientError),
    #[error("certificate signing request {name} was denied: {reason}: {message}")]
    Denied {
        name: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name} failed: {reason}: {message}")]
    Failed {
        name: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name} was deleted before it was issued")]
    Deleted { name: String },
    #[error(
        "certificate signing request {name} was not approved and issued within {}",
        humantime::format_duration(*.after)
    )]
    Timeout { name: String, after: Duration },
    #[error(
        "certificate signing request {name} exists but is not for this key and signer ({reason})"
    )]
    Incompatible { name: String, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl CertificateError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    fn pem(what: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Self::Pem {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Where the node's identity comes from (`--kubeconfig`, `--bootstrap-kubeconfig`, `--cert-dir`,
/// `rotateCertificates`).
#[derive(Debug, Clone)]
pub struct IdentityOptions {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub node_name: String,
    pub rotate: bool,
}

/// The agent's API client: bootstrap first when a bootstrap kubeconfig is given; with rotation,
/// a client that presents the current client certificate and the task that renews it.
pub async fn api_client(
    options: &IdentityOptions,
    cancel: &CancellationToken,
) -> Result<kube::Client, CertificateError> {
    if let Some(bootstrap_kubeconfig) = &options.bootstrap_kubeconfig {
        Bootstrap {
            kubeconfig: options.kubeconfig.clone(),
            bootstrap_kubeconfig: bootstrap_kubeconfig.clone(),
            cert_dir: options.cert_dir.clone(),
            node_name: options.node_name.clone(),
            wait_timeout: BOOTSTRAP_WAIT,
        }
        .load_client_cert()
        .await?;
    }
    if !options.rotate {
        return Ok(crate::apiserver::client_from_kubeconfig(&options.kubeconfig).await?);
    }
    let config = crate::apiserver::config_from_kubeconfig(&options.kubeconfig).await?;
    let store = CertStore::new(&options.cert_dir, CLIENT_PREFIX);
    let pair = match store.current()? {
        Some(pair) => pair,
        None => kubeconfig_pair(&config, &options.kubeconfig)?,
    };
    let identity = SharedIdentity::new(Some(pair.certified_key()?));
    let client = client::rotating_client(&config, identity.clone())?;
    let fallback = match &options.bootstrap_kubeconfig {
        Some(path) => Some(crate::apiserver::client_from_kubeconfig(path).await?),
        None => None,
    };
    let rotation = Rotation {
        template: Template::client(&options.node_name),
        store,
        identity,
        client: client.clone(),
        fallback,
        validity: Some(pair.validity),
        wait_timeout: RENEWAL_WAIT,
    };
    tokio::spawn(rotation.run(cancel.clone()));
    Ok(client)
}

/// The kubelet port's serving identity with `serverTLSBootstrap`: the stored pair if still
/// valid (none until one is issued), renewed through `kubernetes.io/kubelet-serving` requests
/// for `alt_names`.
pub fn serving_identity(
    options: &IdentityOptions,
    client: kube::Client,
    alt_names: &[String],
    cancel: &CancellationToken,
) -> Result<SharedIdentity, CertificateError> {
    let store = CertStore::new(&options.cert_dir, SERVER_PREFIX);
    let current = store
        .current()?
        .filter(|pair| pair.validity.contains(SystemTime::now()));
    let identity = SharedIdentity::new(match &current {
        Some(pair) => Some(pair.certified_key()?),
        None => None,
    });
    let rotation = Rotation {
        template: Template::serving(&options.node_name, alt_names),
        store,
        identity: identity.clone(),
        client,
        fallback: None,
        validity: current.map(|pair| pair.validity),
        wait_timeout: RENEWAL_WAIT,
    };
    tokio::spawn(rotation.run(cancel.clone()));
    Ok(identity)
}

/// The client certificate and key a kubeconfig names (files or inline data).
fn kubeconfig_pair(config: &kube::Config, path: &Path) -> Result<Pair, CertificateError> {
    use base64::Engine;
    use secrecy::ExposeSecret;
    let what = path.display().to_string();
    let auth = &config.auth_info;
    let read = |file: &String| std::fs::read(file).map_err(CertificateError::io(file));
    let decode = |data: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| CertificateError::pem(&what, e))
    };
    let cert = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => decode(data)?,
        (None, Some(file)) => read(file)?,
        (None, None) => {
            return Err(CertificateError::KubeconfigContent {
                path: path.to_owned(),
                reason: "rotateCertificates needs a client certificate in the kubeconfig".into(),
            });
        }
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => decode(data.expose_secret())?,
        (None, Some(file)) => read(file)?,
        (None, None) => {
            return Err(CertificateError::KubeconfigContent {
                path: path.to_owned(),
                reason: "rotateCertificates needs a client key in the kubeconfig".into(),
            });
        }
    };
    let mut pem = cert;
    pem.push(b'\n');
    pem.extend_from_slice(&key);
    Pair::from_pem(&pem, &what)
}
