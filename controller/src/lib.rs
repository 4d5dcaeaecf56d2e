//! jitgate control plane: JIT policies, access requests checked against policy and rights,
//! request history, a hash-chained activity log, the agent fleet and compliance, over an
//! embedded SQLite (or PostgreSQL) database, served as an HTTPS JSON API and to agents over
//! mutual TLS. See `docs/controller.md`.
//!
//! Layers, each module importing only from the ones below it:
//! - edges: [`server`] (a running controller), [`http`] (the API: extractors, feature
//!   routers, the one HTTP error type; the health routes and the metrics listener's
//!   router), [`channel`] (the agent channel), [`logging`] (the binary's log format);
//! - [`health`]: readiness, the database probe and what a metrics scrape samples, over
//!   [`metrics`] (this controller's Prometheus registry);
//! - the domain, one service per concept, bundled in [`app::App`]: [`tokens`], [`signin`]
//!   (people's OpenID Connect sign-in and sessions), [`inventory`],
//!   [`policies`], [`lifecycle`] (initiate, acknowledge, revoke, expire), [`fleet`],
//!   [`audit`] (the activity log), [`views`] (what agents saw), [`compliance`];
//!   rights are decided in one place, [`authz`];
//! - values checked once at the edge: [`input`], [`policy`], [`request`], and the pure
//!   [`eval`];
//! - [`store`]: one module per table group, owning its SQL; write transactions and group
//!   commit in [`store::write`];
//! - per-controller state (never process-wide): [`notify`] (wakeups), [`presence`] (which
//!   agents are connected), [`cluster`] (on PostgreSQL: other controllers' commits, the
//!   catch-up behind them, presence in the database), [`lease`] (whether this controller
//!   does the once-per-cluster work: the leader lease and its fence); [`state`] (the state directory and controller.toml), [`error`],
//!   [`ids`], [`csv`].

pub mod app;
pub mod apply;
pub mod approval;
pub mod audit;
pub mod authz;
pub mod channel;
pub mod cluster;
pub mod compliance;
pub mod csv;
pub mod error;
pub mod eval;
pub mod fleet;
pub mod health;
pub mod http;
pub mod ids;
pub mod input;
pub mod inventory;
pub mod keys;
pub mod lease;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod policies;
pub mod policy;
pub mod policy_change;
pub mod presence;
pub mod request;
pub mod retention;
pub mod server;
pub mod signin;
pub mod state;
pub mod store;
pub mod tokens;
pub mod views;

pub use app::App;
pub use error::{Error, SetupError};
pub use server::{ServerHandle, start};
pub use state::{Config, StateDir};
