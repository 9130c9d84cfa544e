//! `api`: requests per second and latency of the HTTP API with many
//! stored jobs, under `wrk` (a local load generator in its own process).
//!
//! The store is filled with `--jobs` jobs (each with one return) before
//! the master starts; the master runs in this process on its own runtime;
//! `wrk` then hits `GET /v1/jobs/{jid}` for random stored jids, the first
//! page of `GET /v1/jobs`, and a filtered page (`fun=` matching one job
//! in a hundred), each for `--seconds`. With `--submits N`, the random
//! lookups run once more while another client submits N jobs a second
//! through `POST /v1/jobs` (each stored, flushed and signed by the master):
//! the p99 of lookups then shows whether submissions stall the API's
//! workers.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use halite_api::types::{JobRecord, ReturnRecord};
use halite_master::store::{Store, StoreLocation, StoredJob};
use halite_proto::{JidGenerator, TargetType};
use tokio_util::sync::CancellationToken;

use crate::report::{grouped, Table};

/// Options of `halite-bench api`.
#[derive(Args, Debug)]
pub struct ApiArgs {
    /// Jobs in the store.
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Seconds of load per scenario.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
    /// Worker threads of the master's runtime.
    #[arg(long, default_value_t = 2)]
    master_workers: usize,
    /// Also measure lookups while this many jobs a second are submitted
    /// (0: skip).
    #[arg(long, default_value_t = 50)]
    submits: u32,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
    /// Keep the store in PostgreSQL (a throwaway cluster started for the
    /// run) instead of sled.
    #[arg(long)]
    postgres: bool,
}

/// What wrk measured for one scenario.
struct Measured {
    requests_per_s: f64,
    p50: String,
    p99: String,
    errors: u64,
}

fn fill(location: &StoreLocation, jobs: usize) -> Result<Vec<String>> {
    let store = Store::at(location).context("open the store")?;
    let jids = JidGenerator::new();
    let mut all = Vec::with_capacity(jobs);
    for n in 0..jobs {
        let jid = jids.next();
        let fun = if n % 100 == 0 {
            "git_deploy.deploy"
        } else {
            "test.ping"
        };
        let now = halite_proto::time::now_ms();
        let record = JobRecord {
            jid: jid.clone(),
            target: format!("web{}", n % 50),
            tgt_type: TargetType::Glob,
            fun: fun.into(),
            arg: Vec::new(),
            kwarg: Default::default(),
            secret_keys: Vec::new(),
            user: "bench".into(),
            timeout: 60,
            issued_at: now,
            expires_at: now + 60_000,
            expected: vec![format!("web{}", n % 50)],
            down: Vec::new(),
            published_by: None,
            batch_size: None,
        };
        store.put_job(&StoredJob {
            record,
            // A signed job envelope is about this size.
            envelope: vec![0u8; 320],
        })?;
        let ret = ReturnRecord {
            id: format!("web{}", n % 50),
            fun: fun.into(),
            success: true,
            retcode: 0,
            data: serde_json::Value::Bool(true),
            started_at: now,
            finished_at: now,
            stored_at: now,
        };
        store.put_returns(&[(jid.clone(), ret)])?;
        all.push(jid.to_string());
    }
    store.flush()?;
    Ok(all)
}

