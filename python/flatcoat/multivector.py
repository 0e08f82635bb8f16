"""Late interaction: multi-vector documents scored by exact MaxSim.

A document is a bag of token vectors; a query too. Their score is

    MaxSim(q, d) = sum over query tokens t of  w_t * max over document tokens j of <q_t, d_j>

(ColBERT's late interaction; with idf weights ``w_t`` it is BERTScore-recall).
:class:`MultiVectorIndex` keeps every document token in one contiguous array
plus offsets (never padded) and scans it exhaustively with the native kernel;
:func:`maxsim` scores packed documents without an index.

Storages:

* ``"f32"``: float32 tokens; exact.
* ``"f16"``: half-precision tokens widened to float32 before the products
  (scores differ from f32 by the rounding of the tokens only).
* ``"int8"``: one scale per token, ``token ~ scale * code`` with codes in
  [-127, 127] (stored as uint8 ``code + 128``); queries are quantized per token
  to [-64, 64] at search time and scored in integer arithmetic (AVX2
  ``vpmaddubsw``), 4x fewer bytes than f32 and about 1.8x its speed. Measured on
  clustered unit-norm 128-dim tokens (``tests/test_multivector.py``): recall@10
  against the f32 ranking >= 0.99. A per-document scale was measured worse
  (see ``docs/multivector.md``).

``keep_float=True`` also keeps a float32 copy of every token (``4 * dim``
bytes per token more), so that ``search(..., rerank=R)`` re-scores the ``R``
best documents of the int8 (or f16) scan by exact float32 MaxSim and returns
the best ``k`` of them: near-ties that int8 swaps come out in the exact order.
"""

from __future__ import annotations

import numbers
import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._device import IndexSource, Mirrored, mirror_for, to_host
from ._persist import IndexFormatError, register_kind, save_index
from ._attributes import AttributeStore
from ._records import (
    ATTRIBUTES_META, filter_bits, held_positions, load_attributes, matching_ids, parse_attributes,
    positions_of, removal_ids, save_attributes, upsert_ids,
)
from ._storage import MULTIVECTOR_STORAGES, RowStore, multivector_token_dtype
from ._validate import (
    MAX_ID, RWLock, as_bool, as_choice, as_ids, as_int, as_k, as_rerank, auto_ids, holds_id, read_only,
)

_KIND = "multivector"
_INT64 = np.dtype(np.int64)
# Per document: the CSR offsets (a fence 0, then each document's end) and the id.
_DOC_FIELDS = {"offsets": ((), _INT64), "ids": ((), _INT64)}
# The float32 copy of the tokens kept with keep_float=True (a token field: it follows every change).
_FLOAT_TOKENS = "float_tokens"

__all__ = ["MultiVectorIndex", "maxsim", "parse_queries", "parse_query_weights"]

# How to pass one item when a list was read as a list of items.
_ONE = {
    "document": "to add one document pass [tokens]",
    "query": "for one query pass its (n_tokens, dim) matrix as a 2-d numpy array, or [query]",
}
_PLURAL = {"document": "documents", "query": "queries"}


# ----------------------------------------------------------------------------- input checks


def _float_tokens(x, name: str, dim: Optional[int], keep_f16: bool = False, listed: Optional[str] = None) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array (float16 kept as is when ``keep_f16``).

    ``listed``: ``x`` is one element of a list of documents or queries (the
    item's name), so a vector there means the list was meant as one matrix.
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name}: cannot be read as an array ({exc}); pass a numpy array of shape (n_tokens, dim)") from None
    if listed is not None and x.ndim < 2:
        raise ValueError(
            f"{name}: expected a 2-d (n_tokens, dim) token matrix, got a {x.ndim}-d value of shape {x.shape}; "
            f"a list is read as a list of {_PLURAL[listed]}, each a (n_tokens, dim) matrix ({_ONE[listed]})"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"{name}: dtype {x.dtype} is not a floating type; pass float32 (e.g. {name}.astype(numpy.float32))")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d (n_tokens, dim) array of token vectors, got {x.ndim}-d shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected token dimension {dim}, got {x.shape[1]}")
    target = np.float16 if (keep_f16 and x.dtype == np.float16) else np.float32
    with np.errstate(over="ignore"):  # overflow to inf is reported below
        x = np.ascontiguousarray(x, dtype=target)
    if x.size and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{name}: token row {bad} contains NaN or inf (after conversion to {x.dtype}); remove or fix it")
    return x


