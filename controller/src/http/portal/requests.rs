//! The request page with its live status and connection details, revoke and cancel, and
//! the `.rdp` download.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::{ErrorCode, PortStatus, RequestView};
use serde::Deserialize;

use crate::approval::decide::Verdict;
use crate::http::error::HttpError;
use crate::http::extract::Q;
use crate::http::portal::connect::{self, ConnectKind, LoginName, details_query};
use crate::http::portal::page::{
    Chrome, PageResult, html, refuse, remaining, see_other, sources, url_path, when_utc,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/live", get(live))
        .route("/requests/{id}/revoke", post(revoke))
        .route("/requests/{id}/cancel", post(cancel))
        .route("/requests/{id}/rdp", get(rdp))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DetailsQuery {
    connect: Option<String>,
    login: Option<String>,
}

/// How to connect to one open port.
struct Detail {
    vm: String,
    port: u16,
    /// The SSH command, when the port is SSH's.
    ssh: Option<String>,
    /// The `.rdp` download link, when the port is RDP's.
    rdp: Option<String>,
}

struct PortLine {
    vm: String,
    port: String,
    sources: String,
    window: String,
    /// The connection limit of each grant, in words.
    connections: String,
    status: String,
    reason: String,
    left: String,
}

#[derive(Template)]
#[template(path = "portal/request_live.html")]
struct Live {
    id: String,
    query: String,
    /// Still changing: the fragment polls itself.
    live: bool,
    status: String,
    ports: Vec<PortLine>,
    waiting_for: Vec<String>,
    deadline: String,
    decisions: Vec<String>,
    denials: Vec<String>,
    details: Vec<Detail>,
    no_address: Vec<String>,
    login_error: String,
    /// Revoke and Cancel follow the status (in the fragment, so they never go stale).
    can_revoke: bool,
    can_cancel: bool,
    csrf: String,
}

#[derive(Template)]
#[template(path = "portal/request.html")]
struct RequestPage {
    chrome: Chrome,
    id: String,
    requestor: String,
    justification: String,
    caller_address: String,
    started: String,
    /// The rendered (escaped) live fragment.
    live_html: String,
}

async fn live_of(
    st: &AppState,
    v: &Viewer,
    view: &RequestView,
    q: &DetailsQuery,
) -> Result<Live, HttpError> {
    let caller = &v.caller;
    let connect = ConnectKind::parse(q.connect.as_deref())?;
    let login = q.login.as_deref().filter(|l| !l.is_empty());
    let (login, login_error) = match login.map(LoginName::parse) {
        None => (None, String::new()),
        Some(Ok(l)) => (Some(l), String::new()),
        Some(Err(e)) => (None, e),
    };
    let now = jitgate_api::time::now_ms();
    let mut ports = Vec::new();
    let mut details = Vec::new();
    let mut no_address = Vec::new();
    for vm in &view.virtual_machines {
        let mut addr = None;
        let mut looked = false;
        for p in &vm.ports {
            let end = jitgate_api::time::parse(&p.end_time_utc).unwrap_or(0);
            let sources = sources(p);
            let open = p.status == PortStatus::Applied;
            ports.push(PortLine {
                vm: vm.id.clone(),
                port: format!("{}/{}", p.number, p.protocol.as_str()),
                sources,
                window: format!(
                    "{} to {}",
                    p.start_time_utc
                        .as_deref()
                        .map(when_utc)
                        .unwrap_or_else(|| "approval".into()),
                    when_utc(&p.end_time_utc)
                ),
                connections: match p.max_connections {
                    None => "unlimited".into(),
                    Some(m) => format!("at most {m} per grant"),
                },
                status: p.status.as_str().to_string(),
                reason: p
                    .status_reason
                    .as_ref()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_default(),
                left: if open {
                    remaining(end, now)
                } else {
                    String::new()
                },
            });
            if !open {
                continue;
            }
            if !looked {
                looked = true;
                addr = st
                    .app
                    .inventory
                    .vm(caller, &vm.id)
                    .await
                    .ok()
                    .and_then(|d| connect::address_of(&d.addresses));
                if addr.is_none() {
                    no_address.push(vm.id.clone());
                }
            }
            let Some(a) = addr else { continue };
            let ssh = p.number == 22 || connect == Some(ConnectKind::Ssh);
            let rdp = p.number == 3389 || connect == Some(ConnectKind::Rdp);
            details.push(Detail {
                vm: vm.id.clone(),
                port: p.number,
                ssh: ssh.then(|| connect::ssh_command(a, p.number, login.as_ref())),
                rdp: rdp.then(|| {
                    let mut s = url::form_urlencoded::Serializer::new(String::new());
                    s.append_pair("vm", &vm.id);
                    s.append_pair("port", &p.number.to_string());
                    if let Some(l) = &login {
                        s.append_pair("login", l.as_str());
                    }
                    format!("/requests/{}/rdp?{}", url_path(&view.id), s.finish())
                }),
            });
        }
    }
    let waiting_for = view
        .pending_approval
        .iter()
        .map(|s| {
            format!(
                "stage {} of {}: {} more of {} (approved so far: {})",
                s.stage,
                s.stages,
                s.required.saturating_sub(s.approved_by.len() as u32),
                s.approvers.join(", "),
                if s.approved_by.is_empty() {
                    "nobody".into()
                } else {
                    s.approved_by.join(", ")
                }
            )
        })
        .collect();
    let decisions = view
        .approvals
        .iter()
        .map(|a| {
            format!(
                "{} {} at {}{}",
                a.approver,
                a.decision.as_str(),
                when_utc(&a.time_utc),
                a.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    let denials = view
        .denial_reasons
        .iter()
        .map(|d| format!("{} port {}: {}", d.virtual_machine, d.number, d.message))
        .collect();
    Ok(Live {
        id: view.id.clone(),
        query: details_query(connect, login.as_ref().map_or("", |l| l.as_str())),
        live: matches!(
            view.status,
            PortStatus::PendingApproval | PortStatus::Initiated | PortStatus::Applied
        ),
        status: view.status.as_str().to_string(),
        ports,
        waiting_for,
        deadline: view
            .approval_deadline_utc
            .as_deref()
            .map(when_utc)
            .unwrap_or_default(),
        decisions,
        denials,
        details,
        no_address,
        login_error,
        can_revoke: matches!(view.status, PortStatus::Initiated | PortStatus::Applied),
        can_cancel: view.status == PortStatus::PendingApproval,
        csrf: v.csrf.clone(),
    })
}

async fn request_page(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
    Q(q): Q<DetailsQuery>,
) -> PageResult {
    let view = st.app.lifecycle.get(&v.caller, &id).await?;
    let live_html = live_of(&st, &v, &view, &q).await?.render().map_err(|e| {
        tracing::error!(error = %e, "request fragment failed to render");
        refuse(ErrorCode::InternalError, "the page could not be rendered")
    })?;
    Ok(html(
        StatusCode::OK,
        &RequestPage {
            chrome: v.chrome("jit"),
            id: view.id.clone(),
            requestor: view.requestor.clone(),
            justification: view.justification.clone(),
            caller_address: view.caller_address.clone(),
            started: when_utc(&view.start_time_utc),
            live_html,
        },
    ))
}

async fn live(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
    Q(q): Q<DetailsQuery>,
) -> PageResult {
    let view = st.app.lifecycle.get(&v.caller, &id).await?;
    Ok(html(StatusCode::OK, &live_of(&st, &v, &view, &q).await?))
}

async fn revoke(State(st): State<AppState>, Path(id): Path<String>, p: Posted) -> PageResult {
    st.app.lifecycle.revoke(&p.viewer.caller, &id).await?;
    Ok(see_other(&format!("/requests/{}", url_path(&id))))
}

async fn cancel(State(st): State<AppState>, Path(id): Path<String>, p: Posted) -> PageResult {
    st.app
        .lifecycle
        .decide(&p.viewer.caller, &id, Verdict::Cancel)
        .await?;
    Ok(see_other(&format!("/requests/{}", url_path(&id))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RdpQuery {
    vm: String,
    port: u16,
    login: Option<String>,
}

/// The `.rdp` file of an open port of the request.
async fn rdp(
    State(st): State<AppState>,
    v: Viewer,
    Path(id): Path<String>,
    Q(q): Q<RdpQuery>,
) -> PageResult {
    let view = st.app.lifecycle.get(&v.caller, &id).await?;
    let open = view.virtual_machines.iter().any(|vm| {
        vm.id == q.vm
            && vm
                .ports
                .iter()
                .any(|p| p.number == q.port && p.status == PortStatus::Applied)
    });
    if !open {
        return Err(refuse(
            ErrorCode::RequestNotActive,
            format!("port {} of {} is not open under this request", q.port, q.vm),
        ));
    }
    let login =
        connect::login_of(q.login.as_deref()).map_err(|e| refuse(ErrorCode::InvalidQuery, e))?;
    let d = st.app.inventory.vm(&v.caller, &q.vm).await?;
    let Some(addr) = connect::address_of(&d.addresses) else {
        return Err(refuse(
            ErrorCode::VmNotFound,
            format!("{} has no registered IP address to connect to", q.vm),
        ));
    };
    Ok(connect::rdp_download(addr, q.port, login.as_ref()))
}
