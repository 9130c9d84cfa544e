//! `halite-fuzz run [--target NAME] [--execs N] [--seed S]`: fuzzes the
//! parsers (all of them by default), writing any crashing input to
//! `fuzz/crashes/<target>-<seed>`; exit 1 on a crash.
//!
//! `halite-fuzz seed`: (re)writes the committed corpus from valid inputs
//! of every shape (signed envelopes of each message kind, sealed
//! publications, target expressions, command words, the sample configs
//! and app definitions).
// A command-line tool: its report is its output.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use halite_fuzz::{corpus_dir, fuzz, fuzz_session_key, targets};
use halite_pki::KeyPair;
use halite_proto::message::{
    Auth, AuthReply, Beacon, Catchup, CatchupReply, Event, EventBody, Heartbeat, HeartbeatAck, Job,
    JobSummary, KeyStatus, ModuleManifest, Return, ReturnAck, VouchedJob,
};
use halite_proto::{Jid, Message, TargetType};

fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("seed") => {
            seed()?;
            Ok(ExitCode::SUCCESS)
        }
        Some("run") => run(&args[1..]),
        _ => {
            eprintln!("usage: halite-fuzz seed | run [--target NAME] [--execs N] [--seed S]");
            Ok(ExitCode::from(2))
        }
    }
}

fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let mut only = None;
    let mut execs: u64 = 1_000_000;
    let mut seed: u64 = 1;
    let mut words = args.iter();
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--target" => only = Some(value.clone()),
            "--execs" => execs = value.parse().context("--execs")?,
            "--seed" => seed = value.parse().context("--seed")?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    let mut crashed = false;
    for target in targets() {
        if only.as_deref().is_some_and(|name| name != target.name) {
            continue;
        }
        let started = Instant::now();
        match fuzz(&target, execs, seed) {
            Ok(done) => println!(
                "{:<14} {done:>12} executions, no crash, {:.1} s",
                target.name,
                started.elapsed().as_secs_f64()
            ),
            Err(crash) => {
                crashed = true;
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes");
                std::fs::create_dir_all(&dir)?;
                let file = dir.join(format!("{}-{seed}", target.name));
                std::fs::write(&file, &crash.input)?;
                println!(
                    "{:<14} CRASH: {} (input in {})",
                    target.name,
                    crash.message,
                    file.display()
                );
            }
        }
    }
    Ok(if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn write(target: &str, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes).with_context(|| format!("write {target}/{name}"))
}

