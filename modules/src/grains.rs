//! Grains: static facts about the minion (OS, kernel, host names, addresses,
//! CPU, memory, version), collected once at start and used for targeting and
//! by the `grains` module.
//!
//! Collection never fails: a fact that cannot be read is the string
//! `"unknown"` (or `null` for a number), and the reason is logged at debug
//! level. Custom grains from the minion config are merged last, at top
//! level, so they override or extend the collected ones.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use halite_proto::catalog;
use halite_proto::catalog::grains::{GET, ITEM, ITEMS, LS, MODULE};

use crate::args::{ArgError, Args};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome};

/// The value of a string grain that could not be read.
const UNKNOWN: &str = "unknown";

/// How long a helper program (only used off Linux) may take to describe the system.
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds the grains object once: collected facts, then `custom` on top.
///
/// On Linux it only reads files; on Windows and other systems it may run a
/// system tool (PowerShell, `uname`, `sysctl`) for a few facts, so call it
/// at start (from `spawn_blocking` if inside a busy runtime), not per job.
pub fn collect(custom: &Map<String, Value>) -> Value {
    let os = std::env::consts::OS;
    let facts = match os {
        "linux" => linux_facts(),
        "windows" => windows_facts(),
        _ => other_unix_facts(os),
    };
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|err| {
            tracing::debug!(%err, "hostname unreadable");
            UNKNOWN.to_owned()
        });
    let (ipv4, ipv6) = interface_addresses();
    let num_cpus = std::thread::available_parallelism()
        .map(|n| json!(n.get()))
        .unwrap_or(Value::Null);

    let mut grains = Map::new();
    let mut put = |k: &str, v: Value| {
        grains.insert(k.to_owned(), v);
    };
    put("os", json!(facts.os.clone().unwrap_or_else(|| os_name(os))));
    put("os_family", json!(facts.os_family));
    put("osrelease", json!(facts.osrelease));
    put("osfullname", json!(facts.osfullname));
    put("oscodename", json!(facts.oscodename));
    put("kernel", json!(kernel_name(os)));
    put("kernelrelease", json!(facts.kernelrelease));
    put("host", json!(short_host(&hostname)));
    put("fqdn", json!(hostname));
    put("ipv4", json!(ipv4));
    put("ipv6", json!(ipv6));
    put("num_cpus", num_cpus);
    put("cpu_model", json!(facts.cpu_model));
    put(
        "mem_total",
        facts.mem_total_mib.map_or(Value::Null, |m| json!(m)),
    );
    put("cpuarch", json!(std::env::consts::ARCH));
    put("halite_version", json!(env!("CARGO_PKG_VERSION")));
    Value::Object(merge(grains, custom))
}

/// Custom grains override or extend collected ones at top level.
fn merge(mut grains: Map<String, Value>, custom: &Map<String, Value>) -> Map<String, Value> {
    for (key, value) in custom {
        grains.insert(key.clone(), value.clone());
    }
    grains
}

/// The facts whose source differs per system.
#[derive(Debug, PartialEq)]
struct Facts {
    /// The distribution's name as Salt's `os` grain has it (`Debian`,
    /// `Ubuntu`, `RedHat`...); `None`: the system's name (`Linux`,
    /// `Windows`).
    os: Option<String>,
    os_family: String,
    osrelease: String,
    osfullname: String,
    oscodename: String,
    kernelrelease: String,
    cpu_model: String,
    mem_total_mib: Option<u64>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            os: None,
            os_family: UNKNOWN.to_owned(),
            osrelease: UNKNOWN.to_owned(),
            osfullname: UNKNOWN.to_owned(),
            oscodename: UNKNOWN.to_owned(),
            kernelrelease: UNKNOWN.to_owned(),
            cpu_model: UNKNOWN.to_owned(),
            mem_total_mib: None,
        }
    }
}

/// Reads a file for a grain; `None` (logged) if unreadable.
fn read(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) => {
            tracing::debug!(path, %err, "grain source unreadable");
            None
        }
    }
}

