//! TLS credentials renewed without re-enrolment (docs/operations.md, "Rotation"): agent
//! certificates short-lived for agents at protocol level 6 and renewed over the channel with
//! the same key; an expired certificate within the grace accepted for the renewal only;
//! past the grace, and for a revoked agent, refused with a clear reason; level-5 agents keep
//! long certificates and are never sent the new messages; the server certificate reloaded
//! for new connections while established ones continue; a CA rotation through a CA bundle.
//! SQLite, and PostgreSQL with `JIT_TEST_BACKEND=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Harness;
use common::agent::{Agent, Creds, csr};
use jitgate_controller::state::Config;
use jitgate_proto::{AgentMsg, ControllerMsg, LEVEL_CERT_RENEWAL};
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

const LEVEL_5: u32 = 5;

fn now_s() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// (notBefore, notAfter, serial, subject public key, SAN URIs) of the first certificate.
fn facts(pem: &str) -> (i64, i64, Vec<u8>, Vec<u8>, Vec<String>) {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM");
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let sans = c
        .subject_alternative_name()
        .expect("san")
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
        c.raw_serial().to_vec(),
        c.public_key().subject_public_key.data.to_vec(),
        sans,
    )
}

/// Enrols a test agent for `vm` announcing protocol `level` (`None`: an agent before level
/// 6, which sends no level).
async fn enroll_at(h: &Harness, vm: &str, level: Option<u32>) -> Creds {
    let (token, _) = h
        .app()
        .fleet
        .create_enroll_token(&jitgate_controller::authz::Caller::local(), vm)
        .await
        .expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut body = json!({"token": token, "csrPem": csr(&key)});
    if let Some(l) = level {
        body["protocol"] = json!(l);
    }
    let (st, v) = h
        .call(Method::POST, common::agent::ENROLL, None, Some(body))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    Creds {
        id: v["agentId"].as_str().expect("id").parse().expect("uuid"),
        key,
        cert_pem: v["certificatePem"].as_str().expect("cert").into(),
        ca_pem: v["caPem"].as_str().expect("ca").into(),
        signing: ed25519_dalek::pkcs8::DecodePublicKey::from_public_key_pem(
            v["grantSigningKeyPem"].as_str().expect("pub"),
        )
        .expect("SPKI PEM"),
        endpoint: h.server.as_ref().expect("running").agent_addr.to_string(),
    }
}

async fn harness(lifetime: u64, grace: u64) -> Harness {
    let h = Harness::with_config(|c: &mut Config| {
        c.certificates.agent_lifetime_seconds = lifetime;
        c.certificates.agent_grace_seconds = grace;
    })
    .await;
    h.fixture().await;
    h
}

/// A 120 s lifetime with a renewal window of 3 s, and an agent of web1 at level 6.
async fn windowed_harness() -> (Harness, Creds) {
    let h = Harness::with_config(|c: &mut Config| {
        c.certificates.agent_lifetime_seconds = 120;
        c.certificates.renewal_min_interval_seconds = Some(3);
    })
    .await;
    h.fixture().await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    (h, c)
}

/// Sends a renewal request for `c`'s key and returns the answer.
async fn renew(a: &mut Agent, key: &rcgen::KeyPair) -> ControllerMsg {
    a.send(&AgentMsg::RenewCertificate { csr_pem: csr(key) })
        .await;
    loop {
        match a.recv_within(Duration::from_secs(10)).await {
            Some(
                m @ (ControllerMsg::Certificate { .. } | ControllerMsg::RenewalRefused { .. }),
            ) => {
                return m;
            }
            Some(_) => continue,
            None => panic!("no answer to the renewal request"),
        }
    }
}

