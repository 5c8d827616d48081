//! The pipeline spec as the running dataflow sees it, with KPI thresholds an operator may change
//! while the job runs (`PUT /settings/thresholds`).
//!
//! In: threshold updates from the server. Out: the current spec, read by the KPI cell operators
//! at every activation; a changed spec applies to every KPI value rated from then on (intermediate
//! versions and the final value of open windows), never to values already emitted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::pipeline::{Direction, PipelineSpec};

/// A shared, versioned pipeline spec.
pub struct LiveSpec {
    version: AtomicU64,
    spec: RwLock<Arc<PipelineSpec>>,
}

/// One KPI's thresholds as the API shows them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdView {
    pub direction: Direction,
    pub warn: f64,
    pub critical: f64,
    pub min_count: u64,
}

/// A requested change of one KPI's thresholds; absent fields keep their value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdChange {
    pub warn: Option<f64>,
    pub critical: Option<f64>,
    pub min_count: Option<u64>,
}

impl std::fmt::Debug for LiveSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSpec")
            .field("version", &self.version())
            .finish()
    }
}

impl LiveSpec {
    pub fn new(spec: PipelineSpec) -> LiveSpec {
        LiveSpec {
            version: AtomicU64::new(1),
            spec: RwLock::new(Arc::new(spec)),
        }
    }

    /// Changes with every accepted update.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<PipelineSpec> {
        self.spec.read().expect("spec lock").clone()
    }

    /// The current spec when its version differs from `seen` (and the new version).
    pub fn changed_since(&self, seen: u64) -> Option<(u64, Arc<PipelineSpec>)> {
        let v = self.version();
        (v != seen).then(|| (v, self.current()))
    }

    /// Thresholds of every KPI that has them.
    pub fn thresholds(&self) -> BTreeMap<String, ThresholdView> {
        self.current()
            .compiled
            .iter()
            .filter_map(|k| {
                k.thresholds.map(|t| {
                    (
                        k.name.clone(),
                        ThresholdView {
                            direction: t.direction,
                            warn: t.warn,
                            critical: t.critical,
                            min_count: t.min_count,
                        },
                    )
                })
            })
            .collect()
    }

    /// Applies all changes or none. Errors name the KPI and the reason: an unknown KPI, a KPI
    /// without thresholds, a non-finite level, or `critical` on the wrong side of `warn` for
    /// the KPI's direction.
    pub fn update(&self, changes: &BTreeMap<String, ThresholdChange>) -> Result<u64, String> {
        let mut guard = self.spec.write().expect("spec lock");
        let mut spec = PipelineSpec::clone(&guard);
        for (name, change) in changes {
            let Some(i) = spec.compiled.iter().position(|k| &k.name == name) else {
                return Err(format!("no KPI named `{name}`"));
            };
            let Some(mut th) = spec.compiled[i].thresholds else {
                return Err(format!("KPI `{name}` has no thresholds to change"));
            };
            th.warn = change.warn.unwrap_or(th.warn);
            th.critical = change.critical.unwrap_or(th.critical);
            th.min_count = change.min_count.unwrap_or(th.min_count);
            if !(th.warn.is_finite() && th.critical.is_finite()) {
                return Err(format!(
                    "`{name}`: warn and critical must be finite numbers"
                ));
            }
            let ordered = match th.direction {
                Direction::Above => th.critical >= th.warn,
                Direction::Below => th.critical <= th.warn,
            };
            if !ordered {
                return Err(format!(
                    "`{name}` alerts when the value is {} its levels, so critical ({}) must be {} warn ({})",
                    match th.direction {
                        Direction::Above => "above",
                        Direction::Below => "below",
                    },
                    th.critical,
                    match th.direction {
                        Direction::Above => "at or above",
                        Direction::Below => "at or below",
                    },
                    th.warn
                ));
            }
            spec.compiled[i].thresholds = Some(th);
            if let Some(k) = spec.kpis.iter_mut().find(|k| &k.name == name) {
                k.thresholds = Some(th);
            }
        }
        *guard = Arc::new(spec);
        Ok(self.version.fetch_add(1, Ordering::AcqRel) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> LiveSpec {
        let spec = crate::config::pipeline::PipelineSpec::load(std::path::Path::new(
            "pipelines/fulfillment.yaml",
        ))
        .expect("spec");
        LiveSpec::new(spec)
    }

    #[test]
    fn update_changes_levels_and_version_or_nothing() {
        let l = live();
        let before = l.thresholds()["on_time_rate"];
        assert_eq!(before.direction, Direction::Below);
        let mut ok = BTreeMap::new();
        ok.insert(
            "on_time_rate".to_string(),
            ThresholdChange {
                warn: Some(0.97),
                critical: Some(0.9),
                min_count: None,
            },
        );
        assert_eq!(l.update(&ok), Ok(2));
        let after = l.thresholds()["on_time_rate"];
        assert_eq!((after.warn, after.critical), (0.97, 0.9));
        assert_eq!(after.min_count, before.min_count);
        assert!(l.changed_since(1).is_some() && l.changed_since(2).is_none());

        // One bad entry rejects the whole request.
        let mut bad = ok.clone();
        bad.insert(
            "order_to_ship_hours".to_string(),
            ThresholdChange {
                warn: Some(10.0),
                critical: Some(5.0),
                min_count: None,
            },
        );
        let err = l.update(&bad).unwrap_err();
        assert!(
            err.contains("order_to_ship_hours") && err.contains("critical"),
            "{err}"
        );
        let mut unrated = BTreeMap::new();
        unrated.insert("late_deliveries".to_string(), ThresholdChange::default());
        assert!(l.update(&unrated).unwrap_err().contains("no thresholds"));
        let mut unknown = BTreeMap::new();
        unknown.insert("nope".to_string(), ThresholdChange::default());
        assert_eq!(l.update(&unknown).unwrap_err(), "no KPI named `nope`");
        assert_eq!(l.version(), 2);
    }
}
