//! `herald watch --template FILE`: embedding the value in a larger config file. The template is
//! minijinja with `value` (the value as text) and `key`; undefined names are errors.

use minijinja::{Environment, context};

use super::file::WatchError;

/// A compiled `--template`.
pub struct Embed {
    env: Environment<'static>,
}

impl Embed {
    /// Compiles `source` (the text of `--template FILE`, named `origin` in errors).
    pub fn compile(source: String, origin: &str) -> Result<Embed, WatchError> {
        let fail = |e: &minijinja::Error| WatchError::Template {
            origin: origin.to_owned(),
            reason: reason(e),
        };
        let mut env = crate::director::template::environment().map_err(|e| fail(&e))?;
        env.set_fuel(Some(1_000_000));
        env.add_template_owned("template", source)
            .map_err(|e| fail(&e))?;
        Ok(Embed { env })
    }

    /// The file's content for `value`.
    pub fn render(&self, key: &str, value: &[u8], origin: &str) -> Result<Vec<u8>, WatchError> {
        let fail = |reason: String| WatchError::Template {
            origin: origin.to_owned(),
            reason,
        };
        let value = std::str::from_utf8(value).map_err(|_| {
            fail("the value is not UTF-8 text, so it cannot go into a template".to_owned())
        })?;
        let template = self
            .env
            .get_template("template")
            .map_err(|e| fail(reason(&e)))?;
        template
            .render(context! { value => value, key => key })
            .map(String::into_bytes)
            .map_err(|e| fail(reason(&e)))
    }
}

/// What went wrong and where, without quoting the value.
fn reason(err: &minijinja::Error) -> String {
    match err.line() {
        Some(line) => format!("line {line}: {}", err.kind()),
        None => err.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_the_value() {
        let embed =
            Embed::compile("backends:\n{{ value }}\n# {{ key }}\n".to_owned(), "t").unwrap();
        assert_eq!(
            embed.render("K", b"a\nb", "t").unwrap(),
            b"backends:\na\nb\n# K\n"
        );
    }

    #[test]
    fn errors_name_the_line_and_never_the_value() {
        let embed = Embed::compile("ok\n{{ nope }}".to_owned(), "t").unwrap();
        let err = embed.render("K", b"s3cret", "t").unwrap_err().to_string();
        assert!(err.contains("line 2") && !err.contains("s3cret"), "{err}");
        assert!(Embed::compile("{% for %}".to_owned(), "t").is_err());
        assert!(embed.render("K", &[0xff], "t").is_err());
    }
}
