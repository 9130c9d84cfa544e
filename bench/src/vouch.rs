//! `vouch`: what carrying a job's signed summary costs. The publisher
//! signs the summary once per job; each other master verifies it once per
//! return; each return to a minion with several masters carries it. The
//! alternative, the whole signed job, would carry every target's sealed
//! secrets in every return: shown beside it.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use halite_pki::{KeyPair, SessionKey};
use halite_proto::message::{Job, JobSummary, VouchedJob};

use crate::report::{percentile, Table};

/// Options of `halite-bench vouch`.
#[derive(Args, Debug)]
pub struct VouchArgs {
    /// Targeted minions (each with its sealed copy of the job's secrets).
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Signatures and verifications timed.
    #[arg(long, default_value_t = 2000)]
    rounds: usize,
    /// Print a Markdown table (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

/// A deploy job as the master publishes it: an app definition in its
/// kwargs and repository credentials sealed for every target.
fn deploy_job(key: &KeyPair, targets: usize) -> Result<Job> {
    let jid = halite_proto::JidGenerator::new().next();
    let secret = halite_proto::envelope::encode("secrets", &("deploy-bot", "x".repeat(40)))?;
    let secrets = (0..targets)
        .map(|i| {
            let id = format!("web{i:05}");
            let sealed =
                halite_pki::seal_for_minion(&SessionKey::generate(1)?, jid.as_str(), &id, &secret)?;
            Ok((id, sealed))
        })
        .collect::<Result<_>>()?;
    let kwarg = serde_json::json!({
        "app": {
            "name": "shop", "repo": "https://git.example/shop.git", "target": "web*",
            "path": "/srv/shop", "keep_releases": 5,
            "hooks": {"post_deploy": "systemctl reload php-fpm"},
            "health": {"url": "http://127.0.0.1/health", "expect": 200},
        },
        "tag": "v3",
    });
    let mut job = Job {
        jid,
        tgt: "web*".into(),
        tgt_type: halite_proto::TargetType::Glob,
        fun: "git_deploy.deploy".into(),
        arg: Vec::new(),
        kwarg: kwarg.as_object().cloned().unwrap_or_default(),
        secret: None,
        secrets,
        timeout: 600,
        issued_at: 1,
        expires_at: 600_001,
        master: "master-a".into(),
        user: "deployer".into(),
        modules: Vec::new(),
        summary_signature: Vec::new(),
    };
    job.summary_signature = key.sign_job_summary(&JobSummary::of(&job));
    Ok(job)
}

/// Runs the measurement.
pub fn run(args: VouchArgs) -> Result<()> {
    let key = KeyPair::generate()?;
    let job = deploy_job(&key, args.targets)?;
    let vouched = VouchedJob::of(&job).ok_or_else(|| anyhow::anyhow!("no signature"))?;
    let public = key.public();
    let (mut sign_us, mut verify_us) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        let started = Instant::now();
        let summary = JobSummary::of(&job);
        std::hint::black_box(key.sign_job_summary(&summary));
        sign_us.push(started.elapsed().as_secs_f64() * 1e6);
        let started = Instant::now();
        halite_pki::verify_vouched_job(&vouched, &public)?;
        verify_us.push(started.elapsed().as_secs_f64() * 1e6);
    }
    sign_us.sort_by(f64::total_cmp);
    verify_us.sort_by(f64::total_cmp);
    let summary_bytes = halite_proto::envelope::encode("vouched", &vouched)?.len();
    let job_bytes = key.sign_message("master-a", &job)?.to_bytes().len();
    let mut table = Table::new(&["what", "targets", "p50 µs", "p99 µs", "bytes per return"]);
    table.row(vec![
        "sign the summary (publisher, once per job)".into(),
        args.targets.to_string(),
        format!("{:.1}", percentile(&sign_us, 50.0)),
        format!("{:.1}", percentile(&sign_us, 99.0)),
        String::new(),
    ]);
    table.row(vec![
        "verify it (other master, once per return)".into(),
        args.targets.to_string(),
        format!("{:.1}", percentile(&verify_us, 50.0)),
        format!("{:.1}", percentile(&verify_us, 99.0)),
        summary_bytes.to_string(),
    ]);
    table.row(vec![
        "the whole signed job instead (not done)".into(),
        args.targets.to_string(),
        String::new(),
        String::new(),
        job_bytes.to_string(),
    ]);
    println!("{}", table.render(args.markdown));
    Ok(())
}
