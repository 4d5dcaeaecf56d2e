//! The HTTPS JSON API (routes under `/api/v1`, documented in `controller/openapi.yaml`): each
//! feature's router, merged, with one error type mapped at the edge ([`error`]). Handlers
//! extract, call the domain services and shape the response; they decide nothing (rights are
//! checked by the services, `authz`).

pub mod activity;
pub mod agents;
pub mod apply;
pub mod approvals;
pub mod auth;
pub mod compliance;
pub mod error;
pub mod extract;
pub mod inventory;
pub mod keys;
pub mod notify;
pub mod ops;
pub mod origin;
pub mod policies;
pub mod portal;
pub mod ratelimit;
pub mod requests;
pub mod respond;
pub mod sessions;
pub mod state;
pub mod web_signin;

use axum::Router;
use jitgate_api::ErrorCode;

use crate::http::error::HttpError;
use crate::http::state::AppState;

/// The whole API, and `/healthz` and `/readyz` (unauthenticated), each request counted.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .merge(ops::router())
        .merge(inventory::router())
        .merge(policies::router())
        .merge(requests::router())
        .merge(approvals::router())
        .merge(activity::router())
        .merge(agents::router())
        .merge(compliance::router())
        .merge(apply::router())
        .merge(notify::router())
        .merge(auth::router())
        .merge(sessions::router())
        .merge(keys::router())
        .merge(portal::router())
        .fallback(|| async {
            HttpError::new(
                ErrorCode::NoSuchRoute,
                "no such API route (see openapi.yaml)",
            )
        })
        .method_not_allowed_fallback(|| async {
            HttpError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(metrics, ops::count))
        .with_state(state)
}
