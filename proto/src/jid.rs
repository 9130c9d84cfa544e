//! Job ids: Salt-style, time-ordered, unique per master.
//!
//! A jid is 20 digits, `YYYYMMDDhhmmssffffff` in UTC, so ids sort by time
//! as plain strings and a range scan of the store lists jobs in order.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// A validated job id. Constructed only through [`Jid::parse`] or a
/// [`JidGenerator`], so any `Jid` is safe in a path or a log line.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jid(String);

impl Jid {
    /// Accepts exactly 20 ASCII digits.
    pub fn parse(value: &str) -> Result<Jid, ProtoError> {
        if value.len() == 20 && value.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Jid(value.to_owned()))
        } else {
            Err(ProtoError::Invalid {
                what: "jid",
                value: value.chars().take(64).collect(),
                rule: "20 digits, YYYYMMDDhhmmssffffff",
            })
        }
    }

    /// Builds the jid for a moment in unix microseconds.
    pub fn from_unix_us(us: u64) -> Jid {
        let secs = (us / 1_000_000) as i64;
        let frac = us % 1_000_000;
        let (y, mo, d) = crate::time::civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        Jid(format!(
            "{y:04}{mo:02}{d:02}{:02}{:02}{:02}{frac:06}",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        ))
    }

    /// The jid as its 20 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The moment the jid names, in unix ms (a jid is made when its job
    /// is issued, so this is when the job began).
    pub fn unix_ms(&self) -> u64 {
        let digits = |range: std::ops::Range<usize>| self.0[range].parse::<u64>().unwrap_or(0);
        let days = crate::time::days_from_civil(
            digits(0..4) as i64,
            digits(4..6) as u32,
            digits(6..8) as u32,
        );
        let secs = days.max(0) as u64 * 86_400
            + digits(8..10) * 3600
            + digits(10..12) * 60
            + digits(12..14);
        secs * 1000 + digits(14..20) / 1000
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Jid {
    type Error = ProtoError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Jid::parse(&value)
    }
}

impl From<Jid> for String {
    fn from(jid: Jid) -> String {
        jid.0
    }
}

impl std::str::FromStr for Jid {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Jid::parse(s)
    }
}

/// Hands out strictly increasing jids even when called many times within
/// one microsecond or when the wall clock steps back.
#[derive(Debug, Default)]
pub struct JidGenerator {
    last_us: AtomicU64,
}

impl JidGenerator {
    /// A generator that has handed out nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next jid: the current time, or one microsecond past the last
    /// one handed out, whichever is later.
    pub fn next(&self) -> Jid {
        let now = crate::time::now_us();
        let mut last = self.last_us.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(last + 1);
            match self.last_us.compare_exchange_weak(
                last,
                candidate,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Jid::from_unix_us(candidate),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_salt() {
        // 2023-11-14 22:13:20.000123 UTC
        let jid = Jid::from_unix_us(1_700_000_000_000_123);
        assert_eq!(jid.unix_ms(), 1_700_000_000_000);
        assert_eq!(jid.as_str(), "20231114221320000123");
        assert_eq!(Jid::parse(jid.as_str()).unwrap(), jid);
    }

    #[test]
    fn generator_is_strictly_increasing() {
        let generator = JidGenerator::new();
        let mut previous = generator.next();
        for _ in 0..10_000 {
            let next = generator.next();
            assert!(next > previous, "{next} <= {previous}");
            previous = next;
        }
    }

    #[test]
    fn parse_refuses_anything_but_twenty_digits() {
        for bad in [
            "",
            "2023",
            "2023111422132000012x",
            "../../etc/passwd",
            "202311142213200001234",
        ] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deserializing_validates() {
        let bytes = rmp_serde::to_vec("../x").unwrap();
        assert!(rmp_serde::from_slice::<Jid>(&bytes).is_err());
    }
}
