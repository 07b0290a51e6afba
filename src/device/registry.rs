//! The kernel registry: every GPU kernel's entry name, family (source file), block size and
//! parameter block, declared once for both runtimes.
//!
//! A family is one file in `shaders/` (WGSL) and one in `kernels/` (CUDA) with the same entry
//! points, the same storage slots and one parameter struct. Each struct is declared here by its
//! fields; the WGSL struct `Params` holds the integers then the reals as f32, the CUDA struct
//! the reals as f64 then the integers. A unit test checks every WGSL struct against its entry by
//! naga reflection, and every CUDA compile checks its struct with `static_assert`s generated
//! from the entry ([`Family::cuda_source`]).

use super::CovLayout;
use crate::error::{Error, Result};
use crate::scalar::DType;

/// How a kernel binds a storage buffer slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Read only (`var<storage, read>`, `const T*`).
    Read,
    /// Read and written (`var<storage, read_write>`, `T*`).
    Write,
}

use Access::{Read, Write};

/// One kernel family: a WGSL file and a CUDA file with the same entry points.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Family {
    /// `gemm`: the strided, batched, weighted gemm.
    Gemm,
    /// `ggn`: GGN block weights, Kronecker rows, basis lifting.
    Ggn,
    /// `kron`: the Woodbury Kronecker factors.
    Kron,
    /// `cholesky`: blocked Cholesky and triangular solve.
    Cholesky,
    /// `predictive`: logit covariance contraction and the links.
    Predictive,
    /// `elementwise`: axpy and friends, triangle moves, max-abs.
    Elementwise,
}

/// A parameter struct's fields: the integers, then the reals, in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    /// The CUDA struct's name.
    pub cuda_struct: &'static str,
    /// Integer fields (`u32`).
    pub ints: &'static [&'static str],
    /// Real fields (f32 in WGSL, f64 in CUDA).
    pub reals: &'static [&'static str],
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 6] = [
        Family::Gemm,
        Family::Ggn,
        Family::Kron,
        Family::Cholesky,
        Family::Predictive,
        Family::Elementwise,
    ];

    /// The file stem: `shaders/<stem>.wgsl`, `kernels/<stem>.cu`.
    pub fn stem(self) -> &'static str {
        match self {
            Family::Gemm => "gemm",
            Family::Ggn => "ggn",
            Family::Kron => "kron",
            Family::Cholesky => "cholesky",
            Family::Predictive => "predictive",
            Family::Elementwise => "elementwise",
        }
    }

    /// The CUDA file name under `kernels/`.
    pub fn file(self) -> &'static str {
        match self {
            Family::Gemm => "gemm.cu",
            Family::Ggn => "ggn.cu",
            Family::Kron => "kron.cu",
            Family::Cholesky => "cholesky.cu",
            Family::Predictive => "predictive.cu",
            Family::Elementwise => "elementwise.cu",
        }
    }

    /// The WGSL file name under `shaders/`.
    pub fn wgsl_file(self) -> &'static str {
        match self {
            Family::Gemm => "gemm.wgsl",
            Family::Ggn => "ggn.wgsl",
            Family::Kron => "kron.wgsl",
            Family::Cholesky => "cholesky.wgsl",
            Family::Predictive => "predictive.wgsl",
            Family::Elementwise => "elementwise.wgsl",
        }
    }

    /// The storage slots every entry point of the family takes, in order (WGSL bindings 1, 2, …
    /// after the parameters; CUDA pointer arguments after the parameter block). Entry points
    /// that use fewer get a placeholder (WGSL) or null (CUDA) in the others.
    pub fn slots(self) -> &'static [Access] {
        match self {
            // a, b, w, c
            Family::Gemm => &[Read, Read, Read, Write],
            // two inputs, one output
            Family::Ggn | Family::Kron => &[Read, Read, Write],
            // l, a, out, status
            Family::Cholesky => &[Read, Write, Write, Write],
            // mean, cov, eps, out, scratch
            Family::Predictive => &[Read, Read, Read, Write, Write],
            // x, y, result
            Family::Elementwise => &[Read, Write, Write],
        }
    }

    /// The names of the family's kernels, without the dtype suffix.
    pub fn kernels(self) -> Vec<&'static str> {
        Kernel::ALL
            .iter()
            .filter(|k| k.family() == self)
            .map(|k| k.name())
            .collect()
    }

    /// The family's parameter struct.
    pub fn params(self) -> ParamLayout {
        match self {
            Family::Gemm => GemmParams::LAYOUT,
            Family::Ggn => GgnParams::LAYOUT,
            Family::Kron => KronParams::LAYOUT,
            Family::Cholesky => CholeskyParams::LAYOUT,
            Family::Predictive => PredictiveParams::LAYOUT,
            Family::Elementwise => ElementwiseParams::LAYOUT,
        }
    }

    /// The WGSL source, built into the library.
    pub fn wgsl(self) -> &'static str {
        match self {
            Family::Gemm => include_str!("../../shaders/gemm.wgsl"),
            Family::Ggn => include_str!("../../shaders/ggn.wgsl"),
            Family::Kron => include_str!("../../shaders/kron.wgsl"),
            Family::Cholesky => include_str!("../../shaders/cholesky.wgsl"),
            Family::Predictive => include_str!("../../shaders/predictive.wgsl"),
            Family::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
        }
    }

    /// The CUDA file's text.
    pub fn cuda(self) -> &'static str {
        match self {
            Family::Gemm => include_str!("../../kernels/gemm.cu"),
            Family::Ggn => include_str!("../../kernels/ggn.cu"),
            Family::Kron => include_str!("../../kernels/kron.cu"),
            Family::Cholesky => include_str!("../../kernels/cholesky.cu"),
            Family::Predictive => include_str!("../../kernels/predictive.cu"),
            Family::Elementwise => include_str!("../../kernels/elementwise.cu"),
        }
    }

    /// The translation unit NVRTC compiles: `common.cuh`, the family's file, then compile-time
    /// checks that its parameter struct is the registry's: a constant initialised by position
    /// (the reals, then the integers) must read back each value under the registry's field
    /// name, and the size must be that of exactly those fields (reals as f64 from offset 0, then
    /// the integers as u32), so every field sits at the offset the host packs it at.
    pub fn cuda_source(self) -> String {
        let layout = self.params();
        let name = layout.cuda_struct;
        let (reals, ints) = (layout.reals.len(), layout.ints.len());
        let values: Vec<String> = (0..reals)
            .map(|i| format!("{}.5", i + 1))
            .chain((0..ints).map(|j| format!("{}u", j + 1)))
            .collect();
        let mut checks = format!(
            "namespace registry_check {{\nconstexpr {name} probe{{{}}};\n",
            values.join(", ")
        );
        for (field, value) in layout.reals.iter().chain(layout.ints).zip(&values) {
            checks += &format!(
                "static_assert(probe.{field} == {value}, \"{name}.{field}: field order differs from src/device/registry.rs\");\n"
            );
        }
        let bytes = 8 * reals + 4 * ints;
        let size = if reals > 0 { bytes.next_multiple_of(8) } else { bytes };
        checks += &format!(
            "static_assert(sizeof({name}) == {size}, \"{name}: fields differ from src/device/registry.rs\");\n\
             static_assert(sizeof({name}) <= sizeof(Words), \"{name} exceeds the parameter block\");\n}}\n"
        );
        format!(
            "{}\n#line 1 \"{}\"\n{}\n// Layout checks generated from src/device/registry.rs.\n{checks}",
            include_str!("../../kernels/common.cuh"),
            self.file(),
            self.cuda()
        )
    }
}

