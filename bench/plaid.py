"""Late interaction at scale, side by side in one run: exact MaxSim, int8 + exact re-ranking,
MUVERA + re-ranking, flatcoat.PlaidIndex and fast-plaid (issue 14's benchmarks).

Two parts:

* **Quality, SciFact** (the bundled all-MiniLM-L6-v2 token vectors as the
  multi-vector stand-in, ``python bench/scifact_vectors.py``; qrels from the
  shared data): nDCG@10 and Recall@100 of exact f32 MaxSim, int8 (plain and
  with ``rerank=``), MUVERA FDE candidates re-ranked by exact MaxSim, and
  PlaidIndex at nbits 1, 2 and 4 (when ``flatcoat.plaid`` imports), with ms
  per query (all test queries in one call).
* **Speed, synthetic** (the ColBERT-like collection of ``bench/maxsim.py``:
  128-d unit tokens around 256 topics, documents of 50..300 tokens, queries of
  32 noisy tokens of one document; 100,000 documents by default): per method,
  p50/p99 latency of single-query calls, queries/s of one batch call with
  every query, recall@10 against exact f32 MaxSim, bytes per token of what
  the method keeps, build time and peak memory (the process's anonymous RSS
  above its level before the build, sampled every 20 ms; the collection
  itself is a memory-mapped file and is not counted). Methods: exhaustive
  f32, int8, int8 + rerank, MUVERA (FDEs in a DenseIndex, re-ranked by the
  exact f32 index) at several depths, PlaidIndex, and fast-plaid on the CPU
  in its own virtualenv (``--fastplaid-python``, default
  ``/root/venvs/fastplaid/bin/python``), run as a child process on the same
  collection saved as .npy (its peak memory is the child's maximum RSS).

The collection and its queries are written once to
``$FLATCOAT_BENCH_CACHE/plaid-synth-n<docs>-s<seed>/`` (``tokens.npy``
float32, ``lengths.npy``, ``queries.npy`` (q, 32, 128)) and memory-mapped by
every method. Threads: 2 unless ``--threads`` (flatcoat, numpy's BLAS and
torch alike).

Usage::

    python bench/plaid.py --quick                  # 10,000 documents, 20 queries, SciFact: a few minutes
    flock /tmp/fc-cpu.lock python bench/plaid.py --json plaid.json      # the full run
    python bench/plaid.py --skip-scifact --docs 1000000 --only-compressed
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
K = 10
DEFAULT_FASTPLAID = "/root/venvs/fastplaid/bin/python"


# ----------------------------------------------------------------------------- measuring


class PeakMemory:
    """Anonymous RSS above the level at ``__enter__``, sampled every 20 ms (bytes; Linux /proc)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def anon() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.anon() - self.base)

    def __enter__(self):
        gc.collect()
        self.base = self.anon()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.anon() - self.base)


def latencies(fn, queries, warm: int = 1):
    """(p50 ms, p99 ms, results) of ``fn(query)`` called once per query (after ``warm`` calls)."""
    for q in queries[:warm]:
        fn(q)
    times, out = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q))
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), out


def recall_at(found, truth, k=K) -> float:
    return float(np.mean([len(set(np.asarray(f)[:k].tolist()) & set(np.asarray(t)[:k].tolist())) / k
                          for f, t in zip(found, truth)]))


def plaid_class():
    """flatcoat.PlaidIndex, or (None, why) while it does not import."""
    try:
        from flatcoat.plaid import PlaidIndex

        return PlaidIndex, None
    except Exception as exc:  # being written by another engineer: report and go on
        return None, f"flatcoat.plaid does not import ({type(exc).__name__}: {exc})"


# ----------------------------------------------------------------------------- SciFact


