//! Turns `run` words into a job request, Salt style:
//! `target=EXPR [tgt_type=T] FUNCTION [ARG ...] [KEY=VALUE ...]`.

use std::collections::BTreeMap;
use std::io::Read;

use halite_model::JobRequest;
use halite_proto::words::{keyword, value_of};
use halite_proto::TargetType;

/// Builds the request, or says which word is wrong.
pub fn parse_run(
    words: &[String],
    timeout: Option<u64>,
    secrets: &[String],
) -> Result<JobRequest, String> {
    let mut target = None;
    let mut tgt_type = TargetType::Glob;
    let mut rest = words.iter().peekable();
    while let Some(word) = rest.peek() {
        if let Some(value) = word.strip_prefix("target=") {
            target = Some(value.to_owned());
        } else if let Some(value) = word.strip_prefix("tgt_type=") {
            tgt_type = value
                .parse()
                .map_err(|e: halite_proto::TargetError| e.to_string())?;
        } else {
            break;
        }
        rest.next();
    }
    let target = target.ok_or("the first word must be target=EXPR (e.g. target='web*')")?;
    let fun = rest
        .next()
        .ok_or("missing the function to run (e.g. test.ping)")?
        .clone();
    halite_proto::ident::validate_function(&fun).map_err(|e| e.to_string())?;
    let mut arg = Vec::new();
    let mut kwarg = serde_json::Map::new();
    for word in rest {
        match keyword(word) {
            Some((key, value)) => {
                if kwarg.insert(key.to_owned(), value_of(value)).is_some() {
                    return Err(format!("keyword argument `{key}` given twice"));
                }
            }
            None => arg.push(value_of(word)),
        }
    }
    let mut secret = BTreeMap::new();
    for item in secrets {
        let (key, value) =
            keyword(item).ok_or_else(|| format!("--secret {item:?}: expected KEY=VALUE"))?;
        let value = if value == "-" {
            read_stdin()?
        } else {
            value.to_owned()
        };
        secret.insert(key.to_owned(), value);
    }
    Ok(JobRequest {
        target,
        tgt_type,
        fun,
        arg,
        kwarg,
        secret,
        timeout,
        ..JobRequest::default()
    })
}

fn read_stdin() -> Result<String, String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .map_err(|e| format!("reading a secret from stdin: {e}"))?;
    Ok(value.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn words(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn salt_style_words() {
        let request = parse_run(
            &words(&[
                "target=G@os:Linux and web*",
                "tgt_type=compound",
                "cmd.run",
                "uname -a",
                "cwd=/tmp",
                "timeout=5",
                "echo a=b",
            ]),
            Some(9),
            &[],
        )
        .unwrap();
        assert_eq!(request.target, "G@os:Linux and web*");
        assert_eq!(request.tgt_type, TargetType::Compound);
        assert_eq!(request.fun, "cmd.run");
        assert_eq!(
            request.arg,
            vec![Value::from("uname -a"), Value::from("echo a=b")]
        );
        assert_eq!(request.kwarg["cwd"], Value::from("/tmp"));
        assert_eq!(request.kwarg["timeout"], Value::from(5));
        assert_eq!(request.timeout, Some(9));
    }

    #[test]
    fn typed_values() {
        assert_eq!(value_of("true"), Value::Bool(true));
        assert_eq!(value_of("-3"), Value::from(-3));
        assert_eq!(value_of("[1,2]"), serde_json::json!([1, 2]));
        assert_eq!(value_of("0123"), Value::from("0123"));
        assert_eq!(value_of("web01"), Value::from("web01"));
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse_run(&words(&["test.ping"]), None, &[])
            .unwrap_err()
            .contains("target="));
        assert!(parse_run(&words(&["target=*"]), None, &[])
            .unwrap_err()
            .contains("function"));
        assert!(parse_run(
            &words(&["target=*", "tgt_type=nope", "test.ping"]),
            None,
            &[]
        )
        .is_err());
        assert!(parse_run(&words(&["target=*", "Bad-Fun"]), None, &[]).is_err());
        assert!(
            parse_run(&words(&["target=*", "test.echo", "a=1", "a=2"]), None, &[])
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_run(
            &words(&["target=*", "test.ping"]),
            None,
            &["novalue".into()]
        )
        .is_err());
    }

    #[test]
    fn secrets_are_kept_apart() {
        let request = parse_run(
            &words(&["target=*", "test.ping"]),
            None,
            &["token=s3cret".into()],
        )
        .unwrap();
        assert_eq!(request.secret["token"], "s3cret");
        assert!(request.kwarg.is_empty());
    }
}
