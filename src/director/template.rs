//! Template derivations: one minijinja template over the instances, with herald's helpers,
//! strict about undefined values and fuel-limited so a runaway loop fails instead of hanging.

use std::fmt;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

use super::derive::{DeriveError, instance_json};
use super::slots::SlotOf;
use crate::instance::Instance;

/// The template's name inside its environment (never shown: errors give the line only).
const NAME: &str = "value";
/// Fuel every render gets, whatever the number of instances: roughly that many instructions.
pub const FUEL_BASE: u64 = 100_000;
/// Fuel added per instance, so a template that is fine for 3 instances is fine for 10,000.
pub const FUEL_PER_INSTANCE: u64 = 1_000;

/// A compiled template.
///
/// Context:
/// - `instances`: every instance, sorted by service then id, each an object with `service`,
///   `id`, `address`, `port`, `sslPort`, `labels`, `meta`, `endpoints`, `weight` and
///   `registered` (milliseconds since the epoch) — see [`instance_json`];
/// - `services`: a map from service name to its instances (same order);
/// - `count`: the number of instances.
///
/// Filters besides minijinja's built-ins:
/// - `with_label("role", "primary")` (alias `select_label`): the instances with that label
///   value; `with_label("role")`: the instances that have the label at all;
/// - `oldest`: the instance registered first (ties: smallest id), or `none` for an empty list;
/// - `weighted`: the instances with weight > 0.
///
/// Functions: `fail("message")` stops the render with that message (nothing is published).
///
/// ```jinja
/// {% set primary = instances | with_label("role", "primary") | weighted | oldest %}
/// postgresql://{{ primary.meta.user }}@{{ primary.address }}:{{ primary.port }}/app
/// ```
///
/// Syntax: undefined values are errors (a typo never renders as an empty string); block tags
/// take their line's newline and indentation with them (`trim_blocks`, `lstrip_blocks`), and the
/// template's final newline is kept, so a template file renders like the file it looks like.
/// Nothing is HTML-escaped.
#[derive(Clone)]
pub struct Template {
    /// Shared: outputs are cloned, and every render clones it once more to set its fuel.
    env: Arc<Environment<'static>>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Template { .. }")
    }
}

/// herald's template dialect, shared with `herald watch --template`: a template file renders
/// like the file it looks like (block tags leave no blank lines, the last newline stays,
/// nothing is HTML-escaped), and an undefined name is an error.
pub fn environment() -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .keep_trailing_newline(true)
        .build()?;
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_function("fail", fail);
    Ok(env)
}

/// What `fail(…)`'s errors start with (the template's own words, so they are shown).
pub const FAIL: &str = "fail(): ";

/// `fail("message")`: stop rendering with the template's own error, e.g.
/// `{% if not primary %}{{ fail("no primary registered") }}{% endif %}`. Nothing is written or
/// published; the message is reported.
fn fail(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{FAIL}{message}"),
    ))
}

impl Template {
    /// Compiles `source`; a syntax error names its line.
    pub fn compile(source: &str) -> Result<Template, DeriveError> {
        let mut env = environment().map_err(|e| template_error(&e))?;
        env.add_filter("with_label", with_label);
        env.add_filter("select_label", with_label);
        env.add_filter("oldest", oldest);
        env.add_filter("weighted", weighted);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| template_error(&e))?;
        Ok(Template { env: Arc::new(env) })
    }

    /// Renders the template over `instances` (sorted by service, id).
    pub(super) fn render(
        &self,
        instances: &[&Instance],
        slots: Option<&SlotOf>,
    ) -> Result<Vec<u8>, DeriveError> {
        let list: Vec<Value> = instances
            .iter()
            .map(|i| to_value(&instance_json(i, slots)))
            .collect();
        let mut services: Vec<(String, Vec<Value>)> = Vec::new();
        for (instance, value) in instances.iter().zip(&list) {
            match services.last_mut() {
                Some((name, members)) if name == instance.service.as_str() => {
                    members.push(value.clone())
                }
                _ => services.push((instance.service.as_str().to_owned(), vec![value.clone()])),
            }
        }
        let context = Value::from_pairs([
            ("count", Value::from(list.len())),
            ("services", Value::from_pairs(services)),
            ("instances", Value::from(list)),
        ]);
        // The fuel is per render and grows with the input; the environment is cheap to clone
        // (its templates and filters are shared).
        let mut env = Environment::clone(&self.env);
        env.set_fuel(Some(FUEL_BASE.saturating_add(
            FUEL_PER_INSTANCE.saturating_mul(instances.len() as u64),
        )));
        let template = env.get_template(NAME).map_err(|e| template_error(&e))?;
        let rendered = template.render(context).map_err(|e| template_error(&e))?;
        Ok(rendered.into_bytes())
    }
}

