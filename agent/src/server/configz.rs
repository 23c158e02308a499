//! `/configz`: the configuration the agent runs with, as kubelet serves it
//! (`{"kubeletconfig": {...}}`, kubelet's field names, Go durations). Kubelet installs it with its
//! debugging handlers, so it is on the kubelet port only (not the read-only port), authorized as
//! any other path there: `nodes/proxy`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::config::KubeletConfiguration;

/// The route, serving `config` (its apiVersion and kind left out, as kubelet's).
pub fn router(config: &KubeletConfiguration) -> Router {
    let config = Arc::new(KubeletConfiguration {
        api_version: None,
        kind: None,
        ..config.clone()
    });
    Router::new()
        .route("/configz", get(configz))
        .with_state(config)
}

async fn configz(State(config): State<Arc<KubeletConfiguration>>) -> Response {
    axum::Json(serde_json::json!({ "kubeletconfig": &*config })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn serves_the_effective_configuration_under_kubeletconfig() {
        let effective = crate::config::KubeletConfiguration::parse(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             maxPods: 42\nsyncFrequency: 90s\nevictionHard: {memory.available: 1Gi}\n",
            std::path::Path::new("kubelet.yaml"),
        )
        .expect("valid");
        let resp = router(&effective.config)
            .oneshot(
                Request::get("/configz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        let object = v.as_object().expect("an object");
        assert_eq!(object.keys().collect::<Vec<_>>(), ["kubeletconfig"]);
        let c = &v["kubeletconfig"];
        assert_eq!(c["maxPods"], 42);
        assert_eq!(c["syncFrequency"], "1m30s");
        assert_eq!(c["nodeStatusUpdateFrequency"], "10s");
        assert_eq!(c["evictionHard"]["memory.available"], "1Gi");
        assert_eq!(c["cgroupsPerQOS"], true);
        assert_eq!(c["authentication"]["webhook"]["enabled"], true);
        assert_eq!(c["logging"]["format"], "text");
        assert!(
            c.get("kind").is_none() && c.get("apiVersion").is_none(),
            "{c}"
        );
        // It reads back as the configuration it came from.
        let back: KubeletConfiguration = serde_json::from_value(c.clone()).expect("reads back");
        assert_eq!(
            back,
            KubeletConfiguration {
                api_version: None,
                kind: None,
                ..effective.config
            }
        );
    }

    /// Through the kubelet port's router: authenticated like every path there.
    #[tokio::test]
    async fn the_kubelet_port_serves_it_to_authenticated_callers_only() {
        let config = KubeletConfiguration {
            max_pods: 7,
            ..Default::default()
        };
        let metrics = crate::metrics::Metrics::default();
        let router = |anonymous: bool| {
            let state = super::super::api::ApiState {
                base: super::super::ServerState {
                    status: crate::status::StatusManager::default(),
                    registry: Arc::new(metrics.registry()),
                    probes: Arc::new(metrics.probes_registry()),
                    pleg: crate::pleg::PlegHealth::default(),
                    stats: crate::stats::tests::unreachable_provider(),
                },
                cri: mk_cri::CriClient::new(
                    "unix:///nonexistent/cri.sock",
                    std::time::Duration::from_secs(1),
                    mk_cri::CriMetrics::default(),
                )
                .expect("a lazy client"),
                config: Arc::new(config.clone()),
            };
            let auth = super::super::auth::Auth::new(
                anonymous,
                super::super::auth::AuthorizationMode::AlwaysAllow,
                false,
                None,
                "node".into(),
            );
            super::super::api::api_router(state, auth)
        };
        let get = |router: Router| async move {
            let resp = router
                .oneshot(
                    Request::get("/configz")
                        .body(Body::empty())
                        .expect("request"),
                )
                .await
                .expect("response");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            (status, bytes)
        };
        let (status, _) = get(router(false)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, bytes) = get(router(true)).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["kubeletconfig"]["maxPods"], 7);
    }
}
