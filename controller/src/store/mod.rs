//! The storage layer: one module per concept, each owning its tables' SQL and row types
//! (`sqlx::FromRow`, columns by name, states parsed into their enums as rows are read).
//! Domain code above decides; these modules only read and write.
//!
//! - [`db`]: the database handle, its pools and migrations.
//! - [`backend`]: the two dialects and the fast paths where they differ.
//! - [`write`]: write transactions (the locked chain head and counters) and group commit.
//! - [`tokens`], [`sessions`] (people signed in with OpenID Connect, used callbacks), [`inventory`] (resource groups and VMs), [`policies`], [`requests`] (and their
//!   ports), [`approvals`] (every decision on a request), [`grants`] (and the grant outbox), [`activity`] (the hash-chained log, its
//!   checkpoints, export and verification), [`agents`], [`enroll_tokens`], [`agent_certs`]
//!   (renewals and their refusals), [`local_grants`] (break-glass grants agents reported),
//!   [`agent_audit`], [`compliance`].
//! - [`cluster`]: what several controllers on one database share besides the data: agent
//!   presence, the catch-up behind `NOTIFY`, the notification queue.
//! - [`grant_keys`]: grant-signing keys, their rotation messages and agents' answers.
//! - [`health`]: what readiness checks and metrics read.
//! - [`backup`]: online backup and restore, one portable format for both backends.
//! - [`verified`]: how far the activity log has been verified; [`full_run`]: the
//!   verification of the whole log running in the background, as every controller sees it.
//! - [`retention`]: what `jit-controller prune` deletes, in short steps.
//! - [`sequences`]: what moving sequence numbers past an agent's marks reads and writes.
//! - [`lease`]: the leader lease, and the fence its holder's writes check.
//! - [`snapshot`]: what an initiate batch reads, in one round trip on SQLite.

pub mod activity;
pub mod agent_audit;
pub mod agent_certs;
pub mod agents;
pub mod approvals;
pub mod backend;
pub mod backup;
pub mod cluster;
pub mod compliance;
pub mod controller_keys;
pub mod db;
pub mod enroll_tokens;
pub mod full_run;
pub mod grant_keys;
pub mod grants;
pub mod health;
pub mod inventory;
pub mod lease;
pub mod local_grants;
pub mod login_links;
pub mod notify;
pub mod policies;
pub mod requests;
pub mod retention;
pub mod sequences;
pub mod sessions;
pub mod snapshot;
pub mod tokens;
pub mod verified;
pub mod write;

pub use backend::Backend;
pub use db::{Db, DbOptions, Synchronous, sqlite_url};
pub use write::WriteTx;
