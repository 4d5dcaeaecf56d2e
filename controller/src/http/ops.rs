//! For load balancers and monitoring: `/healthz` and `/readyz` (on the API, without
//! authentication, and on the metrics listener), the metrics listener's own read-only router
//! (`/metrics`, Prometheus text format), and the middleware that counts API requests by
//! operation and outcome. None of these answers reveals more than check names and results.

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::health;
use crate::http::error::HttpError;
use crate::http::state::AppState;
use crate::metrics::{Metrics, Outcome};

/// The unauthenticated health routes of the API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The metrics listener: `/metrics`, `/healthz`, `/readyz`, GET only; anything else 404.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .merge(router())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .method_not_allowed_fallback(|| async {
            (StatusCode::METHOD_NOT_ALLOWED, "read-only: GET only\n")
        })
        .with_state(state)
}

/// The process is up and serving.
async fn healthz() -> Response {
    Json(serde_json::json!({"status": "alive"})).into_response()
}

/// 200 when the database answers, its schema is current and the cluster has a leader, else
/// 503; the body names each check's result.
async fn readyz(State(st): State<AppState>) -> Response {
    let mut r = health::readiness(&st.app.db, &st.metrics, &st.app.leader.status())
        .await
        .with_keys(&st.app.keys);
    r.checks.sign_in = st.app.sessions.status().map(|s| match s {
        jitgate_oidc::ProviderStatus::Ready { .. } => "ready",
        jitgate_oidc::ProviderStatus::Unavailable { .. } => "unavailable",
    });
    let status = if r.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Result<Response, HttpError> {
    let text = health::scrape(&st.app, &st.metrics).await?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// The `operation` label: the method and the route template, so that ids in paths do not
/// make new series; requests no route matched share one value.
fn operation(method: &Method, path: Option<&MatchedPath>) -> String {
    let Some(path) = path else {
        return "unmatched".into();
    };
    let m = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS => method.as_str(),
        // Any token is a method: keep the label's values few.
        _ => "OTHER",
    };
    format!("{m} {}", path.as_str())
}

/// Counts each API request once it is answered.
pub async fn count(State(m): State<Metrics>, req: Request, next: Next) -> Response {
    let op = operation(req.method(), req.extensions().get::<MatchedPath>());
    let resp = next.run(req).await;
    m.request(op, Outcome::of_status(resp.status().as_u16()));
    resp
}
