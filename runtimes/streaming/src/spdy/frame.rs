//! SPDY/3.1 frames on the wire: the subset a server of `moby/spdystream` clients (kubectl,
//! client-go, the API server) meets. Unknown control frames are read and skipped.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::SpdyError;
use super::headers::{HeaderDecoder, HeaderEncoder, Headers};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;

pub(crate) const FLAG_FIN: u8 = 0x01;

/// The largest payload a frame may carry (24-bit length).
pub(crate) const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, WINDOW_UPDATE and unknown control frames: nothing to do for them.
    Ignored,
}

/// Reads frames, decompressing header blocks with the connection's inbound context.
pub(crate) struct FrameReader<R> {
    io: R,
    headers: HeaderDecoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R) -> Self {
        Self {
            io,
            headers: HeaderDecoder::new(),
        }
    }

    /// The next frame; `None` when the peer closed the connection between frames.
    pub(crate) async fn read(&mut self) -> Result<Option<Frame>, SpdyError> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        self.io.read_exact(&mut head[1..]).await?;
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await?;
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if word & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: word,
                fin: flags & FLAG_FIN != 0,
                data: Bytes::from(payload),
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!(
                "unsupported SPDY version {version}"
            )));
        }
        let kind = (word & 0xffff) as u16;
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            SYN_STREAM => {
                // stream id, associated stream id, priority + slot, header block.
                let stream_id = stream_id_at(&payload, 0)?;
                let block = payload.get(10..).ok_or_else(|| short(kind))?;
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers: self.headers.decode(block)?,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream_id = stream_id_at(&payload, 0)?;
                let block = payload.get(4..).ok_or_else(|| short(kind))?;
                let headers = self.headers.decode(block)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => Frame::RstStream {
                stream_id: stream_id_at(&payload, 0)?,
                status: u32_at(&payload, 4).ok_or_else(|| short(kind))?,
            },
            PING => Frame::Ping {
                id: u32_at(&payload, 0).ok_or_else(|| short(kind))?,
            },
            GOAWAY => Frame::GoAway {
                last_good_stream_id: stream_id_at(&payload, 0)?,
                status: u32_at(&payload, 4).unwrap_or(0),
            },
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }
}

fn short(kind: u16) -> SpdyError {
    SpdyError::Protocol(format!("control frame {kind} too short"))
}

fn u32_at(payload: &[u8], at: usize) -> Option<u32> {
    let bytes = payload.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn stream_id_at(payload: &[u8], at: usize) -> Result<u32, SpdyError> {
    u32_at(payload, at)
        .map(|v| v & 0x7fff_ffff)
        .ok_or_else(|| SpdyError::Protocol("control frame too short".into()))
}

/// Writes frames, compressing header blocks with the connection's outbound context.
pub(crate) struct FrameWriter<W> {
    io: W,
    headers: HeaderEncoder,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub(crate) fn new(io: W) -> Result<Self, SpdyError> {
        Ok(Self {
            io,
            headers: HeaderEncoder::new()?,
        })
    }

    pub(crate) async fn write(&mut self, frame: &Frame) -> Result<(), SpdyError> {
        let mut buf = Vec::new();
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(SpdyError::Protocol("data frame too large".into()));
                }
                buf.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                push_flags_len(&mut buf, *fin, data.len());
                buf.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                fin,
                headers,
            } => {
                let block = self.headers.encode(headers)?;
                let mut payload = Vec::with_capacity(10 + block.len());
                payload.extend_from_slice(&stream_id.to_be_bytes());
                payload.extend_from_slice(&0u32.to_be_bytes());
                payload.extend_from_slice(&[0, 0]);
                payload.extend_from_slice(&block);
                control(&mut buf, SYN_STREAM, *fin, &payload)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let block = self.headers.encode(headers)?;
                let mut payload = Vec::with_capacity(4 + block.len());
                payload.extend_from_slice(&stream_id.to_be_bytes());
                payload.extend_from_slice(&block);
                control(&mut buf, kind, *fin, &payload)?;
            }
            Frame::RstStream { stream_id, status } => {
                let mut payload = stream_id.to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(&mut buf, RST_STREAM, false, &payload)?;
            }
            Frame::Ping { id } => control(&mut buf, PING, false, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut payload = last_good_stream_id.to_be_bytes().to_vec();
                payload.extend_from_slice(&status.to_be_bytes());
                control(&mut buf, GOAWAY, false, &payload)?;
            }
            Frame::Ignored => return Ok(()),
        }
        self.io.write_all(&buf).await?;
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), SpdyError> {
        self.io.flush().await?;
        Ok(())
    }

    /// Closes the write half (the peer reads EOF after the frames sent).
    pub(crate) async fn shutdown(&mut self) -> Result<(), SpdyError> {
        self.io.shutdown().await?;
        Ok(())
    }
}

fn push_flags_len(buf: &mut Vec<u8>, fin: bool, len: usize) {
    let len = len as u32;
    buf.push(if fin { FLAG_FIN } else { 0 });
    buf.extend_from_slice(&len.to_be_bytes()[1..]);
}

fn control(buf: &mut Vec<u8>, kind: u16, fin: bool, payload: &[u8]) -> Result<(), SpdyError> {
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(SpdyError::Protocol("control frame too large".into()));
    }
    buf.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    buf.extend_from_slice(&kind.to_be_bytes());
    push_flags_len(buf, fin, payload.len());
    buf.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(frames: Vec<Frame>) -> Vec<Frame> {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = FrameWriter::new(a).expect("writer");
        for frame in &frames {
            writer.write(frame).await.expect("write");
        }
        writer.shutdown().await.expect("shutdown");
        let mut reader = FrameReader::new(b);
        let mut back = Vec::new();
        while let Some(frame) = reader.read().await.expect("read") {
            back.push(frame);
        }
        back
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let mut headers = Headers::new();
        headers.push("streamtype", "error");
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                fin: false,
                headers: headers.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers,
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
        ];
        let expected = frames.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>();
        let back = round_trip(frames).await;
        assert_eq!(
            back.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>(),
            expected
        );
    }

    #[tokio::test]
    async fn settings_and_window_updates_are_skipped_and_bad_versions_fail() {
        // SETTINGS with one entry, WINDOW_UPDATE, then a PING.
        let mut wire = vec![
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 1, 0, 0,
        ];
        wire.extend_from_slice(&[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 9]);
        wire.extend_from_slice(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5]);
        let mut reader = FrameReader::new(wire.as_slice());
        assert_eq!(reader.read().await.expect("settings"), Some(Frame::Ignored));
        assert_eq!(reader.read().await.expect("window"), Some(Frame::Ignored));
        assert_eq!(
            reader.read().await.expect("ping"),
            Some(Frame::Ping { id: 5 })
        );
        assert_eq!(reader.read().await.expect("eof"), None);

        let spdy2 = [0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 5];
        assert!(FrameReader::new(&spdy2[..]).read().await.is_err());
        // A frame cut short is an error, not a clean end.
        assert!(FrameReader::new(&wire[..10]).read().await.is_err());
    }
}
