//! Reading Redis replies: the shapes the broker's commands and scripts answer with, as
//! text, integers and arrays.
//!
//! Each reader says what it expects and fails with `failure::unexpected` when the value is
//! something else: an unexpected reply is an error, never read as `""` or `0`. Where a
//! missing or nil value is legitimately empty (a key that does not exist, a blocking read
//! that timed out), the caller says so and why, next to where it reads it.
//!
//! This module only reads values already received; it must not talk to Redis.

use redis::Value;

use super::failure::unexpected;
use crate::broker::BrokerError;

/// A bulk or simple string (or an integer, or `OK`) as text.
///
/// # Errors
/// An unexpected reply for anything else (nil included).
pub(super) fn text(value: &Value) -> Result<String, BrokerError> {
    match value {
        Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Int(n) => Ok(n.to_string()),
        Value::Okay => Ok("OK".to_owned()),
        other => Err(unexpected("text expected", other)),
    }
}

/// An integer, or a string holding one (Lua scripts return both).
///
/// # Errors
/// An unexpected reply for anything else.
pub(super) fn int(value: &Value) -> Result<i64, BrokerError> {
    match value {
        Value::Int(n) => Ok(*n),
        Value::BulkString(_) | Value::SimpleString(_) => text(value)?
            .parse()
            .map_err(|_| unexpected("an integer expected", value)),
        other => Err(unexpected("an integer expected", other)),
    }
}

/// A count: an integer that is not negative.
///
/// # Errors
/// An unexpected reply for anything else.
pub(super) fn count(value: &Value) -> Result<u64, BrokerError> {
    u64::try_from(int(value)?).map_err(|_| unexpected("a count expected", value))
}

/// An array's elements.
///
/// # Errors
/// An unexpected reply for anything else (nil included).
pub(super) fn items(value: &Value) -> Result<&[Value], BrokerError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(unexpected("an array expected", other)),
    }
}

/// An array's elements, none for nil (what a blocking read answers when its time passed).
///
/// # Errors
/// An unexpected reply for anything else.
pub(super) fn items_or_nil(value: &Value) -> Result<&[Value], BrokerError> {
    match value {
        Value::Nil => Ok(&[]),
        other => items(other),
    }
}

/// Element `i` of an array reply.
///
/// # Errors
/// An unexpected reply when the array is shorter.
pub(super) fn nth(reply: &[Value], i: usize) -> Result<&Value, BrokerError> {
    reply.get(i).ok_or_else(|| {
        unexpected(
            &format!("an array of more than {i} elements expected"),
            &reply,
        )
    })
}

/// The first element of a script's reply as text: what happened (`ok`, `full`, `gone`…).
///
/// # Errors
/// An unexpected reply when it is empty or not text.
pub(super) fn head(reply: &[Value]) -> Result<String, BrokerError> {
    text(nth(reply, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn expected_shapes_are_read() {
        assert_eq!(text(&bulk("ok")).unwrap(), "ok");
        assert_eq!(text(&Value::Int(7)).unwrap(), "7");
        assert_eq!(int(&bulk("-3")).unwrap(), -3);
        assert_eq!(count(&Value::Int(3)).unwrap(), 3);
        let array = Value::Array(vec![bulk("ok"), Value::Int(1)]);
        assert_eq!(items(&array).unwrap().len(), 2);
        assert_eq!(head(items(&array).unwrap()).unwrap(), "ok");
        assert!(items_or_nil(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn unexpected_shapes_are_errors_not_empty_or_zero() {
        assert!(text(&Value::Nil).is_err());
        assert!(text(&Value::Array(vec![])).is_err());
        assert!(int(&bulk("seven")).is_err());
        assert!(int(&Value::Nil).is_err());
        assert!(count(&Value::Int(-1)).is_err());
        assert!(items(&Value::Nil).is_err());
        assert!(items(&bulk("x")).is_err());
        assert!(items_or_nil(&bulk("x")).is_err());
        assert!(nth(&[], 0).is_err());
        assert!(head(&[]).is_err());
        let error = int(&bulk("seven")).unwrap_err();
        assert!(!error.is_transient(), "{error:?}");
    }
}
