"""What every index keeps beside its vectors, written once: attributes, filters, lookups by id.

Attributes live in an :class:`AttributeStore` aligned with the index's storage
positions (DenseIndex rows, IVFIndex slots, MultiVectorIndex documents). A
``filter=`` becomes a bitset over those positions (``mask_to_bits``), which the
core's scan consults; nothing here loops over rows in Python.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ._attributes import AttributeStore, mask_to_bits
from ._persist import IndexFormatError
from ._validate import MAX_ID, as_ids

#: The manifest key of an index's attribute schema, and the prefix of its arrays.
ATTRIBUTES_META = "attributes"


def parse_attributes(attributes, n: int, store: AttributeStore) -> AttributeStore:
    """``attributes`` of an add/upsert of ``n`` entries as a store that fits ``store``'s schema."""
    return AttributeStore.parse(attributes, n, "attributes", schema=store.schema)


def _allow_list(value, name: str) -> np.ndarray:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, np.ndarray, range)):
        raise TypeError(
            f"{name}: expected a dict predicate (e.g. {{'year': {{'$gte': 2020}}}}) or a 1-d sequence of ids, "
            f"got {type(value).__name__}")
    ids = np.asarray(value)
    if ids.ndim != 1:
        raise ValueError(f"{name}: an id allow-list must be 1-d, got shape {ids.shape}")
    if ids.size == 0:
        return np.empty(0, dtype=np.int64)
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name}: an id allow-list holds integer ids, got dtype {ids.dtype}")
    if ids.dtype == np.uint64:
        ids = ids[ids <= MAX_ID]  # larger ids cannot be in the index
    ids = ids.astype(np.int64)
    return np.ascontiguousarray(ids[ids >= 0])


def filter_bits(filter, store: AttributeStore, id_map, positions: int, name: str = "filter") -> Optional[np.ndarray]:
    """The core's bitset for ``filter`` over ``positions`` storage positions, or None for no restriction.

    ``filter``: None; a dict predicate over the attributes (docs/filters.md); or
    an allow-list of ids (ids not in the index match nothing). A filter that
    allows every position is None, so the scan takes its unfiltered path.
    """
    if filter is None:
        return None
    if isinstance(filter, dict):
        mask = store.evaluate(filter, id_rows=id_map.find, name=name)
    else:
        found = id_map.find(_allow_list(filter, name))
        mask = np.zeros(positions, dtype=bool)
        mask[found[found >= 0]] = True
    if mask.shape != (positions,):
        raise AssertionError(f"attribute rows ({mask.shape[0]}) out of step with the index ({positions})")
    if mask.all():
        return None
    return mask_to_bits(mask)


def held_positions(ids: np.ndarray, id_map, consequence: str = "") -> np.ndarray:
    """Storage positions of int64 ``ids`` that must all be present, else a KeyError naming the missing
    ones (and ``consequence``, e.g. "nothing was removed")."""
    positions = id_map.find(ids)
    unknown = ids[positions < 0]
    if unknown.size:
        shown = ", ".join(str(int(i)) for i in unknown[:5])
        raise KeyError(f"ids: {unknown.size} id(s) not in the index ({shown})" + (f"; {consequence}" if consequence else ""))
    return positions


def positions_of(ids, id_map, name: str = "ids") -> Tuple[np.ndarray, np.ndarray]:
    """(ids int64, storage positions) of ids that must all be present (else a KeyError naming them)."""
    flat = np.atleast_1d(np.asarray(ids))
    ids = as_ids(flat, name, flat.shape[0])
    return ids, held_positions(ids, id_map)


def removal_ids(ids) -> np.ndarray:
    """The distinct int64 ids of a ``remove`` call (one id or a sequence)."""
    flat = np.atleast_1d(np.asarray(ids))
    return np.unique(as_ids(flat, "ids", flat.shape[0]))


def upsert_ids(ids, n: int) -> np.ndarray:
    """The ids of an upsert of ``n`` entries: required, non-negative, each given once."""
    if ids is None:
        raise TypeError("ids: upsert needs the ids to add or replace (add() chooses ids itself)")
    ids = as_ids(ids, "ids", n)
    distinct(ids)
    return ids


def distinct(ids: np.ndarray, name: str = "ids") -> None:
    """A ValueError if an id repeats within one call (an upsert gives each id one new value)."""
    if ids.size > 1:
        s = np.sort(ids)
        repeated = s[1:][s[1:] == s[:-1]]
        if repeated.size:
            raise ValueError(f"{name}: id {int(repeated[0])} is repeated in this call; give each id once")


def save_attributes(store: AttributeStore, meta: dict, arrays: dict) -> None:
    """Adds a store's schema to an index's manifest ``meta`` and its columns to ``arrays`` (nothing when
    it has no columns, so indexes without attributes save as before)."""
    if store.schema:
        meta[ATTRIBUTES_META], columns = store.to_arrays()
        arrays.update(columns)


def load_attributes(meta, arrays: dict, n: int) -> AttributeStore:
    """The store saved with an index (an index saved without attributes gets an empty one of ``n`` rows)."""
    if meta is None:
        return AttributeStore.parse(None, n)
    try:
        return AttributeStore.from_arrays(meta, arrays, n)
    except IndexFormatError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"manifest.json: invalid attributes ({exc})") from None


def matching_ids(filter, store: AttributeStore, id_map, ids_by_position: np.ndarray, name: str = "filter") -> np.ndarray:
    """The ids (int64, in storage order) that ``filter`` allows; ``ids_by_position`` holds -1 where a
    position holds no entry (IVF padding and tombstones)."""
    n = ids_by_position.shape[0]
    bits = filter_bits(filter, store, id_map, n, name)
    ids = np.asarray(ids_by_position)
    if bits is not None:
        ids = ids[np.unpackbits(bits.view(np.uint8), bitorder="little")[:n].astype(bool)]
    return ids[ids >= 0].astype(np.int64)
