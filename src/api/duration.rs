//! Go-style durations (`720h`, `1h30m`, `90s`), the format Kubernetes users know from other APIs.

use std::time::Duration;

/// Schema pattern for a duration field. Each number has at most 7 digits before and 9 after the
/// point, so, with [`MAX_LENGTH`], whatever the schema admits is a few thousand years at most:
/// no value overflows a clock, and none is silently read as "never".
pub const PATTERN: &str = r"^([0-9]{1,7}(\.[0-9]{1,9})?(ms|s|m|h))+$";

/// Schema `maxLength` of a duration field.
pub const MAX_LENGTH: usize = 32;

/// Digits allowed before and after the point of one number, as in [`PATTERN`].
const MAX_WHOLE_DIGITS: usize = 7;
const MAX_FRACTION_DIGITS: usize = 9;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid duration {0:?}: use numbers (at most 7 digits) with a unit (ms, s, m, h), e.g. 720h, 90m or 1h30m")]
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
        if whole == 0 || whole > MAX_WHOLE_DIGITS {
            return Err(invalid());
        }
        let mut number_len = whole;
        if rest[whole..].starts_with('.') {
            let fraction = rest[whole + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - whole - 1);
            if fraction == 0 || fraction > MAX_FRACTION_DIGITS {
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
    // Bounded digits keep this far inside what a clock holds; refused rather than a panic anyway.
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

/// A duration field of a spec that the operator cannot use: the message names the field and,
/// for a value out of range, the maximum.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FieldError {
    #[error("{field}: {invalid}")]
    Invalid { field: &'static str, invalid: InvalidDuration },
    #[error("{field}: {value} is more than the maximum, {max}; set a shorter duration")]
    OverMaximum { field: &'static str, value: String, max: &'static str },
    #[error("{field}: {value} is less than the minimum, {min}; set a longer duration")]
    UnderMinimum { field: &'static str, value: String, min: &'static str },
}

/// Parses the value of `field`, refusing (rather than clamping) one longer than `max`.
pub fn parse_at_most(field: &'static str, text: &str, max: &'static str) -> Result<Duration, FieldError> {
    let value = parse(text).map_err(|invalid| FieldError::Invalid { field, invalid })?;
    let limit = parse(max).expect("a field's maximum is a valid duration");
    if value > limit {
        return Err(FieldError::OverMaximum { field, value: text.to_string(), max });
    }
    Ok(value)
}

/// [`parse_at_most`], also refusing one shorter than `min`.
pub fn parse_between(
    field: &'static str,
    text: &str,
    min: &'static str,
    max: &'static str,
) -> Result<Duration, FieldError> {
    let value = parse_at_most(field, text, max)?;
    if value < parse(min).expect("a field's minimum is a valid duration") {
        return Err(FieldError::UnderMinimum { field, value: text.to_string(), min });
    }
    Ok(value)
}

/// A duration in the same Go style, to the second: `0s`, `45s`, `23m5s`, `26h0m12s`.
pub fn format(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds}s"),
        _ => format!("{hours}h{minutes}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field_and_format_goes_back_to_go_style() {
        assert_eq!(parse_between("f", "5s", "5s", "24h"), Ok(Duration::from_secs(5)));
        let under = parse_between("spec.correlation.interval", "1s", "5s", "24h").unwrap_err().to_string();
        assert_eq!(under, "spec.correlation.interval: 1s is less than the minimum, 5s; set a longer duration");
        assert!(parse_between("f", "25h", "5s", "24h").unwrap_err().to_string().contains("more than the maximum"));
        for (seconds, text) in [(0, "0s"), (45, "45s"), (1385, "23m5s"), (93612, "26h0m12s")] {
            assert_eq!(format(Duration::from_secs(seconds)), text);
            assert_eq!(parse(text).unwrap(), Duration::from_secs(seconds), "{text} reads back");
        }
    }

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
        for good in ["720h", "1h30m", "90s", "250ms", "1.5h", "9999999h", "1.123456789s", "0s"] {
            assert!(pattern.is_match(good) && parse(good).is_ok(), "{good}");
        }
        for bad in ["10", "10d", "h", "99999999999999999999999h", "10000000h", "1.1234567891s", "1h99999999m"] {
            assert!(!pattern.is_match(bad) && parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn whatever_the_schema_admits_fits_a_clock_and_a_calendar() {
        // The longest value the pattern and maxLength admit: four numbers of 7 digits, in hours.
        let longest = "9999999h".repeat(MAX_LENGTH / "9999999h".len());
        assert_eq!(longest.len(), MAX_LENGTH);
        assert!(regex::Regex::new(PATTERN).unwrap().is_match(&longest));
        let duration = parse(&longest).unwrap();
        let signed = jiff::SignedDuration::try_from(duration).unwrap();
        assert!(jiff::Timestamp::now().checked_add(signed).is_ok(), "{longest} from now is a timestamp");
    }

    #[test]
    fn a_field_over_its_maximum_is_refused_naming_the_field_and_the_maximum() {
        let field = "spec.indicator.expireAfter";
        assert_eq!(parse_at_most(field, "720h", "87600h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse_at_most(field, "87600h", "87600h"), Ok(Duration::from_secs(87600 * 3600)));
        let over = parse_at_most(field, "87600h1s", "87600h").unwrap_err();
        assert_eq!(
            over.to_string(),
            "spec.indicator.expireAfter: 87600h1s is more than the maximum, 87600h; set a shorter duration"
        );
        let huge = parse_at_most(field, "99999999999999999999999h", "87600h").unwrap_err();
        assert!(matches!(huge, FieldError::Invalid { .. }), "{huge:?}");
        let message = huge.to_string();
        assert!(message.starts_with("spec.indicator.expireAfter: invalid duration"), "{message}");
        assert!(message.contains("at most 7 digits"), "{message}");
    }
}
