//! The `activity` table: the append-only, hash-chained activity log, its signed checkpoints
//! (`activity_checkpoints`), export and verification.
//!
//! Each entry's hash covers its fields and the previous entry's hash; the head (last seq and
//! hash) is the `chain` counter, locked by every write transaction, so appends from several
//! controllers stay one chain. A checkpoint is the controller's signature over the head.

use ed25519_dalek::{SigningKey, VerifyingKey};
use jitgate_api::{ActivityOutcome, Operation, ResourceType, Scope};
use jitgate_proto::audit::{
    ActivityEntry, ChainWalk, Checkpoint, Failure, HashInput, Report, entry_hash, key_id,
};
use sqlx::{Any, Executor};

use crate::authz::Actor;
use crate::error::Result;
use crate::store::backend::{Param, Rows};
use crate::store::write::WriteTx;

/// An entry to append.
#[derive(Clone, Debug)]
pub struct NewActivity {
    pub operation: Operation,
    pub resource_type: ResourceType,
    pub resource_group: String,
    pub vm: String,
    pub actor: Actor,
    pub outcome: ActivityOutcome,
    pub request_id: String,
    pub details: serde_json::Value,
}

impl NewActivity {
    /// A Succeeded entry about a VM.
    pub fn vm(operation: Operation, group: &str, vm: &str, actor: &Actor) -> NewActivity {
        NewActivity {
            operation,
            resource_type: ResourceType::VirtualMachine,
            resource_group: group.into(),
            vm: vm.into(),
            actor: actor.clone(),
            outcome: ActivityOutcome::Succeeded,
            request_id: String::new(),
            details: serde_json::json!({}),
        }
    }

    /// A Succeeded entry about something else (`vm` empty).
    pub fn other(
        operation: Operation,
        resource_type: ResourceType,
        group: &str,
        actor: &Actor,
    ) -> NewActivity {
        NewActivity {
            resource_type,
            ..NewActivity::vm(operation, group, "", actor)
        }
    }

    pub fn outcome(mut self, o: ActivityOutcome) -> NewActivity {
        self.outcome = o;
        self
    }

    pub fn request(mut self, id: &str) -> NewActivity {
        self.request_id = id.into();
        self
    }

    pub fn details(mut self, d: serde_json::Value) -> NewActivity {
        self.details = d;
        self
    }
}

const INSERT: &str = "INSERT INTO activity (seq, time_ms, operation, resource_type, \
    resource_group, vm, caller, caller_address, outcome, request_id, details, prev_hash, hash)";

const COLUMNS: &str = "seq, time_ms, operation, resource_type, resource_group, vm, caller, \
    caller_address, outcome, request_id, details, prev_hash, hash";

/// Chains `a` after the head (advancing it) and returns its row.
fn chained(w: &mut WriteTx, a: NewActivity) -> Result<Vec<Param>> {
    let (now, dry_run) = (w.now, w.dry_run);
    let head = w.chain();
    let seq = head.seq + 1;
    let details = serde_json::to_string(&a.details)?;
    let hash = entry_hash(&HashInput {
        seq,
        time_ms: now,
        operation: a.operation.as_str(),
        resource_type: a.resource_type.as_str(),
        resource_group: &a.resource_group,
        vm: &a.vm,
        caller: &a.actor.name,
        caller_address: &a.actor.address,
        outcome: a.outcome.as_str(),
        request_id: &a.request_id,
        details: &details,
        prev_hash: &head.hash,
    });
    tracing::info!(
        seq,
        operation = %a.operation,
        resource_group = %a.resource_group,
        vm = %a.vm,
        caller = %a.actor.name,
        caller_address = %a.actor.address,
        outcome = %a.outcome,
        request_id = %a.request_id,
        dry_run,
        "activity"
    );
    let prev = std::mem::replace(&mut head.hash, hash.clone());
    head.seq = seq;
    Ok(vec![
        seq.into(),
        now.into(),
        a.operation.as_str().into(),
        a.resource_type.as_str().into(),
        a.resource_group.into(),
        a.vm.into(),
        a.actor.name.into(),
        a.actor.address.into(),
        a.outcome.as_str().into(),
        a.request_id.into(),
        details.into(),
        prev.into(),
        hash.into(),
    ])
}

