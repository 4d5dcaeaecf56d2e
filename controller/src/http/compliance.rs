//! Compliance: the report, evaluations, history, assignments, remediation.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jitgate_api::{
    AssignBody, Assignment, ComplianceHistoryQuery, Format, PolicyView, RemediateBody, ReportQuery,
    ScanBody, ScanSummary,
};

use crate::authz::Caller;
use crate::compliance::Report;
use crate::http::error::HttpError;
use crate::http::extract::{Body, Q};
use crate::http::respond::{csv, format_of, list};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/compliance", get(report))
        .route("/api/v1/compliance/scans", post(scan))
        .route("/api/v1/compliance/history", get(history))
        .route(
            "/api/v1/compliance/assignments",
            get(assignments).post(assign),
        )
        .route("/api/v1/compliance/assignments/{id}", delete(unassign))
        .route("/api/v1/compliance/remediate", post(remediate))
}

async fn report(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ReportQuery>,
) -> Result<Response, HttpError> {
    let as_csv = format_of(q.format, &[Format::Json, Format::Csv])? == Format::Csv;
    Ok(match st.app.compliance.report(&c, &q, as_csv).await? {
        Report::Json(r) => Json(r).into_response(),
        Report::Csv(text) => csv(text),
    })
}

async fn scan(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<ScanBody>,
) -> Result<Json<ScanSummary>, HttpError> {
    Ok(Json(st.app.compliance.scan(&c, &b).await?))
}

async fn history(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ComplianceHistoryQuery>,
) -> Result<Response, HttpError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(list(
        st.app
            .compliance
            .history(&c, q.scope.as_deref(), limit)
            .await?,
    ))
}

async fn assignments(State(st): State<AppState>, _c: Caller) -> Result<Response, HttpError> {
    Ok(list(st.app.compliance.assignments().await?))
}

async fn assign(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<AssignBody>,
) -> Result<(StatusCode, Json<Assignment>), HttpError> {
    Ok((
        StatusCode::CREATED,
        Json(st.app.compliance.assign(&c, &b).await?),
    ))
}

async fn unassign(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    st.app.compliance.unassign(&c, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remediate(
    State(st): State<AppState>,
    c: Caller,
    Body(b): Body<RemediateBody>,
) -> Result<Json<PolicyView>, HttpError> {
    Ok(Json(st.app.compliance.remediate(&c, &b).await?))
}
