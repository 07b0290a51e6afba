"""laplace_update.torch against laplace-torch (the peer it mirrors) and the numpy API."""

import copy
import os
import pickle
import warnings

import numpy as np
import pytest

if "torch" in os.environ.get("LAPLACE_REQUIRE", ""):
    import laplace  # noqa: F401  (CI requires the peer: no silent skip)
    import torch
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("laplace")

from laplace import Laplace as PeerLaplace  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import laplace_update as lu  # noqa: E402
from laplace_update.torch import Laplace, LastLayer  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)

# Relative to the quantity's scale. In f64 laplace-torch's own GGN is off by about 1e-8 from a
# dense f64 reference, where the library's is within 1e-14 (test_full_matches_dense_f64).
TOL = {torch.float64: 5e-8, torch.float32: 1e-5}


def trained(dtype, bias=True, seed=0, outputs=3, regression=False):
    """A small MLP trained on a synthetic 3-class (or regression) problem, and its data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 6, generator=g, dtype=dtype)
    w0 = torch.randn(6, outputs, generator=g, dtype=dtype)
    y = x @ w0 + 0.1 * torch.randn(300, outputs, generator=g, dtype=dtype) if regression else (x @ w0).argmax(1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, outputs, bias=bias)
    ).to(dtype)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    loss = torch.nn.functional.mse_loss if regression else torch.nn.functional.cross_entropy
    for _ in range(200):
        opt.zero_grad()
        loss(model(x), y).backward()
        opt.step()
    return model, x, y


def loader(x, y, batch=64):
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def both(model, x, y, structure, tau=2.0, likelihood="classification"):
    peer = PeerLaplace(model, likelihood, subset_of_weights="last_layer", hessian_structure=structure, prior_precision=tau)
    peer.fit(loader(x, y))
    ours = Laplace(model, likelihood, hessian_structure=structure, prior_precision=tau)
    ours.fit(loader(x, y))
    return peer, ours


def peer_fvar(peer, x):
    return peer.functional_variance(peer.backend.last_layer_jacobians(x)[0])


def close(a, b, dtype, what):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max()) / scale
    assert err < TOL[dtype], f"{what}: relative difference {err:.2e}"


# Kron: laplace-torch keeps the bias as its own Kronecker block, so it matches only without a bias
# (the relation with a bias is tested below).
CASES = [("full", True), ("diag", True), ("kron", False)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("structure,bias", CASES)
def test_matches_laplace_torch(dtype, structure, bias):
    model, x, y = trained(dtype, bias=bias)
    peer, ours = both(model, x, y, structure)
    xt = torch.randn(40, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for link in ("probit", "bridge_norm"):
        close(peer(xt, link_approx=link), ours(xt, link_approx=link), dtype, f"{structure} {link}")
    close(peer_fvar(peer, xt), ours.functional_variance(xt), dtype, f"{structure} Σ_f")
    close(peer.log_marginal_likelihood(), ours.log_marginal_likelihood(), dtype, "log marginal likelihood")
    close(
        peer.log_marginal_likelihood(prior_precision=torch.tensor(7.0, dtype=dtype)),
        ours.log_marginal_likelihood(prior_precision=7.0),
        dtype,
        "log marginal likelihood at another τ",
    )
    close(peer.mean, ours.mean, dtype, "mean")
    assert ours.n_params == peer.n_params
    if structure != "kron":
        close(peer.posterior_precision, ours.posterior_precision, dtype, "posterior precision")
    # Monte Carlo: the same distribution, different draws.
    gen = torch.Generator().manual_seed(3)
    mc_peer = peer(xt, link_approx="mc", n_samples=20000)
    mc_ours = ours(xt, link_approx="mc", n_samples=20000, generator=gen)
    assert float((mc_peer - mc_ours).abs().max()) < 0.02
    assert mc_ours.dtype == dtype and torch.allclose(mc_ours.sum(1), torch.ones(40, dtype=dtype))


def test_full_matches_dense_f64():
    """The f64 reference both libraries are measured against: Π = Σ_n Λ_n ⊗ a_n a_nᵀ + τI."""
    model, x, y = trained(torch.float64)
    peer, ours = both(model, x, y, "full")
    phi, logits = LastLayer(model).collect(x)
    p = torch.softmax(logits, 1).numpy()
    a = np.hstack([phi.numpy(), np.ones((len(x), 1))])
    lam = np.einsum("nk,kl->nkl", p, np.eye(3)) - np.einsum("nk,nl->nkl", p, p)
    pi = np.einsum("nkl,nd,ne->kdle", lam, a, a).reshape(51, 51) + 2.0 * np.eye(51)
    order = ours._order()
    dense = pi[np.ix_(order, order)]
    ours_err = np.abs(ours.posterior_precision.numpy() - dense).max() / np.abs(dense).max()
    peer_err = np.abs(peer.posterior_precision.numpy() - dense).max() / np.abs(dense).max()
    assert ours_err < 1e-13, ours_err
    assert peer_err < 5e-8, peer_err
    cov = np.linalg.inv(dense)
    assert np.abs(ours.posterior_covariance.numpy() - cov).max() / np.abs(cov).max() < 1e-13


def test_kron_with_a_bias_keeps_the_weight_bias_coupling_laplace_torch_drops():
    """Documented relation: laplace-torch's Kron is block-diagonal, [A ⊗ G_φφ/N, 0; 0, A];
    the library's is the KFAC of the augmented input, A ⊗ [φ, 1][φ, 1]ᵀ/N, whose diagonal
    blocks are laplace-torch's."""
    dtype = torch.float64
    model, x, y = trained(dtype)
    peer, ours = both(model, x, y, "kron")
    theirs = peer.posterior_precision.to_matrix().numpy()
    mine = ours.posterior_precision.numpy()
    w = 3 * 16
    close(theirs[:w, :w], mine[:w, :w], dtype, "weight block")
    close(theirs[w:, w:], mine[w:, w:], dtype, "bias block")
    assert np.abs(theirs[:w, w:]).max() == 0.0
    # The coupling: A ⊗ mean(φ), from the library's factors.
    a, g, _, _, n = ours.posterior.kron_factors()
    phi, _ = LastLayer(model).collect(x)
    mean_phi = phi.numpy().mean(0)
    close(np.kron(a, mean_phi[:, None]), mine[:w, w:], dtype, "weight–bias coupling")


