//! The database handle: sqlx's `Any` driver over SQLite (embedded default, a real file) or
//! PostgreSQL (a configuration change: `database_url = "postgres://..."`). Reads share a pool;
//! all writes go through one [`Writer`]. Migrations are applied at open.

use serde::de::DeserializeOwned;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::error::Result;
use crate::notify::Notifier;
use crate::store::backend::Backend;
use crate::store::write::{WriteTx, Writer};

/// Migrations, applied in order, each once, in a transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "agents",
        include_str!("../../migrations/0002_agents.sql"),
    ),
    (
        3,
        "compliance",
        include_str!("../../migrations/0003_compliance.sql"),
    ),
    (
        4,
        "agent audit view",
        include_str!("../../migrations/0004_agent_audit_view.sql"),
    ),
    (
        5,
        "activity checkpoints and agent certificates",
        include_str!("../../migrations/0005_activity_checkpoints.sql"),
    ),
    (
        6,
        "policy scopes by their API names",
        include_str!("../../migrations/0006_policy_scope_names.sql"),
    ),
    (
        7,
        "agent presence across controllers",
        include_str!("../../migrations/0007_agent_presence.sql"),
    ),
    (
        8,
        "approvals",
        include_str!("../../migrations/0008_approvals.sql"),
    ),
    (
        9,
        "agent protocol levels",
        include_str!("../../migrations/0009_agent_protocol.sql"),
    ),
    (
        10,
        "notifications",
        include_str!("../../migrations/0010_notifications.sql"),
    ),
    (
        11,
        "notifications: ending soon, addresses, agents offline",
        include_str!("../../migrations/0011_notify_more.sql"),
    ),
    (
        12,
        "sessions",
        include_str!("../../migrations/0012_sessions.sql"),
    ),
    (
        13,
        "portal: one-time sign-in links, agents' detached flag",
        include_str!("../../migrations/0013_portal.sql"),
    ),
    (
        14,
        "portal at scale: request ports keep when their request was made; inventory generation",
        include_str!("../../migrations/0014_portal_scale.sql"),
    ),
    (
        15,
        "activity log: how far it has been verified",
        include_str!("../../migrations/0015_activity_verified.sql"),
    ),
    (
        16,
        "leases: the leader lease and its epoch (fencing)",
        include_str!("../../migrations/0016_leases.sql"),
    ),
    (
        17,
        "fleet page: agent versions, keyset indexes",
        include_str!("../../migrations/0017_fleet_page.sql"),
    ),
    (
        18,
        "retention: the activity log's anchor after a prune",
        include_str!("../../migrations/0018_activity_anchor.sql"),
    ),
    (
        19,
        "grant-signing key rotation: keys and agents' answers",
        include_str!("../../migrations/0019_grant_keys.sql"),
    ),
    (
        22,
        "compliance: each evaluation's counts per resource group",
        include_str!("../../migrations/0022_compliance_counts.sql"),
    ),
    (
        23,
        "activity: the whole log's verification, shared by the controllers",
        include_str!("../../migrations/0023_activity_full_run.sql"),
    ),
    (
        24,
        "notifications: each sink's delivered count, kept",
        include_str!("../../migrations/0024_notify_delivered.sql"),
    ),
    (
        25,
        "connection limits: request ports' and grants' max_connections",
        include_str!("../../migrations/0025_connection_limits.sql"),
    ),
    (
        26,
        "agent certificates renewed over the channel",
        include_str!("../../migrations/0026_agent_certs.sql"),
    ),
    (
        27,
        "notifications: pending deliveries indexed by state and sink, each sink's last success kept",
        include_str!("../../migrations/0027_notify_pending_index.sql"),
    ),
    (
        28,
        "keys: at most one current and one announced grant-signing key",
        include_str!("../../migrations/0028_grant_keys_one_next.sql"),
    ),
    (
        29,
        "policy versions: a base that moves past versions agents hold after a restore",
        include_str!("../../migrations/0029_policy_base.sql"),
    ),
    (
        30,
        "agents: where the program runs on each interface (hook reports, protocol level 7)",
        include_str!("../../migrations/0030_agent_hooks.sql"),
    ),
    (
        31,
        "agent certificate renewals limited in rate: the last refusal logged",
        include_str!("../../migrations/0031_agent_cert_rate.sql"),
    ),
    (
        32,
        "activity: policy changes indexed by VM and by group (the policy version)",
        include_str!("../../migrations/0032_activity_policy_changes.sql"),
    ),
    (
        33,
        "certificate renewal refusals logged once per agent, kind and window; the keys each controller lacks",
        include_str!("../../migrations/0033_refusals_and_key_holders.sql"),
    ),
    (
        34,
        "notifications: pending deliveries indexed per sink for the claim",
        include_str!("../../migrations/0034_notify_claim_index.sql"),
    ),
    (
        35,
        "agents: the unused cert_rate_logged_ms dropped (agent_cert_refusals replaced it in 33)",
        include_str!("../../migrations/0035_drop_cert_rate_logged.sql"),
    ),
    (
        36,
        "notifications: the fan-out mark one counter instead of a flag per event; leased deliveries out of the claim's indexes",
        include_str!("../../migrations/0036_notify_round_writes_less.sql"),
    ),
    (
        37,
        "agents: a local break-glass grant's connection limit (protocol level 12)",
        include_str!("../../migrations/0037_local_grant_limits.sql"),
    ),
    (
        38,
        "grant outbox by grant (acknowledgements and prune find a grant's rows by index)",
        include_str!("../../migrations/0038_grant_outbox_by_grant.sql"),
    ),
];

