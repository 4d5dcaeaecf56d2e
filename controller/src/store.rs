//! Storage: sqlx's `Any` driver over SQLite (embedded default, a real file) or PostgreSQL
//! (a configuration change: `database_url = "postgres://..."`). All SQL is portable and uses
//! `$n` placeholders, which both backends accept.
//!
//! Every state change runs in one transaction that starts by locking the activity log's chain
//! head (the `counters` row `chain`), appends its activity entries, and commits; any error
//! rolls the whole change back, so nothing is written on an error.

use jitgate_api::ErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::StatusCode;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};

use crate::auth::{self, Caller, Role, Scope};
use crate::error::{ApiError, StoreError};
use crate::model::{self, Initiate, Policy, fmt_time, now_ms};
use jitgate_api::{
    ActivityQuery as ActivityFilter, AgentConnection, DenialReason, OnExpiry, PolicyBody,
    PolicyScope, PolicyView, PortStatus, RequestPort as RequestPortJson,
    RequestView as RequestJson, RequestVm as RequestVmJson, StatusReason, Vm as VmJson,
};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Migrations, applied in order, each once, in a transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", include_str!("../migrations/0001_initial.sql")),
    (2, "agents", include_str!("../migrations/0002_agents.sql")),
    (
        3,
        "compliance",
        include_str!("../migrations/0003_compliance.sql"),
    ),
    (
        4,
        "agent audit view",
        include_str!("../migrations/0004_agent_audit_view.sql"),
    ),
    (
        5,
        "activity checkpoints and agent certificates",
        include_str!("../migrations/0005_activity_checkpoints.sql"),
    ),
];

pub(crate) const ACTIVITY_INSERT: &str = "INSERT INTO activity (seq, time_ms, operation, \
    resource_type, resource_group, vm, caller, caller_address, outcome, request_id, details, \
    prev_hash, hash)";

/// Writes the chain head (seq, hash) and the request and outbox counters, from parameters
/// `$n`..`$n+3` in the order seq, request, outbox, hash.
pub(crate) fn counters_update(n: usize) -> String {
    format!(
        "UPDATE counters SET value = CASE name WHEN 'chain' THEN CAST(${} AS BIGINT) \
         WHEN 'request' THEN CAST(${} AS BIGINT) ELSE CAST(${} AS BIGINT) END, \
         hash = CASE name WHEN 'chain' THEN CAST(${} AS TEXT) ELSE hash END \
         WHERE name IN ('chain', 'request', 'outbox')",
        n,
        n + 1,
        n + 2,
        n + 3
    )
}

/// Bumped after every commit that wrote grant outbox rows: the agent connections wake and
/// read their VM's new rows.
static OUTBOX_HEAD: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// A receiver that changes whenever new grant outbox rows are committed (in this process).
pub fn outbox_watch() -> tokio::sync::watch::Receiver<u64> {
    OUTBOX_HEAD.subscribe()
}

/// Bumped after every committed policy change: the agent connections re-send their VM's
/// policy if its version changed.
static POLICY_GEN: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::channel(0).0);

/// A receiver that changes whenever a JIT policy change is committed (in this process).
pub fn policy_watch() -> tokio::sync::watch::Receiver<u64> {
    POLICY_GEN.subscribe()
}

pub use jitgate_proto::audit::{ActivityEntry, Checkpoint, GENESIS_HASH};
use jitgate_proto::audit::{ChainWalk, HashInput, entry_hash};

/// Activity log operation names (Azure's where Azure has one).
pub mod op {
    pub const INITIATE: &str = "Initiate JIT Network Access";
    pub const UPDATE_POLICY: &str = "Update JIT Network Access Policy";
    pub const DELETE_POLICY: &str = "Delete JIT Network Access Policy";
    pub const REVOKE: &str = "Revoke JIT Network Access";
    pub const EXPIRE: &str = "Expire JIT Network Access";
    pub const APPLY: &str = "Apply JIT Network Access";
    pub const CREATE_TOKEN: &str = "Create API Token";
    pub const REVOKE_TOKEN: &str = "Revoke API Token";
    pub const ADD_VM: &str = "Add Virtual Machine";
    pub const ADD_GROUP: &str = "Add Resource Group";
    pub const CREATE_ENROLL_TOKEN: &str = "Create Agent Enrollment Token";
    pub const ENROLL_AGENT: &str = "Enroll Agent";
    pub const REVOKE_AGENT: &str = "Revoke Agent";
    pub const AGENT_REJECT: &str = "Agent Rejected JIT Network Access";
    pub const AGENT_RESULT: &str = "Agent Result";
    pub const LOCAL_ACCESS: &str = "Local Break-Glass JIT Network Access";
    pub const ASSIGN_COMPLIANCE: &str = "Assign Compliance Policy";
    pub const UNASSIGN_COMPLIANCE: &str = "Delete Compliance Policy Assignment";
    pub const REMEDIATE: &str = "Remediate Compliance";
}

/// Who did something, for the activity log.
#[derive(Clone, Debug)]
pub struct Actor {
    pub name: String,
    pub address: String,
}

impl Actor {
    /// The local administrator running `jit-controller` subcommands on the host.
    pub fn local() -> Actor {
        Actor {
            name: "local:root".into(),
            address: "local".into(),
        }
    }
    pub fn controller() -> Actor {
        Actor {
            name: "controller".into(),
            address: "local".into(),
        }
    }
    pub fn of(c: &Caller) -> Actor {
        Actor {
            name: c.name.clone(),
            address: c.address.to_string(),
        }
    }
}

pub struct NewActivity<'a> {
    pub operation: &'static str,
    pub resource_type: &'static str,
    pub resource_group: &'a str,
    pub vm: &'a str,
    pub actor: &'a Actor,
    pub outcome: &'a str,
    pub request_id: &'a str,
    pub details: serde_json::Value,
}

/// An activity entry to append, owning its fields (for bulk appends).
pub struct NewActivityOwned {
    pub operation: &'static str,
    pub resource_type: &'static str,
    pub resource_group: String,
    pub vm: String,
    pub actor: Actor,
    pub outcome: &'static str,
    pub request_id: String,
    pub details: serde_json::Value,
}

/// The activity log's verification report (shared with offline verification).
pub use jitgate_proto::audit::Report as VerifyReport;

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub created_time_utc: String,
    pub expires_time_utc: Option<String>,
    pub revoked_time_utc: Option<String>,
}

/// A grant waiting in the outbox for its VM's agent (the seam to the agent channel).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboxItem {
    pub seq: i64,
    pub vm: String,
    /// apply | revoke
    pub op: String,
    pub grant_id: String,
    pub request_id: String,
    pub protocol: String,
    pub port: u16,
    pub prefix: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub on_expiry: String,
    /// Grants this one supersedes: the agent removes them only once this one is in place,
    /// so a flow the new grant covers is never cut.
    pub replaces: Vec<String>,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Serialises this process's write transactions (SQLite has one writer; waiting here is
    /// cheaper and fairer than SQLite's busy-retry sleeps).
    write_lock: Arc<tokio::sync::Mutex<AnyConnection>>,
    /// Queue of the group-commit writer for initiates (see `batch`).
    initiator: tokio::sync::mpsc::Sender<crate::batch::Job>,
    /// Queue of the group-commit writer for agents' acknowledgements.
    acker: tokio::sync::mpsc::Sender<AckJob>,
    pub backend: String,
    /// The key checkpoints are verified with (the controller's Ed25519 key, loaded from the
    /// state directory, never from the database a writer could change).
    checkpoint_key: Arc<std::sync::OnceLock<ed25519_dalek::VerifyingKey>>,
}

