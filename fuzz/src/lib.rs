//! A mutation fuzzer that runs on stable Rust, for every parser that
//! reads input from outside: envelopes and every wire message (what a
//! peer sends), sealed publications, target expressions, command words,
//! master and minion configuration and app definitions (what an operator
//! or a portal writes).
//!
//! Each [`Target`] is a function that must not panic, whatever its bytes.
//! [`fuzz`] starts from the committed corpus (`fuzz/corpus/<target>/`)
//! and mutates it (bit flips, byte changes, insertions, deletions,
//! splices, repeats, interesting values) with a seeded generator, so a
//! run is repeatable. A panic is a crash: its input is returned (and the
//! `halite-fuzz` binary writes it to `fuzz/crashes/`). An abort (stack
//! overflow, allocation failure) ends the process, which a CI run reports
//! as a failure just the same. There is no coverage feedback (that needs
//! nightly's sanitizer support); the corpus carries valid inputs of every
//! shape so mutations start from deep in each parser.
#![deny(missing_docs)]

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use halite_proto::message::{
    Auth, AuthReply, Beacon, Catchup, CatchupReply, Event, Heartbeat, HeartbeatAck, Job,
    ModuleManifest, Return, ReturnAck,
};
use halite_proto::{Envelope, Kind, Target as TargetExpr, TargetType};

/// A parser under test.
pub struct Target {
    /// Its name (and its corpus directory).
    pub name: &'static str,
    /// Feeds it one input; must not panic.
    pub run: fn(&[u8]),
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "envelope",
            run: envelope,
        },
        Target {
            name: "message",
            run: message,
        },
        Target {
            name: "publication",
            run: publication,
        },
        Target {
            name: "target",
            run: target,
        },
        Target {
            name: "words",
            run: words,
        },
        Target {
            name: "master_config",
            run: master_config,
        },
        Target {
            name: "minion_config",
            run: minion_config,
        },
        Target {
            name: "app",
            run: app,
        },
    ]
}

fn open_as<M: halite_proto::Message>(envelope: &Envelope) {
    let _ = envelope.open::<M>();
}

/// A frame as the ROUTER or SUB receives it: decoded, then opened as its
/// kind says.
fn envelope(data: &[u8]) {
    let Ok(envelope) = Envelope::from_bytes(data) else {
        return;
    };
    match envelope.kind {
        Kind::Job => open_as::<Job>(&envelope),
        Kind::ModuleManifest => open_as::<ModuleManifest>(&envelope),
        Kind::Beacon => open_as::<Beacon>(&envelope),
        Kind::Auth => open_as::<Auth>(&envelope),
        Kind::AuthReply => open_as::<AuthReply>(&envelope),
        Kind::Return => open_as::<Return>(&envelope),
        Kind::ReturnAck => open_as::<ReturnAck>(&envelope),
        Kind::Event => open_as::<Event>(&envelope),
        Kind::Heartbeat => open_as::<Heartbeat>(&envelope),
        Kind::HeartbeatAck => open_as::<HeartbeatAck>(&envelope),
        Kind::Catchup => open_as::<Catchup>(&envelope),
        Kind::CatchupReply => open_as::<CatchupReply>(&envelope),
    }
}

fn decode_as<T: serde::de::DeserializeOwned>(data: &[u8]) {
    let _ = halite_proto::envelope::decode::<T>("fuzz", data);
}

/// A payload decoded as every message type.
fn message(data: &[u8]) {
    decode_as::<Job>(data);
    decode_as::<ModuleManifest>(data);
    decode_as::<Beacon>(data);
    decode_as::<Auth>(data);
    decode_as::<AuthReply>(data);
    decode_as::<Return>(data);
    decode_as::<ReturnAck>(data);
    decode_as::<Event>(data);
    decode_as::<Heartbeat>(data);
    decode_as::<HeartbeatAck>(data);
    decode_as::<Catchup>(data);
    decode_as::<CatchupReply>(data);
    if let Ok(value) = halite_proto::envelope::decode::<serde_json::Value>("fuzz", data) {
        let _ = halite_proto::envelope::depth(&value);
    }
}

/// The session key every run seals its corpus with (fixed, so the corpus
/// opens).
pub fn fuzz_session_key() -> halite_pki::SessionKey {
    halite_pki::SessionKey::from_bytes(7, [7; 32])
}

/// A job publication as a minion opens it.
fn publication(data: &[u8]) {
    let key = fuzz_session_key();
    if let Ok(plain) = halite_pki::open_publication(|_| Some(key.clone()), "job", data) {
        envelope(&plain);
    }
}

