//! Rollouts: an app released through its fleet in steps (`1,10%,50%,100%`).
//!
//! Each step is one deploy job (the app's module, through the release
//! kit, so git_deploy, java_tomcat, dotnet_iis and Lua deploy modules
//! alike) to that step's minions. When its minions returned (or its time
//! ran out) the step is judged: failed and missing minions against the
//! plan's limits; then it bakes; then its checks run: the app's health
//! check again on every minion it released (`release.health`), for the
//! first step the canary judgment (`release.measure` on its minions and
//! as many not yet released, compared on the master), and the master's
//! probes (an HTTP status, a command's exit code); then, with a manual
//! gate, it waits for `rollout continue`. A step over a limit or failing a gate stops the
//! rollout, and — unless the plan turns it off — every minion the rollout
//! released goes back to its recorded previous release in one rollback
//! job per app (no fetch: the kit keeps the previous release on disk), whose
//! returns say which minions are back and which are not.
//!
//! The record is stored (flushed) after every round that changed it —
//! right after any job it published — and people's actions; the driver
//! reads it from the store each round, so a restarted master continues a rollout at its
//! stored step and never runs a passed step again. A step whose job was
//! published but whose jid was not yet stored when the master died is
//! published again on restart: deploying the same version again leaves a
//! minion unchanged. A fleet rollback published twice would take a minion
//! one release further back; its window is the flush after publishing.
//!
//! Locking: `rollout_lock` serialises a rollout's read-modify-write (the
//! driver's transitions and people's actions); probes run outside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use halite_model::{
    BusEntry, FleetRollback, GateResult, JobRequest, NewGroup, NewRollout, Rollout, RolloutAction,
    RolloutGroup, RolloutState, RolloutStep, StepPhase,
};
use halite_proto::catalog::release::{HEALTH, MEASURE};
use halite_proto::rollout::{Gate, Measurement, Probe, RolloutPlan};
use halite_proto::time::now_ms;
use halite_proto::Jid;
use halite_proto::{Target, TargetType};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{Core, CoreError};
use crate::store::{AskedRolloutAction, AskedState, Refusal, ASKED_ACTIONS_KEPT_MS};

/// The master itself, in a rollout's history.
const MASTER: &str = "halite";

/// How often the driver looks at running rollouts.
const TICK: Duration = Duration::from_millis(200);

/// The stream entry a master not driving rollouts puts out when it asks
/// the driver to apply an action (the driver's loop wakes on it).
const ROLLOUT_ASKED: &str = "rollout/asked";

/// How long an action asked of the driving master waits to be taken: the
/// life of the drivers' lease (its holder died and another master must
/// take it) and a few of the driver's rounds.
const ASKED_ACTION_WAIT: Duration = Duration::from_millis(super::DRIVERS_LEASE_MS + 5_000);

/// How often a master waiting for an asked action reads its answer.
const ASKED_ACTION_POLL: Duration = Duration::from_millis(25);

/// The most groups (apps) one rollout releases.
const MAX_GROUPS: usize = 20;

/// More transitions than a step takes (pending, running, baking,
/// checking, passed): the bound of one round's loop over a rollout.
const TRANSITIONS_PER_STEP: usize = 8;

impl Core {
    /// Starts a rollout: the app's minions (or a narrower target's),
    /// sorted, cut into the plan's steps; refused up front when the user
    /// may not deploy the app to all of them.
    pub fn start_rollout(&self, user: &str, new: NewRollout) -> Result<Rollout, CoreError> {
        self.start_bound_rollout(user, new, None, false)
    }

