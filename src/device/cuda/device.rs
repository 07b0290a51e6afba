//! [`CudaDevice`]: the CUDA backend, launching the kernels of `kernels/*.cu` through cudarc.
//!
//! Layered like cudarc: the driver and NVRTC are probed before any other call (cudarc panics
//! when a library is absent), every driver or NVRTC failure becomes a typed error, and each
//! `unsafe` launch states what makes it sound. The kernel compositions are shared with the wgpu
//! backend ([`compose`](crate::device::compose)).

use std::any::Any;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};

use super::abi::{LaunchPlan, Words, entry_name};
use super::{Family, compile, nvrtc_available};
use crate::device::gpu::{GpuDevice, Runtime};
use crate::device::gpu::{Grid, Kernel, KernelParams, Record};
use crate::device::launch::{GridLimits, LaunchPolicy};
use crate::device::{Device, Matrix, Op};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

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

// SAFETY: `Words` is `#[repr(C)]` plain old data with the layout of `struct Words { u64 w[16]; }`.
unsafe impl cudarc::driver::DeviceRepr for Words {}

/// One device allocation and its address, shared by the handles of [`CudaRuntime`].
pub struct CudaAllocation {
    /// Locked only for host-side copies, which cudarc takes by `&mut`. Ended by `Drop`: freed
    /// when the allocation owns its memory, released without a free when it borrows it.
    slice: Mutex<ManuallyDrop<CudaSlice<u8>>>,
    /// The device address, passed to kernels.
    ptr: u64,
    /// Bytes at `ptr` that kernels may touch, checked before every launch.
    bytes: usize,
    /// The driver context the address belongs to, checked before every launch.
    context: usize,
    /// What keeps borrowed memory alive ([`CudaDevice::matrix_from_device_ptr`]); `None` when
    /// the allocation owns its memory.
    owner: Option<Box<dyn Any + Send + Sync>>,
}

impl Drop for CudaAllocation {
    fn drop(&mut self) {
        let slot = self.slice.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: `slot` is taken exactly once, here, and never used again.
        let slice = unsafe { ManuallyDrop::take(slot) };
        match self.owner {
            // Frees the memory on the runtime's stream, after the work queued there.
            None => drop(slice),
            // Borrowed: only the handle ends; `owner` (dropped after this) keeps or frees it.
            Some(_) => {
                slice.leak();
            }
        }
    }
}

struct Inner {
    ctx: Arc<CudaContext>,
    /// `ctx`'s driver handle, the identity every allocation is checked against.
    context: usize,
    stream: Arc<CudaStream>,
    name: String,
    arch: String,
    /// Launch sizes from the device's memory.
    policy: LaunchPolicy,
    modules: Mutex<HashMap<Family, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(Kernel, DType), CudaFunction>>,
    /// cuBLAS on this runtime's stream, when [`CudaOptions::cublas`] turned it on.
    blas: Option<Mutex<CudaBlas>>,
}

/// The environment variable that turns cuBLAS on for gemm and SYRK: `cublas`.
pub const BLAS_ENV: &str = "LAPLACE_CUDA_BLAS";

/// How [`CudaDevice::with_options`] opens a GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Run gemm and unit-weight SYRK through cuBLAS (loaded dynamically, on the device's
    /// stream) instead of the library's gemm kernel; everything else runs the kernels.
    pub cublas: bool,
}

impl CudaOptions {
    /// Options from [`BLAS_ENV`]: `cublas` turns cuBLAS on.
    pub fn from_env() -> Self {
        CudaOptions {
            cublas: std::env::var(BLAS_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("cublas")),
        }
    }
}

/// The CUDA runtime on one GPU: a context, its stream, and the modules NVRTC compiled for the
/// device's architecture (at first use, cached). Clones share them.
#[derive(Clone)]
pub struct CudaRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CudaRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaRuntime")
            .field("name", &self.inner.name)
            .field("arch", &self.inner.arch)
            .finish()
    }
}

