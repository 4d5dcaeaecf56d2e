//! The "Just-in-time VM access" page (three tabs), a VM's page with Connect, and a VM's
//! request history.

use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use jitgate_api::{AgentConnection, PortStatus, RequestView, Vm};
use serde::Deserialize;

use crate::http::extract::Q;
use crate::http::portal::page::{Chrome, PageResult, html, refuse, see_other, when, when_utc};
use crate::http::portal::session::Viewer;
use crate::http::state::AppState;
use crate::store::agents::DETACHED;

/// VMs per page of the JIT list.
const PAGE: usize = 50;
/// The window of the "approved requests" column.
const RECENT_DAYS: i64 = 7;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { see_other("/jit") }))
        .route("/jit", get(jit))
        .route("/vms/{vm}", get(vm_page))
        .route("/vms/{vm}/requests", get(history))
}

/// The tab a VM belongs to: exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// A policy applies and an agent enforces it.
    Configured,
    /// No policy applies.
    NotConfigured,
    /// A policy applies but nothing on the host can enforce it.
    Unsupported,
}

impl Tab {
    pub const ALL: [Tab; 3] = [Tab::Configured, Tab::NotConfigured, Tab::Unsupported];

    pub fn as_str(self) -> &'static str {
        match self {
            Tab::Configured => "configured",
            Tab::NotConfigured => "not-configured",
            Tab::Unsupported => "unsupported",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Tab::Configured => "Configured",
            Tab::NotConfigured => "Not configured",
            Tab::Unsupported => "Unsupported",
        }
    }

    fn parse(s: &str) -> Option<Tab> {
        Tab::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The tab of a VM, and why when it is unsupported.
pub fn classify(vm: &Vm) -> (Tab, Option<String>) {
    if vm.policy_source.is_none() {
        return (Tab::NotConfigured, None);
    }
    match vm.status {
        AgentConnection::NoAgent => (Tab::Unsupported, Some("no agent is enrolled".into())),
        AgentConnection::Revoked => (Tab::Unsupported, Some("its agent was revoked".into())),
        _ => match vm.problems.iter().find(|p| p.starts_with(DETACHED)) {
            Some(p) => (Tab::Unsupported, Some(p.clone())),
            None => (Tab::Configured, None),
        },
    }
}

/// The agent's state in words: "online", "degraded: ...", "offline".
fn agent_state(vm: &Vm) -> String {
    match &vm.status {
        AgentConnection::Degraded if !vm.problems.is_empty() => {
            format!("degraded: {}", vm.problems.join("; "))
        }
        s => s.as_str().to_string(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JitQuery {
    tab: Option<String>,
    /// Part of the VM's name.
    q: Option<String>,
    /// The resource group, exactly.
    rg: Option<String>,
    /// The resource group's owner, exactly.
    owner: Option<String>,
    /// Keyset pagination: the last VM name of the previous page.
    after: Option<String>,
}

struct Row {
    name: String,
    resource_group: String,
    owner: String,
    agent: String,
    reason: String,
    approved: usize,
    last_access: String,
    last_user: String,
}

struct TabLink {
    title: &'static str,
    href: String,
    count: usize,
    current: bool,
}

#[derive(Template)]
#[template(path = "portal/jit.html")]
struct JitPage {
    chrome: Chrome,
    tab: Tab,
    tabs: Vec<TabLink>,
    rows: Vec<Row>,
    q: String,
    rg: String,
    owner: String,
    next: Option<String>,
    is_configured: bool,
    is_not_configured: bool,
}

fn query_string(tab: Tab, q: &str, rg: &str, owner: &str, after: Option<&str>) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    s.append_pair("tab", tab.as_str());
    for (k, v) in [("q", q), ("rg", rg), ("owner", owner)] {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    if let Some(a) = after {
        s.append_pair("after", a);
    }
    format!("/jit?{}", s.finish())
}

async fn jit(State(st): State<AppState>, v: Viewer, Q(query): Q<JitQuery>) -> PageResult {
    let tab = match query.tab.as_deref() {
        None => Tab::Configured,
        Some(t) => match Tab::parse(t) {
            Some(t) => t,
            None => {
                return Err(refuse(
                    jitgate_api::ErrorCode::InvalidQuery,
                    format!("no tab {t:?}: configured, not-configured or unsupported"),
                ));
            }
        },
    };
    let (vms, groups, recent) = tokio::try_join!(
        st.app.inventory.vms(&v.caller),
        st.app.inventory.groups(&v.caller),
        st.app
            .lifecycle
            .recent_access(jitgate_api::time::now_ms() - RECENT_DAYS * 86_400_000),
    )?;
    let owners: HashMap<String, String> = groups.into_iter().map(|g| (g.name, g.owner)).collect();
    let q = query.q.unwrap_or_default();
    let rg = query.rg.unwrap_or_default();
    let owner = query.owner.unwrap_or_default();
    let mut counts = [0usize; 3];
    let mut rows = Vec::new();
    let mut more = false;
    for vm in &vms {
        let vm_owner = owners.get(&vm.resource_group).cloned().unwrap_or_default();
        if (!q.is_empty() && !vm.name.to_lowercase().contains(&q.to_lowercase()))
            || (!rg.is_empty() && vm.resource_group != rg)
            || (!owner.is_empty() && vm_owner != owner)
        {
            continue;
        }
        let (t, reason) = classify(vm);
        if let Some(i) = Tab::ALL.iter().position(|x| *x == t) {
            counts[i] += 1;
        }
        if t != tab
            || query
                .after
                .as_deref()
                .is_some_and(|a| vm.name.as_str() <= a)
        {
            continue;
        }
        if rows.len() == PAGE {
            more = true;
            continue;
        }
        let r = recent.get(&vm.name);
        rows.push(Row {
            name: vm.name.clone(),
            resource_group: vm.resource_group.clone(),
            owner: vm_owner,
            agent: agent_state(vm),
            reason: reason.unwrap_or_default(),
            approved: r.map_or(0, |r| r.approved),
            last_access: r.map_or_else(|| "-".into(), |r| when(r.last_ms)),
            last_user: r.map_or_else(|| "-".into(), |r| r.last_user.clone()),
        });
    }
    let next = more
        .then(|| {
            rows.last()
                .map(|r| query_string(tab, &q, &rg, &owner, Some(&r.name)))
        })
        .flatten();
    let tabs = Tab::ALL
        .iter()
        .zip(counts)
        .map(|(t, count)| TabLink {
            title: t.title(),
            href: query_string(*t, &q, &rg, &owner, None),
            count,
            current: *t == tab,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &JitPage {
            chrome: v.chrome("jit"),
            tab,
            tabs,
            rows,
            q,
            rg,
            owner,
            next,
            is_configured: tab == Tab::Configured,
            is_not_configured: tab == Tab::NotConfigured,
        },
    ))
}

/// A request as a history line.
pub struct HistoryRow {
    pub id: String,
    pub status: String,
    pub requestor: String,
    pub start: String,
    pub ports: String,
    pub justification: String,
}

impl HistoryRow {
    pub fn of(r: &RequestView) -> HistoryRow {
        let ports = r
            .virtual_machines
            .iter()
            .flat_map(|v| {
                v.ports.iter().map(move |p| {
                    format!(
                        "{} {}/{} until {}",
                        v.id,
                        p.number,
                        p.protocol.as_str(),
                        when_utc(&p.end_time_utc)
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("; ");
        HistoryRow {
            id: r.id.clone(),
            status: r.status.as_str().to_string(),
            requestor: r.requestor.clone(),
            start: when_utc(&r.start_time_utc),
            ports,
            justification: r.justification.clone(),
        }
    }
}

struct PolicyLine {
    port: String,
    sources: String,
    max: String,
    approval: String,
}

#[derive(Template)]
#[template(path = "portal/vm.html")]
struct VmPage {
    chrome: Chrome,
    name: String,
    resource_group: String,
    addresses: String,
    policy: Vec<PolicyLine>,
    policy_from: String,
    history: Vec<HistoryRow>,
}

async fn vm_page(State(st): State<AppState>, v: Viewer, Path(name): Path<String>) -> PageResult {
    let d = st.app.inventory.vm(&v.caller, &name).await?;
    let history = st
        .app
        .lifecycle
        .history(&v.caller, &name, 10)
        .await?
        .iter()
        .map(HistoryRow::of)
        .collect();
    let (policy, policy_from) = match &d.effective_policy {
        None => (Vec::new(), String::new()),
        Some(p) => (
            p.ports
                .iter()
                .map(|port| PolicyLine {
                    port: format!("{}/{}", port.number, port.protocol),
                    sources: port
                        .allowed_source_address_prefixes
                        .clone()
                        .or_else(|| port.allowed_source_address_prefix.clone().map(|p| vec![p]))
                        .unwrap_or_default()
                        .join(", "),
                    max: port.max_request_access_duration.clone(),
                    approval: if port.approval.is_some() {
                        "approval required".into()
                    } else {
                        "approved by policy".into()
                    },
                })
                .collect(),
            format!("{} {}", p.scope.as_str(), p.name),
        ),
    };
    Ok(html(
        StatusCode::OK,
        &VmPage {
            chrome: v.chrome("jit"),
            name: d.name,
            resource_group: d.resource_group,
            addresses: d.addresses.join(", "),
            policy,
            policy_from,
            history,
        },
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    status: Option<String>,
    requester: Option<String>,
    /// Only requests that started on or after this day (YYYY-MM-DD, UTC).
    since: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/history.html")]
struct HistoryPage {
    chrome: Chrome,
    vm: String,
    history: Vec<HistoryRow>,
    statuses: Vec<&'static str>,
    status: String,
    requester: String,
    since: String,
}

/// How many requests the history page reads before filtering.
const HISTORY_LIMIT: i64 = 500;

async fn history(
    State(st): State<AppState>,
    v: Viewer,
    Path(vm): Path<String>,
    Q(q): Q<HistoryQuery>,
) -> PageResult {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<PortStatus>() {
            Ok(s) => Some(s),
            Err(e) => {
                return Err(refuse(jitgate_api::ErrorCode::InvalidQuery, e.to_string()));
            }
        },
    };
    let since_ms = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(d) => match jitgate_api::time::parse(&format!("{d}T00:00:00Z")) {
            Ok(ms) => Some(ms),
            Err(_) => {
                return Err(refuse(
                    jitgate_api::ErrorCode::InvalidQuery,
                    format!("since {d:?} is not a day (YYYY-MM-DD)"),
                ));
            }
        },
    };
    let all = st
        .app
        .lifecycle
        .history(&v.caller, &vm, HISTORY_LIMIT)
        .await?;
    let requester = q.requester.unwrap_or_default();
    let history = all
        .iter()
        .filter(|r| status.as_ref().is_none_or(|s| &r.status == s))
        .filter(|r| requester.is_empty() || r.requestor == requester)
        .filter(|r| {
            since_ms
                .is_none_or(|s| jitgate_api::time::parse(&r.start_time_utc).is_ok_and(|t| t >= s))
        })
        .map(HistoryRow::of)
        .collect();
    Ok(html(
        StatusCode::OK,
        &HistoryPage {
            chrome: v.chrome("jit"),
            vm,
            history,
            statuses: [
                PortStatus::PendingApproval,
                PortStatus::Initiated,
                PortStatus::Applied,
                PortStatus::Denied,
                PortStatus::Revoked,
            ]
            .iter()
            .map(|s| s.as_str())
            .collect(),
            status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
            requester,
            since: q.since.unwrap_or_default(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitgate_api::PolicyScope;

    fn vm(policy: bool, status: AgentConnection, problems: &[&str]) -> Vm {
        Vm {
            name: "web1".into(),
            resource_group: "prod".into(),
            addresses: vec![],
            policy_source: policy.then_some(PolicyScope::VirtualMachine),
            status,
            problems: problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn each_vm_is_in_exactly_one_tab() {
        use AgentConnection as A;
        assert_eq!(classify(&vm(false, A::Online, &[])).0, Tab::NotConfigured);
        assert_eq!(classify(&vm(true, A::Online, &[])).0, Tab::Configured);
        assert_eq!(classify(&vm(true, A::Offline, &[])).0, Tab::Configured);
        assert_eq!(
            classify(&vm(true, A::Degraded, &["no status report since x"])).0,
            Tab::Configured
        );
        let (t, why) = classify(&vm(
            true,
            A::Degraded,
            &["enforcement detached: no interface"],
        ));
        assert_eq!(t, Tab::Unsupported);
        assert!(why.is_some_and(|w| w.contains("detached")));
        assert_eq!(classify(&vm(true, A::NoAgent, &[])).0, Tab::Unsupported);
        assert_eq!(classify(&vm(true, A::Revoked, &[])).0, Tab::Unsupported);
        assert_eq!(classify(&vm(false, A::NoAgent, &[])).0, Tab::NotConfigured);
    }
}
