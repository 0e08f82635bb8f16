"""The ``flatcoat`` command line: index, search, eval, demo, bench, info.

The commands parse arguments, call the library and print: the work itself is
done by functions a Python user can call too (:func:`flatcoat.corpus.read_corpus`,
:class:`flatcoat.Retriever`, :func:`flatcoat.eval.evaluate_dataset`,
:mod:`flatcoat.demo`, :func:`flatcoat.bench.run`). Each subcommand is a
``_cmd_<name>(args) -> int`` registered in :func:`build_parser`. User errors
(bad paths, malformed input) print one line to stderr and exit with status 2;
set ``FLATCOAT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ._storage import DENSE_STORAGES, IVF_STORAGES

__all__ = ["main", "build_parser", "CLIError"]


class CLIError(Exception):
    """A user error: reported as one line, exit status 2."""


# --------------------------------------------------------------------- helpers
def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _int_list(text: str) -> List[int]:
    return [_positive_int(t) for t in text.split(",") if t.strip()]


def _storage_list(text: str) -> List[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in DENSE_STORAGES]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"storage must be a comma-separated list of {', '.join(DENSE_STORAGES)}; got {text!r}")
    return out


def _muvera_spec(text: str) -> Dict[str, int]:
    """``K_SIM,REPETITIONS,PROJECTION`` -> the FDE's keyword arguments (PROJECTION 0: none)."""
    parts = [t.strip() for t in text.split(",")]
    try:
        if len(parts) != 3:
            raise ValueError
        k_sim, repetitions, projection = (int(t) for t in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected K_SIM,REPETITIONS,PROJECTION (e.g. 4,10,16; projection 0 for none), got {text!r}") from None
    return {"k_sim": k_sim, "repetitions": repetitions, "projection": projection or None}


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _note(command: str, message: str) -> None:
    print(f"flatcoat {command}: {message}", file=sys.stderr)


# ------------------------------------------------------------------- commands
def _cmd_index(args) -> int:
    from .corpus import read_corpus
    from .dense import DenseIndex
    from .encoders import Encoder
    from .multivector import MultiVectorIndex
    from .plaid import MIN_TRAIN as PLAID_MIN_TRAIN, PlaidIndex
    from .retriever import Retriever

    if args.muvera is not None and (args.reranker or args.plaid):
        raise CLIError("--muvera is a first stage for exact MaxSim over a MultiVectorIndex; drop --reranker/--plaid")
    if args.muvera is not None and args.storage not in DENSE_STORAGES:
        raise CLIError(f"--muvera keeps the FDEs in a DenseIndex: --storage must be one of {', '.join(DENSE_STORAGES)}")
    if args.plaid and args.reranker == "exact":
        raise CLIError("--plaid stores multi-vector tokens: use it with --multivector (the single stage) or "
                       "--reranker multivector (the reranker), not --reranker exact")
    if args.nbits is not None and not args.plaid:
        raise CLIError("--nbits sets a PlaidIndex's residual bits; add --plaid")
    single = args.multivector or (args.plaid and not args.reranker)  # --plaid alone implies --multivector
    if single and args.muvera is None and (args.reranker or args.storage != "f32"):
        raise CLIError("--multivector builds a single-stage MaxSim index; drop --storage/--reranker, "
                       "or keep a dense first stage with --reranker multivector")
    from ._persist import check_replaceable

    out = Path(args.out)
    if out.exists() and not args.overwrite:  # refused before any encoding: nothing is written
        raise FileExistsError(f"--out {out} exists; pass --overwrite to replace it, or choose a new directory")
    check_replaceable(out)  # --overwrite replaces only a flatcoat directory: said before encoding too
    fields = None if args.fields == "none" else ("all" if args.fields == "all" else
                                                  [f.strip() for f in args.fields.split(",") if f.strip()])
    corpus = read_corpus(args.corpus, fields=fields)
    for name, count in corpus.dropped.items():
        _note("index", f"field {name!r}: left out {count} values that are not numbers, booleans, strings or "
                       "lists of strings")
    if corpus.skipped:
        _note("index", f"skipped {len(corpus.skipped)} empty documents (blank title and text), "
                       f"e.g. id {corpus.skipped[0]!r}")
    t0 = time.perf_counter()

    def mv_index(dim: int):
        return PlaidIndex(dim, nbits=args.nbits or 2) if args.plaid else MultiVectorIndex(dim)

    if args.muvera is not None:
        from .muvera import FDE

        enc = Encoder.from_pretrained(args.model, kind="multivector")
        fde = FDE(enc.dim, **args.muvera)
        r = Retriever(enc, MultiVectorIndex(enc.dim), lexical=args.lexical,
                      muvera=(fde, DenseIndex(fde.output_dim, metric="ip", storage=args.storage)))
    elif single:
        enc = Encoder.from_pretrained(args.model, kind="multivector")
        r = Retriever(enc, mv_index(enc.dim), lexical=args.lexical)
    else:
        enc = Encoder.from_pretrained(args.model, kind="dense")
        if args.storage == "pq4":  # a partitioned index (IVFIndex), trained on the corpus itself
            from .ivf import MIN_TRAIN, IVFIndex

            if len(corpus) < MIN_TRAIN:
                raise CLIError(f"--storage pq4 partitions the collection and trains on it: it needs at least "
                               f"{MIN_TRAIN} documents, got {len(corpus)}; use --storage f32, f16, int8 or binary")
            index: Any = IVFIndex(enc.dim, metric="ip", storage="pq4", keep_float=args.reranker == "exact")
        else:
            index = DenseIndex(enc.dim, metric="ip", storage=args.storage, keep_float=args.reranker == "exact")
        reranker: Any = args.reranker
        if args.reranker == "multivector":
            mv = Encoder.from_pretrained(args.model, kind="multivector")
            reranker = (mv, mv_index(mv.dim))
        r = Retriever(enc, index, reranker=reranker, lexical=args.lexical)
    try:
        r.add(corpus.texts, ids=corpus.ids, batch_size=args.batch_size,
              metadata=corpus.metadata if fields is not None else None)
    except ValueError as exc:
        plaid = next((i for i in (r.index, r._reranker_index) if isinstance(i, PlaidIndex)), None)
        if plaid is None or plaid.is_trained:
            raise
        raise CLIError(f"--plaid: a PlaidIndex trains on the corpus's own token vectors and needs at least "
                       f"{PLAID_MIN_TRAIN} of them, and this corpus has fewer; index it without --plaid "
                       "(exact MaxSim)") from exc
    t1 = time.perf_counter()
    r.save(out)
    print(f"indexed {len(corpus)} documents from {args.corpus} into {out} in {_fmt_time(t1 - t0)} "
          f"({len(corpus) / (t1 - t0):.0f} docs/s; encoder {enc!r})")
    return 0


def _cmd_search(args) -> int:
    from .retriever import Retriever

    if not Path(args.dir).is_dir():
        raise CLIError(f"{args.dir} is not a directory; build one with: flatcoat index CORPUS.jsonl --out DIR")
    t0 = time.perf_counter()
    r = Retriever.load(args.dir)
    t1 = time.perf_counter()
    predicate = None
    if args.filter is not None:
        try:
            predicate = json.loads(args.filter)
        except json.JSONDecodeError as exc:
            raise CLIError(f"--filter: not valid JSON ({exc}); e.g. --filter '{{\"year\": {{\"$gte\": 2020}}}}'") from None
        if not isinstance(predicate, (dict, list)):
            raise CLIError("--filter: expected a JSON object (a predicate) or a list of document ids")
    options = {name: getattr(args, name) for name in ("ncandidates", "ndocs", "centroid_threshold")
               if getattr(args, name) is not None} or None
    hits = r.search(args.query, k=args.k, instruction=args.instruction, rerank=args.rerank, nprobe=args.nprobe,
                    filter=predicate, hybrid=args.hybrid, index_options=options)
    t2 = time.perf_counter()
    if args.rerank is not None and r.reranker is None and r.muvera is None:  # after the search: a bad --rerank is an error, not ignored
        _note("search", f"--rerank: {args.dir} has no reranker (built without --reranker); ignored")
    if args.json:
        print(json.dumps([{"id": h.id, "score": h.score, "text": h.text, "metadata": h.metadata} for h in hits],
                         ensure_ascii=False))
        return 0
    print(f"{len(hits)} hits for {args.query!r} (load {_fmt_time(t1 - t0)}, search {_fmt_time(t2 - t1)})")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:97] + "..."
        print(f"{rank:3d}. {h.score:8.4f}  {h.id}  {snippet}")
    return 0


