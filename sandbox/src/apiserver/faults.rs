//! Fault injection: what a real API server does to its clients now and then (watches closed,
//! history compacted, conflicting writes, restarts), on demand for tests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct KubeFaults {
    status_conflicts: AtomicUsize,
    conflicts_served: AtomicUsize,
    /// Cancelled to end every open watch; replaced by a fresh token for the watches after.
    watches: Mutex<CancellationToken>,
}

impl KubeFaults {
    pub(crate) fn new(serving: &CancellationToken) -> Self {
        Self { watches: Mutex::new(serving.child_token()), ..Default::default() }
    }

    /// The token a new watch ends on.
    pub(crate) fn watch_token(&self) -> CancellationToken {
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Ends every open watch; later watches hang off `serving`.
    pub(crate) fn cut_watches(&self, serving: &CancellationToken) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        watches.cancel();
        *watches = serving.child_token();
    }

    pub(crate) fn conflict_next_status_writes(&self, n: usize) {
        self.status_conflicts.store(n, Ordering::SeqCst);
    }

    /// True when this status write is to fail with 409 Conflict.
    pub(crate) fn take_status_conflict(&self) -> bool {
        let taken =
            self.status_conflicts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if taken {
            self.conflicts_served.fetch_add(1, Ordering::SeqCst);
        }
        taken
    }

    pub(crate) fn conflicts_served(&self) -> usize {
        self.conflicts_served.load(Ordering::SeqCst)
    }
}
