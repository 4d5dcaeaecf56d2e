//! Audit records that go to the writer without passing the core: the kernel's connection
//! events (from the ring buffer) and the timer of signed checkpoints.

use super::writer::WriteJob;
use crate::audit::AuditEvent;
use crate::events::{DataplaneEvent, EventStream};
use jitgate_common::EventKind;
use jitgate_proto::AuditKind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;

fn event_to_audit(e: &DataplaneEvent) -> AuditEvent {
    let kind = match e.kind {
        EventKind::Admitted => AuditKind::ConnectionAdmitted,
        EventKind::Denied => AuditKind::ConnectionDenied,
        EventKind::LimitReached => AuditKind::GrantConnectionLimitReached,
    };
    AuditEvent {
        kind,
        actor: "kernel".into(),
        source: Some(SocketAddr::new(e.source, e.source_port).to_string()),
        protocol: Some(e.protocol.to_string()),
        port: Some(e.destination_port),
        window: None,
        grant_id: e.grant.map(|g| g.to_string()),
        reason: e.reason.map(|r| r.name().to_string()),
        time: Some(e.at.to_utc().into()),
    }
}

/// Data-plane events into the audit log, in batches as the ring buffer yields them.
pub(super) fn spawn_events(mut events: EventStream, writer: mpsc::Sender<WriteJob>) {
    tokio::spawn(async move {
        while let Ok(batch) = events.next_batch().await {
            let evs: Vec<AuditEvent> = batch.iter().map(event_to_audit).collect();
            if writer.send(WriteJob::audit(evs, false)).await.is_err() {
                return;
            }
        }
    });
}

/// A signed checkpoint of the chain head every `every` (the log skips it while the head has
/// not moved, or when not enrolled).
pub(super) fn spawn_checkpoints(every: Duration, writer: mpsc::Sender<WriteJob>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            let ev = AuditEvent::new(AuditKind::AuditCheckpoint, "agent");
            if writer.send(WriteJob::audit(vec![ev], true)).await.is_err() {
                return;
            }
        }
    });
}
