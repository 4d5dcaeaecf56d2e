//! What every handler gets.

use jitgate_common::SourcePrefix;

use crate::app::App;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub app: App,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<SourcePrefix>,
    pub max_body_bytes: usize,
    /// This controller's metrics (requests are counted by the router).
    pub metrics: Metrics,
    /// Unauthenticated sign-in starts per client address.
    pub sign_in_limit: crate::http::ratelimit::RateLimit,
    /// The controller's public origin (`https://host[:port]`), which state-changing portal
    /// requests must come from; None: no portal sign-in.
    pub public_origin: Option<String>,
}
