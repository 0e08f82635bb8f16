"""The ``flatcoat`` command line: index, search, eval, demo, info.

Each subcommand is a ``_cmd_<name>(args) -> int`` registered in
:func:`build_parser`; add one with ``sub.add_parser`` there. User errors (bad
paths, malformed input) print one line to stderr and exit with status 2; set
``FLATCOAT_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["main", "build_parser", "CLIError"]

STORAGES = ("f32", "f16", "int8", "binary")


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


def _int_list(text: str) -> List[int]:
    return [_positive_int(t) for t in text.split(",") if t.strip()]


def _storage_list(text: str) -> List[str]:
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in STORAGES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"storage must be a comma-separated list of {', '.join(STORAGES)}; got {text!r}")
    return out


def read_corpus_jsonl(path: str) -> Tuple[List[Any], List[str]]:
    """Ids and texts of a JSONL corpus: ``_id`` (or ``id``), ``title`` (optional), ``text``."""
    from .eval import doc_text, read_jsonl

    p = Path(path)
    if p.is_dir():
        p = p / "corpus.jsonl"
    ids: List[Any] = []
    texts: List[str] = []
    seen = set()
    for lineno, obj in read_jsonl(p, "corpus"):
        did = obj.get("_id", obj.get("id", None))
        if did is None:
            did = len(ids)
        if isinstance(did, bool) or not isinstance(did, (str, int)):
            raise ValueError(f"{p}:{lineno}: the id must be a string or an integer, got {type(did).__name__}")
        if did in seen:
            raise ValueError(f"{p}:{lineno}: duplicate id {did!r}")
        title, text = obj.get("title") or "", obj.get("text")
        if not isinstance(text, str) or not isinstance(title, str):
            raise ValueError(f"{p}:{lineno}: each line needs a string field \"text\" (and optionally \"title\")")
        body = doc_text({"title": title, "text": text})
        if not body:
            raise ValueError(f"{p}:{lineno}: empty document (title and text are blank)")
        seen.add(did)
        ids.append(did)
        texts.append(body)
    if not texts:
        raise ValueError(f"{p}: the corpus is empty (no JSON lines)")
    return ids, texts


def _encoder(model: str, kind: str, progress: Optional[bool] = None):
    from .encoders import Encoder

    return Encoder.from_pretrained(model, kind=kind, progress=progress)


def _multivector_index_cls():
    import flatcoat

    cls = getattr(flatcoat, "MultiVectorIndex", None)
    if cls is None:
        try:
            from .multivector import MultiVectorIndex as cls
        except ImportError:
            cls = None
    if cls is None:
        raise CLIError("multi-vector search needs flatcoat.MultiVectorIndex, which this build does not provide")
    return cls


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


# ------------------------------------------------------------------- commands
def _cmd_index(args) -> int:
    import flatcoat
    from .retriever import Retriever

    if args.multivector and (args.rerank or args.storage != "f32"):
        raise CLIError("--multivector builds a single-stage MaxSim index; drop --storage/--rerank, "
                       "or keep a dense first stage with --rerank multivector")
    ids, texts = read_corpus_jsonl(args.corpus)
    out = Path(args.out)
    if out.exists() and not (out / "retriever.json").is_file():
        raise CLIError(f"--out {out} exists and is not a flatcoat retriever; choose a new directory")
    t0 = time.perf_counter()
    if args.multivector:
        enc = _encoder(args.model, "multivector")
        index = _multivector_index_cls()(enc.dim)
        r = Retriever(enc, index)
    else:
        enc = _encoder(args.model, "dense")
        keep_float = args.rerank == "exact"
        index = flatcoat.DenseIndex(enc.dim, metric="ip", storage=args.storage, keep_float=keep_float)
        rerank: Any = None
        if args.rerank == "exact":
            rerank = "exact"
        elif args.rerank == "multivector":
            mv = _encoder(args.model, "multivector")
            rerank = (mv, _multivector_index_cls()(mv.dim))
        r = Retriever(enc, index, rerank=rerank)
    r.add(texts, ids=ids, batch_size=args.batch_size)
    t1 = time.perf_counter()
    r.save(out)
    print(f"indexed {len(texts)} documents from {args.corpus} into {out} in {_fmt_time(t1 - t0)} "
          f"({len(texts) / (t1 - t0):.0f} docs/s; encoder {enc!r})")
    return 0


def _cmd_search(args) -> int:
    from .retriever import Retriever

    if not Path(args.dir).is_dir():
        raise CLIError(f"{args.dir} is not a directory; build one with: flatcoat index CORPUS.jsonl --out DIR")
    t0 = time.perf_counter()
    r = Retriever.load(args.dir)
    t1 = time.perf_counter()
    hits = r.search(args.query, k=args.k, instruction=args.instruction, shortlist=args.shortlist)
    t2 = time.perf_counter()
    if args.json:
        print(json.dumps([{"id": h.id, "score": h.score, "text": h.text} for h in hits], ensure_ascii=False))
        return 0
    print(f"{len(hits)} hits for {args.query!r} (load {_fmt_time(t1 - t0)}, search {_fmt_time(t2 - t1)})")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 100 else snippet[:97] + "..."
        print(f"{rank:3d}. {h.score:8.4f}  {h.id}  {snippet}")
    return 0


def _cache_path(cache: Optional[str], *parts: Any) -> Optional[Path]:
    if not cache:
        return None
    key = hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return Path(cache) / key


def _cache_file(cache: Optional[str], enc, texts: List[str], side: str, tag: str) -> Optional[Path]:
    import dataclasses

    return _cache_path(cache, tag, enc.name, enc.kind, dataclasses.asdict(enc.config), side, len(texts),
                       hashlib.sha1("\x00".join(texts).encode()).hexdigest())


def _cache_read(path: Optional[Path], kind: str):
    if path is None or not (path / "vectors.npy").is_file():
        return None
    flat = np.load(path / "vectors.npy")
    if kind == "dense":
        return flat
    lengths = np.load(path / "lengths.npy")
    return np.split(flat, np.cumsum(lengths)[:-1])


def _cache_write(path: Optional[Path], kind: str, out) -> None:
    if path is None:
        return
    path.mkdir(parents=True, exist_ok=True)
    if kind == "dense":
        np.save(path / "vectors.npy", out)
    else:
        np.save(path / "lengths.npy", np.array([len(x) for x in out], dtype=np.int64))
        np.save(path / "vectors.npy", np.concatenate(out))


def _encode_all(encs, texts: List[str], side: str, cache: Optional[str], tag: str, batch_size: int):
    """Encode texts for each encoder (reading back cached results); documents share a forward pass
    between encoders of one model. Returns ([outputs], seconds spent encoding)."""
    from .encoders import encode_documents_shared

    paths = [_cache_file(cache, e, texts, side, tag) for e in encs]
    outs = [_cache_read(p, e.kind) for p, e in zip(paths, encs)]
    todo = [i for i, o in enumerate(outs) if o is None]
    t0 = time.perf_counter()
    if todo and side == "document":
        for i, o in zip(todo, encode_documents_shared([encs[i] for i in todo], texts, batch_size=batch_size)):
            outs[i] = o
    else:
        for i in todo:
            outs[i] = encs[i].encode_queries(texts, batch_size=batch_size)
    elapsed = time.perf_counter() - t0
    for i in todo:
        _cache_write(paths[i], encs[i].kind, outs[i])
    return outs, elapsed


def bm25_run(corpus_ids: List[str], corpus_texts: List[str], qids: List[str], qtexts: List[str], k: int):
    """A BM25 run with bm25s (Lucene variant, k1=1.5, b=0.75, English stopwords, no stemming)."""
    try:
        import bm25s
    except ImportError:
        raise CLIError("BM25 needs bm25s: pip install 'flatcoat[eval]'") from None
    t0 = time.perf_counter()
    model = bm25s.BM25()
    model.index(bm25s.tokenize(corpus_texts, stopwords="en", show_progress=False), show_progress=False)
    t1 = time.perf_counter()
    docs, scores = model.retrieve(
        bm25s.tokenize(qtexts, stopwords="en", show_progress=False), k=min(k, len(corpus_ids)), show_progress=False
    )
    t2 = time.perf_counter()
    run = {q: {corpus_ids[int(d)]: float(s) for d, s in zip(docs[i], scores[i])} for i, q in enumerate(qids)}
    return run, t1 - t0, t2 - t1


def evaluate_dataset(
    dataset: str,
    model: str = "all-MiniLM-L6-v2",
    storages: Sequence[str] = ("f32",),
    rescore: Sequence[int] = (),
    multivector: bool = False,
    bm25: bool = False,
    split: str = "test",
    metrics: Sequence[str] = ("ndcg@10", "recall@100", "mrr@10", "map"),
    batch_size: int = 32,
    cache: Optional[str] = None,
    log=None,
) -> List[Dict[str, Any]]:
    """Rows of ``{"system", metrics..., "encode_s", "search_s"}`` for one BEIR-format collection.

    One document encode serves every storage; the dense and multi-vector encoders of one model share
    a forward pass (so their ``encode_s`` is the same shared time)."""
    import flatcoat
    from . import eval as fe

    corpus, queries, qrels = fe.load_beir(dataset, split=split)
    if not queries:
        raise CLIError(f"{dataset}: no judged queries for split {split!r}")
    dids = list(corpus)
    texts = [fe.doc_text(corpus[d]) for d in dids]
    qids = list(queries)
    qtexts = [queries[q] for q in qids]
    cuts = [int(m.split("@")[1]) for m in metrics if "@" in m]
    k = min(max(cuts + [100]), len(dids))
    tag = os.path.abspath(dataset)
    rows: List[Dict[str, Any]] = []

    def row(system: str, run, encode_s: float, search_s: float):
        r = {"system": system, **fe.evaluate(run, qrels, metrics), "encode_s": encode_s, "search_s": search_s}
        rows.append(r)
        if log:
            log(r)

    encs = []
    if storages:
        encs.append(_encoder(model, "dense"))
    if multivector:
        encs.append(_encoder(model, "multivector"))
    if encs:
        docs, td = _encode_all(encs, texts, "document", cache, tag, batch_size)
        qs, tq = _encode_all(encs, qtexts, "query", cache, tag, batch_size)
        if log:
            log({"encoded": f"{len(texts)} documents and {len(qtexts)} queries in {td + tq:.1f} s"})
    for enc, D, Q in zip(encs, docs if encs else [], qs if encs else []):
        if enc.kind == "dense":
            for storage in storages:
                quantized = storage in ("int8", "binary")
                index = flatcoat.DenseIndex(enc.dim, metric="ip", storage=storage, keep_float=quantized and bool(rescore))
                index.add(D)
                depths = [None] + ([r for r in rescore if r >= k] if quantized else [])
                for depth in depths:
                    t0 = time.perf_counter()
                    scores, ids = index.search(Q, k=k, rescore=depth)
                    ts = time.perf_counter() - t0
                    name = f"dense {storage}" + (f" + rescore@{depth}" if depth else "")
                    row(name, fe.run_from_results(qids, scores, ids, dids), td + tq, ts)
        else:
            index = _multivector_index_cls()(enc.dim)
            index.add(D)
            t0 = time.perf_counter()
            scores, ids = index.search(Q, k=k)
            ts = time.perf_counter() - t0
            label = "multivector (stand-in)" if enc.config.stand_in else "multivector"
            row(f"{label} MaxSim", fe.run_from_results(qids, scores, ids, dids), td + tq, ts)
    if bm25:
        run, ti, ts = bm25_run(dids, texts, qids, qtexts, k)
        row("BM25 (bm25s)", run, ti, ts)
    return rows


def format_table(rows: List[Dict[str, Any]], metrics: Sequence[str]) -> str:
    head = ["system", *metrics, "encode", "search"]
    body = [[r["system"], *[f"{r[m]:.4f}" for m in metrics], _fmt_time(r["encode_s"]), _fmt_time(r["search_s"])] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *[line(b) for b in body]])


def _cmd_eval(args) -> int:
    if not Path(args.dataset).is_dir():
        raise CLIError(f"{args.dataset} is not a directory (expected a BEIR-format collection: corpus.jsonl, queries.jsonl, qrels/)")
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    from . import eval as fe

    for m in metrics:
        fe._parse_metric(m)
    storages = [] if args.multivector and not args.storage_given else args.storage
    def log(r):
        if "encoded" in r:
            print(f"encoded {r['encoded']}", file=sys.stderr)
        else:
            print(f"  {r['system']}: " + ", ".join(f"{m} {r[m]:.4f}" for m in metrics), file=sys.stderr)

    rows = evaluate_dataset(
        args.dataset, model=args.model, storages=storages, rescore=args.rescore, multivector=args.multivector,
        bm25=args.bm25, split=args.split, metrics=metrics, batch_size=args.batch_size, cache=args.cache,
        log=log if args.verbose else None,
    )
    print(f"{args.dataset} (split {args.split}, model {args.model})")
    print(format_table(rows, metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
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


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _cmd_info(args) -> int:
    import flatcoat

    info = flatcoat.info()
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


DEMO_QUERIES = (
    "read a csv file",
    "parse command line arguments",
    "download a web page over http",
    "compress data with gzip",
    "run a shell command and capture its output",
    "copy a directory tree",
    "current date and time in UTC",
    "turn a Python object into JSON text",
)

# Never imported by the demo: side effects (a browser, the Zen printed), a display, tests, or deprecated shims.
_DEMO_SKIP = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3", "pydoc_data",
    "ensurepip", "distutils", "encodings", "msilib", "xxsubtype", "xxlimited", "xxlimited_35", "lib2to3",
}


def _public(name: str) -> bool:
    return not name.startswith("_") and not name.startswith("test") and name not in _DEMO_SKIP


def _first_paragraph(doc: Optional[str]) -> str:
    import inspect

    if not isinstance(doc, str):
        return ""
    text = inspect.cleandoc(doc).strip()
    return " ".join(text.split("\n\n", 1)[0].split())


def stdlib_documents(max_docs: int) -> Tuple[List[str], List[str]]:
    """(ids, texts): "module.name: first paragraph of the docstring" for the standard library's public
    modules (and their public submodules), functions and classes; each object once."""
    import importlib
    import inspect
    import pkgutil
    import warnings

    ids: List[str] = []
    texts: List[str] = []
    seen = set()
    names = set()

    def add(qualname: str, obj: Any) -> None:
        # Each object once (re-exports), each name once (a name listed twice in __all__).
        if id(obj) in seen or qualname in names or len(ids) >= max_docs:
            return
        para = _first_paragraph(getattr(obj, "__doc__", None))
        if len(para) < 12:  # nothing to match a request against
            return
        seen.add(id(obj))
        names.add(qualname)
        ids.append(qualname)
        texts.append(f"{qualname}: {para}")

    def visit(modname: str, mod: Any) -> None:
        add(modname, mod)
        names = getattr(mod, "__all__", None)
        if not isinstance(names, (list, tuple)):
            names = [n for n in vars(mod) if not n.startswith("_")]
        for n in names:
            obj = getattr(mod, n, None) if isinstance(n, str) and not n.startswith("_") else None
            if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
                add(f"{modname}.{n}", obj)

    def load(name: str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return importlib.import_module(name)
        except BaseException:  # a module this platform lacks, or one that refuses to import here
            return None

    for name in sorted(sys.stdlib_module_names):
        if not _public(name) or len(ids) >= max_docs:
            continue
        mod = load(name)
        if mod is None:
            continue
        visit(name, mod)
        for info in pkgutil.iter_modules(getattr(mod, "__path__", None) or []):
            if _public(info.name) and len(ids) < max_docs:
                sub = load(f"{name}.{info.name}")
                if sub is not None:
                    visit(f"{name}.{info.name}", sub)
    return ids, texts


def _cmd_demo(args) -> int:
    import flatcoat
    from .retriever import Retriever

    t0 = time.perf_counter()
    ids, texts = stdlib_documents(args.max_docs)
    t1 = time.perf_counter()
    print(f"collected {len(texts)} docstrings of standard-library modules, functions and classes in {_fmt_time(t1 - t0)}")
    # Docstring first paragraphs are short: 128 tokens keep nearly all of them whole and encode faster.
    from .encoders import Encoder

    enc = Encoder.from_pretrained("all-MiniLM-L6-v2", document_max_length=128)
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, metric="ip", storage="f32"))
    r.add(texts, ids=ids, batch_size=64)
    t2 = time.perf_counter()
    print(f"encoded and indexed them with {enc!r} in {_fmt_time(t2 - t1)} ({len(texts) / (t2 - t1):.0f} docs/s)\n")
    for query in args.query or DEMO_QUERIES:
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


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatcoat", description="Dense and late-interaction retrieval with a native core.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("index", help="encode a JSONL corpus into a retriever directory")
    p.add_argument("corpus", help="JSONL file, one {\"_id\", \"title\", \"text\"} object a line (or a BEIR directory)")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model directory or name (default: the bundled MiniLM)")
    p.add_argument("--storage", default="f32", choices=STORAGES)
    p.add_argument("--rerank", choices=("exact", "multivector"), default=None,
                   help="second stage: exact float rescoring of a quantized scan, or MaxSim over a shortlist")
    p.add_argument("--multivector", action="store_true", help="single-stage late interaction (exact MaxSim)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="query a retriever directory")
    p.add_argument("dir")
    p.add_argument("query")
    p.add_argument("-k", type=_positive_int, default=10)
    p.add_argument("--instruction", default=None, help="task description applied to the query")
    p.add_argument("--shortlist", type=_positive_int, default=None, help="first-stage candidates for the rerank stage")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("eval", help="retrieval quality on a BEIR-format collection")
    p.add_argument("dataset", metavar="DATASET_DIR")
    p.add_argument("--model", default="all-MiniLM-L6-v2")
    p.add_argument("--storage", type=_storage_list, default=["f32"],
                   help="comma-separated storages to compare, e.g. f32,int8,binary (one encode for all)")
    p.add_argument("--rescore", type=_int_list, default=[],
                   help="comma-separated shortlist depths for exact rescoring of int8/binary, e.g. 100,200,500")
    p.add_argument("--multivector", action="store_true", help="add the exact MaxSim row (multi-vector encoder)")
    p.add_argument("--bm25", action="store_true", help="add a BM25 row (bm25s) as the lexical reference")
    p.add_argument("--split", default="test")
    p.add_argument("--metrics", default="ndcg@10,recall@100,mrr@10,map")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--cache", default=None, help="directory to cache embeddings in between runs")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true", help="report each row on stderr as it is measured")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("demo", help="search the standard library's docstrings with the bundled model")
    p.add_argument("--max-docs", type=_positive_int, default=6000, help="cap on the number of docstrings indexed")
    p.add_argument("-k", type=_positive_int, default=3)
    p.add_argument("--query", action="append", help="a request to answer (repeatable); default: a built-in few")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="measure the machine's ceilings, then the kernels against them")
    p.add_argument("--quick", action="store_true", help="about a minute: smaller data, fewer repeats")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--isa", default="best", help="'best' (default), 'all' (one row per compiled ISA) or an ISA name")
    p.add_argument("--threads", type=_positive_int, default=None, help="threads (default: flatcoat's setting)")
    p.add_argument("--json", default=None, help="write the full report (machine, versions, every figure) here")
    p.add_argument("--plot", default=None, help="draw a roofline to this image file (needs matplotlib)")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats per figure (default 5, quick 3)")
    p.add_argument("--size-factor", type=_positive_float, default=1.0, help=argparse.SUPPRESS)  # tests: tiny sizes
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("info", help="build and CPU features")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if args.command == "eval":
        args.storage_given = any(a == "--storage" or a.startswith("--storage=") for a in raw)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("flatcoat: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, KeyError, OSError) as exc:
        if os.environ.get("FLATCOAT_DEBUG"):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"flatcoat {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
