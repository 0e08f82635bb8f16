"""DenseIndex: exhaustive single-vector search over f32, f16, int8 or binary storage."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._persist import IndexFormatError, register_kind, save_index
from ._storage import RowStore
from ._validate import RWLock, as_float_matrix, as_ids, as_k, normalize_rows

METRICS = ("ip", "cosine", "l2")
STORAGES = ("f32", "f16", "int8", "binary")
_ENCODE_CHUNK = 65536
_KIND = "dense"


def _code_layout(storage: str, dim: int) -> Tuple[Tuple[int, ...], np.dtype]:
    if storage == "f32":
        return (dim,), np.dtype(np.float32)
    if storage == "f16":
        return (dim,), np.dtype(np.uint16)
    if storage == "int8":
        return (dim,), np.dtype(np.uint8)
    return ((dim + 63) // 64,), np.dtype(np.uint64)


class DenseIndex:
    """Exact (f32, f16) or quantized (int8, binary) exhaustive search with fused top-k.

    Parameters
    ----------
    dim: vector dimension.
    metric: ``"ip"`` (inner product, higher is better), ``"cosine"`` (vectors and
        queries are L2-normalised, then inner product) or ``"l2"`` (squared
        Euclidean distance, smaller is better).
    storage: ``"f32"``; ``"f16"`` (half precision, float32 accumulation);
        ``"int8"`` (per-vector scalar quantization: 255 steps over each vector's
        own [min, max]; no training; queries stay float); ``"binary"`` (one
        sign bit per dimension, Hamming scan).
    keep_float: also keep a float32 copy of every vector (``dim * 4`` bytes per
        vector on top of the codes) so that ``search(..., rescore=R)`` can re-rank
        the ``R`` best candidates of an int8 or binary scan exactly.

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

    def __init__(self, dim: int, metric: str = "ip", storage: str = "f32", keep_float: bool = False,
                 device: str = "cpu"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        self._dim = int(dim)
        self._metric = metric
        self._storage = storage
        self._keep_float = bool(keep_float)
        self._lock = RWLock()
        self._ids = _core.IdMap()
        self._next_id = 0
        self._rows = RowStore(self._fields())
        self._mirror = None
        if device != "cpu":
            from . import cuda

            self._mirror = cuda.mirror_for(device)

    def _fields(self):
        fields = {"codes": _code_layout(self._storage, self._dim), "ids": ((), np.dtype(np.int64))}
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

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def keep_float(self) -> bool:
        return self._keep_float

    @property
    def device(self) -> str:
        """Where searches run: "cpu", or "cuda:N" for a copy resident in GPU memory."""
        return "cpu" if self._mirror is None else self._mirror.device

    def to(self, device: str) -> "DenseIndex":
        """Searches on ``device`` ("cpu", "cuda", "cuda:N") from now on; uploads now; returns self.

        The host arrays stay the index of record (saving, adding, removing); the
        device copy is refreshed on the first search after a change.
        """
        from . import cuda

        mirror = cuda.mirror_for(device, self._mirror)
        if mirror is not None:
            with self._lock.read():
                mirror.sync(self)
        self._mirror = mirror
        return self

    @property
    def ids(self) -> np.ndarray:
        """A copy of the stored ids, in storage order."""
        with self._lock.read():
            return self._rows.view("ids").copy()

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (codes, ids, norms, float copy)."""
        return self._rows.nbytes

    def __len__(self) -> int:
        return self._rows.count

    def __repr__(self) -> str:
        return (
            f"DenseIndex(dim={self._dim}, metric={self._metric!r}, storage={self._storage!r}, "
            f"keep_float={self._keep_float}, count={len(self)})"
        )

    # ------------------------------------------------------------------ building

    def _invalidate_device(self) -> None:
        if self._mirror is not None:
            self._mirror.invalidate()

    def _prepare(self, vectors, name: str) -> np.ndarray:
        x = as_float_matrix(vectors, name, self._dim)
        if self._metric == "cosine":
            x = normalize_rows(x, name)
        return x

    def _encode(self, x: np.ndarray) -> dict:
        rows = {}
        if self._storage == "f32":
            codes, decoded = x, x
        elif self._storage == "f16":
            with np.errstate(over="ignore"):  # reported just below
                half = x.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError("vectors: values exceed the float16 range (|x| > 65504); use storage='f32'")
            codes, decoded = half.view(np.uint16), half.astype(np.float32)
        elif self._storage == "int8":
            # 255 equal steps over each vector's own [min, max], decoded at step
            # centres: x ~ offset + scale * code with offset = min + scale / 2.
            # Per-vector ranges measured better than per-dimension ones
            # (bench/int8_scale.py) and need no training.
            low = x.min(axis=1, keepdims=True)
            high = x.max(axis=1, keepdims=True)
            scale = np.maximum(high - low, np.float32(1e-30)) / np.float32(255.0)
            offset = low + np.float32(0.5) * scale
            steps = (x - offset) / scale
            steps += np.float32(0.5)
            codes = np.clip(np.floor(steps, out=steps), 0, 255, out=steps).astype(np.uint8)
            rows["scale"] = scale[:, 0]
            rows["offset"] = offset[:, 0]
            decoded = offset + scale * codes.astype(np.float32)
        else:
            codes, decoded = _core.binarize(x), None
        rows["codes"] = codes
        if "sq_norms" in self._rows.fields:
            rows["sq_norms"] = np.einsum("ij,ij->i", decoded, decoded, dtype=np.float64).astype(np.float32)
        if self._keep_float:
            rows["float_rows"] = x
            if self._metric == "l2":
                rows["float_sq_norms"] = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
        return rows

    def add(self, vectors, ids=None) -> np.ndarray:
        """Adds vectors (n, dim) (float16/32/64); returns their int64 ids.

        ``ids`` default to consecutive integers after the largest id so far.
        Ids must be distinct, non-negative and new; the whole call fails (and
        adds nothing) otherwise.
        """
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        with self._lock.write():
            if ids is None:
                ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
            else:
                ids = as_ids(ids, "ids", n)
            if n == 0:
                return ids
            duplicate = self._ids.insert_new(ids, len(self))
            if duplicate >= 0:
                raise ValueError(
                    f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                    "ids must be unique (remove the old vector first to replace it)"
                )
            count_before = len(self)
            try:
                # In chunks: the encoders' float temporaries stay small whatever n is.
                for start in range(0, n, _ENCODE_CHUNK):
                    rows = self._encode(x[start : start + _ENCODE_CHUNK])
                    rows["ids"] = ids[start : start + _ENCODE_CHUNK]
                    self._rows.append(rows)
            except BaseException:
                self._rows.count = count_before  # all or nothing
                self._ids.erase(ids)
                raise
            finally:
                self._invalidate_device()
            self._next_id = max(self._next_id, int(ids.max()) + 1)
            return ids

    def remove(self, ids) -> int:
        """Removes vectors by id; every id must be present. Returns the number removed.

        Freed rows are reused at once: the last rows move into the holes.
        """
        ids = np.unique(as_ids(np.atleast_1d(np.asarray(ids)), "ids", np.atleast_1d(np.asarray(ids)).shape[0]))
        with self._lock.write():
            positions = self._ids.find(ids)
            unknown = ids[positions < 0]
            if unknown.size:
                shown = ", ".join(str(int(i)) for i in unknown[:5])
                raise KeyError(f"ids: {unknown.size} id(s) not in the index ({shown}); nothing was removed")
            moved_from, moved_to = self._rows.remove_positions(positions)
            self._ids.erase(ids)
            if moved_to.size:
                self._ids.assign(np.ascontiguousarray(self._rows.view("ids")[moved_to]), moved_to.astype(np.int64))
            self._invalidate_device()
            return int(ids.size)

    def __contains__(self, id_) -> bool:
        return bool(self._ids.find(np.array([id_], dtype=np.int64))[0] >= 0)

    # ------------------------------------------------------------------ searching

    def search(self, queries, k: int = 10, rescore: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Returns the ``k`` best matches of each query: ``(scores, ids)``, both (q, k).

        ``queries`` is (q, dim) or one (dim,) vector (treated as q = 1). Scores are
        float32: inner products for ``ip``/``cosine``, squared distances for
        ``l2``; for ``binary`` without rescoring, ``dim - 2 * hamming`` (``ip``,
        ``cosine``) or the Hamming distance (``l2``). Rows are sorted best first,
        ties by smaller id; fewer than ``k`` results are padded with id -1 and
        score -inf (+inf for l2). ``rescore=R`` (``R >= k``) re-ranks the ``R``
        best candidates of the scan exactly against the float copy
        (``keep_float=True``).
        """
        k = as_k(k)
        if rescore is not None:
            rescore = as_k(rescore)
            if rescore < k:
                raise ValueError(f"rescore: must be at least k ({k}), got {rescore}")
            if not self._keep_float:
                raise ValueError("rescore: this index keeps no float copy; build it with keep_float=True")
        if self._mirror is not None:  # CuPy queries must not reach the host-side checks
            with self._lock.read():
                return self._mirror.search(self, queries, k, rescore)
        q = self._prepare(queries, "queries")
        kernel_metric = "l2" if self._metric == "l2" else "ip"
        with self._lock.read():
            v = self._rows.views()
            return _core.search_dense(
                self._storage, kernel_metric, self._dim, v["codes"], v["ids"], v.get("sq_norms"),
                v.get("scale"), v.get("offset"), v.get("float_rows"), v.get("float_sq_norms"), q, k, rescore or 0,
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
            save_index(os.fspath(path), _KIND, meta, arrays)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> "DenseIndex":
        count, next_id = meta["count"], meta["next_id"]
        if not isinstance(count, int) or count < 0 or not isinstance(next_id, int) or next_id < 0:
            raise IndexFormatError(f"manifest: invalid count {count!r} or next_id {next_id!r}")
        index = cls(meta["dim"], meta["metric"], meta["storage"], bool(meta["keep_float"]))
        missing = sorted(set(index._fields()) - set(arrays))
        if missing:
            raise IndexFormatError(f"{missing[0]}.npy: missing from the manifest of a {index._storage} index")
        index._rows = RowStore.from_arrays(index._fields(), arrays, count)
        ids = np.ascontiguousarray(index._rows.view("ids"))
        if count and int(ids.min()) < 0:
            raise IndexFormatError("ids.npy: negative id")
        duplicate = index._ids.insert_new(ids, 0)
        if duplicate >= 0:
            raise IndexFormatError(f"ids.npy: id {int(ids[duplicate])} appears twice")
        index._next_id = max(next_id, int(ids.max()) + 1 if count else 0)
        return index


register_kind(_KIND, DenseIndex._from_saved)
