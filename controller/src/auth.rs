//! API tokens, roles and scopes.
//!
//! A token is `jit_` followed by 64 hex digits (256 random bits). Only its SHA-256 is stored.
//! Each token has a principal name (the `requestor` shown in history), a role and a scope.

use jitgate_api::ErrorCode;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

use jitgate_api::rights::ScopeError;
pub use jitgate_api::{Role, Scope};

/// A role from the command line or the database.
pub fn parse_role(s: &str) -> Result<Role, ApiError> {
    s.parse().map_err(|e: jitgate_api::UnknownValue| {
        ApiError::bad_request(ErrorCode::InvalidRole, e.to_string())
    })
}

/// A scope (`*`, `rg:GROUP`, `vm:NAME`) from a query, the command line or the database.
pub fn parse_scope(s: &str) -> Result<Scope, ApiError> {
    s.parse().map_err(|e: ScopeError| match e {
        ScopeError::Name(n) => ApiError::bad_request(ErrorCode::InvalidName, n.to_string()),
        e @ ScopeError::Invalid(_) => ApiError::bad_request(ErrorCode::InvalidScope, e.to_string()),
    })
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
            scope = %self.scope,
            address = %self.address,
            needed = min.as_str(),
            on = %what,
            "forbidden"
        );
        ApiError::forbidden(format!(
            "{} ({} on {}) may not do this on {what}: it needs role {} with a scope covering it",
            self.name,
            self.role.as_str(),
            self.scope,
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
