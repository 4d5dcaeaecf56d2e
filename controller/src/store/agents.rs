//! The agent fleet's tables: `enroll_tokens` (one-time enrolment tokens, by SHA-256),
//! `agents` (enrolled agents: certificate, status, last seen, last status report) and
//! `agent_local_grants` (break-glass grants reported, once each).

use std::collections::HashMap;

use jitgate_api::{AgentStatus, InterfaceHook};
use serde::{Deserialize, Serialize};
use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::inventory;
use crate::store::write::WriteTx;

/// An agent is shown online if it spoke within this long (heartbeats every 10 s, pings 15 s),
/// when presence is not known from a live connection; a status report older than this is
/// stale.
pub const ONLINE_WITHIN_MS: i64 = 45_000;

/// A heartbeat as stored (JSON). Fields after `received_time_utc` come from status reports
/// (`AgentMsg::Status`); absent in rows written from older agents' heartbeats.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub interfaces: Vec<String>,
    pub protected_ports: Vec<String>,
    pub listening: Vec<String>,
    pub active_grants: u32,
    pub audit_head: String,
    pub audit_seq: u64,
    pub received_time_utc: String,
    /// True when the agent sent a status report (enforcement state below is known).
    #[serde(default)]
    pub status_reported: bool,
    /// Listening sockets, parsed.
    #[serde(default)]
    pub listening_sockets: Vec<SocketJson>,
    /// Non-loopback interfaces that have an address and no enforcement.
    #[serde(default)]
    pub unattached: Vec<UnattachedJson>,
    /// Problems with the program, its maps or links, as the agent found them.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The problems of the agent's last hook report (level 7 and later), in words: another
    /// program ahead of jitgate, its program missing from an interface. They make the agent
    /// degraded like `problems`; compliance judges them from the hooks themselves
    /// (`agents.hooks`), not from these words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hook_problems: Vec<String>,
    /// Agent wall clock minus controller wall clock at receipt (transit delay included).
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// When the controller received it (ms since the epoch).
    #[serde(default)]
    pub received_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketJson {
    /// TCP | UDP
    pub protocol: String,
    /// The bound address (`0.0.0.0` / `::` for a wildcard bind).
    pub address: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnattachedJson {
    pub interface: String,
    pub addresses: Vec<String>,
}

impl Heartbeat {
    /// Parses what an agent sent, once, into the stored form: a status report, or (from an
    /// older agent) a bare heartbeat.
    /// A clock offset that moved more than this is a change worth writing.
    pub const OFFSET_MOVES_MS: i64 = 1_000;

    /// Whether `other` says what `self` says, but for when it was received and a clock
    /// offset within [`Heartbeat::OFFSET_MOVES_MS`] (transit time varies).
    pub fn same_state(&self, other: &Heartbeat) -> bool {
        let offset_kept = match (self.clock_offset_ms, other.clock_offset_ms) {
            (Some(a), Some(b)) => (a - b).abs() <= Self::OFFSET_MOVES_MS,
            (a, b) => a == b,
        };
        let bare = |h: &Heartbeat| Heartbeat {
            received_time_utc: String::new(),
            received_ms: None,
            clock_offset_ms: None,
            ..h.clone()
        };
        offset_kept && bare(self) == bare(other)
    }

    pub fn from_agent(
        h: &jitgate_proto::message::Heartbeat,
        status: Option<&jitgate_proto::message::StatusReport>,
        now: i64,
    ) -> Heartbeat {
        let listening_sockets = h
            .listening
            .iter()
            .filter_map(|(p, a)| {
                let sa: std::net::SocketAddr = a.parse().ok()?;
                Some(SocketJson {
                    protocol: p.to_string().to_uppercase(),
                    address: jitgate_common::net::normalise(sa.ip()).to_string(),
                    port: sa.port(),
                })
            })
            .collect();
        let mut unattached: Vec<UnattachedJson> = Vec::new();
        if let Some(st) = status {
            for (iface, addr) in &st.addresses {
                if h.interfaces.iter().any(|(n, _)| n == iface) {
                    continue;
                }
                match unattached.iter_mut().find(|u| &u.interface == iface) {
                    Some(u) => u.addresses.push(addr.clone()),
                    None => unattached.push(UnattachedJson {
                        interface: iface.clone(),
                        addresses: vec![addr.clone()],
                    }),
                }
            }
        }
        Heartbeat {
            interfaces: h
                .interfaces
                .iter()
                .map(|(n, m)| format!("{n} ({m})"))
                .collect(),
            protected_ports: h.protected.iter().map(|p| p.to_string()).collect(),
            listening: h
                .listening
                .iter()
                .map(|(p, a)| format!("{p} {a}"))
                .collect(),
            active_grants: h.active_grants,
            audit_head: h.audit_head.clone(),
            audit_seq: h.audit_seq,
            received_time_utc: jitgate_api::time::format(now),
            status_reported: status.is_some(),
            listening_sockets,
            unattached,
            problems: status.map(|s| s.problems.clone()).unwrap_or_default(),
            hook_problems: Vec::new(),
            clock_offset_ms: status.map(|s| s.agent_unix_ms - now),
            received_ms: Some(now),
        }
    }

    /// Whether the report leaves the host without enforcement (time plays no part).
    pub fn detached(&self) -> bool {
        self.status_reported
            && (self.interfaces.is_empty() || self.problems.iter().any(|p| p.starts_with(DETACHED)))
    }

    /// Why enforcement is not whole on this VM, or cannot be confirmed because reports
    /// stopped (empty: whole, or never reported).
    pub fn problems_at(&self, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = self.received_ms
            && now - r > ONLINE_WITHIN_MS
        {
            out.push(format!(
                "no status report since {} (the agent is connected but not reporting)",
                jitgate_api::time::format(r)
            ));
        }
        if !self.status_reported {
            return out;
        }
        out.extend(self.problems.iter().cloned());
        out.extend(self.hook_problems.iter().cloned());
        if self.interfaces.is_empty() {
            out.push(format!(
                "{DETACHED}: the program is attached to no interface"
            ));
        }
        for u in &self.unattached {
            out.push(format!(
                "{} has an address ({}) and no enforcement",
                u.interface,
                u.addresses.join(", ")
            ));
        }
        out
    }
}

/// How a problem that leaves the host without enforcement begins (the portal lists such
/// VMs as unsupported).
pub const DETACHED: &str = "enforcement detached";

/// A stored status report, decoded.
fn heartbeat(text: Option<String>) -> Result<Option<Heartbeat>> {
    Ok(text.map(|h| serde_json::from_str(&h)).transpose()?)
}

/// A stored hook report, decoded (empty: none).
fn hooks(text: Option<&str>) -> Result<Vec<InterfaceHook>> {
    Ok(text
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or_default())
}

/// The ids of the VM's active agents.
pub async fn active_ids(w: &mut WriteTx, vm: &str) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM agents WHERE vm = $1 AND status = $2")
            .bind(vm)
            .bind(AgentStatus::Active.as_str())
            .fetch_all(w.conn())
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Revokes the VM's active agents; returns how many.
/// Their connections (on any controller) are told at commit and close.
pub async fn revoke_active(w: &mut WriteTx, vm: &str) -> Result<u64> {
    let now = w.now;
    let n =
        sqlx::query("UPDATE agents SET status = $1, revoked_ms = $2 WHERE vm = $3 AND status = $4")
            .bind(AgentStatus::Revoked.as_str())
            .bind(now)
            .bind(vm)
            .bind(AgentStatus::Active.as_str())
            .execute(w.conn())
            .await?
            .rows_affected();
    if n > 0 {
        w.agents_revoked(vm);
        inventory::raise_generation(w).await?;
    }
    Ok(n)
}

/// A newly enrolled agent.
pub struct NewAgent<'a> {
    pub id: &'a str,
    pub vm: &'a str,
    pub fingerprint: &'a str,
    pub serial: &'a str,
    pub cert_pem: &'a str,
    /// The certificate's notAfter (unix ms).
    pub not_after_ms: i64,
}

