//! Human-readable durations in configuration files (`90s`, `15m`, `6h`, `2d`, `500ms`).
//!
//! In: a YAML string. Out: milliseconds, or a reason naming the accepted units.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in milliseconds, written in config as `<number><unit>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub i64);

impl Duration {
    pub fn ms(self) -> i64 {
        self.0
    }
    pub fn hours(h: i64) -> Self {
        Duration(h * 3_600_000)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 6h or 2d"))?;
    let scale = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration((value * scale).round() as i64))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0;
        let text = if ms % 86_400_000 == 0 {
            format!("{}d", ms / 86_400_000)
        } else if ms % 3_600_000 == 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 {
            format!("{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        f.write_str(&text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration(90_000)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration(5_400_000)));
        assert_eq!(parse_duration("2d"), Ok(Duration(172_800_000)));
        assert!(parse_duration("2 weeks")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("is not a duration"));
    }
}
