//! Connect from a VM's page to a VM that no just-in-time policy covers: its ports are not
//! closed by jitgate, so the connection details come straight away (a VM under a policy
//! goes through the request form first, and this page sends it there).

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use jitgate_api::ErrorCode;
use serde::Deserialize;

use crate::http::extract::Q;
use crate::http::portal::connect::{self, ConnectKind};
use crate::http::portal::page::{Chrome, PageResult, html, refuse, see_other, url_path};
use crate::http::portal::session::Viewer;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms/{vm}/connect", get(connect_page))
        .route("/vms/{vm}/rdp", get(rdp))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectQuery {
    kind: String,
    login: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RdpQuery {
    login: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/connect.html")]
struct ConnectPage {
    chrome: Chrome,
    name: String,
    kind: &'static str,
    login: String,
    login_error: String,
    /// The SSH command, for SSH.
    ssh: Option<String>,
    /// The `.rdp` download link, for RDP.
    rdp: Option<String>,
    /// No registered IP address: nothing to connect to.
    no_address: bool,
}

async fn connect_page(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
    Q(q): Q<ConnectQuery>,
) -> PageResult {
    let Some(kind) = ConnectKind::parse(Some(&q.kind))? else {
        return Err(refuse(ErrorCode::InvalidQuery, "kind: use ssh or rdp"));
    };
    let d = st.app.inventory.vm(&v.caller, &name).await?;
    if d.effective_policy.is_some() {
        return Ok(see_other(&format!(
            "/request?vm={}&connect={}",
            url_path(&d.name),
            kind.as_str()
        )));
    }
    let given = q.login.unwrap_or_default();
    let (login, login_error) = match connect::login_of(Some(&given)) {
        Ok(l) => (l, String::new()),
        Err(e) => (None, e),
    };
    let addr = connect::address_of(&d.addresses);
    let (ssh, rdp) = match (addr, kind) {
        (None, _) => (None, None),
        (Some(a), ConnectKind::Ssh) => (Some(connect::ssh_command(a, 22, login.as_ref())), None),
        (Some(_), ConnectKind::Rdp) => {
            let q = login
                .as_ref()
                .map(|l| format!("?login={}", url_path(l.as_str())))
                .unwrap_or_default();
            (None, Some(format!("/vms/{}/rdp{q}", url_path(&d.name))))
        }
    };
    Ok(html(
        StatusCode::OK,
        &ConnectPage {
            chrome: v.chrome("jit"),
            no_address: addr.is_none(),
            name: d.name,
            kind: kind.as_str(),
            login: given,
            login_error,
            ssh,
            rdp,
        },
    ))
}

/// The `.rdp` file of a VM no policy covers (under a policy: only through an open request).
async fn rdp(
    State(st): State<AppState>,
    v: Viewer,
    Path(name): Path<String>,
    Q(q): Q<RdpQuery>,
) -> PageResult {
    let login =
        connect::login_of(q.login.as_deref()).map_err(|e| refuse(ErrorCode::InvalidQuery, e))?;
    let d = st.app.inventory.vm(&v.caller, &name).await?;
    if d.effective_policy.is_some() {
        return Err(refuse(
            ErrorCode::RequestNotActive,
            format!(
                "{name} is under just-in-time access: request access, then download the .rdp file from the request"
            ),
        ));
    }
    let Some(addr) = connect::address_of(&d.addresses) else {
        return Err(refuse(
            ErrorCode::VmNotFound,
            format!("{name} has no registered IP address to connect to"),
        ));
    };
    Ok(connect::rdp_download(addr, 3389, login.as_ref()))
}