def _lengths(lengths, name: str, total: int, item: str = "document") -> np.ndarray:
    lengths = np.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of token counts, one per {item}, got shape {lengths.shape}")
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"{name}: dtype {lengths.dtype} is not an integer type; pass int64 token counts")
    lengths = lengths.astype(np.int64)
    if lengths.size and lengths.min() <= 0:
        bad = int(np.flatnonzero(lengths <= 0)[0])
        raise ValueError(f"{name}: {item} {bad} has {int(lengths[bad])} tokens; every {item} needs at least one")
    if int(lengths.sum()) != total:
        raise ValueError(f"{name}: token counts sum to {int(lengths.sum())} but there are {total} token rows")
    return lengths


def _offsets_of(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _packed_docs(
    docs, dim: Optional[int], name: str, keep_f16: bool = False, item: str = "document"
) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens (total, dim), lengths (n,)) from a list of (n_i, dim) arrays, a
    3-d (n, t, dim) array or a (tokens, lengths) tuple."""
    if isinstance(docs, tuple) and len(docs) == 2 and np.ndim(docs[1]) == 1:
        tokens = _float_tokens(docs[0], f"{name}[0] (tokens)", dim, keep_f16)
        return tokens, _lengths(docs[1], f"{name}[1] (lengths)", tokens.shape[0], item)
    if isinstance(docs, np.generic):
        docs = np.asarray(docs)
    if isinstance(docs, np.ndarray):
        if docs.ndim == 3:
            n, t = docs.shape[:2]
            if n and t == 0:
                raise ValueError(f"{name}: {_PLURAL[item]} of 0 tokens; every {item} needs at least one token vector")
            tokens = _float_tokens(docs.reshape(n * t, docs.shape[2]), name, dim, keep_f16)
            return tokens, np.full(n, t, dtype=np.int64)
        if docs.ndim == 2:
            raise ValueError(
                f"{name}: a 2-d array is one {item}'s (n_tokens, dim) matrix, but {name} is a list of {_PLURAL[item]}; "
                f"{_ONE[item]}, or pass a list of (n_tokens, dim) arrays, a 3-d (n, n_tokens, dim) array "
                "or a (tokens, lengths) tuple"
            )
        raise ValueError(
            f"{name}: expected a list of (n_tokens, dim) arrays, a 3-d (n, n_tokens, dim) array "
            f"or a (tokens, lengths) tuple, got a {docs.ndim}-d array"
        )
    if isinstance(docs, (str, bytes)) or not hasattr(docs, "__len__"):
        raise TypeError(f"{name}: expected a list of (n_tokens, dim) arrays or a (tokens, lengths) tuple, got {type(docs).__name__}")
    parts = []
    for i, doc in enumerate(docs):
        part = _float_tokens(doc, f"{name}[{i}]", dim, keep_f16, listed=item)
        if part.shape[0] == 0:
            raise ValueError(f"{name}[{i}]: {item} has no tokens; every {item} needs at least one token vector")
        if parts and part.shape[1] != parts[0].shape[1]:
            raise ValueError(f"{name}[{i}]: token dimension {part.shape[1]} differs from {name}[0]'s {parts[0].shape[1]}")
        parts.append(part)
    if not parts:
        width = dim if dim is not None else 0
        return np.empty((0, width), dtype=np.float32), np.empty(0, dtype=np.int64)
    if keep_f16 and any(p.dtype != parts[0].dtype for p in parts):
        parts = [p.astype(np.float32) for p in parts]
    lengths = np.array([p.shape[0] for p in parts], dtype=np.int64)
    return np.ascontiguousarray(np.concatenate(parts)), lengths


def _parse_queries(queries, dim: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(tokens, offsets, single): ``single`` when ``queries`` was one (t, dim) matrix."""
    if isinstance(queries, np.generic):
        queries = np.asarray(queries)
    if isinstance(queries, np.ndarray) and queries.ndim == 2:
        tokens = _float_tokens(queries, "queries", dim)
        if tokens.shape[0] == 0:
            raise ValueError("queries: the query has no tokens; a query needs at least one token vector")
        return tokens, np.array([0, tokens.shape[0]], dtype=np.int64), True
    if isinstance(queries, np.ndarray) and queries.ndim != 3:
        raise ValueError(
            f"queries: expected one (n_tokens, {dim}) array, a list of them or a 3-d (n_queries, n_tokens, {dim}) "
            f"array, got a {queries.ndim}-d array"
        )
    tokens, lengths = _packed_docs(queries, dim, "queries", item="query")
    if lengths.size == 0:
        raise ValueError("queries: no queries given")
    return tokens, _offsets_of(lengths), False


