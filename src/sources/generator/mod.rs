//! The synthetic source: seeded, finite or endless streams of realistic order traffic with
//! injectable incidents.
//!
//! In: a [`GeneratorConfig`] (seed, partitions, order rate, disorder, duplicate and malformed
//! fractions, [`Incident`]s) and the spec's service levels. Out: a [`Source`] of independent keyed
//! partitions (order `g{p}-{n}` lives wholly in partition `p`) of JSON lines with `ts` and
//! `promised_delivery_ts` in epoch milliseconds. Each partition is in event-time order up to
//! `disorder_ms`, and is produced lazily from a schedule of the open orders' pending events, so an
//! endless stream uses bounded memory.
//!
//! Here: the public API and the reader, which draws orders, runs them through the lifecycle model
//! and emits their events in arrival order. Around it: `lifecycle` (the order lifecycle and
//! trouble model, shared with the Superstore replay), `incidents` (incidents as the model's
//! disruptions), `schedule` (open orders and pending events), `json` (events as JSON bytes).

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::memory::MemoryPartitions;
use super::{PartitionReader, PollStatus, RawBatch, Source};
use crate::config::PipelineSpec;

mod incidents;
pub(crate) mod json;
pub(crate) mod lifecycle;
mod schedule;
#[cfg(test)]
mod tests;

pub use lifecycle::{CARRIERS, REGIONS, SEGMENTS, SHIP_MODES, WAREHOUSES};

use incidents::{OrderIncidents, Resolved};
use json::{write_event, Corruption};
use lifecycle::{
    between, cents, chance, exponential, mix64, normal, pick, simulate, Plan, SimEvent, Step, DAY,
    MINUTE, MODE_MIX, REGION_MIX, SEGMENT_MIX, SHIP_DAYS,
};
use schedule::{OrderSlot, Pending, Schedule};

/// Trouble injected into the generated traffic.
#[derive(Clone, Debug, PartialEq)]
pub enum Incident {
    /// Parcels of `carrier` in `region` in transit at any time during `[from_ms, to_ms)` are, with
    /// `probability`, held up by `extra_delay_ms` (with a `carrier network disruption` exception).
    CarrierCollapse {
        carrier: String,
        region: String,
        from_ms: i64,
        to_ms: i64,
        extra_delay_ms: i64,
        probability: f64,
    },
    /// Shipments of `warehouse` planned during `[from_ms, to_ms)` leave `extra_ship_delay_ms` later.
    WarehouseBacklog {
        warehouse: String,
        from_ms: i64,
        to_ms: i64,
        extra_ship_delay_ms: i64,
    },
}

#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub seed: u64,
    pub partitions: u32,
    /// Event time of the start of every partition's stream.
    pub start_ms: i64,
    /// Orders per partition; `None` = endless.
    pub orders_per_partition: Option<u64>,
    /// Mean event-time gap between orders within a partition (exponentially distributed).
    pub order_interval_ms: i64,
    /// Bound of the disorder: an event never arrives after one more than this later in event time.
    pub disorder_ms: i64,
    /// Fraction of events sent twice (the copy arrives later, within the disorder bound).
    pub duplicate_rate: f64,
    /// Fraction of lines replaced by bad input: truncated JSON, `order_created` without
    /// `promised_delivery_ts`, an unparseable `ts`, an unknown `type`.
    pub malformed_rate: f64,
    pub incidents: Vec<Incident>,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            partitions: 4,
            start_ms: 1_704_067_200_000, // 2024-01-01T00:00:00Z
            orders_per_partition: Some(10_000),
            order_interval_ms: 10_000,
            disorder_ms: 10 * MINUTE,
            duplicate_rate: 0.0,
            malformed_rate: 0.0,
            incidents: Vec::new(),
        }
    }
}

struct Model {
    cfg: GeneratorConfig,
    /// (ship_within, transit) per ship mode index, [`lifecycle::OTHER`] = the default level.
    service: [(i64, i64); 5],
    incidents: Vec<Resolved>,
}

/// The synthetic source. Cheap to clone-share: readers hold an `Arc` of the model.
pub struct GeneratorSource {
    model: Arc<Model>,
}

