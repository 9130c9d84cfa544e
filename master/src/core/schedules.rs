//! Schedules on the master: the config's `[[schedule]]` entries and those
//! made through the API, kept in the store, and run when due.
//!
//! A due time is *taken* (written durably as `last_due`) before its job
//! is submitted, so a master restarted at any point never runs it twice;
//! times missed while the master was down are skipped, not caught up, as
//! Salt's scheduler does (one run is recorded saying so).
//! Everything here blocks (store writes, submitting jobs).

use halite_model::{NewSchedule, Schedule, ScheduleOrigin, ScheduleRun};
use halite_proto::time::now_ms;

use super::{Core, CoreError};
use crate::schedule::{next_due, validate};

/// A due time found later than this is one the master was down for.
const MISSED_AFTER_MS: u64 = 60_000;

impl Core {
    /// Brings the store's config schedules in line with the config: new
    /// ones added, changed ones updated (their pause state and runs kept),
    /// removed ones forgotten. Called once at start.
    pub fn sync_config_schedules(&self) -> Result<(), CoreError> {
        let now = now_ms();
        for stored in self.store.schedules()? {
            let in_config = self.config.schedules.iter().any(|s| s.name == stored.name);
            if stored.origin == ScheduleOrigin::Config && !in_config {
                self.store.remove_schedule(&stored.name)?;
            }
        }
        for spec in &self.config.schedules {
            let mut schedule = match self.store.schedule(&spec.name)? {
                Some(s) if s.origin == ScheduleOrigin::Api => {
                    tracing::warn!(schedule = %spec.name, "a schedule made through the API has this [[schedule]]'s name; the config's replaces it");
                    fresh(spec, halite_pki::users::ROOT, ScheduleOrigin::Config, now)
                }
                Some(s) => s,
                None => fresh(spec, halite_pki::users::ROOT, ScheduleOrigin::Config, now),
            };
            if schedule.cron != spec.cron {
                // A new expression counts from now.
                schedule.last_due = Some(now);
            }
            schedule.cron = spec.cron.clone();
            schedule.job = spec.job.clone();
            self.store.put_schedule(&schedule)?;
        }
        Ok(())
    }

    /// Makes a schedule owned by `user`; its job must be one `user` may
    /// submit now (checked whole, nothing published).
    pub fn create_schedule(&self, user: &str, new: NewSchedule) -> Result<Schedule, CoreError> {
        validate(&new).map_err(|(field, e)| CoreError::Invalid(format!("{field}: {e}")))?;
        self.check(user, new.job.clone())?;
        if self.store.schedule(&new.name)?.is_some() {
            return Err(CoreError::Conflict(format!(
                "there is already a schedule named {:?}",
                new.name
            )));
        }
        let schedule = fresh(&new, user, ScheduleOrigin::Api, now_ms());
        self.store.put_schedule(&schedule)?;
        Ok(with_next(schedule))
    }

    /// Every schedule, with its next due time.
    pub fn schedules(&self) -> Result<Vec<Schedule>, CoreError> {
        Ok(self.store.schedules()?.into_iter().map(with_next).collect())
    }

    /// One schedule.
    pub fn schedule(&self, name: &str) -> Result<Schedule, CoreError> {
        self.store
            .schedule(name)?
            .map(with_next)
            .ok_or_else(|| CoreError::NotFound(format!("no schedule {name:?}")))
    }

    /// Pauses or resumes a schedule. Its owner may, and anyone who may
    /// submit its job. A resumed schedule counts from now: the times it
    /// was paused for are not run.
    pub fn pause_schedule(
        &self,
        user: &str,
        name: &str,
        paused: bool,
    ) -> Result<Schedule, CoreError> {
        let mut schedule = self.schedule(name)?;
        self.may_change(user, &schedule)?;
        if schedule.paused != paused {
            schedule.paused = paused;
            if !paused {
                schedule.last_due = Some(now_ms());
            }
            self.store.put_schedule(&schedule)?;
        }
        Ok(with_next(schedule))
    }

    /// Removes a schedule made through the API (config ones are removed
    /// from the config).
    pub fn remove_schedule(&self, user: &str, name: &str) -> Result<(), CoreError> {
        let schedule = self.schedule(name)?;
        if schedule.origin == ScheduleOrigin::Config {
            return Err(CoreError::Conflict(format!(
                "schedule {name:?} is in the master's config ([[schedule]]): remove it there, or pause it"
            )));
        }
        self.may_change(user, &schedule)?;
        self.store.remove_schedule(name)?;
        Ok(())
    }

    fn may_change(&self, user: &str, schedule: &Schedule) -> Result<(), CoreError> {
        if user == schedule.owner {
            return Ok(());
        }
        self.check(user, schedule.job.clone())
    }

    /// Runs every schedule due at `now`: takes the time (durably), then
    /// submits the job as the schedule's owner and records the run.
    pub fn run_due_schedules(&self, now: u64) -> Result<usize, CoreError> {
        let mut ran = 0;
        for mut schedule in self.store.schedules()? {
            if schedule.paused {
                continue;
            }
            let since = schedule.last_due.unwrap_or(schedule.created);
            let Some(due) = next_due(&schedule.cron, since) else {
                continue;
            };
            if due > now {
                continue;
            }
            let span =
                tracing::info_span!("schedule", name = %schedule.name, jid = tracing::field::Empty);
            let _entered = span.enter();
            if now - due > MISSED_AFTER_MS {
                // The master was down: skip to now, say so once.
                schedule.last_due = Some(now);
                schedule.record(ScheduleRun {
                    due,
                    jid: None,
                    error: Some(
                        "missed: the master was not running; times missed are skipped".into(),
                    ),
                });
                self.store.put_schedule(&schedule)?;
                tracing::warn!("scheduled times missed while the master was down were skipped");
                continue;
            }
            schedule.last_due = Some(due);
            self.store.put_schedule(&schedule)?;
            let run = match self.submit(&schedule.owner, schedule.job.clone()) {
                Ok(submitted) => {
                    span.record("jid", tracing::field::display(&submitted.jid));
                    tracing::info!(minions = submitted.minions.len(), "scheduled job submitted");
                    ScheduleRun {
                        due,
                        jid: Some(submitted.jid.to_string()),
                        error: None,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled job refused");
                    ScheduleRun {
                        due,
                        jid: None,
                        error: Some(e.to_string()),
                    }
                }
            };
            schedule.record(run);
            self.store.put_schedule(&schedule)?;
            ran += 1;
        }
        Ok(ran)
    }
}

fn fresh(spec: &NewSchedule, owner: &str, origin: ScheduleOrigin, now: u64) -> Schedule {
    Schedule {
        name: spec.name.clone(),
        cron: spec.cron.clone(),
        job: spec.job.clone(),
        owner: owner.to_owned(),
        origin,
        paused: false,
        created: now,
        last_due: None,
        next_due: None,
        runs: Vec::new(),
    }
}

/// Fills in the next due time (none while paused).
fn with_next(mut schedule: Schedule) -> Schedule {
    schedule.next_due = if schedule.paused {
        None
    } else {
        next_due(
            &schedule.cron,
            schedule.last_due.unwrap_or(schedule.created),
        )
    };
    schedule
}
