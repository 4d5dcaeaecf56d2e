//! `webhook`: the event's JSON, signed.
//!
//! The body is the [`Event`] exactly as serialized (camelCase). Text people wrote is carried
//! as data, JSON-escaped and otherwise unchanged: the receiver decides how to show it, and
//! must escape it for wherever it does.

use crate::event::Event;
use crate::signature::{DELIVERY_HEADER, SIGNATURE_HEADER, sign};

/// A rendered HTTP POST: JSON body and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpPayload {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl HttpPayload {
    /// A JSON body with no extra headers (Slack, Teams).
    pub fn json(value: &serde_json::Value) -> Result<HttpPayload, serde_json::Error> {
        Ok(HttpPayload {
            body: serde_json::to_vec(value)?,
            headers: Vec::new(),
        })
    }
}

/// The event's JSON with `Jitgate-Signature` (made with `secret` at `timestamp`, unix
/// seconds) and `Jitgate-Delivery` (the event id).
pub fn payload(
    event: &Event,
    secret: &[u8],
    timestamp: i64,
) -> Result<HttpPayload, serde_json::Error> {
    let body = serde_json::to_vec(event)?;
    let signature = sign(secret, timestamp, &body);
    Ok(HttpPayload {
        body,
        headers: vec![
            (SIGNATURE_HEADER, signature),
            (DELIVERY_HEADER, event.id.to_string()),
            ("Jitgate-Event", event.event_type().as_str().to_string()),
        ],
    })
}