    /// A rollout deploying a release request (`release_request`), or none;
    /// never from the API's body, so a rollout cannot claim a request.
    pub(crate) fn start_bound_rollout(
        &self,
        user: &str,
        new: NewRollout,
        release_request: Option<u64>,
        override_freeze: bool,
    ) -> Result<Rollout, CoreError> {
        let apps = self.apps()?;
        let spec = apps
            .iter()
            .find(|a| a.name == new.app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {:?}", new.app)))?;
        let plan = new
            .plan
            .clone()
            .or_else(|| spec.rollout.clone())
            .unwrap_or_default();
        plan.validate()
            .map_err(|e| CoreError::invalid(format!("rollout plan: {e}")))?;
        if release_request.is_some() && !new.then.is_empty() {
            return Err(CoreError::invalid(
                "a release request's rollout releases its own app only",
            ));
        }
        // Every group: its app, version, deploy function and minions. A
        // minion belongs to one group (it is released once).
        let first = NewGroup {
            app: new.app.clone(),
            version: new.version.clone(),
            target: new.target.clone(),
            module: new.module.clone(),
        };
        if new.then.len() > MAX_GROUPS - 1 {
            return Err(CoreError::invalid(format!(
                "then: at most {} groups after the first",
                MAX_GROUPS - 1
            )));
        }
        let mut groups: Vec<(RolloutGroup, Vec<String>)> = Vec::new();
        let mut taken = std::collections::HashSet::new();
        for (index, group) in std::iter::once(&first).chain(&new.then).enumerate() {
            let resolved = self
                .resolve_group(&apps, group)
                .map_err(|e| match (index, e) {
                    (0, e) => e,
                    (i, CoreError::Invalid(m)) => {
                        CoreError::Invalid(format!("then[{}]: {m}", i - 1))
                    }
                    (_, e) => e,
                })?;
            if let Some(twice) = resolved.1.iter().find(|m| !taken.insert(m.to_string())) {
                return Err(CoreError::invalid(format!(
                    "{twice} is in two groups of the rollout: release each minion once"
                )));
            }
            groups.push(resolved);
        }
        let now = now_ms();
        let mut steps = Vec::new();
        for (index, (_, minions)) in groups.iter().enumerate() {
            steps.extend(plan.steps(minions).into_iter().map(|minions| RolloutStep {
                group: index,
                minions,
                ..RolloutStep::default()
            }));
        }
        let mut rest = groups.iter().map(|(g, _)| g.clone());
        let Some(own) = rest.next() else {
            return Err(CoreError::invalid("a rollout needs an app"));
        };
        let mut rollout = Rollout {
            id: 0,
            app: own.app,
            version: own.version,
            fun: own.fun,
            user: user.to_owned(),
            reason: new.reason.clone(),
            steps,
            plan,
            current: 0,
            state: RolloutState::Running,
            bake_until: 0,
            failure: None,
            rollback: None,
            history: Vec::new(),
            created_at: now,
            release_request,
            aborting: None,
            override_freeze,
            then: rest.collect(),
        };
        // The whole fleet is checked now (grants, environments, freeze),
        // so a rollout is not refused halfway.
        // The fleet rollback too: a rollout that could not be put back
        // does not start.
        for (index, (_, minions)) in groups.iter().enumerate() {
            self.check(user, step_request(&rollout, index, minions))?;
            self.check(user, rollback_request(&rollout, index, minions))?;
        }
        let minions: Vec<String> = groups.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
        // A canary command given now runs on the minions like cmd.run
        // (one in the app's or environment's definition is the admin's,
        // like its hooks: a request's rollout carries that plan).
        let given_cmd = new
            .plan
            .as_ref()
            .and_then(|p| p.canary.as_ref()?.cmd.as_ref())
            .filter(|_| release_request.is_none());
        if given_cmd.is_some() {
            self.check_acl(user, "cmd.run", &minions).map_err(|denied| {
                CoreError::Forbidden(format!(
                    "canary.cmd is a command the minions would run: it needs a grant for cmd.run on them too ({denied})"
                ))
            })?;
        }
        let _lock = self.lock_rollouts();
        rollout.id = self.store.next_rollout_id()?;
        let sizes: Vec<String> = rollout
            .steps
            .iter()
            .map(|s| s.minions.len().to_string())
            .collect();
        rollout.note(
            now,
            user,
            format!(
                "started: {} minions in steps of {}",
                minions.len(),
                sizes.join(", ")
            ),
        );
        self.save_rollout(&rollout)?;
        Ok(rollout)
    }

    /// One group of a rollout: its app's deploy function and the
    /// accepted minions of its target (or a narrower one), sorted.
    fn resolve_group(
        &self,
        apps: &[halite_proto::app::AppSpec],
        group: &NewGroup,
    ) -> Result<(RolloutGroup, Vec<String>), CoreError> {
        let spec = apps
            .iter()
            .find(|a| a.name == group.app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {:?}", group.app)))?;
        let version_keys = ["tag", "branch", "rev", "url", "sha256", "version"];
        if let Some(key) = group
            .version
            .keys()
            .find(|k| !version_keys.contains(&k.as_str()))
        {
            return Err(CoreError::invalid(format!(
                "version: `{key}` is not one of tag, branch, rev (git) or url, sha256, version (artifacts)"
            )));
        }
        let target = match &group.target {
            Some(target) => Target::parse(TargetType::Compound, target),
            None => Target::parse(spec.tgt_type, &spec.target),
        }
        .map_err(|e| CoreError::invalid(format!("target: {e}")))?;
        let mut minions = self.presence.matching(&self.keys.accepted_ids(), &target);
        minions.sort();
        if minions.is_empty() {
            return Err(CoreError::invalid(format!(
                "no accepted minion of app {} matches the target",
                spec.name
            )));
        }
        let module = match &group.module {
            None => crate::apps::module_for(spec).to_owned(),
            Some(module) if module == crate::apps::module_for(spec) => module.clone(),
            Some(module) => {
                // Another module than the kind's: a Lua deploy module of
                // this master's (its jobs carry it to the minions).
                if !self.config.lua_modules().all()?.contains_key(module) {
                    return Err(CoreError::invalid(format!(
                        "module: {module:?} is neither {}'s own module ({}) nor a Lua module of this master",
                        spec.name,
                        crate::apps::module_for(spec)
                    )));
                }
                module.clone()
            }
        };
        let resolved = RolloutGroup {
            app: spec.name.clone(),
            version: group.version.clone(),
            fun: format!("{module}.deploy"),
        };
        Ok((resolved, minions))
    }

    /// Rollouts, newest first.
    pub fn rollouts(&self, limit: usize) -> Result<Vec<Rollout>, CoreError> {
        Ok(self.store.rollouts(limit, |_| true)?)
    }

    /// One rollout.
    pub fn rollout(&self, id: u64) -> Result<Rollout, CoreError> {
        self.store
            .rollout(id)?
            .ok_or_else(|| CoreError::NotFound(format!("no rollout {id}")))
    }

    /// A person's step: continue past a manual gate, pause, resume, or
    /// abort (released minions go back). Needs the grant to deploy the
    /// app on the rollout's minions. Applied here when this master drives
    /// rollouts; otherwise asked of the master that does, and answered
    /// once it has applied or refused it (see `store/rollouts.rs` for
    /// why one master writes rollouts). Blocks up to
    /// [`ASKED_ACTION_WAIT`] on a shared store.
    pub fn rollout_action(
        &self,
        user: &str,
        id: u64,
        action: RolloutAction,
    ) -> Result<Rollout, CoreError> {
        if self.drives() {
            self.apply_rollout_action(user, id, action)
        } else {
            self.ask_driver(user, id, action)
        }
    }

    /// Refuses a rollout action the user's grants do not allow, or one
    /// on a finished rollout.
    fn check_rollout_action(&self, user: &str, rollout: &Rollout) -> Result<(), CoreError> {
        for (group, minions) in rollout.minions_by_group() {
            self.check_acl(user, rollout.group(group).2, &minions)?;
        }
        if rollout.state.is_final() {
            return Err(CoreError::Conflict(format!(
                "rollout {} is {}: nothing more to do",
                rollout.id, rollout.state
            )));
        }
        Ok(())
    }

    /// Keeps the action for the driving master and waits for its answer
    /// (polling the store: an action is a person's click, rare).
    fn ask_driver(&self, user: &str, id: u64, action: RolloutAction) -> Result<Rollout, CoreError> {
        // What the driver would surely refuse is refused here at once.
        self.check_rollout_action(user, &self.rollout(id)?)?;
        let asked = AskedRolloutAction {
            rollout: id,
            user: user.to_owned(),
            action,
            asked_at: now_ms(),
            state: AskedState::Waiting,
        };
        let asked_id = self.store.ask_rollout_action(&asked)?;
        tracing::info!(
            rollout = id,
            ?action,
            user,
            "rollout action asked of the driving master"
        );
        // Wakes the driver now; without it, its next tick takes it.
        self.announce(BusEntry {
            id: 0,
            kind: ROLLOUT_ASKED.into(),
            at: asked.asked_at,
            jid: None,
            minion: None,
            data: serde_json::json!({ "rollout": id, "action": action, "user": user }),
        });
        let asked_until = std::time::Instant::now() + ASKED_ACTION_WAIT;
        // A driver that took it settles it in one round; this bounds the
        // wait if that driver dies in between.
        let taken_until = asked_until + ASKED_ACTION_WAIT;
        loop {
            let now = std::time::Instant::now();
            let state = self.store.asked_rollout_action(asked_id)?.map(|a| a.state);
            match state {
                Some(AskedState::Applied) => {
                    self.store.forget_rollout_action(asked_id)?;
                    return self.rollout(id);
                }
                Some(AskedState::Refused { refusal, reason }) => {
                    self.store.forget_rollout_action(asked_id)?;
                    return Err(refused(refusal, reason));
                }
                Some(AskedState::Waiting) if now >= asked_until => {
                    if self.store.withdraw_rollout_action(asked_id)? {
                        return Err(CoreError::Conflict(format!(
                            "no master drove rollouts within {} s: the action was not \
                             applied to rollout {id}; ask again",
                            ASKED_ACTION_WAIT.as_secs()
                        )));
                    }
                }
                Some(AskedState::Taken) if now >= taken_until => {
                    return Err(CoreError::Conflict(format!(
                        "the driving master took the action on rollout {id} and did not \
                         answer: see the rollout's history for whether it was applied"
                    )));
                }
                None => {
                    return Err(CoreError::Conflict(format!(
                        "the action on rollout {id} was forgotten before it was answered"
                    )));
                }
                Some(_) => {}
            }
            std::thread::sleep(ASKED_ACTION_POLL);
        }
    }

    /// Applies the actions asked on other masters, oldest first, and
    /// forgets those settled (or abandoned) long ago. The driver's, each
    /// round.
    fn settle_asked_actions(&self) {
        let asked = match self.store.asked_rollout_actions() {
            Ok(asked) => asked,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the asked rollout actions");
                return;
            }
        };
        let now = now_ms();
        for (asked_id, asked) in asked {
            let abandoned = asked.state == AskedState::Waiting
                && asked.asked_at + 2 * ASKED_ACTION_WAIT.as_millis() as u64 <= now;
            if asked.asked_at + ASKED_ACTIONS_KEPT_MS <= now || abandoned {
                if let Err(e) = self.store.forget_rollout_action(asked_id) {
                    tracing::warn!(error = %e, "cannot forget an old rollout action");
                }
                continue;
            }
            if asked.state != AskedState::Waiting {
                continue;
            }
            let mut taken = match self.store.take_rollout_action(asked_id) {
                Ok(Some(taken)) => taken,
                // Withdrawn by its master first.
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot take a rollout action");
                    continue;
                }
            };
            taken.state = match self.apply_rollout_action(&taken.user, taken.rollout, taken.action)
            {
                Ok(_) => AskedState::Applied,
                Err(e) => AskedState::Refused {
                    refusal: refusal_of(&e),
                    reason: e.to_string(),
                },
            };
            if let Err(e) = self.store.settle_rollout_action(asked_id, &taken) {
                tracing::error!(rollout = taken.rollout, error = %e, "cannot answer a rollout action");
            }
        }
    }

