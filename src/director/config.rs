//! The director's configuration: the TOML file of `herald director --config FILE`, and the
//! validation it shares with the one-output command line form. Everything is checked at start;
//! an error is one line naming the file, the line, the field and what to write instead.
//!
//! ```toml
//! [[output]]
//! key = "PGPOOL_BACKENDS"        # where the value is published: <root>/environment/<key>
//! services = ["pg"]              # or: service = "pg"
//! select = { role = "replica" }  # optional: only instances with all these labels
//! preset = "pgpool"              # exactly one of: template = "…", template_file = "path",
//!                                #   preset = "…", exec = "command"
//! url = "postgresql://{address}:{port}/app"   # only with preset = "url"
//! exec_timeout = "10s"           # only with exec (default 10s)
//! min_instances = 1              # default 1; with fewer, the last value is kept
//! allow_empty = false            # true: publish even with no instances (min_instances ignored)
//! check = "command"              # optional: validates a new value (on stdin) before publish
//! max_drop = "50%"               # hold a value that lost more than this share of its instances… (default 50%; "100%": off)
//! drop_confirm = "30s"           # …until the drop has lasted this long…
//! drop_window = "5m"             # …against the most instances seen within this window
//! removal_delay = "0s"           # keep an instance whose session was lost (not deregistered) this long
//! max_value = "1023KiB"          # hold a value larger than this (default: what a znode takes)
//! wait = "0s"                    # or "100ms:1s": quiet period : max wait (default 0)
//! settle = "1s:10s"              # after leading or a rebuilt view: quiet period : max wait
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::derive::{Derivation, MAX_VALUE, Preset, Template};
use super::preset::PRESET_NAMES;
use crate::instance::Instance;
use crate::layout::{EnvKey, ServiceName};

/// The longest duration accepted (far from the overflows of instant arithmetic).
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// `exec_timeout` when none is given.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(10);

/// What to write for a derivation.
const DERIVATIONS: &str = "write exactly one of template = \"…\", template_file = \"path\", preset = \"…\" or exec = \"command\"";

/// The largest template file read.
const MAX_TEMPLATE_FILE: usize = 1024 * 1024;

/// One validated output: which instances, how they become a value, and when it is published.
#[derive(Debug, Clone)]
pub struct Output {
    pub key: EnvKey,
    /// The services whose instances are read; never empty, no duplicates.
    pub services: Vec<ServiceName>,
    /// Labels every selected instance has, with these values.
    pub select: BTreeMap<String, String>,
    pub derivation: Derivation,
    /// The exec derivation's timeout (also in `Derivation::Exec`); the default otherwise.
    pub exec_timeout: Duration,
    /// At least 1: with fewer instances the last value is kept (unless `allow_empty`).
    pub min_instances: usize,
    /// Publish even with no instances; `min_instances` is then ignored.
    pub allow_empty: bool,
    /// A shell command that gets the new value on stdin and must exit 0 for it to be published.
    pub check: Option<String>,
    /// The largest share of instances a value may lose before it is held (1.0: never held).
    pub max_drop: f64,
    /// How long a larger drop must last to be published.
    pub drop_confirm: Duration,
    /// How far back the largest instance count counts.
    pub drop_window: Duration,
    /// How long an instance whose node vanished without a deregistration (its session lost:
    /// maybe a blip) stays in the value ([`super::limbo`]); zero: removed at once.
    pub removal_delay: Duration,
    /// The largest value published, in bytes (at most [`MAX_VALUE`]): a larger one is held.
    pub max_value: usize,
    /// Quiet period: a change is published once no other came for this long…
    pub wait_min: Duration,
    /// …but no later than this after the first change. `wait_min <= wait_max`.
    pub wait_max: Duration,
    /// After leadership is won and after the instance view was rebuilt (a reconnect, a new
    /// session), nothing is published until the output's instances were quiet this long…
    pub settle_quiet: Duration,
    /// …or this long has passed since settling began. `settle_quiet <= settle_max`.
    pub settle_max: Duration,
    /// Keep stable member numbers ([`super::slots`]) and publish them with the value: on by
    /// default for preset `pgpool`, whose consumer numbers its backends.
    pub slots: bool,
}

