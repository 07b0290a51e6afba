//! `laplace_update` for Python: [`Posterior`] and [`Accumulator`] over numpy arrays.
//!
//! Arrays go in as numpy arrays of the posterior's dtype, read in place when C-contiguous and aligned
//! (a copy otherwise, by `numpy.require`), and results come out as new numpy arrays that
//! own the library's buffers. Every call releases the GIL while it computes, and a posterior
//! is behind a read-write lock: predictions run concurrently, updates one at a time.
//! Errors are exceptions, one class per `laplace_update::Error` variant under `LaplaceError`,
//! with the variant's fields as attributes.

// The functions mirror Python signatures with keyword arguments, one Rust argument each.
#![allow(clippy::too_many_arguments)]
// The doc comments are Python docstrings: `>>>` starts a doctest example, not a Markdown quote.
#![allow(clippy::doc_lazy_continuation)]

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use laplace_update::active::{LabelSource, Pool, Strategy, UpdateDriven};
use laplace_update::device::{Kind, OnAnyDevice};
use laplace_update::io;
use laplace_update::{
    AnyDevice, BiasMode, Calibration, CpuDevice, Curvature, CurvatureAccumulator, DType, Device, Error, FitConfig,
    HeadTargets, HostMatrix, Likelihood, Link, Posterior as Post, PriorShape, Scalar, StepControl, Structure, Targets,
    TuneConfig, TuneMetric, TuneSelection, UnlearnConfig, UpdateConfig, UpdateRule, build_any, fit_map_head, map_any,
    with_any, with_any_pair,
};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::BoundObject;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

pyo3::create_exception!(
    laplace_update,
    LaplaceError,
    PyException,
    "Base class of the library's errors."
);
macro_rules! exceptions {
    ($($name:ident: $doc:literal),* $(,)?) => {
        $(pyo3::create_exception!(laplace_update, $name, LaplaceError, $doc);)*
        fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
            m.add("LaplaceError", m.py().get_type::<LaplaceError>())?;
            $(m.add(stringify!($name), m.py().get_type::<$name>())?;)*
            Ok(())
        }
    };
}
exceptions! {
    ShapeMismatchError: "An argument has the wrong shape (`argument`, `expected`, `got`).",
    NonFiniteError: "An input holds NaN or ±inf (`argument`; `row`, `column` and `index`, the flat index, of the first).",
    LabelOutOfRangeError: "A label is not a class (`index`, `label`, `classes`).",
    EmptyBatchError: "A batch has no rows (`argument`).",
    InvalidArgumentError: "An argument is out of its domain (`argument`, `reason`).",
    NotPositiveDefiniteError: "A matrix that must be positive definite is not (`index`: the failing pivot or sample).",
    IllConditionedError: "The covariance drifted from the precision's inverse (`drift`).",
    BackendUnavailableError: "A device backend cannot be used here (`backend`, `reason`).",
    UnsupportedError: "Valid, but not supported by this backend or configuration (`reason`).",
    FileError: "A file could not be read or written (`path`, `reason`).",
    LockTimeoutError: "A posterior file stayed locked by another writer (`path`, `lock`, `waited_s`).",
    FormatError: "Bytes or a file are not a valid posterior or array (`what`, `reason`).",
    DeviceError: "A device operation failed (`backend`, `reason`).",
    OutOfMemoryError: "An operation would exceed the memory available (`needed` and `available` bytes, `bound`, `what`), found before it allocated.",
}

/// The library's error as the exception of its variant, its fields as attributes.
fn to_py(e: Error) -> PyErr {
    // The library's `head` is this module's `weights`.
    let e = match e {
        Error::ShapeMismatch {
            argument: "head",
            expected,
            got,
        } => Error::ShapeMismatch {
            argument: "weights",
            expected,
            got,
        },
        other => other,
    };
    if matches!(e, Error::Interrupted) {
        // The interpreter's handler has run or runs now: its KeyboardInterrupt.
        return Python::attach(|py| match py.check_signals() {
            Err(interrupt) => interrupt,
            Ok(()) => pyo3::exceptions::PyKeyboardInterrupt::new_err("interrupted"),
        });
    }
    Python::attach(|py| {
        let message = e.to_string();
        let (err, fields): (PyErr, Vec<(&str, Py<PyAny>)>) = match e {
            Error::ShapeMismatch {
                argument,
                expected,
                got,
            } => (
                ShapeMismatchError::new_err(message),
                vec![
                    ("argument", obj(py, argument)),
                    ("expected", obj(py, expected)),
                    ("got", obj(py, got)),
                ],
            ),
            Error::NonFinite {
                argument,
                index,
                columns,
            } => (
                NonFiniteError::new_err(message),
                vec![
                    ("argument", obj(py, argument)),
                    ("index", obj(py, index)),
                    ("row", obj(py, index / columns.max(1))),
                    ("column", obj(py, index % columns.max(1))),
                ],
            ),
            Error::LabelOutOfRange { index, label, classes } => (
                LabelOutOfRangeError::new_err(message),
                vec![
                    ("index", obj(py, index)),
                    ("label", obj(py, label)),
                    ("classes", obj(py, classes)),
                ],
            ),
            Error::EmptyBatch { argument } => {
                (EmptyBatchError::new_err(message), vec![("argument", obj(py, argument))])
            }
            Error::InvalidArgument { argument, reason } => (
                InvalidArgumentError::new_err(message),
                vec![("argument", obj(py, argument)), ("reason", obj(py, reason))],
            ),
            Error::NotPositiveDefinite { index } => (
                NotPositiveDefiniteError::new_err(message),
                vec![("index", obj(py, index))],
            ),
            Error::IllConditioned { drift } => (IllConditionedError::new_err(message), vec![("drift", obj(py, drift))]),
            Error::BackendUnavailable { backend, reason } => (
                BackendUnavailableError::new_err(message),
                vec![("backend", obj(py, backend)), ("reason", obj(py, reason))],
            ),
            Error::Unsupported(reason) => (UnsupportedError::new_err(message), vec![("reason", obj(py, reason))]),
            Error::Io { path, reason } => (
                FileError::new_err(message),
                vec![("path", obj(py, path)), ("reason", obj(py, reason))],
            ),
            Error::LockTimeout { path, lock, waited_s } => (
                LockTimeoutError::new_err(message),
                vec![
                    ("path", obj(py, path)),
                    ("lock", obj(py, lock)),
                    ("waited_s", obj(py, waited_s)),
                ],
            ),
            Error::Format { what, reason } => (
                FormatError::new_err(message),
                vec![("what", obj(py, what)), ("reason", obj(py, reason))],
            ),
            Error::Device { backend, reason } => (
                DeviceError::new_err(message),
                vec![("backend", obj(py, backend)), ("reason", obj(py, reason))],
            ),
            Error::OutOfMemory {
                needed,
                available,
                bound,
                what,
                ..
            } => (
                OutOfMemoryError::new_err(message),
                vec![
                    ("needed", obj(py, needed)),
                    ("available", obj(py, available)),
                    ("bound", obj(py, bound)),
                    ("what", obj(py, what)),
                ],
            ),
            other => (LaplaceError::new_err(other.to_string()), vec![]),
        };
        let value = err.value(py);
        for (name, v) in fields {
            let _ = value.setattr(name, v);
        }
        err
    })
}

fn obj<'py, V: IntoPyObject<'py>>(py: Python<'py>, v: V) -> Py<PyAny> {
    v.into_pyobject(py)
        .map(|b| b.into_any().unbind())
        .unwrap_or_else(|_| py.None())
}

fn invalid(argument: &'static str, reason: impl Into<String>) -> PyErr {
    to_py(Error::invalid(argument, reason))
}

type R<T> = PyResult<T>;

