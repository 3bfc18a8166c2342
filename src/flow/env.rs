//! `${VAR}` and `${VAR:-default}` in the flow-file values that differ from one deployment to
//! the next (`[flow] broker`, an `http` producer's `listen` and `token`, a `lines`
//! producer's `path`): the expansion itself, a pure function of the text and a lookup.
//!
//! `$${` is a literal `${`; any other `$` is itself. A name is ASCII letters, digits and
//! `_`, not starting with a digit. `${VAR:-default}` takes the default when `VAR` is unset
//! or empty (as a shell does); the default is literal text up to the first `}`. What a
//! variable holds is inserted as it is and never expanded again. Which keys expand, and
//! the diagnostics of a failed expansion, are the loader's (`load::reader`).

use std::fmt;
use std::ops::Range;

/// Why a value could not be expanded, and where in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandError {
    /// The byte range of the reference (`${…}`, or from `${` to the end when unclosed).
    pub span: Range<usize>,
    pub kind: ExpandErrorKind,
}

/// What is wrong with a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpandErrorKind {
    /// `${NAME}` without a default, and `NAME` is not set.
    Missing { name: String },
    /// `${` without the `}` that closes it.
    Unclosed,
    /// `${…}` whose inside is not `NAME` or `NAME:-default`.
    BadName { written: String },
}

impl fmt::Display for ExpandErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandErrorKind::Missing { name } => {
                write!(f, "environment variable `{name}` is not set")
            }
            ExpandErrorKind::Unclosed => f.write_str("`${` is not closed by a `}`"),
            ExpandErrorKind::BadName { written } if written.is_empty() => {
                f.write_str("`${}` names no variable")
            }
            ExpandErrorKind::BadName { written } => {
                write!(f, "`{written}` is not a variable name")
            }
        }
    }
}

/// `text` with every `${VAR}` and `${VAR:-default}` replaced by what `lookup` gives for
/// `VAR` (or the default), and every `$${` by `${`.
///
/// # Errors
/// The first reference that is malformed, or names a variable `lookup` does not know and
/// gives no default, with its byte range in `text`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = text[at..].find('$') {
        let dollar = at + found;
        out.push_str(&text[at..dollar]);
        let after = &text[dollar + 1..];
        if after.starts_with("${") {
            out.push_str("${");
            at = dollar + 3;
            continue;
        }
        if !after.starts_with('{') {
            out.push('$');
            at = dollar + 1;
            continue;
        }
        let inside_start = dollar + 2;
        let Some(close) = text[inside_start..].find('}') else {
            return Err(ExpandError {
                span: dollar..text.len(),
                kind: ExpandErrorKind::Unclosed,
            });
        };
        let end = inside_start + close + 1;
        let inside = &text[inside_start..inside_start + close];
        let (name, default) = match inside.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inside, None),
        };
        if !is_name(name) {
            return Err(ExpandError {
                span: dollar..end,
                kind: ExpandErrorKind::BadName {
                    written: name.to_owned(),
                },
            });
        }
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ExpandError {
                    span: dollar..end,
                    kind: ExpandErrorKind::Missing {
                        name: name.to_owned(),
                    },
                })
            }
        }
        at = end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

/// The process environment as a lookup; a variable that is not valid UTF-8 counts as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// ASCII letters, digits and `_`, not starting with a digit.
fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("redis.internal".to_owned()),
            "PORT" => Some("6380".to_owned()),
            "EMPTY" => Some(String::new()),
            "CAFÉ_FREE" => Some("never".to_owned()),
            "GREETING" => Some("grüß ${HOST} dich".to_owned()),
            _ => None,
        }
    }

    fn ok(text: &str) -> String {
        expand(text, env).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn err(text: &str) -> (&str, ExpandErrorKind) {
        let error = expand(text, env).expect_err(text);
        (&text[error.span.clone()], error.kind)
    }

    #[test]
    fn references_are_replaced() {
        assert_eq!(
            ok("redis://${HOST}:${PORT}/0"),
            "redis://redis.internal:6380/0"
        );
        assert_eq!(ok("${HOST}${PORT}"), "redis.internal6380");
        assert_eq!(ok("${EMPTY}"), "");
        assert_eq!(ok("no references"), "no references");
        assert_eq!(ok(""), "");
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(ok("${NOPE:-127.0.0.1:3000}"), "127.0.0.1:3000");
        assert_eq!(ok("${EMPTY:-fallback}"), "fallback");
        assert_eq!(ok("${PORT:-1}"), "6380");
        assert_eq!(ok("${NOPE:-}"), "");
        assert_eq!(ok("${NOPE:-a:-b}"), "a:-b");
        assert_eq!(
            ok("${NOPE:-a}b}"),
            "ab}",
            "the default ends at the first `}}`"
        );
    }

    #[test]
    fn escapes_and_lone_dollars_stay_literal() {
        assert_eq!(ok("$${HOST}"), "${HOST}");
        assert_eq!(ok("$$${HOST}"), "$${HOST}");
        assert_eq!(ok("cost: $5, $HOST, $"), "cost: $5, $HOST, $");
        assert_eq!(ok("$${"), "${");
    }

    #[test]
    fn values_are_not_expanded_again() {
        assert_eq!(ok("${GREETING}"), "grüß ${HOST} dich");
    }

    #[test]
    fn unicode_around_references_keeps_its_bytes() {
        assert_eq!(
            ok("ünï ${HOST} çødé ${NOPE:-日本}"),
            "ünï redis.internal çødé 日本"
        );
        let text = "日本 ${MISSING} ü";
        let error = expand(text, env).expect_err("missing");
        assert_eq!(&text[error.span], "${MISSING}");
    }

    #[test]
    fn a_missing_variable_is_an_error_on_its_reference() {
        assert_eq!(
            err("redis://:${PASSWORD}@${HOST}"),
            (
                "${PASSWORD}",
                ExpandErrorKind::Missing {
                    name: "PASSWORD".into()
                }
            )
        );
        let (_, kind) = err("${HOST}-${ALSO_MISSING}");
        assert_eq!(
            kind.to_string(),
            "environment variable `ALSO_MISSING` is not set"
        );
    }

    #[test]
    fn malformed_references_are_errors_on_their_text() {
        assert_eq!(err("a ${"), ("${", ExpandErrorKind::Unclosed));
        assert_eq!(err("${HOST"), ("${HOST", ExpandErrorKind::Unclosed));
        assert_eq!(err("x ${VAR:-"), ("${VAR:-", ExpandErrorKind::Unclosed));
        assert_eq!(
            err("${1X}"),
            (
                "${1X}",
                ExpandErrorKind::BadName {
                    written: "1X".into()
                }
            )
        );
        assert_eq!(
            err("${}"),
            ("${}", ExpandErrorKind::BadName { written: "".into() })
        );
        assert_eq!(
            err("${VAR-x}"),
            (
                "${VAR-x}",
                ExpandErrorKind::BadName {
                    written: "VAR-x".into()
                }
            )
        );
        assert_eq!(
            err("${CAFÉ_FREE}"),
            (
                "${CAFÉ_FREE}",
                ExpandErrorKind::BadName {
                    written: "CAFÉ_FREE".into()
                }
            )
        );
        assert_eq!(err("${:-x}").1.to_string(), "`${}` names no variable");
    }
}
