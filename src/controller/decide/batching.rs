//! The sync engine's timing decisions: what of a round's plan leaves now, what waits for a fuller
//! batch, and when a few values go as single submits instead of an import. No IO here.

use std::time::Duration;

use tokio::time::Instant;

use crate::defender::MAX_BATCH;

/// Up to this many values, single submits may stand in for an import call.
pub const SUBMIT_AT_MOST: usize = 5;

/// In a burst (a full batch left lately) a partial batch waits for findings to be quiet this
/// many times longer than `coalesce`: a moment's stall of a busy watch is not the burst's end, and
/// each partial batch sent mid-burst is one more write against the tenant's limits.
const BURST_QUIET: u32 = 8;

/// When the engine last saw a finding change, since when something waits to be sent, and when
/// the last round that sent everything it let go planned, and when a full batch last left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    pub last_change: Instant,
    pub pending_since: Option<Instant>,
    pub last_round: Option<Instant>,
    pub last_full_batch: Option<Instant>,
}

impl Batching {
    pub fn new(now: Instant) -> Self {
        Self { last_change: now, pending_since: None, last_round: None, last_full_batch: None }
    }

    /// When findings count as quiet: `coalesce` after the last change, longer in a burst.
    fn quiet_at(&self, patience: Patience) -> Instant {
        let in_burst = self.last_full_batch.is_some_and(|at| self.last_change < at + patience.max_delay);
        let quiet =
            if in_burst { (patience.coalesce * BURST_QUIET).min(patience.max_delay) } else { patience.coalesce };
        self.last_change + quiet
    }
}

/// How long partial batches may wait (`EngineConfig`'s `coalesce` and `max_delay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// A partial batch leaves once no finding has changed for this long.
    pub coalesce: Duration,
    /// A partial batch never waits longer than this.
    pub max_delay: Duration,
}

/// What of a round's plan leaves now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// How many of the values to push leave now (the first ones: whole batches of
    /// [`MAX_BATCH`], or all of them).
    pub push: usize,
    /// Whether the withdrawals leave now: they are never urgent, so they wait for a quiet moment.
    pub withdraw: bool,
    /// When the held-back rest is due, if anything was held back.
    pub due: Option<Instant>,
}

/// Full batches leave at once; a partial batch and the withdrawals wait until findings have been
/// quiet for `coalesce` (longer in a burst), or until something has waited `max_delay`: a burst
/// of findings fills batches, a lone finding waits about `coalesce`. Marks in `batching` since
/// when something waits.
pub fn release(batching: &mut Batching, push: usize, withdraw: usize, now: Instant, patience: Patience) -> Release {
    if push == 0 && withdraw == 0 {
        batching.pending_since = None;
        return Release { push: 0, withdraw: false, due: None };
    }
    let quiet_at = batching.quiet_at(patience);
    let overdue_at = *batching.pending_since.get_or_insert(now) + patience.max_delay;
    let send_all = now >= quiet_at || now >= overdue_at;
    let held_back = if send_all { 0 } else { push % MAX_BATCH };
    let deferred = held_back > 0 || (!send_all && withdraw > 0);
    Release { push: push - held_back, withdraw: send_all, due: deferred.then(|| quiet_at.min(overdue_at)) }
}

/// After a round (planned at `planned_at`) whose sends all succeeded: nothing waits any more
/// unless something was held back. When full batches left, what is held back (the newest values:
/// a plan lists the oldest first) came after the previous round, and waits since then.
pub fn sent(batching: &mut Batching, release: &Release, planned_at: Instant) {
    if release.push >= MAX_BATCH {
        batching.last_full_batch = Some(planned_at);
    }
    if release.due.is_none() {
        batching.pending_since = None;
    } else if release.push > 0 {
        batching.pending_since = batching.pending_since.max(batching.last_round);
    }
    batching.last_round = Some(planned_at);
}

/// When the next round is due once a finding changed: when findings are quiet (see
/// [`release`]), or when what waits — or else the first change since the last round
/// (`first_change`) — has waited `max_delay`.
pub fn due(batching: &Batching, first_change: Instant, patience: Patience) -> Instant {
    batching.quiet_at(patience).min(batching.pending_since.unwrap_or(first_change) + patience.max_delay)
}

