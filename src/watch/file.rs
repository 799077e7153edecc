//! Replacing one file atomically: a staged copy in the same directory (same file system, so the
//! rename is atomic), fsynced, given the old file's mode and owner, checked, renamed over the
//! old file, and the directory fsynced. A concurrent reader sees the old file or the new one,
//! never a part of either. Where the file is and who may own it: [`super::out`].
//!
//! A reload that fails after the swap (the reload command, or `--verify` after it) puts back the
//! last file that reloaded successfully and reloads that, so the program runs a file it has run
//! before; the new value is then tried again by the caller (with its back-off).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::haproxy::{Haproxy, HaproxyError};
use super::out::{Current, MAX_FILE_LEN, OutError, OutFile};
use super::pgpool::{Pgpool, PgpoolError};
use crate::command::{CommandError, run_command};

/// Where and how a value is written.
#[derive(Debug, Clone)]
pub struct FileTarget {
    /// The file, checked (see [`super::out`]); a new file gets its `--mode`.
    pub out: OutFile,
    /// Run on the staged file (`$1`) before it replaces the old one; non-zero refuses it.
    pub check: Option<String>,
    /// Run after the file was replaced.
    pub reload: Option<String>,
    /// Run after each reload; non-zero counts as a failed reload.
    pub verify: Option<String>,
    /// The content of the last file the program reloaded (or was synced to) successfully: what
    /// a failed reload rolls back to.
    pub last_good: Option<Vec<u8>>,
    /// Bound on each of check and reload.
    pub command_timeout: Duration,
    /// The environment check and reload run with.
    pub env: BTreeMap<OsString, OsString>,
    /// The file was replaced but its reload (or the program's sync) failed: the next apply
    /// delivers it again even when the content is the same (a retry must not find the file
    /// current and skip it).
    pub reload_owed: bool,
    /// The program that reads the file, when herald does more for it than `reload`.
    pub program: Option<Program>,
    /// How the changes reached the program so far.
    pub applies: Applies,
}

/// A program herald brings to the file itself, beyond running `reload`.
#[derive(Debug, Clone)]
pub enum Program {
    /// A pgpool whose node table follows the file after each reload (reloaded by PCP when
    /// there is no `reload`); see [`super::pgpool`].
    Pgpool(Pgpool),
    /// A HAProxy whose servers follow the file through its Runtime API; `reload` only when a
    /// change cannot be made so; see [`super::haproxy`].
    Haproxy(Haproxy),
}

/// Counts of how changes reached the program (a HAProxy: through its socket or by reload).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applies {
    /// Made through the program's runtime interface, without a reload.
    pub runtime: u64,
    /// Made by the reload command.
    pub reload: u64,
    /// Not made (the error was reported; the change is tried again).
    pub failed: u64,
}

/// What [`FileTarget::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The file already held exactly this content: nothing written, no reload.
    Unchanged,
    /// Replaced (and reloaded, if a reload command is set).
    Written,
    /// Already current, but its earlier reload had failed: reloaded now.
    Reloaded,
}

impl std::fmt::Display for Applies {
    /// `N so far: R by socket, L by reload, F failed`, as the log says it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} so far: {} by socket, {} by reload, {} failed",
            self.runtime + self.reload + self.failed,
            self.runtime,
            self.reload,
            self.failed
        )
    }
}

/// Why a value did not become the file. The old file is untouched in every case but `Reload`.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot write {}: {source}; check the directory's permissions", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}; the old file stays")]
    Out(#[from] OutError),
    // The command's own error follows as the cause (said once, by the error chain).
    #[error("the new {} was refused (the old file stays)", .path.display())]
    Check { path: PathBuf, source: CommandError },
    #[error("{} was replaced, but not reloaded", .path.display())]
    Reload { path: PathBuf, source: CommandError },
    #[error("{} did not reload, so the last file that did was put back and reloaded; the new value is tried again", .path.display())]
    RolledBack { path: PathBuf, source: CommandError },
    #[error("{} did not reload, and neither did the last file that did, put back ({rollback}); the new value is tried again", .path.display())]
    RollbackFailed {
        path: PathBuf,
        rollback: String,
        source: CommandError,
    },
    #[error("{} was replaced, but pgpool does not match it yet", .path.display())]
    Pgpool { path: PathBuf, source: PgpoolError },
    #[error("{} was replaced, but HAProxy does not run it yet", .path.display())]
    Haproxy { path: PathBuf, source: HaproxyError },
    #[error("--template {origin}: {reason}; the old file stays")]
    Template { origin: String, reason: String },
}

