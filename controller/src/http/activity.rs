//! The activity log: entries (JSON, JSON lines, CSV), verification, checkpoints, export.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jitgate_api::{ActivityExport, ActivityQuery, CheckpointList, Format, VerifyReport};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::Q;
use crate::http::respond::{csv, format_of, jsonl, list};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/activityLog", get(entries))
        .route("/api/v1/activityLog/verify", get(verify))
        .route(
            "/api/v1/activityLog/checkpoints",
            get(checkpoints).post(sign),
        )
        .route("/api/v1/activityLog/export", get(export))
}

async fn entries(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ActivityQuery>,
) -> Result<Response, HttpError> {
    let format = format_of(q.format, &[Format::Json, Format::Jsonl, Format::Csv])?;
    let v = st.app.audit.entries(&c, &q).await?;
    match format {
        Format::Json => Ok(list(v)),
        Format::Jsonl => jsonl(&v),
        Format::Csv => Ok(csv(crate::audit::to_csv(&v)?)),
    }
}

async fn verify(State(st): State<AppState>, c: Caller) -> Result<Json<VerifyReport>, HttpError> {
    Ok(Json(st.app.audit.verify(&c).await?))
}

async fn checkpoints(
    State(st): State<AppState>,
    c: Caller,
) -> Result<Json<CheckpointList>, HttpError> {
    Ok(Json(st.app.audit.checkpoints(&c).await?))
}

/// 201 with the new checkpoint, or 200 with the latest one when the head has not moved.
async fn sign(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    let (created, cp) = st.app.audit.sign(&c).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(cp)).into_response())
}

async fn export(State(st): State<AppState>, c: Caller) -> Result<Json<ActivityExport>, HttpError> {
    Ok(Json(st.app.audit.export(&c).await?))
}
