//! Duration strings as flow files write them: `"250ms"`, `"10s"`, `"5m"`, `"2h"`, `"1d"`,
//! also combined (`"1m30s"`). Plain numbers are rejected: a unit is always required.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("missing unit after {number}")]
    MissingUnit { number: String },
    #[error("unknown unit `{unit}`")]
    UnknownUnit { unit: String },
    #[error("expected a number, found `{found}`")]
    ExpectedNumber { found: String },
    #[error("duration too large (at most 100 years)")]
    Overflow,
}

/// Parses `"250ms"`, `"10s"`, `"1m30s"` and the like. Units: `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// Returns what is wrong with the string; the help text lists the units.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::ExpectedNumber {
                found: rest.to_owned(),
            });
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| DurationError::ExpectedNumber {
            found: number.to_owned(),
        })?;
        let scale = match unit.trim() {
            "" => {
                return Err(DurationError::MissingUnit {
                    number: number.to_owned(),
                })
            }
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                })
            }
        };
        let part =
            Duration::try_from_secs_f64(value * scale).map_err(|_| DurationError::Overflow)?;
        total = total.checked_add(part).ok_or(DurationError::Overflow)?;
        rest = after;
    }
    if total > MAX_DURATION {
        return Err(DurationError::Overflow);
    }
    Ok(total)
}

/// The longest duration accepted anywhere (delays, timeouts): about 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Formats a duration the way flow files write it (`1.5s`, `250ms`, `5m`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}us", d.as_micros());
    }
    if ms.is_multiple_of(86_400_000) && ms > 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(parse_duration("-5s"), Err(DurationError::Negative));
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::MissingUnit {
                number: "10".into()
            })
        );
        assert_eq!(
            parse_duration("10x"),
            Err(DurationError::UnknownUnit { unit: "x".into() })
        );
        assert!(matches!(
            parse_duration("soon"),
            Err(DurationError::ExpectedNumber { .. })
        ));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["250ms", "10s", "5m", "2h", "1d", "1.5s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
