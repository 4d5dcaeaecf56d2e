//! `[notify]` in controller.toml: TOML, snake_case, unknown keys refused.
//!
//! Everything that widens what the controller may reach (`allow_networks`, `allow_http`,
//! extra CAs, the SMTP relay) lives here and only here: the API can add sinks but never
//! change these.
//!
//! ```toml
//! [notify]
//! secrets_dir = "/var/lib/jit-controller/notify-secrets"   # 0700, files 0600
//! allow_networks = ["10.20.0.0/16"]  # internal receivers (default: none)
//! allow_http = false                 # plain http sinks (default: refused)
//! timeout_seconds = 10               # one attempt, start to finish
//! retry_initial_seconds = 10         # first retry delay (then doubling, with jitter)
//! retry_max_interval_seconds = 3600
//! give_up_after_seconds = 86400      # then the delivery is dead
//! ending_soon_lead_seconds = 600     # access.ending_soon this long before the end (0: off)
//! agent_offline_after_seconds = 120  # agent.offline after an agent is gone this long
//! retain_delivered_days = 30
//! portal_url = "https://jit.example.com"  # links to requests
//! ca_files = []                      # extra PEM CAs for sinks and the relay
//! system_roots = true
//!
//! [notify.smtp]
//! host = "smtp.example.com"
//! security = "starttls"              # or "implicit"
//! port = 587                         # default: 587 starttls, 465 implicit
//! username = "jitgate"
//! password_secret = "smtp-password"  # a named secret
//! from = "jitgate <jit@example.com>"
//!
//! [[notify.sinks]]
//! name = "sec-leads"
//! format = "slack"
//! target = "https://hooks.slack.com/services/..."
//! events = ["request.pending_approval"]
//! to_group = "sec-leads"
//! ```

use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::backoff::RetryPolicy;
use crate::deliver::{DeliveryConfig, SmtpRelay, SmtpSecurity, TlsRoots};
use crate::egress::{EgressError, EgressPolicy};
use crate::secrets::{SecretError, SecretName};
use crate::sink::{SinkRules, SinkSpec};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Default (chosen by the controller): `<state-dir>/notify-secrets`.
    #[serde(default)]
    pub secrets_dir: Option<PathBuf>,
    #[serde(default)]
    pub allow_networks: Vec<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default = "d_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "d_initial")]
    pub retry_initial_seconds: u64,
    #[serde(default = "d_max_interval")]
    pub retry_max_interval_seconds: u64,
    #[serde(default = "d_give_up")]
    pub give_up_after_seconds: u64,
    #[serde(default = "d_lead")]
    pub ending_soon_lead_seconds: u64,
    /// How long an agent is gone before `agent.offline` is told (a restart of the agent or
    /// of the controller stays quiet).
    #[serde(default = "d_offline")]
    pub agent_offline_after_seconds: u64,
    #[serde(default = "d_retain")]
    pub retain_delivered_days: u64,
    #[serde(default)]
    pub portal_url: Option<String>,
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    #[serde(default = "d_true")]
    pub system_roots: bool,
    #[serde(default)]
    pub smtp: Option<SmtpConfig>,
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default) or `implicit`.
    #[serde(default = "d_security")]
    pub security: String,
    #[serde(default)]
    pub hello_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_secret: Option<String>,
    /// `Name <address>` or `address`.
    pub from: String,
}