def parse_queries(queries, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Host queries as ``(tokens float32 (total, dim), offsets int64 (q + 1,))``.

    ``queries``: one (t, dim) matrix (q = 1), a list of (t_i, dim) matrices, a
    3-d (q, t, dim) array or a ``(tokens, lengths)`` tuple. A list is always a
    list of queries, so one query written as nested lists of numbers is an
    error that says how to pass it. Every query needs at least one token;
    tokens must be finite floats.

    >>> import numpy as np
    >>> tokens, offsets = parse_queries([np.ones((2, 3)), np.ones((1, 3))], 3)
    >>> tokens.shape, offsets.tolist()
    ((3, 3), [0, 2, 3])
    """
    tokens, offsets, _ = _parse_queries(queries, dim)
    return tokens, offsets


def _weight_vector(w, where: str, n: int, expected: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{where}: expected {n} weights ({expected}), got shape {w.shape}")
    if w.size and not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
        raise TypeError(f"{where}: dtype {w.dtype} is not numeric; pass float32 weights")
    w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise ValueError(f"{where}: weights must be finite")
    return w


def parse_query_weights(query_weights, offsets) -> Optional[np.ndarray]:
    """Per-query-token weights as one float32 ``(total,)`` array, or None.

    ``offsets``: the (q + 1,) query offsets of :func:`parse_queries`.
    ``query_weights``: None; one 1-d array with a weight per token of every
    query, back to back (for one query: its weights); or one 1-d array per
    query (a list, or a 2-d (q, t) array).

    >>> parse_query_weights([np.ones(2), [0.5]], np.array([0, 2, 3])).tolist()
    [1.0, 1.0, 0.5]
    """
    if query_weights is None:
        return None
    offsets = np.asarray(offsets)
    lengths = np.diff(offsets)
    per_query = (isinstance(query_weights, np.ndarray) and query_weights.ndim == 2) or (
        isinstance(query_weights, (list, tuple)) and any(np.ndim(w) > 0 for w in query_weights))
    if not per_query:
        expected = "one per query token" if lengths.size == 1 else \
            f"one per token of the {lengths.size} queries, back to back; or pass one 1-d array per query"
        return np.ascontiguousarray(_weight_vector(query_weights, "query_weights", int(offsets[-1]), expected))
    if len(query_weights) != lengths.size:
        raise ValueError(f"query_weights: expected weights for {lengths.size} queries, got {len(query_weights)}")
    parts = [_weight_vector(w, f"query_weights[{i}]", int(n), "one per query token")
             for i, (w, n) in enumerate(zip(query_weights, lengths))]
    return np.ascontiguousarray(np.concatenate(parts))


def _query_count(queries) -> int:
    """How many queries ``queries`` holds, from its shape only (it may be a device array)."""
    if isinstance(queries, tuple) and len(queries) == 2:
        lengths = queries[1]
        if (lengths.ndim if hasattr(lengths, "ndim") else np.ndim(lengths)) == 1:  # (tokens, lengths)
            return len(lengths)
    if isinstance(queries, (list, tuple)):
        return len(queries)
    ndim = getattr(queries, "ndim", None)
    if ndim == 2:
        return 1
    if ndim == 3:
        return int(queries.shape[0])
    raise ValueError(f"queries: expected one (n_tokens, dim) array, a list of them or a 3-d array, got {queries!r:.60}")


def _quantize_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric int8: codes in [-127, 127] stored as uint8 code + 128."""
    amax = np.abs(x).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int16) + 128
    return np.ascontiguousarray(codes.astype(np.uint8)), scale


# ----------------------------------------------------------------------------- the functional form