/// What `__reduce__` returns: the constructor from bytes, and its arguments (bytes, device).
type Reduce<'py> = (Bound<'py, PyAny>, (Bound<'py, PyBytes>, String));

/// `numpy.require(x, dtype, "CA")`: `x` itself when it is C-contiguous, aligned and of
/// `dtype`, else a converted copy (arrays unpickled from out-of-band buffers can be misaligned).
fn contiguous<'py>(x: &Bound<'py, PyAny>, dtype: &str) -> R<Bound<'py, PyAny>> {
    x.py().import("numpy")?.call_method1("require", (x, dtype, "CA"))
}

/// `x` as a numpy array of real numbers (floats or integers, any byte order or width), or a
/// typed error naming `argument`: bool, complex, object and string arrays are refused rather
/// than converted, and so is anything numpy cannot read as one array.
fn numeric<'py>(x: &Bound<'py, PyAny>, argument: &'static str) -> R<Bound<'py, PyAny>> {
    let a = x
        .py()
        .import("numpy")?
        .call_method1("asarray", (x,))
        .map_err(|e| invalid(argument, format!("cannot be read as an array: {e}")))?;
    let dtype = a.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "f" | "i" | "u") {
        return Err(invalid(
            argument,
            format!("must be real numbers, got dtype {}", dtype.str()?),
        ));
    }
    Ok(a)
}

/// A C-contiguous 2-D array of `T`: `x` itself when it already is one, else a converted copy.
fn matrix<'py, T: Scalar + numpy::Element>(
    x: &Bound<'py, PyAny>,
    argument: &'static str,
) -> R<PyReadonlyArray2<'py, T>> {
    let a = contiguous(&numeric(x, argument)?, dtype_name::<T>())?;
    if a.getattr("ndim")?.extract::<usize>()? != 2 {
        let shape: Vec<usize> = a.getattr("shape")?.extract()?;
        return Err(to_py(Error::ShapeMismatch {
            argument,
            expected: "a 2-D array".into(),
            got: format!("shape {shape:?}"),
        }));
    }
    Ok(a.cast_into::<numpy::PyArray2<T>>()?.readonly())
}

/// Class labels as int64, or regression targets as a 2-D array of `T`.
enum TargetArray<'py, T: numpy::Element> {
    Labels(PyReadonlyArray1<'py, i64>),
    Values(PyReadonlyArray2<'py, T>),
}

fn targets<'py, T: Scalar + numpy::Element>(y: &Bound<'py, PyAny>, regression: bool) -> R<TargetArray<'py, T>> {
    let np = y.py().import("numpy")?;
    if regression {
        let a = numeric(y, "labels")?;
        let a = if a.getattr("ndim")?.extract::<usize>()? == 1 {
            a.call_method1("reshape", ((-1i64, 1i64),))?
        } else {
            a
        };
        return Ok(TargetArray::Values(matrix::<T>(&a, "labels")?));
    }
    let a = np
        .call_method1("asarray", (y,))
        .map_err(|e| invalid("labels", format!("cannot be read as an array: {e}")))?;
    // A column of labels, N × 1, is read as N labels.
    let shape: Vec<usize> = a.getattr("shape")?.extract()?;
    let a = match shape.as_slice() {
        [_, 1] => a.call_method1("reshape", (-1i64,))?,
        _ => a,
    };
    let kind: String = a.getattr("dtype")?.getattr("kind")?.extract()?;
    if kind != "i" && kind != "u" {
        return Err(invalid("labels", format!("must be integers, got dtype kind `{kind}`")));
    }
    let shape: Vec<usize> = a.getattr("shape")?.extract()?;
    if shape.len() != 1 {
        return Err(to_py(Error::ShapeMismatch {
            argument: "labels",
            expected: "N labels (1-D, or N x 1)".into(),
            got: format!("shape {shape:?}"),
        }));
    }
    let a = contiguous(&a, "int64")?;
    Ok(TargetArray::Labels(a.cast_into::<PyArray1<i64>>()?.readonly()))
}

/// The step control of `update` and `unlearn`, as the command line's `--step` names it.
fn step_control(
    step: Option<&str>,
    gamma: Option<f64>,
    iterations: Option<usize>,
    tolerance: f64,
    curvature_at: &str,
) -> R<StepControl> {
    StepControl::from_options(step, gamma, iterations, tolerance, curvature_at).map_err(to_py)
}

/// Set by this module's SIGINT action, read by the library's interrupt checks.
static SIGINT_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets Ctrl-C stop a long call: a SIGINT action that sets [`SIGINT_SEEN`] and then runs the
/// interpreter's own handler (so that KeyboardInterrupt is raised when the call returns), and
/// the library's interrupt hook reading it. A handler installed later with `signal.signal`
/// replaces the action; calls then run to their end.
fn install_interrupts() {
    // SAFETY: the action only stores to an atomic, which is async-signal-safe.
    let _ = unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGINT, || {
            SIGINT_SEEN.store(true, std::sync::atomic::Ordering::SeqCst)
        })
    };
    laplace_update::interrupt::set_hook(Some(|| SIGINT_SEEN.load(std::sync::atomic::Ordering::SeqCst)));
}

/// `f` without the GIL, stopped by a Ctrl-C pressed during it (not before).
fn detach<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    SIGINT_SEEN.store(false, std::sync::atomic::Ordering::SeqCst);
    py.detach(f)
}

/// Class labels read in place.
///
/// >>> lu.Accumulator(w, b).count
/// 0
struct Labels<'a>(&'a [i64]);

impl<T: Scalar> Targets<T> for Labels<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn check(&self, rows: usize, outputs: usize, regression: bool) -> laplace_update::Result<()> {
        Targets::<T>::check(self.0, rows, outputs, regression)
    }
    fn target_rows(&self, start: usize, count: usize, outputs: usize) -> Vec<T> {
        Targets::<T>::target_rows(self.0, start, count, outputs)
    }
}

impl<T: Scalar + numpy::Element> TargetArray<'_, T> {
    fn with<V>(&self, f: impl FnOnce(&dyn Targets<T>) -> laplace_update::Result<V>) -> laplace_update::Result<V> {
        match self {
            TargetArray::Labels(l) => {
                let s = l.as_slice().map_err(|e| Error::Unsupported(e.to_string()))?;
                f(&Labels(s))
            }
            TargetArray::Values(v) => {
                let (n, k) = (v.shape()[0], v.shape()[1]);
                let s = v.as_slice().map_err(|e| Error::Unsupported(e.to_string()))?;
                f(&HostMatrix::new(s, n, k)?)
            }
        }
    }
}

fn host<'a, T: Scalar + numpy::Element>(a: &'a PyReadonlyArray2<'_, T>) -> laplace_update::Result<HostMatrix<'a, T>> {
    let (n, d) = (a.shape()[0], a.shape()[1]);
    HostMatrix::new(a.as_slice().map_err(|e| Error::Unsupported(e.to_string()))?, n, d)
}

fn structure(name: &str) -> R<Structure> {
    Structure::from_name(name).map_err(to_py)
}

fn likelihood(name: &str, sigma_noise: f64) -> R<Likelihood> {
    match name {
        "classification" => Ok(Likelihood::Classification),
        "regression" => Ok(Likelihood::Regression { sigma_noise }),
        _ => Err(invalid(
            "likelihood",
            format!("unknown `{name}`; one of classification, regression"),
        )),
    }
}

fn curvature(name: &str, samples: usize, seed: u64) -> R<Curvature> {
    match name {
        "ggn" => Ok(Curvature::Ggn),
        "ef" | "empirical-fisher" => Ok(Curvature::EmpiricalFisher),
        "mc" | "monte-carlo-fisher" => Ok(Curvature::MonteCarloFisher { samples, seed }),
        _ => Err(invalid("curvature", format!("unknown `{name}`; one of ggn, ef, mc"))),
    }
}

