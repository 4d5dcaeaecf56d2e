//! One HTTPS POST and what came of it.

use std::io;
use std::time::{Duration, SystemTime};

use crate::outcome::{Failure, FailureKind, Outcome, StatusClass, parse_retry_after};
use crate::render::webhook::HttpPayload;
use crate::resolve::ResolveError;
use crate::sink_url::SinkUrl;

use super::find_cause as find;

pub(super) async fn post(
    client: &reqwest::Client,
    url: &SinkUrl,
    payload: &HttpPayload,
    timeout: Duration,
) -> Outcome {
    let mut req = client
        .post(url.as_url().clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(payload.body.clone());
    for (name, value) in &payload.headers {
        req = req.header(*name, value);
    }
    // The client's own timeout covers the request; this one also covers anything it does
    // not (a resolver that never answers).
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_millis(250);
    let sent = tokio::time::timeout_at(deadline, req.send()).await;
    let mut resp = match sent {
        Err(_) => return Outcome::failed(FailureKind::Timeout, "no answer within the timeout"),
        Ok(Err(e)) => return Outcome::Failed(classify_error(&e)),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    // A short body is read and thrown away, so that the connection goes back to the pool
    // (keep-alive: the next delivery to this sink skips the TCP and TLS handshakes); a
    // longer or slower one is dropped, which closes the connection. It is never kept.
    let _ = tokio::time::timeout_at(deadline, discard(&mut resp)).await;
    classify_status(status, retry_after)
}

/// Most of a response body read (and discarded) to keep its connection.
const DISCARD_LIMIT: usize = 16 * 1024;

/// Reads `resp`'s body to its end if it is at most [`DISCARD_LIMIT`] bytes; stops early
/// otherwise.
async fn discard(resp: &mut reqwest::Response) {
    let mut seen = 0usize;
    while let Ok(Some(chunk)) = resp.chunk().await {
        seen = seen.saturating_add(chunk.len());
        if seen > DISCARD_LIMIT {
            return;
        }
    }
}

/// An answer's status as an outcome. 408 is a timeout on the receiver's side and 429 asks
/// us to slow down: both are worth retrying, unlike other 4xx.
pub(crate) fn classify_status(status: u16, retry_after: Option<Duration>) -> Outcome {
    let Some(class) = StatusClass::of_http(status) else {
        return Outcome::failed(FailureKind::Network, format!("unexpected status {status}"));
    };
    let kind = match (class, status) {
        (StatusClass::Success, _) => return Outcome::Delivered { status: class },
        (_, 429) => FailureKind::RateLimited,
        (_, 408) => FailureKind::Timeout,
        (StatusClass::Redirect, _) => FailureKind::Redirect,
        (StatusClass::ClientError, _) => FailureKind::Http4xx,
        (StatusClass::ServerError, _) => FailureKind::Http5xx,
    };
    let detail = match kind {
        FailureKind::Redirect => format!("HTTP {status} (redirects are not followed)"),
        _ => format!("HTTP {status}"),
    };
    Outcome::Failed(Failure {
        kind,
        status: Some(class),
        retry_after: retry_after.filter(|_| matches!(status, 429 | 503)),
        detail,
    })
}

fn classify_error(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        return Failure::new(FailureKind::Timeout, "no answer within the timeout");
    }
    if let Some(r) = find::<ResolveError>(e) {
        let kind = match r {
            ResolveError::Blocked(_) => FailureKind::BlockedAddress,
            ResolveError::Dns(_) | ResolveError::NoAddress => FailureKind::Dns,
        };
        return Failure::new(kind, r.to_string());
    }
    if let Some(t) = find::<rustls::Error>(e) {
        return Failure::new(FailureKind::Tls, format!("TLS: {t}"));
    }
    if let Some(io) = find::<io::Error>(e) {
        let kind = match io.kind() {
            io::ErrorKind::ConnectionRefused => FailureKind::Refused,
            io::ErrorKind::TimedOut => FailureKind::Timeout,
            _ => FailureKind::Network,
        };
        return Failure::new(kind, format!("{}", io.kind()));
    }
    Failure::new(
        FailureKind::Network,
        if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert!(classify_status(204, None).is_delivered());
        let k = |s| {
            classify_status(s, Some(Duration::from_secs(3)))
                .failure()
                .cloned()
                .unwrap()
        };
        assert_eq!(k(302).kind, FailureKind::Redirect);
        assert_eq!(k(404).kind, FailureKind::Http4xx);
        assert_eq!(k(404).retry_after, None);
        assert_eq!(k(408).kind, FailureKind::Timeout);
        assert_eq!(k(429).kind, FailureKind::RateLimited);
        assert_eq!(k(429).retry_after, Some(Duration::from_secs(3)));
        assert_eq!(k(500).kind, FailureKind::Http5xx);
        assert_eq!(k(503).retry_after, Some(Duration::from_secs(3)));
        assert_eq!(k(503).status, Some(StatusClass::ServerError));
        assert_eq!(k(999).kind, FailureKind::Network);
    }
}
