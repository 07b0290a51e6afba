"""A fit sharded over a Dask LocalCluster of worker processes equals a single-process fit."""
import os
import sys

import numpy as np
import pytest

import laplace_update as lu

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
distributed = pytest.importorskip("dask.distributed")
from distributed_fit import distributed_fit  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_sharded_fit_equals_one_process(client, structure):
    rng = np.random.default_rng(5)
    n, d, k = 3000, 12, 4
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(k, d)) * 0.4
    b = rng.normal(size=k) * 0.1
    y = rng.integers(0, k, size=n)
    shards = [(x[i : i + 500], y[i : i + 500]) for i in range(0, n, 500)]
    post = distributed_fit(client, shards, w, b, structure=structure)
    # The workers really were other processes.
    assert len({pid for pid in client.run(os.getpid).values()} - {os.getpid()}) == 2
    single = lu.Posterior.fit(x, y, w, b, structure=structure, prior_precision=1.0)
    single.optimize_prior_precision()
    assert abs(post.prior_precision[0] - single.prior_precision[0]) <= 1e-10 * single.prior_precision[0]
    for got, want in ((post.precision(), single.precision()), (post.covariance(), single.covariance())):
        err = np.max(np.abs(got - want)) / np.max(np.abs(want))
        print(f"{structure}: distributed vs single-process relative error {err:.2e}")
        assert err < 1e-10
    assert post.samples_seen == n