/// Appends one entry in the transaction; returns its seq.
pub async fn log(w: &mut WriteTx, a: NewActivity) -> Result<i64> {
    let row = chained(w, a)?;
    let seq = w.head().seq;
    let mut q = sqlx::query(
        "INSERT INTO activity (seq, time_ms, operation, resource_type, resource_group, vm, \
         caller, caller_address, outcome, request_id, details, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    );
    for p in row {
        q = match p {
            Param::Int(i) => q.bind(i),
            Param::Text(s) => q.bind(s),
            Param::Null => q.bind(None::<String>),
        };
    }
    q.execute(w.conn()).await?;
    Ok(seq)
}

/// Chains several entries in order; the caller inserts the rows in this transaction.
pub fn chain(w: &mut WriteTx, entries: Vec<NewActivity>) -> Result<Rows> {
    let mut rows = Rows::new(INSERT, 13);
    for a in entries {
        rows.rows.push(chained(w, a)?);
    }
    Ok(rows)
}

#[derive(sqlx::FromRow)]
struct ActivityRow {
    seq: i64,
    time_ms: i64,
    operation: String,
    resource_type: String,
    resource_group: String,
    vm: String,
    caller: String,
    caller_address: String,
    outcome: String,
    request_id: String,
    details: String,
    prev_hash: String,
    hash: String,
}

impl ActivityRow {
    fn hash_input(&self) -> HashInput<'_> {
        HashInput {
            seq: self.seq,
            time_ms: self.time_ms,
            operation: &self.operation,
            resource_type: &self.resource_type,
            resource_group: &self.resource_group,
            vm: &self.vm,
            caller: &self.caller,
            caller_address: &self.caller_address,
            outcome: &self.outcome,
            request_id: &self.request_id,
            details: &self.details,
            prev_hash: &self.prev_hash,
        }
    }

    fn into_entry(self) -> ActivityEntry {
        ActivityEntry {
            seq: self.seq,
            time_utc: jitgate_api::time::format(self.time_ms),
            operation: self.operation,
            resource_type: self.resource_type,
            resource_group: self.resource_group,
            virtual_machine: self.vm,
            caller: self.caller,
            caller_address: self.caller_address,
            outcome: self.outcome,
            request_id: self.request_id,
            details: serde_json::from_str(&self.details)
                .unwrap_or(serde_json::Value::String(self.details)),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// A filter over the log; times in ms, `to` exclusive.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub resource_type: Option<String>,
    pub vm: Option<String>,
    pub resource_group: Option<String>,
    pub caller: Option<String>,
    pub operation: Option<String>,
    pub outcome: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Entries with a greater seq.
    pub after: i64,
    /// Entries with a smaller seq, newest first.
    pub before: Option<i64>,
    pub limit: i64,
}

/// Entries matching the filter and within any of `scopes`, oldest first, or newest first
/// with `before` (none: nothing).
pub async fn list(
    ex: impl Executor<'_, Database = Any>,
    f: &Filter,
    scopes: &[Scope],
) -> Result<Vec<ActivityEntry>> {
    if scopes.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM activity WHERE seq > $1");
    let mut texts: Vec<&str> = Vec::new();
    let filters = [
        ("resource_type", f.resource_type.as_deref()),
        ("vm", f.vm.as_deref()),
        ("resource_group", f.resource_group.as_deref()),
        ("caller", f.caller.as_deref()),
        ("operation", f.operation.as_deref()),
        ("outcome", f.outcome.as_deref()),
    ];
    for (col, v) in filters.into_iter().filter_map(|(c, v)| Some((c, v?))) {
        texts.push(v);
        sql.push_str(&format!(" AND {col} = ${}", texts.len() + 1));
    }
    if !scopes.contains(&Scope::All) {
        let mut any: Vec<String> = Vec::new();
        for s in scopes {
            let (col, v) = match s {
                Scope::All => continue,
                Scope::ResourceGroup(g) => ("resource_group", g.as_str()),
                Scope::Vm(v) => ("vm", v.as_str()),
            };
            texts.push(v);
            any.push(format!("{col} = ${}", texts.len() + 1));
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    let mut n = texts.len() + 2;
    let mut ints: Vec<i64> = Vec::new();
    if let Some(t) = f.from {
        sql.push_str(&format!(" AND time_ms >= ${n}"));
        n += 1;
        ints.push(t);
    }
    if let Some(t) = f.to {
        sql.push_str(&format!(" AND time_ms < ${n}"));
        n += 1;
        ints.push(t);
    }
    if let Some(b) = f.before {
        sql.push_str(&format!(
            " AND seq < ${n} ORDER BY seq DESC LIMIT ${}",
            n + 1
        ));
        ints.push(b);
    } else {
        sql.push_str(&format!(" ORDER BY seq LIMIT ${n}"));
    }
    let mut q = sqlx::query_as::<_, ActivityRow>(&sql).bind(f.after);
    for t in texts {
        q = q.bind(t);
    }
    for i in ints {
        q = q.bind(i);
    }
    let rows = q.bind(f.limit).fetch_all(ex).await?;
    Ok(rows.into_iter().map(ActivityRow::into_entry).collect())
}

/// The activity entries that change a policy, as the partial indexes of migration 32 say
/// it, word for word: a partial index serves only queries that repeat its predicate (with
/// bound parameters instead, neither backend could tell that the index applies).
pub const POLICY_CHANGE: &str =
    "operation IN ('Update JIT Network Access Policy', 'Delete JIT Network Access Policy')";

/// [`last_policy_change`]'s query: the two lookups apart (`vm` and `resource_group` each have
/// their partial index; joined by `OR` they were a scan of the whole log).
pub fn last_policy_change_sql() -> String {
    format!(
        "SELECT MAX(s) FROM ( \
         SELECT MAX(seq) AS s FROM activity WHERE {POLICY_CHANGE} AND vm = $1 AND resource_type = $2 \
         UNION ALL \
         SELECT MAX(seq) AS s FROM activity WHERE {POLICY_CHANGE} AND resource_group = $3 \
         AND resource_type = $4) t"
    )
}

/// The VM's policy version: the seq of the last change to its effective policy (its own or
/// its group's); 0 if never set.
pub async fn last_policy_change(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    group: &str,
) -> Result<i64> {
    let (seq,): (Option<i64>,) = sqlx::query_as(&last_policy_change_sql())
        .bind(vm)
        .bind(ResourceType::VirtualMachine.as_str())
        .bind(group)
        .bind(ResourceType::ResourceGroup.as_str())
        .fetch_one(ex)
        .await?;
    Ok(seq.unwrap_or(0))
}

/// Signs the chain head if it moved since this key's last checkpoint (an empty log is never
/// signed). The transaction holds the head, so the signed head is the committed one and
/// controllers sharing the database never sign the same head twice.
pub async fn checkpoint(mut w: WriteTx, sk: &SigningKey) -> Result<Option<Checkpoint>> {
    let key_id = key_id(&sk.verifying_key());
    let (last,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(seq) FROM activity_checkpoints WHERE key_id = $1")
            .bind(&key_id)
            .fetch_one(w.conn())
            .await?;
    let head = w.head().clone();
    if head.seq == 0 || last.is_some_and(|l| l >= head.seq) {
        return Ok(None);
    }
    let c = Checkpoint::sign(sk, head.seq, &head.hash, w.now);
    sqlx::query(
        "INSERT INTO activity_checkpoints (seq, key_id, hash, time_ms, signature) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(c.seq)
    .bind(&c.key_id)
    .bind(&c.hash)
    .bind(c.time_ms)
    .bind(&c.signature)
    .execute(w.conn())
    .await?;
    w.commit().await?;
    tracing::info!(seq = c.seq, hash = %c.hash, key_id = %c.key_id, "signed activity log checkpoint");
    Ok(Some(c))
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    seq: i64,
    key_id: String,
    hash: String,
    time_ms: i64,
    signature: String,
}

/// The newest `limit` checkpoints, newest first.
pub async fn recent_checkpoints(
    ex: impl Executor<'_, Database = Any>,
    limit: i64,
) -> Result<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, key_id, hash, time_ms, signature FROM activity_checkpoints \
         ORDER BY seq DESC, key_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(CheckpointRow::into_checkpoint)
        .collect())
}

/// All checkpoints, oldest first.
pub async fn checkpoints(ex: impl Executor<'_, Database = Any>) -> Result<Vec<Checkpoint>> {
    let rows: Vec<CheckpointRow> = sqlx::query_as(
        "SELECT seq, key_id, hash, time_ms, signature FROM activity_checkpoints \
         ORDER BY seq, key_id",
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(CheckpointRow::into_checkpoint)
        .collect())
}

impl CheckpointRow {
    fn into_checkpoint(self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            key_id: self.key_id,
            hash: self.hash,
            time_ms: self.time_ms,
            signature: self.signature,
        }
    }
}

/// Where the log starts after a prune (`jit-controller prune`): entries 1..=seq went to an
/// archive; the signed checkpoint at seq covers `hash`, which entry seq+1 chains to.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Anchor {
    pub seq: i64,
    pub hash: String,
    pub time_ms: i64,
    pub archive_sha256: String,
}

/// The anchor, None while nothing was pruned.
pub async fn anchor(ex: impl Executor<'_, Database = Any>) -> Result<Option<Anchor>> {
    Ok(sqlx::query_as(
        "SELECT seq, hash, time_ms, archive_sha256 FROM activity_anchor WHERE id = 1",
    )
    .fetch_optional(ex)
    .await?)
}

/// Replaces the anchor.
pub async fn set_anchor(w: &mut WriteTx, a: &Anchor) -> Result<()> {
    sqlx::query("DELETE FROM activity_anchor WHERE id = 1")
        .execute(w.conn())
        .await?;
    sqlx::query(
        "INSERT INTO activity_anchor (id, seq, hash, time_ms, archive_sha256) \
         VALUES (1, $1, $2, $3, $4)",
    )
    .bind(a.seq)
    .bind(&a.hash)
    .bind(a.time_ms)
    .bind(&a.archive_sha256)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Entries read per query when walking the whole log.
const PAGE: i64 = 5000;

async fn page(pool: &sqlx::AnyPool, from_seq: i64) -> Result<Vec<ActivityRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM activity WHERE seq >= $1 ORDER BY seq LIMIT {PAGE}"
    ))
    .bind(from_seq)
    .fetch_all(pool)
    .await?)
}

