//! People's sessions, for administrators: list and revoke (`/api/v1/sessions`).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get};
use serde::Deserialize;

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::Q;
use crate::http::respond::list;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}", delete(revoke))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListQuery {
    /// Ended and expired sessions too.
    #[serde(default)]
    all: bool,
}

async fn sessions(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ListQuery>,
) -> Result<Response, HttpError> {
    Ok(list(st.app.sessions.list(&c, q.all).await?))
}

async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.app.sessions.revoke(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