def scifact_rows(flatcoat, args) -> tuple:
    """(rows, notes) for the SciFact quality table."""
    sys.path.insert(0, str(_HERE.parent))
    from bench.scifact_vectors import DATA, load
    from flatcoat.eval import evaluate, load_beir, run_from_results
    from flatcoat.muvera import FDE, encode_index, search as muvera_search

    arrays = load()
    corpus, queries, qrels = load_beir(DATA, "test")
    dids, qids = list(corpus), list(queries)
    tokens = np.ascontiguousarray(arrays["tokens"], dtype=np.float32)
    lengths = np.asarray(arrays["token_lengths"], dtype=np.int64)
    q_tokens = np.ascontiguousarray(arrays["query_tokens"], dtype=np.float32)
    q_lengths = query_lengths(flatcoat, list(queries.values()), q_tokens.shape[0])
    dim = tokens.shape[1]
    q = (q_tokens, q_lengths)
    depth = 100
    rows, notes = [], []

    def row(name, scores, ids, seconds, build_s, extra=""):
        m = evaluate(run_from_results(qids, scores, ids, dids), qrels, ["ndcg@10", "recall@100"])
        rows.append({"method": name, "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"],
                     "ms_per_query": seconds * 1e3 / len(qids), "build_s": build_s, "note": extra})
        print(f"  {name:34s} nDCG@10 {m['ndcg@10']:.4f} R@100 {m['recall@100']:.4f} "
              f"{seconds * 1e3 / len(qids):8.2f} ms/q", flush=True)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    exact, tb = timed(lambda: _mv(flatcoat, dim, "f32", False, (tokens, lengths)))
    (s, i), t = timed(lambda: exact.search(q, k=depth))
    row("exact MaxSim (f32)", s, i, t, tb)
    int8, tb = timed(lambda: _mv(flatcoat, dim, "int8", True, (tokens, lengths)))
    (s, i), t = timed(lambda: int8.search(q, k=depth))
    row("int8", s, i, t, tb)
    for r in (200, 400):
        (s, i), t = timed(lambda: int8.search(q, k=depth, rerank=r))
        row(f"int8 + rerank={r}", s, i, t, tb)
    del int8
    for params in (dict(k_sim=4, repetitions=10, projection=32), dict(k_sim=5, repetitions=20, projection=16)):
        fde = FDE(dim, **params)
        dense, tb = timed(lambda: encode_index(fde, (tokens, lengths)))
        label = f"MUVERA k_sim={params['k_sim']} R={params['repetitions']} d_proj={params['projection']}"
        for r in (200, 500, 1000):
            (s, i), t = timed(lambda: muvera_search(fde, dense, exact, q, k=depth, rerank=r))
            row(f"{label} + rerank={r}", s, i, t, tb, f"{fde.output_dim}-d FDE, f32")
        del dense
    cls, why = plaid_class()
    if cls is None:
        notes.append(f"PlaidIndex skipped: {why}")
    else:
        for nbits in (1, 2, 4):
            try:
                plaid, tb = timed(lambda: _plaid(cls, dim, nbits, (tokens, lengths)))
                (s, i), t = timed(lambda: plaid.search(q, k=depth))
                row(f"PlaidIndex nbits={nbits} (defaults)", s, i, t, tb)
                del plaid
            except Exception as exc:
                notes.append(f"PlaidIndex nbits={nbits} failed: {type(exc).__name__}: {exc}")
    return rows, notes


def query_lengths(flatcoat, texts, total: int) -> np.ndarray:
    """Token counts of the cached SciFact query tokens (not cached themselves): the stand-in
    encoder's query tokenisation, checked against the cached total."""
    enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    lengths = np.array([t.shape[0] for t in enc.encode_queries(texts)], dtype=np.int64)
    if int(lengths.sum()) != total:
        raise SystemExit(f"query token counts ({int(lengths.sum())}) do not match the cache ({total}); "
                         "rebuild it with python bench/scifact_vectors.py")
    return lengths


def _mv(flatcoat, dim, storage, keep_float, docs):
    index = flatcoat.MultiVectorIndex(dim, storage=storage, keep_float=keep_float)
    index.add(docs)
    return index


def _plaid(cls, dim, nbits, docs):
    index = cls(dim, nbits=nbits)
    index.add(docs)
    return index


# ----------------------------------------------------------------------------- synthetic collection on disk


def synthetic(n_docs: int, n_queries: int, seed: int) -> Path:
    """Writes (once) the bench/maxsim.py collection and queries as .npy files; returns the directory."""
    sys.path.insert(0, str(_HERE.parent))
    from bench.maxsim import DIM, chunks, lengths_for, queries_from

    root = Path(os.environ.get("FLATCOAT_BENCH_CACHE", Path.home() / ".cache" / "flatcoat-bench"))
    directory = root / f"plaid-synth-n{n_docs}-s{seed}"
    done = directory / "done.json"
    if done.is_file() and json.loads(done.read_text()).get("queries", 0) >= n_queries:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    lengths = lengths_for(n_docs, seed)
    t0 = time.perf_counter()
    tokens = np.lib.format.open_memmap(directory / "tokens.npy", mode="w+", dtype=np.float32,
                                       shape=(int(lengths.sum()), DIM))
    at = 0
    for part, lens in chunks(n_docs, seed):
        tokens[at:at + part.shape[0]] = part
        at += part.shape[0]
    tokens.flush()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    queries = np.stack(queries_from(tokens, offsets, n_queries, seed))
    np.save(directory / "lengths.npy", lengths)
    np.save(directory / "queries.npy", queries)
    del tokens
    done.write_text(json.dumps({"docs": n_docs, "queries": n_queries, "seed": seed,
                                "seconds": round(time.perf_counter() - t0, 1)}))
    return directory


