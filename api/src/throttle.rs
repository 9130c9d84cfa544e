//! Login throttling: a source address gets [`PER_SOURCE`] attempts and a
//! user name [`PER_USER_FAILURES`] failed ones per [`WINDOW`]; past that,
//! logins answer 429 with `Retry-After` until the window ends, before any
//! (deliberately slow) password check runs. Both maps are bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a count lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Login attempts one source address may make per window.
pub const PER_SOURCE: u32 = 20;
/// Failed logins one user name may have per window.
pub const PER_USER_FAILURES: u32 = 5;
/// Addresses or names tracked at once; the oldest windows go first.
const MAX_TRACKED: usize = 10_000;

/// Counts per key in fixed windows.
#[derive(Default)]
struct Windows {
    counts: HashMap<String, (Instant, u32)>,
}

impl Windows {
    /// Seconds until `key` may try again, if it is over `limit` now.
    fn over(&self, key: &str, limit: u32, now: Instant) -> Option<u64> {
        let (start, count) = self.counts.get(key)?;
        let left = WINDOW.checked_sub(now.duration_since(*start))?;
        (*count >= limit).then(|| left.as_secs().max(1))
    }

    fn count(&mut self, key: &str, now: Instant) {
        if !self.counts.contains_key(key) && self.counts.len() >= MAX_TRACKED {
            self.counts
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.counts.len() >= MAX_TRACKED {
                let oldest = self
                    .counts
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.counts.remove(&oldest);
                }
            }
        }
        let entry = self.counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    fn clear(&mut self, key: &str) {
        self.counts.remove(key);
    }
}

/// Why a login is refused before its password is checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Throttled {
    /// The source address made too many attempts.
    Source(u64),
    /// The user name had too many failures.
    User(u64),
}

/// The login throttle of one API server.
#[derive(Default)]
pub struct LoginThrottle {
    sources: Mutex<Windows>,
    users: Mutex<Windows>,
}

impl LoginThrottle {
    /// Counts an attempt from `source` for `user`, or refuses it.
    pub fn attempt(&self, source: Option<IpAddr>, user: &str) -> Result<(), Throttled> {
        self.attempt_at(source, user, Instant::now())
    }

    fn attempt_at(
        &self,
        source: Option<IpAddr>,
        user: &str,
        now: Instant,
    ) -> Result<(), Throttled> {
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = users.over(user, PER_USER_FAILURES, now) {
            return Err(Throttled::User(wait));
        }
        drop(users);
        if let Some(source) = source {
            let key = source.to_string();
            let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(wait) = sources.over(&key, PER_SOURCE, now) {
                return Err(Throttled::Source(wait));
            }
            sources.count(&key, now);
        }
        Ok(())
    }

    /// Records how the attempt for `user` ended: a failure counts against
    /// the name, a success clears it.
    pub fn outcome(&self, user: &str, succeeded: bool) {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if succeeded {
            users.clear(user);
        } else {
            users.count(user, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

    #[test]
    fn a_user_name_is_refused_after_its_failures_until_the_window_ends() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        for _ in 0..PER_USER_FAILURES {
            throttle.attempt_at(None, "alice", t0).unwrap();
            throttle.outcome("alice", false);
        }
        assert!(matches!(
            throttle.attempt_at(None, "alice", t0),
            Err(Throttled::User(_))
        ));
        throttle.attempt_at(None, "bob", t0).unwrap();
        throttle
            .attempt_at(None, "alice", Instant::now() + WINDOW)
            .unwrap();
    }

    #[test]
    fn a_success_clears_the_name_and_a_source_is_bounded_too() {
        let throttle = LoginThrottle::default();
        let t0 = Instant::now();
        throttle.attempt_at(HOST, "alice", t0).unwrap();
        throttle.outcome("alice", false);
        throttle.outcome("alice", true);
        for i in 1..PER_SOURCE {
            throttle.attempt_at(HOST, &format!("u{i}"), t0).unwrap();
        }
        match throttle.attempt_at(HOST, "alice", t0) {
            Err(Throttled::Source(wait)) => assert!((1..=60).contains(&wait)),
            other => panic!("{other:?}"),
        }
        throttle.attempt_at(None, "alice", t0).unwrap();
    }

    #[test]
    fn the_tracked_names_are_bounded() {
        let mut windows = Windows::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED + 10 {
            windows.count(&format!("k{i}"), t0);
        }
        assert!(windows.counts.len() <= MAX_TRACKED);
    }
}
