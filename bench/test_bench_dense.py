"""Micro-benchmarks of flatcoat's dense scan, one per kernel family, run by hand.

    pytest bench/test_bench_dense.py --benchmark-only

Runs against the installed flatcoat (``pip install -e .`` or a wheel); only
the ``bench`` helpers are imported from this checkout. Not collected by the default ``pytest`` run (``testpaths = ["tests"]``).
Each benchmark scans 200k x 384 clustered unit vectors (``bench/datasets.py``)
for k = 10 at Q = 1 and Q = 64, and records in ``extra_info`` the bytes
scanned per call and the nominal FLOPs, so GB/s and GFLOP/s can be read from
the saved JSON (``--benchmark-json``). Sizes via ``FLATCOAT_BENCH_N`` /
``FLATCOAT_BENCH_DIM``; threads via ``FLATCOAT_BENCH_THREADS`` (default 2).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.datasets import clustered  # noqa: E402

flatcoat = pytest.importorskip("flatcoat")
pytest.importorskip("pytest_benchmark")
from flatcoat._storage import DENSE_STORAGES, dense_code_layout  # noqa: E402

N = int(os.environ.get("FLATCOAT_BENCH_N", 200_000))
DIM = int(os.environ.get("FLATCOAT_BENCH_DIM", 384))
THREADS = int(os.environ.get("FLATCOAT_BENCH_THREADS", 2))
K = 10
CODE_BYTES = {
    storage: int(np.prod(shape)) * dtype.itemsize
    for storage in DENSE_STORAGES for shape, dtype in [dense_code_layout(storage, DIM)]
}


@pytest.fixture(scope="module")
def data():
    return clustered(N, DIM, n_queries=64, seed=0)


@pytest.fixture(scope="module")
def indexes(data):
    flatcoat.set_num_threads(THREADS)
    base, _ = data
    out = {}
    for storage in CODE_BYTES:
        index = flatcoat.DenseIndex(DIM, metric="ip", storage=storage)
        index.add(base)
        out[storage] = index
    yield out
    out.clear()


@pytest.mark.parametrize("nq", [1, 64], ids=["q1", "q64"])
@pytest.mark.parametrize("storage", list(CODE_BYTES))
def test_scan(benchmark, indexes, data, storage, nq):
    index = indexes[storage]
    queries = np.ascontiguousarray(data[1][:nq])
    benchmark.group = f"dense scan Q={nq}"
    benchmark.extra_info.update({
        "n": N, "dim": DIM, "k": K, "nq": nq, "threads": THREADS, "storage": storage,
        "bytes_scanned": N * CODE_BYTES[storage], "nominal_flop": 2 * N * DIM * nq,
    })
    scores, ids = benchmark(index.search, queries, K)
    assert ids.shape == (nq, K) and (ids >= 0).all()
