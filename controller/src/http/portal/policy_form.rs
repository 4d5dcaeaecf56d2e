//! The policy editor's form: its fields as typed (ports, each with its approval stages),
//! read from a stored policy or a post, turned into the API's body, and the library's
//! problems placed next to the fields they concern. No rule of a policy is checked here:
//! the form only turns text into the body's types (a port number and a stage's required
//! count into numbers, the sources into a list), with the library's own words when it
//! cannot, and [`crate::policy::Policy::check_new`] judges the rest.

use jitgate_api::{ApprovalRule, ApprovalStage, MaxConnections, OnExpiry, PolicyBody, PolicyPort};

use crate::approval::rule::{RuleField, required_from_text};
use crate::error::Error;
use crate::input::port_from_text;
use crate::policy::{Field, MAX_PORTS, Problem};

/// Most ports and stages a form may carry (more than the library accepts, so that its
/// own refusal is what the person reads; a bound on the work of one post).
const MAX_FORM_PORTS: usize = MAX_PORTS + 1;
const MAX_FORM_STAGES: usize = 10;

/// A field of the form: its id (also its name), value as typed, and its error in words.
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub id: String,
    pub value: String,
    pub error: String,
    /// The first field with an error (focused when the page opens).
    pub focus: bool,
}

impl Input {
    fn new(id: String, value: impl Into<String>) -> Input {
        Input {
            id,
            value: value.into(),
            ..Input::default()
        }
    }
}

#[derive(Clone, Debug)]
pub struct StageForm {
    /// 1-based, as shown.
    pub n: usize,
    pub approvers: Input,
    pub required: Input,
}

#[derive(Clone, Debug)]
pub struct PortForm {
    /// 1-based, as shown.
    pub n: usize,
    pub number: Input,
    pub protocol: Input,
    pub sources: Input,
    pub max: Input,
    /// `keep` or `cut`.
    pub expiry: Input,
    /// The most new connections per grant; empty: unlimited.
    pub connections: Input,
    pub approval: bool,
    /// Where problems of the approval rule as a whole go (its id is the checkbox's).
    pub rule: Input,
    pub auto: Input,
    pub timeout: Input,
    pub allow_self: bool,
    pub emergency: bool,
    pub stages: Vec<StageForm>,
}

/// A problem in the summary at the top: its words and the field it links to.
#[derive(Clone, Debug)]
pub struct Summary {
    pub href: String,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct PolicyForm {
    pub ports: Vec<PortForm>,
    /// Every problem, in the order of the fields (the summary at the top).
    pub summary: Vec<Summary>,
}

fn id(i: usize, part: &str) -> String {
    format!("p{i}-{part}")
}

fn stage_id(i: usize, j: usize, part: &str) -> String {
    format!("p{i}-s{j}-{part}")
}

fn stage(i: usize, j: usize, approvers: String, required: String) -> StageForm {
    StageForm {
        n: j + 1,
        approvers: Input::new(stage_id(i, j, "approvers"), approvers),
        required: Input::new(stage_id(i, j, "required"), required),
    }
}

/// A port as typed; `approval`: the rule's fields (None: no approval, one blank stage shown).
fn port(i: usize, p: &PolicyPort) -> PortForm {
    let sources = p
        .allowed_source_address_prefixes
        .clone()
        .or_else(|| p.allowed_source_address_prefix.clone().map(|s| vec![s]))
        .unwrap_or_default()
        .join("\n");
    let rule = p.approval.as_ref();
    let stages = match rule {
        Some(r) if !r.stages.is_empty() => r
            .stages
            .iter()
            .enumerate()
            .map(|(j, s)| stage(i, j, s.approvers.join("\n"), s.required.to_string()))
            .collect(),
        _ => vec![stage(i, 0, String::new(), "1".into())],
    };
    PortForm {
        n: i + 1,
        number: Input::new(
            id(i, "number"),
            if p.number == 0 {
                String::new()
            } else {
                p.number.to_string()
            },
        ),
        protocol: Input::new(id(i, "protocol"), p.protocol.clone()),
        sources: Input::new(id(i, "sources"), sources),
        max: Input::new(id(i, "max"), p.max_request_access_duration.clone()),
        expiry: Input::new(id(i, "expiry"), p.on_expiry.as_str()),
        connections: Input::new(
            id(i, "connections"),
            p.max_connections.map(|m| m.to_string()).unwrap_or_default(),
        ),
        approval: rule.is_some(),
        rule: Input::new(id(i, "approval"), ""),
        auto: Input::new(
            id(i, "auto"),
            rule.and_then(|r| r.auto_approve_up_to.clone())
                .unwrap_or_default(),
        ),
        timeout: Input::new(
            id(i, "timeout"),
            rule.and_then(|r| r.timeout.clone()).unwrap_or_default(),
        ),
        allow_self: rule.is_some_and(|r| r.allow_self_approval),
        emergency: rule.is_some_and(|r| r.allow_emergency),
        stages,
    }
}

/// A new port's row: TCP, up to three hours, kept open at the end, no approval.
fn blank_port(i: usize) -> PortForm {
    port(
        i,
        &PolicyPort {
            number: 0,
            protocol: "TCP".into(),
            allowed_source_address_prefix: None,
            allowed_source_address_prefixes: None,
            max_request_access_duration: "PT3H".into(),
            on_expiry: OnExpiry::Keep,
            max_connections: None,
            approval: None,
        },
    )
}

/// A count the form carries (`ports`, `pI-stages`): absent is 0, more than `max` refused.
fn count(fields: &[(String, String)], name: &str, max: usize) -> Result<usize, String> {
    let v = fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .unwrap_or("0");
    match v.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!(
            "the form's {name} is not a count up to {max}: reload the page"
        )),
    }
}

