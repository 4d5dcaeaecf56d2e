//! Validation of the API's request bodies (`jitgate_api`): every value is parsed into a
//! validated type, with its own error code, before anything is written.

use jitgate_api::ErrorCode;
use jitgate_api::duration;
use jitgate_api::{InitiateBody, OnExpiry, PolicyBody, PolicyPort as PolicyPortJson, ProtoSel};
use jitgate_common::{Port, Protocol, SourcePrefix};

use crate::error::ApiError;

/// Shortest and longest `maxRequestAccessDuration` a policy may set (Azure's PT5M..PT24H).
pub const MIN_POLICY_DURATION_SECS: i64 = 5 * 60;
pub const MAX_POLICY_DURATION_SECS: i64 = 24 * 3600;
/// Longest justification kept.
pub const MAX_JUSTIFICATION: usize = 1024;

pub use jitgate_api::duration::format as fmt_duration;
pub use jitgate_api::time::{format as fmt_time, now_ms};

/// Parses an RFC 3339 / ISO 8601 timestamp with an offset (`Z` or `+hh:mm`).
pub fn parse_time(s: &str) -> Result<i64, ApiError> {
    jitgate_api::time::parse(s)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidTime, e.to_string()))
}

/// Parses an ISO 8601 duration (`jitgate_api::duration`); returns seconds.
pub fn parse_duration(s: &str) -> Result<i64, ApiError> {
    duration::parse(s).map_err(|e| ApiError::bad_request(ErrorCode::InvalidDuration, e.to_string()))
}

/// VM, resource group and token names (`jitgate_api::name`).
pub fn validate_name(kind: &'static str, s: &str) -> Result<(), ApiError> {
    jitgate_api::name::validate(kind, s)
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidName, e.to_string()))
}

pub fn parse_proto_sel(s: &str) -> Result<ProtoSel, ApiError> {
    s.parse::<ProtoSel>()
        .map_err(|e| ApiError::bad_request(ErrorCode::InvalidProtocol, e.to_string()))
}

pub fn parse_port(n: u32) -> Result<Port, ApiError> {
    u16::try_from(n).ok().and_then(Port::new).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidPort,
            format!("port {n} is invalid: use a whole number from 1 to 65535"),
        )
    })
}

pub fn parse_prefix(s: &str) -> Result<SourcePrefix, ApiError> {
    s.parse::<SourcePrefix>().map_err(|e| {
        ApiError::bad_request(
            ErrorCode::InvalidSourcePrefix,
            format!("source address prefix {s:?} is invalid: {e}"),
        )
    })
}

