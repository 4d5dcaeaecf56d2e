//! An approval rule, validated, and the pure arithmetic of a request's progress through its
//! rules' stages: which stage is current, who may approve it, when a request is complete.
//! No I/O (unit-tested here; the decisions around it are in [`super::decide`]).

use jitgate_api::{ApprovalRule, ApprovalStage, Approver, ErrorCode, PendingStage, PrincipalId};

use crate::error::{Error, Result};
use crate::input::parse_duration;

/// Default and bounds of `timeout`.
pub const DEFAULT_TIMEOUT_SECS: i64 = 3600;
pub const MIN_TIMEOUT_SECS: i64 = 60;
pub const MAX_TIMEOUT_SECS: i64 = 7 * 24 * 3600;
/// Most stages of a rule (AWS allows five levels), and approvers named in one stage.
pub const MAX_STAGES: usize = 5;
pub const MAX_APPROVERS: usize = 50;
/// Largest `required` (one principal counts once, so more could never complete).
pub const MAX_REQUIRED: u32 = 50;

/// One stage, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub approvers: Vec<Approver>,
    pub required: u32,
}

/// An approval rule, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub auto_up_to_secs: Option<i64>,
    pub stages: Vec<Stage>,
    pub allow_self: bool,
    pub allow_emergency: bool,
    pub timeout_secs: i64,
}

/// Which part of an approval rule a problem is about (stages counted from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleField {
    /// The list of stages (none, or too many).
    Stages,
    /// A stage's approvers.
    Approvers(usize),
    /// A stage's required count.
    Required(usize),
    Timeout,
    AutoApprove,
}

/// A rule an approval rule breaks: where, the refusal's code, and why in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleProblem {
    pub field: RuleField,
    pub code: ErrorCode,
    pub message: String,
}

impl RuleProblem {
    fn new(field: RuleField, code: ErrorCode, message: impl Into<String>) -> RuleProblem {
        RuleProblem {
            field,
            code,
            message: message.into(),
        }
    }

    fn invalid(field: RuleField, message: impl Into<String>) -> RuleProblem {
        RuleProblem::new(field, ErrorCode::InvalidPolicy, message)
    }

    fn from_error(field: RuleField, e: Error) -> RuleProblem {
        match e {
            Error::Refused { code, message } => RuleProblem::new(field, code, message),
            other => RuleProblem::invalid(field, other.to_string()),
        }
    }
}

/// A stage's `required` as typed in a form: a whole number (its bounds are the rule's).
pub fn required_from_text(stage: usize, s: &str) -> Result<u32, RuleProblem> {
    s.trim().parse::<u32>().map_err(|_| {
        RuleProblem::invalid(
            RuleField::Required(stage),
            format!(
                "approval stage {}: required {s:?} is not a whole number (1 to {MAX_REQUIRED})",
                stage + 1
            ),
        )
    })
}

impl Rule {
    /// A rule as stored or sent, validated; the first problem as the refusal.
    pub fn from_body(b: &ApprovalRule) -> Result<Rule> {
        Rule::check(b, false).map_err(|mut p| {
            let first = p.swap_remove(0);
            Error::refused(first.code, first.message)
        })
    }

