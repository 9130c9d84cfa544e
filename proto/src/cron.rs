//! Cron expressions, as schedules and recurring freeze windows write them:
//! `minute hour day-of-month month day-of-week`, or six fields with
//! seconds first (`*/5 * * * * *`, for tests and fine-grained jobs).
//! Fields take `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists
//! `a,b`, and names for months (`jan`) and days (`mon`; 0 and 7 are
//! Sunday). As in Vixie cron, when both day fields are restricted a day
//! matching either one matches. Times are UTC.

use crate::time::{civil_from_days, days_from_civil};

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: either may match.
    either_day: bool,
}

/// Why an expression was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cron {expression:?}: {problem}")]
pub struct CronError {
    /// The expression as given.
    pub expression: String,
    /// What is wrong with it.
    pub problem: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses five or six fields.
    pub fn parse(expression: &str) -> Result<Cron, CronError> {
        let fail = |problem: String| CronError {
            expression: expression.to_owned(),
            problem,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(fail(format!(
                    "has {n} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
                )))
            }
        };
        let field = |text: &str, name: &str, low: u32, high: u32, names: &[&str]| {
            parse_field(text, low, high, names).map_err(|e| fail(format!("{name}: {e}")))
        };
        let mut weekdays = field(rest[4], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        Ok(Cron {
            text: expression.trim().to_owned(),
            seconds: field(seconds, "seconds", 0, 59, &[])?,
            minutes: field(rest[0], "minute", 0, 59, &[])?,
            hours: field(rest[1], "hour", 0, 23, &[])?,
            days: field(rest[2], "day of month", 1, 31, &[])?,
            months: field(rest[3], "month", 1, 12, &MONTHS)?,
            weekdays,
            either_day: !rest[2].starts_with('*') && !rest[4].starts_with('*'),
        })
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole second `unix_s` matches.
    pub fn matches(&self, unix_s: u64) -> bool {
        let days = (unix_s / 86_400) as i64;
        let (_, month, day) = civil_from_days(days);
        let rem = unix_s % 86_400;
        self.day_matches(days, month, day)
            && bit(self.hours, (rem / 3600) as u32)
            && bit(self.minutes, ((rem % 3600) / 60) as u32)
            && bit(self.seconds, (rem % 60) as u32)
    }

    fn day_matches(&self, days: i64, month: u32, day: u32) -> bool {
        let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday.
        let by_date = bit(self.days, day);
        let by_weekday = bit(self.weekdays, weekday);
        bit(self.months, month)
            && if self.either_day {
                by_date || by_weekday
            } else {
                by_date && by_weekday
            }
    }

    /// The first matching second strictly after `unix_s`, within about
    /// five years (an expression such as `0 0 30 2 *` never matches:
    /// `None`).
    pub fn next_after(&self, unix_s: u64) -> Option<u64> {
        let mut t = unix_s + 1;
        let limit = unix_s + 5 * 366 * 86_400;
        while t < limit {
            let days = (t / 86_400) as i64;
            let (_, month, day) = civil_from_days(days);
            if !self.day_matches(days, month, day) {
                t = (days as u64 + 1) * 86_400;
                continue;
            }
            let rem = t % 86_400;
            if !bit(self.hours, (rem / 3600) as u32) {
                t = (t / 3600 + 1) * 3600;
                continue;
            }
            if !bit(self.minutes, ((rem % 3600) / 60) as u32) {
                t = (t / 60 + 1) * 60;
                continue;
            }
            if !bit(self.seconds, (rem % 60) as u32) {
                t += 1;
                continue;
            }
            return Some(t);
        }
        None
    }
}

impl std::fmt::Display for Cron {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn bit(set: u64, n: u32) -> bool {
    set & (1 << n) != 0
}

/// One field as a bit set of the values it allows.
fn parse_field(text: &str, low: u32, high: u32, names: &[&str]) -> Result<u64, String> {
    let value = |v: &str| -> Result<u32, String> {
        let lower = v.to_ascii_lowercase();
        let n = match names.iter().position(|n| *n == lower) {
            // Month names count from 1, weekday names from 0 (Sunday).
            Some(i) => i as u32 + low,
            None => v
                .parse::<u32>()
                .map_err(|_| format!("{v:?} is not a number"))?,
        };
        if n < low || n > high {
            return Err(format!("{n} is outside {low}-{high}"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step {step:?} is not a positive number"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (low, high),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if step > 1 => (value(range)?, high),
                None => {
                    let v = value(range)?;
                    (v, v)
                }
            },
        };
        if from > to {
            return Err(format!("range {range:?} runs backwards"));
        }
        let mut n = from;
        while n <= to {
            set |= 1 << n;
            n += step;
        }
    }
    if set == 0 {
        return Err("allows nothing".into());
    }
    Ok(set)
}

/// Unix seconds of a UTC civil time (for tests and freeze windows).
pub fn unix_s(y: i64, month: u32, day: u32, h: u32, m: u32, s: u32) -> u64 {
    (days_from_civil(y, month, day) * 86_400) as u64 + u64::from(h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_fire_on_the_minute() {
        let c = Cron::parse("30 2 * * *").unwrap();
        let start = unix_s(2026, 11, 30, 12, 0, 0);
        assert_eq!(c.next_after(start), Some(unix_s(2026, 12, 1, 2, 30, 0)));
        assert!(c.matches(unix_s(2026, 12, 1, 2, 30, 0)));
        assert!(!c.matches(unix_s(2026, 12, 1, 2, 30, 1)));
    }

    #[test]
    fn six_fields_have_seconds_first() {
        let c = Cron::parse("*/2 * * * * *").unwrap();
        let t = unix_s(2026, 1, 1, 0, 0, 1);
        assert_eq!(c.next_after(t), Some(t + 1));
        assert_eq!(c.next_after(t + 1), Some(t + 3));
    }

    #[test]
    fn names_ranges_steps_and_lists() {
        // Fridays 18:00 — 2026-12-04 is a Friday.
        let c = Cron::parse("0 18 * * fri").unwrap();
        assert_eq!(
            c.next_after(unix_s(2026, 11, 30, 0, 0, 0)),
            Some(unix_s(2026, 12, 4, 18, 0, 0))
        );
        let c = Cron::parse("0 9-17/4 1,15 jan-mar *").unwrap();
        assert_eq!(
            c.next_after(unix_s(2026, 11, 30, 0, 0, 0)),
            Some(unix_s(2027, 1, 1, 9, 0, 0))
        );
        assert_eq!(
            c.next_after(unix_s(2027, 1, 1, 9, 0, 0)),
            Some(unix_s(2027, 1, 1, 13, 0, 0))
        );
        // Sunday as 7.
        assert!(Cron::parse("0 0 * * 7")
            .unwrap()
            .matches(unix_s(2026, 11, 29, 0, 0, 0)));
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // The 1st, or any Monday (2026-11-30 is a Monday).
        let c = Cron::parse("0 0 1 * mon").unwrap();
        assert!(c.matches(unix_s(2026, 11, 30, 0, 0, 0)));
        assert!(c.matches(unix_s(2026, 12, 1, 0, 0, 0)));
        assert!(!c.matches(unix_s(2026, 12, 2, 0, 0, 0)));
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (text, field) in [
            ("* * * *", "fields"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * foo *", "month"),
            ("* * * * 8", "day of week"),
            ("*/0 * * * *", "minute"),
            ("5-1 * * * *", "minute"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.problem.contains(field), "{text}: {}", e.problem);
        }
    }

    #[test]
    fn an_impossible_date_never_fires() {
        let c = Cron::parse("0 0 30 2 *").unwrap();
        assert_eq!(c.next_after(unix_s(2026, 1, 1, 0, 0, 0)), None);
    }
}
