//! Test helpers: seeded data, a dense f64 reference written from the formulas (explicit
//! Jacobians, dense GGN blocks, Gauss–Jordan inverse), tolerances, and backend selection.
#![allow(dead_code)]
// Reference loops index like the formulas they transcribe.
#![allow(clippy::needless_range_loop)]

use laplace_update::Scalar;

/// SplitMix64: seeded, platform-independent test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Dense row-major f64 matrix.
#[derive(Clone, Debug)]
pub struct Dense {
    pub rows: usize,
    pub cols: usize,
    pub a: Vec<f64>,
}

impl Dense {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Dense {
            rows,
            cols,
            a: vec![0.0; rows * cols],
        }
    }
    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        (0..n).for_each(|i| m.a[i * n + i] = 1.0);
        m
    }
    pub fn from(rows: usize, cols: usize, a: Vec<f64>) -> Self {
        assert_eq!(a.len(), rows * cols);
        Dense { rows, cols, a }
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.a[i * self.cols + j]
    }
    pub fn set(&mut self, i: usize, j: usize, v: f64) {
        self.a[i * self.cols + j] = v;
    }
    pub fn t(&self) -> Dense {
        let mut m = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                m.set(j, i, self.at(i, j));
            }
        }
        m
    }
    /// Triple-loop product.
    pub fn mul(&self, b: &Dense) -> Dense {
        assert_eq!(self.cols, b.rows);
        let mut m = Self::zeros(self.rows, b.cols);
        for i in 0..self.rows {
            for p in 0..self.cols {
                let x = self.at(i, p);
                for j in 0..b.cols {
                    m.a[i * b.cols + j] += x * b.at(p, j);
                }
            }
        }
        m
    }
    pub fn add(&self, b: &Dense, alpha: f64) -> Dense {
        assert_eq!((self.rows, self.cols), (b.rows, b.cols));
        Dense::from(
            self.rows,
            self.cols,
            self.a.iter().zip(&b.a).map(|(x, y)| x + alpha * y).collect(),
        )
    }
    pub fn scale(&self, alpha: f64) -> Dense {
        Dense::from(self.rows, self.cols, self.a.iter().map(|x| alpha * x).collect())
    }
    /// Inverse by Gauss–Jordan elimination with partial pivoting.
    pub fn inverse(&self) -> Dense {
        let n = self.rows;
        assert_eq!(n, self.cols);
        let mut a = self.clone();
        let mut inv = Dense::identity(n);
        for c in 0..n {
            let piv = (c..n)
                .max_by(|&i, &j| a.at(i, c).abs().total_cmp(&a.at(j, c).abs()))
                .unwrap();
            for j in 0..n {
                a.a.swap(c * n + j, piv * n + j);
                inv.a.swap(c * n + j, piv * n + j);
            }
            let d = a.at(c, c);
            assert!(d != 0.0, "singular reference matrix");
            for j in 0..n {
                a.a[c * n + j] /= d;
                inv.a[c * n + j] /= d;
            }
            for i in 0..n {
                if i != c {
                    let f = a.at(i, c);
                    if f != 0.0 {
                        for j in 0..n {
                            a.a[i * n + j] -= f * a.a[c * n + j];
                            inv.a[i * n + j] -= f * inv.a[c * n + j];
                        }
                    }
                }
            }
        }
        inv
    }
    pub fn max_abs(&self) -> f64 {
        self.a.iter().fold(0.0, |m, x| m.max(x.abs()))
    }
    pub fn row(&self, i: usize) -> &[f64] {
        &self.a[i * self.cols..(i + 1) * self.cols]
    }
}

