//! fulfillment-ai: a streaming order-fulfillment monitor on timely/differential dataflow.
//!
//! Events flow `sources` -> `dataflow` (decode, watermark, order state, KPIs, risk, deviations) ->
//! `sinks`. `config` holds the declarative pipeline spec; `model` the event and record types.

pub mod agents;
pub mod bench;
pub mod config;
pub mod dataflow;
pub mod kafka;
pub mod llm;
pub mod model;
pub mod rag;
pub mod serve;
pub mod sinks;
pub mod soak;
pub mod sources;
