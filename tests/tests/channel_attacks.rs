//! The agent against a hostile controller endpoint. The agent enrols with the real
//! controller; then the controller goes away and an impostor holding the controller's own TLS
//! certificate (the strongest position short of the grant-signing key) serves the agent
//! endpoint. Replayed, foreign-key, foreign-agent, tampered and expired grants are rejected
//! and audited, a redelivery is acknowledged without being applied twice, and a garbage frame
//! only closes the connection: the agent reconnects with its high-water mark intact.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jitgate_common::{Port, Protocol};
use jitgate_proto::message::{AgentMsg, ControllerMsg, Outcome};
use jitgate_proto::{GrantBody, Signed, read_frame, write_frame};
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::require_root;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

type Rd = ReadHalf<TlsStream<TcpStream>>;
type Wr = WriteHalf<TlsStream<TcpStream>>;

fn tls_config(state: &std::path::Path) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(state.join("tls/server.crt"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(state.join("tls/server.key")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(state.join("tls/ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap()
}

fn body(agent: Uuid, seq: u64, end_in_ms: i64) -> GrantBody {
    let now = (time_ms()) as i64;
    GrantBody {
        agent_id: agent,
        grant_id: Uuid::new_v4(),
        seq,
        request_id: format!("req-{seq}"),
        protocol: Protocol::Tcp,
        port: Port::new(22).unwrap(),
        source: "203.0.113.0/24".parse().unwrap(),
        start_unix_ms: now,
        end_unix_ms: now + end_in_ms,
        remaining_ms: end_in_ms.max(0) as u64,
        requester: "mallory".into(),
        justification: "attack".into(),
    }
}

fn time_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Accepts the agent's next connection: returns its Hello fields and the stream halves.
async fn accept(
    listener: &tokio::net::TcpListener,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> (Uuid, u64, Rd, Wr) {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(40), listener.accept())
        .await
        .expect("agent reconnects")
        .unwrap();
    let tls = acceptor.accept(tcp).await.expect("TLS with the agent");
    let (mut rd, mut wr) = tokio::io::split(tls);
    let hello: AgentMsg = read_frame(&mut rd).await.unwrap().expect("hello");
    let AgentMsg::Hello {
        agent_id,
        seq_high_water,
        ..
    } = hello
    else {
        panic!("expected Hello, got {hello:?}")
    };
    write_frame(
        &mut wr,
        &ControllerMsg::Welcome {
            agent_id,
            controller_unix_ms: time_ms() as i64,
        },
    )
    .await
    .unwrap();
    (agent_id, seq_high_water, rd, wr)
}

/// Sends a grant frame and returns the agent's outcome for it (skipping unrelated messages).
async fn grant(rd: &mut Rd, wr: &mut Wr, s: Signed<GrantBody>) -> Outcome {
    write_frame(wr, &ControllerMsg::Grant(s)).await.unwrap();
    loop {
        let m: AgentMsg = tokio::time::timeout(Duration::from_secs(10), read_frame(rd))
            .await
            .expect("an answer")
            .unwrap()
            .expect("open");
        if let AgentMsg::GrantResult { outcome, .. } = m {
            return outcome;
        }
    }
}

#[test]
fn hostile_controller_frames_are_rejected() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let mut ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    std::thread::sleep(Duration::from_millis(500));
    let key_pem = std::fs::read_to_string(ctl.state.join("keys/grant-signing.key")).unwrap();
    let real_key = SigningKey::from_pkcs8_pem(&key_pem).unwrap();
    let cfg = tls_config(&ctl.state);
    ctl.kill();

    let ws = Fleet::ns_path(&fleet.ws);
    let std_listener =
        jitgate_agent::netns::run_in(&ws, || std::net::TcpListener::bind(format!("{WS_V4}:8444")))
            .unwrap()
            .unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (me, hw0, mut rd, mut wr) = accept(&listener, &acceptor).await;
        let seq = hw0 + 10;

        // A valid grant is applied; the identical redelivery is acknowledged, not applied again.
        let good = Signed::sign(&body(me, seq, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, good.clone()).await, Outcome::Applied { .. }));
        assert_eq!(grant(&mut rd, &mut wr, good.clone()).await, Outcome::AlreadyApplied);
        // A new grant replayed with an old sequence number.
        let replay = Signed::sign(&body(me, seq - 1, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, replay).await, Outcome::Rejected { reason } if reason.contains("replay")));
        // Signed with another key.
        let other = SigningKey::from_bytes(&[9; 32]);
        let forged = Signed::sign(&body(me, seq + 1, 600_000), &other).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, forged).await, Outcome::Rejected { .. }));
        // For another agent.
        let foreign = Signed::sign(&body(Uuid::new_v4(), seq + 2, 600_000), &real_key).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, foreign).await, Outcome::Rejected { .. }));
        // One tampered byte.
        let mut tampered = Signed::sign(&body(me, seq + 3, 600_000), &real_key).unwrap();
        let n = tampered.body.len();
        tampered.body[n - 3] ^= 0x20;
        assert!(matches!(grant(&mut rd, &mut wr, tampered).await, Outcome::Rejected { .. }));
        // Already ended; and longer than the host's maximum.
        let ended = Signed::sign(&body(me, seq + 4, -1000), &real_key).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, ended).await, Outcome::Rejected { .. }));
        let too_long = Signed::sign(&body(me, seq + 5, 48 * 3600 * 1000), &real_key).unwrap();
        assert!(matches!(grant(&mut rd, &mut wr, too_long).await, Outcome::Rejected { .. }));

        // A garbage frame closes this connection only; the agent comes back with its mark.
        use tokio::io::AsyncWriteExt;
        wr.write_all(&[0, 0, 0, 8, 1, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff]).await.unwrap();
        let (again, hw1, _rd, _wr) = accept(&listener, &acceptor).await;
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
