//! The core task's state and the grant operations every path shares: apply a grant to the
//! maps and the table, withdraw grants (and the flows only they admitted), end grants on
//! time, sweep, and hand records to the writer. The core handles one change at a time, so
//! the table and the maps never disagree for another request to see.

use super::flows;
use super::interfaces::Interfaces;
use super::writer::{AuditHead, Compaction, WriteJob};
use crate::admin::{Request, Response};
use crate::audit::AuditEvent;
use crate::channel::{MarkSaver, SharedState};
use crate::clock::BootInstant;
use crate::config::AgentConfig;
use crate::dataplane::Dataplane;
use crate::enroll::Enrollment;
use crate::grant::{GrantId, GrantRecord};
use crate::grant_table::GrantTable;
use crate::journal::{Record, RemoveReason};
use crate::schedule::Schedule;
use jitgate_common::OnExpiry;
use jitgate_proto::AuditKind;
use jitgate_proto::message::AgentMsg;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

/// The journal is rewritten to the live grants after this many removals.
const COMPACT_AFTER: usize = 1000;

/// What the admin socket, the metrics endpoint and the writer's callbacks ask of the core.
pub(super) enum Msg {
    Admin {
        req: Request,
        actor: String,
        reply: oneshot::Sender<Response>,
    },
    Metrics(oneshot::Sender<String>),
    /// These grants could not be made durable: out of the maps and the table again.
    Rollback(Vec<GrantId>),
    /// A result for the controller that found no open connection: sent on the next one.
    Unsent(AgentMsg),
    /// A local grant was made: the controller is told the open grants now (if connected;
    /// the next connection reports them anyway), not at the next connection only.
    ReportGrants,
}

pub(super) struct Core {
    pub cfg: AgentConfig,
    pub dp: Dataplane,
    pub grants: GrantTable,
    pub writer: mpsc::Sender<WriteJob>,
    pub me: mpsc::Sender<Msg>,
    pub interfaces: Interfaces,
    pub started: OffsetDateTime,
    pub head: AuditHead,
    pub removed_since_compact: usize,
    pub detached: bool,
    /// Set when enrolled with a controller.
    pub enrollment: Option<Enrollment>,
    pub chan: SharedState,
    /// The writer of `channel.json` (shared with the connection).
    pub marks: MarkSaver,
    /// The controller endpoint the channel is connected to now (`jit-agent status`).
    pub controller: crate::channel::Connected,
    /// What is wrong with the agent's certificate (a refused renewal), if anything.
    pub cert_problem: crate::channel::CertProblem,
    /// Why the controller last closed the connection on purpose (revoked), if it said.
    pub closed_by_controller: crate::channel::ClosedByController,
    /// The connected controller's protocol level (what the status report may carry).
    pub controller_level: crate::channel::ControllerLevel,
    /// Booked grants waiting for their start (not in the maps).
    pub schedule: Schedule,
    /// The current controller connection's outgoing queue (the last one a message came on).
    pub outbox: Option<mpsc::Sender<AgentMsg>>,
    /// Results that found no connection (a booking opened while disconnected), oldest first.
    pub unsent: Vec<AgentMsg>,
}

/// The audit record of something that happened to a grant.
pub(super) fn grant_event(
    kind: AuditKind,
    actor: &str,
    g: &GrantRecord,
    reason: Option<&str>,
) -> AuditEvent {
    AuditEvent {
        kind,
        actor: actor.into(),
        source: Some(g.source.to_string()),
        protocol: Some(g.protocol.to_string()),
        port: Some(g.port.get()),
        window: Some((g.start, g.end)),
        grant_id: Some(g.id.to_string()),
        reason: reason.map(String::from),
        time: None,
    }
}

/// The journal and audit records of a grant (or booking) that reached its end.
pub(super) fn expired(g: &GrantRecord, reason: &str) -> (Record, AuditEvent) {
    (
        Record::Remove {
            id: g.id,
            reason: RemoveReason::Expired,
        },
        grant_event(AuditKind::GrantExpired, "agent", g, Some(reason)),
    )
}

impl Core {
    pub async fn write(&self, job: WriteJob) {
        if self.writer.send(job).await.is_err() {
            tracing::error!("the journal writer has stopped");
        }
    }

    /// What ends with a grant on (protocol, port) under the current policy.
    pub fn on_expiry(&self, g: &GrantRecord) -> Option<OnExpiry> {
        flows::on_expiry(&self.cfg.protected, g.protocol, g.port.get())
    }

    /// Puts a grant into the maps and the table (durability is the caller's next step).
    pub fn apply(&mut self, g: &GrantRecord) -> Result<(), String> {
        self.dp
            .add_limited_grant(
                g.id,
                g.spec(),
                BootInstant(g.expires_boot_ns),
                g.max_connections,
            )
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.grants.insert(g) {
            let _ = self.dp.remove_grant(&g.id);
            return Err(e.to_string());
        }
        Ok(())
    }

