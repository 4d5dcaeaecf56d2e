//! Notification sinks as the API takes and shows them (`/notify/...`, `jit notify`):
//! where notifications go, the queue per sink, and the write-only secrets sinks name.
//!
//! A sink's target URL is a credential for Slack and Teams (whoever knows it can post), so
//! responses carry it redacted; secrets are never read back at all.

use serde::{Deserialize, Serialize};

/// `POST /notify/sinks`: a new sink (`jit notify add`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewSink {
    /// 1-64 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// `webhook`, `slack`, `teams` or `email`.
    pub format: String,
    /// An https URL, or for `email` the fixed recipient addresses separated by commas.
    pub target: String,
    /// Event types wanted (`request.approved`, ...); empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// `rg:NAME` or `vm:NAME`; absent means every VM (only an admin of scope `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The named secret that signs webhook bodies (`PUT /notify/secrets/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Only events addressed to this approver group (`group:NAME` of an approval rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_group: Option<String>,
}

/// Where a sink sends, as it may be shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinkTarget {
    /// The URL with its path and query replaced by a short fingerprint.
    Url(String),
    /// An email sink's fixed recipients.
    Addresses(Vec<String>),
}

/// A sink as responses show it (the target redacted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkView {
    pub name: String,
    /// Empty: every event type.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub format: String,
    pub target: SinkTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_group: Option<String>,
}

/// A stored sink: its definition and who made it (a principal, or `controller.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkInfo {
    pub sink: SinkView,
    pub created_by: String,
    pub updated_time_utc: String,
}

/// One sink's deliveries by state and its last standing failure (never a response body or
/// a sink's URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub name: String,
    pub created_by: String,
    pub queued: i64,
    pub retrying: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Of the queued and retrying deliveries, those being attempted now (leased).
    #[serde(default)]
    pub in_flight: i64,
    /// When the sink's latest delivery succeeded, among the 10 000 latest deliveries of all
    /// sinks (absent: none that recent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivered_utc: Option<String>,
    /// When the oldest event still waiting for this sink (queued or retrying) was written:
    /// the delivery lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_pending_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<DeliveryFailure>,
}

/// Why an attempt failed, in a few words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryFailure {
    /// A short error kind (`timeout`, `refused`, `http_status`, `blocked_address`, ...).
    pub kind: String,
    /// `2xx`..`5xx` when the receiver answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub time_utc: String,
}

/// `POST /notify/sinks/{name}/test`: what one attempt to send an example event did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkTestResult {
    pub sink: String,
    /// The example event's type.
    pub event_type: String,
    pub delivered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_class: Option<String>,
    /// `delivered`, or the failure's kind.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /notify/retry` and `POST /notify/discard`: the dead deliveries of one sink (or of
/// every sink in the caller's scope), attempted again or deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadDeliveries {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
}

/// How many dead deliveries were re-driven or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadCount {
    pub deliveries: u64,
}

/// `PUT /notify/secrets/{name}`: the secret's value (written, never read back).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretBody {
    pub value: String,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBody { value: <redacted> }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sink_refuses_unknown_fields_and_reads_camel_case() {
        let s: NewSink = serde_json::from_str(
            r#"{"name":"ops","format":"slack","target":"https://h/x","toGroup":"oncall"}"#,
        )
        .unwrap();
        assert_eq!(s.to_group.as_deref(), Some("oncall"));
        assert!(
            serde_json::from_str::<NewSink>(
                r#"{"name":"o","format":"f","target":"t","file":"/etc/x"}"#
            )
            .is_err()
        );
    }

    #[test]
    fn secret_body_debug_hides_the_value() {
        let b = SecretBody {
            value: "hunter2".into(),
        };
        assert!(!format!("{b:?}").contains("hunter2"));
    }

    #[test]
    fn sink_info_tolerates_new_fields() {
        let j = r#"{"sink":{"name":"ops","events":[],"format":"webhook","target":{"url":"https://h/… (#ab12)"},
            "secret":"hook"},"createdBy":"token:admin","updatedTimeUtc":"2026-11-30T00:00:00Z","newField":1}"#;
        let i: SinkInfo = serde_json::from_str(j).unwrap();
        assert_eq!(i.sink.name, "ops");
        assert_eq!(i.sink.target, SinkTarget::Url("https://h/… (#ab12)".into()));
    }
}