/// The default `wait` of the haproxy preset: a burst (a scale-up, a deploy) makes one value,
/// so HAProxy reloads once for it.
pub const HAPROXY_WAIT: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(1));

/// `settle` when none is given: re-registrations after a mass session loss arrive within
/// milliseconds of each other, so a second of quiet sees them through; ten at most.
pub const DEFAULT_SETTLE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));

impl Output {
    /// What the output's guards hold back.
    pub fn guard_limits(&self) -> super::guards::Limits {
        super::guards::Limits {
            min_instances: self.min_instances,
            allow_empty: self.allow_empty,
            max_drop: self.max_drop,
            drop_window: self.drop_window,
            drop_confirm: self.drop_confirm,
        }
    }

    /// Whether `i` is one of this output's instances: of one of its services, with every
    /// selected label.
    pub fn selects(&self, i: &Instance) -> bool {
        self.services.contains(&i.service)
            && self
                .select
                .iter()
                .all(|(k, v)| i.labels.get(k).is_some_and(|l| l == v))
    }
}

/// One `[[output]]` table as written: the config file's form, which the command line's
/// one-output form fills in too, so both are validated by [`OutputSpec::validate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub key: String,
    pub service: Option<String>,
    pub services: Option<Vec<String>>,
    #[serde(default)]
    pub select: BTreeMap<String, String>,
    pub template: Option<String>,
    pub template_file: Option<PathBuf>,
    pub preset: Option<String>,
    pub exec: Option<String>,
    pub url: Option<String>,
    pub exec_timeout: Option<String>,
    pub min_instances: Option<usize>,
    pub allow_empty: Option<bool>,
    pub check: Option<String>,
    pub max_drop: Option<String>,
    pub drop_confirm: Option<String>,
    pub drop_window: Option<String>,
    pub removal_delay: Option<String>,
    pub max_value: Option<String>,
    pub wait: Option<String>,
    pub settle: Option<String>,
    pub slots: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    output: Vec<OutputSpec>,
}

/// Why a configuration was refused: `FILE line N: output KEY: what is wrong; what to write`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file, or what stands for it (e.g. "command line").
    pub origin: PathBuf,
    pub line: Option<usize>,
    /// `output KEY: …`, or a message about the whole file.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin.display())?;
        if let Some(line) = self.line {
            write!(f, " line {line}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A validation failure inside one output: the field to point at and what is wrong.
struct FieldError {
    /// The TOML field whose line is reported; `None`: the output's table.
    field: Option<&'static str>,
    message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: Some(field),
        message: message.into(),
    }
}

/// Parses and validates a config file's text. `origin` is its path: errors name it, and a
/// `template_file` is relative to its directory.
pub fn parse(text: &str, origin: &Path) -> Result<Vec<Output>, ConfigError> {
    let error = |line, message| ConfigError {
        origin: origin.to_owned(),
        line,
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| line_of(text, span.start));
        error(line, toml_message(text, &e))
    })?;
    if file.output.is_empty() {
        return Err(error(
            None,
            "no [[output]] table; add one: a line [[output]], then key = \"DATABASE_URL\", service = \"pg\" and a derivation such as preset = \"hostports\", each on its own line".to_owned(),
        ));
    }
    // The spans of every output's fields, for line numbers in validation errors.
    let document = DeTable::parse(text).ok();
    let tables: Vec<Option<&Spanned<DeValue<'_>>>> = (0..file.output.len())
        .map(|n| {
            let Some(DeValue::Array(outputs)) = document
                .as_ref()?
                .get_ref()
                .get("output")
                .map(|v| v.get_ref())
            else {
                return None;
            };
            outputs.get(n)
        })
        .collect();
    let line_for = |n: usize, field: Option<&str>| -> Option<usize> {
        let table = tables.get(n).copied().flatten()?;
        let span = match (field, table.get_ref()) {
            (Some(field), DeValue::Table(t)) => t
                .get_key_value(field)
                .map_or(table.span(), |(k, _)| k.span()),
            _ => table.span(),
        };
        Some(line_of(text, span.start))
    };

    let mut outputs: Vec<Output> = Vec::with_capacity(file.output.len());
    let mut keys: BTreeMap<EnvKey, usize> = BTreeMap::new();
    for (n, spec) in file.output.into_iter().enumerate() {
        let name = output_name(&spec.key, n);
        let output = spec.check(origin).map_err(|e| {
            error(
                line_for(n, e.field),
                format!("output {name}: {}", e.message),
            )
        })?;
        if let Some(&first) = keys.get(&output.key) {
            let first_line =
                line_for(first, Some("key")).map_or(String::new(), |l| format!(" at line {l}"));
            return Err(error(
                line_for(n, Some("key")),
                format!(
                    "output {name}: key {} is already published by the output{first_line}; each key has one output (list more services in one output instead)",
                    output.key
                ),
            ));
        }
        keys.insert(output.key.clone(), n);
        outputs.push(output);
    }
    Ok(outputs)
}

