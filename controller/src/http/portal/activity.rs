//! The activity log page: entries newest first, filtered and keyset-paginated, each
//! expanding to its details; the filtered set exported as the API exports it (CSV, JSON);
//! and, for readers of everything, the verification panel (where the signed checkpoints
//! reach, what they do not cover yet, and a verification of the whole log on demand).

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use jitgate_api::activity::{ActivityOutcome, Operation};
use jitgate_api::{ActivityEntry, ActivityQuery, ErrorCode, VerifyReport};
use serde::Deserialize;

use crate::authz::{self, Action};
use crate::http::extract::Q;
use crate::http::portal::page::{
    Chrome, PageError, PageResult, export, html, refuse, see_other, some, time_field, when,
    when_utc,
};
use crate::http::portal::session::{Posted, Viewer};
use crate::http::state::AppState;

/// Entries per page.
const PAGE: i64 = 50;
/// Most entries one export carries (the API's limit).
const EXPORT_MAX: i64 = 100_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/activity", get(list))
        .route("/activity/export", get(download))
        .route("/activity/verify", post(verify))
        .route("/activity/verify/progress", get(progress))
}

/// The filters as the form sends them (an empty field: no filter).
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Filters {
    operation: Option<String>,
    vm: Option<String>,
    group: Option<String>,
    caller: Option<String>,
    outcome: Option<String>,
    /// UTC, `YYYY-MM-DDTHH:MM` (a datetime-local field) or RFC 3339.
    from: Option<String>,
    to: Option<String>,
    /// Keyset pagination: entries older than this sequence number.
    before: Option<i64>,
    /// Export only: `csv` or `json`.
    format: Option<String>,
}

impl Filters {
    /// The API query for these filters (checked: unknown operation or outcome refused).
    fn query(&self) -> Result<ActivityQuery, PageError> {
        let operation = some(&self.operation);
        if let Some(o) = &operation
            && !Operation::known().any(|k| k.as_str() == o)
        {
            return Err(refuse(
                ErrorCode::InvalidQuery,
                format!("operation {o:?} is not one the activity log records"),
            ));
        }
        let outcome = some(&self.outcome);
        if let Some(o) = &outcome
            && !ActivityOutcome::known().any(|k| k.as_str() == o)
        {
            return Err(refuse(
                ErrorCode::InvalidQuery,
                format!("outcome {o:?} is not Succeeded, Denied or Failed"),
            ));
        }
        Ok(ActivityQuery {
            vm: some(&self.vm),
            resource_group: some(&self.group),
            caller: some(&self.caller),
            operation,
            outcome,
            from: time_field("from", &self.from)?,
            to: time_field("to", &self.to)?,
            ..ActivityQuery::default()
        })
    }

    /// The filters as a query string (without `before` and `format`).
    fn pairs(&self) -> url::form_urlencoded::Serializer<'static, String> {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("operation", &self.operation),
            ("vm", &self.vm),
            ("group", &self.group),
            ("caller", &self.caller),
            ("outcome", &self.outcome),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = some(v) {
                s.append_pair(k, &v);
            }
        }
        s
    }
}

struct Row {
    seq: i64,
    time: String,
    operation: String,
    target: String,
    caller: String,
    address: String,
    outcome: String,
    request: String,
    /// The details' fields, labelled in words (top level of the recorded object).
    fields: Vec<Field>,
    /// The details as recorded (JSON).
    details: String,
}

/// One labelled field of an entry's details.
struct Field {
    label: String,
    value: String,
}

/// The top-level fields of an entry's details, labelled in words (`maxRequestAccessDuration`
/// → "Max request access duration"), each value as text: strings as written, lists of plain
/// values joined with commas, anything nested as compact JSON. Not an object: no fields.
fn fields_of(details: &serde_json::Value) -> Vec<Field> {
    let Some(o) = details.as_object() else {
        return Vec::new();
    };
    o.iter()
        .map(|(k, v)| Field {
            label: label_of(k),
            value: text_of(v),
        })
        .collect()
}

