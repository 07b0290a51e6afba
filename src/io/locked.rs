//! Read-modify-write of a posterior or accumulator file under an exclusive advisory lock, and
//! the removal of temporaries left by writers that died mid-write.
//!
//! Writers lock the sidecar file `.NAME.lock` beside `NAME` (created on first use and never
//! removed: removing it would let two writers hold locks on different files). Readers take no
//! lock: every write ends in an atomic rename, so a reader sees the last complete file.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::durable::{remove_dead_temporaries, split};
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
