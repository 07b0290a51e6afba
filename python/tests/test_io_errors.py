"""Save/load and pickling round trips, every exception type, and zero-copy inputs."""
import os
import pickle
import tracemalloc

import numpy as np
import pytest

import laplace_update as lu
from reference import TAU, problem, rel

EXCEPTIONS = [
    "ShapeMismatchError",
    "NonFiniteError",
    "LabelOutOfRangeError",
    "EmptyBatchError",
    "InvalidArgumentError",
    "NotPositiveDefiniteError",
    "IllConditionedError",
    "BackendUnavailableError",
    "UnsupportedError",
    "FileError",
    "LockTimeoutError",
    "FormatError",
    "DeviceError",
    "OutOfMemoryError",
]


def fitted(structure="full", **kw):
    x, y, w, b = problem(11)
    return lu.Posterior.fit(x, y, w, b, structure=structure, prior_precision=TAU, **kw), (x, y, w, b)


@pytest.mark.parametrize("structure", ["full", "shared", "diag", "kron"])
def test_save_load_and_pickle(tmp_path, structure):
    post, (x, y, _, _) = fitted(structure, bias_in_posterior=True)
    path = tmp_path / "post.safetensors"
    post.save(path)
    for back in (lu.Posterior.load(path), pickle.loads(pickle.dumps(post)), lu.Posterior.from_bytes(post.to_bytes())):
        assert back.structure == structure and back.samples_seen == post.samples_seen
        assert np.array_equal(back.covariance(), post.covariance())
        assert np.array_equal(back.predict(x)[0], post.predict(x)[0])
    acc = lu.Accumulator(problem(11)[2], structure=structure)
    acc.accumulate(x, y)
    again = pickle.loads(pickle.dumps(acc))
    assert again.count == acc.count == len(x)
    assert np.array_equal(again.finish(TAU).precision(), acc.finish(TAU).precision())


SAMPLES = {
    "ShapeMismatch": ("ShapeMismatchError", {"argument": "features"}),
    "NonFinite": ("NonFiniteError", {"argument": "features", "index": 5, "row": 2, "column": 1}),
    "LabelOutOfRange": ("LabelOutOfRangeError", {"index": 1, "label": 7, "classes": 3}),
    "EmptyBatch": ("EmptyBatchError", {"argument": "features"}),
    "InvalidArgument": ("InvalidArgumentError", {"argument": "gamma", "reason": "sample"}),
    "NotPositiveDefinite": ("NotPositiveDefiniteError", {"index": 4}),
    "IllConditioned": ("IllConditionedError", {"drift": 0.5}),
    "BackendUnavailable": ("BackendUnavailableError", {"backend": "cuda", "reason": "sample"}),
    "Unsupported": ("UnsupportedError", {"reason": "sample"}),
    "Io": ("FileError", {"path": "p", "reason": "sample"}),
    "LockTimeout": ("LockTimeoutError", {"path": "p", "lock": "p.lock", "waited_s": 1.5}),
    "Format": ("FormatError", {"what": "p", "reason": "sample"}),
    "Device": ("DeviceError", {"backend": "cuda", "reason": "sample"}),
    "OutOfMemory": ("OutOfMemoryError", {"needed": 2000, "available": 1000, "bound": "memory cgroup"}),
}


def test_every_variant_maps_to_its_class_with_its_fields():
    assert sorted(cls for cls, _ in SAMPLES.values()) == sorted(EXCEPTIONS)
    for variant, (cls, fields) in SAMPLES.items():
        e = lu._sample_error(variant)
        assert type(e) is getattr(lu, cls) and isinstance(e, lu.LaplaceError), variant
        for name, value in fields.items():
            assert getattr(e, name) == value, (variant, name)


