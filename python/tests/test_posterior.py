"""Fit, both update rules, predict with every link, unlearn and the evidence, against the dense
numpy formulas of reference.py."""
import numpy as np
import pytest

import laplace_update as lu
from reference import (
    TAU,
    augmented,
    ggn_diag,
    ggn_full,
    gradient,
    log_likelihood,
    logit_covariance,
    logits,
    probit,
    problem,
    rel,
    softmax,
)


@pytest.mark.parametrize("bias_in", [False, True])
def test_full_fit_update_predict(bias_in):
    x, y, w, b = problem(1)
    post = lu.Posterior.fit(x[:30], y[:30], w, b, structure="full", prior_precision=TAU, bias_in_posterior=bias_in)
    k, da = w.shape[0], w.shape[1] + bias_in
    prec0 = TAU * np.eye(k * da) + ggn_full(x[:30], w, b, bias_in)
    assert rel(post.precision(), prec0) < 1e-12
    assert rel(post.covariance(), np.linalg.inv(prec0)) < 1e-10

    # Joint: Σ' = (Π + Σ_j H_j)⁻¹ at the old head, w' = ŵ + γ Σ' g.
    gamma = 0.8
    post.update(x[30:36], y[30:36], rule="joint", gamma=gamma)
    prec1 = prec0 + ggn_full(x[30:36], w, b, bias_in)
    cov1 = np.linalg.inv(prec1)
    _, wa = augmented(x, w, b, bias_in)
    w1 = wa.reshape(-1) + gamma * cov1 @ gradient(x[30:36], y[30:36], w, b, bias_in).reshape(-1)
    assert rel(post.covariance(), cov1) < 1e-10
    mean_w, mean_b = post.mean()
    got = np.hstack([mean_w, mean_b[:, None]]).reshape(-1) if bias_in else mean_w.reshape(-1)
    assert rel(got, w1) < 1e-10
    assert post.samples_seen == 36

    # Predictive at unseen inputs: J Σ Jᵀ and the probit link.
    w1m = w1.reshape(k, da)
    wn, bn = (w1m[:, :-1], w1m[:, -1]) if bias_in else (w1m, b)
    probs, var = post.predict(x[36:], link="probit")
    sf = logit_covariance(x[36:], cov1, k, bias_in)
    assert var.shape == (4, k, k)
    assert rel(var, sf) < 1e-10
    f = logits(x[36:], wn, bn)
    assert rel(probs, probit(f, np.einsum("nkk->nk", sf))) < 1e-10
    p_none, _ = post.predict(x[36:], link="none")
    assert rel(p_none, softmax(f)) < 1e-12