def test_marglik_is_at_least_laplace_torchs_adam():
    dtype = torch.float64
    model, x, y = trained(dtype)
    peer, ours = both(model, x, y, "full", tau=1.0)
    peer.optimize_prior_precision(method="marglik", prior_structure="scalar", n_steps=300)
    ours.optimize_prior_precision(method="marglik")
    tau_peer, tau_ours = float(peer.prior_precision), float(ours.prior_precision[0])
    assert abs(tau_ours / tau_peer - 1) < 0.02, (tau_ours, tau_peer)
    # The root: the evidence is lower a little to either side, and at the peer's τ.
    at = float(ours.log_marginal_likelihood())
    for tau in (0.97 * tau_ours, 1.03 * tau_ours, tau_peer):
        assert float(ours.log_marginal_likelihood(prior_precision=tau)) <= at
        ours.prior_precision = tau_ours


def test_gridsearch_is_no_worse_than_laplace_torchs_grid():
    dtype = torch.float64
    model, x, y = trained(dtype)
    xv, yv = x[200:], y[200:]
    peer, ours = both(model, x[:200], y[:200], "full")
    peer.optimize_prior_precision(method="gridsearch", val_loader=loader(xv, yv), grid_size=40)
    ours.optimize_prior_precision(method="gridsearch", val_loader=loader(xv, yv), grid_size=40)

    def nll(tau):
        peer.prior_precision = tau
        p = peer(xv, link_approx="probit")
        return float(-torch.log(p[torch.arange(len(yv)), yv]).mean())

    assert nll(float(ours.prior_precision[0])) <= nll(float(peer.prior_precision)) + 1e-9


