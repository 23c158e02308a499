//! A kube client whose connections present the current client certificate of a
//! [`SharedIdentity`]: kube's own TLS settings for the server (CA, server name), with the client
//! certificate resolved at each handshake instead of loaded once; and connections made before a
//! rotation are closed at the swap, so that pooled connections and long watches reconnect with
//! the new certificate (what kubelet's rotating transport does).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::CertificateError;
use super::identity::SharedIdentity;

/// A client for `config`'s server that authenticates with `identity`'s current pair (and with
/// the config's other credentials, if any; its own client certificate is ignored).
pub fn rotating_client(
    config: &kube::Config,
    identity: SharedIdentity,
) -> Result<kube::Client, CertificateError> {
    let mut config = config.clone();
    config.auth_info.client_certificate = None;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key = None;
    config.auth_info.client_key_data = None;
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = Arc::new(identity.clone());
    // A resumed TLS session keeps the identity of the handshake it resumes: after a rotation the
    // server would still see the previous certificate. Every connection does a full handshake.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|e| CertificateError::pem(format!("tls-server-name {name:?}"), e))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = builder.enable_http1().wrap_connector(ClosingConnector {
        inner: http,
        identity,
    });
    // HTTP/1.1 has one request per connection at a time: a burst of pod starts (token requests,
    // config maps, status patches) opens many, and each idle one keeps its TLS and HTTP buffers.
    // A few are kept for reuse; the rest close when done.
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .build(connector);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// How many idle connections to the API server are kept for reuse.
const IDLE_CONNECTIONS: usize = 4;

/// Connects with `inner`; each connection ends at the identity's next swap.
#[derive(Debug, Clone)]
struct ClosingConnector<C> {
    inner: C,
    identity: SharedIdentity,
}

impl<C> tower::Service<Uri> for ClosingConnector<C>
where
    C: tower::Service<Uri>,
    C::Future: Send + 'static,
{
    type Response = Closing<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Taken before connecting: a swap during the handshake (made with the old pair) closes it.
        let replaced = Box::pin(self.identity.replaced());
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            Ok(Closing {
                inner: connecting.await?,
                replaced,
                closed: false,
            })
        })
    }
}

/// A connection that reads end-of-stream, and refuses writes, once its identity was swapped.
struct Closing<T> {
    inner: T,
    replaced: Pin<Box<WaitForCancellationFutureOwned>>,
    closed: bool,
}

impl<T> Closing<T> {
    fn is_closed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.replaced.as_mut().poll(cx).is_ready() {
            tracing::debug!("closing an API connection made with the previous client certificate");
            self.closed = true;
        }
        self.closed
    }
}

fn rotated() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed after a client certificate rotation",
    )
}

impl<T: Read + Unpin> Read for Closing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Closing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.is_closed(cx) {
            return Poll::Ready(Err(rotated()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Closing<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
