//! One upgraded connection: a reader task dispatching frames to streams and a writer task owning
//! the socket's write half. Streams opened by the client arrive through [`Connection::accept`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;

use super::SpdyError;
use super::frame::{Frame, FrameReader, FrameWriter, MAX_FRAME_PAYLOAD, RST_PROTOCOL_ERROR};
use super::headers::Headers;

/// Frames buffered per inbound stream before the reader waits for its consumer.
const INBOUND_DEPTH: usize = 32;
/// Data written in frames of at most this size.
const DATA_CHUNK: usize = 32 * 1024;

enum Out {
    Frame(Frame),
    /// GOAWAY, flush, shut the write half; then answer.
    Close(oneshot::Sender<()>),
}

/// A SPDY connection: streams the peer opens arrive through [`Connection::accept`], streams
/// this side opens come from [`Connection::open`].
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
    table: Table,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Which end of the connection this is: clients open odd stream IDs, servers even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// The open streams: where their inbound data goes, and who waits for a SYN_REPLY.
#[derive(Default)]
struct Slot {
    inbound: Option<mpsc::Sender<Bytes>>,
    replied: Option<oneshot::Sender<()>>,
}

type Table = Arc<Mutex<HashMap<u32, Slot>>>;

fn lock(table: &Table) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stream the client opened: its headers, what it sends, and a writer back.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    inbound: mpsc::Receiver<Bytes>,
    writer: StreamWriter,
}

/// Sends data on one stream; cheap to clone.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

