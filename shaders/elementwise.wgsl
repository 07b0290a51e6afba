// elementwise family: axpy, hadamard, row and diagonal additions, row/column scalings, triangle moves,
// transposition, feature-row gathers and the max-abs reduction. Memory-bound; one invocation per element, 256 per
// workgroup, the grid folded into (x, y) to stay under the per-dimension workgroup limit.

// flags (ElementwiseFlag in src/device/registry.rs): scale_rows and scale_columns scale by √x;
// feature_rows appends a column of ones.
const ELEM_SQRT: u32 = 1u;
const ELEM_APPEND_ONES: u32 = 1u;

struct Params {
    len: u32, rows: u32, cols: u32, flags: u32,
    start: u32, alpha: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> result: array<atomic<u32>>;

const SIZE: u32 = 256u;

fn linear(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + (gid.y + gid.z * groups.y) * groups.x * SIZE;
}

// y ← y + α x
@compute @workgroup_size(256)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        y[i] += p.alpha * x[i];
    }
}

// y ← y ∘ x
@compute @workgroup_size(256)
fn hadamard(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        y[i] *= x[i];
    }
}

// y ← y + 1 xᵀ (x one row of `cols`)
@compute @workgroup_size(256)
fn add_row(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        y[i] += x[i % p.cols];
    }
}

fn factor(v: f32) -> f32 {
    if ((p.flags & ELEM_SQRT) != 0u) {
        return sqrt(v);
    }
    return v;
}

// y ← diag(x) y, or diag(√x) y with flag 1
@compute @workgroup_size(256)
fn scale_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        y[i] *= factor(x[i / p.cols]);
    }
}

// y ← y diag(x), or y diag(√x) with flag 1
@compute @workgroup_size(256)
fn scale_columns(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        y[i] *= factor(x[i % p.cols]);
    }
}

// y[i, i] ← y[i, i] + α
@compute @workgroup_size(256)
fn add_diagonal(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.rows) {
        y[i * p.cols + i] += p.alpha;
    }
}

// Square y: upper triangle ← lower triangle.
@compute @workgroup_size(256)
fn mirror_lower(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        let r = i / p.cols;
        let c = i % p.cols;
        if (c > r) {
            y[i] = y[c * p.cols + r];
        }
    }
}

// Square y: strict upper triangle ← 0.
@compute @workgroup_size(256)
fn zero_upper(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        if (i % p.cols > i / p.cols) {
            y[i] = 0.0;
        }
    }
}

// Square y: y ← (y + yᵀ)/2, each pair written by the invocation of its upper element.
@compute @workgroup_size(256)
fn symmetrize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        let r = i / p.cols;
        let c = i % p.cols;
        if (c > r) {
            let j = c * p.cols + r;
            let v = 0.5 * (y[i] + y[j]);
            y[i] = v;
            y[j] = v;
        }
    }
}

// y ← xᵀ for x rows × cols; one invocation per element of y, reading x with stride `cols`.
@compute @workgroup_size(256)
fn transpose(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        let c = i / p.rows;
        let r = i % p.rows;
        y[i] = x[r * p.cols + c];
    }
}

// y (rows × cols) ← rows `start..start + rows` of x (cols − 1 columns with ELEM_APPEND_ONES,
// which appends a column of ones; else cols): the chunk Φ_aug every posterior kernel reads.
@compute @workgroup_size(256)
fn feature_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = linear(gid, groups);
    if (i < p.len) {
        let r = i / p.cols;
        let c = i % p.cols;
        let d = p.cols - select(0u, 1u, (p.flags & ELEM_APPEND_ONES) != 0u);
        if (c < d) {
            y[i] = x[(p.start + r) * d + c];
        } else {
            y[i] = 1.0;
        }
    }
}

var<workgroup> partial: array<u32, 256>;

// result[0] ← max(result[0], max_i |x_i|), as IEEE bits: for non-negative floats the bit
// patterns order like the values, and a NaN's bits exceed +Inf's, so NaN wins as it should.
// |x| is the bits with the sign cleared, never `abs()`, which a driver that flushes subnormals
// would turn into 0.
@compute @workgroup_size(256)
fn max_abs(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear(gid, groups);
    var v = 0u;
    if (i < p.len) {
        v = bitcast<u32>(x[i]) & 0x7fffffffu;
    }
    partial[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] = max(partial[li], partial[li + s]);
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        atomicMax(&result[0], partial[0]);
    }
}
