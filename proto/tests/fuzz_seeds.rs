//! Seed inputs for the `frame` and `signed` fuzz targets (fuzz/, docs/fuzzing.md).
//!
//! The committed seeds must stay valid inputs: this test decodes (and verifies) every one.
//! `JITGATE_WRITE_FUZZ_SEEDS=1 cargo test -p jitgate-proto --test fuzz_seeds` rewrites them
//! from the messages below (after a change to the wire format).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ed25519_dalek::SigningKey;
use jitgate_common::{MaxConnections, OnExpiry, Port, ProtectedPort, Protocol};
use jitgate_proto::frame::{decode, encode};
use jitgate_proto::message::{
    AuditRecord, Heartbeat, Outcome, ReportedGrant, ReportedLimitedGrant, ReportedScheduledGrant,
};
use jitgate_proto::signed::Body;
use jitgate_proto::{
    AgentMsg, ControllerMsg, GrantBody, LimitedGrantBody, PolicyBody, RevokeBody,
    ScheduledGrantBody, Signed,
};
use std::path::PathBuf;
use uuid::Uuid;

/// The fixed key pair and agent of the `signed` target (the same constants as
/// fuzz/fuzz_targets/signed.rs).
const KEY_SEED: [u8; 32] = [0x5a; 32];
const AGENT: Uuid = Uuid::from_bytes([0xa1; 16]);

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/seeds/{target}"))
}

fn grant() -> GrantBody {
    GrantBody {
        agent_id: AGENT,
        grant_id: Uuid::from_bytes([7; 16]),
        seq: 42,
        request_id: "req-1".into(),
        protocol: Protocol::Tcp,
        port: Port::new(22).unwrap(),
        source: "203.0.113.0/24".parse().unwrap(),
        start_unix_ms: 1_795_737_600_000,
        end_unix_ms: 1_795_741_200_000,
        remaining_ms: 3_600_000,
        requester: "alice@example.com".into(),
        justification: "INC-1234".into(),
    }
}

fn revoke() -> RevokeBody {
    RevokeBody {
        agent_id: AGENT,
        grant_id: Uuid::from_bytes([7; 16]),
        seq: 43,
        reason: "UserRequested".into(),
    }
}

fn policy() -> PolicyBody {
    PolicyBody {
        agent_id: AGENT,
        seq: 3,
        ports: vec![
            ProtectedPort {
                protocol: Protocol::Tcp,
                port: Port::new(22).unwrap(),
                on_expiry: OnExpiry::Keep,
            },
            ProtectedPort {
                protocol: Protocol::Udp,
                port: Port::new(3389).unwrap(),
                on_expiry: OnExpiry::Cut,
            },
        ],
        issued_unix_ms: 1_795_737_600_000,
    }
}

fn controller_msgs(key: &SigningKey) -> Vec<(&'static str, ControllerMsg)> {
    vec![
        (
            "welcome",
            ControllerMsg::Welcome {
                agent_id: AGENT,
                controller_unix_ms: 1_795_737_600_000,
            },
        ),
        (
            "grant",
            ControllerMsg::Grant(Signed::sign(&grant(), key).unwrap()),
        ),
        (
            "revoke",
            ControllerMsg::Revoke(Signed::sign(&revoke(), key).unwrap()),
        ),
        (
            "policy",
            ControllerMsg::Policy(Signed::sign(&policy(), key).unwrap()),
        ),
        (
            "active",
            ControllerMsg::Active {
                grant_ids: vec![Uuid::from_bytes([7; 16]), Uuid::from_bytes([8; 16])],
                up_to_seq: 43,
            },
        ),
        ("audit-ack", ControllerMsg::AuditAck { up_to: 9 }),
        ("ping", ControllerMsg::Ping { nonce: 77 }),
        (
            "scheduled-grant",
            ControllerMsg::ScheduledGrant(
                Signed::sign(
                    &ScheduledGrantBody {
                        grant: grant(),
                        starts_in_ms: 600_000,
                    },
                    key,
                )
                .unwrap(),
            ),
        ),
        (
            "limited-grant",
            ControllerMsg::LimitedGrant(
                Signed::sign(
                    &LimitedGrantBody {
                        grant: grant(),
                        max_connections: MaxConnections::ONE,
                        starts_in_ms: None,
                    },
                    key,
                )
                .unwrap(),
            ),
        ),
        (
            "settings",
            ControllerMsg::Settings {
                endpoints: vec!["ctl-a.example.net:8444".into(), "[2001:db8::2]:8444".into()],
                ping_every_ms: 2_000,
            },
        ),
        (
            "certificate",
            ControllerMsg::Certificate {
                certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                    .into(),
                ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"
                    .into(),
            },
        ),
        (
            "renewal-refused",
            ControllerMsg::RenewalRefused {
                reason: "agent revoked: re-enrol the host".into(),
            },
        ),
        (
            "level",
            ControllerMsg::Level {
                protocol: jitgate_proto::PROTOCOL_LEVEL,
            },
        ),
        ("audit-resend", ControllerMsg::AuditResend { after: 40 }),
        (
            "closing",
            ControllerMsg::Closing {
                reason: jitgate_proto::CloseReason::Revoked,
            },
        ),
    ]
}

