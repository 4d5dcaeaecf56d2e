//! The API's vocabulary (Azure's names, camelCase JSON) and its validation. Input types reject
//! unknown fields; every value is parsed into a validated type before anything is written.

use jitgate_common::{Port, Protocol, SourcePrefix};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ApiError;

/// Shortest and longest `maxRequestAccessDuration` a policy may set (Azure's PT5M..PT24H).
pub const MIN_POLICY_DURATION_SECS: i64 = 5 * 60;
pub const MAX_POLICY_DURATION_SECS: i64 = 24 * 3600;
/// Longest justification kept.
pub const MAX_JUSTIFICATION: usize = 1024;

/// Milliseconds since the Unix epoch, UTC.
pub fn now_ms() -> i64 {
    let t = OffsetDateTime::now_utc();
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-26T23:00:00.000Z`.
pub fn fmt_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            millis
        ),
        Err(_) => ms.to_string(),
    }
}

/// Parses an RFC 3339 / ISO 8601 timestamp with an offset (`Z` or `+hh:mm`).
pub fn parse_time(s: &str) -> Result<i64, ApiError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        ApiError::bad_request(
            "InvalidTime",
            format!("{s:?} is not an ISO 8601 UTC time such as 2026-01-31T17:00:00Z ({e})"),
        )
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Parses an ISO 8601 duration of days, hours, minutes and seconds: `PT5M`, `PT1H30M`, `P1D`.
/// Returns seconds. Years, months and weeks are refused (their length is not fixed).
pub fn parse_duration(s: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "InvalidDuration",
            format!("{s:?} is not an ISO 8601 duration such as PT30M, PT3H or P1D"),
        )
    };
    let rest = s.strip_prefix('P').ok_or_else(bad)?;
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut in_time = false;
    let mut num = String::new();
    let mut any = false;
    let mut last_rank = 0u8;
    for c in rest.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            if num.len() > 9 {
                return Err(bad());
            }
            continue;
        }
        if c == 'T' {
            if in_time || !num.is_empty() {
                return Err(bad());
            }
            in_time = true;
            continue;
        }
        if num.is_empty() {
            return Err(bad());
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let (mult, rank) = match (in_time, c) {
            (false, 'D') => (86_400, 1),
            (true, 'H') => (3_600, 2),
            (true, 'M') => (60, 3),
            (true, 'S') => (1, 4),
            _ => return Err(bad()),
        };
        if rank <= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        total = total.checked_add(n * mult).ok_or_else(bad)?;
        any = true;
    }
    if !num.is_empty() || !any || (in_time && last_rank < 2) {
        return Err(bad());
    }
    Ok(total)
}

/// Formats seconds as an ISO 8601 duration (`PT1H30M`, `PT0S`).
pub fn fmt_duration(secs: i64) -> String {
    if secs <= 0 {
        return "PT0S".into();
    }
    let (d, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h > 0 || m > 0 || s > 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

/// VM, resource group and token names: 1-64 of `A-Z a-z 0-9 . _ -`, starting alphanumeric.
pub fn validate_name(kind: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "InvalidName",
            format!(
                "{kind} name {s:?} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// A policy's or request's protocol: TCP, UDP or `*` (both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoSel {
    Tcp,
    Udp,
    Any,
}

impl ProtoSel {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        if s == "*" || s.eq_ignore_ascii_case("any") {
            return Ok(ProtoSel::Any);
        }
        match s.parse::<Protocol>() {
            Ok(Protocol::Tcp) => Ok(ProtoSel::Tcp),
            Ok(Protocol::Udp) => Ok(ProtoSel::Udp),
            Err(_) => Err(ApiError::bad_request(
                "InvalidProtocol",
                format!("protocol {s:?} is invalid: use TCP, UDP or *"),
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ProtoSel::Tcp => "TCP",
            ProtoSel::Udp => "UDP",
            ProtoSel::Any => "*",
        }
    }
    /// The concrete protocols: `*` means one TCP and one UDP.
    pub fn expand(self) -> &'static [Protocol] {
        match self {
            ProtoSel::Tcp => &[Protocol::Tcp],
            ProtoSel::Udp => &[Protocol::Udp],
            ProtoSel::Any => &[Protocol::Tcp, Protocol::Udp],
        }
    }
    pub fn covers(self, p: Protocol) -> bool {
        self.expand().contains(&p)
    }
}

pub fn proto_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

pub fn parse_proto(s: &str) -> Result<Protocol, ApiError> {
    s.parse::<Protocol>()
        .map_err(|_| ApiError::bad_request("InvalidProtocol", format!("protocol {s:?} is invalid")))
}

/// What happens to flows a grant admitted when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    /// Admitted flows continue (with an idle timeout); only new ones are refused.
    #[default]
    Keep,
    /// Every packet stops at the end time and local sockets are closed.
    Cut,
}

impl OnExpiry {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExpiry::Keep => "keep",
            OnExpiry::Cut => "cut",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keep" => Some(OnExpiry::Keep),
            "cut" => Some(OnExpiry::Cut),
            _ => None,
        }
    }
}

pub fn parse_port(n: u32) -> Result<Port, ApiError> {
    u16::try_from(n).ok().and_then(Port::new).ok_or_else(|| {
        ApiError::bad_request(
            "InvalidPort",
            format!("port {n} is invalid: use a whole number from 1 to 65535"),
        )
    })
}

pub fn parse_prefix(s: &str) -> Result<SourcePrefix, ApiError> {
    s.parse::<SourcePrefix>().map_err(|e| {
        ApiError::bad_request(
            "InvalidSourcePrefix",
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
                "InvalidSourcePrefix",
                "give allowedSourceAddressPrefix or allowedSourceAddressPrefixes, not both",
            ));
        }
        (Some(s), None) => vec![s.as_str()],
        (None, Some(v)) => {
            if v.is_empty() {
                return Err(ApiError::bad_request(
                    "InvalidSourcePrefix",
                    "allowedSourceAddressPrefixes must not be empty",
                ));
            }
            v.iter().map(String::as_str).collect()
        }
        (None, None) => {
            if required {
                return Err(ApiError::bad_request(
                    "InvalidSourcePrefix",
                    "each policy port needs allowedSourceAddressPrefix or allowedSourceAddressPrefixes",
                ));
            }
            vec![]
        }
    };
    if raw.len() > 64 {
        return Err(ApiError::bad_request(
            "InvalidSourcePrefix",
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

/// One port of a JIT policy, as sent and shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPortJson {
    pub number: u32,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    pub max_request_access_duration: String,
    #[serde(default)]
    pub on_expiry: OnExpiry,
}

/// The body of a policy PUT: `{"ports": [...]}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyJson {
    pub ports: Vec<PolicyPortJson>,
}

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
    pub fn from_json(j: &PolicyJson) -> Result<Policy, ApiError> {
        if j.ports.is_empty() {
            return Err(ApiError::bad_request(
                "InvalidPolicy",
                "a policy needs at least one port (use DELETE to remove a policy)",
            ));
        }
        if j.ports.len() > 256 {
            return Err(ApiError::bad_request(
                "InvalidPolicy",
                "a policy may have at most 256 ports",
            ));
        }
        let mut ports: Vec<PolicyPort> = Vec::new();
        for p in &j.ports {
            let number = parse_port(p.number)?;
            let protocol = ProtoSel::parse(&p.protocol)?;
            let prefixes = parse_prefixes(
                &p.allowed_source_address_prefix,
                &p.allowed_source_address_prefixes,
                true,
            )?;
            let max = parse_duration(&p.max_request_access_duration)?;
            if !(MIN_POLICY_DURATION_SECS..=MAX_POLICY_DURATION_SECS).contains(&max) {
                return Err(ApiError::bad_request(
                    "InvalidDuration",
                    format!(
                        "maxRequestAccessDuration {} is outside PT5M..PT24H",
                        p.max_request_access_duration
                    ),
                ));
            }
            for q in &ports {
                if q.number == number && q.protocol.expand().iter().any(|x| protocol.covers(*x)) {
                    return Err(ApiError::bad_request(
                        "InvalidPolicy",
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

    pub fn to_json(&self) -> PolicyJson {
        PolicyJson {
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
                        max_request_access_duration: fmt_duration(p.max_duration_secs),
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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiatePortJson {
    pub number: u32,
    /// TCP, UDP or `*`; defaults to the policy's protocol for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Missing means the caller's own address ("My IP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// End of the window; give this or `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time_utc: Option<String>,
    /// Length of the window (ISO 8601, e.g. PT1H); give this or `endTimeUtc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiateVmJson {
    /// The VM's name.
    pub id: String,
    pub ports: Vec<InitiatePortJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InitiateJson {
    pub virtual_machines: Vec<InitiateVmJson>,
    pub justification: String,
}

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
        j: &InitiateJson,
        my_ip: std::net::IpAddr,
        now: i64,
    ) -> Result<Initiate, ApiError> {
        let justification = j.justification.trim().to_string();
        if justification.is_empty() {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                "a justification is required",
            ));
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                format!("justification is longer than {MAX_JUSTIFICATION} bytes"),
            ));
        }
        if j.virtual_machines.is_empty() || j.virtual_machines.len() > 32 {
            return Err(ApiError::bad_request(
                "InvalidRequest",
                "virtualMachines must list 1 to 32 VMs",
            ));
        }
        let mut vms = Vec::new();
        for vm in &j.virtual_machines {
            validate_name("VM", &vm.id)?;
            if vms.iter().any(|v: &RequestedVm| v.name == vm.id) {
                return Err(ApiError::bad_request(
                    "InvalidRequest",
                    format!("VM {} is listed twice", vm.id),
                ));
            }
            if vm.ports.is_empty() || vm.ports.len() > 64 {
                return Err(ApiError::bad_request(
                    "InvalidRequest",
                    format!("VM {}: ports must list 1 to 64 ports", vm.id),
                ));
            }
            let mut ports = Vec::new();
            for p in &vm.ports {
                let number = parse_port(p.number)?;
                let protocol = p.protocol.as_deref().map(ProtoSel::parse).transpose()?;
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
                            "InvalidRequest",
                            "give endTimeUtc or duration, not both",
                        ));
                    }
                    (Some(t), None) => parse_time(t)?,
                    (None, Some(d)) => {
                        let secs = parse_duration(d)?;
                        if secs <= 0 {
                            return Err(ApiError::bad_request(
                                "InvalidDuration",
                                "duration must be positive",
                            ));
                        }
                        now + secs * 1000
                    }
                    (None, None) => {
                        return Err(ApiError::bad_request(
                            "InvalidRequest",
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

// ---------------------------------------------------------------------------------------------
// Request records (history)

/// One denial reason, with the port it concerns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenialReason {
    pub virtual_machine: String,
    pub number: u16,
    pub protocol: String,
    /// PortNotInPolicy | ProtocolNotAllowed | SourceNotAllowed | DurationExceedsMaximum |
    /// EndTimeInPast | NoPolicy
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestPortJson {
    pub number: u16,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    pub end_time_utc: String,
    /// Initiated | Applied | Denied | Revoked
    pub status: String,
    /// Expired | UserRequested | NewerRequestInitiated | a denial reason | null
    #[serde(default)]
    pub status_reason: Option<String>,
    #[serde(default)]
    pub on_expiry: Option<OnExpiry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestVmJson {
    pub id: String,
    pub resource_group: String,
    pub ports: Vec<RequestPortJson>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestJson {
    pub id: String,
    pub start_time_utc: String,
    pub requestor: String,
    pub justification: String,
    pub caller_address: String,
    /// Initiated | Applied | Denied | Revoked (summary of the ports)
    pub status: String,
    pub virtual_machines: Vec<RequestVmJson>,
    #[serde(default)]
    pub denial_reasons: Vec<DenialReason>,
}

pub fn prefixes_to_json(p: &[SourcePrefix]) -> (Option<String>, Option<Vec<String>>) {
    prefixes_json(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, v) in [
            ("PT5M", 300),
            ("PT3H", 10800),
            ("PT1H30M", 5400),
            ("P1D", 86400),
            ("P1DT1S", 86401),
            ("PT24H", 86400),
        ] {
            assert_eq!(parse_duration(s).unwrap(), v, "{s}");
        }
        for s in [
            "", "P", "PT", "5M", "PT5", "PT5X", "P1H", "PTM", "PT1M1H", "P1W", "-PT5M", "PT5M ",
        ] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert_eq!(fmt_duration(5400), "PT1H30M");
        assert_eq!(fmt_duration(86400), "P1D");
    }

    #[test]
    fn times() {
        let t = parse_time("2026-01-31T17:00:00Z").unwrap();
        assert_eq!(fmt_time(t), "2026-01-31T17:00:00.000Z");
        assert!(parse_time("2026-01-31 17:00").is_err());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("VM", "web-01.prod").is_ok());
        for bad in ["", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name("VM", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_parse_with_the_server_limits() {
        use crate::api::parse_body;
        let limit = crate::state::DEFAULT_MAX_BODY_BYTES;
        let code = |r: Result<PolicyJson, ApiError>| r.err().map(|e| e.code);
        assert_eq!(
            code(parse_body(b"{\"ports\": [", limit)),
            Some("InvalidJson")
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": 1}", limit)),
            Some("InvalidBody")
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": [], \"x\": 1}", limit)),
            Some("InvalidBody")
        );
        let big = format!("{{\"ports\": []}}{}", " ".repeat(limit));
        assert_eq!(
            code(parse_body(big.as_bytes(), limit)),
            Some("BodyTooLarge")
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
            if let Ok(j) = parse_body::<PolicyJson>(&data, limit) {
                Policy::from_json(&j).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                policies += 1;
            } else {
                let j: InitiateJson = parse_body(&data, limit).unwrap();
                let ip = std::net::IpAddr::from([203, 0, 113, 7]);
                Initiate::from_json(&j, ip, 1_795_737_600_000)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                requests += 1;
            }
        }
        assert!(policies >= 1 && requests >= 1);
    }
}
