//! What makes a schedule valid, wherever it comes from (`[[schedule]]`
//! or `POST /v1/schedules`), and when it is next due. The schedules
//! themselves run in `core::schedules`.

use halite_model::NewSchedule;
use halite_proto::cron::Cron;
use halite_proto::Target;

/// Checks a schedule's name, cron expression and job shape. `Err((field,
/// message))`. Whether its owner may run the job is checked by the core.
pub fn validate(schedule: &NewSchedule) -> Result<(), (&'static str, String)> {
    halite_proto::ident::validate_id(&schedule.name).map_err(|e| ("name", e.to_string()))?;
    Cron::parse(&schedule.cron).map_err(|e| ("cron", e.to_string()))?;
    let job = &schedule.job;
    halite_proto::ident::validate_function(&job.fun).map_err(|e| ("job.fun", e.to_string()))?;
    Target::parse(job.tgt_type, &job.target).map_err(|e| ("job.target", e.to_string()))?;
    if !job.secret.is_empty() {
        return Err((
            "job.secret",
            "schedules keep no secrets; an app's credentials come from the secrets file".into(),
        ));
    }
    if job.override_freeze {
        return Err((
            "job.override_freeze",
            "a schedule never releases inside a freeze window".into(),
        ));
    }
    Ok(())
}

/// The first time `cron` names strictly after `after_ms` (Unix ms).
pub fn next_due(cron: &str, after_ms: u64) -> Option<u64> {
    Cron::parse(cron)
        .ok()?
        .next_after(after_ms / 1000)
        .map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(name: &str, cron: &str, fun: &str) -> NewSchedule {
        NewSchedule {
            name: name.into(),
            cron: cron.into(),
            job: halite_model::JobRequest {
                target: "*".into(),
                fun: fun.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn bad_schedules_name_the_field() {
        assert!(validate(&schedule("nightly", "0 2 * * *", "test.ping")).is_ok());
        assert_eq!(
            validate(&schedule("../x", "0 2 * * *", "test.ping"))
                .unwrap_err()
                .0,
            "name"
        );
        assert_eq!(
            validate(&schedule("n", "0 2 * *", "test.ping"))
                .unwrap_err()
                .0,
            "cron"
        );
        assert_eq!(
            validate(&schedule("n", "0 2 * * *", "no such!"))
                .unwrap_err()
                .0,
            "job.fun"
        );
        let mut secret = schedule("n", "0 2 * * *", "test.ping");
        secret.job.secret.insert("token".into(), "x".into());
        assert_eq!(validate(&secret).unwrap_err().0, "job.secret");
    }

    #[test]
    fn the_next_time_is_strictly_later() {
        assert_eq!(next_due("*/5 * * * * *", 10_000), Some(15_000));
        assert_eq!(next_due("*/5 * * * * *", 10_500), Some(15_000));
    }
}
