//! How `master-cli` shows things: per-minion blocks like Salt's
//! outputter, a summary line, tables, or one JSON document.

use std::io::Write;
use std::process::ExitCode;

use halite_model::{
    CheckRecord, EventRecord, JobSummary, JobView, KeysView, MinionView, PresenceEvent,
    ReturnRecord,
};
use halite_proto::message::EventBody;
use halite_proto::time::format_ms;
use serde::Serialize;

/// Writes one line to stdout (a closed pipe is not an error worth a panic).
pub fn line(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints a value as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    line(&serde_json::to_string_pretty(value)?);
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(data: &serde_json::Value) -> String {
    if let Some(text) = render_deploy(data) {
        return text;
    }
    match data {
        serde_json::Value::String(s) if !s.is_empty() => s.clone(),
        serde_json::Value::Bool(true) => "True".into(),
        serde_json::Value::Bool(false) => "False".into(),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

/// A deploy or rollback return in a few lines: what, where it ended,
/// how long, and what failed. Other data is shown as it is.
fn render_deploy(data: &serde_json::Value) -> Option<String> {
    let map = data.as_object()?;
    let text = |key: &str| map.get(key).and_then(|v| v.as_str());
    let (app, action, result) = (text("app")?, text("action")?, text("result")?);
    map.get("stages")?;
    let revision = text("revision")
        .map(|r| &r[..r.len().min(12)])
        .unwrap_or("-");
    let what = match text("reference") {
        Some(reference) => format!("{reference} ({revision})"),
        None => revision.to_owned(),
    };
    let ms = map.get("duration_ms").and_then(|v| v.as_u64()).unwrap_or(0);
    let mut lines = vec![format!("{action} {app} {what}: {result} in {ms} ms")];
    if let Some(release) = text("release") {
        let previous = text("previous")
            .map(|p| format!(", previous {p}"))
            .unwrap_or_default();
        lines.push(format!("release {release}{previous}"));
    }
    if let Some(message) = text("message") {
        lines.push(message.to_owned());
    }
    if let Some(error) = text("error") {
        lines.push(format!("error: {error}"));
    }
    for warning in map
        .get("warnings")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(w) = warning.as_str() {
            lines.push(format!("warning: {w}"));
        }
    }
    Some(lines.join("\n"))
}

/// One minion's return as a block.
pub fn one_return(ret: &ReturnRecord) {
    let header = if ret.success {
        format!("{}:", ret.id)
    } else {
        format!("{}: (failed, retcode {})", ret.id, ret.retcode)
    };
    line(&header);
    line(&indent(&render(&ret.data)));
}

/// A live event line.
pub fn event(event: &EventRecord) {
    match &event.body {
        EventBody::Progress { line: text, stream } => {
            line(&format!("[{}] {stream}: {text}", event.id))
        }
        EventBody::Stage {
            stage,
            status,
            duration_ms,
            message,
        } => {
            let mut text = format!("[{}] stage {stage} {status}", event.id);
            if let Some(ms) = duration_ms {
                text.push_str(&format!(" ({ms} ms)"));
            }
            if let Some(message) = message {
                text.push_str(&format!(": {message}"));
            }
            line(&text);
        }
    }
}

/// Counts for the summary line.
fn counts(view: &JobView) -> (usize, usize, usize) {
    let succeeded = view.returns.values().filter(|r| r.success).count();
    (
        succeeded,
        view.returns.len() - succeeded,
        view.missing.len(),
    )
}

/// The closing summary line, and who did not return (telling apart the
/// minions that were already down when the job was published).
pub fn summary(view: &JobView) {
    for id in &view.missing {
        if view.job.down.contains(id) {
            line(&format!(
                "{id}:\n    Minion was down before the job and did not return. [No response]"
            ));
        } else {
            line(&format!("{id}:\n    Minion did not return. [No response]"));
        }
    }
    let (succeeded, failed, missing) = counts(view);
    let down = view
        .missing
        .iter()
        .filter(|id| view.job.down.contains(id))
        .count();
    let missing_text = if down > 0 {
        format!("{missing} did not return ({down} down before the job)")
    } else {
        format!("{missing} did not return")
    };
    line(&format!(
        "\n-------------------------------------------\nSummary: {} targeted, {succeeded} succeeded, {failed} failed, {missing_text} (jid {})",
        count(view.job.expected.len(), "minion", "minions"),
        view.job.jid
    ));
}

/// A whole job: blocks and summary, or JSON.
pub fn job(view: &JobView, json: bool) -> anyhow::Result<()> {
    if json {
        let (succeeded, failed, missing) = counts(view);
        return print_json(&serde_json::json!({
            "jid": view.job.jid,
            "fun": view.job.fun,
            "target": view.job.target,
            "published_by": view.job.published_by,
            "minions": view.job.expected,
            "returns": view.returns,
            "missing": view.missing,
            "down_before_job": view.job.down,
            "summary": {
                "succeeded": succeeded,
                "failed": failed,
                "did_not_return": missing,
                "down_before_job": view.missing.iter().filter(|id| view.job.down.contains(id)).count(),
            },
        }));
    }
    match &view.job.published_by {
        Some(master) => line(&format!(
            "Job {}: {}, published by master {master} (returns sent here too) at {}",
            view.job.jid,
            view.job.fun,
            format_ms(view.job.issued_at)
        )),
        None => line(&format!(
            "Job {}: {} on {} ({}) by {} at {}",
            view.job.jid,
            view.job.fun,
            view.job.target,
            view.job.tgt_type,
            view.job.user,
            format_ms(view.job.issued_at)
        )),
    }
    for ret in view.returns.values() {
        one_return(ret);
    }
    summary(view);
    Ok(())
}

/// 0 only when every expected minion returned success.
pub fn exit_code(view: &JobView) -> ExitCode {
    // Another master's job: who was expected is only known there.
    let someone = if view.job.published_by.is_some() {
        !view.returns.is_empty()
    } else {
        !view.job.expected.is_empty()
    };
    let all_ok = someone && view.missing.is_empty() && view.returns.values().all(|r| r.success);
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Rows printed in columns as wide as their widest cell (headers
/// included), two spaces apart; the last column is not padded. Long
/// function names, targets and paths push the next column right instead
/// of running into it.
struct Columns {
    /// Right-aligned columns (counts, latencies).
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Columns {
    /// A table with these headers; a header starting with `>` is a
    /// right-aligned column (the `>` is not printed).
    fn new(headers: &[&str]) -> Columns {
        Columns {
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            rows: vec![headers
                .iter()
                .map(|h| h.trim_start_matches('>').to_owned())
                .collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        let columns = self.right.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut text = String::new();
            for (c, cell) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                let pad = widths[c].saturating_sub(cell.chars().count());
                if c > 0 {
                    text.push_str("  ");
                }
                if self.right[c] {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(cell);
                } else {
                    text.push_str(cell);
                    if !last {
                        text.push_str(&" ".repeat(pad));
                    }
                }
            }
            line(&text);
        }
    }
}

/// `requests list`: one line each.
pub fn requests(requests: &[halite_model::ReleaseRequest], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&requests);
    }
    let mut table = Columns::new(&[
        ">ID",
        "APP",
        "ENV",
        "VERSION",
        "REVISION",
        "STATE",
        "BY",
        "ASKED (UTC)",
        "REASON",
    ]);
    for r in requests {
        table.row(vec![
            r.id.to_string(),
            r.app.clone(),
            r.env.clone(),
            version_text(&r.version),
            r.revision
                .as_deref()
                .map_or("-", |v| &v[..v.len().min(12)])
                .to_owned(),
            r.state.to_string(),
            r.requester.clone(),
            format_ms(r.at_creation()),
            r.reason.clone(),
        ]);
    }
    table.print();
    line(&count(requests.len(), "request", "requests"));
    Ok(())
}

/// `requests show` (and the answer to every step): the request and its
/// timeline.
pub fn request(request: &halite_model::ReleaseRequest, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(request);
    }
    line(&format!(
        "Request {} ({:?}): {} {} {} — {}",
        request.id,
        request.kind,
        request.app,
        request.env,
        version_text(&request.version),
        request.state
    ));
    if let Some(revision) = &request.revision {
        line(&format!("  revision {revision}"));
    }
    if let Some(jid) = &request.jid {
        line(&format!("  job {jid}"));
    }
    let mut table = Columns::new(&["TIME (UTC)", "STATE", "BY", "WHY"]);
    for step in &request.history {
        table.row(vec![
            format_ms(step.at),
            step.state.to_string(),
            step.by.clone(),
            step.reason.clone().unwrap_or_default(),
        ]);
    }
    table.print();
    Ok(())
}

/// `tag=v3`, `version=1.4.2`, `to=20261122-...` — what a request or a
/// rollout names.
fn version_text(version: &serde_json::Map<String, serde_json::Value>) -> String {
    let words: Vec<String> = version
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "tag" | "branch" | "rev" | "version" | "to"))
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            )
        })
        .collect();
    if words.is_empty() {
        "previous".to_owned()
    } else {
        words.join(" ")
    }
}

