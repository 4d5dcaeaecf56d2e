//! The wire messages' encodings: round trips, and what an older peer can and cannot read.

use super::*;
use crate::signed::{GrantBody, ScheduledGrantBody, Signed};
use ed25519_dalek::SigningKey;

/// `AgentMsg` as level-1 agents and controllers know it (before the appended variants).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum AgentMsgV1 {
    Hello {
        agent_id: Uuid,
        version: String,
        seq_high_water: u64,
        audit_acked: u64,
    },
}

/// `ControllerMsg` as a level-1 agent knows it (up to `Ping`).
#[derive(Debug, Serialize, Deserialize)]
enum ControllerMsgV1 {
    Welcome {
        agent_id: Uuid,
        controller_unix_ms: i64,
    },
    Policy(Vec<u8>, Vec<u8>),
    Grant(Signed<GrantBody>),
    Revoke(Vec<u8>, Vec<u8>),
    Active {
        grant_ids: Vec<Uuid>,
        up_to_seq: u64,
    },
    AuditAck {
        up_to: u64,
    },
    Ping {
        nonce: u64,
    },
}

fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(v: T) {
    let bytes = postcard::to_allocvec(&v).unwrap();
    assert_eq!(postcard::from_bytes::<T>(&bytes).unwrap(), v);
}

fn booked() -> Signed<ScheduledGrantBody> {
    let body = ScheduledGrantBody {
        grant: GrantBody {
            agent_id: Uuid::from_bytes([1; 16]),
            grant_id: Uuid::from_bytes([2; 16]),
            seq: 9,
            request_id: "r".into(),
            protocol: Protocol::Tcp,
            port: Port::new(22).unwrap(),
            source: "203.0.113.7/32".parse().unwrap(),
            start_unix_ms: 10_000,
            end_unix_ms: 20_000,
            remaining_ms: 15_000,
            requester: "alice".into(),
            justification: "booked".into(),
        },
        starts_in_ms: 5_000,
    };
    Signed::sign(&body, &SigningKey::from_bytes(&[3; 32])).unwrap()
}

#[test]
fn new_messages_round_trip() {
    round_trip(ControllerMsg::ScheduledGrant(booked()));
    round_trip(AgentMsg::HelloV2 {
        agent_id: Uuid::from_bytes([1; 16]),
        version: "0.9".into(),
        seq_high_water: 7,
        audit_acked: 3,
        protocol: PROTOCOL_LEVEL,
    });
    round_trip(AgentMsg::GrantResult {
        grant_id: Uuid::from_bytes([2; 16]),
        seq: 9,
        outcome: Outcome::Scheduled {
            agent_unix_ms: 1,
            opens_unix_ms: 2,
        },
    });
    round_trip(AgentMsg::ScheduledGrants {
        grants: vec![ReportedScheduledGrant {
            grant: ReportedGrant {
                grant_id: Uuid::from_bytes([2; 16]),
                origin: "controller".into(),
                protocol: Protocol::Tcp,
                port: Port::new(22).unwrap(),
                source: "203.0.113.7/32".parse().unwrap(),
                end_unix_ms: 20_000,
                requester: "alice".into(),
            },
            opens_unix_ms: 10_000,
        }],
    });
}

#[test]
fn an_old_hello_still_decodes_and_means_level_1() {
    let old = AgentMsgV1::Hello {
        agent_id: Uuid::from_bytes([1; 16]),
        version: "0.1.0".into(),
        seq_high_water: 5,
        audit_acked: 4,
    };
    let bytes = postcard::to_allocvec(&old).unwrap();
    assert_eq!(
        postcard::from_bytes::<AgentMsg>(&bytes).unwrap(),
        AgentMsg::Hello {
            agent_id: Uuid::from_bytes([1; 16]),
            version: "0.1.0".into(),
            seq_high_water: 5,
            audit_acked: 4,
        }
    );
    // And the new Hello is not mistaken for the old one by an older controller.
    let v2 = postcard::to_allocvec(&AgentMsg::HelloV2 {
        agent_id: Uuid::from_bytes([1; 16]),
        version: "0.9".into(),
        seq_high_water: 5,
        audit_acked: 4,
        protocol: PROTOCOL_LEVEL,
    })
    .unwrap();
    assert!(postcard::from_bytes::<AgentMsgV1>(&v2).is_err());
}