/// An agent's acknowledgement waiting for the acknowledgement writer.
pub struct AckJob {
    actor: Actor,
    grant_id: String,
    reply: tokio::sync::oneshot::Sender<Result<()>>,
}

/// Most acknowledgements committed in one transaction.
const MAX_ACKS: usize = 256;

/// Commits agents' acknowledgements in groups: whatever is waiting (up to `MAX_ACKS`) in one
/// transaction, one fsync, each applied exactly as alone. A grant the store does not know is
/// answered with its error and writes nothing; a database error rolls the group back and
/// every acknowledgement in it gets the error (the grant stays pending and is redelivered on
/// the agent's next connection, which acknowledges it again).
async fn ack_writer(
    lock: Arc<tokio::sync::Mutex<AnyConnection>>,
    sqlite: bool,
    mut rx: tokio::sync::mpsc::Receiver<AckJob>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_ACKS {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let res: Result<Vec<Result<()>>> = async {
            let mut w = begin_write_on(&lock, sqlite).await?;
            let mut out = Vec::with_capacity(jobs.len());
            for j in &jobs {
                out.push(match ack_in(&mut w, &j.actor, &j.grant_id).await {
                    Err(StoreError::Api(e)) => Err(StoreError::Api(e)),
                    Err(e) => return Err(e),
                    Ok(()) => Ok(()),
                });
            }
            w.commit().await?;
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
                    let _ = j.reply.send(Err(StoreError::Corrupt(e.to_string())));
                }
            }
        }
    }
}

fn ai(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The writer connection while a write transaction is open. If dropped without `COMMIT`
/// (any error), the transaction is rolled back before the connection is released.
pub struct WriterConn {
    guard: Option<tokio::sync::OwnedMutexGuard<AnyConnection>>,
    open: bool,
}

impl std::ops::Deref for WriterConn {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match &self.guard {
            Some(g) => g,
            None => unreachable!("the writer connection is held until drop"),
        }
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.guard {
            Some(g) => g,
            None => unreachable!("the writer connection is held until drop"),
        }
    }
}

impl Drop for WriterConn {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        if let Some(mut g) = self.guard.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            // The lock stays held until the rollback has run.
            rt.spawn(async move {
                if let Err(e) = sqlx::Executor::execute(&mut *g, "ROLLBACK").await {
                    tracing::error!(error = %e, "rollback failed");
                }
            });
        }
    }
}

/// A write transaction holding the chain head.
pub struct WriteTx {
    /// The writer connection, inside an open transaction (derefs to the connection).
    pub tx: WriterConn,
    head_seq: i64,
    head_hash: String,
    /// The `request` and `outbox` counters, read at the start, written at commit.
    pub(crate) request_ctr: i64,
    pub(crate) outbox_ctr: i64,
    /// The outbox counter when the transaction started: more at commit wakes the agent
    /// connections (`outbox_watch`).
    outbox_start: i64,
    dirty: bool,
    /// SQLite (bulk inserts through json_each) or PostgreSQL (multi-row VALUES).
    pub(crate) sqlite: bool,
    pub now: i64,
}

