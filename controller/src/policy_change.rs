//! What a policy change does, in words, and whether it weakens protection (the
//! `policy.changed` notification's flag): a port no longer protected, sources widened, longer
//! access, a connection limit raised or removed, or an approval rule relaxed. Pure: two policies in, a verdict out.

use crate::approval::rule::Rule;
use crate::policy::{Policy, PolicyPort};

/// The lines of a change and its verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// One line per difference, in port order.
    pub lines: Vec<String>,
    pub weakens: bool,
}

impl Change {
    fn note(&mut self, weakens: bool, line: String) {
        self.weakens |= weakens;
        self.lines.push(line);
    }
}

fn key(p: &PolicyPort) -> String {
    format!("port {}/{}", p.number, p.protocol.as_str())
}

/// `old` (None: there was none) replaced by `new` (None: deleted).
pub fn compare(old: Option<&Policy>, new: Option<&Policy>) -> Change {
    let mut c = Change::default();
    let empty = Vec::new();
    let old_ports = old.map_or(&empty, |p| &p.ports);
    let new_ports = new.map_or(&empty, |p| &p.ports);
    let same = |a: &PolicyPort, b: &PolicyPort| a.number == b.number && a.protocol == b.protocol;
    for o in old_ports {
        match new_ports.iter().find(|n| same(o, n)) {
            None => c.note(true, format!("{} removed: no longer protected", key(o))),
            Some(n) => port(&mut c, o, n),
        }
    }
    for n in new_ports
        .iter()
        .filter(|n| !old_ports.iter().any(|o| same(o, n)))
    {
        c.note(false, format!("{} added", key(n)));
    }
    if new.is_none() && old.is_some() {
        c.note(true, "policy deleted".into());
    }
    c
}

fn port(c: &mut Change, o: &PolicyPort, n: &PolicyPort) {
    let k = key(o);
    let wider: Vec<String> = n
        .prefixes
        .iter()
        .filter(|np| !o.prefixes.iter().any(|op| op.contains(np)))
        .map(ToString::to_string)
        .collect();
    if !wider.is_empty() {
        c.note(
            true,
            format!("{k}: sources widened to include {}", wider.join(", ")),
        );
    } else if n.prefixes != o.prefixes {
        c.note(false, format!("{k}: sources narrowed"));
    }
    if n.max_duration_secs != o.max_duration_secs {
        c.note(
            n.max_duration_secs > o.max_duration_secs,
            format!(
                "{k}: longest access {} s (was {} s)",
                n.max_duration_secs, o.max_duration_secs
            ),
        );
    }
    if n.on_expiry != o.on_expiry {
        c.note(
            false,
            format!("{k}: on expiry {:?} (was {:?})", n.on_expiry, o.on_expiry),
        );
    }
    if n.max_connections != o.max_connections {
        let words = |m: Option<jitgate_api::MaxConnections>| {
            m.map_or_else(|| "unlimited".to_string(), |m| m.to_string())
        };
        // No limit is looser than any limit; a higher limit is looser than a lower one.
        let looser = match (o.max_connections, n.max_connections) {
            (Some(_), None) => true,
            (Some(a), Some(b)) => b > a,
            _ => false,
        };
        c.note(
            looser,
            format!(
                "{k}: new connections per grant {} (was {})",
                words(n.max_connections),
                words(o.max_connections)
            ),
        );
    }
    match (&o.approval, &n.approval) {
        (Some(_), None) => c.note(true, format!("{k}: approval no longer required")),
        (None, Some(_)) => c.note(false, format!("{k}: approval now required")),
        (Some(a), Some(b)) => rule(c, &k, a, b),
        (None, None) => {}
    }
}

fn rule(c: &mut Change, k: &str, o: &Rule, n: &Rule) {
    match (o.auto_up_to_secs, n.auto_up_to_secs) {
        (a, b) if a == b => {}
        (None, Some(b)) => c.note(true, format!("{k}: approved by policy up to {b} s")),
        (Some(_), None) => c.note(false, format!("{k}: no longer approved by policy")),
        (Some(a), Some(b)) => c.note(
            b > a,
            format!("{k}: approved by policy up to {b} s (was {a} s)"),
        ),
        _ => {}
    }
    if n.allow_self != o.allow_self {
        c.note(
            n.allow_self,
            format!("{k}: self-approval {}", allowed(n.allow_self)),
        );
    }
    if n.allow_emergency != o.allow_emergency {
        c.note(
            n.allow_emergency,
            format!("{k}: emergency approval {}", allowed(n.allow_emergency)),
        );
    }
    let needed = |r: &Rule| r.stages.iter().map(|s| u64::from(s.required)).sum::<u64>();
    if n.stages.len() != o.stages.len() || needed(n) != needed(o) {
        c.note(
            n.stages.len() < o.stages.len() || needed(n) < needed(o),
            format!(
                "{k}: {} stage(s) needing {} approval(s) (was {} needing {})",
                n.stages.len(),
                needed(n),
                o.stages.len(),
                needed(o)
            ),
        );
    }
    // More people who may approve a stage is a weaker rule too.
    for (i, (os, ns)) in o.stages.iter().zip(&n.stages).enumerate() {
        let added: Vec<String> = ns
            .approvers
            .iter()
            .filter(|a| !os.approvers.contains(a))
            .map(ToString::to_string)
            .collect();
        if !added.is_empty() {
            c.note(
                true,
                format!("{k}: stage {} approvers added: {}", i + 1, added.join(", ")),
            );
        } else if ns.approvers != os.approvers {
            c.note(false, format!("{k}: stage {} approvers removed", i + 1));
        }
    }
}

