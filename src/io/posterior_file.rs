//! Posterior files: safetensors holding the posterior's tensors, with JSON metadata and a
//! checksum, written durably (temporary file in the same folder, fsync, rename, fsync folder).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::io_error;
use crate::device::{Device, OutputWeighting};
use crate::error::{Error, Result};
use crate::posterior::{BiasMode, Posterior, RawPosterior, Structure};
use crate::scalar::{DType, Scalar};

const FORMAT: &str = "laplace-update.posterior";
const VERSION: &str = "1";
const TENSORS: [&str; 4] = ["bias", "covariance", "head", "precision"];

/// What a posterior file says about itself, readable without loading its tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct PosteriorHeader {
    /// Format version.
    pub version: String,
    /// Covariance structure.
    pub structure: Structure,
    /// Likelihood (`"classification"`).
    pub likelihood: String,
    /// Curvature (`"ggn"`).
    pub curvature: String,
    /// Prior precision τ.
    pub prior_precision: f64,
    /// Bias mode.
    pub bias: BiasMode,
    /// Element type of the tensors.
    pub dtype: DType,
    /// Number of classes K.
    pub classes: usize,
    /// Feature dimension D (without the bias column).
    pub features: usize,
    /// Samples folded in.
    pub samples_seen: usize,
}

fn structure_name(s: Structure) -> &'static str {
    match s {
        Structure::Full => "full",
        Structure::Shared(OutputWeighting::Gaussian) => "shared-gaussian",
        Structure::Shared(OutputWeighting::Categorical) => "shared-categorical",
    }
}

fn st_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
    }
}

/// Saves `post` to `path` durably: a crash mid-write leaves any previous file intact.
pub fn save_posterior<D: Device, T: Scalar>(post: &Posterior<D, T>, path: &Path) -> Result<()> {
    let raw = post.to_raw()?;
    let bytes_of = |v: &[T]| -> Vec<u8> { bytemuck::cast_slice(v).to_vec() };
    let n = raw.precision_dim();
    let mut tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = vec![
        ("covariance", vec![n, n], bytes_of(&raw.covariance)),
        (
            "head",
            vec![raw.classes, raw.head.len() / raw.classes],
            bytes_of(&raw.head),
        ),
        ("precision", vec![n, n], bytes_of(&raw.precision)),
    ];
    if let Some(b) = &raw.fixed_bias {
        tensors.push(("bias", vec![1, raw.classes], bytes_of(b)));
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let checksum = checksum(tensors.iter().map(|t| t.2.as_slice()));
    let metadata: HashMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("version", VERSION.to_string()),
        ("structure", structure_name(raw.structure).to_string()),
        ("likelihood", "classification".to_string()),
        ("curvature", "ggn".to_string()),
        ("prior_precision", raw.prior_precision.to_string()),
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
        ("checksum", format!("crc32:{checksum:08x}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(st_dtype(T::DTYPE), shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(|e| Error::Format {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| Error::Format {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_durably(path, &bytes)
}

/// Reads the header of the posterior file at `path`.
pub fn peek_posterior(path: &Path) -> Result<PosteriorHeader> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let (_, header) = parse(&bytes, path)?;
    Ok(header)
}

/// Loads the posterior at `path` onto `device`. The file's dtype must be `T`.
pub fn load_posterior<D: Device, T: Scalar>(device: &D, path: &Path) -> Result<Posterior<D, T>> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let fail = |reason: String| Error::Format {
        what: path.display().to_string(),
        reason,
    };
    let (file, header) = parse(&bytes, path)?;
    if header.dtype != T::DTYPE {
        return Err(fail(format!(
            "holds {} tensors, asked for {}",
            header.dtype.name(),
            T::DTYPE.name()
        )));
    }
    let tensor = |name: &str| -> Result<Option<Vec<T>>> {
        match file.tensor(name) {
            Ok(view) => {
                if view.dtype() != st_dtype(T::DTYPE) {
                    return Err(fail(format!(
                        "tensor `{name}` is {:?}, expected {}",
                        view.dtype(),
                        T::DTYPE.name()
                    )));
                }
                Ok(Some(bytemuck::pod_collect_to_vec(view.data())))
            }
            Err(_) => Ok(None),
        }
    };
    let require = |name: &str| tensor(name)?.ok_or_else(|| fail(format!("missing tensor `{name}`")));
    let raw = RawPosterior {
        structure: header.structure,
        bias_mode: header.bias,
        prior_precision: T::from_f64(header.prior_precision),
        classes: header.classes,
        features: header.features,
        head: require("head")?,
        fixed_bias: tensor("bias")?,
        precision: require("precision")?,
        covariance: require("covariance")?,
        samples_seen: header.samples_seen,
    };
    Posterior::from_raw(device, raw).map_err(|e| fail(format!("inconsistent contents: {e}")))
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<(SafeTensors<'a>, PosteriorHeader)> {
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
    if get("format")? != FORMAT {
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
    let structure = match get("structure")? {
        "full" => Structure::Full,
        "shared-gaussian" => Structure::Shared(OutputWeighting::Gaussian),
        "shared-categorical" => Structure::Shared(OutputWeighting::Categorical),
        other => return Err(fail(format!("unknown structure `{other}`"))),
    };
    let header = PosteriorHeader {
        version: version.to_string(),
        structure,
        likelihood: get("likelihood")?.to_string(),
        curvature: get("curvature")?.to_string(),
        prior_precision: get("prior_precision")?
            .parse()
            .map_err(|_| fail("bad `prior_precision`".into()))?,
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
    };
    let mut names: Vec<&str> = TENSORS.iter().copied().filter(|n| file.tensor(n).is_ok()).collect();
    names.sort_unstable();
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
    Ok((file, header))
}

fn checksum<'a>(parts: impl Iterator<Item = &'a [u8]>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    parts.for_each(|p| hasher.update(p));
    hasher.finalize()
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: a
/// temporary file in the same folder, fsync, rename over the target, fsync the folder.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.display().to_string(),
        reason: "not a file name".into(),
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself; not every platform can open a folder, which is harmless.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        io_error(path, e)
    })
}