/// The schema version this binary migrates to (its last migration).
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Every migration's version, in order (numbers may be skipped: a number reserved for work
/// that did not need one).
pub fn migration_versions() -> Vec<i64> {
    MIGRATIONS.iter().map(|m| m.0).collect()
}

jitgate_api::wire_enum! {
    /// SQLite's `synchronous` (`sqlite_synchronous` in controller.toml).
    pub enum Synchronous("sqlite_synchronous") {
        /// Every commit is on disk.
        Full = "full",
        /// WAL: survives process crashes, may lose the last commits on power loss.
        Normal = "normal",
    }
}

/// Options for opening the database.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub max_connections: u32,
    pub synchronous: Synchronous,
    /// SQLite: a write-ahead log holding more frames than this (pages; 4 KiB each by
    /// default) is checkpointed to the end and truncated (see [`WAL_TRUNCATE_FRAMES`]).
    pub wal_truncate_frames: i64,
}

/// 16 384 frames = 64 MiB of WAL at SQLite's default 4 KiB page.
pub const WAL_TRUNCATE_FRAMES: i64 = 16_384;

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            max_connections: 8,
            synchronous: Synchronous::Full,
            wal_truncate_frames: WAL_TRUNCATE_FRAMES,
        }
    }
}

/// A JSON text column, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> TryFrom<String> for Json<T> {
    type Error = serde_json::Error;
    fn try_from(s: String) -> Result<Json<T>, serde_json::Error> {
        serde_json::from_str(&s).map(Json)
    }
}

/// A SQLite URL for a file path (created if missing).
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The database of one controller.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    writer: Writer,
}

/// PostgreSQL: a pooled connection idle this long is pinged before it is handed out.
const PING_IF_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest a call waits for a PostgreSQL connection.
const PG_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest a call waits for a SQLite connection (sqlx's default).
const SQLITE_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// PostgreSQL: the longest the writer's session may sit idle inside a transaction.
const WRITER_IDLE_IN_TX: &str = "SET idle_in_transaction_session_timeout = '10s'";

impl Db {
    /// Opens (and migrates) the database; `notifier` is woken by commits.
    pub async fn open(url: &str, opts: &DbOptions, notifier: Notifier) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url);
        let sync = match opts.synchronous {
            Synchronous::Full => "PRAGMA synchronous = FULL",
            Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        };
        let options = |max: u32, writer: bool| {
            AnyPoolOptions::new()
                .max_connections(max)
                // No ping per acquire: only a connection idle for a while is checked first
                // (PostgreSQL: a server restart or a proxy may have closed it; without the
                // check the one call that next takes it would fail).
                .test_before_acquire(false)
                .before_acquire(move |conn, meta| {
                    Box::pin(async move {
                        if backend == Backend::Postgres && meta.idle_for >= PING_IF_IDLE {
                            return Ok(sqlx::Connection::ping(conn).await.is_ok());
                        }
                        Ok(true)
                    })
                })
                // PostgreSQL that cannot be reached is answered within this (503
                // `DatabaseUnavailable`), rather than holding the caller for sqlx's 30 s.
                // (SQLite is a local file: a wait there is load, not an outage.)
                .acquire_timeout(match backend {
                    Backend::Postgres => PG_ACQUIRE_TIMEOUT,
                    Backend::Sqlite => SQLITE_ACQUIRE_TIMEOUT,
                })
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            let pragmas: [&'static str; 7] = [
                                "PRAGMA journal_mode = WAL",
                                sync,
                                BUSY_TIMEOUT,
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA cache_size = -65536",
                                "PRAGMA temp_store = MEMORY",
                                // The writer does not checkpoint inside its commits; a
                                // background task does (below), off the request path.
                                if writer {
                                    "PRAGMA wal_autocheckpoint = 0"
                                } else {
                                    "PRAGMA wal_autocheckpoint = 1000"
                                },
                            ];
                            for p in pragmas {
                                sqlx::Executor::execute(&mut *conn, p).await?;
                            }
                        } else if writer {
                            // Every write transaction locks the counter rows: a controller
                            // frozen inside one (SIGSTOP, a paused VM) would stall every
                            // controller's writes for as long as it stays frozen. The server
                            // ends such a transaction; the writer reconnects when it wakes.
                            sqlx::Executor::execute(&mut *conn, WRITER_IDLE_IN_TX).await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options(opts.max_connections.max(2), false)
            .connect(url)
            .await?;
        let write_pool = options(1, true)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect(url)
            .await?;
        let writer = Writer::new(
            write_pool.acquire().await?.detach(),
            write_pool,
            backend,
            notifier,
        );
        if backend == Backend::Sqlite {
            spawn_wal_checkpoints(pool.clone(), writer.clone(), opts.wal_truncate_frames);
        }
        let db = Db { pool, writer };
        db.migrate().await?;
        Ok(db)
    }

    /// For reads, tests and maintenance tools.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.writer.backend()
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Starts a write transaction (`store::write`).
    pub async fn begin(&self) -> Result<WriteTx> {
        self.writer.begin().await
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the migrations this database lacks, each in its own transaction. On
    /// PostgreSQL several controllers may start at once against one database: a session
    /// advisory lock ([`MIGRATION_LOCK`]) makes them take turns, and each finds the
    /// migrations the first applied already recorded.
    async fn migrate(&self) -> Result<()> {
        // Holding the write lock: this controller writes nothing else meanwhile.
        let _w = self.writer.lock().await;
        let mut conn = self.pool.acquire().await?;
        let postgres = self.backend() == Backend::Postgres;
        if postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        let applied = apply_migrations(&mut conn, SCHEMA_VERSION).await;
        if postgres {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // Never hand a connection that may still hold the lock back to the pool.
                conn.detach();
                unlocked?;
            }
        }
        applied
    }
}