/// `ControllerMsg` as a level-2 agent knows it (up to `ScheduledGrant`).
#[derive(Debug, Serialize, Deserialize)]
enum ControllerMsgV2 {
    Welcome {
        agent_id: Uuid,
        controller_unix_ms: i64,
    },
    Policy(Vec<u8>, Vec<u8>),
    Grant(Vec<u8>, Vec<u8>),
    Revoke(Vec<u8>, Vec<u8>),
    Active {
        grant_ids: Vec<Uuid>,
        up_to_seq: u64,
    },
    AuditAck {
        up_to: u64,
    },
    Ping {
        nonce: u64,
    },
    ScheduledGrant(Vec<u8>, Vec<u8>),
}

#[test]
fn settings_round_trip_and_a_level_2_agent_cannot_read_them() {
    let m = ControllerMsg::Settings {
        endpoints: vec!["ctl-a.example.net:8444".into(), "[2001:db8::1]:8444".into()],
        ping_every_ms: 2_000,
    };
    round_trip(m.clone());
    let bytes = postcard::to_allocvec(&m).unwrap();
    assert!(postcard::from_bytes::<ControllerMsgV2>(&bytes).is_err());
    // A Ping keeps its encoding for them.
    let ping = postcard::to_allocvec(&ControllerMsg::Ping { nonce: 7 }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV2>(&ping).unwrap(),
        ControllerMsgV2::Ping { nonce: 7 }
    ));
}

#[test]
fn a_level_1_agent_cannot_read_a_booking_as_a_grant() {
    let bytes = postcard::to_allocvec(&ControllerMsg::ScheduledGrant(booked())).unwrap();
    assert!(postcard::from_bytes::<ControllerMsgV1>(&bytes).is_err());
    // The old messages keep their encoding.
    let grant = Signed::sign(
        &booked()
            .verify(
                &SigningKey::from_bytes(&[3; 32]).verifying_key(),
                Uuid::from_bytes([1; 16]),
            )
            .unwrap()
            .grant,
        &SigningKey::from_bytes(&[3; 32]),
    )
    .unwrap();
    let bytes = postcard::to_allocvec(&ControllerMsg::Grant(grant.clone())).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV1>(&bytes).unwrap(),
        ControllerMsgV1::Grant(g) if g == grant
    ));
}

/// `ControllerMsg` as a level-5 agent knows it (up to `LimitedGrant`).
#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
enum ControllerMsgV5 {
    Welcome {
        agent_id: Uuid,
        controller_unix_ms: i64,
    },
    Policy(Vec<u8>, Vec<u8>),
    Grant(Vec<u8>, Vec<u8>),
    Revoke(Vec<u8>, Vec<u8>),
    Active {
        grant_ids: Vec<Uuid>,
        up_to_seq: u64,
    },
    AuditAck {
        up_to: u64,
    },
    Ping {
        nonce: u64,
    },
    ScheduledGrant(Vec<u8>, Vec<u8>),
    Settings {
        endpoints: Vec<String>,
        ping_every_ms: u64,
    },
    KeyAnnouncement(Vec<u8>, Vec<u8>),
    KeyRetirement(Vec<u8>, Vec<u8>),
    LimitedGrant(Vec<u8>, Vec<u8>),
}

#[test]
fn certificate_renewal_round_trips_and_a_level_5_agent_cannot_read_it() {
    let cert = ControllerMsg::Certificate {
        certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
        ca_bundle_pem: "ca".into(),
    };
    let refused = ControllerMsg::RenewalRefused {
        reason: "revoked".into(),
    };
    round_trip(cert.clone());
    round_trip(refused.clone());
    round_trip(AgentMsg::RenewCertificate {
        csr_pem: "csr".into(),
    });
    for m in [cert, refused] {
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert!(postcard::from_bytes::<ControllerMsgV5>(&bytes).is_err());
    }
    let ping = postcard::to_allocvec(&ControllerMsg::Ping { nonce: 7 }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV5>(&ping).unwrap(),
        ControllerMsgV5::Ping { nonce: 7 }
    ));
}

/// `AgentMsg` as a level-6 controller knows it (up to `RenewCertificate`).
#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
enum AgentMsgV6 {
    Hello {
        agent_id: Uuid,
        version: String,
        seq_high_water: u64,
        audit_acked: u64,
    },
    GrantResult(Uuid, u64, Outcome),
    RevokeResult(Uuid, u64, Outcome),
    PolicyResult(u64, Outcome),
    Grants(Vec<ReportedGrant>),
    Audit(Vec<AuditRecord>),
    Heartbeat(Box<Heartbeat>),
    Pong {
        nonce: u64,
    },
    Status(Box<StatusReport>),
    HelloV2 {
        agent_id: Uuid,
        version: String,
        seq_high_water: u64,
        audit_acked: u64,
        protocol: u32,
    },
    ScheduledGrants(Vec<ReportedScheduledGrant>),
    KeyResult(KeyId, KeyStep, Outcome),
    RenewCertificate {
        csr_pem: String,
    },
}