/// A minijinja error as a one-line message with the template line. minijinja's messages name
/// kinds and types, not the values involved.
fn template_error(e: &Error) -> DeriveError {
    let message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    match e.line() {
        Some(line) => DeriveError::Template { line, message },
        None => DeriveError::TemplateNoLine { message },
    }
}

/// A JSON value as a template value.
fn to_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Value::from(u),
            (None, Some(i)) => Value::from(i),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        J::Object(map) => Value::from_pairs(map.iter().map(|(k, v)| (k.as_str(), to_value(v)))),
    }
}

/// The items of a list of instance objects, refusing anything else with a message that says
/// which filter got it.
fn instances_of(filter: &str, list: &Value) -> Result<Vec<Value>, Error> {
    let wrong = || {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("{filter} expects a list of instances, like `instances` or a service's list"),
        )
    };
    let items: Vec<Value> = list.try_iter().map_err(|_| wrong())?.collect();
    for item in &items {
        if item.get_attr("labels").map_or(true, |l| l.is_undefined()) {
            return Err(wrong());
        }
    }
    Ok(items)
}

/// `list | with_label("role", "primary")`: the instances whose label `key` is `value`;
/// `list | with_label("role")`: those that have the label.
fn with_label(list: Value, key: &str, value: Option<&str>) -> Result<Value, Error> {
    let mut kept = Vec::new();
    for item in instances_of("with_label", &list)? {
        let label = item.get_attr("labels")?.get_attr(key)?;
        let matches = match value {
            Some(value) => label.as_str() == Some(value),
            None => !label.is_undefined() && !label.is_none(),
        };
        if matches {
            kept.push(item);
        }
    }
    Ok(Value::from(kept))
}

/// `list | oldest`: the instance registered first (ties: the smallest id), or none.
fn oldest(list: Value) -> Result<Value, Error> {
    let key = |i: &Value| -> Result<(i64, String), Error> {
        let registered = i.get_attr("registered")?.as_i64().unwrap_or(i64::MAX);
        let id = i.get_attr("id")?.as_str().unwrap_or_default().to_owned();
        Ok((registered, id))
    };
    let mut best: Option<((i64, String), Value)> = None;
    for item in instances_of("oldest", &list)? {
        let k = key(&item)?;
        if best.as_ref().is_none_or(|(b, _)| k < *b) {
            best = Some((k, item));
        }
    }
    Ok(best.map_or(Value::from(()), |(_, item)| item))
}

