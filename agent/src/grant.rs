//! What the data plane needs to know about a grant.

use crate::clock::BootInstant;
use jitgate_common::{MaxConnections, Port, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use time::OffsetDateTime;

/// A grant's id: a UUID, assigned by the controller or, for local grants, by the agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(uuid::Uuid);

impl GrantId {
    pub fn random() -> Self {
        GrantId(uuid::Uuid::new_v4())
    }

    pub const fn from_bytes(b: [u8; 16]) -> Self {
        GrantId(uuid::Uuid::from_bytes(b))
    }

    pub const fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The all-zero id that the kernel writes for "no grant".
    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for GrantId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(GrantId)
    }
}

/// Which packets a grant admits: protocol, destination port, source prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrantSpec {
    pub protocol: Protocol,
    pub port: Port,
    pub source: SourcePrefix,
}

impl fmt::Display for GrantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} from {}", self.port, self.protocol, self.source)
    }
}

impl Serialize for GrantId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GrantId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a grant came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Root on the host, through the admin socket: the break-glass path. Never deleted by
    /// reconciliation with the controller.
    Local,
    /// Signed by the controller for this host.
    Controller,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Controller => "controller",
        }
    }
}

/// A grant as the agent keeps it: the grant table's row and the journal's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantRecord {
    pub id: GrantId,
    pub protocol: Protocol,
    pub port: Port,
    pub source: SourcePrefix,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// Shared between grants: most come from a handful of requesters.
    pub requester: Arc<str>,
    pub justification: Box<str>,
    pub origin: Origin,
    /// The kernel boot during which `expires_boot_ns` is meaningful (shared: one per boot).
    pub boot_id: Arc<str>,
    /// The end on CLOCK_BOOTTIME, fixed when the grant was first applied. Within the same
    /// boot it is authoritative: a wall-clock change cannot move it.
    pub expires_boot_ns: u64,
    /// At most this many new connections (absent: unlimited). Counted by the kernel
    /// (docs/dataplane.md, "Connection limits").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<MaxConnections>,
}

impl GrantRecord {
    pub fn spec(&self) -> GrantSpec {
        GrantSpec {
            protocol: self.protocol,
            port: self.port,
            source: self.source,
        }
    }

    /// The end on this boot's CLOCK_BOOTTIME: the recorded one within the same boot, else
    /// (after a reboot) converted from the UTC end now.
    pub fn expires(&self, boot_id: &str) -> BootInstant {
        if &*self.boot_id == boot_id {
            BootInstant(self.expires_boot_ns)
        } else {
            BootInstant::from_utc(self.end.into())
        }
    }
}

/// This kernel boot's id (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Arc<str> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| Arc::from(s.trim()))
        .unwrap_or_else(|_| Arc::from(""))
}
