//! How access ends before or at its end time: revocation by a person (UserRequested) and the
//! expiry sweep (Expired). Supersession is part of the initiate batch (`plan`).

use std::collections::BTreeMap;

use jitgate_api::{ErrorCode, MaxConnections, Operation, RequestView, StatusReason};

use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::outbox::event;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::notify;
use crate::store::requests::LivePort;
use crate::store::{grants, requests};
use jitgate_notify::event::EndReason;

/// Revokes a request's live ports: each becomes Revoked / UserRequested, each active grant
/// gets an outbox `revoke` row. Its requestor (requester rights on every VM) or an admin
/// whose scope covers every VM of the request may.
pub async fn revoke(db: &Db, caller: &Caller, id: &str) -> Result<RequestView> {
    authz::authorize(caller, Action::RevokeRequests)?;
    let actor = caller.actor();
    let mut w = db.begin().await?;
    let Some(rec) = requests::load(w.conn(), id).await? else {
        return Err(Error::refused(
            ErrorCode::RequestNotFound,
            format!("no request {id}"),
        ));
    };
    let owner = requests::owner(w.conn(), id).await?.unwrap_or_default();
    for vm in &rec.virtual_machines {
        authz::authorize(
            caller,
            Action::Revoke {
                owner: &owner,
                vm: &vm.id,
                group: &vm.resource_group,
            },
        )?;
    }
    let now = w.now;
    let live = requests::live_ports(&mut w, id, now).await?;
    if live.is_empty() {
        return Err(Error::refused(
            ErrorCode::RequestNotActive,
            format!(
                "request {id} has no active access to revoke (status {})",
                rec.status
            ),
        ));
    }
    requests::end_live(&mut w, id, now, StatusReason::UserRequested).await?;
    grants::revoke_request(&mut w, id).await?;
    let mut by_vm: BTreeMap<(&str, &str), Vec<serde_json::Value>> = BTreeMap::new();
    for p in &live {
        by_vm
            .entry((&p.vm, &p.resource_group))
            .or_default()
            .push(p.details());
    }
    for ((vm, group), ports) in by_vm {
        activity::log(
            &mut w,
            NewActivity::vm(Operation::Revoke, group, vm, &actor)
                .request(id)
                .details(serde_json::json!({
                    "statusReason": StatusReason::UserRequested.as_str(),
                    "ports": ports,
                    "justification": rec.justification,
                    "requestor": rec.requestor,
                })),
        )
        .await?;
    }
    let after = requests::load(w.conn(), id)
        .await?
        .ok_or_else(|| Error::Internal(format!("request {id} vanished while revoked")))?;
    let events: Vec<_> = live
        .iter()
        .map(|p| ended(&after, &owner, p, EndReason::UserRequested, now))
        .collect();
    let rows = notify::event_rows(&mut w, &events)?;
    w.commit_with(vec![rows]).await?;
    Ok(after)
}

/// Marks ended access Revoked / Expired (the controller's bookkeeping: the agent enforces the
/// end in the kernel). Returns how many ports ended.
pub async fn expire_due(db: &Db, now: i64) -> Result<usize> {
    if !requests::any_due(db.pool(), now).await? {
        return Ok(0);
    }
    let mut w = db.begin().await?;
    let due = requests::expire_due(&mut w, now).await?;
    grants::expire_due(&mut w, now).await?;
    let actor = Actor::controller();
    let events = per_port(&mut w, &due, |view, owner, p| {
        ended(view, owner, p, EndReason::Expired, now)
    })
    .await?;
    for p in &due {
        let mut details = p.details();
        if let Some(d) = details.as_object_mut() {
            d.insert("statusReason".into(), StatusReason::Expired.as_str().into());
        }
        activity::log(
            &mut w,
            NewActivity::vm(Operation::Expire, &p.resource_group, &p.vm, &actor)
                .request(&p.request_id)
                .details(details),
        )
        .await?;
    }
    let rows = notify::event_rows(&mut w, &events)?;
    w.commit_with(vec![rows]).await?;
    Ok(due.len())
}

/// `access.ending_soon` for every begun port window ending within `lead_ms`, once per
/// window. Returns how many were told.
pub async fn tell_ending_soon(db: &Db, now: i64, lead_ms: i64) -> Result<usize> {
    if lead_ms <= 0 || !requests::any_ending_soon(db.pool(), now, lead_ms).await? {
        return Ok(0);
    }
    let mut w = db.begin().await?;
    let due = requests::ending_soon(&mut w, now, lead_ms).await?;
    let events = per_port(&mut w, &due, |view, owner, p| {
        event::ending_soon(view, owner, &p.vm, &p.resource_group, window(p), now)
    })
    .await?;
    let rows = notify::event_rows(&mut w, &events)?;
    w.commit_with(vec![rows]).await?;
    Ok(due.len())
}

/// One event per port of `ports`, made by `make` with the port's request (loaded once per
/// request; a request gone from the database gets none).
async fn per_port(
    w: &mut crate::store::write::WriteTx,
    ports: &[LivePort],
    make: impl Fn(&RequestView, &str, &LivePort) -> jitgate_notify::Event,
) -> Result<Vec<jitgate_notify::Event>> {
    let mut events = Vec::with_capacity(ports.len());
    let mut views: BTreeMap<&str, Option<(RequestView, String)>> = BTreeMap::new();
    for p in ports {
        if !views.contains_key(p.request_id.as_str()) {
            let view = requests::load(w.conn(), &p.request_id).await?;
            let owner = requests::owner(w.conn(), &p.request_id).await?;
            views.insert(&p.request_id, view.zip(owner));
        }
        if let Some(Some((view, owner))) = views.get(p.request_id.as_str()) {
            events.push(make(view, owner, p));
        }
    }
    Ok(events)
}

fn window(p: &LivePort) -> event::Window<'_> {
    event::Window {
        number: u16::try_from(p.number).unwrap_or(0),
        protocol: &p.protocol,
        prefixes: &p.prefixes,
        end_ms: p.end_ms,
        max_connections: p
            .max_connections
            .and_then(|m| u32::try_from(m).ok())
            .and_then(MaxConnections::new),
    }
}

/// `access.ended` for one port window of the request `view`.
fn ended(
    view: &RequestView,
    owner: &str,
    p: &LivePort,
    reason: EndReason,
    now: i64,
) -> jitgate_notify::Event {
    event::ended(
        view,
        owner,
        &p.vm,
        &p.resource_group,
        window(p),
        reason,
        now,
    )
}
