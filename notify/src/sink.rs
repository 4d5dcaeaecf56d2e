//! Sink definitions: where notifications go, which ones, and in which format.
//!
//! A [`SinkSpec`] is what an admin wrote (`jit notify add`, or `[[notify.sinks]]` in the
//! configuration file); [`Sink::from_spec`] checks all of it at once and names the first
//! problem in words an admin can act on. What a sink may be shown as is [`Sink::view`]: the
//! target URL there is redacted.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use jitgate_api::{NewSink, SinkTarget, SinkView};
use lettre::Address;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventType, EventTypeError};
use crate::secrets::{SecretError, SecretName, SecretStore};
use crate::sink_url::{SinkUrl, UrlError};

/// Most fixed addresses one email sink may have.
pub const MAX_ADDRESSES: usize = 50;

/// A sink as written: TOML (`[[notify.sinks]]`, snake_case, unknown keys refused) or the
/// fields of `jit notify add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub name: String,
    /// Event types wanted; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
    /// `rg:NAME` or `vm:NAME`; absent means everything the controller sees.
    #[serde(default)]
    pub scope: Option<String>,
    /// `webhook`, `slack`, `teams` or `email`.
    pub format: String,
    /// A URL, or for `email` the fixed recipient addresses separated by commas.
    pub target: String,
    /// The named secret (webhook signing key).
    #[serde(default)]
    pub secret: Option<String>,
    /// Deliver only events addressed to this approver group (`group:NAME`).
    #[serde(default)]
    pub to_group: Option<String>,
}

impl From<NewSink> for SinkSpec {
    /// The API's body (camelCase JSON) as the same fields the configuration file has.
    fn from(n: NewSink) -> SinkSpec {
        SinkSpec {
            name: n.name,
            events: n.events,
            scope: n.scope,
            format: n.format,
            target: n.target,
            secret: n.secret,
            to_group: n.to_group,
        }
    }
}

/// What the configuration file allows sinks (never settable through the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkRules {
    /// Plain http URLs (tests, receivers on a trusted segment).
    pub allow_http: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "sink name {0:?} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName(String),
    #[error("format {0:?} is unknown: use webhook, slack, teams or email")]
    BadFormat(String),
    #[error(transparent)]
    BadEventType(#[from] EventTypeError),
    #[error("scope {0:?} is invalid: use rg:NAME or vm:NAME")]
    BadScope(String),
    #[error("group {0:?} is invalid: use 1-64 letters, digits, '.', '_' or '-'")]
    BadGroup(String),
    #[error("target URL: {0}")]
    BadUrl(#[from] UrlError),
    #[error("email target: {0:?} is not an email address")]
    BadAddress(String),
    #[error("email target: give 1 to {MAX_ADDRESSES} addresses, separated by commas")]
    AddressCount,
    #[error("a webhook sink needs a secret (the name of a stored secret) to sign its deliveries")]
    MissingSecret,
    #[error(
        "a {0} sink takes no secret: its URL (or the SMTP relay configuration) carries the credential"
    )]
    UnexpectedSecret(SinkFormat),
    #[error("secret: {0}")]
    Secret(#[from] SecretError),
}

/// A sink's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinkFormat {
    Webhook,
    Slack,
    Teams,
    Email,
}

impl SinkFormat {
    pub const ALL: [SinkFormat; 4] = [
        SinkFormat::Webhook,
        SinkFormat::Slack,
        SinkFormat::Teams,
        SinkFormat::Email,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SinkFormat::Webhook => "webhook",
            SinkFormat::Slack => "slack",
            SinkFormat::Teams => "teams",
            SinkFormat::Email => "email",
        }
    }
}

impl fmt::Display for SinkFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SinkFormat {
    type Err = SinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SinkFormat::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| SinkError::BadFormat(s.chars().take(32).collect()))
    }
}

/// Where a sink's events come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    ResourceGroup(String),
    Vm(String),
}

