"""The native module itself: what a caller of flatcoat._core gets (the stub, the
checks at the binding level, the result rule, the shared subset normalisation)
and every compiled ISA's kernel families against a numpy reference."""

import ast
import pathlib
import time

import numpy as np
import pytest

import flatcoat
from flatcoat import _core

STUB = pathlib.Path(flatcoat.__file__).with_name("_core.pyi")


def _usable_isas():
    return [isa for isa in _core.compiled_isas() if _core.cpu_supports(isa)]


def _dense_args(x, ids=None, storage="f32"):
    """search_dense's index arguments for float32 rows x (f32 or f16 storage)."""
    codes = x if storage == "f32" else x.astype(np.float16).view(np.uint16)
    ids = np.arange(len(x), dtype=np.int64) if ids is None else ids
    return (storage, "ip", x.shape[1], codes, ids, None, None, None, None, None)


def _packed(docs):
    tokens = np.concatenate(docs).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return tokens, offsets


# ----------------------------------------------------------------------------- the stub


def test_stub_lists_exactly_the_module():
    """_core.pyi names every function and class of the module, and nothing it lacks."""
    tree = ast.parse(STUB.read_text())
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    stubbed |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    public = {name for name in dir(_core) if not name.startswith("_")} | {"__version__"}
    assert stubbed == public


def test_stub_signatures_match_the_bindings():
    """Argument names and order in the stub are the ones the bindings accept."""
    tree = ast.parse(STUB.read_text())
    id_map = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "IdMap")
    functions = [(n, getattr(_core, n.name)) for n in tree.body if isinstance(n, ast.FunctionDef)]
    functions += [(n, getattr(_core.IdMap, n.name)) for n in id_map.body
                  if isinstance(n, ast.FunctionDef) and not n.name.startswith("__")]
    for node, bound in functions:
        names = [a.arg for a in node.args.args] + (["*"] + [a.arg for a in node.args.kwonlyargs] if node.args.kwonlyargs else [])
        doc = bound.__doc__.splitlines()[0]
        bound_names = [part.split(":")[0].strip() for part in doc[doc.index("(") + 1:doc.index(")")].split(",")]
        assert names == [name for name in bound_names if name], node.name


# ----------------------------------------------------------------------------- names and checks


def test_unknown_storage_and_metric_name_the_argument():
    x = np.ones((2, 4), np.float32)
    args = list(_dense_args(x))
    with pytest.raises(ValueError, match=r"storage: unknown 'f64'; expected one of f32, f16, int8, binary"):
        _core.search_dense("f64", *args[1:], x, 1)
    with pytest.raises(ValueError, match=r"metric: unknown 'cosine'; expected one of ip, l2"):
        _core.search_dense(args[0], "cosine", *args[2:], x, 1)
    tokens, offsets = _packed([np.ones((2, 4))])
    with pytest.raises(ValueError, match="storage: binary is not a multi-vector storage"):
        _core.maxsim_scores("binary", 4, tokens, offsets, None, tokens, offsets, None)


def test_counts_are_checked_and_named():
    """A negative or zero count is a ValueError naming it, not pybind11's 'incompatible arguments'."""
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="k: must be at least 1, got 0"):
        _core.search_dense(*_dense_args(x), x, 0)
    with pytest.raises(ValueError, match="k: must be at least 1, got -2"):
        _core.search_dense(*_dense_args(x), x, -2)
    with pytest.raises(ValueError, match="rerank: must be at least 0"):
        _core.search_dense(*_dense_args(x), x, 1, -1)
    with pytest.raises(ValueError, match=r"rerank: must be at least k \(2\), got 1"):
        _core.search_dense(*_dense_args(x), x, 2, 1)
    with pytest.raises(ValueError, match="dim: must be at least 1"):
        _core.search_dense("f32", "ip", 0, x, np.arange(3, dtype=np.int64), None, None, None, None, None, x, 1)
    with pytest.raises(ValueError, match="n: must be at least 0"):
        _core.set_num_threads(-1)
    with pytest.raises(ValueError, match="threads: must be at least 1"):
        _core.probe_fma(10, 0)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        _core.topk(x, 0)
    tokens, offsets = _packed([np.ones((2, 4))])
    ids = np.zeros(1, np.int64)
    with pytest.raises(ValueError, match="k: must be at least 1"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, tokens, offsets, None, -1)


