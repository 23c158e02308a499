//! Whole sessions through the HTTP server, the SPDY framing and the protocols, against a runtime
//! that echoes.

use std::sync::Arc;

use k8s_cri::v1 as api;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::client::{SessionInput, forward_once, run_session};
use crate::{StreamingConfig, StreamingRuntime, StreamingServer, Streams};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

/// exec `echo-stdin CODE`: stdin → stdout, "to stderr" → stderr, exit CODE; exec `fail`: an
/// error; `tty-size`: prints the first terminal size. attach: "attached\n" then stdin → stdout.
/// port-forward: answers "port P got <request>"; port 13 fails.
struct Echo;

async fn copy_stdin(streams: &mut Streams) -> Vec<u8> {
    let mut input = Vec::new();
    if let Some(stdin) = streams.stdin.as_mut() {
        let _ = stdin.read_to_end(&mut input).await;
    }
    input
}

async fn write(pipe: &mut Option<DuplexStream>, data: &[u8]) {
    if let Some(pipe) = pipe.as_mut() {
        let _ = pipe.write_all(data).await;
    }
}

impl StreamingRuntime for Echo {
    type Error = FakeError;

    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        mut streams: Streams,
    ) -> Result<i32, FakeError> {
        match cmd.first().map(String::as_str) {
            Some("echo-stdin") => {
                let input = copy_stdin(&mut streams).await;
                write(&mut streams.stdout, &input).await;
                write(
                    &mut streams.stderr,
                    format!("to stderr of {container_id}").as_bytes(),
                )
                .await;
                Ok(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(0))
            }
            Some("tty-size") => {
                let size = match streams.resize.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => None,
                };
                let line = format!("tty={} size={size:?}", streams.tty);
                write(&mut streams.stdout, line.as_bytes()).await;
                Ok(0)
            }
            _ => Err(FakeError(format!("cannot run {cmd:?}"))),
        }
    }

    async fn attach(&self, _container_id: &str, mut streams: Streams) -> Result<(), FakeError> {
        write(&mut streams.stdout, b"attached\n").await;
        let input = copy_stdin(&mut streams).await;
        write(&mut streams.stdout, &input).await;
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: DuplexStream,
    ) -> Result<(), FakeError> {
        if port == 13 {
            return Err(FakeError("connection refused".into()));
        }
        let mut request = Vec::new();
        let _ = stream.read_to_end(&mut request).await;
        let answer = format!(
            "{pod_sandbox_id} port {port} got {}",
            String::from_utf8_lossy(&request)
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
        Ok(())
    }
}

async fn server() -> StreamingServer {
    StreamingServer::start(StreamingConfig::default(), Arc::new(Echo))
        .await
        .expect("server starts")
}

fn exec(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> api::ExecRequest {
    api::ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout,
        stderr,
        tty,
    }
}

fn status(error: &str) -> serde_json::Value {
    serde_json::from_str(error).expect("error stream is a JSON status")
}

#[tokio::test]
async fn exec_carries_all_pipes_and_reports_the_exit_code() {
    let server = server().await;
    let url = server
        .get_exec(&exec(&["echo-stdin", "3"], true, true, true, false))
        .expect("url")
        .url;
    assert!(url.starts_with(&format!("http://{}/exec/", server.local_addr())));
    let input = SessionInput {
        stdin: Some(b"hello over spdy".repeat(5000)),
        stdout: true,
        stderr: true,
        tty: false,
    };
    let out = run_session(&url, input).await.expect("session");
    assert_eq!(out.stdout, b"hello over spdy".repeat(5000));
    assert_eq!(out.stderr, b"to stderr of c1");
    let status = status(&out.error);
    assert_eq!(status["status"], "Failure");
    assert_eq!(status["reason"], "NonZeroExitCode");
    assert_eq!(status["details"]["causes"][0]["message"], "3");

    // Used once: the same URL is refused afterwards.
    let again = run_session(&url, SessionInput::default()).await;
    assert!(
        matches!(&again, Err(crate::StreamingError::Client(m)) if m.contains("404")),
        "{again:?}"
    );
}

