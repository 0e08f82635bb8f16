"""BEIR loading and ranking metrics: hand-computed cases, then a cross-check against ranx on real runs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from flatcoat import eval as fe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ------------------------------------------------------------- hand-computed
def test_metrics_by_hand():
    qrels = {"q": {"a": 3, "b": 1, "z": 2, "n": 0}}
    run = {"q": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6}}
    got = fe.evaluate(run, qrels, ["ndcg@3", "recall@2", "recall@10", "mrr@10", "map", "precision@2"])
    dcg = 3 / math.log2(3)  # a at rank 2; b (rank 4) is past the cutoff
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)  # gains are the grades
    assert got["ndcg@3"] == pytest.approx(dcg / idcg)
    assert got["recall@2"] == pytest.approx(1 / 3)  # n has grade 0: not relevant
    assert got["recall@10"] == pytest.approx(2 / 3)
    assert got["mrr@10"] == pytest.approx(1 / 2)
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert got["precision@2"] == pytest.approx(1 / 2)


def test_missing_queries_count_as_zero_and_ties_break_by_doc_id():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert fe.evaluate({"q1": {"a": 1.0}}, qrels, ["mrr@10"]) == {"mrr@10": 0.5}
    # a tie: "a" sorts before "b", so the relevant "b" is second
    assert fe.evaluate({"q2": {"b": 1.0, "a": 1.0}}, {"q2": {"b": 1}}, ["mrr@10"]) == {"mrr@10": 0.5}


def test_bad_metric_names():
    with pytest.raises(ValueError, match="unknown metric"):
        fe.evaluate({}, {"q": {"a": 1}}, ["bleu"])
    with pytest.raises(ValueError, match="needs a cutoff"):
        fe.evaluate({}, {"q": {"a": 1}}, ["ndcg"])
    with pytest.raises(ValueError, match="qrels is empty"):
        fe.evaluate({}, {}, ["map"])


# ------------------------------------------------------------------- loading
def _write_beir(root: Path, corpus_lines, query_lines, qrels_text):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (root / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (root / "qrels" / "test.tsv").write_text(qrels_text)
    return root


def test_load_beir(tmp_path):
    root = _write_beir(
        tmp_path / "d",
        ['{"_id": "d1", "title": "T1", "text": "one"}', '{"_id": "d2", "title": "", "text": "two "}', '{"_id": 3, "text": "x"}'],
        ['{"_id": "q1", "text": "first"}', '{"_id": "q2", "text": "unjudged"}'],
        "query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t0\n",
    )
    corpus, queries, qrels = fe.load_beir(root)
    assert corpus["d1"] == {"title": "T1", "text": "one"} and "3" in corpus
    assert queries == {"q1": "first"}  # only judged queries, as BEIR's loader does
    assert qrels == {"q1": {"d2": 2, "d1": 0}}
    assert fe.doc_text(corpus["d1"]) == "T1 one" and fe.doc_text(corpus["d2"]) == "two"


def test_load_beir_errors_name_the_line(tmp_path):
    root = _write_beir(tmp_path / "bad", ['{"_id": "d1", "text": "a"}', '{"_id": "d2", "text": '], ['{"_id": "q", "text": "x"}'], "q\td1\t1\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: malformed JSON"):
        fe.load_beir(root)
    with pytest.raises(ValueError, match=r"no qrels for split 'dev'.*\['test'\]"):
        fe.load_beir(root, split="dev")
    with pytest.raises(ValueError, match="does not exist"):
        fe.load_beir(tmp_path / "nowhere")
    root2 = _write_beir(tmp_path / "b2", ['{"_id": "d1", "text": "a"}'], ['{"_id": "q", "text": "x"}'], "q\td1\n")
    with pytest.raises(ValueError, match=r"test.tsv:1: expected 3 tab-separated columns"):
        fe.load_beir(root2)
    root3 = _write_beir(tmp_path / "b3", ['{"_id": "d1", "text": "a"}'], ['{"_id": "q", "text": "x"}'], "zz\td1\t1\n")
    with pytest.raises(ValueError, match="not in queries.jsonl"):
        fe.load_beir(root3)


# ---------------------------------------------------- cross-check with ranx
def _need(name: str) -> Path:
    d = DATA / name
    if not (d / "corpus.jsonl").is_file():
        pytest.skip(f"{d} is missing (the shared test collections live in <repo>/../shared/data)")
    return d


def _bm25_run(corpus, queries, k=100):
    bm25s = pytest.importorskip("bm25s")
    dids = list(corpus)
    model = bm25s.BM25()
    model.index(bm25s.tokenize([fe.doc_text(corpus[d]) for d in dids], stopwords="en", show_progress=False), show_progress=False)
    qids = list(queries)
    docs, _ = model.retrieve(bm25s.tokenize([queries[q] for q in qids], stopwords="en", show_progress=False), k=k, show_progress=False)
    # Scores by rank: a real BM25 ranking, with no ties left for the two implementations to break differently.
    return {q: {dids[int(d)]: float(k - r) for r, d in enumerate(docs[i])} for i, q in enumerate(qids)}


def _ranx(run, qrels, metrics):
    ranx = pytest.importorskip("ranx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's type-safety warnings inside ranx
        out = ranx.evaluate(ranx.Qrels({q: dict(v) for q, v in qrels.items()}), ranx.Run({q: dict(v) for q, v in run.items()}),
                            list(metrics))
    return {m: float(out[m]) for m in metrics}


@pytest.mark.parametrize("name", ["scifact", "cranfield"])
def test_metrics_match_ranx_on_a_real_run(name):
    corpus, queries, qrels = fe.load_beir(_need(name))
    run = _bm25_run(corpus, queries)
    metrics = ["ndcg@10", "ndcg@100", "recall@100", "recall@10", "mrr@10", "map", "precision@5"]
    ours = fe.evaluate(run, qrels, metrics)
    theirs = _ranx(run, qrels, metrics)
    for m in metrics:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-9), m
    # Sanity of the run itself: BM25 on SciFact is far from random.
    if name == "scifact":
        assert ours["ndcg@10"] > 0.55


def test_scifact_counts():
    corpus, queries, qrels = fe.load_beir(_need("scifact"))
    assert len(corpus) == 5183 and len(queries) == 300 and sum(len(v) for v in qrels.values()) == 339
    assert set(qrels) == set(queries)


def test_run_from_results():
    scores = np.array([[0.9, 0.5, -np.inf]], dtype=np.float32)
    ids = np.array([[2, 0, -1]], dtype=np.int64)
    assert fe.run_from_results(["q"], scores, ids, ["a", "b", "c"]) == {"q": {"c": pytest.approx(0.9), "a": 0.5}}
