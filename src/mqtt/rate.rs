//! Per-client publish rate limits: token buckets for messages and payload bytes.

use super::SessionLimits;
use super::session::SessionError;
use std::time::Instant;

/// Per-client publish token buckets (messages and bytes). Refusals beyond a second burst's
/// worth in a row count as sustained abuse.
pub(super) struct RateLimit {
    msgs: Option<(f64, f64, f64)>,
    bytes: Option<(f64, f64, f64)>,
    last: Instant,
    refused_in_a_row: u32,
    abuse_after: u32,
}

impl RateLimit {
    pub(super) fn new(l: &SessionLimits) -> Self {
        let bucket = |rate: f64| {
            (rate > 0.0).then_some((
                rate,
                rate * l.publish_burst as f64,
                rate * l.publish_burst as f64,
            ))
        };
        RateLimit {
            msgs: bucket(l.publish_rate as f64),
            bytes: bucket(l.publish_bytes_rate as f64),
            last: Instant::now(),
            refused_in_a_row: 0,
            abuse_after: (l.publish_rate.max(1)).saturating_mul(l.publish_burst.max(1)),
        }
    }

    /// `Ok(true)` allowed, `Ok(false)` over the limit, `Err` sustained abuse.
    pub(super) fn admit(&mut self, len: usize) -> Result<bool, SessionError> {
        if self.msgs.is_none() && self.bytes.is_none() {
            return Ok(true);
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut ok = true;
        for (bucket, cost) in [(&mut self.msgs, 1.0), (&mut self.bytes, len as f64)] {
            if let Some((rate, cap, tokens)) = bucket {
                *tokens = (*tokens + *rate * dt).min(*cap);
                if *tokens >= cost {
                    *tokens -= cost;
                } else {
                    ok = false;
                }
            }
        }
        if ok {
            self.refused_in_a_row = 0;
            return Ok(true);
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.abuse_after {
            return Err(SessionError::RateAbuse);
        }
        Ok(false)
    }
}
