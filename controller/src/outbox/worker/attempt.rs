//! One attempt of one claimed delivery, on the sending thread: the event parsed with its
//! links as configured now, the addresses of the people an email concerns looked up, the
//! sink's deliverer run, and the row its outcome leaves (delivered, retrying at the
//! backoff's time, or dead).

use std::sync::Arc;
use std::time::SystemTime;

use jitgate_notify::event::Links;
use jitgate_notify::{
    DeliveryState, EmailAddress, Event, FailureKind, Next, Outcome, Person, Sink, SinkFormat,
};

use super::{Done, Outbox};
use crate::error::Result;
use crate::store::notify::{Attempted, Claimed};
use crate::store::{sessions, tokens};

impl Outbox {
    /// One attempt of one claimed delivery: its outcome, to record (None: nothing was
    /// attempted; the lease expires and the delivery is taken again). The event is parsed
    /// on the sending thread (for an email sink here: its people are looked up first).
    pub(super) async fn attempt(
        &self,
        sink: &Arc<Sink>,
        c: Claimed,
        body: Arc<str>,
    ) -> Option<Done> {
        let Some(deliverer) = &self.deliverer else {
            // A sink needs a trust store to be added, so this is a host that lost its CA
            // certificates: the lease expires and the row waits for a restart with them.
            tracing::warn!(sink = %sink.name, "no trusted certificate authority; notification not sent");
            return None;
        };
        let (mut event, mut people) = (None, Vec::new());
        if sink.format == SinkFormat::Email
            && let Ok(e) = parse_event(&body, self.portal.as_ref())
        {
            match self.people(&e).await {
                Ok(p) => people = p,
                Err(err) => {
                    tracing::warn!(sink = %sink.name, seq = c.event_seq, error = %err, "looking up addresses failed");
                }
            }
            event = Some(e);
        }
        let (deliverer, target, secrets) = (deliverer.clone(), sink.clone(), self.secrets.clone());
        let (portal, seq) = (self.portal.clone(), c.event_seq);
        let outcome = self
            .sender
            .run(async move {
                let event = match event.map_or_else(|| parse_event(&body, portal.as_ref()), Ok) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(seq, error = %e, "stored event does not parse; not sent");
                        return Outcome::failed(
                            FailureKind::Misconfigured,
                            "the stored event does not parse",
                        );
                    }
                };
                deliverer
                    .deliver(&target, &event, &secrets, &people, SystemTime::now())
                    .await
            })
            .await?;
        let now = jitgate_api::time::now_ms();
        let attempted = self.outcome(&outcome, &c, now);
        Some(Done {
            sink: sink.name.clone(),
            claimed: c,
            attempted: Some(attempted),
        })
    }

    /// The addresses of the people the event concerns (its requester, or the approvers it
    /// waits for), read at delivery: `token:NAME` principals whose token carries an email,
    /// and `oidc:` principals by the address they last signed in with.
    async fn people(&self, event: &Event) -> Result<Vec<Person>> {
        let principals = event.people();
        let names: Vec<&str> = principals
            .iter()
            .filter_map(|p| p.id.strip_prefix("token:"))
            .collect();
        let people: Vec<&str> = principals
            .iter()
            .map(|p| p.id.as_str())
            .filter(|id| id.starts_with("oidc:"))
            .collect();
        let mut conn = self.db.pool().acquire().await?;
        let mut found: Vec<(String, String)> =
            tokens::emails(&mut conn, &names, jitgate_api::time::now_ms())
                .await?
                .into_iter()
                .map(|(name, email)| (format!("token:{name}"), email))
                .collect();
        found.extend(sessions::emails(&mut conn, &people).await?);
        let mut out: Vec<Person> = Vec::new();
        for (id, email) in found {
            let Ok(address) = email.parse::<EmailAddress>() else {
                continue;
            };
            if out.iter().any(|p| p.address == address) {
                continue;
            }
            let display_name = principals
                .iter()
                .find(|p| p.id == id)
                .and_then(|p| p.display_name.clone());
            out.push(Person {
                display_name,
                address,
            });
        }
        Ok(out)
    }

    /// The row an outcome leaves.
    fn outcome(&self, outcome: &Outcome, c: &Claimed, now: i64) -> Attempted {
        match outcome {
            Outcome::Delivered { status } => Attempted {
                state: DeliveryState::Delivered,
                next_attempt_at: now,
                kind: outcome.kind_str(),
                status: Some(status.as_str()),
                detail: None,
                delivered_at: Some(now),
            },
            Outcome::Failed(f) => {
                let next = jitgate_notify::next_attempt(
                    &self.retry,
                    crate::outbox::event::time_of(c.first_attempt_at),
                    u32::try_from(c.attempts).unwrap_or(u32::MAX),
                    f,
                    crate::outbox::event::time_of(now),
                    rand::random::<f64>(),
                );
                let (state, at) = match next {
                    Next::RetryAt(t) => (
                        DeliveryState::Retrying,
                        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
                    ),
                    Next::Dead => (DeliveryState::Dead, now),
                };
                Attempted {
                    state,
                    next_attempt_at: at,
                    kind: f.kind.as_str(),
                    status: f.status.map(|s| s.as_str()),
                    detail: Some(f.detail.chars().take(200).collect()),
                    delivered_at: None,
                }
            }
        }
    }
}

/// A stored event, with its links as configured now.
pub(super) fn parse_event(body: &str, portal: Option<&url::Url>) -> serde_json::Result<Event> {
    let mut event: Event = serde_json::from_str(body)?;
    event.links = Links::for_details(&event.details, portal);
    Ok(event)
}
