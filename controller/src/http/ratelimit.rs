//! A per-address limit on unauthenticated sign-in starts (`/auth/login`, device flow): a
//! fixed window per client address, kept per controller (not process-wide).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jitgate_api::ErrorCode;

use crate::http::error::HttpError;

/// Most addresses tracked at once; beyond, the oldest windows are dropped.
const MAX_TRACKED: usize = 10_000;

#[derive(Clone)]
pub struct RateLimit {
    per_window: u32,
    window: Duration,
    seen: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl RateLimit {
    pub fn new(per_window: u32, window: Duration) -> RateLimit {
        RateLimit {
            per_window,
            window,
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one attempt from `addr`; `TooManyRequests` beyond the limit.
    pub fn check(&self, addr: IpAddr, what: &str) -> Result<(), HttpError> {
        let now = Instant::now();
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| HttpError::from(crate::error::Error::Internal("rate limit".into())))?;
        if seen.len() >= MAX_TRACKED {
            let window = self.window;
            seen.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = seen.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > self.per_window {
            tracing::warn!(%addr, what, "rate limited");
            return Err(HttpError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "too many {what} attempts from {addr}: at most {} a minute; try again shortly",
                    self.per_window
                ),
            ));
        }
        Ok(())
    }
}
