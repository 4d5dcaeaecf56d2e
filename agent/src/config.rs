//! The agent's configuration: a TOML file (see `agent/jit-agent.example.toml`), with command
//! line flags that override it, parsed and validated once into [`AgentConfig`].

use jitgate_common::{OnExpiry, Port, ProtectedPort, Protocol};
use jitgate_proto::{Endpoint, MAX_ENDPOINTS};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_PIN_DIR: &str = "/run/jitgate/bpf/agent";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jitgate";
pub const DEFAULT_SOCKET: &str = "/run/jitgate/agent.sock";
pub const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);
/// How often an enrolled agent signs its audit chain head (if it moved).
pub const DEFAULT_AUDIT_CHECKPOINT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_GRANT: Duration = Duration::from_secs(24 * 3600);
/// The longest local maximum a config may set.
pub const MAX_MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// `protocol` in a `[[protect]]` entry: `*` means both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoSpec {
    One(Protocol),
    Both,
}

impl ProtoSpec {
    pub fn protocols(self) -> &'static [Protocol] {
        match self {
            ProtoSpec::One(Protocol::Tcp) => &[Protocol::Tcp],
            ProtoSpec::One(Protocol::Udp) => &[Protocol::Udp],
            ProtoSpec::Both => &[Protocol::Tcp, Protocol::Udp],
        }
    }
}

impl std::str::FromStr for ProtoSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(ProtoSpec::Both);
        }
        s.parse::<Protocol>()
            .map(ProtoSpec::One)
            .map_err(|_| format!("protocol must be tcp, udp or *, not {s:?}"))
    }
}

impl<'de> Deserialize<'de> for ProtoSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProtect {
    port: Port,
    protocol: ProtoSpec,
    #[serde(default)]
    on_expiry: OnExpiry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    protect: Vec<FileProtect>,
    flow_idle_timeout: Option<String>,
    audit_checkpoint_interval: Option<String>,
    max_grant: Option<String>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    #[serde(default)]
    controller_endpoints: Vec<String>,
}

/// Command-line overrides. Each list given replaces the file's list.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub protect: Vec<String>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub flow_idle_timeout: Option<String>,
    pub audit_checkpoint_interval: Option<String>,
    pub controller_endpoints: Vec<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Interface names or globs (`*`, `?`).
    pub interfaces: Vec<String>,
    pub protected: Vec<ProtectedPort>,
    pub flow_idle_timeout: Duration,
    pub max_grant: Duration,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Prometheus endpoint; `None` disables it.
    pub metrics: Option<SocketAddr>,
    /// How often the audit chain head is signed once enrolled (docs/agent.md).
    pub audit_checkpoint_interval: Duration,
    /// The controllers' agent endpoints, overriding the list the enrolment and the
    /// controllers give (empty: not set; docs/ha.md, "Agent failover").
    pub controller_endpoints: Vec<Endpoint>,
}

pub fn parse_duration(what: &str, s: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        ConfigError::Invalid(format!(
            "{what}: {s:?} is not a duration ({e}); use e.g. 90s, 15m, 1h"
        ))
    })?;
    if d.is_zero() {
        return Err(ConfigError::Invalid(format!(
            "{what} must be longer than zero"
        )));
    }
    Ok(d)
}

/// `22/tcp`, `22/tcp:cut`, `3389/*:keep` (`*`: TCP and UDP).
pub fn parse_protect(s: &str) -> Result<Vec<ProtectedPort>, ConfigError> {
    let bad = |m: String| ConfigError::Invalid(format!("--protect {s:?}: {m}"));
    let (pp, on_expiry) = match s.split_once(':') {
        Some((pp, e)) => (pp, e.parse::<OnExpiry>().map_err(|e| bad(e.to_string()))?),
        None => (s, OnExpiry::Keep),
    };
    let (port, proto) = pp
        .split_once('/')
        .ok_or_else(|| bad("expected PORT/PROTO[:keep|cut], e.g. 22/tcp:keep".into()))?;
    let port: Port = port
        .parse()
        .map_err(|e: jitgate_common::ParseError| bad(e.to_string()))?;
    let spec: ProtoSpec = proto.parse().map_err(bad)?;
    Ok(spec
        .protocols()
        .iter()
        .map(|&protocol| ProtectedPort {
            protocol,
            port,
            on_expiry,
        })
        .collect())
}

