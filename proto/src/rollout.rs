//! Rollout plans: how a release ramps through a fleet (`1,10%,50%,100%`),
//! how long each step bakes, how many failures a step and the whole
//! rollout tolerate, and what gates a step must pass. Given on the
//! rollout (`master-cli rollout start … --ramp 1,10%,50%,100%`) or in the
//! app definition (`[rollout]`, `[env.NAME.rollout]`).

use serde::{Deserialize, Serialize};

/// A number of minions: absolute (`10`) or a share of the fleet (`25%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AmountText", into = "String")]
pub enum Amount {
    /// This many minions.
    Count(usize),
    /// This percentage of the rollout's minions (1–100), rounded up.
    Percent(u32),
}

/// A malformed rollout plan, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// `ramp`, `max_fail`, `probes[0].url`, ...
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn plan_error(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError {
        field: field.into(),
        message: message.into(),
    }
}

impl Amount {
    /// `10` or `25%`.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let text = text.trim();
        match text.strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Amount::Percent(p)),
                _ => Err(format!("{text:?}: a percentage is 1% to 100%")),
            },
            None => text
                .parse::<usize>()
                .map(Amount::Count)
                .map_err(|_| format!("{text:?}: give a number of minions (10) or a share (25%)")),
        }
    }

    /// How many minions of `total` this is (a share rounds up, so 1% of
    /// 50 is one minion, never none).
    pub fn of(self, total: usize) -> usize {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (total * p as usize).div_ceil(100),
        }
    }
}

/// An amount as written: `2` or `"2"` or `"10%"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum AmountText {
    Number(usize),
    Text(String),
}

impl TryFrom<AmountText> for Amount {
    type Error = String;
    fn try_from(text: AmountText) -> Result<Amount, String> {
        match text {
            AmountText::Number(n) => Ok(Amount::Count(n)),
            AmountText::Text(text) => Amount::parse(&text),
        }
    }
}

impl From<Amount> for String {
    fn from(amount: Amount) -> String {
        amount.to_string()
    }
}

impl std::fmt::Display for Amount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A check the master runs itself after a step has baked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    /// An HTTP(S) URL the master GETs; the step passes when it answers
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The status `url` must answer (200 unless given).
    #[serde(default = "ok_status")]
    pub status: u16,
    /// A program and its arguments the master runs (no shell); the step
    /// passes when it exits with `exit_code`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// The exit code `command` must end with (0 unless given).
    #[serde(default)]
    pub exit_code: i32,
    /// Seconds the probe may take (10 unless given).
    #[serde(default = "probe_timeout")]
    pub timeout: u64,
}

fn ok_status() -> u16 {
    200
}

fn probe_timeout() -> u64 {
    10
}

/// Which way a canary's numbers get worse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Latency, error rates: the canary is worse when its numbers are
    /// higher.
    #[default]
    Lower,
    /// Throughput, hit rates: worse when lower.
    Higher,
}

/// Canary judgment without a metrics backend: after the first step has
/// baked, its minions (the canary) and as many minions not yet released
/// (the baseline) each run the same measurement `samples` times — the
/// app's health check, timed, or `cmd`, which prints a number — and the
/// step fails when the canary is worse than the baseline by more than
/// the margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Runs per minion (10 unless given; 1 to 1000).
    #[serde(default = "ten")]
    pub samples: u32,
    /// A shell command run in the live release instead of the health
    /// check; the last number it prints is the sample, a non-zero exit
    /// an error. Given when a rollout is started, it needs a grant for
    /// `cmd.run` on the minions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// How much worse the canary's median may be, in percent of the
    /// baseline's median (20 unless given).
    #[serde(default = "twenty")]
    pub margin: f64,
    /// A difference of medians this small never fails (0 unless given):
    /// 0.4 ms against 0.3 ms is noise, not a regression.
    #[serde(default)]
    pub min_difference: f64,
    /// Errors the canary may have beyond the baseline's (0 unless given).
    #[serde(default)]
    pub max_errors: u32,
    /// Which way is better (`lower` unless given).
    #[serde(default)]
    pub better: Better,
}

