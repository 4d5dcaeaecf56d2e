//! Grant-signing key rotation on the controller (docs/operations.md, "Rotation"): the
//! commands' rules (bad input changes nothing), the switch seen by every controller of the
//! cluster, `/readyz` failing on a controller without the private half of a key in use, the
//! retired private half destroyed, each step activity-logged. SQLite and PostgreSQL
//! (`JIT_TEST_BACKEND`); with PostgreSQL also across two controllers. The agents' side is in
//! tests/tests/key_rotation.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use jitgate_controller::authz::Actor;
use jitgate_controller::keys::KeyError;
use jitgate_controller::keys::files::KeyDir;
use jitgate_controller::keys::rotation::Rotation;
use reqwest::{Method, StatusCode};

async fn within<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready(h: &Harness) -> (StatusCode, serde_json::Value) {
    h.call(Method::GET, "/readyz", None, None).await
}

/// `[keys] switch_grace_seconds` as the default configuration has it.
const GRACE: Duration = Duration::from_secs(86_400);

fn rotation(h: &Harness) -> Rotation {
    Rotation::new(h.app().db.clone(), KeyDir::new(h.dir.signing_key()))
}

async fn key_rows(h: &Harness) -> Vec<(String, String)> {
    sqlx::query_as("SELECT key_id, state FROM grant_keys ORDER BY created_ms, key_id")
        .fetch_all(h.app().db.pool())
        .await
        .unwrap()
}

