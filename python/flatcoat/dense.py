"""DenseIndex: exhaustive single-vector search over f32, f16, int8 or binary storage."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._device import IndexSource, Mirrored, mirror_for
from ._persist import IndexFormatError, register_kind, save_index
from ._records import (
    ATTRIBUTES_META, filter_bits, held_positions, load_attributes, matching_ids, parse_attributes,
    positions_of, removal_ids, save_attributes, upsert_ids,
)
from ._attributes import AttributeStore
from ._storage import DENSE_STORAGES, METRICS, RowStore, dense_code_layout
from ._validate import (
    RWLock, as_bool, as_choice, as_float_matrix, as_ids, as_int, as_k, as_rerank, auto_ids, holds_id,
    normalize_rows, read_only,
)

_KIND = "dense"


# The int8 scan sums u8 x s8 products in int32: 65536 * 255 * 127 < 2**31.
INT8_MAX_DIM = 65536


def from_bfloat16(codes: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bits (exact: the bits become a float32's high half)."""
    return (np.asarray(codes, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode_rows(storage: str, x: np.ndarray, sq_norms: bool = False, *, normalize: bool = False,
                name: str = "vectors") -> dict:
    """Encodes float32 rows (n, dim) for ``storage`` into new arrays (see :func:`encode_into`).

    Returns ``codes`` in the layout of ``_storage.dense_code_layout``; for
    int8 also ``scale`` and ``offset`` (n,); with ``sq_norms`` the squared
    norms (n,) of the decoded rows (l2 ranking; not for binary).
    """
    n, dim = x.shape
    shape, dtype = dense_code_layout(storage, dim)
    rows = {"codes": np.empty((n,) + shape, dtype=dtype)}
    if storage == "int8":
        rows["scale"] = np.empty(n, dtype=np.float32)
        rows["offset"] = np.empty(n, dtype=np.float32)
    if sq_norms and storage != "binary":
        rows["sq_norms"] = np.empty(n, dtype=np.float32)
    encode_into(storage, x, rows, normalize=normalize, name=name)
    return rows


def encode_into(storage: str, x: np.ndarray, out: dict, *, normalize: bool = False, name: str = "vectors") -> None:
    """The one encoder of the exhaustive codecs: writes the encoding of float32 rows ``x`` (n, dim)
    into the arrays of ``out`` (n rows each, e.g. a RowStore's reserved rows), in the core's threads.

    ``out``: ``codes`` (``_storage.dense_code_layout``); for int8 ``scale`` and
    ``offset``; optionally ``sq_norms`` (of the decoded rows), ``float_rows``
    and ``float_sq_norms``. ``normalize`` L2-normalises each row first
    (cosine). Codecs: f16 and bf16 round to nearest even; int8 takes 255 steps over
    each vector's own [min, max], decoded at step centres (x ~ offset + scale
    * code, offset = min + scale / 2; per-vector ranges measured better than
    per-dimension ones, bench/int8_scale.py, and need no training); binary
    keeps sign bits. NaN or inf, a zero row under ``normalize`` and f16
    overflow are a ValueError naming ``name`` and the first bad row.
    """
    try:
        _core.encode_dense(storage, x, out["codes"], scale=out.get("scale"), offset=out.get("offset"),
                           sq_norms=out.get("sq_norms"), float_rows=out.get("float_rows"),
                           float_sq_norms=out.get("float_sq_norms"), normalize=normalize)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def decode_rows(storage: str, dim: int, views: dict, positions: np.ndarray) -> np.ndarray:
    """float32 (len(positions), dim) vectors decoded from the codes of ``storage`` at ``positions``
    (binary: +-1 per sign bit). Shared by the exhaustive and the partitioned indexes."""
    codes = views["codes"][positions]
    if storage == "f32":
        return np.array(codes, dtype=np.float32)
    if storage == "f16":
        return codes.view(np.float16).astype(np.float32)
    if storage == "bf16":
        return from_bfloat16(codes)
    if storage == "int8":
        return views["offset"][positions, None] + views["scale"][positions, None] * codes.astype(np.float32)
    bits = np.unpackbits(codes.view(np.uint8), axis=1, bitorder="little")[:, :dim]
    return np.where(bits > 0, np.float32(1.0), np.float32(-1.0))


class DenseIndex(Mirrored):
    """Exact (f32, f16) or quantized (int8, binary) exhaustive search with fused top-k.

    Parameters
    ----------
    dim: vector dimension.
    metric: ``"ip"`` (inner product, higher is better), ``"cosine"`` (vectors and
        queries are L2-normalised, then inner product) or ``"l2"`` (squared
        Euclidean distance, smaller is better).
    storage: ``"f32"``; ``"f16"`` (half precision, float32 accumulation);
        ``"bf16"`` (bfloat16: float32's range with 8 significant bits, half the
        bytes, float32 accumulation);
        ``"int8"`` (per-vector scalar quantization: 255 steps over each vector's
        own [min, max]; no training; queries stay float); ``"binary"`` (one
        sign bit per dimension, Hamming scan).
    keep_float: also keep a float32 copy of every vector (``dim * 4`` bytes per
        vector on top of the codes) so that ``search(..., rerank=R)`` can re-rank
        the ``R`` best candidates of an int8 or binary scan exactly.
    device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (searches on a GPU copy; see :meth:`to`).

    Everything after ``dim`` is keyword-only. Nested lists passed to ``add``
    or ``search`` are read as one (n, dim) matrix (a list of rows).
    Searches may run from many threads at once; ``add`` and ``remove`` wait for
    running searches and block new ones while they change the index.

    >>> import numpy as np, flatcoat
    >>> index = flatcoat.DenseIndex(4, metric="ip")
    >>> index.add(np.eye(4, dtype=np.float32), ids=[10, 11, 12, 13]).tolist()
    [10, 11, 12, 13]
    >>> scores, ids = index.search(np.array([0, 1, 0.5, 0], dtype=np.float32), k=2)
    >>> ids.tolist(), scores.tolist()
    ([[11, 12]], [[1.0, 0.5]])
    """

    _KIND = _KIND  # for Mirrored

    def __init__(self, dim: int, *, metric: str = "ip", storage: str = "f32", keep_float: bool = False,
                 device: str = "cpu"):
        self._dim = as_int(dim, "dim", 1)
        self._metric = as_choice(metric, "metric", METRICS)
        self._storage = as_choice(storage, "storage", DENSE_STORAGES)
        if self._storage == "int8" and self._dim > INT8_MAX_DIM:
            raise ValueError(f"dim: int8 storage takes at most {INT8_MAX_DIM} dimensions (its exact int32 sums "
                             f"would overflow), got {self._dim}; use storage='f16' or 'f32'")
        self._keep_float = as_bool(keep_float, "keep_float")
        self._lock = RWLock()
        self._ids = _core.IdMap()
        self._next_id = 0
        self._rows = RowStore(self._fields())
        self._attrs = AttributeStore()  # aligned with the rows
        self._mirror = mirror_for(_KIND, device)

    def _fields(self):
        fields = {"codes": dense_code_layout(self._storage, self._dim), "ids": ((), np.dtype(np.int64))}
        if self._storage == "int8":
            fields["scale"] = ((), np.dtype(np.float32))
            fields["offset"] = ((), np.dtype(np.float32))
        if self._metric == "l2" and self._storage != "binary":
            fields["sq_norms"] = ((), np.dtype(np.float32))
        if self._keep_float:
            fields["float_rows"] = ((self._dim,), np.dtype(np.float32))
            if self._metric == "l2":
                fields["float_sq_norms"] = ((), np.dtype(np.float32))
        return fields

    # ------------------------------------------------------------------ properties

    dim = read_only("_dim", "Vector dimension.")
    metric = read_only("_metric", '"ip", "cosine" or "l2".')
    storage = read_only("_storage", "How vectors are stored (a name of _storage).")
    keep_float = read_only("_keep_float", "Whether a float32 copy is kept for exact re-ranking.")
    def arrays(self) -> dict:
        """Copies of the stored arrays: ``codes`` (n, ...) in the layout of
        ``flatcoat._storage.dense_code_layout``, ``ids`` int64 (n,), and where
        the storage and metric have them ``scale``, ``offset`` (int8),
        ``sq_norms`` (l2), ``float_rows``, ``float_sq_norms`` (keep_float)."""
        with self._lock.read():
            return {name: a.copy() for name, a in self._rows.views().items()}

    def _source(self) -> IndexSource:
        return IndexSource(_KIND, self._dim, self._metric, self._storage, self._rows.views)

    @property
    def ids(self) -> np.ndarray:
        """A copy of the stored ids, in storage order."""
        with self._lock.read():
            return self._rows.view("ids").copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (codes, ids, norms, float copy, attributes)."""
        return self._rows.nbytes + self._attrs.nbytes

    @property
    def schema(self) -> dict:
        """The attribute fields and their types (``{"year": "int", ...}``; see docs/filters.md)."""
        with self._lock.read():
            return dict(self._attrs.schema)

    def __len__(self) -> int:
        return self._rows.count

    def __repr__(self) -> str:
        return (
            f"DenseIndex(dim={self._dim}, metric={self._metric!r}, storage={self._storage!r}, "
            f"keep_float={self._keep_float}, count={len(self)})"
        )

    # ------------------------------------------------------------------ building

    def _prepare(self, vectors, name: str) -> np.ndarray:
        x = as_float_matrix(vectors, name, self._dim)
        if self._metric == "cosine":
            x = normalize_rows(x, name)
        return x

    def _encoded_fields(self) -> list:
        return [name for name in self._rows.fields if name != "ids"]

    def _encode(self, x: np.ndarray) -> dict:
        """The stored fields of rows ``x`` (as given: normalised here for cosine), in new arrays."""
        rows = {name: np.empty((x.shape[0],) + shape, dtype=dtype)
                for name, (shape, dtype) in self._rows.fields.items() if name != "ids"}
        encode_into(self._storage, x, rows, normalize=self._metric == "cosine")
        return rows

    def _append(self, ids: np.ndarray, attrs: AttributeStore, *, x: Optional[np.ndarray] = None,
                rows: Optional[dict] = None) -> None:
        """Appends vectors ``x``, encoded straight into the stored arrays, or rows already
        encoded by _encode (write lock held; ids already checked new), all or nothing."""
        duplicate = self._ids.insert_new(ids, len(self))
        if duplicate >= 0:
            raise ValueError(
                f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                "ids must be unique (upsert replaces a vector by id)"
            )
        count_before = len(self)
        try:
            new = self._rows.reserve(ids.shape[0])
            if rows is None:
                encode_into(self._storage, x, new, normalize=self._metric == "cosine")
            else:
                for name in self._encoded_fields():
                    new[name][...] = rows[name]
            new["ids"][...] = ids
            self._rows.count = count_before + ids.shape[0]
            self._attrs.append(attrs)
        except BaseException:
            self._rows.count = count_before
            self._attrs.truncate(count_before)
            self._ids.erase(ids)
            raise
        finally:
            self._invalidate_device()
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def add(self, vectors, ids=None, *, attributes=None) -> np.ndarray:
        """Adds vectors (n, dim) (float16/32/64); returns their int64 ids.

        ``ids`` default to consecutive integers after the largest id so far.
        Ids must be distinct, non-negative and new; the whole call fails (and
        adds nothing) otherwise. ``attributes``: a list of n dicts or a dict of
        columns (field -> n values; None is a missing value), typed int, float,
        bool, keyword (str) or keywords (list of str), for ``search(filter=)``
        and :meth:`get` (docs/filters.md).
        """
        # NaN/inf are found by the encoder as it reads (no extra pass), cosine normalised there.
        x = as_float_matrix(vectors, "vectors", self._dim, finite=False)
        n = x.shape[0]
        with self._lock.write():
            ids = auto_ids(self._next_id, n) if ids is None else as_ids(ids, "ids", n)
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            self._append(ids, attrs, x=x)
            return ids

    def upsert(self, vectors, ids, *, attributes=None) -> np.ndarray:
        """Adds or replaces vectors by id: an id already present gets the new vector and the new
        attributes (the old ones are dropped, not merged); a new id is added. Returns the ids.

        Every input is checked and encoded before anything changes.
        """
        x = as_float_matrix(vectors, "vectors", self._dim, finite=False)
        n = x.shape[0]
        ids = upsert_ids(ids, n)
        with self._lock.write():
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            rows = self._encode(x)  # before anything changes
            positions = self._ids.find(ids)
            present = ids[positions >= 0]
            if present.size:
                self._remove_positions(present, positions[positions >= 0])
            self._append(ids, attrs, rows=rows)
            return ids

    def _remove_positions(self, ids: np.ndarray, positions: np.ndarray) -> None:
        moved_from, moved_to = self._rows.remove_positions(positions)
        self._attrs.move(moved_from, moved_to)
        self._attrs.truncate(len(self))
        self._ids.erase(ids)
        if moved_to.size:
            self._ids.assign(np.ascontiguousarray(self._rows.view("ids")[moved_to]), moved_to.astype(np.int64))
        self._invalidate_device()

    def remove(self, ids) -> int:
        """Removes vectors by id; every id must be present. Returns the number removed.

        Freed rows are reused at once: the last rows move into the holes.
        """
        ids = removal_ids(ids)
        with self._lock.write():
            positions = held_positions(ids, self._ids, "nothing was removed")
            if ids.size:
                self._remove_positions(ids, positions)
            return int(ids.size)

    def matches(self, filter) -> np.ndarray:
        """The ids (int64, in storage order) that ``filter`` allows: a dict predicate over the
        attributes or an allow-list of ids, as ``search(filter=)`` takes it (docs/filters.md)."""
        with self._lock.read():
            return matching_ids(filter, self._attrs, self._ids, self._rows.view("ids"))

    def get(self, ids, *, vectors: bool = True) -> Tuple[Optional[np.ndarray], list]:
        """``(vectors, attributes)`` of present ids (else a KeyError): float32 (n, dim), in the order asked.

        Vectors are the float copy with ``keep_float``, else decoded from the
        codes (f16 widened; int8 ``offset + scale * code``; binary ``+-1`` per
        sign bit: the magnitudes are not stored). Cosine indexes hold
        normalised vectors. ``attributes``: one dict per id (the present fields).
        ``vectors=False`` returns ``(None, attributes)``.
        """
        with self._lock.read():
            _, positions = positions_of(ids, self._ids)
            v = self._rows.views()
            out = None
            if vectors and self._keep_float:
                out = np.array(v["float_rows"][positions], dtype=np.float32)
            elif vectors:
                out = decode_rows(self._storage, self._dim, v, positions)
            return out, self._attrs.rows(positions)

    def __contains__(self, id_) -> bool:
        """True for an integer id that is present; any other object is not in the index."""
        return holds_id(self._ids, self._lock, id_)

    # ------------------------------------------------------------------ searching

    def search(self, queries, k: int = 10, *, rerank: Optional[int] = None,
               filter=None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best matches of each query: ``(scores, ids)``, float32 and int64 (q, k').

        ``k' = min(k, len(self))``. ``queries`` is (q, dim), nested lists read
        as one such matrix, or one (dim,) vector (q = 1). Scores are float32:
        inner products for ``ip``/``cosine``, squared distances for ``l2``; for
        ``binary`` without re-ranking, ``dim - 2 * hamming`` (``ip``,
        ``cosine``) or the Hamming distance (``l2``). Rows are sorted best
        first, ties by smaller id.

        ``rerank=R`` (``R >= k``) re-ranks the ``R`` best candidates of the scan
        exactly against the float copy (``keep_float=True``); ``R`` is bounded
        by the index size like ``k``.

        ``filter``: only vectors that match are ranked: a dict predicate over
        the attributes (``{"year": {"$gte": 2020}}``, docs/filters.md) or a 1-d
        sequence of allowed ids (ids not in the index match nothing). The
        result is exactly the search of an index holding only the matches; a
        row with fewer matches than ``k'`` is padded with id -1.
        """
        k = as_k(k)
        rerank = as_rerank(rerank, k, self._keep_float)
        with self._lock.read():
            n = len(self)  # the output and the re-ranking never outgrow the index
            k, rerank = min(k, n), None if rerank is None else min(rerank, n)
            mirror = self._mirror
            if mirror is not None:  # device queries must not reach the host-side checks
                if filter is not None:
                    raise ValueError("filter: not supported on a GPU index yet; search a CPU index (index.to('cpu'))")
                return mirror.search(self._source(), queries, k, rerank=rerank)
            q = self._prepare(queries, "queries")
            bits = filter_bits(filter, self._attrs, self._ids, n)
            if k == 0:
                return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
            v = self._rows.views()
            return _core.search_dense(
                self._storage, "l2" if self._metric == "l2" else "ip", self._dim, v["codes"], v["ids"],
                v.get("sq_norms"), v.get("scale"), v.get("offset"), v.get("float_rows"), v.get("float_sq_norms"),
                q, k, rerank or 0, filter=bits,
            )

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (see ``flatcoat.load``)."""
        with self._lock.read():
            arrays = dict(self._rows.views())
            meta = {
                "dim": self._dim, "metric": self._metric, "storage": self._storage,
                "keep_float": self._keep_float, "count": len(self), "next_id": self._next_id,
            }
            save_attributes(self._attrs, meta, arrays)
            save_index(os.fspath(path), _KIND, meta, arrays)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> "DenseIndex":
        count, next_id = meta["count"], meta["next_id"]
        if not isinstance(count, int) or count < 0 or not isinstance(next_id, int) or next_id < 0:
            raise IndexFormatError(f"manifest: invalid count {count!r} or next_id {next_id!r}")
        try:
            index = cls(meta["dim"], metric=meta["metric"], storage=meta["storage"], keep_float=meta["keep_float"])
        except (TypeError, ValueError) as e:  # a manifest no index could have written
            raise IndexFormatError(f"manifest: {e}") from e
        missing = sorted(set(index._fields()) - set(arrays))
        if missing:
            raise IndexFormatError(f"{missing[0]}.npy: missing from the manifest of a {index._storage} index")
        index._rows = RowStore.from_arrays(index._fields(), arrays, count)
        index._attrs = load_attributes(meta.get(ATTRIBUTES_META), arrays, count)
        ids = np.ascontiguousarray(index._rows.view("ids"))
        if count and int(ids.min()) < 0:
            raise IndexFormatError("ids.npy: negative id")
        duplicate = index._ids.insert_new(ids, 0)
        if duplicate >= 0:
            raise IndexFormatError(f"ids.npy: id {int(ids[duplicate])} appears twice")
        index._next_id = max(next_id, int(ids.max()) + 1 if count else 0)
        return index


register_kind(_KIND, DenseIndex._from_saved)