/// A few values while the import budget (30 calls a minute) is spent go one submit each, from the
/// larger budget of 100 a minute, rather than waiting up to a minute for an import.
pub fn submit_singly(values: usize, import_budget: bool, other_budget: bool) -> bool {
    values <= SUBMIT_AT_MOST && !import_budget && other_budget
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Patience = Patience { coalesce: Duration::from_millis(300), max_delay: Duration::from_secs(10) };

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn nothing_to_send_waits_for_nothing() {
        let start = Instant::now();
        let mut batching = Batching { pending_since: Some(start), ..Batching::new(start) };
        assert_eq!(release(&mut batching, 0, 0, start, PATIENCE), Release { push: 0, withdraw: false, due: None });
        assert_eq!(batching.pending_since, None);
    }

    #[test]
    fn full_batches_leave_at_once_and_the_rest_waits_for_a_quiet_moment() {
        let start = Instant::now();
        let mut batching = Batching::new(start);
        let busy = release(&mut batching, 2 * MAX_BATCH + 7, 3, at(start, 100), PATIENCE);
        assert_eq!(busy, Release { push: 2 * MAX_BATCH, withdraw: false, due: Some(at(start, 300)) });
        assert_eq!(batching.pending_since, Some(at(start, 100)));
        // Quiet since the last change: the partial batch and the withdrawals leave.
        let quiet = release(&mut batching, 7, 3, at(start, 300), PATIENCE);
        assert_eq!(quiet, Release { push: 7, withdraw: true, due: None });
        sent(&mut batching, &quiet, at(start, 300));
        assert_eq!(batching.pending_since, None);
    }

    #[test]
    fn a_partial_batch_never_waits_past_the_maximum_delay() {
        let start = Instant::now();
        let mut batching = Batching::new(start);
        let first = release(&mut batching, 3, 0, start, PATIENCE);
        assert_eq!((first.push, first.due), (0, Some(at(start, 300))));
        sent(&mut batching, &first, start);
        // Findings keep changing: the quiet moment moves, the deadline does not.
        batching.last_change = at(start, 9_900);
        assert_eq!(release(&mut batching, 3, 0, at(start, 9_950), PATIENCE).due, Some(at(start, 10_000)));
        assert_eq!(release(&mut batching, 3, 0, at(start, 10_000), PATIENCE).push, 3);
    }

    #[test]
    fn after_full_batches_leave_the_rest_waits_since_the_previous_round() {
        let start = Instant::now();
        let mut batching = Batching::new(start);
        let first = release(&mut batching, 300, 0, start, PATIENCE);
        sent(&mut batching, &first, start);
        assert_eq!(batching.pending_since, Some(start));
        // Eight seconds on, findings still pouring in, the batch filled: it leaves; the 100 newest
        // came after the first round.
        batching.last_change = at(start, 7_950);
        let filled = release(&mut batching, MAX_BATCH + 100, 0, at(start, 8_000), PATIENCE);
        assert_eq!(filled.push, MAX_BATCH);
        sent(&mut batching, &filled, at(start, 8_000));
        assert_eq!(batching.pending_since, Some(start), "the oldest of the rest may date from the first round");
        batching.last_change = at(start, 8_950);
        let filled_again = release(&mut batching, MAX_BATCH + 50, 0, at(start, 9_000), PATIENCE);
        assert_eq!(filled_again.push, MAX_BATCH, "the batch is full before the rest is overdue");
        sent(&mut batching, &filled_again, at(start, 9_000));
        assert_eq!(batching.pending_since, Some(at(start, 8_000)), "no longer waiting since the first round");
    }

    #[test]
    fn a_change_makes_the_next_round_due_when_findings_are_quiet_or_something_waited_too_long() {
        let start = Instant::now();
        let mut batching = Batching::new(at(start, 1_000));
        assert_eq!(due(&batching, start, PATIENCE), at(start, 1_300), "quiet for coalesce");
        batching.last_change = at(start, 9_900);
        assert_eq!(due(&batching, start, PATIENCE), at(start, 10_000), "the first change waited max_delay");
        batching.pending_since = Some(at(start, 500));
        assert_eq!(due(&batching, start, PATIENCE), at(start, 10_200), "a value held back since 500 ms");
    }

    #[test]
    fn in_a_burst_a_moments_stall_does_not_send_a_partial_batch() {
        let start = Instant::now();
        let mut batching = Batching::new(start);
        let full = release(&mut batching, MAX_BATCH + 40, 0, start, PATIENCE);
        assert_eq!(full.push, MAX_BATCH);
        sent(&mut batching, &full, start);
        // Findings stop for 500 ms: more than `coalesce`, yet the burst goes on.
        batching.last_change = at(start, 1_000);
        let stalled = release(&mut batching, 300, 0, at(start, 1_500), PATIENCE);
        assert_eq!((stalled.push, stalled.due), (0, Some(at(start, 3_400))));
        assert_eq!(due(&batching, at(start, 1_000), PATIENCE), at(start, 3_400));
        // Quiet for eight times `coalesce`: the burst is over, the rest leaves.
        let rest = release(&mut batching, 300, 0, at(start, 3_400), PATIENCE);
        assert_eq!(rest.push, 300);
        sent(&mut batching, &rest, at(start, 3_400));
        // Long after the burst, a lone finding waits `coalesce` again.
        batching.last_change = at(start, 20_000);
        assert_eq!(due(&batching, at(start, 20_000), PATIENCE), at(start, 20_300));
    }

    #[test]
    fn withdrawals_alone_wait_for_a_quiet_moment_too() {
        let start = Instant::now();
        let mut batching = Batching::new(start);
        assert_eq!(
            release(&mut batching, 0, 2, at(start, 10), PATIENCE),
            Release { push: 0, withdraw: false, due: Some(at(start, 300)) }
        );
        assert!(release(&mut batching, 0, 2, at(start, 300), PATIENCE).withdraw);
    }

    #[test]
    fn single_submits_only_for_a_few_values_while_only_the_import_budget_is_spent() {
        assert!(submit_singly(1, false, true));
        assert!(submit_singly(SUBMIT_AT_MOST, false, true));
        assert!(!submit_singly(SUBMIT_AT_MOST + 1, false, true), "a bigger batch waits for the import budget");
        assert!(!submit_singly(1, true, true), "an import is cheaper when it can go");
        assert!(!submit_singly(1, false, false), "no budget for single submits either");
    }
}
