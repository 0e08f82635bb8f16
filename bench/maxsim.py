"""MaxSim (late interaction), side by side: flatcoat vs numpy, PyTorch and maxsim-cpu.

One run, one machine, the same data and the same threads (2 unless --threads)
for every library. Queries have 32 tokens x 128 dims; collections of 10,000
and 100,000 documents of 50..300 tokens (mean about 180), ColBERT-like:
unit-norm tokens around 256 topic centres (each document mixes 3 topics),
each query is 32 noisy tokens of one document. Generated in chunks from fixed
seeds, so every stage regenerates the same collection instead of holding
several copies (100,000 documents are 9.2 GB in float32).

Peers, full mode (score every document, keep the top 10):

* numpy: ``q @ tokens.T`` in chunks of 2,000 documents (BLAS, all threads),
  ``np.maximum.reduceat`` over the document offsets, sum; ``argpartition``.
* PyTorch: the usual padded batch: documents sorted by length (within each
  generated chunk of 5,000) into batches of 512, each padded to its longest
  (stored once, outside the timing),
  ``torch.bmm`` + an additive -inf mask on the padding + ``max`` + ``sum``,
  ``torch.topk``; ``torch.set_num_threads(threads)``.
* maxsim-cpu: ``maxsim_scores_variable(query, list_of_documents)`` (views,
  no copies), then ``argpartition``.
* flatcoat ``MultiVectorIndex`` f32, f16, int8: ``search(query, k=10)``; and
  f32 with 32 queries per call (the batch shares one pass over the documents).

Rerank mode: the same, for 1,000 candidate documents per query (random, the
same for every library). numpy, PyTorch and maxsim-cpu gather the candidates
inside the timed call (PyTorch pads them), as a reranker must; flatcoat gets
``subset=ids``.

Reported per row: docs/s, ms per query (median over the queries), achieved
GFLOP/s = 2 * 32 * 128 * (document tokens scored) / time, and its fraction of
the FMA peak measured in this run by the core's probe, the one ``flatcoat
bench`` uses (``flatcoat.bench.arithmetic_peaks``: independent FMA chains
with the best ISA this CPU has, on the same threads; numpy's float32 matmul
is reported beside it). int8 counts the same nominal FLOPs, so its fraction
can exceed 1. Recall@10 of f16 and int8 is against flatcoat f32 (exact).

Runs against the installed flatcoat (``pip install .``); peak memory is one
copy of the collection plus one peer's index: the packed collection for the
numpy, maxsim-cpu and PyTorch peers is generated, used and freed before
flatcoat's index is built.

Usage::

    python bench/maxsim.py --quick           # 10,000 documents, few queries: about 2 minutes
    python bench/maxsim.py                   # 10,000 and 100,000 documents
    python bench/maxsim.py --sizes 10000 --queries 16 --json out.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import numpy as np

# The repository root, for the sibling bench modules (flatcoat itself is the installed package).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIM = 128
Q_TOKENS = 32
K = 10
CHUNK_DOCS = 5000
N_TOPICS = 256

# ----------------------------------------------------------------------------- the FMA peak


def fma_peak(threads: int, repeats: int = 5) -> dict:
    """float32 FMA GFLOP/s on ``threads`` threads (best of repeats): the core's probe, as ``flatcoat bench``."""
    import flatcoat
    from flatcoat.bench import arithmetic_peaks

    gflops = arithmetic_peaks(threads, repeats=repeats)["fma_gflops"]
    isa = flatcoat.info()["detected_isa"]
    return {"gflops": gflops, "method": f"flatcoat probe_fma ({isa}), {threads} thread(s), best of {repeats}"}


# ----------------------------------------------------------------------------- data


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _centres(seed):
    return _unit(np.random.default_rng([seed, 0]).standard_normal((N_TOPICS, DIM))).astype(np.float32)


def lengths_for(n_docs, seed):
    """Token counts: normal(180, 60) clipped to [50, 300]."""
    rng = np.random.default_rng([seed, 1])
    return np.clip(np.rint(rng.normal(180, 60, n_docs)), 50, 300).astype(np.int64)