def test_exceptions_are_typed_with_data():
    for name in EXCEPTIONS:
        assert issubclass(getattr(lu, name), lu.LaplaceError)
    post, (x, y, w, b) = fitted()
    with pytest.raises(lu.ShapeMismatchError) as e:
        post.predict(x[:, :3])
    assert e.value.argument == "features"
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(lu.NonFiniteError) as e:
        post.update(bad, y)
    assert e.value.index == 2 * x.shape[1] + 1
    assert (e.value.row, e.value.column) == (2, 1) and "row 2, column 1" in str(e.value)
    # Labels as a column, N × 1, are the same labels.
    copy = lu.Posterior.from_bytes(post.to_bytes())
    post.update(x[:4], y[:4])
    copy.update(x[:4], y[:4, None])
    assert np.array_equal(post.mean()[0], copy.mean()[0])
    with pytest.raises(lu.LabelOutOfRangeError) as e:
        post.update(x[:3], np.array([0, 7, 1]))
    assert (e.value.index, e.value.label, e.value.classes) == (1, 7, 3)
    with pytest.raises(lu.EmptyBatchError):
        post.predict(np.zeros((0, x.shape[1])))
    with pytest.raises(lu.InvalidArgumentError) as e:
        lu.Posterior.fit(x, y, w, b, prior_precision=-1.0)
    assert e.value.argument == "prior_precision"
    with pytest.raises(lu.InvalidArgumentError):
        post.update(x, y.astype(np.float64))
    with pytest.raises(lu.BackendUnavailableError) as e:
        lu.Posterior.fit(x, y, w, b, device="cuda")
    assert e.value.backend == "cuda"
    with pytest.raises(lu.FileError):
        lu.Posterior.load("/nonexistent/post.safetensors")
    with pytest.raises(lu.FormatError):
        lu.Posterior.from_bytes(b"not a posterior")
    with pytest.raises(lu.NotPositiveDefiniteError):
        # Removing data that was never added drives the precision indefinite.
        lu.Posterior.fit(x[:2], y[:2], w, b, structure="shared-gaussian", prior_precision=1e-6).unlearn(x[2:4] * 100.0, y[2:4], gamma=1.0)
    before = post.covariance()
    for call in (lambda: post.update(bad, y), lambda: post.update(x[:3], np.array([0, 7, 1]))):
        with pytest.raises(lu.LaplaceError):
            call()
    assert np.array_equal(post.covariance(), before)


def test_contiguous_float32_is_read_in_place():
    x, y, w, b = problem(12, n=20, d=64)
    post = lu.Posterior.fit(x, y, w, b, structure="shared-gaussian", dtype="float32", prior_precision=TAU)
    big = np.random.default_rng(0).normal(size=(40_000, 64)).astype(np.float32)  # 10 MB
    post.predict(big[:10])
    tracemalloc.start()
    post.predict(big)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The outputs (N × K, twice) are allocated; a copy of the input would add its 10 MB.
    assert peak < big.nbytes / 4, peak
    # The test can fail: a float64 or strided input is converted, and that copy shows.
    tracemalloc.start()
    post.predict(np.asfortranarray(big))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak >= big.nbytes, peak


def test_a_posterior_too_large_for_the_memory_cap_is_refused_before_it_allocates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 512)).astype(np.float32)
    y = np.arange(64) % 30
    w = (0.01 * rng.standard_normal((30, 512))).astype(np.float32)
    small, (xs, ys, _, _) = fitted("diag")
    before = small.covariance().copy()
    # The cap bounds the whole process: 512 MiB above what it holds now (torch, if another test
    # module imported it, holds several hundred).
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    lu.set_max_memory(resident + (512 << 20))
    try:
        with pytest.raises(lu.OutOfMemoryError) as e:
            lu.Posterior.fit(x, y, w, structure="full", dtype="float32")
        assert e.value.needed > 3e9 and e.value.available <= 512 << 20 and e.value.bound == "memory cap"
        assert "kron" in str(e.value)
        # A Kron posterior at the same size fits under the cap.
        assert lu.Posterior.fit(x, y, w, structure="kron", dtype="float32").structure == "kron"
        lu.set_max_memory(1)
        with pytest.raises(lu.OutOfMemoryError):
            small.update(xs[:3], ys[:3])
        assert np.array_equal(small.covariance(), before)
        with pytest.raises(lu.InvalidArgumentError):
            lu.set_max_memory("lots")
    finally:
        lu.set_max_memory(None)
    small.update(xs[:3], ys[:3])
