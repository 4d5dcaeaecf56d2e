//! The single use of sign-in callbacks, in the database: with several controllers on one
//! PostgreSQL, a callback replayed to another controller is refused too.

use std::time::{SystemTime, UNIX_EPOCH};

use jitgate_oidc::{ReplayGuard, ReplayKey, StoreError};

use crate::store::db::Db;
use crate::store::sessions;

/// [`ReplayGuard`] over `oidc_used_callbacks`.
pub struct DbReplayGuard {
    db: Db,
}

impl DbReplayGuard {
    pub fn new(db: Db) -> DbReplayGuard {
        DbReplayGuard { db }
    }
}

impl ReplayGuard for DbReplayGuard {
    async fn first_use(&self, key: ReplayKey, keep_until: SystemTime) -> Result<bool, StoreError> {
        let until_ms = keep_until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut w = self.db.begin().await?;
        let first = sessions::first_callback_use(&mut w, &hex::encode(key.0), until_ms).await?;
        w.commit().await?;
        Ok(first)
    }
}
