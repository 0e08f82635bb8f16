"""Synthetic clustered embeddings and exact ground truth, for benchmarks and tests.

Real sentence embeddings are neither uniform on the sphere (where every
quantizer looks good and every neighbour is nearly as far as any other) nor
tidy: they crowd into topics. ``clustered`` draws unit vectors around
``n_clusters`` random centres (about 100), each cluster with its own spread,
so a query has a few hundred close neighbours and a long tail: the regime in
which int8 and binary quantization lose recall and re-ranking matters.

>>> from bench.datasets import clustered, exact_knn, recall_at_k
>>> base, queries = clustered(2000, 32, n_queries=5, seed=1)
>>> base.shape, queries.shape, base.dtype
((2000, 32), (5, 32), dtype('float32'))
>>> _, ids = exact_knn(base, queries, k=10)
>>> recall_at_k(ids, ids, 10)
1.0
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

_CHUNK = 65536


def _cluster_params(dim: int, n_clusters: int, spread: float, seed: int):
    rng = np.random.default_rng([seed, 0])
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # noise of norm ~ spread * (0.5 .. 1.5) around each unit centre
    sigmas = (spread * rng.uniform(0.5, 1.5, n_clusters) / np.sqrt(dim)).astype(np.float32)
    weights = rng.uniform(0.5, 1.5, n_clusters)
    return centres, sigmas, weights / weights.sum()


def _draw(n: int, centres, sigmas, weights, rng, out: np.ndarray) -> None:
    dim = centres.shape[1]
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        c = rng.choice(len(centres), size=e - s, p=weights)
        x = rng.standard_normal((e - s, dim), dtype=np.float32)
        x *= sigmas[c, None]
        x += centres[c]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x


def clustered(n: int, dim: int, n_queries: int = 256, n_clusters: int = 100, spread: float = 1.0,
              seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(base, queries)``: float32 unit vectors, (n, dim) and (n_queries, dim).

    Each vector is a cluster centre (a random unit vector) plus Gaussian noise
    whose norm is about ``spread`` times that cluster's factor in [0.5, 1.5]
    (so cosine to the centre about 0.55-0.9 for ``spread=1``), then normalised.
    Clusters have unequal sizes. Queries come from the same distribution (same
    centres and spreads) but from an independent random stream, so they are
    not in the base. Deterministic in ``seed``; generated in chunks, so
    ``n = 1e6, dim = 384`` peaks at the output size plus about 100 MB.
    """
    if n < 0 or dim <= 0 or n_queries < 0 or n_clusters <= 0:
        raise ValueError("clustered: n, n_queries >= 0 and dim, n_clusters > 0 required")
    centres, sigmas, weights = _cluster_params(dim, n_clusters, spread, seed)
    base = np.empty((n, dim), dtype=np.float32)
    _draw(n, centres, sigmas, weights, np.random.default_rng([seed, 1]), base)
    queries = np.empty((n_queries, dim), dtype=np.float32)
    _draw(n_queries, centres, sigmas, weights, np.random.default_rng([seed, 2]), queries)
    return base, queries


def _topk_rows(scores: np.ndarray, k: int, largest: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Per-row top-k (unsorted) column indices and values."""
    k = min(k, scores.shape[1])
    s = -scores if largest else scores
    if k < scores.shape[1]:
        idx = np.argpartition(s, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    return idx, np.take_along_axis(scores, idx, axis=1)


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int = 10, metric: str = "ip",
              chunk: int = 32768) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k by float32 matmul over chunks of ``base`` plus argpartition.

    ``metric``: ``"ip"`` (larger is better; use it for cosine on unit vectors)
    or ``"l2"`` (squared distance, smaller is better). Returns
    ``(scores, ids)``, (q, k), sorted best first, ties by smaller id. Memory:
    one (q, chunk) score block at a time.
    """
    if metric not in ("ip", "l2"):
        raise ValueError(f"metric: expected 'ip' or 'l2', got {metric!r}")
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    largest = metric == "ip"
    nq, n = queries.shape[0], base.shape[0]
    best_s = np.empty((nq, 0), dtype=np.float32)
    best_i = np.empty((nq, 0), dtype=np.int64)
    q_sq = (queries.astype(np.float64) ** 2).sum(1)[:, None] if metric == "l2" else None
    buf = np.empty((nq, min(chunk, n)), dtype=np.float32)  # reused: no page faults per chunk
    for s in range(0, n, chunk):
        block = base[s:s + chunk]
        sc = np.matmul(queries, block.T, out=buf[:, :block.shape[0]])
        if metric == "l2":
            b_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
            sc = (q_sq - 2.0 * sc + b_sq[None, :]).astype(np.float32)
        idx, val = _topk_rows(sc, k, largest)
        best_s = np.concatenate([best_s, val], axis=1)
        best_i = np.concatenate([best_i, idx.astype(np.int64) + s], axis=1)
        idx, best_s = _topk_rows(best_s, k, largest)
        best_i = np.take_along_axis(best_i, idx, axis=1)
    # sort best first, ties by smaller id
    key = -best_s if largest else best_s
    order = np.lexsort((best_i, key), axis=1)
    return np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / k (ids; -1 never matches)."""
    found = np.atleast_2d(found)[:, :k]
    truth = np.atleast_2d(truth)[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"recall_at_k: {found.shape[0]} result rows vs {truth.shape[0]} truth rows")
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth))
    return hits / (truth.shape[0] * k)


def load_or_make(n: int, dim: int, n_queries: int = 256, k: int = 100, seed: int = 0,
                 cache_dir: Optional[str] = None):
    """``clustered`` + ``exact_knn`` (ip) with an optional ``.npz`` cache keyed by the arguments.

    Returns ``(base, queries, gt_ids)`` with ``gt_ids`` of shape (n_queries, k).
    """
    import os

    path = None
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
        path = os.path.join(cache_dir, f"clustered_n{n}_d{dim}_q{n_queries}_k{k}_s{seed}.npy")
    base, queries = clustered(n, dim, n_queries=n_queries, seed=seed)
    if path and os.path.exists(path):
        gt = np.load(path)
        if gt.shape == (n_queries, k):
            return base, queries, gt
    _, gt = exact_knn(base, queries, k)
    if path:
        np.save(path, gt)
    return base, queries, gt
