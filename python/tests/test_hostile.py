"""What numpy and torch users hand over: odd dtypes, byte orders, shapes, views, labels, arrays
changed by another thread mid-call, and damaged posterior bytes. Each gives the right answer
or a typed exception, and a failed call leaves the posterior as it was."""
import threading
import time

import numpy as np
import pytest

import laplace_update as lu
from reference import TAU, problem, softmax

# Every hostile case below; the note quotes its length.
HOSTILE_ARRAYS = {
    "bool": lambda x: x > 0,
    "object": lambda x: x.astype(object),
    "complex": lambda x: x.astype(np.complex128),
    "strings": lambda x: x.astype(str),
    "0-d": lambda x: np.float64(1.0),
    "1-d": lambda x: x[0],
    "3-d": lambda x: x[:, :, None],
    "ragged list": lambda x: [list(x[0]), list(x[1][:-1])],
    "None": lambda x: None,
}

CONVERTED_ARRAYS = {
    "big-endian f8": lambda x: x.astype(">f8"),
    "big-endian f4": lambda x: x.astype(">f4"),
    "float16": lambda x: x.astype(np.float16),
    "int32": lambda x: np.round(x * 4).astype(np.int32),
    "Fortran order": np.asfortranarray,
    "strided view": lambda x: np.repeat(x, 2, axis=1)[:, ::2],
    "negative strides": lambda x: x[::-1][::-1],
    "read-only": lambda x: _readonly(x),
    "list of lists": lambda x: x.tolist(),
}

HOSTILE_LABELS = {
    "fractions": lambda y: y + 0.5,
    "integral floats": lambda y: y.astype(np.float64),
    "bool": lambda y: y > 0,
    "object": lambda y: y.astype(object),
    "strings": lambda y: y.astype(str),
    "2-d N x 2": lambda y: np.stack([y, y], axis=1),
    "3-d": lambda y: y[:, None, None],
    "negative": lambda y: y - 5,
    "too large": lambda y: y + 100,
}


def _readonly(x):
    x = x.copy()
    x.setflags(write=False)
    return x


def fitted():
    x, y, w, b = problem(5)
    return lu.Posterior.fit(x, y, w, b, structure="full", prior_precision=TAU), (x, y, w, b)


def head(post):
    w, b = post.mean()
    return np.hstack([w, b[:, None]])


def snapshot(post):
    return head(post), post.covariance().copy(), post.samples_seen


def unchanged(post, before):
    mean, cov, seen = before
    return np.array_equal(head(post), mean) and np.array_equal(post.covariance(), cov) and post.samples_seen == seen


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_hostile_features_raise_typed_errors_and_change_nothing(case):
    post, (x, y, w, b) = fitted()
    before = snapshot(post)
    bad = HOSTILE_ARRAYS[case](x[:6])
    for call in (
        lambda: post.update(bad, y[:6]),
        lambda: post.predict(bad),
        lambda: lu.Posterior.fit(bad, y[:6], w, b),
        lambda: lu.Posterior.fit(x, y, HOSTILE_ARRAYS[case](w) if case != "None" else np.zeros((0, 0)), b),
    ):
        with pytest.raises(lu.LaplaceError):
            call()
    assert unchanged(post, before)


@pytest.mark.parametrize("case", sorted(CONVERTED_ARRAYS))
def test_other_real_arrays_give_the_same_answer_as_their_float64_copy(case):
    post, (x, y, w, b) = fitted()
    other, _ = fitted()
    converted = CONVERTED_ARRAYS[case](x[:6])
    reference = np.asarray(converted, dtype=np.float64).copy()
    post.update(converted, y[:6])
    other.update(reference, y[:6])
    assert np.array_equal(head(post), head(other))
    assert np.array_equal(post.predict(converted)[0], other.predict(reference)[0])