/// The CUDA backend: [`GpuDevice`] over [`CudaRuntime`], in f32 and f64.
///
/// ```no_run
/// use laplace_update::{CudaDevice, Device};
/// let gpu = CudaDevice::new(0)?;
/// let a = gpu.upload(&[1.0f64, 2.0, 3.0, 4.0], 2, 2)?;
/// assert_eq!(gpu.download(&a)?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub type CudaDevice = GpuDevice<CudaRuntime>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl GpuDevice<CudaRuntime> {
    /// GPU `ordinal` with [`CudaOptions::from_env`]. No driver, no NVRTC or no such device is
    /// [`Error::BackendUnavailable`] with the reason.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, &CudaOptions::from_env())
    }

    /// GPU `ordinal` with `options`; `BackendUnavailable` as [`CudaDevice::new`], and when
    /// cuBLAS is asked for but cannot be loaded.
    pub fn with_options(ordinal: usize, options: &CudaOptions) -> Result<Self> {
        // SAFETY: only tries to dlopen the candidate library names; nothing is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable("the NVIDIA driver library (libcuda.so) was not found"));
        }
        nvrtc_available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?;
        let stream = ctx.default_stream();
        Self::open(ctx, stream, options)
    }

    /// The device of an existing cudarc stream, such as a candle CUDA device's
    /// (`candle_core::CudaDevice::cuda_stream`): its kernels and copies run on `stream`, ordered
    /// with the other work its owner queues there, in the same context, so matrices made by
    /// [`CudaDevice::matrix_from_slice`] and [`CudaDevice::matrix_from_device_ptr`] go to the
    /// posterior without a copy or a host round trip.
    ///
    /// ```no_run
    /// use laplace_update::{CudaDevice, CudaOptions, Device};
    /// let ctx = cudarc::driver::CudaContext::new(0).unwrap();
    /// let stream = ctx.new_stream().unwrap();
    /// let gpu = CudaDevice::from_stream(stream.clone(), &CudaOptions::default())?;
    /// // Memory that some other code computed on the same stream, adopted in place.
    /// let features = stream.clone_htod(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    /// let phi = gpu.matrix_from_slice(features, 3, 2)?;
    /// assert_eq!(gpu.download(&phi)?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # Ok::<(), laplace_update::Error>(())
    /// ```
    ///
    /// A candle tensor's storage (candle built with its `cuda` feature, so not compiled here):
    ///
    /// ```ignore
    /// use candle_core::{Storage, cuda_backend::cudarc::driver::DevicePtr};
    /// let candle_gpu = candle_core::Device::new_cuda(0)?;
    /// let gpu = CudaDevice::from_stream(candle_gpu.as_cuda_device()?.cuda_stream(), &CudaOptions::default())?;
    /// let features = backbone.forward(&images)?.contiguous()?; // n × D, f32, on candle_gpu
    /// let (n, d) = features.dims2()?;
    /// let phi = {
    ///     let (storage, layout) = features.storage_and_layout();
    ///     let Storage::Cuda(cuda) = &*storage else { unreachable!() };
    ///     let slice = cuda.as_cuda_slice::<f32>()?;
    ///     let (base, _sync) = slice.device_ptr(slice.stream());
    ///     let ptr = base + (layout.start_offset() * 4) as u64;
    ///     // SAFETY: n · d contiguous f32 at `ptr` in this context, kept alive by the clone of
    ///     // `features` the matrix holds, and written by nothing while the matrix lives.
    ///     unsafe { gpu.matrix_from_device_ptr::<f32>(ptr, n, d, features.clone())? }
    /// };
    /// let post = Posterior::fit(&gpu, &phi, &labels, head.view(), None, &config)?;
    /// ```
    ///
    /// Errors: `BackendUnavailable` without NVRTC, or as [`CudaDevice::with_options`] for cuBLAS.
    pub fn from_stream(stream: Arc<CudaStream>, options: &CudaOptions) -> Result<Self> {
        nvrtc_available()?;
        Self::open(stream.context().clone(), stream, options)
    }

    fn open(ctx: Arc<CudaContext>, stream: Arc<CudaStream>, options: &CudaOptions) -> Result<Self> {
        let ordinal = ctx.ordinal();
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("device {ordinal}: {e:?}")))?;
        let memory = ctx.total_mem().ok().map(|b| b as u64);
        let largest = u32::MAX as u64 * 8;
        let blas = if options.cublas {
            // SAFETY: only tries to dlopen the candidate library names; nothing is called.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err(unavailable(
                    "cuBLAS (libcublas.so) was not found on the library path; unset LAPLACE_CUDA_BLAS to use the library's kernels",
                ));
            }
            let blas = CudaBlas::new(stream.clone()).map_err(|e| unavailable(format!("cuBLAS: {e:?}")))?;
            Some(Mutex::new(blas))
        } else {
            None
        };
        let suffix = if blas.is_some() { " + cuBLAS" } else { "" };
        Ok(GpuDevice::from_runtime(CudaRuntime {
            inner: Arc::new(Inner {
                context: ctx.cu_ctx() as usize,
                ctx,
                stream,
                name: format!("cuda:{ordinal} {name}{suffix}"),
                arch: format!("sm_{major}{minor}"),
                policy: LaunchPolicy::hardware(memory.map_or(largest, |m| m.min(largest)), memory),
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                blas,
            }),
        }))
    }

    /// The stream every kernel and copy of this device runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.runtime.inner.stream
    }

    /// Adopts `slice` (rows · cols values of `T`, row-major) as a matrix without a copy: the
    /// matrix owns the memory from now on and frees it on this device's stream. Work queued on
    /// the slice's own stream is waited for first when that is another stream.
    ///
    /// Errors: `InvalidArgument` when the slice belongs to another context, `ShapeMismatch`
    /// when its length is not rows · cols, `Unsupported` past 2³² elements.
    pub fn matrix_from_slice<T: Scalar>(
        &self,
        slice: CudaSlice<T>,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix<Self, T>> {
        let inner = &self.runtime.inner;
        if slice.context().cu_ctx() as usize != inner.context {
            return Err(Error::invalid(
                "slice",
                "belongs to another CUDA context; make the device with CudaDevice::from_stream on the slice's stream",
            ));
        }
        crate::device::check_upload(slice.len(), rows, cols)?;
        if slice.is_empty() {
            return self.zeros(rows, cols);
        }
        if !Arc::ptr_eq(slice.stream(), &inner.stream) {
            slice
                .stream()
                .synchronize()
                .map_err(|e| device_error("waiting for the slice's stream", e))?;
        }
        let bytes = slice.num_bytes();
        let ptr = slice.leak();
        // SAFETY: `leak` handed over `ptr`, an allocation of this context holding `bytes` bytes
        // that nothing else frees; the new slice owns it, every byte of it already holds a
        // value of `T` (plain old data), and it is freed once, when the matrix's last handle
        // drops.
        let owned = unsafe { inner.stream.upgrade_device_ptr::<u8>(ptr, bytes) };
        let raw = Arc::new(CudaAllocation {
            slice: Mutex::new(ManuallyDrop::new(owned)),
            ptr,
            bytes,
            context: inner.context,
            owner: None,
        });
        self.matrix_over(raw, rows, cols)
    }

    /// A matrix over rows · cols values of `T` at `ptr`, memory this device does not own:
    /// `owner` is kept while the matrix lives and dropped after it, and nothing is freed.
    ///
    /// # Safety
    ///
    /// `ptr` must address at least rows · cols initialised values of `T`, row-major, in memory
    /// allocated in this device's context that stays allocated while `owner` lives. Nothing
    /// may write that memory while the matrix exists except through this device or work
    /// ordered with its stream; operations that change the matrix write the memory in place.
    ///
    /// Errors: `InvalidArgument` for a null or misaligned `ptr`, `Unsupported` past 2³²
    /// elements.
    pub unsafe fn matrix_from_device_ptr<T: Scalar>(
        &self,
        ptr: u64,
        rows: usize,
        cols: usize,
        owner: impl Any + Send + Sync,
    ) -> Result<Matrix<Self, T>> {
        let inner = &self.runtime.inner;
        if ptr == 0 || !ptr.is_multiple_of(std::mem::align_of::<T>() as u64) {
            return Err(Error::invalid(
                "ptr",
                format!("{ptr:#x} is null or not aligned to {} bytes", std::mem::align_of::<T>()),
            ));
        }
        let bytes = rows
            .checked_mul(cols)
            .and_then(|l| l.checked_mul(std::mem::size_of::<T>()))
            .ok_or_else(|| Error::Unsupported(format!("a {rows} × {cols} matrix overflows a byte count")))?;
        // SAFETY: by this function's contract `ptr` addresses `bytes` bytes of this context
        // that stay allocated while `owner` does; the slice is never freed (`Drop` releases it
        // with `leak`) and the allocation holds `owner` until then.
        let view = unsafe { inner.stream.upgrade_device_ptr::<u8>(ptr, bytes.max(1)) };
        let raw = Arc::new(CudaAllocation {
            slice: Mutex::new(ManuallyDrop::new(view)),
            ptr,
            bytes,
            context: inner.context,
            owner: Some(Box::new(owner)),
        });
        self.matrix_over(raw, rows, cols)
    }

    /// The architecture the kernels are compiled for, e.g. `"sm_90"`.
    pub fn arch(&self) -> &str {
        &self.runtime.inner.arch
    }

    /// Whether gemm and SYRK run through cuBLAS.
    pub fn uses_cublas(&self) -> bool {
        self.runtime.inner.blas.is_some()
    }
}

