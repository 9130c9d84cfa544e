//! Stream entries as Salt's event bus tags them, for salt-api's
//! `/events`: `salt/job/<jid>/new`, `…/ret/<id>`, `…/prog/<id>/<n>`,
//! `salt/auth`, `salt/minion/<id>/start`, `salt/presence/change` and
//! `salt/presence/present`, `salt/wheel/<jid>/…` and `salt/run/<jid>/…`,
//! each `{"tag", "data"}` with `data._stamp` in Salt's ISO form.

use serde_json::{json, Map, Value};

use crate::types::BusEntry;

/// What a presence event lists besides the change: the minions up now.
pub type UpNow<'a> = &'a dyn Fn() -> Vec<String>;

/// The Salt events one stream entry stands for (a minion coming up is a
/// start, a presence change and the new list of present minions).
pub fn salt_events(entry: &BusEntry, up_now: UpNow<'_>) -> Vec<Value> {
    let jid = entry.jid.as_ref().map(|j| j.as_str()).unwrap_or_default();
    let minion = entry.minion.as_deref().unwrap_or_default();
    let stamp = halite_proto::time::iso_ms(entry.at);
    let event = |tag: String, mut data: Map<String, Value>| {
        data.insert("_stamp".into(), json!(stamp));
        json!({ "tag": tag, "data": data })
    };
    let field = |key: &str| entry.data.get(key).cloned().unwrap_or(Value::Null);
    match entry.kind.as_str() {
        "job/new" => {
            let mut data = Map::new();
            data.insert("jid".into(), json!(jid));
            data.insert("tgt_type".into(), field("tgt_type"));
            data.insert("tgt".into(), field("target"));
            data.insert("user".into(), field("user"));
            data.insert("fun".into(), field("fun"));
            data.insert(
                "arg".into(),
                entry.data.get("arg").cloned().unwrap_or(json!([])),
            );
            data.insert("minions".into(), field("minions"));
            data.insert("missing".into(), json!([]));
            vec![event(format!("salt/job/{jid}/new"), data)]
        }
        "job/return" => {
            let mut data = Map::new();
            data.insert("cmd".into(), json!("_return"));
            data.insert("id".into(), json!(minion));
            data.insert("success".into(), field("success"));
            data.insert("return".into(), field("data"));
            data.insert("retcode".into(), field("retcode"));
            data.insert("jid".into(), json!(jid));
            data.insert("fun".into(), field("fun"));
            data.insert("fun_args".into(), json!([]));
            data.insert("ts".into(), json!(entry.at / 1000));
            vec![event(format!("salt/job/{jid}/ret/{minion}"), data)]
        }
        "job/event" => {
            let mut data = entry.data.as_object().cloned().unwrap_or_default();
            data.insert("jid".into(), json!(jid));
            vec![event(
                format!("salt/job/{jid}/prog/{minion}/{}", entry.id),
                data,
            )]
        }
        "minion/auth" => {
            let mut data = entry.data.as_object().cloned().unwrap_or_default();
            data.insert("id".into(), json!(minion));
            vec![event("salt/auth".into(), data)]
        }
        "minion/up" | "minion/down" => {
            let up = entry.kind == "minion/up";
            let mut present = up_now();
            present.sort();
            let mut out = Vec::new();
            if up {
                let mut start = Map::new();
                start.insert("cmd".into(), json!("_minion_event"));
                start.insert(
                    "data".into(),
                    json!(format!(
                        "Minion {minion} started at {}",
                        halite_proto::time::format_ms(entry.at)
                    )),
                );
                start.insert("id".into(), json!(minion));
                start.insert("pretag".into(), Value::Null);
                start.insert("tag".into(), json!(format!("salt/minion/{minion}/start")));
                out.push(event(format!("salt/minion/{minion}/start"), start));
            }
            let (new, lost) = if up {
                (vec![minion], vec![])
            } else {
                (vec![], vec![minion])
            };
            let mut change = Map::new();
            change.insert("new".into(), json!(new));
            change.insert("lost".into(), json!(lost));
            out.push(event("salt/presence/change".into(), change));
            let mut now = Map::new();
            now.insert("present".into(), json!(present));
            out.push(event("salt/presence/present".into(), now));
            out
        }
        // wheel_async / runner_async results: already Salt's shape.
        kind if kind.starts_with("salt/") => {
            let mut data = entry.data.as_object().cloned().unwrap_or_default();
            let tag = data
                .get("tag")
                .and_then(Value::as_str)
                .map_or_else(|| kind.to_owned(), str::to_owned);
            data.insert("_stamp".into(), json!(stamp));
            vec![json!({ "tag": tag, "data": data })]
        }
        other => {
            let mut data = entry.data.as_object().cloned().unwrap_or_default();
            if !jid.is_empty() {
                data.insert("jid".into(), json!(jid));
            }
            let tag = if minion.is_empty() {
                format!("halite/{other}")
            } else {
                format!("halite/{other}/{minion}")
            };
            vec![event(tag, data)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, minion: Option<&str>, data: Value) -> BusEntry {
        BusEntry {
            id: 7,
            kind: kind.into(),
            at: 1_700_000_000_123,
            jid: Some(halite_proto::Jid::parse("20231114221320123000").unwrap()),
            minion: minion.map(str::to_owned),
            data,
        }
    }

    #[test]
    fn a_return_is_salts_ret_event() {
        let ret = entry(
            "job/return",
            Some("web01"),
            json!({"fun": "test.ping", "data": true, "success": true, "retcode": 0}),
        );
        let events = salt_events(&ret, &Vec::new);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["tag"], "salt/job/20231114221320123000/ret/web01");
        assert_eq!(events[0]["data"]["return"], true);
        assert_eq!(events[0]["data"]["cmd"], "_return");
        assert_eq!(
            events[0]["data"]["_stamp"],
            "2023-11-14T22:13:20.123000+00:00"
        );
    }

    #[test]
    fn a_minion_coming_up_starts_and_changes_presence() {
        let up = entry("minion/up", Some("web02"), json!({"id": "web02"}));
        let events = salt_events(&up, &|| vec!["web02".into(), "web01".into()]);
        let tags: Vec<&str> = events.iter().filter_map(|e| e["tag"].as_str()).collect();
        assert_eq!(
            tags,
            [
                "salt/minion/web02/start",
                "salt/presence/change",
                "salt/presence/present"
            ]
        );
        assert_eq!(events[1]["data"]["new"], json!(["web02"]));
        assert_eq!(events[2]["data"]["present"], json!(["web01", "web02"]));
        let down = entry("minion/down", Some("web02"), json!({"id": "web02"}));
        let events = salt_events(&down, &|| vec!["web01".into()]);
        assert_eq!(events[0]["data"]["lost"], json!(["web02"]));
    }
}
