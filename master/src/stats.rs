//! Deploy statistics for a portal's dashboard, computed from the deploy
//! records the master keeps per app and minion (they outlive job pruning).

use std::collections::BTreeMap;

use halite_model::{AppDayStats, DeployRecord, DeployStats, EnvStats};

/// An app and the environment of its minion.
type AppEnv<'a> = (&'a str, Option<&'a str>);

/// Statistics of the records in `[from, to)`.
pub fn deploy_stats(records: &[DeployRecord], from: u64, to: u64) -> DeployStats {
    let in_range: Vec<&DeployRecord> = records
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .collect();
    let total = in_range.len() as u64;
    let succeeded = in_range.iter().filter(|r| r.success).count() as u64;
    let mut durations: Vec<u64> = in_range.iter().map(|r| r.duration_ms).collect();
    durations.sort_unstable();
    let mut per_app_day: BTreeMap<(String, String), AppDayStats> = BTreeMap::new();
    let mut failures_by_minion = BTreeMap::new();
    let mut failures_by_stage = BTreeMap::new();
    // (app, environment) → (failures, durations)
    let mut per_env: BTreeMap<AppEnv, (u64, Vec<u64>)> = BTreeMap::new();
    for record in &in_range {
        let env = per_env
            .entry((record.app.as_str(), record.env.as_deref()))
            .or_default();
        env.0 += u64::from(!record.success);
        env.1.push(record.duration_ms);
        let day = utc_day(record.at);
        let row = per_app_day
            .entry((record.app.clone(), day.clone()))
            .or_insert_with(|| AppDayStats {
                app: record.app.clone(),
                day,
                ..AppDayStats::default()
            });
        row.deploys += 1;
        if !record.success {
            row.failed += 1;
            *failures_by_minion.entry(record.minion.clone()).or_insert(0) += 1;
            let stage = record
                .failed_stage
                .clone()
                .unwrap_or_else(|| "unknown".into());
            *failures_by_stage.entry(stage).or_insert(0) += 1;
        }
    }
    DeployStats {
        from,
        to,
        total,
        succeeded,
        success_rate: if total == 0 {
            1.0
        } else {
            succeeded as f64 / total as f64
        },
        median_ms: percentile(&durations, 50),
        p95_ms: percentile(&durations, 95),
        per_app_day: per_app_day.into_values().collect(),
        per_env: per_env
            .into_iter()
            .map(|((app, env), (failed, mut durations))| {
                durations.sort_unstable();
                EnvStats {
                    app: app.to_owned(),
                    env: env.map(str::to_owned),
                    deploys: durations.len() as u64,
                    failed,
                    median_ms: percentile(&durations, 50),
                    p95_ms: percentile(&durations, 95),
                }
            })
            .collect(),
        failures_by_minion,
        failures_by_stage,
    }
}

/// The nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[u64], pct: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `YYYY-MM-DD` (UTC) of a unix time in ms.
pub fn utc_day(ms: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let days = (ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(app: &str, minion: &str, at: u64, ms: u64, stage: Option<&str>) -> DeployRecord {
        DeployRecord {
            app: app.into(),
            minion: minion.into(),
            jid: halite_proto::Jid::parse("20261122153012123456").unwrap(),
            action: "deploy".into(),
            success: stage.is_none(),
            result: if stage.is_none() { "live" } else { "failed" }.into(),
            revision: None,
            reference: None,
            release: None,
            previous: None,
            error: stage.map(|s| format!("{s} failed")),
            failed_stage: stage.map(str::to_owned),
            at,
            duration_ms: ms,
            env: None,
        }
    }

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_795_000_000_000), "2026-11-18");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
    }

    #[test]
    fn rates_percentiles_and_failures() {
        let day = 1_795_000_000_000;
        let mut records: Vec<DeployRecord> = (1..=20)
            .map(|i| record("shop", &format!("web{}", i % 2), day + i, i * 100, None))
            .collect();
        records.push(record("shop", "web1", day + 50, 5000, Some("fetch")));
        records.push(record("blog", "web2", day + 86_400_000, 10, Some("verify")));
        records.push(record("blog", "web2", day - 1, 10, Some("verify"))); // before range
        let stats = deploy_stats(&records, day, day + 2 * 86_400_000);
        assert_eq!(stats.total, 22);
        assert_eq!(stats.succeeded, 20);
        assert!((stats.success_rate - 20.0 / 22.0).abs() < 1e-9);
        assert_eq!(stats.median_ms, 1000);
        assert_eq!(stats.p95_ms, 2000);
        assert_eq!(stats.failures_by_minion.get("web1"), Some(&1));
        assert_eq!(stats.failures_by_minion.get("web2"), Some(&1));
        assert_eq!(stats.failures_by_stage.get("fetch"), Some(&1));
        assert_eq!(stats.failures_by_stage.get("verify"), Some(&1));
        assert_eq!(stats.per_app_day.len(), 2);
        assert_eq!(stats.per_app_day[1].app, "shop");
        assert_eq!(stats.per_app_day[1].deploys, 21);
        assert_eq!(stats.per_app_day[1].failed, 1);
        let empty = deploy_stats(&[], 0, 1);
        assert!(empty.per_env.is_empty());
        assert_eq!((empty.total, empty.success_rate, empty.p95_ms), (0, 1.0, 0));
    }

    #[test]
    fn every_deploy_counts_for_its_environment() {
        let day = 1_795_000_000_000;
        let in_env = |minion: &str, env: Option<&str>, ms: u64, stage: Option<&str>| DeployRecord {
            env: env.map(str::to_owned),
            ..record("shop", minion, day + ms, ms, stage)
        };
        let records = [
            in_env("web1", Some("staging"), 100, None),
            in_env("web1", Some("staging"), 300, Some("verify")),
            in_env("web2", Some("production"), 200, None),
            in_env("web9", None, 50, None),
        ];
        let stats = deploy_stats(&records, day, day + 86_400_000);
        let rows: Vec<(Option<&str>, u64, u64, u64, u64)> = stats
            .per_env
            .iter()
            .map(|e| (e.env.as_deref(), e.deploys, e.failed, e.median_ms, e.p95_ms))
            .collect();
        assert_eq!(
            rows,
            [
                (None, 1, 0, 50, 50),
                (Some("production"), 1, 0, 200, 200),
                (Some("staging"), 2, 1, 100, 300),
            ]
        );
        assert!(stats.per_env.iter().all(|e| e.app == "shop"));
    }
}
