//! Single use of a sign-in callback, checked before the code goes to the provider: a replayed
//! callback (a browser's back button, a leaked URL plus its cookie) is refused by jitgate
//! itself, not left to the provider's code bookkeeping.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::login::ReplayKey;

/// The error of a replay store (a database error, say).
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Remembers which sign-in attempts have presented their callback.
///
/// With several controllers on one database, implement it on the database (an insert into a
/// table keyed by [`ReplayKey`] that fails on a duplicate; rows deleted after `keep_until`),
/// so that the callback is single-use across controllers.
pub trait ReplayGuard: Sync {
    /// `Ok(true)` the first time `key` is presented, `Ok(false)` every time after.
    fn first_use(
        &self,
        key: ReplayKey,
        keep_until: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// An in-process guard: for one controller on SQLite, and for tests.
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    seen: Mutex<HashMap<ReplayKey, SystemTime>>,
}

impl MemoryReplayGuard {
    pub fn new() -> MemoryReplayGuard {
        MemoryReplayGuard::default()
    }
}

impl ReplayGuard for MemoryReplayGuard {
    async fn first_use(&self, key: ReplayKey, keep_until: SystemTime) -> Result<bool, StoreError> {
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| StoreError::from("replay guard poisoned"))?;
        let now = SystemTime::now();
        seen.retain(|_, until| *until >= now);
        Ok(seen.insert(key, keep_until).is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_key_is_accepted_once_until_it_expires() {
        let g = MemoryReplayGuard::new();
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(g.first_use(ReplayKey([1; 32]), later).await.unwrap());
        assert!(!g.first_use(ReplayKey([1; 32]), later).await.unwrap());
        assert!(g.first_use(ReplayKey([2; 32]), later).await.unwrap());
        // Expired entries are forgotten (their sign-in state is refused as expired anyway).
        let past = SystemTime::now() - Duration::from_secs(1);
        assert!(g.first_use(ReplayKey([3; 32]), past).await.unwrap());
        assert!(g.first_use(ReplayKey([3; 32]), past).await.unwrap());
    }
}
