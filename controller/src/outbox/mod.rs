//! Notifications from the controller (docs/notifications.md): events are written by the
//! transactions that make the changes ([`event`] builds them); this worker, one per
//! controller, fans them out to the sinks, delivers them with `jitgate-notify` and records
//! the outcome ([`worker`]). The sinks of controller.toml are stored at start ([`sinks`]);
//! operators see the queue and re-drive dead deliveries ([`status`]); admins manage sinks
//! and secrets through the API ([`admin`]).

pub mod admin;
pub mod event;
pub mod sender;
pub mod sinks;
pub mod status;
pub mod worker;

pub use admin::Notifications;
pub use worker::{Outbox, spawn};
