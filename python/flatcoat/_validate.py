"""Input checks shared by the indexes: each failure names the argument and the fix."""

from __future__ import annotations

import numbers
import operator
import threading
from typing import Optional

import numpy as np

from . import _core


#: The largest id, and the largest k or re-ranking depth any search accepts (int64).
MAX_ID = MAX_K = int(np.iinfo(np.int64).max)


_FINITE_CHUNK_BYTES = 16 << 20


def as_float_matrix(x, name: str, dim: int, *, finite: bool = True) -> np.ndarray:
    """Returns ``x`` as a C-contiguous float32 (n, dim) array, copying only when needed.

    A 1-d array of length ``dim`` is one row. Rejects non-floating dtypes, other
    ranks, a wrong dimension and, unless ``finite=False`` (for a caller whose
    encoder checks while it reads, as ``dense.encode_into`` does), NaN/inf.
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(
                f"{name}: cannot be read as an array ({exc}); pass a numpy array of shape (n, {dim}) "
                f"(nested lists are read as one matrix, so every row needs {dim} numbers)"
            ) from None
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{name}: dtype {x.dtype} is not a floating type; pass float32, float64 or float16 "
            f"(e.g. {name}.astype(numpy.float32))"
        )
    if x.ndim == 1:
        x = x.reshape(1, -1)
    elif x.ndim != 2:
        hint = ("; a list of (n_tokens, dim) matrices is multi-vector input (use MultiVectorIndex): a dense "
                "index reads nested lists as one (n, dim) matrix") if x.ndim == 3 else ""
        raise ValueError(
            f"{name}: expected a 2-d array of shape (n, {dim}) or one vector of shape ({dim},), got {x.ndim}-d{hint}"
        )
    if x.shape[1] != dim:
        raise ValueError(f"{name}: expected dimension {dim}, got {x.shape[1]}")
    with np.errstate(over="ignore"):  # overflow to inf is reported just below
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not finite:
        return x
    # In row chunks: the boolean temporary stays near 16 MiB whatever n is (a 1.24M x 384 add
    # would otherwise allocate 477 MB just to find no NaN).
    step = max(1, _FINITE_CHUNK_BYTES // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        finite = np.isfinite(x[start : start + step])
        if not finite.all():
            bad = start + int(np.argwhere(~finite)[0][0])
            raise ValueError(f"{name}: row {bad} contains NaN or inf (after conversion to float32); remove or fix it")
    return x


def as_ids(ids, name: str, n: int) -> np.ndarray:
    """Returns ids as a contiguous int64 (n,) array of non-negative values."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of {n} integer ids, got shape {ids.shape}")
    if ids.shape[0] != n:
        raise ValueError(f"{name}: expected {n} ids (one per vector), got {ids.shape[0]}")
    if n == 0:
        return np.empty(0, dtype=np.int64)
    if ids.dtype == object and all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{name}: ids must fit in int64 (0 to 2**63 - 1)")  # numpy keeps larger ints as objects
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}: dtype {ids.dtype} is not an integer type; pass int64 ids")
    if ids.dtype == np.uint64 and ids.max() > MAX_ID:
        raise ValueError(f"{name}: ids must fit in int64")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.min() < 0:
        raise ValueError(f"{name}: ids must be non-negative (-1 marks a missing result); got {int(ids.min())}")
    return ids


def auto_ids(next_id: int, n: int) -> np.ndarray:
    """``n`` consecutive int64 ids from ``next_id`` (one more than the largest id so far).

    When they would pass ``2**63 - 1`` there are none left: a ValueError naming ids.
    """
    if n and next_id + n - 1 > MAX_ID:
        raise ValueError(
            f"ids: no automatic ids left: they continue after the largest id so far ({next_id - 1}) and "
            f"{n} more would pass 2**63 - 1, the int64 limit; pass ids= explicitly"
        )
    return np.arange(n, dtype=np.int64) + np.int64(min(next_id, MAX_ID))


def lookup_id(value) -> Optional[int]:
    """``value`` as an id to look up, or None when it cannot be one (not an int, a bool, out of int64 range)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    value = int(value)
    return value if 0 <= value <= MAX_ID else None



def holds_id(id_map, lock, value) -> bool:
    """``value in index``: True for a present integer id, read under the index's read lock;
    any other object (5.7, "a", None, True) is simply not in the index."""
    key = lookup_id(value)
    if key is None:
        return False
    with lock.read():
        return bool(id_map.find(np.array([key], dtype=np.int64))[0] >= 0)


def as_rerank(rerank, k: int, keep_float: bool) -> Optional[int]:
    """A re-ranking depth, or None for none: an integer >= ``k`` on an index that keeps a float copy."""
    if rerank is None:
        return None
    rerank = as_k(rerank, "rerank")
    if rerank < k:
        raise ValueError(f"rerank: must be at least k ({k}), got {rerank}")
    if not keep_float:
        raise ValueError("rerank: this index keeps no float copy; build it with keep_float=True")
    return rerank

def as_choice(value, name: str, choices) -> str:
    """One of the names ``choices``: a TypeError for a non-string, a ValueError for an unknown name."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {tuple(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def as_int(value, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """The one integer rule: Python or numpy integers only (no bool, float or str), within bounds.

    The wrong type is a TypeError, a value out of range a ValueError; both name ``name``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be at most {maximum}, got {value}")
    return value


def as_bool(value, name: str) -> bool:
    """The one boolean rule: ``bool`` or ``numpy.bool_`` only; a truthy string such as "no" is an error."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def as_k(k, name: str = "k") -> int:
    """A positive integer ``k`` (or another count named ``name``, e.g. "rerank")."""
    return as_int(k, name, 1, MAX_K)


def normalize_rows(x: np.ndarray, name: str) -> np.ndarray:
    """L2-normalises float32 rows (cosine), in the core's threads; a zero row has no direction and is an error."""
    out = np.empty_like(x)
    try:
        _core.encode_dense("f32", x, out, normalize=True)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return out


def read_only(attr: str, doc: str) -> property:
    """A read-only property returning ``self.<attr>``: an index's fixed parameters (dim, metric...)."""
    return property(operator.attrgetter(attr), doc=doc)


class RWLock:
    """Many readers (searches) or one writer (add/remove); writers are not starved."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    def read(self):
        return _Guard(self._acquire_read, self._release_read)

    def write(self):
        return _Guard(self._acquire_write, self._release_write)

    def _acquire_read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def _release_read(self):
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def _acquire_write(self):
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True

    def _release_write(self):
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Guard:
    __slots__ = ("_enter", "_exit")

    def __init__(self, enter, exit_):
        self._enter, self._exit = enter, exit_

    def __enter__(self):
        self._enter()

    def __exit__(self, *exc):
        self._exit()
