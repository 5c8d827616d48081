//! Kafka load test (`fulfillment-ai bench --kafka-ramp`, `scripts/loadtest.sh`): raises the input
//! rate step by step until the job stops keeping up, reports the highest sustainable rate, then
//! measures event -> KPI latency at 50% and 90% of it.
//!
//! In: a broker, the topic layout, a spec, and a function that makes enough generated input for
//! a rate and a duration. Every step is one run of [`latency`] (fresh topics, a fresh job, the
//! producer at the step's rate). Out: a [`RampResult`] with every step and its verdict.
//!
//! A step at target rate `r` is sustainable unless one of these holds ([`judge`]):
//! 1. the producer reached less than `min_achieved` x `r` (the broker's write path is the limit);
//! 2. the consumer lag at the end of the step is over `max_lag_seconds` x `r` events **and** it
//!    was rising: its least-squares slope over the second half of the step is over
//!    `max_lag_growth` x `r` events/s;
//! 3. after the producer stopped, the job needed more than `max_catch_up_seconds` to read
//!    everything;
//! 4. the p99 event -> KPI latency is over `max_p99_ms` (the output side fell behind), or no KPI
//!    record could be measured.
//!
//! Before the steps, the load generator writes the same kind of input flat out to a fresh
//! topic with no job running: the broker's write rate on this machine at this moment. The
//! sustainable rate over that rate is the ratio to compare across runs on a shared machine.
//!
//! The ramp multiplies the rate by `factor` while steps pass, then bisects (geometric mean)
//! between the last passing and the first failing rate `refine` times ([`RampPlan`]). A failed
//! step is measured once more before it counts: on a shared machine one step can fail because
//! something else took the CPU, and a single failure would end the climb early.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use crate::config::app::KafkaConfig;
use crate::config::PipelineSpec;
use crate::kafka::bench::{fresh_topics, latency, LatencyResult, LatencyRun};
use crate::kafka::load::{produce, LoadOptions};
use crate::kafka::Topics;
use crate::sources::memory::MemoryPartitions;

/// Thresholds of the sustainability verdict (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Criteria {
    pub min_achieved: f64,
    pub max_lag_seconds: f64,
    pub max_lag_growth: f64,
    pub max_catch_up_seconds: f64,
    pub max_p99_ms: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            min_achieved: 0.95,
            max_lag_seconds: 1.0,
            max_lag_growth: 0.02,
            max_catch_up_seconds: 5.0,
            max_p99_ms: 5_000.0,
        }
    }
}

/// `None` if the step is sustainable, otherwise the first failed condition.
pub fn judge(step: &LatencyResult, c: &Criteria) -> Option<String> {
    let target = step.target_rate?;
    if step.achieved_rate < c.min_achieved * target {
        return Some(format!(
            "the producer reached {:.0}/s of {target:.0}/s",
            step.achieved_rate
        ));
    }
    if step.lag_at_end as f64 > c.max_lag_seconds * target
        && step.lag_growth_per_sec > c.max_lag_growth * target
    {
        return Some(format!(
            "lag {} events at the end and rising by {:.0}/s",
            step.lag_at_end, step.lag_growth_per_sec
        ));
    }
    if !step.caught_up || step.catch_up_seconds > c.max_catch_up_seconds {
        return Some(format!(
            "catching up took {:.1} s{}",
            step.catch_up_seconds,
            if step.caught_up { "" } else { " (gave up)" }
        ));
    }
    if step.samples == 0 || step.p99_ms.is_nan() || step.p99_ms > c.max_p99_ms {
        return Some(format!(
            "KPI latency p99 {:.0} ms ({} records)",
            step.p99_ms, step.samples
        ));
    }
    None
}

/// The sequence of rates to try: geometric steps up, then bisection.
#[derive(Clone, Debug, PartialEq)]
pub struct RampPlan {
    factor: f64,
    max_rate: f64,
    refine_left: usize,
    next: Option<f64>,
    /// The rate whose failure is being re-measured.
    retrying: Option<f64>,
    /// Highest rate that passed, lowest that failed.
    pub best: Option<f64>,
    pub first_bad: Option<f64>,
}

