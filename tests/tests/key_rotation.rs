//! Grant-signing key rotation with real agents (docs/operations.md, "Rotation"): one agent
//! online and one offline while the key is rotated and the old one retired; the offline one
//! catches up when it returns; bad input to `jit-controller keys` changes nothing; a second
//! rotation, after which an agent that was away across both follows them in order and one
//! enrolled after both refuses nothing it is sent; and afterwards every agent refuses a
//! grant signed by the first key (an impostor holding it serves the agent endpoint) and
//! applies one signed by the last.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jitgate_proto::Signed;
use jitgate_proto::message::Outcome;
use jitgate_tests::agent::{AgentProc, args, bin};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::impostor::{Impostor, grant_body};
use jitgate_tests::{require_root, wait_until};

const AGENT_ARGS: &str = "--interface eth0 --protect 22/tcp";

/// `jit-controller --json <args>`: (success, stdout JSON or Null, stderr).
fn keys(ctl: &ControllerProc, a: &[&str]) -> (bool, serde_json::Value, String) {
    let out = Command::new(bin("jit-controller"))
        .arg("--json")
        .arg("--state-dir")
        .arg(&ctl.state)
        .arg("keys")
        .args(a)
        .output()
        .expect("jit-controller keys");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn status(ctl: &ControllerProc) -> serde_json::Value {
    let (ok, v, err) = keys(ctl, &["status"]);
    assert!(ok, "keys status: {err}");
    v
}

fn agent_state(st: &serde_json::Value, agent: &str) -> String {
    st["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["agentId"] == agent)
        .map(|a| a["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn agent_id(a: &AgentProc) -> String {
    let text =
        std::fs::read_to_string(a.state_dir.join("enrollment/enrollment.json")).expect("enrolment");
    let v: serde_json::Value = serde_json::from_str(&text).expect("enrolment json");
    v["agent_id"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no agent id: {v}"))
}

#[test]
fn rotation_with_an_offline_agent_then_the_retired_key_is_refused() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(4).expect("fleet");
    let mut ctl = ControllerProc::start(&fleet.ws, WS_V4);
    // The first key's private half, for the impostor at the end: its retirement destroys it.
    let first_sk = Impostor::initial_key(&ctl);
    let t1 = ctl.add_vm("vm-01", fleet.vms[0].v4);
    let t2 = ctl.add_vm("vm-02", fleet.vms[1].v4);
    let t3 = ctl.add_vm("vm-03", fleet.vms[2].v4);
    // A policy from the controller (2222/tcp; the agents' local configuration protects
    // 22/tcp): after the rotation a restarted agent must still verify its stored copy.
    let set = ctl.jit(
        &fleet.ws,
        &args("policy set --resource-group prod --port 2222/tcp --source 198.51.100.0/24 --max 3h"),
    );
    assert!(
        set.status.success(),
        "policy set: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    let a1 = AgentProc::start_enrolled(&fleet.vms[0].ns, &args(AGENT_ARGS), &ctl.api, &ctl.ca, &t1);
    let mut a2 =
        AgentProc::start_enrolled(&fleet.vms[1].ns, &args(AGENT_ARGS), &ctl.api, &ctl.ca, &t2);
    let mut a3 =
        AgentProc::start_enrolled(&fleet.vms[2].ns, &args(AGENT_ARGS), &ctl.api, &ctl.ca, &t3);
    let (id1, id2) = (agent_id(&a1), agent_id(&a2));
    for a in [&a1, &a2, &a3] {
        assert!(
            wait_until(Duration::from_secs(10), || a
                .ok(&["status"])
                .contains("2222/tcp")),
            "the policy did not arrive: {}",
            a.ok(&["status"])
        );
    }
    let before = status(&ctl);
    let old_key = before["keys"][0]["keyId"]
        .as_str()
        .expect("key id")
        .to_string();
    assert_eq!(before["keys"][0]["state"], "current", "{before}");

    // Bad input changes nothing: no rotation to retire.
    let (ok, _, err) = keys(&ctl, &["retire"]);
    assert!(!ok && err.contains("no rotation"), "{err}");
    assert_eq!(status(&ctl)["keys"], before["keys"]);

    // vm-02's and vm-03's agents go away (enforcement stays); the key is rotated. vm-03's
    // stays away across a second rotation below.
    a2.stop();
    a3.stop();
    let (ok, rotated, err) = keys(&ctl, &["rotate"]);
    assert!(ok, "rotate: {err}");
    let new_key = rotated["keyId"].as_str().expect("new key id").to_string();
    assert_ne!(new_key, old_key);
    let file = ctl.state.join(format!("keys/grant-{new_key}.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file)
            .expect("new private key")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // A second rotation while one is under way is refused, and changes nothing.
    let (ok, _, err) = keys(&ctl, &["rotate"]);
    assert!(!ok && err.contains("already under way"), "{err}");
    assert_eq!(status(&ctl)["keys"].as_array().map(Vec::len), Some(2));

    // The online agent acknowledges within seconds; the offline one does not.
    assert!(
        wait_until(Duration::from_secs(15), || agent_state(&status(&ctl), &id1)
            == "acknowledged"),
        "vm-01 did not acknowledge: {}",
        status(&ctl)
    );
    let st = status(&ctl);
    assert_ne!(agent_state(&st, &id2), "acknowledged", "{st}");
    assert!(a1.ok(&["audit", "--json"]).contains("key.announced"));

    // Retire: vm-02 was heard from recently, so it may still count as connected and block;
    // --force switches anyway and names it.
    let (ok, retired, err) = keys(&ctl, &["retire", "--force"]);
    assert!(ok, "retire: {err}");
    assert_eq!(retired["retiredKeyId"], old_key.as_str());
    assert_eq!(retired["currentKeyId"], new_key.as_str());
    assert!(
        retired.to_string().contains(&id2),
        "vm-02 not reported: {retired}"
    );
    // The retired key's private half is gone (checkpoints have a key of their own).
    assert!(
        !ctl.state.join("keys/grant-signing.key").exists(),
        "the retired key init made was kept: {retired}"
    );
    let st = status(&ctl);
    let states: Vec<(String, String)> = st["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["keyId"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&(old_key.clone(), "retired".into())),
        "{st}"
    );
    assert!(
        states.contains(&(new_key.clone(), "current".into())),
        "{st}"
    );
    // The online agent is told at once.
    assert!(
        wait_until(Duration::from_secs(15), || a1
            .ok(&["audit", "--json"])
            .contains("key.retired")),
        "vm-01 was not told of the retirement"
    );

    // The offline agent returns and catches up: the kept announcement, then the retirement.
    a2.spawn();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = a2.ok(&["audit", "--json"]);
            a.contains("key.announced") && a.contains("key.retired")
        }),
        "vm-02 did not catch up: {}",
        a2.ok(&["audit", "--json"])
    );

    // A second rotation while vm-03's agent is still away, switched at once (forced).
    let (ok, rotated, err) = keys(&ctl, &["rotate"]);
    assert!(ok, "second rotate: {err}");
    let last_key = rotated["keyId"].as_str().expect("last key id").to_string();
    let (ok, retired, err) = keys(&ctl, &["retire", "--force"]);
    assert!(ok, "second retire: {err}");
    assert_eq!(retired["retiredKeyId"], new_key.as_str());
    assert!(
        !ctl.state.join(format!("keys/grant-{new_key}.key")).exists(),
        "the first rotation's key was not destroyed"
    );
    let file = ctl.state.join(format!("keys/grant-{last_key}.key"));
    for a in [&a1, &a2] {
        assert!(
            wait_until(Duration::from_secs(15), || a
                .ok(&["audit", "--json"])
                .matches("key.retired")
                .count()
                == 2),
            "an online agent was not told of the second retirement"
        );
    }
    // vm-03's agent returns and follows both rotations, oldest first: each announcement is
    // signed by the key the step before had it pin.
    a3.spawn();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let a = a3.ok(&["audit", "--json"]);
            a.matches("key.announced").count() == 2 && a.matches("key.retired").count() == 2
        }),
        "vm-03 did not follow both rotations: {}",
        a3.ok(&["audit", "--json"])
    );
    // An agent enrolled after both rotations is handed the last key and refuses nothing.
    let t4 = ctl.add_vm("vm-04", fleet.vms[3].v4);
    let mut a4 =
        AgentProc::start_enrolled(&fleet.vms[3].ns, &args(AGENT_ARGS), &ctl.api, &ctl.ca, &t4);
    assert!(
        wait_until(Duration::from_secs(10), || a4
            .ok(&["status"])
            .contains("2222/tcp")),
        "the policy did not reach vm-04: {}",
        a4.ok(&["status"])
    );
    for a in [&a1, &a2, &a3, &a4] {
        let audit = a.ok(&["audit", "--json"]);
        assert!(!audit.contains("key.rejected"), "{audit}");
    }

    // An impostor with the first key (and the last one, to show the difference) serves the
    // agent endpoint: every agent refuses the first key's grant and applies the last key's.
    let new_sk = SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&file).expect("last key"))
        .expect("last key pem");
    // Each agent has been sent its policy again, signed by the new key (give the rewrite
    // of the stored copy a moment).
    std::thread::sleep(Duration::from_secs(1));
    let imp = Impostor::replace_with(&mut ctl, &fleet, first_sk);
    // Restarted without a controller, each keeps the controller's policy: its stored copy
    // verifies with the key it now pins.
    let mut a1 = a1;
    for a in [&mut a1, &mut a2, &mut a3, &mut a4] {
        a.stop();
        a.spawn();
        let st = a.ok(&["status"]);
        assert!(
            st.contains("2222/tcp"),
            "stored policy lost after the rotation: {st}"
        );
    }
    let retired_sk = imp.key.clone();
    assert_eq!(
        jitgate_proto::KeyId::of(&retired_sk.verifying_key()).to_string(),
        old_key
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    rt.block_on(async {
        while seen.len() < 4 {
            let Ok(mut s) = imp.try_accept().await else {
                continue;
            };
            if !seen.insert(s.agent) {
                continue;
            }
            let seq = s.seq_high_water + 1000;
            let old = Signed::sign(&grant_body(s.agent, seq, 600_000), &retired_sk).unwrap();
            s.send(&jitgate_proto::ControllerMsg::Grant(old)).await;
            let o = s.grant_outcome().await;
            assert!(
                matches!(&o, Outcome::Rejected { reason } if reason.contains("signature")),
                "agent {} took a grant signed by the retired key: {o:?}",
                s.agent
            );
            let new = Signed::sign(&grant_body(s.agent, seq + 1, 600_000), &new_sk).unwrap();
            s.send(&jitgate_proto::ControllerMsg::Grant(new)).await;
            let o = s.grant_outcome().await;
            assert!(
                matches!(o, Outcome::Applied { .. }),
                "new key's grant: {o:?}"
            );
        }
    });
    for a in [&a1, &a2, &a3, &a4] {
        assert_eq!(a.grant_count(), 1, "{}", a.grants_json());
    }
    // The pinned key on disk is the last one; the announced-key file is gone.
    for a in [&a1, &a2, &a3, &a4] {
        let dir = a.state_dir.join("enrollment");
        assert!(!dir.join("grant-signing.next.pub").exists());
    }
}