macro_rules! kernels {
    ($($(#[doc = $doc:literal])* $kernel:ident => ($name:literal, $family:ident, $block:expr),)*) => {
        /// Every kernel entry point a runtime provides. The WGSL entry point is
        /// [`Kernel::name`]; the CUDA one adds the dtype suffix (`gemm_f32`).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum Kernel {
            $($(#[doc = $doc])* $kernel,)*
        }

        impl Kernel {
            /// Every kernel.
            pub const ALL: &'static [Kernel] = &[$(Kernel::$kernel,)*];

            /// The entry point's name, without a dtype suffix.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => $name,)*
                }
            }

            /// The family (source files) that holds the kernel.
            pub fn family(self) -> Family {
                match self {
                    $(Kernel::$kernel => Family::$family,)*
                }
            }

            /// Threads per block (workgroup) the kernel is written for, (x, y).
            pub fn block_threads(self) -> (u32, u32) {
                match self {
                    $(Kernel::$kernel => $block,)*
                }
            }
        }
    };
}

kernels! {
    /// `C ← β C + α op(A) diag(w) op(B)`, strided and batched, on 64 × 64 tiles.
    Gemm => ("gemm", Gemm, (16, 16)),
    /// The Full GGN's per-sample class-block weights `Rᵀ Λ_n R`.
    GgnWeights => ("ggn_weights", Ggn, (256, 1)),
    /// The rows `s_r ⊗ φ_n` of a factored curvature.
    KronRows => ("kron_rows", Ggn, (256, 1)),
    /// Lifts a reduced-basis matrix back to all classes.
    KronMixColumns => ("kron_mix_columns", Ggn, (256, 1)),
    /// The factors `S_j = diag(√p_j) − p_j √p_jᵀ` of the Woodbury products.
    KronFactors => ("kron_factors", Kron, (256, 1)),
    /// Mixes `Σ (I ⊗ Φᵀ)` with the factors into U.
    KronMixU => ("kron_mix_u", Kron, (256, 1)),
    /// Mixes `Φ U` with the factors into G.
    KronMixG => ("kron_mix_g", Kron, (256, 1)),
    /// Factors one diagonal block.
    PotrfDiagonal => ("potrf_diagonal", Cholesky, (32, 1)),
    /// Solves the panel below a diagonal block.
    TrsmPanel => ("trsm_panel", Cholesky, (64, 1)),
    /// Solves one block row of a triangular system.
    TrsmBlock => ("trsm_block", Cholesky, (64, 1)),
    /// Contracts `Φ Σ` with φ_n into logit covariances.
    RowDot => ("row_dot", Predictive, (256, 1)),
    /// Row-wise stable softmax.
    SoftmaxRows => ("softmax_rows", Predictive, (256, 1)),
    /// The mean-field probit link.
    Probit => ("probit", Predictive, (256, 1)),
    /// The Monte Carlo link.
    MonteCarlo => ("monte_carlo", Predictive, (256, 1)),
    /// The Laplace bridge.
    Bridge => ("bridge", Predictive, (256, 1)),
    /// `p_max (1 − p_max)` per row.
    CategoricalWeights => ("categorical_weights", Predictive, (256, 1)),
    /// `y ← y + α x`.
    Axpy => ("axpy", Elementwise, (256, 1)),
    /// `y ← y ∘ x`.
    Hadamard => ("hadamard", Elementwise, (256, 1)),
    /// Adds a row to every row.
    AddRow => ("add_row", Elementwise, (256, 1)),
    /// Adds a value to the diagonal.
    AddDiagonal => ("add_diagonal", Elementwise, (256, 1)),
    /// `max |x|` on the bits, by atomic max.
    MaxAbs => ("max_abs", Elementwise, (256, 1)),
    /// Copies the lower triangle onto the upper one.
    MirrorLower => ("mirror_lower", Elementwise, (256, 1)),
    /// Zeroes the strict upper triangle.
    ZeroUpper => ("zero_upper", Elementwise, (256, 1)),
    /// `(A + Aᵀ)/2`.
    Symmetrize => ("symmetrize", Elementwise, (256, 1)),
    /// Out-of-place transpose.
    Transpose => ("transpose", Elementwise, (256, 1)),
    /// Gathers a range of feature rows, appending the bias column of ones.
    FeatureRows => ("feature_rows", Elementwise, (256, 1)),
    /// Scales each row by a vector entry.
    ScaleRows => ("scale_rows", Elementwise, (256, 1)),
    /// Scales each column by a vector entry.
    ScaleColumns => ("scale_columns", Elementwise, (256, 1)),
}

/// How many blocks a launch runs.
#[derive(Clone, Copy, Debug)]
pub enum Grid {
    /// One thread per item, in blocks of [`Kernel::block_threads`], folded into (x, y, z) by
    /// [`fold_threads`](super::launch::fold_threads).
    Threads(usize),
    /// An explicit grid of blocks, within the runtime's grid limits.
    Blocks(usize, usize, usize),
}

/// The buffers of one launch, each named as its kernel's signature names it
/// (`kernels/<family>.cu`, `shaders/<family>.wgsl`). [`Args::into_slots`] is the one place
/// that puts the names in the family's slot order.
pub enum Args<R> {
    /// `gemm`: `C ← β C + α op(A) diag(w) op(B)`.
    Gemm { a: R, b: R, weights: Option<R>, c: R },
    /// `ggn_weights`: `Rᵀ Λ_n R` of `probs`, R = `basis` or the identity.
    GgnWeights { probs: R, basis: Option<R>, out: R },
    /// `kron_rows`: `factors[r, a] φ[⌊r / rank⌋, x]`.
    KronRows { factors: R, phi: R, out: R },
    /// `kron_mix_columns`: `Z (Rᵀ ⊗ I) + c (I − RRᵀ) ⊗ I`.
    KronMixColumns { z: R, basis: R, out: R },
    /// `kron_factors`: `S_j = diag(√p_j) − p_j √p_jᵀ`.
    KronFactors { probs: R, out: R },
    /// `kron_mix_u`: `U = T` mixed by the factors.
    KronMixU { t: R, factors: R, u: R },
    /// `kron_mix_g`: `G = Y` mixed by the factors.
    KronMixG { y: R, factors: R, g: R },
    /// `potrf_diagonal`: factors a diagonal block of `a` into `diagonal`; pivots to `status`.
    PotrfDiagonal { a: R, diagonal: R, status: R },
    /// `trsm_panel`: solves the panel of `a` below `diagonal` into `panel`.
    TrsmPanel { diagonal: R, a: R, panel: R },
    /// `trsm_block`: solves one block row of `b` with `l`, a copy into `solved`.
    TrsmBlock { l: R, b: R, solved: R },
    /// `row_dot`: contracts `t = Φ Σ` with φ into logit covariances.
    RowDot { t: R, phi: R, out: R },
    /// `probit`, `monte_carlo`, `bridge`: probabilities from logit means and covariances.
    Link {
        mean: R,
        cov: R,
        eps: Option<R>,
        out: R,
        scratch: R,
    },
    /// `softmax_rows`, in place.
    SoftmaxRows { logits: R },
    /// `categorical_weights`: `p_max (1 − p_max)` per row.
    CategoricalWeights { probs: R, out: R },
    /// The elementwise kernels: `y ← f(x, y)`.
    Elementwise { x: Option<R>, y: R },
    /// `max_abs`: `result ← max(result, max |x|)`.
    MaxAbs { x: R, result: R },
}

impl<R> Args<R> {
    /// The buffers in `kernel`'s slot order (`None`: a slot it does not take); a device
    /// error when these arguments are not `kernel`'s.
    pub(crate) fn into_slots(self, kernel: Kernel) -> Result<Vec<Option<R>>> {
        use Kernel as K;
        let slots = match (kernel, self) {
            (K::Gemm, Args::Gemm { a, b, weights, c }) => vec![Some(a), Some(b), weights, Some(c)],
            (K::GgnWeights, Args::GgnWeights { probs, basis, out }) => vec![Some(probs), basis, Some(out)],
            (K::KronRows, Args::KronRows { factors, phi, out }) => vec![Some(factors), Some(phi), Some(out)],
            (K::KronMixColumns, Args::KronMixColumns { z, basis, out }) => vec![Some(z), Some(basis), Some(out)],
            (K::KronFactors, Args::KronFactors { probs, out }) => vec![Some(probs), None, Some(out)],
            (K::KronMixU, Args::KronMixU { t, factors, u }) => vec![Some(t), Some(factors), Some(u)],
            (K::KronMixG, Args::KronMixG { y, factors, g }) => vec![Some(y), Some(factors), Some(g)],
            (K::PotrfDiagonal, Args::PotrfDiagonal { a, diagonal, status }) => {
                vec![None, Some(a), Some(diagonal), Some(status)]
            }
            (K::TrsmPanel, Args::TrsmPanel { diagonal, a, panel }) => vec![Some(diagonal), Some(a), Some(panel), None],
            (K::TrsmBlock, Args::TrsmBlock { l, b, solved }) => vec![Some(l), Some(b), Some(solved), None],
            (K::RowDot, Args::RowDot { t, phi, out }) => vec![Some(t), Some(phi), None, Some(out), None],
            (
                K::Probit | K::MonteCarlo | K::Bridge,
                Args::Link {
                    mean,
                    cov,
                    eps,
                    out,
                    scratch,
                },
            ) => {
                vec![Some(mean), Some(cov), eps, Some(out), Some(scratch)]
            }
            (K::SoftmaxRows, Args::SoftmaxRows { logits }) => vec![None, None, None, Some(logits), None],
            (K::CategoricalWeights, Args::CategoricalWeights { probs, out }) => {
                vec![Some(probs), None, None, Some(out), None]
            }
            (K::MaxAbs, Args::MaxAbs { x, result }) => vec![Some(x), None, Some(result)],
            (kernel, Args::Elementwise { x, y }) if kernel.family() == Family::Elementwise && kernel != K::MaxAbs => {
                vec![x, Some(y), None]
            }
            (kernel, _) => {
                return Err(Error::Device {
                    backend: "gpu",
                    reason: format!("`{}` launched with another kernel's arguments", kernel.name()),
                });
            }
        };
        Ok(slots)
    }
}

/// A kernel's parameter block as a runtime packs it: the family it belongs to, its integer
/// fields and its real fields, each in the order of the family's struct.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelParams {
    /// The family whose struct this is.
    pub family: Family,
    /// Integer fields, in order.
    pub ints: Vec<u32>,
    /// Real fields, in order.
    pub reals: Vec<f64>,
}

