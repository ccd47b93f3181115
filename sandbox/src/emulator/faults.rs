//! Fault injection: throttling, server errors, hangs, a down token endpoint, short-lived tokens.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// One injected answer for an API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 429 + `Retry-After` + `TooManyRequests` body.
    Throttle { retry_after_secs: u64 },
    /// That status with an `InternalServerError`-style body.
    Fail { status: u16 },
}

/// Injected faults. All methods take `&self`; the emulator consumes them as calls arrive.
///
/// Throttle and fail faults share one queue and are consumed in the order they were queued, one
/// per API call (token calls never consume them). Hangs are counted separately: a hung call
/// sleeps first, then is answered normally (or by the next queued fault).
#[derive(Debug, Default)]
pub struct Faults {
    queue: Mutex<VecDeque<Fault>>,
    hangs: Mutex<VecDeque<Duration>>,
    token_down: AtomicBool,
    token_lifetime: Mutex<Option<Duration>>,
    /// Probability in [0, 1] that an API call is throttled at random (Retry-After 1 s).
    random_throttle: Mutex<f64>,
    /// Tenants (lower-case ids) whose every API call alternates 429 and 503 until cleared.
    tenant_outages: Mutex<std::collections::HashMap<String, usize>>,
}

impl Faults {
    /// Every API call of `tenant` answers 429 (`Retry-After: 1`) and 503 in turn, until
    /// [`Faults::end_tenant_outage`]: one tenant's Defender in trouble while the others are fine.
    pub fn tenant_outage(&self, tenant: &str) {
        self.tenant_outages.lock().unwrap().insert(tenant.to_ascii_lowercase(), 0);
    }

    pub fn end_tenant_outage(&self, tenant: &str) {
        self.tenant_outages.lock().unwrap().remove(&tenant.to_ascii_lowercase());
    }

    /// The answer of `tenant`'s outage for the next call, if it has one.
    pub(crate) fn take_tenant_fault(&self, tenant: &str) -> Option<Fault> {
        let mut outages = self.tenant_outages.lock().unwrap();
        let calls = outages.get_mut(&tenant.to_ascii_lowercase())?;
        *calls += 1;
        Some(if *calls % 2 == 1 { Fault::Throttle { retry_after_secs: 1 } } else { Fault::Fail { status: 503 } })
    }

    /// The next `n` API calls answer 429 with `Retry-After: retry_after_secs`.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        let mut q = self.queue.lock().unwrap();
        q.extend(std::iter::repeat_n(Fault::Throttle { retry_after_secs }, n));
    }

    /// The next `n` API calls answer `status` (a 5xx) with an `InternalServerError`-style body.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut q = self.queue.lock().unwrap();
        q.extend(std::iter::repeat_n(Fault::Fail { status }, n));
    }

    /// The next `n` API calls sleep `duration` before being answered.
    pub fn hang_next(&self, n: usize, duration: Duration) {
        self.hangs.lock().unwrap().extend(std::iter::repeat_n(duration, n));
    }

    /// While `down`, both token endpoints answer 503 `temporarily_unavailable` (AADSTS50000).
    pub fn token_endpoint_down(&self, down: bool) {
        self.token_down.store(down, Ordering::SeqCst);
    }

    /// Tokens issued from now on live this long (overrides `EmulatorConfig::token_lifetime`).
    pub fn token_lifetime(&self, lifetime: Duration) {
        *self.token_lifetime.lock().unwrap() = Some(lifetime);
    }

    /// Each API call is throttled (429, `Retry-After: 1`) with this probability (0 = off).
    pub fn throttle_randomly(&self, probability: f64) {
        *self.random_throttle.lock().unwrap() = probability.clamp(0.0, 1.0);
    }

    /// Drops every pending fault and switches the token endpoint back on (token lifetime
    /// override and random throttling are reset too).
    pub fn clear(&self) {
        self.queue.lock().unwrap().clear();
        self.hangs.lock().unwrap().clear();
        self.token_down.store(false, Ordering::SeqCst);
        *self.token_lifetime.lock().unwrap() = None;
        *self.random_throttle.lock().unwrap() = 0.0;
        self.tenant_outages.lock().unwrap().clear();
    }

    /// Queued faults and hangs not yet consumed by a call.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap().len() + self.hangs.lock().unwrap().len()
    }

    pub(crate) fn take_hang(&self) -> Option<Duration> {
        self.hangs.lock().unwrap().pop_front()
    }

    pub(crate) fn take_fault(&self) -> Option<Fault> {
        if let Some(f) = self.queue.lock().unwrap().pop_front() {
            return Some(f);
        }
        let p = *self.random_throttle.lock().unwrap();
        (p > 0.0 && rand::random::<f64>() < p).then_some(Fault::Throttle { retry_after_secs: 1 })
    }

    pub(crate) fn is_token_down(&self) -> bool {
        self.token_down.load(Ordering::SeqCst)
    }

    pub(crate) fn token_lifetime_override(&self) -> Option<Duration> {
        *self.token_lifetime.lock().unwrap()
    }
}
