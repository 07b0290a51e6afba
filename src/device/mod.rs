//! The [`Device`] trait: device-resident buffers and a small set of primitives; the fused
//! operations of the posteriors are in [`ops`], one file each.
//!
//! A backend implements the storage methods and the primitives, and names in [`Device::Ops`] the
//! type that carries its fused operations: [`ops::Faer`] for the CPU, [`ops::Kernels`] for every
//! GPU runtime. An operation's file holds its composition over the primitives (the trait's
//! default), the faer override and the GPU composition, so one file shows every implementation
//! of an operation. The faer implementation in [`cpu`] is the reference every backend is tested
//! against; the GPU runtimes keep each kernel family in one source file named after it
//! (`kernels/<family>.cu`, `shaders/<family>.wgsl`), registered once in
//! `src/device/registry.rs`.
//!
//! | | methods |
//! |---|---|
//! | storage | [`Device::upload`], [`Device::download`], [`Device::zeros`], [`Device::copy`], [`Device::synchronize`], [`Device::add_host_gram`] |
//! | primitives | [`Device::gemm`], [`Device::weighted_syrk`], [`Device::cholesky`], [`Device::triangular_solve`], [`Device::predictive_covariance`], [`Device::axpy`], [`Device::hadamard`], [`Device::add_row`], [`Device::add_diagonal`], [`Device::max_abs`], [`Device::feature_rows`] |
//! | fused ([`ops`]) | [`ops::ggn_accumulate`], [`ops::kron_rows`], [`ops::kron_congruence`], [`ops::kron_products`], [`ops::low_rank_update`], [`ops::sherman_morrison_sequence`], [`ops::spd_inverse()`], [`ops::probit_softmax`], [`ops::monte_carlo_softmax`], [`ops::bridge_dirichlet`], [`ops::softmax_rows`], [`ops::categorical_weights`] |
//!
//! Matrices are dense and row-major; their shape travels with the buffer. Data moves between
//! host and device only through [`Device::upload`] and [`Device::download`].

mod auto;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
pub(crate) mod compose;
pub mod cpu;
mod cpu_gram;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda;
pub mod dispatch;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
pub(crate) mod gpu;
pub mod launch;
pub mod ops;
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
mod registry;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::scalar::Scalar;

#[cfg(feature = "wgpu")]
pub use self::wgpu::{WgpuDevice, WgpuOptions, WgpuRuntime};
pub use auto::{AnyDevice, AutoChoice};
pub use cpu::CpuDevice;
pub use dispatch::{Kind, OnAnyDevice};
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu"))]
pub use gpu::{GpuBuffer, GpuDevice};

/// Whether a gemm operand is used as stored or transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// As stored.
    N,
    /// Transposed.
    T,
}

/// Direction of a low-rank correction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    /// `Σ ← Σ + U C⁻¹ Uᵀ` (a downdate of the precision).
    Plus,
    /// `Σ ← Σ − U C⁻¹ Uᵀ` (an update of the precision, Woodbury).
    Minus,
}

/// Output weights m_n of the `Shared` structure's curvature `Σ_n m_n φ_n φ_nᵀ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputWeighting {
    /// m_n = 1: the seed paper's default ("gaussian").
    #[default]
    Gaussian,
    /// m_n = p_max(1 − p_max), SNGP style ("categorical").
    Categorical,
}

/// The low-rank factor B whose products [`ops::kron_products`] forms without building B.
pub enum LowRankFactor<'a, D: Device, T: Scalar> {
    /// Full GGN: column (j, c) of B is `S_j[:, c] ⊗ φ_j` with `S_j = diag(√p_j) − p_j √p_jᵀ`,
    /// so `B Bᵀ = Σ_j Λ_j ⊗ φ_j φ_jᵀ`. `probs` is m × K.
    Kronecker {
        /// Class probabilities p_j, one row per sample.
        probs: &'a Matrix<D, T>,
    },
    /// Shared: `B = Φᵀ diag(√w)`; `weights` is m × 1, `None` means all ones.
    Shared {
        /// Output weights m_j.
        weights: Option<&'a Matrix<D, T>>,
    },
}

