//! [`GpuDevice`]: the one GPU [`Device`], written once over a small [`Runtime`] trait.
//!
//! A runtime allocates, copies and launches; everything else (the primitives' kernel
//! compositions in `src/device/compose.rs`, the fused operations' in `src/device/ops/`, the
//! launch plans of [`launch`](super::launch), the 32-bit indexing limit, shape checks) is shared. [`WgpuDevice`](super::WgpuDevice)
//! and [`CudaDevice`](super::cuda::CudaDevice) are `GpuDevice` over their runtimes; a new
//! runtime (Metal, ROCm, a CPU emulator of the kernels) is one file implementing [`Runtime`].

use std::marker::PhantomData;

use super::launch::{GridLimits, LaunchPolicy};
pub use super::registry::{Args, Family, Grid, Kernel, KernelParams};
use super::{DeviceBuffer, Matrix, Op};
use crate::error::{Error, Result};
use crate::scalar::{DType, Scalar};

/// What a GPU backend provides: memory, copies and kernel launches.
///
/// Buffers are byte allocations; [`GpuDevice`] tracks their element type and length. The
/// trait, like the whole runtime layer, is private to the crate: kernels launch only from the
/// compositions in `compose.rs` and `ops/`.
pub trait Runtime: Clone + Send + Sync + std::fmt::Debug + 'static {
    /// A handle to a device allocation, cheap to clone; the allocation lives while a handle does.
    type Raw: Clone + Send + Sync;
    /// A queue of launches.
    type Rec: Record<Raw = Self::Raw>;

    /// Human-readable name of the device.
    fn name(&self) -> String;
    /// Bytes free in the device's memory, where the runtime can say.
    fn free_memory(&self) -> Option<u64> {
        None
    }
    /// `Unsupported` unless kernels run in `dtype` here.
    fn check_dtype(&self, dtype: DType) -> Result<()>;
    /// A new zero-filled allocation of `bytes` bytes (at least 1).
    fn alloc(&self, bytes: usize, label: &'static str) -> Result<Self::Raw>;
    /// Writes `bytes` at the start of `dst`.
    fn write(&self, dst: &Self::Raw, bytes: &[u8]) -> Result<()>;
    /// Reads the first `bytes` bytes of `src`, after all queued work.
    fn read(&self, src: &Self::Raw, bytes: usize) -> Result<Vec<u8>>;
    /// Copies the first `bytes` bytes of `src` to `dst`.
    fn copy(&self, src: &Self::Raw, dst: &Self::Raw, bytes: usize) -> Result<()>;
    /// An empty launch queue.
    fn recorder(&self) -> Self::Rec;
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    /// The largest grid one launch may have.
    fn grid_limits(&self) -> GridLimits;
    /// Contraction, scratch and Monte Carlo sizes per launch.
    fn policy(&self) -> &LaunchPolicy;

    /// `C ← β C + α op(A) op(B)` for whole row-major matrices, C m × n over a contraction of
    /// k, each operand given with its stored column count, by a vendor BLAS when the runtime
    /// has one turned on. `Ok(false)`: none, the gemm kernel runs instead.
    #[allow(clippy::too_many_arguments)]
    fn vendor_gemm(
        &self,
        _dtype: DType,
        _shape: (usize, usize, usize),
        _a: (&Self::Raw, Op, usize),
        _b: (&Self::Raw, Op, usize),
        _c: &Self::Raw,
        _alpha: f64,
        _beta: f64,
    ) -> Result<bool> {
        Ok(false)
    }

    /// The lower triangle (row-major) of `C ← β C + α AᵀA` for row-major A (n × d) and C
    /// (d × d) by a vendor BLAS, as [`Runtime::vendor_gemm`]; the caller mirrors it.
    fn vendor_syrk(
        &self,
        _dtype: DType,
        _shape: (usize, usize),
        _a: &Self::Raw,
        _c: &Self::Raw,
        _alpha: f64,
        _beta: f64,
    ) -> Result<bool> {
        Ok(false)
    }
}

/// "No failure" in a status word.
pub(crate) const NONE: u32 = u32::MAX;

/// A queue of launches, submitted at once.
pub trait Record {
    /// A backend's handle to a device buffer.
    type Raw: Clone;
    /// Records one launch of `kernel` on its named buffers.
    fn launch(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        args: Args<Self::Raw>,
        grid: Grid,
    ) -> Result<()> {
        let slots = args.into_slots(kernel)?;
        self.launch_slots(kernel, dtype, params, &slots, grid)
    }

