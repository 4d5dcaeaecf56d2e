//! One module per command group; each owns its arguments, its calls and its views.

pub mod apply;
pub mod approvals;
pub mod audit;
pub mod compliance;
pub mod connect;
pub mod connections;
pub mod history;
pub mod keys;
pub mod login;
pub mod logout;
pub mod notify;
pub mod policy;
pub mod requests;
pub mod vm;
pub mod vms;
pub mod whoami;

use clap::Args;

/// The time window and size of a listing (activity log, agent records, connections).
#[derive(Args)]
pub struct Window {
    /// From this time (ISO 8601, inclusive).
    #[arg(long)]
    pub since: Option<String>,
    /// Up to this time (ISO 8601, exclusive).
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
}

impl Window {
    pub fn limit(&self) -> Option<i64> {
        Some(i64::from(self.limit))
    }
}