/// Signs a checkpoint now, then checks the exported log (chain and every checkpoint) against
/// the public key `public_pem`.
async fn checkpoint_verifies_with(h: &Harness, public_pem: &str) {
    h.checkpoint().await;
    let (st, v) = h.get("/api/v1/activityLog/export", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let export: jitgate_proto::audit::Export = serde_json::from_value(v).unwrap();
    let key = jitgate_proto::audit::parse_public_key(public_pem).unwrap();
    let report = export.verify(Some(&key)).unwrap();
    assert!(report.ok && report.checkpoints >= 1, "{report:?}");
}

fn signer_id(h: &Harness) -> Option<String> {
    h.app()
        .keys
        .snapshot()
        .signer
        .as_ref()
        .map(|(id, _)| id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_and_retire_with_readiness_and_the_old_key_destroyed() {
    let a = Harness::new().await;
    let b = if common::postgres_backend() {
        Some(a.second().await)
    } else {
        None
    };
    let (st, v) = ready(&a).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["checks"]["grantSigningKey"]["status"], "ok", "{v}");
    let first = key_rows(&a).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].1, "current");
    let r = rotation(&a);
    let actor = Actor::local();

    // Nothing to retire: refused, nothing written.
    assert!(matches!(
        r.retire(&actor, false).await,
        Err(KeyError::NoRotation)
    ));
    assert_eq!(key_rows(&a).await, first);

    let rotated = r.rotate(&actor).await.expect("rotate");
    let new_id = rotated.key_id.clone();
    let new_file = a
        .dir
        .signing_key()
        .with_file_name(format!("grant-{new_id}.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&new_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let after_rotate = key_rows(&a).await;
    assert_eq!(after_rotate.len(), 2);
    // A second rotation while one is under way: refused, nothing written, no key file.
    assert!(matches!(
        r.rotate(&actor).await,
        Err(KeyError::RotationUnderway(_))
    ));
    assert_eq!(key_rows(&a).await, after_rotate);
    let files = std::fs::read_dir(new_file.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("grant-")
        })
        .count();
    assert_eq!(files, 3, "grant-signing.key, .pub and the new key only");
    // The status lists both keys and the rotation (no agents: nothing blocks).
    let s = r.status(GRACE).await.unwrap();
    assert_eq!(s.rotating_to.as_deref(), Some(new_id.as_str()));
    assert!(s.blocking.is_empty());
    // The private half never leaves the state directory.
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("PRIVATE"), "{json}");

    // Without the new key's private half, /readyz fails and names the key.
    let aside = new_file.with_extension("aside");
    std::fs::rename(&new_file, &aside).unwrap();
    let missing = within(Duration::from_secs(10), || async {
        let (st, v) = ready(&a).await;
        st == StatusCode::SERVICE_UNAVAILABLE
            && v["checks"]["grantSigningKey"]["missing"][0] == new_id.as_str()
    })
    .await;
    assert!(missing, "{:?}", ready(&a).await);
    // Retiring needs it too: refused, nothing written.
    assert!(matches!(
        r.retire(&actor, false).await,
        Err(KeyError::MissingPrivate(_))
    ));
    assert_eq!(key_rows(&a).await, after_rotate);
    std::fs::rename(&aside, &new_file).unwrap();
    assert!(
        within(Duration::from_secs(10), || async {
            ready(&a).await.0 == StatusCode::OK
        })
        .await
    );
    // The second controller has no copy of the new key: not ready until it is copied.
    if let Some(b) = &b {
        let b_file = b
            .dir
            .signing_key()
            .with_file_name(format!("grant-{new_id}.key"));
        assert!(
            within(Duration::from_secs(10), || async {
                ready(b).await.0 == StatusCode::SERVICE_UNAVAILABLE
            })
            .await,
            "{:?}",
            ready(b).await
        );
        std::fs::copy(&new_file, &b_file).unwrap();
        assert!(
            within(Duration::from_secs(10), || async {
                ready(b).await.0 == StatusCode::OK
            })
            .await
        );
    }

    // Retire: the new key signs on every controller; the old one is retired.
    let old_id = first[0].0.clone();
    let retired = r.retire(&actor, false).await.expect("retire");
    assert_eq!(retired.retired_key_id, old_id);
    assert_eq!(retired.current_key_id, new_id);
    // The key `init` made is destroyed too: checkpoints have a key of their own.
    assert!(
        retired.private_key.starts_with("destroyed"),
        "{}",
        retired.private_key
    );
    assert!(!a.dir.signing_key().exists());
    assert!(a.dir.signing_pub().exists(), "the public half stays");
    if let Some(b) = &b {
        let b_initial = b.dir.signing_key();
        assert!(
            within(Duration::from_secs(10), || async { !b_initial.exists() }).await,
            "the second controller kept the retired key init made"
        );
    }
    for h in std::iter::once(&a).chain(b.as_ref()) {
        assert!(
            within(Duration::from_secs(10), || async {
                signer_id(h).as_deref() == Some(new_id.as_str())
            })
            .await,
            "signer not switched"
        );
    }

    // A second rotation; its retirement destroys the first rotated key's private half, on
    // this controller at once and on the other within seconds.
    let third = r.rotate(&actor).await.expect("rotate again").key_id;
    if let Some(b) = &b {
        std::fs::copy(
            a.dir
                .signing_key()
                .with_file_name(format!("grant-{third}.key")),
            b.dir
                .signing_key()
                .with_file_name(format!("grant-{third}.key")),
        )
        .unwrap();
    }
    let retired = r.retire(&actor, false).await.expect("retire again");
    assert!(
        retired.private_key.starts_with("destroyed"),
        "{}",
        retired.private_key
    );
    assert!(!new_file.exists());
    if let Some(b) = &b {
        let b_file = b
            .dir
            .signing_key()
            .with_file_name(format!("grant-{new_id}.key"));
        assert!(
            within(Duration::from_secs(10), || async { !b_file.exists() }).await,
            "the second controller kept the retired key"
        );
    }
    let states: Vec<String> = key_rows(&a).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(
        states.iter().filter(|s| *s == "retired").count(),
        2,
        "{states:?}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "current").count(),
        1,
        "{states:?}"
    );

    // The activity log's checkpoints are still signed, and verify with the checkpoint key.
    checkpoint_verifies_with(
        &a,
        &std::fs::read_to_string(a.dir.checkpoint_pub()).unwrap(),
    )
    .await;

    // Activity-logged: two rotations, two retirements.
    let ops: Vec<String> = sqlx::query_scalar(
        "SELECT operation FROM activity WHERE resource_type = 'GrantSigningKey'",
    )
    .fetch_all(a.app().db.pool())
    .await
    .unwrap();
    assert_eq!(
        ops,
        [
            "Rotate Grant-Signing Key",
            "Retire Grant-Signing Key",
            "Rotate Grant-Signing Key",
            "Retire Grant-Signing Key"
        ]
    );
}

