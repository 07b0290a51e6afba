"""Ctrl-C during a long call: KeyboardInterrupt arrives within 0.5 s of the signal, and the
posterior is exactly as before the call."""
import os
import signal
import threading
import time

import numpy as np
import pytest

import laplace_update as lu

LATENCY = 0.5


def interrupted_after(delay, call):
    """Sends SIGINT to this process `delay` s into `call`; returns the seconds from the signal
    to the KeyboardInterrupt."""
    sent = {}

    def fire():
        sent["at"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(delay, fire)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            call()
        return time.perf_counter() - sent["at"]
    finally:
        timer.cancel()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    k, d = 10, 256
    x = rng.standard_normal((40_000, d)).astype(np.float32)
    y = np.arange(len(x)) % k
    w = (0.1 * rng.standard_normal((k, d))).astype(np.float32)
    post = lu.Posterior.fit(x[:2_000], y[:2_000], w, dtype="float32")
    return x, y, w, post


def state(post):
    w, b = post.mean()
    return w.copy(), b.copy(), post.covariance().copy(), post.samples_seen


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a[:3], b[:3])) and a[3] == b[3]


def test_ctrl_c_stops_a_long_fit():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400_000, 64)).astype(np.float32)
    y = np.arange(len(x)) % 10
    w = (0.1 * rng.standard_normal((10, 64))).astype(np.float32)
    latency = interrupted_after(0.3, lambda: lu.Posterior.fit(x, y, w, dtype="float32"))
    print(f"fit: KeyboardInterrupt {latency * 1e3:.0f} ms after SIGINT")
    assert latency < LATENCY


def test_ctrl_c_stops_a_long_predict(data):
    x, _, _, post = data
    latency = interrupted_after(0.3, lambda: post.predict(x))
    print(f"predict: KeyboardInterrupt {latency * 1e3:.0f} ms after SIGINT")
    assert latency < LATENCY


def test_ctrl_c_stops_a_long_update_and_changes_nothing(data):
    x, y, _, post = data
    before = state(post)
    latency = interrupted_after(0.3, lambda: post.update(x, y))
    print(f"update: KeyboardInterrupt {latency * 1e3:.0f} ms after SIGINT")
    assert latency < LATENCY and same(state(post), before)


def test_ctrl_c_stops_tuning_and_changes_nothing():
    # D = 64: the one uninterruptible step, the curvature's eigendecomposition (P = 650), is
    # short; the validation passes over 200,000 rows are long.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200_000, 64)).astype(np.float32)
    y = np.arange(len(x)) % 10
    w = (0.1 * rng.standard_normal((10, 64))).astype(np.float32)
    post = lu.Posterior.fit(x[:5_000], y[:5_000], w, dtype="float32")
    before, tau = state(post), post.prior_precision
    latency = interrupted_after(0.3, lambda: post.tune_prior_precision(x, y, grid_points=200))
    print(f"tuning: KeyboardInterrupt {latency * 1e3:.0f} ms after SIGINT")
    assert latency < LATENCY and same(state(post), before) and post.prior_precision == tau
    # Later calls run: the interrupt was for that call only.
    assert post.predict(x[:5])[0].shape == (5, 10)


def test_ctrl_c_stops_active_learning_selection_and_changes_nothing(data):
    x, _, _, post = data
    before = state(post)
    latency = interrupted_after(0.3, lambda: lu.select(post, x, strategy="margin", batch=20))
    print(f"selection: KeyboardInterrupt {latency * 1e3:.0f} ms after SIGINT")
    assert latency < LATENCY and same(state(post), before)
