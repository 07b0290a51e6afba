"""The package's per-call cost beside the Rust API's: one small Joint update (each on a fresh
copy read from the posterior's bytes) and one prediction (K = 10, D = 64, Full, float64, a
posterior fitted on 500 samples), each the median of 2,000 calls. `cargo run --release --no-default-features --example call_overhead` prints the Rust figures
for the same calls; the difference is the Python overhead per call.

    python python/examples/call_overhead.py
"""
import pickle
import time

import numpy as np

import laplace_update as lu


def main():
    n, d, k = 500, 64, 10
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, size=(n, d))
    labels = np.arange(n) % k
    head = 0.1 * rng.uniform(-1, 1, size=(k, d))
    post = lu.Posterior.fit(x, labels, head, structure="full")
    blob = post.to_bytes()
    one, label = x[:1], labels[:1]
    # Each update on a fresh copy read from the same bytes, as the Rust twin does; the
    # predictions in a loop of their own, so that both languages see the same caches.
    update, predict = [], []
    for _ in range(2000):
        p = lu.Posterior.from_bytes(blob)
        t = time.perf_counter()
        p.update(one, label)
        update.append(time.perf_counter() - t)
    for _ in range(2000):
        t = time.perf_counter()
        post.predict(one)
        predict.append(time.perf_counter() - t)
    print(
        f"python: update {np.median(update) * 1e6:.1f} µs, predict {np.median(predict) * 1e6:.1f} µs "
        f"(median of 2,000; K={k} D={d} Full float64)"
    )
    assert pickle.loads(pickle.dumps(post)).samples_seen == n


if __name__ == "__main__":
    main()
