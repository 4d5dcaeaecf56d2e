//! The grant-signing keys' status, for administrators (`/api/v1/keys`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use jitgate_api::KeyStatus;

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/keys", get(keys))
}

async fn keys(State(st): State<AppState>, c: Caller) -> Result<Json<KeyStatus>, HttpError> {
    Ok(Json(
        crate::keys::status::key_status(&st.app.db, &c, st.app.key_switch_grace).await?,
    ))
}
