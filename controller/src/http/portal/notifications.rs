//! The Notifications page (admins): every notification sink the viewer may manage, where it
//! sends (redacted as the API shows it), what it receives, where it was declared, and its
//! delivery state as `GET /api/v1/notify/status` gives it; a sink's page with its dead
//! deliveries, newest first, keyset-paginated; **Retry**, **Discard** and **Send a test**
//! as forms, through the same service calls as `/api/v1/notify/retry`, `/discard` and
//! `/sinks/{name}/test` (rights and the activity log entry in one place).

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::{DeliveryFailure, ErrorCode, SinkInfo, SinkStatus, SinkTarget, SinkTestResult};
use serde::Deserialize;

use crate::http::extract::Q;
use crate::http::portal::page::{Chrome, PageResult, html, refuse, url_path, when, when_utc};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;
use crate::store::notify::{CONFIG_SINK_OWNER, DeadRow};

/// Dead deliveries per page of a sink.
const DEAD_PAGE: i64 = 50;
/// The most characters of a failure's detail shown: it may carry words from a remote
/// server (a TLS or DNS error), so it is cut, cleaned and escaped.
const DETAIL_CHARS: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/notifications", get(overview))
        .route("/notifications/{sink}", get(sink_page))
        .route("/notifications/{sink}/retry", post(retry))
        .route("/notifications/{sink}/discard", post(discard))
        .route("/notifications/{sink}/test", post(test))
}

/// `s` cut to `n` characters (with "…" when cut), control characters and the Unicode
/// bidirectional controls shown as U+FFFD: text from elsewhere as one short line that reads
/// in the order it is written (the templates escape it).
fn short(s: &str, n: usize) -> String {
    let bidi = |c: char| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}');
    let mut out: String = s
        .chars()
        .take(n)
        .map(|c| {
            if c.is_control() || bidi(c) {
                '\u{FFFD}'
            } else {
                c
            }
        })
        .collect();
    if s.chars().nth(n).is_some() {
        out.push('…');
    }
    out
}

/// How long ago `ms` was, in words ("4 min 05 s", "2 h 10 min", "3 d 4 h").
fn age(ms: i64, now_ms: i64) -> String {
    let s = ((now_ms - ms) / 1000).max(0);
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {:02} s", s % 60)
    } else {
        format!("{s} s")
    }
}

/// A failure in words: "http-5xx (5xx): HTTP 503".
fn failure_words(kind: &str, status: Option<&str>, detail: Option<&str>) -> String {
    let mut w = short(kind, 40);
    if let Some(s) = status {
        w.push_str(&format!(" ({})", short(s, 8)));
    }
    if let Some(d) = detail.filter(|d| !d.is_empty()) {
        w.push_str(": ");
        w.push_str(&short(d, DETAIL_CHARS));
    }
    w
}

/// One sink as the pages show it.
struct SinkLine {
    name: String,
    kind: String,
    target: String,
    events: String,
    scope: String,
    to_group: Option<String>,
    secret: Option<String>,
    declared: String,
    updated: String,
    queued: i64,
    in_flight: i64,
    retrying: i64,
    dead: i64,
    delivered: i64,
    last_delivered: String,
    oldest_pending: String,
    last_failure: Option<String>,
}

impl SinkLine {
    fn of(info: &SinkInfo, status: Option<&SinkStatus>, now_ms: i64) -> SinkLine {
        let v = &info.sink;
        let kind = match v.format.as_str() {
            "webhook" => "webhook (signed JSON)".to_string(),
            "slack" => "Slack".to_string(),
            "teams" => "Microsoft Teams".to_string(),
            "email" => "email".to_string(),
            other => short(other, 32),
        };
        let target = match &v.target {
            SinkTarget::Url(u) => u.clone(),
            SinkTarget::Addresses(a) => a.join(", "),
        };
        let declared = if info.created_by == CONFIG_SINK_OWNER {
            "controller.toml".to_string()
        } else {
            format!("the API, by {}", info.created_by)
        };
        let n = |f: fn(&SinkStatus) -> i64| status.map_or(0, f);
        let failure = |f: &DeliveryFailure| {
            format!(
                "{}, {}",
                failure_words(&f.kind, f.status_class.as_deref(), f.detail.as_deref()),
                when_utc(&f.time_utc)
            )
        };
        SinkLine {
            name: v.name.clone(),
            kind,
            target,
            events: if v.events.is_empty() {
                "every event type".into()
            } else {
                v.events.join(", ")
            },
            scope: v.scope.clone().unwrap_or_else(|| "every VM".into()),
            to_group: v.to_group.clone(),
            secret: v.secret.clone(),
            declared,
            updated: when_utc(&info.updated_time_utc),
            queued: n(|s| s.queued),
            in_flight: n(|s| s.in_flight),
            retrying: n(|s| s.retrying),
            dead: n(|s| s.dead),
            delivered: n(|s| s.delivered),
            last_delivered: status
                .and_then(|s| s.last_delivered_utc.as_deref())
                .map_or_else(|| "none among the latest deliveries".into(), when_utc),
            oldest_pending: status
                .and_then(|s| s.oldest_pending_utc.as_deref())
                .and_then(|t| jitgate_api::time::parse(t).ok())
                .map_or_else(
                    || "nothing waiting".into(),
                    |ms| format!("{} ago ({})", age(ms, now_ms), when(ms)),
                ),
            last_failure: status.and_then(|s| s.last_failure.as_ref()).map(failure),
        }
    }
}

