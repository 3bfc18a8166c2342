//! `ApiToken`: the bearer token the HTTP producer requires, held so that it never reaches a
//! log, a `Debug` dump or an error message by accident. It only shows its value through
//! `expose` and compares in constant time; everything else prints `[redacted]`.

use std::fmt;

/// A bearer token. `Debug` and `Display` print `ApiToken([redacted])` and `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("a token cannot be empty")]
    Empty,
    #[error("a token is visible ASCII without spaces (it travels in an `Authorization` header)")]
    NotVisibleAscii,
}

impl ApiToken {
    /// Checks and wraps `text`.
    ///
    /// # Errors
    /// An empty token, or one with characters an `Authorization` header cannot carry as
    /// they are (spaces, control characters, non-ASCII).
    pub fn new(text: impl Into<String>) -> Result<ApiToken, TokenError> {
        let text = text.into();
        if text.is_empty() {
            return Err(TokenError::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotVisibleAscii);
        }
        Ok(ApiToken(text))
    }

    /// The token itself, for the one place that needs it (sending it as a client).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, comparing every byte whatever the first difference,
    /// so the time taken does not tell a guesser how much of a guess was right.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != given.len() {
            return false;
        }
        mine.iter()
            .zip(given)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::str::FromStr for ApiToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<ApiToken, TokenError> {
        ApiToken::new(text)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken([redacted])")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_prints_itself() {
        let token = ApiToken::new("s3cret-token").expect("a valid token");
        assert_eq!(format!("{token}"), "[redacted]");
        assert_eq!(format!("{token:?}"), "ApiToken([redacted])");
        assert_eq!(format!("{:?}", Some(&token)), "Some(ApiToken([redacted]))");
        assert_eq!(token.expose(), "s3cret-token");
    }

    #[test]
    fn tokens_compare_whole() {
        let token = ApiToken::new("abc").expect("a valid token");
        assert!(token.matches(b"abc"));
        assert!(!token.matches(b"abd"));
        assert!(!token.matches(b"ab"));
        assert!(!token.matches(b"abcd"));
        assert!(!token.matches(b""));
    }

    #[test]
    fn empty_and_unsendable_tokens_are_refused() {
        assert_eq!(ApiToken::new(""), Err(TokenError::Empty));
        assert_eq!(ApiToken::new("a b"), Err(TokenError::NotVisibleAscii));
        assert_eq!(ApiToken::new("é"), Err(TokenError::NotVisibleAscii));
        assert_eq!(ApiToken::new("a\n"), Err(TokenError::NotVisibleAscii));
        assert!("x".parse::<ApiToken>().is_ok());
    }
}
