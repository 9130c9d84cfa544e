//! Wall-clock helpers: every timestamp on the wire is unix milliseconds.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, the unit of every `*_at` field.
///
/// A clock before 1970 is treated as the epoch rather than panicking.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the unix epoch, used to build time-ordered job ids.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Civil date (year, month, day) from days since 1970-01-01.
///
/// Howard Hinnant's algorithm; kept here so job ids need no date crate.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats unix milliseconds as `YYYY-MM-DD hh:mm:ss` UTC for humans.
pub fn format_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 of a civil date (the inverse of
/// [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix milliseconds as Salt's event `_stamp`:
/// `2026-11-22T08:15:15.979000+00:00`.
pub fn iso_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        (ms % 1000) * 1000
    )
}

/// Reads a UTC time as people and Salt's runners write it: `2026-11-22`,
/// `2026-11-22 08:15`, `2026-11-22T08:15:05.5`, or a job listing's
/// `StartTime` (`2026, Nov 22 08:15:05.111412`). Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let text = text.trim().trim_end_matches('Z').trim_end_matches("+00:00");
    let (date, clock) = if let Some((year, rest)) = text.split_once(", ") {
        // `2026, Nov 22 08:15:05.111412`
        let mut parts = rest.split_whitespace();
        let month = parts.next()?;
        let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
        let day: u32 = parts.next()?.parse().ok()?;
        let (y, c) = (year.parse::<i64>().ok()?, parts.next().unwrap_or("00:00"));
        ((y, month, day), c)
    } else {
        let (date, clock) = text
            .split_once(['T', ' '])
            .map_or((text, "00:00"), |(d, c)| (d, c.trim()));
        let mut parts = date.split('-');
        let y = parts.next()?.parse::<i64>().ok()?;
        let m = parts.next()?.parse::<u32>().ok()?;
        let d = parts.next()?.parse::<u32>().ok()?;
        if parts.next().is_some() {
            return None;
        }
        ((y, m, d), clock)
    };
    let (y, m, d) = date;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let mut fields = clock.split(':');
    let hour: u64 = fields.next()?.parse().ok()?;
    let minute: u64 = fields.next().unwrap_or("0").parse().ok()?;
    let second: f64 = fields.next().unwrap_or("0").parse().ok()?;
    if fields.next().is_some() || hour > 23 || minute > 59 || !(0.0..61.0).contains(&second) {
        return None;
    }
    let days = u64::try_from(days_from_civil(y, m, d)).ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60;
    Some(secs * 1000 + (second * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_stamps_and_parsed_times_agree() {
        assert_eq!(
            iso_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123000+00:00"
        );
        assert_eq!(days_from_civil(2023, 11, 22), 19_683);
        assert_eq!(days_from_civil(2000, 2, 29), 11_016);
        for text in [
            "2023-11-14T22:13:20.123",
            "2023-11-14 22:13:20.123",
            "2023-11-14T22:13:20.123000+00:00",
            "2023, Nov 14 22:13:20.123000",
        ] {
            assert_eq!(parse_time_ms(text), Some(1_700_000_000_123), "{text}");
        }
        assert_eq!(parse_time_ms("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(parse_time_ms("2023-11-14 22:13"), Some(1_699_999_980_000));
        for bad in [
            "",
            "yesterday",
            "2023-13-01",
            "2023-11-14 25:00",
            "2023-11-14-1",
            "999999999999999-01-01",
        ] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_683), (2023, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn formats_milliseconds_as_utc() {
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14 22:13:20");
    }
}
