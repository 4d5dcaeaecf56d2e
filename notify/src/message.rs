//! What a notification says, before any format: one place decides the wording, every
//! renderer decides only the markup.
//!
//! Titles and labels are the crate's own constant text. Every value (names, VM names, ids,
//! justifications, reasons) is dynamic: it is [`text::clean`]ed here and escaped again by each
//! renderer for its format.

use crate::event::{
    Event, EventDetails, PolicyOperation, PortInfo, Principal, RequestInfo, VmRef, is_plain_token,
    utc,
};
use crate::text;

/// How a message should look: colour or style where the format has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Someone should act, or protection dropped.
    Attention,
    /// Access or health was restored.
    Good,
    /// Plain information.
    Info,
}

/// One labelled one-line value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub label: &'static str,
    pub value: String,
}

/// One labelled multi-line value (justification, reasons, findings, changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paragraph {
    pub label: &'static str,
    pub body: String,
}

/// The format-neutral content of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Constant text per event type: safe anywhere, even in an email subject.
    pub title: &'static str,
    pub tone: Tone,
    pub facts: Vec<Fact>,
    pub paragraphs: Vec<Paragraph>,
    /// The CLI command that acts on the event.
    pub command: Option<String>,
    /// The request in the portal.
    pub link: Option<String>,
    /// The title, and the request id when it is a plain token: a one-line fallback and the
    /// email subject (no written text ever goes into it).
    pub summary: String,
}

/// At most this many request VMs are listed; the rest are counted.
const MAX_VMS: usize = 6;
/// Longest single value; longer ones end in `…`.
const MAX_VALUE: usize = 300;
/// Longest paragraph.
const MAX_PARAGRAPH: usize = 1500;

