//! Launch plans: how the GPU compositions cut their work into launches that fit a device's grid
//! limits, its 32-bit kernel indexing and its memory. Pure host code, so that every plan is
//! tested at the sizes users run without a GPU (`tests/launch_plans.rs`).
//!
//! - Block grids (the gemm kernel's 64 × 64 tiles × batch entries) are split into launches of
//!   at most [`GridLimits::max_blocks`] blocks per dimension; each launch passes its origin, so
//!   the kernel sees global tile and batch indices and the result does not depend on the split.
//! - 1-D launches are folded into (x, y) blocks; the kernels recover the linear index in 32 bits.
//! - Contraction lengths, scratch sizes and Monte Carlo sample counts per launch come from a
//!   [`LaunchPolicy`], derived from the device: software rasterisers bound the loop iterations of
//!   one invocation, hardware devices only their memory.
//!
//! ```
//! use laplace_update::device::launch::{GridLimits, LaunchPolicy, gemm_launches};
//! // `kron_congruence` at D = 768, K' = 9 multiplies a 10 × 9 basis into a 9 × (9·768²) matrix:
//! // 82,944 tiles in x, more than WebGPU's 65,535, so the grid is split into two launches.
//! let launches = gemm_launches((10, 9 * 768 * 768, 9), 1, GridLimits::WEBGPU, &LaunchPolicy::software());
//! assert_eq!(launches.len(), 2);
//! assert!(launches.iter().all(|l| l.part.size[0] as usize <= 65_535));
//! ```

use crate::error::{Error, Result};

/// Side of the square output tile one gemm block computes.
pub const GEMM_TILE: usize = 64;

/// The largest grid a device launches at once, in blocks (workgroups) per dimension x, y, z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridLimits {
    /// Blocks per dimension.
    pub max_blocks: [usize; 3],
}

impl GridLimits {
    /// CUDA: 2³¹ − 1 blocks in x, 65,535 in y and z.
    pub const CUDA: GridLimits = GridLimits {
        max_blocks: [i32::MAX as usize, 65_535, 65_535],
    };
    /// WebGPU's default `maxComputeWorkgroupsPerDimension`, 65,535 in each dimension.
    pub const WEBGPU: GridLimits = GridLimits::uniform(65_535);

    /// `max` blocks in every dimension (at least 1).
    pub const fn uniform(max: usize) -> Self {
        let max = if max == 0 { 1 } else { max };
        GridLimits { max_blocks: [max; 3] }
    }
}

/// One launch of a block grid: blocks `origin[i] .. origin[i] + size[i]` in each dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridPart {
    /// First block of the launch in the whole grid.
    pub origin: [usize; 3],
    /// Blocks of the launch.
    pub size: [u32; 3],
}

/// Cuts a grid of `blocks` (x, y, z) into launches of at most `limits` blocks per dimension,
/// x fastest. An empty grid has no launches; together the parts cover every block once.
pub fn split_grid(blocks: [usize; 3], limits: GridLimits) -> Vec<GridPart> {
    if blocks.contains(&0) {
        return Vec::new();
    }
    let steps = |dim: usize| {
        let max = limits.max_blocks[dim].clamp(1, u32::MAX as usize);
        (0..blocks[dim])
            .step_by(max)
            .map(move |o| (o, max.min(blocks[dim] - o) as u32))
    };
    let mut parts = Vec::new();
    for (z0, nz) in steps(2) {
        for (y0, ny) in steps(1) {
            for (x0, nx) in steps(0) {
                parts.push(GridPart {
                    origin: [x0, y0, z0],
                    size: [nx, ny, nz],
                });
            }
        }
    }
    parts
}

/// Blocks `[x, y, z]` for `threads` invocations of a 1-D kernel of `block` threads per block:
/// x up to its limit, then rows of x blocks in y, then layers in z. Kernels recover the linear
/// index as `(block.x + (block.y + block.z · grid.y) · grid.x) · block + thread` in 32 bits.
///
/// Errors: `Unsupported` when `threads` exceeds 2³² − 1 (the 32-bit index; no buffer is that
/// long) or the folded grid exceeds the limits.
pub fn fold_threads(threads: usize, block: usize, limits: GridLimits) -> Result<[u32; 3]> {
    let block = block.max(1);
    let groups = threads.div_ceil(block).max(1);
    if groups.checked_mul(block).is_none_or(|t| t > u32::MAX as usize) {
        return Err(Error::Unsupported(format!(
            "{threads} invocations exceed the 32-bit index of the kernels"
        )));
    }
    let [mx, my, mz] = limits.max_blocks.map(|m| m.clamp(1, u32::MAX as usize));
    let x = groups.min(mx);
    let rows = groups.div_ceil(x);
    let y = rows.min(my);
    let z = rows.div_ceil(y);
    if z > mz {
        return Err(Error::Unsupported(format!(
            "{threads} invocations exceed the device's {mx} x {my} x {mz} blocks"
        )));
    }
    // The folded grid may hold a few blocks past `threads`; their indices must fit too.
    if x * y * z * block > u32::MAX as usize + 1 {
        return Err(Error::Unsupported(format!(
            "{threads} invocations exceed the 32-bit index of the kernels once folded"
        )));
    }
    Ok([x as u32, y as u32, z as u32])
}

