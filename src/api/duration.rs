//! Go-style durations (`720h`, `1h30m`, `90s`), the format Kubernetes users know from other APIs.

use std::time::Duration;

/// Schema pattern for a duration field.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {0:?}: use a number with a unit, e.g. 720h, 90m or 1h30m")]
pub struct InvalidDuration(pub String);

pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let invalid = || InvalidDuration(text.to_string());
    // Exactly `PATTERN`'s grammar: digits, optional `.digits`, a unit; repeated.
    let mut rest = text;
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let whole = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if whole == 0 {
            return Err(invalid());
        }
        let mut number_len = whole;
        if rest[whole..].starts_with('.') {
            let fraction = rest[whole + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - whole - 1);
            if fraction == 0 {
                return Err(invalid());
            }
            number_len = whole + 1 + fraction;
        }
        let number: f64 = rest[..number_len].parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let (seconds_per_unit, unit_len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return Err(invalid());
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    // The schema admits any number of digits; what no clock can hold is refused, not a panic.
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("720h").unwrap(), Duration::from_secs(720 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in ["", "h", "10", "10d", "1h-5m", "abc", " 1h", ".5h", "1.h", "20000000000000000000s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        let pattern = regex::Regex::new(PATTERN).unwrap();
        for good in ["720h", "1h30m", "90s", "250ms", "1.5h"] {
            assert!(pattern.is_match(good) && parse(good).is_ok(), "{good}");
        }
        for bad in ["10", "10d", "h"] {
            assert!(!pattern.is_match(bad) && parse(bad).is_err(), "{bad}");
        }
    }
}
