//! Posterior and accumulator files: safetensors holding the tensors, with JSON metadata and a
//! checksum, written durably (temporary file in the same folder, fsync, rename, fsync folder).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::durable::write_durably;
use super::io_error;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::posterior::{
    BiasMode, Calibration, Curvature, CurvatureAccumulator, Likelihood, Link, Posterior, RawPosterior, RawTensor,
    Structure,
};
use crate::scalar::{DType, Scalar};

const POSTERIOR_FORMAT: &str = "laplace-update.posterior";
const ACCUMULATOR_FORMAT: &str = "laplace-update.accumulator";
const VERSION: &str = "2";
/// Every tensor a file may hold; the checksum covers those present, in this (sorted) order.
const TENSORS: [&str; 9] = [
    "bias",
    "covariance",
    "head",
    "kron_a",
    "kron_a_vectors",
    "kron_g",
    "kron_g_vectors",
    "precision",
    "sum",
];

/// A named tensor to write: name, shape, little-endian bytes.
type NamedTensor = (&'static str, Vec<usize>, Vec<u8>);
/// A metadata entry.
type MetadataEntry = (&'static str, String);

/// What a posterior or accumulator file says about itself, readable without its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct PosteriorHeader {
    /// Format version.
    pub version: String,
    /// Covariance structure.
    pub structure: Structure,
    /// Likelihood.
    pub likelihood: Likelihood,
    /// Curvature approximation.
    pub curvature: Curvature,
    /// Prior precision τ: one value, or one per class (empty for an accumulator).
    pub prior_precision: Vec<f64>,
    /// Bias mode.
    pub bias: BiasMode,
    /// Element type of the tensors.
    pub dtype: DType,
    /// Number of classes K.
    pub classes: usize,
    /// Feature dimension D (without the bias column).
    pub features: usize,
    /// Samples folded in (accumulated, for an accumulator).
    pub samples_seen: usize,
    /// Kron: the weight N of the Kronecker sums, when forgetting made it differ from
    /// `samples_seen` (`None`: equal).
    pub kron_weight: Option<f64>,
    /// Temperature and link of predictions (the defaults where the file names none).
    pub calibration: Calibration,
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

fn bytes_of<T: Scalar>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// The tensors and metadata every file shares: head, bias, Kron sums, settings.
fn common_parts<T: Scalar>(raw: &RawPosterior<T>, format: &str) -> Result<(Vec<NamedTensor>, Vec<MetadataEntry>)> {
    let mut tensors = vec![(
        "head",
        vec![raw.classes, raw.head.len() / raw.classes],
        bytes_of(&raw.head),
    )];
    if let Some(b) = &raw.fixed_bias {
        tensors.push(("bias", vec![1, raw.classes], bytes_of(b)));
    }
    for factor in &raw.factors {
        // Every name a structure keeps must be one of TENSORS, which the checksum covers.
        let name = TENSORS.iter().copied().find(|n| *n == factor.name).ok_or_else(|| {
            Error::Unsupported(format!("tensor `{}` has no place in the posterior file", factor.name))
        })?;
        tensors.push((name, vec![factor.rows, factor.cols], bytes_of(&factor.values)));
    }
    let (likelihood, sigma) = match raw.likelihood {
        Likelihood::Classification => ("classification", String::new()),
        Likelihood::Regression { sigma_noise } => ("regression", sigma_noise.to_string()),
    };
    let (curvature, samples, seed) = match raw.curvature {
        Curvature::Ggn => ("ggn", String::new(), String::new()),
        Curvature::EmpiricalFisher => ("ef", String::new(), String::new()),
        Curvature::MonteCarloFisher { samples, seed } => ("mc", samples.to_string(), seed.to_string()),
    };
    let metadata = vec![
        ("format", format.to_string()),
        ("version", VERSION.to_string()),
        ("structure", raw.structure.name().to_string()),
        ("likelihood", likelihood.to_string()),
        ("sigma_noise", sigma),
        ("curvature", curvature.to_string()),
        ("mc_samples", samples),
        ("mc_seed", seed),
        (
            "bias",
            if raw.bias_mode == BiasMode::InPosterior {
                "posterior"
            } else {
                "fixed"
            }
            .to_string(),
        ),
        ("dtype", T::DTYPE.name().to_string()),
        ("classes", raw.classes.to_string()),
        ("features", raw.features.to_string()),
        ("samples_seen", raw.samples_seen.to_string()),
    ];
    let mut metadata = metadata;
    let calibration = raw.calibration;
    metadata.push(("temperature", calibration.temperature.to_string()));
    metadata.push(("link", calibration.link.name().to_string()));
    if let Some(lambda) = calibration.link.lambda() {
        metadata.push(("probit_lambda", lambda.to_string()));
    }
    if let Link::MonteCarlo { samples, seed } = calibration.link {
        metadata.push(("link_samples", samples.to_string()));
        metadata.push(("link_seed", seed.to_string()));
    }
    if raw.factor_weight != raw.samples_seen as f64 {
        metadata.push(("kron_weight", raw.factor_weight.to_string()));
    }
    Ok((tensors, metadata))
}

/// Serialises tensors and metadata with the checksum; `path` names the file in errors.
fn serialize(
    path: &Path,
    dtype: DType,
    mut tensors: Vec<NamedTensor>,
    metadata: Vec<MetadataEntry>,
) -> Result<Vec<u8>> {
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let checksum = checksum(tensors.iter().map(|t| t.2.as_slice()));
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .chain([("checksum", format!("crc32:{checksum:08x}"))])
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let fail = |e: safetensors::SafeTensorError| Error::Format {
        what: path.display().to_string(),
        reason: e.to_string(),
    };
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(st_dtype(dtype), shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(fail)
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(fail)
}

/// Where in-memory files are named in errors.
const IN_MEMORY: &str = "<bytes>";

/// Saves `post` to `path` durably: a crash mid-write leaves any previous file intact.
pub fn save_posterior<D: Device, T: Scalar>(post: &Posterior<D, T>, path: &Path) -> Result<()> {
    write_durably(path, &posterior_bytes(post, path)?)
}

/// `post` as the bytes of its posterior file ([`save_posterior`] without the file), for
/// pickling and for shipping between processes; [`posterior_from_bytes`] reads them back.
pub fn posterior_to_bytes<D: Device, T: Scalar>(post: &Posterior<D, T>) -> Result<Vec<u8>> {
    posterior_bytes(post, Path::new(IN_MEMORY))
}

fn posterior_bytes<D: Device, T: Scalar>(post: &Posterior<D, T>, path: &Path) -> Result<Vec<u8>> {
    let raw = post.to_raw()?;
    let (mut tensors, mut metadata) = common_parts(&raw, POSTERIOR_FORMAT)?;
    let (rows, cols) = raw.stored_shape();
    tensors.push(("covariance", vec![rows, cols], bytes_of(&raw.covariance)));
    tensors.push(("precision", vec![rows, cols], bytes_of(&raw.precision)));
    let tau: Vec<String> = raw.prior_precision.iter().map(|t| t.as_f64().to_string()).collect();
    metadata.push(("prior_precision", tau.join(",")));
    serialize(path, T::DTYPE, tensors, metadata)
}

/// Saves a partial [`CurvatureAccumulator`] durably, for merging elsewhere.
pub fn save_accumulator<D: Device, T: Scalar>(acc: &CurvatureAccumulator<D, T>, path: &Path) -> Result<()> {
    write_durably(path, &accumulator_bytes(acc, path)?)
}

/// `acc` as the bytes of its accumulator file; [`accumulator_from_bytes`] reads them back.
pub fn accumulator_to_bytes<D: Device, T: Scalar>(acc: &CurvatureAccumulator<D, T>) -> Result<Vec<u8>> {
    accumulator_bytes(acc, Path::new(IN_MEMORY))
}

fn accumulator_bytes<D: Device, T: Scalar>(acc: &CurvatureAccumulator<D, T>, path: &Path) -> Result<Vec<u8>> {
    let raw = acc.to_raw()?;
    let (tensors, mut metadata) = common_parts(&raw, ACCUMULATOR_FORMAT)?;
    metadata.push(("prior_precision", String::new()));
    serialize(path, T::DTYPE, tensors, metadata)
}

/// Reads the header of the posterior or accumulator file at `path`.
pub fn peek_posterior(path: &Path) -> Result<PosteriorHeader> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let (_, header, _) = parse(&bytes, path)?;
    Ok(header)
}

/// Loads the posterior at `path` onto `device`. The file's dtype must be `T`.
pub fn load_posterior<D: Device, T: Scalar>(device: &D, path: &Path) -> Result<Posterior<D, T>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    posterior_from(device, &bytes, path)
}

/// The posterior in `bytes` (from [`posterior_to_bytes`], or a file's contents) on `device`,
/// checked as [`load_posterior`] checks a file.
pub fn posterior_from_bytes<D: Device, T: Scalar>(device: &D, bytes: &[u8]) -> Result<Posterior<D, T>> {
    posterior_from(device, bytes, Path::new(IN_MEMORY))
}

/// The header of the posterior or accumulator in `bytes`.
pub fn peek_bytes(bytes: &[u8]) -> Result<PosteriorHeader> {
    Ok(parse(bytes, Path::new(IN_MEMORY))?.1)
}

fn posterior_from<D: Device, T: Scalar>(device: &D, bytes: &[u8], path: &Path) -> Result<Posterior<D, T>> {
    let (file, header, format) = parse(bytes, path)?;
    let fail = |reason: String| Error::Format {
        what: path.display().to_string(),
        reason,
    };
    if format != POSTERIOR_FORMAT {
        return Err(fail("a curvature accumulator, not a posterior: finish it first".into()));
    }
    // The host copies of the tensors and the posterior built from them.
    let da = header.bias.augmented(header.features);
    let resident = crate::posterior::resident_bytes(header.structure, header.classes, da, std::mem::size_of::<T>());
    crate::memory::ensure(
        resident.saturating_mul(2),
        || format!("loading {}", path.display()),
        |_| String::new(),
    )?;
    let (raw, tensors) = raw_parts::<T>(&file, &header, path)?;
    let mut raw = raw;
    raw.precision = tensors.require("precision")?;
    raw.covariance = tensors.require("covariance")?;
    Posterior::from_raw(device, raw).map_err(|e| fail(format!("inconsistent contents: {e}")))
}

/// Loads a partial accumulator saved by [`save_accumulator`] onto `device`; `chunk_rows` is
/// the chunk size of its further accumulation.
pub fn load_accumulator<D: Device, T: Scalar>(
    device: &D,
    path: &Path,
    chunk_rows: usize,
) -> Result<CurvatureAccumulator<D, T>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    accumulator_from(device, &bytes, path, chunk_rows)
}