/// Converts a size or offset to a parameter field. Every one indexes a buffer whose element
/// count was checked against 32 bits when it was allocated, so it fits.
pub(crate) fn field(v: usize) -> u32 {
    debug_assert!(u32::try_from(v).is_ok(), "kernel parameter {v} exceeds 32 bits");
    v as u32
}

macro_rules! params {
    ($(#[doc = $doc:literal])* $name:ident for $family:ident as $cuda:literal {
        ints: [$($int:ident),* $(,)?],
        reals: [$($real:ident),* $(,)?] $(,)?
    }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq)]
        pub(crate) struct $name {
            $(pub(crate) $int: u32,)*
            $(pub(crate) $real: f64,)*
        }

        impl $name {
            /// The struct's fields, as the kernels declare them.
            pub(crate) const LAYOUT: ParamLayout = ParamLayout {
                cuda_struct: $cuda,
                ints: &[$(stringify!($int)),*],
                reals: &[$(stringify!($real)),*],
            };
        }

        impl $name {
            /// The struct back from a launch's parameter block (the family was checked).
            #[allow(unused_mut, unused_variables)]
            fn of(p: &KernelParams) -> Self {
                let (mut ints, mut reals) = (p.ints.iter().copied(), p.reals.iter().copied());
                $name {
                    $($int: ints.next().unwrap_or(0),)*
                    $($real: reals.next().unwrap_or(0.0),)*
                }
            }
        }

        impl From<$name> for KernelParams {
            fn from(p: $name) -> KernelParams {
                KernelParams {
                    family: Family::$family,
                    ints: vec![$(p.$int),*],
                    reals: vec![$(p.$real),*],
                }
            }
        }
    };
}

