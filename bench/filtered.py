"""Filtered search side by side: flatcoat against FAISS, usearch and LanceDB.

One run, one machine, the same data for every engine, each engine in its own
child process (so its build, memory and threads are its own), 2 threads, k = 10.

Data: ``bench.datasets.clustered(n, 384)`` (1,000,000 by default; a mixture
of Gaussians, unit-normalised), 256 queries from the same distribution, and
one integer attribute ``bucket`` drawn uniformly from [0, 1000) independently
of the vectors. The filters are ``bucket < t``: ``t = 500, 100, 10, 1`` give
selectivities 50%, 10%, 1% and 0.1%; the unfiltered search is the baseline.

Ground truth: the exact filtered top-10 of every query, numpy float64 over the
allowed rows only (ties by the smaller id). Reported per engine, setting and
filter: recall@10 against it, how many of the 256 result rows hold exactly
the filtered top-10 ids ("exact rows"; in brackets, also counting rows that
differ only by a near-tie float32 cannot order, float64 scores equal within
1e-6), single-query latency (Q = 1, p50 and
p99 over the first ``--q1`` queries, one call each) and batch throughput
(the 256 queries in one call, median of up to 3 calls).

Every timed call goes from the predicate to the results, so the cost of
evaluating the filter is inside it, for every engine:

* flatcoat: ``search(q, k=10, filter={"bucket": {"$lt": t}})`` on
  ``DenseIndex`` f32, int8 (also int8 + exact re-ranking of 50, keep_float)
  and ``IVFIndex`` pq4 + keep_float, swept over ``nprobe`` and ``rerank``;
  the f32 index also with an id allow-list (``np.flatnonzero(bucket < t)``
  computed in the call);
* FAISS: ``IndexFlatIP`` and, on one coarse quantizer (``4 * sqrt(n)``
  lists, as ``bench/ann.py``), ``IndexIVFFlat`` and ``IVF,PQ(d/2)x4fs,RFlat``
  (fast-scan PQ with exact re-ranking), swept over ``nprobe`` (and
  ``k_factor``); the filter is ``faiss.IDSelectorBitmap`` over
  ``np.packbits(bucket < t, bitorder="little")``, built in the call and passed
  through ``SearchParameters`` / ``SearchParametersIVF`` (inside
  ``IndexRefineSearchParameters`` for the refined index);
* usearch: its Python API has no filtered search (``Index.search`` takes no
  predicate in the installed version; the C++ predicate is not exposed), so
  the row is what a usearch user can do instead: exact search
  (``usearch.index.search(..., exact=True)``) over the allowed rows gathered
  in the call;
* LanceDB (embedded): a table with the vector and ``bucket`` columns,
  ``.where("bucket < t", prefilter=True)``, first without an index (exact
  flat scan), then with its ``IVF_PQ`` index (``sqrt(n)`` partitions,
  ``d/8`` sub-vectors), swept over ``minimum_nprobes`` (with
  ``maximum_nprobes(0)``: it keeps probing while fewer than k rows pass) and
  ``refine_factor``.

The numpy cost of the bitmap alone (compare + packbits) is printed per filter
so a reader can subtract it. The summary gives, per filter, every engine's best
Q = 1 p50 and best batch rate at recall@10 >= 0.95, flatcoat's ratio to the
best peer, and the issue's targets. ``flatcoat bench --quick`` (the machine's
ceilings) and the CPU model are recorded in the same run.

Usage (runs against the installed flatcoat; ``pip install faiss-cpu usearch
lancedb``; a missing peer is reported and skipped)::

    flock /tmp/fc-cpu.lock python bench/filtered.py --json filtered.json
    python bench/filtered.py --quick            # 50,000 x 384, fewer settings: a smoke run
    python bench/filtered.py --quick --engines faiss-flat,lancedb
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

K = 10
THREADS = 2
DIM = 384
N_QUERIES = 256
BUCKETS = 1000
#: (label, threshold t of ``bucket < t``); None is the unfiltered baseline.
FILTERS = (("none", None), ("50%", 500), ("10%", 100), ("1%", 10), ("0.1%", 1))
LEVEL = 0.95
ENGINES = ("flatcoat-f32", "flatcoat-int8", "flatcoat-ivf", "faiss-flat", "faiss-ivf", "usearch", "lancedb")
_HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- data and truth

def data_dir(n: int, seed: int) -> Path:
    root = Path(os.environ.get("FLATCOAT_BENCH_CACHE", Path.home() / ".cache" / "flatcoat-bench"))
    return root / f"filtered-n{n}-d{DIM}-q{N_QUERIES}-s{seed}"


def exact_filtered(base: np.ndarray, queries: np.ndarray, allowed: np.ndarray, k: int = K,
                   chunk: int = 32768) -> np.ndarray:
    """Exact top-k ids (q, k) by inner product in float64 over the rows ``allowed`` (sorted positions).

    Ties by the smaller id; rows past the allowed count are -1 (never the case here: every filter
    allows at least k rows).
    """
    q64 = queries.astype(np.float64)
    nq = q64.shape[0]
    best_s = np.full((nq, 0), -np.inf)
    best_i = np.empty((nq, 0), dtype=np.int64)
    for s in range(0, allowed.size, chunk):
        rows = allowed[s:s + chunk]
        sc = q64 @ base[rows].astype(np.float64).T
        kk = min(k, rows.size)
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk] if kk < rows.size else \
            np.broadcast_to(np.arange(rows.size), (nq, rows.size))
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, axis=1)], axis=1)
        best_i = np.concatenate([best_i, rows[part]], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_i = np.take_along_axis(best_i, order, axis=1)
    if best_i.shape[1] < k:
        pad = k - best_i.shape[1]
        best_i = np.concatenate([best_i, np.full((nq, pad), -1, dtype=np.int64)], axis=1)
    return best_i


def prepare(n: int, seed: int, log) -> Path:
    """Writes base, queries, bucket and the exact filtered top-k per filter (cached by n and seed)."""
    out = data_dir(n, seed)
    done = out / "done"
    if done.is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(_HERE.parent))  # the bench package (data helpers), not flatcoat's sources
    from bench.datasets import clustered

    t0 = time.perf_counter()
    base, queries = clustered(n, DIM, n_queries=N_QUERIES, seed=seed)
    bucket = np.random.default_rng([seed, 15]).integers(0, BUCKETS, size=n, dtype=np.int64)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "bucket.npy", bucket)
    log(f"data: {n:,} x {DIM} clustered + bucket in {time.perf_counter() - t0:.1f} s")
    for label, t in FILTERS:
        t0 = time.perf_counter()
        allowed = np.arange(n, dtype=np.int64) if t is None else np.flatnonzero(bucket < t)
        np.save(out / f"truth-{t}.npy", exact_filtered(base, queries, allowed))
        log(f"  exact filtered top-{K} ({label}, {allowed.size:,} rows) in {time.perf_counter() - t0:.1f} s")
    done.write_text("ok")
    return out


def load(ddir: Path):
    base = np.load(ddir / "base.npy")
    queries = np.load(ddir / "queries.npy")
    bucket = np.load(ddir / "bucket.npy")
    truths = {t: np.load(ddir / f"truth-{t}.npy") for _, t in FILTERS}
    return base, queries, bucket, truths


# ----------------------------------------------------------------------------- measuring

TIE = 1e-6  # float64 score gap below float32 resolution at |score| <= 1: either id is a correct answer


def recall_and_exact(found: np.ndarray, truth: np.ndarray, base: np.ndarray, queries: np.ndarray):
    """(recall@k, rows holding exactly the truth's k ids, rows exact up to ties).

    -1 never matches. A row "exact up to ties" holds other ids than the truth only where their float64
    scores equal the truth's (sorted) within ``TIE``: a near-tie at rank k that float32 cannot order.
    """
    found = np.asarray(found)[:, :K]
    hit = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    hits = hit.any(axis=2).sum(axis=1)
    strict = int((hits == K).sum())
    tied = strict
    for r in np.flatnonzero(hits < K):
        if (found[r] < 0).any():
            continue
        q = queries[r].astype(np.float64)
        got = np.sort(base[found[r]].astype(np.float64) @ q)
        want = np.sort(base[truth[r]].astype(np.float64) @ q)
        tied += int(np.abs(got - want).max() < TIE and np.unique(found[r]).size == K)
    return float(hits.sum() / truth.size), strict, tied


class Bench:
    """Times ``one(q) -> ids`` over single queries and ``batch(qs) -> ids`` over all of them."""

    def __init__(self, base: np.ndarray, queries: np.ndarray, truths: Dict, q1: int, budget_s: float):
        self.base, self.queries, self.truths, self.q1, self.budget = base, queries, truths, q1, budget_s
        self.rows: List[dict] = []

    def measure(self, setting: str, label: str, t: Optional[int], one: Callable, batch: Callable) -> dict:
        qs = self.queries
        t0 = time.perf_counter()
        ids = np.asarray(batch(qs))
        first = time.perf_counter() - t0
        r, exact, tied = recall_and_exact(ids, self.truths[t], self.base, qs)
        for q in qs[:3]:  # warm caches and lazy paths
            one(q)
        times = []
        spent = 0.0
        for q in qs[:self.q1]:
            t0 = time.perf_counter()
            one(q)
            dt = time.perf_counter() - t0
            times.append(dt)
            spent += dt
            if spent > self.budget and len(times) >= 10:
                break
        batch_times = [first]  # the first call counts once caches are warm; keep it only if nothing else fits
        spent = first
        for _ in range(3):
            if spent > self.budget:
                break
            t0 = time.perf_counter()
            batch(qs)
            dt = time.perf_counter() - t0
            batch_times.append(dt)
            spent += dt
        if len(batch_times) > 1:
            batch_times = batch_times[1:]
        times = np.asarray(times)
        row = {"setting": setting, "filter": label, "recall": round(r, 4), "exact_rows": exact,
               "exact_up_to_ties": tied,
               "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
               "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
               "q1_n": int(times.size), "batch_qps": round(qs.shape[0] / float(np.median(batch_times)), 1),
               "batch_n": len(batch_times)}
        self.rows.append(row)
        print(f"  {setting:<34} {label:>5}: recall {row['recall']:.4f} exact {exact:>3}({tied})/{qs.shape[0]}  "
              f"p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms  batch {row['batch_qps']:9.1f} q/s",
              file=sys.stderr, flush=True)
        return row


def predicate(t: Optional[int]):
    return None if t is None else {"bucket": {"$lt": t}}


# ----------------------------------------------------------------------------- engines

def run_flatcoat_dense(data, bench: Bench, quick: bool, storage: str) -> dict:
    import flatcoat

    flatcoat.set_num_threads(THREADS)
    base, _, bucket, _ = data
    t0 = time.perf_counter()
    index = flatcoat.DenseIndex(DIM, metric="ip", storage=storage, keep_float=storage != "f32")
    index.add(base, attributes={"bucket": bucket})
    build = time.perf_counter() - t0
    name = f"flatcoat DenseIndex {storage}"
    for label, t in FILTERS:
        f = predicate(t)
        one = (lambda q, f=f: index.search(q, k=K, filter=f)[1])
        bench.measure(name, label, t, one, one)
        if storage == "int8":
            one = (lambda q, f=f: index.search(q, k=K, filter=f, rerank=50)[1])
            bench.measure(f"{name} rerank=50", label, t, one, one)
        if storage == "f32" and t is not None:
            one = (lambda q, t=t: index.search(q, k=K, filter=np.flatnonzero(bucket < t))[1])
            bench.measure(f"{name} (id allow-list)", label, t, one, one)
    return {"build_s": round(build, 1), "version": flatcoat.__version__, "info": flatcoat.info()}


def run_flatcoat_f32(data, bench, quick):
    return run_flatcoat_dense(data, bench, quick, "f32")


def run_flatcoat_int8(data, bench, quick):
    return run_flatcoat_dense(data, bench, quick, "int8")


def run_flatcoat_ivf(data, bench: Bench, quick: bool) -> dict:
    import flatcoat

    flatcoat.set_num_threads(THREADS)
    base, _, bucket, _ = data
    t0 = time.perf_counter()
    index = flatcoat.IVFIndex(DIM, metric="ip", storage="pq4", keep_float=True)
    index.add(base, attributes={"bucket": bucket})
    build = time.perf_counter() - t0
    settings = [(None, None)] + [(p, r) for p in ((8, 32) if quick else (4, 8, 16, 32, 64, 128))
                                 for r in ((40, 100) if quick else (40, 100, 200))]
    for label, t in FILTERS:
        f = predicate(t)
        for nprobe, rr in settings:
            if nprobe is None:
                setting = "flatcoat IVF pq4 (defaults)"
                one = (lambda q, f=f: index.search(q, k=K, filter=f)[1])
            else:
                setting = f"flatcoat IVF pq4 nprobe={nprobe} rerank={rr}"
                one = (lambda q, f=f, p=nprobe, r=rr: index.search(q, k=K, filter=f, nprobe=p, rerank=r)[1])
            bench.measure(setting, label, t, one, one)
    return {"build_s": round(build, 1), "nlist": index.nlist, "version": flatcoat.__version__}


def _faiss_bitmap(bucket: np.ndarray, t: Optional[int]):
    """(selector, the bits it points into) for ``bucket < t``; None for no filter."""
    import faiss

    if t is None:
        return None, None
    bits = np.packbits(bucket < t, bitorder="little")
    return faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits)), bits


def run_faiss_flat(data, bench: Bench, quick: bool) -> dict:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    base, _, bucket, _ = data
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(DIM)
    index.add(base)
    build = time.perf_counter() - t0

    def search(qs, t):
        sel, bits = _faiss_bitmap(bucket, t)
        params = None if sel is None else faiss.SearchParameters(sel=sel)
        ids = index.search(np.atleast_2d(qs), K, params=params)[1]
        del bits
        return ids

    for label, t in FILTERS:
        one = (lambda q, t=t: search(q, t))
        bench.measure("faiss IndexFlatIP + IDSelectorBitmap", label, t, one, one)
    return {"build_s": round(build, 1), "version": faiss.__version__}


def run_faiss_ivf(data, bench: Bench, quick: bool) -> dict:
    import faiss

    faiss.omp_set_num_threads(THREADS)
    base, _, bucket, _ = data
    n = base.shape[0]
    nlist = int(4 * np.sqrt(n))
    train = base[np.random.default_rng(3).choice(n, size=min(n, 64 * nlist), replace=False)]
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(DIM)
    flat = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    flat.train(train)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    flat.add(base)
    build_flat = train_s + time.perf_counter() - t0
    t0 = time.perf_counter()
    fs = faiss.IndexIVFPQFastScan(quantizer, DIM, nlist, DIM // 2, 4, faiss.METRIC_INNER_PRODUCT)
    refined = faiss.IndexRefineFlat(fs)  # fast-scan PQ plus a float copy for the exact re-ranking
    refined.train(train)  # the shared quantizer is trained already: only the PQ codebooks
    refined.add(base)
    build_pq = train_s + time.perf_counter() - t0

    def ivf_params(sel, nprobe):
        return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None else \
            faiss.SearchParametersIVF(nprobe=nprobe)

    def search_flat(qs, t, nprobe):
        sel, bits = _faiss_bitmap(bucket, t)
        ids = flat.search(np.atleast_2d(qs), K, params=ivf_params(sel, nprobe))[1]
        del bits
        return ids

    def search_pq(qs, t, nprobe, kf):
        sel, bits = _faiss_bitmap(bucket, t)
        params = faiss.IndexRefineSearchParameters(k_factor=kf, base_index_params=ivf_params(sel, nprobe))
        ids = refined.search(np.atleast_2d(qs), K, params=params)[1]
        del bits
        return ids

    nprobes = (16, 64, 256) if quick else (8, 16, 32, 64, 128, 256, 512, 1024)
    for label, t in FILTERS:
        for p in nprobes:
            if p > nlist:
                continue
            one = (lambda q, t=t, p=p: search_flat(q, t, p))
            bench.measure(f"faiss IVFFlat nprobe={p}", label, t, one, one)
        for p in nprobes:
            for kf in ((4, 16) if quick else (4, 16)):
                if p > nlist:
                    continue
                one = (lambda q, t=t, p=p, kf=kf: search_pq(q, t, p, kf))
                bench.measure(f"faiss IVF-PQfs+RFlat nprobe={p} k_factor={kf}", label, t, one, one)
    return {"build_s": {"IVFFlat": round(build_flat, 1), "IVF-PQfs+RFlat": round(build_pq, 1)},
            "nlist": nlist, "train_vectors": int(train.shape[0]), "version": faiss.__version__}


def run_usearch(data, bench: Bench, quick: bool) -> dict:
    import usearch
    from usearch.index import Index, MetricKind, search

    base, _, bucket, _ = data
    if "filter" not in Index.search.__code__.co_varnames and "predicate" not in Index.search.__code__.co_varnames:
        note = f"usearch {usearch.__version__}: Index.search takes no filter; exact search over gathered allowed rows"
    else:
        note = f"usearch {usearch.__version__} has a filter argument now: this runner does not use it yet"

    def exact(qs, t):
        if t is None:
            return np.atleast_2d(search(base, qs, K, MetricKind.IP, exact=True, threads=THREADS).keys)
        rows = np.flatnonzero(bucket < t)
        keys = np.atleast_2d(search(base[rows], qs, K, MetricKind.IP, exact=True, threads=THREADS).keys)
        keys = keys.astype(np.int64)
        return np.where((keys >= 0) & (keys < rows.size), rows[np.clip(keys, 0, rows.size - 1)], -1)

    for label, t in FILTERS:
        one = (lambda q, t=t: exact(q, t))
        bench.measure("usearch exact, gathered rows", label, t, one, one)
    return {"build_s": 0.0, "note": note, "version": usearch.__version__}


def run_lancedb(data, bench: Bench, quick: bool) -> dict:
    import lancedb
    import pyarrow as pa

    base, _, bucket, _ = data
    n = base.shape[0]
    out: dict = {"version": lancedb.__version__}
    with tempfile.TemporaryDirectory(dir=os.environ.get("FLATCOAT_BENCH_TMP")) as tmp:
        db = lancedb.connect(tmp)
        t0 = time.perf_counter()
        table = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(base.reshape(-1)), DIM),
                          "bucket": pa.array(bucket)})
        tbl = db.create_table("vectors", data=table)
        del table
        gc.collect()
        out["write_s"] = round(time.perf_counter() - t0, 1)

        def query(qs, t, tune):
            qs = np.atleast_2d(qs)
            s = tbl.search(qs[0] if qs.shape[0] == 1 else qs).distance_type("dot").limit(K)
            s = s.select(["id", "_distance"])
            if t is not None:
                s = s.where(f"bucket < {t}", prefilter=True)
            s = tune(s)
            res = s.to_arrow()
            ids = res.column("id").to_numpy()
            if qs.shape[0] == 1:
                qi = np.zeros(ids.size, dtype=np.int64)
            else:
                qi = res.column("query_index").to_numpy()
            outi = np.full((qs.shape[0], K), -1, dtype=np.int64)
            dist = res.column("_distance").to_numpy()
            order = np.lexsort((ids, dist, qi))  # per query, best first
            qi, ids = qi[order], ids[order]
            rank = np.arange(qi.size) - np.searchsorted(qi, qi)
            keep = rank < K
            outi[qi[keep], rank[keep]] = ids[keep]
            return outi

        for label, t in FILTERS:
            one = (lambda q, t=t: query(q, t, lambda s: s))
            bench.measure("lancedb flat (no index)", label, t, one, one)

        t0 = time.perf_counter()
        parts = max(1, int(np.sqrt(n)))
        tbl.create_index(metric="dot", index_type="IVF_PQ", num_partitions=parts, num_sub_vectors=DIM // 8)
        out["ivfpq_build_s"] = round(time.perf_counter() - t0, 1)
        out["ivfpq_partitions"] = parts
        grid = ((10, 10), (40, 50)) if quick else ((10, 10), (40, 10), (10, 50), (40, 50), (100, 50))
        for label, t in FILTERS:
            for p, r in grid:
                def tune(s, p=p, r=r):
                    s = s.minimum_nprobes(p).maximum_nprobes(0)
                    return s.refine_factor(r) if r else s
                one = (lambda q, t=t, tune=tune: query(q, t, tune))
                bench.measure(f"lancedb IVF_PQ nprobes>={p} refine={r}", label, t, one, one)
    return out


RUNNERS = {"flatcoat-f32": run_flatcoat_f32, "flatcoat-int8": run_flatcoat_int8, "flatcoat-ivf": run_flatcoat_ivf,
           "faiss-flat": run_faiss_flat, "faiss-ivf": run_faiss_ivf, "usearch": run_usearch, "lancedb": run_lancedb}
EXACT_PREFIXES = ("flatcoat DenseIndex f32", "faiss IndexFlatIP", "usearch exact", "lancedb flat")


# ----------------------------------------------------------------------------- driver

def child(args) -> int:
    data = load(Path(args.data_dir))
    bench = Bench(data[0], data[1], data[3], args.q1, args.budget)
    try:
        result = RUNNERS[args.child](data, bench, args.quick)
    except ImportError as exc:
        result = {"skipped": f"not installed ({exc})"}
    result["rows"] = bench.rows
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result, default=str))
    return 0


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def git_head() -> str:
    root = str(_HERE.parent)
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "cpp", "python"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes under cpp/ or python/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ceilings_quick() -> str:
    """``flatcoat bench --quick`` (the machine's ceilings line and kernel table), run here, in this run."""
    try:
        out = subprocess.run(["flatcoat", "bench", "--quick"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"flatcoat bench --quick failed: {exc}"
    text = out.stdout.strip()
    return text if out.returncode == 0 else f"flatcoat bench --quick failed (exit {out.returncode}): " \
                                             f"{out.stderr.strip()[-400:]}"


def bitmap_cost(bucket: np.ndarray) -> Dict[str, float]:
    """Median ms of ``np.packbits(bucket < t, bitorder="little")`` per filter (what a peer's filter costs)."""
    out = {}
    for label, t in FILTERS:
        if t is None:
            continue
        ts = []
        for _ in range(20):
            t0 = time.perf_counter()
            np.packbits(bucket < t, bitorder="little")
            ts.append(time.perf_counter() - t0)
        out[label] = round(float(np.median(ts)) * 1e3, 3)
    return out


def _fmt(x, spec):
    return "n/a" if x is None else format(x, spec)


def flat_table(results: Dict[str, dict]) -> List[str]:
    """Exact and flat rows: one line per engine setting and filter, with the speed-up over unfiltered."""
    lines = ["| engine | filter | Q=1 p50 ms | Q=1 p99 ms | speed-up vs unfiltered (Q=1) | Q=256 q/s | "
             "recall@10 | exact rows (up to ties) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, res in results.items():
        rows = res.get("rows", [])
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        for s in settings:
            if not (s.startswith(EXACT_PREFIXES) or s.startswith("flatcoat DenseIndex")):
                continue
            mine = [r for r in rows if r["setting"] == s]
            base = next((r for r in rows if r["filter"] == "none" and
                         r["setting"] == s.replace(" (id allow-list)", "")), None)
            for r in mine:
                up = f"{base['p50_ms'] / r['p50_ms']:.1f}x" if base and r["filter"] != "none" else ""
                lines.append(f"| {s} | {r['filter']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {up} | "
                             f"{r['batch_qps']:.1f} | {r['recall']:.4f} | {r['exact_rows']}/{N_QUERIES} "
                             f"({r['exact_up_to_ties']}) |")
    return lines


def family(setting: str) -> str:
    """The engine a sweep row belongs to (its setting without the swept parameters)."""
    for cut in (" nprobe=", " nprobes>=", " (defaults)"):
        if cut in setting:
            return setting.split(cut)[0]
    return setting


def best_at(rows: List[dict], key: str, better, level: float = LEVEL) -> Optional[dict]:
    ok = [r for r in rows if r["recall"] >= level]
    return better(ok, key=lambda r: r[key]) if ok else None


def equal_recall(results: Dict[str, dict], level: float = LEVEL) -> (List[str], Dict):
    """Per filter: every engine family's best Q=1 p50 and batch rate at recall >= level."""
    lines = [f"| filter | engine | best Q=1 p50 ms (recall, setting) | best Q=256 q/s (recall, setting) |",
             "|---|---|---:|---:|"]
    fam_rows: Dict[str, List[dict]] = {}
    for res in results.values():
        for r in res.get("rows", []):
            fam_rows.setdefault(family(r["setting"]), []).append(r)
    summary = {}
    for label, _ in FILTERS:
        summary[label] = {}
        for fam, rows in fam_rows.items():
            rs = [r for r in rows if r["filter"] == label]
            if not rs:
                continue
            lat, thr = best_at(rs, "p50_ms", min, level), best_at(rs, "batch_qps", max, level)
            summary[label][fam] = (lat, thr)
            if lat is None:
                top = max(rs, key=lambda r: r["recall"])
                lines.append(f"| {label} | {fam} | not reached (best recall {top['recall']:.4f}) | |")
                continue
            lines.append(f"| {label} | {fam} | {lat['p50_ms']:.3f} ({lat['recall']:.3f}, "
                         f"{lat['setting'].replace(fam, '').strip() or '-'}) | {thr['batch_qps']:.1f} "
                         f"({thr['recall']:.3f}, {thr['setting'].replace(fam, '').strip() or '-'}) |")
    return lines, summary


def targets(results: Dict[str, dict], summary: Dict) -> List[str]:
    lines = ["| target | filter | value | met |", "|---|---|---|---|"]
    rows = [r for res in results.values() for r in res.get("rows", [])]

    def get(setting, label):
        return next((r for r in rows if r["setting"] == setting and r["filter"] == label), None)

    for setting in ("flatcoat DenseIndex f32", "flatcoat DenseIndex f32 (id allow-list)"):
        for label, _ in FILTERS:
            r = get(setting, label)
            if r is None:
                continue
            ok = r["exact_up_to_ties"] == N_QUERIES
            lines.append(f"| {setting}: exactly the filtered top-10 | {label} | recall {r['recall']:.4f}, "
                         f"{r['exact_rows']}/{N_QUERIES} rows exact, {r['exact_up_to_ties']} up to float32 "
                         f"ties | {'yes' if ok else 'NO'} |")
    for storage in ("f32", "int8", "int8 rerank=50"):
        base = get(f"flatcoat DenseIndex {storage}", "none")
        for label in ("1%", "0.1%"):
            r = get(f"flatcoat DenseIndex {storage}", label)
            if base is None or r is None:
                continue
            up, upb = base["p50_ms"] / r["p50_ms"], r["batch_qps"] / base["batch_qps"]
            lines.append(f"| {storage} filtered >= 10x faster than unfiltered | {label} | Q=1 {up:.1f}x "
                         f"({base['p50_ms']:.2f} -> {r['p50_ms']:.2f} ms); Q=256 {upb:.1f}x | "
                         f"{'yes' if up >= 10 else 'NO'} |")
    ivf = "flatcoat IVF pq4"
    for label, _ in FILTERS:
        rs = [r for r in rows if family(r["setting"]) == ivf and r["filter"] == label]
        if not rs:
            continue
        d = next((r for r in rs if r["setting"].endswith("(defaults)")), None)
        top = max(rs, key=lambda r: r["recall"])
        ok = top["recall"] >= LEVEL
        dtxt = f"defaults {d['recall']:.4f}; " if d else ""
        lines.append(f"| IVF recall@10 >= {LEVEL} | {label} | {dtxt}best {top['recall']:.4f} "
                     f"({top['setting'].replace(ivf, '').strip()}) | {'yes' if ok else 'NO'} |")
        lat, thr = summary.get(label, {}).get(ivf, (None, None))
        peers = {f: v for f, v in summary.get(label, {}).items() if not f.startswith("flatcoat") and v[0] is not None}
        if lat is None or not peers:
            continue
        pl = min(peers.items(), key=lambda kv: kv[1][0]["p50_ms"])
        pt = max(peers.items(), key=lambda kv: kv[1][1]["batch_qps"])
        rl, rt = pl[1][0]["p50_ms"] / lat["p50_ms"], thr["batch_qps"] / pt[1][1]["batch_qps"]
        lines.append(f"| IVF faster than every peer at recall >= {LEVEL} | {label} | Q=1 {rl:.2f}x vs {pl[0]} "
                     f"({pl[1][0]['p50_ms']:.3f} vs {lat['p50_ms']:.3f} ms); Q=256 {rt:.2f}x vs {pt[0]} "
                     f"({pt[1][1]['batch_qps']:.0f} vs {thr['batch_qps']:.0f} q/s) | "
                     f"{'yes' if rl > 1 and rt > 1 else 'NO'} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=None, help="base vectors (default 1,000,000; --quick 50,000)")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--q1", type=int, default=None, help="single queries timed per setting (default 100; --quick 30)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per setting for the Q=1 loop and for batch repeats (default 15; --quick 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N = 50,000, fewer settings: a smoke run")
    p.add_argument("--json", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.n = args.n or (50_000 if args.quick else 1_000_000)
    args.q1 = args.q1 or (30 if args.quick else 100)
    args.budget = args.budget or (3.0 if args.quick else 15.0)
    if args.child:
        return child(args)
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"--engines: unknown {unknown}; expected some of {ENGINES}")
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))
    command = " ".join(shlex.quote(a) for a in sys.argv)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    cpu, head = cpu_model(), git_head()
    load_start = os.getloadavg()
    log("flatcoat bench --quick ...")
    ceilings = ceilings_quick()
    log(ceilings)
    ddir = prepare(args.n, args.seed, log)
    bucket = np.load(ddir / "bucket.npy")
    allowed = {label: (args.n if t is None else int((bucket < t).sum())) for label, t in FILTERS}
    bits_ms = bitmap_cost(bucket)
    del bucket
    results: Dict[str, dict] = {}
    for name in engines:
        cmd = [sys.executable, __file__, "--child", name, "--data-dir", str(ddir), "--n", str(args.n),
               "--q1", str(args.q1), "--budget", str(args.budget)] + (["--quick"] if args.quick else [])
        log(f"{name} ...")
        t0 = time.perf_counter()
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            results[name] = {"skipped": f"failed (exit {out.returncode}); see its stderr above", "rows": []}
        else:
            results[name] = json.loads(line[len("RESULT "):])
        results[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        log(f"{name}: done in {results[name]['wall_s']:.0f} s")

    load_end = os.getloadavg()
    print("# flatcoat filtered search benchmark\n")
    print(f"- command: `{command}`")
    print(f"- date: {started}; CPU: {cpu}, {os.cpu_count()} CPUs; {THREADS} threads for every engine; "
          f"repo at {head}")
    print(f"- data: bench.datasets.clustered({args.n:,}, {DIM}), {N_QUERIES} queries, seed {args.seed}; "
          f"filters `bucket < t` on a uniform bucket in [0, {BUCKETS}): "
          + ", ".join(f"{label} = {c:,} rows" for label, c in allowed.items()))
    print(f"- load average (1, 5, 15 min) at the start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}, "
          f"at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} (other work on this machine)")
    print(f"- k = {K}; Q=1: p50/p99 over up to {args.q1} single queries; Q=256: one call, median of up to 3; "
          f"recall@10 and exact rows against the float64 exact filtered top-10 over all {N_QUERIES} queries")
    print(f"- every timed call builds its filter (flatcoat: the predicate dict; FAISS: numpy compare + packbits "
          f"+ IDSelectorBitmap; LanceDB: the where string; usearch: the gather). numpy compare + packbits "
          f"alone: " + ", ".join(f"{k} {v} ms" for k, v in bits_ms.items()))
    for name, res in results.items():
        if "skipped" in res:
            print(f"- {name}: skipped: {res['skipped']}")
            continue
        extra = {k: v for k, v in res.items() if k not in ("rows", "info", "peak_rss_bytes")}
        print(f"- {name}: {json.dumps(extra, default=str)}; peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    print("\n## Ceilings (`flatcoat bench --quick`, same run)\n")
    print(ceilings.splitlines()[0] if ceilings else "")
    print(next((l for l in ceilings.splitlines() if l.startswith("ceilings")), ""))
    print("\n## Flat (exhaustive) search\n")
    print("\n".join(flat_table(results)))
    eq_lines, summary = equal_recall(results)
    print(f"\n## Equal recall: best setting at recall@10 >= {LEVEL}\n")
    print("\n".join(eq_lines))
    print("\n## Targets\n")
    print("\n".join(targets(results, summary)))
    if args.json:
        report = {"command": command, "date": started, "cpu": cpu, "repo": head, "args": vars(args), "k": K,
                  "threads": THREADS, "load_average": [load_start, load_end], "allowed_rows": allowed, "bitmap_ms": bits_ms, "ceilings": ceilings,
                  "results": results}
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
