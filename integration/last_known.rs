//! The last known values (`--cache DIR`): kept from what ZooKeeper said, answered from while it
//! cannot be reached (with their age), refused past `--max-stale`, and an /environment of many
//! keys that pays for an unreachable ZooKeeper once.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use support::*;

/// A connect string nothing answers on: refused at once, so herald gives up after
/// `--connect-timeout`.
fn nowhere() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// herald for `root` with the cache in `cache`, against ZooKeeper at `zk`.
fn herald_cached(zk: &str, root: &str, cache: &Path) -> Command {
    let mut command = herald_at(zk, root);
    command
        .env("HERALD_CACHE", cache)
        .env("HERALD_CONNECT_TIMEOUT", "1s");
    command
}

/// The one entry file of `cache` for `key` (one directory per root below it).
fn entry(cache: &Path, key: &str) -> std::path::PathBuf {
    let roots: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one root's directory in {cache:?}: {roots:?}"
    );
    roots[0].join(key)
}

fn age_entry(path: &Path, by: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - by)
        .unwrap();
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn resolve_answers_from_the_last_known_value_while_zookeeper_is_down() {
    let root = root("resolve_cache");
    let scratch = Scratch::new("resolve_cache");
    let cache = scratch.path("cache");
    let live = zk().connect_string();
    let secret = b"postgres://app:s3cret@db:5432/app";
    let out = run_with_input(herald(&root).args(["put", "DATABASE_URL", "-"]), secret);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // Without a cache nothing is kept, and an unreachable ZooKeeper is exit 5.
    let out = run(herald_at(&nowhere(), &root)
        .env_remove("HERALD_CACHE")
        .env("HERALD_CONNECT_TIMEOUT", "1s")
        .args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));

    // Read through ZooKeeper: printed, and kept privately.
    let out = run(herald_cached(&live, &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, secret);
    let kept = entry(&cache, "DATABASE_URL");
    assert_eq!(std::fs::read(&kept).unwrap(), secret);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // ZooKeeper unreachable: the kept value, with its age on stderr (and never the value).
    age_entry(&kept, Duration::from_secs(125));
    let out = run(herald_cached(&nowhere(), &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, secret);
    let said = stderr(&out);
    assert!(
        said.contains("last known value") && said.contains(" 2m "),
        "{said}"
    );
    assert!(!said.contains("s3cret"), "{said}");

    // Older than --max-stale (24h by default): refused with exit 9, saying what to do.
    age_entry(&kept, Duration::from_secs(2 * 24 * 3600));
    let out = run(herald_cached(&nowhere(), &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(9), "{}", describe(&out));
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("--max-stale"), "{}", describe(&out));
    let out = run(herald_cached(&nowhere(), &root, &cache).args([
        "resolve",
        "--max-stale",
        "72h",
        "DATABASE_URL",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, secret);

    // A read through ZooKeeper makes the entry young again.
    let out = run(herald_cached(&live, &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = run(herald_cached(&nowhere(), &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // A key ZooKeeper says is gone is forgotten: never answered from the cache afterwards.
    let out = run(herald(&root).args(["delete", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = run(herald_cached(&live, &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(!kept.exists());
    let out = run(herald_cached(&nowhere(), &root, &cache).args(["resolve", "DATABASE_URL"]));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));

    // --default is for a key that is not published, never for the cache's answer.
    let out = run(herald_cached(&nowhere(), &root, &cache).args([
        "resolve",
        "--default",
        "x",
        "DATABASE_URL",
    ]));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    let root = root("cache_unsafe");
    let scratch = Scratch::new("cache_unsafe");
    let cache = scratch.path("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = run(herald_cached(&zk().connect_string(), &root, &cache).args(["resolve", "K"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let said = stderr(&out);
    assert!(
        said.contains("--cache") && said.contains("writable by group or others"),
        "{said}"
    );
}

/// /environment with three keys while ZooKeeper is down: the first entry waits out the connect
/// timeout, the others do not try again; each answers from the cache, and CMD learns which
/// values are stale.
#[test]
fn an_environment_of_many_keys_pays_for_an_unreachable_zookeeper_once() {
    let root = root("run_cache");
    let scratch = Scratch::new("run_cache");
    let cache = scratch.path("cache");
    let env_dir = scratch.path("environment");
    let live = zk().connect_string();
    let herald_bin = env!("CARGO_BIN_EXE_herald");
    for (key, value) in [("A_URL", "a"), ("B_URL", "b"), ("C_URL", "c")] {
        let out = run(herald(&root).args(["put", key, value]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        script(&env_dir, key, &format!("exec {herald_bin} resolve {key}"));
    }
    let cmd = r#"echo "$A_URL$B_URL$C_URL stale=$HERALD_STALE notes=${HERALD_RUN_NOTES:-none}""#;
    // Filled while ZooKeeper answers; nothing is stale then.
    let out = run(herald_cached(&live, &root, &cache)
        .arg("run")
        .arg("--env-dir")
        .arg(&env_dir)
        .args(["--", "sh", "-c", cmd]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "abc stale= notes=none\n"
    );

    for key in ["A_URL", "B_URL", "C_URL"] {
        age_entry(&entry(&cache, key), Duration::from_secs(600));
    }
    let out = run(herald_cached(&nowhere(), &root, &cache)
        .arg("run")
        .arg("--env-dir")
        .arg(&env_dir)
        .args(["--", "sh", "-c", cmd]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    let stale = printed
        .strip_prefix("abc stale=")
        .and_then(|rest| rest.strip_suffix(" notes=none\n"))
        .unwrap_or_else(|| panic!("{printed}"));
    let ages: Vec<(&str, u64)> = stale
        .split(',')
        .map(|pair| {
            let (key, secs) = pair.split_once('=').unwrap();
            (key, secs.parse().unwrap())
        })
        .collect();
    assert_eq!(
        ages.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        ["A_URL", "B_URL", "C_URL"],
        "{printed}"
    );
    assert!(
        ages.iter().all(|(_, secs)| (600..900).contains(secs)),
        "{printed}"
    );
    let said = stderr(&out);
    // Only the first entry tried to connect; the other two knew better.
    assert_eq!(
        said.matches("an earlier entry of this herald run could not reach it")
            .count(),
        2,
        "{said}"
    );
    assert_eq!(said.matches("Connection refused").count(), 1, "{said}");

    // Without a cache a later entry fails at once too (here the first one falls back on its
    // own, so the second runs).
    script(
        &env_dir,
        "A_URL",
        &format!("{herald_bin} resolve A_URL || echo fallback"),
    );
    let out = run(herald_at(&nowhere(), &root)
        .env_remove("HERALD_CACHE")
        .env("HERALD_CONNECT_TIMEOUT", "1s")
        .arg("run")
        .arg("--env-dir")
        .arg(&env_dir)
        .args(["--", "sh", "-c", cmd]));
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    let said = stderr(&out);
    assert!(
        said.contains("B_URL") && said.contains("an earlier entry of this herald run"),
        "{said}"
    );
    assert_eq!(said.matches("Connection refused").count(), 1, "{said}");
}

/// `watch` keeps what it reads; started while ZooKeeper cannot be reached, it writes the file
/// from the last known value (`--once`: and exits 0, or 9 past --max-stale), and once
/// ZooKeeper answers it follows the value again.
#[test]
fn watch_starts_from_the_last_known_value_and_follows_once_zookeeper_answers() {
    let root = root("watch_cache");
    let scratch = Scratch::new("watch_cache");
    let cache = scratch.path("cache");
    let out_file = scratch.path("backends.conf");
    let live = zk().connect_string();
    let out = run(herald(&root).args(["put", "BACKENDS", "db1:5432"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = run(herald_cached(&live, &root, &cache)
        .args(["watch", "BACKENDS", "--once", "--out"])
        .arg(&out_file));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        std::fs::read(entry(&cache, "BACKENDS")).unwrap(),
        b"db1:5432"
    );

    // ZooKeeper down, the file gone (a fresh container): written from the cache.
    std::fs::remove_file(&out_file).unwrap();
    let out = run(herald_cached(&nowhere(), &root, &cache)
        .args(["watch", "BACKENDS", "--once", "--out"])
        .arg(&out_file));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(std::fs::read(&out_file).unwrap(), b"db1:5432");
    assert!(
        stderr(&out).contains("last known value"),
        "{}",
        describe(&out)
    );

    // Too old: exit 9, the file untouched.
    std::fs::remove_file(&out_file).unwrap();
    age_entry(&entry(&cache, "BACKENDS"), Duration::from_secs(3 * 3600));
    let out = run(herald_cached(&nowhere(), &root, &cache)
        .args(["watch", "BACKENDS", "--once", "--max-stale", "1h", "--out"])
        .arg(&out_file));
    assert_eq!(out.status.code(), Some(9), "{}", describe(&out));
    assert!(!out_file.exists());
    // No cache: exit 5 as ever.
    let out = run(herald_at(&nowhere(), &root)
        .env("HERALD_CONNECT_TIMEOUT", "1s")
        .args(["watch", "BACKENDS", "--once", "--no-cache", "--out"])
        .arg(&out_file));
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));

    // Following: the kept value first, then ZooKeeper's once it can be reached.
    let proxy = Proxy::start(zk().port);
    proxy.partition();
    let watcher = Daemon::spawn(
        herald_cached(&proxy.connect_string(), &root, &cache)
            .args(["watch", "BACKENDS", "--out"])
            .arg(&out_file),
    );
    wait_until(
        "the file from the last known value",
        || match std::fs::read(&out_file) {
            Ok(v) if v == b"db1:5432" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let out = run(herald(&root).args(["put", "BACKENDS", "db1:5432,db2:5432"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    proxy.heal();
    wait_until("the file from ZooKeeper", || {
        match std::fs::read(&out_file) {
            Ok(v) if v == b"db1:5432,db2:5432" => Ok(()),
            other => Err(format!("{other:?}: {}", watcher.stderr())),
        }
    });
    wait_until("the cache to follow", || {
        match std::fs::read(entry(&cache, "BACKENDS")) {
            Ok(v) if v == b"db1:5432,db2:5432" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}
