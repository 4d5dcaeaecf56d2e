//! The Fleet page (every agent within the viewer's scope: its state as the API defines it,
//! last seen, clock offset, interfaces, protected ports, grants, audit head, version),
//! filtered and keyset-paginated, and an agent's page with its delivered audit records and
//! their verification.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::{AgentChainReport, AgentConnection, ErrorCode};
use serde::Deserialize;

use crate::fleet::{FleetEntry, SCAN_MAX};
use crate::http::extract::Q;
use crate::http::portal::page::{
    Chrome, PageResult, agent_words, html, refuse, see_other, some, url_path, when, when_utc,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

/// Agents per page.
const PAGE: usize = 50;
/// Records per page of an agent's audit trail.
const RECORDS: i64 = 50;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fleet", get(list))
        .route("/fleet/{agent}", get(agent_page))
        .route("/fleet/{agent}/verify", post(verify))
        .route("/vms/{vm}/agent", get(vm_agent))
}

/// The statuses the filter offers, as the API names them.
const STATUSES: [AgentConnection; 4] = [
    AgentConnection::Online,
    AgentConnection::Degraded,
    AgentConnection::Offline,
    AgentConnection::Revoked,
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Part of the VM's name.
    q: Option<String>,
    /// online, degraded, offline or revoked.
    status: Option<String>,
    /// Keyset pagination: the (VM name, agent id) the previous page ended at.
    after_vm: Option<String>,
    after_id: Option<String>,
}

/// One agent as a line of the list (and the head of its own page).
struct Line {
    id: String,
    vm: String,
    resource_group: String,
    state: String,
    degraded: bool,
    last_seen: String,
    clock_offset: String,
    interfaces: String,
    protected: String,
    grants: String,
    audit_head: String,
    delivered: String,
    version: String,
}

