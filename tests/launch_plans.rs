//! Launch plans at the sizes users run, checked on the host with no GPU: every launch of the
//! GPU compositions fits the grid limits of CUDA and WebGPU, 1-D launches fold within 32-bit
//! indices, and chunk sizes come from the device's policy (the llvmpipe loop bound applies to
//! software adapters only).

#![allow(clippy::needless_range_loop)] // (x, y, z) triples are indexed side by side

use laplace_update::device::launch::{
    GEMM_TILE, GemmLaunch, GridLimits, LaunchPolicy, fold_threads, gemm_launches, split_grid,
};

/// An H200: 141 GB of memory, buffers of up to 2³² elements of 8 bytes.
fn h200() -> LaunchPolicy {
    LaunchPolicy::hardware(u32::MAX as u64 * 8, Some(141_000_000_000))
}

/// A discrete Vulkan GPU that allows 2 GiB storage buffers.
fn vulkan_gpu() -> LaunchPolicy {
    LaunchPolicy::hardware(2 << 30, None)
}

/// Every launch fits `limits`, and together the launches cover each (tile, batch entry,
/// contraction step) of the gemm exactly once.
fn assert_gemm_plan(
    what: &str,
    (m, n, k): (usize, usize, usize),
    batch: usize,
    launches: &[GemmLaunch],
    limits: GridLimits,
) {
    let tiles = [n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE), batch];
    for l in launches {
        for d in 0..3 {
            assert!(
                (l.part.size[d] as usize) <= limits.max_blocks[d],
                "{what}: launch {l:?} exceeds {limits:?}"
            );
            assert!(
                l.part.origin[d] + l.part.size[d] as usize <= tiles[d],
                "{what}: {l:?} leaves the grid"
            );
        }
    }
    // Blocks covered, counted per contraction chunk: each chunk must cover the grid once.
    let mut chunks: Vec<(usize, usize)> = launches.iter().map(|l| (l.k_start, l.k_len)).collect();
    chunks.dedup();
    let covered: usize = chunks.iter().map(|c| c.1).sum();
    assert_eq!(covered, k, "{what}: contraction chunks cover {covered} of {k} steps");
    for (start, len) in &chunks {
        let blocks: usize = launches
            .iter()
            .filter(|l| (l.k_start, l.k_len) == (*start, *len))
            .map(|l| l.part.size.iter().map(|&s| s as usize).product::<usize>())
            .sum();
        assert_eq!(
            blocks,
            tiles.iter().product::<usize>(),
            "{what}: chunk at {start} covers {blocks} blocks"
        );
    }
}

/// A 1-D launch of `threads` folds within the limits and reaches every thread in 32 bits.
fn assert_folds(what: &str, threads: usize, block: usize, limits: GridLimits) {
    let [x, y, z] = fold_threads(threads, block, limits).unwrap_or_else(|e| panic!("{what}: {e}"));
    let grid = [x as usize, y as usize, z as usize];
    for d in 0..3 {
        assert!(grid[d] <= limits.max_blocks[d], "{what}: {grid:?} exceeds {limits:?}");
    }
    let reach = grid.iter().product::<usize>() * block;
    assert!(
        reach >= threads,
        "{what}: {grid:?} × {block} reaches {reach} of {threads} threads"
    );
    assert!(reach <= u32::MAX as usize + 1, "{what}: indices overflow 32 bits");
}

