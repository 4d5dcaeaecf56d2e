//! The agent fleet, enrolment, and what the agents saw (connections, their audit records).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{AgentAuditVerify, EnrollRequest, EnrollResponse, Format, ViewQuery};

use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::{Body, PeerAddr, Q};
use crate::http::respond::{csv, format_of, list};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/enroll", post(enroll))
        .route("/api/v1/virtualMachines/{vm}/connections", get(connections))
        .route("/api/v1/virtualMachines/{vm}/agentAudit", get(records))
        .route(
            "/api/v1/virtualMachines/{vm}/agentAudit/verify",
            get(verify),
        )
}

async fn agents(State(st): State<AppState>, c: Caller) -> Result<Response, HttpError> {
    Ok(list(st.app.fleet.agents(&c).await?))
}

/// The one-time enrolment token authenticates (no API token).
async fn enroll(
    State(st): State<AppState>,
    peer: Option<axum::Extension<PeerAddr>>,
    Body(req): Body<EnrollRequest>,
) -> Result<Json<EnrollResponse>, HttpError> {
    let address = peer
        .map(|p| jitgate_common::net::normalise(p.0.0.ip()).to_string())
        .unwrap_or_default();
    Ok(Json(st.app.fleet.enroll(&address, &req).await?))
}

async fn connections(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<ViewQuery>,
) -> Result<Response, HttpError> {
    let format = format_of(q.format, &[Format::Json, Format::Csv])?;
    let v = st.app.views.connections(&c, &vm, &q).await?;
    Ok(match format {
        Format::Csv => csv(crate::views::to_csv(&v)?),
        _ => list(v),
    })
}

async fn records(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
    Q(q): Q<ViewQuery>,
) -> Result<Response, HttpError> {
    Ok(list(st.app.views.records(&c, &vm, &q).await?))
}

async fn verify(
    State(st): State<AppState>,
    c: Caller,
    Path(vm): Path<String>,
) -> Result<Json<AgentAuditVerify>, HttpError> {
    Ok(Json(st.app.views.verify(&c, &vm).await?))
}
