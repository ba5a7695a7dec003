//! The duration syntax (`500ms`, `30s`, `1h30m`, `1.5h`) and its serde
//! helpers, so that a bad duration is reported with its key and line.

use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// What every duration message says is expected.
pub(super) const DURATION_EXPECTED: &str =
    "a duration like \"30s\", \"5m\", \"24h\" (units ms, s, m, h, d)";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parse a duration: one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`,
/// `d`, e.g. `500ms`, `30s`, `1h30m`, `1.5h`. Zero is accepted here; callers decide.
/// The error names the input and what is expected (durations are never secrets).
pub fn duration_from_str(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected {DURATION_EXPECTED}");
    let text = s.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0; // nanoseconds
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(' ');
        let (nanos, tail) = part(rest).ok_or_else(bad)?;
        total = total.checked_add(nanos).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total % NANOS_PER_SEC) as u32))
}

/// One `<int>[.<frac>]<unit>` part at the start of `text`: its nanoseconds and
/// the text after it.
fn part(text: &str) -> Option<(u128, &str)> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let int_len = digits(text);
    let (int_part, mut rest) = text.split_at(int_len);
    let mut frac_part = "";
    if let Some(after_dot) = rest.strip_prefix('.') {
        let (frac, tail) = after_dot.split_at(digits(after_dot));
        (frac_part, rest) = (frac, tail);
        if frac_part.is_empty() {
            return None;
        }
    }
    if int_part.is_empty() {
        return None;
    }
    let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
    let (unit, rest) = rest.split_at(unit_len);
    let unit: u128 = match unit {
        "ms" => NANOS_PER_SEC / 1000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3600 * NANOS_PER_SEC,
        "d" => 86_400 * NANOS_PER_SEC,
        _ => return None,
    };
    let whole: u128 = int_part.parse().ok()?;
    let mut nanos = whole.checked_mul(unit)?;
    if !frac_part.is_empty() {
        // Digits past 18 are below a nanosecond for every unit.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac: u128 = frac_digits.parse().ok()?;
        nanos += frac * unit / 10u128.pow(frac_digits.len() as u32);
    }
    Some((nanos, rest))
}

/// A duration read from a TOML string.
struct Parsed(Duration);

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Parsed;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(DURATION_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed, E> {
                duration_from_str(v).map(Parsed).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

fn nonzero_message() -> String {
    format!("must be longer than zero; expected {DURATION_EXPECTED}")
}

/// A duration, zero allowed (`delivery.retry.backoff_window`).
pub(super) fn any<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    Parsed::deserialize(d).map(|p| p.0)
}

/// A duration longer than zero.
pub(super) fn nonzero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = any(d)?;
    if value.is_zero() {
        return Err(de::Error::custom(nonzero_message()));
    }
    Ok(value)
}

/// An optional key holding a duration longer than zero.
pub(super) fn nonzero_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    nonzero(d).map(Some)
}

/// `delivery.retry.schedule`: a non-empty list of durations longer than zero.
pub(super) fn schedule<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    let list = Vec::<Parsed>::deserialize(d)?;
    if list.is_empty() {
        return Err(de::Error::custom(
            "must not be empty; remove it to use the exponential backoff",
        ));
    }
    if list.iter().any(|p| p.0.is_zero()) {
        return Err(de::Error::custom(format!(
            "every delay must be longer than zero; expected {DURATION_EXPECTED}"
        )));
    }
    Ok(Some(list.into_iter().map(|p| p.0).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_parsing() {
        let d = |s| duration_from_str(s).unwrap();
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("24h"), Duration::from_secs(86_400));
        assert_eq!(d("3d"), Duration::from_secs(3 * 86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1h 30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("0.25s"), Duration::from_millis(250));
        assert_eq!(d("0s"), Duration::ZERO);
        for bad in [
            "",
            "30",
            "s",
            "30x",
            "-5s",
            "1.s",
            ".5s",
            "5 s",
            "1w",
            "30S",
            "1h-",
            "99999999999999999999999d",
        ] {
            let e = duration_from_str(bad).unwrap_err();
            assert!(
                e.contains(r#"expected a duration like "30s", "5m", "24h" (units ms, s, m, h, d)"#),
                "{bad:?}: {e}"
            );
        }
    }
}
