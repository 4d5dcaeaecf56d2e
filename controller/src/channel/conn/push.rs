//! What the controller pushes on one connection as it commits: the VM's signed policy, and
//! its grant outbox (grants, scheduled grants, revocations) after the agent's high-water mark;
//! and the agents' acknowledgements of what was applied.

use jitgate_api::{ProtoSel, StatusReason};
use jitgate_common::{Port, ProtectedPort, Protocol};
use jitgate_proto::{
    ControllerMsg, GrantBody, LEVEL_CONNECTION_LIMITS, LEVEL_SCHEDULED_GRANTS, LimitedGrantBody,
    PolicyBody, RevokeBody, ScheduledGrantBody, Signed,
};
use uuid::Uuid;

use super::{Conn, ConnError, Wr, send};
use crate::authz::Actor;
use crate::channel::OUTBOX_BATCH;
use crate::error::Error;
use crate::store::grants::{GrantState, OutboxOp};

impl Conn {
    pub(super) async fn send_policy(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        let group = self.app.inventory.group_of(&self.vm).await?;
        let seq = self.app.policies.version(&self.vm, &group).await?;
        if seq == self.policy_seq {
            return Ok(());
        }
        self.policy_seq = seq;
        let mut ports: Vec<ProtectedPort> = Vec::new();
        if let Some(p) = self.app.policies.effective(&self.vm, &group).await? {
            for pp in &p.ports {
                let Some(port) = u16::try_from(pp.number).ok().and_then(Port::new) else {
                    tracing::error!(vm = %self.vm, number = pp.number, "stored policy port out of range");
                    continue;
                };
                let protos: &[Protocol] = match pp.protocol.parse::<ProtoSel>() {
                    Ok(p) => p.expand(),
                    Err(_) => {
                        tracing::error!(vm = %self.vm, protocol = %pp.protocol, "stored policy protocol invalid");
                        continue;
                    }
                };
                let on_expiry = pp.on_expiry;
                for &protocol in protos {
                    let p = ProtectedPort {
                        protocol,
                        port,
                        on_expiry,
                    };
                    if !ports
                        .iter()
                        .any(|x| x.protocol == protocol && x.port == port)
                    {
                        ports.push(p);
                    }
                }
            }
        }
        ports.sort();
        let body = PolicyBody {
            agent_id: self.agent,
            seq: u64::try_from(seq).unwrap_or(0),
            ports,
            issued_unix_ms: jitgate_api::time::now_ms(),
        };
        let s = Signed::sign(&body, &*self.key()?).map_err(|e| ConnError::Sign(e.to_string()))?;
        tracing::debug!(agent = %self.agent, seq, ports = body.ports.len(), "policy sent");
        send(wr, &ControllerMsg::Policy(s)).await
    }

    pub(super) async fn request_info(
        &mut self,
        rid: &str,
        gid: &str,
    ) -> Result<(String, String), ConnError> {
        if let Some(x) = self.requests.get(rid) {
            return Ok(x.clone());
        }
        let (who, why) = self
            .app
            .lifecycle
            .grant_context(gid)
            .await?
            .map(|c| (c.requestor, c.justification))
            .unwrap_or_default();
        self.requests
            .insert(rid.to_string(), (who.clone(), why.clone()));
        Ok((who, why))
    }

    pub(super) async fn grant_state(&self, id: &str) -> Result<Option<GrantState>, ConnError> {
        Ok(self.app.lifecycle.grant_context(id).await?.map(|c| c.state))
    }