@pytest.mark.parametrize("case", sorted(HOSTILE_LABELS))
def test_hostile_labels_raise_typed_errors_and_change_nothing(case):
    post, (x, y, _, _) = fitted()
    before = snapshot(post)
    with pytest.raises(lu.LaplaceError):
        post.update(x[:6], HOSTILE_LABELS[case](y[:6]))
    assert unchanged(post, before)


def test_transposed_weights_are_named():
    x, y, w, b = problem(5)
    with pytest.raises(lu.ShapeMismatchError) as e:
        lu.Posterior.fit(x, y, np.zeros((x.shape[1], 4)))
    assert e.value.argument == "weights" and "transposed" in str(e.value)
    with pytest.raises(lu.ShapeMismatchError) as e:
        lu.Posterior.fit(x, y, w, np.zeros(len(w) + 1))
    assert e.value.argument == "bias"


def test_without_weights_the_head_is_the_map_of_softmax_regression():
    x, y, _, _ = problem(5)
    post = lu.Posterior.fit(x, y, None, prior_precision=TAU, structure="diag")
    # The MAP's gradient, written out in numpy: (P − Y)ᵀ [Φ, 1] + τ [W, b] = 0.
    wa = head(post)
    phi = np.hstack([x, np.ones((len(x), 1))])
    p = softmax(phi @ wa.T)
    grad = (p - np.eye(wa.shape[0])[y]).T @ phi + TAU * wa
    assert np.abs(grad).max() < 1e-4 * max(1.0, np.abs(TAU * wa).max())
    assert wa.shape == (y.max() + 1, x.shape[1] + 1)
    assert lu.Posterior.fit(x, y, None, classes=6, prior_precision=TAU).mean()[0].shape[0] == 6


def test_without_weights_the_regression_head_is_ridge():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4))
    t = x @ rng.normal(size=(4, 2)) + 0.3
    post = lu.Posterior.fit(x, t, None, likelihood="regression", prior_precision=TAU, sigma_noise=0.5)
    phi = np.hstack([x, np.ones((len(x), 1))])
    ridge = np.linalg.solve(phi.T @ phi + TAU * 0.25 * np.eye(5), phi.T @ t).T
    assert np.allclose(head(post), ridge, atol=1e-8)


def test_arrays_changed_or_dropped_by_another_thread_mid_call():
    post, (x, y, w, b) = fitted()
    other, _ = fitted()
    big = np.repeat(x, 20_000, axis=0)
    labels = np.repeat(y, 20_000)
    reference = big.copy()
    refused = []

    def meddle():
        time.sleep(0.05)  # the call below has its arrays by now
        try:
            big.resize((10, x.shape[1]), refcheck=True)
        except ValueError as e:  # numpy refuses: the call holds a reference
            refused.append(e)

    thread = threading.Thread(target=meddle)
    thread.start()
    report = post.update(big, labels)
    thread.join()
    other.update(reference, labels)
    assert refused and report["converged"] and np.array_equal(head(post), head(other))
    # An array whose last Python name is dropped during the call lives until the call ends.
    data = [np.repeat(x, 20_000, axis=0)]

    def drop():
        time.sleep(0.05)
        data.clear()

    dropper = threading.Thread(target=drop)
    dropper.start()
    probs, _ = post.predict(data[0])
    dropper.join()
    assert probs.shape == (len(x) * 20_000, len(w)) and np.isfinite(probs).all()


def test_damaged_posterior_bytes_raise_format_errors():
    post, _ = fitted()
    good = post.to_bytes()
    cases = {
        "empty": b"",
        "truncated header": good[:7],
        "truncated body": good[: len(good) // 2],
        "one byte short": good[:-1],
        "flipped header length": bytes([good[0] ^ 0xFF]) + good[1:],
        "garbage": bytes(range(256)) * 4,
        "metadata corrupted": good.replace(b"full", b"fuul", 1),
    }
    for name, data in cases.items():
        with pytest.raises(lu.LaplaceError):
            lu.Posterior.from_bytes(data)
    assert lu.Posterior.from_bytes(good).samples_seen == post.samples_seen
