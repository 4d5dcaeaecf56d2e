//! Where a browser may be sent: the portal's return path after sign-in, and the CLI's
//! loopback redirect. Both are checked when they come in, so that a sign-in never ends on
//! another site.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest portal return path kept (bytes).
const MAX_RETURN_PATH: usize = 1024;

/// `as_str`, and the string form serde reads (checked by `parse`) and writes.
macro_rules! string_form {
    ($t:ident) => {
        impl $t {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<$t, String> {
                $t::parse(&s).map_err(|e| e.to_string())
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}

/// A path on the portal to go back to after sign-in: starts with one `/`, never leaves the
/// site (no `//host`, no `/\host`, no scheme), no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReturnPath(String);

impl ReturnPath {
    pub fn parse(path: &str) -> Result<ReturnPath, Error> {
        let bad = |reason| Error::InvalidReturnPath {
            path: path.chars().take(80).collect(),
            reason,
        };
        if path.len() > MAX_RETURN_PATH {
            return Err(bad("longer than 1024 bytes"));
        }
        if !path.starts_with('/') {
            return Err(bad("it must start with /"));
        }
        if path.starts_with("//") || path.starts_with("/\\") || path.contains('\\') {
            return Err(bad("it could name another host"));
        }
        if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("it has control characters or spaces"));
        }
        Ok(ReturnPath(path.to_string()))
    }
}

string_form!(ReturnPath);

/// The CLI's redirect URI (RFC 8252 §7.3): `http://127.0.0.1:PORT/PATH` or
/// `http://[::1]:PORT/PATH`. `localhost` is refused (RFC 8252 §8.3: it may resolve
/// elsewhere); the provider must accept any port for the registered loopback URI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LoopbackRedirect(String);

impl LoopbackRedirect {
    pub fn parse(uri: &str) -> Result<LoopbackRedirect, Error> {
        let bad = |reason| Error::InvalidRedirect {
            uri: uri.chars().take(120).collect(),
            reason,
        };
        let url = openidconnect::url::Url::parse(uri).map_err(|_| bad("not a URL"))?;
        if url.scheme() != "http" {
            return Err(bad("a loopback redirect is plain http (RFC 8252 §7.3)"));
        }
        match url.host() {
            Some(openidconnect::url::Host::Ipv4(a)) if a.is_loopback() => {}
            Some(openidconnect::url::Host::Ipv6(a)) if a.is_loopback() => {}
            _ => {
                return Err(bad(
                    "the host must be 127.0.0.1 or [::1] (RFC 8252 §7.3; not localhost)",
                ));
            }
        }
        if url.port().is_none() {
            return Err(bad("it needs the port the CLI listens on"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("it must not carry credentials"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it must have no query or fragment"));
        }
        if url.path().len() > 128 {
            return Err(bad("its path is longer than 128 bytes"));
        }
        Ok(LoopbackRedirect(url.to_string()))
    }
}

string_form!(LoopbackRedirect);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_the_site() {
        for ok in ["/", "/vms/web-1?tab=history", "/requests/42#top"] {
            assert_eq!(ReturnPath::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "vms",
            "//evil.example",
            "/\\evil.example",
            "/a\\b",
            "https://evil.example/",
            "/a\nb",
            "/a b",
            "/\u{7f}",
        ] {
            assert!(ReturnPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ReturnPath::parse(&format!("/{}", "a".repeat(1024))).is_err());
    }

    #[test]
    fn loopback_redirects_only() {
        for ok in [
            "http://127.0.0.1:53123/callback",
            "http://[::1]:8080/cb",
            "http://127.0.0.1:1/",
        ] {
            LoopbackRedirect::parse(ok).unwrap();
        }
        for bad in [
            "http://localhost:8080/cb",
            "https://127.0.0.1:8080/cb",
            "http://127.0.0.1/cb",
            "http://10.0.0.1:8080/cb",
            "http://127.0.0.1.evil.example:8080/cb",
            "http://user@127.0.0.1:8080/cb",
            "http://127.0.0.1:8080/cb?x=1",
            "http://127.0.0.1:8080/cb#f",
            "jitgate://cb",
            "not a url",
        ] {
            assert!(LoopbackRedirect::parse(bad).is_err(), "{bad}");
        }
    }
}
