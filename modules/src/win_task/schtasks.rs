//! `schtasks.exe`: the argument lists halite runs, and the parsing of what
//! it prints (`/Query /FO CSV /V`, whose columns are documented with the
//! command; several rows per task, one per trigger, and the header
//! repeated per folder).

use serde_json::{json, Value};

pub(crate) use crate::wintool::{Tool as Schtasks, ToolOutput};

/// The `schtasks.exe` of this machine.
pub(crate) fn system() -> crate::wintool::SystemTool {
    crate::wintool::SystemTool {
        program: "schtasks.exe",
        module: "win_task",
    }
}

fn argv(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn create(path: &str, xml_file: &str) -> Vec<String> {
    argv(&["/Create", "/TN", path, "/XML", xml_file, "/F"])
}
pub(crate) fn run(path: &str) -> Vec<String> {
    argv(&["/Run", "/TN", path])
}
pub(crate) fn end(path: &str) -> Vec<String> {
    argv(&["/End", "/TN", path])
}
pub(crate) fn enable(path: &str, on: bool) -> Vec<String> {
    argv(&[
        "/Change",
        "/TN",
        path,
        if on { "/ENABLE" } else { "/DISABLE" },
    ])
}
pub(crate) fn delete(path: &str) -> Vec<String> {
    argv(&["/Delete", "/TN", path, "/F"])
}
pub(crate) fn query(path: Option<&str>) -> Vec<String> {
    match path {
        Some(path) => argv(&["/Query", "/TN", path, "/FO", "CSV", "/V"]),
        None => argv(&["/Query", "/FO", "CSV", "/V"]),
    }
}

/// The columns of `/Query /FO CSV /V`, in the order schtasks prints them
/// (the parser finds columns by name; the double prints these).
#[cfg(test)]
pub(crate) const COLUMNS: [&str; 28] = [
    "HostName",
    "TaskName",
    "Next Run Time",
    "Status",
    "Logon Mode",
    "Last Run Time",
    "Last Result",
    "Author",
    "Task To Run",
    "Start In",
    "Comment",
    "Scheduled Task State",
    "Idle Time",
    "Power Management",
    "Run As User",
    "Delete Task If Not Rescheduled",
    "Stop Task If Runs X Hours and X Mins",
    "Schedule",
    "Schedule Type",
    "Start Time",
    "Start Date",
    "End Date",
    "Days",
    "Months",
    "Repeat: Every",
    "Repeat: Until: Time",
    "Repeat: Until: Duration",
    "Repeat: Stop If Still Running",
];

/// Is this answer schtasks' "no such task"?
pub(crate) fn not_found(out: &ToolOutput) -> bool {
    out.code != 0
        && (out.stderr.contains("cannot find the file") || out.stderr.contains("does not exist"))
}

/// The rows of a CSV text (RFC 4180 quoting).
pub(crate) fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) => quoted = true,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\r', false) => {}
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                if row.iter().any(|f| !f.is_empty()) {
                    rows.push(std::mem::take(&mut row));
                } else {
                    row.clear();
                }
            }
            (c, _) => field.push(c),
        }
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

/// What `Last Result` means, for the codes Task Scheduler uses most.
fn result_text(code: &str) -> &'static str {
    match code.trim() {
        "0" => "completed successfully",
        "267009" => "running",
        "267011" => "has not run yet",
        "267014" => "terminated by the user",
        "2147750687" => "an instance is already running",
        _ => "the program's exit code",
    }
}

