//! Booked grants through a real agent with real XDP in namespaces and real TCP: the agent
//! keeps a booking out of the maps until its start and opens it by itself; an active grant
//! ending before a booking for the same source starts leaves the door shut in between; a
//! booking revoked before its start never opens; a booking survives SIGKILL and opens on
//! time after the restart, and one whose start passed while the agent was down opens at once
//! and is reported `Applied` on the next connection. The controller side is the impostor
//! endpoint (`jitgate_tests::impostor`), which signs with the controller's real key.

use jitgate_proto::message::{AgentMsg, ControllerMsg, Outcome};
use jitgate_proto::{GrantBody, ScheduledGrantBody, Signed};
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::impostor::{Impostor, now_ms, window_body};
use jitgate_tests::netns::{tcp_connects_in, tcp_server_in};
use jitgate_tests::require_root;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Ports the agent protects; a server listens on each in the VM.
const PORTS: [u16; 3] = [2222, 2223, 2224];

fn booking(g: GrantBody) -> ScheduledGrantBody {
    let starts_in_ms = (g.start_unix_ms - now_ms()).max(0) as u64;
    ScheduledGrantBody {
        grant: g,
        starts_in_ms,
    }
}

async fn sleep_until_ms(t: i64) {
    let d = t - now_ms();
    if d > 0 {
        tokio::time::sleep(Duration::from_millis(d as u64)).await;
    }
}

