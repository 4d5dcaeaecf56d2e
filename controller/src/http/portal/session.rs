//! Who is looking at a portal page, and the one gate every state-changing form passes.
//!
//! - [`Viewer`]: the signed-in person behind the `__Host-jitgate-session` cookie; without
//!   one, the browser is sent to sign in and brought back to the page it asked for.
//! - [`Posted`]: a form POST from a signed-in browser, accepted only when its `Origin` is
//!   the controller's public origin and its `csrf` field is the session's token. Handlers
//!   that change state take a `Posted` and nothing else, so no form can skip the checks.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use jitgate_api::ErrorCode;

use crate::authz::{self, Action, Caller};
use crate::http::error::HttpError;
use crate::http::extract::{client_address, peer};
use crate::http::origin::from_this_site;
use crate::http::portal::page::{self, Chrome, see_other};
use crate::http::state::AppState;
use crate::http::web_signin::{SESSION_COOKIE, read_cookie};
use crate::signin::csrf_token;

/// The largest form the portal accepts.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// A signed-in person looking at a page.
pub struct Viewer {
    pub caller: Caller,
    /// The session's CSRF token, for the forms of the page.
    pub csrf: String,
}

impl Viewer {
    /// The frame of a page this viewer looks at (`here`: its navigation entry).
    pub fn chrome(&self, here: &'static str) -> Chrome {
        Chrome {
            name: self.caller.name().to_string(),
            rights: page::rights(&self.caller),
            address: self.caller.address.to_string(),
            csrf: self.csrf.clone(),
            here,
            sinks: authz::allowed(&self.caller, Action::ListSinks),
            keys: authz::allowed(&self.caller, Action::ReadKeys),
        }
    }

    /// Whether `given` is this session's CSRF token (compared as hashes: no timing hint).
    fn csrf_ok(&self, given: &str) -> bool {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.csrf.as_bytes()) == Sha256::digest(given.as_bytes())
    }
}

/// Where `/auth/login` brings the browser back: this page (path and query).
fn return_path(parts: &Parts) -> String {
    let p = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    url::form_urlencoded::byte_serialize(p.as_bytes()).collect()
}

async fn viewer(parts: &Parts, st: &AppState) -> Result<Viewer, Response> {
    let address =
        client_address(peer(parts), &parts.headers, &st.trusted_proxies).map_err(page::error)?;
    let to_sign_in = || see_other(&format!("/auth/login?return={}", return_path(parts)));
    let Some(credential) = read_cookie(&parts.headers, SESSION_COOKIE) else {
        return Err(to_sign_in());
    };
    match st.app.sessions.authenticate(&credential, address).await {
        Ok(Some(caller)) => Ok(Viewer {
            caller,
            csrf: csrf_token(&credential),
        }),
        Ok(None) => Err(to_sign_in()),
        Err(e) => Err(page::error(e.into())),
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Response> {
        viewer(parts, st).await
    }
}

/// A checked form POST: the viewer and the form's fields in order (a name may repeat).
pub struct Posted {
    pub viewer: Viewer,
    pub fields: Vec<(String, String)>,
}

impl Posted {
    /// The first value of `name`, trimmed; None when absent or empty.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn refused(why: &str) -> Response {
    page::error(HttpError::new(ErrorCode::Forbidden, why))
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        match &st.public_origin {
            Some(ours) if from_this_site(&parts.headers, ours) => {}
            None => {
                return Err(refused(
                    "the portal needs public_url in controller.toml to accept forms",
                ));
            }
            Some(_) => {
                tracing::warn!(path = %parts.uri.path(), "portal form refused: foreign Origin");
                return Err(refused(
                    "the form did not come from this site (Origin): nothing was changed",
                ));
            }
        }
        let viewer = Viewer::from_request_parts(&mut parts, st).await?;
        let req = Request::from_parts(parts, body);
        let bytes = Bytes::from_request(req, st).await.map_err(|_| {
            page::error(HttpError::new(
                ErrorCode::InvalidBody,
                "the form could not be read",
            ))
        })?;
        if bytes.len() > MAX_FORM_BYTES {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response());
        }
        let fields: Vec<(String, String)> = url::form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let csrf = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        if !viewer.csrf_ok(csrf) {
            tracing::warn!(principal = %viewer.caller.name(), "portal form refused: CSRF token");
            return Err(refused(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ));
        }
        Ok(Posted { viewer, fields })
    }
}
