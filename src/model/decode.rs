//! Decoding and validation of raw event bytes into [`OrderEvent`]s.
//!
//! In: one JSON document (a Kafka message value or a JSONL line). Out: a validated `OrderEvent`, or
//! a [`DecodeError`] that names exactly what is wrong (the missing field, the bad timestamp, the
//! unknown type). Strings are borrowed from the input while parsing; only the fields that survive
//! validation are copied, into inline `CompactString`s, so the hot path does not allocate for
//! typical ids.

use std::borrow::Cow;
use std::fmt;

use compact_str::CompactString;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::model::event::{EventBody, EventType, OrderCreated, OrderEvent, EVENT_VERSION};
use crate::model::time::{parse_rfc3339, EpochMs};

/// Why an input could not become an event. The `Display` text is the dead-letter reason.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("event of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("missing field `{field}`{}", for_type(.event_type))]
    MissingField {
        field: &'static str,
        event_type: Option<EventType>,
    },
    #[error("bad timestamp in `{field}`: {reason} (got {value})")]
    BadTimestamp {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    #[error("unsupported schema version {0} (this build reads v{EVENT_VERSION})")]
    UnsupportedVersion(u64),
    #[error("invalid value in `{field}`: {reason}")]
    InvalidValue { field: &'static str, reason: String },
}

fn for_type(t: &Option<EventType>) -> String {
    t.map(|t| format!(" for type `{}`", t.as_str()))
        .unwrap_or_default()
}

impl DecodeError {
    /// A short stable label for metrics and DLQ headers.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::UnknownType(_) => "unknown_type",
            DecodeError::UnsupportedVersion(_) => "unsupported_version",
            DecodeError::InvalidValue { .. } => "invalid_value",
        }
    }
}

/// Largest accepted event, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// Decodes one JSON event.
pub fn decode_event(bytes: &[u8]) -> Result<OrderEvent, DecodeError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_EVENT_BYTES,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let wire = match de.deserialize_map(WireVisitor) {
        Ok(w) => w,
        Err(e) => return Err(classify_serde_error(e)),
    };
    if let Err(e) = de.end() {
        return Err(DecodeError::Malformed(e.to_string()));
    }
    wire?.validate()
}

fn classify_serde_error(e: serde_json::Error) -> DecodeError {
    DecodeError::Malformed(e.to_string())
}

/// A string borrowed from the input when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A raw JSON value kept for later interpretation (so a type error names the field).
type Raw<'a> = &'a RawValue;

#[derive(Default)]
struct Wire<'a> {
    v: Option<Raw<'a>>,
    event_id: Option<Raw<'a>>,
    order_id: Option<Raw<'a>>,
    kind: Option<Raw<'a>>,
    ts: Option<Raw<'a>>,
    customer_id: Option<Raw<'a>>,
    segment: Option<Raw<'a>>,
    region: Option<Raw<'a>>,
    ship_mode: Option<Raw<'a>>,
    warehouse: Option<Raw<'a>>,
    qty: Option<Raw<'a>>,
    amount: Option<Raw<'a>>,
    promised_delivery_ts: Option<Raw<'a>>,
    reason: Option<Raw<'a>>,
    carrier: Option<Raw<'a>>,
    tracking: Option<Raw<'a>>,
    extra: Vec<(Str<'a>, Raw<'a>)>,
}

struct WireVisitor;

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Result<Wire<'de>, DecodeError>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let value: Raw<'de> = map.next_value()?;
            let slot = match key.0.as_ref() {
                "v" => &mut w.v,
                "event_id" => &mut w.event_id,
                "order_id" => &mut w.order_id,
                "type" => &mut w.kind,
                "ts" => &mut w.ts,
                "customer_id" => &mut w.customer_id,
                "segment" => &mut w.segment,
                "region" => &mut w.region,
                "ship_mode" => &mut w.ship_mode,
                "warehouse" => &mut w.warehouse,
                "qty" => &mut w.qty,
                "amount" => &mut w.amount,
                "promised_delivery_ts" => &mut w.promised_delivery_ts,
                "reason" => &mut w.reason,
                "carrier" => &mut w.carrier,
                "tracking" => &mut w.tracking,
                _ => {
                    w.extra.push((key, value));
                    continue;
                }
            };
            if slot.is_some() {
                return Ok(Err(DecodeError::Malformed(format!(
                    "duplicate field `{}`",
                    key.0
                ))));
            }
            *slot = Some(value);
        }
        Ok(Ok(w))
    }
}

