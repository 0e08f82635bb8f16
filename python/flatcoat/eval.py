"""Evaluation on BEIR-format collections: loading, ranking metrics, and whole runs.

A *run* maps each query id to ``{doc_id: score}`` (higher is better); *qrels*
map each query id to ``{doc_id: grade}`` (grade > 0 is relevant). Metrics are
the trec_eval definitions: nDCG@k with linear gains equal to the grades and a
log2 discount, Recall@k, MRR@k (reciprocal rank of the first relevant
document within k), MAP (average precision over the whole run), P@k.
Every query in the qrels counts; a query missing from the run scores 0.

Ties in a run are broken by document id (ascending) so results are
deterministic.

:func:`evaluate_dataset` is ``flatcoat eval``: it encodes a collection once and
measures every requested system (dense storages, exact re-ranking, MaxSim,
BM25, a hybrid fusion) on it.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._cache import EmbeddingCache
from ._storage import DENSE_STORAGES
from ._validate import as_bool, as_int
from .corpus import doc_text, document_fields, non_empty, read_jsonl

__all__ = ["load_beir", "evaluate", "per_query", "run_from_results", "evaluate_dataset", "evaluation_depth",
           "Evaluation", "DEFAULT_METRICS", "MIN_DEPTH"]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def _field(obj: dict, key: str, path: Path, lineno: int, required: bool = True) -> str:
    v = obj.get(key)
    if v is None:
        if required:
            raise ValueError(f"{path}:{lineno}: missing field {key!r}")
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and key == "_id":
        return str(v)
    if not isinstance(v, str):
        raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {type(v).__name__}")
    return v


def load_corpus(path: "str | os.PathLike[str]") -> Dict[str, Dict[str, str]]:
    """``corpus.jsonl`` -> ``{doc_id: {"title": ..., "text": ...}}``."""
    path = Path(path)
    corpus: Dict[str, Dict[str, str]] = {}
    for lineno, obj in read_jsonl(path, "corpus"):
        did = _field(obj, "_id", path, lineno)
        if did in corpus:
            raise ValueError(f"{path}:{lineno}: duplicate document id {did!r}")
        title, text = document_fields(obj, path, lineno)  # the rule of flatcoat index (read_corpus)
        corpus[did] = {"title": title, "text": text}
    if not corpus:
        raise ValueError(f"{path}: the corpus is empty")
    return corpus


def load_queries(path: "str | os.PathLike[str]") -> Dict[str, str]:
    """``queries.jsonl`` -> ``{query_id: text}``."""
    path = Path(path)
    queries: Dict[str, str] = {}
    for lineno, obj in read_jsonl(path, "queries"):
        queries[_field(obj, "_id", path, lineno)] = _field(obj, "text", path, lineno)
    return queries


def load_qrels(path: "str | os.PathLike[str]") -> Dict[str, Dict[str, int]]:
    """``qrels/<split>.tsv`` (header ``query-id corpus-id score``) -> ``{qid: {doc_id: grade}}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"qrels file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start} "
                         "of the file); save the file as UTF-8") from None
    qrels: Dict[str, Dict[str, int]] = {}
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline=""), delimiter="\t"), 1):
        if not row or not "".join(row).strip():
            continue
        if lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(row) < 3:
            raise ValueError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score)")
        try:
            grade = int(float(row[2]))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: score {row[2]!r} is not a number") from None
        qrels.setdefault(row[0].strip(), {})[row[1].strip()] = grade
    return qrels