/// Connects every 50 ms until a connection opens or `until_ms`; the wall time it opened.
fn first_open(ws: &Path, dst: SocketAddr, until_ms: i64) -> Option<i64> {
    while now_ms() < until_ms {
        let t = now_ms();
        if tcp_connects_in(ws, dst, Duration::from_millis(200)) {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn booked_grants_open_at_their_start_and_only_then() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let vm_ns = Fleet::ns_path(&vm.ns);
    let ws = Fleet::ns_path(&fleet.ws);
    for p in PORTS {
        tcp_server_in(&vm_ns, p, false).expect("server in the VM");
    }
    let dst = |p: u16| SocketAddr::new(vm.v4, p);
    let connects = |p: u16| tcp_connects_in(&ws, dst(p), Duration::from_millis(300));
    let (mut agent, imp) = Impostor::enrolled(
        &fleet,
        "--interface eth0 --protect 2222/tcp --protect 2223/tcp --protect 2224/tcp",
    );
    let src: jitgate_common::SourcePrefix = format!("{WS_V4}/32").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Phase 1: an active grant [0, 5 s] and a booking for the same source [9 s, 15 s].
    let (mut s, b_id, b_end, mut seq) = rt.block_on(async {
        let mut s = imp.accept().await;
        assert!(
            s.protocol >= jitgate_proto::LEVEL_SCHEDULED_GRANTS,
            "an agent that takes bookings announces level {} or later, not {}",
            jitgate_proto::LEVEL_SCHEDULED_GRANTS,
            s.protocol
        );
        let me = s.agent;
        let mut seq = s.seq_high_water + 10;
        let a = window_body(me, seq, 2222, src, 0, 5_000);
        s.send(&ControllerMsg::Grant(Signed::sign(&a, &imp.key).unwrap()))
            .await;
        assert!(matches!(s.grant_outcome().await, Outcome::Applied { .. }));
        seq += 1;
        let b = booking(window_body(me, seq, 2222, src, 9_000, 15_000));
        let Outcome::Scheduled { opens_unix_ms, .. } = s.book(&imp.key, &b).await else {
            panic!("booking B not scheduled")
        };
        assert!(
            (opens_unix_ms - b.grant.start_unix_ms).abs() < 1_000,
            "opens {opens_unix_ms}, start {}",
            b.grant.start_unix_ms
        );
        // The redelivery is answered as scheduled again, not applied.
        assert!(matches!(
            s.book(&imp.key, &b).await,
            Outcome::Scheduled { .. }
        ));

        // Booking C on 2223 [6 s, 20 s], revoked before its start.
        seq += 1;
        let c = booking(window_body(me, seq, 2223, src, 6_000, 20_000));
        assert!(matches!(
            s.book(&imp.key, &c).await,
            Outcome::Scheduled { .. }
        ));
        seq += 1;
        let revoked = s.revoke(&imp.key, c.grant.grant_id, seq).await;
        assert!(matches!(revoked, Outcome::Applied { .. }), "{revoked:?}");

        // Refused bookings: start not before end, too far ahead, longer than max_grant
        // (24 h), a replayed seq, a plain grant's signature presented as a booking.
        let refused = [
            window_body(me, seq + 1, 2224, src, 5_000, 5_000),
            window_body(
                me,
                seq + 2,
                2224,
                src,
                8 * 86_400_000,
                8 * 86_400_000 + 1_000,
            ),
            window_body(
                me,
                seq + 3,
                2224,
                src,
                3_600_000,
                3_600_000 + 25 * 3_600_000,
            ),
            window_body(me, seq - 1, 2224, src, 5_000, 9_000),
        ];
        for g in refused {
            let what = format!("{g:?}");
            assert!(
                matches!(
                    s.book(&imp.key, &booking(g)).await,
                    Outcome::Rejected { .. }
                ),
                "accepted: {what}"
            );
        }
        let plain =
            Signed::sign(&window_body(me, seq + 4, 2224, src, 5_000, 9_000), &imp.key).unwrap();
        let forged: Signed<ScheduledGrantBody> =
            serde_json::from_value(serde_json::to_value(&plain).unwrap()).unwrap();
        s.send(&ControllerMsg::ScheduledGrant(forged)).await;
        assert!(matches!(
            s.grant_outcome().await,
            Outcome::Rejected { reason } if reason.contains("signature")
        ));
        seq += 5;
        // Booked more than max_grant ahead, but no longer than it: accepted, then revoked.
        let far = booking(window_body(
            me,
            seq,
            2224,
            src,
            30 * 3_600_000,
            31 * 3_600_000,
        ));
        assert!(matches!(
            s.book(&imp.key, &far).await,
            Outcome::Scheduled { .. }
        ));
        seq += 1;
        let revoked = s.revoke(&imp.key, far.grant.grant_id, seq).await;
        assert!(matches!(revoked, Outcome::Applied { .. }), "{revoked:?}");

        // A is open, nothing else.
        assert!(connects(2222), "active grant A does not admit");
        assert!(!connects(2223), "revoked booking C admits");
        assert!(!connects(2224), "a refused booking admits");
        // Between A's end and B's start the door is shut: B is not in the maps early.
        sleep_until_ms(a.end_unix_ms + 1_500).await;
        assert!(!connects(2222), "admitted between A's end and B's start");
        let listed = agent.grants_json();
        let scheduled = listed["grants"]["scheduled"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(scheduled.len(), 1, "{listed}");
        assert_eq!(scheduled[0]["grant"]["id"], b.grant.grant_id.to_string());
        assert!(scheduled[0]["grant"]["start"].is_string() && scheduled[0]["opens"].is_string());
        assert_eq!(agent.grant_count(), 0, "{listed}");
        sleep_until_ms(b.grant.start_unix_ms - 700).await;
        assert!(!connects(2222), "admitted before B's start");
        // B opens by itself at its start.
        let opened = first_open(&ws, dst(2222), b.grant.start_unix_ms + 3_000)
            .expect("booking B never opened");
        assert!(
            opened >= b.grant.start_unix_ms - 400,
            "opened {} ms before its start",
            b.grant.start_unix_ms - opened
        );
        let Outcome::Applied { agent_unix_ms } =
            s.outcome_of(b.grant.grant_id, Duration::from_secs(5)).await
        else {
            panic!("no Applied for booking B")
        };
        assert!(
            agent_unix_ms >= b.grant.start_unix_ms && agent_unix_ms < b.grant.start_unix_ms + 1_000,
            "B applied at {agent_unix_ms}, start {}",
            b.grant.start_unix_ms
        );
        (s, b.grant.grant_id, b.grant.end_unix_ms, seq)
    });

    // Phase 2: D on 2223 opens after a SIGKILL and restart; E on 2224 starts while the agent
    // is down, opens at once after the restart and is reported Applied on the new connection.
    seq += 1;
    let (d, e) = rt.block_on(async {
        let me = s.agent;
        let d = booking(window_body(me, seq, 2223, src, 7_000, 13_000));
        assert!(matches!(
            s.book(&imp.key, &d).await,
            Outcome::Scheduled { .. }
        ));
        let e = booking(window_body(me, seq + 1, 2224, src, 1_500, 30_000));
        assert!(matches!(
            s.book(&imp.key, &e).await,
            Outcome::Scheduled { .. }
        ));
        (d, e)
    });
    agent.kill();
    // Down past E's start: nothing opens without the agent's timer.
    std::thread::sleep(Duration::from_millis(
        (e.grant.start_unix_ms + 1_000 - now_ms()).max(0) as u64,
    ));
    assert!(
        !connects(2223) && !connects(2224),
        "admitted while the agent was down"
    );
    agent.spawn();
    rt.block_on(async {
        let mut s = imp.accept().await;
        s.send(&ControllerMsg::Active {
            grant_ids: vec![b_id, d.grant.grant_id, e.grant.grant_id],
            up_to_seq: seq + 1,
        })
        .await;
        // E opened at once after the restart; its Applied comes on this connection.
        let e_outcome = s
            .outcome_of(e.grant.grant_id, Duration::from_secs(10))
            .await;
        assert!(
            matches!(e_outcome, Outcome::Applied { .. }),
            "{e_outcome:?}"
        );
        let reported = s
            .until(Duration::from_secs(10), |m| match m {
                AgentMsg::ScheduledGrants { grants } => Some(grants),
                _ => None,
            })
            .await;
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert_eq!(reported[0].grant.grant_id, d.grant.grant_id);
        assert!((reported[0].opens_unix_ms - d.grant.start_unix_ms).abs() < 1_000);
        assert!(connects(2224), "E did not open after the restart");
        if now_ms() < d.grant.start_unix_ms - 600 {
            assert!(!connects(2223), "D admitted before its start");
        }
        let opened = first_open(&ws, dst(2223), d.grant.start_unix_ms + 3_000)
            .expect("booking D never opened after the restart");
        assert!(opened >= d.grant.start_unix_ms - 400, "D opened early");
        let d_outcome = s.outcome_of(d.grant.grant_id, Duration::from_secs(5)).await;
        assert!(
            matches!(d_outcome, Outcome::Applied { .. }),
            "{d_outcome:?}"
        );
        // B closes at its end like any grant.
        sleep_until_ms(b_end + 1_000).await;
        assert!(!connects(2222), "B still admits after its end");
    });
    let audit = agent.ok(&["audit", "--json"]);
    assert!(audit.contains("never opened"), "{audit}");
    assert!(audit.contains("\"grant.scheduled\""), "{audit}");
}
