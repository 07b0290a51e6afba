//! The wgpu backend: WGSL compute kernels on Vulkan, Metal or DX12 (f32 only).
//!
//! Each kernel family of the [`Device`](super::Device) trait is one file under `shaders/`
//! (`gemm.wgsl`, `ggn.wgsl`, `kron.wgsl`, `cholesky.wgsl`, `predictive.wgsl`,
//! `elementwise.wgsl`); `src/device/wgpu/kernels.rs` lists every entry point. WGSL has no portable f64, so every
//! kernel called with `f64` returns [`Error::Unsupported`].
//!
//! Adapter choice: hardware adapters only, the discrete GPU first, unless a software adapter
//! (lavapipe, llvmpipe) is asked for with [`WgpuOptions::allow_software`] or the environment
//! variable `LAPLACE_WGPU_ADAPTER=software`. `LAPLACE_WGPU_ADAPTER` may also hold part of an
//! adapter's name to pick that adapter.
//!
//! Driver output: creating an instance loads the Vulkan loader, whose Mesa device-select layer
//! prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` to stderr where that
//! variable is unset (containers, CI runners). A program that owns its terminal can set
//! `NODEVICE_SELECT=1` before the first [`WgpuDevice::new`] (the `laplace-update` program does,
//! unless the user chose a device-select setting); the adapter choice above does not need the
//! layer.

mod kernels;

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::scalar::DType;

use crate::device::gpu::Family;
use crate::device::gpu::Record;
use crate::device::gpu::{GpuDevice, Runtime};
use crate::device::launch::{GridLimits, LaunchPolicy};
pub(crate) use kernels::{PipelineCache, Recorder};

/// The environment variable that selects a wgpu adapter: `software` allows software adapters,
/// `hardware` (the default) forbids them, anything else picks the adapter whose name contains it.
pub const ADAPTER_ENV: &str = "LAPLACE_WGPU_ADAPTER";

/// How [`WgpuDevice::with_options`] chooses an adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Allow software adapters (CPU rasterisers such as lavapipe); hardware is still preferred.
    pub allow_software: bool,
    /// Only adapters whose name contains this text (case-insensitive).
    pub name_contains: Option<String>,
    /// Open the device with at most this many workgroups per dispatch dimension (the adapter's
    /// limit when lower): runs the grid splitting of every launch plan at small sizes.
    pub max_workgroups_per_dimension: Option<u32>,
}

impl WgpuOptions {
    /// Options from [`ADAPTER_ENV`]: unset or `hardware` gives the defaults, `software` allows
    /// software adapters, anything else is an adapter-name filter (software allowed).
    pub fn from_env() -> Self {
        match std::env::var(ADAPTER_ENV) {
            Ok(v) if v.eq_ignore_ascii_case("software") => WgpuOptions {
                allow_software: true,
                ..WgpuOptions::default()
            },
            Ok(v) if v.is_empty() || v.eq_ignore_ascii_case("hardware") => WgpuOptions::default(),
            Ok(v) => WgpuOptions {
                allow_software: true,
                name_contains: Some(v),
                ..WgpuOptions::default()
            },
            Err(_) => WgpuOptions::default(),
        }
    }
}

/// What the device shares between clones: the wgpu device, its queue and its caches.
pub(crate) struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) limits: wgpu::Limits,
    /// The workgroup grid one dispatch may have.
    pub(crate) grid: GridLimits,
    /// Launch sizes: the software policy on software adapters, else from the buffer limit.
    pub(crate) policy: LaunchPolicy,
    pub(crate) pipelines: PipelineCache,
    /// The first uncaptured error or device loss, reported by the next operation.
    fault: Arc<Mutex<Option<String>>>,
    /// 4-byte buffers bound in the slots a kernel does not use (one per slot, so that no buffer
    /// is bound twice for writing).
    pub(crate) placeholders: Vec<wgpu::Buffer>,
}

impl Context {
    /// Waits for all submitted work and reports any fault the device raised meanwhile.
    pub(crate) fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| backend_error(format!("waiting for the device: {e}")))?;
        self.check_fault()
    }

    fn check_fault(&self) -> Result<()> {
        match kernels::lock(&self.fault).take() {
            Some(reason) => Err(backend_error(reason)),
            None => Ok(()),
        }
    }
}