    /// Applies a person's action (the driving master's part).
    fn apply_rollout_action(
        &self,
        user: &str,
        id: u64,
        action: RolloutAction,
    ) -> Result<Rollout, CoreError> {
        let _lock = self.lock_rollouts();
        let mut rollout = self.rollout(id)?;
        self.check_rollout_action(user, &rollout)?;
        let now = now_ms();
        match action {
            RolloutAction::Continue => {
                let step = rollout
                    .steps
                    .get_mut(rollout.current)
                    .filter(|s| s.phase == StepPhase::Waiting)
                    .ok_or_else(|| {
                        CoreError::Conflict(format!("rollout {id} is not waiting at a gate"))
                    })?;
                step.phase = StepPhase::Passed;
                step.continued_by = Some(user.to_owned());
                let number = rollout.current + 1;
                rollout.current += 1;
                rollout.note(now, user, format!("continued after step {number}"));
            }
            RolloutAction::Pause => {
                if rollout.state != RolloutState::Running {
                    return Err(CoreError::Conflict(format!(
                        "rollout {id} is {}, not running",
                        rollout.state
                    )));
                }
                rollout.state = RolloutState::Paused;
                rollout.note(now, user, "paused");
            }
            RolloutAction::Resume => {
                if rollout.state != RolloutState::Paused {
                    return Err(CoreError::Conflict(format!(
                        "rollout {id} is {}, not paused",
                        rollout.state
                    )));
                }
                rollout.state = RolloutState::Running;
                rollout.note(now, user, "resumed");
                // Checks from before the pause may be stale: run them again.
                if let Some(step) = rollout.steps.get_mut(rollout.current) {
                    if step.phase == StepPhase::Checking {
                        step.phase = StepPhase::Baking;
                        step.gates.clear();
                        rollout.bake_until = now;
                    }
                }
            }
            RolloutAction::Abort => {
                if rollout.state == RolloutState::RollingBack {
                    return Err(CoreError::Conflict(format!(
                        "rollout {id} is already rolling back"
                    )));
                }
                let running = rollout
                    .steps
                    .get(rollout.current)
                    .is_some_and(|s| s.phase == StepPhase::Running);
                if running {
                    // Judged when its job is done; then the rollout stops.
                    rollout.aborting = Some(user.to_owned());
                    rollout.state = RolloutState::Running;
                    rollout.note(
                        now,
                        user,
                        "aborted: stops once the running step's job is done",
                    );
                } else {
                    rollout.note(now, user, "aborted");
                    self.stop_rollout(&mut rollout, format!("aborted by {user}"), true);
                }
            }
        }
        self.save_rollout(&rollout)?;
        Ok(rollout)
    }

