"""Micro-benchmarks of flatcoat's MaxSim kernel family, run by hand.

    pytest bench/test_bench_maxsim.py --benchmark-only

Runs against the installed flatcoat (``pip install -e .`` or a wheel); only
the ``bench`` helpers are imported from this checkout. Not collected by the
default ``pytest`` run (``testpaths = ["tests"]``). Each
benchmark scores 2,000 documents of 50..300 tokens (mean about 180) x 128 dims
(``bench/maxsim.py``'s generator) against 32-token queries: one query, a
batch of 32, and a search restricted to a subset of 500 documents (the
second stage of a Retriever), per storage. ``extra_info`` holds
the document tokens scored per call and the nominal FLOPs (2 * 32 * 128 per
query token pair), so GFLOP/s can be read from the saved JSON
(``--benchmark-json``). Sizes via ``FLATCOAT_BENCH_DOCS``; threads via
``FLATCOAT_BENCH_THREADS`` (default 2).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.maxsim import DIM, Q_TOKENS, chunks, make_queries  # noqa: E402

flatcoat = pytest.importorskip("flatcoat")
pytest.importorskip("pytest_benchmark")
from flatcoat.multivector import MultiVectorIndex  # noqa: E402

N_DOCS = int(os.environ.get("FLATCOAT_BENCH_DOCS", 2000))
THREADS = int(os.environ.get("FLATCOAT_BENCH_THREADS", 2))


@pytest.fixture(scope="module")
def collection():
    return list(chunks(N_DOCS, seed=0))


@pytest.fixture(scope="module", params=["f32", "f16", "int8"])
def index(request, collection):
    flatcoat.set_num_threads(THREADS)
    idx = MultiVectorIndex(DIM, storage=request.param)
    for tokens, lengths in collection:
        idx.add((tokens, lengths))
    yield idx
    flatcoat.set_num_threads(0)


@pytest.fixture(scope="module")
def queries(collection):
    exact = MultiVectorIndex(DIM)
    for tokens, lengths in collection:
        exact.add((tokens, lengths))
    return make_queries(exact, 32, seed=0)


def _info(benchmark, index, tokens_per_call, queries_per_call):
    benchmark.extra_info.update({
        "storage": index.storage, "docs": len(index), "document_tokens_per_call": tokens_per_call,
        "flops_per_call": 2.0 * Q_TOKENS * DIM * tokens_per_call * queries_per_call, "threads": THREADS,
    })


def test_full_one_query(benchmark, index, queries):
    _info(benchmark, index, index.num_tokens, 1)
    scores, ids = benchmark(index.search, queries[0], k=10)
    assert ids.shape == (1, 10) and (ids >= 0).all()


def test_full_batch_32(benchmark, index, queries):
    _info(benchmark, index, index.num_tokens, 32)
    scores, ids = benchmark(index.search, queries, k=10)
    assert ids.shape == (32, 10) and (ids >= 0).all()


def test_subset_500(benchmark, index, queries):
    rng = np.random.default_rng(0)
    positions = rng.choice(len(index), min(500, len(index)), replace=False)
    subset = index.ids[positions]
    _info(benchmark, index, int(index.lengths[positions].sum()), 1)
    scores, ids = benchmark(index.search, queries[0], k=10, subset=subset)
    assert ids.shape == (1, 10) and np.isin(ids, subset).all()
