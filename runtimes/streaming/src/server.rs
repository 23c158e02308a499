//! The HTTP side: CRI Exec / Attach / PortForward calls store their request and return
//! `http://<addr>/<kind>/<token>`; a client (kubelet, crictl, critest) upgrades that URL to
//! SPDY/3.1 and the session runs on the upgraded connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use tokio::io::DuplexStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::StreamingError;
use crate::cache::{Pending, RequestCache};
use crate::portforward;
use crate::remotecommand::{self, Options, Outcome, Version};
use crate::runtime::{StreamingRuntime, Streams};
use crate::spdy::Connection;
use crate::ws;

/// Where and how the server listens; defaults as containerd's CRI plugin and the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamingConfig {
    /// Listen address; port 0 picks a free one. Default `127.0.0.1:0`: only the local kubelet
    /// (which proxies API server requests) can reach it.
    pub addr: SocketAddr,
    /// The URL prefix handed out; default `http://<bound address>`.
    pub base_url: Option<String>,
    /// How long a URL stays valid (kubelet: 1 minute).
    pub request_ttl: Duration,
    /// How many URLs may be outstanding (kubelet: 1000).
    pub max_in_flight: usize,
    /// How long a client has to open its streams after the upgrade (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// A connection on which the client sends nothing this long is closed (kubelet's
    /// `streamingConnectionIdleTimeout`, 4 h).
    pub stream_idle_timeout: Duration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            request_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
            stream_creation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(4 * 3600),
        }
    }
}

/// A running streaming server.
pub struct StreamingServer {
    cache: Arc<RequestCache>,
    base_url: String,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

struct Shared<R> {
    cache: Arc<RequestCache>,
    runtime: Arc<R>,
    config: StreamingConfig,
}

impl StreamingServer {
    /// Binds `config.addr` and serves sessions through `runtime`.
    pub async fn start<R: StreamingRuntime>(
        config: StreamingConfig,
        runtime: Arc<R>,
    ) -> Result<Self, StreamingError> {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|e| StreamingError::Bind(config.addr, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StreamingError::Bind(config.addr, e))?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_owned();
        let cache = Arc::new(RequestCache::new(config.request_ttl, config.max_in_flight));
        let shared = Arc::new(Shared {
            cache: cache.clone(),
            runtime,
            config,
        });
        let app = Router::new()
            .route("/{kind}/{token}", any(handle::<R>))
            .with_state(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "streaming server failed");
            }
        });
        tracing::info!(%local_addr, "CRI streaming server listening");
        Ok(Self {
            cache,
            base_url,
            local_addr,
            stop: Some(stop),
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL for an exec session (the CRI Exec answer).
    pub fn get_exec(&self, req: &api::ExecRequest) -> Result<api::ExecResponse, StreamingError> {
        if req.cmd.is_empty() {
            return Err(StreamingError::InvalidRequest(
                "cmd must not be empty".into(),
            ));
        }
        let url = self.session_url("exec", Pending::Exec(req.clone()))?;
        Ok(api::ExecResponse { url })
    }

    /// The URL for an attach session (the CRI Attach answer).
    pub fn get_attach(
        &self,
        req: &api::AttachRequest,
    ) -> Result<api::AttachResponse, StreamingError> {
        let url = self.session_url("attach", Pending::Attach(req.clone()))?;
        Ok(api::AttachResponse { url })
    }

    /// Validates an exec or attach request, then stores it.
    fn session_url(&self, kind: &str, request: Pending) -> Result<String, StreamingError> {
        if let Some((container_id, opts)) = request.session() {
            validate_session(container_id, opts)?;
        }
        self.url(kind, request)
    }

    /// The URL for a port-forward session (the CRI PortForward answer).
    pub fn get_port_forward(
        &self,
        req: &api::PortForwardRequest,
    ) -> Result<api::PortForwardResponse, StreamingError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(StreamingError::InvalidRequest(
                "missing required pod_sandbox_id".into(),
            ));
        }
        let url = self.url("portforward", Pending::PortForward(req.clone()))?;
        Ok(api::PortForwardResponse { url })
    }

    fn url(&self, kind: &str, request: Pending) -> Result<String, StreamingError> {
        let token = self.cache.insert(request)?;
        Ok(format!("{}/{kind}/{token}", self.base_url))
    }

    /// Stops accepting connections (sessions already running go on until they end).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kubelet's checks of exec/attach requests.
