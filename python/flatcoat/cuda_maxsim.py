"""Late-interaction (MaxSim) search on the GPU with flatcoat's fused CUDA kernel.

:class:`CudaMaxSimStore` holds a :class:`flatcoat.MultiVectorIndex`'s packed
arrays (tokens, offsets, ids, int8 scales) in GPU memory and searches them with
one kernel that streams every document's tokens once (no padding to a
document length), keeps the running max per query token in registers and
feeds the scores straight into a per-block top-k. :class:`MultiVectorMirror`
is what ``MultiVectorIndex(..., device="cuda")`` / ``.to("cuda")`` use (see
``flatcoat._device``): the host arrays stay the index's truth and a device
copy is refreshed after changes; restricted searches (``subset=``) go through
the index, which resolves the ids.

Results follow the CPU path (``MultiVectorIndex.search``): float32 scores and
int64 ids of shape (q, k') with ``k' = min(k, n_docs)`` (one (t, dim) query
gives q = 1), best first, ties by the smaller id, padded with id -1 and -inf
where a subset has fewer documents; int8 bit for bit (same codes, same scales,
integer products); f32 and f16 up to float32 rounding (tensor cores sum in
another order). Queries may be numpy (results numpy) or device arrays: CuPy,
torch CUDA tensors, anything with ``__cuda_array_interface__`` or a CUDA
``__dlpack__`` (results CuPy, or torch for torch input), so embeddings made on
the GPU (``flatcoat.cuda_encoders``) are searched without a host copy.

>>> import flatcoat.cuda_maxsim as cm
>>> cm.MULTIVECTOR_STORAGES
('f32', 'f16', 'int8')
"""

from __future__ import annotations

import contextlib
from typing import Tuple

import numpy as np

from . import cuda as _cuda
from ._device import IndexSource
from ._storage import MULTIVECTOR_STORAGES, multivector_token_dtype
from ._validate import as_int, as_k
from .cuda import CudaUnavailableError, require
from .multivector import parse_queries, parse_query_weights

__all__ = ["CudaMaxSimStore", "MultiVectorMirror", "MULTIVECTOR_STORAGES", "CudaUnavailableError"]


def _device_queries(queries, dim: int, device: int, cp):
    """Device queries as ``(tokens CuPy float32 (total, dim), offsets numpy int64 (q + 1,))``: the forms
    of :func:`flatcoat.multivector.parse_queries` with device token arrays (one (t, dim) array, a 3-d
    (q, t, dim) array, a list of (t_i, dim) arrays, or a ``(tokens, lengths)`` tuple with host lengths)."""
    if isinstance(queries, tuple) and len(queries) == 2 and not _cuda._on_device(queries[1]):
        tokens = _cuda._device_matrix(queries[0], "queries[0] (tokens)", dim, device, cp)
        lengths = np.asarray(queries[1])
        if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
            raise ValueError("queries[1] (lengths): expected a 1-d integer array of token counts, one per query")
        lengths = lengths.astype(np.int64)
        if lengths.size == 0 or lengths.min() <= 0 or int(lengths.sum()) != tokens.shape[0]:
            raise ValueError(f"queries[1] (lengths): token counts must be positive and sum to {tokens.shape[0]}")
    elif isinstance(queries, (list, tuple)):
        if not queries:
            raise ValueError("queries: no queries given")
        parts = [_cuda._device_matrix(q, f"queries[{i}]", dim, device, cp) for i, q in enumerate(queries)]
        lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
        if lengths.min() == 0:
            raise ValueError(f"queries[{int(np.argmin(lengths))}]: the query has no tokens")
        with cp.cuda.Device(device):
            tokens = cp.ascontiguousarray(cp.concatenate(parts))
    else:
        a = _cuda._as_cupy(queries, cp)
        if a.ndim == 2:
            tokens = _cuda._device_matrix(a, "queries", dim, device, cp)
            lengths = np.array([tokens.shape[0]], dtype=np.int64)
        elif a.ndim == 3:
            n, t = a.shape[:2]
            tokens = _cuda._device_matrix(a.reshape(n * t, a.shape[2]), "queries", dim, device, cp)
            lengths = np.full(n, t, dtype=np.int64)
        else:
            raise ValueError(f"queries: expected one (t, {dim}) query, a 3-d batch or a list of queries, got {a.ndim}-d")
        if tokens.shape[0] == 0 or lengths.size == 0:
            raise ValueError("queries: every query needs at least one token vector")
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return tokens, offsets


