//! The `resource_groups` and `vms` tables: what the controller manages.

use std::collections::HashMap;

use jitgate_api::ErrorCode;
use sqlx::{Any, AnyConnection, Executor};

use crate::error::{Error, Result};
use crate::store::db::Json;
use crate::store::write::WriteTx;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct GroupRow {
    pub name: String,
    /// Who receives the group's remediation requests.
    pub owner: String,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VmRow {
    pub name: String,
    pub resource_group: String,
    #[sqlx(try_from = "String")]
    pub addresses: Json<Vec<String>>,
}

pub async fn group(ex: impl Executor<'_, Database = Any>, name: &str) -> Result<Option<GroupRow>> {
    Ok(
        sqlx::query_as("SELECT name, owner FROM resource_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

pub async fn groups(ex: impl Executor<'_, Database = Any>) -> Result<Vec<GroupRow>> {
    Ok(
        sqlx::query_as("SELECT name, owner FROM resource_groups ORDER BY name")
            .fetch_all(ex)
            .await?,
    )
}

pub async fn insert_group(w: &mut WriteTx, name: &str, owner: &str) -> Result<()> {
    let now = w.now;
    sqlx::query("INSERT INTO resource_groups (name, owner, created_ms) VALUES ($1, $2, $3)")
        .bind(name)
        .bind(owner)
        .bind(now)
        .execute(w.conn())
        .await?;
    raise_generation(w).await
}

pub async fn vm(ex: impl Executor<'_, Database = Any>, name: &str) -> Result<Option<VmRow>> {
    Ok(
        sqlx::query_as("SELECT name, resource_group, addresses FROM vms WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

pub async fn vms(ex: impl Executor<'_, Database = Any>) -> Result<Vec<VmRow>> {
    Ok(
        sqlx::query_as("SELECT name, resource_group, addresses FROM vms ORDER BY name")
            .fetch_all(ex)
            .await?,
    )
}

pub async fn insert_vm(
    w: &mut WriteTx,
    name: &str,
    group: &str,
    addresses: &[String],
) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO vms (name, resource_group, addresses, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(group)
    .bind(serde_json::to_string(addresses)?)
    .bind(now)
    .execute(w.conn())
    .await?;
    raise_generation(w).await
}

pub async fn set_group_owner(w: &mut WriteTx, name: &str, owner: &str) -> Result<()> {
    sqlx::query("UPDATE resource_groups SET owner = $1 WHERE name = $2")
        .bind(owner)
        .bind(name)
        .execute(w.conn())
        .await?;
    raise_generation(w).await
}

pub async fn delete_group(w: &mut WriteTx, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM resource_groups WHERE name = $1")
        .bind(name)
        .execute(w.conn())
        .await?;
    raise_generation(w).await
}

/// How many VMs are in the group.
pub async fn vms_in(conn: &mut AnyConnection, group: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE resource_group = $1")
            .bind(group)
            .fetch_one(conn)
            .await?,
    )
}

/// A group's VMs split by whether they have a policy of their own.
pub struct GroupVms {
    /// VMs without one (the group's policy is theirs), by name, at most the limit.
    pub taking: Vec<String>,
    pub taking_count: i64,
    /// VMs with one, by name, at most the limit.
    pub own: Vec<String>,
    pub own_count: i64,
}

/// The group's VMs, split by whether they have a policy of their own (`vms_by_group` and
/// the policies' primary key; `limit` names of each kind, exact counts).
pub async fn group_vms_by_policy(
    conn: &mut AnyConnection,
    group: &str,
    limit: i64,
) -> Result<GroupVms> {
    let mut out = GroupVms {
        taking: Vec::new(),
        taking_count: 0,
        own: Vec::new(),
        own_count: 0,
    };
    for own in [false, true] {
        let cond = if own { "EXISTS" } else { "NOT EXISTS" };
        let of_kind = format!(
            "FROM vms v WHERE v.resource_group = $1 AND {cond} (SELECT 1 FROM policies p \
             WHERE p.scope_kind = $2 AND p.scope_name = v.name)"
        );
        let kind = jitgate_api::PolicyScope::VirtualMachine.as_str();
        let names: Vec<String> =
            sqlx::query_scalar(&format!("SELECT v.name {of_kind} ORDER BY v.name LIMIT $3"))
                .bind(group)
                .bind(kind)
                .bind(limit)
                .fetch_all(&mut *conn)
                .await?;
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) {of_kind}"))
            .bind(group)
            .bind(kind)
            .fetch_one(&mut *conn)
            .await?;
        if own {
            (out.own, out.own_count) = (names, count);
        } else {
            (out.taking, out.taking_count) = (names, count);
        }
    }
    Ok(out)
}

pub async fn update_vm(
    w: &mut WriteTx,
    name: &str,
    group: &str,
    addresses: &[String],
) -> Result<()> {
    sqlx::query("UPDATE vms SET resource_group = $1, addresses = $2 WHERE name = $3")
        .bind(group)
        .bind(serde_json::to_string(addresses)?)
        .bind(name)
        .execute(w.conn())
        .await?;
    raise_generation(w).await
}

/// Whether an agent or an enrolment token was ever made for the VM (their rows name it).
pub async fn vm_has_agents(conn: &mut AnyConnection, name: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM agents WHERE vm = $1) \
         + (SELECT COUNT(*) FROM enroll_tokens WHERE vm = $1)",
    )
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

pub async fn delete_vm(w: &mut WriteTx, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM vms WHERE name = $1")
        .bind(name)
        .execute(w.conn())
        .await?;
    raise_generation(w).await
}

/// The resource group of each named VM that exists (portable: chunks of `IN` lists).
pub async fn groups_of(
    conn: &mut AnyConnection,
    names: &[&str],
) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for chunk in names.chunks(500) {
        let ph: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT name, resource_group FROM vms WHERE name IN ({})",
            ph.join(",")
        );
        let mut q = sqlx::query_as::<_, (String, String)>(&sql);
        for n in chunk {
            q = q.bind(*n);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// The VM, or VmNotFound.
pub async fn require_vm(ex: impl Executor<'_, Database = Any>, name: &str) -> Result<VmRow> {
    vm(ex, name)
        .await?
        .ok_or_else(|| Error::refused(ErrorCode::VmNotFound, format!("no VM {name}")))
}

/// The resource group, or ResourceGroupNotFound.
pub async fn require_group(ex: impl Executor<'_, Database = Any>, name: &str) -> Result<GroupRow> {
    group(ex, name).await?.ok_or_else(|| {
        Error::refused(
            ErrorCode::ResourceGroupNotFound,
            format!("no resource group {name}"),
        )
    })
}

/// The inventory generation (see migration 0014): raised by every write that can move a VM
/// between the JIT page's tabs, so that counts cached under it are known to be current.
pub async fn generation(ex: impl Executor<'_, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT value FROM inventory_generation")
        .fetch_one(ex)
        .await?)
}

/// Raises the inventory generation with the transaction: it changes what decides a VM's tab
/// (its policy's existence, its active agent, whether enforcement is detached, the VM itself).
pub async fn raise_generation(w: &mut WriteTx) -> Result<()> {
    sqlx::query("UPDATE inventory_generation SET value = value + 1")
        .execute(w.conn())
        .await?;
    Ok(())
}

/// The portal's JIT list: which VMs the filters and the caller's scopes keep, each in one tab.
pub struct JitQuery<'a> {
    /// Part of the name, any case (empty: any).
    pub name_part: &'a str,
    /// The resource group, exactly (empty: any).
    pub group: &'a str,
    /// The group's owner, exactly (empty: any).
    pub owner: &'a str,
    /// The caller's scopes as (resource group, VM) pairs: `(None, None)` is everything.
    pub scopes: &'a [(Option<&'a str>, Option<&'a str>)],
}

/// One VM of the JIT list, as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct JitRow {
    pub name: String,
    pub resource_group: String,
    pub owner: String,
    pub agent_id: Option<String>,
    pub last_seen_ms: Option<i64>,
    pub heartbeat: Option<String>,
    /// 0 configured, 1 not configured, 2 unsupported ([`crate::inventory::JitTab`]).
    pub tab: i64,
    /// 1 when a revoked agent of the VM exists.
    pub revoked: i64,
}

/// The tab of a VM of [`jit_from`]: 1 without a policy (of the VM or of its group), else 2
/// without an active agent or with enforcement detached, else 0.
const JIT_TAB: &str = "CASE WHEN pv.scope_name IS NULL AND pg.scope_name IS NULL THEN 1 \
     WHEN a.id IS NULL OR a.detached = 1 THEN 2 ELSE 0 END";

/// The `FROM ... WHERE ...` of the VMs the filters and scopes keep (`v`), joined with their
/// group (`g`), their own policy (`pv`), their group's policy (`pg`) and their active agent
/// (`a`): one index lookup each per VM. The binds it needs in order after the first `first`
/// placeholders.
fn jit_from(q: &JitQuery<'_>, first: usize) -> (String, Vec<String>) {
    use jitgate_api::{AgentStatus, PolicyScope};
    let mut binds: Vec<String> = vec![
        PolicyScope::VirtualMachine.as_str().into(),
        PolicyScope::ResourceGroup.as_str().into(),
        AgentStatus::Active.as_str().into(),
    ];
    let p = |binds: &Vec<String>| format!("${}", first + binds.len());
    let mut sql = format!(
        "FROM vms v LEFT JOIN resource_groups g ON g.name = v.resource_group \
         LEFT JOIN policies pv ON pv.scope_kind = ${} AND pv.scope_name = v.name \
         LEFT JOIN policies pg ON pg.scope_kind = ${} AND pg.scope_name = v.resource_group \
         LEFT JOIN agents a ON a.vm = v.name AND a.status = ${} WHERE 1 = 1",
        first + 1,
        first + 2,
        first + 3
    );
    if !q.name_part.is_empty() {
        binds.push(like_part(q.name_part));
        sql.push_str(&format!(
            " AND LOWER(v.name) LIKE {} ESCAPE '\\'",
            p(&binds)
        ));
    }
    if !q.group.is_empty() {
        binds.push(q.group.into());
        sql.push_str(&format!(" AND v.resource_group = {}", p(&binds)));
    }
    if !q.owner.is_empty() {
        binds.push(q.owner.into());
        sql.push_str(&format!(" AND g.owner = {}", p(&binds)));
    }
    if !q.scopes.contains(&(None, None)) {
        let mut any = Vec::new();
        for s in q.scopes {
            match s {
                (Some(g), _) => {
                    binds.push((*g).into());
                    any.push(format!("v.resource_group = {}", p(&binds)));
                }
                (None, Some(vm)) => {
                    binds.push((*vm).into());
                    any.push(format!("v.name = {}", p(&binds)));
                }
                (None, None) => {}
            }
        }
        if any.is_empty() {
            any.push("1 = 0".into());
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    (sql, binds)
}

/// A `LIKE ... ESCAPE '\\'` pattern matching any text that contains `part` (any case, when
/// the column is lowered): its `%`, `_` and `\\` match only themselves.
pub fn like_part(part: &str) -> String {
    let escaped = part
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// How many VMs each tab holds: `[configured, not configured, unsupported]`.
pub async fn jit_counts(
    ex: impl Executor<'_, Database = Any>,
    q: &JitQuery<'_>,
) -> Result<[usize; 3]> {
    let (from, binds) = jit_from(q, 0);
    let sql = format!(
        "SELECT COALESCE(SUM(CASE WHEN t = 0 THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN t = 1 THEN 1 ELSE 0 END), 0), \
         COALESCE(SUM(CASE WHEN t = 2 THEN 1 ELSE 0 END), 0) \
         FROM (SELECT {JIT_TAB} AS t {from}) c"
    );
    let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
    for b in &binds {
        query = query.bind(b.as_str());
    }
    let (c, n, u) = query.fetch_one(ex).await?;
    let count = |x: i64| usize::try_from(x).unwrap_or(0);
    Ok([count(c), count(n), count(u)])
}

/// A page of one tab, by name after `after`, at most `limit` rows.
pub async fn jit_page(
    ex: impl Executor<'_, Database = Any>,
    q: &JitQuery<'_>,
    tab: i64,
    after: &str,
    limit: i64,
) -> Result<Vec<JitRow>> {
    let (from, binds) = jit_from(q, 4);
    let sql = format!(
        "SELECT t.* FROM (SELECT v.name AS name, v.resource_group AS resource_group, \
         COALESCE(g.owner, '') AS owner, a.id AS agent_id, a.last_seen_ms AS last_seen_ms, \
         a.heartbeat AS heartbeat, {JIT_TAB} AS tab, \
         CASE WHEN EXISTS (SELECT 1 FROM agents r WHERE r.vm = v.name AND r.status = $4) \
         THEN 1 ELSE 0 END AS revoked {from}) t \
         WHERE t.tab = $1 AND t.name > $2 ORDER BY t.name LIMIT $3"
    );
    let mut query = sqlx::query_as::<_, JitRow>(&sql)
        .bind(tab)
        .bind(after)
        .bind(limit)
        .bind(jitgate_api::AgentStatus::Revoked.as_str());
    for b in &binds {
        query = query.bind(b.as_str());
    }
    Ok(query.fetch_all(ex).await?)
}
