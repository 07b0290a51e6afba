"""The compiled core of laplace_update; import it from the package."""

from os import PathLike
from typing import Any, Optional, Tuple, Union, final

import numpy.typing as npt

_Array = npt.NDArray[Any]
_ArrayLike = npt.ArrayLike

class LaplaceError(Exception):
    """Base class of the library's errors."""

class ShapeMismatchError(LaplaceError):
    """An argument has the wrong shape (``argument``, ``expected``, ``got``)."""

class NonFiniteError(LaplaceError):
    """An input holds NaN or ±inf (``argument``; ``row``, ``column`` and ``index`` of the first)."""

class LabelOutOfRangeError(LaplaceError):
    """A label is not a class (``index``, ``label``, ``classes``)."""

class EmptyBatchError(LaplaceError):
    """A batch has no rows (``argument``)."""

class InvalidArgumentError(LaplaceError):
    """An argument is out of its domain (``argument``, ``reason``)."""

class NotPositiveDefiniteError(LaplaceError):
    """A matrix that must be positive definite is not (``index``: the failing pivot or sample)."""

class IllConditionedError(LaplaceError):
    """The covariance drifted from the precision's inverse (``drift``)."""

class BackendUnavailableError(LaplaceError):
    """A device backend cannot be used here (``backend``, ``reason``)."""

class UnsupportedError(LaplaceError):
    """Valid, but not supported by this backend or configuration (``reason``)."""

class FileError(LaplaceError):
    """A file could not be read or written (``path``, ``reason``)."""

class LockTimeoutError(LaplaceError):
    """A posterior file stayed locked by another writer (``path``, ``lock``, ``waited_s``)."""

class FormatError(LaplaceError):
    """Bytes or a file are not a valid posterior or array (``what``, ``reason``)."""

class DeviceError(LaplaceError):
    """A device operation failed (``backend``, ``reason``)."""

class OutOfMemoryError(LaplaceError):
    """An operation would exceed the memory available (``needed``, ``available``, ``bound``, ``what``)."""

