//! Write transactions and group commit.
//!
//! Every state change runs in one [`WriteTx`]: it takes this controller's write lock, begins,
//! and locks the `counters` rows (the activity log's chain head and the request and outbox
//! sequences) before anything else, so that chain appends and sequence numbers are serialised
//! across controllers sharing a database (SQLite: the write lock first, so no deferred upgrade
//! deadlock; PostgreSQL: the row locks). The counters are written back once, at commit. Any
//! error, or dropping the transaction, rolls it back: nothing is half-written. After a commit
//! the agent connections of the VMs it touched (outbox rows, policies: [`Touched`]) are woken
//! ([`Notifier`]); on PostgreSQL the transaction also sends a `NOTIFY` naming them, delivered
//! to the other controllers at commit. Leader work commits only while its lease holds
//! (`store::lease`: the fence is checked inside the transaction, after the counter locks, so
//! no takeover can come between the check and the commit).
//!
//! Group commit: [`group_commit`] hands whatever jobs are waiting (up to a limit) to one
//! transaction, so that one fsync serves many requests.

use std::future::Future;
use std::sync::Arc;

use jitgate_proto::audit::GENESIS_HASH;
use sqlx::{AnyConnection, Row};
use tokio::sync::{Mutex, OwnedMutexGuard, mpsc};

use crate::error::{Error, Result};
use jitgate_api::PolicyScope;

use crate::notify::{CHANNEL, Notice, Notifier, Touched};
use crate::store::backend::{self, Backend, Rows};

jitgate_api::wire_enum! {
    /// The rows of `counters`.
    pub enum Counter("counter") {
        /// The activity log's head: last seq and its hash.
        Chain = "chain",
        /// The last request seq.
        Request = "request",
        /// The last grant outbox seq.
        Outbox = "outbox",
        /// The last notification event seq (`notify_events.seq`, commit order).
        Notify = "notify",
    }
}

/// How many counter rows a write transaction locks.
pub const COUNTERS: usize = 4;

/// Locks and reads the counter rows; their names are bound from `$n`.
///
/// PostgreSQL: `FOR UPDATE` in name order, so that controllers sharing the database take
/// the row locks in one order. An `UPDATE ... WHERE name IN (...)` locks them in the order
/// the scan meets them, which moves as updates write new row versions: two transactions
/// could each hold a counter the other waits for (a deadlock, one batch rolled back).
/// SQLite: the `UPDATE` takes the database's write lock at once (no deferred upgrade).
fn lock_counters_sql(backend: Backend, n: usize) -> String {
    let names = format!("${n}, ${}, ${}, ${}", n + 1, n + 2, n + 3);
    match backend {
        Backend::Sqlite => format!(
            "UPDATE counters SET value = value WHERE name IN ({names}) \
             RETURNING name, value, hash"
        ),
        Backend::Postgres => format!(
            "SELECT name, value, hash FROM counters WHERE name IN ({names}) \
             ORDER BY name FOR UPDATE"
        ),
    }
}

/// Writes the counter rows back: names from `$n`, then chain seq, request, outbox, notify
/// and chain hash.
fn write_counters_sql(n: usize) -> String {
    let p = |i: usize| format!("${}", n + i);
    format!(
        "UPDATE counters SET value = CASE name WHEN {c} THEN CAST({seq} AS BIGINT) \
         WHEN {r} THEN CAST({rq} AS BIGINT) WHEN {o} THEN CAST({ob} AS BIGINT) \
         ELSE CAST({nt} AS BIGINT) END, \
         hash = CASE name WHEN {c} THEN CAST({h} AS TEXT) ELSE hash END \
         WHERE name IN ({c}, {r}, {o}, {n})",
        c = p(0),
        r = p(1),
        o = p(2),
        n = p(3),
        seq = p(4),
        rq = p(5),
        ob = p(6),
        nt = p(7),
        h = p(8),
    )
}