#[tokio::test]
async fn exec_success_tty_resize_and_runtime_errors() {
    let server = server().await;
    let url = server
        .get_exec(&exec(&["echo-stdin", "0"], false, true, false, false))
        .expect("url")
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdout: true,
            ..Default::default()
        },
    )
    .await
    .expect("session");
    assert_eq!(status(&out.error)["status"], "Success");

    let url = server
        .get_exec(&exec(&["tty-size"], true, true, false, true))
        .expect("url")
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdin: Some(Vec::new()),
            stdout: true,
            stderr: false,
            tty: true,
        },
    )
    .await
    .expect("session");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tty=true size=Some(TerminalSize { width: 80, height: 24 })"
    );

    let url = server
        .get_exec(&exec(&["nope"], false, true, false, false))
        .expect("url")
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdout: true,
            ..Default::default()
        },
    )
    .await
    .expect("session");
    let status = status(&out.error);
    assert_eq!(status["reason"], "InternalError");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot run")),
        "{status}"
    );
}

#[tokio::test]
async fn attach_streams_until_stdin_closes() {
    let server = server().await;
    let url = server
        .get_attach(&api::AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .expect("url")
        .url;
    let out = run_session(
        &url,
        SessionInput {
            stdin: Some(b"echo hello\n".to_vec()),
            stdout: true,
            ..Default::default()
        },
    )
    .await
    .expect("session");
    assert_eq!(out.stdout, b"attached\necho hello\n");
    assert_eq!(status(&out.error)["status"], "Success");
}

#[tokio::test]
async fn port_forward_connects_pairs_and_reports_failures() {
    let server = server().await;
    let request = api::PortForwardRequest {
        pod_sandbox_id: "pod1".into(),
        port: vec![8080],
    };
    let url = server.get_port_forward(&request).expect("url").url;
    let (data, error) = forward_once(&url, 8080, b"GET /").await.expect("forward");
    assert_eq!(String::from_utf8_lossy(&data), "pod1 port 8080 got GET /");
    assert_eq!(error, "");

    let url = server.get_port_forward(&request).expect("url").url;
    let (data, error) = forward_once(&url, 13, b"x").await.expect("forward");
    assert!(data.is_empty());
    assert!(error.contains("error forwarding port 13"), "{error}");
    assert!(error.contains("connection refused"), "{error}");
}

#[tokio::test]
async fn plain_http_and_bad_requests_are_refused() {
    let server = server().await;
    assert!(
        server
            .get_exec(&exec(&["x"], false, false, true, true))
            .is_err()
    );
    assert!(
        server
            .get_exec(&exec(&[], false, true, false, false))
            .is_err()
    );
    assert!(
        server
            .get_port_forward(&api::PortForwardRequest::default())
            .is_err()
    );
    let url = server
        .get_exec(&exec(&["echo-stdin"], false, true, false, false))
        .expect("url")
        .url;
    let addr = server.local_addr();
    let path = url.trim_start_matches(&format!("http://{addr}"));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("missing upgrade headers"), "{answer}");
}

mod websocket {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::{Bytes, Message};

