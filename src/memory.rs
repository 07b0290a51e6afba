//! The memory budget: how many bytes an operation may still allocate, read from the process's
//! memory cgroup (v2 or v1), the machine's `MemAvailable` and an optional cap set by the user.
//!
//! Operations that allocate in proportion to their inputs compute their peak first and return
//! [`Error::OutOfMemory`] when it does not fit, instead of being killed part-way by the
//! kernel's OOM killer (which, on a shared machine, may also pick another process).
//!
//! ```
//! use laplace_update::{memory, CpuDevice, Error, FitConfig, HostMatrix, Posterior};
//! // A cap of 64 MiB for this process: a Full posterior at K = 30, D = 512 (Π and Σ alone
//! // 1.9 GB) is refused before anything is allocated.
//! memory::set_limit(Some(64 << 20));
//! let budget = memory::available().expect("a cap is known on every platform");
//! assert!(budget.bytes <= 64 << 20);
//! let (phi, head) = (vec![0.5f32; 512], vec![0.0f32; 30 * 512]);
//! let fit = Posterior::fit(&CpuDevice::new(1)?, HostMatrix::new(&phi, 1, 512)?, &[0u32],
//!                          HostMatrix::new(&head, 30, 512)?, None, &FitConfig::default());
//! assert!(matches!(fit, Err(Error::OutOfMemory { .. })));
//! memory::set_limit(None);
//! # Ok::<(), Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::error::format_bytes;
use crate::error::{Error, Result};

/// The user's cap on this process's memory, in bytes; `u64::MAX` when none is set.
static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Caps the memory this process may use (`None` removes the cap). Operations then count
/// `cap − resident set` as available, besides what the cgroup and the machine leave.
pub fn set_limit(bytes: Option<u64>) {
    LIMIT.store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The cap set by [`set_limit`], if any.
pub fn limit() -> Option<u64> {
    match LIMIT.load(Ordering::Relaxed) {
        u64::MAX => None,
        cap => Some(cap),
    }
}

/// Bytes that can still be allocated, and which bound set the figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Available {
    /// Bytes available now.
    pub bytes: u64,
    /// What bounds them: `"memory cgroup"`, `"MemAvailable"`, `"memory cap"` (the cap), or
    /// `"device memory"` (a GPU's free memory).
    pub source: &'static str,
}

/// The smallest of the bounds this machine knows: the user's cap less the resident set, each
/// enclosing memory cgroup's limit less its usage (reclaimable page cache not counted), and
/// `MemAvailable`. `None` where none is known (no cap, not Linux).
pub fn available() -> Option<Available> {
    available_under(limit())
}

/// [`available`] under the cap `cap`.
fn available_under(cap: Option<u64>) -> Option<Available> {
    let cgroup = cgroup_headroom().map(|bytes| Available {
        bytes,
        source: "memory cgroup",
    });
    let machine = meminfo_available().map(|bytes| Available {
        bytes,
        source: "MemAvailable",
    });
    [cap.map(under_cap), cgroup, machine].into_iter().fold(None, least)
}

/// What the cap `cap` leaves: the cap less this process's resident set.
fn under_cap(cap: u64) -> Available {
    Available {
        bytes: cap.saturating_sub(resident_bytes().unwrap_or(0)),
        source: "memory cap",
    }
}

/// The smaller of two bounds (the first on a tie), either of which may be unknown.
fn least(a: Option<Available>, b: Option<Available>) -> Option<Available> {
    match (a, b) {
        (Some(a), Some(b)) if b.bytes < a.bytes => Some(b),
        (a, b) => a.or(b),
    }
}

/// `Err(OutOfMemory)` when `needed` bytes do not fit in what is [`available`]; `what` names the
/// operation, `advice` what would fit (both only built on failure).
pub(crate) fn ensure(needed: u64, what: impl FnOnce() -> String, advice: impl FnOnce(u64) -> String) -> Result<()> {
    fits(needed, available_for(needed), what, advice)
}

/// Below this, an operation is checked against the user's cap only: reading the cgroup's
/// statistics costs about 0.5 ms, more than the small updates and predictions it would guard.
const SMALL: u64 = 32 << 20;

/// The bytes available to an operation that needs `needed` (read only when it is not small).
pub(crate) fn headroom_for(needed: u64) -> Option<u64> {
    available_for(needed).map(|a| a.bytes)
}

/// [`available`], or only the cap for a `needed` below [`SMALL`].
fn available_for(needed: u64) -> Option<Available> {
    match needed < SMALL {
        true => limit().map(under_cap),
        false => available(),
    }
}