def maxsim(query, tokens, lengths, query_weights=None) -> np.ndarray:
    """MaxSim of queries against packed documents, without an index: a score per document.

    A scoring function, not a search: every document is scored and nothing is
    ranked. ``query``: one (t, dim) matrix of token vectors, or a list of such
    queries (a list is always a list of queries). ``tokens``: (total, dim)
    document tokens, all documents back to back; ``lengths``: (n_docs,) token
    counts (each >= 1, summing to ``total``). float16 tokens are scored as
    stored (widened to float32); other float dtypes as float32.
    ``query_weights``: see :func:`parse_query_weights`. Returns float32 scores
    of shape (n_docs,) for one query, (n_queries, n_docs) for a list.

    >>> import numpy as np, flatcoat
    >>> q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    >>> docs = np.array([[1, 0], [0.5, 0.5], [0, 2]], dtype=np.float32)
    >>> flatcoat.maxsim(q, docs, [2, 1]).tolist()   # doc 0: 1 + 0.5, doc 1: 0 + 2
    [1.5, 2.0]
    >>> flatcoat.maxsim([q, q[:1]], docs, [2, 1]).tolist()
    [[1.5, 2.0], [1.0, 0.0]]
    """
    docs = _float_tokens(tokens, "tokens", None, keep_f16=True)
    lens = _lengths(lengths, "lengths", docs.shape[0])
    dim = docs.shape[1]
    if dim == 0:
        raise ValueError("tokens: token vectors must have at least one dimension")
    q, offsets, single = _parse_queries(query, dim)
    weights = parse_query_weights(query_weights, offsets)
    storage = "f16" if docs.dtype == np.float16 else "f32"
    codes = docs.view(np.uint16) if storage == "f16" else docs
    scores = _core.maxsim_scores(storage, dim, codes, _offsets_of(lens), None, q, offsets, weights)
    return scores[0] if single else scores


# ----------------------------------------------------------------------------- the index