def _device_weights(query_weights, offsets, device: int, cp):
    """Weights for device queries, as CuPy float32 (total,): device weights (one flat array, a (q, t)
    array or a list of per-query arrays) used on the device; host weights read by
    :func:`flatcoat.multivector.parse_query_weights` and copied over."""
    if query_weights is None:
        return None
    total = int(offsets[-1])
    if _cuda._on_device(query_weights):
        w = _cuda._as_cupy(query_weights, cp).reshape(-1)
    elif isinstance(query_weights, (list, tuple)) and query_weights and _cuda._on_device(query_weights[0]):
        if len(query_weights) != offsets.size - 1:
            raise ValueError(f"query_weights: expected weights for {offsets.size - 1} queries, got {len(query_weights)}")
        w = cp.concatenate([_cuda._as_cupy(x, cp).reshape(-1) for x in query_weights])
    else:
        w = parse_query_weights(query_weights, offsets)
    if w.shape[0] != total:
        raise ValueError(f"query_weights: expected {total} weights (one per query token), got {w.shape[0]}")
    if w.dtype.kind not in "fiu":
        raise TypeError(f"query_weights: dtype {w.dtype} is not numeric; pass float32 weights")
    with cp.cuda.Device(device):
        return cp.ascontiguousarray(cp.asarray(w), dtype=cp.float32)