pub(crate) fn backend_error(reason: impl Into<String>) -> Error {
    Error::Device {
        backend: "wgpu",
        reason: reason.into(),
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::BackendUnavailable {
        backend: "wgpu",
        reason: reason.into(),
    }
}

/// The wgpu runtime: one adapter's device and queue, its pipeline cache and limits. Clones
/// share them.
#[derive(Clone)]
pub struct WgpuRuntime {
    pub(crate) ctx: Arc<Context>,
}

impl std::fmt::Debug for WgpuRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuRuntime")
            .field("adapter", &self.ctx.info.name)
            .finish()
    }
}

/// The wgpu backend: [`GpuDevice`] over [`WgpuRuntime`]. f32 only (WGSL has no portable f64):
/// an f64 matrix is a typed [`Error::Unsupported`].
///
/// ```no_run
/// use laplace_update::{Device, WgpuDevice};
/// // Hardware adapters only; `LAPLACE_WGPU_ADAPTER=software` allows lavapipe.
/// let gpu = WgpuDevice::new()?;
/// let a = gpu.upload(&[1.0f32, 2.0, 3.0, 4.0], 2, 2)?;
/// assert_eq!(gpu.download(&a)?, vec![1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), laplace_update::Error>(())
/// ```
pub type WgpuDevice = GpuDevice<WgpuRuntime>;

impl GpuDevice<WgpuRuntime> {
    /// The best adapter that [`WgpuOptions::from_env`] allows.
    pub fn new() -> Result<Self> {
        Self::with_options(&WgpuOptions::from_env())
    }

    /// The best adapter that `options` allow: discrete, integrated, virtual, other, then
    /// software. No adapter is [`Error::BackendUnavailable`] with the adapters that were seen.
    pub fn with_options(options: &WgpuOptions) -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::PRIMARY,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let rank = |t: wgpu::DeviceType| match t {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let wanted = options.name_contains.as_ref().map(|s| s.to_lowercase());
        let best = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                (options.allow_software || info.device_type != wgpu::DeviceType::Cpu)
                    && wanted.as_ref().is_none_or(|w| info.name.to_lowercase().contains(w))
            })
            .min_by_key(|a| rank(a.get_info().device_type));
        let Some(adapter) = best else {
            let why = if seen.is_empty() {
                "no Vulkan, Metal or DX12 adapter found (is a driver or Mesa's lavapipe installed?)".to_string()
            } else {
                format!(
                    "no adapter matches (software allowed: {}, name filter: {:?}); adapters seen: {}; set {ADAPTER_ENV}=software to allow software adapters",
                    options.allow_software,
                    options.name_contains,
                    seen.join(", ")
                )
            };
            return Err(unavailable(why));
        };
        let info = adapter.get_info();
        let mut limits = adapter.limits();
        if let Some(cap) = options.max_workgroups_per_dimension {
            limits.max_compute_workgroups_per_dimension = limits.max_compute_workgroups_per_dimension.min(cap.max(1));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("laplace-update"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| unavailable(format!("{}: cannot open the device: {e}", info.name)))?;
        let fault = Arc::new(Mutex::new(None::<String>));
        let on_error = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            kernels::lock(&on_error).get_or_insert_with(|| e.to_string());
        }));
        let on_lost = fault.clone();
        device.set_device_lost_callback(move |reason, message| {
            kernels::lock(&on_lost).get_or_insert_with(|| format!("device lost ({reason:?}): {message}"));
        });
        let slots = Family::ALL.iter().map(|f| f.slots().len()).max().unwrap_or(0);
        let placeholders = (0..slots)
            .map(|_| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("unused slot"),
                    size: 16,
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let grid = GridLimits::uniform(limits.max_compute_workgroups_per_dimension as usize);
        let policy = if info.device_type == wgpu::DeviceType::Cpu {
            LaunchPolicy::software()
        } else {
            LaunchPolicy::hardware(limits.max_buffer_size.min(limits.max_storage_buffer_binding_size), None)
        };
        Ok(GpuDevice::from_runtime(WgpuRuntime {
            ctx: Arc::new(Context {
                device,
                queue,
                info,
                limits,
                grid,
                policy,
                pipelines: PipelineCache::default(),
                fault,
                placeholders,
            }),
        }))
    }

    /// The adapter's name, backend and type.
    pub fn adapter(&self) -> String {
        let i = &self.runtime.ctx.info;
        format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
    }

    /// Whether the adapter is a software rasteriser (lavapipe, llvmpipe).
    pub fn is_software(&self) -> bool {
        self.runtime.ctx.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest buffer the adapter allows, in bytes.
    pub fn max_buffer_bytes(&self) -> u64 {
        self.runtime.max_buffer_bytes()
    }
}