/// The accumulator in `bytes` (from [`accumulator_to_bytes`]) on `device`, as
/// [`load_accumulator`].
pub fn accumulator_from_bytes<D: Device, T: Scalar>(
    device: &D,
    bytes: &[u8],
    chunk_rows: usize,
) -> Result<CurvatureAccumulator<D, T>> {
    accumulator_from(device, bytes, Path::new(IN_MEMORY), chunk_rows)
}

fn accumulator_from<D: Device, T: Scalar>(
    device: &D,
    bytes: &[u8],
    path: &Path,
    chunk_rows: usize,
) -> Result<CurvatureAccumulator<D, T>> {
    let (file, header, format) = parse(bytes, path)?;
    let fail = |reason: String| Error::Format {
        what: path.display().to_string(),
        reason,
    };
    if format != ACCUMULATOR_FORMAT {
        return Err(fail("a posterior, not a curvature accumulator".into()));
    }
    let (raw, _) = raw_parts::<T>(&file, &header, path)?;
    CurvatureAccumulator::from_raw(device, raw, chunk_rows).map_err(|e| fail(format!("inconsistent contents: {e}")))
}

/// Typed access to a parsed file's tensors.
struct Tensors<'a, 'b> {
    file: &'b SafeTensors<'a>,
    path: &'b Path,
    dtype: DType,
}

