//! The WGSL kernel table, the pipeline cache and the command recorder.
//!
//! Every entry point of `shaders/*.wgsl` appears once in [`Kernel`], with the shader file it
//! lives in and its bindings. Pipelines and their bind group layouts are built on first use and
//! cached for the life of the device; shader creation runs inside an error scope so that a WGSL
//! error surfaces as a typed error naming the shader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::{Context, backend_error};
use crate::device::gpu::{Family, Grid, Kernel, KernelParams, Record};
use crate::device::launch::{GridLimits, fold_threads};
use crate::device::registry::Access;
use crate::error::{Error, Result};
use crate::scalar::DType;

/// A built pipeline and the layout its bind groups are made against.
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// Shader modules and pipelines, built once per device.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<Family, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Kernel, Arc<Pipeline>>>,
}

impl PipelineCache {
    /// The pipeline of `kernel`, built now if this is its first use.
    pub(crate) fn get(&self, device: &wgpu::Device, kernel: Kernel) -> Result<Arc<Pipeline>> {
        if let Some(p) = lock(&self.pipelines).get(&kernel) {
            return Ok(p.clone());
        }
        let (shader, entry) = (kernel.family(), kernel.name());
        let module = self.module(device, shader)?;
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, access) in shader.slots().iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: *access == Access::Read,
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(entry),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(backend_error(format!(
                "pipeline `{entry}` of shader `{}`: {e}",
                shader.wgsl_file()
            )));
        }
        let built = Arc::new(Pipeline { pipeline, layout });
        lock(&self.pipelines).insert(kernel, built.clone());
        Ok(built)
    }

    fn module(&self, device: &wgpu::Device, shader: Family) -> Result<wgpu::ShaderModule> {
        if let Some(m) = lock(&self.modules).get(&shader) {
            return Ok(m.clone());
        }
        let module = compile(device, shader.wgsl_file(), shader.wgsl())?;
        lock(&self.modules).insert(shader, module.clone());
        Ok(module)
    }
}

/// Builds a shader module inside a validation error scope: invalid WGSL is a typed
/// [`Error::Device`] that names the file and carries the compiler's message.
pub(crate) fn compile(device: &wgpu::Device, file: &str, source: &str) -> Result<wgpu::ShaderModule> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(file),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(backend_error(format!("shader `{file}` does not compile: {e}"))),
        None => Ok(module),
    }
}

/// Locks a cache mutex; a poisoned lock still holds a consistent map (entries are inserted
/// whole), so it is used as is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Words in every uniform parameter block (the largest `Params` struct, gemm's, has 28).
const PARAMS_WORDS: usize = 32;

/// The uniform bytes of `params`: the integers, then the reals as f32, zero-padded to
/// [`PARAMS_WORDS`] words, so every shader's `Params` struct fits and omitted fields read 0.
fn uniform_bytes(params: &KernelParams) -> Vec<u8> {
    let mut words: Vec<u32> = params.ints.clone();
    words.extend(params.reals.iter().map(|r| (*r as f32).to_bits()));
    debug_assert!(words.len() <= PARAMS_WORDS);
    words.resize(PARAMS_WORDS, 0);
    bytemuck::cast_slice(&words).to_vec()
}

/// Checks a 3-D grid against the per-dimension limit: the compositions split their grids with
/// [`launch::split_grid`](crate::device::launch::split_grid), so this only guards the invariant.
fn checked_groups(grid: GridLimits, x: usize, y: usize, z: usize) -> Result<[u32; 3]> {
    let max = grid.max_blocks;
    if x > max[0] || y > max[1] || z > max[2] {
        return Err(Error::Unsupported(format!(
            "grid {x} x {y} x {z} exceeds the adapter's {} workgroups per dimension",
            max[0]
        )));
    }
    Ok([x.max(1) as u32, y.max(1) as u32, z.max(1) as u32])
}

/// Records dispatches and copies into one command buffer, submitted at once.
pub struct Recorder {
    ctx: Arc<Context>,
    encoder: wgpu::CommandEncoder,
}

impl Record for Recorder {
    type Raw = wgpu::Buffer;

    fn launch_slots(
        &mut self,
        kernel: Kernel,
        dtype: DType,
        params: KernelParams,
        buffers: &[Option<wgpu::Buffer>],
        grid: Grid,
    ) -> Result<()> {
        debug_assert_eq!(dtype, DType::F32, "the wgpu backend checks for f32 at its boundary");
        let slot_bytes: Vec<Option<usize>> = buffers.iter().map(|b| b.as_ref().map(|b| b.size() as usize)).collect();
        crate::device::registry::check_launch(kernel, dtype, &params, &slot_bytes, grid)?;
        let groups = match grid {
            Grid::Threads(n) => {
                let (x, y) = kernel.block_threads();
                fold_threads(n, (x * y) as usize, self.ctx.grid)?
            }
            Grid::Blocks(x, y, z) => checked_groups(self.ctx.grid, x, y, z)?,
        };
        let refs: Vec<Option<&wgpu::Buffer>> = buffers.iter().map(|b| b.as_ref()).collect();
        self.dispatch(kernel, params, &refs, groups)
    }