fn req<'a>(
    v: Option<Raw<'a>>,
    field: &'static str,
    t: Option<EventType>,
) -> Result<Raw<'a>, DecodeError> {
    match v {
        Some(r) if r.get() != "null" => Ok(r),
        _ => Err(DecodeError::MissingField {
            field,
            event_type: t,
        }),
    }
}

fn opt(v: Option<Raw<'_>>) -> Option<Raw<'_>> {
    v.filter(|r| r.get() != "null")
}

/// The text of a JSON string value: borrowed when it has no escapes (the common case, no second
/// parse), unescaped otherwise. `None` when the value is not a string.
fn str_of(r: Raw<'_>) -> Option<Cow<'_, str>> {
    let t = r.get();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') && !t.contains('\\') {
        return Some(Cow::Borrowed(&t[1..t.len() - 1]));
    }
    serde_json::from_str::<Str>(t).ok().map(|s| s.0)
}

fn string(r: Raw<'_>, field: &'static str) -> Result<CompactString, DecodeError> {
    let s = str_of(r).ok_or_else(|| DecodeError::InvalidValue {
        field,
        reason: format!("expected a string, got {}", r.get()),
    })?;
    if s.is_empty() {
        return Err(DecodeError::InvalidValue {
            field,
            reason: "must not be empty".into(),
        });
    }
    Ok(CompactString::from(s.as_ref()))
}

fn timestamp(r: Raw<'_>, field: &'static str) -> Result<EpochMs, DecodeError> {
    let text = r.get();
    if let Ok(ms) = text.parse::<i64>() {
        if (0..=253_402_300_799_999).contains(&ms) {
            return Ok(ms);
        }
        return Err(DecodeError::BadTimestamp {
            field,
            value: text.into(),
            reason: "epoch milliseconds out of range".into(),
        });
    }
    match str_of(r) {
        Some(s) => parse_rfc3339(&s).map_err(|reason| DecodeError::BadTimestamp {
            field,
            value: text.into(),
            reason: reason.into(),
        }),
        None => Err(DecodeError::BadTimestamp {
            field,
            value: text.into(),
            reason: "expected RFC 3339 string or epoch milliseconds".into(),
        }),
    }
}

fn quantity(r: Raw<'_>, field: &'static str) -> Result<u32, DecodeError> {
    r.get()
        .parse::<u32>()
        .map_err(|_| DecodeError::InvalidValue {
            field,
            reason: format!("expected a non-negative integer, got {}", r.get()),
        })
}

fn money(r: Raw<'_>, field: &'static str) -> Result<f64, DecodeError> {
    match r.get().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(DecodeError::InvalidValue {
            field,
            reason: format!("expected a non-negative number, got {}", r.get()),
        }),
    }
}

