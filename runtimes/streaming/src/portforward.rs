//! The port-forward protocol (`portforward.k8s.io`) over a SPDY connection: for every forwarded
//! connection the client opens an `error` and a `data` stream carrying the same `port` and
//! `requestID` headers. The server pairs them, connects the data stream to the port inside the
//! pod, and when that connection ends writes any error on the error stream and closes both.
//! The SPDY connection serves any number of such pairs until the client leaves.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::io::DuplexStream;
use tokio::time::Instant;

use crate::remotecommand::pump_out;
use crate::runtime::pipe;
use crate::spdy::{Connection, Stream};

pub(crate) const PROTOCOL: &str = "portforward.k8s.io";

struct Pending {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Instant,
}

/// Serves port-forwarding on `conn`; `forward(port, pipe)` is the runtime's part for one
/// connection.
pub(crate) async fn serve<F, Fut>(mut conn: Connection, creation_timeout: Duration, forward: F)
where
    F: Fn(u16, DuplexStream) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        let stream = tokio::select! {
            stream = conn.accept() => match stream {
                Some(stream) => stream,
                None => break,
            },
            _ = sweep.tick() => {
                expire(&mut pending, creation_timeout).await;
                continue;
            }
        };
        let kind = stream
            .headers
            .get("streamtype")
            .unwrap_or_default()
            .to_owned();
        let Some(request_id) = request_id(&stream, &kind) else {
            tracing::warn!(stream_type = kind, "port-forward stream of unknown type");
            let _ = stream.writer().reset(crate::spdy::RST_PROTOCOL_ERROR).await;
            continue;
        };
        let entry = pending
            .entry(request_id.clone())
            .or_insert_with(|| Pending {
                error: None,
                data: None,
                since: Instant::now(),
            });
        if kind == "error" {
            entry.error = Some(stream);
        } else {
            entry.data = Some(stream);
        }
        if entry.error.is_some() && entry.data.is_some() {
            let Some(Pending {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&request_id)
            else {
                continue;
            };
            match port(&data) {
                Ok(port) => {
                    let (ours, theirs) = pipe();
                    tokio::spawn(forward_one(port, data, error, ours, forward(port, theirs)));
                }
                Err(message) => {
                    let writer = error.writer();
                    let _ = writer.write(message.as_bytes()).await;
                    let _ = writer.close().await;
                    let _ = data.writer().close().await;
                }
            }
        }
    }
    conn.close(Duration::from_secs(1)).await;
}

/// The pair a stream belongs to: its `requestID` header, or for clients predating it the data
/// stream's ID (an error stream is opened right before its data stream: ID − 2 = its pair's).
fn request_id(stream: &Stream, kind: &str) -> Option<String> {
    let explicit = stream.headers.get("requestid").map(str::to_owned);
    match kind {
        "error" => Some(explicit.unwrap_or_else(|| (stream.id + 2).to_string())),
        "data" => Some(explicit.unwrap_or_else(|| stream.id.to_string())),
        _ => None,
    }
}

fn port(stream: &Stream) -> Result<u16, String> {
    match stream.headers.get("port") {
        None => Err("port header is missing".into()),
        Some(raw) => match raw.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("invalid port {raw:?}")),
        },
    }
}

/// Pairs that never completed: the client is told, as the kubelet does.
async fn expire(pending: &mut HashMap<String, Pending>, timeout: Duration) {
    let stale: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.elapsed() > timeout)
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        if let Some(p) = pending.remove(&id) {
            let message = format!("timed out waiting for the other stream of request {id}");
            tracing::warn!("port-forward: {message}");
            if let Some(error) = p.error {
                let writer = error.writer();
                let _ = writer.write(message.as_bytes()).await;
                let _ = writer.close().await;
            }
            if let Some(data) = p.data {
                let _ = data.writer().close().await;
            }
        }
    }
}

/// One forwarded connection: client ⇄ pipe ⇄ runtime, then the error report and FINs.
async fn forward_one<Fut>(port: u16, data: Stream, error: Stream, pipe: DuplexStream, runtime: Fut)
where
    Fut: Future<Output = Result<(), String>>,
{
    let (mut from_client, to_client) = data.split();
    let (mut pipe_read, mut pipe_write) = tokio::io::split(pipe);
    let inbound = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut pipe_write).await;
        let _ = pipe_write.shutdown().await;
    });
    // The runtime's result decides; its output ends when it drops its pipe end. A client that
    // never closes its side does not hold the connection open after that.
    let (result, ()) = tokio::join!(runtime, pump_out(&mut pipe_read, to_client));
    inbound.abort();
    let writer = error.writer();
    if let Err(message) = result {
        tracing::debug!(port, error = %message, "port-forward connection failed");
        let _ = writer
            .write(format!("error forwarding port {port} to pod: {message}").as_bytes())
            .await;
    }
    let _ = writer.close().await;
}