    fn submit(self) -> Result<()> {
        self.ctx.queue.submit([self.encoder.finish()]);
        self.ctx.wait()
    }
}

impl Recorder {
    pub(crate) fn new(ctx: &Arc<Context>) -> Self {
        let encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        Recorder {
            ctx: ctx.clone(),
            encoder,
        }
    }

    /// Records one dispatch of `kernel` over `groups` workgroups.
    pub(crate) fn dispatch(
        &mut self,
        kernel: Kernel,
        params: KernelParams,
        buffers: &[Option<&wgpu::Buffer>],
        groups: [u32; 3],
    ) -> Result<()> {
        let bind_group = self.bind(kernel, params, buffers)?;
        self.dispatch_bound(&[(kernel, &bind_group, groups)], 1)
    }

    /// A bind group for `kernel`, to be dispatched (possibly many times) with
    /// [`Recorder::dispatch_bound`].
    pub(crate) fn bind(
        &mut self,
        kernel: Kernel,
        params: KernelParams,
        buffers: &[Option<&wgpu::Buffer>],
    ) -> Result<wgpu::BindGroup> {
        let slots = kernel.family().slots().len();
        debug_assert!(buffers.len() <= slots, "{kernel:?}: too many buffers");
        let pipeline = self.ctx.pipelines.get(&self.ctx.device, kernel)?;
        let uniform = self.ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &uniform_bytes(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        for slot in 0..slots {
            let buffer = buffers
                .get(slot)
                .copied()
                .flatten()
                .unwrap_or(&self.ctx.placeholders[slot]);
            entries.push(wgpu::BindGroupEntry {
                binding: slot as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        Ok(self.ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout,
            entries: &entries,
        }))
    }

    /// Records `steps` (kernel, bind group, workgroups), in order, `times` times over, in one
    /// compute pass: a loop run entirely on the device, with no host round trip between steps.
    pub(crate) fn dispatch_bound(
        &mut self,
        steps: &[(Kernel, &wgpu::BindGroup, [u32; 3])],
        times: usize,
    ) -> Result<()> {
        let pipelines = steps
            .iter()
            .map(|(kernel, _, _)| self.ctx.pipelines.get(&self.ctx.device, *kernel))
            .collect::<Result<Vec<_>>>()?;
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        for _ in 0..times {
            for ((_, bind_group, groups), pipeline) in steps.iter().zip(&pipelines) {
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, *bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
        }
        Ok(())
    }

    /// Records a copy of `bytes` bytes between two distinct buffers.
    pub(crate) fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        if bytes > 0 {
            self.encoder
                .copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::wgpu::{WgpuDevice, WgpuOptions};

    /// Launches whose parameters reach past their buffers are refused before they run.
    #[test]
    fn launches_are_bounded_by_their_buffers() {
        let options = WgpuOptions {
            allow_software: true,
            ..WgpuOptions::default()
        };
        match WgpuDevice::with_options(&options) {
            Ok(gpu) => crate::device::gpu::check_launches_are_bounded(&gpu),
            Err(e) if !std::env::var("LAPLACE_REQUIRE").unwrap_or_default().contains("wgpu") => {
                eprintln!("SKIPPED wgpu: {e}")
            }
            Err(e) => panic!("LAPLACE_REQUIRE names wgpu: {e}"),
        }
    }

    /// A WGSL error is a typed error naming the shader, not a panic.
    #[test]
    fn invalid_wgsl_is_a_typed_error_naming_the_shader() {
        let options = WgpuOptions {
            allow_software: true,
            ..WgpuOptions::default()
        };
        let Ok(gpu) = WgpuDevice::with_options(&options) else {
            eprintln!("SKIPPED wgpu: no adapter");
            return;
        };
        let broken = "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }";
        match compile(&gpu.runtime.ctx.device, "broken.wgsl", broken) {
            Err(Error::Device {
                backend: "wgpu",
                reason,
            }) => assert!(reason.contains("broken.wgsl"), "{reason}"),
            Err(other) => panic!("wrong error: {other:?}"),
            Ok(_) => panic!("invalid WGSL compiled"),
        }
        // The device still works afterwards.
        assert!(gpu.runtime.ctx.wait().is_ok());
    }
}
