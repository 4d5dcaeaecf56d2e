//! Notification sinks and their secrets (`jit notify ...`); rights are the service's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use jitgate_api::{DeadCount, DeadDeliveries, NewSink, SecretBody, SinkInfo, SinkTestResult};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::{Body, BodyOrDefault};
use crate::http::respond;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/notify/sinks", get(list).post(add))
        .route("/api/v1/notify/sinks/{name}", delete(remove))
        .route("/api/v1/notify/sinks/{name}/test", post(test))
        .route("/api/v1/notify/status", get(status))
        .route("/api/v1/notify/retry", post(retry))
        .route("/api/v1/notify/discard", post(discard))
        .route("/api/v1/notify/secrets", get(secrets))
        .route("/api/v1/notify/secrets/{name}", put(put_secret))
}

async fn list(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(respond::list(st.app.notifications.list(&c).await?))
}

async fn add(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<NewSink>,
) -> Result<(StatusCode, Json<SinkInfo>), HttpError> {
    Ok((
        StatusCode::CREATED,
        Json(st.app.notifications.add(&c, b).await?),
    ))
}

async fn remove(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.app.notifications.remove(&c, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn test(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
) -> Result<Json<SinkTestResult>, HttpError> {
    Ok(Json(st.app.notifications.test(&c, &name).await?))
}

async fn status(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(respond::list(st.app.notifications.status(&c).await?))
}

async fn retry(
    State(st): State<AppState>,
    c: Caller,
    BodyOrDefault(b): BodyOrDefault<DeadDeliveries>,
) -> Result<Json<DeadCount>, HttpError> {
    let deliveries = st.app.notifications.retry(&c, b.sink.as_deref()).await?;
    Ok(Json(DeadCount { deliveries }))
}

/// The secrets' names (never a value).
async fn discard(
    State(st): State<AppState>,
    c: Caller,
    BodyOrDefault(b): BodyOrDefault<DeadDeliveries>,
) -> Result<Json<DeadCount>, HttpError> {
    let deliveries = st.app.notifications.discard(&c, b.sink.as_deref()).await?;
    Ok(Json(DeadCount { deliveries }))
}

async fn secrets(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(respond::list(st.app.notifications.secret_names(&c).await?))
}

async fn put_secret(
    State(st): State<AppState>,
    c: Caller,
    Path(name): Path<String>,
    Body(b): Body<SecretBody>,
) -> Result<StatusCode, HttpError> {
    st.app.notifications.put_secret(&c, &name, &b.value).await?;
    Ok(StatusCode::NO_CONTENT)
}
