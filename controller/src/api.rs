//! The HTTPS JSON API (routes under `/api/v1`, documented in `controller/openapi.yaml`).

use jitgate_api::ErrorCode;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{
    ActivityQuery, CheckpointList, EnrollRequest, EnrollResponse, Format, HistoryQuery,
    InitiateBody, List, Me, PolicyBody, ResourceGroup, ViewQuery, VmDetail,
};
use jitgate_common::SourcePrefix;
use serde::de::DeserializeOwned;

use crate::auth::{Caller, Role};
use crate::compliance::http as cx;
use crate::error::ApiError;
use crate::model::{Initiate, Policy, now_ms};
use crate::store::{ActivityEntry, Actor, Store};

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<SourcePrefix>,
    pub max_body_bytes: usize,
    /// Agent enrolment: the CA that signs agent certificates, the grant-signing public key
    /// and the advertised agent endpoint.
    pub enroll: Arc<EnrollCtx>,
    /// Compliance evaluations (on demand; the same one the schedule uses).
    pub compliance: crate::compliance::schedule::Scheduler,
    /// Signs activity log checkpoints on demand (the controller's Ed25519 key).
    pub checkpoint_key: Arc<ed25519_dalek::SigningKey>,
}

/// What enrolment hands out.
pub struct EnrollCtx {
    pub ca: crate::agents::Ca,
    pub grant_signing_key_pem: String,
    pub agent_endpoint: String,
}

/// The TCP peer of a connection, inserted by the server for every request.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/virtualMachines", get(list_vms))
        .route("/api/v1/virtualMachines/{vm}", get(get_vm))
        .route(
            "/api/v1/virtualMachines/{vm}/jitNetworkAccessPolicies/default",
            get(get_vm_policy)
                .put(put_vm_policy)
                .delete(delete_vm_policy),
        )
        .route("/api/v1/virtualMachines/{vm}/requests", get(history))
        .route("/api/v1/virtualMachines/{vm}/connections", get(connections))
        .route("/api/v1/virtualMachines/{vm}/agentAudit", get(agent_audit))
        .route(
            "/api/v1/virtualMachines/{vm}/agentAudit/verify",
            get(agent_audit_verify),
        )
        .route(
            "/api/v1/resourceGroups/{rg}/jitNetworkAccessPolicies/default",
            get(get_rg_policy)
                .put(put_rg_policy)
                .delete(delete_rg_policy),
        )
        .route(
            "/api/v1/jitNetworkAccessPolicies/default/initiate",
            post(initiate),
        )
        .route("/api/v1/requests/{id}", get(get_request))
        .route("/api/v1/requests/{id}/revoke", post(revoke))
        .route("/api/v1/activityLog", get(activity))
        .route("/api/v1/activityLog/verify", get(verify))
        .route(
            "/api/v1/activityLog/checkpoints",
            get(list_checkpoints).post(sign_checkpoint),
        )
        .route("/api/v1/activityLog/export", get(export))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/enroll", post(enroll))
        .route("/api/v1/resourceGroups", get(list_groups))
        .route("/api/v1/compliance", get(cx::report))
        .route("/api/v1/compliance/scans", post(cx::scan))
        .route("/api/v1/compliance/history", get(cx::history))
        .route(
            "/api/v1/compliance/assignments",
            get(cx::assignments).post(cx::assign),
        )
        .route(
            "/api/v1/compliance/assignments/{id}",
            axum::routing::delete(cx::unassign),
        )
        .route("/api/v1/compliance/remediate", post(cx::remediate))
        .fallback(|| async {
            ApiError::not_found(
                ErrorCode::NoSuchRoute,
                "no such API route (see openapi.yaml)",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not accept that method",
            )
        })
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// The caller's address: the peer, or (only if the peer is a trusted proxy) the rightmost
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[SourcePrefix],
) -> Result<IpAddr, ApiError> {
    let peer = jitgate_common::net::normalise(peer);
    let is_trusted = |a: IpAddr| trusted.iter().any(|p| p.contains_addr(a));
    if !is_trusted(peer) {
        return Ok(peer);
    }
    let mut addr = peer;
    for v in headers.get_all("x-forwarded-for") {
        let s = v.to_str().map_err(|_| {
            ApiError::bad_request(
                ErrorCode::InvalidForwardedFor,
                "X-Forwarded-For is not ASCII",
            )
        })?;
        for part in s.split(',').rev() {
            let a: IpAddr = part.trim().parse().map_err(|_| {
                ApiError::bad_request(
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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<PeerAddr>()
            .map(|p| p.0.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let address = client_address(peer, &parts.headers, &st.trusted_proxies)?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            tracing::warn!(%address, path = %parts.uri.path(), "unauthenticated: no bearer token");
            return Err(ApiError::unauthenticated(
                "missing API token: send Authorization: Bearer jit_...",
            ));
        };
        match st.store.authenticate(token).await? {
            Some((token_id, name, role, scope)) => Ok(Caller {
                token_id,
                name,
                role,
                scope,
                address,
            }),
            None => {
                tracing::warn!(%address, path = %parts.uri.path(), "unauthenticated: unknown, expired or revoked token");
                Err(ApiError::unauthenticated(
                    "the API token is unknown, expired or revoked",
                ))
            }
        }
    }
}

/// A JSON body: size-limited, unknown fields rejected, errors as stable codes.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, st: &AppState) -> Result<Self, ApiError> {
        let limit = st.max_body_bytes;
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
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "send the body as application/json",
                ));
            }
        }
        // A slow body must not hold a connection (and its task) forever.
        let bytes = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            axum::body::to_bytes(req.into_body(), limit),
        )
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::RequestTimeout,
                "the request body did not arrive within 30 s",
            )
        })?
        .map_err(|_| body_too_large(limit))?;
        parse_body(&bytes, limit).map(Body)
    }
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::BodyTooLarge,
        format!("the request body exceeds {limit} bytes"),
    )
}