fn linux_facts() -> Facts {
    let mut facts = Facts::default();
    if let Some(text) = read("/etc/os-release").or_else(|| read("/usr/lib/os-release")) {
        let release = parse_os_release(&text);
        let id = release.get("ID").map(String::as_str).unwrap_or("");
        let id_like = release.get("ID_LIKE").map(String::as_str).unwrap_or("");
        facts.os_family = os_family(id, id_like);
        facts.os = distro_name(id);
        let field = |k: &str| release.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = field("VERSION_ID") {
            facts.osrelease = v;
        }
        if let Some(v) = field("NAME") {
            facts.osfullname = v;
        }
        if let Some(v) = field("VERSION_CODENAME") {
            facts.oscodename = v;
        }
    }
    if let Some(text) = read("/proc/sys/kernel/osrelease") {
        let text = text.trim();
        if !text.is_empty() {
            facts.kernelrelease = text.to_owned();
        }
    }
    if let Some(model) = read("/proc/cpuinfo").and_then(|t| cpu_model_from_cpuinfo(&t)) {
        facts.cpu_model = model;
    }
    facts.mem_total_mib = read("/proc/meminfo").and_then(|t| mem_total_mib_from_meminfo(&t));
    facts
}

fn windows_facts() -> Facts {
    let mut facts = Facts {
        os_family: "Windows".to_owned(),
        ..Facts::default()
    };
    let script = "$o = Get-CimInstance Win32_OperatingSystem; \
                  $p = Get-CimInstance Win32_Processor | Select-Object -First 1; \
                  'caption=' + $o.Caption; 'version=' + $o.Version; \
                  'mem_kib=' + $o.TotalVisibleMemorySize; 'cpu=' + $p.Name";
    let out = probe(
        "powershell.exe",
        &["-NoProfile", "-NonInteractive", "-Command", script],
    );
    let values = out.as_deref().map(parse_key_values).unwrap_or_default();
    let field = |k: &str| values.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(version) = field("version") {
        facts.kernelrelease = version;
    }
    if let Some(caption) = field("caption") {
        facts.osrelease = windows_osrelease(&caption);
        facts.osfullname = caption;
    }
    facts.cpu_model = field("cpu")
        .or_else(|| std::env::var("PROCESSOR_IDENTIFIER").ok())
        .unwrap_or_else(|| UNKNOWN.to_owned());
    facts.mem_total_mib = field("mem_kib")
        .and_then(|k| k.parse::<u64>().ok())
        .map(|kib| kib / 1024);
    facts
}

fn other_unix_facts(os: &str) -> Facts {
    let mut facts = Facts {
        os_family: os_name(os),
        ..Facts::default()
    };
    let line = |program: &str, args: &[&str]| {
        probe(program, args)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    if let Some(release) = line("uname", &["-r"]) {
        facts.kernelrelease = release;
    }
    facts.osrelease = if os == "macos" {
        line("sw_vers", &["-productVersion"])
    } else {
        None
    }
    .unwrap_or_else(|| facts.kernelrelease.clone());
    if let Some(model) = line("sysctl", &["-n", "machdep.cpu.brand_string"])
        .or_else(|| line("sysctl", &["-n", "hw.model"]))
    {
        facts.cpu_model = model;
    }
    facts.mem_total_mib = line("sysctl", &["-n", "hw.memsize"])
        .or_else(|| line("sysctl", &["-n", "hw.physmem"]))
        .and_then(|b| b.parse::<u64>().ok())
        .map(|bytes| bytes / (1024 * 1024));
    facts
}

/// Runs a system tool and returns its stdout, or `None` (logged) if it
/// cannot start, fails or takes longer than [`PROBE_TIMEOUT`]. Only for
/// small outputs (the pipe is read after the tool exits).
fn probe(program: &str, args: &[&str]) -> Option<String> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            tracing::debug!(program, %err, "grain probe cannot start");
            return None;
        }
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(status)) => {
                tracing::debug!(program, %status, "grain probe failed");
                return None;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                tracing::debug!(program, "grain probe timed out");
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(err) => {
                tracing::debug!(program, %err, "grain probe wait failed");
                return None;
            }
        }
    }
    let mut out = Vec::new();
    let mut stdout = child.stdout.take()?;
    std::io::Read::read_to_end(&mut stdout, &mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// `os` grain from Rust's OS name.
fn os_name(os: &str) -> String {
    match os {
        "linux" => "Linux",
        "windows" => "Windows",
        "macos" => "MacOS",
        "freebsd" => "FreeBSD",
        "openbsd" => "OpenBSD",
        "netbsd" => "NetBSD",
        "dragonfly" => "DragonFly",
        "solaris" | "illumos" => "Solaris",
        "android" => "Android",
        other => return capitalize(other),
    }
    .to_owned()
}

/// `kernel` grain from Rust's OS name (as `uname -s` says it).
fn kernel_name(os: &str) -> String {
    match os {
        "macos" | "ios" => "Darwin".to_owned(),
        "solaris" | "illumos" => "SunOS".to_owned(),
        other => os_name(other),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => UNKNOWN.to_owned(),
    }
}

/// Parses os-release(5): `KEY=value` lines, values optionally quoted.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = match raw.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let inner = raw.strip_prefix(q).unwrap_or(raw);
                let inner = inner.strip_suffix(q).unwrap_or(inner);
                unescape(inner)
            }
            _ => raw.to_owned(),
        };
        out.insert(key.trim().to_owned(), value);
    }
    out
}