    /// Every problem of the rule, in the order of its fields. `new`: the rule is about to
    /// be written, so the rules that only new rules must meet apply too (a stage that names
    /// people only, and no group, cannot require more approvals than it names people:
    /// each counts once, so it could never complete). Stored rules are read without them.
    pub fn check(b: &ApprovalRule, new: bool) -> Result<Rule, Vec<RuleProblem>> {
        let mut problems = Vec::new();
        if b.stages.is_empty() {
            problems.push(RuleProblem::invalid(
                RuleField::Stages,
                "approval.stages must list at least one stage",
            ));
        }
        if b.stages.len() > MAX_STAGES {
            problems.push(RuleProblem::invalid(
                RuleField::Stages,
                format!("approval.stages may list at most {MAX_STAGES} stages"),
            ));
        }
        let mut stages = Vec::with_capacity(b.stages.len());
        for (i, s) in b.stages.iter().enumerate().take(MAX_STAGES) {
            let n = i + 1;
            let before = problems.len();
            if s.approvers.is_empty() || s.approvers.len() > MAX_APPROVERS {
                problems.push(RuleProblem::invalid(
                    RuleField::Approvers(i),
                    format!("approval stage {n}: approvers must list 1 to {MAX_APPROVERS} entries"),
                ));
            }
            let mut approvers: Vec<Approver> = Vec::with_capacity(s.approvers.len());
            for a in s.approvers.iter().take(MAX_APPROVERS) {
                match a.parse::<Approver>() {
                    Ok(a) if !approvers.contains(&a) => approvers.push(a),
                    Ok(_) => {}
                    Err(e) => problems.push(RuleProblem::invalid(
                        RuleField::Approvers(i),
                        format!("approval stage {n}: {e}"),
                    )),
                }
            }
            if s.required < 1 || s.required > MAX_REQUIRED {
                problems.push(RuleProblem::invalid(
                    RuleField::Required(i),
                    format!("approval stage {n}: required must be 1 to {MAX_REQUIRED}"),
                ));
            } else if new
                && problems.len() == before
                && !approvers.iter().any(|a| matches!(a, Approver::Group(_)))
                && s.required as usize > approvers.len()
            {
                problems.push(RuleProblem::invalid(
                    RuleField::Required(i),
                    format!(
                        "approval stage {n}: required {} is more than the {} approver(s) named; \
                         a person counts once, so the stage could never complete (name more \
                         approvers, or a group)",
                        s.required,
                        approvers.len()
                    ),
                ));
            }
            stages.push(Stage {
                approvers,
                required: s.required,
            });
        }
        let timeout_secs = match &b.timeout {
            None => DEFAULT_TIMEOUT_SECS,
            Some(t) => match parse_duration(t) {
                Err(e) => {
                    problems.push(RuleProblem::from_error(RuleField::Timeout, e));
                    DEFAULT_TIMEOUT_SECS
                }
                Ok(secs) if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&secs) => {
                    problems.push(RuleProblem::new(
                        RuleField::Timeout,
                        ErrorCode::InvalidDuration,
                        format!("approval.timeout {t} is outside PT1M..P7D"),
                    ));
                    DEFAULT_TIMEOUT_SECS
                }
                Ok(secs) => secs,
            },
        };
        let auto_up_to_secs = match &b.auto_approve_up_to {
            None => None,
            Some(t) => match parse_duration(t) {
                Err(e) => {
                    problems.push(RuleProblem::from_error(RuleField::AutoApprove, e));
                    None
                }
                Ok(secs) if secs <= 0 => {
                    problems.push(RuleProblem::new(
                        RuleField::AutoApprove,
                        ErrorCode::InvalidDuration,
                        "approval.autoApproveUpTo must be positive (omit it to always require \
                         approval)",
                    ));
                    None
                }
                Ok(secs) => Some(secs),
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rule {
            auto_up_to_secs,
            stages,
            allow_self: b.allow_self_approval,
            allow_emergency: b.allow_emergency,
            timeout_secs,
        })
    }

    /// The canonical body (as stored with a policy and fixed on a request).
    pub fn to_body(&self) -> ApprovalRule {
        ApprovalRule {
            auto_approve_up_to: self.auto_up_to_secs.map(jitgate_api::duration::format),
            stages: self
                .stages
                .iter()
                .map(|s| ApprovalStage {
                    approvers: s.approvers.iter().map(|a| a.to_string()).collect(),
                    required: s.required,
                })
                .collect(),
            allow_self_approval: self.allow_self,
            allow_emergency: self.allow_emergency,
            timeout: Some(jitgate_api::duration::format(self.timeout_secs)),
        }
    }
}

