//! People sign in with OpenID Connect through the controller (docs/identity.md): against a
//! real, certified provider (oidc-provider on Node.js over TLS; the npm package is installed
//! by the harness) and a hostile issuer of our own that forges ID tokens, on SQLite and on
//! PostgreSQL (JIT_TEST_BACKEND, like the other controller suites).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Harness;
use jitgate_api::{Role, Scope};
use jitgate_oidc::OidcConfig;
use jitgate_oidc_testprovider::{Choice, Person, Setup, TestCa, TestProvider, User};
use reqwest::{Method, StatusCode};
use rp_support::hostile::{Forgery, Hostile};
use rp_support::{LoopbackListener, free_port, query_of};
use serde_json::{Value, json};
use signin::{activity, oidc_config};

/// A provider and a controller signing people in with it.
struct Rig {
    ca: Arc<TestCa>,
    op: TestProvider,
    h: Harness,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(None, None).await
    }

    /// With `token_roles`, on `database` (default: the run's backend).
    async fn start_with(token_roles: Option<Vec<Role>>, database: Option<String>) -> Rig {
        let ca = Arc::new(TestCa::new().unwrap());
        let op = TestProvider::start(ca.clone(), &Setup::default())
            .await
            .unwrap();
        let oidc = OidcConfig {
            token_roles,
            ..oidc_config(op.issuer(), ca.ca_file())
        };
        let h = Harness::with_config(|c| {
            c.oidc = Some(oidc);
            c.database_url = database;
        })
        .await;
        Rig { ca, op, h }
    }

    fn person(&self, login: &str) -> Person {
        Person::new(&self.ca, &Setup::default().user(login).unwrap()).unwrap()
    }

    fn user(&self, login: &str) -> User {
        self.person(login).user
    }

    /// `jit login --device`: start, the person approves on the provider's device page, the
    /// CLI polls (a long poll) until the session arrives.
    async fn device_sign_in(&self, login: &str) -> Value {
        let (s, start) = self
            .h
            .call(Method::POST, "/api/v1/auth/device", None, None)
            .await;
        assert_eq!(s, StatusCode::OK, "{start}");
        assert!(
            start["verificationUri"]
                .as_str()
                .unwrap()
                .starts_with(self.op.issuer())
        );
        self.person(login)
            .device(
                start["verificationUri"].as_str().unwrap(),
                start["userCode"].as_str().unwrap(),
                Choice::Allow,
            )
            .await
            .unwrap();
        let t0 = Instant::now();
        loop {
            let (s, v) = post(
                &self.h,
                "/api/v1/auth/device/poll",
                json!({"handle": start["handle"]}),
            )
            .await;
            match s {
                StatusCode::OK => return v,
                StatusCode::ACCEPTED => assert!(
                    t0.elapsed() < Duration::from_secs(90),
                    "approved, still pending"
                ),
                _ => panic!("poll: {s} {v}"),
            }
        }
    }

    /// `jit login` with a browser: the controller starts the flow for the CLI's loopback
    /// listener, the person signs in, the browser lands on the listener, the CLI hands the
    /// callback to the controller. Returns the callback body and the controller's answer.
    async fn loopback_sign_in(&self, login: &str) -> (Value, StatusCode, Value) {
        let listener = LoopbackListener::bind().await;
        let (s, start) = post(
            &self.h,
            "/api/v1/auth/login",
            json!({"redirectUri": listener.redirect.as_str()}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{start}");
        let person = self.person(login);
        let back = person
            .authorize(
                start["authorizeUrl"].as_str().unwrap(),
                listener.redirect.as_str(),
                Choice::Allow,
            )
            .await
            .unwrap();
        let (status, _) = person.visit(&back).await.unwrap();
        assert_eq!(status, 200);
        let q = jitgate_oidc::CallbackParams::from_query(&listener.query().await);
        assert_eq!(
            q.state.as_deref(),
            start["state"].as_str(),
            "the CLI checks the state"
        );
        let body = json!({"handle": start["handle"], "code": q.code, "state": q.state,
            "iss": q.iss});
        let (s, v) = post(&self.h, "/api/v1/auth/callback", body.clone()).await;
        (body, s, v)
    }

    async fn whoami(&self, credential: &str) -> (StatusCode, Value) {
        self.h.get("/api/v1/auth/whoami", credential).await
    }
}

/// An unauthenticated POST of the sign-in API.
async fn post(h: &Harness, path: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::POST, path, None, Some(body)).await
}