/// Agents over the real channel: one at the current level acknowledges the announcement;
/// one at level 3 cannot follow, so while connected it blocks the switch (refused, nothing
/// changes) until `--force`, which names it for re-enrolment; it is never sent a key
/// message. After the switch the current agent gets the retirement, signed by the new key,
/// and its policy again, signed by the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_agent_blocks_the_switch_until_forced() {
    use common::agent::{Agent, enroll};
    use jitgate_proto::message::{AgentMsg, Outcome};
    use jitgate_proto::{ControllerMsg, KeyStep};

    let h = Harness::new().await;
    h.fixture().await;
    let c_new = enroll(&h, "web1").await;
    let c_old = enroll(&h, "web2").await;
    let mut new = Agent::connect(&c_new).await;
    new.handshake_at(&c_new, 0, jitgate_proto::PROTOCOL_LEVEL)
        .await;
    let mut old = Agent::connect(&c_old).await;
    old.handshake_at(&c_old, 0, 3).await;
    let r = rotation(&h);
    let actor = Actor::local();
    let new_id = r.rotate(&actor).await.expect("rotate").key_id;

    let ann = match new.recv().await {
        ControllerMsg::KeyAnnouncement(s) => s
            .verify_broadcast(&c_new.signing)
            .expect("signed by the current key"),
        m => panic!("expected KeyAnnouncement, got {m:?}"),
    };
    assert_eq!(ann.key_id.to_string(), new_id);
    let new_vk = ann.verifying_key().expect("the id is the key's");
    new.send(&AgentMsg::KeyResult {
        key_id: ann.key_id,
        step: KeyStep::Announced,
        outcome: Outcome::Applied { agent_unix_ms: 1 },
    })
    .await;
    let acked = within(Duration::from_secs(10), || async {
        let s = r.status(GRACE).await.unwrap();
        s.agents
            .iter()
            .any(|a| a.agent_id == c_new.id.to_string() && a.state.as_str() == "acknowledged")
    })
    .await;
    assert!(acked, "{:?}", r.status(GRACE).await.unwrap());
    let s = r.status(GRACE).await.unwrap();
    assert_eq!(s.blocking, vec![c_old.id.to_string()], "{s:?}");

    // Blocked: refused, nothing written.
    let before = key_rows(&h).await;
    match r.retire(&actor, false).await {
        Err(KeyError::Blocked { blocking, .. }) => {
            assert!(blocking[0].contains(&c_old.id.to_string()), "{blocking:?}")
        }
        other => panic!("expected Blocked, got {other:?}"),
    }
    assert_eq!(key_rows(&h).await, before);

    let retired = r.retire(&actor, true).await.expect("forced");
    assert!(retired.forced);
    assert!(
        retired.need_reenrolment[0].contains(&c_old.id.to_string()),
        "{retired:?}"
    );
    // The current agent: the retirement (signed by the new key), then its policy again,
    // signed by the new key.
    match new.recv_within(Duration::from_secs(10)).await {
        Some(ControllerMsg::KeyRetirement(s)) => {
            let b = s.verify_broadcast(&new_vk).expect("signed by the new key");
            assert_eq!(b.successor, ann.key_id);
        }
        m => panic!("expected KeyRetirement, got {m:?}"),
    }
    match new.recv_within(Duration::from_secs(10)).await {
        Some(ControllerMsg::Policy(p)) => {
            p.verify(&new_vk, c_new.id)
                .expect("policy signed by the new key");
        }
        m => panic!("expected Policy, got {m:?}"),
    }
    // The old agent was sent nothing of the rotation.
    assert!(
        old.recv_within(Duration::from_secs(3)).await.is_none(),
        "a level-3 agent was sent a key message"
    );
}

