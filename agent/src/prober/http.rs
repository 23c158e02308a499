//! The httpGet handler, after kubelet's `pkg/probe/http`: one GET per probe on a fresh
//! connection, HTTPS without certificate verification, redirects followed only on the same host,
//! a 200–399 status is success (a 3xx one with a warning), the body read up to 10 KiB.

use std::sync::Arc;
use std::time::Duration;

use http::header::{
    ACCEPT, CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, LOCATION, USER_AGENT,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use url::{Host, Url};

use super::spec::resolve_port;
use super::tcp::{join_host_port, net_error};
use super::{Outcome, ProbeError};

/// kubelet's limit on the response body it reads (`maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// Go's http client gives up after this many redirects.
const MAX_REDIRECTS: usize = 10;

/// One probe request, built from the pod spec.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub url: Url,
    /// A `Host` header given in `httpHeaders`, which replaces the URL's authority.
    pub host: Option<String>,
    pub headers: HeaderMap,
}

/// kubelet's `NewRequestForHTTPGetAction`: scheme (default HTTP), host (default the pod IP),
/// port by number or name, path, headers, and the default `User-Agent` and `Accept: */*` (an
/// empty `Accept` given by the user removes it).
pub fn build_request(
    action: &HTTPGetAction,
    container: &Container,
    pod_ip: Option<&str>,
    user_agent: &str,
) -> Result<HttpRequest, ProbeError> {
    let scheme = action
        .scheme
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("HTTP")
        .to_ascii_lowercase();
    let host = match action.host.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => pod_ip
            .filter(|ip| !ip.is_empty())
            .ok_or(ProbeError::NoPodIp)?,
    };
    let port = resolve_port(&action.port, container)?;
    let path = action.path.as_deref().unwrap_or("");
    let slash = if path.starts_with('/') { "" } else { "/" };
    let text = format!("{scheme}://{}{slash}{path}", join_host_port(host, port));
    let url = Url::parse(&text).map_err(|source| ProbeError::InvalidUrl { url: text, source })?;

    let mut headers = HeaderMap::new();
    for h in action.http_headers.iter().flatten() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ProbeError::InvalidHeader {
                name: h.name.clone(),
            })?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| ProbeError::InvalidHeader {
            name: h.name.clone(),
        })?;
        headers.append(name, value);
    }
    if !headers.contains_key(USER_AGENT)
        && let Ok(value) = HeaderValue::from_str(user_agent)
    {
        headers.insert(USER_AGENT, value);
    }
    match headers.get(ACCEPT) {
        None => {
            headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        }
        Some(v) if v.is_empty() => {
            headers.remove(ACCEPT);
        }
        Some(_) => {}
    }
    let host_header = headers
        .remove(HOST)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .filter(|h| !h.is_empty());
    Ok(HttpRequest {
        url,
        host: host_header,
        headers,
    })
}