impl PolicyForm {
    /// The form of a stored policy; a blank port when there is none.
    pub fn of_body(body: Option<&PolicyBody>) -> PolicyForm {
        let ports = match body {
            Some(b) if !b.ports.is_empty() => b
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| port(i, p))
                .collect(),
            _ => vec![blank_port(0)],
        };
        PolicyForm {
            ports,
            summary: Vec::new(),
        }
    }

    /// The form as posted (`ports`, and each port's `p{i}-stages`, say how many there are).
    pub fn of_fields(fields: &[(String, String)]) -> Result<PolicyForm, String> {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let on = |name: &str| fields.iter().any(|(k, _)| k == name);
        let mut ports = Vec::new();
        for i in 0..count(fields, "ports", MAX_FORM_PORTS)? {
            let stages = (0..count(fields, &id(i, "stages"), MAX_FORM_STAGES)?)
                .map(|j| {
                    stage(
                        i,
                        j,
                        get(&stage_id(i, j, "approvers")),
                        get(&stage_id(i, j, "required")),
                    )
                })
                .collect();
            let text = |part: &str| Input::new(id(i, part), get(&id(i, part)));
            ports.push(PortForm {
                n: i + 1,
                number: text("number"),
                protocol: text("protocol"),
                sources: text("sources"),
                max: text("max"),
                expiry: text("expiry"),
                connections: text("connections"),
                approval: on(&id(i, "approval")),
                rule: Input::new(id(i, "approval"), ""),
                auto: text("auto"),
                timeout: text("timeout"),
                allow_self: on(&id(i, "self")),
                emergency: on(&id(i, "emergency")),
                stages,
            });
        }
        Ok(PolicyForm {
            ports,
            summary: Vec::new(),
        })
    }

    /// A button that changes the form's shape: `add-port`, `remove-port-I`, `add-stage-I`,
    /// `remove-stage-I-J`. False if `action` is none of them.
    pub fn reshape(&mut self, action: &str) -> bool {
        let nums =
            |rest: &str| -> Vec<usize> { rest.split('-').filter_map(|n| n.parse().ok()).collect() };
        if action == "add-port" {
            if self.ports.len() < MAX_FORM_PORTS {
                self.ports.push(blank_port(self.ports.len()));
            }
        } else if let Some(rest) = action.strip_prefix("remove-port-") {
            if let [i] = nums(rest)[..]
                && i < self.ports.len()
            {
                self.ports.remove(i);
            }
        } else if let Some(rest) = action.strip_prefix("add-stage-") {
            if let [i] = nums(rest)[..]
                && let Some(p) = self.ports.get_mut(i)
                && p.stages.len() < MAX_FORM_STAGES
            {
                let j = p.stages.len();
                p.stages.push(stage(i, j, String::new(), "1".into()));
            }
        } else if let Some(rest) = action.strip_prefix("remove-stage-") {
            if let [i, j] = nums(rest)[..]
                && let Some(p) = self.ports.get_mut(i)
                && j < p.stages.len()
            {
                p.stages.remove(j);
            }
        } else {
            return false;
        }
        self.renumber();
        true
    }

    /// Ids and numbers after a row was added or removed.
    fn renumber(&mut self) {
        for (i, p) in self.ports.iter_mut().enumerate() {
            p.n = i + 1;
            for (part, f) in [
                ("number", &mut p.number),
                ("protocol", &mut p.protocol),
                ("sources", &mut p.sources),
                ("max", &mut p.max),
                ("expiry", &mut p.expiry),
                ("connections", &mut p.connections),
                ("approval", &mut p.rule),
                ("auto", &mut p.auto),
                ("timeout", &mut p.timeout),
            ] {
                f.id = id(i, part);
            }
            for (j, s) in p.stages.iter_mut().enumerate() {
                s.n = j + 1;
                s.approvers.id = stage_id(i, j, "approvers");
                s.required.id = stage_id(i, j, "required");
            }
        }
    }

    /// The API's body of the form, or the problems of turning its text into the body's
    /// types (each at its field, in the library's words).
    pub fn to_body(&self) -> Result<PolicyBody, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut ports = Vec::with_capacity(self.ports.len());
        for (i, p) in self.ports.iter().enumerate() {
            let number = port_from_text(&p.number.value)
                .map_err(|e| problems.push(Problem::new(Some(i), Field::Number, e)))
                .unwrap_or(0);
            let on_expiry = p.expiry.value.parse::<OnExpiry>().unwrap_or_else(|_| {
                problems.push(Problem::new(
                    Some(i),
                    Field::Ports,
                    Error::refused(
                        jitgate_api::ErrorCode::InvalidPolicy,
                        format!("port {}: at the end of access, keep or cut", p.n),
                    ),
                ));
                OnExpiry::Keep
            });
            let connections = p.connections.value.trim();
            let max_connections = if connections.is_empty() {
                None
            } else {
                connections
                    .parse::<MaxConnections>()
                    .map_err(|e| {
                        problems.push(Problem::new(
                            Some(i),
                            Field::MaxConnections,
                            Error::refused(
                                jitgate_api::ErrorCode::InvalidPolicy,
                                format!("port {}: {e} (or empty: unlimited)", p.n),
                            ),
                        ))
                    })
                    .ok()
            };
            let mut sources: Vec<String> = p
                .sources
                .value
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let (one, many) = match sources.len() {
                0 => (None, None),
                1 => (sources.pop(), None),
                _ => (None, Some(sources)),
            };
            let approval = p.approval.then(|| ApprovalRule {
                auto_approve_up_to: some(&p.auto.value),
                stages: p
                    .stages
                    .iter()
                    .enumerate()
                    .map(|(j, s)| ApprovalStage {
                        approvers: s
                            .approvers
                            .value
                            .split(|c: char| c.is_whitespace() || c == ',')
                            .filter(|a| !a.is_empty())
                            .map(String::from)
                            .collect(),
                        required: if s.required.value.trim().is_empty() {
                            1
                        } else {
                            required_from_text(j, &s.required.value).unwrap_or_else(|r| {
                                problems.push(Problem {
                                    port: Some(i),
                                    field: Field::Approval(r.field),
                                    code: r.code,
                                    message: format!(
                                        "port {}: {}",
                                        p.number.value.trim(),
                                        r.message
                                    ),
                                });
                                1
                            })
                        },
                    })
                    .collect(),
                allow_self_approval: p.allow_self,
                allow_emergency: p.emergency,
                timeout: some(&p.timeout.value),
            });
            ports.push(PolicyPort {
                number,
                protocol: p.protocol.value.trim().to_string(),
                allowed_source_address_prefix: one,
                allowed_source_address_prefixes: many,
                max_request_access_duration: p.max.value.trim().to_string(),
                on_expiry,
                max_connections,
                approval,
            });
        }
        if problems.is_empty() {
            Ok(PolicyBody { ports })
        } else {
            Err(problems)
        }
    }

    /// Each problem next to its field (and in the summary at the top); the first field
    /// with one is focused.
    pub fn place(&mut self, problems: Vec<Problem>) {
        for pr in problems {
            let field = pr.port.and_then(|i| self.ports.get_mut(i)).and_then(|p| {
                Some(match pr.field {
                    Field::Ports => return None,
                    Field::Number => &mut p.number,
                    Field::Protocol => &mut p.protocol,
                    Field::Sources => &mut p.sources,
                    Field::MaxDuration => &mut p.max,
                    Field::MaxConnections => &mut p.connections,
                    Field::Approval(RuleField::Stages) => &mut p.rule,
                    Field::Approval(RuleField::Timeout) => &mut p.timeout,
                    Field::Approval(RuleField::AutoApprove) => &mut p.auto,
                    Field::Approval(RuleField::Approvers(j)) => &mut p.stages.get_mut(j)?.approvers,
                    Field::Approval(RuleField::Required(j)) => &mut p.stages.get_mut(j)?.required,
                })
            });
            let href = match field {
                Some(f) => {
                    if !f.error.is_empty() {
                        f.error.push(' ');
                    }
                    f.error.push_str(&pr.message);
                    format!("#{}", f.id)
                }
                None => "#ports".to_string(),
            };
            self.summary.push(Summary {
                href,
                text: pr.message,
            });
        }
        let first = self
            .summary
            .first()
            .map(|s| s.href.trim_start_matches('#').to_string());
        if let Some(first) = first {
            for p in &mut self.ports {
                for f in [
                    &mut p.number,
                    &mut p.protocol,
                    &mut p.sources,
                    &mut p.max,
                    &mut p.connections,
                    &mut p.rule,
                    &mut p.auto,
                    &mut p.timeout,
                ]
                .into_iter()
                .chain(
                    p.stages
                        .iter_mut()
                        .flat_map(|s| [&mut s.approvers, &mut s.required]),
                ) {
                    f.focus = f.id == first;
                }
            }
        }
    }
}