def load_beir(
    dir: "str | os.PathLike[str]", split: str = "test"
) -> Tuple[Dict[str, Dict[str, str]], Dict[str, str], Dict[str, Dict[str, int]]]:
    """Load a BEIR-format collection: ``(corpus, queries, qrels)``.

    ``corpus``: ``{doc_id: {"title", "text"}}``; ``queries``: ``{qid: text}``,
    only the queries judged in ``qrels/<split>.tsv`` (as BEIR's loader does);
    ``qrels``: ``{qid: {doc_id: grade}}``.
    """
    root = Path(dir)
    if not root.is_dir():
        raise ValueError(f"dataset directory {root} does not exist (expected corpus.jsonl, queries.jsonl, qrels/)")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise ValueError(f"no qrels for split {split!r}: {qrels_path} does not exist; splits present: {have}")
    corpus = load_corpus(root / "corpus.jsonl")
    all_queries = load_queries(root / "queries.jsonl")
    qrels = load_qrels(qrels_path)
    missing = [q for q in qrels if q not in all_queries]
    if missing:
        raise ValueError(f"{qrels_path}: {len(missing)} judged query id(s) are not in queries.jsonl, e.g. {missing[0]!r}")
    queries = {q: all_queries[q] for q in all_queries if q in qrels}
    return corpus, queries, qrels


def _parse_metric(name: str) -> Tuple[str, int]:
    base, _, cut = name.lower().partition("@")
    if base not in ("ndcg", "recall", "mrr", "map", "precision", "p"):
        raise ValueError(f"unknown metric {name!r}; use ndcg@k, recall@k, mrr@k, map, map@k or precision@k")
    if not cut:
        if base in ("ndcg", "recall", "precision", "p"):
            raise ValueError(f"metric {name!r} needs a cutoff, e.g. {base}@10")
        return base, 0
    if not cut.isdigit() or int(cut) < 1:
        raise ValueError(f"metric {name!r}: the cutoff must be a positive integer")
    return ("precision" if base == "p" else base), int(cut)


def _ranked(scores: Mapping[str, float]) -> List[str]:
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (-float(kv[1]), kv[0]))]


def _metric(base: str, cut: int, ranking: List[str], rel: Mapping[str, int]) -> float:
    relevant = {d for d, g in rel.items() if g > 0}
    if not relevant:
        return 0.0
    top = ranking[:cut] if cut else ranking
    hits = np.array([d in relevant for d in top], dtype=bool)
    if base == "recall":
        return float(hits.sum()) / len(relevant)
    if base == "precision":
        return float(hits.sum()) / cut
    if base == "mrr":
        first = np.flatnonzero(hits)
        return 1.0 / (first[0] + 1) if first.size else 0.0
    if base == "map":
        ranks = np.flatnonzero(hits) + 1
        return float((np.arange(1, ranks.size + 1) / ranks).sum()) / len(relevant)
    # ndcg: gains are the grades (trec_eval's linear gains), discount log2(rank + 1)
    gains = np.array([max(rel.get(d, 0), 0) for d in top], dtype=np.float64)
    disc = 1.0 / np.log2(np.arange(2, len(top) + 2))
    ideal = np.sort(np.array([g for g in rel.values() if g > 0], dtype=np.float64))[::-1][:cut]
    idcg = float((ideal / np.log2(np.arange(2, ideal.size + 2))).sum())
    return float((gains * disc).sum()) / idcg


def per_query(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS) -> Dict[str, Dict[str, float]]:
    """``{metric: {qid: value}}`` over every query in ``qrels`` that has a relevant document."""
    parsed = [(m, *_parse_metric(m)) for m in metrics]
    out: Dict[str, Dict[str, float]] = {m: {} for m, _, _ in parsed}
    for qid, rel in qrels.items():
        if not any(g > 0 for g in rel.values()):
            continue  # trec_eval and ranx skip queries with nothing relevant
        ranking = _ranked(run.get(qid, {}))
        for m, base, cut in parsed:
            out[m][qid] = _metric(base, cut, ranking, rel)
    return out