/// Removes the shell backslash escapes os-release allows (`\"`, `\\`, `\$`, `` \` ``).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Salt's `os_family` from os-release `ID` then `ID_LIKE`.
/// Salt's `os` grain for an os-release `ID`: the distribution (`Debian`,
/// `Ubuntu`, `RedHat` for RHEL, ...), so `G@os:Debian` targets as in
/// Salt; `None` without an ID (then `os` is `Linux`).
fn distro_name(id: &str) -> Option<String> {
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    Some(
        match id {
            "debian" => "Debian",
            "ubuntu" => "Ubuntu",
            "rhel" => "RedHat",
            "centos" => "CentOS",
            "rocky" => "Rocky",
            "almalinux" => "AlmaLinux",
            "fedora" => "Fedora",
            "ol" => "OEL",
            "amzn" => "Amazon",
            "sles" | "sled" => "SUSE",
            "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => "openSUSE",
            "arch" => "Arch",
            "alpine" => "Alpine",
            "linuxmint" => "Mint",
            "raspbian" => "Raspbian",
            "gentoo" => "Gentoo",
            "nixos" => "NixOS",
            other => return Some(capitalize(other)),
        }
        .to_owned(),
    )
}

fn os_family(id: &str, id_like: &str) -> String {
    let known = |name: &str| -> Option<&'static str> {
        Some(match name {
            "debian" | "ubuntu" | "raspbian" | "linuxmint" | "devuan" | "kali" | "pop" => "Debian",
            "rhel" | "centos" | "fedora" | "rocky" | "almalinux" | "ol" | "amzn" | "scientific"
            | "cloudlinux" | "virtuozzo" | "eurolinux" | "openEuler" | "anolis" => "RedHat",
            "suse" | "sles" | "sled" | "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => {
                "Suse"
            }
            "arch" | "manjaro" | "endeavouros" => "Arch",
            "alpine" => "Alpine",
            "gentoo" => "Gentoo",
            "void" => "Void",
            "nixos" => "NixOS",
            "mageia" | "mandriva" => "Mandriva",
            "slackware" => "Slackware",
            _ => return None,
        })
    };
    let id = id.trim();
    if let Some(family) = known(id) {
        return family.to_owned();
    }
    if let Some(family) = id_like.split_whitespace().find_map(known) {
        return family.to_owned();
    }
    if id.is_empty() {
        UNKNOWN.to_owned()
    } else {
        capitalize(id)
    }
}

/// The CPU model from /proc/cpuinfo (x86 `model name`; ARM and others use
/// other keys).
fn cpu_model_from_cpuinfo(text: &str) -> Option<String> {
    let fields: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    [
        "model name",
        "cpu model",
        "cpu",
        "Model",
        "Hardware",
        "Processor",
    ]
    .iter()
    .find_map(|want| fields.iter().find(|(k, _)| k == want))
    .map(|(_, v)| (*v).to_owned())
}

/// `MemTotal` from /proc/meminfo (kB) in MiB.
fn mem_total_mib_from_meminfo(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kib / 1024)
    })
}

