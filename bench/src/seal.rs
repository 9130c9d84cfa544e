//! `seal`: what sealing a job's secret arguments costs, per minion (each
//! target gets its own copy under its own key) against the one copy under
//! the shared session key sealed before: time to seal for N targets and
//! the bytes it adds to the job.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use halite_pki::SessionKey;

use crate::report::{percentile, Table};

/// Options of `halite-bench seal`.
#[derive(Args, Debug)]
pub struct SealArgs {
    /// Targeted minions.
    #[arg(long, default_value_t = 1000)]
    targets: usize,
    /// Jobs sealed (each for every target).
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Print a Markdown table (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

/// Runs the measurement.
pub fn run(args: SealArgs) -> Result<()> {
    let shared = SessionKey::generate(1)?;
    let keys: Vec<(String, SessionKey)> = (0..args.targets)
        .map(|i| Ok((format!("web{i:05}"), SessionKey::generate(1)?)))
        .collect::<Result<_>>()?;
    // Two repository credentials, as the master seals them.
    let secrets: std::collections::BTreeMap<String, String> = [
        ("repo_username".to_owned(), "deploy-bot".to_owned()),
        ("repo_password".to_owned(), "x".repeat(40)),
    ]
    .into_iter()
    .collect();
    let plain = halite_proto::envelope::encode("secrets", &secrets)?;
    let jid = "20261130030000000001";
    let mut per_minion_ms = Vec::with_capacity(args.rounds);
    let mut shared_ms = Vec::with_capacity(args.rounds);
    let mut per_minion_bytes = 0;
    let mut shared_bytes = 0;
    for _ in 0..args.rounds {
        let started = Instant::now();
        let sealed: std::collections::BTreeMap<String, halite_proto::message::Sealed> = keys
            .iter()
            .map(|(id, key)| {
                Ok((
                    id.clone(),
                    halite_pki::seal_for_minion(key, jid, id, &plain)?,
                ))
            })
            .collect::<Result<_>>()?;
        per_minion_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        per_minion_bytes = halite_proto::envelope::encode("secrets", &sealed)?.len();
        let started = Instant::now();
        let one = shared.seal(jid.as_bytes(), &plain)?;
        shared_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        shared_bytes = halite_proto::envelope::encode("secret", &one)?.len();
    }
    let mut table = Table::new(&["sealing", "targets", "p50 ms", "p99 ms", "bytes in the job"]);
    for (name, times, bytes) in [
        (
            "one copy, shared session key (before)",
            &mut shared_ms,
            shared_bytes,
        ),
        (
            "a copy per minion, its own key (now)",
            &mut per_minion_ms,
            per_minion_bytes,
        ),
    ] {
        times.sort_by(f64::total_cmp);
        table.row(vec![
            name.to_owned(),
            args.targets.to_string(),
            format!("{:.3}", percentile(times, 50.0)),
            format!("{:.3}", percentile(times, 99.0)),
            bytes.to_string(),
        ]);
    }
    println!("{}", table.render(args.markdown));
    Ok(())
}