fn credential(session: &Value) -> String {
    let c = session["credential"].as_str().unwrap().to_string();
    assert!(c.starts_with("jitsess_"), "{session}");
    c
}

fn grants(whoami: &Value) -> Vec<String> {
    let mut g: Vec<String> = whoami["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{} {}",
                g["role"].as_str().unwrap(),
                g["scope"].as_str().unwrap()
            )
        })
        .collect();
    g.sort();
    g
}

#[tokio::test]
async fn device_flow_end_to_end_whoami_and_logout() {
    let rig = Rig::start().await;
    rig.h.fixture().await;
    let session = rig.device_sign_in("alice").await;
    let cred = credential(&session);
    let principal = format!("oidc:{}#sub-alice", rig.op.issuer());

    // The union of every matching row; the principal is the issuer and subject.
    let (s, me) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["kind"], "session");
    assert_eq!(me["principal"], principal.as_str());
    assert_eq!(me["displayName"], "alice");
    assert_eq!(me["email"], "alice@example.net");
    assert_eq!(me["groups"]["groups"], json!(["jit-admins", "prod-ops"]));
    assert_eq!(
        grants(&me),
        ["admin *", "reader rg:dev", "requester rg:prod"]
    );
    assert!(me["sessionEndsUtc"].as_str().is_some());
    assert_eq!(me["callerAddress"], "127.0.0.1");
    assert!(me.get("noRole").is_none());
    assert_eq!(session["whoami"], me, "the sign-in answers the same whoami");

    // The session credential is a bearer for the whole API.
    let (s, vms) = rig.h.get("/api/v1/virtualMachines", &cred).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(vms["value"].as_array().unwrap().len(), 3);

    // Sign-in and sign-out name the person.
    let signed_in = activity(&rig.h, "Sign In").await;
    assert_eq!(signed_in.len(), 1);
    assert_eq!(signed_in[0].0, format!("alice ({principal})"));
    assert_eq!(signed_in[0].1["displayName"], "alice");
    let (s, _) = rig
        .h
        .call(Method::POST, "/api/v1/auth/logout", Some(&cred), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let out = activity(&rig.h, "Sign Out").await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, format!("alice ({principal})"));
    assert_eq!(out[0].1["reason"], "signed_out");
    // API tokens are no sessions.
    let (s, v) = rig
        .h
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            Some(&rig.h.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Only the credential's hash is stored.
    let hashes: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(rig.h.app().db.pool())
        .await
        .unwrap();
    assert_eq!(hashes, [jitgate_controller::ids::hash_token(&cred)]);
}

