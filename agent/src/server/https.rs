//! Serving a router over TLS with HTTP/1.1 upgrades (exec, attach and port-forward need them),
//! each request carrying the connection's verified client certificate as a [`PeerCertificate`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::auth::PeerCertificate;
use super::tls::certificate_user;

/// Accepts TLS connections on `listener` until `cancel`; every request gets the connection's
/// client certificate user as an extension.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    cancel: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "kubelet port: accept failed");
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(serve_connection(acceptor, tcp, peer, router));
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
) {
    let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "kubelet port: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let certificate = PeerCertificate(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(certificate_user),
    );
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(certificate.clone());
        router.clone().oneshot(req.map(axum::body::Body::new))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "kubelet port: connection ended with an error");
    }
}