    /// Takes a grant out of the maps and the table (no journal record); returns it.
    pub fn forget(&mut self, id: &GrantId) -> Option<GrantRecord> {
        let g = self.grants.remove(id)?;
        let _ = self.dp.remove_grant(id);
        Some(g)
    }

    /// Takes grants out of the maps and the table and deals with the flows they admitted
    /// (see [`flows::cut`]); returns each with how many of its sessions were closed.
    pub fn withdraw(&mut self, ids: &[GrantId]) -> Vec<(GrantRecord, usize)> {
        let gone: Vec<GrantRecord> = ids.iter().filter_map(|id| self.forget(id)).collect();
        self.removed_since_compact += gone.len();
        let ids: Vec<GrantId> = gone.iter().map(|g| g.id).collect();
        let cut = flows::cut(&mut self.dp, &self.grants, &ids);
        gone.into_iter().zip(cut).collect()
    }

    /// Ends every grant whose end has passed: maps, table, journal, audit; for `cut` ports
    /// the sessions are closed too. The kernel already stopped admitting at the end.
    pub async fn expire_due(&mut self) {
        let due = self.grants.take_due(BootInstant::now().0);
        if due.is_empty() {
            return;
        }
        for g in &due {
            let _ = self.dp.remove_grant(&g.id);
        }
        self.removed_since_compact += due.len();
        let cut_ids: Vec<GrantId> = due
            .iter()
            .filter(|g| self.on_expiry(g) == Some(OnExpiry::Cut))
            .map(|g| g.id)
            .collect();
        let cut = flows::cut(&mut self.dp, &self.grants, &cut_ids);
        let closed: std::collections::HashMap<GrantId, usize> =
            cut_ids.into_iter().zip(cut).collect();
        let mut journal = Vec::with_capacity(due.len());
        let mut events = Vec::with_capacity(due.len());
        for g in &due {
            let reason = match closed.get(&g.id) {
                Some(&n) if n > 0 => format!("Expired; {n} session(s) closed (on_expiry = cut)"),
                _ => "Expired".to_string(),
            };
            let (r, e) = expired(g, &reason);
            journal.push(r);
            events.push(e);
        }
        self.write(WriteJob {
            journal,
            audit: events,
            durable: true,
            compact: None,
            done: None,
        })
        .await;
    }

    /// Returns freed heap pages to the kernel. Bursts of grants leave freed request and
    /// response buffers behind; without this the resident size tracks the largest burst, not
    /// the live grant table.
    pub fn trim_heap(&self) {
        // SAFETY: glibc's malloc_trim only releases free memory.
        unsafe { libc::malloc_trim(0) };
    }

    /// Drops flows nobody needs and compacts the journal after many removals.
    pub async fn sweep(&mut self) {
        self.trim_heap();
        flows::sweep(
            &mut self.dp,
            &self.cfg.protected,
            self.cfg.flow_idle_timeout,
        );
        if self.removed_since_compact >= COMPACT_AFTER {
            self.removed_since_compact = 0;
            let high_water = self
                .chan
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .seq_high_water;
            self.write(WriteJob {
                compact: Some(Compaction {
                    grants: self.grants.snapshot(),
                    booked: self.schedule.iter().cloned().collect(),
                    high_water,
                }),
                ..WriteJob::audit(Vec::new(), false)
            })
            .await;
        }
    }

    /// How long the core may sleep before the next grant ends or booking opens (at most a
    /// second, to stay correct across suspend: tokio's clock stops during it, boot time not).
    pub fn next_wake(&mut self) -> Duration {
        let cap = Duration::from_secs(1);
        self.grants
            .next_deadline()
            .into_iter()
            .chain(self.schedule.next_opening())
            .map(|t| BootInstant(t).remaining())
            .fold(cap, Duration::min)
    }

    /// Grants whose journal write failed leave the maps, the table and the schedule again.
    pub fn rollback(&mut self, ids: &[GrantId]) {
        for id in ids {
            self.forget(id);
            self.schedule.remove(id);
        }
    }

    /// Sends a result on the current connection, or keeps it for the next one.
    pub async fn send_or_keep(&mut self, m: AgentMsg) {
        let unsent = match &self.outbox {
            Some(o) => o.send(m).await.err().map(|e| e.0),
            None => Some(m),
        };
        self.unsent.extend(unsent);
    }

    /// Notes the connection a controller message came on; results kept while there was
    /// none go out on it first.
    pub async fn connected(&mut self, out: &mpsc::Sender<AgentMsg>) {
        if self.outbox.as_ref().is_some_and(|o| o.same_channel(out)) {
            return;
        }
        self.outbox = Some(out.clone());
        for m in std::mem::take(&mut self.unsent) {
            if let Err(e) = out.send(m).await {
                self.unsent.push(e.0);
            }
        }
    }
}