/// "1 minion", "3 minions".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `jobs list`.
pub fn jobs(jobs: &[JobSummary], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&jobs);
    }
    let mut table = Columns::new(&[
        "JID",
        "TIME (UTC)",
        "FUNCTION",
        "TARGET",
        ">RETURNED",
        ">FAILED",
        "USER",
    ]);
    for job in jobs {
        table.row(vec![
            job.jid.to_string(),
            format_ms(job.issued_at),
            job.fun.clone(),
            job.target.clone(),
            format!("{}/{}", job.returned, job.expected),
            job.failed.to_string(),
            job.user.clone(),
        ]);
    }
    table.print();
    Ok(())
}

/// `minions`.
pub fn minions(minions: &[MinionView], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&minions);
    }
    let mut table = Columns::new(&[
        "ID",
        "STATUS",
        "LAST SEEN (UTC)",
        ">LATENCY",
        "VERSION",
        "OS",
    ]);
    for m in minions {
        table.row(vec![
            m.id.clone(),
            m.status.clone(),
            m.last_seen.map(format_ms).unwrap_or_else(|| "never".into()),
            m.latency_ms
                .map(|l| format!("{l} ms"))
                .unwrap_or_else(|| "-".into()),
            m.version.as_deref().unwrap_or("-").to_owned(),
            m.os.as_deref().unwrap_or("-").to_owned(),
        ]);
    }
    table.print();
    let up = minions.iter().filter(|m| m.status == "up").count();
    line(&format!(
        "{}, {up} up, {} down",
        count(minions.len(), "minion", "minions"),
        minions.len() - up
    ));
    Ok(())
}

