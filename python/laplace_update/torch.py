"""PyTorch front end: laplace-torch's last-layer ``Laplace``, with the updates it lacks.

``Laplace(model, "classification")`` fits a Laplace posterior ``N(ŵ, Σ)`` over the weights and
bias of the model's last ``nn.Linear`` (its head), with precision ``Π = τ I + Σ_n J_nᵀ Λ_n J_n``
(the GGN; ``Λ_n = diag(p_n) − p_n p_nᵀ`` for the softmax, ``I/σ²`` for regression). Unlike
laplace-torch, ``update(x, y)`` folds new labelled data into the posterior in closed form and
writes the new mean back into the model, so that ``model(x)`` follows the update.

>>> import torch
>>> from torch.utils.data import DataLoader, TensorDataset
>>> from laplace_update.torch import Laplace
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
>>> x, y = torch.randn(60, 4), torch.arange(60) % 3
>>> la = Laplace(model, "classification", hessian_structure="full")
>>> la.fit(DataLoader(TensorDataset(x, y), batch_size=20))
>>> la.optimize_prior_precision(method="marglik")
>>> probs = la(x[:5])  # (5, 3), rows sum to 1
>>> report = la.update(x[:10], y[:10])  # the model's last layer now holds the new mean

Tensors reach the library through the host: a CPU tensor is read in place (a numpy view of its
memory, no copy), a CUDA tensor is copied to the host once per batch. The library's own
``device=`` (``"cpu"``, ``"cuda"``, ``"wgpu"``) then decides where the posterior is computed;
results come back as tensors on the input's device and in the model's dtype.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from . import _core

__all__ = ["LastLayer", "Laplace"]

_Batch = Tuple[torch.Tensor, torch.Tensor]

#: laplace-torch's ``hessian_structure`` names, and the library's own, to the library's names.
_STRUCTURES = {
    "full": "full",
    "kron": "kron",
    "diag": "diag",
    "shared": "shared",
    "shared-gaussian": "shared",
    "shared-categorical": "shared-categorical",
}
#: laplace-torch's ``link_approx`` names, and the library's own, to the library's names.
_LINKS = {
    "probit": "probit",
    "mc": "mc",
    "bridge_norm": "bridge",
    "centred-probit": "centred-probit",
    "centred_probit": "centred-probit",
}


#: The most parameters for which a Kron or Shared posterior is expanded to a dense P × P matrix
#: (3.2 GB in f64); Full's is stored dense already.
_DENSE_LIMIT = 20_000


class LastLayer:
    """The last ``nn.Linear`` of a model (or the one named ``layer``): its inputs φ (the
    penultimate features), its weight W (K × D) and its bias b (K), read by a forward hook.

    >>> import torch
    >>> from laplace_update.torch import LastLayer
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> head = LastLayer(model)
    >>> head.name, head.classes, head.features
    ('2', 3, 8)
    >>> phi, logits = head.collect(torch.randn(5, 4))  # φ (5 × 8) and the logits φ Wᵀ + b (5 × 3)
    """

    def __init__(self, model: nn.Module, layer: Optional[str] = None) -> None:
        modules = dict(model.named_modules())
        if layer is None:
            linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
            if not linear:
                raise ValueError("the model has no nn.Linear; name its last layer with layer=")
            layer = linear[-1]
        if layer not in modules:
            raise ValueError(f"the model has no module named {layer!r}")
        module = modules[layer]
        if not isinstance(module, nn.Linear):
            raise ValueError(f"module {layer!r} is a {type(module).__name__}, not an nn.Linear")
        self.model = model
        self.name = layer
        self.module: nn.Linear = module

    @property
    def classes(self) -> int:
        """K, the layer's outputs."""
        return int(self.module.out_features)

    @property
    def features(self) -> int:
        """D, the layer's inputs."""
        return int(self.module.in_features)

    @property
    def has_bias(self) -> bool:
        """Whether the layer has a bias (then it is in the posterior, as in laplace-torch)."""
        return self.module.bias is not None

    @property
    def dtype(self) -> torch.dtype:
        """The layer's dtype, which the posterior takes (float32 or float64)."""
        return self.module.weight.dtype

    def collect(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Runs the model on ``x`` in eval mode without gradients and returns the layer's inputs
        φ (N × D) and outputs ``φ Wᵀ + b`` (N × K), which must be the model's output."""
        seen: Dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, inputs: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen["phi"], seen["logits"] = inputs[0], output

        handle = self.module.register_forward_hook(hook)
        training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                out = self.model(x)
        finally:
            handle.remove()
            self.model.train(training)
        if "phi" not in seen:
            raise ValueError(f"the model's forward pass did not run its layer {self.name!r}")
        phi, logits = seen["phi"], seen["logits"]
        if phi.ndim != 2:
            raise ValueError(
                f"layer {self.name!r} sees inputs of shape {tuple(phi.shape)}; a last-layer "
                "posterior needs one feature row per example (reduce the tokens or pixels first)"
            )
        if not isinstance(out, torch.Tensor) or out.shape != logits.shape or not (
            out is logits or torch.equal(out, logits)
        ):
            raise ValueError(
                f"the model's output is not its layer {self.name!r}'s output: the last-layer "
                "posterior needs the model to end in that layer"
            )
        return phi, logits

    def weight(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """W (K × D) and b (K, or None) as host arrays.

        >>> w, b = LastLayer(model).weight()
        >>> w.shape, b.shape
        ((3, 16), (3,))
        """
        w = _host(self.module.weight)
        b = None if self.module.bias is None else _host(self.module.bias)
        return w, b

    def write(self, weight: np.ndarray, bias: Optional[np.ndarray]) -> None:
        """Copies W and b into the layer, in its dtype and on its device.

        >>> head = LastLayer(model)
        >>> head.write(*head.weight())  # unchanged
        """
        with torch.no_grad():
            w = self.module.weight
            w.copy_(torch.as_tensor(weight).to(device=w.device, dtype=w.dtype))
            if bias is not None and self.module.bias is not None:
                b = self.module.bias
                b.copy_(torch.as_tensor(bias).to(device=b.device, dtype=b.dtype))


def _host(t: torch.Tensor) -> np.ndarray:
    """A host array of ``t``: a view of a contiguous CPU tensor's memory, else one copy."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().numpy()


def _labels(y: torch.Tensor, regression: bool) -> np.ndarray:
    if regression:
        return _host(y.double() if not y.is_floating_point() else y)
    if y.is_floating_point():
        raise ValueError("classification labels must be integer class indices")
    return _host(y.long())


def _dtype_name(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "float32"
    if dtype == torch.float64:
        return "float64"
    raise NotImplementedError(f"a last layer in {dtype}; float32 and float64 are supported")


def _batches(loader: Iterable[Any]) -> Iterable[_Batch]:
    for batch in loader:
        if isinstance(batch, dict) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise NotImplementedError("loaders of (x, y) tensor pairs are supported, not dicts")
        yield batch[0], batch[1]


def _progress(items: Iterable[Any], enabled: bool, what: str) -> Iterable[Any]:
    if not enabled:
        return items
    try:
        import tqdm  # type: ignore[import-untyped]
    except ImportError:
        return items
    return tqdm.tqdm(items, desc=what)  # type: ignore[no-any-return]


class Laplace:
    """laplace-torch's last-layer ``Laplace``, computed by laplace_update, with ``update`` and
    ``unlearn``.

    ``hessian_structure``: ``"full"``, ``"kron"`` (laplace-torch's default), ``"diag"``, and the
    library's ``"shared"`` (the seed paper's ``I_K ⊗ Π_D``) and ``"shared-categorical"``.
    ``prior_precision``: one τ, or one per class (K values; Full and Diag). The posterior's mean
    is the model's last layer; ``update`` and ``unlearn`` write it back (``write_back=True``).

    Arguments laplace-torch has and this class cannot honour raise ``NotImplementedError``:
    ``subset_of_weights`` other than ``"last_layer"``, a non-zero ``prior_mean``, a
    ``temperature`` other than 1, ``enable_backprop=True``, a ``backend``, layer-wise or
    per-parameter prior precisions.

    >>> la = Laplace(model, "classification", hessian_structure="kron")
    >>> la.fit(train_loader)
    >>> la.optimize_prior_precision(method="gridsearch", val_loader=val_loader)
    >>> probs = la(x_test, link_approx="probit")
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        subset_of_weights: str = "last_layer",
        hessian_structure: str = "kron",
        sigma_noise: float = 1.0,
        prior_precision: Union[float, Iterable[float], torch.Tensor] = 1.0,
        prior_mean: float = 0.0,
        temperature: float = 1.0,
        enable_backprop: bool = False,
        backend: Optional[type] = None,
        last_layer_name: Optional[str] = None,
        device: str = "cpu",
    ) -> None:
        if subset_of_weights != "last_layer":
            raise NotImplementedError(
                f"subset_of_weights={subset_of_weights!r}; only 'last_layer' is supported"
            )
        if hessian_structure not in _STRUCTURES:
            raise NotImplementedError(
                f"hessian_structure={hessian_structure!r}; supported: {', '.join(_STRUCTURES)}"
            )
        if likelihood not in ("classification", "regression"):
            raise NotImplementedError(
                f"likelihood={likelihood!r}; supported: 'classification', 'regression'"
            )
        if float(prior_mean) != 0.0:
            raise NotImplementedError("a non-zero prior_mean; the prior is N(0, τ⁻¹ I)")
        if float(temperature) != 1.0:
            raise NotImplementedError(
                "temperature != 1 (a tempered posterior); for calibration tune a logit "
                "temperature on validation data with the numpy API's tune_prior_precision"
            )
        if enable_backprop:
            raise NotImplementedError("enable_backprop=True; predictions are not differentiable")
        if backend is not None:
            raise NotImplementedError("a curvature backend; laplace_update computes the GGN itself")
        self.model = model
        self.likelihood = likelihood
        self.hessian_structure = hessian_structure
        self.last_layer = LastLayer(model, last_layer_name)
        self.sigma_noise = float(sigma_noise)
        self.temperature = 1.0
        self.device = device
        self._initial_prior = self._prior_values(prior_precision)
        self._posterior: Optional[_core.Posterior] = None
        # Σ_n log p(y_n | ŵ) of the fitted data (classification), or the residual sum of squares
        # and the target count (regression), from which the evidence follows without the data.
        self._log_likelihood: Optional[float] = None
        self._residuals: Optional[Tuple[float, int]] = None
        self.n_data = 0

    # -- fitting ------------------------------------------------------------------------------

    def fit(self, train_loader: Iterable[Any], override: bool = True, progress_bar: bool = False) -> None:
        """Fits ``Π = τ I + Σ_n J_nᵀ Λ_n J_n`` at the model's last layer, streaming the loader's
        ``(x, y)`` batches into an accumulator (the features are never all held at once).

        >>> la = Laplace(model, "classification", hessian_structure="diag")
        >>> la.fit(train_loader)
        >>> la.posterior.samples_seen
        200
        """
        if not override:
            raise ValueError(
                "fit(override=False) is not a last-layer operation; fold new data in with update()"
            )
        layer = self.last_layer
        weight, bias = layer.weight()
        regression = self.likelihood == "regression"
        acc = _core.Accumulator(
            weight,
            bias,
            structure=_STRUCTURES[self.hessian_structure],
            likelihood=self.likelihood,
            bias_in_posterior=layer.has_bias,
            dtype=_dtype_name(layer.dtype),
            device=self.device,
            sigma_noise=self.sigma_noise,
        )
        log_likelihood, squares, targets = 0.0, 0.0, 0
        for x, y in _progress(_batches(train_loader), progress_bar, "[laplace_update fit]"):
            phi, logits = layer.collect(x)
            acc.accumulate(_host(phi), _labels(y, regression))
            if regression:
                r = y.to(logits.device, torch.float64).reshape(logits.shape) - logits.double()
                squares += float((r * r).sum())
                targets += r.numel()
            else:
                log_likelihood -= float(
                    nn.functional.cross_entropy(
                        logits.double(), y.to(logits.device).long(), reduction="sum"
                    )
                )
        if acc.count == 0:
            raise ValueError("the train loader gave no batches")
        post = acc.finish(prior_precision=self._initial_prior[0])
        if len(self._initial_prior) > 1:
            post.set_prior_precision(self._initial_prior)
        self._posterior = post
        self.n_data = acc.count
        self._log_likelihood = None if regression else log_likelihood
        self._residuals = (squares, targets) if regression else None

    def _prior_values(self, prior_precision: Union[float, Iterable[float], torch.Tensor]) -> List[float]:
        values = (
            [float(v) for v in torch.as_tensor(prior_precision).reshape(-1)]
            if isinstance(prior_precision, torch.Tensor) or not np.isscalar(prior_precision)
            else [float(prior_precision)]  # type: ignore[arg-type]
        )
        k = self.last_layer.classes
        if len(values) not in (1, k):
            raise NotImplementedError(
                f"{len(values)} prior precisions; one, or one per class (K = {k}), are supported "
                "(not laplace-torch's layer-wise or per-parameter priors)"
            )
        return values

    @property
    def posterior(self) -> _core.Posterior:
        """The library's posterior (the numpy API), once fitted.

        >>> la.posterior.structure
        'full'
        """
        if self._posterior is None:
            raise RuntimeError("the Laplace approximation is not fitted yet; call fit() first")
        return self._posterior

    # -- the prior ----------------------------------------------------------------------------

    @property
    def prior_precision(self) -> torch.Tensor:
        """τ: one value, or one per class.

        >>> la.prior_precision = 3.0
        >>> la.prior_precision
        tensor([3.])
        """
        values = self._posterior.prior_precision if self._posterior is not None else self._initial_prior
        return torch.tensor(values, dtype=self.last_layer.dtype)

    @prior_precision.setter
    def prior_precision(self, value: Union[float, Iterable[float], torch.Tensor]) -> None:
        values = self._prior_values(value)
        if self._posterior is None:
            self._initial_prior = values
        else:
            self._posterior.set_prior_precision(values)

    def optimize_prior_precision(
        self,
        pred_type: str = "glm",
        method: str = "marglik",
        n_steps: int = 100,
        lr: float = 1e-1,
        init_prior_prec: float = 1.0,
        prior_structure: str = "scalar",
        val_loader: Optional[Iterable[Any]] = None,
        loss: Optional[str] = None,
        log_prior_prec_min: float = -4,
        log_prior_prec_max: float = 4,
        grid_size: int = 100,
        link_approx: str = "probit",
        n_samples: int = 100,
        verbose: bool = False,
        progress_bar: bool = False,
    ) -> None:
        """Chooses τ. ``method="marglik"`` maximises the evidence
        ``log p(y | τ) ≈ Σ_n log p(y_n | ŵ) − ½ τ ‖ŵ‖² + ½ P log τ − ½ log det Π`` exactly (the
        root of its derivative; ``n_steps``, ``lr`` and ``init_prior_prec`` of laplace-torch's
        Adam are not needed). ``prior_structure``: ``"scalar"`` or ``"per_class"`` (Full, Diag).

        ``method="gridsearch"`` scores ``grid_size`` values of τ from ``10**log_prior_prec_min``
        to ``10**log_prior_prec_max`` by the validation NLL (``loss``: ``"nll"``, ``"brier"`` or
        ``"ece"``) of the predictive under ``link_approx`` and keeps the best, as laplace-torch
        does, then refines between grid points (``Posterior.tune_prior_precision`` also scores
        past the grid, and with a temperature picks the largest τ within one standard error of
        the best).

        >>> la.optimize_prior_precision(method="marglik")
        >>> la.optimize_prior_precision(method="gridsearch", val_loader=val_loader, grid_size=21)
        >>> bool(la.prior_precision > 0)
        True
        """
        post = self.posterior
        if pred_type not in ("glm", "nn"):
            raise ValueError(f"pred_type={pred_type!r}; 'glm' or 'nn'")
        if method == "marglik":
            if prior_structure not in ("scalar", "per_class"):
                raise NotImplementedError(
                    f"prior_structure={prior_structure!r}; 'scalar' or 'per_class' are supported"
                )
            post.optimize_prior_precision(per_class=prior_structure == "per_class")
        elif method == "gridsearch":
            if val_loader is None:
                raise ValueError("gridsearch requires a validation set DataLoader")
            if prior_structure not in ("scalar", "per_class"):
                raise NotImplementedError(
                    f"prior_structure={prior_structure!r}; 'scalar' or 'per_class' are supported"
                )
            if loss is not None and loss not in ("nll", "brier", "ece"):
                raise NotImplementedError(f"loss={loss!r}; 'nll', 'brier' or 'ece' are supported")
            phi, y = self._collect_all(val_loader)
            post.tune_prior_precision(
                phi,
                y,
                metric=loss or "nll",
                link=self._link(link_approx, pred_type),
                grid_min=10.0**log_prior_prec_min,
                grid_max=10.0**log_prior_prec_max,
                grid_points=grid_size,
                extend_grid=False,
                selection="best",
                per_class=prior_structure == "per_class",
            )
        else:
            raise ValueError(f"method={method!r}; 'marglik' or 'gridsearch'")
        if verbose:
            print(f"Optimized prior precision is {self.prior_precision}.")

    def _collect_all(self, loader: Iterable[Any]) -> Tuple[np.ndarray, np.ndarray]:
        regression = self.likelihood == "regression"
        phis, ys = [], []
        for x, y in _batches(loader):
            phis.append(_host(self.last_layer.collect(x)[0]))
            ys.append(_labels(y, regression))
        if not phis:
            raise ValueError("the validation loader gave no batches")
        return np.concatenate(phis), np.concatenate(ys)

    def _link(self, link_approx: str, pred_type: str = "glm") -> str:
        if pred_type == "nn":
            if link_approx != "mc":
                raise ValueError("Only mc link approximation is supported for nn prediction type.")
            return "mc"
        if link_approx == "bridge":
            raise NotImplementedError(
                "link_approx='bridge' (the unnormalised Laplace bridge); use 'bridge_norm'"
            )
        if link_approx not in _LINKS:
            raise ValueError(f"Unsupported link approximation {link_approx}.")
        return _LINKS[link_approx]

    # -- the evidence -------------------------------------------------------------------------

    def log_marginal_likelihood(
        self,
        prior_precision: Optional[Union[float, Iterable[float], torch.Tensor]] = None,
        sigma_noise: Optional[float] = None,
    ) -> torch.Tensor:
        """``log p(y | τ, σ) ≈ Σ_n log p(y_n | ŵ) − ½ τ ‖ŵ‖² + ½ P log τ − ½ log det Π`` of the
        fitted data. As in laplace-torch, a ``prior_precision`` or ``sigma_noise`` given here
        replaces the stored one (the curvature is kept).

        >>> bool(la.log_marginal_likelihood(prior_precision=2.0) < 0)
        True
        """
        post = self.posterior
        if prior_precision is not None:
            self.prior_precision = prior_precision
        if sigma_noise is not None:
            post.set_sigma_noise(float(sigma_noise))
            self.sigma_noise = float(sigma_noise)
        if self._residuals is not None:
            squares, count = self._residuals
            s2 = self.sigma_noise**2
            log_likelihood = -0.5 * squares / s2 - 0.5 * count * math.log(2 * math.pi * s2)
        elif self._log_likelihood is not None:
            log_likelihood = self._log_likelihood
        else:
            raise RuntimeError(
                "the evidence needs the log-likelihood of all the data at the updated mean; "
                "after update() or unlearn() call fit() on the whole data again"
            )
        return torch.tensor(log_likelihood + post.log_occam_factor(), dtype=torch.float64)

    # -- predictions --------------------------------------------------------------------------

    def _seed(self, generator: Optional[torch.Generator]) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=generator).item())

    def _augmented(self, phi: np.ndarray) -> np.ndarray:
        """``[φ, 1]`` when the bias is in the posterior, else φ: the rows the head's columns read."""
        if not self.last_layer.has_bias:
            return phi
        return np.hstack([phi, np.ones((phi.shape[0], 1), phi.dtype)])

    def _mean_logits(self, phi: np.ndarray) -> np.ndarray:
        w, b = self.posterior.mean()
        return phi @ w.T + (b if self.last_layer.has_bias else 0.0)

    def __call__(
        self,
        x: torch.Tensor,
        pred_type: str = "glm",
        joint: bool = False,
        link_approx: str = "probit",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """The predictive at ``x``: class probabilities ``E[softmax(f)]``, ``f ~ N(f_μ, Σ_f)``
        with ``Σ_f = J Σ Jᵀ``, under ``link_approx`` (probit: ``softmax(f_μ / √(1 + π/8
        diag Σ_f))``; mc: ``n_samples`` draws; bridge_norm: the normalised Laplace bridge); for
        regression ``(f_μ, Σ_f)``, Σ_f as N × K × K or, with ``diagonal_output``, N × K.

        >>> probs = la(x_test, link_approx="probit")
        >>> probs.shape, bool(torch.allclose(probs.sum(1), torch.ones(10)))
        (torch.Size([10, 3]), True)
        """
        post = self.posterior
        phi, logits = self.last_layer.collect(x)
        out_dtype, out_device = logits.dtype, logits.device
        if self.likelihood == "regression":
            if joint:
                raise NotImplementedError("joint=True (the covariance across inputs)")
            f_mu, f_var = self._functional(_host(phi))
            var = np.diagonal(f_var, axis1=1, axis2=2) if diagonal_output else f_var
            return (
                torch.as_tensor(f_mu).to(out_device, out_dtype),
                torch.as_tensor(np.ascontiguousarray(var)).to(out_device, out_dtype),
            )
        link = self._link(link_approx, pred_type)
        probs, _ = post.predict(_host(phi), link=link, samples=n_samples, seed=self._seed(generator))
        return torch.as_tensor(probs).to(out_device, out_dtype)

    def predictive(self, x: torch.Tensor, **kwargs: Any) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """``self(x, ...)``.

        >>> la.predictive(x_test).shape
        torch.Size([10, 3])
        """
        return self(x, **kwargs)

    def functional_variance(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_f = J Σ Jᵀ`` at ``x``, N × K × K, with ``J = I_K ⊗ [φᵀ, 1]`` the last layer's
        Jacobian (in the model's dtype, on x's device).

        >>> la.functional_variance(x_test).shape
        torch.Size([10, 3, 3])
        """
        phi, logits = self.last_layer.collect(x)
        _, f_var = self._functional(_host(phi))
        return torch.as_tensor(f_var).to(logits.device, logits.dtype)

    def _functional(self, phi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """``(f_μ, Σ_f)`` from the library: Full's K × K blocks as computed; Kron's from its
        eigenbases, ``Σ_f = U_A diag_i(Σ_j s_ij (U_Gᵀ φ)_j²) U_Aᵀ`` with ``s_ij = 1/(a_i g_j/N + τ)``;
        Diag's and Shared's are diagonal."""
        post = self.posterior
        f_mu = self._mean_logits(phi)
        factors = post.kron_factors()
        if factors is not None:
            _, _, u_a, u_g, _ = factors
            s = post.covariance()  # K × D_aug: s_ij, A's eigenvalue i with G's j
            m = ((self._augmented(phi) @ u_g) ** 2) @ s.T  # N × K
            return f_mu, np.einsum("ki,ni,li->nkl", u_a, m, u_a)
        _, var = post.predict(phi, link="none")
        if var.ndim == 3:
            return f_mu, var
        k = var.shape[1]
        out = np.zeros((var.shape[0], k, k), var.dtype)
        out[:, np.arange(k), np.arange(k)] = var
        return f_mu, out

    def predictive_samples(
        self,
        x: torch.Tensor,
        pred_type: str = "glm",
        n_samples: int = 100,
        diagonal_output: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """``n_samples`` draws of the predictive at ``x`` (n_samples × N × K): softmax of
        ``φ w_sᵀ`` with heads ``w_s ~ N(ŵ, Σ)`` (for a last layer the GLM and the network
        predictive coincide), or ``f`` itself for regression.

        >>> la.predictive_samples(x_test, n_samples=50).shape
        torch.Size([50, 10, 3])
        """
        if diagonal_output:
            raise NotImplementedError("diagonal_output=True; draws use the full Σ_f")
        if pred_type not in ("glm", "nn"):
            raise ValueError("Only glm and nn supported as prediction types.")
        phi, logits = self.last_layer.collect(x)
        heads = self.posterior.sample_heads(n_samples, seed=self._seed(generator))
        f = torch.as_tensor(np.einsum("nd,skd->snk", self._augmented(_host(phi)), heads))
        draws = f if self.likelihood == "regression" else torch.softmax(f, dim=-1)
        return draws.to(logits.device, logits.dtype)

    # -- the posterior, as laplace-torch shows it ---------------------------------------------

    @property
    def n_params(self) -> int:
        """P = K·D (+ K with a bias).

        >>> la.n_params  # 3 × 16 weights and 3 biases
        51
        """
        k, d = self.last_layer.classes, self.last_layer.features
        return k * d + (k if self.last_layer.has_bias else 0)

    def _order(self) -> np.ndarray:
        """laplace-torch's parameter order (W row-major, then b) as indices into the library's
        ``(k, d) ↦ k·D_aug + d`` layout."""
        k, d = self.last_layer.classes, self.last_layer.features
        da = d + 1 if self.last_layer.has_bias else d
        weights = (np.arange(k)[:, None] * da + np.arange(d)[None, :]).reshape(-1)
        return np.concatenate([weights, np.arange(k) * da + d]) if self.last_layer.has_bias else weights

    @property
    def mean(self) -> torch.Tensor:
        """ŵ in laplace-torch's order: W row-major, then b.

        >>> bool(torch.equal(la.mean[:48].reshape(3, 16), la.model[2].weight.detach()))
        True
        """
        w, b = self.posterior.mean()
        parts = [w.reshape(-1)] + ([b] if self.last_layer.has_bias else [])
        return torch.as_tensor(np.concatenate(parts)).to(self.last_layer.dtype)

    def _dense(self, which: str) -> np.ndarray:
        """Σ or Π as a dense P × P matrix (Diag: its P diagonal values) in laplace-torch's order."""
        post = self.posterior
        stored = post.covariance() if which == "covariance" else post.precision()
        order = self._order()
        structure = post.structure
        if structure == "full":
            return stored[np.ix_(order, order)]
        if structure == "diag":
            return stored.reshape(-1)[order]
        k = self.last_layer.classes
        if len(order) > _DENSE_LIMIT:
            raise NotImplementedError(
                f"a dense {len(order)} × {len(order)} matrix of the {structure} structure (more "
                f"than {_DENSE_LIMIT} parameters); read its factors from la.posterior instead"
            )
        if structure == "kron":
            factors = post.kron_factors()
            assert factors is not None
            _, _, u_a, u_g, _ = factors
            basis = np.kron(u_a, u_g)
            return (basis @ np.diag(stored.reshape(-1)) @ basis.T)[np.ix_(order, order)]
        return np.kron(np.eye(k), stored)[np.ix_(order, order)]

    @property
    def posterior_precision(self) -> torch.Tensor:
        """Π (P × P; Diag: the P diagonal values) in laplace-torch's parameter order.

        >>> la.posterior_precision.shape
        torch.Size([51, 51])
        """
        return torch.as_tensor(self._dense("precision"))

    @property
    def posterior_covariance(self) -> torch.Tensor:
        """Σ = Π⁻¹ (P × P; Diag: the P variances) in laplace-torch's parameter order.

        >>> product = la.posterior_covariance.double() @ la.posterior_precision.double()
        >>> bool(torch.allclose(product, torch.eye(51, dtype=torch.float64), atol=1e-3))
        True
        """
        return torch.as_tensor(self._dense("covariance"))

    @property
    def posterior_variance(self) -> torch.Tensor:
        """diag Σ, the P marginal variances, in laplace-torch's parameter order.

        >>> la.posterior_variance.shape
        torch.Size([51])
        """
        cov = self._dense("covariance")
        return torch.as_tensor(cov if cov.ndim == 1 else np.diagonal(cov).copy())

    # -- what laplace-torch lacks -------------------------------------------------------------

    def update(
        self,
        x: Union[torch.Tensor, Iterable[Any]],
        y: Optional[torch.Tensor] = None,
        rule: str = "joint",
        gamma: Optional[float] = None,
        iterations: Optional[int] = None,
        forgetting: float = 1.0,
        step: Optional[str] = None,
        write_back: bool = True,
    ) -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """Folds new labelled data into the posterior: by default damped Newton steps to the mode
        of ``Σ_j log p(y_j | w) − ½ (w − ŵ)ᵀ Π (w − ŵ)`` with ``Π' = Π + Σ_j H_j`` at the new
        mean (``rule``, ``gamma``, ``iterations``, ``forgetting``, ``step`` as in
        ``Posterior.update``). ``x`` is a batch with labels ``y``, or a loader of (x, y) batches.
        With ``write_back`` the model's last layer then holds the new mean. Returns the update's
        report (a list of them for a loader).

        >>> report = la.update(x_test[:5], torch.tensor([0, 1, 2, 0, 1]))
        >>> report["steps"] >= 1
        True
        >>> reports = la.update(val_loader, rule="sequential")  # a loader: one report per batch
        """

        def one(xb: torch.Tensor, yb: torch.Tensor) -> Dict[str, Any]:
            phi, _ = self.last_layer.collect(xb)
            report = self.posterior.update(
                _host(phi),
                _labels(yb, self.likelihood == "regression"),
                rule=rule,
                step=step,
                gamma=gamma,
                iterations=iterations,
                forgetting=forgetting,
            )
            self.n_data += int(phi.shape[0])
            return report

        reports = [one(x, y)] if y is not None else [one(xb, yb) for xb, yb in _batches(x)]  # type: ignore[arg-type]
        self._log_likelihood, self._residuals = None, None
        if write_back:
            self.write_back()
        return reports[0] if y is not None else reports

    def unlearn(self, x: torch.Tensor, y: torch.Tensor, write_back: bool = True) -> None:
        """Removes samples an update folded in (the exact inverse of that update), and with
        ``write_back`` writes the mean back into the model's last layer.

        >>> y_new = torch.tensor([0, 1, 2, 0, 1])
        >>> _ = la.update(x_test[:5], y_new)
        >>> la.unlearn(x_test[:5], y_new)  # back to the fitted posterior
        """
        phi, _ = self.last_layer.collect(x)
        self.posterior.unlearn(_host(phi), _labels(y, self.likelihood == "regression"))
        self.n_data -= int(phi.shape[0])
        self._log_likelihood, self._residuals = None, None
        if write_back:
            self.write_back()

    def write_back(self) -> None:
        """Copies the posterior mean into the model's last layer.

        >>> la.write_back()
        """
        w, b = self.posterior.mean()
        self.last_layer.write(w, b)

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The posterior (the library's file bytes) and the fit's settings and evidence terms.

        >>> sorted(la.state_dict())[:3]
        ['hessian_structure', 'last_layer_name', 'likelihood']
        """
        return {
            "posterior": self.posterior.to_bytes(),
            "likelihood": self.likelihood,
            "hessian_structure": self.hessian_structure,
            "last_layer_name": self.last_layer.name,
            "sigma_noise": self.sigma_noise,
            "n_data": self.n_data,
            "log_likelihood": self._log_likelihood,
            "residuals": self._residuals,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores ``state_dict()``'s posterior and writes its mean into the model's last layer;
        the likelihood, structure and layer must match this object's.

        >>> state = la.state_dict()
        >>> la.load_state_dict(state)
        """
        for key, mine in (
            ("likelihood", self.likelihood),
            ("hessian_structure", self.hessian_structure),
            ("last_layer_name", self.last_layer.name),
        ):
            if state_dict[key] != mine:
                raise ValueError(f"the state's {key} is {state_dict[key]!r}, this one's {mine!r}")
        post = _core.Posterior.from_bytes(state_dict["posterior"], device=self.device)
        if (post.classes, post.features) != (self.last_layer.classes, self.last_layer.features):
            raise ValueError(
                f"the state's head is {post.classes} × {post.features}, the layer's "
                f"{self.last_layer.classes} × {self.last_layer.features}"
            )
        self._posterior = post
        self.sigma_noise = float(state_dict["sigma_noise"])
        self.n_data = int(state_dict["n_data"])
        self._log_likelihood = state_dict["log_likelihood"]
        self._residuals = state_dict["residuals"]
        self.write_back()
