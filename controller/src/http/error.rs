//! The one HTTP error type: the domain's errors mapped to status codes here and only here,
//! with the body `{"error": {"code", "message"}}` (docs/controller.md, "Errors").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jitgate_api::{ErrorBody, ErrorCode};

use crate::error::Error;

/// An error as the API reports it.
#[derive(Debug)]
pub struct HttpError {
    pub code: ErrorCode,
    pub message: String,
}

impl HttpError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> HttpError {
        HttpError {
            code,
            message: message.into(),
        }
    }
}

/// The status of each code (by its class, which `jit`'s exit codes share).
pub fn status(code: &ErrorCode) -> StatusCode {
    use jitgate_api::ErrorClass as K;
    match code.class() {
        Some(K::Invalid) => StatusCode::BAD_REQUEST,
        Some(K::Unauthenticated) => StatusCode::UNAUTHORIZED,
        Some(K::Forbidden) => StatusCode::FORBIDDEN,
        Some(K::NotFound) => StatusCode::NOT_FOUND,
        Some(K::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
        Some(K::Timeout) => StatusCode::REQUEST_TIMEOUT,
        Some(K::Conflict) => StatusCode::CONFLICT,
        Some(K::PreconditionFailed) => StatusCode::PRECONDITION_FAILED,
        Some(K::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(K::UnsupportedMediaType) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Some(K::TooManyRequests) => StatusCode::TOO_MANY_REQUESTS,
        Some(K::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
        Some(K::Internal) | None => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> HttpError {
        match e {
            Error::Refused { code, message } => HttpError { code, message },
            e if e.database_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                HttpError::new(
                    ErrorCode::DatabaseUnavailable,
                    "the database cannot be reached now; nothing was changed, try again",
                )
            }
            other => {
                tracing::error!(error = %other, "internal failure");
                HttpError::new(
                    ErrorCode::InternalError,
                    "internal error; nothing was changed (see the controller log)",
                )
            }
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = status(&self.code);
        let json = serde_json::to_vec(&ErrorBody::new(self.code, self.message))
            .unwrap_or_else(|_| b"{}".to_vec());
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// docs/controller.md's error table: `| 404 | `VmNotFound`, ... |` rows of "## Errors".
    fn documented() -> BTreeSet<(u16, String)> {
        let doc = include_str!("../../../docs/controller.md");
        let section = doc
            .split("\n## Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap();
        let mut out = BTreeSet::new();
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(status), Some(codes)) = (cells.get(1), cells.get(2)) else {
                continue;
            };
            let Ok(status) = status.parse::<u16>() else {
                continue;
            };
            // Codes are the quoted CamelCase words (not `application/json` in a note).
            for (i, part) in codes.split('`').enumerate() {
                let code_like = part.starts_with(|c: char| c.is_ascii_uppercase())
                    && part.chars().all(|c| c.is_ascii_alphanumeric());
                if i % 2 == 1 && code_like {
                    out.insert((status, part.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_documented_error_table_is_the_enum() {
        let doc = documented();
        let code: BTreeSet<(u16, String)> = ErrorCode::known()
            .map(|c| (status(&c).as_u16(), c.as_str().to_string()))
            .collect();
        assert_eq!(
            code.difference(&doc).collect::<Vec<_>>(),
            Vec::<&(u16, String)>::new(),
            "returned but not documented in docs/controller.md"
        );
        assert_eq!(
            doc.difference(&code).collect::<Vec<_>>(),
            Vec::<&(u16, String)>::new(),
            "documented in docs/controller.md but not an ErrorCode with that status"
        );
    }
}