impl Line {
    fn of(e: &FleetEntry) -> Line {
        let r = e.report.as_ref();
        let not_reported = || "not reported".to_string();
        let join = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        Line {
            id: e.id.clone(),
            vm: e.vm.clone(),
            resource_group: e.resource_group.clone(),
            state: agent_words(&e.connection, &e.problems, e.last_seen_ms),
            degraded: e.connection != AgentConnection::Online,
            last_seen: e.last_seen_ms.map_or_else(|| "never".into(), when),
            clock_offset: r
                .and_then(|h| h.clock_offset_ms)
                .map_or_else(not_reported, |ms| format!("{ms:+} ms")),
            interfaces: r.map_or_else(not_reported, |h| join(&h.interfaces)),
            protected: r.map_or_else(not_reported, |h| join(&h.protected_ports)),
            grants: r.map_or_else(not_reported, |h| h.active_grants.to_string()),
            audit_head: r.map_or_else(not_reported, |h| {
                let short: String = h.audit_head.chars().take(12).collect();
                format!("record {} ({short}…)", h.audit_seq)
            }),
            delivered: e
                .delivered_seq
                .map_or_else(|| "none".into(), |s| format!("up to record {s}")),
            version: match &e.version {
                Some(v) => format!("{v} (protocol {})", e.protocol),
                None => format!("not known (protocol {})", e.protocol),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "portal/fleet.html")]
struct FleetPage {
    chrome: Chrome,
    rows: Vec<Line>,
    q: String,
    status: String,
    statuses: Vec<&'static str>,
    next: Option<String>,
    /// Set when the page stopped after looking at [`SCAN_MAX`] agents.
    scanned: Option<usize>,
}

fn parse_status(s: &str) -> Result<AgentConnection, crate::http::portal::page::PageError> {
    STATUSES
        .iter()
        .find(|c| c.as_str() == s)
        .cloned()
        .ok_or_else(|| {
            refuse(
                ErrorCode::InvalidQuery,
                format!("status {s:?}: online, degraded, offline or revoked"),
            )
        })
}

async fn list(State(st): State<AppState>, v: Viewer, Q(q): Q<ListQuery>) -> PageResult {
    let name = some(&q.q).unwrap_or_default();
    let status = some(&q.status);
    let connection = status.as_deref().map(parse_status).transpose()?;
    let after = (
        q.after_vm.clone().unwrap_or_default(),
        q.after_id.clone().unwrap_or_default(),
    );
    let page = st
        .app
        .fleet
        .page(&v.caller, &name, connection, after, PAGE)
        .await?;
    let next = page.next.as_ref().map(|(vm, id)| {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if !name.is_empty() {
            s.append_pair("q", &name);
        }
        if let Some(st) = &status {
            s.append_pair("status", st);
        }
        s.append_pair("after_vm", vm);
        s.append_pair("after_id", id);
        format!("/fleet?{}", s.finish())
    });
    let scanned = (page.next.is_some() && page.agents.len() < PAGE && page.scanned >= SCAN_MAX)
        .then_some(page.scanned);
    Ok(html(
        StatusCode::OK,
        &FleetPage {
            chrome: v.chrome("fleet"),
            rows: page.agents.iter().map(Line::of).collect(),
            q: name,
            status: status.unwrap_or_default(),
            statuses: STATUSES.iter().map(|c| c.as_str()).collect(),
            next,
            scanned,
        },
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RecordsQuery {
    /// Keyset pagination: records before (seq, id).
    before_seq: Option<i64>,
    before_id: Option<String>,
}

/// A delivered record as a row.
struct Record {
    seq: i64,
    time: String,
    kind: String,
    actor: String,
    received: String,
    line: String,
}

impl Record {
    fn of(r: &crate::store::agent_audit::AgentLineRow) -> Record {
        let v: serde_json::Value = serde_json::from_str(&r.line).unwrap_or_default();
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let line = serde_json::from_str::<serde_json::Value>(&r.line)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| r.line.clone());
        Record {
            seq: r.seq,
            time: when_utc(&text("time")),
            kind: text("kind"),
            actor: text("actor"),
            received: when(r.received_ms),
            line,
        }
    }
}

/// A verification of one agent's records, in words.
struct Verdict {
    ok: bool,
    summary: String,
}

impl Verdict {
    fn of(r: Option<&AgentChainReport>) -> Verdict {
        let Some(r) = r else {
            return Verdict {
                ok: false,
                summary: "This agent is not one of its VM's agents any more: nothing to verify."
                    .into(),
            };
        };
        if !r.ok {
            return Verdict {
                ok: false,
                summary: format!(
                    "Verification FAILED at record {}: {}. The records before it verified.",
                    r.first_bad_seq
                        .map_or_else(|| "?".into(), |s| s.to_string()),
                    r.problem.as_deref().unwrap_or("unknown problem")
                ),
            };
        }
        let (Some(first), Some(last)) = (r.first_seq, r.last_seq) else {
            return Verdict {
                ok: true,
                summary: "No records delivered yet: nothing to verify.".into(),
            };
        };
        let signed = match r.covered_seq {
            Some(c) => format!(
                "{} signed checkpoints match the agent's certificate (issued by this \
                 controller's CA); records up to {c} are under its signature",
                r.checkpoints
            ),
            None => "no signed checkpoint among them yet".into(),
        };
        let uncovered = if r.uncovered > 0 {
            format!(
                "; the {} records after it are chained but not yet signed",
                r.uncovered
            )
        } else {
            String::new()
        };
        Verdict {
            ok: true,
            summary: format!(
                "Verified: records {first} to {last} ({} records) chain correctly, each hash \
                 recomputed; {signed}{uncovered}.",
                r.records
            ),
        }
    }
}

/// Where the program runs on one interface, as a table row (the agent's words are text:
/// the template escapes them).
pub struct HookRow {
    pub interface: String,
    pub hook: String,
    pub position: String,
    pub ahead: String,
    /// Empty: it runs first there.
    pub problem: String,
}

impl HookRow {
    pub fn of(h: &jitgate_api::InterfaceHook) -> HookRow {
        HookRow {
            interface: h.interface.clone(),
            hook: format!("{} ({})", h.hook, h.mode),
            position: format!("{} of {}", h.position, h.programs),
            ahead: h.ahead_words(),
            problem: h.problem_words().unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/fleet_agent.html")]
struct AgentPage {
    chrome: Chrome,
    a: Line,
    hooks: Vec<HookRow>,
    enrolled: String,
    listening: String,
    unattached: String,
    problems: String,
    records: Vec<Record>,
    next: Option<String>,
    verdict: Option<Verdict>,
}

async fn render(
    st: &AppState,
    v: &Viewer,
    agent: &str,
    q: &RecordsQuery,
    verdict: Option<Verdict>,
) -> PageResult {
    let e = st.app.fleet.entry_of(&v.caller, agent).await?;
    let before = (
        q.before_seq.unwrap_or(i64::MAX),
        q.before_id.as_deref().unwrap_or(""),
    );
    let mut rows = st
        .app
        .views
        .agent_records(&v.caller, &e.vm, &e.id, before, RECORDS + 1)
        .await?;
    let more = rows.len() as i64 > RECORDS;
    rows.truncate(RECORDS as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => {
            let mut s = url::form_urlencoded::Serializer::new(String::new());
            s.append_pair("before_seq", &last.seq.to_string());
            s.append_pair("before_id", &last.id);
            Some(format!("/fleet/{}?{}", url_path(&e.id), s.finish()))
        }
        _ => None,
    };
    let r = e.report.as_ref();
    let page = AgentPage {
        chrome: v.chrome("fleet"),
        a: Line::of(&e),
        hooks: e.hooks.iter().map(HookRow::of).collect(),
        enrolled: when(e.enrolled_ms),
        listening: r.map(|h| h.listening.join(", ")).unwrap_or_default(),
        unattached: r
            .map(|h| {
                h.unattached
                    .iter()
                    .map(|u| format!("{} ({})", u.interface, u.addresses.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default(),
        problems: e.problems.join("; "),
        records: rows.iter().map(Record::of).collect(),
        next,
        verdict,
    };
    Ok(html(StatusCode::OK, &page))
}

async fn agent_page(
    State(st): State<AppState>,
    v: Viewer,
    Path(agent): Path<String>,
    Q(q): Q<RecordsQuery>,
) -> PageResult {
    render(&st, &v, &agent, &q, None).await
}

/// Verifies the agent's delivered records (the chain and its signed checkpoints, as
/// `GET /api/v1/virtualMachines/{vm}/agentAudit/verify` does) and shows the page with the
/// result. A form POST: it reads every record the agent delivered, so no link or prefetch
/// starts it.
async fn verify(State(st): State<AppState>, Path(agent): Path<String>, p: Posted) -> PageResult {
    let e = st.app.fleet.entry_of(&p.viewer.caller, &agent).await?;
    let report = st
        .app
        .views
        .verify_agent(&p.viewer.caller, &e.vm, &e.id)
        .await?;
    let verdict = Verdict::of(report.as_ref());
    render(
        &st,
        &p.viewer,
        &agent,
        &RecordsQuery::default(),
        Some(verdict),
    )
    .await
}

/// A VM's agent: its newest one's page.
async fn vm_agent(State(st): State<AppState>, v: Viewer, Path(vm): Path<String>) -> PageResult {
    match st.app.fleet.newest_of_vm(&v.caller, &vm).await? {
        Some(id) => Ok(see_other(&format!("/fleet/{}", url_path(&id)))),
        None => Err(refuse(
            ErrorCode::AgentNotFound,
            format!("no agent was ever enrolled on VM {vm}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_in_words() {
        let mut r = AgentChainReport {
            agent_id: "a".into(),
            ok: true,
            records: 5,
            first_seq: Some(1),
            last_seq: Some(5),
            checkpoints: 1,
            covered_seq: Some(3),
            uncovered: 2,
            first_bad_seq: None,
            problem: None,
        };
        let v = Verdict::of(Some(&r));
        assert!(v.ok);
        assert!(v.summary.contains("records 1 to 5"), "{}", v.summary);
        assert!(
            v.summary.contains("the 2 records after it"),
            "{}",
            v.summary
        );
        r.ok = false;
        r.first_bad_seq = Some(4);
        r.problem = Some("record 4 was altered".into());
        let v = Verdict::of(Some(&r));
        assert!(!v.ok);
        assert!(v.summary.contains("FAILED at record 4"), "{}", v.summary);
        assert!(parse_status("online").is_ok());
        assert!(parse_status("none").is_err());
    }
}