def test_buffers_are_checked_never_cast():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="queries: expected dtype float32, got float64"):
        _core.search_dense(*_dense_args(x), x.astype(np.float64), 1)
    with pytest.raises(ValueError, match="queries: array is not C-contiguous"):
        _core.search_dense(*_dense_args(x), np.ones((4, 8), np.float32)[:, ::2], 1)
    with pytest.raises(ValueError, match="queries: expected a 2-d array, got 1-d"):
        _core.search_dense(*_dense_args(x), x[0], 1)
    with pytest.raises(ValueError, match="codes: expected 3 rows, got 2"):
        _core.search_dense("f32", "ip", 4, x[:2], np.arange(3, dtype=np.int64), None, None, None, None, None, x, 1)
    with pytest.raises(TypeError, match="ids: expected dtype int64"):
        _core.IdMap().find(np.arange(3, dtype=np.int32))
    # Nothing is converted on the way in: a list is refused by name, not copied into an array.
    with pytest.raises(TypeError, match="ids: expected a numpy array, got list"):
        _core.search_dense("f32", "ip", 4, x, [0, 1, 2], None, None, None, None, None, x, 1)
    with pytest.raises(TypeError, match="ids: expected a numpy array of int64, got list"):
        _core.IdMap().insert_new([1, 2], 0)
    with pytest.raises(TypeError, match="scores: expected a numpy array of float32, got list"):
        _core.topk([[1.0, 2.0]], 1)
    # An optional array that is not an array at all is named, never read as one.
    with pytest.raises(TypeError, match="sq_norms: expected a numpy array of float32, got list"):
        _core.search_dense("f32", "l2", 4, x, np.arange(3, dtype=np.int64), [1.0, 2.0, 3.0], None, None, None,
                           None, x, 1)
    with pytest.raises(ValueError, match="scale: expected 3 entries, got 2"):
        _core.search_dense("int8", "ip", 4, x.astype(np.uint8), np.arange(3, dtype=np.int64), None,
                           np.ones(2, np.float32), np.ones(3, np.float32), None, None, x, 1)
    tokens, offsets = _packed([np.ones((2, 4))])
    with pytest.raises(TypeError, match="subset: expected a numpy array of int64, got tuple"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, np.zeros(1, np.int64), tokens, offsets, None, 1,
                            (0,), np.array([0, 1], np.int64))


# ----------------------------------------------------------------------------- the result rule


def test_results_have_min_k_rows_columns_and_huge_k_is_bounded():
    """(q, min(k, rows)) from every search binding: k = 2**62 is as fast and small as k = rows."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    start = time.perf_counter()
    scores, ids = _core.search_dense(*_dense_args(x), x[:3], 2**62)
    assert scores.shape == ids.shape == (3, 8)
    with_copy = ("f16", "ip", 4, x.astype(np.float16).view(np.uint16), np.arange(8, dtype=np.int64), None, None,
                 None, x, None)
    reranked, reranked_ids = _core.search_dense(*with_copy, x[:3], 2**62, 2**62)
    assert reranked.shape == (3, 8)
    np.testing.assert_array_equal(reranked_ids, np.argsort(-(x[:3] @ x.T), axis=1, kind="stable"))
    _, ids_topk = _core.topk(x, 2**62)
    assert ids_topk.shape == (8, 4)
    tokens, offsets = _packed([x[:3], x[3:]])
    _, found = _core.search_maxsim("f32", 4, tokens, offsets, None, np.array([7, 9], np.int64),
                                   x[:2], np.array([0, 2], np.int64), None, 2**62)
    assert found.shape == (1, 2)
    assert time.perf_counter() - start < 1.0
    empty = _core.search_dense("f32", "ip", 4, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, None,
                               None, None, None, x[:3], 5)
    assert empty[0].shape == empty[1].shape == (3, 0)
    assert _core.topk(np.zeros((2, 0), np.float32), 3)[1].shape == (2, 0)


def test_rerank_without_a_float_copy_names_rerank():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="rerank: needs the float32 copy"):
        _core.search_dense(*_dense_args(x), x, 1, 2)


# ----------------------------------------------------------------------------- subsets


def test_subset_is_normalised_once_sorted_and_distinct():
    """Unsorted positions with repeats score like the sorted distinct list; short rows are padded."""
    rng = np.random.default_rng(1)
    docs = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 6, size=20)]
    tokens, offsets = _packed(docs)
    ids = np.arange(100, 120, dtype=np.int64)
    q = rng.standard_normal((6, 8)).astype(np.float32)
    q_offsets = np.array([0, 3, 6], np.int64)
    messy = np.array([5, 3, 5, 5, 17, 3, 0, 0], np.int64)  # query 0: {3, 5, 17}, query 1: {0, 3}
    clean = np.array([3, 5, 17, 0, 3], np.int64)
    scores_m, ids_m = _core.search_maxsim("f32", 8, tokens, offsets, None, ids, q, q_offsets, None, 4,
                                          messy, np.array([0, 5, 8], np.int64))
    scores_c, ids_c = _core.search_maxsim("f32", 8, tokens, offsets, None, ids, q, q_offsets, None, 4,
                                          clean, np.array([0, 3, 5], np.int64))
    np.testing.assert_array_equal(ids_m, ids_c)
    np.testing.assert_array_equal(scores_m, scores_c)
    assert set(ids_m[0, :3]) == {103, 105, 117} and ids_m[0, 3] == -1
    assert set(ids_m[1, :2]) == {100, 103} and ids_m[1, 2:].tolist() == [-1, -1]
    assert np.isneginf(scores_m[1, 2:]).all()
    full = _core.maxsim_scores("f32", 8, tokens, offsets, None, q, q_offsets, None)
    np.testing.assert_allclose(scores_c[1, :2], np.sort(full[1, [0, 3]])[::-1], rtol=1e-6)


def test_subset_errors_name_subset():
    tokens, offsets = _packed([np.ones((2, 4)), np.ones((1, 4))])
    ids = np.arange(2, dtype=np.int64)
    q, qo = tokens[:1], np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match="subset: position 2 is outside the 2 documents"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, q, qo, None, 1,
                            np.array([2], np.int64), np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="subset: position -1 is outside"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, q, qo, None, 1,
                            np.array([-1], np.int64), np.array([0, 1], np.int64))
    with pytest.raises(ValueError, match="subset: needs subset_offsets"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, q, qo, None, 1, np.array([0], np.int64))
    with pytest.raises(ValueError, match="subset_offsets: expected 2 entries"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, q, qo, None, 1,
                            np.array([0], np.int64), np.array([0, 0, 1], np.int64))



def test_subset_offsets_are_all_checked_before_any_position_is_read():
    """[0, 100, 3] ends at the positions' length, but its first row would read 97 entries past it."""
    tokens, offsets = _packed([np.ones((2, 4)), np.ones((1, 4))])
    ids = np.arange(2, dtype=np.int64)
    q, qo = tokens[:2], np.array([0, 1, 2], np.int64)
    with pytest.raises(ValueError, match="subset: offsets must be non-decreasing"):
        _core.search_maxsim("f32", 4, tokens, offsets, None, ids, q, qo, None, 1,
                            np.array([0, 1, 0], np.int64), np.array([0, 100, 3], np.int64))

