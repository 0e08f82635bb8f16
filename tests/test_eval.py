"""Corpus and BEIR loading, ranking metrics (hand-computed, then against ranx on real runs), BM25, the embedding cache."""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from flatcoat import eval as fe
from flatcoat._cache import EmbeddingCache
from flatcoat.corpus import doc_text, read_corpus, read_jsonl

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
    assert doc_text(corpus["d1"]) == "T1 one" and doc_text(corpus["d2"]) == "two"


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
    pytest.importorskip("bm25s")
    from flatcoat.lexical import BM25

    dids, qids = list(corpus), list(queries)
    _, docs = BM25([doc_text(corpus[d]) for d in dids]).search([queries[q] for q in qids], k=k)
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


def test_evaluation_depth():
    assert fe.evaluation_depth(["ndcg@10", "recall@100"], 82) == 82  # ADI: the corpus is smaller
    assert fe.evaluation_depth(["ndcg@10", "map"], 5000) == fe.MIN_DEPTH
    assert fe.evaluation_depth(["recall@1000"], 5000) == 1000


# ------------------------------------------------------------------- corpora
def test_read_jsonl_names_the_line_and_byte_offset_of_bad_utf8(tmp_path):
    path = tmp_path / "c.jsonl"
    line1 = b'{"_id": "a", "text": "ok"}\n'
    path.write_bytes(line1 + b'{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError) as e:
        list(read_jsonl(path, "corpus"))
    offset = len(line1) + len(b'{"_id": "b", "text": "caf')
    assert str(e.value).startswith(f"{path}:2: not valid UTF-8 (byte 0xe9 at column 26, byte offset {offset} ")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + line1)  # a byte-order mark is not an error
    assert list(read_jsonl(bom)) == [(1, {"_id": "a", "text": "ok"})]


def test_qrels_that_are_not_utf8_name_the_line(tmp_path):
    root = _write_beir(tmp_path / "d", ['{"_id": "d1", "text": "a"}'], ['{"_id": "q", "text": "x"}'], "q\td1\t1\n")
    (root / "qrels" / "test.tsv").write_bytes(b"q\td1\t1\nq\td\xff\t1\n")
    with pytest.raises(ValueError, match=r"test.tsv:2: not valid UTF-8 \(byte 0xff at byte offset 10 "):
        fe.load_beir(root)


def test_read_corpus_skips_and_counts_empty_documents(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "title": "T", "text": "one"}\n{"_id": 7, "text": "  "}\n'
                    '{"text": "no id"}\n{"id": "c", "title": "", "text": ""}\n')
    corpus = read_corpus(path)
    assert corpus.ids == ["a", 2] and corpus.texts == ["T one", "no id"] and corpus.skipped == [7, "c"]
    assert len(corpus) == 2
    path.write_text('{"_id": "a", "text": ""}\n')
    with pytest.raises(ValueError, match="the corpus is empty \\(all 1 documents are empty\\)"):
        read_corpus(path)


def test_read_corpus_errors_name_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    with pytest.raises(ValueError, match="c.jsonl:2: duplicate id 'a'"):
        read_corpus(path)
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "bad \\ud800"}\n')
    with pytest.raises(ValueError, match="c.jsonl:2: the document contains a lone surrogate"):
        read_corpus(path)
    path.write_text('{"_id": [1], "text": "x"}\n')
    with pytest.raises(ValueError, match="c.jsonl:1: the id must be a string or an integer"):
        read_corpus(path)
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    assert read_corpus(tmp_path / "beir").ids == ["d"]  # a BEIR directory


# ---------------------------------------------------------------------- BM25
def test_bm25_follows_the_search_result_rule():
    pytest.importorskip("bm25s")
    from flatcoat.lexical import BM25

    texts = ["cat sat", "dogs park", "cat ate", "nothing shared"]
    bm25 = BM25(texts)
    scores, ids = bm25.search(["cat", "unknownword"], k=10)
    assert scores.shape == ids.shape == (2, 4)  # k' = min(k, n)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert ids[0, :2].tolist() == [0, 2] and scores[0, 0] == scores[0, 1] > 0  # a tie: the smaller id first
    assert ids[1].tolist() == [0, 1, 2, 3] and (scores[1] == 0).all()
    assert (np.diff(scores, axis=1) <= 0).all()
    assert bm25.search(["park"], k=1)[1].tolist() == [[1]]
    with pytest.raises(TypeError, match="k"):
        bm25.search(["cat"], k=2.0)
    with pytest.raises(TypeError, match="queries"):
        bm25.search("cat", k=1)


# ------------------------------------------------------------ embedding cache
@dataclasses.dataclass
class _Config:
    max_length: int = 256


@dataclasses.dataclass
class _FakeEncoder:
    kind: str
    name: str = "model"
    config: _Config = dataclasses.field(default_factory=_Config)


def test_embedding_cache_round_trip(tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    dense, multi = _FakeEncoder("dense"), _FakeEncoder("multivector")
    texts = ["a", "b", "c"]
    assert cache.get(dense, texts, "document") is None
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    cache.put(dense, texts, "document", vectors)
    np.testing.assert_array_equal(cache.get(dense, texts, "document"), vectors)
    # another side, other texts, another configuration: other entries
    assert cache.get(dense, texts, "query") is None
    assert cache.get(dense, ["a", "b", "d"], "document") is None
    assert cache.get(_FakeEncoder("dense", config=_Config(128)), texts, "document") is None
    bags = [np.ones((2, 4), np.float32), np.zeros((1, 4), np.float32), np.full((3, 4), 2, np.float32)]
    cache.put(multi, texts, "document", bags)
    got = cache.get(multi, texts, "document")
    assert [g.shape for g in got] == [(2, 4), (1, 4), (3, 4)]
    for g, b in zip(got, bags):
        np.testing.assert_array_equal(g, b)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # written through a temporary name
