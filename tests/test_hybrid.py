"""Hybrid retrieval: fusion against a pure-Python reference, the BM25 stage (stemming, filtered search,
save/load, corruption), and the hybrid row of `flatcoat eval`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flatcoat
from flatcoat.fusion import DEFAULT_HYBRID, Hybrid, as_hybrid, fuse, union_candidates


# ------------------------------------------------------------------ reference
def _ranked_row(scores, ids, depth):
    """A list's row as [(id, score)] best first, ties by the smaller id, padding dropped, cut to depth."""
    row = sorted(((int(i), float(s)) for s, i in zip(scores, ids) if i >= 0), key=lambda e: (-e[1], e[0]))
    return row if depth is None else row[:depth]


def reference_fuse(hybrid, lists, k, lexical):
    n_lists, q = len(lists), len(lists[0][0])
    lex = set() if lexical is None else {lexical % n_lists}
    if hybrid.method == "rrf":
        weights = [1.0] * n_lists
    else:
        weights = [(1.0 - hybrid.alpha) / len(lex) if i in lex else hybrid.alpha / (n_lists - len(lex))
                   for i in range(n_lists)]
    depth = hybrid.depth if hybrid.depth is not None else max(10 * k, 100)
    rows = []
    for qi in range(q):
        fused = {}
        for li, (scores, ids) in enumerate(lists):
            row = _ranked_row(scores[qi], ids[qi], depth)
            if not row:
                continue
            lo, hi = min(s for _, s in row), max(s for _, s in row)
            for rank, (d, s) in enumerate(row, 1):
                if hybrid.method == "rrf":
                    part = weights[li] / (hybrid.rrf_k + rank)
                else:
                    part = weights[li] * ((s - lo) / (hi - lo) if hi > lo else 1.0)
                fused[d] = fused.get(d, 0.0) + part  # list by list, in order
        rows.append(sorted(fused.items(), key=lambda e: (-e[1], e[0])))
    width = min(k, max(len(r) for r in rows))
    out_s = np.full((q, width), -np.inf, np.float32)
    out_i = np.full((q, width), -1, np.int64)
    for qi, r in enumerate(rows):
        for j, (d, s) in enumerate(r[:width]):
            out_s[qi, j], out_i[qi, j] = s, d
    return out_s, out_i


@st.composite
def result_lists(draw):
    q = draw(st.integers(1, 3))
    n_lists = draw(st.integers(1, 3))
    lists = []
    for _ in range(n_lists):
        n = draw(st.integers(0, 8))
        scores = np.full((q, n), -np.inf)
        ids = np.full((q, n), -1, np.int64)
        for qi in range(q):
            m = draw(st.integers(0, n))
            chosen = draw(st.lists(st.integers(0, 11), min_size=m, max_size=m, unique=True))
            # few distinct values: ties within and across lists
            vals = draw(st.lists(st.sampled_from([-1.5, 0.0, 0.25, 1.0, 3.0]), min_size=m, max_size=m))
            slots = draw(st.permutations(range(n)))[:m]  # padding anywhere in the row, rows unsorted
            for slot, d, v in zip(slots, chosen, vals):
                ids[qi, slot], scores[qi, slot] = d, v
        lists.append((scores.astype(draw(st.sampled_from([np.float32, np.float64]))), ids))
    return lists


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=result_lists(), method=st.sampled_from(["rrf", "convex"]), alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
       rrf_k=st.sampled_from([1, 60]), depth=st.sampled_from([None, 1, 3]), k=st.integers(1, 12),
       lexical=st.sampled_from([-1, 0, None]))
def test_fuse_matches_the_reference(lists, method, alpha, rrf_k, depth, k, lexical):
    hybrid = Hybrid(method, alpha=alpha, rrf_k=rrf_k, depth=depth)
    if lexical is not None and method == "convex" and len(lists) == 1:
        lexical = None  # one list cannot be both lexical and semantic; covered below
    scores, ids = fuse(hybrid, lists, k, lexical=lexical)
    want_s, want_i = reference_fuse(hybrid, [(s.astype(np.float64), i) for s, i in lists], k, lexical)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_array_equal(scores, want_s)


