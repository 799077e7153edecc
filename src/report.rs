//! An error and its causes as one line, each said once.
//!
//! herald's error types name the thing and what to do, and most also quote their OS cause
//! (`cannot read --config F: No such file or directory (os error 2); check the path`). Printing
//! the whole chain the usual way (`{:#}`) would then repeat that cause after the message. Here a
//! cause is appended only when the line does not already say it.

use std::error::Error;
use std::fmt;

/// Displays `err` followed by each cause in its chain that the text so far does not contain.
pub struct OneLine<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(err) = cause {
            let said = err.to_string();
            if !said.is_empty() && !line.contains(&said) {
                line.push_str(": ");
                line.push_str(&said);
            }
            cause = err.source();
        }
        f.write_str(&line)
    }
}

/// [`OneLine`] for an `anyhow::Error`.
pub fn one_line(err: &anyhow::Error) -> String {
    OneLine(err.as_ref()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot run {file}: {source}; check its permissions")]
    struct Quoting {
        file: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn a_cause_the_message_quotes_is_not_repeated() {
        let err = Quoting {
            file: "/environment/A",
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        };
        let err = anyhow::Error::new(err);
        let line = one_line(&err);
        assert_eq!(line.matches("Permission denied").count(), 1, "{line}");
    }

    #[test]
    fn context_and_an_unquoted_cause_are_both_said() {
        let err = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("cannot read --config /etc/h.toml");
        assert_eq!(
            one_line(&err),
            "cannot read --config /etc/h.toml: No such file or directory (os error 2)"
        );
    }
}
