"""PlaidIndex: a compressed, centroid-pruned multi-vector (late-interaction) index.

PLAID (Santhanam et al., CIKM 2022) over ColBERTv2's residual compression:
every document token is stored as its nearest token centroid (a uint16 id)
plus the residual ``token - centroid`` quantized per dimension to ``nbits``
(1, 2 or 4) bits. Search scores the query tokens against every centroid,
gathers the documents of each query token's ``nprobe`` best centroids from an
inverted file, ranks them by centroid interaction (MaxSim over centroid scores
only), and scores only the best ``ndocs`` exactly, on tokens decompressed
inside the core one document at a time. See ``docs/plaid.md``.

Layout (all arrays owned here, views go to the core):

* ``centroids`` float32 (ncentroids, dim), spherical k-means of the core;
  with ``normalize`` (an index of unit-norm tokens, ColBERT's) every
  decompressed token is rescaled to unit norm, as ColBERTv2 does;
* ``cutoffs`` float32 (dim, 2^nbits - 1): per-dimension bucket boundaries,
  quantiles of the training residuals; ``weights`` float32 (dim, 2^nbits):
  the mean residual of each bucket (a decompressed residual is
  ``weights[d, code_d]``);
* per token: ``codes`` uint8 (n_tokens, ceil(dim * nbits / 8)) (dimension
  ``d`` in bits ``(d * nbits) % 8`` of byte ``d * nbits // 8``, least
  significant first) and ``centroid_ids`` (n_tokens,), uint16 when the index
  has at most 65,536 centroids (every default), else int32 (indexes saved
  before uint16 ids keep their int32 ids);
* per document: ``offsets`` int64 (n_docs + 1,) and ``ids`` int64;
* the inverted file: ``ivf_offsets`` int64 (ncentroids + 1,) and
  ``ivf_docs`` int32, each centroid's distinct document positions, ascending.
  Changes mark it stale; it is rebuilt (a linear counting sort in the core)
  once, before the next search, save or read of the arrays, so adding in
  chunks costs linear time in total.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._attributes import AttributeStore
from ._persist import IndexFormatError, register_kind, save_index
from ._records import (
    ATTRIBUTES_META, filter_bits, held_positions, load_attributes, matching_ids, parse_attributes,
    positions_of, removal_ids, save_attributes, upsert_ids,
)
from ._storage import RowStore
from ._validate import RWLock, as_ids, as_int, as_k, auto_ids, holds_id, read_only
from .multivector import _float_tokens, _packed_docs, parse_queries, parse_query_weights

__all__ = ["PlaidIndex", "default_ncentroids", "NBITS", "DEFAULT_NPROBE", "DEFAULT_NDOCS", "MIN_TRAIN"]

_KIND = "plaid"
_INT64, _INT32, _F32, _U8 = np.dtype(np.int64), np.dtype(np.int32), np.dtype(np.float32), np.dtype(np.uint8)
_U16 = np.dtype(np.uint16)
#: Indexes with at most this many centroids store their centroid ids as uint16 (2 bytes per token).
MAX_UINT16_CENTROIDS = 1 << 16
_DOC_FIELDS = {"offsets": ((), _INT64), "ids": ((), _INT64)}
#: Residual bits per dimension that the index supports.
NBITS = (1, 2, 4)
#: ``nprobe=None``: centroids probed per query token.
DEFAULT_NPROBE = 4
#: ``ndocs=None``: documents scored exactly, ``max(DEFAULT_NDOCS, 4 * k)``; ``ncandidates=None`` keeps
#: ``4 * ndocs`` after the (pruned) centroid interaction.
DEFAULT_NDOCS = 64
#: The first ``add`` of an untrained index trains on its own tokens if it has at least
#: ``max(ncentroids or 1, MIN_TRAIN)`` of them.
MIN_TRAIN = 256
#: k-means trains on at most this many sampled tokens per centroid (see default_ncentroids).
TRAIN_POINTS_PER_CENTROID = 16
#: default_ncentroids never goes above this (the CPU build: k-means costs about
#: 16 * ncentroids^2 * 2 * dim * iterations flops, 7e13 at 2^16 and dim 128).
MAX_DEFAULT_NCENTROIDS = 1 << 16
#: Up to this many centroids tokens are assigned exactly (n * ncentroids * 2 * dim flops); above,
#: through a two-level quantizer (see PlaidIndex._assign).
_FLAT_ASSIGN_MAX = 4096
#: The residual quantiles are estimated from at most this many sampled tokens.
_RESIDUAL_SAMPLE = 1 << 16
#: Lloyd-Max refinements of the residual buckets after the quantile start (0: ColBERTv2's buckets).
_LLOYD_STEPS = 8
#: Tokens assigned and encoded at a time (the temporaries stay near 2 MiB).
_ENCODE_CHUNK = 1 << 16
#: A token counts as unit-norm (``normalize``) when its L2 norm is within this of 1: float32
#: encoders normalise to about 1e-7, half-precision ones to about 1e-3.
UNIT_NORM_TOLERANCE = 1e-2


def default_ncentroids(n_tokens: int) -> int:
    """ColBERT's rule, ``2 ** floor(log2(16 * sqrt(n_tokens)))``, with at least 8 training tokens per
    centroid (``n_tokens // 8``, rounded down to a power of two) and at most ``2 ** 16`` centroids
    (:data:`MAX_DEFAULT_NCENTROIDS`, so that a CPU build stays in minutes).

    >>> default_ncentroids(10_000_000), default_ncentroids(12_000), default_ncentroids(100)
    (32768, 1024, 8)
    >>> default_ncentroids(180_000_000)   # ColBERT's rule would give 2 ** 17
    65536
    """
    n = max(1, int(n_tokens))
    colbert = 2 ** int(math.floor(math.log2(16 * math.sqrt(n))))
    cap = 2 ** int(math.floor(math.log2(max(1, n // 8))))
    return max(1, min(colbert, cap, MAX_DEFAULT_NCENTROIDS))


def _off_unit_norm(tokens: np.ndarray) -> int:
    """The first token (row) whose L2 norm is not within UNIT_NORM_TOLERANCE of 1, or -1."""
    for start in range(0, tokens.shape[0], _ENCODE_CHUNK):
        chunk = tokens[start : start + _ENCODE_CHUNK]
        squares = np.einsum("ij,ij->i", chunk, chunk)
        bad = np.flatnonzero(np.abs(np.sqrt(squares) - 1.0) > UNIT_NORM_TOLERANCE)
        if bad.size:
            return start + int(bad[0])
    return -1


def _optional_count(value, name: str, minimum: int = 1) -> Optional[int]:
    return None if value is None else as_int(value, name, minimum)


def _threshold(value) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"centroid_threshold: expected a number or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"centroid_threshold: must be finite (e.g. 0.45 for unit-norm tokens), got {value!r}")
    return value


class PlaidIndex:
    """A compressed multi-vector index searched in PLAID's stages (centroids, then exact MaxSim).

    Parameters
    ----------
    dim: token vector dimension.
    nbits: residual bits per dimension, 1, 2 or 4 (``dim * nbits / 8`` bytes per token, plus a
        2-byte centroid id (4 above 65,536 centroids) and the inverted file's at most 4 bytes).
    ncentroids: token centroids; ``None`` chooses :func:`default_ncentroids` of the training tokens.
    kmeans_iterations: Lloyd iterations of the centroid k-means (ColBERT's default, 4).
    seed: seeds the k-means and the residual sample (the index is deterministic given it).
    normalize: rescale every decompressed token to unit norm (ColBERTv2's decompression): for
        unit-norm tokens this removes the quantization error along the token, the part a query
        token near it sees most (docs/plaid.md). ``None`` (default) decides at training: True when
        every training token is unit-norm (within :data:`UNIT_NORM_TOLERANCE`). With True, every
        added token must be unit-norm (else a ValueError, nothing added).

    Training: :meth:`train` on tokens or documents, or the first :meth:`add` trains on its own
    tokens when it has at least ``max(ncentroids or 1, 256)`` of them. Later documents are
    assigned to the existing centroids. Tokens are expected near unit norm (ColBERT-style
    encoders normalise them); any finite float tokens work with ``normalize=False``. Everything after ``dim`` is
    keyword-only. Searches may run from many threads at once; changes take the write lock.

    >>> import numpy as np, flatcoat
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((20, 16)).astype(np.float32) for _ in range(50)]
    >>> index = flatcoat.PlaidIndex(16, nbits=4)
    >>> index.add(docs)[:3].tolist()
    [0, 1, 2]
    >>> scores, ids = index.search(docs[7][:4], k=3)
    >>> int(ids[0, 0])
    7
    """

    def __init__(self, dim: int, *, nbits: int = 2, ncentroids: Optional[int] = None, kmeans_iterations: int = 4,
                 seed: int = 0, normalize: Optional[bool] = None):
        self._dim = as_int(dim, "dim", 1)
        nbits = as_int(nbits, "nbits")
        if nbits not in NBITS:
            raise ValueError(f"nbits: must be 1, 2 or 4 bits per dimension, got {nbits}")
        self._nbits = nbits
        self._ncentroids = _optional_count(ncentroids, "ncentroids")
        self._iterations = as_int(kmeans_iterations, "kmeans_iterations", 0)
        self._seed = as_int(seed, "seed", 0)
        if normalize is not None and not isinstance(normalize, (bool, np.bool_)):
            raise TypeError(f"normalize: expected True, False or None (decide at training), got "
                            f"{type(normalize).__name__} {normalize!r}")
        self._normalize_arg = None if normalize is None else bool(normalize)
        self._normalize = self._normalize_arg  # None until training decides
        self._code_bytes = (self._dim * nbits + 7) // 8
        # uint16 ids whenever every centroid id fits (ncentroids=None never chooses more than 2^16).
        fits = self._ncentroids is None or self._ncentroids <= MAX_UINT16_CENTROIDS
        self._cid_dtype = _U16 if fits else _INT32
        self._lock = RWLock()
        self._id_map = _core.IdMap()
        self._next_id = 0
        self._centroids: Optional[np.ndarray] = None
        self._cutoffs: Optional[np.ndarray] = None
        self._weights: Optional[np.ndarray] = None
        self._coarse = None  # the two-level assigner (_assign), built on first use
        self._tokens = RowStore(self._token_fields())
        self._docs = RowStore(_DOC_FIELDS, fenced=("offsets",))
        self._attrs = AttributeStore()
        self._ivf = {"ivf_offsets": np.zeros(1, dtype=_INT64), "ivf_docs": np.zeros(0, dtype=_INT32)}
        self._ivf_stale = False  # documents changed since the inverted file was built (_read_fresh)

    def _token_fields(self) -> dict:
        return {"codes": ((self._code_bytes,), _U8), "centroid_ids": ((), self._cid_dtype)}

    @contextlib.contextmanager
    def _read_fresh(self):
        """The read lock, the inverted file rebuilt first if changes left it stale (under the write
        lock, once for any number of adds in between)."""
        while True:
            if self._ivf_stale:
                with self._lock.write():
                    if self._ivf_stale:
                        self._rebuild_ivf()
            with self._lock.read():
                if self._ivf_stale:  # a change came in between: rebuild again
                    continue
                yield
                return

    # ------------------------------------------------------------------ properties

    dim = read_only("_dim", "Token vector dimension.")
    nbits = read_only("_nbits", "Residual bits per dimension (1, 2 or 4).")

    @property
    def ncentroids(self) -> Optional[int]:
        """Token centroids: the constructor's value, or the one training chose (None before)."""
        return self._ncentroids if self._centroids is None else int(self._centroids.shape[0])

    @property
    def normalize(self) -> Optional[bool]:
        """Whether decompressed tokens are rescaled to unit norm: the constructor's value, or what training
        chose (None before)."""
        return self._normalize

    @property
    def is_trained(self) -> bool:
        return self._centroids is not None

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

    def _arrays(self) -> dict:
        """Every stored array as it is (hold the lock while using them)."""
        arrays = {**self._tokens.views(), **self._docs.views(), **self._ivf}
        if self._centroids is not None:
            arrays.update(centroids=self._centroids, cutoffs=self._cutoffs, weights=self._weights)
        return arrays

    def arrays(self) -> dict:
        """Copies of the stored arrays (the layout of the module docstring)."""
        with self._read_fresh():
            return {name: np.array(a, copy=True) for name, a in self._arrays().items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by every stored array (codes, centroid ids, inverted file, centroids, ids, attributes)."""
        with self._read_fresh():
            return int(sum(a.nbytes for a in self._arrays().values())) + self._attrs.nbytes

    @property
    def schema(self) -> dict:
        """The attribute fields and their types (``{"year": "int", ...}``; see docs/filters.md)."""
        with self._lock.read():
            return dict(self._attrs.schema)

    def __len__(self) -> int:
        return self._docs.count

    def __contains__(self, id_) -> bool:
        """True for an integer id that is present; any other object is not in the index."""
        return holds_id(self._id_map, self._lock, id_)

    def __repr__(self) -> str:
        return (f"PlaidIndex(dim={self._dim}, nbits={self._nbits}, ncentroids={self.ncentroids}, "
                f"normalize={self._normalize}, count={len(self)}, tokens={self.num_tokens})")

    # ------------------------------------------------------------------ training

    def _train(self, tokens: np.ndarray, name: str) -> None:
        n = tokens.shape[0]
        k = self._ncentroids if self._ncentroids is not None else default_ncentroids(n)
        if n < k:
            raise ValueError(f"{name}: {n} training tokens for ncentroids={k}; training needs at least ncentroids "
                             "tokens (pass more, or a smaller ncentroids)")
        if self._normalize_arg is None:
            self._normalize = _off_unit_norm(tokens) < 0
        centroids = _core.kmeans(tokens, k, iterations=self._iterations, seed=self._seed, spherical=True,
                                 max_points_per_centroid=TRAIN_POINTS_PER_CENTROID,
                                 two_level_above=_FLAT_ASSIGN_MAX)
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        sample = tokens
        if n > _RESIDUAL_SAMPLE:
            rows = np.sort(np.random.default_rng(self._seed).choice(n, _RESIDUAL_SAMPLE, replace=False))
            sample = tokens[rows]
        self._centroids, self._coarse = centroids, None
        residuals = sample - centroids[self._assign(sample)]
        cutoffs, weights = self._buckets(residuals)
        self._cutoffs = np.ascontiguousarray(cutoffs)
        self._weights = np.ascontiguousarray(weights, dtype=np.float32)
        self._ivf = {"ivf_offsets": np.zeros(k + 1, dtype=_INT64), "ivf_docs": np.zeros(0, dtype=_INT32)}
        self._ivf_stale = False

    def _buckets(self, residuals: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Per-dimension cut-offs (dim, B - 1) and bucket weights (dim, B) of the residuals, B = 2^nbits.

        ColBERTv2's start: cut-offs at the quantiles i / B, each bucket decoded as the mean residual in
        it (an empty bucket: its centre quantile). Then a few Lloyd-Max steps (1-d k-means per
        dimension: cut-offs half-way between neighbouring weights, weights the means again), which cut
        the mean squared error of the decoded residuals (measured in docs/plaid.md).
        """
        buckets = 1 << self._nbits
        dim = residuals.shape[1]
        cutoffs = np.quantile(residuals, np.arange(1, buckets) / buckets, axis=0).T.astype(np.float32)
        fallback = np.quantile(residuals, (np.arange(buckets) + 0.5) / buckets, axis=0).T.astype(np.float64)
        values = residuals.ravel().astype(np.float64)
        base = (np.arange(dim)[None, :] * buckets)
        for step in range(_LLOYD_STEPS + 1):
            flat = (base + self._bucketize(residuals, cutoffs)).ravel()
            counts = np.bincount(flat, minlength=dim * buckets).reshape(dim, buckets)
            sums = np.bincount(flat, weights=values, minlength=dim * buckets).reshape(dim, buckets)
            weights = np.where(counts > 0, sums / np.maximum(counts, 1), fallback)
            weights = np.maximum.accumulate(weights, axis=1)  # keep the buckets ordered
            if step < _LLOYD_STEPS:
                cutoffs = (0.5 * (weights[:, 1:] + weights[:, :-1])).astype(np.float32)
        return np.ascontiguousarray(cutoffs), np.ascontiguousarray(weights, dtype=np.float32)

    @staticmethod
    def _bucketize(residuals: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
        """Bucket (uint8 (n, dim)) of each residual: the number of its dimension's cut-offs below it."""
        codes = np.zeros(residuals.shape, dtype=np.uint8)
        for i in range(cutoffs.shape[1]):
            codes += residuals > cutoffs[:, i]
        return codes

    def train(self, tokens_or_docs) -> None:
        """Trains the centroids and the residual buckets.

        ``tokens_or_docs``: a 2-d (n_tokens, dim) token matrix, or documents in any form of
        :meth:`add`. ``n_tokens`` must be at least ``ncentroids`` (``None`` chooses
        :func:`default_ncentroids` of it). Only an empty index can be (re)trained.
        """
        if isinstance(tokens_or_docs, np.ndarray) and tokens_or_docs.ndim == 2:
            tokens = _float_tokens(tokens_or_docs, "tokens_or_docs", self._dim)
        else:
            tokens, _ = _packed_docs(tokens_or_docs, self._dim, "tokens_or_docs")
        with self._lock.write():
            if len(self):
                raise ValueError("train: the index already holds documents; train a new PlaidIndex instead")
            self._train(tokens, "tokens_or_docs")

    # ------------------------------------------------------------------ building

    def _assign(self, x: np.ndarray) -> np.ndarray:
        """The centroid of each token (int64 (n,)): the nearest in L2 (the smallest residual).

        Up to 4096 centroids exactly. Above, through two levels, as a flat scan would cost
        n * ncentroids * 2 * dim flops (3e15 for 180M tokens and 2^16 centroids): the centroids are
        grouped by a k-means of their own (2^ceil(log2(sqrt(ncentroids))) groups, seeded, so the
        same for every run), a token goes to its nearest group and takes the nearest centroid of
        that group (``_core.assign_two_level``, threads split the groups). A token near a group
        boundary may get its second-nearest centroid: a slightly larger residual, never a wrong
        decompression. Deterministic, token by token.
        """
        centroids = self._centroids
        if centroids.shape[0] <= _FLAT_ASSIGN_MAX:
            return _core.assign(x, centroids, "l2")
        if self._coarse is None:  # under the write lock (add, upsert, train)
            self._coarse = _core.centroid_groups(centroids, 0, self._seed, "l2")
        return _core.assign_two_level(x, centroids, *self._coarse, "l2")

    def _encode(self, tokens: np.ndarray, lengths: np.ndarray) -> dict:
        """Centroid ids and packed residual codes of (n, dim) float32 tokens (``_core.plaid_encode``),
        the tokens of documents of ``lengths``."""
        n = tokens.shape[0]
        if self._normalize:
            bad = _off_unit_norm(tokens)
            if bad >= 0:
                doc = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
                token = bad - int(lengths[:doc].sum())
                norm = float(np.linalg.norm(tokens[bad].astype(np.float64)))
                how = ("chosen because the training tokens were unit-norm"
                       if self._normalize_arg is None else "normalize=True")
                raise ValueError(
                    f"docs: document {doc} token {token} has L2 norm {norm:.6g}, but this index rescales "
                    f"decompressed tokens to unit norm ({how}), so every token must be unit-norm (within "
                    f"{UNIT_NORM_TOLERANCE}); normalise the tokens, or build the index with normalize=False")
        cids = np.empty(n, dtype=self._cid_dtype)
        packed = np.empty((n, self._code_bytes), dtype=_U8)
        for start in range(0, n, _ENCODE_CHUNK):
            chunk = np.ascontiguousarray(tokens[start : start + _ENCODE_CHUNK])
            labels = self._assign(chunk)
            cids[start : start + chunk.shape[0]] = labels
            packed[start : start + chunk.shape[0]] = _core.plaid_encode(self._nbits, chunk, self._centroids, labels,
                                                                        self._cutoffs)
        return {"codes": packed, "centroid_ids": cids}

    def _rebuild_ivf(self) -> None:
        ivf_offsets, ivf_docs = _core.plaid_build_ivf(
            np.ascontiguousarray(self._tokens.view("centroid_ids")), self._docs.view("offsets"),
            int(self._centroids.shape[0]))
        self._ivf = {"ivf_offsets": ivf_offsets, "ivf_docs": ivf_docs}
        self._ivf_stale = False

    def add(self, docs, ids=None, *, attributes=None) -> np.ndarray:
        """Adds documents; returns their int64 ids.

        ``docs``: a list of (n_i, dim) token arrays (for one document pass ``[tokens]``), a 3-d
        (n_docs, n_tokens, dim) array, or ``(tokens (total, dim), lengths (n_docs,))``, as for
        :class:`flatcoat.MultiVectorIndex`. An untrained index first trains on these tokens if
        there are at least ``max(ncentroids or 1, 256)`` of them (else a ValueError: call
        :meth:`train` first). ``ids`` default to consecutive integers after the largest id so far;
        they must be distinct, non-negative and new, or nothing is added. ``attributes``:
        per-document attributes for ``search(filter=)`` and :meth:`get` (docs/filters.md).
        The inverted file is rebuilt once before the next search or save, not per call: adding a
        collection in chunks costs the same as one add.
        """
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        n = lengths.size
        with self._lock.write():
            ids = auto_ids(self._next_id, n) if ids is None else as_ids(ids, "ids", n)
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            self._add_locked(tokens, lengths, ids, attrs)
            return ids

    def _add_locked(self, tokens: np.ndarray, lengths: np.ndarray, ids: np.ndarray, attrs: AttributeStore) -> None:
        trained_before = self._centroids is not None
        if not trained_before:
            needed = max(self._ncentroids or 1, MIN_TRAIN)
            if tokens.shape[0] < needed:
                raise ValueError(
                    f"docs: the index is untrained and {tokens.shape[0]} tokens are too few to train it on (the "
                    f"first add trains on its own tokens when it has at least max(ncentroids or 1, {MIN_TRAIN}) = "
                    f"{needed}); call train() with more tokens first")
        duplicate = self._id_map.insert_new(ids, len(self))
        if duplicate >= 0:
            raise ValueError(
                f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                "ids must be unique (upsert replaces a document by id)")
        t0, d0 = self._tokens.count, self._docs.count
        ivf, stale = self._ivf, self._ivf_stale
        try:
            if not trained_before:
                self._train(tokens, "docs")
            rows = self._encode(tokens, lengths)
            self._tokens.append(rows)
            self._docs.append({"offsets": t0 + np.cumsum(lengths), "ids": ids})
            self._attrs.append(attrs)
            self._ivf_stale = True
        except BaseException:
            self._tokens.count, self._docs.count = t0, d0  # all or nothing
            self._attrs.truncate(d0)
            self._id_map.erase(ids)
            self._ivf, self._ivf_stale = ivf, stale
            if not trained_before:
                self._centroids = self._cutoffs = self._weights = None
                self._normalize = self._normalize_arg
                self._ivf = {"ivf_offsets": np.zeros(1, dtype=_INT64), "ivf_docs": np.zeros(0, dtype=_INT32)}
                self._ivf_stale = False
            raise
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def upsert(self, docs, ids, *, attributes=None) -> np.ndarray:
        """Adds or replaces documents by id (new tokens and attributes replace the old ones); returns the ids.
        Every input is checked before anything changes; a failure leaves the index as it was."""
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        n = lengths.size
        ids = upsert_ids(ids, n)
        with self._lock.write():
            attrs = parse_attributes(attributes, n, self._attrs)
            if n == 0:
                return ids
            if self._centroids is None:  # an empty index: nothing to replace; this call may train it
                self._add_locked(tokens, lengths, ids, attrs)
                return ids
            rows = self._encode(tokens, lengths)  # before any change
            positions = self._id_map.find(ids)
            present = positions >= 0
            if present.any():
                self._remove_positions(ids[present], positions[present])
            self._append_encoded(rows, lengths, ids, attrs)
            return ids

    def _append_encoded(self, rows: dict, lengths: np.ndarray, ids: np.ndarray, attrs: AttributeStore) -> None:
        duplicate = self._id_map.insert_new(ids, len(self))
        if duplicate >= 0:
            raise ValueError(f"ids: id {int(ids[duplicate])} is already in the index")
        t0 = self._tokens.count
        self._tokens.append(rows)
        self._docs.append({"offsets": t0 + np.cumsum(lengths), "ids": ids})
        self._attrs.append(attrs)
        self._ivf_stale = True
        self._next_id = max(self._next_id, int(ids.max()) + 1)

    def remove(self, ids) -> int:
        """Removes documents by id; every id must be present (else a KeyError, nothing removed).

        Returns the number removed. Tokens are compacted in place (documents keep their order) and
        the inverted file rebuilt before the next search: one pass over the tokens.
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
        if self._centroids is not None:
            self._ivf_stale = True

    def matches(self, filter) -> np.ndarray:
        """The ids (int64, in storage order) that ``filter`` allows (a dict predicate over the attributes
        or an allow-list of ids, as ``search(filter=)`` takes it; docs/filters.md)."""
        with self._lock.read():
            return matching_ids(filter, self._attrs, self._id_map, self._docs.view("ids"))

    def get(self, ids, *, vectors: bool = True) -> Tuple[Optional[list], list]:
        """``(documents, attributes)`` of present ids (else a KeyError), in the order asked: one float32
        (n_tokens, dim) array per document, decompressed (centroid plus bucket weights, rescaled to unit
        norm with ``normalize``: the tokens search scores), and one dict of
        attributes per document; ``vectors=False`` returns ``(None, attributes)``."""
        with self._lock.read():
            _, positions = positions_of(ids, self._id_map)
            if not vectors:
                return None, self._attrs.rows(positions)
            offsets = self._docs.view("offsets")
            codes, cids = self._tokens.view("codes"), self._tokens.view("centroid_ids")
            docs = []
            for p in positions.tolist():
                a, b = int(offsets[p]), int(offsets[p + 1])
                docs.append(_core.plaid_decompress(self._nbits, np.ascontiguousarray(codes[a:b]),
                                                   cids[a:b].astype(_INT32), self._centroids, self._weights,
                                                   normalize=bool(self._normalize)))
            return docs, self._attrs.rows(positions)

    # ------------------------------------------------------------------ searching

    def _search(self, queries, k, nprobe, ncandidates, ndocs, centroid_threshold, filter, query_weights, stats):
        k = as_k(k)
        nprobe = DEFAULT_NPROBE if nprobe is None else as_int(nprobe, "nprobe", 1)
        ndocs = _optional_count(ndocs, "ndocs")
        ncandidates = _optional_count(ncandidates, "ncandidates")
        if ndocs is not None and ndocs < k:
            raise ValueError(f"ndocs: documents scored exactly must be at least k ({k}), got {ndocs}")
        if ndocs is None:
            ndocs = max(DEFAULT_NDOCS, 4 * k)
            if ncandidates is not None:
                ndocs = max(k, min(ndocs, ncandidates))
        if ncandidates is None:
            ncandidates = 4 * ndocs
        if ncandidates < ndocs:
            raise ValueError(f"ncandidates: documents kept by the centroid interaction must be at least ndocs "
                             f"({ndocs}), got {ncandidates}")
        threshold = _threshold(centroid_threshold)
        q, offsets = parse_queries(queries, self._dim)
        weights = parse_query_weights(query_weights, offsets)
        nq = offsets.size - 1
        with self._read_fresh():
            n = len(self)
            k = min(k, n)
            bits = filter_bits(filter, self._attrs, self._id_map, n)
            if k == 0:  # also an untrained index, which is empty
                empty = np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
                return (*empty, {}) if stats else empty
            a = self._arrays()
            return _core.search_plaid(
                self._nbits, a["centroids"], a["weights"], a["codes"], a["centroid_ids"], a["offsets"], a["ids"],
                a["ivf_offsets"], a["ivf_docs"], q, offsets, weights, k, nprobe, min(ncandidates, n),
                max(k, min(ndocs, n)), centroid_threshold=threshold, filter=bits, stats=stats,
                normalize=bool(self._normalize))

    def search(self, queries, k: int = 10, *, nprobe: Optional[int] = None, ncandidates: Optional[int] = None,
               ndocs: Optional[int] = None, centroid_threshold: Optional[float] = None, filter=None,
               query_weights=None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents of each query: ``(scores, ids)``, float32 and int64 (q, k').

        ``k' = min(k, len(self))``; rows best first, ties by the smaller id; a row with fewer
        than ``k'`` candidates is padded with id -1 and score -inf. ``queries``: one (t, dim)
        query (q = 1), a list of queries, a 3-d (q, t, dim) array or ``(tokens, lengths)``.
        Scores are MaxSim over the decompressed tokens.

        Stages (each size belongs to the call, never to the index):

        * ``nprobe`` (default 4): centroids probed per query token; the candidates are the
          documents holding a token of one of them;
        * ``ncandidates`` (default ``4 * ndocs``): documents kept by the centroid interaction
          (MaxSim over the query's centroid scores; with ``centroid_threshold`` only tokens whose
          centroid scores at least that for some query token count, PLAID's pruning, and the
          survivors are ranked again by the full interaction);
        * ``ndocs`` (default ``max(64, 4 * k)``, at least ``k``): documents scored exactly.

        ``filter``: a dict predicate over the attributes or a 1-d sequence of allowed ids
        (docs/filters.md), applied to the candidates; when it allows at most ``ncandidates``
        documents they are the candidates themselves (nothing matching is missed).
        ``query_weights``: per-query-token weights, see :func:`flatcoat.multivector.parse_query_weights`.
        """
        return self._search(queries, k, nprobe, ncandidates, ndocs, centroid_threshold, filter, query_weights,
                            False)

    def search_stats(self, queries, k: int = 10, **options) -> Tuple[np.ndarray, np.ndarray, dict]:
        """:meth:`search` plus a dict of wall-clock seconds per stage (``centroid_scores_s``,
        ``candidates_s``, ``interaction_s``, ``exact_s``) and stage sizes (``candidates``,
        ``interacted``, ``scored``), summed over the queries: for benchmarks and tuning."""
        allowed = {"nprobe", "ncandidates", "ndocs", "centroid_threshold", "filter", "query_weights"}
        unknown = set(options) - allowed
        if unknown:
            raise TypeError(f"search_stats: unexpected argument(s) {sorted(unknown)}; expected those of search()")
        o = {name: options.get(name) for name in allowed}
        return self._search(queries, k, o["nprobe"], o["ncandidates"], o["ndocs"], o["centroid_threshold"],
                            o["filter"], o["query_weights"], True)

    # ------------------------------------------------------------------ persistence

    def _meta(self) -> dict:
        return {
            "dim": self._dim, "nbits": self._nbits, "ncentroids": self._ncentroids,
            "kmeans_iterations": self._iterations, "seed": self._seed, "trained": self._centroids is not None,
            "normalize_arg": self._normalize_arg, "normalize": self._normalize,
            "count": len(self), "tokens": self.num_tokens, "next_id": self._next_id,
        }

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (see ``flatcoat.load``)."""
        with self._read_fresh():
            meta, arrays = self._meta(), self._arrays()
            save_attributes(self._attrs, meta, arrays)
            save_index(os.fspath(path), _KIND, meta, arrays)

    @classmethod
    def _from_saved(cls, meta: dict, arrays: dict) -> "PlaidIndex":
        def need(ok, file: str, reason: str):
            if not ok:
                raise IndexFormatError(f"{file}: {reason}")

        def integer(value, minimum=0):
            return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum

        for key in ("dim", "nbits", "ncentroids", "kmeans_iterations", "seed", "trained", "count", "tokens",
                    "next_id"):
            need(key in meta, "manifest.json", f"meta lacks {key!r}")
        for key in ("count", "tokens", "next_id"):
            need(integer(meta[key]), "manifest.json", f"invalid {key} {meta[key]!r}")
        need(isinstance(meta["trained"], bool), "manifest.json", f"invalid trained {meta['trained']!r}")
        # Indexes saved before `normalize` existed decompress without rescaling.
        normalize_arg, normalize = meta.get("normalize_arg", False), meta.get("normalize", False)
        for key, value in (("normalize_arg", normalize_arg), ("normalize", normalize)):
            need(value is None or isinstance(value, bool), "manifest.json", f"invalid {key} {value!r}")
        decided = normalize is not None
        need(decided == (meta["trained"] or normalize_arg is not None) and
             (normalize_arg is None or normalize == normalize_arg), "manifest.json",
             f"normalize {normalize!r} does not fit normalize_arg {normalize_arg!r} (trained: {meta['trained']})")
        try:
            index = cls(meta["dim"], nbits=meta["nbits"], ncentroids=meta["ncentroids"],
                        kmeans_iterations=meta["kmeans_iterations"], seed=meta["seed"], normalize=normalize_arg)
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"manifest.json: invalid parameters ({exc})") from None
        index._normalize = normalize
        dim, count, n_tokens = index._dim, meta["count"], meta["tokens"]
        need(meta["trained"] or count == 0, "manifest.json", "an untrained index holds no documents")
        names = set(index._token_fields()) | set(_DOC_FIELDS) | {"ivf_offsets", "ivf_docs"}
        if meta["trained"]:
            names |= {"centroids", "cutoffs", "weights"}
        for name in sorted(names):
            need(name in arrays, f"{name}.npy", "missing from the manifest")
        # Centroid ids: uint16 (at most 65,536 centroids) or int32 (any count; every index saved before
        # uint16 ids). The index keeps the dtype it was saved with.
        cid_dtype = arrays["centroid_ids"].dtype
        need(cid_dtype in (_U16, _INT32), "centroid_ids.npy", f"expected uint16 or int32 ids, got {cid_dtype}")
        if cid_dtype == _U16:
            limit = meta["ncentroids"] if meta["trained"] is False else arrays["centroids"].shape[0]
            need(limit is None or limit <= MAX_UINT16_CENTROIDS, "centroid_ids.npy",
                 f"uint16 ids need at most {MAX_UINT16_CENTROIDS} centroids, the index has {limit}")
        index._cid_dtype = cid_dtype
        try:
            tokens = RowStore.from_arrays(index._token_fields(), arrays, n_tokens)
            docs = RowStore.from_arrays(_DOC_FIELDS, arrays, count, fenced=("offsets",))
        except ValueError as exc:
            raise IndexFormatError(str(exc)) from None
        nc = 0
        buckets = 1 << index._nbits
        if meta["trained"]:
            centroids, cutoffs, weights = arrays["centroids"], arrays["cutoffs"], arrays["weights"]
            need(centroids.dtype == _F32 and centroids.ndim == 2 and centroids.shape[1] == dim and
                 centroids.shape[0] >= 1, "centroids.npy",
                 f"expected float32 (ncentroids, {dim}), got {centroids.dtype}{list(centroids.shape)}")
            need(bool(np.isfinite(centroids).all()), "centroids.npy", "not finite")
            for name, a, cols in (("cutoffs", cutoffs, buckets - 1), ("weights", weights, buckets)):
                need(a.dtype == _F32 and a.shape == (dim, cols), f"{name}.npy",
                     f"expected float32{[dim, cols]}, got {a.dtype}{list(a.shape)}")
                need(bool(np.isfinite(a).all()), f"{name}.npy", "not finite")
            nc = centroids.shape[0]
            index._centroids, index._cutoffs, index._weights = centroids, cutoffs, weights
        offsets = docs.view("offsets")
        need(int(offsets[0]) == 0, "offsets.npy", "must start at 0")
        need(bool(np.all(offsets[1:] > offsets[:-1])), "offsets.npy", "must be strictly increasing (no empty document)")
        need(int(offsets[-1]) == n_tokens, "offsets.npy", f"last offset {int(offsets[-1])} != {n_tokens} token rows")
        cids = tokens.view("centroid_ids")
        need(n_tokens == 0 or (int(cids.min()) >= 0 and int(cids.max()) < nc), "centroid_ids.npy",
             f"centroid ids must be in [0, {nc})")
        ivf_offsets, ivf_docs = arrays["ivf_offsets"], arrays["ivf_docs"]
        need(ivf_offsets.dtype == _INT64 and ivf_offsets.shape == (max(nc, 0) + 1,), "ivf_offsets.npy",
             f"expected int64[{nc + 1}], got {ivf_offsets.dtype}{list(ivf_offsets.shape)}")
        need(ivf_docs.dtype == _INT32 and ivf_docs.ndim == 1, "ivf_docs.npy",
             f"expected int32 (entries,), got {ivf_docs.dtype}{list(ivf_docs.shape)}")
        need(int(ivf_offsets[0]) == 0 and bool(np.all(ivf_offsets[1:] >= ivf_offsets[:-1])) and
             int(ivf_offsets[-1]) == ivf_docs.shape[0], "ivf_offsets.npy",
             "must start at 0, never decrease and end at the inverted file's length")
        need(ivf_docs.size == 0 or (int(ivf_docs.min()) >= 0 and int(ivf_docs.max()) < count), "ivf_docs.npy",
             f"document positions must be in [0, {count})")
        ids = np.ascontiguousarray(docs.view("ids"))
        need(count == 0 or int(ids.min()) >= 0, "ids.npy", "negative id")
        duplicate = index._id_map.insert_new(ids, 0)
        need(duplicate < 0, "ids.npy", f"id {int(ids[duplicate]) if duplicate >= 0 else 0} appears twice")
        index._tokens, index._docs = tokens, docs
        index._ivf = {"ivf_offsets": ivf_offsets, "ivf_docs": ivf_docs}
        index._attrs = load_attributes(meta.get(ATTRIBUTES_META), arrays, count)
        index._next_id = max(meta["next_id"], int(ids.max()) + 1 if count else 0)
        return index


register_kind(_KIND, PlaidIndex._from_saved)