/// `key=value` lines (the Windows probe's output).
fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// Salt-style Windows `osrelease` from the OS caption: `10`, `11`,
/// `2019Server`, `2012ServerR2`.
fn windows_osrelease(caption: &str) -> String {
    let words: Vec<&str> = caption.split_whitespace().collect();
    let Some(at) = words.iter().position(|w| *w == "Windows") else {
        return UNKNOWN.to_owned();
    };
    match words.get(at + 1) {
        Some(&"Server") => {
            let year = words
                .iter()
                .skip(at + 2)
                .find(|w| w.len() == 4 && w.chars().all(|c| c.is_ascii_digit()));
            match year {
                Some(year) => {
                    let r2 = if words.contains(&"R2") { "R2" } else { "" };
                    format!("{year}Server{r2}")
                }
                None => "Server".to_owned(),
            }
        }
        Some(version) if version.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            (*version).to_owned()
        }
        _ => UNKNOWN.to_owned(),
    }
}

/// The short host name: up to the first dot.
fn short_host(hostname: &str) -> String {
    hostname.split('.').next().unwrap_or(hostname).to_owned()
}

/// All interface addresses (loopback included), sorted, each family apart.
fn interface_addresses() -> (Vec<String>, Vec<String>) {
    let interfaces = match if_addrs::get_if_addrs() {
        Ok(list) => list,
        Err(err) => {
            tracing::debug!(%err, "interface addresses unreadable");
            Vec::new()
        }
    };
    split_addresses(interfaces.iter().map(|i| i.ip()))
}

fn split_addresses(addresses: impl Iterator<Item = IpAddr>) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ip in addresses {
        match ip {
            IpAddr::V4(a) => v4.push(a),
            IpAddr::V6(a) => v6.push(a),
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (
        v4.iter().map(ToString::to_string).collect(),
        v6.iter().map(ToString::to_string).collect(),
    )
}

/// `grains.items`, `grains.get`, `grains.ls` over the call's grains.
pub(crate) struct GrainsModule;

impl Module for GrainsModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let result = match MODULE.function(function) {
                Some(&ITEMS) => {
                    Args::from_call(&ITEMS, &call).map(|_| Outcome::ok((*call.grains).clone()))
                }
                Some(&GET) => get(&call),
                Some(&ITEM) => Ok(item(&call)),
                Some(&LS) => Args::from_call(&LS, &call).map(|_| {
                    let mut keys: Vec<&String> = call
                        .grains
                        .as_object()
                        .map(|m| m.keys().collect())
                        .unwrap_or_default();
                    keys.sort();
                    Outcome::ok(json!(keys))
                }),
                _ => Ok(unknown_function(self, function)),
            };
            result.unwrap_or_else(Outcome::from)
        })
    }
}

/// `grains.item KEY...`: `{KEY: value}` for each key named (positional,
/// or `key=` lists), nested with `:`; a missing grain is `""`, as in Salt.
fn item(call: &Call) -> Outcome {
    let mut keys: Vec<String> = call
        .args
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .collect();
    if let Some(more) = call.kwargs.get("key") {
        match more {
            Value::Array(list) => {
                keys.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)))
            }
            Value::String(one) => keys.push(one.clone()),
            _ => {}
        }
    }
    let found: Map<String, Value> = keys
        .into_iter()
        .map(|key| {
            let value = lookup(&call.grains, &key, ":")
                .cloned()
                .unwrap_or_else(|| json!(""));
            (key, value)
        })
        .collect();
    Outcome::ok(Value::Object(found))
}

/// `grains.get key [default] [delimiter]`: nested lookup like Salt
/// (`locale:lang`, list indices as numbers); absent gives `default` or null.
fn get(call: &Call) -> Result<Outcome, ArgError> {
    let args = Args::from_call(&GET, call)?;
    let key = args.string("key")?.ok_or_else(|| args.missing("key"))?;
    let delimiter = args
        .string("delimiter")?
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| ":".to_owned());
    let default = args.value("default").cloned().unwrap_or(Value::Null);
    let found = lookup(&call.grains, &key, &delimiter)
        .cloned()
        .unwrap_or(default);
    Ok(Outcome::ok(found))
}

