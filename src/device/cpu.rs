//! The CPU backend, built on faer: the reference every other backend is tested against.
//!
//! Heavy products go through faer's blocked GEMM. Symmetric results are computed on their lower
//! triangle only and mirrored, and operands of `XᵀX`-shaped products are laid out with the
//! contracted dimension contiguous, which is the layout faer's micro-kernels run fastest on.

use std::sync::Arc;

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{Device, Matrix, Op, check_upload, predictive_shapes};
use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::scalar::Scalar;

/// Rows of Φ handled per pass of the chunked kernels; bounds the scratch of the GGN
/// accumulation (`ops::ggn`) and `predictive_covariance` to about this many elements.
pub(crate) const SCRATCH_ELEMENTS: usize = 1 << 26;
/// Side of the square tiles used when mirroring or transposing triangles.
const MIRROR_TILE: usize = 64;
/// Multiply-adds below which a dense kernel runs on the calling thread: a round trip through
/// the pool costs microseconds, the time of about 2¹⁷ multiply-adds on one core, and the small
/// products of an update's inner iterations (K × D_aug heads, m × K logits) are far below it.
const SEQUENTIAL_WORK: usize = 1 << 17;
/// Elements below which an elementwise pass runs on the calling thread.
const SEQUENTIAL_ELEMENTS: usize = 1 << 15;

/// The fused operations of [`CpuDevice`]: faer where it has a faster fused
/// routine, the compositions elsewhere (see [`ops`](super::ops)).
#[derive(Debug, Clone, Copy)]
pub struct Faer;

/// The faer CPU backend, with its own thread pool.
///
/// ```
/// use laplace_update::{CpuDevice, Device};
/// let cpu = CpuDevice::new(2)?;
/// let a = cpu.upload(&[1.0f64, 2.0, 3.0, 4.0], 2, 2)?;
/// assert_eq!(cpu.download(&a)?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
#[derive(Clone)]
pub struct CpuDevice {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
}

impl std::fmt::Debug for CpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuDevice").field("threads", &self.threads).finish()
    }
}

