//! The portal's static files, compiled into the binary (no CDN, no Node toolchain): the
//! style sheet and htmx (Zero-Clause BSD, from its npm package `htmx.org`; the version is
//! in the file name so it can be cached for good).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::http::state::AppState;

const HTMX: &[u8] = include_bytes!("../../../assets/htmx-2.0.11.min.js");
const CSS: &[u8] = include_bytes!("../../../assets/portal.css");

pub fn router() -> Router<AppState> {
    Router::new()
        // Browsers ask every site for /favicon.ico; the portal has no icon, and a 404 would
        // be a failed load in the console of every page.
        .route(
            "/favicon.ico",
            get(|| async { StatusCode::NO_CONTENT.into_response() }),
        )
        .route(
            "/assets/htmx-2.0.11.min.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                    ],
                    HTMX,
                )
                    .into_response()
            }),
        )
        .route(
            "/assets/portal.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=300"),
                    ],
                    CSS,
                )
                    .into_response()
            }),
        )
}