/// Who is asking to decide: their principal and the groups it belongs to.
#[derive(Clone, Debug)]
pub struct Who<'a> {
    pub principal: &'a PrincipalId,
    pub groups: &'a [String],
}

impl Who<'_> {
    /// Whether the stage names this principal, directly or through a group.
    pub fn named_in(&self, stage: &Stage) -> bool {
        stage.approvers.iter().any(|a| match a {
            Approver::Principal(p) => p == self.principal,
            Approver::Group(g) => self.groups.iter().any(|x| x == g),
        })
    }
}

/// An approval already counted: by whom, for which rule and stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    pub principal: String,
    pub rule: usize,
    pub stage: usize,
}

/// Where one rule stands: its current stage (None: complete) and who approved that stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleProgress {
    pub current: Option<usize>,
    pub approved_by: Vec<String>,
}

/// Each rule's progress from the approvals counted so far.
pub fn progress(rules: &[Rule], counted: &[Counted]) -> Vec<RuleProgress> {
    rules
        .iter()
        .enumerate()
        .map(|(r, rule)| {
            for (s, stage) in rule.stages.iter().enumerate() {
                let mut by: Vec<String> = counted
                    .iter()
                    .filter(|c| c.rule == r && c.stage == s)
                    .map(|c| c.principal.clone())
                    .collect();
                by.sort();
                by.dedup();
                if (by.len() as u32) < stage.required {
                    return RuleProgress {
                        current: Some(s),
                        approved_by: by,
                    };
                }
            }
            RuleProgress {
                current: None,
                approved_by: Vec::new(),
            }
        })
        .collect()
}

/// What a pending request still needs: the current stage of each incomplete rule.
pub fn pending_stages(rules: &[Rule], counted: &[Counted]) -> Vec<PendingStage> {
    progress(rules, counted)
        .into_iter()
        .zip(rules)
        .filter_map(|(p, rule)| {
            let s = p.current?;
            let stage = &rule.stages[s];
            Some(PendingStage {
                stage: u32::try_from(s + 1).unwrap_or(u32::MAX),
                stages: u32::try_from(rule.stages.len()).unwrap_or(u32::MAX),
                required: stage.required,
                approvers: stage.approvers.iter().map(|a| a.to_string()).collect(),
                approved_by: p.approved_by,
            })
        })
        .collect()
}

/// Whether every rule is complete.
pub fn complete(p: &[RuleProgress]) -> bool {
    p.iter().all(|r| r.current.is_none())
}

/// Why an approval cannot count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotCounted {
    /// The principal already approved this request (one principal counts once).
    AlreadyApproved,
    /// Named only where self-approval is not allowed.
    SelfApproval,
    /// Not named in any rule's current stage.
    NotNamed,
}

/// The (rule, stage) an approval by `who` counts for: the first rule, in order, whose current
/// stage names them (and allows self-approval if they are the requester).
pub fn attribute(
    rules: &[Rule],
    counted: &[Counted],
    who: &Who<'_>,
    requester: &str,
) -> std::result::Result<(usize, usize), NotCounted> {
    let me = who.principal.to_string();
    if counted.iter().any(|c| c.principal == me) {
        return Err(NotCounted::AlreadyApproved);
    }
    let mut self_refused = false;
    for (r, p) in progress(rules, counted).iter().enumerate() {
        let Some(s) = p.current else { continue };
        if !who.named_in(&rules[r].stages[s]) {
            continue;
        }
        if me == requester && !rules[r].allow_self {
            self_refused = true;
            continue;
        }
        return Ok((r, s));
    }
    Err(if self_refused {
        NotCounted::SelfApproval
    } else {
        NotCounted::NotNamed
    })
}

/// Whether `who` is named in some rule's current stage (they may deny).
pub fn named_in_current(rules: &[Rule], counted: &[Counted], who: &Who<'_>) -> bool {
    progress(rules, counted)
        .iter()
        .enumerate()
        .any(|(r, p)| p.current.is_some_and(|s| who.named_in(&rules[r].stages[s])))
}

