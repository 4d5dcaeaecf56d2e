//! The `policies` table: each VM's and resource group's JIT policy, as its canonical JSON
//! body (`PolicyBody`, written only after validation).

use std::collections::HashSet;

use jitgate_api::{PolicyBody, PolicyScope};
use sqlx::{Any, AnyConnection, Executor};

use crate::error::Result;
use crate::store::db::Json;
use crate::store::inventory;
use crate::store::write::WriteTx;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PolicyRow {
    #[sqlx(try_from = "String")]
    pub scope_kind: PolicyScope,
    pub scope_name: String,
    #[sqlx(try_from = "String")]
    pub body: Json<PolicyBody>,
    pub updated_ms: i64,
    pub updated_by: String,
}

const COLUMNS: &str = "scope_kind, scope_name, body, updated_ms, updated_by";

pub async fn get(
    ex: impl Executor<'_, Database = Any>,
    scope: PolicyScope,
    name: &str,
) -> Result<Option<PolicyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM policies WHERE scope_kind = $1 AND scope_name = $2"
    ))
    .bind(scope.as_str())
    .bind(name)
    .fetch_optional(ex)
    .await?)
}

/// Every policy, by scope and name.
pub async fn all(ex: impl Executor<'_, Database = Any>) -> Result<Vec<PolicyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM policies ORDER BY scope_kind, scope_name"
    ))
    .fetch_all(ex)
    .await?)
}

/// Every (scope, name) that has a policy.
pub async fn targets(
    ex: impl Executor<'_, Database = Any>,
) -> Result<HashSet<(PolicyScope, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT scope_kind, scope_name FROM policies")
        .fetch_all(ex)
        .await?;
    rows.into_iter()
        .map(|(k, n)| {
            Ok((
                PolicyScope::try_from(k).map_err(crate::error::Error::corrupt)?,
                n,
            ))
        })
        .collect()
}

/// Creates or replaces a policy; true if it was created.
pub async fn put(
    w: &mut WriteTx,
    scope: PolicyScope,
    name: &str,
    body: &PolicyBody,
    by: &str,
) -> Result<bool> {
    let body = serde_json::to_string(body)?;
    let now = w.now;
    let updated = sqlx::query(
        "UPDATE policies SET body = $1, updated_ms = $2, updated_by = $3 \
         WHERE scope_kind = $4 AND scope_name = $5",
    )
    .bind(&body)
    .bind(now)
    .bind(by)
    .bind(scope.as_str())
    .bind(name)
    .execute(w.conn())
    .await?
    .rows_affected();
    if updated > 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO policies (scope_kind, scope_name, body, updated_ms, updated_by) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(scope.as_str())
    .bind(name)
    .bind(&body)
    .bind(now)
    .bind(by)
    .execute(w.conn())
    .await?;
    // A new policy can move VMs to another tab of the portal's JIT page (a replaced one
    // cannot).
    inventory::raise_generation(w).await?;
    Ok(true)
}

/// Deletes a policy; false if there was none.
pub async fn delete(w: &mut WriteTx, scope: PolicyScope, name: &str) -> Result<bool> {
    let n = sqlx::query("DELETE FROM policies WHERE scope_kind = $1 AND scope_name = $2")
        .bind(scope.as_str())
        .bind(name)
        .execute(w.conn())
        .await?
        .rows_affected();
    if n > 0 {
        inventory::raise_generation(w).await?;
    }
    Ok(n > 0)
}

/// The policies of these targets (portable: chunks of OR-ed pairs).
pub async fn of_targets(
    conn: &mut AnyConnection,
    targets: &[(PolicyScope, &str)],
) -> Result<Vec<PolicyRow>> {
    let mut out = Vec::new();
    for chunk in targets.chunks(500) {
        let mut sql = format!("SELECT {COLUMNS} FROM policies WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!(
                "(scope_kind = ${} AND scope_name = ${})",
                2 * i + 1,
                2 * i + 2
            ));
        }
        let mut q = sqlx::query_as::<_, PolicyRow>(&sql);
        for (k, n) in chunk {
            q = q.bind(k.as_str()).bind(*n);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}
