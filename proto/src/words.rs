//! Salt-style command words, shared by `master-cli run` and salt-api's
//! lowstate `arg` lists: `KEY=VALUE` is a keyword argument, anything else
//! positional, and values that look like JSON are typed.

use serde_json::Value;

/// `KEY=VALUE` where KEY is an identifier; anything else is positional
/// (so `cmd.run "echo a=b"` keeps its argument).
pub fn keyword(word: &str) -> Option<(&str, &str)> {
    let (key, value) = word.split_once('=')?;
    let mut chars = key.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    ident.then_some((key, value))
}

/// Numbers, booleans, null, JSON arrays and objects are typed; anything
/// else is a string.
pub fn value_of(word: &str) -> Value {
    let looks_typed = matches!(word.chars().next(), Some('[' | '{' | '-' | '0'..='9'))
        || matches!(word, "true" | "false" | "null");
    if looks_typed {
        if let Ok(value) = serde_json::from_str::<Value>(word) {
            // An integer past 64 bits (a jid) would lose digits as a
            // float: it stays the text it was.
            let whole = word.bytes().all(|b| b.is_ascii_digit() || b == b'-');
            if !(value.is_f64() && whole) {
                return value;
            }
        }
    }
    Value::String(word.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jid_stays_exact() {
        assert_eq!(
            value_of("20261130085355508012"),
            Value::String("20261130085355508012".into())
        );
        assert_eq!(value_of("12"), serde_json::json!(12));
        assert_eq!(value_of("1.5"), serde_json::json!(1.5));
    }

    #[test]
    fn keywords_and_values() {
        assert_eq!(keyword("tag=v3"), Some(("tag", "v3")));
        assert_eq!(keyword("uname -a"), None);
        assert_eq!(keyword("a b=c"), None);
        assert_eq!(keyword("=x"), None);
        assert_eq!(keyword("1a=x"), None);
        assert_eq!(value_of("3"), serde_json::json!(3));
        assert_eq!(value_of("true"), serde_json::json!(true));
        assert_eq!(value_of("[1]"), serde_json::json!([1]));
        assert_eq!(value_of("v3"), serde_json::json!("v3"));
    }
}