/// Whether a request whose longest window is `window_secs` is approved by policy: every rule
/// must allow auto-approval up to at least that.
pub fn auto_approved(rules: &[Rule], window_secs: i64) -> bool {
    rules
        .iter()
        .all(|r| r.auto_up_to_secs.is_some_and(|max| window_secs <= max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(stages: &[(&[&str], u32)]) -> Rule {
        Rule::from_body(&ApprovalRule {
            auto_approve_up_to: None,
            stages: stages
                .iter()
                .map(|(a, n)| ApprovalStage {
                    approvers: a.iter().map(|s| s.to_string()).collect(),
                    required: *n,
                })
                .collect(),
            allow_self_approval: false,
            allow_emergency: false,
            timeout: None,
        })
        .unwrap()
    }

    fn tok(n: &str) -> PrincipalId {
        PrincipalId::Token(n.into())
    }

    #[test]
    fn bad_rules_are_refused() {
        let mk = |stages: Vec<ApprovalStage>, timeout: Option<&str>| {
            Rule::from_body(&ApprovalRule {
                auto_approve_up_to: None,
                stages,
                allow_self_approval: false,
                allow_emergency: false,
                timeout: timeout.map(String::from),
            })
        };
        let st = |a: &[&str], n| ApprovalStage {
            approvers: a.iter().map(|s| s.to_string()).collect(),
            required: n,
        };
        assert!(mk(vec![], None).is_err());
        assert!(mk(vec![st(&["token:a"], 0)], None).is_err());
        assert!(mk(vec![st(&[], 1)], None).is_err());
        assert!(mk(vec![st(&["alice"], 1)], None).is_err());
        assert!(mk(vec![st(&["link:x"], 1)], None).is_err());
        assert!(mk(vec![st(&["token:a"], 1)], Some("P8D")).is_err());
        assert!(mk(vec![st(&["token:a"], 1)], Some("PT30S")).is_err());
        // More required than named is allowed (groups can grow).
        let r = mk(vec![st(&["token:a"], 3)], Some("PT2H")).unwrap();
        assert_eq!(r.timeout_secs, 7200);
        assert_eq!(Rule::from_body(&r.to_body()).unwrap(), r);
    }

    #[test]
    fn new_rules_need_enough_people_and_every_problem_is_named() {
        let st = |a: &[&str], n| ApprovalStage {
            approvers: a.iter().map(|s| s.to_string()).collect(),
            required: n,
        };
        let body = |stages, timeout: Option<&str>| ApprovalRule {
            auto_approve_up_to: Some("soon".into()),
            stages,
            allow_self_approval: false,
            allow_emergency: false,
            timeout: timeout.map(String::from),
        };
        // A stored rule that names one person and requires two still reads.
        let two_of_one = body(vec![st(&["token:a", "token:a"], 2)], None);
        assert!(
            Rule::check(&two_of_one, false).is_err(),
            "auto 'soon' is bad"
        );
        let mut ok = two_of_one.clone();
        ok.auto_approve_up_to = None;
        assert!(Rule::check(&ok, false).is_ok());
        let p = Rule::check(&ok, true).unwrap_err();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, RuleField::Required(0));
        assert!(
            p[0].message.contains("more than the 1 approver(s)"),
            "{p:?}"
        );
        // A group can grow: allowed.
        let with_group = body(vec![st(&["group:leads"], 3)], None);
        let mut with_group = with_group;
        with_group.auto_approve_up_to = None;
        assert!(Rule::check(&with_group, true).is_ok());
        // Every problem, each at its field, in the order of the fields.
        let p = Rule::check(
            &body(vec![st(&[], 1), st(&["alice"], 0)], Some("P9D")),
            true,
        )
        .unwrap_err();
        let fields: Vec<RuleField> = p.iter().map(|x| x.field).collect();
        assert_eq!(
            fields,
            [
                RuleField::Approvers(0),
                RuleField::Approvers(1),
                RuleField::Required(1),
                RuleField::Timeout,
                RuleField::AutoApprove
            ]
        );
        assert!(
            Rule::from_body(&body(vec![st(&[], 1)], None))
                .unwrap_err()
                .to_string()
                .ends_with("approval stage 1: approvers must list 1 to 50 entries")
        );
        assert_eq!(required_from_text(1, " 2 "), Ok(2));
        assert_eq!(
            required_from_text(1, "two").unwrap_err().field,
            RuleField::Required(1)
        );
    }

    #[test]
    fn stages_complete_in_order_and_a_principal_counts_once() {
        let rules = vec![rule(&[(&["token:a", "group:leads"], 2), (&["token:m"], 1)])];
        let groups = vec!["leads".to_string()];
        let a = tok("a");
        let who_a = Who {
            principal: &a,
            groups: &groups,
        };
        let mut counted = Vec::new();
        assert_eq!(attribute(&rules, &counted, &who_a, "token:req"), Ok((0, 0)));
        counted.push(Counted {
            principal: "token:a".into(),
            rule: 0,
            stage: 0,
        });
        // Named directly and through a group: still once.
        assert_eq!(
            attribute(&rules, &counted, &who_a, "token:req"),
            Err(NotCounted::AlreadyApproved)
        );
        // The manager is not named in the current stage yet.
        let m = tok("m");
        let who_m = Who {
            principal: &m,
            groups: &[],
        };
        assert_eq!(
            attribute(&rules, &counted, &who_m, "token:req"),
            Err(NotCounted::NotNamed)
        );
        let b = tok("b");
        let who_b = Who {
            principal: &b,
            groups: &groups,
        };
        assert_eq!(attribute(&rules, &counted, &who_b, "token:req"), Ok((0, 0)));
        counted.push(Counted {
            principal: "token:b".into(),
            rule: 0,
            stage: 0,
        });
        assert_eq!(progress(&rules, &counted)[0].current, Some(1));
        assert_eq!(attribute(&rules, &counted, &who_m, "token:req"), Ok((0, 1)));
        counted.push(Counted {
            principal: "token:m".into(),
            rule: 0,
            stage: 1,
        });
        assert!(complete(&progress(&rules, &counted)));
    }

    #[test]
    fn self_approval_and_several_rules() {
        let mut own = rule(&[(&["token:a"], 1)]);
        let rules = vec![own.clone(), rule(&[(&["token:a", "token:b"], 1)])];
        let a = tok("a");
        let who = Who {
            principal: &a,
            groups: &[],
        };
        assert_eq!(
            attribute(&rules, &[], &who, "token:a"),
            Err(NotCounted::SelfApproval)
        );
        own.allow_self = true;
        let rules2 = vec![own, rules[1].clone()];
        assert_eq!(attribute(&rules2, &[], &who, "token:a"), Ok((0, 0)));
        // One approval satisfies one rule only: the other still needs someone else.
        let counted = vec![Counted {
            principal: "token:a".into(),
            rule: 0,
            stage: 0,
        }];
        let p = progress(&rules2, &counted);
        assert_eq!((p[0].current, p[1].current), (None, Some(0)));
        assert!(!complete(&p));
        assert!(named_in_current(&rules2, &counted, &who));
    }

    #[test]
    fn auto_approval_needs_every_rule() {
        let mut r1 = rule(&[(&["token:a"], 1)]);
        r1.auto_up_to_secs = Some(3600);
        let r2 = rule(&[(&["token:a"], 1)]);
        assert!(auto_approved(std::slice::from_ref(&r1), 3600));
        assert!(!auto_approved(std::slice::from_ref(&r1), 3601));
        assert!(!auto_approved(&[r1, r2], 60));
    }
}
