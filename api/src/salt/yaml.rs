//! JSON values as the YAML salt-api answers with `Accept:
//! application/x-yaml` (PyYAML's `safe_dump(default_flow_style=False)`:
//! block style, keys sorted, sequences not indented under their key).

use serde_json::Value;

/// `value` as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => mapping(&mut out, map, 0),
        Value::Array(list) if !list.is_empty() => sequence(&mut out, list, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn mapping(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for (n, key) in keys.into_iter().enumerate() {
        // The first key of a mapping inside a sequence item follows `- `.
        if n > 0 || indent == 0 {
            pad(out, indent);
        }
        out.push_str(&scalar_text(key));
        out.push(':');
        match &map[key] {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                pad(out, indent + 2);
                mapping(out, inner, indent + 2);
            }
            Value::Array(list) if !list.is_empty() => {
                out.push('\n');
                sequence(out, list, indent);
            }
            value => {
                out.push(' ');
                out.push_str(&inline(value));
                out.push('\n');
            }
        }
    }
}

fn sequence(out: &mut String, list: &[Value], indent: usize) {
    for item in list {
        pad(out, indent);
        out.push_str("- ");
        match item {
            Value::Object(inner) if !inner.is_empty() => mapping(out, inner, indent + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                sequence(out, inner, indent + 2);
            }
            value => {
                out.push_str(&inline(value));
                out.push('\n');
            }
        }
    }
}

/// A scalar (or an empty collection) on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_text(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A string plain when YAML would read it back as the same string,
/// single-quoted otherwise, double-quoted when it holds line breaks or
/// control characters.
fn scalar_text(text: &str) -> String {
    if text.chars().any(|c| c.is_control()) {
        return serde_json::to_string(text).unwrap_or_default();
    }
    let lower = text.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "" | "~" | "null" | "true" | "false" | "yes" | "no" | "on" | "off"
    );
    // Numbers, dates (`2026-11-22`), times (`12:30`) and `1_000` all read
    // back as something else in YAML 1.1: anything starting like a number.
    let numeric = text.parse::<f64>().is_ok()
        || text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '.'));
    let special_start = text.starts_with([
        '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@',
        '`', ' ',
    ]);
    let special_inside = text.contains(": ") || text.contains(" #") || text.ends_with([' ', ':']);
    if reserved || numeric || special_start || special_inside {
        format!("'{}'", text.replace('\'', "''"))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn salt_apis_yaml_for_a_ping() {
        // The transcript's answer, byte for byte.
        assert_eq!(
            to_yaml(&json!({"return": [{"web01": true}]})),
            "return:\n- web01: true\n"
        );
    }

    #[test]
    fn nesting_quoting_and_empties() {
        let value = json!({
            "b": {"x": [1, "two"], "y": {}},
            "a": ["yes", "", "it's", "line\nbreak", [], {"k": "v", "j": null}],
        });
        assert_eq!(
            to_yaml(&value),
            "a:\n- 'yes'\n- ''\n- it's\n- \"line\\nbreak\"\n- []\n- j: null\n  k: v\nb:\n  x:\n  - 1\n  - two\n  y: {}\n"
        );
        assert_eq!(
            to_yaml(&json!(["2026-11-22", "12:30", "1_000", "web01"])),
            "- '2026-11-22'\n- '12:30'\n- '1_000'\n- web01\n"
        );
    }
}