impl Message {
    pub fn of(event: &Event) -> Message {
        let mut m = Builder::default();
        let title = match &event.details {
            EventDetails::RequestPendingApproval {
                request,
                stage,
                approvers,
                approvals_needed,
            } => {
                m.request(request);
                m.fact(
                    "Stage",
                    format!("{stage} ({approvals_needed} more approval(s) needed)"),
                );
                m.fact("Approvers", people(approvers));
                m.justification(request);
                "Approval needed"
            }
            EventDetails::RequestApproved {
                request,
                approved_by,
                emergency,
                reasons,
            } => {
                m.request(request);
                m.fact("Approved by", people(approved_by));
                m.list("Reasons", reasons);
                m.justification(request);
                if *emergency {
                    m.tone = Tone::Attention;
                    "Access request approved in an emergency"
                } else {
                    m.tone = Tone::Good;
                    "Access request approved"
                }
            }
            EventDetails::RequestDenied {
                request,
                denied_by,
                reasons,
            } => {
                m.request(request);
                m.fact(
                    "Denied by",
                    denied_by
                        .as_ref()
                        .map(|p| people(std::slice::from_ref(p)))
                        .unwrap_or_else(|| "policy".to_string()),
                );
                m.list("Reasons", reasons);
                m.justification(request);
                "Access request denied"
            }
            EventDetails::RequestCancelled {
                request,
                cancelled_by,
            } => {
                m.request(request);
                m.fact("Cancelled by", people(std::slice::from_ref(cancelled_by)));
                m.tone = Tone::Info;
                "Access request cancelled"
            }
            EventDetails::RequestApprovalTimedOut { request } => {
                m.request(request);
                m.justification(request);
                m.tone = Tone::Info;
                "Access request timed out waiting for approval"
            }
            EventDetails::AccessApplied { request } => {
                m.request(request);
                m.justification(request);
                m.tone = Tone::Good;
                "Access opened"
            }
            EventDetails::AccessEndingSoon {
                request,
                virtual_machine,
                port,
            } => {
                m.port_window(request, virtual_machine, port);
                m.tone = Tone::Info;
                "Access ends soon"
            }
            EventDetails::AccessEnded {
                request,
                virtual_machine,
                port,
                status_reason,
            } => {
                m.port_window(request, virtual_machine, port);
                m.fact("Reason", status_reason.as_str().to_string());
                m.tone = Tone::Info;
                "Access ended"
            }
            EventDetails::AgentOffline { agent } | EventDetails::AgentBackOnline { agent } => {
                m.vm(&agent.virtual_machine, &agent.resource_group);
                if let Some(t) = agent.last_seen_utc {
                    m.fact("Last seen", utc::format(t));
                }
                if matches!(event.details, EventDetails::AgentOffline { .. }) {
                    "Agent offline"
                } else {
                    m.tone = Tone::Good;
                    "Agent back online"
                }
            }
            EventDetails::ComplianceChanged {
                virtual_machine,
                compliant,
                findings,
            } => {
                m.vm(&virtual_machine.id, &virtual_machine.resource_group);
                m.list("Findings", findings);
                if *compliant {
                    m.tone = Tone::Good;
                    "VM became compliant"
                } else {
                    "VM became non-compliant"
                }
            }
            EventDetails::AccessBreakGlass {
                virtual_machine,
                ports,
                local_user,
                justification,
            } => {
                m.vm(&virtual_machine.id, &virtual_machine.resource_group);
                m.fact("Local user", local_user.clone());
                m.fact(
                    "Ports",
                    ports.iter().map(port_text).collect::<Vec<_>>().join("; "),
                );
                m.paragraph("Justification", justification);
                "Break-glass access on a host"
            }
            EventDetails::PolicyChanged {
                scope,
                operation,
                changed_by,
                weakens_protection,
                changes,
            } => {
                m.fact(
                    "Scope",
                    match &scope.virtual_machine {
                        Some(vm) => format!("VM {vm} ({})", scope.resource_group),
                        None => format!("resource group {}", scope.resource_group),
                    },
                );
                m.fact(
                    "Operation",
                    match operation {
                        PolicyOperation::Update => "Update JIT Network Access Policy",
                        PolicyOperation::Delete => "Delete JIT Network Access Policy",
                    }
                    .to_string(),
                );
                m.fact("Changed by", people(std::slice::from_ref(changed_by)));
                m.fact(
                    "Weakens protection",
                    if *weakens_protection { "yes" } else { "no" }.to_string(),
                );
                m.list("Changes", changes);
                if *weakens_protection {
                    "JIT policy weakened"
                } else {
                    m.tone = Tone::Info;
                    "JIT policy changed"
                }
            }
        };
        let request_id = event.request().map(|r| r.id.as_str());
        let summary = match request_id.filter(|id| is_plain_token(id)) {
            Some(id) => format!("{title} (request {id})"),
            None => title.to_string(),
        };
        Message {
            title,
            tone: m.tone,
            facts: m.facts,
            paragraphs: m.paragraphs,
            command: event.links.cli.as_deref().map(text::one_line),
            link: event.links.request.clone(),
            summary,
        }
    }
}

struct Builder {
    tone: Tone,
    facts: Vec<Fact>,
    paragraphs: Vec<Paragraph>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            tone: Tone::Attention,
            facts: Vec::new(),
            paragraphs: Vec::new(),
        }
    }
}

impl Builder {
    fn fact(&mut self, label: &'static str, value: String) {
        let value = text::truncate(&text::one_line(&value), MAX_VALUE);
        self.facts.push(Fact { label, value });
    }

    fn paragraph(&mut self, label: &'static str, body: &str) {
        let body = text::truncate(text::clean(body).trim(), MAX_PARAGRAPH);
        if !body.is_empty() {
            self.paragraphs.push(Paragraph { label, body });
        }
    }

    fn list(&mut self, label: &'static str, items: &[String]) {
        let body = items
            .iter()
            .map(|i| format!("- {}", text::one_line(i)))
            .collect::<Vec<_>>()
            .join("\n");
        self.paragraph(label, &body);
    }

