//! RFC 3339 timestamps as CloudEvents' `time` carries them: `2026-11-26T05:00:00Z`,
//! `2026-11-26t10:30:00.25+05:30`, `2026-11-25T21:00:00-08:00`, … read into a
//! `SystemTime` (so normalised to UTC: an event's `time` is written back with `Z`).
//!
//! Strict where the RFC is: the offset is required (`Z`, `z` or `±HH:MM`), fields have
//! their fixed widths and ranges (February 29 only in leap years), and the separator is
//! `T`, `t` or a space (which the RFC allows "for readability"). A leap second (`:60`)
//! reads as the second after `:59`. Fractions of any length are kept to the nanosecond.
//! Times before 1970 or after 9999 (in UTC) are refused: events carry neither.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a text is not an RFC 3339 time edaflow takes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("expected {expected} at byte {at}")]
    Expected { expected: &'static str, at: usize },
    #[error("{field} {value} is out of range")]
    OutOfRange { field: &'static str, value: u32 },
    #[error("the time zone is missing (end with `Z` or an offset such as `+05:30`)")]
    NoOffset,
    #[error("unexpected text after the time")]
    Trailing,
    #[error("times before 1970 or after 9999 are not taken")]
    Era,
}

/// A cursor over the text.
struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize, expected: &'static str) -> Result<u32, TimeError> {
        let end = self.at + n;
        let slice = self
            .text
            .get(self.at..end)
            .filter(|s| s.iter().all(u8::is_ascii_digit))
            .ok_or(TimeError::Expected {
                expected,
                at: self.at,
            })?;
        self.at = end;
        Ok(slice
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
    }

    fn byte(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, TimeError> {
        match self.text.get(self.at) {
            Some(b) if allowed.contains(b) => {
                self.at += 1;
                Ok(*b)
            }
            _ => Err(TimeError::Expected {
                expected,
                at: self.at,
            }),
        }
    }
}

fn in_range(field: &'static str, value: u32, max: u32, min: u32) -> Result<u32, TimeError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(TimeError::OutOfRange { field, value })
    }
}

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (negative
/// before it).
fn days_from_epoch(year: u32, month: u32, day: u32) -> i64 {
    // Count years from March, so that the leap day ends a year.
    let (y, m) = if month <= 2 {
        (i64::from(year) - 1, i64::from(month) + 9)
    } else {
        (i64::from(year), i64::from(month) - 3)
    };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Reads an RFC 3339 time.
///
/// # Errors
/// What is wrong with the text, or a time outside 1970–9999.
pub fn parse(text: &str) -> Result<SystemTime, TimeError> {
    let mut c = Cursor {
        text: text.as_bytes(),
        at: 0,
    };
    let year = c.digits(4, "a four-digit year")?;
    c.byte(b"-", "`-`")?;
    let month = in_range("month", c.digits(2, "a two-digit month")?, 12, 1)?;
    c.byte(b"-", "`-`")?;
    let day = c.digits(2, "a two-digit day")?;
    in_range("day", day, days_in_month(year, month), 1)?;
    c.byte(b"Tt ", "`T` between the date and the time")?;
    let hour = in_range("hour", c.digits(2, "a two-digit hour")?, 23, 0)?;
    c.byte(b":", "`:`")?;
    let minute = in_range("minute", c.digits(2, "two-digit minutes")?, 59, 0)?;
    c.byte(b":", "`:`")?;
    let second = in_range("second", c.digits(2, "two-digit seconds")?, 60, 0)?;
    let mut nanos = 0u32;
    if c.text.get(c.at) == Some(&b'.') {
        c.at += 1;
        let start = c.at;
        while c.text.get(c.at).is_some_and(u8::is_ascii_digit) {
            let digit = u32::from(c.text[c.at] - b'0');
            let place = c.at - start;
            if place < 9 {
                nanos += digit * 10u32.pow(8 - place as u32);
            }
            c.at += 1;
        }
        if c.at == start {
            return Err(TimeError::Expected {
                expected: "digits after `.`",
                at: start,
            });
        }
    }
    let offset_seconds: i64 = match c.text.get(c.at) {
        None => return Err(TimeError::NoOffset),
        Some(b'Z' | b'z') => {
            c.at += 1;
            0
        }
        Some(b'+' | b'-') => {
            let sign = if c.text[c.at] == b'-' { -1 } else { 1 };
            c.at += 1;
            let hours = in_range(
                "offset hour",
                c.digits(2, "a two-digit offset hour")?,
                23,
                0,
            )?;
            c.byte(b":", "`:` in the offset")?;
            let minutes = in_range(
                "offset minute",
                c.digits(2, "two-digit offset minutes")?,
                59,
                0,
            )?;
            sign * i64::from(hours * 3600 + minutes * 60)
        }
        Some(_) => {
            return Err(TimeError::Expected {
                expected: "`Z` or an offset such as `+05:30`",
                at: c.at,
            })
        }
    };
    if c.at != c.text.len() {
        return Err(TimeError::Trailing);
    }
    let local =
        days_from_epoch(year, month, day) * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    let utc = local - offset_seconds;
    // 10000-01-01T00:00:00Z: the first second humantime can no longer write.
    const END: i64 = 253_402_300_800;
    if !(0..END).contains(&utc) {
        return Err(TimeError::Era);
    }
    // `utc` is within 0..END, so it fits a u64.
    Ok(UNIX_EPOCH + Duration::new(utc as u64, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> String {
        let time = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        humantime::format_rfc3339_nanos(time).to_string()
    }

    #[test]
    fn every_offset_is_normalised_to_utc() {
        assert_eq!(
            utc("2026-11-26T05:00:00Z"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-26t05:00:00z"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-26 05:00:00Z"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-26T10:30:00+05:30"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-25T21:00:00-08:00"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-26T05:00:00+00:00"),
            "2026-11-26T05:00:00.000000000Z"
        );
        assert_eq!(
            utc("2026-11-26T05:00:00-00:00"),
            "2026-11-26T05:00:00.000000000Z"
        );
        // Across a day, a month and a year.
        assert_eq!(
            utc("2027-01-01T01:00:00+02:00"),
            "2026-12-31T23:00:00.000000000Z"
        );
        assert_eq!(
            utc("2024-02-29T23:30:00-01:00"),
            "2024-03-01T00:30:00.000000000Z"
        );
    }

    #[test]
    fn fractions_are_kept_to_the_nanosecond() {
        assert_eq!(
            utc("2026-11-26T05:00:00.5Z"),
            "2026-11-26T05:00:00.500000000Z"
        );
        assert_eq!(
            utc("2026-11-26T05:00:00.123456789Z"),
            "2026-11-26T05:00:00.123456789Z"
        );
        assert_eq!(
            utc("2026-11-26T05:00:00.1234567891234Z"),
            "2026-11-26T05:00:00.123456789Z"
        );
        assert_eq!(
            utc("2026-11-26T10:30:00.001+05:30"),
            "2026-11-26T05:00:00.001000000Z"
        );
    }

    #[test]
    fn dates_agree_with_a_known_calendar() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Ok(UNIX_EPOCH));
        assert_eq!(
            parse("2000-03-01T00:00:00Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(951_868_800))
        );
        assert_eq!(
            parse("9999-12-31T23:59:59Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        );
        // A leap second reads as the next second.
        assert_eq!(
            utc("2016-12-31T23:59:60Z"),
            "2017-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn what_is_not_rfc_3339_is_refused() {
        for text in [
            "",
            "2026-11-26",
            "2026-11-26T05:00",
            "2026-11-26T05:00:00",
            "2026-11-26T05:00:00+0530",
            "2026-11-26T05:00:00+05",
            "2026-11-26T05:00:00 Z",
            "2026-11-26T05:00:00.Z",
            "2026-11-26T05:00:00ZZ",
            "2026-11-26T05:00:00Z ",
            "2026-11-26_05:00:00Z",
            "26-11-26T05:00:00Z",
            "2026-1-26T05:00:00Z",
            "２026-11-26T05:00:00Z",
            "2026-13-26T05:00:00Z",
            "2026-00-26T05:00:00Z",
            "2026-11-31T05:00:00Z",
            "2026-02-29T05:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T05:60:00Z",
            "2026-11-26T05:00:61Z",
            "2026-11-26T05:00:00+24:00",
            "2026-11-26T05:00:00+05:60",
            "yesterday",
        ] {
            assert!(parse(text).is_err(), "{text:?} was taken");
        }
        assert_eq!(parse("2026-11-26T05:00:00"), Err(TimeError::NoOffset));
    }

    #[test]
    fn times_outside_1970_to_9999_are_refused() {
        assert_eq!(parse("1969-12-31T23:59:59Z"), Err(TimeError::Era));
        assert_eq!(parse("1970-01-01T00:30:00+01:00"), Err(TimeError::Era));
        assert_eq!(parse("0000-01-01T00:00:00Z"), Err(TimeError::Era));
        assert_eq!(parse("9999-12-31T23:00:00-01:00"), Err(TimeError::Era));
        assert!(parse("1970-01-01T00:30:00-01:00").is_ok());
    }
}
