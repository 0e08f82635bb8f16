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
"""

from __future__ import annotations

import numbers
import os
from typing import Optional, Tuple

import numpy as np

from . import _core
from ._persist import IndexFormatError, register_kind, save_index
from ._storage import grown
from ._validate import RWLock, as_ids, as_k

STORAGES = ("f32", "f16", "int8")
_KIND = "multivector"
_TOKEN_DTYPES = {"f32": np.dtype(np.float32), "f16": np.dtype(np.uint16), "int8": np.dtype(np.uint8)}

__all__ = ["MultiVectorIndex", "maxsim"]


# ----------------------------------------------------------------------------- input checks


def _float_tokens(x, name: str, dim: Optional[int], keep_f16: bool = False) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array (float16 kept as is when ``keep_f16``)."""
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name}: cannot be read as an array ({exc}); pass a numpy array of shape (n_tokens, dim)") from None
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
                raise ValueError(f"{name}: {item}s of 0 tokens; every {item} needs at least one token vector")
            tokens = _float_tokens(docs.reshape(n * t, docs.shape[2]), name, dim, keep_f16)
            return tokens, np.full(n, t, dtype=np.int64)
        raise ValueError(
            f"{name}: a {docs.ndim}-d array is ambiguous; pass a list of (n_tokens, dim) arrays, "
            "a 3-d (n_docs, n_tokens, dim) array or a (tokens, lengths) tuple"
        )
    if isinstance(docs, (str, bytes)) or not hasattr(docs, "__len__"):
        raise TypeError(f"{name}: expected a list of (n_tokens, dim) arrays or a (tokens, lengths) tuple, got {type(docs).__name__}")
    parts = []
    for i, doc in enumerate(docs):
        part = _float_tokens(doc, f"{name}[{i}]", dim, keep_f16)
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


def _queries(queries, dim: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(tokens, offsets, single) for one (t, dim) query, a list of them or a 3-d batch."""
    if isinstance(queries, np.generic):
        queries = np.asarray(queries)
    single = isinstance(queries, np.ndarray) and queries.ndim == 2
    if single:
        tokens = _float_tokens(queries, "queries", dim)
        if tokens.shape[0] == 0:
            raise ValueError("queries: the query has no tokens; a query needs at least one token vector")
        return tokens, np.array([0, tokens.shape[0]], dtype=np.int64), True
    if isinstance(queries, np.ndarray) and queries.ndim not in (2, 3):
        raise ValueError(
            f"queries: expected one (n_tokens, {dim}) array, a list of them or a 3-d (n_queries, n_tokens, {dim}) "
            f"array, got a {queries.ndim}-d array"
        )
    tokens, lengths = _packed_docs(queries, dim, "queries", item="query")
    if lengths.size == 0:
        raise ValueError("queries: no queries given")
    return tokens, _offsets_of(lengths), False


def _weights(query_weights, offsets: np.ndarray, single: bool) -> Optional[np.ndarray]:
    if query_weights is None:
        return None
    lengths = np.diff(offsets)
    if single:
        parts = [query_weights]
    elif isinstance(query_weights, np.ndarray) and query_weights.ndim != 2:
        raise ValueError("query_weights: for several queries pass a list of 1-d arrays (or a 2-d array), one weight per query token")
    else:
        parts = list(query_weights)
    if len(parts) != lengths.size:
        raise ValueError(f"query_weights: expected weights for {lengths.size} queries, got {len(parts)}")
    out = []
    for i, (w, n) in enumerate(zip(parts, lengths)):
        w = np.asarray(w)
        where = "query_weights" if single else f"query_weights[{i}]"
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"{where}: expected {n} weights (one per query token), got shape {w.shape}")
        if w.size and not (np.issubdtype(w.dtype, np.floating) or np.issubdtype(w.dtype, np.integer)):
            raise TypeError(f"{where}: dtype {w.dtype} is not numeric; pass float32 weights")
        w = w.astype(np.float32)
        if not np.isfinite(w).all():
            raise ValueError(f"{where}: weights must be finite")
        out.append(w)
    return np.ascontiguousarray(np.concatenate(out))


def _quantize_int8(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token symmetric int8: codes in [-127, 127] stored as uint8 code + 128."""
    amax = np.abs(x).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int16) + 128
    return np.ascontiguousarray(codes.astype(np.uint8)), scale


