"""IVFIndex: a partitioned (inverted-file) dense index with 4-bit PQ fast-scan codes.

The vectors are split into ``nlist`` lists by a coarse quantizer (k-means
centroids, trained in the core); a search scores the queries against the
centroids, scans only the ``nprobe`` best lists of each query, and can
re-rank the best ``rerank`` candidates exactly against a float copy, which
may stay memory-mapped on disk. See ``docs/ivf.md``.

Layout (CSR over lists, in "slots"): ``list_offsets`` int64 (nlist + 1), list
``l`` owning slots ``[list_offsets[l], list_offsets[l + 1])``; ``slot_ids``
int64 per slot, -1 for padding and removed entries (the scan skips them).

* ``pq4``: 4-bit product quantization of the residual ``x - centroid``: ``m``
  sub-quantizers of ``dim / m`` dimensions with 16 codewords each
  (``codebooks`` float32 (m, 16, dim / m)); lists are padded to multiples of
  32 slots and ``codes`` is uint8 (total_slots / 32, 16 * m), one block of 32
  vectors in the core's fast-scan layout (``_core.pq4_pack``).
* ``f32``, ``f16``, ``int8``, ``binary``: one row per slot in the layout of
  ``_storage.dense_code_layout`` (no residual, no padding), with ``scale`` and
  ``offset`` per slot for int8 and ``sq_norms`` per slot for l2 (not binary).

With ``keep_float=True`` the exact vectors are kept as ``float_rows``
float32 (n_rows, dim) in insertion order, ``slot_rows`` int64 per slot giving
each slot's row (-1 for padding), and for l2 ``float_sq_norms`` per row.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._persist import IndexFormatError, register_kind, save_index
from ._storage import IVF_STORAGES, METRICS, RowStore, dense_code_layout
from ._attributes import AttributeStore
from ._records import (
    ATTRIBUTES_META, filter_bits, held_positions, load_attributes, matching_ids, parse_attributes,
    positions_of, removal_ids, save_attributes, upsert_ids,
)
from .dense import decode_rows, encode_into, encode_rows
from ._validate import (
    RWLock, as_bool, as_choice, as_float_matrix, as_ids, as_int, as_k, as_rerank, auto_ids, holds_id,
    normalize_rows, read_only,
)

__all__ = ["IVFIndex", "default_nlist", "default_m", "DEFAULT_NPROBE", "MIN_TRAIN"]

_KIND = "ivf"
_INT64 = np.dtype(np.int64)
_F32 = np.dtype(np.float32)
#: ``nprobe=None`` probes ``min(nlist, DEFAULT_NPROBE)`` lists.
DEFAULT_NPROBE = 32
#: The first ``add`` of an untrained index trains on its own vectors if it has at least
#: ``max(nlist or 1, MIN_TRAIN)`` of them.
MIN_TRAIN = 256
#: pq4 lists are padded to a multiple of this many slots (one fast-scan block).
BLOCK = 32
_SEED = 0
_KMEANS_ITERATIONS = 10
#: The coarse k-means trains on at most this many sampled vectors per centroid. Training costs
#: about 2 * dim * nlist * iterations flops per sampled vector; FAISS's 256 would sample 570k of
#: 1.24M vectors for 2229 lists and take minutes, while 64 (143k) trains in about 15 s and lost
#: under 0.01 of recall@10 in the measurements of docs/ivf.md.
TRAIN_POINTS_PER_CENTROID = 64
#: At most this many residuals go to pq_train, which samples 16 x 256 of them itself (k-means' cap
#: of 256 points per centroid): a few times that, so the temporaries stay small.
_PQ_TRAIN_SAMPLE = 16384
#: Vectors assigned and encoded at a time: the float temporaries (residuals) stay near 24 MiB at 384-d.
_ENCODE_CHUNK = 16384
#: Removed entries are compacted away when they exceed this fraction of the slots.
_COMPACT_FRACTION = 0.25


def default_nlist(n: int) -> int:
    """``nlist`` chosen for ``n`` training vectors: ``max(1, min(round(2 * sqrt(n)), n // 39))``.

    About 2 sqrt(n) lists (ScaNN's choice; FAISS's rule of thumb is 4 sqrt(n)),
    with at least 39 training vectors per centroid. Fewer, longer lists halve
    the coarse step (every query reads all nlist centroids), which dominates a
    single query at a million vectors, for the same recall at a given number
    of scanned vectors (docs/ivf.md).

    >>> default_nlist(1_000_000), default_nlist(1000), default_nlist(10)
    (2000, 25, 1)
    """
    return max(1, min(int(round(2 * math.sqrt(n))), n // 39))


def default_m(dim: int) -> int:
    """pq4 sub-quantizers for ``dim``: ``dim / 2`` when even (2 dimensions each), else the
    largest divisor of ``dim`` that is at most ``dim / 2`` (1 for a prime ``dim``).

    >>> default_m(384), default_m(15), default_m(7)
    (192, 5, 1)
    """
    if dim % 2 == 0:
        return dim // 2
    return max([d for d in range(1, dim // 2 + 1) if dim % d == 0] or [1])


def _threshold(value, metric: str, storage: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"anisotropic_threshold: expected a number or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"anisotropic_threshold: must be a positive finite number (e.g. 0.2), got {value!r}")
    if storage != "pq4":
        raise ValueError(f"anisotropic_threshold: only for storage='pq4', got storage={storage!r}")
    if metric == "l2":
        raise ValueError("anisotropic_threshold: anisotropic quantization is for metric='ip' or 'cosine', not 'l2'")
    return value


def _device(device) -> str:
    if not isinstance(device, str):
        raise TypeError(f"device: expected 'cpu', got {type(device).__name__} {device!r}")
    if device != "cpu":
        raise ValueError(f"device: IVFIndex runs on the CPU only for now, got {device!r}; use device='cpu'")
    return device


class IVFIndex:
    """A partitioned dense index: k-means lists, 4-bit PQ fast-scan (or exhaustive codecs) per list.

    Parameters
    ----------
    dim: vector dimension.
    metric: ``"ip"``, ``"cosine"`` (vectors and queries are L2-normalised,
        then inner product) or ``"l2"`` (squared Euclidean distance, smaller
        is better). ip and cosine train spherical k-means (normalised
        centroids, assignment by largest inner product).
    storage: ``"pq4"`` (4-bit product quantization of the residual against
        the list centroid, scanned with in-register lookup tables); or one of
        the exhaustive codecs ``"f32"``, ``"f16"``, ``"int8"``, ``"binary"``
        as list storage (as in :class:`flatcoat.DenseIndex`, no residual).
    nlist: number of lists; ``None`` chooses :func:`default_nlist` of the
        training set size when the index is trained.
    keep_float: keep a float32 copy of every vector (4 * dim bytes each; it
        may stay memory-mapped after ``flatcoat.load``) for ``rerank=``.
    m: pq4 sub-quantizers (must divide ``dim``; default :func:`default_m`,
        two dimensions each, ``m / 2`` bytes per vector).
    anisotropic_threshold: ``T`` switches on ScaNN's anisotropic quantization
        loss for pq4 under ip/cosine (``None``: plain PQ, the default).
    device: ``"cpu"`` only for now.

    Training: :meth:`train` explicitly, or the first :meth:`add` trains on its
    own vectors when it has at least ``max(nlist or 1, 256)`` of them (else a
    ValueError asks for :meth:`train` with more). After training, ``add``
    assigns vectors to the nearest centroid.

    >>> import numpy as np, flatcoat
    >>> x = np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32)
    >>> index = flatcoat.IVFIndex(16, metric="cosine", nlist=8)   # the first add of >= 256 trains
    >>> index.add(x)[:3].tolist()
    [0, 1, 2]
    >>> scores, ids = index.search(x[:2], k=3, nprobe=8, rerank=50)  # every list, exact re-ranking
    >>> ids[:, 0].tolist(), scores[:, 0].round(4).tolist()
    ([0, 1], [1.0, 1.0])
    """

    def __init__(self, dim: int, *, metric: str = "ip", storage: str = "pq4", nlist: Optional[int] = None,
                 keep_float: bool = True, m: Optional[int] = None, anisotropic_threshold: Optional[float] = None,
                 device: str = "cpu"):
        self._dim = as_int(dim, "dim", 1)
        self._metric = as_choice(metric, "metric", METRICS)
        self._storage = as_choice(storage, "storage", IVF_STORAGES)
        self._nlist = None if nlist is None else as_int(nlist, "nlist", 1)
        self._keep_float = as_bool(keep_float, "keep_float")
        if m is not None:
            if self._storage != "pq4":
                raise ValueError(f"m: sub-quantizers are only for storage='pq4', got storage={self._storage!r}")
            m = as_int(m, "m", 1, self._dim)
            if self._dim % m:
                raise ValueError(f"m: must divide dim ({self._dim}), got {m}; e.g. m={default_m(self._dim)}")
        elif self._storage == "pq4":
            m = default_m(self._dim)
        self._m = m
        self._threshold = _threshold(anisotropic_threshold, self._metric, self._storage)
        self._device = _device(device)
        self._lock = RWLock()
        self._ids = _core.IdMap()  # id -> slot
        self._next_id = 0
        self._count = 0
        self._tombstones = 0
        self._centroids: Optional[np.ndarray] = None
        self._codebooks: Optional[np.ndarray] = None
        self._lists = self._empty_lists(0)
        self._attrs = AttributeStore()  # aligned with the slots (padding and tombstones: missing values)
        self._floats = RowStore(self._float_fields()) if self._keep_float else None
        self._args: Optional[tuple] = None  # search_ivf's array arguments, rebuilt after each change

    # ------------------------------------------------------------------ layout

    def _slot_fields(self) -> dict:
        """Per-slot arrays other than pq4 codes: name -> (per-slot shape, dtype)."""
        fields = {"slot_ids": ((), _INT64)}
        if self._keep_float:
            fields["slot_rows"] = ((), _INT64)
        if self._storage != "pq4":
            fields["codes"] = dense_code_layout(self._storage, self._dim)
            if self._storage == "int8":
                fields["scale"] = ((), _F32)
                fields["offset"] = ((), _F32)
            if self._metric == "l2" and self._storage != "binary":
                fields["sq_norms"] = ((), _F32)
        return fields

    def _float_fields(self) -> dict:
        fields = {"float_rows": ((self._dim,), _F32)}
        if self._metric == "l2":
            fields["float_sq_norms"] = ((), _F32)
        return fields

    def _empty_lists(self, nlist: int) -> dict:
        lists = {"list_offsets": np.zeros(nlist + 1, dtype=_INT64)}
        for name, (shape, dtype) in self._slot_fields().items():
            lists[name] = np.zeros((0,) + shape, dtype=dtype)
        if self._storage == "pq4":
            lists["codes"] = np.zeros((0, 16 * self._m), dtype=np.uint8)
        return lists

    # ------------------------------------------------------------------ properties

    dim = read_only("_dim", "Vector dimension.")
    metric = read_only("_metric", '"ip", "cosine" or "l2".')
    storage = read_only("_storage", "How vectors are stored (a name of _storage).")
    keep_float = read_only("_keep_float", "Whether a float32 copy is kept for exact re-ranking.")
    @property
    def m(self) -> Optional[int]:
        """pq4 sub-quantizers (None for the other storages)."""
        return self._m

    @property
    def anisotropic_threshold(self) -> Optional[float]:
        return self._threshold

    @property
    def device(self) -> str:
        return self._device

    @property
    def nlist(self) -> Optional[int]:
        """Number of lists: the constructor's value, or the one training chose (None before)."""
        return self._nlist if self._centroids is None else int(self._centroids.shape[0])

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None

    @property
    def ids(self) -> np.ndarray:
        """A copy of the stored ids, in storage order (list by list)."""
        with self._lock.read():
            slot_ids = self._lists["slot_ids"]
            return slot_ids[slot_ids >= 0].copy()

    @property
    def list_sizes(self) -> np.ndarray:
        """Entries per list (int64 (nlist,)), removed entries and padding not counted."""
        with self._lock.read():
            offsets, slot_ids = self._lists["list_offsets"], self._lists["slot_ids"]
            live = np.concatenate([[0], np.cumsum(slot_ids >= 0)])
            return np.diff(live[offsets])

    def _arrays(self) -> dict:
        """The stored arrays as they are (hold the lock while using them)."""
        arrays = dict(self._lists)
        if self._centroids is not None:
            arrays["centroids"] = self._centroids
        if self._codebooks is not None:
            arrays["codebooks"] = self._codebooks
        if self._floats is not None:
            arrays.update(self._floats.views())
        return arrays

    def arrays(self) -> dict:
        """Copies of the stored arrays (the layout of the module docstring): ``centroids`` float32
        (nlist, dim) and for pq4 ``codebooks`` float32 (m, 16, dim / m) once trained;
        ``list_offsets``, ``codes``, ``slot_ids``; where storage and metric have them ``scale``,
        ``offset``, ``sq_norms``; with keep_float ``slot_rows``, ``float_rows``, ``float_sq_norms``."""
        with self._lock.read():
            return {name: np.array(a, copy=True) for name, a in self._arrays().items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by every stored array (codes, lists, centroids, codebooks, float copy)."""
        with self._lock.read():
            return int(sum(a.nbytes for a in self._arrays().values())) + self._attrs.nbytes

    @property
    def schema(self) -> dict:
        """The attribute fields and their types (``{"year": "int", ...}``; see docs/filters.md)."""
        with self._lock.read():
            return dict(self._attrs.schema)

    @property
    def resident_nbytes(self) -> int:
        """Bytes that must be in memory for fast searches: :attr:`nbytes` less the candidate side
        (``slot_ids``, ``float_rows``, ``float_sq_norms``, ``slot_rows``) while it is memory-mapped
        (after ``flatcoat.load(mmap=True)``, until the first change): the scan streams only the
        codes; those are read for the candidates that pass each query's top-k bar."""
        with self._lock.read():
            return int(sum(a.nbytes for name, a in self._arrays().items()
                           if not (name in _CANDIDATE_SIDE and _is_mapped(a))))

    def to(self, device: str) -> "IVFIndex":
        """Searches on ``device`` from now on; returns self. Only ``"cpu"`` for now (else a ValueError)."""
        self._device = _device(device)
        return self

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id_) -> bool:
        """True for an integer id that is present; any other object is not in the index."""
        return holds_id(self._ids, self._lock, id_)

    def __repr__(self) -> str:
        m = f", m={self._m}" if self._storage == "pq4" else ""
        aniso = f", anisotropic_threshold={self._threshold}" if self._threshold is not None else ""
        return (f"IVFIndex(dim={self._dim}, metric={self._metric!r}, storage={self._storage!r}, "
                f"nlist={self.nlist}{m}{aniso}, keep_float={self._keep_float}, count={len(self)})")

    # ------------------------------------------------------------------ training

    def _prepare(self, vectors, name: str) -> np.ndarray:
        x = as_float_matrix(vectors, name, self._dim)
        if self._metric == "cosine":
            x = normalize_rows(x, name)
        return x

    def _core_metric(self) -> str:
        return "l2" if self._metric == "l2" else "ip"

    def _train(self, x: np.ndarray, name: str) -> None:
        n = x.shape[0]
        nlist = self._nlist if self._nlist is not None else default_nlist(n)
        if n < nlist:
            raise ValueError(f"{name}: {n} training vectors for nlist={nlist}; train needs at least nlist vectors "
                             "(pass more, or a smaller nlist)")
        if self._storage == "pq4" and n < 16:
            raise ValueError(f"{name}: {n} training vectors; pq4 codebooks need at least 16")
        centroids = _core.kmeans(x, nlist, iterations=_KMEANS_ITERATIONS, seed=_SEED, spherical=self._metric != "l2",
                                 max_points_per_centroid=TRAIN_POINTS_PER_CENTROID)
        codebooks = None
        if self._storage == "pq4":
            sample = x
            if n > _PQ_TRAIN_SAMPLE:
                rows = np.sort(np.random.default_rng(_SEED).choice(n, _PQ_TRAIN_SAMPLE, replace=False))
                sample = x[rows]
            assign = _core.assign(sample, centroids, self._core_metric())
            residuals = centroids[assign]
            np.subtract(sample, residuals, out=residuals)
            codebooks = _core.pq_train(residuals, self._m, iterations=_KMEANS_ITERATIONS, seed=_SEED)
        self._args = None
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._codebooks = codebooks
        self._lists = self._empty_lists(nlist)

    def train(self, vectors) -> None:
        """Trains the coarse quantizer (and the pq4 codebooks) on ``vectors`` (n, dim).

        ``n`` must be at least ``nlist`` (``nlist=None`` chooses
        :func:`default_nlist` of ``n``), and at least 16 for pq4. k-means runs in
        the core with a fixed seed (the same centroids for every thread count),
        on at most 256 sampled vectors per centroid. Only an empty index can be
        (re)trained: once it holds vectors, a ValueError.
        """
        x = self._prepare(vectors, "vectors")
        with self._lock.write():
            if self._count or self._tombstones:
                raise ValueError("train: the index already holds vectors; train a new IVFIndex instead")
            self._train(x, "vectors")

    # ------------------------------------------------------------------ building

    def _encode(self, x: np.ndarray, lists: np.ndarray) -> dict:
        """Per-entry rows for the lists: pq4 codes unpacked (n, m), or the dense codec's rows."""
        if self._storage != "pq4":
            # The exhaustive codecs are DenseIndex's own encoder (one implementation).
            rows = encode_rows(self._storage, x, sq_norms="sq_norms" in self._slot_fields())
            return {name: rows[name] for name in self._slot_fields() if name in rows}
        residuals = self._centroids[lists]  # one temporary: x - centroid, computed in place
        np.subtract(x, residuals, out=residuals)
        if self._threshold is None:
            return {"codes": _core.pq_encode(residuals, self._codebooks)}
        # ScaNN: eta = (dim - 1) * t / (1 - t), t = T^2 / |x|^2, one per vector; a vector no longer
        # than T gets eta 0 (plain codes).
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        t = self._threshold ** 2 / np.maximum(sq, 1e-300)
        eta = np.where(t < 1, (self._dim - 1) * t / np.maximum(1 - t, 1e-300), 0.0).astype(np.float32)
        return {"codes": _core.pq_encode(residuals, self._codebooks, originals=x, eta=eta)}

    def _rebuild(self, new: Optional[dict] = None, new_attrs: Optional[AttributeStore] = None) -> dict:
        """New list arrays holding the live entries plus ``new`` (``list``, ``slot_ids``, ... per entry).

        Entries keep their order within a list (old first, then new);
        removed entries are dropped. The current arrays are not changed, so
        a failure leaves the index as it was.
        """
        old = self._lists
        offsets = old["list_offsets"]
        nlist = offsets.size - 1
        live = np.flatnonzero(old["slot_ids"] >= 0)
        lists = np.searchsorted(offsets, live, side="right") - 1
        fields = dict(self._slot_fields())
        pq4 = self._storage == "pq4"
        if pq4:
            fields["codes"] = ((self._m,), np.dtype(np.uint8))
        sources = {}
        for name in fields:
            if name == "codes" and pq4:
                src = _core.pq4_unpack(old["codes"], int(offsets[-1]))[live] if live.size else \
                    np.zeros((0, self._m), np.uint8)
            else:
                src = old[name][live]
            if new is None:
                sources[name] = src
            else:  # no copy of the new entries when there are no old ones (the first, large add)
                sources[name] = np.concatenate([src, new[name]]) if src.shape[0] else new[name]
        if new is not None:
            lists = np.concatenate([lists, new["list"]])
        order = np.argsort(lists, kind="stable")
        counts = np.bincount(lists, minlength=nlist).astype(np.int64)
        padded = -(-counts // BLOCK) * BLOCK if pq4 else counts
        new_offsets = np.zeros(nlist + 1, dtype=_INT64)
        np.cumsum(padded, out=new_offsets[1:])
        sorted_lists = lists[order]
        starts = np.cumsum(counts) - counts
        dest = new_offsets[sorted_lists] + (np.arange(order.size, dtype=_INT64) - starts[sorted_lists])
        total = int(new_offsets[-1])
        where = np.empty_like(dest)  # each source entry's slot: scattered straight from the sources
        where[order] = dest
        out = {"list_offsets": new_offsets}
        for name, (shape, dtype) in fields.items():
            fill = -1 if name in ("slot_ids", "slot_rows") else 0
            a = np.full((total,) + shape, fill, dtype=dtype)
            a[where] = sources[name]
            out[name] = a
        if pq4:
            out["codes"] = _core.pq4_pack(out["codes"]) if total else np.zeros((0, 16 * self._m), np.uint8)
        out["_dest"] = where
        out["_ids"] = sources["slot_ids"]
        # Attributes follow their entries to the new slots; padding slots get none.
        attrs = self._attrs.take(live)
        if new_attrs is not None:
            attrs.append(new_attrs)
        slot_source = np.full(total, -1, dtype=_INT64)
        slot_source[where] = np.arange(where.size, dtype=_INT64)
        out["_attrs"] = attrs.take(slot_source)
        return out

    def _install(self, rebuilt: dict) -> None:
        dest, ids = rebuilt.pop("_dest"), rebuilt.pop("_ids")
        self._args = None
        self._attrs = rebuilt.pop("_attrs")
        self._lists = rebuilt
        if ids.size:
            self._ids.assign(np.ascontiguousarray(ids), np.ascontiguousarray(dest))
        self._tombstones = 0

    def add(self, vectors, ids=None, *, attributes=None) -> np.ndarray:
        """Adds vectors (n, dim) (float16/32/64); returns their int64 ids.

        An untrained index first trains on these vectors if there are at
        least ``max(nlist or 1, 256)`` of them (else a ValueError: call
        :meth:`train` with more vectors first). Each vector goes to the list
        of its nearest centroid. ``ids`` default to consecutive integers after
        the largest id so far; they must be distinct, non-negative and new, or
        the whole call fails and adds nothing. The lists are rebuilt on each
        call (one pass over the codes), so add in large batches.
        ``attributes``: per-vector attributes for ``search(filter=)`` and
        :meth:`get`, as in :meth:`DenseIndex.add` (docs/filters.md).
        """
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        with self._lock.write():
            ids = auto_ids(self._next_id, n) if ids is None else as_ids(ids, "ids", n)
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            self._add_locked(x, ids, attrs)
            return ids

    def _add_locked(self, x: np.ndarray, ids: np.ndarray, attrs: AttributeStore) -> None:
        n = x.shape[0]
        if self._centroids is None:
            needed = max(self._nlist or 1, MIN_TRAIN)
            if n < needed:
                raise ValueError(
                    f"vectors: the index is untrained and {n} vectors are too few to train it on (the first add "
                    f"trains on its own vectors when it has at least max(nlist or 1, {MIN_TRAIN}) = {needed}); "
                    "call train() with more vectors first"
                )
        duplicate = self._ids.insert_new(ids, 0)
        if duplicate >= 0:
            raise ValueError(
                f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                "ids must be unique (upsert replaces a vector by id)"
            )
        trained_before = self._centroids is not None
        rows_before = self._floats.count if self._floats is not None else 0
        try:
            if not trained_before:
                self._train(x, "vectors")
            new = {"list": np.empty(n, dtype=_INT64), "slot_ids": ids}
            for start in range(0, n, _ENCODE_CHUNK):  # in chunks: the float temporaries stay small
                chunk = x[start : start + _ENCODE_CHUNK]
                end = start + chunk.shape[0]
                lists = _core.assign(chunk, self._centroids, self._core_metric())
                new["list"][start:end] = lists
                for name, rows in self._encode(chunk, lists).items():
                    if name not in new:
                        new[name] = np.empty((n,) + rows.shape[1:], dtype=rows.dtype)
                    new[name][start:end] = rows
            if self._floats is not None:
                # The float copy and its norms, written by the core into the reserved rows.
                reserved = self._floats.reserve(n)
                encode_into("f32", x, {"codes": reserved["float_rows"], "sq_norms": reserved.get("float_sq_norms")})
                self._floats.count = rows_before + n
                new["slot_rows"] = rows_before + np.arange(n, dtype=_INT64)
            self._install(self._rebuild(new, attrs))
        except BaseException:
            self._args = None
            self._ids.erase(ids)  # all or nothing
            if self._floats is not None:
                self._floats.count = rows_before
            if not trained_before:
                self._centroids = self._codebooks = None
                self._lists = self._empty_lists(0)
                self._attrs = AttributeStore()
            raise
        self._count += n
        self._next_id = max(self._next_id, int(ids.max()) + 1)
        if self._floats is not None and self._floats.count - self._count > _COMPACT_FRACTION * self._floats.count:
            self._compact()  # rows of removed vectors: the lists dropped their slots, drop the rows too

    def upsert(self, vectors, ids, *, attributes=None) -> np.ndarray:
        """Adds or replaces vectors by id (the new vector and attributes replace the old ones); returns
        the ids. The index must be trained (or this call's vectors train it, as in :meth:`add`); on any
        failure nothing changes."""
        x = self._prepare(vectors, "vectors")
        n = x.shape[0]
        ids = upsert_ids(ids, n)
        with self._lock.write():
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            slots = self._ids.find(ids)
            old_ids, old_slots = ids[slots >= 0], slots[slots >= 0]
            slot_ids = self._writable_slot_ids()
            slot_ids[old_slots] = -1  # tombstones: the rebuild of the add drops them
            self._ids.erase(old_ids)
            self._count -= int(old_ids.size)
            self._tombstones += int(old_ids.size)
            try:
                self._add_locked(x, ids, attrs)
            except BaseException:
                if self._lists["slot_ids"] is slot_ids:  # the add changed nothing: bring the old entries back
                    slot_ids[old_slots] = old_ids
                    self._ids.insert_new(old_ids, 0)
                    self._ids.assign(old_ids, old_slots)
                    self._count += int(old_ids.size)
                    self._tombstones -= int(old_ids.size)
                    self._args = None
                raise
            return ids

    def _writable_slot_ids(self) -> np.ndarray:
        slot_ids = self._lists["slot_ids"]
        if not (slot_ids.flags.writeable and slot_ids.flags.owndata):
            slot_ids = self._lists["slot_ids"] = np.array(slot_ids, copy=True)
        self._args = None
        return slot_ids

    def matches(self, filter) -> np.ndarray:
        """The ids (int64, in storage order) that ``filter`` allows: a dict predicate over the
        attributes or an allow-list of ids, as ``search(filter=)`` takes it (docs/filters.md)."""
        with self._lock.read():
            return matching_ids(filter, self._attrs, self._ids, self._lists["slot_ids"])

    def get(self, ids, *, vectors: bool = True) -> Tuple[Optional[np.ndarray], list]:
        """``(vectors, attributes)`` of present ids (else a KeyError), in the order asked.

        Vectors: float32 (n, dim), the float copy with ``keep_float``, else
        decoded from the list codes (pq4: centroid plus codewords; the other
        codecs as in :meth:`DenseIndex.get`). ``attributes``: one dict per id.
        ``vectors=False`` returns ``(None, attributes)``.
        """
        with self._lock.read():
            _, slots = positions_of(ids, self._ids)
            lists = self._lists
            if not vectors:
                return None, self._attrs.rows(slots)
            if self._keep_float:
                vectors = np.array(self._floats.view("float_rows")[lists["slot_rows"][slots]], dtype=np.float32)
            elif self._storage == "pq4":
                blocks, within = np.unique(slots // BLOCK, return_inverse=True)
                unpacked = _core.pq4_unpack(np.ascontiguousarray(lists["codes"][blocks]), blocks.size * BLOCK)
                codes = unpacked[within * BLOCK + slots % BLOCK].astype(np.int64)
                parts = self._codebooks[np.arange(self._m), codes]  # (n, m, dim / m)
                owner = np.searchsorted(lists["list_offsets"], slots, side="right") - 1
                vectors = parts.reshape(slots.size, self._dim) + self._centroids[owner]
            else:
                vectors = decode_rows(self._storage, self._dim, lists, slots)
            return vectors.astype(np.float32, copy=False), self._attrs.rows(slots)

    def remove(self, ids) -> int:
        """Removes vectors by id; every id must be present (else a KeyError, nothing removed).

        Returns the number removed. Their slots become tombstones (id -1,
        skipped by the scan); they are compacted away by the next ``add``, by
        ``save``, or once they exceed a quarter of the slots.
        """
        ids = removal_ids(ids)
        with self._lock.write():
            slots = held_positions(ids, self._ids, "nothing was removed")
            if ids.size == 0:
                return 0
            slot_ids = self._writable_slot_ids()
            slot_ids[slots] = -1
            self._ids.erase(ids)
            self._count -= int(ids.size)
            self._tombstones += int(ids.size)
            if self._tombstones > _COMPACT_FRACTION * slot_ids.size:
                self._compact()
            return int(ids.size)

    def _compact(self) -> None:
        """Drops tombstones from the lists and removed rows from the float copy (write lock held)."""
        if self._floats is not None and self._floats.count > self._count:
            slot_rows = self._lists["slot_rows"]
            live = self._lists["slot_ids"] >= 0
            keep = np.zeros(self._floats.count, dtype=bool)
            keep[slot_rows[live]] = True
            new_row = np.cumsum(keep) - 1
            rebuilt = self._rebuild()
            rows = rebuilt["slot_rows"]
            rebuilt["slot_rows"] = np.where(rows >= 0, new_row[np.maximum(rows, 0)], -1)
            self._args = None
            self._floats.keep_rows(0, keep)
            self._install(rebuilt)
        elif self._tombstones:
            self._install(self._rebuild())

    # ------------------------------------------------------------------ searching

    def search(self, queries, k: int = 10, *, nprobe: Optional[int] = None,
               rerank: Optional[int] = None, filter=None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best matches of each query: ``(scores, ids)``, float32 and int64 (q, k').

        ``k' = min(k, len(self))``. ``queries`` is (q, dim), nested lists read
        as one such matrix, or one (dim,) vector (q = 1). Only the ``nprobe``
        lists whose centroids score best for a query are scanned
        (``None``: ``min(nlist, 32)``; larger values are clamped to
        ``nlist``; ``nprobe = nlist`` scans everything); a row with fewer than
        ``k'`` entries in its probed lists is padded with id -1 and score
        -inf (+inf for l2). Scores are those of the codes (pq4: the residual's
        codewords plus the centroid, from 8-bit lookup tables; binary as in
        DenseIndex), or exact with ``rerank``.

        ``rerank=R`` (``R >= k``, needs ``keep_float=True``) scores the ``R``
        best candidates exactly against the float copy and returns the best
        ``k``; ``R`` is bounded by the index size like ``k``. ``nprobe`` and
        ``rerank`` belong to the call, never to the index.

        ``filter``: a dict predicate over the attributes or a 1-d sequence of
        allowed ids (docs/filters.md). The scan keeps probing lists (past
        ``nprobe``) until it has seen as many matching entries as ``nprobe``
        lists hold on average, and at least ``k`` (``rerank``) of them, so a
        restrictive filter neither pads rows while matches exist nor loses
        recall; when the matches are few they are scored directly instead.
        """
        k = as_k(k)
        if nprobe is not None:
            nprobe = as_int(nprobe, "nprobe", 1)
        rerank = as_rerank(rerank, k, self._keep_float)
        q = self._prepare(queries, "queries")
        with self._lock.read():
            n = self._count
            k, rerank = min(k, n), None if rerank is None else min(rerank, n)
            bits = filter_bits(filter, self._attrs, self._ids, int(self._lists["list_offsets"][-1]))
            if k == 0:  # also an untrained index, which is empty
                return np.empty((q.shape[0], 0), np.float32), np.empty((q.shape[0], 0), np.int64)
            nlist = int(self._centroids.shape[0])
            nprobe = min(nlist, DEFAULT_NPROBE) if nprobe is None else min(nprobe, nlist)
            args = self._args
            if args is None:  # the first search after a change (any reader may do it: same result)
                a = self._arrays()
                args = self._args = (
                    self._storage, self._core_metric(), self._dim, self._centroids, a["list_offsets"], a["codes"],
                    a["slot_ids"], a.get("codebooks"), a.get("scale"), a.get("offset"), a.get("sq_norms"),
                    a.get("float_rows"), a.get("slot_rows"), a.get("float_sq_norms"))
            return _core.search_ivf(*args, q, k, nprobe, rerank or 0, filter=bits)

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict:
        return {
            "dim": self._dim, "metric": self._metric, "storage": self._storage, "nlist": self._nlist,
            "keep_float": self._keep_float, "m": self._m, "anisotropic_threshold": self._threshold,
            "trained": self._centroids is not None, "count": self._count,
            "rows": self._floats.count if self._floats is not None else 0, "next_id": self._next_id,
        }

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (see ``flatcoat.load``).

        Removed entries are compacted away first (a change, under the write lock).
        """
        with self._lock.write():
            self._compact()
        with self._lock.read():
            meta, arrays = self._meta(), self._arrays()
            save_attributes(self._attrs, meta, arrays)
            save_index(os.fspath(path), _KIND, meta, arrays)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> "IVFIndex":
        def need(ok, file: str, reason: str):
            if not ok:
                raise IndexFormatError(f"{file}: {reason}")

        def integer(value, minimum=0):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum

        for key in ("dim", "metric", "storage", "nlist", "keep_float", "m", "anisotropic_threshold", "trained",
                    "count", "rows", "next_id"):
            need(key in meta, "manifest.json", f"meta lacks {key!r}")
        for key in ("count", "rows", "next_id"):
            need(integer(meta[key]), "manifest.json", f"invalid {key} {meta[key]!r}")
        need(isinstance(meta["trained"], bool), "manifest.json", f"invalid trained {meta['trained']!r}")
        try:
            index = cls(meta["dim"], metric=meta["metric"], storage=meta["storage"], nlist=meta["nlist"],
                        keep_float=meta["keep_float"], m=meta["m"], anisotropic_threshold=meta["anisotropic_threshold"])
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"manifest.json: invalid parameters ({exc})") from None
        dim, count, n_rows = index._dim, meta["count"], meta["rows"]
        names = set(index._slot_fields()) | {"list_offsets", "codes"}
        if meta["trained"]:
            names.add("centroids")
            if index._storage == "pq4":
                names.add("codebooks")
        if index._keep_float:
            names |= set(index._float_fields())
        for name in sorted(names):
            need(name in arrays, f"{name}.npy", "missing from the manifest")
        # The codes and list offsets are read into memory (every search streams them); the
        # candidate side (ids, float copy, row map) stays as loaded, e.g. memory-mapped, until
        # the first change.
        lists = {name: np.array(arrays[name]) if name not in _CANDIDATE_SIDE else arrays[name]
                 for name in index._slot_fields()}
        offsets = np.array(arrays["list_offsets"])
        lists["list_offsets"] = offsets
        lists["codes"] = np.array(arrays["codes"])
        nlist = 0
        if meta["trained"]:
            centroids = np.array(arrays["centroids"])
            need(centroids.dtype == _F32 and centroids.ndim == 2 and centroids.shape[1] == dim and centroids.shape[0] >= 1,
                 "centroids.npy", f"expected float32 (nlist, {dim}), got {centroids.dtype}{list(centroids.shape)}")
            need(bool(np.isfinite(centroids).all()), "centroids.npy", "not finite")
            nlist = centroids.shape[0]
            index._centroids = centroids
            if index._storage == "pq4":
                codebooks = np.array(arrays["codebooks"])
                expected = (index._m, 16, dim // index._m)
                need(codebooks.dtype == _F32 and codebooks.shape == expected, "codebooks.npy",
                     f"expected float32{list(expected)}, got {codebooks.dtype}{list(codebooks.shape)}")
                need(bool(np.isfinite(codebooks).all()), "codebooks.npy", "not finite")
                index._codebooks = codebooks
        need(offsets.dtype == _INT64 and offsets.shape == (nlist + 1,), "list_offsets.npy",
             f"expected int64[{nlist + 1}], got {offsets.dtype}{list(offsets.shape)}")
        need(int(offsets[0]) == 0 and bool(np.all(np.diff(offsets) >= 0)), "list_offsets.npy",
             "must start at 0 and never decrease")
        total = int(offsets[-1])
        if index._storage == "pq4":
            need(bool(np.all(offsets % BLOCK == 0)), "list_offsets.npy", f"pq4 lists must be multiples of {BLOCK} slots")
            expected = (total // BLOCK, 16 * index._m)
            need(lists["codes"].dtype == np.uint8 and lists["codes"].shape == expected, "codes.npy",
                 f"expected uint8{list(expected)}, got {lists['codes'].dtype}{list(lists['codes'].shape)}")
        for name, (shape, dtype) in index._slot_fields().items():
            a = lists[name]
            need(a.dtype == dtype and a.shape == (total,) + tuple(shape), f"{name}.npy",
                 f"expected {np.dtype(dtype).str}{[total, *shape]}, got {a.dtype.str}{list(a.shape)}")
        slot_ids = lists["slot_ids"]
        live = slot_ids >= 0
        need(bool(np.all(slot_ids >= -1)), "slot_ids.npy", "ids must be non-negative (-1 marks an empty slot)")
        need(int(live.sum()) == count, "slot_ids.npy", f"{int(live.sum())} live slots, manifest says {count}")
        if index._storage == "int8":
            need(bool(np.isfinite(lists["scale"]).all() and np.isfinite(lists["offset"]).all()), "scale.npy",
                 "scale and offset must be finite")
        if index._keep_float:
            try:
                index._floats = RowStore.from_arrays(index._float_fields(), arrays, n_rows)
            except ValueError as exc:
                raise IndexFormatError(str(exc)) from None
            rows = np.asarray(lists["slot_rows"])
            need(bool(np.all((rows >= 0) == live)), "slot_rows.npy", "a row for every live slot and -1 elsewhere")
            need(count == 0 or int(rows[live].max()) < n_rows, "slot_rows.npy", f"rows beyond the {n_rows} float rows")
            need(np.unique(rows[live]).size == count, "slot_rows.npy", "a float row used twice")
        ids = np.ascontiguousarray(slot_ids[live])
        duplicate = index._ids.insert_new(ids, 0)
        need(duplicate < 0, "slot_ids.npy", f"id {int(ids[duplicate]) if duplicate >= 0 else 0} appears twice")
        index._ids.assign(ids, np.flatnonzero(live).astype(np.int64))
        index._lists = lists
        index._attrs = load_attributes(meta.get(ATTRIBUTES_META), arrays, total)
        index._count = count
        index._next_id = max(meta["next_id"], int(ids.max()) + 1 if count else 0)
        return index


# Read only for the candidates that pass a query's top-k bar (ids, tombstone test, re-ranking),
# never streamed by the scan: these may stay memory-mapped after a load.
_CANDIDATE_SIDE = frozenset(("slot_ids", "float_rows", "float_sq_norms", "slot_rows"))


def _is_mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is (a view of) a memory map."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        base = a.base
        if base is not None and not isinstance(base, np.ndarray):
            import mmap
            return isinstance(base, mmap.mmap)
        a = base
    return False


register_kind(_KIND, IVFIndex._from_saved)