def test_fuse_by_hand():
    dense = (np.array([[0.9, 0.8, 0.1]]), np.array([[4, 2, 7]]))
    lexical = (np.array([[12.0, 3.0, -np.inf]]), np.array([[7, 4, -1]]))
    s, i = fuse(Hybrid("rrf", rrf_k=60), [dense, lexical], k=10)
    assert i.tolist() == [[4, 7, 2]]  # 4: 1/61 + 1/62; 7: 1/63 + 1/61; 2: 1/62
    assert s[0].tolist() == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
    s, i = fuse(Hybrid("convex", alpha=0.7), [dense, lexical], k=2)
    # dense normalised: 4 -> 1, 2 -> 0.875, 7 -> 0; lexical: 7 -> 1, 4 -> 0
    assert i.tolist() == [[4, 2]] and s[0].tolist() == pytest.approx([0.7, 0.7 * 0.875])
    # three lists: alpha split between the two semantic lists, 1 - alpha to the lexical (last) one
    multi = (np.array([[5.0]]), np.array([[2]]))  # one result normalises to 1
    s, i = fuse(Hybrid("convex", alpha=0.6), [dense, multi, lexical], k=3)
    want = {4: 0.3, 2: 0.3 * 0.875 + 0.3, 7: 0.4}
    assert i.tolist() == [sorted(want, key=lambda d: -want[d])]
    assert s[0].tolist() == pytest.approx(sorted(want.values(), reverse=True))


def test_fuse_pads_and_takes_depth():
    a = (np.array([[1.0, 0.5], [-np.inf, -np.inf]]), np.array([[1, 2], [-1, -1]]))
    b = (np.array([[2.0, -np.inf], [1.0, -np.inf]]), np.array([[3, -1], [9, -1]]))
    s, i = fuse(DEFAULT_HYBRID, [a, b], k=5)
    assert i.shape == (2, 3)  # min(k, most distinct candidates of a query)
    assert i[1].tolist() == [9, -1, -1] and np.isneginf(s[1, 1:]).all()
    s, i = fuse(Hybrid(depth=1), [a, b], k=5)  # only each list's best entry
    assert i[0].tolist() == [1, 3]  # equal rrf scores: the smaller id first


def test_fuse_errors():
    good = (np.zeros((2, 3)), np.arange(6).reshape(2, 3))
    with pytest.raises(ValueError, match="union"):
        fuse(Hybrid("union"), [good], k=3)
    with pytest.raises(TypeError, match="hybrid"):
        fuse("rrf", [good], k=3)
    with pytest.raises(TypeError, match="lists"):
        fuse(DEFAULT_HYBRID, good, k=3)
    with pytest.raises(ValueError, match=r"lists\[1\]: has 1 queries"):
        fuse(DEFAULT_HYBRID, [good, (np.zeros((1, 3)), np.zeros((1, 3), np.int64))], k=3)
    with pytest.raises(ValueError, match="twice"):
        fuse(DEFAULT_HYBRID, [(np.zeros((1, 2)), np.array([[4, 4]]))], k=3)
    with pytest.raises(ValueError, match="non-finite"):
        fuse(DEFAULT_HYBRID, [(np.array([[np.nan]]), np.array([[4]]))], k=3)
    with pytest.raises(TypeError, match="k"):
        fuse(DEFAULT_HYBRID, [good], k=2.0)
    with pytest.raises(ValueError, match="lexical"):
        fuse(Hybrid("convex"), [good], k=2, lexical=3)


def test_union_candidates():
    a = (np.array([[3.0, 2.0, 1.0], [1.0, -np.inf, -np.inf]]), np.array([[5, 3, 8], [2, -1, -1]]))
    b = (np.array([[1.0, 9.0], [-np.inf, -np.inf]]), np.array([[3, 1], [-1, -1]]))
    got = union_candidates([a, b])
    assert [g.tolist() for g in got] == [[1, 3, 5, 8], [2]] and all(g.dtype == np.int64 for g in got)
    assert [g.tolist() for g in union_candidates([a, b], depth=1)] == [[1, 5], [2]]
    empty = (np.full((2, 1), -np.inf), np.full((2, 1), -1))
    assert [g.tolist() for g in union_candidates([empty])] == [[], []]


