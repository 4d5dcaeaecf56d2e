//! What an initiate batch reads before it decides, inside its write transaction: the named
//! VMs' groups, their policies (the VMs' own and their groups'), and the active grants that
//! the requests could supersede (every (VM, port, protocol, prefix) they could create: a
//! superset of what they will create).
//!
//! SQLite reads it all in the round trip that begins the transaction (each part as one JSON
//! document); PostgreSQL with one portable query per part.

use std::collections::HashMap;

use jitgate_api::{PolicyBody, PolicyScope, ProtoSel};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::backend::Backend;
use crate::store::grants::{self, ActiveGrant, GrantKey, GrantState};
use crate::store::write::{WriteTx, Writer};
use crate::store::{inventory, policies, requests};

/// What the batch reads.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The group of each named VM that exists.
    pub groups: HashMap<String, String>,
    /// The stored policies of those VMs and their groups.
    pub policies: HashMap<(PolicyScope, String), PolicyBody>,
    /// Active grants for the keys.
    pub active: Vec<ActiveGrant>,
    /// How many requests each named principal has pending (absent: none).
    pub pending: HashMap<String, i64>,
    /// The highest protocol level among each named VM's connected agents (absent: none
    /// connected, or only agents that announce no level).
    pub agent_levels: HashMap<String, u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyDoc {
    scope_kind: String,
    scope_name: String,
    body: PolicyBody,
}

/// Begins a transaction on the writer and reads the snapshot for `vms` and `keys`.
pub async fn begin_and_read(
    writer: &Writer,
    vms: &[&str],
    keys: &[GrantKey],
    principals: &[&str],
) -> Result<(WriteTx, Snapshot)> {
    if writer.backend() != Backend::Sqlite {
        let mut w = writer.begin().await?;
        let snap = read(&mut w, vms, keys, principals).await?;
        return Ok((w, snap));
    }
    let mut w = writer.lock().await;
    let (lock, counters) = writer.lock_counters(7);
    let sql = format!(
        "BEGIN; {lock}; \
         SELECT json_group_object(name, resource_group) FROM vms \
         WHERE name IN (SELECT value FROM json_each($1)); \
         SELECT json_group_array(json_object('scopeKind', scope_kind, 'scopeName', scope_name, \
         'body', json(body))) FROM policies WHERE \
         (scope_kind = $3 AND scope_name IN (SELECT value FROM json_each($1))) OR \
         (scope_kind = $4 AND scope_name IN (SELECT resource_group FROM vms \
         WHERE name IN (SELECT value FROM json_each($1)))); \
         SELECT json_group_array(json_object('id', g.id, 'requestId', g.request_id, \
         'portIdx', g.port_idx, 'vm', g.vm, 'port', g.port, 'protocol', g.protocol, \
         'prefix', g.prefix)) FROM json_each($2) AS k CROSS JOIN grants AS g \
         WHERE g.vm = k.value ->> 0 AND g.port = k.value ->> 1 AND g.protocol = k.value ->> 2 \
         AND g.prefix = k.value ->> 3 AND g.state IN ($5, $6) AND g.start_ms <= $12; \
         SELECT json_group_object(principal, n) FROM (SELECT principal, count(*) AS n \
         FROM requests WHERE deadline_ms IS NOT NULL \
         AND principal IN (SELECT value FROM json_each($11)) GROUP BY principal)"
    );
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| serde_json::json!([k.vm, k.port, ProtoSel::from(k.protocol).as_str(), k.prefix]))
        .collect();
    w.opened();
    let mut q = sqlx::query(&sql)
        .bind(serde_json::to_string(vms)?)
        .bind(serde_json::to_string(&keys)?)
        .bind(PolicyScope::VirtualMachine.as_str())
        .bind(PolicyScope::ResourceGroup.as_str())
        .bind(GrantState::Pending.as_str())
        .bind(GrantState::Applied.as_str());
    for c in counters {
        q = q.bind(c);
    }
    q = q.bind(serde_json::to_string(principals)?);
    q = q.bind(w.now);
    let rows = q.fetch_all(w.conn()).await?;
    let [
        c1,
        c2,
        c3,
        c4,
        vms_doc,
        policies_doc,
        grants_doc,
        pending_doc,
    ] = rows.as_slice()
    else {
        return Err(Error::Corrupt(format!(
            "the initiate read returned {} rows, not 8",
            rows.len()
        )));
    };
    use sqlx::FromRow;
    let mut counter_rows = Vec::with_capacity(4);
    for r in [c1, c2, c3, c4] {
        counter_rows.push(<(String, i64, String)>::from_row(r)?);
    }
    w.load_counters(counter_rows)?;
    let doc = |r: &sqlx::any::AnyRow| -> Result<String> { Ok(<(String,)>::from_row(r)?.0) };
    let groups: HashMap<String, String> = serde_json::from_str(&doc(vms_doc)?)?;
    let mut policies = HashMap::new();
    for p in serde_json::from_str::<Vec<PolicyDoc>>(&doc(policies_doc)?)? {
        let scope = PolicyScope::try_from(p.scope_kind).map_err(Error::corrupt)?;
        policies.insert((scope, p.scope_name), p.body);
    }
    let active: Vec<ActiveGrant> = serde_json::from_str(&doc(grants_doc)?)?;
    let pending: HashMap<String, i64> = serde_json::from_str(&doc(pending_doc)?)?;
    Ok((
        w,
        Snapshot {
            groups,
            policies,
            active,
            pending,
            agent_levels: HashMap::new(),
        },
    ))
}

/// Reads the snapshot inside an open transaction, with one portable query per part (what
/// PostgreSQL does for an initiate batch, and a final approval on either backend).
pub async fn read(
    w: &mut WriteTx,
    vms: &[&str],
    keys: &[GrantKey],
    principals: &[&str],
) -> Result<Snapshot> {
    let groups = inventory::groups_of(w.conn(), vms).await?;
    let mut targets: Vec<(PolicyScope, &str)> = vms
        .iter()
        .filter(|n| groups.contains_key(**n))
        .map(|n| (PolicyScope::VirtualMachine, *n))
        .collect();
    let mut rgs: Vec<&str> = groups.values().map(String::as_str).collect();
    rgs.sort();
    rgs.dedup();
    targets.extend(rgs.into_iter().map(|g| (PolicyScope::ResourceGroup, g)));
    let policies = policies::of_targets(w.conn(), &targets)
        .await?
        .into_iter()
        .map(|p| ((p.scope_kind, p.scope_name), p.body.0))
        .collect();
    let now = w.now;
    let active = grants::active_for_keys(w.conn(), keys, now).await?;
    let pending = requests::pending_counts(w.conn(), principals).await?;
    Ok(Snapshot {
        groups,
        policies,
        active,
        pending,
        agent_levels: HashMap::new(),
    })
}
