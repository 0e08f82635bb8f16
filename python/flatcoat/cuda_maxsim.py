"""Late-interaction (MaxSim) search on the GPU with flatcoat's fused CUDA kernel.

:class:`CudaMaxSimStore` holds a :class:`flatcoat.MultiVectorIndex`'s packed
arrays (tokens, offsets, ids, int8 scales) in GPU memory and searches them with
one kernel that streams every document's tokens once (no padding to a
document length), keeps the running max per query token in registers and
feeds the scores straight into a per-block top-k. :class:`MaxSimMirror` is
what ``MultiVectorIndex(..., device="cuda")`` / ``.to("cuda")`` use: the host
arrays stay the index's truth and a device copy is refreshed after changes.

Results are those of the CPU path (``MultiVectorIndex.search``): float32
scores, int64 ids, best first, ties by the smaller id, padded with id -1 and
-inf; int8 bit for bit (same codes, same scales, integer products); f32 and
f16 up to float32 rounding (tensor cores sum in another order). Queries may be
numpy (results numpy) or device arrays: CuPy, torch CUDA tensors, anything with
``__cuda_array_interface__`` or a CUDA ``__dlpack__`` (results CuPy, or torch
for torch input), so embeddings made on the GPU (``flatcoat.cuda_encoders``)
are searched without a host copy.

>>> import flatcoat.cuda_maxsim as cm
>>> cm.STORAGES
('f32', 'f16', 'int8')
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import cuda as _cuda
from .cuda import CudaUnavailableError, MAX_K, require
from ._validate import as_k

__all__ = ["CudaMaxSimStore", "MaxSimMirror", "mirror_for", "STORAGES", "CudaUnavailableError"]

STORAGES = ("f32", "f16", "int8")
_TOKEN_DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.uint16), "int8": np.dtype(np.uint8)}
_UPLOAD_CHUNK_BYTES = 64 << 20


def _host_queries(queries, dim: int, query_weights):
    """(tokens float32 (t, dim), offsets int64 (nq + 1), weights or None, single) from host queries."""
    from .multivector import _queries, _weights  # the CPU path's parsing, so both accept the same input

    tokens, offsets, single = _queries(queries, dim)
    return tokens, offsets, _weights(query_weights, offsets, single), single


def _device_queries(queries, dim: int, query_weights, device: int, cp):
    """The same for device queries: a (t, dim) array (one query), a 3-d (nq, t, dim) array,
    a list of (t_i, dim) arrays or a (tokens, lengths) tuple with host lengths."""
    single = False
    if isinstance(queries, tuple) and len(queries) == 2 and not _cuda._on_device(queries[1]):
        tokens = _cuda._device_matrix(queries[0], "queries[0] (tokens)", dim, device, cp)
        lengths = np.asarray(queries[1])
        if lengths.ndim != 1 or (lengths.size and not np.issubdtype(lengths.dtype, np.integer)):
            raise ValueError("queries[1] (lengths): expected a 1-d integer array of token counts")
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
            single = True
            tokens = _cuda._device_matrix(a, "queries", dim, device, cp)
            lengths = np.array([tokens.shape[0]], dtype=np.int64)
        elif a.ndim == 3:
            n, t = a.shape[:2]
            tokens = _cuda._device_matrix(a.reshape(n * t, a.shape[2]), "queries", dim, device, cp)
            lengths = np.full(n, t, dtype=np.int64)
        else:
            raise ValueError(f"queries: expected a (t, {dim}) query, a 3-d batch or a list of queries, got {a.ndim}-d")
        if tokens.shape[0] == 0 or lengths.size == 0:
            raise ValueError("queries: every query needs at least one token vector")
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    weights = None
    if query_weights is not None:
        if _cuda._on_device(query_weights):
            w = _cuda._as_cupy(query_weights, cp).reshape(-1)
        elif isinstance(query_weights, (list, tuple)) and query_weights and _cuda._on_device(query_weights[0]):
            w = cp.concatenate([_cuda._as_cupy(x, cp).reshape(-1) for x in query_weights])
        else:
            from .multivector import _weights

            w = cp.asarray(_weights(query_weights, offsets, single))
        if w.shape[0] != offsets[-1]:
            raise ValueError(f"query_weights: expected {int(offsets[-1])} weights (one per query token), got {w.shape[0]}")
        with cp.cuda.Device(device):
            weights = cp.ascontiguousarray(w, dtype=cp.float32)
    return tokens, offsets, weights, single


class CudaMaxSimStore:
    """A multi-vector index's packed arrays in GPU memory, searched by fused MaxSim.

    ``tokens``: (total_tokens, dim) codes of the storage (f32: float32; f16:
    uint16 or float16; int8: uint8 codes ``c + 128`` with ``scales`` float32
    (total_tokens,)); ``offsets``: int64 (n_docs + 1,), 0 then strictly
    increasing; ``ids``: int64 (n_docs,), distinct and non-negative. Host
    (numpy) or device (CuPy) arrays, all on the same side; they are copied and
    not referenced afterwards. Use :meth:`from_index` for a MultiVectorIndex.
    """

    def __init__(self, dim: int, storage: str = "f32", *, tokens, offsets, ids, scales=None, device: int = 0):
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        ext = require(device)
        self._dim, self._storage, self._device = int(dim), storage, int(device)
        on_device = _cuda._on_device(tokens)
        xp = _cuda._cupy() if on_device else np
        conv = (lambda a: _cuda._as_cupy(a, xp)) if on_device else np.asarray
        tokens, offsets, ids = conv(tokens), conv(offsets), conv(ids)
        if storage == "f16" and tokens.dtype == np.float16:
            tokens = tokens.view(xp.uint16)
        if storage == "int8":
            if scales is None:
                raise ValueError("scales: int8 storage needs the per-token scales")
            scales = conv(scales)
        elif scales is not None:
            raise ValueError(f"scales: only int8 storage has per-token scales, not {storage!r}")
        n_docs = int(ids.shape[0]) if ids.ndim == 1 else -1
        n_tok = int(tokens.shape[0]) if tokens.ndim == 2 else -1
        checks = [("tokens", tokens, _TOKEN_DTYPES[storage], (n_tok, self._dim)),
                  ("offsets", offsets, np.dtype(np.int64), (n_docs + 1,)),
                  ("ids", ids, np.dtype(np.int64), (n_docs,))]
        if scales is not None:
            checks.append(("scales", scales, np.dtype(np.float32), (n_tok,)))
        for name, a, dtype, shape in checks:
            if _cuda._on_device(a) != on_device:
                raise TypeError(f"{name}: all arrays must be on the same side (host or device) as tokens")
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
        ascending = n_docs < 2 or bool(np.all(host_ids[1:] > host_ids[:-1]))
        order = None if ascending else np.argsort(host_ids, kind="stable")
        self._sorted_ids = host_ids.copy() if order is None else host_ids[order]
        if n_docs > 1 and not bool(np.all(self._sorted_ids[1:] > self._sorted_ids[:-1])):
            raise ValueError("ids: every id must be distinct")
        self._order = order  # rank -> position (None: identity)
        self._store = ext.MaxSimStore(self._device, storage, self._dim, n_docs, n_tok, order is not None)
        context = _cuda._cupy().cuda.Device(self._device) if on_device else _cuda._NoContext()
        with context:
            self._upload("tokens", tokens, xp)
            if scales is not None:
                self._upload("scales", scales, xp)
            self._upload("offsets", offsets, xp)
            self._upload("ids", np.ascontiguousarray(self._sorted_ids), np)
            if order is not None:
                ranks = np.empty(n_docs, dtype=np.uint32)
                ranks[order] = np.arange(n_docs, dtype=np.uint32)
                self._upload("ranks", ranks, np)
        self._docs, self._tokens = n_docs, n_tok

    def _upload(self, name, a, xp):
        n = a.shape[0]
        if n == 0:
            return
        row_bytes = max(1, a.nbytes // n)
        step = max(1, _UPLOAD_CHUNK_BYTES // row_bytes)
        for start in range(0, n, step):
            part = xp.ascontiguousarray(a[start : start + step])
            pitch = part.strides[0] if part.ndim > 1 else part.itemsize
            self._store.upload(name, start, _cuda._address(part), part.shape[0], pitch)

    @classmethod
    def from_index(cls, index, device: int = 0) -> "CudaMaxSimStore":
        """Uploads a :class:`flatcoat.MultiVectorIndex`'s arrays (hold its read lock while this runs)."""
        v = index._views()
        return cls(index.dim, index.storage, tokens=v["tokens"], offsets=v["offsets"], ids=v["ids"],
                   scales=v["scales"], device=device)

    # -------------------------------------------------------------- properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def device(self) -> str:
        return f"cuda:{self._device}"

    @property
    def num_tokens(self) -> int:
        return self._tokens

    @property
    def nbytes(self) -> int:
        """Device bytes held (token rows padded to 16 bytes, scales, offsets, ids, ranks)."""
        return int(self._store.nbytes)

    def __len__(self) -> int:
        return self._docs

    def __repr__(self) -> str:
        return (f"CudaMaxSimStore(dim={self._dim}, storage={self._storage!r}, count={self._docs}, "
                f"tokens={self._tokens}, device={self.device!r})")

    # -------------------------------------------------------------- search

    def _positions(self, candidates, nq: int, single: bool):
        """Candidate ids -> (positions, offsets); -1 entries are skipped, unknown ids are an error."""
        if single:
            parts = [candidates]
        elif isinstance(candidates, np.ndarray) and candidates.ndim == 2:
            parts = list(candidates)
        else:
            parts = list(candidates)
        if len(parts) != nq:
            raise ValueError(f"candidates: expected one id list per query ({nq}), got {len(parts)}")
        out = []
        for i, c in enumerate(parts):
            c = np.asarray(c.get() if hasattr(c, "get") and not isinstance(c, np.ndarray) else c)
            if c.ndim != 1 or (c.size and not np.issubdtype(c.dtype, np.integer)):
                raise ValueError(f"candidates[{i}]: expected a 1-d integer array of document ids")
            c = c.astype(np.int64)
            c = c[c != -1]
            rank = np.searchsorted(self._sorted_ids, c)
            ok = rank < self._sorted_ids.size
            ok[ok] = self._sorted_ids[rank[ok]] == c[ok]
            if not ok.all():
                shown = ", ".join(str(int(x)) for x in c[~ok][:5])
                raise ValueError(f"candidates: id(s) not in the index ({shown}); rerank only ids the index holds")
            out.append(rank if self._order is None else self._order[rank])
        lengths = np.array([p.size for p in out], dtype=np.int64)
        offsets = np.zeros(nq + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(out).astype(np.int64) if out else np.empty(0, np.int64)
        return np.ascontiguousarray(flat), offsets

    def search(self, queries, k: int = 10, candidates=None, query_weights=None, *, out=None) -> Tuple:
        """``(scores, ids)`` of the ``k`` best documents by MaxSim, as MultiVectorIndex.search.

        One (t, dim) query gives (k,) arrays; a list of queries (or a 3-d
        array, or a ``(tokens, lengths)`` tuple) gives (n_queries, k).
        ``candidates``: document ids to rerank per query (-1 skipped, repeats
        count once). ``query_weights``: per-token weights. ``out``: a
        ``(scores, ids)`` pair of the input's kind and (n_queries, k) shape.
        """
        return self._search(queries, k, query_weights, out, lambda nq, single: (
            None if candidates is None else self._positions(candidates, nq, single)))

    def _search(self, queries, k, query_weights, out, candidate_positions):
        k = as_k(k)
        if k > MAX_K:
            raise ValueError(f"k: at most {MAX_K} on the GPU, got {k}")
        on_device = _cuda._on_device(queries) or (
            isinstance(queries, (list, tuple)) and len(queries) > 0 and _cuda._on_device(queries[0]))
        if on_device:
            cp = _cuda._cupy()
            q, offsets, weights, single = _device_queries(queries, self._dim, query_weights, self._device, cp)
        else:
            cp = None
            q, offsets, weights, single = _host_queries(queries, self._dim, query_weights)
        nq = offsets.size - 1
        cands = candidate_positions(nq, single)
        cand_ptr = cand_off_ptr = 0
        if cands is not None:
            positions, cand_offsets = cands
            positions = np.ascontiguousarray(positions, dtype=np.int64)
            if positions.size == 0:
                positions = np.zeros(1, dtype=np.int64)  # a valid address; the offsets say it is empty
            cand_offsets = np.ascontiguousarray(cand_offsets, dtype=np.int64)
            cand_ptr, cand_off_ptr = _cuda._address(positions), _cuda._address(cand_offsets)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        shape = (nq, k)
        if on_device:
            with cp.cuda.Device(self._device):
                if out is None:
                    scores, ids = cp.empty(shape, dtype=cp.float32), cp.empty(shape, dtype=cp.int64)
                else:
                    scores, ids = _cuda._check_out(out, (k,) if single else shape, True, cp)
                    scores, ids = scores.reshape(shape), ids.reshape(shape)
                source = queries[0] if isinstance(queries, (list, tuple)) else queries
                stream = _cuda._stream_of(source, cp)
                self._store.search(_cuda._address(q), _cuda._address(offsets), nq,
                                   0 if weights is None else _cuda._address(weights), True, k, cand_ptr,
                                   cand_off_ptr, _cuda._address(scores), _cuda._address(ids), stream)
            if out is not None:
                return out
            result = _cuda._as_input_kind(source, (scores, ids))
            return (result[0][0], result[1][0]) if single else result
        if out is None:
            scores, ids = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.int64)
        else:
            scores, ids = _cuda._check_out(out, (k,) if single else shape, False, None)
            scores, ids = scores.reshape(shape), ids.reshape(shape)
        self._store.search(_cuda._address(q), _cuda._address(offsets), nq,
                           0 if weights is None else _cuda._address(weights), False, k, cand_ptr, cand_off_ptr,
                           _cuda._address(scores), _cuda._address(ids), 0)
        if out is not None:
            return out
        return (scores[0], ids[0]) if single else (scores, ids)


class MaxSimMirror(_cuda.DeviceMirror):
    """The GPU side of a ``MultiVectorIndex(device="cuda")`` (see :class:`flatcoat.cuda.DeviceMirror`)."""

    store_class = CudaMaxSimStore

    def search(self, index, queries, k=10, candidates=None, query_weights=None, **options):
        """MultiVectorIndex.search on the device copy; candidates are ids the index maps itself."""
        store = self._current(index)

        def positions(nq, single):
            if candidates is None:
                return None
            c = candidates
            if _cuda._on_device(c):
                c = _cuda._cupy().asnumpy(_cuda._as_cupy(c, _cuda._cupy()))
            return index._candidates(c, nq, single)

        return store._search(queries, k, query_weights, options.get("out"), positions)


def mirror_for(device, current: Optional[MaxSimMirror] = None) -> Optional[MaxSimMirror]:
    """The MultiVectorIndex mirror for ``device`` ("cpu" -> None), keeping ``current`` when it is already there."""
    return MaxSimMirror.for_device(device, current)