fn agent_msgs() -> Vec<(&'static str, AgentMsg)> {
    let applied = Outcome::Applied {
        agent_unix_ms: 1_795_737_600_100,
    };
    vec![
        (
            "hello",
            AgentMsg::Hello {
                agent_id: AGENT,
                version: "0.1.0".into(),
                seq_high_water: 41,
                audit_acked: 8,
            },
        ),
        (
            "grant-result",
            AgentMsg::GrantResult {
                grant_id: Uuid::from_bytes([7; 16]),
                seq: 42,
                outcome: applied,
            },
        ),
        (
            "revoke-result",
            AgentMsg::RevokeResult {
                grant_id: Uuid::from_bytes([7; 16]),
                seq: 43,
                outcome: Outcome::AlreadyApplied,
            },
        ),
        (
            "policy-result",
            AgentMsg::PolicyResult {
                seq: 3,
                outcome: Outcome::Rejected {
                    reason: "older than the applied policy".into(),
                },
            },
        ),
        (
            "grants",
            AgentMsg::Grants {
                grants: vec![ReportedGrant {
                    grant_id: Uuid::from_bytes([7; 16]),
                    origin: "controller".into(),
                    protocol: Protocol::Tcp,
                    port: Port::new(22).unwrap(),
                    source: "2001:db8::/48".parse().unwrap(),
                    end_unix_ms: 1_795_741_200_000,
                    requester: "alice@example.com".into(),
                }],
            },
        ),
        (
            "grants-with-limits",
            AgentMsg::GrantsWithLimits {
                grants: vec![ReportedLimitedGrant {
                    grant: ReportedGrant {
                        grant_id: Uuid::from_bytes([8; 16]),
                        origin: "local".into(),
                        protocol: Protocol::Tcp,
                        port: Port::new(22).unwrap(),
                        source: "198.51.100.0/24".parse().unwrap(),
                        end_unix_ms: 1_795_741_200_000,
                        requester: "local:root (pid 7)".into(),
                    },
                    max_connections: MaxConnections::new(2),
                }],
            },
        ),
        (
            "audit",
            AgentMsg::Audit {
                records: vec![AuditRecord {
                    seq: 9,
                    id: "0b1c".into(),
                    line: "{\"seq\":9}".into(),
                }],
            },
        ),
        (
            "heartbeat",
            AgentMsg::Heartbeat(Box::new(Heartbeat {
                interfaces: vec![("eth0".into(), "attached".into())],
                protected: policy().ports,
                listening: vec![(Protocol::Tcp, "0.0.0.0:22".into())],
                active_grants: 1,
                audit_head: "ab".repeat(32),
                audit_seq: 9,
            })),
        ),
        ("pong", AgentMsg::Pong { nonce: 77 }),
        (
            "hello-v2",
            AgentMsg::HelloV2 {
                agent_id: AGENT,
                version: "0.2.0".into(),
                seq_high_water: 41,
                audit_acked: 8,
                protocol: jitgate_proto::PROTOCOL_LEVEL,
            },
        ),
        (
            "grant-result-scheduled",
            AgentMsg::GrantResult {
                grant_id: Uuid::from_bytes([7; 16]),
                seq: 42,
                outcome: Outcome::Scheduled {
                    agent_unix_ms: 1_795_737_000_000,
                    opens_unix_ms: 1_795_737_600_000,
                },
            },
        ),
        (
            "scheduled-grants",
            AgentMsg::ScheduledGrants {
                grants: vec![ReportedScheduledGrant {
                    grant: ReportedGrant {
                        grant_id: Uuid::from_bytes([7; 16]),
                        origin: "controller".into(),
                        protocol: Protocol::Tcp,
                        port: Port::new(22).unwrap(),
                        source: "203.0.113.0/24".parse().unwrap(),
                        end_unix_ms: 1_795_741_200_000,
                        requester: "alice@example.com".into(),
                    },
                    opens_unix_ms: 1_795_737_600_000,
                }],
            },
        ),
        (
            "renew-certificate",
            AgentMsg::RenewCertificate {
                csr_pem:
                    "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                        .into(),
            },
        ),
        (
            "hooks",
            AgentMsg::Hooks {
                interfaces: jitgate_proto::testing::example_hooks(),
            },
        ),
        (
            "hello-v3",
            AgentMsg::HelloV3 {
                agent_id: AGENT,
                version: "0.9.0".into(),
                seq_high_water: 41,
                audit_acked: 40,
                policy_seq: 12,
                protocol: jitgate_proto::PROTOCOL_LEVEL,
            },
        ),
    ]
}