/// The renewal activity entries: (outcome, details).
async fn renewals(h: &Harness) -> Vec<(String, serde_json::Value)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT outcome, details FROM activity WHERE operation = 'Renew Agent Certificate' ORDER BY seq",
    )
    .fetch_all(h.app().db.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(o, d)| {
            (
                o,
                serde_json::from_str(&d).unwrap_or(serde_json::Value::Null),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_level_6_agent_gets_a_short_certificate_and_renews_it_with_its_key() {
    let h = harness(120, 3600).await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    let (nb, na, serial, pk, sans) = facts(&c.cert_pem);
    let now = now_s();
    assert!(
        (na - now - 120).abs() <= 5,
        "lifetime from the configuration: notAfter {na}, now {now}"
    );
    assert!(now - nb <= 13, "backdated by at most a tenth: {nb}");

    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    // A request for another key is refused, clearly, and changes nothing.
    let other = rcgen::KeyPair::generate().unwrap();
    match renew(&mut a, &other).await {
        ControllerMsg::RenewalRefused { reason } => {
            assert!(reason.contains("key"), "{reason}")
        }
        m => panic!("expected a refusal, got {m:?}"),
    }
    let (cert, bundle) = match renew(&mut a, &c.key).await {
        ControllerMsg::Certificate {
            certificate_pem,
            ca_bundle_pem,
        } => (certificate_pem, ca_bundle_pem),
        m => panic!("expected a certificate, got {m:?}"),
    };
    let (_, na2, serial2, pk2, sans2) = facts(&cert);
    assert_eq!(pk2, pk, "the same key");
    assert_eq!(sans2, sans, "the same agent id");
    assert_ne!(serial2, serial, "a new serial");
    assert!(na2 >= na, "{na2} {na}");
    assert_eq!(bundle, c.ca_pem, "the CA bundle the agent trusts");
    // The connection goes on: a ping is still answered.
    assert!(!a.closed_within(Duration::from_millis(500)).await);

    // The renewed certificate identifies the agent; so does the previous one until it
    // expires (an agent that had not stored the renewal yet).
    let renewed = Creds {
        cert_pem: cert.clone(),
        key: rcgen::KeyPair::from_pem(&c.key.serialize_pem()).unwrap(),
        ..clone_creds(&c)
    };
    drop(a);
    let mut b = Agent::connect(&renewed).await;
    b.handshake_at(&renewed, 0, LEVEL_CERT_RENEWAL).await;
    drop(b);
    let mut old = Agent::connect(&c).await;
    old.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;

    let stored: String = sqlx::query_scalar("SELECT cert_pem FROM agents WHERE id = $1")
        .bind(c.id.to_string())
        .fetch_one(h.app().db.pool())
        .await
        .unwrap();
    assert_eq!(stored, cert, "the current certificate is the renewed one");
    let log = renewals(&h).await;
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].0, "Failed");
    assert_eq!(log[1].0, "Succeeded");
    assert_eq!(log[1].1["agentId"], c.id.to_string());
}

/// The renewal rate limit: a renewal sooner than the window after the last one granted is
/// refused with the reason, writes nothing to `agent_certs`, and the refusals of one window
/// are written to the activity log once; after the window a renewal is granted again. The
/// window is a tenth of the lifetime unless configured, and at most half of it.
#[tokio::test]
async fn renewals_are_limited_in_rate_and_refusals_logged_once_per_window() {
    use jitgate_controller::state::CertConfig;
    let d = CertConfig::default();
    assert_eq!(
        d.renewal_min_interval().as_secs(),
        d.agent_lifetime_seconds / 10
    );
    let too_long = CertConfig {
        renewal_min_interval_seconds: Some(d.agent_lifetime_seconds / 2 + 1),
        ..CertConfig::default()
    };
    assert!(too_long.validate().is_err());
    assert!(d.validate().is_ok());

    let (h, c) = windowed_harness().await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    let kept = |h: &Harness| {
        let pool = h.app().db.pool().clone();
        let id = c.id.to_string();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM agent_certs WHERE agent_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(matches!(
        renew(&mut a, &c.key).await,
        ControllerMsg::Certificate { .. }
    ));
    for _ in 0..5 {
        match renew(&mut a, &c.key).await {
            ControllerMsg::RenewalRefused { reason } => {
                assert!(reason.contains("at most once every 3 s"), "{reason}");
                assert!(reason.contains("retry after"), "{reason}");
            }
            m => panic!("expected a refusal, got {m:?}"),
        }
    }
    assert_eq!(
        kept(&h).await,
        1,
        "only the certificate the renewal replaced"
    );
    let log = renewals(&h).await;
    assert_eq!(
        log.len(),
        2,
        "one entry for the refusals of the window: {log:?}"
    );
    assert_eq!(log[0].0, "Succeeded");
    assert_eq!(log[1].0, "Failed");
    assert_eq!(log[1].1["rateLimited"], true, "{:?}", log[1]);

    // After the window: granted again; the next refusal is logged again.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert!(matches!(
        renew(&mut a, &c.key).await,
        ControllerMsg::Certificate { .. }
    ));
    assert!(matches!(
        renew(&mut a, &c.key).await,
        ControllerMsg::RenewalRefused { .. }
    ));
    assert_eq!(kept(&h).await, 2);
    let outcomes: Vec<String> = renewals(&h).await.into_iter().map(|(o, _)| o).collect();
    assert_eq!(outcomes, ["Succeeded", "Failed", "Succeeded", "Failed"]);
}

