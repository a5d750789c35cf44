//! The data directory of `sie serve` (`--data-dir`): its SQLite database, and the tiny
//! model when asked for.
//!
//! It holds every organization's prompts, images and key hashes, so it is the owner's
//! alone (SPEC 2.1): the directory is made 0700 and the database files (`sie.db`, and the
//! `-wal` and `-shm` files SQLite keeps beside it) 0600, and an existing directory made
//! under a looser umask is tightened at start, by `sie serve` and `sie admin --data-dir`
//! alike. `sie serve` also holds an exclusive lock on it (`sie.lock`, an `flock` that the
//! kernel releases when the process dies, however it dies), so two servers never share
//! one directory; that is what lets a restarted server release the leases its dead
//! predecessor's workers held ([`LOCAL_WORKERS`]).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use sie_store::{SqliteStore, Store};

/// The worker ids of `sie serve`'s in-process workers start so (`local:0`, `local:1`, …).
/// `:` cannot occur in a worker token's name, so no remote worker can pass for one, and
/// with the lock held no other process's worker has such an id on this database.
pub const LOCAL_WORKERS: &str = "local:";

/// A data directory, created or checked, with owner-only permissions.
pub struct DataDir {
    path: PathBuf,
}

/// `sie serve`'s hold on its data directory, for as long as it lives.
pub struct DirLock {
    _file: File,
}

impl DataDir {
    /// Creates the directory (when `create`) or checks that its database exists, and makes
    /// it and its database files readable by their owner alone.
    pub fn prepare(path: &Path, create: bool) -> anyhow::Result<DataDir> {
        let dir = DataDir {
            path: path.to_owned(),
        };
        let db = dir.database();
        if !create && !db.is_file() {
            bail!(
                "{} does not exist; start `sie serve --data-dir {}` once, pass the right --data-dir, \
                 or use --database-url for a PostgreSQL store",
                db.display(),
                path.display()
            );
        }
        // Made 0700 as it is created (not after), whatever the umask.
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(path)
            .with_context(|| format!("creating the data directory {}", path.display()))?;
        owner_only(path, 0o700)?;
        Ok(dir)
    }

    fn database(&self) -> PathBuf {
        self.path.join("sie.db")
    }

    /// Opens the SQLite store, its files created 0600 (SQLite gives the `-wal` and `-shm`
    /// files the database's own mode) or tightened to it.
    pub fn open_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        let db = self.database();
        private_file(&db)?;
        let store = SqliteStore::open(&db)?;
        for suffix in ["-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", db.display()));
            if file.exists() {
                owner_only(&file, 0o600)?;
            }
        }
        Ok(Arc::new(store))
    }

    /// Takes the exclusive lock on the directory, or explains which process holds it.
    pub fn lock(&self) -> anyhow::Result<DirLock> {
        let path = self.path.join("sie.lock");
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if !try_lock(&file)? {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            bail!(
                "another `sie serve` (process {}) is using the data directory {}: it holds {}. \
                 Stop it first, or give this one another --data-dir",
                if holder.is_empty() { "unknown" } else { holder },
                self.path.display(),
                path.display()
            );
        }
        // Who holds it, for the message above; the lock itself is the flock.
        use std::io::{Seek, Write};
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DirLock { _file: file })
    }
}

/// Makes `path` (a file that may not exist yet) exist with mode 0600 before SQLite opens
/// it, so the database is never readable by others, not even for a moment.
fn private_file(path: &Path) -> anyhow::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    owner_only(path, 0o600)
}

#[cfg(unix)]
fn owner_only(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("making {} readable by its owner alone", path.display()))
}

#[cfg(not(unix))]
fn owner_only(_: &Path, _: u32) -> anyhow::Result<()> {
    // Elsewhere the directory inherits its parent's access rules.
    Ok(())
}

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
#[cfg(unix)]
fn try_lock(file: &File) -> anyhow::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows for the call's duration.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(false);
    }
    Err(e).context("locking the data directory")
}

#[cfg(not(unix))]
fn try_lock(_: &File) -> anyhow::Result<bool> {
    // No flock: one server per directory is then the operator's to keep.
    Ok(true)
}