/// `ControllerMsg` as a level-6 agent knows it (up to `RenewalRefused`).
#[derive(Debug, Serialize, Deserialize)]
#[allow(dead_code)]
enum ControllerMsgV6 {
    Welcome {
        agent_id: Uuid,
        controller_unix_ms: i64,
    },
    Policy(Vec<u8>, Vec<u8>),
    Grant(Vec<u8>, Vec<u8>),
    Revoke(Vec<u8>, Vec<u8>),
    Active {
        grant_ids: Vec<Uuid>,
        up_to_seq: u64,
    },
    AuditAck {
        up_to: u64,
    },
    Ping {
        nonce: u64,
    },
    ScheduledGrant(Vec<u8>, Vec<u8>),
    Settings {
        endpoints: Vec<String>,
        ping_every_ms: u64,
    },
    KeyAnnouncement(Vec<u8>, Vec<u8>),
    KeyRetirement(Vec<u8>, Vec<u8>),
    LimitedGrant(Vec<u8>, Vec<u8>),
    Certificate {
        certificate_pem: String,
        ca_bundle_pem: String,
    },
    RenewalRefused {
        reason: String,
    },
}

fn hooks() -> AgentMsg {
    AgentMsg::Hooks {
        interfaces: crate::testing::example_hooks(),
    }
}

#[test]
fn hook_reports_round_trip_and_a_level_6_side_cannot_read_them() {
    let level = ControllerMsg::Level {
        protocol: PROTOCOL_LEVEL,
    };
    round_trip(level.clone());
    round_trip(hooks());
    let bytes = postcard::to_allocvec(&level).unwrap();
    assert!(postcard::from_bytes::<ControllerMsgV6>(&bytes).is_err());
    let bytes = postcard::to_allocvec(&hooks()).unwrap();
    assert!(postcard::from_bytes::<AgentMsgV6>(&bytes).is_err());
    // The older messages keep their encoding for them.
    let ping = postcard::to_allocvec(&ControllerMsg::Ping { nonce: 7 }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV6>(&ping).unwrap(),
        ControllerMsgV6::Ping { nonce: 7 }
    ));
    let refused =
        postcard::to_allocvec(&ControllerMsg::RenewalRefused { reason: "r".into() }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV6>(&refused).unwrap(),
        ControllerMsgV6::RenewalRefused { reason } if reason == "r"
    ));
    let pong = postcard::to_allocvec(&AgentMsg::Pong { nonce: 9 }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<AgentMsgV6>(&pong).unwrap(),
        AgentMsgV6::Pong { nonce: 9 }
    ));
    let renew = postcard::to_allocvec(&AgentMsg::RenewCertificate {
        csr_pem: "csr".into(),
    })
    .unwrap();
    assert!(matches!(
        postcard::from_bytes::<AgentMsgV6>(&renew).unwrap(),
        AgentMsgV6::RenewCertificate { csr_pem } if csr_pem == "csr"
    ));
    assert_eq!(LEVEL_HOOK_REPORTS, 7);
}

#[test]
fn grant_limits_round_trip_and_an_older_controller_cannot_read_them() {
    let grant = ReportedGrant {
        grant_id: Uuid::from_bytes([3; 16]),
        origin: "local".into(),
        protocol: Protocol::Tcp,
        port: Port::new(22).unwrap(),
        source: "198.51.100.0/24".parse().unwrap(),
        end_unix_ms: 1_795_741_200_000,
        requester: "local:root".into(),
    };
    let limited = AgentMsg::GrantsWithLimits {
        grants: vec![
            ReportedLimitedGrant {
                grant: grant.clone(),
                max_connections: MaxConnections::new(2),
            },
            ReportedLimitedGrant {
                grant: grant.clone(),
                max_connections: None,
            },
        ],
    };
    round_trip(limited.clone());
    // An appended variant: a decoder without it refuses it, and `Grants` keeps its
    // encoding for older controllers.
    let bytes = postcard::to_allocvec(&limited).unwrap();
    assert!(postcard::from_bytes::<AgentMsgV6>(&bytes).is_err());
    let plain = postcard::to_allocvec(&AgentMsg::Grants {
        grants: vec![grant.clone()],
    })
    .unwrap();
    assert!(matches!(
        postcard::from_bytes::<AgentMsgV6>(&plain).unwrap(),
        AgentMsgV6::Grants(g) if g == vec![grant]
    ));
    assert_eq!(LEVEL_GRANT_LIMITS, LEVEL_SPARSE_PINGS + 1);
}