def test_as_hybrid():
    assert as_hybrid(True) is DEFAULT_HYBRID
    assert as_hybrid("convex") == Hybrid("convex")
    assert as_hybrid({"method": "rrf", "rrf_k": 20}) == Hybrid("rrf", rrf_k=20)
    h = Hybrid("convex", alpha=0.3, depth=50)
    assert as_hybrid(h) is h and h.candidates(10) == 50 and Hybrid().candidates(20) == 200
    with pytest.raises(ValueError, match="hybrid: unknown method 'rfr'"):
        as_hybrid("rfr")
    with pytest.raises(ValueError, match="hybrid: unknown field 'alpah'"):
        as_hybrid({"alpah": 0.3})
    with pytest.raises(ValueError, match="hybrid: alpha"):
        as_hybrid({"method": "convex", "alpha": 1.5})
    with pytest.raises(TypeError, match="fusion: rrf_k"):
        as_hybrid({"rrf_k": 6.0}, "fusion")
    with pytest.raises(ValueError, match="hybrid: depth"):
        as_hybrid({"depth": 0})
    for bad in (False, None, 1, 0.5, ["rrf"]):
        with pytest.raises(TypeError, match="hybrid: expected True"):
            as_hybrid(bad)
    with pytest.raises(TypeError, match="alpha"):
        Hybrid("convex", alpha="0.5")
    with pytest.raises(ValueError, match="alpha"):
        Hybrid("convex", alpha=float("nan"))


# ------------------------------------------------------------------ BM25
bm25s = pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")
from flatcoat.lexical import BM25, matched  # noqa: E402

TEXTS = ["the cats are running in the parks", "a dog runs home", "the cat sat on the mat", "dogs and cats",
         "nothing here", "the", "running running running", "parking a car"]


def test_bm25_stemmer():
    stemmed, plain = BM25(TEXTS), BM25(TEXTS, stemmer=None)
    assert stemmed.settings["stemmer"] == "english" and plain.settings["stemmer"] is None
    s, i = stemmed.search(["runs"], k=3)
    assert set(i[0].tolist()) == {0, 1, 6} and (s[0] > 0).all()  # running, runs, running: one stem
    s, i = plain.search(["runs"], k=3)
    assert i[0, 0] == 1 and s[0, 0] > 0 and (s[0, 1:] == 0).all()  # only the exact word
    # the same tokenisation for queries and documents: a query of a document's words finds it first
    assert stemmed.search(["Dog RUNNING home!"], k=1)[1].tolist() == [[1]]
    with pytest.raises(ValueError, match="stemmer: unknown language 'klingon'"):
        BM25(TEXTS, stemmer="klingon")
    with pytest.raises(TypeError, match="stemmer"):
        BM25(TEXTS, stemmer=len)


def test_bm25_follows_the_result_rule_and_no_known_token_gives_zeros():
    bm25 = BM25(TEXTS)
    s, i = bm25.search(["zebra", "the a"], k=5)  # unknown word; stopwords only
    assert s.shape == i.shape == (2, 5) and s.dtype == np.float32 and i.dtype == np.int64
    assert (s == 0).all() and i.tolist() == [[0, 1, 2, 3, 4]] * 2
    ms, mi = matched(s, i)
    assert (mi == -1).all() and np.isneginf(ms).all()
    assert bm25.search(["cat"], k=100)[0].shape == (1, len(TEXTS))


def _random_corpus(rng, n, vocab=30):
    words = [f"w{j}" for j in range(vocab)]
    return [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_bm25_filtered_search_is_the_masked_full_ranking(seed):
    rng = np.random.default_rng(seed)
    n = 97
    bm25 = BM25(_random_corpus(rng, n), stemmer=None)
    queries = _random_corpus(rng, 9)
    full_s, full_i = bm25.search(queries, k=n)
    for density in (0.0, 0.03, 0.3, 1.0):
        allowed = rng.random(n) < density
        for k in (1, 5, 40, 200):
            s, i = bm25.search(queries, k=k, allowed=allowed)
            width = min(k, n)
            assert s.shape == (len(queries), width)
            for qi in range(len(queries)):
                keep = allowed[full_i[qi]]
                want_i = full_i[qi][keep][:width]
                want_s = full_s[qi][keep][:width]
                got = np.r_[want_i, np.full(width - want_i.size, -1)]
                np.testing.assert_array_equal(i[qi], got)
                np.testing.assert_array_equal(s[qi], np.r_[want_s, np.full(width - want_s.size, -np.inf)])


def test_bm25_scores_equal_bm25s():
    rng = np.random.default_rng(7)
    texts = _random_corpus(rng, 60)
    queries = _random_corpus(rng, 6)
    ours = BM25(texts)
    import Stemmer

    stem = Stemmer.Stemmer("english")
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(texts, stopwords="en", stemmer=stem, show_progress=False), show_progress=False)
    s, i = ours.search(queries, k=60)
    for qi, q in enumerate(queries):
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stem, show_progress=False, return_ids=False)[0]
        want = ref.get_scores(tokens) if tokens else np.zeros(60)
        got = np.empty(60)
        got[i[qi]] = s[qi]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        order = sorted(range(60), key=lambda d: (-float(got[d]), d))
        assert i[qi].tolist() == order


