//! What every portal page shares: the security headers, the frame around each page (who
//! is signed in, their rights, their address as the controller sees it), rendering, and
//! errors shown as pages.

use askama::Template;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::authz::Caller;
use crate::http::error::{HttpError, status};

/// No inline script or style, nothing from elsewhere, never framed.
pub const CSP: &str = "default-src 'self'; object-src 'none'; frame-ancestors 'none'; \
                       base-uri 'none'; form-action 'self'";

/// Sets the portal's security headers on every response (pages, fragments, assets, errors);
/// responses that do not say how to cache are not cached.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The frame of a page: who is signed in, with which rights, from which address.
pub struct Chrome {
    pub name: String,
    pub rights: String,
    pub address: String,
    pub csrf: String,
    /// The navigation entry of this page.
    pub here: &'static str,
    /// Whether the viewer may see notification sinks (the Notifications entry).
    pub sinks: bool,
    /// Whether the viewer may see the grant-signing keys (the Keys entry).
    pub keys: bool,
}

/// "requester on rg:prod, reader on *", or "no role".
pub fn rights(c: &Caller) -> String {
    if c.grants.is_empty() {
        return "no role".into();
    }
    c.grants
        .iter()
        .map(|g| format!("{} on {}", g.role, g.scope))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rendered page or fragment with its status.
pub fn html<T: Template>(code: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(body) => (
            code,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "portal page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered (see the controller log)",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "portal/error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
}

/// An error as a page, in words, with the status the API would give.
pub fn error(e: HttpError) -> Response {
    let title = match status(&e.code) {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::BAD_REQUEST => "Invalid request",
        StatusCode::CONFLICT => "Conflict",
        _ => "Something went wrong",
    };
    html(
        status(&e.code),
        &ErrorPage {
            title,
            message: &e.message,
        },
    )
}

/// A handler's failure, shown as an error page: the one error type of the portal's
/// handlers, so they can use `?` on the services.
pub struct PageError(pub HttpError);

impl From<HttpError> for PageError {
    fn from(e: HttpError) -> PageError {
        PageError(e)
    }
}

impl From<crate::error::Error> for PageError {
    fn from(e: crate::error::Error) -> PageError {
        PageError(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error(self.0)
    }
}

/// A refusal with its code, as a page.
pub fn refuse(code: jitgate_api::ErrorCode, message: impl Into<String>) -> PageError {
    PageError(HttpError::new(code, message))
}

/// What a portal handler returns.
pub type PageResult = Result<Response, PageError>;

/// The sources of a requested port, as one line.
pub fn sources(p: &jitgate_api::RequestPort) -> String {
    p.allowed_source_address_prefixes
        .clone()
        .or_else(|| p.allowed_source_address_prefix.clone().map(|x| vec![x]))
        .unwrap_or_default()
        .join(", ")
}

/// The allowed sources of a policy's port, as listed.
pub fn policy_sources(p: &jitgate_api::PolicyPort) -> String {
    p.allowed_source_address_prefixes
        .clone()
        .or_else(|| p.allowed_source_address_prefix.clone().map(|x| vec![x]))
        .unwrap_or_default()
        .join(", ")
}

/// A 303 to a path of this site.
pub fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Milliseconds since the epoch as "2026-11-30 05:12 UTC".
pub fn when(ms: i64) -> String {
    use time::OffsetDateTime;
    let Ok(t) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return "-".into();
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&fmt).unwrap_or_else(|_| "-".into())
}

/// An RFC 3339 time of the API as [`when`] shows it (as given when it does not parse).
pub fn when_utc(rfc3339: &str) -> String {
    jitgate_api::time::parse(rfc3339)
        .map(when)
        .unwrap_or_else(|_| rfc3339.to_string())
}

/// "1 h 05 min" from now until `end_ms` ("ended" once past).
pub fn remaining(end_ms: i64, now_ms: i64) -> String {
    let left = (end_ms - now_ms) / 1000;
    if left <= 0 {
        return "ended".into();
    }
    let (h, m, s) = (left / 3600, (left % 3600) / 60, left % 60);
    if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

/// A form field's value, trimmed; None when absent or empty.
pub fn some(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// A time field: RFC 3339, or a datetime-local value read as UTC.
pub fn time_field(name: &str, v: &Option<String>) -> Result<Option<String>, PageError> {
    let Some(s) = some(v) else { return Ok(None) };
    let full = if s.len() == 16 && s.as_bytes().get(10) == Some(&b'T') {
        format!("{s}:00Z")
    } else {
        s.clone()
    };
    jitgate_api::time::parse(&full).map_err(|_| {
        refuse(
            jitgate_api::ErrorCode::InvalidTime,
            format!("{name} {s:?} is not a time (YYYY-MM-DDTHH:MM, UTC)"),
        )
    })?;
    Ok(Some(full))
}

/// An agent's state in words, as the pages show it: "online", "degraded: why; why",
/// "offline since <time>", "revoked".
pub fn agent_words(
    c: &jitgate_api::AgentConnection,
    problems: &[String],
    last_seen_ms: Option<i64>,
) -> String {
    use jitgate_api::AgentConnection;
    match c {
        AgentConnection::Degraded if !problems.is_empty() => {
            format!("degraded: {}", problems.join("; "))
        }
        AgentConnection::Offline => match last_seen_ms {
            Some(ms) => format!("offline since {}", when(ms)),
            None => "offline (never connected)".into(),
        },
        s => s.as_str().to_string(),
    }
}

/// A list exported as the API exports it, as a download `NAME.csv` or `NAME.json`
/// (`format`: csv or json; none is json). `name`: ASCII letters, digits and `-`.
pub fn export<T: serde::Serialize>(
    format: Option<&str>,
    name: &str,
    items: Vec<T>,
    to_csv: impl FnOnce(&[T]) -> crate::error::Result<String>,
) -> PageResult {
    let (mut r, ext) = match format {
        Some("csv") => (crate::http::respond::csv(to_csv(&items)?), "csv"),
        Some("json") | None => (crate::http::respond::list(items), "json"),
        Some(other) => {
            return Err(refuse(
                jitgate_api::ErrorCode::InvalidQuery,
                format!("format {other:?}: csv or json"),
            ));
        }
    };
    if let Ok(h) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{ext}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, h);
    }
    Ok(r)
}

/// `s` as one path segment or query value.
pub fn url_path(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_words() {
        assert_eq!(when(0), "1970-01-01 00:00 UTC");
        assert_eq!(remaining(3_900_000, 0), "1 h 05 min");
        assert_eq!(remaining(61_000, 0), "1 min 01 s");
        assert_eq!(remaining(1_000, 2_000), "ended");
    }

    #[test]
    fn time_fields_read_as_utc() {
        let f = |s: &str| time_field("from", &Some(s.to_string()));
        assert_eq!(
            f("2026-11-30T10:15").ok().flatten().as_deref(),
            Some("2026-11-30T10:15:00Z")
        );
        assert_eq!(
            f("2026-11-30T10:15:00Z").ok().flatten().as_deref(),
            Some("2026-11-30T10:15:00Z")
        );
        assert!(f("yesterday").is_err());
        assert_eq!(f("  ").ok().flatten(), None);
    }
}