impl WriteTx {
    /// Appends an activity log entry, chained to the previous one.
    pub async fn log(&mut self, a: NewActivity<'_>) -> Result<i64> {
        let seq = self.head_seq + 1;
        let details = serde_json::to_string(&a.details)?;
        let hash = entry_hash(&HashInput {
            seq,
            time_ms: self.now,
            operation: a.operation,
            resource_type: a.resource_type,
            resource_group: a.resource_group,
            vm: a.vm,
            caller: &a.actor.name,
            caller_address: &a.actor.address,
            outcome: a.outcome,
            request_id: a.request_id,
            details: &details,
            prev_hash: &self.head_hash,
        });
        sqlx::query(
            "INSERT INTO activity (seq, time_ms, operation, resource_type, resource_group, vm, \
             caller, caller_address, outcome, request_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .bind(seq)
        .bind(self.now)
        .bind(a.operation)
        .bind(a.resource_type)
        .bind(a.resource_group)
        .bind(a.vm)
        .bind(&a.actor.name)
        .bind(&a.actor.address)
        .bind(a.outcome)
        .bind(a.request_id)
        .bind(&details)
        .bind(&self.head_hash)
        .bind(&hash)
        .execute(&mut *self.tx)
        .await?;
        tracing::info!(
            seq,
            operation = a.operation,
            resource_group = a.resource_group,
            vm = a.vm,
            caller = %a.actor.name,
            caller_address = %a.actor.address,
            outcome = a.outcome,
            request_id = a.request_id,
            "activity"
        );
        self.head_seq = seq;
        self.head_hash = hash;
        self.dirty = true;
        Ok(seq)
    }

    /// Appends several entries, chained in order, with multi-row inserts.
    pub async fn log_bulk(&mut self, entries: Vec<NewActivityOwned>) -> Result<()> {
        let rows = self.chain_rows(entries)?;
        crate::batch::insert_rows(&mut self.tx, self.sqlite, ACTIVITY_INSERT, 13, rows).await
    }

    /// Chains entries after the current head (advancing it) and returns their rows for
    /// `ACTIVITY_INSERT`; the caller must insert them in this transaction.
    pub(crate) fn chain_rows(
        &mut self,
        entries: Vec<NewActivityOwned>,
    ) -> Result<Vec<Vec<crate::batch::V>>> {
        use crate::batch::V;
        let mut rows = Vec::with_capacity(entries.len());
        for a in entries {
            let seq = self.head_seq + 1;
            let details = serde_json::to_string(&a.details)?;
            let hash = entry_hash(&HashInput {
                seq,
                time_ms: self.now,
                operation: a.operation,
                resource_type: a.resource_type,
                resource_group: &a.resource_group,
                vm: &a.vm,
                caller: &a.actor.name,
                caller_address: &a.actor.address,
                outcome: a.outcome,
                request_id: &a.request_id,
                details: &details,
                prev_hash: &self.head_hash,
            });
            tracing::info!(
                seq,
                operation = a.operation,
                resource_group = %a.resource_group,
                vm = %a.vm,
                caller = %a.actor.name,
                caller_address = %a.actor.address,
                outcome = a.outcome,
                request_id = %a.request_id,
                "activity"
            );
            rows.push(vec![
                V::I(seq),
                V::I(self.now),
                V::S(a.operation.into()),
                V::S(a.resource_type.into()),
                V::S(a.resource_group),
                V::S(a.vm),
                V::S(a.actor.name),
                V::S(a.actor.address),
                V::S(a.outcome.into()),
                V::S(a.request_id),
                V::S(details),
                V::S(std::mem::replace(&mut self.head_hash, hash.clone())),
                V::S(hash),
            ]);
            self.head_seq = seq;
            self.dirty = true;
        }
        Ok(rows)
    }

    /// The final counter values and chain head, for a caller that writes them itself
    /// (`UPDATE counters` with `counters_update`); `commit` then skips its own update.
    pub(crate) fn take_counters(&mut self) -> (i64, i64, i64, String) {
        self.dirty = false;
        (
            self.head_seq,
            self.request_ctr,
            self.outbox_ctr,
            self.head_hash.clone(),
        )
    }

    /// The next value of a database counter (unique across controllers sharing the database:
    /// the counter rows are locked for the transaction and written at commit).
    pub fn next(&mut self, counter: &str) -> i64 {
        self.dirty = true;
        if counter == "request" {
            self.request_ctr += 1;
            self.request_ctr
        } else {
            self.outbox_ctr += 1;
            self.outbox_ctr
        }
    }

    /// The transaction is (about to be) open: roll it back if this is dropped uncommitted.
    pub(crate) fn mark_open(&mut self) {
        self.tx.open = true;
    }

    /// The chain head and counters as read (and locked) by the caller.
    pub(crate) fn set_head(&mut self, seq: i64, hash: String, request: i64, outbox: i64) {
        self.head_seq = seq;
        self.head_hash = hash;
        self.request_ctr = request;
        self.outbox_ctr = outbox;
        self.outbox_start = outbox;
    }

    /// Marks the transaction committed by a statement the caller ran itself (a multi-statement
    /// query ending in COMMIT).
    pub(crate) fn committed_inline(self) {
        let mut s = self;
        s.tx.open = false;
        s.wake_agents();
    }

    fn wake_agents(&self) {
        if self.outbox_ctr > self.outbox_start {
            OUTBOX_HEAD.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    pub async fn commit(mut self) -> Result<()> {
        if self.dirty {
            sqlx::query(&counters_update(1))
                .bind(self.head_seq)
                .bind(self.request_ctr)
                .bind(self.outbox_ctr)
                .bind(&self.head_hash)
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::Executor::execute(&mut *self.tx, "COMMIT").await?;
        self.tx.open = false;
        self.wake_agents();
        Ok(())
    }
}

/// Options for opening the database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// SQLite `synchronous`: "full" (default: every commit is on disk) or "normal" (WAL:
    /// survives process crashes, may lose the last commits on power loss).
    pub sqlite_synchronous: String,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 8,
            sqlite_synchronous: "full".into(),
        }
    }
}

/// A SQLite URL for a file path (created if missing).
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

impl Store {
    pub async fn open(url: &str, opts: &StoreOptions) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sync = match opts.sqlite_synchronous.as_str() {
            "full" => "PRAGMA synchronous = FULL",
            "normal" => "PRAGMA synchronous = NORMAL",
            other => {
                return Err(StoreError::Corrupt(format!(
                    "sqlite_synchronous must be full or normal, not {other:?}"
                )));
            }
        };
        let is_sqlite = url.starts_with("sqlite:");
        let options = |max: u32, writer: bool| {
            AnyPoolOptions::new()
                .max_connections(max)
                // A failed connection surfaces as an error on use; no ping per acquire.
                .test_before_acquire(false)
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if is_sqlite {
                            let pragmas: [&'static str; 7] = [
                                "PRAGMA journal_mode = WAL",
                                sync,
                                "PRAGMA busy_timeout = 10000",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA cache_size = -65536",
                                "PRAGMA temp_store = MEMORY",
                                // The writer does not checkpoint inside its commits; a
                                // background task does (see below), off the request path.
                                if writer {
                                    "PRAGMA wal_autocheckpoint = 0"
                                } else {
                                    "PRAGMA wal_autocheckpoint = 1000"
                                },
                            ];
                            for p in pragmas {
                                sqlx::Executor::execute(&mut *conn, p).await?;
                            }
                        }
                        Ok(())
                    })
                })
        };
        // Reads share a pool; all writes go through one long-lived connection (writes are
        // serialised anyway), whose page cache then stays warm: SQLite drops a connection's
        // cache whenever another connection has written.
        let pool = options(opts.max_connections.max(2), false)
            .connect(url)
            .await?;
        let write_pool = options(1, true)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect(url)
            .await?;
        let backend = if is_sqlite { "sqlite" } else { "postgres" }.to_string();
        if is_sqlite {
            // Background WAL checkpoints (PASSIVE: never blocks the writer or readers).
            let ckpt = pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(2000));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if ckpt.is_closed() {
                        break;
                    }
                    if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_all(&ckpt)
                        .await
                    {
                        if ckpt.is_closed() {
                            break;
                        }
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            });
        }
        let write_lock = Arc::new(tokio::sync::Mutex::new(
            write_pool.acquire().await?.detach(),
        ));
        let (initiator, rx) = tokio::sync::mpsc::channel(1024);
        let (acker, ack_rx) = tokio::sync::mpsc::channel(4096);
        let writer = {
            let initiates = crate::batch::writer(write_lock.clone(), is_sqlite, rx);
            let acks = ack_writer(write_lock.clone(), is_sqlite, ack_rx);
            async move {
                tokio::join!(initiates, acks);
            }
        };
        if is_sqlite {
            // The group-commit writer gets its own thread and runtime, so that its many short
            // waits on the database are not queued behind the HTTP tasks.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Corrupt(format!("starting the writer runtime: {e}")))?;
            std::thread::Builder::new()
                .name("jit-writer".into())
                .spawn(move || rt.block_on(writer))
                .map_err(|e| StoreError::Corrupt(format!("starting the writer thread: {e}")))?;
        } else {
            tokio::spawn(writer);
        }
        let store = Store {
            pool,
            write_lock,
            initiator,
            acker,
            backend,
            checkpoint_key: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
             name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let _g = self.write_lock.lock().await;
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "applied database migration");
        }
        Ok(())
    }

    /// Starts a write transaction: takes the process write lock, then the chain head row.
    pub async fn begin_write(&self) -> Result<WriteTx> {
        begin_write_on(&self.write_lock, self.backend == "sqlite").await
    }

    // -----------------------------------------------------------------------------------------
    // Tokens

    /// Looks up a presented token. None if unknown, revoked or expired.
    pub async fn authenticate(&self, token: &str) -> Result<Option<(String, String, Role, Scope)>> {
        if !auth::plausible_token(token) {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT id, name, role, scope, expires_ms, revoked_ms FROM tokens WHERE hash = $1",
        )
        .bind(auth::hash_token(token))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let expires: Option<i64> = row.try_get(4)?;
        let revoked: Option<i64> = row.try_get(5)?;
        if revoked.is_some() || expires.is_some_and(|e| e <= now_ms()) {
            return Ok(None);
        }
        let role = auth::parse_role(&row.try_get::<String, _>(2)?).map_err(ai)?;
        let scope = auth::parse_scope(&row.try_get::<String, _>(3)?).map_err(ai)?;
        Ok(Some((row.try_get(0)?, row.try_get(1)?, role, scope)))
    }

    /// Creates a token; returns its info and the secret (shown once, never stored).
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        scope: &Scope,
        expires_ms: Option<i64>,
    ) -> Result<(TokenInfo, String)> {
        model::validate_name("token", name)?;
        let mut w = self.begin_write().await?;
        if expires_ms.is_some_and(|e| e <= w.now) {
            return Err(
                ApiError::bad_request(ErrorCode::InvalidTime, "the expiry is in the past").into(),
            );
        }
        let id = format!("tok_{}", auth::random_id(8));
        let secret = auth::new_token();
        sqlx::query(
            "INSERT INTO tokens (id, name, hash, role, scope, created_ms, expires_ms, revoked_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(&id)
        .bind(name)
        .bind(auth::hash_token(&secret))
        .bind(role.as_str())
        .bind(scope.to_string())
        .bind(w.now)
        .bind(expires_ms)
        .execute(&mut *w.tx)
        .await?;
        let info = TokenInfo {
            id: id.clone(),
            name: name.into(),
            role,
            scope: scope.clone(),
            created_time_utc: fmt_time(w.now),
            expires_time_utc: expires_ms.map(fmt_time),
            revoked_time_utc: None,
        };
        w.log(NewActivity {
            operation: op::CREATE_TOKEN,
            resource_type: "Token",
            resource_group: "",
            vm: "",
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"tokenId": id, "name": name, "role": role.as_str(),
                "scope": scope.to_string(), "expiresTimeUtc": info.expires_time_utc}),
        })
        .await?;
        w.commit().await?;
        Ok((info, secret))
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT id, name, role, scope, created_ms, expires_ms, revoked_ms FROM tokens ORDER BY created_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    role: auth::parse_role(&r.try_get::<String, _>(2)?).map_err(ai)?,
                    scope: auth::parse_scope(&r.try_get::<String, _>(3)?).map_err(ai)?,
                    created_time_utc: fmt_time(r.try_get(4)?),
                    expires_time_utc: r.try_get::<Option<i64>, _>(5)?.map(fmt_time),
                    revoked_time_utc: r.try_get::<Option<i64>, _>(6)?.map(fmt_time),
                })
            })
            .collect()
    }

    pub async fn revoke_token(&self, actor: &Actor, id: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        let row = sqlx::query("SELECT name, revoked_ms FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *w.tx)
            .await?;
        let Some(row) = row else {
            return Err(
                ApiError::not_found(ErrorCode::TokenNotFound, format!("no token {id}")).into(),
            );
        };
        if row.try_get::<Option<i64>, _>(1)?.is_some() {
            return Err(ApiError::conflict(
                ErrorCode::TokenAlreadyRevoked,
                format!("token {id} is already revoked"),
            )
            .into());
        }
        let name: String = row.try_get(0)?;
        sqlx::query("UPDATE tokens SET revoked_ms = $1 WHERE id = $2")
            .bind(w.now)
            .bind(id)
            .execute(&mut *w.tx)
            .await?;
        w.log(NewActivity {
            operation: op::REVOKE_TOKEN,
            resource_type: "Token",
            resource_group: "",
            vm: "",
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"tokenId": id, "name": name}),
        })
        .await?;
        w.commit().await
    }

    // -----------------------------------------------------------------------------------------
    // Resource groups and VMs

    pub async fn add_group(&self, actor: &Actor, name: &str, owner: &str) -> Result<()> {
        model::validate_name("resource group", name)?;
        if owner.trim().is_empty() || owner.len() > 256 {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                "a resource group needs an owner (1-256 characters)",
            )
            .into());
        }
        let mut w = self.begin_write().await?;
        let exists = sqlx::query("SELECT name FROM resource_groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *w.tx)
            .await?;
        if exists.is_some() {
            return Err(ApiError::conflict(
                ErrorCode::ResourceGroupExists,
                format!("resource group {name} already exists"),
            )
            .into());
        }
        sqlx::query("INSERT INTO resource_groups (name, owner, created_ms) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(owner)
            .bind(w.now)
            .execute(&mut *w.tx)
            .await?;
        w.log(NewActivity {
            operation: op::ADD_GROUP,
            resource_type: "ResourceGroup",
            resource_group: name,
            vm: "",
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"owner": owner}),
        })
        .await?;
        w.commit().await
    }

    pub async fn list_groups(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT name, owner FROM resource_groups ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub async fn add_vm(
        &self,
        actor: &Actor,
        name: &str,
        group: &str,
        addresses: &[std::net::IpAddr],
    ) -> Result<()> {
        model::validate_name("VM", name)?;
        model::validate_name("resource group", group)?;
        let addrs: Vec<String> = addresses
            .iter()
            .map(|a| jitgate_common::net::normalise(*a).to_string())
            .collect();
        let mut w = self.begin_write().await?;
        let g = sqlx::query("SELECT name FROM resource_groups WHERE name = $1")
            .bind(group)
            .fetch_optional(&mut *w.tx)
            .await?;
        if g.is_none() {
            return Err(ApiError::not_found(
                ErrorCode::ResourceGroupNotFound,
                format!("no resource group {group} (add it first with `jit-controller rg add`)"),
            )
            .into());
        }
        let exists = sqlx::query("SELECT name FROM vms WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *w.tx)
            .await?;
        if exists.is_some() {
            return Err(ApiError::conflict(
                ErrorCode::VmExists,
                format!("VM {name} already exists"),
            )
            .into());
        }
        sqlx::query(
            "INSERT INTO vms (name, resource_group, addresses, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(group)
        .bind(serde_json::to_string(&addrs)?)
        .bind(w.now)
        .execute(&mut *w.tx)
        .await?;
        w.log(NewActivity {
            operation: op::ADD_VM,
            resource_type: "VirtualMachine",
            resource_group: group,
            vm: name,
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"addresses": addrs}),
        })
        .await?;
        w.commit().await
    }

    /// The VM's resource group and addresses, or VmNotFound.
    pub async fn vm(&self, name: &str) -> Result<(String, Vec<String>)> {
        let row = sqlx::query("SELECT resource_group, addresses FROM vms WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else {
            return Err(ApiError::not_found(ErrorCode::VmNotFound, format!("no VM {name}")).into());
        };
        let addrs: Vec<String> = serde_json::from_str(&row.try_get::<String, _>(1)?)?;
        Ok((row.try_get(0)?, addrs))
    }

    pub async fn group_exists(&self, name: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT name FROM resource_groups WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    pub async fn list_vms(&self, scope: &Scope) -> Result<Vec<VmJson>> {
        let rows = sqlx::query("SELECT name, resource_group, addresses FROM vms ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let pol = sqlx::query("SELECT scope_kind, scope_name FROM policies")
            .fetch_all(&self.pool)
            .await?;
        let mut has = std::collections::HashSet::new();
        for r in &pol {
            has.insert((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?));
        }
        let agents = self.agent_records().await?;
        let now = now_ms();
        let mut out = Vec::new();
        for r in &rows {
            let name: String = r.try_get(0)?;
            let group: String = r.try_get(1)?;
            if !scope.covers_vm(&name, &group) {
                continue;
            }
            let (status, problems) = match agents.get(&name) {
                None => (AgentConnection::NoAgent, Vec::new()),
                Some(a) => {
                    let st = crate::agents::AgentState::of(
                        &a.id,
                        "active",
                        a.last_seen_ms,
                        a.heartbeat.as_ref(),
                        now,
                    );
                    let problems = match (&a.heartbeat, st) {
                        (Some(h), crate::agents::AgentState::Degraded) => h.problems_at(now),
                        _ => Vec::new(),
                    };
                    (st.connection(), problems)
                }
            };
            let policy_source = if has.contains(&("vm".to_string(), name.clone())) {
                Some(PolicyScope::VirtualMachine)
            } else if has.contains(&("rg".to_string(), group.clone())) {
                Some(PolicyScope::ResourceGroup)
            } else {
                None
            };
            out.push(VmJson {
                addresses: serde_json::from_str(&r.try_get::<String, _>(2)?)?,
                name,
                resource_group: group,
                policy_source,
                status,
                problems,
            });
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Policies

    pub async fn get_policy(&self, kind: &str, name: &str) -> Result<Option<PolicyView>> {
        let row = sqlx::query(
            "SELECT body, updated_ms, updated_by FROM policies WHERE scope_kind = $1 AND scope_name = $2",
        )
        .bind(kind)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let body: PolicyBody = serde_json::from_str(&row.try_get::<String, _>(0)?)?;
        Ok(Some(PolicyView {
            scope: if kind == "vm" {
                PolicyScope::VirtualMachine
            } else {
                PolicyScope::ResourceGroup
            },
            name: name.into(),
            ports: body.ports,
            updated_time_utc: fmt_time(row.try_get(1)?),
            updated_by: row.try_get(2)?,
        }))
    }

    /// The VM's effective policy: its own if it has one, else its group's.
    pub async fn effective_policy(&self, vm: &str, group: &str) -> Result<Option<PolicyView>> {
        if let Some(p) = self.get_policy("vm", vm).await? {
            return Ok(Some(p));
        }
        self.get_policy("rg", group).await
    }

    pub async fn put_policy(
        &self,
        actor: &Actor,
        kind: &str,
        name: &str,
        group: &str,
        policy: &Policy,
    ) -> Result<PolicyView> {
        let body = serde_json::to_string(&policy.to_json())?;
        let mut w = self.begin_write().await?;
        let old =
            sqlx::query("SELECT body FROM policies WHERE scope_kind = $1 AND scope_name = $2")
                .bind(kind)
                .bind(name)
                .fetch_optional(&mut *w.tx)
                .await?;
        if old.is_some() {
            sqlx::query(
                "UPDATE policies SET body = $1, updated_ms = $2, updated_by = $3 \
                 WHERE scope_kind = $4 AND scope_name = $5",
            )
            .bind(&body)
            .bind(w.now)
            .bind(&actor.name)
            .bind(kind)
            .bind(name)
            .execute(&mut *w.tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO policies (scope_kind, scope_name, body, updated_ms, updated_by) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(kind)
            .bind(name)
            .bind(&body)
            .bind(w.now)
            .bind(&actor.name)
            .execute(&mut *w.tx)
            .await?;
        }
        let pj = policy.to_json();
        w.log(NewActivity {
            operation: op::UPDATE_POLICY,
            resource_type: if kind == "vm" {
                "VirtualMachine"
            } else {
                "ResourceGroup"
            },
            resource_group: group,
            vm: if kind == "vm" { name } else { "" },
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"ports": pj.ports, "created": old.is_none()}),
        })
        .await?;
        let now = w.now;
        w.commit().await?;
        POLICY_GEN.send_modify(|g| *g = g.wrapping_add(1));
        Ok(PolicyView {
            scope: if kind == "vm" {
                PolicyScope::VirtualMachine
            } else {
                PolicyScope::ResourceGroup
            },
            name: name.into(),
            ports: pj.ports,
            updated_time_utc: fmt_time(now),
            updated_by: actor.name.clone(),
        })
    }

    pub async fn delete_policy(
        &self,
        actor: &Actor,
        kind: &str,
        name: &str,
        group: &str,
    ) -> Result<()> {
        let mut w = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM policies WHERE scope_kind = $1 AND scope_name = $2")
            .bind(kind)
            .bind(name)
            .execute(&mut *w.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(ApiError::not_found(
                ErrorCode::PolicyNotFound,
                format!("{name} has no JIT policy of its own"),
            )
            .into());
        }
        w.log(NewActivity {
            operation: op::DELETE_POLICY,
            resource_type: if kind == "vm" {
                "VirtualMachine"
            } else {
                "ResourceGroup"
            },
            resource_group: group,
            vm: if kind == "vm" { name } else { "" },
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({}),
        })
        .await?;
        w.commit().await?;
        POLICY_GEN.send_modify(|g| *g = g.wrapping_add(1));
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Requests

    /// Evaluates and records an access request. Approved: status Initiated, grants pending in
    /// the outbox, older grants for the same (VM, port, protocol, prefix) superseded. Denied:
    /// recorded with every reason. Returns the request record. Requests are decided by the
    /// group-commit writer (`batch`), in arrival order.
    pub async fn initiate(&self, caller: &Caller, req: &Initiate) -> Result<RequestJson> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.initiator
            .send(crate::batch::Job {
                caller: caller.clone(),
                req: req.clone(),
                reply,
            })
            .await
            .map_err(|_| StoreError::Corrupt("the request writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Corrupt("the request writer has stopped".into()))?
    }

    /// Decides several requests as one batch (what the writer does with queued requests);
    /// for tests and tools that need a deterministic batch.
    pub async fn initiate_batch(
        &self,
        jobs: &[(Caller, Initiate)],
    ) -> Result<Vec<Result<RequestJson>>> {
        crate::batch::decide(&self.write_lock, self.backend == "sqlite", jobs).await
    }

    pub async fn get_request(&self, id: &str) -> Result<RequestJson> {
        let mut conn = self.pool.acquire().await?;
        load_request(&mut conn, id).await
    }

    /// The VM's request history, newest first.
    pub async fn history(&self, vm: &str, limit: i64) -> Result<Vec<RequestJson>> {
        let mut conn = self.pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT id FROM requests WHERE id IN (SELECT request_id FROM request_ports WHERE vm = $1) \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(vm)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let id: String = r.try_get(0)?;
            out.push(load_request(&mut conn, &id).await?);
        }
        Ok(out)
    }

    /// Revokes a request's active ports (UserRequested). Allowed to an admin whose scope covers
    /// every VM of the request, or to the requestor with requester rights on them.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<RequestJson> {
        let actor = Actor::of(caller);
        let mut w = self.begin_write().await?;
        let rec = load_request(&mut w.tx, id).await?;
        for vm in &rec.virtual_machines {
            if caller.role == Role::Admin {
                caller.check_vm(Role::Admin, &vm.id, &vm.resource_group)?;
            } else {
                caller.check_vm(Role::Requester, &vm.id, &vm.resource_group)?;
                if rec.requestor != caller.name {
                    return Err(ApiError::forbidden(format!(
                        "{} may revoke only its own requests; this one is {}'s (an admin may revoke any)",
                        caller.name, rec.requestor
                    ))
                    .into());
                }
            }
        }
        let active = sqlx::query(
            "SELECT idx, vm, resource_group, number, protocol, prefixes, end_ms FROM request_ports \
             WHERE request_id = $1 AND status IN ('Initiated', 'Applied') AND end_ms > $2 ORDER BY idx",
        )
        .bind(id)
        .bind(w.now)
        .fetch_all(&mut *w.tx)
        .await?;
        if active.is_empty() {
            return Err(ApiError::conflict(
                ErrorCode::RequestNotActive,
                format!(
                    "request {id} has no active access to revoke (status {})",
                    rec.status
                ),
            )
            .into());
        }
        sqlx::query(
            "UPDATE request_ports SET status = 'Revoked', status_reason = 'UserRequested' \
             WHERE request_id = $1 AND status IN ('Initiated', 'Applied') AND end_ms > $2",
        )
        .bind(id)
        .bind(w.now)
        .execute(&mut *w.tx)
        .await?;
        let grants = sqlx::query(
            "SELECT id, vm FROM grants WHERE request_id = $1 AND state IN ('pending', 'applied')",
        )
        .bind(id)
        .fetch_all(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE grants SET state = 'revoked' WHERE request_id = $1 AND state IN ('pending', 'applied')",
        )
        .bind(id)
        .execute(&mut *w.tx)
        .await?;
        for g in &grants {
            let gid: String = g.try_get(0)?;
            let vm: String = g.try_get(1)?;
            let oseq = w.next("outbox");
            sqlx::query(
                "INSERT INTO grant_outbox (seq, vm, op, grant_id, replaces, created_ms, delivered_ms) \
                 VALUES ($1, $2, 'revoke', $3, '', $4, NULL)",
            )
            .bind(oseq)
            .bind(&vm)
            .bind(&gid)
            .bind(w.now)
            .execute(&mut *w.tx)
            .await?;
        }
        let mut by_vm: BTreeMap<(String, String), Vec<serde_json::Value>> = BTreeMap::new();
        for r in &active {
            let vm: String = r.try_get(1)?;
            let group: String = r.try_get(2)?;
            by_vm.entry((vm, group)).or_default().push(serde_json::json!({
                "number": r.try_get::<i64, _>(3)?,
                "protocol": r.try_get::<String, _>(4)?,
                "allowedSourceAddressPrefixes": r.try_get::<String, _>(5)?.split(',').collect::<Vec<_>>(),
                "endTimeUtc": fmt_time(r.try_get(6)?),
            }));
        }
        for ((vm, group), ports) in &by_vm {
            w.log(NewActivity {
                operation: op::REVOKE,
                resource_type: "VirtualMachine",
                resource_group: group,
                vm,
                actor: &actor,
                outcome: "Succeeded",
                request_id: id,
                details: serde_json::json!({"statusReason": "UserRequested", "ports": ports,
                    "justification": rec.justification, "requestor": rec.requestor}),
            })
            .await?;
        }
        let rec = load_request(&mut w.tx, id).await?;
        w.commit().await?;
        Ok(rec)
    }

    /// Marks ended access as Revoked/Expired (the controller's bookkeeping; the agent enforces
    /// the end in the kernel). Returns how many request ports ended.
    pub async fn expire_due(&self, now: i64) -> Result<usize> {
        let any = sqlx::query(
            "SELECT request_id FROM request_ports WHERE status IN ('Initiated', 'Applied') AND end_ms <= $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if any.is_none() {
            return Ok(0);
        }
        let mut w = self.begin_write().await?;
        let rows = sqlx::query(
            "SELECT request_id, idx, vm, resource_group, number, protocol, prefixes, end_ms FROM request_ports \
             WHERE status IN ('Initiated', 'Applied') AND end_ms <= $1 ORDER BY request_id, idx",
        )
        .bind(now)
        .fetch_all(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE request_ports SET status = 'Revoked', status_reason = 'Expired' \
             WHERE status IN ('Initiated', 'Applied') AND end_ms <= $1",
        )
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query(
            "UPDATE grants SET state = 'expired' WHERE state IN ('pending', 'applied') AND end_ms <= $1",
        )
        .bind(now)
        .execute(&mut *w.tx)
        .await?;
        let actor = Actor::controller();
        for r in &rows {
            let rid: String = r.try_get(0)?;
            let vm: String = r.try_get(2)?;
            let group: String = r.try_get(3)?;
            w.log(NewActivity {
                operation: op::EXPIRE,
                resource_type: "VirtualMachine",
                resource_group: &group,
                vm: &vm,
                actor: &actor,
                outcome: "Succeeded",
                request_id: &rid,
                details: serde_json::json!({
                    "statusReason": "Expired",
                    "number": r.try_get::<i64, _>(4)?,
                    "protocol": r.try_get::<String, _>(5)?,
                    "allowedSourceAddressPrefixes": r.try_get::<String, _>(6)?.split(',').collect::<Vec<_>>(),
                    "endTimeUtc": fmt_time(r.try_get(7)?),
                }),
            })
            .await?;
        }
        w.commit().await?;
        Ok(rows.len())
    }

    // -----------------------------------------------------------------------------------------
    // The grant outbox: the seam the agent channel (next issue) consumes.

    /// Outbox items for a VM after `after_seq`, oldest first.
    pub async fn outbox(&self, vm: &str, after_seq: i64, limit: i64) -> Result<Vec<OutboxItem>> {
        let rows = sqlx::query(
            "SELECT o.seq, o.vm, o.op, o.grant_id, o.replaces, g.request_id, g.protocol, g.port, \
             g.prefix, g.start_ms, g.end_ms, g.on_expiry FROM grant_outbox o \
             JOIN grants g ON g.id = o.grant_id WHERE o.vm = $1 AND o.seq > $2 ORDER BY o.seq LIMIT $3",
        )
        .bind(vm)
        .bind(after_seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let replaces: String = r.try_get(4)?;
                Ok(OutboxItem {
                    seq: r.try_get(0)?,
                    vm: r.try_get(1)?,
                    op: r.try_get(2)?,
                    grant_id: r.try_get(3)?,
                    replaces: replaces
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    request_id: r.try_get(5)?,
                    protocol: r.try_get(6)?,
                    port: u16::try_from(r.try_get::<i64, _>(7)?).map_err(ai)?,
                    prefix: r.try_get(8)?,
                    start_ms: r.try_get(9)?,
                    end_ms: r.try_get(10)?,
                    on_expiry: r.try_get(11)?,
                })
            })
            .collect()
    }

    /// The agent acknowledged a grant as in place: grant `applied`; a port whose grants are all
    /// applied becomes Applied (a request is Applied when all its ports are).
    pub async fn ack_grant(&self, actor: &Actor, grant_id: &str) -> Result<()> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::Corrupt("the acknowledgement writer has stopped".into());
        self.acker
            .send(AckJob {
                actor: actor.clone(),
                grant_id: grant_id.to_string(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    // -----------------------------------------------------------------------------------------
    // Activity log

    /// Entries matching the filter, oldest first. `scope` limits to the caller's VMs/group.
    pub async fn activity(
        &self,
        f: &ActivityFilter,
        scope: &Scope,
    ) -> Result<Vec<ActivityEntry>, StoreError> {
        let mut sql = String::from(
            "SELECT seq, time_ms, operation, resource_type, resource_group, vm, caller, caller_address, \
             outcome, request_id, details, prev_hash, hash FROM activity WHERE seq > $1",
        );
        let mut texts: Vec<String> = Vec::new();
        let mut n = 2;
        let mut add = |sql: &mut String, col: &str, v: &str, texts: &mut Vec<String>| {
            sql.push_str(&format!(" AND {col} = ${n}"));
            n += 1;
            texts.push(v.to_string());
        };
        if let Some(v) = &f.resource_type {
            add(&mut sql, "resource_type", v, &mut texts);
        }
        if let Some(v) = &f.vm {
            add(&mut sql, "vm", v, &mut texts);
        }
        if let Some(v) = &f.resource_group {
            add(&mut sql, "resource_group", v, &mut texts);
        }
        if let Some(v) = &f.caller {
            add(&mut sql, "caller", v, &mut texts);
        }
        match scope {
            Scope::All => {}
            Scope::ResourceGroup(g) => add(&mut sql, "resource_group", g, &mut texts),
            Scope::Vm(v) => add(&mut sql, "vm", v, &mut texts),
        }
        let from = f.from.as_deref().map(model::parse_time).transpose()?;
        let to = f.to.as_deref().map(model::parse_time).transpose()?;
        let mut ints: Vec<i64> = Vec::new();
        if let Some(t) = from {
            sql.push_str(&format!(" AND time_ms >= ${n}"));
            n += 1;
            ints.push(t);
        }
        if let Some(t) = to {
            sql.push_str(&format!(" AND time_ms < ${n}"));
            n += 1;
            ints.push(t);
        }
        let limit = f.limit.unwrap_or(1000).clamp(1, 100_000);
        sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
        let mut q = sqlx::query(&sql).bind(f.after.unwrap_or(0));
        for t in texts {
            q = q.bind(t);
        }
        for i in ints {
            q = q.bind(i);
        }
        q = q.bind(limit);
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(activity_row).collect()
    }

    /// Sets the key checkpoints are verified with (once; later calls are ignored).
    pub fn set_checkpoint_key(&self, vk: ed25519_dalek::VerifyingKey) {
        let _ = self.checkpoint_key.set(vk);
    }

    /// Signs the chain head if it moved since the last checkpoint of this key (an empty log
    /// is never signed). Returns the new checkpoint, or None when there was nothing new.
    pub async fn checkpoint(&self, sk: &ed25519_dalek::SigningKey) -> Result<Option<Checkpoint>> {
        let key_id = jitgate_proto::audit::key_id(&sk.verifying_key());
        // The write transaction holds the chain head, so the signed head is the committed one
        // and controllers sharing the database never sign the same head twice.
        let mut w = self.begin_write().await?;
        let last: Option<i64> =
            sqlx::query("SELECT MAX(seq) FROM activity_checkpoints WHERE key_id = $1")
                .bind(&key_id)
                .fetch_one(&mut *w.tx)
                .await?
                .try_get(0)?;
        if w.head_seq == 0 || last.is_some_and(|l| l >= w.head_seq) {
            return Ok(None);
        }
        let c = Checkpoint::sign(sk, w.head_seq, &w.head_hash, w.now);
        sqlx::query(
            "INSERT INTO activity_checkpoints (seq, key_id, hash, time_ms, signature) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(c.seq)
        .bind(&c.key_id)
        .bind(&c.hash)
        .bind(c.time_ms)
        .bind(&c.signature)
        .execute(&mut *w.tx)
        .await?;
        w.commit().await?;
        tracing::info!(seq = c.seq, hash = %c.hash, key_id = %c.key_id, "signed activity log checkpoint");
        Ok(Some(c))
    }

    /// All checkpoints, oldest first.
    pub async fn checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let rows = sqlx::query(
            "SELECT seq, key_id, hash, time_ms, signature FROM activity_checkpoints \
             ORDER BY seq, key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.try_get(0)?,
                    key_id: r.try_get(1)?,
                    hash: r.try_get(2)?,
                    time_ms: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The whole log with its checkpoints and the checkpoint key, for offline verification.
    pub async fn export(&self, public_key_pem: &str) -> Result<jitgate_proto::audit::Export> {
        let Some(vk) = self.checkpoint_key.get() else {
            return Err(StoreError::Corrupt("no checkpoint key loaded".into()));
        };
        // Checkpoints first: every one of them is then at or below the exported head.
        let checkpoints = self.checkpoints().await?;
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let rows = sqlx::query(
                "SELECT seq, time_ms, operation, resource_type, resource_group, vm, caller, caller_address, \
                 outcome, request_id, details, prev_hash, hash FROM activity WHERE seq > $1 ORDER BY seq LIMIT 5000",
            )
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.try_get(0)?;
            for r in &rows {
                entries.push(activity_row(r)?);
            }
        }
        Ok(jitgate_proto::audit::Export {
            format: jitgate_proto::audit::EXPORT_FORMAT.into(),
            key_id: jitgate_proto::audit::key_id(vk),
            public_key_pem: public_key_pem.into(),
            exported_time_ms: now_ms(),
            entries,
            checkpoints,
        })
    }

    /// Walks the whole chain: seq contiguous from 1, each prev_hash equal to the previous
    /// entry's hash, each hash recomputed from the row, the head equal to the last entry;
    /// and every checkpoint: its signature by the controller key, and its (seq, hash) on the
    /// chain, so a rewrite that recomputed all later hashes still fails.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let head = sqlx::query("SELECT value, hash FROM counters WHERE name = 'chain'")
            .fetch_one(&self.pool)
            .await?;
        let head_seq: i64 = head.try_get(0)?;
        let head_hash: String = head.try_get(1)?;
        let checkpoints = self.checkpoints().await?;
        let vk = self.checkpoint_key.get();
        let report = VerifyReport::new(
            head_seq,
            &head_hash,
            checkpoints.len(),
            vk.map(jitgate_proto::audit::key_id),
        );
        let walk = match vk {
            Some(vk) => ChainWalk::new(checkpoints, vk),
            // Without the key only the chain can be checked; signed checkpoints cannot.
            None if checkpoints.is_empty() => Ok(ChainWalk::unsigned()),
            None => Err(jitgate_proto::audit::Failure {
                seq: 0,
                checkpoint: None,
                problem: "no checkpoint key loaded: checkpoint signatures cannot be checked".into(),
            }),
        };
        let mut walk = match walk {
            Ok(w) => w,
            Err(f) => return Ok(report.fail(f, 0)),
        };
        let mut expect = 1i64;
        loop {
            let rows = sqlx::query(
                "SELECT seq, time_ms, operation, resource_type, resource_group, vm, caller, caller_address, \
                 outcome, request_id, details, prev_hash, hash FROM activity WHERE seq >= $1 ORDER BY seq LIMIT 5000",
            )
            .bind(expect)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let seq: i64 = r.try_get(0)?;
                let stored_prev: String = r.try_get(11)?;
                let stored_hash: String = r.try_get(12)?;
                let h = entry_hash(&HashInput {
                    seq,
                    time_ms: r.try_get(1)?,
                    operation: &r.try_get::<String, _>(2)?,
                    resource_type: &r.try_get::<String, _>(3)?,
                    resource_group: &r.try_get::<String, _>(4)?,
                    vm: &r.try_get::<String, _>(5)?,
                    caller: &r.try_get::<String, _>(6)?,
                    caller_address: &r.try_get::<String, _>(7)?,
                    outcome: &r.try_get::<String, _>(8)?,
                    request_id: &r.try_get::<String, _>(9)?,
                    details: &r.try_get::<String, _>(10)?,
                    prev_hash: &stored_prev,
                });
                let before = walk.entries();
                if let Err(f) = walk.push(seq, &stored_prev, &stored_hash, &h) {
                    return Ok(report.fail(f, before));
                }
                expect = seq + 1;
            }
        }
        Ok(report.finish(walk))
    }

    /// Direct access for tests and maintenance tools.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

/// Starts a write transaction on a pool: the process write lock, then the chain head row.
/// Takes the writer lock without starting the transaction: the caller starts it itself
/// (SQLite: a multi-statement query beginning with BEGIN), calling `mark_open` first and
/// `set_head` with the counters it read.
pub(crate) async fn lock_writer(
    lock: &Arc<tokio::sync::Mutex<AnyConnection>>,
    sqlite: bool,
) -> WriteTx {
    WriteTx {
        tx: WriterConn {
            guard: Some(lock.clone().lock_owned().await),
            open: false,
        },
        head_seq: 0,
        head_hash: GENESIS_HASH.into(),
        request_ctr: 0,
        outbox_ctr: 0,
        outbox_start: 0,
        dirty: false,
        sqlite,
        now: now_ms(),
    }
}

pub(crate) async fn begin_write_on(
    lock: &Arc<tokio::sync::Mutex<AnyConnection>>,
    sqlite: bool,
) -> Result<WriteTx> {
    let mut conn = WriterConn {
        guard: Some(lock.clone().lock_owned().await),
        open: true,
    };
    const LOCK_HEAD: &str = "UPDATE counters SET value = value \
        WHERE name IN ('chain', 'request', 'outbox') RETURNING name, value, hash";
    let rows = if sqlite {
        // One round trip: SQLite runs both statements of the query in order.
        sqlx::query(&format!("BEGIN; {LOCK_HEAD}"))
            .fetch_all(&mut *conn)
            .await?
    } else {
        sqlx::Executor::execute(&mut *conn, "BEGIN").await?;
        sqlx::query(LOCK_HEAD).fetch_all(&mut *conn).await?
    };
    let mut w = WriteTx {
        tx: conn,
        head_seq: 0,
        head_hash: GENESIS_HASH.into(),
        request_ctr: 0,
        outbox_ctr: 0,
        outbox_start: 0,
        dirty: false,
        sqlite,
        now: now_ms(),
    };
    let mut seen = 0;
    for r in &rows {
        let name: String = r.try_get(0)?;
        let v: i64 = r.try_get(1)?;
        match name.as_str() {
            "chain" => {
                w.head_seq = v;
                w.head_hash = r.try_get(2)?;
            }
            "request" => w.request_ctr = v,
            _ => w.outbox_ctr = v,
        }
        seen += 1;
    }
    w.outbox_start = w.outbox_ctr;
    if seen != 3 {
        return Err(StoreError::Corrupt(
            "the counters table is incomplete".into(),
        ));
    }
    Ok(w)
}

fn activity_row(r: &AnyRow) -> Result<ActivityEntry> {
    let details: String = r.try_get(10)?;
    Ok(ActivityEntry {
        seq: r.try_get(0)?,
        time_utc: fmt_time(r.try_get(1)?),
        operation: r.try_get(2)?,
        resource_type: r.try_get(3)?,
        resource_group: r.try_get(4)?,
        virtual_machine: r.try_get(5)?,
        caller: r.try_get(6)?,
        caller_address: r.try_get(7)?,
        outcome: r.try_get(8)?,
        request_id: r.try_get(9)?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.try_get(11)?,
        hash: r.try_get(12)?,
    })
}

/// After a grant of (request, port) ended: if none of the port's grants is still active, the
/// port is Revoked with `reason`.
pub(crate) async fn close_port_if_done(
    w: &mut WriteTx,
    rid: &str,
    idx: i64,
    reason: &str,
) -> Result<()> {
    let still = sqlx::query(
        "SELECT id FROM grants WHERE request_id = $1 AND port_idx = $2 AND state IN ('pending', 'applied')",
    )
    .bind(rid)
    .bind(idx)
    .fetch_optional(&mut *w.tx)
    .await?;
    if still.is_none() {
        sqlx::query(
            "UPDATE request_ports SET status = 'Revoked', status_reason = $1 \
             WHERE request_id = $2 AND idx = $3 AND status IN ('Initiated', 'Applied')",
        )
        .bind(reason)
        .bind(rid)
        .bind(idx)
        .execute(&mut *w.tx)
        .await?;
    }
    Ok(())
}

async fn load_request(conn: &mut sqlx::AnyConnection, id: &str) -> Result<RequestJson> {
    let row = sqlx::query(
        "SELECT requestor, caller_address, justification, start_ms, denied, denial_reasons \
         FROM requests WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RequestNotFound,
            format!("no request {id}"),
        )
        .into());
    };
    let denied = row.try_get::<i64, _>(4)? != 0;
    let denial_reasons: Vec<DenialReason> = serde_json::from_str(&row.try_get::<String, _>(5)?)?;
    let ports = sqlx::query(
        "SELECT vm, resource_group, number, protocol, prefixes, end_ms, status, status_reason, on_expiry \
         FROM request_ports WHERE request_id = $1 ORDER BY idx",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut vms: Vec<RequestVmJson> = Vec::new();
    let mut statuses = Vec::new();
    for p in &ports {
        let vm: String = p.try_get(0)?;
        let prefixes: String = p.try_get(4)?;
        let list: Vec<String> = prefixes.split(',').map(String::from).collect();
        let (one, many) = if list.len() == 1 {
            (list.first().cloned(), None)
        } else {
            (None, Some(list))
        };
        let status: PortStatus = p.try_get::<String, _>(6)?.parse().map_err(ai)?;
        statuses.push(status.clone());
        let port = RequestPortJson {
            number: u16::try_from(p.try_get::<i64, _>(2)?).map_err(ai)?,
            protocol: p.try_get::<String, _>(3)?.parse().map_err(ai)?,
            allowed_source_address_prefix: one,
            allowed_source_address_prefixes: many,
            end_time_utc: fmt_time(p.try_get(5)?),
            status,
            status_reason: p
                .try_get::<Option<String>, _>(7)?
                .map(|r| r.parse::<StatusReason>())
                .transpose()
                .map_err(ai)?,
            on_expiry: p
                .try_get::<Option<String>, _>(8)?
                .as_deref()
                .and_then(|s| s.parse::<OnExpiry>().ok()),
        };
        match vms.iter_mut().find(|v| v.id == vm) {
            Some(v) => v.ports.push(port),
            None => vms.push(RequestVmJson {
                id: vm,
                resource_group: p.try_get(1)?,
                ports: vec![port],
            }),
        }
    }
    let status = if denied {
        PortStatus::Denied
    } else if statuses.contains(&PortStatus::Initiated) {
        PortStatus::Initiated
    } else if statuses.contains(&PortStatus::Applied) {
        PortStatus::Applied
    } else {
        PortStatus::Revoked
    };
    Ok(RequestJson {
        id: id.into(),
        start_time_utc: fmt_time(row.try_get(3)?),
        requestor: row.try_get(0)?,
        justification: row.try_get(2)?,
        caller_address: row.try_get(1)?,
        status,
        virtual_machines: vms,
        denial_reasons,
    })
}

/// One acknowledgement inside a write transaction (see `Store::ack_grant`).
async fn ack_in(w: &mut WriteTx, actor: &Actor, grant_id: &str) -> Result<()> {
    let row = sqlx::query(
        "SELECT request_id, port_idx, vm, state, port, protocol, prefix FROM grants WHERE id = $1",
    )
    .bind(grant_id)
    .fetch_optional(&mut *w.tx)
    .await?;
    let Some(row) = row else {
        return Err(
            ApiError::not_found(ErrorCode::GrantNotFound, format!("no grant {grant_id}")).into(),
        );
    };
    let state: String = row.try_get(3)?;
    if state != "pending" {
        // Redelivery or a grant that ended meanwhile: acknowledged again, not applied again.
        return Ok(());
    }
    let rid: String = row.try_get(0)?;
    let pidx: i64 = row.try_get(1)?;
    let vm: String = row.try_get(2)?;
    sqlx::query("UPDATE grants SET state = 'applied' WHERE id = $1")
        .bind(grant_id)
        .execute(&mut *w.tx)
        .await?;
    sqlx::query("UPDATE grant_outbox SET delivered_ms = $1 WHERE grant_id = $2 AND op = 'apply'")
        .bind(w.now)
        .bind(grant_id)
        .execute(&mut *w.tx)
        .await?;
    let pending = sqlx::query(
        "SELECT id FROM grants WHERE request_id = $1 AND port_idx = $2 AND state = 'pending'",
    )
    .bind(&rid)
    .bind(pidx)
    .fetch_optional(&mut *w.tx)
    .await?;
    if pending.is_none() {
        sqlx::query(
                "UPDATE request_ports SET status = 'Applied' WHERE request_id = $1 AND idx = $2 AND status = 'Initiated'",
            )
            .bind(&rid)
            .bind(pidx)
            .execute(&mut *w.tx)
            .await?;
    }
    let group: String = sqlx::query("SELECT resource_group FROM vms WHERE name = $1")
        .bind(&vm)
        .fetch_optional(&mut *w.tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or_default();
    w.log(NewActivity {
        operation: op::APPLY,
        resource_type: "VirtualMachine",
        resource_group: &group,
        vm: &vm,
        actor,
        outcome: "Succeeded",
        request_id: &rid,
        details: serde_json::json!({"grantId": grant_id,
                "number": row.try_get::<i64, _>(4)?,
                "protocol": row.try_get::<String, _>(5)?,
                "allowedSourceAddressPrefix": row.try_get::<String, _>(6)?}),
    })
    .await?;
    Ok(())
}
