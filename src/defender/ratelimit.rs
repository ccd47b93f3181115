//! Client-side limits per (tenant, app, endpoint class), just under Defender's documented ones,
//! and pauses after a 429's `Retry-After`.
//!
//! Sliding windows (a minute and an hour) of call timestamps per key. `acquire` sleeps until the
//! earliest instant a call is allowed (never polls), re-checks, and records the call. Uses
//! `tokio::time`, so tests can run with paused time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Backoff after a 429 without `Retry-After`: 2 s, doubling, at most 60 s.
const BACKOFF_BASE: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    /// `POST /api/indicators/import`
    Import,
    /// `POST /api/indicators/BatchDelete`
    BatchDelete,
    /// submit, list, delete-one (indicators)
    Other,
    /// `GET /api/machines` (and by id, `findbyip`), machine tags: 100/min, 1,500/h
    Machines,
    /// `GET /api/deviceavinfo`: 30/min, 1,000/h
    AvInfo,
    /// `GET /api/alerts`: 100/min, 1,500/h
    Alerts,
}

impl EndpointClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointClass::Import => "import",
            EndpointClass::BatchDelete => "batch_delete",
            EndpointClass::Other => "other",
            EndpointClass::Machines => "machines",
            EndpointClass::AvInfo => "avinfo",
            EndpointClass::Alerts => "alerts",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimits {
    pub import_per_minute: u32,
    pub batch_delete_per_minute: u32,
    pub other_per_minute: u32,
    /// Applies to `Other`, and to `BatchDelete` (Defender documents 1,500/h for both).
    pub other_per_hour: u32,
    /// `GET /api/deviceavinfo` (Defender documents 30/min and 1,000/h). Machines and alerts
    /// each have the `other` budgets, their own.
    pub av_info_per_minute: u32,
    pub av_info_per_hour: u32,
}

impl Default for RateLimits {
    /// Just under Defender's documented limits (30/min import and BatchDelete; 100/min, 1,500/h;
    /// deviceavinfo 30/min, 1,000/h).
    fn default() -> Self {
        RateLimits {
            import_per_minute: 28,
            batch_delete_per_minute: 28,
            other_per_minute: 95,
            other_per_hour: 1_450,
            av_info_per_minute: 28,
            av_info_per_hour: 950,
        }
    }
}

impl RateLimits {
    /// (per minute, per hour) for a class; `None` = no hourly limit.
    fn for_class(&self, class: EndpointClass) -> (u32, Option<u32>) {
        match class {
            EndpointClass::Import => (self.import_per_minute, None),
            EndpointClass::BatchDelete => (self.batch_delete_per_minute, Some(self.other_per_hour)),
            EndpointClass::Other | EndpointClass::Machines | EndpointClass::Alerts => {
                (self.other_per_minute, Some(self.other_per_hour))
            }
            EndpointClass::AvInfo => (self.av_info_per_minute, Some(self.av_info_per_hour)),
        }
    }
}

type Key = (String, String, EndpointClass);

#[derive(Debug, Default)]
struct Window {
    minute: VecDeque<Instant>,
    hour: VecDeque<Instant>,
    paused_until: Option<Instant>,
    /// Consecutive 429s without `Retry-After` (drives the exponential default).
    strikes: u32,
}

impl Window {
    /// `None` when a call may go now; otherwise the instant to re-check.
    fn next_allowed(&mut self, now: Instant, per_minute: u32, per_hour: Option<u32>) -> Option<Instant> {
        while self.minute.front().is_some_and(|t| now.duration_since(*t) >= MINUTE) {
            self.minute.pop_front();
        }
        while self.hour.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            self.hour.pop_front();
        }
        let mut wait: Option<Instant> = None;
        if let Some(until) = self.paused_until {
            if until > now {
                wait = Some(until);
            } else {
                self.paused_until = None;
            }
        }
        if self.minute.len() >= per_minute.max(1) as usize {
            let t = self.minute[self.minute.len() - per_minute.max(1) as usize] + MINUTE;
            wait = Some(wait.map_or(t, |w| w.max(t)));
        }
        if let Some(per_hour) = per_hour
            && self.hour.len() >= per_hour.max(1) as usize
        {
            let t = self.hour[self.hour.len() - per_hour.max(1) as usize] + HOUR;
            wait = Some(wait.map_or(t, |w| w.max(t)));
        }
        wait
    }
}