impl AgentConfig {
    /// Reads `path` (if any), applies `over`, validates.
    pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Self, ConfigError> {
        let file: FileConfig = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: p.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_parts(file, over)
    }

    /// Parses a config from TOML text (for tests and `--check`).
    pub fn from_toml(text: &str, over: &Overrides) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        Self::from_parts(file, over)
    }

    fn from_parts(file: FileConfig, over: &Overrides) -> Result<Self, ConfigError> {
        let interfaces = if over.interfaces.is_empty() {
            file.interfaces
        } else {
            over.interfaces.clone()
        };
        if interfaces.is_empty() {
            return Err(ConfigError::Invalid(
                "no interfaces: set `interfaces` in the config or pass --interface".into(),
            ));
        }
        for i in &interfaces {
            if i.is_empty() || i.len() > 15 || i.contains('/') || i.chars().any(char::is_whitespace)
            {
                return Err(ConfigError::Invalid(format!(
                    "interface {i:?} is not a valid name or glob"
                )));
            }
        }
        let mut protected: Vec<ProtectedPort> = Vec::new();
        if over.protect.is_empty() {
            for p in file.protect {
                for &protocol in p.protocol.protocols() {
                    protected.push(ProtectedPort {
                        protocol,
                        port: p.port,
                        on_expiry: p.on_expiry,
                    });
                }
            }
        } else {
            for s in &over.protect {
                protected.extend(parse_protect(s)?);
            }
        }
        for (i, a) in protected.iter().enumerate() {
            if protected[..i]
                .iter()
                .any(|b| b.protocol == a.protocol && b.port == a.port && b.on_expiry != a.on_expiry)
            {
                return Err(ConfigError::Invalid(format!(
                    "{}/{} is listed with both keep and cut",
                    a.port, a.protocol
                )));
            }
        }
        protected.sort();
        protected.dedup();
        let flow_idle_timeout = match over
            .flow_idle_timeout
            .as_deref()
            .or(file.flow_idle_timeout.as_deref())
        {
            Some(s) => parse_duration("flow_idle_timeout", s)?,
            None => DEFAULT_IDLE,
        };
        let audit_checkpoint_interval = match over
            .audit_checkpoint_interval
            .as_deref()
            .or(file.audit_checkpoint_interval.as_deref())
        {
            Some(s) => parse_duration("audit_checkpoint_interval", s)?,
            None => DEFAULT_AUDIT_CHECKPOINT,
        };
        let max_grant = match file.max_grant.as_deref() {
            Some(s) => parse_duration("max_grant", s)?,
            None => DEFAULT_MAX_GRANT,
        };
        if max_grant > MAX_MAX_GRANT {
            return Err(ConfigError::Invalid(
                "max_grant may be at most 7 days".into(),
            ));
        }
        let endpoints = if over.controller_endpoints.is_empty() {
            file.controller_endpoints
        } else {
            over.controller_endpoints.clone()
        };
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(ConfigError::Invalid(format!(
                "controller_endpoints lists {} controllers; at most {MAX_ENDPOINTS}",
                endpoints.len()
            )));
        }
        let controller_endpoints = Endpoint::parse_list(&endpoints, MAX_ENDPOINTS)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let pick = |o: &Option<PathBuf>, f: Option<PathBuf>, d: &str| {
            o.clone().or(f).unwrap_or_else(|| PathBuf::from(d))
        };
        let cfg = AgentConfig {
            interfaces,
            protected,
            flow_idle_timeout,
            max_grant,
            pin_dir: pick(&over.pin_dir, file.pin_dir, DEFAULT_PIN_DIR),
            state_dir: pick(&over.state_dir, file.state_dir, DEFAULT_STATE_DIR),
            socket: pick(&over.socket, file.socket, DEFAULT_SOCKET),
            metrics: over.metrics.or(file.metrics),
            audit_checkpoint_interval,
            controller_endpoints,
        };
        for (what, p) in [
            ("pin_dir", &cfg.pin_dir),
            ("state_dir", &cfg.state_dir),
            ("socket", &cfg.socket),
        ] {
            if !p.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be an absolute path, not {}",
                    p.display()
                )));
            }
        }
        Ok(cfg)
    }
}

