//! kubelet's HTTP endpoints: `/healthz` on the healthz port; on the read-only port `/healthz`,
//! `/pods` (a v1 PodList with live status), `/metrics`, `/metrics/probes` and `/stats/summary`
//! ([`stats_summary`]);
//! and the kubelet port ([`api`]: TLS, authenticated, with logs, exec, attach and port-forward as
//! well, and [`configz`]).

pub mod api;
pub mod auth;
pub mod cadvisor_metrics;
pub mod configz;
pub mod https;
pub mod logs;
pub mod resource_metrics;
pub mod stats_summary;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::metrics;
use crate::pleg::PlegHealth;
use crate::status::StatusManager;

#[derive(Clone)]
pub struct ServerState {
    pub status: StatusManager,
    pub registry: Arc<Registry>,
    /// `/metrics/probes`' registry.
    pub probes: Arc<Registry>,
    pub pleg: PlegHealth,
    /// `/stats/summary`.
    pub stats: crate::stats::StatsProvider,
}

async fn healthz(State(state): State<ServerState>) -> Response {
    match state.pleg.check() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(message) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("[-]pleg failed: {message}\nhealthz check failed\n"),
        )
            .into_response(),
    }
}

async fn pods(State(state): State<ServerState>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": state.status.pods(),
    });
    axum::Json(list).into_response()
}

async fn metrics_handler(State(state): State<ServerState>) -> Response {
    serve_metrics(metrics::encode_with_process(&state.registry))
}

async fn probe_metrics_handler(State(state): State<ServerState>) -> Response {
    serve_metrics(metrics::encode(&state.probes))
}

fn serve_metrics(encoded: Result<(String, &'static str), std::fmt::Error>) -> Response {
    match encoded {
        Ok((body, content_type)) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response(),
    }
}

/// The healthz port's router.
pub fn healthz_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(state)
}

/// The read-only port's router (kubelet's default handlers; the kubelet port serves them too).
pub fn read_only_router(state: ServerState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/metrics", get(metrics_handler))
        .route("/metrics/probes", get(probe_metrics_handler))
        .route("/metrics/resource", get(resource_metrics::handler))
        .route("/metrics/cadvisor", get(cadvisor_metrics::handler))
        .route("/stats/summary", get(stats_summary::handler))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state() -> ServerState {
        let m = crate::metrics::Metrics::default();
        ServerState {
            status: StatusManager::default(),
            registry: Arc::new(m.registry()),
            probes: Arc::new(m.probes_registry()),
            pleg: PlegHealth::default(),
            stats: crate::stats::tests::unreachable_provider(),
        }
    }

    async fn get_body(router: Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn healthz_fails_until_pleg_relisted() {
        let s = state();
        let (code, body) = get_body(healthz_router(s.clone()), "/healthz").await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("pleg"), "{body}");
    }

    #[tokio::test]
    async fn pods_is_a_v1_pod_list_with_status() {
        let s = state();
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "uid": "u"}}))
                .expect("pod");
        s.status.set(
            Arc::new(pod),
            k8s_openapi::api::core::v1::PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            },
        );
        let (code, body) = get_body(read_only_router(s), "/pods").await;
        assert_eq!(code, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["kind"], "PodList");
        assert_eq!(v["items"][0]["metadata"]["name"], "p");
        assert_eq!(v["items"][0]["status"]["phase"], "Running");
    }

    #[tokio::test]
    async fn metrics_are_served() {
        let (code, body) = get_body(read_only_router(state()), "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("kubelet_running_pods"), "{body}");
        let (code, body) = get_body(read_only_router(state()), "/metrics/probes").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("process_start_time_seconds "), "{body}");
        assert!(!body.contains("kubelet_running_pods"), "{body}");
    }
}
