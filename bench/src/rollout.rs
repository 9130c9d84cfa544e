//! `halite-bench rollout`: a real git_deploy app released through N swarm
//! minions in a ramp (`1,10%,50%,100%` by default), and halite's own
//! overhead per step beyond the deploys themselves.
//!
//! Set-up: the fleet of [`crate::fleet`]; a bare repository with tags v1
//! and v2; an app `shop` on `swarm-*` released under a tmpfs directory
//! per minion. Every minion gets v1 first (one plain deploy job). Then
//! each round is one rollout (`Core::start_rollout`, no bake, no probes,
//! automatic gates), to v2, then v1, and so on, so every step really
//! deploys.
//!
//! Measured from the rollout's record, the store and its live stream, in
//! the master's clock (ms): a step's **deploy** is from its job's
//! publication to its last return stored and announced on the live
//! stream (returns are flushed in batches: the announcement is when
//! anyone, the rollout driver included, can know); its **overhead** is
//! from that announcement to the next step's job being published (for
//! the last step, to the rollout being recorded as succeeded): judging
//! the step, storing the record, putting it on the stream and planning,
//! signing and storing the next job — what halite adds to the deploys.
//! The flush (`stored_at` → announced) is shown apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use halite_api::types::JobRequest;
use halite_master::core::Core;
use halite_model::{NewRollout, Rollout, RolloutState};
use halite_proto::rollout::RolloutPlan;
use halite_proto::time::now_ms;
use halite_proto::TargetType;
use tokio::sync::broadcast::error::RecvError;

use crate::fleet::{Fleet, FleetArgs};
use crate::report::{grouped, percentile, Table};

/// Options of `halite-bench rollout`.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// Number of minions.
    #[arg(long, default_value_t = 1000)]
    pub minions: usize,
    /// The ramp.
    #[arg(long, default_value = "1,10%,50%,100%")]
    pub ramp: String,
    /// Rollouts measured (alternately to v2 and back to v1).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Goal for the overhead of every step, ms.
    #[arg(long, default_value_t = 50)]
    pub goal_ms: u64,
    /// Seconds one rollout may take before the bench fails.
    #[arg(long, default_value_t = 600)]
    pub round_timeout: u64,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    pub markdown: bool,
    /// The master and the swarm.
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// One step of one measured rollout, ms.
struct StepTimes {
    minions: usize,
    deploy: f64,
    flush: f64,
    overhead: f64,
    /// From the last return's `stored_at` (the flush counted in).
    overhead_with_flush: f64,
}

/// When the last return of each job was announced on the store's live
/// stream (unix ms), followed on a thread until the store closes.
#[derive(Clone, Default)]
struct Announced(Arc<Mutex<HashMap<String, u64>>>);

impl Announced {
    fn follow(&self, core: &Core) {
        let mut live = core.store.subscribe();
        let seen = self.clone();
        std::thread::spawn(move || loop {
            match live.blocking_recv() {
                Ok(entry) if entry.kind == "job/return" => {
                    if let Some(jid) = &entry.jid {
                        seen.0
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(jid.as_str().to_owned(), now_ms());
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the announcement follower fell behind");
                }
                Err(RecvError::Closed) => return,
            }
        });
    }

    fn last(&self, jid: &str) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(jid)
            .copied()
    }
}