params! {
    /// `gemm`: C (m × n) over a contraction of k, batch entries `outer × inner`; operands at
    /// `off + i·rs + j·cs + outer·bo + inner·bi`; (x0, y0, z0) the launch's first tile and entry.
    GemmParams for Gemm as "GemmParams" {
        ints: [m, n, k, flags, a_off, a_rs, a_cs, b_off, b_rs, b_cs, c_off, c_rs, w_off, w_s, inner,
               a_bo, a_bi, b_bo, b_bi, c_bo, c_bi, w_bo, w_bi, x0, y0, z0],
        reals: [alpha, beta],
    }
}

params! {
    /// `ggn`: n samples, K classes, K' basis columns, D features, factor rank, first row.
    GgnParams for Ggn as "GgnParams" {
        ints: [n, k, kr, d, rank, flags, row0],
        reals: [complement],
    }
}

params! {
    /// `kron`: m samples, K classes, D features, P rows of Σ.
    KronParams for Kron as "KronParams" {
        ints: [m, k, d, rows],
        reals: [],
    }
}

params! {
    /// `cholesky`: side n, block j0..j0 + nb, rows below it, columns of the right-hand side.
    CholeskyParams for Cholesky as "CholParams" {
        ints: [n, j0, nb, rows, cols, flags],
        reals: [],
    }
}

params! {
    /// `predictive`: n rows, K classes, D features, the covariance layout, S Monte Carlo
    /// samples; `in_off`/`out_off` the row contraction's offsets, `first..last` the samples of
    /// a Monte Carlo launch; λ of the probit.
    PredictiveParams for Predictive as "PredParams" {
        ints: [n, k, d, cov_layout, samples, in_off, out_off, flags, first, last],
        reals: [lambda],
    }
}

params! {
    /// `elementwise`: len items of a rows × cols matrix ([`ElementwiseFlag`]s), α; `feature_rows`
    /// gathers rows `start .. start + rows`.
    ElementwiseParams for Elementwise as "ElemParams" {
        ints: [len, rows, cols, flags, start],
        reals: [alpha],
    }
}

