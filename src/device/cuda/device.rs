//! [`CudaDevice`]: the CUDA backend, launching the kernels of `kernels/*.cu` through cudarc.
//!
//! Layered like cudarc: the driver and NVRTC are probed before any other call (cudarc panics
//! when a library is absent), every driver or NVRTC failure becomes a typed error, and each
//! `unsafe` launch states what makes it sound. The kernel compositions are shared with the wgpu
//! backend ([`compose`](crate::device::compose)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::{Family, compile, nvrtc_available};
use crate::device::compose::{self, Gpu, Grid, Kernel, KernelParams, NONE, Record};
use crate::device::launch::{GridLimits, LaunchPolicy, fold_threads};
use crate::device::{Device, LowRankFactor, Matrix, Op, OutputWeighting, Sign, check_upload, sherman_morrison_shapes};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

/// The family (source file) that holds `kernel`.
fn family_of(kernel: Kernel) -> Family {
    use Kernel::*;
    match kernel {
        Gemm => Family::Gemm,
        GgnWeights | KronRows | KronMixColumns => Family::Ggn,
        KronFactors | KronMixU | KronMixG => Family::Kron,
        SmProject | SmScalars | SmApply | SmSequence => Family::LowRank,
        PotrfDiagonal | TrsmPanel | TrsmBlock => Family::Cholesky,
        RowDot | SoftmaxRows | Probit | MonteCarlo | Bridge | CategoricalWeights => Family::Predictive,
        Axpy | Hadamard | AddRow | AddDiagonal | MaxAbs | MirrorLower | ZeroUpper | Symmetrize | Transpose
        | SetIdentity | ScaleRows | ScaleColumns => Family::Elementwise,
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "cuda",
        reason: reason.into(),
    }
}

fn device_error(what: &str, e: cudarc::driver::DriverError) -> Error {
    use cudarc::driver::sys::CUresult;
    let reason = match e.0 {
        CUresult::CUDA_ERROR_OUT_OF_MEMORY => format!("{what}: out of device memory"),
        CUresult::CUDA_ERROR_LAUNCH_FAILED | CUresult::CUDA_ERROR_ILLEGAL_ADDRESS => {
            format!("{what}: kernel failed ({e:?}); the context is lost, create a new device")
        }
        _ => format!("{what}: {e:?}"),
    };
    Error::Device {
        backend: "cuda",
        reason,
    }
}

/// The 16 × 64-bit parameter block every kernel takes by value (`Words` in `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Words([u64; 16]);

// SAFETY: `Words` is plain old data with the layout of `struct Words { u64 w[16]; }`.
unsafe impl cudarc::driver::DeviceRepr for Words {}

impl Words {
    /// C layout of a `Params` struct of doubles then 32-bit integers.
    fn pack(params: &KernelParams) -> Words {
        let mut words = Words::default();
        let mut i = 0;
        for r in &params.reals {
            words.0[i] = r.to_bits();
            i += 1;
        }
        for pair in params.ints.chunks(2) {
            words.0[i] = pair[0] as u64 | (pair.get(1).copied().unwrap_or(0) as u64) << 32;
            i += 1;
        }
        words
    }
}

