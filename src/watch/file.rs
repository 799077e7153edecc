//! Replacing one file atomically: a staged copy in the same directory (same file system, so the
//! rename is atomic), fsynced, given the old file's mode and owner, checked, renamed over the
//! old file, and the directory fsynced. A concurrent reader sees the old file or the new one,
//! never a part of either.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::pgpool::{Pgpool, PgpoolError};
use crate::command::{CommandError, run_command};

/// Where and how a value is written.
#[derive(Debug, Clone)]
pub struct FileTarget {
    pub path: PathBuf,
    /// Mode of a new file (an existing file keeps its own).
    pub mode: u32,
    /// Run on the staged file (`$1`) before it replaces the old one; non-zero refuses it.
    pub check: Option<String>,
    /// Run after the file was replaced.
    pub reload: Option<String>,
    /// Bound on each of check and reload.
    pub command_timeout: Duration,
    /// The environment check and reload run with.
    pub env: BTreeMap<OsString, OsString>,
    /// The file was replaced but its reload (or pgpool sync) failed: the next apply reloads
    /// even when the content is the same (a retry must not find the file current and skip it).
    pub reload_owed: bool,
    /// A pgpool to bring to the file after each reload (and reloaded by PCP when there is no
    /// `reload`); see [`super::pgpool`].
    pub pgpool: Option<Pgpool>,
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

/// Why a value did not become the file. The old file is untouched in every case but `Reload`.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot write {}: {source}; check the directory's permissions", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    // The command's own error follows as the cause (said once, by the error chain).
    #[error("the new {} was refused (the old file stays)", .path.display())]
    Check { path: PathBuf, source: CommandError },
    #[error("{} was replaced, but not reloaded", .path.display())]
    Reload { path: PathBuf, source: CommandError },
    #[error("{} was replaced, but pgpool does not match it yet", .path.display())]
    Pgpool { path: PathBuf, source: PgpoolError },
    #[error("--template {origin}: {reason}; the old file stays")]
    Template { origin: String, reason: String },
}

impl FileTarget {
    /// Makes the file hold `content`: stage, check, swap, reload. A reload that failed is run
    /// again by the next apply, even of the same content.
    pub async fn apply(&mut self, content: &[u8]) -> Result<Applied, WatchError> {
        if std::fs::read(&self.path).is_ok_and(|old| old == content) {
            if !self.reload_owed {
                // pgpool may have drifted (a restart with a stale status, a failover).
                self.sync(content).await?;
                return Ok(Applied::Unchanged);
            }
            self.reload().await?;
            self.sync(content).await?;
            self.reload_owed = false;
            return Ok(Applied::Reloaded);
        }
        let write_err = |source| WatchError::Write {
            path: self.path.clone(),
            source,
        };
        let mut staged = Staged {
            path: self.stage(content).map_err(write_err)?,
            renamed: false,
        };
        if let Some(check) = &self.check {
            run_command(
                "--check",
                check,
                &[staged.path.as_path()],
                None,
                &self.env,
                self.command_timeout,
            )
            .await
            .map_err(|source| WatchError::Check {
                path: self.path.clone(),
                source,
            })?;
        }
        std::fs::rename(&staged.path, &self.path).map_err(write_err)?;
        staged.renamed = true;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        tracing::info!(file = %self.path.display(), bytes = content.len(), "wrote the new value");
        self.reload_owed = true;
        self.reload().await?;
        self.sync(content).await?;
        self.reload_owed = false;
        Ok(Applied::Written)
    }

    /// Brings pgpool (if any) to what the file holds now, without a reload: at start, and
    /// periodically, since pgpool can drift on its own.
    pub async fn resync(&mut self) -> Result<(), WatchError> {
        if self.pgpool.is_none() {
            return Ok(());
        }
        let content = std::fs::read(&self.path).map_err(|source| WatchError::Write {
            path: self.path.clone(),
            source,
        })?;
        if self.reload_owed {
            self.reload().await?;
        }
        self.sync(&content).await?;
        self.reload_owed = false;
        Ok(())
    }

    async fn sync(&self, content: &[u8]) -> Result<(), WatchError> {
        let Some(pgpool) = &self.pgpool else {
            return Ok(());
        };
        let synced = pgpool
            .sync(content)
            .await
            .map_err(|source| WatchError::Pgpool {
                path: self.path.clone(),
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

    /// Runs the reload command (or, for a pgpool without one, `pcp_reload_config`).
    async fn reload(&mut self) -> Result<(), WatchError> {
        if self.reload.is_none()
            && let Some(pgpool) = &self.pgpool
        {
            pgpool.reload().await.map_err(|source| WatchError::Pgpool {
                path: self.path.clone(),
                source,
            })?;
        }
        if let Some(reload) = &self.reload {
            run_command(
                "--reload",
                reload,
                &[],
                None,
                &self.env,
                self.command_timeout,
            )
            .await
            .map_err(|source| WatchError::Reload {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Writes `content` to a new file beside the target, with the target's owner and mode.
    fn stage(&self, content: &[u8]) -> std::io::Result<PathBuf> {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A name nobody else uses (another watcher of the same file, even in another PID
        // namespace): created exclusively, never removed first.
        let (staged, mut file) = loop {
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                ^ u128::from(STAGED.fetch_add(1, Ordering::Relaxed));
            let staged = self
                .path
                .with_file_name(format!(".{name}.herald-{}-{nonce:x}", std::process::id()));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&staged)
            {
                Ok(file) => break (staged, file),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        };
        let written = (|| {
            file.write_all(content)?;
            match std::fs::metadata(&self.path) {
                Ok(old) => {
                    // Owner first (chown clears set-id bits), then the mode. Without the right
                    // to give the file away, keep at least its group.
                    match std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                        Ok(()) => {}
                        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                            let _ = std::os::unix::fs::fchown(&file, None, Some(old.gid()));
                        }
                        Err(err) => return Err(err),
                    }
                    file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))?;
                }
                Err(_) => file.set_permissions(std::fs::Permissions::from_mode(self.mode))?,
            }
            file.sync_all()
        })();
        if let Err(err) = written {
            let _ = std::fs::remove_file(&staged);
            return Err(err);
        }
        Ok(staged)
    }
}

/// Makes staged names unique within this process.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// A staged file, removed unless it was renamed into place.
struct Staged {
    path: PathBuf,
    renamed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