fn ten() -> u32 {
    10
}

fn twenty() -> f64 {
    20.0
}

/// What one minion measured (`release.measure`'s return).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Runs made.
    pub samples: u32,
    /// Runs that failed (unhealthy answer, non-zero exit, no number).
    pub errors: u32,
    /// The numbers of the runs that did not fail: milliseconds for the
    /// health check, what `cmd` printed otherwise.
    pub values: Vec<f64>,
}

/// A canary judged against its baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// Not worse than the baseline beyond the margin.
    pub passed: bool,
    /// The numbers compared, in a line.
    pub detail: String,
}

/// The median of some numbers; none of none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

impl Canary {
    /// Judges the canary's measurements against the baseline's: more
    /// errors than the baseline's rate predicts for the canary's runs,
    /// plus `max_errors`, fails, and so does a median worse by more than
    /// `margin` percent and `min_difference`. A baseline that measured
    /// nothing cannot vouch for the canary: that fails too.
    pub fn judge(&self, canary: &[Measurement], baseline: &[Measurement]) -> Verdict {
        let pooled = |ms: &[Measurement]| {
            let samples: u32 = ms.iter().map(|m| m.samples).sum();
            let errors: u32 = ms.iter().map(|m| m.errors).sum();
            let values: Vec<f64> = ms.iter().flat_map(|m| m.values.iter().copied()).collect();
            (samples, errors, median(&values))
        };
        let (canary_samples, canary_errors, canary_median) = pooled(canary);
        let (baseline_samples, baseline_errors, baseline_median) = pooled(baseline);
        let show = |m: Option<f64>| m.map_or("-".to_owned(), |m| format!("{m:.3}"));
        let numbers = format!(
            "canary median {} with {canary_errors} error(s), baseline median {} with {baseline_errors} error(s)",
            show(canary_median),
            show(baseline_median)
        );
        let verdict = |passed: bool, why: &str| Verdict {
            passed,
            detail: format!("{why}: {numbers}"),
        };
        if baseline_samples == 0 {
            return verdict(false, "the baseline measured nothing");
        }
        // The baseline's error rate, over as many runs as the canary made.
        let expected =
            f64::from(baseline_errors) * f64::from(canary_samples) / f64::from(baseline_samples);
        if f64::from(canary_errors) > expected + f64::from(self.max_errors) {
            return verdict(false, "more errors than the baseline");
        }
        let (Some(canary), Some(baseline)) = (canary_median, baseline_median) else {
            return match canary_median {
                None => verdict(false, "the canary measured nothing"),
                Some(_) => verdict(true, "no baseline numbers to compare"),
            };
        };
        let (worse_by, allowed) = match self.better {
            Better::Lower => (canary - baseline, baseline.abs() * self.margin / 100.0),
            Better::Higher => (baseline - canary, baseline.abs() * self.margin / 100.0),
        };
        if worse_by > allowed && worse_by > self.min_difference {
            return verdict(
                false,
                &format!("worse than the baseline by more than {}%", self.margin),
            );
        }
        verdict(true, &format!("within {}% of the baseline", self.margin))
    }
}

/// Does a step wait for a person before the next one starts?
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// The next step starts once the step passed its checks.
    #[default]
    Auto,
    /// After each step but the last, the rollout waits for
    /// `master-cli rollout continue ID` by a user with the grant.
    Manual,
}

/// How a rollout ramps and when it stops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// Where each step ends, counted from the start of the rollout:
    /// `["1", "10%", "50%", "100%"]` releases one minion, then up to a
    /// tenth of them, and so on. A last step of everything is added when
    /// the ramp ends short of it.
    pub ramp: Vec<Amount>,
    /// Seconds a step bakes (released, watched) before its gates.
    #[serde(default)]
    pub bake: u64,
    /// Failed returns a step tolerates (`0`, `2`, `10%` of the step).
    #[serde(default = "none_tolerated")]
    pub max_fail: Amount,
    /// Minions of a step that did not return in time that it tolerates,
    /// counted apart from failures.
    #[serde(default = "none_tolerated")]
    pub max_missing: Amount,
    /// Failed and missing minions the whole rollout tolerates (of all
    /// its minions); unlimited beyond the per-step limits unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fail_total: Option<Amount>,
    /// Seconds a step's minions have to return (the app's timeout unless
    /// given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Checks the master runs after each step has baked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<Probe>,
    /// `manual`: wait for a person after each step but the last.
    #[serde(default)]
    pub gate: Gate,
    /// When a step fails, put every minion this rollout released back on
    /// its previous release (yes unless turned off).
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Judge the first step as a canary against minions not yet released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// After each step's bake, run the app's health check on every
    /// minion of the step again (yes unless turned off; only for apps
    /// that define one).
    #[serde(default = "yes")]
    pub health_gate: bool,
}