def test_bm25_errors():
    bm25 = BM25(TEXTS)
    with pytest.raises(TypeError, match="allowed"):
        bm25.search(["cat"], allowed=np.ones(len(TEXTS), np.int8))
    with pytest.raises(ValueError, match=r"allowed: expected shape \(8,\)"):
        bm25.search(["cat"], allowed=np.ones(3, bool))
    with pytest.raises(TypeError, match="queries"):
        bm25.search("cat")
    with pytest.raises(TypeError, match="queries: item 1"):
        bm25.search(["cat", 3])
    with pytest.raises(ValueError, match="texts"):
        BM25([])
    with pytest.raises(ValueError, match="method"):
        BM25(TEXTS, method="bm25+")
    empty = BM25(["", "the a"])  # no token at all
    assert empty.search(["cat"], k=3)[1].tolist() == [[0, 1]]


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("stemmer", ["english", None])
def test_bm25_save_load_round_trip(tmp_path, mmap, stemmer):
    rng = np.random.default_rng(3)
    texts = TEXTS + _random_corpus(rng, 50)
    bm25 = BM25(texts, stemmer=stemmer, k1=1.2, b=0.6)
    bm25.save(tmp_path / "bm25")
    loaded = flatcoat.load(tmp_path / "bm25", mmap=mmap)
    assert isinstance(loaded, BM25) and len(loaded) == len(bm25) and loaded.settings == bm25.settings
    assert isinstance(loaded._data, np.memmap) == mmap
    queries = ["running cats", "w3 w4 w4", "zebra"] + _random_corpus(rng, 5)
    allowed = rng.random(len(texts)) < 0.5
    for kw in ({}, {"allowed": allowed}):
        a, b = bm25.search(queries, k=15, **kw), loaded.search(queries, k=15, **kw)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    bm25.save(tmp_path / "bm25")  # replacing a flatcoat directory is allowed
    manifest = json.loads((tmp_path / "bm25" / "manifest.json").read_text())
    assert manifest["kind"] == "bm25" and set(manifest["files"]) == {"data", "indices", "indptr"}


def test_bm25_corrupt_files_are_refused(tmp_path):
    bm25 = BM25(TEXTS)
    path = tmp_path / "bm25"
    bm25.save(path)
    raw = bytearray((path / "data.npy").read_bytes())
    raw[-1] ^= 0x40
    (path / "data.npy").write_bytes(bytes(raw))
    with pytest.raises(flatcoat.IndexFormatError, match="checksum"):
        flatcoat.load(path)
    bm25.save(path)
    (path / "vocabulary.json").write_text((path / "vocabulary.json").read_text() + " ")
    with pytest.raises(flatcoat.IndexFormatError, match="vocabulary.json"):
        flatcoat.load(path)
    # consistent checksums but inconsistent contents: the structural checks
    bm25.save(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["meta"]["documents"] = 3  # indices point past the documents
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(flatcoat.IndexFormatError, match="indices.npy"):
        flatcoat.load(path)
    manifest["meta"]["documents"], manifest["meta"]["stemmer"] = len(TEXTS), "klingon"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(flatcoat.IndexFormatError, match="settings"):
        flatcoat.load(path)


# ------------------------------------------------------------------ flatcoat eval --hybrid
CORPUS = [
    {"_id": "csv", "title": "csv.reader", "text": "Read rows from a comma-separated values file."},
    {"_id": "argparse", "title": "argparse.ArgumentParser", "text": "Parse command-line options and arguments."},
    {"_id": "gzip", "title": "gzip.compress", "text": "Compress bytes with the gzip format."},
    {"_id": "shutil", "title": "shutil.copytree", "text": "Recursively copy a directory tree."},
    {"_id": "json", "title": "json.load", "text": "Read a JSON document from a file."},
    {"_id": "os", "title": "os.listdir", "text": "List the files of a directory."},
]
QUERIES = {"q1": "read a csv file", "q2": "copy a folder", "q3": "compressing files"}
QRELS = {"q1": {"csv": 1}, "q2": {"shutil": 2, "os": 1}, "q3": {"gzip": 1}}


def _beir(root):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CORPUS))
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, r in QRELS.items() for d, g in r.items()))
    return root