def evaluate(run: Run, qrels: Qrels, metrics: Sequence[str] = DEFAULT_METRICS) -> Dict[str, float]:
    """Mean of each metric over the judged queries.

    >>> evaluate({"q": {"a": 2.0, "b": 1.0}}, {"q": {"b": 1}}, ["mrr@10", "recall@1"])
    {'mrr@10': 0.5, 'recall@1': 0.0}
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not qrels:
        raise ValueError("qrels is empty; nothing to evaluate")
    pq = per_query(run, qrels, metrics)
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in pq.items()}


def run_from_results(query_ids: Sequence[str], scores: np.ndarray, doc_ids: np.ndarray, id_names: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Turn ``(scores, ids)`` arrays from a search into a run; ids index ``id_names``; -1 is skipped."""
    run: Dict[str, Dict[str, float]] = {}
    for qi, qid in enumerate(query_ids):
        row = {}
        for s, d in zip(scores[qi].tolist(), doc_ids[qi].tolist()):
            if d >= 0:
                row[id_names[d]] = float(s)
        run[qid] = row
    return run


# ------------------------------------------------------------------ whole runs
#: Every run retrieves at least this many documents per query: MAP and any
#: metric without a cutoff read the whole run (BEIR's depth).
MIN_DEPTH = 100


@dataclass
class Evaluation:
    """What :func:`evaluate_dataset` measured on one collection.

    ``rows``: one dict per system, in the order measured: ``{"system": name,
    <metric>: mean over the judged queries, ..., "encode_s", "search_s"}``
    (``encode_s`` is the shared document + query encoding time, the index
    build time for BM25). ``depth``: results retrieved per query (the largest
    metric cutoff, at least :data:`MIN_DEPTH`, at most ``documents``).
    ``rerank``: the re-ranking depths measured, each at least ``depth``.
    ``skipped``: ids of the empty documents left out. ``notes``: sentences
    saying what the run adjusted or left out (``flatcoat eval`` prints them).
    """

    dataset: str
    split: str
    model: str
    metrics: Tuple[str, ...]
    documents: int
    queries: int
    depth: int
    rerank: List[int] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    rows: List[Dict[str, Any]] = field(default_factory=list)


def evaluation_depth(metrics: Sequence[str], documents: int) -> int:
    """Results per query a run needs for ``metrics``: the largest cutoff, at least MIN_DEPTH, at most ``documents``."""
    cuts = [_parse_metric(m)[1] for m in metrics]
    return min(max(cuts + [MIN_DEPTH]), documents)


def _encode(encoders, texts: List[str], side: str, cache: Optional[EmbeddingCache], batch_size: int):
    """``([one output per encoder], seconds)``: cached outputs are read back; documents of
    encoders of one model share a forward pass (``encode_documents_shared``)."""
    from .encoders import encode_documents_shared

    outs = [cache.get(e, texts, side) if cache else None for e in encoders]
    todo = [i for i, o in enumerate(outs) if o is None]
    t0 = time.perf_counter()
    if todo and side == "document":
        for i, o in zip(todo, encode_documents_shared([encoders[i] for i in todo], texts, batch_size=batch_size)):
            outs[i] = o
    else:
        for i in todo:
            outs[i] = encoders[i].encode_queries(texts, batch_size=batch_size)
    elapsed = time.perf_counter() - t0
    if cache:
        for i in todo:
            cache.put(encoders[i], texts, side, outs[i])
    return outs, elapsed


def _fde_args(muvera: Any) -> Optional[Dict[str, Any]]:
    """``muvera=`` -> the FDE's keyword arguments (without ``dim``), or None."""
    if muvera is None or muvera is False:
        return None
    if muvera is True:
        from .muvera import DEFAULT_PROJECTED

        return dict(DEFAULT_PROJECTED)
    if not isinstance(muvera, dict):
        raise TypeError(f"muvera: expected True or a dict of FDE arguments (e.g. {{'k_sim': 4, 'projection': 16}}), got "
                        f"{type(muvera).__name__}")
    if "dim" in muvera:
        raise ValueError("muvera: leave out dim, it is the multi-vector encoder's")
    unknown = sorted(set(muvera) - {"k_sim", "repetitions", "projection", "final_dim", "seed"}, key=str)
    if unknown:
        raise ValueError(f"muvera: {', '.join(map(repr, unknown))} not an FDE argument (k_sim, repetitions, "
                         "projection, final_dim, seed)")
    return dict(muvera)


