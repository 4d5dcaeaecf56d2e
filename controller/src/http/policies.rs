//! JIT policies of VMs and resource groups. `GET` and `PUT` answer with the stored policy's
//! version as an `ETag`; `PUT` and `DELETE` take `If-Match` (that version, or `*`) and `PUT`
//! takes `If-None-Match: *` (create only), so that two people editing one policy cannot
//! overwrite each other unseen: a write against a version no longer stored changes nothing
//! and answers 412 `PolicyChanged`.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jitgate_api::{ErrorCode, PolicyBody, PolicyView};

use crate::authz::Caller;
use crate::error::Error;
use crate::http::error::HttpError;
use crate::http::extract::Body;
use crate::http::state::AppState;
use crate::policies::Target;
use crate::policies::edit::Precondition;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default",
            get(get_vm).put(put_vm).delete(delete_vm),
        )
        .route(
            "/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default",
            get(get_rg).put(put_rg).delete(delete_rg),
        )
}

/// A write's precondition as the caller sent it, parsed once: an entity tag without its
/// quotes, `*`, or none.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    None,
    Version(String),
    Exists,
    Absent,
}

impl Wanted {
    fn precondition(&self) -> Option<Precondition<'_>> {
        match self {
            Wanted::None => None,
            Wanted::Version(v) => Some(Precondition::Version(v)),
            Wanted::Exists => Some(Precondition::Exists),
            Wanted::Absent => Some(Precondition::Absent),
        }
    }
}

fn bad(message: &str) -> HttpError {
    HttpError::new(ErrorCode::InvalidRequest, message)
}

/// `If-Match` (one strong entity tag as `GET` gave it, or `*`) and, where `create` allows
/// it, `If-None-Match: *`. Anything else is refused before anything is read.
fn wanted(h: &HeaderMap, create: bool) -> Result<Wanted, HttpError> {
    let one = |name: header::HeaderName| -> Result<Option<String>, HttpError> {
        let mut all = h.get_all(&name).iter();
        let (Some(v), None) = (all.next(), all.next()) else {
            return match h.get(&name) {
                None => Ok(None),
                Some(_) => Err(bad(&format!("{name}: give it once"))),
            };
        };
        let v = v
            .to_str()
            .map_err(|_| bad(&format!("{name}: not visible ASCII")))?;
        Ok(Some(v.trim().to_string()))
    };
    let if_match = one(header::IF_MATCH)?;
    let if_none = one(header::IF_NONE_MATCH)?;
    match (if_match, if_none) {
        (Some(_), Some(_)) => Err(bad("give If-Match or If-None-Match, not both")),
        (None, None) => Ok(Wanted::None),
        (None, Some(v)) if create && v == "*" => Ok(Wanted::Absent),
        (None, Some(_)) => Err(bad(if create {
            "If-None-Match: only * (create only) is supported"
        } else {
            "If-None-Match is not supported here"
        })),
        (Some(v), None) if v == "*" => Ok(Wanted::Exists),
        (Some(v), None) => {
            if v.starts_with("W/") {
                return Err(bad(
                    "If-Match: a weak entity tag never matches; give the ETag of GET as it is",
                ));
            }
            match v.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
                Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                    Ok(Wanted::Version(t.to_string()))
                }
                _ => Err(bad(
                    "If-Match: one entity tag in double quotes, as the ETag of GET gives it, or *",
                )),
            }
        }
    }
}

/// The policy with its version as the `ETag`.
fn tagged(view: PolicyView, version: &str) -> Response {
    let mut r = Json(view).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

async fn get_one(st: &AppState, c: &Caller, t: Target<'_>) -> Result<Response, HttpError> {
    let (view, version) = st.app.policies.get_versioned(c, t).await?;
    Ok(tagged(view, &version))
}

async fn put_one(
    st: &AppState,
    c: &Caller,
    t: Target<'_>,
    h: &HeaderMap,
    body: &PolicyBody,
) -> Result<Response, HttpError> {
    let w = wanted(h, true)?;
    let (view, version) = st.app.policies.put(c, t, body, w.precondition()).await?;
    Ok(tagged(view, &version))
}

async fn delete_one(
    st: &AppState,
    c: &Caller,
    t: Target<'_>,
    h: &HeaderMap,
) -> Result<StatusCode, HttpError> {
    let w = wanted(h, false)?;
    st.app
        .policies
        .delete(c, t, w.precondition())
        .await
        .map_err(Error::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Response, HttpError> {
    get_one(&st, &c, Target::Vm(&vm)).await
}

async fn put_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    h: HeaderMap,
    Body(body): Body<PolicyBody>,
) -> Result<Response, HttpError> {
    put_one(&st, &c, Target::Vm(&vm), &h, &body).await
}

async fn delete_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    h: HeaderMap,
) -> Result<StatusCode, HttpError> {
    delete_one(&st, &c, Target::Vm(&vm), &h).await
}

async fn get_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
) -> Result<Response, HttpError> {
    get_one(&st, &c, Target::Group(&rg)).await
}

async fn put_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
    h: HeaderMap,
    Body(body): Body<PolicyBody>,
) -> Result<Response, HttpError> {
    put_one(&st, &c, Target::Group(&rg), &h, &body).await
}

async fn delete_rg(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
    h: HeaderMap,
) -> Result<StatusCode, HttpError> {
    delete_one(&st, &c, Target::Group(&rg), &h).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn preconditions_parse_or_are_refused() {
        let ok = |p: &[(&str, &str)], create: bool| wanted(&headers(p), create).unwrap();
        assert_eq!(ok(&[], true), Wanted::None);
        assert_eq!(
            ok(&[("if-match", "\"0a1b2c\"")], true),
            Wanted::Version("0a1b2c".into())
        );
        assert_eq!(ok(&[("if-match", " * ")], false), Wanted::Exists);
        assert_eq!(ok(&[("if-none-match", "*")], true), Wanted::Absent);
        for bad in [
            &[("if-match", "0a1b2c")][..],
            &[("if-match", "W/\"0a1b2c\"")],
            &[("if-match", "\"a\", \"b\"")],
            &[("if-match", "\"\"")],
            &[("if-match", "\"a\""), ("if-match", "\"b\"")],
            &[("if-match", "\"a\""), ("if-none-match", "*")],
            &[("if-none-match", "\"a\"")],
        ] {
            assert!(wanted(&headers(bad), true).is_err(), "{bad:?}");
        }
        assert!(wanted(&headers(&[("if-none-match", "*")]), false).is_err());
    }
}
