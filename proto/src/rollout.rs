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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
