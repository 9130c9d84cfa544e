//! `master-cli`: a client of the master's HTTP API.
//!
//! It never opens the store: it reads the master's config to find the API
//! and the root-only token the master wrote into its `data_dir`, then
//! speaks `/v1`. Exit codes: 0 success, 1 a job failed or a minion did not
//! return (or the request failed), 2 usage errors.

mod client;
mod output;
mod words;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use halite_api::types::{JobRequest, JobView, KeysView, MinionView, Submitted};
use halite_proto::message::KeyStatus;

use client::Client;

/// Command-line client of a halite master.
#[derive(Parser)]
#[command(name = "master-cli", version)]
struct Cli {
    /// The master's configuration file (to find its API and token).
    #[arg(long, short, global = true, default_value = crate::config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long, global = true)]
    json: bool,
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
        /// Print the job id and exit without waiting.
        #[arg(long = "async")]
        run_async: bool,
        /// A keyword argument sealed for the minions (`--secret token=...`);
        /// `KEY=-` reads the value from stdin. Never stored or logged in clear.
        #[arg(long = "secret", value_name = "KEY=VALUE")]
        secrets: Vec<String>,
        /// Show output lines live as minions send them.
        #[arg(long)]
        progress: bool,
        /// Refuse to start when a targeted minion is down (lists which).
        #[arg(long)]
        require_up: bool,
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
enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
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
    let client = Client::from_config(&cli.config)?;
    let json = cli.json;
    match cli.command {
        Command::Run {
            words,
            timeout,
            run_async,
            secrets,
            progress,
            require_up,
        } => {
            let request = match words::parse_run(&words, timeout, &secrets) {
                Ok(request) => JobRequest {
                    require_up,
                    ..request
                },
                Err(e) => {
                    eprintln!("master-cli run: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            run(&client, request, run_async, progress, json).await
        }
        Command::Jobs {
            command: JobsCommand::List { limit },
        } => {
            let jobs: Vec<halite_api::types::JobSummary> = client
                .get(&format!("/v1/jobs?limit={}", limit.clamp(1, 1000)))
                .await?;
            output::jobs(&jobs, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs {
            command: JobsCommand::Show { jid, events },
        } => {
            let jid = halite_proto::Jid::parse(&jid)?;
            let view: JobView = client.get(&format!("/v1/jobs/{jid}")).await?;
            if events {
                let events: Vec<halite_api::types::EventRecord> =
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
        Command::Minions { events: true, .. } => {
            let events: Vec<halite_api::types::PresenceEvent> =
                client.get("/v1/presence?limit=200").await?;
            output::presence(&events, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Minions {
            checks: true,
            failed,
            since,
            ..
        } => {
            let since_ms =
                halite_proto::time::now_ms().saturating_sub(since.saturating_mul(3_600_000));
            let checks: Vec<halite_api::types::CheckRecord> = client
                .get(&format!(
                    "/v1/checks?since={since_ms}&failed={failed}&limit=100000"
                ))
                .await?;
            output::checks(&checks, since, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Minions { .. } => {
            let minions: Vec<MinionView> = client.get("/v1/minions").await?;
            output::minions(&minions, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command } => keys(&client, command, json).await,
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
            let releases: halite_api::types::AppReleases = client
                .get(&format!(
                    "/v1/apps/{}/releases?limit={limit}",
                    valid_id(&app)?
                ))
                .await?;
            output::releases(&releases, history, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(
    client: &Client,
    request: JobRequest,
    run_async: bool,
    progress: bool,
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
            output::line(&format!("Executed job with job ID {}", submitted.jid));
        }
        return Ok(ExitCode::SUCCESS);
    }
    if submitted.minions.is_empty() {
        let view: JobView = client.get(&format!("/v1/jobs/{}", submitted.jid)).await?;
        if json {
            output::job(&view, true)?;
        } else {
            eprintln!("No minions matched the target. No command was sent, no jid was assigned (jid {} recorded).", submitted.jid);
        }
        return Ok(ExitCode::FAILURE);
    }
    let mut shown = std::collections::BTreeSet::new();
    let mut cursor: Option<u64> = None;
    let path = format!("/v1/jobs/{}", submitted.jid);
    // App modules (deploys) always show their stages and output live;
    // other functions show stage changes, and output lines with --progress.
    let lines = progress || crate::apps::needs_app(&request_fun);
    let view = loop {
        if !json {
            let events: Vec<halite_api::types::EventRecord> = client
                .get(&match cursor {
                    Some(c) => format!("{path}/events?after={c}"),
                    None => format!("{path}/events"),
                })
                .await?;
            for event in &events {
                if lines
                    || !matches!(
                        event.body,
                        halite_proto::message::EventBody::Progress { .. }
                    )
                {
                    output::event(event);
                }
                cursor = Some(event.cursor);
            }
        }
        let view: JobView = client.get(&path).await?;
        if !json {
            for (id, ret) in &view.returns {
                if shown.insert(id.clone()) {
                    output::one_return(ret);
                }
            }
        }
        if view.done {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if json {
        output::job(&view, true)?;
    } else {
        output::summary(&view);
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

fn unreachable_usage() -> anyhow::Result<String> {
    anyhow::bail!("keys accept needs an ID or --all")
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