@final
class Posterior:
    """A last-layer Laplace posterior ``N(ŵ, Σ)`` over a trained head, updated in closed form.

    >>> post = lu.Posterior.fit(x, y, w, b, structure="kron")
    >>> report = post.update(x_new, y_new)
    """

    @staticmethod
    def fit(
        features: _ArrayLike,
        labels: _ArrayLike,
        weights: Optional[_ArrayLike] = None,
        bias: Optional[_ArrayLike] = None,
        structure: str = "full",
        likelihood: str = "classification",
        prior_precision: float = 1.0,
        bias_in_posterior: bool = True,
        dtype: str = "float64",
        device: str = "cpu",
        curvature: str = "ggn",
        sigma_noise: float = 1.0,
        mc_samples: int = 1,
        seed: int = 0,
        classes: Optional[int] = None,
    ) -> Posterior:
        """Fits ``Π = τ I + Σ_n H_n`` around the head ``weights`` (K × D) and ``bias`` (K), or around
        the MAP head when ``weights`` is None. Structures: full, shared (also shared-gaussian),
        shared-categorical, diag, kron."""
    def update(
        self,
        features: _ArrayLike,
        labels: _ArrayLike,
        rule: str = "joint",
        step: Optional[str] = None,
        gamma: Optional[float] = None,
        iterations: Optional[int] = None,
        tolerance: float = ...,
        curvature_at: str = "mode",
        forgetting: float = 1.0,
    ) -> dict[str, Any]:
        """Folds new labelled samples in (damped Newton steps to the new mode by default); returns
        the report: ``steps``, ``step_length``, ``objective_before``, ``objective_after``,
        ``relative_step``, ``undamped_rejected``, ``converged``."""
    def unlearn(
        self,
        features: _ArrayLike,
        labels: _ArrayLike,
        step: Optional[str] = None,
        gamma: Optional[float] = None,
        iterations: Optional[int] = None,
        curvature_at: str = "mode",
    ) -> None:
        """Removes samples an update folded in: the exact inverse of that update."""
    def predict(
        self,
        features: _ArrayLike,
        link: Optional[str] = None,
        samples: int = 100,
        seed: int = 0,
        probit_lambda: Optional[float] = None,
        temperature: Optional[float] = None,
    ) -> Tuple[_Array, _Array]:
        """Probabilities (N × K) and logit variances (N × K × K for Full, else N × K) under ``link``
        (centred-probit, probit, mc, bridge, none; default: the posterior's own)."""
    def tune_prior_precision(
        self,
        features: _ArrayLike,
        labels: _ArrayLike,
        metric: str = "nll",
        link: str = "centred-probit",
        grid_min: float = 1e-4,
        grid_max: float = 1e4,
        grid_points: int = 41,
        extend_grid: bool = True,
        selection: str = "auto",
        prior: bool = True,
        temperature: bool = False,
        tune_lambda: bool = False,
        choose_link: bool = False,
        per_class: bool = False,
    ) -> dict[str, Any]:
        """Chooses τ (and the temperature, λ, link or one τ per class) on validation data, sets
        them, and returns ``prior_precision``, ``class_prior_precision``, ``temperature``,
        ``link``, ``score``, ``curve``, ``links``, ``sigma_noise``."""
    def evaluate(
        self,
        features: _ArrayLike,
        labels: _ArrayLike,
        link: Optional[str] = None,
        temperature: Optional[float] = None,
        bins: int = 15,
    ) -> dict[str, Any]:
        """Accuracy, NLL, ECE, Brier and confidence of the predictive beside the network's softmax."""
    @property
    def temperature(self) -> float: ...
    @property
    def link(self) -> str: ...
    def log_marginal_likelihood(self, features: _ArrayLike, labels: _ArrayLike) -> float:
        """The Laplace evidence ``log p(y | τ)`` of the data the posterior was fitted on."""
    def optimize_prior_precision(self, per_class: bool = False) -> list[float]:
        """Chooses τ by marginal likelihood (one value, or one per class); returns it."""
    def set_prior_precision(self, prior_precision: list[float]) -> None:
        """Replaces τ (one value, or one per class for Full and Diag), keeping the curvature:
        ``Π ← Π − diag(τ_old) + diag(τ)``, ``Σ ← Π⁻¹``."""
    def log_occam_factor(self) -> float:
        """``log Z − Σ_n log p(y_n | ŵ) = −½ Σ_k τ_k ‖ŵ_k‖² + ½ Σ_k D_aug log τ_k − ½ log det Π``."""
    def kron_factors(self) -> Optional[Tuple[_Array, _Array, _Array, _Array, float]]:
        """Kron's ``(A, G, U_A, U_G, N)`` with ``Π = (A ⊗ G)/N + τ I``; None for other structures."""
    def sample_heads(self, samples: int, seed: int = 0) -> _Array:
        """``samples`` heads ``ŵ + L z ~ N(ŵ, Σ)`` as samples × K × D_aug (bias column last)."""
    def set_sigma_noise(self, sigma_noise: float) -> None:
        """Regression with the GGN: replaces σ, keeping the mean and τ."""
    def optimize_prior_and_noise(self, features: _ArrayLike, targets: _ArrayLike) -> Tuple[float, float]:
        """Regression: τ and σ by marginal likelihood; returns (τ, σ)."""
    def save(self, path: Union[str, PathLike[str]]) -> None:
        """Writes the posterior file durably (a crash leaves the old file or the new one)."""
    @staticmethod
    def load(path: Union[str, PathLike[str]], device: str = "cpu") -> Posterior:
        """Reads a posterior file, checking every shape and value."""
    def to_bytes(self) -> bytes:
        """The posterior file's bytes."""
    @staticmethod
    def from_bytes(data: bytes, device: str = "cpu") -> Posterior:
        """A posterior from the bytes of ``to_bytes``."""
    def __reduce__(self) -> Tuple[Any, Tuple[bytes, str]]: ...
    def mean(self) -> Tuple[_Array, _Array]:
        """The head W (K × D) and the bias (K): the mean."""
    def covariance(self) -> _Array:
        """Σ in the structure's layout."""
    def precision(self) -> _Array:
        """Π in the structure's layout."""
    @property
    def prior_precision(self) -> list[float]: ...
    @property
    def classes(self) -> int: ...
    @property
    def features(self) -> int: ...
    @property
    def samples_seen(self) -> int: ...
    @property
    def structure(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> str: ...

@final
class Accumulator:
    """Curvature sums around one head, accumulated in parts (shards, workers) and merged:
    ``finish`` gives the posterior a single fit over all the parts gives."""

    def __new__(
        cls,
        weights: _ArrayLike,
        bias: Optional[_ArrayLike] = None,
        structure: str = "full",
        likelihood: str = "classification",
        bias_in_posterior: bool = True,
        dtype: str = "float64",
        device: str = "cpu",
        curvature: str = "ggn",
        sigma_noise: float = 1.0,
        mc_samples: int = 1,
        seed: int = 0,
    ) -> Accumulator: ...
    def accumulate(self, features: _ArrayLike, labels: _ArrayLike) -> None:
        """Adds a batch's curvature to the sums."""
    def merge(self, other: Accumulator) -> None:
        """Adds another accumulator's sums (same head, settings, dtype and device)."""
    def finish(self, prior_precision: float = 1.0, optimize_prior: bool = False) -> Posterior:
        """The posterior with prior precision τ (or τ by marginal likelihood)."""
    @property
    def count(self) -> int: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes, device: str = "cpu") -> Accumulator: ...
    def __reduce__(self) -> Tuple[Any, Tuple[bytes, str]]: ...

def select(
    post: Posterior,
    pool_features: _ArrayLike,
    strategy: str = "margin",
    batch: int = 10,
    update_driven: bool = False,
    seed: int = 0,
    labeled_features: Optional[_ArrayLike] = None,
) -> list[int]:
    """Picks ``batch`` pool candidates (indices) for labelling by ``strategy``."""

def devices() -> list[Tuple[str, bool, str]]:
    """Each backend: its name, whether it works here, and why not."""

def evaluate(
    post: Posterior,
    features: _ArrayLike,
    labels: _ArrayLike,
    link: Optional[str] = None,
    temperature: Optional[float] = None,
    bins: int = 15,
) -> dict[str, Any]:
    """``post.evaluate``: the predictive's scores beside the network's softmax."""

def set_max_memory(limit: Union[int, str, None]) -> None:
    """Caps the memory the library's operations may use (bytes, or "2G"); None lifts the cap."""

def _sample_error(variant: str) -> LaplaceError: ...

__version__: str
__all__ = [
    "Posterior",
    "Accumulator",
    "select",
    "evaluate",
    "devices",
    "_sample_error",
    "set_max_memory",
    "LaplaceError",
    "ShapeMismatchError",
    "NonFiniteError",
    "LabelOutOfRangeError",
    "EmptyBatchError",
    "InvalidArgumentError",
    "NotPositiveDefiniteError",
    "IllConditionedError",
    "BackendUnavailableError",
    "UnsupportedError",
    "FileError",
    "LockTimeoutError",
    "FormatError",
    "DeviceError",
    "OutOfMemoryError",
    "__version__",
]