/// Decodes a request body as [`Body`] does once it has arrived: at most `limit` bytes, JSON,
/// unknown fields rejected, errors as stable codes. Separate from the extractor so that the
/// parsing can be tested (and fuzzed) without a server.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, ApiError> {
    if bytes.len() > limit {
        return Err(body_too_large(limit));
    }
    serde_json::from_slice::<T>(bytes).map_err(|e| {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
            Category::Data => ErrorCode::InvalidBody,
        };
        ApiError::bad_request(code, format!("request body: {e}"))
    })
}

/// Query strings: unknown parameters rejected.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, st)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidQuery, e.body_text()))
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn me(c: Caller) -> Json<Me> {
    Json(Me {
        name: c.name,
        token_id: c.token_id,
        role: c.role,
        scope: c.scope,
        caller_address: c.address.to_string(),
    })
}

async fn list_vms(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    let v = st.store.list_vms(&c.scope).await?;
    Ok(Json(List::from(v)).into_response())
}

async fn get_vm(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Json<VmDetail>, ApiError> {
    let (group, addresses) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    let effective_policy = st.store.effective_policy(&vm, &group).await?;
    Ok(Json(VmDetail {
        name: vm,
        resource_group: group,
        addresses,
        effective_policy,
    }))
}

async fn get_vm_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    match st.store.get_policy("vm", &vm).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::not_found(
            ErrorCode::PolicyNotFound,
            format!(
                "VM {vm} has no JIT policy of its own (see its effective policy on GET /virtualMachines/{vm})"
            ),
        )),
    }
}

async fn put_vm_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Body(body): Body<PolicyBody>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Admin, &vm, &group)?;
    let policy = Policy::from_json(&body)?;
    let v = st
        .store
        .put_policy(&Actor::of(&c), "vm", &vm, &group, &policy)
        .await?;
    Ok(Json(v).into_response())
}

async fn delete_vm_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Admin, &vm, &group)?;
    st.store
        .delete_policy(&Actor::of(&c), "vm", &vm, &group)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn rg_exists(st: &AppState, rg: &str) -> Result<(), ApiError> {
    if st.store.group_exists(rg).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(
            ErrorCode::ResourceGroupNotFound,
            format!("no resource group {rg}"),
        ))
    }
}

async fn get_rg_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
) -> Result<Response, ApiError> {
    rg_exists(&st, &rg).await?;
    c.check_group(Role::Reader, &rg)?;
    match st.store.get_policy("rg", &rg).await? {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::not_found(
            ErrorCode::PolicyNotFound,
            format!("resource group {rg} has no JIT policy"),
        )),
    }
}

