//! Event-time helpers: parsing RFC 3339 / epoch-millisecond timestamps, formatting them back,
//! and the coarse `Tick` that timely uses as its timestamp.
//!
//! In: a JSON timestamp value (string or integer). Out: epoch milliseconds (`i64`), or an error
//! naming what is wrong with it.

/// Milliseconds since the Unix epoch, UTC.
pub type EpochMs = i64;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff...](Z|+HH:MM|-HH:MM)` (a space may replace `T`).
/// Returns epoch milliseconds or a short reason.
pub fn parse_rfc3339(s: &str) -> Result<EpochMs, &'static str> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return Err("too short for RFC 3339");
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, &'static str> {
        let mut v = 0i64;
        for &c in &b[range] {
            if !c.is_ascii_digit() {
                return Err("non-digit in date/time field");
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Ok(v)
    };
    if b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't' && b[10] != b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err("expected YYYY-MM-DDTHH:MM:SS");
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("date out of range");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("time out of range");
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (b[i] - b'0') as i64;
            }
            i += 1;
        }
        if i == start {
            return Err("empty fraction of a second");
        }
        for _ in (i - start)..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z') | Some(b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return Err("offset out of range");
            }
            let off = h * 3600 + m * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return Err("expected Z or +HH:MM offset"),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Ok(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339(ms: EpochMs) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Maps event time to the coarse timely timestamp. Ticks are `tick_ms` wide and counted from the
/// epoch; event times before the epoch are clamped to tick 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickClock {
    pub tick_ms: i64,
}

impl TickClock {
    pub fn tick_of(&self, ts: EpochMs) -> u64 {
        if ts <= 0 {
            0
        } else {
            (ts / self.tick_ms) as u64
        }
    }
    /// First millisecond of a tick.
    pub fn start_of(&self, tick: u64) -> EpochMs {
        tick as i64 * self.tick_ms
    }
    /// The tick at which a deadline at `ts` is due: the first tick whose start is >= ts, so the
    /// deadline is evaluated once every event of time <= ts is final.
    pub fn tick_at_or_after(&self, ts: EpochMs) -> u64 {
        if ts <= 0 {
            0
        } else {
            ((ts + self.tick_ms - 1) / self.tick_ms) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2017-03-01T12:30:05.25Z"),
            Ok(1_488_371_405_250)
        );
        assert_eq!(
            parse_rfc3339("2017-03-01T14:30:05.250+02:00"),
            Ok(1_488_371_405_250)
        );
        assert_eq!(parse_rfc3339("2016-02-29 00:00:00Z"), Ok(1_456_704_000_000));
    }

    #[test]
    fn rejects_bad_timestamps_with_reason() {
        assert_eq!(
            parse_rfc3339("2017-02-30T00:00:00Z"),
            Err("date out of range")
        );
        assert_eq!(
            parse_rfc3339("2017-03-01T25:00:00Z"),
            Err("time out of range")
        );
        assert_eq!(
            parse_rfc3339("2017-03-01T10:00:00"),
            Err("too short for RFC 3339")
        );
        assert_eq!(
            parse_rfc3339("2017-03-01T10:00:00+0200"),
            Err("expected Z or +HH:MM offset")
        );
        assert_eq!(
            parse_rfc3339("yesterday at noon, roughly"),
            Err("expected YYYY-MM-DDTHH:MM:SS")
        );
    }

    #[test]
    fn format_round_trips() {
        for ms in [0, 1_488_371_405_250, 1_420_070_400_000, 1_514_764_799_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms));
        }
    }

    #[test]
    fn ticks() {
        let c = TickClock { tick_ms: 60_000 };
        assert_eq!(c.tick_of(59_999), 0);
        assert_eq!(c.tick_of(60_000), 1);
        assert_eq!(c.tick_at_or_after(60_000), 1);
        assert_eq!(c.tick_at_or_after(60_001), 2);
    }
}
