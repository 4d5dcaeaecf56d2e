//! Shared by the integration tests: a relying party configured for a provider, the way the
//! controller will configure it.
#![allow(dead_code)]

pub mod hostile;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitgate_oidc::{
    CallbackParams, LoginRequest, LoginStart, LoopbackRedirect, MemoryReplayGuard, OidcConfig,
    Options, PendingLogin, ProviderStatus, RelyingParty, ReturnPath, SealKey, Sealer, SignIn,
};
use jitgate_oidc_testprovider::{
    CLI_CLIENT_ID, Choice, Person, Setup, TestCa, TestProvider, WEB_CLIENT_ID,
};

/// Where the provider sends the portal's browser back (nothing listens there: the person
/// stops at the redirect, as a browser would hand it to the controller).
pub const WEB_REDIRECT: &str = "https://127.0.0.1:8443/auth/callback";

/// `[oidc]` for `issuer`, as an operator would write it.
pub fn config(issuer: &str, secret_file: Option<&Path>, ca_file: &Path) -> OidcConfig {
    let secret = match secret_file {
        Some(p) => format!("client_secret_file = \"{}\"", p.display()),
        None => String::new(),
    };
    let text = format!(
        r#"
[oidc]
issuer = "{issuer}"
client_id = "{WEB_CLIENT_ID}"
{secret}
cli_client_id = "{CLI_CLIENT_ID}"
scopes = ["openid", "profile", "email", "groups", "offline_access"]
groups_claim = "groups"
name_claim = "preferred_username"
session_lifetime = "PT8H"
ca_file = "{ca}"
# oidc-provider (like Google) grants offline_access only with an explicit consent prompt.
auth_params = {{ prompt = "consent" }}
[[oidc.roles]]
group = "jit-admins"
role = "admin"
scope = "*"
[[oidc.roles]]
group = "prod-ops"
role = "requester"
scope = "rg:prod"
"#,
        ca = ca_file.display()
    );
    OidcConfig::from_toml(&text).unwrap()
}

pub fn options() -> Options {
    Options {
        portal_redirect: Some(WEB_REDIRECT.into()),
        ..Options::default()
    }
}

/// A provider, a relying party for it, the controller's sealing key and replay guard.
pub struct Rig {
    pub ca: Arc<TestCa>,
    pub op: TestProvider,
    pub rp: RelyingParty,
    pub sealer: Sealer,
    pub guard: MemoryReplayGuard,
}

impl Rig {
    pub async fn start() -> Rig {
        Rig::start_with(Setup::default(), options()).await
    }

    pub async fn start_with(setup: Setup, options: Options) -> Rig {
        let ca = Arc::new(TestCa::new().unwrap());
        let setup = Setup {
            web_redirect: WEB_REDIRECT.into(),
            ..setup
        };
        let op = TestProvider::start(ca.clone(), &setup).await.unwrap();
        let cfg = config(op.issuer(), Some(op.web_client_secret_file()), ca.ca_file());
        let rp = RelyingParty::start(&cfg, options).await.unwrap();
        assert!(
            matches!(rp.status(), ProviderStatus::Ready { .. }),
            "{:?}",
            rp.status()
        );
        Rig {
            ca,
            op,
            rp,
            sealer: Sealer::new(&SealKey::generate()),
            guard: MemoryReplayGuard::new(),
        }
    }

    pub fn person(&self, login: &str) -> Person {
        let user = self
            .op_user(login)
            .unwrap_or_else(|| panic!("no test user {login}"));
        Person::new(&self.ca, &user).unwrap()
    }

    pub fn op_user(&self, login: &str) -> Option<jitgate_oidc_testprovider::User> {
        Setup::default().user(login)
    }

    /// A portal sign-in started (return to "/").
    pub async fn start_portal(&self) -> LoginStart {
        self.rp
            .start_login(LoginRequest::Portal {
                return_to: ReturnPath::parse("/").unwrap(),
            })
            .await
            .unwrap()
    }

