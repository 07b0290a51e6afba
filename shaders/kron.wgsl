// kron family: the Woodbury products U = Σ B and G = Bᵀ Σ B of the Full-GGN low-rank factor
// B (column (j, c) = S_j[:, c] ⊗ φ_j, S_j = diag(√p_j) − p_j √p_jᵀ) without forming B. The two
// heavy products, T = Σ (I ⊗ Φᵀ) and Y_a = Φ U_a, run on the gemm kernel; these kernels apply
// the small per-sample factors S_j between them.

struct Params {
    m: u32, k: u32, d: u32, rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const SIZE: u32 = 256u;

fn linear(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * groups.y) * groups.x * SIZE;
}

// out[j, a, c] = S_j[a, c] = δ_ac √p_ja − p_ja √p_jc for probabilities in0 (m × K).
@compute @workgroup_size(256)
fn kron_factors(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let per = p.k * p.k;
    if (i >= p.m * per) {
        return;
    }
    let j = i / per;
    let a = (i % per) / p.k;
    let c = i % p.k;
    let pa = in0[j * p.k + a];
    out[i] = select(0.0, sqrt(pa), a == c) - pa * sqrt(in0[j * p.k + c]);
}

// U[r, (j, c)] = Σ_a T[(r, a), j] S_j[a, c] for T = in0 ((rows·K) × m), S = in1 (m × K × K).
@compute @workgroup_size(256)
fn kron_mix_u(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let width = p.m * p.k;
    if (i >= p.rows * width) {
        return;
    }
    let r = i / width;
    let j = (i % width) / p.k;
    let c = i % p.k;
    var acc = 0.0;
    for (var a = 0u; a < p.k; a++) {
        acc += in0[(r * p.k + a) * p.m + j] * in1[(j * p.k + a) * p.k + c];
    }
    out[i] = acc;
}

// G[(j, c), col] = Σ_a S_j[a, c] Y_a[j, col] for Y = in0 (K × m × mK), S = in1 (m × K × K).
@compute @workgroup_size(256)
fn kron_mix_g(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let width = p.m * p.k;
    if (i >= width * width) {
        return;
    }
    let row = i / width;
    let col = i % width;
    let j = row / p.k;
    let c = row % p.k;
    var acc = 0.0;
    for (var a = 0u; a < p.k; a++) {
        acc += in1[(j * p.k + a) * p.k + c] * in0[(a * p.m + j) * width + col];
    }
    out[i] = acc;
}
