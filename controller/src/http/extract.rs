//! What handlers take from a request: the authenticated [`Caller`] (a bearer token, before any
//! body is read), a JSON [`Body`] (size-limited, unknown fields rejected) and a query [`Q`]
//! (unknown parameters rejected), each failure with its stable code.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use jitgate_api::ErrorCode;
use jitgate_common::SourcePrefix;
use serde::de::DeserializeOwned;

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::state::AppState;

/// The TCP peer of a connection, inserted by the server for every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The peer's address (IPv4-mapped IPv6 normalised); 127.0.0.1 when not known.
pub fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| jitgate_common::net::normalise(p.0.ip()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The caller's address: the peer, or (only if the peer is a trusted proxy) the rightmost
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub(crate) fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[SourcePrefix],
) -> Result<IpAddr, HttpError> {
    let peer = jitgate_common::net::normalise(peer);
    let is_trusted = |a: IpAddr| trusted.iter().any(|p| p.contains_addr(a));
    if !is_trusted(peer) {
        return Ok(peer);
    }
    let mut addr = peer;
    for v in headers.get_all("x-forwarded-for") {
        let s = v.to_str().map_err(|_| {
            HttpError::new(
                ErrorCode::InvalidForwardedFor,
                "X-Forwarded-For is not ASCII",
            )
        })?;
        for part in s.split(',').rev() {
            let a: IpAddr = part.trim().parse().map_err(|_| {
                HttpError::new(
                    ErrorCode::InvalidForwardedFor,
                    format!("X-Forwarded-For entry {part:?} is not an IP address"),
                )
            })?;
            let a = jitgate_common::net::normalise(a);
            addr = a;
            if !is_trusted(a) {
                return Ok(a);
            }
        }
    }
    Ok(addr)
}

/// The caller's address ("My IP", after the trusted-proxy rule), for unauthenticated routes.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        client_address(peer(parts), &parts.headers, &st.trusted_proxies).map(ClientAddr)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        let address = client_address(peer(parts), &parts.headers, &st.trusted_proxies)?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            tracing::warn!(%address, path = %parts.uri.path(), "unauthenticated: no bearer token");
            return Err(HttpError::new(
                ErrorCode::Unauthenticated,
                "missing credential: send Authorization: Bearer with an API token (jit_...) or \
                 a session from `jit login` (jitsess_...)",
            ));
        };
        // An API token or a jitgate session; never a cookie, never a provider's token.
        let caller = match st.app.tokens.authenticate(token, address).await? {
            Some(c) => Some(c),
            None => st.app.sessions.authenticate(token, address).await?,
        };
        match caller {
            Some(c) => Ok(c),
            None => {
                tracing::warn!(%address, path = %parts.uri.path(), "unauthenticated: unknown, expired or revoked credential");
                Err(HttpError::new(
                    ErrorCode::Unauthenticated,
                    "the credential is unknown, expired or revoked (a session: sign in again \
                     with `jit login`)",
                ))
            }
        }
    }
}

/// A JSON body: size-limited, unknown fields rejected, errors as stable codes.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, HttpError> {
        let limit = st.max_body_bytes;
        let bytes = read_body(req, limit).await?;
        parse_body(&bytes, limit).map(Body)
    }
}

/// A JSON body that may be left out: no body (or only whitespace) is `T::default()`.
pub struct BodyOrDefault<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for BodyOrDefault<T> {
    type Rejection = HttpError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, HttpError> {
        let limit = st.max_body_bytes;
        let bytes = read_body(req, limit).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(BodyOrDefault(T::default()));
        }
        parse_body(&bytes, limit).map(BodyOrDefault)
    }
}

/// The body's bytes: at most `limit`, JSON if a content type is given, within 30 s.
async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, HttpError> {
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(body_too_large(limit));
    }
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ok = ct
            .to_str()
            .map(|s| s.trim_start().starts_with("application/json"))
            .unwrap_or(false);
        if !ok {
            return Err(HttpError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json",
            ));
        }
    }
    // A slow body must not hold a connection (and its task) forever.
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        axum::body::to_bytes(req.into_body(), limit),
    )
    .await
    .map_err(|_| {
        HttpError::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive within 30 s",
        )
    })?
    .map_err(|_| body_too_large(limit))
}

fn body_too_large(limit: usize) -> HttpError {
    HttpError::new(
        ErrorCode::BodyTooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

/// Decodes a request body as [`Body`] does once it has arrived: at most `limit` bytes, JSON,
/// unknown fields rejected, errors as stable codes. Separate from the extractor so that the
/// parsing can be tested (and fuzzed) without a server.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, HttpError> {
    if bytes.len() > limit {
        return Err(body_too_large(limit));
    }
    serde_json::from_slice::<T>(bytes).map_err(|e| {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
            Category::Data => ErrorCode::InvalidBody,
        };
        HttpError::new(code, format!("request body: {e}"))
    })
}

/// A query string: unknown parameters rejected.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = HttpError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        Query::<T>::from_request_parts(parts, st)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| HttpError::new(ErrorCode::InvalidQuery, e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::request::Initiate;
    use crate::state::DEFAULT_MAX_BODY_BYTES;
    use jitgate_api::{InitiateBody, PolicyBody};

    #[test]
    fn bodies_parse_with_the_server_limits() {
        let limit = DEFAULT_MAX_BODY_BYTES;
        let code = |r: Result<PolicyBody, HttpError>| r.err().map(|e| e.code);
        assert_eq!(
            code(parse_body(b"{\"ports\": [", limit)),
            Some(ErrorCode::InvalidJson)
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": 1}", limit)),
            Some(ErrorCode::InvalidBody)
        );
        assert_eq!(
            code(parse_body(b"{\"ports\": [], \"x\": 1}", limit)),
            Some(ErrorCode::InvalidBody)
        );
        let big = format!("{{\"ports\": []}}{}", " ".repeat(limit));
        assert_eq!(
            code(parse_body(big.as_bytes(), limit)),
            Some(ErrorCode::BodyTooLarge)
        );
        assert_eq!(code(parse_body(b"{\"ports\": []}", limit)), None);
    }

    /// The committed seeds of the `request_json` fuzz target (fuzz/, docs/fuzzing.md) stay
    /// valid requests.
    #[test]
    fn fuzz_seeds_validate() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request_json");
        let (mut policies, mut requests) = (0, 0);
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let limit = DEFAULT_MAX_BODY_BYTES;
            if let Ok(j) = parse_body::<PolicyBody>(&data, limit) {
                Policy::from_body(&j).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                policies += 1;
            } else {
                let j: InitiateBody = parse_body(&data, limit).unwrap();
                let ip = std::net::IpAddr::from([203, 0, 113, 7]);
                Initiate::from_body(&j, ip, 1_795_737_600_000)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                requests += 1;
            }
        }
        assert!(policies >= 1 && requests >= 1);
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<SourcePrefix> = vec!["127.0.0.1/32".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "198.51.100.1, 127.0.0.1".parse().unwrap(),
        );
        let local = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(
            client_address(local, &h, &trusted).unwrap().to_string(),
            "198.51.100.1"
        );
        assert_eq!(client_address(local, &h, &[]).unwrap(), local);
        h.insert("x-forwarded-for", "not-an-address".parse().unwrap());
        assert_eq!(
            client_address(local, &h, &trusted).unwrap_err().code,
            ErrorCode::InvalidForwardedFor
        );
    }
}
