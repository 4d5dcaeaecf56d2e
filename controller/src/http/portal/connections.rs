//! A VM's connections: who connected, from where, when, under which request and
//! justification (or break-glass, and by whom), from the records its agents delivered; the
//! denied attempts with the kernel's reason on request; exported exactly as
//! `GET /api/v1/virtualMachines/{vm}/connections` answers.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use jitgate_api::{Connection, ConnectionOutcome, ErrorCode, GrantOrigin, ViewQuery};
use serde::Deserialize;

use crate::http::extract::Q;
use crate::http::portal::page::{
    Chrome, PageError, PageResult, export, html, refuse, some, time_field, url_path, when_utc,
};
use crate::http::portal::session::Viewer;
use crate::http::state::AppState;

/// Connections per page.
const PAGE: i64 = 100;
/// Most connections one export carries (the API's largest `limit`).
const EXPORT_MAX: i64 = 100_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vms/{vm}/connections", get(list))
        .route("/vms/{vm}/connections/export", get(download))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Filters {
    /// `1`: the denied attempts too.
    denied: Option<String>,
    /// UTC, `YYYY-MM-DDTHH:MM` or RFC 3339; `to` exclusive.
    from: Option<String>,
    to: Option<String>,
    /// Export only: `csv` or `json`.
    format: Option<String>,
}

impl Filters {
    fn denied(&self) -> Result<bool, PageError> {
        match some(&self.denied).as_deref() {
            None | Some("0") => Ok(false),
            Some("1") => Ok(true),
            Some(other) => Err(refuse(
                ErrorCode::InvalidQuery,
                format!("denied {other:?}: 1 or 0"),
            )),
        }
    }

    /// The API's query for these filters.
    fn query(&self, limit: i64) -> Result<ViewQuery, PageError> {
        Ok(ViewQuery {
            from: time_field("from", &self.from)?,
            to: time_field("to", &self.to)?,
            limit: Some(limit),
            denied: self.denied()?,
            ..ViewQuery::default()
        })
    }

    /// The filters as a query string (`to` replaced by `to` when given, `format` left out).
    fn pairs(&self, denied: bool, to: Option<&str>) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if denied {
            s.append_pair("denied", "1");
        }
        if let Some(f) = some(&self.from) {
            s.append_pair("from", &f);
        }
        if let Some(t) = to.map(String::from).or_else(|| some(&self.to)) {
            s.append_pair("to", &t);
        }
        s.finish()
    }
}

struct Row {
    time: String,
    denied: bool,
    source: String,
    port: String,
    /// The request the grant belongs to (a link), if any.
    request: Option<String>,
    /// Who: the requestor, or the break-glass actor.
    who: String,
    /// Under what: "request" (and its grant's connection limit), "break-glass", or why it
    /// was denied.
    under: String,
    justification: String,
}

impl Row {
    fn of(c: &Connection) -> Row {
        let text = |o: &Option<String>| o.clone().unwrap_or_default();
        let denied = c.outcome == ConnectionOutcome::Denied;
        let under = if denied {
            format!(
                "denied: {}",
                c.reason.as_deref().unwrap_or("no reason given")
            )
        } else {
            match c.grant_origin {
                Some(GrantOrigin::Controller) => match c.max_connections {
                    Some(m) => format!("request, at most {} new connection(s)", m.get()),
                    None => "request".into(),
                },
                Some(GrantOrigin::Local) => match c.max_connections {
                    Some(m) => format!(
                        "break-glass on the host, at most {} new connection(s)",
                        m.get()
                    ),
                    None => "break-glass on the host".into(),
                },
                _ => match &c.grant_id {
                    Some(g) => format!("grant {g}, unknown to this controller"),
                    None => "no grant named".into(),
                },
            }
        };
        Row {
            time: when_utc(&c.time_utc),
            denied,
            source: text(&c.source),
            port: match (&c.port, &c.protocol) {
                (Some(p), Some(proto)) => format!("{p}/{proto}"),
                (Some(p), None) => p.to_string(),
                _ => String::new(),
            },
            request: c.request_id.clone(),
            who: text(&c.requestor),
            under,
            justification: text(&c.justification),
        }
    }
}

#[derive(Template)]
#[template(path = "portal/connections.html")]
struct ConnectionsPage {
    chrome: Chrome,
    vm: String,
    rows: Vec<Row>,
    denied: bool,
    from: String,
    to: String,
    /// The filters with the toggle flipped.
    toggle: String,
    /// The filters, for the export links.
    query: String,
    next: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    v: Viewer,
    Path(vm): Path<String>,
    Q(f): Q<Filters>,
) -> PageResult {
    let denied = f.denied()?;
    let mut rows = st
        .app
        .views
        .connections(&v.caller, &vm, &f.query(PAGE + 1)?)
        .await?;
    // The next page ends before the oldest time shown (`to` is exclusive). Connections of
    // that same millisecond beyond this page would be skipped: when one follows, they all
    // go to the next page (whose `to` is one millisecond later), unless they fill the page.
    let mut next_to = None;
    if rows.len() as i64 > PAGE {
        let boundary = |c: &Connection| jitgate_api::time::parse(&c.time_utc).ok();
        let last = rows.get(PAGE as usize - 1).and_then(boundary);
        let after = rows.get(PAGE as usize).and_then(boundary);
        rows.truncate(PAGE as usize);
        if let Some(last) = last {
            if after == Some(last) && rows.iter().any(|c| boundary(c) != Some(last)) {
                rows.retain(|c| boundary(c) != Some(last));
                next_to = Some(last + 1);
            } else {
                next_to = Some(last);
            }
        }
    }
    let next = next_to.map(|ms| {
        format!(
            "/vms/{}/connections?{}",
            url_path(&vm),
            f.pairs(denied, Some(&jitgate_api::time::format(ms)))
        )
    });
    let vm_path = url_path(&vm);
    let toggle = format!("/vms/{vm_path}/connections?{}", f.pairs(!denied, None));
    Ok(html(
        StatusCode::OK,
        &ConnectionsPage {
            chrome: v.chrome("jit"),
            rows: rows.iter().map(Row::of).collect(),
            denied,
            from: some(&f.from).unwrap_or_default(),
            to: some(&f.to).unwrap_or_default(),
            toggle,
            query: f.pairs(denied, None),
            next,
            vm,
        },
    ))
}

/// The filtered connections, newest first, exactly as the API returns them for the same
/// filter and `limit=100000` (`format=csv` or `json`).
async fn download(
    State(st): State<AppState>,
    v: Viewer,
    Path(vm): Path<String>,
    Q(f): Q<Filters>,
) -> PageResult {
    let list = st
        .app
        .views
        .connections(&v.caller, &vm, &f.query(EXPORT_MAX)?)
        .await?;
    export(
        some(&f.format).as_deref(),
        "jitgate-connections",
        list,
        crate::views::to_csv,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admitted_row_names_its_grants_connection_limit() {
        let c = Connection {
            max_connections: jitgate_api::MaxConnections::new(2),
            ..jitgate_api::agents::example_connection()
        };
        assert_eq!(Row::of(&c).under, "request, at most 2 new connection(s)");
        let unlimited = Connection {
            max_connections: None,
            ..c
        };
        assert_eq!(Row::of(&unlimited).under, "request");
    }
}
