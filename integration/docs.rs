//! What herald tells the shell and `man`: the completion scripts complete herald's real
//! subcommands and flags in a real bash, and the man pages render with `man` and list the
//! flags the binary has. No ZooKeeper is needed.

mod support;

use std::process::Command;

use support::*;

/// The words bash's completion offers for the command line `line` (the last word being
/// completed), with herald's bash script loaded.
fn bash_completes(script: &str, line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split(' ').collect();
    let program = format!(
        "{script}\nCOMP_WORDS=({words})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n_herald herald '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words = words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        cword = words.len() - 1,
        cur = words[words.len() - 1],
        prev = words[words.len() - 2],
    );
    let out = run(Command::new("bash").arg("-c").arg(program));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let out = run(herald("/unused").args(["completions", "bash"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let script = String::from_utf8(out.stdout).unwrap();
    let syntax = run(Command::new("bash").arg("-n").arg("-c").arg(&script));
    assert_eq!(syntax.status.code(), Some(0), "{}", describe(&syntax));

    let subcommands = bash_completes(&script, "herald di");
    assert!(
        subcommands.contains(&"director".to_owned()),
        "{subcommands:?}"
    );
    let flags = bash_completes(&script, "herald director --relist");
    assert_eq!(flags, ["--relist-rate"]);
    let global = bash_completes(&script, "herald announce --rejoin");
    assert_eq!(global, ["--rejoin-spread"], "global flags too");

    for shell in ["zsh", "fish"] {
        let out = run(herald("/unused").args(["completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("director") && script.contains("relist-rate"),
            "{shell}: {script}"
        );
    }
    let out = run(herald("/unused").args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn man_pages_render_for_herald_and_each_subcommand() {
    let s = Scratch::new("man_pages");
    let dir = s.path("man1");
    let out = run(herald("/unused").arg("man").arg("--dir").arg(&dir));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for page in [
        "herald.1",
        "herald-director.1",
        "herald-host.1",
        "herald-run.1",
    ] {
        assert!(dir.join(page).is_file(), "{page} written");
    }
    let rendered = run(Command::new("man")
        .arg("-l")
        .arg(dir.join("herald-director.1"))
        .env("MANWIDTH", "100"));
    assert_eq!(rendered.status.code(), Some(0), "{}", describe(&rendered));
    // Without a terminal, man marks bold and underline by overstriking (`X\bX`): drop them.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&rendered.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        text.contains("herald-director") && text.contains("--relist-rate"),
        "{text}"
    );

    // The main page on standard output.
    let out = run(herald("/unused").arg("man"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(".ie"));

    // A directory that cannot be made: one line naming it, exit 1, nothing written.
    let blocked = s.path("file");
    std::fs::write(&blocked, "").unwrap();
    let out = run(herald("/unused")
        .arg("man")
        .arg("--dir")
        .arg(blocked.join("man1")));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("file/man1"), "{stderr}");
}
