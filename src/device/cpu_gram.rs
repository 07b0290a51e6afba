//! The CPU's Gram microkernel: the lower triangle of `C += α Σ_n a_n b_nᵀ` for row-major n × d
//! `A` and `B` whose product is symmetric (`B = A`, or `B = diag(w) A`), on x86-64 with AVX2
//! and FMA.
//!
//! Blocks of [`KC`] rows are packed into panels of `MR` features (one or two cache lines per row),
//! and each `NR × MR` tile of the lower triangle accumulates over a block in registers: per row,
//! two vector loads of `B`'s panel, `NR` broadcasts of `A`'s and `2·NR` fused multiply-adds, then
//! adds its rows to `C` as contiguous runs. Only tiles that touch the lower triangle are
//! computed (about 5% above `d²/2` at d = 512), where faer's triangular product recurses into
//! rectangular products that each pack their operands again.

/// Rows per packed block: a block's panel of one tile row (512 × 64 bytes) stays in L2.
pub(crate) const KC: usize = 512;

/// Columns per tile.
const NR: usize = 6;

/// Whether this CPU runs the kernel (AVX2 and FMA, checked once by the standard library's cache).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One dtype's kernel: `$mr` features per panel (two vectors of `$lanes`), its intrinsics.
macro_rules! gram_kernel {
    ($name:ident, $t:ty, $mr:expr, $lanes:expr, $vec:ident, $zero:ident, $load:ident, $store:ident,
     $broadcast:ident, $fma:ident) => {
        /// Lower triangle of the row-major d × d `c` `+= α Σ_n a_n b_nᵀ` over the n rows of the
        /// row-major `a` and `b` (n × d each); the strict upper triangle is left untouched.
        ///
        /// # Panics
        /// If `c` has fewer than d² or `a`, `b` fewer than n·d elements, or the CPU lacks AVX2
        /// and FMA ([`available`]).
        ///
        /// `parallel` spreads each block's groups of NR rows over the current rayon pool (each
        /// writes its own rows of `c`); otherwise the call runs on this thread. `packing` is
        /// the packed blocks' scratch, grown as needed and kept for the caller's next call.
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name(
            c: &mut [$t],
            a: &[$t],
            b: &[$t],
            n: usize,
            d: usize,
            alpha: $t,
            parallel: bool,
            packing: &mut Vec<$t>,
        ) {
            const MR: usize = $mr;
            assert!(available(), "the Gram kernel needs AVX2 and FMA");
            assert!(c.len() >= d * d && a.len() >= n * d && b.len() >= n * d);
            if n == 0 || d == 0 {
                return;
            }
            let same = std::ptr::eq(a.as_ptr(), b.as_ptr());
            let panels = d.div_ceil(MR);
            let kc_max = KC.min(n);
            // Every element a block uses is written by `pack` (zero past d), so the scratch is
            // only grown, never cleared.
            let block = panels * MR * kc_max;
            let needed = if same { block } else { 2 * block };
            if packing.len() < needed {
                packing.resize(needed, 0.0);
            }
            let (packed_a, packed_b) = packing[..needed].split_at_mut(block);
            // Panel p holds rows k0..k0+kc of features p·MR.., MR per row, zero past d. Each
            // source row is read once, front to back (the prefetcher streams it), and scattered
            // over the panels, which stay in L2.
            let pack = |src: &[$t], k0: usize, kc: usize, out: &mut [$t]| {
                for kk in 0..kc {
                    let row = &src[(k0 + kk) * d..(k0 + kk + 1) * d];
                    let mut chunks = row.chunks_exact(MR);
                    for (p, chunk) in chunks.by_ref().enumerate() {
                        let at = p * kc * MR + kk * MR;
                        // A fixed length: two vector moves, not a call.
                        let dst: &mut [$t; MR] = (&mut out[at..at + MR]).try_into().unwrap();
                        *dst = chunk.try_into().unwrap();
                    }
                    let rest = chunks.remainder();
                    if !rest.is_empty() {
                        let at = (panels - 1) * kc * MR + kk * MR;
                        out[at..at + rest.len()].copy_from_slice(rest);
                        out[at + rest.len()..at + MR].fill(0.0);
                    }
                }
            };
            for k0 in (0..n).step_by(kc_max) {
                let kc = kc_max.min(n - k0);
                pack(a, k0, kc, packed_a);
                if !same {
                    pack(b, k0, kc, packed_b);
                }
                let packed_b: &[$t] = if same { packed_a } else { packed_b };
                let packed_a = &*packed_a;
                // Rows i0..i0+NR of c (`rows`, row-major, d wide, from row i0): tiles of the
                // column panels q with q·MR ≤ the last row.
                let tile_rows = |g: usize, rows: &mut [$t]| {
                    let i0 = g * NR;
                    let last = (i0 + NR).min(d) - 1;
                    // Feature i of A for row kk is at offsets[r] + kk·MR (i = i0 + r); rows
                    // past d read feature d − 1 (valid memory, discarded below).
                    let offsets: [usize; NR] = std::array::from_fn(|r| {
                        let i = (i0 + r).min(d - 1);
                        (i / MR) * kc * MR + i % MR
                    });
                    let mut tile = [[0.0 as $t; MR]; NR];
                    for q in 0..=last / MR {
                        let j0 = q * MR;
                        let pv = &packed_b[q * kc * MR..(q + 1) * kc * MR];
                        // SAFETY: `available()` was asserted above, so the CPU has AVX2 and FMA;
                        // `pv` holds kc·MR values and every offset + (kc − 1)·MR is inside the
                        // panel of its feature, which `packed_a` holds.
                        unsafe { $name::tile(pv, packed_a, offsets, kc, &mut tile) };
                        for (r, values) in tile.iter().enumerate().take(last + 1 - i0) {
                            // Row i's columns j0..=i (lower triangle), below d.
                            let width = (i0 + r + 1 - j0.min(i0 + r + 1)).min(MR).min(d - j0);
                            let dst = &mut rows[r * d + j0..r * d + j0 + width];
                            dst.iter_mut()
                                .zip(&values[..width])
                                .for_each(|(o, v)| *o += alpha * *v);
                        }
                    }
                };
                let c = &mut c[..d * d];
                if parallel {
                    use rayon::prelude::*;
                    c.par_chunks_mut(NR * d)
                        .enumerate()
                        .for_each(|(g, rows)| tile_rows(g, rows));
                } else {
                    c.chunks_mut(NR * d)
                        .enumerate()
                        .for_each(|(g, rows)| tile_rows(g, rows));
                }
            }
        }

        mod $name {
            #[cfg(target_arch = "x86_64")]
            use std::arch::x86_64::*;

            use super::NR;

            const MR: usize = $mr;

            /// `out[r][j] = Σ_kk pa[kk·MR + j] · pb[offsets[r] + kk·MR]`: MR columns from one
            /// panel of vector loads, NR rows by broadcasts.
            ///
            /// # Safety
            /// The CPU must have AVX2 and FMA; `pa` must hold `kc·MR` values and `pb` every
            /// `offsets[r] + kk·MR` for `kk < kc`.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn tile(pa: &[$t], pb: &[$t], offsets: [usize; NR], kc: usize, out: &mut [[$t; MR]; NR]) {
                debug_assert!(pa.len() >= kc * MR);
                debug_assert!(offsets.iter().all(|&o| kc == 0 || o + (kc - 1) * MR < pb.len()));
                let (pa, pb) = (pa.as_ptr(), pb.as_ptr());
                let mut acc: [[$vec; NR]; 2] = [[$zero(); NR]; 2];
                for kk in 0..kc {
                    // SAFETY: kk < kc, so kk·MR + MR ≤ pa's length and offsets[j] + kk·MR is
                    // inside pb (the caller's contract).
                    unsafe {
                        let a0 = $load(pa.add(kk * MR));
                        let a1 = $load(pa.add(kk * MR + $lanes));
                        for j in 0..NR {
                            let b = $broadcast(&*pb.add(offsets[j] + kk * MR));
                            acc[0][j] = $fma(a0, b, acc[0][j]);
                            acc[1][j] = $fma(a1, b, acc[1][j]);
                        }
                    }
                }
                for j in 0..NR {
                    // SAFETY: out[j] holds MR = 2·lanes values.
                    unsafe {
                        $store(out[j].as_mut_ptr(), acc[0][j]);
                        $store(out[j].as_mut_ptr().add($lanes), acc[1][j]);
                    }
                }
            }

            /// Never called: [`super::available`] is false off x86-64.
            #[cfg(not(target_arch = "x86_64"))]
            pub(super) unsafe fn tile(_: &[$t], _: &[$t], _: [usize; NR], _: usize, _: &mut [[$t; MR]; NR]) {
                unreachable!("the Gram kernel runs on x86-64 only")
            }
        }
    };
}