fn validate_session(container_id: &str, opts: Options) -> Result<(), StreamingError> {
    if container_id.is_empty() {
        return Err(StreamingError::InvalidRequest(
            "missing required container_id".into(),
        ));
    }
    if opts.tty && opts.stderr {
        return Err(StreamingError::InvalidRequest(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !opts.stdin && !opts.stdout && !opts.stderr {
        return Err(StreamingError::InvalidRequest(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

async fn handle<R: StreamingRuntime>(
    State(shared): State<Arc<Shared<R>>>,
    Path((kind, token)): Path<(String, String)>,
    websocket: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    mut req: Request,
) -> Response {
    let Some(pending) = shared.cache.consume(&token) else {
        return (StatusCode::NOT_FOUND, "token not found or expired\n").into_response();
    };
    let matches_kind = matches!(
        (&pending, kind.as_str()),
        (Pending::Exec(_), "exec")
            | (Pending::Attach(_), "attach")
            | (Pending::PortForward(_), "portforward")
    );
    if !matches_kind {
        return (StatusCode::NOT_FOUND, "token not found or expired\n").into_response();
    }
    if let Ok(websocket) = websocket {
        return upgrade_websocket(websocket, pending, shared);
    }
    if !is_spdy_upgrade(req.headers()) {
        return (
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (SPDY/3.1 or websocket)\n",
        )
            .into_response();
    }
    let offered = client_protocols(req.headers());
    let served: &[&'static str] = match pending {
        Pending::PortForward(_) => &[portforward::PROTOCOL],
        _ => &remotecommand::PROTOCOLS,
    };
    let protocol = match negotiate(&offered, served) {
        Ok(protocol) => protocol,
        Err(()) => {
            let message = format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {served:?}\n"
            );
            return (StatusCode::FORBIDDEN, message).into_response();
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let session_shared = shared.clone();
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::warn!(error = %e, "streaming upgrade failed");
                return;
            }
        };
        let config = &session_shared.config;
        let conn = match Connection::new(io, config.stream_idle_timeout) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "SPDY connection setup failed");
                return;
            }
        };
        run_session(conn, pending, protocol.unwrap_or(""), session_shared).await;
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Some(protocol) = protocol {
        headers.insert(PROTOCOL_HEADER, HeaderValue::from_static(protocol));
    }
    response
}

const PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// The runtime's part of an exec or attach session.
type Runner = Box<dyn FnOnce(Streams) -> BoxFuture<'static, Outcome> + Send>;

/// The pipes and the runner of an exec or attach request; `None` for port-forward.
fn remotecommand_runner<R: StreamingRuntime>(
    runtime: Arc<R>,
    pending: &Pending,
) -> Option<(Options, Runner)> {
    let (_, opts) = pending.session()?;
    let runner: Runner = match pending.clone() {
        Pending::Exec(req) => Box::new(move |streams| {
            Box::pin(async move {
                match runtime.exec(&req.container_id, &req.cmd, streams).await {
                    Ok(0) => Outcome::Success,
                    Ok(code) => Outcome::ExitCode(code),
                    Err(e) => Outcome::Error(e.to_string()),
                }
            })
        }),
        Pending::Attach(req) => Box::new(move |streams| {
            Box::pin(async move {
                match runtime.attach(&req.container_id, streams).await {
                    Ok(()) => Outcome::Success,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            })
        }),
        Pending::PortForward(_) => return None,
    };
    Some((opts, runner))
}

/// The runtime's part of one forwarded connection of `sandbox`.
fn forwarder<R: StreamingRuntime>(
    runtime: Arc<R>,
    sandbox: String,
) -> impl Fn(u16, DuplexStream) -> BoxFuture<'static, Result<(), String>> {
    let sandbox = Arc::new(sandbox);
    move |port, pipe| {
        let runtime = runtime.clone();
        let sandbox = sandbox.clone();
        Box::pin(async move {
            runtime
                .port_forward(&sandbox, port, pipe)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

async fn run_session<R: StreamingRuntime>(
    conn: Connection,
    pending: Pending,
    protocol: &str,
    shared: Arc<Shared<R>>,
) {
    let creation_timeout = shared.config.stream_creation_timeout;
    let runtime = shared.runtime.clone();
    if let Some((opts, runner)) = remotecommand_runner(runtime.clone(), &pending) {
        let version = Version::from_name(protocol).unwrap_or(Version::V1);
        remotecommand::serve(conn, version, opts, creation_timeout, runner).await;
    } else if let Pending::PortForward(req) = pending {
        let forward = forwarder(runtime, req.pod_sandbox_id);
        portforward::serve(conn, creation_timeout, forward).await;
    }
}

/// A WebSocket session: `channel.k8s.io` for exec/attach, SPDY tunnelled for port-forward.
fn upgrade_websocket<R: StreamingRuntime>(
    websocket: WebSocketUpgrade,
    pending: Pending,
    shared: Arc<Shared<R>>,
) -> Response {
    let served: &[&'static str] = match pending {
        Pending::PortForward(_) => &[ws::TUNNELING_PROTOCOL],
        _ => &ws::CHANNEL_PROTOCOLS,
    };
    let websocket = websocket.protocols(served.iter().copied());
    let Some(protocol) = websocket
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned)
    else {
        let message = format!(
            "unable to upgrade: unable to negotiate protocol: server supports {served:?}\n"
        );
        return (StatusCode::FORBIDDEN, message).into_response();
    };
    websocket.on_upgrade(move |socket| async move {
        let config = &shared.config;
        let runtime = shared.runtime.clone();
        if let Some((opts, runner)) = remotecommand_runner(runtime.clone(), &pending) {
            ws::serve_channels(socket, &protocol, opts, runner).await;
        } else if let Pending::PortForward(req) = pending {
            let forward = forwarder(runtime, req.pod_sandbox_id);
            ws::serve_tunnel(
                socket,
                config.stream_idle_timeout,
                config.stream_creation_timeout,
                forward,
            )
            .await;
        }
    })
}

fn is_spdy_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("upgrade"));
    let spdy = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("SPDY/3.1"));
    connection_upgrade && spdy
}

/// Every protocol the client offers, in its order (one header per protocol, or comma lists).
fn client_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first offered protocol the server serves; `Ok(None)` for a client offering none (the
/// legacy protocol), `Err` when nothing matches.
fn negotiate(offered: &[String], served: &[&'static str]) -> Result<Option<&'static str>, ()> {
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find_map(|o| served.iter().find(|s| **s == o.as_str()).copied())
        .map(Some)
        .ok_or(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_clients_order_and_allows_legacy_clients() {
        let offered = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &offered(&["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]),
                &remotecommand::PROTOCOLS
            ),
            Ok(Some("v4.channel.k8s.io"))
        );
        assert_eq!(negotiate(&[], &remotecommand::PROTOCOLS), Ok(None));
        assert_eq!(
            negotiate(&offered(&["SPDY/2"]), &[portforward::PROTOCOL]),
            Err(())
        );
        let mut headers = HeaderMap::new();
        headers.append(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        headers.append(
            PROTOCOL_HEADER,
            HeaderValue::from_static("v3.channel.k8s.io, channel.k8s.io"),
        );
        assert_eq!(
            client_protocols(&headers),
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
    }

    #[test]
    fn requests_are_validated_like_the_kubelets() {
        let opts = |stdin, stdout, stderr, tty| Options {
            stdin,
            stdout,
            stderr,
            tty,
        };
        assert!(validate_session("c", opts(false, true, true, false)).is_ok());
        assert!(validate_session("c", opts(true, true, false, true)).is_ok());
        assert!(matches!(
            validate_session("c", opts(false, true, true, true)),
            Err(StreamingError::InvalidRequest(m)) if m.contains("tty and stderr")
        ));
        assert!(validate_session("c", opts(false, false, false, false)).is_err());
        assert!(matches!(
            validate_session("", opts(true, false, false, false)),
            Err(StreamingError::InvalidRequest(m)) if m.contains("container_id")
        ));
    }

    #[test]
    fn upgrade_headers_are_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("spdy/3.1"));
        assert!(is_spdy_upgrade(&headers));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_spdy_upgrade(&headers));
    }
}