impl CudaRuntime {
    /// A device error unless `a` belongs to this runtime's context: an address from another
    /// context (another GPU, or a device opened apart) is not valid in this one's kernels.
    fn check_context(&self, a: &CudaAllocation) -> Result<()> {
        match a.context == self.inner.context {
            true => Ok(()),
            false => Err(Error::Device {
                backend: "cuda",
                reason: "a matrix from another CUDA context was passed to this device".into(),
            }),
        }
    }

    fn function(&self, kernel: Kernel, dtype: DType) -> Result<CudaFunction> {
        if let Some(f) = lock(&self.inner.functions).get(&(kernel, dtype)) {
            return Ok(f.clone());
        }
        let family = kernel.family();
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
        let name = entry_name(kernel, dtype);
        let f = module
            .load_function(&name)
            .map_err(|e| device_error(&format!("kernel `{name}`"), e))?;
        lock(&self.inner.functions).insert((kernel, dtype), f.clone());
        Ok(f)
    }
}

/// Launches on the device's stream; [`Record::submit`] waits for them.
pub struct CudaLaunches {
    dev: CudaRuntime,
}

impl Record for CudaLaunches {
    type Raw = Arc<CudaAllocation>;

    fn launch_slots(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        buffers: &[Option<Arc<CudaAllocation>>],
        grid: Grid,
    ) -> Result<()> {
        let slot_bytes: Vec<Option<usize>> = buffers.iter().map(|b| b.as_ref().map(|a| a.bytes)).collect();
        let LaunchPlan { words, blocks, threads } =
            LaunchPlan::new(kernel, dtype, &params, &slot_bytes, grid, GridLimits::CUDA)?;
        for b in buffers.iter().flatten() {
            self.dev.check_context(b)?;
        }
        let f = self.dev.function(kernel, dtype)?;
        let cfg = LaunchConfig {
            grid_dim: (blocks[0], blocks[1], blocks[2]),
            block_dim: (threads[0], threads[1], threads[2]),
            shared_mem_bytes: 0,
        };
        let pointers: Vec<u64> = buffers.iter().map(|b| b.as_ref().map_or(0, |a| a.ptr)).collect();
        let mut args = self.dev.inner.stream.launch_builder(&f);
        args.arg(&words);
        for p in &pointers {
            args.arg(p);
        }
        // SAFETY: the argument list matches the kernel's C signature (the parameter block of
        // the kernel's family, then one device pointer per slot of the family, both checked by
        // `LaunchPlan::new`). Every pointer is a live allocation of this context (held by
        // `buffers` until the stream is synchronised in `submit`; the context was checked
        // above), and `LaunchPlan::new` checked that each slot the kernel touches under these
        // parameters and this grid holds every byte it may touch (`registry::slot_extents`)
        // and is not null, whoever built the parameters.
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

impl Runtime for CudaRuntime {
    type Raw = Arc<CudaAllocation>;
    type Rec = CudaLaunches;

    fn name(&self) -> String {
        self.inner.name.clone()
    }

    fn free_memory(&self) -> Option<u64> {
        self.inner.ctx.mem_get_info().ok().map(|(free, _total)| free as u64)
    }

    fn check_dtype(&self, _dtype: DType) -> Result<()> {
        Ok(())
    }

    fn alloc(&self, bytes: usize, label: &'static str) -> Result<Arc<CudaAllocation>> {
        let slice = self
            .inner
            .stream
            .alloc_zeros::<u8>(bytes.max(8))
            .map_err(|e| device_error(&format!("allocating {label} ({bytes} bytes)"), e))?;
        let ptr = slice.device_ptr(&self.inner.stream).0;
        Ok(Arc::new(CudaAllocation {
            bytes: slice.len(),
            slice: Mutex::new(ManuallyDrop::new(slice)),
            ptr,
            context: self.inner.context,
            owner: None,
        }))
    }

    fn write(&self, dst: &Arc<CudaAllocation>, bytes: &[u8]) -> Result<()> {
        let mut slice = lock(&dst.slice);
        let mut view = slice.slice_mut(..bytes.len());
        self.inner
            .stream
            .memcpy_htod(bytes, &mut view)
            .map_err(|e| device_error("upload", e))
    }

    fn read(&self, src: &Arc<CudaAllocation>, bytes: usize) -> Result<Vec<u8>> {
        let slice = lock(&src.slice);
        let mut out = self
            .inner
            .stream
            .clone_dtoh(&slice.slice(..bytes))
            .map_err(|e| device_error("reading back", e))?;
        out.truncate(bytes);
        Ok(out)
    }

    fn copy(&self, src: &Arc<CudaAllocation>, dst: &Arc<CudaAllocation>, bytes: usize) -> Result<()> {
        let from = lock(&src.slice);
        let mut to = lock(&dst.slice);
        let mut view = to.slice_mut(..bytes);
        self.inner
            .stream
            .memcpy_dtod(&from.slice(..bytes), &mut view)
            .map_err(|e| device_error("copy", e))
    }

    fn recorder(&self) -> CudaLaunches {
        CudaLaunches { dev: self.clone() }
    }

    fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| device_error("synchronize", e))
    }

