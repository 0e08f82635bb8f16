"""int8 scalar quantization: per-dimension vs per-vector scale, recall@10 vs exact float32.

Same clustered data as ``bench/dense.py`` (``bench/datasets.py``). Each
variant encodes the base into 255-level codes, decodes them back to float32
and searches exactly with float queries (the asymmetric scoring flatcoat and
FAISS SQ8 do), so only the quantizer differs:

* per-dimension: ``lo_j = min_i x_ij``, ``scale_j = (max_i x_ij - lo_j) / 255``
  (fitted on the whole base, as FAISS SQ8 trains it);
* per-vector: ``lo_i = min_j x_ij``, ``scale_i = (max_j x_ij - lo_i) / 255``
  (flatcoat ``storage="int8"``'s ranges: no training, one scale and offset
  per vector; flatcoat decodes at the step centres);
* global symmetric: one ``max |x|`` for everything, codes in [-127, 127]
  (usearch-style; for reference);
* FAISS ``IndexScalarQuantizer(QT_8bit)`` (per-dimension min/max, its own
  rounding), searched by FAISS itself;
* flatcoat ``DenseIndex(storage="int8")`` itself, as a consistency check of
  the per-vector row.

Also prints the mean squared reconstruction error relative to ``|x|^2``.

``python bench/int8_scale.py [--n 1000000] [--dim 384] [--nq 256]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import flatcoat

# The repository root, for the sibling bench modules (flatcoat itself is the installed package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.datasets import clustered, exact_knn, recall_at_k  # noqa: E402

_CHUNK = 65536


def per_dim(x: np.ndarray) -> np.ndarray:
    lo = x.min(axis=0)
    scale = np.maximum(x.max(axis=0) - lo, 1e-12) / 255.0
    out = np.empty_like(x)
    for s in range(0, len(x), _CHUNK):
        c = np.clip(np.rint((x[s:s + _CHUNK] - lo) / scale), 0, 255)
        out[s:s + _CHUNK] = lo + scale * c
    return out


def per_vector(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for s in range(0, len(x), _CHUNK):
        b = x[s:s + _CHUNK]
        lo = b.min(axis=1, keepdims=True)
        scale = np.maximum(b.max(axis=1, keepdims=True) - lo, 1e-12) / 255.0
        out[s:s + _CHUNK] = lo + scale * np.clip(np.rint((b - lo) / scale), 0, 255)
    return out


def global_symmetric(x: np.ndarray) -> np.ndarray:
    scale = float(np.abs(x).max()) / 127.0
    out = np.empty_like(x)
    for s in range(0, len(x), _CHUNK):
        out[s:s + _CHUNK] = scale * np.clip(np.rint(x[s:s + _CHUNK] / scale), -127, 127)
    return out


def rel_mse(x: np.ndarray, y: np.ndarray) -> float:
    err = 0.0
    for s in range(0, len(x), _CHUNK):
        d = x[s:s + _CHUNK] - y[s:s + _CHUNK]
        err += float(np.einsum("ij,ij->", d, d, dtype=np.float64))
    return err / float(np.einsum("ij,ij->", x, x, dtype=np.float64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--nq", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    k = 10
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(a.threads)
    except ImportError:
        pass

    t0 = time.perf_counter()
    base, queries = clustered(a.n, a.dim, n_queries=a.nq, seed=a.seed)
    _, gt = exact_knn(base, queries, k)
    print(f"data: clustered N={a.n:,} dim={a.dim} nq={a.nq} seed={a.seed} ({time.perf_counter() - t0:.0f} s)",
          file=sys.stderr)

    rows = []
    for name, fn in (("per-dimension min/max, 255 levels", per_dim),
                     ("per-vector min/max, 255 levels (flatcoat's ranges)", per_vector),
                     ("global symmetric max|x|, [-127, 127] (usearch-style)", global_symmetric)):
        dec = fn(base)
        _, ids = exact_knn(dec, queries, k)
        rows.append((name, "numpy", recall_at_k(ids, gt, k), rel_mse(base, dec)))
        del dec

    try:
        import faiss
        faiss.omp_set_num_threads(a.threads)
        for name, qt in (("FAISS SQ8 (QT_8bit)", faiss.ScalarQuantizer.QT_8bit),
                         ("FAISS SQ8 uniform (QT_8bit_uniform)", faiss.ScalarQuantizer.QT_8bit_uniform)):
            index = faiss.IndexScalarQuantizer(a.dim, qt, faiss.METRIC_INNER_PRODUCT)
            index.train(base)
            index.add(base)
            _, ids = index.search(queries, k)
            dec = index.sa_decode(index.sa_encode(base[:_CHUNK]))
            rows.append((name, "faiss", recall_at_k(ids, gt, k), rel_mse(base[:_CHUNK], dec)))
            del index
    except ImportError:
        print("faiss not installed: FAISS rows skipped", file=sys.stderr)

    flatcoat.set_num_threads(a.threads)
    index = flatcoat.DenseIndex(a.dim, metric="ip", storage="int8")
    index.add(base)
    _, ids = index.search(queries, k)
    rows.append(("flatcoat DenseIndex int8", "flatcoat", recall_at_k(ids, gt, k), float("nan")))
    del index

    print(f"\nint8 scale: recall@10 vs exact float32 (N={a.n:,}, dim={a.dim}, {a.nq} queries, clustered, seed "
          f"{a.seed})\n")
    print("| quantizer | computed by | recall@10 | rel. MSE |")
    print("|---|---|---|---|")
    for name, by, rec, mse in rows:
        m = "n/a" if np.isnan(mse) else f"{mse:.2e}"
        print(f"| {name} | {by} | {rec:.4f} | {m} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
