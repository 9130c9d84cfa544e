//! `master-cli`: a client of the master's HTTP API.
//!
//! It never opens the store and links none of the master: it reads the
//! location keys of the master's config
//! ([`halite_proto::config::MasterLocation`]) to find the
//! API and the root-only token the master wrote into its `data_dir`, then
//! speaks `/v1`, following a job over its event stream (SSE). Exit codes:
//! 0 success, 1 a job failed or a minion did not return (or the request
//! failed), 2 usage errors.

mod client;
mod follow;
mod output;
mod words;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use halite_model::{
    EventRecord, JobRequest, JobView, KeysView, MinionView, ReturnRecord, Submitted,
};
use halite_proto::message::EventBody;
use halite_proto::message::KeyStatus;

use client::Client;

/// Where `halite-master` and `master-cli` look without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/halite/master.toml";

/// Command-line client of a halite master.
#[derive(Parser)]
#[command(name = "master-cli", version)]
struct Cli {
    /// The master's configuration file (to find its API and token).
    #[arg(long, short, global = true, env = "HALITE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Act as this API user (the password from HALITE_PASSWORD, else
    /// stdin, else a prompt) instead of root: what their grants allow,
    /// and release requests made and approved in their name.
    #[arg(long, global = true, env = "HALITE_USER")]
    user: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a function on minions: `run target=web* test.ping`,
    /// `run 'target=G@os:Linux and web*' tgt_type=compound cmd.run "uname -a"`.
    Run {
        /// `target=EXPR`, optional `tgt_type=T`, the function, then its
        /// arguments (`KEY=VALUE` words are keyword arguments). Put
        /// arguments that start with `-` after `--`.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
        /// Seconds each minion may run the function; also how long to wait.
        #[arg(long)]
        timeout: Option<u64>,
        /// Print the job id alone (`J=$(master-cli run ... --async)`) and
        /// exit without waiting.
        #[arg(long = "async")]
        run_async: bool,
        /// A keyword argument sealed for the minions (`--secret token=...`);
        /// `KEY=-` reads the value from stdin. Never stored or logged in clear.
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// Hide the output lines minions send while they run (shown by
        /// default: `halite.progress`, deploy steps, hooks).
        #[arg(long, conflicts_with = "progress")]
        no_progress: bool,
        /// Also show output lines live for `cmd.*`, whose return is that
        /// output (other functions show them by default).
        #[arg(long)]
        progress: bool,
        /// Refuse to start when a targeted minion is down (lists which).
        #[arg(long)]
        require_up: bool,
        /// Run on this many minions at a time (`10`) or this share (`25%`).
        #[arg(long, short = 'b')]
        batch: Option<String>,
        /// Release inside a freeze window (needs the @freeze_override
        /// grant; audited).
        #[arg(long)]
        override_freeze: bool,
    },
    /// Past jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Accepted minions with status, last seen, latency, version and os.
    Minions {
        /// Show recent up/down transitions instead.
        #[arg(long, conflicts_with = "checks")]
        events: bool,
        /// Show periodic connectivity-check results instead.
        #[arg(long)]
        checks: bool,
        /// With --checks: only the failed checks.
        #[arg(long, requires = "checks")]
        failed: bool,
        /// With --checks: how many hours back (default a week).
        #[arg(long, requires = "checks", default_value_t = 168)]
        since: u64,
    },
    /// Minion keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// App definitions in the master's apps_dir.
    Apps,
    /// Send the master's Lua modules to minions (`sync target=web*`;
    /// all minions without a target); modules the master no longer has
    /// are removed from them.
    Sync {
        /// `target=EXPR` and optional `tgt_type=T`.
        words: Vec<String>,
        /// Seconds to wait for the minions.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Lua modules on minions.
    Modules {
        #[command(subcommand)]
        command: ModulesCommand,
    },
    /// API users (in the master's users_file; no running master needed).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Release requests: ask for a version in an app's environment, have
    /// it approved, deploy it (`requests new shop production tag=v3
    /// --reason "fixes checkout"`).
    Requests {
        #[command(subcommand)]
        command: RequestsCommand,
    },
    /// Jobs run on a cron schedule (`schedules add nightly "0 2 * * *"
    /// target=stg-web* git_deploy.deploy app=shop branch=main`).
    Schedules {
        #[command(subcommand)]
        command: SchedulesCommand,
    },
    /// Apps' webhooks and polling (`[trigger]`): `triggers list`,
    /// `triggers pause APP`, `triggers resume APP`.
    Triggers {
        #[command(subcommand)]
        command: TriggersCommand,
    },
    /// Progressive delivery: `rollout start shop tag=v3 --ramp 1,10%,50%,100%`,
    /// then `rollout show|continue|pause|resume|abort ID`.
    Rollout {
        #[command(subcommand)]
        command: Box<RolloutCommand>,
    },
    /// An app's tags (newest first) and branches, from its repository.
    Versions {
        /// App name.
        app: String,
    },
    /// What releasing a version to an environment would change against
    /// what is live there: `changes shop production tag=v3`.
    Changes {
        /// App name.
        app: String,
        /// Environment.
        env: String,
        /// `tag=V`, `branch=B` or `rev=R`.
        word: String,
    },
    /// What is live where for an app (`releases shop`), or its deploy
    /// history with `--history`.
    Releases {
        /// App name.
        app: String,
        /// Every deploy and rollback, newest first.
        #[arg(long)]
        history: bool,
        /// How many history records.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum RequestsCommand {
    /// Ask for a version: `tag=v3`, `branch=main` or `rev=1a2b3c` (git
    /// apps); `url=... sha256=... version=...` (artifact apps).
    New {
        /// App name.
        app: String,
        /// Environment.
        env: String,
        /// `KEY=VALUE` words naming the version.
        #[arg(required = true)]
        words: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Ask to roll an environment back (`to=RELEASE`, else the previous).
    Rollback {
        /// App name.
        app: String,
        /// Environment.
        env: String,
        /// Optional `to=RELEASE`.
        words: Vec<String>,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Requests, newest first.
    List {
        /// Only this app's.
        #[arg(long)]
        app: Option<String>,
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One request and its timeline.
    Show {
        /// Request number.
        id: u64,
    },
    /// Approve (an approver of the environment, not the requester).
    Approve {
        /// Request number.
        id: u64,
        /// Why, optionally.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse, with a reason.
    Reject {
        /// Request number.
        id: u64,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Send back for changes, with a reason.
    Return {
        /// Request number.
        id: u64,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Submit a returned request again (the requester).
    Resubmit {
        /// Request number.
        id: u64,
    },
    /// Take a request back (the requester).
    Withdraw {
        /// Request number.
        id: u64,
    },
    /// Deploy an approved request with exactly its approved revision.
    Deploy {
        /// Request number.
        id: u64,
        /// Deploy inside a freeze window (needs the @freeze_override
        /// grant; audited).
        #[arg(long)]
        override_freeze: bool,
    },
    /// What a request changes against what is live in its environment:
    /// commits and files.
    Changes {
        /// Request number.
        id: u64,
    },
}

#[derive(Subcommand)]
enum TriggersCommand {
    /// Every app's trigger and whether it is paused.
    List,
    /// Ignore the app's webhooks and polled tags until resumed.
    Pause {
        /// App name.
        app: String,
    },
    /// Act on the app's webhooks and new tags again.
    Resume {
        /// App name.
        app: String,
    },
}

/// The canary judgment of `rollout start`: the first step's minions
/// against as many not yet released.
#[derive(clap::Args)]
struct CanaryOptions {
    /// Judge the first step as a canary: each of its minions and of the
    /// baseline times the app's health check this many times.
    #[arg(long, value_name = "SAMPLES")]
    canary: Option<u32>,
    /// Measure with this shell command instead (the last number it
    /// prints); needs a grant for cmd.run.
    #[arg(long, value_name = "CMD", requires = "canary")]
    canary_cmd: Option<String>,
    /// How much worse than the baseline's median the canary's may be,
    /// in percent (20).
    #[arg(long, value_name = "PERCENT", requires = "canary")]
    canary_margin: Option<f64>,
    /// A difference of medians this small never fails (0).
    #[arg(long, value_name = "NUMBER", requires = "canary")]
    canary_min_difference: Option<f64>,
    /// Errors the canary may have beyond the baseline's (0).
    #[arg(long, value_name = "N", requires = "canary")]
    canary_max_errors: Option<u32>,
    /// Higher numbers are better (throughput), not lower (latency).
    #[arg(long, requires = "canary")]
    canary_higher_is_better: bool,
}

impl CanaryOptions {
    fn plan(self) -> Option<halite_proto::rollout::Canary> {
        use halite_proto::rollout::{Better, Canary};
        let samples = self.canary?;
        Some(Canary {
            samples,
            cmd: self.canary_cmd,
            margin: self.canary_margin.unwrap_or(20.0),
            min_difference: self.canary_min_difference.unwrap_or(0.0),
            max_errors: self.canary_max_errors.unwrap_or(0),
            better: if self.canary_higher_is_better {
                Better::Higher
            } else {
                Better::Lower
            },
        })
    }
}

// Parsed once per run: the size of `Start` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum RolloutCommand {
    /// Start a rollout of an app: `start shop tag=v3 [target=EXPR]`; the
    /// plan from the options, else the app's `[rollout]`, else all at once.
    Start {
        /// App name.
        app: String,
        /// The version (`tag=V`, `branch=B` or `rev=R`) and optionally a
        /// narrower `target=EXPR`.
        words: Vec<String>,
        /// Where each step ends: `1,10%,50%,100%`.
        #[arg(long)]
        ramp: Option<String>,
        /// Seconds each step bakes before its gates.
        #[arg(long)]
        bake: Option<u64>,
        /// Failed minions a step tolerates (`0`, `2`, `10%`).
        #[arg(long)]
        max_fail: Option<String>,
        /// Minions of a step that may not return in time (`0`, `1`, `5%`).
        #[arg(long)]
        max_missing: Option<String>,
        /// Failed and missing minions the whole rollout tolerates.
        #[arg(long)]
        max_fail_total: Option<String>,
        /// Seconds a step's minions have to return.
        #[arg(long)]
        timeout: Option<u64>,
        /// Wait for `rollout continue` after each step but the last.
        #[arg(long)]
        manual: bool,
        /// After each step, the master GETs this URL and expects 200.
        #[arg(long)]
        probe_url: Vec<String>,
        /// Leave released minions on the new release when a step fails.
        #[arg(long)]
        no_rollback: bool,
        /// Do not run the app's health check again after each bake.
        #[arg(long)]
        no_health_gate: bool,
        /// Then another app, released after the ones before it with the
        /// same plan: `--then 'store version=2 url=https://… sha256=…'`,
        /// optionally `module=M` (a Lua deploy module) and, last,
        /// `target=EXPR` (spaces allowed). Repeatable; in this order.
        #[arg(long, value_name = "'APP KEY=V ...'")]
        then: Vec<String>,
        #[command(flatten)]
        canary: CanaryOptions,
        /// Why (history and audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Rollouts, newest first.
    List,
    /// One rollout: its steps, gates, rollback and history.
    Show {
        /// Rollout number.
        id: u64,
    },
    /// Let a rollout waiting at a manual gate go on.
    Continue {
        /// Rollout number.
        id: u64,
    },
    /// Start no further step (a running step finishes).
    Pause {
        /// Rollout number.
        id: u64,
    },
    /// Go on after a pause.
    Resume {
        /// Rollout number.
        id: u64,
    },
    /// Stop for good; every minion it released goes back.
    Abort {
        /// Rollout number.
        id: u64,
    },
}

#[derive(Subcommand)]
enum SchedulesCommand {
    /// Every schedule: when it runs next, its last run and job.
    List,
    /// One schedule and its latest runs.
    Show {
        /// Schedule name.
        name: String,
    },
    /// Make a schedule: `add NAME "CRON" target=EXPR FUNCTION [ARGS...]`
    /// (five cron fields, or six with seconds first; UTC).
    Add {
        /// Schedule name.
        name: String,
        /// Cron expression.
        cron: String,
        /// `target=EXPR`, optional `tgt_type=T`, the function, its arguments.
        #[arg(required = true, num_args = 1..)]
        words: Vec<String>,
        /// Seconds each run may take on each minion.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Skip runs until resumed.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Run again from the next time due.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Remove a schedule made through the API.
    Remove {
        /// Schedule name.
        name: String,
    },
}

#[derive(Subcommand)]
enum ModulesCommand {
    /// Which version of each Lua module every minion has, against the
    /// master's (`current`, `outdated`, `missing`, `refused`).
    List {
        /// `target=EXPR` and optional `tgt_type=T` (all minions without).
        words: Vec<String>,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user; the password is read from stdin when it is not a
    /// terminal (`echo pw | master-cli users add alice`), else prompted.
    Add {
        /// User name.
        name: String,
    },
    /// Set a user's password (read like `add`); their tokens stop working.
    Passwd {
        /// User name.
        name: String,
    },
    /// Remove a user (their tokens stop working at once).
    Delete {
        /// User name.
        name: String,
    },
    /// End every token a user holds now (they log in again).
    Revoke {
        /// User name.
        name: String,
    },
    /// User names.
    List,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only this function (`*` globs: `git_deploy.*`).
        #[arg(long)]
        fun: Option<String>,
        /// Only jobs submitted by this user.
        #[arg(long)]
        user: Option<String>,
        /// Only `success`, `failed` or `running` jobs.
        #[arg(long)]
        result: Option<String>,
        /// Only jobs this minion returned for.
        #[arg(long)]
        minion: Option<String>,
    },
    /// Stop a running job on the minions that have not returned.
    Cancel {
        /// Job id.
        jid: String,
    },
    /// One job with every return.
    Show {
        /// Job id.
        jid: String,
        /// Also the job's stored events (stages and output lines), in order.
        #[arg(long)]
        events: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Keys by state.
    List,
    /// Accept a pending key (or `--all`).
    Accept {
        /// Minion id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Accept every pending key.
        #[arg(long)]
        all: bool,
    },
    /// Reject a pending or accepted key.
    Reject {
        /// Minion id.
        id: String,
    },
    /// Delete a key in any state.
    Delete {
        /// Minion id.
        id: String,
    },
    /// Fingerprints of the master key and every minion key.
    Fingerprint,
}

/// Entry point of the `master-cli` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("master-cli: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("master-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Users { command } = &cli.command {
        return users_noted(&cli.config, command, cli.json).await;
    }
    let client = match &cli.user {
        Some(user) => Client::login(&cli.config, user, &login_password(user)?).await?,
        None => Client::from_config(&cli.config)?,
    };
    let json = cli.json;
    match cli.command {
        Command::Users { .. } => unreachable_usage().map(|_| ExitCode::from(2)),
        Command::Sync { words, timeout } => {
            let request = match target_request(&words, halite_proto::message::SYNC_MODULES, timeout)
            {
                Ok(request) => request,
                Err(e) => {
                    eprintln!("master-cli sync: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            run(
                &client,
                request,
                false,
                Report::Live {
                    progress: Lines::Default,
                },
                json,
            )
            .await
        }
        Command::Modules {
            command: ModulesCommand::List { words },
        } => {
            let request = match target_request(&words, halite_proto::message::LIST_MODULES, None) {
                Ok(request) => request,
                Err(e) => {
                    eprintln!("master-cli modules list: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            run(&client, request, false, Report::ModuleVersions, json).await
        }
        Command::Run {
            words,
            timeout,
            run_async,
            secrets,
            no_progress,
            progress,
            require_up,
            batch,
            override_freeze,
        } => {
            let request = match words::parse_run(&words, timeout, &secrets) {
                Ok(request) => JobRequest {
                    require_up,
                    batch,
                    override_freeze,
                    ..request
                },
                Err(e) => {
                    eprintln!("master-cli run: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let report = Report::Live {
                progress: match (progress, no_progress) {
                    (true, _) => Lines::Shown,
                    (_, true) => Lines::Hidden,
                    _ => Lines::Default,
                },
            };
            run(&client, request, run_async, report, json).await
        }
        Command::Jobs { command } => jobs(&client, command, json).await,
        Command::Minions {
            events,
            checks,
            failed,
            since,
        } => minions(&client, events, checks.then_some((failed, since)), json).await,
        Command::Keys { command } => keys(&client, command, json).await,
        Command::Requests { command } => requests(&client, command, json).await,
        Command::Schedules { command } => schedules(&client, command, json).await,
        Command::Rollout { command } => rollout(&client, *command, json).await,
        Command::Triggers { command } => {
            use halite_model::TriggerState;
            let states: Vec<TriggerState> = match command {
                TriggersCommand::List => client.get("/v1/triggers").await?,
                TriggersCommand::Pause { app } => vec![
                    client
                        .post(
                            &format!("/v1/apps/{}/trigger/pause", path_segment(&app)),
                            &serde_json::json!({}),
                        )
                        .await?,
                ],
                TriggersCommand::Resume { app } => vec![
                    client
                        .post(
                            &format!("/v1/apps/{}/trigger/resume", path_segment(&app)),
                            &serde_json::json!({}),
                        )
                        .await?,
                ],
            };
            output::triggers(&states, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions { app } => {
            let versions: Vec<serde_json::Value> = client
                .get(&format!("/v1/apps/{}/versions", path_segment(&app)))
                .await?;
            output::versions(&versions, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Changes { app, env, word } => {
            let Some((key @ ("tag" | "branch" | "rev"), value)) =
                halite_proto::words::keyword(&word)
            else {
                eprintln!("master-cli changes: name the version as tag=V, branch=B or rev=R");
                return Ok(ExitCode::from(2));
            };
            let changes: serde_json::Value = client
                .get(&format!(
                    "/v1/apps/{}/changes?env={}&{key}={}",
                    path_segment(&app),
                    path_segment(&env),
                    path_segment(value)
                ))
                .await?;
            output::changes(&changes, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apps => {
            let apps: Vec<halite_proto::app::AppSpec> = client.get("/v1/apps").await?;
            output::apps(&apps, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Releases {
            app,
            history,
            limit,
        } => {
            let releases: halite_model::AppReleases = client
                .get(&format!(
                    "/v1/apps/{}/releases?limit={limit}",
                    path_segment(&app)
                ))
                .await?;
            output::releases(&releases, history, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `jobs list|show|cancel`.
async fn jobs(client: &Client, command: JobsCommand, json: bool) -> anyhow::Result<ExitCode> {
    match command {
        JobsCommand::Cancel { jid } => {
            let jid = halite_proto::Jid::parse(&jid)?;
            let answer: serde_json::Value = client
                .post(&format!("/v1/jobs/{jid}/cancel"), &serde_json::json!({}))
                .await?;
            if json {
                output::print_json(&answer)?;
            } else {
                let minions: Vec<&str> = answer["minions"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                output::line(&format!(
                    "Cancelling job {jid} on {} (kill job {}).",
                    minions.join(", "),
                    answer["kill_jid"].as_str().unwrap_or_default()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::List {
            limit,
            fun,
            user,
            result,
            minion,
        } => {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.clamp(1, 1000).to_string());
            for (key, value) in [
                ("fun", fun),
                ("user", user),
                ("result", result),
                ("minion", minion),
            ] {
                if let Some(value) = value {
                    query.append_pair(key, &value);
                }
            }
            let page: halite_model::JobPage =
                client.get(&format!("/v1/jobs?{}", query.finish())).await?;
            output::jobs(&page.jobs, json)?;
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { jid, events } => {
            let jid = halite_proto::Jid::parse(&jid)?;
            let view: JobView = client.get(&format!("/v1/jobs/{jid}")).await?;
            if events {
                let events: Vec<halite_model::EventRecord> =
                    client.get(&format!("/v1/jobs/{jid}/events")).await?;
                if json {
                    output::print_json(&serde_json::json!({ "job": view, "events": events }))?;
                    return Ok(output::exit_code(&view));
                }
                for event in &events {
                    output::event(event);
                }
            }
            output::job(&view, json)?;
            Ok(output::exit_code(&view))
        }
    }
}

/// `minions`, `minions --events`, `minions --checks [--failed] [--since H]`
/// (`checks` carries `failed` and `since`).
async fn minions(
    client: &Client,
    events: bool,
    checks: Option<(bool, u64)>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if events {
        let events: Vec<halite_model::PresenceEvent> = client.get("/v1/presence?limit=200").await?;
        output::presence(&events, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((failed, since)) = checks {
        let since_ms = halite_proto::time::now_ms().saturating_sub(since.saturating_mul(3_600_000));
        let checks: Vec<halite_model::CheckRecord> = client
            .get(&format!(
                "/v1/checks?since={since_ms}&failed={failed}&limit=100000"
            ))
            .await?;
        output::checks(&checks, since, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let minions: Vec<MinionView> = client.get("/v1/minions").await?;
    output::minions(&minions, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `users ...`, then a note in the master's audit log when it runs.
async fn users_noted(
    config: &std::path::Path,
    command: &UsersCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let code = users(config, command, json)?;
    if let Some(detail) = users_change(command) {
        // The edit is done; the master's audit log hears of it if it runs.
        let noted = match Client::from_config(config) {
            Ok(client) => client
                .post::<_, serde_json::Value>("/v1/audit", &serde_json::json!({ "detail": detail }))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = noted {
            eprintln!("master-cli: note: not in the master's audit log ({e:#})");
        }
    }
    Ok(code)
}

/// Whether [`run`] shows the output lines minions send while they run.
#[derive(Clone, Copy)]
enum Lines {
    /// Shown, except for functions whose return is that output (`cmd.*`).
    Default,
    /// `--progress`: always shown.
    Shown,
    /// `--no-progress`: never shown.
    Hidden,
}

/// How [`run`] shows a job (without `--json`).
#[derive(Clone, Copy)]
enum Report {
    /// Events and each minion's return as they come, then a summary,
    /// with output lines as `progress` says.
    Live { progress: Lines },
    /// Nothing while it runs, then each minion's Lua module versions.
    ModuleVersions,
}

async fn run(
    client: &Client,
    request: JobRequest,
    run_async: bool,
    report: Report,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let request_fun = request.fun.clone();
    let submitted: Submitted = client.post("/v1/jobs", &request).await?;
    if run_async {
        if json {
            output::print_json(
                &serde_json::json!({ "jid": submitted.jid, "minions": submitted.minions }),
            )?;
        } else {
            output::line(submitted.jid.as_str());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if submitted.minions.is_empty() {
        let view: JobView = client.get(&format!("/v1/jobs/{}", submitted.jid)).await?;
        if json {
            output::job(&view, true)?;
        } else {
            eprintln!(
                "No minion matched the target {:?}: nothing was sent (the request is recorded as job {}).",
                view.job.target, submitted.jid
            );
            // The usual first-hour cause: keys still waiting for acceptance.
            if let Ok(keys) = client.get::<KeysView>("/v1/keys").await {
                let pending: Vec<&str> = keys
                    .keys
                    .iter()
                    .filter(|k| k.status == KeyStatus::Pending)
                    .map(|k| k.id.as_str())
                    .collect();
                if !pending.is_empty() {
                    eprintln!(
                        "{} waiting to be accepted ({}): master-cli keys accept --all, or master-cli keys accept ID",
                        output::count(pending.len(), "key is", "keys are"),
                        pending.join(", ")
                    );
                }
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    // Stages always show live; output lines too, unless the function's
    // return is that output (`cmd.*`: then with --progress), or
    // --no-progress.
    let (live, lines) = match report {
        Report::Live { progress } => (
            !json,
            match progress {
                Lines::Shown => true,
                Lines::Hidden => false,
                Lines::Default => !halite_proto::catalog::returns_its_output(&request_fun),
            },
        ),
        Report::ModuleVersions => (false, false),
    };
    let mut shown = std::collections::BTreeSet::new();
    follow::job(client, submitted.jid.as_str(), |entry| {
        if !live {
            return;
        }
        match entry.kind.as_str() {
            "job/event" => {
                if let Ok(event) = serde_json::from_value::<EventRecord>(entry.data.clone()) {
                    if lines || !matches!(event.body, EventBody::Progress { .. }) {
                        output::event(&event);
                    }
                }
            }
            "job/return" => {
                if let Ok(ret) = serde_json::from_value::<ReturnRecord>(entry.data.clone()) {
                    if shown.insert(ret.id.clone()) {
                        output::one_return(&ret);
                    }
                }
            }
            _ => {}
        }
    })
    .await?;
    let view: JobView = client.get(&format!("/v1/jobs/{}", submitted.jid)).await?;
    if live {
        // The stream can end (every return stored) before the last
        // returns' entries reach it: the stored job has them all.
        for ret in view.returns.values().filter(|r| !shown.contains(&r.id)) {
            output::one_return(ret);
        }
    }
    match (json, report) {
        (true, _) => output::job(&view, true)?,
        (false, Report::Live { .. }) => output::summary(&view),
        (false, Report::ModuleVersions) => output::module_versions(&view),
    }
    Ok(output::exit_code(&view))
}

async fn keys(client: &Client, command: KeysCommand, json: bool) -> anyhow::Result<ExitCode> {
    let path = match command {
        KeysCommand::List | KeysCommand::Fingerprint => {
            let view: KeysView = client.get("/v1/keys").await?;
            if json {
                output::print_json(&view)?;
            } else if matches!(command, KeysCommand::List) {
                output::keys(&view, false);
            } else {
                output::keys(&view, true);
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeysCommand::Accept { all: true, .. } => "/v1/keys/_all/accept".to_owned(),
        KeysCommand::Accept { id: Some(id), .. } => format!("/v1/keys/{}/accept", valid_id(&id)?),
        KeysCommand::Accept {
            id: None,
            all: false,
        } => unreachable_usage()?,
        KeysCommand::Reject { id } => format!("/v1/keys/{}/reject", valid_id(&id)?),
        KeysCommand::Delete { id } => {
            let changed: serde_json::Value = client
                .delete(&format!("/v1/keys/{}", valid_id(&id)?))
                .await?;
            return report_keys("Deleted", &changed, json);
        }
    };
    let changed: serde_json::Value = client.post(&path, &serde_json::json!({})).await?;
    let verb = if path.ends_with("/reject") {
        "Rejected"
    } else {
        "Accepted"
    };
    report_keys(verb, &changed, json)
}

/// A job of `fun` on the target the words give (`target=EXPR`,
/// `tgt_type=T`), all minions when they give none.
fn target_request(words: &[String], fun: &str, timeout: Option<u64>) -> Result<JobRequest, String> {
    let mut all: Vec<String> = words.to_vec();
    if !all.iter().any(|w| w.starts_with("target=")) {
        all.insert(0, "target=*".to_owned());
    }
    if let Some(stray) = all
        .iter()
        .find(|w| !w.starts_with("target=") && !w.starts_with("tgt_type="))
    {
        return Err(format!(
            "unexpected {stray:?}: give target=EXPR and tgt_type=T only"
        ));
    }
    all.push(fun.to_owned());
    words::parse_run(&all, timeout, &[])
}

/// What a users command changed, for the audit log (`None` for `list`).
fn users_change(command: &UsersCommand) -> Option<String> {
    match command {
        UsersCommand::Add { name } => Some(format!("users add {name}")),
        UsersCommand::Passwd { name } => Some(format!("users passwd {name}")),
        UsersCommand::Delete { name } => Some(format!("users delete {name}")),
        UsersCommand::Revoke { name } => Some(format!("users revoke {name}")),
        UsersCommand::List => None,
    }
}

/// `users add|passwd|delete|revoke|list`: edits the users file directly
/// (it is the master host's file; the master reads it again when it
/// changes, so tokens of a changed, deleted or revoked user die at once).
fn users(config: &std::path::Path, command: &UsersCommand, json: bool) -> anyhow::Result<ExitCode> {
    let location = client::location(config)?;
    let users = halite_pki::users::Users::new(location.users_file);
    match command {
        UsersCommand::List => {
            let names = users.names()?;
            if json {
                output::print_json(&names)?;
            } else {
                for name in names {
                    output::line(&name);
                }
            }
        }
        UsersCommand::Add { name } => {
            halite_pki::users::validate_name(name)?;
            users.add(name, &read_password(name)?)?;
            output::line(&format!("Added user {name}."));
        }
        UsersCommand::Passwd { name } => {
            halite_pki::users::validate_name(name)?;
            users.passwd(name, &read_password(name)?)?;
            output::line(&format!("Changed the password of {name}."));
        }
        UsersCommand::Delete { name } => {
            users.delete(name)?;
            output::line(&format!("Deleted user {name}."));
        }
        UsersCommand::Revoke { name } => {
            users.revoke(name)?;
            output::line(&format!("Ended every token of {name}."));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The password: stdin's first line when stdin is not a terminal (for
/// scripts), else typed twice at a prompt without echo.
fn read_password(name: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!password.is_empty(), "no password on stdin");
        return Ok(password);
    }
    let first = rpassword::prompt_password(format!("Password for {name}: "))?;
    let second = rpassword::prompt_password("Again: ")?;
    anyhow::ensure!(first == second, "the passwords differ; nothing changed");
    Ok(first)
}

/// The password `--user` logs in with: HALITE_PASSWORD, else stdin's
/// first line when it is not a terminal, else a prompt.
fn login_password(user: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if let Ok(password) = std::env::var("HALITE_PASSWORD") {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!password.is_empty(), "no password for {user} on stdin");
        return Ok(password);
    }
    Ok(rpassword::prompt_password(format!(
        "Password for {user}: "
    ))?)
}

/// `master-cli requests ...`.
async fn requests(
    client: &Client,
    command: RequestsCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use halite_model::{ReleaseRequest, RequestKind};
    let version = |words: &[String]| -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        words
            .iter()
            .map(|w| {
                halite_proto::words::keyword(w)
                    .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                    .ok_or_else(|| anyhow::anyhow!("{w:?} is not KEY=VALUE (tag=v3, to=...)"))
            })
            .collect()
    };
    let (path, step) = match command {
        RequestsCommand::New {
            app,
            env,
            words,
            reason,
        } => {
            return new_request(
                client,
                RequestKind::Deploy,
                app,
                env,
                version(&words)?,
                reason,
                json,
            )
            .await;
        }
        RequestsCommand::Rollback {
            app,
            env,
            words,
            reason,
        } => {
            return new_request(
                client,
                RequestKind::Rollback,
                app,
                env,
                version(&words)?,
                reason,
                json,
            )
            .await;
        }
        RequestsCommand::List { app, env, limit } => {
            let mut query = format!("/v1/requests?limit={limit}");
            if let Some(app) = app {
                query.push_str(&format!("&app={}", path_segment(&app)));
            }
            if let Some(env) = env {
                query.push_str(&format!("&env={}", path_segment(&env)));
            }
            let listed: Vec<ReleaseRequest> = client.get(&query).await?;
            output::requests(&listed, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        RequestsCommand::Show { id } => {
            let request: ReleaseRequest = client.get(&format!("/v1/requests/{id}")).await?;
            output::request(&request, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        RequestsCommand::Approve { id, reason } => (format!("/v1/requests/{id}/approve"), reason),
        RequestsCommand::Reject { id, reason } => {
            (format!("/v1/requests/{id}/reject"), Some(reason))
        }
        RequestsCommand::Return { id, reason } => {
            (format!("/v1/requests/{id}/return"), Some(reason))
        }
        RequestsCommand::Resubmit { id } => (format!("/v1/requests/{id}/resubmit"), None),
        RequestsCommand::Withdraw { id } => (format!("/v1/requests/{id}/withdraw"), None),
        RequestsCommand::Changes { id } => {
            let changes: serde_json::Value =
                client.get(&format!("/v1/requests/{id}/changes")).await?;
            output::changes(&changes, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        RequestsCommand::Deploy {
            id,
            override_freeze,
        } => {
            let body = serde_json::json!({ "override_freeze": override_freeze });
            let request: ReleaseRequest = client
                .post(&format!("/v1/requests/{id}/deploy"), &body)
                .await?;
            output::request(&request, json)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let body = match step {
        Some(reason) => serde_json::json!({ "reason": reason }),
        None => serde_json::json!({}),
    };
    let request: ReleaseRequest = client.post(&path, &body).await?;
    output::request(&request, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `master-cli schedules ...`.
async fn schedules(
    client: &Client,
    command: SchedulesCommand,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use halite_model::Schedule;
    let one = |name: &str| format!("/v1/schedules/{}", path_segment(name));
    let schedule: Schedule = match command {
        SchedulesCommand::List => {
            let all: Vec<Schedule> = client.get("/v1/schedules").await?;
            output::schedules(&all, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        SchedulesCommand::Show { name } => client.get(&one(&name)).await?,
        SchedulesCommand::Add {
            name,
            cron,
            words,
            timeout,
        } => {
            let job = match words::parse_run(&words, timeout, &[]) {
                Ok(job) => job,
                Err(e) => {
                    eprintln!("master-cli schedules add: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let new = halite_model::NewSchedule { name, cron, job };
            client.post("/v1/schedules", &new).await?
        }
        SchedulesCommand::Pause { name } => {
            client
                .post(&format!("{}/pause", one(&name)), &serde_json::json!({}))
                .await?
        }
        SchedulesCommand::Resume { name } => {
            client
                .post(&format!("{}/resume", one(&name)), &serde_json::json!({}))
                .await?
        }
        SchedulesCommand::Remove { name } => {
            let answer: serde_json::Value = client.delete(&one(&name)).await?;
            if json {
                output::print_json(&answer)?;
            } else {
                output::line(&format!("Schedule {name} removed."));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    output::schedule(&schedule, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `master-cli rollout ...`.
async fn rollout(client: &Client, command: RolloutCommand, json: bool) -> anyhow::Result<ExitCode> {
    use halite_model::Rollout;
    use halite_proto::rollout::{Amount, Gate, Probe, RolloutPlan};
    let action = |id: u64, action: &str| format!("/v1/rollouts/{id}/{action}");
    let empty = serde_json::json!({});
    let rollout: Rollout = match command {
        RolloutCommand::List => {
            let all: Vec<Rollout> = client.get("/v1/rollouts").await?;
            output::rollouts(&all, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        RolloutCommand::Show { id } => client.get(&format!("/v1/rollouts/{id}")).await?,
        RolloutCommand::Continue { id } => client.post(&action(id, "continue"), &empty).await?,
        RolloutCommand::Pause { id } => client.post(&action(id, "pause"), &empty).await?,
        RolloutCommand::Resume { id } => client.post(&action(id, "resume"), &empty).await?,
        RolloutCommand::Abort { id } => client.post(&action(id, "abort"), &empty).await?,
        RolloutCommand::Start {
            app,
            words,
            ramp,
            bake,
            max_fail,
            max_missing,
            max_fail_total,
            timeout,
            manual,
            probe_url,
            no_rollback,
            no_health_gate,
            then,
            canary,
            reason,
        } => {
            let usage = |e: String| {
                eprintln!("master-cli rollout start: {e}");
                Ok(ExitCode::from(2))
            };
            let first = match group_words(&words) {
                Ok(group) => group,
                Err(e) => return usage(e),
            };
            let mut groups = Vec::new();
            for text in &then {
                let mut words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
                // `target=` comes last and takes the rest: a compound
                // target has spaces (`target=G@os:Windows and iis*`).
                if let Some(at) = words.iter().position(|w| w.starts_with("target=")) {
                    let target = words.split_off(at).join(" ");
                    words.push(target);
                }
                let Some((app, words)) = words.split_first() else {
                    return usage("--then: give the app, then its version".into());
                };
                match group_words(words) {
                    Ok(group) => groups.push(halite_model::NewGroup {
                        app: app.clone(),
                        version: group.version,
                        target: group.target,
                        module: group.module,
                    }),
                    Err(e) => return usage(format!("--then {app}: {e}")),
                }
            }
            let amount = |flag: &str, text: Option<String>| -> Result<Option<Amount>, String> {
                text.map(|t| Amount::parse(&t).map_err(|e| format!("--{flag}: {e}")))
                    .transpose()
            };
            let options_given = ramp.is_some()
                || bake.is_some()
                || max_fail.is_some()
                || max_missing.is_some()
                || max_fail_total.is_some()
                || timeout.is_some()
                || manual
                || !probe_url.is_empty()
                || no_rollback
                || no_health_gate
                || canary.canary.is_some();
            let plan = if options_given {
                let mut plan = RolloutPlan::default();
                if let Some(ramp) = ramp {
                    match RolloutPlan::parse_ramp(&ramp) {
                        Ok(steps) => plan.ramp = steps,
                        Err(e) => return usage(format!("--{e}")),
                    }
                }
                plan.bake = bake.unwrap_or(0);
                match (
                    amount("max-fail", max_fail),
                    amount("max-missing", max_missing),
                    amount("max-fail-total", max_fail_total),
                ) {
                    (Ok(fail), Ok(missing), Ok(total)) => {
                        plan.max_fail = fail.unwrap_or(plan.max_fail);
                        plan.max_missing = missing.unwrap_or(plan.max_missing);
                        plan.max_fail_total = total;
                    }
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return usage(e),
                }
                plan.timeout = timeout;
                plan.gate = if manual { Gate::Manual } else { Gate::Auto };
                plan.probes = probe_url
                    .into_iter()
                    .map(|url| Probe {
                        url: Some(url),
                        status: 200,
                        command: Vec::new(),
                        exit_code: 0,
                        timeout: 10,
                    })
                    .collect();
                plan.auto_rollback = !no_rollback;
                plan.health_gate = !no_health_gate;
                plan.canary = canary.plan();
                Some(plan)
            } else {
                None
            };
            let new = halite_model::NewRollout {
                app,
                version: first.version,
                target: first.target,
                plan,
                reason,
                then: groups,
                module: first.module,
            };
            client.post("/v1/rollouts", &new).await?
        }
    };
    output::rollout(&rollout, json)?;
    Ok(ExitCode::SUCCESS)
}

/// A rollout group's words: its version (`tag=V`, `branch=B`, `rev=R`,
/// or for artifact apps `version=V url=U sha256=H`), `target=EXPR` and
/// `module=M` (a Lua deploy module releasing it).
fn group_words(words: &[String]) -> Result<GroupWords, String> {
    let mut version = serde_json::Map::new();
    let mut target = None;
    let mut module = None;
    for word in words {
        match halite_proto::words::keyword(word) {
            Some(("target", value)) => target = Some(value.to_owned()),
            Some(("module", value)) => module = Some(value.to_owned()),
            Some((key @ ("tag" | "branch" | "rev"), value)) => {
                version.insert(key.to_owned(), value.into());
            }
            Some((key @ ("version" | "url" | "sha256"), value)) => {
                version.insert(key.to_owned(), value.into());
            }
            _ => {
                return Err(format!(
                    "{word:?}: give tag=V, branch=B or rev=R (git), or version=V url=U sha256=H (artifacts), and target=EXPR"
                ))
            }
        }
    }
    let git = ["tag", "branch", "rev"]
        .iter()
        .filter(|k| version.contains_key(**k))
        .count();
    if git > 1 || version.is_empty() {
        return Err(
            "name the version once: tag=V, branch=B or rev=R (or version=V url=U sha256=H)".into(),
        );
    }
    Ok(GroupWords {
        version,
        target,
        module,
    })
}

/// What [`group_words`] reads.
struct GroupWords {
    version: serde_json::Map<String, serde_json::Value>,
    target: Option<String>,
    module: Option<String>,
}

/// `requests new` and `requests rollback`: makes the request, prints it.
async fn new_request(
    client: &Client,
    kind: halite_model::RequestKind,
    app: String,
    env: String,
    version: serde_json::Map<String, serde_json::Value>,
    reason: String,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let new = halite_model::NewRequest {
        app,
        env,
        kind,
        version,
        reason,
    };
    let made: halite_model::ReleaseRequest = client.post("/v1/requests", &new).await?;
    output::request(&made, json)?;
    Ok(ExitCode::SUCCESS)
}

fn unreachable_usage() -> anyhow::Result<String> {
    anyhow::bail!("keys accept needs an ID or --all")
}

/// `text` as one URL path segment: a release's name may be a task path
/// (`\Halite\Rotate logs`), which must reach the API unchanged.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn valid_id(id: &str) -> anyhow::Result<&str> {
    halite_proto::ident::validate_id(id)?;
    Ok(id)
}

fn report_keys(verb: &str, changed: &serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        output::print_json(changed)?;
    } else {
        let ids: Vec<&str> = changed["ids"]
            .as_array()
            .map(|ids| ids.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if ids.is_empty() {
            output::line(&format!("{verb} no keys."));
        }
        for id in ids {
            output::line(&format!("{verb} key {id}."));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Key states in the order `keys list` prints them.
pub(crate) const KEY_SECTIONS: [(KeyStatus, &str); 4] = [
    (KeyStatus::Accepted, "Accepted Keys:"),
    (KeyStatus::Denied, "Denied Keys:"),
    (KeyStatus::Pending, "Unaccepted Keys:"),
    (KeyStatus::Rejected, "Rejected Keys:"),
];