fn allowed(on: bool) -> &'static str {
    if on { "allowed" } else { "no longer allowed" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::PolicyBody;
    use serde_json::json;

    fn policy(ports: serde_json::Value) -> Policy {
        let body: PolicyBody = serde_json::from_value(json!({ "ports": ports })).unwrap();
        Policy::from_body(&body).unwrap()
    }

    fn ssh(prefix: &str, max: &str, approval: Option<serde_json::Value>) -> serde_json::Value {
        let mut p = json!({"number": 22, "protocol": "TCP",
            "allowedSourceAddressPrefix": prefix, "maxRequestAccessDuration": max});
        if let Some(a) = approval {
            p["approval"] = a;
        }
        p
    }

    fn rule(required: u32, approvers: &[&str], auto: Option<&str>) -> serde_json::Value {
        let mut r = json!({"stages": [{"approvers": approvers, "required": required}]});
        if let Some(a) = auto {
            r["autoApproveUpTo"] = json!(a);
        }
        r
    }

    #[test]
    fn weakening_changes_are_flagged() {
        let base = policy(json!([
            ssh("203.0.113.0/24", "PT1H", Some(rule(2, &["token:a", "token:b"], None))),
            {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
             "maxRequestAccessDuration": "PT1H"}
        ]));
        let weaker = [
            // RDP removed: no longer protected.
            policy(json!([ssh(
                "203.0.113.0/24",
                "PT1H",
                Some(rule(2, &["token:a", "token:b"], None))
            )])),
            // Sources widened.
            policy(json!([
                ssh("203.0.113.0/24", "PT1H", Some(rule(2, &["token:a", "token:b"], None))),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
            // Longer access.
            policy(json!([
                ssh("203.0.113.0/24", "PT3H", Some(rule(2, &["token:a", "token:b"], None))),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
            // Fewer approvals, an auto-approval, approval dropped, an approver added.
            policy(json!([
                ssh("203.0.113.0/24", "PT1H", Some(rule(1, &["token:a", "token:b"], None))),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
            policy(json!([
                ssh("203.0.113.0/24", "PT1H", Some(rule(2, &["token:a", "token:b"], Some("PT15M")))),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
            policy(json!([
                ssh("203.0.113.0/24", "PT1H", None),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
            policy(json!([
                ssh("203.0.113.0/24", "PT1H", Some(rule(2, &["token:a", "token:b", "token:m"], None))),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
        ];
        for w in &weaker {
            let c = compare(Some(&base), Some(w));
            assert!(c.weakens, "{c:?}");
            assert!(!c.lines.is_empty());
        }
        assert!(compare(Some(&base), None).weakens);
        assert_eq!(compare(Some(&base), Some(&base)), Change::default());
    }

    #[test]
    fn strengthening_changes_are_not_flagged() {
        let base = policy(json!([ssh("203.0.113.0/24", "PT3H", None)]));
        let stronger = [
            policy(json!([ssh("203.0.113.0/25", "PT3H", None)])),
            policy(json!([ssh("203.0.113.0/24", "PT1H", None)])),
            policy(json!([ssh(
                "203.0.113.0/24",
                "PT3H",
                Some(rule(1, &["token:a"], None))
            )])),
            policy(json!([
                ssh("203.0.113.0/24", "PT3H", None),
                {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                 "maxRequestAccessDuration": "PT1H"}
            ])),
        ];
        for s in &stronger {
            let c = compare(Some(&base), Some(s));
            assert!(!c.weakens, "{c:?}");
            assert!(!c.lines.is_empty(), "{c:?}");
        }
        let first = compare(None, Some(&base));
        assert!(!first.weakens);
        assert_eq!(first.lines, ["port 22/TCP added"]);
    }

    #[test]
    fn a_connection_limit_raised_or_removed_weakens() {
        let limited = |n: Option<u32>| {
            let mut p = ssh("203.0.113.0/24", "PT1H", None);
            if let Some(n) = n {
                p["maxConnections"] = n.into();
            }
            policy(json!([p]))
        };
        for (old, new, weakens, line) in [
            (
                None,
                Some(2),
                false,
                "new connections per grant 2 (was unlimited)",
            ),
            (
                Some(2),
                Some(1),
                false,
                "new connections per grant 1 (was 2)",
            ),
            (
                Some(1),
                Some(2),
                true,
                "new connections per grant 2 (was 1)",
            ),
            (
                Some(1),
                None,
                true,
                "new connections per grant unlimited (was 1)",
            ),
        ] {
            let c = compare(Some(&limited(old)), Some(&limited(new)));
            assert_eq!(c.weakens, weakens, "{old:?} -> {new:?}: {c:?}");
            assert_eq!(c.lines, [format!("port 22/TCP: {line}")]);
        }
        assert!(
            compare(Some(&limited(Some(1))), Some(&limited(Some(1))))
                .lines
                .is_empty()
        );
    }
}
