"""The API conventions (docs/architecture.md, "API conventions"), checked for every index.

One result rule, one vocabulary, keyword-only constructors, one exception type
per kind of mistake, one integer and one boolean rule, the device-mirror
protocol (driven here by a CPU fake, so it runs without a GPU) and the layers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest

import flatcoat
from flatcoat import _core, _device, _storage
from flatcoat._validate import as_bool, as_int, as_k
from flatcoat.multivector import parse_queries, parse_query_weights

from test_ivf import core_or_reference  # noqa: F401 - the IVF core, or its numpy reference where not built

DIM = 6
N = 9


def _dense(storage="f32", metric="ip", n=N, **kw):
    index = flatcoat.DenseIndex(DIM, metric=metric, storage=storage, **kw)
    if n:
        index.add(np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32), ids=np.arange(n) * 3)
    return index


def _multivector(storage="f32", n=N, **kw):
    index = flatcoat.MultiVectorIndex(DIM, storage=storage, **kw)
    if n:
        rng = np.random.default_rng(0)
        index.add([rng.standard_normal((1 + i % 4, DIM)).astype(np.float32) for i in range(n)], ids=np.arange(n) * 3)
    return index


def _ivf(storage="pq4", n=N, **kw):
    """An IVFIndex trained on its own sample (N vectors are too few for the train rule), 2 lists."""
    index = flatcoat.IVFIndex(DIM, storage=storage, nlist=2, **kw)
    index.train(np.random.default_rng(5).standard_normal((300, DIM)).astype(np.float32))
    if n:
        index.add(np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32), ids=np.arange(n) * 3)
    return index


def _one_query(kind):
    rng = np.random.default_rng(1)
    return rng.standard_normal(DIM).astype(np.float32) if kind != "multivector" else rng.standard_normal((3, DIM)).astype(np.float32)


def _batch(kind, q):
    rng = np.random.default_rng(2)
    if kind != "multivector":
        return rng.standard_normal((q, DIM)).astype(np.float32)
    return [rng.standard_normal((1 + i, DIM)).astype(np.float32) for i in range(q)]


INDEXES = [("dense", s) for s in _storage.DENSE_STORAGES] + [("multivector", s) for s in _storage.MULTIVECTOR_STORAGES] \
    + [("ivf", s) for s in _storage.IVF_STORAGES]


def _make(kind, storage, n=N):
    return {"dense": _dense, "multivector": _multivector, "ivf": _ivf}[kind](storage, n=n)


# ----------------------------------------------------------------------------- one result rule


@pytest.mark.parametrize("kind, storage", INDEXES)
@pytest.mark.parametrize("k", [1, 4, N, N + 1, 10**8, 2**62, 2**63 - 1])
def test_result_shapes(kind, storage, k):
    """(q, min(k, len(index))) float32/int64 for one query (q = 1) and a batch, whatever k."""
    index = _make(kind, storage)
    kk = min(k, N)
    start = time.perf_counter()
    for queries, q in ((_one_query(kind), 1), (_batch(kind, 1), 1), (_batch(kind, 4), 4)):
        scores, ids = index.search(queries, k=k)
        assert scores.shape == ids.shape == (q, kk)
        assert scores.dtype == np.float32 and ids.dtype == np.int64
        assert set(ids[0].tolist()) <= set(index.ids.tolist()) and len(set(ids[0].tolist())) == kk
    assert time.perf_counter() - start < 2.0  # bounded by the index, not by k


@pytest.mark.parametrize("kind, storage", INDEXES)
def test_empty_index_gives_q_by_0(kind, storage):
    index = _make(kind, storage, n=0)
    for queries, q in ((_one_query(kind), 1), (_batch(kind, 3), 3)):
        scores, ids = index.search(queries, k=5)
        assert scores.shape == ids.shape == (q, 0) and scores.dtype == np.float32 and ids.dtype == np.int64


@pytest.mark.parametrize("kind, storage", [i for i in INDEXES if i[0] != "ivf"])  # IVF: tests/test_ivf.py
def test_rows_are_best_first_ties_by_smaller_id(kind, storage):
    index = flatcoat.DenseIndex(DIM, storage=storage) if kind == "dense" else flatcoat.MultiVectorIndex(DIM, storage=storage)
    doc = np.eye(DIM, dtype=np.float32)[:1]
    index.add(doc if kind == "dense" else [doc], ids=[40])
    index.add(np.repeat(doc, 4, 0) if kind == "dense" else [doc] * 4, ids=[9, 30, 2, 17])
    query = np.eye(DIM, dtype=np.float32)[0] if kind == "dense" else doc
    scores, ids = index.search(query, k=3)
    assert ids.tolist() == [[2, 9, 17]]
    assert scores[0, 0] == scores[0, 1] == scores[0, 2]


def test_a_restricted_row_is_padded_with_minus_one_and_minus_inf():
    index = _multivector()
    scores, ids = index.search(_one_query("multivector"), k=4, subset=[3, 6])
    assert ids.shape == (1, 4) and sorted(ids[0, :2].tolist()) == [3, 6]
    assert ids[0, 2:].tolist() == [-1, -1] and np.isneginf(scores[0, 2:]).all()


def test_maxsim_is_a_scoring_function():
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((7, DIM)).astype(np.float32)
    query = rng.standard_normal((2, DIM)).astype(np.float32)
    assert flatcoat.maxsim(query, tokens, [3, 4]).shape == (2,)
    assert flatcoat.maxsim([query, query, query], tokens, [3, 4]).shape == (3, 2)


# ----------------------------------------------------------------------------- one vocabulary


def test_rerank_and_subset_are_the_only_names():
    dense = _dense("int8", keep_float=True)
    mv = _multivector()
    with pytest.raises(TypeError, match="rescore"):
        dense.search(_one_query("dense"), k=2, rescore=4)
    with pytest.raises(TypeError, match="candidates"):
        mv.search(_one_query("multivector"), k=2, candidates=[0])
    assert dense.search(_one_query("dense"), k=2, rerank=4)[1].shape == (1, 2)
    assert mv.search(_one_query("multivector"), k=2, subset=[0, 3])[1].shape == (1, 2)
    for module in (flatcoat.dense, flatcoat.multivector):
        assert not hasattr(module, "STORAGES")  # storage names are defined once, in _storage
        assert getattr(module, "METRICS", _storage.METRICS) is _storage.METRICS


def test_rerank_is_clamped_like_k():
    dense = _dense("binary", keep_float=True)
    exact = _dense("f32")
    q = _batch("dense", 3)
    scores, ids = dense.search(q, k=10**8, rerank=2**62)  # full-depth exact re-ranking, bounded by the index
    ref_scores, ref_ids = exact.search(q, k=N)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- constructors and the integer rule


@pytest.mark.parametrize("make", [
    lambda: flatcoat.DenseIndex(4, "ip"),
    lambda: flatcoat.DenseIndex(4, "ip", "int8"),
    lambda: flatcoat.MultiVectorIndex(4, "int8"),
    lambda: flatcoat.IVFIndex(4, "ip"),
])
def test_everything_after_dim_is_keyword_only(make):
    with pytest.raises(TypeError, match="positional"):
        make()


@pytest.mark.parametrize("cls", [flatcoat.DenseIndex, flatcoat.MultiVectorIndex, flatcoat.IVFIndex])
def test_dim_rule(cls):
    assert cls(np.int64(5)).dim == 5 and cls(np.uint8(3)).dim == 3
    for bad in (4.0, True, np.bool_(True), "4", None, np.float32(4)):
        with pytest.raises(TypeError, match="^dim: expected an integer"):
            cls(bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="^dim: must be at least 1"):
            cls(bad)
    with pytest.raises(ValueError, match="^storage: expected one of"):
        cls(4, storage="int4")
    with pytest.raises(TypeError, match="^storage: expected one of"):
        cls(4, storage=8)


def test_boolean_rule():
    assert flatcoat.DenseIndex(4, keep_float=np.bool_(True)).keep_float is True
    for bad in ("no", "yes", 1, 0, None):
        with pytest.raises(TypeError, match="^keep_float: expected True or False"):
            flatcoat.DenseIndex(4, keep_float=bad)
    assert as_bool(np.bool_(False), "x") is False
    with pytest.raises(TypeError, match="^verify: expected True or False"):
        as_bool("no", "verify")


@pytest.mark.parametrize("kind, storage", [("dense", "f32"), ("multivector", "f32"), ("ivf", "pq4")])
@pytest.mark.parametrize("k, error, match", [
    (0, ValueError, "^k: must be at least 1"),
    (-3, ValueError, "^k: must be at least 1"),
    (2**63, ValueError, "^k: must be at most"),
    (2.0, TypeError, "^k: expected an integer"),
    ("3", TypeError, "^k: expected an integer"),
    (None, TypeError, "^k: expected an integer"),
    (True, TypeError, "^k: expected an integer"),
    (np.float64(3), TypeError, "^k: expected an integer"),
])
def test_k_rule(kind, storage, k, error, match):
    index = _make(kind, storage)
    with pytest.raises(error, match=match):
        index.search(_one_query(kind), k=k)
    assert index.search(_one_query(kind), k=np.int32(2))[1].shape == (1, 2)


def test_as_int_and_as_k():
    assert as_int(np.int16(3), "n") == 3 and type(as_int(np.int64(3), "n")) is int
    with pytest.raises(TypeError, match="^n: expected an integer, got bool"):
        as_int(False, "n")
    with pytest.raises(ValueError, match="^n: must be at most 3, got 4"):
        as_int(4, "n", 0, 3)
    with pytest.raises(ValueError, match="^rerank: must be at least 1, got 0"):
        as_k(0, "rerank")


def test_set_num_threads_follows_the_integer_rule_and_is_capped(restore_threads):
    cap = _core.hardware_threads()
    flatcoat.set_num_threads(np.int64(1))
    assert flatcoat.get_num_threads() == 1
    flatcoat.set_num_threads(cap)
    assert flatcoat.get_num_threads() == cap
    with pytest.raises(ValueError, match=rf"^n: at most {cap}, the hardware threads"):
        flatcoat.set_num_threads(cap + 1)
    with pytest.raises(ValueError, match="^n: must be at least 0"):
        flatcoat.set_num_threads(-1)
    for bad in (1.0, True, "2", None):
        with pytest.raises(TypeError, match="^n: expected an integer"):
            flatcoat.set_num_threads(bad)
    assert flatcoat.get_num_threads() == cap  # nothing changed by the refusals
    flatcoat.set_num_threads(0)
    assert flatcoat.get_num_threads() == flatcoat.info()["hardware_threads"]


# ----------------------------------------------------------------------------- ids and exceptions


@pytest.mark.parametrize("kind, storage", [("dense", "f32"), ("multivector", "f32"), ("ivf", "pq4")])
def test_membership(kind, storage):
    index = _make(kind, storage)  # ids 0, 3, ..., 24
    assert 3 in index and np.int64(3) in index and np.uint16(24) in index
    for other in (3.0, 3.7, "3", "a", None, True, np.bool_(True), [3], np.array(3), 2**64, -3, 4):
        assert (other in index) is False, other


@pytest.mark.parametrize("kind, storage", [("dense", "f32"), ("multivector", "f32"), ("ivf", "pq4")])
def test_automatic_ids_never_collide_and_run_out_clearly(kind, storage):
    index = _make(kind, storage, n=0)
    one = lambda: np.ones((1, DIM), np.float32) if kind != "multivector" else [np.ones((1, DIM), np.float32)]  # noqa: E731
    index.add(one(), ids=[100])
    assert index.add(one()).tolist() == [101]
    index.add(one(), ids=[2**63 - 1])
    with pytest.raises(ValueError, match="^ids: no automatic ids left"):
        index.add(one())
    assert len(index) == 3


@pytest.mark.parametrize("kind, storage", [("dense", "f32"), ("multivector", "f32"), ("ivf", "pq4")])
def test_unknown_ids_are_key_errors(kind, storage):
    index = _make(kind, storage)
    with pytest.raises(KeyError, match="ids: 1 id"):
        index.remove([3, 4])
    assert len(index) == N
    if kind == "multivector":
        with pytest.raises(KeyError, match="subset: 1 id"):
            index.search(_one_query(kind), subset=[3, 4])
        # a uint64 id beyond int64 is refused by name, never wrapped to a negative id or to the -1 padding
        for big in (2**64 - 1, 2**63):
            with pytest.raises(ValueError, match="^subset: ids must fit in int64"):
                index.search(_one_query(kind), subset=np.array([0, big], dtype=np.uint64))


def test_wildcard_import_keeps_the_builtin_eval():
    namespace = {}
    exec("from flatcoat import *", namespace)
    assert "eval" not in namespace
    assert set(flatcoat.__all__) <= set(namespace)
    assert isinstance(flatcoat.eval, types.ModuleType)


# ----------------------------------------------------------------------------- list-of-lists rule


def test_dense_reads_nested_lists_as_one_matrix():
    index = flatcoat.DenseIndex(2)
    assert index.add([[1.0, 0.0], [0.0, 1.0]]).tolist() == [0, 1]
    assert index.search([[0.0, 1.0]], k=1)[1].tolist() == [[1]]
    with pytest.raises(ValueError, match="multi-vector input.*MultiVectorIndex"):
        index.add([np.ones((3, 2), np.float32), np.ones((3, 2), np.float32)])
    with pytest.raises(TypeError, match="read as one matrix"):
        index.add([np.ones((3, 2), np.float32), np.ones((2, 2), np.float32)])


def test_multivector_reads_a_list_as_documents_or_queries():
    index = flatcoat.MultiVectorIndex(2)
    with pytest.raises(ValueError, match=r"docs\[0\]: expected a 2-d .*list of documents.*\[tokens\]"):
        index.add([[1.0, 0.0], [0.0, 1.0]])
    assert index.add([[[1.0, 0.0], [0.0, 1.0]]]).tolist() == [0]  # one document, as nested lists
    with pytest.raises(ValueError, match=r"queries\[0\]: .*list of queries"):
        index.search([[1.0, 0.0]])
    assert index.search([[[1.0, 0.0]]], k=1)[1].tolist() == [[0]]
    with pytest.raises(ValueError, match=r"queries\[0\]: .*list of queries"):
        flatcoat.maxsim([[1.0, 0.0]], np.ones((1, 2), np.float32), [1])


# ----------------------------------------------------------------------------- public accessors for the GPU side


def test_parse_helpers():
    tokens, offsets = parse_queries(np.ones((3, 4), np.float64), 4)
    assert tokens.dtype == np.float32 and tokens.shape == (3, 4) and offsets.tolist() == [0, 3]
    tokens, offsets = parse_queries((np.ones((5, 4), np.float32), [2, 3]), 4)
    assert offsets.tolist() == [0, 2, 5] and offsets.dtype == np.int64
    assert parse_query_weights(None, offsets) is None
    w = parse_query_weights(np.arange(5), offsets)
    assert w.dtype == np.float32 and w.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(parse_query_weights([[0, 1], [2, 3, 4]], offsets), w)
    with pytest.raises(ValueError, match="expected weights for 2 queries"):
        parse_query_weights([[0, 1]], offsets)
    with pytest.raises(ValueError, match=r"query_weights\[1\]: expected 3 weights"):
        parse_query_weights([[0, 1], [2, 3]], offsets)


@pytest.mark.parametrize("kind, storage", INDEXES)
def test_arrays_are_copies_with_the_documented_layout(kind, storage):
    index = _make(kind, storage)
    arrays = index.arrays()
    if kind == "dense":
        shape, dtype = _storage.dense_code_layout(storage, DIM)
        assert arrays["codes"].shape == (N, *shape) and arrays["codes"].dtype == dtype
        assert ("scale" in arrays) == ("offset" in arrays) == (storage == "int8")
    elif kind == "ivf":  # slots in lists (flatcoat/ivf.py): pq4 in blocks of 32, the others in dense rows
        slots = int(arrays["list_offsets"][-1])
        shape, dtype = ((16 * index.m,), np.dtype(np.uint8)) if storage == "pq4" else _storage.dense_code_layout(storage, DIM)
        assert arrays["codes"].shape == ((slots // 32 if storage == "pq4" else slots), *shape)
        assert arrays["codes"].dtype == dtype and arrays["slot_ids"].shape == (slots,)
        assert ("scale" in arrays) == ("offset" in arrays) == (storage == "int8")
        arrays["ids"] = arrays["slot_ids"][arrays["slot_ids"] >= 0]
    else:
        assert arrays["tokens"].dtype == _storage.multivector_token_dtype(storage)
        assert arrays["tokens"].shape == (index.num_tokens, DIM)
        assert arrays["offsets"].tolist() == [0, *np.cumsum(index.lengths).tolist()]
        assert ("scales" in arrays) == (storage == "int8")
    np.testing.assert_array_equal(arrays["ids"], index.ids)
    before = index.search(_one_query(kind), k=3)
    for a in arrays.values():
        assert a.flags.owndata and a.flags.writeable
        a[...] = 0
    after = index.search(_one_query(kind), k=3)
    np.testing.assert_array_equal(before[1], after[1])


def test_storage_layouts():
    assert _storage.dense_code_layout("f32", 5) == ((5,), np.dtype(np.float32))
    assert _storage.dense_code_layout("f16", 5) == ((5,), np.dtype(np.uint16))
    assert _storage.dense_code_layout("int8", 5) == ((5,), np.dtype(np.uint8))
    assert _storage.dense_code_layout("binary", 64) == ((1,), np.dtype(np.uint64))
    assert _storage.dense_code_layout("binary", 65) == ((2,), np.dtype(np.uint64))
    assert [_storage.multivector_token_dtype(s) for s in _storage.MULTIVECTOR_STORAGES] == [
        np.dtype(np.float32), np.dtype(np.uint16), np.dtype(np.uint8)]
    with pytest.raises(ValueError, match="^storage"):
        _storage.dense_code_layout("pq4", 8)
    with pytest.raises(ValueError, match="^storage"):
        _storage.multivector_token_dtype("binary")


# ----------------------------------------------------------------------------- the device mirror protocol


def test_parse_device():
    assert [_device.parse_device(d) for d in ("cpu", "cuda", "cuda:0", "cuda:3")] == [None, 0, 0, 3]
    for bad in ("gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA", "cuda:١"):
        with pytest.raises(ValueError, match="^device: expected 'cpu', 'cuda' or 'cuda:N'"):
            _device.parse_device(bad)
    with pytest.raises(TypeError, match="^device"):
        _device.parse_device(0)
    assert _device.mirror_for("dense", "cpu") is None and _device.mirror_for("multivector", "cpu") is None


class _FakeMirror:
    """A CPU stand-in for a GPU mirror: it records the protocol calls and searches source.views()."""

    calls: list = []

    def __init__(self, device):
        self.device = device
        self.current = None
        _FakeMirror.calls.append(("new", device))

    def invalidate(self):
        self.current = None
        _FakeMirror.calls.append(("invalidate",))

    def sync(self, source):
        self.current = {name: a.copy() for name, a in source.views().items()}
        _FakeMirror.calls.append(("sync", source.kind, source.storage))

    def search(self, source, queries, k, **args):
        if self.current is None:
            self.sync(source)
        _FakeMirror.calls.append(("search", k, tuple(sorted(args))))
        v = self.current
        if source.kind == "dense":
            q = np.atleast_2d(np.asarray(queries, np.float32))
            if k == 0:
                return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
            rerank = args["rerank"]
            return _core.search_dense(source.storage, "l2" if source.metric == "l2" else "ip", source.dim, v["codes"],
                                      v["ids"], v.get("sq_norms"), v.get("scale"), v.get("offset"), v.get("float_rows"),
                                      v.get("float_sq_norms"), q, k, rerank or 0)
        tokens, offsets = parse_queries(queries, source.dim)
        weights = parse_query_weights(args["query_weights"], offsets)
        positions, subset_offsets = args["subset"] if args["subset"] is not None else (None, None)
        return _core.search_maxsim(source.storage, source.dim, v["tokens"], v["offsets"], v.get("scales"), v["ids"],
                                   tokens, offsets, weights, k, positions, subset_offsets)


@pytest.fixture
def fake_gpu(monkeypatch):
    module = types.ModuleType("fake_gpu_module")
    module.DenseMirror = module.MultiVectorMirror = _FakeMirror
    monkeypatch.setitem(sys.modules, "fake_gpu_module", module)
    monkeypatch.setitem(_device._MIRRORS, "dense", ("fake_gpu_module", "DenseMirror"))
    monkeypatch.setitem(_device._MIRRORS, "multivector", ("fake_gpu_module", "MultiVectorMirror"))
    _FakeMirror.calls = []
    return _FakeMirror.calls


@pytest.mark.parametrize("storage", _storage.DENSE_STORAGES)
def test_dense_index_drives_the_mirror_protocol(fake_gpu, storage):
    cpu = _dense(storage, keep_float=True)
    gpu = _dense(storage, keep_float=True, device="cuda:1")
    assert gpu.device == "cuda:1" and fake_gpu[0] == ("new", "cuda:1")
    q = _batch("dense", 3)
    for k, rerank in ((4, None), (10**8, None), (2, 2**62)):
        for a, b in zip(cpu.search(q, k=k, rerank=rerank), gpu.search(q, k=k, rerank=rerank)):
            np.testing.assert_array_equal(a, b)
    assert ("search", N, ("rerank",)) in fake_gpu  # k and rerank arrive clamped to the index size
    fake_gpu.clear()
    gpu.add(np.ones((1, DIM), np.float32))
    gpu.remove([0])
    assert fake_gpu == [("invalidate",), ("invalidate",)]
    assert gpu.to("cuda:1") is gpu and fake_gpu[-1] == ("sync", "dense", storage)  # same device: same mirror
    assert gpu.to("cpu").device == "cpu"
    cpu.add(np.ones((1, DIM), np.float32))
    cpu.remove([0])
    for a, b in zip(cpu.search(q, k=4), gpu.search(q, k=4)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("storage", _storage.MULTIVECTOR_STORAGES)
def test_multivector_index_drives_the_mirror_protocol(fake_gpu, storage):
    cpu = _multivector(storage)
    gpu = _multivector(storage).to("cuda")
    assert gpu.device == "cuda:0" and ("sync", "multivector", storage) in fake_gpu
    queries = _batch("multivector", 3)
    weights = [np.arange(1, len(x) + 1, dtype=np.float32) for x in queries]
    subset = [[3, -1, 6], [], [0, 3, 6, 9, 12]]
    for kwargs in ({}, {"k": 10**8}, {"subset": subset}, {"query_weights": weights, "subset": subset}):
        for a, b in zip(cpu.search(queries, **kwargs), gpu.search(queries, **kwargs)):
            np.testing.assert_array_equal(a, b)
    packed = (np.concatenate(queries), [len(x) for x in queries])
    same = np.stack([x[:1] for x in queries])  # a 3-d (q, 1, dim) batch
    for form in (packed, same):
        for a, b in zip(cpu.search(form, subset=subset), gpu.search(form, subset=subset)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(KeyError, match="subset"):  # the index resolves the subset itself, under its lock
        gpu.search(queries, subset=[[3], [4], [6]])
    with pytest.raises(ValueError, match="one id list per query"):
        gpu.search(queries, subset=[[3]])
    fake_gpu.clear()
    gpu.remove([3])
    assert fake_gpu == [("invalidate",)]


def test_an_unknown_device_fails_before_any_gpu_import():
    for cls in (flatcoat.DenseIndex, flatcoat.MultiVectorIndex):
        with pytest.raises(ValueError, match="^device"):
            cls(4, device="tpu")


# ----------------------------------------------------------------------------- layers


def test_cpu_indexes_never_import_gpu_modules(tmp_path):
    """Building, searching, saving and loading both indexes on the CPU imports no flatcoat GPU module."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from flatcoat.dense import DenseIndex
        from flatcoat.multivector import MultiVectorIndex, maxsim
        from flatcoat import load
        d = DenseIndex(4, storage="int8", keep_float=True)
        d.add(np.eye(4, dtype=np.float32)); d.search(np.ones(4, np.float32), k=2, rerank=3)
        m = MultiVectorIndex(4)
        m.add([np.eye(4, dtype=np.float32)]); m.search(np.eye(4, dtype=np.float32), k=1, subset=[0])
        maxsim(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32), [4])
        d.save({str(tmp_path / 'd')!r}); m.save({str(tmp_path / 'm')!r})
        load({str(tmp_path / 'd')!r}).to("cpu"); load({str(tmp_path / 'm')!r}).to("cpu")
        gpu = sorted(name for name in sys.modules if name.startswith("flatcoat.cuda"))
        print(",".join(gpu))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
