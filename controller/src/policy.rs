//! A JIT policy, validated: what may be requested on a VM (its own policy, else its resource
//! group's).

use jitgate_api::{
    ErrorCode, MaxConnections, OnExpiry, PolicyBody, PolicyPort as PolicyPortBody, ProtoSel,
};
use jitgate_common::{Port, Protocol, SourcePrefix};

use crate::approval::rule::{Rule, RuleField};
use crate::error::{Error, Result};
use crate::input::{parse_duration, parse_port, parse_prefixes, parse_proto_sel, prefixes_json};

/// Shortest and longest `maxRequestAccessDuration` a policy may set (Azure's PT5M..PT24H).
pub const MIN_POLICY_DURATION_SECS: i64 = 5 * 60;
pub const MAX_POLICY_DURATION_SECS: i64 = 24 * 3600;
/// Most ports of a policy.
pub const MAX_PORTS: usize = 256;

/// A validated policy port.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyPort {
    pub number: Port,
    pub protocol: ProtoSel,
    pub prefixes: Vec<SourcePrefix>,
    pub max_duration_secs: i64,
    pub on_expiry: OnExpiry,
    /// The most new connections a grant of the port may admit, and the limit of a request
    /// that names none; None: unlimited.
    pub max_connections: Option<MaxConnections>,
    /// Who must approve requests for the port; None: approved by policy alone.
    pub approval: Option<Rule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub ports: Vec<PolicyPort>,
}

/// Which field of a policy a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The list of ports (none, or too many).
    Ports,
    Number,
    Protocol,
    Sources,
    MaxDuration,
    /// `maxConnections`.
    MaxConnections,
    /// A part of the port's approval rule.
    Approval(RuleField),
}

/// A rule a policy breaks: the port (its index in the body; None: the policy as a whole),
/// the field, the refusal's code, and why in words (as the API says it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub port: Option<usize>,
    pub field: Field,
    pub code: ErrorCode,
    pub message: String,
}

impl Problem {
    pub fn new(port: Option<usize>, field: Field, e: Error) -> Problem {
        let (code, message) = match e {
            Error::Refused { code, message } => (code, message),
            other => (ErrorCode::InvalidPolicy, other.to_string()),
        };
        Problem {
            port,
            field,
            code,
            message,
        }
    }
}

/// Every problem of a policy that does not validate, in the order of its fields (never
/// empty). The API refuses with the first; the portal shows each next to its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.first().map_or("invalid policy", |p| p.message.as_str()))]
pub struct Invalid(pub Vec<Problem>);

impl From<Invalid> for Error {
    fn from(mut e: Invalid) -> Error {
        if e.0.is_empty() {
            return Error::refused(ErrorCode::InvalidPolicy, "invalid policy");
        }
        let first = e.0.swap_remove(0);
        Error::refused(first.code, first.message)
    }
}

impl Policy {
    /// A policy as stored or sent, validated (the first problem as the refusal).
    pub fn from_body(j: &PolicyBody) -> Result<Policy> {
        Ok(Policy::check(j, false)?)
    }

    /// A policy about to be written: every rule of [`Policy::from_body`] and those only new
    /// policies must meet (see [`Rule::check`]); every problem, each with its field.
    pub fn check_new(j: &PolicyBody) -> Result<Policy, Invalid> {
        Policy::check(j, true)
    }

    fn check(j: &PolicyBody, new: bool) -> Result<Policy, Invalid> {
        let mut problems = Vec::new();
        let whole = |m: &str| {
            Problem::new(
                None,
                Field::Ports,
                Error::refused(ErrorCode::InvalidPolicy, m),
            )
        };
        if j.ports.is_empty() {
            problems.push(whole(
                "a policy needs at least one port (use DELETE to remove a policy)",
            ));
        }
        if j.ports.len() > MAX_PORTS {
            problems.push(whole("a policy may have at most 256 ports"));
        }
        let mut ports: Vec<PolicyPort> = Vec::new();
        for (i, p) in j.ports.iter().enumerate().take(MAX_PORTS) {
            let at = |field: Field, e: Error| Problem::new(Some(i), field, e);
            let number = parse_port(p.number).map_err(|e| problems.push(at(Field::Number, e)));
            let protocol =
                parse_proto_sel(&p.protocol).map_err(|e| problems.push(at(Field::Protocol, e)));
            let prefixes = parse_prefixes(
                &p.allowed_source_address_prefix,
                &p.allowed_source_address_prefixes,
                true,
            )
            .map_err(|e| problems.push(at(Field::Sources, e)));
            let max = parse_duration(&p.max_request_access_duration)
                .and_then(|max| {
                    if (MIN_POLICY_DURATION_SECS..=MAX_POLICY_DURATION_SECS).contains(&max) {
                        Ok(max)
                    } else {
                        Err(Error::refused(
                            ErrorCode::InvalidDuration,
                            format!(
                                "maxRequestAccessDuration {} is outside PT5M..PT24H",
                                p.max_request_access_duration
                            ),
                        ))
                    }
                })
                .map_err(|e| problems.push(at(Field::MaxDuration, e)));
            if let (Ok(number), Ok(protocol)) = (number, protocol)
                && let Some(q) = ports.iter().find(|q| {
                    q.number == number && q.protocol.expand().iter().any(|x| protocol.covers(*x))
                })
            {
                problems.push(at(
                    Field::Number,
                    Error::refused(
                        ErrorCode::InvalidPolicy,
                        format!(
                            "port {number} is listed twice for the same protocol ({} and {})",
                            q.protocol.as_str(),
                            protocol.as_str()
                        ),
                    ),
                ));
            }
            let approval = match p.approval.as_ref().map(|r| Rule::check(r, new)).transpose() {
                Ok(a) => Ok(a),
                Err(found) => {
                    for r in found {
                        problems.push(Problem {
                            port: Some(i),
                            field: Field::Approval(r.field),
                            code: r.code,
                            message: format!("port {}: {}", p.number, r.message),
                        });
                    }
                    Err(())
                }
            };
            if let (Ok(number), Ok(protocol), Ok(prefixes), Ok(max), Ok(approval)) =
                (number, protocol, prefixes, max, approval)
            {
                ports.push(PolicyPort {
                    number,
                    protocol,
                    prefixes,
                    max_duration_secs: max,
                    on_expiry: p.on_expiry,
                    max_connections: p.max_connections,
                    approval,
                });
            }
        }
        if !problems.is_empty() {
            return Err(Invalid(problems));
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
                        max_connections: p.max_connections,
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
