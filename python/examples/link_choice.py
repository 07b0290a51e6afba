"""Which link turns a last-layer Laplace posterior into the best probabilities?

The plain probit, the centred probit (the default), and Monte Carlo, each with τ by marginal
likelihood, then the two probits with τ chosen on validation data, and the default link with τ
and the temperature chosen there, against the network's own softmax (alone, and with a
temperature chosen on the validation data): test NLL, mean over 5 seeds, on scikit-learn's bundled data sets (two to ten classes),
with a one-hidden-layer MLP (64 ReLU) trained regularised (weight decay 1) and to saturation
(weight decay 10⁻⁵). Each split is 50% train, 20% validation, 30% test.

    pip install ./python scikit-learn
    python python/examples/link_choice.py
"""

import warnings

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

import laplace_update as lu

SEEDS = 5


def data_sets():
    x, y = load_breast_cancer(return_X_y=True)
    yield "breast cancer", x, y
    x, y = load_digits(return_X_y=True)
    yield "digits odd / even", x, y % 2
    yield "digits < 5 / ≥ 5", x, (y >= 5).astype(int)
    yield "digits", x, y
    x, y = load_wine(return_X_y=True)
    yield "wine", x, y


def nll(probs, y):
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def scores(x, y, alpha, iterations, seed):
    order = np.random.default_rng(seed).permutation(len(y))
    a, b = len(y) // 2, len(y) // 2 + len(y) // 5
    train, val, test = order[:a], order[a:b], order[b:]
    x = StandardScaler().fit(x[train]).transform(x)
    net = MLPClassifier((64,), alpha=alpha, max_iter=iterations, tol=1e-8, random_state=seed).fit(x[train], y[train])
    phi = np.maximum(x @ net.coefs_[0] + net.intercepts_[0], 0.0)
    w, b = net.coefs_[1].T, net.intercepts_[1]
    if w.shape[0] == 1:  # a binary MLP has one logit z: the softmax of (0, z) is its sigmoid
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
    logits = phi[test] @ w.T + b
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    out = {"network": nll(softmax / softmax.sum(1, keepdims=True), y[test])}
    scaled = lu.Posterior.fit(phi[train], y[train], w, b, structure="full")
    scaled.tune_prior_precision(phi[val], y[val], link="none", temperature=True)
    out["network + T"] = nll(scaled.predict(phi[test], link="none")[0], y[test])
    post = lu.Posterior.fit(phi[train], y[train], w, b, structure="full")
    post.optimize_prior_precision()
    for link in ["probit", "centred-probit", "mc"]:
        out[f"marglik, {link}"] = nll(post.predict(phi[test], link=link)[0], y[test])
    for link in ["probit", "centred-probit"]:
        tuned = lu.Posterior.fit(phi[train], y[train], w, b, structure="full")
        tuned.tune_prior_precision(phi[val], y[val], link=link)
        out[f"val τ, {link}"] = nll(tuned.predict(phi[test], link=link)[0], y[test])
    tuned = lu.Posterior.fit(phi[train], y[train], w, b, structure="full")
    tuned.tune_prior_precision(phi[val], y[val], temperature=True)
    out["val τ and T"] = nll(tuned.predict(phi[test])[0], y[test])
    return out


def main():
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    header = None
    for name, x, y in data_sets():
        for network, alpha, iterations in [("regularised", 1.0, 500), ("saturated", 1e-5, 3000)]:
            runs = [scores(x, y, alpha, iterations, seed) for seed in range(SEEDS)]
            columns = list(runs[0])
            if header is None:
                header = f"{'data (K classes)':<24} {'network':<12}" + "".join(f"{c:>24}" for c in columns)
                print(header)
            label = f"{name} (K={len(set(y))})"
            print(f"{label:<24} {network:<12}" + "".join(f"{np.mean([r[c] for r in runs]):>24.4f}" for c in columns))


if __name__ == "__main__":
    main()
