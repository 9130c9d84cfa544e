//! Reading a function's arguments: the one helper every module uses, so that
//! positional/keyword lookup, type checks, leniency for command-line strings
//! and error messages are the same everywhere.
//!
//! A function declares its parameters in order in a [`Signature`]; like a
//! Python function in Salt, each may be given by position or by keyword.
//! Unknown keywords, too many positional arguments and an argument given
//! twice are rejected before the function runs. A JSON `null` counts as not
//! given. Where a number or a boolean is expected, a string such as `"5"` or
//! `"true"` (as typed on a command line) is accepted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};
use thiserror::Error;

use crate::{Call, Outcome, RETCODE_BAD_ARGS};

/// The parameters of one function, in positional order: its entry in
/// the function catalog, where they are declared once.
pub type Signature = halite_proto::catalog::Function;

/// Why the arguments of a call were refused; becomes an [`Outcome`] with
/// [`RETCODE_BAD_ARGS`] and this text.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ArgError {
    /// A required argument was not given.
    #[error("{fun}: argument `{name}` is required")]
    Missing {
        /// Function name.
        fun: &'static str,
        /// Parameter name.
        name: &'static str,
    },
    /// An argument has a type (or value) the function cannot use.
    #[error("{fun}: argument `{name}` must be {expected}, got {got}")]
    Invalid {
        /// Function name.
        fun: &'static str,
        /// Parameter name.
        name: &'static str,
        /// What was expected ("a number of seconds").
        expected: String,
        /// The value given, JSON-encoded and shortened.
        got: String,
    },
    /// Keyword arguments the function does not take.
    #[error("{fun}: unknown keyword argument(s) {unknown}; accepted: {accepted}")]
    UnknownKeywords {
        /// Function name.
        fun: &'static str,
        /// The unknown names, quoted and comma-separated.
        unknown: String,
        /// The accepted names, comma-separated.
        accepted: String,
    },
    /// More positional arguments than parameters.
    #[error("{fun}: takes at most {max} positional argument(s) ({accepted}), got {given}")]
    TooManyPositional {
        /// Function name.
        fun: &'static str,
        /// Number of parameters.
        max: usize,
        /// Number of positional arguments given.
        given: usize,
        /// The parameter names, comma-separated.
        accepted: String,
    },
    /// The same argument given by position and by keyword.
    #[error("{fun}: argument `{name}` given both by position and as a keyword")]
    Duplicate {
        /// Function name.
        fun: &'static str,
        /// Parameter name.
        name: &'static str,
    },
}

impl From<ArgError> for Outcome {
    fn from(err: ArgError) -> Outcome {
        Outcome::failed(RETCODE_BAD_ARGS, err.to_string())
    }
}

/// The arguments of one call, matched against a [`Signature`].
#[derive(Clone, Debug)]
pub struct Args<'a> {
    sig: &'static Signature,
    values: BTreeMap<&'static str, &'a Value>,
}

impl<'a> Args<'a> {
    /// Matches the call's positional and keyword arguments to `sig`.
    pub fn from_call(sig: &'static Signature, call: &'a Call) -> Result<Self, ArgError> {
        Args::parse(sig, &call.args, &call.kwargs)
    }

    /// Matches positional and keyword arguments to `sig`, refusing unknown
    /// keywords, surplus positional arguments and duplicates.
    pub fn parse(
        sig: &'static Signature,
        args: &'a [Value],
        kwargs: &'a Map<String, Value>,
    ) -> Result<Self, ArgError> {
        if args.len() > sig.params.len() {
            return Err(ArgError::TooManyPositional {
                fun: sig.fun,
                max: sig.params.len(),
                given: args.len(),
                accepted: accepted(sig),
            });
        }
        let mut values: BTreeMap<&'static str, &'a Value> =
            sig.params.iter().copied().zip(args.iter()).collect();
        let mut unknown = Vec::new();
        for (key, value) in kwargs {
            match sig.params.iter().find(|p| **p == key.as_str()) {
                Some(name) => {
                    if values.insert(name, value).is_some() {
                        return Err(ArgError::Duplicate { fun: sig.fun, name });
                    }
                }
                None => unknown.push(format!("`{}`", shorten(key, 40))),
            }
        }
        if !unknown.is_empty() {
            return Err(ArgError::UnknownKeywords {
                fun: sig.fun,
                unknown: unknown.join(", "),
                accepted: accepted(sig),
            });
        }
        Ok(Args { sig, values })
    }