/// Two rotations begun at the same instant announce one key: the database holds at most one
/// announced key (migration 28), the other rotation is refused as under way and leaves no
/// key file behind. With PostgreSQL each rotation runs on its own controller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_begun_together_announce_one_key() {
    let a = Harness::new().await;
    let b = if common::postgres_backend() {
        Some(a.second().await)
    } else {
        None
    };
    let actor = Actor::local();
    let ra = rotation(&a);
    let rb = rotation(b.as_ref().unwrap_or(&a));
    // The rotated keys' private files (grant-ID.key) of both controllers.
    let key_files = || {
        let mut out = std::collections::BTreeSet::new();
        for h in std::iter::once(&a).chain(b.as_ref()) {
            for e in std::fs::read_dir(h.dir.signing_key().parent().unwrap()).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                if let Some(id) = name
                    .strip_prefix("grant-")
                    .and_then(|n| n.strip_suffix(".key"))
                    && id != "signing"
                {
                    out.insert(id.to_string());
                }
            }
        }
        out
    };
    for round in 0..5 {
        let before = key_files();
        let (x, y) = tokio::join!(ra.rotate(&actor), rb.rotate(&actor));
        let won: Vec<String> = [&x, &y]
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|k| k.key_id.clone()))
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {x:?} / {y:?}");
        let lost = if x.is_ok() { &y } else { &x };
        match lost {
            Err(KeyError::RotationUnderway(id)) => assert_eq!(id.to_string(), won[0]),
            other => panic!("round {round}: expected RotationUnderway, got {other:?}"),
        }
        let rows = key_rows(&a).await;
        let next: Vec<_> = rows.iter().filter(|(_, s)| s == "next").collect();
        assert_eq!(next.len(), 1, "round {round}: {rows:?}");
        assert_eq!(next[0].0, won[0]);
        // Only the winner's private half was kept: the loser destroyed its new file.
        let new: Vec<String> = key_files().difference(&before).cloned().collect();
        assert_eq!(new, won, "round {round}");
        // Both controllers get the winner's private half (as an operator copies it), and
        // switch to it (forced: no agent here), to begin the next round from one key.
        if let Some(b) = &b {
            let file = format!("grant-{}.key", won[0]);
            let (pa, pb) = (
                a.dir.signing_key().with_file_name(&file),
                b.dir.signing_key().with_file_name(&file),
            );
            if pa.exists() {
                std::fs::copy(&pa, &pb).unwrap();
            } else {
                std::fs::copy(&pb, &pa).unwrap();
            }
        }
        ra.retire(&actor, true).await.expect("retire");
    }
}

/// The announcement as an agent receives it (skipping what else it is sent), acknowledged.
async fn acknowledge(a: &mut common::agent::Agent, key_id: &str) {
    use jitgate_proto::message::{AgentMsg, Outcome};
    use jitgate_proto::{ControllerMsg, KeyStep};
    loop {
        match a.recv_within(Duration::from_secs(10)).await {
            Some(ControllerMsg::KeyAnnouncement(s)) => {
                let body = s.unverified().expect("an announcement");
                if body.key_id.to_string() != key_id {
                    continue;
                }
                a.send(&AgentMsg::KeyResult {
                    key_id: body.key_id,
                    step: KeyStep::Announced,
                    outcome: Outcome::Applied { agent_unix_ms: 1 },
                })
                .await;
                return;
            }
            Some(_) => continue,
            None => panic!("no announcement of {key_id}"),
        }
    }
}

/// (created_ms, switched_ms) of a key.
async fn key_times(h: &Harness, key_id: &str) -> (i64, Option<i64>) {
    sqlx::query_as("SELECT created_ms, switched_ms FROM grant_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_one(h.app().db.pool())
        .await
        .unwrap()
}

/// The activity entries of switches: (caller, details).
async fn switches(h: &Harness) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT caller, details FROM activity WHERE operation = 'Retire Grant-Signing Key' \
         ORDER BY seq",
    )
    .fetch_all(h.app().db.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(c, d)| (c, serde_json::from_str(&d).unwrap()))
        .collect()
}

