//! The gateway's bearer token: parsed once from `--token-file` or `HERALD_GATEWAY_TOKEN`, and
//! compared with what a request presents in constant time.
//!
//! Only the token's SHA-256 digest is kept, and a presented token is compared digest to digest
//! with `subtle`: the time a comparison takes says nothing about how much of a guess was right,
//! nor about the token's length.

use hyper::header::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;
/// The longest token accepted (a header line must carry it).
pub const MAX_TOKEN_LEN: usize = 4096;

/// A bearer token every request but `/live` and `/ready` must present.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token, not even its digest.
        f.write_str("Token(…)")
    }
}

impl Token {
    /// The token in `text` (a file's content or an environment variable): surrounding
    /// whitespace (a trailing newline) is dropped; what is left must be 16 to 4096 visible ASCII
    /// characters. The error says what is wrong without repeating any of it.
    pub fn parse(text: &str) -> Result<Token, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err(
                "is empty; write a random token, e.g. `openssl rand -hex 32 > FILE`".to_owned(),
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("holds spaces, control or non-ASCII characters; a bearer token is one word of visible ASCII, e.g. `openssl rand -hex 32`".to_owned());
        }
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "is shorter than {MIN_TOKEN_LEN} characters and can be guessed; use e.g. `openssl rand -hex 32`"
            ));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("is longer than {MAX_TOKEN_LEN} characters"));
        }
        Ok(Token {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether an `Authorization` header carries this token (`Bearer TOKEN`, the scheme in any
    /// case, as RFC 9110 has it).
    pub fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(presented) = authorization
            .map(HeaderValue::as_bytes)
            .and_then(|v| v.split_at_checked(7))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, token)| token.trim_ascii())
        else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented).into();
        self.digest.ct_eq(&presented).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef0123";

    #[test]
    fn parses() {
        for (text, ok) in [
            (GOOD, true),
            ("0123456789abcdef0123\n", true),
            ("  0123456789abcdef0123 \r\n", true),
            ("", false),
            ("\n", false),
            ("short", false),
            ("0123456789abcdef 0123", false),
            ("0123456789abcdef\u{e9}0123", false),
            ("0123456789abcdef\x010123", false),
        ] {
            assert_eq!(Token::parse(text).is_ok(), ok, "{text:?}");
        }
        assert!(Token::parse(&"x".repeat(MAX_TOKEN_LEN)).is_ok());
        assert!(Token::parse(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }

    #[test]
    fn errors_never_repeat_the_token() {
        for text in ["s3cr3t", "s3cr3t s3cr3t s3cr3t", "s3cr3t\u{e9}s3cr3ts3cr3t"] {
            let err = Token::parse(text).unwrap_err();
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        assert!(!format!("{:?}", Token::parse(GOOD).unwrap()).contains("0123"));
    }

    #[test]
    fn accepts_only_its_own_bearer_token() {
        let token = Token::parse(GOOD).unwrap();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        for (authorization, ok) in [
            (Some(format!("Bearer {GOOD}")), true),
            (Some(format!("bearer {GOOD}")), true),
            (Some(format!("BEARER  {GOOD} ")), true),
            (Some(format!("Bearer {GOOD}x")), false),
            (Some(format!("Bearer {}", &GOOD[1..])), false),
            (Some(format!("Basic {GOOD}")), false),
            (Some(GOOD.to_owned()), false),
            (Some("Bearer ".to_owned()), false),
            (Some("Bearer".to_owned()), false),
            (None, false),
        ] {
            let value = authorization.as_deref().map(header);
            assert_eq!(token.accepts(value.as_ref()), ok, "{authorization:?}");
        }
    }
}
