//! `deploy`: git_deploy against system git, on a real repository served
//! by `git http-backend` over HTTP on loopback.
//!
//! Each round deploys into a fresh path: the first deploy (empty cache:
//! full fetch, export, switch), a redeploy after a one-file change pushed
//! as a new tag (incremental fetch, export, switch), and a rollback (a
//! link switch). The same first deploy is timed for system git as `git
//! clone --no-checkout` + `git checkout <tag>`, and the redeploy as `git
//! fetch` + `git checkout <tag>` in that clone. The module runs in this
//! process through the same `Registry` a minion uses, so what is timed is
//! the minion's work without the job's network round trip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use halite_modules::{Call, EventSink, Registry};
use halite_proto::JidGenerator;
use halite_tests::git::{git, http};
use serde_json::{json, Map, Value};

use crate::report::{ms, percentile, Table};

/// Options of `halite-bench deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Files in the repository.
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Rounds (each with a fresh deploy path and clone).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Print Markdown rows for RESULTS.md.
    #[arg(long)]
    markdown: bool,
}

/// Runs the benchmark.
pub fn run(args: DeployArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let root = dir.path().join("git");
    let work = dir.path().join("work");
    let bytes = make_repo(&work, &root, args.files)?;
    let server = http(&root, None, None);
    let url = format!("http://127.0.0.1:{}/app.git", server.port);
    eprintln!(
        "repository: {} files, {:.1} MiB, served at {url}",
        args.files,
        bytes as f64 / 1_048_576.0
    );
    let runtime = tokio::runtime::Runtime::new().context("runtime")?;
    let registry = Arc::new(Registry::with_builtins());
    let jids = JidGenerator::new();

    let mut halite_first = Vec::new();
    let mut halite_redeploy = Vec::new();
    let mut halite_rollback = Vec::new();
    let mut git_first = Vec::new();
    let mut git_redeploy = Vec::new();
    for round in 0..args.rounds {
        let path = dir.path().join(format!("srv/round{round}"));
        let app = json!({
            "name": "app",
            "repo": url,
            "target": "*",
            "path": path.display().to_string(),
        });
        let call = |fun: &str, extra: Value| {
            let mut kwargs = Map::new();
            kwargs.insert("app".into(), app.clone());
            if let Value::Object(extra) = extra {
                kwargs.extend(extra);
            }
            Call {
                jid: jids.next(),
                fun: fun.to_owned(),
                args: Vec::new(),
                kwargs,
                grains: Arc::new(json!({})),
                cancel: Default::default(),
                events: EventSink::discard(),
                published: Default::default(),
            }
        };
        // Times a call; the module's own log lines (fetch and export
        // times) are kept to show where the time went.
        let timed = |mut c: Call, notes: &mut Vec<String>| -> Result<Duration> {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            c.events = EventSink::new(tx);
            let started = Instant::now();
            let outcome = runtime.block_on(registry.run(c));
            let took = started.elapsed();
            if !outcome.success {
                bail!("deploy failed: {}", outcome.data);
            }
            while let Ok(event) = rx.try_recv() {
                if let halite_proto::message::EventBody::Progress { line, .. } = event {
                    if line.contains(" ms") {
                        notes.push(line);
                    }
                }
            }
            Ok(took)
        };
        let mut notes = Vec::new();

        halite_first.push(ms(timed(
            call("git_deploy.deploy", json!({"tag": "v1"})),
            &mut notes,
        )?));
        let first_notes = notes.join("; ");
        let clone = dir.path().join(format!("clone{round}"));
        git_first.push(ms(time_git(|| {
            run_git(
                dir.path(),
                &[
                    "clone",
                    "-q",
                    "--no-checkout",
                    &url,
                    &clone.display().to_string(),
                ],
            )?;
            run_git(&clone, &["checkout", "-q", "v1"])
        })?));

        // One file changes, pushed as a new tag (not timed).
        let tag = format!("v1.{round}");
        std::fs::write(
            work.join("src/d000/f00000.txt"),
            format!("changed in round {round}\n"),
        )?;
        git(&work, &["commit", "-q", "-am", &tag]);
        git(&work, &["tag", &tag]);
        git(&work, &["push", "-q", "origin", "main", "--tags"]);

        notes.clear();
        halite_redeploy.push(ms(timed(
            call("git_deploy.deploy", json!({"tag": tag})),
            &mut notes,
        )?));
        let redeploy_notes = notes.join("; ");
        git_redeploy.push(ms(time_git(|| {
            run_git(&clone, &["fetch", "-q", "--tags", "origin"])?;
            run_git(&clone, &["checkout", "-q", &tag])
        })?));
        halite_rollback.push(ms(timed(
            call("git_deploy.rollback", json!({})),
            &mut Vec::new(),
        )?));
        let live = std::fs::read_link(path.join("current"))?;
        eprintln!(
            "round {}: first {:.0} ms (git {:.0} ms) [{first_notes}], one-file redeploy {:.0} ms (git {:.0} ms) [{redeploy_notes}], rollback {:.1} ms -> {}",
            round + 1,
            halite_first[round],
            git_first[round],
            halite_redeploy[round],
            git_redeploy[round],
            halite_rollback[round],
            live.display()
        );
    }

    let p50 = |v: &[f64]| percentile(v, 50.0);
    let mut table = Table::new(&[
        "measure",
        "halite p50",
        "halite max",
        "system git p50",
        "goal",
        "met",
    ]);
    let first_ratio = p50(&halite_first) / p50(&git_first);
    table.row(vec![
        format!("first deploy ({} files)", args.files),
        format!("{:.0} ms", p50(&halite_first)),
        format!("{:.0} ms", max(&halite_first)),
        format!("{:.0} ms", p50(&git_first)),
        "≤ 1.5× git".into(),
        format!("{} ({first_ratio:.2}×)", yes(first_ratio <= 1.5)),
    ]);
    table.row(vec![
        "redeploy after a one-file change".into(),
        format!("{:.0} ms", p50(&halite_redeploy)),
        format!("{:.0} ms", max(&halite_redeploy)),
        format!("{:.0} ms", p50(&git_redeploy)),
        "< 300 ms".into(),
        yes(p50(&halite_redeploy) < 300.0).into(),
    ]);
    table.row(vec![
        "rollback".into(),
        format!("{:.1} ms", p50(&halite_rollback)),
        format!("{:.1} ms", max(&halite_rollback)),
        "-".into(),
        "< 50 ms".into(),
        yes(p50(&halite_rollback) < 50.0).into(),
    ]);
    println!("{}", table.render(args.markdown));
    Ok(())
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(0.0, f64::max)
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

fn time_git(work: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed())
}