impl WatchError {
    /// The result it is counted as (`herald_watch_applies_total`).
    pub fn result(&self) -> &'static str {
        match self {
            WatchError::Check { .. } => "check_failed",
            WatchError::Reload { .. } | WatchError::RollbackFailed { .. } => "reload_failed",
            WatchError::RolledBack { .. } => "rolled_back",
            WatchError::Pgpool { .. } | WatchError::Haproxy { .. } => "sync_failed",
            WatchError::Write { .. } | WatchError::Out(_) | WatchError::Template { .. } => {
                "write_failed"
            }
        }
    }
}

impl FileTarget {
    /// The file's real path.
    pub fn path(&self) -> &Path {
        self.out.path()
    }

    /// Makes the file hold `content`: stage, check, swap, reload. A reload that failed is run
    /// again by the next apply, even of the same content.
    pub async fn apply(&mut self, content: &[u8]) -> Result<Applied, WatchError> {
        // Bounded: one byte more than the value tells a longer file apart.
        let current = self.out.read(content.len())?;
        let old = current.as_ref().and_then(|c| c.content.clone());
        if old.as_deref() == Some(content) {
            if !self.reload_owed {
                // The program may have drifted (pgpool: a restart with a stale status, a
                // failover; HAProxy: a restart from an older file, a change by hand).
                self.sync(content).await?;
                self.last_good = Some(content.to_vec());
                return Ok(Applied::Unchanged);
            }
            self.deliver(None, content).await?;
            self.reload_owed = false;
            self.last_good = Some(content.to_vec());
            return Ok(Applied::Reloaded);
        }
        let write_err = |source| WatchError::Write {
            path: self.path().to_owned(),
            source,
        };
        let staged = self
            .out
            .stage(content, current.as_ref())
            .map_err(write_err)?;
        if let Some(check) = &self.check {
            run_command(
                "--check",
                check,
                &[staged.path().as_path()],
                None,
                &self.env,
                self.command_timeout,
            )
            .await
            .map_err(|source| WatchError::Check {
                path: self.path().to_owned(),
                source,
            })?;
        }
        staged.swap().map_err(write_err)?;
        tracing::info!(file = %self.path().display(), bytes = content.len(), "wrote the new value");
        self.reload_owed = true;
        match self.deliver(old.as_deref(), content).await {
            Ok(()) => {}
            Err(WatchError::Reload { path, source }) => {
                return Err(self.roll_back(content, path, source).await);
            }
            Err(err) => return Err(err),
        }
        self.reload_owed = false;
        self.last_good = Some(content.to_vec());
        Ok(Applied::Written)
    }

    /// After the reload of `failed` failed (`source`): puts the last file that reloaded back
    /// and reloads it. Without one (the first value), the new file stays, its reload owed.
    async fn roll_back(
        &mut self,
        failed: &[u8],
        path: PathBuf,
        source: CommandError,
    ) -> WatchError {
        let Some(good) = self
            .last_good
            .clone()
            .filter(|good| good.as_slice() != failed)
        else {
            return WatchError::Reload { path, source };
        };
        tracing::warn!(file = %path.display(), "{source}: putting back the last file that reloaded");
        let put_back = async {
            let current = self.out.read(good.len())?;
            let staged =
                self.out
                    .stage(&good, current.as_ref())
                    .map_err(|source| WatchError::Write {
                        path: path.clone(),
                        source,
                    })?;
            staged.swap().map_err(|source| WatchError::Write {
                path: path.clone(),
                source,
            })?;
            self.deliver(Some(failed), &good).await
        };
        match put_back.await {
            Ok(()) => {
                self.reload_owed = false;
                tracing::info!(file = %path.display(), bytes = good.len(), "rolled back: the last file that reloaded runs again");
                WatchError::RolledBack { path, source }
            }
            Err(err) => WatchError::RollbackFailed {
                path,
                rollback: crate::report::OneLine(&err).to_string(),
                source,
            },
        }
    }

