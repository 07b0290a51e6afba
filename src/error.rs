//! The one error type of the library. Its variants are the same whatever features are enabled.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with the data needed to act on it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument has the wrong shape.
    #[error("shape mismatch in `{argument}`: expected {expected}, got {got}")]
    ShapeMismatch {
        /// Name of the offending argument.
        argument: &'static str,
        /// The shape that was expected, e.g. `"10 x 64"`.
        expected: String,
        /// The shape that was received.
        got: String,
    },
    /// An input holds NaN or ±Inf.
    #[error("non-finite value in `{argument}` at {}", position(*index, *columns))]
    NonFinite {
        /// Name of the offending argument.
        argument: &'static str,
        /// Row-major flat index of the first non-finite value.
        index: usize,
        /// The argument's row length (1 for a vector): the value is at row `index / columns`,
        /// column `index % columns`.
        columns: usize,
    },
    /// A class label is not in `0..classes`.
    #[error("label {label} at index {index} is out of range for {classes} classes")]
    LabelOutOfRange {
        /// Position of the label in its batch.
        index: usize,
        /// The label received.
        label: i64,
        /// Number of classes K.
        classes: usize,
    },
    /// A batch that must hold at least one sample is empty.
    #[error("`{argument}` is empty: at least one sample is required")]
    EmptyBatch {
        /// Name of the offending argument.
        argument: &'static str,
    },
    /// A scalar or option is outside its valid range.
    #[error("invalid `{argument}`: {reason}")]
    InvalidArgument {
        /// Name of the offending argument.
        argument: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A Cholesky factorisation met a non-positive pivot.
    #[error("matrix is not positive definite: non-positive pivot at index {index}")]
    NotPositiveDefinite {
        /// Index of the first failing pivot.
        index: usize,
    },
    /// The precision is positive definite but too close to singular for the element type: the
    /// computed Σ = Π⁻¹ misses the identity `ΠΣ = I` by more than [`ILL_CONDITIONED_DRIFT`].
    #[error(
        "precision is too ill-conditioned for this element type: |ΠΣ − I| reaches {drift:.3e}; raise the prior precision or use f64"
    )]
    IllConditioned {
        /// The estimated `max |ΠΣ − I|`.
        drift: f64,
    },
    /// A backend cannot be started on this machine.
    #[error("backend `{backend}` is unavailable: {reason}")]
    BackendUnavailable {
        /// Backend name: `"cpu"`, `"cuda"`, `"wgpu"`.
        backend: &'static str,
        /// Why it cannot start.
        reason: String,
    },
    /// The operation is valid but not supported by this backend or configuration.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A file could not be read or written.
    #[error("cannot access `{path}`: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        reason: String,
    },
    /// Another writer held a file's write lock for longer than the caller would wait.
    #[error(
        "`{path}` is being written by another process: gave up after {waited_s:.1} s waiting for its lock `{lock}`"
    )]
    LockTimeout {
        /// The file to be written.
        path: String,
        /// Its lock file.
        lock: String,
        /// Seconds waited.
        waited_s: f64,
    },
    /// A file's contents are malformed, truncated, corrupted or of an unsupported kind.
    #[error("bad file `{what}`: {reason}")]
    Format {
        /// The file (and tensor, where it applies).
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An operation needs more memory than is available, found before anything was allocated.
    #[error(
        "{what} needs {}; {} is available (bounded by {bound}){advice}",
        format_bytes(*needed),
        format_bytes(*available)
    )]
    OutOfMemory {
        /// Peak bytes the operation would allocate.
        needed: u64,
        /// Bytes available when it was asked.
        available: u64,
        /// What bounds them: `"memory cgroup"`, `"MemAvailable"` or `"memory cap"`.
        bound: &'static str,
        /// The operation and its sizes, e.g. "a Full fit at K = 30, D = 513 (f32)".
        what: String,
        /// What would fit instead, starting with "; ", or empty.
        advice: String,
    },
    /// The operation was cancelled (see [`interrupt`](crate::interrupt)) between two of its
    /// passes or steps; what it was changing is as it was before the call.
    #[error("interrupted")]
    Interrupted,
    /// A device reported a fault (allocation, launch, lost device).
    #[error("device error on `{backend}`: {reason}")]
    Device {
        /// Backend name.
        backend: &'static str,
        /// What the device reported.
        reason: String,
    },
}

impl Error {
    /// `ShapeMismatch` for a matrix argument: expected and received `(rows, cols)`.
    pub fn shape(argument: &'static str, expected: (usize, usize), got: (usize, usize)) -> Self {
        Error::ShapeMismatch {
            argument,
            expected: format!("{} x {}", expected.0, expected.1),
            got: format!("{} x {}", got.0, got.1),
        }
    }

    /// `ShapeMismatch` for a head `W` of `rows × cols` given with features of `d` columns:
    /// `argument` is at fault, and is named as transposed when it is `d × K`.
    pub fn head_shape(argument: &'static str, rows: usize, cols: usize, d: usize) -> Self {
        let hint = match rows == d {
            true => format!(": it looks transposed (W is {cols} x {rows}, one row per class)"),
            false => String::new(),
        };
        Error::ShapeMismatch {
            argument,
            expected: format!("K x {d} (one row per class, as many columns as the features)"),
            got: format!("{rows} x {cols}{hint}"),
        }
    }

    /// `InvalidArgument` with a reason.
    pub fn invalid(argument: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            argument,
            reason: reason.into(),
        }
    }
}

/// The drift `max |ΠΣ − I|` above which a freshly inverted precision is rejected as
/// [`Error::IllConditioned`] rather than returned as a covariance.
pub const ILL_CONDITIONED_DRIFT: f64 = 0.05;

/// Where a flat index falls in a row-major array of rows of `columns` values.
fn position(index: usize, columns: usize) -> String {
    match columns {
        0 | 1 => format!("index {index}"),
        c => format!("row {}, column {} (flat index {index})", index / c, index % c),
    }
}

/// `bytes` for people: "1.9 GB", "12 MB", "123 KB", "512 B" (powers of 1000).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ if value < 10.0 => format!("{value:.1} {}", UNITS[unit]),
        _ => format!("{value:.0} {}", UNITS[unit]),
    }
}