def _reference_rows(setting, multivector=False):
    """The hybrid row computed here from its parts: exact dense scores (numpy float64), stemmed BM25, fuse."""
    from flatcoat import Encoder
    from flatcoat import eval as fe
    from flatcoat.corpus import doc_text

    texts = [doc_text(c) for c in CORPUS]
    qtexts = list(QUERIES.values())
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    s = enc.encode_queries(qtexts).astype(np.float64) @ enc.encode_documents(texts).astype(np.float64).T
    order = np.lexsort((np.broadcast_to(np.arange(len(texts)), s.shape), -s), axis=1)
    dense = (np.take_along_axis(s, order, 1), order)
    lexical = matched(*BM25(texts).search(qtexts, k=len(texts)))
    if setting.method == "union":
        menc = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
        docs, queries = menc.encode_documents(texts), menc.encode_queries(qtexts)
        cands = union_candidates([dense, lexical])
        scores = np.full((len(qtexts), len(texts)), -np.inf)
        for qi, cand in enumerate(cands):
            for d in cand.tolist():
                scores[qi, d] = (queries[qi].astype(np.float64) @ docs[d].astype(np.float64).T).max(axis=1).sum()
        order = np.lexsort((np.broadcast_to(np.arange(len(texts)), scores.shape), -scores), axis=1)
        fused = (np.take_along_axis(scores, order, 1), np.where(np.isneginf(np.take_along_axis(scores, order, 1)), -1, order))
    else:
        fused = fuse(setting, [dense, lexical], k=len(texts))
    run = fe.run_from_results(list(QUERIES), fused[0], fused[1], [c["_id"] for c in CORPUS])
    return fe.evaluate(run, QRELS)


@pytest.mark.parametrize("method", [None, "convex", "union"])
def test_eval_hybrid_row(tmp_path, capsys, method):
    from flatcoat import cli

    root = _beir(tmp_path / "beir")
    argv = ["eval", str(root), "--bm25", "--hybrid"] + ([method] if method else []) + ["--json", str(tmp_path / "r.json")]
    code = cli.main(argv)
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads((tmp_path / "r.json").read_text())
    names = [r["system"] for r in rows]
    assert names[:2] == ["dense f32", "BM25 (bm25s)"] and len(names) == 3  # no row twice, no MaxSim row
    assert names[2].startswith("hybrid") and names[2] in out.out
    want = _reference_rows(as_hybrid(method or True))
    for metric, value in want.items():
        assert rows[2][metric] == pytest.approx(value, abs=1e-6), metric
    if method is None:
        assert names[2] == "hybrid rrf k=60 (dense f32 + BM25)"
        # the --bm25 reference row stays unstemmed (as documented); the hybrid's lexical list is stemmed
        from flatcoat import eval as fe
        from flatcoat.corpus import doc_text

        _, plain = BM25([doc_text(c) for c in CORPUS], stemmer=None).search(list(QUERIES.values()), k=len(CORPUS))
        want = fe.evaluate({q: {CORPUS[d]["_id"]: float(len(CORPUS) - r) for r, d in enumerate(plain[i])}
                            for i, q in enumerate(QUERIES)}, QRELS)
        assert {m: rows[1][m] for m in want} == pytest.approx(want, abs=1e-9)


def test_eval_hybrid_alone_and_with_multivector(tmp_path):
    from flatcoat import eval as fe

    root = _beir(tmp_path / "beir")
    alone = fe.evaluate_dataset(root, storages=(), hybrid=True)
    assert [r["system"] for r in alone.rows] == ["hybrid rrf k=60 (dense f32 + BM25)"]
    both = fe.evaluate_dataset(root, multivector=True, hybrid={"method": "rrf", "rrf_k": 20})
    assert [r["system"] for r in both.rows] == ["dense f32", "multivector (stand-in) MaxSim",
                                                 "hybrid rrf k=20 (dense f32 + MaxSim + BM25)"]
    with pytest.raises(ValueError, match="hybrid: unknown method"):
        fe.evaluate_dataset(root, hybrid="rank")
    with pytest.raises(TypeError, match="hybrid"):
        fe.evaluate_dataset(root, hybrid=1)