    /// Brings the program to the file just written (`old`: the file it replaced): a HAProxy
    /// through its socket, by reload only when that cannot do it; anything else by reload
    /// (then a pgpool's node table by PCP).
    async fn deliver(&mut self, old: Option<&[u8]>, content: &[u8]) -> Result<(), WatchError> {
        let Some(Program::Haproxy(haproxy)) = &self.program else {
            self.reload().await?;
            return self.sync_pgpool(content).await;
        };
        let haproxy = haproxy.clone();
        let outcome = self.haproxy_apply(&haproxy, old, content).await;
        if outcome.is_err() {
            self.applies.failed += 1;
        }
        outcome
    }

    /// A runtime apply, else (with a reload command) a reload and a wait for HAProxy to run the
    /// file.
    async fn haproxy_apply(
        &mut self,
        haproxy: &Haproxy,
        old: Option<&[u8]>,
        content: &[u8],
    ) -> Result<(), WatchError> {
        let path = self.path().to_owned();
        let haproxy_err = |source| WatchError::Haproxy { path, source };
        let why = match haproxy.apply(old, content).await {
            Ok(changed) => {
                if !changed.is_empty() {
                    self.applies.runtime += 1;
                    tracing::info!(
                        file = %self.path().display(),
                        "HAProxy changed through its socket, without a reload: {changed} ({})",
                        self.applies,
                    );
                }
                return Ok(());
            }
            Err(err) => err,
        };
        if self.reload.is_none() {
            return Err(haproxy_err(why));
        }
        tracing::warn!(
            file = %self.path().display(),
            "{why}; reloading HAProxy instead"
        );
        self.reload().await?;
        haproxy.settled(content).await.map_err(haproxy_err)?;
        self.applies.reload += 1;
        tracing::info!(
            file = %self.path().display(),
            "HAProxy reloaded and runs the file ({})",
            self.applies,
        );
        Ok(())
    }

    /// Brings the program (if any) to what the file holds now: at start, and periodically,
    /// since pgpool and HAProxy can drift on their own.
    pub async fn resync(&mut self) -> Result<(), WatchError> {
        if self.program.is_none() {
            return Ok(());
        }
        let missing = |why: &str| WatchError::Write {
            path: self.path().to_owned(),
            source: std::io::Error::other(why.to_owned()),
        };
        let content = match self.out.read(MAX_FILE_LEN)? {
            Some(Current {
                content: Some(content),
                ..
            }) => content,
            Some(_) => return Err(missing("longer than 16 MiB, more than herald writes")),
            None => return Err(missing("it is gone")),
        };
        if self.reload_owed {
            self.deliver(None, &content).await?;
        } else {
            self.sync(&content).await?;
        }
        self.reload_owed = false;
        self.last_good = Some(content);
        Ok(())
    }

    /// Corrects the program's drift from the file, without a reload where that can be done.
    async fn sync(&mut self, content: &[u8]) -> Result<(), WatchError> {
        match &self.program {
            Some(Program::Haproxy(_)) => self.deliver(None, content).await,
            _ => self.sync_pgpool(content).await,
        }
    }

    /// Brings a pgpool's node table (if any) to the file.
    async fn sync_pgpool(&self, content: &[u8]) -> Result<(), WatchError> {
        match &self.program {
            None | Some(Program::Haproxy(_)) => Ok(()),
            Some(Program::Pgpool(pgpool)) => {
                let synced = pgpool
                    .sync(content)
                    .await
                    .map_err(|source| WatchError::Pgpool {
                        path: self.path().to_owned(),
                        source,
                    })?;
                if !synced.attached.is_empty() || !synced.detached.is_empty() {
                    tracing::info!(
                        attached = ?synced.attached,
                        detached = ?synced.detached,
                        "pgpool's backends match the file"
                    );
                }
                Ok(())
            }
        }
    }

    /// Runs the reload command (or, for a pgpool without one, `pcp_reload_config`), then
    /// `--verify`.
    async fn reload(&mut self) -> Result<(), WatchError> {
        if self.reload.is_none()
            && let Some(Program::Pgpool(pgpool)) = &self.program
        {
            pgpool.reload().await.map_err(|source| WatchError::Pgpool {
                path: self.path().to_owned(),
                source,
            })?;
        }
        // A failed --verify is a failed reload.
        for (role, command) in [("--reload", &self.reload), ("--verify", &self.verify)] {
            let Some(command) = command else { continue };
            run_command(role, command, &[], None, &self.env, self.command_timeout)
                .await
                .map_err(|source| WatchError::Reload {
                    path: self.path().to_owned(),
                    source,
                })?;
        }
        Ok(())
    }
}