/// One `signed` input: the body type's selector byte and the postcard `Signed<T>`.
fn signed_input<T: Body>(kind: u8, body: &T, key: &SigningKey) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend(postcard::to_allocvec(&Signed::sign(body, key).unwrap()).unwrap());
    v
}

#[test]
fn fuzz_seeds_are_valid_inputs() {
    let key = SigningKey::from_bytes(&KEY_SEED);
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, m) in controller_msgs(&key) {
        frames.push((format!("controller-{name}"), encode(&m).unwrap()));
    }
    for (name, m) in agent_msgs() {
        frames.push((format!("agent-{name}"), encode(&m).unwrap()));
    }
    // A stream of several frames, as on a connection.
    let stream: Vec<u8> = controller_msgs(&key)
        .iter()
        .flat_map(|(_, m)| encode(m).unwrap())
        .collect();
    frames.push(("controller-stream".into(), stream));
    let signed = vec![
        ("grant".to_string(), signed_input(0, &grant(), &key)),
        ("revoke".to_string(), signed_input(1, &revoke(), &key)),
        ("policy".to_string(), signed_input(2, &policy(), &key)),
    ];

    if std::env::var_os("JITGATE_WRITE_FUZZ_SEEDS").is_some() {
        for (target, seeds) in [("frame", &frames), ("signed", &signed)] {
            std::fs::create_dir_all(dir(target)).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir(target).join(name), bytes).unwrap();
            }
        }
    }

    let mut n = 0;
    for e in std::fs::read_dir(dir("frame")).expect("fuzz/seeds/frame exists") {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let body = &rest[4..4 + len];
            assert!(
                decode::<ControllerMsg>(body).is_ok() || decode::<AgentMsg>(body).is_ok(),
                "a frame seed does not decode"
            );
            rest = &rest[4 + len..];
            n += 1;
        }
    }
    assert!(n >= frames.len());
    let vk = key.verifying_key();
    for e in std::fs::read_dir(dir("signed")).expect("fuzz/seeds/signed exists") {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let ok = match data[0] % 3 {
            0 => postcard::from_bytes::<Signed<GrantBody>>(&data[1..])
                .map(|s| s.verify(&vk, AGENT).is_ok()),
            1 => postcard::from_bytes::<Signed<RevokeBody>>(&data[1..])
                .map(|s| s.verify(&vk, AGENT).is_ok()),
            _ => postcard::from_bytes::<Signed<PolicyBody>>(&data[1..])
                .map(|s| s.verify(&vk, AGENT).is_ok()),
        };
        assert_eq!(ok, Ok(true), "{} does not verify", path.display());
    }
}