def load_synthetic(directory: Path, n_queries: int):
    tokens = np.load(directory / "tokens.npy", mmap_mode="r")
    lengths = np.load(directory / "lengths.npy")
    queries = np.load(directory / "queries.npy")[:n_queries]
    return tokens, lengths, queries


def doc_chunks(tokens, lengths, docs_per_chunk: int = 5000):
    """(tokens (t, dim) float32 copy, lengths) per chunk of documents of the memory-mapped collection."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for d0 in range(0, lengths.size, docs_per_chunk):
        d1 = min(lengths.size, d0 + docs_per_chunk)
        yield np.ascontiguousarray(tokens[offsets[d0]:offsets[d1]]), lengths[d0:d1]


# ----------------------------------------------------------------------------- synthetic: flatcoat


def synthetic_rows(flatcoat, args, directory: Path) -> tuple:
    from flatcoat.muvera import FDE, search as muvera_search

    tokens, lengths, queries = load_synthetic(directory, args.queries)
    n_docs, n_tokens, dim = lengths.size, int(lengths.sum()), tokens.shape[1]
    queries = list(queries)
    batch = queries
    rows, notes = [], []
    truth = None

    def row(method, p50, p99, qps, found, nbytes, build_s, peak, note=""):
        rec = recall_at(found, truth) if truth is not None else 1.0
        rows.append({"docs": n_docs, "method": method, "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
                     "recall_at_10": rec, "bytes_per_token": nbytes / n_tokens, "build_s": build_s,
                     "peak_mb": peak / 2**20 if peak is not None else None, "note": note})
        print(f"  {method:40s} p50 {p50:8.2f} ms p99 {p99:8.2f} ms {qps:8.1f} q/s recall {rec:.3f} "
              f"{nbytes / n_tokens:7.1f} B/tok build {build_s:7.1f} s", flush=True)

    def batch_qps(fn):
        t0 = time.perf_counter()
        out = fn(batch)
        return len(batch) / (time.perf_counter() - t0), out

    def build(make):
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            index = make()
            seconds = time.perf_counter() - t0
        return index, seconds, mem.peak

    def multivector(storage, keep_float):
        index = flatcoat.MultiVectorIndex(dim, storage=storage, keep_float=keep_float)
        for part in doc_chunks(tokens, lengths):
            index.add(part)
        return index

    if not args.only_compressed:
        # Exhaustive f32: the exact reference of every recall, and MUVERA's re-ranking stage.
        exact, tb, peak = build(lambda: multivector("f32", False))
        qps, (_, truth_ids) = batch_qps(lambda qs: exact.search(qs, k=K))
        truth = [t for t in truth_ids]
        p50, p99, found = latencies(lambda q: exact.search(q, k=K)[1][0], queries)
        row("exhaustive f32", p50, p99, qps, found, exact.nbytes, tb, peak)
        np.save(directory / "truth.npy", np.stack(truth))

        # MUVERA: FDEs in a DenseIndex, candidates re-ranked by the exact f32 index.
        for params in args.fde:
            fde = FDE(dim, **params)
            label = f"MUVERA k_sim={params['k_sim']} R={params['repetitions']} d_proj={params['projection']}"

            def make_dense():
                dense = flatcoat.DenseIndex(fde.output_dim, metric="ip", storage="f32")
                for part in doc_chunks(tokens, lengths):
                    dense.add(fde.encode_documents(part))
                return dense

            dense, tb_fde, peak = build(make_dense)
            for r in args.muvera_depths:
                qps, (_, ids) = batch_qps(lambda qs: muvera_search(fde, dense, exact, qs, k=K, rerank=r))
                p50, p99, found = latencies(lambda q: muvera_search(fde, dense, exact, q, k=K, rerank=r)[1][0],
                                            queries)
                row(f"{label} + rerank={r}", p50, p99, qps, found, dense.nbytes + exact.nbytes, tb_fde, peak,
                    f"{fde.output_dim}-d f32 FDEs ({dense.nbytes / n_tokens:.0f} B/tok) + the f32 index; "
                    "build: FDE encoding + dense add (the f32 index's build is its own row)")
            del dense
            gc.collect()
        del exact
        gc.collect()

        # int8, plain and with exact re-ranking from the float copy.
        int8, tb, peak = build(lambda: multivector("int8", True))
        codes_bytes = int8.nbytes - 4 * dim * int8.num_tokens
        qps, _ = batch_qps(lambda qs: int8.search(qs, k=K))
        p50, p99, found = latencies(lambda q: int8.search(q, k=K)[1][0], queries)
        row("exhaustive int8", p50, p99, qps, found, codes_bytes, tb, peak,
            "bytes: codes + scales (the float copy of the rows below not counted)")
        for r in args.int8_depths:
            qps, _ = batch_qps(lambda qs: int8.search(qs, k=K, rerank=r))
            p50, p99, found = latencies(lambda q: int8.search(q, k=K, rerank=r)[1][0], queries)
            row(f"int8 + rerank={r}", p50, p99, qps, found, int8.nbytes, tb, peak, "keep_float=True")
        del int8
        gc.collect()
    elif (directory / "truth.npy").is_file():
        truth = list(np.load(directory / "truth.npy")[:len(queries)])
    else:
        notes.append("no exact reference saved for this collection: recall reported as 1.0 is meaningless")

    cls, why = plaid_class()
    if cls is None:
        notes.append(f"PlaidIndex skipped: {why}")
    else:
        for nbits in args.plaid_nbits:
            try:
                def make_plaid():
                    index = cls(dim, nbits=nbits)
                    for part in doc_chunks(tokens, lengths):
                        index.add(part)
                    return index

                plaid, tb, peak = build(make_plaid)
                for settings in args.plaid_settings:
                    qps, _ = batch_qps(lambda qs: plaid.search(qs, k=K, **settings))
                    p50, p99, found = latencies(lambda q: plaid.search(q, k=K, **settings)[1][0], queries)
                    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
                    row(f"PlaidIndex nbits={nbits} ({shown})", p50, p99, qps, found, plaid.nbytes, tb, peak)
                del plaid
                gc.collect()
            except Exception as exc:
                notes.append(f"PlaidIndex nbits={nbits} failed: {type(exc).__name__}: {exc}")
    if not args.skip_fastplaid:
        rows_fp, notes_fp = fastplaid_rows(args, directory, truth, n_docs, n_tokens)
        rows += rows_fp
        notes += notes_fp
    return rows, notes


# ----------------------------------------------------------------------------- synthetic: fast-plaid (child)


def fastplaid_rows(args, directory: Path, truth, n_docs: int, n_tokens: int) -> tuple:
    python = args.fastplaid_python
    if not Path(python).is_file():
        return [], [f"fast-plaid skipped: {python} does not exist (python -m venv /root/venvs/fastplaid && "
                    "/root/venvs/fastplaid/bin/pip install torch==2.11.0 fast-plaid==1.7.0.2110)"]
    out = directory / "fastplaid-result.json"
    if out.exists():
        out.unlink()
    cmd = [python, str(Path(__file__).resolve()), "--fastplaid-child", str(directory), "--queries", str(args.queries),
           "--threads", str(args.threads), "--fastplaid-nbits", ",".join(map(str, args.fastplaid_nbits)),
           "--fastplaid-kmeans-points", str(args.fastplaid_kmeans_points)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "RAYON_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": ""}
    print("  fast-plaid (child process):", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return [], [f"fast-plaid failed (exit {proc.returncode}): " + " | ".join(tail)]
    result = json.loads(out.read_text())
    rows = []
    for r in result["rows"]:
        rec = recall_at(r["ids"], truth) if truth is not None else float("nan")
        rows.append({"docs": n_docs, "method": r["method"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                     "batch_qps": r["batch_qps"], "recall_at_10": rec, "bytes_per_token": r["index_bytes"] / n_tokens,
                     "build_s": r["build_s"], "peak_mb": r["peak_mb"], "note": r["note"]})
        print(f"  {r['method']:40s} p50 {r['p50_ms']:8.2f} ms p99 {r['p99_ms']:8.2f} ms "
              f"{r['batch_qps']:8.1f} q/s recall {rec:.3f} {r['index_bytes'] / n_tokens:7.1f} B/tok "
              f"build {r['build_s']:7.1f} s", flush=True)
    return rows, [f"fast-plaid {result['version']} with torch {result['torch']} (CPU) in {python}"]


def fastplaid_child(directory: Path, n_queries: int, threads: int, nbits_list, kmeans_points: int = 16) -> int:
    """Runs inside the fast-plaid virtualenv (numpy, torch, fast_plaid only): builds and searches
    the collection, writes fastplaid-result.json."""
    import resource
    import shutil

    import torch
    from fast_plaid import search as fp_search

    torch.set_num_threads(threads)
    tokens, lengths, queries = load_synthetic(directory, n_queries)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rows = []
    for nbits in nbits_list:
        index_dir = directory / f"fastplaid-index-nbits{nbits}"
        shutil.rmtree(index_dir, ignore_errors=True)
        docs = [torch.from_numpy(np.array(tokens[offsets[d]:offsets[d + 1]])) for d in range(lengths.size)]
        t0 = time.perf_counter()
        index = fp_search.FastPlaid(index=str(index_dir), device="cpu")
        # k-means as PlaidIndex trains it: 4 iterations (both defaults) on at most `kmeans_points` sampled
        # tokens per centroid (PlaidIndex: 16; fast-plaid's default 256 makes its CPU k-means 16x longer).
        # Both choose 2^floor(log2(16 sqrt(tokens))) centroids (PlaidIndex caps it at 2^16).
        index.create(documents_embeddings=docs, nbits=nbits, kmeans_niters=4, max_points_per_centroid=kmeans_points)
        build_s = time.perf_counter() - t0
        del docs
        gc.collect()
        index_bytes = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
        centroid_files = [f for f in index_dir.rglob("centroids*.npy")]
        ncentroids = int(np.load(centroid_files[0], mmap_mode="r").shape[0]) if centroid_files else None
        qs = [torch.from_numpy(np.ascontiguousarray(q)) for q in queries]
        for probe, full in ((8, 4096), (4, 1024), (2, 256)):
            def one(q):
                return [d for d, _ in index.search(q[None], top_k=K, n_ivf_probe=probe, n_full_scores=full,
                                                   show_progress=False)[0]]
            for q in qs[:1]:
                one(q)
            times, found = [], []
            for q in qs:
                t1 = time.perf_counter()
                found.append(one(q))
                times.append(time.perf_counter() - t1)
            t1 = time.perf_counter()
            index.search(torch.stack(qs), top_k=K, n_ivf_probe=probe, n_full_scores=full, show_progress=False)
            qps = len(qs) / (time.perf_counter() - t1)
            ms = np.array(times) * 1e3
            rows.append({"method": f"fast-plaid nbits={nbits} (n_ivf_probe={probe}, n_full_scores={full})",
                         "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                         "batch_qps": qps, "ids": found, "index_bytes": index_bytes, "build_s": build_s,
                         "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                         "note": f"CPU, torch threads = --threads; {ncentroids} centroids, k-means 4 iterations on "
                                 f"<= {kmeans_points} tokens per centroid; peak: the child's max RSS so far (incl. "
                                 "the collection as torch tensors)"})
        del index
        gc.collect()
    import fast_plaid

    version = getattr(fast_plaid, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("fast-plaid")
    (directory / "fastplaid-result.json").write_text(json.dumps(
        {"rows": rows, "version": version, "torch": torch.__version__}))
    return 0


# ----------------------------------------------------------------------------- synthetic, streamed (1,000,000 documents)
#
# The f32 collection at a million documents is about 90 GB: it is never stored. bench/maxsim.py's chunks
# are seeded one by one, so worker processes generate them in order and the main process streams each
# into PlaidIndex.add and, for the reference, into an exact f32 MaxSim scorer over that chunk (the
# queries' top 10 merged over every chunk: exact MaxSim over the whole collection). Queries and the
# reference are cached in $FLATCOAT_BENCH_CACHE/plaid-stream-n<docs>-s<seed>/, and the built index too.


def _chunk_job(job):
    sys.path.insert(0, str(_HERE.parent))
    from bench.maxsim import chunk

    n_docs, seed, c = job
    os.environ["OMP_NUM_THREADS"] = "1"
    tokens, lens = chunk(n_docs, seed, c)
    return c, tokens, lens


def streamed_chunks(n_docs: int, seed: int, which, workers: int):
    """Yields (c, tokens, lengths) of bench/maxsim.py's chunks `which`, in order, generated by
    `workers` processes at most `workers + 1` chunks ahead (each chunk is about 0.5 GB)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    which = list(which)
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        pending = {}
        ahead = workers + 1
        for i, c in enumerate(which[:ahead]):
            pending[i] = pool.submit(_chunk_job, (n_docs, seed, c))
        for i in range(len(which)):
            result = pending.pop(i).result()
            if i + ahead < len(which):
                pending[i + ahead] = pool.submit(_chunk_job, (n_docs, seed, which[i + ahead]))
            yield result


