//! Task definitions rendered as Task Scheduler XML (schema 1.2,
//! `http://schemas.microsoft.com/windows/2004/02/mit/task`), the format
//! `schtasks /Create /XML` reads, with elements in the order the schema
//! and Task Scheduler's own exports use; written as UTF-16 LE with a BOM,
//! as the XML declaration says.

use super::definition::{Repeat, TaskDefinition, Trigger, DAYS};

/// XML text escaping for element content.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// An ISO 8601 duration (`PT5M`, `P1DT2H`, `PT0S`).
pub(crate) fn duration(seconds: u64) -> String {
    let (d, rest) = (seconds / 86_400, seconds % 86_400);
    let (h, m, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    let mut out = String::from("P");
    if d > 0 {
        out.push_str(&format!("{d}D"));
    }
    if h > 0 || m > 0 || s > 0 || d == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if s > 0 || (h == 0 && m == 0) {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

fn repetition(repeat: &Option<Repeat>) -> String {
    match repeat {
        None => String::new(),
        Some(r) => {
            let mut out = format!("<Repetition><Interval>{}</Interval>", duration(r.interval));
            if r.duration > 0 {
                out.push_str(&format!("<Duration>{}</Duration>", duration(r.duration)));
            }
            out.push_str("</Repetition>");
            out
        }
    }
}

fn trigger(t: &Trigger) -> String {
    match t {
        Trigger::Once { start, repeat } => format!(
            "<TimeTrigger>{}<StartBoundary>{}</StartBoundary><Enabled>true</Enabled></TimeTrigger>",
            repetition(repeat),
            esc(start)
        ),
        Trigger::Daily { start, every, repeat } => format!(
            "<CalendarTrigger>{}<StartBoundary>{}</StartBoundary><Enabled>true</Enabled><ScheduleByDay><DaysInterval>{every}</DaysInterval></ScheduleByDay></CalendarTrigger>",
            repetition(repeat),
            esc(start)
        ),
        Trigger::Weekly { start, days, every, repeat } => {
            // Days in the schema's order, whatever order the job gave.
            let days: String = DAYS
                .iter()
                .filter(|(name, _)| days.iter().any(|d| d.eq_ignore_ascii_case(name)))
                .map(|(_, element)| format!("<{element} />"))
                .collect();
            format!(
                "<CalendarTrigger>{}<StartBoundary>{}</StartBoundary><Enabled>true</Enabled><ScheduleByWeek><DaysOfWeek>{days}</DaysOfWeek><WeeksInterval>{every}</WeeksInterval></ScheduleByWeek></CalendarTrigger>",
                repetition(repeat),
                esc(start)
            )
        }
        Trigger::Startup { delay } => format!(
            "<BootTrigger><Enabled>true</Enabled>{}</BootTrigger>",
            if *delay > 0 { format!("<Delay>{}</Delay>", duration(*delay)) } else { String::new() }
        ),
        Trigger::Logon { user, delay } => format!(
            "<LogonTrigger><Enabled>true</Enabled>{}{}</LogonTrigger>",
            user.as_deref().map(|u| format!("<UserId>{}</UserId>", esc(u))).unwrap_or_default(),
            if *delay > 0 { format!("<Delay>{}</Delay>", duration(*delay)) } else { String::new() }
        ),
    }
}

/// The principal: well-known service accounts by SID, other accounts by
/// name with S4U (runs whether the user is logged on or not, no password
/// stored).
fn principal(def: &TaskDefinition) -> String {
    let (user, logon) = match def.run_as.to_ascii_uppercase().as_str() {
        "SYSTEM" | "NT AUTHORITY\\SYSTEM" => ("S-1-5-18".to_owned(), "ServiceAccount"),
        "LOCAL SERVICE" | "NT AUTHORITY\\LOCAL SERVICE" => {
            ("S-1-5-19".to_owned(), "ServiceAccount")
        }
        "NETWORK SERVICE" | "NT AUTHORITY\\NETWORK SERVICE" => {
            ("S-1-5-20".to_owned(), "ServiceAccount")
        }
        _ => (esc(&def.run_as), "S4U"),
    };
    format!(
        "<Principals><Principal id=\"Author\"><UserId>{user}</UserId><LogonType>{logon}</LogonType><RunLevel>{}</RunLevel></Principal></Principals>",
        if def.highest { "HighestAvailable" } else { "LeastPrivilege" }
    )
}

/// The task as XML text.
pub(crate) fn render(def: &TaskDefinition) -> String {
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-16\"?>\r\n");
    xml.push_str(
        "<Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">",
    );
    xml.push_str("<RegistrationInfo>");
    if let Some(description) = &def.description {
        xml.push_str(&format!("<Description>{}</Description>", esc(description)));
    }
    xml.push_str(&format!(
        "<Author>halite</Author><URI>{}</URI></RegistrationInfo>",
        esc(&def.path())
    ));
    xml.push_str("<Triggers>");
    for t in &def.triggers {
        xml.push_str(&trigger(t));
    }
    xml.push_str("</Triggers>");
    xml.push_str(&principal(def));
    xml.push_str(&format!(
        "<Settings><MultipleInstancesPolicy>{}</MultipleInstancesPolicy><DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries><StopIfGoingOnBatteries>false</StopIfGoingOnBatteries><AllowHardTerminate>true</AllowHardTerminate><StartWhenAvailable>true</StartWhenAvailable><AllowStartOnDemand>true</AllowStartOnDemand><Enabled>{}</Enabled><ExecutionTimeLimit>{}</ExecutionTimeLimit></Settings>",
        def.multiple_instances.xml(),
        def.enabled,
        duration(def.execution_time_limit)
    ));
    xml.push_str("<Actions Context=\"Author\"><Exec>");
    xml.push_str(&format!("<Command>{}</Command>", esc(&def.command)));
    if let Some(arguments) = &def.arguments {
        xml.push_str(&format!("<Arguments>{}</Arguments>", esc(arguments)));
    }
    if let Some(dir) = &def.working_dir {
        xml.push_str(&format!(
            "<WorkingDirectory>{}</WorkingDirectory>",
            esc(dir)
        ));
    }
    xml.push_str("</Exec></Actions></Task>\r\n");
    xml
}

/// UTF-16 LE with a byte-order mark: what `schtasks /XML` expects of a
/// file declaring `encoding="UTF-16"`.
pub(crate) fn utf16_file(xml: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in xml.encode_utf16() {
        bytes.extend_from_slice(&unit.to_le_bytes());
    }
    bytes
}

/// The text of a UTF-16 LE file with a BOM (or UTF-8), as Task
/// Scheduler reads the file (the double does the same).
#[cfg(test)]
pub(crate) fn read_file_text(bytes: &[u8]) -> String {
    match bytes {
        [0xFF, 0xFE, rest @ ..] => {
            let units: Vec<u16> = rest
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(value: serde_json::Value) -> TaskDefinition {
        let def: TaskDefinition = serde_json::from_value(value).unwrap();
        def.validate().unwrap();
        def
    }

    /// Positions of `names` in `xml`, which must be increasing.
    fn in_order(xml: &str, names: &[&str]) {
        let mut last = 0;
        for name in names {
            let at = xml[last..]
                .find(name)
                .unwrap_or_else(|| panic!("{name} missing after {last} in {xml}"))
                + last;
            last = at;
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "PT0S");
        assert_eq!(duration(300), "PT5M");
        assert_eq!(duration(72 * 3600), "P3D");
        assert_eq!(duration(90_061), "P1DT1H1M1S");
        assert_eq!(duration(3600), "PT1H");
    }

    #[test]
    fn a_full_task_in_schema_order() {
        let xml = render(&def(json!({
            "name": "Nightly & report",
            "folder": "\\Halite",
            "command": "C:\\apps\\report.exe",
            "arguments": "--all \"C:\\out dir\"",
            "working_dir": "C:\\apps",
            "description": "R&D",
            "run_as": "CORP\\svc-report",
            "highest": true,
            "multiple_instances": "queue",
            "execution_time_limit": 3600,
            "triggers": [
                { "type": "daily", "start": "2026-11-23T02:00:00", "every": 2, "repeat": { "interval": 900, "duration": 7200 } },
                { "type": "weekly", "start": "2026-11-23T03:00:00", "days": ["friday", "Monday"] },
                { "type": "startup", "delay": 30 },
                { "type": "logon", "user": "CORP\\ops" },
                { "type": "once", "start": "2026-12-01T00:00:00" }
            ]
        })));
        in_order(&xml, &[
            "<?xml version=\"1.0\" encoding=\"UTF-16\"?>",
            "<Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/windows/2004/02/mit/task\">",
            "<RegistrationInfo>", "<Description>R&amp;D</Description>", "<URI>\\Halite\\Nightly &amp; report</URI>", "</RegistrationInfo>",
            "<Triggers>",
            "<CalendarTrigger><Repetition><Interval>PT15M</Interval><Duration>PT2H</Duration></Repetition><StartBoundary>2026-11-23T02:00:00</StartBoundary><Enabled>true</Enabled><ScheduleByDay><DaysInterval>2</DaysInterval></ScheduleByDay></CalendarTrigger>",
            "<ScheduleByWeek><DaysOfWeek><Monday /><Friday /></DaysOfWeek><WeeksInterval>1</WeeksInterval></ScheduleByWeek>",
            "<BootTrigger><Enabled>true</Enabled><Delay>PT30S</Delay></BootTrigger>",
            "<LogonTrigger><Enabled>true</Enabled><UserId>CORP\\ops</UserId></LogonTrigger>",
            "<TimeTrigger><StartBoundary>2026-12-01T00:00:00</StartBoundary>",
            "</Triggers>",
            "<Principals><Principal id=\"Author\"><UserId>CORP\\svc-report</UserId><LogonType>S4U</LogonType><RunLevel>HighestAvailable</RunLevel></Principal></Principals>",
            "<Settings><MultipleInstancesPolicy>Queue</MultipleInstancesPolicy>", "<Enabled>true</Enabled><ExecutionTimeLimit>PT1H</ExecutionTimeLimit></Settings>",
            "<Actions Context=\"Author\"><Exec><Command>C:\\apps\\report.exe</Command><Arguments>--all &quot;C:\\out dir&quot;</Arguments><WorkingDirectory>C:\\apps</WorkingDirectory></Exec></Actions>",
            "</Task>",
        ]);
    }

    #[test]
    fn system_by_sid_and_utf16_round_trip() {
        let xml = render(&def(
            json!({ "name": "x", "command": "a.exe", "enabled": false }),
        ));
        assert!(xml.contains("<UserId>S-1-5-18</UserId><LogonType>ServiceAccount</LogonType><RunLevel>LeastPrivilege</RunLevel>"));
        assert!(
            xml.contains("<Enabled>false</Enabled><ExecutionTimeLimit>P3D</ExecutionTimeLimit>")
        );
        assert!(xml.contains("<Triggers></Triggers>"));
        let bytes = utf16_file(&xml);
        assert_eq!(&bytes[..2], &[0xFF, 0xFE]);
        assert_eq!(read_file_text(&bytes), xml);
    }
}
