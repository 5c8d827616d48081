//! Domain model: lifecycle events and their decoding, event time, facts, and output records.

pub mod decode;
pub mod event;
pub mod facts;
pub mod records;
pub mod time;

pub use decode::{decode_event, DecodeError};
pub use event::{EventBody, EventType, OrderCreated, OrderEvent};
pub use records::{Deviation, DeviationType, KpiRecord, KpiStatus};