/// `minions --events`: up/down transitions, newest first.
pub fn presence(events: &[PresenceEvent], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&events);
    }
    let mut table = Columns::new(&["TIME (UTC)", "EVENT", "ID"]);
    for event in events {
        table.row(vec![
            format_ms(event.at),
            event.event.clone(),
            event.id.clone(),
        ]);
    }
    table.print();
    Ok(())
}

/// `minions --checks`: check results newest first, then how many checks
/// each minion failed in the period.
pub fn checks(checks: &[CheckRecord], hours: u64, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&checks);
    }
    let mut table = Columns::new(&["TIME (UTC)", "ID", "RESULT", "LATENCY"]);
    for check in checks {
        table.row(vec![
            format_ms(check.at),
            check.id.clone(),
            if check.ok { "ok" } else { "FAILED" }.to_owned(),
            check
                .latency_ms
                .map(|l| format!("{l} ms"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table.print();
    let mut failed: std::collections::BTreeMap<&str, usize> = Default::default();
    for check in checks.iter().filter(|c| !c.ok) {
        *failed.entry(check.id.as_str()).or_default() += 1;
    }
    if failed.is_empty() {
        line(&format!("No failed checks in the last {hours} h."));
    } else {
        line(&format!("Failed checks in the last {hours} h:"));
        for (id, n) in failed {
            line(&format!("  {id}: {n}"));
        }
    }
    Ok(())
}

/// `keys list` (ids by state) or `keys fingerprint` (with fingerprints).
pub fn keys(view: &KeysView, fingerprints: bool) {
    if fingerprints {
        line("Local Keys:");
        line(&format!("master.pub:  {}", view.master_fingerprint));
    }
    for (status, title) in super::KEY_SECTIONS {
        line(title);
        for key in view.keys.iter().filter(|k| k.status == status) {
            if fingerprints {
                line(&format!("{}:  {}", key.id, key.fingerprint));
            } else {
                line(&key.id);
            }
        }
    }
}

/// `versions APP`: tags newest first, then branches.
pub fn versions(versions: &[serde_json::Value], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&versions);
    }
    let text = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let mut table = Columns::new(&["KIND", "NAME", "COMMIT", "DATE (UTC)", "SUBJECT"]);
    for v in versions {
        let commit = text(v, "commit");
        table.row(vec![
            text(v, "kind"),
            text(v, "name"),
            commit[..commit.len().min(12)].to_owned(),
            format_ms(v["time"].as_u64().unwrap_or(0) * 1000),
            text(v, "subject"),
        ]);
    }
    table.print();
    line(&count(versions.len(), "version", "versions"));
    Ok(())
}

/// `changes` and `requests changes`: commits, then files with line counts.
pub fn changes(changes: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(changes);
    }
    let short = |v: &serde_json::Value| {
        let id = v.as_str().unwrap_or("");
        id[..id.len().min(12)].to_owned()
    };
    let from = match changes["from"].as_str() {
        Some(_) => short(&changes["from"]),
        None => "nothing live".into(),
    };
    line(&format!("From {from} to {}", short(&changes["to"])));
    if changes["backwards"].as_bool() == Some(true) {
        line("  (goes back to an older release: no new commits)");
    }
    let commits = changes["commits"].as_array().cloned().unwrap_or_default();
    let mut table = Columns::new(&["COMMIT", "DATE (UTC)", "AUTHOR", "SUBJECT"]);
    for c in &commits {
        table.row(vec![
            short(&c["id"]),
            format_ms(c["time"].as_u64().unwrap_or(0) * 1000),
            c["author"].as_str().unwrap_or("").to_owned(),
            c["subject"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    let more = if changes["truncated"].as_bool() == Some(true) {
        " (and more)"
    } else {
        ""
    };
    line(&format!(
        "{}{more}",
        count(commits.len(), "commit", "commits")
    ));
    let files = changes["files"].as_array().cloned().unwrap_or_default();
    let mut table = Columns::new(&["CHANGE", ">+", ">-", "FILE"]);
    let lines = |v: &serde_json::Value| v.as_u64().map_or("bin".to_owned(), |n| n.to_string());
    for f in &files {
        table.row(vec![
            f["change"].as_str().unwrap_or("").to_owned(),
            lines(&f["added"]),
            lines(&f["removed"]),
            f["path"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    line(&count(files.len(), "file changed", "files changed"));
    Ok(())
}

/// `schedules list`.
pub fn schedules(schedules: &[halite_model::Schedule], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&schedules);
    }
    let mut table = Columns::new(&["NAME", "CRON", "NEXT (UTC)", "LAST RUN", "OWNER", "JOB"]);
    for s in schedules {
        table.row(vec![
            s.name.clone(),
            s.cron.clone(),
            match (s.paused, s.next_due) {
                (true, _) => "paused".into(),
                (false, Some(next)) => format_ms(next),
                (false, None) => "never".into(),
            },
            s.runs.last().map_or("-".into(), run_text),
            s.owner.clone(),
            format!("{} on {}", s.job.fun, s.job.target),
        ]);
    }
    table.print();
    line(&count(schedules.len(), "schedule", "schedules"));
    Ok(())
}

/// `schedules show|add|pause|resume`: the schedule and its latest runs.
pub fn schedule(schedule: &halite_model::Schedule, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(schedule);
    }
    line(&format!(
        "Schedule {} `{}`: {} on {} ({:?}, owner {}){}",
        schedule.name,
        schedule.cron,
        schedule.job.fun,
        schedule.job.target,
        schedule.origin,
        schedule.owner,
        if schedule.paused { " — paused" } else { "" }
    ));
    if let Some(next) = schedule.next_due {
        line(&format!("  next {}", format_ms(next)));
    }
    let mut table = Columns::new(&["DUE (UTC)", "RUN"]);
    for run in schedule.runs.iter().rev().take(20) {
        table.row(vec![format_ms(run.due), run_text(run)]);
    }
    table.print();
    Ok(())
}

/// Apps' triggers and whether they are paused.
pub fn triggers(all: &[halite_model::TriggerState], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&all);
    }
    let mut table = Columns::new(&["APP", "ENV", "STATE"]);
    for t in all {
        let state = match &t.paused {
            Some(p) => format!("paused by {} at {}", p.by, format_ms(p.at)),
            None => "on".to_owned(),
        };
        table.row(vec![t.app.clone(), t.env.clone(), state]);
    }
    table.print();
    Ok(())
}

/// Rollouts, one line each.
pub fn rollouts(all: &[halite_model::Rollout], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&all);
    }
    let mut table = Columns::new(&[
        "ID",
        "APP",
        "VERSION",
        "STATE",
        "STEP",
        "BY",
        "STARTED (UTC)",
    ]);
    for r in all {
        table.row(vec![
            r.id.to_string(),
            r.app.clone(),
            version_text(&r.version),
            r.state.to_string(),
            format!("{}/{}", (r.current + 1).min(r.steps.len()), r.steps.len()),
            r.user.clone(),
            format_ms(r.created_at),
        ]);
    }
    table.print();
    Ok(())
}

/// A rollout: its steps, its rollback and its history.
pub fn rollout(r: &halite_model::Rollout, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(r);
    }
    line(&format!(
        "Rollout {} of {} {} by {}: {}",
        r.id,
        r.app,
        version_text(&r.version),
        r.user,
        r.state
    ));
    if let Some(failure) = &r.failure {
        line(&format!("  stopped: {failure}"));
    }
    let mut table = Columns::new(&[
        "STEP", "PHASE", "APP", "MINIONS", "RELEASED", "FAILED", "MISSING", "JOB",
    ]);
    for (i, step) in r.steps.iter().enumerate() {
        table.row(vec![
            (i + 1).to_string(),
            format!("{:?}", step.phase).to_lowercase(),
            r.group(step.group).0.to_owned(),
            step.minions.join(","),
            step.released.len().to_string(),
            step.failed.join(","),
            step.missing.join(","),
            step.jid.as_ref().map(|j| j.to_string()).unwrap_or_default(),
        ]);
    }
    table.print();
    for (i, step) in r.steps.iter().enumerate() {
        for gate in &step.gates {
            let verdict = if gate.passed { "passed" } else { "FAILED" };
            line(&format!(
                "  step {} {}: {verdict}: {}",
                i + 1,
                gate.gate,
                gate.detail
            ));
        }
    }
    if let Some(rollback) = &r.rollback {
        let back = if rollback.rolled_back.is_empty() {
            "-".to_owned()
        } else {
            rollback.rolled_back.join(", ")
        };
        line(&format!(
            "  rollback: back {back}; not back {}",
            rollback.not_back()
        ));
    }
    for event in &r.history {
        line(&format!(
            "  {}  {}  {}",
            format_ms(event.at),
            event.by,
            event.what
        ));
    }
    Ok(())
}

/// `job 2026...` or `refused: ...`.
fn run_text(run: &halite_model::ScheduleRun) -> String {
    match (&run.jid, &run.error) {
        (Some(jid), _) => format!("job {jid}"),
        (None, Some(error)) => format!("not run: {error}"),
        (None, None) => "-".into(),
    }
}

/// `apps`: one line per app.
pub fn apps(apps: &[halite_proto::app::AppSpec], json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&apps);
    }
    let mut table = Columns::new(&["APP", "TARGET", "PATH", "REPOSITORY"]);
    for app in apps {
        table.row(vec![
            app.name.clone(),
            app.target.clone(),
            app.path.display().to_string(),
            app.repo.to_string(),
        ]);
    }
    table.print();
    Ok(())
}