def evaluate_dataset(
    dataset: "str | os.PathLike[str]",
    *,
    model: str = "all-MiniLM-L6-v2",
    storages: Sequence[str] = ("f32",),
    rerank: Sequence[int] = (),
    multivector: bool = False,
    plaid: Sequence[int] = (),
    muvera: Any = None,
    bm25: bool = False,
    hybrid: Any = False,
    split: str = "test",
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int = 32,
    cache: "str | os.PathLike[str] | None" = None,
    log: Optional[Callable[[str], None]] = None,
) -> Evaluation:
    """Retrieval quality of several systems on one BEIR-format collection.

    One document encode serves every storage; the dense and multi-vector
    encoders of one model share a forward pass (so their ``encode_s`` is the
    same shared time). Systems: a ``DenseIndex`` per name in ``storages``
    (``"f32"``, ``"f16"``, ``"int8"``, ``"binary"``); for int8 and binary, one
    more row per depth in ``rerank`` (exact float re-ranking of that many
    candidates; a depth below the evaluation depth is raised to it, and the
    run's ``notes`` say so); the exact MaxSim row of the multi-vector encoder
    (``multivector``); a :class:`flatcoat.PlaidIndex` row per residual width
    in ``plaid`` (1, 2 or 4 bits, default stage sizes, ``"PLAID nbits=2"``);
    MUVERA rows (``muvera``: True for :data:`flatcoat.muvera.DEFAULT_PROJECTED`, or a dict of
    :class:`flatcoat.muvera.FDE` keyword arguments without ``dim``): the FDEs
    in an f32 ``DenseIndex``, the best ``R`` re-ranked by exact MaxSim, one
    row per depth in ``rerank`` (default: the evaluation depth); BM25 (``bm25``, needs bm25s; no stemming, as the
    reference row has always been measured). ``hybrid``: False, or True (the
    default setting, :data:`flatcoat.fusion.DEFAULT_HYBRID`), a method name, a
    :class:`flatcoat.fusion.Hybrid` or a dict of its fields: one more row,
    ``"hybrid <setting> (<lists>)"``, fusing the dense f32 list and the
    Retriever's lexical stage (stemmed BM25, documents sharing no token with
    the query left out), each ``Hybrid.candidates(depth)`` deep; with
    ``multivector`` the MaxSim list is fused as a third list; ``"union"``
    re-ranks the union of the dense and lexical shortlists by exact MaxSim
    (encoding the multi-vector side if ``multivector`` did not). The lists it
    needs are computed whether or not their own rows were asked for, and add
    no rows. Empty documents are
    skipped and counted, as ``flatcoat index`` does. ``cache``: a directory
    where embeddings are kept between runs. ``log`` receives a line of
    progress as each step ends.
    """
    from .dense import DenseIndex
    from .encoders import Encoder
    from .multivector import MultiVectorIndex
    from .plaid import PlaidIndex

    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics:
        raise ValueError("metrics: expected at least one metric, e.g. ('ndcg@10',)")
    for m in metrics:
        _parse_metric(m)
    if isinstance(storages, str):
        storages = (storages,)
    for s in storages:
        if s not in DENSE_STORAGES:
            raise ValueError(f"storages: unknown storage {s!r}; expected some of {', '.join(DENSE_STORAGES)}")
    rerank = [as_int(r, "rerank", minimum=1) for r in rerank]
    multivector, bm25 = as_bool(multivector, "multivector"), as_bool(bm25, "bm25")
    if isinstance(plaid, (int, np.integer)):
        plaid = (plaid,)
    plaid = [as_int(b, "plaid", minimum=1) for b in plaid]
    if any(b not in (1, 2, 4) for b in plaid):
        raise ValueError(f"plaid: residual bits per dimension are 1, 2 or 4, got {plaid}")
    fde_args = _fde_args(muvera)
    if hybrid is False or (isinstance(hybrid, np.bool_) and not hybrid):
        fusion = None
    else:
        from .fusion import as_hybrid

        fusion = as_hybrid(hybrid)
    batch_size = as_int(batch_size, "batch_size", minimum=1)
    if not (storages or multivector or plaid or fde_args is not None or bm25 or fusion):
        raise ValueError("nothing to evaluate: give storages, multivector=True, plaid=[2], muvera=True, bm25=True "
                         "or hybrid=True")
    say = log or (lambda message: None)

    corpus, queries, qrels = load_beir(dataset, split=split)
    if not queries:
        raise ValueError(f"{dataset}: no judged queries for split {split!r}")
    dids, texts, skipped = non_empty(list(corpus), [doc_text(d) for d in corpus.values()])
    if not dids:
        raise ValueError(f"{dataset}: every document is empty (blank title and text)")
    qids = list(queries)
    qtexts = [queries[q] for q in qids]
    depth = evaluation_depth(metrics, len(dids))
    result = Evaluation(str(dataset), split, model, metrics, len(dids), len(qids), depth, skipped=skipped)
    if skipped:
        result.notes.append(f"skipped {len(skipped)} empty documents (blank title and text), e.g. {skipped[0]!r}")
    quantized = [s for s in storages if s in ("int8", "binary")]
    if rerank and not quantized and fde_args is None:
        result.notes.append("rerank: re-ranking applies to the int8 and binary storages (and MUVERA); none was "
                            "asked for")
    elif rerank:
        below = [r for r in rerank if r < depth]
        if below:
            result.notes.append(
                f"rerank: {', '.join(map(str, below))} {'is' if len(below) == 1 else 'are'} below the evaluation "
                f"depth {depth} (results per query: "
                f"the largest metric cutoff, at least {MIN_DEPTH}, at most the {len(dids)} documents); "
                f"re-ranked {depth} instead")
        result.rerank = list(dict.fromkeys(max(r, depth) for r in rerank))

    def row(system: str, run: Dict[str, Dict[str, float]], encode_s: float, search_s: float) -> None:
        r = {"system": system, **evaluate(run, qrels, metrics), "encode_s": encode_s, "search_s": search_s}
        result.rows.append(r)
        say(f"{system}: " + ", ".join(f"{m} {r[m]:.4f}" for m in metrics))

    encoders = []
    if storages or fusion:
        encoders.append(Encoder.from_pretrained(model, kind="dense"))
    if multivector or plaid or fde_args is not None or (fusion and fusion.method == "union"):
        encoders.append(Encoder.from_pretrained(model, kind="multivector"))
    lists: Dict[str, Any] = {}  # what the hybrid row fuses: (scores, ids) or the index and its queries
    store = EmbeddingCache(cache) if cache else None
    if encoders:
        docs, td = _encode(encoders, texts, "document", store, batch_size)
        qs, tq = _encode(encoders, qtexts, "query", store, batch_size)
        say(f"encoded {len(texts)} documents and {len(qtexts)} queries in {td + tq:.1f} s")
    for i, enc in enumerate(encoders):
        if enc.kind == "dense":
            if fusion:
                index = DenseIndex(enc.dim, metric="ip", storage="f32")
                index.add(docs[i])
                t0 = time.perf_counter()
                lists["dense"] = index.search(qs[i], k=fusion.candidates(depth))
                lists["dense_s"] = time.perf_counter() - t0
            for storage in storages:
                depths = [None] + (result.rerank if storage in quantized else [])
                index = DenseIndex(enc.dim, metric="ip", storage=storage, keep_float=len(depths) > 1)
                index.add(docs[i])
                for r in depths:
                    t0 = time.perf_counter()
                    scores, ids = index.search(qs[i], k=depth, rerank=r)
                    ts = time.perf_counter() - t0
                    name = f"dense {storage}" + (f" + rerank@{r}" if r else "")
                    row(name, run_from_results(qids, scores, ids, dids), td + tq, ts)
        else:
            index = MultiVectorIndex(enc.dim)
            index.add(docs[i])
            lists["multivector"] = (index, qs[i])
            label = "multivector (stand-in)" if enc.config.stand_in else "multivector"
            if multivector:
                t0 = time.perf_counter()
                scores, ids = index.search(qs[i], k=depth)
                ts = time.perf_counter() - t0
                row(f"{label} MaxSim", run_from_results(qids, scores, ids, dids), td + tq, ts)
            for nbits in plaid:
                t0 = time.perf_counter()
                compressed = PlaidIndex(enc.dim, nbits=nbits)
                compressed.add(docs[i])
                t1 = time.perf_counter()
                scores, ids = compressed.search(qs[i], k=depth)
                row(f"{label} PLAID nbits={nbits}", run_from_results(qids, scores, ids, dids), td + tq + t1 - t0,
                    time.perf_counter() - t1)
            if fde_args is not None:
                from . import muvera as mu

                fde = mu.FDE(enc.dim, **fde_args)
                t0 = time.perf_counter()
                fde_index = mu.encode_index(fde, docs[i])
                t1 = time.perf_counter()
                name = (f"{label} MUVERA k_sim={fde.k_sim} R={fde.repetitions}"
                        + (f" d_proj={fde.projection}" if fde.projection else ""))
                for r in result.rerank or [depth]:
                    t2 = time.perf_counter()
                    scores, ids = mu.search(fde, fde_index, index, qs[i], k=depth, rerank=r)
                    row(f"{name} + rerank@{r}", run_from_results(qids, scores, ids, dids), td + tq + t1 - t0,
                        time.perf_counter() - t2)
    if bm25:
        from .lexical import BM25

        t0 = time.perf_counter()
        lexical = BM25(texts, stemmer=None)  # the reference row as documented: no stemming
        t1 = time.perf_counter()
        scores, ids = lexical.search(qtexts, k=depth)
        row("BM25 (bm25s)", run_from_results(qids, scores, ids, dids), t1 - t0, time.perf_counter() - t1)
    if fusion:
        _hybrid_row(fusion, lists, texts, qtexts, depth, multivector, td + tq, row, qids, dids)
    return result


