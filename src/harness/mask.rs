//! Masking secrets for display: whole values of secret-looking names; inside other values,
//! passwords of URLs, secret `key=value` parameters (libpq DSNs, query strings) and the
//! credentials of `Bearer`/`Basic` authorization values.

use std::borrow::Cow;

const MASK: &str = "********";
/// A name containing one of these is secret.
const SECRET_WORDS: [&str; 5] = ["PASSWORD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"];
/// A name with one of these as a `_`-separated part is secret (`DB_PASS`, `PGPASSWD`'s
/// `PASSWD` alone, `HERALD_ZK_AUTH`).
const SECRET_PARTS: [&str; 6] = ["PASS", "PASSWD", "PWD", "PW", "PASSPHRASE", "AUTH"];
/// A `key=value` parameter inside a value is secret when its key, lower-cased, ends with one of
/// these (`password=`, `sslpassword=`, `access_token=`, `client_secret=`, `api_key=`).
const SECRET_PARAMS: [&str; 8] = [
    "password", "passwd", "pwd", "pass", "secret", "token", "apikey", "api_key",
];

/// The value as it may be shown: masked entirely when the name looks secret, else with the
/// secrets inside it masked (see the module).
pub fn mask<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    let upper = name.to_ascii_uppercase();
    if SECRET_WORDS.iter().any(|w| upper.contains(w))
        || upper
            .split('_')
            .any(|part| SECRET_PARTS.contains(&part) || part.ends_with("PASSWD"))
    {
        return Cow::Borrowed(MASK);
    }
    match mask_url_passwords(value) {
        Cow::Borrowed(_) => mask_params(value),
        Cow::Owned(urls) => Cow::Owned(mask_params(&urls).into_owned()),
    }
}

/// Masks the value of each secret `key=value` parameter (the value ends at white space, `&`,
/// `;`, `,` or `#`, or is quoted with `'`), and the word after `Bearer ` or `Basic `.
fn mask_params(value: &str) -> Cow<'_, str> {
    let bytes = value.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !value.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let secret_from = if bytes[i] == b'=' {
            let key_start = value[..i]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .map_or(0, |p| {
                    p + value[p..].chars().next().map_or(1, char::len_utf8)
                });
            let key = value[key_start..i].to_ascii_lowercase();
            (!key.is_empty() && SECRET_PARAMS.iter().any(|p| key.ends_with(p))).then_some(i + 1)
        } else {
            let word = &value[i..];
            ["bearer ", "basic "]
                .iter()
                .find(|w| {
                    word.len() >= w.len()
                        && word.is_char_boundary(w.len())
                        && word[..w.len()].eq_ignore_ascii_case(w)
                        && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
                })
                .map(|w| i + w.len())
        };
        let Some(start) = secret_from else {
            i += 1;
            continue;
        };
        let end = if bytes.get(start) == Some(&b'\'') {
            value[start + 1..]
                .find('\'')
                .map_or(value.len(), |q| start + 1 + q + 1)
        } else {
            value[start..]
                .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | ',' | '#' | '"'))
                .map_or(value.len(), |e| start + e)
        };
        if end > start {
            out.push_str(&value[copied..start]);
            out.push_str(MASK);
            copied = end;
        }
        i = end.max(i + 1);
    }
    if copied == 0 {
        return Cow::Borrowed(value);
    }
    out.push_str(&value[copied..]);
    Cow::Owned(out)
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
            ("DB_PASS", "hunter2", "********"),
            ("PGPASSWD", "hunter2", "********"),
            ("MYSQL_PWD", "hunter2", "********"),
            ("HERALD_ZK_AUTH", "app:pw", "********"),
            ("PASSENGER", "x", "x"),
            ("COMPASS_HOST", "c", "c"),
            (
                "DSN",
                "host=db user=app password=s3cret dbname=app",
                "host=db user=app password=******** dbname=app",
            ),
            (
                "DSN",
                "host=db password='s3 cret' sslpassword=k",
                "host=db password=******** sslpassword=********",
            ),
            (
                "URL",
                "https://h/cb?user=a&access_token=abc&x=1#f",
                "https://h/cb?user=a&access_token=********&x=1#f",
            ),
            (
                "JDBC",
                "jdbc:postgresql://db/app?user=a&password=p;x=1",
                "jdbc:postgresql://db/app?user=a&password=********;x=1",
            ),
            (
                "HEADERS",
                "Authorization: Bearer eyJhbGc.x",
                "Authorization: Bearer ********",
            ),
            ("HEADER", "basic dXNlcjpwdw==", "basic ********"),
            ("NOTE", "a=b c=d", "a=b c=d"),
            ("X", "password=", "password="),
            ("Y", "é=ü password=ä", "é=ü password=********"),
        ];
        for (name, value, want) in table {
            assert_eq!(mask(name, value), want, "{name}={value}");
        }
    }
}
