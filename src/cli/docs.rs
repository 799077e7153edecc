//! What the shell and `man` know of herald, generated from the same clap definitions as the
//! command line itself, so they cannot drift from it: `herald completions SHELL` prints a
//! completion script, `herald man --dir DIR` writes `herald.1` and one page per subcommand
//! (`herald-director.1`, …). A package installs both; see README.md, "Install".

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell as Generator;

use super::Cli;

/// The shells a completion script is made for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  herald completions bash > /usr/share/bash-completion/completions/herald
  herald completions zsh > /usr/share/zsh/vendor-completions/_herald
  herald completions fish > /usr/share/fish/vendor_completions.d/herald.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  herald man --dir /usr/share/man/man1     # herald.1, herald-director.1, …
  herald man | man -l -                    # read the main page now")]
pub struct ManArgs {
    /// Write herald.1 and a page per subcommand (herald-SUBCOMMAND.1) into this directory,
    /// instead of herald.1 on standard output.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let generator = match args.shell {
        Shell::Bash => Generator::Bash,
        Shell::Zsh => Generator::Zsh,
        Shell::Fish => Generator::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(generator, &mut Cli::command(), "herald", &mut script);
    print(&script).context("cannot write the completion script to standard output")
}

/// Writes the man pages (or the main one to standard output).
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    let Some(dir) = args.dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command)
            .render(&mut page)
            .context("cannot render the man page")?;
        return print(&page).context("cannot write the man page to standard output");
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    clap_mangen::generate_to(command, &dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
    Ok(())
}

/// Writes `bytes` to standard output; a reader that stopped early (`| head`) is no error.
fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