    /// The function name these arguments are for.
    pub fn fun(&self) -> &'static str {
        self.sig.fun
    }

    /// The error for a required argument that was not given.
    pub fn missing(&self, name: &'static str) -> ArgError {
        ArgError::Missing {
            fun: self.sig.fun,
            name,
        }
    }

    /// The raw value as given, `null` included (for functions that pass
    /// values through unchanged).
    pub fn value(&self, name: &'static str) -> Option<&'a Value> {
        debug_assert!(
            self.sig.params.contains(&name),
            "{name} not in {}",
            self.sig.fun
        );
        self.values.get(name).copied()
    }

    /// The raw value, `null` counted as absent.
    fn given(&self, name: &'static str) -> Option<&'a Value> {
        self.value(name).filter(|v| !v.is_null())
    }

    fn invalid(&self, name: &'static str, expected: impl Into<String>, got: &Value) -> ArgError {
        ArgError::Invalid {
            fun: self.sig.fun,
            name,
            expected: expected.into(),
            got: describe(got),
        }
    }

    /// A string; numbers and booleans are taken as their text.
    pub fn string(&self, name: &'static str) -> Result<Option<String>, ArgError> {
        let Some(v) = self.given(name) else {
            return Ok(None);
        };
        match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => Ok(Some(n.to_string())),
            Value::Bool(b) => Ok(Some(b.to_string())),
            other => Err(self.invalid(name, "a string", other)),
        }
    }

    /// A boolean; also `"true"`/`"false"`, `"yes"`/`"no"`, `"on"`/`"off"`,
    /// `"1"`/`"0"` and the numbers 1/0.
    pub fn bool(&self, name: &'static str) -> Result<Option<bool>, ArgError> {
        let Some(v) = self.given(name) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => match n.as_f64() {
                Some(1.0) => Some(true),
                Some(0.0) => Some(false),
                _ => None,
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| self.invalid(name, "true or false", v))
    }

    /// A finite number; also a numeric string.
    pub fn number(&self, name: &'static str) -> Result<Option<f64>, ArgError> {
        self.number_as(name, "a number")
    }

    fn number_as(&self, name: &'static str, expected: &str) -> Result<Option<f64>, ArgError> {
        let Some(v) = self.given(name) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(self.invalid(name, expected, v)),
        }
    }

    /// A duration given as a non-negative number of seconds (fractions allowed).
    pub fn seconds(&self, name: &'static str) -> Result<Option<Duration>, ArgError> {
        const EXPECTED: &str = "a number of seconds";
        let Some(secs) = self.number_as(name, EXPECTED)? else {
            return Ok(None);
        };
        match Duration::try_from_secs_f64(secs) {
            Ok(d) => Ok(Some(d)),
            Err(_) => Err(self.invalid(name, EXPECTED, self.given(name).unwrap_or(&Value::Null))),
        }
    }

    /// A whole non-negative number of `unit`s ("bytes"); also a numeric string.
    pub fn count(&self, name: &'static str, unit: &str) -> Result<Option<u64>, ArgError> {
        let Some(v) = self.given(name) else {
            return Ok(None);
        };
        let parsed = match v {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|x| x.fract() == 0.0 && *x >= 0.0 && *x < u64::MAX as f64)
                    .map(|x| x as u64)
            }),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        parsed
            .map(Some)
            .ok_or_else(|| self.invalid(name, format!("a whole number of {unit}"), v))
    }

    /// An object whose values are strings (numbers and booleans taken as
    /// their text), such as environment variables.
    pub fn string_map(
        &self,
        name: &'static str,
    ) -> Result<Option<BTreeMap<String, String>>, ArgError> {
        const EXPECTED: &str = "an object of string values";
        let Some(v) = self.given(name) else {
            return Ok(None);
        };
        let Value::Object(map) = v else {
            return Err(self.invalid(name, EXPECTED, v));
        };
        let mut out = BTreeMap::new();
        for (key, value) in map {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(self.invalid(name, EXPECTED, v)),
            };
            out.insert(key.clone(), text);
        }
        Ok(Some(out))
    }
}

fn accepted(sig: &Signature) -> String {
    if sig.params.is_empty() {
        "none".to_owned()
    } else {
        sig.params.join(", ")
    }
}

/// `s` cut to at most `max` characters, marked with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut cut: String = s.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