#[test]
fn split_grids_cover_every_block_once_within_the_limits() {
    for blocks in [
        [1, 1, 1],
        [7, 3, 2],
        [65_536, 1, 1],
        [10, 70_000, 3],
        [5, 5, 140_000],
        [0, 3, 3],
    ] {
        for limits in [
            GridLimits::uniform(1),
            GridLimits::uniform(3),
            GridLimits::WEBGPU,
            GridLimits::CUDA,
        ] {
            let parts = split_grid(blocks, limits);
            let mut total = 0usize;
            for p in &parts {
                for d in 0..3 {
                    assert!(p.size[d] as usize <= limits.max_blocks[d] && p.size[d] > 0);
                    assert!(p.origin[d] + p.size[d] as usize <= blocks[d]);
                }
                total += p.size.iter().map(|&s| s as usize).product::<usize>();
            }
            assert_eq!(total, blocks.iter().product::<usize>(), "{blocks:?} in {limits:?}");
            // Disjoint: origins are distinct and parts tile each axis in order.
            let mut origins: Vec<[usize; 3]> = parts.iter().map(|p| p.origin).collect();
            origins.sort();
            origins.dedup();
            assert_eq!(origins.len(), parts.len());
        }
    }
}

/// GGN accumulation of the Full fit at N = 100,000, D = 768, K = 10 (reduced basis K' = 9,
/// precision side 6,912): block weights in row chunks, then one batched weighted gemm over the
/// 81 class blocks per chunk.
#[test]
fn ggn_at_n_100k_d_768_k_10() {
    let (n, d, kr) = (100_000, 768, 9);
    let blocks = kr * kr;
    for (name, policy, limits) in [
        ("cuda h200", h200(), GridLimits::CUDA),
        ("vulkan", vulkan_gpu(), GridLimits::WEBGPU),
        ("lavapipe", LaunchPolicy::software(), GridLimits::WEBGPU),
    ] {
        let chunk = policy.rows_per_chunk(n, blocks);
        let chunks = n.div_ceil(chunk);
        assert!(chunk * blocks <= policy.scratch_elements);
        assert_folds(name, chunk * blocks, 256, limits);
        let launches = gemm_launches((d, d, chunk), blocks, limits, &policy);
        assert_gemm_plan(name, (d, d, chunk), blocks, &launches, limits);
        let total = chunks * launches.len();
        if name == "lavapipe" {
            // The llvmpipe loop bound: 1,024-step contractions.
            assert!(launches.iter().all(|l| l.k_len <= 1024));
        } else {
            // Hardware takes the whole chunk in at most two contraction launches.
            assert_eq!(chunks, 1, "{name}: one chunk of block weights");
            assert!(total <= 2, "{name}: {total} gemm launches");
        }
    }
}

/// Weighted SYRK over N = 100,000 samples at D = 768 (the Shared fit): 98 accumulating
/// launches under the software policy, at most 2 on hardware.
#[test]
fn weighted_syrk_at_n_100k() {
    let (n, d) = (100_000, 768);
    let soft = gemm_launches((d, d, n), 1, GridLimits::WEBGPU, &LaunchPolicy::software());
    assert_eq!(soft.len(), n.div_ceil(1024));
    for (policy, limits) in [(h200(), GridLimits::CUDA), (vulkan_gpu(), GridLimits::WEBGPU)] {
        let launches = gemm_launches((d, d, n), 1, limits, &policy);
        assert_gemm_plan("syrk", (d, d, n), 1, &launches, limits);
        assert!(launches.len() <= 2, "{} launches", launches.len());
    }
}

/// `kron_congruence` at D = 768, K' = 9, K = 10: the lifting gemm is 10 × (9·768²) with a
/// contraction of 9, 82,944 tiles wide: over WebGPU's 65,535, so two launches there, one on
/// CUDA; the mixing kernel runs 7,680² threads.
#[test]
fn kron_congruence_at_d_768() {
    let (k, kr, d): (usize, usize, usize) = (10, 9, 768);
    let shape = (k, d * kr * d, kr);
    assert!(shape.1.div_ceil(GEMM_TILE) > 65_535);
    let web = gemm_launches(shape, 1, GridLimits::WEBGPU, &LaunchPolicy::software());
    assert_gemm_plan("webgpu", shape, 1, &web, GridLimits::WEBGPU);
    assert_eq!(web.len(), 2);
    let cuda = gemm_launches(shape, 1, GridLimits::CUDA, &h200());
    assert_gemm_plan("cuda", shape, 1, &cuda, GridLimits::CUDA);
    assert_eq!(cuda.len(), 1);
    let p = k * d;
    assert_folds("kron_mix_columns webgpu", p * p, 256, GridLimits::WEBGPU);
    assert_folds("kron_mix_columns cuda", p * p, 256, GridLimits::CUDA);
}

