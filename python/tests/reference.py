"""Dense numpy references for the tests: the weight-space formulas, written out here."""
import numpy as np

TAU = 0.7


def problem(seed=0, n=40, d=5, k=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(k, d)) * 0.5
    b = rng.normal(size=k) * 0.1
    y = rng.integers(0, k, size=n)
    return x, y, w, b


def softmax(f):
    f = f - f.max(axis=-1, keepdims=True)
    e = np.exp(f)
    return e / e.sum(axis=-1, keepdims=True)


def augmented(x, w, b, bias_in):
    """Φ and W as the posterior sees them: the ones column and bias column when bias_in."""
    if not bias_in:
        return x, w
    return np.hstack([x, np.ones((len(x), 1))]), np.hstack([w, b[:, None]])


def logits(x, w, b):
    return x @ w.T + b


def ggn_full(x, w, b, bias_in):
    """Σ_n Λ_n ⊗ φ_n φ_nᵀ over w = vec_row(W)."""
    phi, wa = augmented(x, w, b, bias_in)
    p = softmax(logits(x, w, b))
    k, da = wa.shape
    h = np.zeros((k * da, k * da))
    for pn, fn in zip(p, phi):
        h += np.kron(np.diag(pn) - np.outer(pn, pn), np.outer(fn, fn))
    return h


def ggn_diag(x, w, b, bias_in):
    phi, _ = augmented(x, w, b, bias_in)
    p = softmax(logits(x, w, b))
    return (p * (1 - p)).T @ (phi**2)


def gradient(x, y, w, b, bias_in):
    """Σ_n (e_yn − p_n) ⊗ φ_n, K × D_aug."""
    phi, _ = augmented(x, w, b, bias_in)
    p = softmax(logits(x, w, b))
    e = np.eye(w.shape[0])[y]
    return (e - p).T @ phi


def log_likelihood(x, y, w, b):
    f = logits(x, w, b)
    f = f - f.max(axis=1, keepdims=True)
    return float(np.sum(f[np.arange(len(y)), y] - np.log(np.exp(f).sum(axis=1))))


def logit_covariance(x, cov, k, bias_in):
    """J Σ Jᵀ per input with J = I_K ⊗ φᵀ: N × K × K."""
    phi = np.hstack([x, np.ones((len(x), 1))]) if bias_in else x
    out = []
    for fn in phi:
        j = np.kron(np.eye(k), fn[None, :])
        out.append(j @ cov @ j.T)
    return np.array(out)


def probit(f, var_diag):
    return softmax(f / np.sqrt(1.0 + np.pi / 8.0 * var_diag))


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
