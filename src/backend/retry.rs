//! The one retry policy of every backend call that failed: how long to wait
//! before trying again. The upload queue uses it per path (attempt = that
//! path's tries) and per namespace while a backend is down (attempt =
//! failures in a row), so both back off alike.

use std::time::Duration;

use super::ErrorKind;

/// Delay before retry `attempt` (from 1): exponential from 1 s to 1 min for
/// transient errors (a store that is down comes back); 30 s for permanent
/// ones (denied, missing bucket: they need an admin, and a fix should show
/// soon); ±50% jitter so that many paths do not retry in step.
pub fn backoff(kind: ErrorKind, attempt: u32) -> Duration {
    let base = match kind {
        ErrorKind::Permanent => 30.0,
        ErrorKind::Transient | ErrorKind::NotFound => {
            2f64.powi(attempt.clamp(1, 10) as i32 - 1).min(60.0)
        }
    };
    Duration::from_secs_f64(base * (0.5 + fastrand::f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_minute_and_permanent_waits_half_a_minute() {
        for _ in 0..100 {
            let d = backoff(ErrorKind::Transient, 1).as_secs_f64();
            assert!((0.5..=1.5).contains(&d), "{d}");
            let d = backoff(ErrorKind::Transient, 30).as_secs_f64();
            assert!((30.0..=90.0).contains(&d), "{d}");
            let d = backoff(ErrorKind::Permanent, 1).as_secs_f64();
            assert!((15.0..=45.0).contains(&d), "{d}");
        }
    }
}