def chunk(n_docs, seed, c, lengths=None):
    """Chunk ``c`` (documents ``c * CHUNK_DOCS`` onwards) of ``chunks``: each chunk has its own seed,
    so any chunk can be generated alone (the 1,000,000-document runs stream them from workers)."""
    centres = _centres(seed)
    lengths = lengths_for(n_docs, seed) if lengths is None else lengths
    start = c * CHUNK_DOCS
    rng = np.random.default_rng([seed, 2, c])
    lens = lengths[start:start + CHUNK_DOCS]
    total = int(lens.sum())
    topics = rng.integers(0, N_TOPICS, (lens.size, 3))
    which = topics[np.repeat(np.arange(lens.size), lens), rng.integers(0, 3, total)]
    noise = rng.standard_normal((total, DIM)).astype(np.float32)
    noise *= np.float32(0.5) / np.linalg.norm(noise, axis=1, keepdims=True)
    return _unit(centres[which] + noise).astype(np.float32), lens


def chunks(n_docs, seed):
    """Yields (tokens float32 (t, DIM), lengths (c,)) for consecutive chunks of documents."""
    lengths = lengths_for(n_docs, seed)
    for c in range(0, (n_docs + CHUNK_DOCS - 1) // CHUNK_DOCS):
        yield chunk(n_docs, seed, c, lengths)


def collection(n_docs, seed):
    """The whole collection packed: (tokens float32 (total, DIM), offsets int64 (n_docs + 1,))."""
    parts = list(chunks(n_docs, seed))
    tokens = np.concatenate([t for t, _ in parts])
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(np.concatenate([lens for _, lens in parts]), out=offsets[1:])
    return tokens, offsets


def queries_from(tokens, offsets, n_queries, seed):
    """32 noisy tokens of random documents of the packed collection (tokens, offsets)."""
    rng = np.random.default_rng([seed, 3])
    out = []
    for d in rng.integers(0, offsets.size - 1, n_queries):
        a, b = int(offsets[d]), int(offsets[d + 1])
        picked = tokens[rng.integers(a, b, Q_TOKENS)]
        noise = rng.standard_normal((Q_TOKENS, DIM)).astype(np.float32)
        noise *= np.float32(0.3) / np.linalg.norm(noise, axis=1, keepdims=True)
        out.append(_unit(picked + noise).astype(np.float32))
    return out


def make_queries(index, n_queries, seed):
    """``queries_from`` the documents of an f32 MultiVectorIndex (through ``arrays()``: a copy)."""
    stored = index.arrays()
    return queries_from(stored["tokens"], stored["offsets"], n_queries, seed)


def build_index(flatcoat, storage, n_docs, seed):
    index = flatcoat.MultiVectorIndex(DIM, storage=storage)
    for tokens, lens in chunks(n_docs, seed):
        index.add((tokens, lens))
    return index


# ----------------------------------------------------------------------------- peers


def numpy_full(tokens, offsets, lengths):
    n = lengths.size

    def run(q):
        scores = np.empty(n, dtype=np.float32)
        for d0 in range(0, n, 2000):
            d1 = min(n, d0 + 2000)
            a, b = int(offsets[d0]), int(offsets[d1])
            s = q @ tokens[a:b].T
            scores[d0:d1] = np.maximum.reduceat(s, offsets[d0:d1] - a, axis=1).sum(0)
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    return run


def numpy_rerank(tokens, offsets):
    def run(q, cand):
        rows = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in cand])
        lens = offsets[cand + 1] - offsets[cand]
        s = q @ tokens[rows].T
        scores = np.maximum.reduceat(s, np.concatenate([[0], np.cumsum(lens)[:-1]]), axis=1).sum(0)
        top = np.argpartition(-scores, K)[:K]
        return cand[top[np.argsort(-scores[top])]]

    return run


