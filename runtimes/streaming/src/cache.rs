//! Single-use tokens for streaming requests: the CRI call stores the request and hands out a URL
//! naming its token; the first HTTP request for that URL takes it. Tokens expire (one minute in
//! the kubelet) and at most `max_in_flight` wait at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_cri::v1 as api;

use crate::StreamingError;

/// A stored CRI streaming request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pending {
    Exec(api::ExecRequest),
    Attach(api::AttachRequest),
    PortForward(api::PortForwardRequest),
}

impl Pending {
    /// The container and pipes of an exec or attach request; `None` for port-forward.
    pub(crate) fn session(&self) -> Option<(&str, crate::remotecommand::Options)> {
        let options = |stdin, stdout, stderr, tty| crate::remotecommand::Options {
            stdin,
            stdout,
            stderr,
            tty,
        };
        match self {
            Self::Exec(r) => Some((&r.container_id, options(r.stdin, r.stdout, r.stderr, r.tty))),
            Self::Attach(r) => Some((&r.container_id, options(r.stdin, r.stdout, r.stderr, r.tty))),
            Self::PortForward(_) => None,
        }
    }
}

pub(crate) struct RequestCache {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
    ttl: Duration,
    max_in_flight: usize,
}

impl RequestCache {
    pub(crate) fn new(ttl: Duration, max_in_flight: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_in_flight,
        }
    }

    /// Stores `request`; its token.
    pub(crate) fn insert(&self, request: Pending) -> Result<String, StreamingError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
        if entries.len() >= self.max_in_flight {
            return Err(StreamingError::TooManyRequests(self.max_in_flight));
        }
        loop {
            let token = new_token()?;
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now, request));
                return Ok(token);
            }
        }
    }

    /// Takes the request stored under `token`, if it is there and fresh.
    pub(crate) fn consume(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (at, request) = entries.remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

/// 8 random bytes, URL-safe base64 without padding (as the kubelet's streaming server).
fn new_token() -> Result<String, StreamingError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StreamingError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(id: &str) -> Pending {
        Pending::Exec(api::ExecRequest {
            container_id: id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use_and_distinct() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let a = cache.insert(exec("a")).expect("insert");
        let b = cache.insert(exec("b")).expect("insert");
        assert_ne!(a, b);
        assert_eq!(a.len(), 11);
        assert_eq!(cache.consume(&b), Some(exec("b")));
        assert_eq!(cache.consume(&b), None);
        assert_eq!(cache.consume("nope"), None);
        assert_eq!(cache.consume(&a), Some(exec("a")));
    }

    #[test]
    fn expired_tokens_are_gone_and_in_flight_requests_are_capped() {
        let cache = RequestCache::new(Duration::ZERO, 10);
        let token = cache.insert(exec("a")).expect("insert");
        assert_eq!(cache.consume(&token), None);

        let cache = RequestCache::new(Duration::from_secs(60), 2);
        cache.insert(exec("a")).expect("first");
        cache.insert(exec("b")).expect("second");
        assert!(matches!(
            cache.insert(exec("c")),
            Err(StreamingError::TooManyRequests(2))
        ));
    }
}