impl CpuDevice {
    /// A CPU device running on `threads` threads; `0` means one per available core.
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("laplace-cpu-{i}"))
            .build()
            .map_err(|e| Error::BackendUnavailable {
                backend: "cpu",
                reason: e.to_string(),
            })?;
        Ok(CpuDevice {
            pool: Arc::new(pool),
            threads,
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub(crate) fn par(&self) -> Par {
        if self.threads == 1 {
            Par::Seq
        } else {
            Par::rayon(self.threads)
        }
    }

    pub(crate) fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// [`CpuDevice::run`] for an operation that calls faer's dense kernels, settling the
    /// vector state of the pool afterwards (see [`settle_vector_state`]).
    /// Runs a dense kernel of `work` multiply-adds: on the calling thread, sequentially, below
    /// [`SEQUENTIAL_WORK`] (a pool round trip costs more than the kernel there), else in the
    /// pool with its parallelism.
    pub(crate) fn run_sized<R: Send>(&self, work: usize, f: impl FnOnce(Par) -> R + Send) -> R {
        if self.threads == 1 || work < SEQUENTIAL_WORK {
            let out = f(Par::Seq);
            settle_vector_state();
            out
        } else {
            let par = self.par();
            self.run_dense(|| f(par))
        }
    }

    /// Runs an elementwise pass over `len` elements, `f(parallel)`: sequentially on the calling
    /// thread below [`SEQUENTIAL_ELEMENTS`], else in the pool with `parallel` set.
    pub(crate) fn run_elementwise(&self, len: usize, f: impl FnOnce(bool) + Send) {
        if self.threads == 1 || len < SEQUENTIAL_ELEMENTS {
            f(false)
        } else {
            self.run(|| f(true))
        }
    }

    pub(crate) fn run_dense<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(|| {
            let out = f();
            settle_vector_state();
            out
        })
    }

    /// `C += α·Aᵀ B` for the d × d row-major `c`, where `A` and `B` are row-major n × d with
    /// `Aᵀ B` symmetric (a Gram: `B = A` or `B = diag(w) A`). A contraction long against d is
    /// split over its rows, one sequential d × d sum per thread: one product with a d × d output
    /// keeps the threads in step at every panel. Contractions over more than
    /// [`FULL_GEMM_MAX_RANK`] rows run the AVX2 Gram kernel
    /// ([`cpu_gram`](super::cpu_gram)) where the CPU has it. Runs inside the pool.
    fn gram_add<T: Scalar>(&self, c: &mut [T], a: &[T], b: &[T], n: usize, d: usize, alpha: T) {
        let threads = self.threads;
        let tall = threads > 1
            && n >= TALL_RATIO * d * threads
            && d * d * threads * std::mem::size_of::<T>() <= TALL_SCRATCH_BYTES;
        if !tall {
            // Short contractions keep faer's plain GEMM (see FULL_GEMM_MAX_RANK).
            if n > FULL_GEMM_MAX_RANK
                && kernel_gram(c, &a[..n * d], &b[..n * d], d, alpha, threads > 1, &mut Vec::new())
            {
                fill_triangle(c, d, Fill::LowerToUpper);
                return;
            }
            let (lhs, rhs) = (row_major(a, n, d).transpose(), row_major(b, n, d).transpose());
            if symmetric_add(MatMut::from_row_major_slice_mut(c, d, d), lhs, rhs, alpha, self.par()) {
                fill_triangle(c, d, Fill::LowerToUpper);
            }
            return;
        }
        let rows = n.div_ceil(threads);
        let sums: Vec<Vec<T>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let (lo, hi) = ((t * rows).min(n), ((t + 1) * rows).min(n));
                let mut sum = zeroed(d * d);
                let (a, b) = (&a[lo * d..hi * d], &b[lo * d..hi * d]);
                if !kernel_gram(&mut sum, a, b, d, alpha, false, &mut Vec::new()) {
                    let (l, r) = (
                        row_major(a, hi - lo, d).transpose(),
                        row_major(b, hi - lo, d).transpose(),
                    );
                    if !symmetric_add(MatMut::from_row_major_slice_mut(&mut sum, d, d), l, r, alpha, Par::Seq) {
                        return sum;
                    }
                }
                fill_triangle(&mut sum, d, Fill::LowerToUpper);
                sum
            })
            .collect();
        c.par_chunks_mut(d.max(1)).enumerate().for_each(|(i, row)| {
            for sum in &sums {
                row.iter_mut().zip(&sum[i * d..(i + 1) * d]).for_each(|(o, v)| *o += *v);
            }
        });
    }
}

/// The row-major n × d `data` as a faer view.
pub(crate) fn row_major<T: Scalar>(data: &[T], n: usize, d: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(&data[..n * d], n, d)
}

/// Lower triangle of `c += α Aᵀ B` by the AVX2 Gram kernel, for row-major A and B (`a.len() / d`
/// rows), on this thread or (`parallel`) the current pool, packing into the reused `packing`;
/// `false`, with `c` untouched, where the CPU lacks the kernel.
// The scratch is a Vec, not a slice: the kernel grows it.
#[allow(clippy::ptr_arg)]
pub(crate) fn kernel_gram<T: Scalar>(
    c: &mut [T],
    a: &[T],
    b: &[T],
    d: usize,
    alpha: T,
    parallel: bool,
    packing: &mut Vec<T>,
) -> bool {
    use super::cpu_gram::{available, gram_lower_f32, gram_lower_f64};
    use std::any::Any;
    if !available() || d == 0 {
        return false;
    }
    let n = a.len() / d;
    // T is f32 or f64: the scratch names which, and the slices are cast to it. Pointer equality
    // of A and B lets the kernel pack once; the casts keep it.
    let packing: &mut dyn Any = packing;
    if let Some(packing) = packing.downcast_mut::<Vec<f32>>() {
        let (c, a, b) = (
            bytemuck::cast_slice_mut(c),
            bytemuck::cast_slice(a),
            bytemuck::cast_slice(b),
        );
        gram_lower_f32(c, a, b, n, d, alpha.as_f64() as f32, parallel, packing);
    } else if let Some(packing) = packing.downcast_mut::<Vec<f64>>() {
        let (c, a, b) = (
            bytemuck::cast_slice_mut(c),
            bytemuck::cast_slice(a),
            bytemuck::cast_slice(b),
        );
        gram_lower_f64(c, a, b, n, d, alpha.as_f64(), parallel, packing);
    } else {
        return false;
    }
    true
}