fn link(name: &str, lambda: f64, samples: usize, seed: u64) -> R<Link> {
    Link::from_name(name, lambda, samples, seed).map_err(to_py)
}

fn rule(name: &str) -> R<UpdateRule> {
    match name {
        "joint" => Ok(UpdateRule::Joint),
        "sequential" => Ok(UpdateRule::Sequential),
        _ => Err(invalid("rule", format!("unknown `{name}`; one of joint, sequential"))),
    }
}

/// Posteriors, by device and element type: the library's dispatch holds one as [`Inner`].
struct Posteriors;

impl Kind for Posteriors {
    type On<D: Device, T: Scalar> = Post<D, T>;
}

/// The posterior of one device and dtype.
type Inner = OnAnyDevice<Posteriors>;

/// One device per backend and process, shared by every posterior and accumulator on it: one
/// thread pool for the CPU (a pool per object would leave its threads competing), one context
/// per GPU.
fn shared<D: Clone + Send + Sync + 'static>(
    cell: &'static std::sync::OnceLock<D>,
    make: impl FnOnce() -> laplace_update::Result<D>,
) -> R<D> {
    if let Some(d) = cell.get() {
        return Ok(d.clone());
    }
    let d = make().map_err(to_py)?;
    Ok(cell.get_or_init(|| d).clone())
}

fn cpu() -> R<CpuDevice> {
    static CPU: std::sync::OnceLock<CpuDevice> = std::sync::OnceLock::new();
    shared(&CPU, || CpuDevice::new(0))
}

#[cfg(feature = "cuda")]
fn cuda() -> R<laplace_update::CudaDevice> {
    static CUDA: std::sync::OnceLock<laplace_update::CudaDevice> = std::sync::OnceLock::new();
    shared(&CUDA, || laplace_update::CudaDevice::new(0))
}

#[cfg(feature = "wgpu")]
fn wgpu() -> R<laplace_update::WgpuDevice> {
    static WGPU: std::sync::OnceLock<laplace_update::WgpuDevice> = std::sync::OnceLock::new();
    shared(&WGPU, laplace_update::WgpuDevice::new)
}

/// The shared device of a name (`cpu`, `cuda`, `wgpu`), or the library's reason it is absent.
fn any_device(name: &str) -> R<AnyDevice> {
    match name {
        "cpu" => Ok(AnyDevice::Cpu(cpu()?)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(AnyDevice::Cuda(cuda()?)),
        #[cfg(feature = "wgpu")]
        "wgpu" => Ok(AnyDevice::Wgpu(wgpu()?)),
        other => {
            Err(to_py(AnyDevice::select(other).err().unwrap_or_else(|| {
                Error::Unsupported(format!("{other} in this build"))
            })))
        }
    }
}

/// The element type of a name: `float32` or `float64`.
fn dtype_of(name: &str) -> R<DType> {
    match name {
        "float32" => Ok(DType::F32),
        "float64" => Ok(DType::F64),
        other => Err(invalid("dtype", format!("unknown `{other}`; one of float32, float64"))),
    }
}

fn dtype_name<T: Scalar>() -> &'static str {
    if T::DTYPE == laplace_update::DType::F32 {
        "float32"
    } else {
        "float64"
    }
}

/// A last-layer Laplace posterior `N(ŵ, Σ)` over a trained head, updated in closed form:
/// `Π = τ I + Σ_n Λ_n ⊗ φ_n φ_nᵀ`, `Σ = Π⁻¹`.
///
/// >>> post = lu.Posterior.fit(x[:150], y[:150], w, b)
/// >>> report = post.update(x_new, y_new)
/// >>> probs, logit_var = post.predict(x[150:])
#[pyclass(module = "laplace_update", frozen)]
struct Posterior {
    inner: RwLock<Inner>,
    device: String,
}

/// A value moved out of [`Python::detach`] on the thread that made it.
struct SameThread<G>(G);
// SAFETY: `Python::detach` runs its closure on the calling thread and returns there, so a lock
// guard wrapped here is made, used and dropped on one thread; nothing else reaches it.
unsafe impl<G> Send for SameThread<G> {}

/// Read access, waited for with the GIL released (a writer computing without the GIL may need
/// it back before it can finish).
fn read<'a, X: Send + Sync>(py: Python<'_>, lock: &'a RwLock<X>) -> RwLockReadGuard<'a, X> {
    py.detach(|| SameThread(lock.read().unwrap_or_else(|e| e.into_inner())))
        .0
}

/// Write access, as [`read`].
fn write<'a, X: Send + Sync>(py: Python<'_>, lock: &'a RwLock<X>) -> RwLockWriteGuard<'a, X> {
    py.detach(|| SameThread(lock.write().unwrap_or_else(|e| e.into_inner())))
        .0
}

fn fit_config(
    structure_: &str,
    likelihood_: &str,
    curvature_: &str,
    prior_precision: f64,
    bias_in_posterior: bool,
    sigma_noise: f64,
    mc_samples: usize,
    seed: u64,
) -> R<FitConfig> {
    Ok(FitConfig {
        structure: structure(structure_)?,
        likelihood: likelihood(likelihood_, sigma_noise)?,
        curvature: curvature(curvature_, mc_samples, seed)?,
        prior_precision,
        bias: if bias_in_posterior {
            BiasMode::InPosterior
        } else {
            BiasMode::Fixed
        },
        ..Default::default()
    })
}

fn bias_vector<'py, T: Scalar + numpy::Element>(
    bias: Option<&Bound<'py, PyAny>>,
) -> R<Option<PyReadonlyArray1<'py, T>>> {
    let Some(b) = bias else { return Ok(None) };
    if b.is_none() {
        return Ok(None);
    }
    let a = numeric(b, "bias")?;
    let shape: Vec<usize> = a.getattr("shape")?.extract()?;
    if !matches!(shape.as_slice(), [_] | [1, _] | [_, 1]) {
        return Err(to_py(Error::ShapeMismatch {
            argument: "bias",
            expected: "K values (1-D)".into(),
            got: format!("shape {shape:?}"),
        }));
    }
    let a = contiguous(&b.py().import("numpy")?.call_method1("ravel", (a,))?, dtype_name::<T>())?;
    Ok(Some(a.cast_into::<PyArray1<T>>()?.readonly()))
}

fn slice1<'a, T: numpy::Element>(a: &'a Option<PyReadonlyArray1<'_, T>>) -> R<Option<&'a [T]>> {
    a.as_ref()
        .map(|a| a.as_slice().map_err(|e| to_py(Error::Unsupported(e.to_string()))))
        .transpose()
}

fn out<'py, T: Scalar + numpy::Element>(py: Python<'py>, v: Vec<T>, shape: &[usize]) -> R<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, v).reshape(shape.to_vec())?.into_any())
}