impl RampPlan {
    pub fn new(start: f64, factor: f64, max_rate: f64, refine: usize) -> RampPlan {
        RampPlan {
            factor: factor.max(1.01),
            max_rate,
            refine_left: refine,
            next: (start > 0.0 && start <= max_rate).then_some(start),
            retrying: None,
            best: None,
            first_bad: None,
        }
    }

    /// The rate to measure next, if any.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records the verdict of the rate [`Self::next_rate`] returned and plans the next one.
    pub fn record(&mut self, rate: f64, sustainable: bool) {
        let retry = !sustainable && self.retrying != Some(rate);
        self.retrying = retry.then_some(rate);
        if retry {
            self.next = Some(rate);
            return;
        }
        if sustainable {
            self.best = Some(self.best.map_or(rate, |b| b.max(rate)));
        } else {
            self.first_bad = Some(self.first_bad.map_or(rate, |b| b.min(rate)));
        }
        self.next = match (self.best, self.first_bad) {
            // Still climbing.
            (Some(best), None) => {
                let up = (best * self.factor).round();
                (up <= self.max_rate).then_some(up)
            }
            // Between a pass and a failure: bisect, unless the gap is within 2%.
            (Some(best), Some(bad)) if self.refine_left > 0 && bad / best > 1.02 => {
                self.refine_left -= 1;
                Some((best * bad).sqrt().round())
            }
            _ => None,
        };
    }
}

/// One measured step.
#[derive(Clone, Debug, Serialize)]
pub struct RampStep {
    /// `ramp`, `retry` (a failed rate measured again), `refine`, `50%` or `90%`.
    pub phase: String,
    #[serde(flatten)]
    pub result: LatencyResult,
    pub sustainable: bool,
    /// Why not, when not.
    pub reason: Option<String>,
}

#[derive(Clone, Debug)]
pub struct RampOptions {
    pub start_rate: f64,
    pub factor: f64,
    pub max_rate: f64,
    pub refine: usize,
    /// Seconds of input per ramp step.
    pub step_seconds: f64,
    /// Seconds of input for the 50% and 90% latency runs.
    pub latency_seconds: f64,
    pub workers: usize,
    pub criteria: Criteria,
}

#[derive(Clone, Debug, Serialize)]
pub struct RampResult {
    pub workers: usize,
    pub criteria: Criteria,
    pub steps: Vec<RampStep>,
    /// Events/s the load generator wrote flat out with no job running (same input kind).
    pub broker_flat_out_rate: f64,
    /// Highest target rate that passed (events/s).
    pub max_sustainable_rate: Option<f64>,
    /// `max_sustainable_rate / broker_flat_out_rate`.
    pub sustainable_over_flat_out: Option<f64>,
    /// Lowest target rate that failed.
    pub first_unsustainable_rate: Option<f64>,
    /// Latency runs at 50% and 90% of the sustainable rate.
    pub at_50_percent: Option<RampStep>,
    pub at_90_percent: Option<RampStep>,
}