/// A device buffer of `len` elements of `T` (bytes underneath, never size 0).
pub struct CudaBuffer<T> {
    bytes: CudaSlice<u8>,
    /// The allocation's device address, passed to kernels.
    ptr: u64,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Send + Sync> crate::device::DeviceBuffer for CudaBuffer<T> {
    fn len(&self) -> usize {
        self.len
    }
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    arch: String,
    multiprocessors: u32,
    /// Launch sizes from the device's memory.
    policy: LaunchPolicy,
    modules: Mutex<HashMap<Family, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(Kernel, DType), CudaFunction>>,
}

/// The CUDA backend on one GPU. Kernels are compiled by NVRTC for the device's architecture at
/// first use and cached per device.
///
/// ```no_run
/// use laplace_update::{CudaDevice, Device};
/// let gpu = CudaDevice::new(0)?;
/// let a = gpu.upload(&[1.0f64, 2.0, 3.0, 4.0], 2, 2)?;
/// assert_eq!(gpu.download(&a)?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("name", &self.inner.name)
            .field("arch", &self.inner.arch)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaDevice {
    /// GPU `ordinal`. No driver, no NVRTC or no such device is [`Error::BackendUnavailable`]
    /// with the reason.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the candidate library names; nothing is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable("the NVIDIA driver library (libcuda.so) was not found"));
        }
        nvrtc_available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?;
        let memory = ctx.total_mem().ok().map(|b| b as u64);
        let largest = u32::MAX as u64 * 8;
        let stream = ctx.default_stream();
        Ok(CudaDevice {
            inner: Arc::new(Inner {
                ctx,
                stream,
                name: format!("cuda:{ordinal} {name}"),
                arch: format!("sm_{major}{minor}"),
                multiprocessors: multiprocessors.max(1) as u32,
                policy: LaunchPolicy::hardware(memory.map_or(largest, |m| m.min(largest)), memory),
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The architecture the kernels are compiled for, e.g. `"sm_90"`.
    pub fn arch(&self) -> &str {
        &self.inner.arch
    }

    fn function(&self, kernel: Kernel, dtype: DType) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.inner.functions).get(&(kernel, dtype)) {
            return Ok(f.clone());
        }
        let family = family_of(kernel);
        let module = {
            let cached = lock(&self.inner.modules).get(&family).cloned();
            match cached {
                Some(m) => m,
                None => {
                    let compiled = compile(family, &self.inner.arch)?;
                    // CUBIN first: no JIT, and it loads under minor-version compatibility when
                    // NVRTC is newer than the driver. PTX is the fallback.
                    let from_cubin = compiled
                        .cubin
                        .and_then(|bin| self.inner.ctx.load_module(cudarc::nvrtc::Ptx::from_binary(bin)).ok());
                    let module = match from_cubin {
                        Some(m) => m,
                        None => self
                            .inner
                            .ctx
                            .load_module(cudarc::nvrtc::Ptx::from_src(compiled.ptx))
                            .map_err(|e| match e.0 {
                                cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => unavailable(
                                    "the NVRTC library is newer than the NVIDIA driver (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) and its CUBIN did not load: \
                                     put an NVRTC no newer than the driver's CUDA version first on the library path, or update the driver",
                                ),
                                _ => device_error(&format!("loading `kernels/{}`", family.file()), e),
                            })?,
                    };
                    lock(&self.inner.modules).insert(family, module.clone());
                    module
                }
            }
        };
        let name = format!("{}_{}", kernel.name(), dtype.name());
        let f = module
            .load_function(&name)
            .map_err(|e| device_error(&format!("kernel `{name}`"), e))?;
        lock(&self.inner.functions).insert((kernel, dtype), f.clone());
        Ok(f)
    }

    fn alloc<T: Scalar>(&self, len: usize, label: &str) -> Result<CudaBuffer<T>> {
        if len > u32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "{label}: {len} elements exceed the 32-bit indexing of the CUDA kernels"
            )));
        }
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| Error::Device {
            backend: "cuda",
            reason: format!("{label}: {len} elements overflow a byte count"),
        })?;
        let slice = self
            .inner
            .stream
            .alloc_zeros::<u8>(bytes.max(8))
            .map_err(|e| device_error(&format!("allocating {label} ({bytes} bytes)"), e))?;
        Ok(self.wrap(slice, len))
    }

    /// A buffer of `len` elements over `bytes`, with its device address.
    fn wrap<T>(&self, bytes: CudaSlice<u8>, len: usize) -> CudaBuffer<T> {
        let ptr = bytes.device_ptr(&self.inner.stream).0;
        CudaBuffer {
            bytes,
            ptr,
            len,
            _t: std::marker::PhantomData,
        }
    }

    fn read<U: bytemuck::Pod>(&self, bytes: &CudaSlice<u8>, len: usize) -> Result<Vec<U>> {
        let all = self
            .inner
            .stream
            .clone_dtoh(bytes)
            .map_err(|e| device_error("reading back", e))?;
        Ok(bytemuck::pod_collect_to_vec(&all[..len * std::mem::size_of::<U>()]))
    }
}

