//! The browser's sign-in, for the portal: `GET /auth/login`, `GET /auth/callback`,
//! `POST /auth/logout`, and a minimal landing page (`GET /auth/session`).
//!
//! - The pre-sign-in state (state, nonce, PKCE verifier, return path) travels sealed in the
//!   short-lived `__Host-jitgate-login` cookie: an unauthenticated visitor makes the
//!   controller write nothing. `/auth/login` is rate-limited per address.
//! - The callback always issues a fresh session and credential in `__Host-jitgate-session`
//!   (Secure, HttpOnly, SameSite=Lax, Path=/): a cookie planted before sign-in is never the
//!   one after it.
//! - Nothing changes state on GET. `POST /auth/logout` needs the session's CSRF token and a
//!   request from the controller's public origin ([`crate::http::origin`]).
//! - These cookies authenticate only these pages: the JSON API under `/api/v1` takes
//!   bearer credentials only.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cookie::{Cookie, SameSite};
use jitgate_api::{CallbackBody, ErrorCode};
use jitgate_notify::text::html;
use jitgate_oidc::{CallbackParams, ClientKind};
use serde::Deserialize;

use crate::http::error::{HttpError, status};
use crate::http::extract::{ClientAddr, Q};
use crate::http::origin::from_this_site;
use crate::http::state::AppState;
use crate::signin::{csrf_matches, csrf_token};

pub const LOGIN_COOKIE: &str = "__Host-jitgate-login";
pub const SESSION_COOKIE: &str = "__Host-jitgate-session";
/// Where the browser lands after sign-in when no return path was asked for.
const LANDING: &str = "/jit";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/logout", post(logout))
        .route("/auth/session", get(landing))
        .route("/auth/link", get(link_page).post(link_redeem))
}

/// `Set-Cookie` for one of our `__Host-` cookies (`max_age` 0 clears it).
fn set_cookie(name: &'static str, value: String, max_age: i64) -> Option<HeaderValue> {
    let c = Cookie::build((name, value))
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(cookie::time::Duration::seconds(max_age.max(0)));
    HeaderValue::from_str(&c.build().to_string()).ok()
}