/// Storage a [`Device`] keeps matrix elements in. It knows its length, so that a [`Matrix`]
/// can check that its buffer holds exactly its `rows · cols` elements.
pub trait DeviceBuffer: Send + Sync {
    /// Number of elements.
    fn len(&self) -> usize;
    /// Whether the buffer holds no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Send + Sync> DeviceBuffer for Vec<T> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// A dense row-major matrix living on device `D`.
///
/// Invariant: the buffer holds exactly `rows · cols` elements. [`Matrix::from_parts`] checks
/// it, [`Matrix::reshape`] keeps it, and no public method hands out the buffer mutably, so safe
/// code cannot pair a shape with a shorter buffer; the kernels' `// SAFETY:` arguments rest on it.
///
/// ```compile_fail,E0624
/// # use laplace_update::{CpuDevice, Device};
/// let cpu = CpuDevice::new(1).unwrap();
/// let (mut big, mut small) = (cpu.zeros::<f64>(64, 64).unwrap(), cpu.zeros::<f64>(1, 1).unwrap());
/// std::mem::swap(big.buffer_mut(), small.buffer_mut()); // not public: does not compile
/// ```
pub struct Matrix<D: Device, T: Scalar> {
    buf: D::Buffer<T>,
    rows: usize,
    cols: usize,
}

impl<D: Device, T: Scalar> Matrix<D, T> {
    /// Wraps a backend buffer of exactly `rows · cols` elements.
    ///
    /// Errors: `ShapeMismatch` when the buffer's length differs (or `rows · cols` overflows).
    ///
    /// ```
    /// use laplace_update::{CpuDevice, Matrix};
    /// assert!(Matrix::<CpuDevice, f64>::from_parts(vec![0.0; 6], 2, 3).is_ok());
    /// assert!(Matrix::<CpuDevice, f64>::from_parts(vec![0.0; 1], 64, 64).is_err());
    /// ```
    pub fn from_parts(buf: D::Buffer<T>, rows: usize, cols: usize) -> Result<Self> {
        let len = buf.len();
        if rows.checked_mul(cols) != Some(len) {
            return Err(Error::ShapeMismatch {
                argument: "buffer",
                expected: format!("{rows} x {cols} elements"),
                got: format!("{len} elements"),
            });
        }
        Ok(Matrix { buf, rows, cols })
    }
    /// The buffer and the shape: the way to change a buffer from outside the crate, and put it
    /// back with [`Matrix::from_parts`].
    pub fn into_parts(self) -> (D::Buffer<T>, usize, usize) {
        (self.buf, self.rows, self.cols)
    }
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Whether the matrix has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The backend buffer.
    pub fn buffer(&self) -> &D::Buffer<T> {
        &self.buf
    }
    /// The backend buffer, mutably: for the crate's kernels, which write elements but never
    /// replace the buffer or change its length.
    pub(crate) fn buffer_mut(&mut self) -> &mut D::Buffer<T> {
        &mut self.buf
    }
    /// Reinterprets the same row-major data with another shape of equal size; a shape whose
    /// `rows × cols` overflows is refused, not wrapped onto a smaller buffer.
    ///
    /// ```
    /// use laplace_update::{CpuDevice, Device};
    /// let cpu = CpuDevice::new(1)?;
    /// let mut m = cpu.zeros::<f32>(0, 4)?;
    /// assert!(m.reshape(1 << 32, 1 << 32).is_err()); // 2⁶⁴ wraps to 0 elements unchecked
    /// m.reshape(4, 0)?;
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    pub fn reshape(&mut self, rows: usize, cols: usize) -> Result<()> {
        if rows.checked_mul(cols) != Some(self.len()) {
            return Err(Error::shape("reshape", (rows, cols), self.shape()));
        }
        self.rows = rows;
        self.cols = cols;
        Ok(())
    }
    /// The side of a square matrix, or `ShapeMismatch` naming `argument`.
    pub(crate) fn expect_square(&self, argument: &'static str) -> Result<usize> {
        if self.rows != self.cols {
            return Err(Error::shape(argument, (self.rows, self.rows), self.shape()));
        }
        Ok(self.rows)
    }
    pub(crate) fn expect_shape(&self, argument: &'static str, rows: usize, cols: usize) -> Result<()> {
        if self.shape() != (rows, cols) {
            return Err(Error::shape(argument, (rows, cols), self.shape()));
        }
        Ok(())
    }
}

/// A compute backend: buffers plus the kernels of the library.
///
/// All kernels take device-resident [`Matrix`] values; none moves data to the host.
/// Matrices the kernels call symmetric are stored in full (both triangles).
pub trait Device: Clone + Send + Sync + 'static {
    /// Storage for `T` elements on this device.
    type Buffer<T: Scalar>: DeviceBuffer;
    /// The implementations of the fused operations of [`ops`] on this device.
    type Ops: ops::Ggn<Self>
        + ops::Kron<Self>
        + ops::Woodbury<Self>
        + ops::SpdInverse<Self>
        + ops::Links<Self>
        + ops::Softmax<Self>;

