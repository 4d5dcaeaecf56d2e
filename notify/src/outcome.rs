//! What one delivery attempt came to: a status class and a short error kind, never a
//! response body (a receiver's answer is not ours to store or show).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// The class of an HTTP status or SMTP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusClass {
    Success,
    Redirect,
    ClientError,
    ServerError,
}

impl StatusClass {
    pub fn of_http(status: u16) -> Option<StatusClass> {
        match status {
            200..=299 => Some(StatusClass::Success),
            300..=399 => Some(StatusClass::Redirect),
            400..=499 => Some(StatusClass::ClientError),
            500..=599 => Some(StatusClass::ServerError),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirect => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}

impl FromStr for StatusClass {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            StatusClass::Success,
            StatusClass::Redirect,
            StatusClass::ClientError,
            StatusClass::ServerError,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| UnknownName(s.chars().take(32).collect()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownName(pub String);

/// Why an attempt failed, as `jit notify status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No complete answer within the total timeout (connect, TLS, request and response).
    Timeout,
    /// The connection was refused.
    Refused,
    /// The TLS handshake failed (untrusted or wrong certificate, protocol error).
    Tls,
    /// The name did not resolve.
    Dns,
    /// The target resolved to an address the egress policy refuses.
    BlockedAddress,
    /// A 3xx answer: redirects are never followed.
    Redirect,
    /// A 4xx answer other than 408/429.
    Http4xx,
    /// A 5xx answer, or 408.
    Http5xx,
    /// 429 (with its Retry-After, when given).
    RateLimited,
    /// The connection broke in another way (reset, closed early).
    Network,
    /// A temporary SMTP refusal (4yz).
    Smtp4xx,
    /// A permanent SMTP refusal (5yz).
    Smtp5xx,
    /// The sink cannot be sent to as configured: its secret is missing, no recipient has an
    /// address, the URL is no longer allowed by the configuration, no SMTP relay is set.
    Misconfigured,
}

impl FailureKind {
    pub const ALL: [FailureKind; 13] = [
        FailureKind::Timeout,
        FailureKind::Refused,
        FailureKind::Tls,
        FailureKind::Dns,
        FailureKind::BlockedAddress,
        FailureKind::Redirect,
        FailureKind::Http4xx,
        FailureKind::Http5xx,
        FailureKind::RateLimited,
        FailureKind::Network,
        FailureKind::Smtp4xx,
        FailureKind::Smtp5xx,
        FailureKind::Misconfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Tls => "tls",
            FailureKind::Dns => "dns",
            FailureKind::BlockedAddress => "blocked-address",
            FailureKind::Redirect => "http-3xx",
            FailureKind::Http4xx => "http-4xx",
            FailureKind::Http5xx => "http-5xx",
            FailureKind::RateLimited => "rate-limited",
            FailureKind::Network => "network",
            FailureKind::Smtp4xx => "smtp-4xx",
            FailureKind::Smtp5xx => "smtp-5xx",
            FailureKind::Misconfigured => "misconfigured",
        }
    }

    /// Retrying cannot help until someone changes the sink, the receiver or the
    /// configuration: the delivery goes dead at once (and `jit notify retry` re-drives it).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            FailureKind::BlockedAddress
                | FailureKind::Redirect
                | FailureKind::Http4xx
                | FailureKind::Smtp5xx
                | FailureKind::Misconfigured
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailureKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FailureKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName(s.chars().take(32).collect()))
    }
}

/// A failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The answer's class when there was an answer.
    pub status: Option<StatusClass>,
    /// How long the receiver asked us to wait (429 or 503 with `Retry-After`).
    pub retry_after: Option<Duration>,
    /// A short description for logs and `status` (no response body, no URL).
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            status: None,
            retry_after: None,
            detail: detail.into(),
        }
    }
}

/// The result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered { status: StatusClass },
    Failed(Failure),
}

impl Outcome {
    pub fn failed(kind: FailureKind, detail: impl Into<String>) -> Outcome {
        Outcome::Failed(Failure::new(kind, detail))
    }
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Outcome::Failed(f) => Some(f),
            Outcome::Delivered { .. } => None,
        }
    }
    /// `delivered` or the failure kind.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Failed(f) => f.kind.as_str(),
        }
    }
}

/// The longest wait a `Retry-After` can ask for; longer values are cut to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3), relative to `now`.
/// A date in the past means "now" (zero); garbage means no hint.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        for bad in ["", "-5", "1.5", "soon", "Wed, 99 Foo 2026"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn names_round_trip() {
        for k in FailureKind::ALL {
            assert_eq!(k.as_str().parse::<FailureKind>().unwrap(), k);
        }
        assert_eq!(
            "5xx".parse::<StatusClass>().unwrap(),
            StatusClass::ServerError
        );
        assert!("6xx".parse::<StatusClass>().is_err());
    }
}
