"""numpy's XᵀX plus inverse on an N × D float32 matrix: the peer figure of the Shared fit.

python3 benches/peers/numpy_scale.py N D  (prints the best of three, in seconds)
"""
import sys
import time

import numpy as np

n, d = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(12)
x = rng.uniform(-1.0, 1.0, size=(n, d)).astype(np.float32)
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    precision = x.T @ x + np.eye(d, dtype=np.float32)
    covariance = np.linalg.inv(precision)
    best = min(best, time.perf_counter() - t)
print(f"numpy {np.__version__} XᵀX + inverse, float32 N={n} D={d}: {best:.3f} s")
