//! The kubelet port's TLS: the serving certificate from `tlsCertFile` / `tlsPrivateKeyFile`; else,
//! with `serverTLSBootstrap`, the current one issued through a CertificateSigningRequest (handshakes
//! fail until there is one); else — as the kubelet does — a self-signed one kept in
//! `<cert dir>/kubelet.crt` and `kubelet.key` (made once, reused after restarts); client
//! certificates are asked for and, with
//! `authentication.x509.clientCAFile`, verified (a client without one may still authenticate
//! another way).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating a self-signed serving certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Where the serving certificate comes from.
#[derive(Clone)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Where a self-signed pair is kept when no files are given.
    pub cert_dir: PathBuf,
    /// The names and addresses a self-signed certificate is made for.
    pub hostnames: Vec<String>,
    pub client_ca_file: Option<PathBuf>,
    /// The issued serving certificate (`serverTLSBootstrap`), used when no files are given.
    pub issued: Option<Arc<dyn ResolvesServerCert>>,
}

fn pem_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| pem_error(path, e))
}

/// The certificate and key files to serve: the configured ones, or a self-signed pair in the
/// cert dir (created when missing).
fn serving_files(settings: &TlsSettings) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        return Ok((cert.clone(), key.clone()));
    }
    let cert = settings.cert_dir.join("kubelet.crt");
    let key = settings.cert_dir.join("kubelet.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let generated = rcgen::generate_simple_self_signed(settings.hostnames.clone())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, content: String| {
        std::fs::create_dir_all(&settings.cert_dir)
            .and_then(|()| std::fs::write(path, content))
            .map_err(|source| TlsError::Write {
                path: path.to_owned(),
                source,
            })
    };
    write(&key, generated.signing_key.serialize_pem())?;
    restrict(&key)?;
    write(&cert, generated.cert.pem())?;
    tracing::info!(cert = %cert.display(), names = ?settings.hostnames, "generated a self-signed serving certificate");
    Ok((cert, key))
}

fn restrict(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        TlsError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// The server's TLS configuration.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let explicit = settings.cert_file.is_some() && settings.key_file.is_some();
    let resolver: Arc<dyn ResolvesServerCert> = match &settings.issued {
        Some(issued) if !explicit => issued.clone(),
        _ => {
            let (cert_path, key_path) = serving_files(settings)?;
            let certs = read_certs(&cert_path)?;
            let key = read_key(&key_path)?;
            let key = CertifiedKey::from_der(certs, key, &provider)
                .map_err(|e| TlsError::Config(e.to_string()))?;
            Arc::new(SingleCertAndKey::from(key))
        }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &settings.client_ca_file {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| pem_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The user a verified client certificate names: its common name, and its organizations as
/// groups (as Kubernetes' x509 authenticator reads them).
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    Some((name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = TlsSettings {
            cert_file: None,
            key_file: None,
            cert_dir: dir.path().join("pki"),
            hostnames: vec!["node-a".into(), "127.0.0.1".into()],
            client_ca_file: None,
            issued: None,
        };
        server_config(&settings).expect("config");
        let cert = std::fs::read(dir.path().join("pki/kubelet.crt")).expect("cert");
        server_config(&settings).expect("config again");
        assert_eq!(
            std::fs::read(dir.path().join("pki/kubelet.crt")).expect("cert"),
            cert
        );
        let missing = TlsSettings {
            cert_file: Some(dir.path().join("nope.crt")),
            key_file: Some(dir.path().join("nope.key")),
            ..settings
        };
        assert!(matches!(
            server_config(&missing),
            Err(TlsError::Read { .. })
        ));
    }

    #[test]
    fn client_certificates_name_user_and_groups() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver-kubelet-client");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_user(cert.der()),
            Some((
                "kube-apiserver-kubelet-client".to_owned(),
                vec!["system:masters".to_owned()]
            ))
        );
    }
}
