use super::*;

fn chain(n: i64) -> Vec<ActivityEntry> {
    let mut prev = GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for seq in 1..=n {
        let mut e = ActivityEntry {
            seq,
            time_utc: "2026-11-27T02:00:00.123Z".into(),
            operation: "Initiate JIT Network Access".into(),
            resource_type: "VirtualMachine".into(),
            resource_group: "rg".into(),
            virtual_machine: "web1".into(),
            caller: "alice".into(),
            caller_address: "203.0.113.5".into(),
            outcome: "Succeeded".into(),
            request_id: format!("r{seq}"),
            details: serde_json::json!({"justification": "INC-1", "n": seq}),
            prev_hash: prev.clone(),
            hash: String::new(),
        };
        e.hash = e.computed_hash().expect("hash");
        prev = e.hash.clone();
        out.push(e);
    }
    out
}

fn export(sk: &SigningKey, entries: Vec<ActivityEntry>, at: &[i64]) -> Export {
    let checkpoints = at
        .iter()
        .map(|&s| Checkpoint::sign(sk, s, &entries[(s - 1) as usize].hash, 1))
        .collect();
    Export {
        format: EXPORT_FORMAT.into(),
        key_id: key_id(&sk.verifying_key()),
        public_key_pem: ed25519_dalek::pkcs8::EncodePublicKey::to_public_key_pem(
            &sk.verifying_key(),
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        )
        .expect("pem"),
        exported_time_ms: 2,
        entries,
        checkpoints,
    }
}

fn key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

#[test]
fn intact_export_verifies_and_reports_uncovered() {
    let sk = key();
    let r = export(&sk, chain(10), &[4, 8])
        .verify(Some(&sk.verifying_key()))
        .expect("verify");
    assert!(r.ok, "{r:?}");
    assert_eq!((r.entries, r.covered_seq, r.uncovered), (10, 8, 2));
}

#[test]
fn rewritten_and_rechained_entry_breaks_the_next_checkpoint() {
    let sk = key();
    let mut entries = chain(10);
    entries[4].details = serde_json::json!({"justification": "INC-2", "n": 5});
    // The writer recomputes every later hash: the plain chain holds again.
    let mut prev = entries[3].hash.clone();
    for e in entries.iter_mut().skip(4) {
        e.prev_hash = prev.clone();
        e.hash = e.computed_hash().expect("hash");
        prev = e.hash.clone();
    }
    let mut x = export(&sk, chain(10), &[4, 8]);
    x.entries = entries;
    let r = x.verify(None).expect("verify");
    assert!(!r.ok);
    assert_eq!(r.bad_checkpoint_seq, Some(8), "{r:?}");
    assert!(
        r.problem
            .expect("problem")
            .contains("between entries 5 and 8")
    );
}

#[test]
fn forged_checkpoint_or_other_key_is_refused() {
    let sk = key();
    let mut x = export(&sk, chain(5), &[3]);
    x.checkpoints[0].time_ms += 1;
    let r = x.verify(None).expect("verify");
    assert_eq!(r.bad_checkpoint_seq, Some(3));
    assert!(r.problem.expect("p").contains("bad signature"));
    let other = key();
    let x = export(&sk, chain(5), &[3]);
    assert!(x.verify(Some(&other.verifying_key())).is_err());
    // A checkpoint by another key under this key's id does not verify either.
    let mut x = export(&sk, chain(5), &[3]);
    let mut forged = Checkpoint::sign(&other, 3, &x.entries[2].hash, 1);
    forged.key_id = x.key_id.clone();
    x.checkpoints = vec![forged];
    assert!(!x.verify(None).expect("verify").ok);
}

