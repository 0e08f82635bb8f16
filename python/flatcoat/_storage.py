"""Storage names, their array layouts, and growable row arrays for the indexes.

The names and layouts are defined here once; every other module (GPU stores,
CLI, bench) imports them from here.

Rows live in one contiguous numpy array per field, so the core scans a plain
view. Growth by fewer rows than are kept uses ``ndarray.resize``, which
reallocates in place (``mremap`` for large blocks) instead of copying into a
second buffer, so adding in batches peaks near the final size. Growth by more
(the first add, a large batch) allocates a new array and copies the kept rows:
no zero fill, and the encoder's threads are the first to touch the new pages.
Arrays loaded with mmap stay read-only until the first change, which copies
them into memory.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from . import _core

#: Dense metrics: inner product, cosine (normalised, then inner product), squared L2.
METRICS = ("ip", "cosine", "l2")
#: DenseIndex storages (see ``dense_code_layout``).
DENSE_STORAGES = ("f32", "f16", "int8", "binary", "bf16")
#: MultiVectorIndex storages (see ``multivector_token_dtype``).
MULTIVECTOR_STORAGES = ("f32", "f16", "int8")
#: IVFIndex list storages: 4-bit PQ fast-scan codes, or the dense codecs (see ``flatcoat.ivf``).
IVF_STORAGES = ("pq4", "f32", "f16", "int8", "binary")


def dense_code_layout(storage: str, dim: int) -> Tuple[Tuple[int, ...], np.dtype]:
    """``(row_shape, dtype)`` of one stored dense code.

    f32: float32 (dim,); f16: IEEE half bits as uint16 (dim,); bf16: bfloat16
    bits (a float32's high half, rounded to nearest even) as uint16 (dim,); int8: uint8
    (dim,) per-vector affine codes (``x ~ offset + scale * code``, one float32
    scale and offset per vector); binary: sign bits packed into uint64
    (ceil(dim / 64),), bit ``j % 64`` of word ``j // 64`` set when ``x_j > 0``.

    >>> dense_code_layout("binary", 100)
    ((2,), dtype('uint64'))
    """
    if storage == "f32":
        return (dim,), np.dtype(np.float32)
    if storage in ("f16", "bf16"):
        return (dim,), np.dtype(np.uint16)
    if storage == "int8":
        return (dim,), np.dtype(np.uint8)
    if storage == "binary":
        return ((dim + 63) // 64,), np.dtype(np.uint64)
    raise ValueError(f"storage: expected one of {DENSE_STORAGES}, got {storage!r}")


def multivector_token_dtype(storage: str) -> np.dtype:
    """dtype of the stored (n_tokens, dim) token rows of a multi-vector storage.

    f32: float32; f16: IEEE half bits as uint16; int8: uint8 ``code + 128``
    with per-token symmetric codes in [-127, 127] and one float32 scale per
    token (``token ~ scale * code``).
    """
    if storage == "f32":
        return np.dtype(np.float32)
    if storage == "f16":
        return np.dtype(np.uint16)
    if storage == "int8":
        return np.dtype(np.uint8)
    raise ValueError(f"storage: expected one of {MULTIVECTOR_STORAGES}, got {storage!r}")


_GROWTH = 1.25
# Past this size an array grows to exactly what is needed: realloc of a large
# block is an mremap (no copy), and slack would be zero-filled, i.e. resident.
_EXACT_GROWTH_BYTES = 64 << 20
# numpy advises huge pages for allocations from this size on (and realloc keeps the advice).
_ADVISED_BYTES = 4 << 20


def grown(a: np.ndarray, needed: int, keep: Optional[int] = None) -> np.ndarray:
    """``a`` with room for at least ``needed`` rows, owned and writable; its first ``keep``
    rows (all by default) kept, the others undefined.

    Small arrays grow geometrically, large ones to exactly ``needed`` (see
    _EXACT_GROWTH_BYTES). An array it does not own (a memory map), or one that
    grows by more rows than it keeps, is copied into a new array; otherwise
    it is resized in place.
    """
    owned = a.flags.owndata and a.flags.writeable
    if owned and a.shape[0] >= needed:
        return a
    kept = a.shape[0] if keep is None else min(keep, a.shape[0])
    needed = max(needed, kept)
    small = a.nbytes < _EXACT_GROWTH_BYTES
    capacity = max(needed, int(a.shape[0] * _GROWTH) + 16) if small else needed
    if owned and needed - kept <= kept:
        advised = a.nbytes >= _ADVISED_BYTES
        a.resize((capacity,) + a.shape[1:], refcheck=False)
        # Realloc misses numpy's huge-page advice when a small block becomes a large one; a
        # large one keeps it through mremap, and advising a populated region again is slow
        # (measured: 100 resizes of a 1.5 GB array, 1.2 s advised once, 51 s advised each time).
        if not advised:
            _core.advise_hugepages(a)
    else:
        # np.empty: untouched pages cost nothing until written, where resize would zero them first.
        fresh = np.empty((capacity,) + a.shape[1:], dtype=a.dtype)
        _core.advise_hugepages(fresh)  # before the first write; numpy does too for large arrays
        fresh[:kept] = a[:kept]
        a = fresh
    return a


class RowStore:
    """Named arrays that share a row count: field -> (per-row shape, dtype).

    A ``fenced`` field holds one row more than the count, a fence row (zeros)
    before the first: the CSR layout of document offsets, whose view
    ``[0, end_0, ..., end_{n-1}]`` goes to the core as it is, with no copy.
    """

    def __init__(self, fields: Dict[str, Tuple[Tuple[int, ...], np.dtype]], fenced: Tuple[str, ...] = ()):
        self.fields = fields
        self.fenced = frozenset(fenced)
        self.count = 0
        self.arrays: Dict[str, np.ndarray] = {
            name: np.zeros((self._lead(name),) + shape, dtype=dtype) for name, (shape, dtype) in fields.items()
        }

    def _lead(self, name: str) -> int:
        return 1 if name in self.fenced else 0

    @classmethod
    def from_arrays(cls, fields, arrays: Dict[str, np.ndarray], count: int, fenced: Tuple[str, ...] = ()) -> "RowStore":
        """A store over loaded arrays (kept as they are, e.g. memory maps, until the first change)."""
        store = cls(fields, fenced)
        for name, (shape, dtype) in fields.items():
            a = arrays[name]
            rows = count + store._lead(name)
            if a.dtype != np.dtype(dtype) or a.shape != (rows,) + tuple(shape):
                raise ValueError(f"{name}.npy: expected {np.dtype(dtype).str}{[rows, *shape]}, got {a.dtype.str}{list(a.shape)}")
            store.arrays[name] = a
        store.count = count
        return store

    def view(self, name: str) -> np.ndarray:
        """The stored rows of ``name`` (with the fence row first for a fenced field)."""
        return self.arrays[name][: self.count + self._lead(name)]

    def views(self) -> Dict[str, np.ndarray]:
        return {name: self.view(name) for name in self.fields}

    @property
    def nbytes(self) -> int:
        return sum(self.view(name).nbytes for name in self.fields)

    def _owned(self, name: str, needed: int = 0) -> np.ndarray:
        lead = self._lead(name)
        a = grown(self.arrays[name], needed + lead, keep=self.count + lead)
        self.arrays[name] = a
        return a

    def reserve(self, n: int) -> Dict[str, np.ndarray]:
        """Grows every field for ``n`` more rows and returns writable views of them, to be filled
        in place (the encoder writes there); ``count += n`` then commits them."""
        needed = self.count + n
        views = {}
        for name in self.fields:
            lead = self._lead(name)
            views[name] = self._owned(name, needed)[self.count + lead : needed + lead]
        return views

    def append(self, rows: Dict[str, np.ndarray]) -> None:
        """Appends the same number of rows to every field (a fenced field's new rows follow its last)."""
        n = next(iter(rows.values())).shape[0]
        needed = self.count + n
        for name in self.fields:
            lead = self._lead(name)
            self._owned(name, needed)[self.count + lead : needed + lead] = rows[name]
        self.count = needed

    def remove_positions(self, positions: np.ndarray) -> np.ndarray:
        """Removes rows by position, filling holes from the tail (order not kept).

        Returns (moved_from, moved_to) position pairs as a (2, m) array so the
        caller can update its id map.
        """
        removed = np.zeros(self.count, dtype=bool)
        removed[positions] = True
        new_count = self.count - int(removed.sum())
        holes = np.flatnonzero(removed[:new_count])
        survivors = new_count + np.flatnonzero(~removed[new_count:])
        for name in self.fields:
            a = self._owned(name)
            lead = self._lead(name)
            if holes.size:
                a[holes + lead] = a[survivors + lead]
        self.count = new_count
        return np.stack([survivors, holes])

    def keep_rows(self, start: int, keep: np.ndarray) -> None:
        """Keeps, in order, the rows ``start + i`` of ``[start, count)`` where ``keep[i]``; drops the others.

        Rows before ``start`` do not move: the cost is one pass over the rows
        from ``start`` on.
        """
        kept = int(np.count_nonzero(keep))
        # Every copy is made before the first write: a MemoryError leaves the rows as they were.
        tails = {name: self._owned(name)[start + self._lead(name) : self.count + self._lead(name)][keep]
                 for name in self.fields}
        for name, tail in tails.items():
            lead = self._lead(name)
            self.arrays[name][start + lead : start + lead + kept] = tail
        self.count = start + kept
