//! Test peers for jitgate-notify, all on loopback: a test CA, a recording HTTPS receiver
//! (rustls + hyper), a resolver that answers what a test says, and the Python environment
//! for the SMTP server (aiosmtpd) and the JSON Schema validator.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use jitgate_notify::resolve::{BoxFuture, NameResolver};
use jitgate_notify::{DeliveryConfig, EgressPolicy, TlsRoots};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A certificate authority and one server certificate it signed, for `receiver.test`,
/// `localhost`, 127.0.0.1 and 127.0.0.2.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}

impl Pki {
    pub fn new(ca_name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["receiver.test".into(), "localhost".into()]).unwrap();
        for ip in ["127.0.0.1", "127.0.0.2"] {
            leaf.subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
        }
        leaf.distinguished_name
            .push(DnType::CommonName, "receiver.test");
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).unwrap();
        Pki {
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> TlsRoots {
        TlsRoots {
            system: false,
            extra: vec![self.ca_der.clone()],
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![self.cert_der.clone()], key)
        .unwrap();
        TlsAcceptor::from(Arc::new(cfg))
    }
}

/// A delivery configuration trusting `pki`'s CA only, allowing `allow` networks.
pub fn config(pki: &Pki, allow: &[&str], allow_http: bool, timeout: Duration) -> DeliveryConfig {
    DeliveryConfig {
        egress: EgressPolicy::new(allow).unwrap(),
        allow_http,
        timeout,
        roots: pki.roots(),
        smtp: None,
    }
}

/// A deliverer for receivers on 127.0.0.1: every name resolves there, and that one
/// address is allowed.
pub fn loopback_deliverer(pki: &Pki, timeout: Duration) -> jitgate_notify::Deliverer {
    jitgate_notify::Deliverer::with_resolver(
        config(pki, &["127.0.0.1/32"], false, timeout),
        ScriptedResolver::always(&["127.0.0.1"]),
    )
    .unwrap()
}

/// One request as the receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    /// The address the connection came in on (which listener was reached).
    pub local: SocketAddr,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When it arrived (ms since the epoch).
    pub at_ms: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// How the receiver answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    /// A status with one extra header (Retry-After, Location).
    WithHeader(u16, &'static str, String),
    /// Read the request, never answer.
    Hang,
    /// A status, one extra header and a body of the receiver's choosing (hostile text that
    /// must never be kept or shown).
    WithBody(u16, &'static str, String, String),
}

/// A recording HTTPS (or plain HTTP) receiver on one loopback address.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// HTTPS on `ip` (a fresh port).
    pub async fn https(pki: &Pki, ip: &str) -> Receiver {
        Self::start(Some(pki.acceptor()), ip).await
    }

    /// Plain HTTP on `ip`.
    pub async fn http(ip: &str) -> Receiver {
        Self::start(None, ip).await
    }

    /// HTTPS on `ip` at a given port (two receivers on one port, different addresses).
    pub async fn https_on(pki: &Pki, ip: &str, port: u16) -> Receiver {
        Self::start_on(Some(pki.acceptor()), ip, port).await
    }

    async fn start(tls: Option<TlsAcceptor>, ip: &str) -> Receiver {
        Self::start_on(tls, ip, 0).await
    }

    async fn start_on(tls: Option<TlsAcceptor>, ip: &str, port: u16) -> Receiver {
        let listener = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::Status(204)));
        let (g, a) = (got.clone(), answer.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (g, a, tls) = (g.clone(), a.clone(), tls.clone());
                tokio::spawn(async move {
                    let local = tcp.local_addr().unwrap();
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (g, a) = (g.clone(), a.clone());
                        async move { Ok::<_, Infallible>(handle(req, local, g, a).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = http.serve_connection(io, service).await;
                            }
                        }
                        None => {
                            let io = hyper_util::rt::TokioIo::new(tcp);
                            let _ = http.serve_connection(io, service).await;
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            got,
            answer,
            task,
        }
    }

    pub fn answer(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// `https://HOST:PORT/hook` for this receiver's port.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}/hook", self.addr.port())
    }
}

async fn handle(
    req: Request<Incoming>,
    local: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<Mutex<Answer>>,
) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    got.lock().unwrap().push(Received {
        local,
        method,
        path,
        headers,
        body,
        at_ms,
    });
    let a = answer.lock().unwrap().clone();
    let mut resp = Response::new(Full::new(Bytes::from_static(
        b"receiver body: must never be kept",
    )));
    match a {
        Answer::Status(s) => *resp.status_mut() = s.try_into().unwrap(),
        Answer::WithHeader(s, name, value) => {
            *resp.status_mut() = s.try_into().unwrap();
            resp.headers_mut().insert(name, value.parse().unwrap());
        }
        Answer::WithBody(s, name, value, body) => {
            *resp.status_mut() = s.try_into().unwrap();
            resp.headers_mut().insert(name, value.parse().unwrap());
            *resp.body_mut() = Full::new(Bytes::from(body));
        }
        Answer::Hang => std::future::pending::<()>().await,
    }
    resp
}

