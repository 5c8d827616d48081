//! Benchmarks shared by `fulfillment-ai bench` and `benches/`: end-to-end throughput (decode +
//! full dataflow) for several worker counts, peak RSS, bytes per live order, and the prequential
//! quality of the predicted-delay risk score.
//!
//! In: a pipeline spec and materialised inputs. Out: result structs printed as a table / JSON.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::config::PipelineSpec;
use crate::dataflow::{run_job, JobOptions, JobReport, RiskScore};
use crate::model::{decode_event, EventBody};
use crate::sources::memory::MemoryPartitions;

/// Peak resident set size of this process in bytes (VmHWM), if the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// Current resident set size in bytes (VmRSS).
pub fn rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the kernel's peak-RSS mark to the current RSS (Linux `clear_refs` value 5).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub workers: usize,
    pub events: u64,
    pub input_bytes: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub mb_per_sec: f64,
    pub peak_rss_mb: f64,
    pub peak_live_orders: u64,
    pub final_kpis: u64,
    pub deviations: u64,
}

/// Runs the full job over `input` with `workers` workers, keeping nothing in memory.
pub fn throughput(
    spec: &PipelineSpec,
    input: &MemoryPartitions,
    workers: usize,
) -> ThroughputResult {
    reset_peak_rss();
    let opts = JobOptions {
        workers,
        keep_in_memory: false,
        ..Default::default()
    };
    let started = Instant::now();
    let report = run_job(spec, Arc::new(input.clone()), &opts).expect("benchmark job runs");
    let seconds = started.elapsed().as_secs_f64();
    let peak = peak_rss_bytes().unwrap_or(0);
    let events = report.counters.received;
    ThroughputResult {
        workers,
        events,
        input_bytes: input.bytes() as u64,
        seconds,
        events_per_sec: events as f64 / seconds,
        mb_per_sec: input.bytes() as f64 / seconds / 1e6,
        peak_rss_mb: peak as f64 / 1e6,
        peak_live_orders: report.peak_live_orders,
        final_kpis: report.counters.final_kpis,
        deviations: report.counters.deviations,
    }
}

