//! Request access (the form, for one or several VMs), the request page with its live
//! status and connection details, revoke and cancel, and the `.rdp` download.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use jitgate_api::{
    ErrorCode, InitiateBody, InitiatePort, InitiateVm, PortStatus, RequestView, StatusReason,
};
use serde::Deserialize;

use crate::approval::decide::Verdict;
use crate::http::error::HttpError;
use crate::http::extract::Q;
use crate::http::portal::connect::{self, LoginName};
use crate::http::portal::page::{
    Chrome, PageResult, html, refuse, remaining, see_other, sources, when_utc,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/request", get(form).post(submit))
        .route("/requests/{id}", get(request_page))
        .route("/requests/{id}/live", get(live))
        .route("/requests/{id}/revoke", post(revoke))
        .route("/requests/{id}/cancel", post(cancel))
        .route("/requests/{id}/rdp", get(rdp))
}

/// Windows offered, in ISO 8601 and in words; longer ones than the policy allows are left out.
const DURATIONS: [(&str, &str); 7] = [
    ("PT15M", "15 minutes"),
    ("PT30M", "30 minutes"),
    ("PT1H", "1 hour"),
    ("PT2H", "2 hours"),
    ("PT3H", "3 hours"),
    ("PT8H", "8 hours"),
    ("PT24H", "24 hours"),
];

/// What the connect buttons ask for: the port they preselect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectKind {
    Ssh,
    Rdp,
}