    /// Human-readable name, e.g. `"cpu: faer, 2 threads"`.
    fn name(&self) -> String;
    /// Bytes free in the device's own memory, for the [memory budget](crate::memory); `None`
    /// where matrices live in host memory (the CPU) or the device does not say.
    fn free_memory(&self) -> Option<u64> {
        None
    }
    /// Copies row-major host data to a new device matrix.
    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>>;
    /// Moves row-major host data into a new device matrix: [`Device::upload`] of `data`, but a
    /// backend whose matrices live in host memory keeps the vector instead of copying it.
    fn upload_owned<T: Scalar>(&self, data: Vec<T>, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        self.upload(&data, rows, cols)
    }
    /// Uploads `staging` (row-major, rows × cols) so that its allocation can serve the next
    /// chunk: a copy that leaves `staging` as it is, or, where matrices live in host memory, a
    /// move that [`Device::reclaim`] undoes.
    fn upload_staged<T: Scalar>(&self, staging: &mut Vec<T>, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        self.upload(staging, rows, cols)
    }
    /// Ends the use of a matrix from [`Device::upload_staged`], handing its host allocation back
    /// to `staging` where it has one (elsewhere the matrix is freed and `staging` kept).
    fn reclaim<T: Scalar>(&self, m: Matrix<Self, T>, staging: &mut Vec<T>) {
        let _ = (m, staging);
    }
    /// Copies a device matrix back to row-major host memory.
    fn download<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Vec<T>>;
    /// The matrix's values in place, row-major, where the device's buffers are host memory
    /// (the CPU); `None` elsewhere, and callers [`Device::download`].
    fn host_slice<'a, T: Scalar>(&self, m: &'a Matrix<Self, T>) -> Option<&'a [T]> {
        let _ = m;
        None
    }
    /// [`Device::download`] of a matrix no longer needed: a device whose buffers are host
    /// memory hands the buffer over without a copy.
    fn download_owned<T: Scalar>(&self, m: Matrix<Self, T>) -> Result<Vec<T>> {
        self.download(&m)
    }
    /// A new zero-filled matrix.
    fn zeros<T: Scalar>(&self, rows: usize, cols: usize) -> Result<Matrix<Self, T>>;
    /// A device-side copy.
    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>>;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    /// Runs `f`, a sequence of this device's kernels, with whatever per-call setup the device
    /// needs done once for all of them (the CPU backend enters its thread pool once).
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// `C ← β·C + α·op(A)·op(B)`.
    #[allow(clippy::too_many_arguments)]
    fn gemm<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        ta: Op,
        b: &Matrix<Self, T>,
        tb: Op,
        alpha: T,
    ) -> Result<()>;
    /// `C ← β·C + α·Aᵀ diag(w) A` for A (n × d), w (n × 1, `None` = ones), C (d × d) symmetric.
    fn weighted_syrk<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        weights: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()>;
    /// `C ← C + Xᵀ X` for host rows Φ (n × D) and `X = [Φ 1]` (the ones column when
    /// `augment`; else `X = Φ`), C (D_aug × D_aug) symmetric: the Gram of a whole batch. By
    /// default Φ goes up in chunks of `chunk_rows` rows through one staging buffer, each a
    /// [`Device::weighted_syrk`]; a backend whose matrices live in host memory reads Φ in place.
    fn add_host_gram<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        features: HostMatrix<'_, T>,
        augment: bool,
        chunk_rows: usize,
    ) -> Result<()> {
        let da = features.cols() + usize::from(augment);
        c.expect_shape("c", da, da)?;
        let mut staging = Vec::new();
        for start in (0..features.rows()).step_by(chunk_rows.max(1)) {
            let count = chunk_rows.max(1).min(features.rows() - start);
            crate::host::feature_rows_into(&mut staging, &features, start, count, augment);
            let rows = self.upload_staged(&mut staging, count, da)?;
            self.weighted_syrk(c, T::one(), &rows, None, T::one())?;
            self.reclaim(rows, &mut staging);
        }
        Ok(())
    }
    /// In-place lower Cholesky factor `A = L Lᵀ`; the strict upper triangle is zeroed.
    fn cholesky<T: Scalar>(&self, a: &mut Matrix<Self, T>) -> Result<()>;
    /// `B ← L⁻¹ B` (`Op::N`) or `B ← L⁻ᵀ B` (`Op::T`) for lower-triangular L.
    fn triangular_solve<T: Scalar>(&self, l: &Matrix<Self, T>, b: &mut Matrix<Self, T>, op: Op) -> Result<()>;
    /// Logit covariances `Σ_f[n, k, l] = φ_nᵀ Σ_{kl} φ_n` for Σ (K·D) × (K·D) and Φ (n × D);
    /// returns n × K² (row n holds the K × K matrix row-major). K = 1 gives `φ_nᵀ Σ φ_n`.
    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>>;
    /// `Y ← Y + α X`, elementwise, same shapes.
    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()>;
    /// `Y ← Y ∘ X`, the elementwise product, same shapes.
    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()>;
    /// `A ← A + 1 rᵀ`: adds the 1 × cols row r to every row.
    fn add_row<T: Scalar>(&self, a: &mut Matrix<Self, T>, row: &Matrix<Self, T>) -> Result<()>;
    /// `A[i, i] ← A[i, i] + v` for a square A.
    fn add_diagonal<T: Scalar>(&self, a: &mut Matrix<Self, T>, value: T) -> Result<()>;
    /// `max_ij |A_ij|` (0 for an empty matrix); NaN when any entry is NaN, so a finite result
    /// means every entry is finite.
    fn max_abs<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<T>;
    /// Rows `start..start + count` of X (n × D) as a new count × (D + a) matrix, `a = augment`:
    /// `Y[r, c] = X[start + r, c]` for c < D and, when `augment`, `Y[r, D] = 1` (the bias column).
    /// `ShapeMismatch` when the range passes the last row.
    fn feature_rows<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        start: usize,
        count: usize,
        augment: bool,
    ) -> Result<Matrix<Self, T>>;
}