def test_every_link():
    x, y, w, b = problem(2)
    post = lu.Posterior.fit(x, y, w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    cov = np.linalg.inv(post.precision())
    k = w.shape[0]
    f = logits(x[:5], w, b)
    sf = logit_covariance(x[:5], cov, k, False)
    # Monte Carlo: against numpy's own draws, within the sampling error of 20,000 samples.
    p_mc, _ = post.predict(x[:5], link="mc", samples=20000, seed=3)
    rng = np.random.default_rng(0)
    want = np.array(
        [softmax(rng.multivariate_normal(f[i], sf[i], size=20000)).mean(axis=0) for i in range(5)]
    )
    assert np.max(np.abs(p_mc - want)) < 0.01
    # Laplace bridge (Hobbhahn et al. 2022), normalised as laplace-torch's bridge_norm.
    p_br, _ = post.predict(x[:5], link="bridge")
    for i in range(5):
        fi, si = f[i].copy(), sf[i].copy()
        s = si.sum(axis=1)
        tot = s.sum()
        fi = fi - s * fi.sum() / tot
        si = si - np.outer(s, s) / tot
        dd = np.diag(si)
        c = dd.mean() / np.sqrt(k / 2)
        fi, dd = fi / np.sqrt(c), dd / c
        alpha = (1 - 2 / k + np.exp(fi) * np.exp(-fi).sum() / k**2) / dd
        assert rel(p_br[i], alpha / alpha.sum()) < 1e-8
    with pytest.raises(lu.InvalidArgumentError):
        post.predict(x, link="nonsense")


def test_sequential_rule_is_sample_by_sample():
    x, y, w, b = problem(3)
    post = lu.Posterior.fit(x[:20], y[:20], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    seq = lu.Posterior.fit(x[:20], y[:20], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    seq.update(x[20:25], y[20:25], rule="sequential", gamma=1.0)
    # The same samples one at a time with the joint rule, each at the head the last one left.
    prec = post.precision()
    wv = w.reshape(-1)
    for j in range(20, 25):
        wm = wv.reshape(w.shape)
        prec = prec + ggn_full(x[j : j + 1], wm, b, False)
        wv = wv + np.linalg.solve(prec, gradient(x[j : j + 1], y[j : j + 1], wm, b, False).reshape(-1))
    assert rel(seq.covariance(), np.linalg.inv(prec)) < 1e-10
    assert rel(seq.mean()[0].reshape(-1), wv) < 1e-10


def test_shared_and_diag():
    x, y, w, b = problem(4)
    shared = lu.Posterior.fit(x, y, w, b, structure="shared", prior_precision=TAU, bias_in_posterior=False)
    assert rel(shared.precision(), TAU * np.eye(x.shape[1]) + x.T @ x) < 1e-12
    # One vocabulary: `shared-gaussian` is another spelling, and the name reads back as `shared`.
    other = lu.Posterior.fit(x, y, w, b, structure="shared-gaussian", prior_precision=TAU, bias_in_posterior=False)
    assert shared.structure == other.structure == "shared"
    assert np.array_equal(shared.precision(), other.precision())
    _, var = shared.predict(x[:3])
    v = np.einsum("nd,de,ne->n", x[:3], np.linalg.inv(TAU * np.eye(x.shape[1]) + x.T @ x), x[:3])
    assert var.shape == (3, 3) and rel(var, np.repeat(v[:, None], 3, axis=1)) < 1e-10
    diag = lu.Posterior.fit(x, y, w, b, structure="diag", prior_precision=TAU, bias_in_posterior=True)
    assert rel(diag.precision(), TAU + ggn_diag(x, w, b, True)) < 1e-12


def test_unlearn_inverts_update():
    x, y, w, b = problem(5)
    post = lu.Posterior.fit(x[:30], y[:30], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    cov0, (w0, _) = post.covariance(), post.mean()
    post.update(x[30:], y[30:], gamma=0.8)
    post.unlearn(x[30:], y[30:], gamma=0.8)
    assert rel(post.covariance(), cov0) < 1e-9
    assert rel(post.mean()[0], w0) < 1e-9


def test_evidence_and_prior_optimisation():
    x, y, w, b = problem(6)
    post = lu.Posterior.fit(x, y, w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    prec = post.precision()
    want = (
        log_likelihood(x, y, w, b)
        - 0.5 * TAU * np.sum(w**2)
        + 0.5 * w.size * np.log(TAU)
        - 0.5 * np.linalg.slogdet(prec)[1]
    )
    assert abs(post.log_marginal_likelihood(x, y) - want) < 1e-9 * abs(want)
    tau = post.optimize_prior_precision()
    assert len(tau) == 1 and post.prior_precision == tau

    def evidence(t):
        h = ggn_full(x, w, b, False)
        return -0.5 * t * np.sum(w**2) + 0.5 * w.size * np.log(t) - 0.5 * np.linalg.slogdet(t * np.eye(w.size) + h)[1]

    grid = np.exp(np.linspace(np.log(tau[0]) - 0.05, np.log(tau[0]) + 0.05, 11))
    assert int(np.argmax([evidence(t) for t in grid])) == 5


def test_regression_update_is_exact():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(30, 4))
    y = x @ rng.normal(size=(4, 2)) + 0.1 * rng.normal(size=(30, 2))
    sigma = 0.5
    post = lu.Posterior.fit(
        x[:1], y[:1], np.zeros((2, 4)), structure="full", likelihood="regression", sigma_noise=sigma, prior_precision=TAU,
        bias_in_posterior=False,
    )
    post.update(x[1:], y[1:], iterations=1)
    # One Newton step from the zero head is exact for a Gaussian likelihood: Σ = (τI + XᵀX/σ²)⁻¹
    # over all rows, and the mean Σ X₁ᵀy₁/σ² from the gradient of the update's rows (the fit
    # added row 0's curvature at the unchanged head).
    a = TAU * np.eye(4) + x.T @ x / sigma**2
    mean = np.linalg.solve(a, x[1:].T @ y[1:] / sigma**2).T
    assert rel(post.covariance(), np.kron(np.eye(2), np.linalg.inv(a))) < 1e-10
    assert rel(post.mean()[0], mean) < 1e-8


def test_float32_matches_float64():
    x, y, w, b = problem(8)
    p32 = lu.Posterior.fit(x.astype(np.float32), y, w, b, structure="full", dtype="float32", prior_precision=TAU, bias_in_posterior=False)
    p64 = lu.Posterior.fit(x, y, w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    assert p32.dtype == "float32" and p32.covariance().dtype == np.float32
    assert rel(p32.covariance(), p64.covariance()) < 1e-4


def test_select():
    x, y, w, b = problem(9, n=60)
    post = lu.Posterior.fit(x[:20], y[:20], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    picks = lu.select(post, x[20:], strategy="margin", batch=5)
    probs, _ = post.predict(x[20:])
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    assert sorted(picks) == sorted(np.argsort(margin)[:5].tolist())
    driven = lu.select(post, x[20:], strategy="margin", batch=5, update_driven=True, seed=1)
    # The first pick is the base strategy's; the updates inside leave the posterior unchanged.
    assert len(set(driven)) == 5 and driven[0] == int(np.argmin(margin))
    assert post.samples_seen == 20


@pytest.mark.parametrize("link", ["probit", "centred-probit"])
def test_tune_prior_precision_against_numpy(link):
    # The curve of validation NLL over τ, against Σ(τ) = (H + τI)⁻¹ refitted in numpy at each
    # grid point; the chosen τ is set, and predictions read the stored link.
    x, y, w, b = problem(5)
    post = lu.Posterior.fit(x[:30], y[:30], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    k, p = w.shape[0], w.size
    curvature = post.precision() - TAU * np.eye(p)
    start = lu.Posterior.fit(x[:30], y[:30], w, b, structure="full", prior_precision=TAU, bias_in_posterior=False)
    report = post.tune_prior_precision(x[30:], y[30:], link=link, grid_points=7, selection="best")
    # The grid and 6 decades past it.
    assert len(report["curve"]) == 13 and report["link"] == link
    assert [t for t, _ in report["curve"][7:]] == pytest.approx([1e4 * 10.0**j for j in range(1, 7)])
    f = logits(x[30:], w, b)
    centre = np.eye(k) - np.ones((k, k)) / k
    rows = []
    for tau, value in report["curve"]:
        sf = logit_covariance(x[30:], np.linalg.inv(curvature + tau * np.eye(p)), k, False)
        if link == "centred-probit":
            sf = centre @ sf @ centre
        probs = probit(f, np.einsum("nkk->nk", sf))
        rows.append(-np.log(probs[np.arange(len(y) - 30), y[30:]]))
        assert abs(value - rows[-1].mean()) < 1e-8 * max(1.0, rows[-1].mean())
    assert post.prior_precision == [report["prior_precision"]]
    assert report["score"] <= min(v for _, v in report["curve"]) + 1e-12
    # The default: the largest τ whose excess over the best, row by row, is within its
    # standard error.
    chosen = start.tune_prior_precision(x[30:], y[30:], link=link, grid_points=7, selection="one-se")["prior_precision"]
    best = int(np.argmin([r.mean() for r in rows]))
    within = [i for i, r in enumerate(rows)
              if (r - rows[best]).mean() <= (r - rows[best]).std(ddof=1) / np.sqrt(len(r))]
    assert chosen == report["curve"][max(within, key=lambda i: report["curve"][i][0])][0]
    assert post.link == link and post.temperature == 1.0
    probs, _ = post.predict(x[30:])
    same, _ = post.predict(x[30:], link=link)
    assert np.array_equal(probs, same)
    with pytest.raises(lu.InvalidArgumentError):
        post.tune_prior_precision(x[30:], y[30:], metric="accuracy")


def test_tune_temperature_and_link():
    x, y, w, b = problem(6)
    post = lu.Posterior.fit(x[:30], y[:30], w * 3, b, structure="kron", prior_precision=TAU)
    report = post.tune_prior_precision(x[30:], y[30:], temperature=True, choose_link=True, grid_points=9)
    assert post.temperature == report["temperature"] != 1.0
    assert [name for name, _ in report["links"]] == ["probit", "centred-probit", "mc", "bridge"]
    assert report["score"] <= min(s for _, s in report["links"])
    assert post.link == report["link"]
    hotter, _ = post.predict(x[30:], temperature=2 * report["temperature"])
    here, _ = post.predict(x[30:])
    assert not np.allclose(hotter, here)


def test_evaluate_against_numpy():
    x, y, w, b = problem(7)
    post = lu.Posterior.fit(x[:30], y[:30], w, b, structure="diag", prior_precision=TAU)
    out = lu.evaluate(post, x[30:], y[30:], link="centred-probit", temperature=1.3, bins=10)
    assert out == post.evaluate(x[30:], y[30:], link="centred-probit", temperature=1.3, bins=10)
    for name, probs in [
        ("laplace", post.predict(x[30:], link="centred-probit", temperature=1.3)[0]),
        ("network", softmax(logits(x[30:], w, b))),
    ]:
        got, labels = out[name], y[30:]
        top = probs.max(axis=1)
        hit = probs.argmax(axis=1) == labels
        onehot = np.eye(probs.shape[1])[labels]
        assert abs(got["accuracy"] - hit.mean()) < 1e-12
        assert abs(got["nll"] + np.mean(np.log(probs[np.arange(len(labels)), labels]))) < 1e-10
        assert abs(got["brier"] - np.mean(np.sum((probs - onehot) ** 2, axis=1))) < 1e-10
        assert abs(got["confidence"] - top.mean()) < 1e-12
        which = np.minimum((top * 10).astype(int), 9)
        for k, (count, correct, confidence) in enumerate(got["bins"]):
            assert count == np.sum(which == k) and correct == np.sum(hit[which == k])
            if count:
                assert abs(confidence - top[which == k].mean()) < 1e-12


def test_regression_noise_by_evidence_and_validation():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(60, 4))
    y = x @ rng.normal(size=(4, 2)) + 0.3 * rng.normal(size=(60, 2))
    post = lu.Posterior.fit(x[:40], y[:40], np.zeros((2, 4)), structure="full", likelihood="regression",
                            sigma_noise=1.0, prior_precision=TAU, bias_in_posterior=False)
    tau, sigma = post.optimize_prior_and_noise(x[:40], y[:40])
    assert post.prior_precision == [tau] and 0.05 < sigma < 3.0
    report = post.tune_prior_precision(x[40:], y[40:], grid_points=9)
    assert report["sigma_noise"] is not None and post.prior_precision == [report["prior_precision"]]


def test_tune_prior_precision_per_class_against_numpy():
    # Diag: class k's logit variance Σ_i φ_i²/(h_ki + τ_k); the set per-class τ scores what the
    # numpy predictive gives, and moving any one class's τ to a grid point does not beat it.
    x, y, w, b = problem(8)
    post = lu.Posterior.fit(x[:30], y[:30], w * 3, b, structure="diag", prior_precision=TAU)
    k, da = w.shape[0], w.shape[1] + 1
    h = post.precision().reshape(k, da) - TAU
    report = post.tune_prior_precision(x[30:], y[30:], link="probit", grid_points=9, per_class=True)
    taus = report["class_prior_precision"]
    assert len(taus) == k and post.prior_precision == pytest.approx(taus, rel=1e-6)
    f = logits(x[30:], w * 3, b)
    phi2 = np.hstack([x[30:], np.ones((len(x) - 30, 1))]) ** 2

    def nll(t):
        v = phi2 @ (1.0 / (h + np.asarray(t)[:, None])).T
        probs = probit(f, v)
        return -np.mean(np.log(probs[np.arange(len(y) - 30), y[30:]]))

    assert abs(report["score"] - nll(taus)) < 1e-6 * max(1.0, nll(taus))
    for c in range(k):
        for tau, _ in report["curve"]:
            moved = list(taus)
            moved[c] = tau
            assert nll(taus) <= nll(moved) + 1e-9
    with pytest.raises(lu.UnsupportedError):
        lu.Posterior.fit(x[:30], y[:30], w, b, structure="kron").tune_prior_precision(x[30:], y[30:], per_class=True)


def test_the_documented_examples_run(tmp_path):
    """Every example in the compiled module's docstrings, on one shared small problem."""
    import doctest

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = np.arange(200) % 3
    w, b = 0.1 * rng.normal(size=(3, 8)), np.zeros(3)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    attempted = 0
    for obj in (lu.Posterior, lu.Accumulator, lu.select, lu.devices, lu.evaluate, lu.set_max_memory):
        for test in finder.find(obj, obj.__name__, module=False):
            # A fresh posterior per docstring, so that no example depends on another's.
            test.globs = {
                "np": np, "lu": lu, "x": x, "y": y, "w": w, "b": b, "tmp": tmp_path,
                "x_new": x[150:170], "y_new": y[150:170], "x_val": x[170:], "y_val": y[170:],
                "post": lu.Posterior.fit(x[:150], y[:150], w, b),
            }
            runner.run(test)
            attempted += len(test.examples)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and attempted >= 60, (result, attempted)