pub async fn insert(w: &mut WriteTx, a: &NewAgent<'_>) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO agents (id, vm, cert_fingerprint, cert_serial, status, enrolled_ms, \
         revoked_ms, last_seen_ms, heartbeat, cert_pem, cert_not_after_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL, $7, $8)",
    )
    .bind(a.id)
    .bind(a.vm)
    .bind(a.fingerprint)
    .bind(a.serial)
    .bind(AgentStatus::Active.as_str())
    .bind(now)
    .bind(a.cert_pem)
    .bind(a.not_after_ms)
    .execute(w.conn())
    .await?;
    inventory::raise_generation(w).await
}

/// An enrolled agent as the channel identifies it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentIdentity {
    pub id: String,
    pub vm: String,
    #[sqlx(try_from = "String")]
    pub status: AgentStatus,
    /// The protocol level and version of its last `Hello` (none before the first).
    pub protocol: Option<i64>,
    pub version: Option<String>,
    /// When it was enrolled: the grant-signing key it was handed was current then.
    pub enrolled_ms: i64,
}

impl AgentIdentity {
    /// Whether a `Hello` with this level and version changes what is stored: a fleet
    /// reconnecting after a controller went away (thousands at once) then writes nothing.
    pub fn hello_changes(&self, protocol: u32, version: &str) -> bool {
        let version: String = version.chars().take(VERSION_MAX_CHARS).collect();
        self.protocol != Some(i64::from(protocol)) || self.version.as_deref() != Some(&*version)
    }
}

