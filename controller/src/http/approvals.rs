//! Approvals: decisions on pending requests, the caller's waiting list, the approvals report.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use jitgate_api::{ApprovalsQuery, DecisionBody, Format, RequestView};

use crate::approval::decide::Verdict;
use crate::authz::Caller;
use crate::http::error::HttpError;
use crate::http::extract::{BodyOrDefault, Q};
use crate::http::respond::{csv, format_of, list};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/requests/{id}/approve", post(approve))
        .route("/api/v1/requests/{id}/deny", post(deny))
        .route("/api/v1/requests/{id}/cancel", post(cancel))
        .route("/api/v1/approvals", get(approvals))
}

async fn approve(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    BodyOrDefault(b): BodyOrDefault<DecisionBody>,
) -> Result<Json<RequestView>, HttpError> {
    let v = Verdict::approve(b.reason, b.emergency)?;
    Ok(Json(st.app.lifecycle.decide(&c, &id, v).await?))
}

async fn deny(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    BodyOrDefault(b): BodyOrDefault<DecisionBody>,
) -> Result<Json<RequestView>, HttpError> {
    if b.emergency {
        return Err(HttpError::new(
            jitgate_api::ErrorCode::InvalidRequest,
            "emergency applies to approvals only",
        ));
    }
    let v = Verdict::deny(b.reason)?;
    Ok(Json(st.app.lifecycle.decide(&c, &id, v).await?))
}

async fn cancel(
    State(st): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, HttpError> {
    Ok(Json(
        st.app.lifecycle.decide(&c, &id, Verdict::Cancel).await?,
    ))
}

/// Without `history`: the requests waiting for the caller's decision. With it: every
/// decision, filtered (JSON or formula-safe CSV).
async fn approvals(
    State(st): State<AppState>,
    c: Caller,
    Q(q): Q<ApprovalsQuery>,
) -> Result<Response, HttpError> {
    if q.history != Some(true) {
        let filtered = q.vm.is_some()
            || q.resource_group.is_some()
            || q.approver.is_some()
            || q.since.is_some()
            || q.until.is_some()
            || q.limit.is_some();
        if filtered || q.format.is_some_and(|f| f != Format::Json) {
            return Err(HttpError::new(
                jitgate_api::ErrorCode::InvalidQuery,
                "filters and format apply to the report: add history=true",
            ));
        }
        return Ok(list(st.app.lifecycle.waiting(&c).await?));
    }
    let format = format_of(q.format, &[Format::Json, Format::Csv])?;
    let rows = st.app.lifecycle.approvals(&c, &q).await?;
    Ok(match format {
        Format::Csv => csv(crate::approval::report::to_csv(&rows)?),
        _ => list(rows),
    })
}
