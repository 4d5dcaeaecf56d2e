//! What the agents saw, at the controller: each VM's connection history ("who connected, from
//! where, under which request") and the agents' own audit records. Both read `agent_audit`,
//! where every record an agent delivers is stored once per (agent, id); see docs/controller.md
//! ("Agent audit and connection history").

use std::collections::HashMap;

use jitgate_api::{
    AgentAuditVerify, AgentChainReport, AgentRecord as AgentRecordJson,
    Connection as ConnectionJson, ConnectionOutcome, GrantOrigin, ViewQuery,
};
use sqlx::Row;

use crate::error::{ApiError, StoreError};
use crate::model::{fmt_time, parse_time};
use crate::store::Store;

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The agent's record kinds for data-plane connection events (agent/src/daemon.rs).
pub const ADMITTED: &str = "connection.admitted";
pub const DENIED: &str = "connection.denied";
/// The record an agent writes when it applies a grant (its actor says who asked).
const GRANT_APPLIED: &str = "grant.applied";

/// The columns the views filter on, taken from a record's JSON when it is stored. A record
/// that does not parse is still stored (it is the agent's evidence), with these left empty.
#[derive(Debug, Default, PartialEq)]
pub struct RecordFields {
    pub kind: Option<String>,
    pub at_ms: Option<i64>,
    pub grant_id: Option<String>,
}

impl RecordFields {
    pub fn of(line: &str) -> RecordFields {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return RecordFields::default();
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        RecordFields {
            kind: text("kind"),
            at_ms: text("time").and_then(|t| parse_time(&t).ok()),
            grant_id: text("grantId"),
        }
    }
}

struct Bounds {
    from: i64,
    to: i64,
    limit: i64,
}

fn bounds(q: &ViewQuery) -> Result<Bounds, ApiError> {
    let from = q.from.as_deref().map(parse_time).transpose()?;
    let to = q.to.as_deref().map(parse_time).transpose()?;
    Ok(Bounds {
        from: from.unwrap_or(i64::MIN),
        to: to.unwrap_or(i64::MAX),
        limit: q.limit.unwrap_or(1000).clamp(1, 100_000),
    })
}

/// The connection history as CSV (`?format=csv`).
pub fn to_csv(v: &[ConnectionJson]) -> String {
    let o = |x: &Option<String>| x.clone().unwrap_or_default();
    crate::csv::write(
        &[
            "timeUtc",
            "virtualMachine",
            "outcome",
            "source",
            "protocol",
            "port",
            "requestor",
            "requestId",
            "justification",
            "grantId",
            "grantOrigin",
            "reason",
            "agentId",
        ],
        v.iter().map(|c| {
            vec![
                c.time_utc.clone(),
                c.virtual_machine.clone(),
                c.outcome.to_string(),
                o(&c.source),
                o(&c.protocol),
                c.port.map(|p| p.to_string()).unwrap_or_default(),
                o(&c.requestor),
                o(&c.request_id),
                o(&c.justification),
                o(&c.grant_id),
                c.grant_origin
                    .as_ref()
                    .map(|g| g.to_string())
                    .unwrap_or_default(),
                o(&c.reason),
                c.agent_id.clone(),
            ]
        }),
    )
}

fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> Option<T> {
    v.get(k)
        .and_then(|x| serde_json::from_value(x.clone()).ok())
}

