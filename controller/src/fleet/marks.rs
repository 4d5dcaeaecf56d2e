//! Sequence numbers agents rely on never go backwards (docs/ha.md, "Sequence numbers after
//! a restore or promotion").
//!
//! An agent refuses a grant, revocation or booking whose outbox seq is at or below its replay
//! high-water mark, and a policy whose version is below the one it applied. A database
//! restored from a backup, or a promoted replica that lacks the last commits, issues numbers
//! again that agents have already seen. The database alone cannot know what was issued after
//! it went back; the agents can: each tells its marks in its `Hello`. When a mark is above
//! what the database can have issued, one write transaction (under the counter locks, so
//! controllers doing it at once stay consistent) moves the counter past it, issues the VM's
//! active grants again with fresh seqs (an agent that holds one answers `AlreadyApplied`),
//! moves the policy versions' base so that the agent's next policy is above its own, and
//! writes one `Recover Sequence Numbers` activity entry saying what moved from what to what.

use jitgate_api::{ErrorCode, Operation, PolicyScope};
use sqlx::AnyConnection;

use super::{Fleet, group_of};
use crate::authz::Actor;
use crate::error::{Error, Result};
use crate::store::activity::{self, NewActivity};
use crate::store::grants::{self, NewOutbox, OutboxOp};
use crate::store::write::Counter;
use crate::store::{cluster, sequences};

/// The most a mark may be above what the database has issued for a recovery to follow it:
/// far more than a controller issues between a backup and its restore (a trillion grants or
/// activity entries), and far from the end of the counters' range, so that the marks of one
/// compromised agent cannot carry every VM's sequences there. An agent beyond it is refused.
pub const MAX_RECOVERY_GAP: i64 = 1 << 40;

/// What an agent says it has seen, in its `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marks {
    /// Its replay high-water mark (grant outbox seqs).
    pub seq_high_water: u64,
    /// The policy version it applied; None when its protocol level does not say
    /// (before [`jitgate_proto::LEVEL_AUDIT_RESEND`]).
    pub policy_seq: Option<u64>,
}

/// What a recovery did (nothing, for the usual connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The outbox counter's (from, to), if it moved.
    pub outbox: Option<(i64, i64)>,
    /// The policy versions' base (from, to), if it moved.
    pub policy_base: Option<(i64, i64)>,
    /// How many of the VM's active grants were issued again with fresh seqs.
    pub reissued: usize,
}

impl Recovery {
    pub fn is_empty(&self) -> bool {
        *self == Recovery::default()
    }
}

/// The policy base that makes the VM's policy version above `policy_seq` (and every later
/// one), or None if it already is. `head`: the activity log's head seq.
async fn policy_base_needed(
    conn: &mut AnyConnection,
    vm: &str,
    group: &str,
    head: i64,
    policy_seq: i64,
) -> Result<Option<i64>> {
    if policy_seq <= 0 {
        return Ok(None);
    }
    let last = activity::last_policy_change(&mut *conn, vm, group).await?;
    let base = sequences::policy_base(&mut *conn).await?;
    Ok(if last > 0 {
        // The version the agent gets next is last + base: make it policy_seq + 1.
        (policy_seq > last.saturating_add(base)).then_some(policy_seq.saturating_add(1) - last)
    } else {
        // No policy here (version 0: the agent keeps its own): the next change, at head + 1
        // or later, must number above the agent's.
        (policy_seq > head.saturating_add(base)).then_some(policy_seq - head)
    })
}

