//! A signed-in browser for the portal's tests over real HTTPS: people signed in through the
//! real OpenID provider, pages fetched and forms posted as a browser does, and the security
//! headers checked on every response. Included by the portal test files with
//! `#[path = "common/portal_client.rs"] mod portal_client;` beside `common`, `rp_support` and
//! `signin`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use crate::common::Harness;
use crate::signin;
use jitgate_oidc_testprovider::{Choice, Person, Setup, TestCa, TestProvider};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

pub struct Portal {
    pub public: String,
    pub ca: Arc<TestCa>,
    pub _op: TestProvider,
    pub h: Harness,
    pub browser: reqwest::Client,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with csrf")
            + 19;
        self.body[at..at + 64].to_string()
    }
}

impl Portal {
    pub async fn start() -> Portal {
        Self::start_with(|_| {}).await
    }

    /// As [`Portal::start`], with more of the controller's configuration set by `more`.
    pub async fn start_with(more: impl FnOnce(&mut jitgate_controller::state::Config)) -> Portal {
        let (ca, op, h, public) = signin::portal_with_provider_and(more).await;
        let browser = crate::common::browser_for(&h.dir);
        Portal {
            public,
            ca,
            _op: op,
            h,
            browser,
        }
    }

    /// Signs `login` in as a browser does; the session cookie (`name=value`).
    pub async fn sign_in(&self, login: &str) -> String {
        let r = self
            .browser
            .get(format!("{}/auth/login?return=/jit", self.public))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let to = r.headers()["location"].to_str().unwrap().to_string();
        let login_cookie = set_cookie(r.headers(), "__Host-jitgate-login");
        let setup = Setup::default();
        let user = setup.users.iter().find(|u| u.login == login).unwrap();
        let person = Person::new(&self.ca, user).unwrap();
        let back = person
            .authorize(
                &to,
                &format!("{}/auth/callback", self.public),
                Choice::Allow,
            )
            .await
            .unwrap();
        let r = self
            .browser
            .get(&back)
            .header("cookie", login_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], "/jit");
        set_cookie(r.headers(), "__Host-jitgate-session")
    }

    /// The JSON API's answer to `GET path` as the admin token sees it (200 expected), as
    /// text: what the portal's exports are compared with.
    pub async fn api_text(&self, path: &str) -> String {
        let r = self
            .h
            .client
            .get(format!("{}{path}", self.h.base))
            .bearer_auth(&self.h.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.text().await.unwrap()
    }

    pub async fn get(&self, cookie: &str, path: &str) -> Page {
        let r = self
            .browser
            .get(format!("{}{path}", self.public))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        page(r).await
    }

    /// A form POST as the browser sends it (Origin: the portal's, unless `origin` says).
    pub async fn post(
        &self,
        cookie: &str,
        path: &str,
        origin: &str,
        fields: &[(&str, &str)],
    ) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let r = self
            .browser
            .post(format!("{}{path}", self.public))
            .header("cookie", cookie)
            .header("origin", origin)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        page(r).await
    }
}

impl Portal {
    /// The page at `path` once it shows `text` (polled for up to 10 s, as htmx polls).
    pub async fn until(&self, cookie: &str, path: &str, text: &str) -> String {
        let mut body = String::new();
        for _ in 0..200 {
            body = self.get(cookie, path).await.body;
            if body.contains(text) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{path} never showed {text:?}: {body}");
    }
}

pub async fn page(r: reqwest::Response) -> Page {
    let status = r.status();
    let headers = r.headers().clone();
    check_headers(&headers);
    Page {
        status,
        headers,
        body: r.text().await.unwrap(),
    }
}

/// The security headers every portal response carries.
pub fn check_headers(h: &HeaderMap) {
    let csp = h["content-security-policy"].to_str().unwrap();
    for d in [
        "default-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(d), "{d}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert!(h.contains_key("strict-transport-security") || h.get("location").is_some());
}

pub fn set_cookie(h: &HeaderMap, name: &str) -> String {
    h.get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no Set-Cookie {name}: {h:?}"))
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The request id of `/requests/ID...`.
pub fn request_id(location: &str) -> String {
    let rest = location.strip_prefix("/requests/").expect(location);
    rest.split('?').next().unwrap().to_string()
}