/// Launches on the device's stream; [`Record::submit`] waits for them.
pub(crate) struct CudaLaunches {
    dev: CudaDevice,
}

impl Record for CudaLaunches {
    type Raw = u64;

    fn launch(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        buffers: &[Option<u64>],
        grid: Grid,
    ) -> Result<()> {
        let f = self.dev.function(kernel, dtype)?;
        let (bx, by) = kernel.block_threads();
        let grid_dim = match grid {
            Grid::Threads(n) => {
                let [x, y, z] = fold_threads(n, (bx * by) as usize, GridLimits::CUDA)?;
                (x, y, z)
            }
            Grid::Blocks(x, y, z) => {
                // The compositions split their grids within these limits; this guards it.
                let max = GridLimits::CUDA.max_blocks;
                if x > max[0] || y > max[1] || z > max[2] {
                    return Err(Error::Unsupported(format!(
                        "grid {x} x {y} x {z} exceeds CUDA's limits"
                    )));
                }
                (x.max(1) as u32, y.max(1) as u32, z.max(1) as u32)
            }
        };
        let cfg = LaunchConfig {
            grid_dim,
            block_dim: (bx, by, 1),
            shared_mem_bytes: 0,
        };
        let words = Words::pack(&params);
        let pointers: Vec<u64> = buffers.iter().map(|b| b.unwrap_or(0)).collect();
        let mut args = self.dev.inner.stream.launch_builder(&f);
        args.arg(&words);
        for p in &pointers {
            args.arg(p);
        }
        // SAFETY: the argument list matches the kernel's C signature (the parameter block, then
        // one device pointer per buffer slot, in the order the composition passes them). Every
        // pointer is a live allocation of this context: a matrix's buffer, which holds exactly
        // rows · cols elements (`Matrix::from_parts` checks it and no public API can replace a
        // matrix's buffer), or a scratch buffer the composition allocated at the length it
        // indexes. The compositions check every operand's shape before recording and derive
        // each launch's index range from those shapes, so no kernel reads or writes past an
        // allocation; a slot the kernel does not touch for these parameters holds null.
        unsafe { args.launch(cfg) }.map_err(|e| device_error(&format!("launching `{}`", kernel.name()), e))?;
        Ok(())
    }

    fn submit(self) -> Result<()> {
        self.dev
            .inner
            .stream
            .synchronize()
            .map_err(|e| device_error("running the kernels", e))
    }
}

impl Gpu for CudaDevice {
    type Raw = u64;
    type Rec = CudaLaunches;

    fn raw<T: Scalar>(m: &Matrix<Self, T>) -> u64 {
        m.buffer().ptr
    }
    fn raw_buffer<T: Scalar>(b: &CudaBuffer<T>) -> u64 {
        b.ptr
    }
    fn recorder(&self) -> CudaLaunches {
        CudaLaunches { dev: self.clone() }
    }
    fn scratch<T: Scalar>(&self, len: usize, label: &'static str) -> Result<CudaBuffer<T>> {
        self.alloc(len, label)
    }
    fn status(&self) -> Result<CudaBuffer<f32>> {
        let status = self
            .inner
            .stream
            .clone_htod(bytemuck::cast_slice::<u32, u8>(&[NONE, 0, 0, 0]))
            .map_err(|e| device_error("status word", e))?;
        Ok(self.wrap(status, 4))
    }
    fn failed_at(&self, status: &CudaBuffer<f32>) -> Result<Option<usize>> {
        let words: Vec<u32> = self.read(&status.bytes, 1)?;
        Ok((words[0] != NONE).then_some(words[0] as usize))
    }
    fn grid_limits(&self) -> GridLimits {
        GridLimits::CUDA
    }
    fn policy(&self) -> &LaunchPolicy {
        &self.inner.policy
    }
}

impl Device for CudaDevice {
    type Buffer<T: Scalar> = CudaBuffer<T>;

    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn upload<T: Scalar>(&self, data: &[T], rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        check_upload(data.len(), rows, cols)?;
        let mut buf = self.alloc::<T>(data.len(), "matrix")?;
        if !data.is_empty() {
            self.inner
                .stream
                .memcpy_htod(bytemuck::cast_slice::<T, u8>(data), &mut buf.bytes)
                .map_err(|e| device_error("upload", e))?;
        }
        Matrix::from_parts(buf, rows, cols)
    }

