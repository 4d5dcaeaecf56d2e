//! Sequence numbers agents rely on never go backwards after a restore (docs/ha.md,
//! "Sequence numbers after a restore or promotion"): a backup, grants, a policy change and
//! audit records an agent takes after it, the backup restored into a fresh database and a
//! controller started on it; the agent reconnects with its marks. Real controllers, a real
//! database (SQLite, or PostgreSQL with JIT_TEST_BACKEND=postgres), the test agent of
//! `common::agent` playing the real agent's replay rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::agent::{Agent, Creds, enroll};
use common::binary::empty_copy;
use common::{Harness, client_for};
use jitgate_controller::state::{Config, StateDir};
use jitgate_controller::store::{backup, sqlite_url};
use jitgate_proto::message::{AuditRecord, Outcome};
use jitgate_proto::{AgentMsg, ControllerMsg, LEVEL_AUDIT_RESEND};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

/// What an agent keeps in its channel.json.
#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    high: u64,
    policy: u64,
    audit: u64,
}

/// The test agent applying what it gets as the real one does: a grant it holds is
/// acknowledged again, a seq at or below its high-water mark is refused as a replay, a policy
/// below the applied version is refused.
struct Sim<'a> {
    c: &'a Creds,
    a: Agent,
    marks: Marks,
    /// grant id -> request id, of the grants it holds.
    held: HashMap<Uuid, String>,
    /// Every grant message: (request id, seq, what the agent did).
    grants: Vec<(String, u64, &'static str)>,
    /// Every policy version received.
    policies: Vec<u64>,
    refused: Vec<String>,
    resend: Option<u64>,
    actives: usize,
}