async fn put_rg_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
    Body(body): Body<PolicyBody>,
) -> Result<Response, ApiError> {
    rg_exists(&st, &rg).await?;
    c.check_group(Role::Admin, &rg)?;
    let policy = Policy::from_json(&body)?;
    let v = st
        .store
        .put_policy(&Actor::of(&c), "rg", &rg, &rg, &policy)
        .await?;
    Ok(Json(v).into_response())
}

async fn delete_rg_policy(
    State(st): State<AppState>,
    c: Caller,
    Path(rg): Path<String>,
) -> Result<Response, ApiError> {
    rg_exists(&st, &rg).await?;
    c.check_group(Role::Admin, &rg)?;
    st.store
        .delete_policy(&Actor::of(&c), "rg", &rg, &rg)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn initiate(
    State(st): State<AppState>,
    c: Caller,
    Body(body): Body<InitiateBody>,
) -> Result<Response, ApiError> {
    let req = Initiate::from_json(&body, c.address, now_ms())?;
    let rec = st.store.initiate(&c, &req).await?;
    Ok(Json(rec).into_response())
}

async fn get_request(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut rec = st.store.get_request(&id).await?;
    rec.virtual_machines
        .retain(|v| c.scope.covers_vm(&v.id, &v.resource_group));
    if rec.virtual_machines.is_empty() {
        c.check_global(Role::Reader)?;
    }
    rec.denial_reasons.retain(|d| {
        rec.virtual_machines
            .iter()
            .any(|v| v.id == d.virtual_machine)
    });
    Ok(Json(rec).into_response())
}

async fn history(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<HistoryQuery>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let mut v = st.store.history(&vm, limit).await?;
    for rec in &mut v {
        rec.virtual_machines
            .retain(|x| c.scope.covers_vm(&x.id, &x.resource_group));
    }
    Ok(Json(List::from(v)).into_response())
}

/// Who connected to the VM, from where, under which request (from its agents' records).
async fn connections(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<ViewQuery>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    let format = format_of(q.format, &[Format::Json, Format::Csv])?;
    let v = st.store.connections(&vm, &q).await?;
    Ok(match format {
        Format::Csv => csv_response(crate::connections::to_csv(&v)),
        _ => Json(List::from(v)).into_response(),
    })
}

/// The VM's agents' own audit records, as delivered.
async fn agent_audit(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<ViewQuery>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    let v = st.store.agent_audit_records(&vm, &q).await?;
    Ok(Json(List::from(v)).into_response())
}

/// Verifies the VM's agents' delivered records: chains and signed agent checkpoints.
async fn agent_audit_verify(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Response, ApiError> {
    let (group, _) = st.store.vm(&vm).await?;
    c.check_vm(Role::Reader, &vm, &group)?;
    let v = st.store.verify_agent_audit(&vm, &st.enroll.ca.pem).await?;
    Ok(Json(v).into_response())
}

async fn revoke(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if c.role < Role::Requester {
        return Err(c
            .check_global(Role::Requester)
            .err()
            .unwrap_or_else(|| ApiError::forbidden("readers may not revoke")));
    }
    let rec = st.store.revoke(&c, &id).await?;
    Ok(Json(rec).into_response())
}

async fn activity(
    State(st): State<AppState>,
    c: Caller,
    Q(f): Q<ActivityQuery>,
) -> Result<Response, ApiError> {
    let format = format_of(f.format, &[Format::Json, Format::Jsonl, Format::Csv])?;
    let v = st.store.activity(&f, &c.scope).await?;
    match format {
        Format::Json => Ok(Json(List::from(v)).into_response()),
        Format::Jsonl => {
            let mut out = String::new();
            for e in &v {
                out.push_str(&serde_json::to_string(e).map_err(|_| ApiError::internal())?);
                out.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
        }
        Format::Csv => Ok(csv_response(to_csv(&v))),
    }
}

/// The `format` query parameter (json when absent), one of `allowed`; else `InvalidQuery`.
pub fn format_of(f: Option<Format>, allowed: &[Format]) -> Result<Format, ApiError> {
    let f = f.unwrap_or(Format::Json);
    if allowed.contains(&f) {
        return Ok(f);
    }
    let names: Vec<&str> = allowed.iter().map(|f| f.as_str()).collect();
    Err(ApiError::bad_request(
        ErrorCode::InvalidQuery,
        format!(
            "format {:?} is invalid: use {}",
            f.as_str(),
            names.join(", ")
        ),
    ))
}

pub fn csv_response(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/csv")], text).into_response()
}

/// The activity log as CSV.
pub fn to_csv(v: &[ActivityEntry]) -> String {
    crate::csv::write(
        &[
            "seq",
            "timeUtc",
            "operation",
            "resourceType",
            "resourceGroup",
            "virtualMachine",
            "caller",
            "callerAddress",
            "outcome",
            "requestId",
            "details",
            "prevHash",
            "hash",
        ],
        v.iter().map(|e| {
            vec![
                e.seq.to_string(),
                e.time_utc.clone(),
                e.operation.clone(),
                e.resource_type.clone(),
                e.resource_group.clone(),
                e.virtual_machine.clone(),
                e.caller.clone(),
                e.caller_address.clone(),
                e.outcome.clone(),
                e.request_id.clone(),
                e.details.to_string(),
                e.prev_hash.clone(),
                e.hash.clone(),
            ]
        }),
    )
}

async fn verify(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.check_global(Role::Reader)?;
    let r = st.store.verify().await?;
    Ok(Json(r).into_response())
}

/// The signed checkpoints of the chain head, oldest first, with the key that verifies them.
async fn list_checkpoints(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.check_global(Role::Reader)?;
    let v = st.store.checkpoints().await?;
    Ok(Json(CheckpointList {
        key_id: jitgate_proto::audit::key_id(&st.checkpoint_key.verifying_key()),
        public_key_pem: st.enroll.grant_signing_key_pem.clone(),
        value: v,
    })
    .into_response())
}

/// Signs the chain head now (admin): 201 with the new checkpoint, or 200 with the latest
/// one when the head has not moved since.
async fn sign_checkpoint(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.check_global(Role::Admin)?;
    if let Some(cp) = st.store.checkpoint(&st.checkpoint_key).await? {
        return Ok((StatusCode::CREATED, Json(cp)).into_response());
    }
    match st.store.checkpoints().await?.pop() {
        Some(cp) => Ok(Json(cp).into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::EmptyActivityLog,
            "the activity log is empty: there is no head to sign",
        )),
    }
}

/// The whole activity log with its checkpoints and the public key: verifiable offline
/// (`jit audit verify --offline FILE`).
async fn export(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    c.check_global(Role::Reader)?;
    let x = st.store.export(&st.enroll.grant_signing_key_pem).await?;
    Ok(Json(x).into_response())
}

/// Agent enrolment: the one-time enrolment token authenticates (no API token).
async fn enroll(
    State(st): State<AppState>,
    peer: Option<axum::Extension<PeerAddr>>,
    Body(req): Body<EnrollRequest>,
) -> Result<Response, ApiError> {
    let address = peer
        .map(|p| jitgate_common::net::normalise(p.0.0.ip()).to_string())
        .unwrap_or_default();
    let (id, vm, signed) = st.store.enroll(&address, &req, &st.enroll.ca).await?;
    Ok(Json(EnrollResponse {
        agent_id: id.to_string(),
        vm,
        certificate_pem: signed.pem,
        ca_pem: st.enroll.ca.pem.clone(),
        grant_signing_key_pem: st.enroll.grant_signing_key_pem.clone(),
        agent_endpoint: st.enroll.agent_endpoint.clone(),
    })
    .into_response())
}

/// The agent fleet (reader and up, within the caller's scope).
async fn list_agents(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    let v = st.store.list_agents(&c.scope).await?;
    Ok(Json(List::from(v)).into_response())
}

/// Resource groups within the caller's scope, with their owners.
async fn list_groups(State(st): State<AppState>, c: Caller) -> Result<Response, ApiError> {
    let v = st
        .store
        .list_groups()
        .await?
        .into_iter()
        .filter(|(n, _)| c.scope.covers_group(n))
        .map(|(name, owner)| ResourceGroup { name, owner })
        .collect::<Vec<_>>();
    Ok(Json(List::from(v)).into_response())
}