    /// Sends the VM's outbox rows after the cursor, in seq order. On the first send after
    /// (re)connect, grants that are no longer active (revoked, superseded, expired meanwhile)
    /// are not sent; their revocations are.
    pub(super) async fn send_outbox(
        &mut self,
        wr: &mut Wr,
        catch_up: bool,
    ) -> Result<(), ConnError> {
        loop {
            let items = self
                .app
                .lifecycle
                .outbox(&self.vm, self.cursor, OUTBOX_BATCH)
                .await?;
            let n = items.len();
            for it in items {
                let seq = it.seq;
                self.cursor = seq;
                let Ok(grant_id) = Uuid::parse_str(&it.grant_id) else {
                    tracing::error!(grant = %it.grant_id, seq, "grant id is not a UUID; not sent");
                    continue;
                };
                let useq = u64::try_from(seq).unwrap_or(0);
                if it.op == OutboxOp::Revoke {
                    let state = self.grant_state(&it.grant_id).await?;
                    let reason = if state == Some(GrantState::Superseded) {
                        StatusReason::NewerRequestInitiated
                    } else {
                        StatusReason::UserRequested
                    };
                    let body = RevokeBody {
                        agent_id: self.agent,
                        grant_id,
                        seq: useq,
                        reason: reason.as_str().into(),
                    };
                    let s = Signed::sign(&body, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, %reason, "revoke sent");
                    send(wr, &ControllerMsg::Revoke(s)).await?;
                    continue;
                }
                let now = jitgate_api::time::now_ms();
                if it.end_ms <= now {
                    tracing::debug!(grant = %grant_id, seq, "grant ended before delivery; not sent");
                    continue;
                }
                if catch_up {
                    let state = self.grant_state(&it.grant_id).await?;
                    if !state.is_some_and(GrantState::is_active) {
                        tracing::debug!(grant = %grant_id, seq, state = ?state, "grant no longer active; not sent");
                        continue;
                    }
                }
                let Some(protocol) = it.protocol.concrete() else {
                    tracing::error!(grant = %grant_id, protocol = %it.protocol, "bad stored protocol");
                    continue;
                };
                let (Some(port), Ok(source)) = (Port::new(it.port), it.prefix.parse()) else {
                    tracing::error!(grant = %grant_id, port = it.port, prefix = %it.prefix, "bad stored grant");
                    continue;
                };
                let (requester, justification) =
                    self.request_info(&it.request_id, &it.grant_id).await?;
                let body = GrantBody {
                    agent_id: self.agent,
                    grant_id,
                    seq: useq,
                    request_id: it.request_id.clone(),
                    protocol,
                    port,
                    source,
                    start_unix_ms: it.start_ms,
                    end_unix_ms: it.end_ms,
                    remaining_ms: u64::try_from(it.end_ms - now).unwrap_or(0),
                    requester,
                    justification,
                };
                if let Some(limit) = it.max_connections {
                    // Limited: only an agent that enforces the limit may have it; an older
                    // one would read it as an unlimited grant, so it is never sent there in
                    // any form (requests are refused AgentTooOld; this holds it back should
                    // the agent have been replaced by an older one since).
                    if self.protocol < LEVEL_CONNECTION_LIMITS {
                        tracing::error!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, level = self.protocol, max_connections = limit.get(), "limited grant held back: the agent is too old to enforce its connection limit");
                        continue;
                    }
                    let starts_in_ms =
                        (it.start_ms > now).then(|| u64::try_from(it.start_ms - now).unwrap_or(0));
                    let limited = LimitedGrantBody {
                        grant: body,
                        max_connections: limit,
                        starts_in_ms,
                    };
                    let s = Signed::sign(&limited, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, max_connections = limit.get(), ?starts_in_ms, "limited grant sent");
                    send(wr, &ControllerMsg::LimitedGrant(s)).await?;
                    continue;
                }
                if it.start_ms > now {
                    // Booked: only an agent that opens it at its start by itself may have it;
                    // an older one would apply it at receipt, so it waits here (and is sent
                    // when the VM's agent speaks a level that knows bookings).
                    if self.protocol < LEVEL_SCHEDULED_GRANTS {
                        tracing::warn!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, level = self.protocol, "booked grant held back: the agent is too old to open it at its start");
                        continue;
                    }
                    let booked = ScheduledGrantBody {
                        grant: body,
                        starts_in_ms: u64::try_from(it.start_ms - now).unwrap_or(0),
                    };
                    let s = Signed::sign(&booked, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, starts_in_ms = booked.starts_in_ms, "booked grant sent");
                    send(wr, &ControllerMsg::ScheduledGrant(s)).await?;
                    continue;
                }
                let s = Signed::sign(&body, &*self.key()?)
                    .map_err(|e| ConnError::Sign(e.to_string()))?;
                tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, "grant sent");
                send(wr, &ControllerMsg::Grant(s)).await?;
            }
            if (n as i64) < OUTBOX_BATCH {
                return Ok(());
            }
        }
    }

    /// Records the acknowledgement without waiting for its commit, so that one agent's
    /// acknowledgements share group commits (the lifecycle's acknowledgement writer). If the
    /// commit fails the grant stays pending, and the agent's next connection redelivers it
    /// and acknowledges it again.
    pub(super) fn ack(&self, grant_id: Uuid) {
        let actor = Actor::agent(self.agent);
        let (lifecycle, agent) = (self.app.lifecycle.clone(), self.agent);
        tokio::spawn(async move {
            match lifecycle.acknowledge(&actor, &grant_id.to_string()).await {
                Ok(()) => {}
                Err(Error::Refused { message, .. }) => {
                    tracing::warn!(%agent, grant = %grant_id, error = %message, "acknowledgement of an unknown grant");
                }
                Err(e) => {
                    tracing::error!(%agent, grant = %grant_id, error = %e, "acknowledgement not recorded; the grant is redelivered on the next connection");
                }
            }
        });
    }
}