impl Store {
    /// The VM's connection history, newest first, across all its agents (also revoked ones:
    /// what they saw before decommissioning stays evidence).
    pub async fn connections(&self, vm: &str, q: &ViewQuery) -> Result<Vec<ConnectionJson>> {
        let b = bounds(q)?;
        let denied = if q.denied { DENIED } else { ADMITTED };
        let rows = sqlx::query(
            "SELECT a.agent_id, a.line, a.at_ms, g.request_id, r.requestor, r.justification \
             FROM agent_audit a JOIN agents ag ON ag.id = a.agent_id \
             LEFT JOIN grants g ON g.id = a.grant_id \
             LEFT JOIN requests r ON r.id = g.request_id \
             WHERE ag.vm = $1 AND a.kind IN ($2, $3) AND a.at_ms >= $4 AND a.at_ms < $5 \
             ORDER BY a.at_ms DESC, a.seq DESC LIMIT $6",
        )
        .bind(vm)
        .bind(ADMITTED)
        .bind(denied)
        .bind(b.from)
        .bind(b.to)
        .bind(b.limit)
        .fetch_all(self.pool())
        .await?;
        let mut local: HashMap<(String, String), Option<String>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let agent_id: String = r.try_get(0)?;
            let line: String = r.try_get(1)?;
            let at_ms: i64 = r.try_get(2)?;
            let request_id: Option<String> = r.try_get(3)?;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let kind: Option<String> = field(&v, "kind");
            let grant_id: Option<String> = field(&v, "grantId");
            let (origin, requestor, justification) = match (&request_id, &grant_id) {
                (Some(_), _) => (Some(GrantOrigin::Controller), r.try_get(4)?, r.try_get(5)?),
                (None, Some(g)) => {
                    let key = (agent_id.clone(), g.clone());
                    let actor = match local.get(&key) {
                        Some(a) => a.clone(),
                        None => {
                            let a = self.local_actor(&agent_id, g).await?;
                            local.insert(key, a.clone());
                            a
                        }
                    };
                    let origin = if actor.is_some() {
                        GrantOrigin::Local
                    } else {
                        GrantOrigin::Unknown
                    };
                    (Some(origin), actor, None)
                }
                (None, None) => (None, None, None),
            };
            out.push(ConnectionJson {
                time_utc: fmt_time(at_ms),
                virtual_machine: vm.to_string(),
                agent_id,
                outcome: if kind.as_deref() == Some(DENIED) {
                    ConnectionOutcome::Denied
                } else {
                    ConnectionOutcome::Admitted
                },
                source: field(&v, "source"),
                protocol: field(&v, "protocol"),
                port: field(&v, "port"),
                grant_id,
                grant_origin: origin,
                request_id,
                requestor,
                justification,
                reason: field(&v, "reason"),
            });
        }
        Ok(out)
    }

    /// The actor of the agent's own `grant.applied` record for a grant the controller never
    /// issued (a local break-glass grant).
    async fn local_actor(&self, agent_id: &str, grant_id: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT line FROM agent_audit WHERE agent_id = $1 AND grant_id = $2 AND kind = $3 \
             ORDER BY seq LIMIT 1",
        )
        .bind(agent_id)
        .bind(grant_id)
        .bind(GRANT_APPLIED)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let line: String = row.try_get(0)?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        Ok(field(&v, "actor"))
    }

    /// The VM's agents' audit records, newest first.
    pub async fn agent_audit_records(
        &self,
        vm: &str,
        q: &ViewQuery,
    ) -> Result<Vec<AgentRecordJson>> {
        let b = bounds(q)?;
        // Records stored before schema version 4 have no time column: they are listed when no
        // time bound is given.
        let unbounded = q.from.is_none() && q.to.is_none();
        let rows = sqlx::query(
            "SELECT a.agent_id, a.line, a.received_ms FROM agent_audit a \
             JOIN agents ag ON ag.id = a.agent_id \
             WHERE ag.vm = $1 AND ($2 = 1 OR (a.at_ms >= $3 AND a.at_ms < $4)) \
             AND ($5 = '' OR a.kind = $5) \
             ORDER BY a.received_ms DESC, a.seq DESC LIMIT $6",
        )
        .bind(vm)
        .bind(i64::from(unbounded))
        .bind(b.from)
        .bind(b.to)
        .bind(q.kind.as_deref().unwrap_or(""))
        .bind(b.limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let line: String = r.try_get(1)?;
                Ok(AgentRecordJson {
                    agent_id: r.try_get(0)?,
                    received_time_utc: fmt_time(r.try_get(2)?),
                    record: serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line)),
                })
            })
            .collect()
    }
}