gram_kernel!(
    gram_lower_f32,
    f32,
    16,
    8,
    __m256,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_broadcast_ss,
    _mm256_fmadd_ps
);
gram_kernel!(
    gram_lower_f64,
    f64,
    8,
    4,
    __m256d,
    _mm256_setzero_pd,
    _mm256_loadu_pd,
    _mm256_storeu_pd,
    _mm256_broadcast_sd,
    _mm256_fmadd_pd
);

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (((i + 1) * 2654435761 + seed * 40503) % 2001) as f64 / 1000.0 - 1.0)
            .collect()
    }

    /// The f64 reference `Σ_n a_n b_nᵀ`, every entry.
    fn reference(a: &[f64], b: &[f64], n: usize, d: usize) -> Vec<f64> {
        let mut c = vec![0.0; d * d];
        for row in 0..n {
            for i in 0..d {
                for j in 0..d {
                    c[i * d + j] += a[row * d + i] * b[row * d + j];
                }
            }
        }
        c
    }

    /// Shapes around every panel, tile and block edge of both dtypes: d below, at and past
    /// MR (8, 16) and NR (6), n below, at and past KC and across two blocks.
    #[test]
    fn lower_triangle_matches_dense_reference_over_adversarial_shapes() {
        if !available() {
            eprintln!("skipped: no AVX2/FMA");
            return;
        }
        // One scratch per dtype across every shape: a block must not read what an earlier,
        // wider call left in it.
        let (mut packing, mut packing32) = (Vec::new(), Vec::new());
        for &d in &[129, 1, 5, 6, 7, 8, 9, 15, 16, 17, 31, 33, 70] {
            for &n in &[0, 1, 3, KC - 1, KC, KC + 1, 2 * KC + 37] {
                for weighted in [false, true] {
                    let a = values(n * d, d + n);
                    let w = values(n, 7);
                    let b: Vec<f64> = if weighted {
                        (0..n * d).map(|x| a[x] * w[x / d]).collect()
                    } else {
                        a.clone()
                    };
                    let want = reference(&a, &b, n, d);
                    let alpha = -0.75;
                    let sentinel = 3.25;
                    // f64
                    let mut c = vec![sentinel; d * d];
                    let b_ref = if weighted { &b[..] } else { &a[..] };
                    gram_lower_f64(&mut c, &a, b_ref, n, d, alpha, n % 2 == 1, &mut packing);
                    // f32
                    let (a32, b32): (Vec<f32>, Vec<f32>) = (
                        a.iter().map(|&x| x as f32).collect(),
                        b.iter().map(|&x| x as f32).collect(),
                    );
                    let mut c32 = vec![sentinel as f32; d * d];
                    let b32_ref = if weighted { &b32[..] } else { &a32[..] };
                    gram_lower_f32(&mut c32, &a32, b32_ref, n, d, alpha as f32, n % 2 == 0, &mut packing32);
                    let scale = (n as f64).max(1.0);
                    for i in 0..d {
                        for j in 0..d {
                            let expect = if j <= i {
                                sentinel + alpha * want[i * d + j]
                            } else {
                                sentinel
                            };
                            let (got, got32) = (c[i * d + j], c32[i * d + j] as f64);
                            assert!(
                                (got - expect).abs() <= 1e-12 * scale,
                                "f64 d={d} n={n} weighted={weighted} ({i},{j}): {got} vs {expect}"
                            );
                            assert!(
                                (got32 - expect).abs() <= 2e-5 * scale,
                                "f32 d={d} n={n} weighted={weighted} ({i},{j}): {got32} vs {expect}"
                            );
                        }
                    }
                }
            }
        }
    }
}
