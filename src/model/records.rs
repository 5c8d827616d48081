//! Output records of the streaming core: KPI window values and deviations.
//!
//! In: built by `dataflow::kpis` and the deviation rules. Out: serialised to sinks (JSONL now,
//! Kafka and WebSocket later). Both carry deterministic keys so a consumer can upsert them.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::config::pipeline::Severity;

/// Threshold status of a KPI value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KpiStatus {
    Ok,
    Warn,
    Critical,
    /// Fewer facts than the threshold's `min_count`, or no thresholds.
    Unrated,
}

/// One KPI value for (kpi, dimension values, window). Upsert key: [`KpiRecord::key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KpiRecord {
    pub kpi: String,
    /// Dimension name -> value; empty for the global series.
    pub dims: BTreeMap<String, String>,
    /// Window start and end, epoch ms (end exclusive).
    pub window_start: i64,
    pub window_end: i64,
    /// The KPI value; `None` when undefined (e.g. a rate over zero facts).
    pub value: Option<f64>,
    /// Numerator and denominator (rate, ratio), or count and sum (count, mean, sum, quantile).
    pub numerator: i64,
    pub denominator: i64,
    pub status: KpiStatus,
    /// Increases with every emitted update of this key; the final update has `final_: true`.
    pub version: u32,
    #[serde(rename = "final")]
    pub is_final: bool,
}

impl KpiRecord {
    /// Stable upsert key: `kpi|dim=value,...|window_start`.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}",
            self.kpi,
            dims_key(&self.dims),
            self.window_start
        )
    }
}

/// Segment context of a deviation (dimension or KPI name -> value). Inline strings: building
/// one does not allocate per entry.
pub type Context = BTreeMap<CompactString, CompactString>;

/// The numbers that fired a deviation.
pub type Evidence = BTreeMap<CompactString, f64>;

/// Kinds of deviation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviationType {
    SlaShipBreach,
    SlaDeliveryBreach,
    FulfillmentGap,
    PaymentFailed,
    CarrierException,
    PartialDelivery,
    RefundRequested,
    TicketRaised,
    PredictedDelay,
    KpiThresholdBreach,
    KpiAnomaly,
}

impl DeviationType {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviationType::SlaShipBreach => "sla_ship_breach",
            DeviationType::SlaDeliveryBreach => "sla_delivery_breach",
            DeviationType::FulfillmentGap => "fulfillment_gap",
            DeviationType::PaymentFailed => "payment_failed",
            DeviationType::CarrierException => "carrier_exception",
            DeviationType::PartialDelivery => "partial_delivery",
            DeviationType::RefundRequested => "refund_requested",
            DeviationType::TicketRaised => "ticket_raised",
            DeviationType::PredictedDelay => "predicted_delay",
            DeviationType::KpiThresholdBreach => "kpi_threshold_breach",
            DeviationType::KpiAnomaly => "kpi_anomaly",
        }
    }
}

/// A detected deviation. `id` is deterministic: the same input always yields the same ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deviation {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: DeviationType,
    pub severity: Severity,
    /// The order concerned (per-order rules).
    pub order_id: Option<String>,
    /// Segment context: the order's dimensions, or the KPI's dimension values.
    pub context: Context,
    /// The numbers that fired the rule.
    pub evidence: Evidence,
    /// Human-readable one-line summary.
    pub summary: String,
    /// Event time the condition became true (epoch ms).
    pub event_time: i64,
    /// Wall-clock detection time (epoch ms); not part of equality checks.
    pub detected_at: i64,
}

/// `k=v,k=v` in key order; empty for the global series. Used in KPI keys and deviation ids.
pub fn dims_key<K: std::fmt::Display, V: std::fmt::Display>(dims: &BTreeMap<K, V>) -> String {
    dims.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