impl Store {
    /// Verifies the records each of the VM's agents delivered: the chain (contiguous seq, each
    /// `prev` the previous hash, each hash recomputed from the stored line; the first stored
    /// record may start mid-chain), and each `audit.checkpoint` signature against the agent's
    /// certificate, which must have been issued by the controller CA (`ca_pem`, from the state
    /// directory). A database writer cannot forge the agent's signature.
    pub async fn verify_agent_audit(&self, vm: &str, ca_pem: &str) -> Result<AgentAuditVerify> {
        let agents =
            sqlx::query("SELECT id, cert_pem FROM agents WHERE vm = $1 ORDER BY enrolled_ms, id")
                .bind(vm)
                .fetch_all(self.pool())
                .await?;
        let mut out = AgentAuditVerify {
            ok: true,
            vm: vm.into(),
            agents: vec![],
        };
        for a in &agents {
            let id: String = a.try_get(0)?;
            let cert: Option<String> = a.try_get(1)?;
            let r = self
                .verify_agent_chain(&id, cert.as_deref(), ca_pem)
                .await?;
            out.ok &= r.ok;
            out.agents.push(r);
        }
        Ok(out)
    }

    async fn verify_agent_chain(
        &self,
        agent_id: &str,
        cert: Option<&str>,
        ca_pem: &str,
    ) -> Result<AgentChainReport> {
        let mut r = AgentChainReport {
            agent_id: agent_id.into(),
            ok: false,
            records: 0,
            first_seq: None,
            last_seq: None,
            checkpoints: 0,
            covered_seq: None,
            uncovered: 0,
            first_bad_seq: None,
            problem: None,
        };
        let cert_ok = match cert {
            None => Err("no certificate stored for this agent (enrolled before schema 5)".into()),
            Some(c) => jitgate_proto::audit::agent_cert_issued_by(c, ca_pem).map(|()| c),
        };
        let mut prev: Option<(i64, String)> = None;
        let mut after = -1i64;
        loop {
            let rows = sqlx::query(
                "SELECT DISTINCT seq, line FROM agent_audit WHERE agent_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT 5000",
            )
            .bind(agent_id)
            .bind(after)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.try_get(0)?;
                let line: String = row.try_get(1)?;
                after = seq;
                let mut fail = |problem: String| {
                    r.first_bad_seq = Some(seq);
                    r.problem = Some(problem);
                };
                let l = match jitgate_proto::audit::AgentLine::parse(&line) {
                    Ok(l) if l.seq as i64 == seq => l,
                    Ok(_) | Err(_) => {
                        fail(format!("record {seq} is not a valid agent audit record"));
                        return Ok(r);
                    }
                };
                if l.computed != l.hash {
                    fail(format!(
                        "record {seq} was altered: its content does not match its hash"
                    ));
                    return Ok(r);
                }
                if let Some((ps, ph)) = &prev
                    && (seq != ps + 1 || l.prev != *ph)
                {
                    fail(format!(
                        "record {seq} does not follow record {ps} (removed, inserted or reordered)"
                    ));
                    return Ok(r);
                }
                if l.kind == "audit.checkpoint" {
                    let m = jitgate_proto::audit::agent_checkpoint_message(
                        agent_id,
                        l.seq.saturating_sub(1),
                        &l.prev,
                    );
                    let checked = cert_ok.clone().and_then(|c| {
                        jitgate_proto::audit::agent_verify(
                            c,
                            &m,
                            l.signature.as_deref().unwrap_or_default(),
                        )
                    });
                    if let Err(e) = checked {
                        fail(format!(
                            "record {seq}: checkpoint signature does not verify: {e}"
                        ));
                        return Ok(r);
                    }
                    r.checkpoints += 1;
                    r.covered_seq = Some(seq - 1);
                }
                r.first_seq.get_or_insert(seq);
                r.last_seq = Some(seq);
                r.records += 1;
                prev = Some((seq, l.hash));
            }
        }
        r.ok = true;
        r.uncovered = r.records
            - r.covered_seq
                .map_or(0, |c| c - r.first_seq.unwrap_or(1) + 1);
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_record() {
        let f = RecordFields::of(
            r#"{"id":"x","seq":3,"time":"2026-01-31T17:00:00.5Z","kind":"connection.admitted","actor":"kernel","grantId":"g1","prev":"0","hash":"1"}"#,
        );
        assert_eq!(f.kind.as_deref(), Some(ADMITTED));
        assert_eq!(f.at_ms, Some(1_769_878_800_500));
        assert_eq!(f.grant_id.as_deref(), Some("g1"));
        // Not JSON, or JSON of another shape: stored, nothing extracted.
        assert_eq!(RecordFields::of("garbage"), RecordFields::default());
        assert_eq!(
            RecordFields::of(r#"{"kind":5,"time":"yesterday"}"#),
            RecordFields::default()
        );
    }
}
