// low_rank family, sequential part: the seed paper's per-sample Sherman–Morrison loop for the
// Shared structure, run entirely on the device. Each sample j is three dispatches recorded into
// one compute pass (no host round trip between samples):
//   sm_project  u = Σ φ_j and f = W φ_j + b          one workgroup per row of [Σ; W]
//   sm_scalars  s = φ_jᵀ u, p = softmax(f), m_j, 1 + m_j s, γ (t_j − p), next j
//   sm_apply    Σ ← Σ − m_j u uᵀ / (1 + m_j s),  W ← W + γ (t_j − p) uᵀ / (1 + m_j s)
// The sample index lives in status[1], advanced by sm_scalars, so every dispatch of the pass
// shares one bind group. A failing 1 + m_j s ≤ 0 stores j in status[0] and turns the remaining
// steps into no-ops. (The dense low-rank update Σ ± U C⁻¹ Uᵀ runs on the cholesky and gemm
// kernels.)
//
// state: u (D) | f (K) | γ(t − p) (K) | m/(1 + ms) | 1/(1 + ms) | skip

struct Params {
    d: u32, k: u32, flags: u32, gamma: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> sigma: array<f32>;
@group(0) @binding(2) var<storage, read_write> head: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> phi: array<f32>;
@group(0) @binding(5) var<storage, read> targets: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> used: array<f32>;
@group(0) @binding(8) var<storage, read_write> status: array<atomic<u32>>;

const NONE: u32 = 0xffffffffu;
const HAS_BIAS: u32 = 1u;
const CATEGORICAL: u32 = 2u;
// Whether x is positive and finite, tested on its bits: a driver that assumes no NaN may fold
// a comparison such as `!(x > 0.0)` away, but not integer arithmetic.
fn positive_finite(x: f32) -> bool {
    let bits = bitcast<u32>(x);
    return bits != 0u && bits < 0x7f800000u;
}

var<workgroup> partial: array<f32, 64>;

fn reduce(li: u32, v: f32) -> f32 {
    partial[li] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    return partial[0];
}

@compute @workgroup_size(64)
fn sm_project(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wg.x + (wg.y + wg.z * groups.y) * groups.x;
    if (row >= p.d + p.k) {
        return;
    }
    let x = atomicLoad(&status[1]) * p.d;
    var acc = 0.0;
    if (row < p.d) {
        for (var c = li; c < p.d; c += 64u) {
            acc += sigma[row * p.d + c] * phi[x + c];
        }
    } else {
        for (var c = li; c < p.d; c += 64u) {
            acc += head[(row - p.d) * p.d + c] * phi[x + c];
        }
    }
    let total = reduce(li, acc);
    if (li == 0u) {
        if (row < p.d) {
            state[row] = total;
        } else if ((p.flags & HAS_BIAS) != 0u) {
            state[row] = total + bias[row - p.d];
        } else {
            state[row] = total;
        }
    }
}

@compute @workgroup_size(64)
fn sm_scalars(@builtin(local_invocation_index) li: u32) {
    let j = atomicLoad(&status[1]);
    var acc = 0.0;
    for (var c = li; c < p.d; c += 64u) {
        acc += phi[j * p.d + c] * state[c];
    }
    let s = reduce(li, acc);
    if (li != 0u) {
        return;
    }
    let f = p.d;
    let r = p.d + p.k;
    let coef = p.d + 2u * p.k;
    var fmax = state[f];
    for (var c = 1u; c < p.k; c++) {
        fmax = max(fmax, state[f + c]);
    }
    var total = 0.0;
    for (var c = 0u; c < p.k; c++) {
        total += exp(state[f + c] - fmax);
    }
    var pmax = 0.0;
    for (var c = 0u; c < p.k; c++) {
        pmax = max(pmax, exp(state[f + c] - fmax) / total);
    }
    var m = 1.0;
    if ((p.flags & CATEGORICAL) != 0u) {
        m = pmax * (1.0 - pmax);
    }
    let denom = 1.0 + m * s;
    var failed = atomicLoad(&status[0]) != NONE;
    if (!failed && !positive_finite(denom)) {
        atomicMin(&status[0], j);
        failed = true;
    }
    if (failed) {
        state[coef + 2u] = 1.0;
    } else {
        for (var c = 0u; c < p.k; c++) {
            let pc = exp(state[f + c] - fmax) / total;
            state[r + c] = p.gamma * (targets[j * p.k + c] - pc);
        }
        state[coef] = m / denom;
        state[coef + 1u] = 1.0 / denom;
        state[coef + 2u] = 0.0;
        used[j] = m;
    }
    atomicStore(&status[1], j + 1u);
}

@compute @workgroup_size(256)
fn sm_apply(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + (gid.y + gid.z * groups.y) * groups.x * 256u;
    let coef = p.d + 2u * p.k;
    if (i >= (p.d + p.k) * p.d || state[coef + 2u] != 0.0) {
        return;
    }
    let row = i / p.d;
    let col = i % p.d;
    if (row < p.d) {
        sigma[i] -= state[coef] * (state[row] * state[col]);
    } else {
        let k = row - p.d;
        head[k * p.d + col] += state[p.d + p.k + k] * state[col] * state[coef + 1u];
    }
}