/// What a dead delivery concerns, as words and (when the portal has a page for it) a link.
struct Concern {
    text: String,
    href: Option<String>,
}

impl Concern {
    /// From an event's order key (`request:ID`, `vm:GROUP/VM`, `policy:GROUP[/VM]`).
    fn of(key: &str) -> Concern {
        let plain = |text: String| Concern { text, href: None };
        if let Some(id) = key.strip_prefix("request:") {
            return Concern {
                text: format!("request {id}"),
                href: Some(format!("/requests/{}", url_path(id))),
            };
        }
        if let Some(rest) = key.strip_prefix("vm:")
            && let Some((group, vm)) = rest.split_once('/')
        {
            return Concern {
                text: format!("VM {vm} (resource group {group})"),
                href: Some(format!("/vms/{}", url_path(vm))),
            };
        }
        if let Some(rest) = key.strip_prefix("policy:") {
            return plain(match rest.split_once('/') {
                Some((group, vm)) => format!("the policy of VM {vm} (resource group {group})"),
                None => format!("the policy of resource group {rest}"),
            });
        }
        plain(short(key, 120))
    }
}

/// A dead delivery as a row.
struct Dead {
    seq: i64,
    event_type: String,
    event_id: String,
    concern: Concern,
    written: String,
    attempts: i64,
    error: String,
    last_attempt: String,
}

impl Dead {
    fn of(r: &DeadRow) -> Dead {
        Dead {
            seq: r.event_seq,
            event_type: short(&r.event_type, 64),
            event_id: short(&r.event_id, 64),
            concern: Concern::of(&r.order_key),
            written: when(r.created_at),
            attempts: r.attempts,
            error: match &r.last_kind {
                Some(k) => failure_words(k, r.last_status.as_deref(), r.last_detail.as_deref()),
                None => "no attempt recorded".into(),
            },
            last_attempt: r.last_attempt_at.map_or_else(|| "-".into(), when),
        }
    }
}

/// What an action did, in words.
struct Notice {
    ok: bool,
    text: String,
}

impl Notice {
    fn retried(n: u64) -> Notice {
        Notice {
            ok: true,
            text: match n {
                0 => "No dead delivery to retry: nothing was changed.".into(),
                1 => "1 delivery queued again: the sink is tried again within seconds.".into(),
                n => {
                    format!("{n} deliveries queued again: the sink is tried again within seconds.")
                }
            },
        }
    }

    fn discarded(n: u64) -> Notice {
        Notice {
            ok: true,
            text: match n {
                0 => "No dead delivery to discard: nothing was changed.".into(),
                1 => "1 dead delivery discarded: it will not be sent.".into(),
                n => format!("{n} dead deliveries discarded: they will not be sent."),
            },
        }
    }

    fn tested(r: &SinkTestResult) -> Notice {
        let event = short(&r.event_type, 64);
        if r.delivered {
            Notice {
                ok: true,
                text: format!(
                    "Test delivered: an example {event} event reached the sink (answer {}).",
                    r.status_class.as_deref().map_or("accepted", |s| s)
                ),
            }
        } else {
            Notice {
                ok: false,
                text: format!(
                    "Test not delivered: the example {event} event failed with {}.",
                    failure_words(&r.kind, r.status_class.as_deref(), r.detail.as_deref())
                ),
            }
        }
    }
}

#[derive(Template)]
#[template(path = "portal/notifications.html")]
struct OverviewPage {
    chrome: Chrome,
    sinks: Vec<SinkLine>,
}

