//! The simulated agent: enrolled identity, mutual TLS, the real protocol (Hello, status
//! reports every 10 s, pongs as the real agent sends them, signatures checked, grants and
//! policies acknowledged) and the timing of each grant's acknowledgement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use ed25519_dalek::VerifyingKey;
use jitgate_proto::message::{HookKind, HookMode, InterfaceHook, Outcome};
use jitgate_proto::{AgentMsg, ControllerMsg, read_frame, write_frame};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// One enrolled simulated agent.
pub(crate) struct Identity {
    pub id: uuid::Uuid,
    pub vm: String,
    pub cert_pem: String,
    /// The highest outbox seq it applied (its `seq_high_water`).
    pub high_water: AtomicU64,
}

/// What the simulated agents share: the key, trust, where grants are timed.
pub(crate) struct Shared {
    pub key_der: Vec<u8>,
    pub ca_pem: String,
    pub signing: VerifyingKey,
    pub connected: AtomicUsize,
    pub grants: AtomicU64,
    pub bad_signatures: AtomicU64,
    /// "vm|source" -> when its initiate was sent.
    pub sent: Mutex<HashMap<String, Instant>>,
    /// request -> agent acknowledgement, microseconds.
    pub acks: Mutex<Vec<u64>>,
    /// `--answer-pings`.
    pub answer_pings: bool,
    /// `--level`.
    pub level: u32,
    /// Agents connected to each controller (by its index in the endpoint list).
    pub per_controller: Vec<AtomicUsize>,
    /// `--kill-one`: when a controller was killed, and for each agent welcomed after that,
    /// how long after the kill (µs).
    pub killed_at: Mutex<Option<Instant>>,
    pub welcomed_after_kill: Mutex<Vec<u64>>,
}

impl Shared {
    /// A connection was welcomed: timed from the kill, if a controller was killed.
    fn note_welcome(&self) {
        let since = self.killed_at.lock().ok().and_then(|k| *k);
        if let Some(t) = since
            && let Ok(mut w) = self.welcomed_after_kill.lock()
        {
            w.push(t.elapsed().as_micros() as u64);
        }
    }
}

fn tls_config(s: &Shared, cert_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(s.ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivatePkcs8KeyDer::from(s.key_der.clone());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key.into())?,
    ))
}

fn status_report() -> AgentMsg {
    AgentMsg::Status(Box::new(jitgate_proto::testing::quiet_status_report()))
}

/// What a healthy agent reports before each status report to a controller at level 7 or
/// later: its program first at the XDP hook of its one interface.
fn hook_report() -> AgentMsg {
    AgentMsg::Hooks {
        interfaces: vec![InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::Xdp,
            mode: HookMode::Driver,
            position: 0,
            programs: 1,
            ahead: vec![],
            problem: None,
        }],
    }
}

