//! Access requests: initiate, read, history, revoke.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{HistoryQuery, InitiateBody, RequestView};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::{Body, Q};
use crate::http::respond::list;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/jitNetworkAccessPolicies/default/initiate",
            post(initiate),
        )
        .route("/api/v1/requests/{id}", get(request))
        .route("/api/v1/requests/{id}/revoke", post(revoke))
        .route("/api/v1/virtualMachines/{vm}/requests", get(history))
}

async fn initiate(
    State(st): State<AppState>,
    c: Caller,
    Body(body): Body<InitiateBody>,
) -> Result<Json<RequestView>, HttpError> {
    Ok(Json(st.app.lifecycle.request(&c, &body).await?))
}

async fn request(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, HttpError> {
    Ok(Json(st.app.lifecycle.get(&c, &id).await?))
}

async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, HttpError> {
    Ok(Json(st.app.lifecycle.revoke(&c, &id).await?))
}

async fn history(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<HistoryQuery>,
) -> Result<Response, HttpError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(list(st.app.lifecycle.history(&c, &vm, limit).await?))
}