fn seed() -> anyhow::Result<()> {
    let key = KeyPair::generate()?;
    let session = fuzz_session_key();
    let jid = Jid::parse("20261130030000000001")?;
    let mut job = Job {
        jid: jid.clone(),
        tgt: "G@os:Debian and web*".into(),
        tgt_type: TargetType::Compound,
        fun: "git_deploy.deploy".into(),
        arg: vec![serde_json::json!("uname -a"), serde_json::json!(3)],
        kwarg: serde_json::json!({
            "app": {"name": "shop", "repo": "https://git.example/shop.git", "target": "web*", "path": "/srv/shop"},
            "tag": "v3",
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
        secret: Some(session.seal(jid.as_str().as_bytes(), b"\x81\xa8password\xa3pw!")?),
        secrets: [(
            "web01".to_owned(),
            halite_pki::seal_for_minion(&session, jid.as_str(), "web01", b"\x80")?,
        )]
        .into_iter()
        .collect(),
        timeout: 60,
        issued_at: 1,
        expires_at: 60_001,
        master: "master-a".into(),
        user: "deployer".into(),
        modules: Vec::new(),
        summary_signature: Vec::new(),
    };
    job.summary_signature = key.sign_job_summary(&JobSummary::of(&job));
    let ret = Return {
        jid: jid.clone(),
        id: "web01".into(),
        fun: "test.ping".into(),
        success: true,
        retcode: 0,
        data: serde_json::json!({"nested": [1, {"a": [true, null, 2.5]}], "s": "x"}),
        started_at: 1,
        finished_at: 2,
        nonce: vec![1; 16],
        master: "master-a".into(),
        job: VouchedJob::of(&job),
    };
    let messages: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        one("job", &key, &job)?,
        one(
            "module_manifest",
            &key,
            &ModuleManifest {
                name: "php_app".into(),
                sha256: "00".repeat(32),
                master: "master-a".into(),
            },
        )?,
        one(
            "beacon",
            &key,
            &Beacon {
                master: "master-a".into(),
                at: 5,
                session_epoch: 7,
            },
        )?,
        one(
            "auth",
            &key,
            &Auth {
                id: "web01".into(),
                pubkey: key.public().as_bytes().to_vec(),
                nonce: vec![2; 16],
                eph_pub: vec![3; 32],
                version: "0.1.0".into(),
                grains: serde_json::json!({"os": "Debian"}),
                probe: false,
                link_macs: false,
            },
        )?,
        one(
            "auth_reply",
            &key,
            &AuthReply {
                nonce: vec![2; 16],
                status: KeyStatus::Pending,
                master: "master-a".into(),
                master_pub: key.public().as_bytes().to_vec(),
                publish_port: 4505,
                heartbeat_interval: 5,
                session: None,
                link_macs: false,
            },
        )?,
        one("return", &key, &ret)?,
        one(
            "return_ack",
            &key,
            &ReturnAck {
                jid: jid.clone(),
                id: "web01".into(),
                nonce: vec![1; 16],
            },
        )?,
        one(
            "event",
            &key,
            &Event {
                jid: jid.clone(),
                id: "web01".into(),
                seq: 3,
                at: 4,
                body: EventBody::Stage {
                    stage: "deploy".into(),
                    status: "succeeded".into(),
                    duration_ms: Some(12),
                    message: Some("current -> releases/x".into()),
                },
            },
        )?,
        one(
            "heartbeat",
            &key,
            &Heartbeat {
                id: "web01".into(),
                nonce: vec![4; 16],
                at: 9,
                version: "0.1.0".into(),
                session_epoch: 7,
                running: vec![jid.clone()],
                rtt_ms: Some(3),
            },
        )?,
        one(
            "heartbeat_ack",
            &key,
            &HeartbeatAck {
                nonce: vec![4; 16],
                accepted: true,
                session_epoch: 7,
            },
        )?,
        one(
            "catchup",
            &key,
            &Catchup {
                id: "web01".into(),
                nonce: vec![5; 16],
            },
        )?,
        one(
            "catchup_reply",
            &key,
            &CatchupReply {
                nonce: vec![5; 16],
                jobs: vec![serde_bytes::ByteBuf::from(vec![1, 2, 3])],
            },
        )?,
    ];
    for (name, envelope, payload) in &messages {
        write("envelope", name, envelope)?;
        write("message", name, payload)?;
    }
    let job_envelope = &messages[0].1;
    write(
        "publication",
        "job",
        &halite_pki::seal_publication(&session, "job", job_envelope)?,
    )?;
    for (i, text) in [
        "web*",
        "web01,db01,lb-1.example",
        "E@^web\\d+$",
        "G@os:Debian",
        "G@roles:web and not L@db01 or E@^w",
        "( G@os:Debian or web* ) and not ( db* or G@num:3 )",
    ]
    .iter()
    .enumerate()
    {
        write("target", &format!("t{i}"), text.as_bytes())?;
    }
    for (i, text) in [
        "tag=v3 version=3 uname -a",
        "arg=[1,2] kw={\"a\":{\"b\":[null]}} -5 true null 1e308",
        "cmd.run \"echo a=b\" timeout=0x10",
    ]
    .iter()
    .enumerate()
    {
        write("words", &format!("w{i}"), text.as_bytes())?;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sample = |path: &str| std::fs::read(root.join(path)).with_context(|| path.to_owned());
    write(
        "master_config",
        "packaging",
        &sample("packaging/master.toml")?,
    )?;
    write(
        "master_config",
        "acl",
        b"id = \"m1\"\npublish_port = 0\nmax_pending_keys = 10\n[acl]\nweb = [{ \"web*\" = [\"test.*\", \"git_deploy.*\"] }]\nops = [\".*\", \"@wheel\", \"@jobs\"]\n",
    )?;
    write(
        "minion_config",
        "packaging",
        &sample("packaging/minion.toml")?,
    )?;
    write(
        "minion_config",
        "masters",
        b"id = \"web01\"\nmasters = [\"10.0.0.1:4506\", \"[::1]:4506\"]\nmaster_type = \"hot\"\n[grains]\nroles = [\"web\"]\n[lua]\nroots = [\"/srv\"]\n",
    )?;
    for app in ["portal", "shop", "store-api"] {
        write(
            "app",
            app,
            &sample(&format!("packaging/apps.d/{app}.toml"))?,
        )?;
    }
    println!("corpus written to {}", corpus_dir("").display());
    Ok(())
}

/// A message as a signed envelope and as its bare payload.
fn one<M: Message>(
    name: &'static str,
    key: &KeyPair,
    message: &M,
) -> anyhow::Result<(&'static str, Vec<u8>, Vec<u8>)> {
    let envelope = key.sign_message("fuzz", message)?;
    let payload = envelope.payload.clone();
    Ok((name, envelope.to_bytes(), payload))
}