/// The value of cookie `name` the browser sent (the first, if several).
pub(crate) fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// An HTML page (`body` is markup the caller escaped), uncached; the portal's layer adds
/// the security headers (`portal::page::headers`).
fn page(code: StatusCode, title: &str, body: &str) -> Response {
    let text = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <link rel=\"stylesheet\" href=\"/assets/portal.css\"></head><body><main id=\"main\">\
         <h1>{}</h1>{body}</main></body></html>",
        html(title),
        html(title)
    );
    let mut r = (code, text).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error_page(e: HttpError) -> Response {
    let message = format!("<p>{}</p>", html(&e.message));
    let mut r = page(status(&e.code), "Sign-in failed", &message);
    if let Some(v) = set_cookie(LOGIN_COOKIE, String::new(), 0) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn see_other(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    r
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoginQuery {
    /// Where to go after sign-in: a path on this site.
    #[serde(rename = "return", default)]
    return_to: Option<String>,
}

/// Starts the browser's sign-in: the sealed state in a cookie, 303 to the provider.
async fn login(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    Q(q): Q<LoginQuery>,
) -> Response {
    if let Err(e) = st.sign_in_limit.check(addr, "sign-in") {
        return error_page(e);
    }
    let to = q.return_to.as_deref().unwrap_or(LANDING);
    match st.app.sessions.start_portal_login(to).await {
        Ok(p) => {
            let age = p.expires_at - jitgate_api::time::now_ms() / 1000;
            see_other(
                &p.authorize_url,
                set_cookie(LOGIN_COOKIE, p.cookie, age)
                    .into_iter()
                    .collect(),
            )
        }
        Err(e) => error_page(e.into()),
    }
}

/// The provider sends the browser back here: a fresh session in its cookie, the sign-in
/// cookie cleared, 303 to the return path.
async fn callback(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(handle) = read_cookie(&headers, LOGIN_COOKIE) else {
        return error_page(HttpError::new(
            ErrorCode::SignInRefused,
            "no sign-in was started in this browser, or it expired: start again at /auth/login",
        ));
    };
    let p = CallbackParams::from_query(query.as_deref().unwrap_or_default());
    let body = CallbackBody {
        handle,
        code: p.code,
        state: p.state,
        iss: p.iss,
        error: p.error,
        error_description: p.error_description,
    };
    match st
        .app
        .sessions
        .finish_login(&body, addr, ClientKind::Portal)
        .await
    {
        Ok(created) => {
            let age = (created.expires_ms - jitgate_api::time::now_ms()) / 1000;
            let cookies = [
                set_cookie(SESSION_COOKIE, created.granted.credential, age),
                set_cookie(LOGIN_COOKIE, String::new(), 0),
            ];
            see_other(
                created.return_to.as_deref().unwrap_or(LANDING),
                cookies.into_iter().flatten().collect(),
            )
        }
        Err(e) => error_page(e.into()),
    }
}

/// Who is signed in in this browser, and the sign-out button.
async fn landing(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
) -> Response {
    let Some(credential) = read_cookie(&headers, SESSION_COOKIE) else {
        return page(
            StatusCode::UNAUTHORIZED,
            "Not signed in",
            "<p><a href=\"/auth/login\">Sign in</a></p>",
        );
    };
    let caller = match st.app.sessions.authenticate(&credential, addr).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return page(
                StatusCode::UNAUTHORIZED,
                "Not signed in",
                "<p>Your session ended. <a href=\"/auth/login\">Sign in again</a></p>",
            );
        }
        Err(e) => return error_page(e.into()),
    };
    let me = match st.app.sessions.whoami(&caller).await {
        Ok(w) => w,
        Err(e) => return error_page(e.into()),
    };
    let roles: Vec<String> = me
        .grants
        .iter()
        .map(|g| format!("{} on {}", g.role, g.scope))
        .collect();
    let roles = if roles.is_empty() {
        me.no_role.unwrap_or_else(|| "no role".into())
    } else {
        roles.join(", ")
    };
    let body = format!(
        "<p>Signed in as <b>{}</b> ({}).</p><p>Roles: {}</p><p>Session ends: {}</p>\
         <form method=\"post\" action=\"/auth/logout\"><input type=\"hidden\" name=\"csrf\" \
         value=\"{}\"><button type=\"submit\">Sign out</button></form>",
        html(&me.display_name),
        html(&me.principal),
        html(&roles),
        html(me.session_ends_utc.as_deref().unwrap_or("-")),
        csrf_token(&credential)
    );
    page(StatusCode::OK, "jitgate", &body)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkQuery {
    /// The link's secret.
    t: Option<String>,
}

/// A one-time sign-in link, opened: says what it signs in as and asks to confirm (a GET
/// never uses the link up).
async fn link_page(State(st): State<AppState>, Q(q): Q<LinkQuery>) -> Response {
    let secret = q.t.unwrap_or_default();
    match st.app.sessions.peek_link(&secret).await {
        Ok(info) => page(
            StatusCode::OK,
            "Sign in with a one-time link",
            &format!(
                "<p>This link signs you in as <b>link:{}</b>, {} on {}, until you sign out \
                 or for at most 8 hours. It works once and expires {}.</p>\
                 <form method=\"post\" action=\"/auth/link\"><input type=\"hidden\" \
                 name=\"t\" value=\"{}\"><button type=\"submit\">Sign in</button></form>",
                html(&info.name),
                html(info.role.as_str()),
                html(&info.scope.to_string()),
                html(&jitgate_api::time::format(info.expires_ms)),
                html(&secret),
            ),
        ),
        Err(e) => error_page(e.into()),
    }
}

/// Redeems a one-time sign-in link (a POST from this site): a new session, 303 to the
/// portal.
async fn link_redeem(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Bytes,
) -> Response {
    if let Err(e) = st.sign_in_limit.check(addr, "sign-in") {
        return error_page(e);
    }
    match &st.public_origin {
        Some(ours) if from_this_site(&headers, ours) => {}
        _ => {
            return error_page(HttpError::new(
                ErrorCode::Forbidden,
                "the form did not come from this site (Origin), or public_url is not set",
            ));
        }
    }
    let secret = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "t")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match st.app.sessions.redeem_link(&secret, addr).await {
        Ok(created) => {
            let age = (created.expires_ms - jitgate_api::time::now_ms()) / 1000;
            see_other(
                LANDING,
                set_cookie(SESSION_COOKIE, created.granted.credential, age)
                    .into_iter()
                    .collect(),
            )
        }
        Err(e) => error_page(e.into()),
    }
}

/// Ends the browser's session: a POST with the session's CSRF token, from our own origin.
async fn logout(
    State(st): State<AppState>,
    ClientAddr(addr): ClientAddr,
    headers: HeaderMap,
    form: Bytes,
) -> Response {
    let forbidden = |why: &str| {
        tracing::warn!(%addr, reason = why, "portal sign-out refused");
        page(
            StatusCode::FORBIDDEN,
            "Refused",
            &format!("<p>{}</p>", html(why)),
        )
    };
    match &st.public_origin {
        Some(ours) if from_this_site(&headers, ours) => {}
        None => return forbidden("portal sign-in is not configured (public_url)"),
        Some(_) => return forbidden("the request did not come from this site (Origin)"),
    }
    let Some(credential) = read_cookie(&headers, SESSION_COOKIE) else {
        return forbidden("not signed in");
    };
    let csrf = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !csrf_matches(&credential, &csrf) {
        return forbidden("the form's CSRF token is missing or wrong: reload the page");
    }
    let clear = set_cookie(SESSION_COOKIE, String::new(), 0);
    let caller = match st.app.sessions.authenticate(&credential, addr).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            let mut r = page(
                StatusCode::OK,
                "Signed out",
                "<p>Your session had ended.</p>",
            );
            if let Some(v) = clear {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            return r;
        }
        Err(e) => return error_page(e.into()),
    };
    if let Err(e) = st.app.sessions.logout(&caller).await {
        return error_page(e.into());
    }
    let mut r = page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out. <a href=\"/auth/login\">Sign in again</a></p>",
    );
    if let Some(v) = clear {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}
