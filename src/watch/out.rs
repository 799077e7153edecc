//! The file `--out` names, made safe to replace in a directory others may reach: checked once
//! at start, then reached only through a descriptor of its directory, never through a path
//! that a symbolic link planted later could redirect.
//!
//! At start a symbolic link at `--out` is followed once (when root or herald's own user owns
//! it: a link another user planted is refused), and the directory must not be writable by
//! group or others unless herald's user owns it (or `--allow-shared-dir` says so). An existing
//! file must be a regular file owned by root, herald's user or the directory's owner (root
//! writing the config of a service in that service's directory): its owner and mode (less
//! set-id, sticky and world-write bits) carry over to each new file. One another user owns is
//! refused: they could have made it beforehand to keep the secret for themselves. Every later step (the bounded read that
//! compares, the staged file, the rename, the fsync) is relative to the directory's descriptor,
//! opens with `O_NOFOLLOW`, and refuses a non-regular file (a device or FIFO put there).

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::input::kind_of;

/// The longest file [`FileTarget::resync`](super::file::FileTarget::resync) reads back: more
/// than any value with its template.
pub const MAX_FILE_LEN: usize = 16 << 20;

/// Why `--out` cannot be used; said at start (exit 2) or by an apply (the old file stays).
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error(
        "--out {path} is a symbolic link owned by uid {uid}, who could point it at any file herald may write; remove it, or give the real file's path"
    )]
    ForeignLink { path: PathBuf, uid: u32 },
    #[error(
        "--out {path}: its directory {dir} can be written by group or others and is not herald's (uid {uid} owns it), so they could swap the file; use a directory only herald's user can write, or --allow-shared-dir"
    )]
    SharedDir {
        path: PathBuf,
        dir: PathBuf,
        uid: u32,
    },
    #[error("--out {path} is {kind}, not a regular file; give the path of a file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error(
        "--out {path} is owned by uid {uid}, neither root, herald's user nor its directory's owner: the value (it may hold credentials) would be theirs; remove the file or chown it"
    )]
    ForeignFile { path: PathBuf, uid: u32 },
    #[error("--out {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The file values are written to.
#[derive(Debug, Clone)]
pub struct OutFile {
    /// The real path (links followed once, at start): for messages and `--check`'s `$1`.
    path: PathBuf,
    dir_path: PathBuf,
    /// The directory, opened once.
    dir: Arc<OwnedFd>,
    name: OsString,
    /// Mode of a new file.
    mode: u32,
    /// Who owns the directory: may own the file too.
    dir_uid: u32,
}

/// What [`OutFile::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The content, if it is at most the limit asked for (longer: `None`, it differs).
    pub content: Option<Vec<u8>>,
    /// Owner, group and permission bits to carry over.
    uid: u32,
    gid: u32,
    mode: u32,
}

fn me() -> u32 {
    rustix::process::geteuid().as_raw()
}

