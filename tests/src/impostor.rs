//! A controller endpoint that signs what the test says: the agent enrols with the real
//! controller, then the controller stops and this endpoint serves the agent port in its
//! place, with the controller's own TLS certificate and grant-signing key. Tests use it to
//! send exact signed messages (hostile ones, booked grants with chosen times) to a real agent.

use crate::agent::{AgentProc, args};
use crate::controller::ControllerProc;
use crate::fleet::{Fleet, WS_V4};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jitgate_common::{Port, Protocol, SourcePrefix};
use jitgate_proto::message::{AgentMsg, ControllerMsg, Outcome};
use jitgate_proto::{GrantBody, RevokeBody, ScheduledGrantBody, Signed, read_frame, write_frame};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

pub type Rd = ReadHalf<TlsStream<TcpStream>>;
pub type Wr = WriteHalf<TlsStream<TcpStream>>;

/// The agent port (`WS_V4:8444`), taken over from a stopped controller.
pub struct Impostor {
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The real controller's grant-signing key.
    pub key: SigningKey,
}

/// One agent connection, after `Hello` and `Welcome`.
pub struct Session {
    pub agent: Uuid,
    pub seq_high_water: u64,
    /// 1 for `Hello`, the `protocol` of `HelloV2` or `HelloV3` otherwise.
    pub protocol: u32,
    pub rd: Rd,
    pub wr: Wr,
}

fn tls_config(state: &Path) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(state.join("tls/server.crt"))
            .expect("server cert")
            .collect::<Result<_, _>>()
            .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(state.join("tls/server.key")).expect("server key");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(state.join("tls/ca.crt")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("ca root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A grant body for `agent` from now to now + `end_in_ms` (negative: already ended).
pub fn grant_body(agent: Uuid, seq: u64, end_in_ms: i64) -> GrantBody {
    let now = now_ms();
    GrantBody {
        agent_id: agent,
        grant_id: Uuid::new_v4(),
        seq,
        request_id: format!("req-{seq}"),
        protocol: Protocol::Tcp,
        port: Port::new(22).expect("port"),
        source: "203.0.113.0/24".parse().expect("prefix"),
        start_unix_ms: now,
        end_unix_ms: now + end_in_ms,
        remaining_ms: end_in_ms.max(0) as u64,
        requester: "mallory".into(),
        justification: "attack".into(),
    }
}

/// A grant body for (`port`, `source`) over [now + `start_in_ms`, now + `end_in_ms`].
pub fn window_body(
    agent: Uuid,
    seq: u64,
    port: u16,
    source: SourcePrefix,
    start_in_ms: i64,
    end_in_ms: i64,
) -> GrantBody {
    let now = now_ms();
    GrantBody {
        port: Port::new(port).expect("port"),
        source,
        start_unix_ms: now + start_in_ms,
        end_unix_ms: now + end_in_ms,
        remaining_ms: end_in_ms.max(0) as u64,
        requester: "alice".into(),
        justification: "booked".into(),
        ..grant_body(agent, seq, end_in_ms)
    }
}

impl Impostor {
    /// A real controller in `fleet.ws`, an agent in the first VM enrolled with it (running
    /// `jit-agent run` with `agent_args`), then this endpoint in the controller's place.
    pub fn enrolled(fleet: &Fleet, agent_args: &str) -> (AgentProc, Impostor) {
        let vm = &fleet.vms[0];
        let mut ctl = ControllerProc::start(&fleet.ws, WS_V4);
        let token = ctl.add_vm("vm-01", vm.v4);
        let agent = AgentProc::start_enrolled(&vm.ns, &args(agent_args), &ctl.api, &ctl.ca, &token);
        std::thread::sleep(Duration::from_millis(500));
        let imp = Impostor::replace(&mut ctl, fleet);
        (agent, imp)
    }

    /// Reads the controller's keys, stops it and listens on its agent port in `fleet.ws`.
    pub fn replace(ctl: &mut ControllerProc, fleet: &Fleet) -> Impostor {
        let key = Self::initial_key(ctl);
        Self::replace_with(ctl, fleet, key)
    }

    /// The grant-signing key the controller's `init` made (destroyed once a rotation
    /// retires it: read it before).
    pub fn initial_key(ctl: &ControllerProc) -> SigningKey {
        let key_pem = std::fs::read_to_string(ctl.state.join("keys/grant-signing.key"))
            .expect("grant-signing key");
        SigningKey::from_pkcs8_pem(&key_pem).expect("grant-signing key")
    }

    /// As [`Impostor::replace`], holding `key`.
    pub fn replace_with(ctl: &mut ControllerProc, fleet: &Fleet, key: SigningKey) -> Impostor {
        let cfg = tls_config(&ctl.state);
        ctl.kill();
        let ws = Fleet::ns_path(&fleet.ws);
        let listener = jitgate_agent::netns::run_in(&ws, || {
            std::net::TcpListener::bind(format!("{WS_V4}:8444"))
        })
        .expect("enter the workstation namespace")
        .expect("bind the agent port");
        listener.set_nonblocking(true).expect("nonblocking");
        Impostor {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cfg)),
            key,
        }
    }

    /// Accepts the agent's next connection (within 40 s): reads its Hello, sends Welcome.
    pub async fn accept(&self) -> Session {
        self.try_accept()
            .await
            .expect("TLS and Hello from the agent")
    }

    /// As [`Impostor::accept`]; a connection that ends before its Hello (an agent stopped
    /// while it was connecting) is an error, not a panic.
    pub async fn try_accept(&self) -> std::io::Result<Session> {
        let listener = tokio::net::TcpListener::from_std(self.listener.try_clone().expect("dup"))
            .expect("tokio listener");
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(40), listener.accept())
            .await
            .expect("agent connects")
            .expect("accept");
        let tls = self.acceptor.accept(tcp).await?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let hello: AgentMsg = read_frame(&mut rd)
            .await
            .map_err(std::io::Error::other)?
            .ok_or_else(|| std::io::Error::other("closed before Hello"))?;
        let (agent, seq_high_water, protocol) = match hello {
            AgentMsg::Hello {
                agent_id,
                seq_high_water,
                ..
            } => (agent_id, seq_high_water, 1),
            AgentMsg::HelloV2 {
                agent_id,
                seq_high_water,
                protocol,
                ..
            }
            | AgentMsg::HelloV3 {
                agent_id,
                seq_high_water,
                protocol,
                ..
            } => (agent_id, seq_high_water, protocol),
            other => panic!("expected Hello, got {other:?}"),
        };
        write_frame(
            &mut wr,
            &ControllerMsg::Welcome {
                agent_id: agent,
                controller_unix_ms: now_ms(),
            },
        )
        .await
        .expect("welcome");
        Ok(Session {
            agent,
            seq_high_water,
            protocol,
            rd,
            wr,
        })
    }
}