#[pymethods]
impl Posterior {
    /// Fits the posterior around the head `weights` (K × D) and `bias` (K) from `features`
    /// (N × D) and `labels` (N integers; N × K values for regression).
    ///
    /// With `weights=None` the head is fitted first, as the command line does without
    /// `--weights`: the MAP of softmax regression (`classes` classes, by default the largest
    /// label + 1) or of ridge regression, under the prior `prior_precision`.
    ///
    /// >>> post = lu.Posterior.fit(x, y, w, b, structure="kron", prior_precision=2.0)
    /// >>> post.structure, post.classes, post.features
    /// ('kron', 3, 8)
    #[staticmethod]
    #[pyo3(signature = (features, labels, weights=None, bias=None, structure="full", likelihood="classification",
        prior_precision=1.0, bias_in_posterior=true, dtype="float64", device="cpu", curvature="ggn",
        sigma_noise=1.0, mc_samples=1, seed=0, classes=None))]
    fn fit(
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        weights: Option<&Bound<'_, PyAny>>,
        bias: Option<&Bound<'_, PyAny>>,
        structure: &str,
        likelihood: &str,
        prior_precision: f64,
        bias_in_posterior: bool,
        dtype: &str,
        device: &str,
        curvature: &str,
        sigma_noise: f64,
        mc_samples: usize,
        seed: u64,
        classes: Option<usize>,
    ) -> R<Posterior> {
        let config = fit_config(
            structure,
            likelihood,
            curvature,
            prior_precision,
            bias_in_posterior,
            sigma_noise,
            mc_samples,
            seed,
        )?;
        let regression = config.likelihood != Likelihood::Classification;
        let weights = weights.filter(|w| !w.is_none());
        let inner = build_any!(any_device(device)?, dtype_of(dtype)?, |d: T| {
            let x = matrix::<T>(features, "features")?;
            let y = targets::<T>(labels, regression)?;
            let xh = host(&x).map_err(to_py)?;
            match weights {
                Some(weights) => {
                    let (w, b) = (matrix::<T>(weights, "weights")?, bias_vector::<T>(bias)?);
                    let (w, b) = (host(&w).map_err(to_py)?, slice1(&b)?);
                    y.with(|y| detach(py, || Post::fit(&d, xh, y, w, b, &config)))
                        .map_err(to_py)?
                }
                None => {
                    let plain = match &y {
                        TargetArray::Labels(l) => {
                            HeadTargets::Labels(l.as_slice().map_err(|e| to_py(Error::Unsupported(e.to_string())))?)
                        }
                        TargetArray::Values(v) => HeadTargets::Values(host(v).map_err(to_py)?),
                    };
                    let head = detach(py, || {
                        fit_map_head(&d, xh, plain, classes, prior_precision, sigma_noise)
                    })
                    .map_err(to_py)?;
                    let w = HostMatrix::new(&head.weights, head.bias.len(), xh.cols()).map_err(to_py)?;
                    y.with(|y| detach(py, || Post::fit(&d, xh, y, w, Some(&head.bias), &config)))
                        .map_err(to_py)?
                }
            }
        })
        .map_err(to_py)?;
        Ok(Posterior {
            inner: RwLock::new(inner),
            device: device.to_string(),
        })
    }

    /// Folds new labelled data in and returns what the step did, as a dict (`steps`,
    /// `step_length`, `objective_before`, `objective_after`, `relative_step`,
    /// `undamped_rejected`, `converged`).
    ///
    /// `step="damped"` (the default) takes Newton steps with a line search to the mode of
    /// `J(w) = Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`, at most `iterations` (25) of them,
    /// and keeps the covariance with the curvature at `curvature_at` (`"mode"` or `"start"`).
    /// `step="newton"` takes `iterations` (1) undamped steps `w ← w + γ Σ' ∇J(w)`, the seed
    /// paper's rule; giving `gamma` alone chooses it. The inverse Hessian comes by Woodbury
    /// (`rule="joint"`) or sample by sample (`"sequential"`).
    ///
    /// >>> report = post.update(x_new, y_new)
    /// >>> report["steps"] >= 1 and report["objective_after"] >= report["objective_before"]
    /// True
    #[pyo3(signature = (features, labels, rule="joint", step=None, gamma=None, iterations=None, tolerance=StepControl::DEFAULT_TOLERANCE, curvature_at="mode", forgetting=1.0))]
    #[allow(clippy::too_many_arguments)]
    fn update<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        rule: &str,
        step: Option<&str>,
        gamma: Option<f64>,
        iterations: Option<usize>,
        tolerance: f64,
        curvature_at: &str,
        forgetting: f64,
    ) -> R<Bound<'py, PyDict>> {
        let config = UpdateConfig {
            rule: self::rule(rule)?,
            step: step_control(step, gamma, iterations, tolerance, curvature_at)?,
            forgetting,
        };
        let mut guard = write(py, &self.inner);
        let report = with_any!(&mut *guard, |p: T| {
            let regression = p.likelihood() != Likelihood::Classification;
            let (x, y) = (matrix::<T>(features, "features")?, targets::<T>(labels, regression)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || p.update(x, y, &config))).map_err(to_py)
        })?;
        let out = PyDict::new(py);
        out.set_item("steps", report.steps)?;
        out.set_item("step_length", report.step_length)?;
        out.set_item("objective_before", report.objective_before)?;
        out.set_item("objective_after", report.objective_after)?;
        out.set_item("relative_step", report.relative_step)?;
        out.set_item("undamped_rejected", report.undamped_rejected)?;
        out.set_item("converged", report.converged)?;
        Ok(out)
    }

    /// Removes data an earlier Joint update folded in, given how it stepped (`step`, `gamma`,
    /// `iterations`, `curvature_at` as in `update`): in closed form after damped steps to the
    /// mode, by a fixed point after one Newton step of 0 < γ ≤ 1.
    ///
    /// >>> before = post.mean()[0].copy()
    /// >>> _ = post.update(x_new, y_new); post.unlearn(x_new, y_new)
    /// >>> bool(np.allclose(post.mean()[0], before))
    /// True
    #[pyo3(signature = (features, labels, step=None, gamma=None, iterations=None, curvature_at="mode"))]
    #[allow(clippy::too_many_arguments)]
    fn unlearn(
        &self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
        step: Option<&str>,
        gamma: Option<f64>,
        iterations: Option<usize>,
        curvature_at: &str,
    ) -> R<()> {
        let config = UnlearnConfig {
            step: step_control(step, gamma, iterations, StepControl::DEFAULT_TOLERANCE, curvature_at)?,
            ..Default::default()
        };
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |p: T| {
            let regression = p.likelihood() != Likelihood::Classification;
            let (x, y) = (matrix::<T>(features, "features")?, targets::<T>(labels, regression)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || p.unlearn(x, y, &config))).map_err(to_py)
        })
    }

    /// `(probs, logit_var)`: the predictive under `link` (probit, centred-probit, mc, bridge,
    /// none; default: the posterior's own, as tuned) at the posterior's temperature (or
    /// `temperature`), and the logit covariance, N × K × K for Full and N × K (its diagonal)
    /// for the other structures.
    ///
    /// >>> probs, logit_var = post.predict(x[:4], link="probit")
    /// >>> probs.shape, logit_var.shape, bool(np.allclose(probs.sum(1), 1))
    /// ((4, 3), (4, 3, 3), True)
    #[pyo3(signature = (features, link=None, samples=100, seed=0, probit_lambda=None, temperature=None))]
    #[allow(clippy::too_many_arguments)]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        link: Option<&str>,
        samples: usize,
        seed: u64,
        probit_lambda: Option<f64>,
        temperature: Option<f64>,
    ) -> R<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let stored = p.calibration();
            let lambda = probit_lambda.or(stored.link.lambda()).unwrap_or(Link::PROBIT_LAMBDA);
            let link = match (link, stored.link) {
                (None, Link::MonteCarlo { samples, seed }) => self::link("mc", lambda, samples, seed)?,
                (name, stored) => self::link(name.unwrap_or(stored.name()), lambda, samples, seed)?,
            };
            let calibration = Calibration {
                temperature: temperature.unwrap_or(stored.temperature),
                link,
            };
            let x = matrix::<T>(features, "features")?;
            let (full, k) = (p.structure() == Structure::Full, p.classes());
            let x = host(&x).map_err(to_py)?;
            let pred = detach(py, || p.predict_calibrated(x, calibration)).map_err(to_py)?;
            let n = pred.probs.len() / k;
            let var: Vec<T> = match full {
                true => (0..n * k * k)
                    .map(|i| pred.logit_cov_at(i / (k * k), (i / k) % k, i % k))
                    .collect(),
                false => (0..n * k).map(|i| pred.logit_cov_at(i / k, i % k, i % k)).collect(),
            };
            let shape: Vec<usize> = if full { vec![n, k, k] } else { vec![n, k] };
            Ok((out(py, pred.probs, &[n, k])?, out(py, var, &shape)?))
        })
    }

    /// Chooses τ on the log grid `grid_min … grid_max` and 6 decades past it (unless
    /// `extend_grid=False`), the largest within one standard error of the best
    /// (`selection="one-se"`) or the best (`"best"`); `"auto"`, the first with `temperature=True`,
    /// else the second (unless `prior=False`; and with
    /// `temperature=True` a logit temperature; with
    /// `tune_lambda=True` the probit's λ; with `choose_link=True` the link; with
    /// `per_class=True`, then one τ per class, Diag only) minimising `metric` (nll, brier, ece)
    /// of the predictive under `link` (probit, centred-probit, none) on validation data, sets
    /// them, and returns a dict: `prior_precision`, `class_prior_precision` (a list, or None),
    /// `temperature`, `link`, `score`, `curve` [(τ, score)], `links` [(link, score)].
    ///
    /// >>> report = post.tune_prior_precision(x_val, y_val, temperature=True)
    /// >>> report["prior_precision"] == post.prior_precision[0] and len(report["curve"]) > 0
    /// True
    #[pyo3(signature = (features, labels, metric="nll", link="centred-probit", grid_min=1e-4, grid_max=1e4, grid_points=41, extend_grid=true, selection="auto", prior=true, temperature=false, tune_lambda=false, choose_link=false, per_class=false))]
    #[allow(clippy::too_many_arguments)]
    fn tune_prior_precision<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        metric: &str,
        link: &str,
        grid_min: f64,
        grid_max: f64,
        grid_points: usize,
        extend_grid: bool,
        selection: &str,
        prior: bool,
        temperature: bool,
        tune_lambda: bool,
        choose_link: bool,
        per_class: bool,
    ) -> R<Bound<'py, PyDict>> {
        let config = TuneConfig {
            metric: TuneMetric::from_name(metric).map_err(to_py)?,
            link: self::link(link, Link::PROBIT_LAMBDA, 100, 0)?,
            grid_min,
            grid_max,
            grid_points,
            extend_grid,
            selection: TuneSelection::from_name(selection).map_err(to_py)?,
            prior,
            temperature,
            lambda: tune_lambda,
            choose_link,
            per_class,
        };
        config.validate().map_err(to_py)?;
        let mut guard = write(py, &self.inner);
        let report = with_any!(&mut *guard, |p: T| {
            let regression = p.likelihood() != Likelihood::Classification;
            let (x, y) = (matrix::<T>(features, "features")?, targets::<T>(labels, regression)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || p.tune_prior_precision(x, y, &config)))
                .map_err(to_py)
        })?;
        let out = PyDict::new(py);
        out.set_item("prior_precision", report.prior_precision)?;
        out.set_item("temperature", report.temperature)?;
        out.set_item("link", report.link.name())?;
        out.set_item("score", report.score)?;
        out.set_item("curve", report.curve)?;
        let links: Vec<(&str, f64)> = report.links.iter().map(|(l, s)| (l.name(), *s)).collect();
        out.set_item("links", links)?;
        out.set_item("sigma_noise", report.sigma_noise)?;
        out.set_item("class_prior_precision", report.class_prior_precision)?;
        Ok(out)
    }

    /// Scores the predictive on labelled data beside the network's own softmax (the mean's, at
    /// T = 1): a dict with `laplace` and `network`, each a dict of `accuracy`, `nll`, `ece`,
    /// `brier`, `confidence` and `bins` [(count, correct, mean confidence)] over `bins`
    /// equal-width confidence bins (the reliability diagram). `link` and `temperature` as in
    /// `predict`.
    ///
    /// >>> scores = post.evaluate(x_val, y_val)
    /// >>> sorted(scores)
    /// ['laplace', 'network']
    #[pyo3(signature = (features, labels, link=None, temperature=None, bins=15))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        labels: &Bound<'py, PyAny>,
        link: Option<&str>,
        temperature: Option<f64>,
        bins: usize,
    ) -> R<Bound<'py, PyDict>> {
        let (laplace, _) = self.predict(py, features, link, 100, 0, None, temperature)?;
        let (network, _) = self.predict(py, features, Some("none"), 100, 0, None, Some(1.0))?;
        let TargetArray::Labels(labels) = targets::<f64>(labels, false)? else {
            unreachable!("class labels were asked for")
        };
        let labels = labels.as_slice()?;
        let out = PyDict::new(py);
        for (name, probs) in [("laplace", laplace), ("network", network)] {
            let probs: PyReadonlyArray2<'_, f64> = probs.call_method1("astype", ("float64",))?.extract()?;
            let k = probs.shape()[1];
            let (scores, diagram) =
                laplace_update::metrics::evaluate(probs.as_slice()?, labels, k, bins).map_err(to_py)?;
            let row = PyDict::new(py);
            row.set_item("accuracy", scores.accuracy)?;
            row.set_item("nll", scores.nll)?;
            row.set_item("ece", scores.ece)?;
            row.set_item("brier", scores.brier)?;
            row.set_item("confidence", scores.confidence)?;
            let bins: Vec<(usize, usize, f64)> = diagram.iter().map(|b| (b.count, b.correct, b.confidence())).collect();
            row.set_item("bins", bins)?;
            out.set_item(name, row)?;
        }
        Ok(out)
    }

    /// The logit temperature predictions use.
    ///
    /// >>> post.temperature
    /// 1.0
    #[getter]
    fn temperature(&self, py: Python<'_>) -> R<f64> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| Ok(p.calibration().temperature))
    }

    /// The link predictions use by default (as tuned).
    ///
    /// >>> post.link
    /// 'centred-probit'
    #[getter]
    fn link(&self, py: Python<'_>) -> R<String> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| Ok(p.calibration().link.name().to_string()))
    }

    /// The log marginal likelihood of the data under the Laplace approximation.
    ///
    /// >>> lml = post.log_marginal_likelihood(x, y)
    /// >>> bool(np.isclose(lml, post.log_occam_factor() + np.log(post.predict(x, link="none")[0][np.arange(len(y)), y]).sum()))
    /// True
    fn log_marginal_likelihood(
        &self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        labels: &Bound<'_, PyAny>,
    ) -> R<f64> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let regression = p.likelihood() != Likelihood::Classification;
            let (x, y) = (matrix::<T>(features, "features")?, targets::<T>(labels, regression)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || p.log_marginal_likelihood(x, y)))
                .map(|v| v.as_f64())
                .map_err(to_py)
        })
    }

    /// Chooses τ by maximising the marginal likelihood (one value, or one per class with
    /// `per_class=True`); returns it.
    ///
    /// >>> tau = post.optimize_prior_precision()
    /// >>> tau == post.prior_precision
    /// True
    #[pyo3(signature = (per_class=false))]
    fn optimize_prior_precision(&self, py: Python<'_>, per_class: bool) -> R<Vec<f64>> {
        let shape = if per_class {
            PriorShape::PerClass
        } else {
            PriorShape::Scalar
        };
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |p: T| detach(py, || p.optimize_prior_precision(shape))
            .map_err(to_py))
    }

    /// Replaces τ (one value, or one per class for Full and Diag), keeping the curvature:
    /// `Π ← Π − diag(τ_old) + diag(τ)`, `Σ ← Π⁻¹`. On error the posterior is unchanged.
    ///
    /// >>> post.set_prior_precision([4.0])
    /// >>> post.prior_precision
    /// [4.0]
    fn set_prior_precision(&self, py: Python<'_>, prior_precision: Vec<f64>) -> R<()> {
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |p: T| detach(py, || p
            .set_prior_precision(&prior_precision))
        .map_err(to_py))
    }

    /// The evidence's Occam factor `log Z − Σ_n log p(y_n | ŵ)`:
    /// `−½ Σ_k τ_k ‖ŵ_k‖² + ½ Σ_k D_aug log τ_k − ½ log det Π`.
    ///
    /// >>> post.log_occam_factor() < 0
    /// True
    fn log_occam_factor(&self, py: Python<'_>) -> R<f64> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| detach(py, || p.log_occam_factor()).map_err(to_py))
    }

    /// Kron's factors `(A, G, U_A, U_G, N)`: `Π = (A ⊗ G)/N + τ I` with the eigenvectors as
    /// the columns of U_A (K × K) and U_G (D_aug × D_aug); None for the other structures.
    ///
    /// >>> a, g, u_a, u_g, n = lu.Posterior.fit(x, y, w, b, structure="kron").kron_factors()
    /// >>> a.shape, g.shape, n
    /// ((3, 3), (9, 9), 200.0)
    #[allow(clippy::type_complexity)]
    fn kron_factors<'py>(
        &self,
        py: Python<'py>,
    ) -> R<
        Option<(
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
            Bound<'py, PyAny>,
            f64,
        )>,
    > {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let (k, da) = (p.classes(), p.augmented_features());
            match (p.kron_factors().map_err(to_py)?, p.kron_weight()) {
                (Some((a, g, ua, ug)), Some(n)) => Ok(Some((
                    out(py, a, &[k, k])?,
                    out(py, g, &[da, da])?,
                    out(py, ua, &[k, k])?,
                    out(py, ug, &[da, da])?,
                    n,
                ))),
                _ => Ok(None),
            }
        })
    }

    /// `samples` heads `w_s = ŵ + L z_s ~ N(ŵ, Σ)` (`L Lᵀ = Σ`, `z_s` standard normal from
    /// `seed`), as `samples × K × D_aug`: the bias column last when the bias is in the posterior.
    ///
    /// >>> post.sample_heads(5, seed=1).shape  # K × (D + 1): the bias column last
    /// (5, 3, 9)
    #[pyo3(signature = (samples, seed=0))]
    fn sample_heads<'py>(&self, py: Python<'py>, samples: usize, seed: u64) -> R<Bound<'py, PyAny>> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let heads = detach(py, || p.sample_heads(samples, seed)).map_err(to_py)?;
            out(py, heads, &[samples, p.classes(), p.augmented_features()])
        })
    }

    /// Regression with the GGN: replaces σ, keeping the mean and τ (the data curvature scales
    /// by `σ_old²/σ²`). On error the posterior is unchanged.
    ///
    /// >>> reg = lu.Posterior.fit(x, x[:, :2], None, likelihood="regression", sigma_noise=1.0)
    /// >>> reg.set_sigma_noise(0.5)
    fn set_sigma_noise(&self, py: Python<'_>, sigma_noise: f64) -> R<()> {
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |p: T| detach(py, || p.set_sigma_noise(sigma_noise))
            .map_err(to_py))
    }

    /// Regression: maximises the marginal likelihood of the data over τ and σ jointly (the
    /// mean held fixed), sets them and returns `(τ, σ)`.
    ///
    /// >>> reg = lu.Posterior.fit(x, x[:, :2] + 0.1, None, likelihood="regression")
    /// >>> tau, sigma = reg.optimize_prior_and_noise(x, x[:, :2] + 0.1)
    /// >>> tau > 0 and sigma > 0
    /// True
    fn optimize_prior_and_noise(
        &self,
        py: Python<'_>,
        features: &Bound<'_, PyAny>,
        targets: &Bound<'_, PyAny>,
    ) -> R<(f64, f64)> {
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |p: T| {
            let (x, y) = (matrix::<T>(features, "features")?, self::targets::<T>(targets, true)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || p.optimize_prior_and_noise(x, y)))
                .map_err(to_py)
        })
    }

    /// Saves the posterior file durably (a crash mid-write keeps any previous file).
    ///
    /// >>> post.save(tmp / "post.safetensors")
    /// >>> lu.Posterior.load(tmp / "post.safetensors").samples_seen == post.samples_seen
    /// True
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> R<()> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| py
            .detach(|| io::save_posterior(p, &path))
            .map_err(to_py))
    }

    /// Loads a posterior file onto `device`, in the file's dtype.
    ///
    /// >>> post.save(tmp / "post.safetensors")
    /// >>> lu.Posterior.load(tmp / "post.safetensors").structure
    /// 'full'
    #[staticmethod]
    #[pyo3(signature = (path, device="cpu"))]
    fn load(py: Python<'_>, path: std::path::PathBuf, device: &str) -> R<Posterior> {
        let bytes = std::fs::read(&path).map_err(|e| {
            to_py(Error::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        })?;
        Self::from_bytes(py, &bytes, device)
    }

    /// The posterior file's bytes.
    ///
    /// >>> lu.Posterior.from_bytes(post.to_bytes()).prior_precision == post.prior_precision
    /// True
    fn to_bytes<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyBytes>> {
        let guard = read(py, &self.inner);
        let bytes = with_any!(&*guard, |p: T| py
            .detach(|| io::posterior_to_bytes(p))
            .map_err(to_py)?);
        Ok(PyBytes::new(py, &bytes))
    }

    /// A posterior from the bytes of [`Posterior.to_bytes`] or of a posterior file.
    ///
    /// >>> import pickle
    /// >>> pickle.loads(pickle.dumps(post)).classes  # pickles as these bytes
    /// 3
    #[staticmethod]
    #[pyo3(signature = (data, device="cpu"))]
    fn from_bytes(py: Python<'_>, data: &[u8], device: &str) -> R<Posterior> {
        let header = io::peek_bytes(data).map_err(to_py)?;
        let inner = build_any!(any_device(device)?, header.dtype, |d: T| detach(py, || {
            io::posterior_from_bytes::<_, T>(&d, data)
        })
        .map_err(to_py)?)
        .map_err(to_py)?;
        Ok(Posterior {
            inner: RwLock::new(inner),
            device: device.to_string(),
        })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> R<Reduce<'py>> {
        let py = slf.py();
        let ctor = py.get_type::<Posterior>().getattr("from_bytes")?;
        Ok((ctor, (slf.get().to_bytes(py)?, slf.get().device.clone())))
    }

    /// The head W (K × D) and, with the bias in the posterior, the bias (K): the mean.
    ///
    /// >>> weights, bias = post.mean()
    /// >>> weights.shape, bias.shape
    /// ((3, 8), (3,))
    fn mean<'py>(&self, py: Python<'py>) -> R<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let (w, b) = (p.head().map_err(to_py)?, p.bias().map_err(to_py)?);
            Ok((out(py, w, &[p.classes(), p.features()])?, out(py, b, &[p.classes()])?))
        })
    }

    /// The covariance Σ in the structure's layout (P × P for Full, D_aug × D_aug for Shared,
    /// K × D_aug for Diag; Kron's factors are in `to_bytes`).
    ///
    /// >>> post.covariance().shape  # Full: P × P, P = K · (D + 1)
    /// (27, 27)
    fn covariance<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyAny>> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let (r, c) = p.stored_shape();
            out(py, p.covariance().map_err(to_py)?, &[r, c])
        })
    }

    /// The precision Π, as [`Posterior.covariance`].
    ///
    /// >>> bool(np.allclose(post.precision() @ post.covariance(), np.eye(27)))
    /// True
    fn precision<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyAny>> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| {
            let (r, c) = p.stored_shape();
            out(py, p.precision().map_err(to_py)?, &[r, c])
        })
    }

    /// τ, one value or one per class.
    ///
    /// >>> post.prior_precision
    /// [1.0]
    #[getter]
    fn prior_precision(&self, py: Python<'_>) -> Vec<f64> {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| p.prior_precision().iter().map(|t| t.as_f64()).collect())
    }

    /// K, the classes (or regression outputs): the head's rows.
    ///
    /// >>> post.classes
    /// 3
    #[getter]
    fn classes(&self, py: Python<'_>) -> usize {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| p.classes())
    }

    /// D, the feature columns the head reads (without the bias column).
    ///
    /// >>> post.features
    /// 8
    #[getter]
    fn features(&self, py: Python<'_>) -> usize {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| p.features())
    }

    /// Samples folded in: the fit's, plus every update's, less every unlearned one.
    ///
    /// >>> post.samples_seen
    /// 150
    #[getter]
    fn samples_seen(&self, py: Python<'_>) -> usize {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| p.samples_seen())
    }

    /// The covariance structure: full, shared, shared-categorical, diag or kron.
    ///
    /// >>> post.structure
    /// 'full'
    #[getter]
    fn structure(&self, py: Python<'_>) -> &'static str {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |p: T| p.structure().name())
    }

    /// The element type: float32 or float64.
    ///
    /// >>> post.dtype
    /// 'float64'
    #[getter]
    fn dtype(&self, py: Python<'_>) -> &'static str {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |_p: T| dtype_name::<T>())
    }

    /// The device the posterior lives on: cpu, cuda or wgpu.
    ///
    /// >>> post.device
    /// 'cpu'
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Posterior(structure={:?}, classes={}, features={}, samples_seen={}, dtype={:?}, device={:?})",
            self.structure(py),
            self.classes(py),
            self.features(py),
            self.samples_seen(py),
            self.dtype(py),
            self.device
        )
    }
}