impl Scope {
    /// Whether an event about (resource group, VM) lies in this scope. A `vm:` scope hears
    /// about that VM alone; group-wide events (VM `None`: a resource group's policy) reach
    /// `rg:` scopes only.
    pub fn covers(&self, resource_group: &str, vm: Option<&str>) -> bool {
        match self {
            Scope::ResourceGroup(rg) => rg == resource_group,
            Scope::Vm(name) => vm == Some(name.as_str()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::ResourceGroup(rg) => write!(f, "rg:{rg}"),
            Scope::Vm(vm) => write!(f, "vm:{vm}"),
        }
    }
}

impl FromStr for Scope {
    type Err = SinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SinkError::BadScope(s.chars().take(80).collect());
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if !valid_name(name) {
            return Err(bad());
        }
        match kind {
            "rg" => Ok(Scope::ResourceGroup(name.to_string())),
            "vm" => Ok(Scope::Vm(name.to_string())),
            _ => Err(bad()),
        }
    }
}

/// The controller's name rule (VMs, resource groups, sinks, groups).
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Which event types a sink wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSelection {
    All,
    Only(BTreeSet<EventType>),
}

impl EventSelection {
    pub fn contains(&self, t: EventType) -> bool {
        match self {
            EventSelection::All => true,
            EventSelection::Only(set) => set.contains(&t),
        }
    }
}

/// Where a sink sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Url(SinkUrl),
    Email(Vec<Address>),
}

/// A checked sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sink {
    pub name: String,
    pub events: EventSelection,
    pub scope: Option<Scope>,
    pub format: SinkFormat,
    pub target: Target,
    pub secret: Option<SecretName>,
    pub to_group: Option<String>,
}

impl Sink {
    /// Checks everything that can be checked without the network or the secrets store
    /// (the caller also runs [`Sink::check_secret`] against the store, and resolves the
    /// URL's host with [`crate::deliver::Deliverer::check_target`] at `add`).
    pub fn from_spec(spec: &SinkSpec, rules: &SinkRules) -> Result<Sink, SinkError> {
        if !valid_name(&spec.name) {
            return Err(SinkError::BadName(spec.name.chars().take(80).collect()));
        }
        let format: SinkFormat = spec.format.trim().parse()?;
        let events = if spec.events.is_empty() {
            EventSelection::All
        } else {
            EventSelection::Only(
                spec.events
                    .iter()
                    .map(|e| e.trim().parse::<EventType>())
                    .collect::<Result<_, _>>()?,
            )
        };
        let scope = spec.scope.as_deref().map(str::parse).transpose()?;
        let to_group = match spec.to_group.as_deref() {
            Some(g) => {
                let g = g.strip_prefix("group:").unwrap_or(g);
                if !valid_name(g) {
                    return Err(SinkError::BadGroup(g.chars().take(80).collect()));
                }
                Some(g.to_string())
            }
            None => None,
        };
        let target = match format {
            SinkFormat::Email => Target::Email(parse_addresses(&spec.target)?),
            _ => Target::Url(SinkUrl::parse(&spec.target, rules.allow_http)?),
        };
        let secret = spec
            .secret
            .as_deref()
            .map(str::parse::<SecretName>)
            .transpose()?;
        match (format, &secret) {
            (SinkFormat::Webhook, None) => return Err(SinkError::MissingSecret),
            (SinkFormat::Webhook, Some(_)) | (_, None) => {}
            (f, Some(_)) => return Err(SinkError::UnexpectedSecret(f)),
        }
        Ok(Sink {
            name: spec.name.clone(),
            events,
            scope,
            format,
            target,
            secret,
            to_group,
        })
    }

    /// The sink's secret exists in the store (what `add` refuses a sink without).
    pub fn check_secret(&self, store: &SecretStore) -> Result<(), SinkError> {
        match &self.secret {
            Some(name) if !store.contains(name)? => {
                Err(SecretError::Unknown(name.to_string()).into())
            }
            _ => Ok(()),
        }
    }

    /// Whether this sink receives every event (chooses by no type, scope or group): then
    /// [`Sink::wants`] need not look at an event.
    pub fn wants_every_event(&self) -> bool {
        matches!(self.events, EventSelection::All)
            && self.scope.is_none()
            && self.to_group.is_none()
    }