/// Every sink the viewer may manage, with its delivery state.
async fn overview(State(st): State<AppState>, v: Viewer) -> PageResult {
    let n = &st.app.notifications;
    let infos = n.list(&v.caller).await?;
    let statuses = n.status(&v.caller).await?;
    let now = jitgate_api::time::now_ms();
    let sinks = infos
        .iter()
        .map(|i| {
            let s = statuses.iter().find(|s| s.name == i.sink.name);
            SinkLine::of(i, s, now)
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &OverviewPage {
            chrome: v.chrome("notifications"),
            sinks,
        },
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    /// Keyset pagination: dead deliveries of events before this seq.
    before: Option<i64>,
}

#[derive(Template)]
#[template(path = "portal/notification_sink.html")]
struct SinkPage {
    chrome: Chrome,
    s: SinkLine,
    dead: Vec<Dead>,
    next: Option<String>,
    notice: Option<Notice>,
}

async fn render(
    st: &AppState,
    v: &Viewer,
    name: &str,
    before: Option<i64>,
    notice: Option<Notice>,
) -> PageResult {
    let n = &st.app.notifications;
    let info = n.sink_info(&v.caller, name).await?;
    let status = n
        .status(&v.caller)
        .await?
        .into_iter()
        .find(|s| s.name == info.sink.name);
    let mut rows = n
        .dead_letters(
            &v.caller,
            &info.sink.name,
            before.unwrap_or(i64::MAX),
            DEAD_PAGE + 1,
        )
        .await?;
    let more = rows.len() as i64 > DEAD_PAGE;
    rows.truncate(DEAD_PAGE as usize);
    let next = match (more, rows.last()) {
        (true, Some(last)) => Some(format!(
            "/notifications/{}?before={}",
            url_path(&info.sink.name),
            last.event_seq
        )),
        _ => None,
    };
    let now = jitgate_api::time::now_ms();
    Ok(html(
        StatusCode::OK,
        &SinkPage {
            chrome: v.chrome("notifications"),
            s: SinkLine::of(&info, status.as_ref(), now),
            dead: rows.iter().map(Dead::of).collect(),
            next,
            notice,
        },
    ))
}

async fn sink_page(
    State(st): State<AppState>,
    v: Viewer,
    Path(sink): Path<String>,
    Q(q): Q<DeadQuery>,
) -> PageResult {
    if q.before.is_some_and(|b| b < 1) {
        return Err(refuse(
            ErrorCode::InvalidQuery,
            "before: the seq of an event (a positive number)",
        ));
    }
    render(&st, &v, &sink, q.before, None).await
}

/// The sink's dead deliveries attempted again (`POST /api/v1/notify/retry` for this sink).
async fn retry(State(st): State<AppState>, Path(sink): Path<String>, p: Posted) -> PageResult {
    let n = st
        .app
        .notifications
        .retry(&p.viewer.caller, Some(&sink))
        .await?;
    render(&st, &p.viewer, &sink, None, Some(Notice::retried(n))).await
}

/// The sink's dead deliveries deleted (`POST /api/v1/notify/discard` for this sink).
async fn discard(State(st): State<AppState>, Path(sink): Path<String>, p: Posted) -> PageResult {
    let n = st
        .app
        .notifications
        .discard(&p.viewer.caller, Some(&sink))
        .await?;
    render(&st, &p.viewer, &sink, None, Some(Notice::discarded(n))).await
}

/// One example event sent now (`POST /api/v1/notify/sinks/{name}/test`).
async fn test(State(st): State<AppState>, Path(sink): Path<String>, p: Posted) -> PageResult {
    let r = st.app.notifications.test(&p.viewer.caller, &sink).await?;
    render(&st, &p.viewer, &sink, None, Some(Notice::tested(&r))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_elsewhere_is_cut_and_one_line() {
        assert_eq!(short("abc", 5), "abc");
        assert_eq!(short("abcdef", 3), "abc…");
        assert_eq!(short("a\nb\u{1b}c", 10), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(short("\u{202E}cba", 10), "\u{FFFD}cba");
        let long = "x".repeat(5000);
        assert_eq!(
            failure_words("http-5xx", Some("5xx"), Some(&long))
                .chars()
                .count(),
            "http-5xx (5xx): ".len() + DETAIL_CHARS + 1
        );
    }

    #[test]
    fn concerns_and_ages_in_words() {
        let c = Concern::of("request:42");
        assert_eq!(
            (c.text.as_str(), c.href.as_deref()),
            ("request 42", Some("/requests/42"))
        );
        let c = Concern::of("vm:prod/web1");
        assert_eq!(c.href.as_deref(), Some("/vms/web1"));
        assert_eq!(
            Concern::of("policy:prod").text,
            "the policy of resource group prod"
        );
        assert_eq!(age(0, 65_000), "1 min 05 s");
        assert_eq!(age(0, 2 * 86_400_000 + 3_600_000), "2 d 1 h");
        assert_eq!(
            Notice::retried(3).text.split(':').next(),
            Some("3 deliveries queued again")
        );
    }
}
