//! `/stats/summary`: kubelet's stats/v1alpha1 Summary as JSON, on the kubelet port (authorized as
//! `nodes/stats`) and the read-only port. `?only_cpu_and_memory=true` answers only the CPU and
//! memory figures (kubelet's `GetCPUAndMemoryStats`). A failure is a 500 with kubelet's
//! `Internal Error: ...` text.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::ServerState;

/// Whether the query asks for CPU and memory only: exactly one `only_cpu_and_memory`, `true`.
pub fn only_cpu_and_memory(query: Option<&str>) -> bool {
    let values: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "only_cpu_and_memory")
        .map(|(_, v)| v.into_owned())
        .collect();
    values.len() == 1 && values[0] == "true"
}

pub async fn handler(State(state): State<ServerState>, RawQuery(query): RawQuery) -> Response {
    let only = only_cpu_and_memory(query.as_deref());
    match state.stats.summary(only).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(e) => {
            tracing::error!(uri = "/stats/summary", error = %e, "HTTP InternalServerError serving");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Internal Error: {e}"),
            )
                .into_response()
        }
    }
}
