//! Durations, sizes and lag as operators read them (`2m05s`, `1.5 KiB`).

use std::time::Duration;

/// Slot lag for humans: `lag 1.2 MB / 3s`, or what is known of it.
pub fn human_lag(bytes: Option<i64>, seconds: Option<f64>) -> String {
    match (bytes, seconds) {
        (Some(b), Some(t)) => format!(
            "lag {} / {}",
            human_bytes(b),
            human_duration(Duration::from_secs_f64(t))
        ),
        (Some(b), None) => format!("lag {}", human_bytes(b)),
        _ => "lag unknown".into(),
    }
}

/// A duration in the largest unit that keeps it readable (`3s`, `2m05s`, `4h10m`, `2d3h`).
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        if d.as_millis() < 10_000 && d.subsec_millis() != 0 {
            return format!("{:.1}s", d.as_secs_f64());
        }
        return format!("{s}s");
    }
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else {
        format!("{mins}m{secs:02}s")
    }
}

/// Bytes with a binary unit (`512 B`, `1.5 MiB`).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n.abs() < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v.abs() < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The URL's `scheme://host[:port]`, which never holds a credential.
pub fn url_origin(url: &url::Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(42)), "42s");
        assert_eq!(human_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(human_duration(Duration::from_secs(4 * 3600 + 600)), "4h10m");
        assert_eq!(
            human_duration(Duration::from_secs(2 * 86_400 + 3 * 3600)),
            "2d3h"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
