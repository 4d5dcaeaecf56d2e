//! A JIT policy, validated: what may be requested on a VM (its own policy, else its resource
//! group's).

use jitgate_api::{ErrorCode, OnExpiry, PolicyBody, PolicyPort as PolicyPortBody, ProtoSel};
use jitgate_common::{Port, Protocol, SourcePrefix};

use crate::approval::rule::Rule;
use crate::error::{Error, Result};
use crate::input::{parse_duration, parse_port, parse_prefixes, parse_proto_sel, prefixes_json};

/// Shortest and longest `maxRequestAccessDuration` a policy may set (Azure's PT5M..PT24H).
pub const MIN_POLICY_DURATION_SECS: i64 = 5 * 60;
pub const MAX_POLICY_DURATION_SECS: i64 = 24 * 3600;

/// A validated policy port.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyPort {
    pub number: Port,
    pub protocol: ProtoSel,
    pub prefixes: Vec<SourcePrefix>,
    pub max_duration_secs: i64,
    pub on_expiry: OnExpiry,
    /// Who must approve requests for the port; None: approved by policy alone.
    pub approval: Option<Rule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ports: Vec<PolicyPort>,
}

impl Policy {
    pub fn from_body(j: &PolicyBody) -> Result<Policy> {
        if j.ports.is_empty() {
            return Err(Error::refused(
                ErrorCode::InvalidPolicy,
                "a policy needs at least one port (use DELETE to remove a policy)",
            ));
        }
        if j.ports.len() > 256 {
            return Err(Error::refused(
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
                return Err(Error::refused(
                    ErrorCode::InvalidDuration,
                    format!(
                        "maxRequestAccessDuration {} is outside PT5M..PT24H",
                        p.max_request_access_duration
                    ),
                ));
            }
            for q in &ports {
                if q.number == number && q.protocol.expand().iter().any(|x| protocol.covers(*x)) {
                    return Err(Error::refused(
                        ErrorCode::InvalidPolicy,
                        format!(
                            "port {number} is listed twice for the same protocol ({} and {})",
                            q.protocol.as_str(),
                            protocol.as_str()
                        ),
                    ));
                }
            }
            let approval = p
                .approval
                .as_ref()
                .map(Rule::from_body)
                .transpose()
                .map_err(|e| e.context(&format!("port {number}")))?;
            ports.push(PolicyPort {
                number,
                protocol,
                prefixes,
                max_duration_secs: max,
                on_expiry: p.on_expiry,
                approval,
            });
        }
        Ok(Policy { ports })
    }

    pub fn to_body(&self) -> PolicyBody {
        PolicyBody {
            ports: self
                .ports
                .iter()
                .map(|p| {
                    let (one, many) = prefixes_json(&p.prefixes);
                    PolicyPortBody {
                        number: u32::from(p.number.get()),
                        protocol: p.protocol.as_str().into(),
                        allowed_source_address_prefix: one,
                        allowed_source_address_prefixes: many,
                        max_request_access_duration: jitgate_api::duration::format(
                            p.max_duration_secs,
                        ),
                        on_expiry: p.on_expiry,
                        approval: p.approval.as_ref().map(Rule::to_body),
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
