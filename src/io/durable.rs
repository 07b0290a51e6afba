//! Durable writes: a file is replaced whole or not at all, through a locked temporary in the
//! same folder, and the temporaries of writers that died are cleaned up.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::io_error;
use crate::error::{Error, Result};

/// The folder and file name of `path`.
pub(crate) fn split(path: &Path) -> Result<(PathBuf, String)> {
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