/// Runs the ramp, then the two latency runs. `input(rate, seconds)` makes at least `rate` x
/// `seconds` events. `progress` sees every step as it finishes.
pub fn ramp(
    spec: &PipelineSpec,
    kafka: &KafkaConfig,
    topics: &Topics,
    opts: &RampOptions,
    input: &dyn Fn(f64, f64) -> MemoryPartitions,
    progress: &mut dyn FnMut(&RampStep),
) -> Result<RampResult> {
    // Calibration: the broker's write rate with nothing else of ours running.
    let calibration = fresh_topics(kafka, topics, "calibrate")?;
    let flat_out = produce(
        kafka,
        &calibration,
        &input(10_000.0, 15.0),
        &LoadOptions {
            topic: calibration.order_events.name.clone(),
            rate: None,
            max_events: None,
        },
        |_, _| {},
    )?
    .events_per_sec();
    let mut plan = RampPlan::new(opts.start_rate, opts.factor, opts.max_rate, opts.refine);
    let mut steps = Vec::new();
    let mut step = |phase: &str, rate: f64, seconds: f64| -> Result<RampStep> {
        let data = input(rate, seconds);
        let run = LatencyRun {
            workers: opts.workers,
            rate: Some(rate),
            seconds,
            catch_up_limit: Duration::from_secs_f64(
                opts.criteria.max_catch_up_seconds * 4.0 + 10.0,
            ),
        };
        let result = latency(spec, kafka, topics, &data, &run)?;
        let reason = judge(&result, &opts.criteria);
        let s = RampStep {
            phase: phase.into(),
            result,
            sustainable: reason.is_none(),
            reason,
        };
        progress(&s);
        Ok(s)
    };
    while let Some(rate) = plan.next_rate() {
        let phase = if steps
            .last()
            .is_some_and(|s: &RampStep| !s.sustainable && s.result.target_rate == Some(rate))
        {
            "retry"
        } else if plan.first_bad.is_some() {
            "refine"
        } else {
            "ramp"
        };
        let s = step(phase, rate, opts.step_seconds)?;
        plan.record(rate, s.sustainable);
        steps.push(s);
    }
    let (at_50, at_90) = match plan.best {
        Some(best) => (
            Some(step("50%", (best * 0.5).round(), opts.latency_seconds)?),
            Some(step("90%", (best * 0.9).round(), opts.latency_seconds)?),
        ),
        None => (None, None),
    };
    Ok(RampResult {
        workers: opts.workers,
        criteria: opts.criteria.clone(),
        steps,
        broker_flat_out_rate: flat_out,
        max_sustainable_rate: plan.best,
        sustainable_over_flat_out: plan.best.map(|b| b / flat_out),
        first_unsustainable_rate: plan.first_bad,
        at_50_percent: at_50,
        at_90_percent: at_90,
    })
}