impl ElementwiseParams {
    /// All items of a rows × cols matrix, no flags, α = 0.
    pub(crate) fn matrix(rows: usize, cols: usize) -> Self {
        ElementwiseParams {
            len: field(rows * cols),
            rows: field(rows),
            cols: field(cols),
            ..Default::default()
        }
    }
}

/// Declares the flags of one family's `flags` field: an enum, each variant's bit, and the name
/// of the constant both kernel languages declare for it (checked by a unit test below).
macro_rules! flags {
    ($(#[doc = $doc:literal])* $name:ident {
        $($(#[doc = $vdoc:literal])* $variant:ident = $bit:literal as $constant:literal,)*
    }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(dead_code)]
        pub(crate) enum $name {
            $($(#[doc = $vdoc])* $variant,)*
        }

        impl $name {
            /// Every flag: the kernels' constant and its bit.
            #[cfg(test)]
            const CONSTANTS: &'static [(&'static str, u32)] = &[$(($constant, $bit),)*];

            /// The flag's bit in the kernels' `flags` field.
            pub(crate) fn bit(self) -> u32 {
                match self {
                    $($name::$variant => $bit,)*
                }
            }

            /// The bits of the flags paired with `true`.
            #[allow(dead_code)]
            pub(crate) fn when(flags: &[(bool, $name)]) -> u32 {
                flags.iter().filter(|f| f.0).fold(0, |bits, f| bits | f.1.bit())
            }
        }
    };
}

flags! {
    /// `gemm` options.
    GemmFlag {
        /// Skip tiles strictly above the diagonal (a symmetric result, mirrored later).
        Lower = 1 as "GEMM_LOWER",
        /// Scale the contraction by the weights `w`.
        Weighted = 2 as "GEMM_WEIGHTED",
        /// β = 0: C is written, not read.
        Overwrite = 4 as "GEMM_OVERWRITE",
        /// Skip batch entries with inner > outer (the k ≤ l blocks of a symmetric result).
        LowerBlocks = 8 as "GEMM_LOWER_BLOCKS",
        /// Lower tiles only in the diagonal blocks (inner = outer).
        LowerDiagonalTiles = 16 as "GEMM_LOWER_DIAGONAL_TILES",
    }
}

flags! {
    /// `ggn` options.
    GgnFlag {
        /// No basis: R is the identity.
        IdentityBasis = 1 as "GGN_IDENTITY_BASIS",
    }
}

flags! {
    /// `cholesky` options.
    CholeskyFlag {
        /// `trsm_block` solves with Lᵀ instead of L.
        Transposed = 1 as "CHOL_TRANSPOSED",
    }
}

flags! {
    /// `predictive` options.
    PredictiveFlag {
        /// The first Monte Carlo launch: factor Σ_f and clear the sums.
        FirstLaunch = 1 as "PRED_FIRST_LAUNCH",
        /// The last Monte Carlo launch: divide by the samples.
        LastLaunch = 2 as "PRED_LAST_LAUNCH",
    }
}

flags! {
    /// `elementwise` options.
    ElementwiseFlag {
        /// `scale_rows`, `scale_columns`: scale by the square roots of x.
        Sqrt = 1 as "ELEM_SQRT",
        /// `feature_rows`: append a column of ones (the bias).
        AppendOnes = 1 as "ELEM_APPEND_ONES",
    }
}

#[cfg(test)]
impl Family {
    /// The constants of the family's `flags` field, as both kernel files declare them.
    fn flag_constants(self) -> &'static [(&'static str, u32)] {
        match self {
            Family::Gemm => GemmFlag::CONSTANTS,
            Family::Ggn => GgnFlag::CONSTANTS,
            Family::Kron => &[],
            Family::Cholesky => CholeskyFlag::CONSTANTS,
            Family::Predictive => PredictiveFlag::CONSTANTS,
            Family::Elementwise => ElementwiseFlag::CONSTANTS,
        }
    }
}

