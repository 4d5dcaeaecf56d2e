//! API tokens, roles and scopes.
//!
//! A token is `jit_` followed by 64 hex digits (256 random bits). Only its SHA-256 is stored.
//! Each token has a principal name (the `requestor` shown in history), a role and a scope.

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees VMs, policies, history and activity within its scope.
    Reader,
    /// Reader, plus initiates requests within its scope and revokes its own.
    Requester,
    /// Everything within its scope: writes and deletes policies, revokes any request; with
    /// the global scope also manages VMs and tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Requester => "requester",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Result<Role, ApiError> {
        match s {
            "reader" => Ok(Role::Reader),
            "requester" => Ok(Role::Requester),
            "admin" => Ok(Role::Admin),
            _ => Err(ApiError::bad_request(
                "InvalidRole",
                format!("role {s:?} is invalid: use reader, requester or admin"),
            )),
        }
    }
}

/// Where a token's rights apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every VM and resource group.
    All,
    /// One resource group and its VMs (`rg:NAME`).
    ResourceGroup(String),
    /// One VM (`vm:NAME`).
    Vm(String),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, ApiError> {
        if s == "*" {
            return Ok(Scope::All);
        }
        let bad = || {
            ApiError::bad_request(
                "InvalidScope",
                format!("scope {s:?} is invalid: use *, rg:GROUP or vm:NAME"),
            )
        };
        match s.split_once(':') {
            Some(("rg", n)) => {
                crate::model::validate_name("resource group", n)?;
                Ok(Scope::ResourceGroup(n.into()))
            }
            Some(("vm", n)) => {
                crate::model::validate_name("VM", n)?;
                Ok(Scope::Vm(n.into()))
            }
            _ => Err(bad()),
        }
    }
    pub fn to_string_form(&self) -> String {
        match self {
            Scope::All => "*".into(),
            Scope::ResourceGroup(g) => format!("rg:{g}"),
            Scope::Vm(v) => format!("vm:{v}"),
        }
    }
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

/// The authenticated caller of one API call.
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    /// The caller's address as the controller sees it (after the trusted-proxy rule).
    pub address: std::net::IpAddr,
}

impl Caller {
    /// `min` role on a VM.
    pub fn check_vm(&self, min: Role, vm: &str, group: &str) -> Result<(), ApiError> {
        if self.role >= min && self.scope.covers_vm(vm, group) {
            Ok(())
        } else {
            Err(self.deny(format!("VM {vm}"), min))
        }
    }
    pub fn check_group(&self, min: Role, group: &str) -> Result<(), ApiError> {
        if self.role >= min && self.scope.covers_group(group) {
            Ok(())
        } else {
            Err(self.deny(format!("resource group {group}"), min))
        }
    }
    pub fn check_global(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min && self.scope == Scope::All {
            Ok(())
        } else {
            Err(self.deny("the whole controller (scope *)".into(), min))
        }
    }
    fn deny(&self, what: String, min: Role) -> ApiError {
        tracing::warn!(
            caller = %self.name,
            token = %self.token_id,
            role = self.role.as_str(),
            scope = %self.scope.to_string_form(),
            address = %self.address,
            needed = min.as_str(),
            on = %what,
            "forbidden"
        );
        ApiError::forbidden(format!(
            "{} ({} on {}) may not do this on {what}: it needs role {} with a scope covering it",
            self.name,
            self.role.as_str(),
            self.scope.to_string_form(),
            min.as_str()
        ))
    }
}

/// A fresh token: `jit_` + 64 hex digits.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("jit_{}", hex::encode(b))
}

/// A random identifier of `n` bytes, hex.
pub fn random_id(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A request id in GUID form, as Azure shows them: a UUIDv7 (48-bit millisecond time, then
/// random bits), so that ids are roughly time-ordered and database inserts stay local.
pub fn new_guid() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let ms = u64::try_from(crate::model::now_ms()).unwrap_or(0);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A time-ordered identifier: `prefix` + 12 hex digits of milliseconds + `n` random bytes.
pub fn time_ordered_id(prefix: &str, n: usize) -> String {
    format!(
        "{prefix}{:012x}{}",
        crate::model::now_ms().max(0),
        random_id(n)
    )
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether a presented string has the shape of a token (checked before any lookup).
pub fn plausible_token(t: &str) -> bool {
    t.len() == 68 && t.starts_with("jit_") && t[4..].bytes().all(|b| b.is_ascii_hexdigit())
}
