//! `herald watch KEY` against a real ZooKeeper: values printed or rendered into a file
//! atomically, checked before the swap, and reloaded once per change.

mod support;

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use support::*;

fn put(root: &str, key: &str, value: &[u8]) {
    let out = run_with_input(herald(root).args(["put", key, "-"]), value);
    assert!(out.status.success(), "put {key}: {}", describe(&out));
}

/// The complete lines of a file a reload appends to: a record counts once its newline is written
/// (a reload writes its record and the newline in two writes).
fn lines_of(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.matches('\n').count())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prints_the_current_value_then_each_change() {
    let root = root("watch_print");
    put(&root, "URL", b"one");
    let mut child = herald(&root)
        .args(["watch", "URL"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut child);
    let _guard = Killed(child);
    lines.expect("the current value", |l| l == "one");
    put(&root, "URL", b"two");
    lines.expect("the new value", |l| l == "two");
}

#[test]
fn once_waits_for_the_key_and_writes_a_new_file_with_a_private_mode() {
    let root = root("watch_once");
    let s = Scratch::new("watch_once");
    let out = s.path("value.conf");
    let child = herald(&root)
        .args(["watch", "DB", "--once", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("watch to wait on the key", || {
        (!watchers_of(zk(), &format!("{root}/environment/DB")).is_empty()).then_some(())
    });
    put(&root, "DB", b"host=db1 password=x");
    let done = wait_output(child, DEADLINE);
    assert!(done.status.success(), "{}", describe(&done));
    assert_eq!(std::fs::read(&out).unwrap(), b"host=db1 password=x");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "a new file is private: values may be credentials"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&s.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no staged file is left: {leftovers:?}"
    );
}

#[test]
fn check_runs_on_the_staged_file_and_a_refused_value_keeps_the_old_file() {
    let root = root("watch_check");
    let s = Scratch::new("watch_check");
    let out = s.path("haproxy.cfg");
    // An existing file whose mode must survive every replacement.
    std::fs::write(&out, "old").unwrap();
    std::fs::set_permissions(&out, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let reloads = s.path("reloads");
    let checked = s.path("checked");
    put(&root, "SERVERS", b"good 1");
    // The check records what it was shown (the staged file, never the live one), then judges.
    let check = format!(
        "cat \"$1\" >> {checked}; echo >> {checked}; grep -q '^good' \"$1\"",
        checked = checked.display()
    );
    // Each reload records the file it reloaded.
    let reload = format!(
        "{{ cat {out}; echo; }} >> {reloads}",
        out = out.display(),
        reloads = reloads.display()
    );
    let child = herald(&root)
        .args([
            "watch", "SERVERS", "--check", &check, "--reload", &reload, "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    let reloaded = || {
        std::fs::read_to_string(&reloads)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Waits until the reloads end with `last`; returns them all.
    let reloaded_up_to = |last: &str| {
        wait_until(&format!("a reload of {last:?}"), || {
            let seen = reloaded();
            if seen.last().map(String::as_str) == Some(last) {
                Ok(seen)
            } else {
                Err(format!("reloads {seen:?}"))
            }
        })
    };
    reloaded_up_to("good 1");
    // A value the check refuses: the old file stays, no reload. The next good one goes through.
    put(&root, "SERVERS", b"bad");
    wait_for("the check to see the bad value", || {
        std::fs::read_to_string(&checked)
            .ok()?
            .lines()
            .any(|l| l == "bad")
            .then_some(())
    });
    put(&root, "SERVERS", b"good 2");
    // The same value again changes nothing: no reload.
    put(&root, "SERVERS", b"good 2");
    put(&root, "SERVERS", b"good 3");
    reloaded_up_to("good 3");
    // A last, different value: once its reload is seen, every earlier one has happened.
    put(&root, "SERVERS", b"good 4");
    let seen = reloaded_up_to("good 4");
    // Coalescing may skip good 2 (a newer value arrived before it was handled), never more.
    let expected: Vec<&str> = if seen.iter().any(|l| l == "good 2") {
        vec!["good 1", "good 2", "good 3", "good 4"]
    } else {
        vec!["good 1", "good 3", "good 4"]
    };
    assert_eq!(
        seen, expected,
        "one reload per change, none for the refused value or a repeat, never the bad file"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the existing file's mode is kept");
}

#[test]
fn a_concurrent_reader_never_sees_a_partial_file() {
    let root = root("watch_atomic");
    let s = Scratch::new("watch_atomic");
    let out = s.path("big.conf");
    let reloads = s.path("reloads");
    const SIZE: usize = 256 * 1024;
    put(&root, "BIG", &vec![b'a'; SIZE]);
    let reload = format!("echo x >> {}", reloads.display());
    let child = herald(&root)
        .args(["watch", "BIG", "--reload", &reload, "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Killed(child);
    wait_for("the first file", || (lines_of(&reloads) == 1).then_some(()));

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = std::thread::spawn({
        let (stop, reads, out) = (stop.clone(), reads.clone(), out.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                let content = std::fs::read(&out).expect("the file always exists");
                assert_eq!(content.len(), SIZE, "a partial file");
                assert!(
                    content.iter().all(|&b| b == content[0]),
                    "a mix of two values"
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    for (n, letter) in (b'b'..=b'k').enumerate() {
        put(&root, "BIG", &vec![letter; SIZE]);
        wait_for("the change to be applied", || {
            (lines_of(&reloads) == n + 2).then_some(())
        });
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("the reader saw only whole files");
    assert!(reads.load(Ordering::Relaxed) > 10, "the reader really read");
    assert_eq!(std::fs::read(&out).unwrap(), vec![b'k'; SIZE]);
}

#[test]
fn template_embeds_the_value_in_a_larger_file() {
    let root = root("watch_template");
    let s = Scratch::new("watch_template");
    let template = s.path("pgpool.conf.j2");
    std::fs::write(
        &template,
        "listen_addresses = '*'\n{{ value }}\n# from {{ key }}\n",
    )
    .unwrap();
    let out = s.path("pgpool.conf");
    put(&root, "BACKENDS", b"backend_hostname0 = 'db1'");
    let done = run(herald(&root)
        .args(["watch", "BACKENDS", "--once", "--template"])
        .arg(&template)
        .arg("--out")
        .arg(&out));
    assert!(done.status.success(), "{}", describe(&done));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "listen_addresses = '*'\nbackend_hostname0 = 'db1'\n# from BACKENDS\n"
    );
}

/// Issue #10: a reload that fails is tried again (with the file already current), and the
/// error says its cause once.
#[tokio::test]
async fn a_failed_reload_is_tried_again_and_said_once() {
    let root = root("watch_reload_retry");
    let s = Scratch::new("watch_reload_retry");
    let out = s.path("app.conf");
    let failed_once = s.path("failed-once");
    let reloads = s.path("reloads");
    put(&root, "CONF", b"v1");
    // The first reload fails; every later one succeeds and records the file it reloaded.
    let reload = format!(
        "if [ ! -e {failed} ]; then touch {failed}; exit 1; fi; cat {out} >> {reloads}; echo >> {reloads}",
        failed = failed_once.display(),
        out = out.display(),
        reloads = reloads.display()
    );
    let watch = Daemon::spawn(
        herald(&root)
            .args(["watch", "CONF", "--reload", &reload, "--out"])
            .arg(&out),
    );
    let log = watch
        .wait_log("reloaded (the earlier reload had failed)", 1)
        .await;
    assert_eq!(
        std::fs::read_to_string(&reloads).unwrap_or_default(),
        "v1\n",
        "reloaded once, with the file it had written:\n{log}"
    );
    let failure = log
        .lines()
        .find(|l| l.contains("trying again"))
        .unwrap_or_else(|| panic!("the failure is logged:\n{log}"));
    assert_eq!(
        failure.matches("exited with status 1").count(),
        1,
        "the cause is said once: {failure}"
    );
}

#[tokio::test]
async fn a_template_binds_several_keys_and_waits_for_every_one() {
    let root = root("watch_keys");
    let s = Scratch::new("watch_keys");
    let template = s.path("pgpool.conf.j2");
    std::fs::write(
        &template,
        "sr_check_user = '{{ values.SR_USER }}'\n{{ value }}\n",
    )
    .unwrap();
    let out = s.path("pgpool.conf");
    put(&root, "BACKENDS", b"backend_hostname0 = 'db1'");
    let watch = Daemon::spawn(
        herald(&root)
            .args(["watch", "BACKENDS", "SR_USER", "--template"])
            .arg(&template)
            .arg("--out")
            .arg(&out),
    );
    watch
        .wait_log("waiting for SR_USER to be published", 1)
        .await;
    assert!(!out.exists(), "nothing is written while a key is missing");
    put(&root, "SR_USER", b"monitor");
    let expect = |content: &'static str| {
        let out = out.clone();
        move || {
            let now = std::fs::read_to_string(&out).unwrap_or_default();
            if now == content { Ok(()) } else { Err(now) }
        }
    };
    wait_until(
        "the file with both keys",
        expect("sr_check_user = 'monitor'\nbackend_hostname0 = 'db1'\n"),
    );
    put(&root, "SR_USER", b"monitor2");
    wait_until(
        "the file after the second key changed",
        expect("sr_check_user = 'monitor2'\nbackend_hostname0 = 'db1'\n"),
    );
    put(&root, "BACKENDS", b"backend_hostname1 = 'db2'");
    wait_until(
        "the file after the first key changed",
        expect("sr_check_user = 'monitor2'\nbackend_hostname1 = 'db2'\n"),
    );

    let without = run(herald(&root).args(["watch", "BACKENDS", "SR_USER"]));
    assert_eq!(without.status.code(), Some(2), "{}", describe(&without));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("--template"),
        "{}",
        describe(&without)
    );
}

#[test]
fn a_pcp_password_file_others_can_read_is_refused_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scratch::new("watch_pcppass");
    let passfile = s.path("pcppass");
    std::fs::write(&passfile, "127.0.0.1:9898:pcpadmin:secret\n").unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(herald("/unused")
        .args(["watch", "K", "--out"])
        .arg(s.path("pgpool.conf"))
        .args(["--pgpool", "127.0.0.1:9898", "--pcp-passfile"])
        .arg(&passfile));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--pcp-passfile")
            && stderr.contains("chmod 600")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

/// SIGHUP applies the current value again: the reload runs once more (the file is current), and
/// watch keeps running.
#[tokio::test]
async fn sighup_reloads_again_and_keeps_watching() {
    let root = root("watch_hup");
    let s = Scratch::new("watch_hup");
    let out = s.path("app.conf");
    let reloads = s.path("reloads");
    put(&root, "CONF", b"v1");
    let reload = format!(
        "cat {} >> {}; echo >> {}",
        out.display(),
        reloads.display(),
        reloads.display()
    );
    let watch = Daemon::spawn(
        herald(&root)
            .args(["watch", "CONF", "--reload", &reload, "--out"])
            .arg(&out),
    );
    wait_until("the first reload", || {
        (lines_of(&reloads) == 1)
            .then_some(())
            .ok_or_else(|| format!("{} reloads", lines_of(&reloads)))
    });
    watch.signal(libc::SIGHUP);
    watch
        .wait_log("SIGHUP: applying the current values again", 1)
        .await;
    wait_until("the reload after SIGHUP", || {
        (lines_of(&reloads) == 2)
            .then_some(())
            .ok_or_else(|| format!("{} reloads", lines_of(&reloads)))
    });
    put(&root, "CONF", b"v2");
    wait_until("the next value", || {
        (lines_of(&reloads) == 3)
            .then_some(())
            .ok_or_else(|| format!("{} reloads", lines_of(&reloads)))
    });
    assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "v1\nv1\nv2\n");
}

/// A `--reload` still running when watch is stopped is killed with everything it started (the
/// old runner killed only the shell: its children lived on as orphans).
#[test]
fn stopping_during_a_reload_kills_the_reload_and_its_children() {
    let root = root("watch_stop_reload");
    let s = Scratch::new("watch_stop_reload");
    let out = s.path("app.conf");
    let pidfile = s.path("child.pid");
    put(&root, "CONF", b"v1");
    let reload = format!(
        "sleep 300 & echo $! > {}.tmp; mv {0}.tmp {0}; wait",
        pidfile.display()
    );
    let watch = Daemon::spawn(
        herald(&root)
            .args(["watch", "CONF", "--reload", &reload, "--out"])
            .arg(&out),
    );
    let child = wait_for("the reload to start its child", || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .filter(|p| !p.trim().is_empty())
    });
    let child = child.trim().to_owned();
    assert!(!process_gone(&child), "the reload's child runs");
    watch.signal(libc::SIGTERM);
    wait_for("the reload's child to be killed", || {
        process_gone(&child).then_some(())
    });
}

/// A reload that fails after the swap puts back the last file that reloaded and reloads it, so
/// the program never stays on a file it cannot run; the new value is tried again, and a good
/// value after it is applied as usual. `--verify` failing counts as a failed reload.
#[tokio::test]
async fn a_failed_reload_rolls_back_to_the_last_file_that_reloaded() {
    let root = root("watch_rollback");
    let s = Scratch::new("watch_rollback");
    let out = s.path("app.conf");
    let reloads = s.path("reloads");
    let verified = s.path("verified");
    put(&root, "CONF", b"v1");
    // The "program" refuses a file holding "bad"; each reload records the file it ran.
    let reload = format!(
        "if grep -q bad {out}; then exit 1; fi; cat {out} >> {reloads}; echo >> {reloads}",
        out = out.display(),
        reloads = reloads.display()
    );
    // The health probe after a reload fails for a file holding "sick".
    let verify = format!(
        "if grep -q sick {out}; then exit 3; fi; echo ok >> {verified}",
        out = out.display(),
        verified = verified.display()
    );
    let watch = Daemon::spawn(
        herald(&root)
            .args([
                "watch", "CONF", "--reload", &reload, "--verify", &verify, "--out",
            ])
            .arg(&out),
    );
    // The file the program last reloaded (a value that keeps failing is tried again, with
    // back-off, so how many reloads there are depends on timing).
    let last_reloaded = |want: &'static str| {
        let reloads = reloads.clone();
        wait_for(&format!("the last reload to be of {want:?}"), move || {
            let all = std::fs::read_to_string(&reloads).unwrap_or_default();
            (all.lines().last() == Some(want)).then_some(())
        })
    };
    last_reloaded("v1");
    put(&root, "CONF", b"bad");
    let log = watch
        .wait_log("rolled back: the last file that reloaded runs again", 1)
        .await;
    assert_eq!(
        std::fs::read(&out).unwrap(),
        b"v1",
        "the good file is back:\n{log}"
    );
    // The rollback reloaded v1 (and so may every retry of "bad" since): "bad" never ran.
    let runs = std::fs::read_to_string(&reloads).unwrap();
    assert!(
        runs.lines().count() >= 2 && runs.lines().all(|l| l == "v1"),
        "{runs:?}"
    );
    put(&root, "CONF", b"sick");
    watch
        .wait_log("rolled back: the last file that reloaded runs again", 2)
        .await;
    let log = watch.wait_log("--verify exited with status 3", 1).await;
    assert_eq!(std::fs::read(&out).unwrap(), b"v1", "{log}");
    last_reloaded("v1");
    put(&root, "CONF", b"v3");
    last_reloaded("v3");
    assert_eq!(std::fs::read(&out).unwrap(), b"v3");
}