    fn grid_limits(&self) -> GridLimits {
        GridLimits::CUDA
    }

    fn policy(&self) -> &LaunchPolicy {
        &self.inner.policy
    }

    /// cuBLAS gemm on the column-major view: row-major `C = op(A) op(B)` is column-major
    /// `Cᵀ = op(B)ᵀ op(A)ᵀ`, and a row-major matrix is its transpose column-major, so the call
    /// is `gemm(op_B, op_A, n, m, k, B, ld_B, A, ld_A, C, n)` with the stored column counts as
    /// leading dimensions.
    fn vendor_gemm(
        &self,
        dtype: DType,
        (m, n, k): (usize, usize, usize),
        (a, ta, lda): (&Arc<CudaAllocation>, Op, usize),
        (b, tb, ldb): (&Arc<CudaAllocation>, Op, usize),
        c: &Arc<CudaAllocation>,
        alpha: f64,
        beta: f64,
    ) -> Result<bool> {
        use cudarc::cublas::{result, sys::cublasOperation_t};
        let Some(blas) = &self.inner.blas else { return Ok(false) };
        for x in [a, b, c] {
            self.check_context(x)?;
        }
        let dims: Option<Vec<i32>> = [m, n, k, lda.max(1), ldb.max(1)]
            .iter()
            .map(|&v| i32::try_from(v).ok())
            .collect();
        let Some([m, n, k, lda, ldb]) = dims.as_deref().map(|d| [d[0], d[1], d[2], d[3], d[4]]) else {
            return Ok(false);
        };
        if m == 0 || n == 0 {
            return Ok(true);
        }
        let op = |o: Op| match o {
            Op::N => cublasOperation_t::CUBLAS_OP_N,
            Op::T => cublasOperation_t::CUBLAS_OP_T,
        };
        let handle = *lock(blas).handle();
        // SAFETY: the pointers are live allocations of this context (held by the handles
        // borrowed here) of whole matrices whose shapes the composition checked: A holds m·k,
        // B k·n and C m·n elements of `dtype`, with the leading dimensions their stored column
        // counts. The handle is bound to this runtime's stream, so the call is ordered with
        // every kernel launched before and after it; α and β are host scalars read during the
        // call.
        let status = unsafe {
            match dtype {
                DType::F32 => {
                    let (alpha, beta) = (alpha as f32, beta as f32);
                    result::sgemm(
                        handle,
                        op(tb),
                        op(ta),
                        n,
                        m,
                        k,
                        &alpha,
                        b.ptr as *const f32,
                        ldb,
                        a.ptr as *const f32,
                        lda,
                        &beta,
                        c.ptr as *mut f32,
                        n,
                    )
                }
                DType::F64 => result::dgemm(
                    handle,
                    op(tb),
                    op(ta),
                    n,
                    m,
                    k,
                    &alpha,
                    b.ptr as *const f64,
                    ldb,
                    a.ptr as *const f64,
                    lda,
                    &beta,
                    c.ptr as *mut f64,
                    n,
                ),
            }
        };
        status.map_err(|e| Error::Device {
            backend: "cuda",
            reason: format!("cuBLAS gemm: {e:?}"),
        })?;
        Ok(true)
    }