pub(crate) type CpuMatrix<T> = Matrix<CpuDevice, T>;

pub(crate) fn view<T: Scalar>(m: &CpuMatrix<T>) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(m.buffer().as_slice(), m.rows(), m.cols())
}

pub(crate) fn view_mut<T: Scalar>(m: &mut CpuMatrix<T>) -> MatMut<'_, T> {
    let (rows, cols) = m.shape();
    MatMut::from_row_major_slice_mut(m.buffer_mut().as_mut_slice(), rows, cols)
}

/// Clears the upper halves of the vector registers on this thread and on every thread of the
/// current rayon pool.
///
/// faer's AVX-512 kernels can return with them dirty; code compiled for baseline x86-64 (SSE:
/// this crate's own loops, libm's `exp`) then pays a state-transition penalty on every
/// instruction, measured at 40× on a softmax run after one parallel GEMM. Call it after dense
/// kernels and before scalar work; elsewhere it does nothing.
pub(crate) fn settle_vector_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        fn zero_upper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            let clear = || {
                // SAFETY: AVX was detected on this CPU at run time, which is all `zero_upper`
                // requires; it touches no memory.
                unsafe { zero_upper() }
            };
            clear();
            if rayon::current_thread_index().is_some() {
                rayon::broadcast(|_| clear());
            }
        }
    }
}

fn scale_in_place<T: Scalar>(buf: &mut [T], beta: T) {
    if beta == T::zero() {
        buf.par_iter_mut().for_each(|x| *x = T::zero());
    } else if beta != T::one() {
        buf.par_iter_mut().for_each(|x| *x *= beta);
    }
}

/// How [`fill_triangle`] moves data between the triangles of a square matrix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Copy the lower triangle onto the upper one.
    LowerToUpper,
    /// Copy the upper triangle onto the lower one.
    UpperToLower,
    /// Copy the upper triangle onto the lower one, then zero the strict upper triangle.
    MoveUpperToLower,
}

/// Mirrors the row-major n × n `buf` across its diagonal as `fill` says, tile by tile.
pub(crate) fn fill_triangle<T: Scalar>(buf: &mut [T], n: usize, fill: Fill) {
    let ptr = SyncPtr(buf.as_mut_ptr());
    let tiles = n.div_ceil(MIRROR_TILE);
    (0..tiles).into_par_iter().for_each(|bi| {
        let ptr = &ptr;
        for bj in bi..tiles {
            for i in bi * MIRROR_TILE..((bi + 1) * MIRROR_TILE).min(n) {
                for j in (bj * MIRROR_TILE).max(i + 1)..((bj + 1) * MIRROR_TILE).min(n) {
                    let (upper, lower) = (i * n + j, j * n + i);
                    // SAFETY: i < j < n, so both indices are in bounds, and the pair
                    // (upper, lower) belongs to the task of tile row `bi` alone (i lies in it).
                    unsafe {
                        match fill {
                            Fill::LowerToUpper => *ptr.0.add(upper) = *ptr.0.add(lower),
                            Fill::UpperToLower => *ptr.0.add(lower) = *ptr.0.add(upper),
                            Fill::MoveUpperToLower => {
                                *ptr.0.add(lower) = *ptr.0.add(upper);
                                *ptr.0.add(upper) = T::zero();
                            }
                        }
                    }
                }
            }
        }
    });
}

pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: the pointer is only dereferenced at disjoint indices by the tasks documented at each use.
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// A zero-filled vector whose pages are written now, in parallel. `vec![0; n]` maps zero pages
/// lazily, and the faults then land inside GEMM writes, where they cost far more (measured:
/// +0.4 s on a 5120 × 5120 f32 accumulation) than this upfront fill.
pub(crate) fn zeroed<T: Scalar>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut().par_chunks_mut(1 << 16).for_each(|chunk| {
        chunk.iter_mut().for_each(|x| {
            x.write(T::zero());
        })
    });
    // SAFETY: the loop above initialised all `n` elements of the spare capacity.
    unsafe { v.set_len(n) };
    v
}

/// An empty vector with room for `rows × cols` elements, or `OutOfMemory` when that much
/// memory cannot be had (instead of aborting the process).
pub(crate) fn reserve<T: Scalar>(rows: usize, cols: usize) -> Result<Vec<T>> {
    let needed = (rows as u128 * cols as u128 * std::mem::size_of::<T>() as u128).min(u64::MAX as u128) as u64;
    let fail = |why: String| {
        let available = crate::memory::available();
        Error::OutOfMemory {
            needed,
            available: available.map_or(0, |a| a.bytes),
            bound: available.map_or("the allocator", |a| a.source),
            what: format!("a {rows} x {cols} matrix"),
            advice: format!("; the allocator refused it: {why}"),
        }
    };
    let n = rows
        .checked_mul(cols)
        .ok_or_else(|| fail("its size overflows".into()))?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|e| fail(e.to_string()))?;
    Ok(v)
}

/// Scratch memory for faer with every page touched now, for the same reason as [`zeroed`].
pub(crate) fn scratch(req: faer::dyn_stack::StackReq) -> MemBuffer {
    let mut mem = MemBuffer::new(req);
    mem.par_chunks_mut(4096).for_each(|page| {
        page[0] = std::mem::MaybeUninit::new(0);
    });
    mem
}

/// `Xᵀ` of the row-major rows × cols slice `x`, row-major (cols × rows).
pub(crate) fn transposed<T: Scalar>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = zeroed(rows * cols);
    out.par_chunks_mut(rows.max(1)).enumerate().for_each(|(c, out_row)| {
        for (r, o) in out_row.iter_mut().enumerate() {
            *o = x[r * cols + c];
        }
    });
    out
}

