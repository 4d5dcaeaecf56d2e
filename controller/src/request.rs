//! An access request (Azure's initiate), validated: which ports of which VMs, from where,
//! until when, and why. Checked against the policy later (`eval`).

use jitgate_api::{ErrorCode, InitiateBody, ProtoSel};
use jitgate_common::{Port, SourcePrefix};

use crate::error::{Error, Result};
use crate::input::{
    parse_duration, parse_port, parse_prefixes, parse_proto_sel, parse_time, validate_name,
};

/// Longest justification kept.
pub const MAX_JUSTIFICATION: usize = 1024;

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
    pub fn from_body(j: &InitiateBody, my_ip: std::net::IpAddr, now: i64) -> Result<Initiate> {
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
                let end_ms = match (&p.end_time_utc, &p.duration) {
                    (Some(_), Some(_)) => {
                        return Err(Error::refused(
                            ErrorCode::InvalidRequest,
                            "give endTimeUtc or duration, not both",
                        ));
                    }
                    (Some(t), None) => parse_time(t)?,
                    (None, Some(d)) => {
                        let secs = parse_duration(d)?;
                        if secs <= 0 {
                            return Err(Error::refused(
                                ErrorCode::InvalidDuration,
                                "duration must be positive",
                            ));
                        }
                        now + secs * 1000
                    }
                    (None, None) => {
                        return Err(Error::refused(
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