/// [`ensure`] against the device's own free memory too, where it has its own (a GPU).
pub(crate) fn ensure_on<D: crate::device::Device>(
    device: &D,
    needed: u64,
    what: impl FnOnce() -> String,
    advice: impl FnOnce(u64) -> String,
) -> Result<()> {
    let on_device = device.free_memory().map(|bytes| Available {
        bytes,
        source: "device memory",
    });
    fits(needed, least(available_for(needed), on_device), what, advice)
}

/// [`ensure`] against `available`.
fn fits(
    needed: u64,
    available: Option<Available>,
    what: impl FnOnce() -> String,
    advice: impl FnOnce(u64) -> String,
) -> Result<()> {
    match available {
        Some(a) if needed > a.bytes => Err(Error::OutOfMemory {
            needed,
            available: a.bytes,
            bound: a.source,
            what: what(),
            advice: advice(a.bytes),
        }),
        _ => Ok(()),
    }
}

/// Parses a byte count: a number with an optional unit, `K`/`M`/`G`/`T` (powers of 1024, with
/// or without a trailing `B` or `iB`) or `KB`/`MB`/`GB`/`TB` (powers of 1000), e.g. `1.5G`.
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a byte count such as 1500M or 2G, got `{text}`"))?;
    let scale: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KIB" => 1024.0,
        "M" | "MIB" => 1024f64.powi(2),
        "G" | "GIB" => 1024f64.powi(3),
        "T" | "TIB" => 1024f64.powi(4),
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use K, M, G or T)")),
    };
    let bytes = value * scale;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("expected a positive byte count, got `{text}`"));
    }
    Ok(bytes as u64)
}

/// This process's resident set (`/proc/self/statm`), in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn meminfo_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The least headroom `limit − (usage − inactive file cache)` over this process's memory
/// cgroup and the cgroups enclosing it, v2 or v1.
fn cgroup_headroom() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut least: Option<u64> = None;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let found = if id == "0" && controllers.is_empty() {
            headroom_along(Path::new("/sys/fs/cgroup"), path, Files::V2)
                .or_else(|| headroom_along(Path::new("/sys/fs/cgroup/unified"), path, Files::V2))
        } else if controllers.split(',').any(|c| c == "memory") {
            headroom_along(Path::new("/sys/fs/cgroup/memory"), path, Files::V1)
        } else {
            None
        };
        if let Some(h) = found {
            least = Some(least.map_or(h, |l| l.min(h)));
        }
    }
    least
}

/// The file names of a cgroup version's limit, usage and reclaimable cache.
#[derive(Clone, Copy)]
enum Files {
    V1,
    V2,
}

impl Files {
    fn limit(self) -> &'static str {
        match self {
            Files::V1 => "memory.limit_in_bytes",
            Files::V2 => "memory.max",
        }
    }
    fn usage(self) -> &'static str {
        match self {
            Files::V1 => "memory.usage_in_bytes",
            Files::V2 => "memory.current",
        }
    }
    fn inactive_file(self) -> &'static str {
        match self {
            Files::V1 => "total_inactive_file",
            Files::V2 => "inactive_file",
        }
    }
}

/// The least headroom from the cgroup at `root/path` up to `root`.
fn headroom_along(root: &Path, path: &str, files: Files) -> Option<u64> {
    let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
    let mut least: Option<u64> = None;
    loop {
        if let Some(h) = headroom(&dir, files) {
            least = Some(least.map_or(h, |l| l.min(h)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return least;
        }
    }
}

/// `limit − (usage − inactive file cache)` of one cgroup directory; `None` without a limit.
fn headroom(dir: &Path, files: Files) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let limit: u64 = read(files.limit())?.trim().parse().ok()?;
    // v1 writes "no limit" as a page-rounded i64::MAX.
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = read(files.usage())?.trim().parse().ok()?;
    let inactive = read("memory.stat")
        .and_then(|stat| {
            stat.lines().find_map(|l| {
                l.strip_prefix(files.inactive_file())?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0u64);
    Some(limit.saturating_sub(usage.saturating_sub(inactive)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_and_print() {
        assert_eq!(parse_bytes("1500M"), Ok(1500 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("3X").is_err());
        assert_eq!(format_bytes(1_900_000_000), "1.9 GB");
        assert_eq!(format_bytes(12_300_000), "12 MB");
        assert_eq!(format_bytes(512), "512 B");
    }

    #[test]
    fn a_cap_bounds_what_is_available() {
        let with_cap = available_under(Some(1 << 40)).unwrap();
        assert!(with_cap.bytes <= 1 << 40);
        let tiny = available_under(Some(1)).unwrap();
        assert_eq!((tiny.bytes, tiny.source), (0, "memory cap"));
        assert!(matches!(
            fits(1, Some(tiny), || "a test".into(), |_| String::new()),
            Err(Error::OutOfMemory {
                needed: 1,
                available: 0,
                ..
            })
        ));
        assert!(fits(1, None, || "a test".into(), |_| String::new()).is_ok());
    }
}
