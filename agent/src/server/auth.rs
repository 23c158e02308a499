//! Who may use the kubelet port, as the kubelet decides it: authentication by a verified client
//! certificate (`authentication.x509.clientCAFile`), by a bearer token checked with a TokenReview
//! (`authentication.webhook.enabled`), or as `system:anonymous` (`authentication.anonymous.enabled`);
//! then authorization `AlwaysAllow`, or `Webhook`: a SubjectAccessReview for the node
//! subresource the path belongs to (`nodes/proxy`, `nodes/log`, `nodes/stats`, `nodes/metrics`),
//! with the verb from the HTTP method. Answers are cached (webhook authorization: allowed 5 min,
//! denied 30 s; tokens 2 min, the kubelet's defaults).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The verified client certificate of a connection, if it presented one.
#[derive(Debug, Clone, Default)]
pub struct PeerCertificate(pub Option<(String, Vec<String>)>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Forbidden (user={user}, verb={verb}, resource=nodes, subresource={subresource})")]
    Forbidden {
        user: String,
        verb: String,
        subresource: String,
    },
    #[error("authorization error: {0}")]
    Webhook(String),
}

/// `authorization.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    AlwaysAllow,
    Webhook,
}

/// The kubelet port's authentication and authorization settings.
#[derive(Clone)]
pub struct Auth {
    pub anonymous: bool,
    pub mode: AuthorizationMode,
    /// For TokenReviews (token authentication) and SubjectAccessReviews (Webhook mode).
    pub client: Option<kube::Client>,
    pub token_webhook: bool,
    pub node_name: String,
    decisions: Arc<Mutex<HashMap<Decision, (Instant, bool)>>>,
    tokens: Arc<Mutex<HashMap<String, TokenAnswer>>>,
}

/// A cached authorization question: who, which verb, which node subresource.
type Decision = (User, String, String);
/// A cached TokenReview answer: when, and the user (None: not authenticated).
type TokenAnswer = (Instant, Option<User>);

const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);
const TOKEN_TTL: Duration = Duration::from_secs(120);

impl Auth {
    pub fn new(
        anonymous: bool,
        mode: AuthorizationMode,
        token_webhook: bool,
        client: Option<kube::Client>,
        node_name: String,
    ) -> Self {
        Self {
            anonymous,
            mode,
            client,
            token_webhook,
            node_name,
            decisions: Arc::default(),
            tokens: Arc::default(),
        }
    }

    /// The caller: its certificate's user, its token's, or anonymous.
    pub async fn authenticate(
        &self,
        certificate: &PeerCertificate,
        authorization_header: Option<&str>,
    ) -> Result<User, AuthError> {
        if let Some((name, groups)) = &certificate.0 {
            let mut groups = groups.clone();
            groups.push("system:authenticated".into());
            return Ok(User {
                name: name.clone(),
                groups,
            });
        }
        if let Some(token) = authorization_header.and_then(|h| h.strip_prefix("Bearer ")) {
            if let Some(user) = self.review_token(token.trim()).await? {
                return Ok(user);
            }
            return Err(AuthError::Unauthorized);
        }
        if self.anonymous {
            return Ok(User {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
            });
        }
        Err(AuthError::Unauthorized)
    }

