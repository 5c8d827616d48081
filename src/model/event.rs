//! The order lifecycle event model (wire format version 1).
//!
//! Every event is a JSON object with `v`, `event_id`, `order_id`, `type` and `ts` plus the fields
//! of its type. `OrderEvent` is the validated, owned form that flows through the dataflow; it is
//! produced by [`crate::model::decode`] and serialised back to the same JSON by
//! [`OrderEvent::to_json`]. Unknown fields are kept verbatim in `extra`.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::model::time::EpochMs;

/// Current wire-format version.
pub const EVENT_VERSION: u64 = 1;

/// A validated order lifecycle event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: CompactString,
    pub order_id: CompactString,
    /// Event time in epoch milliseconds (UTC).
    pub ts: EpochMs,
    pub body: EventBody,
    /// Unknown top-level fields, as a JSON object text (`{"k":v,...}`), kept for downstream users.
    pub extra: Option<Box<str>>,
}

/// Static data of an order, carried by `order_created`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderCreated {
    pub customer_id: CompactString,
    pub segment: CompactString,
    pub region: CompactString,
    pub ship_mode: CompactString,
    pub warehouse: CompactString,
    /// Units ordered (sum over items), when the producer knows it.
    pub qty: Option<u32>,
    /// Order value in the shop currency.
    pub amount: f64,
    pub promised_delivery_ts: EpochMs,
}

/// The type-specific part of an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventBody {
    OrderCreated(Box<OrderCreated>),
    PaymentAuthorized,
    PaymentFailed {
        reason: CompactString,
    },
    Shipped {
        carrier: CompactString,
        tracking: Option<CompactString>,
        qty: Option<u32>,
    },
    CarrierCheckpoint,
    CarrierException {
        reason: CompactString,
    },
    OutForDelivery,
    Delivered {
        qty: Option<u32>,
    },
    DeliveryFailed {
        reason: Option<CompactString>,
    },
    RefundRequested {
        reason: CompactString,
        amount: f64,
    },
    ReturnRequested {
        reason: CompactString,
        amount: f64,
    },
    TicketRaised {
        reason: Option<CompactString>,
    },
    Cancelled {
        reason: Option<CompactString>,
    },
}

/// The `type` discriminant of an event, in wire spelling order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    OrderCreated,
    PaymentAuthorized,
    PaymentFailed,
    Shipped,
    CarrierCheckpoint,
    CarrierException,
    OutForDelivery,
    Delivered,
    DeliveryFailed,
    RefundRequested,
    ReturnRequested,
    TicketRaised,
    Cancelled,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::OrderCreated,
        EventType::PaymentAuthorized,
        EventType::PaymentFailed,
        EventType::Shipped,
        EventType::CarrierCheckpoint,
        EventType::CarrierException,
        EventType::OutForDelivery,
        EventType::Delivered,
        EventType::DeliveryFailed,
        EventType::RefundRequested,
        EventType::ReturnRequested,
        EventType::TicketRaised,
        EventType::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderCreated => "order_created",
            EventType::PaymentAuthorized => "payment_authorized",
            EventType::PaymentFailed => "payment_failed",
            EventType::Shipped => "shipped",
            EventType::CarrierCheckpoint => "carrier_checkpoint",
            EventType::CarrierException => "carrier_exception",
            EventType::OutForDelivery => "out_for_delivery",
            EventType::Delivered => "delivered",
            EventType::DeliveryFailed => "delivery_failed",
            EventType::RefundRequested => "refund_requested",
            EventType::ReturnRequested => "return_requested",
            EventType::TicketRaised => "ticket_raised",
            EventType::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.iter().copied().find(|t| t.as_str() == s)
    }
}

impl EventBody {
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::OrderCreated(_) => EventType::OrderCreated,
            EventBody::PaymentAuthorized => EventType::PaymentAuthorized,
            EventBody::PaymentFailed { .. } => EventType::PaymentFailed,
            EventBody::Shipped { .. } => EventType::Shipped,
            EventBody::CarrierCheckpoint => EventType::CarrierCheckpoint,
            EventBody::CarrierException { .. } => EventType::CarrierException,
            EventBody::OutForDelivery => EventType::OutForDelivery,
            EventBody::Delivered { .. } => EventType::Delivered,
            EventBody::DeliveryFailed { .. } => EventType::DeliveryFailed,
            EventBody::RefundRequested { .. } => EventType::RefundRequested,
            EventBody::ReturnRequested { .. } => EventType::ReturnRequested,
            EventBody::TicketRaised { .. } => EventType::TicketRaised,
            EventBody::Cancelled { .. } => EventType::Cancelled,
        }
    }
}

impl OrderEvent {
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// Deterministic processing order of events that share a tick: by event time, then id, then type.
    pub fn processing_key(&self) -> (i64, &str, EventType) {
        (self.ts, self.event_id.as_str(), self.event_type())
    }

    /// Serialises the event to its wire JSON (timestamps as RFC 3339), unknown fields included.
    pub fn to_json(&self) -> String {
        use crate::model::time::format_rfc3339;
        let mut m = serde_json::Map::new();
        m.insert("v".into(), EVENT_VERSION.into());
        m.insert("event_id".into(), self.event_id.as_str().into());
        m.insert("order_id".into(), self.order_id.as_str().into());
        m.insert("type".into(), self.event_type().as_str().into());
        m.insert("ts".into(), format_rfc3339(self.ts).into());
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.into(), v);
        };
        match &self.body {
            EventBody::OrderCreated(c) => {
                put("customer_id", c.customer_id.as_str().into());
                put("segment", c.segment.as_str().into());
                put("region", c.region.as_str().into());
                put("ship_mode", c.ship_mode.as_str().into());
                put("warehouse", c.warehouse.as_str().into());
                if let Some(q) = c.qty {
                    put("qty", q.into());
                }
                put("amount", c.amount.into());
                put(
                    "promised_delivery_ts",
                    format_rfc3339(c.promised_delivery_ts).into(),
                );
            }
            EventBody::PaymentAuthorized
            | EventBody::CarrierCheckpoint
            | EventBody::OutForDelivery => {}
            EventBody::PaymentFailed { reason } | EventBody::CarrierException { reason } => {
                put("reason", reason.as_str().into())
            }
            EventBody::Shipped {
                carrier,
                tracking,
                qty,
            } => {
                put("carrier", carrier.as_str().into());
                if let Some(t) = tracking {
                    put("tracking", t.as_str().into());
                }
                if let Some(q) = qty {
                    put("qty", (*q).into());
                }
            }
            EventBody::Delivered { qty } => {
                if let Some(q) = qty {
                    put("qty", (*q).into());
                }
            }
            EventBody::DeliveryFailed { reason }
            | EventBody::TicketRaised { reason }
            | EventBody::Cancelled { reason } => {
                if let Some(r) = reason {
                    put("reason", r.as_str().into());
                }
            }
            EventBody::RefundRequested { reason, amount }
            | EventBody::ReturnRequested { reason, amount } => {
                put("reason", reason.as_str().into());
                put("amount", (*amount).into());
            }
        }
        if let Some(extra) = &self.extra {
            if let Ok(serde_json::Value::Object(x)) =
                serde_json::from_str::<serde_json::Value>(extra)
            {
                for (k, v) in x {
                    m.entry(k).or_insert(v);
                }
            }
        }
        serde_json::Value::Object(m).to_string()
    }
}