fn run_git(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .context("run git")?;
    if !status.success() {
        bail!("git {args:?} failed");
    }
    Ok(())
}

/// A repository of `files` text files (1-4 KiB, in 100 directories) with
/// tag v1, pushed to `<root>/app.git` and packed like a served repository.
/// Returns the bytes of file content.
fn make_repo(work: &Path, root: &Path, files: usize) -> Result<u64> {
    std::fs::create_dir_all(work)?;
    std::fs::create_dir_all(root)?;
    git(work, &["init", "-q", "-b", "main"]);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut total = 0u64;
    let words = [
        "deploy", "release", "minion", "master", "rollback", "tag", "branch", "health", "stage",
        "hook",
    ];
    for i in 0..files {
        let dir: PathBuf = work.join(format!("src/d{:03}", i % 100));
        std::fs::create_dir_all(&dir)?;
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let size = 1024 + (seed >> 33) as usize % 3072;
        let mut text = String::with_capacity(size + 16);
        let mut n = seed;
        while text.len() < size {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            text.push_str(words[(n >> 60) as usize % words.len()]);
            text.push(if n & 7 == 0 { '\n' } else { ' ' });
        }
        total += text.len() as u64;
        std::fs::write(dir.join(format!("f{i:05}.txt")), text)?;
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "v1"]);
    git(work, &["tag", "v1"]);
    let bare = root.join("app.git");
    git(root, &["init", "-q", "--bare", &bare.display().to_string()]);
    git(
        work,
        &["remote", "add", "origin", &bare.display().to_string()],
    );
    git(work, &["push", "-q", "origin", "main", "--tags"]);
    git(&bare, &["repack", "-adq"]);
    Ok(total)
}
