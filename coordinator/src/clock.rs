//! The database's clock, read without a round trip per use.
//!
//! DESIGN §6: times are the database's clock, never the process clock. Writes use the
//! database's own `now` expression; decisions (is this op due? has the timeout passed?)
//! use [`DbClock::now`], which is the database time measured at the last [`DbClock::sync`]
//! advanced by the local clock since then. The poller re-syncs every few seconds, so local
//! drift or a jump of the process clock is corrected within that period.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::{Store, StoreError};

/// An estimate of the database's clock (ms since the Unix epoch).
#[derive(Debug, Default)]
pub struct DbClock {
    offset_ms: AtomicI64,
}

fn local_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl DbClock {
    /// A clock synchronised with `store` once.
    pub async fn new(store: &Arc<dyn Store>) -> Result<Self, StoreError> {
        let clock = Self::default();
        clock.sync(store).await?;
        Ok(clock)
    }

    /// Measures the offset between the database's clock and the local one again.
    pub async fn sync(&self, store: &Arc<dyn Store>) -> Result<(), StoreError> {
        let before = local_ms();
        let db = store.now().await?;
        let after = local_ms();
        // The database read its clock somewhere in the round trip: assume the middle.
        self.offset_ms
            .store(db - (before + after) / 2, Ordering::Relaxed);
        Ok(())
    }

    /// The database's time now, estimated.
    pub fn now(&self) -> i64 {
        local_ms() + self.offset_ms.load(Ordering::Relaxed)
    }
}