/// Runs `halite-bench rollout`.
pub fn run(args: RolloutArgs) -> Result<()> {
    let n = args.minions;
    if n == 0 || n > 99_999 {
        bail!("--minions must be 1 to 99999");
    }
    let ramp = RolloutPlan::parse_ramp(&args.ramp).map_err(|e| anyhow!("--{e}"))?;
    let plan = RolloutPlan {
        ramp,
        ..RolloutPlan::default()
    };
    plan.validate().map_err(|e| anyhow!("plan: {e}"))?;
    let work = tempfile::Builder::new()
        .prefix("halite-bench-rollout-")
        .tempdir()
        .context("create the repository's temp dir")?;
    let repo = halite_tests::git::Repo::create(
        work.path(),
        &work.path().join("git"),
        "shop",
        &[("v1", "one"), ("v2", "two")],
    );
    // Releases on tmpfs like the minions' own dirs: the bench is about
    // the master, not the disk.
    let srv = tempfile::Builder::new()
        .prefix("halite-bench-srv-")
        .tempdir_in(crate::swarm::default_minion_root(
            args.fleet.minion_dirs_on_disk,
        ))
        .context("create the releases' temp dir")?;
    let app = format!(
        "repo = \"{}\"\ntarget = \"swarm-*\"\npath = \"{}/{{id}}/shop\"\n",
        repo.bare.display(),
        srv.path().display()
    );
    let mut fleet = Fleet::start(&args.fleet, n, |master_dir| {
        let apps = master_dir.join("apps.d");
        std::fs::create_dir_all(&apps).context("create apps.d")?;
        std::fs::write(apps.join("shop.toml"), &app).context("write apps.d/shop.toml")
    })?;
    let core = fleet.core.clone();
    let announced = Announced::default();
    announced.follow(&core);
    let timeout = Duration::from_secs(args.round_timeout);

    let started = Instant::now();
    deploy_everywhere(&core, "v1", timeout)?;
    eprintln!(
        "v1 deployed to {} minions in {:.1} s",
        grouped(n),
        started.elapsed().as_secs_f64()
    );
    let mut rounds: Vec<Vec<StepTimes>> = Vec::new();
    let mut totals = Vec::new();
    for round in 0..args.rounds {
        fleet.check_alive()?;
        let tag = if round % 2 == 0 { "v2" } else { "v1" };
        let clock = Instant::now();
        let rollout = roll_out(&core, tag, &plan, timeout)?;
        let total = clock.elapsed();
        let steps = step_times(&core, &announced, &rollout)?;
        eprintln!(
            "rollout {} to {tag}: {:.1} s; overhead per step {} ms",
            rollout.id,
            total.as_secs_f64(),
            steps
                .iter()
                .map(|s| format!("{:.0}", s.overhead))
                .collect::<Vec<_>>()
                .join(", ")
        );
        totals.push(total.as_secs_f64());
        rounds.push(steps);
    }
    let mode = fleet.mode();
    fleet.stop();
    print_report(&args, &mode, &rounds, &totals);
    Ok(())
}