    fn download<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Vec<T>> {
        self.read(&m.buffer().bytes, m.len())
    }

    fn zeros<T: Scalar>(&self, rows: usize, cols: usize) -> Result<Matrix<Self, T>> {
        let len = rows.checked_mul(cols).ok_or_else(|| Error::Device {
            backend: "cuda",
            reason: format!("a {rows} x {cols} matrix overflows"),
        })?;
        Matrix::from_parts(self.alloc::<T>(len, "matrix")?, rows, cols)
    }

    fn copy<T: Scalar>(&self, m: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        let bytes = self
            .inner
            .stream
            .clone_dtod(&m.buffer().bytes)
            .map_err(|e| device_error("copy", e))?;
        Matrix::from_parts(self.wrap(bytes, m.len()), m.rows(), m.cols())
    }

    fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| device_error("synchronize", e))
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
        compose::gemm(self, c, beta, a, ta, b, tb, alpha)
    }

    fn weighted_syrk<T: Scalar>(
        &self,
        c: &mut Matrix<Self, T>,
        beta: T,
        a: &Matrix<Self, T>,
        weights: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        compose::weighted_syrk(self, c, beta, a, weights, alpha)
    }

    fn ggn_accumulate<T: Scalar>(
        &self,
        precision: &mut Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        probs: &Matrix<Self, T>,
        basis: Option<&Matrix<Self, T>>,
        alpha: T,
    ) -> Result<()> {
        compose::ggn_accumulate(self, precision, phi, probs, basis, alpha)
    }

    fn kron_congruence<T: Scalar>(
        &self,
        x: &Matrix<Self, T>,
        basis: &Matrix<Self, T>,
        complement: T,
    ) -> Result<Matrix<Self, T>> {
        compose::kron_congruence(self, x, basis, complement)
    }

    fn kron_rows<T: Scalar>(
        &self,
        factors: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        rank: usize,
    ) -> Result<Matrix<Self, T>> {
        compose::kron_rows(self, factors, phi, rank)
    }

    fn kron_products<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
        factor: LowRankFactor<'_, Self, T>,
    ) -> Result<(Matrix<Self, T>, Matrix<Self, T>)> {
        compose::kron_products(self, sigma, phi, factor)
    }

    fn low_rank_update<T: Scalar>(
        &self,
        sigma: &mut Matrix<Self, T>,
        u: &Matrix<Self, T>,
        c_chol: &Matrix<Self, T>,
        sign: Sign,
    ) -> Result<()> {
        compose::low_rank_update(self, sigma, u, c_chol, sign)
    }

    /// One persistent cooperative launch for all m samples (`sm_sequence` in
    /// `kernels/low_rank.cu`): one block per multiprocessor, grid-wide barriers between steps.
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
        let used = self.zeros::<T>(m, 1)?;
        if m == 0 || d == 0 {
            return Ok(used);
        }
        let state = self.alloc::<T>(d + 2 * k + 3, "Sherman–Morrison state")?;
        let status = self.status()?;
        let flags = usize::from(bias.is_some()) | (usize::from(weighting == OutputWeighting::Categorical) << 1);
        let words = Words::pack(&KernelParams::new().u(d).u(k).u(m).u(flags).r(gamma.as_f64()));
        let f = self.function(Kernel::SmSequence, T::DTYPE)?;
        let pointers = [
            Self::raw(sigma),
            Self::raw(head),
            bias.map_or(0, Self::raw),
            Self::raw(phi),
            Self::raw(targets),
            state.ptr,
            Self::raw(&used),
            status.ptr,
        ];
        let cfg = LaunchConfig {
            grid_dim: (self.inner.multiprocessors, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut args = self.inner.stream.launch_builder(&f);
        args.arg(&words);
        for p in &pointers {
            args.arg(p);
        }
        // SAFETY: the arguments match `sm_sequence_{f32,f64}(Words, T*, T*, const T*, const T*,
        // const T*, T*, T*, u32*)`; the shapes were checked above (Σ d × d, W k × d, bias k or
        // null when absent, Φ m × d, targets m × k, state d + 2k + 3, used m, status 4 words),
        // and each matrix's buffer holds exactly its shape's elements (the `Matrix` invariant).
        // One block per multiprocessor at 256 threads is co-resident, which the cooperative
        // launch verifies before running the grid barriers.
        unsafe { args.launch_cooperative(cfg) }.map_err(|e| device_error("launching `sm_sequence`", e))?;
        self.synchronize()?;
        match self.failed_at(&status)? {
            Some(index) => Err(Error::NotPositiveDefinite { index }),
            None => Ok(used),
        }
    }

    fn cholesky<T: Scalar>(&self, a: &mut Matrix<Self, T>) -> Result<()> {
        compose::cholesky(self, a)
    }

    fn triangular_solve<T: Scalar>(&self, l: &Matrix<Self, T>, b: &mut Matrix<Self, T>, op: Op) -> Result<()> {
        compose::triangular_solve(self, l, b, op)
    }

    fn spd_inverse<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        compose::spd_inverse(self, a)
    }

    fn predictive_covariance<T: Scalar>(
        &self,
        sigma: &Matrix<Self, T>,
        phi: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        compose::predictive_covariance(self, sigma, phi)
    }

    fn softmax_rows<T: Scalar>(&self, logits: &mut Matrix<Self, T>) -> Result<()> {
        compose::softmax_rows(self, logits)
    }

    fn probit_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        lambda: T,
    ) -> Result<Matrix<Self, T>> {
        compose::probit_softmax(self, mean, cov, lambda)
    }

    fn monte_carlo_softmax<T: Scalar>(
        &self,
        mean: &Matrix<Self, T>,
        cov: &Matrix<Self, T>,
        eps: &Matrix<Self, T>,
    ) -> Result<Matrix<Self, T>> {
        compose::monte_carlo_softmax(self, mean, cov, eps)
    }

    fn bridge_dirichlet<T: Scalar>(&self, mean: &Matrix<Self, T>, cov: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        compose::bridge_dirichlet(self, mean, cov)
    }

    fn categorical_weights<T: Scalar>(&self, probs: &Matrix<Self, T>) -> Result<Matrix<Self, T>> {
        compose::categorical_weights(self, probs)
    }

    fn axpy<T: Scalar>(&self, y: &mut Matrix<Self, T>, alpha: T, x: &Matrix<Self, T>) -> Result<()> {
        compose::binary(self, Kernel::Axpy, y, x, alpha)
    }

    fn hadamard<T: Scalar>(&self, y: &mut Matrix<Self, T>, x: &Matrix<Self, T>) -> Result<()> {
        compose::binary(self, Kernel::Hadamard, y, x, T::zero())
    }

    fn add_row<T: Scalar>(&self, a: &mut Matrix<Self, T>, row: &Matrix<Self, T>) -> Result<()> {
        compose::add_row(self, a, row)
    }

    fn add_diagonal<T: Scalar>(&self, a: &mut Matrix<Self, T>, value: T) -> Result<()> {
        compose::add_diagonal(self, a, value)
    }

    fn max_abs<T: Scalar>(&self, a: &Matrix<Self, T>) -> Result<T> {
        let result = self.alloc::<f64>(1, "max |a|")?;
        let mut rec = self.recorder();
        if !a.is_empty() {
            let params = KernelParams::new().u(a.len()).u(a.rows()).u(a.cols()).u(0).r(0.0);
            rec.launch(
                Kernel::MaxAbs,
                T::DTYPE,
                params,
                &[Some(Self::raw(a)), None, Some(result.ptr)],
                Grid::Threads(a.len()),
            )?;
        }
        rec.submit()?;
        let bits: Vec<u64> = self.read(&result.bytes, 1)?;
        Ok(match T::DTYPE {
            DType::F32 => T::from_f64(f32::from_bits(bits[0] as u32) as f64),
            DType::F64 => T::from_f64(f64::from_bits(bits[0])),
        })
    }
}