/// Entries first..=last, oldest first.
pub async fn range(pool: &sqlx::AnyPool, first: i64, last: i64) -> Result<Vec<ActivityEntry>> {
    let mut out = Vec::new();
    let mut next = first;
    while next <= last {
        let rows = page(pool, next).await?;
        let Some(end) = rows.last().map(|r| r.seq) else {
            break;
        };
        next = end + 1;
        out.extend(
            rows.into_iter()
                .filter(|r| r.seq <= last)
                .map(ActivityRow::into_entry),
        );
    }
    Ok(out)
}

/// The whole log, oldest first.
pub async fn all_entries(pool: &sqlx::AnyPool) -> Result<Vec<ActivityEntry>> {
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        let rows = page(pool, next).await?;
        let Some(last) = rows.last() else { break };
        next = last.seq + 1;
        out.extend(rows.into_iter().map(ActivityRow::into_entry));
    }
    Ok(out)
}

/// Walks the whole chain: seq contiguous from 1, each prev_hash equal to the previous entry's
/// hash, each hash recomputed from the row, the head equal to the last entry; and every
/// checkpoint: its signature by the one of `keys` it names (the current checkpoint key
/// first, then retired ones; none loaded: only the chain), and its (seq, hash) on the
/// chain, so a rewrite that recomputed all later hashes still fails.
pub async fn verify(pool: &sqlx::AnyPool, keys: &[VerifyingKey]) -> Result<Report> {
    verify_counting(pool, keys, &std::sync::atomic::AtomicI64::new(0)).await
}