    /// One round of the driver: every rollout not finished takes the
    /// steps it can take now. Blocking (store, job submission, probes).
    /// Answers the jobs the rollouts now wait for, each with how many
    /// returns it still lacks, so the driver's next round can start when
    /// the last one is stored rather than at the next tick.
    pub fn drive_rollouts(&self) -> HashMap<Jid, usize> {
        let mut waiting = HashMap::new();
        if !self.drives() {
            return waiting;
        }
        self.settle_asked_actions();
        let active = match self.store.active_rollouts() {
            Ok(active) => active,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the rollouts");
                return waiting;
            }
        };
        for id in active {
            if let Err(e) = self.advance_rollout(id) {
                tracing::error!(rollout = id, error = %e, "cannot advance the rollout");
            }
            let Ok(rollout) = self.rollout(id) else {
                continue;
            };
            for jid in awaited_jobs(&rollout) {
                if let Ok(view) = self.job_outcome(&jid) {
                    if !view.done {
                        waiting.insert(jid, view.missing.len());
                    }
                }
            }
        }
        waiting
    }

    /// Takes the next transition of one rollout, if it is due.
    fn advance_rollout(&self, id: u64) -> Result<(), CoreError> {
        let probes_due = {
            let _lock = self.lock_rollouts();
            let mut rollout = self.rollout(id)?;
            // As far as it goes now: a step that passed starts the next
            // one in the same round. Stored once at the end: the
            // transitions between two jobs are recomputed from the stored
            // record after a crash, and a job published is followed by no
            // other transition before the store (it is not done yet).
            let original = rollout.clone();
            let mut probes_due = false;
            // Bounded: each step takes a handful of transitions.
            for _ in 0..TRANSITIONS_PER_STEP * (rollout.steps.len() + 1) {
                let before = rollout.clone();
                probes_due = self.transition(&mut rollout);
                if rollout == before || probes_due {
                    break;
                }
            }
            if rollout != original {
                self.save_rollout(&rollout)?;
            }
            probes_due.then_some((rollout.current, rollout.plan.probes.clone()))
        };
        // Probes take time: run them without the lock, then apply the
        // result if the rollout is still where it was.
        let Some((step, probes)) = probes_due else {
            return Ok(());
        };
        let results: Vec<GateResult> = probes.iter().map(run_probe).collect();
        let _lock = self.lock_rollouts();
        let mut rollout = self.rollout(id)?;
        let still_checking = rollout.current == step
            && rollout.state == RolloutState::Running
            && rollout.steps[step].phase == StepPhase::Checking;
        if !still_checking {
            return Ok(());
        }
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| format!("{}: {}", r.gate, r.detail))
            .collect();
        rollout.steps[step].gates.extend(results);
        if failed.is_empty() {
            self.pass_step(&mut rollout);
        } else {
            let why = format!("step {} failed its gates: {}", step + 1, failed.join("; "));
            self.stop_rollout(&mut rollout, why, false);
        }
        self.save_rollout(&rollout)
    }

    /// Moves a rollout on as far as it can without waiting; answers
    /// whether the current step's probes are due (run by the caller).
    fn transition(&self, rollout: &mut Rollout) -> bool {
        let now = now_ms();
        match rollout.state {
            RolloutState::RollingBack => {
                self.settle_rollback(rollout);
                return false;
            }
            RolloutState::Running => {}
            _ => return false,
        }
        let Some(step) = rollout.steps.get(rollout.current).cloned() else {
            rollout.state = RolloutState::Succeeded;
            rollout.note(now, MASTER, "every step passed");
            return false;
        };
        let number = rollout.current + 1;
        match step.phase {
            StepPhase::Pending => {
                match self.submit(
                    &rollout.user,
                    step_request(rollout, step.group, &step.minions),
                ) {
                    Ok(submitted) => {
                        let running = &mut rollout.steps[rollout.current];
                        running.phase = StepPhase::Running;
                        running.jid = Some(submitted.jid.clone());
                        running.started_at = now;
                        rollout.note(
                            now,
                            MASTER,
                            format!(
                                "step {number}: {} to {} minion(s), job {}",
                                rollout.group(step.group).2,
                                step.minions.len(),
                                submitted.jid
                            ),
                        );
                    }
                    Err(e) => {
                        let why = format!("step {number} could not start: {e}");
                        self.stop_rollout(rollout, why, false);
                    }
                }
                false
            }
            StepPhase::Running => {
                let Some(jid) = step.jid.clone() else {
                    rollout.steps[rollout.current].phase = StepPhase::Pending;
                    return false;
                };
                let view = match self.job_outcome(&jid) {
                    Ok(view) => view,
                    Err(e) => {
                        tracing::warn!(rollout = rollout.id, %jid, error = %e, "cannot read the step's job");
                        return false;
                    }
                };
                if !view.done {
                    return false;
                }
                let (released, failed): (Vec<_>, Vec<_>) =
                    view.returned.iter().partition(|(_, success)| **success);
                let step = &mut rollout.steps[rollout.current];
                step.released = released.into_iter().map(|(id, _)| id.clone()).collect();
                step.failed = failed.into_iter().map(|(id, _)| id.clone()).collect();
                step.missing = view.missing;
                if let Some(by) = rollout.aborting.clone() {
                    self.stop_rollout(rollout, format!("aborted by {by}"), true);
                    return false;
                }
                let of = step.minions.len();
                let plan = &rollout.plan;
                let mut over = Vec::new();
                if RolloutPlan::exceeds(plan.max_fail, step.failed.len(), of) {
                    over.push(format!(
                        "{} failed ({}) over max_fail {}",
                        step.failed.len(),
                        step.failed.join(", "),
                        plan.max_fail
                    ));
                }
                if RolloutPlan::exceeds(plan.max_missing, step.missing.len(), of) {
                    over.push(format!(
                        "{} did not return ({}) over max_missing {}",
                        step.missing.len(),
                        step.missing.join(", "),
                        plan.max_missing
                    ));
                }
                if let Some(total) = plan.max_fail_total {
                    let failures = rollout.failures();
                    if RolloutPlan::exceeds(total, failures, rollout.minions()) {
                        over.push(format!(
                            "{failures} failed or missing in all over max_fail_total {total}"
                        ));
                    }
                }
                if !over.is_empty() {
                    let why = format!("step {number}: {}", over.join("; "));
                    self.stop_rollout(rollout, why, false);
                    return false;
                }
                let step = &mut rollout.steps[rollout.current];
                step.phase = StepPhase::Baking;
                step.finished_at = now;
                let released = step.released.len();
                rollout.bake_until = now + rollout.plan.bake * 1000;
                rollout.note(
                    now,
                    MASTER,
                    format!(
                        "step {number}: {released} released; baking {} s",
                        rollout.plan.bake
                    ),
                );
                false
            }
            StepPhase::Baking => {
                if now < rollout.bake_until {
                    return false;
                }
                self.start_checks(rollout);
                false
            }
            StepPhase::Checking => {
                let Some(Judged { gates, unhealthy }) = self.judge_checks(rollout) else {
                    return false;
                };
                rollout.steps[rollout.current].unhealthy = unhealthy;
                let failed: Vec<String> = gates
                    .iter()
                    .filter(|g| !g.passed)
                    .map(|g| format!("{}: {}", g.gate, g.detail))
                    .collect();
                rollout.steps[rollout.current].gates = gates;
                if !failed.is_empty() {
                    let why = format!("step {number} failed its gates: {}", failed.join("; "));
                    self.stop_rollout(rollout, why, false);
                    return false;
                }
                if !rollout.plan.probes.is_empty() {
                    return true;
                }
                self.pass_step(rollout);
                false
            }
            StepPhase::Waiting | StepPhase::Passed | StepPhase::Failed => false,
        }
    }

    /// The step has baked: its checks on the minions go out (the app's
    /// health check on the minions it released, the canary's measurement
    /// after the first step) and it is checking.
    fn start_checks(&self, rollout: &mut Rollout) {
        let now = now_ms();
        let number = rollout.current + 1;
        let released = rollout.steps[rollout.current].released.clone();
        let group = rollout.steps[rollout.current].group;
        let health_defined = match self.apps() {
            Ok(apps) => apps
                .iter()
                .any(|a| a.name == rollout.group(group).0 && a.health.is_some()),
            Err(e) => {
                // Not knowing is not a pass: the next round tries again.
                tracing::warn!(rollout = rollout.id, error = %e, "cannot read the app definitions");
                return;
            }
        };
        let mut out = Vec::new();
        if rollout.plan.health_gate && health_defined && !released.is_empty() {
            match self.submit_implied(&rollout.user, check_request(rollout, HEALTH.fun, &released))
            {
                Ok(submitted) => {
                    out.push(format!(
                        "health check on {} minion(s), job {}",
                        released.len(),
                        submitted.jid
                    ));
                    rollout.steps[rollout.current].health_jid = Some(submitted.jid);
                }
                Err(e) => {
                    let why = format!("step {number}: the health check could not start: {e}");
                    self.stop_rollout(rollout, why, false);
                    return;
                }
            }
        }
        let baseline = baseline_of(rollout);
        if let (Some(canary), false) = (&rollout.plan.canary, baseline.is_empty()) {
            let mut request = check_request(
                rollout,
                MEASURE.fun,
                &[released.as_slice(), baseline.as_slice()].concat(),
            );
            request
                .kwarg
                .insert("samples".into(), canary.samples.into());
            if let Some(cmd) = &canary.cmd {
                request
                    .kwarg
                    .insert("cmd".into(), Value::String(cmd.clone()));
            }
            match self.submit_implied(&rollout.user, request) {
                Ok(submitted) => {
                    out.push(format!(
                        "canary: {} against the baseline {}, job {}",
                        released.join(", "),
                        baseline.join(", "),
                        submitted.jid
                    ));
                    let step = &mut rollout.steps[rollout.current];
                    step.canary_jid = Some(submitted.jid);
                    step.baseline = baseline;
                }
                Err(e) => {
                    let why = format!("step {number}: the canary measurement could not start: {e}");
                    self.stop_rollout(rollout, why, false);
                    return;
                }
            }
        }
        rollout.steps[rollout.current].phase = StepPhase::Checking;
        if !out.is_empty() {
            rollout.note(
                now,
                MASTER,
                format!("step {number}: baked; {}", out.join("; ")),
            );
        }
    }

    /// The gates of the step's checks on the minions, once their jobs are
    /// done (None while one is out). Recomputed from the jobs each time,
    /// so a restarted master judges the same.
    fn judge_checks(&self, rollout: &Rollout) -> Option<Judged> {
        let step = &rollout.steps[rollout.current];
        let mut gates = Vec::new();
        let mut sick = Vec::new();
        // Whether it is done from the outcomes alone; the returns' data
        // only once it is.
        let done_view = |jid: &Jid| match self.job_outcome(jid) {
            Ok(outcome) if !outcome.done => None,
            _ => Some(self.job_view(jid)),
        };
        if let Some(jid) = &step.health_jid {
            let gate = match done_view(jid)? {
                Ok(view) => {
                    let unhealthy: Vec<(String, String)> = step
                        .released
                        .iter()
                        .filter_map(|minion| match view.returns.get(minion) {
                            Some(ret) if ret.success => None,
                            Some(ret) => Some((minion.clone(), summarize(&ret.data))),
                            None => Some((minion.clone(), "did not answer".into())),
                        })
                        .collect();
                    let failed = step.failed.len() + unhealthy.len();
                    let passed =
                        !RolloutPlan::exceeds(rollout.plan.max_fail, failed, step.minions.len());
                    let healthy = step.released.len() - unhealthy.len();
                    let mut detail = format!(
                        "{healthy} of {} healthy after the bake",
                        step.released.len()
                    );
                    if !unhealthy.is_empty() {
                        let list: Vec<String> = unhealthy
                            .iter()
                            .map(|(m, why)| format!("{m} ({why})"))
                            .collect();
                        detail.push_str(&format!("; unhealthy: {}", list.join(", ")));
                    }
                    sick = unhealthy;
                    GateResult {
                        gate: "health check".into(),
                        passed,
                        detail,
                    }
                }
                Err(e) => GateResult {
                    gate: "health check".into(),
                    passed: false,
                    detail: format!("cannot read job {jid}: {e}"),
                },
            };
            gates.push(gate);
        }
        if let Some(canary) = rollout
            .plan
            .canary
            .as_ref()
            .filter(|_| rollout.current == 0)
        {
            let gate = match &step.canary_jid {
                None => GateResult {
                    gate: "canary".into(),
                    passed: true,
                    detail: "no canary or no minion left unreleased for a baseline: not judged"
                        .into(),
                },
                Some(jid) => match done_view(jid)? {
                    Ok(view) => {
                        // A canary that does not answer (or answers no
                        // measurement) failed every run; a baseline minion
                        // that does not is left out: it cannot vouch.
                        let failed_runs = Measurement {
                            samples: canary.samples,
                            errors: canary.samples,
                            values: Vec::new(),
                        };
                        let measured_by = |minion: &String| {
                            view.returns
                                .get(minion)
                                .filter(|ret| ret.success)
                                .and_then(|ret| {
                                    serde_json::from_value::<Measurement>(ret.data.clone()).ok()
                                })
                        };
                        let canaries: Vec<Measurement> = step
                            .released
                            .iter()
                            .map(|m| measured_by(m).unwrap_or_else(|| failed_runs.clone()))
                            .collect();
                        let baseline: Vec<Measurement> =
                            step.baseline.iter().filter_map(measured_by).collect();
                        let verdict = canary.judge(&canaries, &baseline);
                        GateResult {
                            gate: "canary".into(),
                            passed: verdict.passed,
                            detail: verdict.detail,
                        }
                    }
                    Err(e) => GateResult {
                        gate: "canary".into(),
                        passed: false,
                        detail: format!("cannot read job {jid}: {e}"),
                    },
                },
            };
            gates.push(gate);
        }
        Some(Judged {
            gates,
            unhealthy: sick,
        })
    }

    /// A step passed its gates: wait for a person (manual gate, not the
    /// last step) or go on.
    fn pass_step(&self, rollout: &mut Rollout) {
        let now = now_ms();
        let number = rollout.current + 1;
        let last = rollout.current + 1 == rollout.steps.len();
        if rollout.plan.gate == Gate::Manual && !last {
            rollout.steps[rollout.current].phase = StepPhase::Waiting;
            rollout.note(
                now,
                MASTER,
                format!(
                    "step {number} passed; waiting for `master-cli rollout continue {}`",
                    rollout.id
                ),
            );
            return;
        }
        rollout.steps[rollout.current].phase = StepPhase::Passed;
        rollout.note(now, MASTER, format!("step {number} passed"));
        rollout.current += 1;
        if rollout.current == rollout.steps.len() {
            rollout.state = RolloutState::Succeeded;
            rollout.note(now, MASTER, "every step passed");
        }
    }

    /// Stops a rollout: the current step failed (or it was aborted); the
    /// minions it released go back unless the plan says otherwise.
    fn stop_rollout(&self, rollout: &mut Rollout, why: String, aborted: bool) {
        let now = now_ms();
        if let Some(step) = rollout.steps.get_mut(rollout.current) {
            if !aborted || step.phase != StepPhase::Pending {
                step.phase = StepPhase::Failed;
                step.finished_at = now;
            }
        }
        tracing::warn!(rollout = rollout.id, app = %rollout.app, reason = %why, "rollout stopped");
        // Checks still running on the step's minions stop: the rollback
        // is what happens there now.
        if let Some(step) = rollout.steps.get(rollout.current) {
            for jid in step.health_jid.iter().chain(step.canary_jid.iter()) {
                if let Err(e) = self.cancel(&rollout.user, jid) {
                    tracing::debug!(rollout = rollout.id, %jid, error = %e, "check not cancelled");
                }
            }
        }
        rollout.note(now, MASTER, why.clone());
        rollout.failure = Some(why.clone());
        let released = rollout.released();
        if released.is_empty() {
            rollout.state = if aborted {
                RolloutState::Aborted
            } else {
                RolloutState::Failed
            };
            return;
        }
        if !rollout.plan.auto_rollback && !aborted {
            rollout.state = RolloutState::Failed;
            rollout.note(
                now,
                MASTER,
                format!(
                    "auto_rollback is off: {} stay on the new release",
                    released.join(", ")
                ),
            );
            return;
        }
        let mut rollback = FleetRollback {
            reason: why,
            jid: None,
            jobs: Vec::new(),
            minions: released.clone(),
            rolled_back: Vec::new(),
            not_rolled_back: Vec::new(),
        };
        // One rollback job per app released (a rollout of several groups
        // releases several apps, each with its own module).
        for (group, minions) in rollout.released_by_group() {
            let app = rollout.group(group).0.to_owned();
            match self.submit(&rollout.user, rollback_request(rollout, group, &minions)) {
                Ok(submitted) => {
                    rollout.note(
                        now,
                        MASTER,
                        format!(
                            "rolling back {} minion(s) of {app}, job {}",
                            minions.len(),
                            submitted.jid
                        ),
                    );
                    rollback.jid.get_or_insert_with(|| submitted.jid.clone());
                    rollback.jobs.push(submitted.jid);
                }
                Err(e) => {
                    rollout.note(
                        now,
                        MASTER,
                        format!("the rollback of {app} could not start: {e}"),
                    );
                    rollback.not_rolled_back.extend(
                        minions
                            .iter()
                            .map(|m| (m.clone(), format!("no rollback job: {e}"))),
                    );
                }
            }
        }
        rollout.state = if rollback.jobs.is_empty() {
            RolloutState::Failed
        } else {
            RolloutState::RollingBack
        };
        rollout.rollback = Some(rollback);
    }

    /// When the fleet rollback's jobs are done: who is back, who is not.
    fn settle_rollback(&self, rollout: &mut Rollout) {
        let jobs = rollout
            .rollback
            .as_ref()
            .map(FleetRollback::all_jobs)
            .unwrap_or_default();
        if jobs.is_empty() {
            rollout.state = RolloutState::Failed;
            return;
        }
        let mut returns = std::collections::BTreeMap::new();
        let mut covered = std::collections::BTreeSet::new();
        for jid in &jobs {
            if self.job_outcome(jid).is_ok_and(|o| !o.done) {
                return;
            }
            match self.job_view(jid) {
                Ok(view) if view.done => {
                    covered.extend(view.job.expected);
                    returns.extend(view.returns);
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(rollout = rollout.id, %jid, error = %e, "cannot read the rollback job");
                    return;
                }
            }
        }
        let Some(rollback) = rollout.rollback.as_mut() else {
            return;
        };
        // A minion no rollback job went to (its app's could not start)
        // keeps the reason `stop_rollout` gave.
        let earlier = std::mem::take(&mut rollback.not_rolled_back);
        rollback.rolled_back.clear();
        for minion in &rollback.minions {
            if !covered.contains(minion) {
                let why = earlier
                    .iter()
                    .find(|(m, _)| m == minion)
                    .map_or_else(|| "no rollback job".to_owned(), |(_, why)| why.clone());
                rollback.not_rolled_back.push((minion.clone(), why));
                continue;
            }
            match returns.get(minion) {
                Some(ret) if ret.success => rollback.rolled_back.push(minion.clone()),
                Some(ret) => rollback
                    .not_rolled_back
                    .push((minion.clone(), summarize(&ret.data))),
                None => rollback
                    .not_rolled_back
                    .push((minion.clone(), "did not return".into())),
            }
        }
        let all_back = rollback.not_rolled_back.is_empty();
        let what = if all_back {
            format!("rolled back: {}", rollback.rolled_back.join(", "))
        } else {
            format!(
                "rolled back: {}; not rolled back: {}",
                rollback.rolled_back.join(", "),
                rollback.not_back()
            )
        };
        rollout.state = if all_back {
            RolloutState::RolledBack
        } else {
            RolloutState::Failed
        };
        rollout.note(now_ms(), MASTER, what);
    }

    /// Stores a rollout and puts it on the event stream (`rollout/progress`).
    fn save_rollout(&self, rollout: &Rollout) -> Result<(), CoreError> {
        self.store.put_rollout(rollout)?;
        let entry = BusEntry {
            id: 0,
            kind: "rollout/progress".into(),
            at: now_ms(),
            jid: None,
            minion: None,
            data: serde_json::to_value(rollout).unwrap_or(Value::Null),
        };
        self.store.publish(entry)?;
        Ok(())
    }

    fn lock_rollouts(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rollout_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a driver's refusal is kept for the asking master.
fn refusal_of(error: &CoreError) -> Refusal {
    match error {
        CoreError::NotFound(_) => Refusal::NotFound,
        CoreError::Forbidden(_) => Refusal::Forbidden,
        CoreError::Conflict(_) | CoreError::Invalid(_) => Refusal::Conflict,
        _ => Refusal::Failed,
    }
}

/// The asking master's answer for a driver's refusal.
fn refused(refusal: Refusal, reason: String) -> CoreError {
    match refusal {
        Refusal::NotFound => CoreError::NotFound(reason),
        Refusal::Forbidden => CoreError::Forbidden(reason),
        Refusal::Conflict => CoreError::Conflict(reason),
        Refusal::Failed => CoreError::Conflict(format!(
            "the driving master could not apply the action: {reason}"
        )),
    }
}

/// The deploy job of one step: its group's app and deploy function with
/// the group's version, to exactly these minions.
fn step_request(rollout: &Rollout, group: usize, minions: &[String]) -> JobRequest {
    let (app, version, fun) = rollout.group(group);
    let mut kwarg = version.clone();
    kwarg.insert("app".into(), Value::String(app.to_owned()));
    JobRequest {
        target: minions.join(","),
        tgt_type: TargetType::List,
        fun: fun.to_owned(),
        kwarg,
        timeout: rollout.plan.timeout,
        release_request: rollout.release_request,
        override_freeze: rollout.override_freeze,
        ..JobRequest::default()
    }
}

/// What a step's checks on its minions found.
struct Judged {
    gates: Vec<GateResult>,
    unhealthy: Vec<(String, String)>,
}

/// The jobs a rollout waits for where it is: its step's deploy, its
/// checks, or its fleet rollback.
fn awaited_jobs(rollout: &Rollout) -> Vec<Jid> {
    if rollout.state == RolloutState::RollingBack {
        return rollout
            .rollback
            .as_ref()
            .map(FleetRollback::all_jobs)
            .unwrap_or_default();
    }
    let Some(step) = rollout.steps.get(rollout.current) else {
        return Vec::new();
    };
    match step.phase {
        StepPhase::Running => step.jid.iter().cloned().collect(),
        StepPhase::Checking => step
            .health_jid
            .iter()
            .chain(step.canary_jid.iter())
            .cloned()
            .collect(),
        _ => Vec::new(),
    }
}

/// The fleet rollback of one group: its module's rollback (to each
/// minion's previous release: the kit keeps it, nothing is fetched), to
/// exactly the minions the rollout released there.
fn rollback_request(rollout: &Rollout, group: usize, minions: &[String]) -> JobRequest {
    let fun = rollout.group(group).2;
    let module = fun.split('.').next().unwrap_or(fun);
    app_request(rollout, group, format!("{module}.rollback"), minions)
}

/// A job of `fun` on a group's app (no version) to these minions,
/// carrying what the steps carry (the request, the freeze override, the
/// timeout).
fn app_request(rollout: &Rollout, group: usize, fun: String, minions: &[String]) -> JobRequest {
    let mut kwarg = Map::new();
    kwarg.insert(
        "app".into(),
        Value::String(rollout.group(group).0.to_owned()),
    );
    JobRequest {
        fun,
        kwarg,
        ..step_request(rollout, group, minions)
    }
}

/// A check on a step's minions (`release.health`, `release.measure`)
/// of the rollout's app; it carries the request like the deploys do.
fn check_request(rollout: &Rollout, fun: &str, minions: &[String]) -> JobRequest {
    let group = rollout.steps.get(rollout.current).map_or(0, |s| s.group);
    app_request(rollout, group, fun.to_owned(), minions)
}

/// The canary's baseline: as many minions as the first step released,
/// from those not yet released (the next steps'), when the plan has a
/// canary and this is the first step.
fn baseline_of(rollout: &Rollout) -> Vec<String> {
    if rollout.plan.canary.is_none() || rollout.current != 0 {
        return Vec::new();
    }
    let canaries = rollout.steps[0].released.len();
    rollout.steps[1..]
        .iter()
        .filter(|s| s.group == rollout.steps[0].group)
        .flat_map(|s| s.minions.iter().cloned())
        .take(canaries)
        .collect()
}

/// A return's data in a line.
fn summarize(data: &Value) -> String {
    let text = match data {
        Value::String(s) => s.clone(),
        other => other
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| other.to_string()),
    };
    text.chars().take(200).collect()
}

