//! Facts: the measurements the order-state operator derives from events, and the vocabulary
//! (kinds, flags, fields, dimensions) that KPI specs select and aggregate over.
//!
//! In: produced by `dataflow::orders` and `dataflow::risk`. Out: consumed by `dataflow::kpis`.
//! All measured fields are integers in a base unit (milliseconds, cents, parts per million), so
//! sums are exact and the incremental result equals a batch recompute bit for bit.

use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

macro_rules! vocabulary {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum $name { $($variant),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $text),* } }
            pub fn parse(s: &str) -> Option<$name> { Self::ALL.iter().copied().find(|x| x.as_str() == s) }
            pub fn names() -> String { Self::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ") }
        }
    };
}

vocabulary!(
    /// What happened, and when (the fact's `ts`).
    FactKind {
        Order => "order",
        Payment => "payment",
        Shipment => "shipment",
        Delivery => "delivery",
        Gap => "gap",
        Exception => "exception",
        Refund => "refund",
        Ticket => "ticket",
        Cancel => "cancel",
        Risk => "risk",
        Backlog => "backlog",
    }
);

vocabulary!(
    /// Boolean properties a fact may carry.
    FactFlag {
        OnTime => "on_time",
        Late => "late",
        InFull => "in_full",
        Otif => "otif",
        HasPromise => "has_promise",
        HasQty => "has_qty",
        Failed => "failed",
        IsReturn => "is_return",
    }
);

vocabulary!(
    /// Integer-valued measurements a fact may carry, in their base unit.
    FactField {
        DelayMs => "delay_ms",
        OrderToDeliveryMs => "order_to_delivery_ms",
        TransitMs => "transit_ms",
        OrderToShipMs => "order_to_ship_ms",
        AmountCents => "amount_cents",
        Qty => "qty",
        RiskPpm => "risk_ppm",
    }
);

vocabulary!(
    /// Segment dimensions a KPI can be broken down by.
    Dimension {
        Region => "region",
        ShipMode => "ship_mode",
        Warehouse => "warehouse",
        Segment => "segment",
        Carrier => "carrier",
    }
);

impl FactKind {
    pub fn has_flag(self, f: FactFlag) -> bool {
        use FactFlag::*;
        match self {
            FactKind::Delivery => matches!(f, OnTime | Late | InFull | Otif | HasPromise | HasQty),
            FactKind::Payment => f == Failed,
            FactKind::Refund => f == IsReturn,
            _ => false,
        }
    }
    pub fn has_field(self, f: FactField) -> bool {
        use FactField::*;
        match self {
            FactKind::Order => matches!(f, AmountCents | Qty),
            FactKind::Payment => f == AmountCents,
            FactKind::Shipment => f == OrderToShipMs,
            FactKind::Delivery => matches!(f, DelayMs | OrderToDeliveryMs | TransitMs | Qty),
            FactKind::Refund => f == AmountCents,
            FactKind::Risk => f == RiskPpm,
            _ => false,
        }
    }
}

/// Dimension values of an order (`None` while unknown, e.g. no `order_created` seen yet or not
/// shipped, so no carrier).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub region: Option<CompactString>,
    pub ship_mode: Option<CompactString>,
    pub warehouse: Option<CompactString>,
    pub segment: Option<CompactString>,
    pub carrier: Option<CompactString>,
}

impl Dims {
    pub fn get(&self, d: Dimension) -> Option<&CompactString> {
        match d {
            Dimension::Region => self.region.as_ref(),
            Dimension::ShipMode => self.ship_mode.as_ref(),
            Dimension::Warehouse => self.warehouse.as_ref(),
            Dimension::Segment => self.segment.as_ref(),
            Dimension::Carrier => self.carrier.as_ref(),
        }
    }
}

/// One measurement. `fields[f as usize]` is meaningful when bit `f` of `present` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub kind: FactKind,
    /// Event time the fact is attributed to (selects its windows).
    pub ts: i64,
    /// Shared with the order record: cloning a fact does not copy the strings.
    pub dims: Arc<Dims>,
    flags: u16,
    present: u16,
    fields: [i64; 7],
}

impl Fact {
    pub fn new(kind: FactKind, ts: i64, dims: Arc<Dims>) -> Fact {
        Fact {
            kind,
            ts,
            dims,
            flags: 0,
            present: 0,
            fields: [0; 7],
        }
    }
    pub fn flag(&self, f: FactFlag) -> bool {
        self.flags & (1 << f as u16) != 0
    }
    pub fn set_flag(&mut self, f: FactFlag, on: bool) -> &mut Self {
        if on {
            self.flags |= 1 << f as u16;
        } else {
            self.flags &= !(1 << f as u16);
        }
        self
    }
    pub fn field(&self, f: FactField) -> Option<i64> {
        (self.present & (1 << f as u16) != 0).then(|| self.fields[f as usize])
    }
    pub fn set_field(&mut self, f: FactField, v: i64) -> &mut Self {
        self.present |= 1 << f as u16;
        self.fields[f as usize] = v;
        self
    }
}

/// Money to integer cents (half away from zero).
pub fn cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// Risk probability to integer parts per million.
pub fn ppm(p: f64) -> i64 {
    (p.clamp(0.0, 1.0) * 1_000_000.0).round() as i64
}