def test_streamed_updates_match_the_numpy_api_and_move_the_model():
    dtype = torch.float64
    model, x, y = trained(dtype)
    reference_model = copy.deepcopy(model)
    ours = Laplace(model, "classification", hessian_structure="full", prior_precision=2.0)
    ours.fit(loader(x[:150], y[:150]))
    reports = ours.update(loader(x[150:], y[150:], batch=50))
    assert isinstance(reports, list) and len(reports) == 3

    head = LastLayer(reference_model)
    w, b = head.weight()
    phi = head.collect(x)[0].numpy()
    post = lu.Posterior.fit(phi[:150], y[:150].numpy(), w, b, structure="full", prior_precision=2.0)
    for start in (150, 200, 250):
        post.update(phi[start : start + 50], y[start : start + 50].numpy())
    w_ref, b_ref = post.mean()
    close(w_ref, model[2].weight.detach(), dtype, "written-back weight")
    close(b_ref, model[2].bias.detach(), dtype, "written-back bias")
    close(post.covariance(), ours.posterior.covariance(), dtype, "covariance")
    # model(x) follows the update: its logits are the posterior mean's.
    logits = torch.as_tensor(phi @ w_ref.T + b_ref)
    close(logits, model(x).detach(), dtype, "model(x)")
    # The evidence needs the data at the new mean, which the streamed object no longer has.
    with pytest.raises(RuntimeError, match="fit"):
        ours.log_marginal_likelihood()


def test_unlearn_restores_the_fitted_posterior():
    dtype = torch.float64
    model, x, y = trained(dtype)
    ours = Laplace(model, "classification", hessian_structure="diag")
    ours.fit(loader(x[:200], y[:200]))
    before_mean, before_cov = ours.mean.clone(), ours.posterior_covariance.clone()
    ours.update(x[200:220], y[200:220])
    assert float((ours.mean - before_mean).abs().max()) > 1e-6
    ours.unlearn(x[200:220], y[200:220])
    close(before_mean, ours.mean, dtype, "mean after unlearn")
    close(before_cov, ours.posterior_covariance, dtype, "covariance after unlearn")
    close(before_mean[:48].reshape(3, 16), model[2].weight.detach(), dtype, "model after unlearn")


def test_state_dict_and_pickle_round_trip():
    dtype = torch.float32
    model, x, y = trained(dtype)
    ours = Laplace(model, "classification", hessian_structure="kron")
    ours.fit(loader(x, y))
    ours.optimize_prior_precision()
    state = ours.state_dict()
    fresh_model = copy.deepcopy(model)
    with torch.no_grad():
        fresh_model[2].weight.zero_()
    fresh = Laplace(fresh_model, "classification", hessian_structure="kron")
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x[:10]), ours(x[:10]))
    assert torch.equal(fresh_model[2].weight, model[2].weight)
    clone = pickle.loads(pickle.dumps(ours))
    assert torch.equal(clone(x[:10]), ours(x[:10]))
    assert float(clone.log_marginal_likelihood()) == float(ours.log_marginal_likelihood())
    with pytest.raises(ValueError, match="hessian_structure"):
        Laplace(copy.deepcopy(model), "classification", hessian_structure="full").load_state_dict(state)


def test_regression_matches_laplace_torch():
    dtype = torch.float64
    model, x, y = trained(dtype, outputs=2, regression=True)
    peer = PeerLaplace(model, "regression", subset_of_weights="last_layer", hessian_structure="full", sigma_noise=0.5, prior_precision=3.0)
    peer.fit(loader(x, y))
    ours = Laplace(model, "regression", hessian_structure="full", sigma_noise=0.5, prior_precision=3.0)
    ours.fit(loader(x, y))
    xt = x[:25]
    (mu_p, var_p), (mu_o, var_o) = peer(xt), ours(xt)
    close(mu_p, mu_o, dtype, "f_mu")
    close(var_p, var_o, dtype, "f_var")
    close(peer.log_marginal_likelihood(), ours.log_marginal_likelihood(), dtype, "evidence")
    close(
        peer.log_marginal_likelihood(sigma_noise=torch.tensor(0.3, dtype=dtype)),
        ours.log_marginal_likelihood(sigma_noise=0.3),
        dtype,
        "evidence at another σ",
    )
    # τ by marginal likelihood at the fixed σ: the exact root, against the peer's Adam.
    peer.optimize_prior_precision(method="marglik", prior_structure="scalar", n_steps=300)
    ours.optimize_prior_precision(method="marglik")
    assert abs(float(ours.prior_precision[0]) / float(peer.prior_precision) - 1) < 0.02