/// `releases APP`: what is live on each minion; with `history`, every
/// deploy and rollback.
pub fn releases(view: &halite_model::AppReleases, history: bool, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(view);
    }
    let short = |r: &Option<String>| {
        r.as_deref()
            .map(|r| r[..r.len().min(12)].to_owned())
            .unwrap_or_else(|| "-".into())
    };
    if history {
        let mut table = Columns::new(&[
            "TIME (UTC)",
            "MINION",
            "ACTION",
            "RESULT",
            "REF",
            "REVISION",
            "JID",
            "ERROR",
        ]);
        for r in &view.history {
            table.row(vec![
                format_ms(r.at),
                r.minion.clone(),
                r.action.clone(),
                r.result.clone(),
                r.reference.as_deref().unwrap_or("-").to_owned(),
                short(&r.revision),
                r.jid.to_string(),
                r.error.as_deref().unwrap_or("").to_owned(),
            ]);
        }
        table.print();
        return Ok(());
    }
    if view.live.is_empty() {
        line(&format!("{} is not live on any minion yet", view.app));
        return Ok(());
    }
    let mut table = Columns::new(&["MINION", "REF", "REVISION", "SINCE (UTC)", "JID", "RELEASE"]);
    for r in &view.live {
        table.row(vec![
            r.minion.clone(),
            r.reference.as_deref().unwrap_or("-").to_owned(),
            short(&r.revision),
            format_ms(r.at),
            r.jid.to_string(),
            r.release.as_deref().unwrap_or("-").to_owned(),
        ]);
    }
    table.print();
    Ok(())
}

