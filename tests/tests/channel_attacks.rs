//! The agent against a hostile controller endpoint. The agent enrols with the real
//! controller; then the controller goes away and an impostor holding the controller's own TLS
//! certificate (the strongest position short of the grant-signing key) serves the agent
//! endpoint. Replayed, foreign-key, foreign-agent, tampered and expired grants are rejected
//! and audited, a redelivery is acknowledged without being applied twice, and a garbage frame
//! only closes the connection: the agent reconnects with its high-water mark intact.

use ed25519_dalek::SigningKey;
use jitgate_proto::Signed;
use jitgate_proto::message::Outcome;
use jitgate_tests::fleet::Fleet;
use jitgate_tests::impostor::{Impostor, grant_body as body};
use jitgate_tests::require_root;
use uuid::Uuid;

#[test]
fn hostile_controller_frames_are_rejected() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let (agent, imp) = Impostor::enrolled(&fleet, "--interface eth0 --protect 22/tcp");
    let real_key = imp.key.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut s = imp.accept().await;
        assert_eq!(s.protocol, jitgate_proto::PROTOCOL_LEVEL);
        let (me, hw0) = (s.agent, s.seq_high_water);
        let seq = hw0 + 10;

        // A valid grant is applied; the identical redelivery is acknowledged, not applied again.
        let good = Signed::sign(&body(me, seq, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut s, good.clone()).await, Outcome::Applied { .. }));
        assert_eq!(grant(&mut s, good.clone()).await, Outcome::AlreadyApplied);
        // A new grant replayed with an old sequence number.
        let replay = Signed::sign(&body(me, seq - 1, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut s, replay).await, Outcome::Rejected { reason } if reason.contains("replay")));
        // Signed with another key.
        let other = SigningKey::from_bytes(&[9; 32]);
        let forged = Signed::sign(&body(me, seq + 1, 600_000), &other).unwrap();
        assert!(matches!(grant(&mut s, forged).await, Outcome::Rejected { .. }));
        // For another agent.
        let foreign = Signed::sign(&body(Uuid::new_v4(), seq + 2, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut s, foreign).await, Outcome::Rejected { .. }));
        // One tampered byte.
        let mut tampered = Signed::sign(&body(me, seq + 3, 600_000), &real_key).unwrap();
        let n = tampered.body.len();
        tampered.body[n - 3] ^= 0x20;
        assert!(matches!(grant(&mut s, tampered).await, Outcome::Rejected { .. }));
        // Already ended; and longer than the host's maximum.
        let ended = Signed::sign(&body(me, seq + 4, -1000), &real_key).unwrap();
        assert!(matches!(grant(&mut s, ended).await, Outcome::Rejected { .. }));
        let too_long = Signed::sign(&body(me, seq + 5, 48 * 3600 * 1000), &real_key).unwrap();
        assert!(matches!(grant(&mut s, too_long).await, Outcome::Rejected { .. }));

        // A garbage frame closes this connection only; the agent comes back with its mark.
        use tokio::io::AsyncWriteExt;
        s.wr.write_all(&[0, 0, 0, 8, 1, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff]).await.unwrap();
        let again_s = imp.accept().await;
        let (again, hw1) = (again_s.agent, again_s.seq_high_water);
        assert_eq!(again, me);
        assert!(hw1 >= seq + 5, "high-water mark not kept: {hw1} < {}", seq + 5);
    });
    // Exactly one grant applied, every rejection audited with its reason.
    assert_eq!(agent.grant_count(), 1, "{}", agent.grants_json());
    let audit = agent.ok(&["audit", "--json"]);
    let rejected = audit
        .lines()
        .filter(|l| l.contains("\"grant.rejected\""))
        .count();
    assert!(
        rejected >= 6,
        "only {rejected} rejections audited:\n{audit}"
    );
    assert!(
        audit.contains("replay") && audit.contains("bad signature"),
        "{audit}"
    );
}

/// Sends a grant and returns the agent's outcome for it (skipping unrelated messages).
async fn grant(
    s: &mut jitgate_tests::impostor::Session,
    g: Signed<jitgate_proto::GrantBody>,
) -> Outcome {
    s.send(&jitgate_proto::ControllerMsg::Grant(g)).await;
    s.grant_outcome().await
}