/// `[keys] switch_grace_seconds`: the leader switches by itself. With an agent that never
/// acknowledges, not before the grace, and the entry names and counts it; `GET /api/v1/keys`
/// shows who acknowledged meanwhile (admins on `*` only). Once every active agent
/// acknowledged, at once, well before the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_switches_after_the_grace_or_once_every_agent_acknowledged() {
    use common::agent::{Agent, enroll};
    use jitgate_api::Role;

    const GRACE_MS: i64 = 6000;
    let h = Harness::with_config(|c| c.keys.switch_grace_seconds = 6).await;
    h.fixture().await;
    let c_yes = enroll(&h, "web1").await;
    let c_no = enroll(&h, "web2").await;
    let mut yes = Agent::connect(&c_yes).await;
    yes.handshake_at(&c_yes, 0, jitgate_proto::PROTOCOL_LEVEL)
        .await;
    let mut no = Agent::connect(&c_no).await;
    no.handshake_at(&c_no, 0, jitgate_proto::PROTOCOL_LEVEL)
        .await;
    let r = rotation(&h);
    let first = r.rotate(&Actor::local()).await.expect("rotate").key_id;
    acknowledge(&mut yes, &first).await;

    // The API while the rotation waits: one acknowledged, the other named.
    let reader = h.token("rita", Role::Reader, "*").await;
    let (st, v) = h
        .call(Method::GET, "/api/v1/keys", Some(&reader), None)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let seen = within(Duration::from_secs(5), || async {
        let (_, v) = h
            .call(Method::GET, "/api/v1/keys", Some(&h.admin), None)
            .await;
        v["keys"][1]["acknowledged"] == 1
    })
    .await;
    let (st, v) = h
        .call(Method::GET, "/api/v1/keys", Some(&h.admin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(seen, "{v}");
    assert_eq!(v["rotatingTo"], first.as_str(), "{v}");
    assert_eq!(v["switchGraceSeconds"], 6, "{v}");
    assert_eq!(v["keys"][0]["state"], "current", "{v}");
    assert_eq!(v["keys"][1]["state"], "next", "{v}");
    // `jit-controller keys status` (the local command) says when the switch is due, as
    // the API does: the announcement plus the grace.
    let local = r.status(Duration::from_secs(6)).await.unwrap();
    assert_eq!(local.switch_grace_seconds, 6);
    let (created, _) = key_times(&h, &first).await;
    assert_eq!(
        local.switch_due_time_utc.as_deref(),
        Some(jitgate_api::time::format(created + GRACE_MS).as_str())
    );
    assert_eq!(
        v["switchDueTimeUtc"].as_str(),
        local.switch_due_time_utc.as_deref(),
        "{v}"
    );
    // Every controller holds the new key (on PostgreSQL: once this one published it, within
    // 2 s of the announcement).
    assert!(
        within(Duration::from_secs(5), || async {
            r.status(Duration::from_secs(6))
                .await
                .unwrap()
                .controllers_lacking_key
                .is_empty()
        })
        .await,
        "{:?}",
        r.status(Duration::from_secs(6)).await.unwrap()
    );
    let waiting = v["keys"][1]["notAcknowledged"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{v}");
    assert_eq!(waiting[0]["agentId"], c_no.id.to_string(), "{v}");
    assert_eq!(waiting[0]["state"], "waiting", "{v}");

    // Switched by the leader, not before the grace.
    assert!(
        within(Duration::from_secs(20), || async {
            key_times(&h, &first).await.1.is_some()
        })
        .await,
        "no switch after the grace"
    );
    let (created, switched) = key_times(&h, &first).await;
    assert!(
        switched.unwrap() >= created + GRACE_MS,
        "switched before the grace: {created} {switched:?}"
    );
    let log = switches(&h).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "controller");
    let d = &log[0].1;
    assert_eq!(d["automatic"], true, "{d}");
    assert_eq!(d["reason"], "grace", "{d}");
    assert_eq!(d["notAcknowledgedCount"], 1, "{d}");
    assert!(
        d["notAcknowledged"][0]
            .as_str()
            .unwrap()
            .contains(&c_no.id.to_string()),
        "{d}"
    );
    assert!(
        within(Duration::from_secs(10), || async {
            signer_id(&h).as_deref() == Some(first.as_str())
        })
        .await
    );

    // Only the agent that acknowledges is left: the switch follows its acknowledgement.
    drop(no);
    h.app()
        .fleet
        .revoke_agents(&jitgate_controller::authz::Caller::local(), "web2")
        .await
        .unwrap();
    let second = r
        .rotate(&Actor::local())
        .await
        .expect("rotate again")
        .key_id;
    acknowledge(&mut yes, &second).await;
    assert!(
        within(Duration::from_secs(10), || async {
            key_times(&h, &second).await.1.is_some()
        })
        .await,
        "no switch after every agent acknowledged"
    );
    let (created, switched) = key_times(&h, &second).await;
    assert!(
        switched.unwrap() < created + GRACE_MS,
        "waited for the grace: {created} {switched:?}"
    );
    let log = switches(&h).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].1["reason"], "acknowledged", "{}", log[1].1);
    assert_eq!(log[1].1["notAcknowledgedCount"], 0, "{}", log[1].1);
}

