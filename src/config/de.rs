//! Checked deserializers for single values (`deserialize_with`), shared by
//! the config's types and its parser: the error names what was expected and
//! serde_path_to_error adds the key path.

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// Deserialize a `T`, then check or convert it; the message becomes the error.
pub(super) fn checked<'de, D, T, U>(
    d: D,
    check: impl FnOnce(T) -> Result<U, String>,
) -> Result<U, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    check(T::deserialize(d)?).map_err(de::Error::custom)
}

fn at_least_one<T: TryFrom<i64>>(n: i64) -> Result<T, String> {
    T::try_from(n)
        .ok()
        .filter(|_| n >= 1)
        .ok_or_else(|| format!("{n} is out of range; expected at least 1"))
}

pub(super) fn positive_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    checked(d, at_least_one::<usize>)
}

pub(super) fn positive_u32_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    checked(d, |n: i64| at_least_one::<u32>(n).map(Some))
}

pub(super) fn multiplier<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, |m: f64| {
        if m.is_finite() && m >= 1.0 {
            Ok(m)
        } else {
            Err(format!("{m} is out of range; expected a number >= 1.0"))
        }
    })
}

pub(super) fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, |f: f64| {
        if (0.0..=1.0).contains(&f) {
            Ok(f)
        } else {
            Err(format!(
                "{f} is out of range; expected a fraction from 0.0 to 1.0"
            ))
        }
    })
}

pub(super) fn positive_usize_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    checked(d, |n: i64| at_least_one::<usize>(n).map(Some))
}

/// A rate in requests per second: a number above zero (`0.5` is one request
/// every two seconds).
pub(super) fn positive_rate_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    checked(d, |r: f64| {
        if r.is_finite() && r > 0.0 {
            Ok(Some(r))
        } else {
            Err(format!(
                "{r} is out of range; expected requests per second above 0, like 10 or 0.5"
            ))
        }
    })
}