/// An agent that keeps a connection as the real one does (docs/ha.md, "Which one"): it starts
/// at `endpoints[start]`; when a connection ends or fails it tries the next endpoint at once,
/// and only after every endpoint failed in a row does it wait (0.5 s doubling to 30 s, ±20 %).
pub(crate) async fn keep_agent(
    s: Arc<Shared>,
    who: Identity,
    endpoints: Arc<Vec<String>>,
    start: usize,
    failures: Arc<AtomicUsize>,
) {
    let mut at = start % endpoints.len().max(1);
    let (mut failed_in_a_row, mut backoff) = (0usize, Duration::from_millis(500));
    loop {
        let Some(endpoint) = endpoints.get(at) else {
            return;
        };
        let mut welcomed = false;
        if let Err(e) = run_agent(&s, &who, endpoint, at, &mut welcomed).await
            && failures.fetch_add(1, Ordering::Relaxed) < 3
        {
            eprintln!("  agent connection ended: {e:#}");
        }
        if welcomed {
            failed_in_a_row = 0;
            backoff = Duration::from_millis(500);
        } else {
            failed_in_a_row += 1;
        }
        at = (at + 1) % endpoints.len();
        if failed_in_a_row >= endpoints.len() {
            failed_in_a_row = 0;
            let jitter = 0.8 + 0.4 * rand::random::<f64>();
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// One connection of an agent: connect, hello, then answer until the connection ends.
async fn run_agent(
    s: &Arc<Shared>,
    who: &Identity,
    endpoint: &str,
    index: usize,
    welcomed: &mut bool,
) -> Result<()> {
    let cfg = tls_config(s, &who.cert_pem)?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(endpoint),
    )
    .await??;
    tcp.set_nodelay(true)?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (tx, mut rx) = mpsc::channel::<AgentMsg>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if write_frame(&mut wr, &m).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tx.send(AgentMsg::HelloV2 {
        agent_id: who.id,
        version: "fleet-bench".into(),
        // What it applied on earlier connections: nothing is sent twice after a failover.
        seq_high_water: who.high_water.load(Ordering::Relaxed),
        audit_acked: 0,
        protocol: s.level,
    })
    .await?;
    // The level the controller announced: from level 7 on each status report follows a
    // hook report, from level 10 on pings go unanswered, from level 12 on grants are
    // reported with their limits, as the real agent does (at its own level's rules).
    let announced = Arc::new(AtomicU32::new(0));
    let speaks = |needed: u32, controller: u32| s.level >= needed && controller >= needed;
    // Status reports on the agent's schedule (every 10 s), the first at once, spread.
    let hb = {
        let (tx, announced, level) = (tx.clone(), announced.clone(), s.level);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 10_000)).await;
            loop {
                let hooks = level >= jitgate_proto::LEVEL_HOOK_REPORTS
                    && announced.load(Ordering::Relaxed) >= jitgate_proto::LEVEL_HOOK_REPORTS;
                if hooks && tx.send(hook_report()).await.is_err() {
                    return;
                }
                if tx.send(status_report()).await.is_err() {
                    return;
                }
                tokio::time::sleep(jitgate_proto::STATUS_REPORT_EVERY).await;
            }
        })
    };
    let mut counted = false;
    let mut controller_level = 0;
    let result = loop {
        let m = match read_frame::<_, ControllerMsg>(&mut rd).await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(anyhow::anyhow!("{e}")),
        };
        let reply = match m {
            ControllerMsg::Welcome { .. } => {
                counted = true;
                *welcomed = true;
                s.connected.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = s.per_controller.get(index) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                s.note_welcome();
                None
            }
            ControllerMsg::Ping { nonce } => (s.answer_pings
                || jitgate_proto::agent_answers_pings(controller_level))
            .then_some(AgentMsg::Pong { nonce }),
            ControllerMsg::Level { protocol } => {
                controller_level = protocol;
                announced.store(protocol, Ordering::Relaxed);
                None
            }
            ControllerMsg::Policy(p) => match p.verify(&s.signing, who.id) {
                Ok(b) => Some(AgentMsg::PolicyResult {
                    seq: b.seq,
                    outcome: Outcome::Applied {
                        agent_unix_ms: jitgate_api::time::now_ms(),
                    },
                }),
                Err(_) => {
                    s.bad_signatures.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            ControllerMsg::Grant(g) => match g.verify(&s.signing, who.id) {
                Ok(b) => {
                    let key = format!("{}|{}", who.vm, b.source);
                    let sent = s.sent.lock().ok().and_then(|mut m| m.remove(&key));
                    if let Some(t) = sent
                        && let Ok(mut a) = s.acks.lock()
                    {
                        a.push(t.elapsed().as_micros() as u64);
                    }
                    s.grants.fetch_add(1, Ordering::Relaxed);
                    who.high_water.fetch_max(b.seq, Ordering::Relaxed);
                    Some(AgentMsg::GrantResult {
                        grant_id: b.grant_id,
                        seq: b.seq,
                        outcome: Outcome::Applied {
                            agent_unix_ms: jitgate_api::time::now_ms(),
                        },
                    })
                }
                Err(_) => {
                    s.bad_signatures.fetch_add(1, Ordering::Relaxed);
                    None
                }
            },
            ControllerMsg::Revoke(r) => match r.verify(&s.signing, who.id) {
                Ok(b) => {
                    who.high_water.fetch_max(b.seq, Ordering::Relaxed);
                    Some(AgentMsg::RevokeResult {
                        grant_id: b.grant_id,
                        seq: b.seq,
                        outcome: Outcome::AlreadyApplied,
                    })
                }
                Err(_) => None,
            },
            ControllerMsg::Active { .. } => {
                let report = if speaks(jitgate_proto::LEVEL_GRANT_LIMITS, controller_level) {
                    AgentMsg::GrantsWithLimits { grants: vec![] }
                } else {
                    AgentMsg::Grants { grants: vec![] }
                };
                let _ = tx.send(report).await;
                Some(AgentMsg::ScheduledGrants { grants: vec![] })
            }
            ControllerMsg::Settings { .. }
            | ControllerMsg::AuditAck { .. }
            | ControllerMsg::ScheduledGrant(_)
            | ControllerMsg::KeyAnnouncement(_)
            | ControllerMsg::KeyRetirement(_)
            | ControllerMsg::LimitedGrant(_)
            | ControllerMsg::Certificate { .. }
            | ControllerMsg::RenewalRefused { .. }
            | ControllerMsg::Closing { .. }
            | ControllerMsg::AuditResend { .. } => None,
        };
        if let Some(r) = reply
            && tx.send(r).await.is_err()
        {
            break Ok(());
        }
    };
    if counted {
        s.connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = s.per_controller.get(index) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
    hb.abort();
    writer.abort();
    result
}
