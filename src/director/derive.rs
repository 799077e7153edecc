//! Derivation: the instances of an output turned into the bytes of its value — by a template, a
//! preset, or an external program (`exec`). Pure except for `exec`, which runs `/bin/sh -c`.
//!
//! Every derivation sees the instances already filtered by the output's selector and sorted by
//! (service, id); it sorts them again itself, so its result never depends on the caller's order.
//! Errors say why a value could not be made but never quote instance metadata or the value:
//! either may hold credentials.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use serde_json::json;

use crate::command::{RunError, Sink, Spec};
use crate::instance::Instance;

pub use super::preset::Preset;
use super::slots::SlotOf;
pub use super::template::Template;

/// The largest value a derivation may produce (and the most an `exec` program may print): what
/// a publish accepts, so that a value too large is a derivation's failure, said once, never a
/// publish retried forever.
pub const MAX_VALUE: usize = crate::values::MAX_VALUE_LEN;

/// What an output's value is made from: the instances (already filtered by the output's label
/// selector), sorted by (service, id).
#[derive(Debug, Clone)]
pub enum Derivation {
    /// A compiled minijinja template; see [`Template`] for its context and helpers.
    Template(Template),
    /// A built-in format; see [`Preset`].
    Preset(Preset),
    /// `/bin/sh -c command` with the instances as JSON on stdin; see [`derive_exec`].
    Exec { command: String, timeout: Duration },
}

/// Why a value could not be derived. Messages never include instance metadata values or the
/// (partly) rendered value.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("template line {line}: {message}")]
    Template { line: usize, message: String },
    #[error("template: {message}")]
    TemplateNoLine { message: String },
    #[error("url: placeholder {{{placeholder}}}: {reason}")]
    Placeholder { placeholder: String, reason: String },
    #[error("url: {reason}; write placeholders like {{address}}, {{port}} or {{meta.KEY}}")]
    UrlFormat { reason: String },
    #[error("{preset}: instance {instance}: {reason}")]
    Instance {
        preset: &'static str,
        /// `service/id`.
        instance: String,
        reason: String,
    },
    #[error("the value would be {len} bytes, over the {limit}-byte limit (max_value)")]
    TooLarge { len: usize, limit: usize },
    #[error("an exec derivation runs a program: call derive_exec instead of derive")]
    NeedsExec,
    #[error("exec: cannot run /bin/sh: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("exec: the command exited with status {code}; see its stderr above")]
    Failed { code: i32 },
    #[error("exec: the command was killed by signal {signal}")]
    Killed { signal: i32 },
    #[error(
        "exec: the command ran longer than {}; its process group was killed (raise exec_timeout?)",
        humantime::format_duration(*after)
    )]
    TimedOut { after: Duration },
    #[error("exec: the command printed more than {MAX_VALUE} bytes")]
    OutputTooLarge,
    #[error("{0}")]
    Io(String),
}

impl Derivation {
    /// Derives the value of a template or a preset. `Exec` returns [`DeriveError::NeedsExec`]:
    /// run it with [`derive_exec`].
    /// `slots` are the members' stable numbers when the output keeps them.
    pub fn derive(
        &self,
        instances: &[Instance],
        slots: Option<&SlotOf>,
    ) -> Result<Vec<u8>, DeriveError> {
        let sorted = sorted(instances);
        let value = match self {
            Derivation::Template(template) => template.render(&sorted, slots)?,
            Derivation::Preset(preset) => preset.render(&sorted, slots)?,
            Derivation::Exec { .. } => return Err(DeriveError::NeedsExec),
        };
        if value.len() > MAX_VALUE {
            return Err(DeriveError::TooLarge {
                len: value.len(),
                limit: MAX_VALUE,
            });
        }
        Ok(value)
    }
}

/// The instances by (service, id). Callers usually pass them sorted already, which makes this
/// a linear pass.
pub(super) fn sorted(instances: &[Instance]) -> Vec<&Instance> {
    let mut sorted: Vec<&Instance> = instances.iter().collect();
    sorted.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    sorted
}

