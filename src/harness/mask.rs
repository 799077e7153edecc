//! Masking secrets for display: whole values of secret-looking names, and passwords inside URLs.

use std::borrow::Cow;

const MASK: &str = "********";
const SECRET_WORDS: [&str; 5] = ["PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"];

/// The value as it may be shown: masked entirely when the name looks secret, else with the
/// password of any `scheme://user:password@host` URL masked.
pub fn mask<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    let upper = name.to_ascii_uppercase();
    if SECRET_WORDS.iter().any(|w| upper.contains(w)) {
        return Cow::Borrowed(MASK);
    }
    mask_url_passwords(value)
}

fn mask_url_passwords(value: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = value;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', list separator or white space.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | ',' | ';') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    if !changed {
        return Cow::Borrowed(value);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        let table = [
            (
                "DATABASE_URL",
                "postgresql://app:s3cret@db:5432/app",
                "postgresql://app:********@db:5432/app",
            ),
            (
                "DATABASE_URL",
                "postgresql://app@db/app",
                "postgresql://app@db/app",
            ),
            (
                "BACKENDS",
                "redis://:pw@a:1,redis://u:p@b:2/0",
                "redis://:********@a:1,redis://u:********@b:2/0",
            ),
            ("HOST", "db.example:5432", "db.example:5432"),
            ("PGPASSWORD", "hunter2", "********"),
            ("api_token", "abc", "********"),
            ("AWS_SECRET_ACCESS_KEY", "x", "********"),
            ("SSH_KEY_FILE", "/k", "********"),
            ("DB_CREDENTIALS", "u:p", "********"),
            ("URL", "http://h/p?q=a:b@c", "http://h/p?q=a:b@c"),
        ];
        for (name, value, want) in table {
            assert_eq!(mask(name, value), want, "{name}={value}");
        }
    }
}