/// Shared by every client; keyed internally by (tenant, app, class).
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    windows: Mutex<HashMap<Key, Window>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(RateLimits::default())
    }
}

fn key(tenant: &str, app: &str, class: EndpointClass) -> Key {
    (tenant.to_ascii_lowercase(), app.to_ascii_lowercase(), class)
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter { limits, windows: Mutex::new(HashMap::new()) }
    }

    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Waits until a call of `class` is allowed for (tenant, app).
    pub async fn acquire(&self, tenant: &str, app: &str, class: EndpointClass) {
        let k = key(tenant, app, class);
        let (per_minute, per_hour) = self.limits.for_class(class);
        loop {
            let wake = {
                let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
                let w = windows.entry(k.clone()).or_default();
                let now = Instant::now();
                match w.next_allowed(now, per_minute, per_hour) {
                    None => {
                        w.minute.push_back(now);
                        if per_hour.is_some() {
                            w.hour.push_back(now);
                        }
                        return;
                    }
                    Some(t) => t,
                }
            };
            tokio::time::sleep_until(wake).await;
        }
    }

    /// Whether a call would go through now (without recording one).
    pub fn would_allow(&self, tenant: &str, app: &str, class: EndpointClass) -> bool {
        let (per_minute, per_hour) = self.limits.for_class(class);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.entry(key(tenant, app, class)).or_default().next_allowed(Instant::now(), per_minute, per_hour).is_none()
    }

    /// Blocks (tenant, app, class) for `retry_after` after a 429.
    pub fn pause(&self, tenant: &str, app: &str, class: EndpointClass, retry_after: Duration) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(key(tenant, app, class)).or_default();
        let until = Instant::now() + retry_after;
        w.paused_until = Some(w.paused_until.map_or(until, |u| u.max(until)));
    }

    /// Records a 429: pauses the key for `retry_after`, or when Defender sent none, for an
    /// exponential default (2 s, 4 s, … at most 60 s). Returns the pause applied.
    pub fn throttled(&self, tenant: &str, app: &str, class: EndpointClass, retry_after: Option<Duration>) -> Duration {
        let wait = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            let w = windows.entry(key(tenant, app, class)).or_default();
            match retry_after {
                Some(d) => d,
                None => {
                    let d = BACKOFF_BASE.saturating_mul(1u32 << w.strikes.min(10)).min(BACKOFF_MAX);
                    w.strikes = w.strikes.saturating_add(1);
                    d
                }
            }
        };
        self.pause(tenant, app, class, wait);
        wait
    }

    /// Resets the 429 backoff of a key after a call that was not throttled.
    pub fn succeeded(&self, tenant: &str, app: &str, class: EndpointClass) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = windows.get_mut(&key(tenant, app, class)) {
            w.strikes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn limits(import: u32, other_min: u32, other_hour: u32) -> RateLimits {
        RateLimits {
            import_per_minute: import,
            batch_delete_per_minute: import,
            other_per_minute: other_min,
            other_per_hour: other_hour,
            ..RateLimits::default()
        }
    }

    #[test]
    fn defaults_under_documented_limits() {
        let l = RateLimits::default();
        assert_eq!((l.import_per_minute, l.batch_delete_per_minute), (28, 28));
        assert_eq!((l.other_per_minute, l.other_per_hour), (95, 1450));
        assert_eq!((l.av_info_per_minute, l.av_info_per_hour), (28, 950));
    }

    #[tokio::test(start_paused = true)]
    async fn machines_alerts_and_antivirus_health_have_their_own_budgets() {
        let rl = RateLimiter::new(RateLimits { av_info_per_minute: 2, ..limits(10, 3, 1000) });
        for _ in 0..3 {
            rl.acquire("t", "a", EndpointClass::Other).await;
        }
        assert!(!rl.would_allow("t", "a", EndpointClass::Other));
        for class in [EndpointClass::Machines, EndpointClass::Alerts, EndpointClass::AvInfo] {
            assert!(rl.would_allow("t", "a", class), "{class:?} does not share the indicators' budget");
        }
        rl.acquire("t", "a", EndpointClass::AvInfo).await;
        rl.acquire("t", "a", EndpointClass::AvInfo).await;
        assert!(!rl.would_allow("t", "a", EndpointClass::AvInfo), "deviceavinfo has the smaller limit");
        assert!(rl.would_allow("t", "a", EndpointClass::Machines));
    }

    #[tokio::test(start_paused = true)]
    async fn minute_window() {
        let rl = RateLimiter::new(limits(3, 100, 1000));
        let start = Instant::now();
        for _ in 0..3 {
            rl.acquire("t", "a", EndpointClass::Import).await;
        }
        assert_eq!(Instant::now(), start, "the first three go at once");
        assert!(!rl.would_allow("t", "a", EndpointClass::Import));
        // Other classes and other keys are independent.
        assert!(rl.would_allow("t", "a", EndpointClass::BatchDelete));
        assert!(rl.would_allow("t", "b", EndpointClass::Import));
        rl.acquire("t", "a", EndpointClass::Import).await;
        assert_eq!(Instant::now() - start, MINUTE, "the fourth waits for the window to slide");
        tokio::time::advance(Duration::from_secs(1)).await;
        let before = Instant::now();
        rl.acquire("t", "a", EndpointClass::Import).await;
        assert_eq!(Instant::now(), before, "two of the first three left the window");
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_not_fixed() {
        let rl = RateLimiter::new(limits(2, 100, 1000));
        let start = Instant::now();
        rl.acquire("t", "a", EndpointClass::Import).await;
        tokio::time::advance(Duration::from_secs(30)).await;
        rl.acquire("t", "a", EndpointClass::Import).await;
        rl.acquire("t", "a", EndpointClass::Import).await;
        assert_eq!(Instant::now() - start, MINUTE);
        rl.acquire("t", "a", EndpointClass::Import).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(90));
    }

    #[tokio::test(start_paused = true)]
    async fn hour_window() {
        let rl = RateLimiter::new(limits(10, 5, 8));
        let start = Instant::now();
        for _ in 0..8 {
            rl.acquire("t", "a", EndpointClass::Other).await;
        }
        // 5 in the first minute, 3 more after it.
        assert_eq!(Instant::now() - start, MINUTE);
        rl.acquire("t", "a", EndpointClass::Other).await;
        assert_eq!(Instant::now() - start, HOUR, "the ninth waits for the hour window");
    }

    #[tokio::test(start_paused = true)]
    async fn pause_blocks_until_retry_after() {
        let rl = RateLimiter::new(RateLimits::default());
        let start = Instant::now();
        rl.pause("t", "a", EndpointClass::Other, Duration::from_secs(7));
        assert!(!rl.would_allow("t", "a", EndpointClass::Other));
        assert!(rl.would_allow("t", "a", EndpointClass::Import));
        rl.acquire("t", "a", EndpointClass::Other).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
        // A shorter pause never shortens a longer one.
        rl.pause("t", "a", EndpointClass::Other, Duration::from_secs(10));
        rl.pause("t", "a", EndpointClass::Other, Duration::from_secs(1));
        rl.acquire("t", "a", EndpointClass::Other).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(17));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_the_budget() {
        let rl = Arc::new(RateLimiter::new(limits(2, 100, 1000)));
        let start = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let rl = rl.clone();
                tokio::spawn(async move {
                    rl.acquire("t", "a", EndpointClass::Import).await;
                    Instant::now() - start
                })
            })
            .collect();
        let mut waits = Vec::new();
        for t in tasks {
            waits.push(t.await.unwrap());
        }
        waits.sort();
        assert_eq!(waits, vec![Duration::ZERO, Duration::ZERO, MINUTE, MINUTE, 2 * MINUTE]);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_default_backoff() {
        let rl = RateLimiter::new(RateLimits::default());
        let c = EndpointClass::Other;
        assert_eq!(rl.throttled("t", "a", c, Some(Duration::from_secs(5))), Duration::from_secs(5));
        assert_eq!(rl.throttled("t", "a", c, None), Duration::from_secs(2));
        assert_eq!(rl.throttled("t", "a", c, None), Duration::from_secs(4));
        assert_eq!(rl.throttled("t", "a", c, None), Duration::from_secs(8));
        for _ in 0..10 {
            rl.throttled("t", "a", c, None);
        }
        assert_eq!(rl.throttled("t", "a", c, None), Duration::from_secs(60));
        rl.succeeded("t", "a", c);
        assert_eq!(rl.throttled("t", "a", c, None), Duration::from_secs(2));
    }
}