class MultiVectorIndex(Mirrored):
    """Exact MaxSim search over multi-vector documents (ColBERT-style late interaction).

    Parameters
    ----------
    dim: token vector dimension.
    storage: ``"f32"``, ``"f16"`` or ``"int8"`` (per-token scale; see the module docs).
    keep_float: also keep a float32 copy of every token (``4 * dim`` bytes per
        token on top of the codes, saved and memory-mapped with them) so that
        ``search(..., rerank=R)`` can re-score the ``R`` best documents of an
        int8 or f16 scan by exact MaxSim.
    device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (searches on a GPU copy; see :meth:`to`).

    Everything after ``dim`` is keyword-only. Documents are stored packed (one
    token array plus offsets, no padding). A list passed to :meth:`add` or
    :meth:`search` is a list of documents (queries), each a (n_tokens, dim)
    matrix. Searches may run from many threads at once; ``add`` and
    ``remove`` wait for running searches and block new ones while they change
    the index.

    >>> import numpy as np, flatcoat
    >>> index = flatcoat.MultiVectorIndex(2)
    >>> index.add([np.array([[1, 0], [0, 1]], np.float32), np.array([[0.5, 0.5]], np.float32)]).tolist()
    [0, 1]
    >>> scores, ids = index.search(np.array([[1, 0], [0, 1]], np.float32), k=5)
    >>> ids.tolist(), scores.tolist()
    ([[0, 1]], [[2.0, 1.0]])
    """

    _KIND = _KIND  # for Mirrored

    def __init__(self, dim: int, *, storage: str = "f32", keep_float: bool = False, device: str = "cpu"):
        self._dim = as_int(dim, "dim", 1)
        self._storage = as_choice(storage, "storage", MULTIVECTOR_STORAGES)
        self._keep_float = as_bool(keep_float, "keep_float")
        self._lock = RWLock()
        self._id_map = _core.IdMap()
        self._next_id = 0
        self._tokens = RowStore(self._token_fields())
        self._docs = RowStore(_DOC_FIELDS, fenced=("offsets",))
        self._attrs = AttributeStore()  # aligned with the documents
        self._mirror = mirror_for(_KIND, device)

    def _token_fields(self):
        fields = {"tokens": ((self._dim,), multivector_token_dtype(self._storage))}
        if self._storage == "int8":
            fields["scales"] = ((), np.dtype(np.float32))
        if self._keep_float:
            fields[_FLOAT_TOKENS] = ((self._dim,), np.dtype(np.float32))
        return fields

    # ------------------------------------------------------------------ properties

    dim = read_only("_dim", "Vector dimension.")
    storage = read_only("_storage", "How vectors are stored (a name of _storage).")
    keep_float = read_only("_keep_float", "Whether a float32 copy of the tokens is kept for exact re-ranking.")

    @property
    def ids(self) -> np.ndarray:
        """A copy of the stored document ids, in storage order."""
        with self._lock.read():
            return self._docs.view("ids").copy()

    @property
    def lengths(self) -> np.ndarray:
        """Token counts of the stored documents, in storage order."""
        with self._lock.read():
            return np.diff(self._docs.view("offsets"))

    @property
    def num_tokens(self) -> int:
        return self._tokens.count

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (tokens, scales, float copy, offsets, ids, attributes)."""
        return self._tokens.nbytes + self._docs.nbytes + self._attrs.nbytes

    @property
    def schema(self) -> dict:
        """The attribute fields and their types (``{"year": "int", ...}``; see docs/filters.md)."""
        with self._lock.read():
            return dict(self._attrs.schema)

    def __len__(self) -> int:
        return self._docs.count

    def _views(self) -> dict:
        """The stored arrays as views, the float copy included (hold the lock while using them)."""
        return {**self._tokens.views(), **self._docs.views()}

    def _scan_views(self) -> dict:
        """The arrays the storage's scan reads (the views without the float copy)."""
        views = self._views()
        views.pop(_FLOAT_TOKENS, None)
        return views

    def arrays(self) -> dict:
        """Copies of the stored arrays: ``tokens`` (n_tokens, dim) codes of the
        storage (see ``flatcoat._storage.multivector_token_dtype``), ``offsets``
        int64 (n_docs + 1,), ``ids`` int64 (n_docs,), and for int8 ``scales``
        float32 (n_tokens,). The float copy of ``keep_float`` is not among them
        (these are what a device copy uploads); :meth:`get` returns it."""
        with self._lock.read():
            return {name: a.copy() for name, a in self._scan_views().items()}

    def _source(self) -> IndexSource:
        return IndexSource(_KIND, self._dim, None, self._storage, self._scan_views)

    def __contains__(self, id_) -> bool:
        """True for an integer id that is present; any other object is not in the index."""
        return holds_id(self._id_map, self._lock, id_)

    def __repr__(self) -> str:
        kept = ", keep_float=True" if self._keep_float else ""
        return (f"MultiVectorIndex(dim={self._dim}, storage={self._storage!r}{kept}, count={len(self)}, "
                f"tokens={self.num_tokens})")

    # ------------------------------------------------------------------ building

    def _encode(self, x: np.ndarray) -> dict:
        rows = self._encode_codes(x)
        if self._keep_float:
            rows[_FLOAT_TOKENS] = x
        return rows

    def _encode_codes(self, x: np.ndarray) -> dict:
        if self._storage == "f32":
            return {"tokens": x}
        if self._storage == "f16":
            with np.errstate(over="ignore"):  # reported just below
                half = x.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError("docs: values exceed the float16 range (|x| > 65504); use storage='f32'")
            return {"tokens": half.view(np.uint16)}
        codes, scales = _quantize_int8(x)
        return {"tokens": codes, "scales": scales}

    def add(self, docs, ids=None, *, attributes=None) -> np.ndarray:
        """Adds documents; returns their int64 ids.

        ``docs``: a list of (n_i, dim) token arrays (a list is always a list of
        documents: for one document pass ``[tokens]``), a 3-d (n_docs,
        n_tokens, dim) array, or a tuple ``(tokens (total, dim), lengths
        (n_docs,))``. Every document needs at least one token. ``ids`` default
        to consecutive integers after the largest id so far; they must be
        distinct, non-negative and new, or the whole call fails and adds nothing.
        ``attributes``: per-document attributes for ``search(filter=)`` and
        :meth:`get`, as in :meth:`DenseIndex.add` (docs/filters.md).
        """
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        n = lengths.size
        rows = self._encode(tokens)
        with self._lock.write():
            ids = auto_ids(self._next_id, n) if ids is None else as_ids(ids, "ids", n)
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            self._append(ids, rows, lengths, attrs)
            return ids

    def _append(self, ids: np.ndarray, rows: dict, lengths: np.ndarray, attrs: AttributeStore) -> None:
        duplicate = self._id_map.insert_new(ids, len(self))
        if duplicate >= 0:
            raise ValueError(
                f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                "ids must be unique (upsert replaces a document by id)"
            )
        t0, d0 = self._tokens.count, self._docs.count
        try:
            self._tokens.append(rows)
            self._docs.append({"offsets": t0 + np.cumsum(lengths), "ids": ids})
            self._attrs.append(attrs)
        except BaseException:
            self._tokens.count, self._docs.count = t0, d0  # all or nothing
            self._attrs.truncate(d0)
            self._id_map.erase(ids)
            raise
        finally:
            self._invalidate_device()
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def upsert(self, docs, ids, *, attributes=None) -> np.ndarray:
        """Adds or replaces documents by id (new tokens and attributes replace the old ones); returns
        the ids. Every input is checked and encoded before anything changes."""
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        n = lengths.size
        ids = upsert_ids(ids, n)
        rows = self._encode(tokens)
        with self._lock.write():
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            positions = self._id_map.find(ids)
            if (positions >= 0).any():
                self._remove_positions(ids[positions >= 0], positions[positions >= 0])
            self._append(ids, rows, lengths, attrs)
            return ids

    def remove(self, ids) -> int:
        """Removes documents by id; every id must be present. Returns the number removed.

        The token array is compacted in place (documents keep their order), so
        the memory is reused at once; the cost is one pass over the tokens after
        the first removed document.
        """
        ids = removal_ids(ids)
        with self._lock.write():
            positions = held_positions(ids, self._id_map, "nothing was removed")
            if ids.size:
                self._remove_positions(ids, positions)
            return int(ids.size)

    def _remove_positions(self, ids: np.ndarray, positions: np.ndarray) -> None:
        first = int(positions.min())
        keep = np.ones(len(self) - first, dtype=bool)
        keep[positions - first] = False
        offsets = self._docs.view("offsets")
        lengths = np.diff(offsets[first:])
        t_first = int(offsets[first])
        kept_lengths = lengths[keep]
        kept_docs = np.concatenate([np.arange(first, dtype=np.int64), first + np.flatnonzero(keep)])
        attrs = self._attrs.take(kept_docs)  # before any change: a MemoryError leaves the index as it was
        self._tokens.keep_rows(t_first, np.repeat(keep, lengths))
        self._docs.keep_rows(first, keep)
        self._attrs = attrs
        self._docs.view("offsets")[first + 1 :] = t_first + np.cumsum(kept_lengths)
        self._id_map.erase(ids)
        moved = self._docs.view("ids")[first:]
        if moved.size:
            self._id_map.assign(np.ascontiguousarray(moved), np.arange(first, len(self), dtype=np.int64))
        self._invalidate_device()

    def matches(self, filter) -> np.ndarray:
        """The ids (int64, in storage order) that ``filter`` allows: a dict predicate over the
        attributes or an allow-list of ids, as ``search(filter=)`` takes it (docs/filters.md)."""
        with self._lock.read():
            return matching_ids(filter, self._attrs, self._id_map, self._docs.view("ids"))

    def get(self, ids, *, vectors: bool = True) -> Tuple[Optional[list], list]:
        """``(documents, attributes)`` of present ids (else a KeyError), in the order asked: one float32
        (n_tokens, dim) array per document (the float copy with ``keep_float``, else f16 widened, int8
        ``scale * (code - 128)``) and one dict of attributes per document; ``vectors=False`` returns
        ``(None, attributes)``."""
        with self._lock.read():
            _, positions = positions_of(ids, self._id_map)
            if not vectors:
                return None, self._attrs.rows(positions)
            offsets = self._docs.view("offsets")
            tokens = self._tokens.view(_FLOAT_TOKENS if self._keep_float else "tokens")
            docs = []
            for p in positions.tolist():  # one slice per asked document
                t = tokens[offsets[p] : offsets[p + 1]]
                if self._storage == "f16" and not self._keep_float:
                    t = t.view(np.float16).astype(np.float32)
                elif self._storage == "int8" and not self._keep_float:
                    scales = self._tokens.view("scales")[offsets[p] : offsets[p + 1]]
                    t = scales[:, None] * (t.astype(np.float32) - 128.0)
                docs.append(np.array(t, dtype=np.float32))
            return docs, self._attrs.rows(positions)

    # ------------------------------------------------------------------ searching

    def _resolve_subset(self, subset, nq: int) -> Tuple[np.ndarray, np.ndarray]:
        """Subset ids -> (positions int64, offsets int64 (nq + 1)); -1 entries (padding) are skipped."""
        subset = to_host(subset)
        if isinstance(subset, np.generic) or not isinstance(subset, (np.ndarray, list, tuple)):
            raise TypeError(f"subset: expected one list of document ids per query, got {type(subset).__name__}")
        if isinstance(subset, np.ndarray):
            if subset.ndim not in (1, 2):
                raise ValueError(f"subset: expected one id list per query (a list of 1-d arrays or a 2-d array), "
                                 f"got a {subset.ndim}-d array")
            flat = subset.ndim == 1
        else:
            subset = [to_host(c) for c in subset]
            flat = all(np.ndim(c) == 0 for c in subset) and (len(subset) > 0 or nq == 1)
        if flat and nq != 1:
            raise ValueError(f"subset: a flat list of ids restricts one query; for {nq} queries pass "
                             "one id list per query (a list of 1-d arrays or a 2-d array)")
        parts = [subset] if flat else list(subset)
        if len(parts) != nq:
            raise ValueError(f"subset: expected one id list per query ({nq}), got {len(parts)}")
        out = []
        for i, part in enumerate(parts):
            where = "subset" if flat else f"subset[{i}]"
            c = np.asarray(part)
            if c.ndim != 1:
                raise ValueError(f"{where}: expected a 1-d array of document ids, got shape {c.shape}")
            if c.size and not np.issubdtype(c.dtype, np.integer):
                raise TypeError(f"{where}: dtype {c.dtype} is not an integer type; pass int64 ids")
            if c.size and c.dtype == np.uint64 and c.max() > MAX_ID:  # would wrap to a negative id (or -1)
                raise ValueError(f"{where}: ids must fit in int64 (0 to 2**63 - 1)")
            c = c.astype(np.int64)
            out.append(c[c != -1])
        flat_ids = np.ascontiguousarray(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)
        positions = self._id_map.find(flat_ids)
        if (positions < 0).any():
            missing = flat_ids[positions < 0]
            shown = ", ".join(str(int(i)) for i in missing[:5])
            raise KeyError(f"subset: {missing.size} id(s) not in the index ({shown}); "
                           "restrict the search to ids the index holds (-1 entries are skipped)")
        return positions, _offsets_of(np.array([c.size for c in out], dtype=np.int64))

    def search(self, queries, k: int = 10, *, subset=None, query_weights=None,
               filter=None, rerank: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query by MaxSim: ``(scores, ids)``, float32 and int64 (q, k').

        ``k' = min(k, len(self))``. ``queries``: one (t, dim) query (q = 1), a
        list of queries (a list is always a list of queries), a 3-d (q, t, dim)
        array or a ``(tokens, lengths)`` tuple. Rows are best first, ties by
        smaller id; a row with fewer than ``k'`` scored documents (a subset) is
        padded with id -1 and score -inf.

        ``subset``: restricts each query to these document ids (a 1-d id array
        for one query; a list of 1-d arrays or a 2-d array, one row per query);
        -1 entries are skipped, so a first stage's padded output can be passed
        as is; repeated ids count once; an id not in the index is a KeyError.

        ``query_weights``: per-query-token weights (e.g. idf), see
        :func:`parse_query_weights`: ``sum_t w_t * max_j <q_t, d_j>``.

        ``filter``: a dict predicate over the attributes or a 1-d sequence of
        allowed ids (docs/filters.md); only matching documents are scored (with
        ``subset``, those in both).

        ``rerank=R`` (``R >= k``, needs ``keep_float=True``): the ``R`` best
        documents of the scan over the stored codes (with the same ``subset``,
        ``filter`` and weights) are scored again by exact float32 MaxSim over
        the float copy, and the best ``k`` of those are returned with their
        exact scores; ``R`` is bounded by the index size like ``k``.
        """
        k = as_k(k)
        rerank = as_rerank(rerank, k, self._keep_float)
        with self._lock.read():
            mirror = self._mirror
            if mirror is not None:  # device queries must not reach the host-side checks
                if filter is not None:
                    raise ValueError("filter: not supported on a GPU index yet; search a CPU index (index.to('cpu'))")
                if rerank is not None:
                    raise ValueError("rerank: not supported on a GPU index yet; search a CPU index (index.to('cpu'))")
                resolved = None if subset is None else self._resolve_subset(subset, _query_count(queries))
                return mirror.search(self._source(), queries, min(k, len(self)), subset=resolved,
                                     query_weights=query_weights)
            q, offsets = parse_queries(queries, self._dim)
            weights = parse_query_weights(query_weights, offsets)
            nq = offsets.size - 1
            positions = subset_offsets = None
            if subset is not None:
                positions, subset_offsets = self._resolve_subset(subset, nq)
            k = min(k, len(self))  # the output never outgrows the index
            bits = filter_bits(filter, self._attrs, self._id_map, len(self))
            if k == 0:
                return np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
            v = self._views()
            depth = k if rerank is None else min(rerank, len(self))
            scores, ids = _core.search_maxsim(
                self._storage, self._dim, v["tokens"], v["offsets"], v.get("scales"), v["ids"],
                q, offsets, weights, depth, positions, subset_offsets, filter=bits,
            )
            if rerank is None:
                return scores, ids
            # Exact MaxSim over the float copy, restricted to each query's candidates (padding dropped).
            found = ids >= 0
            candidates = self._id_map.find(np.ascontiguousarray(ids[found]))
            return _core.search_maxsim(
                "f32", self._dim, v[_FLOAT_TOKENS], v["offsets"], None, v["ids"],
                q, offsets, weights, k, candidates, _offsets_of(found.sum(axis=1).astype(np.int64)),
            )

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (see ``flatcoat.load``)."""
        with self._lock.read():
            meta = {
                "dim": self._dim, "storage": self._storage, "keep_float": self._keep_float, "count": len(self),
                "tokens": self.num_tokens, "next_id": self._next_id,
            }
            arrays = self._views()
            save_attributes(self._attrs, meta, arrays)
            save_index(os.fspath(path), _KIND, meta, arrays)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> "MultiVectorIndex":
        def need(ok: bool, file: str, reason: str):
            if not ok:
                raise IndexFormatError(f"{file}: {reason}")

        for key in ("dim", "storage", "count", "tokens", "next_id"):
            need(key in meta, "manifest.json", f"meta lacks {key!r}")
        dim, storage, count, n_tokens, next_id = (meta[k] for k in ("dim", "storage", "count", "tokens", "next_id"))
        for key, value in (("dim", dim), ("count", count), ("tokens", n_tokens), ("next_id", next_id)):
            need(isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= (1 if key == "dim" else 0),
                 "manifest.json", f"invalid {key} {value!r}")
        need(storage in MULTIVECTOR_STORAGES, "manifest.json", f"unknown storage {storage!r}")
        keep_float = meta.get("keep_float", False)  # absent in indexes saved before keep_float existed
        need(isinstance(keep_float, bool), "manifest.json", f"invalid keep_float {keep_float!r}")
        index = cls(dim, storage=storage, keep_float=keep_float)
        for name in (*index._token_fields(), *_DOC_FIELDS):
            need(name in arrays, f"{name}.npy", "missing from the manifest")
        try:
            tokens = RowStore.from_arrays(index._token_fields(), arrays, n_tokens)
            docs = RowStore.from_arrays(_DOC_FIELDS, arrays, count, fenced=("offsets",))
        except ValueError as exc:
            raise IndexFormatError(str(exc)) from None
        offsets = np.asarray(docs.view("offsets"))
        need(int(offsets[0]) == 0, "offsets.npy", "must start at 0")
        need(bool(np.all(np.diff(offsets) > 0)), "offsets.npy", "must be strictly increasing (no empty document)")
        need(int(offsets[-1]) == n_tokens, "offsets.npy", f"last offset {int(offsets[-1])} != {n_tokens} token rows")
        ids = np.ascontiguousarray(docs.view("ids"))
        need(count == 0 or int(ids.min()) >= 0, "ids.npy", "negative id")
        if storage == "int8":
            scales = np.asarray(tokens.view("scales"))
            need(bool(np.isfinite(scales).all()) and bool((scales > 0).all()), "scales.npy", "scales must be finite and positive")
        duplicate = index._id_map.insert_new(ids, 0)
        need(duplicate < 0, "ids.npy", f"id {int(ids[duplicate]) if duplicate >= 0 else 0} appears twice")
        index._tokens, index._docs = tokens, docs
        index._attrs = load_attributes(meta.get(ATTRIBUTES_META), arrays, count)
        index._next_id = max(next_id, int(ids.max()) + 1 if count else 0)
        return index


register_kind(_KIND, MultiVectorIndex._from_saved)