    /// Whether this sink receives `event`: its type is wanted, it lies in the scope, and for
    /// a `--to-group` sink it is addressed to that group.
    pub fn wants(&self, event: &Event) -> bool {
        if !self.events.contains(event.event_type()) {
            return false;
        }
        if let Some(scope) = &self.scope
            && !event
                .resources()
                .into_iter()
                .any(|(rg, vm)| scope.covers(rg, vm))
        {
            return false;
        }
        match &self.to_group {
            Some(g) => event.audience_groups().contains(&g.as_str()),
            None => true,
        }
    }

    /// The definition as stored (the full target: the controller's database is where the
    /// credential in a Slack or Teams URL lives).
    pub fn to_spec(&self) -> SinkSpec {
        SinkSpec {
            name: self.name.clone(),
            events: match &self.events {
                EventSelection::All => Vec::new(),
                EventSelection::Only(s) => s.iter().map(|t| t.as_str().to_string()).collect(),
            },
            scope: self.scope.as_ref().map(Scope::to_string),
            format: self.format.as_str().to_string(),
            target: match &self.target {
                Target::Url(u) => u.expose().to_string(),
                Target::Email(a) => a
                    .iter()
                    .map(Address::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            },
            secret: self.secret.as_ref().map(|s| s.as_str().to_string()),
            to_group: self.to_group.clone(),
        }
    }

    /// What responses and logs may show: the URL redacted.
    pub fn view(&self) -> SinkView {
        SinkView {
            name: self.name.clone(),
            events: match &self.events {
                EventSelection::All => Vec::new(),
                EventSelection::Only(s) => s.iter().map(|t| t.as_str().to_string()).collect(),
            },
            scope: self.scope.as_ref().map(Scope::to_string),
            format: self.format.as_str().to_string(),
            target: match &self.target {
                Target::Url(u) => SinkTarget::Url(u.redacted().to_string()),
                Target::Email(a) => {
                    SinkTarget::Addresses(a.iter().map(Address::to_string).collect())
                }
            },
            secret: self.secret.as_ref().map(|s| s.as_str().to_string()),
            to_group: self.to_group.clone(),
        }
    }
}

fn parse_addresses(s: &str) -> Result<Vec<Address>, SinkError> {
    let parts: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() || parts.len() > MAX_ADDRESSES {
        return Err(SinkError::AddressCount);
    }
    let mut out: Vec<Address> = Vec::new();
    for p in parts {
        let a: Address = p
            .parse()
            .map_err(|_| SinkError::BadAddress(p.chars().take(80).collect()))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn spec(format: &str, target: &str, secret: Option<&str>) -> SinkSpec {
        SinkSpec {
            name: "ops".into(),
            events: vec![],
            scope: None,
            format: format.into(),
            target: target.into(),
            secret: secret.map(str::to_string),
            to_group: None,
        }
    }

    const R: SinkRules = SinkRules { allow_http: false };

    #[test]
    fn valid_sinks_of_every_format() {
        let w = Sink::from_spec(
            &spec("webhook", "https://hooks.example.com/x", Some("hook")),
            &R,
        )
        .unwrap();
        assert_eq!(w.format, SinkFormat::Webhook);
        assert_eq!(w.events, EventSelection::All);
        Sink::from_spec(
            &spec("slack", "https://hooks.slack.com/services/T/B/X", None),
            &R,
        )
        .unwrap();
        Sink::from_spec(
            &spec("teams", "https://example.logic.azure.com/workflows/1", None),
            &R,
        )
        .unwrap();
        let e = Sink::from_spec(
            &spec("email", "a@example.com, b@example.com,a@example.com", None),
            &R,
        )
        .unwrap();
        assert_eq!(
            e.target,
            Target::Email(vec![
                "a@example.com".parse().unwrap(),
                "b@example.com".parse().unwrap()
            ])
        );
        assert_eq!(Sink::from_spec(&e.to_spec(), &R).unwrap(), e);
    }

    #[test]
    fn clear_errors() {
        let cases: Vec<(SinkSpec, &str)> = vec![
            (
                spec("webhook", "https://x.example/", None),
                "needs a secret",
            ),
            (
                spec("slack", "https://x.example/", Some("s")),
                "takes no secret",
            ),
            (
                spec("webhook", "http://x.example/", Some("s")),
                "plain http",
            ),
            (
                spec("webhook", "https://x.example/", Some("../../etc/passwd")),
                "secret name",
            ),
            (
                spec("pager", "https://x.example/", None),
                "webhook, slack, teams or email",
            ),
            (
                spec("email", "not-an-address", None),
                "not an email address",
            ),
            (
                spec("email", "a@b.example\r\nBcc: c@d.example", None),
                "not an email address",
            ),
            (spec("email", " , ", None), "1 to 50"),
            (
                SinkSpec {
                    events: vec!["request.aproved".into()],
                    ..spec("slack", "https://x.example/", None)
                },
                "unknown event type",
            ),
            (
                SinkSpec {
                    scope: Some("prod".into()),
                    ..spec("slack", "https://x.example/", None)
                },
                "rg:NAME or vm:NAME",
            ),
            (
                SinkSpec {
                    scope: Some("rg:../x".into()),
                    ..spec("slack", "https://x.example/", None)
                },
                "rg:NAME or vm:NAME",
            ),
            (
                SinkSpec {
                    name: "a b".into(),
                    ..spec("slack", "https://x.example/", None)
                },
                "sink name",
            ),
            (
                SinkSpec {
                    to_group: Some("group:".into()),
                    ..spec("slack", "https://x.example/", None)
                },
                "group",
            ),
        ];
        for (s, want) in cases {
            let err = Sink::from_spec(&s, &R).unwrap_err().to_string();
            assert!(err.contains(want), "{s:?}: {err}");
        }
        assert!(
            Sink::from_spec(
                &spec("webhook", "http://x.example/", Some("s")),
                &SinkRules { allow_http: true }
            )
            .is_ok()
        );
    }

    #[test]
    fn toml_refuses_unknown_keys() {
        let ok: SinkSpec = toml::from_str(
            "name = \"a\"\nformat = \"slack\"\ntarget = \"https://x.example/\"\nto_group = \"sec\"",
        )
        .unwrap();
        assert_eq!(ok.to_group.as_deref(), Some("sec"));
        assert!(
            toml::from_str::<SinkSpec>(
                "name = \"a\"\nformat = \"slack\"\ntarget = \"t\"\nsecret_file = \"/etc/shadow\""
            )
            .is_err()
        );
    }

    #[test]
    fn wants_filters_type_scope_and_group() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let pending = crate::examples::sample(EventType::RequestPendingApproval, "web1", now, None);
        let offline = crate::examples::sample(EventType::AgentOffline, "web1", now, None);
        let mut s = Sink::from_spec(&spec("slack", "https://x.example/", None), &R).unwrap();
        assert!(s.wants(&pending) && s.wants(&offline));
        s.events = EventSelection::Only([EventType::AgentOffline].into());
        assert!(!s.wants(&pending) && s.wants(&offline));
        s.events = EventSelection::All;
        s.scope = Some("rg:prod".parse().unwrap());
        assert!(s.wants(&pending));
        s.scope = Some("rg:dev".parse().unwrap());
        assert!(!s.wants(&pending));
        s.scope = Some("vm:web1".parse().unwrap());
        assert!(s.wants(&pending) && s.wants(&offline));
        s.scope = Some("vm:web2".parse().unwrap());
        assert!(!s.wants(&offline));
        s.scope = None;
        s.to_group = Some("sec-leads".into());
        assert!(s.wants(&pending) && !s.wants(&offline));
        s.to_group = Some("ops".into());
        assert!(!s.wants(&pending));
    }

    #[test]
    fn view_redacts_the_url() {
        let s = Sink::from_spec(
            &spec(
                "slack",
                "https://hooks.slack.com/services/T/B/SECRETPART",
                None,
            ),
            &R,
        )
        .unwrap();
        let json = serde_json::to_string(&s.view()).unwrap();
        assert!(!json.contains("SECRETPART"), "{json}");
        assert!(json.contains("hooks.slack.com"), "{json}");
    }
}