impl Session {
    pub async fn send(&mut self, m: &ControllerMsg) {
        write_frame(&mut self.wr, m)
            .await
            .expect("send to the agent");
    }

    /// The agent's next message (within `timeout`).
    pub async fn recv(&mut self, timeout: Duration) -> AgentMsg {
        tokio::time::timeout(timeout, read_frame(&mut self.rd))
            .await
            .expect("a message from the agent")
            .expect("frame")
            .expect("connection open")
    }

    /// The next message `pick` accepts, skipping others (status reports, audit records).
    pub async fn until<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(AgentMsg) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Some(t) = pick(self.recv(left).await) {
                return t;
            }
        }
    }

    /// The next `GrantResult` outcome (for any grant).
    pub async fn grant_outcome(&mut self) -> Outcome {
        self.until(Duration::from_secs(10), |m| match m {
            AgentMsg::GrantResult { outcome, .. } => Some(outcome),
            _ => None,
        })
        .await
    }

    /// The next outcome for grant `id`, waiting up to `timeout`.
    pub async fn outcome_of(&mut self, id: Uuid, timeout: Duration) -> Outcome {
        self.until(timeout, |m| match m {
            AgentMsg::GrantResult {
                grant_id, outcome, ..
            } if grant_id == id => Some(outcome),
            _ => None,
        })
        .await
    }

    /// Sends a booking signed with `key`; the agent's first outcome for it.
    pub async fn book(&mut self, key: &SigningKey, b: &ScheduledGrantBody) -> Outcome {
        let signed = Signed::sign(b, key).expect("sign");
        self.send(&ControllerMsg::ScheduledGrant(signed)).await;
        self.outcome_of(b.grant.grant_id, Duration::from_secs(10))
            .await
    }

    /// Revokes grant `id` with `seq`, signed with `key`; the agent's outcome.
    pub async fn revoke(&mut self, key: &SigningKey, id: Uuid, seq: u64) -> Outcome {
        let body = RevokeBody {
            agent_id: self.agent,
            grant_id: id,
            seq,
            reason: "UserRequested".into(),
        };
        let signed = Signed::sign(&body, key).expect("sign");
        self.send(&ControllerMsg::Revoke(signed)).await;
        self.until(Duration::from_secs(10), |m| match m {
            AgentMsg::RevokeResult {
                grant_id, outcome, ..
            } if grant_id == id => Some(outcome),
            _ => None,
        })
        .await
    }
}