/// `modules list`: one line per minion and module, then who did not answer.
pub fn module_versions(view: &JobView) {
    let mut rows = Vec::new();
    for (minion, ret) in &view.returns {
        match ret.data.as_object() {
            Some(modules) if ret.success && modules.is_empty() => {
                rows.push((
                    minion.clone(),
                    "-".to_owned(),
                    "no Lua modules".to_owned(),
                    String::new(),
                ));
            }
            Some(modules) if ret.success => {
                for (name, info) in modules {
                    let status = info["status"].as_str().unwrap_or("?").to_owned();
                    let detail = info["sha256"]
                        .as_str()
                        .map(|s| s.chars().take(12).collect())
                        .or_else(|| info["error"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    rows.push((minion.clone(), name.clone(), status, detail));
                }
            }
            _ => rows.push((
                minion.clone(),
                "-".to_owned(),
                "failed".to_owned(),
                ret.data.to_string(),
            )),
        }
    }
    let mut table = Columns::new(&["MINION", "MODULE", "STATUS", "VERSION"]);
    for (minion, module, status, detail) in rows {
        table.row(vec![minion, module, status, detail]);
    }
    for minion in &view.missing {
        table.row(vec![minion.clone(), "-".into(), "did not return".into()]);
    }
    table.print();
}
