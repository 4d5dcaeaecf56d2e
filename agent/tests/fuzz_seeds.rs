//! Seed inputs for the `agent_config` and `audit_reader` fuzz targets (fuzz/,
//! docs/fuzzing.md).
//!
//! The committed seeds must stay valid inputs: this test parses every one.
//! `JITGATE_WRITE_FUZZ_SEEDS=1 cargo test -p jitgate-agent --test fuzz_seeds` rewrites them
//! with the real writers (after a change to a format).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use jitgate_agent::GrantId;
use jitgate_agent::audit::{AuditEvent, AuditLog, Chain};
use jitgate_agent::config::{AgentConfig, Overrides};
use jitgate_agent::grant::{GrantRecord, Origin};
use jitgate_agent::journal::{self, Journal, Record, RemoveReason, Replay};
use std::path::PathBuf;
use time::OffsetDateTime;

fn dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../fuzz/seeds/{target}"))
}

fn grant(n: u8) -> GrantRecord {
    GrantRecord {
        id: GrantId::from_bytes([n; 16]),
        protocol: jitgate_common::Protocol::Tcp,
        port: jitgate_common::Port::new(22).unwrap(),
        source: "203.0.113.0/24".parse().unwrap(),
        start: OffsetDateTime::UNIX_EPOCH,
        end: OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1),
        requester: "alice".into(),
        justification: "INC-1234".into(),
        origin: Origin::Controller,
        boot_id: "3f1e".into(),
        expires_boot_ns: 3_600_000_000_000,
        max_connections: jitgate_common::MaxConnections::new(u32::from(n % 2)),
    }
}

fn write_seeds() {
    let config = dir("agent_config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("example.toml"),
        include_str!("../jit-agent.example.toml"),
    )
    .unwrap();
    std::fs::write(
        config.join("minimal.toml"),
        "interfaces = [\"veth*\"]\n[[protect]]\nport = 22\nprotocol = \"tcp\"\n",
    )
    .unwrap();

    let out = dir("audit_reader");
    std::fs::create_dir_all(&out).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(tmp.path(), u64::MAX).unwrap();
    let t = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let events = [
        AuditEvent::new("agent.started", "jit-agent"),
        AuditEvent {
            source: Some("203.0.113.0/24".into()),
            protocol: Some("tcp".into()),
            port: Some(22),
            window: Some((t, t + time::Duration::hours(1))),
            grant_id: Some(GrantId::from_bytes([7; 16]).to_string()),
            ..AuditEvent::new("grant.applied", "alice")
        },
        AuditEvent {
            reason: Some("UserRequested".into()),
            ..AuditEvent::new("grant.revoked", "controller")
        },
    ];
    log.append(
        events
            .into_iter()
            .map(|e| AuditEvent { time: Some(t), ..e }),
    )
    .unwrap();
    drop(log);
    std::fs::copy(
        tmp.path().join(jitgate_agent::audit::FILE),
        out.join("audit.log"),
    )
    .unwrap();

    // Two grants and the removal of one: replay leaves one.
    let (mut j, _) = Journal::open(tmp.path()).unwrap();
    let removal = Record::Remove {
        id: grant(1).id,
        reason: RemoveReason::Revoked,
    };
    j.append(&[Record::Grant(grant(1)), Record::Grant(grant(2)), removal])
        .unwrap();
    drop(j);
    std::fs::copy(tmp.path().join(journal::FILE), out.join("grants.journal")).unwrap();
}

#[test]
fn fuzz_seeds_are_valid_inputs() {
    if std::env::var_os("JITGATE_WRITE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let mut n = 0;
    for e in std::fs::read_dir(dir("agent_config")).expect("fuzz/seeds/agent_config exists") {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        AgentConfig::from_toml(&text, &Overrides::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        n += 1;
    }
    assert!(n >= 2);
    let (mut logs, mut journals) = (0, 0);
    for e in std::fs::read_dir(dir("audit_reader")).expect("fuzz/seeds/audit_reader exists") {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let mut chain = Chain::new();
        if chain.feed("seed", &data[..]).is_ok() && chain.finish(1).records > 0 {
            logs += 1;
            continue;
        }
        let (replay, _) = Replay::read(&data[..]).unwrap();
        assert!(
            !replay.grants.is_empty() && replay.corrupt_records == 0 && replay.truncated_bytes == 0,
            "{} is neither a valid audit log nor a valid journal",
            path.display()
        );
        journals += 1;
    }
    assert!(logs >= 1 && journals >= 1);
}