def torch_padded(torch, n_docs, seed, chunk=512):
    """Padded batches as a PyTorch store would keep them: within each generated
    chunk of documents, sorted by length and cut into batches of `chunk`, each
    padded to its longest (built chunk by chunk: never two copies of the collection)."""
    batches = []
    start = 0
    for tokens, lens in chunks(n_docs, seed):
        offs = np.concatenate([[0], np.cumsum(lens)])
        order = np.argsort(lens, kind="stable")
        for c0 in range(0, order.size, chunk):
            ids = order[c0:c0 + chunk]
            lmax = int(lens[ids].max())
            padded = np.zeros((ids.size, lmax, DIM), dtype=np.float32)
            bias = np.full((ids.size, 1, lmax), -np.inf, dtype=np.float32)
            for i, d in enumerate(ids):
                n = int(lens[d])
                padded[i, :n] = tokens[offs[d]:offs[d] + n]
                bias[i, 0, :n] = 0
            batches.append((torch.from_numpy(start + ids), torch.from_numpy(padded), torch.from_numpy(bias)))
        start += lens.size
        del tokens
    return batches


def torch_full(torch, batches, n_docs):
    def run(q):
        qt = torch.from_numpy(q)
        scores = torch.empty(n_docs)
        with torch.inference_mode():
            for ids, padded, bias in batches:
                s = torch.matmul(padded, qt.T).transpose(1, 2)  # (b, 32, L): bmm with q shared
                s = (s + bias).amax(dim=2).sum(dim=1)
                scores[ids] = s
            return torch.topk(scores, K).indices.numpy()

    return run


def torch_rerank(torch, tokens, offsets):
    def run(q, cand):
        lens = offsets[cand + 1] - offsets[cand]
        lmax = int(lens.max())
        padded = np.zeros((cand.size, lmax, DIM), dtype=np.float32)
        bias = np.full((cand.size, 1, lmax), -np.inf, dtype=np.float32)
        for i, c in enumerate(cand):
            padded[i, :lens[i]] = tokens[offsets[c]:offsets[c + 1]]
            bias[i, 0, :lens[i]] = 0
        with torch.inference_mode():
            s = torch.bmm(torch.from_numpy(padded), torch.from_numpy(q).T.expand(cand.size, DIM, Q_TOKENS))
            s = (s.transpose(1, 2) + torch.from_numpy(bias)).amax(dim=2).sum(dim=1)
            return cand[torch.topk(s, K).indices.numpy()]

    return run


def maxsim_cpu_runs(module, tokens, offsets):
    docs = [tokens[offsets[d]:offsets[d + 1]] for d in range(offsets.size - 1)]

    def full(q):
        scores = np.asarray(module.maxsim_scores_variable(q, docs))
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]

    def rerank(q, cand):
        scores = np.asarray(module.maxsim_scores_variable(q, [docs[c] for c in cand]))
        top = np.argpartition(-scores, K)[:K]
        return cand[top[np.argsort(-scores[top])]]

    return full, rerank


# ----------------------------------------------------------------------------- timing


def time_queries(fn, args_list, warm=1):
    for a in args_list[:warm]:
        fn(*a)
    times = []
    out = []
    for a in args_list:
        t0 = time.perf_counter()
        out.append(fn(*a))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def recall(found, truth):
    return float(np.mean([len(set(np.asarray(f).tolist()) & set(np.asarray(t).tolist())) / K
                          for f, t in zip(found, truth)]))


def _int8_dequantized(tokens, scale):
    """Tokens through symmetric int8 codes in [-127, 127] with one scale per row of ``scale`` (t,), decoded."""
    return (np.clip(np.rint(tokens / scale[:, None]), -127, 127) * scale[:, None]).astype(np.float32)


def int8_scale_study(flatcoat, n_docs, seed, queries, truth):
    """Recall@10 against f32 of int8 document codes with per-token scales (what
    MultiVectorIndex int8 stores) and with one scale per document: the decoded
    tokens of each scheme in an f32 index, searched exactly with the same float
    queries, so only the document quantizer differs."""
    out = {"docs": n_docs}
    for scheme in ("token", "document"):
        index = flatcoat.MultiVectorIndex(DIM, storage="f32")
        for tokens, lens in chunks(n_docs, seed):
            peak = np.abs(tokens).max(axis=1)
            if scheme == "document":
                peak = np.repeat(np.maximum.reduceat(peak, np.concatenate([[0], np.cumsum(lens)[:-1]])), lens)
            index.add((_int8_dequantized(tokens, np.where(peak > 0, peak / 127.0, 1.0)), lens))
        found = index.search(queries, k=K)[1]
        out[scheme] = recall(found, truth)
        del index
        gc.collect()
    print(f"  int8 recall@10 vs f32: per-token scale {out['token']:.3f}, per-document scale {out['document']:.3f}")
    return out