/// Deploys `tag` to every minion with one job and waits until it is done.
fn deploy_everywhere(core: &Core, tag: &str, timeout: Duration) -> Result<()> {
    let mut kwarg = serde_json::Map::new();
    kwarg.insert("app".into(), "shop".into());
    kwarg.insert("tag".into(), tag.into());
    let submitted = core
        .submit(
            halite_pki::users::ROOT,
            JobRequest {
                target: "swarm-*".into(),
                tgt_type: TargetType::Glob,
                fun: "git_deploy.deploy".into(),
                kwarg,
                ..JobRequest::default()
            },
        )
        .map_err(|e| anyhow!("deploy {tag}: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let view = core
            .job_view(&submitted.jid)
            .map_err(|e| anyhow!("read job {}: {e}", submitted.jid))?;
        if view.done {
            let failed = view.returns.values().filter(|r| !r.success).count();
            if failed > 0 || !view.missing.is_empty() {
                bail!(
                    "deploying {tag}: {failed} failed, {} did not return",
                    view.missing.len()
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("deploying {tag} took longer than {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One rollout to `tag`, until it succeeded.
fn roll_out(core: &Core, tag: &str, plan: &RolloutPlan, timeout: Duration) -> Result<Rollout> {
    let mut version = serde_json::Map::new();
    version.insert("tag".into(), tag.into());
    let rollout = core
        .start_rollout(
            halite_pki::users::ROOT,
            NewRollout {
                app: "shop".into(),
                version,
                target: None,
                plan: Some(plan.clone()),
                reason: "bench".into(),
                then: Vec::new(),
                module: None,
            },
        )
        .map_err(|e| anyhow!("start the rollout: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let now = core
            .rollout(rollout.id)
            .map_err(|e| anyhow!("read rollout {}: {e}", rollout.id))?;
        match now.state {
            RolloutState::Succeeded => return Ok(now),
            state if state.is_final() => bail!(
                "rollout {} ended {state}: {}",
                now.id,
                now.failure.unwrap_or_default()
            ),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("rollout {} took longer than {timeout:?}", now.id);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Each step's deploy time and the overhead after it.
fn step_times(core: &Core, announced: &Announced, rollout: &Rollout) -> Result<Vec<StepTimes>> {
    let succeeded_at = rollout
        .history
        .last()
        .map(|e| e.at)
        .context("a rollout without history")?;
    let mut times = Vec::new();
    for (i, step) in rollout.steps.iter().enumerate() {
        let jid = step.jid.as_ref().context("a step without a job")?;
        let returns = core.store.returns(jid).context("read a step's returns")?;
        let last_stored = returns
            .iter()
            .map(|r| r.stored_at)
            .max()
            .context("a step without returns")?;
        // The next step's job as the store has it: published after it
        // was planned, signed and stored.
        let next = match rollout.steps.get(i + 1) {
            Some(next) => {
                let jid = next.jid.as_ref().context("a step without a job")?;
                core.store
                    .job(jid)
                    .context("read a step's job")?
                    .context("a step's job is not stored")?
                    .record
                    .issued_at
            }
            None => succeeded_at,
        };
        let last_announced = announced
            .last(jid.as_str())
            .context("a step's returns were not announced")?;
        let issued = core
            .store
            .job(jid)
            .context("read a step's job")?
            .context("a step's job is not stored")?
            .record
            .issued_at;
        times.push(StepTimes {
            minions: step.minions.len(),
            deploy: last_announced.saturating_sub(issued) as f64,
            flush: last_announced.saturating_sub(last_stored) as f64,
            overhead: next.saturating_sub(last_announced) as f64,
            overhead_with_flush: next.saturating_sub(last_stored) as f64,
        });
    }
    Ok(times)
}

fn print_report(args: &RolloutArgs, mode: &str, rounds: &[Vec<StepTimes>], totals: &[f64]) {
    println!(
        "rollout: {} minions ({mode}), ramp {}, {} rollouts of a real git_deploy app",
        grouped(args.minions),
        args.ramp,
        rounds.len()
    );
    let steps = rounds.first().map_or(0, Vec::len);
    let mut table = Table::new(&[
        "step",
        "minions",
        "deploy p50 (ms)",
        "of which flush p50 (ms)",
        "overhead p50 (ms)",
        "overhead max (ms)",
        "with the flush p50 (ms)",
        "with the flush max (ms)",
    ]);
    let mut worst: f64 = 0.0;
    for i in 0..steps {
        let of = |pick: fn(&StepTimes) -> f64| -> Vec<f64> {
            rounds.iter().filter_map(|r| r.get(i)).map(pick).collect()
        };
        let overheads = of(|s| s.overhead);
        let max = overheads.iter().copied().fold(0.0, f64::max);
        worst = worst.max(max);
        let with_flush = of(|s| s.overhead_with_flush);
        table.row(vec![
            (i + 1).to_string(),
            rounds[0][i].minions.to_string(),
            format!("{:.0}", percentile(&of(|s| s.deploy), 50.0)),
            format!("{:.0}", percentile(&of(|s| s.flush), 50.0)),
            format!("{:.0}", percentile(&overheads, 50.0)),
            format!("{max:.0}"),
            format!("{:.0}", percentile(&with_flush, 50.0)),
            format!("{:.0}", with_flush.iter().copied().fold(0.0, f64::max)),
        ]);
    }
    print!("{}", table.render(args.markdown));
    println!(
        "whole rollout p50 {:.1} s; worst overhead of a step {worst:.0} ms against the goal of {} ms: {}",
        percentile(totals, 50.0),
        args.goal_ms,
        if worst < args.goal_ms as f64 {
            "met"
        } else {
            "NOT met"
        }
    );
}
