//! Cancellation of long operations: fits, updates, tuning, head fits, marginal-likelihood
//! searches and active-learning selections check between their passes, steps and chunks, and
//! stop with [`Error::Interrupted`] once cancellation is requested. An operation that stops
//! so leaves its posterior as it was before the call.
//!
//! A program requests cancellation with [`request`] (the command line does so on SIGINT and
//! SIGTERM), or installs a [`set_hook`] that is asked at each check (the Python package asks
//! the interpreter whether Ctrl-C was pressed). The longest stretch between two checks is one
//! pass over the data or one factorisation.
//!
//! ```
//! use laplace_update::{CpuDevice, Error, FitConfig, HostMatrix, Posterior, interrupt};
//! let cpu = CpuDevice::new(1)?;
//! interrupt::request();
//! let fit = Posterior::fit(&cpu, HostMatrix::new(&[1.0f64, 0.0], 1, 2)?, &[0u32],
//!                          HostMatrix::new(&[0.0f64; 4], 2, 2)?, None, &FitConfig::default());
//! assert!(matches!(fit, Err(Error::Interrupted)));
//! interrupt::clear();
//! # Ok::<(), laplace_update::Error>(())
//! ```

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static HOOK: RwLock<Option<fn() -> bool>> = RwLock::new(None);

/// Requests that the running and later operations stop at their next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Withdraws a request, so that later operations run.
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether cancellation has been requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Installs `hook` (or removes it, with `None`): each check also calls it, and stops when it
/// returns true. It runs on the thread that called the operation.
pub fn set_hook(hook: Option<fn() -> bool>) {
    *HOOK.write().unwrap_or_else(|e| e.into_inner()) = hook;
}

/// `Err(Interrupted)` when cancellation was requested or the hook asks for it.
pub(crate) fn check() -> Result<()> {
    if requested() {
        return Err(Error::Interrupted);
    }
    let hook = *HOOK.read().unwrap_or_else(|e| e.into_inner());
    match hook.is_some_and(|ask| ask()) {
        true => Err(Error::Interrupted),
        false => Ok(()),
    }
}
