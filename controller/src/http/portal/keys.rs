//! The grant-signing keys (admins on `*`): each key's state and times, and during a rotation
//! how many agents acknowledged the announced key, which active agents have not, and when
//! the leader switches anyway. Read-only: rotating is `jit-controller keys` on a controller
//! host. The same service as `GET /api/v1/keys`, so the same authorisation.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::http::portal::page::{Chrome, PageResult, html, when_utc};
use crate::http::portal::session::Viewer;
use crate::http::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/keys", get(keys))
}

struct KeyRow {
    id: String,
    state: String,
    created: String,
    announced: String,
    switched: String,
    retired: String,
    acknowledged: String,
}

struct Waiting {
    agent: String,
    vm: String,
    level: i64,
    online: &'static str,
    state: String,
}

#[derive(Template)]
#[template(path = "portal/keys.html")]
struct KeysPage {
    chrome: Chrome,
    keys: Vec<KeyRow>,
    rotating_to: String,
    switch_due: String,
    grace_seconds: u64,
    /// Live controllers that lack the announced key's private half.
    lacking: Vec<String>,
    waiting: Vec<Waiting>,
}

fn or_dash(t: Option<&str>) -> String {
    t.map_or_else(|| "-".to_string(), when_utc)
}

async fn keys(State(st): State<AppState>, v: Viewer) -> PageResult {
    let s = crate::keys::status::key_status(&st.app.db, &v.caller, st.app.key_switch_grace).await?;
    let rotating_to = s.rotating_to.clone().unwrap_or_default();
    let waiting = s
        .keys
        .iter()
        .filter(|k| k.key_id == rotating_to)
        .flat_map(|k| &k.not_acknowledged)
        .map(|a| Waiting {
            agent: a.agent_id.clone(),
            vm: a.virtual_machine.clone(),
            level: a.protocol,
            online: if a.online { "yes" } else { "no" },
            state: a.state.to_string(),
        })
        .collect();
    let keys = s
        .keys
        .iter()
        .rev()
        .map(|k| KeyRow {
            id: k.key_id.clone(),
            state: k.state.to_string(),
            created: when_utc(&k.created_time_utc),
            announced: or_dash(k.announced_time_utc.as_deref()),
            switched: or_dash(k.switched_time_utc.as_deref()),
            retired: or_dash(k.retired_time_utc.as_deref()),
            acknowledged: k
                .acknowledged
                .map_or_else(|| "-".to_string(), |n| n.to_string()),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &KeysPage {
            chrome: v.chrome("keys"),
            keys,
            rotating_to,
            switch_due: or_dash(s.switch_due_time_utc.as_deref()),
            grace_seconds: s.switch_grace_seconds,
            lacking: s.controllers_lacking_key.clone(),
            waiting,
        },
    ))
}