/// Target expressions of every type, matched against a minion.
fn target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let grains = serde_json::json!({"os": "Debian", "roles": ["web", "db"], "num": 3});
    for tgt_type in [
        TargetType::Glob,
        TargetType::List,
        TargetType::Pcre,
        TargetType::Grain,
        TargetType::Compound,
    ] {
        if let Ok(parsed) = TargetExpr::parse(tgt_type, &text) {
            let _ = parsed.matches("web01", &grains);
        }
    }
}

/// Salt-style command words (`master-cli run`, salt-api `arg` lists).
fn words(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for word in text.split(' ') {
        if let Some((_, value)) = halite_proto::words::keyword(word) {
            let _ = halite_proto::words::value_of(value);
        }
        let _ = halite_proto::words::value_of(word);
    }
}

fn master_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = halite_master::Config::from_toml(Path::new("/fuzz/master.toml"), &text);
}

fn minion_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = halite_minion::Config::from_toml(Path::new("/fuzz/minion.toml"), &text);
}

fn app(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(app) = halite_proto::app::AppSpec::from_toml(Path::new("/fuzz/apps.d/x.toml"), &text)
    {
        let _ = app.validate();
    }
}

/// A repeatable generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded (a zero seed is moved off zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that find edges: lengths and markers parsers treat specially.
const INTERESTING: &[&[u8]] = &[
    &[0],
    &[0xff],
    &[0x7f],
    &[0x80],
    &[0xdd, 0xff, 0xff, 0xff, 0xff],
    &[0xdc, 0xff, 0xff],
    &[0xc6, 0x7f, 0xff, 0xff, 0xff],
    &[0x91, 0x91, 0x91, 0x91],
    b"[[[[",
    b"{{{{",
    b"((((",
    b"\"\\u0000\"",
    b"=",
    b" and ",
    b" or not ",
    b"G@",
    b"L@",
    b"E@",
    b"*",
    b"..",
    b"\n[x]\n",
    b"\"\"\"",
];

/// One mutation of `input` (`other` for splices).
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(out.len() + 1);
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(i..i, piece.iter().copied());
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(16)).min(out.len());
                out.drain(start..end);
            }
            4 if !other.is_empty() => {
                let cut = rng.below(out.len() + 1);
                let from = rng.below(other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            5 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(8)).min(out.len());
                let chunk = out[start..end].to_vec();
                for _ in 0..=rng.below(16) {
                    out.splice(start..start, chunk.iter().copied());
                }
            }
            6 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            _ if out.len() > 1 => {
                let cut = rng.below(out.len());
                out.truncate(cut.max(1));
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out.truncate(64 * 1024);
    out
}

/// The committed seeds of `target` (`fuzz/corpus/<target>/*`).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok().map(|b| (e.path(), b)))
                .collect()
        })
        .unwrap_or_default();
    seeds.sort();
    let mut seeds: Vec<Vec<u8>> = seeds.into_iter().map(|(_, bytes)| bytes).collect();
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

/// Where the corpus of `target` lives.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

/// A panic the fuzzer found.
#[derive(Debug)]
pub struct Crash {
    /// The input that panicked.
    pub input: Vec<u8>,
    /// The panic's message.
    pub message: String,
}

/// Runs `execs` inputs through `target`: the corpus first, then
/// mutations of it. Stops at the first panic.
pub fn fuzz(target: &Target, execs: u64, seed: u64) -> Result<u64, Crash> {
    let seeds = corpus(target.name);
    let mut rng = Rng::new(seed);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut result = Ok(execs);
    for n in 0..execs {
        let input = if (n as usize) < seeds.len() {
            seeds[n as usize].clone()
        } else {
            let base = &seeds[rng.below(seeds.len())];
            let other = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, base, other)
        };
        let run = target.run;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&input))) {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            result = Err(Crash { input, message });
            break;
        }
    }
    std::panic::set_hook(previous);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short pass CI runs: every target, its corpus and 5 000
    /// mutations, no panic.
    #[test]
    fn every_target_survives_a_short_pass() {
        for target in targets() {
            assert!(
                !corpus(target.name).is_empty(),
                "{} has no corpus",
                target.name
            );
            if let Err(crash) = fuzz(&target, 5_000, 0x5eed) {
                panic!(
                    "{} panicked ({}) on {:?}",
                    target.name, crash.message, crash.input
                );
            }
        }
    }

    #[test]
    fn mutations_are_repeatable() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        for _ in 0..100 {
            assert_eq!(
                mutate(&mut a, b"hello world", b"other"),
                mutate(&mut b, b"hello world", b"other")
            );
        }
    }
}
