//! A test agent speaking the real protocol: enrolment over real HTTPS, the channel over real
//! mutual TLS on loopback (jitgate-proto, tokio-rustls, rcgen).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use jitgate_proto::{AgentMsg, ControllerMsg, PolicyBody, read_frame};
use reqwest::{Method, StatusCode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use uuid::Uuid;

use super::Harness;

pub const ENROLL: &str = "/api/v1/agents/enroll";

/// An enrolled test agent: its key, certificate and what enrolment returned.
pub struct Creds {
    pub id: Uuid,
    pub key: rcgen::KeyPair,
    pub cert_pem: String,
    pub ca_pem: String,
    pub signing: VerifyingKey,
    pub endpoint: String,
}

pub fn csr(key: &rcgen::KeyPair) -> String {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

pub async fn enroll_raw(h: &Harness, token: &str, csr_pem: &str) -> (StatusCode, Value) {
    h.call(
        Method::POST,
        ENROLL,
        None,
        Some(json!({"token": token, "csrPem": csr_pem})),
    )
    .await
}

pub async fn enroll(h: &Harness, vm: &str) -> Creds {
    let (token, _) = h
        .app()
        .fleet
        .create_enroll_token(&jitgate_controller::authz::Caller::local(), vm)
        .await
        .expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let (st, v) = enroll_raw(h, &token, &csr(&key)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["vm"], vm);
    Creds {
        id: v["agentId"].as_str().expect("id").parse().expect("uuid"),
        key,
        cert_pem: v["certificatePem"].as_str().expect("cert").into(),
        ca_pem: v["caPem"].as_str().expect("ca").into(),
        signing: VerifyingKey::from_public_key_pem(v["grantSigningKeyPem"].as_str().expect("pub"))
            .expect("SPKI PEM"),
        endpoint: v["agentEndpoint"].as_str().expect("endpoint").into(),
    }
}

pub async fn tls(c: &Creds) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(c.ca_pem.as_bytes()) {
        roots.add(cert.expect("ca")).expect("root");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = PrivatePkcs8KeyDer::from(c.key.serialize_der());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key.into())
    .expect("client cert");
    let tcp = TcpStream::connect(&c.endpoint).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS")
}

pub struct Agent {
    pub rd: ReadHalf<TlsStream<TcpStream>>,
    pub wr: WriteHalf<TlsStream<TcpStream>>,
}

impl Agent {
    pub async fn connect(c: &Creds) -> Agent {
        let (rd, wr) = tokio::io::split(tls(c).await);
        Agent { rd, wr }
    }

    pub async fn send(&mut self, m: &AgentMsg) {
        jitgate_proto::write_frame(&mut self.wr, m)
            .await
            .expect("send");
    }

    pub async fn hello(&mut self, c: &Creds, high: u64, audit: u64) {
        self.hello_at(c, high, audit, 1).await;
    }

    /// Hello as an agent of protocol `level`: 1 sends the old `Hello`, later levels `HelloV2`.
    pub async fn hello_at(&mut self, c: &Creds, high: u64, audit: u64, level: u32) {
        let m = if level <= 1 {
            AgentMsg::Hello {
                agent_id: c.id,
                version: "test".into(),
                seq_high_water: high,
                audit_acked: audit,
            }
        } else {
            AgentMsg::HelloV2 {
                agent_id: c.id,
                version: "test".into(),
                seq_high_water: high,
                audit_acked: audit,
                protocol: level,
            }
        };
        self.send(&m).await;
    }

    /// The next message other than Ping, within `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<ControllerMsg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = tokio::time::timeout_at(deadline, read_frame::<_, ControllerMsg>(&mut self.rd))
                .await
                .ok()?;
            match r {
                Ok(Some(ControllerMsg::Ping { nonce })) => {
                    self.send(&AgentMsg::Pong { nonce }).await;
                }
                Ok(Some(m)) => return Some(m),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub async fn recv(&mut self) -> ControllerMsg {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("a message from the controller")
    }

    /// Welcome, Policy, then grants/revokes until Active. Returns (policy, items, active).
    pub async fn handshake(
        &mut self,
        c: &Creds,
        high: u64,
    ) -> (PolicyBody, Vec<ControllerMsg>, (Vec<Uuid>, u64)) {
        self.handshake_at(c, high, 1).await
    }

    /// [`Agent::handshake`] as an agent of protocol `level`.
    pub async fn handshake_at(
        &mut self,
        c: &Creds,
        high: u64,
        level: u32,
    ) -> (PolicyBody, Vec<ControllerMsg>, (Vec<Uuid>, u64)) {
        self.hello_at(c, high, 0, level).await;
        match self.recv().await {
            ControllerMsg::Welcome { agent_id, .. } => assert_eq!(agent_id, c.id),
            m => panic!("expected Welcome, got {m:?}"),
        }
        // Level 3 and later: the cluster's endpoints and the ping interval come next.
        if level >= jitgate_proto::LEVEL_SETTINGS {
            match self.recv().await {
                ControllerMsg::Settings { .. } => {}
                m => panic!("expected Settings, got {m:?}"),
            }
        }
        // Level 7 and later: the controller's own level (never sent to older agents: any
        // other message here fails the handshake below).
        if level >= jitgate_proto::LEVEL_HOOK_REPORTS {
            match self.recv().await {
                ControllerMsg::Level { protocol } => {
                    assert_eq!(protocol, jitgate_proto::PROTOCOL_LEVEL)
                }
                m => panic!("expected Level, got {m:?}"),
            }
        }
        let policy = match self.recv().await {
            ControllerMsg::Policy(p) => p.verify(&c.signing, c.id).expect("signed policy"),
            m => panic!("expected Policy, got {m:?}"),
        };
        let mut items = Vec::new();
        loop {
            match self.recv().await {
                ControllerMsg::Active {
                    grant_ids,
                    up_to_seq,
                } => return (policy, items, (grant_ids, up_to_seq)),
                m @ (ControllerMsg::Grant(_)
                | ControllerMsg::Revoke(_)
                | ControllerMsg::ScheduledGrant(_)
                | ControllerMsg::LimitedGrant(_)) => items.push(m),
                m => panic!("unexpected {m:?}"),
            }
        }
    }

    /// True if the controller closes the connection within `within`.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, read_frame::<_, ControllerMsg>(&mut self.rd))
                .await
            {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) | Ok(Err(_)) => return true,
            }
        }
    }
}