/// A log whose checkpoint key was replaced: the archive under the old key, the rest
/// under the new; the rest's anchor (the archive's last checkpoint) is the old key's.
#[test]
fn parts_under_two_keys_verify_with_both_pinned_only() {
    let (old, new) = (key(), key());
    let entries = chain(10);
    let archive = export(&old, entries[..6].to_vec(), &[3, 6]);
    let mut rest = export(&new, entries.clone(), &[9]);
    rest.entries.drain(..6);
    rest.checkpoints.push(archive.checkpoints[1].clone());
    let both = [old.verifying_key(), new.verifying_key()];
    let r = Export::verify_parts(vec![archive.clone(), rest.clone()], &both).expect("verify");
    assert!(r.ok, "{r:?}");
    assert_eq!((r.entries, r.covered_seq, r.checkpoints), (10, 9, 3));
    assert_eq!(r.key_id, Some(key_id(&new.verifying_key())));
    // Only the new key pinned: the archive's key is refused.
    let e = Export::verify_parts(vec![archive.clone(), rest.clone()], &[new.verifying_key()])
        .expect_err("the old key is not pinned");
    assert!(e.contains("part 1"), "{e}");
    // Nothing pinned: two keys are refused rather than trusted.
    let e = Export::verify_parts(vec![archive.clone(), rest.clone()], &[])
        .expect_err("several keys, none pinned");
    assert!(e.contains("several keys"), "{e}");
    // The joined log checked with one key alone fails at the other key's checkpoint.
    let joined = Export::join(vec![archive.clone(), rest.clone()]).expect("join");
    assert!(
        !joined
            .verify(Some(&new.verifying_key()))
            .expect("verify")
            .ok
    );
    // One export taken after the replacement holds checkpoints by both keys.
    let mut one = export(&new, entries.clone(), &[9]);
    one.checkpoints.extend(archive.checkpoints.iter().cloned());
    let r = Export::verify_parts(vec![one.clone()], &both).expect("verify");
    assert!(r.ok && r.checkpoints == 3, "{r:?}");
    let r = Export::verify_parts(vec![one], &[new.verifying_key()]).expect("verify");
    assert!(!r.ok, "the old key's checkpoints need the old key: {r:?}");
    // An archive entry rewritten and re-signed by a third key: refused even so.
    let mallory = key();
    let mut forged = export(&mallory, entries[..6].to_vec(), &[3, 6]);
    forged.entries[1].caller = "mallory".into();
    let e = Export::verify_parts(vec![forged, rest], &both).expect_err("mallory's key");
    assert!(e.contains("not a pinned key"), "{e}");
}

#[test]
fn truncated_log_under_a_checkpoint_fails() {
    let sk = key();
    let mut x = export(&sk, chain(6), &[6]);
    x.entries.pop();
    let r = x.verify(None).expect("verify");
    assert!(!r.ok);
    assert_eq!(r.bad_checkpoint_seq, Some(6));
    assert_eq!(r.first_bad_seq, Some(6));
}

/// A record from a newer agent, of a kind this build does not know, parses with its kind
/// kept and its hash intact: the controller stores and shows it like any other.
#[test]
fn agent_line_of_unknown_kind_parses_and_verifies() {
    let body = format!(
        r#"{{"id":"r1","seq":7,"time":"2026-11-27T02:00:00Z","kind":"grant.extended","actor":"agent","prev":"{GENESIS_HASH}"}}"#
    );
    let hash = agent_record_hash(GENESIS_HASH, body.as_bytes());
    let line = format!("{},\"hash\":\"{hash}\"}}", body.trim_end_matches('}'));
    let l = AgentLine::parse(&line).expect("parses");
    assert_eq!(l.kind, crate::AuditKind::Unknown("grant.extended".into()));
    assert_eq!(l.kind.as_str(), "grant.extended");
    assert_eq!((l.seq, l.computed.as_str()), (7, hash.as_str()));
    assert_eq!(l.hash, hash);
}

#[test]
fn agent_checkpoint_signs_and_verifies_against_the_certificate() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["agent".into()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let m = agent_checkpoint_message("a1", 7, "ab");
    let sig = agent_sign(&key.serialize_pem(), &m).expect("sign");
    agent_verify(&cert.pem(), &m, &sig).expect("verifies");
    let other = agent_checkpoint_message("a1", 7, "ac");
    assert!(agent_verify(&cert.pem(), &other, &sig).is_err());
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("k");
    let sig2 = agent_sign(&other_key.serialize_pem(), &m).expect("sign");
    assert!(agent_verify(&cert.pem(), &m, &sig2).is_err());
}

#[test]
fn checkpoint_signature_is_not_a_grant_signature() {
    // Same key, same bytes after the context: the contexts differ, so they never verify
    // as each other.
    assert_ne!(
        CHECKPOINT_CONTEXT,
        <crate::GrantBody as crate::signed::Body>::CONTEXT
    );
}