fn d_timeout() -> u64 {
    10
}
fn d_initial() -> u64 {
    10
}
fn d_max_interval() -> u64 {
    3600
}
fn d_give_up() -> u64 {
    86_400
}
fn d_lead() -> u64 {
    600
}
fn d_offline() -> u64 {
    120
}
fn d_retain() -> u64 {
    30
}
fn d_true() -> bool {
    true
}
fn d_security() -> String {
    "starttls".into()
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            secrets_dir: None,
            allow_networks: Vec::new(),
            allow_http: false,
            timeout_seconds: d_timeout(),
            retry_initial_seconds: d_initial(),
            retry_max_interval_seconds: d_max_interval(),
            give_up_after_seconds: d_give_up(),
            ending_soon_lead_seconds: d_lead(),
            agent_offline_after_seconds: d_offline(),
            retain_delivered_days: d_retain(),
            portal_url: None,
            ca_files: Vec::new(),
            system_roots: true,
            smtp: None,
            sinks: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("notify.{key} = {value} is out of range ({range})")]
    Range {
        key: &'static str,
        value: u64,
        range: &'static str,
    },
    #[error(transparent)]
    Network(#[from] EgressError),
    #[error("notify.portal_url {0:?} is not an http(s) URL")]
    PortalUrl(String),
    #[error("notify.ca_files: {path}: {problem}")]
    CaFile { path: PathBuf, problem: String },
    #[error("notify.smtp.security {0:?} is unknown: use starttls or implicit")]
    SmtpSecurity(String),
    #[error("notify.smtp.from {0:?} is not an address (`Name <address>` or `address`)")]
    SmtpFrom(String),
    #[error("notify.smtp: username and password_secret go together")]
    SmtpCredentials,
    #[error("notify.smtp.host must not be empty")]
    SmtpHost,
    #[error("notify.smtp.password_secret: {0}")]
    SmtpSecret(#[from] SecretError),
}

fn range(
    key: &'static str,
    value: u64,
    lo: u64,
    hi: u64,
    text: &'static str,
) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Range {
            key,
            value,
            range: text,
        })
    }
}

impl NotifyConfig {
    /// Checks every bound and setting (sinks are checked by [`crate::Sink::from_spec`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        range("timeout_seconds", self.timeout_seconds, 1, 120, "1 to 120")?;
        range(
            "retry_initial_seconds",
            self.retry_initial_seconds,
            1,
            3600,
            "1 to 3600",
        )?;
        range(
            "retry_max_interval_seconds",
            self.retry_max_interval_seconds,
            self.retry_initial_seconds,
            86_400,
            "retry_initial_seconds to 86400",
        )?;
        range(
            "give_up_after_seconds",
            self.give_up_after_seconds,
            60,
            30 * 86_400,
            "60 to 2592000",
        )?;
        range(
            "ending_soon_lead_seconds",
            self.ending_soon_lead_seconds,
            0,
            86_400,
            "0 to 86400",
        )?;
        range(
            "agent_offline_after_seconds",
            self.agent_offline_after_seconds,
            5,
            86_400,
            "5 to 86400",
        )?;
        range(
            "retain_delivered_days",
            self.retain_delivered_days,
            1,
            3650,
            "1 to 3650",
        )?;
        EgressPolicy::new(&self.allow_networks)?;
        self.portal()?;
        if let Some(smtp) = &self.smtp {
            smtp.relay()?;
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(self.retry_initial_seconds),
            max_interval: Duration::from_secs(self.retry_max_interval_seconds),
            give_up_after: Duration::from_secs(self.give_up_after_seconds),
        }
    }

    pub fn sink_rules(&self) -> SinkRules {
        SinkRules {
            allow_http: self.allow_http,
        }
    }

    pub fn portal(&self) -> Result<Option<url::Url>, ConfigError> {
        match &self.portal_url {
            None => Ok(None),
            Some(s) => match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => {
                    Ok(Some(u))
                }
                _ => Err(ConfigError::PortalUrl(s.chars().take(80).collect())),
            },
        }
    }

    /// What a [`crate::Deliverer`] is built from (reads `ca_files`).
    pub fn delivery_config(&self) -> Result<DeliveryConfig, ConfigError> {
        self.validate()?;
        let mut extra = Vec::new();
        for path in &self.ca_files {
            let pem = std::fs::read(path).map_err(|e| ConfigError::CaFile {
                path: path.clone(),
                problem: e.to_string(),
            })?;
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConfigError::CaFile {
                    path: path.clone(),
                    problem: format!("not PEM certificates: {e}"),
                })?;
            if certs.is_empty() {
                return Err(ConfigError::CaFile {
                    path: path.clone(),
                    problem: "no certificate in it".into(),
                });
            }
            extra.extend(certs);
        }
        Ok(DeliveryConfig {
            egress: EgressPolicy::new(&self.allow_networks)?,
            allow_http: self.allow_http,
            timeout: Duration::from_secs(self.timeout_seconds),
            roots: TlsRoots {
                system: self.system_roots,
                extra,
            },
            smtp: self.smtp.as_ref().map(SmtpConfig::relay).transpose()?,
        })
    }
}

