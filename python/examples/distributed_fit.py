"""A posterior fitted over a Dask cluster: each worker accumulates the curvature of its
partitions around the same head, Dask's own tree reduction merges the accumulators, and the
driver finishes with the prior precision chosen by marginal likelihood.

    python python/examples/distributed_fit.py                      # a local cluster of 2 processes
    python python/examples/distributed_fit.py tcp://scheduler:8786 # an existing cluster

On a multi-node cluster, start `dask scheduler` on one machine and `dask worker
tcp://scheduler:8786` on each of the others (each with `pip install ./python` done), then pass
the scheduler's address. Only the accumulators travel: each is the bytes of its posterior file
(K·D_aug squared values for Full), whatever the partition's size.
"""
import sys

import dask.bag as db
import numpy as np

import laplace_update as lu


def accumulate(partition, weights, bias, structure):
    """The curvature of one partition's (features, labels) pairs around the head."""
    acc = lu.Accumulator(weights, bias, structure=structure)
    for features, labels in partition:
        acc.accumulate(features, labels)
    return acc


def merge(a, b):
    """Dask's binary operator: the sum of two accumulators."""
    a.merge(b)
    return a


def distributed_fit(client, shards, weights, bias, structure="full", optimize_prior=True):
    """`shards`: a list of (features, labels) pairs, spread over the cluster's workers."""
    bag = db.from_sequence(shards, npartitions=len(shards))
    total = bag.reduction(
        lambda part: accumulate(part, weights, bias, structure),
        lambda accs: _merge_all(list(accs)),
        split_every=2,
    )
    acc = total.compute()
    return acc.finish(prior_precision=1.0, optimize_prior=optimize_prior)


def _merge_all(accs):
    first = accs[0]
    for other in accs[1:]:
        first = merge(first, other)
    return first


def main():
    from dask.distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    n, d, k = 20_000, 32, 10
    x = rng.normal(size=(n, d))
    w = rng.normal(size=(k, d)) * 0.3
    y = np.argmax(x @ w.T + rng.gumbel(size=(n, k)), axis=1)
    shards = [(x[i : i + 2500], y[i : i + 2500]) for i in range(0, n, 2500)]
    if len(sys.argv) > 1:
        client = Client(sys.argv[1])
    else:
        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True))
    with client:
        post = distributed_fit(client, shards, w, None, structure="full")
    single = lu.Posterior.fit(x, y, w, structure="full", prior_precision=post.prior_precision[0])
    err = np.max(np.abs(post.precision() - single.precision())) / np.max(np.abs(single.precision()))
    print(f"{len(shards)} shards over the cluster: tau = {post.prior_precision[0]:.4g}, "
          f"relative difference from one process {err:.1e}")


if __name__ == "__main__":
    main()