/// Tasks from `/Query /FO CSV /V` output, one object per task (its
/// schedules gathered from its rows), in the order printed.
pub(crate) fn parse_query(text: &str) -> Vec<Value> {
    let mut header: Vec<String> = Vec::new();
    let mut tasks: Vec<(String, Value)> = Vec::new();
    for row in csv_rows(text) {
        if row.first().is_some_and(|f| f == "HostName") {
            header = row;
            continue;
        }
        let get = |name: &str| -> String {
            header
                .iter()
                .position(|h| h == name)
                .and_then(|i| row.get(i))
                .cloned()
                .unwrap_or_default()
        };
        let path = get("TaskName");
        if path.is_empty() {
            continue;
        }
        let schedule = json!({
            "type": get("Schedule Type"),
            "start_time": get("Start Time"),
            "start_date": get("Start Date"),
            "days": get("Days"),
            "repeat_every": get("Repeat: Every"),
        });
        if let Some((_, task)) = tasks.iter_mut().find(|(p, _)| *p == path) {
            if let Some(list) = task["schedules"].as_array_mut() {
                list.push(schedule);
            }
            continue;
        }
        let last_result = get("Last Result");
        let (folder, name) = path.rsplit_once('\\').unwrap_or(("", &path));
        tasks.push((
            path.clone(),
            json!({
                "path": path,
                "name": name,
                "folder": if folder.is_empty() { "\\" } else { folder },
                "status": get("Status"),
                "enabled": get("Scheduled Task State") != "Disabled",
                "next_run": get("Next Run Time"),
                "last_run": get("Last Run Time"),
                "last_result": last_result,
                "last_result_text": result_text(&last_result),
                "run_as": get("Run As User"),
                "command": get("Task To Run"),
                "schedules": [schedule],
            }),
        ));
    }
    tasks.into_iter().map(|(_, task)| task).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `schtasks /Query /FO CSV /V` prints it (columns per Microsoft's
    /// schtasks query documentation), two folders, one task with two triggers.
    pub(crate) const SAMPLE: &str = "\"HostName\",\"TaskName\",\"Next Run Time\",\"Status\",\"Logon Mode\",\"Last Run Time\",\"Last Result\",\"Author\",\"Task To Run\",\"Start In\",\"Comment\",\"Scheduled Task State\",\"Idle Time\",\"Power Management\",\"Run As User\",\"Delete Task If Not Rescheduled\",\"Stop Task If Runs X Hours and X Mins\",\"Schedule\",\"Schedule Type\",\"Start Time\",\"Start Date\",\"End Date\",\"Days\",\"Months\",\"Repeat: Every\",\"Repeat: Until: Time\",\"Repeat: Until: Duration\",\"Repeat: Stop If Still Running\"\r\n\
\"WEB01\",\"\\Halite\\Rotate logs\",\"11/23/2026 2:00:00 AM\",\"Ready\",\"Interactive/Background\",\"11/22/2026 2:00:00 AM\",\"0\",\"halite\",\"C:\\tools\\rotate.exe --all\",\"C:\\tools\",\"N/A\",\"Enabled\",\"Disabled\",\"Stop On Battery Mode\",\"SYSTEM\",\"Disabled\",\"72:00:00\",\"Scheduling data is not available in this format.\",\"Daily \",\"2:00:00 AM\",\"11/22/2026\",\"N/A\",\"Every 1 day(s)\",\"N/A\",\"Disabled\",\"Disabled\",\"Disabled\",\"Disabled\"\r\n\
\"WEB01\",\"\\Halite\\Rotate logs\",\"11/23/2026 2:00:00 AM\",\"Ready\",\"Interactive/Background\",\"11/22/2026 2:00:00 AM\",\"0\",\"halite\",\"C:\\tools\\rotate.exe --all\",\"C:\\tools\",\"N/A\",\"Enabled\",\"Disabled\",\"Stop On Battery Mode\",\"SYSTEM\",\"Disabled\",\"72:00:00\",\"Scheduling data is not available in this format.\",\"At system start up\",\"N/A\",\"N/A\",\"N/A\",\"N/A\",\"N/A\",\"Disabled\",\"Disabled\",\"Disabled\",\"Disabled\"\r\n\
\r\n\
\"HostName\",\"TaskName\",\"Next Run Time\",\"Status\",\"Logon Mode\",\"Last Run Time\",\"Last Result\",\"Author\",\"Task To Run\",\"Start In\",\"Comment\",\"Scheduled Task State\",\"Idle Time\",\"Power Management\",\"Run As User\",\"Delete Task If Not Rescheduled\",\"Stop Task If Runs X Hours and X Mins\",\"Schedule\",\"Schedule Type\",\"Start Time\",\"Start Date\",\"End Date\",\"Days\",\"Months\",\"Repeat: Every\",\"Repeat: Until: Time\",\"Repeat: Until: Duration\",\"Repeat: Stop If Still Running\"\r\n\
\"WEB01\",\"\\Report \"\"nightly\"\"\",\"N/A\",\"Disabled\",\"Interactive/Background\",\"N/A\",\"267011\",\"halite\",\"C:\\r.exe\",\"N/A\",\"N/A\",\"Disabled\",\"Disabled\",\"\",\"CORP\\svc\",\"Disabled\",\"01:00:00\",\"Scheduling data is not available in this format.\",\"On demand only\",\"N/A\",\"N/A\",\"N/A\",\"N/A\",\"N/A\",\"Disabled\",\"Disabled\",\"Disabled\",\"Disabled\"\r\n";

    #[test]
    fn the_sample_header_is_the_column_list() {
        let header = &csv_rows(SAMPLE)[0];
        assert_eq!(header, &COLUMNS.map(str::to_owned));
    }

    #[test]
    fn query_output_is_one_object_per_task() {
        let tasks = parse_query(SAMPLE);
        assert_eq!(tasks.len(), 2, "{tasks:?}");
        let rotate = &tasks[0];
        assert_eq!(rotate["name"], "Rotate logs");
        assert_eq!(rotate["folder"], "\\Halite");
        assert_eq!(rotate["status"], "Ready");
        assert_eq!(rotate["enabled"], true);
        assert_eq!(rotate["last_result_text"], "completed successfully");
        assert_eq!(rotate["next_run"], "11/23/2026 2:00:00 AM");
        assert_eq!(rotate["schedules"].as_array().unwrap().len(), 2);
        let report = &tasks[1];
        assert_eq!(report["name"], "Report \"nightly\"");
        assert_eq!(report["folder"], "\\");
        assert_eq!(report["enabled"], false);
        assert_eq!(report["last_result_text"], "has not run yet");
        assert_eq!(report["run_as"], "CORP\\svc");
    }

    #[test]
    fn argument_lists() {
        assert_eq!(
            create("\\H\\t", "C:\\tmp\\t.xml"),
            ["/Create", "/TN", "\\H\\t", "/XML", "C:\\tmp\\t.xml", "/F"]
        );
        assert_eq!(enable("\\t", false), ["/Change", "/TN", "\\t", "/DISABLE"]);
        assert_eq!(query(None), ["/Query", "/FO", "CSV", "/V"]);
    }
}