/// A resolver that gives the next of its queued answers on each call (the last one
/// forever after), and counts the calls.
pub struct ScriptedResolver {
    answers: Mutex<VecDeque<io::Result<Vec<IpAddr>>>>,
    pub calls: AtomicUsize,
}

impl ScriptedResolver {
    pub fn new(answers: Vec<io::Result<Vec<IpAddr>>>) -> Arc<ScriptedResolver> {
        Arc::new(ScriptedResolver {
            answers: Mutex::new(answers.into()),
            calls: AtomicUsize::new(0),
        })
    }
    pub fn always(ips: &[&str]) -> Arc<ScriptedResolver> {
        Self::new(vec![Ok(ips.iter().map(|i| i.parse().unwrap()).collect())])
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl NameResolver for ScriptedResolver {
    fn lookup(&self, _host: &str) -> BoxFuture<'_, io::Result<Vec<IpAddr>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut q = self.answers.lock().unwrap();
        let next = if q.len() > 1 {
            q.pop_front().unwrap()
        } else {
            match q.front().unwrap() {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            }
        };
        Box::pin(async move { next })
    }
}

/// A port on 127.0.0.1 that nothing listens on (connections are refused).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// A listener that accepts connections and never says a word (not even TLS).
pub async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// The Python interpreter of the tests' own virtual environment (target/tmp/notify-py),
/// created on first use with the pinned packages in tests/python/. A lock file serialises
/// test binaries that need it at the same time.
pub fn python() -> PathBuf {
    static DONE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        // Integration tests have a target tmp directory; other users (the controller's
        // benchmark, which needs no Python) fall back to the system's.
        let tmp = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let tmp = tmp.as_path();
        std::fs::create_dir_all(tmp).unwrap();
        let lock = std::fs::File::create(tmp.join("notify-py.lock")).unwrap();
        lock.lock().unwrap();
        let venv = tmp.join("notify-py");
        let py = venv.join("bin/python");
        let here = python_dir();
        let stamp_want = format!(
            "{}\n{}",
            std::fs::read_to_string(here.join("requirements.txt")).unwrap(),
            std::fs::read_to_string(here.join("requirements-nodeps.txt")).unwrap()
        );
        let stamp = venv.join("jitgate-stamp");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(stamp_want.as_str()) {
            let _ = std::fs::remove_dir_all(&venv);
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
            let pip = |args: &[&str], req: &str| {
                run(Command::new(&py)
                    .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
                    .args(args)
                    .arg("-r")
                    .arg(here.join(req)));
            };
            pip(&[], "requirements.txt");
            pip(&["--no-deps"], "requirements-nodeps.txt");
            std::fs::write(&stamp, stamp_want).unwrap();
        }
        lock.unlock().unwrap();
        py
    })
    .clone()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// notify/tests/python, also from the tests of other crates that include this module
/// (every crate of the workspace is a directory of its root).
fn python_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .parent()
        .unwrap_or(crate_dir)
        .join("notify/tests/python")
}

/// The path of a file in tests/python.
pub fn python_script(name: &str) -> PathBuf {
    python_dir().join(name)
}

/// One aiosmtpd process; killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    messages: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Accepts `jitgate` / `s3cret pass`; answers each message with `reply` (e.g. `250 OK`).
    pub async fn start(pki: &Pki, mode: jitgate_notify::SmtpSecurity, reply: &str) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        let py = tokio::task::spawn_blocking(python).await.unwrap();
        let mut child = tokio::process::Command::new(py)
            .arg(python_script("smtp_server.py"))
            .args([
                "--mode",
                mode.as_str(),
                "--user",
                "jitgate",
                "--password",
                "s3cret pass",
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--reply", reply])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("SMTP server did not start")
            .unwrap()
            .unwrap();
        let port = serde_json::from_str::<serde_json::Value>(&first).unwrap()["ready"]
            .as_u64()
            .unwrap() as u16;
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(serde_json::from_str(&l).unwrap()).is_err() {
                    return;
                }
            }
        });
        SmtpServer {
            port,
            messages,
            _child: child,
            _dir: dir,
        }
    }

    /// The next message received (as smtp_server.py prints it), within 10 s.
    pub async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(10), self.messages.recv())
            .await
            .expect("no message arrived")
            .unwrap()
    }
}
