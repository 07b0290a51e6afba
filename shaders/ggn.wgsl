// ggn family: the per-sample block weights of the Full-GGN accumulation (the accumulation
// itself is the gemm kernel with these weights), the Kronecker rows of factored curvatures, and
// the column mixing that lifts a reduced-basis matrix back to all classes.

// flags (GgnFlag in src/device/registry.rs): no basis, R is the identity.
const GGN_IDENTITY_BASIS: u32 = 1u;

struct Params {
    n: u32, k: u32, kr: u32, d: u32,
    rank: u32, flags: u32, row0: u32, complement: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const SIZE: u32 = 256u;

fn linear(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * groups.y) * groups.x * SIZE;
}

// R[k, a], or the identity when flag 1 (no basis) is set.
fn basis(k: u32, a: u32) -> f32 {
    if ((p.flags & GGN_IDENTITY_BASIS) != 0u) {
        return select(0.0, 1.0, k == a);
    }
    return in1[k * p.kr + a];
}

// out[n, a·K' + b] = (Rᵀ Λ_n R)[a, b] with Λ_n = diag(p_n) − p_n p_nᵀ, p_n = in0[row0 + n, :].
@compute @workgroup_size(256)
fn ggn_weights(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let per = p.kr * p.kr;
    if (i >= p.n * per) {
        return;
    }
    let n = i / per;
    let a = (i % per) / p.kr;
    let b = i % p.kr;
    var diag = 0.0;
    var ra = 0.0;
    var rb = 0.0;
    for (var k = 0u; k < p.k; k++) {
        let pk = in0[(p.row0 + n) * p.k + k];
        let rka = basis(k, a);
        let rkb = basis(k, b);
        diag += rka * pk * rkb;
        ra += rka * pk;
        rb += rkb * pk;
    }
    out[i] = diag - ra * rb;
}

// out[r, a·D + x] = S[r, a] φ[⌊r / rank⌋, x] for the (n·rank) × K factor rows S = in0 and
// Φ = in1 (n × D).
@compute @workgroup_size(256)
fn kron_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let width = p.k * p.d;
    if (i >= p.n * p.rank * width) {
        return;
    }
    let r = i / width;
    let a = (i % width) / p.d;
    let x = i % p.d;
    out[i] = in0[r * p.k + a] * in1[(r / p.rank) * p.d + x];
}

// Y[(k, x), (l, y)] = Σ_b R[l, b] Z[(k, x), (b, y)] + c (δ_kl − (RRᵀ)_kl) δ_xy for
// Z = in0 (K·D × K'·D) and R = in1 (K × K'): Y = Z (Rᵀ ⊗ I) + c (I − RRᵀ) ⊗ I.
@compute @workgroup_size(256)
fn kron_mix_columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    let size = p.k * p.d;
    if (i >= size * size) {
        return;
    }
    let row = i / size;
    let k = row / p.d;
    let x = row % p.d;
    let l = (i % size) / p.d;
    let y = i % p.d;
    let zw = p.kr * p.d;
    var acc = 0.0;
    var rr = 0.0;
    for (var b = 0u; b < p.kr; b++) {
        acc += in1[l * p.kr + b] * in0[row * zw + b * p.d + y];
        rr += in1[k * p.kr + b] * in1[l * p.kr + b];
    }
    if (x == y) {
        acc += p.complement * (select(0.0, 1.0, k == l) - rr);
    }
    out[i] = acc;
}
