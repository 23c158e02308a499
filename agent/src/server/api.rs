//! The kubelet port (10250, TLS, authenticated and authorized): what the API server calls for
//! `kubectl logs`, `exec`, `attach`, `port-forward`, plus `/pods`, `/healthz` and `/metrics`.
//!
//! * `/containerLogs/{namespace}/{pod}/{container}` streams the container's CRI log file
//!   ([`super::logs`]) with kubelet's query options (`follow`, `previous`, `tailLines`, …).
//! * `/exec`, `/attach` (`/{namespace}/{pod}[/{uid}]/{container}`) and `/portForward`
//!   (`/{namespace}/{pod}[/{uid}]`) ask the runtime for a streaming URL through CRI and proxy the
//!   client's upgraded connection (SPDY or WebSocket) to it, as the kubelet does since it stopped
//!   redirecting; `/run/...` (POST) runs a command and answers its output.
//! * everything of the read-only port ([`super::read_only_router`]), `/metrics/resource` and
//!   `/metrics/cadvisor` included.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use mk_cri::{CriClient, api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

use super::auth::{Auth, AuthError, PeerCertificate};
use super::logs::{LogError, LogOptions, stream_log};
use super::{ServerState, read_only_router};

#[derive(Clone)]
pub struct ApiState {
    pub base: ServerState,
    pub cri: CriClient,
    /// The configuration the agent runs with (`/configz`).
    pub config: std::sync::Arc<crate::config::KubeletConfiguration>,
}

/// The kubelet port's router; `auth` guards every path.
pub fn api_router(state: ApiState, auth: Auth) -> Router {
    let api = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/exec/{namespace}/{pod}/{container}", any(exec))
        .route("/exec/{namespace}/{pod}/{uid}/{container}", any(exec))
        .route("/attach/{namespace}/{pod}/{container}", any(attach))
        .route("/attach/{namespace}/{pod}/{uid}/{container}", any(attach))
        .route("/portForward/{namespace}/{pod}", any(port_forward))
        .route("/portForward/{namespace}/{pod}/{uid}", any(port_forward))
        .route("/run/{namespace}/{pod}/{container}", post(run))
        .route("/run/{namespace}/{pod}/{uid}/{container}", post(run))
        .with_state(state.clone());
    api.merge(read_only_router(state.base))
        .merge(super::configz::router(&state.config))
        .layer(middleware::from_fn_with_state(auth, authenticate))
}

async fn authenticate(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let certificate = req
        .extensions()
        .get::<PeerCertificate>()
        .cloned()
        .unwrap_or_default();
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.authenticate(&certificate, header).await {
        Ok(user) => user,
        Err(e) => return refuse(&e),
    };
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    if let Err(e) = auth.authorize(&user, &method, &path).await {
        tracing::debug!(user = %user.name, method, path, error = %e, "kubelet API request refused");
        return refuse(&e);
    }
    next.run(req).await
}

fn refuse(error: &AuthError) -> Response {
    let code = match error {
        AuthError::Unauthorized => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
        AuthError::Webhook(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, format!("{error}\n")).into_response()
}

/// An error answer with kubelet's codes.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn find_pod(
    state: &ApiState,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<Pod, Failure> {
    state
        .base
        .status
        .pods()
        .into_iter()
        .find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == namespace
                && p.metadata.name.as_deref() == Some(name)
                && uid.is_none_or(|u| p.metadata.uid.as_deref() == Some(u))
        })
        .ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                format!("pod does not exist: {namespace}/{name}"),
            )
        })
}

/// The runtime ID of `container` in `pod` (its previous instance with `previous`).
fn container_id(pod: &Pod, container: &str, previous: bool) -> Result<String, Failure> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    let statuses = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
                .chain(s.ephemeral_container_statuses.iter().flatten())
        })
        .find(|s| s.name == container)
        .ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not valid for pod {pod_name}"),
            )
        })?;
    let id = if previous {
        statuses
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.container_id.clone())
            .ok_or_else(|| {
                Failure(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container {container:?} in pod {pod_name:?} not found"
                    ),
                )
            })?
    } else {
        statuses.container_id.clone().ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("container {container:?} in pod {pod_name:?} is waiting to start"),
            )
        })?
    };
    // `containerd://<id>`, `docker://<id>`: the runtime's own ID follows the scheme.
    Ok(id
        .split_once("://")
        .map_or(id.clone(), |(_, id)| id.to_owned()))
}

