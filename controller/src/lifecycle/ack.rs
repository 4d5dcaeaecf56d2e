//! Acknowledgements: an agent confirmed a grant is in its maps. The grant becomes applied;
//! a port whose grants are all applied becomes Applied (a request is Applied when all its
//! ports are); `Apply JIT Network Access` is logged.
//!
//! Committed in groups: whatever is waiting (up to [`MAX_ACKS`], from every connection) in
//! one transaction, each applied exactly as alone. A grant the controller does not know gets
//! its refusal and writes nothing; a database error rolls the group back and every
//! acknowledgement in it gets the error (the grant stays pending and is redelivered on the
//! agent's next connection, which acknowledges it again).

use jitgate_api::{ErrorCode, Operation, PortStatus};
use tokio::sync::oneshot;

use crate::authz::Actor;
use crate::error::{Error, Result};
use crate::outbox::event;
use crate::store::activity::{self, NewActivity};
use crate::store::grants::{self, GrantState};
use crate::store::notify;
use crate::store::write::{WriteTx, Writer};
use crate::store::{inventory, requests};

/// Most acknowledgements committed in one transaction.
pub const MAX_ACKS: usize = 256;

/// One queued acknowledgement and where its answer goes.
pub struct Job {
    pub actor: Actor,
    pub grant_id: String,
    pub reply: oneshot::Sender<Result<()>>,
}

/// Commits one group of acknowledgements and answers each.
pub async fn run_batch(writer: &Writer, jobs: Vec<Job>) {
    let res: Result<Vec<Result<()>>> = async {
        let mut w = writer.begin().await?;
        let mut out = Vec::with_capacity(jobs.len());
        let mut events = Vec::new();
        for j in &jobs {
            out.push(
                match acknowledge(&mut w, &j.actor, &j.grant_id, &mut events).await {
                    Err(e @ Error::Refused { .. }) => Err(e),
                    Err(e) => return Err(e),
                    Ok(()) => Ok(()),
                },
            );
        }
        let rows = notify::event_rows(&mut w, &events)?;
        w.commit_with(vec![rows]).await?;
        Ok(out)
    }
    .await;
    tracing::debug!(batch = jobs.len(), "acknowledgement batch");
    match res {
        Ok(out) => {
            for (j, r) in jobs.into_iter().zip(out) {
                let _ = j.reply.send(r);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = jobs.len(), "acknowledgement batch failed; rolled back");
            for j in jobs {
                let _ = j
                    .reply
                    .send(Err(Error::Unavailable("the acknowledgement batch failed")));
            }
        }
    }
}

/// One acknowledgement inside a write transaction; `access.applied` joins `events` when it
/// makes the whole request Applied.
async fn acknowledge(
    w: &mut WriteTx,
    actor: &Actor,
    grant_id: &str,
    events: &mut Vec<jitgate_notify::Event>,
) -> Result<()> {
    let Some(g) = grants::get(w, grant_id).await? else {
        return Err(Error::refused(
            ErrorCode::GrantNotFound,
            format!("no grant {grant_id}"),
        ));
    };
    if g.state != GrantState::Pending {
        // Redelivery or a grant that ended meanwhile: acknowledged again, not applied again.
        return Ok(());
    }
    grants::set_state(w, grant_id, GrantState::Applied).await?;
    grants::mark_delivered(w, grant_id).await?;
    if !grants::port_has(w, &g.request_id, g.port_idx, GrantState::Pending).await? {
        requests::mark_applied(w, &g.request_id, g.port_idx).await?;
        if let Some(view) = requests::load(w.conn(), &g.request_id).await?
            && view.status == PortStatus::Applied
        {
            let owner = requests::owner(w.conn(), &g.request_id)
                .await?
                .unwrap_or_default();
            events.push(event::applied(&view, &owner, w.now));
        }
    }
    let group = inventory::vm(w.conn(), &g.vm)
        .await?
        .map(|v| v.resource_group)
        .unwrap_or_default();
    activity::log(
        w,
        NewActivity::vm(Operation::Apply, &group, &g.vm, actor)
            .request(&g.request_id)
            .details(serde_json::json!({"grantId": grant_id,
                "number": g.port,
                "protocol": g.protocol,
                "allowedSourceAddressPrefix": g.prefix})),
    )
    .await?;
    Ok(())
}
