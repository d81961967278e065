//! Throttled logging of the mesh listener's refusals: anyone can make meshd refuse
//! connections as fast as they can open them, so each reason gets at most
//! [`LINES_PER_WINDOW`] log lines per [`WINDOW`]; the first line of the next window says
//! how many were left out. The metrics still count every refusal.
//!
//! Sans-IO: the caller passes the time. Reasons come from a fixed set of `&'static str`,
//! so the table stays small.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Log lines per reason per window.
pub(super) const LINES_PER_WINDOW: u32 = 10;
/// The window.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// Whether to write a line for one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogLine {
    /// Write it; `suppressed` refusals of this reason were not logged before it.
    Write {
        /// Refusals left out of the log since the last line of this reason.
        suppressed: u64,
    },
    /// Count it only.
    Skip,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
}

/// Per-reason log budgets, shared by the listener's tasks.
#[derive(Debug, Default)]
pub(super) struct RejectLog {
    reasons: Mutex<HashMap<&'static str, Window>>,
}

impl RejectLog {
    /// Decides on one refusal for `reason` at `now`.
    pub(super) fn check(&self, reason: &'static str, now: Instant) -> LogLine {
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let w = reasons.entry(reason).or_insert(Window {
            start: now,
            written: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            let suppressed = std::mem::take(&mut w.suppressed);
            w.start = now;
            w.written = 1;
            return LogLine::Write { suppressed };
        }
        if w.written < LINES_PER_WINDOW {
            w.written += 1;
            // Only the first line after a window that suppressed some carries the count.
            return LogLine::Write { suppressed: 0 };
        }
        w.suppressed += 1;
        LogLine::Skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_gets_its_lines_then_the_next_window_tells_what_was_left_out() {
        let log = RejectLog::default();
        let t0 = Instant::now();
        for i in 0..LINES_PER_WINDOW {
            assert_eq!(
                log.check("timeout", t0),
                LogLine::Write { suppressed: 0 },
                "line {i}"
            );
        }
        for _ in 0..25 {
            assert_eq!(
                log.check("timeout", t0 + Duration::from_secs(1)),
                LogLine::Skip
            );
        }
        // Another reason has its own budget.
        assert_eq!(
            log.check("wrong_key", t0 + Duration::from_secs(1)),
            LogLine::Write { suppressed: 0 }
        );
        assert_eq!(
            log.check("timeout", t0 + WINDOW - Duration::from_millis(1)),
            LogLine::Skip
        );
        assert_eq!(
            log.check("timeout", t0 + WINDOW),
            LogLine::Write { suppressed: 26 }
        );
        assert_eq!(
            log.check("timeout", t0 + WINDOW),
            LogLine::Write { suppressed: 0 },
            "the count is told once"
        );
    }
}