/// How [`by_fingerprint`] looks an agent up: its current certificate, or an earlier one.
/// Two index lookups joined by `UNION`: written as `cert_fingerprint = $1 OR id IN (...)`,
/// PostgreSQL scanned every agent (9.5 ms at 10 000 agents, on every connection: a fleet
/// reconnecting at once exhausted the pool).
pub const BY_FINGERPRINT: &str = "SELECT id, vm, status, protocol, version, enrolled_ms \
     FROM agents WHERE cert_fingerprint = $1 \
     UNION SELECT a.id, a.vm, a.status, a.protocol, a.version, a.enrolled_ms FROM agent_certs c \
     JOIN agents a ON a.id = c.agent_id WHERE c.fingerprint = $2";

/// The agent holding a certificate (by the SHA-256 of its DER).
pub async fn by_fingerprint(
    ex: impl Executor<'_, Database = Any>,
    fp: &str,
) -> Result<Option<AgentIdentity>> {
    Ok(sqlx::query_as(BY_FINGERPRINT)
        .bind(fp)
        .bind(fp)
        .fetch_optional(ex)
        .await?)
}

/// The VM of an agent.
pub async fn vm_of(ex: impl Executor<'_, Database = Any>, id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT vm FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

pub async fn status(
    ex: impl Executor<'_, Database = Any>,
    id: &str,
) -> Result<Option<AgentStatus>> {
    let row: Option<(String,)> = sqlx::query_as("SELECT status FROM agents WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?;
    row.map(|r| AgentStatus::try_from(r.0).map_err(Error::corrupt))
        .transpose()
}

/// Rows per statement in [`seen_many`] (three parameters each).
const SEEN_CHUNK: usize = 500;

/// Marks many agents seen at `now`, writing the status reports given, in one statement per
/// [`SEEN_CHUNK`] agents (`fleet::reports`). Rows must be sorted by agent id, so that two
/// controllers' batches lock agent rows in the same order. A report that detaches or
/// re-attaches enforcement raises the inventory generation, once for the whole batch.
pub async fn seen_many(
    conn: &mut sqlx::AnyConnection,
    now: i64,
    rows: &[(String, Option<Heartbeat>)],
) -> Result<()> {
    for chunk in rows.chunks(SEEN_CHUNK) {
        let reports: Vec<(&str, i64)> = chunk
            .iter()
            .filter_map(|(id, h)| h.as_ref().map(|h| (id.as_str(), i64::from(h.detached()))))
            .collect();
        if !reports.is_empty() {
            let sql = format!(
                "WITH v(id, det) AS (VALUES {}) UPDATE inventory_generation SET value = value + 1 \
                 WHERE EXISTS (SELECT 1 FROM agents a JOIN v ON a.id = v.id WHERE a.detached <> v.det)",
                values_list(reports.len(), 2, 1)
            );
            let mut q = sqlx::query(&sql);
            for (id, det) in &reports {
                q = q.bind(*id).bind(*det);
            }
            q.execute(&mut *conn).await?;
        }
        let sql = format!(
            "WITH v(id, hb, det) AS (VALUES {}) UPDATE agents SET last_seen_ms = $1, \
             heartbeat = COALESCE(v.hb, agents.heartbeat), detached = COALESCE(v.det, agents.detached) \
             FROM v WHERE agents.id = v.id",
            values_list(chunk.len(), 3, 2)
        );
        let mut q = sqlx::query(&sql).bind(now);
        for (id, h) in chunk {
            let (hb, det) = match h {
                Some(h) => (
                    Some(serde_json::to_string(h)?),
                    Some(i64::from(h.detached())),
                ),
                None => (None, None),
            };
            q = q.bind(id.as_str()).bind(hb).bind(det);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Writes agents' hook reports (JSON arrays of [`InterfaceHook`]), one statement per
/// [`SEEN_CHUNK`] agents; rows sorted by agent id like [`seen_many`]'s.
pub async fn hooks_many(conn: &mut sqlx::AnyConnection, rows: &[(String, String)]) -> Result<()> {
    for chunk in rows.chunks(SEEN_CHUNK) {
        let sql = format!(
            "WITH v(id, hooks) AS (VALUES {}) UPDATE agents SET hooks = v.hooks \
             FROM v WHERE agents.id = v.id",
            values_list(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(&sql);
        for (id, hooks) in chunk {
            q = q.bind(id.as_str()).bind(hooks.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `($a, $b, ...), (...)`: `rows` tuples of `width` parameters numbered from `first`.
fn values_list(rows: usize, width: usize, first: usize) -> String {
    let mut s = String::new();
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..width {
            if c > 0 {
                s.push_str(", ");
            }
            s.push_str(&format!("${}", first + r * width + c));
        }
        s.push(')');
    }
    s
}

/// The longest agent version kept (the agent writes it: a longer one is cut).
pub const VERSION_MAX_CHARS: usize = 64;

/// The protocol level and version the agent announced in its Hello (and that it was seen
/// now). An agent below the level of hook reports (one replaced by an older version) has its
/// last hook report forgotten: it will not renew it.
pub async fn hello(w: &mut WriteTx, id: &str, protocol: u32, version: &str) -> Result<()> {
    let now = w.now;
    let version: String = version.chars().take(VERSION_MAX_CHARS).collect();
    let sql = format!(
        "UPDATE agents SET last_seen_ms = $1, protocol = $2, version = $3, \
         hooks = CASE WHEN $2 < {} THEN NULL ELSE hooks END WHERE id = $4",
        jitgate_proto::LEVEL_HOOK_REPORTS
    );
    sqlx::query(&sql)
        .bind(now)
        .bind(i64::from(protocol))
        .bind(version)
        .bind(id)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// The lowest protocol level among each named VM's active agents (a VM with none is absent:
/// nothing can be delivered there until one enrols, and it will say its level then).
pub async fn levels(
    w: &mut WriteTx,
    vms: &[&str],
) -> Result<std::collections::HashMap<String, u32>> {
    let mut out = std::collections::HashMap::new();
    for vm in vms {
        let row: Option<(Option<i64>,)> =
            sqlx::query_as("SELECT MIN(protocol) FROM agents WHERE vm = $1 AND status = $2")
                .bind(*vm)
                .bind(AgentStatus::Active.as_str())
                .fetch_optional(w.conn())
                .await?;
        if let Some((Some(level),)) = row {
            out.insert(vm.to_string(), u32::try_from(level).unwrap_or(1));
        }
    }
    Ok(out)
}

/// What the fleet's views read of every agent.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentColumns {
    pub id: String,
    pub vm: String,
    pub resource_group: String,
    #[sqlx(try_from = "String")]
    pub status: AgentStatus,
    pub enrolled_ms: i64,
    pub last_seen_ms: Option<i64>,
    heartbeat: Option<String>,
    hooks: Option<String>,
}

impl AgentColumns {
    pub fn heartbeat(&self) -> Result<Option<Heartbeat>> {
        heartbeat(self.heartbeat.clone())
    }

    /// The agent's last hook report (empty: none).
    pub fn hooks(&self) -> Result<Vec<InterfaceHook>> {
        hooks(self.hooks.as_deref())
    }
}

/// One agent of the fleet view.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FleetRow {
    #[sqlx(flatten)]
    pub agent: AgentColumns,
    /// Audit records stored from this agent.
    pub audit_records: i64,
}

/// Every enrolled agent (revoked ones too), by VM and enrolment.
pub async fn fleet(ex: impl Executor<'_, Database = Any>) -> Result<Vec<FleetRow>> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.vm, v.resource_group, a.status, a.enrolled_ms, a.last_seen_ms, \
         a.heartbeat, a.hooks, (SELECT COUNT(*) FROM agent_audit x WHERE x.agent_id = a.id) AS audit_records \
         FROM agents a JOIN vms v ON v.name = a.vm ORDER BY a.vm, a.enrolled_ms",
    )
    .fetch_all(ex)
    .await?)
}

/// One agent as the portal's Fleet page shows it: the fleet view's columns, the agent's
/// protocol level and version, and the highest record seq it delivered.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FleetPageRow {
    #[sqlx(flatten)]
    pub agent: AgentColumns,
    pub protocol: i64,
    pub version: Option<String>,
    /// The highest seq of the records stored from this agent (an index lookup, unlike a
    /// count).
    pub delivered_seq: Option<i64>,
}

const FLEET_PAGE_COLUMNS: &str = "SELECT a.id, a.vm, v.resource_group, a.status, \
     a.enrolled_ms, a.last_seen_ms, a.heartbeat, a.hooks, a.protocol, a.version, \
     (SELECT MAX(x.seq) FROM agent_audit x WHERE x.agent_id = a.id) AS delivered_seq \
     FROM agents a JOIN vms v ON v.name = a.vm";

/// Which agents a Fleet page lists.
pub struct FleetQuery<'a> {
    /// Part of the VM's name, any case (empty: any).
    pub name_part: &'a str,
    /// Only agents of this status (active or revoked).
    pub status: Option<AgentStatus>,
    /// The caller's scopes: only agents of VMs inside one of them.
    pub scopes: &'a [jitgate_api::Scope],
}

/// The next `limit` agents after (`after_vm`, `after_id`) in (VM name, agent id) order that
/// `q` keeps: one index range over `agents (vm, id)`, whatever the fleet's size.
pub async fn fleet_page(
    ex: impl Executor<'_, Database = Any>,
    q: &FleetQuery<'_>,
    (after_vm, after_id): (&str, &str),
    limit: i64,
) -> Result<Vec<FleetPageRow>> {
    use jitgate_api::Scope;
    if q.scopes.is_empty() {
        return Ok(Vec::new());
    }
    let mut texts: Vec<String> = vec![after_vm.into(), after_id.into()];
    let mut sql = format!("{FLEET_PAGE_COLUMNS} WHERE (a.vm > $1 OR (a.vm = $1 AND a.id > $2))");
    if let Some(st) = &q.status {
        texts.push(st.as_str().into());
        sql.push_str(&format!(" AND a.status = ${}", texts.len()));
    }
    if !q.name_part.is_empty() {
        texts.push(inventory::like_part(q.name_part));
        sql.push_str(&format!(
            " AND LOWER(a.vm) LIKE ${} ESCAPE '\\'",
            texts.len()
        ));
    }
    if !q.scopes.contains(&Scope::All) {
        let mut any: Vec<String> = Vec::new();
        for s in q.scopes {
            let (col, v) = match s {
                Scope::All => continue,
                Scope::ResourceGroup(g) => ("v.resource_group", g.as_str()),
                Scope::Vm(vm) => ("a.vm", vm.as_str()),
            };
            texts.push(v.into());
            any.push(format!("{col} = ${}", texts.len()));
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    sql.push_str(&format!(" ORDER BY a.vm, a.id LIMIT ${}", texts.len() + 1));
    let mut query = sqlx::query_as::<_, FleetPageRow>(&sql);
    for t in &texts {
        query = query.bind(t.as_str());
    }
    Ok(query.bind(limit).fetch_all(ex).await?)
}

/// One agent as the Fleet page shows it.
pub async fn fleet_agent(
    ex: impl Executor<'_, Database = Any>,
    id: &str,
) -> Result<Option<FleetPageRow>> {
    Ok(
        sqlx::query_as(&format!("{FLEET_PAGE_COLUMNS} WHERE a.id = $1"))
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

/// The order that puts a VM's newest agent (an active one before revoked ones) first, over
/// `agents a`; `$2` is the active status.
const NEWEST_FIRST: &str =
    "ORDER BY CASE WHEN a.status = $2 THEN 0 ELSE 1 END, a.enrolled_ms DESC, a.id";

/// The VM's newest agent ([`NEWEST_FIRST`]), as the Fleet page shows it: one query.
pub async fn vm_agent(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
) -> Result<Option<FleetPageRow>> {
    Ok(sqlx::query_as(&format!(
        "{FLEET_PAGE_COLUMNS} WHERE a.vm = $1 {NEWEST_FIRST} LIMIT 1"
    ))
    .bind(vm)
    .bind(AgentStatus::Active.as_str())
    .fetch_optional(ex)
    .await?)
}

/// The id of the VM's newest agent ([`NEWEST_FIRST`]).
pub async fn newest_of_vm(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(&format!(
        "SELECT a.id FROM agents a WHERE a.vm = $1 {NEWEST_FIRST} LIMIT 1"
    ))
    .bind(vm)
    .bind(AgentStatus::Active.as_str())
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|r| r.0))
}

/// The latest state of a VM's active agent.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    pub id: String,
    pub last_seen_ms: Option<i64>,
    pub heartbeat: Option<Heartbeat>,
    /// Its last hook report (empty: none).
    pub hooks: Vec<InterfaceHook>,
}

/// The active agent of each VM (the newest enrolment), by VM name.
pub async fn active_by_vm(
    ex: impl Executor<'_, Database = Any>,
) -> Result<HashMap<String, AgentRecord>> {
    type Row = (String, String, Option<i64>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, vm, last_seen_ms, heartbeat, hooks FROM agents WHERE status = $1 \
         ORDER BY enrolled_ms",
    )
    .bind(AgentStatus::Active.as_str())
    .fetch_all(ex)
    .await?;
    let mut out = HashMap::new();
    for (id, vm, last_seen_ms, hb, hk) in rows {
        out.insert(
            vm,
            AgentRecord {
                id,
                last_seen_ms,
                heartbeat: heartbeat(hb)?,
                hooks: hooks(hk.as_deref())?,
            },
        );
    }
    Ok(out)
}

/// The VM's agents (all it has had) with their certificates, by enrolment.
pub async fn certificates(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
) -> Result<Vec<(String, Option<String>)>> {
    Ok(
        sqlx::query_as("SELECT id, cert_pem FROM agents WHERE vm = $1 ORDER BY enrolled_ms, id")
            .bind(vm)
            .fetch_all(ex)
            .await?,
    )
}

/// An active agent as the offline watch sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WatchRow {
    pub id: String,
    pub vm: String,
    pub resource_group: String,
    pub last_seen_ms: Option<i64>,
    pub offline_told: i64,
}

/// The active agents whose offline state may have changed: told offline, or last heard
/// from before `before` (a connected agent is heard from every few seconds).
pub async fn watched(ex: impl Executor<'_, Database = Any>, before: i64) -> Result<Vec<WatchRow>> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.vm, v.resource_group, a.last_seen_ms, a.offline_told \
         FROM agents a JOIN vms v ON v.name = a.vm \
         WHERE a.status = $1 AND (a.offline_told = 1 OR a.last_seen_ms < $2) ORDER BY a.id",
    )
    .bind(AgentStatus::Active.as_str())
    .bind(before)
    .fetch_all(ex)
    .await?)
}

/// Flips the agent's `offline_told` from `from` to `to`; false when another controller did
/// it first (so each change is told once).
pub async fn set_offline_told(w: &mut WriteTx, id: &str, from: bool, to: bool) -> Result<bool> {
    let r = sqlx::query("UPDATE agents SET offline_told = $1 WHERE id = $2 AND offline_told = $3")
        .bind(i64::from(to))
        .bind(id)
        .bind(i64::from(from))
        .execute(w.conn())
        .await?;
    Ok(r.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_state_ignores_when_and_small_offset_moves_only() {
        let a = Heartbeat {
            interfaces: vec!["eth0 (native)".into()],
            active_grants: 2,
            audit_seq: 9,
            received_time_utc: "2026-11-30T10:00:00.000Z".into(),
            received_ms: Some(1_000),
            clock_offset_ms: Some(120),
            status_reported: true,
            ..Heartbeat::default()
        };
        let later = Heartbeat {
            received_time_utc: "2026-11-30T10:00:10.000Z".into(),
            received_ms: Some(11_000),
            clock_offset_ms: Some(900),
            ..a.clone()
        };
        assert!(a.same_state(&later));
        for changed in [
            Heartbeat {
                active_grants: 3,
                ..later.clone()
            },
            Heartbeat {
                audit_seq: 10,
                ..later.clone()
            },
            Heartbeat {
                problems: vec!["eth0: link no longer pinned".into()],
                ..later.clone()
            },
            Heartbeat {
                clock_offset_ms: Some(120 + 300_000),
                ..later.clone()
            },
            Heartbeat {
                clock_offset_ms: None,
                ..later.clone()
            },
        ] {
            assert!(!a.same_state(&changed), "{changed:?}");
        }
    }
}