/// Accumulators, by device and element type.
struct Accumulators;

impl Kind for Accumulators {
    type On<D: Device, T: Scalar> = CurvatureAccumulator<D, T>;
}

/// The accumulator of one device and dtype.
type AccInner = OnAnyDevice<Accumulators>;

/// Curvature sums around one head, accumulated in parts (shards, workers) and merged:
/// `finish` gives the posterior a single fit over all the parts gives, `Π = τ I + Σ_parts Σ_n H_n`.
///
/// >>> acc = lu.Accumulator(w, b, structure="full")
/// >>> acc.accumulate(x[:150], y[:150])
/// >>> bool(np.allclose(acc.finish(prior_precision=1.0).precision(), post.precision()))
/// True
#[pyclass(module = "laplace_update", frozen)]
struct Accumulator {
    inner: RwLock<AccInner>,
    device: String,
}

const ACC_CHUNK_ROWS: usize = 4096;

#[pymethods]
impl Accumulator {
    #[new]
    #[pyo3(signature = (weights, bias=None, structure="full", likelihood="classification", bias_in_posterior=true,
        dtype="float64", device="cpu", curvature="ggn", sigma_noise=1.0, mc_samples=1, seed=0))]
    fn new(
        py: Python<'_>,
        weights: &Bound<'_, PyAny>,
        bias: Option<&Bound<'_, PyAny>>,
        structure: &str,
        likelihood: &str,
        bias_in_posterior: bool,
        dtype: &str,
        device: &str,
        curvature: &str,
        sigma_noise: f64,
        mc_samples: usize,
        seed: u64,
    ) -> R<Accumulator> {
        let config = FitConfig {
            chunk_rows: ACC_CHUNK_ROWS,
            ..fit_config(
                structure,
                likelihood,
                curvature,
                1.0,
                bias_in_posterior,
                sigma_noise,
                mc_samples,
                seed,
            )?
        };
        let inner = build_any!(any_device(device)?, dtype_of(dtype)?, |d: T| {
            let (w, b) = (matrix::<T>(weights, "weights")?, bias_vector::<T>(bias)?);
            let b = slice1(&b)?;
            let w = host(&w).map_err(to_py)?;
            detach(py, || CurvatureAccumulator::new(&d, w, b, &config)).map_err(to_py)?
        })
        .map_err(to_py)?;
        Ok(Accumulator {
            inner: RwLock::new(inner),
            device: device.to_string(),
        })
    }

    /// Adds the curvature of `features` with their `labels`.
    ///
    /// >>> acc = lu.Accumulator(w, b)
    /// >>> acc.accumulate(x[:100], y[:100]); acc.accumulate(x[100:150], y[100:150])
    /// >>> acc.count
    /// 150
    fn accumulate(&self, py: Python<'_>, features: &Bound<'_, PyAny>, labels: &Bound<'_, PyAny>) -> R<()> {
        let mut guard = write(py, &self.inner);
        with_any!(&mut *guard, |a: T| {
            let regression = a.likelihood() != Likelihood::Classification;
            let (x, y) = (matrix::<T>(features, "features")?, targets::<T>(labels, regression)?);
            let x = host(&x).map_err(to_py)?;
            y.with(|y| detach(py, || a.accumulate(x, y))).map_err(to_py)
        })
    }

    /// Adds another accumulator's sums (same head, settings, dtype and device).
    ///
    /// >>> left, right = lu.Accumulator(w, b), lu.Accumulator(w, b)
    /// >>> left.accumulate(x[:75], y[:75]); right.accumulate(x[75:150], y[75:150])
    /// >>> left.merge(right)
    /// >>> bool(np.allclose(left.finish().precision(), post.precision()))
    /// True
    fn merge(&self, py: Python<'_>, other: &Accumulator) -> R<()> {
        if std::ptr::eq(self, other) {
            return Err(invalid("other", "an accumulator cannot merge itself; merge a copy"));
        }
        let theirs = other.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut guard = write(py, &self.inner);
        with_any_pair!(&mut *guard, &*theirs, |a, b: T| detach(py, || a.merge(b)).map_err(to_py),
            else Err(invalid("other", "must have the same dtype and device")))
    }

    /// The posterior with prior precision τ, or with τ chosen by marginal likelihood when
    /// `optimize_prior=True` (starting from `prior_precision`).
    ///
    /// >>> acc = lu.Accumulator(w, b); acc.accumulate(x[:150], y[:150])
    /// >>> bool(np.allclose(acc.finish(prior_precision=1.0).covariance(), post.covariance()))
    /// True
    #[pyo3(signature = (prior_precision=1.0, optimize_prior=false))]
    fn finish(&self, py: Python<'_>, prior_precision: f64, optimize_prior: bool) -> R<Posterior> {
        let guard = read(py, &self.inner);
        let inner = map_any!(&*guard, |a: T| {
            let mut post = detach(py, || a.finish(prior_precision)).map_err(to_py)?;
            if optimize_prior {
                detach(py, || post.optimize_prior_precision(PriorShape::Scalar)).map_err(to_py)?;
            }
            post
        });
        Ok(Posterior {
            inner: RwLock::new(inner),
            device: self.device.clone(),
        })
    }

    /// Samples accumulated so far.
    #[getter]
    fn count(&self, py: Python<'_>) -> usize {
        let guard = read(py, &self.inner);
        with_any!(&*guard, |a: T| a.count())
    }

    /// The accumulator file's bytes.
    fn to_bytes<'py>(&self, py: Python<'py>) -> R<Bound<'py, PyBytes>> {
        let guard = read(py, &self.inner);
        let bytes = with_any!(&*guard, |a: T| py
            .detach(|| io::accumulator_to_bytes(a))
            .map_err(to_py)?);
        Ok(PyBytes::new(py, &bytes))
    }

    /// An accumulator from the bytes of [`Accumulator.to_bytes`].
    #[staticmethod]
    #[pyo3(signature = (data, device="cpu"))]
    fn from_bytes(py: Python<'_>, data: &[u8], device: &str) -> R<Accumulator> {
        let header = io::peek_bytes(data).map_err(to_py)?;
        let inner = build_any!(any_device(device)?, header.dtype, |d: T| detach(py, || {
            io::accumulator_from_bytes::<_, T>(&d, data, ACC_CHUNK_ROWS)
        })
        .map_err(to_py)?)
        .map_err(to_py)?;
        Ok(Accumulator {
            inner: RwLock::new(inner),
            device: device.to_string(),
        })
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> R<Reduce<'py>> {
        let py = slf.py();
        let ctor = py.get_type::<Accumulator>().getattr("from_bytes")?;
        Ok((ctor, (slf.get().to_bytes(py)?, slf.get().device.clone())))
    }
}