/// A text field's value, trimmed; None when empty.
fn some(v: &str) -> Option<String> {
    Some(v.trim().to_string()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_stored_policy_reads_back_the_same() {
        let body: PolicyBody = serde_json::from_value(serde_json::json!({"ports": [
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefixes":
                ["198.51.100.0/24", "203.0.113.0/24"], "maxRequestAccessDuration": "PT2H",
             "onExpiry": "cut", "approval": {"stages": [
                {"approvers": ["token:a", "group:leads"], "required": 2}], "timeout": "PT30M",
                "allowEmergency": true}},
            {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": "203.0.113.0/24",
             "maxRequestAccessDuration": "PT1H"}]}))
        .unwrap();
        let form = PolicyForm::of_body(Some(&body));
        let mut posted = vec![("ports".to_string(), "2".to_string())];
        for p in &form.ports {
            let i = p.n - 1;
            for f in [
                &p.number,
                &p.protocol,
                &p.sources,
                &p.max,
                &p.expiry,
                &p.auto,
                &p.timeout,
            ] {
                posted.push((f.id.clone(), f.value.clone()));
            }
            if p.approval {
                posted.push((id(i, "approval"), "on".into()));
            }
            if p.emergency {
                posted.push((id(i, "emergency"), "on".into()));
            }
            posted.push((id(i, "stages"), p.stages.len().to_string()));
            for s in &p.stages {
                posted.push((s.approvers.id.clone(), s.approvers.value.clone()));
                posted.push((s.required.id.clone(), s.required.value.clone()));
            }
        }
        let again = PolicyForm::of_fields(&posted).unwrap().to_body().unwrap();
        assert_eq!(
            Policy::check_new(&again).unwrap(),
            Policy::check_new(&body).unwrap()
        );
    }

    #[test]
    fn problems_land_next_to_their_fields() {
        let mut form = PolicyForm::of_fields(&fields(&[
            ("ports", "2"),
            ("p0-number", "ssh"),
            ("p0-protocol", "TCP"),
            ("p0-sources", "*"),
            ("p0-max", "PT1H"),
            ("p0-expiry", "keep"),
            ("p1-number", "3389"),
            ("p1-protocol", "TCP"),
            ("p1-sources", "10.0.0.0/33"),
            ("p1-max", "PT25H"),
            ("p1-expiry", "cut"),
            ("p1-approval", "on"),
            ("p1-stages", "2"),
            ("p1-s0-approvers", "token:a"),
            ("p1-s0-required", "2"),
            ("p1-s1-approvers", ""),
            ("p1-s1-required", "1"),
        ]))
        .unwrap();
        let problems = form.to_body().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        form.place(problems);
        assert!(form.ports[0].number.error.contains("\"ssh\" is invalid"));
        assert!(form.ports[0].number.focus);
        form.ports[0].number.value = "22".into();
        form.ports[0].number.error.clear();
        form.summary.clear();
        let body = form.to_body().unwrap();
        let Err(invalid) = Policy::check_new(&body) else {
            panic!("valid")
        };
        form.place(invalid.0);
        let p = &form.ports[1];
        assert!(p.sources.error.contains("10.0.0.0/33"), "{p:?}");
        assert!(p.max.error.contains("outside PT5M..PT24H"), "{p:?}");
        assert!(
            p.stages[0].required.error.contains("more than the 1"),
            "{p:?}"
        );
        assert!(p.stages[1].approvers.error.contains("1 to 50"), "{p:?}");
        assert_eq!(form.summary.len(), 4, "{:?}", form.summary);
        assert_eq!(form.summary[0].href, "#p1-sources");
        assert!(p.sources.focus && !p.max.focus);
    }

    #[test]
    fn rows_are_added_and_removed_with_their_ids() {
        let mut form = PolicyForm::of_body(None);
        assert!(form.reshape("add-port"));
        assert!(form.reshape("add-stage-1"));
        assert_eq!(form.ports[1].stages[1].approvers.id, "p1-s1-approvers");
        assert!(form.reshape("remove-port-0"));
        assert_eq!(form.ports.len(), 1);
        assert_eq!(form.ports[0].number.id, "p0-number");
        assert_eq!(form.ports[0].stages[1].required.id, "p0-s1-required");
        assert!(form.reshape("remove-stage-0-0"));
        assert_eq!(form.ports[0].stages.len(), 1);
        assert!(!form.reshape("preview"));
        assert!(form.reshape("remove-port-9"));
        assert_eq!(form.ports.len(), 1);
    }
}
