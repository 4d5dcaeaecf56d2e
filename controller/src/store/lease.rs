//! The `leases` table: who does the once-per-cluster work, under which epoch, until when.
//!
//! Every statement here runs inside a write transaction (`store::write::WriteTx`, whose
//! connection and time the callers pass): those lock the counter rows first, so a takeover
//! and the holder's fenced writes are serialised on both backends, and a fenced write that
//! checked its epoch commits before any takeover can.

use sqlx::{Any, AnyConnection, Executor};

use crate::error::{Error, Result};

/// The lease the once-per-cluster work runs under.
pub const LEADER: &str = "leader";

/// What a holder proves in each of its writes: this lease, held by it, in this epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub name: &'static str,
    pub holder: String,
    pub epoch: i64,
}

tokio::task_local! {
    /// The fence of the leader work running on this task: every write transaction committed
    /// inside [`fenced`] checks it ([`check`]) and is refused when the lease moved on. A task
    /// value, not a global: only the futures given to [`fenced`] carry it.
    static FENCE: Fence;
}

/// Runs `work` so that each write transaction it commits checks `fence` first.
pub async fn fenced<F: std::future::Future>(fence: Fence, work: F) -> F::Output {
    FENCE.scope(fence, work).await
}

/// The fence of the work running on this task, if it runs under one.
pub fn current() -> Option<Fence> {
    FENCE.try_with(Clone::clone).ok()
}

/// A lease row.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct LeaseRow {
    pub holder: String,
    pub epoch: i64,
    pub acquired_ms: i64,
    pub expires_ms: i64,
    /// The holder's cluster configuration fingerprint (`state::Config::fingerprint`).
    pub config: String,
    /// The holder's version.
    pub version: String,
}

/// What a holder writes about itself into the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderInfo {
    pub config: String,
    pub version: String,
}

/// The lease as stored.
pub async fn get(ex: impl Executor<'_, Database = Any>, name: &str) -> Result<Option<LeaseRow>> {
    Ok(
        sqlx::query_as("SELECT holder, epoch, acquired_ms, expires_ms, config, version FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(ex)
            .await?,
    )
}

/// Takes the lease for `holder` if it has expired (or was given up): a new epoch. None when
/// someone else holds it.
pub async fn take(
    conn: &mut AnyConnection,
    now: i64,
    name: &'static str,
    holder: &str,
    info: &HolderInfo,
    ttl_ms: i64,
) -> Result<Option<Fence>> {
    let epoch: Option<i64> = sqlx::query_scalar(
        "UPDATE leases SET holder = $1, epoch = epoch + 1, acquired_ms = $2, expires_ms = $3, \
         config = $5, version = $6 WHERE name = $4 AND expires_ms <= $2 RETURNING epoch",
    )
    .bind(holder)
    .bind(now)
    .bind(now.saturating_add(ttl_ms))
    .bind(name)
    .bind(&info.config)
    .bind(&info.version)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(epoch.map(|epoch| Fence {
        name,
        holder: holder.to_string(),
        epoch,
    }))
}

/// Extends the lease while `fence` still holds it (and it has not expired). False when it
/// was lost.
pub async fn renew(
    conn: &mut AnyConnection,
    now: i64,
    fence: &Fence,
    info: &HolderInfo,
    ttl_ms: i64,
) -> Result<bool> {
    let n = sqlx::query(
        "UPDATE leases SET expires_ms = $1, config = $6, version = $7 \
         WHERE name = $2 AND holder = $3 AND epoch = $4 AND expires_ms > $5",
    )
    .bind(now.saturating_add(ttl_ms))
    .bind(fence.name)
    .bind(&fence.holder)
    .bind(fence.epoch)
    .bind(now)
    .bind(&info.config)
    .bind(&info.version)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Gives the lease up (a controller stopping): another controller may take it at once.
pub async fn release(conn: &mut AnyConnection, fence: &Fence) -> Result<()> {
    sqlx::query("UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND epoch = $3")
        .bind(fence.name)
        .bind(&fence.holder)
        .bind(fence.epoch)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The fencing check, inside the transaction about to commit: refused unless `fence` still
/// holds an unexpired lease.
pub async fn check(conn: &mut AnyConnection, now: i64, fence: &Fence) -> Result<()> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT epoch FROM leases \
         WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_ms > $4",
    )
    .bind(fence.name)
    .bind(&fence.holder)
    .bind(fence.epoch)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(Error::Fenced {
            lease: fence.name,
            epoch: fence.epoch,
        }),
    }
}
