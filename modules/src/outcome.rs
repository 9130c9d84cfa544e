//! What a module function returns, and the retcode conventions every module
//! shares so that callers can tell failures apart without parsing text.

use serde_json::Value;

/// The function ran but failed for a reason of its own (or a command it ran
/// failed to start).
pub const RETCODE_ERROR: i32 = 1;
/// The arguments were missing, of the wrong type or unknown: nothing ran.
pub const RETCODE_BAD_ARGS: i32 = 2;
/// The function was stopped by its own timeout or by the job's cancellation
/// (same code as coreutils `timeout`).
pub const RETCODE_TIMEOUT: i32 = 124;
/// No such module or function on this minion (same code as a shell's
/// "command not found").
pub const RETCODE_UNKNOWN_FUNCTION: i32 = 127;

/// The result of one module function call, as it goes into a `Return`.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Did the function do what was asked?
    pub success: bool,
    /// Process-style code: 0 on success, see the `RETCODE_*` constants.
    pub retcode: i32,
    /// What the function returned, or the error message.
    pub data: Value,
}

impl Outcome {
    /// A success carrying `data`, with retcode 0.
    pub fn ok(data: Value) -> Self {
        Outcome {
            success: true,
            retcode: 0,
            data,
        }
    }

    /// A failure whose data is the message shown to the user.
    pub fn failed(retcode: i32, message: impl Into<String>) -> Self {
        Outcome {
            success: false,
            retcode,
            data: Value::String(message.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ok_is_success_with_zero_retcode() {
        let o = Outcome::ok(json!({"a": 1}));
        assert!(o.success);
        assert_eq!(o.retcode, 0);
        assert_eq!(o.data, json!({"a": 1}));
    }

    #[test]
    fn failed_carries_message_and_code() {
        let o = Outcome::failed(RETCODE_BAD_ARGS, "nope");
        assert!(!o.success);
        assert_eq!(o.retcode, 2);
        assert_eq!(o.data, json!("nope"));
    }
}
