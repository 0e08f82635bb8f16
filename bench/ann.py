"""Approximate dense search side by side: flatcoat IVFIndex against FAISS, ScaNN, usearch and hnswlib.

Every engine runs in its own child process (so build time, peak memory and
resident bytes are its own) on the same data, 2 threads, k = 10, and is swept
over its search parameters. For each setting: recall@10 against exact search,
single-query latency (p50 and p99 over every query, one at a time) and batch
throughput (all queries in one call, median of 3). The summary gives, at
recall@10 >= 0.90, 0.95 and 0.99, each engine's best p50 and best batch rate
and flatcoat's ratio to the best peer.

Data (``--data``):

* ``tokens``: the 1,242,251 real MiniLM token vectors of SciFact
  (``bench/scifact_vectors.py`` builds the cache), inner product, 1,000 query
  token vectors drawn (seeded) from the test queries' tokens;
* ``clustered``: ``bench.datasets.clustered(1_000_000, 384)``, 1,000 queries.

Runs against the installed flatcoat. Peers: ``pip install faiss-cpu
scann==1.4.2 usearch hnswlib`` (a missing one is reported and skipped)::

    python bench/ann.py --data tokens --json ann_tokens.json --plot ann_tokens.png
    python bench/ann.py --data tokens --engines flatcoat,faiss-ivfpq --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

K = 10
THREADS = 2
RECALL_LEVELS = (0.90, 0.95, 0.99)
ENGINES = ("flatcoat", "flatcoat-aniso", "faiss-ivfpq", "scann", "usearch", "hnswlib", "faiss-hnsw")
_HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- data

def load_data(name: str, n_queries: int, limit: Optional[int] = None):
    """(base (n, d) float32, queries (q, d) float32, metric) for ``name``."""
    sys.path.insert(0, str(_HERE.parent))  # the bench package (data helpers), not flatcoat's sources
    if name == "tokens":
        from bench.scifact_vectors import load

        arrays = load()
        base = arrays["tokens"] if limit is None else arrays["tokens"][:limit]
        pool = arrays["query_tokens"]
        pick = np.random.default_rng(7).choice(pool.shape[0], size=min(n_queries, pool.shape[0]), replace=False)
        return np.ascontiguousarray(base), np.ascontiguousarray(pool[np.sort(pick)]), "ip"
    if name == "clustered":
        from bench.datasets import clustered

        base, queries = clustered(limit or 1_000_000, 384, n_queries=n_queries, seed=0)
        return base, queries, "ip"
    raise SystemExit(f"--data: expected tokens or clustered, got {name!r}")


def exact_neighbours(base: np.ndarray, queries: np.ndarray, cache: Path) -> np.ndarray:
    """Exact top-k ids (flatcoat's exhaustive f32 search, itself tested against numpy), cached."""
    if cache.is_file():
        ids = np.load(cache)
        if ids.shape == (queries.shape[0], K):
            return ids
    import flatcoat

    index = flatcoat.DenseIndex(base.shape[1], metric="ip", storage="f32")
    index.add(base)
    _, ids = index.search(queries, k=K)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, ids)
    return ids


# ----------------------------------------------------------------------------- measuring

