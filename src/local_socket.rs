//! Unix sockets only this user (and root) may use: the agent's control socket and the gateway's
//! `--listen unix:PATH`.
//!
//! Whoever can answer on such a socket decides what its clients believe, and whoever can
//! connect acts with herald's rights. So the directory is created 0700 and must be owned by
//! herald's user (or root) and writable by nobody else; the socket is 0600 whatever the umask;
//! and each side checks the other's uid (`SO_PEERCRED`, [`trusted`]).
//!
//! A socket's path must fit `sun_path` (107 bytes). A longer one (a deep `--control-dir`) is
//! reached through its directory's descriptor, `/proc/self/fd/N/NAME`, which names the same file.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::info;

/// Why a private socket could not be bound or its directory trusted.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The directory or socket could not be created, inspected or bound.
    #[error("{source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another live process answers on the socket.
    #[error("another live process answers on {}", .path.display())]
    InUse { path: PathBuf },
    /// The directory is one another user could write to or owns.
    #[error("{} {why}", .path.display())]
    Unsafe { path: PathBuf, why: String },
}

/// This process's effective uid.
pub fn euid() -> u32 {
    // SAFETY: plain syscall, cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a peer of `uid` may talk to this process's private sockets: the same user, or root.
pub fn trusted(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Refuses a directory another user could write to or owns: a symlink, not a directory, owned
/// by another non-root user, or writable by group or others.
pub fn check_dir(dir: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_because = |why: String| SocketError::Unsafe {
        path: dir.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|source| SocketError::Io {
        path: dir.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_because("is a symbolic link".to_owned()));
    }
    if !meta.is_dir() {
        return Err(unsafe_because("is not a directory".to_owned()));
    }
    if !trusted(meta.uid()) {
        return Err(unsafe_because(format!("is owned by uid {}", meta.uid())));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_because(format!(
            "is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The longest path `bind` and `connect` take (`sun_path` less its NUL).
const MAX_SUN_PATH: usize = 107;

/// Runs `op` on a path for `path` that fits `sun_path`: itself, or when too long the same file
/// through a descriptor of its directory, held open meanwhile.
pub fn with_short_path<T>(
    path: &Path,
    op: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().len() <= MAX_SUN_PATH {
        return op(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return op(path);
    };
    let dir = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let short = Path::new(&format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .join(name);
    op(&short)
}

/// Connects to the private socket at `path` (any length).
pub async fn connect(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let stream = with_short_path(path, |p| std::os::unix::net::UnixStream::connect(p))?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// A listening private socket; removed when dropped.
pub struct PrivateSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl PrivateSocket {
    /// Binds `path` (its directory created 0700 when missing, and checked), replacing a stale
    /// socket left by a crashed process, but never one a live process still answers on.
    pub fn bind(path: &Path) -> Result<PrivateSocket, SocketError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |source| SocketError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        check_dir(dir)?;
        if with_short_path(path, |p| std::os::unix::net::UnixStream::connect(p)).is_ok() {
            return Err(SocketError::InUse {
                path: path.to_owned(),
            });
        }
        match std::fs::remove_file(path) {
            Ok(()) => {
                info!(socket = %path.display(), "replaced a stale socket (its process is gone)")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = with_short_path(path, |p| std::os::unix::net::UnixListener::bind(p))
            .and_then(|l| {
                l.set_nonblocking(true)?;
                UnixListener::from_std(l)
            })
            .map_err(io)?;
        // 0600 whatever the umask; the directory (checked) keeps others out meanwhile.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        Ok(PrivateSocket {
            path: path.to_owned(),
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