def streamed_queries(n_docs: int, n_queries: int, seed: int, workers: int) -> np.ndarray:
    """bench/maxsim.py's queries_from over the (never materialised) collection, (q, 32, DIM) float32:
    the same random draws in the same order, the picked tokens read from the chunks that hold them."""
    sys.path.insert(0, str(_HERE.parent))
    from bench.maxsim import CHUNK_DOCS, DIM, Q_TOKENS, _unit, lengths_for

    lengths = lengths_for(n_docs, seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng([seed, 3])
    picks, noises = [], []
    for d in rng.integers(0, n_docs, n_queries):
        a, b = int(offsets[d]), int(offsets[d + 1])
        picks.append(rng.integers(a, b, Q_TOKENS))
        noise = rng.standard_normal((Q_TOKENS, DIM)).astype(np.float32)
        noise *= np.float32(0.3) / np.linalg.norm(noise, axis=1, keepdims=True)
        noises.append(noise)
    rows = np.concatenate(picks)
    chunk_of_doc = np.arange(n_docs) // CHUNK_DOCS
    doc_of_row = np.searchsorted(offsets, rows, side="right") - 1
    needed = sorted(set(chunk_of_doc[doc_of_row].tolist()))
    picked = np.empty((rows.size, DIM), dtype=np.float32)
    for c, tokens, _ in streamed_chunks(n_docs, seed, needed, workers):
        t0 = offsets[c * CHUNK_DOCS]
        mine = chunk_of_doc[doc_of_row] == c
        picked[mine] = tokens[rows[mine] - t0]
    picked = picked.reshape(n_queries, Q_TOKENS, DIM)
    return np.stack([_unit(picked[i] + noises[i]).astype(np.float32) for i in range(n_queries)])


class ExactTop:
    """Exact f32 MaxSim top-k of a query batch over a collection seen chunk by chunk."""

    def __init__(self, flatcoat, queries, k=K):
        self.flatcoat, self.queries, self.k = flatcoat, list(queries), k
        self.scores = np.full((len(self.queries), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(self.queries), 0), dtype=np.int64)

    def update(self, tokens, lens, first_id: int):
        index = self.flatcoat.MultiVectorIndex(tokens.shape[1], storage="f32")
        index.add((tokens, lens), ids=np.arange(first_id, first_id + lens.size, dtype=np.int64))
        s, i = index.search(self.queries, k=self.k)
        scores, ids = np.concatenate([self.scores, s], 1), np.concatenate([self.ids, i], 1)
        order = np.lexsort((ids, -scores), axis=1)[:, :self.k]  # best score first, ties to the smaller id
        self.scores, self.ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def streamed_rows(flatcoat, args) -> tuple:
    sys.path.insert(0, str(_HERE.parent))
    from bench.maxsim import CHUNK_DOCS, lengths_for
    from flatcoat.plaid import PlaidIndex, TRAIN_POINTS_PER_CENTROID, default_ncentroids

    n_docs, seed = args.docs, args.seed
    root = Path(os.environ.get("FLATCOAT_BENCH_CACHE", Path.home() / ".cache" / "flatcoat-bench"))
    directory = root / f"plaid-stream-n{n_docs}-s{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    lengths = lengths_for(n_docs, seed)
    n_tokens = int(lengths.sum())
    n_chunks = (n_docs + CHUNK_DOCS - 1) // CHUNK_DOCS
    rows, notes = [], []

    qfile = directory / f"queries-{args.queries}.npy"
    if qfile.is_file():
        queries = np.load(qfile)
    else:
        t0 = time.perf_counter()
        queries = streamed_queries(n_docs, args.queries, seed, args.workers)
        np.save(qfile, queries)
        print(f"  queries: {time.perf_counter() - t0:.1f} s", flush=True)
    queries = list(queries)
    tfile = directory / f"truth-{args.queries}.npz"
    truth = None
    if tfile.is_file():
        truth = list(np.load(tfile)["ids"])

    for nbits in args.plaid_nbits:
        index_dir = directory / f"plaid-nbits{nbits}"
        build = {}
        if (index_dir / "manifest.json").is_file() and truth is not None and not args.rebuild:
            t0 = time.perf_counter()
            index = flatcoat.load(index_dir, mmap=False)
            build = json.loads((directory / f"plaid-nbits{nbits}-build.json").read_text())
            print(f"  loaded {index_dir} in {time.perf_counter() - t0:.1f} s", flush=True)
            meta = json.loads((index_dir / "manifest.json").read_text())["meta"]
            if "normalize" not in meta:
                # Built before PlaidIndex(normalize=): training never depended on it, and this collection's
                # tokens are unit-norm, so a build today differs only in the flag that training would set.
                index._normalize = True
                notes.append(f"{index_dir.name}: cached before normalize=; set on load (unit-norm tokens)")
        else:
            ncentroids = default_ncentroids(n_tokens)
            need_train = ncentroids * TRAIN_POINTS_PER_CENTROID
            exact = ExactTop(flatcoat, queries) if truth is None else None
            index = PlaidIndex(128, nbits=nbits, ncentroids=ncentroids)
            train_s = add_s = exact_s = 0.0
            held = []
            t_pass = time.perf_counter()
            with PeakMemory() as mem:
                for c, tokens, lens in streamed_chunks(n_docs, seed, range(n_chunks), args.workers):
                    if not index.is_trained:  # train on the first chunks' tokens (about 2 x 900k)
                        held.append((tokens, lens))
                        if sum(t.shape[0] for t, _ in held) < need_train and c + 1 < n_chunks:
                            continue
                        t0 = time.perf_counter()
                        index.train(np.concatenate([t for t, _ in held]))
                        train_s = time.perf_counter() - t0
                        batch, held = held, []
                    else:
                        batch = [(tokens, lens)]
                    for tok, ln in batch:
                        t0 = time.perf_counter()
                        index.add((tok, ln))
                        add_s += time.perf_counter() - t0
                        if exact is not None:
                            t0 = time.perf_counter()
                            exact.update(tok, ln, len(index) - ln.size)
                            exact_s += time.perf_counter() - t0
                    if c % 20 == 0:
                        print(f"  chunk {c + 1}/{n_chunks}: {time.perf_counter() - t_pass:.0f} s (train {train_s:.0f}, "
                              f"add {add_s:.0f}, exact {exact_s:.0f}), RSS anon {PeakMemory.anon() / 2**30:.1f} GiB",
                              flush=True)
                t0 = time.perf_counter()
                nbytes = index.nbytes  # the inverted file, built once for every chunk added
                ivf_s = time.perf_counter() - t0
            build = {"train_s": train_s, "add_s": add_s, "ivf_s": ivf_s, "build_s": train_s + add_s + ivf_s,
                     "exact_s": exact_s, "pass_s": time.perf_counter() - t_pass, "peak_mb": mem.peak / 2**20,
                     "ncentroids": ncentroids, "nbytes": nbytes}
            print(f"  built: {build}", flush=True)
            if exact is not None:
                np.savez(tfile, ids=exact.ids, scores=exact.scores)
                truth = list(exact.ids)
            t0 = time.perf_counter()
            shutil_rmtree(index_dir)
            index.save(index_dir)
            build["save_s"] = time.perf_counter() - t0
            (directory / f"plaid-nbits{nbits}-build.json").write_text(json.dumps(build))
        nbytes = index.nbytes
        for settings in args.plaid_settings:
            t0 = time.perf_counter()
            _, ids = index.search(queries, k=K, **settings)
            qps = len(queries) / (time.perf_counter() - t0)
            p50, p99, found = latencies(lambda q: index.search(q, k=K, **settings)[1][0], queries)
            rec = recall_at(found, truth)
            *_, st = index.search_stats(queries, k=K, **settings)
            stages = (f"ms/query: scores+probe {st['centroid_scores_s'] * 1e3 / len(queries):.1f}, union "
                      f"{st['candidates_s'] * 1e3 / len(queries):.1f}, interaction "
                      f"{st['interaction_s'] * 1e3 / len(queries):.1f}, exact {st['exact_s'] * 1e3 / len(queries):.1f}; "
                      f"candidates {st['candidates'] / len(queries):,.0f}; ")
            shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
            method = f"PlaidIndex nbits={nbits} ({shown})"
            rows.append({"docs": n_docs, "method": method, "p50_ms": p50, "p99_ms": p99, "batch_qps": qps,
                         "recall_at_10": rec, "bytes_per_token": nbytes / n_tokens, "build_s": build["build_s"],
                         "peak_mb": build["peak_mb"],
                         "note": stages + f"{build['ncentroids']} centroids; build = train {build['train_s']:.0f} s + adds "
                                 f"{build['add_s']:.0f} s + inverted file {build['ivf_s']:.0f} s (generation and the "
                                 f"exact reference, {build['exact_s']:.0f} s, excluded; whole pass "
                                 f"{build['pass_s']:.0f} s); peak: whole pass, incl. chunk buffers"})
            print(f"  {method:40s} p50 {p50:8.2f} ms p99 {p99:8.2f} ms {qps:8.1f} q/s recall {rec:.3f} "
                  f"{nbytes / n_tokens:7.1f} B/tok build {build['build_s']:7.1f} s", flush=True)
        del index
        gc.collect()
    notes.append(f"{n_docs:,} documents, {n_tokens:,} tokens, generated in {args.workers} worker processes and "
                 "streamed; recall@10 against exact f32 MaxSim over the whole collection (streamed, cached)")
    return rows, notes


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- output


def environment() -> dict:
    try:
        commit = subprocess.run(["git", "-C", str(_HERE.parent), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": commit, "cpu": cpu,
            "python": platform.python_version(), "cores": os.cpu_count()}


def markdown(env, command, quality, speed, notes, threads) -> str:
    lines = [f"Command: `{command}`; {env['date']}, commit {env['commit']}, {env['cpu']} "
             f"({env['cores']} cores), {threads} threads.", ""]
    if quality:
        lines += ["SciFact, all-MiniLM-L6-v2 token vectors (multi-vector stand-in), test queries, 100 results:", "",
                  "| method | nDCG@10 | Recall@100 | ms/query (batch) | build s | note |",
                  "|---|---:|---:|---:|---:|---|"]
        for r in quality:
            lines.append(f"| {r['method']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['ms_per_query']:.2f} | "
                         f"{r['build_s']:.1f} | {r['note']} |")
        lines.append("")
    if speed:
        lines += [f"Synthetic ColBERT-like collection ({speed[0]['docs']:,} documents, 128-d tokens, 32-token queries), "
                  "top-10; recall@10 against exhaustive f32 MaxSim:", "",
                  "| method | p50 ms | p99 ms | batch q/s | recall@10 | bytes/token | build s | peak MB | note |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in speed:
            peak = f"{r['peak_mb']:,.0f}" if r["peak_mb"] is not None else ""
            lines.append(f"| {r['method']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['batch_qps']:.1f} | "
                         f"{r['recall_at_10']:.3f} | {r['bytes_per_token']:.1f} | {r['build_s']:.1f} | {peak} | "
                         f"{r['note']} |")
        lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 documents, 20 queries")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=None, help="synthetic queries (default 100; 20 with --quick)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-scifact", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-fastplaid", action="store_true")
    parser.add_argument("--only-compressed", action="store_true",
                        help="PlaidIndex and fast-plaid only (for 1,000,000 documents: the exhaustive indexes do not fit)")
    parser.add_argument("--fastplaid-python", default=DEFAULT_FASTPLAID)
    parser.add_argument("--fastplaid-nbits", default="2,4")
    parser.add_argument("--fastplaid-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fastplaid-kmeans-points", type=int, default=16,
                        help="fast-plaid's max_points_per_centroid (PlaidIndex trains on 16 per centroid)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--stream", action="store_true",
                        help="never store the collection: generate chunks in --workers processes, stream them into "
                             "PlaidIndex.add and an exact scorer (the default above 200,000 documents)")
    parser.add_argument("--workers", type=int, default=2, help="chunk generator processes of --stream")
    parser.add_argument("--rebuild", action="store_true", help="--stream: rebuild the cached index")
    parser.add_argument("--nbits", default=None, help="PlaidIndex nbits, comma-separated (default 1,2,4; --stream 2)")
    parser.add_argument("--settings", default=None,
                        help="PlaidIndex search settings, ';'-separated, each 'name=value,...' ('' = defaults)")
    args = parser.parse_args(argv)
    if args.queries is None:
        args.queries = 20 if args.quick else 100
    args.fastplaid_nbits = [int(b) for b in str(args.fastplaid_nbits).split(",")]
    if args.fastplaid_child:
        return fastplaid_child(Path(args.fastplaid_child), args.queries, args.threads, args.fastplaid_nbits,
                               args.fastplaid_kmeans_points)
    if args.quick:
        args.docs = min(args.docs, 10_000)
    args.fde = [dict(k_sim=4, repetitions=10, projection=16), dict(k_sim=5, repetitions=20, projection=16)]
    args.muvera_depths = (100, 300, 1000)
    args.int8_depths = (20, 100)
    stream = args.stream or args.docs > 200_000
    if args.nbits is not None:
        args.plaid_nbits = tuple(int(b) for b in args.nbits.split(","))
    else:
        args.plaid_nbits = (2,) if stream else (1, 2, 4)
    if args.settings is not None:
        args.plaid_settings = tuple(
            {k: (float(v) if k == "centroid_threshold" else int(v))
             for k, v in (item.split("=") for item in part.split(",") if item)}
            for part in args.settings.split(";"))
    else:
        args.plaid_settings = ({}, dict(nprobe=2, ndocs=128), dict(nprobe=4, ndocs=256), dict(nprobe=8, ndocs=256))

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    import flatcoat

    flatcoat.set_num_threads(args.threads)
    env = environment()
    command = "python bench/plaid.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{env}\nflatcoat {flatcoat.info().get('isa')}", flush=True)
    quality, speed, notes = [], [], []
    if not args.skip_scifact:
        print("SciFact", flush=True)
        quality, n = scifact_rows(flatcoat, args)
        notes += n
    if not args.skip_synthetic and stream:
        print(f"synthetic, streamed: {args.docs:,} documents", flush=True)
        speed, n = streamed_rows(flatcoat, args)
        notes += n
    elif not args.skip_synthetic:
        t0 = time.perf_counter()
        directory = synthetic(args.docs, args.queries, args.seed)
        print(f"synthetic collection {directory} ready in {time.perf_counter() - t0:.1f} s", flush=True)
        speed, n = synthetic_rows(flatcoat, args, directory)
        notes += n
    table = markdown(env, command.strip(), quality, speed, notes, args.threads)
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "command": command, "scifact": quality, "synthetic": speed,
                       "notes": notes, "info": flatcoat.info()}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