#[tokio::test]
async fn loopback_code_flow_narrows_scopes_and_refuses_replays_and_wrong_state() {
    let rig = Rig::start().await;
    rig.h.fixture().await;
    let (body, s, session) = rig.loopback_sign_in("bob").await;
    assert_eq!(s, StatusCode::OK, "{session}");
    let cred = credential(&session);
    let me = &session["whoami"];
    // bob is in prod-ops only: requester on prod, reader on dev, nothing else.
    assert_eq!(grants(me), ["reader rg:dev", "requester rg:prod"]);
    let (s, vms) = rig.h.get("/api/v1/virtualMachines", &cred).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(vms["value"].as_array().unwrap().len(), 3);
    let (s, v) = rig.h.get("/api/v1/activityLog/verify", &cred).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not reader on *: {v}");
    for group in ["prod", "dev"] {
        rig.h
            .put_rg_policy(
                group,
                json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
                    "maxRequestAccessDuration": "PT3H"}]),
            )
            .await;
    }
    let port = json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7",
        "endTimeUtc": jitgate_api::time::format(jitgate_api::time::now_ms() + 3_600_000)});
    let (s, r) = rig
        .h
        .initiate(&cred, common::one_port("web1", port.clone()))
        .await;
    assert_eq!(s, StatusCode::OK, "requester on prod: {r}");
    assert_eq!(r["requestor"], "bob");
    let (s, r) = rig.h.initiate(&cred, common::one_port("db1", port)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only reader on dev: {r}");

    // The same callback again: refused by the controller before the provider is asked.
    let (s, v) = post(&rig.h, "/api/v1/auth/callback", body.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "SignInRefused");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("accepted once"),
        "{v}"
    );
    // A callback whose state is not the one this sign-in started.
    let mut wrong = body.clone();
    wrong["state"] = json!("not-the-state");
    let (s, v) = post(&rig.h, "/api/v1/auth/callback", wrong).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("state"),
        "{v}"
    );
    // A handle not sealed by this controller.
    let mut forged = body;
    forged["handle"] = json!("AAAA");
    let (s, v) = post(&rig.h, "/api/v1/auth/callback", forged).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // A redirect that is not loopback is refused at the start.
    let (s, v) = post(
        &rig.h,
        "/api/v1/auth/login",
        json!({"redirectUri": "https://evil.example/callback"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Exactly one session came out of all this.
    let (s, list) = rig.h.get("/api/v1/sessions", &rig.h.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["value"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn a_person_in_no_group_signs_in_and_sees_nothing_and_token_roles_apply() {
    let rig = Rig::start_with(Some(vec![Role::Requester]), None).await;
    rig.h.fixture().await;
    let session = rig.device_sign_in("carol").await;
    let cred = credential(&session);
    let me = &session["whoami"];
    assert_eq!(grants(me), Vec::<String>::new());
    assert_eq!(
        me["noRole"],
        "you are in no group, so you have no role; ask for one of: jit-admins, prod-ops"
    );
    let (s, vms) = rig.h.get("/api/v1/virtualMachines", &cred).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(vms["value"], json!([]));
    let (s, v) = rig.h.get("/api/v1/me", &cred).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    // With SSO on, tokens carry only the roles token_roles allows.
    let e = rig
        .h
        .app()
        .tokens
        .create(
            &jitgate_controller::authz::Caller::local(),
            "pipeline",
            Role::Admin,
            &Scope::All,
            None,
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&jitgate_api::ErrorCode::InvalidRole), "{e}");
    assert!(e.to_string().contains("token_roles"), "{e}");
    rig.h.token("pipeline", Role::Requester, "rg:prod").await;
}

#[tokio::test]
async fn refresh_rereads_groups_a_failed_refresh_ends_the_session_and_revoke_works() {
    let rig = Rig::start().await;
    rig.h.fixture().await;
    let alice = credential(&rig.device_sign_in("alice").await);
    let bob_session = rig.device_sign_in("bob").await;
    let bob = credential(&bob_session);
    let app = rig.h.app();

    // Removed from jit-admins at the provider: effective at the next refresh.
    rig.op
        .set_groups(&rig.user("alice"), &["prod-ops"])
        .await
        .unwrap();
    let (_, me) = rig.whoami(&alice).await;
    assert!(
        grants(&me).contains(&"admin *".to_string()),
        "until the refresh"
    );
    let later = jitgate_api::time::now_ms() + 16 * 60 * 1000;
    let swept = app.sessions.refresh_due(later).await.unwrap();
    assert_eq!((swept.refreshed, swept.ended), (2, 0));
    let (_, me) = rig.whoami(&alice).await;
    assert_eq!(grants(&me), ["reader rg:dev", "requester rg:prod"]);
    let (s, _) = rig.h.get("/api/v1/activityLog/verify", &alice).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "no longer admin");

    // Disabled at the provider: the refresh fails and ends the session.
    rig.op.disable(&rig.user("alice")).await.unwrap();
    let later = jitgate_api::time::now_ms() + 32 * 60 * 1000;
    let swept = app.sessions.refresh_due(later).await.unwrap();
    assert_eq!((swept.refreshed, swept.ended), (1, 1));
    let (s, _) = rig.whoami(&alice).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let failed = activity(&rig.h, "Session Refresh Failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].1["displayName"], "alice");
    assert_eq!(failed[0].1["reason"], "refresh_failed");
    assert!(failed[0].1["error"].as_str().is_some());

    // Sessions are an admin's view: bob (no admin on *) may not list them.
    let (s, _) = rig.h.get("/api/v1/sessions", &bob).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let id = bob_session["whoami"]["sessionId"].as_str().unwrap();
    let path = format!("/api/v1/sessions/{id}");
    let revoke = async || {
        rig.h
            .call(Method::DELETE, &path, Some(&rig.h.admin), None)
            .await
    };
    let (s, v) = revoke().await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = rig.whoami(&bob).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "revoked at once");
    let (s, v) = revoke().await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let revoked = activity(&rig.h, "Revoke Session").await;
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].1["displayName"], "bob");
    let (_, all) = rig.h.get("/api/v1/sessions?all=true", &rig.h.admin).await;
    let reasons: Vec<&str> = all["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endReason"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons.contains(&"revoked") && reasons.contains(&"refresh_failed"));
    let (_, open) = rig.h.get("/api/v1/sessions", &rig.h.admin).await;
    assert_eq!(open["value"], json!([]));
}

#[tokio::test]
async fn a_stalled_refresh_fails_closed() {
    let rig = Rig::start().await;
    let cred = credential(&rig.device_sign_in("bob").await);
    let (s, _) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::OK);
    // Nobody refreshed it for 21 minutes (15 due + 5 grace, and a minute more).
    let pool = rig.h.app().db.pool().clone();
    let past = jitgate_api::time::now_ms() - 6 * 60 * 1000;
    sqlx::query("UPDATE sessions SET refresh_due_ms = $1")
        .bind(past)
        .execute(&pool)
        .await
        .unwrap();
    let (s, _) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn key_rotation_at_the_provider_needs_no_restart() {
    let rig = Rig::start().await;
    let (_, s, v) = rig.loopback_sign_in("alice").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new_kid = rig.op.rotate_keys().await.unwrap();
    assert!(rig.op.published_key_ids().await.unwrap().contains(&new_kid));
    // The key set is fetched again on the unknown kid (at most every 10 s).
    let t0 = Instant::now();
    loop {
        let (_, s, v) = rig.loopback_sign_in("alice").await;
        if s == StatusCode::OK {
            break;
        }
        assert!(
            v["error"]["message"].as_str().unwrap().contains("key"),
            "{v}"
        );
        assert!(t0.elapsed() < Duration::from_secs(30), "{v}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn provider_unreachable_at_start_then_sign_in_works() {
    let ca = Arc::new(TestCa::new().unwrap());
    let port = free_port();
    let issuer = format!("https://127.0.0.1:{port}");
    let oidc = oidc_config(&issuer, ca.ca_file());
    let h = Harness::with_config(|c| c.oidc = Some(oidc)).await;
    // Tokens keep working; health says why sign-in does not.
    let (s, _) = h.get("/api/v1/virtualMachines", &h.admin).await;
    assert_eq!(s, StatusCode::OK);
    let (s, ready) = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    assert_eq!(ready["checks"]["signIn"], "unavailable");
    let (s, v) = h
        .call(Method::POST, "/api/v1/auth/device", None, None)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["error"]["code"], "SignInUnavailable");
    assert!(v["error"]["message"].as_str().unwrap().contains(&issuer));

    let _op = TestProvider::start(
        ca.clone(),
        &Setup {
            port: Some(port),
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    loop {
        let (s, v) = h
            .call(Method::POST, "/api/v1/auth/device", None, None)
            .await;
        if s == StatusCode::OK {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "{s} {v}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (_, ready) = h.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready["checks"]["signIn"], "ready");
}

/// One `jit login` through the hostile issuer; the controller's answer to the callback.
async fn hostile_sign_in(h: &Harness, evil: &Hostile) -> (StatusCode, Value) {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let (s, start) = post(h, "/api/v1/auth/login", json!({"redirectUri": redirect})).await;
    assert_eq!(s, StatusCode::OK, "{start}");
    let back = evil
        .authorize(start["authorizeUrl"].as_str().unwrap())
        .await;
    assert!(back.starts_with(&redirect), "{back}");
    let q = jitgate_oidc::CallbackParams::from_query(&query_of(&back));
    post(
        h,
        "/api/v1/auth/callback",
        json!({"handle": start["handle"], "code": q.code, "state": q.state, "iss": q.iss}),
    )
    .await
}

/// Crafted ID tokens from a hostile issuer, through the controller's real flow (the CLI's
/// loopback code flow): each is refused, and no session comes of it.
#[tokio::test]
async fn forged_id_tokens_are_refused_through_the_controller() {
    let evil = Hostile::start().await;
    // The hostile issuer knows one client: here the CLI's (with a secret, as Google's
    // installed-app clients have).
    let oidc = OidcConfig {
        client_id: "jitgate-web".into(),
        cli_client_id: Some(rp_support::hostile::CLIENT_ID.into()),
        cli_client_secret_file: Some(evil.secret_file.clone()),
        ..oidc_config(&evil.issuer, evil.ca.ca_file())
    };
    let h = Harness::with_config(|c| c.oidc = Some(oidc)).await;

    // The control case: the same issuer's honest token makes a session.
    let (s, v) = hostile_sign_in(&h, &evil).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["whoami"]["principal"],
        format!("oidc:{}#eve", evil.issuer)
    );
    for (forgery, says) in [
        (Forgery::WrongIssuer, "issuer"),
        (Forgery::WrongAudience, "audience"),
        (Forgery::Expired, "expired"),
        (Forgery::NotYetValid, "not valid yet"),
        (Forgery::IssuedInFuture, "in the future"),
        (Forgery::Stale, "too long ago"),
        (Forgery::BadSignature, "signature"),
        (Forgery::AlgNone, "unsigned"),
        (Forgery::Hs256WithPublicKey, "HS256"),
        (Forgery::UnknownKid, "key set does not contain"),
        (Forgery::OtherClient, "another client"),
        (Forgery::SeveralAudiencesNoAzp, "azp"),
        (Forgery::WrongNonce, "nonce"),
        (Forgery::MissingNonce, "nonce"),
    ] {
        evil.forge(forgery);
        let (s, v) = hostile_sign_in(&h, &evil).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{forgery:?}: {v}");
        assert_eq!(v["error"]["code"], "SignInRefused", "{forgery:?}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.to_lowercase().contains(&says.to_lowercase()),
            "{forgery:?}: {msg}"
        );
        assert!(!msg.contains("hostile-access-token"), "{msg}");
    }
    let (_, list) = h.get("/api/v1/sessions?all=true", &h.admin).await;
    assert_eq!(
        list["value"].as_array().unwrap().len(),
        1,
        "only the honest sign-in made a session: {list}"
    );
}

/// The value of a `Set-Cookie` for `name` among the response's, whole (attributes too).
fn set_cookie(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie {name}: {:?}", r.headers()))
}

/// `name=value` of a `Set-Cookie`, as a browser sends it back.
fn cookie_pair(set: &str) -> String {
    set.split(';').next().unwrap().to_string()
}

/// The portal's browser sign-in: the pre-sign-in state in a sealed `__Host-` cookie (nothing
/// stored), a fresh session at the callback, CSRF and Origin on sign-out, and cookies that
/// never authenticate the JSON API.
#[tokio::test]
async fn portal_sign_in_with_host_cookies() {
    let (ca, op, h, public) = signin::portal_with_provider().await;
    let browser = common::browser_for(&h.dir);
    let planted = format!("__Host-jitgate-session=jitsess_{}", "0".repeat(64));
    let stored = async |table: &str| -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(h.app().db.pool())
            .await
            .unwrap()
    };

    // Start: 303 to the provider, the sealed state in a short-lived __Host- cookie.
    let r = browser
        .get(format!("{public}/auth/login?return=/auth/session"))
        .header("cookie", &planted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_string();
    assert!(to.starts_with(op.issuer()), "{to}");
    assert!(to.contains("response_mode=query"), "{to}");
    let login = set_cookie(&r, "__Host-jitgate-login");
    for attr in [
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=600",
    ] {
        assert!(login.contains(attr), "{attr}: {login}");
    }
    assert!(!login.contains("Domain"), "{login}");
    assert_eq!(
        (
            stored("sessions").await,
            stored("oidc_used_callbacks").await
        ),
        (0, 0),
        "an unauthenticated visitor writes nothing"
    );

    let alice = Person::new(&ca, &Setup::default().users[0]).unwrap();
    let back = alice
        .authorize(&to, &format!("{public}/auth/callback"), Choice::Allow)
        .await
        .unwrap();
    // Without the browser's sign-in cookie the callback is refused.
    let r = browser.get(&back).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // With it: a fresh session (not the planted one), the sign-in cookie cleared.
    let r = browser
        .get(&back)
        .header("cookie", format!("{}; {planted}", cookie_pair(&login)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{:?}", r.text().await);
    assert_eq!(r.headers()["location"], "/auth/session");
    let session = set_cookie(&r, "__Host-jitgate-session");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(session.contains(attr), "{attr}: {session}");
    }
    let session = cookie_pair(&session);
    assert_ne!(session, planted);
    assert!(set_cookie(&r, "__Host-jitgate-login").contains("Max-Age=0"));
    // The same callback again (the browser's back button, a leaked URL with its cookie).
    let r = browser
        .get(&back)
        .header("cookie", cookie_pair(&login))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("accepted once"));

    // The landing page names the person (as text) under a strict CSP.
    let r = browser
        .get(format!("{public}/auth/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'self'; object-src 'none'")
    );
    let page = r.text().await.unwrap();
    assert!(page.contains("Signed in as <b>alice</b>"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    // The cookie never authenticates the JSON API.
    let r = browser
        .get(format!("{public}/api/v1/auth/whoami"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Sign-out: a POST with the CSRF token, from this site.
    let post = |origin: &str, form: String| {
        browser
            .post(format!("{public}/auth/logout"))
            .header("cookie", &session)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let r = post(&public, String::new()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let r = post("https://evil.example", format!("csrf={csrf}"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another site");
    let r = browser
        .get(format!("{public}/auth/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), StatusCode::OK, "nothing changes on GET");
    assert_eq!(activity(&h, "Sign Out").await.len(), 0);
    let r = post(&public, format!("csrf={csrf}")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(set_cookie(&r, "__Host-jitgate-session").contains("Max-Age=0"));
    let out = activity(&h, "Sign Out").await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1["displayName"], "alice");
    let r = browser
        .get(format!("{public}/auth/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // /auth/login is rate-limited per address.
    let mut last = StatusCode::OK;
    for _ in 0..40 {
        last = browser
            .get(format!("{public}/auth/login"))
            .send()
            .await
            .unwrap()
            .status();
        if last == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
}

/// Two controllers on one PostgreSQL ([ha.md]): a session made on one works on the other and
/// ends on both, and when both sweep at once it is refreshed once (a rotated refresh token is
/// good once). Runs on PostgreSQL in both runs, like tests/ha.rs.
#[tokio::test]
async fn sessions_span_controllers_on_one_database() {
    let db = common::fresh_postgres_database().await;
    let rig = Rig::start_with(None, Some(db)).await;
    let other = rig.h.second().await;
    let cred = credential(&rig.device_sign_in("alice").await);
    let (s, me) = other.get("/api/v1/auth/whoami", &cred).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["displayName"], "alice");

    let later = jitgate_api::time::now_ms() + 16 * 60 * 1000;
    let (a, b) = tokio::join!(
        rig.h.app().sessions.refresh_due(later),
        other.app().sessions.refresh_due(later)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        (a.refreshed + b.refreshed, a.ended + b.ended),
        (1, 0),
        "{a:?} {b:?}"
    );
    let (s, _) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::OK, "still signed in after the refresh");

    let (s, _) = other
        .call(Method::POST, "/api/v1/auth/logout", Some(&cred), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = rig.whoami(&cred).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "ended on every controller");
}