/// How much work one launch may do, and how much scratch a composition may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchPolicy {
    /// Contraction steps of one gemm launch; longer contractions accumulate over launches.
    pub contraction_chunk: usize,
    /// Elements of scratch a chunked composition keeps at once (GGN block weights, the
    /// predictive products Φ Σ).
    pub scratch_elements: usize,
    /// Loop iterations one Monte Carlo link launch may spend per input row.
    pub monte_carlo_budget: usize,
}

impl LaunchPolicy {
    /// Software rasterisers (lavapipe, llvmpipe) allow one invocation 65,535 loop iterations:
    /// contractions of 1,024 steps (64 tile steps of 16), 2²² elements of scratch, and Monte
    /// Carlo launches of 16,384 iterations per row.
    pub const fn software() -> Self {
        LaunchPolicy {
            contraction_chunk: 1024,
            scratch_elements: 1 << 22,
            monte_carlo_budget: 16_384,
        }
    }

    /// A hardware device whose largest buffer is `max_buffer_bytes` and whose memory is
    /// `memory_bytes` (when known). Scratch is the largest buffer, at most 1/16 of the memory
    /// and 2²⁸ elements, in elements of the widest type (8 bytes), and never below the software
    /// policy's; contractions of 2¹⁶ steps bound the time of one launch (display watchdogs);
    /// Monte Carlo draws all samples in one launch.
    pub fn hardware(max_buffer_bytes: u64, memory_bytes: Option<u64>) -> Self {
        let budget = memory_bytes.map_or(max_buffer_bytes, |m| max_buffer_bytes.min(m / 16));
        let scratch = (budget / 8).clamp(1 << 22, 1 << 28) as usize;
        LaunchPolicy {
            contraction_chunk: 1 << 16,
            scratch_elements: scratch,
            monte_carlo_budget: usize::MAX,
        }
    }

    /// The contraction of `k` steps as `(start, len)` launches of at most
    /// [`LaunchPolicy::contraction_chunk`] steps; one empty launch for `k = 0` (it still
    /// applies β).
    pub fn contraction_chunks(&self, k: usize) -> Vec<(usize, usize)> {
        let chunk = self.contraction_chunk.max(1);
        if k == 0 {
            return vec![(0, 0)];
        }
        (0..k).step_by(chunk).map(|s| (s, chunk.min(k - s))).collect()
    }

    /// Rows of an n-row operand processed per pass when each row needs `per_row` elements of
    /// scratch: as many as the scratch holds, at least 1, at most n.
    pub fn rows_per_chunk(&self, n: usize, per_row: usize) -> usize {
        (self.scratch_elements / per_row.max(1)).clamp(1, n.max(1))
    }

    /// Monte Carlo samples per link launch when one sample costs `per_sample` loop iterations.
    pub fn samples_per_launch(&self, per_sample: usize) -> usize {
        (self.monte_carlo_budget / per_sample.max(1)).max(1)
    }
}

/// One launch of a gemm `C ← β C + α op(A) op(B)`: contraction steps
/// `k_start .. k_start + k_len` over the tiles and batch entries of `part`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmLaunch {
    /// First contraction step.
    pub k_start: usize,
    /// Contraction steps.
    pub k_len: usize,
    /// Tiles (x: columns of C, y: rows of C) and batch entries (z).
    pub part: GridPart,
}

/// The launches of an `m × n` gemm with a contraction of `k` over `batch` entries: the
/// contraction chunks of `policy`, each over the tile grid `(⌈n/64⌉, ⌈m/64⌉, batch)` split
/// within `limits`. Empty when C is empty.
pub fn gemm_launches(
    (m, n, k): (usize, usize, usize),
    batch: usize,
    limits: GridLimits,
    policy: &LaunchPolicy,
) -> Vec<GemmLaunch> {
    let parts = split_grid([n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE), batch], limits);
    let mut launches = Vec::new();
    for (k_start, k_len) in policy.contraction_chunks(k) {
        launches.extend(parts.iter().map(|&part| GemmLaunch { k_start, k_len, part }));
    }
    launches
}