impl<'a> Sim<'a> {
    /// Connects with `marks` (a level-8 `Hello`) and runs until `Active`.
    async fn connect(c: &'a Creds, marks: Marks) -> Sim<'a> {
        Sim::resume(c, marks, HashMap::new()).await
    }

    /// [`Sim::connect`] for an agent that holds `held` (grant id -> request id).
    async fn resume(c: &'a Creds, marks: Marks, held: HashMap<Uuid, String>) -> Sim<'a> {
        let mut a = Agent::connect(c).await;
        a.send(&AgentMsg::HelloV3 {
            agent_id: c.id,
            version: "test".into(),
            seq_high_water: marks.high,
            audit_acked: marks.audit,
            policy_seq: marks.policy,
            protocol: LEVEL_AUDIT_RESEND,
        })
        .await;
        let mut s = Sim {
            c,
            a,
            marks,
            held,
            grants: Vec::new(),
            policies: Vec::new(),
            refused: Vec::new(),
            resend: None,
            actives: 0,
        };
        s.until(|s| s.actives == 1).await;
        s
    }

    /// Handles messages until `done` holds (at most 5 s).
    async fn until(&mut self, done: impl Fn(&Sim<'a>) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self
                .a
                .recv_within(left)
                .await
                .expect("the awaited message within 5 s");
            self.handle(m).await;
        }
    }

    async fn handle(&mut self, m: ControllerMsg) {
        match m {
            ControllerMsg::Grant(s) => {
                let b = s.verify(&self.c.signing, self.c.id).expect("signed grant");
                let (outcome, did) = if self.held.contains_key(&b.grant_id) {
                    (Outcome::AlreadyApplied, "again")
                } else if b.seq <= self.marks.high {
                    let reason = format!(
                        "replay: seq {} is not above the high-water mark {}",
                        b.seq, self.marks.high
                    );
                    self.refused.push(reason.clone());
                    (Outcome::Rejected { reason }, "refused")
                } else {
                    self.held.insert(b.grant_id, b.request_id.clone());
                    self.marks.high = b.seq;
                    (Outcome::Applied { agent_unix_ms: 1 }, "applied")
                };
                self.grants.push((b.request_id.clone(), b.seq, did));
                self.a
                    .send(&AgentMsg::GrantResult {
                        grant_id: b.grant_id,
                        seq: b.seq,
                        outcome,
                    })
                    .await;
            }
            ControllerMsg::Policy(s) => {
                let b = s.verify(&self.c.signing, self.c.id).expect("signed policy");
                self.policies.push(b.seq);
                let outcome = if b.seq == 0 {
                    Outcome::AlreadyApplied
                } else if b.seq < self.marks.policy {
                    let reason = format!(
                        "policy version {} is older than the applied {}",
                        b.seq, self.marks.policy
                    );
                    self.refused.push(reason.clone());
                    Outcome::Rejected { reason }
                } else {
                    self.marks.policy = b.seq;
                    Outcome::Applied { agent_unix_ms: 1 }
                };
                self.a
                    .send(&AgentMsg::PolicyResult {
                        seq: b.seq,
                        outcome,
                    })
                    .await;
            }
            ControllerMsg::Active { grant_ids, .. } => {
                self.held.retain(|g, _| grant_ids.contains(g));
                self.actives += 1;
            }
            ControllerMsg::AuditAck { up_to } => self.marks.audit = self.marks.audit.max(up_to),
            ControllerMsg::AuditResend { after } => {
                self.resend = Some(after);
                self.marks.audit = self.marks.audit.min(after);
            }
            ControllerMsg::Welcome { .. }
            | ControllerMsg::Settings { .. }
            | ControllerMsg::Level { .. } => {}
            m => panic!("unexpected {m:?}"),
        }
    }

    /// Sends audit records `seqs` and waits for their acknowledgement.
    async fn audit(&mut self, seqs: std::ops::RangeInclusive<u64>) {
        let last = *seqs.end();
        let records = seqs
            .map(|seq| AuditRecord {
                seq,
                id: format!("evt-{seq}"),
                line: format!("{{\"seq\":{seq}}}"),
            })
            .collect();
        self.a.send(&AgentMsg::Audit { records }).await;
        self.until(|s| s.marks.audit >= last).await;
    }

    /// The first grant message of the request: (seq, what the agent did).
    fn first(&self, request: &str) -> Option<(u64, &'static str)> {
        self.grants
            .iter()
            .find(|(r, _, _)| r == request)
            .map(|g| (g.1, g.2))
    }

    /// The request's grant arrives and the agent applies it; its seq.
    async fn applied(&mut self, request: &str) -> u64 {
        self.until(|s| {
            s.grants
                .iter()
                .any(|(r, _, did)| r == request && *did == "applied")
        })
        .await;
        self.grants
            .iter()
            .find(|(r, _, did)| r == request && *did == "applied")
            .map(|g| g.1)
            .expect("applied")
    }
}

fn ssh_and(port: u16) -> Value {
    json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H"},
        {"number": port, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT1H"}
    ])
}

fn db_url(dir: &StateDir, cfg: &Config) -> String {
    cfg.database_url
        .clone()
        .unwrap_or_else(|| sqlite_url(&dir.db()))
}

/// The backup is restored into a fresh database and a controller started on it, the old one
/// stopped; the agent's endpoint follows.
async fn restore_into_new_controller(h: &mut Harness, file: &[u8], c: &mut Creds) -> Harness {
    if let Some(s) = h.server.take() {
        s.stop().await;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = StateDir(empty_copy(h, work.path()).await);
    let cfg = Config::load(&dir).expect("config");
    backup::restore(&db_url(&dir, &cfg), file)
        .await
        .expect("restore");
    let server = jitgate_controller::start(&dir, &cfg)
        .await
        .expect("start on the restored database");
    c.endpoint = server.agent_addr.to_string();
    Harness {
        client: client_for(&dir),
        base: format!("https://{}", server.addr),
        tmp: work,
        dir,
        cfg,
        server: Some(server),
        admin: h.admin.clone(),
    }
}

async fn recoveries(h: &Harness) -> Vec<Value> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT details FROM activity WHERE operation = $1 ORDER BY seq")
            .bind("Recover Sequence Numbers")
            .fetch_all(h.app().db.pool())
            .await
            .expect("activity");
    rows.into_iter()
        .map(|(d,)| serde_json::from_str(&d).expect("details"))
        .collect()
}

/// After a restore from a backup older than the agent's marks: the controller moves the
/// outbox counter and the policy versions past them in one transaction with one activity
/// entry, issues the VM's active grants again with fresh seqs (the one made on the restored
/// controller before the agent came back reaches it; the one it holds is acknowledged
/// again), later grants and policy changes reach the agent in order, nothing is refused as a
/// replay, the audit records the database lost are sent again, and the activity log
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restore_sequences_move_past_the_agents_marks() {
    let mut h = Harness::new().await;
    let alice = h.prod_with_requester().await;
    let mut c = enroll(&h, "web1").await;

    // Before the backup: the policy, one grant, audit records 1..=2.
    let mut sim = Sim::connect(&c, Marks::default()).await;
    let v1 = sim.marks.policy;
    assert!(v1 > 0, "the policy was applied");
    let r0 = h.request_ssh(&alice, "web1", "203.0.113.10").await;
    sim.applied(&r0).await;
    sim.audit(1..=2).await;
    h.status_within(&alice, &r0, "Applied").await;
    let mut file = Vec::new();
    backup::dump_url(&db_url(&h.dir, &h.cfg), &mut file)
        .await
        .expect("backup");

    // After it: two grants, a policy change and audit records 3..=5, all taken by the agent.
    let r1 = h.request_ssh(&alice, "web1", "203.0.113.11").await;
    let r2 = h.request_ssh(&alice, "web1", "203.0.113.12").await;
    sim.applied(&r1).await;
    sim.applied(&r2).await;
    h.put_rg_policy("prod", ssh_and(3389)).await;
    sim.until(|s| s.marks.policy > v1).await;
    sim.audit(3..=5).await;
    assert!(sim.refused.is_empty(), "{:?}", sim.refused);
    let marks = sim.marks;
    assert_eq!(marks.audit, 5);
    assert_eq!(sim.held.len(), 3);
    let held = std::mem::take(&mut sim.held);
    drop(sim);

    let r = restore_into_new_controller(&mut h, &file, &mut c).await;
    // A grant on the restored controller before the agent is back: the database numbers it
    // with a seq the agent has already seen.
    let r3 = r.request_ssh(&alice, "web1", "203.0.113.13").await;
    let (seq3,): (i64,) = sqlx::query_as(
        "SELECT o.seq FROM grant_outbox o JOIN grants g ON g.id = o.grant_id \
         WHERE g.request_id = $1",
    )
    .bind(&r3)
    .fetch_one(r.app().db.pool())
    .await
    .expect("outbox row");
    assert!(
        (seq3 as u64) <= marks.high,
        "the restored database issues again what the agent saw ({seq3} <= {})",
        marks.high
    );

    // The agent comes back with its marks.
    let mut sim = Sim::resume(&c, marks, held).await;
    assert!(sim.refused.is_empty(), "nothing refused: {:?}", sim.refused);
    let p = sim.policies.last().copied().expect("a policy");
    assert!(
        p > marks.policy,
        "policy {p} above the applied {}",
        marks.policy
    );
    assert_eq!(sim.marks.policy, p, "and applied");
    let (s3, did3) = sim
        .first(&r3)
        .expect("the restored controller's grant reached the agent");
    assert!(s3 > marks.high && did3 == "applied", "{s3} {did3}");
    let (s0, did0) = sim
        .first(&r0)
        .expect("the grant from before the backup, issued again");
    assert!(s0 > marks.high && did0 == "again", "{s0} {did0}");
    assert!(s0 < s3, "issued again in their order");
    // The grants made after the backup are not in the restored database: the agent
    // withdraws them (nothing stays open that the controller does not know).
    let mut held: Vec<_> = sim.held.values().cloned().collect();
    held.sort();
    let mut want = vec![r0.clone(), r3.clone()];
    want.sort();
    assert_eq!(held, want);
    r.status_within(&alice, &r3, "Applied").await;

    // One activity entry: this agent's marks moved the outbox counter and the policy base.
    let rec = recoveries(&r).await;
    assert_eq!(rec.len(), 1, "{rec:?}");
    assert_eq!(rec[0]["agentId"], c.id.to_string());
    assert_eq!(rec[0]["seqHighWater"], marks.high);
    assert_eq!(rec[0]["policySeq"], marks.policy);
    assert_eq!(rec[0]["reissuedGrants"], 2, "{rec:?}");
    let moved = rec[0]["moved"].as_array().expect("moved");
    assert_eq!(moved[0]["counter"], "outbox");
    assert_eq!(moved[0]["from"].as_i64(), Some(seq3));
    assert_eq!(moved[0]["to"], marks.high);
    assert_eq!(moved[1]["counter"], "policy_base");

    // The audit records the database lost are asked for again, from the last one stored.
    assert_eq!(sim.resend, Some(2));
    sim.audit(3..=5).await;
    let (stored,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM agent_audit WHERE agent_id = $1")
        .bind(c.id.to_string())
        .fetch_one(r.app().db.pool())
        .await
        .expect("count");
    assert_eq!(stored, 5);

    // Later grants and policy changes reach the agent, in order, and are applied.
    let r4 = r.request_ssh(&alice, "web1", "203.0.113.14").await;
    let s4 = sim.applied(&r4).await;
    assert!(s4 > s3);
    r.put_rg_policy("prod", ssh_and(5985)).await;
    sim.until(|s| s.marks.policy > p).await;
    r.status_within(&alice, &r4, "Applied").await;
    assert!(sim.refused.is_empty(), "nothing refused: {:?}", sim.refused);

    // A reconnect with the new marks changes nothing more.
    let now = sim.marks;
    let held = std::mem::take(&mut sim.held);
    drop(sim);
    let sim = Sim::resume(&c, now, held).await;
    assert!(
        sim.refused.is_empty() && sim.resend.is_none(),
        "{:?}",
        sim.refused
    );
    drop(sim);
    assert_eq!(recoveries(&r).await.len(), 1);

    // The restored controller's activity log verifies.
    let (st, v) = r.get("/api/v1/activityLog/verify", &r.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
}

/// Marks far beyond anything the database issued (the marks of a compromised agent, not of a
/// restore) are refused: the connection is closed and no counter moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_far_beyond_what_was_issued_are_refused_and_move_nothing() {
    let h = Harness::new().await;
    let _alice = h.prod_with_requester().await;
    let c = enroll(&h, "web1").await;
    // The sequences a recovery would move; not the notification fan-out's progress mark,
    // which its worker moves whenever an event (the enrolment's) is fanned out.
    let counters = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT name, value FROM counters WHERE name <> $1 ORDER BY name",
        )
        .bind(jitgate_controller::store::notify::FANNED)
        .fetch_all(h.app().db.pool())
        .await
        .expect("counters")
    };
    let before = counters().await;
    let far = u64::try_from(jitgate_controller::fleet::marks::MAX_RECOVERY_GAP).unwrap() * 2;
    for (high, policy) in [(far, 0), (0, far), (u64::MAX, u64::MAX)] {
        let mut a = Agent::connect(&c).await;
        a.send(&AgentMsg::HelloV3 {
            agent_id: c.id,
            version: "test".into(),
            seq_high_water: high,
            audit_acked: 0,
            policy_seq: policy,
            protocol: LEVEL_AUDIT_RESEND,
        })
        .await;
        assert!(
            a.closed_within(Duration::from_secs(5)).await,
            "marks {high} / {policy} accepted"
        );
    }
    assert_eq!(counters().await, before, "nothing moved");
    assert!(recoveries(&h).await.is_empty());
}
