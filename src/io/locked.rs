//! Read-modify-write of a posterior or accumulator file under an exclusive advisory lock, and
//! the removal of temporaries left by writers that died mid-write.
//!
//! Writers lock the sidecar file `.NAME.lock` beside `NAME` (created on first use and never
//! removed: removing it would let two writers hold locks on different files). Readers take no
//! lock: every write ends in an atomic rename, so a reader sees the last complete file.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::io_error;
use super::posterior_file::{load_accumulator, load_posterior, save_accumulator, save_posterior};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::posterior::{CurvatureAccumulator, Posterior};
use crate::scalar::Scalar;

/// How long [`PosteriorFile::lock`] waits by default for another writer to finish.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// A posterior or accumulator file held for writing: while this handle lives, no other
/// [`PosteriorFile`] on the same path (in this or any other process) can be acquired, so a
/// `load`, a change and a `commit` form one transaction that no concurrent writer can interleave.
///
/// The lock is advisory: it orders writers that use this handle (the command line always
/// does), not processes that call [`save_posterior`] directly. It is released when the handle
/// is dropped, or when the process dies.
///
/// ```
/// use laplace_update::io::{PosteriorFile, save_posterior};
/// use laplace_update::{CpuDevice, FitConfig, HostMatrix, Posterior, UpdateConfig};
/// # let dir = std::env::temp_dir().join(format!("laplace-doc-lock-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let cpu = CpuDevice::new(1)?;
/// let path = dir.join("post.safetensors");
/// let head = HostMatrix::new(&[1.0f64, -1.0, -1.0, 1.0], 2, 2)?;
/// let post = Posterior::fit(&cpu, HostMatrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2)?, &[0u8, 1], head, None,
///                           &FitConfig::default())?;
/// save_posterior(&post, &path)?;
///
/// // Another process doing the same at the same time waits instead of losing this update.
/// let file = PosteriorFile::lock(&path, std::time::Duration::from_secs(60))?;
/// let mut post = file.load::<_, f64>(&cpu)?;
/// post.update(HostMatrix::new(&[0.5, 0.5], 1, 2)?, &[1u8], &UpdateConfig::default())?;
/// file.commit(&post)?;
/// drop(file); // the next writer may go
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub struct PosteriorFile {
    path: PathBuf,
    lock_path: PathBuf,
    // Holds the exclusive lock for the handle's lifetime.
    _lock: File,
}

impl std::fmt::Debug for PosteriorFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosteriorFile")
            .field("path", &self.path)
            .field("lock", &self.lock_path)
            .finish()
    }
}

impl PosteriorFile {
    /// Acquires the write lock of `path` (which need not exist yet), waiting up to `timeout`
    /// for other writers, then removes the temporaries of writers of `path` that died.
    ///
    /// Errors: [`Error::LockTimeout`] when another writer still holds the lock after
    /// `timeout`; [`Error::Io`] when the lock file cannot be created.
    pub fn lock(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let (dir, name) = split(&path)?;
        let lock_path = dir.join(format!(".{name}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| io_error(&lock_path, e))?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let waited = started.elapsed();
                    if waited >= timeout {
                        return Err(Error::LockTimeout {
                            path: path.display().to_string(),
                            lock: lock_path.display().to_string(),
                            waited_s: waited.as_secs_f64(),
                        });
                    }
                    std::thread::sleep(pause.min(timeout - waited));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::Error(e)) => return Err(io_error(&lock_path, e)),
            }
        }
        remove_dead_temporaries(&path);
        Ok(PosteriorFile {
            path,
            lock_path,
            _lock: file,
        })
    }

    /// The file this handle writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists (a `fit` may create it).
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// Loads the posterior: see [`load_posterior`].
    pub fn load<D: Device, T: Scalar>(&self, device: &D) -> Result<Posterior<D, T>> {
        load_posterior(device, &self.path)
    }

    /// Loads the accumulator: see [`load_accumulator`].
    pub fn load_accumulator<D: Device, T: Scalar>(
        &self,
        device: &D,
        chunk_rows: usize,
    ) -> Result<CurvatureAccumulator<D, T>> {
        load_accumulator(device, &self.path, chunk_rows)
    }

    /// Replaces the file with `post`, durably (see [`save_posterior`]); the lock is kept until
    /// the handle is dropped, so several commits may follow one another.
    pub fn commit<D: Device, T: Scalar>(&self, post: &Posterior<D, T>) -> Result<()> {
        save_posterior(post, &self.path)
    }

    /// Replaces the file with `acc`, durably (see [`save_accumulator`]).
    pub fn commit_accumulator<D: Device, T: Scalar>(&self, acc: &CurvatureAccumulator<D, T>) -> Result<()> {
        save_accumulator(acc, &self.path)
    }
}

/// The folder and file name of `path`.
fn split(path: &Path) -> Result<(PathBuf, String)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.display().to_string(),
        reason: "not a file name".into(),
    })?;
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// The prefix of the temporaries of `name`: `.NAME.tmp-`, followed by `PID-SERIAL`.
fn temporary_prefix(name: &str) -> String {
    format!(".{name}.tmp-")
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary `.NAME.tmp-PID-SERIAL` in the same folder, locked by this writer for its whole
/// life, then fsync, rename over the target, fsync the folder.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let (dir, name) = split(path)?;
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{}{}-{serial}", temporary_prefix(&name), std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        // The lock marks the temporary as alive; it is released when the handle closes, after
        // the rename, or when the process dies. Best effort: on a file system without locks
        // the write goes on, and the writer's PID alone marks it alive where that can be read.
        let _ = file.lock();
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a folder, which is harmless.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        drop(file);
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })
}

/// Removes the temporaries of `path` whose writer is gone: not locked by any open handle and,
/// where the platform can tell (Linux), whose writing process no longer exists. A temporary
/// of a live writer is left alone. Failures are ignored: this is housekeeping.
///
/// Returns the names removed.
pub fn remove_dead_temporaries(path: &Path) -> Vec<PathBuf> {
    let Ok((dir, name)) = split(path) else {
        return Vec::new();
    };
    let prefix = temporary_prefix(&name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(tag) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = tag.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(process_alive) {
            continue;
        }
        let candidate = entry.path();
        let Ok(file) = OpenOptions::new().read(true).open(&candidate) else {
            continue; // renamed or removed meanwhile
        };
        if file.try_lock().is_ok() && std::fs::remove_file(&candidate).is_ok() {
            removed.push(candidate);
        }
    }
    removed
}

/// Whether process `pid` exists; `false` where that cannot be told (then the temporary's lock
/// alone decides). This process counts as alive.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    if cfg!(target_os = "linux") {
        // `/proc/PID/stat` is `PID (NAME) STATE ...`; a killed process that its parent has not
        // yet reaped is a zombie (`Z`), which writes nothing more.
        match std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) {
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => false,
        }
    } else {
        false
    }
}