/// kubelet's verdict on a response: 200–299 success with the body as output, 300–399 success
/// with a warning (a redirect not followed), anything else a failure that, as in kubelet, does
/// not quote the body.
pub fn classify(status: u16, body: &str) -> Outcome {
    match status {
        200..=299 => Outcome::Success(body.to_string()),
        300..=399 => Outcome::Warning(format!("Probe terminated redirects, Response body: {body}")),
        _ => Outcome::Failure(format!("HTTP probe failed with statuscode: {status}")),
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Runs the request within `timeout` (which covers connecting, redirects and the body).
pub async fn probe(
    request: &HttpRequest,
    timeout: Duration,
    tls: &TlsConnector,
) -> Result<Outcome, ProbeError> {
    match tokio::time::timeout(timeout, follow(request, tls)).await {
        Ok(outcome) => outcome,
        Err(_) => Ok(Outcome::Failure(format!(
            "Get {:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
            request.url.as_str()
        ))),
    }
}

async fn follow(request: &HttpRequest, tls: &TlsConnector) -> Result<Outcome, ProbeError> {
    let first_host = request.url.host_str().map(str::to_owned);
    let mut url = request.url.clone();
    let mut host = request.host.clone();
    let mut redirects = 0;
    loop {
        let reply = match send(&url, host.as_deref(), &request.headers, tls).await {
            Ok(reply) => reply,
            Err(Sent::Failed(message)) => {
                return Ok(Outcome::Failure(format!(
                    "Get {:?}: {message}",
                    url.as_str()
                )));
            }
            Err(Sent::Error(e)) => return Err(e),
        };
        let location = reply.location.filter(|_| is_redirect(reply.status));
        let Some(location) = location else {
            return Ok(classify(reply.status, &reply.body));
        };
        let next = match url.join(&location) {
            Ok(next) => next,
            Err(e) => {
                return Ok(Outcome::Failure(format!(
                    "Get {:?}: failed to parse Location header {location:?}: {e}",
                    url.as_str()
                )));
            }
        };
        // kubelet does not follow a redirect to another host: the 3xx answer is the result.
        if next.host_str() != first_host.as_deref() {
            tracing::debug!(from = %url, to = %next, "probe redirect to another host not followed");
            return Ok(classify(reply.status, &reply.body));
        }
        if redirects >= MAX_REDIRECTS {
            return Ok(Outcome::Failure(format!(
                "Get {:?}: stopped after {MAX_REDIRECTS} redirects",
                next.as_str()
            )));
        }
        redirects += 1;
        // A custom Host survives only relative redirects, as in Go's client.
        if Url::parse(&location).is_ok() {
            host = None;
        }
        url = next;
    }
}

struct Reply {
    status: u16,
    location: Option<String>,
    body: String,
}

enum Sent {
    /// The request failed on the network or the protocol: a probe failure, with Go's words.
    Failed(String),
    Error(ProbeError),
}

async fn send(
    url: &Url,
    host_header: Option<&str>,
    headers: &HeaderMap,
    tls: &TlsConnector,
) -> Result<Reply, Sent> {
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            return Err(Sent::Failed(format!(
                "unsupported protocol scheme {other:?}"
            )));
        }
    };
    let (host, server_name) = match url.host() {
        Some(Host::Domain(d)) => (
            d.to_string(),
            ServerName::try_from(d.to_string()).map_err(|e| Sent::Failed(e.to_string()))?,
        ),
        Some(Host::Ipv4(ip)) => (ip.to_string(), ServerName::from(std::net::IpAddr::V4(ip))),
        Some(Host::Ipv6(ip)) => (ip.to_string(), ServerName::from(std::net::IpAddr::V6(ip))),
        None => return Err(Sent::Failed("http: no Host in request URL".into())),
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let authority = join_host_port(&host, port);
    let stream = TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| Sent::Failed(format!("dial tcp {authority}: {}", net_error(&e))))?;
    let _ = stream.set_nodelay(true);

    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let mut builder = http::Request::get(target).header(HOST, host_header.unwrap_or(&authority));
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    // Go's prober transport disables keep-alives and compression.
    let request = builder
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Sent::Error(ProbeError::Http(e.to_string())))?;

    if https {
        let stream = tls
            .connect(server_name, stream)
            .await
            .map_err(|e| Sent::Failed(format!("tls: {e}")))?;
        exchange(stream, request).await
    } else {
        exchange(stream, request).await
    }
}

/// Aborts the connection driver when the exchange ends or is cancelled by the timeout.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<S>(io: S, request: http::Request<Empty<Bytes>>) -> Result<Reply, Sent>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Sent::Failed(e.to_string()))?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| Sent::Failed(e.to_string()))?;
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while data.len() < MAX_BODY {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    data.extend_from_slice(chunk);
                }
            }
            Some(Err(e)) => {
                return Err(Sent::Error(ProbeError::Http(format!(
                    "reading the response body: {e}"
                ))));
            }
        }
    }
    data.truncate(MAX_BODY);
    Ok(Reply {
        status,
        location,
        body: String::from_utf8_lossy(&data).into_owned(),
    })
}

/// A verifier that accepts any certificate (kubelet's `InsecureSkipVerify`) but still checks
/// the handshake signatures.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client for HTTPS probes: no certificate verification, HTTP/1.1.
pub fn insecure_tls() -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests;