/// `allowedSourceAddressPrefix` / `allowedSourceAddressPrefixes`: exactly one of them. `*`
/// means any address, IPv4 and IPv6.
fn parse_prefixes(
    one: &Option<String>,
    many: &Option<Vec<String>>,
    required: bool,
) -> Result<Vec<SourcePrefix>, ApiError> {
    let raw: Vec<&str> = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidSourcePrefix,
                "give allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both",
            ));
        }
        (Some(s), None) => vec![s.as_str()],
        (None, Some(v)) => {
            if v.is_empty() {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSourcePrefix,
                    "allowedSourceAddressPrefixes must not be empty",
                ));
            }
            v.iter().map(String::as_str).collect()
        }
        (None, None) => {
            if required {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidSourcePrefix,
                    "each policy port needs allowedSourceAddressPrefix or allowedSourceAddressPrefixes",
                ));
            }
            vec![]
        }
    };
    if raw.len() > 64 {
        return Err(ApiError::bad_request(
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

fn prefixes_json(p: &[SourcePrefix]) -> (Option<String>, Option<Vec<String>>) {
    if p.len() == 1 {
        (Some(p[0].to_string()), None)
    } else {
        (None, Some(p.iter().map(|x| x.to_string()).collect()))
    }
}

// ---------------------------------------------------------------------------------------------
// Policies

/// A validated policy port.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyPort {
    pub number: Port,
    pub protocol: ProtoSel,
    pub prefixes: Vec<SourcePrefix>,
    pub max_duration_secs: i64,
    pub on_expiry: OnExpiry,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ports: Vec<PolicyPort>,
}

impl Policy {
    pub fn from_json(j: &PolicyBody) -> Result<Policy, ApiError> {
        if j.ports.is_empty() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPolicy,
                "a policy needs at least one port (use DELETE to remove a policy)",
            ));
        }
        if j.ports.len() > 256 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidPolicy,
                "a policy may have at most 256 ports",
            ));
        }
        let mut ports: Vec<PolicyPort> = Vec::new();
        for p in &j.ports {
            let number = parse_port(p.number)?;
            let protocol = parse_proto_sel(&p.protocol)?;
            let prefixes = parse_prefixes(
                &p.allowed_source_address_prefix,
                &p.allowed_source_address_prefixes,
                true,
            )?;
            let max = parse_duration(&p.max_request_access_duration)?;
            if !(MIN_POLICY_DURATION_SECS..=MAX_POLICY_DURATION_SECS).contains(&max) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidDuration,
                    format!(
                        "maxRequestAccessDuration {} is outside PT5M..PT24H",
                        p.max_request_access_duration
                    ),
                ));
            }
            for q in &ports {
                if q.number == number && q.protocol.expand().iter().any(|x| protocol.covers(*x)) {
                    return Err(ApiError::bad_request(
                        ErrorCode::InvalidPolicy,
                        format!(
                            "port {number} is listed twice for the same protocol ({} and {})",
                            q.protocol.as_str(),
                            protocol.as_str()
                        ),
                    ));
                }
            }
            ports.push(PolicyPort {
                number,
                protocol,
                prefixes,
                max_duration_secs: max,
                on_expiry: p.on_expiry,
            });
        }
        Ok(Policy { ports })
    }

    pub fn to_json(&self) -> PolicyBody {
        PolicyBody {
            ports: self
                .ports
                .iter()
                .map(|p| {
                    let (one, many) = prefixes_json(&p.prefixes);
                    PolicyPortJson {
                        number: u32::from(p.number.get()),
                        protocol: p.protocol.as_str().into(),
                        allowed_source_address_prefix: one,
                        allowed_source_address_prefixes: many,
                        max_request_access_duration: duration::format(p.max_duration_secs),
                        on_expiry: p.on_expiry,
                    }
                })
                .collect(),
        }
    }

    /// The policy entry that covers (port, protocol); entries never overlap (checked on write).
    pub fn entry(&self, number: Port, proto: Protocol) -> Option<&PolicyPort> {
        self.ports
            .iter()
            .find(|p| p.number == number && p.protocol.covers(proto))
    }
}

// ---------------------------------------------------------------------------------------------
// Initiate

/// A validated request port (before evaluation against the policy).
#[derive(Clone, Debug)]
pub struct RequestedPort {
    pub number: Port,
    /// None: take the policy's.
    pub protocol: Option<ProtoSel>,
    pub prefixes: Vec<SourcePrefix>,
    pub end_ms: i64,
}

#[derive(Clone, Debug)]
pub struct RequestedVm {
    pub name: String,
    pub ports: Vec<RequestedPort>,
}

#[derive(Clone, Debug)]
pub struct Initiate {
    pub vms: Vec<RequestedVm>,
    pub justification: String,
}

