"""Fusion of ranked lists: reciprocal rank fusion, a normalised convex combination, and the union cascade.

Each input list is one search's result, ``(scores, ids)`` of shape
``(q, n_i)`` (any float scores, higher is better; id ``-1`` is padding and is
ignored). Within a list a row is ranked by score, best first, ties by the
smaller id, and only its first ``depth`` valid entries take part.

- ``"rrf"``: ``fused(d) = sum_lists 1 / (rrf_k + rank(d))``, ``rank`` from 1;
  every list has weight 1 and a list that does not return ``d`` adds nothing.
- ``"convex"``: per query and per list, the returned scores are min-max
  normalised to ``[0, 1]`` (a list with one result, or with all its scores
  equal, gives each of them 1); ``fused(d) = sum_lists w_i * norm_i(d)``, 0 from
  a list that does not return ``d``. The lexical list(s) share ``1 - alpha``
  equally and the other (semantic: dense, multi-vector) lists share ``alpha``
  equally: with one dense and one lexical list, ``alpha * dense + (1 - alpha) *
  lexical``; with dense, multi-vector and lexical, ``alpha / 2``, ``alpha / 2``
  and ``1 - alpha``.
- ``"union"``: the distinct ids of all lists (:func:`union_candidates`), for
  the caller to score again exactly (MaxSim with
  ``MultiVectorIndex.search(subset=...)``); :func:`fuse` refuses it.

Results follow the search rule: ``(scores float32, ids int64)`` of shape
``(q, min(k, c))`` where ``c`` is the largest number of distinct candidates of
a query; best first, ties broken by the smaller id; a query with fewer
candidates is padded with id ``-1`` and score ``-inf``. Fused scores are summed
in float64, list by list in the order given, then returned as float32.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ._validate import as_int, as_k

__all__ = ["Hybrid", "DEFAULT_HYBRID", "METHODS", "as_hybrid", "fuse", "union_candidates"]

METHODS = ("rrf", "convex", "union")


@dataclass(frozen=True)
class Hybrid:
    """A fusion setting.

    ``method``: ``"rrf"``, ``"convex"`` or ``"union"`` (see the module).
    ``alpha``: convex only, the weight of the semantic (dense, multi-vector)
    lists; the lexical list gets ``1 - alpha``. ``rrf_k``: rrf only, the rank
    constant (at least 1). ``depth``: candidates taken from each list; ``None``
    is ``max(10 * k, 100)`` (:meth:`candidates`).

    >>> Hybrid("convex", alpha=0.7).candidates(10)
    100
    """

    method: str = "rrf"
    alpha: float = 0.5
    rrf_k: int = 60
    depth: Optional[int] = None

    def __post_init__(self):
        if not isinstance(self.method, str):
            raise TypeError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {type(self.method).__name__}")
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {self.method!r}")
        if isinstance(self.alpha, (bool, np.bool_)) or not isinstance(self.alpha, numbers.Real):
            raise TypeError(f"alpha: expected a number from 0 to 1, got {type(self.alpha).__name__} {self.alpha!r}")
        if not 0.0 <= float(self.alpha) <= 1.0:  # NaN fails too
            raise ValueError(f"alpha: expected a number from 0 to 1 (the weight of the dense list), got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "rrf_k", as_int(self.rrf_k, "rrf_k", 1))
        if self.depth is not None:
            object.__setattr__(self, "depth", as_k(self.depth, "depth"))

    def candidates(self, k: int) -> int:
        """Candidates taken from each list for ``k`` results: ``depth``, or ``max(10 * k, 100)``."""
        k = as_k(k)
        return self.depth if self.depth is not None else max(10 * k, 100)


#: The default setting, chosen by the table of docs/hybrid.md (bench/hybrid_table.py).
DEFAULT_HYBRID = Hybrid("rrf", rrf_k=60)


def as_hybrid(value, name: str = "hybrid") -> Hybrid:
    """A :class:`Hybrid` from ``True`` (:data:`DEFAULT_HYBRID`), a method name (that method, other fields
    at their defaults), a ``Hybrid``, or a dict of its fields; anything else is a TypeError or ValueError
    naming ``name`` and the bad part.

    >>> as_hybrid({"method": "convex", "alpha": 0.3}).alpha
    0.3
    """
    if isinstance(value, Hybrid):
        return value
    if value is True or (isinstance(value, np.bool_) and bool(value)):
        return DEFAULT_HYBRID
    if isinstance(value, str):
        if value not in METHODS:
            raise ValueError(f"{name}: unknown method {value!r}; expected one of {', '.join(map(repr, METHODS))}, "
                             "True (the default setting), a Hybrid or a dict of its fields")
        return Hybrid(value)
    if isinstance(value, Mapping):
        known = [f.name for f in fields(Hybrid)]
        for key in value:
            if key not in known:
                raise ValueError(f"{name}: unknown field {key!r}; a Hybrid has {', '.join(known)}")
        try:
            return Hybrid(**value)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    raise TypeError(f"{name}: expected True (the default setting), a method name ({', '.join(map(repr, METHODS))}), "
                    f"a Hybrid or a dict of its fields, got {type(value).__name__} {value!r}")


# ----------------------------------------------------------------------------- lists


def _as_lists(lists, name: str = "lists") -> List[Tuple[np.ndarray, np.ndarray]]:
    if isinstance(lists, tuple) and len(lists) == 2 and isinstance(lists[0], np.ndarray) and lists[0].ndim == 2:
        raise TypeError(f"{name}: expected a sequence of (scores, ids) pairs; wrap one pair in a list")
    if not isinstance(lists, Sequence) or not len(lists):
        raise TypeError(f"{name}: expected a non-empty sequence of (scores, ids) pairs, got {type(lists).__name__}")
    out, q = [], None
    for i, pair in enumerate(lists):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}[{i}]: expected a (scores, ids) pair, got {type(pair).__name__}")
        scores, ids = np.asarray(pair[0]), np.asarray(pair[1])
        if scores.dtype.kind not in "fiu" or ids.dtype.kind not in "iu":
            raise TypeError(f"{name}[{i}]: expected float scores and integer ids, got {scores.dtype} and {ids.dtype}")
        if scores.ndim != 2 or scores.shape != ids.shape:
            raise ValueError(f"{name}[{i}]: scores {scores.shape} and ids {ids.shape} must be two arrays of one "
                             "(q, n) shape")
        if q is not None and scores.shape[0] != q:
            raise ValueError(f"{name}[{i}]: has {scores.shape[0]} queries, {name}[0] has {q}")
        q = scores.shape[0]
        out.append((scores.astype(np.float64), ids.astype(np.int64)))
    return out


def _ranked(scores: np.ndarray, ids: np.ndarray, depth: Optional[int], name: str):
    """Rows sorted best first (ties: smaller id), valid entries first, cut to ``depth`` columns.

    Returns ``(scores, ids, valid)``; a duplicate id within a row is an error.
    """
    valid = ids >= 0
    if np.any(valid & ~np.isfinite(scores)):
        row, col = map(int, np.argwhere(valid & ~np.isfinite(scores))[0])
        raise ValueError(f"{name}: query {row}, id {int(ids[row, col])} has the non-finite score {scores[row, col]}; "
                         "only padding (id -1) may have an infinite score")
    # Sort keys: invalid last, then descending score, then ascending id.
    order = np.lexsort((ids, -np.where(valid, scores, 0.0), ~valid), axis=1)
    scores, ids, valid = (np.take_along_axis(a, order, 1) for a in (scores, ids, valid))
    if depth is not None:
        scores, ids, valid = scores[:, :depth], ids[:, :depth], valid[:, :depth]
    by_id = np.sort(np.where(valid, ids, -1), axis=1)
    dup = (by_id[:, 1:] == by_id[:, :-1]) & (by_id[:, 1:] >= 0)
    if dup.any():
        row, col = map(int, np.argwhere(dup)[0])
        raise ValueError(f"{name}: query {row} holds id {int(by_id[row, col])} twice; a result list has distinct ids")
    return scores, ids, valid


def _weights(hybrid: Hybrid, n_lists: int, lexical) -> np.ndarray:
    if lexical is None:
        lexical_set = set()
    else:
        picks = [lexical] if isinstance(lexical, numbers.Integral) and not isinstance(lexical, bool) else list(lexical)
        lexical_set = set()
        for p in picks:
            p = as_int(p, "lexical", -n_lists, n_lists - 1)
            lexical_set.add(p % n_lists)
    if hybrid.method == "rrf":
        return np.ones(n_lists)
    n_lex = len(lexical_set)
    n_sem = n_lists - n_lex
    return np.array([(1.0 - hybrid.alpha) / n_lex if i in lexical_set else hybrid.alpha / n_sem
                     for i in range(n_lists)])


def fuse(hybrid: Hybrid, lists, k: int, *, lexical=-1) -> Tuple[np.ndarray, np.ndarray]:
    """Fuses result lists into one ranking of ``k`` per query (``"rrf"`` or ``"convex"``).

    ``lists``: a sequence of ``(scores (q, n_i), ids (q, n_i))``, higher score
    better, id -1 padding. ``lexical``: the position (or positions) in
    ``lists`` of the lexical list(s), by default the last; ``None`` when there
    is none (convex weights, see the module; rrf ignores it). Each list
    contributes its first ``hybrid.candidates(k)`` entries. Returns ``(scores
    float32 (q, k'), ids int64 (q, k'))``, ``k' = min(k, most distinct
    candidates of a query)``, best first, ties by the smaller id, padded with
    -1 / -inf.

    >>> s1, i1 = np.array([[3.0, 2.0, 1.0]]), np.array([[7, 8, 9]])
    >>> s2, i2 = np.array([[5.0, 4.0, -np.inf]]), np.array([[9, 7, -1]])
    >>> fuse(Hybrid("rrf", rrf_k=1), [(s1, i1), (s2, i2)], k=2)[1]
    array([[7, 9]])
    """
    if not isinstance(hybrid, Hybrid):
        raise TypeError(f"hybrid: expected a Hybrid (see as_hybrid), got {type(hybrid).__name__}")
    if hybrid.method == "union":
        raise ValueError("hybrid: method 'union' is a candidate set, not a fused ranking; take "
                         "union_candidates(lists) and score it again (MultiVectorIndex.search(subset=...))")
    k = as_k(k)
    pairs = _as_lists(lists)
    weights = _weights(hybrid, len(pairs), lexical)
    depth = hybrid.candidates(k)
    q = pairs[0][0].shape[0]
    qs, ids_all, contrib = [], [], []
    for i, (scores, ids) in enumerate(pairs):
        scores, ids, valid = _ranked(scores, ids, depth, f"lists[{i}]")
        if hybrid.method == "rrf":
            ranks = np.arange(1, ids.shape[1] + 1, dtype=np.float64)
            part = np.broadcast_to(weights[i] / (hybrid.rrf_k + ranks), ids.shape)
        else:
            lo = np.where(valid, scores, np.inf).min(axis=1, initial=np.inf)[:, None]
            hi = np.where(valid, scores, -np.inf).max(axis=1, initial=-np.inf)[:, None]
            lo, hi = np.where(np.isfinite(lo), lo, 0.0), np.where(np.isfinite(hi), hi, 0.0)  # rows of padding
            span = hi - lo
            safe = np.where(valid, scores, lo)
            norm = np.where(span > 0, (safe - lo) / np.where(span > 0, span, 1.0), 1.0)
            part = weights[i] * norm
        rows = np.broadcast_to(np.arange(q)[:, None], ids.shape)
        qs.append(rows[valid])
        ids_all.append(ids[valid])
        contrib.append(part[valid])
    qv, iv, cv = np.concatenate(qs), np.concatenate(ids_all), np.concatenate(contrib)
    # Group (query, id): a stable sort keeps list order inside a group, so sums run list by list.
    order = np.lexsort((iv, qv))
    qv, iv, cv = qv[order], iv[order], cv[order]
    if qv.size:
        starts = np.flatnonzero(np.r_[True, (qv[1:] != qv[:-1]) | (iv[1:] != iv[:-1])])
        gq, gi = qv[starts], iv[starts]
        # Sequential sums in group order (at most one entry per list): add each group's j-th entry in turn.
        gs = np.zeros(starts.size)
        sizes = np.diff(np.r_[starts, qv.size])
        for j in range(int(sizes.max())):
            has = sizes > j
            gs[has] += cv[starts[has] + j]
    else:
        gq = gi = np.zeros(0, np.int64)
        gs = np.zeros(0)
    counts = np.bincount(gq, minlength=q)
    width = min(k, int(counts.max()) if q else 0)
    out_scores = np.full((q, width), -np.inf, dtype=np.float32)
    out_ids = np.full((q, width), -1, dtype=np.int64)
    order = np.lexsort((gi, -gs, gq))
    gq, gi, gs = gq[order], gi[order], gs[order]
    first = np.r_[0, np.cumsum(counts)[:-1]]
    pos = np.arange(gq.size) - first[gq]
    keep = pos < width
    out_scores[gq[keep], pos[keep]] = gs[keep]
    out_ids[gq[keep], pos[keep]] = gi[keep]
    return out_scores, out_ids


def union_candidates(lists, depth: Optional[int] = None) -> List[np.ndarray]:
    """Per query, the distinct ids (int64, ascending) of all ``lists`` (padding -1 left out).

    ``depth``: take only each list's first ``depth`` entries (ranked by score,
    ties by the smaller id); ``None`` takes every entry. For the ``"union"``
    method: pass the result as ``subset=`` to ``MultiVectorIndex.search``.

    >>> union_candidates([(np.array([[2.0, 1.0]]), np.array([[5, 3]])), (np.array([[1.0, 0.0]]), np.array([[3, -1]]))])
    [array([3, 5])]
    """
    if depth is not None:
        depth = as_k(depth, "depth")
    pairs = _as_lists(lists)
    q = pairs[0][0].shape[0]
    qs, ids_all = [], []
    for i, (scores, ids) in enumerate(pairs):
        _, ids, valid = _ranked(scores, ids, depth, f"lists[{i}]")
        qs.append(np.broadcast_to(np.arange(q)[:, None], ids.shape)[valid])
        ids_all.append(ids[valid])
    qv, iv = np.concatenate(qs), np.concatenate(ids_all)
    order = np.lexsort((iv, qv))
    qv, iv = qv[order], iv[order]
    distinct = np.r_[True, (qv[1:] != qv[:-1]) | (iv[1:] != iv[:-1])] if qv.size else np.zeros(0, bool)
    qv, iv = qv[distinct], iv[distinct]
    return np.split(iv, np.cumsum(np.bincount(qv, minlength=q))[:-1])