pub fn softmax(f: &[f64]) -> Vec<f64> {
    let m = f.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = f.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// The explicit Jacobian of the logits, `J = I_K ⊗ φᵀ` (K × K·D).
pub fn jacobian(phi: &[f64], k: usize) -> Dense {
    let d = phi.len();
    let mut j = Dense::zeros(k, k * d);
    for c in 0..k {
        for (i, x) in phi.iter().enumerate() {
            j.set(c, c * d + i, *x);
        }
    }
    j
}

/// `Λ = diag(p) − p pᵀ`.
pub fn output_hessian(p: &[f64]) -> Dense {
    let k = p.len();
    let mut l = Dense::zeros(k, k);
    for a in 0..k {
        for b in 0..k {
            l.set(a, b, if a == b { p[a] } else { 0.0 } - p[a] * p[b]);
        }
    }
    l
}

/// Dense per-sample GGN `H = Jᵀ Λ J` (P × P).
pub fn ggn(phi: &[f64], p: &[f64]) -> Dense {
    let j = jacobian(phi, p.len());
    j.t().mul(&output_hessian(p)).mul(&j)
}

/// A last-layer problem in f64: augmented features (bias column appended when `bias_in`),
/// head `[W, b]` or W with a fixed bias.
#[derive(Clone, Debug)]
pub struct Problem {
    pub n: usize,
    pub d: usize,
    pub k: usize,
    pub phi: Vec<f64>,
    pub labels: Vec<u32>,
    pub head: Vec<f64>,
    pub bias: Vec<f64>,
    pub bias_in: bool,
}

impl Problem {
    pub fn random(seed: u64, n: usize, d: usize, k: usize, bias_in: bool) -> Self {
        let mut rng = Rng::new(seed);
        let phi = rng.normals(n * d, 1.0 / (d as f64).sqrt().max(1.0) * 2.0);
        let head = rng.normals(k * d, 1.0);
        let bias = rng.normals(k, 0.5);
        let labels = (0..n).map(|_| rng.below(k) as u32).collect();
        Problem {
            n,
            d,
            k,
            phi,
            labels,
            head,
            bias,
            bias_in,
        }
    }
    pub fn da(&self) -> usize {
        self.d + usize::from(self.bias_in)
    }
    /// Augmented feature row.
    pub fn phi_aug(&self, x: &[f64]) -> Vec<f64> {
        let mut v = x.to_vec();
        if self.bias_in {
            v.push(1.0);
        }
        v
    }
    /// Augmented head as a K × D_aug dense matrix.
    pub fn head_aug(&self) -> Dense {
        let da = self.da();
        let mut w = Dense::zeros(self.k, da);
        for c in 0..self.k {
            for i in 0..self.d {
                w.set(c, i, self.head[c * self.d + i]);
            }
            if self.bias_in {
                w.set(c, self.d, self.bias[c]);
            }
        }
        w
    }
    /// Probabilities at a raw feature row under head `w` (K × D_aug).
    pub fn probs(&self, w: &Dense, x: &[f64]) -> Vec<f64> {
        let xa = self.phi_aug(x);
        let f: Vec<f64> = (0..self.k)
            .map(|c| {
                let dot: f64 = w.row(c).iter().zip(&xa).map(|(a, b)| a * b).sum();
                dot + if self.bias_in { 0.0 } else { self.bias[c] }
            })
            .collect();
        softmax(&f)
    }
    /// The same problem restricted to its first `n` samples.
    pub fn first(&self, n: usize) -> Problem {
        Problem {
            n,
            phi: self.phi[..n * self.d].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }
    pub fn x(&self, i: usize) -> &[f64] {
        &self.phi[i * self.d..(i + 1) * self.d]
    }
    pub fn cast<T: Scalar>(v: &[f64]) -> Vec<T> {
        v.iter().map(|x| T::from_f64(*x)).collect()
    }
}

/// Shared output weight m(p).
pub fn shared_weight(p: &[f64], categorical: bool) -> f64 {
    if categorical {
        let pm = p.iter().cloned().fold(0.0, f64::max);
        pm * (1.0 - pm)
    } else {
        1.0
    }
}

/// Dense Full precision `τI + Σ_n Jᵀ Λ J` at head `w`.
pub fn full_precision(pb: &Problem, w: &Dense, rows: &[usize], tau: f64) -> Dense {
    let p = pb.k * pb.da();
    let mut prec = Dense::identity(p).scale(tau);
    for &i in rows {
        let pr = pb.probs(w, pb.x(i));
        prec = prec.add(&ggn(&pb.phi_aug(pb.x(i)), &pr), 1.0);
    }
    prec
}

/// Dense Shared precision `τI + Σ_n m_n φφᵀ` at head `w`.
pub fn shared_precision(pb: &Problem, w: &Dense, rows: &[usize], tau: f64, categorical: bool) -> Dense {
    let da = pb.da();
    let mut prec = Dense::identity(da).scale(tau);
    for &i in rows {
        let x = pb.phi_aug(pb.x(i));
        let m = shared_weight(&pb.probs(w, pb.x(i)), categorical);
        for a in 0..da {
            for b in 0..da {
                prec.a[a * da + b] += m * x[a] * x[b];
            }
        }
    }
    prec
}

/// Gradient `Σ_j Jᵀ (e_{y_j} − p_j)` as a K × D_aug matrix.
pub fn gradient(pb: &Problem, w: &Dense, rows: &[usize]) -> Dense {
    let mut g = Dense::zeros(pb.k, pb.da());
    for &i in rows {
        let pr = pb.probs(w, pb.x(i));
        let x = pb.phi_aug(pb.x(i));
        let r: Vec<f64> = (0..pb.k)
            .map(|c| f64::from(u8::from(pb.labels[i] as usize == c)) - pr[c])
            .collect();
        let jt_r = jacobian(&x, pb.k).t().mul(&Dense::from(pb.k, 1, r));
        g = g.add(&Dense::from(pb.k, pb.da(), jt_r.a), 1.0);
    }
    g
}

/// Largest entrywise difference relative to the reference's magnitude. The worst value seen by
/// each test thread is kept for [`report_worst`].
pub fn rel_err<T: Scalar>(got: &[T], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(1e-300f64, |m, x| m.max(x.abs()));
    let e = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g.as_f64() - w).abs()))
        / scale;
    WORST.with(|w| w.set(w.get().max(e)));
    e
}