/// The row range of a [`Device::feature_rows`] call, checked against X's rows.
pub(crate) fn check_row_range<D: Device, T: Scalar>(x: &Matrix<D, T>, start: usize, count: usize) -> Result<()> {
    match start.checked_add(count) {
        Some(end) if end <= x.rows() => Ok(()),
        _ => Err(Error::shape("rows", (start.saturating_add(count), x.cols()), x.shape())),
    }
}

/// How a logit-covariance matrix is stored per input.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CovLayout {
    /// n × K²: the K × K matrix, row-major.
    Full,
    /// n × 1: `v I_K`.
    Isotropic,
    /// n × K: the diagonal.
    Diagonal,
}

impl CovLayout {
    /// Every layout, in the order of the kernels' `cov_layout` codes.
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu")), allow(dead_code))]
    const ALL: [CovLayout; 3] = [CovLayout::Full, CovLayout::Isotropic, CovLayout::Diagonal];

    /// The kernels' `cov_layout` code (`kernels/predictive.cu`, `shaders/predictive.wgsl`).
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu")), allow(dead_code))]
    pub(crate) fn code(self) -> u32 {
        match self {
            CovLayout::Full => 0,
            CovLayout::Isotropic => 1,
            CovLayout::Diagonal => 2,
        }
    }

    /// The layout of a kernel code, if it is one.
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda", feature = "cuda-emu")), allow(dead_code))]
    pub(crate) fn of_code(code: u32) -> Option<CovLayout> {
        CovLayout::ALL.get(code as usize).copied()
    }
}