/// The predictive covariance of the Full structure at N = 100,000, K = 10, D = 768 (Σ side
/// 7,680): rows per pass from the scratch policy, then a gemm batched over the K class rows
/// of Σ and the row contraction. Software adapters re-read Σ 1,852 times; hardware ≤ 32.
#[test]
fn predictive_at_n_100k_k_10_d_768() {
    let (n, k, d): (usize, usize, usize) = (100_000, 10, 768);
    let p = k * d;
    let soft = LaunchPolicy::software();
    assert_eq!(n.div_ceil(soft.rows_per_chunk(n, k * p)), 1_852);
    for (name, policy, limits) in [
        ("cuda", h200(), GridLimits::CUDA),
        ("vulkan", vulkan_gpu(), GridLimits::WEBGPU),
    ] {
        let chunk = policy.rows_per_chunk(n, k * p);
        let passes = n.div_ceil(chunk);
        assert!(passes <= 32, "{name}: Σ read {passes} times");
        assert!(chunk * k * p <= policy.scratch_elements);
        assert!(
            ((chunk * k * p) as u64) < u32::MAX as u64,
            "{name}: scratch indexable in 32 bits"
        );
        let launches = gemm_launches((chunk, p, d), k, limits, &policy);
        assert_gemm_plan(name, (chunk, p, d), k, &launches, limits);
        assert_folds(name, chunk * k * k, 256, limits);
    }
}

/// Heads with K = 1,000: the logits of 100,000 inputs, the Full GGN's class-block batch
/// (998,001 entries, over both z limits), and the Monte Carlo link's samples per launch.
#[test]
fn heads_with_k_1000() {
    let (n, k, d) = (100_000, 1000, 768);
    for limits in [GridLimits::CUDA, GridLimits::WEBGPU] {
        let logits = gemm_launches((n, k, d), 1, limits, &h200());
        assert_gemm_plan("logits", (n, k, d), 1, &logits, limits);
        // Full GGN at K' = 999 over D = 8: 998,001 batch entries, split in z.
        let batch = 999 * 999;
        let ggn = gemm_launches((8, 8, 64), batch, limits, &h200());
        assert_gemm_plan("ggn blocks", (8, 8, 64), batch, &ggn, limits);
        assert_eq!(ggn.len(), batch.div_ceil(65_535));
        assert_folds("softmax rows", n, 256, limits);
        assert_folds("ggn weights", 64 * batch, 256, limits);
    }
    // The Monte Carlo link per row: K(K+1)/2 + 3K + 1 iterations a sample.
    let per_sample = k * (k + 1) / 2 + 3 * k + 1;
    assert_eq!(LaunchPolicy::software().samples_per_launch(per_sample), 1);
    assert_eq!(h200().samples_per_launch(per_sample), usize::MAX / per_sample);
}

/// Heads of K = 3,100 (D = 128) and K = 32,000 (D = 768), the `scale` bench's: at the largest
/// pass of a fit (`CHUNK_ELEMENTS` values of rows × (K + D + 1)), the logits, the softmax
/// rows, the elementwise kernels over rows × K, the Diag GGN (K × D over the pass's rows) and
/// the predictive variances (the logits' shape); at K = 3,100 also Kron's class factor (K × K: SYRK, diagonal,
/// mirror) and its predictive weights `(U_A ∘ U_A) Σ` (K × D over K).
#[test]
fn heads_with_k_3100_and_32000() {
    use laplace_update::posterior::CHUNK_ELEMENTS;
    for (k, d) in [(3_100, 128), (32_000, 768)] {
        let rows = CHUNK_ELEMENTS / (k + d + 1);
        for (policy, limits) in [
            (h200(), GridLimits::CUDA),
            (vulkan_gpu(), GridLimits::WEBGPU),
            (LaunchPolicy::software(), GridLimits::WEBGPU),
        ] {
            let mut gemms = vec![
                ("logits and predictive variances", (rows, k, d)),
                ("diag ggn", (k, d, rows)),
            ];
            if k == 3_100 {
                gemms.extend([("kron class factor", (k, k, rows)), ("kron weights", (k, d, k))]);
                assert_folds("kron class factor", k * k, 256, limits);
            }
            for (what, shape) in gemms {
                let launches = gemm_launches(shape, 1, limits, &policy);
                assert_gemm_plan(what, shape, 1, &launches, limits);
            }
            assert_folds("softmax rows", rows, 256, limits);
            assert_folds("probabilities", rows * k, 256, limits);
        }
    }
}

