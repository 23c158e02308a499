//! SPDY/3 header blocks: a count and length-prefixed name/value pairs, compressed with one zlib
//! stream per direction and connection, primed with the dictionary of the SPDY/3 draft (§2.6.10.1).

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::SpdyError;

/// A stream's headers, names lower-cased (SPDY/3 requires it); a name may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; the name is lower-cased.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_ascii_lowercase(), value.into()));
    }

    /// The first value of `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The uncompressed block: u32 count, then u32-length-prefixed name and value per pair.
    fn encode(&self) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::new();
        put_len(&mut out, self.0.len())?;
        for (name, value) in &self.0 {
            put_len(&mut out, name.len())?;
            out.extend_from_slice(name.as_bytes());
            put_len(&mut out, value.len())?;
            out.extend_from_slice(value.as_bytes());
        }
        Ok(out)
    }

    /// Parses an uncompressed block. Multiple values of one name arrive NUL-separated and are
    /// split into separate pairs.
    fn decode(block: &[u8]) -> Result<Self, SpdyError> {
        let mut rest = block;
        let count = take_u32(&mut rest)?;
        let mut pairs = Vec::new();
        for _ in 0..count {
            let name = take_string(&mut rest)?;
            let value = take_string(&mut rest)?;
            if name.is_empty() {
                return Err(SpdyError::Protocol("empty header name".into()));
            }
            for v in value.split('\0') {
                pairs.push((name.to_ascii_lowercase(), v.to_owned()));
            }
        }
        Ok(Headers(pairs))
    }
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), SpdyError> {
    let len = u32::try_from(len).map_err(|_| SpdyError::Protocol("header too long".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, SpdyError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| SpdyError::Protocol("truncated header block".into()))?;
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_string(rest: &mut &[u8]) -> Result<String, SpdyError> {
    let len = take_u32(rest)? as usize;
    if rest.len() < len {
        return Err(SpdyError::Protocol("truncated header block".into()));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(head.to_vec()).map_err(|_| SpdyError::Protocol("header is not UTF-8".into()))
}

/// The SPDY/3 header compression dictionary: the draft lists these words, each prefixed by its
/// length as a big-endian u32, followed by the tail string.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414\
415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently\
400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error\
501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec \
00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,\
application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,\
deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
    let mut dict = Vec::with_capacity(1423);
    for word in WORDS {
        // The words are short constants: the cast cannot truncate.
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(TAIL.as_bytes());
    dict
});

/// Decompresses the header blocks a peer sends on one connection.
pub(crate) struct HeaderDecoder {
    inflate: Decompress,
}

impl HeaderDecoder {
    pub(crate) fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
        }
    }

    pub(crate) fn decode(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            let before_in = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.inflate.total_in() - before_in)
                .map_err(|_| SpdyError::Protocol("header block too large".into()))?;
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Protocol(
                        "header compression stream ended".into(),
                    ));
                }
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    if out.len() == out.capacity() {
                        out.reserve(out.capacity().max(256));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::Protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(SpdyError::Protocol(format!("header block: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
        }
        Headers::decode(&out)
    }
}

/// Headers larger than this (uncompressed) are refused.
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Compresses the header blocks this side sends on one connection.
pub(crate) struct HeaderEncoder {
    deflate: Compress,
}

impl HeaderEncoder {
    pub(crate) fn new() -> Result<Self, SpdyError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .map_err(|e| SpdyError::Protocol(format!("header dictionary: {e}")))?;
        Ok(Self { deflate })
    }

    pub(crate) fn encode(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let raw = headers.encode()?;
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = raw.as_slice();
        loop {
            let before_in = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Protocol(format!("header compression: {e}")))?;
            let consumed = usize::try_from(self.deflate.total_in() - before_in)
                .map_err(|_| SpdyError::Protocol("header block too large".into()))?;
            input = &input[consumed..];
            // Done once the input is in and the sync flush left room in the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The Adler-32 checksum every SPDY/3 zlib stream names in its FDICT header.
        let (mut a, mut b) = (1u32, 0u32);
        for byte in DICTIONARY.iter() {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_across_one_compression_context() {
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut decoder = HeaderDecoder::new();
        for i in 0..3 {
            let mut headers = Headers::new();
            headers.push("streamType", "stdout");
            headers.push("Port", format!("{}", 8000 + i));
            headers.push("requestID", format!("{i}"));
            let wire = encoder.encode(&headers).expect("encode");
            let back = decoder.decode(&wire).expect("decode");
            assert_eq!(back.get("streamtype"), Some("stdout"));
            assert_eq!(back.get("PORT"), Some(format!("{}", 8000 + i).as_str()));
            assert_eq!(back.get("requestid"), Some(format!("{i}").as_str()));
        }
    }

    #[test]
    fn empty_block_round_trips() {
        let mut encoder = HeaderEncoder::new().expect("encoder");
        let mut decoder = HeaderDecoder::new();
        let wire = encoder.encode(&Headers::new()).expect("encode");
        assert_eq!(decoder.decode(&wire).expect("decode"), Headers::new());
    }

    #[test]
    fn nul_separated_values_split_and_garbage_fails() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(b"x");
        raw.extend_from_slice(&3u32.to_be_bytes());
        raw.extend_from_slice(b"a\0b");
        let headers = Headers::decode(&raw).expect("decode");
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("x", "a"), ("x", "b")]);
        assert!(Headers::decode(&raw[..7]).is_err());
        assert!(HeaderDecoder::new().decode(b"not zlib at all").is_err());
    }
}