/// The layout of a logit-covariance matrix for n inputs and K classes (K ≥ 2).
pub(crate) fn cov_layout<D: Device, T: Scalar>(mean: &Matrix<D, T>, cov: &Matrix<D, T>) -> Result<CovLayout> {
    let (n, k) = mean.shape();
    match cov.shape() {
        (rows, _) if rows != n => Err(Error::shape("cov", (n, k * k), cov.shape())),
        (_, c) if c == k * k => Ok(CovLayout::Full),
        (_, 1) => Ok(CovLayout::Isotropic),
        (_, c) if c == k => Ok(CovLayout::Diagonal),
        _ => Err(Error::ShapeMismatch {
            argument: "cov",
            expected: format!("{n} x {}, {n} x {k} or {n} x 1", k * k),
            got: format!("{} x {}", cov.rows(), cov.cols()),
        }),
    }
}

/// The shapes of a [`ops::sherman_morrison_sequence`] call, `(m, d, k)`: Φ m × d, Σ d × d,
/// W k × d, targets m × k, bias 1 × k.
pub(crate) fn sherman_morrison_shapes<D: Device, T: Scalar>(
    sigma: &Matrix<D, T>,
    head: &Matrix<D, T>,
    bias: Option<&Matrix<D, T>>,
    phi: &Matrix<D, T>,
    targets: &Matrix<D, T>,
) -> Result<(usize, usize, usize)> {
    let (m, d) = phi.shape();
    let k = head.rows();
    sigma.expect_shape("sigma", d, d)?;
    head.expect_shape("head", k, d)?;
    targets.expect_shape("targets", m, k)?;
    if let Some(b) = bias {
        b.expect_shape("bias", 1, k)?;
    }
    Ok((m, d, k))
}

/// `ShapeMismatch` unless `len` host elements fill a rows × cols matrix ([`Device::upload`]).
pub(crate) fn check_upload(len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::ShapeMismatch {
            argument: "data",
            expected: format!("{rows} x {cols} elements"),
            got: format!("{len} elements"),
        });
    }
    Ok(())
}

/// The shapes of a [`ops::ggn_accumulate`] call, `(n, d, k, k', P)`: Φ n × D, probabilities
/// n × K, basis K × K' (K' = K without one), precision P × P with P = K'·D.
pub(crate) fn ggn_shapes<D: Device, T: Scalar>(
    precision: &Matrix<D, T>,
    phi: &Matrix<D, T>,
    probs: &Matrix<D, T>,
    basis: Option<&Matrix<D, T>>,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, d) = phi.shape();
    let k = probs.cols();
    probs.expect_shape("probs", n, k)?;
    let kr = basis.map_or(k, |r| r.cols());
    if let Some(r) = basis {
        r.expect_shape("basis", k, kr)?;
    }
    let p = kr * d;
    precision.expect_shape("precision", p, p)?;
    Ok((n, d, k, kr, p))
}

/// The shapes of a [`ops::kron_congruence`] call, `(K, K', D)`: X (K'·D)², basis K × K'.
pub(crate) fn congruence_shapes<D: Device, T: Scalar>(
    x: &Matrix<D, T>,
    basis: &Matrix<D, T>,
) -> Result<(usize, usize, usize)> {
    let (k, kr) = basis.shape();
    let n_red = x.expect_square("x")?;
    if kr == 0 || n_red % kr != 0 {
        return Err(Error::shape("x", (kr, kr), x.shape()));
    }
    Ok((k, kr, n_red / kr))
}

/// The shapes of a [`ops::low_rank_update`] call, `(n, r)`: Σ n × n, U n × r, L r × r.
pub(crate) fn low_rank_shapes<D: Device, T: Scalar>(
    sigma: &Matrix<D, T>,
    u: &Matrix<D, T>,
    c_chol: &Matrix<D, T>,
) -> Result<(usize, usize)> {
    let n = sigma.expect_square("sigma")?;
    let r = u.cols();
    u.expect_shape("u", n, r)?;
    c_chol.expect_shape("c_chol", r, r)?;
    Ok((n, r))
}

/// The shapes of a [`Device::predictive_covariance`] call, `(n, D, K)`: Φ n × D, Σ (K·D)².
pub(crate) fn predictive_shapes<D: Device, T: Scalar>(
    sigma: &Matrix<D, T>,
    phi: &Matrix<D, T>,
) -> Result<(usize, usize, usize)> {
    let (n, d) = phi.shape();
    let p = sigma.expect_square("sigma")?;
    if d == 0 || p % d != 0 {
        return Err(Error::shape("sigma", (d, d), sigma.shape()));
    }
    Ok((n, d, p / d))
}