impl GeneratorSource {
    pub fn new(cfg: GeneratorConfig, spec: &PipelineSpec) -> Self {
        let level = |m: &str| {
            let l = spec.service_levels.for_mode(m);
            (l.ship_within.ms(), l.transit.ms())
        };
        let d = &spec.service_levels.default;
        let service = [
            level(SHIP_MODES[0]),
            level(SHIP_MODES[1]),
            level(SHIP_MODES[2]),
            level(SHIP_MODES[3]),
            (d.ship_within.ms(), d.transit.ms()),
        ];
        let incidents = cfg.incidents.iter().map(Resolved::new).collect();
        GeneratorSource {
            model: Arc::new(Model {
                cfg,
                service,
                incidents,
            }),
        }
    }

    /// Reads every partition to its end, or to `max_events_per_partition` events.
    /// An endless generator needs the cap.
    pub fn materialize(&self, max_events_per_partition: Option<usize>) -> MemoryPartitions {
        let cfg = &self.model.cfg;
        assert!(
            cfg.orders_per_partition.is_some() || max_events_per_partition.is_some(),
            "materializing an endless generator needs max_events_per_partition"
        );
        let cap = max_events_per_partition.unwrap_or(usize::MAX);
        let parts: Vec<RawBatch> = (0..cfg.partitions)
            .map(|p| {
                let mut reader = GeneratorReader::new(self.model.clone(), p);
                let mut all = RawBatch::default();
                // `poll` appends, so the whole partition accumulates in one batch.
                while all.len() < cap
                    && reader.poll((cap - all.len()).min(1 << 16), &mut all) != PollStatus::Finished
                {
                }
                all
            })
            .collect();
        MemoryPartitions::new(self.describe(), parts.iter().map(RawBatch::iter))
    }
}

impl Source for GeneratorSource {
    fn partitions(&self) -> u32 {
        self.model.cfg.partitions
    }
    fn describe(&self) -> String {
        let c = &self.model.cfg;
        let orders = c
            .orders_per_partition
            .map_or("endless".to_string(), |n| format!("{n} orders"));
        format!(
            "generator (seed {}, {} partitions x {orders}, 1 order per {} ms, disorder {} ms, {} incidents)",
            c.seed,
            c.partitions,
            c.order_interval_ms,
            c.disorder_ms,
            c.incidents.len()
        )
    }
    fn readers(&self, worker: usize, peers: usize) -> Vec<Box<dyn PartitionReader>> {
        (0..self.model.cfg.partitions)
            .filter(|p| *p as usize % peers.max(1) == worker)
            .map(|p| {
                Box::new(GeneratorReader::new(self.model.clone(), p)) as Box<dyn PartitionReader>
            })
            .collect()
    }
}

struct GeneratorReader {
    model: Arc<Model>,
    partition: u32,
    /// Order content and arrival jitter.
    rng: ChaCha8Rng,
    /// Duplicates and malformed lines (a separate stream, so they do not change the content).
    transport: ChaCha8Rng,
    next_order: u64,
    next_created_ts: i64,
    pending: Schedule,
    seq: u64,
    slots: Vec<OrderSlot>,
    free: Vec<u32>,
    offset: u64,
    scratch: Vec<SimEvent>,
}

impl GeneratorReader {
    fn new(model: Arc<Model>, partition: u32) -> Self {
        let seed = mix64(model.cfg.seed ^ mix64(partition as u64 + 1));
        let rng = ChaCha8Rng::seed_from_u64(seed);
        let mut transport = ChaCha8Rng::seed_from_u64(seed);
        transport.set_stream(1);
        let next_created_ts = model.cfg.start_ms;
        GeneratorReader {
            model,
            partition,
            rng,
            transport,
            next_order: 0,
            next_created_ts,
            pending: Schedule::new(next_created_ts),
            seq: 0,
            slots: Vec::new(),
            free: Vec::new(),
            offset: 0,
            scratch: Vec::with_capacity(16),
        }
    }

    fn orders_done(&self) -> bool {
        self.model
            .cfg
            .orders_per_partition
            .is_some_and(|m| self.next_order >= m)
    }