/// `controllersLackingKey` of `GET /api/v1/keys`.
async fn lacking_key(h: &Harness) -> serde_json::Value {
    let (st, v) = h
        .call(Method::GET, "/api/v1/keys", Some(&h.admin), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["controllersLackingKey"].clone()
}

/// A rotation on `a`, once `GET /api/v1/keys` names `lacking` (and only it) as lacking the
/// new key; its id.
async fn rotate_without(a: &Harness, r: &Rotation, lacking: &str) -> String {
    let key = r.rotate(&Actor::local()).await.expect("rotate").key_id;
    assert!(
        within(Duration::from_secs(10), || async {
            lacking_key(a).await == serde_json::json!([lacking])
        })
        .await,
        "{}",
        lacking_key(a).await
    );
    key.to_string()
}

/// The automatic switch waits while a live controller of the cluster lacks the announced
/// key's private half (its /readyz fails meanwhile); the key status (API and the local
/// command) names it, and `keys retire` is refused unless forced. Once it has the key, or
/// once it has left the cluster, the switch proceeds. Two controllers on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_waits_for_a_live_controller_that_lacks_the_new_key() {
    if !common::postgres_backend() {
        eprintln!("PostgreSQL only (JIT_TEST_BACKEND=postgres): one controller on SQLite");
        return;
    }
    const GRACE_S: u64 = 2;
    let a = Harness::with_config(|c| c.keys.switch_grace_seconds = GRACE_S).await;
    let mut b = a.second().await;
    let b_name = b.app().leader.holder().to_string();
    let r = rotation(&a);
    // B has not the new key (its state directory was copied before the rotation).
    let first = r.rotate(&Actor::local()).await.expect("rotate").key_id;
    let b_file = b
        .dir
        .signing_key()
        .with_file_name(format!("grant-{first}.key"));
    assert!(!b_file.exists());
    assert!(
        within(Duration::from_secs(10), || async {
            ready(&b).await.0 == StatusCode::SERVICE_UNAVAILABLE
        })
        .await,
        "B's /readyz fails without the key"
    );
    // Past the grace (and several looks of the leader): no switch; both statuses name B.
    tokio::time::sleep(Duration::from_secs(GRACE_S + 4)).await;
    assert_eq!(key_times(&a, &first).await.1, None, "switched without B");
    let v = lacking_key(&a).await;
    assert_eq!(v, serde_json::json!([b_name.clone()]), "{v}");
    let local = r.status(Duration::from_secs(GRACE_S)).await.unwrap();
    assert_eq!(
        local.controllers_lacking_key,
        std::slice::from_ref(&b_name),
        "{local:?}"
    );
    assert!(local.switch_due_time_utc.is_some(), "{local:?}");
    assert_eq!(ready(&a).await.0, StatusCode::OK);
    // `keys retire` waits for B as well: refused, naming B, nothing written.
    let before = key_rows(&a).await;
    match r.retire(&Actor::local(), false).await {
        Err(KeyError::ControllersLack { controllers, .. }) => {
            assert_eq!(controllers, std::slice::from_ref(&b_name))
        }
        other => panic!("expected ControllersLack, got {other:?}"),
    }
    assert_eq!(key_rows(&a).await, before);

    // B gets the key: the switch follows.
    let a_file = a
        .dir
        .signing_key()
        .with_file_name(format!("grant-{first}.key"));
    std::fs::copy(&a_file, &b_file).unwrap();
    assert!(
        within(Duration::from_secs(20), || async {
            key_times(&a, &first).await.1.is_some()
        })
        .await,
        "no switch once B has the key: {}",
        lacking_key(&a).await
    );
    let log = switches(&a).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].1["reason"], "grace", "{}", log[0].1);

    // Again, B without the key: `keys retire --force` switches anyway, and its activity
    // entry names B.
    let second = rotate_without(&a, &r, &b_name).await;
    let forced = r.retire(&Actor::local(), true).await.expect("forced");
    assert_eq!(forced.current_key_id, second);
    let log = switches(&a).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[1].1["forced"], true, "{}", log[1].1);
    assert_eq!(
        log[1].1["controllersLacking"],
        serde_json::json!([b_name.clone()]),
        "{}",
        log[1].1
    );

    // Once more, and B leaves the cluster without the key: the switch proceeds without it.
    let third = rotate_without(&a, &r, &b_name).await;
    tokio::time::sleep(Duration::from_secs(GRACE_S + 2)).await;
    assert_eq!(key_times(&a, &third).await.1, None, "switched without B");
    if let Some(s) = b.server.take() {
        s.stop().await;
    }
    assert!(
        within(Duration::from_secs(30), || async {
            key_times(&a, &third).await.1.is_some()
        })
        .await,
        "no switch once B has gone: {}",
        lacking_key(&a).await
    );
    assert_eq!(lacking_key(&a).await, serde_json::Value::Null);
}

