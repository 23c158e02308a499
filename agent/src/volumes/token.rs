//! Service-account tokens of projected volumes (kubelet's `pkg/kubelet/token.Manager`): requested
//! through the TokenRequest API, bound to the pod, cached, and requested again once 80 % of their
//! lifetime has passed or they are older than 24 hours. When a refresh fails the cached token is
//! kept while it is still valid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

use super::error::SetUpError;

/// kubelet's `maxTTL`: a token older than this is refreshed whatever its expiry.
const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// kubelet's `maxJitter` on refresh times.
const MAX_JITTER_SECONDS: u32 = 10;

/// What a token is requested for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub service_account: String,
    pub audiences: Vec<String>,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    expiration: Timestamp,
    /// The lifetime the API server granted.
    expiration_seconds: i64,
}

impl CachedToken {
    /// kubelet's `requiresRefresh`: past 24 h since issue, or within 20 % of the lifetime of the
    /// expiry (each minus a jitter of up to 10 s).
    fn requires_refresh(&self, now: Timestamp, jitter_seconds: i64) -> bool {
        let issued = self.expiration - jiff::SignedDuration::from_secs(self.expiration_seconds);
        let jitter = jiff::SignedDuration::from_secs(jitter_seconds);
        let max_ttl = jiff::SignedDuration::try_from(MAX_TTL).unwrap_or(jiff::SignedDuration::MAX);
        if now > issued + max_ttl - jitter {
            return true;
        }
        let margin = jiff::SignedDuration::from_secs(self.expiration_seconds * 20 / 100);
        now > self.expiration - margin - jitter
    }

    fn expired(&self, now: Timestamp) -> bool {
        now >= self.expiration
    }
}

/// The token cache, shared by all pods.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl TokenCache {
    /// The token for `key`, from the cache or the API server.
    pub async fn get(
        &self,
        client: Option<&kube::Client>,
        key: &TokenKey,
    ) -> Result<String, SetUpError> {
        let now = Timestamp::now();
        let cached = self.lookup(key);
        if let Some(c) = &cached
            && !c.requires_refresh(now, jitter())
        {
            return Ok(c.token.clone());
        }
        match request(client, key).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                if let Ok(mut entries) = self.entries.lock() {
                    entries.insert(key.clone(), fresh);
                }
                Ok(token)
            }
            Err(message) => match cached {
                None => Err(SetUpError::TokenFetch(message)),
                Some(c) if c.expired(Timestamp::now()) => Err(SetUpError::TokenExpired {
                    service_account: format!("{}/{}", key.namespace, key.service_account),
                    message,
                }),
                Some(c) => {
                    tracing::warn!(
                        namespace = %key.namespace,
                        service_account = %key.service_account,
                        pod_uid = %key.pod_uid,
                        error = %message,
                        "cannot refresh service account token; keeping the current one"
                    );
                    Ok(c.token)
                }
            },
        }
    }

    fn lookup(&self, key: &TokenKey) -> Option<CachedToken> {
        self.entries.lock().ok()?.get(key).cloned()
    }

    /// Forgets the tokens of a pod (at teardown).
    pub fn forget_pod(&self, pod_uid: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|k, _| k.pod_uid != pod_uid);
        }
    }

    /// Forgets expired tokens.
    pub fn gc(&self) {
        let now = Timestamp::now();
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, t| !t.expired(now));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Ages a cached token as if it had been issued `seconds` earlier (tests of rotation).
    #[cfg(test)]
    pub(crate) fn age(&self, seconds: i64) {
        if let Ok(mut entries) = self.entries.lock() {
            for t in entries.values_mut() {
                t.expiration -= jiff::SignedDuration::from_secs(seconds);
            }
        }
    }
}

fn jitter() -> i64 {
    i64::from(super::random_u32() % (MAX_JITTER_SECONDS + 1))
}

/// POST `serviceaccounts/<name>/token`, bound to the pod. The error is the message of the failure.
async fn request(client: Option<&kube::Client>, key: &TokenKey) -> Result<CachedToken, String> {
    let Some(client) = client else {
        return Err(SetUpError::NoApiServer {
            kind: "serviceaccount token for",
            name: key.service_account.clone(),
        }
        .to_string());
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &key.namespace);
    let body = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: (!key.audiences.is_empty()).then(|| key.audiences.clone()),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(key.pod_name.clone()),
                uid: Some(key.pod_uid.clone()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let response: TokenRequest = api
        .create_subresource("token", &key.service_account, &PostParams::default(), &body)
        .await
        .map_err(|e| super::api_message(&e))?;
    let status = response.status.unwrap_or_default();
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the API server returned an empty token".to_string())?;
    let expiration_seconds = response
        .spec
        .and_then(|s| s.expiration_seconds)
        .unwrap_or(key.expiration_seconds);
    let expiration = status.expiration_timestamp.map_or_else(
        || Timestamp::now() + jiff::SignedDuration::from_secs(expiration_seconds),
        |t| t.0,
    );
    Ok(CachedToken {
        token,
        expiration,
        expiration_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(issued_ago: i64, lifetime: i64) -> (CachedToken, Timestamp) {
        let now = Timestamp::now();
        let issued = now - jiff::SignedDuration::from_secs(issued_ago);
        (
            CachedToken {
                token: "t".into(),
                expiration: issued + jiff::SignedDuration::from_secs(lifetime),
                expiration_seconds: lifetime,
            },
            now,
        )
    }

    #[test]
    fn refresh_after_eighty_percent_or_a_day() {
        let (t, now) = token(60, 3600);
        assert!(!t.requires_refresh(now, 0));
        let (t, now) = token(2879, 3600); // just under 80 %
        assert!(!t.requires_refresh(now, 0));
        let (t, now) = token(2881, 3600);
        assert!(t.requires_refresh(now, 0));
        // a week-long token is refreshed after 24 h although far from 80 %
        let (t, now) = token(24 * 3600 + 1, 7 * 24 * 3600);
        assert!(t.requires_refresh(now, 0));
        let (t, now) = token(23 * 3600, 7 * 24 * 3600);
        assert!(!t.requires_refresh(now, 0));
        // jitter brings the refresh forward
        let (t, now) = token(2875, 3600);
        assert!(t.requires_refresh(now, 10));
        let (t, now) = token(3601, 3600);
        assert!(t.expired(now));
    }
}