fn none_tolerated() -> Amount {
    Amount::Count(0)
}

fn yes() -> bool {
    true
}

impl Default for RolloutPlan {
    /// All at once, no bake, no failure tolerated, rolled back on failure.
    fn default() -> RolloutPlan {
        RolloutPlan {
            ramp: vec![Amount::Percent(100)],
            bake: 0,
            max_fail: none_tolerated(),
            max_missing: none_tolerated(),
            max_fail_total: None,
            timeout: None,
            probes: Vec::new(),
            gate: Gate::Auto,
            auto_rollback: true,
            canary: None,
            health_gate: true,
        }
    }
}

/// The longest bake or timeout a plan may ask for (a day).
const MAX_SECONDS: u64 = 86_400;

impl RolloutPlan {
    /// Reads `--ramp 1,10%,50%,100%`.
    pub fn parse_ramp(text: &str) -> Result<Vec<Amount>, PlanError> {
        text.split(',')
            .map(|step| Amount::parse(step).map_err(|e| plan_error("ramp", e)))
            .collect()
    }

    /// Checks the plan, naming the field at fault.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.ramp.is_empty() {
            return Err(plan_error("ramp", "give at least one step (1,10%,100%)"));
        }
        if self.ramp.len() > 100 {
            return Err(plan_error("ramp", "at most 100 steps"));
        }
        if self.ramp.contains(&Amount::Count(0)) {
            return Err(plan_error("ramp", "a step of no minion releases nothing"));
        }
        if self.bake > MAX_SECONDS {
            return Err(plan_error("bake", "at most 86400 seconds"));
        }
        if self.timeout.is_some_and(|t| t == 0 || t > MAX_SECONDS) {
            return Err(plan_error("timeout", "1 to 86400 seconds"));
        }
        for (i, probe) in self.probes.iter().enumerate() {
            let field = |name: &str| format!("probes[{i}].{name}");
            match (&probe.url, probe.command.is_empty()) {
                (Some(url), true) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(plan_error(field("url"), "an http:// or https:// URL"));
                    }
                }
                (None, false) => {}
                _ => return Err(plan_error(field("url"), "give either url or command")),
            }
            if probe.timeout == 0 || probe.timeout > 3600 {
                return Err(plan_error(field("timeout"), "1 to 3600 seconds"));
            }
        }
        if let Some(canary) = &self.canary {
            if !(1..=1000).contains(&canary.samples) {
                return Err(plan_error("canary.samples", "1 to 1000"));
            }
            if !(canary.margin.is_finite() && canary.margin >= 0.0) {
                return Err(plan_error("canary.margin", "a percentage of 0 or more"));
            }
            if !(canary.min_difference.is_finite() && canary.min_difference >= 0.0) {
                return Err(plan_error("canary.min_difference", "a number of 0 or more"));
            }
            if canary.cmd.as_deref().is_some_and(|c| c.trim().is_empty()) {
                return Err(plan_error("canary.cmd", "an empty command"));
            }
        }
        Ok(())
    }

    /// The minions of each step, in order: `minions` cut where the ramp
    /// says, never an empty step, the last step reaching the end.
    pub fn steps<T: Clone>(&self, minions: &[T]) -> Vec<Vec<T>> {
        let total = minions.len();
        let mut steps = Vec::new();
        let mut done = 0;
        for amount in &self.ramp {
            let end = amount.of(total).min(total);
            if end > done {
                steps.push(minions[done..end].to_vec());
                done = end;
            }
        }
        if done < total {
            steps.push(minions[done..].to_vec());
        }
        steps
    }

    /// Does `count` of `of` go beyond what `limit` tolerates?
    pub fn exceeds(limit: Amount, count: usize, of: usize) -> bool {
        let tolerated = match limit {
            Amount::Count(n) => n,
            // 10% of a step of 5 tolerates none: a share rounds down here.
            Amount::Percent(p) => of * p as usize / 100,
        };
        count > tolerated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_cuts_the_fleet_into_growing_steps() {
        let plan = RolloutPlan {
            ramp: RolloutPlan::parse_ramp("1,10%,50%,100%").unwrap(),
            ..RolloutPlan::default()
        };
        let fleet: Vec<u32> = (0..20).collect();
        let sizes: Vec<usize> = plan.steps(&fleet).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 8, 10]);
        // Steps that would be empty are skipped; a short ramp ends with
        // everything.
        let plan = RolloutPlan {
            ramp: RolloutPlan::parse_ramp("1,2,10%").unwrap(),
            ..RolloutPlan::default()
        };
        let sizes: Vec<usize> = plan.steps(&fleet).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 18]);
        let three = [1, 2, 3];
        assert_eq!(plan.steps(&three), [vec![1], vec![2], vec![3]]);
        assert!(plan.steps::<u32>(&[]).is_empty());
    }

    #[test]
    fn thresholds_by_count_and_share() {
        assert!(!RolloutPlan::exceeds(Amount::Count(0), 0, 5));
        assert!(RolloutPlan::exceeds(Amount::Count(0), 1, 5));
        assert!(!RolloutPlan::exceeds(Amount::Count(2), 2, 5));
        assert!(RolloutPlan::exceeds(Amount::Percent(10), 1, 5));
        assert!(!RolloutPlan::exceeds(Amount::Percent(10), 1, 10));
        assert_eq!(Amount::Percent(1).of(50), 1);
        assert_eq!(Amount::Percent(50).of(5), 3);
    }

    #[test]
    fn bad_plans_name_their_field() {
        assert_eq!(RolloutPlan::parse_ramp("1,x").unwrap_err().field, "ramp");
        assert_eq!(RolloutPlan::parse_ramp("0%").unwrap_err().field, "ramp");
        assert_eq!(RolloutPlan::parse_ramp("101%").unwrap_err().field, "ramp");
        let bad = |plan: RolloutPlan| plan.validate().unwrap_err().field;
        let ok = RolloutPlan::default();
        assert!(ok.validate().is_ok());
        assert_eq!(
            bad(RolloutPlan {
                ramp: vec![],
                ..ok.clone()
            }),
            "ramp"
        );
        assert_eq!(
            bad(RolloutPlan {
                ramp: vec![Amount::Count(0)],
                ..ok.clone()
            }),
            "ramp"
        );
        assert_eq!(
            bad(RolloutPlan {
                bake: 100_000,
                ..ok.clone()
            }),
            "bake"
        );
        let probe = Probe {
            url: Some("ftp://x".into()),
            status: 200,
            command: vec![],
            exit_code: 0,
            timeout: 10,
        };
        assert_eq!(
            bad(RolloutPlan {
                probes: vec![probe.clone()],
                ..ok.clone()
            }),
            "probes[0].url"
        );
        let both = Probe {
            url: Some("http://x/".into()),
            command: vec!["true".into()],
            ..probe
        };
        assert_eq!(
            bad(RolloutPlan {
                probes: vec![both],
                ..ok
            }),
            "probes[0].url"
        );
    }

    fn measured(values: &[f64], errors: u32) -> Measurement {
        Measurement {
            samples: values.len() as u32 + errors,
            errors,
            values: values.to_vec(),
        }
    }

    #[test]
    fn a_canary_is_judged_against_its_baseline() {
        let canary = Canary {
            samples: 3,
            cmd: None,
            margin: 20.0,
            min_difference: 0.0,
            max_errors: 0,
            better: Better::Lower,
        };
        let baseline = [measured(&[10.0, 11.0, 9.0], 0), measured(&[10.0], 0)];
        // Within the margin (median 11.5 against 10).
        assert!(
            canary
                .judge(&[measured(&[11.0, 12.0], 0)], &baseline)
                .passed
        );
        // Worse by more than 20%.
        assert!(
            !canary
                .judge(&[measured(&[13.0, 12.5, 14.0], 0)], &baseline)
                .passed
        );
        // ... unless the difference is below min_difference.
        let lenient = Canary {
            min_difference: 5.0,
            ..canary.clone()
        };
        assert!(lenient.judge(&[measured(&[13.0], 0)], &baseline).passed);
        // More errors than the baseline fails, whatever the numbers.
        assert!(!canary.judge(&[measured(&[1.0], 1)], &baseline).passed);
        let tolerant = Canary {
            max_errors: 1,
            ..canary.clone()
        };
        assert!(tolerant.judge(&[measured(&[1.0], 1)], &baseline).passed);
        // A canary that measured nothing fails; so does a baseline that
        // made no runs; a baseline whose runs all failed gives no numbers
        // to compare, only its errors.
        assert!(!canary.judge(&[measured(&[], 0)], &baseline).passed);
        assert!(!canary.judge(&[measured(&[5.0], 0)], &[]).passed);
        assert!(
            canary
                .judge(&[measured(&[5.0], 1)], &[measured(&[], 2)])
                .passed
        );
        // Errors compare as rates: two canaries with one error each in
        // ten runs against one baseline minion with one in ten pass.
        let ten = |errors: u32| Measurement {
            samples: 10,
            errors,
            values: vec![10.0; (10 - errors) as usize],
        };
        assert!(canary.judge(&[ten(1), ten(1)], &[ten(1)]).passed);
        assert!(!canary.judge(&[ten(2), ten(2)], &[ten(1)]).passed);
        // Higher is better: a lower canary is the worse one.
        let throughput = Canary {
            better: Better::Higher,
            ..canary.clone()
        };
        assert!(!throughput.judge(&[measured(&[7.0], 0)], &baseline).passed);
        assert!(throughput.judge(&[measured(&[30.0], 0)], &baseline).passed);
        assert_eq!(median(&[3.0, 1.0, 2.0, 10.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn a_bad_canary_names_its_field() {
        let plan = |canary: Canary| RolloutPlan {
            canary: Some(canary),
            ..RolloutPlan::default()
        };
        let ok: Canary = toml::from_str("samples = 5\ncmd = \"echo 1\"\n").unwrap();
        assert_eq!(ok.margin, 20.0);
        assert!(plan(ok.clone()).validate().is_ok());
        let field = |c: Canary| plan(c).validate().unwrap_err().field;
        assert_eq!(
            field(Canary {
                samples: 0,
                ..ok.clone()
            }),
            "canary.samples"
        );
        assert_eq!(
            field(Canary {
                margin: -1.0,
                ..ok.clone()
            }),
            "canary.margin"
        );
        assert_eq!(
            field(Canary {
                cmd: Some(" ".into()),
                ..ok
            }),
            "canary.cmd"
        );
    }

    #[test]
    fn plans_read_from_toml() {
        let plan: RolloutPlan = toml::from_str(
            "ramp = [\"1\", \"25%\", \"100%\"]\nbake = 30\nmax_fail = \"10%\"\nmax_missing = 1\ngate = \"manual\"\n\
             [[probes]]\nurl = \"http://127.0.0.1:8080/health\"\n",
        )
        .unwrap();
        assert_eq!(plan.ramp[1], Amount::Percent(25));
        assert_eq!(plan.max_fail, Amount::Percent(10));
        assert_eq!(plan.max_missing, Amount::Count(1));
        assert_eq!(plan.gate, Gate::Manual);
        assert_eq!(plan.probes[0].status, 200);
        assert!(plan.auto_rollback);
        let unknown = toml::from_str::<RolloutPlan>("ramp = [\"1\"]\nbak = 3\n");
        assert!(unknown.is_err());
    }
}