thread_local! {
    static WORST: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// Prints the worst relative error this test thread measured, with `cargo test -- --nocapture`
/// (the backend suites' harness does not capture output, so it prints only when asked).
pub fn report_worst() {
    if !std::env::args().any(|a| a == "--nocapture") && std::env::var_os("RUST_TEST_NOCAPTURE").is_none() {
        return;
    }
    let name = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("worst relative error {name}: {:.2e}", WORST.with(|w| w.get()));
}

/// Tolerance `c · dim · ε_T`, floored for the tiny dimensions.
pub fn tol<T: Scalar>(dim: usize, c: f64) -> f64 {
    c * (dim.max(4) as f64) * T::EPS.as_f64()
}

/// A hand-built `.npy` (version 1): header dict fields and the raw little-endian body.
pub fn npy_bytes(descr: &str, fortran: bool, shape: &str, body: &[u8]) -> Vec<u8> {
    let order = if fortran { "True" } else { "False" };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out
}

/// The little-endian bytes of plain values.
pub fn le_bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Where `tests/cuda_emu.rs` logs the entry points it launched on the CUDA emulator, and
/// `tests/cuda_emu_coverage.rs` reads them.
pub const EMU_LAUNCH_LOG: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/cuda-emu-launched.txt");

/// Whether the environment demands this backend (`LAPLACE_REQUIRE=wgpu,nvrtc,...`).
pub fn required(backend: &str) -> bool {
    std::env::var("LAPLACE_REQUIRE").is_ok_and(|v| v.split(',').any(|b| b.trim() == backend))
}

/// Unwraps a backend, or prints `SKIPPED <backend>: <reason>` and returns `None`; panics
/// instead when `LAPLACE_REQUIRE` names the backend.
pub fn backend_or_skip<D>(backend: &str, made: laplace_update::Result<D>) -> Option<D> {
    match made {
        Ok(d) => Some(d),
        Err(e) if required(backend) => panic!("{backend} is required by LAPLACE_REQUIRE but unavailable: {e}"),
        Err(e) => {
            eprintln!("SKIPPED {backend}: {e}");
            None
        }
    }
}

pub mod complete;
pub mod harness;
pub mod kernels;
pub mod suite;

/// A fresh, empty folder for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("laplace-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Labels as an i64 `.npy`.
pub fn write_labels(path: &std::path::Path, labels: &[u32]) {
    let values: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
    let shape = format!("({},)", labels.len());
    std::fs::write(path, npy_bytes("<i8", false, &shape, &le_bytes(&values))).unwrap();
}