/// Picks `batch` pool candidates (indices) for labelling by `strategy` (random, entropy,
/// margin, least-confidence, bald, badge, bait, coreset, typiclust); with `update_driven`, one
/// at a time, each folded in (with the posterior's own most probable label) before the next.
///
/// >>> picks = lu.select(post, x[150:], strategy="margin", batch=5)
/// >>> len(picks), all(0 <= i < 50 for i in picks)
/// (5, True)
#[pyfunction]
#[pyo3(signature = (post, pool_features, strategy="margin", batch=10, update_driven=false, seed=0, labeled_features=None))]
fn select(
    py: Python<'_>,
    post: &Posterior,
    pool_features: &Bound<'_, PyAny>,
    strategy: &str,
    batch: usize,
    update_driven: bool,
    seed: u64,
    labeled_features: Option<&Bound<'_, PyAny>>,
) -> R<Vec<usize>> {
    let strategy = Strategy::from_name(strategy).map_err(to_py)?;
    let guard = read(py, &post.inner);
    with_any!(&*guard, |p: T| {
        let x = matrix::<T>(pool_features, "features")?;
        let labeled = match labeled_features {
            Some(l) if !l.is_none() => Some(matrix::<T>(l, "labeled_features")?),
            _ => None,
        };
        let empty: [T; 0] = [];
        let pool = Pool {
            candidates: host(&x).map_err(to_py)?,
            labeled: match &labeled {
                Some(l) => host(l),
                None => HostMatrix::new(&empty, 0, p.features()),
            }
            .map_err(to_py)?,
        };
        detach(py, || match update_driven {
            false => strategy.select(p, &pool, batch, seed),
            true => UpdateDriven {
                base: strategy,
                labels: LabelSource::Predicted,
                update: UpdateConfig::default(),
            }
            .select(p, &pool, batch, seed),
        })
        .map_err(to_py)
    })
}