class CudaMaxSimStore(_cuda._DeviceStore):
    """A multi-vector index's packed arrays in GPU memory, searched by fused MaxSim.

    ``tokens``: (total_tokens, dim) codes of the storage
    (``flatcoat._storage.multivector_token_dtype``: f32 float32; f16 uint16 or
    float16; int8 uint8 codes ``c + 128`` with ``scales`` float32
    (total_tokens,)); ``offsets``: int64 (n_docs + 1,), 0 then strictly
    increasing; ``ids``: int64 (n_docs,), distinct and non-negative. Host
    (numpy) or device (CuPy) arrays, all on the same side; they are copied to
    ``device`` and not referenced afterwards. Use :meth:`from_index` for a
    MultiVectorIndex.
    """

    def __init__(self, dim: int, *, storage: str = "f32", tokens, offsets, ids, scales=None, device: str = "cuda"):
        self._dim = as_int(dim, "dim", minimum=1)
        if storage not in MULTIVECTOR_STORAGES:
            raise ValueError(f"storage: expected one of {MULTIVECTOR_STORAGES}, got {storage!r}")
        self._storage = storage
        self._device = _cuda._gpu_ordinal(device, "CudaMaxSimStore")
        ext = require(self._device)
        if storage == "int8" and scales is None:
            raise ValueError("scales: int8 storage needs the per-token scales")
        if storage != "int8" and scales is not None:
            raise ValueError(f"scales: only int8 storage has per-token scales, not {storage!r}")
        fields = {"tokens": tokens, "offsets": offsets, "ids": ids, "scales": scales}
        xp = _cuda._arrays_side(fields, "tokens")
        conv = np.asarray if xp is np else (lambda a: _cuda._as_cupy(a, xp))
        fields = {name: conv(a) for name, a in fields.items() if a is not None}
        if storage == "f16" and fields["tokens"].dtype == np.float16:
            fields["tokens"] = fields["tokens"].view(xp.uint16)
        tokens, offsets, ids = fields["tokens"], fields["offsets"], fields["ids"]
        n_docs = int(ids.shape[0]) if ids.ndim == 1 else -1
        n_tok = int(tokens.shape[0]) if tokens.ndim == 2 else -1
        layout = {"tokens": (multivector_token_dtype(storage), (n_tok, self._dim)),
                  "offsets": (np.dtype(np.int64), (n_docs + 1,)), "ids": (np.dtype(np.int64), (n_docs,)),
                  "scales": (np.dtype(np.float32), (n_tok,))}
        for name, a in fields.items():
            dtype, shape = layout[name]
            if a.dtype != dtype or tuple(a.shape) != shape or min(shape) < 0:
                raise ValueError(f"{name}: expected {dtype} of shape {shape}, got {a.dtype} {tuple(a.shape)}")
        host_offsets = offsets if xp is np else xp.asnumpy(offsets)
        if int(host_offsets[0]) != 0 or (n_docs and not bool(np.all(np.diff(host_offsets) > 0))) \
                or int(host_offsets[-1]) != n_tok:
            raise ValueError(f"offsets: must start at 0, increase strictly (no empty document) and end at {n_tok}")
        host_ids = ids if xp is np else xp.asnumpy(ids)
        if n_docs and int(host_ids.min()) < 0:
            raise ValueError("ids: must be non-negative")
        # Ties go to the smaller id: a rank per document (its place in ascending id order), unless
        # the ids already ascend in document order.
        order = None if n_docs < 2 or bool(np.all(host_ids[1:] > host_ids[:-1])) else np.argsort(host_ids, kind="stable")
        sorted_ids = host_ids if order is None else host_ids[order]
        if n_docs > 1 and not bool(np.all(sorted_ids[1:] > sorted_ids[:-1])):
            raise ValueError("ids: every id must be distinct")
        self._store = ext.MaxSimStore(self._device, storage, self._dim, n_docs, n_tok, order is not None)
        with xp.cuda.Device(self._device) if xp is not np else contextlib.nullcontext():
            for name in ("tokens", "scales", "offsets"):
                if name in fields:
                    _cuda._upload(self._store, name, fields[name], xp)
            _cuda._upload(self._store, "ids", np.ascontiguousarray(sorted_ids), np)
            if order is not None:
                ranks = np.empty(n_docs, dtype=np.uint32)
                ranks[order] = np.arange(n_docs, dtype=np.uint32)
                _cuda._upload(self._store, "ranks", ranks, np)
        self._docs, self._tokens = n_docs, n_tok

    @classmethod
    def from_index(cls, index, device: str = "cuda") -> "CudaMaxSimStore":
        """A copy of a :class:`flatcoat.MultiVectorIndex` on ``device`` (through its public ``arrays()``)."""
        return cls._from_arrays(index.dim, None, index.storage, index.arrays(), device)

    @classmethod
    def _from_arrays(cls, dim, metric, storage, arrays: dict, device) -> "CudaMaxSimStore":
        return cls(dim, storage=storage, device=device, **arrays)

    # -------------------------------------------------------------- properties

    @property
    def num_tokens(self) -> int:
        return self._tokens

    def __len__(self) -> int:
        return self._docs

    def __repr__(self) -> str:
        return (f"CudaMaxSimStore(dim={self._dim}, storage={self._storage!r}, count={self._docs}, "
                f"tokens={self._tokens}, device={self.device!r})")

    # -------------------------------------------------------------- search

    def search(self, queries, k: int = 10, *, query_weights=None, out=None) -> Tuple:
        """``(scores, ids)`` of the ``k`` best documents by MaxSim, both (q, k') with ``k' = min(k, len(self))``.

        ``queries``: the forms of :func:`flatcoat.multivector.parse_queries`
        (one (t, dim) query is q = 1), numpy or device token arrays.
        ``query_weights``: per-token weights, see
        :func:`flatcoat.multivector.parse_query_weights`. ``out``: a
        ``(scores, ids)`` pair of the queries' kind and (q, k') shape. A search
        restricted to some documents is ``MultiVectorIndex(...,
        device="cuda").search(..., subset=...)``.
        """
        return self._search(queries, _cuda._bounded_k(as_k(k), self._docs), query_weights, None, out)

    def _search(self, queries, k: int, query_weights, subset, out):
        """search() with ``k`` validated and bounded by the documents (it may be 0); ``subset`` None or
        ``(positions int64, offsets int64 (q + 1))`` of document positions."""
        on_device = _cuda._on_device(queries) or (
            isinstance(queries, (list, tuple)) and len(queries) > 0 and _cuda._on_device(queries[0]))
        if on_device:
            cp = _cuda._cupy()
            q, offsets = _device_queries(queries, self._dim, self._device, cp)
            weights = _device_weights(query_weights, offsets, self._device, cp)
        else:
            cp = None
            q, offsets = parse_queries(queries, self._dim)
            weights = parse_query_weights(query_weights, offsets)
        nq = offsets.size - 1
        positions = subset_offsets = None
        if subset is not None:
            positions, subset_offsets = (np.ascontiguousarray(a, dtype=np.int64) for a in subset)
        scores, ids = _cuda._outputs(out, (nq, k), cp, self._device)
        source = queries[0] if isinstance(queries, (list, tuple)) else queries
        with cp.cuda.Device(self._device) if cp is not None else contextlib.nullcontext():
            if k:
                stream = _cuda._stream_of(source, cp) if cp is not None else 0
                self._store.search(q, offsets, weights, k, positions, subset_offsets, scores, ids, stream)
        if out is not None:
            return out
        return _cuda._as_input_kind(source, (scores, ids)) if cp is not None else (scores, ids)


class MultiVectorMirror(_cuda.DeviceMirror):
    """The GPU side of a ``MultiVectorIndex(device="cuda")`` (see :class:`flatcoat.cuda.DeviceMirror`)."""

    store_class = CudaMaxSimStore

    def search(self, source: IndexSource, queries, k: int, *, subset=None, query_weights=None):
        """MultiVectorIndex.search on the device copy: ``k`` comes validated and bounded by the index,
        ``subset`` resolved to ``(positions, offsets)`` (or None), ``query_weights`` as the user passed them."""
        store = self._current(source)
        k = _cuda._bounded_k(as_int(k, "k", minimum=0), len(store))
        return store._search(queries, k, query_weights, subset, None)
