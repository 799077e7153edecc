//! `herald run` and `herald env` with real directories, scripts and processes.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn write(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// herald with a clean environment (no ZooKeeper needed).
fn herald_bare() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(std::process::Stdio::null());
    command
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// herald's own error lines (a failing script's stderr is passed through around them).
fn herald_errors(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("herald: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn entries_run_in_byte_order_and_see_earlier_values() {
    let s = Scratch::new("order");
    let env = s.path("env");
    std::fs::create_dir(&env).unwrap();
    let order = s.path("order");
    let log = format!("echo $(basename \"$0\") >> {}", order.display());
    script(&env, "A", &format!("{log}; echo a"));
    script(&env, "B", &format!("{log}; echo \"$A-b\""));
    script(&env, "_U", &format!("{log}; echo u"));
    script(&env, "a_lower", &format!("{log}; printf 'x\\ny\\n\\n'"));
    write(&env.join("C"), "literal c\n", 0o644);
    write(&env.join(".hidden"), "#!/bin/sh\nexit 1\n", 0o755);
    write(&env.join("A~"), "junk", 0o644);
    std::fs::create_dir(env.join("subdir")).unwrap();
    let out = run(herald_bare().args(["run", "--env-dir"]).arg(&env).args([
        "--",
        "sh",
        "-c",
        "printf '%s|%s|%s|%s|%s' \"$A\" \"$B\" \"$C\" \"$_U\" \"$a_lower\"",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "a|a-b|literal c|u|x\ny\n");
    assert_eq!(
        std::fs::read_to_string(order).unwrap(),
        "A\nB\n_U\na_lower\n"
    );
}

#[test]
fn script_values_win_over_inherited_ones_unless_keep_existing() {
    let s = Scratch::new("precedence");
    let env = s.path("env");
    std::fs::create_dir(&env).unwrap();
    let ran = s.path("ran");
    script(
        &env,
        "FOO",
        &format!("touch {}; echo \"new-from-$FOO\"", ran.display()),
    );
    let cmd = ["--", "sh", "-c", "printf %s \"$FOO\""];
    let out = run(herald_bare()
        .env("FOO", "old")
        .args(["run", "--env-dir"])
        .arg(&env)
        .args(cmd));
    assert_eq!(stdout(&out), "new-from-old", "{}", describe(&out));

    std::fs::remove_file(&ran).unwrap();
    let out = run(herald_bare()
        .env("FOO", "old")
        .args(["run", "--keep-existing", "--env-dir"])
        .arg(&env)
        .args(cmd));
    assert_eq!(stdout(&out), "old", "{}", describe(&out));
    assert!(
        !ran.exists(),
        "with --keep-existing the entry of an inherited variable does not run"
    );
}

#[test]
fn later_directories_override_earlier_ones() {
    let s = Scratch::new("layers");
    let (shared, prod) = (s.path("shared"), s.path("prod"));
    std::fs::create_dir(&shared).unwrap();
    std::fs::create_dir(&prod).unwrap();
    write(&shared.join("X"), "1\n", 0o644);
    write(&shared.join("ZK"), "zk:2181\n", 0o644);
    script(&prod, "X", "echo \"$X+2 via $ZK\"");
    let out = run(herald_bare()
        .args(["run", "--env-dir"])
        .arg(&shared)
        .arg("--env-dir")
        .arg(&prod)
        .args(["--", "sh", "-c", "printf %s \"$X\""]));
    assert_eq!(stdout(&out), "1+2 via zk:2181", "{}", describe(&out));
}

#[test]
fn a_named_directory_must_exist_the_default_may_be_missing() {
    let out = run(herald_bare().args(["run", "--env-dir", "/no/such/environment", "--", "true"]));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(
        herald_errors(&out)[0].contains("/no/such/environment does not exist"),
        "{}",
        describe(&out)
    );
    // The default /environment is absent on test machines: nothing to do, the command runs.
    assert!(
        !Path::new("/environment").exists(),
        "this test assumes no /environment here"
    );
    let out = run(herald_bare().args(["run", "--", "true"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn run_replaces_itself_with_the_command() {
    let child = herald_bare()
        .args(["run", "--", "sh", "-c", "echo $$; exit 42"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = wait_output(child, DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(42),
        "the command's exit code is herald's: {}",
        describe(&out)
    );
    assert_eq!(
        stdout(&out).trim(),
        pid.to_string(),
        "the command runs as herald's own process"
    );
}

/// Entries may use herald's ZooKeeper identity (a script runs `herald resolve`); the command
/// does not get it, exec'd or supervised, unless an entry sets it on purpose.
#[test]
fn the_command_does_not_inherit_heralds_zookeeper_identity() {
    let s = Scratch::new("identity");
    let env = s.path("env");
    script(
        &env,
        "SEEN",
        "echo \"${HERALD_ZK_AUTH:-none}|${HERALD_ZK_AUTH_FILE:-none}\"",
    );
    let show = "printf '%s|%s|%s|%s' \"$SEEN\" \"${HERALD_ZK_AUTH:-none}\" \"${HERALD_ZK_AUTH_FILE:-none}\" \"${HERALD_ZK_TLS_KEY:-none}\"";
    for supervise in [false, true] {
        let mut command = herald_bare();
        command
            .env("HERALD_ZK_AUTH", "app:s3cret")
            .env("HERALD_ZK_AUTH_FILE", "/run/secrets/zk")
            .env("HERALD_ZK_TLS_KEY", "/run/secrets/zk.key")
            .args(["run", "--env-dir"])
            .arg(&env);
        if supervise {
            command.arg("--supervise");
        }
        let out = run(command.args(["--", "sh", "-c", show]));
        assert_eq!(
            stdout(&out),
            "app:s3cret|/run/secrets/zk|none|none|none",
            "supervise={supervise}: {}",
            describe(&out)
        );
    }
    // An entry that sets one hands it on deliberately.
    write(&env.join("HERALD_ZK_AUTH"), "child:pw\n", 0o644);
    let out = run(herald_bare()
        .env("HERALD_ZK_AUTH", "app:s3cret")
        .args(["run", "--env-dir"])
        .arg(&env)
        .args(["--", "sh", "-c", "printf %s \"$HERALD_ZK_AUTH\""]));
    assert_eq!(stdout(&out), "child:pw", "{}", describe(&out));
}

/// Every bad directory: exit code, a one-line error naming the file and the fix, CMD not run.
#[test]
fn bad_entries_stop_the_command_with_a_one_line_error() {
    let s = Scratch::new("bad");
    type Setup = fn(&Path);
    let cases: &[(&str, Setup, i32, &[&str])] = &[
        (
            "hang",
            |d| drop(script(d, "HANG", "sleep 600")),
            7,
            &["HANG", "ran longer than 500ms", "--script-timeout"],
        ),
        (
            "exit3",
            |d| drop(script(d, "E", "echo 'db unreachable' >&2; exit 3")),
            7,
            &["E exited with status 3", "db unreachable"],
        ),
        (
            "sigkill",
            |d| drop(script(d, "K", "kill -9 $$")),
            7,
            &["K was killed by signal 9"],
        ),
        (
            "huge",
            |d| drop(script(d, "BIG", "head -c 2097152 /dev/zero | tr '\\0' x")),
            7,
            &["BIG printed more than 1 MiB"],
        ),
        (
            "binary",
            |d| drop(script(d, "BIN", "printf '\\377\\376'")),
            7,
            &["BIN printed bytes that are not UTF-8"],
        ),
        (
            "nul",
            |d| drop(script(d, "NUL", "printf 'a\\0b'")),
            7,
            &["NUL printed a NUL byte"],
        ),
        (
            "digit",
            |d| drop(script(d, "1ABC", "echo x")),
            7,
            &["1ABC", "not a variable name", "rename the file"],
        ),
        (
            "dash",
            |d| write(&d.join("FOO-BAR"), "x", 0o644),
            7,
            &["FOO-BAR", "rename the file"],
        ),
        (
            "dot",
            |d| write(&d.join("FOO.BAR"), "x", 0o644),
            7,
            &["FOO.BAR", "rename the file"],
        ),
        (
            "noexec",
            |d| write(&d.join("S"), "#!/bin/sh\necho x\n", 0o644),
            7,
            &["S starts with #! but is not executable", "chmod +x"],
        ),
        (
            "broken",
            |d| std::os::unix::fs::symlink(d.join("missing"), d.join("L")).unwrap(),
            7,
            &["L is a symlink to a missing target"],
        ),
        (
            "badshebang",
            |d| write(&d.join("I"), "#!/no/such/interpreter\n", 0o755),
            7,
            &["cannot run", "I"],
        ),
        (
            "noshebang",
            |d| write(&d.join("N"), "echo x\n", 0o755),
            7,
            &["cannot run", "N", "has no #! line", "#!/bin/sh"],
        ),
    ];
    for (case, setup, code, needles) in cases {
        let dir = s.path(case);
        std::fs::create_dir(&dir).unwrap();
        setup(&dir);
        let marker = s.path(&format!("{case}.started"));
        let out = run(herald_bare()
            .args(["run", "--script-timeout", "500ms", "--env-dir"])
            .arg(&dir)
            .arg("--")
            .arg("touch")
            .arg(&marker));
        assert_eq!(out.status.code(), Some(*code), "{case}: {}", describe(&out));
        let errors = herald_errors(&out);
        assert_eq!(
            errors.len(),
            1,
            "{case}: one error line: {}",
            describe(&out)
        );
        for needle in *needles {
            assert!(
                errors[0].contains(needle),
                "{case}: {:?} lacks {needle:?}",
                errors[0]
            );
        }
        assert!(
            errors[0].matches("(os error").count() <= 1,
            "{case}: the cause is said once: {:?}",
            errors[0]
        );
        assert!(!marker.exists(), "{case}: the command must not start");
    }
}

#[test]
fn missing_command_and_non_executable_command_exit_like_a_shell() {
    let s = Scratch::new("cmd");
    write(&s.path("plain"), "not a program", 0o644);
    let out = run(herald_bare().args(["run", "--", "no-such-command-anywhere"]));
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(herald_errors(&out)[0].contains("no-such-command-anywhere: command not found"));
    let out = run(herald_bare().args(["run", "--"]).arg(s.path("plain")));
    assert_eq!(out.status.code(), Some(126), "{}", describe(&out));
    assert!(herald_errors(&out)[0].contains("permission denied"));
}

#[test]
fn symlinks_empty_dirs_and_background_children_work() {
    let s = Scratch::new("ok_cases");
    let env = s.path("env");
    std::fs::create_dir(&env).unwrap();
    let target = script(&s.0, "real_script", "echo linked");
    std::os::unix::fs::symlink(&target, env.join("LINKED")).unwrap();
    // Leaves a child holding stdout and stderr open: herald must not wait for it.
    script(&env, "BG", "sleep 600 & echo background-ok");
    let empty = s.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(herald_bare()
        .args(["run", "--script-timeout", "60s", "--env-dir"])
        .arg(&env)
        .arg("--env-dir")
        .arg(&empty)
        .args(["--", "sh", "-c", "printf '%s %s' \"$LINKED\" \"$BG\""]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "linked background-ok");
}

#[test]
fn unreadable_literal_is_an_error_naming_it() {
    let s = Scratch::new("unreadable");
    let env = s.path("env");
    std::fs::create_dir(&env).unwrap();
    std::fs::set_permissions(&s.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&env.join("HIDDEN_VALUE"), "x", 0o000);
    let mut command = if unsafe { libc::geteuid() } == 0 {
        // root reads anything: drop to nobody so the permission bits count.
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_herald"),
        ]);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        c
    } else {
        herald_bare()
    };
    let out = run(command
        .args(["run", "--env-dir"])
        .arg(&env)
        .args(["--", "true"]));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let errors = herald_errors(&out);
    assert!(
        errors[0].contains("cannot read") && errors[0].contains("HIDDEN_VALUE"),
        "{errors:?}"
    );
}

#[test]
fn export_runs_bootstrap_first_and_collects_declarations() {
    let s = Scratch::new("export");
    let (env, export) = (s.path("env"), s.path("export"));
    std::fs::create_dir(&env).unwrap();
    std::fs::create_dir(&export).unwrap();
    write(&env.join("PGPORT"), "5432\n", 0o644);
    let order = s.path("order");
    let log = format!("echo $(basename \"$0\") >> {}", order.display());
    script(&export, "bootstrap", &format!("{log}; echo bootstrapping"));
    script(&export, "PORT", &format!("{log}; echo \"$PGPORT\""));
    script(&export, "ANNOUNCED", &log); // prints nothing: announced on its own
    script(&export, "DB_PASSWORD", &format!("{log}; echo s3cret"));
    let out = run(herald_bare()
        .args(["env", "--json", "--env-dir"])
        .arg(&env)
        .arg("--export-dir")
        .arg(&export));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({
            "environment": {"PGPORT": "5432"},
            "export": {"DB_PASSWORD": "********", "PORT": "5432"},
        })
    );
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "bootstrap\nANNOUNCED\nDB_PASSWORD\nPORT\n"
    );
}

#[test]
fn env_masks_secrets_unless_asked() {
    let s = Scratch::new("mask");
    let env = s.path("env");
    std::fs::create_dir(&env).unwrap();
    write(
        &env.join("DATABASE_URL"),
        "postgresql://app:hunter2@db:5432/app\n",
        0o644,
    );
    write(&env.join("API_TOKEN"), "tok-123\n", 0o644);
    write(&env.join("HOST"), "db\n", 0o644);
    write(&env.join("DB_PASS"), "hunter3\n", 0o644);
    write(
        &env.join("PG_DSN"),
        "host=db user=app password=hunter4\n",
        0o644,
    );
    write(&env.join("AUTH_HEADER"), "Bearer tok-456\n", 0o644);
    let out = run(herald_bare().args(["env", "--env-dir"]).arg(&env));
    assert_eq!(
        stdout(&out),
        "API_TOKEN=********\nAUTH_HEADER=********\nDATABASE_URL=postgresql://app:********@db:5432/app\nDB_PASS=********\nHOST=db\nPG_DSN=host=db user=app password=********\n",
        "{}",
        describe(&out)
    );
    let out = run(herald_bare()
        .args(["run", "--print-env", "--show-secrets", "--env-dir"])
        .arg(&env));
    assert_ne!(
        out.status.code(),
        Some(0),
        "--show-secrets belongs to env, not run"
    );
    let out = run(herald_bare()
        .args(["env", "--show-secrets", "--env-dir"])
        .arg(&env));
    assert!(
        stdout(&out).contains("hunter2")
            && stdout(&out).contains("tok-123")
            && stdout(&out).contains("hunter4"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_shipped_development_environment_resolves() {
    let dir = repo_dir().join("examples/environments/development");
    let out = run(herald_bare()
        .args(["env", "--show-secrets", "--env-dir"])
        .arg(&dir));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        stdout(&out),
        "DATABASE_URL=postgresql://dev:dev@127.0.0.1:5432/dev\nMEMCACHE_SERVERS=127.0.0.1:11211\nPAYPAL_CLIENT_KEY=sandbox-client-key\n"
    );
}

/// A `herald run --supervise` with stdout piped and an empty /environment.
fn supervise(s: &Scratch, extra: &[&str], cmd: &[&str]) -> std::process::Child {
    let env = s.path("env");
    std::fs::create_dir_all(&env).unwrap();
    herald_bare()
        .args(["run", "--supervise", "--env-dir"])
        .arg(&env)
        .args(extra)
        .arg("--")
        .args(cmd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn supervise_forwards_signals_to_the_command_in_its_own_group() {
    let s = Scratch::new("forward");
    let names = ["INT", "HUP", "QUIT", "USR1", "USR2", "WINCH"];
    let traps: String = names
        .iter()
        .map(|n| format!("trap 'echo got {n}' {n}; "))
        .collect();
    let body = format!(
        "{traps} trap 'echo got TERM; exit 5' TERM; \
         echo ready $$ $(cut -d' ' -f5 /proc/$$/stat); while :; do sleep 0.02; done"
    );
    let mut child = supervise(&s, &[], &["sh", "-c", &body]);
    let herald_pid = child.id();
    let mut lines = Lines::of(&mut child);
    let ready = lines.expect("ready", |l| l.starts_with("ready "));
    let fields: Vec<&str> = ready.split_whitespace().collect();
    assert_ne!(
        fields[1],
        herald_pid.to_string(),
        "CMD is a child, not herald"
    );
    assert_eq!(
        fields[1], fields[2],
        "CMD leads its own process group: {ready}"
    );
    let numbers = [
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGWINCH,
    ];
    for (name, number) in names.iter().zip(numbers) {
        send_signal(herald_pid, number);
        lines.expect(&format!("got {name}"), |l| l == format!("got {name}"));
    }
    send_signal(herald_pid, libc::SIGTERM);
    let out = wait_output(child, DEADLINE);
    assert_eq!(
        out.status.code(),
        Some(5),
        "herald exits with CMD's code after forwarding SIGTERM: {}",
        describe(&out)
    );
}

#[test]
fn a_killed_supervisor_takes_its_command_with_it() {
    let s = Scratch::new("pdeathsig");
    let mut child = supervise(
        &s,
        &[],
        &["sh", "-c", "echo ready $$; while :; do sleep 0.05; done"],
    );
    let mut lines = Lines::of(&mut child);
    let ready = lines.expect("ready", |l| l.starts_with("ready "));
    let cmd_pid = ready.split_whitespace().nth(1).unwrap().to_owned();
    assert!(!process_gone(&cmd_pid), "CMD runs: {ready}");
    // SIGKILL: herald cannot forward anything; the kernel must end CMD.
    send_signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
    wait_until("CMD ends with its killed supervisor", || {
        if process_gone(&cmd_pid) {
            Ok(())
        } else {
            Err(format!("pid {cmd_pid} still runs"))
        }
    });
}

#[test]
fn supervise_exits_with_the_command_code_or_128_plus_its_signal() {
    let s = Scratch::new("codes");
    write(&s.path("plain"), "not a program", 0o644);
    let plain = s.path("plain").display().to_string();
    let cases: [(&[&str], i32); 5] = [
        (&["sh", "-c", "exit 0"], 0),
        (&["sh", "-c", "exit 42"], 42),
        (&["sh", "-c", "kill -TERM $$"], 143),
        (&["no-such-command-anywhere"], 127),
        (&[&plain], 126),
    ];
    for (cmd, code) in cases {
        let out = wait_output(supervise(&s, &[], cmd), DEADLINE);
        assert_eq!(out.status.code(), Some(code), "{cmd:?}: {}", describe(&out));
    }
}

#[test]
fn a_second_stop_signal_after_the_kill_timeout_kills_the_group() {
    let s = Scratch::new("kill");
    let body = "trap 'echo got TERM' TERM; sleep 1000 & echo ready $!; \
                while :; do sleep 0.02; done";
    let mut child = supervise(&s, &["--kill-timeout", "300ms"], &["sh", "-c", body]);
    let herald_pid = child.id();
    let mut lines = Lines::of(&mut child);
    let ready = lines.expect("ready", |l| l.starts_with("ready "));
    let grandchild: u32 = ready[6..].parse().unwrap();
    send_signal(herald_pid, libc::SIGTERM);
    lines.expect("the first SIGTERM forwarded", |l| l == "got TERM");
    // The command ignores SIGTERM; repeated ones are forwarded until the kill timeout has
    // passed, then one kills the group.
    let out = {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "herald still runs");
            let _ = unsafe { libc::kill(herald_pid as i32, libc::SIGTERM) };
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert_eq!(out.code(), Some(137), "CMD died of SIGKILL");
    wait_for("the grandchild in CMD's group to be killed", || {
        let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).ok();
        state
            .is_none_or(|st| st.split_whitespace().nth(2) == Some("Z"))
            .then_some(())
    });
}

#[test]
fn as_pid_1_supervise_reaps_orphaned_zombies() {
    let s = Scratch::new("reap");
    // The orphan is re-parented to PID 1, which is herald: unless herald reaps it, it stays a
    // zombie and its /proc entry never goes away.
    let cmd = script(
        &s.0,
        "orphan",
        r#"pid=$(sh -c 'sleep 0.1 >/dev/null 2>&1 & echo $!')
i=0
while [ -e /proc/$pid ]; do
  i=$((i+1))
  if [ $i -gt 200 ]; then echo "still there: $(grep State /proc/$pid/status)"; exit 1; fi
  sleep 0.05
done
echo "reaped by $(cat /proc/1/comm)""#,
    );
    let env = s.path("env");
    std::fs::create_dir_all(&env).unwrap();
    let mut unshare = Command::new("unshare");
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        unshare.args(["--user", "--map-root-user"]);
    }
    unshare
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(env!("CARGO_BIN_EXE_herald"))
        .args(["run", "--supervise", "--env-dir"])
        .arg(&env)
        .arg("--")
        .arg(&cmd)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    let out = run(&mut unshare);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "reaped by herald");
}

/// `HERALD_SUPERVISE` takes the booleans a shell user writes (1/0, true/false, yes/no, on/off):
/// with 1 herald stays CMD's parent, with 0 it becomes CMD; anything else is exit 2 naming it.
#[test]
fn herald_supervise_takes_1_and_0() {
    let s = Scratch::new("supervise_env");
    let env = s.path("env");
    std::fs::create_dir_all(&env).unwrap();
    let parent_of_cmd = |value: &str| {
        let out = run(herald_bare()
            .env("HERALD_SUPERVISE", value)
            .args(["run", "--env-dir"])
            .arg(&env)
            .args(["--", "sh", "-c", "cat /proc/$PPID/comm"]));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            out,
        )
    };
    for yes in ["1", "true", "yes", "on"] {
        let (code, parent, out) = parent_of_cmd(yes);
        assert_eq!(code, Some(0), "{yes}: {}", describe(&out));
        assert_eq!(
            parent,
            "herald",
            "HERALD_SUPERVISE={yes}: {}",
            describe(&out)
        );
    }
    for no in ["0", "false"] {
        let (code, parent, out) = parent_of_cmd(no);
        assert_eq!(code, Some(0), "{no}: {}", describe(&out));
        assert_ne!(
            parent,
            "herald",
            "HERALD_SUPERVISE={no}: {}",
            describe(&out)
        );
    }
    let (code, _, out) = parent_of_cmd("maybe");
    assert_eq!(code, Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--supervise"),
        "{}",
        describe(&out)
    );
}
