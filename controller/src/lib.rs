//! jitgate control plane: JIT policies, access requests checked against policy and rights,
//! request history, a hash-chained activity log, over an embedded SQLite (or PostgreSQL)
//! database, served as an HTTPS JSON API. See `docs/controller.md`.

pub mod agents;
pub mod api;
pub mod auth;
pub mod batch;
pub mod channel;
pub mod compliance;
pub mod connections;
pub mod csv;
pub mod error;
pub mod eval;
pub mod model;
pub mod server;
pub mod state;
pub mod store;

pub use error::{ApiError, SetupError, StoreError};
pub use server::{ServerHandle, start};
pub use state::{Config, StateDir};
pub use store::Store;
