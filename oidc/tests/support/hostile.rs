//! A hostile OpenID issuer of our own, over TLS on loopback: discovery, a key set, an
//! authorization endpoint and a token endpoint that check what a real one checks (PKCE,
//! client secret, redirect URI, one use per code) and then hand out a crafted ID token.
//! A certified provider never forges; this one forges on request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use jitgate_oidc_testprovider::TestCa;

pub const CLIENT_ID: &str = "jitgate-portal";
pub const CLIENT_SECRET: &str = "hostile-test-secret";
pub const KID: &str = "k1";

/// What the token endpoint does to the ID token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forgery {
    /// An honest token: the control case.
    None,
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Stale,
    /// Signed by a key that is not the published one, under the published `kid`.
    BadSignature,
    AlgNone,
    /// HS256 with the published public key as the HMAC secret.
    Hs256WithPublicKey,
    /// Signed by a key with a `kid` the key set does not have.
    UnknownKid,
    /// For another client that also lists us: aud [us, other], azp other.
    OtherClient,
    /// Several audiences and no `azp`.
    SeveralAudiencesNoAzp,
    WrongNonce,
    MissingNonce,
}

/// What discovery answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    Honest,
    /// The document names another issuer (a mix-up or a misconfigured issuer).
    OtherIssuer,
    /// 404: no OpenID provider at this issuer.
    Missing,
    /// The token endpoint is plain http.
    PlainHttpTokenEndpoint,
}

struct Code {
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
}

pub struct Shared {
    issuer: Mutex<String>,
    pub forgery: Mutex<Forgery>,
    pub discovery: Mutex<Discovery>,
    codes: Mutex<HashMap<String, Code>>,
    pub jwks_fetches: AtomicU32,
    pub token_requests: AtomicU32,
    key: EcdsaKeyPair,
    other_key: EcdsaKeyPair,
    rng: SystemRandom,
}

pub struct Hostile {
    pub issuer: String,
    pub ca: Arc<TestCa>,
    pub shared: Arc<Shared>,
    pub secret_file: PathBuf,
    pub browser: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ec_key(rng: &SystemRandom) -> EcdsaKeyPair {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng).unwrap()
}

impl Shared {
    fn public_jwk(&self) -> Value {
        let p = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65]),
            "kid": KID, "use": "sig", "alg": "ES256"})
    }

    fn sign(&self, header: &Value, claims: &Value, key: &EcdsaKeyPair) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn id_token(&self, nonce: Option<String>) -> String {
        let issuer = self.issuer.lock().unwrap().clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut c = json!({
            "iss": issuer, "sub": "eve", "aud": CLIENT_ID, "exp": now + 300, "iat": now,
            "preferred_username": "eve", "groups": ["jit-admins"],
        });
        if let Some(n) = nonce {
            c["nonce"] = json!(n);
        }
        let es256 = json!({"alg": "ES256", "kid": KID, "typ": "JWT"});
        let forgery = *self.forgery.lock().unwrap();
        match forgery {
            Forgery::None => {}
            Forgery::WrongIssuer => c["iss"] = json!("https://evil.example"),
            Forgery::WrongAudience => c["aud"] = json!("someone-else"),
            Forgery::Expired => {
                c["exp"] = json!(now - 600);
                c["iat"] = json!(now - 900);
            }
            Forgery::NotYetValid => c["nbf"] = json!(now + 600),
            Forgery::IssuedInFuture => {
                c["iat"] = json!(now + 600);
                c["exp"] = json!(now + 900);
            }
            Forgery::Stale => c["iat"] = json!(now - 3600),
            Forgery::OtherClient => {
                c["aud"] = json!([CLIENT_ID, "other-client"]);
                c["azp"] = json!("other-client");
            }
            Forgery::SeveralAudiencesNoAzp => c["aud"] = json!([CLIENT_ID, "other-client"]),
            Forgery::WrongNonce => c["nonce"] = json!("not-the-nonce-that-was-sent"),
            Forgery::MissingNonce => {
                c.as_object_mut().unwrap().remove("nonce");
            }
            Forgery::BadSignature => return self.sign(&es256, &c, &self.other_key),
            Forgery::UnknownKid => {
                return self.sign(
                    &json!({"alg": "ES256", "kid": "k9", "typ": "JWT"}),
                    &c,
                    &self.other_key,
                );
            }
            Forgery::AlgNone => {
                return format!(
                    "{}.{}.",
                    B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
                    B64.encode(c.to_string())
                );
            }
            Forgery::Hs256WithPublicKey => {
                let input = format!(
                    "{}.{}",
                    B64.encode(json!({"alg": "HS256", "kid": KID, "typ": "JWT"}).to_string()),
                    B64.encode(c.to_string())
                );
                let secret = self.public_jwk().to_string();
                let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                let tag = ring::hmac::sign(&key, input.as_bytes());
                return format!("{input}.{}", B64.encode(tag.as_ref()));
            }
        }
        self.sign(&es256, &c, &self.key)
    }
}