/// The result as a text table, one row per measured step.
pub fn table(r: &RampResult) -> String {
    let mut out = String::from(
        "| phase | target/s | achieved/s | events | lag at end | lag growth/s | catch-up s | KPI p50 ms | KPI p99 ms | verdict |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let rows = r
        .steps
        .iter()
        .chain(r.at_50_percent.iter())
        .chain(r.at_90_percent.iter());
    for s in rows {
        let l = &s.result;
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {} |\n",
            s.phase,
            l.target_rate.unwrap_or(f64::NAN),
            l.achieved_rate,
            l.events,
            l.lag_at_end,
            l.lag_growth_per_sec,
            l.catch_up_seconds,
            l.p50_ms,
            l.p99_ms,
            s.reason.as_deref().unwrap_or("sustainable"),
        ));
    }
    out.push_str(&match r.max_sustainable_rate {
        Some(best) => format!(
            "max sustainable rate: {best:.0} events/s (first failing: {}); the broker took {:.0} events/s flat out with no job running: {:.2}x\n",
            r.first_unsustainable_rate
                .map_or("none up to the ramp's maximum".into(), |b| format!("{b:.0}/s")),
            r.broker_flat_out_rate,
            best / r.broker_flat_out_rate
        ),
        None => "max sustainable rate: none (the starting rate already failed)\n".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        target: f64,
        achieved: f64,
        lag: i64,
        growth: f64,
        catch_up: f64,
        p99: f64,
    ) -> LatencyResult {
        LatencyResult {
            target_rate: Some(target),
            achieved_rate: achieved,
            events: (achieved * 20.0) as u64,
            samples: 100,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            max_ms: p99,
            lag_at_end: lag,
            catch_up_seconds: catch_up,
            caught_up: true,
            lag_growth_per_sec: growth,
            lag_samples: Vec::new(),
        }
    }

    #[test]
    fn verdicts_follow_the_criteria() {
        let c = Criteria::default();
        // Keeping up: small lag, flat.
        assert_eq!(
            judge(&step(10_000.0, 9_900.0, 800, 5.0, 0.2, 300.0), &c),
            None
        );
        // Large lag but shrinking is fine while catch-up is quick.
        assert_eq!(
            judge(&step(10_000.0, 9_900.0, 12_000, -500.0, 1.0, 900.0), &c),
            None
        );
        // Large and rising: more than 1 s of input behind, growing by more than 2% of the rate.
        let r = judge(&step(10_000.0, 9_900.0, 12_000, 450.0, 1.0, 900.0), &c).unwrap();
        assert!(r.contains("lag 12000"), "{r}");
        // Rising but small is noise.
        assert_eq!(
            judge(&step(10_000.0, 9_900.0, 9_000, 450.0, 1.0, 900.0), &c),
            None
        );
        // The producer could not reach 95% of the target.
        let r = judge(&step(10_000.0, 9_400.0, 0, 0.0, 0.0, 100.0), &c).unwrap();
        assert!(r.contains("9400/s of 10000/s"), "{r}");
        // Slow catch-up, slow output, gave up.
        assert!(judge(&step(10_000.0, 9_900.0, 0, 0.0, 5.1, 100.0), &c).is_some());
        assert!(judge(&step(10_000.0, 9_900.0, 0, 0.0, 0.1, 5_001.0), &c).is_some());
        let mut s = step(10_000.0, 9_900.0, 0, 0.0, 0.1, 100.0);
        s.caught_up = false;
        assert!(judge(&s, &c).unwrap().contains("gave up"));
        s.caught_up = true;
        s.samples = 0;
        assert!(judge(&s, &c).is_some());
    }

    #[test]
    fn plan_climbs_then_bisects() {
        // A system that sustains up to 7,000 events/s.
        let mut plan = RampPlan::new(2_000.0, 1.5, 100_000.0, 2);
        let mut tried = Vec::new();
        while let Some(r) = plan.next_rate() {
            tried.push(r);
            plan.record(r, r <= 7_000.0);
        }
        // Every failure is measured twice before it counts.
        assert_eq!(
            tried,
            vec![
                2_000.0, 3_000.0, 4_500.0, 6_750.0, 10_125.0, 10_125.0, 8_267.0, 8_267.0, 7_470.0,
                7_470.0
            ]
        );
        assert_eq!(plan.best, Some(6_750.0));
        assert_eq!(plan.first_bad, Some(7_470.0));
    }

    #[test]
    fn one_noisy_failure_does_not_end_the_climb() {
        // Sustains up to 7,000/s, but the first try at 4,500/s fails (something else ran).
        let mut plan = RampPlan::new(2_000.0, 1.5, 100_000.0, 0);
        let mut tried = Vec::new();
        let mut flaked = false;
        while let Some(r) = plan.next_rate() {
            tried.push(r);
            let noisy = r == 4_500.0 && !flaked;
            let ok = r <= 7_000.0 && !noisy;
            flaked |= r == 4_500.0;
            plan.record(r, ok);
        }
        assert_eq!(
            tried,
            vec![2_000.0, 3_000.0, 4_500.0, 4_500.0, 6_750.0, 10_125.0, 10_125.0]
        );
        assert_eq!((plan.best, plan.first_bad), (Some(6_750.0), Some(10_125.0)));
    }

    #[test]
    fn plan_stops_at_the_maximum_and_on_a_failed_start() {
        let mut plan = RampPlan::new(1_000.0, 2.0, 5_000.0, 3);
        let mut tried = Vec::new();
        while let Some(r) = plan.next_rate() {
            tried.push(r);
            plan.record(r, true);
        }
        assert_eq!(tried, vec![1_000.0, 2_000.0, 4_000.0]);
        assert_eq!((plan.best, plan.first_bad), (Some(4_000.0), None));

        let mut plan = RampPlan::new(1_000.0, 2.0, 5_000.0, 3);
        plan.record(1_000.0, false);
        assert_eq!(plan.next_rate(), Some(1_000.0));
        plan.record(1_000.0, false);
        assert_eq!(plan.next_rate(), None);
        assert_eq!((plan.best, plan.first_bad), (None, Some(1_000.0)));
    }

    #[test]
    fn lag_growth_uses_the_second_half() {
        use crate::kafka::bench::lag_growth;
        // Flat at 100 for the first half, then rising by 50 per second.
        let samples: Vec<(f64, i64)> = (0..=20)
            .map(|i| {
                let t = i as f64 * 0.5;
                (
                    t,
                    if t < 5.0 {
                        100
                    } else {
                        100 + ((t - 5.0) * 50.0) as i64
                    },
                )
            })
            .collect();
        assert!((lag_growth(&samples) - 50.0).abs() < 1e-9);
        assert_eq!(lag_growth(&[]), 0.0);
    }
}