fn wrk(args: &ApiArgs, url: &str, script: &Path) -> Result<Measured> {
    let output = Command::new("wrk")
        .arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", args.seconds))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    Ok(Measured {
        requests_per_s: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?,
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        errors: field("Non-2xx or 3xx responses:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// The status of one portal page fetched with the session cookie.
fn page_status(addr: &std::net::SocketAddr, path: &str, token: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).context("connect to the API")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nCookie: halite_session={token}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in the answer to {path}"))
}

/// Asks for v2 of the shop on staging; answers the request's id.
fn create_request(addr: &std::net::SocketAddr, token: &str) -> Result<u64> {
    use std::io::{Read, Write};
    let body = r#"{"app":"shop","env":"staging","version":{"tag":"v2"},"reason":"bench"}"#;
    let mut stream = std::net::TcpStream::connect(addr).context("connect to the API")?;
    write!(
        stream,
        "POST /v1/requests HTTP/1.1\r\nHost: bench\r\nX-Auth-Token: {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let json = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .context("an answer without a body")?;
    let created: serde_json::Value = serde_json::from_str(json.trim())
        .with_context(|| format!("the request was not made: {answer}"))?;
    created["id"]
        .as_u64()
        .with_context(|| format!("the request was not made: {answer}"))
}

/// Runs the benchmark.
pub fn run(args: ApiArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    // Held for the run: dropping it stops PostgreSQL.
    let cluster = if args.postgres {
        Some(halite_master::store::throwaway::Cluster::start().context("start PostgreSQL")?)
    } else {
        None
    };
    let location = match &cluster {
        Some(cluster) => StoreLocation::Postgres(cluster.database().context("a database")?),
        None => StoreLocation::Sled(dir.path().join("data/store")),
    };
    let started = Instant::now();
    let jids = fill(&location, args.jobs)?;
    eprintln!(
        "stored {} jobs in {:.1}s",
        grouped(args.jobs),
        started.elapsed().as_secs_f64()
    );
    // A git app with two environments, for the app and request pages
    // (their versions and change sets come from the master's git cache).
    halite_tests::git::TwoEnvShop::create(dir.path());
    std::fs::rename(dir.path().join("master/apps.d"), dir.path().join("apps.d"))
        .context("move the app definition next to the master's config")?;
    let mut config = crate::fleet::master_config(dir.path(), None)?;
    config.store = location;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.master_workers.max(1))
        .thread_name("master")
        .enable_all()
        .build()
        .context("start the master runtime")?;
    let shutdown = CancellationToken::new();
    let running = runtime
        .block_on(halite_master::start(config.clone(), shutdown.clone()))
        .context("start the master")?;
    let token = std::fs::read_to_string(config.token_file())?
        .trim()
        .to_owned();
    let base = format!("http://{}", running.api_addr);

    // wrk scripts: the token header, and random stored jids for lookups.
    let sample: Vec<&String> = jids.iter().step_by((jids.len() / 10_000).max(1)).collect();
    let lookup = dir.path().join("lookup.lua");
    std::fs::write(
        &lookup,
        format!(
            "wrk.headers[\"X-Auth-Token\"] = \"{token}\"\nlocal jids = {{{}}}\nmath.randomseed(42)\nrequest = function()\n  return wrk.format(\"GET\", \"/v1/jobs/\" .. jids[math.random(#jids)])\nend\n",
            sample.iter().map(|j| format!("\"{j}\"")).collect::<Vec<_>>().join(",")
        ),
    )?;
    let plain = dir.path().join("plain.lua");
    std::fs::write(
        &plain,
        format!("wrk.headers[\"X-Auth-Token\"] = \"{token}\"\n"),
    )?;
    // The portal's pages, as a logged-in browser asks for them (the
    // session cookie holds a token; the CLI's will do).
    let page = dir.path().join("page.lua");
    std::fs::write(
        &page,
        format!("wrk.headers[\"Cookie\"] = \"halite_session={token}\"\n"),
    )?;
    let page_lookup = dir.path().join("page-lookup.lua");
    std::fs::write(
        &page_lookup,
        format!(
            "wrk.headers[\"Cookie\"] = \"halite_session={token}\"\nlocal jids = {{{}}}\nmath.randomseed(42)\nrequest = function()\n  return wrk.format(\"GET\", \"/ui/jobs/\" .. jids[math.random(#jids)])\nend\n",
            sample.iter().map(|j| format!("\"{j}\"")).collect::<Vec<_>>().join(",")
        ),
    )?;

    let request = create_request(&running.api_addr, &token)?;
    let scenarios = [
        (
            "GET /v1/jobs/{jid} (random)",
            format!("{base}/v1/jobs/x"),
            &lookup,
        ),
        (
            "GET /v1/jobs?limit=50",
            format!("{base}/v1/jobs?limit=50"),
            &plain,
        ),
        (
            "GET /v1/jobs?fun=git_deploy.*&limit=50 (1 job in 100 matches)",
            format!("{base}/v1/jobs?fun=git_deploy.*&limit=50"),
            &plain,
        ),
        ("portal: dashboard /ui/", format!("{base}/ui/"), &page),
        (
            "portal: jobs list /ui/jobs (50 rows)",
            format!("{base}/ui/jobs"),
            &page,
        ),
        (
            "portal: jobs list filtered /ui/jobs?fun=git_deploy.*",
            format!("{base}/ui/jobs?fun=git_deploy.*"),
            &page,
        ),
        (
            "portal: a job's page /ui/jobs/{jid} (random)",
            format!("{base}/ui/jobs/x"),
            &page_lookup,
        ),
        (
            "portal: app page /ui/apps/shop (2 environments, git fetch)",
            format!("{base}/ui/apps/shop"),
            &page,
        ),
        (
            "portal: release request /ui/requests/{id} (change set)",
            format!("{base}/ui/requests/{request}"),
            &page,
        ),
        (
            "portal: minions /ui/minions",
            format!("{base}/ui/minions"),
            &page,
        ),
        (
            "portal: statistics /ui/stats",
            format!("{base}/ui/stats"),
            &page,
        ),
        ("portal: audit /ui/audit", format!("{base}/ui/audit"), &page),
        (
            "portal: rollouts /ui/rollouts",
            format!("{base}/ui/rollouts"),
            &page,
        ),
        (
            "portal: schedules /ui/schedules",
            format!("{base}/ui/schedules"),
            &page,
        ),
    ];
    // A page that redirected to the login form would be measured too
    // (wrk counts 3xx as answers): every portal page must be a 200 first.
    for (name, url, script) in &scenarios {
        if *script == &page {
            let path = url.trim_start_matches(&base);
            let status = page_status(&running.api_addr, path, &token)?;
            if status != 200 {
                bail!("{name}: {path} answered {status}, not the page");
            }
        }
    }
    let mut table = Table::new(&[
        "request",
        "jobs stored",
        "requests/s",
        "p50",
        "p99",
        "errors",
    ]);
    for (name, url, script) in scenarios {
        let measured = wrk(&args, &url, script)?;
        table.row(vec![
            name.to_owned(),
            grouped(args.jobs),
            format!("{:.0}", measured.requests_per_s),
            measured.p50,
            measured.p99,
            measured.errors.to_string(),
        ]);
    }
    if args.submits > 0 {
        let submitter = Submitter::start(&base, &token, args.submits)?;
        let measured = wrk(&args, &format!("{base}/v1/jobs/x"), &lookup)?;
        let (submitted, failed) = submitter.stop();
        table.row(vec![
            format!(
                "GET /v1/jobs/{{jid}} (random) while {} jobs/s are submitted ({submitted} done, {failed} failed)",
                args.submits
            ),
            grouped(args.jobs),
            format!("{:.0}", measured.requests_per_s),
            measured.p50,
            measured.p99,
            measured.errors.to_string(),
        ]);
    }
    println!("{}", table.render(args.markdown));
    shutdown.cancel();
    drop(running);
    Ok(())
}

/// Submits jobs at a steady rate from its own thread until stopped.
struct Submitter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Submitter {
    fn start(base: &str, token: &str, per_second: u32) -> Result<Submitter> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = format!("{base}/v1/jobs");
        let token = token.to_owned();
        let flag = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("submitter runtime")?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                halite_pki::install_tls_provider();
                let client = reqwest::Client::new();
                let mut every =
                    tokio::time::interval(std::time::Duration::from_secs(1) / per_second.max(1));
                let (mut done, mut failed) = (0u64, 0u64);
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    every.tick().await;
                    let sent = client
                        .post(&url)
                        .header("X-Auth-Token", &token)
                        .json(&serde_json::json!({
                            "target": "nobody-*", "fun": "test.ping", "arg": ["x".repeat(512)]
                        }))
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status().is_success() => done += 1,
                        _ => failed += 1,
                    }
                }
                (done, failed)
            })
        });
        Ok(Submitter { stop, thread })
    }

    /// Stops submitting; how many submissions succeeded and failed.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}