# ----------------------------------------------------------------------------- the functional form


def maxsim(query, tokens, lengths, query_weights=None) -> np.ndarray:
    """MaxSim of a query against packed documents, without an index.

    ``query``: (t, dim) token vectors, or a list of such queries. ``tokens``:
    (total, dim) document tokens, all documents back to back; ``lengths``:
    (n_docs,) token counts (each >= 1, summing to ``total``). float16 tokens are
    scored as stored (widened to float32); other float dtypes as float32.
    ``query_weights``: optional per-query-token weights, shaped like the
    queries' token counts. Returns float32 scores (n_docs,) for one query,
    (n_queries, n_docs) for a list.

    >>> import numpy as np, flatcoat
    >>> q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    >>> docs = np.array([[1, 0], [0.5, 0.5], [0, 2]], dtype=np.float32)
    >>> flatcoat.maxsim(q, docs, [2, 1]).tolist()   # doc 0: 1 + 0.5, doc 1: 0 + 2
    [1.5, 2.0]
    """
    docs = _float_tokens(tokens, "tokens", None, keep_f16=True)
    lens = _lengths(lengths, "lengths", docs.shape[0])
    dim = docs.shape[1]
    if dim == 0:
        raise ValueError("tokens: token vectors must have at least one dimension")
    q, offsets, single = _queries(query, dim)
    weights = _weights(query_weights, offsets, single)
    storage = "f16" if docs.dtype == np.float16 else "f32"
    codes = docs.view(np.uint16) if storage == "f16" else docs
    scores = _core.maxsim_scores(storage, dim, codes, _offsets_of(lens), None, q, offsets, weights)
    return scores[0] if single else scores


# ----------------------------------------------------------------------------- the index


def _grown(a: np.ndarray, needed: int) -> np.ndarray:
    """`a` with at least `needed` rows, owned and writable (a loaded memory map is copied)."""
    return grown(a, needed)