/// Memory per live order, measured as the slope of RSS over the number of open orders: two
/// fresh processes (`fulfillment-ai bench --memory-probe N`) run jobs with `n` and `2n` orders
/// (one a second) that are created and paid but never ship, so every order is live when the
/// input ends; each reads its RSS then, before the end-of-input drain, and
/// `(rss(2n) - rss(n)) / n` cancels fixed costs. Includes the order record, its timers, its risk
/// state and its share of the backlog arrangement.
pub fn bytes_per_live_order(n: usize, pipeline: &std::path::Path) -> std::io::Result<f64> {
    let probe = |count: usize| -> std::io::Result<f64> {
        let out = std::process::Command::new(std::env::current_exe()?)
            .args(["bench", "--pipeline"])
            .arg(pipeline)
            .args(["--memory-probe", &count.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse::<f64>()
            .map_err(|_| std::io::Error::other(format!("memory probe printed `{text}`")))
    };
    let small = probe(n)?;
    let large = probe(2 * n)?;
    Ok((large - small) / n as f64)
}

/// One memory probe in this process: RSS at input end of a job with `count` open orders.
pub fn memory_probe(spec: &PipelineSpec, count: usize) -> u64 {
    let t0: i64 = 1_704_067_200_000;
    let lines: Vec<String> = (0..count)
        .flat_map(|i| {
            let ts = t0 + i as i64 * 1000;
            let order = format!("mem-{i}");
            [
                format!(
                    r#"{{"v":1,"event_id":"{order}-c","order_id":"{order}","type":"order_created","ts":{ts},"customer_id":"c{}","segment":"Consumer","region":"West","ship_mode":"Standard Class","warehouse":"WH-WEST-{}","qty":2,"amount":40.5,"promised_delivery_ts":{}}}"#,
                    i % 5000,
                    i % 2,
                    ts + 20 * 86_400_000
                ),
                format!(r#"{{"v":1,"event_id":"{order}-p","order_id":"{order}","type":"payment_authorized","ts":{}}}"#, ts + 1000),
            ]
        })
        .collect();
    let input = MemoryPartitions::round_robin("memory probe", lines, spec.time.partitions);
    let opts = JobOptions {
        workers: 1,
        keep_in_memory: false,
        ..Default::default()
    };
    let report = run_job(spec, Arc::new(input), &opts).expect("memory probe runs");
    report.rss_at_input_end.unwrap_or(0)
}

/// Least-squares slope of `ys` over `xs` (pairs by index); `None` with fewer than two points or
/// no spread in `xs`.
pub fn least_squares_slope(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs[..n].iter().zip(&ys[..n]) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Prequential quality of the risk score against what then happened.
#[derive(Debug, Clone, Serialize)]
pub struct RiskQuality {
    /// Orders with a promise and a known outcome that were scored before it.
    pub orders: u64,
    pub late_orders: u64,
    /// ROC-AUC of the first score at or after shipment.
    pub auc_at_shipment: f64,
    /// ROC-AUC of the highest score before the outcome and before the promise passed.
    pub auc_max_before_outcome: f64,
    pub warn: BandQuality,
    pub critical: BandQuality,
    /// For late orders that got a warning: median hours between the first warning and the promise.
    pub median_warning_lead_hours: f64,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[derive(Debug, Clone, Serialize)]
pub struct BandQuality {
    pub threshold: f64,
    pub flagged: u64,
    pub precision: f64,
    pub recall: f64,
}

/// Outcome of an order from the raw input: (promised_ts, shipped_ts, delivered_ts, cancelled),
/// and the latest event time of the input.
type Outcome = (i64, Option<i64>, Option<i64>, bool);

fn outcomes(input: &MemoryPartitions) -> (HashMap<String, Outcome>, i64) {
    let mut out: HashMap<String, Outcome> = HashMap::new();
    let mut latest = i64::MIN;
    for p in 0..input.partitions_len() {
        for raw in input.partition_events(p) {
            let Ok(e) = decode_event(raw) else { continue };
            latest = latest.max(e.ts);
            let entry = out
                .entry(e.order_id.to_string())
                .or_insert((i64::MAX, None, None, false));
            match e.body {
                EventBody::OrderCreated(c) => entry.0 = c.promised_delivery_ts,
                EventBody::Shipped { .. } => entry.1 = Some(entry.1.map_or(e.ts, |s| s.min(e.ts))),
                EventBody::Delivered { .. } => {
                    entry.2 = Some(entry.2.map_or(e.ts, |d| d.min(e.ts)))
                }
                EventBody::Cancelled { .. } => entry.3 = true,
                _ => {}
            }
        }
    }
    (out, latest)
}

/// ROC-AUC by the rank-sum formula (ties count one half).
pub fn roc_auc(scored: &[(f64, bool)]) -> f64 {
    let mut v: Vec<(f64, bool)> = scored.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (pos, neg) = v.iter().fold(
        (0f64, 0f64),
        |(p, n), (_, y)| if *y { (p + 1.0, n) } else { (p, n + 1.0) },
    );
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Scores each order before its outcome is known and compares with the outcome.
pub fn risk_quality(
    spec: &PipelineSpec,
    input: &MemoryPartitions,
    scores: &[RiskScore],
) -> RiskQuality {
    let (outcomes, latest) = outcomes(input);
    let mut by_order: HashMap<&str, Vec<&RiskScore>> = HashMap::new();
    for s in scores {
        by_order.entry(s.order_id.as_str()).or_default().push(s);
    }
    let mut at_ship = Vec::new();
    let mut max_before = Vec::new();
    let mut lead_hours: Vec<f64> = Vec::new();
    for (order, list) in by_order {
        let Some(&(promised, shipped, delivered, cancelled)) = outcomes.get(order) else {
            continue;
        };
        // Unknown outcomes are skipped: cancelled, no promise, or the input ends before either
        // the delivery or the promise.
        if cancelled || promised == i64::MAX || (delivered.is_none() && promised >= latest) {
            continue;
        }
        // Late: delivered after the promise, or not delivered by it.
        let late = delivered.is_none_or(|d| d > promised);
        let known_at = delivered.unwrap_or(promised).min(promised);
        let before: Vec<&&RiskScore> = list.iter().filter(|s| s.now < known_at).collect();
        if before.is_empty() {
            continue;
        }
        let max = before.iter().map(|s| s.risk_ppm).max().unwrap_or(0) as f64 / 1e6;
        max_before.push((max, late));
        if late {
            let warn_ppm = crate::model::facts::ppm(spec.risk.warn);
            if let Some(first) = before
                .iter()
                .filter(|s| s.risk_ppm >= warn_ppm)
                .map(|s| s.now)
                .min()
            {
                lead_hours.push((promised - first) as f64 / 3.6e6);
            }
        }
        if let Some(shipped) = shipped {
            if let Some(first) = before
                .iter()
                .filter(|s| s.now >= shipped)
                .min_by_key(|s| s.now)
            {
                at_ship.push((first.risk_ppm as f64 / 1e6, late));
            }
        }
    }
    let band = |threshold: f64| {
        let flagged = max_before.iter().filter(|(s, _)| *s >= threshold).count() as u64;
        let hits = max_before
            .iter()
            .filter(|(s, y)| *s >= threshold && *y)
            .count() as u64;
        let late = max_before.iter().filter(|(_, y)| *y).count() as u64;
        BandQuality {
            threshold,
            flagged,
            precision: if flagged > 0 {
                hits as f64 / flagged as f64
            } else {
                f64::NAN
            },
            recall: if late > 0 {
                hits as f64 / late as f64
            } else {
                f64::NAN
            },
        }
    };
    RiskQuality {
        orders: max_before.len() as u64,
        late_orders: max_before.iter().filter(|(_, y)| *y).count() as u64,
        auc_at_shipment: roc_auc(&at_ship),
        auc_max_before_outcome: roc_auc(&max_before),
        warn: band(spec.risk.warn),
        critical: band(spec.risk.critical),
        median_warning_lead_hours: median(&mut lead_hours),
    }
}

/// Runs the job collecting risk scores and evaluates them.
pub fn evaluate_risk(spec: &PipelineSpec, input: &MemoryPartitions) -> (RiskQuality, JobReport) {
    let opts = JobOptions {
        collect_risk_scores: true,
        keep_in_memory: true,
        ..Default::default()
    };
    let report = run_job(spec, Arc::new(input.clone()), &opts).expect("risk evaluation job runs");
    (risk_quality(spec, input, &report.risk_scores), report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        assert_eq!(
            roc_auc(&[(0.1, false), (0.2, false), (0.8, true), (0.9, true)]),
            1.0
        );
        assert_eq!(
            roc_auc(&[(0.9, false), (0.8, false), (0.2, true), (0.1, true)]),
            0.0
        );
        assert_eq!(roc_auc(&[(0.5, false), (0.5, true)]), 0.5);
        assert!(roc_auc(&[(0.5, true)]).is_nan());
    }

    #[test]
    fn slope_of_a_line_and_of_noise_around_it() {
        assert_eq!(
            least_squares_slope(&[0.0, 1.0, 2.0, 3.0], &[1.0, 3.0, 5.0, 7.0]),
            Some(2.0)
        );
        // Symmetric noise around a flat line: slope 0.
        assert_eq!(
            least_squares_slope(&[0.0, 1.0, 2.0, 3.0], &[5.0, 6.0, 6.0, 5.0]),
            Some(0.0)
        );
        assert_eq!(least_squares_slope(&[1.0, 1.0], &[0.0, 9.0]), None);
        assert_eq!(least_squares_slope(&[1.0], &[0.0]), None);
    }
}
