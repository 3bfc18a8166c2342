//! Topic names and topic patterns (NATS style): `*` matches one dot-separated segment,
//! `>` matches one or more trailing segments. A segment may also contain `*` as a glob
//! (`order*` matches `orderCreated`), which is what `edaflow tail 'order*'` relies on.
//!
//! This module owns the syntax rules; it knows nothing about brokers or files.

use std::fmt;

/// Why a topic name or pattern is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a topic name cannot be empty")]
    Empty,
    #[error("empty segment (two dots in a row, or a leading or trailing dot)")]
    EmptySegment,
    #[error("invalid character {ch:?}; topic names use letters, digits, `_`, `-`, `:` and `.`")]
    InvalidChar { ch: char },
    #[error("`>` must be a whole segment and the last one")]
    MisplacedRest,
    #[error("wildcards are only allowed in patterns, not in a topic name")]
    WildcardInName,
    #[error("topic name longer than {max} bytes")]
    TooLong { max: usize },
}

/// The longest accepted topic name, in bytes (the event's own limit).
pub const MAX_TOPIC_LEN: usize = crate::event::limits::MAX_TOPIC_BYTES;

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':')
}

/// Checks a concrete topic name (what events are published to).
///
/// # Errors
/// Returns the first rule the name breaks.
pub fn validate_topic(name: &str) -> Result<(), PatternError> {
    if name.is_empty() {
        return Err(PatternError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(PatternError::TooLong { max: MAX_TOPIC_LEN });
    }
    for segment in name.split('.') {
        if segment.is_empty() {
            return Err(PatternError::EmptySegment);
        }
        for ch in segment.chars() {
            if ch == '*' || ch == '>' {
                return Err(PatternError::WildcardInName);
            }
            if !valid_char(ch) {
                return Err(PatternError::InvalidChar { ch });
            }
        }
    }
    Ok(())
}

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
    /// `>`: one or more segments, last only.
    Rest,
    /// A segment with `*` inside, such as `order*`: split on the stars.
    Glob(Vec<String>),
}

/// A parsed topic pattern. A plain topic name is a pattern that matches only itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    segments: Vec<Segment>,
}

impl TopicPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// Returns the first rule the pattern breaks.
    pub fn parse(text: &str) -> Result<TopicPattern, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.len() > MAX_TOPIC_LEN {
            return Err(PatternError::TooLong { max: MAX_TOPIC_LEN });
        }
        let parts: Vec<&str> = text.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() {
                return Err(PatternError::EmptySegment);
            }
            let segment = match *part {
                "*" => Segment::Any,
                ">" if i == last => Segment::Rest,
                p if p.contains('>') => return Err(PatternError::MisplacedRest),
                p if p.contains('*') => Segment::Glob(p.split('*').map(str::to_owned).collect()),
                p => Segment::Literal(p.to_owned()),
            };
            for ch in part.chars() {
                if ch != '*' && ch != '>' && !valid_char(ch) {
                    return Err(PatternError::InvalidChar { ch });
                }
            }
            segments.push(segment);
        }
        Ok(TopicPattern {
            text: text.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no wildcard, so it names exactly one topic.
    pub fn is_literal(&self) -> bool {
        self.segments
            .iter()
            .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// Does `topic` match this pattern?
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some(),
                Segment::Any => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
                Segment::Glob(pieces) => match parts.next() {
                    Some(p) if glob_match(pieces, p) => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Matches `text` against the pieces of a segment split on `*` (so there is a star
/// between every two pieces).
fn glob_match(pieces: &[String], text: &str) -> bool {
    let (first, rest) = match pieces.split_first() {
        Some(split) => split,
        None => return text.is_empty(),
    };
    let Some(mut remaining) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for piece in middle {
        match remaining.find(piece.as_str()) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, topic: &str) -> bool {
        TopicPattern::parse(pattern).unwrap().matches(topic)
    }

    #[test]
    fn literal_matches_only_itself() {
        assert!(m("orderCreated", "orderCreated"));
        assert!(!m("orderCreated", "orderCreated.dead"));
        assert!(!m("orderCreated", "order"));
    }

    #[test]
    fn star_is_one_segment() {
        assert!(m("order.*", "order.created"));
        assert!(!m("order.*", "order"));
        assert!(!m("order.*", "order.created.v2"));
        assert!(m("*.command.*", "orders.command.place"));
    }

    #[test]
    fn rest_is_one_or_more_trailing_segments() {
        assert!(m("order.>", "order.created"));
        assert!(m("order.>", "order.created.v2"));
        assert!(!m("order.>", "order"));
        assert!(m(">", "anything.at.all"));
    }

    #[test]
    fn glob_inside_a_segment() {
        assert!(m("order*", "orderCreated"));
        assert!(m("order*", "order"));
        assert!(!m("order*", "orderCreated.dead"));
        assert!(m("*Created", "orderCreated"));
        assert!(m("o*C*d", "orderCreated"));
        assert!(!m("o*C*x", "orderCreated"));
        assert!(!m("ab*ba", "aba"));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert_eq!(TopicPattern::parse(""), Err(PatternError::Empty));
        assert_eq!(TopicPattern::parse("a..b"), Err(PatternError::EmptySegment));
        assert_eq!(
            TopicPattern::parse("a.>.b"),
            Err(PatternError::MisplacedRest)
        );
        assert_eq!(TopicPattern::parse("a>"), Err(PatternError::MisplacedRest));
        assert_eq!(
            TopicPattern::parse("a b"),
            Err(PatternError::InvalidChar { ch: ' ' })
        );
    }

    #[test]
    fn topic_names_reject_wildcards() {
        assert!(validate_topic("orders.command.place").is_ok());
        assert_eq!(validate_topic("a.*"), Err(PatternError::WildcardInName));
        assert_eq!(
            validate_topic("a/b"),
            Err(PatternError::InvalidChar { ch: '/' })
        );
    }
}
