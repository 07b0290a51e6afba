"""Last-layer Laplace posteriors of trained networks, updated with new data in closed form.

The head W (K × D) of a trained network is the mean of a Gaussian posterior whose precision is
``Π = τ I + Σ_n H_n`` with the softmax GGN ``H_n = Λ_n ⊗ φ_n φ_nᵀ``. ``Posterior.update`` folds
new labelled samples in by damped Newton steps to the mode of
``Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`` and keeps the Laplace approximation there;
``Posterior.predict`` turns the logit covariance ``Σ_f = J Σ Jᵀ`` into probabilities.

>>> import numpy as np, laplace_update as lu
>>> x, y = np.random.default_rng(0).normal(size=(100, 8)), np.arange(100) % 3
>>> post = lu.Posterior.fit(x, y, np.zeros((3, 8)))
>>> probs, var = post.predict(x[:5])

PyTorch models: ``laplace_update.torch`` (``pip install "./python[torch]"``) wraps a model's last
``nn.Linear`` with laplace-torch's ``Laplace`` interface, plus ``update`` and ``unlearn``.
"""

from ._core import (
    Posterior,
    Accumulator,
    select,
    evaluate,
    devices,
    set_max_memory,
    LaplaceError,
    ShapeMismatchError,
    NonFiniteError,
    LabelOutOfRangeError,
    EmptyBatchError,
    InvalidArgumentError,
    NotPositiveDefiniteError,
    IllConditionedError,
    BackendUnavailableError,
    UnsupportedError,
    FileError,
    LockTimeoutError,
    FormatError,
    DeviceError,
    OutOfMemoryError,
    __version__,
    _sample_error,
)

__all__ = [
    "Posterior",
    "Accumulator",
    "select",
    "evaluate",
    "devices",
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