    /// Simulates the next order and queues its events.
    fn generate_order(&mut self) {
        let rng = &mut self.rng;
        let cfg = &self.model.cfg;
        let created = self.next_created_ts;
        let gap = (exponential(rng) * cfg.order_interval_ms.max(1) as f64) as i64;
        self.next_created_ts = created + gap.max(1);
        let region = pick(rng, &REGION_MIX);
        let mode = pick(rng, &MODE_MIX);
        let segment = pick(rng, &SEGMENT_MIX);
        let warehouse = usize::from(!chance(rng, 0.6));
        let customer = (rng.gen::<f64>().powi(2) * 200_000.0) as u32;
        let (mut qty, mut amount) = (0u32, 0.0f64);
        loop {
            let units = pick(rng, &[0.45, 0.25, 0.15, 0.10, 0.05]) as u32 + 1;
            let unit_price = (20.0 * (1.1 * normal(rng)).exp()).clamp(0.5, 5_000.0);
            qty += units;
            amount += units as f64 * unit_price;
            if qty >= 14 || !chance(rng, 0.45) {
                break;
            }
        }
        let ship_day = created.div_euclid(DAY) + pick(rng, &SHIP_DAYS[mode]) as i64;
        let plan = Plan {
            created_ts: created,
            mode,
            region,
            service: self.model.service[mode],
            qty,
            amount: cents(amount),
            ship_day,
        };
        let dis = OrderIncidents {
            incidents: &self.model.incidents,
            region,
            warehouse,
        };
        let outcome = simulate(rng, &plan, &dis, &mut self.scratch);

        let slot = OrderSlot {
            n: self.next_order,
            customer,
            segment: segment as u8,
            region: region as u8,
            mode: mode as u8,
            warehouse: warehouse as u8,
            carrier: outcome.carrier as u8,
            qty,
            amount: plan.amount,
            promised_ts: outcome.promised_ts,
            tracking: outcome.tracking,
            pending: self.scratch.len() as u32,
        };
        self.next_order += 1;
        let index = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        let disorder = cfg.disorder_ms.max(0);
        for (k, e) in self.scratch.iter().enumerate() {
            let jitter = if disorder > 0 {
                rng.gen_range(0..=disorder)
            } else {
                0
            };
            self.seq += 1;
            self.pending.push(Pending {
                key: e.ts + jitter,
                seq: self.seq,
                ts: e.ts,
                slot: index,
                k: k as u16,
                dup: false,
                step: e.step,
            });
        }
    }

    /// Emits the earliest pending event into `batch`.
    fn emit(&mut self, batch: &mut RawBatch) {
        let p = self
            .pending
            .pop()
            .expect("emit is called with a pending event");
        let cfg = &self.model.cfg;
        let t = &mut self.transport;
        if cfg.duplicate_rate > 0.0 && !p.dup && t.gen::<f64>() < cfg.duplicate_rate {
            let latest = p.ts + cfg.disorder_ms.max(0);
            self.seq += 1;
            self.slots[p.slot as usize].pending += 1;
            self.pending.push(Pending {
                key: between(t, p.key, latest),
                seq: self.seq,
                dup: true,
                ..p
            });
        }
        let corruption = if cfg.malformed_rate > 0.0 && t.gen::<f64>() < cfg.malformed_rate {
            let kinds = [
                Corruption::Truncated,
                Corruption::BadTs,
                Corruption::UnknownType,
                Corruption::MissingPromise,
            ];
            kinds[t.gen_range(0..if p.step == Step::Created { 4 } else { 3 })]
        } else {
            Corruption::None
        };
        let slot = &mut self.slots[p.slot as usize];
        let start = batch.data.len();
        write_event(&mut batch.data, self.partition, slot, &p, corruption, t);
        if corruption == Corruption::Truncated {
            let len = batch.data.len() - start;
            batch.data.truncate(start + len * t.gen_range(40..90) / 100);
        }
        batch.ends.push(batch.data.len());
        self.offset += 1;
        slot.pending -= 1;
        if slot.pending == 0 {
            self.free.push(p.slot);
        }
    }
}

impl PartitionReader for GeneratorReader {
    fn partition(&self) -> u32 {
        self.partition
    }
    fn poll(&mut self, max_events: usize, batch: &mut RawBatch) -> PollStatus {
        let first_offset = self.offset;
        let mut n = 0;
        while n < max_events {
            let orders_done = self.orders_done();
            match self.pending.peek_key() {
                // Every event not generated yet has ts (and so key) >= the next order's creation.
                Some(key) if orders_done || key <= self.next_created_ts => {
                    self.emit(batch);
                    n += 1;
                }
                _ if orders_done => break,
                _ => self.generate_order(),
            }
        }
        if n > 0 {
            batch.first_offset = first_offset;
            PollStatus::Ready
        } else if self.orders_done() && self.pending.len() == 0 {
            PollStatus::Finished
        } else {
            PollStatus::Ready
        }
    }
}
