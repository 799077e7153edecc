//! `herald watch --template FILE`: embedding the value in a larger config file. The template is
//! minijinja with `value` (the first key's value as text), `key` (the first key) and `values`
//! (every watched key's value by name); undefined names are errors.

use minijinja::{Environment, context};

use super::file::WatchError;
use crate::director::template::FAIL;

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

    /// The file's content for the watched keys' `values` (the first is `value`).
    pub fn render(&self, values: &[(&str, &[u8])], origin: &str) -> Result<Vec<u8>, WatchError> {
        let fail = |reason: String| WatchError::Template {
            origin: origin.to_owned(),
            reason,
        };
        let mut texts = Vec::with_capacity(values.len());
        for (key, value) in values {
            let text = std::str::from_utf8(value).map_err(|_| {
                fail(format!(
                    "the value of {key} is not UTF-8 text, so it cannot go into a template"
                ))
            })?;
            texts.push((*key, text));
        }
        let Some(&(key, value)) = texts.first() else {
            return Err(fail("no key to render".to_owned()));
        };
        let template = self
            .env
            .get_template("template")
            .map_err(|e| fail(reason(&e)))?;
        let all = minijinja::Value::from_pairs(texts.clone());
        template
            .render(context! { value => value, key => key, values => all })
            .map(String::into_bytes)
            .map_err(|e| fail(reason(&e)))
    }
}

/// What went wrong and where, without quoting the value (only a `fail(…)` message, the
/// template's own words, is shown).
fn reason(err: &minijinja::Error) -> String {
    let what = match err.detail() {
        Some(detail) if detail.starts_with(FAIL) => detail.to_owned(),
        _ => err.kind().to_string(),
    };
    match err.line() {
        Some(line) => format!("line {line}: {what}"),
        None => what,
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
            embed.render(&[("K", b"a\nb")], "t").unwrap(),
            b"backends:\na\nb\n# K\n"
        );
    }

    #[test]
    fn binds_every_key_by_name() {
        let embed = Embed::compile(
            "{{ value }}\nsr_check_user = '{{ values.SR_USER }}'\n{{ values.PGPOOL_BACKENDS }}\n"
                .to_owned(),
            "t",
        )
        .unwrap();
        assert_eq!(
            embed
                .render(&[("PGPOOL_BACKENDS", b"b0"), ("SR_USER", b"mon")], "t")
                .unwrap(),
            b"b0\nsr_check_user = 'mon'\nb0\n"
        );
    }

    #[test]
    fn fail_stops_with_the_templates_own_message() {
        let embed = Embed::compile(
            "{% if value == '' %}{{ fail('no backend is registered') }}{% endif %}{{ value }}"
                .to_owned(),
            "t",
        )
        .unwrap();
        let err = embed.render(&[("K", b"")], "t").unwrap_err().to_string();
        assert!(
            err.contains("line 1: fail(): no backend is registered"),
            "{err}"
        );
        assert_eq!(embed.render(&[("K", b"x")], "t").unwrap(), b"x");
    }

    #[test]
    fn errors_name_the_line_and_never_the_value() {
        let embed = Embed::compile("ok\n{{ nope }}".to_owned(), "t").unwrap();
        let err = embed
            .render(&[("K", b"s3cret")], "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && !err.contains("s3cret"), "{err}");
        assert!(Embed::compile("{% for %}".to_owned(), "t").is_err());
        assert!(embed.render(&[("K", &[0xff])], "t").is_err());
    }

    /// `--template` sources and watched values, arbitrary: compiling and rendering never
    /// panic and finish in bounded time; a value that is not UTF-8 is an error.
    mod properties {
        use std::time::{Duration, Instant};

        use proptest::prelude::*;

        use super::*;

        fn value() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                3 => ".{0,40}".prop_map(String::into_bytes),
                1 => proptest::collection::vec(any::<u8>(), 0..64),
                1 => Just(b"{{ value }}{% raw %}".to_vec()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_template_and_values_render_or_fail_in_bounded_time(
                source in crate::director::template::tests::properties::source(),
                first in value(),
                second in value(),
            ) {
                let started = Instant::now();
                if let Ok(embed) = Embed::compile(source.clone(), "t") {
                    let rendered = embed.render(&[("A", &first), ("B", &second)], "t");
                    if std::str::from_utf8(&first).is_err() || std::str::from_utf8(&second).is_err() {
                        prop_assert!(rendered.is_err());
                    }
                    prop_assert!(embed.render(&[], "t").is_err());
                }
                prop_assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{:?} took {:?}", source, started.elapsed()
                );
            }
        }
    }
}