def _format_rows(rows: List[Dict[str, Any]], metrics: Sequence[str]) -> str:
    head = ["system", *metrics, "encode", "search"]
    body = [[r["system"], *[f"{r[m]:.4f}" for m in metrics], _fmt_time(r["encode_s"]), _fmt_time(r["search_s"])]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *[line(b) for b in body]])


def _cmd_eval(args) -> int:
    from .eval import evaluate_dataset

    if not Path(args.dataset).is_dir():
        raise CLIError(f"{args.dataset} is not a directory "
                       "(expected a BEIR-format collection: corpus.jsonl, queries.jsonl, qrels/)")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    late = args.multivector or args.plaid or args.muvera is not None
    storages = [] if late and args.storage is None else (args.storage or ["f32"])
    result = evaluate_dataset(
        args.dataset, model=args.model, storages=storages, rerank=args.rerank, multivector=args.multivector,
        plaid=args.plaid or (), muvera=args.muvera,
        bm25=args.bm25, hybrid=args.hybrid, split=args.split, metrics=metrics, batch_size=args.batch_size,
        cache=args.cache,
        log=(lambda line: print(f"  {line}", file=sys.stderr)) if args.verbose else None,
    )
    for note in result.notes:
        _note("eval", note)
    print(f"{args.dataset} (split {args.split}, model {args.model}; {result.documents} documents, "
          f"{result.queries} queries, depth {result.depth})")
    print(_format_rows(result.rows, metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(result.rows, indent=1))
    return 0


def _cmd_demo(args) -> int:
    from .demo import QUERIES, demo_retriever, stdlib_documents

    t0 = time.perf_counter()
    ids, texts = stdlib_documents(args.max_docs)
    t1 = time.perf_counter()
    print(f"collected {len(texts)} docstrings of standard-library modules, functions and classes in {_fmt_time(t1 - t0)}")
    r = demo_retriever(ids, texts)
    t2 = time.perf_counter()
    print(f"encoded and indexed them with {r.encoder!r} in {_fmt_time(t2 - t1)} ({len(texts) / (t2 - t1):.0f} docs/s)\n")
    for query in args.query or QUERIES:
        t3 = time.perf_counter()
        hits = r.search(query, k=args.k)
        t4 = time.perf_counter()
        print(f"{query!r}  ({_fmt_time(t4 - t3)})")
        for h in hits:
            summary = h.text.split(": ", 1)[-1]
            summary = summary if len(summary) <= 80 else summary[:77] + "..."
            print(f"   {h.score:.3f}  {h.id:<34s} {summary}")
    print(f"\ntotal {_fmt_time(time.perf_counter() - t0)}")
    return 0


def _cmd_bench(args) -> int:
    from . import bench

    try:
        bench.run(quick=args.quick, isa=args.isa, threads=args.threads, device=args.device, json_path=args.json,
                  plot_path=args.plot, progress=not args.no_progress, size_factor=args.size_factor,
                  repeats=args.repeats)
    except RuntimeError as exc:  # --plot without matplotlib, --device cuda without a GPU
        raise CLIError(str(exc)) from None
    return 0


def _cmd_info(args) -> int:
    import flatcoat

    info = flatcoat.info()
    features = info.pop("cpu_features")
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    # One line per level: the CPU features it needs beyond the level below, those missing marked.
    for isa, found in features.items():
        marked = " ".join(name if present else f"{name}(missing)" for name, present in found.items())
        print(f"{('features ' + isa).ljust(width)}  {marked}")
    return 0


def _cmd_serve(args) -> int:
    try:
        from .server import ServeConfig, run
        import fastapi, uvicorn, prometheus_client  # noqa: F401 - the serve extra, reported before loading
    except ImportError as exc:
        raise CLIError(f"serve needs the serve extra ({exc.name} is missing): pip install 'flatcoat[serve]'") from None
    api_key = args.api_key if args.api_key is not None else (os.environ.get("FLATCOAT_API_KEY") or None)
    run(args.path, ServeConfig(host=args.host, port=args.port, api_key=api_key, max_batch=args.max_batch,
                               max_wait_ms=args.max_wait_ms, batching=not args.no_batching,
                               snapshot_every_s=args.snapshot_every_s, max_body_mb=args.max_body_mb, max_k=args.max_k))
    return 0


# ---------------------------------------------------------------------- parser
def _muvera_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--muvera [K_SIM,REPS,PROJ]`` (index and eval): the FDE's parameters, the defaults when given bare."""
    from .muvera import DEFAULT_PROJECTED

    default = ",".join(str(DEFAULT_PROJECTED[k]) for k in ("k_sim", "repetitions", "projection"))
    p.add_argument("--muvera", type=_muvera_spec, nargs="?", const=dict(DEFAULT_PROJECTED), default=None,
                   metavar="K_SIM,REPS,PROJ",
                   help=f"{what}; the FDE's k_sim, repetitions and projection (default {default})")


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: a prefix of an option (--rerank of --reranker) would be an alias under another name.
    parser = argparse.ArgumentParser(prog="flatcoat", description="Dense and late-interaction retrieval with a native core.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("index", allow_abbrev=False, help="encode a JSONL corpus into a retriever directory",
                       description="Encode a JSONL corpus into a retriever directory. Empty documents (blank title "
                                   "and text) are skipped and counted on stderr.")
    p.add_argument("corpus", help="JSONL file, one {\"_id\", \"title\", \"text\"} object a line (or a BEIR directory)")
    p.add_argument("--out", required=True, help="directory to write (refused if it exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is a flatcoat directory (a retriever or an index)")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory or name (default: the bundled MiniLM)")
    p.add_argument("--storage", default="f32", choices=tuple(dict.fromkeys(DENSE_STORAGES + IVF_STORAGES)),
                   help="codes of the dense index; pq4: a partitioned IVFIndex with 4-bit PQ codes "
                        "(trained on the corpus: at least 256 documents)")
    p.add_argument("--reranker", choices=("exact", "multivector"), default=None,
                   help="second stage: exact float re-ranking of a quantized scan, or MaxSim over the first "
                        "stage's best candidates")
    p.add_argument("--multivector", action="store_true", help="single-stage late interaction (exact MaxSim)")
    p.add_argument("--plaid", action="store_true",
                   help="keep the multi-vector tokens in a compressed PlaidIndex (docs/plaid.md; trained on the "
                        "corpus: at least 256 tokens): the single stage (implies --multivector), or the reranker "
                        "with --reranker multivector")
    p.add_argument("--nbits", type=int, choices=(1, 2, 4), default=None,
                   help="--plaid: residual bits per dimension (default 2)")
    _muvera_option(p, "single-stage late interaction with a MUVERA first stage (docs/muvera.md): the FDEs of "
                      "the documents in a dense index (--storage), their best --rerank re-ranked by exact MaxSim")
    p.add_argument("--lexical", action="store_true",
                   help="also keep a BM25 stage (bm25s) for hybrid search (searched hybrid by default)")
    p.add_argument("--fields", default="all", metavar="all|none|F1,F2",
                   help="JSONL fields kept as metadata for --filter and the hits (default: all; nested objects "
                        "are named a.b)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", allow_abbrev=False, help="query a retriever directory")
    p.add_argument("dir")
    p.add_argument("query")
    p.add_argument("-k", type=_positive_int, default=10)
    p.add_argument("--instruction", default=None, help="task description applied to the query")
    p.add_argument("--rerank", type=_positive_int, default=None, metavar="R",
                   help="re-ranking depth: how many first-stage candidates the reranker scores "
                        "(at least -k; default max(10 k, 100))")
    p.add_argument("--nprobe", type=_positive_int, default=None,
                   help="lists scanned per query by an IVF first stage (--storage pq4; default min(nlist, 32)), or "
                        "centroids probed per query token by a PlaidIndex (--plaid; default 4)")
    p.add_argument("--ndocs", type=_positive_int, default=None,
                   help="documents a PlaidIndex (--plaid) scores exactly (at least -k; default max(64, 4 k))")
    p.add_argument("--ncandidates", type=_positive_int, default=None,
                   help="documents a PlaidIndex keeps after its centroid interaction (default 4 x --ndocs)")
    p.add_argument("--centroid-threshold", type=float, default=None, metavar="T",
                   help="a PlaidIndex's centroid pruning: only document tokens whose centroid scores at least T "
                        "for some query token count in the centroid interaction (default: all)")
    p.add_argument("--filter", default=None, metavar="JSON",
                   help="only documents whose metadata match, e.g. '{\"year\": {\"$gte\": 2020}}' "
                        "(docs/filters.md), or a JSON list of ids")
    p.add_argument("--hybrid", default=None, choices=("dense", "lexical", "rrf", "convex", "union"),
                   help="with a lexical stage (index --lexical): one stage or a fusion (default: the default fusion)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("eval", allow_abbrev=False, help="retrieval quality on a BEIR-format collection",
                       description="Retrieval quality on a BEIR-format collection. Each query retrieves 'depth' "
                                   "documents: the largest metric cutoff, at least 100, at most the number of "
                                   "documents. Empty documents are skipped and counted on stderr.")
    p.add_argument("dataset", metavar="DATASET_DIR")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--storage", type=_storage_list, default=None,
                   help="comma-separated storages to compare, e.g. f32,int8,binary (one encode for all; "
                        "default f32, none with --multivector)")
    p.add_argument("--rerank", type=_int_list, default=[], metavar="R[,R...]",
                   help="comma-separated depths of exact re-ranking for int8/binary and MUVERA, e.g. 100,200,500; "
                        "a depth below the evaluation depth is raised to it (said on stderr)")
    p.add_argument("--multivector", action="store_true", help="add the exact MaxSim row (multi-vector encoder)")
    p.add_argument("--plaid", type=_int_list, default=None, metavar="NBITS[,NBITS...]",
                   help="add a PlaidIndex row per residual width (1, 2 or 4 bits), default stage sizes")
    _muvera_option(p, "add MUVERA rows: FDE candidates re-ranked by exact MaxSim, one row per --rerank depth "
                      "(default: the evaluation depth)")
    p.add_argument("--bm25", action="store_true", help="add a BM25 row (bm25s) as the lexical reference")
    p.add_argument("--hybrid", nargs="?", const=True, default=False, choices=(True, "rrf", "convex", "union"),
                   metavar="METHOD", help="add a hybrid row: dense f32 fused with stemmed BM25 (and MaxSim with "
                   "--multivector); the default setting, or rrf, convex or union with their defaults")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", default="ndcg@10,recall@100,mrr@10,map")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--cache", default=None, help="directory to cache embeddings in between runs")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="report each row on stderr as it is measured")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", allow_abbrev=False, help="search the standard library's docstrings with the bundled model")
    p.add_argument("--max-docs", type=_positive_int, default=6000, help="cap on the number of docstrings indexed")
    p.add_argument("-k", type=_positive_int, default=3)
    p.add_argument("--query", action="append", help="a request to answer (repeatable); default: a built-in few")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", allow_abbrev=False, help="measure the machine's ceilings, then the kernels against them")
    p.add_argument("--quick", action="store_true", help="about two minutes with --isa all: smaller data, fewer rounds")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--isa", default="best", help="'best' (default), 'all' (every compiled ISA this CPU runs, "
                   "measured interleaved and each compared with the level below) or an ISA name")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads (default: flatcoat's setting)")
    p.add_argument("--json", default=None, help="write the full report (machine, versions, every figure) here")
    p.add_argument("--plot", default=None, help="draw a roofline to this image file (needs matplotlib)")
    p.add_argument("--repeats", type=_positive_int, default=None,
                   help="timed rounds per kernel, each timing every ISA once (default 9, quick 7)")
    p.add_argument("--size-factor", type=_positive_float, default=1.0, help=argparse.SUPPRESS)  # tests: tiny sizes
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("serve", allow_abbrev=False, help="serve an index or retriever directory over HTTP",
                       description="Serve a saved index or Retriever over HTTP/JSON (docs/serving.md): search, add, "
                                   "upsert, remove, /health, /info, /metrics. Writes are logged to PATH.wal/ and "
                                   "fsynced before each answer.")
    p.add_argument("path", metavar="PATH", help="a directory written by .save() or flatcoat index")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, metavar="K",
                   help="writes need 'Authorization: Bearer K' (default: $FLATCOAT_API_KEY); without one, writes are "
                        "refused beyond loopback")
    p.add_argument("--max-batch", type=_positive_int, default=64, help="queries per batched core call at most")
    p.add_argument("--max-wait-ms", type=float, default=1.0, help="how long a search waits for others to batch with")
    p.add_argument("--no-batching", action="store_true", help="one core call per request")
    p.add_argument("--snapshot-every-s", type=float, default=60.0,
                   help="fold the write-ahead log into a snapshot this often when there were writes (0: only on exit)")
    p.add_argument("--max-body-mb", type=_positive_float, default=64.0, help="larger request bodies get 413")
    p.add_argument("--max-k", type=_positive_int, default=10000, help="largest k a search may ask for")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("info", allow_abbrev=False, help="build and CPU features")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("flatcoat: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, KeyError, OSError, ImportError) as exc:
        if os.environ.get("FLATCOAT_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"flatcoat {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