impl<'a> Wire<'a> {
    fn validate(self) -> Result<OrderEvent, DecodeError> {
        let v = req(self.v, "v", None)?;
        match v.get().parse::<u64>() {
            Ok(EVENT_VERSION) => {}
            Ok(other) => return Err(DecodeError::UnsupportedVersion(other)),
            Err(_) => {
                return Err(DecodeError::InvalidValue {
                    field: "v",
                    reason: format!("expected an integer, got {}", v.get()),
                })
            }
        }
        let type_name = string(req(self.kind, "type", None)?, "type")?;
        let t = EventType::parse(&type_name)
            .ok_or_else(|| DecodeError::UnknownType(type_name.to_string()))?;
        let st = Some(t);
        let event_id = string(req(self.event_id, "event_id", st)?, "event_id")?;
        let order_id = string(req(self.order_id, "order_id", st)?, "order_id")?;
        let ts = timestamp(req(self.ts, "ts", st)?, "ts")?;
        let reason_req = |r: Option<Raw<'a>>| string(req(r, "reason", st)?, "reason");
        let reason_opt = |r: Option<Raw<'a>>| opt(r).map(|r| string(r, "reason")).transpose();
        let body = match t {
            EventType::OrderCreated => EventBody::OrderCreated(Box::new(OrderCreated {
                customer_id: string(req(self.customer_id, "customer_id", st)?, "customer_id")?,
                segment: string(req(self.segment, "segment", st)?, "segment")?,
                region: string(req(self.region, "region", st)?, "region")?,
                ship_mode: string(req(self.ship_mode, "ship_mode", st)?, "ship_mode")?,
                warehouse: string(req(self.warehouse, "warehouse", st)?, "warehouse")?,
                qty: opt(self.qty).map(|r| quantity(r, "qty")).transpose()?,
                amount: money(req(self.amount, "amount", st)?, "amount")?,
                promised_delivery_ts: timestamp(
                    req(self.promised_delivery_ts, "promised_delivery_ts", st)?,
                    "promised_delivery_ts",
                )?,
            })),
            EventType::PaymentAuthorized => EventBody::PaymentAuthorized,
            EventType::PaymentFailed => EventBody::PaymentFailed {
                reason: reason_req(self.reason)?,
            },
            EventType::Shipped => EventBody::Shipped {
                carrier: string(req(self.carrier, "carrier", st)?, "carrier")?,
                tracking: opt(self.tracking)
                    .map(|r| string(r, "tracking"))
                    .transpose()?,
                qty: opt(self.qty).map(|r| quantity(r, "qty")).transpose()?,
            },
            EventType::CarrierCheckpoint => EventBody::CarrierCheckpoint,
            EventType::CarrierException => EventBody::CarrierException {
                reason: reason_req(self.reason)?,
            },
            EventType::OutForDelivery => EventBody::OutForDelivery,
            EventType::Delivered => EventBody::Delivered {
                qty: opt(self.qty).map(|r| quantity(r, "qty")).transpose()?,
            },
            EventType::DeliveryFailed => EventBody::DeliveryFailed {
                reason: reason_opt(self.reason)?,
            },
            EventType::RefundRequested => EventBody::RefundRequested {
                reason: reason_req(self.reason)?,
                amount: money(req(self.amount, "amount", st)?, "amount")?,
            },
            EventType::ReturnRequested => EventBody::ReturnRequested {
                reason: reason_req(self.reason)?,
                amount: money(req(self.amount, "amount", st)?, "amount")?,
            },
            EventType::TicketRaised => EventBody::TicketRaised {
                reason: reason_opt(self.reason)?,
            },
            EventType::Cancelled => EventBody::Cancelled {
                reason: reason_opt(self.reason)?,
            },
        };
        // Fields that are known but do not belong to this type are kept with the unknown ones.
        let mut extra = self.extra;
        let strays: [(&'static str, Option<Raw<'a>>); 11] = [
            ("customer_id", self.customer_id),
            ("segment", self.segment),
            ("region", self.region),
            ("ship_mode", self.ship_mode),
            ("warehouse", self.warehouse),
            ("qty", self.qty),
            ("amount", self.amount),
            ("promised_delivery_ts", self.promised_delivery_ts),
            ("reason", self.reason),
            ("carrier", self.carrier),
            ("tracking", self.tracking),
        ];
        for (name, value) in strays {
            if let Some(value) = value {
                if !field_belongs(t, name) {
                    extra.push((Str(Cow::Borrowed(name)), value));
                }
            }
        }
        let extra = if extra.is_empty() {
            None
        } else {
            let mut s = String::from("{");
            for (i, (k, v)) in extra.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&serde_json::to_string(k.0.as_ref()).unwrap_or_default());
                s.push(':');
                s.push_str(v.get());
            }
            s.push('}');
            Some(s.into_boxed_str())
        };
        Ok(OrderEvent {
            event_id,
            order_id,
            ts,
            body,
            extra,
        })
    }
}

