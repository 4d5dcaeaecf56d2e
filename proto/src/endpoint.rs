//! A controller's agent endpoint, `host:port`, as an agent dials it: parsed once where it
//! enters (controller.toml, the agent's configuration, an enrolment, `ControllerMsg::Settings`)
//! so that a bad one is named there, not at connect time.

use std::fmt;
use std::str::FromStr;

/// The longest host name accepted (DNS limit).
const MAX_HOST: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "controller endpoint {given:?}: {reason}; expected host:port, e.g. ctl-a.example.net:8444 or [2001:db8::1]:8444"
)]
pub struct EndpointError {
    given: String,
    reason: &'static str,
}

/// `host:port`; an IPv6 host is written in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    host: String,
    port: u16,
}

impl Endpoint {
    /// The host as the server certificate must name it (brackets removed).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses every entry, keeping the first of duplicates and at most `max`.
    pub fn parse_list<S: AsRef<str>>(
        items: &[S],
        max: usize,
    ) -> Result<Vec<Endpoint>, EndpointError> {
        let mut out: Vec<Endpoint> = Vec::new();
        for s in items {
            let e: Endpoint = s.as_ref().parse()?;
            if !out.contains(&e) && out.len() < max {
                out.push(e);
            }
        }
        Ok(out)
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        let bad = |reason| EndpointError {
            given: s.chars().take(300).collect(),
            reason,
        };
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| bad("an IPv6 address must be in brackets"))?;
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
            inner
        } else {
            if host.contains(':') {
                return Err(bad("an IPv6 address must be in brackets"));
            }
            host
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.len() > MAX_HOST
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(bad("the host is not a DNS name or an IP address"));
        }
        Ok(Endpoint {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_endpoints_parse_and_print_back() {
        for s in [
            "ctl-a.example.net:8444",
            "198.51.100.1:8444",
            "[2001:db8::1]:8444",
            "localhost:1",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        let e: Endpoint = "[2001:db8::1]:8444".parse().unwrap();
        assert_eq!((e.host(), e.port()), ("2001:db8::1", 8444));
    }

    #[test]
    fn bad_endpoints_are_named() {
        for s in [
            "",
            "ctl-a",
            "ctl-a:",
            ":8444",
            "ctl-a:0",
            "ctl-a:65536",
            "ctl-a:port",
            "2001:db8::1:8444",
            "[2001:db8::1:8444",
            "[nonsense]:8444",
            "ctl a:8444",
            "ctl/a:8444",
            "ctl-a:8444\n",
        ] {
            let err = s.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains("expected host:port"), "{s:?}: {err}");
        }
    }

    #[test]
    fn lists_drop_duplicates_and_stop_at_the_limit() {
        let l = Endpoint::parse_list(&["a:1", "b:1", "a:1", "c:1"], 2).unwrap();
        assert_eq!(
            l.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            ["a:1", "b:1"]
        );
        assert!(Endpoint::parse_list(&["a:1", "bad"], 16).is_err());
    }
}