impl SmtpConfig {
    pub fn relay(&self) -> Result<SmtpRelay, ConfigError> {
        let security = match self.security.as_str() {
            "starttls" => SmtpSecurity::StartTls,
            "implicit" => SmtpSecurity::Implicit,
            other => return Err(ConfigError::SmtpSecurity(other.chars().take(32).collect())),
        };
        if self.host.trim().is_empty() {
            return Err(ConfigError::SmtpHost);
        }
        let from: Mailbox = self
            .from
            .parse()
            .map_err(|_| ConfigError::SmtpFrom(self.from.chars().take(80).collect()))?;
        let password_secret = match (&self.username, &self.password_secret) {
            (Some(_), Some(s)) => Some(s.parse::<SecretName>()?),
            (None, None) => None,
            _ => return Err(ConfigError::SmtpCredentials),
        };
        Ok(SmtpRelay {
            host: self.host.trim().to_string(),
            port: self.port.unwrap_or(security.default_port()),
            security,
            hello_name: self.hello_name.clone(),
            username: self.username.clone(),
            password_secret,
            from,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        notify: NotifyConfig,
    }

    #[test]
    fn the_documented_example_parses_and_validates() {
        let doc = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("[notify]"))
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let f: File = toml::from_str(&doc).unwrap();
        f.notify.validate().unwrap();
        assert_eq!(f.notify.allow_networks, ["10.20.0.0/16"]);
        let relay = f.notify.smtp.as_ref().unwrap().relay().unwrap();
        assert_eq!(relay.port, 587);
        assert_eq!(f.notify.sinks.len(), 1);
        assert_eq!(f.notify.retry_policy(), RetryPolicy::default());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |toml_text: &str, want: &str| {
            let err = match toml::from_str::<File>(toml_text) {
                Err(e) => e.to_string(),
                Ok(f) => f.notify.validate().unwrap_err().to_string(),
            };
            assert!(err.contains(want), "{toml_text}: {err}");
        };
        bad("[notify]\nallow_network = []", "unknown field");
        bad("[notify]\ntimeout_seconds = 0", "timeout_seconds");
        bad(
            "[notify]\nallow_networks = [\"10.0.0.0/8\", \"nope\"]",
            "nope",
        );
        bad(
            "[notify]\ngive_up_after_seconds = 5",
            "give_up_after_seconds",
        );
        bad(
            "[notify]\nportal_url = \"javascript:alert(1)\"",
            "portal_url",
        );
        bad(
            "[notify.smtp]\nhost = \"h\"\nfrom = \"x\"",
            "notify.smtp.from",
        );
        bad(
            "[notify.smtp]\nhost = \"h\"\nfrom = \"a@b.example\"\nsecurity = \"tls\"",
            "starttls or implicit",
        );
        bad(
            "[notify.smtp]\nhost = \"h\"\nfrom = \"a@b.example\"\nusername = \"u\"",
            "go together",
        );
        bad(
            "[notify.smtp]\nhost = \"h\"\nfrom = \"a@b.example\"\nusername = \"u\"\npassword_secret = \"../x\"",
            "secret name",
        );
    }
}