/// One instance as templates, the `json` preset and `exec` programs see it:
///
/// ```json
/// {"address":"10.0.0.5","endpoints":{"metrics":9187},"id":"db1-5432","labels":{"role":"primary"},
///  "meta":{"user":"app"},"port":5432,"registered":1764100000000,"service":"pg","sslPort":null,"weight":1}
/// ```
///
/// `registered` is in milliseconds since the Unix epoch; `port` and `sslPort` may be null.
/// When the output keeps stable member numbers, `"slot"` is the instance's (see
/// [`super::slots`]).
pub fn instance_json(i: &Instance, slots: Option<&SlotOf>) -> serde_json::Value {
    let mut v = json!({
        "service": i.service.as_str(),
        "id": i.id.as_str(),
        "address": i.address,
        "port": i.port,
        "sslPort": i.ssl_port,
        "labels": i.labels,
        "meta": i.meta,
        "endpoints": i.endpoints,
        "weight": i.weight,
        "registered": i.registered_ms,
    });
    if let Some(slot) = slots.and_then(|s| s.get(&(i.service.clone(), i.id.clone())))
        && let Some(map) = v.as_object_mut()
    {
        map.insert("slot".to_owned(), json!(slot));
    }
    v
}

/// The `exec` derivation: runs `/bin/sh -c command` with exactly `env`, the instances on stdin
/// as a JSON array of [`instance_json`] objects (sorted by service, id), stderr passed through.
/// Its stdout is the value, exactly, except that one trailing `'\n'` is removed (as for
/// /environment scripts).
///
/// Notable errors: a non-zero exit ([`DeriveError::Failed`]), a signal, more than
/// [`MAX_VALUE`] bytes of output, or running past `timeout` (the program's whole process group
/// is killed).
///
/// Cancellation safety: dropping the future kills the program's process group.
pub async fn derive_exec(
    command: &str,
    timeout: Duration,
    env: &BTreeMap<OsString, OsString>,
    instances: &[Instance],
    slots: Option<&SlotOf>,
) -> Result<Vec<u8>, DeriveError> {
    let list: Vec<serde_json::Value> = sorted(instances)
        .into_iter()
        .map(|i| instance_json(i, slots))
        .collect();
    let input = serde_json::to_vec(&list)
        .map_err(|e| DeriveError::Io(format!("exec: cannot encode the instances as JSON: {e}")))?;
    let mut value = run_shell(command, timeout, env, &input).await?;
    if value.last() == Some(&b'\n') {
        value.pop();
    }
    Ok(value)
}

