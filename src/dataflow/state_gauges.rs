//! State gauges: how many entries each stateful operator holds, summed over the workers.
//!
//! In: each worker's [`StateSizes`], measured from its operator states a few times a second.
//! Out: job-wide totals in [`StateGauges`] (part of `SharedCounters`), read by `/metrics`
//! (`fulfillment_state_entries{state=...}`) and by the soak test's sampler. A worker adds the
//! change since its previous report, so the totals need no per-worker slots.

use std::sync::atomic::{AtomicI64, Ordering};

/// The measured states, in the order of [`StateSizes`].
pub const STATE_NAMES: [&str; 12] = [
    // Order operator.
    "order_records",
    "order_event_ids",
    "order_timers",
    "order_stashed_events",
    // Risk operator.
    "risk_routes",
    "risk_open_orders",
    "risk_checks",
    // Cell operator.
    "kpi_cells",
    "kpi_closing",
    "kpi_levels",
    "kpi_series_baselines",
    "kpi_baseline_values",
];

/// One worker's entry counts, indexed like [`STATE_NAMES`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateSizes(pub [u64; STATE_NAMES.len()]);

impl StateSizes {
    /// Sets the count of the state named `name`.
    pub fn set(&mut self, name: &str, value: usize) {
        let i = STATE_NAMES
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("unknown state gauge {name}"));
        self.0[i] = value as u64;
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        STATE_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.0[i])
    }
}

/// Job-wide totals.
#[derive(Debug, Default)]
pub struct StateGauges {
    totals: [AtomicI64; STATE_NAMES.len()],
}

impl StateGauges {
    /// Adds `now - last` to the totals and remembers `now` as this worker's last report.
    pub fn publish(&self, last: &mut StateSizes, now: StateSizes) {
        for (i, total) in self.totals.iter().enumerate() {
            let delta = now.0[i] as i64 - last.0[i] as i64;
            if delta != 0 {
                total.fetch_add(delta, Ordering::Relaxed);
            }
        }
        *last = now;
    }

    /// The current totals (never negative once every worker has reported).
    pub fn values(&self) -> StateSizes {
        let mut s = StateSizes::default();
        for (i, total) in self.totals.iter().enumerate() {
            s.0[i] = total.load(Ordering::Relaxed).max(0) as u64;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_add_their_changes() {
        let gauges = StateGauges::default();
        let (mut a_last, mut b_last) = (StateSizes::default(), StateSizes::default());
        let mut a = StateSizes::default();
        a.set("order_records", 10);
        a.set("kpi_cells", 3);
        gauges.publish(&mut a_last, a);
        let mut b = StateSizes::default();
        b.set("order_records", 5);
        gauges.publish(&mut b_last, b);
        assert_eq!(gauges.values().get("order_records"), Some(15));
        // Worker a shrinks: the total follows, and b's share stays.
        a.set("order_records", 2);
        gauges.publish(&mut a_last, a);
        assert_eq!(gauges.values().get("order_records"), Some(7));
        assert_eq!(gauges.values().get("kpi_cells"), Some(3));
        assert_eq!(a_last, a);
        assert_eq!(gauges.values().get("no_such_state"), None);
    }
}