    async fn review_token(&self, token: &str) -> Result<Option<User>, AuthError> {
        let (true, Some(client)) = (self.token_webhook, &self.client) else {
            return Ok(None);
        };
        if let Some((at, user)) = lock(&self.tokens).get(token)
            && at.elapsed() < TOKEN_TTL
        {
            return Ok(user.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Webhook(format!("TokenReview: {e}")))?;
        let user = answer
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(User {
                    name: u.username?,
                    groups: u.groups.unwrap_or_default(),
                })
            });
        lock(&self.tokens).insert(token.to_owned(), (Instant::now(), user.clone()));
        Ok(user)
    }

    /// May `user` do `method` on `path`?
    pub async fn authorize(&self, user: &User, method: &str, path: &str) -> Result<(), AuthError> {
        let (verb, subresource) = attributes(method, path);
        let allowed = match self.mode {
            AuthorizationMode::AlwaysAllow => true,
            AuthorizationMode::Webhook => self.review_access(user, verb, subresource).await?,
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                user: user.name.clone(),
                verb: verb.into(),
                subresource: subresource.into(),
            })
        }
    }

    async fn review_access(
        &self,
        user: &User,
        verb: &str,
        subresource: &str,
    ) -> Result<bool, AuthError> {
        let key = (user.clone(), verb.to_owned(), subresource.to_owned());
        if let Some((at, allowed)) = lock(&self.decisions).get(&key) {
            let ttl = if *allowed { ALLOWED_TTL } else { DENIED_TTL };
            if at.elapsed() < ttl {
                return Ok(*allowed);
            }
        }
        let client = self.client.clone().ok_or_else(|| {
            AuthError::Webhook(
                "authorization mode Webhook needs an API server (--kubeconfig)".into(),
            )
        })?;
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client)
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::Webhook(format!("SubjectAccessReview: {e}")))?;
        let allowed = answer.status.is_some_and(|s| s.allowed);
        lock(&self.decisions).insert(key, (Instant::now(), allowed));
        Ok(allowed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kubelet's request attributes: the verb from the method and the `nodes` subresource from
/// the path.
pub fn attributes(method: &str, path: &str) -> (&'static str, &'static str) {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "get",
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let subresource = if under("/stats") {
        "stats"
    } else if under("/metrics") {
        "metrics"
    } else if under("/logs") {
        "log"
    } else if under("/spec") {
        "spec"
    } else {
        "proxy"
    };
    (verb, subresource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_map_to_node_subresources() {
        let cases = [
            ("GET", "/stats/summary", ("get", "stats")),
            ("GET", "/metrics", ("get", "metrics")),
            ("GET", "/metrics/cadvisor", ("get", "metrics")),
            ("GET", "/logs/syslog", ("get", "log")),
            ("GET", "/containerLogs/ns/pod/c", ("get", "proxy")),
            ("POST", "/exec/ns/pod/c", ("create", "proxy")),
            ("GET", "/pods", ("get", "proxy")),
            ("GET", "/configz", ("get", "proxy")),
            ("GET", "/metricsfoo", ("get", "proxy")),
        ];
        for (method, path, expected) in cases {
            assert_eq!(attributes(method, path), expected, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn certificates_anonymous_and_missing_credentials() {
        let auth = Auth::new(
            false,
            AuthorizationMode::AlwaysAllow,
            false,
            None,
            "n".into(),
        );
        let cert = PeerCertificate(Some(("admin".into(), vec!["system:masters".into()])));
        let user = auth
            .authenticate(&cert, None)
            .await
            .expect("certificate user");
        assert_eq!(user.name, "admin");
        assert!(user.groups.contains(&"system:authenticated".to_owned()));
        assert_eq!(
            auth.authenticate(&PeerCertificate::default(), None).await,
            Err(AuthError::Unauthorized)
        );
        // A token nobody can review is not a user.
        assert_eq!(
            auth.authenticate(&PeerCertificate::default(), Some("Bearer abc"))
                .await,
            Err(AuthError::Unauthorized)
        );
        let anonymous = Auth::new(
            true,
            AuthorizationMode::AlwaysAllow,
            false,
            None,
            "n".into(),
        );
        let user = anonymous
            .authenticate(&PeerCertificate::default(), None)
            .await
            .expect("anonymous");
        assert_eq!(user.name, "system:anonymous");
        assert!(anonymous.authorize(&user, "GET", "/pods").await.is_ok());
    }

    /// A stand-in for the API server's review endpoints: tokens "good" are alice; alice may do
    /// anything, others nothing. Counts the reviews it answers.
    async fn review_server() -> (kube::Client, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::Json;
        use axum::routing::post;
        use serde_json::{Value, json};
        let reviews = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = reviews.clone();
        let app = axum::Router::new()
            .route(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                post(move |Json(mut review): Json<Value>| {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let spec = &review["spec"];
                        let allowed = spec["user"] == "alice"
                            && spec["resourceAttributes"]["resource"] == "nodes"
                            && spec["resourceAttributes"]["name"] == "node-1";
                        review["status"] = json!({"allowed": allowed});
                        Json(review)
                    }
                }),
            )
            .route(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                post(|Json(mut review): Json<Value>| async move {
                    review["status"] = if review["spec"]["token"] == "good" {
                        json!({"authenticated": true, "user": {"username": "alice", "groups": ["devs"]}})
                    } else {
                        json!({"authenticated": false})
                    };
                    Json(review)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}").parse().expect("url");
        let client = kube::Client::try_from(kube::Config::new(url)).expect("client");
        (client, reviews)
    }

    #[tokio::test]
    async fn webhook_tokens_and_access_reviews_with_caching() {
        let (client, reviews) = review_server().await;
        let auth = Auth::new(
            false,
            AuthorizationMode::Webhook,
            true,
            Some(client),
            "node-1".into(),
        );
        let none = PeerCertificate::default();
        let alice = auth
            .authenticate(&none, Some("Bearer good"))
            .await
            .expect("token user");
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["devs"]);
        assert_eq!(
            auth.authenticate(&none, Some("Bearer bad")).await,
            Err(AuthError::Unauthorized)
        );
        assert!(auth.authorize(&alice, "POST", "/exec/ns/p/c").await.is_ok());
        let bob = User {
            name: "bob".into(),
            groups: vec![],
        };
        assert_eq!(
            auth.authorize(&bob, "GET", "/containerLogs/ns/p/c").await,
            Err(AuthError::Forbidden {
                user: "bob".into(),
                verb: "get".into(),
                subresource: "proxy".into()
            })
        );
        // Both answers are cached: asking again reviews nothing.
        let asked = reviews.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(asked, 2);
        assert!(auth.authorize(&alice, "POST", "/exec/ns/p/c").await.is_ok());
        assert!(
            auth.authorize(&bob, "GET", "/containerLogs/ns/p/c")
                .await
                .is_err()
        );
        assert_eq!(reviews.load(std::sync::atomic::Ordering::SeqCst), asked);
    }

    #[tokio::test]
    async fn webhook_authorization_without_an_api_server_refuses() {
        let auth = Auth::new(true, AuthorizationMode::Webhook, false, None, "n".into());
        let user = User {
            name: "system:anonymous".into(),
            groups: vec![],
        };
        assert!(matches!(
            auth.authorize(&user, "GET", "/pods").await,
            Err(AuthError::Webhook(_))
        ));
    }
}
