"""Threads calling predict while another thread updates: every prediction is of a whole state
(before or after each update, never half of one), and the updates all land."""
import threading

import numpy as np

import laplace_update as lu
from reference import TAU, problem, rel


def test_predict_while_updating():
    x, y, w, b = problem(21, n=400, d=32, k=5)
    post = lu.Posterior.fit(x[:100], y[:100], w, b, structure="full", prior_precision=TAU)
    serial = lu.Posterior.fit(x[:100], y[:100], w, b, structure="full", prior_precision=TAU)
    probe = x[:8]
    states = [serial.predict(probe)[0]]
    batches = [(x[i : i + 30], y[i : i + 30]) for i in range(100, 400, 30)]
    for xb, yb in batches:
        serial.update(xb, yb, gamma=0.5)
        states.append(serial.predict(probe)[0])

    seen, errors = [], []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                seen.append(post.predict(probe)[0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    for xb, yb in batches:
        post.update(xb, yb, gamma=0.5)
    done.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert post.samples_seen == 400
    assert rel(post.predict(probe)[0], states[-1]) < 1e-12
    assert seen, "the readers ran"
    for p in seen:
        assert min(rel(p, s) for s in states) < 1e-12