    use super::*;
    use crate::spdy::{Connection, Headers, Role};

    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(url: &str, protocol: &str) -> Socket {
        let mut request = url
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocol.parse().expect("header value"),
        );
        let (socket, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket upgrade");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok()),
            Some(protocol)
        );
        socket
    }

    /// Everything received per channel until the server closes.
    async fn drain(socket: &mut Socket, base64: bool) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Binary(data) if !base64 => {
                    got.push((data[0], data[1..].to_vec()));
                }
                Message::Text(text) if base64 => {
                    use base64::Engine;
                    let text = text.as_str();
                    let payload = base64::engine::general_purpose::STANDARD
                        .decode(&text[1..])
                        .expect("base64");
                    got.push((text.as_bytes()[0] - b'0', payload));
                }
                Message::Close(frame) => {
                    // A normal closure, which client-go reads as the end of every channel.
                    let code = frame.map(|f| u16::from(f.code));
                    assert_eq!(code, Some(1000), "close frame");
                    break;
                }
                _ => {}
            }
        }
        got
    }

    fn joined(got: &[(u8, Vec<u8>)], channel: u8) -> Vec<u8> {
        got.iter()
            .filter(|(c, _)| *c == channel)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }

    #[tokio::test]
    async fn exec_over_v5_channels_with_the_close_signal() {
        let server = server().await;
        let url = server
            .get_exec(&exec(&["echo-stdin", "4"], true, true, true, false))
            .expect("url")
            .url;
        let mut socket = connect(&url, "v5.channel.k8s.io").await;
        // The server says it is ready with an empty stdout message.
        let first = socket.next().await.expect("message").expect("ok");
        assert_eq!(first, Message::Binary(Bytes::from_static(&[1])));
        socket
            .send(Message::Binary(Bytes::from_static(b"\0typed")))
            .await
            .expect("stdin");
        socket
            .send(Message::Binary(Bytes::from_static(&[255, 0])))
            .await
            .expect("close stdin");
        let got = drain(&mut socket, false).await;
        assert_eq!(joined(&got, 1), b"typed");
        assert_eq!(joined(&got, 2), b"to stderr of c1");
        let status = status(&String::from_utf8_lossy(&joined(&got, 3)));
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "4");
    }

    #[tokio::test]
    async fn attach_over_base64_channels() {
        let server = server().await;
        let url = server
            .get_attach(&api::AttachRequest {
                container_id: "c1".into(),
                stdout: true,
                ..Default::default()
            })
            .expect("url")
            .url;
        let mut socket = connect(&url, "v4.base64.channel.k8s.io").await;
        let got = drain(&mut socket, true).await;
        assert_eq!(joined(&got, 1), b"attached\n");
        assert_eq!(
            status(&String::from_utf8_lossy(&joined(&got, 3)))["status"],
            "Success"
        );
    }

    #[tokio::test]
    async fn port_forward_tunnels_spdy_through_the_websocket() {
        let server = server().await;
        let url = server
            .get_port_forward(&api::PortForwardRequest {
                pod_sandbox_id: "pod9".into(),
                port: vec![80],
            })
            .expect("url")
            .url;
        let socket = connect(&url, "SPDY/3.1+portforward.k8s.io").await;
        // SPDY client over the socket's binary messages.
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
        let (mut ws_tx, mut ws_rx) = socket.split();
        tokio::spawn(async move {
            while let Some(Ok(Message::Binary(data))) = ws_rx.next().await {
                if to_spdy.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16384];
            while let Ok(n) = from_spdy.read(&mut buf).await {
                if n == 0
                    || ws_tx
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        });
        let conn = Connection::with_role(theirs, Role::Client, std::time::Duration::from_secs(30))
            .expect("spdy");
        let headers = |kind: &str| {
            let mut h = Headers::new();
            h.push("streamType", kind);
            h.push("port", "80");
            h.push("requestID", "0");
            h
        };
        let timeout = std::time::Duration::from_secs(10);
        let mut error = conn
            .open(headers("error"), timeout)
            .await
            .expect("error stream");
        error.writer().close().await.expect("close error");
        let mut data = conn
            .open(headers("data"), timeout)
            .await
            .expect("data stream");
        data.writer().write(b"ping").await.expect("write");
        data.writer().close().await.expect("close data");
        assert_eq!(data.read_to_end(1 << 20).await, b"pod9 port 80 got ping");
        assert!(error.read_to_end(1 << 20).await.is_empty());
    }
}
