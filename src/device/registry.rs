//! The kernel registry: every GPU kernel's entry name, family (source file), block size and
//! parameter block, declared once for both runtimes.
//!
//! A family is one file in `shaders/` (WGSL) and one in `kernels/` (CUDA) with the same entry
//! points, the same storage slots and one parameter struct. Each struct is declared here by its
//! fields; the WGSL struct `Params` holds the integers then the reals as f32, the CUDA struct
//! the reals as f64 then the integers. A unit test checks every WGSL struct against its entry by
//! naga reflection, and every CUDA compile checks its struct with `static_assert`s generated
//! from the entry ([`Family::cuda_source`]).

use crate::error::Result;

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
    /// `elementwise`: len items of a rows × cols matrix, α.
    ElementwiseParams for Elementwise as "ElemParams" {
        ints: [len, rows, cols, flags],
        reals: [alpha],
    }
}

/// A device error unless `params` is the parameter struct of `kernel`'s family and the launch
/// passes one buffer (or `None`) per slot of the family, as every entry point's signature has.
pub(crate) fn check_launch(kernel: Kernel, params: &KernelParams, buffers: usize) -> Result<()> {
    let slots = kernel.family().slots().len();
    if buffers != slots {
        return Err(crate::error::Error::Device {
            backend: "gpu",
            reason: format!(
                "`{}` takes the {slots} buffer slots of {:?}, the launch passes {buffers}",
                kernel.name(),
                kernel.family()
            ),
        });
    }
    if params.family != kernel.family() {
        return Err(crate::error::Error::Device {
            backend: "gpu",
            reason: format!(
                "`{}` takes {:?} parameters, got {:?}",
                kernel.name(),
                kernel.family(),
                params.family
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