/// `list | weighted`: the instances with weight > 0.
fn weighted(list: Value) -> Result<Value, Error> {
    let mut kept = Vec::new();
    for item in instances_of("weighted", &list)? {
        if item.get_attr("weight")?.as_i64().is_some_and(|w| w > 0) {
            kept.push(item);
        }
    }
    Ok(Value::from(kept))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::derive::Derivation;
    use super::*;

    fn instance(service: &str, id: &str, address: &str, registered: u64) -> Instance {
        let mut i = Instance::new(
            service.parse().unwrap(),
            id.parse().unwrap(),
            address.into(),
            5432,
        );
        i.registered_ms = registered;
        i
    }

    fn sample() -> Vec<Instance> {
        let mut a = instance("pg", "a", "10.0.0.1", 30);
        a.labels.insert("role".into(), "replica".into());
        a.meta.insert("user".into(), "app".into());
        let mut b = instance("pg", "b", "10.0.0.2", 10);
        b.labels.insert("role".into(), "primary".into());
        b.endpoints.insert("metrics".into(), 9187);
        let mut c = instance("pg", "c", "10.0.0.3", 10);
        c.labels.insert("role".into(), "replica".into());
        c.weight = 0;
        let d = instance("cache", "d", "10.0.1.1", 5);
        // Deliberately unsorted: the derivation sorts by (service, id).
        vec![c, a, d, b]
    }

    fn render(source: &str, instances: &[Instance]) -> Result<String, DeriveError> {
        let derivation = Derivation::Template(Template::compile(source)?);
        Ok(String::from_utf8(derivation.derive(instances, None)?).unwrap())
    }

    #[test]
    fn context_and_helpers() {
        let all = sample();
        for (source, expected) in [
            ("{{ count }}", "4"),
            (
                "{% for i in instances %}{{ i.service }}/{{ i.id }} {% endfor %}",
                "cache/d pg/a pg/b pg/c ",
            ),
            ("{{ services | list | join(',') }}", "cache,pg"),
            (
                "{{ services.pg | map(attribute='id') | join(',') }}",
                "a,b,c",
            ),
            (
                "{{ instances | with_label('role', 'replica') | map(attribute='id') | join(',') }}",
                "a,c",
            ),
            (
                "{{ instances | select_label('role') | map(attribute='id') | join(',') }}",
                "a,b,c",
            ),
            ("{{ (services.pg | oldest).id }}", "b"),
            ("{{ (instances | oldest).id }}", "d"),
            (
                "{{ (services.pg | with_label('role', 'replica') | oldest).id }}",
                "c",
            ),
            (
                "{{ (services.pg | with_label('role', 'replica') | weighted | oldest).id }}",
                "a",
            ),
            (
                "{{ instances | weighted | map(attribute='id') | join(',') }}",
                "d,a,b",
            ),
            (
                "{{ instances | with_label('role', 'nope') | oldest is none }}",
                "True",
            ),
            (
                "{% set p = services.pg | with_label('role', 'primary') | oldest %}{{ p.address }}:{{ p.port }} {{ p.endpoints.metrics }} {{ p.registered }} {{ p.sslPort is none }}",
                "10.0.0.2:5432 9187 10 True",
            ),
            ("{{ services.pg[0].meta.user }}", "app"),
            (
                "{% for i in instances %}\n{{ i.id }}\n{% endfor %}\n",
                "d\na\nb\nc\n",
            ),
            ("<&>{{ '<' }}", "<&><"),
        ] {
            assert_eq!(render(source, &all).unwrap(), expected, "{source}");
        }
        assert_eq!(render("{{ count }}", &[]).unwrap(), "0");
    }

    #[test]
    fn errors_name_the_line() {
        let all = sample();
        for (source, line, contains) in [
            ("ok\n{{ nope }}", 2, "undefined"),
            ("{{ instances[0].meta.password }}", 1, "undefined"),
            ("a\nb\n{% for %}", 3, "syntax error"),
            (
                "{{ 'x' | with_label('a', 'b') }}",
                1,
                "expects a list of instances",
            ),
            ("{{ count | oldest }}", 1, "expects a list of instances"),
        ] {
            match render(source, &all) {
                Err(DeriveError::Template { line: l, message }) => {
                    assert_eq!(l, line, "{source}: {message}");
                    assert!(message.contains(contains), "{source}: {message}");
                }
                other => panic!("{source}: {other:?}"),
            }
        }
    }

    #[test]
    fn errors_do_not_quote_metadata() {
        let mut all = sample();
        all[1].meta.insert("password".into(), "hunter2".into());
        for source in [
            "{{ instances[1].meta.password + 1 }}",
            "{{ instances[1].meta.password.nope }}",
            "{{ instances[1].meta.password | int + 'x' }}",
        ] {
            let e = render(source, &all).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{source}: {e}");
        }
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let all = sample();
        let started = std::time::Instant::now();
        for source in [
            "{% for i in range(1000000) %}x{% endfor %}",
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ] {
            assert!(render(source, &all).is_err(), "{source}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        match render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            &all,
        ) {
            Err(DeriveError::Template { line: 1, message }) => {
                assert!(message.contains("fuel"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fuel_grows_with_the_instances() {
        let many: Vec<Instance> = (0..10_000)
            .map(|n| instance("pg", &format!("i{n:05}"), "10.0.0.1", n))
            .collect();
        let out = render(
            "{% for i in instances | weighted %}{{ i.address }}:{{ i.port }}{% if not loop.last %},{% endif %}{% endfor %}",
            &many,
        )
        .unwrap();
        assert_eq!(out.matches(',').count(), 9_999);
    }

    /// Arbitrary template sources over arbitrary instances: compiling and rendering never
    /// panic, give an error rather than hang (fuel), and finish in bounded time.
    pub(crate) mod properties {
        use std::time::{Duration, Instant};

        use proptest::prelude::*;

        use super::*;
        use crate::instance::strategies;

        /// Pieces of herald's template language, including the expensive ones.
        pub(crate) const TOKENS: &[&str] = &[
            "{{",
            "}}",
            "{%",
            "%}",
            "{#",
            "#}",
            "{%-",
            "-%}",
            " ",
            "\n",
            "for i in ",
            "endfor",
            "if ",
            "elif ",
            "else",
            "endif",
            "set x = ",
            "macro f(n)",
            "endmacro",
            "f(n + 1)",
            "call",
            "endcall",
            "filter upper",
            "endfilter",
            "raw",
            "endraw",
            "include 'x'",
            "extends 'value'",
            "block b",
            "endblock",
            "instances",
            "services",
            "count",
            "value",
            "values",
            "key",
            "i",
            "i.address",
            "i.meta",
            "i.labels.role",
            "i.port",
            "loop.index",
            "range(",
            "100000",
            "1000000000",
            "9223372036854775807",
            "-1",
            "0",
            ")",
            "(",
            "[",
            "]",
            ",",
            ".",
            "|",
            "~",
            "*",
            "**",
            "+",
            "/",
            "//",
            "%",
            "==",
            "and",
            "not",
            "in",
            "is",
            "none",
            "defined",
            "'x'",
            "'",
            "\"",
            "\\",
            "with_label('role', 'primary')",
            "with_label",
            "select_label('role')",
            "oldest",
            "weighted",
            "fail('stop')",
            "fail",
            "join(',')",
            "list",
            "map(attribute='id')",
            "tojson",
            "replace('a', 'b')",
            "batch(3)",
            "slice(2)",
            "sort",
            "unique",
            "reverse",
            "length",
            "string",
            "int",
            "float",
            "abs",
            "round",
            "trim",
            "indent(4)",
            "format",
            "dictsort",
            "attr('x')",
            "recursive",
            "loop(i)",
            "namespace()",
            "debug()",
            "lipsum(10000)",
            "cycler(1, 2)",
            "joiner()",
            "\u{0}",
            "é",
            "\u{2028}",
        ];

        pub(crate) fn source() -> impl Strategy<Value = String> {
            prop_oneof![
                3 => proptest::collection::vec(proptest::sample::select(TOKENS), 0..40)
                    .prop_map(|t| t.concat()),
                1 => any::<String>(),
                1 => proptest::sample::select(&[
                    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
                    "{{ 'x' * 1000000000 }}",
                    "{{ range(1000000000) | list | length }}",
                    "{% macro f(n) %}{{ f(n) ~ f(n) }}{% endmacro %}{{ f(0) }}",
                    "{% set x = 'ab' %}{% for i in range(40) %}{% set x = x ~ x %}{% endfor %}{{ x | length }}",
                    "{{ 9223372036854775807 + 1 }}",
                    "{{ -9223372036854775808 // -1 }}",
                    "{{ 1 / 0 }}{{ 1 % 0 }}",
                    "{{ instances | batch(0) | list }}",
                    "{{ instances | slice(0) | list }}",
                    "{{ 'x' | indent(100000000) }}",
                    "{{ (instances * 100000000) | length }}",
                    "{{ lipsum(100000000) }}",
                    "{{ '%s' | format }}",
                ][..])
                .prop_map(str::to_owned),
            ]
        }

        fn instances() -> impl Strategy<Value = Vec<Instance>> {
            proptest::collection::vec(strategies::herald_instance(), 0..6)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn any_template_renders_or_fails_in_bounded_time(
                source in source(),
                all in instances(),
            ) {
                let started = Instant::now();
                if let Ok(template) = Template::compile(&source) {
                    let result = Derivation::Template(template).derive(&all, None);
                    if let Ok(value) = result {
                        prop_assert!(value.len() <= crate::director::derive::MAX_VALUE);
                    }
                }
                prop_assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{:?} took {:?}", source, started.elapsed()
                );
            }
        }
    }
}
