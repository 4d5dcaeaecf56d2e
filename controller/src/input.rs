//! Values from callers, parsed once: each parse failure is a refusal with its own error code
//! (`InvalidTime`, `InvalidPort`, ...), so that nothing invalid gets past the edge.

use jitgate_api::rights::ScopeError;
use jitgate_api::{ErrorCode, ProtoSel, Role, Scope};
use jitgate_common::{Port, SourcePrefix};

use crate::error::{Error, Result};

/// Parses an RFC 3339 / ISO 8601 timestamp with an offset (`Z` or `+hh:mm`).
pub fn parse_time(s: &str) -> Result<i64> {
    jitgate_api::time::parse(s).map_err(|e| Error::refused(ErrorCode::InvalidTime, e.to_string()))
}

/// Parses an ISO 8601 duration (`jitgate_api::duration`); returns seconds.
pub fn parse_duration(s: &str) -> Result<i64> {
    jitgate_api::duration::parse(s)
        .map_err(|e| Error::refused(ErrorCode::InvalidDuration, e.to_string()))
}

/// VM, resource group and token names (`jitgate_api::name`).
pub fn validate_name(kind: &'static str, s: &str) -> Result<()> {
    jitgate_api::name::validate(kind, s)
        .map_err(|e| Error::refused(ErrorCode::InvalidName, e.to_string()))
}

pub fn parse_proto_sel(s: &str) -> Result<ProtoSel> {
    s.parse::<ProtoSel>()
        .map_err(|e| Error::refused(ErrorCode::InvalidProtocol, e.to_string()))
}

/// What a port number must be, in words.
const PORT_RULE: &str = "use a whole number from 1 to 65535";

pub fn parse_port(n: u32) -> Result<Port> {
    u16::try_from(n).ok().and_then(Port::new).ok_or_else(|| {
        Error::refused(
            ErrorCode::InvalidPort,
            format!("port {n} is invalid: {PORT_RULE}"),
        )
    })
}

/// A port number as typed in a form: a whole number (checked by [`parse_port`] with the
/// rest of the policy).
pub fn port_from_text(s: &str) -> Result<u32> {
    s.trim().parse::<u32>().map_err(|_| {
        Error::refused(
            ErrorCode::InvalidPort,
            format!("port {s:?} is invalid: {PORT_RULE}"),
        )
    })
}

pub fn parse_prefix(s: &str) -> Result<SourcePrefix> {
    s.parse::<SourcePrefix>().map_err(|e| {
        Error::refused(
            ErrorCode::InvalidSourcePrefix,
            format!("source address prefix {s:?} is invalid: {e}"),
        )
    })
}

/// `allowedSourceAddressPrefix` / `allowedSourceAddressPrefixes`: exactly one of them. `*`
/// means any address, IPv4 and IPv6.
pub fn parse_prefixes(
    one: &Option<String>,
    many: &Option<Vec<String>>,
    required: bool,
) -> Result<Vec<SourcePrefix>> {
    let raw: Vec<&str> = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(Error::refused(
                ErrorCode::InvalidSourcePrefix,
                "give allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both",
            ));
        }
        (Some(s), None) => vec![s.as_str()],
        (None, Some(v)) => {
            if v.is_empty() {
                return Err(Error::refused(
                    ErrorCode::InvalidSourcePrefix,
                    "allowedSourceAddressPrefixes must not be empty",
                ));
            }
            v.iter().map(String::as_str).collect()
        }
        (None, None) => {
            if required {
                return Err(Error::refused(
                    ErrorCode::InvalidSourcePrefix,
                    "each policy port needs allowedSourceAddressPrefix or allowedSourceAddressPrefixes",
                ));
            }
            vec![]
        }
    };
    if raw.len() > 64 {
        return Err(Error::refused(
            ErrorCode::InvalidSourcePrefix,
            "at most 64 source prefixes per port",
        ));
    }
    let mut out = Vec::new();
    for s in raw {
        if s == "*" || s.eq_ignore_ascii_case("any") || s.eq_ignore_ascii_case("internet") {
            for p in ["0.0.0.0/0", "::/0"] {
                out.push(parse_prefix(p)?);
            }
        } else {
            out.push(parse_prefix(s)?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One prefix as `allowedSourceAddressPrefix`, several as `allowedSourceAddressPrefixes`.
pub fn prefixes_json(p: &[SourcePrefix]) -> (Option<String>, Option<Vec<String>>) {
    if p.len() == 1 {
        (Some(p[0].to_string()), None)
    } else {
        (None, Some(p.iter().map(|x| x.to_string()).collect()))
    }
}

/// A role from the command line or a store.
pub fn parse_role(s: &str) -> Result<Role> {
    s.parse().map_err(|e: jitgate_api::UnknownValue| {
        Error::refused(ErrorCode::InvalidRole, e.to_string())
    })
}

/// A scope (`*`, `rg:GROUP`, `vm:NAME`) from a query or the command line.
pub fn parse_scope(s: &str) -> Result<Scope> {
    s.parse().map_err(|e: ScopeError| match e {
        ScopeError::Name(n) => Error::refused(ErrorCode::InvalidName, n.to_string()),
        e @ ScopeError::Invalid(_) => Error::refused(ErrorCode::InvalidScope, e.to_string()),
    })
}