    fn request(&mut self, r: &RequestInfo) {
        self.fact("Request", r.id.clone());
        self.fact("Requester", people(std::slice::from_ref(&r.requestor)));
        self.fact("Status", r.status.as_str().to_string());
        for vm in r.virtual_machines.iter().take(MAX_VMS) {
            let ports = vm.ports.iter().map(port_text).collect::<Vec<_>>();
            self.fact(
                "Access",
                format!("{} ({}): {}", vm.id, vm.resource_group, ports.join("; ")),
            );
        }
        if r.virtual_machines.len() > MAX_VMS {
            self.fact(
                "More",
                format!("{} more VM(s)", r.virtual_machines.len() - MAX_VMS),
            );
        }
    }

    fn vm(&mut self, name: &str, resource_group: &str) {
        self.fact("VM", format!("{name} ({resource_group})"));
    }

    /// One port of a request: its window starting or ending.
    fn port_window(&mut self, r: &RequestInfo, vm: &VmRef, port: &PortInfo) {
        self.fact("Request", r.id.clone());
        self.fact("Requester", people(std::slice::from_ref(&r.requestor)));
        self.fact(
            "Port",
            format!("{} on {} ({})", port_text(port), vm.id, vm.resource_group),
        );
    }

    fn justification(&mut self, r: &RequestInfo) {
        self.paragraph("Justification", &r.justification);
    }
}

/// `Alice (token:alice), group:sec-leads`.
fn people(ps: &[Principal]) -> String {
    ps.iter()
        .map(|p| match &p.display_name {
            Some(name) => format!("{name} ({})", p.id),
            None => p.id.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `22/TCP from 203.0.113.7 until 2027-01-15T09:00:00.000Z, at most 1 new connection`.
fn port_text(p: &PortInfo) -> String {
    let mut s = format!("{}/{}", p.number, p.protocol.as_str());
    if !p.allowed_source_address_prefixes.is_empty() {
        s.push_str(" from ");
        s.push_str(&p.allowed_source_address_prefixes.join(", "));
    }
    if let Some(end) = p.end_time_utc {
        s.push_str(" until ");
        s.push_str(&utc::format(end));
    }
    if let Some(m) = p.max_connections {
        let plural = if m.get() == 1 { "" } else { "s" };
        s.push_str(&format!(", at most {m} new connection{plural}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use time::OffsetDateTime;

    #[test]
    fn a_port_says_its_connection_limit() {
        let mut p = PortInfo {
            number: 22,
            protocol: crate::event::Protocol::Tcp,
            allowed_source_address_prefixes: vec!["203.0.113.7".into()],
            end_time_utc: None,
            max_connections: None,
        };
        assert_eq!(port_text(&p), "22/TCP from 203.0.113.7");
        p.max_connections = jitgate_api::MaxConnections::new(1);
        assert_eq!(
            port_text(&p),
            "22/TCP from 203.0.113.7, at most 1 new connection"
        );
        p.max_connections = jitgate_api::MaxConnections::new(3);
        assert!(port_text(&p).ends_with("at most 3 new connections"));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["maxConnections"], 3, "{json}");
    }

    #[test]
    fn every_type_has_a_constant_title_and_no_written_text_in_it() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        for e in crate::examples::all("WRITTEN\r\nBcc: x", now, None) {
            let m = Message::of(&e);
            assert!(!m.title.contains("WRITTEN"), "{:?}", e.event_type());
            assert!(!m.summary.contains("WRITTEN"));
            for f in &m.facts {
                assert!(!f.value.contains('\n') && !f.value.contains('\r'), "{f:?}");
            }
            for p in &m.paragraphs {
                assert!(!p.body.contains('\r'), "{p:?}");
            }
        }
        let e = crate::examples::sample(EventType::PolicyChanged, "x", now, None);
        assert_eq!(Message::of(&e).title, "JIT policy weakened");
    }
}
