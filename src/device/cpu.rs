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

use super::{
    Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign, check_upload, congruence_shapes, ggn_shapes,
    low_rank_shapes, predictive_shapes, sherman_morrison_shapes,
};
use crate::error::{Error, Result};
use crate::host::HostMatrix;
use crate::numerics::{dot, softmax_in_place};
use crate::scalar::Scalar;

/// Rows of Φ handled per pass of the chunked kernels; bounds the scratch of `ggn_accumulate`
/// and `predictive_covariance` to about this many elements.
const SCRATCH_ELEMENTS: usize = 1 << 26;
/// Side of the square tiles used when mirroring or transposing triangles.
const MIRROR_TILE: usize = 64;
/// Multiply-adds below which a dense kernel runs on the calling thread: a round trip through
/// the pool costs microseconds, the time of about 2¹⁷ multiply-adds on one core, and the small
/// products of an update's inner iterations (K × D_aug heads, m × K logits) are far below it.
const SEQUENTIAL_WORK: usize = 1 << 17;
/// Elements below which an elementwise pass runs on the calling thread.
const SEQUENTIAL_ELEMENTS: usize = 1 << 15;

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

    fn par(&self) -> Par {
        if self.threads == 1 {
            Par::Seq
        } else {
            Par::rayon(self.threads)
        }
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// [`CpuDevice::run`] for an operation that calls faer's dense kernels, settling the
    /// vector state of the pool afterwards (see [`settle_vector_state`]).
    /// Runs a dense kernel of `work` multiply-adds: on the calling thread, sequentially, below
    /// [`SEQUENTIAL_WORK`] (a pool round trip costs more than the kernel there), else in the
    /// pool with its parallelism.
    fn run_sized<R: Send>(&self, work: usize, f: impl FnOnce(Par) -> R + Send) -> R {
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
    fn run_elementwise(&self, len: usize, f: impl FnOnce(bool) + Send) {
        if self.threads == 1 || len < SEQUENTIAL_ELEMENTS {
            f(false)
        } else {
            self.run(|| f(true))
        }
    }

    fn run_dense<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
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
fn row_major<T: Scalar>(data: &[T], n: usize, d: usize) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(&data[..n * d], n, d)
}

/// Lower triangle of `c += α Aᵀ B` by the AVX2 Gram kernel, for row-major A and B (`a.len() / d`
/// rows), on this thread or (`parallel`) the current pool, packing into the reused `packing`;
/// `false`, with `c` untouched, where the CPU lacks the kernel.
// The scratch is a Vec, not a slice: the kernel grows it.
#[allow(clippy::ptr_arg)]
fn kernel_gram<T: Scalar>(
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

type CpuMatrix<T> = Matrix<CpuDevice, T>;

fn view<T: Scalar>(m: &CpuMatrix<T>) -> MatRef<'_, T> {
    MatRef::from_row_major_slice(m.buffer().as_slice(), m.rows(), m.cols())
}

fn view_mut<T: Scalar>(m: &mut CpuMatrix<T>) -> MatMut<'_, T> {
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
enum Fill {
    /// Copy the lower triangle onto the upper one.
    LowerToUpper,
    /// Copy the upper triangle onto the lower one.
    UpperToLower,
    /// Copy the upper triangle onto the lower one, then zero the strict upper triangle.
    MoveUpperToLower,
}

/// Mirrors the row-major n × n `buf` across its diagonal as `fill` says, tile by tile.
fn fill_triangle<T: Scalar>(buf: &mut [T], n: usize, fill: Fill) {
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

struct SyncPtr<T>(*mut T);
// SAFETY: the pointer is only dereferenced at disjoint indices by the tasks documented at each use.
unsafe impl<T: Send> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SyncPtr<T> {}

/// Feature widths from which the CPU's softmax GGN is summed class pair by class pair
/// ([`ggn_by_class_pairs`]); narrower features keep one SYRK over the `K'·D`-wide rows
/// `p̃_n ⊗ φ_n`, whose per-pair blocks would be too small to run well.
const PAIR_GGN_MIN_FEATURES: usize = 32;
/// Rows of Φ per pass of [`ggn_by_class_pairs`]: the pass's rows and each thread's weighted
/// copy of them (2 MB at D = 512 in f32) stay in cache across the pairs.
const PAIR_GGN_ROWS: usize = 1024;

/// The sizes of one [`ggn_by_class_pairs`] call: n rows of Φ (D wide), K classes, K' reduced ones.
#[derive(Clone, Copy)]
struct PairGgnShape {
    n: usize,
    d: usize,
    k: usize,
    kr: usize,
}

/// `Π += α Σ_n (Rᵀ Λ_n R) ⊗ φ_nφ_nᵀ` with `Λ_n = diag(p_n) − p_n p_nᵀ` (R = I without a basis),
/// for the row-major `(K'·D)²` Π, one D × D block per class pair a ≥ b:
///
/// `B_ab = Φᵀ diag(w_ab) Φ`, `w_ab[n] = Σ_c R[c,a] R[c,b] p_nc − p̃_na p̃_nb`, `p̃_n = Rᵀ p_n`.
///
/// Every `B_ab` is symmetric, so only its lower triangle is summed (the Gram kernel where the CPU
/// has it, faer's triangular product otherwise), then mirrored and added to blocks (a, b) and
/// (b, a): `K'(K'+1)/2 · N·D²` FLOP, about half of one SYRK over the rows `p̃_n ⊗ φ_n`, which sums
/// both triangles of every off-diagonal block. Scratch: the `K'(K'+1)/2` blocks (about half of
/// Π) and one pass of rows per thread. Runs inside the pool.
fn ggn_by_class_pairs<T: Scalar>(
    precision: &mut [T],
    phi: &[T],
    probs: &[T],
    basis: Option<&[T]>,
    shape: PairGgnShape,
    alpha: T,
    threads: usize,
) {
    let PairGgnShape { n, d, k, kr } = shape;
    let p = kr * d;
    let pairs: Vec<(usize, usize)> = (0..kr).flat_map(|a| (0..=a).map(move |b| (a, b))).collect();
    // R[c,a] R[c,b] per pair (K values each), for the diagonal part Rᵀ diag(p) R.
    let products: Option<Vec<T>> = basis.map(|r| {
        pairs
            .iter()
            .flat_map(|&(a, b)| (0..k).map(move |c| r[c * kr + a] * r[c * kr + b]))
            .collect()
    });
    let mut blocks = zeroed::<T>(pairs.len() * d * d);
    // Few pairs: one pair at a time over the whole pool. Many: each thread its share of the
    // pairs (they cost the same), with its own scratch kept across passes.
    let across_pairs = pairs.len() >= 4 * threads;
    let share = pairs.len().div_ceil(threads.max(1));
    let mut scratches: Vec<(Vec<T>, Vec<T>)> = (0..threads.max(1)).map(|_| Default::default()).collect();
    let mut reduced = vec![T::zero(); PAIR_GGN_ROWS.min(n) * kr];
    for start in (0..n).step_by(PAIR_GGN_ROWS) {
        let rows = PAIR_GGN_ROWS.min(n - start);
        let (phi_pass, probs_pass) = (
            &phi[start * d..(start + rows) * d],
            &probs[start * k..(start + rows) * k],
        );
        let reduced = &mut reduced[..rows * kr];
        match basis {
            None => reduced.copy_from_slice(probs_pass),
            Some(r) => {
                for (out, pn) in reduced.chunks_exact_mut(kr).zip(probs_pass.chunks_exact(k)) {
                    for (a, o) in out.iter_mut().enumerate() {
                        *o = (0..k).fold(T::zero(), |s, c| s + r[c * kr + a] * pn[c]);
                    }
                }
            }
        }
        let reduced = &*reduced;
        let add_pair = |index: usize, block: &mut [T], (weighted, packing): &mut (Vec<T>, Vec<T>), parallel: bool| {
            let (a, b) = pairs[index];
            weighted.resize(rows * d, T::zero());
            for (i, (out, x)) in weighted.chunks_exact_mut(d).zip(phi_pass.chunks_exact(d)).enumerate() {
                let pn = &probs_pass[i * k..(i + 1) * k];
                let diagonal = match &products {
                    Some(prod) => dot(&prod[index * k..(index + 1) * k], pn),
                    None if a == b => pn[a],
                    None => T::zero(),
                };
                let w = diagonal - reduced[i * kr + a] * reduced[i * kr + b];
                out.iter_mut().zip(x).for_each(|(o, v)| *o = w * *v);
            }
            if !kernel_gram(block, phi_pass, weighted, d, T::one(), parallel, packing) {
                let (lhs, rhs) = (
                    row_major(phi_pass, rows, d).transpose(),
                    row_major(weighted, rows, d).transpose(),
                );
                let par = if parallel { Par::rayon(threads) } else { Par::Seq };
                let _lower_only = symmetric_add(MatMut::from_row_major_slice_mut(block, d, d), lhs, rhs, T::one(), par);
            }
        };
        if across_pairs {
            blocks
                .par_chunks_mut(share * d * d)
                .zip(scratches.par_iter_mut())
                .enumerate()
                .for_each(|(t, (group, scratch))| {
                    for (j, block) in group.chunks_mut(d * d).enumerate() {
                        add_pair(t * share + j, block, scratch, false);
                    }
                });
        } else {
            for (index, block) in blocks.chunks_mut(d * d).enumerate() {
                add_pair(index, block, &mut scratches[0], threads > 1);
            }
        }
    }
    blocks
        .par_chunks_mut(d * d)
        .for_each(|block| fill_triangle(block, d, Fill::LowerToUpper));
    // Row x of block row a: block b of it is row x of B_{max(a,b), min(a,b)}.
    precision[..p * p].par_chunks_mut(p).enumerate().for_each(|(row, out)| {
        let (a, x) = (row / d, row % d);
        for b in 0..kr {
            let (hi, lo) = (a.max(b), a.min(b));
            let block = &blocks[(hi * (hi + 1) / 2 + lo) * d * d..][..d * d];
            out[b * d..(b + 1) * d]
                .iter_mut()
                .zip(&block[x * d..(x + 1) * d])
                .for_each(|(o, v)| *o += alpha * *v);
        }
    });
}

/// A zero-filled vector whose pages are written now, in parallel. `vec![0; n]` maps zero pages
/// lazily, and the faults then land inside GEMM writes, where they cost far more (measured:
/// +0.4 s on a 5120 × 5120 f32 accumulation) than this upfront fill.
fn zeroed<T: Scalar>(n: usize) -> Vec<T> {
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
fn reserve<T: Scalar>(rows: usize, cols: usize) -> Result<Vec<T>> {
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
fn scratch(req: faer::dyn_stack::StackReq) -> MemBuffer {
    let mut mem = MemBuffer::new(req);
    mem.par_chunks_mut(4096).for_each(|page| {
        page[0] = std::mem::MaybeUninit::new(0);
    });
    mem
}

/// `Xᵀ` of the row-major rows × cols slice `x`, row-major (cols × rows).
fn transposed<T: Scalar>(x: &[T], rows: usize, cols: usize) -> Vec<T> {
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
fn symmetric_add<T: Scalar>(dst: MatMut<'_, T>, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, alpha: T, par: Par) -> bool {
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

    fn ggn_accumulate<T: Scalar>(
        &self,
        precision: &mut Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        probs: &Matrix<Self, T>,
        basis: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        let (n, d, k, kr, p) = ggn_shapes(precision, phi, probs, basis)?;
        if n == 0 || p == 0 {
            return Ok(());
        }
        let par = self.par();
        if d >= PAIR_GGN_MIN_FEATURES {
            let shape = PairGgnShape { n, d, k, kr };
            let (phi, probs) = (&phi.buffer()[..n * d], &probs.buffer()[..n * k]);
            let basis = basis.map(|r| &r.buffer()[..k * kr]);
            let threads = self.threads;
            self.run_dense(|| ggn_by_class_pairs(precision.buffer_mut(), phi, probs, basis, shape, alpha, threads));
            return Ok(());
        }
        let chunk = (SCRATCH_ELEMENTS / p).clamp(64, 16_384).min(n);
        self.run_dense(|| {
            let mut a_t = zeroed(p * chunk);
            let mut diag_t = zeroed(d * chunk);
            let mut grams = basis.map(|_| zeroed::<T>(k * d * d));
            // The grams are combined into lower blocks only, so the basis path always mirrors.
            let mut mirror = basis.is_some();
            for start in (0..n).step_by(chunk) {
                let c = chunk.min(n - start);
                // Φ_cᵀ (D × c) and P_cᵀ (K × c): every packed row below is then a contiguous
                // elementwise product.
                let phi_t = transposed(&phi.buffer()[start * d..(start + c) * d], c, d);
                let pr_t = transposed(&probs.buffer()[start * k..(start + c) * k], c, k);
                // Rᵀ p_i for every sample, K' × c (P_cᵀ itself without a basis).
                let pr_red = match basis {
                    None => None,
                    Some(r) => {
                        let mut out = zeroed(kr * c);
                        matmul(
                            MatMut::from_row_major_slice_mut(&mut out, kr, c),
                            Accum::Replace,
                            view(r).transpose(),
                            MatRef::from_row_major_slice(&pr_t, k, c),
                            T::one(),
                            Par::Seq,
                        );
                        Some(out)
                    }
                };
                let pr_a = pr_red.as_deref().unwrap_or(&pr_t);
                // Aᵀ, with row (a, d) holding p̃_ia φ_id over the chunk's samples i.
                a_t[..p * c].par_chunks_mut(c).enumerate().for_each(|(row, out)| {
                    let (pk, xd) = (
                        &pr_a[(row / d) * c..(row / d + 1) * c],
                        &phi_t[(row % d) * c..(row % d + 1) * c],
                    );
                    out.iter_mut()
                        .zip(pk.iter().zip(xd))
                        .for_each(|(o, (a, b))| *o = *a * *b);
                });
                let a_view = MatRef::from_row_major_slice(&a_t[..p * c], p, c);
                mirror |= symmetric_add(view_mut(precision), a_view, a_view, -alpha, par);
                // G_k = Φᵀ diag(p_k) Φ as (diag(√p_k) Φ)ᵀ (diag(√p_k) Φ): straight into block
                // (k, k) without a basis, else kept for the combination below.
                for kk in 0..k {
                    let sqrt_p: Vec<T> = pr_t[kk * c..(kk + 1) * c].iter().map(|x| x.sqrt()).collect();
                    diag_t[..d * c].par_chunks_mut(c).enumerate().for_each(|(dd, out)| {
                        let xd = &phi_t[dd * c..(dd + 1) * c];
                        out.iter_mut()
                            .zip(sqrt_p.iter().zip(xd))
                            .for_each(|(o, (a, b))| *o = *a * *b);
                    });
                    let dv = MatRef::from_row_major_slice(&diag_t[..d * c], d, c);
                    match grams.as_mut() {
                        None => {
                            let block = view_mut(precision).submatrix_mut(kk * d, kk * d, d, d);
                            mirror |= symmetric_add(block, dv, dv, alpha, par);
                        }
                        Some(g) => {
                            let gk = &mut g[kk * d * d..(kk + 1) * d * d];
                            gk.fill(T::zero());
                            if symmetric_add(MatMut::from_row_major_slice_mut(gk, d, d), dv, dv, alpha, par) {
                                fill_triangle(gk, d, Fill::LowerToUpper);
                            }
                        }
                    }
                }
                // Block (a, b ≤ a) += Σ_k R[k, a] R[k, b] G_k.
                if let (Some(g), Some(r)) = (grams.as_ref(), basis) {
                    let rb = r.buffer();
                    precision
                        .buffer_mut()
                        .par_chunks_mut(d * p)
                        .enumerate()
                        .for_each(|(a, block_row)| {
                            for b in 0..=a {
                                let coef: Vec<T> = (0..k).map(|kk| rb[kk * kr + a] * rb[kk * kr + b]).collect();
                                for x in 0..d {
                                    let dst = &mut block_row[x * p + b * d..x * p + (b + 1) * d];
                                    for (kk, ck) in coef.iter().enumerate() {
                                        let src = &g[kk * d * d + x * d..kk * d * d + (x + 1) * d];
                                        dst.iter_mut().zip(src).for_each(|(o, v)| *o += *ck * *v);
                                    }
                                }
                            }
                        });
                }
            }
            if mirror {
                fill_triangle(precision.buffer_mut(), p, Fill::LowerToUpper);
            }
        });
        Ok(())
    }

    fn kron_congruence<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        basis: &Matrix<Self, T>,
        complement: T,
    ) -> Result<Matrix<Self, T>> {
        let (k, kr, d) = congruence_shapes(x, basis)?;
        let n_red = kr * d;
        let p = k * d;
        self.run(|| {
            let (xb, rb) = (x.buffer(), basis.buffer());
            let rrt: Vec<T> = (0..k * k)
                .map(|kl| (0..kr).map(|b| rb[(kl / k) * kr + b] * rb[(kl % k) * kr + b]).sum())
                .collect();
            let mut y = zeroed::<T>(p * p);
            let rows = SyncPtr(y.as_mut_ptr());
            // One task per feature x: the rows (·, x) of Z = (R ⊗ I) X, `Z[(k, x), ·] =
            // Σ_a R[k, a] X[(a, x), ·]`, from the K' rows (a, x) of X (each read once, Z never
            // held whole), then rows (k, x) of Y = Z (Rᵀ ⊗ I) + c (I − R Rᵀ) ⊗ I, lower triangle:
            // block l ≤ k is Σ_b R[l, b] Z[(k, x), (b, ·)].
            (0..d).into_par_iter().for_each_init(
                || vec![T::zero(); k * n_red],
                |z, xx| {
                    let rows = &rows;
                    z.fill(T::zero());
                    for a in 0..kr {
                        let xrow = &xb[(a * d + xx) * n_red..(a * d + xx + 1) * n_red];
                        for (kk, zrow) in z.chunks_exact_mut(n_red).enumerate() {
                            let coef = rb[kk * kr + a];
                            zrow.iter_mut().zip(xrow).for_each(|(o, v)| *o += coef * *v);
                        }
                    }
                    for (kk, zrow) in z.chunks_exact(n_red).enumerate() {
                        let row = kk * d + xx;
                        // SAFETY: row (kk, xx) is written by the task of xx alone, and
                        // (row + 1)·p ≤ p² = y.len().
                        let yrow = unsafe { std::slice::from_raw_parts_mut(rows.0.add(row * p), p) };
                        for l in 0..=kk {
                            let dst = &mut yrow[l * d..(l + 1) * d];
                            for b in 0..kr {
                                let coef = rb[l * kr + b];
                                dst.iter_mut()
                                    .zip(&zrow[b * d..(b + 1) * d])
                                    .for_each(|(o, v)| *o += coef * *v);
                            }
                            let delta = if l == kk { T::one() } else { T::zero() };
                            dst[xx] += complement * (delta - rrt[kk * k + l]);
                        }
                    }
                },
            );
            fill_triangle(&mut y, p, Fill::LowerToUpper);
            Matrix::from_parts(y, p, p)
        })
    }

    fn kron_products<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        factor: LowRankFactor<'_, Self, T>,
    ) -> Result<(Matrix<Self, T>, Matrix<Self, T>)> {
        let (m, d) = phi.shape();
        let par = self.par();
        match factor {
            LowRankFactor::Shared { weights } => {
                sigma.expect_shape("sigma", d, d)?;
                if let Some(w) = weights {
                    w.expect_shape("weights", m, 1)?;
                }
                self.run_dense(|| {
                    let mut u = zeroed(d * m);
                    let uv = MatMut::from_row_major_slice_mut(&mut u, d, m);
                    matmul(uv, Accum::Replace, view(sigma), view(phi).transpose(), T::one(), par);
                    let sqrt_w: Option<Vec<T>> = weights.map(|w| w.buffer().iter().map(|x| x.sqrt()).collect());
                    if let Some(sw) = &sqrt_w {
                        u.par_chunks_mut(m.max(1)).for_each(|row| {
                            for (x, s) in row.iter_mut().zip(sw) {
                                *x *= *s;
                            }
                        });
                    }
                    let mut g = zeroed(m * m);
                    let gv = MatMut::from_row_major_slice_mut(&mut g, m, m);
                    matmul(
                        gv,
                        Accum::Replace,
                        view(phi),
                        MatRef::from_row_major_slice(&u, d, m),
                        T::one(),
                        par,
                    );
                    if let Some(sw) = &sqrt_w {
                        for (row, s) in g.chunks_mut(m.max(1)).zip(sw) {
                            row.iter_mut().for_each(|x| *x *= *s);
                        }
                    }
                    symmetrize_small(&mut g, m);
                    Ok((Matrix::from_parts(u, d, m)?, Matrix::from_parts(g, m, m)?))
                })
            }
            LowRankFactor::Kronecker { probs } => {
                let k = probs.cols();
                probs.expect_shape("probs", m, k)?;
                let p = k * d;
                sigma.expect_shape("sigma", p, p)?;
                self.run_dense(|| {
                    // S_j = diag(√p_j) − p_j √p_jᵀ, stored m × K × K.
                    let mut s = zeroed(m * k * k);
                    for j in 0..m {
                        let pj = &probs.buffer()[j * k..(j + 1) * k];
                        for a in 0..k {
                            for c in 0..k {
                                let delta = if a == c { pj[a].sqrt() } else { T::zero() };
                                s[(j * k + a) * k + c] = delta - pj[a] * pj[c].sqrt();
                            }
                        }
                    }
                    // T[(r, k), j] = Σ_d Σ[r, kD + d] φ_j[d]: Σ seen as (P·K) × D.
                    let mut t = zeroed(p * k * m);
                    let sigma_rows = MatRef::from_row_major_slice(sigma.buffer().as_slice(), p * k, d);
                    matmul(
                        MatMut::from_row_major_slice_mut(&mut t, p * k, m),
                        Accum::Replace,
                        sigma_rows,
                        view(phi).transpose(),
                        T::one(),
                        par,
                    );
                    // U[r, (j, c)] = Σ_k T[(r, k), j] S_j[k, c].
                    let mk = m * k;
                    let mut u = zeroed(p * mk);
                    u.par_chunks_mut(mk.max(1)).enumerate().for_each(|(r, urow)| {
                        let trow = &t[r * k * m..(r + 1) * k * m];
                        for j in 0..m {
                            for c in 0..k {
                                let mut acc = T::zero();
                                for a in 0..k {
                                    acc += trow[a * m + j] * s[(j * k + a) * k + c];
                                }
                                urow[j * k + c] = acc;
                            }
                        }
                    });
                    // Y_a = Φ · U[aD..(a+1)D, :] (m × mK); G[(j, c), :] = Σ_a S_j[a, c] Y_a[j, :].
                    let mut y = zeroed(k * m * mk);
                    for a in 0..k {
                        let ua = MatRef::from_row_major_slice(&u[a * d * mk..(a + 1) * d * mk], d, mk);
                        matmul(
                            MatMut::from_row_major_slice_mut(&mut y[a * m * mk..(a + 1) * m * mk], m, mk),
                            Accum::Replace,
                            view(phi),
                            ua,
                            T::one(),
                            par,
                        );
                    }
                    let mut g = zeroed(mk * mk);
                    g.par_chunks_mut(mk.max(1)).enumerate().for_each(|(row, grow)| {
                        let (j, c) = (row / k, row % k);
                        for a in 0..k {
                            let coef = s[(j * k + a) * k + c];
                            let yrow = &y[(a * m + j) * mk..(a * m + j + 1) * mk];
                            for (gx, yx) in grow.iter_mut().zip(yrow) {
                                *gx += coef * *yx;
                            }
                        }
                    });
                    symmetrize_small(&mut g, mk);
                    Ok((Matrix::from_parts(u, p, mk)?, Matrix::from_parts(g, mk, mk)?))
                })
            }
        }
    }

    fn low_rank_update<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        u: &Matrix<Self, T>,
        c_chol: &Matrix<Self, T>,
        sign: Sign,
    ) -> Result<()> {
        let (n, r) = low_rank_shapes(sigma, u, c_chol)?;
        if r == 0 || n == 0 {
            return Ok(());
        }
        let par = self.par();
        self.run_dense(|| {
            // V = U L⁻ᵀ (n × r, rows contiguous along r), solved as Vᵀ = L⁻¹ Uᵀ on a transposed
            // view; then Σ ± V Vᵀ on the lower triangle.
            let mut v = u.buffer()[..n * r].to_vec();
            faer::linalg::triangular_solve::solve_lower_triangular_in_place(
                view(c_chol),
                MatMut::from_row_major_slice_mut(&mut v, n, r).transpose_mut(),
                par,
            );
            let v_view = MatRef::from_row_major_slice(&v, n, r);
            let alpha = if sign == Sign::Plus { T::one() } else { -T::one() };
            if symmetric_add(view_mut(sigma), v_view, v_view, alpha, par) {
                fill_triangle(sigma.buffer_mut(), n, Fill::LowerToUpper);
            }
        });
        Ok(())
    }

    /// Overrides the provided blocked routine with the same blocking fused over host memory:
    /// no block uploads, and the corrections applied to the rows of `Σ₀Φ_B` directly (1.1× faster
    /// at D = 768, K = 10, 1.6× at D = 384, K = 100, m = 1,000, in the `profile` command).
    fn sherman_morrison_sequence<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        head: &mut Matrix<Self, T>,
        bias: Option<&Matrix<Self, T>>,
        phi: &Matrix<Self, T>,
        targets: &Matrix<Self, T>,
        gamma: T,
        weighting: OutputWeighting,
    ) -> Result<Matrix<Self, T>> {
        let (m, d, k) = sherman_morrison_shapes(sigma, head, bias, phi, targets)?;
        let par = self.par();
        self.run_dense(|| {
            let mut used = vec![T::zero(); m];
            // Blocks of samples: Σ_{j−1} = Σ₀ − Σ_{i<j} c_i u_i u_iᵀ and W_j = W₀ + Σ_{i<j} r_i v_iᵀ
            // within a block, so Σ₀φ_j and W₀φ_j come from two GEMMs at the block's start, the
            // per-sample corrections cost O(j·(D + K)), and Σ and W change once per block by a
            // rank-B update. Exactly the sequential recursion, read from memory once per block.
            const BLOCK: usize = 64;
            let mut p = vec![T::zero(); k];
            for start in (0..m).step_by(BLOCK) {
                let b = BLOCK.min(m - start);
                let xb = MatRef::from_row_major_slice(&phi.buffer()[start * d..(start + b) * d], b, d);
                // Y = Φ_B Σ₀ (row j is (Σ₀φ_j)ᵀ, Σ symmetric) and F = Φ_B W₀ᵀ.
                let mut y = zeroed(b * d);
                matmul(
                    MatMut::from_row_major_slice_mut(&mut y, b, d),
                    Accum::Replace,
                    xb,
                    view(sigma),
                    T::one(),
                    par,
                );
                let mut f = zeroed(b * k);
                matmul(
                    MatMut::from_row_major_slice_mut(&mut f, b, k),
                    Accum::Replace,
                    xb,
                    view(head).transpose(),
                    T::one(),
                    par,
                );
                settle_vector_state();
                // Per sample i of the block: u_i = Σ_{i−1}φ_i (rows of `y`, corrected in place),
                // c_i = m_i/(1 + m_i s_i), 1/(1 + m_i s_i), and γ r_i = γ (t_i − p_i).
                let mut c = vec![T::zero(); b];
                let mut inv = vec![T::zero(); b];
                let mut r = vec![T::zero(); b * k];
                let mut proj = vec![T::zero(); b];
                for jj in 0..b {
                    let j = start + jj;
                    let x = &phi.buffer()[j * d..(j + 1) * d];
                    let (done, rest) = y.split_at_mut(jj * d);
                    let u = &mut rest[..d];
                    for i in 0..jj {
                        proj[i] = dot(&done[i * d..(i + 1) * d], x);
                    }
                    for i in 0..jj {
                        let coef = c[i] * proj[i];
                        u.iter_mut()
                            .zip(&done[i * d..(i + 1) * d])
                            .for_each(|(a, ui)| *a -= coef * *ui);
                    }
                    let s = dot(x, u);
                    for (cc, pc) in p.iter_mut().enumerate() {
                        let correction = (0..jj).fold(T::zero(), |acc, i| acc + r[i * k + cc] * proj[i] * inv[i]);
                        *pc = f[jj * k + cc] + correction + bias.map_or(T::zero(), |bv| bv.buffer()[cc]);
                    }
                    softmax_in_place(&mut p);
                    let mj = match weighting {
                        OutputWeighting::Gaussian => T::one(),
                        OutputWeighting::Categorical => {
                            let pmax = p.iter().fold(T::zero(), |a, &b| a.max(b));
                            pmax * (T::one() - pmax)
                        }
                    };
                    let denom = T::one() + mj * s;
                    if denom.is_nan() || denom <= T::zero() || denom.is_infinite() {
                        return Err(Error::NotPositiveDefinite { index: j });
                    }
                    used[j] = mj;
                    c[jj] = mj / denom;
                    inv[jj] = T::one() / denom;
                    let t = &targets.buffer()[j * k..(j + 1) * k];
                    for cc in 0..k {
                        r[jj * k + cc] = gamma * (t[cc] - p[cc]);
                    }
                }
                // Σ ← Σ − Uᵀ diag(c) U, written as Σ − (diag(√c)U)ᵀ(diag(√c)U) on the lower
                // triangle and mirrored, so that Σ stays exactly symmetric.
                let scaled: Vec<T> = y
                    .chunks(d)
                    .zip(&c)
                    .flat_map(|(row, &ci)| {
                        let sc = ci.sqrt();
                        row.iter().map(move |v| *v * sc)
                    })
                    .collect();
                let su = MatRef::from_row_major_slice(&scaled, b, d);
                triangular::matmul(
                    view_mut(sigma),
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    su.transpose(),
                    BlockStructure::Rectangular,
                    su,
                    BlockStructure::Rectangular,
                    -T::one(),
                    par,
                );
                fill_triangle(sigma.buffer_mut(), d, Fill::LowerToUpper);
                // W ← W + Σ_i γ r_i v_iᵀ with v_i = u_i / (1 + m_i s_i).
                let v: Vec<T> = y
                    .chunks(d)
                    .zip(&inv)
                    .flat_map(|(row, &w)| row.iter().map(move |x| *x * w))
                    .collect();
                matmul(
                    view_mut(head),
                    Accum::Add,
                    MatRef::from_row_major_slice(&r, b, k).transpose(),
                    MatRef::from_row_major_slice(&v, b, d),
                    T::one(),
                    par,
                );
            }
            Matrix::from_parts(used, m, 1)
        })
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

    /// Overrides the provided composition with faer's fused Cholesky inverse.
    fn spd_inverse<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let n = a.expect_square("a")?;
        self.run_sized(n * n * n, |par| {
            // A symmetric row-major buffer is also A in column-major order: factor and invert in
            // faer's fast layout with no transposes.
            let mut l = a.buffer()[..n * n].to_vec();
            cholesky_col_major(&mut l, n, par)?;
            let mut out = zeroed(n * n);
            let mut mem = scratch(faer::linalg::cholesky::llt::inverse::inverse_scratch::<T>(n, par));
            faer::linalg::cholesky::llt::inverse::inverse(
                MatMut::from_column_major_slice_mut(&mut out, n, n),
                MatRef::from_column_major_slice(&l, n, n),
                par,
                MemStack::new(&mut mem),
            );
            // The column-major lower triangle is the row-major upper triangle of the result.
            fill_triangle(&mut out, n, Fill::UpperToLower);
            Matrix::from_parts(out, n, n)
        })
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

    fn softmax_rows<T: Scalar>(&self, logits: &mut Matrix<Self, T>) -> Result<()> {
        let k = logits.cols();
        if k > 0 {
            let (len, values) = (logits.len(), logits.buffer_mut());
            self.run_elementwise(len, |parallel| {
                if parallel {
                    values.par_chunks_mut(k).for_each(softmax_in_place)
                } else {
                    values.chunks_mut(k).for_each(softmax_in_place)
                }
            });
        }
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

    fn kron_rows<T: Scalar>(
        &self,
        factors: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        rank: usize,
    ) -> Result<Matrix<Self, T>> {
        let (n, d) = phi.shape();
        let k = factors.cols();
        factors.expect_shape("factors", n * rank, k)?;
        let width = k * d;
        let mut out = reserve::<T>(n * rank, width)?;
        out.resize(n * rank * width, T::zero());
        if width > 0 {
            self.run(|| {
                out.par_chunks_mut(width).enumerate().for_each(|(row, dst)| {
                    let x = &phi.buffer()[(row / rank) * d..(row / rank + 1) * d];
                    let s = &factors.buffer()[row * k..(row + 1) * k];
                    for (block, &sa) in dst.chunks_mut(d).zip(s) {
                        block.iter_mut().zip(x).for_each(|(o, &xv)| *o = sa * xv);
                    }
                })
            });
        }
        Matrix::from_parts(out, n * rank, width)
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
fn cholesky_col_major<T: Scalar>(buf: &mut [T], n: usize, par: Par) -> Result<()> {
    use faer::linalg::cholesky::llt::factor::{LltError, cholesky_in_place, cholesky_in_place_scratch};
    let mut mem = scratch(cholesky_in_place_scratch::<T>(n, par, Default::default()));
    let a = MatMut::from_column_major_slice_mut(&mut buf[..n * n], n, n);
    cholesky_in_place(a, Default::default(), par, MemStack::new(&mut mem), Default::default())
        .map(|_| ())
        .map_err(|LltError::NonPositivePivot { index }| Error::NotPositiveDefinite { index })
}

/// `G ← (G + Gᵀ) / 2` for a small row-major square matrix.
fn symmetrize_small<T: Scalar>(g: &mut [T], n: usize) {
    let half = T::from_f64(0.5);
    for i in 0..n {
        for j in i + 1..n {
            let v = (g[i * n + j] + g[j * n + i]) * half;
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
}