/// Refusals of every kind, not only the rate limit's: each is answered every time, and
/// written to the activity log at most once per agent, kind and window (a stolen agent key
/// cannot grow the log one entry per attempt); after the window a refusal is written again.
#[tokio::test]
async fn refusals_of_every_kind_are_logged_once_per_agent_kind_and_window() {
    let (h, c) = windowed_harness().await;
    let (_, _, _, pk, _) = facts(&c.cert_pem);
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    let other = rcgen::KeyPair::generate().unwrap();
    let attempts = [
        ("x".repeat(jitgate_proto::MAX_CERT_PEM + 1), "too large"),
        ("not a certificate request".to_string(), "not a valid PEM"),
        (csr(&other), "key"),
    ];
    for _ in 0..4 {
        for (csr_pem, said) in &attempts {
            a.send(&AgentMsg::RenewCertificate {
                csr_pem: csr_pem.clone(),
            })
            .await;
            let answer = loop {
                match a.recv_within(Duration::from_secs(10)).await {
                    Some(m @ ControllerMsg::RenewalRefused { .. }) => break m,
                    Some(ControllerMsg::Certificate { .. }) => panic!("renewed"),
                    Some(_) => continue,
                    None => panic!("no answer to the renewal request"),
                }
            };
            match answer {
                ControllerMsg::RenewalRefused { reason } => {
                    assert!(reason.contains(said), "{reason}")
                }
                m => panic!("expected a refusal, got {m:?}"),
            }
        }
    }
    // The agent is revoked; its renewals, however reached, are refused every time.
    h.app()
        .fleet
        .revoke_agents(&jitgate_controller::authz::Caller::local(), "web1")
        .await
        .unwrap();
    for _ in 0..4 {
        match h
            .app()
            .fleet
            .renew_certificate(c.id, "web1", &pk, &csr(&c.key), false)
            .await
        {
            Err(jitgate_controller::fleet::RenewalError::Refused(reason)) => {
                assert!(reason.contains("revoked"), "{reason}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a revoked agent renewed"),
        }
    }
    let kinds = |log: Vec<(String, serde_json::Value)>| -> Vec<String> {
        log.into_iter()
            .map(|(o, d)| {
                assert_eq!(o, "Failed", "{d}");
                assert_eq!(d["agentId"], c.id.to_string(), "{d}");
                d["kind"].as_str().unwrap_or("none").to_string()
            })
            .collect()
    };
    assert_eq!(
        kinds(renewals(&h).await),
        ["tooLarge", "badRequest", "keyMismatch", "revoked"],
        "one entry per kind in the window"
    );
    // After the window a refusal of a kind already written is written again (once).
    tokio::time::sleep(Duration::from_millis(3100)).await;
    for _ in 0..3 {
        let r = h
            .app()
            .fleet
            .renew_certificate(c.id, "web1", &pk, &csr(&other), false)
            .await;
        assert!(
            matches!(r, Err(jitgate_controller::fleet::RenewalError::Refused(_))),
            "{r:?}"
        );
    }
    assert_eq!(
        kinds(renewals(&h).await),
        [
            "tooLarge",
            "badRequest",
            "keyMismatch",
            "revoked",
            "keyMismatch"
        ]
    );
}

fn clone_creds(c: &Creds) -> Creds {
    Creds {
        id: c.id,
        key: rcgen::KeyPair::from_pem(&c.key.serialize_pem()).unwrap(),
        cert_pem: c.cert_pem.clone(),
        ca_pem: c.ca_pem.clone(),
        signing: c.signing,
        endpoint: c.endpoint.clone(),
    }
}

/// Waits until `pem` has expired (by a second).
async fn until_expired(pem: &str) {
    let (_, na, ..) = facts(pem);
    let wait = (na + 2 - now_s()).max(0);
    tokio::time::sleep(Duration::from_secs(u64::try_from(wait).unwrap())).await;
}

#[tokio::test]
async fn an_expired_certificate_within_the_grace_renews_and_does_nothing_else() {
    let h = harness(10, 3600).await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    until_expired(&c.cert_pem).await;

    // Level 5 with an expired certificate: refused (it could not renew).
    let mut old = Agent::connect(&c).await;
    old.hello_at(&c, 0, 0, LEVEL_5).await;
    assert!(old.closed_within(Duration::from_secs(5)).await);

    let mut a = Agent::connect(&c).await;
    a.hello_at(&c, 0, 0, LEVEL_CERT_RENEWAL).await;
    match a.recv().await {
        ControllerMsg::Welcome { agent_id, .. } => assert_eq!(agent_id, c.id),
        m => panic!("expected Welcome, got {m:?}"),
    }
    // Nothing but the renewal: no settings, policy or grants; reports are not read.
    a.send(&AgentMsg::Pong { nonce: 1 }).await;
    assert_eq!(a.recv_within(Duration::from_secs(1)).await, None);
    let cert = match renew(&mut a, &c.key).await {
        ControllerMsg::Certificate {
            certificate_pem, ..
        } => certificate_pem,
        m => panic!("expected a certificate, got {m:?}"),
    };
    assert!(
        a.closed_within(Duration::from_secs(5)).await,
        "closed after the renewal"
    );
    let (_, na, ..) = facts(&cert);
    assert!(na > now_s(), "valid again");
    // The renewed certificate serves everything.
    let renewed = Creds {
        cert_pem: cert,
        ..clone_creds(&c)
    };
    let mut b = Agent::connect(&renewed).await;
    b.handshake_at(&renewed, 0, LEVEL_CERT_RENEWAL).await;
    let log = renewals(&h).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "Succeeded");
    assert_eq!(log[0].1["expired"], true);
}