#[test]
fn hook_reports_are_bounded() {
    let long = "x".repeat(MAX_HOOK_NAME + 10);
    let one = InterfaceHook {
        interface: long.clone(),
        hook: HookKind::XdpDispatcher,
        mode: HookMode::Generic,
        position: 20,
        programs: 21,
        ahead: (0..20)
            .map(|i| ProgramAhead {
                id: i,
                name: long.clone(),
                hook: HookKind::XdpDispatcher,
            })
            .collect(),
        problem: Some(HookProblem::Missing {
            reason: "é".repeat(MAX_HOOK_REASON + 1),
        }),
    };
    let all = bounded_hooks(std::iter::repeat_n(one, MAX_HOOK_INTERFACES + 3));
    assert_eq!(all.len(), MAX_HOOK_INTERFACES);
    let h = &all[0];
    assert_eq!(h.interface.chars().count(), MAX_HOOK_NAME);
    assert_eq!(h.ahead.len(), MAX_PROGRAMS_AHEAD);
    assert!(
        h.ahead
            .iter()
            .all(|a| a.name.chars().count() == MAX_HOOK_NAME)
    );
    assert!(matches!(&h.problem, Some(HookProblem::Missing { reason })
        if reason.chars().count() == MAX_HOOK_REASON));
    // A full report stays far below a frame.
    let bytes = postcard::to_allocvec(&AgentMsg::Hooks { interfaces: all }).unwrap();
    assert!(bytes.len() < crate::MAX_FRAME / 4, "{}", bytes.len());
}

#[test]
fn audit_resend_and_hello_v3_round_trip_and_older_peers_cannot_read_them() {
    let resend = ControllerMsg::AuditResend { after: 41 };
    let hello = AgentMsg::HelloV3 {
        agent_id: Uuid::from_bytes([1; 16]),
        version: "0.9".into(),
        seq_high_water: 7,
        audit_acked: 3,
        policy_seq: 12,
        protocol: PROTOCOL_LEVEL,
    };
    round_trip(resend.clone());
    round_trip(hello.clone());
    let bytes = postcard::to_allocvec(&resend).unwrap();
    assert!(postcard::from_bytes::<ControllerMsgV6>(&bytes).is_err());
    let bytes = postcard::to_allocvec(&hello).unwrap();
    assert!(postcard::from_bytes::<AgentMsgV6>(&bytes).is_err());
    // The messages a level-6 peer knows keep their encoding.
    let ack = postcard::to_allocvec(&ControllerMsg::AuditAck { up_to: 9 }).unwrap();
    assert!(matches!(
        postcard::from_bytes::<ControllerMsgV6>(&ack).unwrap(),
        ControllerMsgV6::AuditAck { up_to: 9 }
    ));
    let v2 = postcard::to_allocvec(&AgentMsg::HelloV2 {
        agent_id: Uuid::from_bytes([1; 16]),
        version: "0.9".into(),
        seq_high_water: 5,
        audit_acked: 4,
        protocol: 6,
    })
    .unwrap();
    assert!(matches!(
        postcard::from_bytes::<AgentMsgV6>(&v2).unwrap(),
        AgentMsgV6::HelloV2 {
            seq_high_water: 5,
            audit_acked: 4,
            protocol: 6,
            ..
        }
    ));
    assert_eq!(LEVEL_AUDIT_RESEND, 8);
}

#[test]
fn closing_round_trips_and_is_appended_after_level_8s_messages() {
    let closing = ControllerMsg::Closing {
        reason: CloseReason::Revoked,
    };
    round_trip(closing.clone());
    let bytes = postcard::to_allocvec(&closing).unwrap();
    assert!(postcard::from_bytes::<ControllerMsgV6>(&bytes).is_err());
    // postcard leads with the variant's index: `Closing` comes after `AuditResend`, the
    // last message of level 8, whose encoding (and every older one's) is unchanged.
    let resend = postcard::to_allocvec(&ControllerMsg::AuditResend { after: 3 }).unwrap();
    assert_eq!(resend, [15, 3]);
    assert_eq!(bytes, [16, 0]);
    assert_eq!(
        CloseReason::Revoked.to_string(),
        "revoked by the controller"
    );
    assert_eq!(LEVEL_CLOSE_REASON, 9);
    assert_eq!(LEVEL_QUIET_PINGS, 10);
    assert_eq!(crate::LEVEL_SPARSE_PINGS, 11);
    assert_eq!(PROTOCOL_LEVEL, crate::LEVEL_GRANT_LIMITS);
    assert_eq!(crate::LEVEL_GRANT_LIMITS, 12);
    assert!(QUIET_AGENT_SILENCE > STATUS_REPORT_EVERY * 3);
}