def _hybrid_row(fusion, lists, texts, qtexts, depth, multivector, encode_s, row, qids, dids) -> None:
    """The ``hybrid`` row of :func:`evaluate_dataset`: the dense (and MaxSim) lists fused with stemmed BM25."""
    from .fusion import fuse, union_candidates
    from .lexical import BM25, matched

    t0 = time.perf_counter()
    lexical_index = BM25(texts)  # the Retriever's lexical stage: stemmed
    t1 = time.perf_counter()
    cand = fusion.candidates(depth)
    lexical = matched(*lexical_index.search(qtexts, k=cand))
    if fusion.method == "union":
        index, queries = lists["multivector"]
        subset = union_candidates([lists["dense"], lexical], depth=cand)
        scores, ids = index.search(queries, k=depth, subset=subset)
        label, system = "union", "dense f32 | BM25 -> MaxSim"
    else:
        inputs = [lists["dense"]]
        if multivector:
            index, queries = lists["multivector"]
            inputs.append(index.search(queries, k=cand))
        scores, ids = fuse(fusion, inputs + [lexical], k=depth)
        label = f"rrf k={fusion.rrf_k}" if fusion.method == "rrf" else f"convex alpha={fusion.alpha:g}"
        system = "dense f32 + MaxSim + BM25" if multivector else "dense f32 + BM25"
    if fusion.depth is not None:
        label += f" depth={fusion.depth}"
    row(f"hybrid {label} ({system})", run_from_results(qids, scores, ids, dids), encode_s + t1 - t0,
        lists["dense_s"] + time.perf_counter() - t1)