#[tokio::test]
async fn past_the_grace_the_handshake_is_refused_and_recorded() {
    let h = harness(10, 1).await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    until_expired(&c.cert_pem).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // TLS 1.3: the client's handshake completes before the server has judged its
    // certificate; the refusal (an alert) ends the connection at the first read.
    let tls = {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(c.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key = rustls_pki_types::PrivatePkcs8KeyDer::from(c.key.serialize_der());
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key.into())
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(&c.endpoint).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    };
    if let Ok(tls) = tls {
        let (rd, wr) = tokio::io::split(tls);
        let mut a = Agent { rd, wr };
        a.hello_at(&c, 0, 0, LEVEL_CERT_RENEWAL).await;
        let err = jitgate_proto::read_frame::<_, ControllerMsg>(&mut a.rd).await;
        let text = format!("{err:?}");
        assert!(
            err.is_err() || matches!(err, Ok(None)),
            "refused, not welcomed: {text}"
        );
        assert!(
            text.contains("Expired") || text.contains("expired") || matches!(err, Ok(None)),
            "{text}"
        );
    }
    // Recorded once, with the reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = renewals(&h).await;
        if !log.is_empty() || tokio::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "Failed");
    assert!(
        log[0].1["reason"].as_str().unwrap().contains("re-enrol"),
        "{log:?}"
    );
}

#[tokio::test]
async fn a_revoked_agent_never_renews() {
    let h = harness(120, 3600).await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    let (_, _, _, pk, _) = facts(&c.cert_pem);
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    h.app()
        .fleet
        .revoke_agents(&jitgate_controller::authz::Caller::local(), "web1")
        .await
        .unwrap();
    assert!(a.closed_within(Duration::from_secs(5)).await);
    // Its connection is refused; and the renewal itself, however reached, is refused.
    let mut b = Agent::connect(&c).await;
    b.hello_at(&c, 0, 0, LEVEL_CERT_RENEWAL).await;
    assert!(b.closed_within(Duration::from_secs(5)).await);
    let r = h
        .app()
        .fleet
        .renew_certificate(c.id, "web1", &pk, &csr(&c.key), false)
        .await;
    match r {
        Err(jitgate_controller::fleet::RenewalError::Refused(reason)) => {
            assert!(reason.contains("revoked"), "{reason}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a revoked agent renewed"),
    }
    let log = renewals(&h).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "Failed");
}

/// The messages until the controller closes the connection (within `within`); None if it
/// did not close it.
async fn until_closed(a: &mut Agent, within: Duration) -> Option<Vec<ControllerMsg>> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(
            deadline,
            jitgate_proto::read_frame::<_, ControllerMsg>(&mut a.rd),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(Some(m))) => seen.push(m),
            Ok(Ok(None)) | Ok(Err(_)) => return Some(seen),
        }
    }
}