/// The backends of this build: `(name, available, detail)` each, `detail` the device's name
/// or the reason it cannot be used.
///
/// >>> ("cpu", True) in [(name, ok) for name, ok, _ in lu.devices()]
/// True
#[pyfunction]
fn devices(py: Python<'_>) -> Vec<(String, bool, String)> {
    detach(py, || {
        ["cpu", "cuda", "wgpu"]
            .iter()
            .map(|&b| match laplace_update::AnyDevice::select(b) {
                Ok(d) => (b.to_string(), true, d.name()),
                Err(e) => (b.to_string(), false, e.to_string()),
            })
            .collect()
    })
}

/// The exception a sample error of `variant` (`"ShapeMismatch"`, ...) becomes: the tests check
/// every variant's class and attributes with it, including those no call here can provoke.
#[pyfunction]
fn _sample_error(variant: &str) -> R<PyErr> {
    let reason = || "sample".to_string();
    let e = match variant {
        "ShapeMismatch" => Error::shape("features", (2, 3), (2, 4)),
        "NonFinite" => Error::NonFinite {
            argument: "features",
            index: 5,
            columns: 2,
        },
        "LabelOutOfRange" => Error::LabelOutOfRange {
            index: 1,
            label: 7,
            classes: 3,
        },
        "EmptyBatch" => Error::EmptyBatch { argument: "features" },
        "InvalidArgument" => Error::invalid("gamma", reason()),
        "NotPositiveDefinite" => Error::NotPositiveDefinite { index: 4 },
        "IllConditioned" => Error::IllConditioned { drift: 0.5 },
        "BackendUnavailable" => Error::BackendUnavailable {
            backend: "cuda",
            reason: reason(),
        },
        "Unsupported" => Error::Unsupported(reason()),
        "Io" => Error::Io {
            path: "p".into(),
            reason: reason(),
        },
        "LockTimeout" => Error::LockTimeout {
            path: "p".into(),
            lock: "p.lock".into(),
            waited_s: 1.5,
        },
        "Format" => Error::Format {
            what: "p".into(),
            reason: reason(),
        },
        "Device" => Error::Device {
            backend: "cuda",
            reason: reason(),
        },
        "OutOfMemory" => Error::OutOfMemory {
            needed: 2_000,
            available: 1_000,
            bound: "memory cgroup",
            what: "a sample".into(),
            advice: String::new(),
        },
        other => return Err(invalid("variant", format!("unknown `{other}`"))),
    };
    Ok(to_py(e))
}