/// An output's name in messages: its key, or its position when the key is unusable.
fn output_name(key: &str, n: usize) -> String {
    match key.parse::<EnvKey>() {
        Ok(key) => key.to_string(),
        Err(_) => format!("#{}", n + 1),
    }
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// toml's message on one line (it may span several), saying which output and field it is
/// about, with a hint for the common mistakes.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().replace('\n', "; ");
    if message.contains("missing field `key`") {
        message.push_str("; every [[output]] needs key = \"NAME\"");
    } else if message.contains("unknown field") {
        message.push_str(" (check the spelling)");
    }
    let Some((n, key, field)) = e.span().and_then(|span| locate(text, span.start)) else {
        return message;
    };
    let name = key.map_or_else(|| format!("#{}", n + 1), |k| output_name(&k, n));
    match field {
        Some(field) if !message.contains(&format!("`{field}`")) => {
            format!("output {name}: {field}: {message}")
        }
        _ => format!("output {name}: {message}"),
    }
}

/// Which output (index and key string) and which of its fields the byte `offset` is in.
fn locate(text: &str, offset: usize) -> Option<(usize, Option<String>, Option<String>)> {
    let document = DeTable::parse(text).ok()?;
    let Some(DeValue::Array(outputs)) = document.get_ref().get("output").map(|v| v.get_ref())
    else {
        return None;
    };
    outputs.iter().enumerate().find_map(|(n, table)| {
        let DeValue::Table(fields) = table.get_ref() else {
            return None;
        };
        let key = match fields.get("key").map(|v| v.get_ref()) {
            Some(DeValue::String(k)) => Some(k.to_string()),
            _ => None,
        };
        let field = fields.iter().find_map(|(k, v)| {
            let inside = |span: std::ops::Range<usize>| span.contains(&offset);
            (inside(k.span()) || inside(v.span())).then(|| k.get_ref().to_string())
        });
        (field.is_some() || table.span().contains(&offset)).then_some((n, key, field))
    })
}

impl OutputSpec {
    /// Validates one output. `origin` names where it came from in errors (a config file, or
    /// e.g. `command line`); a relative `template_file` is read from `origin`'s directory (for
    /// `command line`, the current directory). Errors have no line: [`parse`] adds it.
    pub fn validate(self, origin: &Path) -> Result<Output, ConfigError> {
        let name = output_name(&self.key, 0);
        self.check(origin).map_err(|e| ConfigError {
            origin: origin.to_owned(),
            line: None,
            message: format!("output {name}: {}", e.message),
        })
    }

