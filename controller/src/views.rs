//! What the agents saw, at the controller: each VM's connection history ("who connected, from
//! where, under which request") and the agents' own audit records, with their verification
//! (docs/controller.md, "Agent audit and connection history").

use std::collections::HashMap;
use std::sync::Arc;

use jitgate_api::{
    AgentAuditVerify, AgentChainReport, AgentRecord, Connection, ConnectionOutcome, GrantOrigin,
    ViewQuery,
};
// The record kinds these views read are the agent's own (one enum on both sides of the wire).
use crate::authz::{self, Action, Caller};
use crate::csv::{self, Cell};
use crate::error::Result;
use crate::input::parse_time;
use crate::store::db::Db;
use crate::store::{agent_audit, agents, inventory, requests};
use jitgate_proto::AuditKind as Kind;

/// The time bounds and size of a view.
struct Bounds {
    from: i64,
    to: i64,
    limit: i64,
}

fn bounds(q: &ViewQuery) -> Result<Bounds> {
    let from = q.from.as_deref().map(parse_time).transpose()?;
    let to = q.to.as_deref().map(parse_time).transpose()?;
    Ok(Bounds {
        from: from.unwrap_or(i64::MIN),
        to: to.unwrap_or(i64::MAX),
        limit: q.limit.unwrap_or(1000).clamp(1, 100_000),
    })
}

fn field<T: serde::de::DeserializeOwned>(v: &serde_json::Value, k: &str) -> Option<T> {
    v.get(k)
        .and_then(|x| serde_json::from_value(x.clone()).ok())
}

#[derive(Clone)]
pub struct AgentViews {
    db: Db,
    /// The controller CA (PEM) that agent certificates must chain to.
    ca_pem: Arc<String>,
}

impl AgentViews {
    pub fn new(db: Db, ca_pem: String) -> AgentViews {
        AgentViews {
            db,
            ca_pem: Arc::new(ca_pem),
        }
    }

