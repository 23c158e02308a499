//! The WebSocket transports, as the kubelet's streaming server serves them:
//!
//! * exec / attach over `channel.k8s.io` (v1–v5, binary; v1–v4 also `base64.`): every message
//!   starts with its channel — 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize — and v5 adds the
//!   client's close signal (255, then the channel it closes). The server first sends an empty
//!   message on the lowest channel it writes, to say it is ready.
//! * port-forward tunnelled: SPDY/3.1 carried in binary messages (`SPDY/3.1+portforward.k8s.io`,
//!   what client-go's `NewSPDYOverWebsocketDialer` and the API server speak), served by the same
//!   SPDY port-forward code as a plain upgrade.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;

use crate::portforward;
use crate::remotecommand::{
    Options, Outcome, OutputSink, Version, error_report, parse_sizes, run_session,
};
use crate::spdy::Connection;

/// The exec/attach subprotocols, most preferred first.
pub(crate) const CHANNEL_PROTOCOLS: [&str; 9] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.channel.k8s.io",
    "v3.base64.channel.k8s.io",
    "v2.channel.k8s.io",
    "v2.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// Port-forward: SPDY tunnelled through the WebSocket.
pub(crate) const TUNNELING_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the client closed the channel named by the next byte.
const CLOSE: u8 = 255;

/// How a negotiated subprotocol frames its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    version: Version,
    base64: bool,
    close_signal: bool,
}

fn framing(protocol: &str) -> Framing {
    let base64 = protocol.contains("base64");
    let version = match protocol.split('.').next() {
        Some("v5" | "v4") => Version::V4,
        Some("v3") => Version::V3,
        Some("v2") => Version::V2,
        _ => Version::V1,
    };
    Framing {
        version,
        base64,
        close_signal: protocol == "v5.channel.k8s.io",
    }
}

fn encode(channel: u8, data: &[u8], base64: bool) -> Message {
    if base64 {
        let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
        text.push(char::from(b'0' + channel));
        text.push_str(&STANDARD.encode(data));
        Message::Text(text.into())
    } else {
        let mut frame = Vec::with_capacity(1 + data.len());
        frame.push(channel);
        frame.extend_from_slice(data);
        Message::Binary(frame.into())
    }
}

/// A message's channel and payload; `None` for control messages and garbage.
fn decode(message: &Message, base64: bool) -> Option<(u8, Vec<u8>)> {
    match message {
        Message::Binary(data) if !base64 => {
            let (channel, payload) = data.split_first()?;
            Some((*channel, payload.to_vec()))
        }
        Message::Text(text) if base64 => {
            let text = text.as_str();
            let channel = text.as_bytes().first()?.checked_sub(b'0')?;
            let payload = STANDARD.decode(&text[1..]).ok()?;
            Some((channel, payload))
        }
        _ => None,
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    }))
}

/// Output on one channel of the socket.
struct ChannelSink {
    channel: u8,
    base64: bool,
    out: mpsc::Sender<Message>,
}

impl OutputSink for ChannelSink {
    async fn send(&self, data: &[u8]) -> bool {
        self.out
            .send(encode(self.channel, data, self.base64))
            .await
            .is_ok()
    }

    /// Channels are not closed one by one: the socket closes after the error report.
    async fn finish(&self) {}
}

/// Serves one exec/attach session on a WebSocket that negotiated `protocol`.
pub(crate) async fn serve_channels<F, Fut>(socket: WebSocket, protocol: &str, opts: Options, run: F)
where
    F: FnOnce(crate::Streams) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let framing = framing(protocol);
    let (mut socket_tx, mut socket_rx) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if socket_tx.send(message).await.is_err() {
                return;
            }
        }
        // A normal closure: client-go reads it as the end of every channel (a close without a
        // status is an error to it).
        let _ = socket_tx.send(normal_close()).await;
        let _ = socket_tx.close().await;
    });
    let ready = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send(encode(ready, &[], framing.base64)).await;

    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(32);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let reader = tokio::spawn(async move {
        let mut stdin_tx = Some(stdin_tx);
        let mut resizes = Vec::new();
        while let Some(Ok(message)) = socket_rx.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            let Some((channel, payload)) = decode(&message, framing.base64) else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(Bytes::from(payload)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                RESIZE => {
                    resizes.extend_from_slice(&payload);
                    let (sizes, used) = parse_sizes(&resizes);
                    resizes.drain(..used);
                    for size in sizes {
                        let _ = resize_tx.send(size).await;
                    }
                }
                CLOSE if framing.close_signal && payload.first() == Some(&STDIN) => {
                    stdin_tx = None;
                }
                _ => {}
            }
        }
    });

    let sink = |channel| ChannelSink {
        channel,
        base64: framing.base64,
        out: out.clone(),
    };
    let stdin = opts
        .stdin
        .then(|| StreamReader::new(ReceiverStream::new(stdin_rx).map(Ok::<Bytes, std::io::Error>)));
    let outcome = run_session(
        opts.tty,
        stdin,
        opts.stdout.then(|| sink(STDOUT)),
        (opts.stderr && !opts.tty).then(|| sink(STDERR)),
        opts.tty.then_some(resize_rx),
        run,
    )
    .await;
    if let Some(report) = error_report(framing.version, &outcome) {
        let _ = out
            .send(encode(ERROR, report.as_bytes(), framing.base64))
            .await;
    }
    drop(out);
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        tracing::debug!("exec/attach WebSocket did not close in time");
    }
    reader.abort();
}

/// Serves port-forwarding on SPDY carried by a WebSocket.
pub(crate) async fn serve_tunnel<F, Fut>(
    socket: WebSocket,
    idle_timeout: Duration,
    creation_timeout: Duration,
    forward: F,
) where
    F: Fn(u16, DuplexStream) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
    let (mut socket_tx, mut socket_rx) = socket.split();
    let inbound = tokio::spawn(async move {
        while let Some(Ok(message)) = socket_rx.next().await {
            match message {
                Message::Binary(data) if to_spdy.write_all(&data).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if socket_tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = socket_tx.send(normal_close()).await;
        let _ = socket_tx.close().await;
    });
    match Connection::new(theirs, idle_timeout) {
        Ok(conn) => portforward::serve(conn, creation_timeout, forward).await,
        Err(e) => tracing::warn!(error = %e, "SPDY over WebSocket setup failed"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), outbound).await;
    inbound.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subprotocols_frame_as_the_kubelet_does() {
        assert_eq!(
            framing("v5.channel.k8s.io"),
            Framing {
                version: Version::V4,
                base64: false,
                close_signal: true
            }
        );
        assert_eq!(framing("v4.base64.channel.k8s.io").version, Version::V4);
        assert!(framing("v4.base64.channel.k8s.io").base64);
        assert_eq!(framing("channel.k8s.io").version, Version::V1);
        assert!(!framing("v4.channel.k8s.io").close_signal);
    }

    #[test]
    fn messages_round_trip_in_both_codecs() {
        for base64 in [false, true] {
            let message = encode(STDERR, b"oops\n", base64);
            assert_eq!(decode(&message, base64), Some((STDERR, b"oops\n".to_vec())));
        }
        assert_eq!(
            encode(STDOUT, b"hi", false),
            Message::Binary(Bytes::from_static(&[1, b'h', b'i']))
        );
        assert_eq!(
            encode(STDOUT, b"hi", true),
            Message::Text("1aGk=".to_string().into())
        );
        assert_eq!(decode(&Message::Binary(Bytes::new()), false), None);
        assert_eq!(decode(&Message::Text("1!!".to_string().into()), true), None);
    }
}
