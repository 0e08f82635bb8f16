"""Typed attribute columns aligned with an index's storage positions, and the filter language.

An :class:`AttributeStore` holds one column per field over the ``n`` storage
positions of an index (DenseIndex rows, IVF slots, MultiVectorIndex document
positions). Five types: ``"int"`` (int64), ``"float"`` (float64), ``"bool"``,
``"keyword"`` (one string) and ``"keywords"`` (a list of strings). Any value
may be missing.

Storage (all numpy, memory-mappable):

- int / float / bool: ``values`` (int64 / float64 / bool, 0 where missing) and
  ``present`` (bool).
- keyword: ``codes`` (int32, -1 where missing) into the column's vocabulary,
  a list of distinct strings in first-seen order (codes never move on append).
- keywords: int32 codes in a pool, row r's list being ``pool[starts[r]:ends[r]]``
  (in the order given), and ``present`` (bool; a present empty list has no
  codes). Saved as CSR (``offsets`` n + 1 and ``codes`` in row order).

Filters (``evaluate``) are dicts in the style of MongoDB / Qdrant / Chroma,
validated completely before any row is read, then evaluated with O(n) numpy
work per predicate; see docs/filters.md for the language.

>>> store = AttributeStore.parse([{"year": 2020, "tags": ["a"]}, None, {"year": 2023}], 3)
>>> store.schema
{'year': 'int', 'tags': 'keywords'}
>>> store.evaluate({"year": {"$gte": 2021}}).tolist()
[False, False, True]
>>> store.rows([0, 1])
[{'year': 2020, 'tags': ['a']}, {}]
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Callable, Dict, List, Optional

import numpy as np

from ._persist import IndexFormatError

TYPES = ("int", "float", "bool", "keyword", "keywords")

_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)
_META_VERSION = 1

#: Operators of a field's dict, per field type.
FIELD_OPERATORS = {
    "int": ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"),
    "float": ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"),
    "bool": ("$eq", "$ne", "$in", "$nin", "$exists"),
    "keyword": ("$eq", "$ne", "$in", "$nin", "$exists"),
    "keywords": ("$eq", "$ne", "$in", "$nin", "$all", "$size", "$exists"),
}
_ALL_FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all", "$size", "$exists")
#: Operators that stand where a field name would.
LOGICAL_OPERATORS = ("$and", "$or", "$not", "$id")

_EXPECTS = {"int": "a number", "float": "a number", "bool": "True or False", "keyword": "a str", "keywords": "a str"}
_EXAMPLE = "{'year': {'$gte': 2020}, 'lang': {'$in': ['en', 'de']}}"


# ----------------------------------------------------------------------------- bitsets


def mask_to_bits(mask: np.ndarray) -> np.ndarray:
    """bool ``(n,)`` -> uint64 ``(ceil(n / 64),)``: position p is bit ``p % 64`` of word ``p // 64``.

    The filter bitset the core reads (LSB first); bits past ``n`` are 0.

    >>> mask_to_bits(np.array([True, False, True])).tolist()
    [5]
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask: expected a numpy bool array, got {type(mask).__name__}; pass numpy.asarray(mask, dtype=bool)")
    if mask.dtype != np.bool_:
        raise TypeError(f"mask: dtype {mask.dtype} is not bool; pass mask.astype(bool)")
    if mask.ndim != 1:
        raise ValueError(f"mask: expected a 1-d array, got shape {mask.shape}")
    n = mask.shape[0]
    words = (n + 63) // 64
    out = np.zeros(words * 8, dtype=np.uint8)
    packed = np.packbits(mask, bitorder="little")
    out[: packed.size] = packed
    return np.ascontiguousarray(out.view("<u8"), dtype=np.uint64)


# ----------------------------------------------------------------------------- buffers