fn label_of(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_uppercase() && prev_lower {
            out.push(' ');
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if out.is_empty() {
            out.extend(c.to_uppercase());
        } else if c == '_' {
            out.push(' ');
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

fn text_of(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Bool(_) | Value::Number(_) => v.to_string(),
        Value::Array(a) if a.iter().all(|x| !x.is_array() && !x.is_object()) => {
            a.iter().map(text_of).collect::<Vec<_>>().join(", ")
        }
        _ => v.to_string(),
    }
}

impl Row {
    fn of(e: &ActivityEntry) -> Row {
        let target = match (e.virtual_machine.as_str(), e.resource_group.as_str()) {
            ("", "") => e.resource_type.clone(),
            ("", g) => format!("{} {g}", e.resource_type),
            (vm, _) => vm.to_string(),
        };
        Row {
            seq: e.seq,
            time: when_utc(&e.time_utc),
            operation: e.operation.clone(),
            target,
            caller: e.caller.clone(),
            address: e.caller_address.clone(),
            outcome: e.outcome.clone(),
            request: e.request_id.clone(),
            fields: fields_of(&e.details),
            details: serde_json::to_string_pretty(&e.details).unwrap_or_default(),
        }
    }
}

/// Where the signatures and the verification reach, read cheaply on every page.
struct Coverage {
    head: i64,
    /// (seq covered, when signed).
    checkpoint: Option<(i64, String)>,
    /// The verified mark in words.
    mark: String,
    mark_failed: bool,
    /// The newest signed checkpoints, newest first.
    recent: Vec<CheckpointLine>,
}

/// How many signed checkpoints the panel lists.
const CHECKPOINTS_SHOWN: usize = 10;

/// A signed checkpoint as the panel lists it.
struct CheckpointLine {
    /// Entries 1 to `seq` are under its signature ...
    seq: i64,
    /// ... of which `from` to `seq` came after the checkpoint before it.
    from: i64,
    signed: String,
    key_id: String,
}

impl CheckpointLine {
    /// `newest` is newest first, one more than shown when there are more (that one only
    /// says where the oldest shown begins).
    fn list(newest: &[jitgate_proto::audit::Checkpoint]) -> Vec<CheckpointLine> {
        newest
            .iter()
            .take(CHECKPOINTS_SHOWN)
            .enumerate()
            .map(|(i, k)| CheckpointLine {
                seq: k.seq,
                from: newest.get(i + 1).map_or(1, |before| before.seq + 1),
                signed: when(k.time_ms),
                key_id: k.key_id.clone(),
            })
            .collect()
    }
}

/// This controller's verification of the whole log: running, or its result.
struct FullView {
    running: bool,
    /// The controller that runs it (any controller's page shows it).
    controller: String,
    walked: i64,
    total: i64,
    verdict: Option<Verdict>,
    error: Option<String>,
}

impl FullView {
    fn of(f: &crate::audit::FullRun) -> FullView {
        FullView {
            running: f.running,
            controller: f.controller.clone(),
            walked: f.walked,
            total: f.total,
            verdict: f.report.as_ref().map(Verdict::of),
            error: f.error.clone(),
        }
    }
}

/// The verified mark in words: (text, failed).
fn mark_words(v: Option<&crate::store::verified::Verified>) -> (String, bool) {
    match v {
        None => (
            "Not verified yet: the controller verifies new entries after each checkpoint.".into(),
            false,
        ),
        Some(v) => match (v.failed_seq, &v.problem) {
            (Some(seq), problem) => (
                format!(
                    "Verification FAILED at entry {seq} (found {}): {}",
                    when(v.time_ms),
                    problem.as_deref().unwrap_or("unknown problem")
                ),
                true,
            ),
            (None, _) => (
                format!(
                    "Verified up to entry {} (checked {}): the chain holds and {} signed \
                     checkpoints match.",
                    v.seq,
                    when(v.time_ms),
                    v.checkpoints
                ),
                false,
            ),
        },
    }
}

#[derive(Template)]
#[template(path = "portal/activity_progress.html")]
struct Progress {
    full: FullView,
}

/// A verification of the whole log, in words.
struct Verdict {
    ok: bool,
    summary: String,
    problem: String,
}

impl Verdict {
    fn of(r: &VerifyReport) -> Verdict {
        if r.ok {
            let uncovered = if r.uncovered > 0 {
                format!(
                    " The {} entries after entry {} are chained but not yet under a signature.",
                    r.uncovered, r.covered_seq
                )
            } else {
                String::new()
            };
            Verdict {
                ok: true,
                summary: format!(
                    "Verified: entries 1 to {} chain correctly, and {} signed checkpoints match \
                     (key {}).{uncovered}",
                    r.entries,
                    r.checkpoints,
                    r.key_id.as_deref().unwrap_or("none")
                ),
                problem: String::new(),
            }
        } else {
            Verdict {
                ok: false,
                summary: match (r.first_bad_seq, r.bad_checkpoint_seq) {
                    (Some(e), Some(c)) => format!(
                        "Verification failed at entry {e}: the checkpoint signed at entry {c} \
                         does not match the log. Entries before {e} verified."
                    ),
                    (Some(e), None) => format!(
                        "Verification failed at entry {e}: it does not match the chain. \
                         Entries before {e} verified."
                    ),
                    (None, _) => "Verification failed.".into(),
                },
                problem: r.problem.clone().unwrap_or_default(),
            }
        }
    }
}

#[derive(Template)]
#[template(path = "portal/activity.html")]
struct ActivityPage {
    chrome: Chrome,
    rows: Vec<Row>,
    operations: Vec<String>,
    outcomes: Vec<String>,
    operation: String,
    vm: String,
    group: String,
    caller: String,
    outcome: String,
    from: String,
    to: String,
    /// The filters as a query string, for the export links.
    query: String,
    next: Option<String>,
    /// None: the viewer may not verify (not a reader of everything).
    coverage: Option<Coverage>,
    full: FullView,
}

async fn list(State(st): State<AppState>, v: Viewer, Q(f): Q<Filters>) -> PageResult {
    let mut q = f.query()?;
    q.before = Some(f.before.unwrap_or(i64::MAX));
    q.limit = Some(PAGE + 1);
    let mut entries = st.app.audit.entries(&v.caller, &q).await?;
    let more = entries.len() as i64 > PAGE;
    entries.truncate(PAGE as usize);
    let next = match (more, entries.last()) {
        (true, Some(last)) => {
            let mut s = f.pairs();
            s.append_pair("before", &last.seq.to_string());
            Some(format!("/activity?{}", s.finish()))
        }
        _ => None,
    };
    let (coverage, full) = if authz::authorize(&v.caller, Action::ReadAll).is_ok() {
        let pool = st.app.db.pool();
        let (head, _) = crate::store::cluster::heads(pool).await?;
        let checkpoint = crate::store::health::last_checkpoint(pool)
            .await?
            .map(|(seq, ms)| (seq, when(ms)));
        let (mark, mark_failed) = mark_words(st.app.audit.verified(&v.caller).await?.as_ref());
        let limit = i64::try_from(CHECKPOINTS_SHOWN + 1).unwrap_or(i64::MAX);
        let recent =
            CheckpointLine::list(&crate::store::activity::recent_checkpoints(pool, limit).await?);
        let full = FullView::of(&st.app.audit.full_run(&v.caller).await?);
        (
            Some(Coverage {
                head,
                checkpoint,
                mark,
                mark_failed,
                recent,
            }),
            full,
        )
    } else {
        (None, FullView::of(&crate::audit::FullRun::default()))
    };
    let text = |o: &Option<String>| o.clone().unwrap_or_default();
    Ok(html(
        StatusCode::OK,
        &ActivityPage {
            chrome: v.chrome("activity"),
            rows: entries.iter().map(Row::of).collect(),
            operations: Operation::known().map(|o| o.as_str().to_string()).collect(),
            outcomes: ActivityOutcome::known()
                .map(|o| o.as_str().to_string())
                .collect(),
            operation: text(&f.operation),
            vm: text(&f.vm),
            group: text(&f.group),
            caller: text(&f.caller),
            outcome: text(&f.outcome),
            from: text(&f.from),
            to: text(&f.to),
            query: f.pairs().finish(),
            next,
            coverage,
            full,
        },
    ))
}

/// The filtered entries, oldest first, exactly as `GET /api/v1/activityLog` returns them
/// for the same filters (`format=csv` or `json`).
async fn download(State(st): State<AppState>, v: Viewer, Q(f): Q<Filters>) -> PageResult {
    let mut q = f.query()?;
    q.limit = Some(EXPORT_MAX);
    let entries = st.app.audit.entries(&v.caller, &q).await?;
    export(
        f.format.as_deref(),
        "jitgate-activity",
        entries,
        crate::audit::to_csv,
    )
}

/// Starts verifying the whole log (the chain and every signed checkpoint) in the
/// background and goes back to the page, which follows its progress. A form POST: the walk
/// reads every entry, so a link must not start it.
async fn verify(State(st): State<AppState>, p: Posted) -> PageResult {
    st.app.audit.start_full(&p.viewer.caller).await?;
    Ok(see_other("/activity#verify-h"))
}

/// The progress (or result) of the full verification, as htmx polls it.
async fn progress(State(st): State<AppState>, v: Viewer) -> PageResult {
    let full = FullView::of(&st.app.audit.full_run(&v.caller).await?);
    Ok(html(StatusCode::OK, &Progress { full }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_read_as_labelled_fields() {
        let d = serde_json::json!({
            "justification": "db <b>fix</b>",
            "maxRequestAccessDuration": "PT1H",
            "ports": [22, 3389],
            "sourcePrefixes": ["198.51.100.0/24"],
            "approvals": [{"by": "bob"}],
            "end_time": null,
            "weakensProtection": true
        });
        let f: Vec<(String, String)> = fields_of(&d)
            .into_iter()
            .map(|f| (f.label, f.value))
            .collect();
        let get = |l: &str| f.iter().find(|(k, _)| k == l).map(|(_, v)| v.as_str());
        assert_eq!(get("Justification"), Some("db <b>fix</b>"));
        assert_eq!(get("Max request access duration"), Some("PT1H"));
        assert_eq!(get("Ports"), Some("22, 3389"));
        assert_eq!(get("Source prefixes"), Some("198.51.100.0/24"));
        assert_eq!(get("Approvals"), Some(r#"[{"by":"bob"}]"#));
        assert_eq!(get("End time"), Some("-"));
        assert_eq!(get("Weakens protection"), Some("true"));
        assert!(fields_of(&serde_json::json!("text")).is_empty());
    }

    #[test]
    fn checkpoints_say_what_each_adds() {
        let k = |seq: i64| jitgate_proto::audit::Checkpoint {
            key_id: "k1".into(),
            seq,
            hash: String::new(),
            time_ms: 0,
            signature: String::new(),
        };
        let newest: Vec<_> = (1..=12).rev().map(|i| k(i * 10)).collect();
        let l = CheckpointLine::list(&newest);
        assert_eq!(l.len(), CHECKPOINTS_SHOWN);
        assert_eq!((l[0].from, l[0].seq), (111, 120));
        assert_eq!((l[9].from, l[9].seq), (21, 30));
        let l = CheckpointLine::list(&[k(7)]);
        assert_eq!((l[0].from, l[0].seq), (1, 7));
    }

    #[test]
    fn a_failed_verification_names_the_entry() {
        let mut r = VerifyReport::new(9, "h", 1, None);
        r.first_bad_seq = Some(4);
        r.problem = Some("hash mismatch".into());
        let v = Verdict::of(&r);
        assert!(!v.ok);
        assert!(v.summary.contains("entry 4"), "{}", v.summary);
        assert_eq!(v.problem, "hash mismatch");
    }
}