/// A Σ of side 7,680 (K = 10, D = 768): the SPD inverse's gemms (the trailing update of each
/// 32-wide Cholesky block, and the final n × n × n product) fit every limit, and the matrix is
/// indexable in 32 bits.
#[test]
fn sigma_of_side_7680() {
    let n = 7_680;
    assert!(((n * n) as u64) < u32::MAX as u64);
    for (policy, limits) in [
        (h200(), GridLimits::CUDA),
        (vulkan_gpu(), GridLimits::WEBGPU),
        (LaunchPolicy::software(), GridLimits::WEBGPU),
    ] {
        for j0 in (0..n).step_by(32) {
            let rows = n - j0 - 32.min(n - j0);
            if rows > 0 {
                assert_folds("trsm panel", rows, 64, limits);
                let l = gemm_launches((rows, rows, 32), 1, limits, &policy);
                assert_gemm_plan("trailing update", (rows, rows, 32), 1, &l, limits);
            }
        }
        let last = gemm_launches((n, n, n), 1, limits, &policy);
        assert_gemm_plan("Σ = XᵀX", (n, n, n), 1, &last, limits);
        assert_folds("mirror", n * n, 256, limits);
    }
}

/// More than 4.19 M rows (65,535 tiles of 64 in y) used to be refused on CUDA: the logits of
/// 5,000,000 inputs now split into two launches.
#[test]
fn more_than_65535_row_tiles_split_on_cuda() {
    let shape = (5_000_000, 10, 768);
    let launches = gemm_launches(shape, 1, GridLimits::CUDA, &h200());
    assert_gemm_plan("tall logits", shape, 1, &launches, GridLimits::CUDA);
    assert_eq!(launches.len(), 2);
}

/// Thread counts past 32-bit indexing are a typed error, not a wrapped index.
#[test]
fn thread_counts_beyond_32_bits_are_refused() {
    use laplace_update::Error;
    assert!(matches!(
        fold_threads(u32::MAX as usize + 1, 256, GridLimits::CUDA),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        fold_threads(1 << 40, 256, GridLimits::uniform(4)),
        Err(Error::Unsupported(_))
    ));
    assert_folds("largest", u32::MAX as usize - 255, 256, GridLimits::CUDA);
}

/// The software policy is only the llvmpipe bound; hardware scratch follows the buffer and
/// memory limits.
#[test]
fn policies_follow_the_device() {
    let soft = LaunchPolicy::software();
    assert_eq!(soft.contraction_chunk, 1024);
    let small = LaunchPolicy::hardware(128 << 20, None);
    assert_eq!(small.scratch_elements, (128 << 20) / 8);
    let h = h200();
    assert_eq!(h.scratch_elements, 1 << 28);
    let one_gib = LaunchPolicy::hardware(u32::MAX as u64 * 8, Some(1 << 30));
    assert_eq!(one_gib.scratch_elements, 1 << 23, "1/16 of 1 GiB in 8-byte elements");
    let tiny = LaunchPolicy::hardware(u32::MAX as u64 * 8, Some(256 << 20));
    assert_eq!(tiny.scratch_elements, 1 << 22, "never below the software scratch");
    assert!(h.contraction_chunk > soft.contraction_chunk);
}