/// The rotation messages an agent is sent when it connects (at the current level), in order,
/// up to `Active`.
async fn rotation_steps(c: &common::agent::Creds) -> Vec<jitgate_proto::ControllerMsg> {
    use jitgate_proto::ControllerMsg;
    let mut a = common::agent::Agent::connect(c).await;
    a.hello_at(c, 0, 0, jitgate_proto::PROTOCOL_LEVEL).await;
    let mut steps = Vec::new();
    loop {
        match a.recv_within(Duration::from_secs(10)).await {
            Some(m @ (ControllerMsg::KeyAnnouncement(_) | ControllerMsg::KeyRetirement(_))) => {
                steps.push(m)
            }
            Some(ControllerMsg::Active { .. }) => return steps,
            Some(_) => {}
            None => panic!("no Active within 10 s"),
        }
    }
}

/// An agent offline across two rotations is sent both when it returns, oldest first, each
/// announcement signed by the key that the step before had it pin, so it follows them one
/// by one (tests/tests/key_rotation.rs shows it with a real agent). An agent enrolled after
/// both is sent only the current key's own rotation (which it answers as already applied),
/// never an older one whose announcement it could not verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_offline_across_two_rotations_is_sent_both_in_order() {
    use common::agent::enroll;
    use jitgate_proto::{ControllerMsg, KeyId};
    use uuid::Uuid;

    let h = Harness::new().await;
    h.fixture().await;
    let early = enroll(&h, "web1").await;
    let r = rotation(&h);
    let actor = Actor::local();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = r.rotate(&actor).await.expect("rotate").key_id;
        r.retire(&actor, true)
            .await
            .expect("switch (forced: the agent is away)");
        ids.push(id);
    }
    // The running controller reads the keys every 2 s.
    let current = ids[1].clone();
    let read = within(Duration::from_secs(10), || async {
        signer_id(&h).as_deref() == Some(current.as_str())
    })
    .await;
    assert!(read, "the controller did not switch to {current}");
    let late = enroll(&h, "web2").await;
    assert_eq!(KeyId::of(&late.signing).to_string(), current);

    // The early agent follows the chain from the key it was enrolled with.
    let mut pinned = early.signing;
    let mut next = None;
    let mut seen = Vec::new();
    for m in rotation_steps(&early).await {
        match m {
            ControllerMsg::KeyAnnouncement(s) => {
                let held: Vec<_> = std::iter::once(&pinned).chain(next.as_ref()).collect();
                let b = s
                    .verify_any(held, Uuid::nil())
                    .expect("announced by a key the agent holds");
                next = Some(b.verifying_key().expect("the id is the key's"));
                seen.push(format!("announced {}", b.key_id));
            }
            ControllerMsg::KeyRetirement(s) => {
                let successor = next.take().expect("a retirement after an announcement");
                let b = s
                    .verify_broadcast(&successor)
                    .expect("signed by the announced key");
                assert_eq!(b.retired, KeyId::of(&pinned));
                pinned = successor;
                seen.push(format!("retired {}", b.retired));
            }
            _ => unreachable!(),
        }
    }
    let first = KeyId::of(&early.signing).to_string();
    assert_eq!(
        seen,
        [
            format!("announced {}", ids[0]),
            format!("retired {first}"),
            format!("announced {}", ids[1]),
            format!("retired {}", ids[0]),
        ]
    );
    assert_eq!(KeyId::of(&pinned).to_string(), current);

    // The late agent: the current key's rotation only.
    let got: Vec<String> = rotation_steps(&late)
        .await
        .into_iter()
        .map(|m| match m {
            ControllerMsg::KeyAnnouncement(s) => {
                format!("announced {}", s.unverified().expect("body").key_id)
            }
            ControllerMsg::KeyRetirement(s) => {
                format!("retired {}", s.unverified().expect("body").retired)
            }
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        got,
        [
            format!("announced {}", ids[1]),
            format!("retired {}", ids[0])
        ]
    );
}

