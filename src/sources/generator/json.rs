//! Writing the generator's events as JSON lines, straight into the batch's bytes (no
//! intermediate values), and the bad input it injects.
//!
//! In: an open order's [`OrderSlot`], one of its [`Pending`] events, the partition, and the
//! [`Corruption`] (if any) to apply. Out: one JSON object appended to a byte buffer, with `ts` and
//! `promised_delivery_ts` in epoch milliseconds. Also the carriers' tracking number formats
//! ([`put_tracking`]), which the Superstore replay shares.

use rand_chacha::ChaCha8Rng;

use super::lifecycle::{one_of, Step, CARRIERS, REGIONS, SEGMENTS, SHIP_MODES, WAREHOUSES};
use super::schedule::{OrderSlot, Pending};

/// How a line is spoiled, if at all (the kinds of `GeneratorConfig::malformed_rate`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Corruption {
    None,
    Truncated,
    MissingPromise,
    BadTs,
    UnknownType,
}

const BAD_TS: [&str; 4] = [
    "\"2024-03-05 14:22:01\"",
    "\"05/03/2024 14:22\"",
    "\"2024-02-30T10:00:00Z\"",
    "-1",
];
const BAD_TYPES: [&str; 4] = [
    "order_teleported",
    "ORDER_CREATED",
    "shipment_created",
    "delivered_partially",
];

fn put_u64(buf: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

fn put_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    put_u64(buf, v.unsigned_abs());
}

fn put_padded(buf: &mut Vec<u8>, v: u64, width: usize) {
    let digits = if v == 0 { 1 } else { v.ilog10() as usize + 1 };
    buf.resize(buf.len() + width.saturating_sub(digits), b'0');
    put_u64(buf, v);
}

/// A money amount with two decimals.
fn put_money(buf: &mut Vec<u8>, x: f64) {
    let c = (x * 100.0).round().max(0.0) as u64;
    put_u64(buf, c / 100);
    buf.push(b'.');
    put_padded(buf, c % 100, 2);
}

fn put_str_field(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":\"");
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'"');
}

fn put_key(buf: &mut Vec<u8>, key: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// A tracking number in the carrier's usual shape.
pub(crate) fn put_tracking(buf: &mut Vec<u8>, carrier: usize, tracking: u64) {
    match carrier {
        0 => {
            buf.extend_from_slice(b"1Z");
            for shift in (0..16).rev() {
                buf.push(b"0123456789ABCDEF"[((tracking >> (shift * 4)) & 0xf) as usize]);
            }
        }
        1 => put_padded(buf, tracking % 1_000_000_000_000, 12),
        2 => {
            buf.extend_from_slice(b"94");
            put_padded(buf, tracking % 10_000_000_000_000_000_000, 20);
        }
        _ => put_padded(buf, tracking % 10_000_000_000, 10),
    }
}

/// Appends event `p` of order `o` as one JSON object (no newline), spoiled as `bad` says.
pub(super) fn write_event(
    buf: &mut Vec<u8>,
    partition: u32,
    o: &OrderSlot,
    p: &Pending,
    bad: Corruption,
    rng: &mut ChaCha8Rng,
) {
    buf.extend_from_slice(b"{\"v\":1,\"event_id\":\"g");
    put_u64(buf, partition as u64);
    buf.push(b'-');
    put_u64(buf, o.n);
    buf.push(b'-');
    put_u64(buf, p.k as u64);
    buf.extend_from_slice(b"\",\"order_id\":\"g");
    put_u64(buf, partition as u64);
    buf.push(b'-');
    put_u64(buf, o.n);
    let type_name = if bad == Corruption::UnknownType {
        one_of(rng, &BAD_TYPES)
    } else {
        p.step.type_name()
    };
    buf.extend_from_slice(b"\",\"type\":\"");
    buf.extend_from_slice(type_name.as_bytes());
    buf.extend_from_slice(b"\",\"ts\":");
    if bad == Corruption::BadTs {
        buf.extend_from_slice(one_of(rng, &BAD_TS).as_bytes());
    } else {
        put_i64(buf, p.ts);
    }
    match p.step {
        Step::Created => {
            buf.extend_from_slice(b",\"customer_id\":\"C-");
            put_padded(buf, o.customer as u64, 6);
            buf.push(b'"');
            put_str_field(buf, "segment", SEGMENTS[o.segment as usize]);
            put_str_field(buf, "region", REGIONS[o.region as usize]);
            put_str_field(buf, "ship_mode", SHIP_MODES[o.mode as usize]);
            put_str_field(
                buf,
                "warehouse",
                WAREHOUSES[o.region as usize][o.warehouse as usize],
            );
            put_key(buf, "qty");
            put_u64(buf, o.qty as u64);
            put_key(buf, "amount");
            put_money(buf, o.amount);
            if bad != Corruption::MissingPromise {
                put_key(buf, "promised_delivery_ts");
                put_i64(buf, o.promised_ts);
            }
        }
        Step::PaymentAuthorized | Step::Checkpoint | Step::OutForDelivery => {}
        Step::PaymentFailed(r)
        | Step::Exception(r)
        | Step::DeliveryFailed(r)
        | Step::Ticket(r)
        | Step::Cancelled(r) => put_str_field(buf, "reason", r),
        Step::Shipped => {
            put_str_field(buf, "carrier", CARRIERS[o.carrier as usize]);
            buf.extend_from_slice(b",\"tracking\":\"");
            put_tracking(buf, o.carrier as usize, o.tracking);
            buf.push(b'"');
            put_key(buf, "qty");
            put_u64(buf, o.qty as u64);
        }
        Step::Delivered(q) => {
            put_key(buf, "qty");
            put_u64(buf, q as u64);
        }
        Step::Refund(r, a) | Step::Return(r, a) => {
            put_str_field(buf, "reason", r);
            put_key(buf, "amount");
            put_money(buf, a);
        }
    }
    buf.push(b'}');
}
