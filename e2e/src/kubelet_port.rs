//! Clients of the agent's kubelet port (TLS with client-certificate authentication) for the tests.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::client::TlsStream;

use crate::Agent;

/// A CA and a client certificate it signed (CN = user, O = group).
pub struct ClientIdentity {
    /// The CA, for the agent's `authentication.x509.clientCAFile`.
    pub ca_pem: String,
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

pub fn client_identity(user: &str, group: &str) -> Result<ClientIdentity> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "e2e-ca");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, user);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, group);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ClientIdentity {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key_der: key.serialize_der(),
    })
}

/// A TLS connection to the agent's kubelet port, trusting the certificate it made for itself,
/// presenting `identity` when given.
pub async fn connect(
    agent: &Agent,
    identity: Option<&ClientIdentity>,
) -> Result<TlsStream<tokio::net::TcpStream>> {
    let serving = agent.dir.path().join("root/pki/kubelet.crt");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&serving).context("the agent's serving cert")? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match identity {
        Some(id) => builder.with_client_auth_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::try_from(id.key_der.clone()).map_err(anyhow::Error::msg)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", agent.kubelet_port)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?)
}