    /// Records one launch on the family's slots in order (`None`: a slot the kernel does not
    /// take). Every implementation runs `registry::check_launch` first: a `Device` error, and
    /// nothing launched, unless each slot holds what the kernel may touch under `params` and
    /// `grid`.
    fn launch_slots(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        buffers: &[Option<Self::Raw>],
        grid: Grid,
    ) -> Result<()>;
    /// Submits the launches and waits for them.
    fn submit(self) -> Result<()>;
}

/// The fused operations of every GPU runtime: kernel compositions (see [`ops`](super::ops)), the
/// same for wgpu, CUDA and the CUDA emulator.
#[derive(Debug, Clone, Copy)]
pub struct Kernels;

/// `len` elements of `T` in a runtime allocation.
pub struct GpuBuffer<R: Runtime, T> {
    pub(crate) raw: R::Raw,
    len: usize,
    _t: PhantomData<T>,
}

impl<R: Runtime, T: Send + Sync> DeviceBuffer for GpuBuffer<R, T> {
    fn len(&self) -> usize {
        self.len
    }
}

/// A GPU device: the kernel compositions over a runtime (CUDA, wgpu, the CUDA emulator).
/// Clones share the runtime.
#[derive(Clone, Debug)]
pub struct GpuDevice<R: Runtime> {
    pub(crate) runtime: R,
}

pub(crate) type GpuMatrix<R, T> = Matrix<GpuDevice<R>, T>;

/// The handle of a matrix's allocation.
pub(crate) fn raw<R: Runtime, T: Scalar>(m: &GpuMatrix<R, T>) -> R::Raw {
    m.buffer().raw.clone()
}

impl<R: Runtime> GpuDevice<R> {
    /// The device over `runtime`.
    pub(crate) fn from_runtime(runtime: R) -> Self {
        GpuDevice { runtime }
    }

    /// A zero-filled buffer of `len` elements of `T`, or a typed error when the runtime has no
    /// kernels in `T`, the kernels' 32-bit indices cannot reach it, or it cannot be allocated.
    /// Every matrix is made here, so no kernel sees an element type its runtime lacks.
    pub(crate) fn buffer<T: Scalar>(&self, len: usize, label: &'static str) -> Result<GpuBuffer<R, T>> {
        self.runtime.check_dtype(T::DTYPE)?;
        if len > u32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "{label}: {len} elements exceed the 32-bit indexing of the GPU kernels"
            )));
        }
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| Error::Device {
            backend: "gpu",
            reason: format!("{label}: {len} elements overflow a byte count"),
        })?;
        Ok(GpuBuffer {
            raw: self.runtime.alloc(bytes.max(1), label)?,
            len,
            _t: PhantomData,
        })
    }

    /// A rows × cols matrix over `raw`, an allocation the runtime made or adopted that holds at
    /// least rows · cols elements of `T` (the caller checked its byte length): the CUDA
    /// backend's adopted memory.
    #[cfg(feature = "cuda")]
    pub(crate) fn matrix_over<T: Scalar>(&self, raw: R::Raw, rows: usize, cols: usize) -> Result<GpuMatrix<R, T>> {
        self.runtime.check_dtype(T::DTYPE)?;
        let len = rows
            .checked_mul(cols)
            .filter(|&l| l <= u32::MAX as usize)
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "a {rows} × {cols} matrix exceeds the 32-bit indexing of the GPU kernels"
                ))
            })?;
        Matrix::from_parts(
            GpuBuffer {
                raw,
                len,
                _t: PhantomData,
            },
            rows,
            cols,
        )
    }

    /// A scratch buffer of `len` elements (zero-filled).
    pub(crate) fn scratch<T: Scalar>(&self, len: usize, label: &'static str) -> Result<R::Raw> {
        Ok(self.buffer::<T>(len, label)?.raw)
    }

    /// An empty launch queue.
    pub(crate) fn recorder(&self) -> R::Rec {
        self.runtime.recorder()
    }

    /// A status pair `[NONE, 0]` (first failing index, step counter) as 32-bit words.
    pub(crate) fn status(&self) -> Result<R::Raw> {
        let raw = self.runtime.alloc(16, "status")?;
        self.runtime.write(&raw, bytemuck::cast_slice(&[NONE, 0u32, 0, 0]))?;
        Ok(raw)
    }

    /// The first failing index recorded in `status`, if any.
    pub(crate) fn failed_at(&self, status: &R::Raw) -> Result<Option<usize>> {
        let word = u32::from_le_bytes(self.read_bytes(status)?);
        Ok((word != NONE).then_some(word as usize))
    }

    /// The first `N` bytes of `raw`; a runtime that returns fewer is a device error.
    pub(crate) fn read_bytes<const N: usize>(&self, raw: &R::Raw) -> Result<[u8; N]> {
        let bytes = self.runtime.read(raw, N)?;
        bytes
            .get(..N)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Device {
                backend: "gpu",
                reason: format!("read back {} bytes, expected {N}", bytes.len()),
            })
    }

    /// The largest grid one launch may have.
    pub(crate) fn grid_limits(&self) -> GridLimits {
        self.runtime.grid_limits()
    }

    /// Contraction, scratch and Monte Carlo sizes per launch.
    pub(crate) fn policy(&self) -> &LaunchPolicy {
        self.runtime.policy()
    }
}

