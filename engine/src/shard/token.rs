//! The bot token as a newtype that never prints itself.

use std::fmt;

/// A Discord bot token (without the `Bot ` prefix that REST headers use).
///
/// `Debug` prints `[redacted]`, so a token inside a config or a machine never reaches a log. The
/// only way to read it is [`Token::expose_secret`], which the identify and resume writers call.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token text, for the payloads that must carry it (identify, resume, REST auth).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether the token is empty (an empty token can only ever be rejected with 4004).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn debug_is_redacted() {
        let token = Token::new("MTIz.secret.value");
        assert_eq!(format!("{token:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&token)), "Some([redacted])");
        assert_eq!(token.expose_secret(), "MTIz.secret.value");
    }
}