/// `post.evaluate(features, labels, ...)`: the predictive's scores beside the network's
/// softmax, and the reliability bins.
///
/// >>> lu.evaluate(post, x_val, y_val)["laplace"]["accuracy"] <= 1.0
/// True
#[pyfunction]
#[pyo3(signature = (post, features, labels, link=None, temperature=None, bins=15))]
fn evaluate<'py>(
    py: Python<'py>,
    post: &Posterior,
    features: &Bound<'py, PyAny>,
    labels: &Bound<'py, PyAny>,
    link: Option<&str>,
    temperature: Option<f64>,
    bins: usize,
) -> R<Bound<'py, PyDict>> {
    post.evaluate(py, features, labels, link, temperature, bins)
}

/// `set_max_memory(limit)`: caps this process's memory for the library's operations, as
/// the command line's `--max-memory`. `limit` is bytes (an int) or a count with a unit
/// (`"1500M"`, `"2G"`), or None for no cap. An operation that would exceed the cap, the memory
/// cgroup's limit or the machine's available memory raises `OutOfMemoryError` before it
/// allocates.
///
/// ```python
/// lu.set_max_memory("2G")
/// ```
///
/// >>> lu.set_max_memory("64G")
/// >>> lu.set_max_memory(None)  # no cap
#[pyfunction]
#[pyo3(signature = (limit))]
fn set_max_memory(limit: Option<&Bound<'_, PyAny>>) -> R<()> {
    let bytes = match limit {
        None => None,
        Some(l) if l.is_none() => None,
        Some(l) => Some(match l.extract::<u64>() {
            Ok(b) if b > 0 => b,
            _ => {
                let text: String = l.extract().map_err(|_| {
                    invalid(
                        "limit",
                        "must be a positive number of bytes, a string such as \"2G\", or None",
                    )
                })?;
                laplace_update::memory::parse_bytes(&text).map_err(|e| invalid("limit", e))?
            }
        }),
    };
    laplace_update::memory::set_limit(bytes);
    Ok(())
}

#[pymodule]
#[pyo3(name = "_core")]
fn laplace_update_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    install_interrupts();
    m.add_class::<Posterior>()?;
    m.add_class::<Accumulator>()?;
    m.add_function(wrap_pyfunction!(select, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(devices, m)?)?;
    m.add_function(wrap_pyfunction!(_sample_error, m)?)?;
    m.add_function(wrap_pyfunction!(set_max_memory, m)?)?;
    add_exceptions(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
