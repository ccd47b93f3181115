//! Sliding-window request counters per (tenant, app, endpoint).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::EmulatorLimits;
use super::endpoint::Endpoint;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
pub(crate) struct Limiter {
    windows: HashMap<(String, String, Endpoint), VecDeque<Instant>>,
}

impl Limiter {
    /// Counts one call, or refuses it with the whole seconds until a slot frees. Refused calls
    /// are not counted.
    pub(crate) fn check(
        &mut self,
        limits: &EmulatorLimits,
        tenant: &str,
        app: &str,
        endpoint: Endpoint,
        now: Instant,
    ) -> Result<(), u64> {
        let (per_minute, per_hour) = match endpoint {
            Endpoint::ImportIndicators => (limits.import_per_minute, None),
            Endpoint::BatchDeleteIndicators => (limits.batch_delete_per_minute, Some(limits.batch_delete_per_hour)),
            Endpoint::DeviceAvInfo => (limits.device_av_info_per_minute, Some(limits.device_av_info_per_hour)),
            _ => (limits.other_per_minute, Some(limits.other_per_hour)),
        };
        let window = self.windows.entry((tenant.to_owned(), app.to_owned(), endpoint)).or_default();
        let horizon = if per_hour.is_some() { HOUR } else { MINUTE };
        while window.front().is_some_and(|t| now.duration_since(*t) >= horizon) {
            window.pop_front();
        }
        let mut wait: Option<Duration> = None;
        let mut refuse = |limit: u32, span: Duration| {
            let in_span: Vec<&Instant> = window.iter().filter(|t| now.duration_since(**t) < span).collect();
            if in_span.len() >= limit as usize {
                // The slot frees when the call `limit` places from the end leaves the window.
                let idx = in_span.len().saturating_sub(limit.max(1) as usize);
                let frees = in_span.get(idx).map_or(span, |t| (**t + span).saturating_duration_since(now));
                wait = Some(wait.map_or(frees, |w| w.max(frees)));
            }
        };
        refuse(per_minute, MINUTE);
        if let Some(h) = per_hour {
            refuse(h, HOUR);
        }
        if let Some(w) = wait {
            let secs = w.as_secs() + u64::from(w.subsec_nanos() > 0);
            return Err(secs.max(1));
        }
        window.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_window_refuses_then_frees() {
        let limits = EmulatorLimits { import_per_minute: 2, ..Default::default() };
        let mut l = Limiter::default();
        let t0 = Instant::now();
        assert!(l.check(&limits, "t", "a", Endpoint::ImportIndicators, t0).is_ok());
        assert!(l.check(&limits, "t", "a", Endpoint::ImportIndicators, t0 + Duration::from_secs(10)).is_ok());
        let wait = l.check(&limits, "t", "a", Endpoint::ImportIndicators, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, 40);
        // Another app, tenant or endpoint has its own budget.
        assert!(l.check(&limits, "t", "b", Endpoint::ImportIndicators, t0).is_ok());
        assert!(l.check(&limits, "t2", "a", Endpoint::ImportIndicators, t0).is_ok());
        assert!(l.check(&limits, "t", "a", Endpoint::SubmitIndicator, t0).is_ok());
        assert!(l.check(&limits, "t", "a", Endpoint::ImportIndicators, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn hourly_window_applies_to_batch_delete() {
        let limits = EmulatorLimits { batch_delete_per_minute: 100, batch_delete_per_hour: 3, ..Default::default() };
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check(&limits, "t", "a", Endpoint::BatchDeleteIndicators, t0 + MINUTE * i).is_ok());
        }
        let wait = l.check(&limits, "t", "a", Endpoint::BatchDeleteIndicators, t0 + MINUTE * 5).unwrap_err();
        assert_eq!(wait, 3600 - 300);
    }
}