/// A value as JSON, shortened for an error message.
fn describe(v: &Value) -> String {
    shorten(&v.to_string(), 80)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static SIG: Signature = Signature {
        fun: "cmd.run",
        params: &["cmd", "timeout", "env", "flag", "cap"],
        free_keywords: false,
        kind: halite_proto::catalog::Kind::Plain,
        doc: "",
    };

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn positional_or_keyword() {
        let args = vec![json!("ls")];
        let kwargs = map(json!({"timeout": 5}));
        let a = Args::parse(&SIG, &args, &kwargs).expect("valid");
        assert_eq!(a.string("cmd"), Ok(Some("ls".to_owned())));
        assert_eq!(a.seconds("timeout"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(a.string("env"), Ok(None));
        assert_eq!(a.fun(), "cmd.run");
    }

    #[test]
    fn strings_from_a_command_line_are_accepted() {
        let args = vec![json!("ls"), json!("2.5")];
        let kwargs = map(json!({"flag": "yes", "cap": "1024"}));
        let a = Args::parse(&SIG, &args, &kwargs).expect("valid");
        assert_eq!(a.seconds("timeout"), Ok(Some(Duration::from_millis(2500))));
        assert_eq!(a.bool("flag"), Ok(Some(true)));
        assert_eq!(a.count("cap", "bytes"), Ok(Some(1024)));
        let kwargs = map(json!({"flag": "false", "cap": 10.0, "cmd": 5}));
        let a = Args::parse(&SIG, &[], &kwargs).expect("valid");
        assert_eq!(a.bool("flag"), Ok(Some(false)));
        assert_eq!(a.count("cap", "bytes"), Ok(Some(10)));
        assert_eq!(a.string("cmd"), Ok(Some("5".to_owned())));
    }

    #[test]
    fn type_errors_name_function_argument_and_value() {
        let kwargs =
            map(json!({"timeout": "abc", "flag": "maybe", "cap": -1, "env": [1], "cmd": {"a": 1}}));
        let a = Args::parse(&SIG, &[], &kwargs).expect("names are valid");
        let err = a.seconds("timeout").expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "cmd.run: argument `timeout` must be a number of seconds, got \"abc\""
        );
        let out: Outcome = err.into();
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        assert!(!out.success);
        assert_eq!(
            a.bool("flag").err().map(|e| e.to_string()),
            Some("cmd.run: argument `flag` must be true or false, got \"maybe\"".to_owned())
        );
        assert_eq!(
            a.count("cap", "bytes").err().map(|e| e.to_string()),
            Some("cmd.run: argument `cap` must be a whole number of bytes, got -1".to_owned())
        );
        assert!(a.string_map("env").is_err());
        assert!(a.string("cmd").is_err());
    }

    #[test]
    fn negative_seconds_are_refused() {
        let kwargs = map(json!({"timeout": -3}));
        let a = Args::parse(&SIG, &[], &kwargs).expect("valid names");
        assert_eq!(
            a.seconds("timeout").err().map(|e| e.to_string()),
            Some("cmd.run: argument `timeout` must be a number of seconds, got -3".to_owned())
        );
    }

    #[test]
    fn null_means_not_given_but_value_keeps_it() {
        let args = vec![Value::Null];
        let none = Map::new();
        let a = Args::parse(&SIG, &args, &none).expect("valid");
        assert_eq!(a.string("cmd"), Ok(None));
        assert_eq!(a.value("cmd"), Some(&Value::Null));
        assert_eq!(
            a.missing("cmd").to_string(),
            "cmd.run: argument `cmd` is required"
        );
    }

    #[test]
    fn unknown_keywords_are_refused_with_the_accepted_list() {
        let kwargs = map(json!({"cmd": "ls", "bogus": 1, "other": 2}));
        let err = Args::parse(&SIG, &[], &kwargs).expect_err("unknown kwargs");
        assert_eq!(
            err.to_string(),
            "cmd.run: unknown keyword argument(s) `bogus`, `other`; accepted: cmd, timeout, env, flag, cap"
        );
    }

    #[test]
    fn too_many_positional_and_duplicates_are_refused() {
        let args: Vec<Value> = (0..6).map(|i| json!(i)).collect();
        let err = Args::parse(&SIG, &args, &Map::new()).expect_err("too many");
        assert!(
            matches!(
                err,
                ArgError::TooManyPositional {
                    max: 5,
                    given: 6,
                    ..
                }
            ),
            "{err}"
        );
        let args = vec![json!("ls")];
        let kwargs = map(json!({"cmd": "pwd"}));
        let err = Args::parse(&SIG, &args, &kwargs).expect_err("duplicate");
        assert_eq!(
            err,
            ArgError::Duplicate {
                fun: "cmd.run",
                name: "cmd"
            }
        );
    }

    #[test]
    fn string_map_converts_scalars() {
        let kwargs = map(json!({"env": {"A": "x", "N": 3, "B": true}}));
        let a = Args::parse(&SIG, &[], &kwargs).expect("valid");
        let env = a.string_map("env").expect("valid").expect("given");
        assert_eq!(env.get("A").map(String::as_str), Some("x"));
        assert_eq!(env.get("N").map(String::as_str), Some("3"));
        assert_eq!(env.get("B").map(String::as_str), Some("true"));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "x".repeat(500);
        let kwargs = map(json!({"timeout": long}));
        let a = Args::parse(&SIG, &[], &kwargs).expect("valid");
        let msg = a
            .seconds("timeout")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.len() < 200 && msg.ends_with('…'), "{msg}");
    }
}