/// [`verify`], storing in `progress` how many entries it has walked (for a progress bar).
pub async fn verify_counting(
    pool: &sqlx::AnyPool,
    keys: &[VerifyingKey],
    progress: &std::sync::atomic::AtomicI64,
) -> Result<Report> {
    // A prune running meanwhile moves the anchor and deletes entries below it: walk again
    // from the new anchor (once) rather than report the entries it removed as missing.
    let before = anchor(pool).await?;
    let report = verify_once(pool, keys, progress, before.as_ref()).await?;
    if !report.ok {
        let now = anchor(pool).await?;
        if now != before {
            return verify_once(pool, keys, progress, now.as_ref()).await;
        }
    }
    Ok(report)
}

async fn verify_once(
    pool: &sqlx::AnyPool,
    keys: &[VerifyingKey],
    progress: &std::sync::atomic::AtomicI64,
    anchor: Option<&Anchor>,
) -> Result<Report> {
    // Checkpoints first, then the head: every checkpoint read is at or below the head, and
    // entries appended while the walk runs (beyond the head) are left for the next one.
    let checkpoints = checkpoints(pool).await?;
    let (head_seq, head_hash): (i64, String) =
        sqlx::query_as("SELECT value, hash FROM counters WHERE name = $1")
            .bind(crate::store::write::Counter::Chain.as_str())
            .fetch_one(pool)
            .await?;
    let report = Report::new(
        head_seq,
        &head_hash,
        checkpoints.len(),
        keys.first().map(jitgate_proto::audit::key_id),
    );
    let walk = match (keys.is_empty(), anchor) {
        // After a prune the chain starts at the anchor, which a signed checkpoint covers.
        (false, Some(a)) => jitgate_proto::audit::anchor(&checkpoints, a.seq, &a.hash, keys)
            .and_then(|()| ChainWalk::resume(a.seq, &a.hash, a.seq, checkpoints, keys)),
        (true, Some(a)) => Err(Failure {
            seq: a.seq + 1,
            checkpoint: Some(a.seq),
            problem: "the log was pruned: its anchor checkpoint cannot be checked without the \
                      checkpoint key"
                .into(),
        }),
        (false, None) => ChainWalk::new(checkpoints, keys),
        // Without the key only the chain can be checked; signed checkpoints cannot.
        (true, None) if checkpoints.is_empty() => Ok(ChainWalk::unsigned()),
        (true, None) => Err(Failure {
            seq: 0,
            checkpoint: None,
            problem: "no checkpoint key loaded: checkpoint signatures cannot be checked".into(),
        }),
    };
    let mut walk = match walk {
        Ok(w) => w,
        Err(f) => return Ok(report.fail(f, 0)),
    };
    let mut next = anchor.map_or(1, |a| a.seq + 1);
    'walk: loop {
        let rows = page(pool, next).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            if r.seq > head_seq {
                break 'walk;
            }
            let h = entry_hash(&r.hash_input());
            let before = walk.entries();
            if let Err(f) = walk.push(r.seq, &r.prev_hash, &r.hash, &h) {
                return Ok(report.fail(f, before));
            }
            next = r.seq + 1;
        }
        progress.store(next - 1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(report.finish(walk))
}

