// cholesky family: the blocked right-looking Cholesky factorisation and the blocked triangular
// solve. Per block column of width NB = 32: `potrf_diagonal` factors the NB × NB diagonal block
// in workgroup memory, `trsm_panel` solves the panel below it against that factor, and the
// trailing update A₂₂ ← A₂₂ − L₂₁ L₂₁ᵀ runs on the gemm kernel (lower tiles only). The
// triangular solve alternates `trsm_block` (one diagonal block) with a gemm update of the rest.
//
// NB = 32: the diagonal block (4 KiB) fits workgroup memory on every adapter, each invocation
// keeps one 32-element row or column in registers, and at 32 the serial diagonal step is a small
// share of the O(n³) work done by the tiled gemm.
//
// A failing pivot (not > 0, or NaN) is recorded in status[0] with atomicMin, so the first one
// wins; the host reads it once at the end.

// flags (CholeskyFlag in src/device/registry.rs): trsm_block solves with Lᵀ.
const CHOL_TRANSPOSED: u32 = 1u;

struct Params {
    n: u32, j0: u32, nb: u32, rows: u32,
    cols: u32, flags: u32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> l: array<f32>;
@group(0) @binding(2) var<storage, read_write> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>>;

const NB: u32 = 32u;

var<workgroup> block: array<f32, 1024>; // [NB][NB]

// Whether x is positive and finite, tested on its bits: a driver that assumes no NaN may fold
// a comparison such as `!(x > 0.0)` away, but not integer arithmetic.
fn positive_finite(x: f32) -> bool {
    let bits = bitcast<u32>(x);
    return bits != 0u && bits < 0x7f800000u;
}

// Factors a[j0.., j0..] (nb × nb) in place: L below and on the diagonal, zeros above; `out`
// receives a copy of L as NB × NB.
@compute @workgroup_size(32)
fn potrf_diagonal(@builtin(local_invocation_index) t: u32) {
    let base = p.j0 * p.n + p.j0;
    if (t < p.nb) {
        for (var c = 0u; c < p.nb; c++) {
            block[t * NB + c] = a[base + t * p.n + c];
        }
    }
    workgroupBarrier();
    for (var j = 0u; j < p.nb; j++) {
        let pivot = block[j * NB + j];
        let d = sqrt(pivot);
        workgroupBarrier();
        if (t == j) {
            block[j * NB + j] = d;
            if (!positive_finite(pivot)) {
                atomicMin(&status[0], p.j0 + j);
            }
        }
        if (t > j && t < p.nb) {
            block[t * NB + j] = block[t * NB + j] / d;
        }
        workgroupBarrier();
        if (t > j && t < p.nb) {
            let ltj = block[t * NB + j];
            for (var c = j + 1u; c <= t; c++) {
                block[t * NB + c] -= ltj * block[c * NB + j];
            }
        }
        workgroupBarrier();
    }
    if (t < p.nb) {
        for (var c = 0u; c < NB; c++) {
            var v = 0.0;
            if (c <= t) {
                v = block[t * NB + c];
            }
            if (c < p.nb) {
                a[base + t * p.n + c] = v;
            }
            out[t * NB + c] = v;
        }
    }
}

// Rows i = j0 + nb + r (r < rows) of the panel: x L₁₁ᵀ = a[i, j0..j0+nb], with L₁₁ = l (NB × NB);
// x replaces the row and goes to out[r, :] (rows × nb).
@compute @workgroup_size(64)
fn trsm_panel(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    for (var e = li; e < NB * NB; e += 64u) {
        block[e] = l[e];
    }
    workgroupBarrier();
    let r = gid.x + (gid.y + gid.z * groups.y) * groups.x * 64u;
    if (r >= p.rows) {
        return;
    }
    let row = (p.j0 + p.nb + r) * p.n + p.j0;
    var x: array<f32, 32>;
    for (var c = 0u; c < p.nb; c++) {
        var v = a[row + c];
        for (var q = 0u; q < c; q++) {
            v -= x[q] * block[c * NB + q];
        }
        x[c] = v / block[c * NB + c];
        a[row + c] = x[c];
        out[r * p.nb + c] = x[c];
    }
}

// Columns of rows j0..j0+nb of B (= a, `cols` wide): x ← L_jj⁻¹ x, or L_jj⁻ᵀ x with flag 1,
// L_jj the diagonal block of l (n × n). The solved rows also go to out (nb × cols).
@compute @workgroup_size(64)
fn trsm_block(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    for (var e = li; e < NB * NB; e += 64u) {
        let r = e / NB;
        let c = e % NB;
        var v = 0.0;
        if (r < p.nb && c < p.nb) {
            v = l[(p.j0 + r) * p.n + p.j0 + c];
        }
        block[e] = v;
    }
    workgroupBarrier();
    let col = gid.x + (gid.y + gid.z * groups.y) * groups.x * 64u;
    if (col >= p.cols) {
        return;
    }
    var x: array<f32, 32>;
    for (var r = 0u; r < p.nb; r++) {
        x[r] = a[(p.j0 + r) * p.cols + col];
    }
    if ((p.flags & CHOL_TRANSPOSED) == 0u) {
        for (var r = 0u; r < p.nb; r++) {
            var v = x[r];
            for (var q = 0u; q < r; q++) {
                v -= block[r * NB + q] * x[q];
            }
            x[r] = v / block[r * NB + r];
        }
    } else {
        for (var rr = 0u; rr < p.nb; rr++) {
            let r = p.nb - 1u - rr;
            var v = x[r];
            for (var q = r + 1u; q < p.nb; q++) {
                v -= block[q * NB + r] * x[q];
            }
            x[r] = v / block[r * NB + r];
        }
    }
    for (var r = 0u; r < p.nb; r++) {
        a[(p.j0 + r) * p.cols + col] = x[r];
        out[r * p.cols + col] = x[r];
    }
}
