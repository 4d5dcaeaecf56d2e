//! The approvals inbox: the requests waiting for my decision, and Approve / Deny.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::approval::decide::Verdict;
use crate::http::portal::page::{Chrome, PageResult, html, see_other, sources, when_utc};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/approvals", get(inbox))
        .route("/requests/{id}/approve", post(approve))
        .route("/requests/{id}/deny", post(deny))
}

struct Waiting {
    id: String,
    requestor: String,
    made: String,
    caller_address: String,
    ports: Vec<String>,
    justification: String,
    stage: String,
    deadline: String,
}

#[derive(Template)]
#[template(path = "portal/approvals.html")]
struct Inbox {
    chrome: Chrome,
    waiting: Vec<Waiting>,
}

async fn inbox(State(st): State<AppState>, v: Viewer) -> PageResult {
    let list = st.app.lifecycle.waiting(&v.caller).await?;
    let waiting = list
        .iter()
        .map(|r| Waiting {
            id: r.id.clone(),
            requestor: r.requestor.clone(),
            made: when_utc(&r.start_time_utc),
            caller_address: r.caller_address.clone(),
            ports: r
                .virtual_machines
                .iter()
                .flat_map(|vm| {
                    vm.ports.iter().map(move |p| {
                        format!(
                            "{} {}/{} from {} until {}",
                            vm.id,
                            p.number,
                            p.protocol.as_str(),
                            sources(p),
                            when_utc(&p.end_time_utc)
                        )
                    })
                })
                .collect(),
            justification: r.justification.clone(),
            stage: r
                .pending_approval
                .iter()
                .map(|s| {
                    format!(
                        "stage {} of {}: {} of {}",
                        s.stage,
                        s.stages,
                        s.required,
                        s.approvers.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            deadline: r
                .approval_deadline_utc
                .as_deref()
                .map(when_utc)
                .unwrap_or_default(),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Inbox {
            chrome: v.chrome("approvals"),
            waiting,
        },
    ))
}

async fn approve(State(st): State<AppState>, Path(id): Path<String>, p: Posted) -> PageResult {
    let verdict = Verdict::approve(p.one("reason").map(str::to_string), false)?;
    decide(&st, &id, p, verdict).await
}

async fn deny(State(st): State<AppState>, Path(id): Path<String>, p: Posted) -> PageResult {
    let verdict = Verdict::deny(p.one("reason").map(str::to_string))?;
    decide(&st, &id, p, verdict).await
}

async fn decide(st: &AppState, id: &str, p: Posted, verdict: Verdict) -> PageResult {
    st.app
        .lifecycle
        .decide(&p.viewer.caller, id, verdict)
        .await?;
    Ok(see_other("/approvals"))
}