impl WgpuRuntime {
    fn max_buffer_bytes(&self) -> u64 {
        self.ctx
            .limits
            .max_buffer_size
            .min(self.ctx.limits.max_storage_buffer_binding_size)
    }
}

impl Runtime for WgpuRuntime {
    type Raw = wgpu::Buffer;
    type Rec = Recorder;

    fn name(&self) -> String {
        format!("wgpu: {} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn check_dtype(&self, dtype: DType) -> Result<()> {
        match dtype {
            DType::F32 => Ok(()),
            DType::F64 => Err(Error::Unsupported(
                "the wgpu backend computes in f32 only (WGSL has no portable f64); use the CPU backend for f64".into(),
            )),
        }
    }

    /// A zero-filled storage buffer (wgpu zero-initialises every buffer), or a typed error when
    /// it is larger than the adapter allows or cannot be allocated.
    fn alloc(&self, bytes: usize, label: &'static str) -> Result<wgpu::Buffer> {
        let bytes = bytes as u64;
        let limit = self.max_buffer_bytes();
        if bytes > limit {
            return Err(backend_error(format!(
                "cannot allocate {label} of {bytes} bytes: the adapter's largest storage buffer is {limit} bytes"
            )));
        }
        let scope = self.ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(backend_error(format!("cannot allocate {label} of {bytes} bytes: {e}")));
        }
        Ok(buffer)
    }

    fn write(&self, dst: &wgpu::Buffer, bytes: &[u8]) -> Result<()> {
        // Writes are in whole 4-byte words; a tail is padded with zeros.
        if bytes.len().is_multiple_of(4) {
            self.ctx.queue.write_buffer(dst, 0, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.ctx.queue.write_buffer(dst, 0, &padded);
        }
        Ok(())
    }

    /// Reads through a staging buffer.
    fn read(&self, src: &wgpu::Buffer, bytes: usize) -> Result<Vec<u8>> {
        if bytes == 0 {
            self.ctx.wait()?;
            return Ok(Vec::new());
        }
        let size = bytes.next_multiple_of(4) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut rec = Recorder::new(&self.ctx);
        rec.copy(src, 0, &staging, 0, size);
        rec.submit()?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.ctx.wait()?;
        rx.recv()
            .map_err(|_| backend_error("readback was never mapped"))?
            .map_err(|e| backend_error(format!("readback: {e}")))?;
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| backend_error(format!("readback: {e}")))?;
            view[..bytes].to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    fn copy(&self, src: &wgpu::Buffer, dst: &wgpu::Buffer, bytes: usize) -> Result<()> {
        let mut rec = Recorder::new(&self.ctx);
        rec.copy(src, 0, dst, 0, bytes.next_multiple_of(4) as u64);
        rec.submit()
    }

    fn recorder(&self) -> Recorder {
        Recorder::new(&self.ctx)
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    fn grid_limits(&self) -> GridLimits {
        self.ctx.grid
    }

    fn policy(&self) -> &LaunchPolicy {
        &self.ctx.policy
    }
}

/// Every WGSL source with its file name, for validation without an adapter.
pub fn shader_sources() -> Vec<(&'static str, &'static str)> {
    Family::ALL.iter().map(|f| (f.wgsl_file(), f.wgsl())).collect()
}