impl Initiate {
    /// Validates syntax. `my_ip` fills a missing source; `now` anchors durations.
    pub fn from_json(
        j: &InitiateBody,
        my_ip: std::net::IpAddr,
        now: i64,
    ) -> Result<Initiate, ApiError> {
        let justification = j.justification.trim().to_string();
        if justification.is_empty() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "a justification is required",
            ));
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                format!("justification is longer than {MAX_JUSTIFICATION} bytes"),
            ));
        }
        if j.virtual_machines.is_empty() || j.virtual_machines.len() > 32 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "virtualMachines must list 1 to 32 VMs",
            ));
        }
        let mut vms = Vec::new();
        for vm in &j.virtual_machines {
            validate_name("VM", &vm.id)?;
            if vms.iter().any(|v: &RequestedVm| v.name == vm.id) {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    format!("VM {} is listed twice", vm.id),
                ));
            }
            if vm.ports.is_empty() || vm.ports.len() > 64 {
                return Err(ApiError::bad_request(
                    ErrorCode::InvalidRequest,
                    format!("VM {}: ports must list 1 to 64 ports", vm.id),
                ));
            }
            let mut ports = Vec::new();
            for p in &vm.ports {
                let number = parse_port(p.number)?;
                let protocol = p.protocol.as_deref().map(parse_proto_sel).transpose()?;
                let mut prefixes = parse_prefixes(
                    &p.allowed_source_address_prefix,
                    &p.allowed_source_address_prefixes,
                    false,
                )?;
                if prefixes.is_empty() {
                    prefixes.push(SourcePrefix::host(my_ip));
                }
                let end_ms = match (&p.end_time_utc, &p.duration) {
                    (Some(_), Some(_)) => {
                        return Err(ApiError::bad_request(
                            ErrorCode::InvalidRequest,
                            "give endTimeUtc or duration, not both",
                        ));
                    }
                    (Some(t), None) => parse_time(t)?,
                    (None, Some(d)) => {
                        let secs = parse_duration(d)?;
                        if secs <= 0 {
                            return Err(ApiError::bad_request(
                                ErrorCode::InvalidDuration,
                                "duration must be positive",
                            ));
                        }
                        now + secs * 1000
                    }
                    (None, None) => {
                        return Err(ApiError::bad_request(
                            ErrorCode::InvalidRequest,
                            format!("port {number}: give endTimeUtc or duration"),
                        ));
                    }
                };
                ports.push(RequestedPort {
                    number,
                    protocol,
                    prefixes,
                    end_ms,
                });
            }
            vms.push(RequestedVm {
                name: vm.id.clone(),
                ports,
            });
        }
        Ok(Initiate { vms, justification })
    }
}

pub fn prefixes_to_json(p: &[SourcePrefix]) -> (Option<String>, Option<Vec<String>>) {
    prefixes_json(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_with_the_server_limits() {
        use crate::api::parse_body;
        let limit = crate::state::DEFAULT_MAX_BODY_BYTES;
        let code = |r: Result<PolicyBody, ApiError>| r.err().map(|e| e.code);
        assert_eq!(
            code(parse_body(b"{\"ports\": [", limit)),
            Some(ErrorCode::InvalidJson)
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": 1}", limit)),
            Some(ErrorCode::InvalidBody)
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": [], \"x\": 1}", limit)),
            Some(ErrorCode::InvalidBody)
        );
        let big = format!("{{\"ports\": []}}{}", " ".repeat(limit));
        assert_eq!(
            code(parse_body(big.as_bytes(), limit)),
            Some(ErrorCode::BodyTooLarge)
        );
        assert_eq!(code(parse_body(b"{\"ports\": []}", limit)), None);
    }

    /// The committed seeds of the `request_json` fuzz target (fuzz/, docs/fuzzing.md) stay
    /// valid requests.
    #[test]
    fn fuzz_seeds_validate() {
        use crate::api::parse_body;
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request_json");
        let (mut policies, mut requests) = (0, 0);
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let limit = crate::state::DEFAULT_MAX_BODY_BYTES;
            if let Ok(j) = parse_body::<PolicyBody>(&data, limit) {
                Policy::from_json(&j).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                policies += 1;
            } else {
                let j: InitiateBody = parse_body(&data, limit).unwrap();
                let ip = std::net::IpAddr::from([203, 0, 113, 7]);
                Initiate::from_json(&j, ip, 1_795_737_600_000)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                requests += 1;
            }
        }
        assert!(policies >= 1 && requests >= 1);
    }
}
