// gemm family: C ← β·C + α·op(A)·diag(w)·op(B), strided and batched.
//
// One kernel serves gemm, weighted SYRK (A = Xᵀ, B = X, w the sample weights) and the Full-GGN
// accumulation (batch (a, b) over class blocks, w_n = (RᵀΛ_nR)[a, b] read with a block stride).
// Operands are addressed by offset + row·rs + col·cs, so transposes and sub-blocks cost nothing.
//
// Tiles: a workgroup computes a 64 × 64 tile of C with 16 × 16 invocations, each holding a
// 4 × 4 register block, and walks the contraction in steps of 16.
//   - 64 × 16 + 16 × 64 floats = 8 KiB of workgroup memory, half of WebGPU's guaranteed 16 KiB,
//     so the kernel runs on every adapter;
//   - 256 invocations is WebGPU's guaranteed maximum workgroup size;
//   - 4 × 4 per invocation gives 16 FMAs per 8 workgroup-memory loads, and 16 accumulators
//     stay in registers on every GPU we know of (a larger block spills on mobile parts).
// Invocation (tx, ty) owns rows ty + 16r and columns tx + 16c, so neighbouring invocations read
// neighbouring words of the tiles.
//
// flags (GemmFlag in src/device/registry.rs):
// GEMM_LOWER: skip tiles strictly above the diagonal (symmetric results, mirrored later);
// GEMM_WEIGHTED; GEMM_OVERWRITE: C is not read (β = 0, NaN in C must not leak);
// GEMM_LOWER_BLOCKS: skip batch entries with inner index > outer index;
// GEMM_LOWER_DIAGONAL_TILES: lower tiles in the diagonal batch entries (inner == outer) only:
// with GEMM_LOWER_BLOCKS, the GGN's symmetry — blocks b ≤ a, and upper tiles skipped inside
// the diagonal blocks.
const GEMM_LOWER: u32 = 1u;
const GEMM_WEIGHTED: u32 = 2u;
const GEMM_OVERWRITE: u32 = 4u;
const GEMM_LOWER_BLOCKS: u32 = 8u;
const GEMM_LOWER_DIAGONAL_TILES: u32 = 16u;

struct Params {
    m: u32, n: u32, k: u32, flags: u32,
    a_off: u32, a_rs: u32, a_cs: u32, b_off: u32,
    b_rs: u32, b_cs: u32, c_off: u32, c_rs: u32,
    w_off: u32, w_s: u32, inner: u32, a_bo: u32,
    a_bi: u32, b_bo: u32, b_bi: u32, c_bo: u32,
    c_bi: u32, w_bo: u32, w_bi: u32, x0: u32,
    y0: u32, z0: u32, alpha: f32, beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
const THREADS: u32 = 256u;

var<workgroup> a_tile: array<f32, 1024>; // [DEPTH][TILE]
var<workgroup> b_tile: array<f32, 1024>; // [DEPTH][TILE]

@compute @workgroup_size(16, 16, 1)
fn gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // A grid too large for one dispatch is split into launches; (x0, y0, z0) is this launch's
    // first tile and batch entry.
    let tile_x = wg.x + p.x0;
    let tile_y = wg.y + p.y0;
    let entry = wg.z + p.z0;
    let outer = entry / p.inner;
    let inner = entry % p.inner;
    if ((p.flags & GEMM_LOWER_BLOCKS) != 0u && inner > outer) {
        return;
    }
    let row0 = tile_y * TILE;
    let col0 = tile_x * TILE;
    let lower = (p.flags & GEMM_LOWER) != 0u || ((p.flags & GEMM_LOWER_DIAGONAL_TILES) != 0u && inner == outer);
    if (lower && col0 > row0 + TILE - 1u) {
        return;
    }
    let a_base = p.a_off + outer * p.a_bo + inner * p.a_bi;
    let b_base = p.b_off + outer * p.b_bo + inner * p.b_bi;
    let c_base = p.c_off + outer * p.c_bo + inner * p.c_bi;
    let w_base = p.w_off + outer * p.w_bo + inner * p.w_bi;
    let weighted = (p.flags & GEMM_WEIGHTED) != 0u;
    let a_k_contiguous = p.a_cs == 1u;
    let b_n_contiguous = p.b_cs == 1u;

    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        for (var t = 0u; t < 4u; t++) {
            let e = li + t * THREADS;
            // A tile: walk memory along whichever index is contiguous.
            var ii = e % TILE;
            var kk = e / TILE;
            if (a_k_contiguous) {
                ii = e / DEPTH;
                kk = e % DEPTH;
            }
            let gi = row0 + ii;
            let gk = k0 + kk;
            var v = 0.0;
            if (gi < p.m && gk < p.k) {
                v = a[a_base + gi * p.a_rs + gk * p.a_cs];
                if (weighted) {
                    v *= w[w_base + gk * p.w_s];
                }
            }
            a_tile[kk * TILE + ii] = v;
            var jj = e / DEPTH;
            var kb = e % DEPTH;
            if (b_n_contiguous) {
                jj = e % TILE;
                kb = e / TILE;
            }
            let gj = col0 + jj;
            let gkb = k0 + kb;
            var u = 0.0;
            if (gj < p.n && gkb < p.k) {
                u = b[b_base + gkb * p.b_rs + gj * p.b_cs];
            }
            b_tile[kb * TILE + jj] = u;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                av[r] = a_tile[kk * TILE + lid.y + 16u * r];
                bv[r] = b_tile[kk * TILE + lid.x + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var q = 0u; q < 4u; q++) {
                    acc[r][q] = fma(av[r], bv[q], acc[r][q]);
                }
            }
        }
        workgroupBarrier();
    }
    let overwrite = (p.flags & GEMM_OVERWRITE) != 0u;
    for (var r = 0u; r < 4u; r++) {
        let gi = row0 + lid.y + 16u * r;
        for (var q = 0u; q < 4u; q++) {
            let gj = col0 + lid.x + 16u * q;
            if (gi < p.m && gj < p.n) {
                let idx = c_base + gi * p.c_rs + gj;
                var v = p.alpha * acc[r][q];
                if (!overwrite) {
                    v += p.beta * c[idx];
                }
                c[idx] = v;
            }
        }
    }
}
