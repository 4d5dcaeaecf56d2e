//! Policies as code: `POST /apply` (a declaration document: the plan, applied unless a dry
//! run) and `GET /export` (the state the caller can see, in the same format).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{ApplyBody, Document, Plan};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::Body;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/apply", post(apply))
        .route("/api/v1/export", get(export))
}

async fn apply(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<ApplyBody>,
) -> Result<Json<Plan>, HttpError> {
    Ok(Json(crate::apply::apply(&st.app, &c, b).await?))
}

async fn export(State(st): State<AppState>, c: Caller) -> Result<Json<Document>, HttpError> {
    Ok(Json(crate::apply::export(&st.app, &c).await?))
}
