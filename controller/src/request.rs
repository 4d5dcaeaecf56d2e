//! An access request (Azure's initiate), validated: which ports of which VMs, from where,
//! until when, and why. Checked against the policy later (`eval`).

use jitgate_api::{ErrorCode, InitiateBody, MaxConnections, ProtoSel};
use jitgate_common::{Port, SourcePrefix};

use crate::error::{Error, Result};
use crate::input::{
    parse_duration, parse_port, parse_prefixes, parse_proto_sel, parse_time, validate_name,
};

/// Furthest ahead a port may be booked (its startTimeUtc): the default and the largest value
/// of `max_booking_ahead` in controller.toml (agents refuse bookings further ahead).
pub const MAX_BOOKING_AHEAD_MS: i64 = 7 * 24 * 3600 * 1000;
/// A booked start this little in the past is a clock's skew, taken as "now".
const START_SKEW_MS: i64 = 60 * 1000;

/// Longest justification kept.
pub const MAX_JUSTIFICATION: usize = 1024;

/// A validated request port (before evaluation against the policy).
#[derive(Clone, Debug)]
pub struct RequestedPort {
    pub number: Port,
    /// None: take the policy's.
    pub protocol: Option<ProtoSel>,
    pub prefixes: Vec<SourcePrefix>,
    /// The end: for a duration port, provisional (now + duration) until the window opens.
    pub end_ms: i64,
    /// Given as a duration: the window is this long from when it opens (the approval).
    pub duration_ms: Option<i64>,
    /// A booked start (startTimeUtc); None: opens when approved.
    pub start_ms: Option<i64>,
    /// The connection limit asked for (at most the policy's); None: the policy's.
    pub max_connections: Option<MaxConnections>,
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
    pub fn from_body(j: &InitiateBody, my_ip: std::net::IpAddr, now: i64) -> Result<Initiate> {
        Self::from_body_within(j, my_ip, now, MAX_BOOKING_AHEAD_MS)
    }

    /// [`Initiate::from_body`], with bookings at most `max_ahead_ms` ahead.
    pub fn from_body_within(
        j: &InitiateBody,
        my_ip: std::net::IpAddr,
        now: i64,
        max_ahead_ms: i64,
    ) -> Result<Initiate> {
        let justification = j.justification.trim().to_string();
        if justification.is_empty() {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "a justification is required",
            ));
        }
        if justification.len() > MAX_JUSTIFICATION {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                format!("justification is longer than {MAX_JUSTIFICATION} bytes"),
            ));
        }
        if j.virtual_machines.is_empty() || j.virtual_machines.len() > 32 {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "virtualMachines must list 1 to 32 VMs",
            ));
        }
        let mut vms = Vec::new();
        for vm in &j.virtual_machines {
            validate_name("VM", &vm.id)?;
            if vms.iter().any(|v: &RequestedVm| v.name == vm.id) {
                return Err(Error::refused(
                    ErrorCode::InvalidRequest,
                    format!("VM {} is listed twice", vm.id),
                ));
            }
            if vm.ports.is_empty() || vm.ports.len() > 64 {
                return Err(Error::refused(
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
                let start_ms = match &p.start_time_utc {
                    None => None,
                    Some(t) => {
                        let at = parse_time(t)?;
                        if at < now - START_SKEW_MS {
                            return Err(Error::refused(
                                ErrorCode::InvalidTime,
                                format!("port {number}: startTimeUtc {t} is in the past"),
                            ));
                        }
                        if at > now + max_ahead_ms {
                            return Err(Error::refused(
                                ErrorCode::InvalidTime,
                                format!(
                                    "port {number}: startTimeUtc {t} is more than {} ahead",
                                    jitgate_api::duration::format(max_ahead_ms / 1000)
                                ),
                            ));
                        }
                        Some(at.max(now))
                    }
                };
                let (end_ms, duration_ms) = match (&p.end_time_utc, &p.duration) {
                    (Some(_), Some(_)) => {
                        return Err(Error::refused(
                            ErrorCode::InvalidRequest,
                            "give endTimeUtc or duration, not both",
                        ));
                    }
                    (Some(t), None) => (parse_time(t)?, None),
                    (None, Some(d)) => {
                        let secs = parse_duration(d)?;
                        if secs <= 0 {
                            return Err(Error::refused(
                                ErrorCode::InvalidDuration,
                                "duration must be positive",
                            ));
                        }
                        (start_ms.unwrap_or(now) + secs * 1000, Some(secs * 1000))
                    }
                    (None, None) => {
                        return Err(Error::refused(
                            ErrorCode::InvalidRequest,
                            format!("port {number}: give endTimeUtc or duration"),
                        ));
                    }
                };
                if let Some(start) = start_ms
                    && end_ms <= start
                {
                    return Err(Error::refused(
                        ErrorCode::InvalidTime,
                        format!("port {number}: endTimeUtc is not after startTimeUtc"),
                    ));
                }
                ports.push(RequestedPort {
                    number,
                    protocol,
                    prefixes,
                    end_ms,
                    duration_ms,
                    start_ms,
                    max_connections: p.max_connections,
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