    fn check(self, origin: &Path) -> Result<Output, FieldError> {
        let key: EnvKey = self
            .key
            .parse()
            .map_err(|e| field_error("key", format!("key: {e}")))?;

        let names = match (self.service, self.services) {
            (Some(_), Some(_)) => {
                return Err(field_error(
                    "services",
                    "both service and services; write services = [\"a\", \"b\"] alone",
                ));
            }
            (Some(one), None) => vec![one],
            (None, Some(many)) if many.is_empty() => {
                return Err(field_error(
                    "services",
                    "services is empty; name at least one, e.g. services = [\"pg\"]",
                ));
            }
            (None, Some(many)) => many,
            (None, None) => {
                return Err(FieldError {
                    field: None,
                    message:
                        "no service; write service = \"pg\" or services = [\"pg\", \"pg-replica\"]"
                            .to_owned(),
                });
            }
        };
        let mut services: Vec<ServiceName> = Vec::with_capacity(names.len());
        for name in names {
            let service: ServiceName = name
                .parse()
                .map_err(|e| field_error("services", format!("service: {e}")))?;
            if !services.contains(&service) {
                services.push(service);
            }
        }

        if let Some(label) = self.select.keys().find(|k| k.is_empty()) {
            return Err(field_error(
                "select",
                format!(
                    "select has an empty label name {label:?}; write select = {{ role = \"primary\" }}"
                ),
            ));
        }

        let given: Vec<&'static str> = [
            ("template", self.template.is_some()),
            ("template_file", self.template_file.is_some()),
            ("preset", self.preset.is_some()),
            ("exec", self.exec.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        match given.as_slice() {
            [] => {
                return Err(FieldError {
                    field: None,
                    message: format!("no derivation; {DERIVATIONS}"),
                });
            }
            [_] => {}
            [_, second, ..] => {
                return Err(field_error(
                    second,
                    format!(
                        "{} given; write exactly one of template, template_file, preset or exec",
                        given.join(" and ")
                    ),
                ));
            }
        }
        if self.url.is_some() && self.preset.as_deref() != Some("url") {
            return Err(field_error(
                "url",
                "url is only for preset = \"url\"; remove it or set preset = \"url\"",
            ));
        }
        if self.exec_timeout.is_some() && self.exec.is_none() {
            return Err(field_error(
                "exec_timeout",
                "exec_timeout is only for exec derivations; remove it",
            ));
        }
        let exec_timeout = match &self.exec_timeout {
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
                _ => {
                    return Err(field_error(
                        "exec_timeout",
                        format!(
                            "exec_timeout {text:?} is not a positive duration of at most 30 days; write e.g. \"10s\" or \"500ms\""
                        ),
                    ));
                }
            },
            None => DEFAULT_EXEC_TIMEOUT,
        };

        let derivation = match (self.template, self.template_file, self.preset, self.exec) {
            (Some(source), None, None, None) => Derivation::Template(
                Template::compile(&source)
                    .map_err(|e| field_error("template", format!("template: {e}")))?,
            ),
            (None, Some(path), None, None) => {
                let path = match origin.parent() {
                    Some(dir) if path.is_relative() => dir.join(path),
                    _ => path,
                };
                let source = crate::input::read_text("template_file", &path, MAX_TEMPLATE_FILE)
                    .map_err(|e| field_error("template_file", e.to_string()))?;
                Derivation::Template(Template::compile(&source).map_err(|e| {
                    field_error(
                        "template_file",
                        format!("template_file {}: {e}", path.display()),
                    )
                })?)
            }
            (None, None, Some(name), None) => {
                if name == "url" && self.url.is_none() {
                    return Err(field_error(
                        "preset",
                        "preset \"url\" needs url = \"…\", e.g. url = \"postgresql://{meta.user}@{address}:{port}/app\"",
                    ));
                }
                match Preset::from_name(&name, self.url) {
                    None => {
                        return Err(field_error(
                            "preset",
                            format!("unknown preset {name:?}; use {PRESET_NAMES}"),
                        ));
                    }
                    Some(Err(e)) => return Err(field_error("url", e.to_string())),
                    Some(Ok(preset)) => Derivation::Preset(preset),
                }
            }
            (None, None, None, Some(command)) => {
                if command.trim().is_empty() {
                    return Err(field_error(
                        "exec",
                        "exec is empty; write a shell command that reads the instances as JSON on stdin",
                    ));
                }
                Derivation::Exec {
                    command,
                    timeout: exec_timeout,
                }
            }
            // Counted above: exactly one is set.
            _ => {
                return Err(FieldError {
                    field: None,
                    message: DERIVATIONS.to_owned(),
                });
            }
        };

        let slots = self
            .slots
            .unwrap_or(matches!(derivation, Derivation::Preset(Preset::Pgpool)));
        let allow_empty = self.allow_empty.unwrap_or(false);
        let min_instances = match self.min_instances {
            Some(0) if !allow_empty => {
                return Err(field_error(
                    "min_instances",
                    "min_instances = 0; to publish with no instances write allow_empty = true",
                ));
            }
            Some(n) => n.max(1),
            None => 1,
        };

        let check = match self.check {
            Some(command) if command.trim().is_empty() => {
                return Err(field_error(
                    "check",
                    "check is empty; write a shell command that reads the value on stdin and exits 0 to accept it, or remove it",
                ));
            }
            other => other,
        };

        let max_drop = match &self.max_drop {
            Some(text) => parse_share(text).ok_or_else(|| {
                field_error(
                    "max_drop",
                    format!("max_drop {text:?} is not a share from 1% to 100%; write e.g. \"50%\" (\"100%\" turns the guard off)"),
                )
            })?,
            None => DEFAULT_MAX_DROP,
        };
        let duration = |field: &'static str, text: &Option<String>, default: Duration| match text {
            None => Ok(default),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d <= MAX_DURATION => Ok(d),
                _ => Err(field_error(
                    field,
                    format!(
                        "{field} {text:?} is not a duration of at most 30 days; write e.g. \"30s\""
                    ),
                )),
            },
        };
        let drop_confirm = duration("drop_confirm", &self.drop_confirm, DEFAULT_DROP_CONFIRM)?;
        let drop_window = duration("drop_window", &self.drop_window, DEFAULT_DROP_WINDOW)?;
        let removal_delay = duration("removal_delay", &self.removal_delay, Duration::ZERO)?;
        let max_value = match &self.max_value {
            None => MAX_VALUE,
            Some(text) => match crate::gateway::parse_size(text) {
                Ok(n) if (1..=MAX_VALUE).contains(&n) => n,
                _ => {
                    return Err(field_error(
                        "max_value",
                        format!(
                            "max_value {text:?} is not a size from 1 to {MAX_VALUE} bytes (what a znode takes); write e.g. \"512KiB\""
                        ),
                    ));
                }
            },
        };

        let (wait_min, wait_max) = match &self.wait {
            Some(text) => parse_wait("wait", text).map_err(|why| field_error("wait", why))?,
            // HAProxy reloads (a new worker per change): a burst of changes makes one value.
            None if matches!(derivation, Derivation::Preset(Preset::Haproxy)) => HAPROXY_WAIT,
            None => (Duration::ZERO, Duration::ZERO),
        };
        let (settle_quiet, settle_max) = match &self.settle {
            Some(text) => parse_wait("settle", text).map_err(|why| field_error("settle", why))?,
            None => DEFAULT_SETTLE,
        };

        Ok(Output {
            key,
            services,
            select: self.select,
            derivation,
            exec_timeout,
            min_instances,
            allow_empty,
            check,
            max_drop,
            drop_confirm,
            drop_window,
            removal_delay,
            max_value,
            wait_min,
            wait_max,
            settle_quiet,
            settle_max,
            slots,
        })
    }
}

