"""Evaluation on BEIR-format collections: loading and ranking metrics.

A *run* maps each query id to ``{doc_id: score}`` (higher is better); *qrels*
map each query id to ``{doc_id: grade}`` (grade > 0 is relevant). Metrics are
the trec_eval definitions: nDCG@k with linear gains equal to the grades and a
log2 discount, Recall@k, MRR@k (reciprocal rank of the first relevant
document within k), MAP (average precision over the whole run), P@k.
Every query in the qrels counts; a query missing from the run scores 0.

Ties in a run are broken by document id (ascending) so results are
deterministic.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

__all__ = ["load_beir", "read_jsonl", "evaluate", "per_query", "doc_text", "DEFAULT_METRICS"]

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map")

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def read_jsonl(path: "str | os.PathLike[str]", what: str = "file") -> Iterator[Tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line; malformed lines raise ValueError with the line number."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


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
        corpus[did] = {"title": _field(obj, "title", path, lineno, False), "text": _field(obj, "text", path, lineno, False)}
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
    qrels: Dict[str, Dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f, delimiter="\t"), 1):
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


def doc_text(doc: Mapping[str, str]) -> str:
    """The text BEIR encodes for a document: title + " " + text, stripped."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


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
