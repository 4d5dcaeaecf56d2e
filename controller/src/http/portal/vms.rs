//! The "Just-in-time VM access" page (three tabs), a VM's page with Connect, and a VM's
//! request history.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use jitgate_api::{PortStatus, RequestView};
use serde::Deserialize;

use crate::http::extract::Q;
use crate::http::portal::fleet::HookRow;
use crate::http::portal::page::{
    Chrome, PageResult, agent_words, html, policy_sources, refuse, see_other, when, when_utc,
};
use crate::http::portal::session::Viewer;
use crate::http::state::AppState;
use crate::inventory::{JitEntry, JitFilter, JitTab};
use crate::store::requests::HistoryFilter;

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

/// A tab's title.
fn title(t: JitTab) -> &'static str {
    match t {
        JitTab::Configured => "Configured",
        JitTab::NotConfigured => "Not configured",
        JitTab::Unsupported => "Unsupported",
    }
}

/// The agent's state in words: "online", "degraded: ...", "offline since ...".
fn agent_state(e: &JitEntry) -> String {
    agent_words(&e.agent, &e.problems, e.last_seen_ms)
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
    title: &'static str,
    tab: &'static str,
    tabs: Vec<TabLink>,
    rows: Vec<Row>,
    q: String,
    rg: String,
    owner: String,
    next: Option<String>,
    is_configured: bool,
    is_not_configured: bool,
}

fn query_string(tab: JitTab, q: &str, rg: &str, owner: &str, after: Option<&str>) -> String {
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
        None => JitTab::Configured,
        Some(t) => JitTab::parse(t).ok_or_else(|| {
            refuse(
                jitgate_api::ErrorCode::InvalidQuery,
                format!("no tab {t:?}: configured, not-configured or unsupported"),
            )
        })?,
    };
    let filter = JitFilter {
        name_part: query.q.unwrap_or_default(),
        group: query.rg.unwrap_or_default(),
        owner: query.owner.unwrap_or_default(),
    };
    let after = query.after.unwrap_or_default();
    let list = st
        .app
        .inventory
        .jit_list(&v.caller, &filter, tab, &after, PAGE)
        .await?;
    let mut rows: Vec<Row> = list
        .rows
        .iter()
        .map(|e| Row {
            name: e.name.clone(),
            resource_group: e.resource_group.clone(),
            owner: e.owner.clone(),
            agent: agent_state(e),
            reason: e.reason.clone().unwrap_or_default(),
            approved: 0,
            last_access: "-".into(),
            last_user: "-".into(),
        })
        .collect();
    if tab == JitTab::Configured {
        let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
        let since = jitgate_api::time::now_ms() - RECENT_DAYS * 86_400_000;
        let recent = st.app.lifecycle.recent_access(since, &names).await?;
        for row in &mut rows {
            if let Some(r) = recent.get(&row.name) {
                row.approved = r.approved;
                row.last_access = when(r.last_ms);
                row.last_user = r.last_user.clone();
            }
        }
    }
    let (q, rg, owner) = (filter.name_part, filter.group, filter.owner);
    let next = list
        .more
        .then(|| {
            rows.last()
                .map(|r| query_string(tab, &q, &rg, &owner, Some(&r.name)))
        })
        .flatten();
    let tabs = JitTab::ALL
        .iter()
        .zip(list.counts)
        .map(|(t, count)| TabLink {
            title: title(*t),
            href: query_string(*t, &q, &rg, &owner, None),
            count,
            current: *t == tab,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &JitPage {
            chrome: v.chrome("jit"),
            title: title(tab),
            tab: tab.as_str(),
            tabs,
            rows,
            q,
            rg,
            owner,
            next,
            is_configured: tab == JitTab::Configured,
            is_not_configured: tab == JitTab::NotConfigured,
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
    /// Where its (newest) agent's program runs, per interface.
    hooks: Vec<HookRow>,
}

async fn vm_page(State(st): State<AppState>, v: Viewer, Path(name): Path<String>) -> PageResult {
    let d = st.app.inventory.vm(&v.caller, &name).await?;
    // The VM comes with its agent (one query): no second look-up of the agent.
    let hooks = d
        .agent
        .as_ref()
        .map(|a| a.hooks.iter().map(HookRow::of).collect())
        .unwrap_or_default();
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
                    sources: policy_sources(port),
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
            hooks,
        },
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    status: Option<String>,
    requester: Option<String>,
    /// Only requests made on or after this day (YYYY-MM-DD, UTC).
    since: Option<String>,
    /// Keyset pagination: requests older than this sequence number.
    before: Option<i64>,
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
    /// The next (older) page.
    next: Option<String>,
}

/// Requests per history page.
const HISTORY_PAGE: i64 = 50;

async fn history(
    State(st): State<AppState>,
    v: Viewer,
    Path(vm): Path<String>,
    Q(q): Q<HistoryQuery>,
) -> PageResult {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            s.parse::<PortStatus>()
                .map_err(|e| refuse(jitgate_api::ErrorCode::InvalidQuery, e.to_string()))?,
        ),
    };
    let since = q.since.clone().unwrap_or_default();
    let since_ms = match since.as_str() {
        "" => None,
        d => Some(
            jitgate_api::time::parse(&format!("{d}T00:00:00Z")).map_err(|_| {
                refuse(
                    jitgate_api::ErrorCode::InvalidQuery,
                    format!("since {d:?} is not a day (YYYY-MM-DD)"),
                )
            })?,
        ),
    };
    let requester = q.requester.unwrap_or_default();
    let filter = HistoryFilter {
        status: status.clone(),
        requestor: (!requester.is_empty()).then(|| requester.clone()),
        since_ms,
        before_seq: q.before,
    };
    let (page, before) = st
        .app
        .lifecycle
        .history_page(&v.caller, &vm, &filter, HISTORY_PAGE)
        .await?;
    let next = before.map(|b| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, val) in [
            ("status", status.as_ref().map_or("", |s| s.as_str())),
            ("requester", requester.as_str()),
            ("since", since.as_str()),
        ] {
            if !val.is_empty() {
                s.append_pair(k, val);
            }
        }
        s.append_pair("before", &b.to_string());
        format!(
            "/vms/{}/requests?{}",
            url::form_urlencoded::byte_serialize(vm.as_bytes()).collect::<String>(),
            s.finish()
        )
    });
    Ok(html(
        StatusCode::OK,
        &HistoryPage {
            chrome: v.chrome("jit"),
            history: page.iter().map(HistoryRow::of).collect(),
            vm,
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
            since,
            next,
        },
    ))
}