async fn container_logs(
    State(state): State<ApiState>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let pairs: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    // As the kubelet: a value that does not decode is 400, a decoded but invalid one 422.
    let opts = LogOptions::from_query(&pairs).map_err(|e| {
        let code = match e {
            LogError::InvalidOption { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        Failure(code, e.to_string())
    })?;
    let pod = find_pod(&state, &namespace, &pod, None)?;
    let id = container_id(&pod, &container, opts.previous)?;
    let status = state
        .cri
        .container_status(api::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .status
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("container {id} not found")))?;
    let path = std::path::PathBuf::from(status.log_path);
    if let Err(e) = tokio::fs::metadata(&path).await {
        return Err(Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to open log file {}: {e}", path.display()),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let cri = state.cri.clone();
    tokio::spawn(async move {
        let running = || super::logs::container_running(cri.clone(), id.clone());
        if let Err(e) = stream_log(&path, &opts, tx, running).await {
            tracing::debug!(path = %path.display(), error = %e, "container log stream ended");
        }
    });
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::io::Error>));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain")], body).into_response())
}

use futures::StreamExt as _;

/// A streaming option set to "1" or "true".
fn flag(query: &[(String, String)], name: &str) -> bool {
    query
        .iter()
        .any(|(k, v)| k == name && matches!(v.as_str(), "1" | "true" | "True"))
}

/// Which streams an exec or attach asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Streams {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

/// Kubelet's streaming options as the API server sends them when it proxies `pods/exec` and
/// `pods/attach` (`input`, `output`, `error`, `tty`), or as the user-facing API names them (`stdin`,
/// `stdout`, `stderr`), which direct clients of the port use. With a TTY there is no separate
/// stderr (kubelet drops it); at least one stream must be asked for.
fn streams(query: &[(String, String)]) -> Result<Streams, Failure> {
    let tty = flag(query, "tty");
    let streams = Streams {
        stdin: flag(query, "input") || flag(query, "stdin"),
        stdout: flag(query, "output") || flag(query, "stdout"),
        stderr: !tty && (flag(query, "error") || flag(query, "stderr")),
        tty,
    };
    if !(streams.stdin || streams.stdout || streams.stderr) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    Ok(streams)
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The pod (and container) a streaming path names; `uid` only in the `/{uid}/` variants.
#[derive(Debug, serde::Deserialize)]
struct Target {
    namespace: String,
    pod: String,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    container: String,
}

/// The runtime ID of the running container a streaming path names.
fn target_container(state: &ApiState, target: &Target) -> Result<String, Failure> {
    let pod = find_pod(state, &target.namespace, &target.pod, target.uid.as_deref())?;
    container_id(&pod, &target.container, false)
}

async fn exec(
    State(state): State<ApiState>,
    Path(target): Path<Target>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    stream_exec(state, target, parse_query(query), req, true).await
}

async fn attach(
    State(state): State<ApiState>,
    Path(target): Path<Target>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    stream_exec(state, target, parse_query(query), req, false).await
}

/// Exec (`is_exec`) or attach: the runtime's URL, then the proxied upgrade.
async fn stream_exec(
    state: ApiState,
    target: Target,
    query: Vec<(String, String)>,
    req: Request,
    is_exec: bool,
) -> Response {
    let id = match target_container(&state, &target) {
        Ok(id) => id,
        Err(f) => return f.into_response(),
    };
    let Streams {
        stdin,
        stdout,
        stderr,
        tty,
    } = match streams(&query) {
        Ok(s) => s,
        Err(f) => return f.into_response(),
    };
    let url = if is_exec {
        let cmd: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        state
            .cri
            .exec(api::ExecRequest {
                container_id: id,
                cmd,
                tty,
                stdin,
                stdout,
                stderr,
            })
            .await
            .map(|r| r.url)
    } else {
        state
            .cri
            .attach(api::AttachRequest {
                container_id: id,
                stdin,
                tty,
                stdout,
                stderr,
            })
            .await
            .map(|r| r.url)
    };
    match url {
        Ok(url) => proxy_upgrade(&url, req).await,
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn port_forward(
    State(state): State<ApiState>,
    Path(target): Path<Target>,
    req: Request,
) -> Response {
    forward(
        state,
        &target.namespace,
        &target.pod,
        target.uid.as_deref(),
        req,
    )
    .await
}

async fn forward(
    state: ApiState,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    req: Request,
) -> Response {
    let pod = match find_pod(&state, namespace, name, uid) {
        Ok(pod) => pod,
        Err(f) => return f.into_response(),
    };
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let sandboxes = state
        .cri
        .list_pod_sandbox(api::ListPodSandboxRequest {
            filter: Some(api::PodSandboxFilter {
                state: Some(api::PodSandboxStateValue {
                    state: api::PodSandboxState::SandboxReady as i32,
                }),
                label_selector: HashMap::from([(
                    "io.kubernetes.pod.uid".to_owned(),
                    pod_uid.clone(),
                )]),
                ..Default::default()
            }),
        })
        .await;
    let sandbox = match sandboxes {
        Ok(list) => list.items.into_iter().max_by_key(|s| s.created_at),
        Err(e) => return Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let Some(sandbox) = sandbox else {
        return Failure(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} has no running sandbox"),
        )
        .into_response();
    };
    match state
        .cri
        .port_forward(api::PortForwardRequest {
            pod_sandbox_id: sandbox.id,
            port: Vec::new(),
        })
        .await
    {
        Ok(answer) => proxy_upgrade(&answer.url, req).await,
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct RunQuery {
    cmd: Option<String>,
}

async fn run(
    State(state): State<ApiState>,
    Path(target): Path<Target>,
    Query(query): Query<RunQuery>,
) -> Response {
    run_command(state, target, query).await
}

async fn run_command(state: ApiState, target: Target, query: RunQuery) -> Response {
    let id = match target_container(&state, &target) {
        Ok(id) => id,
        Err(f) => return f.into_response(),
    };
    let cmd: Vec<String> = query
        .cmd
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if cmd.is_empty() {
        return Failure(StatusCode::BAD_REQUEST, "cmd is empty".into()).into_response();
    }
    match state
        .cri
        .exec_sync(api::ExecSyncRequest {
            container_id: id,
            cmd,
            timeout: 0,
        })
        .await
    {
        Ok(result) => {
            let mut output = result.stdout;
            output.extend_from_slice(&result.stderr);
            output.into_response()
        }
        Err(e) => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Headers the upgrade needs on its way to the runtime's streaming server.
const FORWARDED: [&str; 7] = [
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Proxies `req` (an upgrade to SPDY or WebSocket) to the runtime's streaming `url`: the same
/// request goes to the runtime; its answer comes back; after a 101 the two connections are
/// joined byte for byte.
async fn proxy_upgrade(url: &str, mut req: Request) -> Response {
    let Some(rest) = url.strip_prefix("http://") else {
        return Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unsupported streaming URL {url}"),
        )
        .into_response();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut backend = match tokio::net::TcpStream::connect(authority).await {
        Ok(tcp) => tcp,
        Err(e) => {
            return Failure(
                StatusCode::BAD_GATEWAY,
                format!("connecting to the runtime's streaming server {authority}: {e}"),
            )
            .into_response();
        }
    };
    let mut head = format!("{} {path} HTTP/1.1\r\nHost: {authority}\r\n", req.method());
    for name in FORWARDED {
        for value in req.headers().get_all(name) {
            if let Ok(value) = value.to_str() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    if let Err(e) = backend.write_all(head.as_bytes()).await {
        return Failure(StatusCode::BAD_GATEWAY, format!("streaming request: {e}")).into_response();
    }
    let (status, headers) = match read_head(&mut backend).await {
        Ok(answer) => answer,
        Err(e) => {
            return Failure(StatusCode::BAD_GATEWAY, format!("streaming answer: {e}"))
                .into_response();
        }
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            (&mut backend).take(1 << 20).read_to_end(&mut body),
        )
        .await;
        let mut response = (status, body).into_response();
        response.headers_mut().extend(headers);
        return response;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => splice(TokioIo::new(upgraded), backend).await,
            Err(e) => tracing::debug!(error = %e, "streaming upgrade from the client failed"),
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    response.headers_mut().extend(headers);
    response
}

/// Copies an upgraded session both ways until the runtime's side ends, then closes the client's
/// (as kubelet's upgrade-aware proxy does): the runtime ends a session once the command has exited
/// and its status was sent, and waiting for the client to close first — as a bidirectional copy
/// does — left `kubectl exec -it` hanging behind the API server's proxy when that proxy waits
/// for us to close. The client closing its side only ends what it sends (stdin).
async fn splice<C>(client: C, backend: tokio::net::TcpStream)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut backend_read, mut backend_write) = backend.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut backend_write).await;
        let _ = backend_write.shutdown().await;
        // Nothing more to send; the session lasts until the runtime ends it.
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut backend_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// Reads an HTTP/1.1 response head byte by byte (the upgraded stream follows it directly).
async fn read_head(tcp: &mut tokio::net::TcpStream) -> std::io::Result<(StatusCode, HeaderMap)> {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\r\n\r\n") {
        raw.push(tcp.read_u8().await?);
        if raw.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    Ok((status, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_ends_when_the_runtime_ends_it_though_the_client_keeps_its_side_open() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let runtime = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut typed = [0u8; 5];
            conn.read_exact(&mut typed).await.expect("stdin");
            conn.write_all(b"exit status").await.expect("status");
            // The runtime closes once the command has exited.
            typed
        });
        let backend = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut user, proxied) = tokio::io::duplex(1024);
        let session = tokio::spawn(splice(proxied, backend));
        user.write_all(b"exit\n").await.expect("type");
        let mut seen = Vec::new();
        // The user's side stays open; it still reads the end of the session.
        tokio::time::timeout(Duration::from_secs(5), user.read_to_end(&mut seen))
            .await
            .expect("the session ended")
            .expect("read");
        assert_eq!(seen, b"exit status");
        assert_eq!(&runtime.await.expect("runtime"), b"exit\n");
        session.await.expect("splice");
    }

    fn pod_with_status(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn container_ids_come_from_the_status_without_their_scheme() {
        let pod = pod_with_status(serde_json::json!({
            "containerStatuses": [{
                "name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
                "containerID": "containerd://abc",
                "lastState": {"terminated": {"exitCode": 1, "containerID": "docker://old"}},
            }, {
                "name": "waiting", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            }],
        }));
        assert_eq!(container_id(&pod, "app", false).ok(), Some("abc".into()));
        assert_eq!(container_id(&pod, "app", true).ok(), Some("old".into()));
        let missing = container_id(&pod, "nope", false).expect_err("unknown container");
        assert_eq!(missing.0, StatusCode::BAD_REQUEST);
        assert!(container_id(&pod, "waiting", false).is_err());
        assert!(container_id(&pod, "waiting", true).is_err());
    }

    #[test]
    fn streaming_flags_accept_kubelets_spellings() {
        let q = vec![
            ("stdin".to_owned(), "1".to_owned()),
            ("tty".to_owned(), "true".to_owned()),
            ("stderr".to_owned(), "0".to_owned()),
        ];
        assert!(flag(&q, "stdin"));
        assert!(flag(&q, "tty"));
        assert!(!flag(&q, "stderr"));
        assert!(!flag(&q, "stdout"));
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn streams_take_the_api_servers_parameters_and_the_user_facing_ones() {
        // What kube-apiserver sends for `kubectl exec -i` (its proxy to the node's port).
        let proxied = query(&[
            ("command", "sh"),
            ("input", "1"),
            ("output", "1"),
            ("error", "1"),
        ]);
        let want = Streams {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        assert_eq!(streams(&proxied).ok(), Some(want));
        let direct = query(&[("stdin", "true"), ("stdout", "1"), ("stderr", "1")]);
        assert_eq!(streams(&direct).ok(), Some(want));
        // A TTY merges stderr into stdout, as kubelet does.
        let tty = query(&[
            ("input", "1"),
            ("output", "1"),
            ("error", "1"),
            ("tty", "1"),
        ]);
        assert_eq!(
            streams(&tty).ok(),
            Some(Streams {
                stderr: false,
                tty: true,
                ..want
            })
        );
        let none = streams(&query(&[("command", "ls"), ("tty", "1")])).expect_err("no stream");
        assert_eq!(none.0, StatusCode::BAD_REQUEST);
    }
}
