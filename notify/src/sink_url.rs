//! A sink's URL: checked once, kept whole for sending, shown only redacted.
//!
//! Slack's and Teams' webhook URLs are credentials (whoever has one can post to the
//! channel), and a generic receiver's URL may carry a token too. So a [`SinkUrl`] has no
//! `Display` and no `Serialize`; its `Debug` and [`SinkUrl::redacted`] show the scheme, host
//! and port and a short fingerprint (so two URLs can be told apart), never the path or query.

use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// Longest URL accepted.
const MAX_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("the URL is longer than {MAX_LEN} characters")]
    TooLong,
    #[error(
        "plain http URLs are refused: use https (http is allowed only where the controller's configuration file sets notify.allow_http)"
    )]
    PlainHttp,
    #[error("the URL scheme {0:?} is not supported: use https")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("user names or passwords in the URL are refused: keep credentials in a named secret")]
    Credentials,
    #[error("the URL has a fragment (#...), which is never sent: remove it")]
    Fragment,
}

/// A validated http(s) URL.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkUrl {
    url: url::Url,
}

/// What a URL's host is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlHost {
    Name(String),
    Ip(IpAddr),
}

impl SinkUrl {
    /// Parses `s`; `allow_http` comes from the configuration file only.
    pub fn parse(s: &str, allow_http: bool) -> Result<SinkUrl, UrlError> {
        if s.len() > MAX_LEN {
            return Err(UrlError::TooLong);
        }
        let url = url::Url::parse(s.trim()).map_err(|e| UrlError::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_http => {}
            "http" => return Err(UrlError::PlainHttp),
            other => return Err(UrlError::Scheme(other.chars().take(16).collect())),
        }
        if url.host().is_none() {
            return Err(UrlError::NoHost);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlError::Credentials);
        }
        if url.fragment().is_some() {
            return Err(UrlError::Fragment);
        }
        Ok(SinkUrl { url })
    }

    pub fn is_https(&self) -> bool {
        self.url.scheme() == "https"
    }

    pub fn host(&self) -> UrlHost {
        match self.url.host() {
            Some(url::Host::Ipv4(a)) => UrlHost::Ip(IpAddr::V4(a)),
            Some(url::Host::Ipv6(a)) => UrlHost::Ip(IpAddr::V6(a)),
            Some(url::Host::Domain(d)) => UrlHost::Name(d.to_string()),
            None => UrlHost::Name(String::new()),
        }
    }

    pub fn port(&self) -> u16 {
        self.url
            .port_or_known_default()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }

    /// The whole URL, credentials included: for sending and for the sink's stored
    /// definition only, never for responses or logs.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }

    pub(crate) fn as_url(&self) -> &url::Url {
        &self.url
    }

    /// `https://hooks.slack.com/… (#1a2b3c4d)`: for responses, logs and errors.
    pub fn redacted(&self) -> RedactedUrl {
        let digest = Sha256::digest(self.url.as_str().as_bytes());
        let host = match self.url.host() {
            Some(h) => h.to_string(),
            None => String::new(),
        };
        let port = match self.url.port() {
            Some(p) => format!(":{p}"),
            None => String::new(),
        };
        RedactedUrl(format!(
            "{}://{host}{port}/… (#{})",
            self.url.scheme(),
            hex::encode(&digest[..4])
        ))
    }
}

impl fmt::Debug for SinkUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SinkUrl({})", self.redacted())
    }
}

/// A URL as it may be shown anywhere.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct RedactedUrl(String);

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_path_and_query() {
        let u = SinkUrl::parse(
            "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX",
            false,
        )
        .unwrap();
        let r = u.redacted().to_string();
        assert!(r.starts_with("https://hooks.slack.com/… (#"), "{r}");
        assert!(!r.contains("SECRET") && !r.contains("T000"), "{r}");
        assert!(!format!("{u:?}").contains("SECRET"));
        let t = SinkUrl::parse(
            "https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=SIGSECRET",
            false,
        )
        .unwrap();
        assert!(!t.redacted().to_string().contains("SIGSECRET"));
        let other =
            SinkUrl::parse("https://hooks.slack.com/services/T000/B000/other", false).unwrap();
        assert_ne!(other.redacted(), u.redacted());
        let p = SinkUrl::parse("https://127.0.0.1:8443/hook", false).unwrap();
        assert!(
            p.redacted()
                .to_string()
                .starts_with("https://127.0.0.1:8443/… (#")
        );
    }

    #[test]
    fn refuses_what_cannot_be_sent_safely() {
        assert_eq!(
            SinkUrl::parse("http://example.com/", false),
            Err(UrlError::PlainHttp)
        );
        assert!(SinkUrl::parse("http://example.com/", true).is_ok());
        assert!(matches!(
            SinkUrl::parse("ftp://example.com/", true),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            SinkUrl::parse("file:///etc/passwd", true),
            Err(UrlError::Scheme(_))
        ));
        assert_eq!(
            SinkUrl::parse("https://u:p@example.com/", false),
            Err(UrlError::Credentials)
        );
        assert_eq!(
            SinkUrl::parse("https://example.com/#x", false),
            Err(UrlError::Fragment)
        );
        assert!(matches!(
            SinkUrl::parse("not a url", false),
            Err(UrlError::Invalid(_))
        ));
        let long = format!("https://example.com/{}", "a".repeat(MAX_LEN));
        assert_eq!(SinkUrl::parse(&long, false), Err(UrlError::TooLong));
        // Numeric host spellings are normalised, so the address check sees the real address.
        assert_eq!(
            SinkUrl::parse("https://0x7f.1/", false).unwrap().host(),
            UrlHost::Ip("127.0.0.1".parse().unwrap())
        );
    }
}