/// Runs `/bin/sh -c command` (through [`crate::command`]) with exactly `env`, `stdin` written
/// to it, stderr passed through, and returns its raw stdout.
///
/// Notable errors and cancellation safety: as [`derive_exec`].
async fn run_shell(
    command: &str,
    timeout: Duration,
    env: &BTreeMap<OsString, OsString>,
    stdin: &[u8],
) -> Result<Vec<u8>, DeriveError> {
    let mut spec = Spec::shell(command, &[], env);
    spec.stdin = Some(stdin);
    spec.stdout = Sink::Keep(MAX_VALUE + 1);
    spec.stderr = Sink::Inherit;
    spec.timeout = timeout;
    let finished = match crate::command::run(spec).await {
        Ok(finished) => finished,
        Err(RunError::Spawn(e)) => return Err(DeriveError::Spawn(e)),
        Err(RunError::TimedOut { after, .. }) => return Err(DeriveError::TimedOut { after }),
        Err(RunError::StatusLost) => return Err(DeriveError::Failed { code: -1 }),
    };
    // Reading stopped at the limit, so the program may have died of SIGPIPE: the size is the news.
    if finished.stdout.len() > MAX_VALUE {
        return Err(DeriveError::OutputTooLarge);
    }
    if let Some(signal) = finished.status.signal() {
        return Err(DeriveError::Killed { signal });
    }
    match finished.status.code() {
        Some(0) => Ok(finished.stdout),
        code => Err(DeriveError::Failed {
            code: code.unwrap_or(-1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<OsString, OsString> {
        BTreeMap::from([("PATH".into(), std::env::var_os("PATH").unwrap_or_default())])
    }

    fn sample() -> Vec<Instance> {
        let mut b = Instance::new(
            "pg".parse().unwrap(),
            "b".parse().unwrap(),
            "10.0.0.2".into(),
            5432,
        );
        b.meta.insert("user".into(), "app".into());
        b.registered_ms = 7;
        let mut a = Instance::new(
            "pg".parse().unwrap(),
            "a".parse().unwrap(),
            "10.0.0.1".into(),
            5432,
        );
        a.registered_ms = 9;
        vec![b, a]
    }

    async fn exec(command: &str, timeout: Duration) -> Result<Vec<u8>, DeriveError> {
        derive_exec(command, timeout, &env(), &sample(), None).await
    }

    #[tokio::test]
    async fn exec_gets_the_instances_as_json_and_prints_the_value() {
        let echoed = exec("cat", Duration::from_secs(10)).await.unwrap();
        let expected: Vec<serde_json::Value> = {
            let all = sample();
            vec![instance_json(&all[1], None), instance_json(&all[0], None)]
        };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&echoed).unwrap(),
            serde_json::Value::from(expected)
        );
        assert_eq!(
            Derivation::Preset(Preset::Json)
                .derive(&sample(), None)
                .unwrap(),
            echoed,
            "exec programs see what the json preset prints"
        );
        for (command, expected) in [
            ("echo hi", &b"hi"[..]),
            ("printf 'a\\n\\n'", b"a\n"),
            ("printf 'a'", b"a"),
            ("true", b""),
            ("echo \"$PATH\" >/dev/null; echo ${HOME:-unset}", b"unset"),
            ("echo oops >&2; echo ok", b"ok"),
        ] {
            assert_eq!(
                exec(command, Duration::from_secs(10)).await.unwrap(),
                expected,
                "{command}"
            );
        }
    }

    #[tokio::test]
    async fn exec_failures() {
        let e = exec("cat >/dev/null; exit 3", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, DeriveError::Failed { code: 3 }), "{e:?}");
        let e = exec("kill -TERM $$", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, DeriveError::Killed { signal: 15 }), "{e:?}");
        let e = exec("head -c 2097152 /dev/zero", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, DeriveError::OutputTooLarge), "{e:?}");
        // Exactly the limit is fine.
        let at_limit = exec(
            &format!("head -c {MAX_VALUE} /dev/zero"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(at_limit.len(), MAX_VALUE);
        assert!(matches!(
            Derivation::Exec {
                command: "cat".into(),
                timeout: Duration::from_secs(1)
            }
            .derive(&sample(), None),
            Err(DeriveError::NeedsExec)
        ));
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_process_group() {
        let started = std::time::Instant::now();
        // The background sleep shares stdout: only killing the group ends it.
        let e = exec("sleep 5 & sleep 5", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, DeriveError::TimedOut { .. }), "{e:?}");
        assert!(e.to_string().contains("200ms"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_background_child_holding_stdout_does_not_block() {
        let started = std::time::Instant::now();
        let out = exec("echo value; sleep 5 &", Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out, b"value");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn dropping_exec_kills_the_process_group() {
        let dir = std::env::temp_dir().join(format!("herald-derive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        // A background child in the program's group: only killing the group ends it.
        let command = format!(
            "sleep 30 & echo $! > {}.tmp && mv {0}.tmp {0}; wait",
            pidfile.display()
        );
        let run = tokio::spawn(async move { exec(&command, Duration::from_secs(60)).await });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let pid = loop {
            if let Ok(pid) = std::fs::read_to_string(&pidfile)
                && pid.ends_with('\n')
            {
                break pid.trim().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the program never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        run.abort();
        let _ = run.await;
        // Dead: gone, or a zombie waiting for its new parent to reap it.
        let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !dead() {
            assert!(
                std::time::Instant::now() < deadline,
                "the background child {pid} outlived the dropped future"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