fn field_belongs(t: EventType, name: &str) -> bool {
    use EventType::*;
    match name {
        "customer_id"
        | "segment"
        | "region"
        | "ship_mode"
        | "warehouse"
        | "promised_delivery_ts" => t == OrderCreated,
        "qty" => matches!(t, OrderCreated | Shipped | Delivered),
        "amount" => matches!(t, OrderCreated | RefundRequested | ReturnRequested),
        "reason" => matches!(
            t,
            PaymentFailed
                | CarrierException
                | DeliveryFailed
                | RefundRequested
                | ReturnRequested
                | TicketRaised
                | Cancelled
        ),
        "carrier" | "tracking" => t == Shipped,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATED: &str = r#"{"v":1,"event_id":"e1","order_id":"o1","type":"order_created","ts":"2017-03-01T10:00:00Z","customer_id":"c1","segment":"Consumer","region":"West","ship_mode":"Standard Class","warehouse":"WH-W1","qty":3,"amount":120.5,"promised_delivery_ts":"2017-03-06T10:00:00Z","channel":"web"}"#;

    #[test]
    fn decodes_created_and_keeps_unknown_fields() {
        let e = decode_event(CREATED.as_bytes()).unwrap();
        assert_eq!(e.order_id, "o1");
        assert_eq!(e.ts, parse_rfc3339("2017-03-01T10:00:00Z").unwrap());
        assert_eq!(e.extra.as_deref(), Some(r#"{"channel":"web"}"#));
        let EventBody::OrderCreated(c) = &e.body else {
            panic!("wrong body")
        };
        assert_eq!((c.qty, c.amount), (Some(3), 120.5));
        // Round trip through the wire form.
        assert_eq!(decode_event(e.to_json().as_bytes()).unwrap(), e);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let e = decode_event(br#"{"v":1,"event_id":"e\u0031","order_id":"o","type":"payment_failed","ts":0,"reason":"card \"declined\""}"#).unwrap();
        assert_eq!(e.event_id, "e1");
        assert_eq!(
            e.body,
            EventBody::PaymentFailed {
                reason: "card \"declined\"".into()
            }
        );
    }

    #[test]
    fn epoch_millis_accepted() {
        let e = decode_event(br#"{"v":1,"event_id":"e2","order_id":"o1","type":"delivered","ts":1488362400000,"qty":2}"#).unwrap();
        assert_eq!(e.ts, 1_488_362_400_000);
        assert_eq!(e.body, EventBody::Delivered { qty: Some(2) });
    }

    #[test]
    fn missing_field_is_named() {
        let bad = CREATED.replace(r#","promised_delivery_ts":"2017-03-06T10:00:00Z""#, "");
        let err = decode_event(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing field `promised_delivery_ts` for type `order_created`"
        );
    }

    #[test]
    fn bad_inputs_have_precise_reasons() {
        let cases: [(&str, &str); 7] = [
            (r#"{"v":1,"event_id":"e","order_id":"o","type":"teleported","ts":0}"#, "unknown event type `teleported`"),
            (r#"{"v":2,"event_id":"e","order_id":"o","type":"shipped","ts":0}"#, "unsupported schema version 2 (this build reads v1)"),
            (r#"{"v":1,"event_id":"e","order_id":"o","type":"shipped","ts":"last tuesday, around noon"}"#, "bad timestamp in `ts`: expected YYYY-MM-DDTHH:MM:SS (got \"last tuesday, around noon\")"),
            (r#"{"v":1,"event_id":"e","order_id":"o","type":"shipped","ts":0}"#, "missing field `carrier` for type `shipped`"),
            (r#"{"v":1,"event_id":"e","order_id":"o","type":"refund_requested","ts":0,"reason":"x","amount":-3}"#, "invalid value in `amount`: expected a non-negative number, got -3"),
            (r#"{"v":1,"order_id":"o","type":"payment_authorized","ts":0}"#, "missing field `event_id` for type `payment_authorized`"),
            (r#"{"v":1,"event_id":"e","order_id":"o","type":"payment_authorized","ts":0,"ts":1}"#, "malformed JSON: duplicate field `ts`"),
        ];
        for (input, reason) in cases {
            assert_eq!(
                decode_event(input.as_bytes()).unwrap_err().to_string(),
                reason,
                "input: {input}"
            );
        }
        assert!(matches!(
            decode_event(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_event(b"[1,2]"),
            Err(DecodeError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(matches!(
            decode_event(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