impl Fleet {
    /// Moves the sequences past `marks` if they are above what the database has issued for
    /// the agent's VM (see the module documentation). The usual connection makes a few
    /// indexed reads and writes nothing.
    pub async fn recover_marks(&self, agent: &str, vm: &str, marks: Marks) -> Result<Recovery> {
        let high = i64::try_from(marks.seq_high_water).unwrap_or(i64::MAX);
        let policy = marks
            .policy_seq
            .map(|p| i64::try_from(p).unwrap_or(i64::MAX));
        let group = group_of(&self.db, vm).await?;
        // Hints, outside the write transaction; decided again under the counter locks.
        let now = jitgate_api::time::now_ms();
        let pool = self.db.pool();
        let (chain, outbox) = cluster::heads(pool).await?;
        let base = sequences::policy_base(pool).await?;
        let beyond = |mark: i64, issued: i64| mark > issued.saturating_add(MAX_RECOVERY_GAP);
        if beyond(high, outbox) || policy.is_some_and(|p| beyond(p, chain.saturating_add(base))) {
            tracing::error!(%agent, %vm, seq_high_water = marks.seq_high_water, policy_seq = ?marks.policy_seq,
                outbox, chain, base, "agent refused: its marks are far beyond anything this database issued");
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                format!(
                    "agent {agent} (VM {vm}): its marks (seq {}, policy {:?}) are more than {MAX_RECOVERY_GAP} \
                     above anything this database issued (outbox {outbox}, activity {chain}); \
                     nothing was moved: re-enrol the host if it is genuine",
                    marks.seq_high_water, marks.policy_seq
                ),
            ));
        }
        let outbox_behind = high > sequences::vm_outbox_max(pool, vm).await?
            && (high > outbox || !grants::active_on_vm(pool, vm, now).await?.is_empty());
        let policy_behind = match policy {
            Some(p) if p > 0 => {
                let mut c = pool.acquire().await?;
                policy_base_needed(&mut c, vm, &group, chain, p)
                    .await?
                    .is_some()
            }
            _ => false,
        };
        if !outbox_behind && !policy_behind {
            return Ok(Recovery::default());
        }

        let mut w = self.db.begin().await?;
        let now = w.now;
        let mut rec = Recovery::default();
        let (request, outbox) = w.sequences();
        if high > outbox {
            w.set_sequences(request, high);
            w.outbox_written(vm);
            rec.outbox = Some((outbox, high));
        }
        let mut tables = Vec::new();
        if high > sequences::vm_outbox_max(w.conn(), vm).await? {
            let ids = sequences::active_in_outbox_order(&mut w, vm, now).await?;
            let mut rows = Vec::with_capacity(ids.len());
            for grant_id in ids {
                rows.push(NewOutbox {
                    seq: w.next(Counter::Outbox),
                    vm: vm.to_string(),
                    op: OutboxOp::Apply,
                    grant_id,
                    replaces: Vec::new(),
                });
            }
            if !rows.is_empty() {
                w.outbox_written(vm);
                rec.reissued = rows.len();
                tables.push(grants::outbox_rows(&rows, now));
            }
        }
        if let Some(p) = policy {
            let head = w.head().seq;
            if let Some(base) = policy_base_needed(w.conn(), vm, &group, head, p).await? {
                let from = sequences::policy_base(w.conn()).await?;
                sequences::set_policy_base(&mut w, base).await?;
                w.policy_changed(PolicyScope::VirtualMachine, vm);
                rec.policy_base = Some((from, base));
            }
        }
        if rec.is_empty() {
            // Another controller did it meanwhile; dropping `w` rolls back.
            return Ok(rec);
        }
        let mut moved = Vec::new();
        if let Some((from, to)) = rec.outbox {
            moved.push(
                serde_json::json!({"counter": Counter::Outbox.as_str(), "from": from, "to": to}),
            );
        }
        if let Some((from, to)) = rec.policy_base {
            moved.push(
                serde_json::json!({"counter": sequences::POLICY_BASE, "from": from, "to": to}),
            );
        }
        let details = serde_json::json!({
            "agentId": agent,
            "seqHighWater": marks.seq_high_water,
            "policySeq": marks.policy_seq,
            "moved": moved,
            "reissuedGrants": rec.reissued,
        });
        activity::log(
            &mut w,
            NewActivity::vm(
                Operation::RecoverSequences,
                &group,
                vm,
                &Actor::agent(agent),
            )
            .details(details),
        )
        .await?;
        w.commit_with(tables).await?;
        tracing::warn!(
            %agent,
            %vm,
            seq_high_water = marks.seq_high_water,
            policy_seq = ?marks.policy_seq,
            outbox = ?rec.outbox,
            policy_base = ?rec.policy_base,
            reissued = rec.reissued,
            "the agent's marks were above what the database had issued (restored or promoted?): sequences moved past them"
        );
        Ok(rec)
    }
}
