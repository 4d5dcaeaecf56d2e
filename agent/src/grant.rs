//! What the data plane needs to know about a grant.

use jitgate_common::{Port, Protocol, SourcePrefix};
use std::fmt;
use std::str::FromStr;

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
