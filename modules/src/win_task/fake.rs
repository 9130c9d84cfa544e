//! A test double of `schtasks.exe` that keeps tasks the way Task
//! Scheduler does (registered from XML, enabled or disabled, ready or
//! running, last run and result) and answers in schtasks' formats and
//! error messages.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use super::schtasks::{Schtasks, ToolOutput, COLUMNS};
use super::xml::read_file_text;

#[derive(Clone, Debug)]
pub(crate) struct FakeTask {
    pub(crate) xml: String,
    pub(crate) enabled: bool,
    pub(crate) running: bool,
    pub(crate) last_result: u32,
    pub(crate) runs: u32,
}

#[derive(Default)]
pub(crate) struct FakeSchtasks {
    pub(crate) tasks: Mutex<BTreeMap<String, FakeTask>>,
}

fn ok(stdout: &str) -> ToolOutput {
    ToolOutput {
        code: 0,
        stdout: stdout.to_owned(),
        stderr: String::new(),
    }
}

fn error(message: &str) -> ToolOutput {
    ToolOutput {
        code: 1,
        stdout: String::new(),
        stderr: format!("ERROR: {message}\r\n"),
    }
}

fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

impl FakeSchtasks {
    fn answer(&self, args: &[String]) -> ToolOutput {
        let flag = |name: &str| args.iter().any(|a| a.eq_ignore_ascii_case(name));
        let value = |name: &str| {
            args.iter()
                .position(|a| a.eq_ignore_ascii_case(name))
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let mut tasks = self.tasks.lock().unwrap();
        let missing = error("The system cannot find the file specified.");
        match args.first().map(String::as_str) {
            Some("/Create") => {
                let (Some(path), Some(file)) = (value("/TN"), value("/XML")) else {
                    return error("Invalid syntax.");
                };
                let Ok(bytes) = std::fs::read(&file) else {
                    return missing;
                };
                let xml = read_file_text(&bytes);
                if !xml.contains("<Task version=\"1.2\"") || !xml.trim_end().ends_with("</Task>") {
                    return error("The task XML is malformed.");
                }
                if tasks.contains_key(&path) && !flag("/F") {
                    return error("Cannot create a file when that file already exists.");
                }
                let settings = element(&xml, "Settings").unwrap_or_default();
                let enabled = element(settings, "Enabled") != Some("false");
                let previous = tasks.remove(&path);
                tasks.insert(
                    path.clone(),
                    FakeTask {
                        xml,
                        enabled,
                        running: false,
                        last_result: previous.as_ref().map_or(267_011, |p| p.last_result),
                        runs: previous.map_or(0, |p| p.runs),
                    },
                );
                ok(&format!(
                    "SUCCESS: The scheduled task \"{path}\" has successfully been created.\r\n"
                ))
            }
            Some("/Run") => match value("/TN").and_then(|p| tasks.get_mut(&p).map(|t| (p, t))) {
                None => missing,
                Some((_, task)) if !task.enabled => {
                    error("The task cannot be started because it is disabled.")
                }
                Some((path, task)) => {
                    task.running = true;
                    task.runs += 1;
                    task.last_result = 267_009;
                    ok(&format!(
                        "SUCCESS: Attempted to run the scheduled task \"{path}\".\r\n"
                    ))
                }
            },
            Some("/End") => match value("/TN").and_then(|p| tasks.get_mut(&p).map(|t| (p, t))) {
                None => missing,
                Some((path, task)) => {
                    if task.running {
                        task.running = false;
                        task.last_result = 267_014;
                    }
                    ok(&format!("SUCCESS: The scheduled task \"{path}\" has been terminated successfully.\r\n"))
                }
            },
            Some("/Change") => match value("/TN").and_then(|p| tasks.get_mut(&p).map(|t| (p, t))) {
                None => missing,
                Some((path, task)) => {
                    task.enabled = flag("/ENABLE");
                    ok(&format!("SUCCESS: The parameters of scheduled task \"{path}\" have been changed.\r\n"))
                }
            },
            Some("/Delete") => match value("/TN") {
                Some(path) if tasks.remove(&path).is_some() => ok(&format!(
                    "SUCCESS: The scheduled task \"{path}\" was successfully deleted.\r\n"
                )),
                _ => missing,
            },
            Some("/Query") => {
                let wanted = value("/TN");
                if wanted.as_ref().is_some_and(|p| !tasks.contains_key(p)) {
                    return missing;
                }
                let mut out = COLUMNS
                    .iter()
                    .map(|c| quote(c))
                    .collect::<Vec<_>>()
                    .join(",");
                out.push_str("\r\n");
                for (path, task) in tasks
                    .iter()
                    .filter(|(p, _)| wanted.as_ref().is_none_or(|w| w == *p))
                {
                    let status = match (task.enabled, task.running) {
                        (false, _) => "Disabled",
                        (true, true) => "Running",
                        (true, false) => "Ready",
                    };
                    let row: Vec<String> = COLUMNS
                        .iter()
                        .map(|column| match *column {
                            "HostName" => "WEB01".to_owned(),
                            "TaskName" => path.clone(),
                            "Status" => status.to_owned(),
                            "Last Result" => task.last_result.to_string(),
                            "Last Run Time" => {
                                if task.runs > 0 {
                                    "11/22/2026 3:00:00 PM".into()
                                } else {
                                    "N/A".into()
                                }
                            }
                            "Next Run Time" => "N/A".to_owned(),
                            "Scheduled Task State" => {
                                if task.enabled {
                                    "Enabled".into()
                                } else {
                                    "Disabled".into()
                                }
                            }
                            "Task To Run" => {
                                element(&task.xml, "Command").unwrap_or_default().to_owned()
                            }
                            "Run As User" => match element(&task.xml, "UserId") {
                                Some("S-1-5-18") => "SYSTEM".to_owned(),
                                other => other.unwrap_or_default().to_owned(),
                            },
                            "Schedule Type" => {
                                if task.xml.contains("<Triggers></Triggers>") {
                                    "On demand only".into()
                                } else {
                                    "Scheduled".into()
                                }
                            }
                            _ => "N/A".to_owned(),
                        })
                        .collect();
                    out.push_str(&row.iter().map(|f| quote(f)).collect::<Vec<_>>().join(","));
                    out.push_str("\r\n");
                }
                ok(&out)
            }
            _ => error("Invalid syntax. Type \"SCHTASKS /?\" for usage."),
        }
    }
}

impl Schtasks for FakeSchtasks {
    fn run(&self, args: Vec<String>) -> BoxFuture<'_, Result<ToolOutput, String>> {
        let out = self.answer(&args);
        Box::pin(async move { Ok(out) })
    }
}