impl OutFile {
    /// Checks `path` as the module says and opens its directory.
    pub fn open(path: &Path, mode: u32, allow_shared_dir: bool) -> Result<OutFile, OutError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OutError::Io { path, source }
        };
        let path = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if meta.uid() != 0 && meta.uid() != me() {
                    return Err(OutError::ForeignLink {
                        path: path.to_owned(),
                        uid: meta.uid(),
                    });
                }
                std::fs::canonicalize(path).map_err(io(path))?
            }
            _ => path.to_owned(),
        };
        let name = path
            .file_name()
            .map(|n| n.to_owned())
            .ok_or_else(|| OutError::NotRegular {
                path: path.clone(),
                kind: "a directory",
            })?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir_path = std::fs::canonicalize(parent).map_err(io(parent))?;
        let dir = rustix::fs::open(
            &dir_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| OutError::Io {
            path: dir_path.clone(),
            source: e.into(),
        })?;
        let meta = File::from(dir.try_clone().map_err(io(&dir_path))?)
            .metadata()
            .map_err(io(&dir_path))?;
        if meta.mode() & 0o022 != 0 && meta.uid() != me() && !allow_shared_dir {
            return Err(OutError::SharedDir {
                path: path.clone(),
                dir: dir_path,
                uid: meta.uid(),
            });
        }
        let out = OutFile {
            path: dir_path.join(&name),
            dir_path,
            dir: Arc::new(dir),
            name,
            mode,
            dir_uid: meta.uid(),
        };
        out.read(0)?;
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file as it is now, reading at most `limit` bytes of it; `None` when there is none.
    pub fn read(&self, limit: usize) -> Result<Option<Current>, OutError> {
        let io = |source: std::io::Error| OutError::Io {
            path: self.path.clone(),
            source,
        };
        let fd = match rustix::fs::openat(
            &*self.dir,
            self.name.as_bytes(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            // O_NOFOLLOW on a link (ELOOP), or a device herald may not open: say what it is.
            Err(err) => {
                return Err(
                    match rustix::fs::statat(
                        &*self.dir,
                        self.name.as_bytes(),
                        AtFlags::SYMLINK_NOFOLLOW,
                    ) {
                        Ok(_) => self.describe().unwrap_or_else(|| io(err.into())),
                        Err(_) => io(err.into()),
                    },
                );
            }
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(io)?;
        if let Some(kind) = kind_of(meta.mode()) {
            return Err(OutError::NotRegular {
                path: self.path.clone(),
                kind,
            });
        }
        if ![0, me(), self.dir_uid].contains(&meta.uid()) {
            return Err(OutError::ForeignFile {
                path: self.path.clone(),
                uid: meta.uid(),
            });
        }
        let mut content = Vec::new();
        file.take(limit as u64 + 1)
            .read_to_end(&mut content)
            .map_err(io)?;
        Ok(Some(Current {
            content: (content.len() <= limit).then_some(content),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o775,
        }))
    }

    /// What the name holds when it cannot be opened as a file, as an error.
    fn describe(&self) -> Option<OutError> {
        let stat =
            rustix::fs::statat(&*self.dir, self.name.as_bytes(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(OutError::NotRegular {
            path: self.path.clone(),
            kind: kind_of(stat.st_mode as u32)?,
        })
    }

    /// Writes `content` to a new file beside the target, with `current`'s owner and mode (or
    /// `--mode` when there is no file), fsynced.
    pub fn stage(&self, content: &[u8], current: Option<&Current>) -> std::io::Result<Staged> {
        // A name nobody else uses (another watcher of the same file, even in another PID
        // namespace): created exclusively, never removed first.
        let (name, fd) = loop {
            let nonce = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
                ^ u128::from(STAGED.fetch_add(1, Ordering::Relaxed));
            let mut name = OsString::from(".");
            name.push(&self.name);
            name.push(format!(".herald-{}-{nonce:x}", std::process::id()));
            match rustix::fs::openat(
                &*self.dir,
                name.as_bytes(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (name, fd),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(err) => return Err(err.into()),
            }
        };
        let staged = Staged {
            out: self.clone(),
            name,
            renamed: false,
        };
        let mut file = File::from(fd);
        file.write_all(content)?;
        match current {
            Some(old) => {
                // Owner first (chown clears set-id bits), then the mode. Without the right to
                // give the file away, keep at least its group.
                match std::os::unix::fs::fchown(&file, Some(old.uid), Some(old.gid)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                        let _ = std::os::unix::fs::fchown(&file, None, Some(old.gid));
                    }
                    Err(err) => return Err(err),
                }
                file.set_permissions(std::fs::Permissions::from_mode(old.mode))?;
            }
            None => file.set_permissions(std::fs::Permissions::from_mode(self.mode))?,
        }
        file.sync_all()?;
        Ok(staged)
    }
}

/// Makes staged names unique within this process.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// A staged file, removed unless it was renamed into place.
pub struct Staged {
    out: OutFile,
    name: OsString,
    renamed: bool,
}

impl Staged {
    /// Its path, for `--check`.
    pub fn path(&self) -> PathBuf {
        self.out.dir_path.join(&self.name)
    }

    /// Renames it over the target (atomically: same directory), then fsyncs the directory.
    pub fn swap(mut self) -> std::io::Result<()> {
        rustix::fs::renameat(
            &*self.out.dir,
            self.name.as_bytes(),
            &*self.out.dir,
            self.out.name.as_bytes(),
        )?;
        self.renamed = true;
        let _ = rustix::fs::fsync(&*self.out.dir);
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = rustix::fs::unlinkat(&*self.out.dir, self.name.as_bytes(), AtFlags::empty());
        }
    }
}