    /// A whole portal sign-in: start, the person at the provider, the callback with the
    /// sealed cookie, finish. Returns the sign-in, the callback query and the cookie (for
    /// replays).
    pub async fn portal_sign_in(&self, person: &Person) -> (SignIn, String, String) {
        let start = self
            .rp
            .start_login(LoginRequest::Portal {
                return_to: ReturnPath::parse("/vms/web-1").unwrap(),
            })
            .await
            .unwrap();
        let cookie = start.pending.seal(&self.sealer);
        let back = person
            .authorize(&start.authorize_url, WEB_REDIRECT, Choice::Allow)
            .await
            .unwrap();
        let query = query_of(&back);
        let pending = PendingLogin::open(&self.sealer, &cookie).unwrap();
        assert_eq!(pending.return_to().unwrap().as_str(), "/vms/web-1");
        let checked = pending
            .check_callback(&CallbackParams::from_query(&query))
            .unwrap();
        let signed = self.rp.finish_login(checked, &self.guard).await.unwrap();
        (signed, query, cookie)
    }
}

/// A loopback port nobody listens on (for a provider that is not up yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn query_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .query()
        .unwrap_or_default()
        .to_string()
}

pub fn loopback(port: u16) -> LoopbackRedirect {
    LoopbackRedirect::parse(&format!("http://127.0.0.1:{port}/callback")).unwrap()
}

/// Waits (bounded, generous for a busy machine) until `f` holds.
pub async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The CLI's side of `jit login` with a browser: a loopback listener (RFC 8252) that takes
/// one redirect, answers the browser, and hands back the callback's query string.
pub struct LoopbackListener {
    pub redirect: LoopbackRedirect,
    query: tokio::sync::oneshot::Receiver<String>,
}

impl LoopbackListener {
    pub async fn bind() -> LoopbackListener {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(sock);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            // "GET /callback?code=...&state=... HTTP/1.1"
            let target = line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).await.unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let body = "Signed in to jitgate; you can close this window.";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            r.get_mut().write_all(resp.as_bytes()).await.unwrap();
            let query = target
                .split_once('?')
                .map(|(_, q)| q.to_string())
                .unwrap_or_default();
            let _ = tx.send(query);
        });
        LoopbackListener {
            redirect: loopback(port),
            query: rx,
        }
    }

    pub async fn query(self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.query)
            .await
            .unwrap()
            .unwrap()
    }
}

/// `jit login` with a browser, end to end: the controller starts the login for the CLI's
/// loopback redirect and hands the CLI a sealed handle and the state; the person signs in;
/// the browser lands on the CLI's listener; the CLI checks the state and hands the callback
/// and the handle to the controller, which finishes.
pub async fn cli_sign_in(
    rp: &RelyingParty,
    sealer: &Sealer,
    guard: &MemoryReplayGuard,
    person: &Person,
) -> SignIn {
    let listener = LoopbackListener::bind().await;
    let start = rp
        .start_login(LoginRequest::Cli {
            redirect: listener.redirect.clone(),
        })
        .await
        .unwrap();
    let q: std::collections::HashMap<_, _> = url::Url::parse(&start.authorize_url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(q["client_id"], CLI_CLIENT_ID, "the CLI's own public client");
    assert_eq!(q["redirect_uri"], listener.redirect.as_str());
    assert_eq!(q["code_challenge_method"], "S256");
    let handle = start.pending.seal(sealer);
    let state = start.pending.state().to_string();
    let back = person
        .authorize(
            &start.authorize_url,
            listener.redirect.as_str(),
            Choice::Allow,
        )
        .await
        .unwrap();
    let (status, _) = person.visit(&back).await.unwrap();
    assert_eq!(status, 200);
    let query = listener.query().await;
    let cb = CallbackParams::from_query(&query);
    assert_eq!(
        cb.state.as_deref(),
        Some(state.as_str()),
        "the CLI checks the state"
    );
    let pending = PendingLogin::open(sealer, &handle).unwrap();
    let checked = pending.check_callback(&cb).unwrap();
    rp.finish_login(checked, guard).await.unwrap()
}

/// The provider said no, with this OAuth error code.
pub fn assert_refused(e: &jitgate_oidc::Error, code: &str) {
    match e {
        jitgate_oidc::Error::ProviderRefused { error, .. } if error == code => {}
        other => panic!("expected the provider to refuse with {code}: {other:?}"),
    }
}