/// Walks the entries after `from` (the last verified entry's seq and hash, and the entry
/// the last matched checkpoint covers), at most `max` of them, checking the checkpoints
/// above `from` with the one of `keys` each names: the walk's new position, or the first
/// failure.
pub async fn walk_from(
    pool: &sqlx::AnyPool,
    keys: &[VerifyingKey],
    from: (i64, &str, i64),
    max: i64,
) -> Result<std::result::Result<ChainWalk, Failure>> {
    let cps = checkpoints(pool).await?;
    // Entries below the anchor were verified by the prune that archived them (it verifies
    // the range before deleting it): a mark behind the anchor continues from the anchor.
    let anchored = anchor(pool).await?.filter(|a| a.seq > from.0);
    let from = match &anchored {
        Some(a) => {
            if let Err(f) = jitgate_proto::audit::anchor(&cps, a.seq, &a.hash, keys) {
                return Ok(Err(f));
            }
            (a.seq, a.hash.as_str(), a.seq)
        }
        None => from,
    };
    let mut walk = match ChainWalk::resume(from.0, from.1, from.2, cps, keys) {
        Ok(w) => w,
        Err(f) => return Ok(Err(f)),
    };
    let mut next = from.0 + 1;
    let mut n = 0;
    while n < max {
        let rows = page(pool, next).await?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let h = entry_hash(&r.hash_input());
            if let Err(f) = walk.push(r.seq, &r.prev_hash, &r.hash, &h) {
                // A prune that moved the anchor meanwhile deleted what this walk was reading:
                // stop here; the next walk starts from the new anchor.
                if anchor(pool).await?.is_some_and(|a| a.seq > from.0) && anchored.is_none() {
                    return Ok(Ok(walk));
                }
                return Ok(Err(f));
            }
            next = r.seq + 1;
            n += 1;
        }
    }
    Ok(Ok(walk))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The predicate names the policy operations as the log writes them, and the migration's
    /// indexes repeat it word for word.
    #[test]
    fn the_policy_change_predicate_is_the_indexes_own() {
        let list = format!(
            "('{}', '{}')",
            Operation::UpdatePolicy.as_str(),
            Operation::DeletePolicy.as_str()
        );
        assert_eq!(POLICY_CHANGE, format!("operation IN {list}"));
        let migration = include_str!("../../migrations/0032_activity_policy_changes.sql");
        assert_eq!(
            migration.matches(&format!("WHERE {POLICY_CHANGE}")).count(),
            2
        );
    }
}
