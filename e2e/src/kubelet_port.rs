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

/// `GET path` on the kubelet port over a fresh connection: the status code and the body (a chunked
/// body is put back together).
pub async fn get(
    agent: &Agent,
    identity: Option<&ClientIdentity>,
    path: &str,
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connect(agent, identity).await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    // A connection closed without close_notify is fine here: the body is complete by then; an
    // answer that never came is "no status line" below.
    let limit = crate::periods::allow(crate::periods::work::CRI_CALL * 4);
    let _ = tokio::time::timeout(limit, tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in the answer to GET {path}: {text:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
