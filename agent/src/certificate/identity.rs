//! The current certificate and key of one identity, shared by every TLS handshake and swapped in
//! place when a new pair is issued: handshakes after the swap present the new pair. A swap also
//! signals connections made with the old pair to close (kubelet closes its API connections after
//! a client certificate rotation so that long watches reconnect with the new one).

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A swappable certified key (none until the first is issued).
#[derive(Debug, Clone, Default)]
pub struct SharedIdentity {
    current: Arc<RwLock<Option<Arc<CertifiedKey>>>>,
    /// Cancelled, and replaced, at every swap.
    generation: Arc<Mutex<CancellationToken>>,
}

impl SharedIdentity {
    pub fn new(initial: Option<Arc<CertifiedKey>>) -> Self {
        Self {
            current: Arc::new(RwLock::new(initial)),
            generation: Arc::default(),
        }
    }

    /// The pair handshakes present now.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `key` the current pair and tells connections made before to close.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
        let mut generation = self
            .generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Completes at the next swap: a connection made now holds it to know when to close.
    pub fn replaced(&self) -> WaitForCancellationFutureOwned {
        self.generation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .cancelled_owned()
    }
}

/// The client side: API connections present the current pair.
impl ResolvesClientCert for SharedIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// The server side: without a pair the handshake fails, as kubelet's does ("no serving
/// certificate available for the kubelet") until its serving certificate is issued.
impl ResolvesServerCert for SharedIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current();
        if current.is_none() {
            tracing::debug!("TLS handshake refused: no serving certificate available yet");
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn certified(name: &str) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(
            CertifiedKey::from_der(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("der"),
                &provider,
            )
            .expect("certified key"),
        )
    }

    #[test]
    fn a_swap_changes_the_pair_and_ends_the_old_generation() {
        let identity = SharedIdentity::default();
        assert!(identity.current().is_none());
        assert!(!ResolvesClientCert::has_certs(&identity));
        let first = certified("a");
        identity.set(first.clone());
        let resolved = ResolvesClientCert::resolve(&identity, &[], &[]).expect("a pair");
        assert!(Arc::ptr_eq(&resolved, &first));
        let mut before = Box::pin(identity.replaced());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(before.as_mut().poll(&mut cx).is_pending());
        let second = certified("b");
        identity.set(second.clone());
        assert!(matches!(before.as_mut().poll(&mut cx), Poll::Ready(())));
        let mut after = Box::pin(identity.replaced());
        assert!(
            after.as_mut().poll(&mut cx).is_pending(),
            "new connections stay open"
        );
        assert!(Arc::ptr_eq(&identity.current().expect("pair"), &second));
    }
}
