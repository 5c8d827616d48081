//! Oracle step 1 (SEMANTICS section 1): decoding and the per-partition lateness rule.
//!
//! In: the raw partitions. Out: accepted events (with partition and offset), dead letters with
//! their reasons, and late events.

use fulfillment_ai::config::PipelineSpec;
use fulfillment_ai::model::{decode_event, OrderEvent};
use fulfillment_ai::sources::memory::MemoryPartitions;
use fulfillment_ai::sources::Source;

use super::tick_of;

/// An accepted (decoded, not late) event and where it came from.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub partition: u32,
    pub offset: u64,
    pub event: OrderEvent,
}

pub struct Ingested {
    pub accepted: Vec<Accepted>,
    pub dead_letters: Vec<(u32, u64, String)>,
    pub late_events: Vec<(u32, u64, String, String, i64)>,
}

pub fn ingest(spec: &PipelineSpec, input: &MemoryPartitions) -> Ingested {
    let behind = spec.time.out_of_orderness.ms() + spec.time.allowed_lateness.ms();
    let mut out = Ingested {
        accepted: Vec::new(),
        dead_letters: Vec::new(),
        late_events: Vec::new(),
    };
    for p in 0..input.partitions() {
        // Largest ts accepted so far on this partition; no frontier before the first event.
        let mut max_ts: Option<i64> = None;
        for (offset, raw) in input.partition_events(p as usize).enumerate() {
            let offset = offset as u64;
            let event = match decode_event(raw) {
                Ok(e) => e,
                Err(e) => {
                    out.dead_letters.push((p, offset, e.to_string()));
                    continue;
                }
            };
            let late = match max_ts {
                None => false,
                Some(m) => tick_of(spec, event.ts) < tick_of(spec, m - behind),
            };
            if late {
                out.late_events.push((
                    p,
                    offset,
                    event.event_id.to_string(),
                    event.order_id.to_string(),
                    event.ts,
                ));
                continue;
            }
            max_ts = Some(max_ts.map_or(event.ts, |m| m.max(event.ts)));
            out.accepted.push(Accepted {
                partition: p,
                offset,
                event,
            });
        }
    }
    out
}