    /// cuBLAS SYRK: row-major A (n × d) is column-major `Aᵀ` (d × n, leading dimension d), so
    /// `syrk(upper, N, d, n, Aᵀ)` gives `AᵀA`; its column-major upper triangle is the row-major
    /// lower one.
    fn vendor_syrk(
        &self,
        dtype: DType,
        (n, d): (usize, usize),
        a: &Arc<CudaAllocation>,
        c: &Arc<CudaAllocation>,
        alpha: f64,
        beta: f64,
    ) -> Result<bool> {
        use cudarc::cublas::sys::{self, cublasFillMode_t, cublasOperation_t, cublasStatus_t};
        let Some(blas) = &self.inner.blas else { return Ok(false) };
        self.check_context(a)?;
        self.check_context(c)?;
        let (Ok(n), Ok(d)) = (i32::try_from(n), i32::try_from(d)) else {
            return Ok(false);
        };
        if d == 0 {
            return Ok(true);
        }
        let (upper, no_trans) = (cublasFillMode_t::CUBLAS_FILL_MODE_UPPER, cublasOperation_t::CUBLAS_OP_N);
        let handle = *lock(blas).handle();
        // SAFETY: as in `vendor_gemm`: A holds n·d and C d·d elements of `dtype` in live
        // allocations of this context, the handle runs on this runtime's stream, and α and β
        // are host scalars read during the call.
        let status = unsafe {
            match dtype {
                DType::F32 => {
                    let (alpha, beta) = (alpha as f32, beta as f32);
                    sys::cublasSsyrk_v2(
                        handle,
                        upper,
                        no_trans,
                        d,
                        n,
                        &alpha,
                        a.ptr as *const f32,
                        d,
                        &beta,
                        c.ptr as *mut f32,
                        d,
                    )
                }
                DType::F64 => sys::cublasDsyrk_v2(
                    handle,
                    upper,
                    no_trans,
                    d,
                    n,
                    &alpha,
                    a.ptr as *const f64,
                    d,
                    &beta,
                    c.ptr as *mut f64,
                    d,
                ),
            }
        };
        if status != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Device {
                backend: "cuda",
                reason: format!("cuBLAS syrk: {status:?}"),
            });
        }
        Ok(true)
    }
}
