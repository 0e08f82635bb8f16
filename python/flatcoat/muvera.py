"""MUVERA: Fixed Dimensional Encodings (FDEs) of token bags, a single-vector first stage for MaxSim.

Dhulipala et al., "MUVERA: Multi-Vector Retrieval via Fixed Dimensional
Encodings" (NeurIPS 2024). A bag of token vectors becomes one vector whose
inner products approximate MaxSim, so a dense index can find candidates that
exact MaxSim then re-ranks (:func:`search`).

The transform (``FDE(dim, k_sim=, repetitions=, projection=, final_dim=, seed=)``),
for each repetition ``r = 0 .. repetitions - 1``:

1. **Partition.** ``k_sim`` Gaussian hyperplanes ``g_1 .. g_k`` (SimHash) cut
   the token space into ``P = 2**k_sim`` partitions: token ``x`` falls into
   ``p(x) = sum_i [<x, g_i> > 0] * 2**(i - 1)``.
2. **Aggregate.** Per partition, a query *sums* its tokens; a document
   *averages* its tokens. A document partition that received no token is
   filled with the document's token whose SimHash code is nearest to the
   partition's code in Hamming distance (the first such token on ties).
   Query partitions without tokens stay zero.
3. **Project** (``projection=d_proj``, optional): each partition's vector is
   multiplied by a random ``(dim, d_proj)`` matrix of ``+-1 / sqrt(d_proj)``
   (inner products are preserved in expectation).

The repetitions' ``P`` blocks are concatenated: ``repetitions * P * d_proj``
values (``d_proj = dim`` without a projection). ``final_dim`` (optional)
compresses that by a Count-Sketch: every coordinate is added, with a random
sign, into one of ``final_dim`` buckets.

Why it works: per repetition, ``<FDE_q, FDE_d>`` adds for each query token
``<q_t, average of the document's tokens in q_t's partition>``. Tokens near
each other tend to share a partition, so that average stands in for
``max_j <q_t, d_j>``: the sum over repetitions is a (low-biased, since an
average is not a maximum) estimate of ``repetitions * MaxSim(q, d)`` whose
ranking of documents follows MaxSim's; exact MaxSim over the best candidates
then restores the order (:func:`search`). Query weights ``w_t`` scale the
tokens in the sum, which estimates the weighted MaxSim.

Every random draw comes from ``numpy.random.default_rng([seed, stream, r])``:
the same parameters give the same transform on every machine, so documents
and queries encoded in different processes (or after a restart) agree;
nothing needs saving but the parameters (:attr:`FDE.params`).

>>> import numpy as np
>>> from flatcoat.muvera import FDE
>>> fde = FDE(8, k_sim=2, repetitions=3, seed=1)
>>> rng = np.random.default_rng(0)
>>> docs = [rng.standard_normal((5, 8)).astype(np.float32) for _ in range(4)]
>>> fde.encode_documents(docs).shape, fde.encode_queries(docs[0]).shape, fde.output_dim
((4, 96), (1, 96), 96)
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ._validate import as_int, as_k
from .multivector import _packed_docs, _parse_queries, parse_query_weights

__all__ = ["FDE", "encode_index", "search", "DEFAULT_PROJECTED"]

#: The FDE that ``flatcoat index --muvera`` and ``flatcoat eval --muvera`` build without arguments: 16 cells,
#: 10 repetitions, each cell projected to 16 values (2,560 dimensions whatever the token dim; docs/muvera.md).
DEFAULT_PROJECTED = {"k_sim": 4, "repetitions": 10, "projection": 16}

MAX_K_SIM = 16  # 65,536 partitions per repetition: already far past any useful encoding
# Temporaries are bounded by processing documents in chunks of about this many tokens.
_CHUNK_TOKENS = 1 << 18
# ... and of at most this many (document, partition, partition) triples (the empty-partition fill).
_CHUNK_FILL = 1 << 22
# Random streams of numpy.random.default_rng([seed, stream, repetition]).
_SIMHASH, _PROJECTION, _SKETCH = 0, 1, 2


class FDE:
    """A Fixed Dimensional Encoding: token bags -> vectors whose inner products approximate MaxSim.

    Parameters
    ----------
    dim: token vector dimension.
    k_sim: SimHash hyperplanes per repetition; ``2**k_sim`` partitions (0 to 16; 0 is one
        partition: a document's mean token against the sum of the query's).
    repetitions: independent partitionings, concatenated (>= 1).
    projection: ``d_proj``, the dimension each partition's vector is projected to by a random
        +-1 matrix (``1 .. dim``), or None to keep the tokens' ``dim`` values.
    final_dim: the output dimension after a Count-Sketch of the concatenation, or None
        (``1 .. repetitions * 2**k_sim * d_proj``).
    seed: a non-negative integer; the transform is a function of the parameters only.

    Everything after ``dim`` is keyword-only. Output vectors have :attr:`output_dim` float32
    values. Documents use :meth:`encode_documents` (average per partition, empty partitions
    filled), queries :meth:`encode_queries` (sum per partition); only a query FDE against a
    document FDE approximates MaxSim.

    >>> import numpy as np
    >>> fde = FDE(4, k_sim=1, repetitions=2, projection=2, final_dim=6)
    >>> fde.output_dim, fde.partitions
    (6, 2)
    """

    def __init__(self, dim: int, *, k_sim: int = 4, repetitions: int = 10, projection: Optional[int] = None,
                 final_dim: Optional[int] = None, seed: int = 0):
        self._dim = as_int(dim, "dim", 1)
        self._k_sim = as_int(k_sim, "k_sim", 0, MAX_K_SIM)
        self._repetitions = as_int(repetitions, "repetitions", 1)
        self._projection = None if projection is None else as_int(projection, "projection", 1, self._dim)
        self._seed = as_int(seed, "seed", 0)
        raw = self._repetitions * self.partitions * self.block_dim
        self._final_dim = None if final_dim is None else as_int(final_dim, "final_dim", 1, raw)
        # SimHash hyperplanes, all repetitions side by side: (dim, repetitions * k_sim).
        planes = [np.random.default_rng([self._seed, _SIMHASH, r]).standard_normal((self._dim, self._k_sim))
                  for r in range(self._repetitions)]
        self._planes = np.concatenate(planes, axis=1) if self._k_sim else np.zeros((self._dim, 0))
        self._planes32 = self._planes.astype(np.float32)
        self._plane_norms = np.linalg.norm(self._planes, axis=0)
        self._bit_values = (1 << np.arange(self._k_sim)).astype(np.int64)
        self._projections = None
        if self._projection is not None:
            scale = np.float32(1.0 / np.sqrt(self._projection))
            self._projections = np.stack([
                np.random.default_rng([self._seed, _PROJECTION, r]).choice(
                    np.array([-1.0, 1.0], np.float32), (self._dim, self._projection)) * scale
                for r in range(self._repetitions)])  # (R, dim, d_proj)
            # All repetitions' matrices stacked and transposed: (R * d_proj, dim), one product per batch.
            self._projections_t = np.ascontiguousarray(np.concatenate(list(self._projections), axis=1).T)
        self._sketch = None
        if self._final_dim is not None:
            rng = np.random.default_rng([self._seed, _SKETCH, 0])
            bucket = rng.integers(0, self._final_dim, raw)
            sign = rng.choice(np.array([-1.0, 1.0]), raw)
            order = np.argsort(bucket, kind="stable")
            self._sketch = (order, sign[order], np.searchsorted(bucket[order], np.arange(self._final_dim + 1)))
        # Hamming distance between partition codes, for the empty-partition fill: (P, P).
        codes = np.arange(self.partitions, dtype=np.int64)
        xor = codes[:, None] ^ codes[None, :]
        self._hamming = sum((xor >> i) & 1 for i in range(self._k_sim)) if self._k_sim else np.zeros((1, 1), np.int64)

    # ------------------------------------------------------------------ parameters

    @property
    def dim(self) -> int:
        """Token vector dimension."""
        return self._dim

    @property
    def k_sim(self) -> int:
        """SimHash hyperplanes per repetition."""
        return self._k_sim

    @property
    def repetitions(self) -> int:
        return self._repetitions

    @property
    def projection(self) -> Optional[int]:
        """``d_proj``, or None (no projection)."""
        return self._projection

    @property
    def final_dim(self) -> Optional[int]:
        return self._final_dim

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def partitions(self) -> int:
        """Partitions per repetition, ``2**k_sim``."""
        return 1 << self._k_sim

    @property
    def block_dim(self) -> int:
        """Values per partition: ``projection`` or ``dim``."""
        return self._dim if self._projection is None else self._projection

    @property
    def output_dim(self) -> int:
        """Values per encoding: ``final_dim`` or ``repetitions * partitions * block_dim``."""
        if self._final_dim is not None:
            return self._final_dim
        return self._repetitions * self.partitions * self.block_dim

    @property
    def params(self) -> dict:
        """The constructor's keyword arguments: ``FDE(**fde.params)`` is the same transform."""
        return {"dim": self._dim, "k_sim": self._k_sim, "repetitions": self._repetitions,
                "projection": self._projection, "final_dim": self._final_dim, "seed": self._seed}

    def __repr__(self) -> str:
        return "FDE(" + ", ".join(f"{k}={v!r}" for k, v in self.params.items()) + ")"

    # ------------------------------------------------------------------ encoding

    def encode_documents(self, docs) -> np.ndarray:
        """Document FDEs: float32 ``(n_docs, output_dim)``.

        ``docs``: the forms of :meth:`MultiVectorIndex.add`: a list of (n_i, dim) token arrays (a list
        is always a list of documents), a 3-d (n_docs, n_tokens, dim) array or a ``(tokens, lengths)``
        tuple. Every document needs at least one token; tokens must be finite.
        Each partition holds the average of the document's tokens in it; an empty partition the
        token nearest to it by SimHash Hamming distance.
        """
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        return self._encode(tokens, lengths, None, document=True)

    def encode_queries(self, queries, query_weights=None) -> np.ndarray:
        """Query FDEs: float32 ``(n_queries, output_dim)``; one (t, dim) query gives ``(1, output_dim)``.

        ``queries``: the forms of :meth:`MultiVectorIndex.search` (one (t, dim) matrix, a list of
        them, a 3-d array or a ``(tokens, lengths)`` tuple). ``query_weights`` (optional, see
        :func:`flatcoat.multivector.parse_query_weights`) scale each token in its partition's sum,
        so that inner products estimate the weighted MaxSim.
        """
        tokens, offsets, _ = _parse_queries(queries, self._dim)
        weights = parse_query_weights(query_weights, offsets)
        return self._encode(tokens, np.diff(offsets), weights, document=False)

    def _encode(self, tokens: np.ndarray, lengths: np.ndarray, weights: Optional[np.ndarray],
                document: bool) -> np.ndarray:
        n = lengths.size
        out = np.empty((n, self.output_dim), dtype=np.float32)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        per_chunk = max(1, _CHUNK_FILL // (self.partitions * self.partitions)) if document else n
        d0 = 0
        while d0 < n:  # chunks of whole documents: at most _CHUNK_TOKENS tokens (or one document)
            d1 = int(np.searchsorted(offsets, offsets[d0] + _CHUNK_TOKENS, side="right")) - 1
            d1 = min(max(d1, d0 + 1), d0 + per_chunk, n)
            t0, t1 = int(offsets[d0]), int(offsets[d1])
            w = None if weights is None else weights[t0:t1]
            raw = self._encode_chunk(tokens[t0:t1], lengths[d0:d1], w, document)
            out[d0:d1] = raw if self._sketch is None else self._count_sketch(raw)
            d0 = d1
        return out

    def _encode_chunk(self, x: np.ndarray, lengths: np.ndarray, weights: Optional[np.ndarray],
                      document: bool) -> np.ndarray:
        """Raw FDEs (no Count-Sketch) of the documents ``lengths`` whose tokens are ``x``: (n, R * P * b)."""
        n, n_tok, parts, width = lengths.size, x.shape[0], self.partitions, self.block_dim
        doc = np.repeat(np.arange(n, dtype=np.int64), lengths)
        codes = np.zeros((n_tok, self._repetitions), dtype=np.int64)
        if self._k_sim:
            bits = (self._sides(x) > 0).reshape(n_tok, self._repetitions, self._k_sim)
            for i in range(self._k_sim):
                codes |= bits[:, :, i].astype(np.int64) << i
        # The values to aggregate, one row per output coordinate of a partition, one column per token:
        # the tokens transposed (shared by every repetition) or all repetitions' projections at once.
        if self._projections is None:
            columns = np.ascontiguousarray(x.T)
        else:
            columns = self._projections_t @ x.T  # (R * d_proj, n_tok)
        if weights is not None:
            columns = columns * weights[None, :]
        out = np.empty((n, self._repetitions, parts, width), dtype=np.float32)
        for r in range(self._repetitions):
            block = columns if self._projections is None else columns[r * width:(r + 1) * width]
            key = doc * parts + codes[:, r]  # the (document, partition) cell of each token
            cells = np.empty((width, n * parts))
            for j in range(width):  # a column-wise bincount: sequential float64 sums, no scatter conflicts
                cells[j] = np.bincount(key, weights=block[j], minlength=n * parts)
            if document:
                counts = np.bincount(key, minlength=n * parts)
                filled = counts > 0
                cells[:, filled] /= counts[filled]
                if not filled.all():
                    cells[:, ~filled] = block[:, self._nearest_tokens(key, filled, n)]
            out[:, r] = cells.T.reshape(n, parts, width)
        return out.reshape(n, -1)

    def _sides(self, x: np.ndarray) -> np.ndarray:
        """``x @ planes`` (n_tok, R * k_sim) with the signs of a per-token computation: the float32
        product, where it is within 1e-3 of zero (relative to the norms) recomputed per entry in
        float64, so a token's partition never depends on the batch it is encoded in."""
        side = x @ self._planes32
        near = np.abs(side) < 1e-3 * np.linalg.norm(x, axis=1)[:, None] * self._plane_norms[None, :]
        rows, cols = np.nonzero(near)
        if rows.size:
            side[rows, cols] = np.einsum("ij,ij->i", x[rows].astype(np.float64), self._planes.T[cols])
        return side

    def _nearest_tokens(self, key: np.ndarray, filled: np.ndarray, n: int) -> np.ndarray:
        """For each empty (document, partition) cell, in cell order: the index of the document's
        token whose code is nearest to the partition's by Hamming distance (the first one on ties)."""
        parts = self.partitions
        first = np.full(n * parts, key.size, dtype=np.int64)  # a cell's first token; key.size: none
        cells, at = np.unique(key, return_index=True)
        first[cells] = at
        first = first.reshape(n, 1, parts)
        # Over the document's non-empty partitions q: the smallest Hamming(p, q), then the smallest first token.
        rank = self._hamming[None] * (key.size + 1) + first  # (n, P (p), P (q))
        rank[np.broadcast_to(first == key.size, rank.shape)] = np.iinfo(np.int64).max  # never an empty q
        best = np.take_along_axis(first, rank.argmin(axis=2)[:, None, :], axis=2)  # (n, 1, P)
        return best.reshape(n * parts)[~filled]

    def _count_sketch(self, raw: np.ndarray) -> np.ndarray:
        """``final_dim`` buckets: each raw coordinate added with its sign into its bucket (float64
        prefix sums over the coordinates grouped by bucket, differenced at the bucket bounds)."""
        order, sign, bounds = self._sketch
        total = np.zeros((raw.shape[0], raw.shape[1] + 1))
        np.cumsum(raw[:, order] * sign, axis=1, out=total[:, 1:])
        return (total[:, bounds[1:]] - total[:, bounds[:-1]]).astype(np.float32)


# ----------------------------------------------------------------------------- the first stage and its re-ranking


def encode_index(fde: FDE, docs, ids=None, *, storage: str = "f32", batch: int = 4096):
    """A :class:`flatcoat.DenseIndex` (metric ``"ip"``) of the documents' FDEs.

    ``docs``: as :meth:`FDE.encode_documents`; ``ids``: the documents' ids, the same as in the
    :class:`flatcoat.MultiVectorIndex` that re-ranks (default 0, 1, ...). ``storage``: the dense
    index's storage (``"f32"``, ``"f16"``, ``"int8"``). Documents are encoded ``batch`` at a time
    (a list of documents or a 3-d array; a ``(tokens, lengths)`` tuple is encoded at once).

    >>> import numpy as np, flatcoat
    >>> from flatcoat.muvera import FDE, encode_index
    >>> docs = [np.eye(4, dtype=np.float32)[i:i + 2] for i in range(3)]
    >>> len(encode_index(FDE(4, k_sim=1, repetitions=2), docs, ids=[5, 6, 7]))
    3
    """
    from .dense import DenseIndex

    if not isinstance(fde, FDE):
        raise TypeError(f"fde: expected a flatcoat.muvera.FDE, got {type(fde).__name__}")
    batch = as_int(batch, "batch", 1)
    index = DenseIndex(fde.output_dim, metric="ip", storage=storage)
    if isinstance(docs, tuple) or not hasattr(docs, "__len__") or isinstance(docs, (str, bytes)):
        vectors = fde.encode_documents(docs)
    else:
        n = len(docs)
        vectors = np.empty((n, fde.output_dim), dtype=np.float32)
        for start in range(0, n, batch):
            vectors[start:start + batch] = fde.encode_documents(docs[start:start + batch])
    index.add(vectors, ids=ids)
    return index


def search(fde: FDE, fde_index, index, queries, k: int = 10, *, rerank: int = 100,
           query_weights=None, filter=None) -> Tuple[np.ndarray, np.ndarray]:
    """MUVERA search: the ``rerank`` best documents by FDE inner product, re-ranked by exact MaxSim.

    ``fde_index``: a dense index of the documents' FDEs (:func:`encode_index`, or any index whose
    ``search(vectors, k)`` returns ``(scores, ids)``); ``index``: the
    :class:`flatcoat.MultiVectorIndex` holding the same documents under the same ids, which scores
    the candidates (``index.search(queries, k, subset=candidates)``): exact MaxSim for f32, and for
    an int8 or f16 index built with ``keep_float=True`` too (every candidate is re-scored from the
    float copy). ``rerank`` (``R >= k``) is the depth of the first stage. The result follows the
    result rule: ``(scores, ids)`` of shape ``(q, min(k, len(index)))``; a query with fewer than
    ``k`` candidates is padded with -1 / -inf. ``filter``: only documents it allows (a dict predicate
    over ``index``'s attributes, docs/filters.md, or a 1-d sequence of allowed ids) are candidates;
    the FDE index is searched with the ids ``index.matches(filter)`` allows, so it needs no attributes.

    >>> import numpy as np, flatcoat
    >>> from flatcoat.muvera import FDE, encode_index, search
    >>> rng = np.random.default_rng(0)
    >>> docs = [rng.standard_normal((6, 8)).astype(np.float32) for _ in range(50)]
    >>> mv = flatcoat.MultiVectorIndex(8); ids = mv.add(docs)
    >>> fde = FDE(8, k_sim=2, repetitions=4)
    >>> scores, found = search(fde, encode_index(fde, docs), mv, docs[3][:3], k=2, rerank=20)
    >>> int(found[0, 0])
    3
    """
    if not isinstance(fde, FDE):
        raise TypeError(f"fde: expected a flatcoat.muvera.FDE, got {type(fde).__name__}")
    k = as_k(k)
    rerank = as_k(rerank, "rerank")
    if rerank < k:
        raise ValueError(f"rerank: must be at least k ({k}), got {rerank}")
    encoded = fde.encode_queries(queries, query_weights)
    if isinstance(filter, dict):
        filter = index.matches(filter)
    _, candidates = fde_index.search(encoded, k=rerank, filter=filter)
    exact = {"rerank": max(k, candidates.shape[1])} if getattr(index, "keep_float", False) else {}
    return index.search(queries, k, subset=list(candidates), query_weights=query_weights, **exact)