/// Runs one probe on the master. Blocking: called from the driver's round
/// on the blocking pool, whose runtime it blocks on for the I/O.
fn run_probe(probe: &Probe) -> GateResult {
    let timeout = Duration::from_secs(probe.timeout);
    // On the blocking pool (the driver's round): its runtime runs the I/O.
    let runtime = tokio::runtime::Handle::current();
    if let Some(url) = &probe.url {
        let gate = format!("probe {url}");
        halite_pki::install_tls_provider();
        let answer = runtime.block_on(async {
            let client = reqwest::Client::builder().timeout(timeout).build()?;
            client.get(url).send().await.map(|r| r.status().as_u16())
        });
        return match answer {
            Ok(status) => GateResult {
                gate,
                passed: status == probe.status,
                detail: format!("answered {status}, expected {}", probe.status),
            },
            Err(e) => GateResult {
                gate,
                passed: false,
                detail: format!("no answer: {e}"),
            },
        };
    }
    let gate = format!("probe {}", probe.command.join(" "));
    let Some((program, args)) = probe.command.split_first() else {
        return GateResult {
            gate,
            passed: false,
            detail: "no command".into(),
        };
    };
    let ended = runtime.block_on(async {
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.map(Some),
            Err(_) => Ok(None),
        }
    });
    match ended {
        Ok(Some(status)) => {
            let code = status.code().unwrap_or(-1);
            GateResult {
                gate,
                passed: code == probe.exit_code,
                detail: format!("exited {code}, expected {}", probe.exit_code),
            }
        }
        Ok(None) => GateResult {
            gate,
            passed: false,
            detail: format!("still running after {} s", probe.timeout),
        },
        Err(e) => GateResult {
            gate,
            passed: false,
            detail: format!("cannot run: {e}"),
        },
    }
}