/// A state directory made before checkpoints had a key of their own (no
/// `keys/checkpoint.key`): the controller starting copies the key `init` made there, so
/// checkpoints verify with the public key they always did; retiring that key as a
/// grant-signing key then destroys `grant-signing.key`, and checkpoints go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_from_before_the_checkpoint_key_splits_it_at_start() {
    let mut h = Harness::with_state(|dir| {
        // `init` makes distinct keys; an older version made none for checkpoints.
        assert_ne!(
            std::fs::read_to_string(dir.checkpoint_pub()).unwrap(),
            std::fs::read_to_string(dir.signing_pub()).unwrap()
        );
        std::fs::remove_file(dir.checkpoint_key()).unwrap();
        std::fs::remove_file(dir.checkpoint_pub()).unwrap();
    })
    .await;
    let grant_pub = std::fs::read_to_string(h.dir.signing_pub()).unwrap();
    assert_eq!(
        std::fs::read_to_string(h.dir.checkpoint_pub()).unwrap(),
        grant_pub,
        "the key init made, in a file of its own"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(h.dir.checkpoint_key())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let r = rotation(&h);
    let actor = Actor::local();
    r.rotate(&actor).await.expect("rotate");
    let retired = r.retire(&actor, false).await.expect("retire");
    assert!(
        retired.private_key.starts_with("destroyed"),
        "{}",
        retired.private_key
    );
    assert!(!h.dir.signing_key().exists());

    checkpoint_verifies_with(&h, &grant_pub).await;
    // A restart after the original key is gone: the controller still starts.
    h.restart().await;
    let (st, v) = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}
