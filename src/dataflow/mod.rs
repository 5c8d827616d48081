//! The timely/differential dataflow (being written).

pub mod kpi_math;
pub mod risk_model;
