"""Dense exhaustive search, side by side: flatcoat vs numpy, FAISS and usearch.

One run, one machine, the same clustered data (``bench/datasets.py``) for
every library, every library on the same number of threads:

* numpy: matmul (gemv for Q = 1) + argpartition, in 32k-row chunks for a batch
  (``datasets.exact_knn``), the naive way;
* FAISS: ``IndexFlatIP``; ``IndexScalarQuantizer`` ``QT_8bit`` and
  ``QT_fp16``; ``IndexBinaryFlat`` over sign bits, then exact float32
  re-ranking of its ``R`` best in numpy;
* usearch: exact (brute-force) search, ``usearch.index.search(..., exact=True)``
  over float32 and over int8 (int8 codes ``round(x * 127 / max|x|)``, one
  global scale, the best a user of usearch's exact path can do);
* flatcoat ``DenseIndex``: f32, f16, bf16, bf16 + rerank(R), int8,
  int8 + rerank(R), binary, binary + rerank(R).

For each: bytes per vector scanned, Q = 1 latency (median and p99 over
``--q1`` single queries), Q = 256 throughput (median of repeats), recall@10
against exact float32, and the distance to this machine's ceilings measured
in the same run (``bench/ceilings.py``): Q = 1 as the fraction of the
all-threads read bandwidth (bytes scanned / latency / GB/s), Q = 256 as the
fraction of the best float32 matmul GFLOP/s (2 * N * dim * Q / time / GFLOP/s,
the same nominal FLOPs for every storage, so quantized rows can exceed 1).

``--builds`` times only the adds instead: flatcoat f32, int8 and binary next
to FAISS ``IndexFlatIP``, ``SQ8`` (train + add) and ``IndexBinaryFlat`` (sign
bits packed by numpy + add) on the same data, each pair timed alternately
(median of ``--repeats``), every index freed before the next is built.

Usage::

    python bench/dense.py --quick                 # about a minute, N = 100k
    python bench/dense.py --builds --data normal  # add times only, standard normal rows
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE nice python bench/dense.py --json out.json

Peak memory at the default N = 1M, dim 384: the data (1.5 GB) plus one peer's
index at a time (at most about 2 GB: flatcoat int8/binary keep a float copy
for re-ranking); each peer is freed before the next is built.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np

# The repository root, for the sibling bench modules (flatcoat itself is the installed package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import ceilings  # noqa: E402
from bench.datasets import clustered, exact_knn, recall_at_k  # noqa: E402

BINARY_DEPTHS = (10, 20, 50, 100, 200, 500, 1000)
BINARY_DEPTHS_BEYOND = (2000, 5000)
INT8_RERANK = 50
TARGET_RECALL_BINARY = 0.95


@dataclass
class Result:
    name: str
    family: str                     # f32, f16, int8, binary: what the targets compare
    bytes_per_vec: float            # bytes of the index scanned per stored vector
    build_s: float = float("nan")
    q1_p50_ms: float = float("nan")
    q1_p99_ms: float = float("nan")
    q256_qps: float = float("nan")
    recall: float = float("nan")
    q1_bytes: float = float("nan")  # bytes read for one query (scan + re-ranking gathers)
    bw_frac: float = float("nan")
    flop_frac: float = float("nan")
    note: str = ""
    extra: Dict = field(default_factory=dict)


def time_method(res: Result, fn: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, gt: np.ndarray,
                n: int, dim: int, ceil: dict, q1: int, repeats: int, batch_budget_s: float) -> Result:
    """Measures Q = 1 latency, Q = nq throughput and recall of ``fn(queries) -> ids (q, >=k)``."""
    nq = queries.shape[0]
    for i in range(2):  # warm: page-in, thread pools, lazy init
        fn(queries[i:i + 1])
    ts = []
    for i in range(q1):
        q = queries[i % nq:i % nq + 1]
        t0 = time.perf_counter()
        fn(q)
        ts.append(time.perf_counter() - t0)
    res.q1_p50_ms = float(np.median(ts) * 1e3)
    res.q1_p99_ms = float(np.percentile(ts, 99) * 1e3)
    times, ids = [], None
    spent = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        ids = fn(queries)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > batch_budget_s:
            break
    tb = float(np.median(times))
    res.q256_qps = nq / tb
    res.recall = recall_at_k(np.asarray(ids), gt, 10)
    if np.isnan(res.q1_bytes):
        res.q1_bytes = res.bytes_per_vec * n
    res.bw_frac = res.q1_bytes / (res.q1_p50_ms / 1e3) / (ceil["memory"]["best_gbps"] * 1e9)
    res.flop_frac = 2.0 * n * dim * nq / tb / (ceil["matmul"]["best_gflops"] * 1e9)
    res.extra["batch_repeats"] = len(times)
    return res


# ---------------------------------------------------------------------------- peers

def numpy_peer(base, k):
    def fn(q):
        if q.shape[0] == 1:
            s = base @ q[0]
            top = np.argpartition(-s, k - 1)[:k]
            return top[np.argsort(-s[top], kind="stable")][None, :]
        return exact_knn(base, q, k)[1]
    return fn


def faiss_rerank(base, queries, cand, k):
    """Exact float32 re-ranking of candidate ids (q, R), one gather + gemv per query."""
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for i in range(queries.shape[0]):
        c = cand[i][cand[i] >= 0]
        s = base[c] @ queries[i]
        top = np.argpartition(-s, k - 1)[:k] if len(c) > k else np.arange(len(c))
        out[i] = c[top[np.argsort(-s[top], kind="stable")]]
    return out


#: flatcoat storage -> its FAISS peer in the add-time comparison (--builds).
BUILD_PEERS = {"f32": "faiss IndexFlatIP", "int8": "faiss SQ8", "binary": "faiss IndexBinaryFlat"}


def build_times(base: np.ndarray, repeats: int, threads: int, log) -> List[dict]:
    """Seconds to build each flatcoat storage of BUILD_PEERS and its FAISS peer from ``base``
    (median of ``repeats``; the pair alternates so both meet the same memory state)."""
    import faiss

    import flatcoat

    faiss.omp_set_num_threads(threads)
    flatcoat.set_num_threads(threads)
    dim = base.shape[1]

    def faiss_build(storage):
        if storage == "f32":
            index = faiss.IndexFlatIP(dim)
        elif storage == "int8":
            index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            index.train(base)
        else:
            index = faiss.IndexBinaryFlat(dim)
            index.add(np.packbits(base > 0, axis=1))
            return index
        index.add(base)
        return index

    def flatcoat_build(storage):
        index = flatcoat.DenseIndex(dim, metric="ip", storage=storage)
        index.add(base)
        return index

    def timed(build, storage):
        t0 = time.perf_counter()
        index = build(storage)
        seconds = time.perf_counter() - t0
        del index
        gc.collect()
        return seconds

    rows = []
    for storage, peer in BUILD_PEERS.items():
        ours, theirs = [], []
        for _ in range(repeats):
            ours.append(timed(flatcoat_build, storage))
            theirs.append(timed(faiss_build, storage))
        log(f"  flatcoat {storage}: {ours} s; {peer}: {theirs} s")
        rows.append({"storage": storage, "flatcoat_s": float(np.median(ours)), "peer": peer,
                     "peer_s": float(np.median(theirs)), "flatcoat_runs": ours, "peer_runs": theirs})
    return rows


def build_table(rows: List[dict]) -> str:
    lines = ["| flatcoat storage | flatcoat add s | FAISS peer | peer add s | flatcoat / peer |",
             "|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['storage']} | {r['flatcoat_s']:.2f} | {r['peer']} | {r['peer_s']:.2f} | "
                     f"{r['flatcoat_s'] / r['peer_s']:.2f} |")
    return "\n".join(lines)


def run_builds(args) -> int:
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.data == "normal":
        base = np.random.default_rng(args.seed).standard_normal((args.n, args.dim), dtype=np.float32)
    else:
        base, _ = clustered(args.n, args.dim, n_queries=1, seed=args.seed)
    rows = build_times(base, args.repeats, args.threads, log)
    print("# flatcoat add times\n")
    print(f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; CPU: {cpu_model()}, "
          f"{os.cpu_count()} CPUs; threads for every library: {args.threads}")
    print(f"- data: {args.data}, N = {args.n:,}, dim = {args.dim}, seed {args.seed}; median of {args.repeats}\n")
    print(build_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "cpu": cpu_model(), "builds": rows}, f, indent=2)
    return 0


def run(args) -> dict:
    import faiss
    import usearch
    import usearch.index as uindex

    import flatcoat

    threads = args.threads
    faiss.omp_set_num_threads(threads)
    flatcoat.set_num_threads(threads)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(threads)
    except ImportError:
        pass

    n, dim, k, nq = args.n, args.dim, 10, args.nq
    log = (lambda *a: print(*a, file=sys.stderr, flush=True))
    log("ceilings ...")
    ceil = ceilings.measure(bandwidth_bytes=(1 << 30), repeats=3 if args.quick else 5)
    log(ceilings.format_report(ceil))

    log(f"data: clustered n={n} dim={dim} nq={nq} seed={args.seed} ...")
    t0 = time.perf_counter()
    base, queries = clustered(n, dim, n_queries=nq, seed=args.seed)
    _, gt = exact_knn(base, queries, k)
    log(f"  {time.perf_counter() - t0:.1f} s")

    common = dict(queries=queries, gt=gt, n=n, dim=dim, ceil=ceil, q1=args.q1, repeats=args.repeats,
                  batch_budget_s=args.batch_budget)
    results: List[Result] = []
    only = set(args.only.split(",")) if args.only else None

    def want(name):
        return only is None or any(o in name for o in only)

    def record(res):
        results.append(res)
        log(f"  {res.name}: q1 {res.q1_p50_ms:.2f} ms, q{nq} {res.q256_qps:.1f} q/s, recall {res.recall:.4f}, "
            f"build {res.build_s:.1f} s")

    # --- numpy
    if want("numpy"):
        log("numpy ...")
        record(time_method(Result("numpy matmul+argpartition", "f32", dim * 4, build_s=0.0),
                           numpy_peer(base, k), **common))

    # --- FAISS flat and scalar quantizers
    def faiss_index(name, family, make, bytes_per_vec):
        if not want(name):
            return
        log(f"{name} ...")
        t0 = time.perf_counter()
        index = make()
        if not index.is_trained:
            index.train(base)
        index.add(base)
        build = time.perf_counter() - t0
        res = time_method(Result(name, family, bytes_per_vec, build_s=build),
                          lambda q: index.search(q, k)[1], **common)
        record(res)
        del index
        gc.collect()

    faiss_index("faiss IndexFlatIP", "f32", lambda: faiss.IndexFlatIP(dim), dim * 4)
    faiss_index("faiss SQ fp16", "f16",
                lambda: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT),
                dim * 2)
    faiss_index("faiss SQ8", "int8",
                lambda: faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT),
                dim)

    # --- FAISS binary + rerank (depth chosen after the flatcoat sweep; measured at the end)
    # --- usearch exact
    if want("usearch f32"):
        log("usearch exact f32 ...")
        fn = (lambda q: np.atleast_2d(uindex.search(base, q, k, uindex.MetricKind.IP, exact=True,
                                                    threads=threads).keys))
        record(time_method(Result("usearch exact f32", "f32", dim * 4, build_s=0.0), fn, **common))
    if want("usearch i8"):
        log("usearch exact i8 ...")
        t0 = time.perf_counter()
        scale = 127.0 / float(np.abs(base).max())
        base_i8 = np.clip(np.rint(base * scale), -127, 127).astype(np.int8)
        build = time.perf_counter() - t0

        def fn(q):
            qi = np.clip(np.rint(q * scale), -127, 127).astype(np.int8)
            return np.atleast_2d(uindex.search(base_i8, qi, k, uindex.MetricKind.IP, exact=True,
                                               threads=threads).keys)
        record(time_method(Result("usearch exact i8", "int8", dim, build_s=build), fn, **common))
        del base_i8
        gc.collect()

    # --- flatcoat
    def fc_build(storage, keep_float=False):
        t0 = time.perf_counter()
        index = flatcoat.DenseIndex(dim, metric="ip", storage=storage, keep_float=keep_float)
        index.add(base)
        return index, time.perf_counter() - t0

    code_bytes = {"f32": dim * 4, "f16": dim * 2, "bf16": dim * 2, "int8": dim, "binary": (dim + 63) // 64 * 8}
    for storage in ("f32", "f16", "bf16"):
        if want(f"flatcoat {storage}"):
            log(f"flatcoat {storage} ...")
            index, build = fc_build(storage)
            record(time_method(Result(f"flatcoat {storage}", storage, code_bytes[storage], build_s=build),
                               lambda q: index.search(q, k)[1], **common))
            del index
            gc.collect()
    if want("flatcoat bf16+rerank"):
        # bf16 keeps 8 significant bits: on clustered data its own top-10 misses ~1% of the exact one.
        # Re-ranking a short list from a float copy restores it; the scan still reads 2 bytes a dim.
        log("flatcoat bf16+rerank ...")
        index, build = fc_build("bf16", keep_float=True)
        r = Result(f"flatcoat bf16+rerank({INT8_RERANK})", "bf16", dim * 2, build_s=build,
                   q1_bytes=n * dim * 2 + INT8_RERANK * dim * 4, note="+ float copy (dim*4 B/vec) kept")
        record(time_method(r, lambda q: index.search(q, k, rerank=INT8_RERANK)[1], **common))
        del index
        gc.collect()
    if want("flatcoat int8"):
        log("flatcoat int8 ...")
        index, build = fc_build("int8", keep_float=True)
        record(time_method(Result("flatcoat int8", "int8", dim, build_s=build),
                           lambda q: index.search(q, k)[1], **common))
        r = Result(f"flatcoat int8+rerank({INT8_RERANK})", "int8", dim, build_s=build,
                   q1_bytes=n * dim + INT8_RERANK * dim * 4, note="+ float copy (dim*4 B/vec) kept")
        record(time_method(r, lambda q: index.search(q, k, rerank=INT8_RERANK)[1], **common))
        del index
        gc.collect()

    sweep = []
    best_depth = None
    if want("flatcoat binary"):
        log("flatcoat binary ...")
        index, build = fc_build("binary", keep_float=True)
        bb = code_bytes["binary"]
        record(time_method(Result("flatcoat binary (no rerank)", "binary", bb, build_s=build),
                           lambda q: index.search(q, k)[1], **common))
        depths = list(BINARY_DEPTHS)
        sweep_common = dict(common, q1=max(10, args.q1 // 2), repeats=1)
        for depth in depths + list(BINARY_DEPTHS_BEYOND):
            if depth > n:
                break
            if depth in BINARY_DEPTHS_BEYOND and best_depth is not None:
                break
            r = Result(f"flatcoat binary+rerank({depth})", "binary", bb, build_s=build,
                       q1_bytes=n * bb + depth * dim * 4)
            time_method(r, lambda q, d=depth: index.search(q, k, rerank=d)[1], **sweep_common)
            sweep.append(r)
            log(f"  R={depth}: recall {r.recall:.4f}, q1 {r.q1_p50_ms:.2f} ms, {r.q256_qps:.0f} q/s")
            if best_depth is None and r.recall >= TARGET_RECALL_BINARY:
                best_depth = depth
        chosen = best_depth if best_depth is not None else min(depths[-1], n)
        r = Result(f"flatcoat binary+rerank({chosen})", "binary", bb, build_s=build,
                   q1_bytes=n * bb + chosen * dim * 4, note="+ float copy (dim*4 B/vec) kept")
        record(time_method(r, lambda q: index.search(q, k, rerank=chosen)[1], **common))
        r.extra["depth"] = chosen
        del index
        gc.collect()
    else:
        chosen = 200

    if want("faiss binary"):
        log(f"faiss IndexBinaryFlat+rerank({chosen}) ...")
        t0 = time.perf_counter()
        bindex = faiss.IndexBinaryFlat(dim)
        bindex.add(np.packbits(base > 0, axis=1))
        build = time.perf_counter() - t0

        def fn(q, depth=chosen):
            _, cand = bindex.search(np.packbits(q > 0, axis=1), depth)
            return faiss_rerank(base, q, cand, k)
        r = Result(f"faiss IndexBinaryFlat+rerank({chosen})", "binary", dim / 8, build_s=build,
                   q1_bytes=n * dim / 8 + chosen * dim * 4, note="re-ranked in numpy, base held as float")
        record(time_method(r, fn, **common))
        del bindex
        gc.collect()

    return {"results": results, "sweep": sweep, "best_depth": best_depth, "ceilings": ceil,
            "flatcoat": flatcoat.info(), "faiss": faiss.__version__, "usearch": usearch.__version__,
            "numpy": np.__version__}


# ---------------------------------------------------------------------------- report

def _fmt(x, spec):
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def table(results: List[Result], nq: int) -> str:
    head = (f"| method | B/vec scanned | build s | Q=1 p50 ms | Q=1 p99 ms | Q=1 % of BW | Q={nq} q/s | "
            f"Q={nq} % of matmul | recall@10 | note |")
    lines = [head, "|" + "|".join(["---"] * 10) + "|"]
    for r in results:
        lines.append(
            f"| {r.name} | {_fmt(r.bytes_per_vec, 'g')} | {_fmt(r.build_s, '.1f')} | {_fmt(r.q1_p50_ms, '.2f')} | "
            f"{_fmt(r.q1_p99_ms, '.2f')} | {_fmt(r.bw_frac * 100, '.0f')}% | {_fmt(r.q256_qps, '.1f')} | "
            f"{_fmt(r.flop_frac * 100, '.1f')}% | {_fmt(r.recall, '.4f')} | {r.note} |")
    return "\n".join(lines)


def sweep_table(sweep: List[Result], nq: int) -> str:
    lines = [f"| R | recall@10 | Q=1 p50 ms | Q={nq} q/s |", "|---|---|---|---|"]
    for r in sweep:
        depth = r.name.split("(")[1].rstrip(")")
        lines.append(f"| {depth} | {r.recall:.4f} | {r.q1_p50_ms:.2f} | {r.q256_qps:.1f} |")
    return "\n".join(lines)


def targets(results: List[Result]) -> List[dict]:
    by = {r.name: r for r in results}
    out = []

    def add(what, value, goal, ok, detail):
        out.append({"target": what, "value": value, "goal": goal, "met": ok, "detail": detail})

    f32 = by.get("flatcoat f32")
    peers_f32 = [r for r in results if r.family == "f32" and not r.name.startswith("flatcoat")]
    if f32 and peers_f32:
        fast1 = min(peers_f32, key=lambda r: r.q1_p50_ms)
        v = fast1.q1_p50_ms / f32.q1_p50_ms
        add("f32 Q=1 vs fastest peer f32", v, ">= 1.0", v >= 1.0, f"{fast1.name} {fast1.q1_p50_ms:.2f} ms vs "
            f"{f32.q1_p50_ms:.2f} ms")
        add("f32 Q=1 fraction of bandwidth", f32.bw_frac, ">= 0.70", f32.bw_frac >= 0.70, "")
        fastb = max(peers_f32, key=lambda r: r.q256_qps)
        v = f32.q256_qps / fastb.q256_qps
        add("f32 Q=256 vs fastest peer f32", v, ">= 1.0", v >= 1.0, f"{fastb.name} {fastb.q256_qps:.1f} q/s vs "
            f"{f32.q256_qps:.1f} q/s")
    i8, sq8 = by.get("flatcoat int8"), by.get("faiss SQ8")
    if f32 and i8:
        v = f32.q1_p50_ms / i8.q1_p50_ms
        rec_ok = sq8 is None or i8.recall >= sq8.recall
        add("int8 Q=1 vs flatcoat f32 (recall >= SQ8)", v, ">= 2.5 and recall >= SQ8", v >= 2.5 and rec_ok,
            f"recall {i8.recall:.4f} vs SQ8 {sq8.recall if sq8 else float('nan'):.4f}")
    if i8 and sq8:
        v = i8.q256_qps / sq8.q256_qps
        add("int8 Q=256 vs FAISS SQ8", v, ">= 5.0", v >= 5.0, f"{i8.q256_qps:.1f} vs {sq8.q256_qps:.1f} q/s")
    bf16 = [r for r in results if r.family == "bf16" and r.name.startswith("flatcoat")]
    if f32 and bf16:  # issue 12: the fastest bf16 row that keeps recall@10 >= 0.999
        b = max(bf16, key=lambda r: (r.recall >= 0.999, r.q256_qps))
        v = b.q256_qps / f32.q256_qps
        add(f"{b.name} Q=256 vs flatcoat f32 (recall >= 0.999)", v, ">= 1.6 and recall >= 0.999",
            v >= 1.6 and b.recall >= 0.999, f"recall {b.recall:.4f}")
    binr = [r for r in results if r.name.startswith("flatcoat binary+rerank")]
    if f32 and binr:
        b = binr[-1]
        v = f32.q1_p50_ms / b.q1_p50_ms
        add(f"{b.name} Q=1 vs flatcoat f32 (recall >= 0.95)", v, ">= 10 and recall >= 0.95",
            v >= 10 and b.recall >= TARGET_RECALL_BINARY, f"recall {b.recall:.4f}")
    return out


def targets_table(ts: List[dict]) -> str:
    lines = ["| target | value | goal | met | detail |", "|---|---|---|---|---|"]
    for t in ts:
        lines.append(f"| {t['target']} | {t['value']:.2f} | {t['goal']} | {'yes' if t['met'] else 'NO'} | "
                     f"{t['detail']} |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def git_state() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "cpp"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + (" + uncommitted changes under cpp/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="flatcoat dense search vs numpy, FAISS, usearch")
    p.add_argument("--n", type=int, default=None, help="base vectors (default 1,000,000; --quick 100,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--nq", type=int, default=256, help="batch size of the throughput run (default 256)")
    p.add_argument("--q1", type=int, default=None, help="single queries timed (default 50; --quick 20)")
    p.add_argument("--repeats", type=int, default=None, help="batch repeats, median (default 3; --quick 1)")
    p.add_argument("--batch-budget", type=float, default=20.0,
                   help="stop repeating a batch after this many seconds (slow peers run once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N = 100k, fewer repeats: about a minute")
    p.add_argument("--only", help="comma-separated substrings of method names to run")
    p.add_argument("--json", help="write all numbers to this file")
    p.add_argument("--builds", action="store_true",
                   help="time only the adds of flatcoat f32, int8, binary and their FAISS peers")
    p.add_argument("--data", choices=("clustered", "normal"), default="clustered",
                   help="--builds data: the clustered set or standard normal rows (default clustered)")
    args = p.parse_args(argv)
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.q1 = args.q1 or (20 if args.quick else 50)
    args.repeats = args.repeats or (1 if args.quick else 3)

    if args.builds:
        return run_builds(args)
    command = " ".join(shlex.quote(a) for a in sys.argv)
    env_bl = ceilings.openblas_env()
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out = run(args)
    results, nq = out["results"], args.nq
    ts = targets(results)
    ceil = out["ceilings"]
    mem, mm = ceil["memory"], ceil["matmul"]

    print("# flatcoat dense benchmark\n")
    print(f"- command: `{command}` (OPENBLAS env: {env_bl})")
    print(f"- date: {started}; CPU: {cpu_model()}, {os.cpu_count()} CPUs; threads for every library: {args.threads}")
    print(f"- data: clustered unit vectors (bench/datasets.py), N = {args.n:,}, dim = {args.dim}, k = 10, "
          f"Q=1 over {args.q1} queries, Q={nq} median of up to {args.repeats} repeats, seed {args.seed}")
    print(f"- versions: flatcoat {out['flatcoat']['version']} (isa {out['flatcoat']['isa']}), faiss {out['faiss']}, "
          f"usearch {out['usearch']}, numpy {out['numpy']}; repo at {git_state()}")
    print("- ceilings: read bandwidth "
          + ", ".join(f"{t} thr {g:.1f} GB/s" for t, g in mem["gbps"].items())
          + f" ({mem['method']}; numpy int64 sum {mem['numpy_sum_int64_gbps']:.1f}); float32 matmul "
          + ", ".join(f"{s} {g:.0f} GFLOP/s" for s, g in mm["gflops"].items())
          + f"; fractions use {mem['best_gbps']:.1f} GB/s and {mm['best_gflops']:.0f} GFLOP/s")
    for b in ceil["blas"]:
        print(f"- BLAS loaded: {b.get('prefix')} {b.get('version')} kernel={b.get('architecture')} "
              f"threads={b.get('num_threads')}")
    print()
    print(table(results, nq))
    if out["sweep"]:
        print(f"\nBinary re-ranking depth (flatcoat binary, keep_float=True): smallest R with recall@10 >= "
              f"{TARGET_RECALL_BINARY}: {out['best_depth'] if out['best_depth'] else 'not reached'}\n")
        print(sweep_table(out["sweep"], nq))
    print("\nTargets (ratios from this run):\n")
    print(targets_table(ts))

    if args.json:
        def enc(r):
            return r.__dict__
        with open(args.json, "w") as f:
            json.dump({"command": command, "date": started, "cpu": cpu_model(), "args": vars(args),
                       "openblas_env": env_bl, "results": [enc(r) for r in results],
                       "sweep": [enc(r) for r in out["sweep"]], "best_depth": out["best_depth"],
                       "targets": ts, "ceilings": ceil, "flatcoat": out["flatcoat"], "faiss": out["faiss"],
                       "usearch": out["usearch"], "numpy": out["numpy"]}, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