rows_study = []


def run_size(flatcoat, n_docs, n_queries, threads, seed, peak, peers, quick):
    rows = []
    lengths = lengths_for(n_docs, seed)
    rng = np.random.default_rng([seed, 4])
    candidates = [np.sort(rng.choice(n_docs, 1000, replace=False)).astype(np.int64) for _ in range(n_queries)]
    cand_tokens = float(np.mean([lengths[c].sum() for c in candidates]))
    full_tokens = float(lengths.sum())
    pending = []  # peers' rows whose recall waits for flatcoat f32 (the exact reference)

    def add(name, mode, seconds, tokens, docs, rec=None, note=""):
        gflops = 2.0 * Q_TOKENS * DIM * tokens / seconds / 1e9
        rows.append({
            "docs": n_docs, "library": name, "mode": mode, "docs_per_s": docs / seconds, "ms_per_query": seconds * 1e3,
            "gflops": gflops, "peak_fraction": gflops / peak if peak else None, "recall_at_10": rec, "note": note,
        })
        print(f"  {name:28s} {mode:6s} {docs / seconds:12,.0f} docs/s {seconds * 1e3:9.2f} ms  {gflops:6.1f} GFLOP/s",
              flush=True)
        return rows[-1]

    # Stage 1: the peers over the packed collection (freed before flatcoat's index is built).
    tokens, offsets = collection(n_docs, seed)
    queries = queries_from(tokens, offsets, n_queries, seed)
    full_args, rerank_args = [(q,) for q in queries], list(zip(queries, candidates))
    if "numpy" in peers:
        t, found = time_queries(numpy_full(tokens, offsets, lengths), full_args)
        pending.append((add("numpy", "full", t, full_tokens, n_docs), found, "full"))
        t, found = time_queries(numpy_rerank(tokens, offsets), rerank_args)
        pending.append((add("numpy", "rerank", t, cand_tokens, 1000), found, "rerank"))
    if "maxsim-cpu" in peers:
        full, rerank = maxsim_cpu_runs(peers["maxsim-cpu"], tokens, offsets)
        t, found = time_queries(full, full_args)
        pending.append((add("maxsim-cpu", "full", t, full_tokens, n_docs), found, "full"))
        t, found = time_queries(rerank, rerank_args)
        pending.append((add("maxsim-cpu", "rerank", t, cand_tokens, 1000), found, "rerank"))
        del full, rerank
    if "torch" in peers:
        t, found = time_queries(torch_rerank(peers["torch"], tokens, offsets), rerank_args)
        pending.append((add("PyTorch padded bmm", "rerank", t, cand_tokens, 1000, note="pads the candidates"),
                        found, "rerank"))
    del tokens, offsets
    gc.collect()

    # Stage 2: PyTorch over stored padded chunks (built from a regenerated collection).
    if "torch" in peers:
        torch = peers["torch"]
        batches = torch_padded(torch, n_docs, seed)
        padded_tokens = float(sum(p.shape[0] * p.shape[1] for _, p, _ in batches))
        t, found = time_queries(torch_full(torch, batches, n_docs), full_args)
        pending.append((add("PyTorch padded bmm", "full", t, full_tokens, n_docs,
                            note=f"{padded_tokens / full_tokens - 1:.1%} padding"), found, "full"))
        del batches
        gc.collect()

    # Stage 3: flatcoat f32, the exact reference of every recall.
    f32 = build_index(flatcoat, "f32", n_docs, seed)
    t, truth = time_queries(lambda q: f32.search(q, k=K)[1][0], full_args)
    add("flatcoat f32", "full", t, full_tokens, n_docs, 1.0)
    batch = (queries * ((32 + len(queries) - 1) // len(queries)))[:32]
    t0 = time.perf_counter()
    f32.search(batch, k=K)
    t_batch = (time.perf_counter() - t0) / len(batch)
    add("flatcoat f32, 32 q/call", "full", t_batch, full_tokens, n_docs, 1.0, "per query, 32 queries in one call")
    t, truth_rerank = time_queries(lambda q, c: f32.search(q, k=K, subset=[c])[1][0], rerank_args)
    add("flatcoat f32", "rerank", t, cand_tokens, 1000, 1.0)
    del f32
    gc.collect()
    for row, found, mode in pending:
        row["recall_at_10"] = recall(found, truth if mode == "full" else truth_rerank)

    # Stage 4: flatcoat f16 and int8.
    if not quick and n_docs <= 20000:  # once, at the smaller size: two more f32 indexes
        rows_study.append(int8_scale_study(flatcoat, n_docs, seed, queries, truth))
    for storage in ("f16", "int8"):
        index = build_index(flatcoat, storage, n_docs, seed)
        t, found = time_queries(lambda q: index.search(q, k=K)[1][0], full_args)
        add(f"flatcoat {storage}", "full", t, full_tokens, n_docs, recall(found, truth))
        t, found = time_queries(lambda q, c: index.search(q, k=K, subset=[c])[1][0], rerank_args)
        add(f"flatcoat {storage}", "rerank", t, cand_tokens, 1000, recall(found, truth_rerank))
        del index
        gc.collect()
    return rows


def markdown(rows, peak, matmul, threads, command):
    lines = [
        f"MaxSim, {Q_TOKENS} query tokens x {DIM} dims, top-{K}, {threads} threads. Command: `{command}`",
        "",
        f"FMA peak: {peak['gflops']:.1f} GFLOP/s ({peak['method']}); numpy float32 matmul: {matmul}.",
        "",
        "| docs | library | mode | docs/s | ms/query | GFLOP/s | % FMA peak | recall@10 | vs PyTorch | note |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        base = [x for x in rows if x["docs"] == r["docs"] and x["mode"] == r["mode"] and x["library"].startswith("PyTorch")]
        ratio = f"{r['docs_per_s'] / base[0]['docs_per_s']:.2f}x" if base else ""
        frac = f"{100 * r['peak_fraction']:.0f}%" if r["peak_fraction"] else ""
        rec = f"{r['recall_at_10']:.3f}" if r["recall_at_10"] is not None else ""
        lines.append(
            f"| {r['docs']:,} | {r['library']} | {r['mode']} | {r['docs_per_s']:,.0f} | {r['ms_per_query']:.2f} | "
            f"{r['gflops']:.1f} | {frac} | {rec} | {ratio} | {r['note']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 documents and 4 queries")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=None, help="queries per size (default 10 / 4 at 100k)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    import flatcoat

    flatcoat.set_num_threads(args.threads)
    peers = {"numpy": np}
    try:
        import torch

        torch.set_num_threads(args.threads)
        peers["torch"] = torch
    except ImportError:
        print("PyTorch not installed: pip install torch==2.13.0 (CPU build)")
    try:
        import maxsim_cpu

        peers["maxsim-cpu"] = maxsim_cpu
    except ImportError:
        print("maxsim-cpu not installed: pip install maxsim-cpu")

    from bench.ceilings import matmul_gflops

    peak = fma_peak(args.threads)
    mm = matmul_gflops(shapes=((2048, 2048, 2048),), repeats=3, threads=args.threads)
    matmul = ", ".join(f"{k}: {v:.1f} GFLOP/s" for k, v in mm.get("gflops", {}).items()) if isinstance(mm, dict) else str(mm)
    print(f"FMA peak {peak['gflops']} GFLOP/s ({peak['method']}); matmul {matmul}; isa {flatcoat.info()['isa']}")

    sizes = [10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        nq = args.queries or (4 if args.quick else (10 if n <= 20000 else 4))
        print(f"{n:,} documents, {nq} queries")
        rows += run_size(flatcoat, n, nq, args.threads, args.seed, peak["gflops"], peers, args.quick)
    command = "python bench/maxsim.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = markdown(rows, peak, matmul, args.threads, command.strip())
    for study in rows_study:
        table += (f"\n\nint8 scale study, {study['docs']:,} documents: recall@10 against f32 is "
                  f"{study['token']:.3f} with per-token scales (stored), {study['document']:.3f} with one scale "
                  "per document (same kernel, same int8 queries).")
    print()
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "int8_scale_study": rows_study, "fma_peak": peak, "matmul": mm, "info": flatcoat.info(), "command": command}, f,
                      indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
