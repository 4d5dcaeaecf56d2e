//! The request form, for one or several VMs: shown with each VM's ports, checked on the
//! server as it is filled in (htmx posts it to `/request/check`; the same checks as a
//! submission, recording nothing), and submitted.

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::{ErrorCode, InitiateBody, InitiatePort, InitiateVm, PortStatus, StatusReason};
use jitgate_common::MaxConnections;

use crate::http::portal::connect::{ConnectKind, LoginName, details_query};
use crate::http::portal::page::{
    Chrome, PageResult, html, policy_sources, refuse, see_other, url_path,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/request", get(form).post(submit))
        .route("/request/check", post(check))
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

/// One port toggle of the form.
struct PortChoice {
    /// `VM|NUMBER`, the checkbox's value.
    value: String,
    /// The id of the element holding its errors (checked as the form is filled in).
    errors_id: String,
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
    /// Most new connections per grant, empty for the policy's limit.
    connections: String,
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
    connections_error: String,
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
    connections: String,
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
                    errors_id: errors_id(&d.name, p.number),
                    checked: only_one || values.ports.contains(&value),
                    errors: refusal.by_port.remove(&value).unwrap_or_default(),
                    label: format!(
                        "{}/{} from {} (at most {}{}{})",
                        p.number,
                        p.protocol,
                        policy_sources(p),
                        p.max_request_access_duration,
                        match p.max_connections {
                            Some(m) => format!(
                                ", {m} new connection{} per grant",
                                if m.get() == 1 { "" } else { "s" }
                            ),
                            None => String::new(),
                        },
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
            connections_error: refusal.connections,
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
        connections: s("connections"),
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
    let max_connections = match v.connections.trim() {
        "" => None,
        n => match n.parse::<MaxConnections>() {
            Ok(m) => Some(m),
            Err(_) => {
                r.connections = format!(
                    "{n:?} is not a number of connections: leave it empty for the policy's limit, or enter 1 to {}",
                    MaxConnections::MAX
                );
                None
            }
        },
    };
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
                    // None: the policy's limit, if it sets one.
                    max_connections,
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
        || !r.login.is_empty()
        || !r.connections.is_empty();
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

/// The id of a port's error element: VM names are letters, digits and `._-` (checked when
/// the VM is registered), so the id needs no escaping.
fn errors_id(vm: &str, number: u32) -> String {
    format!("port-errors-{vm}-{number}")
}

/// What the check as you type sends back: every error element of the form, out of band
/// (empty ones clear what an earlier check said).
#[derive(Template)]
#[template(path = "portal/request_check.html")]
struct Checked {
    general: Vec<String>,
    ports: Vec<(String, Vec<String>)>,
    range_error: String,
    duration_error: String,
    login_error: String,
    connections_error: String,
}

/// `POST /request/check`: the form's fields checked as a submission would be, and each
/// chosen port against its VM's policy (Lifecycle::preview), recording nothing. The
/// justification is not judged here (the field is required and the person is typing it).
async fn check(State(st): State<AppState>, p: Posted) -> PageResult {
    let mut values = values_of(&p);
    if values.justification.trim().is_empty() {
        values.justification = "(being typed)".into();
    }
    let mut r = match body_of(&values) {
        Err(r) => *r,
        Ok(body) => {
            let mut r = Refusal::default();
            match st.app.lifecycle.preview(&p.viewer.caller, &body).await {
                Ok(found) => {
                    for f in found {
                        r.by_port
                            .entry(errors_id(&f.vm, u32::from(f.port.get())))
                            .or_default()
                            .extend(f.reasons);
                    }
                }
                Err(crate::error::Error::Refused { message, .. }) => r.general.push(message),
                Err(e) => return Err(e.into()),
            }
            r
        }
    };
    // Every port of the form's VMs, so that a port unchecked since loses its errors.
    let mut ports = Vec::new();
    for name in &values.vms {
        let Ok(d) = st.app.inventory.vm(&p.viewer.caller, name).await else {
            continue;
        };
        for port in d.effective_policy.iter().flat_map(|x| &x.ports) {
            let id = errors_id(&d.name, port.number);
            let errors = r.by_port.remove(&id).unwrap_or_default();
            ports.push((id, errors));
        }
    }
    r.general.extend(r.by_port.into_values().flatten());
    Ok(html(
        StatusCode::OK,
        &Checked {
            general: r.general,
            ports,
            range_error: r.range,
            duration_error: r.duration,
            login_error: r.login,
            connections_error: r.connections,
        },
    ))
}