impl Tensors<'_, '_> {
    fn get<T: Scalar>(&self, name: &str) -> Result<Option<Vec<T>>> {
        match self.file.tensor(name) {
            Ok(view) => {
                if view.dtype() != st_dtype(self.dtype) {
                    return Err(Error::Format {
                        what: self.path.display().to_string(),
                        reason: format!("tensor `{name}` is {:?}, expected {}", view.dtype(), self.dtype.name()),
                    });
                }
                Ok(Some(bytemuck::pod_collect_to_vec(view.data())))
            }
            Err(_) => Ok(None),
        }
    }
    fn require<T: Scalar>(&self, name: &str) -> Result<Vec<T>> {
        self.get(name)?.ok_or_else(|| Error::Format {
            what: self.path.display().to_string(),
            reason: format!("missing tensor `{name}`"),
        })
    }
}

/// The parts every file shares, as a raw posterior (precision and covariance left empty).
fn raw_parts<'a, 'b, T: Scalar>(
    file: &'b SafeTensors<'a>,
    header: &PosteriorHeader,
    path: &'b Path,
) -> Result<(RawPosterior<T>, Tensors<'a, 'b>)> {
    if header.dtype != T::DTYPE {
        return Err(Error::Format {
            what: path.display().to_string(),
            reason: format!("holds {} tensors, asked for {}", header.dtype.name(), T::DTYPE.name()),
        });
    }
    let tensors = Tensors {
        file,
        path,
        dtype: header.dtype,
    };
    // Every tensor besides the ones all files share belongs to the structure (or, in an
    // accumulator, to its data term).
    let mut factors = Vec::new();
    for name in TENSORS {
        if ["head", "bias", "precision", "covariance"].contains(&name) {
            continue;
        }
        let Some(values) = tensors.get::<T>(name)? else {
            continue;
        };
        let shape = file.tensor(name).map(|v| v.shape().to_vec()).unwrap_or_default();
        let [rows, cols] = shape[..] else {
            return Err(Error::Format {
                what: path.display().to_string(),
                reason: format!("tensor `{name}` must have rank 2"),
            });
        };
        factors.push(RawTensor {
            name: name.to_string(),
            rows,
            cols,
            values,
        });
    }
    let raw = RawPosterior {
        structure: header.structure,
        likelihood: header.likelihood,
        curvature: header.curvature,
        bias_mode: header.bias,
        prior_precision: header.prior_precision.iter().map(|&t| T::from_f64(t)).collect(),
        classes: header.classes,
        features: header.features,
        head: tensors.require("head")?,
        fixed_bias: tensors.get("bias")?,
        precision: Vec::new(),
        covariance: Vec::new(),
        factors,
        factor_weight: header.kron_weight.unwrap_or(header.samples_seen as f64),
        samples_seen: header.samples_seen,
        calibration: header.calibration,
    };
    Ok((raw, tensors))
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<(SafeTensors<'a>, PosteriorHeader, String)> {
    let fail = |reason: String| Error::Format {
        what: path.display().to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("empty file".into()));
    }
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| fail(format!("not a posterior file (truncated or corrupted): {e}")))?;
    let file = SafeTensors::deserialize(bytes).map_err(|e| fail(format!("truncated or corrupted: {e}")))?;
    let m = meta
        .metadata()
        .as_ref()
        .ok_or_else(|| fail("no metadata: not a posterior file".into()))?;
    let get = |key: &str| {
        m.get(key)
            .map(String::as_str)
            .ok_or_else(|| fail(format!("metadata lacks `{key}`")))
    };
    let format = get("format")?;
    if format != POSTERIOR_FORMAT && format != ACCUMULATOR_FORMAT {
        return Err(fail("not a laplace-update posterior file".into()));
    }
    let version = get("version")?;
    if version != VERSION {
        return Err(fail(format!(
            "format version {version} is not supported (this build reads version {VERSION})"
        )));
    }
    let number =
        |key: &str| -> Result<usize> { get(key)?.parse().map_err(|_| fail(format!("bad `{key}` in metadata"))) };
    let real = |key: &str| -> Result<f64> { get(key)?.parse().map_err(|_| fail(format!("bad `{key}` in metadata"))) };
    let structure = get("structure")?;
    let structure = Structure::from_name(structure).map_err(|_| fail(format!("unknown structure `{structure}`")))?;
    let likelihood = match get("likelihood")? {
        "classification" => Likelihood::Classification,
        "regression" => Likelihood::Regression {
            sigma_noise: real("sigma_noise")?,
        },
        other => return Err(fail(format!("unknown likelihood `{other}`"))),
    };
    let curvature = match get("curvature")? {
        "ggn" => Curvature::Ggn,
        "ef" => Curvature::EmpiricalFisher,
        "mc" => Curvature::MonteCarloFisher {
            samples: number("mc_samples")?,
            seed: get("mc_seed")?
                .parse()
                .map_err(|_| fail("bad `mc_seed` in metadata".into()))?,
        },
        other => return Err(fail(format!("unknown curvature `{other}`"))),
    };
    let tau = get("prior_precision")?;
    let prior_precision = if tau.is_empty() {
        Vec::new()
    } else {
        tau.split(',')
            .map(|t| {
                t.parse::<f64>()
                    .map_err(|_| fail("bad `prior_precision` in metadata".into()))
            })
            .collect::<Result<Vec<f64>>>()?
    };
    let header = PosteriorHeader {
        version: version.to_string(),
        structure,
        likelihood,
        curvature,
        prior_precision,
        bias: match get("bias")? {
            "posterior" => BiasMode::InPosterior,
            "fixed" => BiasMode::Fixed,
            other => return Err(fail(format!("unknown bias mode `{other}`"))),
        },
        dtype: match get("dtype")? {
            "f32" => DType::F32,
            "f64" => DType::F64,
            other => return Err(fail(format!("unknown dtype `{other}`"))),
        },
        classes: number("classes")?,
        features: number("features")?,
        samples_seen: number("samples_seen")?,
        calibration: {
            fn optional<V: std::str::FromStr>(
                m: &HashMap<String, String>,
                key: &str,
                default: V,
                fail: impl Fn(String) -> Error,
            ) -> Result<V> {
                m.get(key).map_or(Ok(default), |v| {
                    v.parse().map_err(|_| fail(format!("bad `{key}` in metadata")))
                })
            }
            let link = match m.get("link") {
                None => Link::default(),
                Some(name) => Link::from_name(
                    name,
                    optional(m, "probit_lambda", Link::PROBIT_LAMBDA, fail)?,
                    optional(m, "link_samples", 100usize, fail)?,
                    optional(m, "link_seed", 0u64, fail)?,
                )
                .map_err(|e| fail(format!("bad link in metadata: {e}")))?,
            };
            Calibration {
                temperature: optional(m, "temperature", 1.0, fail)?,
                link,
            }
        },
        kron_weight: match m.get("kron_weight") {
            None => None,
            Some(v) => Some(v.parse().map_err(|_| fail("bad `kron_weight` in metadata".into()))?),
        },
    };
    let names: Vec<&str> = TENSORS.iter().copied().filter(|n| file.tensor(n).is_ok()).collect();
    let stored = checksum(
        names
            .iter()
            .filter_map(|n| file.tensor(n).ok())
            .map(|v| v.data())
            .collect::<Vec<_>>()
            .into_iter(),
    );
    if get("checksum")? != format!("crc32:{stored:08x}") {
        return Err(fail("checksum mismatch: the tensor data is corrupted".into()));
    }
    Ok((file, header, format.to_string()))
}

fn checksum<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    parts.for_each(|p| hasher.update(p));
    hasher.finalize()
}