/// Walks `key` split on `delimiter` through objects (by name) and lists (by index).
fn lookup<'v>(grains: &'v Value, key: &str, delimiter: &str) -> Option<&'v Value> {
    key.split(delimiter)
        .try_fold(grains, |value, part| match value {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;
    use crate::RETCODE_BAD_ARGS;
    use std::sync::Arc;

    const KEYS: &[&str] = &[
        "os",
        "os_family",
        "osrelease",
        "kernel",
        "kernelrelease",
        "host",
        "fqdn",
        "ipv4",
        "ipv6",
        "num_cpus",
        "cpu_model",
        "mem_total",
        "halite_version",
        "cpuarch",
    ];

    #[test]
    fn collect_has_every_key() {
        let g = collect(&Map::new());
        for key in KEYS {
            assert!(g.get(key).is_some(), "missing grain {key}: {g}");
        }
        assert_eq!(g["halite_version"], json!(env!("CARGO_PKG_VERSION")));
        assert_eq!(g["cpuarch"], json!(std::env::consts::ARCH));
        assert!(g["ipv4"].is_array() && g["ipv6"].is_array());
        assert!(g["num_cpus"].as_u64().is_some_and(|n| n >= 1));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn collect_on_linux_reads_the_system() {
        let g = collect(&Map::new());
        // This machine is Debian (its os-release says so): Salt's `os`.
        let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let id = parse_os_release(&release)
            .get("ID")
            .cloned()
            .unwrap_or_default();
        let expected = distro_name(&id).unwrap_or_else(|| "Linux".into());
        assert_eq!(g["os"], json!(expected));
        assert_eq!(g["kernel"], json!("Linux"));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        assert_eq!(g["kernelrelease"], json!(kernel.trim()));
        assert!(
            g["mem_total"].as_u64().is_some_and(|m| m > 0),
            "{}",
            g["mem_total"]
        );
        let ipv4: Vec<&str> = g["ipv4"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(ipv4.contains(&"127.0.0.1"), "{ipv4:?}");
        let host = g["host"].as_str().unwrap_or_default();
        assert!(!host.is_empty() && !host.contains('.'));
    }

    #[test]
    fn custom_grains_override_and_extend() {
        let custom = match json!({"os": "Custom", "roles": ["web", "db"]}) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let g = collect(&custom);
        assert_eq!(g["os"], json!("Custom"));
        assert_eq!(g["roles"], json!(["web", "db"]));
        assert!(g.get("kernel").is_some());
    }

    #[test]
    fn os_release_is_parsed_with_quotes_and_escapes() {
        let text = "# comment\nNAME=\"Ubuntu\"\nVERSION_ID='22.04'\nID=ubuntu\nID_LIKE=debian\nPRETTY_NAME=\"Say \\\"hi\\\"\"\nbroken line\n";
        let r = parse_os_release(text);
        assert_eq!(r.get("NAME").map(String::as_str), Some("Ubuntu"));
        assert_eq!(r.get("VERSION_ID").map(String::as_str), Some("22.04"));
        assert_eq!(r.get("ID").map(String::as_str), Some("ubuntu"));
        assert_eq!(r.get("PRETTY_NAME").map(String::as_str), Some("Say \"hi\""));
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn os_is_the_distribution_as_in_salt() {
        assert_eq!(distro_name("debian").as_deref(), Some("Debian"));
        assert_eq!(distro_name("rhel").as_deref(), Some("RedHat"));
        assert_eq!(distro_name("kali").as_deref(), Some("Kali"));
        assert_eq!(distro_name(" "), None);
    }

    #[test]
    fn os_family_from_id_and_id_like() {
        assert_eq!(os_family("debian", ""), "Debian");
        assert_eq!(os_family("ubuntu", "debian"), "Debian");
        assert_eq!(os_family("rocky", "rhel centos fedora"), "RedHat");
        assert_eq!(os_family("somethingnew", "rhel fedora"), "RedHat");
        assert_eq!(os_family("opensuse-leap", "suse opensuse"), "Suse");
        assert_eq!(os_family("exotic", ""), "Exotic");
        assert_eq!(os_family("", ""), "unknown");
    }

    #[test]
    fn cpuinfo_and_meminfo_are_parsed() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n";
        assert_eq!(
            cpu_model_from_cpuinfo(x86).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 108.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n";
        assert_eq!(
            cpu_model_from_cpuinfo(arm).as_deref(),
            Some("Raspberry Pi 4 Model B")
        );
        assert_eq!(cpu_model_from_cpuinfo("garbage"), None);
        let mem = "MemFree:  100 kB\nMemTotal:       16318480 kB\n";
        assert_eq!(mem_total_mib_from_meminfo(mem), Some(15936));
        assert_eq!(mem_total_mib_from_meminfo("MemTotal: lots"), None);
    }

    #[test]
    fn windows_caption_gives_salt_osrelease() {
        assert_eq!(
            windows_osrelease("Microsoft Windows Server 2019 Datacenter"),
            "2019Server"
        );
        assert_eq!(
            windows_osrelease("Microsoft Windows Server 2012 R2 Standard"),
            "2012ServerR2"
        );
        assert_eq!(windows_osrelease("Microsoft Windows 10 Pro"), "10");
        assert_eq!(windows_osrelease("Microsoft Windows 11 Enterprise"), "11");
        assert_eq!(windows_osrelease("Something else"), "unknown");
        let kv = parse_key_values(
            "caption=Microsoft Windows 10 Pro\r\nversion=10.0.19045\r\nmem_kib=\r\n",
        );
        assert_eq!(kv.get("version").map(String::as_str), Some("10.0.19045"));
        assert_eq!(kv.get("mem_kib").map(String::as_str), Some(""));
    }

    #[test]
    fn names_per_os() {
        assert_eq!(os_name("linux"), "Linux");
        assert_eq!(os_name("windows"), "Windows");
        assert_eq!(kernel_name("macos"), "Darwin");
        assert_eq!(os_name("haiku"), "Haiku");
        assert_eq!(short_host("web01.example.com"), "web01");
        assert_eq!(short_host("web01"), "web01");
    }

    #[test]
    fn addresses_are_split_sorted_and_deduplicated() {
        let ips: Vec<IpAddr> = [
            "10.0.0.2",
            "::1",
            "127.0.0.1",
            "10.0.0.2",
            "9.1.1.1",
            "fd00::1",
        ]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
        let (v4, v6) = split_addresses(ips.into_iter());
        assert_eq!(v4, vec!["9.1.1.1", "10.0.0.2", "127.0.0.1"]);
        assert_eq!(v6, vec!["::1", "fd00::1"]);
    }

    fn grains_call(function: &str, args: Vec<Value>, kwargs: Value) -> Call {
        let mut c = call(&format!("grains.{function}"), args, kwargs);
        c.grains = Arc::new(json!({
            "os": "Linux",
            "ipv4": ["10.0.0.1", "127.0.0.1"],
            "locale": {"lang": "en_US"},
            "empty": null,
        }));
        c
    }

    async fn run(function: &str, args: Vec<Value>, kwargs: Value) -> Outcome {
        GrainsModule
            .call(function, grains_call(function, args, kwargs))
            .await
    }

    #[tokio::test]
    async fn get_top_level_nested_and_indexed() {
        assert_eq!(
            run("get", vec![json!("os")], json!({})).await,
            Outcome::ok(json!("Linux"))
        );
        assert_eq!(
            run("get", vec![json!("ipv4")], json!({})).await,
            Outcome::ok(json!(["10.0.0.1", "127.0.0.1"]))
        );
        assert_eq!(
            run("get", vec![json!("locale:lang")], json!({})).await,
            Outcome::ok(json!("en_US"))
        );
        assert_eq!(
            run("get", vec![json!("ipv4:1")], json!({})).await,
            Outcome::ok(json!("127.0.0.1"))
        );
        assert_eq!(
            run(
                "get",
                vec![],
                json!({"key": "locale/lang", "delimiter": "/"})
            )
            .await,
            Outcome::ok(json!("en_US"))
        );
    }

    #[tokio::test]
    async fn get_absent_gives_default_or_null() {
        assert_eq!(
            run("get", vec![json!("nope")], json!({})).await,
            Outcome::ok(Value::Null)
        );
        assert_eq!(
            run(
                "get",
                vec![json!("locale:nope"), json!("fallback")],
                json!({})
            )
            .await,
            Outcome::ok(json!("fallback"))
        );
        assert_eq!(
            run("get", vec![json!("os:deeper")], json!({"default": 5})).await,
            Outcome::ok(json!(5))
        );
        let missing = run("get", vec![], json!({})).await;
        assert_eq!(missing.retcode, RETCODE_BAD_ARGS);
    }

    #[tokio::test]
    async fn items_and_ls() {
        let items = run("items", vec![], json!({})).await;
        assert_eq!(items.data["locale"]["lang"], json!("en_US"));
        assert_eq!(
            run("ls", vec![], json!({})).await,
            Outcome::ok(json!(["empty", "ipv4", "locale", "os"]))
        );
        assert_eq!(
            run("ls", vec![], json!({"x": 1})).await.retcode,
            RETCODE_BAD_ARGS
        );
    }
}