/// `Σ_n x_n` of the row-major rows of `data` (d columns), in f64, over blocks of rows in parallel.
fn column_sums<T: Scalar>(data: &[T], d: usize) -> Vec<f64> {
    data.par_chunks(d.max(1) * 4096)
        .map(|block| {
            let mut sums = vec![0.0; d];
            for row in block.chunks_exact(d.max(1)) {
                sums.iter_mut().zip(row).for_each(|(s, x)| *s += x.as_f64());
            }
            sums
        })
        .reduce(
            || vec![0.0; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// Rank up to which a symmetric update computes both triangles with one plain GEMM: below it,
/// the multiply-adds saved by symmetry cost less than mirroring the triangle (measured on
/// D = 1536 rank-100 updates: the full product wins at this size).
const FULL_GEMM_MAX_RANK: usize = 128;

/// A weighted SYRK whose contraction is this many times the output side per thread is split
/// over the rows (one sequential d × d sum per thread) …
const TALL_RATIO: usize = 8;
/// … when the per-thread sums take at most this much memory.
const TALL_SCRATCH_BYTES: usize = 64 << 20;

/// Adds `alpha · L Rᵀ` to the square `dst`, where `L` and `R` are n × r with rows contiguous along
/// the contracted dimension r, and `L Rᵀ` is symmetric. Small r writes both triangles; large r
/// writes the lower triangle only and returns `true`, and the caller mirrors it with
/// [`fill_triangle`] once its accumulation is done.
#[must_use]
pub(crate) fn symmetric_add<T: Scalar>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    alpha: T,
    par: Par,
) -> bool {
    if lhs.ncols() <= FULL_GEMM_MAX_RANK {
        matmul(dst, Accum::Add, lhs, rhs.transpose(), alpha, par);
        return false;
    }
    triangular::matmul(
        dst,
        BlockStructure::TriangularLower,
        Accum::Add,
        lhs,
        BlockStructure::Rectangular,
        rhs.transpose(),
        BlockStructure::Rectangular,
        alpha,
        par,
    );
    true
}

impl Device for CpuDevice {
    type Ops = Faer;
    type Buffer<T: Scalar> = Vec<T>;

    fn name(&self) -> String {
        format!("cpu: faer, {} threads", self.threads)
    }

    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        self.upload_owned(data.to_vec(), rows, cols)
    }

    fn upload_owned<T: Scalar>(&self, data: Vec<T>, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        check_upload(data.len(), rows, cols)?;
        Matrix::from_parts(data, rows, cols)
    }

    fn upload_staged<T: Scalar>(&self, staging: &mut Vec<T>, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        self.upload_owned(std::mem::take(staging), rows, cols)
    }

    fn reclaim<T: Scalar>(&self, m: Matrix<Self, T>, staging: &mut Vec<T>) {
        *staging = m.into_parts().0;
    }

    fn download<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Vec<T>> {
        Ok(m.buffer()[..m.len()].to_vec())
    }

    fn host_slice<'a, T: Scalar>(&self, m: &'a Matrix<Self, T>) -> Option<&'a [T]> {
        Some(&m.buffer()[..m.len()])
    }

    /// The buffer itself, no copy.
    fn download_owned<T: Scalar>(&self, m: Matrix<Self, T>) -> Result<Vec<T>> {
        let (mut buffer, rows, cols) = m.into_parts();
        buffer.truncate(rows * cols);
        Ok(buffer)
    }

    fn zeros<T: Scalar>(&self, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        reserve::<T>(rows, cols)?;
        Matrix::from_parts(zeroed(rows * cols), rows, cols)
    }

    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let mut out = reserve::<T>(m.rows(), m.cols())?;
        out.extend_from_slice(&m.buffer()[..m.len()]);
        Matrix::from_parts(out, m.rows(), m.cols())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.run(f)
    }

    fn gemm<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        ta: Op,
        b: &Matrix<Self, T>,
        tb: Op,
        alpha: T,
    ) -> Result<()> {
        let av = if ta == Op::N { view(a) } else { view(a).transpose() };
        let bv = if tb == Op::N { view(b) } else { view(b).transpose() };
        if av.ncols() != bv.nrows() {
            return Err(Error::shape("b", (av.ncols(), bv.ncols()), (bv.nrows(), bv.ncols())));
        }
        c.expect_shape("c", av.nrows(), bv.ncols())?;
        let work = av.nrows() * av.ncols() * bv.ncols();
        self.run_sized(work, |par| {
            let accum = if beta == T::zero() {
                Accum::Replace
            } else {
                scale_in_place(c.buffer_mut(), beta);
                Accum::Add
            };
            matmul(view_mut(c), accum, av, bv, alpha, par);
        });
        Ok(())
    }

    fn weighted_syrk<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        weights: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        let (n, d) = a.shape();
        c.expect_shape("c", d, d)?;
        if let Some(w) = weights {
            w.expect_shape("weights", n, 1)?;
        }
        self.run_dense(|| {
            scale_in_place(c.buffer_mut(), beta);
            // Aᵀ and (diag(w) A)ᵀ as strided views of the row-major data: no transposing copy.
            let wa: Option<Vec<T>> = weights.map(|w| {
                let mut out = a.buffer()[..n * d].to_vec();
                out.par_chunks_mut(d.max(1))
                    .zip(w.buffer().par_iter())
                    .for_each(|(row, &s)| row.iter_mut().for_each(|x| *x *= s));
                out
            });
            let rows = &a.buffer()[..n * d];
            self.gram_add(c.buffer_mut(), rows, wa.as_deref().unwrap_or(rows), n, d, alpha);
        });
        Ok(())
    }

    /// In place on the caller's rows: Φᵀ is a column-major view of the row-major Φ, so no row
    /// is copied; the ones column's entries are column sums (in f64) and n.
    fn add_host_gram<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        features: HostMatrix<'_, T>,
        augment: bool,
        _chunk_rows: usize,
    ) -> Result<()> {
        let (n, d) = (features.rows(), features.cols());
        let da = d + usize::from(augment);
        c.expect_shape("c", da, da)?;
        self.run_dense(|| {
            let rows = &features.data()[..n * d];
            if !augment {
                self.gram_add(c.buffer_mut(), rows, rows, n, d, T::one());
                return;
            }
            let mut gram = zeroed(d * d);
            self.gram_add(&mut gram, rows, rows, n, d, T::one());
            let sums = column_sums(features.data(), d);
            let out = c.buffer_mut();
            out.par_chunks_mut(da).enumerate().for_each(|(i, row)| match i < d {
                true => {
                    row[..d]
                        .iter_mut()
                        .zip(&gram[i * d..(i + 1) * d])
                        .for_each(|(o, &g)| *o += g);
                    row[d] += T::from_f64(sums[i]);
                }
                false => {
                    row[..d].iter_mut().zip(&sums).for_each(|(o, &s)| *o += T::from_f64(s));
                    row[d] += T::from_f64(n as f64);
                }
            });
        });
        Ok(())
    }

    fn cholesky<T: Scalar>(&self, a: &mut Matrix<Self, T>) -> Result<()> {
        let n = a.expect_square("a")?;
        self.run_sized(n * n * n / 3, |par| {
            // A is symmetric, so its row-major buffer is also A in column-major order; faer
            // factors that (fast layout) and the lower factor lands as Lᵀ in row-major terms.
            cholesky_col_major(a.buffer_mut(), n, par)?;
            fill_triangle(a.buffer_mut(), n, Fill::MoveUpperToLower);
            Ok(())
        })
    }

    fn triangular_solve<T: Scalar>(&self, l: &Matrix<Self, T>, b: &mut Matrix<Self, T>, op: Op) -> Result<()> {
        let n = l.expect_square("l")?;
        if b.rows() != n {
            return Err(Error::shape("b", (n, b.cols()), b.shape()));
        }
        self.run_sized(n * n * b.cols() / 2, |par| match op {
            Op::N => faer::linalg::triangular_solve::solve_lower_triangular_in_place(view(l), view_mut(b), par),
            Op::T => {
                faer::linalg::triangular_solve::solve_upper_triangular_in_place(view(l).transpose(), view_mut(b), par)
            }
        });
        Ok(())
    }

    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        let (n, d, k) = predictive_shapes(sigma, phi)?;
        let p = k * d;
        let par = self.par();
        self.run_dense(|| {
            let mut out = zeroed(n * k * k);
            let chunk = (SCRATCH_ELEMENTS / p.max(1)).clamp(16, 4096).min(n.max(1));
            let mut t = zeroed(chunk * p);
            for start in (0..n).step_by(chunk) {
                let c = chunk.min(n - start);
                let phi_c = MatRef::from_row_major_slice(&phi.buffer()[start * d..(start + c) * d], c, d);
                for a in 0..k {
                    // T = Φ_c Σ[aD.., aD..] covers blocks (a, b ≥ a).
                    let width = (k - a) * d;
                    let block = view(sigma).submatrix(a * d, a * d, d, width);
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut t[..c * width], c, width),
                        Accum::Replace,
                        phi_c,
                        block,
                        T::one(),
                        par,
                    );
                    let t_ref = &t[..c * width];
                    out[start * k * k..(start + c) * k * k]
                        .par_chunks_mut(k * k)
                        .enumerate()
                        .for_each(|(i, o)| {
                            let x = &phi.buffer()[(start + i) * d..(start + i + 1) * d];
                            for b in a..k {
                                let row = &t_ref[i * width + (b - a) * d..i * width + (b - a + 1) * d];
                                let v: T = row.iter().zip(x).map(|(r, xv)| *r * *xv).sum();
                                o[a * k + b] = v;
                                o[b * k + a] = v;
                            }
                        });
                }
            }
            Matrix::from_parts(out, n, k * k)
        })
    }

    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()> {
        x.expect_shape("x", y.rows(), y.cols())?;
        let (len, ys, xs) = (y.len(), y.buffer_mut(), x.buffer());
        self.run_elementwise(len, |parallel| {
            if parallel {
                ys.par_iter_mut().zip(xs.par_iter()).for_each(|(a, b)| *a += alpha * *b)
            } else {
                ys.iter_mut().zip(xs).for_each(|(a, b)| *a += alpha * *b)
            }
        });
        Ok(())
    }

    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()> {
        x.expect_shape("x", y.rows(), y.cols())?;
        let (len, ys, xs) = (y.len(), y.buffer_mut(), x.buffer());
        self.run_elementwise(len, |parallel| {
            if parallel {
                ys.par_iter_mut().zip(xs.par_iter()).for_each(|(a, b)| *a *= *b)
            } else {
                ys.iter_mut().zip(xs).for_each(|(a, b)| *a *= *b)
            }
        });
        Ok(())
    }

    fn add_row<T: Scalar>(&self, a: &mut Matrix<Self, T>, row: &Matrix<Self, T>) -> Result<()> {
        let cols = a.cols();
        row.expect_shape("row", 1, cols)?;
        if cols == 0 {
            return Ok(());
        }
        for r in a.buffer_mut().chunks_mut(cols) {
            r.iter_mut().zip(row.buffer()).for_each(|(x, b)| *x += *b);
        }
        Ok(())
    }

    fn add_diagonal<T: Scalar>(&self, a: &mut Matrix<Self, T>, value: T) -> Result<()> {
        let n = a.expect_square("a")?;
        let buf = a.buffer_mut();
        (0..n).for_each(|i| buf[i * n + i] += value);
        Ok(())
    }

    fn max_abs<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<T> {
        // NaN wins, as on the GPU backends (`f64::max` would drop it).
        let max = |x: T, y: T| if x.is_nan() || x > y { x } else { y };
        Ok(self.run(|| a.buffer().par_iter().map(|x| x.abs()).reduce(T::zero, max)))
    }

    fn feature_rows<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        start: usize,
        count: usize,
        augment: bool,
    ) -> Result<Matrix<Self, T>> {
        super::check_row_range(x, start, count)?;
        let d = x.cols();
        let rows = &x.buffer()[start * d..(start + count) * d];
        let mut out = Vec::with_capacity(count * (d + usize::from(augment)));
        match augment {
            false => out.extend_from_slice(rows),
            true => rows.chunks(d.max(1)).for_each(|r| {
                out.extend_from_slice(r);
                out.push(T::one());
            }),
        }
        Matrix::from_parts(out, count, d + usize::from(augment))
    }
}

/// In-place lower Cholesky factor of the column-major n × n `buf` (strict upper part untouched).
pub(crate) fn cholesky_col_major<T: Scalar>(buf: &mut [T], n: usize, par: Par) -> Result<()> {
    use faer::linalg::cholesky::llt::factor::{LltError, cholesky_in_place, cholesky_in_place_scratch};
    let mut mem = scratch(cholesky_in_place_scratch::<T>(n, par, Default::default()));
    let a = MatMut::from_column_major_slice_mut(&mut buf[..n * n], n, n);
    cholesky_in_place(a, Default::default(), par, MemStack::new(&mut mem), Default::default())
        .map(|_| ())
        .map_err(|LltError::NonPositivePivot { index }| Error::NotPositiveDefinite { index })
}