/// A device error unless `params` is the parameter struct of `kernel`'s family, the launch
/// passes one buffer (or `None`) per slot of the family, as every entry point's signature has,
/// and each slot the kernel touches under these parameters and this grid holds the bytes it
/// may touch there ([`slot_extents`]): `slot_bytes[i]` is the length of slot i's allocation.
/// Every runtime checks this before it launches, so no parameters, however built, make a
/// kernel index past an allocation.
pub(crate) fn check_launch(
    kernel: Kernel,
    dtype: DType,
    params: &KernelParams,
    slot_bytes: &[Option<usize>],
    grid: Grid,
) -> Result<()> {
    let device = |reason: String| Error::Device { backend: "gpu", reason };
    let family = kernel.family();
    let slots = family.slots().len();
    if slot_bytes.len() != slots {
        return Err(device(format!(
            "`{}` takes the {slots} buffer slots of {family:?}, the launch passes {}",
            kernel.name(),
            slot_bytes.len()
        )));
    }
    let layout = family.params();
    if params.family != family || params.ints.len() != layout.ints.len() || params.reals.len() != layout.reals.len() {
        return Err(device(format!(
            "`{}` takes {family:?} parameters, got {:?} with {} integers and {} reals",
            kernel.name(),
            params.family,
            params.ints.len(),
            params.reals.len()
        )));
    }
    let extents = slot_extents(kernel, dtype, params, grid)?;
    for (slot, (need, have)) in extents.iter().zip(slot_bytes).enumerate() {
        let Some(need) = *need else { continue };
        if need == 0 {
            continue;
        }
        match have {
            None => {
                return Err(device(format!(
                    "`{}` reads slot {slot} under these parameters, which the launch leaves empty",
                    kernel.name()
                )));
            }
            Some(have) if (*have as u128) < need => {
                return Err(device(format!(
                    "`{}` may touch {need} bytes of slot {slot}, whose allocation holds {have}",
                    kernel.name()
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The bytes each slot of `kernel` may touch under `params` over `grid`, from the kernel's
/// indexing (`kernels/<family>.cu`, `shaders/<family>.wgsl`): one past the largest element
/// index, times the element size (`None`: the slot is not touched). `Device` errors for
/// parameters a kernel cannot run with safely: an index that leaves 32 bits (the kernels index
/// in `u32`), a zero divisor, a Cholesky block over 32, a flag or layout out of range.
pub(crate) fn slot_extents(
    kernel: Kernel,
    dtype: DType,
    params: &KernelParams,
    grid: Grid,
) -> Result<Vec<Option<u128>>> {
    let refuse = |reason: &str| {
        Err(Error::Device {
            backend: "gpu",
            reason: format!("`{}`: {reason}", kernel.name()),
        })
    };
    let size: u128 = match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
    };
    // Elements 0 .. n as bytes, in u128: a product of four u32 fields fits.
    let elems = |n: u128| Some(n.saturating_mul(size));
    let u = |v: u32| v as u128;
    let extents: Vec<Option<u128>> = match kernel.family() {
        Family::Gemm => {
            let p = GemmParams::of(params);
            let Grid::Blocks(_, _, entries) = grid else {
                return refuse("the gemm kernel runs on an explicit grid of blocks");
            };
            if p.inner == 0 {
                return refuse("zero inner batch entries");
            }
            // The largest `outer·bo + inner·bi` over batch entries z0 .. z0 + entries: at the
            // last entry, or at the end of the outer row before it.
            let (last, inner) = (u(p.z0) + (entries as u128).max(1) - 1, u(p.inner));
            let batch = |bo: u32, bi: u32| {
                let at = |e: u128| (e / inner) * u(bo) + (e % inner) * u(bi);
                let row_start = last - last % inner;
                match row_start > u(p.z0) {
                    true => at(last).max(at(row_start - 1)),
                    false => at(last),
                }
            };
            let (m, n, k) = (u(p.m), u(p.n), u(p.k));
            let matrix = |off: u32, rows: u128, rs: u32, cols: u128, cs: u128, bo: u32, bi: u32| match rows * cols {
                0 => Some(0),
                _ => elems(u(off) + (rows - 1) * u(rs) + (cols - 1) * cs + batch(bo, bi) + 1),
            };
            vec![
                matrix(p.a_off, m, p.a_rs, k, u(p.a_cs), p.a_bo, p.a_bi),
                matrix(p.b_off, k, p.b_rs, n, u(p.b_cs), p.b_bo, p.b_bi),
                match p.flags & GemmFlag::Weighted.bit() {
                    0 => None,
                    _ => matrix(p.w_off, k, p.w_s, 1, 0, p.w_bo, p.w_bi),
                },
                matrix(p.c_off, m, p.c_rs, n, 1, p.c_bo, p.c_bi),
            ]
        }
        Family::Ggn => {
            let p = GgnParams::of(params);
            let (n, k, kr, d, rank) = (u(p.n), u(p.k), u(p.kr), u(p.d), u(p.rank));
            match kernel {
                Kernel::GgnWeights => vec![
                    elems(if n == 0 { 0 } else { (u(p.row0) + n) * k }),
                    if p.flags & GgnFlag::IdentityBasis.bit() != 0 {
                        None
                    } else {
                        elems(k * kr)
                    },
                    elems(n * kr * kr),
                ],
                Kernel::KronRows => {
                    if rank == 0 {
                        return refuse("rank 0");
                    }
                    vec![elems(n * rank * k), elems(n * d), elems(n * rank * k * d)]
                }
                _ => vec![elems(k * d * kr * d), elems(k * kr), elems((k * d) * (k * d))],
            }
        }
        Family::Kron => {
            let p = KronParams::of(params);
            let (m, k, rows) = (u(p.m), u(p.k), u(p.rows));
            match kernel {
                Kernel::KronFactors => vec![elems(m * k), None, elems(m * k * k)],
                Kernel::KronMixU => vec![elems(rows * k * m), elems(m * k * k), elems(rows * m * k)],
                _ => vec![elems((m * k) * (m * k)), elems(m * k * k), elems((m * k) * (m * k))],
            }
        }
        Family::Cholesky => {
            let p = CholeskyParams::of(params);
            let (n, j0, nb, rows, cols) = (u(p.n), u(p.j0), u(p.nb), u(p.rows), u(p.cols));
            if nb > 32 {
                return refuse("a block of more than 32 columns");
            }
            // Rows j0 .. j0 + r of an n-wide matrix, columns j0 .. j0 + nb.
            let block = |r: u128| if r * nb == 0 { 0 } else { (j0 + r - 1) * n + j0 + nb };
            match kernel {
                Kernel::PotrfDiagonal => vec![None, elems(block(nb)), elems(nb * 32), Some(4)],
                Kernel::TrsmPanel => vec![elems(32 * 32), elems(block(nb + rows)), elems(rows * nb), None],
                _ => vec![elems(block(nb)), elems((j0 + nb) * cols), elems(nb * cols), None],
            }
        }
        Family::Predictive => {
            let p = PredictiveParams::of(params);
            let (n, k, d) = (u(p.n), u(p.k), u(p.d));
            let cov = match CovLayout::of_code(p.cov_layout) {
                Some(CovLayout::Full) => elems(n * k * k),
                Some(CovLayout::Isotropic) => elems(n),
                Some(CovLayout::Diagonal) => elems(n * k),
                None => return refuse("an unknown covariance layout"),
            };
            match kernel {
                Kernel::RowDot => vec![
                    elems(k * n * k * d),
                    elems(if n == 0 { 0 } else { u(p.in_off) + n * d }),
                    None,
                    elems(if n == 0 { 0 } else { u(p.out_off) + n * k * k }),
                    None,
                ],
                Kernel::SoftmaxRows => vec![None, None, None, elems(n * k), None],
                Kernel::Probit => vec![elems(n * k), cov, None, elems(n * k), None],
                Kernel::MonteCarlo => {
                    if p.first > p.last || p.samples == 0 {
                        return refuse("samples out of order, or none");
                    }
                    vec![
                        elems(n * k),
                        cov,
                        elems(u(p.last) * k),
                        elems(n * k),
                        elems(n * (k * k + 2 * k)),
                    ]
                }
                Kernel::Bridge => vec![elems(n * k), cov, None, elems(n * k), elems(n * 2 * k)],
                _ => vec![elems(n * k), None, None, elems(n), None],
            }
        }
        Family::Elementwise => {
            let p = ElementwiseParams::of(params);
            let (len, rows, cols) = (u(p.len), u(p.rows), u(p.cols));
            if len > 0 && cols == 0 {
                return refuse("zero columns");
            }
            let last_row = if len == 0 { 0 } else { (len - 1) / cols.max(1) };
            // y[c·cols + r] for the c > r of a square matrix's first `len` items.
            let mirrored = match cols >= 2 && len > 0 {
                true => len.max((cols - 1) * cols + last_row.min(cols - 2) + 1),
                false => len,
            };
            match kernel {
                Kernel::Axpy | Kernel::Hadamard => vec![elems(len), elems(len), None],
                Kernel::AddRow => vec![elems(len.min(cols)), elems(len), None],
                Kernel::ScaleRows => vec![elems(if len == 0 { 0 } else { last_row + 1 }), elems(len), None],
                Kernel::ScaleColumns => vec![elems(len.min(cols)), elems(len), None],
                Kernel::AddDiagonal => vec![None, elems(if len == 0 { 0 } else { (len - 1) * (cols + 1) + 1 }), None],
                Kernel::MirrorLower | Kernel::Symmetrize => vec![None, elems(mirrored), None],
                Kernel::ZeroUpper => vec![None, elems(len), None],
                Kernel::Transpose => {
                    if len > 0 && rows == 0 {
                        return refuse("zero rows");
                    }
                    let read = if len == 0 {
                        0
                    } else {
                        (len.min(rows) - 1) * cols + (len - 1) / rows + 1
                    };
                    vec![elems(read), elems(len), None]
                }
                Kernel::FeatureRows => {
                    let ones = u(p.flags & ElementwiseFlag::AppendOnes.bit());
                    if ones > cols {
                        return refuse("a column of ones wider than the row");
                    }
                    let width = cols - ones;
                    let read = if len == 0 {
                        0
                    } else {
                        (u(p.start) + last_row + 1) * width
                    };
                    vec![elems(read), elems(len), None]
                }
                // The result is one word of the element's width, max'ed on its bits.
                _ => vec![elems(len), None, elems(1)],
            }
        }
    };
    // The kernels index in u32: every element index must fit.
    let limit = (u32::MAX as u128 + 1) * size;
    if extents.iter().flatten().any(|&bytes| bytes > limit) {
        return refuse("an element index beyond 32 bits");
    }
    Ok(extents)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gemm kernel's extents are one past the largest index its loops form, enumerated
    /// here over every batch entry, row, column and contraction step of strided, batched and
    /// split launches, for each operand; a slot one element short is refused.
    #[test]
    fn gemm_extents_are_the_largest_index_plus_one() {
        let cases = [
            // (m, n, k), (a_rs, a_cs, b_rs, b_cs, c_rs), inner, (a_bo, a_bi, b_bo, b_bi, c_bo, c_bi), z0, entries, offsets
            ((3, 4, 5), (5, 1, 4, 1, 4), 1, (0, 0, 0, 0, 0, 0), 0, 1, 0),
            ((3, 4, 5), (1, 3, 1, 5, 9), 3, (40, 15, 60, 20, 70, 30), 2, 5, 7),
            ((2, 2, 3), (3, 1, 2, 1, 2), 4, (100, 6, 30, 6, 50, 4), 5, 6, 1),
            ((1, 6, 2), (2, 1, 6, 1, 6), 2, (4, 2, 12, 12, 12, 6), 0, 3, 3),
        ];
        for (
            (m, n, k),
            (a_rs, a_cs, b_rs, b_cs, c_rs),
            inner,
            (a_bo, a_bi, b_bo, b_bi, c_bo, c_bi),
            z0,
            entries,
            off,
        ) in cases
        {
            let p = GemmParams {
                m,
                n,
                k,
                flags: 2,
                a_off: off,
                a_rs,
                a_cs,
                b_off: 2 * off,
                b_rs,
                b_cs,
                c_off: off + 1,
                c_rs,
                w_off: off,
                w_s: 2,
                inner,
                a_bo,
                a_bi,
                b_bo,
                b_bi,
                c_bo,
                c_bi,
                w_bo: a_bo,
                w_bi: b_bi,
                z0,
                ..Default::default()
            };
            let mut top = [0u32; 4];
            for e in z0..z0 + entries as u32 {
                let (o, i) = (e / inner, e % inner);
                for r in 0..m {
                    for c in 0..k {
                        top[0] = top[0].max(p.a_off + r * a_rs + c * a_cs + o * a_bo + i * a_bi + 1);
                    }
                }
                for c in 0..k {
                    for j in 0..n {
                        top[1] = top[1].max(p.b_off + c * b_rs + j * b_cs + o * b_bo + i * b_bi + 1);
                    }
                    top[2] = top[2].max(p.w_off + c * p.w_s + o * p.w_bo + i * p.w_bi + 1);
                }
                for r in 0..m {
                    for j in 0..n {
                        top[3] = top[3].max(p.c_off + r * c_rs + j + o * c_bo + i * c_bi + 1);
                    }
                }
            }
            let params: KernelParams = p.into();
            let grid = Grid::Blocks(1, 1, entries);
            let got = slot_extents(Kernel::Gemm, DType::F64, &params, grid).unwrap();
            let want: Vec<Option<u128>> = top.iter().map(|&t| Some(8 * t as u128)).collect();
            assert_eq!(got, want, "{p:?}");
            let exact: Vec<Option<usize>> = top.iter().map(|&t| Some(8 * t as usize)).collect();
            check_launch(Kernel::Gemm, DType::F64, &params, &exact, grid).unwrap();
            for slot in 0..4 {
                let mut short = exact.clone();
                short[slot] = short[slot].map(|b| b - 8);
                assert!(check_launch(Kernel::Gemm, DType::F64, &params, &short, grid).is_err());
            }
        }
    }

    /// Each family's flags are named constants with the registry's bits in both kernel files
    /// (`#define NAME BITu` in CUDA, `const NAME: u32 = BITu;` in WGSL), and the kernels test
    /// `flags` only through them.
    #[test]
    fn flag_constants_match_both_kernel_languages() {
        for family in Family::ALL {
            for &(name, bit) in family.flag_constants() {
                let cuda = format!("#define {name} {bit}u");
                assert!(family.cuda().contains(&cuda), "{}: no `{cuda}`", family.file());
                let wgsl = format!("const {name}: u32 = {bit}u;");
                assert!(family.wgsl().contains(&wgsl), "{}: no `{wgsl}`", family.wgsl_file());
            }
            for (file, source) in [(family.file(), family.cuda()), (family.wgsl_file(), family.wgsl())] {
                for (at, _) in source.match_indices("flags & ") {
                    let next = source[at + 8..].chars().next().unwrap_or(' ');
                    assert!(!next.is_ascii_digit(), "{file}: a literal flag bit at byte {at}");
                }
                assert!(!source.contains("- p.flags"), "{file}: arithmetic on flags");
            }
        }
    }

    /// Every WGSL `Params` struct has the registry's fields, in order, as u32 then f32, at
    /// consecutive 4-byte offsets (padding fields start with `_`).
    #[test]
    fn every_wgsl_params_struct_matches_the_registry() {
        for family in Family::ALL {
            let source = family.wgsl();
            let module = naga::front::wgsl::parse_str(source)
                .unwrap_or_else(|e| panic!("{}: {}", family.wgsl_file(), e.emit_to_string(source)));
            let (_, ty) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some("Params"))
                .unwrap_or_else(|| panic!("{}: no `Params` struct", family.wgsl_file()));
            let naga::TypeInner::Struct { members, .. } = &ty.inner else {
                panic!("{}: `Params` is not a struct", family.wgsl_file());
            };
            let layout = family.params();
            let want: Vec<(&str, naga::ScalarKind)> = layout
                .ints
                .iter()
                .map(|n| (*n, naga::ScalarKind::Uint))
                .chain(layout.reals.iter().map(|n| (*n, naga::ScalarKind::Float)))
                .collect();
            let got: Vec<(&str, naga::ScalarKind, u32)> = members
                .iter()
                .filter(|m| !m.name.as_deref().unwrap_or("_").starts_with('_'))
                .map(|m| {
                    let kind = match module.types[m.ty].inner {
                        naga::TypeInner::Scalar(s) => s.kind,
                        ref other => panic!("{}: field {:?} is {other:?}", family.wgsl_file(), m.name),
                    };
                    (m.name.as_deref().unwrap_or(""), kind, m.offset)
                })
                .collect();
            assert_eq!(
                got.iter().map(|g| (g.0, g.1)).collect::<Vec<_>>(),
                want,
                "{}: Params fields differ from the registry",
                family.wgsl_file()
            );
            for (i, (name, _, offset)) in got.iter().enumerate() {
                assert_eq!(
                    *offset,
                    4 * i as u32,
                    "{}: `{name}` at byte {offset}",
                    family.wgsl_file()
                );
            }
        }
    }

    /// Each kernel's WGSL entry point exists in its family's file, with the registry's
    /// workgroup size.
    #[test]
    fn every_kernel_has_its_wgsl_entry_point() {
        for &kernel in Kernel::ALL {
            let family = kernel.family();
            let module = naga::front::wgsl::parse_str(family.wgsl()).expect("parses");
            let entry = module
                .entry_points
                .iter()
                .find(|e| e.name == kernel.name())
                .unwrap_or_else(|| panic!("{}: no entry point `{}`", family.wgsl_file(), kernel.name()));
            let (x, y) = kernel.block_threads();
            assert_eq!(entry.workgroup_size, [x, y, 1], "{}: workgroup size", kernel.name());
        }
    }
}