    /// The VM exists and the caller may read it.
    async fn readable(&self, caller: &Caller, vm: &str) -> Result<()> {
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::ReadVm { vm, group: &group })
    }

    /// The VM's connection history, newest first, across all its agents (also revoked ones:
    /// what they saw before decommissioning stays evidence).
    pub async fn connections(
        &self,
        caller: &Caller,
        vm: &str,
        q: &ViewQuery,
    ) -> Result<Vec<Connection>> {
        self.readable(caller, vm).await?;
        let b = bounds(q)?;
        let also = if q.denied {
            Kind::ConnectionDenied
        } else {
            Kind::ConnectionAdmitted
        };
        let rows = agent_audit::connections(
            self.db.pool(),
            vm,
            [Kind::ConnectionAdmitted.as_str(), also.as_str()],
            b.from,
            b.to,
            b.limit,
        )
        .await?;
        let mut local: HashMap<(String, String), Option<String>> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let v: serde_json::Value = serde_json::from_str(&r.line).unwrap_or_default();
            let kind: Option<String> = field(&v, "kind");
            let grant_id: Option<String> = field(&v, "grantId");
            let (origin, requestor, justification) = match (&r.request_id, &grant_id) {
                (Some(_), _) => (Some(GrantOrigin::Controller), r.requestor, r.justification),
                (None, Some(g)) => {
                    let key = (r.agent_id.clone(), g.clone());
                    let actor = match local.get(&key) {
                        Some(a) => a.clone(),
                        None => {
                            let a = self.local_actor(&r.agent_id, g).await?;
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
            out.push(Connection {
                time_utc: jitgate_api::time::format(r.at_ms),
                virtual_machine: vm.to_string(),
                agent_id: r.agent_id,
                outcome: if kind.as_deref() == Some(Kind::ConnectionDenied.as_str()) {
                    ConnectionOutcome::Denied
                } else {
                    ConnectionOutcome::Admitted
                },
                source: field(&v, "source"),
                protocol: field(&v, "protocol"),
                port: field(&v, "port"),
                grant_id,
                grant_origin: origin,
                request_id: r.request_id,
                requestor,
                justification,
                reason: field(&v, "reason"),
                max_connections: requests::stored_limit(r.max_connections)?,
            });
        }
        Ok(out)
    }

    /// The actor of the agent's own `grant.applied` record for a grant the controller never
    /// issued (a local break-glass grant).
    async fn local_actor(&self, agent: &str, grant: &str) -> Result<Option<String>> {
        let line =
            agent_audit::first_of_grant(self.db.pool(), agent, grant, Kind::GrantApplied.as_str())
                .await?;
        Ok(line.and_then(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            field(&v, "actor")
        }))
    }

    /// The VM's agents' audit records, newest first.
    pub async fn records(
        &self,
        caller: &Caller,
        vm: &str,
        q: &ViewQuery,
    ) -> Result<Vec<AgentRecord>> {
        self.readable(caller, vm).await?;
        let b = bounds(q)?;
        // Records stored before schema version 4 have no time: listed when no bound is given.
        let unbounded = q.from.is_none() && q.to.is_none();
        let rows = agent_audit::records(
            self.db.pool(),
            vm,
            unbounded,
            (b.from, b.to),
            q.kind.as_deref().unwrap_or(""),
            b.limit,
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AgentRecord {
                agent_id: r.agent_id,
                received_time_utc: jitgate_api::time::format(r.received_ms),
                record: serde_json::from_str(&r.line).unwrap_or(serde_json::Value::String(r.line)),
            })
            .collect())
    }

    /// Verifies the records each of the VM's agents delivered: the chain (contiguous seq, each
    /// `prev` the previous hash, each hash recomputed from the stored line; the first stored
    /// record may start mid-chain), and each `audit.checkpoint` signature against the agent's
    /// certificate, which must have been issued by the controller CA (from the state
    /// directory). A database writer cannot forge the agent's signature.
    pub async fn verify(&self, caller: &Caller, vm: &str) -> Result<AgentAuditVerify> {
        self.readable(caller, vm).await?;
        let mut out = AgentAuditVerify {
            ok: true,
            vm: vm.into(),
            agents: vec![],
        };
        for (id, cert) in agents::certificates(self.db.pool(), vm).await? {
            let r = self.verify_chain(&id, cert.as_deref()).await?;
            out.ok &= r.ok;
            out.agents.push(r);
        }
        Ok(out)
    }

    /// One agent's delivered records before (`seq`, `id`), newest first (the agent's page).
    pub async fn agent_records(
        &self,
        caller: &Caller,
        vm: &str,
        agent: &str,
        before: (i64, &str),
        limit: i64,
    ) -> Result<Vec<agent_audit::AgentLineRow>> {
        self.readable(caller, vm).await?;
        agent_audit::agent_page(self.db.pool(), agent, before, limit).await
    }

    /// Verifies one agent of the VM as [`AgentViews::verify`] verifies each.
    pub async fn verify_agent(
        &self,
        caller: &Caller,
        vm: &str,
        agent: &str,
    ) -> Result<Option<AgentChainReport>> {
        self.readable(caller, vm).await?;
        match agents::certificates(self.db.pool(), vm)
            .await?
            .into_iter()
            .find(|(id, _)| id == agent)
        {
            Some((id, cert)) => Ok(Some(self.verify_chain(&id, cert.as_deref()).await?)),
            None => Ok(None),
        }
    }

    async fn verify_chain(&self, agent_id: &str, cert: Option<&str>) -> Result<AgentChainReport> {
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
            Some(c) => jitgate_proto::audit::agent_cert_issued_by(c, &self.ca_pem).map(|()| c),
        };
        let mut prev: Option<(i64, String)> = None;
        let mut after = -1i64;
        loop {
            let rows = agent_audit::chain_page(self.db.pool(), agent_id, after).await?;
            if rows.is_empty() {
                break;
            }
            for (seq, line) in rows {
                after = seq;
                let mut fail = |problem: String| {
                    r.first_bad_seq = Some(seq);
                    r.problem = Some(problem);
                };
                let l = match jitgate_proto::audit::AgentLine::parse(&line) {
                    Ok(l) if i64::try_from(l.seq).ok() == Some(seq) => l,
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
                if l.kind == Kind::AuditCheckpoint.as_str() {
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

/// The connection history as CSV (free text neutralised, `port` and `maxConnections`
/// numbers; `maxConnections` last, so that the earlier columns keep their places).
pub fn to_csv(v: &[Connection]) -> Result<String> {
    let o = |x: &Option<String>| Cell::from(x.as_deref());
    csv::write(
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
            "maxConnections",
        ],
        v.iter().map(|c| {
            vec![
                Cell::from(c.time_utc.as_str()),
                Cell::from(c.virtual_machine.as_str()),
                Cell::from(c.outcome.as_str()),
                o(&c.source),
                o(&c.protocol),
                c.port.map_or(Cell::Empty, |p| Cell::Int(i64::from(p))),
                o(&c.requestor),
                o(&c.request_id),
                o(&c.justification),
                o(&c.grant_id),
                Cell::from(c.grant_origin.as_ref().map(|g| g.as_str())),
                o(&c.reason),
                Cell::from(c.agent_id.as_str()),
                c.max_connections
                    .map_or(Cell::Empty, |m| Cell::Int(i64::from(m.get()))),
            ]
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_keeps_the_port_a_number_and_neutralises_justifications() {
        let c = Connection {
            time_utc: "t".into(),
            grant_id: None,
            request_id: None,
            requestor: Some("+alice".into()),
            justification: Some("=cmd|' /C calc'!A0".into()),
            ..jitgate_api::agents::example_connection()
        };
        let limited = Connection {
            max_connections: jitgate_api::MaxConnections::new(3),
            ..c.clone()
        };
        let text = to_csv(&[c, limited]).unwrap();
        assert!(text.starts_with("timeUtc,"), "{text}");
        assert!(
            text.lines()
                .next()
                .unwrap()
                .ends_with(",agentId,maxConnections")
        );
        assert_eq!(
            text.lines().nth(1),
            Some(
                "t,web1,admitted,203.0.113.7:5000,tcp,22,'+alice,,'=cmd|' /C calc'!A0,,controller,,a,"
            )
        );
        assert_eq!(
            text.lines().nth(2),
            Some(
                "t,web1,admitted,203.0.113.7:5000,tcp,22,'+alice,,'=cmd|' /C calc'!A0,,controller,,a,3"
            )
        );
    }
}