impl ConnectKind {
    fn parse(s: Option<&str>) -> Result<Option<ConnectKind>, HttpError> {
        match s.filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some("ssh") => Ok(Some(ConnectKind::Ssh)),
            Some("rdp") => Ok(Some(ConnectKind::Rdp)),
            Some(o) => Err(HttpError::new(
                ErrorCode::InvalidQuery,
                format!("connect {o:?}: use ssh or rdp"),
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ConnectKind::Ssh => "ssh",
            ConnectKind::Rdp => "rdp",
        }
    }

    fn port(self) -> u32 {
        match self {
            ConnectKind::Ssh => 22,
            ConnectKind::Rdp => 3389,
        }
    }
}

/// One port toggle of the form.
struct PortChoice {
    /// `VM|NUMBER`, the checkbox's value.
    value: String,
    label: String,
    checked: bool,
    /// Why the last attempt was refused for this port, in words.
    errors: Vec<String>,
}

struct VmChoice {
    name: String,
    ports: Vec<PortChoice>,
    /// The VM has no policy (nothing to request).
    none: bool,
}

struct DurationChoice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

/// The form's values: from the query on first display, from the post after a refusal.
#[derive(Default)]
struct Values {
    vms: Vec<String>,
    ports: Vec<String>,
    source: String,
    range: String,
    duration: String,
    custom_minutes: String,
    when: String,
    start: String,
    justification: String,
    login: String,
    connect: Option<ConnectKind>,
}

#[derive(Template)]
#[template(path = "portal/request_form.html")]
struct FormPage {
    chrome: Chrome,
    vms: Vec<VmChoice>,
    durations: Vec<DurationChoice>,
    v: Values,
    connect: String,
    /// Refusals not about one port, in words.
    errors: Vec<String>,
    range_error: String,
    justification_error: String,
    login_error: String,
    duration_error: String,
}

/// `?vm=a&vm=b&port=22&connect=ssh` (repeated names, read in order).
fn query_values(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn form(
    State(st): State<AppState>,
    v: Viewer,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> PageResult {
    let pairs = query_values(raw.as_deref());
    let get = |k: &'static str| {
        pairs
            .iter()
            .filter(move |(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    if let Some((k, _)) = pairs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "vm" | "port" | "connect"))
    {
        return Err(refuse(
            ErrorCode::InvalidQuery,
            format!("unknown parameter {k:?}: vm, port, connect"),
        ));
    }
    let connect = ConnectKind::parse(get("connect").next().as_deref())?;
    let vms: Vec<String> = get("vm").collect();
    if vms.is_empty() {
        return Ok(see_other("/jit"));
    }
    let wanted: Vec<u32> = get("port")
        .filter_map(|p| p.parse().ok())
        .chain(connect.map(ConnectKind::port))
        .collect();
    let mut values = Values {
        vms: vms.clone(),
        source: "myip".into(),
        duration: "PT1H".into(),
        when: "now".into(),
        connect,
        ..Values::default()
    };
    for vm in &vms {
        for p in &wanted {
            values.ports.push(format!("{vm}|{p}"));
        }
    }
    render_form(&st, &v, values, Refusal::default(), StatusCode::OK).await
}

/// Why a submission was refused, placed next to the fields.
#[derive(Default)]
struct Refusal {
    general: Vec<String>,
    by_port: BTreeMap<String, Vec<String>>,
    range: String,
    justification: String,
    login: String,
    duration: String,
}

async fn render_form(
    st: &AppState,
    v: &Viewer,
    values: Values,
    mut refusal: Refusal,
    code: StatusCode,
) -> PageResult {
    let mut vms = Vec::new();
    let mut longest = 0i64;
    for name in &values.vms {
        let d = st.app.inventory.vm(&v.caller, name).await?;
        let ports: Vec<&jitgate_api::PolicyPort> = d
            .effective_policy
            .as_ref()
            .map(|p| p.ports.iter().collect())
            .unwrap_or_default();
        let only_one = ports.len() == 1;
        let choices = ports
            .iter()
            .map(|p| {
                if let Ok(s) = jitgate_api::duration::parse(&p.max_request_access_duration) {
                    longest = longest.max(s);
                }
                let value = format!("{}|{}", d.name, p.number);
                PortChoice {
                    checked: only_one || values.ports.contains(&value),
                    errors: refusal.by_port.remove(&value).unwrap_or_default(),
                    label: format!(
                        "{}/{} (at most {}{})",
                        p.number,
                        p.protocol,
                        p.max_request_access_duration,
                        if p.approval.is_some() {
                            ", needs approval"
                        } else {
                            ""
                        }
                    ),
                    value,
                }
            })
            .collect();
        vms.push(VmChoice {
            none: ports.is_empty(),
            name: d.name,
            ports: choices,
        });
    }
    // Refusals about ports no longer shown still reach the person.
    refusal
        .general
        .extend(refusal.by_port.into_values().flatten());
    let durations = DURATIONS
        .iter()
        .filter(|(d, _)| {
            jitgate_api::duration::parse(d).is_ok_and(|s| longest == 0 || s <= longest)
        })
        .map(|(value, label)| DurationChoice {
            value,
            label,
            selected: values.duration == *value,
        })
        .collect();
    Ok(html(
        code,
        &FormPage {
            chrome: v.chrome("jit"),
            vms,
            durations,
            connect: values.connect.map(|c| c.as_str()).unwrap_or("").to_string(),
            v: values,
            errors: refusal.general,
            range_error: refusal.range,
            justification_error: refusal.justification,
            login_error: refusal.login,
            duration_error: refusal.duration,
        },
    ))
}

fn values_of(p: &Posted) -> Values {
    let s = |k: &str| p.one(k).unwrap_or_default().to_string();
    Values {
        vms: p.all("vm").map(str::to_string).collect(),
        ports: p.all("port").map(str::to_string).collect(),
        source: s("source"),
        range: s("range"),
        duration: s("duration"),
        custom_minutes: s("custom_minutes"),
        when: s("when"),
        start: s("start"),
        justification: p.one("justification").unwrap_or_default().to_string(),
        login: s("login"),
        connect: ConnectKind::parse(p.one("connect")).ok().flatten(),
    }
}

/// The API body of a submission, or why the form is refused before asking the service.
fn body_of(v: &Values) -> Result<InitiateBody, Box<Refusal>> {
    let mut r = Refusal::default();
    let source = match v.source.as_str() {
        "myip" | "" => None,
        "range" if v.range.is_empty() => {
            r.range = "enter an IP range (CIDR, e.g. 203.0.113.0/24), or choose My IP".into();
            None
        }
        "range" => match v.range.parse::<jitgate_common::SourcePrefix>() {
            Ok(p) => Some(p.to_string()),
            Err(e) => {
                r.range = format!("{:?} is not an IP range: {e}", v.range);
                None
            }
        },
        _ => {
            r.general.push("choose My IP or an IP range".into());
            None
        }
    };
    let duration = if v.duration == "custom" {
        match v.custom_minutes.parse::<u32>() {
            Ok(m) if m > 0 => Some(format!("PT{m}M")),
            _ => {
                r.duration = "enter the custom length in whole minutes".into();
                None
            }
        }
    } else if DURATIONS.iter().any(|(d, _)| *d == v.duration) {
        Some(v.duration.clone())
    } else {
        r.duration = "choose how long".into();
        None
    };
    let start = match v.when.as_str() {
        "now" | "" => None,
        "at" => {
            // `datetime-local` gives YYYY-MM-DDTHH:MM; the form says it is UTC.
            match jitgate_api::time::parse(&format!("{}:00Z", v.start)) {
                Ok(ms) => Some(jitgate_api::time::format(ms)),
                Err(_) => {
                    r.duration = format!("start {:?} is not a date and time", v.start);
                    None
                }
            }
        }
        _ => {
            r.general.push("choose now or a start time".into());
            None
        }
    };
    if v.justification.is_empty() {
        r.justification = "say why you need access".into();
    }
    if !v.login.is_empty()
        && let Err(e) = LoginName::parse(&v.login)
    {
        r.login = e;
    }
    let mut by_vm: BTreeMap<&str, Vec<InitiatePort>> = BTreeMap::new();
    for p in &v.ports {
        let parsed = p
            .split_once('|')
            .and_then(|(vm, n)| Some((vm, n.parse::<u32>().ok()?)));
        match parsed {
            Some((vm, number)) if v.vms.iter().any(|x| x == vm) => {
                by_vm.entry(vm).or_default().push(InitiatePort {
                    number,
                    protocol: None,
                    allowed_source_address_prefix: source.clone(),
                    allowed_source_address_prefixes: None,
                    end_time_utc: None,
                    duration: duration.clone(),
                    start_time_utc: start.clone(),
                })
            }
            _ => r
                .general
                .push(format!("the port choice {p:?} is not one of the form's")),
        }
    }
    if by_vm.is_empty() && r.general.is_empty() {
        r.general.push("choose at least one port".into());
    }
    let refused = !r.general.is_empty()
        || !r.range.is_empty()
        || !r.duration.is_empty()
        || !r.justification.is_empty()
        || !r.login.is_empty();
    if refused {
        return Err(Box::new(r));
    }
    Ok(InitiateBody {
        virtual_machines: by_vm
            .into_iter()
            .map(|(id, ports)| InitiateVm {
                id: id.to_string(),
                ports,
            })
            .collect(),
        justification: v.justification.clone(),
    })
}

/// Where the request page shows connection details for, carried in its address.
fn details_query(connect: Option<ConnectKind>, login: &str) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    if let Some(c) = connect {
        s.append_pair("connect", c.as_str());
    }
    if !login.is_empty() {
        s.append_pair("login", login);
    }
    let q = s.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

async fn submit(State(st): State<AppState>, p: Posted) -> PageResult {
    let values = values_of(&p);
    let body = match body_of(&values) {
        Ok(b) => b,
        Err(r) => {
            return render_form(&st, &p.viewer, values, *r, StatusCode::BAD_REQUEST).await;
        }
    };
    match st.app.lifecycle.request(&p.viewer.caller, &body).await {
        Ok(view) if view.status == PortStatus::Denied => {
            let mut r = Refusal::default();
            for d in &view.denial_reasons {
                if d.reason == StatusReason::OtherPortDenied {
                    continue;
                }
                r.by_port
                    .entry(format!("{}|{}", d.virtual_machine, d.number))
                    .or_default()
                    .push(d.message.clone());
            }
            r.general.insert(
                0,
                format!(
                    "Request {} was denied by the policy; nothing was opened.",
                    view.id
                ),
            );
            render_form(&st, &p.viewer, values, r, StatusCode::OK).await
        }
        Ok(view) => Ok(see_other(&format!(
            "/requests/{}{}",
            url_path(&view.id),
            details_query(values.connect, &values.login)
        ))),
        Err(crate::error::Error::Refused { message, .. }) => {
            let r = Refusal {
                general: vec![message],
                ..Refusal::default()
            };
            render_form(&st, &p.viewer, values, r, StatusCode::BAD_REQUEST).await
        }
        Err(e) => Err(e.into()),
    }
}

fn url_path(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
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
    let login = match q
        .login
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(LoginName::parse)
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => return Err(refuse(ErrorCode::InvalidQuery, e)),
    };
    let d = st.app.inventory.vm(&v.caller, &q.vm).await?;
    let Some(addr) = connect::address_of(&d.addresses) else {
        return Err(refuse(
            ErrorCode::VmNotFound,
            format!("{} has no registered IP address to connect to", q.vm),
        ));
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-rdp".to_string()),
            (
                header::CONTENT_DISPOSITION,
                // The file name is built from the address only: nothing a person wrote.
                format!(
                    "attachment; filename=\"jitgate-{}.rdp\"",
                    addr.to_string().replace(':', "-")
                ),
            ),
        ],
        connect::rdp_file(addr, q.port, login.as_ref()),
    )
        .into_response())
}
