//! Response helpers shared by the feature routers.

use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use jitgate_api::{ErrorCode, Format, List};
use serde::Serialize;

use crate::http::error::HttpError;

/// The `format` query parameter (json when absent), one of `allowed`; else `InvalidQuery`.
pub fn format_of(f: Option<Format>, allowed: &[Format]) -> Result<Format, HttpError> {
    let f = f.unwrap_or(Format::Json);
    if allowed.contains(&f) {
        return Ok(f);
    }
    let names: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
    Err(HttpError::new(
        ErrorCode::InvalidQuery,
        format!(
            "format {:?} is invalid: use {}",
            f.as_str(),
            names.join(", ")
        ),
    ))
}

/// `{"value": [...]}`.
pub fn list<T: Serialize>(v: Vec<T>) -> Response {
    Json(List::from(v)).into_response()
}

pub fn csv(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv")], text).into_response()
}

/// One JSON document per line.
pub fn jsonl<T: Serialize>(v: &[T]) -> Result<Response, HttpError> {
    let mut out = String::new();
    for e in v {
        out.push_str(&serde_json::to_string(e).map_err(|e| {
            HttpError::from(crate::error::Error::Internal(format!("JSON lines: {e}")))
        })?);
        out.push('\n');
    }
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}