class MultiVectorIndex:
    """Exact MaxSim search over multi-vector documents (ColBERT-style late interaction).

    Parameters
    ----------
    dim: token vector dimension.
    storage: ``"f32"``, ``"f16"`` or ``"int8"`` (per-token scale; see the module docs).

    Documents are stored packed (one token array plus offsets, no padding).
    Searches may run from many threads at once; ``add`` and ``remove`` wait for
    running searches and block new ones while they change the index.

    >>> import numpy as np, flatcoat
    >>> index = flatcoat.MultiVectorIndex(2)
    >>> index.add([np.array([[1, 0], [0, 1]], np.float32), np.array([[0.5, 0.5]], np.float32)]).tolist()
    [0, 1]
    >>> scores, ids = index.search(np.array([[1, 0], [0, 1]], np.float32), k=2)
    >>> ids.tolist(), scores.tolist()
    ([0, 1], [2.0, 1.0])
    """

    def __init__(self, dim: int, storage: str = "f32", device: str = "cpu"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dim: expected a positive integer, got {dim!r}")
        if storage not in STORAGES:
            raise ValueError(f"storage: expected one of {STORAGES}, got {storage!r}")
        self._dim = int(dim)
        self._storage = storage
        self._lock = RWLock()
        self._id_map = _core.IdMap()
        self._next_id = 0
        self._n_docs = 0
        self._n_tokens = 0
        self._tokens = np.empty((0, self._dim), dtype=_TOKEN_DTYPES[storage])
        self._scales = np.empty(0, dtype=np.float32) if storage == "int8" else None
        self._offsets = np.zeros(1, dtype=np.int64)
        self._ids = np.empty(0, dtype=np.int64)
        self._mirror = None
        if device != "cpu":
            from . import cuda_maxsim

            self._mirror = cuda_maxsim.mirror_for(device)

    # ------------------------------------------------------------------ properties

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def ids(self) -> np.ndarray:
        """A copy of the stored document ids, in storage order."""
        with self._lock.read():
            return self._ids[: self._n_docs].copy()

    @property
    def lengths(self) -> np.ndarray:
        """Token counts of the stored documents, in storage order."""
        with self._lock.read():
            return np.diff(self._offsets[: self._n_docs + 1])

    @property
    def num_tokens(self) -> int:
        return self._n_tokens

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (tokens, scales, offsets, ids)."""
        v = self._views()
        return sum(a.nbytes for a in v.values() if a is not None)

    def __len__(self) -> int:
        return self._n_docs

    @property
    def device(self) -> str:
        """Where searches run: "cpu", or "cuda:N" for a copy resident in GPU memory."""
        return "cpu" if self._mirror is None else self._mirror.device

    def to(self, device: str) -> "MultiVectorIndex":
        """Searches on ``device`` ("cpu", "cuda", "cuda:N") from now on; uploads now; returns self."""
        from . import cuda_maxsim

        mirror = cuda_maxsim.mirror_for(device, self._mirror)
        if mirror is not None:
            with self._lock.read():
                mirror.sync(self)
        self._mirror = mirror
        return self

    def _invalidate_device(self) -> None:
        if self._mirror is not None:
            self._mirror.invalidate()

    def __contains__(self, id_) -> bool:
        return bool(self._id_map.find(np.array([id_], dtype=np.int64))[0] >= 0)

    def __repr__(self) -> str:
        return f"MultiVectorIndex(dim={self._dim}, storage={self._storage!r}, count={len(self)}, tokens={self._n_tokens})"

    def _views(self) -> dict:
        return {
            "tokens": self._tokens[: self._n_tokens],
            "scales": None if self._scales is None else self._scales[: self._n_tokens],
            "offsets": self._offsets[: self._n_docs + 1],
            "ids": self._ids[: self._n_docs],
        }

    # ------------------------------------------------------------------ building

    def _encode(self, x: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if self._storage == "f32":
            return x, None
        if self._storage == "f16":
            with np.errstate(over="ignore"):  # reported just below
                half = x.astype(np.float16)
            if not np.isfinite(half).all():
                raise ValueError("docs: values exceed the float16 range (|x| > 65504); use storage='f32'")
            return half.view(np.uint16), None
        return _quantize_int8(x)

    def add(self, docs, ids=None) -> np.ndarray:
        """Adds documents; returns their int64 ids.

        ``docs``: a list of (n_i, dim) token arrays, a 3-d (n_docs, n_tokens,
        dim) array, or a tuple ``(tokens (total, dim), lengths (n_docs,))``.
        Every document needs at least one token. ``ids`` default to consecutive
        integers after the largest id so far; they must be distinct,
        non-negative and new, or the whole call fails and adds nothing.
        """
        tokens, lengths = _packed_docs(docs, self._dim, "docs")
        n = lengths.size
        codes, scales = self._encode(tokens)
        with self._lock.write():
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64) if ids is None else as_ids(ids, "ids", n)
            if n == 0:
                return ids
            duplicate = self._id_map.insert_new(ids, self._n_docs)
            if duplicate >= 0:
                raise ValueError(
                    f"ids: id {int(ids[duplicate])} is already in the index or repeated in this call; "
                    "ids must be unique (remove the old document first to replace it)"
                )
            try:
                t0, t1 = self._n_tokens, self._n_tokens + codes.shape[0]
                d0, d1 = self._n_docs, self._n_docs + n
                self._tokens = _grown(self._tokens, t1)
                self._tokens[t0:t1] = codes
                if self._scales is not None:
                    self._scales = _grown(self._scales, t1)
                    self._scales[t0:t1] = scales
                self._offsets = _grown(self._offsets, d1 + 1)
                self._offsets[d0 + 1 : d1 + 1] = t0 + np.cumsum(lengths)
                self._ids = _grown(self._ids, d1)
                self._ids[d0:d1] = ids
            except BaseException:
                self._id_map.erase(ids)
                raise
            self._n_tokens, self._n_docs = t1, d1
            self._next_id = max(self._next_id, int(ids.max()) + 1)
            self._invalidate_device()
            return ids

    def remove(self, ids) -> int:
        """Removes documents by id; every id must be present. Returns the number removed.

        The token array is compacted in place (documents keep their order), so
        the memory is reused at once; the cost is one pass over the tokens after
        the first removed document.
        """
        flat = np.atleast_1d(np.asarray(ids))
        ids = np.unique(as_ids(flat, "ids", flat.shape[0]))
        with self._lock.write():
            positions = self._id_map.find(ids)
            unknown = ids[positions < 0]
            if unknown.size:
                shown = ", ".join(str(int(i)) for i in unknown[:5])
                raise KeyError(f"ids: {unknown.size} id(s) not in the index ({shown}); nothing was removed")
            if ids.size == 0:
                return 0
            n, first = self._n_docs, int(positions.min())
            keep = np.ones(n, dtype=bool)
            keep[positions] = False
            offsets = self._offsets[: n + 1]
            lengths = np.diff(offsets)
            # Only the documents from `first` on move: select their kept token rows at once.
            tail_keep = keep[first:]
            token_keep = np.repeat(tail_keep, lengths[first:])
            t_first = int(offsets[first])
            self._tokens = _grown(self._tokens, 0)
            kept_tokens = self._tokens[t_first : self._n_tokens][token_keep]
            self._tokens[t_first : t_first + kept_tokens.shape[0]] = kept_tokens
            if self._scales is not None:
                self._scales = _grown(self._scales, 0)
                kept_scales = self._scales[t_first : self._n_tokens][token_keep]
                self._scales[t_first : t_first + kept_scales.shape[0]] = kept_scales
            kept_lengths = lengths[first:][tail_keep]
            self._offsets = _grown(self._offsets, 0)
            self._offsets[first + 1 : first + 1 + kept_lengths.size] = t_first + np.cumsum(kept_lengths)
            self._ids = _grown(self._ids, 0)
            moved_ids = self._ids[first:n][tail_keep]
            self._ids[first : first + moved_ids.size] = moved_ids
            self._n_docs = first + moved_ids.size
            self._n_tokens = t_first + kept_tokens.shape[0]
            self._id_map.erase(ids)
            if moved_ids.size:
                self._id_map.assign(np.ascontiguousarray(moved_ids), np.arange(first, self._n_docs, dtype=np.int64))
            self._invalidate_device()
            return int(ids.size)

    # ------------------------------------------------------------------ searching

    def _candidates(self, candidates, nq: int, single: bool) -> Tuple[np.ndarray, np.ndarray]:
        """Candidate ids -> (positions, offsets (nq + 1)); -1 entries (padding) are skipped."""
        if single:
            parts = [candidates]
        elif isinstance(candidates, np.ndarray) and candidates.ndim == 2:
            parts = list(candidates)
        elif isinstance(candidates, np.ndarray):
            raise ValueError(f"candidates: for {nq} queries pass a 2-d (n_queries, n) array or a list of 1-d id arrays")
        else:
            parts = list(candidates)
        if len(parts) != nq:
            raise ValueError(f"candidates: expected one id list per query ({nq}), got {len(parts)}")
        out = []
        for i, c in enumerate(parts):
            where = "candidates" if single else f"candidates[{i}]"
            c = np.asarray(c)
            if c.ndim != 1:
                raise ValueError(f"{where}: expected a 1-d array of document ids, got shape {c.shape}")
            if c.size and not np.issubdtype(c.dtype, np.integer):
                raise TypeError(f"{where}: dtype {c.dtype} is not an integer type; pass int64 ids")
            c = c.astype(np.int64)
            out.append(c[c != -1])
        lengths = np.array([c.size for c in out], dtype=np.int64)
        flat = np.ascontiguousarray(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)
        positions = self._id_map.find(flat)
        if (positions < 0).any():
            missing = flat[positions < 0]
            shown = ", ".join(str(int(i)) for i in missing[:5])
            raise ValueError(f"candidates: {missing.size} id(s) not in the index ({shown}); rerank only ids the index holds")
        return positions, _offsets_of(lengths)

    def search(self, queries, k: int = 10, candidates=None, query_weights=None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` best documents by MaxSim: ``(scores, ids)``.

        ``queries``: one (t, dim) query, giving (k,) arrays, or a list of queries
        (or a 3-d (n_queries, t, dim) array), giving (n_queries, k) arrays.
        Best first, ties by smaller id; fewer than ``k`` results are padded with
        id -1 and score -inf.

        ``candidates``: rerank mode. Document ids to score, per query (a 1-d
        array for one query; a list of 1-d arrays or a 2-d array for several);
        -1 entries are skipped, so a first stage's padded output can be passed
        as is; repeated ids count once; unknown ids are an error.

        ``query_weights``: per-query-token weights (e.g. idf), shaped like the
        queries' token counts: ``sum_t w_t * max_j <q_t, d_j>``.
        """
        k = as_k(k)
        if self._mirror is not None:  # CuPy queries and candidates must not reach the host checks
            with self._lock.read():
                return self._mirror.search(self, queries, k, candidates, query_weights)
        q, offsets, single = _queries(queries, self._dim)
        weights = _weights(query_weights, offsets, single)
        nq = offsets.size - 1
        with self._lock.read():
            v = self._views()
            positions = cand_offsets = None
            if candidates is not None:
                positions, cand_offsets = self._candidates(candidates, nq, single)
            scores, ids = _core.search_maxsim(
                self._storage, self._dim, v["tokens"], v["offsets"], v["scales"], v["ids"],
                q, offsets, weights, k, positions, cand_offsets,
            )
        return (scores[0], ids[0]) if single else (scores, ids)

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Writes the index to directory ``path`` atomically (see ``flatcoat.load``)."""
        with self._lock.read():
            v = self._views()
            arrays = {"tokens": v["tokens"], "offsets": v["offsets"], "ids": v["ids"]}
            if v["scales"] is not None:
                arrays["scales"] = v["scales"]
            meta = {
                "dim": self._dim, "storage": self._storage, "count": self._n_docs,
                "tokens": self._n_tokens, "next_id": self._next_id,
            }
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
        need(storage in STORAGES, "manifest.json", f"unknown storage {storage!r}")
        index = cls(dim, storage)
        expected = {"tokens": (_TOKEN_DTYPES[storage], (n_tokens, dim)), "offsets": (np.dtype(np.int64), (count + 1,)),
                    "ids": (np.dtype(np.int64), (count,))}
        if storage == "int8":
            expected["scales"] = (np.dtype(np.float32), (n_tokens,))
        for name, (dtype, shape) in expected.items():
            a = arrays.get(name)
            need(a is not None, f"{name}.npy", "missing from the manifest")
            need(a.dtype == dtype and a.shape == shape, f"{name}.npy",
                 f"expected {dtype.str}{list(shape)}, got {a.dtype.str}{list(a.shape)}")
        offsets = np.asarray(arrays["offsets"])
        need(int(offsets[0]) == 0, "offsets.npy", "must start at 0")
        need(bool(np.all(np.diff(offsets) > 0)), "offsets.npy", "must be strictly increasing (no empty document)")
        need(int(offsets[-1]) == n_tokens, "offsets.npy", f"last offset {int(offsets[-1])} != {n_tokens} token rows")
        ids = np.ascontiguousarray(arrays["ids"])
        need(count == 0 or int(ids.min()) >= 0, "ids.npy", "negative id")
        if storage == "int8":
            scales = np.asarray(arrays["scales"])
            need(bool(np.isfinite(scales).all()) and bool((scales > 0).all()), "scales.npy", "scales must be finite and positive")
            index._scales = arrays["scales"]
        duplicate = index._id_map.insert_new(ids, 0)
        need(duplicate < 0, "ids.npy", f"id {int(ids[duplicate]) if duplicate >= 0 else 0} appears twice")
        index._tokens, index._offsets, index._ids = arrays["tokens"], arrays["offsets"], arrays["ids"]
        index._n_docs, index._n_tokens = count, n_tokens
        index._next_id = max(next_id, int(ids.max()) + 1 if count else 0)
        return index


register_kind(_KIND, MultiVectorIndex._from_saved)