/// `max_drop` when none is given: half. Instances that left on purpose (stopped, drained) are
/// not counted, so a scale-down or a drain is never held; what is held is what nobody asked
/// for (lost sessions, a data wipe, failing checks, processes ending by themselves).
pub const DEFAULT_MAX_DROP: f64 = 0.5;
/// `drop_confirm` when none is given: a session timeout and a re-registration fit in it.
pub const DEFAULT_DROP_CONFIRM: Duration = Duration::from_secs(30);
/// `drop_window` when none is given.
pub const DEFAULT_DROP_WINDOW: Duration = Duration::from_secs(300);

/// A share `"50%"` (or `"0.5"`) as a fraction in (0, 1].
fn parse_share(text: &str) -> Option<f64> {
    let text = text.trim();
    let share = match text.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().ok()? / 100.0,
        None => text.parse::<f64>().ok()?,
    };
    (share > 0.0 && share <= 1.0 && share.is_finite()).then_some(share)
}

/// `wait`: `"MIN"` or `"MIN:MAX"`, consul-template style. `"MIN"` alone means a max of 4×MIN
/// (as in consul-template); `"0s"` means publish at once.
/// `QUIET` or `QUIET:MAX` (`wait`, `settle`); a bare `QUIET` waits at most four times it.
fn parse_wait(field: &str, text: &str) -> Result<(Duration, Duration), String> {
    let bad = |why: &str| {
        format!(
            "{field} {text:?}: {why}; write \"0s\", \"100ms\" (quiet period) or \"100ms:1s\" (quiet period:max wait)"
        )
    };
    let duration = |part: &str| match humantime::parse_duration(part.trim()) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(bad("longer than 30 days")),
        Err(_) => Err(bad("not a duration")),
    };
    match text.split_once(':') {
        Some((min, max)) => {
            let (min, max) = (duration(min)?, duration(max)?);
            if min > max {
                return Err(bad("the quiet period is longer than the max wait"));
            }
            Ok((min, max))
        }
        None => {
            let min = duration(text)?;
            Ok((min, min.saturating_mul(4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<Output>, ConfigError> {
        parse(text, Path::new("herald.toml"))
    }

    #[test]
    fn a_good_file() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("backends.j2"), "{{ count }}\n").unwrap();
        let text = r#"
# pgpool's backends
[[output]]
key = "PGPOOL_BACKENDS"
services = ["pg", "pg-replica", "pg"]
select = { role = "replica" }
preset = "pgpool"

[[output]]
key = "DATABASE_URL"
service = "pg"
preset = "url"
url = "postgresql://{meta.user}@{address}:{port}/app"
wait = "100ms:1s"
settle = "0s"
check = "grep -q postgresql"

[[output]]
key = "ROUTES"
service = "web"
exec = "jq -c ."
exec_timeout = "2s"
allow_empty = true

[[output]]
key = "COUNT"
service = "web"
template_file = "backends.j2"
min_instances = 2
wait = "50ms"

[[output]]
key = "INLINE"
service = "web"
template = """
{% for i in instances %}
{{ i.address }}
{% endfor %}
"""
"#;
        let outputs = parse(text, &dir.join("herald.toml")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let keys: Vec<&str> = outputs.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "PGPOOL_BACKENDS",
                "DATABASE_URL",
                "ROUTES",
                "COUNT",
                "INLINE"
            ]
        );

        let pgpool = &outputs[0];
        let services: Vec<&str> = pgpool.services.iter().map(|s| s.as_str()).collect();
        assert_eq!(services, ["pg", "pg-replica"]);
        assert_eq!(
            pgpool.select,
            BTreeMap::from([("role".into(), "replica".into())])
        );
        assert!(matches!(
            pgpool.derivation,
            Derivation::Preset(Preset::Pgpool)
        ));
        assert_eq!(
            (
                pgpool.min_instances,
                pgpool.allow_empty,
                pgpool.wait_min,
                pgpool.wait_max
            ),
            (1, false, Duration::ZERO, Duration::ZERO)
        );
        assert_eq!((pgpool.settle_quiet, pgpool.settle_max), DEFAULT_SETTLE);
        assert_eq!(pgpool.check, None);

        let url = &outputs[1];
        assert!(
            matches!(&url.derivation, Derivation::Preset(Preset::Url { format }) if format.starts_with("postgresql://"))
        );
        assert_eq!(
            (url.wait_min, url.wait_max),
            (Duration::from_millis(100), Duration::from_secs(1))
        );
        assert_eq!(
            (url.settle_quiet, url.settle_max),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(url.check.as_deref(), Some("grep -q postgresql"));

        let exec = &outputs[2];
        assert!(
            matches!(&exec.derivation, Derivation::Exec { command, timeout } if command == "jq -c ." && *timeout == Duration::from_secs(2))
        );
        assert_eq!(exec.exec_timeout, Duration::from_secs(2));
        assert!(exec.allow_empty);

        let count = &outputs[3];
        assert_eq!(count.min_instances, 2);
        assert_eq!(
            (count.wait_min, count.wait_max),
            (Duration::from_millis(50), Duration::from_millis(200))
        );
        let web = Instance::new(
            "web".parse().unwrap(),
            "w1".parse().unwrap(),
            "h".into(),
            80,
        );
        assert_eq!(
            count
                .derivation
                .derive(std::slice::from_ref(&web), None)
                .unwrap(),
            b"1\n"
        );
        assert_eq!(outputs[4].derivation.derive(&[web], None).unwrap(), b"h\n");
    }

    #[test]
    fn selects_by_service_and_every_label() {
        let output = parse_str(
            "[[output]]\nkey = \"K\"\nservices = [\"pg\"]\nselect = { role = \"replica\", zone = \"a\" }\npreset = \"json\"\n",
        )
        .unwrap()
        .remove(0);
        let mut i = Instance::new("pg".parse().unwrap(), "a".parse().unwrap(), "h".into(), 1);
        assert!(!output.selects(&i));
        i.labels.insert("role".into(), "replica".into());
        assert!(!output.selects(&i));
        i.labels.insert("zone".into(), "a".into());
        i.labels.insert("extra".into(), "x".into());
        assert!(output.selects(&i));
        i.labels.insert("zone".into(), "b".into());
        assert!(!output.selects(&i));
        let mut other = i.clone();
        other.service = "web".parse().unwrap();
        other.labels.insert("zone".into(), "a".into());
        assert!(!output.selects(&other));
    }

    #[test]
    fn bad_files_name_the_line_and_the_field() {
        let good = "[[output]]\nkey = \"A\"\nservice = \"pg\"\npreset = \"json\"\n\n";
        for (text, line, contains) in [
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\ntempalte = \"x\"\n",
                Some(5),
                "unknown field `tempalte`",
            ),
            (
                "[[outputs]]\nkey = \"K\"\n",
                Some(1),
                "unknown field `outputs`",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nexec = \"cat\"\n",
                Some(5),
                "preset and exec given",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\n",
                Some(1),
                "output K: no derivation",
            ),
            (
                "[[output]]\nkey = \"1K\"\nservice = \"pg\"\npreset = \"json\"\n",
                Some(2),
                "output #1: key: invalid key \"1K\"",
            ),
            (
                "[[output]]\nkey = \"K\"\nservices = [\"pg/x\"]\npreset = \"json\"\n",
                Some(3),
                "service: invalid service name \"pg/x\"",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\n\npreset = \"pgpol\"\n",
                Some(5),
                "output K: unknown preset \"pgpol\"; use hostports, url, json, pgpool, pool_passwd or haproxy",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nurl = \"x\"\n",
                Some(5),
                "url is only for preset = \"url\"",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"url\"\n",
                Some(4),
                "preset \"url\" needs url =",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"url\"\nurl = \"{adress}\"\n",
                Some(5),
                "placeholder {adress}: unknown",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nwait = \"2s:1s\"\n",
                Some(5),
                "wait \"2s:1s\": the quiet period is longer than the max wait",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nwait = \"soon\"\n",
                Some(5),
                "wait \"soon\": not a duration",
            ),
            (
                &format!("{good}[[output]]\nkey = \"A\"\nservice = \"web\"\npreset = \"json\"\n"),
                Some(7),
                "key A is already published by the output at line 2",
            ),
            ("", None, "no [[output]] table"),
            ("# nothing yet\n", None, "no [[output]] table"),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nmin_instances = \"1\"\n",
                Some(5),
                "min_instances",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nmin_instances = 0\n",
                Some(5),
                "allow_empty = true",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\nexec_timeout = \"1s\"\n",
                Some(5),
                "exec_timeout is only for exec",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\nexec = \"cat\"\nexec_timeout = \"0s\"\n",
                Some(5),
                "exec_timeout \"0s\"",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\nservices = [\"web\"]\npreset = \"json\"\n",
                Some(4),
                "both service and services",
            ),
            (
                "[[output]]\nkey = \"K\"\nservices = []\npreset = \"json\"\n",
                Some(3),
                "services is empty",
            ),
            (
                "[[output]]\nkey = \"K\"\npreset = \"json\"\n",
                Some(1),
                "no service",
            ),
            (
                "[[output]]\nservice = \"pg\"\npreset = \"json\"\n",
                Some(1),
                "missing field `key`",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\ntemplate = \"\"\"\n{{ x }\n\"\"\"\n",
                Some(4),
                "template: template line 1: syntax error",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\ntemplate_file = \"/nonexistent/herald.j2\"\n",
                Some(4),
                "cannot read template_file /nonexistent/herald.j2: No such file",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\npreset = \"json\"\ncheck = \" \"\n",
                Some(5),
                "check is empty",
            ),
            (
                "[[output]]\nkey = \"K\"\nservice = \"pg\"\nexec = \"\"\n",
                Some(4),
                "exec is empty",
            ),
            ("[[output]\n", Some(1), ""),
        ] {
            let e = parse_str(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            let shown = e.to_string();
            let prefix = match line {
                Some(line) => format!("herald.toml line {line}: "),
                None => "herald.toml: ".to_owned(),
            };
            assert!(shown.starts_with(&prefix), "{text:?}: {shown}");
            assert!(shown.contains(contains), "{text:?}: {shown}");
            assert!(!shown.contains('\n'), "one line: {shown:?}");
        }
    }

    #[test]
    fn the_command_line_form_shares_validation() {
        let spec = OutputSpec {
            key: "DATABASE_URL".into(),
            service: Some("pg".into()),
            preset: Some("pgpol".into()),
            ..OutputSpec::default()
        };
        assert_eq!(
            spec.validate(Path::new("command line"))
                .unwrap_err()
                .to_string(),
            "command line: output DATABASE_URL: unknown preset \"pgpol\"; use hostports, url, json, pgpool, pool_passwd or haproxy"
        );
        let spec = OutputSpec {
            key: "DATABASE_URL".into(),
            service: Some("pg".into()),
            template: Some("{{ count }}".into()),
            ..OutputSpec::default()
        };
        let output = spec.validate(Path::new("command line")).unwrap();
        assert_eq!(output.key.as_str(), "DATABASE_URL");
        assert_eq!(output.exec_timeout, DEFAULT_EXEC_TIMEOUT);
    }

    #[test]
    fn waits() {
        for (text, expected) in [
            ("0s", Some((0, 0))),
            ("100ms", Some((100, 400))),
            ("100ms:1s", Some((100, 1000))),
            ("1s:1s", Some((1000, 1000))),
            ("1s:100ms", None),
            ("", None),
            (":", None),
            ("1s:", None),
        ] {
            let got = parse_wait("wait", text)
                .ok()
                .map(|(a, b)| (a.as_millis() as u64, b.as_millis() as u64));
            assert_eq!(got, expected, "{text:?}");
        }
    }
}
