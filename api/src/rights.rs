//! Roles and scopes: what a principal may do, and where.

use std::fmt;
use std::str::FromStr;

use crate::name::{self, NameError};
use crate::wire::wire_enum;

wire_enum! {
    /// Ordered: each role includes the rights of the ones before it.
    pub enum Role("role") {
        /// Sees VMs, policies, history and activity within its scope.
        Reader = "reader",
        /// Reader, plus initiates requests within its scope and revokes its own.
        Requester = "requester",
        /// Everything within its scope: writes and deletes policies, revokes any request.
        Admin = "admin",
    }
}

/// Where a principal's rights apply: `*`, `rg:GROUP` or `vm:NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every VM and resource group.
    All,
    /// One resource group and its VMs.
    ResourceGroup(String),
    /// One VM.
    Vm(String),
}

/// A scope that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?} is invalid: use *, rg:GROUP or vm:NAME")]
    Invalid(String),
    #[error(transparent)]
    Name(#[from] NameError),
}

impl Scope {
    pub fn covers_vm(&self, vm: &str, group: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::ResourceGroup(g) => g == group,
            Scope::Vm(v) => v == vm,
        }
    }

    pub fn covers_group(&self, group: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::ResourceGroup(g) => g == group,
            Scope::Vm(_) => false,
        }
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        if s == "*" {
            return Ok(Scope::All);
        }
        match s.split_once(':') {
            Some(("rg", n)) => {
                name::validate("resource group", n)?;
                Ok(Scope::ResourceGroup(n.into()))
            }
            Some(("vm", n)) => {
                name::validate("VM", n)?;
                Ok(Scope::Vm(n.into()))
            }
            _ => Err(ScopeError::Invalid(s.to_string())),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = ScopeError;
    fn try_from(s: String) -> Result<Scope, ScopeError> {
        s.parse()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::ResourceGroup(g) => write!(f, "rg:{g}"),
            Scope::Vm(v) => write!(f, "vm:{v}"),
        }
    }
}

impl serde::Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Reader < Role::Requester && Role::Requester < Role::Admin);
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "role \"root\" is invalid: use reader, requester or admin"
        );
    }

    #[test]
    fn scopes() {
        for s in ["*", "rg:prod", "vm:web-1"] {
            assert_eq!(s.parse::<Scope>().unwrap().to_string(), s);
        }
        assert!(matches!(
            "group:x".parse::<Scope>(),
            Err(ScopeError::Invalid(_))
        ));
        assert!(matches!(
            "rg:a b".parse::<Scope>(),
            Err(ScopeError::Name(_))
        ));
        let s: Scope = "rg:prod".parse().unwrap();
        assert!(s.covers_vm("web1", "prod") && !s.covers_vm("db1", "dev"));
        assert!(s.covers_group("prod") && !Scope::Vm("web1".into()).covers_group("prod"));
    }
}