/// This controller's single writer connection. Writes are serialised anyway (SQLite has one
/// writer); one long-lived connection keeps its page cache warm (SQLite drops a connection's
/// cache whenever another one wrote), and waiting on this lock is cheaper and fairer than
/// SQLite's busy-retry sleeps.
#[derive(Clone)]
pub struct Writer {
    conn: Arc<Mutex<AnyConnection>>,
    /// Where a new writer connection comes from (with the writer's session settings) when
    /// the server ended this one: a restart, a failover, a transaction ended for idling.
    reconnect: sqlx::AnyPool,
    /// When a reconnection last failed: for [`RETRY_RECONNECT_AFTER`] after that, writes fail
    /// at once instead of each waiting its turn for another attempt (a database outage
    /// answers every caller within one connection timeout, not one per caller queued).
    reconnect_failed: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    backend: Backend,
    notifier: Notifier,
}

/// How long a failed reconnection of the writer is not tried again.
const RETRY_RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl Writer {
    pub fn new(
        conn: AnyConnection,
        reconnect: sqlx::AnyPool,
        backend: Backend,
        notifier: Notifier,
    ) -> Writer {
        Writer {
            conn: Arc::new(Mutex::new(conn)),
            reconnect,
            reconnect_failed: Default::default(),
            backend,
            notifier,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Starts a write transaction (see the module documentation). On PostgreSQL a writer
    /// connection the server closed is replaced, and the transaction begun on the new one.
    pub async fn begin(&self) -> Result<WriteTx> {
        match self.try_begin().await {
            Ok(w) => Ok(w),
            Err(e) if self.backend == Backend::Postgres && self.replace_if_gone().await? => {
                tracing::warn!(error = %e, "the writer's database connection was gone; reconnected");
                self.try_begin().await
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces the writer connection if it no longer answers; true if it did.
    async fn replace_if_gone(&self) -> Result<bool> {
        let failed_lately = || {
            self.reconnect_failed
                .lock()
                .map(|t| t.is_some_and(|t| t.elapsed() < RETRY_RECONNECT_AFTER))
                .unwrap_or(false)
        };
        if failed_lately() {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        let mut g = self.conn.lock().await;
        if sqlx::Connection::ping(&mut *g).await.is_ok() {
            return Ok(false);
        }
        // Another caller may have failed while this one waited for the lock.
        if failed_lately() {
            return Err(sqlx::Error::PoolTimedOut.into());
        }
        let fresh = self.reconnect.acquire().await;
        if let Ok(mut t) = self.reconnect_failed.lock() {
            *t = fresh.is_err().then(std::time::Instant::now);
        }
        *g = fresh?.detach();
        Ok(true)
    }

    async fn try_begin(&self) -> Result<WriteTx> {
        let mut w = self.lock().await;
        let lock = lock_counters_sql(self.backend, 1);
        let q = if self.backend == Backend::Sqlite {
            // One round trip: SQLite runs both statements of the query in order.
            format!("BEGIN; {lock}")
        } else {
            w.execute("BEGIN").await?;
            lock
        };
        w.conn.open = true;
        let rows = sqlx::query(&q)
            .bind(Counter::Chain.as_str())
            .bind(Counter::Request.as_str())
            .bind(Counter::Outbox.as_str())
            .bind(Counter::Notify.as_str())
            .fetch_all(w.conn())
            .await?;
        let mut counters = Vec::with_capacity(COUNTERS);
        for r in &rows {
            counters.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
        }
        w.load_counters(counters)?;
        Ok(w)
    }

    /// Takes the write lock without beginning: the caller begins the transaction itself
    /// (the initiate batch reads everything in the same round trip on SQLite), then calls
    /// [`WriteTx::opened`] and [`WriteTx::load_counters`].
    pub async fn lock(&self) -> WriteTx {
        WriteTx {
            conn: WriterConn {
                guard: Some(self.conn.clone().lock_owned().await),
                open: false,
            },
            head: ChainHead {
                seq: 0,
                hash: GENESIS_HASH.into(),
            },
            request: 0,
            outbox: 0,
            outbox_start: 0,
            notify: 0,
            notify_start: 0,
            dirty: false,
            touched: Touched::default(),
            backend: self.backend,
            notifier: self.notifier.clone(),
            now: jitgate_api::time::now_ms(),
            dry_run: false,
        }
    }

    /// The counter-locking statement whose counter names are bound from `$n` (for a caller
    /// that begins the transaction itself), and the names to bind.
    pub fn lock_counters(&self, n: usize) -> (String, [&'static str; COUNTERS]) {
        (
            lock_counters_sql(self.backend, n),
            [
                Counter::Chain.as_str(),
                Counter::Request.as_str(),
                Counter::Outbox.as_str(),
                Counter::Notify.as_str(),
            ],
        )
    }
}

/// The writer connection while a transaction may be open: dropped without `COMMIT` (any
/// error), the transaction is rolled back before the connection is released.
struct WriterConn {
    guard: Option<OwnedMutexGuard<AnyConnection>>,
    open: bool,
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

/// The activity log's head as locked by the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

/// A write transaction holding the chain head and the sequence counters.
pub struct WriteTx {
    conn: WriterConn,
    head: ChainHead,
    request: i64,
    outbox: i64,
    /// The outbox counter at the start: more at commit wakes the agent connections.
    outbox_start: i64,
    notify: i64,
    /// The notify counter at the start: more at commit wakes the notification worker.
    notify_start: i64,
    dirty: bool,
    /// Whose agent connections the commit wakes.
    touched: Touched,
    backend: Backend,
    notifier: Notifier,
    /// The transaction's time (ms since the epoch): every row it writes carries it.
    pub now: i64,
    /// A dry run, rolled back by its caller (a preview, `jit apply --dry-run`): its log
    /// lines say so, so that no reader of the log takes them for writes.
    pub dry_run: bool,
}

impl WriteTx {
    /// The connection, inside the transaction.
    pub fn conn(&mut self) -> &mut AnyConnection {
        match &mut self.conn.guard {
            Some(g) => g,
            None => unreachable!("the writer connection is held until drop"),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn execute(&mut self, sql: &str) -> Result<()> {
        sqlx::Executor::execute(self.conn(), sql).await?;
        Ok(())
    }

    /// The transaction has begun (by the caller's own statement): roll it back if dropped.
    pub fn opened(&mut self) {
        self.conn.open = true;
    }

    /// The counters as the caller read (and locked) them: (name, value, hash) rows.
    pub fn load_counters(&mut self, rows: Vec<(String, i64, String)>) -> Result<()> {
        let mut seen = 0;
        for (name, value, hash) in rows {
            match Counter::try_from(name).map_err(Error::corrupt)? {
                Counter::Chain => {
                    self.head = ChainHead { seq: value, hash };
                }
                Counter::Request => self.request = value,
                Counter::Outbox => self.outbox = value,
                Counter::Notify => self.notify = value,
            }
            seen += 1;
        }
        if seen != COUNTERS {
            return Err(Error::corrupt("the counters table is incomplete"));
        }
        self.outbox_start = self.outbox;
        self.notify_start = self.notify;
        Ok(())
    }

    /// The chain head as locked.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// The chain head, to append to (written back at commit).
    pub fn chain(&mut self) -> &mut ChainHead {
        self.dirty = true;
        &mut self.head
    }

    /// The next request, outbox or notification event seq (unique across controllers
    /// sharing the database: the counter rows are locked for the transaction and written at
    /// commit).
    pub fn next(&mut self, counter: Counter) -> i64 {
        self.dirty = true;
        match counter {
            Counter::Request => {
                self.request += 1;
                self.request
            }
            Counter::Notify => {
                self.notify += 1;
                self.notify
            }
            Counter::Outbox | Counter::Chain => {
                self.outbox += 1;
                self.outbox
            }
        }
    }

    /// The request and outbox counters as they stand.
    pub fn sequences(&self) -> (i64, i64) {
        (self.request, self.outbox)
    }

    /// Sets the request and outbox counters to what a batch used up to.
    pub fn set_sequences(&mut self, request: i64, outbox: i64) {
        self.dirty = true;
        self.request = request;
        self.outbox = outbox;
    }

    /// A JIT policy changed: the agent connections of its VM (or of every VM of its group)
    /// re-send their policy after commit.
    pub fn policy_changed(&mut self, scope: PolicyScope, name: &str) {
        let set = match scope {
            PolicyScope::VirtualMachine => &mut self.touched.policy_vms,
            PolicyScope::ResourceGroup => &mut self.touched.policy_groups,
        };
        set.insert(name.to_string());
    }

    /// The VM's agents were revoked: its agent connections check their agent after commit.
    pub fn agents_revoked(&mut self, vm: &str) {
        self.touched.agents.insert(vm.to_string());
    }

    /// Outbox rows were written for `vm`: its agent connections read them after commit.
    pub fn outbox_written(&mut self, vm: &str) {
        self.touched.outbox.insert(vm.to_string());
    }

    /// What the commit touched. Outbox seqs taken without naming their VMs wake everyone.
    fn touched(&self) -> Touched {
        if self.outbox > self.outbox_start && self.touched.outbox.is_empty() {
            tracing::warn!(
                from = self.outbox_start,
                to = self.outbox,
                "outbox rows written without their VMs; waking every agent connection"
            );
            return Touched::everything();
        }
        self.touched.clone()
    }

    /// PostgreSQL: tells the other controllers what this transaction touched (delivered at
    /// commit, dropped at rollback).
    async fn notify_others(&mut self, touched: &Touched) -> Result<()> {
        if self.backend == Backend::Sqlite || touched.is_empty() || !self.notifier.push() {
            return Ok(());
        }
        let payload = Notice::payload(self.notifier.origin(), touched)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(self.conn())
            .await?;
        Ok(())
    }

    fn counter_values(&self) -> [String; COUNTERS] {
        [
            Counter::Chain.as_str().into(),
            Counter::Request.as_str().into(),
            Counter::Outbox.as_str().into(),
            Counter::Notify.as_str().into(),
        ]
    }

    pub async fn commit(self) -> Result<()> {
        self.commit_with(Vec::new()).await
    }

    /// Inserts `tables`, writes the counters back and commits: on SQLite in one round trip.
    /// Leader work ([`crate::store::lease::fenced`]) first checks its fence, in this
    /// transaction: refused, nothing is written.
    pub async fn commit_with(mut self, tables: Vec<Rows>) -> Result<()> {
        if let Some(fence) = crate::store::lease::current() {
            let now = self.now;
            crate::store::lease::check(self.conn(), now, &fence).await?;
        }
        let touched = self.touched();
        let names = self.counter_values();
        let values = (
            self.head.seq,
            self.request,
            self.outbox,
            self.notify,
            self.head.hash.clone(),
        );
        let events = self.notify > self.notify_start;
        if self.backend == Backend::Sqlite {
            let mut tail = String::new();
            let (mut sql, params) = backend::sqlite_batch(tables, "")?;
            if self.dirty {
                tail.push_str(&write_counters_sql(params.len() + 1));
                tail.push_str(";\n");
            }
            tail.push_str("COMMIT");
            sql.push_str(&tail);
            let mut q = sqlx::query(&sql);
            for p in params {
                q = q.bind(p);
            }
            if self.dirty {
                for n in names {
                    q = q.bind(n);
                }
                q = q
                    .bind(values.0)
                    .bind(values.1)
                    .bind(values.2)
                    .bind(values.3)
                    .bind(values.4);
            }
            q.execute(self.conn()).await?;
        } else {
            let backend = self.backend;
            for t in tables {
                backend::insert(self.conn(), backend, t).await?;
            }
            if self.dirty {
                let sql = write_counters_sql(1);
                let mut q = sqlx::query(&sql);
                for n in names {
                    q = q.bind(n);
                }
                q.bind(values.0)
                    .bind(values.1)
                    .bind(values.2)
                    .bind(values.3)
                    .bind(values.4)
                    .execute(self.conn())
                    .await?;
            }
            self.notify_others(&touched).await?;
            self.execute("COMMIT").await?;
        }
        self.conn.open = false;
        self.notifier.wake(&touched);
        if events {
            self.notifier.events_committed();
        }
        Ok(())
    }
}

/// Runs `run` on whatever jobs are waiting (up to `max` at a time, in arrival order) until
/// every sender is gone.
pub async fn group_commit<J, F, Fut>(mut rx: mpsc::Receiver<J>, max: usize, mut run: F)
where
    F: FnMut(Vec<J>) -> Fut,
    Fut: Future<Output = ()>,
{
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        run(jobs).await;
    }
}

/// Starts the writer tasks: on SQLite on a thread and runtime of their own, so that their many
/// short waits on the database are not queued behind the HTTP tasks.
pub fn spawn_writers<F>(backend: Backend, writers: F) -> Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    if backend != Backend::Sqlite {
        tokio::spawn(writers);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the writer runtime: {e}")))?;
    std::thread::Builder::new()
        .name("jit-writer".into())
        .spawn(move || rt.block_on(writers))
        .map_err(|e| Error::Internal(format!("starting the writer thread: {e}")))?;
    Ok(())
}
