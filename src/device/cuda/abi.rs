//! What the host side of a CUDA launch fixes, shared by the GPU runtime and the emulator: the
//! entry point's name, the parameter block's bytes and the grid and block dimensions.

use crate::device::gpu::{Grid, Kernel, KernelParams};
use crate::device::launch::{GridLimits, fold_threads};
use crate::error::{Error, Result};
use crate::scalar::DType;

/// The `extern "C"` entry point of `kernel` in `dtype`: `gemm_f32`.
pub(crate) fn entry_name(kernel: Kernel, dtype: DType) -> String {
    format!("{}_{}", kernel.name(), dtype.name())
}

/// One launch as a CUDA runtime issues it: the packed parameters and the grid and block.
pub(crate) struct LaunchPlan {
    /// The parameter block.
    pub(crate) words: Words,
    /// Blocks in x, y, z.
    pub(crate) blocks: [u32; 3],
    /// Threads per block in x, y, z.
    pub(crate) threads: [u32; 3],
}

impl LaunchPlan {
    /// The launch of `kernel` with `params` on slots of `slot_bytes` bytes over `grid`, within
    /// `limits`; a device error unless the parameters and slots are the family's and every
    /// slot holds what the kernel may touch ([`check_launch`](crate::device::registry::check_launch)).
    pub(crate) fn new(
        kernel: Kernel,
        dtype: DType,
        params: &KernelParams,
        slot_bytes: &[Option<usize>],
        grid: Grid,
        limits: GridLimits,
    ) -> Result<Self> {
        crate::device::registry::check_launch(kernel, dtype, params, slot_bytes, grid)?;
        let (blocks, threads) = launch_dims(kernel, grid, limits)?;
        Ok(LaunchPlan {
            words: Words::pack(params),
            blocks,
            threads,
        })
    }
}

/// The 16 × 64-bit parameter block every kernel takes by value (`Words` in `common.cuh`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct Words(pub(crate) [u64; 16]);

impl Words {
    /// C layout of a `Params` struct of doubles then 32-bit integers: each real in one word,
    /// then the integers two to a word, the first in the low half (little-endian).
    pub(crate) fn pack(params: &KernelParams) -> Words {
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

/// The grid (blocks) and block (threads) dimensions of one launch of `kernel`, within the
/// runtime's grid `limits`.
fn launch_dims(kernel: Kernel, grid: Grid, limits: GridLimits) -> Result<([u32; 3], [u32; 3])> {
    let (bx, by) = kernel.block_threads();
    let blocks = match grid {
        Grid::Threads(n) => fold_threads(n, (bx * by) as usize, limits)?,
        Grid::Blocks(x, y, z) => {
            // The compositions split their grids within these limits; this guards it.
            let max = limits.max_blocks;
            if x > max[0] || y > max[1] || z > max[2] {
                return Err(Error::Unsupported(format!(
                    "grid {x} x {y} x {z} exceeds the runtime's {} x {} x {} blocks",
                    max[0], max[1], max[2]
                )));
            }
            [x.max(1) as u32, y.max(1) as u32, z.max(1) as u32]
        }
    };
    Ok((blocks, [bx, by, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::gpu::Family;

    /// Reals first, one per word; then the integers, two per word, low half first.
    #[test]
    fn words_follow_the_c_layout() {
        let params = KernelParams {
            family: Family::Elementwise,
            ints: vec![7, 8, 9],
            reals: vec![1.5],
        };
        let w = Words::pack(&params);
        assert_eq!(w.0[0], 1.5f64.to_bits());
        assert_eq!(w.0[1], 7 | (8u64 << 32));
        assert_eq!(w.0[2], 9);
        assert!(w.0[3..].iter().all(|&x| x == 0));
    }
}