async fn discovery(State(s): State<Arc<Shared>>) -> Response {
    let issuer = s.issuer.lock().unwrap().clone();
    let mode = *s.discovery.lock().unwrap();
    if mode == Discovery::Missing {
        return (StatusCode::NOT_FOUND, "no OpenID provider here").into_response();
    }
    let token = if mode == Discovery::PlainHttpTokenEndpoint {
        issuer.replace("https://", "http://") + "/token"
    } else {
        format!("{issuer}/token")
    };
    let iss = if mode == Discovery::OtherIssuer {
        "https://login.other.example".to_string()
    } else {
        issuer.clone()
    };
    Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token,
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        // Advertised, never trusted: the relying party has its own list.
        "id_token_signing_alg_values_supported": ["none", "HS256", "ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<Shared>>) -> Json<Value> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({"keys": [s.public_jwk()]}))
}

async fn authorize(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let ok = q.get("response_type").map(String::as_str) == Some("code")
        && q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
        && q.get("code_challenge_method").map(String::as_str) == Some("S256");
    let (Some(redirect), Some(state), Some(challenge), true) = (
        q.get("redirect_uri"),
        q.get("state"),
        q.get("code_challenge"),
        ok,
    ) else {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    };
    let code = format!("code-{}", s.codes.lock().unwrap().len() + 1);
    s.codes.lock().unwrap().insert(
        code.clone(),
        Code {
            nonce: q.get("nonce").cloned(),
            challenge: challenge.clone(),
            redirect_uri: redirect.clone(),
        },
    );
    let mut to = url::Url::parse(redirect).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", state);
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

fn token_error(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response()
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(basic.as_str())
    {
        return token_error("invalid_client");
    }
    if f.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return token_error("unsupported_grant_type");
    }
    let Some(code) = f
        .get("code")
        .and_then(|c| s.codes.lock().unwrap().remove(c))
    else {
        return token_error("invalid_grant");
    };
    let verifier = f.get("code_verifier").cloned().unwrap_or_default();
    if B64.encode(Sha256::digest(verifier.as_bytes())) != code.challenge
        || f.get("redirect_uri") != Some(&code.redirect_uri)
    {
        return token_error("invalid_grant");
    }
    Json(json!({
        "access_token": "hostile-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "id_token": s.id_token(code.nonce),
    }))
    .into_response()
}

impl Hostile {
    pub async fn start() -> Hostile {
        let ca = Arc::new(TestCa::new().unwrap());
        let cert = ca.server_cert("hostile").unwrap();
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::pem::PemObject::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
        let key =
            <rustls_pki_types::PrivateKeyDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
                cert.key_pem.as_bytes(),
            )
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let rng = SystemRandom::new();
        let shared = Arc::new(Shared {
            issuer: Mutex::new(issuer.clone()),
            forgery: Mutex::new(Forgery::None),
            discovery: Mutex::new(Discovery::Honest),
            codes: Mutex::new(HashMap::new()),
            jwks_fetches: AtomicU32::new(0),
            token_requests: AtomicU32::new(0),
            key: ec_key(&rng),
            other_key: ec_key(&rng),
            rng,
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let secret_file = ca.dir().join("client-secret");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret_file)
                .unwrap();
            writeln!(f, "{CLIENT_SECRET}").unwrap();
        }
        let pem = std::fs::read(ca.ca_file()).unwrap();
        let browser = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Hostile {
            issuer,
            ca,
            shared,
            secret_file,
            browser,
            task,
        }
    }

    pub fn forge(&self, f: Forgery) {
        *self.shared.forgery.lock().unwrap() = f;
    }

    pub fn discover_as(&self, d: Discovery) {
        *self.shared.discovery.lock().unwrap() = d;
    }

    pub fn jwks_fetches(&self) -> u32 {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// The browser at the authorization endpoint: where it is sent back to.
    pub async fn authorize(&self, url: &str) -> String {
        let resp = self.browser.get(url).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::FOUND,
            "{}",
            resp.text().await.unwrap()
        );
        resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_string()
    }
}