/// Whether `name` matches the glob `pat` (`*` any run, `?` one character).
pub fn glob_match(pat: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../jit-agent.example.toml");
        let cfg = AgentConfig::from_toml(text, &Overrides::default()).unwrap();
        assert!(!cfg.interfaces.is_empty());
        assert!(cfg.protected.iter().any(|p| p.port.get() == 22));
        assert_eq!(cfg.max_grant, DEFAULT_MAX_GRANT);
    }

    #[test]
    fn overrides_replace_lists() {
        let over = Overrides {
            interfaces: vec!["veth*".into()],
            protect: vec!["3389/*:cut".into()],
            ..Default::default()
        };
        let cfg = AgentConfig::from_toml("interfaces = [\"eth0\"]\n", &over).unwrap();
        assert_eq!(cfg.interfaces, vec!["veth*".to_string()]);
        assert_eq!(cfg.protected.len(), 2);
        assert!(cfg.protected.iter().all(|p| p.on_expiry == OnExpiry::Cut));
    }

    #[test]
    fn bad_configs_are_rejected() {
        for (text, want) in [
            ("interfaces = []\n", "no interfaces"),
            ("interfaces = [\"eth0\"]\nfoo = 1\n", "unknown field"),
            (
                "interfaces = [\"eth0\"]\n[[protect]]\nport = 0\nprotocol = \"tcp\"\n",
                "port",
            ),
            (
                "interfaces = [\"eth0\"]\n[[protect]]\nport = 22\nprotocol = \"icmp\"\n",
                "protocol",
            ),
            (
                "interfaces = [\"eth0\"]\n[[protect]]\nport = 22\nprotocol = \"tcp\"\non_expiry = \"never\"\n",
                "keep or cut",
            ),
            (
                "interfaces = [\"eth0\"]\nflow_idle_timeout = \"0s\"\n",
                "longer than zero",
            ),
            ("interfaces = [\"eth0\"]\nmax_grant = \"30d\"\n", "7 days"),
            (
                "interfaces = [\"eth0\"]\nmax_grant = \"soon\"\n",
                "not a duration",
            ),
            (
                "interfaces = [\"eth0\"]\npin_dir = \"relative\"\n",
                "absolute",
            ),
            ("interfaces = [\"a/b\"]\n", "not a valid name"),
            (
                "interfaces = [\"eth0\"]\ncontroller_endpoints = [\"ctl-a.example.net\"]\n",
                "expected host:port",
            ),
            (
                "interfaces = [\"eth0\"]\ncontroller_endpoints = [\"[2001:db8::1:8444\"]\n",
                "brackets",
            ),
            (
                "interfaces = [\"eth0\"]\n[[protect]]\nport = 22\nprotocol = \"tcp\"\non_expiry = \"cut\"\n[[protect]]\nport = 22\nprotocol = \"tcp\"\n",
                "both keep and cut",
            ),
        ] {
            let err = AgentConfig::from_toml(text, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("eth*", "eth0"));
        assert!(glob_match("vm?", "vm1"));
        assert!(!glob_match("vm?", "vm10"));
        assert!(glob_match("*", "lo"));
        assert!(!glob_match("eth*", "veth0"));
    }
}