/// The launch checks every runtime runs before a kernel: a launch whose parameters reach past
/// its buffers is a typed error and touches nothing; the same launch within them runs.
#[cfg(all(test, any(feature = "wgpu", feature = "cuda-emu")))]
pub(crate) fn check_launches_are_bounded<R: Runtime>(device: &GpuDevice<R>) {
    use super::registry::{ElementwiseParams, GemmParams};
    let runtime = &device.runtime;
    let refused = |kernel: Kernel, params: KernelParams, buffers: &[Option<R::Raw>], grid: Grid| {
        let mut rec = runtime.recorder();
        match rec.launch_slots(kernel, DType::F32, params, buffers, grid) {
            Err(Error::Device { reason, .. }) => reason,
            other => panic!("{kernel:?}: expected a refusal, got {:?}", other.err()),
        }
    };
    // Two 16-byte buffers, `axpy` over 4,096 elements.
    let x = runtime.alloc(16, "x").unwrap();
    let y = runtime.alloc(16, "y").unwrap();
    runtime.write(&x, bytemuck::cast_slice(&[1f32, 2.0, 3.0, 4.0])).unwrap();
    let axpy = |len: u32| -> KernelParams {
        ElementwiseParams {
            len,
            rows: 1,
            cols: len,
            alpha: 2.0,
            ..Default::default()
        }
        .into()
    };
    let buffers = [Some(x.clone()), Some(y.clone()), None];
    let reason = refused(Kernel::Axpy, axpy(4096), &buffers, Grid::Threads(4096));
    assert!(reason.contains("16384 bytes of slot"), "{reason}");
    // A slot the kernel reads, left empty.
    refused(Kernel::Axpy, axpy(4), &[None, Some(y.clone()), None], Grid::Threads(4));
    // Within the buffers it runs, and y = 2x.
    let mut rec = runtime.recorder();
    let args = Args::Elementwise {
        x: Some(x.clone()),
        y: y.clone(),
    };
    rec.launch(Kernel::Axpy, DType::F32, axpy(4), args, Grid::Threads(4))
        .unwrap();
    rec.submit().unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&runtime.read(&y, 16).unwrap());
    assert_eq!(got, [2.0, 4.0, 6.0, 8.0]);
    // A gemm whose C offset lies past C, and one whose batch entries walk past A.
    let gemm = |c_off: u32, a_bo: u32| -> KernelParams {
        GemmParams {
            m: 2,
            n: 2,
            k: 2,
            a_rs: 2,
            a_cs: 1,
            b_rs: 2,
            b_cs: 1,
            c_rs: 2,
            c_off,
            a_bo,
            inner: 1,
            alpha: 1.0,
            ..Default::default()
        }
        .into()
    };
    let four = [Some(x.clone()), Some(x.clone()), None, Some(y.clone())];
    refused(Kernel::Gemm, gemm(1, 0), &four, Grid::Blocks(1, 1, 1));
    refused(Kernel::Gemm, gemm(0, 4), &four, Grid::Blocks(1, 1, 2));
    let mut rec = runtime.recorder();
    let args = Args::Gemm {
        a: x.clone(),
        b: x.clone(),
        weights: None,
        c: y.clone(),
    };
    rec.launch(Kernel::Gemm, DType::F32, gemm(0, 0), args, Grid::Blocks(1, 1, 1))
        .unwrap();
    rec.submit().unwrap();
    // Another kernel's arguments.
    let mut rec = runtime.recorder();
    let args = Args::MaxAbs {
        x: x.clone(),
        result: y.clone(),
    };
    assert!(
        rec.launch(Kernel::Axpy, DType::F32, axpy(4), args, Grid::Threads(4))
            .is_err()
    );
    rec.submit().unwrap();
    // An index past 32 bits, and a wrong parameter block.
    let wide: KernelParams = ElementwiseParams {
        len: u32::MAX,
        rows: u32::MAX,
        cols: 2,
        ..Default::default()
    }
    .into();
    refused(Kernel::Transpose, wide, &buffers, Grid::Threads(4));
    refused(Kernel::Gemm, axpy(4), &four, Grid::Blocks(1, 1, 1));
}