# ----------------------------------------------------------------------------- every ISA, every family


@pytest.mark.parametrize("isa", _usable_isas())
def test_every_family_dispatches_for_every_compiled_isa(isa, restore_isa):
    """dense (f32, f16 direct and widened), MaxSim (f32, f16 widened) and the probes, per ISA, vs numpy."""
    _core.set_active_isa(isa)
    assert _core.active_isa() == isa
    rng = np.random.default_rng(2)
    dim = 37  # tails in every kernel
    x = rng.standard_normal((300, dim)).astype(np.float32)
    for storage in ("f32", "f16"):
        stored = x if storage == "f32" else x.astype(np.float16).astype(np.float32)
        for nq in (1, 12):  # 12 >= the batch from which f16 tiles are widened once
            q = rng.standard_normal((nq, dim)).astype(np.float32)
            scores, ids = _core.search_dense(*_dense_args(x, storage=storage), q, 5)
            ref = q.astype(np.float64) @ stored.T.astype(np.float64)
            np.testing.assert_array_equal(ids, np.argsort(-ref, axis=1, kind="stable")[:, :5])
            np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), rtol=1e-4, atol=1e-4)
    docs = [rng.standard_normal((int(n), dim)).astype(np.float32) for n in rng.integers(1, 300, size=6)]
    tokens, offsets = _packed(docs)
    q = rng.standard_normal((5, dim)).astype(np.float32)
    q_offsets = np.array([0, 5], np.int64)
    for storage in ("f32", "f16"):
        codes = tokens if storage == "f32" else tokens.astype(np.float16).view(np.uint16)
        stored = tokens if storage == "f32" else tokens.astype(np.float16).astype(np.float32)
        got = _core.maxsim_scores(storage, dim, codes, offsets, None, q, q_offsets, None)[0]
        sims = q.astype(np.float64) @ stored.T.astype(np.float64)
        ref = [sims[:, b:e].max(axis=1).sum() for b, e in zip(offsets[:-1], offsets[1:])]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    for probe in (_core.probe_fma, _core.probe_int8, _core.probe_popcount):
        seconds, work = probe(1000, 1)
        assert seconds > 0 and work > 0
    seconds, work = _core.probe_read_bandwidth(np.ones(1 << 16, np.float32), 2)
    assert seconds > 0 and work == 4 << 16


def test_isa_errors():
    with pytest.raises(ValueError, match="unknown ISA 'avx9': expected one of " + ", ".join(_core.compiled_isas())):
        _core.set_active_isa("avx9")
    levels = ("scalar", "haswell", "skylake", "icelake", "genoa", "sapphirerapids", "neon")
    missing = [isa for isa in levels if isa not in _core.compiled_isas()]
    for isa in missing:
        with pytest.raises(ValueError, match=f"ISA '{isa}' is not compiled into this build"):
            _core.set_active_isa(isa)
    # A compiled level this CPU lacks (on x86 machines without AMX: sapphirerapids) is refused, never
    # run, and the error names the missing features.
    features = flatcoat.info()["cpu_features"]
    for isa in [isa for isa in _core.compiled_isas() if not _core.cpu_supports(isa)]:
        levels = list(features)
        missing = [name for level in levels[: levels.index(isa) + 1] for name, present in features[level].items()
                   if not present]
        with pytest.raises(ValueError, match=f"ISA '{isa}' is not supported by this CPU \\(missing {missing[0]}.*; "
                                             "best: "):
            _core.set_active_isa(isa)