/// Drives the rollouts until shutdown, one round at a time on the
/// blocking pool: every [`TICK`] (bakes ending, jobs timing out, people's
/// actions), and as soon as the last return a rollout waits for is
/// stored, so a step that is done starts the next one without waiting
/// for the tick (returns counted from the store's live stream; a count
/// that is off only makes a round early or leaves it to the tick).
pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut live = core.store.subscribe();
    let mut streaming = true;
    let mut waiting: HashMap<Jid, usize> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            entry = live.recv(), if streaming => {
                let last_awaited = match entry {
                    // Asked on another master: apply it now.
                    Ok(entry) if entry.kind == ROLLOUT_ASKED => true,
                    Ok(entry) if entry.kind == "job/return" => entry
                        .jid
                        .as_ref()
                        .and_then(|jid| waiting.get_mut(jid))
                        .is_some_and(|lacking| {
                            *lacking = lacking.saturating_sub(1);
                            *lacking == 0
                        }),
                    Ok(_) => false,
                    // Missed entries: look now.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    // The store is going away: the tick alone until then.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        streaming = false;
                        false
                    }
                };
                if !last_awaited {
                    continue;
                }
            }
        }
        let worker = core.clone();
        match tokio::task::spawn_blocking(move || worker.drive_rollouts()).await {
            Ok(now_waiting) => waiting = now_waiting,
            Err(e) => tracing::error!(error = %e, "the rollout driver failed"),
        }
    }
}
