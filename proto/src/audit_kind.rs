//! The kinds of record in an agent's audit log, shared by the agent (which writes them) and
//! the controller (which stores, filters and shows what agents deliver).
//!
//! On the wire and on disk a kind is the plain string of [`AuditKind::as_str`]. A kind this
//! build does not know (written by a newer agent) parses to [`AuditKind::Unknown`] with its
//! text kept as is: such a record is still verified, stored, shown and acknowledged, never a
//! reason to stop delivery.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What an agent audit record says happened.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// The daemon started (grants restored, maps adopted or fresh).
    AgentStarted,
    /// The daemon stopped; enforcement stays pinned unless it was detached.
    AgentStopped,
    /// Enforcement was removed from every interface.
    AgentDetached,
    /// The program runs on an interface.
    InterfaceAttached,
    /// An interface that matches the configuration could not be enforced on.
    InterfaceAttachFailed,
    /// An established session to a protected port was adopted as an admitted flow.
    SessionAdopted,
    /// A grant is in the maps and the journal.
    GrantApplied,
    /// A grant (local or from the controller) was refused; nothing changed.
    GrantRejected,
    /// A booked grant is journaled and waits for its start, out of the maps.
    GrantScheduled,
    /// A grant was revoked (locally, by the controller, or by reconciliation).
    GrantRevoked,
    /// A grant reached its end.
    GrantExpired,
    /// A revocation from the controller was refused.
    RevokeRejected,
    /// A signed policy from the controller set the protected ports.
    PolicyApplied,
    /// A policy from the controller was refused.
    PolicyRejected,
    /// The kernel admitted a connection (data-plane event).
    ConnectionAdmitted,
    /// The kernel dropped a connection attempt (data-plane event, rate-limited).
    ConnectionDenied,
    /// The agent's signature over the chain head before this record.
    AuditCheckpoint,
    /// A new grant-signing key was announced and is accepted next to the pinned one.
    KeyAnnounced,
    /// The previous grant-signing key was retired: refused from now on.
    KeyRetired,
    /// A key announcement or retirement was refused; the keys did not change.
    KeyRejected,
    /// A grant with a connection limit admitted its last connection (data-plane event; the
    /// record names the connection that took it).
    GrantConnectionLimitReached,
    /// A kind this build does not know, kept verbatim.
    Unknown(String),
}

impl AuditKind {
    /// Every kind this build knows, in the order of the enum.
    pub const KNOWN: [AuditKind; 21] = [
        AuditKind::AgentStarted,
        AuditKind::AgentStopped,
        AuditKind::AgentDetached,
        AuditKind::InterfaceAttached,
        AuditKind::InterfaceAttachFailed,
        AuditKind::SessionAdopted,
        AuditKind::GrantApplied,
        AuditKind::GrantRejected,
        AuditKind::GrantScheduled,
        AuditKind::GrantRevoked,
        AuditKind::GrantExpired,
        AuditKind::RevokeRejected,
        AuditKind::PolicyApplied,
        AuditKind::PolicyRejected,
        AuditKind::ConnectionAdmitted,
        AuditKind::ConnectionDenied,
        AuditKind::AuditCheckpoint,
        AuditKind::KeyAnnounced,
        AuditKind::KeyRetired,
        AuditKind::KeyRejected,
        AuditKind::GrantConnectionLimitReached,
    ];

    /// The kind as written in a record's `kind` field.
    pub fn as_str(&self) -> &str {
        match self {
            AuditKind::AgentStarted => "agent.started",
            AuditKind::AgentStopped => "agent.stopped",
            AuditKind::AgentDetached => "agent.detached",
            AuditKind::InterfaceAttached => "interface.attached",
            AuditKind::InterfaceAttachFailed => "interface.attach_failed",
            AuditKind::SessionAdopted => "session.adopted",
            AuditKind::GrantApplied => "grant.applied",
            AuditKind::GrantRejected => "grant.rejected",
            AuditKind::GrantScheduled => "grant.scheduled",
            AuditKind::GrantRevoked => "grant.revoked",
            AuditKind::GrantExpired => "grant.expired",
            AuditKind::RevokeRejected => "revoke.rejected",
            AuditKind::PolicyApplied => "policy.applied",
            AuditKind::PolicyRejected => "policy.rejected",
            AuditKind::ConnectionAdmitted => "connection.admitted",
            AuditKind::ConnectionDenied => "connection.denied",
            AuditKind::AuditCheckpoint => "audit.checkpoint",
            AuditKind::KeyAnnounced => "key.announced",
            AuditKind::KeyRetired => "key.retired",
            AuditKind::KeyRejected => "key.rejected",
            AuditKind::GrantConnectionLimitReached => "grant.connection_limit_reached",
            AuditKind::Unknown(s) => s,
        }
    }

    /// Whether this build knows the kind.
    pub fn is_known(&self) -> bool {
        !matches!(self, AuditKind::Unknown(_))
    }
}

impl From<&str> for AuditKind {
    fn from(s: &str) -> Self {
        AuditKind::KNOWN
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or_else(|| AuditKind::Unknown(s.to_string()))
    }
}

impl From<String> for AuditKind {
    fn from(s: String) -> Self {
        match AuditKind::from(s.as_str()) {
            AuditKind::Unknown(_) => AuditKind::Unknown(s),
            known => known,
        }
    }
}

/// Never fails: an unknown kind is [`AuditKind::Unknown`].
impl FromStr for AuditKind {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(AuditKind::from(s))
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment (`{:<22}`) apply.
        f.pad(self.as_str())
    }
}

/// Compares with a kind as stored or sent (a database column, a query parameter).
impl PartialEq<str> for AuditKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for AuditKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for AuditKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AuditKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(AuditKind::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_kinds_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for k in AuditKind::KNOWN {
            assert!(k.is_known());
            assert!(seen.insert(k.as_str().to_string()), "{k} twice");
            assert_eq!(AuditKind::from(k.as_str()), k);
            assert_eq!(k.as_str().parse::<AuditKind>(), Ok(k.clone()));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<AuditKind>(&json).unwrap(), k);
        }
    }

    /// The strings the controller stores and filters on, and the ones the agent has always
    /// written: renaming one would split the history of every fleet.
    #[test]
    fn wire_strings_are_fixed() {
        assert_eq!(
            AuditKind::ConnectionAdmitted.as_str(),
            "connection.admitted"
        );
        assert_eq!(AuditKind::ConnectionDenied.as_str(), "connection.denied");
        assert_eq!(AuditKind::GrantApplied.as_str(), "grant.applied");
        assert_eq!(AuditKind::AuditCheckpoint.as_str(), "audit.checkpoint");
        assert_eq!(
            AuditKind::InterfaceAttachFailed.as_str(),
            "interface.attach_failed"
        );
    }

    #[test]
    fn unknown_kind_is_kept_verbatim() {
        let k: AuditKind = serde_json::from_str("\"grant.extended\"").unwrap();
        assert_eq!(k, AuditKind::Unknown("grant.extended".into()));
        assert!(!k.is_known());
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"grant.extended\"");
        assert_eq!(AuditKind::from(String::from("")).as_str(), "");
        assert_eq!(format!("[{:<16}]", k), "[grant.extended  ]");
        assert!(k == "grant.extended");
    }
}