/// A revoked agent's connection is closed with the reason (`Closing { Revoked }`, protocol
/// level 9), as the last message; when it dials again it is told the same instead of being
/// welcomed. An agent at level 8 sees a bare close, never the new message.
#[tokio::test]
async fn a_revoked_agent_is_told_why_its_connection_closes() {
    use jitgate_proto::{CloseReason, LEVEL_CLOSE_REASON};
    let h = harness(120, 3600).await;
    let c9 = enroll_at(&h, "web1", Some(LEVEL_CLOSE_REASON)).await;
    let c8 = enroll_at(&h, "web2", Some(LEVEL_CLOSE_REASON - 1)).await;
    let mut a9 = Agent::connect(&c9).await;
    a9.handshake_at(&c9, 0, LEVEL_CLOSE_REASON).await;
    let mut a8 = Agent::connect(&c8).await;
    a8.handshake_at(&c8, 0, LEVEL_CLOSE_REASON - 1).await;
    let local = jitgate_controller::authz::Caller::local();
    h.app().fleet.revoke_agents(&local, "web1").await.unwrap();
    h.app().fleet.revoke_agents(&local, "web2").await.unwrap();
    let closing = ControllerMsg::Closing {
        reason: CloseReason::Revoked,
    };
    let seen = until_closed(&mut a9, Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(seen.last(), Some(&closing), "{seen:?}");
    let seen = until_closed(&mut a8, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ControllerMsg::Closing { .. })),
        "{seen:?}"
    );
    // Dialling again: told why instead of welcomed (level 9), a bare close (level 8).
    let mut again = Agent::connect(&c9).await;
    again.hello_at(&c9, 0, 0, LEVEL_CLOSE_REASON).await;
    let seen = until_closed(&mut again, Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(seen, [closing], "{seen:?}");
    let mut again = Agent::connect(&c8).await;
    again.hello_at(&c8, 0, 0, LEVEL_CLOSE_REASON - 1).await;
    let seen = until_closed(&mut again, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_level_5_agent_keeps_a_long_certificate_and_is_never_sent_the_new_messages() {
    let h = harness(120, 3600).await;
    for level in [None, Some(LEVEL_5)] {
        let vm = if level.is_none() { "web1" } else { "web2" };
        let c = enroll_at(&h, vm, level).await;
        let (_, na, ..) = facts(&c.cert_pem);
        assert!(
            na - now_s() > 800 * 86_400,
            "{level:?}: a long certificate ({na})"
        );
        let mut a = Agent::connect(&c).await;
        a.handshake_at(&c, 0, LEVEL_5).await;
        // Nothing it does not know comes, and a renewal request from it is a protocol error.
        while let Some(m) = a.recv_within(Duration::from_millis(500)).await {
            assert!(
                !matches!(
                    m,
                    ControllerMsg::Certificate { .. } | ControllerMsg::RenewalRefused { .. }
                ),
                "{m:?}"
            );
        }
        a.send(&AgentMsg::RenewCertificate {
            csr_pem: csr(&c.key),
        })
        .await;
        loop {
            match a.recv_within(Duration::from_secs(5)).await {
                None => break,
                Some(ControllerMsg::Certificate { .. } | ControllerMsg::RenewalRefused { .. }) => {
                    panic!("a level-5 agent was sent a renewal answer")
                }
                Some(_) => {}
            }
        }
    }
    assert!(renewals(&h).await.is_empty());
}

/// Issues a server certificate for localhost from the CA in the state directory (the
/// signing one in `ca.crt`, whose key is `ca.key`), valid for `days`.
fn issue_server_cert(h: &Harness, days: i64) -> (String, String) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(h.dir.ca_key()).unwrap()).unwrap();
    let bundle = std::fs::read_to_string(h.dir.ca_cert()).unwrap();
    let ca_der = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .map(|d| d.unwrap())
        .find(|d| {
            let (_, c) = x509_parser::parse_x509_certificate(d.as_ref()).unwrap();
            c.public_key().subject_public_key.data.as_ref() == ca_key.public_key_raw()
        })
        .expect("the CA of the key");
    let ca = rcgen::CertificateParams::from_ca_cert_der(&ca_der)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The server certificate a new agent-channel connection is given.
async fn served_cert(c: &Creds) -> Vec<u8> {
    let a = common::agent::tls(c).await;
    a.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("a server certificate")
}

fn expiry_metric(text: &str) -> f64 {
    text.lines()
        .find(|l| {
            l.starts_with("jitgate_tls_certificate_expiry_timestamp_seconds")
                && l.contains("certificate=\"server\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("the server certificate's expiry metric")
}

#[tokio::test]
async fn the_server_certificate_is_reloaded_for_new_connections_only() {
    let h = harness(120, 3600).await;
    let c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    let before = served_cert(&c).await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    let server = h.server.as_ref().unwrap();
    let m0 = expiry_metric(&server.metrics.render(None).await.unwrap());

    // A broken pair (a key that is not the certificate's) changes nothing.
    let (cert, key) = issue_server_cert(&h, 40);
    let old_key = std::fs::read_to_string(h.dir.server_key()).unwrap();
    std::fs::write(h.dir.server_cert(), &cert).unwrap();
    assert!(server.reload_server_cert().is_err());
    assert_eq!(served_cert(&c).await, before);
    let _ = old_key;

    std::fs::write(h.dir.server_key(), &key).unwrap();
    assert!(server.reload_server_cert().unwrap(), "a new certificate");
    let after = served_cert(&c).await;
    assert_ne!(after, before, "new connections get the new certificate");
    let der = CertificateDer::pem_slice_iter(cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(after, der.as_ref());
    // The API too.
    let (st, _) = h
        .call(Method::GET, "/api/v1/agents", Some(&h.admin), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    // The established connection goes on.
    assert!(!a.closed_within(Duration::from_millis(700)).await);
    a.send(&AgentMsg::RenewCertificate {
        csr_pem: csr(&c.key),
    })
    .await;
    assert!(matches!(
        a.recv_within(Duration::from_secs(5)).await,
        Some(ControllerMsg::Certificate { .. })
    ));
    // The expiry metric follows.
    let m1 = expiry_metric(&server.metrics.render(None).await.unwrap());
    let (_, na, ..) = facts(&cert);
    assert_eq!(m1, na as f64);
    assert_ne!(m1, m0);

    // `jit-controller certs renew-server`: a new certificate from the CA, same names, new key.
    let r = jitgate_controller::state::renew_server_cert(&h.dir, &[], 90).unwrap();
    assert!(r.names.contains(&"localhost".to_string()), "{:?}", r.names);
    assert!(server.reload_server_cert().unwrap());
    let renewed = served_cert(&c).await;
    assert_ne!(
        renewed, after,
        "verified against the CA for localhost, and new"
    );
    let m2 = expiry_metric(&server.metrics.render(None).await.unwrap());
    assert_eq!(m2, r.not_after_unix as f64);
    assert!(jitgate_controller::state::renew_server_cert(&h.dir, &[], 0).is_err());
    assert_eq!(served_cert(&c).await, renewed, "bad input changes nothing");
}

/// The CA series of the expiry metric: (fingerprint, subject, expiry unix seconds).
async fn ca_expiries(h: &Harness) -> Vec<(String, String, i64)> {
    let text = h
        .server
        .as_ref()
        .unwrap()
        .metrics
        .render(None)
        .await
        .unwrap();
    let label = |l: &str, name: &str| -> String {
        let at = l.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
        l[at..at + l[at..].find('"').unwrap()].to_string()
    };
    text.lines()
        .filter(|l| {
            l.starts_with("jitgate_tls_certificate_expiry_timestamp_seconds")
                && l.contains("certificate=\"ca\"")
        })
        .map(|l| {
            (
                label(l, "fingerprint"),
                label(l, "subject"),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Self-signed CA: (certificate PEM, key).
fn new_ca(name: &str) -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    (p.self_signed(&key).unwrap().pem(), key)
}

fn issuer_cn(pem: &str) -> String {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    c.issuer().to_string()
}

/// The procedure of docs/operations.md ("The controller CA"), step by step, with an agent
/// following by renewal and never re-enrolled.
#[tokio::test]
async fn the_ca_is_rotated_through_a_bundle_and_agents_follow_by_renewal() {
    // Three renewals within seconds: the rate limit off.
    let mut h = Harness::with_config(|c: &mut Config| {
        c.certificates.agent_lifetime_seconds = 120;
        c.certificates.agent_grace_seconds = 3600;
        c.certificates.renewal_min_interval_seconds = Some(0);
    })
    .await;
    h.fixture().await;
    let mut c = enroll_at(&h, "web1", Some(LEVEL_CERT_RENEWAL)).await;
    let old_ca = std::fs::read_to_string(h.dir.ca_cert()).unwrap();
    let old_key = std::fs::read_to_string(h.dir.ca_key()).unwrap();
    let (new_ca_pem, new_key) = new_ca("jitgate controller CA 2");

    // 1. Trust the new CA alongside the old one; the old one still signs.
    std::fs::write(h.dir.ca_cert(), format!("{old_ca}{new_ca_pem}")).unwrap();
    h.restart().await;
    // The expiry of each CA of the bundle, as its own series.
    let series = ca_expiries(&h).await;
    assert_eq!(series.len(), 2, "{series:?}");
    assert_ne!(series[0].0, series[1].0, "{series:?}");
    assert!(
        series
            .iter()
            .any(|(_, s, _)| s == "CN=jitgate controller CA 2"),
        "{series:?}"
    );
    let (_, new_na, ..) = facts(&new_ca_pem);
    assert!(series.iter().any(|(_, _, t)| *t == new_na), "{series:?}");
    c.endpoint = h.server.as_ref().unwrap().agent_addr.to_string();
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    match renew(&mut a, &c.key).await {
        ControllerMsg::Certificate {
            certificate_pem,
            ca_bundle_pem,
        } => {
            assert_eq!(ca_bundle_pem, format!("{old_ca}{new_ca_pem}"));
            assert!(issuer_cn(&certificate_pem).contains("jitgate controller CA"));
            assert!(!issuer_cn(&certificate_pem).contains("CA 2"));
            c.cert_pem = certificate_pem;
            c.ca_pem = ca_bundle_pem;
        }
        m => panic!("{m:?}"),
    }
    drop(a);

    // 2. The new CA signs: the key replaced, a server certificate from it.
    std::fs::write(h.dir.ca_key(), new_key.serialize_pem()).unwrap();
    let (cert, key) = issue_server_cert(&h, 825);
    std::fs::write(h.dir.server_cert(), &cert).unwrap();
    std::fs::write(h.dir.server_key(), &key).unwrap();
    h.restart().await;
    c.endpoint = h.server.as_ref().unwrap().agent_addr.to_string();
    // The agent (its bundle has both) trusts the new server certificate; the old-CA
    // certificate it holds is still accepted; it renews under the new CA.
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    match renew(&mut a, &c.key).await {
        ControllerMsg::Certificate {
            certificate_pem, ..
        } => {
            assert!(issuer_cn(&certificate_pem).contains("CA 2"));
            c.cert_pem = certificate_pem;
        }
        m => panic!("{m:?}"),
    }
    drop(a);
    // An agent that did not renew (still under the old CA).
    let laggard = enroll_at(&h, "web2", Some(LEVEL_CERT_RENEWAL)).await;
    assert!(
        issuer_cn(&laggard.cert_pem).contains("CA 2"),
        "new enrolments too"
    );

    // 3. Retire the old CA: the bundle has the new one only.
    std::fs::write(h.dir.ca_cert(), &new_ca_pem).unwrap();
    h.restart().await;
    let series = ca_expiries(&h).await;
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0].1, "CN=jitgate controller CA 2");
    c.endpoint = h.server.as_ref().unwrap().agent_addr.to_string();
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CERT_RENEWAL).await;
    match renew(&mut a, &c.key).await {
        ControllerMsg::Certificate { ca_bundle_pem, .. } => {
            assert_eq!(
                ca_bundle_pem, new_ca_pem,
                "the old CA leaves the agents' bundle"
            );
        }
        m => panic!("{m:?}"),
    }
    // A certificate from the old CA is refused from now on.
    let old_cert = {
        let k = rcgen::KeyPair::from_pem(&old_key).unwrap();
        let ca = rcgen::CertificateParams::from_ca_cert_pem(&old_ca)
            .unwrap()
            .self_signed(&k)
            .unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(format!("urn:jitgate:agent:{}", c.id)).unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.signed_by(&c.key, &ca, &k).unwrap().pem()
    };
    let stale = Creds {
        cert_pem: old_cert,
        ..clone_creds(&c)
    };
    let mut s = Agent::connect(&stale).await;
    s.hello_at(&stale, 0, 0, LEVEL_CERT_RENEWAL).await;
    assert!(s.closed_within(Duration::from_secs(5)).await);
}