impl Connection {
    /// Serves SPDY on `io` (already upgraded) as the server end. `idle_timeout` closes a
    /// connection on which the peer sent nothing for that long.
    pub fn new<T>(io: T, idle_timeout: Duration) -> Result<Self, SpdyError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::with_role(io, Role::Server, idle_timeout)
    }

    /// Speaks SPDY on `io` as `role`.
    pub fn with_role<T>(io: T, role: Role, idle_timeout: Duration) -> Result<Self, SpdyError>
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (out, out_rx) = mpsc::channel(64);
        let (incoming_tx, incoming) = mpsc::channel(16);
        let table = Table::default();
        let writer = tokio::spawn(write_loop(FrameWriter::new(write_half)?, out_rx));
        let reader = tokio::spawn(read_loop(
            FrameReader::new(read_half),
            out.clone(),
            incoming_tx,
            table.clone(),
            idle_timeout,
        ));
        Ok(Self {
            incoming,
            out,
            table,
            next_id: AtomicU32::new(if role == Role::Client { 1 } else { 2 }),
            reader,
            writer,
        })
    }

    /// Opens a stream with `headers` and waits (at most `timeout`) for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers, timeout: Duration) -> Result<Stream, SpdyError> {
        let id = self.next_id.fetch_add(2, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
        let (replied_tx, replied) = oneshot::channel();
        lock(&self.table).insert(
            id,
            Slot {
                inbound: Some(tx),
                replied: Some(replied_tx),
            },
        );
        let syn = Frame::SynStream {
            stream_id: id,
            fin: false,
            headers: headers.clone(),
        };
        self.out
            .send(Out::Frame(syn))
            .await
            .map_err(|_| SpdyError::Closed)?;
        match tokio::time::timeout(timeout, replied).await {
            Ok(Ok(())) => Ok(Stream {
                id,
                headers,
                inbound: rx,
                writer: StreamWriter {
                    id,
                    out: self.out.clone(),
                },
            }),
            Ok(Err(_)) => Err(SpdyError::Closed),
            Err(_) => {
                lock(&self.table).remove(&id);
                Err(SpdyError::Protocol(format!(
                    "no reply to stream {id} within {timeout:?}"
                )))
            }
        }
    }

    /// The next stream the client opens; `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Sends GOAWAY, closes the write half and waits (at most `drain`) for the client to close
    /// its side, so that nothing it still sends resets the connection before it read everything.
    pub async fn close(mut self, drain: Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.out.send(Out::Close(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        // Streams still arriving are dropped: their inbound ends close.
        self.incoming.close();
        if tokio::time::timeout(drain, &mut self.reader).await.is_err() {
            self.reader.abort();
        }
        self.writer.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Stream {
    /// The stream's inbound bytes as an `AsyncRead` (EOF at the client's FIN or reset) and a
    /// writer for the other direction.
    pub fn split(self) -> (StreamReader<InboundStream, Bytes>, StreamWriter) {
        let stream =
            ReceiverStream::new(self.inbound).map(Ok as fn(Bytes) -> std::io::Result<Bytes>);
        (StreamReader::new(stream), self.writer)
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }

    /// Everything the client sends until FIN (at most `limit` bytes are kept).
    pub async fn read_to_end(&mut self, limit: usize) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(chunk) = self.inbound.recv().await {
            let room = limit.saturating_sub(all.len());
            all.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        all
    }

    /// The next chunk the client sent; `None` after its FIN.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.inbound.recv().await
    }
}

/// What [`Stream::split`] reads from.
pub type InboundStream =
    tokio_stream::adapters::Map<ReceiverStream<Bytes>, fn(Bytes) -> std::io::Result<Bytes>>;

impl StreamWriter {
    /// Sends `data` (in frames of at most 32 KiB).
    pub async fn write(&self, data: &[u8]) -> Result<(), SpdyError> {
        for chunk in data.chunks(DATA_CHUNK.min(MAX_FRAME_PAYLOAD)) {
            self.send(Frame::Data {
                stream_id: self.id,
                fin: false,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
        }
        Ok(())
    }

    /// Ends this side of the stream (FIN).
    pub async fn close(&self) -> Result<(), SpdyError> {
        self.send(Frame::Data {
            stream_id: self.id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream (RST_STREAM with the given status).
    pub async fn reset(&self, status: u32) -> Result<(), SpdyError> {
        self.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn send(&self, frame: Frame) -> Result<(), SpdyError> {
        self.out
            .send(Out::Frame(frame))
            .await
            .map_err(|_| SpdyError::Closed)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(frame) => {
                if let Err(e) = writer.write(&frame).await {
                    tracing::debug!(error = %e, "SPDY write failed");
                    return;
                }
                // Batch what is already queued into one flush.
                if rx.is_empty()
                    && let Err(e) = writer.flush().await
                {
                    tracing::debug!(error = %e, "SPDY flush failed");
                    return;
                }
            }
            Out::Close(done) => {
                let goaway = Frame::GoAway {
                    last_good_stream_id: 0,
                    status: 0,
                };
                let _ = writer.write(&goaway).await;
                let _ = writer.flush().await;
                let _ = writer.shutdown().await;
                let _ = done.send(());
                return;
            }
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<Stream>,
    table: Table,
    idle_timeout: Duration,
) {
    loop {
        let frame = match tokio::time::timeout(idle_timeout, reader.read()).await {
            Err(_) => {
                tracing::debug!("SPDY connection idle for {idle_timeout:?}: closing");
                break;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "SPDY read failed");
                break;
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => {
                let duplicate = stream_id == 0 || lock(&table).contains_key(&stream_id);
                if duplicate {
                    let rst = Frame::RstStream {
                        stream_id,
                        status: RST_PROTOCOL_ERROR,
                    };
                    if out.send(Out::Frame(rst)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let reply = Frame::SynReply {
                    stream_id,
                    fin: false,
                    headers: Headers::new(),
                };
                if out.send(Out::Frame(reply)).await.is_err() {
                    break;
                }
                let (tx, rx) = mpsc::channel(INBOUND_DEPTH);
                if !fin {
                    lock(&table).insert(
                        stream_id,
                        Slot {
                            inbound: Some(tx),
                            replied: None,
                        },
                    );
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    inbound: rx,
                    writer: StreamWriter {
                        id: stream_id,
                        out: out.clone(),
                    },
                };
                if incoming.send(stream).await.is_err() {
                    // Nobody accepts streams any more; keep reading until the peer leaves.
                    lock(&table).remove(&stream_id);
                }
            }
            Frame::SynReply { stream_id, fin, .. } => {
                let mut table = lock(&table);
                if let Some(slot) = table.get_mut(&stream_id) {
                    if let Some(replied) = slot.replied.take() {
                        let _ = replied.send(());
                    }
                    if fin {
                        table.remove(&stream_id);
                    }
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                let inbound = lock(&table)
                    .get(&stream_id)
                    .and_then(|slot| slot.inbound.clone());
                if let Some(tx) = inbound
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    // The consumer went away: drop what it would have read.
                    lock(&table).remove(&stream_id);
                }
                if fin {
                    lock(&table).remove(&stream_id);
                }
            }
            Frame::Headers { stream_id, fin, .. } => {
                if fin {
                    lock(&table).remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                lock(&table).remove(&stream_id);
            }
            Frame::Ping { id } => {
                if out.send(Out::Frame(Frame::Ping { id })).await.is_err() {
                    break;
                }
            }
            Frame::GoAway { .. } | Frame::Ignored => {}
        }
    }
    // Every stream's input ends with the connection; openers waiting for replies give up.
    lock(&table).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client end: raw frame reader/writer over the other side of a duplex pipe.
    struct Client {
        reader: FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        writer: FrameWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>,
    }

    fn pair() -> (Connection, Client) {
        let (server, client) = tokio::io::duplex(1 << 16);
        let conn = Connection::new(server, Duration::from_secs(30)).expect("connection");
        let (r, w) = tokio::io::split(client);
        let client = Client {
            reader: FrameReader::new(r),
            writer: FrameWriter::new(w).expect("writer"),
        };
        (conn, client)
    }

    fn syn(id: u32, kind: &str) -> Frame {
        let mut headers = Headers::new();
        headers.push("streamType", kind);
        Frame::SynStream {
            stream_id: id,
            fin: false,
            headers,
        }
    }

    #[tokio::test]
    async fn streams_are_replied_accepted_and_carry_data_both_ways() {
        let (mut conn, mut client) = pair();
        client.writer.write(&syn(1, "stdin")).await.expect("syn");
        client.writer.flush().await.expect("flush");
        let reply = client.reader.read().await.expect("read").expect("frame");
        assert!(matches!(reply, Frame::SynReply { stream_id: 1, .. }));

        let stream = conn.accept().await.expect("stream");
        assert_eq!(stream.headers.get("streamtype"), Some("stdin"));
        let (mut input, output) = stream.split();

        for (data, fin) in [(&b"hel"[..], false), (&b"lo"[..], true)] {
            client
                .writer
                .write(&Frame::Data {
                    stream_id: 1,
                    fin,
                    data: Bytes::copy_from_slice(data),
                })
                .await
                .expect("data");
        }
        client.writer.flush().await.expect("flush");
        let mut got = String::new();
        input.read_to_string(&mut got).await.expect("read to FIN");
        assert_eq!(got, "hello");

        output.write(b"back").await.expect("write");
        output.close().await.expect("close");
        assert_eq!(
            client.reader.read().await.expect("read"),
            Some(Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"back")
            })
        );
        assert_eq!(
            client.reader.read().await.expect("read"),
            Some(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::new()
            })
        );
    }

    #[tokio::test]
    async fn pings_are_echoed_and_close_sends_goaway_then_eof() {
        let (conn, mut client) = pair();
        client
            .writer
            .write(&Frame::Ping { id: 9 })
            .await
            .expect("ping");
        client.writer.flush().await.expect("flush");
        assert_eq!(
            client.reader.read().await.expect("read"),
            Some(Frame::Ping { id: 9 })
        );
        let closing = tokio::spawn(conn.close(Duration::from_secs(5)));
        assert!(matches!(
            client.reader.read().await.expect("read"),
            Some(Frame::GoAway { .. })
        ));
        assert_eq!(client.reader.read().await.expect("eof"), None);
        // The server waits for the client to leave, then returns.
        client.writer.shutdown().await.expect("client shutdown");
        closing.await.expect("close returns");
    }

    #[tokio::test]
    async fn reset_stream_ends_its_input_and_duplicate_ids_are_refused() {
        let (mut conn, mut client) = pair();
        client.writer.write(&syn(3, "data")).await.expect("syn");
        client.writer.write(&syn(3, "data")).await.expect("dup");
        client
            .writer
            .write(&Frame::RstStream {
                stream_id: 3,
                status: 5,
            })
            .await
            .expect("rst");
        client.writer.flush().await.expect("flush");
        let mut stream = conn.accept().await.expect("stream");
        assert_eq!(stream.recv().await, None);
        assert!(matches!(
            client.reader.read().await.expect("reply"),
            Some(Frame::SynReply { stream_id: 3, .. })
        ));
        assert!(matches!(
            client.reader.read().await.expect("rst"),
            Some(Frame::RstStream {
                stream_id: 3,
                status: RST_PROTOCOL_ERROR
            })
        ));
    }
}