class _Buffer:
    """A 1-d array with spare capacity: ``data[:size]`` is in use.

    ``data`` may be a read-only memory map (a loaded index): it is read in place
    and copied on the first write.
    """

    __slots__ = ("data", "size")

    def __init__(self, data: np.ndarray, size: Optional[int] = None):
        self.data = data
        self.size = len(data) if size is None else size

    def view(self) -> np.ndarray:
        return self.data[: self.size]

    def writable(self, need: Optional[int] = None) -> np.ndarray:
        """The buffer, copied first when read-only or shorter than ``need`` (grown geometrically)."""
        need = self.size if need is None else need
        data = self.data
        if len(data) >= need and data.flags.writeable:
            return data
        cap = len(data) if need <= len(data) else max(need, 2 * len(data), 8)
        new = np.empty(cap, dtype=data.dtype)
        new[: self.size] = data[: self.size]
        self.data = new
        return new

    def extend(self, values) -> None:
        values = np.asarray(values)
        m = values.shape[0]
        data = self.writable(self.size + m)
        data[self.size : self.size + m] = values
        self.size += m

    def fill(self, value, m: int) -> None:
        data = self.writable(self.size + m)
        data[self.size : self.size + m] = value
        self.size += m

    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` (int64), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(total, dtype=np.int64)


class _Vocab:
    """Distinct strings in first-seen order; the code of a string is its position."""

    __slots__ = ("strings", "_lookup", "nbytes")

    def __init__(self, strings: Optional[List[str]] = None, nbytes: Optional[int] = None):
        self.strings = [] if strings is None else strings
        self._lookup: Optional[Dict[str, int]] = None
        self.nbytes = sum(len(s) for s in self.strings) if nbytes is None else nbytes

    def lookup(self) -> Dict[str, int]:
        if self._lookup is None:
            self._lookup = dict(zip(self.strings, range(len(self.strings))))
        return self._lookup

    def code(self, s: str) -> int:
        """The code of ``s``, -1 when the vocabulary does not hold it."""
        return self.lookup().get(s, -1)

    def add(self, s: str) -> int:
        lookup = self.lookup()
        code = lookup.get(s)
        if code is None:
            code = lookup[s] = len(self.strings)
            self.strings.append(s)
            self.nbytes += len(s)
        return code

    def copy(self) -> "_Vocab":
        out = _Vocab(list(self.strings), self.nbytes)
        if self._lookup is not None:
            out._lookup = dict(self._lookup)
        return out

    def encode(self) -> np.ndarray:
        return np.frombuffer(json.dumps(self.strings, ensure_ascii=False).encode("utf-8"), dtype=np.uint8).copy()


def _take_positions(rows: np.ndarray, n: int):
    """(safe, valid): rows with -1 replaced by 0 and the mask of rows that are not -1."""
    valid = rows >= 0
    safe = np.where(valid, rows, 0) if n else np.zeros_like(rows)
    return safe, valid


# ----------------------------------------------------------------------------- columns


class _Scalar:
    """An int, float or bool column: values + present."""

    __slots__ = ("kind", "values", "present")
    DTYPES = {"int": np.int64, "float": np.float64, "bool": np.bool_}

    def __init__(self, kind: str, values: _Buffer, present: _Buffer):
        self.kind, self.values, self.present = kind, values, present

    @classmethod
    def empty(cls, kind: str, n: int) -> "_Scalar":
        return cls(kind, _Buffer(np.zeros(n, dtype=cls.DTYPES[kind])), _Buffer(np.zeros(n, dtype=np.bool_)))

    @classmethod
    def build(cls, kind: str, n: int, rows: np.ndarray, values: np.ndarray) -> "_Scalar":
        col = cls.empty(kind, n)
        col.values.data[rows] = values
        col.present.data[rows] = True
        return col

    def present_mask(self) -> np.ndarray:
        return self.present.view()

    def extend_missing(self, m: int) -> None:
        self.values.fill(0, m)
        self.present.fill(False, m)

    def extend(self, other: "_Scalar") -> None:
        values = other.values.view()
        if values.dtype != self.values.data.dtype:
            values = values.astype(self.values.data.dtype)  # int appended to float
        self.values.extend(values)
        self.present.extend(other.present.view())

    def take(self, rows: np.ndarray, n: int) -> "_Scalar":
        safe, valid = _take_positions(rows, n)
        if n:
            values, present = self.values.view()[safe], self.present.view()[safe] & valid
            values[~valid] = 0
        else:
            values, present = np.zeros(len(rows), self.DTYPES[self.kind]), np.zeros(len(rows), np.bool_)
        return _Scalar(self.kind, _Buffer(values), _Buffer(present))

    def move(self, src: np.ndarray, dst: np.ndarray) -> None:
        values, present = self.values.view()[src], self.present.view()[src]
        self.values.writable()[dst] = values
        self.present.writable()[dst] = present

    def truncate(self, n: int) -> None:
        self.values.size = self.present.size = n

    def python_values(self, positions: np.ndarray) -> list:
        return self.values.view()[positions].tolist()

    def nbytes(self) -> int:
        return self.values.nbytes() + self.present.nbytes()

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        return {f"{prefix}_values": self.values.view(), f"{prefix}_present": self.present.view()}


class _Keyword:
    """A keyword column: int32 codes into a vocabulary, -1 where missing."""

    __slots__ = ("kind", "codes", "vocab")

    def __init__(self, codes: _Buffer, vocab: _Vocab):
        self.kind, self.codes, self.vocab = "keyword", codes, vocab

    @classmethod
    def empty(cls, n: int) -> "_Keyword":
        return cls(_Buffer(np.full(n, -1, dtype=np.int32)), _Vocab())

    def present_mask(self) -> np.ndarray:
        return self.codes.view() >= 0

    def extend_missing(self, m: int) -> None:
        self.codes.fill(-1, m)

    def extend(self, other: "_Keyword") -> None:
        self.codes.extend(_map_codes(self.vocab, other.vocab, other.codes.view()))

    def take(self, rows: np.ndarray, n: int) -> "_Keyword":
        safe, valid = _take_positions(rows, n)
        codes = np.where(valid, self.codes.view()[safe], -1).astype(np.int32) if n else np.full(len(rows), -1, np.int32)
        return _Keyword(_Buffer(codes), self.vocab.copy())

    def move(self, src: np.ndarray, dst: np.ndarray) -> None:
        codes = self.codes.view()[src]
        self.codes.writable()[dst] = codes

    def truncate(self, n: int) -> None:
        self.codes.size = n

    def python_values(self, positions: np.ndarray) -> list:
        strings = self.vocab.strings
        return [strings[c] for c in self.codes.view()[positions].tolist()]

    def nbytes(self) -> int:
        return self.codes.nbytes() + self.vocab.nbytes

    def compacted(self):
        """(codes, vocab) with the vocabulary reduced to the strings in use (for saving)."""
        codes = self.codes.view()
        return _compact(codes, self.vocab)

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        codes, vocab = self.compacted()
        return {f"{prefix}_codes": codes, f"{prefix}_vocab": vocab.encode()}


class _Keywords:
    """A keywords column: row r's list is ``pool[starts[r]:ends[r]]`` (int32 codes), plus present.

    A moved row's codes are appended to the pool, so ``move`` costs the rows moved, not ``n``; the
    codes no row refers to any more are dropped once they outnumber the live ones (plus n / 4).
    Built, taken and saved as CSR (offsets n + 1, codes in row order).
    """

    __slots__ = ("kind", "starts", "ends", "pool", "present", "vocab", "live", "_csr")

    def __init__(self, starts: _Buffer, ends: _Buffer, pool: _Buffer, present: _Buffer, vocab: _Vocab, live: int):
        self.kind = "keywords"
        self.starts, self.ends, self.pool, self.present, self.vocab, self.live = starts, ends, pool, present, vocab, live
        self._csr = None  # (offsets, codes) while the column is still exactly that CSR (saved without a gather)

    @classmethod
    def from_csr(cls, offsets: np.ndarray, codes: np.ndarray, present: np.ndarray, vocab: _Vocab) -> "_Keywords":
        """Starts and ends are read-only views of ``offsets`` (they share memory): the first write copies them."""
        shared = offsets.view()
        shared.flags.writeable = False
        col = cls(_Buffer(shared[:-1]), _Buffer(shared[1:]), _Buffer(codes), _Buffer(present), vocab, int(offsets[-1]))
        col._csr = (offsets, codes)
        return col

    @classmethod
    def empty(cls, n: int) -> "_Keywords":
        return cls.from_csr(np.zeros(n + 1, np.int64), np.empty(0, np.int32), np.zeros(n, np.bool_), _Vocab())

    def n(self) -> int:
        return self.present.size

    def present_mask(self) -> np.ndarray:
        return self.present.view()

    def lengths(self) -> np.ndarray:
        return self.ends.view() - self.starts.view()

    def _gather(self, rows: np.ndarray):
        """(lengths, codes in row order) of ``rows``."""
        starts = self.starts.view()[rows]
        lengths = self.ends.view()[rows] - starts
        return lengths, self.pool.data[_ranges(starts, lengths)]

    def _append_lists(self, lengths: np.ndarray, codes: np.ndarray):
        """Appends codes to the pool; returns (starts, ends) for lists of ``lengths``."""
        starts = np.empty(lengths.shape[0], dtype=np.int64)
        base = self.pool.size
        if lengths.shape[0]:
            np.cumsum(lengths, out=starts)
            starts -= lengths
            starts += base
        self.pool.extend(codes)
        return starts, starts + lengths

    def extend_missing(self, m: int) -> None:
        self._csr = None
        self.starts.fill(self.pool.size, m)
        self.ends.fill(self.pool.size, m)
        self.present.fill(False, m)

    def extend(self, other: "_Keywords") -> None:
        self._csr = None
        lengths, codes = other._gather(np.arange(other.n(), dtype=np.int64))
        codes = _map_codes(self.vocab, other.vocab, codes)
        starts, ends = self._append_lists(lengths, codes)
        self.starts.extend(starts)
        self.ends.extend(ends)
        self.present.extend(other.present.view())
        self.live += int(lengths.sum())

    def take(self, rows: np.ndarray, n: int) -> "_Keywords":
        m = len(rows)
        if not n:
            out = _Keywords.empty(m)
            out.vocab = self.vocab.copy()
            return out
        safe, valid = _take_positions(rows, n)
        lengths, codes = self._gather(safe)
        lengths[~valid] = 0
        if not valid.all():
            codes = self.pool.data[_ranges(self.starts.view()[safe], lengths)]
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        present = self.present.view()[safe] & valid
        return _Keywords.from_csr(offsets, codes.astype(np.int32, copy=False), present, self.vocab.copy())

    def move(self, src: np.ndarray, dst: np.ndarray) -> None:
        self._csr = None
        lengths, codes = self._gather(src)
        present = self.present.view()[src]
        dropped = int((self.ends.view()[dst] - self.starts.view()[dst]).sum())
        starts, ends = self._append_lists(lengths, codes)
        self.starts.writable()[dst] = starts
        self.ends.writable()[dst] = ends
        self.present.writable()[dst] = present
        self.live += int(lengths.sum()) - dropped
        self._compact_if_sparse()

    def truncate(self, n: int) -> None:
        self._csr = None
        self.live -= int((self.ends.view()[n:] - self.starts.view()[n:]).sum())
        self.starts.size = self.ends.size = self.present.size = n
        self._compact_if_sparse()

    def _compact_if_sparse(self) -> None:
        if self.pool.size - self.live > self.live + self.n() // 4 + 1024:
            n = self.n()
            fresh = self.take(np.arange(n, dtype=np.int64), n)
            self.starts, self.ends, self.pool, self.present = fresh.starts, fresh.ends, fresh.pool, fresh.present
            self.live, self._csr = fresh.live, fresh._csr

    def python_values(self, positions: np.ndarray) -> list:
        lengths, codes = self._gather(positions)
        strings = self.vocab.strings
        flat = [strings[c] for c in codes.tolist()]
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def nbytes(self) -> int:
        return self.starts.nbytes() + self.ends.nbytes() + self.pool.nbytes() + self.present.nbytes() + self.vocab.nbytes

    def arrays(self, prefix: str) -> Dict[str, np.ndarray]:
        if self._csr is not None:
            offsets, codes = self._csr
        else:
            n = self.n()
            lengths, codes = self._gather(np.arange(n, dtype=np.int64))
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
        codes, vocab = _compact(codes, self.vocab)
        return {
            f"{prefix}_offsets": offsets,
            f"{prefix}_codes": codes,
            f"{prefix}_present": self.present.view(),
            f"{prefix}_vocab": vocab.encode(),
        }


def _map_codes(target: _Vocab, source: _Vocab, codes: np.ndarray) -> np.ndarray:
    """``codes`` of ``source``'s strings as codes of ``target`` (adding the strings it lacks); -1 stays -1."""
    mapping = np.full(len(source.strings) + 1, -1, dtype=np.int32)
    used = np.unique(codes[codes >= 0]) if codes.size else np.empty(0, np.int32)
    strings = source.strings
    mapping[used] = [target.add(strings[c]) for c in used.tolist()]
    return mapping[codes]


def _compact(codes: np.ndarray, vocab: _Vocab):
    """(codes, vocab) keeping only the strings that ``codes`` use (same order); no copy when all are used."""
    size = len(vocab.strings)
    used = np.zeros(size + 1, dtype=np.bool_)
    used[codes] = True  # -1 marks the spare last slot
    used = used[:size]
    if used.all():
        return codes, vocab
    remap = np.full(size + 1, -1, dtype=np.int32)
    remap[:size][used] = np.arange(int(used.sum()), dtype=np.int32)
    return remap[codes], _Vocab(list(itertools.compress(vocab.strings, used.tolist())))


# ----------------------------------------------------------------------------- parsing values


def _kind_of(value) -> Optional[str]:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "keyword"
    if isinstance(value, (list, tuple)):
        return "keywords"
    return None


def _type_name(value) -> str:
    return type(value).__name__


def _check_field_name(field, where: str) -> None:
    if not isinstance(field, str):
        raise TypeError(f"{where}: field names are str, got {_type_name(field)} {field!r}")
    if not field or field.startswith("$"):
        raise ValueError(
            f"{where}: field name {field!r} is not allowed; use a non-empty name that does not start with '$' "
            "('$' starts the filter operators)"
        )
    try:
        field.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: field name {field!r} holds a lone surrogate; pass valid Unicode text") from None


def _check_strings(strings: List[str], rows: List[int], field: str, where: Callable[[int], str]) -> None:
    """Rejects strings with lone surrogates (they cannot be saved as UTF-8)."""
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        for s, r in zip(strings, rows):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"{where(r)}: field {field!r}: {s!r} holds a lone surrogate; pass valid Unicode text"
                ) from None


def _resolve_type(field: str, rows: List[int], values: list, declared: Optional[str], where: Callable[[int], str]) -> str:
    first: Dict[str, int] = {}  # kind -> index (into rows/values) of its first value
    for i, value in enumerate(values):
        kind = _kind_of(value)
        if kind is None:
            raise TypeError(
                f"{where(rows[i])}: field {field!r}: unsupported value {value!r} of type {_type_name(value)}; "
                "values are bool, int, float, str or a list of str (None for missing)"
            )
        if kind not in first:
            first[kind] = i
    if declared is not None:
        allowed = {declared, "int"} if declared == "float" else {declared}
        bad = sorted((i, k) for k, i in first.items() if k not in allowed)
        if bad:
            i, kind = bad[0]
            if declared == "int" and kind == "float":
                raise TypeError(
                    f"{where(rows[i])}: field {field!r} holds int values, got float {values[i]!r}; a field's type is "
                    "fixed by its first values: to store floats, give floats from the start (write 3.0, not 3)"
                )
            raise TypeError(f"{where(rows[i])}: field {field!r} holds {declared} values, got {kind} {values[i]!r}")
        return declared
    kinds = set(first)
    if kinds <= {"int", "float"}:
        return "float" if "float" in kinds else "int"
    if len(kinds) == 1:
        return kinds.pop()
    (i0, k0), (i1, k1) = sorted((i, k) for k, i in first.items())[:2]
    if {k0, k1} == {"int", "float"}:  # a third kind came later; report it against the number
        i1, k1 = next((i, k) for i, k in sorted((i, k) for k, i in first.items()) if k not in ("int", "float"))
    raise TypeError(
        f"{where(rows[i1])}: field {field!r}: got {k1} {values[i1]!r}, but row {rows[i0]} gave it {k0} values; "
        "a field holds one type (ints and floats mix as float)"
    )


def _build_column(field: str, n: int, rows: List[int], values: list, declared: Optional[str], where: Callable[[int], str]):
    kind = _resolve_type(field, rows, values, declared, where)
    rows_arr = np.asarray(rows, dtype=np.int64)
    if kind == "int":
        ints = [int(v) for v in values]
        bad = next((i for i, v in enumerate(ints) if not _INT64_MIN <= v <= _INT64_MAX), None)
        if bad is not None:
            raise ValueError(f"{where(rows[bad])}: field {field!r}: {ints[bad]} does not fit in int64; store it as a float or a str")
        return _Scalar.build("int", n, rows_arr, np.array(ints, dtype=np.int64))
    if kind == "float":
        try:
            floats = np.array([float(v) for v in values], dtype=np.float64)
        except OverflowError:  # an int beyond the float64 range
            bad = next(i for i, v in enumerate(values) if _too_big(v))
            raise ValueError(f"{where(rows[bad])}: field {field!r}: {values[bad]} is too large for a float64") from None
        finite = np.isfinite(floats)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise ValueError(f"{where(rows[bad])}: field {field!r}: {values[bad]!r} is not finite; use None for a missing value")
        return _Scalar.build("float", n, rows_arr, floats)
    if kind == "bool":
        return _Scalar.build("bool", n, rows_arr, np.array([bool(v) for v in values], dtype=np.bool_))
    if kind == "keyword":
        strings = [str(v) for v in values]
        _check_strings(strings, rows, field, where)
        col = _Keyword.empty(n)
        add = col.vocab.add
        col.codes.data[rows_arr] = np.array([add(s) for s in strings], dtype=np.int32)
        return col
    # keywords
    flat: List[str] = []
    flat_rows: List[int] = []
    lengths = np.zeros(n, dtype=np.int64)
    for r, items in zip(rows, values):
        for j, s in enumerate(items):
            if not isinstance(s, str):
                raise TypeError(
                    f"{where(r)}: field {field!r}: element {j} is {_type_name(s)} {s!r}; a keywords list holds str only"
                )
        flat.extend(items)
        flat_rows.extend(itertools.repeat(r, len(items)))
        lengths[r] = len(items)
    _check_strings([str(s) for s in flat], flat_rows, field, where)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    present = np.zeros(n, dtype=np.bool_)
    present[rows_arr] = True
    vocab = _Vocab()
    add = vocab.add
    return _Keywords.from_csr(offsets, np.array([add(str(s)) for s in flat], dtype=np.int32), present, vocab)


def _too_big(v) -> bool:
    try:
        float(v)
        return False
    except OverflowError:
        return True


def _array_column(field: str, n: int, array: np.ndarray, declared: Optional[str], where: Callable[[int], str]):
    """A column from a numeric numpy array (every row present), without a Python loop."""
    kind = {"b": "bool", "i": "int", "u": "int", "f": "float"}[array.dtype.kind]
    if declared is not None and declared != kind and not (declared == "float" and kind == "int"):
        if declared == "int" and kind == "float":
            raise TypeError(
                f"{where(0)}: field {field!r} holds int values, got a {array.dtype} array; a field's type is fixed by "
                "its first values: to store floats, give floats from the start"
            )
        raise TypeError(f"{where(0)}: field {field!r} holds {declared} values, got a {array.dtype} array ({kind})")
    kind = declared or kind
    if array.dtype.kind == "u" and n and array.max() > _INT64_MAX:
        bad = int(np.argmax(array > _INT64_MAX))
        raise ValueError(f"{where(bad)}: field {field!r}: {int(array[bad])} does not fit in int64")
    if kind == "float":
        values = array.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            bad = int(np.argmin(finite))
            raise ValueError(
                f"{where(bad)}: field {field!r}: {array[bad]!r} is not finite; for missing values pass a list "
                "(or an object array) with None"
            )
    else:
        values = array.astype(_Scalar.DTYPES[kind])
    return _Scalar(kind, _Buffer(values), _Buffer(np.ones(n, dtype=np.bool_)))


# ----------------------------------------------------------------------------- filter values


def _filter_number(value, where: str):
    """An int (exact) or a non-NaN float, or TypeError / ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where} expects a number, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{where} expects a number, got NaN (which equals nothing); remove the condition")
    return value


def _filter_bool(value, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where} expects True or False, got {value!r}")
    return bool(value)


def _filter_str(value, where: str, hint: str = "") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} expects a str, got {value!r}{hint}")
    return str(value)


def _filter_list(value, where: str, what: str) -> list:
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"{where} expects a 1-d list of {what}, got an array of shape {value.shape}")
        return value.tolist()
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise TypeError(f"{where} expects a list of {what}, got {value!r}")
    return list(value)


def _int_bound(value):
    """(floor, integral) of a number, with +-inf mapped past the int64 range."""
    if isinstance(value, int):
        return value, True
    if math.isinf(value):
        return (_INT64_MAX + 2, False) if value > 0 else (_INT64_MIN - 2, False)
    floor = math.floor(value)
    return floor, floor == value


def _int_compare(values: np.ndarray, op: str, bound: int) -> np.ndarray:
    """``values <op> bound`` for an int64 array and a Python int that may lie outside int64."""
    n = values.shape[0]
    if bound > _INT64_MAX:
        return np.full(n, op in ("$lt", "$lte"), dtype=np.bool_)
    if bound < _INT64_MIN:
        return np.full(n, op in ("$gt", "$gte"), dtype=np.bool_)
    b = np.int64(bound)
    if op == "$gt":
        return values > b
    if op == "$gte":
        return values >= b
    if op == "$lt":
        return values < b
    if op == "$lte":
        return values <= b
    return values == b


def _float_neighbours(value: int):
    """(lo, hi): the float64 values next to the int ``value``; lo == hi == value when it is exact."""
    try:
        f = float(value)
    except OverflowError:
        f = math.inf if value > 0 else -math.inf
    if f == value:
        return f, f
    if f > value:
        return float(np.nextafter(f, -math.inf)), f
    return f, float(np.nextafter(f, math.inf))


def _numeric_predicate(col: _Scalar, op: str, value) -> Callable[[], np.ndarray]:
    """The rows of a present int/float value that satisfy ``value <op> bound`` (exact for ints and floats)."""
    if col.kind == "int":
        floor, integral = _int_bound(value)
        if op == "$eq":
            if not integral:
                return lambda: np.zeros(col.present.size, dtype=np.bool_)
            eff = ("$eq", floor)
        elif op in ("$gt", "$lte"):
            eff = (op, floor)
        elif op == "$gte":
            eff = ("$gte", floor) if integral else ("$gt", floor)
        else:  # $lt
            eff = ("$lt", floor) if integral else ("$lte", floor)
        return lambda: _int_compare(col.values.view(), *eff) & col.present.view()
    if isinstance(value, int):
        lo, hi = _float_neighbours(value)
        if lo != hi:
            if op == "$eq":
                return lambda: np.zeros(col.present.size, dtype=np.bool_)
            op, value = ("$gte", hi) if op in ("$gt", "$gte") else ("$lte", lo)
        else:
            value = lo
    fn = {"$eq": np.equal, "$gt": np.greater, "$gte": np.greater_equal, "$lt": np.less, "$lte": np.less_equal}[op]
    return lambda: fn(col.values.view(), value) & col.present.view()


def _numeric_in(col: _Scalar, numbers: list) -> Callable[[], np.ndarray]:
    if col.kind == "int":
        keep = set()
        for v in numbers:
            floor, integral = _int_bound(v)
            if integral and _INT64_MIN <= floor <= _INT64_MAX:
                keep.add(floor)
        targets = np.array(sorted(keep), dtype=np.int64)
    else:
        keep = set()
        for v in numbers:
            lo, hi = _float_neighbours(v) if isinstance(v, int) else (v, v)
            if lo == hi and math.isfinite(lo):
                keep.add(lo)
        targets = np.array(sorted(keep), dtype=np.float64)
    if targets.size == 0:
        return lambda: np.zeros(col.present.size, dtype=np.bool_)
    return lambda: np.isin(col.values.view(), targets) & col.present.view()


_FEW_CODES = 8  # up to this many codes, equality tests beat a table gather


def _codes_matching(vocab: _Vocab, strings) -> list:
    """The codes of the strings the vocabulary holds (a string it lacks matches nothing)."""
    return sorted({c for c in (vocab.code(s) for s in strings) if c >= 0})


def _match_codes(codes: np.ndarray, wanted: list, vocab_size: int) -> np.ndarray:
    """bool mask of ``codes`` (int32, -1 for missing) equal to one of ``wanted`` (non-empty, >= 0)."""
    if len(wanted) <= _FEW_CODES:
        mask = codes == wanted[0]
        for code in wanted[1:]:
            mask |= codes == code
        return mask
    table = np.zeros(vocab_size + 1, dtype=np.bool_)  # the last slot (False) is what -1 reads
    table[wanted] = True
    return table[codes]


def _keyword_in(col: _Keyword, strings: list) -> Callable[[], np.ndarray]:
    def run():
        wanted = _codes_matching(col.vocab, strings)
        if not wanted:
            return np.zeros(col.codes.size, dtype=np.bool_)
        return _match_codes(col.codes.view(), wanted, len(col.vocab.strings))
    return run


def _keywords_contains(col: _Keywords, strings: list) -> Callable[[], np.ndarray]:
    """Rows whose list holds at least one of ``strings``: a running count of the matching codes over the
    pool, read at each row's start and end (empty lists need no special case)."""
    def run():
        wanted = _codes_matching(col.vocab, strings)
        if not wanted:
            return np.zeros(col.n(), dtype=np.bool_)
        hits = _match_codes(col.pool.view(), wanted, len(col.vocab.strings))
        cum = np.zeros(hits.size + 1, dtype=np.int32 if hits.size < 2**31 else np.int64)
        np.cumsum(hits, out=cum[1:])
        return cum[col.ends.view()] > cum[col.starts.view()]
    return run


# ----------------------------------------------------------------------------- the store


def _as_positions(positions, name: str, n: int, allow_missing: bool = False) -> np.ndarray:
    arr = np.asarray(positions)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array of positions, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: dtype {arr.dtype} is not an integer type; pass int64 positions")
    arr = arr.astype(np.int64, copy=False)
    low = -1 if allow_missing else 0
    lo, hi = int(arr.min()), int(arr.max())
    if lo < low or hi >= n:
        bad = lo if lo < low else hi
        allowed = f"-1 (a row with every field missing) or 0 to {n - 1}" if allow_missing else f"0 to {n - 1}"
        raise ValueError(f"{name}: position {bad} is out of range for {n} rows; positions are {allowed}")
    return arr


class AttributeStore:
    """Typed columns over ``n`` rows; each column holds values and a presence mask.

    Rows are an index's storage positions: ``append`` adds rows, ``move`` and
    ``truncate`` fill holes from the tail, ``take`` permutes (IVF rebuilds).
    """

    def __init__(self):
        self._n = 0
        self._columns: Dict[str, object] = {}

    # -- basics

    def __len__(self) -> int:
        return self._n

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}: {c.kind}" for f, c in self._columns.items())
        return f"AttributeStore({self._n} rows; {fields or 'no fields'})"

    @property
    def schema(self) -> dict:
        """``{field: type}`` in first-seen order."""
        return {field: col.kind for field, col in self._columns.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by the columns (buffers with their spare capacity; vocabularies by string length)."""
        return int(sum(col.nbytes() for col in self._columns.values()))

    @classmethod
    def _empty(cls, n: int) -> "AttributeStore":
        store = cls()
        store._n = n
        return store

    # -- parsing

    @classmethod
    def parse(cls, attributes, n: int, name: str = "attributes", schema: Optional[dict] = None) -> "AttributeStore":
        """``n`` rows from a list of ``n`` dicts (None = a row without attributes) or a dict of columns
        (field -> sequence of ``n`` values, None = missing). None gives ``n`` rows and no columns.

        Types are inferred per field (bool, int, float, str -> keyword, list/tuple of str -> keywords;
        ints in a float field are stored as floats). ``schema`` (an existing index's ``{field: type}``)
        fixes the types of the fields it names.
        """
        schema = dict(schema or {})
        store = cls._empty(n)
        if attributes is None:
            return store
        if isinstance(attributes, dict):
            store._parse_columns(attributes, n, name, schema)
            return store
        if isinstance(attributes, np.ndarray) and attributes.dtype == object and attributes.ndim == 1:
            attributes = attributes.tolist()
        if not isinstance(attributes, (list, tuple)):
            raise TypeError(
                f"{name}: expected a list of {n} dicts (one per row, None for none) or a dict of columns "
                f"(field -> {n} values), got {_type_name(attributes)}"
            )
        if len(attributes) != n:
            raise ValueError(f"{name}: expected {n} entries (one per row), got {len(attributes)}")
        collected: Dict[str, tuple] = {}
        for i, row in enumerate(attributes):
            if row is None:
                continue
            if not isinstance(row, dict):
                raise TypeError(f"{name}[{i}]: expected a dict of field -> value (or None), got {_type_name(row)}")
            for field, value in row.items():
                if value is None:
                    continue
                entry = collected.get(field)
                if entry is None:
                    _check_field_name(field, f"{name}[{i}]")
                    entry = collected[field] = ([], [])
                entry[0].append(i)
                entry[1].append(value)
        where = lambda row: f"{name}[{row}]"  # noqa: E731
        for field, (rows, values) in collected.items():
            store._columns[field] = _build_column(field, n, rows, values, schema.get(field), where)
        return store

    def _parse_columns(self, columns: dict, n: int, name: str, schema: dict) -> None:
        for field, column in columns.items():
            _check_field_name(field, name)
            where = lambda row, f=field: f"{name}[{f!r}][{row}]"  # noqa: E731
            if isinstance(column, np.ndarray):
                if column.ndim != 1:
                    raise ValueError(f"{name}[{field!r}]: expected a 1-d column of {n} values, got shape {column.shape}")
                if column.shape[0] != n:
                    raise ValueError(f"{name}[{field!r}]: expected {n} values (one per row), got {column.shape[0]}")
                if column.dtype.kind in "biuf":
                    if n:
                        self._columns[field] = _array_column(field, n, column, schema.get(field), where)
                    continue
                column = column.tolist()
            elif not isinstance(column, (list, tuple)):
                raise TypeError(
                    f"{name}[{field!r}]: a dict of columns maps each field to a list of {n} values, got "
                    f"{_type_name(column)}; for one row's attributes pass a list of one dict: [{{...}}]"
                )
            if len(column) != n:
                raise ValueError(f"{name}[{field!r}]: expected {n} values (one per row), got {len(column)}")
            rows = [i for i, v in enumerate(column) if v is not None]
            if rows:
                values = [column[i] for i in rows]
                self._columns[field] = _build_column(field, n, rows, values, schema.get(field), where)

    # -- row operations

    def append(self, other: "AttributeStore") -> None:
        """Appends ``other``'s rows; new fields are missing on the old rows. A type conflict is a
        TypeError naming the field, and leaves this store unchanged."""
        if not isinstance(other, AttributeStore):
            raise TypeError(f"other: expected an AttributeStore, got {_type_name(other)}")
        if other is self:
            other = self.take(np.arange(self._n, dtype=np.int64))
        for field, col in other._columns.items():
            mine = self._columns.get(field)
            if mine is not None and mine.kind != col.kind and not (mine.kind == "float" and col.kind == "int"):
                hint = (
                    "; a field's type is fixed by its first values: to store floats, give floats from the start"
                    if mine.kind == "int" and col.kind == "float" else ""
                )
                raise TypeError(f"attributes: field {field!r} holds {mine.kind} values, got {col.kind} values{hint}")
        m = other._n
        for field, mine in self._columns.items():
            if field not in other._columns:
                mine.extend_missing(m)
        for field, col in other._columns.items():
            mine = self._columns.get(field)
            if mine is None:
                mine = self._columns[field] = _empty_column(col.kind, self._n)
            mine.extend(col)
        self._n += m

    def take(self, rows) -> "AttributeStore":
        """A new store whose row i is row ``rows[i]`` of this one; -1 gives a row with every field missing."""
        rows = _as_positions(rows, "rows", self._n, allow_missing=True)
        out = AttributeStore._empty(len(rows))
        for field, col in self._columns.items():
            out._columns[field] = col.take(rows, self._n)
        return out

    def move(self, src, dst) -> None:
        """Row ``dst[i]`` becomes a copy of row ``src[i]``; every source is read before any write, and a
        position appears at most once in ``dst``. Costs the rows moved, not ``n``."""
        src = _as_positions(src, "src", self._n)
        dst = _as_positions(dst, "dst", self._n)
        if src.shape != dst.shape:
            raise ValueError(f"dst: expected {src.shape[0]} positions (one per src), got {dst.shape[0]}")
        if src.size == 0:
            return
        if dst.size > 1:
            order = np.sort(dst)
            repeated = order[1:] == order[:-1]
            if repeated.any():
                raise ValueError(f"dst: position {int(order[1:][repeated][0])} appears twice; write each row once")
        for col in self._columns.values():
            col.move(src, dst)

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` rows."""
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected an integer, got {_type_name(n)}")
        n = int(n)
        if not 0 <= n <= self._n:
            raise ValueError(f"n: expected 0 to {self._n} (the rows held), got {n}")
        for col in self._columns.values():
            col.truncate(n)
        self._n = n

    def rows(self, positions) -> list:
        """One dict per position with the fields present there (Python int, float, bool, str, list of str)."""
        pos = _as_positions(positions, "positions", self._n)
        out: List[dict] = [{} for _ in range(pos.shape[0])]
        for field, col in self._columns.items():
            where = np.flatnonzero(col.present_mask()[pos])
            if where.size == 0:
                continue
            for j, value in zip(where.tolist(), col.python_values(pos[where])):
                out[j][field] = value
        return out

    # -- filters

    def evaluate(self, filter: dict, id_rows: Optional[Callable[[np.ndarray], np.ndarray]] = None, name: str = "filter") -> np.ndarray:
        """bool ``(n,)`` mask of the rows that match ``filter`` (validated in full first).

        ``id_rows(ids int64) -> positions int64`` (-1 where absent) resolves ``"$id"``.
        """
        plan = self._compile(filter, name, id_rows)
        mask = plan()
        return np.ascontiguousarray(mask, dtype=np.bool_)

    def _all(self, value: bool) -> Callable[[], np.ndarray]:
        return lambda: np.full(self._n, value, dtype=np.bool_)

    def _compile(self, node, path: str, id_rows) -> Callable[[], np.ndarray]:
        if not isinstance(node, dict):
            raise TypeError(f"{path}: expected a dict such as {_EXAMPLE}, got {_type_name(node)}")
        parts: List[Callable[[], np.ndarray]] = []
        for key, value in node.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: keys are field names or operators (str), got {_type_name(key)} {key!r}")
            if not key.startswith("$"):
                parts.append(self._compile_field(key, value, path))
            elif key in ("$and", "$or"):
                if not isinstance(value, (list, tuple)):
                    raise TypeError(f"{path}: {key} expects a list of filters, got {value!r}")
                subs = [self._compile(v, f"{path}[{key!r}][{i}]", id_rows) for i, v in enumerate(value)]
                parts.append(_combine(subs, key == "$and", self._n))
            elif key == "$not":
                sub = self._compile(value, f"{path}['$not']", id_rows)
                parts.append(lambda sub=sub: ~sub())
            elif key == "$id":
                parts.append(self._compile_id(value, path, id_rows))
            elif key in _ALL_FIELD_OPERATORS:
                raise ValueError(
                    f"{path}: {key} is a field operator; put it inside a field's dict, e.g. {{'year': {{{key!r}: ...}}}}"
                )
            else:
                raise ValueError(
                    f"{path}: unknown operator {key!r}; the logical operators are {', '.join(LOGICAL_OPERATORS)} and "
                    f"the field operators are {', '.join(_ALL_FIELD_OPERATORS)}"
                )
        return _combine(parts, True, self._n)

    def _compile_id(self, value, path: str, id_rows) -> Callable[[], np.ndarray]:
        where = f"{path}: $id"
        if isinstance(value, dict):
            if not value:
                raise ValueError(f"{where} expects a list of ids or {{'$in': [...]}} / {{'$nin': [...]}}, got {{}}")
            parts = []
            for op, ids in value.items():
                if op not in ("$in", "$nin"):
                    raise ValueError(f"{where}: unknown operator {op!r}; $id takes $in or $nin")
                pred = self._compile_id_list(ids, f"{where}: {op}", id_rows)
                parts.append(pred if op == "$in" else (lambda pred=pred: ~pred()))
            result = _combine(parts, True, self._n)
        else:
            result = self._compile_id_list(value, where, id_rows)
        if id_rows is None:
            raise ValueError(f"{where}: this store has no ids to match (id_rows is None); filter on attribute fields")
        return result

    def _compile_id_list(self, ids, where: str, id_rows) -> Callable[[], np.ndarray]:
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"{where} expects a 1-d list of ids, got an array of shape {ids.shape}")
            if ids.size and (ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer)):
                raise TypeError(f"{where} expects integer ids, got an array of dtype {ids.dtype}")
            if ids.dtype == np.uint64:
                ids = ids[ids <= _INT64_MAX]
            arr = ids.astype(np.int64)
        else:
            items = _filter_list(ids, where, "ids")
            for j, v in enumerate(items):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{where} expects integer ids, got {v!r} at position {j}")
            arr = np.array([int(v) for v in items if _INT64_MIN <= int(v) <= _INT64_MAX], dtype=np.int64)
        arr = arr[arr >= 0]

        def run():
            mask = np.zeros(self._n, dtype=np.bool_)
            if arr.size:
                pos = np.asarray(id_rows(arr), dtype=np.int64)
                mask[pos[pos >= 0]] = True
            return mask
        return run

    def _compile_field(self, field: str, value, path: str) -> Callable[[], np.ndarray]:
        if isinstance(value, dict):
            if not value:
                raise ValueError(f"{path}: field {field!r}: empty operator dict; give an operator such as {{'$eq': ...}}")
            for op in value:
                if not isinstance(op, str) or not op.startswith("$"):
                    raise ValueError(
                        f"{path}: field {field!r}: {op!r} is not an operator; a field's dict holds operators only "
                        f"({', '.join(_ALL_FIELD_OPERATORS)}); nested documents are not supported"
                    )
            ops = value
        else:
            ops = {"$eq": value}
        col = self._columns.get(field)
        if col is None:
            if set(ops) == {"$exists"}:
                if _filter_bool(ops["$exists"], f"{path}: field {field!r}: $exists") is False:
                    return self._all(True)
            known = ", ".join(repr(f) for f in self._columns) or "none (no row has an attribute yet)"
            raise ValueError(
                f"{path}: unknown field {field!r}; known fields: {known} (a field given on no row is unknown; "
                f"{{{field!r}: {{'$exists': False}}}} matches every row)"
            )
        parts = []
        allowed = FIELD_OPERATORS[col.kind]
        for op, operand in ops.items():
            if op not in allowed:
                if op in _ALL_FIELD_OPERATORS:
                    raise ValueError(
                        f"{path}: field {field!r}: {op} is not defined for {col.kind} fields; their operators are "
                        f"{', '.join(allowed)}"
                    )
                raise ValueError(
                    f"{path}: field {field!r}: unknown operator {op!r}; the operators of {col.kind} fields are "
                    f"{', '.join(allowed)}"
                )
            parts.append(self._compile_op(col, op, operand, f"{path}: field {field!r}: {op}"))
        return _combine(parts, True, self._n)

    def _compile_op(self, col, op: str, value, where: str) -> Callable[[], np.ndarray]:
        kind = col.kind
        if op == "$exists":
            wanted = _filter_bool(value, where)
            return (lambda: col.present_mask().copy()) if wanted else (lambda: ~col.present_mask())
        if value is None and op in ("$eq", "$ne"):
            raise TypeError(
                f"{where} expects {_EXPECTS[kind]}, got None; to test for a missing value use {{'$exists': False}}"
            )
        if op in ("$ne", "$nin"):
            positive = self._compile_op(col, "$eq" if op == "$ne" else "$in", value, where)
            return lambda: ~positive()
        if kind in ("int", "float"):
            if op == "$in":
                numbers = [_filter_number(v, f"{where} (item {j})") for j, v in enumerate(_filter_list(value, where, "numbers"))]
                return _numeric_in(col, numbers)
            return _numeric_predicate(col, op, _filter_number(value, where))
        if kind == "bool":
            if op == "$in":
                wanted = {_filter_bool(v, f"{where} (item {j})") for j, v in enumerate(_filter_list(value, where, "booleans"))}
            else:
                wanted = {_filter_bool(value, where)}
            if len(wanted) == 2:
                return lambda: col.present.view().copy()
            if not wanted:
                return self._all(False)
            target = wanted.pop()
            return lambda: (col.values.view() == target) & col.present.view()
        list_hint = "; for several values use $in (any of them)" + (" or $all (every one)" if kind == "keywords" else "")
        if op in ("$in", "$all"):
            strings = [
                _filter_str(v, f"{where} (item {j})") for j, v in enumerate(_filter_list(value, where, "str"))
            ]
        elif op == "$size":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{where} expects a non-negative int (a list length), got {value!r}")
            size = int(value)
            if size < 0:
                raise ValueError(f"{where} expects a non-negative int (a list length), got {size}")
            return lambda: (col.lengths() == size) & col.present.view()
        else:  # $eq
            strings = [_filter_str(value, where, list_hint if isinstance(value, (list, tuple)) else "")]
        if kind == "keyword":
            return _keyword_in(col, strings)
        if op == "$all":
            preds = [_keywords_contains(col, [s]) for s in dict.fromkeys(strings)]
            present = lambda: col.present.view().copy()  # noqa: E731
            return _combine([present] + preds, True, self._n)
        return _keywords_contains(col, strings)

    # -- persistence

    def to_arrays(self):
        """``(schema_meta, arrays)``: JSON-serialisable metadata and ``attr_*`` arrays (names are identifiers).

        Column ``i`` (in schema order) is stored as ``attr_{i}_values`` / ``attr_{i}_present`` (int, float,
        bool), ``attr_{i}_codes`` / ``attr_{i}_vocab`` (keyword), ``attr_{i}_offsets`` / ``attr_{i}_codes`` /
        ``attr_{i}_present`` / ``attr_{i}_vocab`` (keywords); a vocabulary is a UTF-8 JSON list of strings
        in a uint8 array, reduced to the strings in use.
        """
        fields = []
        arrays: Dict[str, np.ndarray] = {}
        for i, (field, col) in enumerate(self._columns.items()):
            cols = col.arrays(f"attr_{i}")
            fields.append({"name": field, "type": col.kind, "arrays": {k.rsplit("_", 1)[1]: k for k in cols}})
            arrays.update(cols)
        return {"version": _META_VERSION, "rows": self._n, "fields": fields}, arrays

    @classmethod
    def from_arrays(cls, schema_meta, arrays: dict, n: int) -> "AttributeStore":
        """The inverse of :meth:`to_arrays`; arrays are kept as given (memory maps stay mapped) until a change.

        Any inconsistency raises :class:`flatcoat._persist.IndexFormatError` naming the file.
        """
        return _load(cls, schema_meta, arrays, n)


def _empty_column(kind: str, n: int):
    if kind == "keyword":
        return _Keyword.empty(n)
    if kind == "keywords":
        return _Keywords.empty(n)
    return _Scalar.empty(kind, n)


def _combine(parts: List[Callable[[], np.ndarray]], conjunction: bool, n: int) -> Callable[[], np.ndarray]:
    """AND (conjunction) or OR of predicates; the empty AND matches every row, the empty OR none."""
    if len(parts) == 1:
        return parts[0]

    def run():
        if not parts:
            return np.full(n, conjunction, dtype=np.bool_)
        mask = np.array(parts[0](), dtype=np.bool_, copy=True)
        for part in parts[1:]:
            if conjunction:
                if not mask.any():
                    break
                mask &= part()
            else:
                mask |= part()
        return mask
    return run


# ----------------------------------------------------------------------------- loading


_MANIFEST = "manifest.json"


def _load(cls, meta, arrays: dict, n) -> AttributeStore:
    def fail(where: str, reason: str):
        raise IndexFormatError(f"{where}: {reason}")

    if not isinstance(meta, dict) or meta.get("version") != _META_VERSION or not isinstance(meta.get("fields"), list):
        fail(_MANIFEST, f"attributes: unreadable metadata (expected version {_META_VERSION} with a list of fields)")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        fail(_MANIFEST, f"attributes: invalid row count {n!r}")
    n = int(n)
    if meta.get("rows") != n:
        fail(_MANIFEST, f"attributes: metadata says {meta.get('rows')!r} rows, the index holds {n}")
    store = cls._empty(n)
    for i, entry in enumerate(meta["fields"]):
        if not isinstance(entry, dict):
            fail(_MANIFEST, f"attributes: field entry {i} is not an object")
        field, kind, names = entry.get("name"), entry.get("type"), entry.get("arrays")
        try:
            _check_field_name(field, "name")
        except (TypeError, ValueError) as exc:
            fail(_MANIFEST, f"attributes: field entry {i}: {exc}")
        if field in store._columns:
            fail(_MANIFEST, f"attributes: field {field!r} appears twice")
        if kind not in TYPES:
            fail(_MANIFEST, f"attributes: field {field!r} has unknown type {kind!r}")
        parts = {"int": ("values", "present"), "float": ("values", "present"), "bool": ("values", "present"),
                 "keyword": ("codes", "vocab"), "keywords": ("offsets", "codes", "present", "vocab")}[kind]
        if not isinstance(names, dict) or set(names) != set(parts):
            fail(_MANIFEST, f"attributes: field {field!r} ({kind}) must list the arrays {', '.join(parts)}")

        def get(part, dtype, shape=None):
            key = names[part]
            file = f"{key}.npy"
            if not isinstance(key, str) or key not in arrays:
                fail(str(key) + ".npy", f"missing (attribute field {field!r})")
            arr = arrays[key]
            if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype) or arr.ndim != 1:
                got = f"{arr.dtype}{list(arr.shape)}" if isinstance(arr, np.ndarray) else _type_name(arr)
                fail(file, f"expected a 1-d {np.dtype(dtype)} array for attribute field {field!r}, got {got}")
            if shape is not None and arr.shape[0] != shape:
                fail(file, f"expected {shape} entries for attribute field {field!r}, got {arr.shape[0]}")
            return arr, file

        def vocab():
            arr, file = get("vocab", np.uint8)
            try:
                strings = json.loads(arr.tobytes().decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                fail(file, f"vocabulary of attribute field {field!r} is not a JSON list ({exc})")
            if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
                fail(file, f"vocabulary of attribute field {field!r} is not a list of strings")
            if len(set(strings)) != len(strings):
                fail(file, f"vocabulary of attribute field {field!r} repeats a string")
            if len(strings) >= 2**31:
                fail(file, f"vocabulary of attribute field {field!r} is too large")
            return _Vocab(strings, arr.shape[0])

        def check_codes(codes, file, size, low):
            if codes.size and (int(codes.min()) < low or int(codes.max()) >= size):
                fail(file, f"codes of attribute field {field!r} fall outside the vocabulary of {size} strings")

        if kind in ("int", "float", "bool"):
            values, vfile = get("values", _Scalar.DTYPES[kind], n)
            present, _ = get("present", np.bool_, n)
            if kind == "float" and not np.isfinite(values).all():
                fail(vfile, f"attribute field {field!r} holds NaN or inf")
            col = _Scalar(kind, _Buffer(values), _Buffer(present))
        elif kind == "keyword":
            codes, cfile = get("codes", np.int32, n)
            voc = vocab()
            check_codes(codes, cfile, len(voc.strings), -1)
            col = _Keyword(_Buffer(codes), voc)
        else:
            offsets, ofile = get("offsets", np.int64, n + 1)
            codes, cfile = get("codes", np.int32)
            present, pfile = get("present", np.bool_, n)
            if offsets[0] != 0 or offsets[-1] != codes.shape[0] or (n and (np.diff(offsets) < 0).any()):
                fail(ofile, f"offsets of attribute field {field!r} are not a non-decreasing run from 0 to {codes.shape[0]}")
            if (np.diff(offsets)[~present] != 0).any():
                fail(pfile, f"attribute field {field!r} has list elements on rows marked missing")
            voc = vocab()
            check_codes(codes, cfile, len(voc.strings), 0)
            col = _Keywords.from_csr(offsets, codes, present, voc)
        store._columns[field] = col
    return store
