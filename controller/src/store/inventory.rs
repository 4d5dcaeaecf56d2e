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
    Ok(())
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
    Ok(())
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