def _rss_anon() -> int:
    """Anonymous resident bytes (heap, not file-backed maps such as the memory-mapped data)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def measure(search_one: Callable, search_batch: Callable, queries: np.ndarray, truth: np.ndarray) -> dict:
    ids = search_batch(queries)
    r = recall(np.asarray(ids), truth)
    for q in queries[:20]:  # warm caches and lazy paths
        search_one(q)
    times = np.empty(queries.shape[0])
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        search_one(q)
        times[i] = time.perf_counter() - t0
    batch = []
    for _ in range(3):
        t0 = time.perf_counter()
        search_batch(queries)
        batch.append(time.perf_counter() - t0)
    return {
        "recall": round(r, 4),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
        "batch_qps": round(queries.shape[0] / float(np.median(batch)), 1),
    }


# ----------------------------------------------------------------------------- engines

def run_flatcoat(base, queries, truth, quick, anisotropic_threshold=None):
    import flatcoat

    flatcoat.set_num_threads(THREADS)
    n, d = base.shape
    t0 = time.perf_counter()
    index = flatcoat.IVFIndex(d, metric="ip", storage="pq4", keep_float=True,
                              anisotropic_threshold=anisotropic_threshold)
    index.add(base)
    build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=os.environ.get("FLATCOAT_BENCH_TMP")) as tmp:
        path = Path(tmp) / "ivf.idx"
        index.save(path)
        nlist = index.nlist
        del index
        gc.collect()
        before = _rss_anon()
        index = flatcoat.load(path, mmap=True)  # the float copy stays on disk
        resident = index.resident_nbytes
        rows = []
        nprobes = (8, 16, 32) if quick else (4, 8, 16, 32, 64, 128)
        reranks = (40, 100) if quick else (20, 40, 100, 200)
        for nprobe in nprobes:
            for rr in reranks:
                one = lambda q, p=nprobe, r=rr: index.search(q, k=K, nprobe=p, rerank=r)[1]
                m = measure(one, one, queries, truth)
                rows.append({"setting": f"nprobe={nprobe} rerank={rr}", **m})
        rss = _rss_anon() - before
    return {"build_s": round(build, 1), "nlist": nlist, "resident_bytes_per_vector": round(resident / n, 1),
            "rss_anon_bytes_per_vector": round(rss / n, 1), "rows": rows}


def run_faiss_ivfpq(base, queries, truth, quick):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    n, d = base.shape
    nlist = int(4 * np.sqrt(n))
    before = _rss_anon()
    t0 = time.perf_counter()
    index = faiss.index_factory(d, f"IVF{nlist},PQ{d // 2}x4fs,RFlat", faiss.METRIC_INNER_PRODUCT)
    index.train(base)
    index.add(base)
    build = time.perf_counter() - t0
    rss = _rss_anon() - before
    ivf = faiss.extract_index_ivf(index)
    rows = []
    for nprobe in ((16, 64) if quick else (8, 16, 32, 64, 128)):
        for kf in ((16,) if quick else (4, 8, 16)):
            ivf.nprobe = nprobe
            index.k_factor = kf
            one = lambda q: index.search(q[None, :], K)[1]
            batch = lambda qs: index.search(qs, K)[1]
            rows.append({"setting": f"nprobe={nprobe} k_factor={kf}", **measure(one, batch, queries, truth)})
    return {"build_s": round(build, 1), "rss_anon_bytes_per_vector": round(rss / n, 1), "rows": rows}


def run_faiss_hnsw(base, queries, truth, quick):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    n, d = base.shape
    before = _rss_anon()
    t0 = time.perf_counter()
    index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(base)
    build = time.perf_counter() - t0
    rss = _rss_anon() - before
    rows = []
    for ef in ((64, 128) if quick else (32, 64, 128, 256)):
        index.hnsw.efSearch = ef
        one = lambda q: index.search(q[None, :], K)[1]
        batch = lambda qs: index.search(qs, K)[1]
        rows.append({"setting": f"HNSW32 ef={ef}", **measure(one, batch, queries, truth)})
    return {"build_s": round(build, 1), "rss_anon_bytes_per_vector": round(rss / n, 1), "rows": rows}


def run_scann(base, queries, truth, quick):
    import scann

    n, d = base.shape
    leaves = int(2 * np.sqrt(n))
    before = _rss_anon()
    t0 = time.perf_counter()
    searcher = (
        scann.scann_ops_pybind.builder(base, K, "dot_product")
        .tree(num_leaves=leaves, num_leaves_to_search=32, training_sample_size=min(n, 250_000))
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(100)
        .set_n_training_threads(THREADS)
        .build()
    )
    build = time.perf_counter() - t0
    rss = _rss_anon() - before
    rows = []
    for search_leaves in ((32, 128) if quick else (16, 32, 64, 128)):
        for reorder in ((40, 100) if quick else (40, 100, 200)):
            one = lambda q, s=search_leaves, r=reorder: searcher.search(q, final_num_neighbors=K,
                                                                       leaves_to_search=s, pre_reorder_num_neighbors=r)[0]
            batch = lambda qs, s=search_leaves, r=reorder: searcher.search_batched_parallel(
                qs, final_num_neighbors=K, leaves_to_search=s, pre_reorder_num_neighbors=r, batch_size=256)[0]
            rows.append({"setting": f"leaves={search_leaves} reorder={reorder}", **measure(one, batch, queries, truth)})
    return {"build_s": round(build, 1), "num_leaves": leaves, "rss_anon_bytes_per_vector": round(rss / n, 1),
            "rows": rows}


def run_usearch(base, queries, truth, quick):
    from usearch.index import Index

    n, d = base.shape
    before = _rss_anon()
    t0 = time.perf_counter()
    index = Index(ndim=d, metric="ip", dtype="f32", connectivity=16, expansion_add=128)
    index.add(np.arange(n), base, threads=THREADS)
    build = time.perf_counter() - t0
    rss = _rss_anon() - before
    rows = []
    for ef in ((64, 128) if quick else (32, 64, 128, 256)):
        index.expansion_search = ef
        one = lambda q: index.search(q, K, threads=1).keys
        batch = lambda qs: index.search(qs, K, threads=THREADS).keys
        rows.append({"setting": f"M=16 ef={ef}", **measure(one, batch, queries, truth)})
    return {"build_s": round(build, 1), "rss_anon_bytes_per_vector": round(rss / n, 1), "rows": rows}


def run_hnswlib(base, queries, truth, quick):
    import hnswlib

    n, d = base.shape
    before = _rss_anon()
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=d)
    index.init_index(max_elements=n, M=16, ef_construction=128, random_seed=0)
    index.set_num_threads(THREADS)
    index.add_items(base, np.arange(n))
    build = time.perf_counter() - t0
    rss = _rss_anon() - before
    rows = []
    for ef in ((64, 128) if quick else (32, 64, 128, 256)):
        index.set_ef(ef)
        one = lambda q: index.knn_query(q[None, :], k=K, num_threads=1)[0]
        batch = lambda qs: index.knn_query(qs, k=K, num_threads=THREADS)[0]
        rows.append({"setting": f"M=16 ef={ef}", **measure(one, batch, queries, truth)})
    return {"build_s": round(build, 1), "rss_anon_bytes_per_vector": round(rss / n, 1), "rows": rows}


def run_flatcoat_aniso(base, queries, truth, quick):
    """The same with ScaNN's anisotropic loss (threshold 0.2, as ScaNN's score_ah above)."""
    return run_flatcoat(base, queries, truth, quick, anisotropic_threshold=0.2)


RUNNERS = {
    "flatcoat": run_flatcoat, "flatcoat-aniso": run_flatcoat_aniso, "faiss-ivfpq": run_faiss_ivfpq, "faiss-hnsw": run_faiss_hnsw,
    "scann": run_scann, "usearch": run_usearch, "hnswlib": run_hnswlib,
}


# ----------------------------------------------------------------------------- driver

def child(args) -> int:
    base, queries, _ = load_data(args.data, args.queries, args.limit)
    truth = np.load(args.truth)
    try:
        result = RUNNERS[args.child](base, queries, truth, args.quick)
    except ImportError as exc:
        result = {"skipped": f"not installed ({exc})"}
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result))
    return 0


def best_at(rows: List[dict], level: float, key: str, better) -> Optional[dict]:
    ok = [r for r in rows if r["recall"] >= level]
    return better(ok, key=lambda r: r[key]) if ok else None


def summarise(results: Dict[str, dict]) -> List[str]:
    lines = []
    for level in RECALL_LEVELS:
        lines.append(f"\nrecall@10 >= {level:.2f}")
        lines.append(f"  {'engine':<12} {'Q=1 p50 ms':>11} {'p99 ms':>8} {'setting':<28} {'batch q/s':>10} {'setting':<28}")
        fastest = {}
        for name, res in results.items():
            rows = res.get("rows", [])
            lat = best_at(rows, level, "p50_ms", min)
            thr = best_at(rows, level, "batch_qps", max)
            fastest[name] = (lat, thr)
            if lat is None:
                lines.append(f"  {name:<12} {'not reached':>11}")
                continue
            lines.append(f"  {name:<12} {lat['p50_ms']:>11.3f} {lat['p99_ms']:>8.3f} {lat['setting']:<28} "
                         f"{thr['batch_qps']:>10.0f} {thr['setting']:<28}")
        ours_all = [v for n, v in fastest.items() if n.startswith("flatcoat") and v[0] is not None]
        peers = {n: v for n, v in fastest.items() if not n.startswith("flatcoat") and v[0] is not None}
        if ours_all and peers:
            ours = (min((v[0] for v in ours_all), key=lambda r: r["p50_ms"]),
                    max((v[1] for v in ours_all), key=lambda r: r["batch_qps"]))
            best_lat = min(v[0]["p50_ms"] for v in peers.values())
            best_thr = max(v[1]["batch_qps"] for v in peers.values())
            lines.append(f"  flatcoat / best peer (above 1: flatcoat ahead): Q=1 p50 speed "
                         f"{best_lat / ours[0]['p50_ms']:.2f}x, batch {ours[1]['batch_qps'] / best_thr:.2f}x")
    lines.append("\nbuild and memory")
    for name, res in results.items():
        if "skipped" in res:
            lines.append(f"  {name:<12} skipped: {res['skipped']}")
            continue
        extra = f", resident {res['resident_bytes_per_vector']} B/vector" if "resident_bytes_per_vector" in res else ""
        lines.append(f"  {name:<12} build {res['build_s']} s, heap growth {res['rss_anon_bytes_per_vector']} B/vector"
                     f"{extra}, peak RSS {res['peak_rss_bytes'] / 2**30:.2f} GiB")
    return lines


def frontier(rows: List[dict], key: str, better) -> List[dict]:
    """The settings no other setting beats on both recall and ``key`` (the curve an engine offers)."""
    out, best = [], None
    for r in sorted(rows, key=lambda r: -r["recall"]):
        if best is None or better(r[key], best) == r[key] and r[key] != best:
            out.append(r)
            best = r[key]
    return out[::-1]


def plot(results: Dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, res in results.items():
        rows = res.get("rows", [])
        if not rows:
            continue
        for ax, key, better in ((axes[0], "p50_ms", min), (axes[1], "batch_qps", max)):
            front = frontier(rows, key, better)
            ax.plot([r["recall"] for r in front], [r[key] for r in front], "o-", label=name)
    axes[0].set(xlabel="recall@10", ylabel="Q=1 p50 (ms)", yscale="log", title=title)
    axes[1].set(xlabel="recall@10", ylabel="batch queries/s", yscale="log", title=title)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="tokens", choices=("tokens", "clustered"))
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="use only the first N base vectors (quick checks)")
    p.add_argument("--quick", action="store_true", help="fewer settings per engine")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None, help="draw the recall/latency and recall/throughput curves here")
    p.add_argument("--replot", default=None, metavar="JSON", help="only draw --plot from a report written by --json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--truth", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.replot:
        report = json.loads(Path(args.replot).read_text())
        plot(report["results"], args.plot, f"{report['data']}, k={report['k']}, {report['threads']} threads")
        return 0
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise SystemExit(f"--engines: unknown {unknown}; expected some of {ENGINES}")
    base, queries, _ = load_data(args.data, args.queries, args.limit)
    cache = Path(os.environ.get("FLATCOAT_BENCH_CACHE", Path.home() / ".cache" / "flatcoat-bench"))
    truth_path = cache / f"truth-{args.data}-{base.shape[0]}-{queries.shape[0]}.npy"
    t0 = time.perf_counter()
    exact_neighbours(base, queries, truth_path)
    print(f"{args.data}: {base.shape[0]:,} x {base.shape[1]}, {queries.shape[0]} queries, exact top-{K} in "
          f"{time.perf_counter() - t0:.1f} s; {platform.processor() or platform.machine()}, {THREADS} threads")
    del base, queries
    results = {}
    for name in engines:
        cmd = [sys.executable, __file__, "--data", args.data, "--queries", str(args.queries), "--child", name,
               "--truth", str(truth_path)] + (["--quick"] if args.quick else []) + \
              (["--limit", str(args.limit)] if args.limit else [])
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            results[name] = {"skipped": f"failed (exit {out.returncode}): {out.stderr.strip()[-400:]}"}
        else:
            results[name] = json.loads(line[len("RESULT "):])
        print(f"{name}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        for row in results[name].get("rows", []):
            print(f"  {row['setting']:<28} recall {row['recall']:.4f}  p50 {row['p50_ms']:.3f} ms  "
                  f"p99 {row['p99_ms']:.3f} ms  batch {row['batch_qps']:.0f} q/s", flush=True)
    for line in summarise(results):
        print(line)
    if args.json:
        import flatcoat

        report = {"data": args.data, "k": K, "threads": THREADS, "flatcoat": flatcoat.__version__,
                  "info": flatcoat.info(), "cpu": platform.processor(), "date": time.strftime("%Y-%m-%d"),
                  "results": results}
        Path(args.json).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(results, args.plot, f"{args.data}, k={K}, {THREADS} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