/// The PostgreSQL advisory lock key that serialises migrations across controllers.
pub const MIGRATION_LOCK: i64 = 0x6a69_7467_6174_6501;

/// Applies the migrations up to version `upto` that the database lacks (a restore stops at
/// its backup's version; the rest apply when a controller opens the database).
pub(crate) async fn apply_migrations(conn: &mut sqlx::AnyConnection, upto: i64) -> Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, \
         name TEXT NOT NULL, applied_ms BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 <= upto) {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
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
        .bind(jitgate_api::time::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied database migration");
    }
    Ok(())
}

/// Background WAL checkpoints until the pool closes.
///
/// Every tick a PASSIVE checkpoint copies what it can without blocking anyone. That alone
/// never shrinks the log under a steady mix of writes and reads: SQLite restarts the WAL only
/// when a writer begins while no reader still uses it, which overlapping readers prevent, so
/// the file grows without bound (tens of GB after hours of load). When the log holds more
/// than `truncate_frames` frames, a TRUNCATE checkpoint runs on the writer connection under
/// this controller's write lock: it waits up to 1 s for the readers of the old frames, which
/// are short, then empties the file (or gives up until a later tick). Writes wait meanwhile.
fn spawn_wal_checkpoints(pool: AnyPool, writer: Writer, truncate_frames: i64) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(2000));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                break;
            }
            let frames = match checkpoint(&pool, "PRAGMA wal_checkpoint(PASSIVE)").await {
                Ok(frames) => frames,
                Err(e) => {
                    if pool.is_closed() {
                        break;
                    }
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                    continue;
                }
            };
            if frames <= truncate_frames {
                continue;
            }
            let started = std::time::Instant::now();
            let mut w = writer.lock().await;
            // Waiting for readers holds SQLite's write lock: bound it to 1 s (then try again
            // at a later tick) rather than the 10 s every other statement may wait.
            let done = match pragma(w.conn(), TRUNCATE_WAIT).await {
                Ok(()) => checkpoint(w.conn(), "PRAGMA wal_checkpoint(TRUNCATE)").await,
                Err(e) => Err(e),
            };
            if let Err(e) = pragma(w.conn(), BUSY_TIMEOUT).await {
                tracing::warn!(error = %e, "restoring the writer's busy timeout failed");
            }
            drop(w);
            let waited_ms = started.elapsed().as_millis() as u64;
            match done {
                Ok(0) => tracing::info!(frames, waited_ms, "WAL checkpointed and truncated"),
                Ok(left) => tracing::warn!(
                    frames,
                    left,
                    waited_ms,
                    "WAL not truncated: readers held it past the busy timeout; retrying"
                ),
                Err(e) => tracing::warn!(error = %e, waited_ms, "WAL truncation failed"),
            }
        }
    });
}

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: &str = "PRAGMA busy_timeout = 10000";
/// How long the truncating checkpoint waits for readers (it holds the write lock meanwhile).
const TRUNCATE_WAIT: &str = "PRAGMA busy_timeout = 1000";

async fn pragma(conn: &mut sqlx::AnyConnection, sql: &str) -> Result<()> {
    sqlx::Executor::execute(conn, sql).await?;
    Ok(())
}

/// Runs a `wal_checkpoint` pragma: the frames left in the log (0 once truncated), or the
/// frames it holds when the checkpoint could not finish.
async fn checkpoint<'c, E>(conn: E, pragma: &str) -> Result<i64>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    // (busy, frames in the log, frames checkpointed); -1 when not in WAL mode.
    let row = sqlx::query_as::<_, (i64, i64, i64)>(pragma)
        .fetch_one(conn)
        .await?;
    Ok(row.1.max(0))
}