def test_predictive_samples_follow_the_posterior():
    dtype = torch.float64
    model, x, y = trained(dtype)
    ours = Laplace(model, "classification", hessian_structure="full", prior_precision=0.5)
    ours.fit(loader(x, y))
    draws = ours.predictive_samples(x[:5], n_samples=4000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4000, 5, 3)
    assert float((draws.mean(0) - ours(x[:5], link_approx="mc", n_samples=40000)).abs().max()) < 0.03


def test_what_cannot_be_honoured_is_refused():
    model, x, y = trained(torch.float64)
    for kwargs, what in [
        ({"subset_of_weights": "all"}, "last_layer"),
        ({"hessian_structure": "lowrank"}, "supported"),
        ({"temperature": 2.0}, "temperature"),
        ({"prior_mean": 1.0}, "prior_mean"),
        ({"prior_precision": torch.ones(51)}, "one per class"),
    ]:
        with pytest.raises(NotImplementedError, match=what):
            Laplace(model, "classification", **kwargs)
    ours = Laplace(model, "classification", hessian_structure="full")
    with pytest.raises(RuntimeError, match="fit"):
        ours(x[:2])
    ours.fit(loader(x, y))
    with pytest.raises(NotImplementedError, match="bridge_norm"):
        ours(x[:2], link_approx="bridge")
    with pytest.raises(NotImplementedError, match="prior_structure"):
        ours.optimize_prior_precision(prior_structure="layerwise")
    with pytest.raises(ValueError, match="override"):
        ours.fit(loader(x, y), override=False)



def test_a_dense_kron_matrix_too_large_is_refused(monkeypatch):
    import laplace_update.torch as module

    model, x, y = trained(torch.float64)
    ours = Laplace(model, "classification", hessian_structure="kron")
    ours.fit(loader(x, y))
    assert ours.posterior_covariance.shape == (51, 51)
    monkeypatch.setattr(module, "_DENSE_LIMIT", 50)
    with pytest.raises(NotImplementedError, match="51 × 51"):
        ours.posterior_precision


def test_last_layer_is_found_and_checked():
    model, x, _ = trained(torch.float64)
    head = LastLayer(model)
    assert head.name == "2" and (head.classes, head.features) == (3, 16)
    phi, logits = head.collect(x[:4])
    assert phi.shape == (4, 16) and torch.allclose(logits, model(x[:4]))
    assert model.training  # collect restores the mode it found
    softmaxed = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="end in that layer"):
        LastLayer(softmaxed).collect(x[:4])
    with pytest.raises(ValueError, match="not an nn.Linear"):
        LastLayer(model, "1")


def test_the_documented_examples_run():
    import doctest

    import laplace_update.torch as module

    model, x, y = trained(torch.float32)
    la = Laplace(model, "classification", hessian_structure="full")
    la.fit(loader(x[:200], y[:200]))
    extra = {
        "model": model,
        "la": la,
        "train_loader": loader(x[:200], y[:200]),
        "val_loader": loader(x[200:], y[200:]),
        "x_test": x[:10],
    }
    result = doctest.testmod(module, extraglobs=extra, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 50 and result.failed == 0, result


def test_cpu_tensors_are_read_in_place():
    from laplace_update.torch import _host

    t = torch.randn(8, 5, dtype=torch.float64)
    assert np.shares_memory(_host(t), t.numpy())
